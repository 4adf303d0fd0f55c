"""Run kernels/*.cu on the CPU (DESIGN.md §7.3).

The source comes from cpstyle.cuda.kernel_source (same text, same defines as the
GPU gets), behind cuda_emu.h, plus one generated trampoline per kernel:

    extern "C" int emu_launch_<kernel>(gx, gy, gz, bx, by, bz, void** args)

args[i] points at the i-th argument's value, as with cuLaunchKernel. Built with
g++ -std=c++20 into tests/emulation/build/ (git-ignored), keyed by a hash of the
whole translation unit and the flags, and loaded with ctypes.

Every launch also checks what NaN-poisoned outputs cannot show: each array goes
to the kernel inside a guard band (GUARD elements each side, filled with a
guard value), its first element at a 256-byte boundary as from cudaMalloc (so
float4 loads of aligned offsets are aligned); after the launch a changed guard
is an out-of-bounds write, and a changed `const` array is a write through a
const pointer. Output arrays are copied back; arguments that share memory are
refused unless all are const.

    emu = Emulator()
    emu.launch(kernel, grid, block, args)      # kernel from cpstyle.cuda.get_kernel
    with emu.installed(): ...                  # route cpstyle.cuda.launch here
    graph = emu.capture(fn); graph.launch()    # CUDA-graph capture (capture.py)
"""
import contextlib
import ctypes
import hashlib
import os
import subprocess

import numpy as np

from cpstyle import cuda

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_DIR = os.path.join(HERE, "build")
HEADER = os.path.join(HERE, "cuda_emu.h")
CXX = os.environ.get("CXX", "g++")
# bounds: static arrays (our __shared__) indexed out of range trap at once;
# alignment: so do misaligned accesses (a float4 load off a 16-byte boundary),
# which the GPU refuses too. visibility=hidden: each module keeps its own
# statics; otherwise the __shared__ arrays of an inline or template function
# are STB_GNU_UNIQUE symbols that the loader merges across all loaded modules,
# whatever size each module's defines gave them (only the trampolines export).
CXXFLAGS = ["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wall", "-Wextra",
            "-Werror", "-Wno-unused-parameter", "-fsanitize=bounds,alignment",
            "-fsanitize-undefined-trap-on-error", "-fvisibility=hidden"]

# Small launch shapes for the emulation: the wrappers read these from cpstyle.cuda.config.
EMU_CONFIG = {"block": 32, "reduce_threads": 32, "reduce_blocks": 5,
              "gram_tile": 8, "gram_micro": 2, "gram_k": 4, "gram_blocks": 6}

GUARD = 17  # elements of guard band on each side of every array argument
ALIGN = 256  # bytes: where each array argument's data starts, as cudaMalloc's
_GUARD_VALUE = {np.dtype(np.float32): np.float32(np.nan), np.dtype(np.float64): np.nan,
                np.dtype(np.uint8): 0xA5, np.dtype(np.int32): -0x5A5A5A5A,
                np.dtype(np.uint32): 0xA5A5A5A5}


def _translation_unit(module, defines, source=None):
    src = cuda.kernel_source(module, defines) if source is None else source
    sigs = cuda.kernel_signatures(src)
    tramp = []
    for name, params in sigs.items():
        call = ", ".join(f"*({p.ctype}*)a[{i}]" for i, p in enumerate(params))
        tramp.append(
            f'extern "C" EMU_EXPORT int emu_launch_{name}(unsigned gx, unsigned gy, unsigned gz,\n'
            f'        unsigned bx, unsigned by, unsigned bz, void** a) {{\n'
            f'    return emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz), [a] {{ {name}({call}); }});\n'
            f'}}\n')
    tu = (f'#include "{HEADER}"\n// ---- kernels/{module}.cu via cpstyle.cuda.kernel_source ----\n'
          f'{src}\n// ---- trampolines ----\n'
          '#define EMU_EXPORT __attribute__((visibility("default")))\n'
          f'extern "C" EMU_EXPORT const char* emu_error() {{ return emu::error_message; }}\n'
          + "".join(tramp))
    return tu, sigs


class _Module:
    def __init__(self, module, defines, source=None):
        tu, self.sigs = _translation_unit(module, defines, source)
        with open(HEADER, encoding="utf-8") as f:
            header = f.read()
        key = hashlib.sha256("\0".join([tu, header, CXX, *CXXFLAGS]).encode()).hexdigest()[:16]
        os.makedirs(BUILD_DIR, exist_ok=True)
        so = os.path.join(BUILD_DIR, f"{module}-{key}.so")
        if not os.path.exists(so):
            # private names until done: two test processes may build the same key at once
            cpp, tmp = f"{so[:-3]}.{os.getpid()}.cpp", f"{so}.{os.getpid()}.tmp"
            with open(cpp, "w", encoding="utf-8") as f:
                f.write(tu)
            r = subprocess.run([CXX, *CXXFLAGS, cpp, "-o", tmp], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"g++ failed on kernels/{module}.cu under the emulation "
                                   f"(defines {defines}), source kept in {cpp}:\n{r.stderr}")
            os.replace(cpp, so[:-3] + ".cpp")  # kept beside the .so for reading
            os.replace(tmp, so)
        self.lib = ctypes.CDLL(so)
        self.lib.emu_error.restype = ctypes.c_char_p
        self.fns = {}
        for name in self.sigs:
            fn = getattr(self.lib, f"emu_launch_{name}")
            fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.POINTER(ctypes.c_void_p)]
            fn.restype = ctypes.c_int
            self.fns[name] = fn


