"""Each `_gpu` wrapper on a real device against its NumPy reference (`_cpu` on the
host copies), on fresh random inputs and odd shapes, with outputs passed as
`out=` buffers poisoned with NaN. The same wrappers run under the CPU
emulation in tests/test_kernels_emulated.py; here they meet CuPy, NVRTC,
cuBLAS and the default launch shapes (256-thread blocks, 256 reduction blocks,
so the larger cases take every block through grid-stride loops).
Tolerances are fp32 and written at each call: matmul outputs get the standard
worst-case GEMM bound 2·K·eps·Σ|terms| (K = the inner dimension); the GEMMs run
in fp32, not TF32 (the `fp32_matmul` fixture sees to it)."""
import numpy as np
import pytest

from cpstyle import cuda
from cpstyle.ops import conv, gram, loss, pool, preprocess, update
from cpstyle.ops.conv import (col2im_cpu, col2im_gpu, conv_backward_cpu, conv_backward_gpu,
                              conv_forward_cpu, conv_forward_gpu, flip_kernel, im2col_cpu,
                              im2col_gpu)
from cpstyle.ops.gram import (gram_backward_cpu, gram_backward_gpu, gram_forward_cpu,
                              gram_forward_gpu)
from cpstyle.ops.loss import (adj_weights_gpu, denoise_backward_accumulate_gpu,
                              denoise_backward_cpu, denoise_forward_cpu, denoise_sum_gpu,
                              mse_backward_cpu, mse_forward_cpu, mse_sum_gpu, scaled_diff_gpu)
from cpstyle.ops import optim
from cpstyle.ops.pool import (avgpool_backward_cpu, avgpool_backward_gpu, avgpool_forward_cpu,
                              avgpool_forward_gpu, maxpool_backward_cpu, maxpool_backward_gpu,
                              maxpool_forward_cpu, maxpool_forward_gpu)
from cpstyle.ops.preprocess import (preprocess_backward_cpu, preprocess_backward_gpu,
                                    preprocess_forward_cpu, preprocess_forward_gpu,
                                    preprocess_params)
from cpstyle.ops.update import make_update_work, update_cpu, update_gpu_inplace
from emulation.checks import assert_close

pytestmark = pytest.mark.gpu
cp = pytest.importorskip("cupy")

EPS32 = float(np.finfo(np.float32).eps)
SHAPES = [(1, 1, 1, 3), (1, 3, 7, 3), (2, 5, 4, 7), (1, 33, 17, 2)]


@pytest.fixture(autouse=True)
def fp32_matmul():
    from cupy._core import _routines_linalg as linalg
    old = linalg.get_compute_type(np.float32)
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_FP32)
    yield
    linalg.set_compute_type(np.float32, old)


def poison(shape, dtype=np.float32):
    return cp.full(shape, np.nan if np.dtype(dtype).kind == "f" else 0xFF, dtype=dtype)


def host(a):
    return cp.asnumpy(a)


