"""3x3 convolution, stride 1, zero padding 1, with bias and ReLU, as GEMMs.

Two one-GEMM lowerings of the same product (the GPU path; on NumPy where the
row-shifted form below does not apply); each conv uses the one with fewer
columns:

    im2col (Cout > Cin):   cols = im2col(x)          (N*H*W, 9*Cin), column (ky*3+kx)*Cin + c
                           y = relu(cols @ W.reshape(9*Cin, Cout) + b)
    col2im (Cout <= Cin):  P = x @ W'                (N*H*W, 9*Cout), W' = W flipped in space
                           y = relu(col2im(P) + b)   col2im = the adjoint of im2col

im2col writes its 9x columns and the GEMM reads them; col2im reads the GEMM's
product once, in cache-sized blocks that bias/ReLU (or the backward's mask)
finish in cache, and its GEMM shape (long output side) suits BLAS better.

Backward to the input only (no weight gradients):

    dz = dout ⊙ [y > 0]
    dx = conv(dz, W flipped in space, Cin<->Cout swapped), lowered the same way:
         col2im(dz @ W.reshape(9*Cin, Cout)ᵀ)             (Cin <= Cout: every VGG layer)
         im2col(dz) @ W[::-1, ::-1].transpose(0, 1, 3, 2).reshape(9*Cout, Cin)

because dx[i, j] = Σ_{ky,kx} dz[i+1-ky, j+1-kx] · W[ky, kx]ᵀ.

Row-shifted (NumPy, when BLAS takes a beta: ops/blas.py; forward and backward):
unfold only along x, U = unfold_kx(x) (N, H+2, W, 3*Cin) with zero rows above
and below, and in each image U's rows for output row i and kernel row ky are
rows (i+ky)*W .. (i+ky)*W+W-1: a contiguous slice. So

    y = relu(Σ_ky U[ky*W : ky*W + H*W] @ W[ky].reshape(3*Cin, Cout) + b)

three GEMMs summing into y through BLAS's beta, and no col2im pass: the same
GEMM work, far less memory traffic, as U is made block by block in cache
(conv_rows_cpu). The backward is the same sum with dz for x and flip_kernel(w)
for W. The GEMMs are thinner (K = 3*Cin), which OpenBLAS runs about as well:
its rate follows the output width (148 GFLOP/s at 64 columns, 199 at 512),
not K. Timed inside 256x256 objective iterations (2-core VM, both forms in one
process): conv1_2 forward 29 ms against 44, the 26 conv passes 443 ms against
523.

Winograd F(2x2, 3x3) (NumPy, forward and backward; ops/winograd.py): per 2x2
output tile, y = Aᵀ[Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)]A, i.e. 16 GEMMs (tiles, Cin) @
(Cin, Cout) where the taps take 36 per tile: 2.25x fewer GEMM flops, for
additions-only input and output transforms made in blocks per thread. It
pays where the GEMMs dominate those transforms: both channel counts >= 128
and enough work per image (uses_winograd; the measurements by the limits).
In one process alternating with the row-shifted form, quiet 2-core VM: per
layer 0.58x .. 0.95x at 256² (conv2_2 .. conv5_3), 0.54x .. 0.78x at 512²;
a tutorial objective evaluation 0.561 s -> 0.434 s at 256² (0.79x), 2.089 s
-> 1.586 s at 512² (0.76x) (bench/winograd.py).

Kernels: kernels/conv.cu (the GPU path uses im2col). Tests: tests/test_conv.py,
tests/test_winograd.py."""
import numpy as np

from .. import cuda
from ..backend import get_array_module
from . import blas, winograd
from .parallel import in_row_blocks, in_row_chunks, scratch

# The NumPy backend's third form (module docstring): on when NumPy's OpenBLAS
# takes a beta (ops/blas.py), the product has at least ROWS_MIN_COLUMNS output
# channels (with conv1_1's backward to 3 channels in it too, a 256x256 iteration
# took 0.537 s against 0.527) and the image at least ROWS_MIN_PIXELS (at 16x16
# the two forms are level: 0.522 s against 0.520 with the limit at 1). Tests
# switch it off to run the one-GEMM forms.
ROWS_FORM = True
ROWS_MIN_COLUMNS = 16
ROWS_MIN_PIXELS = 1024

