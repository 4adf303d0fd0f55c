import numpy as np
import pytest

from cpstyle import VGG16
from cpstyle.layers import LAYER_CHANNELS, POOL_AFTER
from cpstyle.vgg16 import random_params
from gradcheck import assert_close, directional_check

SMALL = [(3, 4), (4, 4), (4, 5), (5, 5), (5, 6), (6, 6), (6, 6),
         (6, 7), (7, 7), (7, 7), (7, 5), (5, 5), (5, 4)]


def small_vgg(rng, dtype=np.float64):
    return VGG16(random_params(SMALL, rng), device="cpu", dtype=dtype)


def direct_forward(x, params, upto, mean, std):
    """Tap of layer `upto` by a plain float64 'same' convolution (no im2col)."""
    h = (x.astype(np.float64) / 255 - np.asarray(mean)) / np.asarray(std)
    for i in range(upto + 1):
        w, b = (np.asarray(a, np.float64) for a in params[i])
        n, hh, ww, _ = h.shape
        p = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        y = np.zeros((n, hh, ww, w.shape[3])) + b
        for ky in range(3):
            for kx in range(3):
                y += np.tensordot(p[:, ky:ky + hh, kx:kx + ww], w[ky, kx], axes=([3], [0]))
        h = np.maximum(y, 0)
        if i in POOL_AFTER and i < upto:
            n, hh, ww, c = h.shape
            h = h[:, :hh // 2 * 2, :ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))
    return h


# taps [0, 1, 3, 6, 9, 12]: a tap gradient on every layer right before a pool,
# whose odd last row/column the pool crops (the backward folds it in there)
@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("tap_ids", [[2, 8, 12], [0, 1, 3, 6, 9, 12]])
def test_backward_gradcheck_through_all_layers_odd_shape(rng, pooling, tap_ids, conv_form):
    model = small_vgg(rng).with_pooling(pooling)
    x = rng.uniform(0, 255, (1, 17, 23, 3))
    taps, caches = model.forward(x, tap_ids)
    assert taps[12].shape == (1, 1, 1, 4)  # 17x23 -> 8x11 -> 4x5 -> 2x2 -> 1x1
    r = {i: rng.standard_normal(t.shape) for i, t in taps.items()}
    dx = model.backward(r, caches)
    f = lambda z: sum(float(np.sum(t * r[i])) for i, t in model.forward(z, tap_ids)[0].items())
    # f is piecewise linear, so the differences' error is roundoff (|f| ~ 300:
    # ~1e-6 at eps 1e-5 on some directions, in every conv form) and any kink
    # inside ±eps; eps 1e-4 (avg pools, more terms: 1e-3) keeps both below 3e-7
    err = directional_check(f, dx, x, rng, eps=1e-4 if pooling == "max" else 1e-3)
    assert err < 1e-6, f"relative error {err:.3g}"


def test_avg_pooling_is_honoured(rng):
    """with_pooling shares the weights; the taps behind a pool change, those
    before the first pool do not; a float64 direct net with avg pools agrees."""
    model = small_vgg(rng)
    avg = model.with_pooling("avg")
    assert avg.kernels is model.kernels and model.pooling == "max" and avg.pooling == "avg"
    x = rng.uniform(0, 255, (1, 17, 23, 3))
    tm, _ = model.forward(x, [1, 4])
    ta, _ = avg.forward(x, [1, 4])
    np.testing.assert_array_equal(tm[1], ta[1])
    assert not np.allclose(tm[4], ta[4])
    h = direct_forward(x, list(zip(model.kernels, model.biases)), 1, model.mean, model.std)
    n, hh, ww, c = h.shape
    h = h[:, :hh // 2 * 2, :ww // 2 * 2].reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))
    got, _ = avg.forward(x, [2])
    # conv2_1 on the avg-pooled conv1_2 output, by hand
    w, b = model.kernels[2], model.biases[2]
    p = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros(h.shape[:3] + (w.shape[3],)) + b
    for ky in range(3):
        for kx in range(3):
            y += np.tensordot(p[:, ky:ky + h.shape[1], kx:kx + h.shape[2]], w[ky, kx], axes=([3], [0]))
    assert_close(got[2], np.maximum(y, 0), atol=1e-9, rtol=1e-9, what="conv2_1 after avg pool")
    with pytest.raises(ValueError, match="pooling"):
        model.with_pooling("min")


def test_forward_stops_at_deepest_tap(rng):
    model = small_vgg(rng)
    taps, caches = model.forward(rng.uniform(0, 255, (1, 16, 16, 3)), [1, 4])
    assert sorted(taps) == [1, 4] and len(caches) == 5


@pytest.mark.weights
def test_real_vgg_forward_matches_direct_convolution(vgg_cpu, rng, conv_form):
    x = rng.uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    params = list(zip(vgg_cpu.kernels, vgg_cpu.biases))
    assert [w.shape[2:] for w, _ in params] == list(LAYER_CHANNELS)
    taps, _ = vgg_cpu.forward(x, [1, 4, 9, 12])
    for i in (1, 4, 9, 12):
        ref = direct_forward(x, params, i, vgg_cpu.mean, vgg_cpu.std)
        scale = np.abs(ref).max()
        # float32 engine vs float64 direct conv: relative to the tap's magnitude
        assert_close(taps[i] / scale, ref / scale, atol=1e-5, rtol=1e-5, what=f"tap {i}")
