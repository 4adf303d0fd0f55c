import numpy as np
import pytest

from cpstyle.ops.pool import maxpool_backward_cpu, maxpool_forward_cpu
from gradcheck import directional_check


@pytest.mark.parametrize("shape", [(1, 2, 2, 1), (1, 7, 5, 3), (2, 8, 9, 4), (1, 33, 3, 2), (1, 1, 4, 2)])
def test_maxpool_forward_matches_loops(shape, rng):
    x = rng.standard_normal(shape)
    y, (arg, _) = maxpool_forward_cpu(x)
    n, h, w, c = shape
    assert y.shape == (n, h // 2, w // 2, c)
    for idx in np.ndindex(*y.shape):
        b, i, j, k = idx
        win = x[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, k].ravel()
        assert y[idx] == win.max()
        assert arg[idx] == int(np.argmax(win))


def test_maxpool_ties_go_to_first_in_row_major_order():
    x = np.zeros((1, 2, 2, 1))
    x[0, 0, 1, 0] = x[0, 1, 0, 0] = 5.0  # slots 1 and 2 tie
    y, cache = maxpool_forward_cpu(x)
    assert cache[0][0, 0, 0, 0] == 1
    dx = maxpool_backward_cpu(np.ones_like(y), cache)
    assert dx[0, 0, 1, 0] == 1 and dx[0, 1, 0, 0] == 0


def test_maxpool_every_tie_pattern_takes_the_first_maximum():
    # all 3^4 windows with values in {0, 1, 2}: ties everywhere, as after a ReLU
    vals = np.array(np.meshgrid(*[[0.0, 1.0, 2.0]] * 4, indexing="ij")).reshape(4, -1).T
    x = np.zeros((1, 2, 2 * len(vals), 1))
    x[0, 0, 0::2, 0], x[0, 0, 1::2, 0] = vals[:, 0], vals[:, 1]  # slots 0, 1
    x[0, 1, 0::2, 0], x[0, 1, 1::2, 0] = vals[:, 2], vals[:, 3]  # slots 2, 3
    y, (arg, _) = maxpool_forward_cpu(x)
    assert np.array_equal(y[0, 0, :, 0], vals.max(axis=1))
    assert np.array_equal(arg[0, 0, :, 0], np.argmax(vals, axis=1))  # first maximal slot


@pytest.mark.parametrize("shape", [(1, 7, 5, 3), (2, 6, 9, 2)])
def test_maxpool_backward_gradcheck(shape, rng):
    x = rng.standard_normal(shape)
    y, cache = maxpool_forward_cpu(x)
    r = rng.standard_normal(y.shape)
    dx = maxpool_backward_cpu(r, cache)
    assert dx.shape == x.shape
    assert np.all(dx[:, 2 * (shape[1] // 2):] == 0) and np.all(dx[:, :, 2 * (shape[2] // 2):] == 0)
    err = directional_check(lambda z: float(np.sum(maxpool_forward_cpu(z)[0] * r)), dx, x, rng,
                            eps=1e-7)
    assert err < 1e-6, f"relative error {err:.3g}"


# ---- average pooling ----------------------------------------------------------

from cpstyle.ops.pool import avgpool_backward_cpu, avgpool_forward_cpu  # noqa: E402


@pytest.mark.parametrize("shape", [(1, 2, 2, 1), (1, 7, 5, 3), (2, 8, 9, 4), (1, 1, 4, 2)])
def test_avgpool_forward_matches_loops(shape, rng):
    x = rng.standard_normal(shape)
    y, cache = avgpool_forward_cpu(x)
    n, h, w, c = shape
    assert y.shape == (n, h // 2, w // 2, c) and cache == shape
    for idx in np.ndindex(*y.shape):
        b, i, j, k = idx
        assert y[idx] == pytest.approx(x[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, k].mean(), rel=1e-14)


@pytest.mark.parametrize("shape", [(1, 7, 5, 3), (2, 6, 9, 2), (1, 33, 3, 2)])
def test_avgpool_backward_gradcheck(shape, rng):
    x = rng.standard_normal(shape)
    y, cache = avgpool_forward_cpu(x)
    r = rng.standard_normal(y.shape)
    dx = avgpool_backward_cpu(r, cache)
    assert dx.shape == x.shape
    assert np.all(dx[:, 2 * (shape[1] // 2):] == 0) and np.all(dx[:, :, 2 * (shape[2] // 2):] == 0)
    err = directional_check(lambda z: float(np.sum(avgpool_forward_cpu(z)[0] * r)), dx, x, rng,
                            eps=1e-6)
    assert err < 1e-8, f"relative error {err:.3g}"


def test_avgpool_differs_from_maxpool(rng):
    x = rng.standard_normal((1, 4, 4, 2))
    assert not np.allclose(avgpool_forward_cpu(x)[0], maxpool_forward_cpu(x)[0])
