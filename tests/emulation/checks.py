"""assert_close for kernel outputs: tests/gradcheck.assert_close, plus a check
that NaN/inf sit exactly where the reference has them.

gradcheck.assert_close alone lets NaN through (`NaN > tol` is False), and NaN
is what the kernel tests poison their outputs with to show unwritten elements."""
import numpy as np

from gradcheck import assert_close as _assert_close


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
