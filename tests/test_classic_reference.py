"""bench/classic_reference.py (Gatys' recipe in PyTorch, the quality benchmark's
anchor) on tiny images, 10 L-BFGS iterations: its objective agrees with one
written out here, the run lowers it, and a larger style weight K trades content
for style. Needs torch and the real weights (CI has neither and skips)."""
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "cpstyle", "data")
ITERATIONS = 10

pytestmark = pytest.mark.weights
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def setup(weights_path):
    sys.path.insert(0, REPO)
    import cpstyle
    from bench.torch_reference import TorchVGG16, load_weights
    content = cpstyle.load_image(os.path.join(DATA, "tubingen.jpg"), max_size=48)  # 36x48
    style = cpstyle.load_image(os.path.join(DATA, "starry_night.jpg"), max_size=48)  # 30x48
    return TorchVGG16(load_weights(weights_path)), content, style


def losses(model, image, content, style):
    """(L_c, Σ_l 1e3/C_l²·mean((G_l - A_l)²)) of `image`, written out from the
    recipe: conv4_2 = tap 8, relu1_1..5_1 = taps 0, 2, 4, 7, 10, G = F·Fᵀ/(H·W)."""
    def taps(img):
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
        return model.forward(x, 11)

    def g(f):
        m = f[0].reshape(f.shape[1], -1).double()  # (C, H·W)
        return m @ m.T / m.shape[1]

    with torch.no_grad():
        fx, fc, fs = taps(image), taps(content), taps(style)
        lc = float(((fx[8].double() - fc[8].double()) ** 2).mean())
        ls = sum(1e3 / fx[i].shape[1] ** 2 * float(((g(fx[i]) - g(fs[i])) ** 2).mean())
                 for i in (0, 2, 4, 7, 10))
    return lc, ls


def test_classic_style_transfer_lowers_its_objective_and_k_trades_content_for_style(setup):
    from bench.classic_reference import classic_style_transfer
    model, content, style = setup
    _, ls0 = losses(model, content, content, style)
    runs = {}
    for k in (100.0, 10000.0):
        log = []
        img, info = classic_style_transfer(content, style, style_weight=k,
                                           num_iterations=ITERATIONS, model=model,
                                           callback=lambda e, l: log.append(l))
        assert img.shape == content.shape and img.dtype == np.float32
        assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 255.0
        assert info["iterations"] == ITERATIONS
        assert len(log) == info["evaluations"] >= info["iterations"]
        assert info["seconds"] > 0
        # the first evaluation is at the content image: L = K·L_s(content)
        ref, got = k * ls0, log[0]["total"]
        assert abs(got - ref) <= 1e-4 * ref, (got, ref)
        lc, ls = losses(model, img, content, style)
        assert lc + k * ls < 0.8 * k * ls0, (k, lc, ls, ls0)
        runs[k] = lc, ls
    (lc_lo, ls_lo), (lc_hi, ls_hi) = runs[100.0], runs[10000.0]
    assert ls_hi < ls_lo and lc_hi > lc_lo, runs
