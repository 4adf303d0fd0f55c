"""The CPU memory model and preflight (cpstyle/memory.py): the estimate grows
with the pixels, a run that does not fit stops before the weights load with one
line, the largest size it names fits, and the model agrees with a measured peak
RSS at one small size (bench/memory.py in a subprocess)."""
import sys

import numpy as np
import pytest

import cpstyle
from cpstyle import banded, memory
from cpstyle.driver import check_arguments
from cpstyle.vgg16 import VGG16

QUALITY = dict(content_layer_ids=(8,), style_layer_ids=(0, 2, 4, 7, 10), optimizer="lbfgs")
TUTORIAL = dict(content_layer_ids=(4,), style_layer_ids=tuple(range(13)), optimizer="gd")


@pytest.mark.parametrize("kw", [QUALITY, TUTORIAL])
def test_estimate_grows_about_linearly_with_pixels(kw):
    est = {L: memory.estimate_cpu((L, L), [(L, L)], num_iterations=150, **kw)
           for L in (512, 1024, 2048, 4096)}
    per_px = {L: e / L ** 2 for L, e in est.items()}
    for a, b in ((512, 1024), (1024, 2048), (2048, 4096)):
        assert est[b] > est[a]
        # the fixed buffers (BLAS's, the Winograd form's and the Gram rows'
        # blocks per thread, style targets) fade: bytes per pixel settle
        assert 0.85 < per_px[b] / per_px[a] <= 1.0, per_px
    # DESIGN.md §9: ~1.2 kB/px kept for the backward alone; twice with the gradients
    assert 2000 < per_px[4096] < 5000, per_px


def test_estimate_counts_the_optimizer_and_layers():
    base = dict(content_hw=(256, 256), style_hws=[(256, 256)], num_iterations=50)
    gd = memory.estimate_cpu(**base, **TUTORIAL)
    lb = memory.estimate_cpu(**base, **dict(TUTORIAL, optimizer="lbfgs"))
    # L-BFGS keeps 10 pairs (s, y) of 3·P floats and x_prev, g_prev
    assert lb - gd >= 22 * 3 * 256 * 256 * 4
    shallow = memory.estimate_cpu(**base, content_layer_ids=(1,), style_layer_ids=(0, 1))
    assert shallow < gd


def test_multiscale_no_less_than_the_last_scale():
    one = memory.estimate_cpu((512, 512), [(512, 512)], **QUALITY)
    multi = memory.estimate_cpu((512, 512), [(512, 512)], scales=[(362, 362), (512, 512)],
                                **QUALITY)
    assert multi >= one


def test_available_cpu_reads_meminfo():
    free = memory.available_cpu()
    assert free is None or free > 0


def _plan(rng, hw=(300, 400), **kw):
    content = rng.uniform(0, 255, hw + (3,)).astype(np.float32)
    style = rng.uniform(0, 255, (200, 200, 3)).astype(np.float32)
    return content, style, check_arguments(content, style, **kw)


def test_largest_fitting_fits_and_ten_percent_more_does_not(rng):
    _, _, plan = _plan(rng, (3000, 4000), style_scale=1.0, **QUALITY)
    est = memory.plan_estimator(plan)
    budget = 2 * 10 ** 9
    fit = memory.largest_fitting(budget, est, plan.sizes[-1])
    assert fit is not None and 16 <= fit < 4000
    assert est(fit) <= budget
    assert est(fit + 1) > budget
    assert est(round(fit * 1.1)) > budget


def test_check_passes_or_names_the_largest_size(rng):
    _, _, plan = _plan(rng, (3000, 4000), **TUTORIAL)
    choice = memory.check_plan_cpu(plan, available=10 ** 12)
    assert choice.bands is None and choice.need > memory.weights_cpu() and choice.cost == 1.0
    with pytest.raises(memory.NotEnoughMemory) as e:
        memory.check_plan_cpu(plan, available=10 ** 9, memory_plan="whole")
    msg = str(e.value)
    assert "\n" not in msg and "needs about" in msg and "1.0 GB is available" in msg
    fit = int(msg.rsplit("--content-size ", 1)[1].rstrip(")"))
    est = memory.plan_estimator(plan)
    assert est(fit) + memory.weights_cpu() <= 10 ** 9 < est(fit + 1) + memory.weights_cpu()
    assert isinstance(e.value, MemoryError)
    with pytest.raises(memory.NotEnoughMemory, match="not even the smallest"):
        memory.check_plan_cpu(plan, available=10 ** 6)


