"""The on-device driver (cpstyle/gpu_engine.py) against the NumPy reference,
and the proof that an iteration neither synchronises nor copies to the host."""
import time

import numpy as np
import pytest

import cpstyle
from cpstyle import StyleObjective, VGG16
from cpstyle.driver import initial_image
from cpstyle.vgg16 import random_params
from gradcheck import assert_close
from test_vgg16 import SMALL

pytestmark = pytest.mark.gpu

SPIN = r'''
extern "C" __global__ void spin_kernel(unsigned long long ns) {
    // %globaltimer counts nanoseconds whatever the clocks do (CUDA 13 has no
    // clockRate in the device properties to turn clock64 cycles into time)
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}'''


def models(seed=5):
    params = random_params(SMALL, np.random.default_rng(seed))
    return VGG16(params, device="cpu"), VGG16(params, device="gpu")


def images(rng, shape=(33, 47)):
    return (rng.uniform(0, 255, shape + (3,)).astype(np.float32),
            rng.uniform(0, 255, (29, 38, 3)).astype(np.float32))


def make_engine(gpu_model, content, style, precision="fp32", gram_norm="none", **kw):
    from cpstyle.gpu_engine import GpuStyleTransfer
    return GpuStyleTransfer(gpu_model, content, style, [4, 9], [0, 3, 5, 12], 1.5, 10.0, 0.3,
                            gram_norm=gram_norm, precision=precision, **kw)


@pytest.mark.parametrize("gram_norm", ["none", "hw"])
def test_one_iteration_matches_reference(gram_norm, rng):
    import cupy as cp
    cpu, gpu = models()
    content, style = images(rng)
    eng = make_engine(gpu, content, style, gram_norm=gram_norm)
    ref = StyleObjective(content, style, [4, 9], [0, 3, 5, 12], 1.5, 10.0, 0.3, model=cpu,
                         gram_norm=gram_norm)
    x = rng.uniform(0, 255, (1,) + content.shape).astype(np.float32)
    losses, adj, grad = ref.evaluate(x)
    eng.x[...] = cp.asarray(x)
    eng.grad.fill(np.nan)  # poison: every element must be written
    eng.iteration(10.0)
    assert_close(eng.losses.get(), losses, atol=0, rtol=2e-4, what="losses")
    assert_close(eng.adj.get(), adj, atol=0, rtol=2e-4, what="adj")
    g = grad[0]
    assert_close(eng.grad.get()[0] / np.abs(g).max(), g / np.abs(g).max(), atol=2e-4, rtol=2e-3,
                 what="normalised gradient")
    step = 10.0 / (np.std(g.astype(np.float64)) + 1e-8)
    assert_close(eng.x.get(), np.clip(x - grad * step, 0, 255), atol=2e-2, rtol=0, what="updated x")


OPTION_SETS = {
    "avg+constant+layer weights+blend": dict(
        pooling="avg", constant_weights=True, content_layer_weights=[3, 1],
        style_layer_weights=[1, 0, 2, 1], style_blend_weights=[0.7, 0.3]),
    "hw+layer weights": dict(gram_norm="hw", style_layer_weights=[4, 3, 2, 1]),
}


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_one_evaluation_with_options_matches_reference(name, rng):
    import cupy as cp
    opts = dict(OPTION_SETS[name])
    pooling = opts.pop("pooling", "max")
    cpu, gpu = models()
    cpu, gpu = cpu.with_pooling(pooling), gpu.with_pooling(pooling)
    content, style = images(rng)
    if "style_blend_weights" in opts:
        style = [style, rng.uniform(0, 255, (31, 27, 3)).astype(np.float32)]
    eng = make_engine(gpu, content, style, **opts)
    ref = StyleObjective(content, style, [4, 9], [0, 3, 5, 12], 1.5, 10.0, 0.3, model=cpu,
                         **opts)
    x = rng.uniform(0, 255, (1,) + content.shape).astype(np.float32)
    losses, adj, grad = ref.evaluate(x)
    eng.x[...] = cp.asarray(x)
    eng.grad.fill(np.nan)
    eng.evaluate()
    assert_close(eng.losses.get(), losses, atol=0, rtol=2e-4, what="losses")
    assert_close(eng.adj.get(), adj, atol=0, rtol=2e-4, what="adj")
    g = grad[0]
    assert_close(eng.grad.get()[0] / np.abs(g).max(), g / np.abs(g).max(), atol=2e-4, rtol=2e-3,
                 what="normalised gradient")


@pytest.mark.parametrize("name", ["gd", "adam", "lbfgs"])
def test_device_optimizers_match_reference_gpu(name, rng):
    import cupy as cp
    from test_optimizers import run_both
    run_both(name, cp, rng, steps=8, shape=(1, 37, 45, 3), history=3,
                   to_xp=cp.asarray, to_host=cp.asnumpy)


