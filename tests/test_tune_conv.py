"""bench/tune_conv.py on the CPU: the shapes it tunes (VGG-16's, each once), the
FLOP count, the choice of tiles (the fastest that passed; none passed -> no
table entry), the table merge (other GPUs' entries kept) and its atomic write.
Two whole runs: one on a stand-in device (NumPy, the igemm replaced by the
reference with chosen errors and times: the loop's logic, the table and the
JSON), and one `--emulate` run of the real kernels under tests/emulation
(skipped, with the reason, while the emulation cannot build conv_igemm)."""
import contextlib
import json
import math
import os
import statistics
import time
import types

import sys

import numpy as np
import pytest

from cpstyle.layers import LAYER_CHANNELS
from cpstyle.ops import conv_igemm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench import tune_conv as tc  # noqa: E402 (bench/ is a folder of the repository, not installed)

H100 = tc.peaks_for("NVIDIA H100 80GB HBM3")[0]


# ---- shapes and FLOP -------------------------------------------------------------

def test_layer_shapes_follow_vgg16_with_its_pools():
    got = tc.layer_shapes(512)
    assert [(cin, cout) for _, cin, cout, _, _ in got] == list(LAYER_CHANNELS)
    assert [h for *_, h, _ in got] == [512] * 2 + [256] * 2 + [128] * 3 + [64] * 3 + [32] * 3
    assert [h for *_, h, _ in tc.layer_shapes(33)] == [33] * 2 + [16] * 2 + [8] * 3 + [4] * 3 + [2] * 3


def test_shapes_are_the_vgg_layer_shapes_each_once():
    shapes = tc.enumerate_shapes([512], ["tf32"])
    fwd = {(s.a_channels, s.out_channels, s.pixels) for s in shapes if s.direction == "fwd"}
    bwd = {(s.a_channels, s.out_channels, s.pixels) for s in shapes if s.direction == "bwd"}
    expect = {(3, 64, 2**18), (64, 64, 2**18), (64, 128, 2**16), (128, 128, 2**16),
              (128, 256, 2**14), (256, 256, 2**14), (256, 512, 2**12), (512, 512, 2**12),
              (512, 512, 2**10)}
    assert fwd == expect
    assert bwd == {(o, a, p) for a, o, p in expect}  # the backward: Cout -> Cin
    assert len(shapes) == 18
    for d in ("fwd", "bwd"):  # every layer in exactly one shape per direction
        names = [n for s in shapes if s.direction == d for n in s.layers]
        assert sorted(names) == sorted(f"512:conv{b}_{i}" for b, n in
                                       ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
                                       for i in range(1, n + 1))
    three = [s for s in shapes if s.layers == ["512:conv3_2", "512:conv3_3"]]
    assert len(three) == 2


def test_shapes_over_sizes_and_precisions_are_unique_keys():
    shapes = tc.enumerate_shapes([512, 1024], ["tf32", "fp32", "bf16"])
    keys = [s.key for s in shapes]
    assert len(keys) == len(set(keys)) == 3 * 34  # 512²'s conv4_2/4_3 = 1024²'s conv5_x
    shared = next(s for s in shapes if s.key == "fwd tf32 512->512 2^12")
    assert shared.layers == ["512:conv4_2", "512:conv4_3", "1024:conv5_1", "1024:conv5_2",
                             "1024:conv5_3"]
    assert [s.precision for s in shapes] == ["tf32"] * 34 + ["fp32"] * 34 + ["bf16"] * 34
    assert all(s.key == conv_igemm.table_key(s.direction, s.precision, s.a_channels,
                                             s.out_channels, s.pixels) for s in shapes)


def test_flop_formula():
    assert tc.conv_flop(1024 * 1024, 64, 64) == 2 * 1024 * 1024 * 9 * 64 * 64
    fwd = sum(tc.conv_flop(h * w, cin, cout) for _, cin, cout, h, w in tc.layer_shapes(512))
    assert fwd == 611_712 * 512 * 512  # DESIGN.md §9: 160.4 GFLOP at 512²
    s = tc.enumerate_shapes([512], ["tf32"])
    f = {(x.direction, x.layers[0]): x.flop for x in s}
    assert f[("fwd", "512:conv1_1")] == f[("bwd", "512:conv1_1")] == 2 * 512 * 512 * 9 * 3 * 64


