"""Tile tuner for the implicit-GEMM convolutions (kernels/conv_igemm.cu through
cpstyle/ops/conv_igemm.py, DESIGN.md §6). For each VGG-16 conv shape, every
candidate tile shape is compiled, checked against the fp32 reference, then
timed beside the im2col path in the same precision. The fastest tiles that
pass go into the per-GPU table that conv_igemm.select_tiles reads.

    python -m bench.tune_conv [--size 512 --size 1024] [--precision tf32 ...]
        [--json PATH] [--table PATH | --no-table] [--budget-s 170] [--quick] [--emulate]

Shapes: the 13 convs at each content size (the pools after conv1_2, 2_2, 3_3
and 4_3 halve the side), forward (A = x: Cin -> Cout) and the backward to the
input (A = dout: Cout -> Cin), in each precision. A shape is kept once per
conv_igemm.table_key: conv3_2 and conv3_3 are one shape, and so are 512²'s
conv4_2 and 1024²'s conv5_1 (512->512 at 2^12 pixels).
FLOP = 2·pixels·9·Cin·Cout per conv, the same in both directions (DESIGN.md §9).

Check, before any timing: err = max|y − ref| / max|ref| over the whole output,
where ref is the im2col path (ops/conv.py) in fp32 with TF32 off and the
output is NaN-filled before the launch. The inputs look like the net's:
post-ReLU activations (half zeros), the 3-channel image as N(0, 1),
He-scaled weights, and for the backward N(0, 1) gradients behind a ReLU mask
with half zeros. Tolerances (TOLERANCE): fp32 (3xTF32) 1e-4, tf32 3e-3,
bf16 2e-2. These are well above what operand rounding should give on this
measure: about 1e-6 for 3xTF32, 4e-4 for TF32 (operands rounded to 2^-11)
and 2e-3 for BF16 (2^-9). The rounding errors are random over K = 9·C
products, and so are the outputs, so the ratio does not grow with K. A wrong
tile index or fragment layout gives O(1). Every candidate's error goes into
the JSON, so the tolerances can be tightened from measurements. The im2col
path in tf32 is checked the same way, and the tf32 tolerance must pass it too.

Timing: CUDA events around `inner` back-to-back calls (enough for
MIN_SAMPLE_MS); the result is the median of REPS such samples, after a warm-up.
A spin kernel holds the GPU while the host enqueues the calls, so a sample
is GPU time, not Python's launch cost (the engine replays CUDA graphs). The
inputs stay resident, so the smaller layers run from L2, for both paths alike.

Output: one line per shape (STYLE.md's form), then the totals per size and
precision (26 convs: the 13 layers, both directions), all measured by the
same method. --json PATH holds everything: every candidate's ok, error and
ms, the picks, and per-layer TFLOP/s and fraction of the dense peak.
On a full GPU run the table goes to conv_igemm.TABLE_PATH (--table PATH
writes elsewhere, --no-table not at all). The table is merged into the file
under this GPU's name, and other GPUs' entries stay as they were. Both
files are rewritten atomically after every shape, so a run that is stopped
keeps what it measured. The table's format:

    {"gpus": {gpu: {table_key: [BM, BN, BK, WARPS_M, WARPS_N]}},  # fastest passing tiles
     "im2col_faster": {gpu: [table_key, ...]},  # the im2col path was faster there
     "igemm_failed": {gpu: [table_key, ...]},   # no candidate passed its check
     "tuned": {gpu: {"commit", "date", "sizes", "precisions"}}}

A key that is tuned again replaces its old entry in all three.

--budget-s (default BUDGET_S): no new shape starts once the tuner has run that
long, and the shapes left are listed as skipped. The estimate printed at the
start counts compiles and launches.
--quick: 64², two candidates per list, no table unless --table (a GPU smoke run).
--emulate: the CPU run under tests/emulation, with NumPy arrays: content 16²,
channels divided by 16, the two candidates with the fewest threads, and the
reference from conv_forward_cpu / conv_backward_cpu. Its timings are the
emulation's host time, are marked as such, and say nothing about a GPU; it
writes a table only with --table. CI runs it (tests/test_tune_conv.py).
"""
import argparse
import contextlib
import datetime
import json
import math
import os
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from bench.run import git_commit, peaks_for
from cpstyle import cuda
from cpstyle.atomic import write_atomic
from cpstyle.layers import LAYER_CHANNELS, LAYER_NAMES, POOL_AFTER
from cpstyle.ops import conv_igemm
from cpstyle.ops.conv import (conv_backward_cpu, conv_backward_gpu, conv_forward_cpu,
                              conv_forward_gpu, flip_kernel)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (512, 1024)
DIRECTIONS = ("fwd", "bwd")
PRECISIONS = ("tf32", "fp32", "bf16")  # tuning order: a budget cut drops the tail
TOLERANCE = {"fp32": 1e-4, "tf32": 3e-3, "bf16": 2e-2}  # max|y - ref| / max|ref|
IM2COL_PRECISIONS = ("fp32", "tf32")  # the im2col path's: cupy.matmul with TF32 off / on
KERNELS = {"fwd": "conv_igemm_forward_kernel", "bwd": "conv_igemm_backward_kernel"}