# The NumPy backend's Winograd form (ops/winograd.py; module docstring), when
# BLAS is reachable (ops/blas.py), before the row-shifted form: where both
# channel counts are at least WINOGRAD_MIN_CHANNELS and the GEMM work per
# image, pixels·Cin·Cout, at least WINOGRAD_MIN_WORK. Below those its NumPy
# transforms and short GEMMs cost about what the 2.25x fewer flops save, or
# more: time against the row-shifted form's, one process alternating, quiet
# 2-core VM (bench/results/2026-11-29-cpu-winograd-*): 64 channels 1.3x .. 1.6x at
# 128² and 256², 2.1x at 512² (conv1_2); 64 <-> 128 (conv2_1) 0.81x .. 1.02x;
# at 2^24, 32²x128 1.07x, 16²x256 0.93x .. 0.96x, 8²x512 0.90x .. 0.92x; at
# 2^26 and above 0.54x .. 0.95x. Tests switch it off (WINOGRAD = False).
WINOGRAD = True
WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_WORK = 1 << 25

def _matmul(xp, a, b, out):
    """out = a @ b: on NumPy through blas.matmul (our threads, OpenBLAS's own
    idle), else the backend's matmul."""
    if xp is np:
        return blas.matmul(a, b, out)
    return xp.matmul(a, b, out=out)


def uses_rows_form(columns, pixels, dtype):
    """Does a NumPy conv product with `columns` output channels over `pixels`
    pixels per image take the row-shifted form?"""
    return (ROWS_FORM and columns >= ROWS_MIN_COLUMNS and pixels >= ROWS_MIN_PIXELS
            and blas.available(dtype))


def uses_winograd(cin, cout, pixels, dtype):
    """Does a NumPy conv from `cin` to `cout` channels over `pixels` pixels per
    image take the Winograd form (the backward: cin and cout swapped)?"""
    return (WINOGRAD and min(cin, cout) >= WINOGRAD_MIN_CHANNELS
            and pixels * cin * cout >= WINOGRAD_MIN_WORK and blas.available(dtype))


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


def gemm_weights(w, wflip=None):
    """w (3, 3, Cin, Cout) (and flip_kernel(w), if kept) -> (forward matrix,
    backward matrix): the GEMM operands of conv_forward_cpu and
    conv_input_grad_cpu for this kernel, C-contiguous.
    A transposed view works too, but OpenBLAS packs it more slowly: the model
    keeps these (about 1.7x the weights' memory) for 12 ms of a 0.61 s 256²
    iteration (in-process A/B, 2-core VM).
    Where the Winograd form may take this kernel (uses_winograd's channel
    rule), its transformed kernels are made here too and kept by ops/winograd
    while w lives: the model's load holds their memory (16/9 of the kernel's,
    each way), not its first evaluation."""
    xp = get_array_module(w)
    cin, cout = w.shape[2], w.shape[3]
    if xp is np and WINOGRAD and min(cin, cout) >= WINOGRAD_MIN_CHANNELS \
            and blas.available(w.dtype):
        winograd.transformed_kernel(w)
        winograd.transformed_kernel(w, flip=True)
    wflip = flip_kernel(w) if wflip is None else wflip
    fwd = (xp.ascontiguousarray(wflip.reshape(9 * cout, cin).T) if cout <= cin
           else w.reshape(9 * cin, cout))  # (Cin, 9*Cout) or (9*Cin, Cout)
    bwd = (xp.ascontiguousarray(w.reshape(9 * cin, cout).T) if cin <= cout
           else wflip.reshape(9 * cout, cin))  # (Cout, 9*Cin) or (9*Cout, Cin)
    return fwd, bwd


