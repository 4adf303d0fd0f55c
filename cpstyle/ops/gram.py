"""Gram matrix, unnormalised as in the tutorial (optionally divided by H·W).

    F = x.reshape(N, H*W, C);  G = Fᵀ·F * norm      # (N, C, C)

Backward: dL/dF = norm · F·(dG + dGᵀ). G is symmetric, and so is every dG our
losses produce, but the general form is kept so the op is right on its own.
On the GPU the products are our kernels (kernels/gram.cu): the forward splits the
long HW sum over blocks into a fixed partial buffer (splits, C, C) and adds the
slices in a fixed order (deterministic, no atomics); the backward is a tiled
F·dG that can add into the gradient already there. No cuBLAS, so CUDA-graph
capture takes both (DESIGN.md §6). `gemm="matmul"` keeps CuPy's cuBLAS
(cupy.matmul), the form the last GPU measurements ran: the GPU engine takes our
kernels only where it captures (the igemm convolutions), and the dispatchers
(the targets' forward) keep matmul, until a GPU run (bench.capture: ours against
cupy.matmul per shape) shows the kernels as fast. The loss epilogue is in
kernels/loss.cu.
Tests: tests/test_gram.py, tests/test_kernels_emulated.py, tests/test_kernels_gpu.py."""
import numpy as np

from ..backend import get_array_module
from . import blas
from .parallel import scratch


def gram_forward_cpu(x, norm=1.0):
    """x (N, H, W, C) -> G (N, C, C), cache."""
    n, h, w, c = x.shape
    xp = get_array_module(x)
    f = x.reshape(n, h * w, c)
    # one 2-D GEMM per image: NumPy's stacked matmul does not hand a transposed
    # operand to BLAS (10x slower at 256x256x64); a 2-D Fᵀ goes as a flag, and
    # Fᵀ·F of one array as a SYRK (half the flops)
    g = xp.empty((n, c, c), dtype=x.dtype)
    for k in range(n):
        if xp is np and blas.available(x.dtype):
            # OpenBLAS runs a SYRK this thin on one thread: split the pixels
            # over ours, one SYRK each, and add the parts (the 13 Grams at
            # 256x256: 23 ms against 32, 2-core VM)
            parts = {}

            def part(lo, hi, fk=f[k]):
                parts[lo] = fk[lo:hi].T @ fk[lo:hi]

            blas.in_rows(part, h * w)
            g[k] = sum(parts[lo] for lo in sorted(parts))
        else:
            xp.matmul(f[k].T, f[k], out=g[k])
    if norm != 1.0:
        g *= norm
    return g, (f, x.shape, norm)


def gram_backward_cpu(dg, cache, out=None):
    """dG (N, C, C) -> dx (N, H, W, C) (into `out` if given)."""
    f, shape, norm = cache
    xp = get_array_module(dg)
    df = (xp.empty(f.shape, dtype=xp.result_type(f, dg)) if out is None
          else out.reshape(f.shape))  # (N, H*W, C): no stack copy
    for k in range(f.shape[0]):
        sym = dg[k] + dg[k].T
        if xp is np:
            blas.matmul(f[k], sym.astype(df.dtype, copy=False), df[k])
        else:
            xp.matmul(f[k], sym, out=df[k])
    if norm != 1.0:
        df *= norm
    return df.reshape(shape)



class GramGrad:
    """dL/dF = norm·F·(dG + dGᵀ) (+ `extra`, e.g. a content term), never made
    whole: rows(lo, hi) makes the rows lo..hi-1 of it where the backward adds
    it (conv.relu_backward_cpu, in the block the op that makes dh is on), a
    small single-threaded GEMM per block into a per-thread scratch. Saves the
    image-sized array per style layer that gram_backward_cpu fills (NumPy with
    ops/blas.py; 270 floats per pixel for the tutorial's 13 layers).
    `shape`: F's (N, H, W, C)."""

    def __init__(self, dg, cache, extra=None):
        f, shape, norm = cache
        self.f, self.shape, self.norm, self.extra = f, tuple(shape), norm, extra
        self.sym = np.ascontiguousarray((dg + dg.transpose(0, 2, 1)).astype(f.dtype))
        if norm != 1.0:
            self.sym *= f.dtype.type(norm)

    def rows(self, lo, hi):
        n, h, w, c = self.shape
        out = scratch(np, "gram_rows", (n, hi - lo, w, c), self.f.dtype)
        o3 = out.reshape(n, (hi - lo) * w, c)
        for k in range(n):
            blas.gemm(self.f[k, lo * w:hi * w], self.sym[k], o3[k])
        if self.extra is not None:
            out += self.extra[:, lo:hi]
        return out


def lazy_gram_backward(dg, cache, extra=None):
    """GramGrad where the NumPy backward can take it (ops/blas.py), else the
    whole gradient now (gram_backward_cpu, plus extra)."""
    f = cache[0]
    if get_array_module(f) is np and blas.available(f.dtype) and dg.dtype == f.dtype:
        return GramGrad(dg, cache, extra)
    d = gram_backward_cpu(dg, cache)
    return d if extra is None else d + extra


# ---- GPU path: kernels/gram.cu (our GEMMs: no cuBLAS, so a graph can capture them) ----
from .. import cuda  # noqa: E402
from ..backend import is_gpu_array  # noqa: E402


