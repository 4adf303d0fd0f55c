"""3x3 convolution (stride 1, pad 1) as an implicit GEMM on tensor cores:
kernels/conv_igemm.cu, no im2col in memory (DESIGN.md §6).

    forward:   y  = relu(A·B + b),   A[p, k] = x[n, i+ky-1, j+kx-1, ci] (0 outside),
               B = w.reshape(9*Cin, Cout), p = (n*H + i)*W + j, k = (ky*3 + kx)*Cin + ci
    backward:  dx = A'·B',  A' gathered from dz = dout ⊙ [y > 0] (the mask applied as
               the tile loads), B' = flip_kernel(w).reshape(9*Cout, Cin)

Precisions (PRECISIONS): "fp32" as 3xTF32 (each operand split into a big and a
small TF32 part: fp32 accuracy on tensor cores), "tf32", "bf16" (bf16 operands,
fp32 accumulation). Storage is fp32 throughout.

Tiles (BM, BN, BK, WARPS_M, WARPS_N) are compile-time defines: `select_tiles`
reads the per-GPU table that bench/tune_conv.py writes (cpstyle/data/conv_tiles.json)
and falls back to DEFAULT_TILES / NARROW_TILES. The references are conv_forward_cpu
and conv_backward_cpu (ops/conv.py). Tests: tests/test_kernels_emulated.py (the
kernels on the CPU under tests/emulation), tests/test_conv_igemm.py,
tests/test_kernels_gpu.py."""
import json
import math
import os

import numpy as np

from .. import cuda
from ..backend import get_array_module
from .conv import conv_shapes

PRECISIONS = {"fp32": 0, "tf32": 1, "bf16": 2}  # -> the kernel's PREC
# The stated error of each precision: |y - conv(x, w)| <= ERROR_BOUND·conv(|x|, |w|)
# plus fp32 accumulation (about K/8·eps of the same). Rounding both operands to
# nearest costs at most a relative half-ulp each: 2^-11 for TF32 (10 mantissa
# bits), 2^-8 for BF16 (7); 3xTF32 keeps the big and small parts' products but
# one, about 2^-21 together.
ERROR_BOUND = {"fp32": 2.0 ** -20, "tf32": 2 * 2.0 ** -11, "bf16": 2 * 2.0 ** -8}

# (BM, BN, BK, WARPS_M, WARPS_N[, SPLITS]): the block's output tile, K per stage,
# warps, and split-K (SPLITS blocks share each output tile's K; a second kernel
# sums them: for layers with fewer output tiles than the GPU has SMs).
DEFAULT_TILES = (128, 64, 16, 2, 2)
NARROW_TILES = (128, 8, 16, 4, 1)   # output channels <= 8 (conv1_1's backward: 3)
# What the tuner times (bench/tune_conv.py); every one fits 48 KB of static shared memory.
CANDIDATES = (
    (128, 128, 16, 2, 4),
    (128, 64, 16, 2, 2),
    (64, 128, 16, 2, 2),
    (64, 64, 16, 2, 2),
    (64, 64, 32, 2, 2),
    (32, 64, 16, 1, 2),
    (64, 32, 16, 2, 1),
)
NARROW_CANDIDATES = ((128, 8, 16, 4, 1), (64, 8, 16, 2, 1), (32, 8, 16, 1, 1), (64, 16, 16, 4, 1))
# Split-K, tried where a shape has fewer output tiles than SPLIT_BELOW (2 per SM
# of an H100/H200's 132) and at least 4 K stages per split: conv5 at 512² has
# 32 tiles of 128x128.
SPLIT_BASES = ((64, 64, 16, 2, 2), (128, 64, 16, 2, 2), (64, 128, 16, 2, 2))
SPLITS = (2, 4, 8)
SPLIT_BELOW = 264


def split_candidates(a_channels, out_channels, pixels):
    """The split-K tile sets worth timing for this shape (bench/tune_conv.py)."""
    out = []
    for t in SPLIT_BASES:
        tiles = math.ceil(pixels / t[0]) * math.ceil(out_channels / t[1])
        stages = math.ceil(9 * a_channels / t[2])
        out += [t + (k,) for k in SPLITS if tiles < SPLIT_BELOW and stages >= 4 * k]
    return tuple(out)
TABLE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "data", "conv_tiles.json")


