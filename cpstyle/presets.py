"""Presets: named sets of `style_transfer` settings (DESIGN.md §10).

    tutorial   the Hvass-Labs tutorial's algorithm and defaults, bit for bit: noise
               start, content conv3_1, all 13 style layers, plain Gram, 120 std-scaled
               gd steps, weights 1.5 / 10 / 0.3 (reciprocally normalised)
    quality    chosen by measurement (bench/quality.py, bench/QUALITY.md): see
               PRESETS["quality"] below for the values and the measured reason

A preset fills in every setting the caller did not give; whatever the caller
gives explicitly wins.

`style_strength` S (STRENGTH_RANGE, default 1) is how far a run that starts from
the content goes towards the style: it multiplies the iteration count (and
iterations_per_scale), and the time with it. Measured (bench/QUALITY.md): along
such a run LPIPS to the content rises and the style gap falls with every
iteration, on every pair, while the style weight is no knob there: under the
reciprocal normalisation (Φ = Σ w·log L) the content start is a trap
(log L_c -> -inf), so w_s = 0.45 and 1.5 (S = 0.3, 0.5 as a weight factor) left
the content almost untouched and w_s = 6 and 9 moved no further than w_s = 3
in 150 iterations. A run from noise (the tutorial) has no such path: S needs
init="content". Tests: tests/test_presets.py."""
import functools
import inspect

from .layers import check_number

PRESETS = {
    "tutorial": dict(
        content_layer_ids=(4,), style_layer_ids=tuple(range(13)),
        weight_content=1.5, weight_style=10.0, weight_denoise=0.3,
        num_iterations=120, step_size=10.0, gram_norm="none", init=None,
        optimizer="gd", style_scale=None),
    # bench/QUALITY.md: start from the content (the tutorial's noise start needs
    # hundreds of steps to find the content again), Gatys' layers (content conv4_2,
    # style conv1_1..conv5_1, equal weights: tilting them to the shallow layers wiped
    # the portrait's face), the Gram over H·W with the style at the content's size,
    # L-BFGS; style weight 3 (not 10) and 150 iterations put the four bundled pairs
    # at 256 px beside the classic recipe's frontier in half its time (at 512 px, on
    # the one pair measured, behind it). The total variation stays: without it LPIPS
    # rose at the same style gap.
    "quality": dict(
        content_layer_ids=(8,), style_layer_ids=(0, 2, 4, 7, 10),
        weight_content=1.5, weight_style=3.0, weight_denoise=0.3,
        num_iterations=150, gram_norm="hw", init="content", optimizer="lbfgs",
        style_scale=1.0),
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
    init = out.get("init")
    if init is None:
        init = "noise"
    for key in ("num_iterations", "iterations_per_scale"):  # every preset has the first
        if key in out:
            out[key] = strength_iterations(out[key], style_strength, init)
    return out


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
