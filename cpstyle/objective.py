"""The tutorial's objective and its normalised gradient (DESIGN.md §5), with
the options of issue #5.

    L_c = Σ_l a_l · mean((F_l − P_l)²)           content layers, Σ a_l = 1
    L_s = Σ_l b_l · mean((G_l − A_l)²)           style layers,   Σ b_l = 1
          G_l = F_lᵀ·F_l (· 1/(h·w) if gram_norm="hw"),  A_l = Σ_k w_k A_{k,l}
    L_d = Σ|x[i+1,j] − x[i,j]| + Σ|x[i,j+1] − x[i,j]|
    grad = w_c·∇L_c/(L_c+1e-10) + w_s·∇L_s/(L_s+1e-10) + w_d·∇L_d/(L_d+1e-10)
         = ∇ Φ,  Φ = Σ w·log(L + 1e-10)                          (the default)
    grad = w_c·∇L_c + w_s·∇L_s + w_d·∇L_d = ∇ Φ,  Φ = Σ w·L    (constant_weights)

with the CURRENT losses in the adj factors. a_l, b_l: per-layer weights (equal
by default: the tutorial's mean over layers); A_{k,l}: the Gram targets of style
image k (each at its own size), blended with weights w_k (Σ w_k = 1). Every
optimiser (cpstyle/optimizers.py) minimises Φ, so `potential` is the number
they are compared on. The net's backward is linear in the tap gradients, so the
adj factors scale the tap gradients before one backward.
This module is the reference path (NumPy, or the same array ops on CuPy); the
on-device fast path lives in cpstyle/gpu_engine.py. Tests: tests/test_objective.py."""
import math

import numpy as np

from . import layers
from .backend import get_array_module, to_device, to_host
from .images import validate_image
from .ops.gram import gram_backward_cpu, gram_forward_cpu, lazy_gram_backward
from .ops.loss import (denoise_backward_cpu, denoise_forward_cpu, mse_backward_cpu,
                       mse_forward_cpu)
from .ops.parallel import Workspace

ADJ_EPS = 1e-10
GRAM_NORMS = ("none", "hw")


def style_images(style, blend_weights=None, what="style image"):
    """One image or a list of them, and optional blend weights -> (list of
    validated images, weights normalised to sum 1)."""
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    if not styles:
        raise ValueError("no style image given")
    n = len(styles)
    styles = [validate_image(s, what if n == 1 else f"{what} {k + 1}")
              for k, s in enumerate(styles)]
    if blend_weights is None:
        return styles, [1.0 / n] * n
    return styles, layers.check_weights(blend_weights, n, "style_blend_weights")


def potential(losses, weights, constant_weights=False):
    """Φ at the given (host) losses: Σ w·log(L + 1e-10), or Σ w·L with
    constant weights. The function whose gradient `evaluate` returns."""
    if constant_weights:
        return float(sum(w * float(l) for w, l in zip(weights, losses)))
    return float(sum(w * math.log(float(l) + ADJ_EPS) for w, l in zip(weights, losses)))


def gram_norm_factor(gram_norm, shape):
    if gram_norm == "none":
        return 1.0
    if gram_norm == "hw":
        return 1.0 / (shape[1] * shape[2])
    raise ValueError(f"unknown gram_norm {gram_norm!r}: use one of {GRAM_NORMS}")


