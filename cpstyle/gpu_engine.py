"""The on-device driver (DESIGN.md §6): the tutorial's loop with every buffer
allocated once and every scalar kept on the GPU.

Per iteration, all on one stream, no host synchronisation:

    h = preprocess(x); taps = conv/pool stack (max or avg)    (kernels; im2col: + cuBLAS)
    losses[0] = Σ_l a_l·mean((F_l−P_l)²),  losses[1] = Σ_l b_l·mean((G_l−A_l)²),
    losses[2] = TV(x)                                         (two-stage reductions)
    adj = 1/(losses+1e-10),  coef = weights·adj               (device scalars;
                                        constant weights: adj = 1, coef = weights)
    dF_l = coef[0]·2a_l(F_l−P_l)/numel ;  dG_l = coef[1]·2b_l(G_l−A_l)/C²
    dF_l += 2·F_l·dG_l           (G, A symmetric; G and F·dG: kernels/gram.cu)
    grad = backward(dF) + coef[2]·∂TV/∂x
    x = step(x, grad)      gd: clip(x − grad·step/(std(grad)+1e-8), 0, 255) (std on
                           device); adam, lbfgs: cpstyle/optimizers.py's device classes

a_l, b_l: per-layer weights (sum 1); A_l: the (blended) style targets. The host
reads losses only at progress callbacks.

Capture (DESIGN.md §6): every op of iteration() is a cpstyle.cuda.launch of one of
our kernels on fixed buffers, with arguments that never change from one iteration
to the next (the optimisers' counters live on the device), so run() captures one
iteration into a CUDA graph and replays it (cpstyle.cuda.capture): one graph per
run and image size, so one per scale of a multiscale run. What capture would
refuse, and the emulator's capture mode refuses too (tests/emulation/capture.py):
allocation, host<->device copies and reads, CuPy elementwise ops, and cuBLAS
(cupy.matmul: the im2col convolutions; capture='auto', the default, therefore
captures only on the igemm ones). A failed capture warns in one line and the run
goes on with the uncaptured launches. Reference: cpstyle/objective.py,
cpstyle/optimizers.py and cpstyle/driver.py (the NumPy path).
Tests: tests/test_gpu_engine.py, tests/test_gpu_engine_emulated.py."""
import contextlib
import os
import time
import warnings

import numpy as np

from . import cuda, layers
from .backend import to_host
from .objective import StyleObjective, gram_norm_factor
from .optimizers import Settings, check_optimizer, make_device_optimizer
from .progress import LOSS_NAMES, Interrupted, Progress

PRECISIONS = ("fp32", "tf32", "bf16")
# How the convolutions run: "im2col" = a materialised im2col fed to cupy.matmul
# (ops/conv.py), "igemm" = our implicit-GEMM tensor-core kernels (ops/conv_igemm.py).
# The default stays im2col until a GPU run shows igemm correct and faster; bf16
# exists only in igemm. CPSTYLE_CONV sets the default for a process.
CONVS = ("im2col", "igemm")


def check_capture(capture):
    """capture (None: $CPSTYLE_CAPTURE '1'/'0' if set, else 'auto') -> True, False or
    'auto' (capture where every op of the iteration is known to capture: the
    igemm convolutions everywhere; CuPy's cuBLAS, which the im2col ones call,
    raises inside capture)."""
    explicit = capture is not None
    if capture is None:
        env = os.environ.get("CPSTYLE_CAPTURE") or "auto"
        capture = {"1": True, "0": False}.get(env, env)
    if not (capture is True or capture is False or (isinstance(capture, str) and capture == "auto")):
        where = "capture" if explicit else "CPSTYLE_CAPTURE"
        raise ValueError(f"{where} must be True, False or 'auto' ('1', '0' in the environment), "
                         f"got {capture!r}")
    return capture


def check_conv(conv, precision):
    """conv (None: $CPSTYLE_CONV, else im2col; bf16 always igemm) -> a name in CONVS."""
    explicit = conv is not None
    if conv is None:
        conv = os.environ.get("CPSTYLE_CONV") or "im2col"
    if conv not in CONVS:
        where = "conv" if explicit else "CPSTYLE_CONV"
        raise ValueError(f"unknown {where} {conv!r}: use one of {CONVS}")
    if precision == "bf16":
        if explicit and conv != "igemm":
            raise ValueError("precision 'bf16' runs only on the igemm convolutions")
        conv = "igemm"
    return conv