def conv_forward_cpu(x, w, b, wflip=None, out=None, wmat=None):
    """x (N, H, W, Cin), w (3, 3, Cin, Cout), b (Cout,) -> y (N, H, W, Cout), cache.
    `wflip` = flip_kernel(w), or `wmat` = gemm_weights(w)[0], if the caller keeps
    it (the model keeps wmat); `out`: an (N, H, W, Cout) array for y, if the
    caller keeps one.

    The row-shifted form where it applies (uses_rows_form), else one GEMM with
    the lowering that moves fewer columns (see the module docstring): im2col of
    x (9*Cin) when Cout > Cin, else x·W' then col2im of the (N*H*W, 9*Cout)
    product; bias and ReLU are applied to each block of y while it is in cache."""
    xp = get_array_module(x)
    n, h, wd, cin = x.shape
    cout = w.shape[3]
    if out is not None:
        cuda.out_array(xp, out, (n, h, wd, cout), x.dtype, what="conv: out")

    def bias_relu(v):  # two passes over a cache-sized block
        v += b
        xp.maximum(v, 0, out=v)

    if xp is np and uses_winograd(cin, cout, h * wd, x.dtype):
        y = winograd.winograd_cpu(x, winograd.transformed_kernel(w), out=out,
                                  epilogue=lambda a, lo, hi: bias_relu(a[:, lo:hi]))
        return y, (w, y)
    if xp is np and uses_rows_form(cout, h * wd, x.dtype):
        y = conv_rows_cpu(x, xp.ascontiguousarray(w).reshape(3, 3 * cin, cout), out=out,
                          epilogue=lambda a, lo, hi: bias_relu(a[:, lo:hi]))
        return y, (w, y)
    if cout <= cin:
        # y[i, j] = Σ_{ky,kx} x[i+ky-1, j+kx-1]·W[ky, kx] = col2im(x·W'), with W'
        # the kernel flipped in space: column (ky, kx, co) of the product holds
        # x·W[2-ky, 2-kx][:, co], i.e. flip_kernel(w) read as (Cin, 9*Cout)
        if wmat is None:
            wmat = (flip_kernel(w) if wflip is None else wflip).reshape(9 * cout, cin).T
        p = scratch(xp, "cols", (n * h * wd, 9 * cout), x.dtype)
        _matmul(xp, x.reshape(-1, cin), wmat, p)  # (N*H*W, 9*Cout)
        y = col2im_cpu(p, (n, h, wd), out=out,
                       epilogue=lambda a, lo, hi: bias_relu(a[:, lo:hi]))
        return y, (w, y)
    cols = im2col_cpu(x, scratch(xp, "cols", (n * h * wd, 9 * cin), x.dtype))
    y = xp.empty((n, h, wd, cout), dtype=x.dtype) if out is None else out
    y2 = y.reshape(n * h * wd, cout)  # a view: y is C-contiguous
    _matmul(xp, cols, w.reshape(9 * cin, cout) if wmat is None else wmat, y2)
    in_row_blocks(lambda lo, hi: bias_relu(y2[lo:hi]), y2.shape[0], cout * y.itemsize, xp)
    return y, (w, y)


def relu_backward_cpu(dout, y, out=None, add=None, lo=0, hi=None):
    """out[:, lo:hi] = (dout + add) ⊙ [y > 0] on rows lo..hi-1 (all rows by
    default): the ReLU's backward, with a tap gradient `add` folded in (an
    array, or an ops/gram.GramGrad whose rows are made here; dout None: add
    alone). `out` may be `dout` (in place)."""
    xp = get_array_module(y)
    out = xp.empty_like(y) if out is None else out
    hi = y.shape[1] if hi is None else hi
    rows = slice(lo, hi)
    if hasattr(add, "rows"):  # ops/gram.GramGrad: its rows made here
        add = add.rows(lo, hi)
        d = add if dout is None else xp.add(dout[:, rows], add, out=out[:, rows])
    else:
        d = dout[:, rows]
        if add is not None:
            d = xp.add(d, add[:, rows], out=out[:, rows])
    xp.multiply(d, y[:, rows] > 0, out=out[:, rows])
    return out


def relu_epilogue(y, add=None):
    """fn(out, lo, hi): relu_backward_cpu in place on rows lo..hi-1 of `out`, for
    an op that makes the gradient of y block by block (col2im, the pool's
    backward) to finish each block while it is in cache."""
    return lambda out, lo, hi: relu_backward_cpu(out, y, out, add, lo, hi)


def conv_backward_cpu(dout, cache, wflip=None):
    """dout (N, H, W, Cout) -> dx (N, H, W, Cin). `wflip` = flip_kernel(w), if
    the caller keeps it; only the im2col form (Cin > Cout) uses it."""
    w, y = cache
    xp = get_array_module(dout)
    dz = scratch(xp, "dz", dout.shape, dout.dtype)
    in_row_blocks(lambda lo, hi: relu_backward_cpu(dout, y, dz, None, lo, hi),
                  dout.shape[1], row_bytes(dout), xp)
    return conv_input_grad_cpu(dz, w, wflip)


