"""The quality benchmark (DESIGN.md §10): cpstyle's presets against the classic
recipe, scored by a network the optimisation never sees.

    python -m bench.quality                         # 256 and 512 px, every method, CPU
    python -m bench.quality --sizes 256 --methods classic,quality
    python -m bench.quality --quick                 # 64 px, 2 pairs, a few iterations (smoke)
    python -m bench.quality --resume results/X.json # skip what X.json already has
    python -m bench.quality --device gpu --no-score --work-dir DIR   # a GPU machine without
    python -m bench.quality --score results/X.json --work-dir DIR    # ... AlexNet, scored here

Pairs (cpstyle/data, one style each): grace_hopper + the_scream (portrait),
tubingen + starry_night (city), chelsea + great_wave (animal), summer_palace +
composition_vii (landscape). The content is loaded at --sizes px (long side,
never upscaled); the style with its long side equal to the content's.

Methods, each one picture per pair and size, seed 0:

    classic-K    the anchor: Gatys' recipe in PyTorch (bench/classic_reference.py:
                 content conv4_2, style relu1_1..relu5_1 weighted K·1e3/C², Gram/(H·W),
                 L-BFGS with strong Wolfe line search, 300 iterations, from the
                 content), K = 100, 1000, 10000 (its frontier)
    tutorial     cpstyle --preset tutorial (the style at most 300 px, as the CLI
                 loads it)
    quality      cpstyle --preset quality
    quality-sS   the quality preset at style_strength S (--strengths)

Scores (bench/lpips.py, AlexNet): `lpips` = LPIPS v0.1 between content and
output (lower keeps more of the content); `style_gap` = mean over AlexNet's five
ReLU taps of ||G(out) − G(style)||² / ||G(content) − G(style)||², G = FᵀF/(H·W),
the style at the content's long side (1: the content's statistics; 0: the
style's). `seconds`: wall time of one picture after the weights are loaded
(targets included), methods of one pair run one after another, so every ratio
comes from one run on one machine. The summary gives each method's mean over the
pairs, whether an anchor point beats the quality preset on both axes at once,
and the preset's time over the anchor's.

Writes results/quality-<device>-<size list>-<commit>.json (rewritten after every
picture, so --resume continues a run that was stopped) and a contact sheet
(rows: pairs; columns: content, style, each method) beside it; the pictures
themselves go to --work-dir (not committed). `--no-score` leaves the scores out
(null) and needs no AlexNet weights: the device machine's carry has room for the
VGG-16 file only, so a GPU run writes its pictures and times there and
`--score` scores them afterwards from the saved PNGs (8-bit, as every
picture a user gets: at 64 px, --quick, the 16 PNGs scored within 9e-4 of
their float images).
Tests: tests/test_bench_quality.py.
"""
import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PAIRS = (("grace_hopper", "the_scream"), ("tubingen", "starry_night"),
         ("chelsea", "great_wave"), ("summer_palace", "composition_vii"))
ANCHOR_WEIGHTS = (100.0, 1000.0, 10000.0)
TUTORIAL_STYLE_SIZE = 300  # what `cpstyle run --preset tutorial` loads
SEED = 0


def machine(device):
    from bench.run import cpu_name
    if device == "gpu":
        import cupy
        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    return f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def load_pair(content_name, style_name, size):
    """(content at most `size` px, style with the content's long side, style file path)."""
    import cpstyle
    from cpstyle.images import resize_to
    data = Path(cpstyle.__file__).parent / "data"
    content = cpstyle.load_image(data / f"{content_name}.jpg", max_size=size)
    style_path = data / f"{style_name}.jpg"
    style = cpstyle.load_image(style_path)
    f = max(content.shape[:2]) / max(style.shape[:2])
    style = resize_to(style, max(1, round(style.shape[0] * f)), max(1, round(style.shape[1] * f)))
    return content, style, style_path


def method_names(opts):
    names = []
    for m in opts.methods:
        if m == "classic":
            names += [f"classic-{k:g}" for k in opts.anchor_weights]
        elif m == "strengths":
            names += [f"quality-s{s:g}" for s in opts.strengths]
        else:
            names.append(m)
    return names


