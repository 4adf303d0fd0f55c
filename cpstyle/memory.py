"""How much memory a NumPy (CPU) `style_transfer` run needs, before anything is
allocated (issue #13, step one: the CPU backend). On the GPU only the engine's own
buffers are modelled (estimate_gpu_engine, at the end); the weights, the targets'
forward and CuPy's pool are not yet, and GPU runs are not checked.

The model counts the arrays the code allocates, from the shapes alone (float32,
4 bytes; the pools' argmax 1 byte), for content size H x W at the largest scale,
with the walk of VGG-16's layers 0..top (top = the deepest content or style
layer; P_i = h_i·w_i pixels at layer i, C_i channels, pools floor-halve):

  kept between iterations (the objective's Workspace, cpstyle/ops/parallel.py)
    y_i                    Σ_i P_i·C_i          conv outputs (the ReLU masks)
    dz                     max over even i + max over odd i of P_i·C_i: the
                           backward's two alternating gradient buffers
    pool_p, dp_p, arg_p    (2·4 + 1)·Σ_p P_p/4·C_p   pools before top (max pooling)
    dtap_s                 threads · 2 MB       style layers' Gram backward, a
                                                block of rows at a time (GramGrad;
                                                Σ_s P_s·C_s without ops/blas.py)
    content targets        Σ_c P_c·C_c
    scratch "cols"         max P_i·9·C          the one-GEMM forms (conv1_1's
                                                backward to 3 channels, 27 floats/px;
                                                layers under ROWS_MIN_PIXELS)
    unfold blocks          threads · max (rows+2)·w·3·C   the row-shifted form
    BLAS buffers           threads · BLAS_BUFFER_BYTES   OpenBLAS's packing (measured)
    x0, x                  2·3·P
    optimiser              gd none; adam m, v (2·3·P); lbfgs x_prev, g_prev and
                           min(n−1, history) pairs s, y (6·P each)
  plus the largest transient on top of that, among
    content loss/gradient  2·max P_c·C_c, then Σ_c P_c·C_c + max P_c·C_c
    end of the backward    Σ_c P_c·C_c + 2·3·P (dL/dh, the pre-processing's dx)
    total variation        Σ_c P_c·C_c + 5·3·P (grad, dx, two signs, a difference)
    the step               gd 3·3·P; adam 7·3·P; lbfgs 8·3·P (q, r, a product,
                           two float64 copies in dot64, the gradient)
    (total variation: in blocks of rows above ops/loss.TV_BLOCKS_FROM floats)
  and, while the objective is built (StyleObjective.__init__), the forward of the
  content and then of each style image without a workspace: Σ P_i·C_i + the
  argmaxes (+ one pool output or the pre-processed input at a time), the previous
  forward's cache still bound (`taps, _ = ...`) while the next runs; in a
  multiscale run, beside the previous scale's kept arrays (its objective lives
  until the new one is made).

Per content pixel, all 13 layers (the tutorial): y 270 floats, dz 64 + 64 (the
two alternating buffers), pools 30·(2 floats + 1 byte), conv1_1's backward
columns 27, conv3_1's content target 16, images 6: about 2.2 kB; the quality
preset (top conv5_1, five style layers, L-BFGS with 10 pairs) about 2.4 kB. The
style layers' gradients are made block by block where the backward adds them
(ops/gram.GramGrad; a whole array per layer, 270 floats per pixel for the
tutorial, without ops/blas.py). So 4096² needs about 40 GB (quality) and 37 GB
(tutorial) at once; in bands after conv3_3 of 256 rows about 18 and 16 GB,
after conv4_3 about 14 and 11 GB (the L-BFGS pairs, 2.4 GB at 4096², are
whole-image state).

In bands (cpstyle/banded.py, memory_plan; _iteration_parts with bands): the same terms for the
tail (layers split+1..top) only, the head's output and its gradient whole, the
content targets and images as above, and the head's arrays (y, the two dz, pools,
tap gradients) for the tallest window: own rows + 2 margins, at full width.
choose_plan takes the cheapest plan that fits (band_cost: the head's forward
runs twice over each window) or a leaner one within COST_SLACK of it.

The figure is the peak above the process's state once the weights are loaded
(the input images already in memory); `weights_cpu()` is what loading the model
adds. Checked against measured peak RSS by bench/memory.py
(bench/results/memory-cpu-*.json). Tests: tests/test_memory.py."""
import collections
import math

