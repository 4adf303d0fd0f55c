"""Gram matrix, unnormalised as in the tutorial (optionally divided by H·W).

    F = x.reshape(N, H*W, C);  G = Fᵀ·F * norm      # (N, C, C)

Backward: dL/dF = norm · F·(dG + dGᵀ). G is symmetric, and so is every dG our
losses produce, but the general form is kept so the op is right on its own.
Kernels: the GEMMs go through the backend's matmul; the loss epilogue is in
kernels/loss.cu. Tests: tests/test_gram.py."""
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


# ---- GPU path: the backend's matmul (no kernel of our own) ------------------
from .. import cuda  # noqa: E402
from ..backend import is_gpu_array  # noqa: E402


def gram_forward_gpu(x, norm=1.0, out=None):
    """x (N, H, W, C) float32 -> G (N, C, C) = Fᵀ·F·norm, cache (F, x.shape, norm)."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    f = x.reshape(n, h * w, c)
    g = cuda.out_array(xp, out, (n, c, c))
    for k in range(n):  # 2-D GEMMs: the transpose goes to cuBLAS as a flag, no copy
        xp.matmul(f[k].T, f[k], out=g[k])
    if norm != 1.0:
        g *= np.float32(norm)
    return g, (f, tuple(x.shape), norm)


def gram_backward_gpu(dg, cache, out=None, sym=None):
    """dG (N, C, C) -> dx (N, H, W, C) = norm·F·(dG + dGᵀ). `sym`: (N, C, C)
    float32 work buffer for dG + dGᵀ."""
    xp = get_array_module(dg)
    f, shape, norm = cache
    n, hw, c = f.shape
    if dg.shape != (n, c, c):
        raise ValueError(f"gram backward: dG {dg.shape} for F {f.shape}")
    sym = cuda.work_view(xp, sym, (n, c, c), what="sym")
    xp.add(dg, dg.transpose(0, 2, 1), out=sym)
    dx = cuda.out_array(xp, out, shape)
    dx3 = dx.reshape(n, hw, c)
    for k in range(n):
        xp.matmul(f[k], sym[k], out=dx3[k])
    if norm != 1.0:
        dx *= np.float32(norm)
    return dx


def gram_forward(x, norm=1.0):
    if is_gpu_array(x) and x.dtype == np.float32:
        return gram_forward_gpu(x, norm)
    return gram_forward_cpu(x, norm)


def gram_backward(dg, cache):
    if is_gpu_array(dg) and dg.dtype == np.float32 and cache[0].dtype == np.float32:
        return gram_backward_gpu(dg, cache)
    return gram_backward_cpu(dg, cache)
