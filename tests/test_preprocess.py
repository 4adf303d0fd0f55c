import numpy as np
import pytest

from cpstyle.ops.preprocess import (preprocess_backward_cpu, preprocess_forward_cpu,
                                    preprocess_params)
from gradcheck import directional_check


def test_torch_preprocessing_formula(rng):
    x = rng.uniform(0, 255, (1, 3, 4, 3))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    y = preprocess_forward_cpu(x, *preprocess_params("torch", mean, std))
    np.testing.assert_allclose(y, (x / 255 - mean) / std, rtol=1e-12)


def test_caffe_preprocessing_is_bgr_minus_mean(rng):
    x = rng.uniform(0, 255, (1, 3, 4, 3))
    mean = (103.939, 116.779, 123.68)
    y = preprocess_forward_cpu(x, *preprocess_params("caffe", mean, (1, 1, 1)))
    np.testing.assert_allclose(y, x[..., ::-1] - mean, rtol=1e-12)


@pytest.mark.parametrize("kind", ["torch", "caffe"])
def test_preprocess_gradcheck(kind, rng):
    scale, shift, bgr = preprocess_params(kind, (0.4, 0.5, 0.6), (0.2, 0.3, 0.25))
    x = rng.uniform(0, 255, (1, 5, 3, 3))
    r = rng.standard_normal(x.shape)
    dx = preprocess_backward_cpu(r, scale, bgr)
    err = directional_check(lambda z: float(np.sum(preprocess_forward_cpu(z, scale, shift, bgr) * r)),
                            dx, x, rng)
    assert err < 1e-6


def test_unknown_preprocessing():
    with pytest.raises(ValueError, match="pre-processing"):
        preprocess_params("tf", (0, 0, 0), (1, 1, 1))