# ---- preprocess -------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (1, 7, 5, 3), (2, 3, 33, 3), (1, 301, 257, 3)])
@pytest.mark.parametrize("mode", ["torch", "caffe"])
def test_preprocess_gpu(rng, shape, mode):
    scale, shift, bgr = preprocess_params(mode, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    s32, t32 = scale.astype(np.float32), shift.astype(np.float32)
    x = rng.uniform(0, 255, shape).astype(np.float32)
    out = poison(shape)
    y = preprocess_forward_gpu(cp.asarray(x), cp.asarray(s32), cp.asarray(t32), bgr, out=out)
    assert y is out
    bound = 255 * np.abs(s32).max() + np.abs(t32).max()  # fused or not: <= 1 ulp of the terms
    assert_close(host(y), preprocess_forward_cpu(x, s32, t32, bgr), atol=2 * EPS32 * bound, rtol=0,
                 what="preprocess forward")
    dy = rng.standard_normal(shape).astype(np.float32)
    dx = preprocess_backward_gpu(cp.asarray(dy), cp.asarray(s32), bgr, out=poison(shape))
    assert_close(host(dx), preprocess_backward_cpu(dy, s32, bgr), atol=0, rtol=EPS32,
                 what="preprocess backward")


# ---- conv -----------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES + [(1, 37, 45, 64)])
def test_im2col_gpu(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    n, h, w, c = shape
    cols = im2col_gpu(cp.asarray(x), out=poison((n * h * w, 9 * c)))
    assert_close(host(cols), im2col_cpu(x), atol=0, rtol=0, what="im2col")  # a pure copy


def _conv_case(rng, shape, cout):
    cin = shape[3]
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    w = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
    b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    return x, w, b


def _gemm_atol(k, a_max, w):
    """2·K·eps·max|a|·max_col Σ_k |W[k, col]|: both results are within half of it."""
    return 2 * k * EPS32 * a_max * np.abs(w.reshape(k, -1)).sum(axis=0).max()


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 5, 4, 7), (1, 37, 45, 3), (1, 19, 23, 64)])
def test_col2im_gpu(rng, shape):
    n, h, w, c = shape
    p = rng.standard_normal((n * h * w, 9 * c)).astype(np.float32)
    out = col2im_gpu(cp.asarray(p), (n, h, w), out=poison(shape))
    # the same float32 sums in the same order as col2im_cpu
    assert_close(host(out), col2im_cpu(p, (n, h, w)), atol=0, rtol=0, what="col2im")


CONV_CASES = [((1, 1, 1, 3), 1), ((1, 3, 7, 3), 5), ((2, 5, 4, 7), 3), ((1, 33, 17, 2), 7),
              ((1, 37, 45, 64), 64), ((1, 19, 23, 3), 64)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape,cout", CONV_CASES)
def test_conv_forward_gpu(rng, shape, cout):
    x, w, b = _conv_case(rng, shape, cout)
    n, h, wd, cin = shape
    out = poison((n, h, wd, cout))
    y, cache = conv_forward_gpu(cp.asarray(x), cp.asarray(w), cp.asarray(b), out=out,
                                cols=poison(n * h * wd * 9 * cin + 7))
    assert y is out and cache[1] is y
    yr, _ = conv_forward_cpu(x, w, b)
    assert_close(host(y), yr, atol=_gemm_atol(9 * cin, 1.0, w) + EPS32, rtol=EPS32,
                 what="conv forward")


@pytest.mark.gpu
@pytest.mark.parametrize("shape,cout", [((1, 3, 7, 3), 3), ((2, 5, 4, 7), 3), ((1, 37, 45, 64), 64)])
def test_conv_forward_gpu_col2im_form(rng, monkeypatch, shape, cout):
    from cpstyle.ops import conv
    monkeypatch.setattr(conv, "gpu_forward_uses_col2im", lambda cin, cout: True)
    x, w, b = _conv_case(rng, shape, cout)
    n, h, wd, cin = shape
    out = poison((n, h, wd, cout))
    y, _ = conv_forward_gpu(cp.asarray(x), cp.asarray(w), cp.asarray(b), out=out,
                            cols=poison(n * h * wd * 9 * cout + 7))
    assert y is out
    yr, _ = conv_forward_cpu(x, w, b)
    assert_close(host(y), yr, atol=_gemm_atol(9 * cin, 1.0, w) + EPS32, rtol=EPS32,
                 what="conv forward, col2im form")


@pytest.mark.gpu
@pytest.mark.parametrize("shape,cout", CONV_CASES)
def test_conv_backward_gpu(rng, shape, cout):
    x, w, b = _conv_case(rng, shape, cout)
    n, h, wd, cin = shape
    _, (_, y) = conv_forward_cpu(x, w, b)
    dout = rng.standard_normal((n, h, wd, cout)).astype(np.float32)
    wg = cp.asarray(w)
    out = poison(x.shape)
    dx = conv_backward_gpu(cp.asarray(dout), (wg, cp.asarray(y)), flip_kernel(wg), out=out,
                           cols=poison((n * h * wd * 9 * cout + 3,)), dz=poison(dout.size + 5))
    assert dx is out
    ref = conv_backward_cpu(dout, (w, y))
    atol = _gemm_atol(9 * cout, np.abs(dout).max(), flip_kernel(w))
    assert_close(host(dx), ref, atol=atol, rtol=EPS32, what="conv backward")
    dx2 = conv_backward_gpu(cp.asarray(dout), (wg, cp.asarray(y)))  # wflip made inside
    assert_close(host(dx2), ref, atol=atol, rtol=EPS32, what="conv backward, no wflip")


# ---- pool -----------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 2, 2, 1), (1, 3, 7, 3), (2, 5, 4, 7),
                                   (1, 33, 9, 2), (1, 75, 63, 64)])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_gpu(rng, shape, ties):
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(np.float32)
    n, h, w, c = shape
    oshape = (n, h // 2, w // 2, c)
    y, (arg, s) = maxpool_forward_gpu(cp.asarray(x), out=poison(oshape), argmax=poison(oshape, np.uint8))
    yr, (argr, sr) = maxpool_forward_cpu(x)
    assert s == sr
    assert_close(host(y), yr, atol=0, rtol=0, what="maxpool y")
    assert_close(host(arg), argr, atol=0, rtol=0, what="maxpool argmax")
    dy = rng.standard_normal(oshape).astype(np.float32)
    dx = maxpool_backward_gpu(cp.asarray(dy), (cp.asarray(argr), sr), out=poison(shape))
    assert_close(host(dx), maxpool_backward_cpu(dy, (argr, sr)), atol=0, rtol=0, what="maxpool dx")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 3, 7, 3), (2, 5, 4, 7), (1, 75, 63, 64)])
