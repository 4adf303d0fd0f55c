"""The benchmark harness: cpstyle against PyTorch on the same device, the same
weights and the same algorithm (bench/torch_reference.py), checked before timed.

    python -m bench                      # the default cases for this machine
    python -m bench --quick              # CI smoke test: 32/48 px, 2 iterations, CPU
    python -m bench --cases 512,example  # only cases whose name contains a token

Cases are named SIZE-LAYERS-PRECISION (`512-tutorial-tf32`) and `example-PRECISION`
(the tutorial's example: 299x299 content, style at most 300 px, 60 iterations,
timed as whole runs after the weights are loaded). Layer sets: "tutorial"
(content [4], style all 13) and "gatys" (content conv4_2 = 8, style 0, 2, 4, 7, 10).
Precisions: fp32 on the CPU; on a GPU each of cpstyle.gpu_engine.PRECISIONS (fp32,
tf32, bf16), PyTorch in the same mode (bf16: torch.autocast). Each GPU record names
the convolutions cpstyle ran ($CPSTYLE_CONV: im2col or igemm; bf16 is igemm only).

Per case: check (both implementations from the same initial image for a few
iterations: losses within a relative tolerance, the image's displacement cosine
above a floor), then time, interleaving rounds of cpstyle and PyTorch:

- GPU: rounds of 10 + N iterations with progress every 10 (a host sync, as in a
  real run); ms/iteration is each later 10-iteration block over 10, the first
  block being warm-up; the median over >= 20 timed iterations. cpstyle is read
  at its progress callbacks after a device synchronise; PyTorch with CUDA events.
- CPU: time.perf_counter around each iteration; median of a few.

Model of the work (DESIGN.md §9): forward convs to the deepest tap,
2·9·Cin·Cout·h·w FLOP per layer (611,712·H·W for all 13), backward to the input
the same again; activation traffic scaled from 1.6 GB per iteration at 512².

Output: a fixed-format table, and JSON under bench/results/ (see bench/README.md).
torch is imported lazily: without it the PyTorch column is skipped with a note.
"""
import argparse
import dataclasses
import datetime
import inspect
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"

# ---------------------------------------------------------------- the work model

