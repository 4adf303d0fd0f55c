"""Max-pool and average-pool 2x2, stride 2, floor for odd sizes (PyTorch's convention).

Max: ties go to the first maximum in row-major order inside the window: window
slot k = 2*dy + dx, and argmax returns the first maximal slot. Backward scatters
dy to the argmax; the cropped last row/column (odd sizes) gets zero.
Average (at the end of the file): y = (x00 + x01 + x10 + x11)/4, summed in that
order; backward gives each of the four inputs dy/4, the cropped row/column zero.
Kernels: kernels/pool.cu. Tests: tests/test_pool.py."""
from ..backend import get_array_module
from .parallel import in_row_blocks


def _slots(a, lo, hi, wo):
    """The four strided views of the 2x2 windows of output rows lo..hi-1,
    a[:, 2*lo+dy:2*hi:2, dx:2*wo:2], slot k = 2*dy + dx."""
    return [a[:, 2 * lo + dy:2 * hi:2, dx:2 * wo:2] for dy in (0, 1) for dx in (0, 1)]


def maxpool_forward_cpu(x, out=None, argmax=None):
    """x (N, H, W, C) -> y (N, H//2, W//2, C), cache = (argmax uint8, x.shape).
    Threaded over output rows in cache-sized blocks (parallel.in_row_blocks).
    `out`, `argmax`: arrays for y and the argmax, if the caller keeps them."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    ho, wo = h // 2, w // 2
    y = xp.empty((n, ho, wo, c), dtype=x.dtype) if out is None else out
    arg = xp.empty(y.shape, dtype=xp.uint8) if argmax is None else argmax

    def fill(lo, hi):
        # pairwise: the max of each row pair, then of the two; every comparison
        # strict, so a tie keeps the earlier slot (3x faster than three masked
        # updates of y at 256x256x64)
        s0, s1, s2, s3 = _slots(x, lo, hi, wo)
        yb, ab = y[:, lo:hi], arg[:, lo:hi]
        m01 = xp.maximum(s0, s1)
        m23 = xp.maximum(s2, s3)
        xp.maximum(m01, m23, out=yb)
        xp.add(s3 > s2, 2, out=ab, casting="unsafe")  # slot 2 or 3 ...
        xp.copyto(ab, s1 > s0, where=~(m23 > m01), casting="unsafe")  # ... unless 0 or 1 wins

    in_row_blocks(fill, ho, 2 * n * w * c * x.itemsize, xp)
    return y, (arg, x.shape)


def maxpool_backward_cpu(dout, cache, epilogue=None, out=None):
    """dout (N, Ho, Wo, C) -> dx (N, H, W, C) (into `out` if given).
    epilogue(dx, lo, hi), if given, runs on each finished block of dx's rows
    (every row once, the cropped one of an odd height too): see conv.relu_epilogue."""
    xp = get_array_module(dout)
    arg, shape = cache
    n, h, w, c = shape
    ho, wo = h // 2, w // 2
    dx = xp.empty(shape, dtype=dout.dtype) if out is None else out
    dx[:, 2 * ho:] = 0  # the cropped last row/column of odd sizes
    dx[:, :, 2 * wo:] = 0

    def fill(lo, hi):
        for k, dst in enumerate(_slots(dx, lo, hi, wo)):
            xp.multiply(dout[:, lo:hi], arg[:, lo:hi] == k, out=dst)
        if epilogue is not None:
            epilogue(dx, 2 * lo, 2 * hi)

    in_row_blocks(fill, ho, 2 * n * w * c * dout.itemsize, xp)
    if epilogue is not None and h > 2 * ho:
        epilogue(dx, 2 * ho, h)
    return dx


# ---- GPU path: kernels/pool.cu ----------------------------------------------
import numpy as np  # noqa: E402

from .. import cuda  # noqa: E402
from ..backend import is_gpu_array  # noqa: E402


def maxpool_forward_gpu(x, out=None, argmax=None):
    """x (N, H, W, C) float32 -> y (N, H//2, W//2, C), cache (argmax uint8, x.shape)."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    oshape = (n, h // 2, w // 2, c)
    y = cuda.out_array(xp, out, oshape)
    arg = cuda.out_array(xp, argmax, oshape, np.uint8, what="argmax")
    blk = cuda.config["block"]
    cuda.launch(cuda.get_kernel("pool", "maxpool_forward_kernel"), cuda.ceil_div(y.size, blk), blk,
                (y, arg, x, cuda.i32(n), cuda.i32(h), cuda.i32(w), cuda.i32(c)))
    return y, (arg, tuple(x.shape))


def maxpool_backward_gpu(dout, cache, out=None):
    """dout (N, Ho, Wo, C) -> dx (N, H, W, C), every element written."""
    xp = get_array_module(dout)
    arg, shape = cache
    n, h, w, c = shape
    if dout.shape != (n, h // 2, w // 2, c) or arg.shape != dout.shape:
        raise ValueError(f"maxpool backward: dout {dout.shape}, argmax {arg.shape}, input {shape}")
    dx = cuda.out_array(xp, out, shape)
    blk = cuda.config["block"]
    cuda.launch(cuda.get_kernel("pool", "maxpool_backward_kernel"), cuda.ceil_div(dx.size, blk), blk,
                (dx, dout, arg, cuda.i32(n), cuda.i32(h), cuda.i32(w), cuda.i32(c)))
    return dx


def _on_gpu(*arrays):
    return all(is_gpu_array(a) and a.dtype == np.float32 for a in arrays)


def maxpool_forward(x):
    if _on_gpu(x):
        return maxpool_forward_gpu(x)
    return maxpool_forward_cpu(x)


def maxpool_backward(dout, cache):
    if _on_gpu(dout):
        return maxpool_backward_gpu(dout, cache)
    return maxpool_backward_cpu(dout, cache)


# ---- average pooling (VGG16(pooling="avg"), the `--pooling avg` option) ------

POOLINGS = ("max", "avg")


def avgpool_forward_cpu(x):
    """x (N, H, W, C) -> y (N, H//2, W//2, C), cache = x.shape."""
    n, h, w, c = x.shape
    ho, wo = h // 2, w // 2
    win = x[:, :2 * ho, :2 * wo, :].reshape(n, ho, 2, wo, 2, c)
    # slot order 00, 01, 10, 11 and one multiply: what the kernel does
    y = (win[:, :, 0, :, 0] + win[:, :, 0, :, 1] + win[:, :, 1, :, 0] + win[:, :, 1, :, 1]) * 0.25
    return y.astype(x.dtype, copy=False), tuple(x.shape)


def avgpool_backward_cpu(dout, cache):
    """dout (N, Ho, Wo, C) -> dx (N, H, W, C): dx = dy/4 over each window."""
    xp = get_array_module(dout)
    n, h, w, c = cache
    ho, wo = h // 2, w // 2
    dx = xp.zeros(cache, dtype=dout.dtype)
    q = dout * 0.25  # (N, Ho, Wo, C)
    win = dx[:, :2 * ho, :2 * wo, :].reshape(n, ho, 2, wo, 2, c)  # a view of dx
    for dy in (0, 1):
        for dxx in (0, 1):
            win[:, :, dy, :, dxx] = q
    return dx


def avgpool_forward_gpu(x, out=None):
    """x (N, H, W, C) float32 -> y (N, H//2, W//2, C), cache x.shape."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    y = cuda.out_array(xp, out, (n, h // 2, w // 2, c))
    blk = cuda.config["block"]
    cuda.launch(cuda.get_kernel("pool", "avgpool_forward_kernel"), cuda.ceil_div(y.size, blk), blk,
                (y, x, cuda.i32(n), cuda.i32(h), cuda.i32(w), cuda.i32(c)))
    return y, tuple(x.shape)


def avgpool_backward_gpu(dout, cache, out=None):
    """dout (N, Ho, Wo, C) -> dx (N, H, W, C), every element written."""
    xp = get_array_module(dout)
    n, h, w, c = cache
    if dout.shape != (n, h // 2, w // 2, c):
        raise ValueError(f"avgpool backward: dout {dout.shape}, input {cache}")
    dx = cuda.out_array(xp, out, cache)
    blk = cuda.config["block"]
    cuda.launch(cuda.get_kernel("pool", "avgpool_backward_kernel"), cuda.ceil_div(dx.size, blk), blk,
                (dx, dout, cuda.i32(n), cuda.i32(h), cuda.i32(w), cuda.i32(c)))
    return dx


def avgpool_forward(x):
    if _on_gpu(x):
        return avgpool_forward_gpu(x)
    return avgpool_forward_cpu(x)


def avgpool_backward(dout, cache):
    if _on_gpu(dout):
        return avgpool_backward_gpu(dout, cache)
    return avgpool_backward_cpu(dout, cache)
