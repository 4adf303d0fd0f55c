"""bench/lpips.py: the im2col conv and pool against naive loops, LPIPS and style_gap
properties on the bundled images, the loader's checks, and (with torch) features and
LPIPS against a torch re-implementation of LPIPS v0.1 'alex' in float64.
Needs the AlexNet file (`python -m bench.lpips fetch`); the module is skipped without it."""
import shutil
import tracemalloc

import h5py
import numpy as np
import pytest

from bench import lpips as L
from cpstyle import load_image
from cpstyle.images import demo_paths

if not L.default_path().exists():
    pytest.skip(f"AlexNet LPIPS weights not at {L.default_path()} "
                f"(run `python -m bench.lpips fetch`)", allow_module_level=True)


@pytest.fixture(scope="module")
def net():
    return L.AlexNet.load()


@pytest.fixture(scope="module")
def images():
    """(content, style) at most 128 px: tubingen 128x96, starry_night another size."""
    c, s = demo_paths()
    return load_image(c, max_size=128), load_image(s, max_size=112)


def _close(got, ref, atol, rtol, what):
    err = np.abs(np.asarray(got, np.float64) - ref)
    bad = err > atol + rtol * np.abs(ref)
    if bad.any():
        i = np.unravel_index(np.argmax(bad), bad.shape)
        rel = err / np.maximum(np.abs(ref), 1e-30)
        pytest.fail(f"{what}: max abs err {err.max():.3g}, max rel err {rel.max():.3g}, "
                    f"first bad index {i}: {np.asarray(got)[i]} vs {ref[i]}")


def _blur(x, r=2):
    """(2r+1)^2 box blur, edges repeated."""
    k = 2 * r + 1
    p = np.pad(x, ((r, r), (r, r), (0, 0)), mode="edge")
    y = sum(p[i:i + x.shape[0]] for i in range(k)) / k
    return (sum(y[:, j:j + x.shape[1]] for j in range(k)) / k).astype(np.float32)


# ---------------------------------------------------------------- conv and pool

