"""bench/bench_optimizers.py --quick: it runs, writes its JSON and sheet, and
every optimiser moved the objective down from the noise start."""
import json

import pytest

pytestmark = pytest.mark.weights


def test_bench_optimizers_quick(tmp_path, weights_path, capsys):
    from bench import bench_optimizers
    assert bench_optimizers.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "optimizers-cpu-64.json").read_text())
    runs = {(r["pair"], r["optimizer"]): r for r in doc["results"]}
    assert len(runs) == 6
    for r in runs.values():
        assert r["iteration"] >= 1 and r["objective"] == r["objective"]
    assert (tmp_path / "optimizers-cpu-64.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "| tubingen+starry_night | 64x48 | lbfgs |" in out
