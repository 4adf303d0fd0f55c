"""Winograd F(2x2, 3x3) (cpstyle/ops/winograd.py) against a float64 direct
convolution and against ops/conv.py's other NumPy forms."""
import gc

import numpy as np
import pytest

from cpstyle.ops import blas, conv, winograd
from emulation.checks import conv3x3_64
from gradcheck import assert_close

pytestmark = pytest.mark.skipif(not blas.available(np.float64),
                                reason="NumPy's BLAS is not reachable here (ops/blas.py)")

# Odd sizes (the tile grid padded), 1xW and Hx1, Cin != Cout both ways, two images
SHAPES = [((1, 7, 5, 3), 4), ((2, 9, 4, 5), 3), ((1, 1, 9, 2), 5), ((1, 9, 1, 2), 3),
          ((1, 1, 1, 3), 2), ((2, 33, 17, 6), 8), ((1, 2, 2, 4), 4), ((1, 20, 31, 7), 16)]


# a plain 3x3 'same' correlation in float64: y[i, j] = Σ x[i+ky-1, j+kx-1]·W[ky, kx]
direct = conv3x3_64


@pytest.fixture(params=["by-entries", "blocks"])
def path(request, monkeypatch):
    """winograd_cpu's two ways through an image: the whole image with the 16
    GEMMs split over the threads (small images), or bands of tile rows per
    thread, here one tile row per block so every block edge is crossed."""
    if request.param == "by-entries":
        monkeypatch.setattr(winograd, "MIN_TILES", 1 << 30)
    else:
        monkeypatch.setattr(winograd, "MIN_TILES", 1)
        monkeypatch.setattr(winograd, "BLOCK_BYTES", 1)
    return request.param


@pytest.fixture
def everywhere(monkeypatch):
    """ops/conv.py's convs all in the Winograd form, whatever their size."""
    monkeypatch.setattr(conv, "WINOGRAD", True)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_WORK", 1)


@pytest.mark.parametrize("shape, cout", SHAPES)
def test_winograd_matches_direct_float64(shape, cout, rng, path):
    x = rng.standard_normal(shape)
    w = rng.standard_normal((3, 3, shape[3], cout))
    y = winograd.winograd_cpu(x, winograd.transform_kernel(w))
    # float64: the transforms' roundoff only
    assert_close(y, direct(x, w), atol=1e-12, rtol=1e-12, what="winograd float64")
    dz = rng.standard_normal(shape[:3] + (cout,))
    dx = winograd.winograd_cpu(dz, winograd.transform_kernel(w, flip=True))
    assert_close(dx, direct(dz, conv.flip_kernel(w)), atol=1e-12, rtol=1e-12,
                 what="winograd float64, flipped kernel")


@pytest.mark.parametrize("shape, cout", [((1, 21, 19, 64), 64), ((1, 9, 14, 256), 96),
                                         ((2, 5, 7, 32), 512)])
def test_winograd_float32_accuracy(shape, cout, rng, path):
    """float32 against the float64 direct conv, relative to the output's scale.
    Measured: Winograd 1.5e-7 .. 5.7e-7 of max|y| for Cin 8 .. 512, about 1.6x
    the row-shifted form's own error (0.9e-7 .. 3.7e-7); the tolerance, 4e-6,
    leaves 7x of room, while a wrong tap or border gives errors of order 0.1."""
    cin = shape[3]
    x = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    y = winograd.winograd_cpu(x, winograd.transform_kernel(w))
    assert y.dtype == np.float32
    ref = direct(x, w)
    scale = np.abs(ref).max()
    assert_close(y / scale, ref / scale, atol=4e-6, rtol=0, what="winograd float32")


def test_transform_kernel_is_g_g_gt(rng):
    """U[4a+b] = (G g Gᵀ)[a, b], checked entry by entry on one (ci, co), and the
    flipped kernel's U is that of flip_kernel(w)."""
    w = rng.standard_normal((3, 3, 2, 3))
    u = winograd.transform_kernel(w)
    assert u.shape == (16, 2, 3)
    g = w[:, :, 1, 2]
    assert_close(u[:, 1, 2].reshape(4, 4), winograd.G @ g @ winograd.G.T, atol=1e-15, rtol=1e-15,
                 what="G g Gᵀ")
    assert_close(winograd.transform_kernel(w, flip=True), winograd.transform_kernel(conv.flip_kernel(w)),
                 atol=1e-15, rtol=1e-15, what="flipped")
    assert winograd.transform_kernel(w.astype(np.float32)).dtype == np.float32


def test_transformed_kernel_is_kept_per_array(rng):
    w = rng.standard_normal((3, 3, 2, 3))
    u, ub = winograd.transformed_kernel(w), winograd.transformed_kernel(w, flip=True)
    assert winograd.transformed_kernel(w) is u and winograd.transformed_kernel(w, flip=True) is ub
    assert ub.shape == (16, 3, 2)
    other = w.copy()
    assert winograd.transformed_kernel(other) is not u
    key = id(w)
    del w, u, ub
    gc.collect()
    assert key not in winograd._kernels  # dropped with its kernel


def test_winograd_refuses_a_kernel_that_does_not_fit(rng):
    x = rng.standard_normal((1, 4, 4, 3))
    with pytest.raises(ValueError, match="do not fit"):
        winograd.winograd_cpu(x, winograd.transform_kernel(rng.standard_normal((3, 3, 4, 2))))
    with pytest.raises(ValueError, match="do not fit"):
        winograd.winograd_cpu(x.astype(np.float32), winograd.transform_kernel(rng.standard_normal((3, 3, 3, 2))))