def check_tiles(tiles, precision):
    """tiles (BM, BN, BK, WARPS_M, WARPS_N[, SPLITS]) -> the same as a 6-tuple
    (SPLITS 1 when not given), or ValueError saying which rule it breaks (the
    kernel's static_asserts, checked before a compile)."""
    if len(tiles) not in (5, 6):
        raise ValueError(f"conv tiles {tuple(tiles)}: need (BM, BN, BK, WARPS_M, WARPS_N[, SPLITS])")
    bm, bn, bk, wm, wn = (int(v) for v in tiles[:5])
    splits = int(tiles[5]) if len(tiles) == 6 else 1
    threads = 32 * wm * wn
    kstep = 16 if precision == "bf16" else 8
    rules = [
        (min(bm, bn, bk, wm, wn) > 0 and splits >= 1, "every size must be positive"),
        (bm % (16 * wm) == 0, "BM must be a multiple of 16*WARPS_M"),
        (bn % (8 * wn) == 0, "BN must be a multiple of 8*WARPS_N"),
        (bk % kstep == 0, f"BK must be a multiple of {kstep}"),
        (_splits(bm, bk, 1, threads), "the A tile must split evenly over the threads"),
        (_splits(bk, bn, 1, threads), "the B tile must split evenly over the threads"),
        (2 * (bm * (bk + 4) + bk * (bn + 8)) * 4 <= 48 * 1024, "two stages exceed 48 KB"),
    ]
    for ok, why in rules:
        if not ok:
            raise ValueError(f"conv tiles {tuple(tiles)}: {why}")
    return (bm, bn, bk, wm, wn, splits)


