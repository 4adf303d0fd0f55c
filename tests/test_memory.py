"""The CPU memory model and preflight (cpstyle/memory.py): the estimate grows
with the pixels, a run that does not fit stops before the weights load with one
line, the largest size it names fits, and the model agrees with a measured peak
RSS at one small size (bench/memory.py in a subprocess)."""
import sys

import numpy as np
import pytest

import cpstyle
from cpstyle import memory
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
        # the fixed buffers (BLAS, style targets) fade: bytes per pixel settle
        assert 0.9 < per_px[b] / per_px[a] <= 1.0, per_px
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
    assert memory.check_plan_cpu(plan, available=10 ** 12)[0] > memory.weights_cpu()
    with pytest.raises(memory.NotEnoughMemory) as e:
        memory.check_plan_cpu(plan, available=10 ** 9)
    msg = str(e.value)
    assert "\n" not in msg and "needs about" in msg and "1.0 GB is available" in msg
    fit = int(msg.rsplit("--content-size ", 1)[1].rstrip(")"))
    est = memory.plan_estimator(plan)
    assert est(fit) + memory.weights_cpu() <= 10 ** 9 < est(fit + 1) + memory.weights_cpu()
    assert isinstance(e.value, MemoryError)
    with pytest.raises(memory.NotEnoughMemory, match="not even the smallest"):
        memory.check_plan_cpu(plan, available=10 ** 6)


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
