"""Threads and reused buffers for the NumPy backend's memory-bound steps.

The GEMMs run on every core inside BLAS; the steps between them (im2col, col2im,
bias + ReLU, the ReLU mask, pools) are plain NumPy copies and ufuncs, which
release the GIL, so they are split over output rows and run on a small thread
pool. `in_row_blocks` further cuts each thread's rows into blocks of about one
core's L2 cache, so several passes over a block (compare, select, sum) read it
from cache, not memory. On CuPy every helper is one call over all rows.
Tests: tests/test_parallel.py (and every op's tests, which cross the splits)."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK_BYTES = 1 << 20  # one core's L2 on the machines we measure (AMD EPYC: 1 MB)

_scratch = threading.local()
_pool = None
_pool_pid = None  # a forked child has the pool object but none of its threads


def scratch(xp, name, shape, dtype):
    """A reused buffer for NumPy temporaries (im2col columns): a fresh 100+ MB
    array each call costs page faults that take as long as filling it. Valid
    until the next call with the same name on this thread. CuPy has its pool."""
    if xp is not np:
        return xp.empty(shape, dtype=dtype)
    size = int(np.prod(shape))
    buf = getattr(_scratch, name, None)
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = np.empty(size, dtype=dtype)
        setattr(_scratch, name, buf)
    return buf[:size].reshape(shape)


def workers():
    """Threads for the steps between GEMMs (and the GEMMs' row split, ops/blas.py):
    CPSTYLE_THREADS if set (a batch worker's share of the cores, cpstyle/batch.py),
    else every core, at most 8."""
    n = os.environ.get("CPSTYLE_THREADS", "")
    if n.isdigit() and int(n) > 0:
        return int(n)
    return min(os.cpu_count() or 1, 8)


def in_row_chunks(fn, rows, xp):
    """fn(lo, hi) over [0, rows) in one chunk per core. NumPy releases the GIL in
    copies and ufuncs, so the memory-bound steps around the GEMMs (which BLAS
    already spreads over the cores) use every core too: im2col takes half the
    time on 2 cores. CuPy: one call."""
    global _pool, _pool_pid
    k = workers()
    if xp is not np or k == 1 or rows < 2 * k:
        fn(0, rows)
        return
    if _pool is None or _pool_pid != os.getpid():
        _pool = ThreadPoolExecutor(max_workers=k - 1, thread_name_prefix="cpstyle")
        _pool_pid = os.getpid()
    cuts = [rows * i // k for i in range(k + 1)]
    # the calling thread takes the first chunk itself: one hand-off fewer
    futures = [_pool.submit(fn, lo, hi) for lo, hi in zip(cuts[1:], cuts[2:])]
    try:
        fn(cuts[0], cuts[1])
    finally:
        for f in futures:
            f.result()


def in_row_blocks(fn, rows, row_bytes, xp, block_bytes=None):
    """fn(lo, hi) over [0, rows): one chunk per core (in_row_chunks), each cut
    into blocks of about block_bytes (BLOCK_BYTES) given the bytes one row
    touches. CuPy: one call."""
    if xp is not np:
        fn(0, rows)
        return
    step = max(1, (BLOCK_BYTES if block_bytes is None else block_bytes) // max(1, row_bytes))

    def chunk(lo, hi):
        for a in range(lo, hi, step):
            fn(a, min(a + step, hi))

    in_row_chunks(chunk, rows, xp)


class Workspace:
    """Arrays kept from one call to the next, by key: a model's activations and
    gradients are the same shapes every iteration, and a fresh 64 MB NumPy
    array costs page faults (the kernel zeroes every page) that took 0.4 s of a
    2.7 s iteration at 512x512. An array from get() is valid until the next
    get() with its key, so one workspace serves one evaluation at a time.
    Each key keeps one flat buffer as large as its largest request and get()
    hands out a C-contiguous view of its start: one key serves arrays of
    several shapes (the backward's two alternating gradient buffers; the bands
    of cpstyle/banded.py, whose first and last windows are shorter).
    On CuPy get() returns None and the op allocates (the memory pool reuses)."""

    def __init__(self):
        self._flat = {}

    def get(self, xp, key, shape, dtype):
        if xp is not np:
            return None
        n = int(np.prod(shape))
        buf = self._flat.get(key)
        if buf is None or buf.dtype != dtype or buf.size < n:
            self._flat.pop(key, None)  # the old buffer goes before the new one comes
            buf = self._flat[key] = np.empty(n, dtype=dtype)
        return buf[:n].reshape(shape)

    def nbytes(self):
        return sum(a.nbytes for a in self._flat.values())


def get(workspace, xp, key, shape, dtype):
    """workspace.get(...), or None without a workspace (the op allocates)."""
    return None if workspace is None else workspace.get(xp, key, shape, dtype)
