"""VGG-16's conv layers as a differentiable function of the input pixels.

forward(x, tap_ids) runs pre-processing and the conv/pool stack only as deep as
the deepest requested tap and returns the taps (post-ReLU outputs) and a cache;
backward(dtaps, cache) sends tap gradients back to the input pixels. Only the
ReLU outputs (for the masks), the pool argmaxes and the weights are kept.

The net's shape is data (channel counts from the weights, pools after layers
1, 3, 6, 9), so tests can run the same code on a small random VGG-like stack.
pooling="max" is VGG-16's own; "avg" swaps in 2x2 average pools (Gatys et al.
found avg pooling gives smoother results); `with_pooling` shares the weights.
Tests: tests/test_vgg16.py."""
import copy

import numpy as np

from . import cuda, layers
from .backend import resolve_device, to_device, xp_for
from .ops import blas
from .ops.conv import (conv_forward_cpu, conv_input_grad_cpu, flip_kernel, gemm_weights,
                       relu_backward_cpu, relu_epilogue, row_bytes)
from .ops.conv_igemm import conv_forward_igemm
from .ops.parallel import get as buffer, in_row_blocks
from .ops.pool import (POOLINGS, avgpool_backward_cpu, avgpool_forward_cpu,
                       maxpool_backward_cpu, maxpool_forward_cpu)
from .ops.preprocess import (preprocess_backward_cpu, preprocess_forward_cpu,
                             preprocess_params)


