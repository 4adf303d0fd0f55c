"""The on-device driver, run on the CPU: GpuStyleTransfer with NumPy arrays,
every kernel launch going through the host emulation (tests/emulation), against
the NumPy reference loop. This is CI's check of the GPU driver's logic."""
import numpy as np
import pytest

import cpstyle
from cpstyle import VGG16
from cpstyle.gpu_engine import GpuStyleTransfer
from cpstyle.vgg16 import random_params
from emulation.harness import Emulator
from gradcheck import assert_close
from test_vgg16 import SMALL


@pytest.fixture(scope="module")
def emulator():
    return Emulator()


@pytest.mark.parametrize("gram_norm", ["none", "hw"])
def test_emulated_engine_matches_reference_loop(gram_norm, emulator, rng):
    model = VGG16(random_params(SMALL, np.random.default_rng(3)), device="cpu")
    content = rng.uniform(0, 255, (17, 21, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (16, 19, 3)).astype(np.float32)
    layers = dict(content_layer_ids=[4, 9], style_layer_ids=[0, 4, 12])
    seen_ref, seen_emu = [], []
    ref = cpstyle.style_transfer(content, style, num_iterations=3, seed=2, model=model,
                                 callback=seen_ref.append, callback_every=2,
                                 gram_norm=gram_norm, **layers)
    with emulator.installed():
        eng = GpuStyleTransfer(model, content, style, layers["content_layer_ids"],
                               layers["style_layer_ids"], 1.5, 10.0, 0.3, gram_norm=gram_norm)
        x0 = cpstyle.driver.initial_image(content.shape, 2)
        out = eng.run(x0, 3, 10.0, callback=seen_emu.append, callback_every=2)
    assert [p.iteration for p in seen_emu] == [p.iteration for p in seen_ref] == [0, 2, 3]
    for pr, pe in zip(seen_ref, seen_emu):
        for k in pr.losses:
            assert pe.losses[k] == pytest.approx(pr.losses[k], rel=1e-4), (pr.iteration, k)
            assert pe.adj[k] == pytest.approx(pr.adj[k], rel=1e-4), (pr.iteration, k)
        assert_close(pe.image, pr.image, atol=1e-2, rtol=0, what=f"image at {pr.iteration}")
    assert_close(out, ref, atol=1e-2, rtol=0, what="final image")
    for k in ("im2col_kernel", "maxpool_backward_kernel", "update_kernel", "adj_weights_kernel"):
        assert k in emulator.launched, k