def test_avgpool_gpu(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    n, h, w, c = shape
    oshape = (n, h // 2, w // 2, c)
    y, s = avgpool_forward_gpu(cp.asarray(x), out=poison(oshape))
    yr, sr = avgpool_forward_cpu(x)
    assert s == sr
    # four adds in the reference's order, then an exact ·0.25 (nothing to fuse)
    assert_close(host(y), yr, atol=0, rtol=0, what="avgpool y")
    dy = rng.standard_normal(oshape).astype(np.float32)
    dx = avgpool_backward_gpu(cp.asarray(dy), sr, out=poison(shape))
    assert_close(host(dx), avgpool_backward_cpu(dy, sr), atol=0, rtol=0, what="avgpool dx")
    assert_close(host(pool.avgpool_backward(cp.asarray(dy), sr)), avgpool_backward_cpu(dy, sr),
                 atol=0, rtol=0, what="avgpool_backward dispatcher")


# ---- optimisers (kernels/optim.cu) ---------------------------------------------------

OPT_SIZES = [(1,), (7,), (1, 33, 17, 3), (1, 301, 257, 3)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", OPT_SIZES)
def test_adam_gpu(rng, shape):
    x = rng.uniform(0, 255, shape).astype(np.float32)
    m = rng.standard_normal(shape).astype(np.float32)
    v = rng.uniform(0, 2, shape).astype(np.float32)
    g = (rng.standard_normal(shape) * 3).astype(np.float32)
    xg, mg, vg = cp.asarray(x), cp.asarray(m), cp.asarray(v)
    corr = cp.zeros(3, np.float64)  # t and the bias corrections, on the device
    for t in (1, 2):  # the second step starts from the first's m, v
        xr, mr, vr = optim.adam_update_cpu(host(xg), host(mg), host(vg), g, 10.0, t)
        m0 = np.abs(host(mg)).max()
        optim.adam_count_gpu(corr)
        assert host(corr)[0] == t
        # CUDA's pow against glibc's: the float32 corrections agree
        assert np.float32(host(corr)[1]) == np.float32(1 / (1 - 0.9 ** t))
        assert np.float32(host(corr)[2]) == np.float32(1 / (1 - 0.999 ** t))
        optim.adam_update_gpu_inplace(xg, mg, vg, cp.asarray(g), 10.0, corr)
        # fused multiply-adds on the GPU: one rounding fewer than the reference
        assert_close(host(mg), mr, atol=2 * EPS32 * (m0 + np.abs(g).max()), rtol=0,
                     what=f"adam m, t={t}")
        assert_close(host(vg), vr, atol=1e-30, rtol=4 * EPS32, what=f"adam v, t={t}")
        assert_close(host(xg), xr, atol=1e-4, rtol=0, what=f"adam x, t={t}")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", OPT_SIZES)
def test_dot_gpu(rng, shape):
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    out = poison(3, np.float64)
    optim.dot_gpu(cp.asarray(a), cp.asarray(b), out[1:2],
                  partial=poison(cuda.config["reduce_blocks"], np.float64))
    o = host(out)
    assert np.isnan(o[0]) and np.isnan(o[2]), "wrote outside its slot"
    bound = 1e-13 * float(np.abs(a.astype(np.float64) * b).sum()) + 1e-300
    assert_close(o[1], optim.dot64(a, b), atol=bound, rtol=0, what="dot")


@pytest.mark.gpu
def test_lbfgs_kernels_gpu(rng):
    """The ring kernels as DeviceLBFGS runs them: gamma from the init kernel on
    the first step, then m pairs (one rejected by the pair kernel) around a ring
    of m, and the two loops over every position against lbfgs_direction_cpu."""
    shape = (1, 37, 45, 3)
    g = rng.standard_normal(shape).astype(np.float32)
    x = rng.uniform(0, 255, shape).astype(np.float32)
    m = 3
    S, Y = cp.zeros((m,) + shape, np.float32), cp.zeros((m,) + shape, np.float32)
    sc = cp.zeros(2 * m + 4, np.float64)  # rho.., alpha.., gamma, sy, yy, dot
    rho, alpha = sc[:m], sc[m:2 * m]
    gamma, sy, yy, dot = (sc[2 * m + i:2 * m + i + 1] for i in range(4))
    ring = cp.zeros(2, np.int32)
    x_prev, g_prev, q = (cp.zeros(shape, np.float32) for _ in range(3))
    from cpstyle.ops.update import centered_sqsum_gpu
    work = make_update_work(g.size)
    optim.lbfgs_advance_gpu(ring, m)
    optim.lbfgs_init_gpu(gamma, centered_sqsum_gpu(cp.asarray(g), work), 10.0, g.size, ring)
    assert float(gamma[0]) == pytest.approx(10.0 / (np.std(g.astype(np.float64)) + 1e-8),
                                            rel=1e-9)
    optim.lbfgs_diff_gpu(S, Y, x_prev, g_prev, q, cp.asarray(x), cp.asarray(g), ring)
    assert not S.any(), "a pair on the first step"
    pairs = []
    for k in range(m):
        xn = (x + rng.standard_normal(shape)).astype(np.float32)
        gn = (g + (xn - x) * (1.0 if k != 1 else -1.0)).astype(np.float32)  # k = 1: s·y < 0
        optim.lbfgs_advance_gpu(ring, m)
        optim.lbfgs_diff_gpu(S, Y, x_prev, g_prev, q, cp.asarray(xn), cp.asarray(gn), ring)
        s_, y_ = xn - x, gn - g
        assert_close(host(S[k]), s_, atol=0, rtol=0, what="s")
        optim.dot_gpu(S, Y, sy, ring=ring, ja=m - 1, jb=m - 1)
        optim.dot_gpu(Y, Y, yy, ring=ring, ja=m - 1, jb=m - 1)
        optim.lbfgs_pair_gpu(rho, gamma, sy, yy, ring)
        r_ref, gam_ref = optim.lbfgs_pair_cpu(s_, y_)
        assert float(rho[k]) == pytest.approx(r_ref, rel=1e-12, abs=0)
        pairs.append((s_, y_, r_ref))
        x, g = xn, gn
    assert float(rho[1]) == 0.0 and float(gamma[0]) == pytest.approx(gam_ref, rel=1e-12)
    q = cp.asarray(g)
    for j in reversed(range(m)):
        optim.dot_gpu(S, q, dot, ring=ring, ja=j)
        optim.lbfgs_first_loop_gpu(q, alpha, Y, rho, dot, ring, j)
    optim.lbfgs_scale_gpu(q, gamma)
    for j in range(m):
        optim.dot_gpu(Y, q, dot, ring=ring, ja=j)
        optim.lbfgs_second_loop_gpu(q, S, rho, alpha, dot, ring, j)
    ref = optim.lbfgs_direction_cpu(g, pairs, float(gamma[0]))
    scale = np.abs(ref).max()
    assert_close(host(q) / scale, ref / scale, atol=1e-5, rtol=0, what="two-loop direction")
    xg = cp.asarray(x)
    optim.descend_clip_gpu_inplace(xg, cp.asarray(g * 100))
    assert_close(host(xg), optim.descend_clip_cpu(x, g * 100), atol=0, rtol=0, what="descend")


# ---- losses -----------------------------------------------------------------------

SIZES = [(1,), (7,), (1, 33, 17, 3), (1, 1000, 1001)]  # the last: every block, several rounds


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SIZES)
def test_mse_sum_gpu(rng, shape):
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    ag, bg = cp.asarray(a), cp.asarray(b)
    slots = poison(3)
    partial = poison(cuda.config["reduce_blocks"], np.float64)
    mse_sum_gpu(ag, bg, slots[1:2], 1.0 / a.size, partial=partial)
    s = host(slots)
    assert np.isnan(s[0]) and np.isnan(s[2]), "wrote outside its slot"
    # the reference is a float32 pairwise mean; ours sums in double
    assert_close(s[1], mse_forward_cpu(a, b), atol=0, rtol=1e-5, what="mse")
    mse_sum_gpu(ag, bg, slots[1:2], 0.5, accumulate=True, partial=partial)
    ref64 = np.sum((a.astype(np.float64) - b) ** 2)
    assert_close(host(slots)[1], s[1] + 0.5 * ref64, atol=0, rtol=1e-6, what="mse accumulate")
    again = poison(1)
    mse_sum_gpu(ag, bg, again, 1.0 / a.size, partial=partial)
    assert host(again)[0] == s[1], "the reduction is not deterministic"


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES + [(1, 9, 1, 2), (1, 1, 9, 2), (1, 301, 257, 3)])
def test_denoise_sum_gpu(rng, shape):
    x = rng.uniform(0, 255, shape).astype(np.float32)
    out = poison(1)
    denoise_sum_gpu(cp.asarray(x), out, scale=0.25)
    assert_close(host(out)[0], 0.25 * denoise_forward_cpu(x), atol=1e-6, rtol=1e-5, what="TV")
    out[...] = 3.0
    denoise_sum_gpu(cp.asarray(x), out, accumulate=True)
    assert_close(host(out)[0], 3.0 + denoise_forward_cpu(x), atol=1e-6, rtol=1e-5,
                 what="TV accumulate")


@pytest.mark.gpu
@pytest.mark.parametrize("n", [1, 3, 37])
def test_adj_weights_gpu(rng, n):
    losses = rng.uniform(0, 1e6, n).astype(np.float32)
    losses[0] = 0.0
    weights = rng.uniform(0, 10, n).astype(np.float32)
    adj, coef = adj_weights_gpu(cp.asarray(losses), cp.asarray(weights), adj=poison(n),
                                coef=poison(n))
    adj_ref = np.float32(1.0) / (losses + np.float32(1e-10))  # DESIGN.md §5, as objective.py
    assert_close(host(adj), adj_ref, atol=0, rtol=2 * EPS32, what="adj")
    assert_close(host(coef), weights * adj_ref, atol=0, rtol=3 * EPS32, what="coef")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1,), (7,), (1, 33, 33), (1, 37, 45, 64)])
