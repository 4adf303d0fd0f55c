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


def denoise_forward_cpu(x):
    """x (N, H, W, C) -> scalar total variation (L1)."""
    xp = get_array_module(x)
    return (xp.sum(xp.abs(x[:, 1:] - x[:, :-1]))
            + xp.sum(xp.abs(x[:, :, 1:] - x[:, :, :-1])))


def denoise_backward_cpu(x, dout=1.0):
    xp = get_array_module(x)
    dx = xp.zeros_like(x)
    sv = xp.sign(x[:, 1:] - x[:, :-1])  # d|x[i+1]-x[i]|: +1 on i+1, -1 on i
    dx[:, 1:] += sv
    dx[:, :-1] -= sv
    sh = xp.sign(x[:, :, 1:] - x[:, :, :-1])
    dx[:, :, 1:] += sh
    dx[:, :, :-1] -= sh
    if dout != 1.0:
        dx *= dout
    return dx