# Dense peaks per GPU come from bench/run.py's PEAKS (peaks_for). For an H100 SXM,
# and an H200 (the same SMs and clocks, with more and faster memory), they are
# TF32 494.7, BF16 989.4 and FP32 SIMT 66.9 TFLOP/s.
# NVIDIA's datasheet gives 989 TF32 and 1979 BF16 "with sparsity" (2:4 structured):
# "specifications 1/2 lower without sparsity". The datasheet table is reproduced at
# archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html, and the arithmetic is at
# glennklockwood.com/garden/peak-FLOPS: 528 tensor cores x 1024 dense BF16 FLOP/clock
# x 1.83 GHz = 989.4, TF32 half that; 16,896 FP32 lanes x 2 x 1.98 GHz = 66.9.
# fp32 here means 3xTF32 on tensor cores, but it is measured against the FP32
# SIMT peak, the best a plain fp32 kernel could do.
PEAK_OF = {"fp32": ("fp32", "FP32 SIMT"), "tf32": ("tf32", "dense TF32"),
           "bf16": ("bf16", "dense BF16")}

REPS = 7              # timed samples per candidate; the median is reported
MIN_SAMPLE_MS = 0.5   # calls per sample: enough for this much GPU time ...
MAX_INNER = 20        # ... but at most this many
SPIN_FLOOR_MS = 0.2   # the spin kernel's least hold, on top of the host's enqueue time
BUDGET_S = 170.0
# For the estimate only. NVRTC's sm_90 cubin of conv_igemm.cu took 0.2-0.7 s per
# define set on the 2-core development VM.
COMPILE_S = 0.5
HOST_CALL_S = 60e-6   # Python's cost per conv call (wrapper, argument checks, launch)
CHECK_S = 3e-3        # per check: NaN fill, the error's two reductions, one sync
SHAPE_S = 0.05        # per shape: operands, reference, buffers
EST_FRACTION = 0.3    # the fraction of peak the estimate assumes (3xTF32: of TF32/3)
QUICK_SIZE = 64
EMU_SIZE = 16         # the smallest content every layer sees (layers.MIN_IMAGE_SIZE)
EMU_CHANNEL_DIV = 16
EMULATED_GPU = "emulated"


# ---- shapes --------------------------------------------------------------------

def conv_flop(pixels, cin, cout):
    """FLOP of one 3x3 conv (or its backward to the input) over `pixels` pixels."""
    return 2 * pixels * 9 * cin * cout


def scale_channels(c, div):
    """Channel count for the emulation: c // div, but a count below div (the
    image's 3) stays as it is."""
    return c if c < div else c // div


def layer_shapes(size, channel_div=1):
    """VGG-16's convs at a size x size content: [(name, cin, cout, h, w)], each
    pool halving the side (floor), as the net runs them."""
    out, h, w = [], size, size
    for i, (name, (cin, cout)) in enumerate(zip(LAYER_NAMES, LAYER_CHANNELS)):
        out.append((name, scale_channels(cin, channel_div), scale_channels(cout, channel_div), h, w))
        if i in POOL_AFTER:
            h, w = h // 2, w // 2
    return out


@dataclass
class Shape:
    direction: str        # "fwd" or "bwd"
    precision: str
    a_channels: int       # the A source's channels: Cin forward, Cout backward
    out_channels: int     # Cout forward, Cin backward
    h: int
    w: int
    layers: list = field(default_factory=list)  # "512:conv3_2", ... (size:layer)

    @property
    def pixels(self):
        return self.h * self.w

    @property
    def key(self):
        return conv_igemm.table_key(self.direction, self.precision, self.a_channels,
                                     self.out_channels, self.pixels)

    @property
    def flop(self):
        return conv_flop(self.pixels, self.a_channels, self.out_channels)

    @property
    def bytes(self):
        """fp32 traffic at the least: A read once (the mask too, backward), the output written."""
        a = self.a_channels * (2 if self.direction == "bwd" else 1)
        return 4 * self.pixels * (a + self.out_channels)

    @property
    def label(self):
        return f"1x{self.h}x{self.w}x{self.a_channels}->{self.out_channels}"

    def record(self):
        return {"key": self.key, "direction": self.direction, "precision": self.precision,
                "a_channels": self.a_channels, "out_channels": self.out_channels,
                "n": 1, "h": self.h, "w": self.w, "pixels": self.pixels, "flop": self.flop,
                "layers": list(self.layers)}


def enumerate_shapes(sizes, precisions, directions=DIRECTIONS, channel_div=1):
    """The shapes to tune, in tuning order (precision, size, layer, direction),
    each table key once; a shape lists every (size, layer) that runs it."""
    shapes, by_key = [], {}
    for precision in precisions:
        for size in sizes:
            for name, cin, cout, h, w in layer_shapes(size, channel_div):
                if h * w == 0:
                    continue
                for d in directions:
                    a, o = (cin, cout) if d == "fwd" else (cout, cin)
                    s = Shape(d, precision, a, o, h, w)
                    if s.key not in by_key:
                        by_key[s.key] = s
                        shapes.append(s)
                    by_key[s.key].layers.append(f"{size}:{name}")
    return shapes


