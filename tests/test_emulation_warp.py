"""Warps under the CPU emulation (tests/emulation/cuda_emu.h) and kernels/mma.cuh.

Shuffles (idx/up/down/xor, widths below 32), votes, __activemask and
__syncwarp checked against CUDA's documented semantics written out in NumPy,
on blocks whose warps are full (64 threads) or not (48); f32_to_tf32 and
pack_bf16x2 bit for bit against round-to-nearest written from scratch; both
mma shapes with fragments loaded per the PTX ISA layouts (kernels/mma.cuh's
header) against NumPy, with a wrong-layout product shown not to match; the
misuses the emulation promises to report (partial warps, bad masks,
divergence) raise instead of hanging (each launch runs under a timeout); and
mma.cuh compiles with NVRTC for compute_80/compute_90 into the expected PTX."""
import os
import re
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from cpstyle import cuda
from emulation.checks import assert_close
from emulation.harness import Emulator, SourceKernel

TIMEOUT = 60  # s per launch; a hang in the emulation fails the test instead

# One translation unit for every kernel here: one g++ run.
SOURCE = r"""
#include "mma.cuh"

// The lanes of this thread's warp that exist: blocks here may end in a partial warp.
__device__ unsigned warp_lanes() {
    const int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int nt = blockDim.x * blockDim.y * blockDim.z;
    const int n = nt - tid / 32 * 32;
    return n >= 32 ? 0xffffffffu : (1u << n) - 1;
}

// Per thread (t = global linear id): f[4t..] = shfl idx/up/down/xor of x; i[t] = xor of
// an int, d[t] = up of a double; u[5t..] = down of an unsigned, ballot, any, all, activemask.
extern "C" __global__ void warp_ops_kernel(float* f, int* i, unsigned int* u, double* d,
                                           const float* x, int src, int delta, int xmask,
                                           int width) {
    const int nt = blockDim.x * blockDim.y * blockDim.z;
    const int t = blockIdx.x * nt + threadIdx.x +
                  blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned m = warp_lanes();
    u[5 * t + 4] = __activemask();  // before any lane can have returned
    const float v = x[t];
    f[4 * t + 0] = __shfl_sync(m, v, src, width);
    f[4 * t + 1] = __shfl_up_sync(m, v, delta, width);
    f[4 * t + 2] = __shfl_down_sync(m, v, delta, width);
    f[4 * t + 3] = __shfl_xor_sync(m, v, xmask, width);
    i[t] = __shfl_xor_sync(m, 3 * t + 1, xmask, width);
    d[t] = __shfl_up_sync(m, (double)v + 1e-12 * t, delta, width);
    u[5 * t + 0] = __shfl_down_sync(m, (unsigned)t * 2654435761u, delta, width);
    u[5 * t + 1] = __ballot_sync(m, v > 0.f);
    u[5 * t + 2] = __any_sync(m, v > 0.f);
    u[5 * t + 3] = __all_sync(m, v > 0.f);
    __syncwarp(m);
}

// Misuse, one case per `mode`; each must be reported, not hang.
extern "C" __global__ void warp_misuse_kernel(float* y, const float* x, int mode,
                                              unsigned int mask) {
    const int lane = threadIdx.x % 32;
    float v = x[threadIdx.x];
    if (mode == 0) v = __shfl_sync(mask, v, 1);                 // mask as given
    if (mode == 1) {                                            // a lane returns first
        if (lane == 5) return;
        v = __shfl_xor_sync(0xffffffffu, v, 1);
    }
    if (mode == 2) {                                            // divergent: shuffle vs barrier
        if (lane < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
        else __syncthreads();
    }
    if (mode == 3) v = __shfl_down_sync(warp_lanes(), v, 20);   // reads an absent lane
    if (mode == 4) v = __shfl_sync(0xffffffffu, v, 0, 12);      // width not a power of two
    if (mode == 5 || mode == 6) {                       // mma in a partial warp, after a return
        if (mode == 6 && lane == 31) return;
        unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
        float acc[4] = {v, v, v, v};
        mma_tf32_16x8x8(acc, a, b);
        v = acc[0];
    }
    if (mode == 7) {                                            // divergent: two different votes
        if (lane & 1) v = (float)__ballot_sync(0xffffffffu, v > 0.f);
        else v = (float)__any_sync(0xffffffffu, v > 0.f);
    }
    __syncthreads();
    y[threadIdx.x] = v;
}

extern "C" __global__ void convert_kernel(unsigned int* tf, unsigned int* bf, const float* x,
                                          int n) {
    for (int k = threadIdx.x; k < n; k += blockDim.x) {
        tf[k] = f32_to_tf32(x[k]);
        bf[k] = pack_bf16x2(x[k], x[n - 1 - k]);
    }
}

// Each warp w: D[w] = A[w]·B[w] + C[w], `reps` mma in a row (D = reps·A·B + C), fragments
// loaded from row-major A (16x8), B (8x8), C, D (16x8) per the PTX ISA layouts.
// raw != 0: the operands' float bits go in unrounded (the tensor core reads 19 of them).
extern "C" __global__ void mma_tf32_kernel(float* D, const float* A, const float* B, const float* C,
                                           int reps, int raw) {
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
    A += w * 128; B += w * 64; C += w * 128; D += w * 128;
    const float av[4] = {A[g * 8 + t], A[(g + 8) * 8 + t],
                         A[g * 8 + t + 4], A[(g + 8) * 8 + t + 4]};
    const float bv[2] = {B[t * 8 + g], B[(t + 4) * 8 + g]};
    unsigned a[4], b[2];
    for (int q = 0; q < 4; ++q) a[q] = raw ? __float_as_uint(av[q]) : f32_to_tf32(av[q]);
    for (int q = 0; q < 2; ++q) b[q] = raw ? __float_as_uint(bv[q]) : f32_to_tf32(bv[q]);
    float d[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1],
                  C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    for (int r = 0; r < reps; ++r) mma_tf32_16x8x8(d, a, b);
    D[g * 8 + 2 * t] = d[0]; D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2]; D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// As mma_tf32_kernel for bf16: A (16x16), B (16x8) row-major.
extern "C" __global__ void mma_bf16_kernel(float* D, const float* A, const float* B, const float* C,
                                           int reps) {
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
    A += w * 256; B += w * 128; C += w * 128; D += w * 128;
    const unsigned a[4] = {pack_bf16x2(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]),
                           pack_bf16x2(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]),
                           pack_bf16x2(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]),
                           pack_bf16x2(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9])};
    const unsigned b[2] = {pack_bf16x2(B[2 * t * 8 + g], B[(2 * t + 1) * 8 + g]),
                           pack_bf16x2(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g])};
    float d[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1],
                  C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    for (int r = 0; r < reps; ++r) mma_bf16_16x8x16(d, a, b);
    D[g * 8 + 2 * t] = d[0]; D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2]; D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// A tiled GEMM as the conv kernels run it: D (32x16) = A (32xK) · B (Kx16), K % 8 == 0,
// one block of 2x2 warps each owning a 16x8 tile, A/B staged through shared memory
// 8 columns of K at a time between __syncthreads.
extern "C" __global__ void gemm_tf32_kernel(float* D, const float* A, const float* B, int K) {
    __shared__ float As[32][8];
    __shared__ float Bs[8][16];
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane >> 2, t = lane & 3;
    const int r0 = (w / 2) * 16, c0 = (w % 2) * 8;
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k0 = 0; k0 < K; k0 += 8) {
        for (int e = threadIdx.x; e < 32 * 8; e += blockDim.x)
            As[e / 8][e % 8] = A[(e / 8) * K + k0 + e % 8];
        Bs[threadIdx.x / 16][threadIdx.x % 16] = B[(k0 + threadIdx.x / 16) * 16 + threadIdx.x % 16];
        __syncthreads();
        const unsigned a[4] = {f32_to_tf32(As[r0 + g][t]), f32_to_tf32(As[r0 + g + 8][t]),
                               f32_to_tf32(As[r0 + g][t + 4]), f32_to_tf32(As[r0 + g + 8][t + 4])};
        const unsigned b[2] = {f32_to_tf32(Bs[t][c0 + g]), f32_to_tf32(Bs[t + 4][c0 + g])};
        mma_tf32_16x8x8(d, a, b);
        __syncthreads();
    }
    D[(r0 + g) * 16 + c0 + 2 * t] = d[0]; D[(r0 + g) * 16 + c0 + 2 * t + 1] = d[1];
    D[(r0 + g + 8) * 16 + c0 + 2 * t] = d[2]; D[(r0 + g + 8) * 16 + c0 + 2 * t + 1] = d[3];
}
"""
PASTED = cuda.kernel_source_text(SOURCE)


