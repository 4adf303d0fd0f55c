"""The CPU memory model (cpstyle/memory.py) against measured peaks.

    python -m bench.memory [--quick] [--sizes 256,512,1024] [--cases ...] [--no-write]

Each case runs in a fresh subprocess what `cpstyle run` runs (the bundled demo
pair, the content at the case's long side (upscaled past the file's 512 px), the
style as the preset loads it, device cpu, seed 0): load the images, load the
weights, note the RSS, reset the peak (/proc/self/clear_refs 5, so the weights
load's own transient peak is not counted), run style_transfer, read the peak.
Printed, one line per case:

    preset | size | rss after weights | ru_maxrss | measured run | model | error

Cases: the quality preset (the CLI's default), the tutorial preset, and quality
with multiscale, each at every size, 2 iterations (a scale); and the memory plans
in bands (cpstyle/banded.py): "PRESET@split:rows" runs style_transfer with
memory_plan=(split, rows), "PRESET@lean" with "lean" (--cases picks cases).

measured run = peak RSS since the reset − RSS after the weights load, the figure
the model predicts. Results: bench/results/memory-cpu-<commit>.json.
Tests: tests/test_memory.py (one small case through `measure`)."""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

# "+multiscale": the preset with multiscale=True (min_size 128, 2 iterations a scale)
PRESETS = ("quality", "tutorial", "quality+multiscale", "quality@3:128", "quality@6:64",
           "tutorial@1:256")
SIZES = (256, 512, 1024)
ITERATIONS = 2
TOLERANCE = 0.15
RESULTS = Path(__file__).resolve().parent / "results"
# What the model still misses, as measured on the 2-core VM (written into the JSON).
REMAINING_ERROR = (
    "Within -3%..+12% at 128..1024 px (2 iterations a scale; quality, tutorial, and "
    "quality with multiscale, whose peak is the last scale's targets beside the "
    "previous scale's objective). Not derived from "
    "shapes: OpenBLAS's packing buffers, a measured constant of 6 MB per thread "
    "(memory.BLAS_BUFFER_BYTES); small images touch less of them, and of the scratch "
    "and unfold blocks, so the model is high at 128 px (tutorial +12%: its peak there is "
    "the targets' forward of the 300 px style). At 256..1024 px the model is 0-3% low: "
    "small temporaries it does not count (the pools' per-block arrays in each thread, "
    "NumPy's std/clip temporaries, the pool threads' malloc arenas, 2 MB huge-page "
    "rounding).")


def _status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(preset, long_side, iterations):
    """One case, in this (fresh) process -> dict of bytes."""
    import math

    from cpstyle import layers, presets
    from cpstyle.cli import STYLE_SIZE, load_input
    from cpstyle.driver import check_arguments, style_transfer
    from cpstyle.images import demo_paths, resize_to
    from cpstyle.memory import choose_plan, plan_estimator, resize_hw, weights_cpu
    from cpstyle.vgg16 import VGG16

    torch_side = preset.startswith("torch:")
    if torch_side:  # bench/torch_reference.py on the same images and options
        preset = preset[len("torch:"):]
    preset, _, mplan = preset.partition("@")
    memory_plan = "whole"
    if mplan:
        memory_plan = mplan if mplan in ("lean", "auto") else tuple(map(int, mplan.split(":")))
    name, _, extra = preset.partition("+")
    given = dict(num_iterations=iterations, **({"multiscale": True} if extra else {}))
    cfg = presets.PRESETS[name]
    content_path, style_path = demo_paths()
    content = load_input(content_path, long_side, "content image")
    if max(content.shape[:2]) < long_side:  # the demo content is 512 px: upscale it
        content = resize_to(content, *resize_hw(content.shape[:2], long_side))
    scale = cfg.get("style_scale")
    style_max = (max(layers.MIN_IMAGE_SIZE, math.ceil(scale * max(content.shape[:2])))
                 if scale is not None else STYLE_SIZE)
    style = load_input(style_path, style_max, "style image")
    kw = dict(given, preset=name)
    settings = presets.settings(name, given)
    plan = check_arguments(content, style, **{k: v for k, v in settings.items()
                                              if k not in ("content_layer_ids",
                                                           "style_layer_ids")},
                           content_layer_ids=settings["content_layer_ids"],
                           style_layer_ids=settings["style_layer_ids"])
    bands = memory_plan if isinstance(memory_plan, tuple) else None
    if memory_plan == "lean":
        bands = choose_plan(plan, available=10 ** 18, memory_plan="lean").bands
    elif memory_plan == "auto":  # what the free memory allows now, as `cpstyle run`
        bands = choose_plan(plan).bands
    model_bytes = plan_estimator(plan, headroom=1.0, bands=bands)(max(content.shape[:2]))
    if torch_side:
        return torch_worker(name, content, style, settings, long_side, iterations)
    before = _status()["VmRSS"]
    model = VGG16.load(device="cpu")
    after = _status()
    maxrss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reset = _reset_peak()
    t0 = time.perf_counter()
    style_transfer(content, style, device="cpu", seed=0, model=model, memory_plan=bands or "whole",
                   check_memory=False, **kw)
    seconds = time.perf_counter() - t0
    end = _status()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = end["VmHWM"] if reset else maxrss
    return dict(preset=preset + (f"@{mplan}" if mplan else ""), bands=bands,
                long_side=long_side, size=list(content.shape[:2]),
                style_size=list(style.shape[:2]), iterations=iterations,
                rss_before_weights=before, rss_after_weights=after["VmRSS"],
                weights_measured=after["VmRSS"] - before, weights_model=weights_cpu(),
                maxrss_after_weights=maxrss_load, peak_reset=reset,
                peak_rss_since_weights=peak, ru_maxrss=maxrss,
                measured=peak - after["VmRSS"], model=model_bytes,
                error=model_bytes / (peak - after["VmRSS"]) - 1.0, seconds=seconds,
                measured_per_mp=(peak - after["VmRSS"]) / (content.shape[0] * content.shape[1] / 1e6))


