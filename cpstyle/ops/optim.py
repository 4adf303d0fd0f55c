"""The Adam and L-BFGS steps (issue #5's --optimizer adam|lbfgs); the tutorial's
std-scaled step is cpstyle/ops/update.py. Every step ends with a clip to 0..255.

    Adam (Kingma & Ba), t = 1, 2, ...:
        m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
        x = clip(x − lr·(m/(1−β1^t)) / (sqrt(v/(1−β2^t)) + eps), 0, 255)
    L-BFGS direction (Nocedal & Wright, Algorithm 7.4, the two-loop recursion):
        q = g;  for pairs newest -> oldest: α_i = ρ_i·s_iᵀq;  q −= α_i·y_i
        r = γ·q;  for pairs oldest -> newest: β = ρ_i·y_iᵀr;  r += (α_i − β)·s_i
        x = clip(x − r, 0, 255)
    with ρ_i = 1/(s_iᵀy_i) for a pair that passes s_iᵀy_i > 1e-10 and ρ_i = 0
    (the pair adds nothing) otherwise. Dot products and scalars in float64,
    vectors float32. The state machine around these (history ring, γ) is in
    cpstyle/optimizers.py.

Kernels: kernels/optim.cu (+ reduce_partials_kernel of kernels/update.cu).
Tests: tests/test_optimizers.py, tests/test_kernels_emulated.py, tests/test_kernels_gpu.py."""
import numpy as np

from ..backend import get_array_module

CLIP_LO, CLIP_HI = 0.0, 255.0
CURVATURE_EPS = 1e-10  # s·y must exceed it for a pair to count (as torch.optim.LBFGS)


def adam_update_cpu(x, m, v, g, lr, t, beta1=0.9, beta2=0.999, eps=1e-8):
    """-> new (x, m, v), float32 like x. t: the 1-based step count."""
    xp = get_array_module(x)
    f = x.dtype.type
    c1, c2 = 1.0 / (1.0 - beta1 ** t), 1.0 / (1.0 - beta2 ** t)  # in float64, once
    b1, b2 = f(beta1), f(beta2)
    m = b1 * m + (f(1) - b1) * g  # 1 − β in x's precision, as the kernel does
    v = b2 * v + (f(1) - b2) * (g * g)
    step = f(lr) * (m * f(c1)) / (xp.sqrt(v * f(c2)) + f(eps))
    return xp.clip(x - step, CLIP_LO, CLIP_HI).astype(x.dtype, copy=False), m, v


def dot64(a, b):
    """Σ a·b accumulated in float64 (a Python float)."""
    xp = get_array_module(a)
    return float(xp.dot(a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)))


def lbfgs_pair_cpu(s, y):
    """-> (rho, gamma or None): rho = 1/sᵀy and gamma = sᵀy/yᵀy when sᵀy > 1e-10,
    else rho = 0 and no new gamma."""
    sy = dot64(s, y)
    if not sy > CURVATURE_EPS:
        return 0.0, None
    return 1.0 / sy, sy / dot64(y, y)


def lbfgs_direction_cpu(g, pairs, gamma):
    """The two-loop recursion: r = H·g, H0 = gamma·I. pairs: [(s, y, rho)],
    oldest first. Returns a fresh array like g."""
    f = g.dtype.type
    q = g.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        a = rho * dot64(s, q)
        q -= f(a) * y
        alphas.append(a)
    r = f(gamma) * q
    for (s, y, rho), a in zip(pairs, reversed(alphas)):
        b = rho * dot64(y, r)
        r += f(a - b) * s
    return r


def descend_clip_cpu(x, d):
    """clip(x − d, 0, 255), a fresh array."""
    xp = get_array_module(x)
    return xp.clip(x - d, CLIP_LO, CLIP_HI).astype(x.dtype, copy=False)


# ---- GPU path: kernels/optim.cu ---------------------------------------------
# Scalars are 1-element float64 device views (e.g. `scalars[2:3]`); counters (Adam's
# t, L-BFGS's ring position) are device arrays too: nothing here reads one back to
# the host, and no launch argument changes from one step to the next, so a captured
# graph of a step replays for every step.
from .. import cuda  # noqa: E402


def _kernel(name):
    return cuda.get_kernel("optim", name, cuda.reduce_defines())


def _elementwise(name, n, args):
    blk = cuda.config["block"]
    cuda.launch(_kernel(name), cuda.ceil_div(n, blk), blk, args + (cuda.i32(n),))


def _one_thread(name, args):
    cuda.launch(_kernel(name), 1, 1, args)


def _same(what, *arrays):
    shape = arrays[0].shape
    for a in arrays[1:]:
        if a.shape != shape:
            raise ValueError(f"{what}: shapes {[tuple(b.shape) for b in arrays]} differ")


def _slot(a, what):
    if a.size != 1 or a.dtype != np.float64 or not a.flags.c_contiguous:
        raise ValueError(f"{what}: need a 1-element float64 device view, got {a.dtype} {a.shape}")
    return a


def _ring(ring):
    if ring.size != 2 or ring.dtype != np.int32 or not ring.flags.c_contiguous:
        raise ValueError(f"lbfgs ring: need a 2-element int32 device array, got {ring.dtype} {ring.shape}")
    return ring


