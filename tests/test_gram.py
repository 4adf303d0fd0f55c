import numpy as np
import pytest

from cpstyle.ops.gram import gram_backward_cpu, gram_forward_cpu
from gradcheck import assert_close, directional_check


@pytest.mark.parametrize("norm", [1.0, 1.0 / 35])
def test_gram_forward_and_gradcheck(norm, rng):
    x = rng.standard_normal((2, 5, 7, 3))
    g, cache = gram_forward_cpu(x, norm)
    f = x.reshape(2, 35, 3)
    assert_close(g, np.einsum("npc,npd->ncd", f, f) * norm, 1e-12, 1e-12, "gram")
    r = rng.standard_normal(g.shape)  # not symmetric: checks the dG + dGᵀ form
    dx = gram_backward_cpu(r, cache)
    err = directional_check(lambda z: float(np.sum(gram_forward_cpu(z, norm)[0] * r)), dx, x, rng)
    assert err < 1e-6, f"relative error {err:.3g}"


@pytest.mark.parametrize("split", [True, False])
def test_gram_forward_split_over_threads(split, rng, monkeypatch):
    """With NumPy's BLAS reachable, Fᵀ·F is summed from one SYRK per thread's
    rows; without, one matmul. Both are the Gram matrix (odd row count)."""
    from cpstyle.ops import blas
    if split and not blas.available(np.float64):
        pytest.skip("NumPy's BLAS is not reachable here (ops/blas.py)")
    if not split:
        monkeypatch.setattr(blas, "available", lambda dtype=None: False)
    x = rng.standard_normal((2, 37, 29, 6))
    g, _ = gram_forward_cpu(x)
    f = x.reshape(2, -1, 6)
    assert_close(g, np.einsum("npc,npd->ncd", f, f), 1e-12, 1e-12, "gram")


def test_gram_gpu_grids_fit_cuda_limits(monkeypatch):
    """At 4096² (HW = 16.8 M) the backward's pixel tiles go on grid x (y and z
    stop at 65535) and the forward's slices stay few; launches recorded, not run."""
    from cpstyle import cuda
    from cpstyle.ops import gram
    grids = []
    monkeypatch.setattr(cuda, "launch", lambda k, grid, block, args: grids.append(cuda._dim3(grid)))
    hw, c = 4096 * 4096, 64
    big = np.broadcast_to(np.float32(0), (hw, c))  # shapes only: no 4 GB
    gram.gram_backward_accumulate_gpu(big, big, np.zeros((c, c), np.float32))
    assert grids == [(hw // cuda.config["gram_tile"], 1, 1)]
    assert gram.gram_splits(hw, c) <= cuda.config["gram_blocks"] <= 65535


def test_gram_gemm_names_are_checked():
    from cpstyle.ops import gram
    x = np.zeros((1, 2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="unknown gram gemm 'cublas'"):
        gram.gram_forward_gpu(x, gemm="cublas")
    with pytest.raises(ValueError, match="unknown gram gemm"):
        gram.gram_backward_gpu(np.zeros((1, 4, 4), np.float32), (x.reshape(1, 6, 4), x.shape, 1.0),
                               gemm="")
