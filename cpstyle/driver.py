"""style_transfer: the tutorial's optimisation loop (DESIGN.md §5), and the
options of issue #5 around it.

    x0 = uniform[0,1) + 128 (seeded)                    init="noise" (the default)
    repeat: losses, grad = objective(x)        (current-iteration adj weights)
            x = clip(x − grad·step_size/(std(grad)+1e-8), 0, 255)   optimizer="gd"

Around that loop:
  init         "noise" | "content" | "style" | "blend" | an image array (resized
               to the content's size); all but "noise" take `init_noise` = A:
               + uniform[−A, A) from the seeded generator, clipped to 0..255.
               "style" is the blended style images resized to the content's size,
               "blend" the mean of that and the content.
  style        one image or a list, blended by style_blend_weights (Gram targets
               A = Σ w_k A_k, cpstyle/objective.py); style_scale resizes each so
               its long side is style_scale × the content's long side.
  optimizer    "gd" | "adam" | "lbfgs" (cpstyle/optimizers.py), all minimising
               the objective's potential Φ; constant_weights drops the 1/L factors.
  pooling      "max" | "avg" pools in VGG-16 (None: the model's own).
  denoise_norm "none" | "hw": "hw" divides the total variation L_d (a sum over
               pixels) by H·W, so that with constant_weights its weight means
               the same at every size (L_c and L_s are means already). Under the
               reciprocal weights a constant factor on L_d cancels, so there it
               changes nothing. Done by dividing weight_denoise by H·W at each
               scale; progress reports L_d as the sum.
  preserve_colors  "none" | "after" | "before" (cpstyle/colors.py).
  multiscale   coarse to fine in √2 steps up to the content's size, starting at
               the smallest such scale whose long side is >= min_size (scale_sizes);
               each scale runs iterations_per_scale iterations
               (default num_iterations) from the previous result upsampled
               (LANCZOS); progress reports carry the scale and its size.

Progress goes to `callback(progress)` every `callback_every` iterations and at
the last of each scale; nothing else leaves the device. Ctrl-C raises
`Interrupted` (a KeyboardInterrupt) carrying the last finished image (at the
content's size, colours treated as the run's would be). Tests: tests/test_driver.py,
tests/test_options.py."""
import collections
import time

import numpy as np

from . import layers
from .backend import get_array_module, is_gpu_array, resolve_device, to_device, to_host
from .colors import (check_preserve_colors, luminance_image, match_luminance,
                     transfer_luminance)
from .images import resize_to, validate_image
from .objective import GRAM_NORMS, StyleObjective, style_images
from .optimizers import check_optimizer, make_optimizer
from .presets import with_presets
from .progress import LOSS_NAMES, Interrupted, Progress  # noqa: F401 (the API's names here too)

INITS = ("noise", "content", "style", "blend")
DENOISE_NORMS = ("none", "hw")
DEFAULT_MIN_SIZE = 128


def check_iterations(n, name="num_iterations"):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number, got {n!r}")
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return int(n)


def initial_image(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.random(shape, dtype=np.float64) + 128.0).astype(np.float32)


def check_init(init, init_noise):
    """-> (init: a name from INITS or a validated image array, init_noise float)."""
    if init is None:
        init = "noise"
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}: use one of {INITS} or an image array")
    else:
        init = validate_image(init, "initial image")
    noise = layers.check_number(init_noise, "init_noise")
    if noise > 0 and isinstance(init, str) and init == "noise":
        raise ValueError("init_noise adds noise to a content/style/blend/image start; "
                         "init='noise' is noise already")
    return init, noise


def scale_sizes(shape, min_size):
    """Multiscale: (H, W) per scale, coarse to fine. The content's size times
    1, 1/√2, 1/2, ... for as long as the long side stays >= min_size (and both
    sides >= 16, what VGG-16's pools need), in reverse: consecutive scales are
    exactly √2 apart and the last is the content's own size (the first one's
    long side is in [min_size, √2·min_size) unless the short side stops it)."""
    h, w = shape[:2]
    long_side = max(h, w)
    sizes = [(h, w)]
    k = 1
    while long_side * 2 ** (-k / 2) >= min_size:
        f = 2 ** (-k / 2)
        hw = (round(h * f), round(w * f))
        if min(hw) < layers.MIN_IMAGE_SIZE:
            break
        sizes.append(hw)
        k += 1
    return sizes[::-1]