def test_candidates_narrow_quick_and_emulated():
    s = {x.key: x for x in tc.enumerate_shapes([512], ["tf32"])}
    assert tc.candidates_for(s["bwd tf32 64->3 2^18"]) == conv_igemm.NARROW_CANDIDATES
    assert tc.candidates_for(s["fwd tf32 3->64 2^18"]) == conv_igemm.CANDIDATES
    assert tc.candidates_for(s["fwd tf32 3->64 2^18"], "quick") == conv_igemm.CANDIDATES[:2]
    emu = tc.candidates_for(s["fwd tf32 64->64 2^18"], "emulate")
    threads = sorted(t[3] * t[4] for t in conv_igemm.CANDIDATES)
    assert len(emu) == 2 and sorted(t[3] * t[4] for t in emu) == threads[:2]


def test_estimate_fits_the_three_minutes_on_an_h100():
    shapes = tc.enumerate_shapes([512, 1024], ["tf32", "fp32", "bf16"])
    est = tc.estimate(shapes, "full", H100)
    defs = {frozenset(conv_igemm.defines(t, s.precision, s.a_channels, s.out_channels).items())
            for s in shapes for t in tc.candidates_for(s)}
    assert est["compiles"] == len(defs)
    assert est["candidate_runs"] == sum(len(tc.candidates_for(s)) for s in shapes)
    assert est["seconds"] < tc.BUDGET_S < 180


# ---- picking and the table ------------------------------------------------------------

def test_pick_fastest_passing():
    cands = [{"tiles": [1], "ok": True, "ms": 2.0}, {"tiles": [2], "ok": False, "ms": 0.5},
             {"tiles": [3], "ok": True, "ms": 1.0}, {"tiles": [4], "ok": False},
             {"tiles": [5], "ok": True, "ms": 1.0}]
    assert tc.pick_fastest(cands)["tiles"] == [3]  # [2] is faster but failed; [5] ties later
    assert tc.pick_fastest([{"tiles": [2], "ok": False, "ms": 0.5}, {"tiles": [4], "ok": False}]) is None
    assert tc.pick_fastest([]) is None


def test_merge_table_keeps_other_gpus_and_untouched_keys():
    old = {"gpus": {"A100": {"fwd tf32 3->64 2^18": [64, 64, 16, 2, 2]},
                    "H200": {"keep": [1, 2, 3, 4, 5], "retuned": [9, 9, 9, 9, 9],
                             "now failed": [8, 8, 8, 8, 8]}},
           "im2col_faster": {"A100": ["x"], "H200": ["retuned", "keep"]},
           "igemm_failed": {"H200": ["now tuned"]}}
    snapshot = json.loads(json.dumps(old))
    new = tc.merge_table(old, "H200", {"retuned": ((128, 64, 16, 2, 2), False),
                                       "now failed": (None, None),
                                       "now tuned": ((64, 64, 32, 2, 2), True)},
                         meta={"commit": "abc"})
    assert old == snapshot  # not changed in place
    assert new["gpus"]["A100"] == old["gpus"]["A100"] and new["im2col_faster"]["A100"] == ["x"]
    assert new["gpus"]["H200"] == {"keep": [1, 2, 3, 4, 5], "retuned": [128, 64, 16, 2, 2],
                                   "now tuned": [64, 64, 32, 2, 2]}
    assert new["im2col_faster"]["H200"] == ["keep", "now tuned"]
    assert new["igemm_failed"]["H200"] == ["now failed"]
    assert new["tuned"]["H200"] == {"commit": "abc"}
    first = tc.merge_table({}, "G", {"k": ((128, 64, 16, 2, 2), None)})
    assert first["gpus"] == {"G": {"k": [128, 64, 16, 2, 2]}} and first["igemm_failed"] == {"G": []}


