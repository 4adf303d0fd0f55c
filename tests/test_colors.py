"""cpstyle/colors.py: YCbCr both ways, the `after` transfer (chroma exactly the
content's, RGB in range even for saturated colours) and the `before` matching."""
import numpy as np
import pytest

from cpstyle.colors import (check_preserve_colors, luma, luminance_image, match_luminance,
                            rgb_to_ycbcr, transfer_luminance, ycbcr_to_rgb)


def test_ycbcr_round_trip_and_known_values(rng):
    img = rng.uniform(0, 255, (7, 9, 3))
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(img)), img, atol=1e-3)
    ycc = rgb_to_ycbcr(np.array([[[255.0, 255, 255], [0, 0, 0], [255, 0, 0]]]))
    np.testing.assert_allclose(ycc[0, 0], [255, 128, 128], atol=1e-3)
    np.testing.assert_allclose(ycc[0, 1], [0, 128, 128], atol=1e-3)
    np.testing.assert_allclose(ycc[0, 2], [76.245, 84.972, 255.5], atol=1e-3)


def test_transfer_luminance_keeps_content_chroma_even_when_saturated(rng):
    content = rng.uniform(0, 255, (16, 17, 3)).astype(np.float32)
    content[0, :3] = [[255, 0, 0], [0, 0, 255], [0, 255, 0]]  # pure primaries
    mixed = rng.uniform(0, 255, content.shape).astype(np.float32)
    mixed[0, :3] = 255.0  # white over them: Y far outside what red allows
    out = transfer_luminance(mixed, content)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
    np.testing.assert_allclose(rgb_to_ycbcr(out)[..., 1:], rgb_to_ycbcr(content)[..., 1:],
                               atol=2e-3)
    np.testing.assert_allclose(out[0, 0], [255, 0, 0], atol=1e-3)  # brightest red there is
    # where the content is grey, the result is the mixed image's grey level
    grey = np.full((16, 16, 3), 90.0, np.float32)
    np.testing.assert_allclose(transfer_luminance(mixed[:, :16], grey),
                               luminance_image(mixed[:, :16]), atol=2e-3)


def test_match_luminance_moments(rng):
    content = rng.uniform(60, 200, (20, 18, 3)).astype(np.float32)
    style = (rng.uniform(0, 80, (19, 23, 3)) * [1.0, 0.5, 0.2]).astype(np.float32)
    m = match_luminance(style, content)
    assert m.shape == style.shape and m.dtype == np.float32
    np.testing.assert_array_equal(m[..., 0], m[..., 2])
    y = m[..., 0].astype(np.float64)
    assert y.mean() == pytest.approx(luma(content).mean(), rel=1e-4)
    assert y.std() == pytest.approx(luma(content).std(), rel=1e-4)
    # the pattern is the style's: a linear map of its luminance
    assert np.corrcoef(y.ravel(), luma(style).ravel())[0, 1] > 0.9999


def test_check_preserve_colors():
    assert check_preserve_colors("after") == "after"
    with pytest.raises(ValueError, match="preserve_colors"):
        check_preserve_colors("yes")