def adam_count_gpu(corr, beta1=0.9, beta2=0.999):
    """corr (3,) float64 device array [t, c1, c2]: t += 1 and the bias corrections
    of step t (corr = 0 before the first step)."""
    if corr.shape != (3,) or corr.dtype != np.float64:
        raise ValueError(f"adam corr: need a (3,) float64 device array, got {corr.dtype} {corr.shape}")
    _one_thread("adam_count_kernel", (corr, np.float64(beta1), np.float64(beta2)))


def adam_update_gpu_inplace(x, m, v, g, lr, corr, beta1=0.9, beta2=0.999, eps=1e-8):
    """adam_update_cpu in place on x, m, v (float32), with t and the bias
    corrections read from the device (corr after adam_count_gpu); returns x."""
    _same("adam", x, m, v, g)
    f = cuda.f32
    _elementwise("adam_kernel", x.size, (x, m, v, g, corr, f(lr), f(beta1), f(beta2), f(eps)))
    return x


def dot_gpu(a, b, out, partial=None, ring=None, ja=0, jb=-1):
    """out[0] = Σ a·b in float64 (two deterministic stages); out: float64 (1,) view.
    With `ring` (lbfgs_advance_gpu's), a is an (m, n) ring and its position ja is
    used (position jb of b too, when jb >= 0); without, a and b are whole arrays."""
    _slot(out, "dot out")
    xp = get_array_module(a)
    if ring is None:
        _same("dot", a, b)
        m, n = 1, a.size
        ring = xp.zeros(2, np.int32)
    else:
        m, n = a.shape[0], a[0].size
        _same("dot", a[0], b[0] if jb >= 0 else b)
    nb, t = cuda.reduce_grid(n), cuda.config["reduce_threads"]
    partial = cuda.work_view(xp, partial, (cuda.config["reduce_blocks"],), np.float64, "partial")
    cuda.launch(_kernel("dot_partial_kernel"), nb, t,
                (partial, a, b, _ring(ring), cuda.i32(ja), cuda.i32(jb), cuda.i32(m), cuda.i32(n)))
    cuda.launch(cuda.get_kernel("update", "reduce_partials_kernel", cuda.reduce_defines()), 1, t,
                (out, partial, cuda.i32(nb)))
    return out


def lbfgs_advance_gpu(ring, m):
    """ring = [steps, head]: head moves on (after the first step), steps += 1."""
    _one_thread("lbfgs_advance_kernel", (_ring(ring), cuda.i32(m)))


def lbfgs_diff_gpu(S, Y, x_prev, g_prev, q, x, g, ring):
    """The newest pair S, Y[slot(m-1)] = x − x_prev, g − g_prev (from the second
    step on); then x_prev = x, g_prev = g, q = g."""
    _same("lbfgs diff", S[0], Y[0], x_prev, g_prev, q, x, g)
    _elementwise("lbfgs_diff_kernel", x.size,
                 (S, Y, x_prev, g_prev, q, x, g, _ring(ring), cuda.i32(S.shape[0])))


def lbfgs_pair_gpu(rho, gamma, sy, yy, ring):
    """lbfgs_pair_cpu on device scalars (from the second step on): rho of the
    newest slot and gamma written."""
    for a, w in ((gamma, "gamma"), (sy, "sy"), (yy, "yy")):
        _slot(a, w)
    _one_thread("lbfgs_pair_kernel", (rho, gamma, sy, yy, _ring(ring), cuda.i32(rho.size)))


def lbfgs_init_gpu(gamma, sqsum, step_size, n, ring):
    """On the first step only: gamma = step_size/(std + 1e-8), std = sqrt(sqsum/n)."""
    _slot(gamma, "gamma")
    _slot(sqsum, "sqsum")
    _one_thread("lbfgs_init_kernel", (gamma, sqsum, _ring(ring), cuda.f32(step_size), cuda.i32(n)))


def lbfgs_first_loop_gpu(q, alpha, Y, rho, sq, ring, j):
    """k = slot(j): a = rho[k]·sq;  q −= a·Y[k];  alpha[k] = a."""
    _same("lbfgs first loop", q, Y[0])
    _elementwise("lbfgs_first_loop_kernel", q.size,
                 (q, alpha, Y, rho, _slot(sq, "sq"), _ring(ring), cuda.i32(j), cuda.i32(Y.shape[0])))


def lbfgs_scale_gpu(q, gamma):
    """q = gamma·q."""
    _elementwise("lbfgs_scale_kernel", q.size, (q, _slot(gamma, "gamma")))


def lbfgs_second_loop_gpu(r, S, rho, alpha, yr, ring, j):
    """k = slot(j): r += (alpha[k] − rho[k]·yr)·S[k]."""
    _same("lbfgs second loop", r, S[0])
    _elementwise("lbfgs_second_loop_kernel", r.size,
                 (r, S, rho, alpha, _slot(yr, "yr"), _ring(ring), cuda.i32(j), cuda.i32(S.shape[0])))


def descend_clip_gpu_inplace(x, d):
    """x = clip(x − d, 0, 255) in place; returns x."""
    _same("descend", x, d)
    _elementwise("descend_clip_kernel", x.size, (x, d))
    return x