def method_order(name):
    """Sort key: the anchor by K, tutorial, quality, then the strengths by value."""
    if name.startswith("classic-"):
        return (0, float(name[8:]))
    if name.startswith("quality-s"):
        return (3, float(name[9:]))
    return ({"tutorial": 1, "quality": 2}.get(name, 4), 0.0)


def run_method(name, content, style, style_path, opts, model, torch_model):
    """-> (image, seconds, extra dict)."""
    import cpstyle
    if name.startswith("classic-"):
        from bench.classic_reference import classic_style_transfer
        img, info = classic_style_transfer(content, style, style_weight=float(name[8:]),
                                           num_iterations=opts.anchor_iterations,
                                           device=opts.torch_device, model=torch_model)
        return img, info["seconds"], {"evaluations": info["evaluations"],
                                      "iterations": info["iterations"]}
    kw = dict(model=model, seed=SEED)
    if opts.iterations is not None:
        kw["num_iterations"] = opts.iterations
    if name == "tutorial":
        style = cpstyle.load_image(style_path, max_size=TUTORIAL_STYLE_SIZE)
        kw["preset"] = "tutorial"
    elif name == "quality":
        kw["preset"] = "quality"
    elif name.startswith("quality-s"):
        kw.update(preset="quality", style_strength=float(name[9:]))
    else:
        raise ValueError(f"unknown method {name!r}")
    t0 = time.perf_counter()
    img = cpstyle.style_transfer(content, style, **kw)
    if opts.device == "gpu":
        import cupy
        cupy.cuda.runtime.deviceSynchronize()
    return cpstyle.backend.to_host(img), time.perf_counter() - t0, {}


def summarise(results, names, sizes):
    """Per size: each method's means over the pairs, and the checks of issue #10."""
    out = {}
    for size in sizes:
        rows = {}
        for name in names:
            rs = [r for r in results if r["size"] == size and r["method"] == name
                  and r.get("lpips") is not None]  # --no-score rows wait for --score
            if rs:
                rows[name] = {k: float(np.mean([r[k] for r in rs]))
                              for k in ("lpips", "style_gap", "seconds")}
                rows[name]["pairs"] = len(rs)
        s = {"means": rows}
        anchors = {k: v for k, v in rows.items() if k.startswith("classic-")}
        q = rows.get("quality")
        if q and anchors:
            s["anchors_better_on_both_axes"] = [
                k for k, a in anchors.items()
                if a["lpips"] < q["lpips"] and a["style_gap"] < q["style_gap"]]
            anchor_s = float(np.mean([a["seconds"] for a in anchors.values()]))
            s["quality_seconds_over_anchor"] = q["seconds"] / anchor_s
            s["beyond_anchor_target"] = q["lpips"] <= 0.5 and q["style_gap"] <= 0.25
        out[str(size)] = s
    return out


def strength_monotone(results, sizes, strengths):
    """Per size and pair: do lpips rise and style_gap fall with the strength
    (1 = the quality preset itself)?"""
    out = {}
    points = sorted(set(strengths) | {1.0})
    for size in sizes:
        for c, _ in PAIRS:
            got = {}
            for r in results:
                if r["size"] != size or r["pair"] != c or r.get("lpips") is None:
                    continue
                if r["method"] == "quality":
                    got[1.0] = r
                elif r["method"].startswith("quality-s"):
                    got[float(r["method"][9:])] = r
            if len(got) < 2:
                continue
            xs = [got[s] for s in points if s in got]
            out[f"{size}/{c}"] = {
                "strengths": [s for s in points if s in got],
                "lpips": [r["lpips"] for r in xs], "style_gap": [r["style_gap"] for r in xs],
                "monotone": all(a["lpips"] < b["lpips"] and a["style_gap"] > b["style_gap"]
                                for a, b in zip(xs, xs[1:]))}
    return out


def print_table(summary):
    for size, s in summary.items():
        print(f"\n{size} px (mean over pairs)   lpips  style_gap  seconds")
        for name, m in s["means"].items():
            print(f"  {name:<18} {m['lpips']:7.3f} {m['style_gap']:9.3f} {m['seconds']:8.1f}"
                  f"   ({m['pairs']} pairs)")
        if "anchors_better_on_both_axes" in s:
            print(f"  anchors better than quality on both axes: "
                  f"{s['anchors_better_on_both_axes'] or 'none'}; quality time / anchor "
                  f"time {s['quality_seconds_over_anchor']:.2f}; LPIPS <= 0.5 with gap <= "
                  f"0.25: {s['beyond_anchor_target']}")


