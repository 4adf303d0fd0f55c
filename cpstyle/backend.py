"""NumPy or CuPy: one `xp` path for both, and the choice of device.

CuPy is optional: `import cpstyle` works without it, without a CUDA driver and
without a GPU. `gpu_available()` answers without raising."""
import functools

import numpy as np


@functools.lru_cache(maxsize=None)
def _cupy():
    try:
        import cupy
    except Exception:
        return None
    return cupy


@functools.lru_cache(maxsize=None)
def gpu_available():
    cp = _cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_array_module(*arrays):
    cp = _cupy()
    if cp is not None:
        for a in arrays:
            if isinstance(a, cp.ndarray):
                return cp
    return np


def is_gpu_array(a):
    cp = _cupy()
    return cp is not None and isinstance(a, cp.ndarray)


def resolve_device(device):
    """'auto' | 'cpu' | 'gpu' | 'cuda' -> 'cpu' or 'gpu' (ValueError if impossible)."""
    d = "auto" if device is None else str(device).lower()
    if d == "auto":
        return "gpu" if gpu_available() else "cpu"
    if d in ("cpu", "numpy"):
        return "cpu"
    if d in ("gpu", "cuda", "cupy"):
        if not gpu_available():
            raise ValueError("device 'gpu' was asked for, but no CUDA GPU is usable "
                             "(CuPy missing, no driver, or no device); use device='cpu'")
        return "gpu"
    raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu' or 'gpu'")


def xp_for(device):
    return _cupy() if resolve_device(device) == "gpu" else np


def to_host(a):
    return a.get() if is_gpu_array(a) else np.asarray(a)


def to_device(a, xp, dtype=np.float32):
    if xp is np:
        return np.ascontiguousarray(to_host(a), dtype=dtype)
    return xp.ascontiguousarray(xp.asarray(a, dtype=dtype))
