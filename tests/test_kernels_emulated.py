"""Every kernel in kernels/*.cu, run on the CPU under tests/emulation (DESIGN.md
§7.3), through the same `_gpu` wrappers the GPU runs (NumPy arrays route to the
emulator; launch shapes shrink to 32-thread blocks and 5 reduction blocks, so
odd sizes leave partial blocks and grid-stride loops go round). Outputs are
NaN-poisoned before each launch; the harness adds guard bands (out-of-bounds
writes), const checks and a bounds trap on __shared__ arrays.

Each test names the kernels it covers (@covers) and fails if it did not launch
them; test_every_kernel_has_an_emulated_test fails on any kernel not covered."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cpstyle import cuda
from cpstyle.ops.conv import (col2im_cpu, col2im_gpu, conv_backward_cpu, conv_backward_gpu,
                              conv_forward_cpu, conv_forward_gpu, flip_kernel, im2col_cpu,
                              im2col_gpu)
from cpstyle.ops.gram import (gram_backward_cpu, gram_backward_gpu, gram_forward_cpu,
                              gram_forward_gpu)
from cpstyle.ops.loss import (adj_weights_gpu, denoise_backward_accumulate_gpu,
                              denoise_backward_cpu, denoise_forward_cpu, denoise_sum_gpu,
                              mse_backward_cpu, mse_forward_cpu, mse_sum_gpu, scaled_diff_gpu)
from cpstyle.ops import conv, gram, optim
from cpstyle.ops.pool import (avgpool_backward_cpu, avgpool_backward_gpu, avgpool_forward_cpu,
                              avgpool_forward_gpu, maxpool_backward_cpu, maxpool_backward_gpu,
                              maxpool_forward_cpu, maxpool_forward_gpu)
from cpstyle.ops.preprocess import (preprocess_backward_cpu, preprocess_backward_gpu,
                                    preprocess_forward_cpu, preprocess_forward_gpu,
                                    preprocess_params)
from cpstyle.ops.update import make_update_work, update_cpu, update_gpu_inplace
from emulation.harness import Emulator, SourceKernel, all_kernels
from emulation.checks import assert_close, conv3x3_64, igemm_check as _igemm_check, igemm_operands as _igemm_operands

EPS32 = float(np.finfo(np.float32).eps)
SHAPES = [(1, 1, 1, 3), (1, 3, 7, 3), (2, 5, 4, 7), (1, 33, 3, 2)]
COVERED = {}  # kernel name -> names of the tests that launch it


def covers(*kernels):
    def deco(fn):
        for k in kernels:
            COVERED.setdefault(k, []).append(fn.__name__)
        fn.covers = kernels
        return fn
    return deco


@pytest.fixture(scope="module")
def emulator():
    return Emulator()


@pytest.fixture
def emu(emulator, request):
    """The emulator installed for one test; afterwards, the kernels named by
    @covers must have been launched."""
    emulator.launched.clear()
    with emulator.installed():
        yield emulator
    missing = set(getattr(request.function, "covers", ())) - set(emulator.launched)
    assert not missing, f"{request.node.name} claims to cover {sorted(missing)} but never launched them"


def nan_like(shape, dtype=np.float32):
    return np.full(shape, np.nan, dtype=dtype)


def test_every_kernel_has_an_emulated_test():
    kernels = set(all_kernels())
    untested = kernels - set(COVERED)
    assert not untested, f"kernels with no emulated test: {sorted(untested)}"
    stale = set(COVERED) - kernels
    assert not stale, f"tests claim kernels that kernels/*.cu no longer has: {sorted(stale)}"


# ---- preprocess -------------------------------------------------------------

@covers("preprocess_forward_kernel", "preprocess_backward_kernel")
@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (1, 7, 5, 3), (2, 3, 33, 3), (5, 3)])
@pytest.mark.parametrize("mode", ["torch", "caffe"])
def test_preprocess(emu, rng, shape, mode):
    scale, shift, bgr = preprocess_params(mode, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    s32, t32 = scale.astype(np.float32), shift.astype(np.float32)
    x = rng.uniform(0, 255, shape).astype(np.float32)
    y = preprocess_forward_gpu(x, s32, t32, bgr, out=nan_like(shape))
    # one rounding of x·scale and one of + shift (or one fused), on terms <= bound
    bound = 255 * np.abs(s32).max() + np.abs(t32).max()
    assert_close(y, preprocess_forward_cpu(x, s32, t32, bgr), atol=2 * EPS32 * bound, rtol=0,
                 what="preprocess forward")
    dy = rng.standard_normal(shape).astype(np.float32)
    dx = preprocess_backward_gpu(dy, s32, bgr, out=nan_like(shape))
    assert_close(dx, preprocess_backward_cpu(dy, s32, bgr), atol=0, rtol=EPS32,
                 what="preprocess backward")


# ---- conv ---------------------------------------------------------------------

@covers("im2col_kernel")
@pytest.mark.parametrize("shape", SHAPES)
def test_im2col(emu, rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    n, h, w, c = shape
    cols = im2col_gpu(x, out=nan_like((n * h * w, 9 * c)))
    assert_close(cols, im2col_cpu(x), atol=0, rtol=0, what="im2col")  # a pure copy


def _conv_case(rng, shape, cout):
    n, h, w, cin = shape
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    wt = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    return x, wt, b


@covers("im2col_kernel", "bias_relu_kernel")
@pytest.mark.parametrize("shape,cout", [((1, 1, 1, 3), 1), ((1, 3, 7, 3), 5), ((2, 5, 4, 7), 3),
                                        ((1, 33, 3, 2), 7)])
def test_conv_forward(emu, rng, shape, cout):
    x, wt, b = _conv_case(rng, shape, cout)
    n, h, w, cin = shape
    y, cache = conv_forward_gpu(x, wt, b, out=nan_like((n, h, w, cout)),
                                cols=nan_like(n * h * w * 9 * cin + 5))  # work buffer, larger
    yr, _ = conv_forward_cpu(x, wt, b)
    # fp32 GEMM over K = 9·Cin terms of size <= |x||w|: K·eps·Σ|terms| bound
    k = 9 * cin
    assert_close(y, yr, atol=k * EPS32 * (np.abs(wt).max() * k + np.abs(b).max()), rtol=1e-6,
                 what="conv forward")
    assert cache[0] is wt and cache[1] is y


@covers("col2im_kernel")
@pytest.mark.parametrize("shape", SHAPES)
def test_col2im(emu, rng, shape):
    n, h, w, c = shape
    p = rng.standard_normal((n * h * w, 9 * c)).astype(np.float32)
    out = col2im_gpu(p, (n, h, w), out=nan_like(shape))
    assert_close(out, col2im_cpu(p, (n, h, w)), atol=0, rtol=0, what="col2im")  # same sums, same order


# the col2im form of the forward (off by default on a GPU until timed there)
@covers("col2im_bias_relu_kernel")
@pytest.mark.parametrize("shape,cout", [((1, 1, 1, 3), 3), ((1, 3, 7, 5), 2), ((2, 5, 4, 7), 7),
                                        ((1, 33, 3, 4), 1)])
@pytest.mark.parametrize("give_wflip", [True, False])
def test_conv_forward_col2im_form(emu, rng, monkeypatch, shape, cout, give_wflip):
    monkeypatch.setattr(conv, "gpu_forward_uses_col2im", lambda cin, cout: True)
    x, wt, b = _conv_case(rng, shape, cout)
    n, h, w, cin = shape
    y, cache = conv_forward_gpu(x, wt, b, out=nan_like((n, h, w, cout)),
                                cols=nan_like(n * h * w * 9 * cout + 5),
                                wflip=flip_kernel(wt) if give_wflip else None)
    yr, _ = conv_forward_cpu(x, wt, b)  # Cout <= Cin: the same form on the CPU
    k = 9 * cin
    assert_close(y, yr, atol=k * EPS32 * (np.abs(wt).max() * k + np.abs(b).max()), rtol=1e-6,
                 what="conv forward, col2im form")
    assert cache[1] is y


@covers("relu_backward_kernel", "im2col_kernel")
@pytest.mark.parametrize("shape,cout", [((1, 1, 1, 3), 1), ((1, 3, 7, 3), 5), ((2, 5, 4, 7), 3),
                                        ((1, 33, 3, 2), 7)])
@pytest.mark.parametrize("give_wflip", [True, False])
def test_conv_backward(emu, rng, shape, cout, give_wflip):
    _conv_backward_case(rng, shape, cout, give_wflip)


# Cout >= 4·Cin (conv1_1's shape): dz·Wᵀ and col2im_kernel
@covers("relu_backward_kernel", "col2im_kernel")
@pytest.mark.parametrize("shape,cout", [((1, 3, 7, 3), 16), ((1, 33, 3, 2), 8), ((2, 5, 4, 1), 4)])
def test_conv_backward_col2im_form(emu, rng, shape, cout):
    assert conv.gpu_backward_uses_col2im(shape[3], cout)
    _conv_backward_case(rng, shape, cout, False)


def _conv_backward_case(rng, shape, cout, give_wflip):
    x, wt, b = _conv_case(rng, shape, cout)
    n, h, w, cin = shape
    _, cache = conv_forward_cpu(x, wt, b)
    assert (cache[1] == 0).any() or cache[1].size < 8  # the ReLU mask matters
    dout = rng.standard_normal((n, h, w, cout)).astype(np.float32)
    wflip = flip_kernel(wt) if give_wflip else None
    dx = conv_backward_gpu(dout, cache, wflip, out=nan_like(shape),
                           cols=nan_like((n * h * w + 1, 9 * cout)), dz=nan_like(dout.size + 3))
    k = 9 * cout
    assert_close(dx, conv_backward_cpu(dout, cache), atol=k * EPS32 * np.abs(wt).max() * 4 * k,
                 rtol=1e-6, what="conv backward")


@covers("bias_relu_kernel", "im2col_kernel")
def test_conv_matches_direct_sum(emu, rng):
    """Independent of im2col_cpu: a direct 3x3 sum in float64."""
    x, wt, b = _conv_case(rng, (1, 7, 5, 3), 4)
    y, _ = conv_forward_gpu(x, wt, b)
    xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = np.zeros((1, 7, 5, 4)) + b
    for ky in range(3):
        for kx in range(3):
            ref += np.einsum("nhwc,cd->nhwd", xp[:, ky:ky + 7, kx:kx + 5], wt[ky, kx])
    assert_close(y, np.maximum(ref, 0), atol=1e-5, rtol=1e-5, what="conv vs direct sum")


# ---- pool ---------------------------------------------------------------------

POOL_SHAPES = [(1, 1, 1, 1), (1, 2, 2, 1), (1, 3, 7, 3), (2, 5, 4, 7), (1, 33, 9, 2), (1, 9, 1, 2)]


@covers("maxpool_forward_kernel", "maxpool_backward_kernel")
@pytest.mark.parametrize("shape", POOL_SHAPES)
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool(emu, rng, shape, ties):
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(np.float32)
    n, h, w, c = shape
    oshape = (n, h // 2, w // 2, c)
    y, (arg, s) = maxpool_forward_gpu(x, out=nan_like(oshape),
                                      argmax=np.full(oshape, 0xFF, np.uint8))
    yr, (argr, sr) = maxpool_forward_cpu(x)
    assert s == sr
    assert_close(y, yr, atol=0, rtol=0, what="maxpool y")
    assert_close(arg, argr, atol=0, rtol=0, what="maxpool argmax (first max, row-major)")
    dy = rng.standard_normal(oshape).astype(np.float32)
    dx = maxpool_backward_gpu(dy, (argr, sr), out=nan_like(shape))
    assert_close(dx, maxpool_backward_cpu(dy, (argr, sr)), atol=0, rtol=0, what="maxpool dx")


@covers("avgpool_forward_kernel", "avgpool_backward_kernel")
@pytest.mark.parametrize("shape", POOL_SHAPES)
def test_avgpool(emu, rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    n, h, w, c = shape
    oshape = (n, h // 2, w // 2, c)
    y, s = avgpool_forward_gpu(x, out=nan_like(oshape))
    yr, sr = avgpool_forward_cpu(x)
    assert s == sr == shape
    # the same four float32 adds in the same order and an exact ·0.25
    assert_close(y, yr, atol=0, rtol=0, what="avgpool y")
    dy = rng.standard_normal(oshape).astype(np.float32)
    dx = avgpool_backward_gpu(dy, s, out=nan_like(shape))
    assert_close(dx, avgpool_backward_cpu(dy, sr), atol=0, rtol=0, what="avgpool dx")


# ---- losses -------------------------------------------------------------------

SIZES = [(1,), (7,), (3, 33, 5), (1, 33, 17, 3)]  # 1 .. 1683 elements: 1 to 5 blocks


@covers("sqdiff_partial_kernel", "sum_partials_kernel")
@pytest.mark.parametrize("shape", SIZES)
def test_mse_sum(emu, rng, shape):
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    slots = nan_like(3)
    mse_sum_gpu(a, b, slots[1:2], 1.0 / a.size, partial=nan_like(7, np.float64))
    # reference: float32 pairwise mean; ours sums in double
    assert_close(slots[1], mse_forward_cpu(a, b), atol=0, rtol=1e-5, what="mse")
    assert np.isnan(slots[0]) and np.isnan(slots[2]), "wrote outside its slot"
    ref64 = np.sum((a.astype(np.float64) - b) ** 2)
    mse_sum_gpu(a, b, slots[1:2], 0.5, accumulate=True)
    assert_close(slots[1], mse_forward_cpu(a, b) + 0.5 * ref64, atol=0, rtol=1e-5,
                 what="mse accumulate")


@covers("tv_partial_kernel", "sum_partials_kernel")
@pytest.mark.parametrize("shape", SHAPES + [(1, 9, 1, 2), (1, 1, 9, 2)])
def test_denoise_sum(emu, rng, shape):
    x = rng.uniform(0, 255, shape).astype(np.float32)
    out = nan_like(1)
    denoise_sum_gpu(x, out, scale=0.25, partial=None)
    assert_close(out[0], 0.25 * denoise_forward_cpu(x), atol=1e-6, rtol=1e-5, what="TV")
    out[0] = 3.0
    denoise_sum_gpu(x, out, accumulate=True)
    assert_close(out[0], 3.0 + denoise_forward_cpu(x), atol=1e-6, rtol=1e-5, what="TV accumulate")


@covers("adj_weights_kernel")
@pytest.mark.parametrize("n", [1, 3, 37])
def test_adj_weights(emu, rng, n):
    losses = rng.uniform(0, 1e6, n).astype(np.float32)
    losses[0] = 0.0  # adj = 1e10
    weights = rng.uniform(0, 10, n).astype(np.float32)
    adj, coef = adj_weights_gpu(losses, weights, adj=nan_like(n), coef=nan_like(n))
    adj_ref = np.float32(1.0) / (losses + np.float32(1e-10))  # DESIGN.md §5, as objective.py
    assert_close(adj, adj_ref, atol=0, rtol=2 * EPS32, what="adj")
    assert_close(coef, weights * adj_ref, atol=0, rtol=3 * EPS32, what="coef")


@covers("scaled_diff_kernel")
@pytest.mark.parametrize("shape", [(1,), (7,), (1, 33, 33), (1, 3, 7, 5)])
def test_scaled_diff(emu, rng, shape):
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    coef = np.array([np.nan, 0.37, np.nan], np.float32)
    out = scaled_diff_gpu(a, b, coef[1:2], 2.0 / a.size, out=nan_like(shape))
    # = mse_backward_cpu(a, b, dout=coef): same product, (k·coef) rounded once more
    assert_close(out, mse_backward_cpu(a, b, coef[1]), atol=0, rtol=4 * EPS32, what="scaled diff")
    dh = rng.standard_normal(shape).astype(np.float32)
    acc = scaled_diff_gpu(a, b, coef[1:2], 2.0 / a.size, out=dh.copy(), accumulate=True)
    assert_close(acc, dh + out, atol=0, rtol=0, what="dh + scaled diff")


@covers("tv_grad_accumulate_kernel")
@pytest.mark.parametrize("shape", SHAPES + [(1, 9, 1, 2), (1, 1, 9, 2)])
def test_denoise_backward_accumulate(emu, rng, shape):
    x = rng.integers(0, 3, shape).astype(np.float32)  # many equal neighbours: sign(0) = 0
    g0 = rng.standard_normal(shape).astype(np.float32)
    coef = np.array([0.3], np.float32)
    g = denoise_backward_accumulate_gpu(g0.copy(), x, coef)
    ref = g0 + denoise_backward_cpu(x, coef[0])
    assert_close(g, ref, atol=4 * EPS32 * (np.abs(g0).max() + 4 * 0.3), rtol=0,
                 what="TV gradient accumulate")


# ---- update -------------------------------------------------------------------

@covers("sum_partial_kernel", "centered_sqsum_partial_kernel", "reduce_partials_kernel",
        "update_kernel")
@pytest.mark.parametrize("shape", [(1,), (7,), (1, 7, 5, 3), (1, 33, 17, 3)])
def test_update(emu, rng, shape):
    x = rng.uniform(0, 255, shape).astype(np.float32)
    g = (rng.standard_normal(shape) * 5 + 2).astype(np.float32)  # mean != 0; some steps clip
    work = make_update_work(x.size, np)
    work.partial[...] = np.nan
    out = update_gpu_inplace(x.copy(), g, 10.0, work=work)
    ref = update_cpu(x, g, 10.0)
    # the reference's float32 std is good to ~1e-6 relative; steps are <= ~10·|g|/std
    step = 10.0 * np.abs(g).max() / (np.std(g.astype(np.float64)) + 1e-8)
    assert_close(out, ref, atol=min(step, 255) * 1e-5 + 255 * EPS32, rtol=0, what="update")
    again = update_gpu_inplace(x.copy(), g, 10.0, work=work)
    assert np.array_equal(out, again), "update is not deterministic"


# ---- optimisers (kernels/optim.cu) --------------------------------------------------

OPT_SHAPES = [(1,), (7,), (1, 7, 5, 3), (1, 33, 17, 3)]  # 1 .. 1683 elements


@covers("adam_kernel", "adam_count_kernel")
@pytest.mark.parametrize("shape", OPT_SHAPES)
def test_adam(emu, rng, shape):
    """t counted on the device: steps 1..7 on one corr buffer, the same x, m, v,
    g each time, against the reference at that t."""
    x = rng.uniform(0, 255, shape).astype(np.float32)
    m = rng.standard_normal(shape).astype(np.float32)
    v = rng.uniform(0, 2, shape).astype(np.float32)
    g = (rng.standard_normal(shape) * 3).astype(np.float32)
    corr = np.zeros(3)
    for t in range(1, 8):
        optim.adam_count_gpu(corr)
        assert corr[0] == t and corr[1] == 1 / (1 - 0.9 ** t) and corr[2] == 1 / (1 - 0.999 ** t)
        if t not in (1, 7):
            continue
        xr, mr, vr = optim.adam_update_cpu(x, m, v, g, 10.0, t)
        xe, me, ve = x.copy(), m.copy(), v.copy()
        optim.adam_update_gpu_inplace(xe, me, ve, g, 10.0, corr)
        # β1·m + (1−β1)·g may cancel: the error is ulps of the terms, not of m
        assert_close(me, mr, atol=2 * EPS32 * (np.abs(m).max() + np.abs(g).max()), rtol=0,
                     what=f"adam m, t={t}")
        assert_close(ve, vr, atol=1e-30, rtol=4 * EPS32, what=f"adam v, t={t}")
        # the step is <= lr·c1/sqrt(c2)·|m|/sqrt(v)-ish: a few ulps of ~10 px
        assert_close(xe, xr, atol=1e-4, rtol=0, what=f"adam x, t={t}")
    assert (xe == 0).any() or (xe == 255).any() or x.size < 10  # the clip is exercised


@covers("dot_partial_kernel", "reduce_partials_kernel")
@pytest.mark.parametrize("shape", OPT_SHAPES)
def test_dot(emu, rng, shape):
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    out = np.full(3, np.nan)
    optim.dot_gpu(a, b, out[1:2], partial=np.full(7, np.nan))
    assert_close(out[1], optim.dot64(a, b), atol=1e-12, rtol=1e-12, what="dot")
    assert np.isnan(out[0]) and np.isnan(out[2]), "wrote outside its slot"
    optim.dot_gpu(a, a, out[0:1])  # the same array twice: y·y
    assert_close(out[0], optim.dot64(a, a), atol=1e-12, rtol=1e-12, what="dot a·a")
    # ring positions: slot (head + j) % m of a 3-ring, head 2
    S = rng.standard_normal((3,) + shape).astype(np.float32)
    ring = np.array([5, 2], np.int32)
    for ja, jb in ((0, -1), (2, -1), (1, 1)):
        optim.dot_gpu(S, b if jb < 0 else S, out[2:3], ring=ring, ja=ja, jb=jb)
        sa = S[(2 + ja) % 3]
        want = optim.dot64(sa, b if jb < 0 else S[(2 + jb) % 3])
        assert_close(out[2], want, atol=1e-12, rtol=1e-12, what=f"ring dot {ja}, {jb}")


@covers("lbfgs_diff_kernel", "lbfgs_pair_kernel", "lbfgs_init_kernel", "lbfgs_advance_kernel")
def test_lbfgs_ring_pair_and_init(emu, rng):
    """The ring's state on the device: the first step sets gamma and stores no
    pair; later steps store the pair in the slot after the last, around the ring."""
    shape, m = (1, 7, 5, 3), 3
    S, Y = np.zeros((m,) + shape, np.float32), np.zeros((m,) + shape, np.float32)
    ring = np.zeros(2, np.int32)
    xp_, gp, q = (nan_like(shape) for _ in range(3))
    sc = np.full(4, np.nan)  # gamma, sy, yy, sqsum
    rho = np.full(m, 7.0)
    sc[3] = 100.0
    for step in range(1, 6):
        x, g = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
        oldx, oldg = xp_.copy(), gp.copy()
        optim.lbfgs_advance_gpu(ring, m)
        assert list(ring) == [step, (step - 1) % m if step > 1 else 0], (step, ring)
        sc[0] = 0.5
        optim.lbfgs_init_gpu(sc[0:1], sc[3:4], 10.0, 25, ring)
        assert sc[0] == (pytest.approx(10.0 / (2.0 + 1e-8), rel=1e-15) if step == 1 else 0.5)
        before = S.copy()
        optim.lbfgs_diff_gpu(S, Y, xp_, gp, q, x, g, ring)
        assert np.array_equal(xp_, x) and np.array_equal(gp, g) and np.array_equal(q, g)
        k = (ring[1] + m - 1) % m
        if step == 1:
            assert np.array_equal(S, before), "the first step stored a pair"
            continue
        assert_close(S[k], x - oldx, atol=0, rtol=0, what="s")
        assert_close(Y[k], g - oldg, atol=0, rtol=0, what="y")
        others = [i for i in range(m) if i != k]
        assert np.array_equal(S[others], before[others])
        for sy, yy in ((3.0, 4.0), (1e-11, 2.0), (-5.0, 1.0), (np.nan, 1.0)):
            sc[:3] = [0.5, sy, yy]
            rho[:] = 7.0
            optim.lbfgs_pair_gpu(rho, sc[0:1], sc[1:2], sc[2:3], ring)
            assert (rho[others] == 7.0).all()
            if sy > optim.CURVATURE_EPS:
                assert rho[k] == 1 / sy and sc[0] == sy / yy
            else:
                assert rho[k] == 0.0 and sc[0] == 0.5, (sy, sc)  # rejected: gamma kept
    ring[:] = [1, 0]
    rho[:] = 7.0
    optim.lbfgs_pair_gpu(rho, sc[0:1], sc[1:2], sc[2:3], ring)
    assert (rho == 7.0).all(), "a pair on the first step"


@covers("lbfgs_first_loop_kernel", "lbfgs_scale_kernel", "lbfgs_second_loop_kernel",
        "dot_partial_kernel", "reduce_partials_kernel")
@pytest.mark.parametrize("shape,npairs,m,head", [((1, 7, 5, 3), 1, 3, 1), ((1, 33, 17, 3), 3, 3, 2),
                                                 ((1, 7, 5, 3), 2, 4, 2)])
def test_lbfgs_two_loop(emu, rng, shape, npairs, m, head):
    """The two loops over every ring position, as cpstyle/optimizers.py runs
    them, against lbfgs_direction_cpu; one pair has rho = 0 (rejected); slots
    not written (zeros, rho 0) add nothing."""
    g = rng.standard_normal(shape).astype(np.float32)
    pairs = []
    for k in range(npairs):
        s = rng.standard_normal(shape).astype(np.float32)
        y = (s * rng.uniform(0.5, 2, shape) + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        rho = 0.0 if k == 1 else 1.0 / optim.dot64(s, y)
        pairs.append((s, y, rho))
    gamma = 0.7
    ref = optim.lbfgs_direction_cpu(g, pairs, gamma)
    S, Y = np.zeros((m,) + shape, np.float32), np.zeros((m,) + shape, np.float32)
    rho, alpha = np.zeros(m), np.full(m, np.nan)
    ring = np.array([9, head], np.int32)
    for j, (s, y, r) in zip(range(m - npairs, m), pairs):  # the newest positions
        k = (head + j) % m
        S[k], Y[k], rho[k] = s, y, r
    sc = np.array([gamma, np.nan])  # gamma, dot
    q = g.copy()
    for j in reversed(range(m)):
        optim.dot_gpu(S, q, sc[1:], ring=ring, ja=j)
        optim.lbfgs_first_loop_gpu(q, alpha, Y, rho, sc[1:], ring, j)
    optim.lbfgs_scale_gpu(q, sc[:1])
    for j in range(m):
        optim.dot_gpu(Y, q, sc[1:], ring=ring, ja=j)
        optim.lbfgs_second_loop_gpu(q, S, rho, alpha, sc[1:], ring, j)
    scale = np.abs(ref).max()
    assert_close(q / scale, ref / scale, atol=1e-5, rtol=0, what="two-loop direction")


@covers("lbfgs_scale_kernel")
def test_lbfgs_no_pairs_is_gamma_times_g(emu, rng):
    g = rng.standard_normal((1, 7, 5, 3)).astype(np.float32)
    gamma = np.array([np.nan, 0.3])
    q = g.copy()
    optim.lbfgs_scale_gpu(q, gamma[1:])
    assert_close(q, optim.lbfgs_direction_cpu(g, [], 0.3), atol=0, rtol=0, what="gamma·g")


@covers("descend_clip_kernel")
@pytest.mark.parametrize("shape", OPT_SHAPES)
def test_descend_clip(emu, rng, shape):
    x = rng.uniform(0, 255, shape).astype(np.float32)
    d = (rng.standard_normal(shape) * 100).astype(np.float32)
    out = optim.descend_clip_gpu_inplace(x.copy(), d)
    assert_close(out, optim.descend_clip_cpu(x, d), atol=0, rtol=0, what="descend + clip")


# ---- gram (kernels/gram.cu) ------------------------------------------------------
# Emulated tiles are 8 wide (2x2 micro-tiles, 4 staged rows): C of 1, 7, 8, 9, 17 and
# HW of 1 .. 37 put every tile edge, partial tiles and partial staging steps in play.

GRAM_SHAPES = [((1, 1, 1, 1), 1.0), ((1, 3, 7, 5), 1.0), ((2, 5, 4, 8), 0.5),
               ((1, 33, 1, 9), 1 / 99), ((1, 4, 9, 17), 1.0), ((1, 2, 3, 16), 2.0)]


def gram_ref64(f3):
    return np.einsum("npi,npj->nij", f3.astype(np.float64), f3.astype(np.float64))


@covers("gram_partial_kernel", "gram_reduce_kernel")
@pytest.mark.parametrize("blocks", [1, 6, 1000], ids=["one slice", "some", "most"])
@pytest.mark.parametrize("shape,norm", GRAM_SHAPES, ids=str)
def test_gram_forward(emu, rng, shape, norm, blocks):
    """G = norm·FᵀF against float64, for one slice of the HW sum, a few and as
    many as the rows allow; exactly symmetric; the work buffer's slices only."""
    cuda.config["gram_blocks"] = blocks  # the emu fixture restores the config
    n, h, w, c = shape
    x = rng.standard_normal(shape).astype(np.float32)
    splits = gram.gram_splits(h * w, c)
    if blocks == 1:
        assert splits == 1
    work = nan_like(gram.gram_work_size(h * w, c) + 5)
    g, cache = gram_forward_gpu(x, norm, out=nan_like((n, c, c)), work=work)
    ref = gram_ref64(x.reshape(n, h * w, c)) * norm
    bound = 2 * h * w * EPS32 * np.abs(x).max() ** 2 * norm
    assert_close(g, ref, atol=bound, rtol=EPS32, what=f"gram forward ({splits} slices)")
    assert np.array_equal(g, g.transpose(0, 2, 1)), "G not exactly symmetric"
    assert np.isnan(work[splits * c * c:]).all(), "wrote past its slices"
    gr, _ = gram_forward_cpu(x, norm)
    assert_close(g, gr, atol=bound, rtol=4 * EPS32, what="gram forward vs gram_forward_cpu")
    assert cache[0].shape == (n, h * w, c) and cache[2] == norm


