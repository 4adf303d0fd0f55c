import numpy as np
import pytest

import cpstyle
from cpstyle import VGG16
from cpstyle.driver import Interrupted, initial_image
from cpstyle.vgg16 import random_params
from test_vgg16 import SMALL


def small_model(rng):
    return VGG16(random_params(SMALL, rng), device="cpu")


def test_initial_image_is_seeded_uniform_plus_128():
    a, b = initial_image((20, 30, 3), 7), initial_image((20, 30, 3), 7)
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert 128 <= a.min() and a.max() < 129
    assert not np.array_equal(a, initial_image((20, 30, 3), 8))


def test_callback_every_k_and_at_last(rng):
    seen = []
    img = rng.uniform(0, 255, (16, 18, 3)).astype(np.float32)
    out = cpstyle.style_transfer(img, img, content_layer_ids=[2], style_layer_ids=[0, 4],
                                 num_iterations=7, callback_every=3, device="cpu", seed=1,
                                 model=small_model(rng), callback=seen.append)
    assert [p.iteration for p in seen] == [0, 3, 6, 7]
    assert set(seen[0].losses) == {"content", "style", "denoise"}
    for p in seen:
        for k in p.losses:
            assert p.adj[k] == pytest.approx(1 / (p.losses[k] + 1e-10), rel=1e-5)
    assert np.array_equal(seen[-1].image, out)
    assert out.shape == img.shape and out.dtype == np.float32


def test_zero_iterations_returns_initial_image(rng):
    img = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    out = cpstyle.style_transfer(img, img, content_layer_ids=[1], style_layer_ids=[1],
                                 num_iterations=0, device="cpu", seed=3, model=small_model(rng))
    assert np.array_equal(out, initial_image(img.shape, 3))


def test_ctrl_c_keeps_the_last_image(rng):
    img = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)

    def cb(p):
        if p.iteration == 4:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as e:
        cpstyle.style_transfer(img, img, content_layer_ids=[1], style_layer_ids=[1],
                               num_iterations=10, callback=cb, callback_every=2,
                               device="cpu", seed=3, model=small_model(rng))
    assert e.value.iteration == 4 and e.value.image.shape == img.shape
    assert isinstance(e.value, KeyboardInterrupt)


@pytest.mark.parametrize("kw, match", [
    (dict(num_iterations=-1), "num_iterations"),
    (dict(num_iterations=2.5), "num_iterations"),
    (dict(step_size=0), "step_size"),
    (dict(device="tpu"), "device"),
    (dict(style_layer_ids=[13]), "13"),
])
def test_bad_arguments(kw, match, rng):
    img = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    args = dict(content_layer_ids=[1], style_layer_ids=[1], num_iterations=1, device="cpu",
                model=small_model(rng))
    args.update(kw)
    if "device" in kw:
        del args["model"]
    with pytest.raises(ValueError, match=match):
        cpstyle.style_transfer(img, img, **args)


def test_nan_content_is_refused(rng):
    img = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    bad = img.copy()
    bad[3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="content image"):
        cpstyle.style_transfer(bad, img, model=small_model(rng), num_iterations=1)


@pytest.mark.weights
@pytest.mark.slow
def test_real_weights_30_iterations_lower_style_loss_10x_and_are_reproducible(vgg_cpu):
    content = cpstyle.load_image(cpstyle.images.demo_paths()[0], max_size=128)
    style = cpstyle.load_image(cpstyle.images.demo_paths()[1], max_size=128)
    runs = []
    for _ in range(2):
        seen = []
        out = cpstyle.style_transfer(content, style, content_layer_ids=[4],
                                     style_layer_ids=list(range(13)), num_iterations=30,
                                     seed=42, model=vgg_cpu, callback=seen.append)
        runs.append((out, seen))
    (a, seen), (b, _) = runs
    first, last = seen[0].losses["style"], seen[-1].losses["style"]
    assert seen[-1].iteration == 30
    assert last * 10 <= first, f"style loss {first:.4g} -> {last:.4g}: less than 10x lower"
    assert np.array_equal(a, b)
