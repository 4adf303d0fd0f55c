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


def test_unscored_rows_wait_for_their_scores():
    names = ["classic-100", "quality", "quality-s2"]
    rs = [result("classic-100", 0.40, 0.40, 10), result("quality", None, None, 5),
          result("quality-s2", 0.50, 0.20)]
    s = quality.summarise(rs, names, [256])["256"]
    assert set(s["means"]) == {"classic-100", "quality-s2"}
    assert "anchors_better_on_both_axes" not in s  # no quality score yet
    assert quality.strength_monotone(rs, [256], [2]) == {}  # one scored point is no curve


@pytest.mark.weights
def test_score_later_scores_the_saved_pictures(tmp_path):
    pytest.importorskip("h5py")
    from bench import lpips
    from cpstyle import save_image
    try:
        lpips.load()
    except FileNotFoundError:
        pytest.skip("AlexNet LPIPS weights absent (python -m bench.lpips fetch)")
    content, style, _ = quality.load_pair("tubingen", "starry_night", 64)
    save_image(content, tmp_path / "64-tubingen-quality.png")   # the content itself
    from cpstyle.images import resize_to
    save_image(resize_to(style, *content.shape[:2]),  # the style, at the content's shape
               tmp_path / "64-tubingen-classic-100.png")
    doc = {"methods": ["classic-100", "quality"], "sizes": [64],
           "results": [dict(result(m, None, None, 2.0, size=64), style="starry_night")
                       for m in ("classic-100", "quality")]}
    path = tmp_path / "q.json"
    path.write_text(json.dumps(doc))
    assert quality.main(["--score", str(path), "--work-dir", str(tmp_path)]) == 0
    got = {r["method"]: r for r in json.loads(path.read_text())["results"]}
    assert got["quality"]["lpips"] < 0.01 and got["quality"]["style_gap"] > 0.9
    # the style stretched to the content's shape: far from the content, near the style
    assert got["classic-100"]["style_gap"] < 0.5 and got["classic-100"]["lpips"] > 0.3
    (tmp_path / "64-tubingen-quality.png").unlink()
    doc["results"][1]["lpips"] = None
    path.write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match="missing"):
        quality.main(["--score", str(path), "--work-dir", str(tmp_path)])