@pytest.fixture(scope="module")
def emulator():
    return Emulator()


def kernel(name):
    return SourceKernel(PASTED, name)


def launch(emulator, name, grid, block, args):
    """emulator.launch in a daemon thread: a hang fails the test after TIMEOUT s
    (the stuck thread is left behind) instead of stalling the run. Returns seconds."""
    k = kernel(name)
    emulator.module(k.module, k.defines, k.source)  # compile outside the timeout
    box = {}

    def run():
        t0 = time.perf_counter()
        try:
            emulator.launch(k, grid, block, args)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box["error"] = e
        box["seconds"] = time.perf_counter() - t0

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(TIMEOUT)
    assert not th.is_alive(), f"{name} still running after {TIMEOUT} s: the emulation hangs"
    if "error" in box:
        raise box["error"]
    return box["seconds"]


# ---- shuffles and votes ------------------------------------------------------

def warp_lanes(nt):
    """[(first linear id, lane count)] of the warps of an nt-thread block."""
    return [(w, min(32, nt - w)) for w in range(0, nt, 32)]


def shfl_src(mode, lane, b, width):
    """Source lane of a shuffle, from the CUDA Programming Guide's description."""
    if mode == "idx":    # srcLane modulo width, within the lane's group of `width`
        return lane // width * width + b % width
    if mode == "up":     # lane - delta, unless that leaves the group: own value
        return lane - b if lane % width >= b else lane
    if mode == "down":   # lane + delta, unless that leaves the group
        return lane + b if lane % width + b < width else lane
    j = lane ^ b         # xor: a later group (or past the warp) gives the own value
    return lane if j > 31 or j // width > lane // width else j