@pytest.mark.parametrize("name", ["adam", "lbfgs"])
def test_optimizer_runs_step_by_step(name, rng):
    """style_transfer on CuPy with Adam / L-BFGS, every iteration reported; the
    reference optimiser, fed the GPU's iterates and the reference gradients at
    them, must land on the GPU's next image (the state of both optimisers is
    built from the same sequence, so this checks every step, not a drift)."""
    from cpstyle.optimizers import check_optimizer, make_optimizer
    cpu, gpu = models()
    content, style = images(rng)
    kw = dict(content_layer_ids=[4, 9], style_layer_ids=[0, 3, 5, 12], num_iterations=8,
              seed=11, optimizer=name)
    if name == "lbfgs":
        kw["lbfgs_history"] = 3
    seen = []
    cpstyle.style_transfer(content, style, model=gpu, callback=seen.append, callback_every=1,
                           **kw)
    assert [p.iteration for p in seen] == list(range(9))
    ref = StyleObjective(content, style, kw["content_layer_ids"], kw["style_layer_ids"],
                         1.5, 10.0, 0.3, model=cpu)
    opt = make_optimizer(check_optimizer(name, 10.0, None, kw.get("lbfgs_history")))
    for k in range(8):
        x = seen[k].image.get()[None]
        losses, _, grad = ref.evaluate(x)
        assert_close([seen[k].losses[n] for n in ("content", "style", "denoise")], losses,
                     atol=0, rtol=1e-3, what=f"losses at iteration {k}")
        nxt = opt.step(x, grad)[0]
        assert_close(seen[k + 1].image.get(), nxt, atol=5e-2, rtol=0, what=f"{name} step {k}")


def test_20_iterations_match_reference(rng):
    """20 iterations of style_transfer on CuPy, checked step by step: each image
    the GPU reports has the reference's losses, and one reference step from it
    lands on the GPU's next image. (Comparing two whole trajectories would
    measure how std-normalised steps amplify float32 rounding, not the engine.)"""
    from cpstyle.ops.update import update_cpu
    cpu, gpu = models()
    content, style = images(rng)
    kw = dict(content_layer_ids=[4, 9], style_layer_ids=[0, 3, 5, 12], num_iterations=20, seed=11)
    seen = []
    out = cpstyle.style_transfer(content, style, model=gpu, callback=seen.append,
                                 callback_every=1, **kw)
    assert isinstance(out, np.ndarray) and out.shape == content.shape
    assert [p.iteration for p in seen] == list(range(21))
    assert np.array_equal(seen[0].image.get(), initial_image(content.shape, 11))
    ref = StyleObjective(content, style, kw["content_layer_ids"], kw["style_layer_ids"],
                         1.5, 10.0, 0.3, model=cpu)
    for k, p in enumerate(seen):
        x = p.image.get()[None]
        losses, _, grad = ref.evaluate(x)
        got = [p.losses[n] for n in ("content", "style", "denoise")]
        assert_close(got, losses, atol=0, rtol=1e-3, what=f"losses at iteration {k}")
        if k < 20:
            nxt = update_cpu(x, grad, 10.0)[0]
            assert_close(seen[k + 1].image.get(), nxt, atol=5e-2, rtol=0, what=f"step {k}")
    assert np.array_equal(out, seen[-1].image.get())


def test_tf32_stays_close_to_fp32(rng):
    import cupy as cp
    _, gpu = models()
    content, style = images(rng)
    x = cp.asarray(rng.uniform(0, 255, (1,) + content.shape).astype(np.float32))
    out = {}
    for prec in ("fp32", "tf32"):
        eng = make_engine(gpu, content, style, precision=prec)
        from cpstyle.gpu_engine import matmul_precision
        eng.x[...] = x
        with matmul_precision(prec):
            eng.iteration(10.0)
        out[prec] = (eng.losses.get(), eng.grad.get())
    assert_close(out["tf32"][0], out["fp32"][0], atol=0, rtol=1e-2, what="tf32 losses")
    g32, gtf = out["fp32"][1], out["tf32"][1]
    cos = float(np.sum(g32 * gtf) / np.linalg.norm(g32) / np.linalg.norm(gtf))
    assert cos > 0.99, cos


def warm_engine(rng, optimizer="gd"):
    import cupy as cp
    _, gpu = models()
    content, style = images(rng)
    eng = make_engine(gpu, content, style, optimizer=optimizer)
    eng.x[...] = cp.asarray(initial_image(content.shape, 0))[None]
    eng.iteration(10.0)  # warm-up: compiles kernels, creates the cuBLAS handle
    cp.cuda.Device().synchronize()
    return eng


