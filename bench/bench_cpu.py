"""One iteration of the tutorial objective on the CPU: cpstyle's NumPy reference
against PyTorch (bench/torch_reference.py), same weights, same images, same x.

    python -m bench.bench_cpu --sizes 256,512 --repeats 5 --processes 5
    python -m bench.bench_cpu --quick            # 64 px, 1 repeat
    python -m bench.bench_cpu --same-process     # both in this process (the old way)

Run it with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset: some machines set them to
pin a conservative OpenBLAS kernel, which slows NumPy's GEMMs and so cpstyle, but
not PyTorch (oneDNN/MKL). The first line prints the BLAS core in use when
threadpoolctl is importable, and those variables if they are set.

Objective: content [4], style all 13 layers, weights 1.5 / 10 / 0.3 (the tutorial's
example; --layers gatys: content conv4_2, style conv1_1 ... conv5_1). One
iteration = `losses, grad = objective(mixed)`: the forward to the deepest layer
used, the three losses, the normalised gradient by one backward.

Each side runs in its own worker process (this module with --worker), driven in
turns over a pipe: in one process the two disturbed each other (NumPy's buffers
and freed memory change what PyTorch's allocator page-faults, and the idle
threads of one library spin while the other runs), which moved PyTorch's
512x512 time by 20% with no change on its side. Only one worker runs at a time.
A process's luck (where its memory lands) also moved PyTorch's 256x256 time by
up to 15% from one process to the next, so each size gets --processes (5) fresh
pairs of workers. Each worker imports cpstyle and NumPy in a given order first
(--import-order: cpstyle first as the CLI does, NumPy first as most scripts do;
by default both, their pairs alternating). The ratio printed is the median of
the pairs' own ratios (each pair: its cpstyle median over its torch median),
followed by the spread of the pair ratios; the seconds are medians over all
rounds.

Checks first, per size: the three losses agree to 1e-3 relative and the gradients
to a cosine similarity > 0.999; otherwise that size is not timed and the exit
status is 1. Then a warm-up of each, and N interleaved rounds (cpstyle, torch,
cpstyle, torch, ...); the median of each is printed as

    cpu objective | 256x256 | numpy first | ratio 0.97 (median pair) | cpstyle 0.531 s |
        torch 0.550 s | ... GFLOP/s | pairs 5: 0.95..0.99 (0.95 0.96 0.97 0.99 0.96)
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.run import LAYER_SETS, blas_info, cpu_name, iteration_flops, make_images

WEIGHTS = dict(weight_content=1.5, weight_style=10.0, weight_denoise=0.3)
LOSS_RTOL, MIN_COS = 1e-3, 0.999


def compare(r1, r2):
    """(losses, grad) of cpstyle and torch -> (ok, text): losses within LOSS_RTOL
    relative, gradient cosine > MIN_COS."""
    (l1, g1), (l2, g2) = r1, r2
    rel = max(abs(l1[k] - l2[k]) / max(abs(l2[k]), 1e-30) for k in l2)
    a, b = np.asarray(g1, np.float64).ravel(), np.asarray(g2, np.float64).ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    ok = rel <= LOSS_RTOL and cos > MIN_COS
    return ok, f"losses max rel err {rel:.1e} (<= {LOSS_RTOL}) | grad cosine {cos:.7f} (> {MIN_COS})"


def make_objective(side, n, images, layers="tutorial"):
    """-> (objective, x, what images) for side "cpstyle" or "torch" at n x n,
    with the layer set `layers` (bench.run.LAYER_SETS)."""
    content_ids, style_ids = LAYER_SETS[layers]
    content, style, used = make_images((n, n), (n, n), images)
    from bench.torch_reference import initial_image
    x = initial_image(content.shape, 0)
    if side == "cpstyle":
        import cpstyle
        model = cpstyle.VGG16.load(device="cpu")
        return cpstyle.StyleObjective(content, style, content_layer_ids=content_ids,
                                      style_layer_ids=style_ids, model=model, **WEIGHTS), x, used
    import torch
    from bench.torch_reference import TorchObjective, TorchVGG16, load_weights
    torch.set_num_threads(os.cpu_count())
    tmodel = TorchVGG16(load_weights(), "cpu")
    return TorchObjective(content, style, content_ids, style_ids, model=tmodel, **WEIGHTS), x, used


def timed(obj, x):
    t0 = time.perf_counter()
    obj(x)
    return time.perf_counter() - t0


def worker(side, n, images, layers):
    """--worker: build one side, then answer the driver's lines on stdin:
    "result PATH" (one evaluation, losses and gradient saved to PATH, .npz),
    "time" (one timed evaluation, seconds), "quit". Replies are one line."""
    obj, x, used = make_objective(side, n, images, layers)
    print(f"ready {used}", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "result":
            losses, grad = obj(x)
            np.savez(cmd[1], grad=grad, **{k: np.float64(v) for k, v in losses.items()})
            print("ok", flush=True)
        elif cmd[0] == "time":
            print(repr(timed(obj, x)), flush=True)
        else:
            return 0
    return 0


# How a worker process starts: which of NumPy and cpstyle it imports first.
# OpenBLAS reads its thread settings when NumPy loads, so the order a user's
# script happens to use once moved cpstyle by 1.4x; both are benchmarked.
IMPORT_ORDERS = {"cpstyle": "import cpstyle, numpy", "numpy": "import numpy, cpstyle"}
WORKER_MAIN = "; import sys; from bench.bench_cpu import main; sys.exit(main(sys.argv[1:]))"


def worker_command(side, n, images, layers, order):
    return [sys.executable, "-c", IMPORT_ORDERS[order] + WORKER_MAIN, "--worker", side,
            "--sizes", str(n), "--images", images, "--layers", layers]


class Worker:
    """One side in its own fresh process (this module's main with --worker SIDE),
    NumPy and cpstyle imported in `order` first."""

    def __init__(self, side, n, images, layers, order="cpstyle"):
        self.side = side
        self.proc = subprocess.Popen(
            worker_command(side, n, images, layers, order), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.used = self.reply().split()[1]

    def reply(self):
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"bench_cpu: the {self.side} worker stopped (its error is above)")
        return line.strip()

    def ask(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.reply()

    def result(self, path):
        self.ask(f"result {path}")
        with np.load(path) as z:
            return {k: float(z[k]) for k in ("content", "style", "denoise")}, z["grad"]

    def close(self):
        try:
            self.ask("quit")
        except (SystemExit, BrokenPipeError):
            pass
        self.proc.wait()


def measure(n, repeats, images, same_process, layers="tutorial", order="cpstyle"):
    """One pair of sides (a process each, or both here): check, then `repeats`
    interleaved rounds -> (ok, check text, images used, cpstyle times, torch times)."""
    if same_process:
        (c_obj, x, used), (t_obj, _, _) = (make_objective(s, n, images, layers)
                                           for s in ("cpstyle", "torch"))
        ok, text = compare(c_obj(x), t_obj(x))  # also the warm-up of both
        runs = {"c": lambda: timed(c_obj, x), "t": lambda: timed(t_obj, x)}
        stop = lambda: None  # noqa: E731
    else:
        c, t = Worker("cpstyle", n, images, layers, order), Worker("torch", n, images, layers, order)
        used = c.used
        with tempfile.TemporaryDirectory() as tmp:
            ok, text = compare(c.result(os.path.join(tmp, "c.npz")),
                               t.result(os.path.join(tmp, "t.npz")))  # the warm-up too
        runs = {"c": lambda: float(c.ask("time")), "t": lambda: float(t.ask("time"))}
        stop = lambda: (c.close(), t.close())  # noqa: E731
    times = {"c": [], "t": []}
    try:
        if ok:
            for _ in range(repeats):
                for k in ("c", "t"):
                    times[k].append(runs[k]())
    finally:
        stop()
    return ok, text, used, times["c"], times["t"]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_cpu",
                                description="cpstyle NumPy objective vs PyTorch on the CPU")
    p.add_argument("--sizes", default="256,512", help="comma-separated square sizes in px")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per size (median)")
    p.add_argument("--quick", action="store_true", help="64 px, 1 repeat")
    p.add_argument("--images", choices=["auto", "bundled", "random"], default="auto")
    p.add_argument("--layers", choices=sorted(LAYER_SETS), default="tutorial",
                   help="tutorial: content [4], style all 13 (the target's); gatys: content "
                        "conv4_2, style conv1_1 ... conv5_1")
    p.add_argument("--same-process", action="store_true",
                   help="time both sides in this process, not in two workers")
    p.add_argument("--processes", type=int, default=5,
                   help="fresh worker pairs per size, each timing --repeats rounds (default 5)")
    p.add_argument("--import-order", choices=["cpstyle", "numpy", "both"], default="both",
                   help="which the workers import first, cpstyle or NumPy (most scripts); "
                        "both: each in turn, the pairs of the two orders alternating")
    p.add_argument("--worker", choices=["cpstyle", "torch"], help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    sizes = [64] if opts.quick else [int(s) for s in opts.sizes.split(",") if s.strip()]
    repeats = 1 if opts.quick else opts.repeats
    pairs = 1 if opts.quick or opts.same_process else opts.processes
    if repeats < 1 or pairs < 1 or not sizes or min(sizes) < 16:
        p.error("--repeats and --processes must be >= 1 and sizes >= 16 px")
    if opts.worker:
        return worker(opts.worker, sizes[0], opts.images, opts.layers)

    try:
        import torch
    except ImportError:
        raise SystemExit("bench_cpu compares against PyTorch: pip install torch==2.13.0 "
                         "(the CPU build)") from None
    from cpstyle import weights
    try:  # the weights must be there: fail here, not in a worker
        weights.load()
    except (OSError, ValueError) as e:
        raise SystemExit(f"bench_cpu: {e}") from None

    threads = os.cpu_count()
    blas = blas_info()
    line = (f"device: cpu | {cpu_name()} | {threads} cores | numpy {np.__version__} BLAS "
            f"threads {blas['threads']} ({blas['internal_api'] or '?'} core {blas['architecture']}) "
            f"| OpenBLAS thread timeout 2^{blas['thread_timeout']} cycles "
            f"| torch {torch.__version__} threads {threads} "
            + ("| one process" if opts.same_process
               else f"| a worker process per side, {pairs} pairs"))
    if blas["env"]:
        line += f" | env {blas['env']} (unset OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE to benchmark)"
    print(line, flush=True)

    orders = ["cpstyle", "numpy"] if opts.import_order == "both" else [opts.import_order]
    if opts.same_process:
        orders = ["cpstyle"]  # this process imported cpstyle first (bench/__init__.py)
    failed = False
    for n in sizes:
        got = {o: ([], [], []) for o in orders}  # order -> cpstyle times, torch times, pair ratios
        ok = True
        for _ in range(pairs):
            for order in orders:  # the orders' pairs alternate: drift hits both alike
                ok, text, used, c, t = measure(n, repeats, opts.images, opts.same_process,
                                               opts.layers, order)
                verdict = "ok" if ok else "FAILED: not timed"
                print(f"check | {n}x{n} | {order} first | {used} images | {text} | {verdict}",
                      flush=True)
                if not ok:
                    break
                got[order][0].extend(c)
                got[order][1].extend(t)
                got[order][2].append(statistics.median(c) / statistics.median(t))
            if not ok:
                break
        if not ok:
            failed = True
            continue
        gflop = iteration_flops(n, n, max(max(ids) for ids in LAYER_SETS[opts.layers]) + 1) / 1e9
        name = "" if opts.layers == "tutorial" else f" {opts.layers}"
        for order in orders:
            print(result_line(name, n, order, *got[order], gflop), flush=True)
    return 1 if failed else 0


def result_line(name, n, order, cp_t, t_t, ratios, gflop):
    """One result: the median pair ratio (each pair: its own medians), the spread
    of the pair ratios, and the medians over every round."""
    a, b = statistics.median(cp_t), statistics.median(t_t)
    r = statistics.median(ratios)
    spread = (f" | pairs {len(ratios)}: {min(ratios):.2f}..{max(ratios):.2f} "
              f"({' '.join(f'{x:.2f}' for x in ratios)})")
    return (f"cpu objective{name} | {n}x{n} | {order} first | ratio {r:.2f} (median pair) "
            f"| cpstyle {a:.3f} s | torch {b:.3f} s | {gflop / a:.1f} / {gflop / b:.1f} GFLOP/s"
            f"{spread}")


if __name__ == "__main__":
    sys.exit(main())
