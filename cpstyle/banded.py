"""The objective in bands of rows: a NumPy evaluation in bounded memory (issue #13).

VGG-16's head, layers 0..split and the pool after `split` (split is a layer a
pool follows: 1, 3 or 6), is made of 3x3 convolutions, ReLUs and 2x2 pools, so
a row of its output depends on a few image rows around it. The head therefore
runs on bands of image rows, each in a window with a margin of rows above and
below, and only its output (the input of layer split+1: 1/4, 1/16 or 1/64 of
the pixels, at 64, 128 or 256 channels) is kept whole. The tail, layers
split+1..top, runs on it whole, as the full evaluation does.

One evaluation (BandedEvaluation.evaluate), the same numbers as
StyleObjective.evaluate up to the order of float sums:

 1. forward bands: each window's head forward; the Grams of the head's style
    layers summed over the band's own rows, its content layers' squared errors
    too, and its own rows of the head's output;
 2. the tail's forward on the head's output; the losses, adj factors and
    coefficients, by the formulas of StyleObjective.evaluate;
 3. the tail's backward, to dL/d(head output);
 4. backward bands: each window's head forward again (the recompute), the tap
    gradients of the head's layers and dL/d(head output) on the band's own rows
    (zero on the margins), the window's backward, and its image gradient added
    into the whole one (the windows overlap: a margin row gets a part from each
    band whose gradient reaches it).

Own rows and margins. A band owns image rows [r0, r1), multiples of D = 2^(pools
in the head); at a layer with d image rows per row (1, 2, 4 or 8) it owns
[r0/d, r1/d) (the last band: to the end, odd rows a pool drops included). A
conv at level d makes a row depend on d more image rows each side, a pool adds
none, so a value at layer l is exact when its window holds Σ_{convs <= l} d
image rows beyond it (or the image ends there). A gradient put on layer l's own
rows spreads Σ_{convs k+1..l} d rows down to layer k, whose masks (and pool
argmaxes) must be exact there: Σ_{convs <= k} d more. Both are at most
S = Σ_{head convs} d, so a margin of S rows, rounded up to D, is enough for the
forward and the backward alike (split 1: S = 2, margin 2; split 3: S = 6,
margin 8; split 6: S = 18, margin 24). Tests (tests/test_banded.py) check the
result against the full evaluation with bands of D rows (one row of the head's
output) and taller, and that a margin one step short breaks it.

Cost: the head's forward runs twice per evaluation, each time on own rows plus
2 margins (memory.band_cost models it). Memory: what the head keeps scales
with the window, not the image (memory.estimate_cpu_parts with bands)."""
import numpy as np

from . import layers
from .ops.gram import gram_forward_cpu
from .ops.parallel import Workspace
from .ops.preprocess import preprocess_backward_cpu, preprocess_forward_cpu

SPLITS = tuple(sorted(i for i in layers.POOL_AFTER if i < 9))  # (1, 3, 6)


def levels(split):
    """[(layer id, image rows per row of its output)] for the head's convs 0..split."""
    out, d = [], 1
    for i in range(split + 1):
        out.append((i, d))
        if i in layers.POOL_AFTER:
            d *= 2
    return out


def step(split):
    """D: image rows per row of the head's output (2 per pool)."""
    return 2 ** sum(1 for i in layers.POOL_AFTER if i <= split)