class StyleObjective:
    """losses, grad = objective(mixed); mixed (H, W, 3) 0..255, numpy or cupy."""

    def __init__(self, content, style, content_layer_ids=(4,),
                 style_layer_ids=tuple(range(13)), weight_content=1.5,
                 weight_style=10.0, weight_denoise=0.3, model=None, gram_norm="none",
                 content_layer_weights=None, style_layer_weights=None,
                 style_blend_weights=None, constant_weights=False, bands=None):
        """bands: None (the whole image at once) or (split, rows): the NumPy
        evaluation in bands of `rows` image rows through layers 0..split and the
        pool after it (cpstyle/banded.py), in bounded memory."""
        self.content_ids, self.content_layer_weights = layers.weighted_layer_ids(
            content_layer_ids, content_layer_weights, "content layers")
        self.style_ids, self.style_layer_weights = layers.weighted_layer_ids(
            style_layer_ids, style_layer_weights, "style layers")
        self.constant_weights = bool(constant_weights)
        if model is None:
            from .vgg16 import VGG16
            model = VGG16.load(device="auto")
        self.model = model
        xp = self.xp = model.xp
        for i in self.content_ids + self.style_ids:
            if i >= model.num_layers:
                raise ValueError(f"layer id {i} is out of range: this net has "
                                 f"conv layers 0..{model.num_layers - 1}")
        self.weights = (layers.check_number(weight_content, "weight_content"),
                        layers.check_number(weight_style, "weight_style"),
                        layers.check_number(weight_denoise, "weight_denoise"))
        if gram_norm not in GRAM_NORMS:
            raise ValueError(f"unknown gram_norm {gram_norm!r}: use one of {GRAM_NORMS}")
        self.gram_norm = gram_norm
        content = validate_image(content, "content image")
        styles, self.blend_weights = style_images(style, style_blend_weights)
        self.shape = content.shape
        self.tap_ids = sorted(set(self.content_ids) | set(self.style_ids))
        self.bands = None
        if bands is not None:
            from .banded import check_bands
            if xp is not np:
                raise ValueError("bands are for the NumPy (CPU) path")
            self.bands = check_bands(bands, self.tap_ids[-1], content.shape[0])
            for s in styles:
                check_bands(bands, self.tap_ids[-1], s.shape[0])
        c = to_device(content, xp, model.dtype)[None]
        taps = self._forward(c, self.content_ids)
        self.content_targets = {i: taps[i] for i in self.content_ids}
        del taps
        self.style_targets = {}
        for style, wk in zip(styles, self.blend_weights):
            s = to_device(style, xp, model.dtype)[None]
            for i, a in self._grams(s, self.style_ids).items():
                if len(styles) > 1:  # one style: A as computed, bit for bit
                    a = a * model.dtype.type(wk)
                self.style_targets[i] = a if i not in self.style_targets \
                    else self.style_targets[i] + a
        self.last_adj = None
        # the activations and gradients of evaluate(), kept between calls (NumPy):
        # one evaluation at a time per objective
        self.workspace = Workspace()
        self.band_workspace = None

    def _norms(self, shape, ids):
        """{id: the Gram's norm factor} for a (1, H, W, 3) input (whole layers)."""
        from .banded import levels
        h, w = shape[1], shape[2]
        d = dict(levels(max(ids)))
        return {i: gram_norm_factor(self.gram_norm, (1, h // d[i], w // d[i])) for i in ids}

    def _forward(self, x, ids):
        """{id: tap} of x (1, H, W, 3): the whole forward, or the head in bands
        and the layers below whole (taps of the head assembled whole)."""
        if self.bands is None:
            taps, _ = self.model.forward(x, ids)
            return taps
        from .banded import forward_stats
        split, rows = self.bands
        head, _, taps = forward_stats(self.model, x, split, rows, content_ids=ids)
        tail = [i for i in ids if i > split]
        if tail:
            _, more, _ = self.model.forward_layers(head, split + 1, max(tail), tail)
            taps.update(more)
        return taps

    def _grams(self, x, ids):
        """{id: G} of x (1, H, W, 3), whole or banded as _forward."""
        if self.bands is None:
            taps, _ = self.model.forward(x, ids)
            return {i: gram_forward_cpu(taps[i], gram_norm_factor(self.gram_norm, taps[i].shape))[0]
                    for i in ids}
        from .banded import forward_stats
        split, rows = self.bands
        norms = self._norms(x.shape, [i for i in ids if i <= split])
        head, grams, _ = forward_stats(self.model, x, split, rows, style_ids=ids,
                                       gram_norms=norms)
        tail = [i for i in ids if i > split]
        if tail:
            _, taps, _ = self.model.forward_layers(head, split + 1, max(tail), tail)
            for i in tail:
                grams[i], _ = gram_forward_cpu(taps[i], gram_norm_factor(self.gram_norm,
                                                                         taps[i].shape))
        return grams

    def evaluate(self, x):
        """x (1, H, W, 3) on the model's backend -> (losses (3,) device array,
        adj (3,) device array, grad (1, H, W, 3))."""
        if self.bands is not None:
            return self._evaluate_banded(x)
        taps, caches = self.model.forward(x, self.tap_ids, self.workspace)
        losses, adj, coef, dtaps, _ = self._losses_and_tap_grads(x, taps)
        grad = self.model.backward(dtaps, caches, self.workspace)
        denoise_backward_cpu(x, coef[2], out=grad)
        return losses, adj, grad

    def _losses_and_tap_grads(self, x, taps, split=-1, head_grams=None, head_sumsq=None):
        """The losses, adj factors and coefficients, and the tap gradients of the
        layers below `split` (whole: split -1) -> (losses, adj, coef, dtaps,
        {style id <= split: dL/dG}). The head's layers (banded) come as their
        Grams and content squared-error sums, summed over the bands."""
        xp, dt = self.xp, self.model.dtype
        cw = dict(zip(self.content_ids, self.content_layer_weights))
        sw = dict(zip(self.style_ids, self.style_layer_weights))
        lc = sum(cw[i] * (head_sumsq[i] / self.content_targets[i].size if i <= split
                          else mse_forward_cpu(taps[i], self.content_targets[i]))
                 for i in self.content_ids)
        grams = {}
        ls = 0.0
        for i in self.style_ids:
            grams[i] = (head_grams[i], None) if i <= split else \
                gram_forward_cpu(taps[i], gram_norm_factor(self.gram_norm, taps[i].shape))
            ls = ls + sw[i] * mse_forward_cpu(grams[i][0], self.style_targets[i])
        ld = denoise_forward_cpu(x)
        losses = xp.stack([xp.asarray(lc), xp.asarray(ls), xp.asarray(ld)]).astype(dt)
        if self.constant_weights:
            adj = xp.ones(3, dtype=dt)  # the factors used: none
        else:
            adj = 1.0 / (losses + ADJ_EPS)
        coef = xp.asarray(self.weights, dtype=dt) * adj
        dtaps, dgs = {}, {}
        for i in self.content_ids:
            if i > split:
                dtaps[i] = mse_backward_cpu(taps[i], self.content_targets[i], coef[0] * cw[i])
        for i in self.style_ids:
            g, cache = grams[i]
            dg = mse_backward_cpu(g, self.style_targets[i], coef[1] * sw[i])
            if i <= split:
                dgs[i] = dg
            else:
                # the rows of norm·F·(dG + dGᵀ) are made where the backward adds them
                dtaps[i] = lazy_gram_backward(dg, cache, dtaps.get(i))
        return losses, adj, coef, dtaps, dgs

    def _evaluate_banded(self, x):
        """evaluate() with the head in bands (cpstyle/banded.py, steps 1-4)."""
        from .banded import backward_bands, forward_stats, step
        xp, model, ws = self.xp, self.model, self.workspace
        split, rows = self.bands
        if self.band_workspace is None:
            self.band_workspace = Workspace()
        dt = model.dtype
        D = step(split)
        norms = self._norms(x.shape, [i for i in self.style_ids if i <= split])
        hshape = (1, x.shape[1] // D, x.shape[2] // D, model.kernels[split].shape[3])
        head, grams_h, sumsq = forward_stats(
            model, x, split, rows, self.content_ids, self.style_ids, norms,
            self.band_workspace, targets=self.content_targets,
            out=ws.get(xp, ("head",), hshape, dt))
        _, taps, caches = model.forward_layers(
            head, split + 1, self.tap_ids[-1], [i for i in self.tap_ids if i > split], ws)
        losses, adj, coef, dtaps, dgs = self._losses_and_tap_grads(x, taps, split, grams_h,
                                                                   sumsq)
        dhead = model.backward_layers(dtaps, caches, ws, split + 1,
                                      out=ws.get(xp, ("dhead",), hshape, dt))
        cw = dict(zip(self.content_ids, self.content_layer_weights))

        def tap_grad(i):
            norm = norms.get(i)
            target = self.content_targets.get(i)
            kc = (coef[0] * cw[i] * (2.0 / target.size)).astype(dt) if target is not None else None

            def fn(f, a, b, out):
                if i in dgs:
                    gram_backward_cpu(dgs[i], (f.reshape(1, -1, f.shape[3]), f.shape, norm),
                                      out=out)
                else:
                    out[...] = 0
                if kc is not None:
                    out += (f - target[:, a:b]) * kc
            return fn

        grad = xp.zeros(x.shape, dtype=dt)
        backward_bands(model, x, split, rows, dhead,
                       {i: tap_grad(i) for i in self.tap_ids if i <= split},
                       self.band_workspace, grad)
        denoise_backward_cpu(x, coef[2], out=grad)
        return losses, adj, grad

    def potential(self, losses):
        """Φ (module docstring) at host losses (3,)."""
        return potential(losses, self.weights, self.constant_weights)

    def __call__(self, mixed):
        mixed = validate_image(mixed, "mixed image")
        if mixed.shape != self.shape:
            raise ValueError(f"mixed image has shape {mixed.shape}, the content image "
                             f"{self.shape}: they must match")
        on_gpu = get_array_module(mixed) is not np
        x = to_device(mixed, self.xp, self.model.dtype)[None]
        losses, adj, grad = self.evaluate(x)
        lh, ah = to_host(losses), to_host(adj)
        self.last_adj = dict(zip(("content", "style", "denoise"), map(float, ah)))
        grad = grad[0]
        if not on_gpu:
            grad = to_host(grad)
        elif get_array_module(grad) is np:
            grad = get_array_module(mixed).asarray(grad)
        return dict(zip(("content", "style", "denoise"), map(float, lh))), grad
