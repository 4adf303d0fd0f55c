"""The CPU memory model (cpstyle/memory.py) against measured peaks.

    python -m bench.memory [--quick] [--sizes 256,512,1024] [--no-write]

Each case runs in a fresh subprocess what `cpstyle run` runs (the bundled demo
pair, the content at the case's long side (upscaled past the file's 512 px), the
style as the preset loads it, device cpu, seed 0): load the images, load the
weights, note the RSS, reset the peak (/proc/self/clear_refs 5, so the weights
load's own transient peak is not counted), run style_transfer, read the peak.
Printed, one line per case:

    preset | size | rss after weights | ru_maxrss | measured run | model | error

Cases: the quality preset (the CLI's default), the tutorial preset, and quality
with multiscale, each at every size, 2 iterations (a scale).

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
PRESETS = ("quality", "tutorial", "quality+multiscale")
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
    from cpstyle.memory import plan_estimator, resize_hw, weights_cpu
    from cpstyle.vgg16 import VGG16

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
    model_bytes = plan_estimator(plan, headroom=1.0)(max(content.shape[:2]))
    before = _status()["VmRSS"]
    model = VGG16.load(device="cpu")
    after = _status()
    maxrss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reset = _reset_peak()
    t0 = time.perf_counter()
    style_transfer(content, style, device="cpu", seed=0, model=model, **kw)
    seconds = time.perf_counter() - t0
    end = _status()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = end["VmHWM"] if reset else maxrss
    return dict(preset=preset, long_side=long_side, size=list(content.shape[:2]),
                style_size=list(style.shape[:2]), iterations=iterations,
                rss_before_weights=before, rss_after_weights=after["VmRSS"],
                weights_measured=after["VmRSS"] - before, weights_model=weights_cpu(),
                maxrss_after_weights=maxrss_load, peak_reset=reset,
                peak_rss_since_weights=peak, ru_maxrss=maxrss,
                measured=peak - after["VmRSS"], model=model_bytes,
                error=model_bytes / (peak - after["VmRSS"]) - 1.0, seconds=seconds)


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
            f"measured run {_mb(r['measured'])} | model {_mb(r['model'])} | "
            f"{100 * r['error']:+.1f}%")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n")[0])
    p.add_argument("--worker", nargs=3, metavar=("PRESET", "PX", "ITERATIONS"),
                   help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="one case: quality at 128 px")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker[0], int(a.worker[1]), int(a.worker[2]))))
        return 0
    cases = ([("quality", 128)] if a.quick else
             [(pr, int(s)) for pr in PRESETS for s in a.sizes.split(",")])
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{ITERATIONS} iterations; model: cpstyle/memory.py estimate_cpu", flush=True)
    results = []
    for preset, size in cases:
        r = measure(preset, size)
        results.append(r)
        print(line(r), flush=True)
    worst = max(abs(r["error"]) for r in results)
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