def margin(split):
    """Image rows a window reaches beyond its own rows (module docstring)."""
    s = sum(d for _, d in levels(split))
    D = step(split)
    return -(-s // D) * D


def check_bands(bands, top, height):
    """(split, rows) -> the same, checked: split a pool's layer below the deepest
    tap `top`, rows (own image rows per band) a positive multiple of D."""
    try:
        split, rows = (int(v) for v in bands)
    except (TypeError, ValueError):
        raise ValueError(f"bands must be (split layer, rows), got {bands!r}") from None
    if split not in SPLITS:
        raise ValueError(f"bands: the head must end at a pool after layer {SPLITS}, got {split}")
    if split >= top:
        raise ValueError(f"bands: the head (layers 0..{split}) must end below the deepest "
                         f"tap layer ({top})")
    D = step(split)
    if rows < D or rows % D:
        raise ValueError(f"bands: rows must be a positive multiple of {D} for a head "
                         f"ending at layer {split}, got {rows}")
    if height < 2 * D:
        raise ValueError(f"bands: the image's {height} rows are too few to band")
    return split, rows


def windows(height, split, rows):
    """[(lo, hi, r0, r1)]: each band's window [lo, hi) and own rows [r0, r1)."""
    M = margin(split)
    out = []
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        out.append((max(0, r0 - M), min(height, r1 + M), r0, r1))
    return out


def own(lo, r0, r1, d, height, n_rows):
    """A band's own rows of a layer at level d, in its window's row numbers
    (n_rows: the layer's rows in the window; the last band owns to the end)."""
    a = (r0 - lo) // d
    b = n_rows if r1 == height else (r1 - lo) // d
    return a, b


def _head(model, x, lo, hi, split, tap_ids, ws):
    """The head on image rows [lo, hi) -> (output, taps, caches)."""
    h = preprocess_forward_cpu(x[:, lo:hi], model.scale, model.shift, model.bgr)
    return model.forward_layers(h, 0, split, tap_ids, ws, pool_last=True)


def forward_stats(model, x, split, rows, content_ids=(), style_ids=(), gram_norms=None,
                  ws=None, targets=None, out=None):
    """The head's part of a forward on bands of x (1, H, W, 3) -> (head output
    (1, H/D, W/D, C), {style id: Gram summed over the bands}, {content id: the
    tap, whole (targets None) or Σ (F - target)² (targets: {id: target})}).
    gram_norms: {id: factor} (StyleObjective's gram_norm at the whole layer's size).
    ws: a Workspace for the windows; out: the array for the head output."""
    height = x.shape[1]
    xp = model.xp
    style_ids = [i for i in style_ids if i <= split]
    content_ids = [i for i in content_ids if i <= split]
    ws = Workspace() if ws is None else ws
    D = step(split)
    grams, contents = {}, {}
    head_out = out
    for lo, hi, r0, r1 in windows(height, split, rows):
        y, taps, _ = _head(model, x, lo, hi, split, set(style_ids) | set(content_ids), ws)
        if head_out is None:
            head_out = xp.empty((1, height // D) + y.shape[2:], dtype=y.dtype)
        a, b = own(lo, r0, r1, D, height, y.shape[1])
        head_out[:, r0 // D:r0 // D + b - a] = y[:, a:b]
        for i, d in levels(split):
            if i not in taps:
                continue
            t = taps[i]
            a, b = own(lo, r0, r1, d, height, t.shape[1])
            f = t[:, a:b]
            if i in style_ids:
                g, _ = gram_forward_cpu(f, gram_norms[i])
                grams[i] = g if i not in grams else grams[i] + g
            if i in content_ids:
                if targets is None:
                    if i not in contents:
                        contents[i] = xp.empty((1, height // d) + t.shape[2:], dtype=t.dtype)
                    contents[i][:, r0 // d:r0 // d + b - a] = f
                else:
                    e = f - targets[i][:, r0 // d:r0 // d + b - a]
                    contents[i] = contents.get(i, 0.0) + float(np.vdot(e, e))
    return head_out, grams, contents


def backward_bands(model, x, split, rows, dhead, dtap_fns, ws, grad):
    """Step 4 of the module docstring: grad (1, H, W, 3) += the head's backward
    over bands, with dL/d(head output) `dhead` and, per head tap layer i,
    dtap_fns[i](f, r0, r1, out) writing the tap gradient of own rows f (the
    layer's rows [r0, r1) of the whole image) into `out` (same shape)."""
    height = x.shape[1]
    xp = model.xp
    D = step(split)
    for lo, hi, r0, r1 in windows(height, split, rows):
        _, taps, caches = _head(model, x, lo, hi, split, set(dtap_fns), ws)
        dtaps = {}
        for i, d in levels(split):
            if i not in dtap_fns:
                continue
            t = taps[i]
            a, b = own(lo, r0, r1, d, height, t.shape[1])
            dt = ws.get(xp, ("dtap", i), t.shape, t.dtype)
            dt[:, :a] = 0
            dt[:, b:] = 0
            dtap_fns[i](t[:, a:b], r0 // d, r0 // d + b - a, dt[:, a:b])
            dtaps[i] = dt
        (_, y_top), (_, pc) = caches[-1]
        shape = (1, y_top.shape[1] // 2, y_top.shape[2] // 2, y_top.shape[3])
        dout = ws.get(xp, ("dhead",), shape, y_top.dtype)
        a, b = own(lo, r0, r1, D, height, shape[1])
        dout[:, :a] = 0
        dout[:, b:] = 0
        dout[:, a:b] = dhead[:, r0 // D:r0 // D + b - a]
        dh = model.backward_layers(dtaps, caches, ws, 0, dout,
                                   out=ws.get(xp, ("dh",), (1, hi - lo, x.shape[2], 3), y_top.dtype))
        grad[:, lo:hi] += preprocess_backward_cpu(dh, model.scale, model.bgr)
    return grad