def test_scaled_diff_gpu(rng, shape):
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    coef = cp.asarray(np.array([np.nan, 0.37, np.nan], np.float32))
    out = scaled_diff_gpu(cp.asarray(a), cp.asarray(b), coef[1:2], 2.0 / a.size, out=poison(shape))
    # the scalar 2·0.37/size is rounded along another path than k·coef: a few ulp
    assert_close(host(out), mse_backward_cpu(a, b, np.float32(0.37)), atol=0, rtol=4 * EPS32,
                 what="scaled diff")


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES + [(1, 9, 1, 2), (1, 1, 9, 2), (1, 301, 257, 3)])
def test_denoise_backward_accumulate_gpu(rng, shape):
    x = rng.integers(0, 3, shape).astype(np.float32)  # equal neighbours: sign(0) = 0
    g0 = rng.standard_normal(shape).astype(np.float32)
    coef = cp.asarray(np.array([0.3], np.float32))
    g = cp.asarray(g0)
    assert denoise_backward_accumulate_gpu(g, cp.asarray(x), coef) is g
    ref = g0 + denoise_backward_cpu(x, np.float32(0.3))
    assert_close(host(g), ref, atol=4 * EPS32 * (np.abs(g0).max() + 4 * 0.3), rtol=0,
                 what="TV gradient accumulate")