@pytest.mark.parametrize("optimizer", ["gd", "adam", "lbfgs"])
def test_iterations_neither_sync_nor_copy_to_host(rng, optimizer):
    """Each of 20 iterations is queued behind a kernel that spins for 0.3 s. If
    anything in an iteration synchronised, or copied device memory to the host
    (which waits for the stream), the host would wait for the spin to end; so
    the spin must still be running when the iteration has been enqueued.
    One iteration at a time: the driver's launch queue holds about 1,000
    launches (6-7 iterations, measured on an H200), and a full queue blocks the
    host too, which would look like a sync."""
    import cupy as cp
    eng = warm_engine(rng, optimizer)  # lbfgs (10 pairs): the ring wraps in 20 iterations
    spin = cp.RawKernel(SPIN, "spin_kernel")
    ns = np.uint64(300_000_000)
    # the method first: a deliberate host read behind the spin has to wait for it
    spin((1,), (1,), (ns,))
    t0 = time.perf_counter()
    float(eng.losses[0])
    assert time.perf_counter() - t0 > 0.2, "the spin kernel did not hold the GPU"
    waited = []
    for k in range(20):
        spin((1,), (1,), (ns,))
        spin_done = cp.cuda.Event()
        spin_done.record()
        t0 = time.perf_counter()
        eng.iteration(10.0)
        if spin_done.done:
            waited.append((k, round(time.perf_counter() - t0, 3)))
        cp.cuda.Device().synchronize()
    assert waited == [], f"the host waited for the GPU in iterations (index, seconds) {waited}"
    assert np.isfinite(eng.x.get()).all()


@pytest.mark.parametrize("optimizer", ["gd", "adam", "lbfgs"])
def test_iterations_allocate_nothing(rng, optimizer):
    """Every buffer is made once, in the constructor: CuPy's allocator, wrapped
    to count calls, sees none during 20 iterations, and the pool does not grow."""
    import cupy as cp
    eng = warm_engine(rng, optimizer)
    pool = cp.get_default_memory_pool()
    allocs = []

    def counting(nbytes):
        allocs.append(nbytes)
        return pool.malloc(nbytes)

    total_before = pool.total_bytes()
    cp.cuda.set_allocator(counting)
    try:
        for _ in range(20):
            eng.iteration(10.0)
        cp.cuda.Device().synchronize()
    finally:
        cp.cuda.set_allocator(pool.malloc)
    assert pool.total_bytes() == total_before, "device memory grew during the iterations"
    assert allocs == [], f"{len(allocs)} allocations in 20 iterations, sizes {sorted(set(allocs))[:10]}"


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("optimizer", ["gd", "adam", "lbfgs"])
def test_replayed_graph_equals_uncaptured_run(rng, optimizer, precision):
    """Issue 12 on the device: the igemm convolutions, capture=True. The run
    captures its second iteration and replays it (no capture warning); images
    and losses at every report are bitwise those of the uncaptured run, and the
    replays enqueue fast (host time per iteration well under an uncaptured one)."""
    import warnings
    import cupy as cp
    from cpstyle.optimizers import check_optimizer
    _, gpu = models()
    content, style = images(rng)
    settings = check_optimizer(optimizer, 10.0, None, 3 if optimizer == "lbfgs" else None)
    eng = make_engine(gpu, content, style, precision=precision, conv="igemm", capture=True,
                      optimizer=settings)
    x0 = initial_image(content.shape, 4)
    seen = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for capture in (False, True):
            eng.capture = capture
            seen[capture] = []
            out = eng.run(x0, 12, callback=seen[capture].append, callback_every=3)
            seen[capture].append(out.get())
    assert eng.graph is not None and [p.captured for p in seen[True][:-1]] == \
        [False, True, True, True, False]  # reports at 0, 3, 6, 9 and the final 12
    for pu, pc in zip(seen[False][:-1], seen[True][:-1]):
        assert pu.losses == pc.losses, pu.iteration
        assert np.array_equal(pu.image.get(), pc.image.get()), pu.iteration
    assert np.array_equal(seen[False][-1], seen[True][-1])
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        eng.graph.launch()
    host = (time.perf_counter() - t0) / 10
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        eng.iteration()
    launches = (time.perf_counter() - t0) / 10
    cp.cuda.Device().synchronize()
    assert host < 0.25 * launches, (host, launches)


def test_capture_on_im2col_falls_back_or_replays_exactly(rng):
    """The im2col convolutions call cupy.matmul, which CuPy 14.2 refuses inside
    stream capture (cupy #6290): capture=True warns once and the run goes on
    uncaptured, with the uncaptured run's image. (Should a CuPy capture it, the
    graph must then replay exactly.)"""
    import warnings
    _, gpu = models()
    content, style = images(rng)
    eng = make_engine(gpu, content, style, conv="im2col", capture=False)
    x0 = initial_image(content.shape, 4)
    want = eng.run(x0, 4).get()
    eng.capture = True
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = eng.run(x0, 4).get()
    fell_back = [str(m.message) for m in w if "capture failed" in str(m.message)]
    assert len(fell_back) == (0 if eng.graph is not None else 1), fell_back
    assert np.array_equal(got, want)