def _conv_naive(x, kernel, bias, stride, pad):
    x = np.pad(x.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)))
    kh, kw, _, cout = kernel.shape
    ho, wo = (x.shape[0] - kh) // stride + 1, (x.shape[1] - kw) // stride + 1
    y = np.empty((ho, wo, cout))
    for i in range(ho):
        for j in range(wo):
            patch = x[i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[i, j] = np.einsum("abc,abcd->d", patch, kernel.astype(np.float64))
    return np.maximum(y + bias, 0)


@pytest.mark.parametrize("shape,kshape,stride,pad", [
    ((23, 19, 3), (11, 11, 3, 8), 4, 2),   # conv1's form, odd sizes
    ((26, 31, 3), (11, 11, 3, 5), 4, 2),   # (H + 4 - 11) not a multiple of 4
    ((7, 9, 6), (5, 5, 6, 7), 1, 2),
    ((1, 3, 4), (3, 3, 4, 3), 1, 1),
    ((9, 8, 3), (3, 5, 3, 2), 2, 0),
])
@pytest.mark.parametrize("cols_bytes", [L.COLS_BYTES, 1])  # 1: one output row per block
def test_conv_matches_naive(rng, monkeypatch, shape, kshape, stride, pad, cols_bytes):
    monkeypatch.setattr(L, "COLS_BYTES", cols_bytes)
    x = rng.standard_normal(shape).astype(np.float32)
    k = rng.standard_normal(kshape).astype(np.float32)
    b = rng.standard_normal(kshape[3]).astype(np.float32)
    got = L.conv_relu_forward(x, k, b, stride, pad)
    ref = _conv_naive(x, k, b, stride, pad)
    assert got.shape == ref.shape and got.dtype == np.float32
    _close(got, ref, atol=1e-5 * np.abs(ref).max(), rtol=1e-5, what="conv_relu_forward")


@pytest.mark.parametrize("shape", [(3, 3, 2), (7, 8, 3), (12, 11, 1)])
def test_maxpool_matches_naive(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    ho, wo = (shape[0] - 3) // 2 + 1, (shape[1] - 3) // 2 + 1
    ref = np.array([[x[2 * i:2 * i + 3, 2 * j:2 * j + 3].max(axis=(0, 1)) for j in range(wo)]
                    for i in range(ho)])
    np.testing.assert_array_equal(L.maxpool_forward(x), ref)


def test_features_shapes_and_memory(net, rng):
    x = rng.uniform(0, 255, (512, 512, 3)).astype(np.float32)
    tracemalloc.start()
    try:
        f = net.features(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [a.shape for a in f] == [(127, 127, 64), (63, 63, 192), (31, 31, 384),
                                    (31, 31, 256), (31, 31, 256)]
    assert all(a.dtype == np.float32 and a.min() >= 0 for a in f)
    assert peak < 200e6, f"512x512 features peaked at {peak / 1e6:.0f} MB"


def test_too_small_refused(net):
    with pytest.raises(ValueError, match="31"):
        net.features(np.zeros((30, 64, 3), np.float32))


# ---------------------------------------------------------------- LPIPS and style_gap

def test_lpips_identity_and_symmetry(net, images):
    c, _ = images
    b = np.clip(c + 5, 0, 255)
    assert abs(L.lpips(c, c, net)) < 1e-7
    assert abs(L.lpips(c, b, net) - L.lpips(b, c, net)) < 1e-7


def test_lpips_orders_distortions(net, images, rng):
    c, _ = images
    bright = L.lpips(c, np.clip(c + 5, 0, 255), net)
    blur = L.lpips(c, _blur(c), net)
    noise = L.lpips(c, rng.uniform(0, 255, c.shape).astype(np.float32), net)
    assert 0 < bright < blur < noise, (bright, blur, noise)
    assert bright < 0.05 * noise, (bright, noise)


def test_style_gap_endpoints(net, images):
    c, s = images
    assert abs(L.style_gap(c, s, c, net) - 1) < 1e-6
    assert abs(L.style_gap(s, s, c, net)) < 1e-6


def test_scorer_matches_functions(net, images, rng):
    c, s = images
    sc = L.Scorer(c, s, net)
    for out in (np.clip(c + 5, 0, 255), _blur(c), rng.uniform(0, 255, c.shape).astype(np.float32)):
        got = sc.score(out)
        assert got["lpips"] == pytest.approx(L.lpips(out, c, net), rel=1e-12, abs=1e-12)
        assert got["style_gap"] == pytest.approx(L.style_gap(out, s, c, net), rel=1e-12)
    with pytest.raises(ValueError, match="shape"):
        sc.score(c[:64])


# ---------------------------------------------------------------- the file

def test_tampered_file_refused(tmp_path):
    bad = tmp_path / "alexnet_lpips.h5"
    shutil.copyfile(L.default_path(), bad)
    L.load(bad)
    with h5py.File(bad, "r+") as f:
        f["conv3/kernel"][1, 1, 7, 9] += np.float32(0.5)
    with pytest.raises(ValueError, match=f"{bad}.*content digest"):
        L.load(bad)


def test_missing_file_names_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m bench.lpips fetch"):
        L.load(tmp_path / "nope.h5")


# ---------------------------------------------------------------- torch cross-check

def _torch_lpips(net, a, b):
    """LPIPS v0.1 'alex' as the PyTorch original writes it, NCHW, float64; its
    constants written out here, not taken from bench/lpips.py."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shift = torch.tensor([-.030, -.088, -.188], dtype=torch.float64)[None, :, None, None]
    scale = torch.tensor([.458, .448, .450], dtype=torch.float64)[None, :, None, None]
    convs = [(torch.from_numpy(k.transpose(3, 2, 0, 1).astype(np.float64)),  # HWIO -> OIHW
              torch.from_numpy(bias.astype(np.float64))) for k, bias in net.convs]

    def feats(img):
        x = torch.from_numpy(img.astype(np.float64)).permute(2, 0, 1)[None]
        x = (x / 255 * 2 - 1 - shift) / scale
        out = []
        for i, ((w, bias), s, p) in enumerate(zip(convs, (4, 1, 1, 1, 1), (2, 2, 1, 1, 1))):
            if i in (1, 2):
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(F.conv2d(x, w, bias, stride=s, padding=p))
            out.append(x)
        return out

    def normalize(f):
        return f / (torch.sqrt(torch.sum(f ** 2, dim=1, keepdim=True)) + 1e-10)

    fa, fb = feats(a), feats(b)
    val = 0
    for x, y, w in zip(fa, fb, net.lins):
        lin = torch.from_numpy(w.astype(np.float64))[None, :, None, None]
        val = val + F.conv2d((normalize(x) - normalize(y)) ** 2, lin).mean([2, 3])
    return [f[0].permute(1, 2, 0).numpy() for f in fa], float(val)


def test_against_torch(net, images, rng):
    c, _ = images
    a = np.ascontiguousarray(c[10:77, 20:73])  # 67x53
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.float32)
    ref_feats, ref_lpips = _torch_lpips(net, a, b)
    for i, (got, ref) in enumerate(zip(net.features(a), ref_feats)):
        assert got.shape == ref.shape, (i, got.shape, ref.shape)
        _close(got, ref, atol=1e-4 * np.abs(ref).max(), rtol=1e-4, what=f"relu{i + 1}")
    assert L.lpips(a, b, net) == pytest.approx(ref_lpips, rel=1e-4)