LAYER_CHANNELS = (
    (3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
    (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512),
)
POOL_AFTER = frozenset({1, 3, 6, 9})

LAYER_SETS = {
    "tutorial": ([4], list(range(13))),
    "gatys": ([8], [0, 2, 4, 7, 10]),
}


def conv_shapes(height, width, depth=13):
    """[(h, w, Cin, Cout)] of the first `depth` conv layers for an H x W input
    (pools floor odd sizes, as the engine does)."""
    h, w, out = height, width, []
    for i in range(depth):
        cin, cout = LAYER_CHANNELS[i]
        out.append((h, w, cin, cout))
        if i in POOL_AFTER:
            h, w = h // 2, w // 2
    return out


def forward_flops(height, width, depth=13):
    """Conv FLOPs of one forward pass to layer depth-1: Σ 2·9·Cin·Cout·h·w."""
    return sum(2 * 9 * cin * cout * h * w for h, w, cin, cout in conv_shapes(height, width, depth))


def iteration_flops(height, width, depth=13):
    """Forward + backward to the input (the same GEMM sizes again) = 2x forward."""
    return 2 * forward_flops(height, width, depth)


def _activation_elems(height, width, depth):
    return sum((cin + cout) * h * w for h, w, cin, cout in conv_shapes(height, width, depth))


def iteration_bytes(height, width, depth=13):
    """Activation traffic per iteration: DESIGN §9's ≈1.6 GB at 512² for all 13
    layers, scaled by the conv layers' input+output elements."""
    return 1.6e9 * _activation_elems(height, width, depth) / _activation_elems(512, 512, 13)


# Dense peaks per device (FLOP/s, bytes/s). The first key that is a substring of
# the device name wins; unknown GPUs fall back to the H100 SXM (named in the JSON).
PEAKS = [
    ("H100 PCIe", dict(fp32=51.2e12, tf32=378e12, bf16=756e12, mem=2.0e12)),
    ("H100 NVL", dict(fp32=60e12, tf32=417.5e12, bf16=835e12, mem=3.9e12)),
    ("H100", dict(fp32=66.9e12, tf32=494.7e12, bf16=989.4e12, mem=3.35e12)),
    ("H200", dict(fp32=66.9e12, tf32=494.7e12, bf16=989.4e12, mem=4.8e12)),
    ("A100-SXM4-80GB", dict(fp32=19.5e12, tf32=156e12, bf16=312e12, mem=2.039e12)),
    ("A100", dict(fp32=19.5e12, tf32=156e12, bf16=312e12, mem=1.555e12)),
    ("L40S", dict(fp32=91.6e12, tf32=183e12, bf16=366e12, mem=0.864e12)),
    ("L4", dict(fp32=30.3e12, tf32=60e12, bf16=121e12, mem=0.3e12)),
]
FALLBACK_PEAKS = "H100"


def peaks_for(device_name):
    """-> (peaks dict, the table key used, whether it was a fallback)."""
    for key, peaks in PEAKS:
        if key.lower() in device_name.lower():
            return peaks, key, False
    return dict(PEAKS)[FALLBACK_PEAKS], FALLBACK_PEAKS, True


def figures(ms, flops, nbytes, peaks):
    """Achieved TFLOP/s and fractions of the floors (floor time / measured time)."""
    if ms is None or ms <= 0:
        return {}
    s = ms / 1e3
    out = {"tflops": flops / s / 1e12}
    if peaks:
        out["frac_fp32_floor"] = flops / peaks["fp32"] / s
        out["frac_tf32_floor"] = flops / peaks["tf32"] / s
        out["frac_bf16_floor"] = flops / peaks["bf16"] / s
        out["frac_mem_floor"] = nbytes / peaks["mem"] / s
    return out


# ---------------------------------------------------------------- environment

def git_commit():
    """(HEAD, tree modified?); where there is no git (a copied tree on a device
    machine), $CPSTYLE_COMMIT names the commit and dirty is None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=REPO, capture_output=True, text=True).stdout.strip())
        return head, dirty
    except Exception:
        return os.environ.get("CPSTYLE_COMMIT") or "unknown", None


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_timeout():
    """OPENBLAS_THREAD_TIMEOUT as NumPy's OpenBLAS read it (cpstyle sets it when
    imported before NumPy; see cpstyle/__init__.py), or a note that it was not."""
    import cpstyle
    value = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "28 (default)")
    return value if cpstyle.BLAS_TIMEOUT_SET else f"{value} (NumPy loaded first: not in effect)"


def blas_info():
    """NumPy's BLAS as threadpoolctl sees it (if importable), and the OpenBLAS
    variables that pin a slow core type on some machines."""
    info = {"threads": None, "internal_api": None, "architecture": None,
            "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                               "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
                    if k in os.environ},
            "thread_timeout": blas_timeout()}
    try:
        import threadpoolctl
        for p in threadpoolctl.threadpool_info():
            if p.get("user_api") == "blas":
                info.update(threads=p.get("num_threads"), internal_api=p.get("internal_api"),
                            architecture=p.get("architecture"))
                break
    except Exception:
        n = info["env"].get("OPENBLAS_NUM_THREADS") or info["env"].get("OMP_NUM_THREADS")
        info["threads"] = int(n) if n and n.isdigit() else os.cpu_count()
        info["architecture"] = "unknown (threadpoolctl not installed)"
    return info


def import_torch():
    """(torch module or None, a note why not)."""
    try:
        import torch
        return torch, ""
    except Exception as e:  # ImportError, or a broken install
        return None, f"PyTorch column skipped: torch not importable ({type(e).__name__}: {e})"


def gpu_name():
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def versions(torch=None, gpu=False):
    v = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import cpstyle
        v["cpstyle"] = getattr(cpstyle, "__version__", "?")
    except Exception:
        pass
    try:
        import cupy
        v["cupy"] = cupy.__version__
        if gpu:
            v["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            v["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception:
        v["cupy"] = None
    if torch is not None:
        v["torch"] = torch.__version__
        v["torch_cuda"] = torch.version.cuda
        try:
            v["cudnn"] = torch.backends.cudnn.version()
        except Exception:
            pass
    else:
        v["torch"] = None
    return v


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# ---------------------------------------------------------------- inputs

def resize(img, height, width):
    from PIL import Image
    chans = [np.asarray(Image.fromarray(img[:, :, c].astype(np.float32), mode="F")
                        .resize((width, height), Image.BICUBIC)) for c in range(3)]
    return np.clip(np.stack(chans, axis=2), 0, 255).astype(np.float32)


def bundled_images():
    """(content, style) float32 arrays from cpstyle's demo pair, or None."""
    try:
        from cpstyle import images
        c, s = images.demo_paths()
        if c.exists() and s.exists():
            return images.load_image(c), images.load_image(s)
    except Exception:
        pass
    return None


