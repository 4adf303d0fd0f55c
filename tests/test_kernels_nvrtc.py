"""Every kernels/*.cu compiles with NVRTC on a machine with no GPU (DESIGN.md
§7.2): PTX for compute_80 and compute_90 with CuPy's options, and a cubin for
sm_90 (ptxas runs too: spills, local memory, shared-memory size). Any error or
any line in the log fails. Also the loader's source handling (cpstyle/cuda.py),
which needs no CuPy at all. Skips only if cupy_backends' nvrtc cannot be imported."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from cpstyle import cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = cuda.kernel_names()
# The define sets the loader compiles: the defaults, the wrappers' (GPU config)
# and the emulation's small ones.
DEFINE_SETS = {
    "defaults": None,
    "gpu": {"REDUCE_THREADS": 256, "REDUCE_BLOCKS": 256},
    "emulation": {"REDUCE_THREADS": 32, "REDUCE_BLOCKS": 5,
                  "GRAM_TILE": 8, "GRAM_MICRO": 2, "GRAM_K": 4},
}
ARCHES = {
    "compute_80": ["--gpu-architecture=compute_80"],
    "compute_90": ["--gpu-architecture=compute_90"],
    "sm_90": ["--gpu-architecture=sm_90", "--ptxas-options=--warn-on-spills",
              "--ptxas-options=--warn-on-local-memory-usage"],
}
COMMON = ["-ftz=true", *cuda.NVRTC_OPTIONS]  # what CuPy passes, plus the loader's


def test_loader_config_matches_the_gpu_define_set():
    assert cuda.reduce_defines() == DEFINE_SETS["gpu"]


@pytest.mark.parametrize("defines", list(DEFINE_SETS), ids=list(DEFINE_SETS))
@pytest.mark.parametrize("arch", list(ARCHES))
@pytest.mark.parametrize("name", MODULES)
def test_kernel_compiles_without_warnings(name, arch, defines):
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    src = cuda.kernel_source(name, DEFINE_SETS[defines])
    prog = nvrtc.createProgram(src, f"{name}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, ARCHES[arch] + COMMON)
        except Exception as e:
            raise AssertionError(f"kernels/{name}.cu ({arch}, {defines}): {e}\n"
                                 f"{nvrtc.getProgramLog(prog)}") from None
        log = nvrtc.getProgramLog(prog).strip()
        assert not log, f"kernels/{name}.cu ({arch}, {defines}) compiled with a log:\n{log}"
        out = nvrtc.getCUBIN(prog) if arch.startswith("sm_") else nvrtc.getPTX(prog)
        assert len(out) > 0
        if not arch.startswith("sm_"):
            ptx = out.decode() if isinstance(out, bytes) else out
            for k in cuda.kernel_signatures(src):
                assert re.search(rf"\.entry\s+{k}\b", ptx), f"{k} missing from the PTX"
    finally:
        nvrtc.destroyProgram(prog)


# ---- the loader's source handling (no CuPy, no GPU) --------------------------

def test_kernel_source_pastes_headers_and_prepends_defines():
    src = cuda.kernel_source("loss", {"REDUCE_THREADS": 32, "A_FLAG": 1})
    lines = src.splitlines()
    assert lines[:2] == ["#define A_FLAG 1", "#define REDUCE_THREADS 32"]
    assert "#include" not in src
    assert "__device__ double block_sum(double v)" in src  # common.cuh's text is in
    assert src.count("block_sum(double v)") == 1


def test_kernel_source_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no kernel source"):
        cuda.kernel_source("no_such_module")
    with pytest.raises(FileNotFoundError, match="nope.cuh"):
        cuda.kernel_source_text('#include "nope.cuh"\n')


def test_every_kernel_file_documents_its_kernels():
    """STYLE.md: the file header names each kernel with its signature."""
    for name in MODULES:
        with open(os.path.join(cuda.KERNEL_DIR, name + ".cu"), encoding="utf-8") as f:
            text = f.read()
        header = text[:text.index("#include") if "#include" in text else len(text)]
        assert f"kernels/{name}.cu" in header.splitlines()[0]
        for k in cuda.kernel_signatures(text):
            assert re.search(rf"//\s+{k}\(", header), f"kernels/{name}.cu: {k} not in the header"


def test_signature_parser():
    sigs = cuda.kernel_signatures(
        'extern "C" __global__ void k1(float* __restrict__ y, const unsigned char* a,\n'
        '                              const double* p, int n, float s) {}\n'
        '// extern "C" __global__ void commented_out(int n) {}\n'
        '__global__ void not_extern_c(int n) {}\n')
    assert list(sigs) == ["k1"]
    assert [repr(p) for p in sigs["k1"]] == ["float* y", "const unsigned char* a", "const double* p",
                                              "int n", "float s"]
    assert [p.const for p in sigs["k1"]] == [False, True, True, False, False]
    with pytest.raises(ValueError, match="unsupported type"):
        cuda.kernel_signatures('extern "C" __global__ void k(long n) {}')


def test_every_kernel_is_known_to_the_loader():
    for name in MODULES:
        for k, params in cuda.kernel_signatures(cuda.kernel_source(name)).items():
            kern = cuda.get_kernel(name, k, cuda.reduce_defines())
            assert kern.params and [p.name for p in kern.params] == [p.name for p in params]


def test_import_without_cupy():
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import cpstyle.cuda as c, cpstyle.ops.conv, cpstyle.ops.loss, cpstyle.ops.update\n"
            "assert 'im2col_kernel' in c.kernel_signatures(c.kernel_source('conv'))\n"
            "c.get_kernel('conv', 'im2col_kernel')\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("name", MODULES)
def test_kernel_compiles_with_nvcc(name, tmp_path):
    """nvcc, where it is installed (the development machines): sm_90 SASS with
    every warning an error."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc on PATH")
    cu = tmp_path / f"{name}.cu"
    cu.write_text(cuda.kernel_source(name, cuda.reduce_defines()))
    r = subprocess.run([nvcc, "-arch=sm_90", "-std=c++17", "-ftz=true", "-Werror", "all-warnings",
                        "-Xptxas", "--warn-on-spills", "-c", str(cu), "-o", str(tmp_path / "k.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), f"nvcc on kernels/{name}.cu:\n{r.stderr}"


def test_kernel_signatures_take_launch_bounds_either_side_of_void():
    for src in ('extern "C" __global__ void __launch_bounds__(128, 2) k(float* a, int n) {}',
                'extern "C" __global__ __launch_bounds__(128) void k(float* a, int n) {}',
                'extern "C" __global__ void k(float* a, int n) {}'):
        sigs = cuda.kernel_signatures(src)
        assert list(sigs) == ["k"], src
        assert [p.name for p in sigs["k"]] == ["a", "n"], src


def _igemm_define_sets():
    from cpstyle.ops import conv_igemm
    sets = []
    for tiles in conv_igemm.CANDIDATES:
        for prec in conv_igemm.PRECISIONS:
            sets.append(conv_igemm.defines(tiles, prec, 64, 64))
    for tiles in conv_igemm.NARROW_CANDIDATES:
        for prec in conv_igemm.PRECISIONS:
            sets.append(conv_igemm.defines(tiles, prec, 64, 3))  # conv1_1's backward
    for prec in conv_igemm.PRECISIONS:
        sets.append(conv_igemm.defines(conv_igemm.DEFAULT_TILES, prec, 3, 64))  # conv1_1
    return sets


@pytest.mark.parametrize("defines", _igemm_define_sets(),
                         ids=lambda d: "{BM}x{BN}x{BK}w{WARPS_M}x{WARPS_N}p{PREC}a{VEC_A}b{VEC_B}".format(**d))
def test_conv_igemm_tile_sets_compile_for_sm90_without_spills(defines):
    """Every tile set the tuner may pick: ptxas for sm_90 with spill and local-memory
    warnings on (a spill would cost more than the tile gains)."""
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    src = cuda.kernel_source("conv_igemm", defines)
    prog = nvrtc.createProgram(src, "conv_igemm.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, ARCHES["sm_90"] + COMMON)
        except Exception as e:
            raise AssertionError(f"conv_igemm {defines}: {e}\n{nvrtc.getProgramLog(prog)}") from None
        log = nvrtc.getProgramLog(prog).strip()
        assert not log, f"conv_igemm {defines} compiled with a log:\n{log}"
    finally:
        nvrtc.destroyProgram(prog)
