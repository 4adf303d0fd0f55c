import numpy as np
import pytest

from cpstyle.ops.conv import conv_backward_cpu, conv_forward_cpu, im2col_cpu
from gradcheck import assert_close, directional_check


def direct_conv(x, w, b):
    """Plain 3x3 'same' convolution in float64, loops over the 9 taps only."""
    n, h, wd, cin = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.zeros((n, h, wd, w.shape[3])) + b
    for ky in range(3):
        for kx in range(3):
            y += np.einsum("nhwc,cd->nhwd", xp[:, ky:ky + h, kx:kx + wd], w[ky, kx])
    return np.maximum(y, 0)


# rows: the row-shifted form; one-gemm: Cout > Cin im2col of x, Cout <= Cin
# x·W' then col2im (both)
@pytest.mark.parametrize("shape, cout", [((1, 1, 1, 3), 4), ((1, 7, 5, 3), 4), ((2, 9, 4, 5), 4),
                                         ((1, 33, 17, 2), 4), ((1, 7, 5, 3), 3), ((1, 1, 1, 3), 3),
                                         ((1, 33, 17, 6), 2), ((2, 1, 6, 3), 4), ((1, 6, 1, 3), 4)])
def test_conv_forward_matches_direct(shape, cout, rng, conv_form):
    x = rng.standard_normal(shape)
    w = rng.standard_normal((3, 3, shape[3], cout))
    b = rng.standard_normal(cout)
    y, _ = conv_forward_cpu(x, w, b)
    assert_close(y, direct_conv(x, w, b), atol=1e-12, rtol=1e-12, what="conv forward")


def test_im2col_layout(rng):
    x = rng.standard_normal((1, 3, 4, 2))
    cols = im2col_cpu(x).reshape(1, 3, 4, 3, 3, 2)
    # centre tap is the pixel itself; top-left tap of pixel (0, 0) is padding
    assert np.array_equal(cols[:, :, :, 1, 1, :], x)
    assert np.all(cols[0, 0, 0, 0, 0] == 0)
    assert np.array_equal(cols[0, 2, 3, 0, 0], x[0, 1, 2])


# one-gemm: Cin <= Cout takes the col2im path (every VGG layer), Cin > Cout the
# im2col-of-dz path; rows: the row-shifted form for both
@pytest.mark.parametrize("shape, cout", [((1, 5, 7, 3), 5), ((2, 4, 3, 6), 5), ((1, 1, 9, 2), 5),
                                         ((1, 6, 5, 3), 16), ((1, 6, 5, 8), 3), ((1, 9, 1, 2), 3)])
def test_conv_backward_gradcheck(shape, cout, rng, conv_form):
    x = rng.standard_normal(shape)
    w = rng.standard_normal((3, 3, shape[3], cout))
    b = rng.standard_normal(cout) * 0.5
    y, cache = conv_forward_cpu(x, w, b)
    r = rng.standard_normal(y.shape)
    dx = conv_backward_cpu(r, cache)
    err = directional_check(lambda z: float(np.sum(conv_forward_cpu(z, w, b)[0] * r)), dx, x, rng)
    assert err < 1e-6, f"relative error {err:.3g}"