def test_table_write_is_atomic_and_select_tiles_reads_it(tmp_path, monkeypatch):
    path = tmp_path / "conv_tiles.json"
    key = conv_igemm.table_key("fwd", "tf32", 64, 64, 512 * 512)
    tc.write_json(path, tc.merge_table({}, "Some GPU", {key: ((64, 128, 16, 2, 2), False)}))
    table = conv_igemm.load_table(str(path))
    assert conv_igemm.select_tiles("fwd", "tf32", 64, 64, 512 * 512, table=table,
                                   gpu="Some GPU") == (64, 128, 16, 2, 2)
    assert conv_igemm.select_tiles("fwd", "tf32", 64, 64, 512 * 512, table=table,
                                   gpu="Other GPU") == conv_igemm.DEFAULT_TILES
    before = path.read_bytes()

    def fail(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        tc.write_json(path, tc.merge_table({}, "Some GPU", {key: (None, None)}))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv_tiles.json"]  # no temp left


def test_format_line_in_styles_form():
    rec = {"direction": "fwd", "precision": "tf32", "h": 1024, "w": 1024, "a_channels": 64,
           "out_channels": 64, "flop": tc.conv_flop(2**20, 64, 64), "status": "tuned",
           "pick": {"tiles": [128, 64, 16, 2, 2], "ms": 0.912, "rel_error": 1e-4},
           "im2col": {"ms": 1.83, "ok": True, "rel_error": 2e-4}}
    line = tc.format_line(rec, H100)
    rate = rec["flop"] / 0.912e-3
    assert line == (f"conv fwd tf32 | 1x1024x1024x64->64 | 0.912 ms | {rate / 1e12:.1f} TFLOP/s | "
                    f"{100 * rate / 494.7e12:.1f}% of dense TF32 peak | im2col 1.830 ms | "
                    f"tiles 128x64x16 w2x2")
    assert "(emulated)" in tc.format_line(rec, None, emulated=True)
    failed = dict(rec, status="failed", pick=None,
                  candidates=[{"tiles": [64, 64, 16, 2, 2], "ok": False, "rel_error": 0.5}])
    assert "FAILED: no tiles within 3e-03 (best 64x64x16 w2x2 err 5.0e-01)" in tc.format_line(failed, H100)


# ---- the GPU timer's loop, on a clock that is the host's -----------------------------------

class HostEvent:
    """cupy.cuda.Event's interface on the host clock: an event 'happens' when recorded."""

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def host_timer(spins):
    b = tc.GpuBackend.__new__(tc.GpuBackend)
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        get_elapsed_time=lambda a, e: (e.t - a.t) * 1e3))
    b.cp, b.start, b.end = fake, HostEvent(), HostEvent()
    b.spin = spins.append
    return b


def test_gpu_timer_samples_inner_calls_and_retakes_host_bound_ones():
    spins, calls = [], []
    b = host_timer(spins)

    def call():  # 0.1 ms per call; the 4th sample's calls take 5 ms each
        calls.append(1)
        slow = len(spins) == 4
        time.sleep(0.005 if slow else 0.0001)
    t = b.time(call)
    assert 1 < t["inner"] <= tc.MAX_INNER  # 0.1 ms calls: several per sample
    assert len(t["samples_ms"]) == tc.REPS and t["retaken"] == 1
    assert len(spins) == tc.REPS + 1 and spins[4] > spins[3]  # the spin grew after it
    assert t["calls"] == len(calls) == 2 + t["inner"] * (tc.REPS + 1)
    assert 0.1 <= t["ms"] < 1.0 and t["ms"] == statistics.median(t["samples_ms"])


# ---- whole runs ------------------------------------------------------------------------------

class StandIn(tc.EmuBackend):
    """A device that is NumPy: no emulator, no compiles; igemm is the reference
    with an error and a time chosen per tile shape (below), im2col likewise."""
    emulated = False
    has_im2col = True

    def __init__(self):
        self.xp, self.gpu, self.last = np, "Stand-in GPU", None

    def session(self):
        return contextlib.nullcontext()

    def precision(self, precision):
        return contextlib.nullcontext()

    def compile(self, kname, d):
        if d["BK"] == 32:
            raise RuntimeError("pretend NVRTC refused it")

    def time(self, fn):
        fn()
        ms = {"im2col": 0.5}.get(self.last, None)
        if ms is None:  # igemm: 128-row tiles fastest; fwd 128->128 slower than im2col
            ms = 0.2 if self.last[0] == 128 else 0.3
            if self.shape.key.startswith("fwd tf32 8->8"):
                ms += 1.0
        return {"ms": ms, "samples_ms": [ms], "inner": 1, "retaken": 0, "calls": 1}


