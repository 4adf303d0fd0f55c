"""The time of an evaluation in bands (cpstyle/banded.py) against the whole one,
and against the cost memory.band_cost models for the planner.

    python -m bench.bands [--sizes 512,1024] [--repeats 3] [--no-write]

One process, the real weights, random content/style/mixed images at each size
(the style at the content's size, as the quality preset has it), the quality
preset's layers and weights (constant weights, Gram / (H·W)); each plan's
StyleObjective evaluated in turn, round after round (A, B, C, A, B, C, ...), so
the machine's load falls on every plan alike; the median per plan and its ratio
to the whole evaluation's median, beside the model's figure. Results:
bench/results/bands-cpu-<commit>.json. The machine is shared: the load average
is recorded at the start and the end."""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

PLANS = (None, (1, 128), (1, 512), (3, 128), (3, 512), (6, 128), (6, 512))
QUALITY = dict(content_layer_ids=[8], style_layer_ids=[0, 2, 4, 7, 10], gram_norm="hw",
               constant_weights=True, weight_content=1.0, weight_style=328.0,
               style_layer_weights=[16, 4, 1, 0.25, 0.25])
RESULTS = Path(__file__).resolve().parent / "results"


def run(size, repeats, plans=PLANS):
    from cpstyle import StyleObjective, VGG16, memory
    model = VGG16.load(device="cpu")
    rng = np.random.default_rng(0)
    c, s, x = (rng.uniform(0, 255, (size, size, 3)).astype(np.float32) for _ in range(3))
    x = x[None]
    objs = {p: StyleObjective(c, s, model=model, bands=p, weight_denoise=0.05 / size ** 2,
                              **QUALITY) for p in plans}
    ref = objs[None].evaluate(x)
    times = {p: [] for p in plans}
    err = {}
    for p, o in objs.items():  # a first call each: the workspaces are made
        losses, _, grad = o.evaluate(x)
        err[p] = float(np.abs(grad - ref[2]).max() / np.abs(ref[2]).max())
    for _ in range(repeats):
        for p, o in objs.items():
            t0 = time.perf_counter()
            o.evaluate(x)
            times[p].append(time.perf_counter() - t0)
    base = float(np.median(times[None]))
    out = []
    for p in plans:
        med = float(np.median(times[p]))
        out.append(dict(plan=p, seconds=times[p], median=med, ratio=med / base,
                        model=memory.band_cost(p, (size, size), 10), grad_rel_error=err[p]))
        print(f"{size:5d} {str(p):10s} {med:7.2f} s  ratio {med / base:5.2f}  "
              f"model {out[-1]['model']:5.2f}  grad error {err[p]:.1e}", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bands", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="512,1024")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    load0 = os.getloadavg()
    results = {int(s): run(int(s), a.repeats) for s in a.sizes.split(",")}
    load1 = os.getloadavg()
    print(f"load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end")
    if not a.no_write:
        from bench.memory import _commit
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"bands-cpu-{_commit()}.json"
        path.write_text(json.dumps(dict(
            machine=dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count()),
            load_average=dict(start=load0, end=load1), repeats=a.repeats,
            results=results), indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
