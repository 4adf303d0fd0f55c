"""cpstyle/optimizers.py and cpstyle/ops/optim.py: the reference optimisers
against textbook formulas, their device twins (run here on NumPy through the
kernel emulation) against the references on one gradient sequence, and the
effect that matters: L-BFGS lowers the objective more than gd per evaluation."""
import numpy as np
import pytest

import cpstyle
from cpstyle import VGG16
from cpstyle.ops.optim import (adam_update_cpu, descend_clip_cpu, dot64, lbfgs_direction_cpu,
                               lbfgs_pair_cpu)
from cpstyle.ops.update import update_cpu
from cpstyle.optimizers import (LBFGS, check_optimizer, make_device_optimizer, make_optimizer)
from cpstyle.vgg16 import random_params
from emulation.harness import Emulator
from gradcheck import assert_close
from test_vgg16 import SMALL


def dense_bfgs_inverse(pairs, gamma, n):
    """H from H0 = γI by the BFGS inverse update, pair by pair (oldest first):
    H ← (I − ρ s yᵀ) H (I − ρ y sᵀ) + ρ s sᵀ; ρ = 0 leaves H as it is."""
    h = gamma * np.eye(n)
    for s, y, rho in pairs:
        s, y = s.reshape(-1).astype(np.float64), y.reshape(-1).astype(np.float64)
        v = np.eye(n) - rho * np.outer(y, s)
        h = v.T @ h @ v + rho * np.outer(s, s)
    return h


def test_two_loop_recursion_is_the_bfgs_inverse_update(rng):
    n = 12
    g = rng.standard_normal((1, 2, 2, 3))
    a = rng.standard_normal((n, n))
    hess = a @ a.T + n * np.eye(n)  # a convex quadratic: y = Hess·s, sᵀy > 0
    pairs = []
    for k in range(4):
        s = rng.standard_normal(g.shape)
        y = (hess @ s.reshape(-1)).reshape(g.shape)
        rho = 0.0 if k == 2 else 1.0 / dot64(s, y)  # one rejected pair: adds nothing
        pairs.append((s, y, rho))
    r = lbfgs_direction_cpu(g, pairs, 0.37)
    expect = dense_bfgs_inverse(pairs, 0.37, n) @ g.reshape(-1)
    np.testing.assert_allclose(r.reshape(-1), expect, rtol=1e-10, atol=1e-12)
    without = [p for k, p in enumerate(pairs) if k != 2]
    np.testing.assert_allclose(r, lbfgs_direction_cpu(g, without, 0.37), rtol=1e-12)
    assert not np.allclose(r, lbfgs_direction_cpu(g, pairs[:2], 0.37))


def test_lbfgs_pair_curvature_condition(rng):
    s = rng.standard_normal(10)
    assert lbfgs_pair_cpu(s, 2 * s) == pytest.approx((1 / (2 * s @ s), 0.5))
    assert lbfgs_pair_cpu(s, -s) == (0.0, None)
    assert lbfgs_pair_cpu(s, np.zeros(10)) == (0.0, None)


def test_adam_matches_the_textbook_in_float64(rng):
    x = rng.uniform(50, 200, 20)
    g = [rng.standard_normal(20) for _ in range(5)]
    m = v = np.zeros(20)
    xr, mr, vr = x.copy(), np.zeros(20), np.zeros(20)
    for t, gt in enumerate(g, 1):
        x, m, v = adam_update_cpu(x, m, v, gt, 10.0, t)
        mr = 0.9 * mr + 0.1 * gt
        vr = 0.999 * vr + 0.001 * gt ** 2
        xr = np.clip(xr - 10.0 * (mr / (1 - 0.9 ** t)) / (np.sqrt(vr / (1 - 0.999 ** t)) + 1e-8),
                     0, 255)
    np.testing.assert_allclose(x, xr, rtol=1e-12)
    # the first step moves every pixel by lr (sign of g): Adam's scale
    x1, _, _ = adam_update_cpu(np.full(4, 100.0), np.zeros(4), np.zeros(4),
                               np.array([3.0, -1e-3, 7.0, -2.0]), 10.0, 1)
    np.testing.assert_allclose(x1, [90, 110, 90, 110], rtol=1e-6)