def conv_input_grad_cpu(dz, w, wflip=None, epilogue=None, out=None, wmat=None):
    """The linear part of the conv's backward: dz (N, H, W, Cout), the gradient
    after the ReLU mask, -> dx (N, H, W, Cin) (into `out` if given). `wmat` =
    gemm_weights(w)[1], if the caller keeps it.
    epilogue(dx, lo, hi), if given, runs on each block of rows of dx as soon as
    it is complete (the model folds the next layer's ReLU backward in there:
    relu_epilogue)."""
    xp = get_array_module(dz)
    n, h, wd, cout = dz.shape
    cin = w.shape[2]
    if out is not None:
        cuda.out_array(xp, out, (n, h, wd, cin), dz.dtype, what="conv: out")
    if xp is np and uses_winograd(cout, cin, h * wd, dz.dtype):
        return winograd.winograd_cpu(dz, winograd.transformed_kernel(w, flip=True), out=out,
                                     epilogue=epilogue)
    if xp is np and uses_rows_form(cin, h * wd, dz.dtype):
        wflip = flip_kernel(w) if wflip is None else wflip
        return conv_rows_cpu(dz, wflip.reshape(3, 3 * cout, cin), out=out, epilogue=epilogue)
    if cin <= cout:
        # Every VGG layer: scatter dz·Wᵀ (N*H*W, 9*Cin) back to the pixels
        # (col2im) rather than an im2col of dz with 9*Cout columns. The columns
        # are Cout/Cin times fewer, and col2im reads them once where im2col
        # writes them (a write costs a read too), so at 256x256 it takes about
        # half the memory time, and the GEMM's long output side suits BLAS.
        p = scratch(xp, "cols", (n * h * wd, 9 * cin), dz.dtype)
        _matmul(xp, dz.reshape(-1, cout), w.reshape(9 * cin, cout).T if wmat is None else wmat,
                p)  # (N*H*W, 9*Cin)
        return col2im_cpu(p, dz.shape[:3], out=out, epilogue=epilogue)
    if wmat is None:
        wmat = (flip_kernel(w) if wflip is None else wflip).reshape(9 * cout, cin)
    cols = im2col_cpu(dz, scratch(xp, "cols", (n * h * wd, 9 * cout), dz.dtype))
    dx = xp.empty((n, h, wd, cin), dtype=dz.dtype) if out is None else out
    _matmul(xp, cols, wmat, dx.reshape(n * h * wd, cin))
    if epilogue is not None:
        in_row_blocks(lambda lo, hi: epilogue(dx, lo, hi), h, row_bytes(dx), xp)
    return dx


def unfold_kx_rows(x, u, r0, r1):
    """Rows r0..r1-1 of U = unfold_kx(x) (N, H+2, W, 3, C), into u (N, r1-r0, W,
    3, C): U[:, r, j, kx] = x[:, r-1, j+kx-1], zero outside the image (rows 0
    and H+1 are all zeros)."""
    h = x.shape[1]
    s0, s1 = max(r0 - 1, 0), min(r1 - 1, h)  # rows of x inside
    d0 = s0 + 1 - r0
    u[:, :d0] = 0  # padding rows above and below
    u[:, max(d0, s1 + 1 - r0):] = 0
    if s0 >= s1:
        return u
    src, dst = x[:, s0:s1], u[:, d0:d0 + s1 - s0]
    dst[:, :, :, 1] = src
    dst[:, :, 1:, 0] = src[:, :, :-1]
    dst[:, :, 0, 0] = 0
    dst[:, :, :-1, 2] = src[:, :, 1:]
    dst[:, :, -1, 2] = 0
    return u


