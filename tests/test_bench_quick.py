"""CI's smoke test of the benchmark harness (bench/, issue: benchmark against
PyTorch): `python -m bench --quick` runs its tiny cases end to end on the CPU,
checks before it times, and exits non-zero when a check fails. Also bench/run.py's
GPU side as far as it runs without a GPU: its cases per precision, the check's
tolerances, the conv and memory fields of a record (a faked GPU run), and the
PyTorch reference's bf16 mode on the CPU."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cpstyle import gpu_engine
from cpstyle.gpu_engine import PRECISIONS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench import run as br  # noqa: E402 (bench/ is a folder of the repository, not installed)


def test_bench_quick_runs_and_reports(tmp_path):
    out = tmp_path / "quick.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.splitlines()[0].startswith("device: cpu")
    res = json.loads(out.read_text())
    assert res["cases"] and res["checks_passed"] is True
    for case in res["cases"]:
        assert case["check"]["ok"], case["name"]
        assert case["cpstyle"]["ms_per_iteration"] > 0
        assert case["precision"] == "fp32" and case["conv"] is None


@pytest.mark.parametrize("layers", ["tutorial", "gatys"])
def test_bench_cpu_quick_checks_and_times_in_two_workers(layers):
    """bench_cpu (the CPU target's benchmark) needs PyTorch, which the test extra
    leaves out (CI skips this); where it is installed, the worker protocol runs."""
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, "-m", "bench.bench_cpu", "--quick", "--layers", layers],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert "a worker process per side" in lines[0]
    checks = [l for l in lines if l.startswith("check | 64x64 |") and l.endswith("| ok")]
    assert len(checks) == 2  # both import orders
    name = "cpu objective" + ("" if layers == "tutorial" else " gatys")
    timing = [l for l in lines if l.startswith(f"{name} | 64x64 |")]
    assert [l.split(" | ")[2] for l in timing] == ["cpstyle first", "numpy first"]
    assert all("ratio" in l and "(median pair)" in l and "pairs 1:" in l for l in timing)


def test_profile_gemm_shapes_smoke():
    """bench.profile_ops --gemm-shapes runs on a GPU; its shape list and timing
    loop run here on NumPy at 32 px: 13 layers x 2 directions x 2 lowerings."""
    import numpy as np
    sys.path.insert(0, REPO)
    from bench.profile_ops import gemm_cases, time_gemms
    cases = gemm_cases(32)
    assert len(cases) == 52
    assert cases[5][3:] == (32 * 32, 64, 9 * 64)  # conv1_2 forward, col2im: x (M, Cin) · (Cin, 9·Cout)
    assert cases[-1][3] == 2 * 2  # conv5_x at 32 / 16
    rows = time_gemms(32, np, repeats=1, reference=64)
    assert len(rows) == 53 and rows[0]["m"] == rows[0]["k"] == rows[0]["n"] == 64
    assert all(r["fp32"]["ms"] > 0 for r in rows)


def test_profile_gemm_shapes_torch_column_on_cpu():
    """The PyTorch column of --gemm-shapes, run through its CPU branch where
    PyTorch is installed (CI has none and skips)."""
    import pytest
    pytest.importorskip("torch")
    import numpy as np
    sys.path.insert(0, REPO)
    from bench.profile_ops import _torch_gemm
    for lowering in ("im2col", "col2im"):
        r = _torch_gemm(64, 27, 16, lowering, np, 1, device="cpu")
        assert "torch_error" not in r, r
        assert r["torch_fp32"]["ms"] > 0 and r["torch_tf32"]["ms"] > 0


# ---------------------------------------------------------------- bench/run.py's GPU side

def test_cases_per_device(monkeypatch):
    """On a GPU a case per precision of the engine's (bf16 iff it has bf16); the CPU
    benchmark's cases are fp32 only, as they always were."""
    gpu = [c.name for c in br.all_cases(True)]
    for p in PRECISIONS:
        assert [n for n in gpu if n.endswith(f"-{p}")] == [
            f"{n}-{ls}-{p}" for n in (256, 512, 1024) for ls in ("tutorial", "gatys")] + [
            f"example-{p}"]
    assert len(gpu) == 7 * len(PRECISIONS)
    assert ("512-tutorial-bf16" in gpu) == ("bf16" in PRECISIONS)
    assert [c.name for c in br.all_cases(False)] == [
        f"{n}-{ls}-fp32" for n in (256, 512, 1024) for ls in ("tutorial", "gatys")] + [
        "example-fp32"]
    assert [c.name for c in br.all_cases(False, quick=True)] == [
        f"{n}-{ls}-fp32" for n in (32, 48) for ls in ("tutorial", "gatys")]
    monkeypatch.setattr(gpu_engine, "PRECISIONS", ("fp32", "tf32"))  # an engine without bf16
    assert {c.precision for c in br.all_cases(True)} == {"fp32", "tf32"}
    monkeypatch.setattr(gpu_engine, "PRECISIONS", ("fp32", "tf32", "bf16"))
    assert {c.precision for c in br.all_cases(True)} == {"fp32", "tf32", "bf16"}
    assert {c.precision for c in br.all_cases(False)} == {"fp32"}


def test_tolerances_cover_every_precision():
    assert set(PRECISIONS) <= set(br.TOLERANCES)
    order = [p for p in ("fp32", "tf32", "bf16") if p in br.TOLERANCES]
    tols = [br.TOLERANCES[p] for p in order]
    for t in tols:
        assert 0 < t["loss_rtol"] < 0.1 and 0.9 < t["min_cos"] < 1
    # fewer mantissa bits, looser: never the other way round
    assert [t["loss_rtol"] for t in tols] == sorted(t["loss_rtol"] for t in tols)
    assert [t["min_cos"] for t in tols] == sorted((t["min_cos"] for t in tols), reverse=True)


def test_conv_field(monkeypatch):
    monkeypatch.delenv("CPSTYLE_CONV", raising=False)
    for p in PRECISIONS:
        assert br.cpstyle_conv(p, on_gpu=False) is None  # the NumPy reference
        assert br.cpstyle_conv(p, on_gpu=True) == ("igemm" if p == "bf16" else "im2col")
    monkeypatch.setenv("CPSTYLE_CONV", "igemm")
    assert {br.cpstyle_conv(p, True) for p in PRECISIONS} == {"igemm"}
    monkeypatch.setenv("CPSTYLE_CONV", "im2col")
    assert br.cpstyle_conv("tf32", True) == "im2col"
    monkeypatch.setenv("CPSTYLE_CONV", "winograd")
    with pytest.raises(ValueError, match="CPSTYLE_CONV"):
        br.cpstyle_conv("fp32", True)
    assert br.cpstyle_conv("fp32", False) is None


class FakePool:
    """CuPy's memory pool as run_case reads it: emptied, then grown by the run."""

    def __init__(self):
        self.bytes = 0

    def free_all_blocks(self):
        self.bytes = 0

    def total_bytes(self):
        return self.bytes


class FakeTorchSide:
    def peak_reset(self):
        pass

    def peak(self):
        return 5 * 2**30

    def time_iterations(self, case, content, style, init, n, block):
        return [2.0] * (n // block)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_gpu_record_has_conv_memory_and_floors(monkeypatch, precision):
    """run_case's GPU branch with the device faked: every precision's record (bf16
    too) carries the conv, both sides' peak memory and the floor of its own peak."""
    monkeypatch.delenv("CPSTYLE_CONV", raising=False)
    pool = FakePool()
    monkeypatch.setattr(br, "cupy_pool", lambda: pool)
    monkeypatch.setattr(br, "check_case", lambda *a, **k: {
        "ok": True, "precision_honoured": True, "loss_max_rel_err": 1e-3,
        "displacement_cos": 0.999})

    def fake_run(model, case, content, style, init, n, dev, every=None):
        assert dev == "gpu" and case.precision == precision
        pool.bytes = 3 * 2**30
        # a report every 10 iterations, 1 ms each, and the final one
        marks = [(i, i * 1e-3, {}) for i in range(0, n, every)] + [(n, n * 1e-3, {})]
        return None, marks, True
    monkeypatch.setattr(br, "cpstyle_run", fake_run)
    case = br.Case(f"32-tutorial-{precision}", "iter", (32, 32), "tutorial", precision)
    opts = argparse.Namespace(check_iterations=1, rounds=2, iterations=20)
    peaks, _, _ = br.peaks_for("NVIDIA H200")
    rec = br.run_case(case, None, FakeTorchSide(), "gpu", opts, "random", peaks)
    assert rec["conv"] == ("igemm" if precision == "bf16" else "im2col")
    cp, tt = rec["cpstyle"], rec["torch"]
    assert cp["ms_per_iteration"] == pytest.approx(1.0) and rec["ratio"] == pytest.approx(0.5)
    assert cp["peak_memory_bytes"] == 3 * 2**30 and tt["peak_memory_bytes"] == 5 * 2**30
    for p in ("fp32", "tf32", "bf16"):
        assert cp[f"frac_{p}_floor"] == pytest.approx(
            rec["flop_per_iteration"] / peaks[p] / 1e-3)
    line = br.fmt_line("gpu", rec)
    floor = "BF16" if precision == "bf16" else "TF32"
    assert line.startswith(f"gpu | 32x32 tutorial {precision} {rec['conv']} | check ")
    assert f"% {floor} floor" in line and "mem 3.00 GiB / 5.00 GiB" in line
    rec.pop("conv")  # a record from before the field: the line as it was
    assert br.fmt_line("gpu", rec).startswith(f"gpu | 32x32 tutorial {precision} | check ")


def test_gpu_record_times_captured_against_uncaptured(monkeypatch):
    """Where the timed runs replayed a graph (Progress.captured in the marks), one
    more round runs with CPSTYLE_CAPTURE=0: the record and the line carry both."""
    monkeypatch.setattr(br, "cupy_pool", lambda: FakePool())
    monkeypatch.setattr(br, "check_case", lambda *a, **k: {
        "ok": True, "precision_honoured": True, "loss_max_rel_err": 1e-3,
        "displacement_cos": 0.999})
    calls = []

    def fake_run(model, case, content, style, init, n, dev, every=None, capture=None):
        calls.append(capture)
        ms = 3e-3 if capture is False else 1e-3  # uncaptured: 3 ms an iteration
        marks = [(i, i * ms, {}, capture is None and i > 0) for i in range(0, n, every)]
        return None, marks + [(n, n * ms, {}, False)], True
    monkeypatch.setattr(br, "cpstyle_run", fake_run)
    case = br.Case("32-tutorial-fp32", "iter", (32, 32), "tutorial", "fp32")
    opts = argparse.Namespace(check_iterations=1, rounds=2, iterations=20)
    peaks, _, _ = br.peaks_for("NVIDIA H200")
    rec = br.run_case(case, None, FakeTorchSide(), "gpu", opts, "random", peaks)
    assert calls == [None, None, False]
    assert rec["captured"] and rec["cpstyle"]["uncaptured_ms_per_iteration"] == pytest.approx(3.0)
    assert rec["capture_speedup"] == pytest.approx(3.0)
    line = br.fmt_line("gpu", rec)
    assert line.endswith("| graph | uncaptured 3.000 ms"), line


def test_torch_reference_bf16_on_the_cpu():
    """TorchObjective(bf16=True): the forward under autocast (bf16 taps), fp32 losses
    and gradient, within the bench's bf16 tolerance of fp32 after one step."""
    torch = pytest.importorskip("torch")
    from bench import torch_reference as tr
    rng = np.random.default_rng(0)
    content, style = (rng.uniform(0, 255, (40, 36, 3)).astype(np.float32) for _ in range(2))
    model = tr.TorchVGG16(tr.random_weights(0), "cpu")
    init = tr.initial_image(content.shape, 0)
    out = {}
    for bf16 in (False, True):
        obj = tr.TorchObjective(content, style, [4], list(range(13)), model=model, bf16=bf16)
        assert obj.style_targets[0].dtype == (torch.bfloat16 if bf16 else torch.float32)
        run = tr.TorchStyleTransfer(obj, init)
        run.step(1)
        losses, g = obj.losses_and_grad(run.x)
        assert all(v.dtype == torch.float32 for v in losses) and g.dtype == torch.float32
        out[bf16] = run.image(), [float(v) for v in run.last_losses + losses]
    tol = br.TOLERANCES["bf16"]
    (a, la), (b, lb) = out[False], out[True]
    worst = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
    da, db = (a - init).ravel().astype(np.float64), (b - init).ravel().astype(np.float64)
    cos = da @ db / (np.linalg.norm(da) * np.linalg.norm(db))
    assert 0 < worst < tol["loss_rtol"], worst
    assert tol["min_cos"] < cos < 1, cos


def test_bench_capture_gram_shapes_and_no_gpu(monkeypatch):
    """bench.capture's Gram table covers each distinct (HW, C) of the tutorial's
    style layers once; without a GPU it stops with a one-line reason."""
    from bench import capture
    assert capture.gram_cases([256]) == [(65536, 64), (16384, 128), (4096, 256), (1024, 512),
                                         (256, 512)]
    assert len(capture.gram_cases([256, 512])) == 9  # (1024, 512) is in both sizes: once
    monkeypatch.setattr("cpstyle.backend.gpu_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a GPU"):
        capture.main([])
