"""Where an iteration of the GPU engine spends its time: CUDA events after each
stage of one iteration (GpuStyleTransfer.marks), fp32 and tf32, plus the host's
time to enqueue an iteration. Run on a GPU machine:

    python -m bench.profile_ops --size 1024 [--size 512] [--json PATH] [--col2im all]
    python -m bench.profile_ops --gemm-shapes [--size 1024] [--json PATH]

--col2im all: every conv in the col2im form where it has no more columns than
im2col (backward dz·Wᵀ + col2im_kernel where Cin <= Cout; forward x·W' +
col2im_bias_relu_kernel where Cout <= Cin), not only conv1_1's backward
(ops.conv.gpu_backward_uses_col2im / gpu_forward_uses_col2im), to measure
them before changing the rules.

--gemm-shapes: the GEMM of every VGG-16 conv on its own, in both lowerings
(im2col: (M, 9·Cin) x (9·Cin, Cout); col2im: (M, Cin) x (Cin, 9·Cout); and the
backward's pair), fp32 and tf32, with the operands laid out as ops/conv.py
passes them: which shapes cuBLAS runs well, apart from everything around them.
Also a square 8192³ GEMM (cuBLAS at its best through CuPy, and proof that TF32
is engaged), and each shape through PyTorch's matmul where PyTorch is there
(is a slow shape cuBLAS's, or CuPy's way of calling it?).
"""
import argparse
import json
import time

import numpy as np


def profile(size, precision, model, repeats=3):
    import cupy as cp
    from cpstyle.driver import initial_image
    from cpstyle.gpu_engine import GpuStyleTransfer, matmul_precision
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (size, size, 3)).astype(np.float32)
    eng = GpuStyleTransfer(model, img, img, [4], list(range(13)), 1.5, 10.0, 0.3,
                           precision=precision)
    eng.x[...] = cp.asarray(initial_image(img.shape, 0))[None]
    with matmul_precision(precision):
        for _ in range(3):
            eng.iteration(10.0)
        cp.cuda.Device().synchronize()
        stages, totals, enqueue = {}, [], []
        for _ in range(repeats):
            eng.marks = []
            t0 = time.perf_counter()
            eng.iteration(10.0)
            enqueue.append((time.perf_counter() - t0) * 1e3)
            cp.cuda.Device().synchronize()
            marks, eng.marks = eng.marks, None
            for (_, a), (label, b) in zip(marks, marks[1:]):
                stages.setdefault(label, []).append(cp.cuda.get_elapsed_time(a, b))
            totals.append(cp.cuda.get_elapsed_time(marks[0][1], marks[-1][1]))
    return {"size": size, "precision": precision,
            "total_ms": float(np.median(totals)), "enqueue_ms": float(np.median(enqueue)),
            "stages_ms": {k: float(np.median(v)) for k, v in stages.items()}}


def gemm_cases(size, reference=0):
    """-> [(layer, direction, lowering, M, K, N)] for VGG-16 at size x size; with
    reference=R, first a square R x R x R GEMM (layer -1): what cuBLAS reaches
    through CuPy at its best, and whether TF32 is engaged at all."""
    from cpstyle import layers
    cases, hw = [], size
    if reference:
        cases.append((-1, "reference", "square", reference, reference, reference))
    for i, (cin, cout) in enumerate(layers.LAYER_CHANNELS):
        m = hw * hw
        cases += [(i, "forward", "im2col", m, 9 * cin, cout), (i, "forward", "col2im", m, cin, 9 * cout),
                  (i, "backward", "im2col", m, 9 * cout, cin), (i, "backward", "col2im", m, cout, 9 * cin)]
        if i in layers.POOL_AFTER:
            hw //= 2
    return cases


def time_gemms(size, xp, repeats=5, reference=0):
    """Median ms and TFLOP/s of each distinct GEMM shape of gemm_cases(size,
    reference), fp32 and tf32 on CuPy (fp32 only on NumPy, the smoke test's backend)."""
    from cpstyle.gpu_engine import matmul_precision
    seen, rows = {}, []
    for layer, direction, lowering, m, k, n in gemm_cases(size, reference):
        key = (m, k, n)
        if key not in seen:
            # constant operands (a GEMM's time does not depend on the values; no
            # host-side random gigabytes); the weight operand as conv.py passes
            # it: a transposed view for col2im
            a = xp.full((m, k), 0.5, dtype=np.float32)
            b = (xp.full((n, k), 0.25, dtype=np.float32).T if lowering == "col2im"
                 else xp.full((k, n), 0.25, dtype=np.float32))
            out = xp.empty((m, n), dtype=np.float32)
            seen[key] = {}
            for prec in (("fp32", "tf32") if xp is not np else ("fp32",)):
                events = () if xp is np else (xp.cuda.Event, xp.cuda.get_elapsed_time)
                with matmul_precision(prec, xp):
                    ms = _median_ms(lambda: xp.matmul(a, b, out=out), repeats, *events)
                seen[key][prec] = {"ms": ms, "tflops": 2 * m * k * n / ms / 1e9}
            del a, b, out
            seen[key].update(_torch_gemm(m, k, n, lowering, xp, repeats))
        rows.append({"layer": layer, "direction": direction, "lowering": lowering,
                     "m": m, "k": k, "n": n, **seen[key]})
    return rows