def make_images(content_hw, style_hw, source="auto", seed=0):
    """content at exactly content_hw; style at style_hw (the long side as given).
    -> (content, style, what was used)."""
    pair = bundled_images() if source in ("auto", "bundled") else None
    if source == "bundled" and pair is None:
        raise SystemExit("--images bundled: cpstyle's demo images are not there")
    if pair is None:
        rng = np.random.default_rng(seed)
        return (rng.random(content_hw + (3,), dtype=np.float32) * 255,
                rng.random(style_hw + (3,), dtype=np.float32) * 255, "random")
    c, s = pair
    return resize(c, *content_hw), resize(s, *style_hw), "bundled"


def style_shape(style_like, max_size):
    """The (h, w) that load_image(max_size=...) would give a style of this aspect."""
    h, w = style_like
    k = min(1.0, max_size / max(h, w))
    return max(1, round(h * k)), max(1, round(w * k))


def get_weights(allow_random):
    """(bench Weights, "real" | "random", note)."""
    from bench.torch_reference import load_weights, random_weights
    try:
        return load_weights(), "real", ""
    except FileNotFoundError as e:
        if not allow_random:
            raise SystemExit(f"{e}\n(--random-weights times with random weights instead)")
        return random_weights(0), "random", f"weights file missing ({e}); random weights used"


# ---------------------------------------------------------------- cases

@dataclasses.dataclass
class Case:
    name: str
    kind: str                 # "iter": ms per iteration; "example": wall per whole run
    size: tuple               # content (h, w)
    layers: str
    precision: str
    style_size: tuple = None  # default: same as content
    num_iterations: int = 60  # example only

    @property
    def content_ids(self):
        return LAYER_SETS[self.layers][0]

    @property
    def style_ids(self):
        return LAYER_SETS[self.layers][1]

    @property
    def depth(self):
        return max(self.content_ids + self.style_ids) + 1


def case_precisions(on_gpu):
    """On a GPU every precision the engine has (cpstyle.gpu_engine.PRECISIONS); on a
    CPU fp32, the only one the NumPy reference runs."""
    if not on_gpu:
        return ["fp32"]
    from cpstyle.gpu_engine import PRECISIONS
    return list(PRECISIONS)


def all_cases(on_gpu, quick=False):
    precisions = case_precisions(on_gpu)
    sizes = [32, 48] if quick else [256, 512, 1024]
    cases = [Case(f"{n}-{ls}-{p}", "iter", (n, n), ls, p)
             for n in sizes for ls in LAYER_SETS for p in precisions]
    if not quick:
        style_hw = style_shape((640, 1024), 300)  # the demo style's aspect, at most 300 px
        cases += [Case(f"example-{p}", "example", (299, 299), "tutorial", p, style_hw, 60)
                  for p in precisions]
    return cases


def default_case(case, on_gpu):
    """What runs without --cases: everything on a GPU; on a CPU 256 and 512 only
    (1024 takes tens of seconds per iteration, the example minutes)."""
    return on_gpu or (case.kind == "iter" and case.size[0] <= 512)


def select(cases, spec, on_gpu):
    if not spec:
        return [c for c in cases if default_case(c, on_gpu)]
    toks = [t.strip() for t in spec.split(",") if t.strip()]
    if "all" in toks:
        return cases
    return [c for c in cases if any(t in c.name for t in toks)]


# ---------------------------------------------------------------- cpstyle side

def cpstyle_model(weights, dev):
    import cpstyle
    return cpstyle.VGG16([(k, b) for k, b in weights.layers], preprocessing="torch",
                         mean=weights.mean, std=weights.std, device=dev)


def cpstyle_accepts(name):
    import cpstyle
    return name in inspect.signature(cpstyle.style_transfer).parameters


def cpstyle_conv(precision, on_gpu):
    """The convolutions cpstyle runs for `precision`: on a GPU the engine's choice
    ($CPSTYLE_CONV, default im2col; bf16 always igemm; ValueError for an unknown
    name); None on the CPU, whose NumPy reference has one lowering."""
    if not on_gpu:
        return None
    from cpstyle.gpu_engine import check_conv
    return check_conv(None, precision)


def compares_capture(case):
    """The cases issue 12's targets name (the tutorial's layers, fp32 and tf32) are
    also timed uncaptured; the others only as the engine runs them."""
    return case.layers == "tutorial" and case.precision in ("fp32", "tf32")


def may_capture(conv):
    """Can the engine capture its iterations here ($CPSTYLE_CAPTURE not 0, the
    igemm convolutions)? An example run has no reports to ask (Progress.captured)."""
    from cpstyle.gpu_engine import check_capture
    return check_capture(None) is not False and conv == "igemm"


