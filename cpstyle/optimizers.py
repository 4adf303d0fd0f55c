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
from .ops.optim import (adam_count_gpu, adam_update_cpu, adam_update_gpu_inplace,
                        descend_clip_cpu, descend_clip_gpu_inplace, dot_gpu, lbfgs_advance_gpu,
                        lbfgs_diff_gpu, lbfgs_direction_cpu, lbfgs_first_loop_gpu,
                        lbfgs_init_gpu, lbfgs_pair_cpu, lbfgs_pair_gpu, lbfgs_scale_gpu,
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
    """Adam on buffers allocated once; t and the bias corrections live on the
    device (corr = [t, c1, c2], advanced by a one-thread kernel each step), so
    every step launches the same kernels with the same arguments."""

    def __init__(self, settings, x):
        xp = get_array_module(x)
        self.lr = settings.learning_rate
        self.m, self.v = xp.zeros_like(x), xp.zeros_like(x)
        self.corr = xp.zeros(3, np.float64)

    def reset(self):
        for a in (self.m, self.v, self.corr):
            a.fill(0)

    def step(self, x, g):
        adam_count_gpu(self.corr, *ADAM_BETAS)
        adam_update_gpu_inplace(x, self.m, self.v, g, self.lr, self.corr, *ADAM_BETAS, ADAM_EPS)


class DeviceLBFGS:
    """LBFGS above on preallocated buffers: S, Y (history, *x.shape) float32
    rings, per-slot rho and alpha, gamma and the dot products as float64 device
    scalars, and the ring's state ring = [steps, head] as a device int32 pair
    (kernels/optim.cu), so a step is the same launches with the same arguments
    every time: one captured graph replays for every iteration.

    Every step runs both loops over all `history` positions, oldest first by
    slot (head + j) % history; a slot not yet written holds zeros and rho = 0
    and adds exactly nothing, so the first `history` steps do the full ring's
    work too: 4 passes over x per position (two dots, two updates), at 256²
    about 0.8 MB each, ~1 µs of an H100's bandwidth, against the other choice,
    one graph per host ring state (2·history captures of the whole iteration,
    each as slow as an uncaptured iteration, ~6 ms of launches at 256²)."""

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
        self.ring = xp.zeros(2, np.int32)  # [steps, head]
        self.partial = xp.zeros(cuda.config["reduce_blocks"], np.float64)
        self.work = make_update_work(x.size, xp)
        self.reset()

    def reset(self):
        # every rho 0 and every slot zero: an unwritten slot adds exactly nothing
        for a in (self.scalars, self.ring, self.S, self.Y):
            a.fill(0)

    def step(self, x, g):
        m, ring, S, Y, q = self.m, self.ring, self.S, self.Y, self.q
        lbfgs_advance_gpu(ring, m)
        lbfgs_init_gpu(self.gamma, centered_sqsum_gpu(g, self.work), self.step_size, g.size, ring)
        lbfgs_diff_gpu(S, Y, self.x_prev, self.g_prev, q, x, g, ring)  # q = g
        dot_gpu(S, Y, self.sy, self.partial, ring, m - 1, m - 1)
        dot_gpu(Y, Y, self.yy, self.partial, ring, m - 1, m - 1)
        lbfgs_pair_gpu(self.rho, self.gamma, self.sy, self.yy, ring)
        for j in reversed(range(m)):  # newest -> oldest
            dot_gpu(S, q, self.dot, self.partial, ring, j)
            lbfgs_first_loop_gpu(q, self.alpha, Y, self.rho, self.dot, ring, j)
        lbfgs_scale_gpu(q, self.gamma)
        for j in range(m):
            dot_gpu(Y, q, self.dot, self.partial, ring, j)
            lbfgs_second_loop_gpu(q, S, self.rho, self.alpha, self.dot, ring, j)
        descend_clip_gpu_inplace(x, q)


def make_device_optimizer(settings, x):
    """The device optimiser for images shaped like x: .step(x, g) updates x in
    place; .reset() forgets the state (buffers kept)."""
    return {"gd": DeviceGradientDescent, "adam": DeviceAdam,
            "lbfgs": DeviceLBFGS}[settings.name](settings, x)