def test_auto_plan_bands_only_when_the_whole_does_not_fit(rng):
    # 4000x3000, the tutorial's 13 layers: whole needs ~45 GB; with bands the
    # cheapest plan that fits in each budget, leaner as the budget shrinks
    _, _, plan = _plan(rng, (3000, 4000), **TUTORIAL)
    whole = memory.plan_estimator(plan)(4000) + memory.weights_cpu()
    assert memory.check_plan_cpu(plan, available=whole).bands is None
    last_need, last_cost = whole, 1.0
    for budget in (whole * 0.8, whole * 0.5, whole * 0.3):
        c = memory.check_plan_cpu(plan, available=budget)
        assert c.bands is not None and c.need <= budget and c.whole == whole
        assert c.need <= last_need and c.cost >= last_cost
        # nothing cheaper (beyond COST_SLACK, where a leaner plan may win) fits
        for b in memory.band_candidates(12, 3000):
            if memory.band_cost(b, (3000, 4000), 12) * (1 + memory.COST_SLACK) < c.cost:
                assert memory.plan_estimator(plan, bands=b)(4000) + memory.weights_cpu() > budget
        last_need, last_cost = c.need, c.cost
    lean = memory.check_plan_cpu(plan, available=10 ** 18, memory_plan="lean")
    assert lean.need <= last_need
    # below the leanest plan: refused, naming the largest size that fits with it
    with pytest.raises(memory.NotEnoughMemory) as e:
        memory.check_plan_cpu(plan, available=lean.need * 0.9)
    fit = int(str(e.value).rsplit("--content-size ", 1)[1].rstrip(")"))
    assert 1000 < fit < 4000
    assert memory.fit_estimator(plan)(fit) + memory.weights_cpu() <= lean.need * 0.9
    line = memory.describe(c, (3000, 4000))
    assert "bands of" in line and "x the time" in line and "\n" not in line


def test_band_cost_and_estimates():
    hw = (2048, 2048)
    for split in (1, 3, 6):
        for rows in (64, 256, 1024):
            if rows < 2 * banded.margin(split):
                continue
            c = memory.band_cost((split, rows), hw, 12)
            assert c > 1.0
            assert memory.band_cost((split, rows * 2), hw, 12) <= c if rows < 1024 else True
    # a deeper head costs more and keeps less
    assert memory.band_cost((1, 256), hw, 12) < memory.band_cost((3, 256), hw, 12) \
        < memory.band_cost((6, 256), hw, 12)
    est = [memory.estimate_cpu(hw, [hw], bands=b, **QUALITY)
           for b in (None, (1, 256), (3, 256), (6, 256))]
    assert est[0] > est[1] > est[2] > est[3]
    # the head in bands of 256 rows keeps a fraction of the whole's bytes (what
    # remains is mostly whole-image state: L-BFGS's 10 pairs, the images)
    assert est[3] < 0.45 * est[0]


def test_memory_plan_bad_values(rng):
    _, _, plan = _plan(rng, (64, 64), **TUTORIAL)
    with pytest.raises(ValueError, match="unknown memory_plan"):
        memory.check_plan_cpu(plan, memory_plan="small")
    with pytest.raises(ValueError, match="multiple of 4"):
        memory.check_plan_cpu(plan, memory_plan=(3, 6))


