"""cpstyle/trace.py: the per-iteration record, its atomic JSON file, and the
loss plot (PIL drawing; matplotlib only where importable)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from cpstyle.driver import Progress
from cpstyle.trace import COLORS, Trace, plot_losses, write_atomic


def progress(scale, it, lc, ls, ld, size=(20, 30)):
    return Progress(it, 4, {"content": lc, "style": ls, "denoise": ld},
                    {"content": 1 / lc, "style": 1 / ls, "denoise": 1 / ld}, None,
                    0.5 * it, objective=1.0, scale=scale, num_scales=2, size=size)


def test_trace_records_and_json(tmp_path):
    t = Trace({"optimizer": "lbfgs"})
    for k in range(3):
        t(progress(0, k, 10.0 - k, 100.0 / (k + 1), 5.0))
    path = t.write_json(tmp_path / "trace.json")
    d = json.loads(path.read_text())
    assert d["format"] == "cpstyle-trace" and d["settings"] == {"optimizer": "lbfgs"}
    assert [r["iteration"] for r in d["records"]] == [0, 1, 2]
    r = d["records"][1]
    assert r["losses"] == {"content": 9.0, "style": 50.0, "denoise": 5.0}
    assert r["adj"]["style"] == pytest.approx(0.02) and r["elapsed"] == 0.5
    assert r["size"] == [20, 30] and r["scale"] == 0 and r["objective"] == 1.0
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_trace_settings_hold_any_option(tmp_path):
    t = Trace({"init": np.zeros((20, 30, 3), np.float32), "weights": (1.5, np.float32(2)),
               "optimizer": None})
    d = json.loads(t.write_json(tmp_path / "t.json").read_text())
    assert d["settings"] == {"init": "array (20, 30, 3) float32", "weights": [1.5, 2.0],
                             "optimizer": None}


def test_write_atomic_leaves_the_old_file_on_failure(tmp_path):
    p = tmp_path / "t.json"
    p.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(p, "not bytes")  # fails inside the write
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["t.json"]


def test_plot_draws_each_curve_where_its_data_is(tmp_path):
    t = Trace()
    for k in range(5):  # style falls 10x per iteration, content is flat, denoise rises
        t(progress(0, k, 7.0, 10.0 ** -k, 1.0 + k))
    for k in range(5):
        t(progress(1, k, 7.0, 10.0 ** -(4 + k), 5.0 + k, size=(40, 60)))
    path = plot_losses(t.records, tmp_path / "losses.png", backend="pil", size=(600, 400))
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape == (400, 600, 3)
    plot = img[:350]  # the legend sits below the plot area

    def rows_cols(name):
        m = (np.abs(plot - np.array(COLORS[name])).sum(-1) < 30)
        ys, xs = np.nonzero(m)
        assert len(xs) > 50, f"no {name} curve drawn"
        return ys, xs

    for name in COLORS:
        rows_cols(name)
    ys, xs = rows_cols("style")  # falling: high at the left, low at the right
    left, right = ys[xs < xs.min() + 20].mean(), ys[xs > xs.max() - 20].mean()
    assert right - left > 200
    ys, _ = rows_cols("content")  # flat (L/L0 = 1): one row, give or take the line width
    assert ys.max() - ys.min() <= 3
    ys, xs = rows_cols("denoise")  # rising
    assert ys[xs < xs.min() + 20].mean() > ys[xs > xs.max() - 20].mean()


def test_plot_refuses_nothing_to_plot(tmp_path):
    with pytest.raises(ValueError, match="no records"):
        plot_losses([], tmp_path / "x.png")
