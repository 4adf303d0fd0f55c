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
# Scalars are 1-element float64 device views (e.g. `scalars[2:3]`); nothing here
# reads one back to the host.
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


def adam_update_gpu_inplace(x, m, v, g, lr, t, beta1=0.9, beta2=0.999, eps=1e-8):
    """adam_update_cpu in place on x, m, v (float32); returns x."""
    _same("adam", x, m, v, g)
    c1, c2 = 1.0 / (1.0 - beta1 ** t), 1.0 / (1.0 - beta2 ** t)
    f = cuda.f32
    _elementwise("adam_kernel", x.size, (x, m, v, g, f(lr), f(beta1), f(beta2), f(c1), f(c2), f(eps)))
    return x


def dot_gpu(a, b, out, partial=None):
    """out[0] = Σ a·b in float64 (two deterministic stages); out: float64 (1,) view."""
    _same("dot", a, b)
    _slot(out, "dot out")
    xp = get_array_module(a)
    n = a.size
    nb, t = cuda.reduce_grid(n), cuda.config["reduce_threads"]
    partial = cuda.work_view(xp, partial, (cuda.config["reduce_blocks"],), np.float64, "partial")
    cuda.launch(_kernel("dot_partial_kernel"), nb, t, (partial, a, b, cuda.i32(n)))
    cuda.launch(cuda.get_kernel("update", "reduce_partials_kernel", cuda.reduce_defines()), 1, t,
                (out, partial, cuda.i32(nb)))
    return out


def lbfgs_diff_gpu(s, y, x, x_prev, g, g_prev):
    """s = x − x_prev, y = g − g_prev (into the history slot's rows)."""
    _same("lbfgs diff", s, y, x, x_prev, g, g_prev)
    _elementwise("lbfgs_diff_kernel", s.size, (s, y, x, x_prev, g, g_prev))


def lbfgs_pair_gpu(rho, gamma, sy, yy):
    """lbfgs_pair_cpu on device scalars: rho (the pair's slot) and gamma written."""
    for a, w in ((rho, "rho"), (gamma, "gamma"), (sy, "sy"), (yy, "yy")):
        _slot(a, w)
    _one_thread("lbfgs_pair_kernel", (rho, gamma, sy, yy))


def lbfgs_init_gpu(gamma, sqsum, step_size, n):
    """gamma = step_size/(std + 1e-8), std = sqrt(sqsum/n) (population)."""
    _slot(gamma, "gamma")
    _slot(sqsum, "sqsum")
    _one_thread("lbfgs_init_kernel", (gamma, sqsum, cuda.f32(step_size), cuda.i32(n)))


def lbfgs_first_loop_gpu(q, alpha, y, rho, sq):
    """a = rho·sq;  q −= a·y;  alpha = a."""
    _same("lbfgs first loop", q, y)
    _elementwise("lbfgs_first_loop_kernel", q.size, (q, _slot(alpha, "alpha"), y,
                                                      _slot(rho, "rho"), _slot(sq, "sq")))


def lbfgs_scale_gpu(q, gamma):
    """q = gamma·q."""
    _elementwise("lbfgs_scale_kernel", q.size, (q, _slot(gamma, "gamma")))


def lbfgs_second_loop_gpu(r, s, rho, alpha, yr):
    """r += (alpha − rho·yr)·s."""
    _same("lbfgs second loop", r, s)
    _elementwise("lbfgs_second_loop_kernel", r.size,
                 (r, s, _slot(rho, "rho"), _slot(alpha, "alpha"), _slot(yr, "yr")))


def descend_clip_gpu_inplace(x, d):
    """x = clip(x − d, 0, 255) in place; returns x."""
    _same("descend", x, d)
    _elementwise("descend_clip_kernel", x.size, (x, d))
    return x
