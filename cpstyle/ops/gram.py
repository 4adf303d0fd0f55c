"""Gram matrix, unnormalised as in the tutorial (optionally divided by H·W).

    F = x.reshape(N, H*W, C);  G = Fᵀ·F * norm      # (N, C, C)

Backward: dL/dF = norm · F·(dG + dGᵀ). G is symmetric, and so is every dG our
losses produce, but the general form is kept so the op is right on its own.
Kernels: the GEMMs go through the backend's matmul; the loss epilogue is in
kernels/loss.cu. Tests: tests/test_gram.py."""
from ..backend import get_array_module


def gram_forward_cpu(x, norm=1.0):
    """x (N, H, W, C) -> G (N, C, C), cache."""
    n, h, w, c = x.shape
    f = x.reshape(n, h * w, c)
    g = f.transpose(0, 2, 1) @ f
    if norm != 1.0:
        g *= norm
    return g, (f, x.shape, norm)


def gram_backward_cpu(dg, cache):
    """dG (N, C, C) -> dx (N, H, W, C)."""
    f, shape, norm = cache
    df = f @ (dg + dg.transpose(0, 2, 1))  # (N, H*W, C)
    if norm != 1.0:
        df *= norm
    return df.reshape(shape)

