"""3x3 convolution, stride 1, zero padding 1, with bias and ReLU, as one GEMM.

    cols = im2col(x)                    # (N*H*W, 9*Cin), column (ky*3+kx)*Cin + c
    y    = relu(cols @ W.reshape(9*Cin, Cout) + b)

Backward to the input only (no weight gradients):

    dz = dout ⊙ [y > 0]
    dx = conv(dz, W flipped in space, Cin<->Cout swapped), i.e.
         im2col(dz) @ W[::-1, ::-1].transpose(0, 1, 3, 2).reshape(9*Cout, Cin)

because dx[i, j] = Σ_{ky,kx} dz[i+1-ky, j+1-kx] · W[ky, kx]ᵀ.
Kernels: kernels/conv.cu. Tests: tests/test_conv.py."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backend import get_array_module

_scratch = threading.local()
_pool = None


def scratch(xp, name, shape, dtype):
    """A reused buffer for NumPy temporaries (im2col columns): a fresh 100+ MB
    array each call costs page faults that take as long as filling it. Valid
    until the next call with the same name on this thread. CuPy has its pool."""
    if xp is not np:
        return xp.empty(shape, dtype=dtype)
    size = int(np.prod(shape))
    buf = getattr(_scratch, name, None)
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = np.empty(size, dtype=dtype)
        setattr(_scratch, name, buf)
    return buf[:size].reshape(shape)


def in_row_chunks(fn, rows, xp):
    """fn(lo, hi) over [0, rows) in one chunk per core. NumPy releases the GIL in
    copies and ufuncs, so the memory-bound steps around the GEMMs (which BLAS
    already spreads over the cores) use every core too: im2col takes half the
    time on 2 cores. CuPy: one call."""
    global _pool
    k = min(os.cpu_count() or 1, 8)
    if xp is not np or k == 1 or rows < 2 * k:
        fn(0, rows)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=k, thread_name_prefix="cpstyle")
    cuts = [rows * i // k for i in range(k + 1)]
    for f in [_pool.submit(fn, lo, hi) for lo, hi in zip(cuts, cuts[1:])]:
        f.result()


def im2col_cpu(x, out=None):
    """(N, H, W, C) -> (N*H*W, 9*C), zero padding 1: column block (ky, kx) of
    output pixel (i, j) holds x[i+ky-1, j+kx-1], or zeros outside the image."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    cols = xp.empty((n, h, w, 3, 3, c), dtype=x.dtype) if out is None else out.reshape(n, h, w, 3, 3, c)

    def fill(lo, hi):  # output rows lo..hi-1
        for ky in range(3):
            dy = ky - 1
            i0, i1 = max(lo, -dy), min(hi, h - dy)  # rows whose source row is inside
            for kx in range(3):
                dx = kx - 1
                j0, j1 = max(0, -dx), min(w, w - dx)
                dst = cols[:, :, :, ky, kx, :]
                if i0 < i1:
                    dst[:, i0:i1, j0:j1] = x[:, i0 + dy:i1 + dy, j0 + dx:j1 + dx]
                    dst[:, i0:i1, :j0] = 0
                    dst[:, i0:i1, j1:] = 0
                dst[:, lo:max(lo, min(i0, hi))] = 0
                dst[:, max(lo, i1):hi] = 0

    in_row_chunks(fill, h, xp)
    return cols.reshape(n * h * w, 9 * c)


def flip_kernel(w):
    """(3, 3, Cin, Cout) -> (3, 3, Cout, Cin): the kernel of the backward conv."""
    xp = get_array_module(w)
    return xp.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))


def conv_forward_cpu(x, w, b):
    """x (N, H, W, Cin), w (3, 3, Cin, Cout), b (Cout,) -> y (N, H, W, Cout), cache."""
    xp = get_array_module(x)
    n, h, wd, cin = x.shape
    cout = w.shape[3]
    cols = im2col_cpu(x, scratch(xp, "cols", (n * h * wd, 9 * cin), x.dtype))
    y = cols @ w.reshape(9 * cin, cout)  # (N*H*W, Cout)

    def bias_relu(lo, hi):
        v = y[lo:hi]
        v += b
        xp.maximum(v, 0, out=v)

    in_row_chunks(bias_relu, y.shape[0], xp)
    y = y.reshape(n, h, wd, cout)
    return y, (w, y)


def conv_backward_cpu(dout, cache, wflip=None):
    """dout (N, H, W, Cout) -> dx (N, H, W, Cin). `wflip` = flip_kernel(w), if
    the caller keeps it (the model does)."""
    w, y = cache
    if wflip is None:
        wflip = flip_kernel(w)
    xp = get_array_module(dout)
    n, h, wd, cout = dout.shape
    cin = w.shape[2]
    dz = scratch(xp, "dz", dout.shape, dout.dtype)

    def relu_mask(lo, hi):  # dz = dout ⊙ [y > 0]
        xp.multiply(dout[:, lo:hi], y[:, lo:hi] > 0, out=dz[:, lo:hi])

    in_row_chunks(relu_mask, h, xp)
    if 4 * cin <= cout:
        # Far fewer input than output channels (conv1_1: 3 vs 64): scatter
        # dz·Wᵀ (N*H*W, 9*Cin) back to the pixels (col2im) instead of an
        # im2col of dz with 9*Cout columns and a GEMM only Cin wide.
        return col2im_cpu(dz.reshape(-1, cout) @ w.reshape(9 * cin, cout).T, dout.shape[:3])
    cols = im2col_cpu(dz, scratch(xp, "cols", (n * h * wd, 9 * cout), dz.dtype))
    dx = cols @ wflip.reshape(9 * cout, cin)  # (N*H*W, Cin)
    return dx.reshape(n, h, wd, cin)


