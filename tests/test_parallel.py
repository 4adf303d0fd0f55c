"""The row splitting of the NumPy backend (cpstyle/ops/parallel.py): every row
once, and ops that give the same result whatever the split. Small test shapes
fit one block on one thread, so here the block is one row and every split runs."""
import numpy as np
import pytest

from cpstyle.ops import parallel
from cpstyle.ops.conv import col2im_cpu, conv_backward_cpu, conv_forward_cpu
from cpstyle.ops.pool import maxpool_backward_cpu, maxpool_forward_cpu


@pytest.mark.parametrize("rows, row_bytes, block", [(1, 8, 8), (7, 8, 8), (40, 8, 24), (40, 100, 1 << 20),
                                                    (3, 8, 1)])
def test_in_row_blocks_covers_every_row_once(rows, row_bytes, block):
    seen = np.zeros(rows, int)
    sizes = []

    def fn(lo, hi):
        seen[lo:hi] += 1
        sizes.append(hi - lo)

    parallel.in_row_blocks(fn, rows, row_bytes, np, block_bytes=block)
    assert seen.tolist() == [1] * rows
    assert max(sizes) <= max(1, block // row_bytes)


@pytest.fixture
def one_row_blocks(monkeypatch):
    monkeypatch.setattr(parallel, "BLOCK_BYTES", 1)


def run_ops(rng):
    x = rng.standard_normal((2, 11, 9, 3)).astype(np.float32)
    x[0, 2:4, 2:4] = 0.5  # ties in the pools
    w = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    y, cache = conv_forward_cpu(x, w, b)
    dx = conv_backward_cpu(rng.standard_normal(y.shape).astype(np.float32), cache)
    w2 = rng.standard_normal((3, 3, 5, 4)).astype(np.float32)  # Cout <= Cin: the col2im form
    y2, _ = conv_forward_cpu(y, w2, b[:4])
    p, pc = maxpool_forward_cpu(y)
    dp = maxpool_backward_cpu(rng.standard_normal(p.shape).astype(np.float32), pc)
    c = col2im_cpu(rng.standard_normal((2 * 11 * 9, 27)).astype(np.float32), (2, 11, 9))
    return [y, dx, y2, p, pc[0], dp, c]


def test_ops_do_not_depend_on_the_split(one_row_blocks):
    small = run_ops(np.random.default_rng(3))
    parallel.BLOCK_BYTES = 1 << 30
    whole = run_ops(np.random.default_rng(3))
    for a, b in zip(small, whole):
        np.testing.assert_array_equal(a, b)


def test_workspace_reuses_arrays_by_key():
    ws = parallel.Workspace()
    a = ws.get(np, "y", (2, 3), np.float32)
    b = ws.get(np, "y", (2, 3), np.float32)
    assert b.shape == (2, 3) and np.shares_memory(a, b)
    # another shape of no more elements: a view of the same buffer, C-contiguous
    c = ws.get(np, "y", (5, 1), np.float32)
    assert c.flags.c_contiguous and np.shares_memory(a, c) and ws.nbytes() == 24
    d = ws.get(np, "y", (3, 3), np.float32)  # more: a new buffer, the old one dropped
    assert not np.shares_memory(a, d) and ws.nbytes() == 36
    assert ws.get(np, "y", (3, 2), np.float64).dtype == np.float64
    assert parallel.get(None, np, "y", (2, 3), np.float32) is None


def test_objective_results_survive_the_next_evaluation(rng):
    """The objective keeps its activations in a workspace between calls: what
    one call returns must not change when the next call reuses the arrays."""
    from cpstyle import StyleObjective, VGG16
    from cpstyle.vgg16 import random_params
    chans = [(3, 4), (4, 4), (4, 6), (6, 6), (6, 8)]
    model = VGG16(random_params(chans, rng), dtype=np.float32)
    content, style = rng.uniform(0, 255, (2, 17, 19, 3))
    obj = StyleObjective(content, style, content_layer_ids=[4], style_layer_ids=[0, 1, 3, 4],
                         model=model)
    x1, x2 = rng.uniform(0, 255, (2, 17, 19, 3))
    l1, g1 = obj(x1)
    kept = g1.copy()
    obj(x2)
    l1b, g1b = obj(x1)
    np.testing.assert_array_equal(g1, kept)
    np.testing.assert_array_equal(g1b, kept)
    assert l1b == l1
    assert obj.workspace.nbytes() > 0  # the arrays are kept


def test_in_row_chunks_in_a_forked_child():
    """A child forked after the pool started has the pool object but not its
    threads: it must make its own, not wait forever on the parent's."""
    import multiprocessing as mp
    import os

    from cpstyle.ops.parallel import in_row_chunks, workers
    if workers() == 1 or "fork" not in mp.get_all_start_methods():
        pytest.skip("needs two cores and fork")
    seen = np.zeros(40, int)
    in_row_chunks(lambda lo, hi: seen.__setitem__(slice(lo, hi), 1), 40, np)  # parent's pool
    pid = os.fork()
    if pid == 0:  # child: the exit code says whether every row was done
        done = np.zeros(40, int)
        in_row_chunks(lambda lo, hi: done.__setitem__(slice(lo, hi), 1), 40, np)
        os._exit(0 if done.all() else 1)
    deadline = __import__("time").monotonic() + 30
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            break
        if __import__("time").monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in in_row_chunks")
        __import__("time").sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert seen.all()
