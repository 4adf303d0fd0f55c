import numpy as np
import pytest

from cpstyle import StyleObjective, VGG16
from cpstyle.objective import ADJ_EPS
from cpstyle.vgg16 import random_params
from gradcheck import directional_check
from test_vgg16 import SMALL


def make_objective(rng, gram_norm="none", shape=(17, 23)):
    model = VGG16(random_params(SMALL, rng), device="cpu", dtype=np.float64)
    content = rng.uniform(0, 255, shape + (3,))
    style = rng.uniform(0, 255, (19, 16, 3))
    obj = StyleObjective(content, style, content_layer_ids=[4, 9],
                         style_layer_ids=[0, 3, 7, 12], weight_content=1.5,
                         weight_style=10.0, weight_denoise=0.3, model=model,
                         gram_norm=gram_norm)
    return obj, content


@pytest.mark.parametrize("gram_norm", ["none", "hw"])
def test_objective_gradient_is_gradient_of_weighted_log_losses(gram_norm, rng, conv_form):
    # w·∇L/(L+eps) summed over the three terms is exactly ∇ Σ w·log(L + eps):
    # the normalised gradient of DESIGN.md §5 has a scalar potential to check against.
    obj, content = make_objective(rng, gram_norm)
    x = rng.uniform(0, 255, (1,) + content.shape)
    losses, adj, grad = obj.evaluate(x)
    wc, ws, wd = obj.weights

    def potential(z):
        l, _, _ = obj.evaluate(z)
        return wc * np.log(l[0] + ADJ_EPS) + ws * np.log(l[1] + ADJ_EPS) + wd * np.log(l[2] + ADJ_EPS)

    # pixels live in 0..255 and the losses are large: a step of 1e-3 keeps roundoff
    # (which grows as eps shrinks) well under the truncation error
    err = directional_check(potential, grad, x, rng, eps=1e-3)
    assert err < 1e-6, f"relative error {err:.3g}"
    np.testing.assert_allclose(adj, 1 / (losses + ADJ_EPS))


def test_objective_public_call_returns_floats_and_grad(rng):
    obj, content = make_objective(rng)
    mixed = rng.uniform(0, 255, content.shape)
    losses, grad = obj(mixed)
    assert set(losses) == {"content", "style", "denoise"}
    assert all(isinstance(v, float) and v > 0 for v in losses.values())
    assert grad.shape == mixed.shape and isinstance(grad, np.ndarray)
    with pytest.raises(ValueError, match="shape"):
        obj(rng.uniform(0, 255, (20, 20, 3)))


def test_objective_losses_match_definitions(rng):
    obj, content = make_objective(rng)
    x = rng.uniform(0, 255, (1,) + content.shape)
    losses, _, _ = obj.evaluate(x)
    taps, _ = obj.model.forward(x, obj.tap_ids)
    lc = np.mean([np.mean((taps[i] - obj.content_targets[i]) ** 2) for i in (4, 9)])
    grams = {i: np.einsum("nhwc,nhwd->ncd", taps[i], taps[i]) for i in (0, 3, 7, 12)}
    ls = np.mean([np.mean((grams[i] - obj.style_targets[i]) ** 2) for i in grams])
    ld = np.abs(np.diff(x, axis=1)).sum() + np.abs(np.diff(x, axis=2)).sum()
    np.testing.assert_allclose(losses, [lc, ls, ld], rtol=1e-10)


@pytest.mark.parametrize("bad, match", [
    (dict(content_layer_ids=[13]), "13"),
    (dict(style_layer_ids=["conv9_1"]), "conv9_1"),
    (dict(weight_style=float("nan")), "weight_style"),
    (dict(weight_content=-1), "weight_content"),
    (dict(gram_norm="chw"), "gram_norm"),
])
def test_objective_rejects_bad_arguments(bad, match, rng):
    model = VGG16(random_params(SMALL, rng), device="cpu")
    img = rng.uniform(0, 255, (16, 16, 3))
    kw = dict(content_layer_ids=[4], style_layer_ids=[0, 1], model=model)
    kw.update(bad)
    with pytest.raises(ValueError, match=match):
        StyleObjective(img, img, **kw)


@pytest.mark.parametrize("make, match", [
    (lambda r: np.full((16, 16, 3), np.nan), "NaN|finite"),
    (lambda r: r.uniform(0, 255, (1, 1, 3)), "16|small"),
    (lambda r: r.uniform(0, 255, (16, 16)), "shape|3"),
])
def test_objective_rejects_bad_images(make, match, rng):
    model = VGG16(random_params(SMALL, rng), device="cpu")
    good = rng.uniform(0, 255, (16, 16, 3))
    with pytest.raises(ValueError, match=match):
        StyleObjective(make(rng), good, content_layer_ids=[4], style_layer_ids=[0], model=model)


# ---- issue #5: constant weights, per-layer weights, blended styles ---------------

def _objective(model, content, style, **kw):
    args = dict(content_layer_ids=[4, 9], style_layer_ids=[0, 3, 7, 12], weight_content=1.5,
                weight_style=10.0, weight_denoise=0.3, model=model)
    args.update(kw)
    return StyleObjective(content, style, **args)


def _case(rng):
    model = VGG16(random_params(SMALL, rng), device="cpu", dtype=np.float64)
    content = rng.uniform(0, 255, (17, 23, 3))
    style = rng.uniform(0, 255, (19, 16, 3))
    x = rng.uniform(0, 255, (1, 17, 23, 3))
    return model, content, style, x


