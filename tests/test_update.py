import numpy as np

from cpstyle.ops.update import update_cpu


def test_update_scales_by_std_and_clips(rng):
    x = rng.uniform(0, 255, (1, 4, 5, 3)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32) * 3
    out = update_cpu(x, g, 10.0)
    ref = np.clip(x.astype(np.float64) - g * 10.0 / (np.std(g.astype(np.float64)) + 1e-8), 0, 255)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-3)
    assert out.min() >= 0 and out.max() <= 255
    assert (out == 0).any() or (out == 255).any()  # steps of ~10/px reach the bounds


def test_assert_close_fails_on_nan():
    # the NaN-poisoning of outputs only shows unwritten elements if NaN fails the check
    import pytest
    from gradcheck import assert_close
    with pytest.raises(AssertionError):
        assert_close(np.array([np.nan, 1.0]), np.array([1.0, 1.0]), atol=0, rtol=0)
