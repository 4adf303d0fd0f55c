"""The loss terms and their gradients.

    mse(a, t)      = mean((a - t)²)           d/da = 2(a - t)/numel
      content: a = tap activations F, t = the content image's P
      style:   a = Gram G, t = the style image's A   (numel = N·C²)
    denoise(x)     = Σ|x[i+1,j] - x[i,j]| + Σ|x[i,j+1] - x[i,j]|   over N, C
      d/dx[i,j]    = sign(x[i,j]-x[i-1,j]) - sign(x[i+1,j]-x[i,j]) (+ same along j)

Kernels: kernels/loss.cu. Tests: tests/test_loss.py."""
from ..backend import get_array_module


def mse_forward_cpu(a, t):
    xp = get_array_module(a)
    d = a - t
    return xp.mean(d * d)  # 0-d array: stays on the device for CuPy


def mse_backward_cpu(a, t, dout=1.0):
    return (a - t) * (2.0 * dout / a.size)


# NumPy images of more floats than this take the total variation in blocks of
# rows (TV_BLOCK_FLOATS each), so its temporaries stay small at print sizes
# (five image-sized arrays at once otherwise: 1 GB at 4096x4096); below it the
# whole-array forms, as they always were.
TV_BLOCKS_FROM = 1 << 22
TV_BLOCK_FLOATS = 1 << 20


