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


# lowering "all": every conv in the col2im form where it has no more columns
# (what bench.profile_ops --col2im all times on a GPU), not only conv1_1's backward
# "every layer": the default lowering on the tutorial's layers (a style layer at every
# depth, so every case of the backward's ping-pong buffers);
# lowering "igemm": every conv by kernels/conv_igemm.cu in fp32 (3xTF32), small tiles,
# the forward split-K
@pytest.mark.parametrize("gram_norm, lowering", [("none", "default"), ("hw", "default"),
                                                 ("none", "all"), ("hw", "igemm"),
                                                 ("none", "every layer")])
def test_emulated_engine_matches_reference_loop(gram_norm, lowering, emulator, rng, monkeypatch):
    conv_impl = "igemm" if lowering == "igemm" else "im2col"
    if conv_impl == "igemm":
        from cpstyle.ops import conv_igemm
        # split-K forward (2 splits), one warp's tiles backward
        monkeypatch.setattr(conv_igemm, "select_tiles", lambda d, *a, **k:
                            (32, 16, 16, 2, 1, 2) if d == "fwd" else (16, 8, 16, 1, 1))
    if lowering == "all":
        from cpstyle.ops import conv
        monkeypatch.setattr(conv, "gpu_backward_uses_col2im", lambda cin, cout: cin <= cout)
        monkeypatch.setattr(conv, "gpu_forward_uses_col2im", lambda cin, cout: cout <= cin)
    model = VGG16(random_params(SMALL, np.random.default_rng(3)), device="cpu")
    content = rng.uniform(0, 255, (17, 21, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (16, 19, 3)).astype(np.float32)
    layers = dict(content_layer_ids=[4, 9], style_layer_ids=[0, 4, 12])
    if lowering == "every layer":  # the tutorial's: a style gradient beside every pool's
        layers = dict(content_layer_ids=[4], style_layer_ids=list(range(13)))
    seen_ref, seen_emu = [], []
    ref = cpstyle.style_transfer(content, style, num_iterations=3, seed=2, model=model,
                                 callback=seen_ref.append, callback_every=2,
                                 gram_norm=gram_norm, **layers)
    emulator.launched.clear()
    with emulator.installed():
        eng = GpuStyleTransfer(model, content, style, layers["content_layer_ids"],
                               layers["style_layer_ids"], 1.5, 10.0, 0.3, gram_norm=gram_norm,
                               conv=conv_impl)
        x0 = cpstyle.driver.initial_image(content.shape, 2)
        out = eng.run(x0, 3, 10.0, callback=seen_emu.append, callback_every=2)
    assert [p.iteration for p in seen_emu] == [p.iteration for p in seen_ref] == [0, 2, 3]
    for pr, pe in zip(seen_ref, seen_emu):
        for k in pr.losses:
            assert pe.losses[k] == pytest.approx(pr.losses[k], rel=1e-4), (pr.iteration, k)
            assert pe.adj[k] == pytest.approx(pr.adj[k], rel=1e-4), (pr.iteration, k)
        assert_close(pe.image, pr.image, atol=1e-2, rtol=0, what=f"image at {pr.iteration}")
    assert_close(out, ref, atol=1e-2, rtol=0, what="final image")
    kernels = ["maxpool_backward_kernel", "update_kernel", "adj_weights_kernel"]
    if conv_impl == "igemm":
        kernels += ["conv_igemm_forward_splitk_kernel", "splitk_sum_bias_relu_kernel",
                    "conv_igemm_backward_kernel"]
        assert "im2col_kernel" not in emulator.launched and eng.conv == "igemm"
        assert not hasattr(eng, "cols")  # no im2col buffer
    else:
        kernels += ["im2col_kernel"]
    if lowering == "all":
        kernels += ["col2im_kernel", "col2im_bias_relu_kernel"]
    for k in kernels:
        assert k in emulator.launched, k


def test_emulated_engine_bf16(emulator, rng, monkeypatch):
    """bf16 (always the igemm convolutions) against the fp32 engine at the same x:
    losses to 3%, the gradient's direction to cos >= 0.995 (bf16 keeps 8 bits:
    measured 0.9991 here, and 0.9966 from the near-constant noise start, where a
    3-step run's image then drifts by up to 56 of 255: a trajectory, not a check).
    Then a run: finite, and the objective goes down as the reference's does."""
    from cpstyle.ops import conv_igemm
    monkeypatch.setattr(conv_igemm, "select_tiles", lambda *a, **k: (16, 8, 16, 1, 1))
    model = VGG16(random_params(SMALL, np.random.default_rng(3)), device="cpu")
    content = rng.uniform(0, 255, (16, 18, 3)).astype(np.float32)
    style = rng.uniform(0, 255, (16, 16, 3)).astype(np.float32)
    x = rng.uniform(0, 255, content.shape).astype(np.float32)
    args = (model, content, style, [4], [0, 4, 9], 1.5, 10.0, 0.3)
    emulator.launched.clear()
    seen = []
    with emulator.installed():
        out = {}
        for prec in ("fp32", "bf16"):
            eng = GpuStyleTransfer(*args, precision=prec)
            assert eng.conv == ("igemm" if prec == "bf16" else "im2col")
            eng.x[...] = x[None]
            eng.evaluate()
            out[prec] = (eng.losses.copy(), eng.grad.ravel().copy())
        img = eng.run(x, 3, 10.0, callback=seen.append, callback_every=1)
    assert "conv_igemm_forward_kernel" in emulator.launched
    assert "conv_igemm_backward_kernel" in emulator.launched
    (l32, g32), (l16, g16) = out["fp32"], out["bf16"]
    # the content loss is an MSE of differences of features: 1.5% measured here
    np.testing.assert_allclose(l16, l32, rtol=3e-2)
    cos = float(g16 @ g32 / np.linalg.norm(g16) / np.linalg.norm(g32))
    assert cos >= 0.995, cos
    assert np.isfinite(img).all()
    objective = [p.objective for p in seen]
    assert objective[-1] < objective[0], objective


def test_conv_switch():
    from cpstyle.gpu_engine import check_conv
    assert check_conv("igemm", "fp32") == "igemm"
    assert check_conv(None, "bf16") == "igemm"
    with pytest.raises(ValueError, match="bf16"):
        check_conv("im2col", "bf16")
    with pytest.raises(ValueError, match="unknown conv"):
        check_conv("winograd", "fp32")


def test_conv_switch_env(monkeypatch):
    from cpstyle.gpu_engine import check_conv
    monkeypatch.delenv("CPSTYLE_CONV", raising=False)
    assert check_conv(None, "tf32") == "im2col"  # off by default until a GPU run decides
    monkeypatch.setenv("CPSTYLE_CONV", "igemm")
    assert check_conv(None, "tf32") == "igemm"
    monkeypatch.setenv("CPSTYLE_CONV", "fast")
    with pytest.raises(ValueError, match="CPSTYLE_CONV"):
        check_conv(None, "fp32")


def test_engine_does_not_import_the_driver():
    """The dependency runs one way: driver -> gpu_engine (issue 11, item 5)."""
    import ast
    import inspect
    from cpstyle import gpu_engine
    tree = ast.parse(inspect.getsource(gpu_engine))
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert "driver" not in names and "cpstyle.driver" not in names, names


# Issue #5's options on the engine: two runs that between them take every
# option that changes the loop, against style_transfer's reference loop.
OPTION_RUNS = {
    "adam": dict(optimizer="adam", learning_rate=4.0, constant_weights=True, pooling="avg",
                 content_layer_weights=[3, 1], style_blend_weights=[0.7, 0.3], init="blend",
                 kernels=("adam_kernel", "avgpool_forward_kernel", "avgpool_backward_kernel")),
    "lbfgs": dict(optimizer="lbfgs", lbfgs_history=2, style_layer_weights=[1, 0, 2],
                  gram_norm="hw", init="content", init_noise=20.0,
                  kernels=("lbfgs_pair_kernel", "lbfgs_first_loop_kernel",
                           "lbfgs_second_loop_kernel", "maxpool_backward_kernel")),
    # the quality preset's combination: L-BFGS on constant weights, 1/C²-like layers
    "lbfgs-constant": dict(optimizer="lbfgs", constant_weights=True, gram_norm="hw",
                           init="content", style_layer_weights=[16, 1, 0.25],
                           kernels=("lbfgs_pair_kernel", "lbfgs_second_loop_kernel")),
}


@pytest.mark.parametrize("name", list(OPTION_RUNS))
def test_emulated_engine_options_match_reference_loop(name, emulator, rng):
    from cpstyle.driver import make_initial_image
    from cpstyle.optimizers import check_optimizer
    opts = dict(OPTION_RUNS[name])
    kernels = opts.pop("kernels")
    model = VGG16(random_params(SMALL, np.random.default_rng(3)), device="cpu")
    content = rng.uniform(0, 255, (17, 21, 3)).astype(np.float32)
    styles = [rng.uniform(0, 255, (16, 19, 3)).astype(np.float32),
              rng.uniform(0, 255, (19, 17, 3)).astype(np.float32)]
    style = styles if "style_blend_weights" in opts else styles[0]
    layers = dict(content_layer_ids=[4, 9], style_layer_ids=[0, 4, 12])
    n = 4  # lbfgs: 3 pairs through a ring of 2
    seen_ref, seen_emu = [], []
    ref = cpstyle.style_transfer(content, style, num_iterations=n, seed=2, model=model,
                                 callback=seen_ref.append, callback_every=1, **layers, **opts)
    emulator.launched.clear()
    with emulator.installed():
        eng = GpuStyleTransfer(
            model.with_pooling(opts.get("pooling", "max")), content, style,
            layers["content_layer_ids"], layers["style_layer_ids"], 1.5, 10.0, 0.3,
            gram_norm=opts.get("gram_norm", "none"),
            content_layer_weights=opts.get("content_layer_weights"),
            style_layer_weights=opts.get("style_layer_weights"),
            style_blend_weights=opts.get("style_blend_weights"),
            constant_weights=opts.get("constant_weights", False),
            optimizer=check_optimizer(opts["optimizer"], 10.0, opts.get("learning_rate"),
                                      opts.get("lbfgs_history")))
        blend = opts.get("style_blend_weights", [1.0])
        x0 = make_initial_image(opts["init"], content, styles[:len(blend)],
                                [w / sum(blend) for w in blend], 2, opts.get("init_noise", 0.0))
        out = eng.run(x0, n, callback=seen_emu.append, callback_every=1)
    assert [p.iteration for p in seen_emu] == [p.iteration for p in seen_ref] == list(range(n + 1))
    np.testing.assert_array_equal(seen_emu[0].image, seen_ref[0].image)  # the same start
    for pr, pe in zip(seen_ref, seen_emu):
        for k in pr.losses:
            assert pe.losses[k] == pytest.approx(pr.losses[k], rel=1e-4), (pr.iteration, k)
            assert pe.adj[k] == pytest.approx(pr.adj[k], rel=1e-4), (pr.iteration, k)
        assert pe.objective == pytest.approx(pr.objective, rel=1e-5, abs=1e-5)
        assert_close(pe.image, pr.image, atol=2e-2, rtol=0, what=f"image at {pr.iteration}")
    assert_close(out, ref, atol=2e-2, rtol=0, what="final image")
    assert np.abs(out - x0).max() > 1.0  # it moved
    for k in kernels:
        assert k in emulator.launched, k
    if opts.get("constant_weights"):
        assert "adj_weights_kernel" not in emulator.launched
        assert seen_emu[-1].adj == {"content": 1.0, "style": 1.0, "denoise": 1.0}


# ---- CUDA-graph capture (issue 12), emulated: tests/emulation/capture.py -----------
# The run captures its second iteration and replays the recording for every later one;
# the emulator refuses, inside the captured region, what real capture refuses. A
# replayed run must give exactly the uncaptured run's images and losses.

CAPTURE_RUNS = {
    # max pools, per-layer content weights, Gram /HW, gd
    "gd": dict(optimizer="gd", content_layer_weights=[3, 1], gram_norm="hw"),
    # avg pools, blended styles, constant weights, Adam
    "adam": dict(optimizer="adam", learning_rate=4.0, pooling="avg", constant_weights=True,
                 style_blend_weights=[0.7, 0.3]),
    # per-layer style weights, L-BFGS through a ring of 2 (5 iterations: wrapped)
    "lbfgs": dict(optimizer="lbfgs", lbfgs_history=2, style_layer_weights=[1, 0, 2]),
}


def _capture_setup(monkeypatch, rng, opts):
    from cpstyle.ops import conv_igemm
    monkeypatch.setattr(conv_igemm, "select_tiles", lambda *a, **k: (16, 8, 16, 1, 1))
    model = VGG16(random_params(SMALL, np.random.default_rng(3)), device="cpu")
    content = rng.uniform(0, 255, (17, 21, 3)).astype(np.float32)
    styles = [rng.uniform(0, 255, (16, 19, 3)).astype(np.float32),
              rng.uniform(0, 255, (19, 17, 3)).astype(np.float32)]
    style = styles if "style_blend_weights" in opts else styles[0]
    return model, content, style


def _capture_engine(model, content, style, opts, capture):
    from cpstyle.optimizers import check_optimizer
    return GpuStyleTransfer(
        model.with_pooling(opts.get("pooling", "max")), content, style, [4, 9], [0, 4, 12],
        1.5, 10.0, 0.3, gram_norm=opts.get("gram_norm", "none"),
        content_layer_weights=opts.get("content_layer_weights"),
        style_layer_weights=opts.get("style_layer_weights"),
        style_blend_weights=opts.get("style_blend_weights"),
        constant_weights=opts.get("constant_weights", False), conv="igemm", capture=capture,
        optimizer=check_optimizer(opts["optimizer"], 10.0, opts.get("learning_rate"),
                                  opts.get("lbfgs_history")))


@pytest.mark.parametrize("name", list(CAPTURE_RUNS))
def test_replayed_iterations_equal_uncaptured_ones(name, emulator, rng, monkeypatch):
    """Bitwise the same images and losses at every iteration, captured or not,
    and the reference loop's within the tolerances of the tests above."""
    import warnings
    opts = dict(CAPTURE_RUNS[name])
    model, content, style = _capture_setup(monkeypatch, rng, opts)
    n = 5
    x0 = cpstyle.driver.initial_image(content.shape, 2)
    ref_seen = []
    ref = cpstyle.style_transfer(content, style, num_iterations=n, seed=2, model=model,
                                 content_layer_ids=[4, 9], style_layer_ids=[0, 4, 12],
                                 callback=ref_seen.append, callback_every=1, **opts)
    seen = {}
    with emulator.installed(), warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture would warn and fall back
        # made with capture=True: the Grams on our kernels in both runs (fixed here)
        eng = _capture_engine(model, content, style, opts, capture=True)
        for capture in (False, True):
            eng.capture = capture
            seen[capture] = []
            out = eng.run(x0, n, callback=seen[capture].append, callback_every=1)
            seen[capture].append(out)
    assert eng.graph is not None and eng.graph.replays == n - 1  # iterations 1..n-1
    assert [p.captured for p in seen[True][:-1]] == [False] + [True] * (n - 1) + [False]
    assert not any(p.captured for p in seen[False][:-1])
    for pu, pc in zip(seen[False][:-1], seen[True][:-1]):
        assert pu.losses == pc.losses and pu.adj == pc.adj, pu.iteration
        np.testing.assert_array_equal(pc.image, pu.image, err_msg=f"iteration {pu.iteration}")
    np.testing.assert_array_equal(seen[True][-1], seen[False][-1])
    for pr, pc in zip(ref_seen, seen[True][:-1]):
        for k in pr.losses:
            assert pc.losses[k] == pytest.approx(pr.losses[k], rel=1e-4), (pr.iteration, k)
        assert_close(pc.image, pr.image, atol=2e-2, rtol=0, what=f"image at {pr.iteration}")
    assert_close(seen[True][-1], ref, atol=2e-2, rtol=0, what="final image")
    assert np.abs(seen[True][-1] - x0).max() > 1.0  # it moved


def test_capture_falls_back_with_one_warning(emulator, rng, monkeypatch):
    """The im2col convolutions call matmul (cuBLAS on the GPU): capture=True
    warns once and runs uncaptured, the same result; 'auto' does not try."""
    model, content, style = _capture_setup(monkeypatch, rng, {})
    args = (model, content, style, [4], [0, 4], 1.5, 10.0, 0.3)
    x0 = cpstyle.driver.initial_image(content.shape, 2)
    with emulator.installed():
        auto = GpuStyleTransfer(*args, conv="im2col")
        assert auto.capture == "auto" and not auto.wants_capture()
        assert auto.gram_gemm == "matmul" and auto.gram_work is None  # cuBLAS, as measured
        eng = GpuStyleTransfer(*args, conv="im2col", capture=True)  # Grams on our kernels
        eng.capture = False
        want = eng.run(x0, 3)
        eng.capture = True
        with pytest.warns(RuntimeWarning, match="capture failed.*matmul") as w:
            got = eng.run(x0, 3)
    assert len(w) == 1 and eng.graph is None
    np.testing.assert_array_equal(got, want)
    # where the engine may capture, the Grams are on our kernels; off, on cuBLAS
    with emulator.installed():
        assert GpuStyleTransfer(*args, conv="igemm").gram_gemm == "kernel"
        assert GpuStyleTransfer(*args, conv="igemm", capture=False).gram_gemm == "matmul"


def test_capture_switch(monkeypatch):
    from cpstyle.gpu_engine import check_capture
    monkeypatch.delenv("CPSTYLE_CAPTURE", raising=False)
    assert check_capture(None) == "auto" and check_capture(False) is False
    monkeypatch.setenv("CPSTYLE_CAPTURE", "0")
    assert check_capture(None) is False and check_capture(True) is True
    with pytest.raises(ValueError, match="^capture must be"):
        check_capture(1)
    monkeypatch.setenv("CPSTYLE_CAPTURE", "yes")
    with pytest.raises(ValueError, match="^CPSTYLE_CAPTURE must be"):
        check_capture(None)


# The checks themselves, on a small object: each refusal, and a recording that replays.

class _Buffers:
    def __init__(self):
        self.x = np.full(37, 300.0, np.float32)
        self.d = np.ones(37, np.float32)

    def step(self):
        from cpstyle.ops.optim import descend_clip_gpu_inplace
        descend_clip_gpu_inplace(self.x, self.d)

    def bad_step(self):
        self.step()
        self.bad(self)


def _bad_steps():
    from cpstyle.backend import to_host
    from cpstyle.ops.optim import descend_clip_gpu_inplace
    return {
        "allocation": lambda b: np.empty_like(b.x),
        "matmul": lambda b: np.matmul(b.d[None], b.d[:, None]),
        "in-place op": lambda b: b.x.__iadd__(1.0),
        "setitem": lambda b: b.x.__setitem__(Ellipsis, b.d),
        "host read": lambda b: to_host(b.x),
        "copying asarray": lambda b: np.asarray(b.x, dtype=np.float64),
        "temporary argument": lambda b: descend_clip_gpu_inplace(b.x, b.d + 1),
    }


def test_capture_records_and_replays(emulator):
    from cpstyle import cuda
    b = _Buffers()
    with emulator.installed():
        graph = cuda.capture(b.step, np)
        assert (b.x == 300).all() and b.x.flags.writeable, "capture ran or kept the poison"
        assert [k.name for k, *_ in graph.launches] == ["descend_clip_kernel"]
        graph.launch()
        assert (b.x == 255).all()
        b.x[:] = 100
        graph.launch()  # the same buffers, read afresh
        assert (b.x == 99).all()


@pytest.mark.parametrize("what", list(_bad_steps()))
def test_capture_refuses(what, emulator):
    from cpstyle import cuda
    b = _Buffers()
    b.bad = _bad_steps()[what]
    with emulator.installed():
        with pytest.raises(cuda.CaptureError):
            cuda.capture(b.bad_step, np)
    assert (b.x == 300).all() and b.x.flags.writeable and (b.d == 1).all()
    assert np.empty(3).shape == (3,)  # NumPy given back


def test_capture_check_sees_a_host_counter(emulator, rng, monkeypatch):
    """The bitwise check can fail: a step size that a host-side counter changes
    each iteration is frozen into the graph at capture, and the replayed run
    then leaves the uncaptured one (what DeviceAdam's host-counted t did)."""
    from cpstyle.optimizers import DeviceGradientDescent
    from cpstyle.ops.update import update_gpu_inplace

    def step(self, x, g):  # the regression: a host counter in a kernel argument
        self.k = getattr(self, "k", 0) + 1
        update_gpu_inplace(x, g, self.step_size / self.k, work=self.work)
    monkeypatch.setattr(DeviceGradientDescent, "step", step)
    model, content, style = _capture_setup(monkeypatch, rng, {})
    x0 = cpstyle.driver.initial_image(content.shape, 2)
    out = {}
    with emulator.installed():
        for capture in (False, True):
            # both made to capture (the Grams on our kernels), one run without
            eng = _capture_engine(model, content, style, {"optimizer": "gd"}, True)
            eng.capture = capture
            out[capture] = eng.run(x0, 4)
    assert eng.graph is not None
    assert not np.array_equal(out[True], out[False])


def test_multiscale_captures_one_graph_per_scale(emulator, rng, monkeypatch):
    """As the driver runs a multiscale job on the GPU: an engine per scale, the
    image carried up; each scale captures its own graph (its sizes are baked
    in), and the two scales replayed give bitwise the uncaptured result."""
    import warnings
    from cpstyle.driver import _resized, scale_sizes
    model, _, style = _capture_setup(monkeypatch, rng, {})
    content = rng.uniform(0, 255, (24, 26, 3)).astype(np.float32)
    sizes = scale_sizes(content.shape, 16)
    assert sizes == [(17, 18), (24, 26)]
    out = {}
    with emulator.installed(), warnings.catch_warnings():
        warnings.simplefilter("error")
        for capture in (False, True):
            x, graphs = cpstyle.driver.initial_image(sizes[0] + (3,), 2), []
            for hw in sizes:
                eng = GpuStyleTransfer(model, _resized(content, hw), style, [4], [0, 4], 1.5,
                                       10.0, 0.3, conv="igemm", capture=True)
                eng.capture = capture  # both with the Grams on our kernels
                x = eng.run(_resized(x, hw), 3)
                graphs.append(eng.graph)
            out[capture] = x
    assert all(g is not None and g.replays == 2 for g in graphs)
    assert graphs[0].launches[0][1] != graphs[1].launches[0][1]  # grids of their own size
    np.testing.assert_array_equal(out[True], out[False])