def _splits(rows, cols, vec, threads):
    """Do threads load a rows x cols tile in vectors of `vec`, each thread the same
    number of whole vectors in one column group (the kernel's static_asserts)?"""
    per = rows * cols // vec
    return cols % vec == 0 and per % threads == 0 and per >= threads and threads % (cols // vec) == 0


def defines(tiles, precision, a_channels, out_channels, a_aligned=True, b_aligned=True):
    """The kernel's defines for one launch shape; *_aligned: do the A sources and
    the B matrix start on a 16-byte boundary (float4 loads need it)?"""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {tuple(PRECISIONS)}")
    bm, bn, bk, wm, wn, _ = check_tiles(tiles, precision)
    threads = 32 * wm * wn
    # float4 loads where the rows are whole vectors of aligned channels
    vec_a = 4 if a_aligned and a_channels % 4 == 0 and _splits(bm, bk, 4, threads) else 1
    vec_b = 4 if b_aligned and out_channels % 4 == 0 and _splits(bk, bn, 4, threads) else 1
    return {"BM": bm, "BN": bn, "BK": bk, "WARPS_M": wm, "WARPS_N": wn,
            "PREC": PRECISIONS[precision], "VEC_A": vec_a, "VEC_B": vec_b}


_table = None


def load_table(path=None):
    """The tuner's file (bench/tune_conv.py): {"gpus": {gpu: {key: tiles}},
    "im2col_faster": {gpu: [key, ...]}, "igemm_failed": {gpu: [key, ...]}, ...};
    {} if there is none."""
    global _table
    if path is None and _table is not None:
        return _table
    p = TABLE_PATH if path is None else path
    data = {}
    if os.path.isfile(p):
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    if path is None:
        _table = data
    return data


def table_key(direction, precision, a_channels, out_channels, pixels):
    """The table's key: pixels rounded to a power of two (the tuner's sizes)."""
    return f"{direction} {precision} {a_channels}->{out_channels} 2^{round(math.log2(max(pixels, 1)))}"


def gpu_name():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    except Exception:  # no CuPy or no device: the emulated run
        return None


def select_tiles(direction, precision, a_channels, out_channels, pixels, table=None, gpu=None):
    """The tuned tiles for this shape on this GPU, else the defaults."""
    table = load_table() if table is None else table
    entry = table.get("gpus", {}).get(gpu_name() if gpu is None else gpu, {}).get(
        table_key(direction, precision, a_channels, out_channels, pixels))
    if entry is not None:
        return tuple(entry)
    return NARROW_TILES if out_channels <= 8 else DEFAULT_TILES


def prefers_im2col(direction, precision, a_channels, out_channels, pixels, table=None, gpu=None):
    """Did the tuner find the im2col path faster for this shape on this GPU (or
    no tile passing its check)? Then the engine keeps im2col there (not for
    bf16, which only igemm runs)."""
    if precision == "bf16":
        return False
    table = load_table() if table is None else table
    gpu = gpu_name() if gpu is None else gpu
    key = table_key(direction, precision, a_channels, out_channels, pixels)
    return any(key in table.get(k, {}).get(gpu, []) for k in ("im2col_faster", "igemm_failed"))


def splitk_work_size(tiles, out_channels, pixels):
    """Floats of split-K work buffer a launch with these tiles needs (0: none)."""
    splits = tiles[5] if len(tiles) == 6 else 1
    return splits * pixels * out_channels if splits > 1 else 0


def _address(a):
    return a.data.ptr if hasattr(a.data, "ptr") else a.ctypes.data  # CuPy, NumPy


def _launch(kname, out, args, a_channels, out_channels, pixels, precision, tiles, direction,
            a_src, b_src, bias=None, work=None):
    """The conv kernel, or with SPLITS > 1 its split-K form into `work` (a buffer
    of at least splitk_work_size floats; made here when None) and the sum.
    a_src, b_src: the A source arrays and the B matrix (a view that starts off a
    16-byte boundary gets scalar loads)."""
    tiles = select_tiles(direction, precision, a_channels, out_channels, pixels) \
        if tiles is None else tiles
    splits = check_tiles(tiles, precision)[5]
    d = defines(tiles, precision, a_channels, out_channels,
                a_aligned=all(_address(a) % 16 == 0 for a in a_src),
                b_aligned=_address(b_src) % 16 == 0)
    grid = (cuda.ceil_div(pixels, d["BM"]), cuda.ceil_div(out_channels, d["BN"]), splits)
    threads = 32 * d["WARPS_M"] * d["WARPS_N"]
    if splits == 1:
        cuda.launch(cuda.get_kernel("conv_igemm", kname, d), grid, threads, (out, *args))
        return out
    xp = get_array_module(out)
    part = cuda.work_view(xp, work, (splits, pixels, out_channels), what="split-K work")
    kname = kname.replace("_kernel", "_splitk_kernel")
    fargs = args if bias is None else tuple(a for a in args if a is not bias)
    cuda.launch(cuda.get_kernel("conv_igemm", kname, d), grid, threads,
                (part, *fargs, cuda.i32(splits)))
    n = pixels * out_channels
    blk = cuda.config["block"]
    if bias is None:
        cuda.launch(cuda.get_kernel("conv_igemm", "splitk_sum_kernel", d), cuda.ceil_div(n, blk),
                    blk, (out, part, cuda.i32(n), cuda.i32(splits)))
    else:
        cuda.launch(cuda.get_kernel("conv_igemm", "splitk_sum_bias_relu_kernel", d),
                    cuda.ceil_div(n, blk), blk,
                    (out, part, bias, cuda.i32(n), cuda.i32(out_channels), cuda.i32(splits)))
    return out


def conv_forward_igemm(x, w, b, out=None, precision="tf32", tiles=None, work=None):
    """x (N, H, W, Cin), w (3, 3, Cin, Cout), b (Cout,) float32 -> y, cache (w, y):
    conv_forward_cpu's result in one kernel (two with split-K: `work`, see _launch)."""
    xp = get_array_module(x)
    n, h, wd, cin, cout = conv_shapes(x, w, b)
    y = cuda.out_array(xp, out, (n, h, wd, cout))
    _launch("conv_igemm_forward_kernel", y,
            (x, w, b, cuda.i32(n), cuda.i32(h), cuda.i32(wd), cuda.i32(cin), cuda.i32(cout)),
            cin, cout, n * h * wd, precision, tiles, "fwd", (x,), w, bias=b, work=work)
    return y, (w, y)


def conv_backward_igemm(dout, cache, wflip, out=None, precision="tf32", tiles=None, work=None):
    """dout (N, H, W, Cout), cache (w, y) of the forward, wflip = flip_kernel(w)
    -> dx (N, H, W, Cin): conv_backward_cpu's result in one kernel (two with split-K)."""
    xp = get_array_module(dout)
    w, y = cache
    n, h, wd, cout = dout.shape
    cin = w.shape[2]
    if y.shape != dout.shape or wflip.shape != (3, 3, cout, cin):
        raise ValueError(f"conv backward: dout {dout.shape}, y {y.shape}, "
                         f"wflip {wflip.shape} do not fit")
    dx = cuda.out_array(xp, out, (n, h, wd, cin))
    _launch("conv_igemm_backward_kernel", dx,
            (dout, y, wflip, cuda.i32(n), cuda.i32(h), cuda.i32(wd), cuda.i32(cout), cuda.i32(cin)),
            cout, cin, n * h * wd, precision, tiles, "bwd", (dout, y), wflip, work=work)
    return dx


def round_operand(a, precision):
    """a rounded as the kernel rounds its operands (NumPy, float32): TF32 by
    cvt.rna (ties away from zero), BF16 to nearest even; fp32 unchanged. For
    the tests' references and error budgets."""
    a = np.asarray(a, dtype=np.float32)
    if precision == "fp32":
        return a.copy()
    bits = a.view(np.uint32).astype(np.uint64)
    if precision == "tf32":
        r = ((bits + 0x1000) & 0xFFFFE000).astype(np.uint32)
    elif precision == "bf16":
        r = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    else:
        raise ValueError(f"unknown precision {precision!r}")
    return np.where(np.isfinite(a), r.view(np.float32), a)
