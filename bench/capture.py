"""Issue 12 on a GPU: our Gram kernels against cupy.matmul per Gram shape, and the
engine's captured iteration against its uncaptured one (checked, then timed).

    python -m bench.capture [--quick] [--json PATH]

1. Gram shapes of the tutorial's layers at 256² and 512² (F: HW x C): forward
   G = FᵀF (kernels/gram.cu, split K + reduce) and backward F·dG, each checked
   against cupy.matmul (relative to the product's scale), then timed with CUDA
   events, median of 20, cupy.matmul in the same run:
       gram_forward | 65536x64 | ours 0.031 ms | cupy.matmul 0.020 ms | ratio 1.55
2. Engine cases (igemm convolutions, capture on): first a bitwise check (a run
   captured and one not, same x0: the same image), then ms per iteration of
   each (synchronised wall time over N iterations, after a warm-up run), and
   the host time per replayed iteration (graph.launch() enqueued N times,
   before the synchronise):
       engine 256-tutorial fp32 | captured 1.234 ms | uncaptured 5.678 ms | host 12.3 us/replay
   and the tutorial's example (299², style 300 px, 60 iterations) as whole runs.
bench/run.py (python -m bench) times every case captured and uncaptured too;
this module adds the per-shape Gram table, the host time and the bitwise check.
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np


def _events_ms(fn, reps=20):
    import cupy as cp
    fn()
    out = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(cp.cuda.get_elapsed_time(a, b))
    return statistics.median(out)


def gram_cases(sizes):
    from bench.run import LAYER_SETS, conv_shapes
    shapes = []
    for n in sizes:
        for i in LAYER_SETS["tutorial"][1]:
            h, w, _, c = conv_shapes(n, n)[i]
            if (h * w, c) not in shapes:
                shapes.append((h * w, c))
    return shapes


def bench_gram(shapes, reps):
    import cupy as cp
    from cpstyle.ops import gram
    rows = []
    rng = np.random.default_rng(0)
    for hw, c in shapes:
        f = cp.asarray(rng.standard_normal((hw, c)).astype(np.float32))
        dg = cp.asarray(rng.standard_normal((c, c)).astype(np.float32))
        g, ref = cp.empty((1, c, c), np.float32), cp.empty((c, c), np.float32)
        work = cp.empty(gram.gram_work_size(hw, c), np.float32)
        dh, dref = cp.empty((hw, c), np.float32), cp.empty((hw, c), np.float32)
        x = f.reshape(1, hw, 1, c)
        ours_f = lambda: gram.gram_forward_gpu(x, 1.0, out=g, work=work)  # noqa: E731
        theirs_f = lambda: cp.matmul(f.T, f, out=ref)  # noqa: E731
        ours_b = lambda: gram.gram_backward_accumulate_gpu(dh, f, dg, accumulate=False)  # noqa: E731
        theirs_b = lambda: cp.matmul(f, dg, out=dref)  # noqa: E731
        for name, ours, theirs, a, b, k in (("gram_forward", ours_f, theirs_f, g[0], ref, hw),
                                            ("gram_backward", ours_b, theirs_b, dh, dref, c)):
            ours(), theirs()
            err = float(cp.abs(a - b).max() / (cp.abs(b).max() + 1e-30))
            ok = err <= 4 * k ** 0.5 * 1.2e-7 + 1e-6  # fp32 sums of k products, both ways
            t_ours = _events_ms(ours, reps)
            t_theirs = _events_ms(theirs, reps)
            rows.append(dict(op=name, hw=hw, c=c, ours_ms=t_ours, cupy_ms=t_theirs,
                             ratio=t_ours / t_theirs, max_rel_err=err, ok=ok))
            print(f"{name} | {hw}x{c} | ours {t_ours:.4f} ms | cupy.matmul {t_theirs:.4f} ms | "
                  f"ratio {t_ours / t_theirs:.2f} | check {err:.1e}{'' if ok else ' FAILED'}",
                  flush=True)
    return rows


def bench_engine(model, size, precision, iterations, example=False):
    """-> a record: the bitwise check, captured/uncaptured ms, host us per replay."""
    import cupy as cp
    from bench.run import LAYER_SETS, make_images, style_shape
    from bench.torch_reference import initial_image
    from cpstyle.gpu_engine import GpuStyleTransfer
    c_ids, s_ids = LAYER_SETS["tutorial"]
    style_hw = style_shape((640, 1024), 300) if example else (size, size)
    content, style, _ = make_images((size, size), style_hw, "auto")
    eng = GpuStyleTransfer(model, content, style, c_ids, s_ids, 1.5, 10.0, 0.3,
                           precision=precision, conv="igemm", capture=True)
    x0 = initial_image(content.shape, 0)
    out = {}
    for capture in (True, False):  # the check, and every kernel compiled
        eng.capture = capture
        out[capture] = cp.asnumpy(eng.run(x0, 4))
    bitwise = bool(np.array_equal(out[True], out[False]))
    ms = {}
    for capture in (True, False):
        eng.capture = capture
        eng.run(x0, 2)
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        eng.run(x0, iterations)
        cp.cuda.Device().synchronize()
        ms[capture] = (time.perf_counter() - t0) * 1e3 / (1 if example else iterations)
    eng.capture = True
    eng.run(x0, 2)
    host_us = None
    if eng.graph is not None:
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        for _ in range(iterations):
            eng.graph.launch()
        host_us = (time.perf_counter() - t0) * 1e6 / iterations
        cp.cuda.Device().synchronize()
    name = "example" if example else f"{size}-tutorial"
    unit = "s per run" if example else "ms"
    scale = 1e-3 if example else 1.0
    print(f"engine {name} {precision} | captured {ms[True] * scale:.3f} {unit} | uncaptured "
          f"{ms[False] * scale:.3f} {unit} | host "
          f"{'-' if host_us is None else f'{host_us:.1f}'} us/replay | graph "
          f"{'yes' if eng.graph is not None else 'NO'} | bitwise {'ok' if bitwise else 'DIFFERS'}",
          flush=True)
    return dict(case=name, precision=precision, iterations=iterations, captured_ms=ms[True],
                uncaptured_ms=ms[False], host_us_per_replay=host_us, bitwise=bitwise,
                graph=eng.graph is not None, unit="ms_per_run" if example else "ms_per_iteration")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.capture", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="256² only, fewer repeats")
    p.add_argument("--json", help="write the records here")
    opts = p.parse_args(argv)
    from cpstyle.backend import gpu_available
    if not gpu_available():
        raise SystemExit("bench.capture needs a GPU (CuPy and a CUDA device)")
    import cupy as cp
    from bench.run import cpstyle_model, get_weights, gpu_name
    print(f"device: gpu | {gpu_name()} | cupy {cp.__version__}", flush=True)
    reps = 5 if opts.quick else 20
    grams = bench_gram(gram_cases([256] if opts.quick else [256, 512]), reps)
    weights, _, note = get_weights(False)
    if note:
        print(f"note: {note}", flush=True)
    model = cpstyle_model(weights, "gpu")
    engines = [bench_engine(model, 256, p, 20 if opts.quick else 60) for p in ("fp32", "tf32")]
    if not opts.quick:
        engines.append(bench_engine(model, 512, "tf32", 30))
        engines.append(bench_engine(model, 299, "fp32", 60, example=True))
    ok = all(r["ok"] for r in grams) and all(r["bitwise"] and r["graph"] for r in engines)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({"gram": grams, "engine": engines, "ok": ok}, f, indent=1)
    print(f"capture checks {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
