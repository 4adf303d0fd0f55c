"""CI's smoke test of the benchmark harness (bench/, issue: benchmark against
PyTorch): `python -m bench --quick` runs its tiny cases end to end on the CPU,
checks before it times, and exits non-zero when a check fails."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    assert any(l.startswith("check | 64x64 |") and l.endswith("| ok") for l in lines)
    name = "cpu objective" + ("" if layers == "tutorial" else " gatys")
    timing = [l for l in lines if l.startswith(f"{name} | 64x64 |")]
    assert len(timing) == 1 and "ratio" in timing[0]


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