def _resized(img, hw):
    return img if tuple(img.shape[:2]) == tuple(hw) else resize_to(img, *hw)


def _scaled_style(style, content_hw, style_scale, check_only=False):
    """The style image with its long side style_scale × the content's long side."""
    if style_scale is None:
        return style
    h, w = style.shape[:2]
    target = style_scale * max(content_hw)
    f = target / max(h, w)
    hw = (max(1, round(h * f)), max(1, round(w * f)))
    if min(hw) < layers.MIN_IMAGE_SIZE:
        raise ValueError(f"style_scale {style_scale:g} makes a style image {hw[1]}x{hw[0]}; "
                         f"both sides must be at least {layers.MIN_IMAGE_SIZE}")
    return None if check_only else _resized(style, hw)


def make_initial_image(init, content, styles, blend_weights, seed, init_noise):
    """The start of a run at the content's size (float32 host array)."""
    shape = content.shape
    if isinstance(init, str) and init == "noise":
        return initial_image(shape, seed)
    if isinstance(init, str):
        hw = shape[:2]
        style = sum(w * to_host(_resized(s, hw)).astype(np.float64)
                    for s, w in zip(styles, blend_weights))
        c = to_host(content).astype(np.float64)
        base = {"content": c, "style": style, "blend": 0.5 * (c + style)}[init]
    else:
        base = to_host(_resized(init, shape[:2])).astype(np.float64)
    if init_noise > 0:
        rng = np.random.default_rng(seed)
        base = base + init_noise * (2.0 * rng.random(shape) - 1.0)
    return np.clip(base, 0.0, 255.0).astype(np.float32)


Plan = collections.namedtuple(
    "Plan", "num_iterations callback_every content styles blend_weights settings init "
            "init_noise preserve_colors style_scale sizes per_scale content_ids style_ids")


def check_arguments(content, style, content_layer_ids=(4,), style_layer_ids=tuple(range(13)),
                    weight_content=1.5, weight_style=10.0, weight_denoise=0.3,
                    num_iterations=120, step_size=10.0, callback_every=10, gram_norm="none",
                    init=None, *, init_noise=0.0, content_layer_weights=None,
                    style_layer_weights=None, style_blend_weights=None, style_scale=None,
                    constant_weights=False, optimizer="gd", learning_rate=None,
                    lbfgs_history=None, pooling=None, preserve_colors="none",
                    multiscale=False, min_size=None, iterations_per_scale=None,
                    denoise_norm="none"):
    """Every check of style_transfer's arguments that needs no model (so the CLI
    can run them before it loads the weights) -> a Plan; ValueError otherwise."""
    num_iterations = check_iterations(num_iterations)
    callback_every = check_iterations(callback_every, "callback_every") or 1
    step_size = layers.check_number(step_size, "step_size", positive=True)
    content = validate_image(content, "content image")
    styles, blend_weights = style_images(style, style_blend_weights)
    content_ids = layers.weighted_layer_ids(content_layer_ids, content_layer_weights,
                                            "content layers")[0]
    style_ids = layers.weighted_layer_ids(style_layer_ids, style_layer_weights, "style layers")[0]
    for v, name in ((weight_content, "weight_content"), (weight_style, "weight_style"),
                    (weight_denoise, "weight_denoise")):
        layers.check_number(v, name)
    if gram_norm not in GRAM_NORMS:
        raise ValueError(f"unknown gram_norm {gram_norm!r}: use one of {GRAM_NORMS}")
    if denoise_norm not in DENOISE_NORMS:
        raise ValueError(f"unknown denoise_norm {denoise_norm!r}: use one of {DENOISE_NORMS}")
    settings = check_optimizer(optimizer, step_size, learning_rate, lbfgs_history)
    init, init_noise = check_init(init, init_noise)
    preserve_colors = check_preserve_colors(preserve_colors)
    if pooling is not None:
        from .vgg16 import check_pooling
        check_pooling(pooling)
    if not isinstance(constant_weights, (bool, np.bool_)):
        raise ValueError(f"constant_weights must be True or False, got {constant_weights!r}")
    if style_scale is not None:
        style_scale = layers.check_number(style_scale, "style_scale")
        if style_scale == 0:
            raise ValueError("style_scale must be > 0")
    if not multiscale:
        if iterations_per_scale is not None:
            raise ValueError("iterations_per_scale is for multiscale=True")
        if min_size is not None:
            raise ValueError("min_size is for multiscale=True")
        sizes = [tuple(content.shape[:2])]
        per_scale = num_iterations
    else:
        min_size = check_iterations(DEFAULT_MIN_SIZE if min_size is None else min_size,
                                    "min_size")
        if min_size < layers.MIN_IMAGE_SIZE:
            raise ValueError(f"min_size must be at least {layers.MIN_IMAGE_SIZE}, got {min_size}")
        per_scale = num_iterations if iterations_per_scale is None else \
            check_iterations(iterations_per_scale, "iterations_per_scale")
        sizes = scale_sizes(content.shape, min_size)
    for s in styles:  # style_scale at every scale: fail now, not after the first
        for hw in sizes:
            _scaled_style(s, hw, style_scale, check_only=True)
    return Plan(num_iterations, callback_every, content, styles, blend_weights, settings, init,
                init_noise, preserve_colors, style_scale, sizes, per_scale, content_ids,
                style_ids)