def _torch_gemm(m, k, n, lowering, xp, repeats, device="cuda"):
    """The same GEMM through PyTorch's cuBLAS call, fp32 and tf32, where PyTorch
    and a GPU are there ({} otherwise): is a slow shape cuBLAS's or CuPy's way
    of calling it? -> {"torch_fp32": {...}, "torch_tf32": {...}}, or
    {"torch_error": text} (the rest of the table still comes back).
    device="cpu": the smoke test's way through the same code."""
    if xp is np and device == "cuda":
        return {}
    try:
        import torch
        if device == "cuda" and not torch.cuda.is_available():
            return {}
    except ImportError:
        return {}
    try:
        a = torch.full((m, k), 0.5, device=device)
        b = (torch.full((n, k), 0.25, device=device).t() if lowering == "col2im"
             else torch.full((k, n), 0.25, device=device))
        out = torch.empty((m, n), device=device)
        res, old = {}, torch.backends.cuda.matmul.allow_tf32
        try:
            for prec in ("fp32", "tf32"):
                torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
                events = () if device == "cpu" else (
                    lambda: torch.cuda.Event(enable_timing=True), lambda t0, t1: t0.elapsed_time(t1))
                ms = _median_ms(lambda: torch.matmul(a, b, out=out), repeats, *events)
                res[f"torch_{prec}"] = {"ms": ms, "tflops": 2 * m * k * n / ms / 1e9}
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old
        return res
    except Exception as e:  # a broken PyTorch column must not lose CuPy's
        return {"torch_error": f"{type(e).__name__}: {e}"[:200]}


def _median_ms(fn, repeats, new_event=None, elapsed=None):
    """Median ms of fn() after one warm-up: with new_event (a device event
    factory) and elapsed(start, stop) in ms, timed by events; else perf_counter."""
    fn()
    ts = []
    for _ in range(repeats):
        if new_event is None:
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
            continue
        start, stop = new_event(), new_event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        ts.append(elapsed(start, stop))
    return float(np.median(ts))


def print_gemms(rows):
    for r in rows:
        what = "square   " if r["layer"] < 0 else f"conv{r['layer']:>2}"
        line = (f"gemm | {what} {r['direction']:9s} {r['lowering']:6s} | "
                f"{r['m']}x{r['k']}x{r['n']}")
        for prec in ("fp32", "tf32", "torch_fp32", "torch_tf32"):
            if prec in r:
                line += f" | {prec} {r[prec]['ms']:7.3f} ms {r[prec]['tflops']:6.1f} TFLOP/s"
        if "torch_error" in r:
            line += f" | torch: {r['torch_error']}"
        print(line, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, action="append")
    p.add_argument("--json")
    p.add_argument("--col2im", choices=["conv1", "all"], default="conv1",
                   help="which conv backwards take the col2im form")
    p.add_argument("--gemm-shapes", action="store_true",
                   help="time each conv's GEMM alone, in both lowerings")
    a = p.parse_args(argv)
    if a.gemm_shapes:
        import cupy as cp
        rows = time_gemms((a.size or [1024])[0], cp, reference=8192)
        print_gemms(rows)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(rows, f, indent=1)
        return
    if a.col2im == "all":
        from cpstyle.ops import conv
        conv.gpu_backward_uses_col2im = lambda cin, cout: cin <= cout
        conv.gpu_forward_uses_col2im = lambda cin, cout: cout <= cin
    from cpstyle import VGG16
    model = VGG16.load(device="gpu")
    out = []
    for size in a.size or [1024]:
        for prec in ("fp32", "tf32"):
            r = profile(size, prec, model)
            r["col2im"] = a.col2im
            out.append(r)
            print(f"== {size}x{size} {prec} (col2im {a.col2im}): {r['total_ms']:.2f} ms on the GPU, "
                  f"host enqueue {r['enqueue_ms']:.2f} ms")
            top = sorted(r["stages_ms"].items(), key=lambda kv: -kv[1])
            for label, ms in top[:14]:
                print(f"  {label:28s} {ms:8.3f} ms  {100 * ms / r['total_ms']:5.1f}%")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