def test_lbfgs_first_step_is_the_gd_step(rng):
    x = rng.uniform(0, 255, (1, 5, 7, 3)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    opt = make_optimizer(check_optimizer("lbfgs", 10.0))
    assert_close(opt.step(x, g), update_cpu(x, g, 10.0), atol=1e-4, rtol=0, what="first step")
    assert descend_clip_cpu(np.array([1.0, 250.0]), np.array([5.0, -9.0])).tolist() == [0, 255]


def test_lbfgs_history_is_a_ring(rng):
    opt = LBFGS(check_optimizer("lbfgs", 10.0, lbfgs_history=3))
    x = rng.uniform(0, 255, 30)
    for _ in range(6):
        x = opt.step(x, rng.standard_normal(30))
    assert len(opt.pairs) == 3


@pytest.mark.parametrize("kw, match", [
    (dict(name="sgd"), "unknown optimizer"),
    (dict(name="gd", learning_rate=1.0), "learning_rate"),
    (dict(name="adam", lbfgs_history=5), "lbfgs_history"),
    (dict(name="adam", learning_rate=0), "> 0"),
    (dict(name="lbfgs", lbfgs_history=0), ">= 1"),
    (dict(name="lbfgs", lbfgs_history=2.5), "whole number"),
])
def test_check_optimizer_refuses(kw, match):
    with pytest.raises(ValueError, match=match):
        check_optimizer(**kw)


# ---- the device optimisers (emulated) against the references -------------------

def run_both(name, xp, rng, steps=6, shape=(1, 9, 7, 3), history=2, to_xp=np.asarray,
             to_host=np.asarray):
    """One gradient sequence g_k = A·(x_k − c) + noise (so pairs have curvature),
    evaluated at the DEVICE iterate; the reference steps from the same x_k with
    the same g_k and its next x is compared with the device's."""
    kw = {"adam": dict(learning_rate=3.0), "lbfgs": dict(lbfgs_history=history)}.get(name, {})
    settings = check_optimizer(name, 10.0, **kw)
    ref = make_optimizer(settings)
    x = rng.uniform(0, 255, shape).astype(np.float32)
    dev_x = to_xp(x.copy())
    dev = make_device_optimizer(settings, dev_x)
    c = rng.uniform(0, 255, shape).astype(np.float32)
    diag = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    worst = 0.0
    for k in range(steps):
        xk = to_host(dev_x).copy()
        g = (diag * (xk - c) + rng.standard_normal(shape)).astype(np.float32)
        nxt = ref.step(xk, g)
        dev.step(dev_x, to_xp(g))
        got = to_host(dev_x)
        assert_close(got, nxt, atol=2e-3, rtol=0, what=f"{name} step {k}")
        worst = max(worst, float(np.abs(got - xk).max()))
    assert worst > 1.0, "the steps did not move x"
    return dev


@pytest.mark.parametrize("name", ["gd", "adam", "lbfgs"])
def test_device_optimizers_match_reference_emulated(name, rng):
    with Emulator().installed():
        dev = run_both(name, np, rng)
        if name == "lbfgs":  # 5 pairs through a ring of 2: wrapped twice
            assert list(dev.ring) == [6, 1]  # [steps, head]: 5 pairs, head 5 % 2
            dev.reset()
            assert not dev.ring.any() and not dev.scalars.any() and not dev.S.any()


# ---- the effect: L-BFGS against gd, same number of evaluations -------------------

def test_lbfgs_reaches_lower_objective_than_gd_in_as_many_evaluations():
    """A fixed small case (random VGG-like net, 23x19 images, 15 evaluations
    each, one per iteration): Φ at the end, L-BFGS below gd; Adam in between
    is not claimed."""
    rng = np.random.default_rng(7)
    model = VGG16(random_params(SMALL, np.random.default_rng(3)), device="cpu")
    content = rng.uniform(0, 255, (23, 19, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (21, 20, 3)).astype(np.float32)
    final = {}
    for name in ("gd", "lbfgs"):
        seen = []
        cpstyle.style_transfer(content, style, content_layer_ids=[4, 9],
                               style_layer_ids=[0, 3, 7, 12], num_iterations=15, seed=1,
                               model=model, optimizer=name, callback=seen.append,
                               callback_every=15)
        assert [p.iteration for p in seen] == [0, 15]
        assert seen[0].objective == seen[0].objective  # not NaN
        final[name] = seen[-1].objective
        start = seen[0].objective
    assert final["lbfgs"] < final["gd"] < start, (start, final)