def torch_worker(name, content, style, settings, long_side, iterations):
    """The PyTorch side of a case (the tutorial preset only: plain gradient steps,
    reciprocal weights, torch_reference's own objective): peak RSS since its
    weights load, as worker measures cpstyle's."""
    import torch

    from bench import torch_reference as tr
    if name != "tutorial":
        raise ValueError("the PyTorch side runs the tutorial preset (gd, reciprocal weights)")
    torch.set_num_threads(os.cpu_count() or 1)
    before = _status()["VmRSS"]
    model = tr.TorchVGG16(tr.load_weights(), torch.device("cpu"))
    after = _status()
    reset = _reset_peak()
    t0 = time.perf_counter()
    tr.torch_style_transfer(content, style, settings["content_layer_ids"],
                            settings["style_layer_ids"], num_iterations=iterations,
                            seed=0, model=model)
    seconds = time.perf_counter() - t0
    end = _status()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = end["VmHWM"] if reset else maxrss
    return dict(preset="torch:" + name, bands=None, long_side=long_side,
                size=list(content.shape[:2]), style_size=list(style.shape[:2]),
                iterations=iterations, rss_before_weights=before,
                rss_after_weights=after["VmRSS"], peak_reset=reset,
                peak_rss_since_weights=peak, ru_maxrss=maxrss,
                measured=peak - after["VmRSS"], model=None, error=None, seconds=seconds,
                measured_per_mp=(peak - after["VmRSS"]) / (content.shape[0] * content.shape[1] / 1e6))