def test_constant_weights_gradient_is_the_unnormalised_sum(rng):
    model, content, style, x = _case(rng)
    w = (1.5, 10.0, 0.3)
    losses, adj, grad = _objective(model, content, style, constant_weights=True).evaluate(x)
    np.testing.assert_array_equal(adj, [1.0, 1.0, 1.0])
    # ∇L_c, ∇L_s, ∇L_d each alone: constant weights with one weight 1, the others 0
    parts = []
    for k in range(3):
        one = [0.0, 0.0, 0.0]
        one[k] = 1.0
        lk, _, gk = _objective(model, content, style, weight_content=one[0],
                               weight_style=one[1], weight_denoise=one[2],
                               constant_weights=True).evaluate(x)
        np.testing.assert_array_equal(lk, losses)
        parts.append(gk)
    expect = w[0] * parts[0] + w[1] * parts[1] + w[2] * parts[2]
    np.testing.assert_allclose(grad, expect, rtol=1e-12, atol=1e-12 * np.abs(expect).max())
    # and it is not the normalised gradient (the losses are far from 1 here)
    _, _, gnorm = _objective(model, content, style).evaluate(x)
    assert not np.allclose(gnorm, grad, rtol=0.1)
    # the potential of the constant-weights gradient is Σ w·L
    obj = _objective(model, content, style, constant_weights=True)
    err = directional_check(lambda z: obj.potential(obj.evaluate(z)[0]), grad, x, rng, eps=1e-3)
    assert err < 1e-6, f"relative error {err:.3g}"
    assert obj.potential(losses) == pytest.approx(sum(wi * li for wi, li in zip(w, losses)))


def test_per_layer_weights_are_a_weighted_mean(rng):
    model, content, style, x = _case(rng)
    single_c = {i: _objective(model, content, style, content_layer_ids=[i]).evaluate(x)[0][0]
                for i in (4, 9)}
    single_s = {i: _objective(model, content, style, style_layer_ids=[i]).evaluate(x)[0][1]
                for i in (0, 3, 12)}
    # listed out of order, by name and id, weights in the listed order
    obj = _objective(model, content, style, content_layer_ids=["conv4_3", 4],
                     content_layer_weights=[1.0, 3.0], style_layer_ids=[12, "conv1_1", 3],
                     style_layer_weights=[2, 0, 6])
    assert obj.content_ids == [4, 9] and obj.content_layer_weights == [0.75, 0.25]
    assert obj.style_ids == [0, 3, 12] and obj.style_layer_weights == [0.0, 0.75, 0.25]
    losses, _, grad = obj.evaluate(x)
    assert losses[0] == pytest.approx(0.75 * single_c[4] + 0.25 * single_c[9], rel=1e-12)
    assert losses[1] == pytest.approx(0.75 * single_s[3] + 0.25 * single_s[12], rel=1e-12)
    # all-equal weights are the tutorial's mean
    eq = _objective(model, content, style, content_layer_weights=[5, 5]).evaluate(x)[0]
    assert eq[0] == pytest.approx((single_c[4] + single_c[9]) / 2, rel=1e-12)
    err = directional_check(lambda z: obj.potential(obj.evaluate(z)[0]), grad, x, rng, eps=1e-3)
    assert err < 1e-6, f"relative error {err:.3g}"


def test_blended_styles(rng):
    model, content, style, x = _case(rng)
    other = rng.uniform(0, 255, (21, 18, 3))
    one = _objective(model, content, style)
    same = _objective(model, content, [style, style], style_blend_weights=[0.3, 0.7])
    for i in one.style_ids:  # blend of two identical styles = the style
        np.testing.assert_allclose(same.style_targets[i], one.style_targets[i], rtol=1e-14)
    np.testing.assert_allclose(same.evaluate(x)[0], one.evaluate(x)[0], rtol=1e-12)
    two = _objective(model, content, [style, other], style_blend_weights=[3, 1])
    b = _objective(model, content, other)
    for i in one.style_ids:  # A = Σ w_k A_k, weights normalised
        np.testing.assert_allclose(two.style_targets[i],
                                   0.75 * one.style_targets[i] + 0.25 * b.style_targets[i],
                                   rtol=1e-12)
    eq = _objective(model, content, [style, other])
    assert eq.blend_weights == [0.5, 0.5]


@pytest.mark.parametrize("bad, match", [
    (dict(content_layer_ids=["conv3_9"]), "conv3_9"),
    (dict(content_layer_weights=[1.0]), "1 weights for 2"),
    (dict(style_layer_weights=[1, 1, 1, -1]), ">= 0"),
    (dict(style_layer_weights=[0, 0, 0, 0]), "sum to 0"),
    (dict(content_layer_ids=[4, "conv2_1", 2], content_layer_weights=[1, 1, 1]), "twice"),
    (dict(style=["S", "S"], style_blend_weights=[1.0]), "1 weights for 2"),
    (dict(style=["S", "S"], style_blend_weights=[1.0, float("nan")]), "finite"),
    (dict(style=[]), "no style image"),
])
def test_objective_rejects_bad_options(bad, match, rng):
    model, content, style, _ = _case(rng)
    bad = dict(bad)
    if "style" in bad:
        style = [style if s == "S" else s for s in bad.pop("style")]
    with pytest.raises(ValueError, match=match):
        _objective(model, content, style, **bad)
