import os

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CuPy and a CUDA device")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "weights: needs the real VGG-16 weights file")


def _gpu_ok():
    try:
        from cpstyle.backend import gpu_available
        return gpu_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    gpu = _gpu_ok()
    skip = pytest.mark.skip(reason="no CuPy / CUDA device")
    for item in items:
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def weights_path():
    from cpstyle.weights import default_path
    p = default_path()
    if not os.path.exists(p):
        pytest.skip(f"real VGG-16 weights not at {p} (run `cpstyle weights fetch`)")
    return p


@pytest.fixture(scope="session")
def vgg_cpu(weights_path):
    from cpstyle import VGG16
    return VGG16.load(device="cpu", path=weights_path)


@pytest.fixture(params=["rows", "one-gemm", "winograd"])
def conv_form(request, monkeypatch):
    """Run a test with every NumPy conv in the row-shifted form (ops/conv.py,
    whatever its size), with none (the one-GEMM lowerings), or with every one
    in the Winograd form (ops/winograd.py) in blocks of one tile row, so block
    edges and the split over threads are crossed even on small images."""
    from cpstyle.ops import blas, conv, winograd
    if request.param != "one-gemm" and not blas.available(np.float64):
        pytest.skip("NumPy's BLAS is not reachable here (ops/blas.py)")
    if request.param == "winograd":
        monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
        monkeypatch.setattr(conv, "WINOGRAD_MIN_WORK", 1)
        monkeypatch.setattr(winograd, "MIN_TILES", 1)
        monkeypatch.setattr(winograd, "BLOCK_BYTES", 1)
        return request.param
    monkeypatch.setattr(conv, "WINOGRAD", False)
    if request.param == "rows":
        monkeypatch.setattr(conv, "ROWS_MIN_PIXELS", 1)
        monkeypatch.setattr(conv, "ROWS_MIN_COLUMNS", 1)
    else:
        monkeypatch.setattr(conv, "ROWS_FORM", False)
    return request.param