def col2im_cpu(cols, nhw):
    """(N*H*W, 9*C) -> (N, H, W, C): the adjoint of im2col (sums the 9 taps)."""
    xp = get_array_module(cols)
    n, h, w = nhw
    c = cols.shape[1] // 9
    cols = cols.reshape(n, h, w, 3, 3, c)
    xpad = xp.zeros((n, h + 2, w + 2, c), dtype=cols.dtype)
    for ky in range(3):
        for kx in range(3):
            xpad[:, ky:ky + h, kx:kx + w, :] += cols[:, :, :, ky, kx, :]
    return xp.ascontiguousarray(xpad[:, 1:-1, 1:-1, :])


# ---- GPU path: kernels/conv.cu + the backend's matmul -------------------------
import numpy as np  # noqa: E402

from .. import cuda  # noqa: E402
from ..backend import is_gpu_array  # noqa: E402


def im2col_gpu(x, out=None):
    """(N, H, W, C) float32 -> (N*H*W, 9*C), zero padding 1 (im2col_cpu's layout)."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    cols = cuda.out_array(xp, out, (n * h * w, 9 * c), what="im2col out")
    blk = cuda.config["block"]
    cuda.launch(cuda.get_kernel("conv", "im2col_kernel"), cuda.ceil_div(cols.size, blk), blk,
                (cols, x, cuda.i32(n), cuda.i32(h), cuda.i32(w), cuda.i32(c)))
    return cols


def conv_forward_gpu(x, w, b, out=None, cols=None):
    """x (N, H, W, Cin), w (3, 3, Cin, Cout), b (Cout,) float32 -> y (N, H, W, Cout),
    cache (w, y). `cols`: work buffer of at least N*H*W*9*Cin floats (any shape)."""
    xp = get_array_module(x)
    n, h, wd, cin = x.shape
    cout = w.shape[3]
    if w.shape != (3, 3, cin, cout) or b.shape != (cout,):
        raise ValueError(f"conv: x {x.shape}, w {w.shape}, b {b.shape} do not fit")
    cols = im2col_gpu(x, out=cuda.work_view(xp, cols, (n * h * wd, 9 * cin), what="cols"))
    y = cuda.out_array(xp, out, (n, h, wd, cout))
    y2d = y.reshape(n * h * wd, cout)  # a view: y is C-contiguous
    xp.matmul(cols, w.reshape(9 * cin, cout), out=y2d)
    blk = cuda.config["block"]
    cuda.launch(cuda.get_kernel("conv", "bias_relu_kernel"), cuda.ceil_div(y2d.size, blk), blk,
                (y2d, b, cuda.i32(n * h * wd), cuda.i32(cout)))
    return y, (w, y)


def conv_backward_gpu(dout, cache, wflip=None, out=None, cols=None, dz=None):
    """dout (N, H, W, Cout) -> dx (N, H, W, Cin). `wflip` = flip_kernel(w) (made
    here when None); `cols` (>= N*H*W*9*Cout floats) and `dz` (>= N*H*W*Cout)
    are work buffers of any shape."""
    xp = get_array_module(dout)
    w, y = cache
    if wflip is None:
        wflip = flip_kernel(w)
    n, h, wd, cout = dout.shape
    cin = w.shape[2]
    if y.shape != dout.shape or wflip.shape != (3, 3, cout, cin):
        raise ValueError(f"conv backward: dout {dout.shape}, y {y.shape}, wflip {wflip.shape} do not fit")
    dz = cuda.work_view(xp, dz, dout.shape, what="dz")
    blk = cuda.config["block"]
    cuda.launch(cuda.get_kernel("conv", "relu_backward_kernel"), cuda.ceil_div(dz.size, blk), blk,
                (dz, dout, y, cuda.i32(dz.size)))  # dz = dout ⊙ [y > 0]
    cols = im2col_gpu(dz, out=cuda.work_view(xp, cols, (n * h * wd, 9 * cout), what="cols"))
    dx = cuda.out_array(xp, out, (n, h, wd, cin))
    xp.matmul(cols, wflip.reshape(9 * cout, cin), out=dx.reshape(n * h * wd, cin))
    return dx


def _on_gpu(*arrays):
    return all(is_gpu_array(a) and a.dtype == np.float32 for a in arrays)


def conv_forward(x, w, b):
    if _on_gpu(x, w, b):
        return conv_forward_gpu(x, w, b)
    return conv_forward_cpu(x, w, b)


def conv_backward(dout, cache, wflip=None):
    if _on_gpu(dout, cache[1]):
        return conv_backward_gpu(dout, cache, wflip)
    return conv_backward_cpu(dout, cache, wflip)