_SCALAR = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.float32): ctypes.c_float,
           np.dtype(np.float64): ctypes.c_double, np.dtype(np.uint32): ctypes.c_uint32}


def _guarded(a):
    """A guard-filled buffer of a.size + 2*GUARD elements whose element GUARD sits
    at an ALIGN-byte boundary."""
    n, isz = a.size + 2 * GUARD, a.itemsize
    raw = np.full(n + ALIGN // isz, _GUARD_VALUE[a.dtype], dtype=a.dtype)
    skip = (-(raw.ctypes.data + GUARD * isz) % ALIGN) // isz
    return raw[skip:skip + n]


class Emulator:
    def __init__(self, config=None):
        self.config = dict(EMU_CONFIG if config is None else config)
        self._modules = {}
        self.launched = []  # kernel names, in launch order
        self.capturing = None  # a capture.Capture while cpstyle.cuda.capture records

    def module(self, module, defines, source=None):
        key = (module, frozenset((defines or {}).items()), source)
        if key not in self._modules:
            self._modules[key] = _Module(module, defines, source)
        return self._modules[key]

    def __call__(self, kernel, grid, block, args):
        self.launch(kernel, grid, block, args)

    def launch(self, kernel, grid, block, args):
        """`kernel` from cpstyle.cuda.get_kernel (or a SourceKernel); arrays are
        NumPy. Checks the arguments like cpstyle.cuda.launch does. During a
        capture: recorded, not run (tests/emulation/capture.py)."""
        if self.capturing is not None:
            return self.capturing.record(kernel, grid, block, args)
        grid, block = cuda._dim3(grid), cuda._dim3(block)
        cuda.check_args(kernel, args)
        mod = self.module(kernel.module, kernel.defines, getattr(kernel, "source", None))
        arrays = [(a, p) for a, p in zip(args, kernel.params) if p.pointer]
        for i, (a, pa) in enumerate(arrays):
            for b, pb in arrays[i + 1:]:
                # each argument is copied in (and back out): two read-only views
                # of the same memory are fine, a written one is not
                if a.size and b.size and not (pa.const and pb.const) and np.shares_memory(a, b):
                    raise ValueError(f"{kernel.name}: the emulator does not take arguments "
                                     "that share memory (unless all of them are const)")
        keep, holders, guarded = [], [], []
        for a, p in zip(args, kernel.params):
            if p.pointer:
                g = _guarded(a)
                g[GUARD:GUARD + a.size] = a.reshape(-1)
                before = g.copy()
                guarded.append((a, p, g, before))
                h = ctypes.c_void_p(g.ctypes.data + GUARD * a.itemsize)
            else:
                h = _SCALAR[p.dtype](a.item())
            keep.append(h)
            holders.append(ctypes.cast(ctypes.pointer(h), ctypes.c_void_p))
        argv = (ctypes.c_void_p * max(1, len(holders)))(*[h.value for h in holders])
        self.launched.append(kernel.name)
        if min(grid) == 0:
            return
        rc = mod.fns[kernel.name](*grid, *block, argv)
        if rc != 0:
            raise RuntimeError(f"{kernel.name} (emulated): {mod.lib.emu_error().decode()}")
        for a, p, g, before in guarded:
            same = (g == before) | (np.isnan(g) & np.isnan(before)) if g.dtype.kind == "f" \
                else g == before
            lo, hi = same[:GUARD], same[GUARD + a.size:]
            if not (lo.all() and hi.all()):
                where = [int(i) - GUARD for i in np.flatnonzero(~lo)] + \
                        [a.size + int(i) for i in np.flatnonzero(~hi)]
                raise AssertionError(f"{kernel.name} (emulated): out-of-bounds write to "
                                     f"{p!r} (size {a.size}) at flat offsets {where[:8]}")
            if p.const and not same.all():
                raise AssertionError(f"{kernel.name} (emulated): wrote to const {p!r}")
            if not p.const:
                a.reshape(-1)[...] = g[GUARD:GUARD + a.size]

    def capture(self, fn):
        """cpstyle.cuda.capture's NumPy side: fn()'s launches recorded, with what
        real capture refuses refused -> a graph whose launch() replays them."""
        from .capture import capture
        return capture(self, fn)

    @contextlib.contextmanager
    def installed(self):
        """cpstyle.cuda.launch sends NumPy launches here, and the wrappers use
        the small launch shapes of self.config; both restored on exit."""
        saved = dict(cuda.config)
        cuda.config.update(self.config)
        cuda.set_emulator(self)
        try:
            yield self
        finally:
            cuda.set_emulator(None)
            cuda.config.clear()
            cuda.config.update(saved)


class SourceKernel:
    """A kernel from source text rather than kernels/ (the harness's own tests)."""

    def __init__(self, source, name):
        self.module, self.name, self.defines, self.source = "inline", name, {}, source
        self.params = cuda.kernel_signatures(source)[name]


def all_kernels():
    """{kernel name: module stem} over kernels/*.cu; a name in two files is an error."""
    out = {}
    for m in cuda.kernel_names():
        for k in cuda.kernel_signatures(cuda.kernel_source(m)):
            if k in out:
                raise ValueError(f"kernel {k} is in kernels/{out[k]}.cu and kernels/{m}.cu")
            out[k] = m
    return out
