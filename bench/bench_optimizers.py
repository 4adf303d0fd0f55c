"""gd, Adam and L-BFGS (cpstyle/optimizers.py) on the bundled pairs, in the same
wall time each; and the measurement behind the --gram-norm default.

    python -m bench.bench_optimizers                     # 512 px, 90 s per run, CPU
    python -m bench.bench_optimizers --budget 20 --device gpu
    python -m bench.bench_optimizers --quick             # 64 px, 2 s per run (smoke test)
    python -m bench.bench_optimizers --gram-study        # the Gram-normalisation numbers

Optimisers: pairs tubingen+starry_night and chelsea+starry_night (cpstyle/data),
content at --size px (long side; never upscaled: chelsea stays 451x300), style at
300 px (the tutorial's), the tutorial's layers and weights, seed 0, Gram
normalised by H·W (gram_norm="hw") so the style losses of the two pairs compare.
Each optimiser runs until its wall budget is spent (checked after every
iteration, so a run overshoots by at most one iteration; the time counts from
the loop's start, the targets' forward passes excluded; on a GPU every kernel is
compiled by a short warm-up run first, and the report each iteration is a host
sync each iteration, the same for all three). Reported per run: the
iterations done, s/iteration, and the content, style and denoise losses and
Φ = Σ w·log(L+1e-10) (the objective all three minimise) of the last image. Writes
a JSON and a contact sheet PNG (rows: pairs; columns: content | gd | adam |
lbfgs | style) under --out-dir, and prints a Markdown table (bench/OPTIMIZERS.md).

--gram-study: for each pair and content at 256 and 512 px (style at 300 px):
(a) the scale of the style's Gram targets against the Gram matrices of the
same style image resized to the content's size, mean |A| / mean |G|, per layer
(min..max over the 13 layers), plain ("none") and normalised by H·W ("hw");
(b) L_s of the tutorial's initial noise image under each; (c) --gram-iterations
(30) gd iterations with the content at --gram-size (512) px with each setting,
scored by the hw style loss and the content loss of the result (the same
yardstick for both), and saved side by side."""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

PAIRS = (("tubingen", "starry_night"), ("chelsea", "starry_night"))
OPTIMIZERS = ("gd", "adam", "lbfgs")
STYLE_SIZE = 300
LAYERS = dict(content_layer_ids=[4], style_layer_ids=list(range(13)))
WEIGHTS = (1.5, 10.0, 0.3)


class _Budget(Exception):
    pass


def machine():
    from bench.run import cpu_name
    return f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def load_pair(content, style, size):
    import cpstyle
    data = os.path.join(os.path.dirname(cpstyle.__file__), "data")
    return (cpstyle.load_image(os.path.join(data, content + ".jpg"), max_size=size),
            cpstyle.load_image(os.path.join(data, style + ".jpg"), max_size=STYLE_SIZE))


def timed_run(model, content, style, optimizer, budget, device):
    """-> dict of the last image's numbers, and that image (host)."""
    import cpstyle
    from cpstyle.backend import to_host
    last = {}

    def cb(p):
        last.update(iteration=p.iteration, elapsed=p.elapsed, losses=dict(p.losses),
                    objective=p.objective, image=p.image)
        if p.elapsed >= budget:
            raise _Budget
    try:
        cpstyle.style_transfer(content, style, **LAYERS, num_iterations=10 ** 6, seed=0,
                               model=model, device=device, gram_norm="hw", optimizer=optimizer,
                               callback=cb, callback_every=1)
    except _Budget:
        pass
    img = to_host(last.pop("image"))
    last["s_per_iteration"] = last["elapsed"] / max(1, last["iteration"])
    return last, img


def sheet(rows, path, labels, h=160, quality=95):
    """rows: [[image, ...], ...] -> one picture (PNG or JPEG at `quality`), each row
    at height h, captions on top."""
    from PIL import Image, ImageDraw, ImageFont

    from cpstyle.images import resize_to, save_image
    gap, cap = 8, 22  # h=160: small enough to commit (about 0.8 MB as PNG)
    tiles = [[resize_to(a, h, max(1, round(a.shape[1] * h / a.shape[0]))) for a in r] for r in rows]
    widths = [max(r[k].shape[1] for r in tiles) for k in range(len(labels))]
    W = sum(widths) + gap * (len(widths) + 1)
    H = len(tiles) * (h + gap) + gap + cap
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    x = gap
    for k, lab in enumerate(labels):
        draw.text((x + 4, 5), lab, fill=(0, 0, 0), font=font)
        x += widths[k] + gap
    for i, r in enumerate(tiles):
        x, y = gap, cap + gap + i * (h + gap)
        for k, t in enumerate(r):
            canvas.paste(Image.fromarray(np.rint(t).clip(0, 255).astype(np.uint8)), (x, y))
            x += widths[k] + gap
    return save_image(np.asarray(canvas, np.float32), path, quality=quality)