def gram_defines():
    """The tile defines of kernels/gram.cu, from cpstyle.cuda.config."""
    return {"GRAM_TILE": cuda.config["gram_tile"], "GRAM_MICRO": cuda.config["gram_micro"],
            "GRAM_K": cuda.config["gram_k"]}


def _launch(name, grid, args):
    d = gram_defines()
    cuda.launch(cuda.get_kernel("gram", name, d), grid, (d["GRAM_TILE"] // d["GRAM_MICRO"]) ** 2,
                args)


def gram_splits(hw, c):
    """How many slices of the HW rows the forward sums separately: enough blocks
    (about config["gram_blocks"], counting the tiles on and above the diagonal)
    to fill the GPU, each slice at least two staging steps long."""
    t = cuda.ceil_div(c, cuda.config["gram_tile"])
    want = cuda.ceil_div(cuda.config["gram_blocks"], t * (t + 1) // 2)
    return max(1, min(want, cuda.ceil_div(hw, 2 * cuda.config["gram_k"])))


def gram_work_size(hw, c):
    """Floats of the forward's partial buffer for one (HW, C) image."""
    return gram_splits(hw, c) * c * c


GEMMS = ("kernel", "matmul")


def _check_gemm(gemm):
    if gemm not in GEMMS:
        raise ValueError(f"unknown gram gemm {gemm!r}: use one of {GEMMS}")


def gram_forward_gpu(x, norm=1.0, out=None, work=None, gemm="kernel"):
    """x (N, H, W, C) float32 -> G (N, C, C) = Fᵀ·F·norm, cache (F, x.shape, norm).
    `work`: a float32 buffer of at least gram_work_size(H·W, C) (made when None;
    the kernels only). `gemm`: GEMMS."""
    _check_gemm(gemm)
    xp = get_array_module(x)
    n, h, w, c = x.shape
    hw = h * w
    f = x.reshape(n, hw, c)
    g = cuda.out_array(xp, out, (n, c, c))
    if gemm == "matmul":
        for k in range(n):  # 2-D GEMMs: the transpose goes to cuBLAS as a flag, no copy
            xp.matmul(f[k].T, f[k], out=g[k])
        if norm != 1.0:
            g *= np.float32(norm)
        return g, (f, tuple(x.shape), norm)
    splits = gram_splits(hw, c)
    part = cuda.work_view(xp, work, (splits, c, c), what="gram work")
    chunk = cuda.ceil_div(hw, splits)
    t = cuda.ceil_div(c, cuda.config["gram_tile"])
    blk = cuda.config["block"]
    for k in range(n):  # G_k = F_kᵀ·F_k, K = HW split into `splits` slices, then summed
        _launch("gram_partial_kernel", (t, t, splits),
                (part, f[k], cuda.i32(hw), cuda.i32(c), cuda.i32(chunk)))
        cuda.launch(cuda.get_kernel("gram", "gram_reduce_kernel", gram_defines()),
                    cuda.ceil_div(c * c, blk), blk,
                    (g[k], part, cuda.f32(norm), cuda.i32(c), cuda.i32(splits)))
    return g, (f, tuple(x.shape), norm)


def gram_backward_accumulate_gpu(dh, f, dg, accumulate=True):
    """dh (HW, C) = (accumulate ? dh : 0) + F·dG; F (HW, C), dG (C, C) float32.
    The engine's style term: dL/dF = 2·norm·F·dG with 2·norm already in dG."""
    hw, c = f.shape
    if dg.shape != (c, c) or dh.shape != (hw, c):
        raise ValueError(f"gram backward: dh {dh.shape}, F {f.shape}, dG {dg.shape}")
    tile = cuda.config["gram_tile"]
    _launch("gram_backward_kernel", (cuda.ceil_div(hw, tile), cuda.ceil_div(c, tile)),
            (dh, f, dg, cuda.i32(hw), cuda.i32(c), cuda.i32(bool(accumulate))))
    return dh


def gram_backward_gpu(dg, cache, out=None, sym=None, gemm="kernel"):
    """dG (N, C, C) -> dx (N, H, W, C) = norm·F·(dG + dGᵀ). `sym`: (N, C, C)
    float32 work buffer for norm·(dG + dGᵀ). `gemm`: GEMMS."""
    _check_gemm(gemm)
    xp = get_array_module(dg)
    f, shape, norm = cache
    n, hw, c = f.shape
    if dg.shape != (n, c, c):
        raise ValueError(f"gram backward: dG {dg.shape} for F {f.shape}")
    sym = cuda.work_view(xp, sym, (n, c, c), what="sym")
    xp.add(dg, dg.transpose(0, 2, 1), out=sym)
    if norm != 1.0:
        sym *= np.float32(norm)
    dx = cuda.out_array(xp, out, shape)
    dx3 = dx.reshape(n, hw, c)
    for k in range(n):
        if gemm == "matmul":
            xp.matmul(f[k], sym[k], out=dx3[k])
        else:
            gram_backward_accumulate_gpu(dx3[k], f[k], sym[k], accumulate=False)
    return dx


def gram_forward(x, norm=1.0):
    if is_gpu_array(x) and x.dtype == np.float32:
        return gram_forward_gpu(x, norm, gemm="matmul")
    return gram_forward_cpu(x, norm)


def gram_backward(dg, cache):
    if is_gpu_array(dg) and dg.dtype == np.float32 and cache[0].dtype == np.float32:
        return gram_backward_gpu(dg, cache, gemm="matmul")
    return gram_backward_cpu(dg, cache)
