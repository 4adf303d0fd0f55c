"""The tutorial's step: scale by 1/std of the gradient, step, clip.

    x ← clip(x − g · step_size/(std(g) + 1e-8), 0, 255)     (population std)

Kernels: kernels/update.cu. Tests: tests/test_update.py."""
from ..backend import get_array_module

STD_EPS = 1e-8


def update_cpu(x, g, step_size):
    """Returns the new x (fresh array)."""
    xp = get_array_module(x)
    step = step_size / (xp.std(g) + STD_EPS)
    return xp.clip(x - g * step, 0.0, 255.0).astype(x.dtype, copy=False)


# ---- GPU path: kernels/update.cu --------------------------------------------
import collections  # noqa: E402

import numpy as np  # noqa: E402

from .. import cuda  # noqa: E402
from ..backend import is_gpu_array  # noqa: E402

# float64 device buffers: partial (reduce_blocks,), total (1,), sqsum (1,), all
# views of one allocation.
UpdateWork = collections.namedtuple("UpdateWork", "partial total sqsum")


def make_update_work(n, xp=None):
    """Work buffers of update_gpu_inplace for n-element images (the same buffers
    serve any n; n is kept for the signature's sake). xp: cupy by default."""
    if xp is None:
        import cupy as xp
    nb = cuda.config["reduce_blocks"]
    buf = xp.zeros(nb + 2, dtype=np.float64)
    return UpdateWork(buf[:nb], buf[nb:nb + 1], buf[nb + 1:nb + 2])


def _kernel(name):
    return cuda.get_kernel("update", name, cuda.reduce_defines())


def centered_sqsum_gpu(g, work):
    """work.sqsum[0] = Σ (g − mean(g))² in double, two passes, on the device
    (std(g) = sqrt(sqsum/n)); also used by the L-BFGS first step."""
    n = g.size
    nb, t = cuda.reduce_grid(n), cuda.config["reduce_threads"]
    if work.partial.size < nb:
        raise ValueError(f"update work: {work.partial.size} partials for a grid of {nb}")
    cuda.launch(_kernel("sum_partial_kernel"), nb, t, (work.partial, g, cuda.i32(n)))
    cuda.launch(_kernel("reduce_partials_kernel"), 1, t, (work.total, work.partial, cuda.i32(nb)))
    cuda.launch(_kernel("centered_sqsum_partial_kernel"), nb, t,
                (work.partial, g, work.total, cuda.i32(n)))
    cuda.launch(_kernel("reduce_partials_kernel"), 1, t, (work.sqsum, work.partial, cuda.i32(nb)))
    return work.sqsum


def update_gpu_inplace(x, g, step_size, work=None):
    """x ← clip(x − g·step_size/(std(g) + 1e-8), 0, 255) in place; returns x.
    std (population) in double on the device: no host synchronisation."""
    xp = get_array_module(x)
    if g.shape != x.shape:
        raise ValueError(f"update: x {x.shape}, g {g.shape}")
    n = x.size
    if n == 0:
        return x
    if work is None:
        work = make_update_work(n, xp)
    centered_sqsum_gpu(g, work)
    blk = cuda.config["block"]
    cuda.launch(_kernel("update_kernel"), cuda.ceil_div(n, blk), blk,
                (x, g, work.sqsum, cuda.f32(step_size), cuda.i32(n)))
    return x


def update(x, g, step_size):
    """The dispatcher: a fresh array, like update_cpu."""
    if is_gpu_array(x) and is_gpu_array(g) and x.dtype == g.dtype == np.float32:
        return update_gpu_inplace(x.copy(), g, step_size)
    return update_cpu(x, g, step_size)