def candidates_for(shape, mode="full"):
    """The tile candidates to try for `shape`. The narrow list is used where
    select_tiles falls back to NARROW_TILES (few output channels). quick: the
    first two; emulate: the two with the fewest threads (each one is a std::thread)."""
    narrow = conv_igemm.select_tiles(shape.direction, shape.precision, shape.a_channels,
                                     shape.out_channels, shape.pixels, table={}, gpu="") \
        == conv_igemm.NARROW_TILES
    cands = tuple(conv_igemm.NARROW_CANDIDATES if narrow else conv_igemm.CANDIDATES)
    if mode == "full" and not narrow:  # split-K where the output has few tiles
        cands += conv_igemm.split_candidates(shape.a_channels, shape.out_channels, shape.pixels)
    if mode == "quick":
        return cands[:2]
    if mode == "emulate":
        return tuple(sorted(cands, key=lambda t: t[3] * t[4])[:2])
    return cands


def fmt_tiles(tiles):
    bm, bn, bk, wm, wn = tiles[:5]
    split = f" split{tiles[5]}" if len(tiles) == 6 and tiles[5] > 1 else ""
    return f"{bm}x{bn}x{bk} w{wm}x{wn}{split}"


# ---- choosing and the table ----------------------------------------------------

def pick_fastest(candidates):
    """The candidate record that passed its check with the least ms (the first of
    equals), or None when none passed."""
    best = None
    for c in candidates:
        if c.get("ok") and c.get("ms") is not None and (best is None or c["ms"] < best["ms"]):
            best = c
    return best