# ---- update -----------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(1,), (7,), (1, 33, 17, 3), (1, 301, 257, 3)])
def test_update_gpu(rng, shape):
    x = rng.uniform(0, 255, shape).astype(np.float32)
    g = (rng.standard_normal(shape) * 5 + 2).astype(np.float32)
    work = make_update_work(x.size)
    work.partial[...] = np.nan
    xg = cp.asarray(x)
    assert update_gpu_inplace(xg, cp.asarray(g), 10.0, work=work) is xg
    ref = update_cpu(x, g, 10.0)
    step = 10.0 * np.abs(g).max() / (np.std(g.astype(np.float64)) + 1e-8)
    assert_close(host(xg), ref, atol=min(step, 255) * 1e-5 + 2 * 255 * EPS32, rtol=0, what="update")
    again = update_gpu_inplace(cp.asarray(x), cp.asarray(g), 10.0, work=work)
    assert np.array_equal(host(again), host(xg)), "update is not deterministic"


# ---- gram (kernels/gram.cu) ----------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("shape,norm", [((1, 3, 7, 5), 1.0), ((1, 33, 17, 64), 1 / 561),
                                        ((2, 9, 11, 3), 1.0), ((1, 31, 33, 129), 1.0),
                                        ((1, 16, 16, 512), 1 / 256)])
