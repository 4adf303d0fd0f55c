"""The three optimisers of `style_transfer(optimizer=...)`: each minimises the
objective's potential Φ (cpstyle/objective.py: Σ w·log(L+1e-10), or Σ w·L with
constant weights) through its gradient, and clips to 0..255 after every step.

    gd     the tutorial's step: x = clip(x − g·step_size/(std(g)+1e-8), 0, 255)
    adam   Adam, lr = learning_rate (default 10, as neural-style's learning_rate
           for 0..255 pixels), β = (0.9, 0.999), eps = 1e-8
    lbfgs  L-BFGS with `history` pairs (default 10), NO line search (as
           neural-style's default torch L-BFGS): x = clip(x − H·g, 0, 255),
           one objective evaluation per iteration. H0 = γ·I with γ = sᵀy/yᵀy of
           the newest accepted pair; before the first one, γ = step_size/(std(g)+1e-8),
           so the first step is exactly the gd step. A pair (s = Δx after the
           clip, y = Δg) is accepted when sᵀy > 1e-10; a rejected pair keeps its
           slot in the ring with ρ = 0 (it adds nothing), so which slots are
           used never depends on the data and the host never has to look.

Two implementations with one behaviour: the reference classes (`make_optimizer`,
NumPy or the same array ops on CuPy, fresh arrays, the spec) and the device ones
(`make_device_optimizer`: state in buffers allocated once, update x in place,
scalars on the device, kernels only — what GpuStyleTransfer runs). The math is in
cpstyle/ops/optim.py and cpstyle/ops/update.py. Tests: tests/test_optimizers.py."""
import collections

import numpy as np

from .backend import get_array_module
from .layers import check_number
from .ops.optim import (adam_update_cpu, adam_update_gpu_inplace, descend_clip_cpu,
                        descend_clip_gpu_inplace, dot_gpu, lbfgs_diff_gpu,
                        lbfgs_direction_cpu, lbfgs_first_loop_gpu, lbfgs_init_gpu,
                        lbfgs_pair_cpu, lbfgs_pair_gpu, lbfgs_scale_gpu,
                        lbfgs_second_loop_gpu)
from .ops.update import STD_EPS, centered_sqsum_gpu, make_update_work, update_cpu, update_gpu_inplace

OPTIMIZERS = ("gd", "adam", "lbfgs")
DEFAULT_LEARNING_RATE = 10.0
DEFAULT_LBFGS_HISTORY = 10
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

Settings = collections.namedtuple("Settings", "name step_size learning_rate history")


