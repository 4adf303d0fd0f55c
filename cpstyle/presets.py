"""Presets: named sets of `style_transfer` settings (DESIGN.md §10).

    tutorial   the Hvass-Labs tutorial's algorithm and defaults, bit for bit: noise
               start, content conv3_1, all 13 style layers, plain Gram, 120 std-scaled
               gd steps, weights 1.5 / 10 / 0.3 (reciprocally normalised)
    quality    chosen by measurement (bench/quality.py, bench/QUALITY.md): the
               classic recipe's objective with a light total variation, constant
               weights, L-BFGS from the content; PRESETS["quality"] below has the
               values and the measured reason

A preset fills in every setting the caller did not give; whatever the caller
gives explicitly wins.

`style_strength` S (STRENGTH_RANGE, default 1) moves a run between content and
style. With constant weights (the quality preset) it multiplies the style
weight: the run settles at the balance of content and style, and S moves that
balance, as K moves the classic recipe's. With the reciprocal weights it
multiplies the iteration count (and iterations_per_scale) of a run that starts
from the content: there the style weight is no knob (under Φ = Σ w·log L the
content start is a trap, log L_c -> -inf; w_s = 0.45 and 1.5 left the content
almost untouched and w_s = 6 and 9 moved no further than w_s = 3 in 150
iterations, bench/QUALITY.md), but every iteration moves the picture further
towards the style. A run from noise with reciprocal weights (the tutorial) has
no such path, so S needs init="content" there. Tests: tests/test_presets.py."""
import functools
import inspect

from .layers import check_number

PRESETS = {
    "tutorial": dict(
        content_layer_ids=(4,), style_layer_ids=tuple(range(13)),
        weight_content=1.5, weight_style=10.0, weight_denoise=0.3,
        num_iterations=120, step_size=10.0, gram_norm="none", init=None,
        optimizer="gd", style_scale=None),
    # bench/QUALITY.md: the classic recipe's objective (Gatys: start from the
    # content; content conv4_2; style conv1_1..conv5_1 weighted 1/C_l², i.e.
    # 16:4:1:0.25:0.25; Gram / (H·W) with the style at the content's size;
    # constant weights, so the run settles at a balance instead of drifting
    # towards the style) at its K = 1000 (weight_style = 1000·1e3·Σ_l 1/C_l² with
    # the layer weights normalised to sum 1), plus a light total variation per
    # pixel (denoise_norm "hw": the same weight at every size). Our L-BFGS, 150
    # iterations. On the four bundled pairs at 256 px the total variation moved
    # every pair to or beyond the classic recipe's frontier (which has none);
    # three times as much helped the city and the portrait more and cost the
    # cat's Great Wave its fine strokes. The tutorial's reciprocal weights were
    # the preset before: from the content they never settle (Φ = Σ w·log L has
    # -inf at the content and at a perfect style match), so the iteration count
    # decided how far a run went, and at strong total variation a run fell back
    # into the content.
    "quality": dict(
        content_layer_ids=(8,), style_layer_ids=(0, 2, 4, 7, 10),
        style_layer_weights=(16.0, 4.0, 1.0, 0.25, 0.25),
        weight_content=1.0, weight_style=328.0, weight_denoise=0.05, denoise_norm="hw",
        constant_weights=True, num_iterations=150, gram_norm="hw", init="content",
        optimizer="lbfgs", style_scale=1.0),
}
DEFAULT_PRESET = "tutorial"  # style_transfer()'s; the CLI's is "quality"
STRENGTH_RANGE = (0.2, 5.0)


def check_preset(name):
    if name is None:
        return DEFAULT_PRESET
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: use one of {tuple(PRESETS)}")
    return name


def check_style_strength(s):
    s = check_number(s, "style_strength", positive=True)
    lo, hi = STRENGTH_RANGE
    if not lo <= s <= hi:
        raise ValueError(f"style_strength must be in [{lo:g}, {hi:g}], got {s:g}")
    return s


# A setting the caller gives makes the preset's values of these meaningless:
# a preset's layer weights fit its own layer list, its multiscale schedule its
# own multiscale, its optimiser settings its own optimiser.
COUPLED = {
    "content_layer_ids": ("content_layer_weights",),
    "style_layer_ids": ("style_layer_weights",),
    "multiscale": ("min_size", "iterations_per_scale"),
    "optimizer": ("step_size", "learning_rate", "lbfgs_history"),
    # constant weights carry the losses' scales, reciprocal ones are relative
    "constant_weights": ("weight_content", "weight_style", "weight_denoise", "denoise_norm"),
}


def strength_iterations(n, style_strength, init):
    """The iteration count for style_strength S: round(n·S), at least 1; S != 1
    needs a run that starts from the content (ValueError otherwise)."""
    s = check_style_strength(style_strength)
    if s == 1.0 or not n:
        return n
    if not (isinstance(init, str) and init == "content"):
        raise ValueError("style_strength moves a run that starts from the content "
                         "(the quality preset, or init='content'); this run starts "
                         f"from {init if isinstance(init, str) else 'an image'!r}")
    return max(1, round(n * s))


def dropped_by(given):
    """The preset settings that the given keys make meaningless (COUPLED)."""
    return {d for key in given for d in COUPLED.get(key, ())}


def settings(preset, given, style_strength=1.0):
    """The preset's values under the explicitly `given` ones (a dict of
    style_transfer keywords), the iterations scaled by style_strength."""
    drop = dropped_by(given)
    out = {k: v for k, v in PRESETS[check_preset(preset)].items() if k not in drop}
    out.update(given)
    if out.get("constant_weights"):
        out["weight_style"] = strength_weight(out["weight_style"], style_strength)
        return out
    init = out.get("init")
    if init is None:
        init = "noise"
    for key in ("num_iterations", "iterations_per_scale"):  # every preset has the first
        if key in out:
            out[key] = strength_iterations(out[key], style_strength, init)
    return out


def strength_weight(weight_style, style_strength):
    """The style weight for style_strength S with constant weights: w_s·S."""
    return float(weight_style) * check_style_strength(style_strength)


def with_presets(fn):
    """Decorates style_transfer: `preset=` and `style_strength=` fill in the
    settings that the call does not give (inspect's bind tells which it gives),
    so the signature and its tutorial defaults stay as they are."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, preset=None, style_strength=1.0, **kwargs):
        bound = sig.bind(*args, **kwargs)
        given = dict(bound.arguments)
        if preset is None and style_strength == 1.0:
            return fn(**given)
        return fn(**settings(preset, given, style_strength))

    wrapper.__signature__ = sig.replace(parameters=list(sig.parameters.values()) + [
        inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("style_strength", inspect.Parameter.KEYWORD_ONLY, default=1.0)])
    return wrapper
