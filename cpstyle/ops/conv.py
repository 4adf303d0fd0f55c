"""3x3 convolution, stride 1, zero padding 1, with bias and ReLU, as one GEMM.

    cols = im2col(x)                    # (N*H*W, 9*Cin), column (ky*3+kx)*Cin + c
    y    = relu(cols @ W.reshape(9*Cin, Cout) + b)

Backward to the input only (no weight gradients):

    dz = dout ⊙ [y > 0]
    dx = conv(dz, W flipped in space, Cin<->Cout swapped), i.e.
         im2col(dz) @ W[::-1, ::-1].transpose(0, 1, 3, 2).reshape(9*Cout, Cin)

because dx[i, j] = Σ_{ky,kx} dz[i+1-ky, j+1-kx] · W[ky, kx]ᵀ.
Kernels: kernels/conv.cu. Tests: tests/test_conv.py."""
from ..backend import get_array_module


def im2col_cpu(x):
    """(N, H, W, C) -> (N*H*W, 9*C), zero padding 1."""
    xp = get_array_module(x)
    n, h, w, c = x.shape
    xpad = xp.zeros((n, h + 2, w + 2, c), dtype=x.dtype)
    xpad[:, 1:-1, 1:-1, :] = x
    cols = xp.empty((n, h, w, 3, 3, c), dtype=x.dtype)
    for ky in range(3):
        for kx in range(3):
            cols[:, :, :, ky, kx, :] = xpad[:, ky:ky + h, kx:kx + w, :]
    return cols.reshape(n * h * w, 9 * c)


def flip_kernel(w):
    """(3, 3, Cin, Cout) -> (3, 3, Cout, Cin): the kernel of the backward conv."""
    xp = get_array_module(w)
    return xp.ascontiguousarray(w[::-1, ::-1].transpose(0, 1, 3, 2))


def conv_forward_cpu(x, w, b):
    """x (N, H, W, Cin), w (3, 3, Cin, Cout), b (Cout,) -> y (N, H, W, Cout), cache."""
    xp = get_array_module(x)
    n, h, wd, cin = x.shape
    cout = w.shape[3]
    y = im2col_cpu(x) @ w.reshape(9 * cin, cout)  # (N*H*W, Cout)
    y += b
    xp.maximum(y, 0, out=y)
    y = y.reshape(n, h, wd, cout)
    return y, (w, y)


def conv_backward_cpu(dout, cache, wflip=None):
    """dout (N, H, W, Cout) -> dx (N, H, W, Cin). `wflip` = flip_kernel(w), if
    the caller keeps it (the model does)."""
    w, y = cache
    if wflip is None:
        wflip = flip_kernel(w)
    n, h, wd, cout = dout.shape
    cin = w.shape[2]
    dz = dout * (y > 0)  # ReLU mask
    dx = im2col_cpu(dz) @ wflip.reshape(9 * cout, cin)  # (N*H*W, Cin)
    return dx.reshape(n, h, wd, cin)