@contextlib.contextmanager
def matmul_precision(precision, xp=None):
    """TF32 tensor cores for float32 cupy.matmul inside the block (fp32 storage):
    the im2col convolutions' GEMMs (bf16 sets TF32 too). The Grams are
    kernels/gram.cu, fp32 SIMT in every precision. A no-op for NumPy (the emulated run of this engine)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
    if xp is np:
        yield
        return
    from cupy._core import _routines_linalg as linalg
    old = linalg.get_compute_type(np.float32)
    linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_FP32 if precision == "fp32"
                            else linalg.COMPUTE_TYPE_TF32)
    try:
        yield
    finally:
        linalg.set_compute_type(np.float32, old)


class GpuStyleTransfer:
    def __init__(self, model, content, style, content_layer_ids, style_layer_ids,
                 weight_content, weight_style, weight_denoise, gram_norm="none",
                 precision="fp32", content_layer_weights=None, style_layer_weights=None,
                 style_blend_weights=None, constant_weights=False, optimizer="gd",
                 step_size=10.0, conv=None, capture=None):
        """`optimizer`: a name ('gd', 'adam', 'lbfgs'; default settings) or the
        Settings of cpstyle.optimizers.check_optimizer. `style`: one image or a
        list (blended with style_blend_weights). `conv`: CONVS (check_conv).
        `capture`: replay one CUDA graph per iteration (check_capture); where it
        may (True, or 'auto' on igemm) the Grams run on our kernels, else on
        cupy.matmul, fixed here (setting .capture later does not move them)."""
        # A CPU model runs this same engine with NumPy arrays through the kernel
        # emulator (tests/emulation): the CI check of the on-device driver.
        cp = model.xp
        if model.dtype != np.float32:
            raise ValueError("the GPU engine runs float32 storage")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
        self.settings = optimizer if isinstance(optimizer, Settings) else \
            check_optimizer(optimizer, step_size)
        self.precision = precision
        self.conv = check_conv(conv, precision)
        self.capture = check_capture(capture)
        self.cp, self.model = cp, model
        with matmul_precision(precision, cp):
            # Targets once, through the reference path on the device.
            # igemm: the targets' forward too (no im2col columns at any point)
            tmodel = model.with_igemm(precision) if self.conv == "igemm" else model
            self.ref = StyleObjective(content, style, content_layer_ids, style_layer_ids,
                                      weight_content, weight_style, weight_denoise,
                                      model=tmodel, gram_norm=gram_norm,
                                      content_layer_weights=content_layer_weights,
                                      style_layer_weights=style_layer_weights,
                                      style_blend_weights=style_blend_weights,
                                      constant_weights=constant_weights)
        ref = self.ref
        self.content_ids, self.style_ids = ref.content_ids, ref.style_ids
        self.constant_weights = ref.constant_weights
        self.avg_pool = model.pooling == "avg"
        self.depth = ref.tap_ids[-1] + 1
        h, w, _ = ref.shape
        f32 = np.float32
        self.x = cp.empty((1, h, w, 3), f32)
        self.grad = cp.empty_like(self.x)
        self.prev_x = cp.empty_like(self.x)
        self.h0 = cp.empty_like(self.x)      # pre-processed input
        self.dh0 = cp.empty_like(self.x)     # its gradient
        self.acts, self.pooled, self.argmax = [], [], []
        cols = 0
        hh, ww = h, w
        for i in range(self.depth):
            cin, cout = model.kernels[i].shape[2:]
            self.acts.append(cp.empty((1, hh, ww, cout), f32))
            cols = max(cols, hh * ww * 9 * max(cin, cout))
            if i in layers.POOL_AFTER and i < self.depth - 1:
                self.pooled.append(cp.empty((1, hh // 2, ww // 2, cout), f32))
                self.argmax.append(None if self.avg_pool else
                                   cp.empty((1, hh // 2, ww // 2, cout), np.uint8))
                hh, ww = hh // 2, ww // 2
            else:
                self.pooled.append(None)
                self.argmax.append(None)
        # dL/d(conv output) after a pool's backward (gact) and dL/d(conv input)
        # (gin): each pass of the backward reads the previous one's output and
        # writes the other of two buffers (DESIGN.md §9: two of the largest layer,
        # not a gradient per layer).
        self.gact, self.gin = [None] * self.depth, [None] * self.depth
        writes = []  # (list, layer, shape) in the backward's order
        for i in range(self.depth - 1, -1, -1):
            shape = self.acts[i].shape
            if self.pooled[i] is not None:
                writes.append((self.gact, i, shape))
            writes.append((self.gin, i, shape[:3] + (model.kernels[i].shape[2],)))
        size = max(int(np.prod(sh)) for _, _, sh in writes)
        self._pingpong = (cp.empty(size, f32), cp.empty(size, f32))
        self._gin_buffer = {}  # layer -> which of the two holds gin[layer]
        for k, (lst, i, sh) in enumerate(writes):
            lst[i] = self._pingpong[k % 2][:int(np.prod(sh))].reshape(sh)
            if lst is self.gin:
                self._gin_buffer[i] = k % 2
        # per conv: (forward, backward) on the igemm kernels? Where the tuner's
        # table says im2col was faster on this GPU, that conv keeps im2col.
        # Their tiles (from the same table) are fixed here, with one split-K work
        # buffer for the largest need: no allocation inside the loop.
        from .ops.conv_igemm import prefers_im2col, select_tiles, splitk_work_size
        self.igemm, self.tiles = [], []
        split_work = 0
        hh, ww = h, w
        for i in range(self.depth):
            cin, cout = model.kernels[i].shape[2:]
            if self.conv == "igemm":
                px = hh * ww
                self.igemm.append((not prefers_im2col("fwd", precision, cin, cout, px),
                                   not prefers_im2col("bwd", precision, cout, cin, px)))
                self.tiles.append((select_tiles("fwd", precision, cin, cout, px),
                                   select_tiles("bwd", precision, cout, cin, px)))
                split_work = max(split_work, splitk_work_size(self.tiles[i][0], cout, px),
                                 splitk_work_size(self.tiles[i][1], cin, px))
            else:
                self.igemm.append((False, False))
                self.tiles.append((None, None))
            if i in layers.POOL_AFTER:
                hh, ww = hh // 2, ww // 2
        self.split_work = cp.empty(split_work, f32) if split_work else None
        if not all(f and b for f, b in self.igemm):  # the implicit GEMM needs neither
            self.cols = cp.empty(cols, f32)
            self.dz = cp.empty(max(a.size for a in self.acts), f32)
        self.losses = cp.zeros(3, f32)
        self.adj = cp.zeros(3, f32)
        self.coef = cp.zeros(3, f32)
        self.weights = cp.asarray(ref.weights, dtype=f32)
        if self.constant_weights:  # fixed for the whole run: set once
            self.adj[...] = 1.0
            self.coef[...] = self.weights
        self.content = []   # (id, target, tap grad buffer, mse scale, grad k)
        for i, a_l in zip(self.content_ids, ref.content_layer_weights):
            p = ref.content_targets[i]
            self.content.append((i, p, cp.empty_like(p), a_l / p.size, 2.0 * a_l / p.size))
        self.style = []     # (id, target, G, dG, dF, norm, mse scale, grad k); dF: a view
                            # into the backward's ping-pong buffers (see _style_grad_view)
        # The Grams on our kernels (kernels/gram.cu) where run() may capture, on
        # cupy.matmul (cuBLAS, the measured form) elsewhere: ops/gram.py
        self.gram_gemm = "kernel" if self._may_capture() else "matmul"
        self.gram_work = None
        if self.gram_gemm == "kernel":
            from .ops.gram import gram_work_size
            gram_floats = [gram_work_size(a.shape[1] * a.shape[2], a.shape[3])
                           for a in (self.acts[i] for i in self.style_ids)]
            self.gram_work = cp.empty(max(gram_floats, default=1), f32)  # split-K partials
        for i, b_l in zip(self.style_ids, ref.style_layer_weights):
            a = ref.style_targets[i]
            c = a.shape[-1]
            norm = gram_norm_factor(gram_norm, self.acts[i].shape)
            self.style.append((i, a, cp.empty_like(a), cp.empty_like(a),
                               self._style_grad_view(i), norm,
                               b_l / (c * c), 2.0 * b_l / (c * c)))
        self.partial = cp.empty(4096, np.float64)
        self.optimizer = make_device_optimizer(self.settings, self.x)
        self.marks = None  # a list: iteration() records (label, event) after each stage

    def _style_grad_view(self, i):
        """Where F·dG of style layer i goes: one of the two ping-pong buffers, as
        layer i's activation. Layer i's conv backward writes gin[i] into one of
        them, reading dh from the other: with a dh there (from above, or the
        content's buffer), F·dG goes into gin[i]'s buffer and is added to dh
        before the conv overwrites it; with none, into the other buffer, which
        then is dh."""
        shape = self.acts[i].shape
        k = self._gin_buffer[i]
        has_dh = i < self.depth - 1 or i in self.content_ids
        buf = self._pingpong[k if has_dh else 1 - k]
        return buf[:int(np.prod(shape))].reshape(shape)

    def _mark(self, label):
        if self.marks is not None:
            ev = self.cp.cuda.Event()
            ev.record()
            self.marks.append((label, ev))

    def _cols(self, rows, width):
        return self.cols[:rows * width].reshape(rows, width)

    def iteration(self, step_size=None):
        """One step of the loop: evaluate at x, then the optimiser's step (gd
        and lbfgs take `step_size` if given); enqueues kernels only."""
        self.evaluate()
        if step_size is not None and hasattr(self.optimizer, "step_size"):
            self.optimizer.step_size = float(step_size)
        self.optimizer.step(self.x, self.grad)
        self._mark("update")

    def evaluate(self):
        """losses, adj, coef and grad at the current x; enqueues kernels only."""
        from .ops.conv import conv_backward_gpu, conv_forward_gpu
        from .ops.conv_igemm import conv_backward_igemm, conv_forward_igemm
        from .ops.gram import gram_backward_accumulate_gpu, gram_forward_gpu
        from .ops.loss import (adj_weights_gpu, denoise_backward_accumulate_gpu,
                               denoise_sum_gpu, mse_sum_gpu, scaled_diff_gpu)
        from .ops.pool import (avgpool_backward_gpu, avgpool_forward_gpu,
                               maxpool_backward_gpu, maxpool_forward_gpu)
        from .ops.preprocess import preprocess_backward_gpu, preprocess_forward_gpu
        cp, m = self.cp, self.model
        self._mark("start")
        preprocess_forward_gpu(self.x, m.scale, m.shift, m.bgr, out=self.h0)
        h = self.h0
        for i in range(self.depth):
            if self.igemm[i][0]:
                conv_forward_igemm(h, m.kernels[i], m.biases[i], out=self.acts[i],
                                   precision=self.precision, tiles=self.tiles[i][0],
                                   work=self.split_work)
            else:
                rows = h.shape[1] * h.shape[2]
                conv_forward_gpu(h, m.kernels[i], m.biases[i], out=self.acts[i],
                                 cols=self._cols(rows, 9 * h.shape[3]), wflip=m.kernels_flipped[i])
            h = self.acts[i]
            self._mark(f"conv forward {i}")
            if self.pooled[i] is not None:
                if self.avg_pool:
                    avgpool_forward_gpu(h, out=self.pooled[i])
                else:
                    maxpool_forward_gpu(h, out=self.pooled[i], argmax=self.argmax[i])
                h = self.pooled[i]
                self._mark(f"pool forward {i}")
        # losses and adj weights, on the device
        for k, (i, p, _, scale, _) in enumerate(self.content):
            mse_sum_gpu(self.acts[i], p, self.losses[0:1], scale, accumulate=k > 0,
                        partial=self.partial)
        for k, (i, a, g, _, _, norm, scale, _) in enumerate(self.style):
            gram_forward_gpu(self.acts[i], norm, out=g, work=self.gram_work,
                             gemm=self.gram_gemm)
            mse_sum_gpu(g, a, self.losses[1:2], scale, accumulate=k > 0, partial=self.partial)
        denoise_sum_gpu(self.x, self.losses[2:3], partial=self.partial)
        if not self.constant_weights:
            adj_weights_gpu(self.losses, self.weights, adj=self.adj, coef=self.coef)
        self._mark("losses")
        # tap gradients, scaled by the adj weights, added in during one backward pass
        content = {i: (p, d, k) for i, p, d, _, k in self.content}
        style_dg = {}
        for i, a, g, dg, df, norm, _, k in self.style:
            # dL/dF = norm·F·(dG + dGᵀ) = 2·norm·F·dG: G and A are symmetric;
            # F·dG itself is made in the backward, into a ping-pong buffer
            scaled_diff_gpu(g, a, self.coef[1:2], 2.0 * norm * k, out=dg)
            style_dg[i] = (dg, df)
        dh = None
        for i in range(self.depth - 1, -1, -1):
            if self.pooled[i] is not None:
                if self.avg_pool:
                    dh = avgpool_backward_gpu(dh, self.acts[i].shape, out=self.gact[i])
                else:
                    dh = maxpool_backward_gpu(dh, (self.argmax[i], self.acts[i].shape),
                                              out=self.gact[i])
                self._mark(f"pool backward {i}")
            if i in content:  # into dh where there is one (a kernel, not `dh +=`)
                p, d, k = content[i]
                dh = scaled_diff_gpu(self.acts[i], p, self.coef[0:1], k,
                                     out=d if dh is None else dh, accumulate=dh is not None)
            if i in style_dg:
                dg, df = style_dg[i]
                f = self.acts[i].reshape(-1, dg.shape[-1])
                if self.gram_gemm == "kernel":  # F·dG added into dh by the kernel
                    if dh is None:
                        dh = df
                    gram_backward_accumulate_gpu(dh.reshape(f.shape), f, dg[0],
                                                 accumulate=dh is not df)
                else:  # cuBLAS into df (the buffer the conv writes next), then added
                    cp.matmul(f, dg[0], out=df.reshape(f.shape))
                    if dh is None:
                        dh = df
                    else:
                        dh += df
                self._mark(f"gram backward {i}")
            if self.igemm[i][1]:
                dh = conv_backward_igemm(dh, (m.kernels[i], self.acts[i]), m.kernels_flipped[i],
                                         out=self.gin[i], precision=self.precision,
                                         tiles=self.tiles[i][1], work=self.split_work)
            else:
                rows = dh.shape[1] * dh.shape[2]
                dh = conv_backward_gpu(dh, (m.kernels[i], self.acts[i]), m.kernels_flipped[i],
                                       out=self.gin[i], cols=self._cols(rows, 9 * dh.shape[3]),
                                       dz=self.dz[:dh.size].reshape(dh.shape))
            self._mark(f"conv backward {i}")
        preprocess_backward_gpu(dh, m.scale, m.bgr, out=self.grad)
        denoise_backward_accumulate_gpu(self.grad, self.x, self.coef[2:3])
        self._mark("preprocess backward + TV")

    def evaluate_losses(self):
        """Forward + losses + adj at the current x (for the last report)."""
        self.evaluate()
        return self.losses, self.adj

    def run(self, x0, num_iterations, step_size=None, callback=None, callback_every=10,
            report=None):
        """x0 (H, W, 3) -> the image after num_iterations steps (a fresh (H, W, 3)
        array). The optimiser's state starts afresh. `report`: extra Progress
        fields (the multiscale driver's scale and size). With capture, the first
        iteration runs as launches (every kernel compiled and loaded), the second
        is captured into a graph and every later one replays it."""
        cp = self.cp
        self.optimizer.reset()
        if step_size is not None and hasattr(self.optimizer, "step_size"):
            self.optimizer.step_size = float(step_size)
        self._extra = dict(report or {})
        self.x[...] = cp.asarray(x0, dtype=np.float32)[None]
        self.graph = None
        want = self.wants_capture()
        t0 = time.perf_counter()
        it = 0
        with matmul_precision(self.precision, cp):
            try:
                while it < num_iterations:
                    report = callback is not None and it % callback_every == 0
                    if report:
                        self.prev_x[...] = self.x  # device-to-device, no sync
                    if self.graph is None and want and it > 0:
                        want = False
                        self.graph = self._capture()
                    if self.graph is not None:
                        self.graph.launch()
                    else:
                        self.iteration()           # losses/adj: those of x before the step
                    if report:
                        self._report(callback, it, num_iterations, t0, self.prev_x[0])
                    it += 1
                if callback is not None:
                    self.evaluate_losses()
                    self._report(callback, it, num_iterations, t0, self.x[0])
            except KeyboardInterrupt:
                raise Interrupted(to_host(self.x[0]), it) from None
        return self.x[0].copy()

    def _may_capture(self):
        """capture=True, or 'auto' with every conv on igemm."""
        if self.capture is False:
            return False
        return self.capture is True or all(f and b for f, b in self.igemm)

    def wants_capture(self):
        """Will run() capture? capture=True: yes; 'auto': where every conv is
        igemm (and no per-stage marks are wanted: they are events between launches)."""
        return self.marks is None and self._may_capture()

    def _capture(self):
        """One iteration as a graph (cpstyle.cuda.capture; nothing runs), or None
        with one warning line where capture fails: the run goes on uncaptured."""
        try:
            return cuda.capture(self.iteration, self.cp)
        except Exception as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            warnings.warn(f"CUDA-graph capture failed, running uncaptured: "
                          f"{type(e).__name__}: {msg}", RuntimeWarning, stacklevel=3)
            return None

    def _report(self, callback, it, n, t0, image):
        losses = to_host(self.losses)  # the one sync point
        adj = to_host(self.adj)
        callback(Progress(it, n, dict(zip(LOSS_NAMES, map(float, losses))),
                          dict(zip(LOSS_NAMES, map(float, adj))), image.copy(),
                          time.perf_counter() - t0, objective=self.ref.potential(losses),
                          captured=getattr(self, "graph", None) is not None and it < n,
                          **getattr(self, "_extra", {})))