def warp_ops_reference(x, nt, src, delta, xmask, width):
    n = x.size
    t = np.arange(n)
    f = np.zeros((n, 4), np.float32)
    i, d = np.zeros(n, np.int32), np.zeros(n)
    u = np.zeros((n, 5), np.uint32)
    vals_i = 3 * t + 1
    vals_d = x.astype(np.float64) + 1e-12 * t
    vals_u = (t.astype(np.uint64) * 2654435761) % 2**32
    for b0 in range(0, n, nt):
        for w0, lanes in warp_lanes(nt):
            mask = 0xFFFFFFFF if lanes == 32 else (1 << lanes) - 1
            ids = b0 + w0 + np.arange(lanes)
            pos = x[ids] > 0
            ballot = sum(1 << l for l in range(lanes) if pos[l])
            for l in range(lanes):
                me = ids[l]
                at = {m: b0 + w0 + shfl_src(m, l, v, width)
                      for m, v in (("idx", src), ("up", delta), ("down", delta), ("xor", xmask))}
                f[me] = [x[at["idx"]], x[at["up"]], x[at["down"]], x[at["xor"]]]
                i[me] = vals_i[at["xor"]]
                d[me] = vals_d[at["up"]]
                u[me] = [vals_u[at["down"]], ballot, ballot != 0, ballot == mask, mask]
    return f, i, d, u


@pytest.mark.parametrize("block, src, delta, xmask, width", [
    ((8, 4, 2), 13, 3, 7, 32),    # 64 threads: two full warps (x fastest, then y, z)
    ((8, 4, 2), 29, 5, 9, 8),     # groups of 8; xor 9 reaches the next group (own value) or
                                  # the one before (its value)
    ((16, 3, 1), 7, 3, 5, 16),    # 48 threads: the second warp has 16 lanes, mask 0xffff
    ((16, 3, 1), 11, 1, 3, 4),
    ((33, 1, 1), 0, 1, 1, 1),     # a one-lane warp; width 1: every shuffle reads itself
], ids=["64-w32", "64-w8", "48-w16", "48-w4", "33-w1"])
def test_shuffles_and_votes(emulator, rng, block, src, delta, xmask, width):
    nt, grid = int(np.prod(block)), 2
    x = rng.standard_normal(grid * nt).astype(np.float32)
    last = (nt - 1) // 32 * 32                               # the last warp's first thread
    x[nt: nt + 32] = np.abs(x[nt: nt + 32]) + 0.5            # block 1: __all_sync is 1 in warp 0
    x[nt + last: 2 * nt] = np.abs(x[nt + last: 2 * nt]) + 0.5  # and in the last (maybe partial) one
    n = x.size
    f, i = np.full((n, 4), np.nan, np.float32), np.full(n, -7, np.int32)
    d, u = np.full(n, np.nan), np.full((n, 5), 0xDEADBEEF, np.uint32)
    launch(emulator, "warp_ops_kernel", grid, block,
           (f, i, u, d, x, *map(cuda.i32, (src, delta, xmask, width))))
    rf, ri, rd, ru = warp_ops_reference(x, nt, src, delta, xmask, width)
    np.testing.assert_array_equal(f, rf, err_msg="float shuffles idx/up/down/xor")
    np.testing.assert_array_equal(i, ri, err_msg="int __shfl_xor_sync")
    np.testing.assert_array_equal(d, rd, err_msg="double __shfl_up_sync")
    np.testing.assert_array_equal(u, ru, err_msg="unsigned down, ballot, any, all, activemask")
    assert ru[nt, 3] == ru[nt + last, 3] == 1 and ru[0, 1] not in (0, 0xFFFFFFFF)  # not trivial


