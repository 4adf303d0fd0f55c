"""Winograd F(2x2, 3x3): a 3x3, stride-1, zero-pad-1 convolution (NHWC, NumPy)
with 16 GEMM multiplies per 2x2 output tile instead of 36.

For each 4x4 input tile d (rows 2i-1 .. 2i+2, columns 2j-1 .. 2j+2 of x, zeros
outside the image; the grid padded to ceil(H/2) x ceil(W/2) tiles for odd sizes)
and each kernel g = W[:, :, ci, co] (3x3), the 2x2 output tile is

    Y = Aᵀ [ Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B) ] A      Bᵀ = [1  0 -1  0]   G = [ 1    0    0 ]   Aᵀ = [1 1  1  0]
                                                    [0  1  1  0]       [1/2  1/2  1/2]        [0 1 -1 -1]
                                                    [0 -1  1  0]       [1/2 -1/2  1/2]
                                                    [0  1  0 -1]       [ 0    0    1 ]

so with V[k] = (Bᵀ d B)[k] (tiles, Cin) and U[k] = (G g Gᵀ)[k] (Cin, Cout),
k = 4a + b over the 16 entries of the 4x4 tile, M[k] = V[k] @ U[k] is 16 GEMMs
(2·16·Cin·Cout flops per 4 output pixels against 2·36·Cin·Cout: 2.25x fewer),
and Y = Aᵀ M A. U is made once per kernel in float64 (transformed_kernel,
cached by the kernel array's identity). The backward to the input is the same
convolution with the kernel flipped in space and Cin<->Cout swapped (ops/conv.py).

The transforms are additions only (Bᵀ, Aᵀ hold 0, ±1): the products and the
sums of the GEMMs are the only rounding beyond the direct form's, and G's
halves are exact, so in float32 the result agrees with the direct convolution
to about 1e-6 of the output's scale.

winograd_cpu works like conv_rows_cpu: each thread takes a band of tile rows and
goes through it in blocks (tiles_per_block): the block's rows of x into a
zero-padded buffer, Bᵀ d B in 8 ufunc passes, the 16 single-threaded GEMMs
(ops/blas.py), Aᵀ M A in 12 passes straight into `out`, then epilogue(out, lo,
hi) on the block's output rows, all in per-thread scratch buffers.
Where it is used: ops/conv.py (uses_winograd). Tests: tests/test_winograd.py;
timing: bench/winograd.py, e.g. (alternating with the row-shifted form, quiet
2-core VM, bench/results/2026-11-29-cpu-winograd-0e29ae4c.log)

    winograd fwd | conv4_2 | 1x64x64x512->512 | current 99.64 ms | winograd 54.01 ms |
        ratio 0.54 (median of 7 pairs: 0.54..0.56) | rule on"""
import weakref

import numpy as np

from .. import cuda
from . import blas
from .parallel import in_row_chunks, scratch, workers

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=np.float64)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)

# A block's GEMMs have at least this many rows (tiles) where the band allows:
# OpenBLAS's single-threaded sgemm on the 2-core VM reaches 80-88 GFLOP/s at
# 128 rows, 87-94 at 256, against 41-77 at 64 (Cin = Cout = 64..512).
MIN_TILES = 256
# and beyond that about this many bytes of V and M per block (cache-sized).
BLOCK_BYTES = 2 << 20

_kernels = {}  # id(kernel) -> (weakref to it, {flip: U})