def stand_in(monkeypatch):
    dev = StandIn()

    def igemm(self, tiles, precision):
        dev.last, dev.shape = tuple(tiles), self.shape
        self.reference_cpu()
        if tiles[1] == 128 or (self.shape.direction == "bwd" and self.shape.out_channels == 3):
            self.out *= np.float32(1.05)  # beyond every tolerance: a wrong kernel
        if tiles[0] == 64 and tiles[1] == 32:
            self.out[0, 0, 0, 0] = np.nan  # an output left unwritten

    def im2col(self):
        dev.last = "im2col"
        self.reference_cpu()
    monkeypatch.setattr(tc.Problem, "igemm", igemm)
    monkeypatch.setattr(tc.Problem, "im2col", im2col)
    return dev


def test_whole_run_on_a_stand_in_device(tmp_path, monkeypatch, capsys):
    table, out = tmp_path / "tiles.json", tmp_path / "tune.json"
    other = {"gpus": {"Another GPU": {"fwd tf32 64->64 2^18": [64, 64, 16, 2, 2]}},
             "im2col_faster": {"Another GPU": ["fwd tf32 64->64 2^18"]}}
    table.write_text(json.dumps(other))
    rc = tc.main(["--size", "16", "--channel-div", "16", "--precision", "tf32", "--precision",
                  "bf16", "--table", str(table), "--json", str(out)], backend=stand_in(monkeypatch))
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].startswith("device: Stand-in GPU | peaks") and lines[1].startswith("plan: 36 shapes")
    res = json.loads(out.read_text())
    assert [r["key"] for r in res["shapes"]] == \
        [s.key for s in tc.enumerate_shapes([16], ["tf32", "bf16"], channel_div=16)]
    by = {r["key"]: r for r in res["shapes"]}
    # every candidate was tried; the fastest that passed was taken
    for r in res["shapes"]:
        assert len(r["candidates"]) == len(tc.candidates_for(tc.Shape(
            r["direction"], r["precision"], r["a_channels"], r["out_channels"], r["h"], r["w"])))
        for c in r["candidates"]:
            assert c["ok"] == (c.get("rel_error", math.inf) <= tc.TOLERANCE[r["precision"]])
            if c["tiles"][2] == 32:
                assert c["stage"] == "compile" and "pretend NVRTC" in c["error"]
            if c["tiles"][1] == 128 or c["tiles"][:2] == [64, 32]:
                assert not c["ok"] and "ms" not in c
    r = by["fwd tf32 16->16 2^4"]
    assert r["status"] == "tuned" and r["pick"]["tiles"] == [128, 64, 16, 2, 2]
    assert r["im2col"]["ok"] and r["im2col"]["rel_error"] == 0 and r["im2col_faster"] is False
    assert by["fwd tf32 8->8 2^6"]["im2col_faster"] is True
    assert by["fwd bf16 16->16 2^4"]["im2col"] is None  # no bf16 im2col path
    failed = [k for k, r in by.items() if r["status"] == "failed"]
    assert sorted(failed) == ["bwd bf16 4->3 2^8", "bwd tf32 4->3 2^8"]
    assert "FAILED: bwd tf32 4->3 2^8" in text and rc == 1
    # the table: this GPU's passing keys, the other GPU kept
    t = json.loads(table.read_text())
    assert t["gpus"]["Another GPU"] == other["gpus"]["Another GPU"]
    assert t["im2col_faster"]["Another GPU"] == ["fwd tf32 64->64 2^18"]
    mine = t["gpus"]["Stand-in GPU"]
    assert set(mine) == {k for k, r in by.items() if r["status"] == "tuned"}
    assert all(mine[k] == by[k]["pick"]["tiles"] for k in mine)
    assert t["igemm_failed"]["Stand-in GPU"] == sorted(failed)
    assert t["im2col_faster"]["Stand-in GPU"] == ["fwd tf32 8->8 2^6"]
    # per-layer figures and totals: 26 convs per (size, precision)
    assert len(res["layers"]) == 2 * 26 and len(res["totals"]) == 2
    tot = {x["precision"]: x for x in res["totals"]}
    assert tot["tf32"]["igemm_ms"] is None and not tot["tf32"]["complete"]  # conv1_1's bwd failed
    assert tot["tf32"]["im2col_ms"] == pytest.approx(26 * 0.5)
    assert tot["bf16"]["im2col_ms"] is None and tot["bf16"]["best_ms"] is None
    assert res["compiles"]["failed"] >= 1 and res["skipped"] == [] and res["aborted"] is None