def test_shuffle_reference_is_not_trivial():
    """The reference above distinguishes the modes, and width < 32 changes them."""
    cases = {("idx", 5, 13, 32): 13, ("idx", 21, 13, 8): 21,
             ("up", 2, 3, 32): 2, ("up", 10, 3, 8): 10, ("up", 12, 3, 8): 9,
             ("down", 28, 5, 32): 28, ("down", 2, 5, 8): 7, ("down", 3, 5, 8): 3,
             ("xor", 3, 9, 8): 3, ("xor", 10, 9, 8): 3, ("xor", 30, 7, 32): 25}
    assert {c: shfl_src(*c) for c in cases} == cases


MISUSE = [  # (mode, block, mask, the error it must raise)
    (0, 48, 0xFFFFFFFF, "names lanes that the block does not have"),
    (0, 32, 0xFFFFFFFE, "does not include the calling lane"),
    (0, 32, 0x0000FFFF, "partial masks are not emulated"),
    (1, 32, 0, "names lanes that have returned"),
    (2, 32, 0, "divergent warp"),
    (3, 48, 0, "shuffles from lane 2[0-9], which does not take part"),
    (4, 32, 0, "width 12"),
    (5, 48, 0, "needs all 32 lanes of the warp, but only lanes 0x0000ffff"),
    (6, 64, 0, "needs all 32 lanes of the warp, but only lanes 0x7fffffff"),
    (7, 32, 0, "different warp-level operations"),
]


@pytest.mark.parametrize("mode, nt, mask, message", MISUSE,
                         ids=[f"mode{m}-{nt}-{mask:x}" for m, nt, mask, _ in MISUSE])
def test_misuse_is_reported_not_hung(emulator, mode, nt, mask, message):
    x = np.arange(1, nt + 1, dtype=np.float32)
    y = np.zeros(nt, np.float32)
    with pytest.raises(RuntimeError, match=message):
        launch(emulator, "warp_misuse_kernel", 1, nt, (y, x, cuda.i32(mode), np.uint32(mask)))
    # the emulator is fine afterwards: a correct launch of the same kernel passes
    y, x = np.zeros(64, np.float32), np.ones(64, np.float32)
    launch(emulator, "warp_misuse_kernel", 1, 64, (y, x, cuda.i32(0), np.uint32(0xFFFFFFFF)))
    assert (y == 1).all()


# ---- conversions -------------------------------------------------------------

