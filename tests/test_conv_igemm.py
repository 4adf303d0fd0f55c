"""cpstyle/ops/conv_igemm.py's host-side logic: tile rules, defines, the tuner's
table, operand rounding, and the engine's per-conv choice. The kernels themselves
run in tests/test_kernels_emulated.py (emulated) and tests/test_kernels_gpu.py."""
import numpy as np
import pytest

from cpstyle.ops import conv_igemm


def test_every_candidate_passes_the_kernel_rules():
    for tiles in conv_igemm.CANDIDATES + conv_igemm.NARROW_CANDIDATES + \
            (conv_igemm.DEFAULT_TILES, conv_igemm.NARROW_TILES):
        for prec in conv_igemm.PRECISIONS:
            assert conv_igemm.check_tiles(tiles, prec) == tuple(tiles) + (1,)
            assert conv_igemm.check_tiles(tuple(tiles) + (4,), prec)[5] == 4
    assert conv_igemm.splitk_work_size((64, 64, 16, 2, 2, 4), 512, 1024) == 4 * 512 * 1024
    assert conv_igemm.splitk_work_size((64, 64, 16, 2, 2), 512, 1024) == 0


@pytest.mark.parametrize("tiles,precision,why", [
    ((128, 64, 16, 3, 2), "tf32", "multiple of 16\\*WARPS_M"),
    ((128, 60, 16, 2, 2), "tf32", "multiple of 8\\*WARPS_N"),
    ((128, 64, 8, 2, 2), "bf16", "multiple of 16"),
    ((16, 8, 8, 2, 2), "tf32", "multiple of 16\\*WARPS_M"),
    ((256, 128, 32, 4, 2), "tf32", "48 KB"),
    ((128, 8, 16, 8, 1), "tf32", "B tile"),
    ((64, 64, 16, 2, 2, 0), "tf32", "positive"),
    ((64, 64, 16, 2), "tf32", "need"),
])
def test_bad_tiles_say_which_rule(tiles, precision, why):
    with pytest.raises(ValueError, match=why):
        conv_igemm.check_tiles(tiles, precision)


def test_defines_pick_float4_loads_only_where_they_fit():
    d = conv_igemm.defines((128, 64, 16, 2, 2), "tf32", 64, 128)
    assert (d["VEC_A"], d["VEC_B"], d["PREC"]) == (4, 4, 1)
    d = conv_igemm.defines((128, 64, 16, 2, 2), "bf16", 3, 64)  # conv1_1: 3 channels
    assert (d["VEC_A"], d["VEC_B"], d["PREC"]) == (1, 4, 2)
    d = conv_igemm.defines((128, 8, 16, 4, 1), "fp32", 64, 8)  # 8 channels, too few vectors
    assert (d["VEC_A"], d["VEC_B"], d["PREC"]) == (4, 1, 0)
    with pytest.raises(ValueError, match="unknown precision"):
        conv_igemm.defines((128, 64, 16, 2, 2), "fp16", 64, 64)


def test_round_operand_matches_hand_values():
    x = np.array([1.0, 1 + 2 ** -11, 1 + 2 ** -10 + 2 ** -11, -(1 + 2 ** -11), 1 + 2 ** -8,
                  1 + 3 * 2 ** -8, np.inf, np.nan], np.float32)
    t = conv_igemm.round_operand(x, "tf32")  # ties away from zero
    assert t[:6].tolist() == [1.0, 1 + 2 ** -10, 1 + 2 ** -9, -(1 + 2 ** -10), 1 + 2 ** -8,
                              1 + 3 * 2 ** -8]
    b = conv_igemm.round_operand(x, "bf16")  # ties to even
    assert b[:6].tolist() == [1.0, 1.0, 1.0, -1.0, 1.0, 1 + 2 ** -6]
    assert np.isinf(t[6]) and np.isnan(t[7]) and np.isnan(b[7])
    assert (conv_igemm.round_operand(x, "fp32")[:6] == x[:6]).all()


TABLE = {"gpus": {"GPU A": {conv_igemm.table_key("fwd", "tf32", 64, 64, 512 * 512): [64, 64, 16, 2, 2]}},
         "im2col_faster": {"GPU A": [conv_igemm.table_key("bwd", "tf32", 64, 3, 512 * 512)]},
         "igemm_failed": {"GPU A": [conv_igemm.table_key("fwd", "fp32", 3, 64, 512 * 512)]}}