def _refuse_weights(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the weights were loaded before the memory check")
    monkeypatch.setattr(VGG16, "load", classmethod(refuse))


def test_style_transfer_refuses_before_the_weights_load(rng, monkeypatch):
    content, style, _ = _plan(rng)
    _refuse_weights(monkeypatch)
    monkeypatch.setattr(memory, "available_cpu", lambda: 50 * 10 ** 6)
    with pytest.raises(memory.NotEnoughMemory, match="50.0 MB is available"):
        cpstyle.style_transfer(content, style, device="cpu", num_iterations=1,
                               check_memory=True)


def test_unknown_available_memory_runs_as_today(rng, monkeypatch):
    content, style, _ = _plan(rng, (24, 24))
    monkeypatch.setattr(memory, "available_cpu", lambda: None)

    class Loaded(Exception):
        pass

    def loaded(*a, **k):
        raise Loaded()
    monkeypatch.setattr(VGG16, "load", classmethod(loaded))
    with pytest.raises(Loaded):  # past the check: on to the weights
        cpstyle.style_transfer(content, style, device="cpu", num_iterations=1,
                               check_memory=True)


@pytest.mark.weights
@pytest.mark.slow
def test_model_agrees_with_measured_peak_rss(weights_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("peak RSS via /proc (Linux)")
    from bench.memory import TOLERANCE, measure
    r = measure("quality", 128, iterations=2, timeout=120)
    assert abs(r["error"]) <= TOLERANCE, r


def _engine_bytes(eng):
    """Bytes of every array the engine holds (views counted once, by their base)."""
    seen = set()

    def walk(o):
        if isinstance(o, np.ndarray):
            base = o
            while base.base is not None:
                base = base.base
            if id(base) in seen:
                return 0
            seen.add(id(base))
            return base.nbytes
        if isinstance(o, (list, tuple)):
            return sum(walk(v) for v in o)
        if isinstance(o, dict):
            return sum(walk(v) for v in o.values())
        if hasattr(o, "__dict__") and type(o).__module__.startswith("cpstyle.optimizers"):
            return walk(vars(o))
        if type(o).__name__ == "UpdateWork":
            return walk(tuple(o))
        return 0

    return sum(walk(v) for k, v in vars(eng).items() if k not in ("model", "ref"))


@pytest.mark.parametrize("optimizer,conv,pooling,layer_set", [
    ("gd", "im2col", "max", "tutorial"), ("lbfgs", "igemm", "max", "gatys"),
    ("adam", "igemm", "avg", "tutorial"), ("lbfgs", "im2col", "avg", "gatys")])
def test_gpu_engine_buffers_match_the_model(optimizer, conv, pooling, layer_set, rng):
    """The GPU engine's own buffers, counted on its emulated (NumPy) run, against
    memory.estimate_gpu_engine: exactly, since both come from the same shapes."""
    from cpstyle import VGG16
    from cpstyle.gpu_engine import GpuStyleTransfer
    from cpstyle.vgg16 import random_params
    from test_vgg16 import SMALL
    model = VGG16(random_params(SMALL, np.random.default_rng(3)), device="cpu",
                  pooling=pooling)
    content = rng.uniform(0, 255, (37, 45, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (30, 33, 3)).astype(np.float32)
    cids, sids = ([4], list(range(13))) if layer_set == "tutorial" else ([8], [0, 2, 4, 7, 10])
    eng = GpuStyleTransfer(model, content, style, cids, sids, 1.5, 10.0, 0.3,
                           optimizer=optimizer, conv=conv)
    want = memory.estimate_gpu_engine((37, 45), cids, sids, optimizer, 10, conv, pooling,
                                      channels=SMALL)
    assert _engine_bytes(eng) == want


def test_auto_plan_leaves_a_share_of_the_ram(rng, monkeypatch):
    # on the machine's own memory the plan stays within RAM_SHARE of the RAM
    # when one fits there; when none does, the leanest that fits what is free
    _, _, plan = _plan(rng, (3000, 4000), **TUTORIAL)
    GB = 10 ** 9
    differ = 0
    for total in range(12, 48, 4):
        monkeypatch.setattr(memory, "available_cpu", lambda: total * GB)
        monkeypatch.setattr(memory, "total_cpu", lambda: total * GB)
        c = memory.check_plan_cpu(plan)
        assert c.need <= memory.RAM_SHARE * total * GB
        unlimited = memory.check_plan_cpu(plan, available=total * GB)
        assert unlimited.need >= c.need and unlimited.cost <= c.cost
        differ += unlimited.need > c.need
    assert differ >= 3  # the share changes the choice at several sizes of RAM
    lean = memory.check_plan_cpu(plan, available=10 ** 18, memory_plan="lean")
    monkeypatch.setattr(memory, "available_cpu", lambda: lean.need * 1.01)
    monkeypatch.setattr(memory, "total_cpu", lambda: lean.need * 1.05)
    assert memory.check_plan_cpu(plan).bands == lean.bands