def _round_bits(x, drop, ties_even):
    """float32 x to `drop` fewer mantissa bits, to nearest (ties away from zero, or
    to even), from the two neighbours' exact values; bits of the result (fp32 layout)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    special = (u & 0x7F800000) == 0x7F800000                # inf, NaN: kept as they are
    u, keep = np.where(special, 0, u), u
    step = 1 << drop
    lo = u & ~np.uint64(step - 1) & 0xFFFFFFFF             # toward zero
    hi = lo + step                                         # away from zero (may reach inf)
    mag = np.abs(np.asarray(x, np.float64))

    def value(bits):
        b = (bits & 0x7FFFFFFF).astype(np.uint32)
        v = b.view(np.float32).astype(np.float64)
        return np.where(b == 0x7F800000, 2.0 ** 128, v)    # the next binade's start, unbounded

    dlo, dhi = mag - value(lo), value(hi) - mag
    up = (dhi < dlo) | ((dhi == dlo) & ((((lo >> drop) & 1) == 1) if ties_even else True))
    return np.where(special, keep, np.where(up, hi, lo)).astype(np.uint32)


def tf32_bits(x):
    return _round_bits(x, 13, ties_even=False)


def bf16_bits(x):
    return _round_bits(x, 16, ties_even=True) >> 16


def interesting_floats(rng, n=4000):
    bits = [rng.integers(0, 2**32, n, dtype=np.uint64)]                         # any exponent
    base = rng.integers(0, 2**32, n, dtype=np.uint64)
    bits.append((base & ~np.uint64(0x1FFF)) | 0x1000)                          # tf32 ties
    bits.append((base & ~np.uint64(0xFFFF)) | 0x8000)                          # bf16 ties
    bits.append(base & 0x807FFFFF)                                             # denormals
    bits.append((base & 0x807FFFFF & ~np.uint64(0x1FFF)) | 0x1000)             # denormal ties
    bits.append(np.array([0, 0x80000000, 0x00800000, 0x007FFFFF, 0x7F7FFFFF, 0xFF7FFFFF,
                          0x7F7FF000, 0x7F7FEFFF, 0x7F7F8000, 0x7F7E8000, 0x7F7F7FFF,
                          0x3F800000, 0x3F801000, 0x3F803000, 0x3F808000, 0x3F818000,
                          0x7F800000, 0xFF800000], np.uint64))                 # edges, inf
    x = np.concatenate(bits).astype(np.uint32).view(np.float32)
    return x[~np.isnan(x)]


def test_f32_to_tf32_and_pack_bf16x2_bit_exact(emulator, rng):
    x = interesting_floats(rng)
    x = np.concatenate([x, np.array([np.nan, -np.nan], np.float32),
                        np.array([0x7F800001, 0xFFC00001], np.uint32).view(np.float32)])
    n = x.size
    tf, bf = np.zeros(n, np.uint32), np.zeros(n, np.uint32)
    launch(emulator, "convert_kernel", 1, 64, (tf, bf, x, cuda.i32(n)))
    nan = np.isnan(x)
    assert np.isnan(tf[nan].view(np.float32)).all(), "NaN must stay NaN"
    assert not (tf[nan] & 0x1FFF).any(), "a NaN's tf32 keeps the low 13 bits zero too"
    np.testing.assert_array_equal(tf[~nan], tf32_bits(x[~nan]), err_msg="f32_to_tf32")
    assert not (tf & 0x1FFF).any()
    lo, hi = bf & 0xFFFF, bf >> 16
    assert np.isnan((lo[nan] << 16).view(np.float32)).all()
    assert np.isnan((hi[nan[::-1]] << 16).view(np.float32)).all()
    np.testing.assert_array_equal(lo[~nan], bf16_bits(x[~nan]), err_msg="pack_bf16x2: lo half")
    np.testing.assert_array_equal(hi[~nan[::-1]], bf16_bits(x[::-1][~nan[::-1]]),
                                  err_msg="pack_bf16x2: hi half")


def test_rounding_references_are_not_trivial():
    """Ties go away from zero for tf32 and to even for bf16; overflow gives inf."""
    f = lambda *b: np.array(b, np.uint32).view(np.float32)  # noqa: E731
    assert list(tf32_bits(f(0x3F801000, 0xBF801000, 0x3F800FFF, 0x7F7FF000, 0x00001000))) == \
        [0x3F802000, 0xBF802000, 0x3F800000, 0x7F800000, 0x00002000]
    assert list(bf16_bits(f(0x3F808000, 0x3F818000, 0xBF818000, 0x3F808001, 0x7F7F8000))) == \
        [0x3F80, 0x3F82, 0xBF82, 0x3F81, 0x7F80]


# ---- mma ---------------------------------------------------------------------

def tf32_round(a):
    return tf32_bits(a).view(np.float32).astype(np.float64)


def bf16_round(a):
    return (bf16_bits(a) << 16).astype(np.uint32).view(np.float32).astype(np.float64)


def _tolerance(a, b, c, reps=1):
    """fp32 rounding of the result, plus room for the order of the sums."""
    scale = reps * (np.abs(a) @ np.abs(b)) + np.abs(c)
    return 2e-7 * scale


@pytest.mark.parametrize("reps", [1, 3])
def test_mma_tf32_16x8x8_layout(emulator, rng, reps):
    W = 4  # warps of one block, each with its own matrices
    A = rng.standard_normal((W, 16, 8)).astype(np.float32)
    B = rng.standard_normal((W, 8, 8)).astype(np.float32)
    C = rng.standard_normal((W, 16, 8)).astype(np.float32)
    D = np.full((W, 16, 8), np.nan, np.float32)
    launch(emulator, "mma_tf32_kernel", 1, 32 * W, (D, A, B, C, cuda.i32(reps), cuda.i32(0)))
    At, Bt = tf32_round(A), tf32_round(B)
    ref = reps * (At @ Bt) + C
    tol = _tolerance(At, Bt, C, reps)
    assert_close(D, ref, atol=tol, rtol=0.0, what="mma tf32")
    assert_close(D, ref, atol=1e-6 * np.abs(ref).max(), rtol=1e-6, what="mma tf32 (1e-6 relative)")
    # the test can fail: a plausible wrong layout (a1 and a2 swapped: A[g+8][t] <-> A[g][t+4];
    # B read n-major) gives a product that is far from D
    Aw = At.copy()
    Aw[:, 8:, 0:4], Aw[:, 0:8, 4:8] = At[:, 0:8, 4:8], At[:, 8:, 0:4]
    for wrong in (reps * (Aw @ Bt) + C, reps * (At @ Bt.transpose(0, 2, 1)) + C):
        assert np.abs(D - wrong).max() > 100 * tol.max()
    # unrounded float bits: the emulation drops the low 13 (truncation), as Ampere/Hopper
    # do; PTX leaves the tf32 layout implementation-defined: kernels round with f32_to_tf32
    launch(emulator, "mma_tf32_kernel", 1, 32 * W, (D, A, B, C, cuda.i32(1), cuda.i32(1)))
    def trunc(m):
        return (m.view(np.uint32) & 0xFFFFE000).view(np.float32).astype(np.float64)
    assert_close(D, trunc(A) @ trunc(B) + C, atol=tol, rtol=0.0, what="mma tf32 of raw floats")


@pytest.mark.parametrize("reps", [1, 2])
def test_mma_bf16_16x8x16_layout(emulator, rng, reps):
    W = 4
    A = rng.standard_normal((W, 16, 16)).astype(np.float32)
    B = rng.standard_normal((W, 16, 8)).astype(np.float32)
    C = rng.standard_normal((W, 16, 8)).astype(np.float32)
    D = np.full((W, 16, 8), np.nan, np.float32)
    launch(emulator, "mma_bf16_kernel", 1, 32 * W, (D, A, B, C, cuda.i32(reps)))
    Ab, Bb = bf16_round(A), bf16_round(B)
    ref = reps * (Ab @ Bb) + C
    tol = _tolerance(Ab, Bb, C, reps)
    assert_close(D, ref, atol=tol, rtol=0.0, what="mma bf16")
    assert_close(D, ref, atol=1e-6 * np.abs(ref).max(), rtol=1e-6, what="mma bf16 (1e-6 relative)")
    # wrong layouts: the halves of each register swapped (columns 2t <-> 2t+1 of A),
    # registers a1 and a2 swapped (rows g+8 <-> columns +8), B read n-major
    Ah = Ab.copy()
    Ah[:, :, 0::2], Ah[:, :, 1::2] = Ab[:, :, 1::2], Ab[:, :, 0::2]
    Ar = Ab.copy()
    Ar[:, 8:, 0:8], Ar[:, 0:8, 8:16] = Ab[:, 0:8, 8:16], Ab[:, 8:, 0:8]
    Bh = Bb.copy()
    Bh[:, 0::2], Bh[:, 1::2] = Bb[:, 1::2], Bb[:, 0::2]
    for wrong in (Ah @ Bb, Ar @ Bb, Ab @ Bh):
        assert np.abs(D - (reps * wrong + C)).max() > 100 * tol.max()


def test_mma_in_a_tiled_gemm_with_syncthreads(emulator, rng):
    """4 warps, shared-memory stages, __syncthreads between mma: the conv kernels'
    pattern. Also the timing a kernel writer can expect (printed with -s)."""
    K = 64
    A = rng.standard_normal((32, K)).astype(np.float32)
    B = rng.standard_normal((K, 16)).astype(np.float32)
    D = np.full((32, 16), np.nan, np.float32)
    seconds = launch(emulator, "gemm_tf32_kernel", 1, 128, (D, A, B, cuda.i32(K)))
    At, Bt = tf32_round(A), tf32_round(B)
    # the mma of successive k-steps each round to fp32: allow K/8 roundings
    assert_close(D, At @ Bt, atol=(K // 8) * _tolerance(At, Bt, 0 * D), rtol=0.0, what="gemm")
    print(f"gemm_tf32_kernel: 4 warps x {K // 8} mma + {2 * K // 8} __syncthreads: {seconds:.3f} s")


# ---- float4 ------------------------------------------------------------------

def test_float4_loads_are_aligned_or_trap():
    """Arrays start at 256-byte boundaries as from cudaMalloc, so a float4 load at a
    multiple of 4 floats works; one off a 16-byte boundary traps (as the GPU
    refuses it) -- in a child process, since the trap ends the process."""
    script = textwrap.dedent(r'''
        import sys
        import numpy as np
        sys.path.insert(0, sys.argv[1])
        from cpstyle import cuda
        from emulation.harness import Emulator, SourceKernel
        src = r"""
        extern "C" __global__ void float4_kernel(float* y, const float* x, int off) {
            const float4 v = *reinterpret_cast<const float4*>(x + off + 4 * threadIdx.x);
            y[threadIdx.x] = v.x + 2.f * v.y + 3.f * v.z + 4.f * v.w;
        }"""
        x, y = np.arange(40, dtype=np.float32), np.zeros(8, np.float32)
        off = int(sys.argv[2])
        Emulator().launch(SourceKernel(src, "float4_kernel"), 1, 8, (y, x, cuda.i32(off)))
        v = x[off:off + 32].reshape(8, 4)
        assert (y == v @ np.float32([1, 2, 3, 4])).all(), y
        print("survived")
    ''')
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    run = dict(capture_output=True, text=True, cwd=os.path.dirname(tests_dir), timeout=300)
    ok = subprocess.run([sys.executable, "-c", script, tests_dir, "4"], **run)
    assert ok.returncode == 0 and "survived" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-c", script, tests_dir, "1"], **run)
    assert bad.returncode != 0 and "survived" not in bad.stdout


# ---- NVRTC -------------------------------------------------------------------

NVRTC_SOURCE = r"""
#include "mma.cuh"
extern "C" __global__ void mma_all_kernel(float* y, const float* x) {
    const int i = threadIdx.x;
    unsigned a[4], b[2];
    for (int q = 0; q < 4; ++q) a[q] = f32_to_tf32(x[4 * i + q]);
    b[0] = pack_bf16x2(x[i], x[i + 32]);
    b[1] = pack_bf16x2(x[i + 64], x[i + 96]);
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    mma_tf32_16x8x8(d, a, b);
    mma_bf16_16x8x16(d, a, b);
    for (int q = 0; q < 4; ++q) y[4 * i + q] = d[q];
}
"""


def _nvrtc(nvrtc, arch):
    src = cuda.kernel_source_text(NVRTC_SOURCE)
    prog = nvrtc.createProgram(src, "mma_test.cu", [], [])
    try:
        nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", "-ftz=true", *cuda.NVRTC_OPTIONS])
        log = nvrtc.getProgramLog(prog).strip()
        out = nvrtc.getCUBIN(prog) if arch.startswith("sm_") else nvrtc.getPTX(prog)
        return log, out.decode() if isinstance(out, bytes) and not arch.startswith("sm_") else out
    except Exception as e:
        raise AssertionError(f"{arch}: {e}\n{nvrtc.getProgramLog(prog)}") from None
    finally:
        nvrtc.destroyProgram(prog)


@pytest.mark.parametrize("arch", ["compute_80", "compute_90", "sm_90"])
def test_mma_header_compiles_with_nvrtc(arch):
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    log, out = _nvrtc(nvrtc, arch)
    assert not log, f"{arch}: compiled with a log:\n{log}"
    assert len(out) > 0
    if arch.startswith("compute_"):
        for instr in (r"mma\.sync\.aligned\.m16n8k8\.row\.col\.f32\.tf32\.tf32\.f32",
                      r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.bf16\.bf16\.f32",
                      r"cvt\.rna\.tf32\.f32", r"cvt\.rn\.bf16x2\.f32"):
            assert re.search(instr, out), f"{arch}: no {instr} in the PTX"


def test_mma_header_refuses_old_architectures():
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    with pytest.raises(AssertionError, match="needs sm_80 or later"):
        _nvrtc(nvrtc, "compute_75")
