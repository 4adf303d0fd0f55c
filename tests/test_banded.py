import numpy as np
import pytest

from cpstyle import StyleObjective, banded
from test_vgg16 import small_vgg


def pair(rng, bands, shape=(53, 37), pooling="max", gram_norm="none",
         content_ids=(4, 9), style_ids=(0, 3, 7, 12), constant_weights=False):
    """The same objective whole and in bands, and a mixed image."""
    model = small_vgg(rng).with_pooling(pooling)
    content = rng.uniform(0, 255, shape + (3,))
    style = rng.uniform(0, 255, (41, 30, 3))
    kw = dict(content_layer_ids=content_ids, style_layer_ids=style_ids, model=model,
              gram_norm=gram_norm, constant_weights=constant_weights,
              style_layer_weights=[1, 2, 3, 4][:len(style_ids)])
    whole = StyleObjective(content, style, **kw)
    parts = StyleObjective(content, style, bands=bands, **kw)
    x = rng.uniform(0, 255, (1,) + shape + (3,))
    return whole, parts, x


def assert_same(whole, parts, x):
    lw, aw, gw = whole.evaluate(x)
    lp, ap, gp = parts.evaluate(x)
    np.testing.assert_allclose(lp, lw, rtol=1e-10)
    np.testing.assert_allclose(ap, aw, rtol=1e-10)
    np.testing.assert_allclose(gp, gw, rtol=1e-9, atol=1e-12 * np.abs(gw).max())


@pytest.mark.parametrize("split", banded.SPLITS)
@pytest.mark.parametrize("rows", ["D", "3D", "big"])
def test_bands_give_the_whole_evaluation(rng, split, rows, conv_form):
    # bands of D rows (one row of the head's output) are the hardest case:
    # every own row is next to a margin; odd sizes leave rows that the pools
    # drop in the last band
    D = banded.step(split)
    n = {"D": D, "3D": 3 * D, "big": 64 * D}[rows]
    whole, parts, x = pair(rng, (split, n))
    for i in whole.content_targets:
        np.testing.assert_allclose(parts.content_targets[i], whole.content_targets[i], rtol=1e-12)
    for i in whole.style_targets:
        np.testing.assert_allclose(parts.style_targets[i], whole.style_targets[i], rtol=1e-10)
    assert_same(whole, parts, x)


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("gram_norm", ["none", "hw"])
def test_bands_with_head_content_and_every_option(rng, pooling, gram_norm):
    # content and style taps inside the head (layers 1, 3) and below it; a layer
    # that is both; constant weights
    whole, parts, x = pair(rng, (3, 4), shape=(46, 29), pooling=pooling, gram_norm=gram_norm,
                           content_ids=(1, 3, 8), style_ids=(1, 2, 5, 9),
                           constant_weights=True)
    assert_same(whole, parts, x)


@pytest.mark.parametrize("split", banded.SPLITS)
def test_a_margin_one_step_short_is_wrong(rng, split, monkeypatch):
    # the margin of the module docstring is needed: one step of D less and the
    # gradient (or the losses) differ, so the test above can fail
    whole, parts, x = pair(rng, (split, banded.step(split)))
    short = banded.margin(split) - banded.step(split)
    monkeypatch.setattr(banded, "margin", lambda s: short)
    with pytest.raises(AssertionError):
        assert_same(whole, parts, x)


def test_margins_and_windows():
    assert [banded.margin(s) for s in banded.SPLITS] == [2, 8, 24]
    assert [banded.step(s) for s in banded.SPLITS] == [2, 4, 8]
    w = banded.windows(37, 3, 8)
    assert w[0] == (0, 16, 0, 8) and w[-1] == (24, 37, 32, 37)
    assert [r0 for _, _, r0, _ in w] == [0, 8, 16, 24, 32]


@pytest.mark.parametrize("bands, match", [
    ((2, 4), "pool after layer"), ((3, 6), "multiple of 4"), ((6, 8), "must end below"),
    ("x", "split layer, rows")])
def test_bad_bands(rng, bands, match):
    model = small_vgg(rng)
    img = rng.uniform(0, 255, (40, 40, 3))
    with pytest.raises(ValueError, match=match):
        StyleObjective(img, img, content_layer_ids=[4], style_layer_ids=[0, 6], model=model,
                       bands=bands)