def check_optimizer(name="gd", step_size=10.0, learning_rate=None, lbfgs_history=None):
    """-> Settings; ValueError for an unknown name, bad numbers, or an option
    that the chosen optimiser does not use (learning_rate is Adam's,
    lbfgs_history L-BFGS's)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: use one of {OPTIMIZERS}")
    if learning_rate is not None and name != "adam":
        raise ValueError(f"learning_rate is Adam's step size; the {name} optimizer "
                         f"uses step_size")
    if lbfgs_history is not None and name != "lbfgs":
        raise ValueError(f"lbfgs_history is for optimizer='lbfgs', not {name!r}")
    lr = DEFAULT_LEARNING_RATE if learning_rate is None else learning_rate
    lr = check_number(lr, "learning_rate", positive=True)
    hist = DEFAULT_LBFGS_HISTORY if lbfgs_history is None else lbfgs_history
    if isinstance(hist, bool) or not isinstance(hist, (int, np.integer)) or hist < 1:
        raise ValueError(f"lbfgs_history must be a whole number >= 1, got {lbfgs_history!r}")
    return Settings(name, float(step_size), lr, int(hist))


# ---- reference (the spec) ------------------------------------------------------

class GradientDescent:
    def __init__(self, settings):
        self.step_size = settings.step_size

    def step(self, x, g):
        """-> the next x (a fresh array)."""
        return update_cpu(x, g, self.step_size)


class Adam:
    def __init__(self, settings):
        self.lr = settings.learning_rate
        self.m = self.v = None
        self.t = 0

    def step(self, x, g):
        xp = get_array_module(x)
        if self.m is None:
            self.m, self.v = xp.zeros_like(x), xp.zeros_like(x)
        self.t += 1
        x, self.m, self.v = adam_update_cpu(x, self.m, self.v, g, self.lr, self.t,
                                            *ADAM_BETAS, ADAM_EPS)
        return x


class LBFGS:
    def __init__(self, settings):
        self.step_size, self.history = settings.step_size, settings.history
        self.pairs = collections.deque(maxlen=self.history)  # (s, y, rho), oldest first
        self.gamma = None
        self.x_prev = self.g_prev = None

    def step(self, x, g):
        if self.x_prev is None:
            xp = get_array_module(g)
            self.gamma = self.step_size / (float(xp.std(g.astype(np.float64))) + STD_EPS)
        else:
            s, y = x - self.x_prev, g - self.g_prev
            rho, gamma = lbfgs_pair_cpu(s, y)
            self.pairs.append((s, y, rho))
            if gamma is not None:
                self.gamma = gamma
        r = lbfgs_direction_cpu(g, list(self.pairs), self.gamma)
        self.x_prev, self.g_prev = x.copy(), g.copy()
        return descend_clip_cpu(x, r)


def make_optimizer(settings):
    """The reference optimiser: .step(x, g) -> next x."""
    return {"gd": GradientDescent, "adam": Adam, "lbfgs": LBFGS}[settings.name](settings)


# ---- on the device: buffers once, in place, no host synchronisation ---------------

class DeviceGradientDescent:
    def __init__(self, settings, x):
        self.step_size = settings.step_size
        self.work = make_update_work(x.size, get_array_module(x))

    def reset(self):
        pass

    def step(self, x, g):
        update_gpu_inplace(x, g, self.step_size, work=self.work)


class DeviceAdam:
    def __init__(self, settings, x):
        xp = get_array_module(x)
        self.lr = settings.learning_rate
        self.m, self.v = xp.zeros_like(x), xp.zeros_like(x)
        self.t = 0  # counted on the host: the bias corrections need no device data

    def reset(self):
        self.m.fill(0)
        self.v.fill(0)
        self.t = 0

    def step(self, x, g):
        self.t += 1
        adam_update_gpu_inplace(x, self.m, self.v, g, self.lr, self.t, *ADAM_BETAS, ADAM_EPS)


class DeviceLBFGS:
    """LBFGS above on preallocated buffers: S, Y (history, *x.shape) float32
    rings, per-slot rho and alpha, gamma and the dot products as float64 device
    scalars. The ring position and the number of stored pairs are counted on the
    host (a pair is stored every step after the first, accepted or not)."""

    def __init__(self, settings, x):
        from . import cuda
        xp = get_array_module(x)
        self.step_size, self.m = settings.step_size, settings.history
        f32 = np.float32
        self.S = xp.zeros((self.m,) + x.shape, f32)
        self.Y = xp.zeros((self.m,) + x.shape, f32)
        self.x_prev, self.g_prev, self.q = (xp.zeros_like(x) for _ in range(3))
        # float64 scalars: rho (m), alpha (m), then gamma, sy, yy, dot
        self.scalars = xp.zeros(2 * self.m + 4, np.float64)
        self.rho = self.scalars[:self.m]
        self.alpha = self.scalars[self.m:2 * self.m]
        k = 2 * self.m
        self.gamma, self.sy, self.yy, self.dot = (self.scalars[k + i:k + i + 1] for i in range(4))
        self.partial = xp.zeros(cuda.config["reduce_blocks"], np.float64)
        self.work = make_update_work(x.size, xp)
        self.reset()

    def reset(self):
        self.scalars.fill(0)  # every rho 0: no stale pair can count
        self.count = 0  # stored pairs
        self.head = 0   # the slot the next pair goes to
        self.steps = 0

    def _slots(self):
        """Stored slots, oldest first."""
        return [(self.head - self.count + k) % self.m for k in range(self.count)]

    def step(self, x, g):
        if self.steps == 0:
            lbfgs_init_gpu(self.gamma, centered_sqsum_gpu(g, self.work), self.step_size, g.size)
        else:
            k = self.head
            s, y = self.S[k], self.Y[k]
            lbfgs_diff_gpu(s, y, x, self.x_prev, g, self.g_prev)
            dot_gpu(s, y, self.sy, self.partial)
            dot_gpu(y, y, self.yy, self.partial)
            lbfgs_pair_gpu(self.rho[k:k + 1], self.gamma, self.sy, self.yy)
            self.head = (k + 1) % self.m
            self.count = min(self.count + 1, self.m)
        self.steps += 1
        q = self.q
        q[...] = g  # device-to-device
        slots = self._slots()
        for k in reversed(slots):
            dot_gpu(self.S[k], q, self.dot, self.partial)
            lbfgs_first_loop_gpu(q, self.alpha[k:k + 1], self.Y[k], self.rho[k:k + 1], self.dot)
        lbfgs_scale_gpu(q, self.gamma)
        for k in slots:
            dot_gpu(self.Y[k], q, self.dot, self.partial)
            lbfgs_second_loop_gpu(q, self.S[k], self.rho[k:k + 1], self.alpha[k:k + 1], self.dot)
        self.x_prev[...] = x
        self.g_prev[...] = g
        descend_clip_gpu_inplace(x, q)


def make_device_optimizer(settings, x):
    """The device optimiser for images shaped like x: .step(x, g) updates x in
    place; .reset() forgets the state (buffers kept)."""
    return {"gd": DeviceGradientDescent, "adam": DeviceAdam,
            "lbfgs": DeviceLBFGS}[settings.name](settings, x)