@with_presets
def style_transfer(content, style, content_layer_ids=(4,), style_layer_ids=tuple(range(13)),
                   weight_content=1.5, weight_style=10.0, weight_denoise=0.3,
                   num_iterations=120, step_size=10.0, device="auto", seed=None,
                   callback=None, callback_every=10, model=None, gram_norm="none",
                   init=None, precision="fp32", *, init_noise=0.0,
                   content_layer_weights=None, style_layer_weights=None,
                   style_blend_weights=None, style_scale=None, constant_weights=False,
                   optimizer="gd", learning_rate=None, lbfgs_history=None, pooling=None,
                   preserve_colors="none", multiscale=False, min_size=None,
                   iterations_per_scale=None, check_memory=True, denoise_norm="none",
                   memory_plan="auto"):
    """Returns the mixed image, float32 (H, W, 3) 0..255, numpy or cupy like
    `content`. Every argument is checked (check_arguments) before the weights
    are loaded. Keyword-only `preset` ("tutorial", the default, or "quality") and
    `style_strength` (cpstyle/presets.py) fill in what the call does not give.
    check_memory (CPU only; the GPU path is not checked): before the weights
    load, compare the run's estimate (cpstyle/memory.py) with the available
    memory and raise cpstyle.memory.NotEnoughMemory (a MemoryError) if it does
    not fit, so that a run never dies of memory halfway; where the available
    memory is unknown the run goes ahead. False skips the check.
    memory_plan (CPU): "auto" (the default) evaluates the whole image at once
    if that fits, else the cheapest plan that does with VGG-16's first layers
    in bands of rows (cpstyle/banded.py: the same result, up to float rounding,
    in bounded memory, at some recompute); "whole" never bands; "lean" takes
    the plan that needs least; (split, rows) those bands. With
    check_memory=False, "auto" runs whole."""
    plan = check_arguments(
        content, style, content_layer_ids, style_layer_ids, weight_content, weight_style,
        weight_denoise, num_iterations, step_size, callback_every, gram_norm, init,
        init_noise=init_noise, content_layer_weights=content_layer_weights,
        style_layer_weights=style_layer_weights, style_blend_weights=style_blend_weights,
        style_scale=style_scale, constant_weights=constant_weights, optimizer=optimizer,
        learning_rate=learning_rate, lbfgs_history=lbfgs_history, pooling=pooling,
        preserve_colors=preserve_colors, multiscale=multiscale, min_size=min_size,
        iterations_per_scale=iterations_per_scale, denoise_norm=denoise_norm)
    content, styles, blend_weights = plan.content, plan.styles, plan.blend_weights
    init, init_noise, settings = plan.init, plan.init_noise, plan.settings
    preserve_colors, style_scale = plan.preserve_colors, plan.style_scale
    sizes, per_scale, callback_every = plan.sizes, plan.per_scale, plan.callback_every
    dev = resolve_device(device if model is None else model.device)
    if dev != "gpu" and precision != "fp32":
        raise ValueError(f"precision {precision!r} needs the GPU; the CPU runs fp32")
    bands = None
    if dev == "gpu":
        if memory_plan not in ("auto", "whole"):
            raise ValueError(f"memory_plan {memory_plan!r} is for the CPU; the GPU runs whole")
    elif check_memory or memory_plan not in ("auto", "whole"):
        from .memory import choose_plan
        bands = choose_plan(plan, include_weights=model is None,
                            available=None if check_memory else 10 ** 18,
                            memory_plan=memory_plan).bands
    if model is None:
        from .vgg16 import VGG16
        model = VGG16.load(device=dev)
    if pooling is not None:
        model = model.with_pooling(pooling)
    return_gpu = is_gpu_array(content)

    # colours: the run sees luminance only with "before"
    run_content, run_styles, run_init = content, styles, init
    if preserve_colors == "before":
        run_content = luminance_image(content)
        run_styles = [match_luminance(s, content) for s in styles]
        if not isinstance(init, str):
            run_init = luminance_image(_resized(init, content.shape[:2]))

    def finish(img):
        """The image at the content's size, colours as asked."""
        img = _resized(img, content.shape[:2])
        if preserve_colors != "none":
            img = transfer_luminance(img, content)
        return img

    x = None
    try:
        for k, hw in enumerate(sizes):
            c_k = _resized(run_content, hw)
            s_k = [_scaled_style(s, hw, style_scale) for s in run_styles]
            if x is None:
                x0 = make_initial_image(run_init, c_k, s_k, blend_weights, seed, init_noise)
            else:
                x0 = to_host(_resized(x, hw))
            report = dict(scale=k, num_scales=len(sizes), size=tuple(int(v) for v in hw))
            w_d = denoise_weight_at(weight_denoise, denoise_norm, constant_weights, hw)
            obj_kw = dict(gram_norm=gram_norm, content_layer_weights=content_layer_weights,
                          style_layer_weights=style_layer_weights,
                          style_blend_weights=blend_weights, constant_weights=constant_weights)
            if dev == "gpu":
                from .gpu_engine import GpuStyleTransfer
                engine = GpuStyleTransfer(model, c_k, s_k, content_layer_ids, style_layer_ids,
                                          weight_content, weight_style, w_d,
                                          precision=precision, optimizer=settings, **obj_kw)
                x = engine.run(x0, per_scale, None, callback, callback_every, report)
            else:
                objective = StyleObjective(c_k, s_k, content_layer_ids, style_layer_ids,
                                           weight_content, weight_style, w_d, model=model,
                                           bands=usable_bands(bands, plan, c_k, s_k), **obj_kw)
                x = _run_reference(objective, settings, x0, per_scale, callback,
                                   callback_every, report)
    except Interrupted as e:
        raise Interrupted(to_host(finish(e.image)), e.iteration) from None
    out = finish(x)
    if return_gpu:
        return get_array_module(content).asarray(out)
    return to_host(out)