def conv_rows_cpu(x, wk, out=None, epilogue=None):
    """The row-shifted form (module docstring), no bias or ReLU: x (N, H, W, C),
    wk (3, 3*C, Cout) with wk[ky] = W[ky].reshape(3*C, Cout) -> out (N, H, W,
    Cout) = conv3x3(x, W). epilogue(out, lo, hi) then runs on cache-sized blocks
    of rows (bias + ReLU, or the next layer's ReLU mask). Needs blas.available.

    Each thread takes a band of output rows and works through it in blocks of
    about parallel.BLOCK_BYTES of output (in_row_blocks, with OpenBLAS on one
    thread: blas.single_threaded): it unfolds the block's rows of x (two more
    than the block) into a buffer of its own, runs the three GEMMs, then the
    epilogue, so U never goes to memory and the block stays in cache from one
    step to the next. 256x256 conv1_2 forward,
    2-core VM: 29 ms, against 36 with U unfolded whole first, 40 with whole
    bands and 43 with OpenBLAS's threads over the whole image."""
    n, h, w, c = x.shape
    cout = wk.shape[2]
    out = cuda.out_array(np, out, (n, h, w, cout), x.dtype, what="conv: out")
    wk = np.ascontiguousarray(wk, dtype=x.dtype)

    def block(a0, a1):  # output rows a0..a1-1 of every image
        # U's rows a0..a1+1 (padded rows: x's rows a0-1..a1), in this thread's buffer
        u = unfold_kx_rows(x, scratch(np, "unfold_block", (n, a1 - a0 + 2, w, 3, c), x.dtype),
                           a0, a1 + 2)
        for k in range(n):
            rows, y = u[k].reshape(-1, 3 * c), out[k].reshape(h * w, cout)
            for ky in range(3):  # y[a0..a1) += U[a0+ky .. a1+ky) (rows*W, 3*C) @ wk[ky]
                blas.gemm(rows[ky * w:(ky + a1 - a0) * w], wk[ky], y[a0 * w:a1 * w],
                          beta=0.0 if ky == 0 else 1.0)
        if epilogue is not None:
            epilogue(out, a0, a1)

    with blas.single_threaded():
        in_row_blocks(block, h, row_bytes(out), np)
    return out


def row_bytes(a):
    """Bytes in one row (all images, all columns) of an (N, H, W, C) array."""
    return a.shape[0] * a.shape[2] * a.shape[3] * a.itemsize


def col2im_cpu(cols, nhw, out=None, block_bytes=None, epilogue=None):
    """(N*H*W, 9*C) -> (N, H, W, C): the adjoint of im2col, out[a, b] = Σ_{ky,kx}
    cols[a+1-ky, b+1-kx, (ky, kx)] over the taps inside the image. Threaded over
    output rows, in cache-sized blocks (parallel.in_row_blocks) so the nine sums
    into a block hit the cache and the columns are read from memory once.
    epilogue(out, lo, hi): run on each finished block of rows (conv_input_grad_cpu)."""
    xp = get_array_module(cols)
    n, h, w = nhw
    c = cols.shape[1] // 9
    taps = cols.reshape(n, h, w, 3, 3, c)
    out = xp.empty((n, h, w, c), dtype=cols.dtype) if out is None else out

    def fill(a0, a1):  # output rows a0..a1-1
        out[:, a0:a1] = taps[:, a0:a1, :, 1, 1]  # the centre tap covers every pixel
        for ky in range(3):
            s0, s1 = max(a0 + 1 - ky, 0), min(a1 + 1 - ky, h)  # source rows
            if s0 >= s1:
                continue
            d0 = s0 + ky - 1
            for kx in range(3):
                if ky == 1 and kx == 1:
                    continue
                b0, b1 = max(kx - 1, 0), min(w, w + kx - 1)  # destination columns
                dst = out[:, d0:d0 + s1 - s0, b0:b1]
                xp.add(dst, taps[:, s0:s1, b0 + 1 - kx:b1 + 1 - kx, ky, kx], out=dst)
        if epilogue is not None:
            epilogue(out, a0, a1)

    in_row_blocks(fill, h, row_bytes(out), xp, block_bytes)
    return out


# ---- GPU path: kernels/conv.cu + the backend's matmul -------------------------
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


def conv_shapes(x, w, b):
    """(N, H, W, Cin, Cout) of a forward conv, or ValueError if the arrays do not fit."""
    n, h, wd, cin = x.shape
    cout = w.shape[3]
    if w.shape != (3, 3, cin, cout) or b.shape != (cout,):
        raise ValueError(f"conv: x {x.shape}, w {w.shape}, b {b.shape} do not fit")
    return n, h, wd, cin, cout


