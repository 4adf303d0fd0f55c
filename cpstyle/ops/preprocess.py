"""Pre-processing as the model's first op.

    torch weights: y[..., c] = (x[..., c]/255 - mean[c]) / std[c]
    caffe weights: y[..., c] = x[..., 2-c] - mean[c]          (RGB -> BGR)

Both are y[..., c] = x[..., src(c)]·scale[c] + shift[c]; backward is the
per-channel scale sent back to the source channel. Kernel: kernels/preprocess.cu.
Tests: tests/test_preprocess.py."""
import numpy as np

from ..backend import get_array_module


def preprocess_params(preprocessing, mean, std):
    """-> (scale (3,), shift (3,), bgr) as float64 numpy, for either convention."""
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    if preprocessing == "torch":
        return 1.0 / (255.0 * std), -mean / std, False
    if preprocessing == "caffe":
        return 1.0 / std, -mean / std, True
    raise ValueError(f"unknown pre-processing {preprocessing!r}: expected 'torch' or 'caffe'")


def preprocess_forward_cpu(x, scale, shift, bgr):
    xp = get_array_module(x)
    scale = xp.asarray(scale, dtype=x.dtype)
    shift = xp.asarray(shift, dtype=x.dtype)
    src = x[..., ::-1] if bgr else x
    return src * scale + shift  # (N, H, W, 3)


def preprocess_backward_cpu(dout, scale, bgr):
    xp = get_array_module(dout)
    dx = dout * xp.asarray(scale, dtype=dout.dtype)
    return xp.ascontiguousarray(dx[..., ::-1]) if bgr else dx


# ---- GPU path: kernels/preprocess.cu ----------------------------------------
from .. import cuda  # noqa: E402
from ..backend import is_gpu_array  # noqa: E402


def _vec3(xp, v, what):
    v = xp.asarray(v, dtype=xp.float32)  # no copy for a float32 device array
    if v.shape != (3,):
        raise ValueError(f"{what}: need shape (3,), got {v.shape}")
    return xp.ascontiguousarray(v)


def preprocess_forward_gpu(x, scale, shift, bgr, out=None):
    """x (..., 3) float32 -> y (..., 3). scale, shift: (3,) float32 device arrays
    (anything else is copied to the device, which a captured loop must avoid)."""
    xp = get_array_module(x)
    if x.shape[-1:] != (3,):
        raise ValueError(f"preprocess: need (..., 3) images, got {x.shape}")
    scale, shift = _vec3(xp, scale, "scale"), _vec3(xp, shift, "shift")
    y = cuda.out_array(xp, out, x.shape)
    blk = cuda.config["block"]
    cuda.launch(cuda.get_kernel("preprocess", "preprocess_forward_kernel"),
                cuda.ceil_div(x.size, blk), blk,
                (y, x, scale, shift, cuda.i32(bool(bgr)), cuda.i32(x.size // 3)))
    return y


def preprocess_backward_gpu(dout, scale, bgr, out=None):
    """dout (..., 3) -> dx (..., 3): dx[..., src(c)] = dout[..., c]·scale[c]."""
    xp = get_array_module(dout)
    if dout.shape[-1:] != (3,):
        raise ValueError(f"preprocess: need (..., 3) gradients, got {dout.shape}")
    scale = _vec3(xp, scale, "scale")
    dx = cuda.out_array(xp, out, dout.shape)
    blk = cuda.config["block"]
    cuda.launch(cuda.get_kernel("preprocess", "preprocess_backward_kernel"),
                cuda.ceil_div(dout.size, blk), blk,
                (dx, dout, scale, cuda.i32(bool(bgr)), cuda.i32(dout.size // 3)))
    return dx


def _on_gpu(*arrays):
    return all(is_gpu_array(a) and a.dtype == np.float32 for a in arrays)


def preprocess_forward(x, scale, shift, bgr):
    if _on_gpu(x):
        return preprocess_forward_gpu(x, scale, shift, bgr)
    return preprocess_forward_cpu(x, scale, shift, bgr)


def preprocess_backward(dout, scale, bgr):
    if _on_gpu(dout):
        return preprocess_backward_gpu(dout, scale, bgr)
    return preprocess_backward_cpu(dout, scale, bgr)