def measure(preset, long_side, iterations=ITERATIONS, timeout=600):
    """Run one case in a fresh subprocess -> its dict."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "bench.memory", "--worker", preset,
                          str(long_side), str(iterations)], capture_output=True, text=True,
                         cwd=root, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"memory case {preset} {long_side} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_size(long_side, iterations=2, refuse_side=9000, timeout=3600, square=True):
    """Issue #13's CPU targets through the CLI itself: `cpstyle run --iterations 2`
    (the default preset) on the demo content upscaled to long_side (stretched
    to a square with `square`), the peak
    RSS of that child process (ru_maxrss of the waited-for child), its time and
    what it said on stderr; then a refuse_side² content, which must be refused
    at once: exit 2, one line, nothing written. -> dict."""
    import tempfile

    import numpy as np
    from PIL import Image

    from cpstyle.images import demo_paths, load_image, resize_to
    from cpstyle.memory import available_cpu, resize_hw, total_cpu
    content_path, style_path = demo_paths()
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        c = load_image(content_path)
        # the size is a square: the demo content stretched to it
        big = resize_to(c, long_side, long_side) if square else \
            resize_to(c, *resize_hw(c.shape[:2], long_side))
        cpath = Path(tmp) / f"content-{long_side}.png"
        Image.fromarray(np.clip(np.rint(big), 0, 255).astype(np.uint8)).save(cpath)
        big_shape = big.shape[:2]
        del big
        for name, path, args in (
                ("run", cpath, ["--iterations", str(iterations)]),
                ("refuse", None, [])):
            if name == "refuse":
                rng = np.random.default_rng(0)
                path = Path(tmp) / f"content-{refuse_side}.png"
                Image.fromarray(rng.integers(0, 256, (refuse_side, refuse_side, 3),
                                             dtype=np.uint8)).save(path)
            result = Path(tmp) / f"{name}.png"
            free = available_cpu()
            t0 = time.perf_counter()
            child = subprocess.Popen([sys.executable, "-m", "cpstyle", "run", str(path),
                                      str(style_path), "-o", str(result), "--device", "cpu",
                                      *args], cwd=root, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
            _, se = child.communicate(timeout=timeout)
            seconds = time.perf_counter() - t0
            # the largest peak of the children waited for: the run comes first
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
            lines = [ln.strip() for ln in se.replace("\r", "\n").splitlines() if ln.strip()]
            out[name] = dict(size=refuse_side if name == "refuse" else
                             ([long_side] * 2 if square else list(big_shape)),
                             returncode=child.returncode, seconds=round(seconds, 1),
                             peak_rss=peak if name == "run" else None,
                             available_before=free, ram=total_cpu(),
                             stderr_first=lines[:3], stderr_last=lines[-3:],
                             wrote_output=result.exists())
            print(f"{name} {out[name]['size']} px: exit {child.returncode} in {seconds:.1f} s"
                  + (f", peak RSS {peak / 1e9:.2f} GB" if name == "run" else "")
                  + f"; {lines[:1]}", flush=True)
    return out


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _mb(n):
    return f"{n / 1e6:8.1f} MB"


def line(r):
    return (f"{r['preset']:18s} | {r['size'][1]}x{r['size'][0]} | rss after weights "
            f"{_mb(r['rss_after_weights'])} | ru_maxrss {_mb(r['ru_maxrss'])} | "
            f"measured run {_mb(r['measured'])} ({r['measured_per_mp'] / 1e6:.0f} MB/MP) | "
            + (f"model {_mb(r['model'])} | {100 * r['error']:+.1f}%" if r["model"] is not None
               else "no model"))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs=3, metavar=("PRESET", "PX", "ITERATIONS"),
                   help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="one case: quality at 128 px")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--cases", default=",".join(PRESETS),
                   help="presets, with +multiscale and @split:rows or @lean (default: %(default)s)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per case")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--print-size", type=int, default=None, metavar="PX",
                   help="instead: `cpstyle run --iterations 2` at PX through the CLI, its "
                        "peak RSS, and a 9000x9000 content refused "
                        "(bench/results/print-size-cpu-<commit>.json)")
    a = p.parse_args(argv)
    if a.print_size:
        r = print_size(a.print_size)
        r.update(machine=dict(cpu=platform.processor() or platform.machine(),
                              cores=os.cpu_count()), commit=_commit())
        if not a.no_write:
            RESULTS.mkdir(exist_ok=True)
            path = RESULTS / f"print-size-cpu-{a.print_size}-{_commit()}.json"
            path.write_text(json.dumps(r, indent=1) + "\n")
            print(f"wrote {path}")
        return 0
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), int(a.worker[2]))))
        return 0
    cases = ([("quality", 128)] if a.quick else
             [(pr, int(s)) for pr in a.cases.split(",") for s in a.sizes.split(",")])
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{ITERATIONS} iterations; model: cpstyle/memory.py estimate_cpu", flush=True)
    results = []
    for preset, size in cases:
        r = measure(preset, size, timeout=a.timeout)
        results.append(r)
        print(line(r), flush=True)
    worst = max(abs(r["error"]) for r in results if r["error"] is not None)
    print(f"worst error {100 * worst:.1f}% (target ±{100 * TOLERANCE:.0f}%)")
    if not a.no_write and not a.quick:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"memory-cpu-{_commit()}.json"
        path.write_text(json.dumps(dict(
            machine=dict(cpu=platform.processor() or platform.machine(),
                         cores=os.cpu_count()),
            iterations=ITERATIONS, tolerance=TOLERANCE, worst_error=worst,
            within_tolerance=worst <= TOLERANCE, remaining_error=REMAINING_ERROR,
            measured="peak RSS since the reset after the weights load (VmHWM after "
                     "/proc/self/clear_refs 5) minus the RSS after the weights load; "
                     "ru_maxrss: the whole process's peak",
            cases=results), indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