def write_sheet(results, names, sizes, work, path):
    from bench.bench_optimizers import sheet
    from cpstyle import load_image
    rows = []
    for size in sizes:
        for c, s in PAIRS:
            have = {r["method"]: r for r in results if r["size"] == size and r["pair"] == c}
            if not have:
                continue
            content, style, _ = load_pair(c, s, size)
            row = [content, style]
            for name in names:
                f = work / f"{size}-{c}-{name}.png"
                row.append(load_image(f) if f.exists() else np.full_like(content, 255.0))
            rows.append(row)
    labels = ["content", "style"] + names
    return sheet(rows, path, labels, h=128, quality=85) if rows else None  # < 1 MB to commit


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="256,512", help="content long sides (px)")
    p.add_argument("--pairs", default="all", help="content names, comma list, or 'all'")
    p.add_argument("--methods", default="classic,tutorial,quality,strengths",
                   help="comma list of classic, tutorial, quality, strengths")
    p.add_argument("--anchor-weights", default=",".join(f"{k:g}" for k in ANCHOR_WEIGHTS))
    p.add_argument("--anchor-iterations", type=int, default=300)
    p.add_argument("--strengths", default="0.3,0.6,2", help="style_strength values besides 1")
    p.add_argument("--iterations", type=int, default=None,
                   help="cpstyle iterations (default: each preset's own)")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--out-dir", default=str(HERE / "results"))
    p.add_argument("--work-dir", default=None, help="where the pictures go "
                   "(default: a folder named like the JSON under the system temp folder)")
    p.add_argument("--resume", default=None, help="a JSON of an earlier run to continue")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 64 px, two pairs, 3 iterations everywhere")
    p.add_argument("--no-score", action="store_true",
                   help="run and time only (no AlexNet weights needed); --score later")
    p.add_argument("--score", default=None, metavar="JSON",
                   help="score the unscored pictures of JSON (from --work-dir), then summarise")
    opts = p.parse_args(argv)
    if opts.score:
        return score_later(Path(opts.score), opts.work_dir)
    opts.sizes = [int(v) for v in opts.sizes.split(",")]
    opts.methods = [m.strip() for m in opts.methods.split(",") if m.strip()]
    opts.anchor_weights = [float(v) for v in opts.anchor_weights.split(",")]
    opts.strengths = [float(v) for v in opts.strengths.split(",") if v.strip()]
    pairs = PAIRS if opts.pairs == "all" else [pr for pr in PAIRS if pr[0] in opts.pairs.split(",")]
    if opts.quick:
        opts.sizes, pairs = [64], PAIRS[:2]
        opts.anchor_iterations, opts.iterations = 3, 3
    opts.torch_device = "cuda" if opts.device == "gpu" else "cpu"
    names = method_names(opts)

    from bench.lpips import AlexNet, Scorer
    from bench.run import git_commit
    from cpstyle.vgg16 import VGG16
    commit, dirty = git_commit()
    model = VGG16.load(device=opts.device)
    torch_model = None
    if any(n.startswith("classic-") for n in names):
        from bench.torch_reference import TorchVGG16, load_weights, torch
        if torch is None:
            names = [n for n in names if not n.startswith("classic-")]
            print("quality | no PyTorch here: the classic anchor is skipped "
                  "(pip install torch==2.13.0)", flush=True)
        else:
            torch_model = TorchVGG16(load_weights(), opts.torch_device)
    net = None if opts.no_score else AlexNet.load()

    tag = f"quality-{opts.device}-{'-'.join(map(str, opts.sizes))}-{commit[:8]}"
    if opts.quick:
        tag += "-quick"
    out_json = Path(opts.resume) if opts.resume else Path(opts.out_dir) / f"{tag}.json"
    work = Path(opts.work_dir) if opts.work_dir else \
        Path(os.environ.get("TMPDIR", "/tmp")) / out_json.stem
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    doc = {"benchmark": "quality", "device": opts.device, "machine": machine(opts.device),
           "commit": commit, "dirty": dirty, "sizes": opts.sizes,
           "pairs": [list(pr) for pr in pairs], "methods": names, "seed": SEED,
           "anchor_iterations": opts.anchor_iterations, "cpstyle_iterations": opts.iterations,
           "started": started}
    results, run_names, run_sizes = [], names, opts.sizes
    if opts.resume:  # the earlier run's set-up, widened by this one's
        old = json.loads(out_json.read_text())
        results = old["results"]
        doc = {**old, "resumed": old.get("resumed", []) + [
            {"commit": commit, "dirty": dirty, "started": started, "methods": names}]}
        names = sorted(set(old["methods"]) | set(names), key=method_order)
        opts.sizes = sorted(set(old["sizes"]) | set(opts.sizes))
        opts.strengths = sorted({float(n[9:]) for n in names if n.startswith("quality-s")})
        doc.update(methods=names, sizes=opts.sizes)
    print(f"quality | {doc['machine']} | commit {commit[:8]}{' (dirty)' if dirty else ''} | "
          f"{len(pairs)} pairs x {opts.sizes} px x {len(names)} methods", flush=True)

    from cpstyle.images import save_image
    for size in run_sizes:
        for c, s in pairs:
            content, style, style_path = load_pair(c, s, size)
            scorer = None if net is None else Scorer(content, style, net)
            for name in run_names:
                if any(r["size"] == size and r["pair"] == c and r["method"] == name
                       for r in results):
                    continue
                img, seconds, extra = run_method(name, content, style, style_path, opts,
                                                 model, torch_model)
                score = scorer.score(img) if scorer else {"lpips": None, "style_gap": None}
                save_image(img, work / f"{size}-{c}-{name}.png")
                r = {"size": size, "pair": c, "style": s, "method": name,
                     "shape": list(content.shape[:2]), "seconds": seconds, **score, **extra}
                results.append(r)
                print_result(r)
                doc.update(results=results, summary=summarise(results, names, opts.sizes),
                           strength=strength_monotone(results, opts.sizes, opts.strengths))
                out_json.parent.mkdir(parents=True, exist_ok=True)
                out_json.write_text(json.dumps(doc, indent=1) + "\n")
    doc.update(results=results)
    return finish(doc, out_json, work)


