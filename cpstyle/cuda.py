"""The kernel loader (DESIGN.md §6): kernels/NAME.cu read as text, shared
`#include "x.cuh"` pasted in place, `#define K V` lines prepended, compiled by
`cupy.RawModule(code=...)` and cached per (device, name, defines).

    k = get_kernel("conv", "im2col_kernel")
    launch(k, ceil_div(n, BLOCK), BLOCK, (cols, x, i32(N), i32(H), i32(W), i32(C)))

`launch` checks every argument against the kernel's parameter list, parsed from
the source: pointers must be C-contiguous arrays of the matching dtype, `int`
must be numpy.int32, `float` numpy.float32 (CuPy checks none of this).

Launch sizes that the `_gpu` wrappers use live in `config` here; the CPU
emulation (tests/emulation) installs itself with `set_emulator` and shrinks
them, so the emulated tests run the very wrappers the GPU runs.
`capture(fn, xp)` records fn()'s launches as a CUDA graph (or, for NumPy arrays,
in the emulator's capture mode). Importing this module needs no CuPy.
Tests: tests/test_kernels_*.py, tests/test_gpu_engine_emulated.py."""
import os
import re

import numpy as np

from .backend import is_gpu_array


def _find_kernel_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (os.path.join(here, "kernels"),                 # installed as package data
              os.path.join(os.path.dirname(here), "kernels")):  # the source tree
        if os.path.isdir(d):
            return d
    return os.path.join(os.path.dirname(here), "kernels")


KERNEL_DIR = _find_kernel_dir()
NVRTC_OPTIONS = ("--std=c++17",)

# Launch shapes of the `_gpu` wrappers. REDUCE_* are also compiled in as defines
# (the shared arrays are sized by them), so they travel into the cache key.
config = {
    "block": 256,           # threads per block, element-wise kernels
    "reduce_threads": 256,  # threads per block of the reductions (power of two)
    "reduce_blocks": 256,   # fixed grid of the first reduction stage = partials
    # kernels/gram.cu (ops/gram.py): output tile edge, micro-tile edge, staged
    # rows, and about how many blocks the split-K forward aims for
    "gram_tile": 64, "gram_micro": 4, "gram_k": 16, "gram_blocks": 528,
}


def ceil_div(a, b):
    return -(-int(a) // int(b))


def i32(v):
    v = int(v)
    if not -2**31 <= v < 2**31:
        raise OverflowError(f"{v} does not fit a 32-bit int kernel argument")
    return np.int32(v)


def f32(v):
    return np.float32(v)


def reduce_defines():
    return {"REDUCE_THREADS": config["reduce_threads"], "REDUCE_BLOCKS": config["reduce_blocks"]}


def out_array(xp, out, shape, dtype=np.float32, what="out"):
    """`out` checked to be a C-contiguous array of exactly `shape` and `dtype`,
    or a fresh xp.empty when it is None."""
    shape = tuple(int(s) for s in shape)
    if out is None:
        return xp.empty(shape, dtype=dtype)
    if tuple(out.shape) != shape or out.dtype != np.dtype(dtype) or not out.flags.c_contiguous:
        raise ValueError(f"{what}: need a C-contiguous {np.dtype(dtype).name} array of shape "
                         f"{shape}, got {out.dtype} {tuple(out.shape)}"
                         f"{'' if out.flags.c_contiguous else ' (not contiguous)'}")
    return out


def work_view(xp, buf, shape, dtype=np.float32, what="work buffer"):
    """A work buffer of `shape`: the leading elements of `buf` (C-contiguous,
    `dtype`, at least that many elements, any shape), so that one buffer can
    serve several layers; a fresh xp.empty when `buf` is None."""
    shape = tuple(int(s) for s in shape)
    if buf is None:
        return xp.empty(shape, dtype=dtype)
    need = int(np.prod(shape))
    if buf.dtype != np.dtype(dtype) or not buf.flags.c_contiguous or buf.size < need:
        raise ValueError(f"{what}: need a C-contiguous {np.dtype(dtype).name} buffer of at "
                         f"least {need} elements, got {buf.dtype} {tuple(buf.shape)}")
    return buf.reshape(-1)[:need].reshape(shape)


def reduce_grid(n):
    """Blocks of a first reduction stage for n elements: fixed for a given n, at
    most config['reduce_blocks'], at least 1 (so partial[0] is always written)."""
    return max(1, min(config["reduce_blocks"], ceil_div(n, config["reduce_threads"])))


# ---- source ----------------------------------------------------------------

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _paste(text, seen):
    def sub(m):
        inc = m.group(1)
        if inc in seen:  # each header once, like #pragma once
            return f"// {inc} already pasted above"
        seen.add(inc)
        path = os.path.join(KERNEL_DIR, inc)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'#include "{inc}": no {path}')
        body = _paste(_read(path), seen)
        return f"// ---- begin {inc} ----\n{body}\n// ---- end {inc} ----"
    return _INCLUDE.sub(sub, text)


