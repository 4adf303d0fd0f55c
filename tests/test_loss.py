import numpy as np
import pytest

from cpstyle.ops.loss import (denoise_backward_cpu, denoise_forward_cpu, mse_backward_cpu,
                              mse_forward_cpu)
from gradcheck import directional_check


def test_mse_value_and_gradcheck(rng):
    a, t = rng.standard_normal((1, 3, 5, 4)), rng.standard_normal((1, 3, 5, 4))
    assert float(mse_forward_cpu(a, t)) == pytest.approx(np.sum((a - t) ** 2) / a.size, rel=1e-12)
    da = mse_backward_cpu(a, t, 0.7)
    err = directional_check(lambda z: 0.7 * float(mse_forward_cpu(z, t)), da, a, rng)
    assert err < 1e-6


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (1, 5, 7, 3), (2, 4, 1, 2), (1, 17, 23, 3)])
def test_denoise_value_and_gradcheck(shape, rng):
    x = rng.standard_normal(shape) * 10
    n, h, w, c = shape
    ref = 0.0
    for b, i, j, k in np.ndindex(*shape):
        if i + 1 < h:
            ref += abs(x[b, i + 1, j, k] - x[b, i, j, k])
        if j + 1 < w:
            ref += abs(x[b, i, j + 1, k] - x[b, i, j, k])
    assert float(denoise_forward_cpu(x)) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    dx = denoise_backward_cpu(x, 1.3)
    if x.size > 3:
        # piecewise linear: a wide step is exact unless it crosses a kink (|diffs| ~ 10)
        err = directional_check(lambda z: 1.3 * float(denoise_forward_cpu(z)), dx, x, rng, eps=1e-3)
        assert err < 1e-6
    else:
        assert np.all(dx == 0)


def test_total_variation_in_row_blocks_is_the_whole(rng, monkeypatch):
    # large images take the TV in blocks of rows (bounded temporaries); the sums
    # and the gradient are the whole-array forms', blocks straddled included
    from cpstyle.ops import loss
    x = rng.uniform(0, 255, (1, 37, 23, 3)).astype(np.float32)
    tv = float(loss.denoise_forward_cpu(x))
    base = rng.standard_normal(x.shape).astype(np.float32)
    whole = loss.denoise_backward_cpu(x, np.float32(0.7), out=base.copy())
    monkeypatch.setattr(loss, "TV_BLOCKS_FROM", 0)
    monkeypatch.setattr(loss, "TV_BLOCK_FLOATS", 5 * 23 * 3)  # 5 rows a block
    assert len(loss._row_blocks(x)) == 8
    assert float(loss.denoise_forward_cpu(x)) == pytest.approx(tv, rel=1e-6)
    blocks = loss.denoise_backward_cpu(x, np.float32(0.7), out=base.copy())
    np.testing.assert_allclose(blocks, whole, rtol=1e-6, atol=1e-6)
    assert not np.allclose(blocks, base)  # it added something