def gpu_sync():
    import cupy
    cupy.cuda.runtime.deviceSynchronize()


def cpstyle_run(model, case, content, style, init, num_iterations, dev, every=None,
                capture=None):
    """One style_transfer run; -> (image as numpy, [(iteration, t, losses, captured)],
    honoured). Timestamps are taken in the progress callback after a device
    synchronise; `captured`: that report's iteration replayed a CUDA graph.
    capture: None, the engine's default ($CPSTYLE_CAPTURE as set), or True/False
    ($CPSTYLE_CAPTURE=1/0 for this run)."""
    import cpstyle
    from cpstyle.backend import to_host
    marks = []

    def cb(p):
        if dev == "gpu":
            gpu_sync()
        marks.append((p.iteration, time.perf_counter(), dict(p.losses), p.captured))

    kw = dict(content_layer_ids=case.content_ids, style_layer_ids=case.style_ids,
              weight_content=1.5, weight_style=10.0, weight_denoise=0.3,
              num_iterations=num_iterations, step_size=10.0, device=dev, seed=0,
              model=model, init=init)
    honoured = cpstyle_accepts("precision")
    if honoured:
        kw["precision"] = case.precision
    elif case.precision != "fp32":
        return None, [], False
    if every is not None:
        kw.update(callback=cb, callback_every=every)
    saved = os.environ.get("CPSTYLE_CAPTURE")
    if capture is not None:
        os.environ["CPSTYLE_CAPTURE"] = "1" if capture else "0"
    try:
        out = cpstyle.style_transfer(content, style, **kw)
    finally:
        if saved is None:
            os.environ.pop("CPSTYLE_CAPTURE", None)
        else:
            os.environ["CPSTYLE_CAPTURE"] = saved
    if dev == "gpu":
        gpu_sync()
    return to_host(out), marks, honoured


def block_times(marks, block, skip_first):
    """[(iteration, t, losses)] -> ms per iteration of each `block`-long stretch
    between consecutive progress marks, the first `skip_first` dropped. Stretches
    of another length (the last report, which evaluates the final image once
    more on the GPU path) are not counted."""
    out = [(b[1] - a[1]) * 1e3 / block for a, b in zip(marks, marks[1:]) if b[0] - a[0] == block]
    return out[skip_first:]


def cupy_pool():
    import cupy
    return cupy.get_default_memory_pool()


# ---------------------------------------------------------------- torch side

