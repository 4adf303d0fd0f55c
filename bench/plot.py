"""Plot ms per iteration against pixels, cpstyle and PyTorch, per device, from the
JSON files that bench/run.py writes.

    python -m bench.plot                          # every bench/results/*.json
    python -m bench.plot A.json B.json -o out.png --layers tutorial

One series per (device, layer set, precision, implementation): cpstyle solid,
PyTorch dashed, both axes logarithmic. Only "iter" cases are plotted (the example
case is a whole-run wall time). For a device measured in several files, the
newest file's figures win. matplotlib draws it when importable; otherwise PIL.
"""
import argparse
import glob
import json
import math
import sys
from pathlib import Path

from bench.run import RESULTS

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
           "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"]


def load_series(paths, layers=None):
    """-> {label: [(pixels, ms), ...]} with labels 'DEVICE LAYERS PRECISION IMPL'."""
    files = []
    for p in paths:
        try:
            files.append(json.loads(Path(p).read_text()))
        except (OSError, ValueError) as e:
            print(f"skipped {p}: {e}", file=sys.stderr)
    # bench/device_check.py wraps run.py's JSON under "bench"
    files = [r["bench"] if isinstance(r.get("bench"), dict) else r for r in files]
    files.sort(key=lambda r: r.get("date", ""))
    points = {}  # (device, layers, precision, impl) -> {pixels: ms}; newest file last
    for r in files:
        dev = r.get("device", "?")
        dev = dev.get("name", "?") if isinstance(dev, dict) else str(dev)
        for c in r.get("cases", []):
            if c.get("kind") != "iter" or (layers and c.get("layers") not in layers):
                continue
            for impl in ("cpstyle", "torch"):
                fig = c.get(impl) or {}
                ms = fig.get("ms_per_iteration")
                if ms:
                    points.setdefault((dev, c["layers"], c["precision"], impl), {})[c["pixels"]] = ms
    return {" ".join(k): sorted(v.items()) for k, v in sorted(points.items())}


def plot_matplotlib(series, out, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    groups = sorted({lab.rsplit(" ", 1)[0] for lab in series})
    for lab, pts in series.items():
        group, impl = lab.rsplit(" ", 1)
        colour = COLOURS[groups.index(group) % len(COLOURS)]
        xs, ys = zip(*pts)
        ax.plot(xs, ys, "-o" if impl == "cpstyle" else "--s", color=colour, label=lab)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels (H·W)")
    ax.set_ylabel("ms per iteration")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out)


def _segment(d, x0, y0, x1, y1, colour, dashed):
    """A line; dashed as 6 px on, 4 px off."""
    if not dashed:
        d.line([x0, y0, x1, y1], fill=colour, width=2)
        return
    n = max(1, int(math.hypot(x1 - x0, y1 - y0) / 10))
    for i in range(n):
        a, b = i / n, (i + 0.6) / n
        d.line([x0 + (x1 - x0) * a, y0 + (y1 - y0) * a, x0 + (x1 - x0) * b, y0 + (y1 - y0) * b],
               fill=colour, width=2)


def plot_pil(series, out, title):
    from PIL import Image, ImageDraw
    W, H, L, R, T, B = 1000, 680, 80, 330, 40, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = [p for pts in series.values() for p, _ in pts]
    ys = [m for pts in series.values() for _, m in pts]
    lx0, lx1 = math.log10(min(xs)) - 0.1, math.log10(max(xs)) + 0.1
    ly0, ly1 = math.log10(min(ys)) - 0.1, math.log10(max(ys)) + 0.1

    def px(p, m):
        return (L + (math.log10(p) - lx0) / (lx1 - lx0) * (W - L - R),
                H - B - (math.log10(m) - ly0) / (ly1 - ly0) * (H - T - B))

    d.rectangle([L, T, W - R, H - B], outline="black")
    for e in range(math.floor(ly0), math.ceil(ly1) + 1):  # 1-2-5 ticks on the y axis
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if ly0 <= math.log10(v) <= ly1:
                y = px(10 ** lx0, v)[1]
                d.line([L, y, W - R, y], fill="#dddddd" if m == 1 else "#f2f2f2")
                d.text((5, y - 6), f"{v:g} ms", fill="black")
    for p in sorted(set(xs)):
        x = px(p, 10 ** ly0)[0]
        d.line([x, T, x, H - B], fill="#eeeeee")
        side = math.isqrt(p)
        d.text((x - 20, H - B + 5), f"{side}x{side}" if side * side == p else str(p), fill="black")
    d.text((L, 10), title, fill="black")
    d.text((L + (W - L - R) // 2 - 40, H - 25), "pixels (H*W), log", fill="black")
    groups = sorted({lab.rsplit(" ", 1)[0] for lab in series})
    for k, (lab, pts) in enumerate(series.items()):
        group, impl = lab.rsplit(" ", 1)
        colour = COLOURS[groups.index(group) % len(COLOURS)]
        xy = [px(p, m) for p, m in pts]
        ly = T + 14 * k
        legend = [(W - R + 10, ly + 6), (W - R + 30, ly + 6)]
        for (x0, y0), (x1, y1) in zip(xy, xy[1:]) if len(xy) > 1 else ():
            _segment(d, x0, y0, x1, y1, colour, impl != "cpstyle")
        _segment(d, *legend[0], *legend[1], colour, impl != "cpstyle")
        for x, y in xy:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour if impl == "cpstyle" else "white",
                      outline=colour)
        d.text((W - R + 35, ly), lab[:48], fill="black")
    img.save(out)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", help="results JSONs (default bench/results/*.json)")
    p.add_argument("-o", "--out", default=str(RESULTS / "ms_per_iteration.png"))
    p.add_argument("--layers", help="comma-separated layer sets to plot (default all)")
    p.add_argument("--backend", choices=["auto", "matplotlib", "pil"], default="auto")
    opts = p.parse_args(argv)
    files = opts.files or sorted(f for f in glob.glob(str(RESULTS / "*.json"))
                                 if not f.endswith("-profile.json"))
    layers = set(opts.layers.split(",")) if opts.layers else None
    series = load_series(files, layers)
    if not series:
        print("nothing to plot: no 'iter' cases with timings in " + (", ".join(files) or "no files"))
        return 1
    title = "ms per iteration vs pixels: cpstyle (solid) and PyTorch (dashed)"
    backend = opts.backend
    if backend == "auto":
        try:
            import matplotlib  # noqa: F401
            backend = "matplotlib"
        except ImportError:
            backend = "pil"
    (plot_matplotlib if backend == "matplotlib" else plot_pil)(series, opts.out, title)
    print(f"wrote {opts.out} ({backend}, {len(series)} series from {len(files)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