def transform_kernel(w, flip=False):
    """w (3, 3, Cin, Cout) -> U (16, Cin, Cout) = G g Gᵀ per (ci, co), entry
    k = 4a + b at U[k], in float64 then w's dtype; flip: the kernel of the
    backward conv (w flipped in space, Cin<->Cout: U (16, Cout, Cin)).
    Made a few input channels at a time, so that the float64 temporaries stay
    near 1 MB: whole ones (50 MB for 512x512) left the allocator holding freed
    memory after the model's load (ops/conv.gemm_weights makes these)."""
    g = w[::-1, ::-1].transpose(0, 1, 3, 2) if flip else w
    c, c2 = g.shape[2], g.shape[3]
    u = np.empty((4, 4, c, c2), dtype=w.dtype)
    step = max(1, (1 << 20) // (16 * c2 * 8))
    for c0 in range(0, c, step):
        gs = np.asarray(g[:, :, c0:c0 + step], dtype=np.float64)
        u[:, :, c0:c0 + step] = np.einsum("ai,ijco,bj->abco", G, gs, G)
    return u.reshape(16, c, c2)


def transformed_kernel(w, flip=False):
    """transform_kernel(w, flip), made once per kernel array and kept while the
    array lives (keyed by its identity: a kernel changed in place after its
    first use would keep its old U; the model's kernels never change)."""
    key = id(w)
    entry = _kernels.get(key)
    if entry is None or entry[0]() is not w:
        entry = (weakref.ref(w, lambda _, key=key: _kernels.pop(key, None)), {})
        _kernels[key] = entry
    u = entry[1].get(flip)
    if u is None:
        u = entry[1][flip] = transform_kernel(w, flip)
    return u


def tiles_per_block(n, tw, cin, cout, itemsize):
    """Tile rows per block: at least MIN_TILES tiles (all images), then up to
    BLOCK_BYTES of V and M."""
    per_row = n * tw
    rows = -(-MIN_TILES // per_row)
    return max(rows, BLOCK_BYTES // max(1, per_row * 16 * (cin + cout) * itemsize))


def input_transform(x, t0, t1, tw, v):
    """V = Bᵀ d B for tile rows t0..t1-1 of x (N, H, W, C), every image and
    tile column, into v (4, 4, N, t1-t0, tw, C): v[a, b] is entry (a, b)."""
    n, h, w, c = x.shape
    nb = t1 - t0
    r = 2 * nb + 2  # padded rows: x's rows 2*t0-1 .. 2*t1
    p = scratch(np, "winograd_pad", (n, r, 2 * tw + 2, c), x.dtype)
    s0, s1 = max(2 * t0 - 1, 0), min(2 * t1 + 1, h)  # x's rows inside the image
    d0, d1 = s0 + 1 - 2 * t0, s1 + 1 - 2 * t0
    p[:, :d0] = 0
    p[:, d1:] = 0
    p[:, d0:d1, 0] = 0
    p[:, d0:d1, w + 1:] = 0
    p[:, d0:d1, 1:w + 1] = x[:, s0:s1]
    # along x: t[b][.., j] = Σ_c Bᵀ[b, c] p[.., 2j + c]
    t = scratch(np, "winograd_cols", (4, n, r, tw, c), x.dtype)
    e, o = p[:, :, 0::2], p[:, :, 1::2]  # columns 2j and 2j+1, j = 0..tw
    np.subtract(e[:, :, :tw], e[:, :, 1:], out=t[0])
    np.add(o[:, :, :tw], e[:, :, 1:], out=t[1])
    np.subtract(e[:, :, 1:], o[:, :, :tw], out=t[2])
    np.subtract(o[:, :, :tw], o[:, :, 1:], out=t[3])
    # along y: v[a][b][.., i] = Σ_r Bᵀ[a, r] t[b][.., 2i + r]
    e, o = t[:, :, 0::2], t[:, :, 1::2]  # (4, N, nb+1, tw, C)
    np.subtract(e[:, :, :nb], e[:, :, 1:], out=v[0])
    np.add(o[:, :, :nb], e[:, :, 1:], out=v[1])
    np.subtract(e[:, :, 1:], o[:, :, :nb], out=v[2])
    np.subtract(o[:, :, :nb], o[:, :, 1:], out=v[3])
    return v


def output_transform(m, out, t0, t1):
    """Y = Aᵀ M A for tile rows t0..t1-1 from m (4, 4, N, t1-t0, tw, Cout)
    (overwritten), into out (N, H, W, Cout)'s rows 2*t0 .. min(2*t1, H)-1."""
    h, w = out.shape[1:3]
    # along y, in place: r0 = m0 + m1 + m2 into m[0], r1 = m1 - m2 - m3 into m[3]
    np.add(m[0], m[1], out=m[0])
    np.add(m[0], m[2], out=m[0])
    np.subtract(m[1], m[3], out=m[3])
    np.subtract(m[3], m[2], out=m[3])
    block = out[:, 2 * t0:min(2 * t1, h)]
    for i, r in ((0, m[0]), (1, m[3])):
        for j in range(2):
            dst = block[:, i::2, j::2]  # output pixels (2t+i, 2s+j); fewer at odd edges
            ri, cj = dst.shape[1], dst.shape[2]
            r0, r1, r2, r3 = (q[:, :ri, :cj] for q in r)
            if j == 0:  # r0 + r1 + r2
                np.add(r0, r1, out=dst)
                np.add(dst, r2, out=dst)
            else:  # r1 - r2 - r3
                np.subtract(r1, r2, out=dst)
                np.subtract(dst, r3, out=dst)
    return out


def winograd_cpu(x, u, out=None, epilogue=None):
    """x (N, H, W, C), u (16, C, Cout) = transform_kernel(W) -> out (N, H, W,
    Cout) = conv3x3(x, W), stride 1, zero padding 1, no bias or ReLU.
    epilogue(out, lo, hi) then runs on each block's output rows lo..hi-1 (bias
    + ReLU, or the next layer's ReLU mask), as in conv_rows_cpu. Needs
    blas.available(x.dtype)."""
    n, h, w, c = x.shape
    cout = u.shape[2]
    if u.shape != (16, c, cout) or u.dtype != x.dtype:
        raise ValueError(f"winograd: x {x.shape} {x.dtype} and U {u.shape} {u.dtype} do not fit")
    out = cuda.out_array(np, out, (n, h, w, cout), x.dtype, what="conv: out")
    th, tw = -(-h // 2), -(-w // 2)
    if n * th * tw < MIN_TILES * workers():
        return _by_entries(x, u, out, epilogue, th, tw)
    step = tiles_per_block(n, tw, c, cout, x.itemsize)

    def block(t0, t1):  # tile rows t0..t1-1 of every image
        nb = t1 - t0
        v = input_transform(x, t0, t1, tw,
                            scratch(np, "winograd_v", (4, 4, n, nb, tw, c), x.dtype))
        m = scratch(np, "winograd_m", (4, 4, n, nb, tw, cout), x.dtype)
        vk, mk = v.reshape(16, -1, c), m.reshape(16, -1, cout)
        for k in range(16):  # (tiles, C) @ (C, Cout)
            blas.gemm(vk[k], u[k], mk[k])
        output_transform(m, out, t0, t1)
        if epilogue is not None:
            epilogue(out, 2 * t0, min(2 * t1, h))

    def chunk(lo, hi):
        for t in range(lo, hi, step):
            block(t, min(t + step, hi))

    with blas.single_threaded():
        in_row_chunks(chunk, th, np)
    return out


def _by_entries(x, u, out, epilogue, th, tw):
    """winograd_cpu for images with too few tiles to give each thread GEMMs of
    MIN_TILES rows (conv5 at 256x256: 64 tiles): V of the whole image, split
    by tile rows for the transforms but by entry k for the 16 GEMMs, so every
    GEMM has all the tiles."""
    n, h = x.shape[:2]
    c, cout = u.shape[1:]
    v = scratch(np, "winograd_v", (4, 4, n, th, tw, c), x.dtype)  # this thread's, shared
    m = scratch(np, "winograd_m", (4, 4, n, th, tw, cout), x.dtype)
    vk, mk = v.reshape(16, -1, c), m.reshape(16, -1, cout)

    def finish(t0, t1):
        output_transform(m[:, :, :, t0:t1], out, t0, t1)
        if epilogue is not None:
            epilogue(out, 2 * t0, min(2 * t1, h))

    with blas.single_threaded():
        in_row_chunks(lambda t0, t1: input_transform(x, t0, t1, tw, v[:, :, :, t0:t1]), th, np)
        in_row_chunks(lambda k0, k1: [blas.gemm(vk[k], u[k], mk[k]) for k in range(k0, k1)],
                      16, np)
        in_row_chunks(finish, th, np)
    return out