def kernel_names():
    """Stems of all kernels/*.cu files."""
    return sorted(f[:-3] for f in os.listdir(KERNEL_DIR) if f.endswith(".cu"))


def kernel_source(name, defines=None):
    """kernels/NAME.cu with the shared headers pasted in and `#define K V` lines
    (sorted by K) in front."""
    path = os.path.join(KERNEL_DIR, name + ".cu")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no kernel source {path} (have: {', '.join(kernel_names())})")
    return kernel_source_text(_read(path), defines)


def kernel_source_text(text, defines=None):
    """kernel_source for source text that is not a file in kernels/."""
    head = "".join(f"#define {k} {v}\n" for k, v in sorted((defines or {}).items()))
    return head + _paste(text, set())


# C parameter type -> numpy dtype of the array (pointers) or of the scalar.
_CTYPES = {"float": np.float32, "double": np.float64, "int": np.int32,
           "unsigned char": np.uint8, "unsigned int": np.uint32}
# __launch_bounds__ before or after `void` (CUDA's documented place is after)
_BOUNDS = r'(?:__launch_bounds__\s*\([^)]*\)\s*)?'
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+' + _BOUNDS +
                     r'void\s+' + _BOUNDS + r'(\w+)\s*\(([^)]*)\)')


class Param:
    __slots__ = ("ctype", "name", "pointer", "const", "dtype")

    def __init__(self, decl):
        toks = re.findall(r"\w+|\*", decl)
        if len(toks) < 2:
            raise ValueError(f"cannot parse kernel parameter {decl!r}")
        self.name = toks[-1]
        self.pointer = "*" in toks
        self.const = "const" in toks
        base = " ".join(t for t in toks[:-1] if t not in ("const", "*", "__restrict__"))
        if base not in _CTYPES or toks.count("*") > 1:
            raise ValueError(f"kernel parameter {decl.strip()!r}: unsupported type")
        self.ctype = ("const " if self.const else "") + base + ("*" if self.pointer else "")
        self.dtype = np.dtype(_CTYPES[base])

    def __repr__(self):
        return f"{self.ctype} {self.name}"


def _strip_comments(src):
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    return re.sub(r"//[^\n]*", "", src)


def kernel_signatures(source):
    """{kernel name: [Param, ...]} for every extern "C" __global__ function."""
    out = {}
    for m in _KERNEL.finditer(_strip_comments(source)):
        params = [p for p in m.group(2).split(",") if p.strip() and p.strip() != "void"]
        out[m.group(1)] = [Param(p) for p in params]
    return out


# ---- modules and kernels ---------------------------------------------------

_modules = {}
_kernels = {}
_emulator = None


def _key(defines):
    return frozenset((defines or {}).items())


def load_module(name, defines=None):
    """cupy.RawModule of kernels/NAME.cu, cached per (device, name, defines)."""
    import cupy
    key = (cupy.cuda.Device().id, name, _key(defines))
    mod = _modules.get(key)
    if mod is None:
        mod = cupy.RawModule(code=kernel_source(name, defines), options=NVRTC_OPTIONS)
        _modules[key] = mod
    return mod


class Kernel:
    """One kernel of one module: its parameters (parsed from the source) and the
    compiled function per device (fetched on the first GPU launch)."""

    def __init__(self, module, name, defines):
        self.module, self.name, self.defines = module, name, dict(defines or {})
        sigs = kernel_signatures(kernel_source(module, self.defines))
        if name not in sigs:
            raise KeyError(f"kernels/{module}.cu has no kernel {name!r} (has: {', '.join(sigs)})")
        self.params = sigs[name]
        self._fn = {}

    def function(self):
        import cupy
        dev = cupy.cuda.Device().id
        fn = self._fn.get(dev)
        if fn is None:
            fn = self._fn[dev] = load_module(self.module, self.defines).get_function(self.name)
        return fn

    def __repr__(self):
        return f"{self.name}({', '.join(map(repr, self.params))}) from kernels/{self.module}.cu"