def usable_bands(bands, plan, content, styles):
    """bands where every image of this scale can take them (tall enough), else
    None: the early scales of a multiscale run are small and run whole."""
    if bands is None:
        return None
    from .banded import check_bands
    top = max(list(plan.content_ids) + list(plan.style_ids))
    try:
        for img in [content] + list(styles):
            check_bands(bands, top, img.shape[0])
    except ValueError:
        return None
    return bands


def denoise_weight_at(weight_denoise, denoise_norm, constant_weights, hw):
    """The total variation's weight at an (H, W) scale (module docstring:
    denoise_norm)."""
    if denoise_norm == "hw" and constant_weights:
        return float(weight_denoise) / (int(hw[0]) * int(hw[1]))
    return weight_denoise


def _run_reference(objective, settings, x0, num_iterations, callback, callback_every, report):
    model = objective.model
    xp = model.xp
    opt = make_optimizer(settings)
    x = to_device(x0, xp, model.dtype)[None]
    t0 = time.perf_counter()
    it = 0
    try:
        while True:
            due = callback is not None and (it % callback_every == 0 or it == num_iterations)
            if it == num_iterations and not due:
                break
            losses, adj, grad = objective.evaluate(x)
            if due:
                lh, ah = to_host(losses), to_host(adj)
                callback(Progress(it, num_iterations, dict(zip(LOSS_NAMES, map(float, lh))),
                                  dict(zip(LOSS_NAMES, map(float, ah))), x[0],
                                  time.perf_counter() - t0, objective=objective.potential(lh),
                                  **report))
            if it == num_iterations:
                break
            x = opt.step(x, grad)
            it += 1
    except KeyboardInterrupt:
        raise Interrupted(to_host(x[0]), it) from None
    return x[0]