@covers("gram_backward_kernel")
@pytest.mark.parametrize("hw,c", [(1, 1), (7, 7), (8, 8), (9, 9), (33, 17), (16, 3), (37, 16)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gram_backward_accumulate(emu, rng, hw, c, accumulate):
    f = rng.standard_normal((hw, c)).astype(np.float32)
    dg = rng.standard_normal((c, c)).astype(np.float32)
    dh0 = rng.standard_normal((hw, c)).astype(np.float32)
    dh = dh0.copy() if accumulate else nan_like((hw, c))
    gram.gram_backward_accumulate_gpu(dh, f, dg, accumulate)
    ref = f.astype(np.float64) @ dg.astype(np.float64) + (dh0 if accumulate else 0)
    bound = 2 * c * EPS32 * np.abs(f).max() * np.abs(dg).max() + (4 * EPS32 if accumulate else 0)
    assert_close(dh, ref, atol=bound, rtol=2 * EPS32, what=f"F·dG (accumulate={accumulate})")


@covers("gram_partial_kernel", "gram_reduce_kernel", "gram_backward_kernel")
@pytest.mark.parametrize("shape,norm", [((1, 3, 7, 5), 1.0), ((2, 33, 3, 9), 1 / 99)])
def test_gram_wrappers(emu, rng, shape, norm):
    """The dispatchers' GPU functions (made buffers) against the reference."""
    x = rng.standard_normal(shape).astype(np.float32)
    n, h, w, c = shape
    g, cache = gram_forward_gpu(x, norm)
    gr, cache_r = gram_forward_cpu(x, norm)
    assert_close(g, gr, atol=1e-5, rtol=1e-5, what="gram forward")
    dg = rng.standard_normal((n, c, c)).astype(np.float32)
    dx = gram_backward_gpu(dg, cache, out=nan_like(shape), sym=nan_like((n, c, c)))
    assert_close(dx, gram_backward_cpu(dg, cache_r), atol=1e-5, rtol=1e-5, what="gram backward")


# ---- the loader's checks ------------------------------------------------------

@covers("relu_backward_kernel")
def test_launch_checks_arguments(emu):
    k = cuda.get_kernel("conv", "relu_backward_kernel")
    a = np.zeros(8, np.float32)
    cuda.launch(k, 1, 32, (a, a.copy(), a.copy(), cuda.i32(8)))
    with pytest.raises(TypeError, match="needs float32"):
        cuda.launch(k, 1, 32, (a, a.astype(np.float64), a, cuda.i32(8)))
    with pytest.raises(ValueError, match="not C-contiguous"):
        cuda.launch(k, 1, 32, (a, np.zeros(16, np.float32)[::2], a, cuda.i32(8)))
    with pytest.raises(TypeError, match="int32"):
        cuda.launch(k, 1, 32, (a, a, a, 8))
    with pytest.raises(TypeError, match="3 arguments for 4"):
        cuda.launch(k, 1, 32, (a, a, a))
    with pytest.raises(OverflowError):
        cuda.i32(2**31)
    cuda.set_emulator(None)
    with pytest.raises(TypeError, match="NumPy arrays given to a GPU kernel"):
        cuda.launch(k, 1, 32, (a, a.copy(), a.copy(), cuda.i32(8)))


def test_out_buffers_are_checked(emu):
    x = np.zeros((1, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        maxpool_forward_gpu(x, out=np.zeros((1, 2, 2, 4), np.float32))
    with pytest.raises(ValueError, match="at least"):
        conv_forward_gpu(x, np.zeros((3, 3, 3, 2), np.float32), np.zeros(2, np.float32),
                         cols=np.zeros(10, np.float32))


# ---- the harness catches what it claims to (no net that cannot fail) -----------

BUGGY = r"""
#include "common.cuh"
extern "C" __global__ void overrun_kernel(float* y, int n) {
    long long i = global_index();
    if (i <= n) y[i] = 1.0f;                     // one past the end
}
extern "C" __global__ void const_write_kernel(float* y, const float* x, int n) {
    long long i = global_index();
    if (i < n) { y[i] = x[i]; ((float*)x)[i] = 0.0f; }
}
extern "C" __global__ void early_return_kernel(double* out, int n) {
    if ((int)threadIdx.x >= n) return;           // threads leave before the barrier
    double s = block_sum(1.0);
    if (threadIdx.x == 0) out[0] = s;
}
"""


def _buggy(name):
    return SourceKernel(cuda.kernel_source_text(BUGGY, {"REDUCE_THREADS": 32}), name)


def test_harness_catches_out_of_bounds_write(emulator):
    y = np.zeros(33, np.float32)
    with pytest.raises(AssertionError, match="out-of-bounds write"):
        emulator.launch(_buggy("overrun_kernel"), 2, 32, (y, cuda.i32(33)))


def test_harness_catches_write_through_const(emulator):
    y, x = np.zeros(5, np.float32), np.ones(5, np.float32)
    with pytest.raises(AssertionError, match="wrote to const"):
        emulator.launch(_buggy("const_write_kernel"), 1, 32, (y, x, cuda.i32(5)))


def test_harness_catches_syncthreads_after_return(emulator):
    out = np.zeros(1)
    emulator.launch(_buggy("early_return_kernel"), 1, 32, (out, cuda.i32(32)))
    assert out[0] == 32.0  # block_sum over 32 threads, all present
    with pytest.raises(RuntimeError, match="after a thread"):
        emulator.launch(_buggy("early_return_kernel"), 1, 32, (out, cuda.i32(7)))


def test_harness_traps_shared_overrun():
    """A __shared__ array indexed past its end traps (-fsanitize=bounds); in a
    child process, since the trap ends the process."""
    script = textwrap.dedent(r'''
        import numpy as np, sys
        sys.path.insert(0, sys.argv[1])
        from cpstyle import cuda
        from emulation.harness import Emulator, SourceKernel
        src = r"""
        extern "C" __global__ void shared_overrun_kernel(float* y, int n) {
            __shared__ float s[32];
            s[threadIdx.x + n] = 1.0f;
            __syncthreads();
            y[threadIdx.x] = s[threadIdx.x];
        }"""
        y = np.zeros(32, np.float32)
        Emulator().launch(SourceKernel(src, "shared_overrun_kernel"), 1, 32, (y, cuda.i32(int(sys.argv[2]))))
        print("survived")
    ''')
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    run = dict(capture_output=True, text=True, cwd=os.path.dirname(tests_dir))
    ok = subprocess.run([sys.executable, "-c", script, tests_dir, "0"], **run)
    assert ok.returncode == 0 and "survived" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-c", script, tests_dir, "1"], **run)
    assert bad.returncode != 0 and "survived" not in bad.stdout


# ---- conv, implicit GEMM on tensor cores (kernels/conv_igemm.cu) -------------------
# The kernels run under the warp/mma emulation (cuda_emu.h). Two checks per case:
# tight, against a float64 conv of the operands rounded as the kernel rounds them
# (TF32 by cvt.rna, BF16 to nearest even): what is left is fp32 accumulation, one
# rounding per mma at most, so a wrong fragment layout or tile index fails by far;
# and the precision's stated bound against the exact fp32 conv (conv_igemm.ERROR_BOUND).

from cpstyle.ops import conv_igemm  # noqa: E402

# (BM, BN, BK, WARPS_M, WARPS_N): one warp with one 16x8 fragment per K step; two warps
# with two fragments each; and the default tiles the GPU starts from.
IG_TILES = {"tiny": (16, 8, 16, 1, 1), "small": (32, 16, 16, 2, 1), "default": conv_igemm.DEFAULT_TILES}
# (N, H, W, Cin) -> Cout: Cin 3 (scalar A loads, K = 27 < 2 stages), Cin % 4 == 0 (float4
# loads), K = 144 (9 stages); M, Cout never a multiple of the tiles; Cout 3 as conv1_1's backward.
IG_SHAPES = [((1, 5, 7, 3), 5), ((2, 3, 5, 8), 12), ((1, 9, 6, 16), 20), ((1, 4, 5, 12), 3)]


@covers("conv_igemm_forward_kernel")
@pytest.mark.parametrize("precision", list(conv_igemm.PRECISIONS))
@pytest.mark.parametrize("tiles", ["tiny", "small"])
@pytest.mark.parametrize("shape,cout", IG_SHAPES)
def test_conv_igemm_forward(emu, rng, shape, cout, tiles, precision):
    x, wt, b = _igemm_operands(rng, shape, cout)
    n, h, w, _ = shape
    y, cache = conv_igemm.conv_forward_igemm(x, wt, b, out=nan_like((n, h, w, cout)),
                                             precision=precision, tiles=IG_TILES[tiles])
    assert cache[0] is wt and cache[1] is y
    _igemm_check(y, x, wt, b, precision, f"igemm forward {precision} {tiles}")


@covers("conv_igemm_backward_kernel")
@pytest.mark.parametrize("precision", list(conv_igemm.PRECISIONS))
@pytest.mark.parametrize("tiles", ["tiny", "small"])
@pytest.mark.parametrize("shape,cout", IG_SHAPES)
def test_conv_igemm_backward(emu, rng, shape, cout, tiles, precision):
    x, wt, b = _igemm_operands(rng, shape, cout)
    n, h, w, cin = shape
    _, cache = conv_forward_cpu(x, wt, b)
    assert (cache[1] == 0).any() and (cache[1] > 0).any()  # the ReLU mask matters
    dout = rng.standard_normal((n, h, w, cout)).astype(np.float32)
    dx = conv_igemm.conv_backward_igemm(dout, cache, flip_kernel(wt), out=nan_like(shape),
                                        precision=precision, tiles=IG_TILES[tiles])
    dz = dout * (cache[1] > 0)
    _igemm_check(dx, dz, flip_kernel(wt), None, precision, f"igemm backward {precision} {tiles}")
    # and the reference backward itself, within the same bound
    ref = conv_backward_cpu(dout, cache)
    assert np.abs(dx - ref).max() <= conv_igemm.ERROR_BOUND[precision] * \
        conv3x3_64(np.abs(dz), np.abs(flip_kernel(wt))).max() + 1e-5


@covers("conv_igemm_forward_kernel", "conv_igemm_backward_kernel")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_conv_igemm_default_tiles(emu, rng, precision):
    """The tiles the GPU runs by default: a 128x64 block over 12x11 pixels and 72
    channels (two column tiles, the second mostly empty)."""
    x, wt, b = _igemm_operands(rng, (1, 12, 11, 8), 72)
    y, cache = conv_igemm.conv_forward_igemm(x, wt, b, out=nan_like((1, 12, 11, 72)),
                                             precision=precision)
    _igemm_check(y, x, wt, b, precision, f"igemm forward {precision} default tiles")
    dout = rng.standard_normal(y.shape).astype(np.float32)
    dx = conv_igemm.conv_backward_igemm(dout, cache, flip_kernel(wt), out=nan_like(x.shape),
                                        precision=precision)
    _igemm_check(dx, dout * (y > 0), flip_kernel(wt), None, precision,
                 f"igemm backward {precision} default tiles")


# split-K: SPLITS blocks per output tile, each a share of the K stages, then the sum
# (with bias + ReLU forward). K = 27 in 2 stages over 3 splits leaves one split empty.
@covers("conv_igemm_forward_splitk_kernel", "conv_igemm_backward_splitk_kernel",
        "splitk_sum_kernel", "splitk_sum_bias_relu_kernel")
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("tiles", [(16, 8, 16, 1, 1, 3), (32, 16, 16, 2, 1, 2)], ids=str)
@pytest.mark.parametrize("shape,cout", [((1, 5, 7, 3), 5), ((1, 9, 6, 16), 20)])
def test_conv_igemm_splitk(emu, rng, shape, cout, tiles, precision):
    x, wt, b = _igemm_operands(rng, shape, cout)
    n, h, w, cin = shape
    work = nan_like(conv_igemm.splitk_work_size(tiles, cout, n * h * w) + 3)
    y, cache = conv_igemm.conv_forward_igemm(x, wt, b, out=nan_like((n, h, w, cout)),
                                             precision=precision, tiles=tiles, work=work)
    _igemm_check(y, x, wt, b, precision, f"igemm split-K forward {precision} {tiles}")
    dout = rng.standard_normal(y.shape).astype(np.float32)
    work = nan_like(conv_igemm.splitk_work_size(tiles, cin, n * h * w))
    dx = conv_igemm.conv_backward_igemm(dout, cache, flip_kernel(wt), out=nan_like(shape),
                                        precision=precision, tiles=tiles, work=work)
    _igemm_check(dx, dout * (y > 0), flip_kernel(wt), None, precision,
                 f"igemm split-K backward {precision} {tiles}")


def _off_16(rng, arr):
    """A copy of arr in a view that starts one float past a 16-byte boundary."""
    buf = np.empty(arr.size + 8, np.float32)
    off = (-buf.ctypes.data % 16) // 4 + 1
    v = buf[off:off + arr.size].reshape(arr.shape)
    v[...] = arr
    assert v.ctypes.data % 16 == 4
    return v


@covers("conv_igemm_forward_kernel", "conv_igemm_backward_kernel")
def test_conv_igemm_views_off_16_bytes_take_scalar_loads(emu, rng, monkeypatch):
    """A source that starts off a 16-byte boundary (a view) would make float4
    loads fault on a GPU: the wrapper sees the address and compiles VEC_A/VEC_B = 1
    for it (the emulator aligns its copies, so the choice is checked on the defines)."""
    seen = []
    real = cuda.get_kernel
    monkeypatch.setattr(cuda, "get_kernel", lambda m, k, d=None: seen.append(d) or real(m, k, d))
    x, wt, b = _igemm_operands(rng, (1, 5, 6, 8), 12)
    tiles = IG_TILES["small"]
    assert x.ctypes.data % 16 == 0 and wt.ctypes.data % 16 == 0
    y, cache = conv_igemm.conv_forward_igemm(x, wt, b, precision="tf32", tiles=tiles)
    assert (seen[-1]["VEC_A"], seen[-1]["VEC_B"]) == (4, 4)
    y2, _ = conv_igemm.conv_forward_igemm(_off_16(rng, x), wt, b, precision="tf32", tiles=tiles)
    assert (seen[-1]["VEC_A"], seen[-1]["VEC_B"]) == (1, 4)
    y3, _ = conv_igemm.conv_forward_igemm(x, _off_16(rng, wt), b, precision="tf32", tiles=tiles)
    assert (seen[-1]["VEC_A"], seen[-1]["VEC_B"]) == (4, 1)
    for got in (y, y2, y3):
        _igemm_check(got, x, wt, b, "tf32", "igemm forward, aligned or not")
    dout = rng.standard_normal(y.shape).astype(np.float32)
    dx = conv_igemm.conv_backward_igemm(_off_16(rng, dout), cache, flip_kernel(wt),
                                        precision="tf32", tiles=tiles)
    assert seen[-1]["VEC_A"] == 1
    _igemm_check(dx, dout * (y > 0), flip_kernel(wt), None, "tf32", "igemm backward, dout off 16")