def read_table(path):
    """The table file as a dict ({} when there is none yet)."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def merge_table(data, gpu, outcomes, meta=None):
    """`data` (the file's dict, not changed) with this GPU's tuned keys merged:
    outcomes = {key: (tiles or None, im2col faster: bool or None)}. A key in
    outcomes replaces its entry under `gpu` in all three mappings; other keys
    and other GPUs stay as they were."""
    out = json.loads(json.dumps(data))  # a deep copy
    out["about"] = ("Tiles (BM, BN, BK, WARPS_M, WARPS_N) per GPU and conv_igemm.table_key: "
                    "the fastest that passed its check, written by bench/tune_conv.py. "
                    "im2col_faster: keys where the im2col path in the same precision was "
                    "faster; igemm_failed: keys where no candidate passed.")
    gpus = out.setdefault("gpus", {})
    entry = dict(gpus.get(gpu, {}))
    faster = set(out.get("im2col_faster", {}).get(gpu, []))
    failed = set(out.get("igemm_failed", {}).get(gpu, []))
    for key, (tiles, im2col_faster) in outcomes.items():
        entry.pop(key, None)
        faster.discard(key)
        failed.discard(key)
        if tiles is None:
            failed.add(key)
            continue
        entry[key] = [int(v) for v in tiles]
        if im2col_faster:
            faster.add(key)
    gpus[gpu] = dict(sorted(entry.items()))
    out.setdefault("im2col_faster", {})[gpu] = sorted(faster)
    out.setdefault("igemm_failed", {})[gpu] = sorted(failed)
    if meta is not None:
        out.setdefault("tuned", {})[gpu] = meta
    return out


def write_json(path, obj):
    """obj -> path as indented JSON, atomically (cpstyle.atomic)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def outcomes_of(records):
    """{key: (tiles or None, im2col faster)} for the shapes that were tuned."""
    out = {}
    for r in records:
        if r["status"] in ("tuned", "failed"):
            pick = r.get("pick")
            out[r["key"]] = (pick["tiles"] if pick else None, r.get("im2col_faster"))
    return out


# ---- the estimate --------------------------------------------------------------

def peak_rate(precision, peaks):
    """What a precision's tensor-core path could reach at most (3xTF32: a third of TF32)."""
    return peaks["tf32"] / 3 if precision == "fp32" else peaks[precision]


def inner_calls(ms):
    """Calls per timed sample for a call of `ms`."""
    return max(1, min(MAX_INNER, math.ceil(MIN_SAMPLE_MS / max(ms, 1e-4))))


def timing_cost(ms):
    """(calls, seconds) of one timing (GPUBackend.time) of a call of `ms`."""
    inner = inner_calls(ms)
    per_call = max(ms / 1e3, HOST_CALL_S)
    spin = SPIN_FLOOR_MS / 1e3 + 1.5 * HOST_CALL_S * inner
    return 2 + REPS * inner, 2 * per_call + REPS * (spin + inner * ms / 1e3)


def estimate(shapes, mode, peaks):
    """Compiles, candidate runs and conv calls the tune will make, and (given the
    device's peaks) its seconds at EST_FRACTION of them."""
    compiles, runs, calls, seconds = set(), 0, 0, 0.0
    for s in shapes:
        ms = None
        if peaks:
            ms = 1e3 * max(s.flop / (EST_FRACTION * peak_rate(s.precision, peaks)),
                           s.bytes / peaks["mem"], 5e-6)
            seconds += SHAPE_S
        n_base = 1  # the reference
        if s.precision in IM2COL_PRECISIONS and mode != "emulate":
            n, t = timing_cost(ms) if ms else (2 + REPS, 0.0)
            n_base += 1 + n
            seconds += t + CHECK_S
        calls += n_base
        for tiles in candidates_for(s, mode):
            try:
                d = conv_igemm.defines(tiles, s.precision, s.a_channels, s.out_channels)
            except ValueError:
                continue
            compiles.add(frozenset(d.items()))
            runs += 1
            n, t = timing_cost(ms) if ms else (2 + REPS, 0.0)
            calls += 1 + (1 if mode == "emulate" else n)
            seconds += t + CHECK_S
    out = {"shapes": len(shapes), "candidate_runs": runs, "compiles": len(compiles),
           "calls": calls, "seconds": None}
    if peaks:
        out["compile_seconds"] = len(compiles) * COMPILE_S
        out["seconds"] = seconds + out["compile_seconds"]
    return out


# ---- one shape's operands --------------------------------------------------------

def rel_error(xp, got, ref):
    """max|got − ref| / max|ref| (inf for a NaN or inf anywhere in got)."""
    scale = float(xp.abs(ref).max())
    diff = float(xp.abs(got - ref).max())
    if not math.isfinite(diff):
        return math.inf
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


class Problem:
    """One shape's operands (CuPy, or NumPy for the emulation) and its output
    buffer; igemm / im2col / reference each compute the conv into self.out."""

    def __init__(self, shape, xp, seed):
        self.shape, self.xp = shape, xp
        gen = np.random.default_rng(seed) if xp is np else xp.random.RandomState(seed)

        def normal(*dims, scale=1.0):
            return gen.standard_normal(dims, dtype=np.float32) * np.float32(scale)

        s = shape
        if s.direction == "fwd":
            cin, cout = s.a_channels, s.out_channels
            x = normal(1, s.h, s.w, cin)
            self.x = x if cin == 3 else xp.maximum(x, 0)  # the image, or post-ReLU
            self.w = normal(3, 3, cin, cout, scale=math.sqrt(2 / (9 * cin)))
            self.b = normal(cout, scale=0.1)
        else:
            cin, cout = s.out_channels, s.a_channels
            self.dout = normal(1, s.h, s.w, cout)
            self.y = xp.maximum(normal(1, s.h, s.w, cout), 0)  # the ReLU mask's source
            self.w = normal(3, 3, cin, cout, scale=math.sqrt(2 / (9 * cin)))
            self.wflip = flip_kernel(self.w)
        self.out = xp.empty((1, s.h, s.w, s.out_channels), np.float32)
        self.cols = self.dz = self.work = None

    def igemm(self, tiles, precision):
        s = self.shape
        need = conv_igemm.splitk_work_size(tiles, s.out_channels, s.pixels)
        if need and (self.work is None or self.work.size < need):  # made once, outside timing
            self.work = self.xp.empty(need, np.float32)
        work = self.work if need else None
        if s.direction == "fwd":
            conv_igemm.conv_forward_igemm(self.x, self.w, self.b, out=self.out,
                                          precision=precision, tiles=tiles, work=work)
        else:
            conv_igemm.conv_backward_igemm(self.dout, (self.w, self.y), self.wflip, out=self.out,
                                           precision=precision, tiles=tiles, work=work)

    def im2col(self):
        """ops/conv.py's GPU path (its precision: the caller's matmul_precision),
        with its work buffers made once."""
        s, xp = self.shape, self.xp
        if self.cols is None:
            self.cols = xp.empty(s.pixels * 9 * max(s.a_channels, s.out_channels), np.float32)
            self.dz = xp.empty(s.pixels * s.a_channels, np.float32)
        if s.direction == "fwd":
            conv_forward_gpu(self.x, self.w, self.b, out=self.out, cols=self.cols)
        else:
            conv_backward_gpu(self.dout, (self.w, self.y), self.wflip, out=self.out,
                              cols=self.cols, dz=self.dz)

    def reference_cpu(self):
        if self.shape.direction == "fwd":
            self.out[...] = conv_forward_cpu(self.x, self.w, self.b)[0]
        else:
            self.out[...] = conv_backward_cpu(self.dout, (self.w, self.y), self.wflip)

    def check(self, run, ref):
        """Relative error of run()'s output (NaN-filled first) against ref."""
        self.out.fill(np.nan)
        run()
        return rel_error(self.xp, self.out, ref)


# ---- devices -----------------------------------------------------------------------

# Holds the GPU (busy-waiting on the global nanosecond timer) while the host
# enqueues a sample's calls. It is a timing aid for this bench only, not a
# kernel of cpstyle's, so it lives here and not in kernels/.
SPIN_SOURCE = r'''
extern "C" __global__ void spin_kernel(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
'''


class GpuBackend:
    emulated = False
    has_im2col = True  # ops/conv.py's GPU path runs here (the baseline)

    def __init__(self):
        import cupy
        from cpstyle.gpu_engine import matmul_precision
        self.cp = self.xp = cupy
        self.matmul_precision = matmul_precision
        self.gpu = conv_igemm.gpu_name()
        self.start, self.end = cupy.cuda.Event(), cupy.cuda.Event()
        self.spin_kernel = cupy.RawKernel(SPIN_SOURCE, "spin_kernel")

    def session(self):
        return contextlib.nullcontext()

    def compile(self, kname, d):
        cuda.get_kernel("conv_igemm", kname, d).function()

    def sync(self):
        self.cp.cuda.Device().synchronize()

    def precision(self, precision):
        return self.matmul_precision(precision, self.cp)

    def reference(self, prob):
        with self.precision("fp32"):
            prob.im2col()
        return prob.out.copy()

    def spin(self, ms):
        self.spin_kernel((1,), (1,), (np.uint64(ms * 1e6),))

    def time(self, fn):
        """GPU ms per call of fn: the median of REPS samples of `inner` calls
        between two events, the GPU held by the spin kernel while the host
        enqueues them. A sample whose enqueue outlasted the spin (the GPU may
        have waited for the host) is taken again with a longer spin."""
        cp, start, end = self.cp, self.start, self.end
        fn()  # warm-up
        start.record()
        t0 = time.perf_counter()
        fn()
        host = time.perf_counter() - t0
        end.record()
        end.synchronize()
        inner = inner_calls(cp.cuda.get_elapsed_time(start, end))
        spin_ms = SPIN_FLOOR_MS + 1.5e3 * host * inner
        samples, retaken = [], 0
        while len(samples) < REPS:
            self.spin(spin_ms)
            start.record()
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            host_ms = (time.perf_counter() - t0) * 1e3
            end.record()
            end.synchronize()
            if host_ms > spin_ms and retaken < REPS:
                retaken += 1
                spin_ms = SPIN_FLOOR_MS + 1.5 * host_ms
                continue
            samples.append(cp.cuda.get_elapsed_time(start, end) / inner)
        return {"ms": statistics.median(samples), "samples_ms": samples, "inner": inner,
                "retaken": retaken, "calls": 2 + inner * (REPS + retaken)}

    def lost(self):
        """None while the CUDA context works; else why not (after a bad launch
        everything after it fails: the tune stops)."""
        try:
            self.sync()
            float(self.cp.ones(4, dtype=np.float32).sum())
            return None
        except Exception as e:
            return f"{type(e).__name__}: {e}"


class EmuBackend:
    """tests/emulation's host emulation: NumPy arrays, g++ builds, host seconds."""
    emulated = True
    has_im2col = False  # no baseline: the emulation's times are no GPU's

    def __init__(self):
        tests = os.path.join(REPO, "tests")
        if tests not in sys.path:
            sys.path.insert(0, tests)
        from emulation import harness  # tests/emulation/harness.py
        self.harness = harness
        self.emu = harness.Emulator()
        self.xp = np
        self.gpu = EMULATED_GPU

    @contextlib.contextmanager
    def session(self):
        """The emulator installed (its builds keep each module's statics apart:
        harness.CXXFLAGS has -fvisibility=hidden)."""
        with self.emu.installed():
            yield

    def compile(self, kname, d):
        self.emu.module("conv_igemm", d)

    def sync(self):
        pass

    def reference(self, prob):
        prob.reference_cpu()
        return prob.out.copy()

    def time(self, fn):
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return {"ms": ms, "samples_ms": [ms], "inner": 1, "retaken": 0, "calls": 1,
                "emulated": True}

    def lost(self):
        return None


class ContextLost(RuntimeError):
    """A launch broke the CUDA context: nothing after it can run. `record`: the
    shape's record so far."""

    def __init__(self, message, record):
        super().__init__(message)
        self.record = record


# ---- the tune -------------------------------------------------------------------------

def short_error(e, limit=600):
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[:limit] + " ..."


class Tuner:
    def __init__(self, backend, mode):
        self.backend, self.mode = backend, mode
        self.compiled = {}        # frozenset(defines) -> seconds, or the error text
        self.compile_seconds = 0.0
        self.calls = 0

    def compile(self, kname, d):
        """Compile (once per define set: both kernels are one module); raises
        again for a set that failed before."""
        key = frozenset(d.items())
        prior = self.compiled.get(key)
        if isinstance(prior, str):
            raise RuntimeError(f"did not compile before: {prior}")
        t0 = time.perf_counter()
        try:
            self.backend.compile(kname, d)
        except Exception as e:
            self.compiled[key] = short_error(e)
            raise
        dt = time.perf_counter() - t0
        if prior is None:
            self.compiled[key] = dt
            self.compile_seconds += dt
            return dt
        return None

    def _raise_if_lost(self, rec, what, e):
        why = self.backend.lost()
        if why is not None:
            rec["status"] = "aborted"
            raise ContextLost(f"{what}: {short_error(e)}; the CUDA context is gone ({why})",
                              rec) from None

    def timed(self, fn):
        t = self.backend.time(fn)
        self.calls += t["calls"]
        return t

    def shape(self, s):
        """One shape: reference, the im2col baseline, every candidate -> its record."""
        b = self.backend
        rec = s.record()
        rec.update(im2col=None, candidates=[], pick=None, im2col_faster=None)
        tol = TOLERANCE[s.precision]
        t0 = time.perf_counter()
        try:
            prob = Problem(s, b.xp, seed=zlib.crc32(s.key.encode()))
            ref = b.reference(prob)
        except Exception as e:  # no reference, no check: nothing learnt about igemm here
            rec.update(status="error", error=f"reference: {short_error(e)}")
            self._raise_if_lost(rec, f"{s.key} reference", e)
            return rec
        self.calls += 1
        rec["reference_s"] = time.perf_counter() - t0
        if b.has_im2col and s.precision in IM2COL_PRECISIONS:
            try:
                with b.precision(s.precision):
                    err = prob.check(prob.im2col, ref)
                    self.calls += 1
                    rec["im2col"] = {"rel_error": err, "ok": err <= tol, **self.timed(prob.im2col)}
            except Exception as e:
                rec["im2col"] = {"ok": False, "ms": None, "error": short_error(e)}
                self._raise_if_lost(rec, f"{s.key} im2col", e)
        cands = rec["candidates"]
        for tiles in candidates_for(s, self.mode):
            c = {"tiles": list(tiles), "ok": False}
            cands.append(c)
            stage = "tiles"
            try:
                d = conv_igemm.defines(tiles, s.precision, s.a_channels, s.out_channels)
                c["defines"] = d
                stage = "compile"
                c["compile_s"] = self.compile(KERNELS[s.direction], d)
                stage = "check"
                run = (lambda t=tuple(tiles): prob.igemm(t, s.precision))
                c["rel_error"] = prob.check(run, ref)
                self.calls += 1
                c["ok"] = c["rel_error"] <= tol
                if c["ok"]:
                    stage = "time"
                    c.update(self.timed(run))
            except Exception as e:
                c.update(stage=stage, error=short_error(e))
                self._raise_if_lost(rec, f"{s.key} {fmt_tiles(tiles)} ({stage})", e)
        pick = pick_fastest(cands)
        rec["status"] = "tuned" if pick else "failed"
        if pick:
            rec["pick"] = {"tiles": pick["tiles"], "ms": pick["ms"], "rel_error": pick["rel_error"]}
        base = rec["im2col"]
        rec["im2col_faster"] = (None if pick is None or base is None or not base["ok"]
                                else base["ms"] < pick["ms"])
        return rec


# ---- report -------------------------------------------------------------------------

def figures(ms, flop, precision, peaks):
    """TFLOP/s and the fraction of the precision's peak; (None, None) without
    peaks (the emulation: its times are no GPU's)."""
    if ms is None or ms <= 0 or not peaks:
        return None, None
    rate = flop / (ms / 1e3)
    return rate / 1e12, rate / peaks[PEAK_OF[precision][0]]


def format_line(rec, peaks, emulated=False):
    """STYLE.md's benchmark line for one shape:
    conv fwd tf32 | 1x1024x1024x64->64 | 0.912 ms | 82.9 TFLOP/s | 8.4% of dense TF32 peak
    | im2col 1.83 ms | tiles 128x64x16 w2x2"""
    head = (f"conv {rec['direction']} {rec['precision']} | "
            f"1x{rec['h']}x{rec['w']}x{rec['a_channels']}->{rec['out_channels']}")
    base = rec.get("im2col")
    base_txt = ("im2col -" if base is None else
                f"im2col {base['ms']:.3f} ms" if base["ok"] else
                f"im2col ERROR {base['error'][:160]}" if base.get("error") else
                f"im2col FAILED its check (err {base['rel_error']:.1e})")
    if rec["status"] == "skipped":
        return f"{head} | skipped: {rec.get('reason', '')}"
    if rec["status"] == "error":
        return f"{head} | ERROR: {rec['error'][:300]}"
    pick = rec.get("pick")
    if pick is None:
        tried = [c for c in rec.get("candidates", []) if c.get("rel_error") is not None]
        if tried:
            best = min(tried, key=lambda c: c["rel_error"])
            why = (f"no tiles within {TOLERANCE[rec['precision']]:.0e} (best "
                   f"{fmt_tiles(best['tiles'])} err {best['rel_error']:.1e})")
        else:
            first = next((c for c in rec.get("candidates", []) if c.get("error")), None)
            why = "no candidate ran" + (f" ({first['stage']}: {first['error'][:200]})" if first else "")
        return f"{head} | FAILED: {why} | {base_txt}"
    if emulated:
        return f"{head} | {pick['ms']:.3f} ms (emulated) | tiles {fmt_tiles(pick['tiles'])}"
    tflops, frac = figures(pick["ms"], rec["flop"], rec["precision"], peaks)
    frac_txt = f"{100 * frac:.1f}% of {PEAK_OF[rec['precision']][1]} peak" if frac is not None \
        else "peak unknown"
    return (f"{head} | {pick['ms']:.3f} ms | {tflops:.1f} TFLOP/s | {frac_txt} | {base_txt} "
            f"| tiles {fmt_tiles(pick['tiles'])}")


def summarise(records, sizes, precisions, channel_div, peaks):
    """Per layer (size, precision, layer, direction): the shape's best ms,
    TFLOP/s and fraction of peak beside im2col's; and per (size, precision),
    the totals over the 26 convs (complete only when every conv was tuned)."""
    by_key = {r["key"]: r for r in records}
    layers, totals = [], []
    for precision in precisions:
        for size in sizes:
            tot = {"size": size, "precision": precision, "convs": 0, "flop": 0,
                   "igemm_ms": 0.0, "im2col_ms": 0.0, "best_ms": 0.0, "complete": True,
                   "im2col_complete": precision in IM2COL_PRECISIONS, "best_complete": True}
            for name, cin, cout, h, w in layer_shapes(size, channel_div):
                if h * w == 0:
                    continue
                for d in DIRECTIONS:
                    a, o = (cin, cout) if d == "fwd" else (cout, cin)
                    key = conv_igemm.table_key(d, precision, a, o, h * w)
                    r = by_key.get(key, {})
                    pick, base = r.get("pick"), r.get("im2col")
                    ms = pick["ms"] if pick else None
                    bms = base["ms"] if base and base.get("ok") else None
                    flop = conv_flop(h * w, cin, cout)
                    tflops, frac = figures(ms, flop, precision, peaks)
                    layers.append({"size": size, "precision": precision, "layer": name,
                                   "direction": d, "key": key, "ms": ms, "tiles":
                                   pick["tiles"] if pick else None, "im2col_ms": bms,
                                   "tflops": tflops, "frac_peak": frac})
                    tot["convs"] += 1
                    tot["flop"] += flop
                    if ms is None:
                        tot["complete"] = False
                    else:
                        tot["igemm_ms"] += ms
                    if bms is None:
                        tot["im2col_complete"] = False
                    else:
                        tot["im2col_ms"] += bms
                    if ms is None and bms is None:
                        tot["best_complete"] = False
                    else:
                        tot["best_ms"] += min(v for v in (ms, bms) if v is not None)
            for k, ok in (("igemm_ms", "complete"), ("im2col_ms", "im2col_complete"),
                          ("best_ms", "best_complete")):
                if not tot[ok]:
                    tot[k] = None
            tot["tflops"], tot["frac_peak"] = figures(tot["igemm_ms"], tot["flop"], precision, peaks)
            totals.append(tot)
    return layers, totals


def format_total(t, emulated=False):
    def ms(v):
        return "-" if v is None else f"{v:.3f} ms"
    line = (f"total {t['size']}x{t['size']} {t['precision']} | {t['convs']} convs | "
            f"igemm {ms(t['igemm_ms'])} | im2col {ms(t['im2col_ms'])} | "
            f"best of both {ms(t['best_ms'])}")
    if emulated:
        return line + " | emulated"
    if t["tflops"] is not None:
        line += f" | {t['tflops']:.1f} TFLOP/s"
    if t["frac_peak"] is not None:
        line += f" | {100 * t['frac_peak']:.1f}% of {PEAK_OF[t['precision']][1]} peak"
    if not t["complete"]:
        line += " | incomplete (a conv not tuned)"
    return line


def versions():
    v = {"python": sys.version.split()[0], "numpy": np.__version__}
    try:
        import cupy
        v["cupy"] = cupy.__version__
        v["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        v["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    except Exception:
        pass
    return v


# ---- main -------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.tune_conv", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, action="append",
                   help=f"content size (repeatable; default {' '.join(map(str, SIZES))}; "
                        f"--quick {QUICK_SIZE}, --emulate {EMU_SIZE})")
    p.add_argument("--precision", action="append", choices=list(conv_igemm.PRECISIONS),
                   help=f"repeatable; default {' '.join(PRECISIONS)} (in that order)")
    p.add_argument("--json", metavar="PATH", help="write every result here")
    p.add_argument("--table", metavar="PATH",
                   help="the tile table to merge into (default on a full GPU run: "
                        "cpstyle/data/conv_tiles.json; --quick and --emulate only with this)")
    p.add_argument("--no-table", action="store_true", help="write no table")
    p.add_argument("--budget-s", type=float, default=BUDGET_S,
                   help=f"start no new shape after this many seconds (default {BUDGET_S:g}; 0: none)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE}², two candidates per list")
    p.add_argument("--emulate", action="store_true",
                   help="on the CPU under tests/emulation (tiny shapes, no timing claims)")
    p.add_argument("--channel-div", type=int, help=f"divide channels (default 1; --emulate {EMU_CHANNEL_DIV})")
    p.add_argument("--verbose", action="store_true", help="a line per candidate")
    a = p.parse_args(argv)
    a.mode = "emulate" if a.emulate else "quick" if a.quick else "full"
    if not a.size:
        a.size = [EMU_SIZE] if a.emulate else [QUICK_SIZE] if a.quick else list(SIZES)
    a.precision = list(dict.fromkeys(a.precision or PRECISIONS))
    if a.channel_div is None:
        a.channel_div = EMU_CHANNEL_DIV if a.emulate else 1
    if a.no_table:
        a.table = None
    elif a.table is None and a.mode == "full":
        a.table = conv_igemm.TABLE_PATH
    return a


def main(argv=None, backend=None):
    """`backend`: GpuBackend or EmuBackend by default (the tests pass their own)."""
    a = parse_args(argv)
    if backend is None:
        try:
            backend = EmuBackend() if a.emulate else GpuBackend()
        except Exception as e:
            print(f"tune_conv: no {'emulation' if a.emulate else 'CUDA device'} to run on "
                  f"({short_error(e, 300)}){'' if a.emulate else '; --emulate runs on the CPU'}",
                  file=sys.stderr)
            return 2
    gpu = backend.gpu or "unknown-gpu"
    if backend.emulated:
        peaks, peaks_key, fallback = None, None, False
    else:
        peaks, peaks_key, fallback = peaks_for(gpu)
    commit = os.environ.get("CPSTYLE_COMMIT") or git_commit()[0]
    shapes = enumerate_shapes(a.size, a.precision, channel_div=a.channel_div)
    plan = estimate(shapes, a.mode, peaks)
    budget = a.budget_s if a.budget_s and a.budget_s > 0 else None

    if backend.emulated:
        print(f"device: {gpu} (tests/emulation on the CPU: timings are host seconds, not a GPU's)"
              f" | commit {commit[:8]}")
    else:
        print(f"device: {gpu} | peaks fp32 {peaks['fp32'] / 1e12:.1f}, tf32 {peaks['tf32'] / 1e12:.1f}, "
              f"bf16 {peaks['bf16'] / 1e12:.1f} TFLOP/s dense ({peaks_key}"
              f"{', a fallback: this GPU is not in bench/run.py PEAKS' if fallback else ''})"
              f" | commit {commit[:8]}")
    secs = f", ~{plan['seconds']:.0f} s in all ({plan['compile_seconds']:.0f} s of it compiling " \
           f"at ~{COMPILE_S} s each)" if plan["seconds"] is not None else ""
    print(f"plan: {plan['shapes']} shapes (sizes {', '.join(map(str, a.size))}; "
          f"{', '.join(a.precision)}; fwd and bwd), {plan['candidate_runs']} candidate runs, "
          f"{plan['compiles']} compiles, ~{plan['calls']} conv calls{secs}; "
          f"budget {'none' if budget is None else f'{budget:g} s'}", flush=True)

    result = {"device": {"name": gpu, "emulated": backend.emulated, "peaks": peaks,
                         "peaks_table_key": peaks_key, "peaks_fallback": fallback},
              "commit": commit, "date": datetime.date.today().isoformat(),
              "versions": versions(),
              "args": {"sizes": a.size, "precisions": a.precision, "mode": a.mode,
                       "channel_div": a.channel_div, "budget_s": budget},
              "tolerance": TOLERANCE,
              "timing": {"reps": REPS, "min_sample_ms": MIN_SAMPLE_MS, "max_inner": MAX_INNER,
                         "method": "host seconds of the emulation" if backend.emulated else
                         "CUDA events, median of reps samples of inner back-to-back calls, "
                         "the GPU held by a spin kernel while they are enqueued"},
              "estimate": plan, "shapes": [], "skipped": [], "aborted": None,
              "table": {"path": a.table, "gpu": gpu}}
    meta = {"commit": commit, "date": result["date"], "sizes": a.size, "precisions": a.precision}
    tuner = Tuner(backend, a.mode)
    t_start = time.monotonic()

    def save():
        layers, totals = summarise(result["shapes"], a.size, a.precision, a.channel_div, peaks)
        result.update(layers=layers, totals=totals, elapsed_s=time.monotonic() - t_start,
                      compiles={"count": sum(1 for v in tuner.compiled.values()
                                             if not isinstance(v, str)),
                                "failed": sum(1 for v in tuner.compiled.values()
                                              if isinstance(v, str)),
                                "seconds": tuner.compile_seconds},
                      calls=tuner.calls)
        if a.table:
            write_json(a.table, merge_table(read_table(a.table), gpu,
                                            outcomes_of(result["shapes"]), meta))
        if a.json:
            write_json(a.json, result)
        return totals

    with backend.session():
        for i, s in enumerate(shapes):
            elapsed = time.monotonic() - t_start
            if result["aborted"] or (budget is not None and elapsed > budget):
                why = ("the CUDA context was lost" if result["aborted"] else
                       f"budget {budget:g} s spent ({elapsed:.0f} s)")
                rec = {**s.record(), "status": "skipped", "reason": why}
                result["shapes"].append(rec)
                result["skipped"].append(s.key)
                print(format_line(rec, peaks, backend.emulated), flush=True)
                continue
            try:
                rec = tuner.shape(s)
            except ContextLost as e:
                result["aborted"] = str(e)
                rec = {**e.record, "reason": str(e)}
                print(f"ABORTED: {e}", flush=True)
            result["shapes"].append(rec)
            if rec["status"] != "aborted":
                print(format_line(rec, peaks, backend.emulated), flush=True)
                if a.verbose:
                    for c in rec["candidates"]:
                        ms = f"{c['ms']:.3f} ms" if c.get("ms") is not None else "-"
                        err = f"{c['rel_error']:.1e}" if c.get("rel_error") is not None else "-"
                        print(f"    {fmt_tiles(c['tiles'])} | ok {c['ok']} | err {err} | {ms}"
                              f"{' | ' + c['error'][:200] if c.get('error') else ''}")
            save()
    totals = save()
    for t in totals:
        print(format_total(t, backend.emulated))
    recs = result["shapes"]
    failed = [r["key"] for r in recs if r["status"] in ("failed", "error")]
    tuned = [r for r in recs if r["status"] == "tuned"]
    faster = sum(1 for r in tuned if r.get("im2col_faster"))
    c = result["compiles"]
    print(f"done: {len(tuned)} shapes tuned, {len(failed)} failed, {len(result['skipped'])} skipped; "
          f"{c['count']} compiles in {c['seconds']:.1f} s ({c['failed']} failed), "
          f"{tuner.calls} conv calls, {result['elapsed_s']:.1f} s"
          + (f"; table {a.table} ({gpu}: {len(tuned)} keys written, im2col faster on {faster})"
             if a.table else "; no table written"))
    for k in failed:
        print(f"FAILED: {k}")
    if result["aborted"]:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
