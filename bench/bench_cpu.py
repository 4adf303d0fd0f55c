"""One iteration of the tutorial objective on the CPU: cpstyle's NumPy reference
against PyTorch (bench/torch_reference.py), same weights, same images, same x.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m bench.bench_cpu
    python -m bench.bench_cpu --sizes 256,512 --repeats 5
    python -m bench.bench_cpu --quick            # 64 px, 1 repeat

Run it with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset: some machines set them to
pin a conservative OpenBLAS kernel, which slows NumPy's GEMMs and so cpstyle, but
not PyTorch (oneDNN/MKL). The first line prints the BLAS core in use when
threadpoolctl is importable, and those variables if they are set.

Objective: content [4], style all 13 layers, weights 1.5 / 10 / 0.3 (the tutorial's
example). One iteration = `losses, grad = objective(mixed)`: the forward to
conv5_3, the three losses, the normalised gradient by one backward.

Checks first, per size: the three losses agree to 1e-3 relative and the gradients
to a cosine similarity > 0.999; otherwise that size is not timed and the exit
status is 1. Then a warm-up of each, and N interleaved rounds (cpstyle, torch,
cpstyle, torch, ...); the median of each is printed as

    cpu objective | 256x256 | cpstyle 0.512 s | torch 0.701 s | ratio 0.73
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

from bench.run import blas_info, cpu_name, iteration_flops, make_images

CONTENT_IDS, STYLE_IDS = [4], list(range(13))
WEIGHTS = dict(weight_content=1.5, weight_style=10.0, weight_denoise=0.3)
LOSS_RTOL, MIN_COS = 1e-3, 0.999


def check(cp_obj, t_obj, x):
    """-> (ok, text): losses within LOSS_RTOL relative, gradient cosine > MIN_COS."""
    l1, g1 = cp_obj(x)
    l2, g2 = t_obj(x)
    rel = max(abs(l1[k] - l2[k]) / max(abs(l2[k]), 1e-30) for k in l2)
    a, b = np.asarray(g1, np.float64).ravel(), np.asarray(g2, np.float64).ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    ok = rel <= LOSS_RTOL and cos > MIN_COS
    return ok, f"losses max rel err {rel:.1e} (<= {LOSS_RTOL}) | grad cosine {cos:.7f} (> {MIN_COS})"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_cpu",
                                description="cpstyle NumPy objective vs PyTorch on the CPU")
    p.add_argument("--sizes", default="256,512", help="comma-separated square sizes in px")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per size (median)")
    p.add_argument("--quick", action="store_true", help="64 px, 1 repeat")
    p.add_argument("--images", choices=["auto", "bundled", "random"], default="auto")
    opts = p.parse_args(argv)
    sizes = [64] if opts.quick else [int(s) for s in opts.sizes.split(",") if s.strip()]
    repeats = 1 if opts.quick else opts.repeats
    if repeats < 1 or not sizes or min(sizes) < 16:
        p.error("--repeats must be >= 1 and sizes >= 16 px")

    try:
        import torch
    except ImportError:
        raise SystemExit("bench_cpu compares against PyTorch: pip install torch==2.13.0 "
                         "(the CPU build)") from None
    import cpstyle
    from bench.torch_reference import TorchObjective, TorchVGG16, initial_image, load_weights

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    blas = blas_info()
    line = (f"device: cpu | {cpu_name()} | {threads} cores | numpy {np.__version__} BLAS "
            f"threads {blas['threads']} ({blas['internal_api'] or '?'} core {blas['architecture']}) "
            f"| OpenBLAS thread timeout 2^{blas['thread_timeout']} cycles "
            f"| torch {torch.__version__} threads {torch.get_num_threads()}")
    if blas["env"]:
        line += f" | env {blas['env']} (unset OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE to benchmark)"
    print(line, flush=True)

    model = cpstyle.VGG16.load(device="cpu")
    tmodel = TorchVGG16(load_weights(), "cpu")
    failed = False
    for n in sizes:
        content, style, used = make_images((n, n), (n, n), opts.images)
        x = initial_image(content.shape, 0)
        cp_obj = cpstyle.StyleObjective(content, style, content_layer_ids=CONTENT_IDS,
                                        style_layer_ids=STYLE_IDS, model=model, **WEIGHTS)
        t_obj = TorchObjective(content, style, CONTENT_IDS, STYLE_IDS, model=tmodel, **WEIGHTS)
        ok, text = check(cp_obj, t_obj, x)  # also the warm-up of both
        print(f"check | {n}x{n} | {used} images | {text} | {'ok' if ok else 'FAILED: not timed'}",
              flush=True)
        if not ok:
            failed = True
            continue
        cp_t, t_t = [], []
        for _ in range(repeats):
            for obj, out in ((cp_obj, cp_t), (t_obj, t_t)):
                t0 = time.perf_counter()
                obj(x)
                out.append(time.perf_counter() - t0)
        a, b = statistics.median(cp_t), statistics.median(t_t)
        gflop = iteration_flops(n, n) / 1e9
        print(f"cpu objective | {n}x{n} | cpstyle {a:.3f} s | torch {b:.3f} s | ratio {a / b:.2f} "
              f"| {gflop / a:.1f} / {gflop / b:.1f} GFLOP/s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
