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
