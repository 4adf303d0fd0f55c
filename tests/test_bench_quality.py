"""bench/quality.py: its summary logic on made-up scores, and a --quick run end
to end (the classic anchor only where PyTorch is installed)."""
import json
import os
import subprocess
import sys

import pytest

from bench import quality

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def result(method, lpips, gap, seconds=1.0, pair="tubingen", size=256):
    return {"size": size, "pair": pair, "method": method, "lpips": lpips,
            "style_gap": gap, "seconds": seconds}


def test_summary_finds_an_anchor_point_better_on_both_axes():
    names = ["classic-100", "classic-1000", "quality"]
    rs = [result("classic-100", 0.40, 0.40, 10), result("classic-1000", 0.55, 0.25, 30),
          result("quality", 0.45, 0.30, 10)]
    s = quality.summarise(rs, names, [256])["256"]
    assert s["anchors_better_on_both_axes"] == []
    assert s["quality_seconds_over_anchor"] == pytest.approx(0.5)
    assert s["beyond_anchor_target"] is False
    rs[0] = result("classic-100", 0.40, 0.29, 10)
    s = quality.summarise(rs, names, [256])["256"]
    assert s["anchors_better_on_both_axes"] == ["classic-100"]


def test_strength_monotone_needs_both_scores_to_move():
    rs = [result("quality-s0.3", 0.30, 0.50), result("quality", 0.40, 0.30),
          result("quality-s3", 0.50, 0.20)]
    m = quality.strength_monotone(rs, [256], [0.3, 3])["256/tubingen"]
    assert m["strengths"] == [0.3, 1.0, 3.0] and m["monotone"] is True
    rs[2] = result("quality-s3", 0.50, 0.35)  # more style weight, yet further from the style
    assert quality.strength_monotone(rs, [256], [0.3, 3])["256/tubingen"]["monotone"] is False


@pytest.mark.weights
@pytest.mark.slow
def test_quick_run_writes_json_and_sheet(tmp_path, weights_path):
    pytest.importorskip("h5py")
    from bench import lpips
    try:
        lpips.load()
    except FileNotFoundError:
        pytest.skip("AlexNet LPIPS weights absent (python -m bench.lpips fetch)")
    r = subprocess.run([sys.executable, "-m", "bench.quality", "--quick", "--out-dir",
                        str(tmp_path), "--work-dir", str(tmp_path / "work")],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (path,) = tmp_path.glob("quality-*.json")
    doc = json.loads(path.read_text())
    methods = {x["method"] for x in doc["results"]}
    assert {"tutorial", "quality", "quality-s0.3", "quality-s0.6", "quality-s2"} <= methods
    for x in doc["results"]:
        assert 0 <= x["lpips"] and x["style_gap"] >= 0 and x["seconds"] > 0
    assert path.with_suffix(".jpg").exists()
    assert set(doc["summary"]) == {"64"}
