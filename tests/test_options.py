"""The options of issue #5 through cpstyle.style_transfer on the reference
backend (a small random VGG-like net, small odd images): each test shows the
option's effect, and the combinations that make no sense are refused before
anything is computed."""
import numpy as np
import pytest

import cpstyle
from cpstyle import VGG16, driver
from cpstyle.colors import luma, rgb_to_ycbcr
from cpstyle.driver import initial_image, make_initial_image, scale_sizes
from cpstyle.images import resize_to
from cpstyle.vgg16 import random_params
from gradcheck import assert_close
from test_vgg16 import SMALL

LAYERS = dict(content_layer_ids=[4, 9], style_layer_ids=[0, 3, 7, 12])


@pytest.fixture(scope="module")
def model():
    return VGG16(random_params(SMALL, np.random.default_rng(3)), device="cpu")


@pytest.fixture
def pics(rng):
    content = rng.uniform(0, 255, (19, 23, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (21, 17, 3)).astype(np.float32)
    return content, style


def run(model, content, style, **kw):
    args = dict(LAYERS, num_iterations=2, seed=4, model=model)
    args.update(kw)
    return cpstyle.style_transfer(content, style, **args)


def collect(model, content, style, **kw):
    seen = []
    out = run(model, content, style, callback=seen.append, callback_every=1, **kw)
    return out, seen


# ---- init ------------------------------------------------------------------------

def test_init_images(model, pics):
    content, style = pics
    out = run(model, content, style, num_iterations=0, init="content")
    np.testing.assert_array_equal(out, content)
    style_c = resize_to(style, *content.shape[:2])
    assert_close(run(model, content, style, num_iterations=0, init="style"), style_c,
                 atol=1e-4, rtol=0, what="init style")
    assert_close(run(model, content, style, num_iterations=0, init="blend"),
                 (content + style_c) / 2, atol=1e-4, rtol=0, what="init blend")
    other = np.full((40, 30, 3), 17.0, np.float32)  # an image of another size: resized
    np.testing.assert_allclose(run(model, content, style, num_iterations=0, init=other), 17.0,
                               atol=1e-3)
    np.testing.assert_array_equal(run(model, content, style, num_iterations=0),
                                  initial_image(content.shape, 4))  # the tutorial's noise


def test_init_noise_is_seeded_bounded_and_clipped(pics):
    content, style = pics
    a = make_initial_image("content", content, [style], [1.0], 5, 8.0)
    b = make_initial_image("content", content, [style], [1.0], 5, 8.0)
    c = make_initial_image("content", content, [style], [1.0], 6, 8.0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    d = a - content
    inside = (content > 8) & (content < 247)
    assert np.abs(d).max() <= 8.0 + 1e-4 and np.abs(d[inside]).mean() > 2.0
    assert a.min() >= 0 and a.max() <= 255


def test_seed_runs_are_identical(model, pics):
    content, style = pics
    a = run(model, content, style, seed=11, num_iterations=3)
    b = run(model, content, style, seed=11, num_iterations=3)
    c = run(model, content, style, seed=12, num_iterations=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---- several styles, style scale -------------------------------------------------------

def test_blend_of_two_identical_styles_is_the_style(model, pics):
    content, style = pics
    one = run(model, content, style, num_iterations=3)
    two = run(model, content, [style, style.copy()], style_blend_weights=[0.5, 0.5],
              num_iterations=3)
    np.testing.assert_array_equal(two, one)
    other = np.ascontiguousarray(style[::-1, ::-1])
    mixed = run(model, content, [style, other], style_blend_weights=[0.5, 0.5], num_iterations=3)
    assert not np.array_equal(mixed, one)


def test_style_scale_sizes_the_style_from_the_content(model, pics, monkeypatch):
    content, style = pics  # content 19x23 (long 23), style 21x17 (long 21)
    seen = []
    real = driver.StyleObjective

    def spy(c, s, *a, **k):
        seen.append([x.shape for x in s])
        return real(c, s, *a, **k)
    monkeypatch.setattr(driver, "StyleObjective", spy)
    run(model, content, style, num_iterations=0, style_scale=2.0)
    assert seen[-1] == [(46, 37, 3)]  # long side 2 x 23, aspect kept
    run(model, content, style, num_iterations=0)
    assert seen[-1] == [(21, 17, 3)]  # as given


# ---- colours -------------------------------------------------------------------------

def test_preserve_colors_after_keeps_the_content_chroma(model, pics):
    content, style = pics
    out = run(model, content, style, preserve_colors="after")
    plain = run(model, content, style)
    assert_close(rgb_to_ycbcr(out)[..., 1:], rgb_to_ycbcr(content)[..., 1:], atol=2e-3, rtol=0,
                 what="chroma after")
    assert not np.allclose(rgb_to_ycbcr(plain)[..., 1:], rgb_to_ycbcr(content)[..., 1:], atol=1)
    assert out.min() >= 0 and out.max() <= 255
    # the luminance is the run's wherever the content's chroma allows that Y
    # (R, G, B = Y + offsets stay in 0..255), clamped into that range elsewhere
    ycc = rgb_to_ycbcr(content)
    cb, cr = ycc[..., 1] - 128, ycc[..., 2] - 128
    offs = np.stack([1.402 * cr, -0.344136 * cb - 0.714136 * cr, 1.772 * cb], -1)
    lo, hi = (-offs).max(-1), (255 - offs).min(-1)
    yp = luma(plain)
    free = (yp > lo + 1e-3) & (yp < hi - 1e-3)
    assert free.mean() > 0.2, free.mean()
    assert_close(luma(out)[free], yp[free], atol=2e-3, rtol=0, what="luminance kept")
    assert_close(luma(out)[~free], np.clip(yp, lo, hi)[~free], atol=2e-3, rtol=0,
                 what="luminance clamped")


def test_preserve_colors_before_runs_on_matched_luminance(model, pics, monkeypatch):
    content, style = pics
    style = style * np.array([1.0, 0.3, 0.2], np.float32)  # a reddish, darker style
    seen = []
    real = driver.StyleObjective

    def spy(c, s, *a, **k):
        seen.append((c, s))
        return real(c, s, *a, **k)
    monkeypatch.setattr(driver, "StyleObjective", spy)
    out = run(model, content, style, preserve_colors="before")
    c_run, (s_run,) = seen[-1]
    for img in (c_run, s_run):  # grey: R = G = B
        np.testing.assert_array_equal(img[..., 0], img[..., 1])
        np.testing.assert_array_equal(img[..., 0], img[..., 2])
    assert_close(c_run[..., 0], luma(content), atol=1e-4, rtol=0, what="content luminance")
    ys, yc = s_run[..., 0].astype(np.float64), luma(content)
    assert ys.mean() == pytest.approx(yc.mean(), abs=0.5)
    assert ys.std() == pytest.approx(yc.std(), rel=0.02)
    assert_close(rgb_to_ycbcr(out)[..., 1:], rgb_to_ycbcr(content)[..., 1:], atol=2e-3, rtol=0,
                 what="chroma before")


# ---- pooling, constant weights, per-layer weights end to end ---------------------

def test_avg_pooling_changes_the_run_and_leaves_the_model(model, pics):
    content, style = pics
    a = run(model, content, style, pooling="avg")
    b = run(model, content, style)
    assert not np.array_equal(a, b) and model.pooling == "max"


def test_constant_weights_in_the_loop(model, pics):
    content, style = pics
    _, seen = collect(model, content, style, constant_weights=True, num_iterations=1)
    for p in seen:
        assert p.adj == {"content": 1.0, "style": 1.0, "denoise": 1.0}
        expect = 1.5 * p.losses["content"] + 10 * p.losses["style"] + 0.3 * p.losses["denoise"]
        assert p.objective == pytest.approx(expect, rel=1e-6)


def test_denoise_norm_divides_the_tv_weight_by_the_pixels_with_constant_weights(model, pics):
    content, style = pics
    h, w = content.shape[:2]
    _, a = collect(model, content, style, constant_weights=True, num_iterations=1,
                   weight_denoise=0.3 * h * w, denoise_norm="hw")
    _, b = collect(model, content, style, constant_weights=True, num_iterations=1)
    assert [p.objective for p in a] == pytest.approx([p.objective for p in b], rel=1e-6)
    assert a[-1].losses == pytest.approx(b[-1].losses, rel=1e-5)  # L_d reported as the sum
    # the reciprocal weights: a factor on L_d cancels, so "hw" changes nothing
    x = run(model, content, style, denoise_norm="hw")
    assert np.array_equal(x, run(model, content, style))
    assert driver.denoise_weight_at(2.0, "hw", True, (4, 5)) == 0.1
    assert driver.denoise_weight_at(2.0, "hw", False, (4, 5)) == 2.0


def test_layer_weights_in_the_loop(model, pics):
    content, style = pics
    _, a = collect(model, content, style, num_iterations=0,
                   content_layer_weights=[1, 0], style_layer_weights=[1, 1, 1, 1])
    _, b = collect(model, content, style, num_iterations=0, content_layer_ids=[4])
    _, c = collect(model, content, style, num_iterations=0)
    assert a[0].losses["content"] == pytest.approx(b[0].losses["content"], rel=1e-6)
    assert a[0].losses["style"] == pytest.approx(c[0].losses["style"], rel=1e-6)
    assert a[0].losses["content"] != pytest.approx(c[0].losses["content"], rel=1e-3)


# ---- multiscale ------------------------------------------------------------------

def test_scale_sizes():
    assert scale_sizes((384, 512, 3), 128) == [(96, 128), (136, 181), (192, 256), (272, 362),
                                               (384, 512)]
    assert scale_sizes((100, 80, 3), 128) == [(100, 80)]
    assert scale_sizes((300, 451, 3), 128) == [(106, 159), (150, 226), (212, 319), (300, 451)]
    assert scale_sizes((20, 200, 3), 32) == [(20, 200)]  # 14x141 would be too small
    assert scale_sizes((33, 27, 3), 16) == [(23, 19), (33, 27)]  # not 16x14


def test_multiscale_produces_each_scale_in_order(model, rng):
    content = rng.uniform(0, 255, (41, 33, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (20, 24, 3)).astype(np.float32)
    out, seen = collect(model, content, style, multiscale=True, min_size=20,
                        iterations_per_scale=2, num_iterations=99)
    sizes = [(20, 16), (29, 23), (41, 33)]  # 41x33 · 1/2, 1/√2, 1
    assert [(p.scale, p.iteration, p.size) for p in seen] == [
        (k, i, sizes[k]) for k in range(3) for i in range(3)]
    assert all(p.num_scales == 3 and p.num_iterations == 2 for p in seen)
    assert all(p.image.shape[:2] == p.size for p in seen)
    assert out.shape == content.shape
    np.testing.assert_array_equal(out, seen[-1].image)
    # each scale starts from the previous result, upsampled
    for k in (1, 2):
        last = seen[3 * k - 1].image
        assert_close(seen[3 * k].image, resize_to(last, *sizes[k]), atol=1e-4, rtol=0,
                     what=f"start of scale {k}")


def test_interrupted_multiscale_returns_the_content_size(model, rng):
    content = rng.uniform(0, 255, (41, 33, 3)).astype(np.float32)

    def cb(p):
        if p.scale == 1 and p.iteration == 1:
            raise KeyboardInterrupt
    with pytest.raises(cpstyle.Interrupted) as e:
        run(model, content, content, multiscale=True, min_size=20, iterations_per_scale=2,
            callback=cb, callback_every=1)
    assert e.value.image.shape == content.shape


# ---- refusals (before any weights are needed: model=None would load them) ---------

@pytest.mark.parametrize("kw, match", [
    (dict(content_layer_ids=["conv3_7"]), "conv3_7"),
    (dict(style_layer_weights=[1, 2]), "2 weights for 4"),
    (dict(content_layer_weights=[1, -1]), ">= 0"),
    (dict(style=["S", "S"], style_blend_weights=[1, 2, 3]), "3 weights for 2"),
    (dict(style_blend_weights=[-1]), ">= 0"),
    (dict(iterations_per_scale=3), "multiscale"),
    (dict(min_size=64), "multiscale"),
    (dict(multiscale=True, min_size=8), "at least 16"),
    (dict(init="sideways"), "unknown init"),
    (dict(init_noise=5.0), "init_noise"),
    (dict(init="content", init_noise=-1), "init_noise"),
    (dict(optimizer="newton"), "unknown optimizer"),
    (dict(optimizer="gd", learning_rate=1.0), "learning_rate"),
    (dict(optimizer="adam", lbfgs_history=3), "lbfgs_history"),
    (dict(pooling="min"), "pooling"),
    (dict(preserve_colors="during"), "preserve_colors"),
    (dict(style_scale=0), "style_scale"),
    (dict(style_scale=0.1), "at least 16"),
    (dict(constant_weights="yes"), "constant_weights"),
    (dict(denoise_norm="mean"), "unknown denoise_norm 'mean'"),
])
def test_bad_combinations_are_refused_before_loading(kw, match, pics, monkeypatch):
    content, style = pics

    def no_weights(*a, **k):
        raise AssertionError("the weights were loaded before the arguments were checked")
    monkeypatch.setattr(VGG16, "load", no_weights)
    kw = dict(kw)
    if "style" in kw:
        style = [style if s == "S" else s for s in kw.pop("style")]
    args = dict(LAYERS, device="cpu", num_iterations=1)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        cpstyle.style_transfer(content, style, **args)