def conv_forward_gpu(x, w, b, out=None, cols=None, wflip=None):
    """x (N, H, W, Cin), w (3, 3, Cin, Cout), b (Cout,) float32 -> y (N, H, W, Cout),
    cache (w, y). `cols`: work buffer of at least N*H*W*9*Cin floats (any shape).
    im2col, one GEMM and bias_relu_kernel; or, where gpu_forward_uses_col2im,
    x·W' (W' = wflip, made here when None) and col2im_bias_relu_kernel."""
    xp = get_array_module(x)
    n, h, wd, cin, cout = conv_shapes(x, w, b)
    y = cuda.out_array(xp, out, (n, h, wd, cout))
    blk = cuda.config["block"]
    if gpu_forward_uses_col2im(cin, cout):
        wflip = flip_kernel(w) if wflip is None else wflip
        p = cuda.work_view(xp, cols, (n * h * wd, 9 * cout), what="cols")
        xp.matmul(x.reshape(n * h * wd, cin), wflip.reshape(9 * cout, cin).T, out=p)
        cuda.launch(cuda.get_kernel("conv", "col2im_bias_relu_kernel"), cuda.ceil_div(y.size, blk),
                    blk, (y, p, b, cuda.i32(n), cuda.i32(h), cuda.i32(wd), cuda.i32(cout)))
        return y, (w, y)
    cols = im2col_gpu(x, out=cuda.work_view(xp, cols, (n * h * wd, 9 * cin), what="cols"))
    y2d = y.reshape(n * h * wd, cout)  # a view: y is C-contiguous
    xp.matmul(cols, w.reshape(9 * cin, cout), out=y2d)
    cuda.launch(cuda.get_kernel("conv", "bias_relu_kernel"), cuda.ceil_div(y2d.size, blk), blk,
                (y2d, b, cuda.i32(n * h * wd), cuda.i32(cout)))
    return y, (w, y)


def gpu_forward_uses_col2im(cin, cout):
    """Whether the GPU forward takes the col2im form (the NumPy backend's for
    Cout <= Cin). Not yet: no GPU run has timed it against im2col (bench.profile_ops
    --col2im all does)."""
    return False


def conv_backward_gpu(dout, cache, wflip=None, out=None, cols=None, dz=None):
    """dout (N, H, W, Cout) -> dx (N, H, W, Cin). `wflip` = flip_kernel(w) (made
    here when None); `cols` (>= N*H*W*9*Cout floats) and `dz` (>= N*H*W*Cout)
    are work buffers of any shape. im2col of dz and one GEMM, or for conv1_1
    dz·Wᵀ and col2im_kernel (gpu_backward_uses_col2im)."""
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
    dx = cuda.out_array(xp, out, (n, h, wd, cin))
    if gpu_backward_uses_col2im(cin, cout):
        # conv1_1: dz·Wᵀ (N*H*W, 9*Cin), then col2im_kernel sums the taps
        p = cuda.work_view(xp, cols, (n * h * wd, 9 * cin), what="cols")
        xp.matmul(dz.reshape(n * h * wd, cout), w.reshape(9 * cin, cout).T, out=p)
        return col2im_gpu(p, (n, h, wd), out=dx)
    cols = im2col_gpu(dz, out=cuda.work_view(xp, cols, (n * h * wd, 9 * cout), what="cols"))
    xp.matmul(cols, wflip.reshape(9 * cout, cin), out=dx.reshape(n * h * wd, cin))
    return dx


def gpu_backward_uses_col2im(cin, cout):
    """Whether the GPU backward takes the col2im form: where Cout >= 4·Cin
    (conv1_1), whose im2col form has a GEMM only Cin wide. Other layers keep
    im2col until a GPU run shows col2im wins there too (bench.profile_ops
    --col2im all swaps this rule to measure it)."""
    return 4 * cin <= cout


def col2im_gpu(p, nhw, out=None):
    """(N*H*W, 9*C) float32 -> (N, H, W, C): col2im_cpu's sum, in its order."""
    xp = get_array_module(p)
    n, h, w = nhw
    c = p.shape[1] // 9
    if p.shape != (n * h * w, 9 * c):
        raise ValueError(f"col2im: columns {p.shape} do not fit {nhw}")
    out = cuda.out_array(xp, out, (n, h, w, c))
    blk = cuda.config["block"]
    cuda.launch(cuda.get_kernel("conv", "col2im_kernel"), cuda.ceil_div(out.size, blk), blk,
                (out, p, cuda.i32(n), cuda.i32(h), cuda.i32(w), cuda.i32(c)))
    return out


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