class VGG16:
    """params: list of (kernel (3,3,Cin,Cout), bias (Cout,)) for conv1_1..conv5_3
    (or fewer layers for a truncated stack)."""

    def __init__(self, params, preprocessing="torch", mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), device="cpu", dtype=np.float32, pooling="max"):
        self.pooling = check_pooling(pooling)
        self.igemm_precision = None  # with_igemm: the forward's convs on conv_igemm.cu
        self.device = resolve_device(device)
        self.xp = xp_for(self.device)
        self.dtype = np.dtype(dtype)
        self.preprocessing = preprocessing
        self.mean, self.std = tuple(mean), tuple(std)
        self.kernels = [to_device(w, self.xp, self.dtype) for w, _ in params]
        self.biases = [to_device(b, self.xp, self.dtype) for _, b in params]
        self.kernels_flipped = [flip_kernel(w) for w in self.kernels]
        # the NumPy path's GEMM operands, C-contiguous (ops.conv.gemm_weights)
        self.gemm = ([gemm_weights(w, wf) for w, wf in zip(self.kernels, self.kernels_flipped)]
                     if self.xp is np else None)
        scale, shift, self.bgr = preprocess_params(preprocessing, mean, std)
        self.scale = self.xp.asarray(scale, dtype=self.dtype)
        self.shift = self.xp.asarray(shift, dtype=self.dtype)

    @classmethod
    def load(cls, device="auto", path=None, dtype=np.float32, pooling="max"):
        """The real ImageNet weights from the cache (cpstyle.weights)."""
        from . import weights
        pooling = check_pooling(pooling)
        wts = weights.load(path)
        return cls(wts.layers, preprocessing=wts.preprocessing, mean=wts.mean,
                   std=wts.std, device=device, dtype=dtype, pooling=pooling)

    def with_pooling(self, pooling):
        """This net with other pools (the weight arrays are shared, not copied)."""
        if check_pooling(pooling) == self.pooling:
            return self
        other = copy.copy(self)
        other.pooling = pooling
        return other

    def with_igemm(self, precision):
        """This net with its forward's convolutions on the implicit-GEMM kernels in
        `precision` (float32 on a GPU, or under the kernel emulation): the GPU
        engine's targets then take no im2col columns either (weights shared)."""
        other = copy.copy(self)
        other.igemm_precision = precision
        return other

    @property
    def num_layers(self):
        return len(self.kernels)

    def to(self, device, dtype=None):
        """The same weights on another device/dtype."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        if resolve_device(device) == self.device and dtype == self.dtype:
            return self
        params = list(zip(self.kernels, self.biases))
        return VGG16(params, self.preprocessing, self.mean, self.std, device, dtype,
                     self.pooling)

    def forward(self, x, tap_ids, workspace=None):
        """x (N, H, W, 3) in 0..255 -> ({id: tap (N, h, w, C)}, cache).
        workspace (ops.parallel.Workspace): keep the activations in its arrays,
        overwritten by the next call with it (NumPy; the objective's loop)."""
        tap_ids = sorted(set(tap_ids))
        if tap_ids[-1] >= self.num_layers:
            raise ValueError(f"layer id {tap_ids[-1]} is beyond this net's "
                             f"{self.num_layers} conv layers")
        h = preprocess_forward_cpu(x, self.scale, self.shift, self.bgr)
        _, taps, caches = self.forward_layers(h, 0, tap_ids[-1], tap_ids, workspace)
        return taps, caches

    def forward_layers(self, h, first, last, tap_ids=(), workspace=None, pool_last=False):
        """Layers first..last from h, the input of layer `first` (the
        pre-processed image for 0), with the pools between them, and the pool
        after `last` too with pool_last (which must have one) -> (the output:
        last's or its pool's, {id: tap}, caches). The pieces of forward(), and
        what cpstyle/banded.py runs on a band of rows or on the layers below it."""
        xp, ws, dt = self.xp, workspace, self.dtype
        if pool_last and last not in layers.POOL_AFTER:
            raise ValueError(f"no pool follows layer {last}")
        caches, taps = [], {}
        for i in range(first, last + 1):
            shape = h.shape[:3] + (self.kernels[i].shape[3],)
            if self.igemm_precision is not None and dt == np.float32 and \
                    (xp is not np or cuda.emulating()):
                h, conv_cache = conv_forward_igemm(h, self.kernels[i], self.biases[i],
                                                   out=buffer(ws, xp, ("y", i), shape, dt),
                                                   precision=self.igemm_precision)
            else:
                h, conv_cache = conv_forward_cpu(h, self.kernels[i], self.biases[i],
                                                 self.kernels_flipped[i], wmat=self._gemm(i, 0),
                                                 out=buffer(ws, xp, ("y", i), shape, dt))
            if i in tap_ids:
                taps[i] = h
            pool_cache = None
            if i in layers.POOL_AFTER and (i < last or pool_last):
                if self.pooling == "avg":
                    h, c = avgpool_forward_cpu(h)
                else:
                    half = (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
                    h, c = maxpool_forward_cpu(h, out=buffer(ws, xp, ("pool", i), half, dt),
                                               argmax=buffer(ws, xp, ("arg", i), half, np.uint8))
                pool_cache = (self.pooling, c)
            caches.append((conv_cache, pool_cache))
        return h, taps, caches

    def _gemm(self, i, k):
        return None if self.gemm is None else self.gemm[i][k]

    def backward(self, dtaps, caches, workspace=None):
        """{id: dL/dtap} -> dL/dx (N, H, W, 3). workspace: as in forward, for
        the gradients in between (dL/dx itself is a new array).

        dz_i, the gradient at layer i's ReLU input, is (dh_i + dtaps[i]) ⊙ [y_i > 0]
        with dh_i from the layer above; it is finished block by block inside
        the op that makes dh_i (col2im, the max pool's backward: relu_epilogue),
        while each block is in cache, not in passes of its own."""
        dh = self.backward_layers(dtaps, caches, workspace)
        return preprocess_backward_cpu(dh, self.scale, self.bgr)

    def backward_layers(self, dtaps, caches, workspace=None, first=0, dout=None, out=None):
        """The backward of forward_layers(h, first, ...) whose caches these are:
        {id: dL/dtap} and `dout`, the gradient at the output of the last pool if
        forward_layers ran it (pool_last), -> the gradient at h (into `out`, if
        given; else a new array). The gradients between layers alternate
        between two workspace buffers (keys ("dz", 0) and ("dz", 1)): dz_i is
        spent once the layer below has its own."""
        if self.xp is np and blas.available(self.dtype):
            # the GEMMs of GramGrad's rows run inside our threads' blocks
            with blas.single_threaded():
                return self._backward_layers(dtaps, caches, workspace, first, dout, out)
        return self._backward_layers(dtaps, caches, workspace, first, dout, out)

    def _backward_layers(self, dtaps, caches, workspace, first, dout, out):
        xp, ws, dt = self.xp, workspace, self.dtype
        top = first + len(caches) - 1
        y_top = caches[-1][0][1]
        if dout is not None:
            dz = self._pool_backward(dout, caches[-1][1], y_top, dtaps.get(top), ws, top)
        elif top in dtaps and hasattr(dtaps[top], "rows"):  # a GramGrad, block by block
            dz = buffer(ws, xp, ("dz", top % 2), y_top.shape, dt)
            dz = xp.empty_like(y_top) if dz is None else dz
            in_row_blocks(lambda lo, hi: relu_backward_cpu(None, y_top, dz, dtaps[top], lo, hi),
                          y_top.shape[1], row_bytes(y_top), xp)
        elif top in dtaps:
            dz = relu_backward_cpu(dtaps[top], y_top,
                                   out=buffer(ws, xp, ("dz", top % 2), y_top.shape, dt))
        else:
            dz = xp.zeros_like(y_top)
        for i in range(top, first - 1, -1):
            (w, _), _ = caches[i - first]
            if i == first:
                return conv_input_grad_cpu(dz, w, self.kernels_flipped[i], wmat=self._gemm(i, 1),
                                           out=out)
            (_, y), pool_cache = caches[i - 1 - first]
            if pool_cache is None:
                dz = conv_input_grad_cpu(dz, w, self.kernels_flipped[i],
                                         epilogue=relu_epilogue(y, dtaps.get(i - 1)),
                                         wmat=self._gemm(i, 1),
                                         out=buffer(ws, xp, ("dz", (i - 1) % 2), y.shape, dt))
                continue
            dp = conv_input_grad_cpu(dz, w, self.kernels_flipped[i], wmat=self._gemm(i, 1),
                                     out=buffer(ws, xp, ("dp", i), dz.shape[:3] + (w.shape[2],), dt))
            dz = self._pool_backward(dp, pool_cache, y, dtaps.get(i - 1), ws, i - 1)

    def _pool_backward(self, dp, pool_cache, y, dtap, ws, i):
        """dz_i = (pool's backward of dp + dtap) ⊙ [y_i > 0], finished block by
        block (relu_epilogue), into the workspace's dz buffer of i's parity."""
        xp = self.xp
        finish = relu_epilogue(y, dtap)
        kind, c = pool_cache
        if kind == "avg":
            dz = avgpool_backward_cpu(dp, c)
            in_row_blocks(lambda lo, hi: finish(dz, lo, hi), dz.shape[1], row_bytes(dz), xp)
            return dz
        return maxpool_backward_cpu(dp, c, epilogue=finish,
                                    out=buffer(ws, xp, ("dz", i % 2), y.shape, self.dtype))


def check_pooling(pooling):
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}: use one of {POOLINGS}")
    return pooling


def random_params(channels, rng, scale=1.0):
    """Random He-initialised params for a VGG-like stack: channels = [(Cin, Cout), ...]."""
    params = []
    for cin, cout in channels:
        w = rng.standard_normal((3, 3, cin, cout)) * scale * np.sqrt(2.0 / (9 * cin))
        b = rng.standard_normal(cout) * 0.1
        params.append((w, b))
    return params

