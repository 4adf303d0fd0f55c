"""The tutorial's objective and its normalised gradient (DESIGN.md §5).

    L_c = mean over content layers of mean((F_l − P_l)²)
    L_s = mean over style layers of mean((G_l − A_l)²),  G_l = F_lᵀ·F_l (· 1/(h·w) if gram_norm="hw")
    L_d = Σ|x[i+1,j] − x[i,j]| + Σ|x[i,j+1] − x[i,j]|
    grad = w_c·∇L_c/(L_c+1e-10) + w_s·∇L_s/(L_s+1e-10) + w_d·∇L_d/(L_d+1e-10)

with the CURRENT losses in the adj factors. The net's backward is linear in the
tap gradients, so the adj factors scale the tap gradients before one backward.
This module is the reference path (NumPy, or the same array ops on CuPy); the
on-device fast path lives in cpstyle/gpu_engine.py. Tests: tests/test_objective.py."""
import numpy as np

from . import layers
from .backend import get_array_module, to_device, to_host
from .images import validate_image
from .ops.gram import gram_backward_cpu, gram_forward_cpu
from .ops.loss import (denoise_backward_cpu, denoise_forward_cpu, mse_backward_cpu,
                       mse_forward_cpu)

ADJ_EPS = 1e-10
GRAM_NORMS = ("none", "hw")


def gram_norm_factor(gram_norm, shape):
    if gram_norm == "none":
        return 1.0
    if gram_norm == "hw":
        return 1.0 / (shape[1] * shape[2])
    raise ValueError(f"unknown gram_norm {gram_norm!r}: use one of {GRAM_NORMS}")


def check_weight(value, name):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


class StyleObjective:
    """losses, grad = objective(mixed); mixed (H, W, 3) 0..255, numpy or cupy."""

    def __init__(self, content, style, content_layer_ids=(4,),
                 style_layer_ids=tuple(range(13)), weight_content=1.5,
                 weight_style=10.0, weight_denoise=0.3, model=None, gram_norm="none"):
        if model is None:
            from .vgg16 import VGG16
            model = VGG16.load(device="auto")
        self.model = model
        xp = self.xp = model.xp
        self.content_ids = layers.layer_ids(content_layer_ids, "content layers")
        self.style_ids = layers.layer_ids(style_layer_ids, "style layers")
        for i in self.content_ids + self.style_ids:
            if i >= model.num_layers:
                raise ValueError(f"layer id {i} is out of range: this net has "
                                 f"conv layers 0..{model.num_layers - 1}")
        self.weights = (check_weight(weight_content, "weight_content"),
                        check_weight(weight_style, "weight_style"),
                        check_weight(weight_denoise, "weight_denoise"))
        if gram_norm not in GRAM_NORMS:
            raise ValueError(f"unknown gram_norm {gram_norm!r}: use one of {GRAM_NORMS}")
        self.gram_norm = gram_norm
        content = validate_image(content, "content image")
        style = validate_image(style, "style image")
        self.shape = content.shape
        c = to_device(content, xp, model.dtype)[None]
        s = to_device(style, xp, model.dtype)[None]
        taps, _ = model.forward(c, self.content_ids)
        self.content_targets = {i: taps[i] for i in self.content_ids}
        taps, _ = model.forward(s, self.style_ids)
        self.style_targets = {}
        for i in self.style_ids:
            self.style_targets[i], _ = gram_forward_cpu(
                taps[i], gram_norm_factor(gram_norm, taps[i].shape))
        self.tap_ids = sorted(set(self.content_ids) | set(self.style_ids))
        self.last_adj = None

    def evaluate(self, x):
        """x (1, H, W, 3) on the model's backend -> (losses (3,) device array,
        adj (3,) device array, grad (1, H, W, 3))."""
        xp, model = self.xp, self.model
        taps, caches = model.forward(x, self.tap_ids)
        nc, ns = len(self.content_ids), len(self.style_ids)
        lc = sum(mse_forward_cpu(taps[i], self.content_targets[i]) for i in self.content_ids) / nc
        grams = {}
        ls = 0.0
        for i in self.style_ids:
            grams[i] = gram_forward_cpu(taps[i], gram_norm_factor(self.gram_norm, taps[i].shape))
            ls = ls + mse_forward_cpu(grams[i][0], self.style_targets[i])
        ls = ls / ns
        ld = denoise_forward_cpu(x)
        losses = xp.stack([xp.asarray(lc), xp.asarray(ls), xp.asarray(ld)]).astype(model.dtype)
        adj = 1.0 / (losses + ADJ_EPS)
        coef = xp.asarray(self.weights, dtype=model.dtype) * adj
        dtaps = {}
        for i in self.content_ids:
            dtaps[i] = mse_backward_cpu(taps[i], self.content_targets[i], coef[0] / nc)
        for i in self.style_ids:
            g, cache = grams[i]
            dg = mse_backward_cpu(g, self.style_targets[i], coef[1] / ns)
            d = gram_backward_cpu(dg, cache)
            dtaps[i] = d if i not in dtaps else dtaps[i] + d
        grad = model.backward(dtaps, caches)
        grad += denoise_backward_cpu(x, coef[2])
        return losses, adj, grad

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