def get_kernel(name, kernel_name, defines=None):
    key = (name, kernel_name, _key(defines))
    k = _kernels.get(key)
    if k is None:
        k = _kernels[key] = Kernel(name, kernel_name, defines)
    return k


def emulating():
    """Is the CPU emulation installed (NumPy launches go to it)?"""
    return _emulator is not None


def set_emulator(emulator):
    """Install (or with None remove) a CPU emulator: launches whose array
    arguments are NumPy arrays go to `emulator(kernel, grid, block, args)`."""
    global _emulator
    _emulator = emulator


def _dim3(d):
    d = (d,) if np.isscalar(d) else tuple(d)
    if not 1 <= len(d) <= 3:
        raise ValueError(f"launch dimension {d!r}: give 1 to 3 sizes")
    return tuple(int(v) for v in d) + (1,) * (3 - len(d))


def check_args(kernel, args):
    """-> True if the arrays are NumPy (emulation), False if CuPy. Raises
    TypeError/ValueError naming the parameter on any mismatch."""
    params = kernel.params
    if len(args) != len(params):
        raise TypeError(f"{kernel.name}: {len(args)} arguments for {len(params)} parameters "
                        f"({', '.join(map(repr, params))})")
    host = None
    for p, a in zip(params, args):
        if p.pointer:
            if isinstance(a, np.ndarray):
                is_host = True
            elif is_gpu_array(a):
                is_host = False
            else:
                raise TypeError(f"{kernel.name}: parameter {p!r} needs an array, got {type(a).__name__}")
            if host is not None and is_host != host:
                raise TypeError(f"{kernel.name}: NumPy and CuPy arrays mixed (parameter {p!r})")
            host = is_host
            if a.dtype != p.dtype:
                raise TypeError(f"{kernel.name}: parameter {p!r} needs {p.dtype}, got {a.dtype}")
            if not a.flags.c_contiguous:
                raise ValueError(f"{kernel.name}: parameter {p!r} is not C-contiguous "
                                 f"(shape {a.shape}, strides {a.strides})")
        elif type(a) is not p.dtype.type:
            raise TypeError(f"{kernel.name}: parameter {p!r} needs numpy.{p.dtype.name} "
                            f"(use i32()/f32()), got {type(a).__name__} {a!r}")
    return bool(host)


class CaptureError(RuntimeError):
    """Something that CUDA-graph capture refuses, met inside a captured region."""


def capture(fn, xp):
    """fn()'s launches recorded as a graph (nothing runs) -> an object whose
    .launch() replays them on the current stream. CuPy: stream capture on a
    side stream in global mode (so a stray cudaMalloc or synchronous copy
    fails the capture rather than baking a pointer in); NumPy arrays: the
    installed emulator's capture mode (tests/emulation/capture.py), which also
    refuses what the GPU would. Raises on any failure, the capture ended."""
    if xp is np:
        if _emulator is None or not hasattr(_emulator, "capture"):
            raise CaptureError("capture of NumPy arrays needs the kernel emulator installed")
        return _emulator.capture(fn)
    import cupy
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture(cupy.cuda.runtime.streamCaptureModeGlobal)
        try:
            fn()
        except BaseException:
            try:
                stream.end_capture()
            except Exception:
                pass  # the capture was invalidated by what failed: that error is the news
            raise
        return stream.end_capture()


def launch(kernel, grid, block, args):
    """Check `args` against `kernel` (from get_kernel), then launch on the current
    stream, or in the emulator for NumPy arrays. A grid with a zero extent is an
    empty launch and does nothing."""
    grid, block = _dim3(grid), _dim3(block)
    host = check_args(kernel, args)
    if min(block) < 1:
        raise ValueError(f"{kernel.name}: block {block}")
    if host:
        if _emulator is None:
            raise TypeError(f"{kernel.name}: NumPy arrays given to a GPU kernel "
                            "(use the _cpu function, or install an emulator)")
        _emulator(kernel, grid, block, tuple(args))  # it skips empty grids itself
    elif min(grid) > 0:
        kernel.function()(grid, block, tuple(args))
