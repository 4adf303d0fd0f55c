"""assert_close for kernel outputs: tests/gradcheck.assert_close, plus a check
that NaN/inf sit exactly where the reference has them; and the implicit-GEMM
conv's two-level check (igemm_check), shared by the emulated and GPU tests.

gradcheck.assert_close alone lets NaN through (`NaN > tol` is False), and NaN
is what the kernel tests poison their outputs with to show unwritten elements."""
import numpy as np

from gradcheck import assert_close as _assert_close

EPS32 = float(np.finfo(np.float32).eps)


def assert_close(actual, ref, atol, rtol, what=""):
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    assert a.shape == r.shape, f"{what}: shape {a.shape} != {r.shape}"
    inf_r = np.isinf(r)
    odd = (np.isnan(a) != np.isnan(r)) | (np.isinf(a) != inf_r) | (inf_r & (a != r))
    if odd.any():
        idx = tuple(int(i) for i in np.argwhere(odd)[0])
        raise AssertionError(f"{what}: {int(odd.sum())} of {a.size} elements non-finite where the "
                             f"reference is not (or the other way): first at {idx}: "
                             f"{a[idx]!r} vs {r[idx]!r} (NaN = never written?)")
    fin = np.isfinite(r)
    _assert_close(np.where(fin, a, 0.0), np.where(fin, r, 0.0), atol, rtol, what)


# ---- the implicit-GEMM conv (kernels/conv_igemm.cu): emulated and GPU tests ----

def conv3x3_64(x, w):
    """Direct 3x3 conv, stride 1, zero pad 1, in float64 (no im2col)."""
    n, h, wd, _ = x.shape
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, wd, w.shape[3]))
    for ky in range(3):
        for kx in range(3):
            out += xp[:, ky:ky + h, kx:kx + wd] @ np.asarray(w[ky, kx], np.float64)
    return out


def igemm_check(got, x, w, b, precision, what):
    """got = relu?(conv(x, w) + b) from the kernel; b None: no bias, no ReLU.
    Tight: against a float64 conv of the operands rounded as the kernel rounds
    them (what is left is fp32 accumulation); and the precision's stated bound
    (conv_igemm.ERROR_BOUND) against the exact conv."""
    from cpstyle.ops import conv_igemm
    kstep = 16 if precision == "bf16" else 8
    k = 9 * x.shape[3]
    bound = conv3x3_64(np.abs(x), np.abs(w)) + (0 if b is None else np.abs(b))
    acc = (k / kstep + 8) * EPS32 * bound.max()  # fp32 accumulation (+3xTF32's small terms)
    post = (lambda v: v) if b is None else (lambda v: np.maximum(v + b, 0))
    rounded = post(conv3x3_64(conv_igemm.round_operand(x, precision),
                              conv_igemm.round_operand(w, precision)))
    assert_close(got, rounded, atol=acc, rtol=0, what=f"{what} (rounded operands)")
    exact = post(conv3x3_64(x, w))
    err = np.abs(got - exact)
    limit = conv_igemm.ERROR_BOUND[precision] * bound + acc
    bad = err > limit
    assert not bad.any(), (f"{what}: {int(bad.sum())} elements beyond the {precision} bound, "
                           f"worst {err.max():.3g} (limit there {limit.flat[np.argmax(err)]:.3g})")


def igemm_operands(rng, shape, cout):
    n, h, w, cin = shape
    x = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)  # post-ReLU-like
    wt = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    return x, wt, b
