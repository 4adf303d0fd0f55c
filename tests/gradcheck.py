"""Central differences in float64 along random directions (DESIGN.md §7.1)."""
import numpy as np


def directional_check(f, grad, x, rng, n_dirs=3, eps=1e-6):
    """f: x -> scalar; grad: dL/dx at x. Returns the worst relative error of
    <grad, v> against (f(x+eps v) - f(x-eps v)) / 2eps over random unit v."""
    worst = 0.0
    for _ in range(n_dirs):
        v = rng.standard_normal(x.shape)
        v /= np.linalg.norm(v)
        num = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
        ana = float(np.sum(grad * v))
        err = abs(num - ana) / max(abs(num), abs(ana), 1e-30)
        worst = max(worst, err)
    return worst


def assert_close(actual, ref, atol, rtol, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    err = np.abs(actual - ref)
    bad = ~(err <= atol + rtol * np.abs(ref))  # NaN/inf (an unwritten, poisoned output) fail too
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        rel = err / np.maximum(np.abs(ref), 1e-30)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements off; max abs err {err.max():.3g}, "
            f"max rel err {rel.max():.3g}; first bad index {idx}: {actual[idx]!r} vs {ref[idx]!r}")