def print_result(r):
    scores = "unscored" if r["lpips"] is None else \
        f"lpips {r['lpips']:.3f} | style_gap {r['style_gap']:.3f}"
    print(f"{r['size']} | {r['pair']:<13} | {r['method']:<14} | {scores} | "
          f"{r['seconds']:7.1f} s", flush=True)


def score_later(out_json, work_dir):
    """--score: the rows of out_json without scores, scored from their pictures."""
    from bench.lpips import AlexNet, Scorer
    from cpstyle import load_image
    doc = json.loads(out_json.read_text())
    work = Path(work_dir) if work_dir else \
        Path(os.environ.get("TMPDIR", "/tmp")) / out_json.stem
    net = AlexNet.load()
    todo = [r for r in doc["results"] if r.get("lpips") is None]
    for size, c, s in sorted({(r["size"], r["pair"], r["style"]) for r in todo}):
        content, style, _ = load_pair(c, s, size)
        scorer = Scorer(content, style, net)
        for r in todo:
            if (r["size"], r["pair"]) == (size, c):
                f = work / f"{size}-{c}-{r['method']}.png"
                if not f.exists():
                    raise SystemExit(f"quality: error: {f} is missing (--work-dir?)")
                r.update(scorer.score(load_image(f)))
                print_result(r)
    return finish(doc, out_json, work)


def finish(doc, out_json, work):
    """Summary, strengths, the JSON rewritten, the table printed, the sheet."""
    results, names, sizes = doc["results"], doc["methods"], doc["sizes"]
    strengths = sorted({float(n[9:]) for n in names if n.startswith("quality-s")})
    doc.update(summary=summarise(results, names, sizes),
               strength=strength_monotone(results, sizes, strengths))
    out_json.write_text(json.dumps(doc, indent=1) + "\n")
    print_table(doc["summary"])
    for key, m in doc["strength"].items():
        print(f"  strength {key}: {m['strengths']} lpips {np.round(m['lpips'], 3).tolist()} "
              f"gap {np.round(m['style_gap'], 3).tolist()} monotone {m['monotone']}")
    sheet = write_sheet(results, names, sizes, work, out_json.with_suffix(".jpg"))
    print(f"wrote {out_json}" + (f" and {sheet}" if sheet else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