def test_table_lookup():
    key = conv_igemm.table_key("fwd", "tf32", 64, 64, 500 * 520)  # rounds to 2^18
    assert key == "fwd tf32 64->64 2^18"
    sel = conv_igemm.select_tiles
    assert sel("fwd", "tf32", 64, 64, 512 * 512, TABLE, "GPU A") == (64, 64, 16, 2, 2)
    assert sel("fwd", "tf32", 64, 64, 512 * 512, TABLE, "GPU B") == conv_igemm.DEFAULT_TILES
    assert sel("bwd", "tf32", 64, 3, 512 * 512, TABLE, "GPU A") == conv_igemm.NARROW_TILES
    pref = conv_igemm.prefers_im2col
    assert pref("bwd", "tf32", 64, 3, 512 * 512, TABLE, "GPU A")
    assert pref("fwd", "fp32", 3, 64, 512 * 512, TABLE, "GPU A")       # failed: im2col
    assert not pref("bwd", "bf16", 64, 3, 512 * 512, TABLE, "GPU A")   # bf16: igemm only
    assert not pref("bwd", "tf32", 64, 3, 512 * 512, TABLE, "GPU B")
    assert not pref("fwd", "tf32", 64, 64, 512 * 512, TABLE, "GPU A")


def test_shipped_table_is_readable():
    data = conv_igemm.load_table(conv_igemm.TABLE_PATH)
    for gpu, entries in data.get("gpus", {}).items():
        for key, tiles in entries.items():
            prec = key.split()[1]
            conv_igemm.check_tiles(tiles, prec)


def test_engine_keeps_im2col_where_the_table_says(monkeypatch, rng):
    """conv="igemm" with a table that prefers im2col for conv1_1's forward at this
    size: that conv's forward runs im2col, every other pass igemm."""
    from cpstyle import VGG16
    from cpstyle.gpu_engine import GpuStyleTransfer
    from cpstyle.vgg16 import random_params
    from test_vgg16 import SMALL
    model = VGG16(random_params(SMALL, np.random.default_rng(3)), device="cpu")
    content = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    table = {"im2col_faster": {None: [conv_igemm.table_key("fwd", "tf32", 3, 4, 256)]}}
    monkeypatch.setattr(conv_igemm, "load_table", lambda path=None: table)
    monkeypatch.setattr(conv_igemm, "gpu_name", lambda: None)
    eng = GpuStyleTransfer(model, content, content, [4], [0, 4], 1.5, 10.0, 0.3,
                           precision="tf32", conv="igemm")
    assert eng.igemm[0] == (False, True)
    assert all(p == (True, True) for p in eng.igemm[1:])
    assert eng.cols is not None
    eng32 = GpuStyleTransfer(model, content, content, [4], [0, 4], 1.5, 10.0, 0.3,
                             precision="bf16")
    assert all(p == (True, True) for p in eng32.igemm) and not hasattr(eng32, "cols")


def test_split_candidates_only_where_tiles_are_few():
    conv5 = conv_igemm.split_candidates(512, 512, 32 * 32)      # conv5_x at 512²
    assert conv5 and all(len(t) == 6 and t[5] > 1 for t in conv5)
    for t in conv5:
        conv_igemm.check_tiles(t, "bf16")
    assert conv_igemm.split_candidates(64, 64, 512 * 512) == ()  # conv1_2: plenty of tiles
    assert conv_igemm.split_candidates(3, 64, 16 * 16) == ()    # K = 27: too few stages


def test_model_forward_on_igemm_matches_reference(rng):
    """VGG16.with_igemm: the forward the GPU engine's targets take, under the
    emulation, against the NumPy forward; float64 models and plain NumPy runs
    keep the reference convs."""
    from cpstyle import VGG16
    from cpstyle.vgg16 import random_params
    from emulation.harness import Emulator
    from test_vgg16 import SMALL
    model = VGG16(random_params(SMALL, np.random.default_rng(3)), device="cpu")
    x = rng.uniform(0, 255, (1, 16, 18, 3)).astype(np.float32)
    ref, _ = model.forward(x, [4, 9])
    fast = model.with_igemm("fp32")
    assert fast.igemm_precision == "fp32" and model.igemm_precision is None
    assert fast.kernels is model.kernels
    plain, _ = fast.forward(x, [4, 9])  # no emulator, NumPy: the reference convs
    assert all(np.array_equal(plain[k], ref[k]) for k in ref)
    emu = Emulator()
    with emu.installed():
        taps, _ = fast.forward(x, [4, 9])
    assert emu.launched.count("conv_igemm_forward_kernel") == 10
    for k in ref:
        np.testing.assert_allclose(taps[k], ref[k], rtol=1e-4, atol=1e-4 * np.abs(ref[k]).max())
