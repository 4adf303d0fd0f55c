"""cpstyle/presets.py: the presets, style_strength, and how style_transfer takes them."""
import inspect

import numpy as np
import pytest

import cpstyle
from cpstyle import VGG16, presets
from cpstyle.vgg16 import random_params
from test_vgg16 import SMALL


def small_model(rng):
    return VGG16(random_params(SMALL, rng), device="cpu")


def test_tutorial_preset_is_the_signatures_defaults():
    params = inspect.signature(cpstyle.style_transfer).parameters
    for key, value in presets.PRESETS["tutorial"].items():
        assert params[key].default == value, key
    # what the preset leaves out, style_transfer's defaults decide: the tutorial's
    assert params["preset"].default is None and presets.DEFAULT_PRESET == "tutorial"


def test_every_preset_value_is_a_style_transfer_keyword():
    params = inspect.signature(cpstyle.style_transfer).parameters
    for name, values in presets.PRESETS.items():
        assert set(values) <= set(params), name
        for key, deps in presets.COUPLED.items():
            assert key in params and set(deps) <= set(params)


@pytest.mark.parametrize("kw", [
    dict(preset="tutorial"),
    dict(preset="tutorial", style_strength=1.0),
    dict(content_layer_ids=(4,), style_layer_ids=tuple(range(13)), weight_content=1.5,
         weight_style=10.0, weight_denoise=0.3, step_size=10.0, gram_norm="none"),
])
def test_preset_tutorial_gives_the_same_image_as_no_preset(rng, kw):
    model = small_model(rng)
    img = rng.uniform(0, 255, (21, 19, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (17, 23, 3)).astype(np.float32)
    plain = cpstyle.style_transfer(img, style, num_iterations=4, seed=5, model=model)
    other = cpstyle.style_transfer(img, style, num_iterations=4, seed=5, model=model, **kw)
    assert np.array_equal(plain, other)


def test_settings_fill_what_is_not_given():
    q = presets.PRESETS["quality"]
    s = presets.settings("quality", {"weight_style": 3.0, "num_iterations": 7})
    assert s["weight_style"] == 3.0 and s["num_iterations"] == 7
    assert s["init"] == q["init"] and s["optimizer"] == q["optimizer"]
    assert presets.settings(None, {}) == presets.PRESETS["tutorial"]


def test_a_given_layer_list_drops_the_presets_layer_weights():
    s = presets.settings("quality", {"style_layer_ids": [0, 1]})
    assert s["style_layer_ids"] == [0, 1] and "style_layer_weights" not in s
    s = presets.settings("quality", {"style_layer_ids": [0, 1], "style_layer_weights": [1, 3]})
    assert s["style_layer_weights"] == [1, 3]
    s = presets.settings("tutorial", {"optimizer": "adam"})
    assert "step_size" not in s  # the tutorial's step belongs to its gd


def test_style_strength_scales_the_style_weight_of_a_constant_weight_run():
    q = presets.PRESETS["quality"]
    assert q["constant_weights"] is True
    s = presets.settings("quality", {}, 2.0)
    assert s["weight_style"] == 2 * q["weight_style"]
    assert s["num_iterations"] == q["num_iterations"] and s["weight_content"] == q["weight_content"]
    s = presets.settings("quality", {"weight_style": 10.0, "multiscale": True,
                                     "iterations_per_scale": 30}, 0.5)
    assert s["weight_style"] == 5.0 and s["iterations_per_scale"] == 30
    assert presets.settings("quality", {}, 1.0) == q
    with pytest.raises(ValueError, match=r"style_strength must be in \[0.2, 5\]"):
        presets.settings("quality", {}, 9.0)


def test_style_strength_scales_the_iterations_of_a_reciprocal_content_start():
    q = presets.PRESETS["quality"]
    s = presets.settings("quality", {"constant_weights": False}, 2.0)
    assert s["num_iterations"] == 2 * q["num_iterations"]
    # the preset's weights carry its constant weights' scales: dropped with them
    assert not {"weight_content", "weight_style", "weight_denoise", "denoise_norm"} & set(s)
    s = presets.settings("quality", {"constant_weights": False, "num_iterations": 10,
                                     "weight_style": 4.0}, 0.5)
    assert s["num_iterations"] == 5 and s["weight_style"] == 4.0  # the weights stay
    s = presets.settings("quality", {"constant_weights": False, "multiscale": True,
                                     "iterations_per_scale": 30}, 2.0)
    assert s["iterations_per_scale"] == 60
    assert presets.settings("quality", {"constant_weights": False,
                                        "num_iterations": 0}, 3.0)["num_iterations"] == 0
    assert presets.settings("tutorial", {"init": "content"}, 1.5)["num_iterations"] == 180
    with pytest.raises(ValueError, match="starts from the content.*from 'noise'"):
        presets.settings("tutorial", {}, 2.0)
    assert presets.settings("tutorial", {}, 1.0) == presets.PRESETS["tutorial"]


def test_style_strength_reaches_the_run(rng):
    seen = []
    img = rng.uniform(0, 255, (20, 20, 3)).astype(np.float32)
    cpstyle.style_transfer(img, img, num_iterations=4, model=small_model(rng), init="content",
                           style_strength=2.5, callback=seen.append, callback_every=1)
    assert seen[-1].iteration == seen[-1].num_iterations == 10


def test_a_preset_takes_an_image_start(rng):
    # an array as init under a preset: once a ValueError ("truth value of an
    # array is ambiguous") from the preset's init check
    model = small_model(rng)
    img = rng.uniform(0, 255, (20, 20, 3)).astype(np.float32)
    start = rng.uniform(0, 255, (20, 20, 3)).astype(np.float32)
    out = cpstyle.style_transfer(img, img, num_iterations=2, model=model, preset="quality",
                                 init=start)
    assert out.shape == img.shape
    with pytest.raises(ValueError, match="starts from the content.*from 'an image'"):
        cpstyle.style_transfer(img, img, num_iterations=2, model=model, preset="quality",
                               init=start, style_strength=2.0, constant_weights=False)


@pytest.mark.parametrize("kw, match", [
    (dict(preset="best"), "unknown preset 'best'"),
    (dict(preset=3), "unknown preset"),
    (dict(style_strength=0), "style_strength must be a finite number > 0"),
    (dict(style_strength=20), r"style_strength must be in \[0.2, 5\]"),
    (dict(style_strength=2), "starts from the content"),
    (dict(style_strength="x"), "style_strength must be a number"),
])
def test_bad_preset_and_strength(rng, kw, match):
    img = rng.uniform(0, 255, (20, 20, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        cpstyle.style_transfer(img, img, num_iterations=1, model=small_model(rng), **kw)


@pytest.mark.weights
def test_quality_preset_runs_and_keeps_the_content(vgg_cpu):
    content = cpstyle.load_image(cpstyle.images.demo_paths()[0], max_size=48)
    style = cpstyle.load_image(cpstyle.images.demo_paths()[1], max_size=48)
    out = cpstyle.style_transfer(content, style, preset="quality", num_iterations=5,
                                 model=vgg_cpu, seed=0)
    assert out.shape == content.shape and np.isfinite(out).all()
    assert 0 <= out.min() and out.max() <= 255
    assert not np.array_equal(out, content)
    # a quality run starts from the content: 5 steps leave it far closer to the
    # content than the tutorial's noise start is
    assert np.abs(out - content).mean() < 0.5 * np.abs(128.5 - content).mean()
