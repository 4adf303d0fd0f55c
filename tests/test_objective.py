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
def test_objective_gradient_is_gradient_of_weighted_log_losses(gram_norm, rng):
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