class TorchSide:
    def __init__(self, torch, weights, device):
        from bench import torch_reference as tr
        self.torch, self.tr, self.device = torch, tr, device
        self.model = tr.TorchVGG16(weights, device)
        self.cuda = device == "cuda"

    def objective(self, case, content, style):
        return self.tr.TorchObjective(content, style, case.content_ids, case.style_ids,
                                      1.5, 10.0, 0.3, device=self.device,
                                      tf32=case.precision == "tf32",
                                      bf16=case.precision == "bf16", model=self.model)

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def run(self, case, content, style, init, num_iterations):
        """-> (image numpy, [losses at x_0 .. x_n])."""
        obj = self.objective(case, content, style)
        run = self.tr.TorchStyleTransfer(obj, init, 10.0)
        hist = []
        for _ in range(num_iterations):
            run.step(1)
            hist.append(run.last_losses)
        (lc, ls, ld), _ = obj.losses_and_grad(run.x)
        hist.append((lc, ls, ld))
        hist = [dict(zip(("content", "style", "denoise"), (float(v) for v in h))) for h in hist]
        return run.image(), hist

    def time_iterations(self, case, content, style, init, n, block):
        """ms per iteration of each timed block (the first block of a GPU run is warm-up)."""
        torch = self.torch
        obj = self.objective(case, content, style)
        run = self.tr.TorchStyleTransfer(obj, init, 10.0)
        out = []
        if self.cuda:
            run.step(block)  # warm-up block
            float(run.last_losses[0])
            for _ in range(n // block):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                run.step(block)
                b.record()
                float(run.last_losses[0])  # the progress report's host sync, as cpstyle's
                out.append(a.elapsed_time(b) / block)
        else:
            for _ in range(n):
                t0 = time.perf_counter()
                run.step(1)
                out.append((time.perf_counter() - t0) * 1e3)
        return out

    def wall(self, case, content, style, init):
        """One whole run after the weights are on the device, like cpstyle's example timing."""
        t0 = time.perf_counter()
        obj = self.objective(case, content, style)
        run = self.tr.TorchStyleTransfer(obj, init, 10.0)
        run.step(case.num_iterations)
        run.image()
        return time.perf_counter() - t0

    def peak_reset(self):
        if self.cuda:
            self.sync()
            self.torch.cuda.reset_peak_memory_stats()
            self.mem_base = self.torch.cuda.memory_allocated()  # the weights, mostly

    def peak(self):
        """Peak bytes allocated beyond what was held at peak_reset (as cpstyle's
        figure, which excludes the weights already on the device)."""
        return int(self.torch.cuda.max_memory_allocated() - self.mem_base) if self.cuda else None


# ---------------------------------------------------------------- check

# bf16 keeps 8 significant bits: each rounded operand is off by up to 2^-9 relative.
# Losses are means over many elements, so independent roundings average out; what
# is left is correlated (the weights are rounded once for every pixel) and may grow
# layer by layer: 13 layers x 2^-9 = 2.5e-2, hence 3e-2. The gradient passes twice
# as many rounded GEMMs (forward and backward), and the rounding flips some ReLU and
# max-pool decisions, each of which moves a gradient entry by a whole value: measured
# at one step (PyTorch on the CPU, bundled images, both layer sets, 64² to 1024²),
# autocast bf16 against fp32 differs by at most 4e-3 in the losses and 1.3e-2 in
# 1 - cos (gatys at 1024², 5e-3 at 512², a gradient error e ≈ 0.16), a second bf16
# (operands rounded, fp32 outputs, as cpstyle's igemm) against autocast by 1.1e-3 and
# 7.8e-3. min_cos 0.95 leaves 4x that 1 - cos (e ≈ 0.3); a wrong kernel lands far below.
TOLERANCES = {"fp32": dict(loss_rtol=1e-3, min_cos=0.999),
              "tf32": dict(loss_rtol=1e-2, min_cos=0.99),
              "bf16": dict(loss_rtol=3e-2, min_cos=0.95)}


def check_case(case, model, tside, content, style, init, dev, iterations):
    """Both implementations run `iterations` steps from the same image. Without
    torch: cpstyle's result must be finite, in range, with finite losses."""
    out, marks, honoured = cpstyle_run(model, case, content, style, init, iterations, dev, every=1)
    if out is None:
        return {"ok": False, "why": f"cpstyle.style_transfer takes no precision= (asked {case.precision})"}
    res = {"iterations": iterations, "precision_honoured": honoured}
    problems = []
    if out.shape != content.shape or not np.all(np.isfinite(out)) or out.min() < 0 or out.max() > 255:
        problems.append("cpstyle image not finite/in range/right shape")
    cp_losses = [m[2] for m in marks]
    if not cp_losses or not all(np.isfinite(v) for l in cp_losses for v in l.values()):
        problems.append("cpstyle losses missing or not finite")
    if tside is not None and not problems:
        tol = TOLERANCES[case.precision]
        tout, t_losses = tside.run(case, content, style, init, iterations)
        worst = 0.0
        for a, b in zip(cp_losses, t_losses):
            for k in a:
                worst = max(worst, abs(a[k] - b[k]) / max(abs(b[k]), 1e-30))
        da = (out - init).ravel().astype(np.float64)
        db = (tout - init).ravel().astype(np.float64)
        cos = float(da @ db / (np.linalg.norm(da) * np.linalg.norm(db) + 1e-30))
        res.update(loss_max_rel_err=worst, displacement_cos=cos, **tol)
        if worst > tol["loss_rtol"]:
            problems.append(f"losses differ by {worst:.3g} relative (> {tol['loss_rtol']})")
        if cos < tol["min_cos"]:
            problems.append(f"image displacement cosine {cos:.6f} (< {tol['min_cos']})")
    res["ok"] = not problems
    if problems:
        res["why"] = "; ".join(problems)
    return res


# ---------------------------------------------------------------- timing one case

def run_case(case, model, tside, dev, opts, images_src, peaks):
    h, w = case.size
    content, style, used = make_images(case.size, case.style_size or case.size, images_src)
    from bench.torch_reference import initial_image
    init = initial_image(content.shape, 0)
    flops = iteration_flops(h, w, case.depth)
    nbytes = iteration_bytes(h, w, case.depth)
    rec = {"name": case.name, "kind": case.kind, "size": [h, w], "pixels": h * w,
           "style_size": list(style.shape[:2]), "layers": case.layers,
           "content_layer_ids": case.content_ids, "style_layer_ids": case.style_ids,
           "precision": case.precision, "conv": cpstyle_conv(case.precision, dev == "gpu"),
           "depth": case.depth, "images": used,
           "flop_per_iteration": flops, "bytes_per_iteration": nbytes}
    rec["check"] = check_case(case, model, tside, content, style, init, dev, opts.check_iterations)
    if not rec["check"]["ok"]:
        return rec
    cp_s, t_s, uncaptured = [], [], []
    mem = {}
    gpu = dev == "gpu"
    if case.kind == "iter":
        block = 10 if gpu else 1
        n = opts.iterations
        for r in range(opts.rounds):
            if gpu:
                pool = cupy_pool()
                pool.free_all_blocks()
                base = pool.total_bytes()
            # GPU: a warm-up block, n timed, and one more so that every timed
            # block ends at an in-loop report (the final report adds an evaluation)
            _, marks, _ = cpstyle_run(model, case, content, style, init,
                                      (block + n + 1) if gpu else n, dev, every=block)
            cp_s += block_times(marks, block, 1 if gpu else 0)
            if gpu:
                mem["cpstyle"] = max(mem.get("cpstyle", 0), pool.total_bytes() - base)
            if tside is not None:
                tside.peak_reset()
                t_s += tside.time_iterations(case, content, style, init, n, block)
                if gpu:
                    mem["torch"] = max(mem.get("torch", 0), tside.peak())
        if gpu:  # did the timed runs replay a graph? Then (issue 12's cases) one round
            rec["captured"] = any(len(m) > 3 and m[3] for m in marks)  # without, for the ratio
            if rec["captured"] and compares_capture(case):
                _, marks, _ = cpstyle_run(model, case, content, style, init, block + n + 1, dev,
                                          every=block, capture=False)
                uncaptured = block_times(marks, block, 1)
        unit = "ms_per_iteration"
    else:
        if gpu:  # warm-up: kernel compilation, buffers, cuDNN autotuning
            cpstyle_run(model, case, content, style, init, case.num_iterations, dev)
            if tside is not None:
                tside.wall(case, content, style, init)
        for r in range(opts.rounds if gpu else 1):  # a CPU example run takes minutes
            t0 = time.perf_counter()
            cpstyle_run(model, case, content, style, init, case.num_iterations, dev)
            cp_s.append((time.perf_counter() - t0) * 1e3)
            if tside is not None:
                t_s.append(tside.wall(case, content, style, init) * 1e3)
        if gpu and may_capture(rec["conv"]) and compares_capture(case):  # uncaptured, once
            t0 = time.perf_counter()
            cpstyle_run(model, case, content, style, init, case.num_iterations, dev, capture=False)
            uncaptured = [(time.perf_counter() - t0) * 1e3]
        unit = "ms_per_run"
    for side, samples in (("cpstyle", cp_s), ("torch", t_s)):
        if not samples:
            rec[side] = None
            continue
        med = statistics.median(samples)
        d = {unit: med, "samples_ms": [round(s, 4) for s in samples],
             "peak_memory_bytes": mem.get(side)}
        if case.kind == "iter":
            d.update(figures(med, flops, nbytes, peaks))
        else:
            d["ms_per_iteration_incl_setup"] = med / case.num_iterations
        rec[side] = d
    rec["cpstyle"]["precision_honoured"] = rec["check"]["precision_honoured"]
    if uncaptured:  # captured (as timed above) against uncaptured, same case, same process
        rec["cpstyle"][f"uncaptured_{unit}"] = statistics.median(uncaptured)
        rec["capture_speedup"] = rec["cpstyle"][f"uncaptured_{unit}"] / rec["cpstyle"][unit]
    if rec.get("torch"):
        rec["ratio"] = rec["cpstyle"][unit] / rec["torch"][unit]
    return rec


# ---------------------------------------------------------------- targets

def summarise(records, on_gpu, quick=False):
    """The ratios the targets apply to, and whether every target holds (never
    under --quick, whose sizes no target names)."""
    by = {r["name"]: r for r in records}
    targets = []
    if quick:
        return {"targets": [], "targets_met": False, "note": "--quick: targets not evaluated"}

    def ratio_target(name, limit):
        r = by.get(name)
        val = r.get("ratio") if r else None
        targets.append({"what": f"{name} cpstyle/torch ms per iteration", "limit": limit,
                        "value": val, "met": val is not None and val <= limit})

    if on_gpu:
        for n in (512, 1024):
            for ls in LAYER_SETS:
                ratio_target(f"{n}-{ls}-tf32", 0.7)
                ratio_target(f"{n}-{ls}-fp32", 1.0)
        r = by.get("example-fp32")
        val = r["cpstyle"]["ms_per_run"] / 1e3 if r and r.get("cpstyle") else None
        targets.append({"what": "example-fp32 cpstyle wall seconds (60 iterations, after weights load)",
                        "limit": 1.0, "value": val, "met": val is not None and val < 1.0})
        # issue 12 (one CUDA graph per iteration)
        for p in ("fp32", "tf32"):
            ratio_target(f"256-tutorial-{p}", 0.7)
        targets.append({"what": "example-fp32 cpstyle wall seconds, issue 12", "limit": 0.15,
                        "value": val, "met": val is not None and val <= 0.15})
        for n in (512, 1024):
            for p in ("fp32", "tf32"):
                r = by.get(f"{n}-tutorial-{p}")
                val = 1 / r["capture_speedup"] if r and r.get("capture_speedup") else None
                targets.append({"what": f"{n}-tutorial-{p} captured/uncaptured ms per iteration "
                                        f"(no regression; 2% noise)", "limit": 1.02,
                                "value": val, "met": val is not None and val <= 1.02})
    else:
        for n in (256, 512):
            for ls in LAYER_SETS:
                ratio_target(f"{n}-{ls}-fp32", 1.0)
    return {"targets": targets, "targets_met": all(t["met"] for t in targets)}


# ---------------------------------------------------------------- output

def gib(b):
    return f"{b / 2**30:.2f} GiB" if b is not None else "-"


def fmt_line(dev, r):
    h, w = r["size"]
    head = f"{dev} | {h}x{w} {r['layers']} {r['precision']}"
    if r.get("conv"):
        head += f" {r['conv']}"
    if not r["check"]["ok"]:
        return f"{head} | CHECK FAILED: {r['check'].get('why')}"
    cp, tt = r.get("cpstyle"), r.get("torch")
    if r["kind"] == "example":
        line = f"{head} | example {r['style_size'][0]}x{r['style_size'][1]} style, 60 it | " \
               f"cpstyle {cp['ms_per_run'] / 1e3:.3f} s | "
        line += f"torch {tt['ms_per_run'] / 1e3:.3f} s | ratio {r['ratio']:.2f}" if tt else "torch - | ratio -"
        if cp.get("uncaptured_ms_per_run") is not None:
            line += f" | uncaptured {cp['uncaptured_ms_per_run'] / 1e3:.3f} s"
        return line
    chk = r["check"]
    if "displacement_cos" in chk:
        head += f" | check {chk['loss_max_rel_err']:.1e} cos {chk['displacement_cos']:.6f}"
    else:
        head += " | check self"
    line = f"{head} | cpstyle {cp['ms_per_iteration']:.3f} ms | "
    line += f"torch {tt['ms_per_iteration']:.3f} ms | ratio {r['ratio']:.2f}" if tt else "torch - | ratio -"
    line += f" | {cp['tflops']:.2f} TFLOP/s"
    floor = "bf16" if r["precision"] == "bf16" else "tf32"  # bf16 against its own peak
    if f"frac_{floor}_floor" in cp:
        line += f" | {100 * cp[f'frac_{floor}_floor']:.0f}% {floor.upper()} floor" \
                f" | {100 * cp['frac_mem_floor']:.0f}% mem floor"
    if cp.get("peak_memory_bytes") is not None:
        line += f" | mem {gib(cp['peak_memory_bytes'])} / {gib(tt and tt.get('peak_memory_bytes'))}"
    if "captured" in r:
        line += " | graph" if r["captured"] else " | no graph"
    if cp.get("uncaptured_ms_per_iteration") is not None:
        line += f" | uncaptured {cp['uncaptured_ms_per_iteration']:.3f} ms"
    return line


def result_path(device_slug, commit):
    day = datetime.date.today().isoformat()
    return RESULTS / f"{day}-{device_slug}-{commit[:8]}.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    p.add_argument("--cases", help="comma-separated substrings of case names, or 'all' "
                   "(default: all on a GPU; 256 and 512 on a CPU)")
    p.add_argument("--list", action="store_true", help="list the case names and exit")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 32/48 px, 2 iterations, CPU, random weights if none")
    p.add_argument("--rounds", type=int, help="interleaved rounds per case (GPU 2, CPU 3)")
    p.add_argument("--iterations", type=int,
                   help="timed iterations per round (GPU 20, in blocks of 10; CPU 2)")
    p.add_argument("--check-iterations", type=int, default=1,
                   help="steps both implementations take from the same image before "
                   "comparing (trajectories diverge ~5x per step: keep it small)")
    p.add_argument("--images", choices=["auto", "bundled", "random"], default="auto")
    p.add_argument("--random-weights", action="store_true",
                   help="use random weights if the weights file is missing")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    p.add_argument("--out", help="JSON path (default bench/results/DATE-DEVICE-COMMIT.json)")
    p.add_argument("--no-save", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    opts = parse_args(argv)
    if opts.quick:
        opts.device = "cpu"
        opts.random_weights = True
    from cpstyle.backend import resolve_device
    try:
        dev = resolve_device(opts.device)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    gpu = dev == "gpu"
    opts.rounds = opts.rounds or (1 if opts.quick else 2 if gpu else 3)
    opts.iterations = opts.iterations or (20 if gpu else 2)
    if gpu and opts.iterations % 10:
        opts.iterations = -(-opts.iterations // 10) * 10
    if opts.rounds < 1 or opts.iterations < 1 or opts.check_iterations < 1:
        raise SystemExit("--rounds, --iterations and --check-iterations must be >= 1")

    cases = all_cases(gpu, opts.quick)
    if opts.list:
        for c in cases:
            print(c.name + ("" if default_case(c, gpu) or opts.quick else "  (only with --cases)"))
        return 0
    cases = select(cases, opts.cases, gpu or opts.quick)
    if not cases:
        raise SystemExit(f"--cases {opts.cases!r} matches no case (see --list)")
    try:  # a misspelt $CPSTYLE_CONV stops here, not in the first case
        for c in cases:
            cpstyle_conv(c.precision, gpu)
    except ValueError as e:
        raise SystemExit(str(e)) from None

    torch, torch_note = (None, "PyTorch column skipped: --no-torch") if opts.no_torch else import_torch()
    tdev = "cpu"
    if torch is not None and gpu:
        if torch.cuda.is_available():
            tdev = "cuda"
        else:
            torch, torch_note = None, "PyTorch column skipped: torch has no CUDA on this machine"
    if torch is not None and not gpu:
        torch.set_num_threads(os.cpu_count())

    blas = blas_info()
    if gpu:
        name = gpu_name()
        peaks, peaks_key, fallback = peaks_for(name)
        device = {"kind": "gpu", "name": name, "peaks": peaks, "peaks_table_key": peaks_key,
                  "peaks_fallback": fallback}
    else:
        name = cpu_name()
        peaks = None
        device = {"kind": "cpu", "name": name, "cores": os.cpu_count(),
                  "machine": platform.machine(), "blas": blas,
                  "torch_threads": torch.get_num_threads() if torch is not None else None}
    device_slug = slug(name) if gpu else f"cpu-{os.cpu_count()}core-{platform.machine()}"
    commit, dirty = git_commit()

    first = f"device: {dev} | {name}"
    if gpu:
        first += f" | peaks {peaks_key}{' (fallback)' if fallback else ''}"
    else:
        first += f" | {os.cpu_count()} cores | numpy BLAS threads {blas['threads']} " \
                 f"({blas['internal_api'] or '?'} core {blas['architecture']}, thread " \
                 f"timeout 2^{blas['thread_timeout']} cycles)"
        if torch is not None:
            first += f" | torch threads {torch.get_num_threads()}"
        if blas["env"]:
            first += f" | env {blas['env']}"
    print(first, flush=True)
    if torch_note:
        print(f"note: {torch_note}", flush=True)

    weights, wkind, wnote = get_weights(opts.random_weights)
    if wnote:
        print(f"note: {wnote}", flush=True)
    model = cpstyle_model(weights, dev)
    tside = TorchSide(torch, weights, tdev) if torch is not None else None

    records = []
    for case in cases:
        rec = run_case(case, model, tside, dev, opts, opts.images, peaks)
        records.append(rec)
        print(fmt_line(dev, rec), flush=True)

    summary = summarise(records, gpu, opts.quick)
    checks_ok = all(r["check"]["ok"] for r in records)
    result = {
        "schema": 1, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": device, "device_slug": device_slug, "commit": commit, "dirty": dirty,
        "versions": versions(torch, gpu), "weights": wkind, "torch_note": torch_note or None,
        "quick": opts.quick, "rounds": opts.rounds, "iterations": opts.iterations,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "cases": records, "summary": summary, "targets_met": summary["targets_met"],
        "checks_passed": checks_ok,
    }
    for t in summary["targets"]:
        v = t["value"]
        print(f"target | {t['what']} <= {t['limit']} | "
              f"{'-' if v is None else f'{v:.3f}'} | {'met' if t['met'] else 'NOT met'}")
    print(f"targets_met {summary['targets_met']} | checks {'passed' if checks_ok else 'FAILED'}")

    save = not opts.no_save and (opts.out or not opts.quick)
    if save:
        path = Path(opts.out) if opts.out else result_path(device_slug, commit)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"saved {path}")
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