def test_gram_gpu(rng, shape, norm):
    """Our kernels at the GPU's tiles (64 wide): partial tiles, split K, and the
    backward; deterministic; G exactly symmetric."""
    x = rng.standard_normal(shape).astype(np.float32)
    n, h, w, c = shape
    out = poison((n, c, c))
    work = cp.full(gram.gram_work_size(h * w, c), np.nan, np.float32)
    g, cache = gram_forward_gpu(cp.asarray(x), norm, out=out, work=work)
    assert g is out
    gr, cache_r = gram_forward_cpu(x, norm)
    k = h * w
    m = np.abs(x).max()
    assert_close(host(g), gr, atol=2 * k * EPS32 * m * m * norm, rtol=EPS32, what="gram forward")
    assert np.array_equal(host(g), host(g).transpose(0, 2, 1)), "G not exactly symmetric"
    again, _ = gram_forward_gpu(cp.asarray(x), norm, work=work)
    assert np.array_equal(host(again), host(g)), "gram forward is not deterministic"
    dg = rng.standard_normal((n, c, c)).astype(np.float32)
    dx = gram_backward_gpu(cp.asarray(dg), cache, out=poison(shape), sym=poison((n, c, c)))
    atol = 2 * c * EPS32 * m * 2 * np.abs(dg).max() * c * norm
    assert_close(host(dx), gram_backward_cpu(dg, cache_r), atol=atol, rtol=1e-6, what="gram backward")
    dh0 = rng.standard_normal((h * w, c)).astype(np.float32)
    dh = gram.gram_backward_accumulate_gpu(cp.asarray(dh0), cp.asarray(x[0].reshape(-1, c)),
                                           cp.asarray(dg[0]))
    ref = x[0].reshape(-1, c).astype(np.float64) @ dg[0] + dh0
    acc_tol = 2 * c * c * EPS32 * m * np.abs(dg).max() + 8 * EPS32 * np.abs(dh0).max()  # no norm
    assert_close(host(dh), ref, atol=acc_tol, rtol=1e-6, what="dh + F·dG")