def test_conv_float32_keeps_dtype(rng, conv_form):
    x = rng.standard_normal((1, 5, 5, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    b = np.zeros(4, np.float32)
    y, cache = conv_forward_cpu(x, w, b)
    assert y.dtype == np.float32
    assert conv_backward_cpu(y, cache).dtype == np.float32


# block_bytes 1: one output row per block, so the block edges and (with 9 or
# more rows) the split over threads are crossed too
@pytest.mark.parametrize("shape, block_bytes", [((2, 5, 7, 3), 1 << 20), ((2, 5, 7, 3), 1),
                                                ((1, 12, 4, 2), 1), ((1, 1, 6, 2), 1)])
def test_col2im_is_the_adjoint_of_im2col(shape, block_bytes, rng):
    from cpstyle.ops.conv import col2im_cpu
    n, h, w, c = shape
    x = rng.standard_normal(shape)
    cols = rng.standard_normal((n * h * w, 9 * c))
    # <im2col(x), cols> == <x, col2im(cols)>, and against a padded scatter
    back = col2im_cpu(cols, (n, h, w), block_bytes=block_bytes)
    assert np.sum(im2col_cpu(x) * cols) == pytest.approx(np.sum(x * back), rel=1e-12)
    pad = np.zeros((n, h + 2, w + 2, c))
    taps = cols.reshape(n, h, w, 3, 3, c)
    for ky in range(3):
        for kx in range(3):
            pad[:, ky:ky + h, kx:kx + w] += taps[:, :, :, ky, kx]
    np.testing.assert_allclose(back, pad[:, 1:-1, 1:-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cin, cout", [(3, 5), (5, 5), (6, 2)])
def test_gemm_weights_give_the_same_conv(cin, cout, rng):
    """The model's contiguous GEMM operands (gemm_weights) change nothing but speed."""
    from cpstyle.ops.conv import conv_input_grad_cpu, gemm_weights
    x = rng.standard_normal((1, 6, 5, cin))
    w = rng.standard_normal((3, 3, cin, cout))
    b = rng.standard_normal(cout)
    fwd, bwd = gemm_weights(w)
    assert fwd.flags.c_contiguous and bwd.flags.c_contiguous
    y, _ = conv_forward_cpu(x, w, b, wmat=fwd)
    assert_close(y, conv_forward_cpu(x, w, b)[0], atol=1e-12, rtol=1e-12, what="forward with wmat")
    dz = rng.standard_normal(y.shape)
    assert_close(conv_input_grad_cpu(dz, w, wmat=bwd), conv_input_grad_cpu(dz, w),
                 atol=1e-12, rtol=1e-12, what="input grad with wmat")
    assert_close(y, direct_conv(x, w, b), atol=1e-12, rtol=1e-12, what="forward vs direct")


def test_unfold_kx_rows_any_range(rng):
    from cpstyle.ops.conv import unfold_kx_rows
    x = rng.standard_normal((2, 4, 3, 2))
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    whole = np.stack([pad[:, :, kx:kx + 3] for kx in range(3)], axis=3)  # (2, 6, 3, 3, 2)
    for r0 in range(6):
        for r1 in range(r0 + 1, 7):
            u = unfold_kx_rows(x, np.full((2, r1 - r0, 3, 3, 2), np.nan), r0, r1)
            assert np.array_equal(u, whole[:, r0:r1]), (r0, r1)


# block_bytes 1: a block per output row, so every block edge is crossed
@pytest.mark.parametrize("dtype, block_bytes", [(np.float32, None), (np.float64, None),
                                                (np.float32, 1)])
def test_rows_form_matches_one_gemm_on_vgg_sizes(dtype, block_bytes, rng, monkeypatch):
    """At the sizes the model uses it (uses_rows_form's defaults), the
    row-shifted form gives the one-GEMM result to rounding, forward and back,
    across the split over threads and the blocks within."""
    from cpstyle.ops import blas, conv, parallel
    if not blas.available(dtype):
        pytest.skip("NumPy's BLAS is not reachable here (ops/blas.py)")
    if block_bytes is not None:
        monkeypatch.setattr(parallel, "BLOCK_BYTES", block_bytes)
    x = rng.standard_normal((1, 64, 32, 16)).astype(dtype)
    w = (rng.standard_normal((3, 3, 16, 32)) * 0.1).astype(dtype)
    b = rng.standard_normal(32).astype(dtype)
    dz = rng.standard_normal((1, 64, 32, 32)).astype(dtype)
    assert conv.uses_rows_form(32, 64 * 32, dtype) and conv.uses_rows_form(16, 64 * 32, dtype)
    y, _ = conv.conv_forward_cpu(x, w, b)
    dx = conv.conv_input_grad_cpu(dz, w)
    monkeypatch.setattr(conv, "ROWS_FORM", False)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert_close(y, conv.conv_forward_cpu(x, w, b)[0], atol=tol, rtol=tol, what="forward")
    assert_close(dx, conv.conv_input_grad_cpu(dz, w), atol=tol, rtol=tol, what="input grad")


def test_conv_refuses_a_strided_out(rng, conv_form):
    """Both forms write y through a reshaped view of `out`: a strided one would
    leave the result in a copy, so it is refused."""
    from cpstyle.ops.conv import conv_input_grad_cpu
    x = rng.standard_normal((1, 4, 5, 3))
    w = rng.standard_normal((3, 3, 3, 4))
    with pytest.raises(ValueError, match="C-contiguous"):
        conv_forward_cpu(x, w, np.zeros(4), out=np.empty((1, 4, 5, 8))[..., ::2])
    with pytest.raises(ValueError, match="C-contiguous"):
        conv_input_grad_cpu(np.ones((1, 4, 5, 4)), w, out=np.empty((1, 4, 5, 6))[..., ::2])
