"""C = A·B + beta·C on the NumPy backend, straight into NumPy's own OpenBLAS.

NumPy's matmul has no beta: a sum of GEMMs (the conv's three row-shifted
products, ops/conv.py) would need a temporary and an add pass per term. BLAS
accumulates in the pass it makes over C anyway. NumPy's wheels ship OpenBLAS as
a shared library with 64-bit integer symbols (scipy_cblas_sgemm64_ since NumPy
2.0, cblas_sgemm64_ before); this module finds the copy NumPy has loaded (the
same library, so the same threads and settings), checks it on a small product
against np.matmul, and exposes `gemm`. Where there is no such library (NumPy
on MKL or Accelerate, not Linux) or the check fails, `available()` is False and
the callers keep their one-GEMM lowerings. CPSTYLE_BLAS=numpy switches it off.
Tests: tests/test_blas.py."""
import contextlib
import ctypes
import functools
import os
import threading

import numpy as np

from .parallel import in_row_chunks

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
_SYMBOLS = ("scipy_cblas_{}gemm64_", "cblas_{}gemm64_")  # ILP64 names only: int64 sizes


def _loaded_openblas():
    """Paths of the OpenBLAS libraries in this process (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return []
    # NumPy's own copy first (a wheel's numpy.libs/), should SciPy or PyTorch
    # have loaded another
    return sorted((p for p in paths if p.startswith("/")), key=lambda p: ("numpy" not in p, p))


def _bind(fn, real):
    i, i64, p = ctypes.c_int, ctypes.c_int64, ctypes.c_void_p
    fn.argtypes = [i, i, i, i64, i64, i64, real, p, i64, p, i64, real, p, i64]
    fn.restype = None
    return fn


@functools.lru_cache(maxsize=None)
def _library():
    """({dtype: bound xGEMM}, (get_num_threads, set_num_threads) or None); empty
    when there is no GEMM we can trust."""
    if os.environ.get("CPSTYLE_BLAS", "").lower() == "numpy":
        return {}, None
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SYMBOLS:
            try:
                found = {np.dtype(np.float32): _bind(getattr(lib, name.format("s")), ctypes.c_float),
                         np.dtype(np.float64): _bind(getattr(lib, name.format("d")), ctypes.c_double)}
            except AttributeError:
                continue
            if all(_agrees(fn, dt) for dt, fn in found.items()):
                return found, _thread_functions(lib, name.split("cblas")[0])
    return {}, None


def _thread_functions(lib, prefix):
    try:
        get = getattr(lib, f"{prefix}openblas_get_num_threads64_")
        set_ = getattr(lib, f"{prefix}openblas_set_num_threads64_")
    except AttributeError:
        return None
    get.argtypes, get.restype = [], ctypes.c_int
    set_.argtypes, set_.restype = [ctypes.c_int], None
    return get, set_


def _functions():
    return _library()[0]


def _agrees(fn, dtype):
    """A 5x7x3 product with beta=1 into a strided C, against NumPy."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 3)).astype(dtype), rng.standard_normal((3, 7)).astype(dtype)
    c0 = rng.standard_normal((5, 9)).astype(dtype)
    c = c0.copy()
    _call(fn, a, b, c[:, 1:8], 1.0)
    want = c0.copy()
    want[:, 1:8] += a @ b
    return np.allclose(c, want, rtol=1e-5, atol=1e-5)


def available(dtype=np.float32):
    return np.dtype(dtype) in _functions()


_count_lock = threading.Lock()
_inside = 0       # single_threaded blocks open now, in any thread
_restore = None   # the thread count to put back when the last one closes