def optimizers_bench(opts, model, out_dir):
    results, rows = [], []
    if opts.device == "gpu":  # compile every kernel (NVRTC) before any clock runs
        c, s = load_pair(*PAIRS[0], 64)
        for name in OPTIMIZERS:
            timed_run(model, c, s, name, 0.0, opts.device)
    for content_name, style_name in PAIRS:
        content, style = load_pair(content_name, style_name, opts.size)
        row = [content]
        for name in OPTIMIZERS:
            r, img = timed_run(model, content, style, name, opts.budget, opts.device)
            r.update(pair=f"{content_name}+{style_name}",
                     content_size=list(content.shape[:2]), optimizer=name)
            results.append(r)
            row.append(img)
            print(f"{r['pair']} | {content.shape[1]}x{content.shape[0]} | {name:5s} | "
                  f"{r['iteration']:4d} it | {r['s_per_iteration']:.2f} s/it | "
                  f"content {r['losses']['content']:.4g} | style {r['losses']['style']:.4g} | "
                  f"denoise {r['losses']['denoise']:.4g} | Φ {r['objective']:.3f}", flush=True)
        rows.append(row + [style])
    tag = f"optimizers-{opts.device}-{opts.size}"
    png = sheet(rows, os.path.join(out_dir, tag + ".png"),
                ["content", *OPTIMIZERS, "style"])
    doc = {"machine": machine(), "device": opts.device, "size": opts.size,
           "budget_s": opts.budget, "style_size": STYLE_SIZE, "gram_norm": "hw",
           "weights": WEIGHTS, **LAYERS, "results": results}
    with open(os.path.join(out_dir, tag + ".json"), "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\n{png}\n")
    print("| pair | content px | optimiser | iterations | s/it | content loss | "
          "style loss (Gram/HW) | denoise | Φ |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        h, w = r["content_size"]
        print(f"| {r['pair']} | {w}x{h} | {r['optimizer']} | {r['iteration']} | "
              f"{r['s_per_iteration']:.2f} | {r['losses']['content']:.4g} | "
              f"{r['losses']['style']:.4g} | {r['losses']['denoise']:.4g} | "
              f"{r['objective']:.3f} |")


def gram_study(opts, model, out_dir):
    import cpstyle
    from cpstyle.images import resize_to
    from cpstyle.objective import gram_norm_factor
    from cpstyle.ops.gram import gram_forward_cpu
    print("| pair | content px | style px | norm | mean|A| / mean|G| over layers "
          "(min..max) | L_s at the noise start |")
    print("|---|---|---|---|---|---|")
    for content_name, style_name in PAIRS:
        for size in (256, 512):
            content, style = load_pair(content_name, style_name, size)
            same = resize_to(style, *content.shape[:2])  # the style at the content's size
            t_s, _ = model.forward(style[None], range(13))
            t_c, _ = model.forward(same[None], range(13))
            for norm in ("none", "hw"):
                ratios = []
                for i in range(13):
                    a, _ = gram_forward_cpu(t_s[i], gram_norm_factor(norm, t_s[i].shape))
                    g, _ = gram_forward_cpu(t_c[i], gram_norm_factor(norm, t_c[i].shape))
                    ratios.append(float(np.abs(a).mean() / np.abs(g).mean()))
                obj = cpstyle.StyleObjective(content, style, **LAYERS, model=model,
                                             gram_norm=norm)
                x0 = cpstyle.driver.initial_image(content.shape, 0)
                ls = float(obj.evaluate(x0[None])[0][1])
                print(f"| {content_name}+{style_name} | {content.shape[1]}x{content.shape[0]} | "
                      f"{style.shape[1]}x{style.shape[0]} | {norm} | "
                      f"{min(ratios):.3f}..{max(ratios):.3f} | {ls:.4g} |", flush=True)
    print(f"\ncontent at {opts.gram_size} px, style at {STYLE_SIZE} px, gd, the tutorial's "
          f"weights; both results judged by the hw losses\n")
    print("| pair | run with | iterations | content loss | style loss (Gram/HW) | s |")
    print("|---|---|---|---|---|---|")
    rows = []
    for content_name, style_name in PAIRS:
        content, style = load_pair(content_name, style_name, opts.gram_size)
        judge = cpstyle.StyleObjective(content, style, **LAYERS, model=model, gram_norm="hw")
        row = [content]
        for norm in ("none", "hw"):
            t0 = time.perf_counter()
            img = cpstyle.style_transfer(content, style, **LAYERS, num_iterations=opts.gram_iterations,
                                         seed=0, model=model, gram_norm=norm)
            losses = judge.evaluate(img[None])[0]
            row.append(img)
            print(f"| {content_name}+{style_name} | {norm} | {opts.gram_iterations} | "
                  f"{float(losses[0]):.4g} | {float(losses[1]):.4g} | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)
        rows.append(row + [style])
    png = sheet(rows, os.path.join(out_dir, f"gram-norm-{opts.device}-{opts.gram_size}.jpg"),
                ["content", "gram_norm=none", "gram_norm=hw", "style"])
    print(f"\n{png}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_optimizers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512, help="content long side, px")
    p.add_argument("--budget", type=float, default=90.0, help="wall seconds per optimiser run")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--quick", action="store_true", help="64 px, 2 s per run")
    p.add_argument("--gram-study", action="store_true", help="the Gram-normalisation numbers")
    p.add_argument("--gram-iterations", type=int, default=30)
    p.add_argument("--gram-size", type=int, default=512)
    opts = p.parse_args(argv)
    if opts.quick:
        opts.size, opts.budget, opts.gram_iterations, opts.gram_size = 64, 2.0, 2, 64
    os.makedirs(opts.out_dir, exist_ok=True)
    import cpstyle
    model = cpstyle.VGG16.load(device=opts.device)
    print(f"# {machine()} | device {opts.device} | cpstyle {cpstyle.__version__} | "
          f"numpy {np.__version__}", flush=True)
    if opts.gram_study:
        gram_study(opts, model, opts.out_dir)
    else:
        optimizers_bench(opts, model, opts.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
