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