def test_budget_stops_new_shapes_and_lists_them(tmp_path, monkeypatch, capsys):
    out, table = tmp_path / "tune.json", tmp_path / "tiles.json"
    rc = tc.main(["--size", "16", "--channel-div", "16", "--precision", "fp32", "--budget-s",
                  "1e-9", "--json", str(out), "--table", str(table)], backend=stand_in(monkeypatch))
    res = json.loads(out.read_text())
    assert rc == 0 and len(res["skipped"]) == len(res["shapes"]) == 18
    assert all(r["status"] == "skipped" and "budget" in r["reason"] for r in res["shapes"])
    assert json.loads(table.read_text())["gpus"]["Stand-in GPU"] == {}
    assert "skipped: budget" in capsys.readouterr().out


def test_a_lost_context_stops_the_tune_and_keeps_what_was_measured(tmp_path, monkeypatch, capsys):
    dev = stand_in(monkeypatch)
    igemm = tc.Problem.igemm
    bad = "fwd fp32 8->8 2^6"

    def crashing(self, tiles, precision):
        if self.shape.key == bad:
            dev.gone = "cudaErrorIllegalAddress"
            raise RuntimeError("an illegal memory access was encountered")
        igemm(self, tiles, precision)
    monkeypatch.setattr(tc.Problem, "igemm", crashing)
    dev.gone = None
    monkeypatch.setattr(StandIn, "lost", lambda self: self.gone, raising=False)
    out, table = tmp_path / "tune.json", tmp_path / "tiles.json"
    rc = tc.main(["--size", "16", "--channel-div", "16", "--precision", "fp32", "--json", str(out),
                  "--table", str(table)], backend=dev)
    res = json.loads(out.read_text())
    status = [r["status"] for r in res["shapes"]]
    i = [r["key"] for r in res["shapes"]].index(bad)
    assert rc == 2 and "ABORTED" in capsys.readouterr().out
    assert status[i] == "aborted" and "illegal memory access" in res["aborted"]
    assert res["shapes"][i]["candidates"][0]["stage"] == "check"
    assert status[i + 1:] == ["skipped"] * (len(status) - i - 1)
    assert "tuned" in status[:i]
    assert set(json.loads(table.read_text())["gpus"]["Stand-in GPU"]) == \
        {r["key"] for r in res["shapes"][:i] if r["status"] == "tuned"}


def _emulator_build_error():
    """None if the emulation builds conv_igemm (the first --emulate candidate),
    else why not."""
    shape = tc.enumerate_shapes([tc.EMU_SIZE], ["tf32"], channel_div=tc.EMU_CHANNEL_DIV)[0]
    tiles = tc.candidates_for(shape, "emulate")[0]
    d = conv_igemm.defines(tiles, "tf32", shape.a_channels, shape.out_channels)
    try:
        emu = tc.EmuBackend()
        with emu.session():
            emu.compile(tc.KERNELS["fwd"], d)
    except (RuntimeError, ValueError, OSError) as e:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
    return None


@pytest.mark.slow
def test_emulated_run_end_to_end(tmp_path, capsys):
    why = _emulator_build_error()
    if why is not None:
        pytest.skip(f"the emulation cannot build kernels/conv_igemm.cu yet: {why}")
    table, out = tmp_path / "tiles.json", tmp_path / "tune.json"
    rc = tc.main(["--emulate", "--table", str(table), "--json", str(out)])  # all precisions
    text = capsys.readouterr().out
    assert rc == 0, text[-3000:]
    assert text.splitlines()[0].startswith("device: emulated (tests/emulation on the CPU")
    res = json.loads(out.read_text())
    shapes = tc.enumerate_shapes([tc.EMU_SIZE], tc.PRECISIONS, channel_div=tc.EMU_CHANNEL_DIV)
    assert [r["key"] for r in res["shapes"]] == [s.key for s in shapes]
    assert res["device"]["emulated"] and res["device"]["peaks"] is None
    for r in res["shapes"]:
        assert r["status"] == "tuned", r
        assert len(r["candidates"]) == 2 and r["im2col"] is None
        assert all(c["ok"] and c["emulated"] for c in r["candidates"])
        assert r["pick"]["rel_error"] <= tc.TOLERANCE[r["precision"]]
    assert all(x["tflops"] is None for x in res["layers"])  # no claims from the emulation
    t = json.loads(table.read_text())
    assert set(t["gpus"][tc.EMULATED_GPU]) == {s.key for s in shapes}
    assert "(emulated)" in text