# ---- dispatchers: CuPy float32 goes to the kernels, the answer matches the reference -----

@pytest.mark.gpu
def test_dispatchers_gpu(rng):
    x = rng.uniform(0, 1, (1, 9, 11, 3)).astype(np.float32)
    w = (rng.standard_normal((3, 3, 3, 4)) / 5).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32) * 0.1
    xg, wg, bg = cp.asarray(x), cp.asarray(w), cp.asarray(b)
    y, cache = conv.conv_forward(xg, wg, bg)
    yr, cache_r = conv_forward_cpu(x, w, b)
    assert isinstance(y, cp.ndarray)
    assert_close(host(y), yr, atol=1e-5, rtol=1e-5, what="conv_forward")
    d = rng.standard_normal(y.shape).astype(np.float32)
    assert_close(host(conv.conv_backward(cp.asarray(d), cache)), conv_backward_cpu(d, cache_r),
                 atol=1e-5, rtol=1e-5, what="conv_backward")
    p, pc = pool.maxpool_forward(y)
    pr, pcr = maxpool_forward_cpu(yr)
    assert_close(host(p), pr, atol=1e-5, rtol=1e-5, what="maxpool_forward")
    dp = rng.standard_normal(p.shape).astype(np.float32)
    assert_close(host(pool.maxpool_backward(cp.asarray(dp), (cp.asarray(pcr[0]), pcr[1]))),
                 maxpool_backward_cpu(dp, pcr), atol=0, rtol=0, what="maxpool_backward")
    t = rng.standard_normal(y.shape).astype(np.float32)
    assert_close(host(loss.mse_forward(y, cp.asarray(t))), mse_forward_cpu(yr, t), atol=0,
                 rtol=1e-5, what="mse_forward")
    assert_close(host(loss.mse_backward(cp.asarray(yr), cp.asarray(t), 0.7)),
                 mse_backward_cpu(yr, t, 0.7), atol=0, rtol=4 * EPS32, what="mse_backward")
    assert_close(host(loss.denoise_forward(xg)), denoise_forward_cpu(x), atol=0, rtol=1e-5,
                 what="denoise_forward")
    assert_close(host(loss.denoise_backward(xg, 0.3)), denoise_backward_cpu(x, 0.3), atol=1e-6,
                 rtol=2 * EPS32, what="denoise_backward")
    f = rng.standard_normal((1, 7, 9, 5)).astype(np.float32)
    gg, gc = gram.gram_forward(cp.asarray(f))
    gr, gcr = gram_forward_cpu(f)
    assert isinstance(gg, cp.ndarray)
    assert_close(host(gg), gr, atol=1e-4, rtol=1e-5, what="gram_forward")  # K = 63, |f| < 5
    dg = rng.standard_normal(gr.shape).astype(np.float32)
    assert_close(host(gram.gram_backward(cp.asarray(dg), gc)), gram_backward_cpu(dg, gcr),
                 atol=1e-4, rtol=1e-5, what="gram_backward")
    s, sh, bgr = preprocess_params("torch", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    xi = rng.uniform(0, 255, (1, 5, 7, 3)).astype(np.float32)
    assert_close(host(preprocess.preprocess_forward(cp.asarray(xi), s, sh, bgr)),
                 preprocess_forward_cpu(xi, s, sh, bgr), atol=1e-5, rtol=1e-6,
                 what="preprocess_forward")
    assert_close(host(preprocess.preprocess_backward(cp.asarray(xi), s, bgr)),
                 preprocess_backward_cpu(xi, s, bgr), atol=0, rtol=EPS32, what="preprocess_backward")
    xu = rng.uniform(0, 255, (1, 5, 7, 3)).astype(np.float32)
    gu = rng.standard_normal(xu.shape).astype(np.float32)
    xug = cp.asarray(xu)
    new = update.update(xug, cp.asarray(gu), 10.0)
    assert new is not xug and np.array_equal(host(xug), xu), "update must return a fresh array"
    assert_close(host(new), update_cpu(xu, gu, 10.0), atol=1e-3, rtol=0, what="update")


# ---- the implicit-GEMM conv (kernels/conv_igemm.cu) --------------------------------
# Every tile set the tuner may pick, every precision, on the GPU: the emulated tests'
# two-level check (operands rounded as the kernel rounds them, then the stated bound).
# Shapes: VGG's channel counts on odd image sizes, several row and column tiles.

from cpstyle.ops import conv_igemm  # noqa: E402
from emulation.checks import igemm_check, igemm_operands  # noqa: E402

IG_GPU_SHAPES = [((1, 37, 29, 64), 128), ((1, 33, 17, 3), 64), ((2, 19, 23, 128), 72)]


@pytest.mark.parametrize("precision", list(conv_igemm.PRECISIONS))
@pytest.mark.parametrize("tiles", conv_igemm.CANDIDATES, ids=str)
@pytest.mark.parametrize("shape,cout", IG_GPU_SHAPES)
def test_conv_igemm_gpu(rng, shape, cout, tiles, precision):
    x, wt, b = igemm_operands(rng, shape, cout)
    n, h, w, cin = shape
    xg, wg, bg = cp.asarray(x), cp.asarray(wt), cp.asarray(b)
    y, cache = conv_igemm.conv_forward_igemm(xg, wg, bg, out=poison((n, h, w, cout)),
                                             precision=precision, tiles=tiles)
    igemm_check(cp.asnumpy(y), x, wt, b, precision, f"igemm forward {precision} {tiles}")
    dout = rng.standard_normal((n, h, w, cout)).astype(np.float32)
    wf = flip_kernel(wt)
    dx = conv_igemm.conv_backward_igemm(cp.asarray(dout), cache, cp.asarray(wf),
                                        out=poison(shape), precision=precision, tiles=tiles)
    igemm_check(cp.asnumpy(dx), dout * (cp.asnumpy(y) > 0), wf, None, precision,
                f"igemm backward {precision} {tiles}")


@pytest.mark.parametrize("precision", list(conv_igemm.PRECISIONS))
@pytest.mark.parametrize("tiles", conv_igemm.NARROW_CANDIDATES, ids=str)
def test_conv_igemm_gpu_narrow(rng, tiles, precision):
    """conv1_1's backward: 64 channels in, 3 out."""
    x, wt, b = igemm_operands(rng, (1, 41, 35, 3), 64)
    _, cache = conv_forward_cpu(x, wt, b)
    dout = rng.standard_normal(cache[1].shape).astype(np.float32)
    wf = flip_kernel(wt)
    dx = conv_igemm.conv_backward_igemm(cp.asarray(dout), (cp.asarray(wt), cp.asarray(cache[1])),
                                        cp.asarray(wf), out=poison(x.shape), precision=precision,
                                        tiles=tiles)
    igemm_check(cp.asnumpy(dx), dout * (cache[1] > 0), wf, None, precision,
                f"igemm backward {precision} {tiles}")
