"""The emulator's capture mode: CUDA-graph stream capture on the CPU (DESIGN.md §6, §7).

    graph = cpstyle.cuda.capture(engine.iteration, np)   # emulator installed
    graph.launch()                                       # replays the recording

During capture nothing runs, as on the GPU: each cpstyle.cuda.launch is checked
and recorded (kernel, grid, block, the argument arrays themselves and the scalar
values); launch() re-runs the recording through the emulator. So a kernel
argument computed on the host at capture time is frozen into every replay, as
it would be on the GPU, and a test comparing replayed with uncaptured runs sees it.

What real capture refuses, or silently gets wrong, is refused here (CaptureError)
inside the captured region:
- allocation through NumPy (empty/zeros/ones/full/..._like/array/copy, and an
  asarray/ascontiguousarray that copies): CuPy's pool would hand out a cached
  block without complaint and the graph would keep a pointer to freed memory;
- matmul/dot/einsum through NumPy: CuPy's cuBLAS wrappers raise in capture (cupy #6290);
- host reads through cpstyle.backend.to_host (a synchronous device->host copy);
- any write to a buffer that is not a kernel launch (`dh += df`, `q[...] = g`,
  `a.fill(0)`): on the GPU those are CuPy elementwise kernels outside our
  recording; here every array reachable from the captured object (the engine,
  its model, optimiser, targets, ...) is read-only during capture;
- a launch argument that is not (a view of) one of those arrays: something
  made inside the capture (by `a + b`, `a.copy()`, ...).
Those arrays are also poisoned (NaN, or a bit pattern for integers) during the
capture and restored after, so a host read that escapes the checks (`float(a)`,
`a.item()`) reads garbage, not the last iteration's value, and the replay shows it.
"""
import contextlib

import numpy as np

from cpstyle import backend, cuda
from cpstyle.cuda import CaptureError

_ALLOCATORS = ("empty", "zeros", "ones", "full", "empty_like", "zeros_like", "ones_like",
               "full_like", "array", "copy", "concatenate", "stack", "matmul", "dot", "einsum",
               "tensordot", "inner", "outer", "vdot")
_MAYBE_COPY = ("asarray", "ascontiguousarray", "asanyarray")
_POISON = {"f": np.nan, "i": -0x5A5A5A5A, "u": 0xA5, "b": True}


def reachable_arrays(root, depth=6):
    """Every ndarray reachable from root (its attributes, or what it closes over
    if it is a closure; then cpstyle objects' attributes, lists, tuples and
    dicts, namedtuples included)."""
    seen, out = set(), []

    def walk(o, d):
        if id(o) in seen or d > depth:
            return
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            out.append(o)
        elif isinstance(o, (list, tuple, set, frozenset)):
            for v in o:
                walk(v, d + 1)
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, d + 1)
        elif d == 0 and callable(o) and getattr(o, "__closure__", None):
            for cell in o.__closure__:  # a closure captured: what it closes over
                walk(cell.cell_contents, d + 1)
        elif (d == 0 or type(o).__module__.startswith("cpstyle")) and hasattr(o, "__dict__"):
            for v in vars(o).values():
                walk(v, d + 1)
    walk(root, 0)
    return out


def owner(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _refuse(name):
    def refused(*args, **kwargs):
        raise CaptureError(f"numpy.{name} inside a captured region (an allocation, or "
                           f"cuBLAS on the GPU): use a kernel on a preallocated buffer")
    return refused


def _no_copy(name, original):
    def checked(a, *args, **kwargs):
        out = original(a, *args, **kwargs)
        if out is not a:
            raise CaptureError(f"numpy.{name} made a new array inside a captured region")
        return out
    return checked


def _refused_to_host(a):
    from cpstyle.cuda import CaptureError  # runs as to_host's code, in backend's globals
    raise CaptureError("to_host inside a captured region: a synchronous device->host copy")


class Recording:
    """What a capture recorded; launch() replays it through the emulator."""

    def __init__(self, emulator, launches):
        self.emulator, self.launches = emulator, launches
        self.replays = 0

    def launch(self):
        for kernel, grid, block, args in self.launches:
            self.emulator.launch(kernel, grid, block, args)
        self.replays += 1


class Capture:
    """One capture in progress: Emulator.launch hands its launches to record()."""

    def __init__(self, root):
        self.arrays = reachable_arrays(root)
        self.owners = {id(owner(a)): owner(a) for a in self.arrays}
        self.launches = []

    def record(self, kernel, grid, block, args):
        cuda.check_args(kernel, args)
        for a, p in zip(args, kernel.params):
            if p.pointer and id(owner(a)) not in self.owners:
                raise CaptureError(f"{kernel.name}: argument {p!r} is not one of the captured "
                                   f"object's buffers (an array made inside the capture?)")
        self.launches.append((kernel, cuda._dim3(grid), cuda._dim3(block), tuple(args)))

    @contextlib.contextmanager
    def refusing(self):
        """Poisoned, read-only buffers and NumPy's allocators refused, for the block."""
        poisoned = {k: o for k, o in self.owners.items() if o.flags.writeable}
        saved = {k: o.copy() for k, o in poisoned.items()}
        for o in poisoned.values():
            o[...] = np.array(_POISON[o.dtype.kind]).astype(o.dtype)
        writeable = [(a, a.flags.writeable) for a in list(self.owners.values()) + self.arrays]
        for a, _ in writeable:
            a.flags.writeable = False
        patched = [(np, n, getattr(np, n)) for n in _ALLOCATORS + _MAYBE_COPY]
        for mod, n, orig in patched:
            setattr(mod, n, _no_copy(n, orig) if n in _MAYBE_COPY else _refuse(n))
        # to_host's code swapped, so every name bound to it refuses (from-imports too)
        host_code = backend.to_host.__code__
        backend.to_host.__code__ = _refused_to_host.__code__
        try:
            yield
        except ValueError as e:
            if "read-only" in str(e):
                raise CaptureError(f"a write to a device buffer that is not a kernel launch "
                                   f"(an in-place NumPy op, on the GPU a CuPy kernel outside "
                                   f"the graph): {e}") from e
            raise
        finally:
            backend.to_host.__code__ = host_code
            for mod, n, orig in patched:
                setattr(mod, n, orig)
            for a, w in writeable:  # owners first: a view can be writeable only if its base is
                a.flags.writeable = w
            for k, o in poisoned.items():
                o[...] = saved[k]
            for _, _, _, args in self.launches:  # views made during the capture: read-only
                for a in args:
                    if isinstance(a, np.ndarray) and not a.flags.writeable:
                        a.flags.writeable = True


def capture(emulator, fn):
    """emulator.capture(fn): record fn()'s launches -> Recording (nothing runs)."""
    cap = Capture(getattr(fn, "__self__", fn))
    if emulator.capturing is not None:
        raise CaptureError("a capture inside a capture")
    emulator.capturing = cap
    try:
        with cap.refusing():
            fn()
    finally:
        emulator.capturing = None
    return Recording(emulator, cap.launches)
