"""A run's record (`cpstyle run --trace trace.json --plot losses.png`).

Trace: a Progress callback that keeps, per report, the scale, its size, the
iteration, the three losses, the adj weights, the objective Φ and the elapsed
time; `write_json` writes them atomically (temp file in the same folder, then
os.replace), so a reader never sees half a file:

    {"format": "cpstyle-trace", "version": 1, "settings": {...},
     "records": [{"scale": 0, "size": [H, W], "iteration": 0, "elapsed": 0.01,
                  "losses": {"content": .., "style": .., "denoise": ..},
                  "adj": {...}, "objective": ..}, ...]}

plot_losses draws each loss divided by its first value on a log axis against
the iteration (scales one after another), with matplotlib when it can be
imported and with PIL's ImageDraw otherwise. Tests: tests/test_trace.py."""
import json
import math
from pathlib import Path

from .atomic import write_atomic

LOSS_NAMES = ("content", "style", "denoise")
COLORS = {"content": (31, 119, 180), "style": (214, 39, 40), "denoise": (44, 160, 44)}


def _jsonable(v):
    """Settings as JSON can hold them (an image array becomes its description)."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "shape") and hasattr(v, "dtype") and tuple(v.shape) != ():
        return f"array {tuple(v.shape)} {v.dtype}"
    if hasattr(v, "item"):  # numpy scalars, 0-d arrays
        return v.item()
    return str(v)


class Trace:
    def __init__(self, settings=None):
        self.settings = _jsonable(dict(settings or {}))
        self.records = []

    def __call__(self, p):
        self.records.append({
            "scale": int(p.scale), "size": list(p.size) if p.size is not None else None,
            "iteration": int(p.iteration), "elapsed": float(p.elapsed),
            "losses": {k: float(v) for k, v in p.losses.items()},
            "adj": {k: float(v) for k, v in p.adj.items()},
            "objective": None if p.objective is None else float(p.objective)})

    def as_dict(self):
        return {"format": "cpstyle-trace", "version": 1, "settings": self.settings,
                "records": self.records}

    def write_json(self, path):
        return write_atomic(path, (json.dumps(self.as_dict(), indent=1) + "\n").encode())


def _series(records):
    """-> x (running index over all scales' reports), {name: L/L0}, scale starts."""
    xs, ys, starts = [], {k: [] for k in LOSS_NAMES}, []
    offset, last_scale = 0, None
    for r in records:
        if r["scale"] != last_scale:
            if xs:
                offset = xs[-1] + 1
            starts.append(offset)
            last_scale = r["scale"]
        xs.append(offset + r["iteration"])
        for k in LOSS_NAMES:
            ys[k].append(r["losses"][k])
    for k in LOSS_NAMES:
        v0 = next((v for v in ys[k] if v > 0), None)
        ys[k] = [v / v0 if v0 and v > 0 else float("nan") for v in ys[k]]
    return xs, ys, starts


def plot_losses(records, path, backend="auto", size=(800, 500)):
    """Loss curves (L/L0, log scale) to an image file. backend: 'auto'
    (matplotlib if importable, else PIL), 'matplotlib' or 'pil'."""
    if not records:
        raise ValueError("plot_losses: no records to plot")
    if backend == "auto":
        try:
            import matplotlib  # noqa: F401
            backend = "matplotlib"
        except ImportError:
            backend = "pil"
    if backend == "matplotlib":
        return _plot_matplotlib(records, path, size)
    if backend == "pil":
        return _plot_pil(records, path, size)
    raise ValueError(f"unknown plot backend {backend!r}")


def _plot_matplotlib(records, path, size):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs, ys, starts = _series(records)
    fig, ax = plt.subplots(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    for k in LOSS_NAMES:
        ax.semilogy(xs, ys[k], color=[c / 255 for c in COLORS[k]], label=k)
    for s in starts[1:]:
        ax.axvline(s, color="0.8", lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss / first loss")
    ax.legend()
    fig.tight_layout()
    from .images import SAVE_FORMATS
    path = Path(path).expanduser()
    fmt = SAVE_FORMATS.get(path.suffix.lower(), "PNG")
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png" if fmt == "PNG" else fmt.lower())
    plt.close(fig)
    return write_atomic(path, buf.getvalue())


def _plot_pil(records, path, size):
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from .images import save_image
    w, h = size
    left, right, top, bottom = 70, 20, 20, 50  # the legend sits below the x axis
    xs, ys, starts = _series(records)
    logs = [math.log10(v) for k in LOSS_NAMES for v in ys[k] if v > 0 and math.isfinite(v)]
    lo, hi = (min(logs), max(logs)) if logs else (-1.0, 0.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    lo, hi = math.floor(lo), math.ceil(hi)
    x0, x1 = xs[0], max(xs[-1], xs[0] + 1)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()

    def px(x, v):
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                top + (hi - math.log10(v)) / (hi - lo) * (h - top - bottom))

    for e in range(lo, hi + 1):  # decades
        _, y = px(x0, 10.0 ** e)
        d.line([(left, y), (w - right, y)], fill=(225, 225, 225))
        d.text((4, y - 6), f"1e{e:+d}", fill=(0, 0, 0), font=font)
    for s in starts[1:]:
        x, _ = px(s, 10.0 ** hi)
        d.line([(x, top), (x, h - bottom)], fill=(200, 200, 200))
    d.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    d.text((left, h - bottom + 6), f"{x0}", fill=(0, 0, 0), font=font)
    d.text((w - right - 30, h - bottom + 6), f"{x1}", fill=(0, 0, 0), font=font)
    d.text(((w - left) // 2, h - bottom + 6), "iteration", fill=(0, 0, 0), font=font)
    for k in LOSS_NAMES:
        pts = [px(x, v) for x, v in zip(xs, ys[k]) if v > 0 and math.isfinite(v)]
        if len(pts) == 1:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=COLORS[k])
        elif pts:
            d.line(pts, fill=COLORS[k], width=2)
    lx, ly = left, h - 14
    for k in LOSS_NAMES:  # legend, outside the plot area
        d.line([(lx, ly), (lx + 20, ly)], fill=COLORS[k], width=3)
        d.text((lx + 24, ly - 6), k, fill=(0, 0, 0), font=font)
        lx += 100
    d.text((lx + 20, ly - 6), "(loss / first loss, log scale)", fill=(0, 0, 0), font=font)
    return save_image(np.asarray(img, dtype=np.float32), path)
