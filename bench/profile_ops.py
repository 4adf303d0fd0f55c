"""Where an iteration of the GPU engine spends its time: CUDA events after each
stage of one iteration (GpuStyleTransfer.marks), fp32 and tf32, plus the host's
time to enqueue an iteration. Run on a GPU machine:

    python -m bench.profile_ops --size 1024 [--size 512] [--json PATH] [--col2im all]

--col2im all: every conv in the col2im form where it has no more columns than
im2col (backward dz·Wᵀ + col2im_kernel where Cin <= Cout; forward x·W' +
col2im_bias_relu_kernel where Cout <= Cin), not only conv1_1's backward
(ops.conv.gpu_backward_uses_col2im / gpu_forward_uses_col2im), to measure
them before changing the rules.
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


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, action="append")
    p.add_argument("--json")
    p.add_argument("--col2im", choices=["conv1", "all"], default="conv1",
                   help="which conv backwards take the col2im form")
    a = p.parse_args(argv)
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