def _forms(monkeypatch, fn):
    """fn() with Winograd off (the row-shifted form, or the one-GEMM forms) -> results."""
    with monkeypatch.context() as m:
        m.setattr(conv, "WINOGRAD", False)
        rows = fn()
        m.setattr(conv, "ROWS_FORM", False)
        return rows, fn()


@pytest.mark.parametrize("shape, cout", SHAPES)
@pytest.mark.parametrize("use_out", [False, True])
def test_conv_forward_cpu_winograd_matches_other_forms(shape, cout, use_out, rng, path, everywhere,
                                                       monkeypatch):
    """conv_forward_cpu with bias and ReLU fused, into `out` or not, against
    the row-shifted and one-GEMM forms (float64) and the direct conv."""
    x = rng.standard_normal(shape)
    w = rng.standard_normal((3, 3, shape[3], cout))
    b = rng.standard_normal(cout)
    calls = []
    real = winograd.winograd_cpu
    monkeypatch.setattr(winograd, "winograd_cpu", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = np.full(shape[:3] + (cout,), np.nan) if use_out else None
    y, cache = conv.conv_forward_cpu(x, w, b, out=out)
    assert calls, "the Winograd form was not taken"
    assert (y is out) if use_out else y.shape == shape[:3] + (cout,)
    assert cache[0] is w and cache[1] is y
    assert_close(y, np.maximum(direct(x, w) + b, 0), atol=1e-12, rtol=1e-12, what="vs direct")
    for other in _forms(monkeypatch, lambda: conv.conv_forward_cpu(x, w, b)[0]):
        assert_close(y, other, atol=1e-12, rtol=1e-12, what="vs other forms")


@pytest.mark.parametrize("shape, cout", SHAPES)
@pytest.mark.parametrize("use_epilogue", [False, True])
def test_conv_input_grad_cpu_winograd_matches_other_forms(shape, cout, use_epilogue, rng, path,
                                                          everywhere, monkeypatch):
    """The backward to the input, with the model's ReLU-mask epilogue
    (relu_epilogue, a tap gradient folded in) or none, into `out`: every output
    row finished exactly once."""
    n, h, wd, cin = shape
    dz = rng.standard_normal((n, h, wd, cout))
    w = rng.standard_normal((3, 3, cin, cout))
    y_below = rng.standard_normal((n, h, wd, cin))  # the layer below's ReLU output
    add = rng.standard_normal((n, h, wd, cin))
    rows_seen = np.zeros(h, int)

    def epilogue(out, lo, hi):
        rows_seen[lo:hi] += 1
        conv.relu_epilogue(y_below, add)(out, lo, hi)

    out = np.full((n, h, wd, cin), np.nan)
    dx = conv.conv_input_grad_cpu(dz, w, epilogue=epilogue if use_epilogue else None, out=out)
    assert dx is out
    want = direct(dz, conv.flip_kernel(w))
    if use_epilogue:
        assert np.all(rows_seen == 1), f"rows finished {rows_seen}"
        want = (want + add) * (y_below > 0)
    assert_close(dx, want, atol=1e-12, rtol=1e-12, what="vs direct")
    fin = (lambda a, lo, hi: conv.relu_epilogue(y_below, add)(a, lo, hi)) if use_epilogue else None
    for other in _forms(monkeypatch, lambda: conv.conv_input_grad_cpu(dz, w, epilogue=fin)):
        assert_close(dx, other, atol=1e-12, rtol=1e-12, what="vs other forms")


def test_the_switch_and_the_rule(rng, monkeypatch):
    """WINOGRAD = False, or a channel count or pixels·Cin·Cout under the
    limits, keeps the other forms; over them, forward and backward both take
    Winograd."""
    calls = []
    real = winograd.winograd_cpu
    monkeypatch.setattr(winograd, "winograd_cpu", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 4)
    monkeypatch.setattr(conv, "WINOGRAD_MIN_WORK", 30 * 4 * 5)
    x = rng.standard_normal((1, 5, 6, 4)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
    b = np.zeros(5, np.float32)
    y, cache = conv.conv_forward_cpu(x, w, b)  # 30 pixels x 4 x 5
    conv.conv_backward_cpu(y, cache)
    assert calls == [(16, 4, 5), (16, 5, 4)]
    calls.clear()
    conv.conv_forward_cpu(x[:, :4], w, b)  # 24 pixels
    conv.conv_input_grad_cpu(y[:, :4], w)
    conv.conv_forward_cpu(x[..., :3], w[:, :, :3], b)  # 3 channels in
    monkeypatch.setattr(conv, "WINOGRAD", False)
    conv.conv_backward_cpu(*conv.conv_forward_cpu(x, w, b))
    assert calls == []
    # the real limits: every VGG-16 layer at 256x256 from conv2_2 on, none of conv1_x
    monkeypatch.undo()
    from cpstyle.layers import LAYER_CHANNELS, POOL_AFTER
    on, s = [], 256
    for i, (cin, cout) in enumerate(LAYER_CHANNELS):
        on.append(conv.uses_winograd(cin, cout, s * s, np.float32))
        assert conv.uses_winograd(cout, cin, s * s, np.float32) == on[-1]
        s = s // 2 if i in POOL_AFTER else s
    assert on == [False, False, False] + [True] * 10


def test_winograd_leaves_openblas_thread_count_as_it_was(rng):
    """winograd_cpu sets OpenBLAS to one thread for its GEMMs and puts the
    count back (the user's program is left as it was)."""
    threads = blas._library()[1]
    if threads is None:
        pytest.skip("no openblas_get_num_threads here")
    before = threads[0]()
    x = rng.standard_normal((1, 40, 40, 8)).astype(np.float32)
    winograd.winograd_cpu(x, winograd.transform_kernel(rng.standard_normal((3, 3, 8, 8)).astype(np.float32)))
    assert threads[0]() == before
