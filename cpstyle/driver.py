"""style_transfer: the tutorial's optimisation loop (DESIGN.md §5).

    x0 = uniform[0,1) + 128 (seeded)
    repeat: losses, grad = objective(x)        (current-iteration adj weights)
            x = clip(x − grad·step_size/(std(grad)+1e-8), 0, 255)

Progress goes to `callback(progress)` every `callback_every` iterations and at
the last; nothing else leaves the device. Ctrl-C raises `Interrupted` (a
KeyboardInterrupt) carrying the last finished image. Tests: tests/test_driver.py."""
import dataclasses
import time

import numpy as np

from .backend import get_array_module, is_gpu_array, resolve_device, to_device, to_host
from .images import validate_image
from .objective import StyleObjective
from .ops.update import update_cpu

LOSS_NAMES = ("content", "style", "denoise")


@dataclasses.dataclass
class Progress:
    iteration: int            # iterations done so far (0 = the initial image's losses)
    num_iterations: int
    losses: dict              # {"content", "style", "denoise"}: the losses at `image`
    adj: dict                 # the three 1/(L + 1e-10)
    image: object             # (H, W, 3) float32, on the run's backend
    elapsed: float            # seconds since the loop started


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during style_transfer; .image is the last finished image (host)."""

    def __init__(self, image, iteration):
        super().__init__(f"interrupted after {iteration} iterations")
        self.image, self.iteration = image, iteration


def check_iterations(n, name="num_iterations"):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number, got {n!r}")
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return int(n)


def check_step_size(s):
    try:
        s = float(s)
    except (TypeError, ValueError):
        raise ValueError(f"step_size must be a number, got {s!r}") from None
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"step_size must be a finite number > 0, got {s}")
    return s


def initial_image(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.random(shape, dtype=np.float64) + 128.0).astype(np.float32)


def style_transfer(content, style, content_layer_ids=(4,), style_layer_ids=tuple(range(13)),
                   weight_content=1.5, weight_style=10.0, weight_denoise=0.3,
                   num_iterations=120, step_size=10.0, device="auto", seed=None,
                   callback=None, callback_every=10, model=None, gram_norm="none",
                   init=None, precision="fp32"):
    """Returns the mixed image, float32 (H, W, 3) 0..255, numpy or cupy like `content`."""
    num_iterations = check_iterations(num_iterations)
    callback_every = check_iterations(callback_every, "callback_every") or 1
    step_size = check_step_size(step_size)
    content = validate_image(content, "content image")
    style = validate_image(style, "style image")
    dev = resolve_device(device if model is None else model.device)
    if model is None:
        from .vgg16 import VGG16
        model = VGG16.load(device=dev)
    return_gpu = is_gpu_array(content)
    x0 = initial_image(content.shape, seed) if init is None else validate_image(init, "initial image")

    if dev == "gpu":
        from .gpu_engine import GpuStyleTransfer
        engine = GpuStyleTransfer(model, content, style, content_layer_ids, style_layer_ids,
                                  weight_content, weight_style, weight_denoise,
                                  gram_norm=gram_norm, precision=precision)
        out = engine.run(x0, num_iterations, step_size, callback, callback_every)
    else:
        if precision != "fp32":
            raise ValueError(f"precision {precision!r} needs the GPU; the CPU runs fp32")
        out = _run_reference(model, content, style, content_layer_ids, style_layer_ids,
                             weight_content, weight_style, weight_denoise, gram_norm,
                             x0, num_iterations, step_size, callback, callback_every)
    if return_gpu:
        return get_array_module(content).asarray(out)
    return to_host(out)


def _run_reference(model, content, style, content_layer_ids, style_layer_ids,
                   weight_content, weight_style, weight_denoise, gram_norm,
                   x0, num_iterations, step_size, callback, callback_every):
    objective = StyleObjective(content, style, content_layer_ids, style_layer_ids,
                               weight_content, weight_style, weight_denoise, model=model,
                               gram_norm=gram_norm)
    xp = model.xp
    x = to_device(x0, xp, model.dtype)[None]
    t0 = time.perf_counter()
    it = 0
    try:
        while True:
            report = callback is not None and (it % callback_every == 0 or it == num_iterations)
            if it == num_iterations and not report:
                break
            losses, adj, grad = objective.evaluate(x)
            if report:
                lh, ah = to_host(losses), to_host(adj)
                callback(Progress(it, num_iterations, dict(zip(LOSS_NAMES, map(float, lh))),
                                  dict(zip(LOSS_NAMES, map(float, ah))), x[0],
                                  time.perf_counter() - t0))
            if it == num_iterations:
                break
            x = update_cpu(x, grad, step_size)
            it += 1
    except KeyboardInterrupt:
        raise Interrupted(to_host(x[0]), it) from None
    return x[0]