def _row_blocks(x):
    n, h, w, c = x.shape
    step = max(1, TV_BLOCK_FLOATS // max(1, n * w * c))
    return [(a, min(h, a + step)) for a in range(0, h, step)]


def denoise_forward_cpu(x):
    """x (N, H, W, C) -> scalar total variation (L1)."""
    xp = get_array_module(x)
    if xp.__name__ == "numpy" and x.size > TV_BLOCKS_FROM:
        total = 0.0
        for a, b in _row_blocks(x):  # vertical pairs (i, i+1) with i in [a, b)
            total += float(xp.sum(xp.abs(x[:, a + 1:b + 1] - x[:, a:min(b, x.shape[1] - 1)])))
            total += float(xp.sum(xp.abs(x[:, a:b, 1:] - x[:, a:b, :-1])))
        return xp.asarray(total, dtype=x.dtype)
    return (xp.sum(xp.abs(x[:, 1:] - x[:, :-1]))
            + xp.sum(xp.abs(x[:, :, 1:] - x[:, :, :-1])))


def denoise_backward_cpu(x, dout=1.0, out=None):
    """d TV/dx · dout; with `out`, added into it (NumPy: in blocks of rows, for
    large images) and returned."""
    xp = get_array_module(x)
    if out is not None and xp.__name__ == "numpy" and x.size > TV_BLOCKS_FROM:
        h = x.shape[1]
        for a, b in _row_blocks(x):
            e = min(b, h - 1)
            if e > a:
                sv = xp.sign(x[:, a + 1:e + 1] - x[:, a:e])
                sv *= dout
                out[:, a + 1:e + 1] += sv
                out[:, a:e] -= sv
            sh = xp.sign(x[:, a:b, 1:] - x[:, a:b, :-1])
            sh *= dout
            out[:, a:b, 1:] += sh
            out[:, a:b, :-1] -= sh
        return out
    dx = xp.zeros_like(x)
    sv = xp.sign(x[:, 1:] - x[:, :-1])  # d|x[i+1]-x[i]|: +1 on i+1, -1 on i
    dx[:, 1:] += sv
    dx[:, :-1] -= sv
    sh = xp.sign(x[:, :, 1:] - x[:, :, :-1])
    dx[:, :, 1:] += sh
    dx[:, :, :-1] -= sh
    if dout != 1.0:
        dx *= dout
    if out is not None:
        out += dx
        return out
    return dx


# ---- GPU path: kernels/loss.cu ----------------------------------------------
# Losses, adj weights and coefficients stay on the device: a loss is written to
# a 1-element float32 view (e.g. `losses[0:1]`), a coefficient is read from one
# (e.g. `coef[0:1]`). `partial` is a float64 work buffer of at least
# cuda.config["reduce_blocks"] elements; one is allocated when it is None.
import numpy as np  # noqa: E402

from .. import cuda  # noqa: E402
from ..backend import is_gpu_array  # noqa: E402


def _kernel(name):
    return cuda.get_kernel("loss", name, cuda.reduce_defines())


def _scalar_slot(a, what):
    if a.size != 1 or a.dtype != np.float32 or not a.flags.c_contiguous:
        raise ValueError(f"{what}: need a 1-element float32 device view (e.g. losses[0:1]), "
                         f"got {a.dtype} {a.shape}")
    return a


def _sum(partial_kernel, args, n, out, scale, accumulate, partial, xp):
    nb, t = cuda.reduce_grid(n), cuda.config["reduce_threads"]
    partial = cuda.work_view(xp, partial, (cuda.config["reduce_blocks"],), np.float64, "partial")
    cuda.launch(_kernel(partial_kernel), nb, t, (partial,) + args)
    cuda.launch(_kernel("sum_partials_kernel"), 1, t,
                (out, partial, cuda.i32(nb), cuda.f32(scale), cuda.i32(bool(accumulate))))
    return out


def mse_sum_gpu(a, b, out, scale, accumulate=False, partial=None):
    """out[0] = (accumulate ? out[0] : 0) + scale·Σ(a-b)²; a, b float32 of one
    shape. The content loss of a layer: scale = 1/(a.size·n_layers)."""
    if a.shape != b.shape:
        raise ValueError(f"mse: shapes {a.shape} and {b.shape} differ")
    _scalar_slot(out, "mse out")
    return _sum("sqdiff_partial_kernel", (a, b, cuda.i32(a.size)), a.size, out, scale,
                accumulate, partial, get_array_module(a))


def denoise_sum_gpu(x, out, scale=1.0, accumulate=False, partial=None):
    """out[0] = (accumulate ? out[0] : 0) + scale·TV(x); x (N, H, W, C) float32."""
    n, h, w, c = x.shape
    _scalar_slot(out, "denoise out")
    return _sum("tv_partial_kernel", (x, cuda.i32(n), cuda.i32(h), cuda.i32(w), cuda.i32(c)),
                x.size, out, scale, accumulate, partial, get_array_module(x))


def adj_weights_gpu(losses, weights, adj=None, coef=None):
    """losses, weights (n,) float32 -> adj = 1/(losses+1e-10), coef = weights·adj."""
    xp = get_array_module(losses)
    if weights.shape != losses.shape or losses.ndim != 1:
        raise ValueError(f"adj weights: losses {losses.shape}, weights {weights.shape}")
    adj = cuda.out_array(xp, adj, losses.shape, what="adj")
    coef = cuda.out_array(xp, coef, losses.shape, what="coef")
    blk = cuda.config["block"]
    cuda.launch(_kernel("adj_weights_kernel"), cuda.ceil_div(losses.size, blk), blk,
                (adj, coef, losses, weights, cuda.i32(losses.size)))
    return adj, coef


def scaled_diff_gpu(a, b, coef, k, out=None, accumulate=False):
    """out = k·coef[0]·(a - b) (added into `out` with accumulate). mse_backward_cpu(a,
    b, dout) is k = 2/a.size, coef[0] = dout; the style loss's dG has a = G, b = A."""
    xp = get_array_module(a)
    if a.shape != b.shape:
        raise ValueError(f"scaled diff: shapes {a.shape} and {b.shape} differ")
    _scalar_slot(coef, "coef")
    out = cuda.out_array(xp, out, a.shape)
    blk = cuda.config["block"]
    cuda.launch(_kernel("scaled_diff_kernel"), cuda.ceil_div(a.size, blk), blk,
                (out, a, b, coef, cuda.f32(k), cuda.i32(bool(accumulate)), cuda.i32(a.size)))
    return out


def denoise_backward_accumulate_gpu(g, x, coef):
    """g += coef[0]·∂TV/∂x (denoise_backward_cpu(x, coef[0]) added in place)."""
    n, h, w, c = x.shape
    if g.shape != x.shape:
        raise ValueError(f"denoise backward: g {g.shape}, x {x.shape}")
    _scalar_slot(coef, "coef")
    blk = cuda.config["block"]
    cuda.launch(_kernel("tv_grad_accumulate_kernel"), cuda.ceil_div(x.size, blk), blk,
                (g, x, coef, cuda.i32(n), cuda.i32(h), cuda.i32(w), cuda.i32(c)))
    return g


def _on_gpu(*arrays):
    return all(is_gpu_array(a) and a.dtype == np.float32 for a in arrays)


def _coef(xp, dout):
    return xp.ascontiguousarray(xp.asarray(dout, dtype=np.float32).reshape(1))


def mse_forward(a, t):
    if _on_gpu(a, t):
        out = get_array_module(a).empty(1, dtype=np.float32)
        return mse_sum_gpu(a, t, out, 1.0 / a.size).reshape(())
    return mse_forward_cpu(a, t)


def mse_backward(a, t, dout=1.0):
    if _on_gpu(a, t):
        return scaled_diff_gpu(a, t, _coef(get_array_module(a), dout), 2.0 / a.size)
    return mse_backward_cpu(a, t, dout)


def denoise_forward(x):
    if _on_gpu(x):
        out = get_array_module(x).empty(1, dtype=np.float32)
        return denoise_sum_gpu(x, out).reshape(())
    return denoise_forward_cpu(x)


def denoise_backward(x, dout=1.0):
    if _on_gpu(x):
        xp = get_array_module(x)
        return denoise_backward_accumulate_gpu(xp.zeros_like(x), x, _coef(xp, dout))
    return denoise_backward_cpu(x, dout)