@contextlib.contextmanager
def single_threaded():
    """OpenBLAS on one thread inside the block, for GEMMs that our own threads
    split (in_rows). OpenBLAS's count is process-wide (its
    openblas_set_num_threads_local is not thread-local in NumPy's build: a
    pool thread's call slowed the main thread's GEMMs 2x), so it is set here,
    on the calling thread, before the pool starts. Blocks may overlap (two
    objectives evaluated in two threads): the first in sets 1, the last out
    restores the count the first found."""
    global _inside, _restore
    threads = _library()[1]
    if threads is None:
        yield
        return
    get, set_ = threads
    with _count_lock:
        if _inside == 0:
            _restore = get()
            set_(1)
        _inside += 1
    try:
        yield
    finally:
        with _count_lock:
            _inside -= 1
            if _inside == 0:
                set_(_restore)


def in_rows(fn, rows):
    """fn(lo, hi) over [0, rows) in one chunk per core (parallel.in_row_chunks),
    each calling single-threaded BLAS: for thin products (64 to 512 columns)
    our split beats OpenBLAS's own threads (see the callers)."""
    with single_threaded():
        in_row_chunks(fn, rows, np)


def _rows(m):
    """Leading dimension of a 2-D array whose rows may be strided (a slice of a
    wider one) but whose columns are contiguous; overlapping rows are refused."""
    size = m.itemsize
    if m.ndim != 2 or (m.shape[1] > 1 and m.strides[1] != size):
        raise ValueError(f"blas.gemm needs contiguous columns, got strides {m.strides}")
    if m.shape[0] == 1:
        return max(m.shape[1], 1)
    if m.strides[0] % size or m.strides[0] < m.shape[1] * size:
        raise ValueError(f"blas.gemm needs rows apart by at least their length, "
                         f"got strides {m.strides} for shape {m.shape}")
    return max(m.strides[0] // size, 1)


def _operand(m):
    """(transpose flag, leading dimension) for a 2-D operand with contiguous
    rows, or a transposed view of one (contiguous columns: passed as TRANS)."""
    if m.ndim == 2 and m.shape[0] > 1 and m.shape[1] > 1 and m.strides[0] == m.itemsize:
        return TRANS, _rows(m.T)
    return NO_TRANS, _rows(m)


def _call(fn, a, b, c, beta):
    (m, k), n = a.shape, b.shape[1]
    ta, lda = _operand(a)
    tb, ldb = _operand(b)
    fn(ROW_MAJOR, ta, tb, m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, beta,
       c.ctypes.data, _rows(c))


def gemm(a, b, c, beta=0.0):
    """c[...] = a @ b + beta * c, in place; a (M, K), b (K, N), c (M, N), one
    dtype (float32 or float64), each with contiguous rows (row strides free);
    a and b may also be transposed views of such arrays."""
    if not (a.dtype == b.dtype == c.dtype) or a.shape[1] != b.shape[0] \
            or c.shape != (a.shape[0], b.shape[1]):
        raise ValueError(f"blas.gemm: {a.shape} {a.dtype} x {b.shape} {b.dtype} "
                         f"-> {c.shape} {c.dtype} do not fit")
    if a.shape[0] == 0 or b.shape[1] == 0:
        return c
    if a.shape[1] == 0:
        c *= beta
        return c
    _call(_functions()[a.dtype], a, b, c, beta)
    return c


def matmul(a, b, out):
    """out[...] = a @ b for 2-D NumPy arrays, its rows split over our threads,
    each a single-threaded GEMM (in_rows), so OpenBLAS's own worker threads are
    never woken: idle, they spin for OPENBLAS_THREAD_TIMEOUT after each GEMM
    (about 0.1 s unless cpstyle was imported before NumPy) and took the cores
    from the memory-bound steps between GEMMs. np.matmul where there is no
    OpenBLAS we can call."""
    if not available(a.dtype) or a.dtype != b.dtype or out.dtype != a.dtype:
        return np.matmul(a, b, out=out)
    if a.shape[0] < 64:  # too few rows to split: one call, still single-threaded
        with single_threaded():
            return gemm(a, b, out)
    in_rows(lambda lo, hi: gemm(a[lo:hi], b, out[lo:hi]), a.shape[0])
    return out
