"""Winograd F(2x2, 3x3) (cpstyle/ops/winograd.py) against the NumPy engine's
current conv forms (ops/conv.py with WINOGRAD off: the row-shifted form, or
the one-GEMM forms where that does not apply), side by side in one process.

    python -m bench.winograd [--sizes 256,512] [--repeats 7] [--eval-repeats 7]
                             [--no-layers] [--shapes 16:256,32:128] [--no-eval]
                             [--quick] [--out PATH | --no-save]

Per VGG-16 conv layer at each content size (the shapes the tutorial's 13
layers see: layers.LAYER_CHANNELS, halved after each pool; random He weights
and inputs): the forward (conv_forward_cpu with bias and ReLU, into a kept
`out`, the model's GEMM operands) and the backward to the input
(conv_input_grad_cpu, with the ReLU-mask epilogue where the model folds one
in). Each is checked first (Winograd against the current form: max error
over max|y| at most 1e-5, else the case is not timed and the exit status is
1), warmed up, then timed ALTERNATING (current, Winograd, current, ...)
--repeats times; the ratio is the median of the pairs' own ratios
(Winograd / current), followed by their spread (min..max). Winograd is timed
on every layer, also where conv.uses_winograd would not take it; `rule`
says whether it would. --shapes adds square cases SIZE:CHANNELS (Cin = Cout,
the backward with an epilogue) around the rule's limits.

Then one whole objective evaluation (StyleObjective, the tutorial's layers:
content [4], style all 13, weights 1.5 / 10 / 0.3, random content, style and
image in 0..255, the real weights) with conv.WINOGRAD off and on (its
default rule), alternating: the losses must agree to 1e-5 relative and the
gradients to a cosine > 0.99999 first.

The machine is shared and noisy: only the ratios of neighbouring runs mean
much, and the load average (1, 5, 15 minutes) at the start and the end says
how much else ran. One line per case:

    winograd fwd | conv3_2 | 1x64x64x256->256 | current 27.52 ms | winograd 18.37 ms |
        ratio 0.67 (median of 7 pairs: 0.62..0.71) | rule on

and a JSON with every sample in bench/results/<date>-cpu-winograd-<commit8>.json.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from bench.run import REPO, LAYER_SETS, cpu_name, git_commit

WEIGHTS = dict(weight_content=1.5, weight_style=10.0, weight_denoise=0.3)
CHECK_TOL = 1e-5  # float32 forms against each other: both ~3e-7 .. 6e-7 of max|y| off float64
EVAL_LOSS_RTOL, EVAL_MIN_COS = 1e-5, 0.99999


def layer_shapes(n):
    """[(id, name, h, w, cin, cout, epilogue in the backward)] at n x n content."""
    from cpstyle.layers import LAYER_CHANNELS, LAYER_NAMES, POOL_AFTER
    out, s = [], n
    for i, (cin, cout) in enumerate(LAYER_CHANNELS):
        # the model folds layer i-1's ReLU mask into layer i's backward unless a
        # pool sits between them (vgg16.backward)
        out.append((i, LAYER_NAMES[i], s, s, cin, cout, i > 0 and (i - 1) not in POOL_AFTER))
        if i in POOL_AFTER:
            s //= 2
    return out


class Forms:
    """conv.WINOGRAD off (current) or on everywhere (winograd) inside `with`."""

    def __init__(self, winograd):
        self.winograd = winograd

    def __enter__(self):
        from cpstyle.ops import conv
        self.saved = conv.WINOGRAD, conv.WINOGRAD_MIN_CHANNELS, conv.WINOGRAD_MIN_WORK
        conv.WINOGRAD = self.winograd
        conv.WINOGRAD_MIN_CHANNELS, conv.WINOGRAD_MIN_WORK = 1, 1

    def __exit__(self, *exc):
        from cpstyle.ops import conv
        conv.WINOGRAD, conv.WINOGRAD_MIN_CHANNELS, conv.WINOGRAD_MIN_WORK = self.saved


def alternate(fa, fb, repeats):
    """Warm both up, then time a, b, a, b, ... -> (a seconds, b seconds)."""
    fa(), fb()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fa()
        t1 = time.perf_counter()
        fb()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return ta, tb


def summary(ta, tb):
    ratios = [b / a for a, b in zip(ta, tb)]
    return {"current_s": ta, "winograd_s": tb, "pair_ratios": ratios,
            "current_median_s": statistics.median(ta), "winograd_median_s": statistics.median(tb),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def conv_case(direction, layer, n, repeats, rng):
    """One layer's forward or backward conv: check, then alternate -> record."""
    from cpstyle.ops import conv
    i, name, h, w, cin, cout, fold = layer
    wt = (rng.standard_normal((3, 3, cin, cout)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
    wflip = conv.flip_kernel(wt)
    fwd_mat, bwd_mat = conv.gemm_weights(wt, wflip)
    if direction == "fwd":
        x = np.abs(rng.standard_normal((1, h, w, cin))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        out = np.empty((1, h, w, cout), np.float32)
        run = lambda: conv.conv_forward_cpu(x, wt, b, wflip, out=out, wmat=fwd_mat)[0]
        rule = conv.uses_winograd(cin, cout, h * w, np.float32)
        shape = f"1x{h}x{w}x{cin}->{cout}"
    else:
        dz = rng.standard_normal((1, h, w, cout)).astype(np.float32)
        y_below = rng.standard_normal((1, h, w, cin)).astype(np.float32)
        out = np.empty((1, h, w, cin), np.float32)
        epi = conv.relu_epilogue(y_below) if fold else None
        run = lambda: conv.conv_input_grad_cpu(dz, wt, wflip, epilogue=epi, out=out, wmat=bwd_mat)
        rule = conv.uses_winograd(cout, cin, h * w, np.float32)
        shape = f"1x{h}x{w}x{cout}->{cin}"

    def current():
        with Forms(False):
            return run()

    def wino():
        with Forms(True):
            return run()

    ref = current().copy()
    err = float(np.abs(wino() - ref).max() / max(np.abs(ref).max(), 1e-30))
    rec = {"direction": direction, "layer": name, "size": n, "shape": shape, "rule": rule,
           "epilogue": direction == "bwd" and fold, "check_err": err, "check_ok": err <= CHECK_TOL}
    if not rec["check_ok"]:
        print(f"winograd {direction} | {name} | {shape} | check FAILED: max err {err:.2e} of max|y| "
              f"(> {CHECK_TOL}) | not timed", flush=True)
        return rec
    rec.update(summary(*alternate(current, wino, repeats)))
    print(f"winograd {direction} | {name} | {shape} | current {rec['current_median_s'] * 1e3:.2f} ms | "
          f"winograd {rec['winograd_median_s'] * 1e3:.2f} ms | ratio {rec['ratio']:.2f} (median of "
          f"{repeats} pairs: {rec['ratio_min']:.2f}..{rec['ratio_max']:.2f}) | "
          f"rule {'on' if rule else 'off'}", flush=True)
    return rec


def eval_case(n, repeats, model, rng):
    """One tutorial objective evaluation at n x n, WINOGRAD off and on (its rule)."""
    import cpstyle
    from cpstyle.ops import conv
    content_ids, style_ids = LAYER_SETS["tutorial"]
    content = rng.uniform(0, 255, (n, n, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (n, n, 3)).astype(np.float32)
    x = rng.uniform(0, 255, (n, n, 3)).astype(np.float32)
    obj = cpstyle.StyleObjective(content, style, content_layer_ids=content_ids,
                                 style_layer_ids=style_ids, model=model, **WEIGHTS)
    saved = conv.WINOGRAD

    def evaluate(on):
        conv.WINOGRAD = on
        try:
            return obj(x)
        finally:
            conv.WINOGRAD = saved

    (l0, g0), (l1, g1) = evaluate(False), evaluate(True)
    g0 = np.array(g0, np.float64).ravel()
    g1 = np.asarray(g1, np.float64).ravel()
    rel = max(abs(l1[k] - l0[k]) / max(abs(l0[k]), 1e-30) for k in l0)
    cos = float(g0 @ g1 / (np.linalg.norm(g0) * np.linalg.norm(g1) + 1e-30))
    ok = rel <= EVAL_LOSS_RTOL and cos > EVAL_MIN_COS
    rec = {"size": n, "layers": "tutorial", "check_loss_rel": rel, "check_grad_cos": cos,
           "check_ok": ok}
    what = f"losses max rel diff {rel:.1e} (<= {EVAL_LOSS_RTOL}) | grad cosine {cos:.8f} (> {EVAL_MIN_COS})"
    if not ok:
        print(f"winograd eval | {n}x{n} tutorial | check FAILED: {what} | not timed", flush=True)
        return rec
    rec.update(summary(*alternate(lambda: evaluate(False), lambda: evaluate(True), repeats)))
    print(f"winograd eval | {n}x{n} tutorial | {what} | current {rec['current_median_s']:.3f} s | "
          f"winograd {rec['winograd_median_s']:.3f} s | ratio {rec['ratio']:.3f} (median of {repeats} "
          f"pairs: {rec['ratio_min']:.3f}..{rec['ratio_max']:.3f})", flush=True)
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,512", help="content sizes, comma separated")
    ap.add_argument("--repeats", type=int, default=7, help="alternating pairs per layer case")
    ap.add_argument("--eval-repeats", type=int, default=7, help="alternating pairs per evaluation")
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer cases")
    ap.add_argument("--shapes", default="",
                    help="extra square cases SIZE:CHANNELS (Cin = Cout), comma separated, "
                         "e.g. 16:256,32:128: where conv.uses_winograd's limits lie")
    ap.add_argument("--no-eval", action="store_true", help="skip the whole evaluation")
    ap.add_argument("--quick", action="store_true", help="smoke test: 32 px, 2 pairs, random weights")
    ap.add_argument("--out", help="JSON path (default bench/results/<date>-cpu-winograd-<commit8>.json)")
    ap.add_argument("--no-save", action="store_true")
    opts = ap.parse_args(argv)
    import cpstyle
    from cpstyle.ops import blas
    from cpstyle.ops.parallel import workers
    sizes = [32] if opts.quick else [int(s) for s in opts.sizes.split(",")]
    repeats, eval_repeats = (2, 2) if opts.quick else (opts.repeats, opts.eval_repeats)
    commit, dirty = git_commit()
    device = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": workers(),
              "numpy": np.__version__, "blas_reachable": blas.available(np.float32),
              "python": platform.python_version()}
    load = os.getloadavg()
    print(f"device: cpu | {device['cpu']} | {device['cores']} cores, {device['threads']} threads | "
          f"numpy {device['numpy']} | commit {commit[:8]}{' (dirty)' if dirty else ''} | "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    if not device["blas_reachable"]:
        print("NumPy's BLAS is not reachable (ops/blas.py): Winograd never runs here")
        return 1
    rng = np.random.default_rng(0)
    layers, evals = [], []
    if not opts.no_layers:
        for n in sizes:
            for layer in layer_shapes(n):
                for direction in ("fwd", "bwd"):
                    layers.append(conv_case(direction, layer, n, repeats, rng))
    for case in filter(None, opts.shapes.split(",")):
        side, ch = (int(v) for v in case.split(":"))
        for direction in ("fwd", "bwd"):
            layers.append(conv_case(direction, (None, f"{side}:{ch}", side, side, ch, ch, True),
                                    side, repeats, rng))
    if not opts.no_eval:
        if opts.quick:
            from cpstyle.layers import LAYER_CHANNELS
            from cpstyle.vgg16 import random_params
            model = cpstyle.VGG16(random_params(LAYER_CHANNELS, rng), device="cpu")
        else:
            model = cpstyle.VGG16.load(device="cpu")
        for n in sizes:
            evals.append(eval_case(n, eval_repeats, model, rng))
    ok = all(r["check_ok"] for r in layers + evals)
    load_end = os.getloadavg()
    print(f"load average at the end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f} "
          f"(the machine's other work: {device['cores']} cores)")
    doc = {"benchmark": "bench/winograd.py", "date": datetime.date.today().isoformat(),
           "commit": commit, "dirty": dirty, "device": device, "repeats": repeats,
           "eval_repeats": eval_repeats, "load_average": [list(load), list(load_end)], "weights": "random" if opts.quick else "real",
           "layers": layers, "evaluations": evals, "checks_passed": ok}
    if not opts.no_save and (opts.out or not opts.quick):
        path = opts.out or os.path.join(REPO, "bench", "results",
                                        f"{doc['date']}-cpu-winograd-{commit[:8]}.json")
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {os.path.relpath(path, REPO)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
