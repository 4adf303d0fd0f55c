import os
import subprocess
import sys

import numpy as np
import pytest

from cpstyle.ops import blas

pytestmark = pytest.mark.skipif(not blas.available(np.float32),
                                reason="NumPy's BLAS is not reachable here (ops/blas.py)")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
def test_gemm_matches_numpy_with_strided_rows(dtype, beta, rng):
    # every operand a slice of a wider array: the leading dimensions are not K or N
    a = rng.standard_normal((33, 20)).astype(dtype)[:, 3:10]   # (33, 7), lda 20
    b = rng.standard_normal((7, 40)).astype(dtype)[:, 5:16]    # (7, 11), ldb 40
    big = rng.standard_normal((33, 19)).astype(dtype)
    c0 = big.copy()
    blas.gemm(a, b, big[:, 4:15], beta)
    want = c0.copy()
    want[:, 4:15] = a.astype(np.float64) @ b + beta * c0[:, 4:15]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(big, want, rtol=tol, atol=tol)  # columns outside untouched too


def test_gemm_empty_and_single_row(rng):
    a, b = rng.standard_normal((1, 4)), rng.standard_normal((4, 3))
    c = np.zeros((1, 3))
    blas.gemm(a, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-12)
    c = np.full((2, 3), 2.0)
    blas.gemm(np.ones((2, 0)), np.ones((0, 3)), c, beta=0.5)  # K = 0: c = beta·c
    assert np.all(c == 1.0)


@pytest.mark.parametrize("a, b, c, match", [
    (np.ones((3, 4)), np.ones((5, 2)), np.ones((3, 2)), "do not fit"),
    (np.ones((3, 4)), np.ones((4, 2)), np.ones((3, 3)), "do not fit"),
    (np.ones((3, 4), np.float32), np.ones((4, 2)), np.ones((3, 2)), "do not fit"),
    (np.ones((3, 4))[:, ::2], np.ones((2, 2)), np.ones((3, 2)), "contiguous columns"),
    (np.lib.stride_tricks.as_strided(np.ones(12), (5, 4), (8, 8)), np.ones((4, 2)),
     np.ones((5, 2)), "rows apart"),
])
def test_gemm_refuses_what_blas_cannot_take(a, b, c, match):
    with pytest.raises(ValueError, match=match):
        blas.gemm(a, b, c)


def test_single_threaded_sets_and_restores_the_count():
    threads = blas._library()[1]
    if threads is None:
        pytest.skip("this OpenBLAS has no thread-count functions")
    get, _ = threads
    before = get()
    with blas.single_threaded():
        assert get() == 1
    assert get() == before
    with pytest.raises(RuntimeError):
        with blas.single_threaded():
            raise RuntimeError("inside")
    assert get() == before


def test_in_rows_covers_every_row_once():
    seen = np.zeros(101, int)

    def fn(lo, hi):
        seen[lo:hi] += 1

    blas.in_rows(fn, 101)
    assert np.all(seen == 1)


def test_switched_off_by_the_environment():
    code = "import numpy, cpstyle.ops.blas as b; print(b.available(numpy.float32))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "CPSTYLE_BLAS": "numpy"}).stdout
    assert out.strip() == "False"


def test_single_threaded_blocks_may_overlap_across_threads():
    """Two evaluations in two threads, the first in leaving first: the count
    stays 1 while the other is still inside, and comes back to what it was
    when both are out."""
    import threading
    threads = blas._library()[1]
    if threads is None:
        pytest.skip("this OpenBLAS has no thread-count functions")
    get, _ = threads
    before = get()
    a_in, main_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with blas.single_threaded():
            a_in.set()
            main_in.wait(10)
        a_out.set()

    t = threading.Thread(target=a)
    t.start()
    a_in.wait(10)
    with blas.single_threaded():
        main_in.set()
        a_out.wait(10)
        inside = get()
    t.join(10)
    assert inside == 1
    assert get() == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 63, 64, 301])
def test_matmul_matches_numpy_with_transposed_operands(dtype, rows, rng):
    a = rng.standard_normal((rows, 37)).astype(dtype)
    b = rng.standard_normal((37, 29)).astype(dtype)
    at = np.ascontiguousarray(a.T)   # (37, rows): at.T is a transposed view
    bt = np.ascontiguousarray(b.T)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for x, y in ((a, b), (at.T, b), (a, bt.T), (at.T, bt.T)):
        out = np.full((rows, 29), np.nan, dtype)
        blas.matmul(x, y, out)
        np.testing.assert_allclose(out, a @ b, rtol=tol, atol=tol * 37)


def test_evaluation_never_calls_numpys_matmul(monkeypatch, rng):
    """Every GEMM of a NumPy evaluation runs single-threaded in our threads
    (blas.matmul, blas.gemm, blas.in_rows), one-GEMM conv forms included: NumPy's
    matmul would wake OpenBLAS's workers, which then spin after it (the import-
    order slowdown of issue 14)."""
    if not blas.available(np.float32):
        pytest.skip("no OpenBLAS to call")
    import cpstyle
    from cpstyle.ops import conv
    from cpstyle.vgg16 import random_params
    from test_vgg16 import SMALL
    model = cpstyle.VGG16(random_params(SMALL, np.random.default_rng(3)), device="cpu",
                          dtype=np.float32)
    c = rng.uniform(0, 255, (40, 36, 3)).astype(np.float32)
    obj = cpstyle.StyleObjective(c, c[::-1].copy(), [4], list(range(13)), 1.5, 10.0, 0.3,
                                 model=model)
    x = rng.uniform(0, 255, c.shape).astype(np.float32)
    want = obj(x)

    def refuse(*a, **k):
        raise AssertionError("np.matmul called inside an evaluation")

    for rows_form in (True, False):
        monkeypatch.setattr(conv, "ROWS_FORM", rows_form)
        with monkeypatch.context() as m:
            m.setattr(np, "matmul", refuse)
            got = obj(x)
        for k in want[0]:
            assert got[0][k] == pytest.approx(want[0][k], rel=1e-5)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4 * np.abs(want[1]).max())