import numpy as np

from . import layers

F32 = 4
# OpenBLAS's own packing buffers, per thread that runs GEMMs (ours run one
# single-threaded GEMM each: ops/blas.py): not an array of ours, so not derived
# from shapes. Measured in isolation (a fresh process, the weights' GEMM check
# done, then one 4096x1536 @ 1536x512 sgemm): +7.9 MB on the main thread's first
# call, +4.3 MB on a second thread's (OpenBLAS 0.3.31, Haswell kernels, with
# transparent huge pages: 2 MB granules). The model takes 6 MB per thread.
BLAS_BUFFER_BYTES = 6 << 20


class NotEnoughMemory(MemoryError):
    """The run does not fit in the memory that is free (raised before the weights load)."""


def _unfold_rows(h, w, cout, threads):
    """Rows of one row-shifted block (conv_rows_cpu): parallel.in_row_blocks."""
    from .ops.parallel import BLOCK_BYTES
    step = max(1, BLOCK_BYTES // max(1, w * cout * F32))
    chunk = h if h < 2 * threads else math.ceil(h / threads)
    return min(step, chunk)


def _conv_work(h, w, cin, cout, threads, rows_form_ok):
    """(scratch 'cols' floats, unfold block floats per thread) of one conv's
    forward (cin -> cout) at h x w; the backward is the same call with cin and
    cout swapped."""
    from .ops.conv import ROWS_FORM, ROWS_MIN_COLUMNS, ROWS_MIN_PIXELS
    p = h * w
    if rows_form_ok and ROWS_FORM and cout >= ROWS_MIN_COLUMNS and p >= ROWS_MIN_PIXELS:
        return 0, (_unfold_rows(h, w, cout, threads) + 2) * w * 3 * cin
    return p * 9 * min(cin, cout), 0


def _winograd_bytes(hw, top, threads):
    """The Winograd form's scratch (ops/winograd.py) over the convs of a walk
    at hw that take it (ops/conv.uses_winograd), both directions: per thread
    the largest padded rows, x-transformed rows, V and M blocks of its block
    path (tiles_per_block rows, at most its share), or, for images of too few
    tiles, V and M whole (the _by_entries path). Scratch buffers only grow, so
    each name's largest counts."""
    from .ops import winograd
    from .ops.conv import uses_winograd
    big = {}
    for i, h, w, cin, cout, pooled in _walk(hw, top):
        for ci, co in ((cin, cout), (cout, cin)):
            if not uses_winograd(ci, co, h * w, np.float32):
                continue
            th, tw = -(-h // 2), -(-w // 2)
            if th * tw < winograd.MIN_TILES * threads:
                nb, whole = -(-th // threads), True
            else:
                nb = min(winograd.tiles_per_block(1, tw, ci, co, F32), -(-th // threads))
                whole = False
            per = dict(pad=(2 * nb + 2) * (2 * tw + 2) * ci, cols=4 * (2 * nb + 2) * tw * ci)
            if whole:
                per.update(v=16 * th * tw * ci / threads, m=16 * th * tw * co / threads)
            else:
                per.update(v=16 * nb * tw * ci, m=16 * nb * tw * co)
            for k, v in per.items():
                big[k] = max(big.get(k, 0), v)
    return int(threads * sum(big.values()) * F32)


def _walk(hw, top, channels=layers.LAYER_CHANNELS):
    """[(i, h, w, cin, cout, pooled after)] for layers 0..top at content size hw."""
    h, w = hw
    out = []
    for i in range(top + 1):
        cin, cout = channels[i]
        pooled = i in layers.POOL_AFTER and i < top
        out.append((i, h, w, cin, cout, pooled))
        if pooled:
            h, w = h // 2, w // 2
    return out


def _threads():
    from .ops.parallel import workers
    return workers()


def _rows_form_ok():
    from .ops import blas
    return blas.available(np.float32)


def _forward_bytes(hw, top, threads, rows_ok):
    """A forward without a workspace (the objective's targets): every y_i and
    argmax (held in the cache list until it returns), the pre-processed input or
    a pool's output (the next conv's input, one at a time); and the (cols,
    unfold) work of its convs. -> (held bytes, transient bytes, cols, unfold)."""
    total = 0
    inputs = [3 * hw[0] * hw[1] * F32]
    cols = unfold = 0
    for i, h, w, cin, cout, pooled in _walk(hw, top):
        total += h * w * cout * F32
        if pooled:
            total += (h // 2) * (w // 2) * cout  # argmax, uint8
            inputs.append((h // 2) * (w // 2) * cout * F32)
        c, u = _conv_work(h, w, cin, cout, threads, rows_ok)
        cols, unfold = max(cols, c), max(unfold, u)
    return total, max(inputs), cols, unfold


def _iteration_parts(hw, content_ids, style_ids, optimizer, history, iterations,
                     threads, rows_ok, bands=None):
    """(kept: {name: bytes}, transients: {name: bytes}, cols floats, unfold floats)
    of the iteration loop at content size hw. In `bands` (cpstyle/banded.py)
    the layers below the head (split+1..top) are kept as the whole evaluation
    keeps its layers, the head's output and its gradient whole, and the head's
    arrays at the size of the largest window (own rows + 2 margins)."""
    split = -1 if bands is None else bands[0]
    top = max(list(content_ids) + list(style_ids))
    H, W = hw
    img = 3 * H * W * F32
    kept = dict(activations=0, gradients=0, pools=0, style_grads=0, content_targets=0,
                style_targets=0)
    tap = {}
    cols = unfold = 0

    def work(h, w, cin, cout):  # forward, backward to the input
        nonlocal cols, unfold
        for ci, co in ((cin, cout), (cout, cin)):
            c, u = _conv_work(h, w, ci, co, threads, rows_ok)
            cols, unfold = max(cols, c), max(unfold, u)

    dz = [0, 0]  # the backward's two alternating gradient buffers (layer parity)
    for i, h, w, cin, cout, pooled in _walk(hw, top):
        a = h * w * cout * F32
        tap[i] = a
        if i in style_ids:
            kept["style_targets"] += cout * cout * F32
        if i <= split:
            continue
        kept["activations"] += a  # y_i
        dz[i % 2] = max(dz[i % 2], a)
        if pooled:
            q = (h // 2) * (w // 2) * cout
            kept["pools"] += q * (2 * F32 + 1)  # pool output, dp, argmax
        if i in style_ids:
            # ops/gram.GramGrad makes its rows block by block (with ops/blas.py);
            # without it, gram_backward_cpu fills a whole array per layer
            # (one scratch per thread: the largest layer's block counts)
            kept["style_grads"] = (max(kept["style_grads"], _gram_rows(h, w, cout, threads))
                                   if rows_ok else kept["style_grads"] + a)
        work(h, w, cin, cout)
    kept["gradients"] = sum(dz)
    end = 2 * img  # the backward's dL/dh and the pre-processing's dx
    if bands is not None:
        from .banded import margin, step
        rows, D = bands[1], step(split)
        kept["head output"] = 2 * (H // D) * (W // D) * layers.LAYER_CHANNELS[split][1] * F32
        win = min(H, rows + 2 * margin(split))
        window = 2 * 3 * win * W * F32  # the window's dh and dx
        dz = [0, 0]
        for i, h, w, cin, cout, pooled in _walk((win, W), split):
            a = h * w * cout * F32
            window += a  # y
            dz[i % 2] = max(dz[i % 2], a)
            if i in content_ids or i in style_ids:
                window += a  # the tap's gradient on the window
            if i in layers.POOL_AFTER:
                window += (h // 2) * (w // 2) * cout * (2 * F32 + 1)  # out, dp or dhead, argmax
            work(h, w, cin, cout)
        kept["band window"] = window + sum(dz)
        end = img + 3 * win * W * F32  # the grad, a window's dx
    content = [tap[i] for i in content_ids]
    kept["content_targets"] = sum(content)
    kept["images"] = 2 * img  # x0 and x
    pairs = min(max(iterations - 1, 0), history)
    kept["optimizer"] = {"gd": 0, "adam": 2 * img,
                         "lbfgs": (2 + 2 * pairs) * img if iterations > 0 else 0}[optimizer]
    dtaps = sum(tap[i] for i in content_ids if i > split)
    trans = {
        "content loss": 2 * max(content),
        "content gradient": dtaps + max(content),
        "backward end": dtaps + end,
        "total variation": dtaps + _tv_bytes(img),
        "step": {"gd": 3, "adam": 7, "lbfgs": 8}[optimizer] * img if iterations > 0 else 0,
    }
    return kept, trans, cols, unfold


def _tv_bytes(img):
    """The total variation's temporaries (ops/loss.py): grad, dx, two signs, a
    difference, image-sized; in blocks of rows for large images (the grad, and
    a difference, its sign and a product a block each)."""
    from .ops.loss import TV_BLOCK_FLOATS, TV_BLOCKS_FROM
    if img // F32 > TV_BLOCKS_FROM:
        return img + 3 * TV_BLOCK_FLOATS * F32
    return 5 * img


def _gram_rows(h, w, c, threads):
    """GramGrad's per-thread scratch (ops/gram.py) for a style layer: the rows
    of one block of the op it is added in, about parallel.BLOCK_BYTES (twice,
    for the largest of those ops' blocks), at most the layer."""
    from .ops.parallel import BLOCK_BYTES
    return threads * min(2 * BLOCK_BYTES, h * w * c * F32)


def _band_forward_bytes(hw, top, threads, rows_ok, bands):
    """_forward_bytes for a forward in bands: the head's windows (their own
    Workspace, gone when the bands are done) beside the head's output,
    then the tail's forward on it whole. -> (held, transient, cols, unfold)."""
    from .banded import margin, step
    split, rows = bands
    H, W = hw
    D = step(split)
    head = (H // D) * (W // D) * layers.LAYER_CHANNELS[split][1] * F32
    win = min(H, rows + 2 * margin(split))
    window, _, c1, u1 = _forward_bytes((win, W), split, threads, rows_ok)
    window += (win // D) * (W // D) * layers.LAYER_CHANNELS[split][1] * (F32 + 1)
    tail, t_in, c2, u2 = 0, 0, 0, 0
    for i, h, w, cin, cout, pooled in _walk(hw, top):
        if i <= split:
            continue
        tail += h * w * cout * F32
        if pooled:
            tail += (h // 2) * (w // 2) * cout
            t_in = max(t_in, (h // 2) * (w // 2) * cout * F32)
        c, u = _conv_work(h, w, cin, cout, threads, rows_ok)
        c2, u2 = max(c2, c), max(u2, u)
    held = head + tail
    return held, max(window + 3 * win * W * F32, t_in), max(c1, c2), max(u1, u2)


def _usable(bands, hw, top):
    """bands if they apply at size hw (banded.check_bands), else None (whole)."""
    if bands is None:
        return None
    from .banded import check_bands
    try:
        return check_bands(bands, top, hw[0])
    except ValueError:
        return None


def estimate_cpu_parts(content_hw, style_hws, content_layer_ids=(4,),
                       style_layer_ids=tuple(range(13)), optimizer="gd", lbfgs_history=10,
                       num_iterations=120, scales=None, threads=None, bands=None):
    """-> {part: bytes} and 'peak'; see the module docstring. content_hw: the
    content's (H, W) at the last scale; style_hws: each style image's (H, W) as the
    run sees it there; scales: a multiscale run's sizes, coarse to fine (the last
    is content_hw); num_iterations: per scale (the L-BFGS history fills with them);
    bands: (split, rows), the evaluation in bands (cpstyle/banded.py) at every
    scale and for every image where they apply."""
    from .optimizers import DEFAULT_LBFGS_HISTORY
    content_ids = sorted(set(content_layer_ids))
    style_ids = sorted(set(style_layer_ids))
    top = max(content_ids + style_ids)
    history = DEFAULT_LBFGS_HISTORY if lbfgs_history is None else lbfgs_history
    threads = _threads() if threads is None else threads
    rows_ok = _rows_form_ok()
    content_hw = tuple(int(v) for v in content_hw[:2])

    def iteration(hw):
        return _iteration_parts(hw, content_ids, style_ids, optimizer, history,
                                num_iterations, threads, rows_ok, _usable(bands, hw, top))

    def forward(hw, ids):
        b = _usable(bands, hw, top)
        if b is None:
            return _forward_bytes(hw, max(ids), threads, rows_ok)
        return _band_forward_bytes(hw, max(ids), threads, rows_ok, b)

    kept, trans, cols, unfold = iteration(content_hw)
    # the targets: the content's forward, then each style's (its taps only
    # while its Grams are made)
    fwd_c, in_c, c1, u1 = forward(content_hw, content_ids)
    init = fwd_c + in_c
    for shw in style_hws:
        fwd_s, in_s, c2, u2 = forward(tuple(shw[:2]), style_ids)
        init = max(init, kept["content_targets"] + fwd_s + in_s)
        cols, unfold = max(cols, c2), max(unfold, u2)
    cols, unfold = max(cols, c1), max(unfold, u1)
    work = (cols * F32 + threads * (unfold * F32 + BLAS_BUFFER_BYTES)
            + _winograd_bytes(content_hw, top, threads))
    previous = 0
    if scales is not None and len(scales) > 1:
        pk, _, pc, pu = iteration(tuple(scales[-2][:2]))
        previous = sum(pk.values())
    kept_total = sum(kept.values())
    parts = dict(kept)
    parts["work buffers"] = work
    parts["largest transient"] = max(trans.values())
    parts["targets"] = init
    parts["previous scale"] = previous
    parts["peak"] = work + max(kept_total + parts["largest transient"], init + previous)
    return parts


def estimate_cpu(content_hw, style_hws, content_layer_ids=(4,),
                 style_layer_ids=tuple(range(13)), optimizer="gd", lbfgs_history=10,
                 num_iterations=120, scales=None, threads=None, bands=None):
    """Peak bytes above the state after the weights load that a NumPy
    style_transfer run needs (estimate_cpu_parts' 'peak')."""
    return estimate_cpu_parts(content_hw, style_hws, content_layer_ids, style_layer_ids,
                              optimizer, lbfgs_history, num_iterations, scales,
                              threads, bands)["peak"]


def weights_cpu(channels=layers.LAYER_CHANNELS):
    """Bytes that loading VGG-16 on the CPU keeps (cpstyle/vgg16.py): the kernels
    (the file's arrays themselves: to_device copies no float32 array), their
    flipped copies, the GEMM operands that are copies (gemm_weights: the
    backward's where Cin <= Cout, the forward's where Cout <= Cin), the biases,
    and the Winograd form's transformed kernels (16·Cin·Cout each way, where
    ops/conv.py may take it).
    Importing h5py adds about 12 MB more (bench/memory.py measures the whole load)."""
    from .ops import blas
    from .ops.conv import WINOGRAD, WINOGRAD_MIN_CHANNELS
    wino = WINOGRAD and blas.available(np.float32)
    total = 0
    for cin, cout in channels:
        k = 9 * cin * cout * F32
        total += 2 * k + cout * F32  # the kernel, the flipped kernel, the bias
        total += k if cin <= cout else 0
        total += k if cout <= cin else 0
        if wino and min(cin, cout) >= WINOGRAD_MIN_CHANNELS:
            total += 2 * 16 * cin * cout * F32  # the Winograd form's U, each way
    return total


def _meminfo(key):
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    parts = line.split()
                    return int(parts[1]) * (1024 if parts[2:3] == ["kB"] else 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_cpu():
    """MemAvailable from /proc/meminfo in bytes; None where it is unknown."""
    return _meminfo("MemAvailable")


def total_cpu():
    """MemTotal from /proc/meminfo in bytes; None where it is unknown."""
    return _meminfo("MemTotal")


def fmt(n):
    """Bytes as a short human figure."""
    for unit, k in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def resize_hw(hw, long_side):
    """(H, W) scaled so the long side is long_side (rounded, as images.resize)."""
    h, w = hw
    f = long_side / max(h, w)
    return max(1, round(h * f)), max(1, round(w * f))


def largest_fitting(budget, estimate_at, hw, lo=layers.MIN_IMAGE_SIZE):
    """The largest long side L (px, <= max(hw)) whose estimate_at(L) <= budget, by
    bisection (the estimate grows with L); None if not even `lo` fits."""
    hi = max(hw)
    if estimate_at(lo) > budget:
        return None
    if estimate_at(hi) <= budget:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if estimate_at(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


# The check asks for the estimate plus this share: bench/memory.py measured runs
# up to 3.0% above the model (temporaries it does not count), so a run sized
# exactly at the largest fit would otherwise be cut that fine.
HEADROOM = 1.05


def _refuse(hw, need, free, fit):
    where = (f"the largest content that fits is {fit} px on the long side (--content-size {fit})"
             if fit is not None else "not even the smallest content fits")
    return NotEnoughMemory(f"not enough memory: a {hw[1]}x{hw[0]} run needs about "
                           f"{fmt(need)}, {fmt(free)} is available; {where}")


def check_cpu(estimate_at, hw, include_weights=True, available=None):
    """Raise NotEnoughMemory if estimate_at(max(hw)) (+ the weights, if they are
    still to load) exceeds the available memory; nothing if it fits or the free
    memory is unknown. estimate_at(L): the run's peak with the content's long
    side L (plan_estimator's includes HEADROOM). -> (needed, available) or None."""
    free = available_cpu() if available is None else available
    if free is None:
        return None
    extra = weights_cpu() if include_weights else 0
    need = estimate_at(max(hw)) + extra
    if need <= free:
        return need, free
    raise _refuse(hw, need, free, largest_fitting(free - extra, estimate_at, hw))


def style_hws_at(plan, hw):
    """Each style image's (H, W) as a run of `plan` (driver.check_arguments) sees
    it at content size hw (style_scale resizes it to the content's long side)."""
    out = []
    for s in plan.styles:
        h, w = s.shape[:2]
        if plan.style_scale is not None:
            h, w = resize_hw((h, w), plan.style_scale * max(hw))
        out.append((h, w))
    return out


def plan_estimator(plan, headroom=HEADROOM, bands=None):
    """-> estimate_at(L): headroom x the peak of `plan`'s run (CPU; plan from
    driver.check_arguments, its tap ids included) with the content's long side L
    (the last scale's; a multiscale run's previous scale is 1/√2 of it), whole
    or in `bands`: what the preflight and --content-size max ask to be free
    (bench/memory.py compares the model itself: headroom 1)."""
    last = plan.sizes[-1]

    def estimate_at(long_side):
        hw = resize_hw(last, long_side)
        scales = None
        if len(plan.sizes) > 1:
            scales = [resize_hw(hw, max(hw) / math.sqrt(2)), hw]
        return headroom * estimate_cpu(hw, style_hws_at(plan, hw), plan.content_ids,
                                       plan.style_ids, plan.settings.name,
                                       plan.settings.history, plan.per_scale, scales,
                                       bands=bands)

    return estimate_at


# ---- memory plans: the whole evaluation, or the head in bands (cpstyle/banded.py) ----

MEMORY_PLANS = ("auto", "whole", "lean")
# own image rows per band that the planner tries (at least two margins each)
BAND_ROWS = (1024, 512, 256, 128, 64)
# choose_plan takes the leanest plan within this share of the cheapest's compute
COST_SLACK = 0.02
# the time of a conv on the Winograd form per multiply-add of the direct one
# (bench/results/2026-11-29-cpu-winograd-0e29ae4c: 0.54..0.78 per layer)
WINOGRAD_TIME = 0.6
# On the machine's own memory (no `available` given) choose_plan keeps a run
# within this share of the RAM when some plan fits there: a run that takes all
# of it leaves nothing to the system and the user's other programs. Only when
# none does it take the plan that needs least of what is available.
RAM_SHARE = 0.8

Choice = collections.namedtuple("Choice", "bands need free cost whole")
Choice.__doc__ = """The memory plan of a run: bands None (whole) or (split, rows); need:
its estimate with the weights (bytes, HEADROOM in); free: the available memory
(None: unknown); cost: its compute relative to the whole evaluation (band_cost);
whole: what the whole evaluation would need."""


def band_candidates(top, height=None):
    """(split, rows) the planner may choose for taps down to layer `top`."""
    from .banded import SPLITS, margin, step
    out = []
    for split in SPLITS:
        if split >= top or (height is not None and height < 2 * step(split)):
            continue
        # a band as tall as the image is allowed too: the set must not change
        # with the size, or the leanest estimate would not grow with it
        out += [(split, r) for r in BAND_ROWS if r >= 2 * margin(split)]
    return out


def band_cost(bands, hw, top, channels=layers.LAYER_CHANNELS):
    """An evaluation's time in `bands` over the whole evaluation's, modelled by
    the convs' multiply-adds (those on the Winograd form at WINOGRAD_TIME of
    theirs): the head's forward runs twice (once more for the backward) and its
    three passes cover each band's window, own rows plus margins
    (banded.windows); the tail and the rest are as before. 1.0 for None.
    bench/bands.py measured (2-core VM, quality layers, 512² and 1024²) 0.01 to
    0.13 more than this: the head's full-size masks and pools weigh more in
    time than in multiply-adds; the order of the plans is the model's."""
    if bands is None:
        return 1.0
    from .banded import windows
    from .ops.conv import uses_winograd
    split, rows = bands
    macs = []
    for i, h, w, cin, cout, _ in _walk(hw, top, channels):
        m = 9 * cin * cout * h * w
        if uses_winograd(cin, cout, h * w, np.float32):
            m *= WINOGRAD_TIME  # fewer flops: less of the time than of the MACs
        macs.append(m)
    head, total = sum(macs[:split + 1]), sum(macs)
    f = sum(hi - lo for lo, hi, _, _ in windows(hw[0], split, rows)) / hw[0]
    return 1.0 + head * (3 * f - 2) / (2 * total)


def _candidates(plan, memory_plan, hw):
    top = max(list(plan.content_ids) + list(plan.style_ids))
    if memory_plan == "whole":
        return [None]
    if memory_plan in ("auto", "lean"):
        return [None] + band_candidates(top, hw[0])
    from .banded import check_bands
    return [check_bands(memory_plan, top, hw[0])]


def choose_plan(plan, include_weights=True, available=None, memory_plan="auto"):
    """The memory plan of a CPU run of `plan` (driver.check_arguments): "auto"
    the cheapest (band_cost) whose estimate fits in the available memory (and,
    reading this machine's, in RAM_SHARE of its RAM if any plan does),
    "whole" the whole evaluation, "lean" the one that needs least, or
    (split, rows) those bands -> Choice. Raises NotEnoughMemory (naming the
    largest content that fits with the leanest plan) if the choice does not fit;
    where the free memory is unknown, "auto" runs whole, as before bands."""
    if isinstance(memory_plan, str) and memory_plan not in MEMORY_PLANS:
        raise ValueError(f"unknown memory_plan {memory_plan!r}: use one of {MEMORY_PLANS} "
                         f"or (split layer, rows)")
    hw = plan.sizes[-1]
    top = max(list(plan.content_ids) + list(plan.style_ids))
    comfortable = None
    if available is None:
        free, total = available_cpu(), total_cpu()
        if free is not None and total is not None:
            comfortable = min(free, RAM_SHARE * total)
    else:
        free = available
    extra = weights_cpu() if include_weights else 0
    cands = _candidates(plan, memory_plan, hw)
    est = {c: plan_estimator(plan, bands=c) for c in cands}
    need = {c: est[c](max(hw)) + extra for c in cands}
    whole = plan_estimator(plan)(max(hw)) + extra
    if memory_plan == "lean":
        cands = [min(cands, key=lambda c: need[c])]
    elif free is None and memory_plan == "auto":
        cands = [None]
    fits = [c for c in cands if free is None or need[c] <= free]
    if comfortable is not None and fits and not any(need[c] <= comfortable for c in fits):
        best = min(fits, key=lambda c: need[c])  # tight: the least memory
        return Choice(best, need[best], free, band_cost(best, hw, top), whole)
    if comfortable is not None:
        fits = [c for c in fits if need[c] <= comfortable]
    if fits:
        # the cheapest, or a leaner plan within COST_SLACK of it: taller bands
        # save little compute (band_cost) for their memory
        cheapest = min(band_cost(c, hw, top) for c in fits)
        near = [c for c in fits if band_cost(c, hw, top) <= cheapest * (1 + COST_SLACK)]
        best = min(near, key=lambda c: (need[c], band_cost(c, hw, top)))
        return Choice(best, need[best], free, band_cost(best, hw, top), whole)
    leanest = min(cands, key=lambda c: need[c])
    fit = largest_fitting(free - extra, fit_estimator(plan, memory_plan), hw)
    raise _refuse(hw, need[leanest], free, fit)


def fit_estimator(plan, memory_plan="auto"):
    """-> estimate_at(L): the estimate (HEADROOM in) of the leanest plan that
    memory_plan allows at content long side L: what --content-size max and the
    refusal's largest size are measured by."""
    last = plan.sizes[-1]
    ests = {}

    def estimate_at(long_side):
        out = None
        for c in _candidates(plan, memory_plan, resize_hw(last, long_side)):
            if c not in ests:
                ests[c] = plan_estimator(plan, bands=c)
            e = ests[c](long_side)
            out = e if out is None else min(out, e)
        return out

    return estimate_at


def describe(choice, hw):
    """One line on a banded plan for the user (None for the whole evaluation)."""
    if choice is None or choice.bands is None:
        return None
    split, rows = choice.bands
    free = f", {fmt(choice.free)} available" if choice.free is not None else ""
    return (f"memory: {hw[1]}x{hw[0]} needs about {fmt(choice.whole)} at once{free}; "
            f"running layers conv1_1..{layers.LAYER_NAMES[split]} in bands of {rows} rows "
            f"(about {fmt(choice.need)}, about {choice.cost:.2f}x the time)")


def check_plan_cpu(plan, include_weights=True, available=None, memory_plan="auto"):
    """choose_plan for a run of `plan` (the preflight of style_transfer(check_memory=True),
    `cpstyle run` and `cpstyle batch` on the CPU) -> its Choice; raises
    NotEnoughMemory if no allowed plan fits."""
    return choose_plan(plan, include_weights, available, memory_plan)


# ---- the GPU engine's own buffers (cpstyle/gpu_engine.py) ----------------------

def estimate_gpu_engine(content_hw, content_layer_ids, style_layer_ids, optimizer="gd",
                        history=10, conv="im2col", pooling="max", split_work=0,
                        reduce_blocks=256, channels=layers.LAYER_CHANNELS):
    """Bytes that GpuStyleTransfer allocates for itself at content size H x W, from
    the shapes alone: what issue #13's GPU model builds on (the weights, the
    targets' forward and CuPy's pool come on top and need a GPU to measure).
    conv "im2col" keeps the im2col columns and dz (any conv on im2col does);
    "igemm" none. split_work: the split-K buffer's floats (0 untuned). Checked
    exactly against the emulated engine's arrays by tests/test_memory.py.

      images       x, grad, prev_x, h0, dh0            5·3·P
      activations  y_i, i <= top                       Σ P_i·C_i
      pools        output (and argmax, uint8, max)     Σ_p P_p/4·C_p
      backward     two ping-pong buffers               2·max(P_i·C_i, P_i·Cin_i)
      im2col       columns, dz                         max P_i·9·max(Cin, Cout), max P_i·C_i
      content      target, gradient                    2·P_c·C_c each
      style        target, G, dG                       3·C_s² each
      scalars      losses, adj, coef, weights; the partial sums (4096 float64)
      Grams        igemm (where the engine captures, so the Grams run on
                   kernels/gram.cu): the split-K partials, max over the style
                   layers of gram_work_size(P_s, C_s) (cpstyle.cuda.config's tiles)
      optimiser    gd: the update's reduction; adam: m, v, [t, c1, c2] (float64);
                   lbfgs: S, Y (history), x_prev, g_prev, q, its float64 scalars
                   and reductions, the ring's [steps, head] (int32)"""
    cids, sids = sorted(set(content_layer_ids)), sorted(set(style_layer_ids))
    top = max(cids + sids)
    h, w = content_hw
    p3 = 3 * h * w
    walk = _walk((h, w), top, channels)
    f = 5 * p3 + 12 + split_work
    u8 = 0
    pingpong, cols, act_max, gram = 0, 0, 0, [1]
    for i, hh, ww, cin, cout, pooled in walk:
        px = hh * ww
        f += px * cout
        act_max = max(act_max, px * cout)
        pingpong = max(pingpong, px * cin, px * cout if pooled else 0)
        cols = max(cols, px * 9 * max(cin, cout))
        if pooled:
            f += (hh // 2) * (ww // 2) * cout
            if pooling == "max":
                u8 += (hh // 2) * (ww // 2) * cout
        if i in cids:
            f += 2 * px * cout
        if i in sids:
            f += 3 * cout * cout
            gram.append(_gram_work(px, cout))
    f += 2 * pingpong
    if conv == "im2col":
        f += cols + act_max
    else:
        f += max(gram)
    f64 = 4096
    if optimizer == "gd":
        f64 += reduce_blocks + 2
    elif optimizer == "adam":
        f += 2 * p3
        f64 += 3
    elif optimizer == "lbfgs":
        f += (2 * history + 3) * p3
        f64 += (2 * history + 4) + reduce_blocks + (reduce_blocks + 2)
        u8 += 2 * 4
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    return F32 * f + u8 + 8 * f64


def _gram_work(px, c):
    from .ops.gram import gram_work_size
    return gram_work_size(px, c)
