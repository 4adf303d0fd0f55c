// tests/emulation/cuda_emu.h — the CUDA subset our kernels use, on the host
// (DESIGN.md §7.3). Compiled by tests/emulation/harness.py in front of a
// kernels/NAME.cu (as given by cpstyle.cuda.kernel_source) with g++ -std=c++20.
// Defines CPSTYLE_EMULATION, so a header such as kernels/mma.cuh can pick the
// host versions (emu::...) of what is inline PTX on the GPU.
//
// - threadIdx/blockIdx/blockDim/gridDim: thread-locals of each emulated thread;
//   blockIdx, threadIdx are uint3 as in CUDA (unsigned arithmetic included).
// - A launch runs the blocks one after another; the threads of one block run as
//   std::threads at once, so __shared__ = static is shared by exactly one block.
// - Barriers: emu::Barrier, one counter and one futex word each (done() runs
//   once per phase in the last thread to arrive, before any waiter returns).
//   A thread that returns leaves every barrier it belongs to (arrive_and_drop).
// - __syncthreads(): a barrier over the block's threads. A kernel that returns
//   early before a __syncthreads does not hang: it is reported as an error
//   instead (best effort: it is caught when the early thread has left first).
// - Warps: lanes are consecutive groups of 32 linear thread ids (x fastest, then
//   y, z); the last warp of a block may be partial. Each warp has a barrier over
//   its live lanes, and every warp-level operation is one phase of it: each lane
//   writes its operands into its slot and arrives; the completion step (one
//   thread, the others waiting) checks the phase and computes every lane's
//   result, which the lanes read after the wait (the next phase cannot complete
//   before all have read): one barrier phase per operation.
// - Warp-level operations: __syncwarp, __shfl_sync/_up/_down/_xor (any type of
//   up to 8 bytes, width a power of two <= 32, the source lane as PTX shfl.sync
//   computes it), __ballot_sync, __any_sync, __all_sync, __activemask (the
//   lanes that have not returned; read before the warp's first collective, that
//   is all of them) and emu::mma_tf32_16x8x8 / emu::mma_bf16_16x8x16 (through
//   kernels/mma.cuh). Checked, as errors of the launch rather than hangs: all
//   live lanes of the warp make the same call (a shuffle in some lanes and a
//   vote, or __syncthreads, in others is an error); each lane's mask names
//   exactly the warp's live lanes (so the caller's bit is set, and no lane the
//   block lacks or that has returned is named; partial masks that leave out
//   live lanes are not emulated: an error); a shuffle's source lane takes part;
//   an mma has all 32 lanes.
// - mma: the operands as the hardware reads them (TF32: the low 13 bits
//   ignored; BF16: the 16-bit halves), products exact in double, the K products
//   summed in double, C added, rounded once to fp32. Real tensor cores' order
//   and internal precision are unspecified (not a chain of IEEE fp32 FMAs):
//   compare with tolerances.
// - After the first error every thread of the block unwinds (emu::Abort thrown
//   at its next barrier) and the launch returns the error; outputs are junk.
// - Cost (2 cores, measured): a barrier phase wakes every waiting thread; about
//   50-90 us per warp-level operation of a 32-thread block, 150-250 us per
//   round of one mma in each of the 4 warps of a 128-thread block, 250 us per
//   __syncthreads of 128 threads (as before warps existed).
// - atomicAdd through std::atomic_ref; __float_as_uint & co., __popc, __ffs,
//   float2/float4 (alignas 16: the harness puts arrays at 256-byte boundaries).
// Not emulated: masks naming a subset of a warp's live lanes, independent
// thread scheduling within a warp, warp-synchronous code without the _sync
// intrinsics, dynamic shared memory, streams, textures, cp.async, ldmatrix.
#pragma once
#include <atomic>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <math.h>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#define CPSTYLE_EMULATION 1

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace emu {
inline thread_local uint3 thread_idx{0, 0, 0};
inline thread_local uint3 block_idx{0, 0, 0};
inline thread_local dim3 block_dim;
inline thread_local dim3 grid_dim;
inline std::atomic<int> exited{0};
inline std::atomic<int> sync_after_exit{0};
inline std::atomic<bool> failed{false};
inline char error_message[256] = "";

struct Abort {};  // unwinds a thread once the launch has failed

// The first error of a launch wins; every thread unwinds at its next barrier.
inline void fail(const char* fmt, ...) {
    if (failed.exchange(true)) return;
    std::va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
}

// A central barrier: one counter and one futex word. done() runs once per
// phase, in the last thread to arrive, before any waiter returns;
// arrive_and_drop() arrives for this phase and leaves the later ones.
template <class Done>
class Barrier {
public:
    Barrier(int n, Done done) : expected_(n), remaining_(n), done_(done) {}
    Barrier(const Barrier&) = delete;
    Barrier& operator=(const Barrier&) = delete;

    // Phases completed so far: stable while a participant has not arrived.
    unsigned phase() const { return phase_.load(); }
    void arrive_and_wait() {
        const unsigned p = phase_.load(std::memory_order_relaxed);
        if (arrive()) return;
        while (phase_.load(std::memory_order_acquire) == p)
            phase_.wait(p, std::memory_order_acquire);
    }
    void arrive_and_drop() {
        drops_.fetch_add(1, std::memory_order_relaxed);
        arrive();
    }

private:
    bool arrive() {
        if (remaining_.fetch_sub(1, std::memory_order_acq_rel) != 1) return false;
        done_();
        expected_ -= drops_.exchange(0, std::memory_order_relaxed);
        remaining_.store(expected_, std::memory_order_relaxed);
        phase_.fetch_add(1, std::memory_order_release);
        phase_.notify_all();
        return true;
    }
    int expected_;
    std::atomic<int> remaining_, drops_{0};
    std::atomic<unsigned> phase_{0};
    Done done_;
};

struct NoStep {
    void operator()() const noexcept {}
};
inline Barrier<NoStep>* block_barrier = nullptr;  // over the threads of the running block

// What a lane does at a phase of its warp's barrier: all lanes must agree.
enum Op : unsigned char { SYNCWARP, SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, BALLOT, ANY, ALL,
                          MMA_TF32, MMA_BF16 };
inline const char* op_name(unsigned char op) {
    static const char* names[] = {"__syncwarp", "__shfl_sync", "__shfl_up_sync",
                                  "__shfl_down_sync", "__shfl_xor_sync", "__ballot_sync",
                                  "__any_sync", "__all_sync", "mma m16n8k8 tf32",
                                  "mma m16n8k16 bf16"};
    return names[op];
}

struct Warp;
struct WarpStep {
    Warp* w;
    void operator()() noexcept;
};

constexpr unsigned NOT_WAITING = ~0u;

struct Warp {
    unsigned index, present;            // warp of the block; its lanes (bit mask)
    std::atomic<unsigned> live_mask;    // lanes that have not returned
    Barrier<WarpStep> bar;
    // The phase of `bar` / of the block barrier each lane last waited in: a lane
    // waiting in a phase that has not completed is stuck there (see enter()).
    std::atomic<unsigned> op_wait[32], sync_wait[32];
    // written by each lane before it arrives, read by the completion step
    bool arrived[32] = {};
    unsigned char op[32] = {};
    unsigned mask[32] = {}, src[32] = {}, a[32][4] = {}, b[32][2] = {};
    unsigned long long in[32] = {};
    float c[32][4] = {};
    // written by the completion step, read by the lanes after the wait
    unsigned long long out[32] = {};
    float d[32][4] = {};

    Warp(unsigned index_, unsigned lanes)
        : index(index_), present(lanes == 32 ? ~0u : (1u << lanes) - 1), live_mask(present),
          bar((int)lanes, WarpStep{this}) {
        for (int l = 0; l < 32; ++l) op_wait[l] = sync_wait[l] = NOT_WAITING;
    }
    void step() noexcept;
    bool check_masks(unsigned arrived_mask) noexcept;
    void mma(bool bf16) noexcept;
};

inline thread_local Warp* warp = nullptr;
inline thread_local unsigned lane = 0;

// A warp-level operation waits for every live lane of the warp, __syncthreads for
// every live thread of the block: lanes of one warp in both at once would wait
// for each other forever. Each side records the phase it waits in (seq_cst),
// then looks for a lane of its warp waiting in the other barrier's current
// phase: of two such lanes at least one sees the other, and a phase cannot
// complete while a lane that checks it has not arrived, so a match is never stale.
inline void deadlock(const char* here, unsigned other, const char* there) {
    fail("warp %u of block (%u,%u,%u): lane %u at %s while lane %u waits at %s: divergent "
         "warp (a warp-level operation needs all live lanes of the warp)", warp->index,
         block_idx.x, block_idx.y, block_idx.z, lane, here, other, there);
    throw Abort{};
}

// This lane's slot for a warp-level operation; then arrive() and read the result.
inline Warp& enter(unsigned char op, unsigned mask) {
    if (failed.load(std::memory_order_relaxed)) throw Abort{};
    Warp& w = *warp;
    w.op[lane] = op;  // before op_wait: a lane that sees op_wait names it
    w.op_wait[lane].store(w.bar.phase());
    const unsigned bp = block_barrier->phase();
    for (unsigned l = 0; l < 32; ++l)
        if (w.sync_wait[l].load() == bp) deadlock(op_name(op), l, "__syncthreads");
    w.mask[lane] = mask;
    w.arrived[lane] = true;
    return w;
}

inline void arrive(Warp& w) {
    w.bar.arrive_and_wait();
    if (failed.load(std::memory_order_relaxed)) throw Abort{};
}

inline void WarpStep::operator()() noexcept { w->step(); }

inline void Warp::step() noexcept {
    unsigned A = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (arrived[l]) {
            A |= 1u << l;
            arrived[l] = false;
        }
    if (A == 0) return;  // completed by the last lanes leaving
    const unsigned l0 = (unsigned)__builtin_ctz(A);
    const unsigned char k = op[l0];
    for (unsigned l = l0 + 1; l < 32; ++l)
        if ((A >> l & 1) && op[l] != k) {
            fail("warp %u of block (%u,%u,%u): lanes at different warp-level operations "
                 "(lane %u at %s, lane %u at %s)", index, block_idx.x, block_idx.y, block_idx.z,
                 l0, op_name(k), l, op_name(op[l]));
            return;
        }
    if (k == MMA_TF32 || k == MMA_BF16) {
        if (A != ~0u) {
            fail("warp %u of block (%u,%u,%u): %s needs all 32 lanes of the warp, but only lanes "
                 "0x%08x take part", index, block_idx.x, block_idx.y, block_idx.z, op_name(k), A);
            return;
        }
        mma(k == MMA_BF16);
        return;
    }
    if (!check_masks(A)) return;
    if (k >= SHFL_IDX && k <= SHFL_XOR) {
        for (unsigned l = 0; l < 32; ++l)
            if (A >> l & 1) {
                if (!(A >> src[l] & 1)) {
                    fail("warp %u of block (%u,%u,%u): lane %u shuffles from lane %u, which "
                         "does not take part (lanes 0x%08x)", index, block_idx.x, block_idx.y,
                         block_idx.z, l, src[l], A);
                    return;
                }
                out[l] = in[src[l]];
            }
    } else if (k >= BALLOT && k <= ALL) {
        unsigned long long v = 0;
        for (unsigned l = 0; l < 32; ++l)
            if ((A >> l & 1) && in[l]) v |= 1ull << l;
        for (unsigned l = 0; l < 32; ++l) out[l] = v;
    }
}

// Each taking lane's mask must be exactly the lanes taking part, A = the warp's
// live lanes (the barrier waits for all of them).
inline bool Warp::check_masks(unsigned A) noexcept {
    for (unsigned l = 0; l < 32; ++l) {
        if (!(A >> l & 1) || mask[l] == A) continue;
        const unsigned m = mask[l];
        const char* why = !(m >> l & 1) ? "does not include the calling lane"
                          : (m & ~present) ? "names lanes that the block does not have"
                          : (m & ~A) ? "names lanes that have returned"
                          : "leaves out live lanes that take part (partial masks are not emulated)";
        fail("warp %u of block (%u,%u,%u): lane %u calls %s with mask 0x%08x, which %s "
             "(lanes taking part: 0x%08x)", index, block_idx.x, block_idx.y, block_idx.z, l,
             op_name(op[l]), m, why, A);
        return false;
    }
    return true;
}

inline float tf32_value(unsigned bits) {  // what the tensor core reads: 19 bits
    float f;
    bits &= 0xFFFFE000u;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline float bf16_value(unsigned half) {
    float f;
    half <<= 16;
    std::memcpy(&f, &half, 4);
    return f;
}

// D = A·B + C for the whole warp, from the lanes' fragments (layouts: kernels/mma.cuh).
inline void Warp::mma(bool bf16) noexcept {
    float A[16][16], B[16][8];
    const int K = bf16 ? 16 : 8;
    for (unsigned l = 0; l < 32; ++l) {
        const unsigned g = l >> 2, t = l & 3;
        if (bf16) {
            // a[q]: (row, col) in the low half, (row, col + 1) in the high half
            const unsigned ar[4] = {g, g + 8, g, g + 8};
            const unsigned ac[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
            for (int q = 0; q < 4; ++q) {
                A[ar[q]][ac[q]] = bf16_value(a[l][q] & 0xFFFF);
                A[ar[q]][ac[q] + 1] = bf16_value(a[l][q] >> 16);
            }
            // b[q]: (k, n = g) in the low half, (k + 1, g) in the high half, k = 2t + 8q
            for (int q = 0; q < 2; ++q) {
                B[2 * t + 8 * q][g] = bf16_value(b[l][q] & 0xFFFF);
                B[2 * t + 8 * q + 1][g] = bf16_value(b[l][q] >> 16);
            }
        } else {
            A[g][t] = tf32_value(a[l][0]);
            A[g + 8][t] = tf32_value(a[l][1]);
            A[g][t + 4] = tf32_value(a[l][2]);
            A[g + 8][t + 4] = tf32_value(a[l][3]);
            B[t][g] = tf32_value(b[l][0]);
            B[t + 4][g] = tf32_value(b[l][1]);
        }
    }
    for (unsigned l = 0; l < 32; ++l) {
        const unsigned g = l >> 2, t = l & 3;
        for (unsigned i = 0; i < 4; ++i) {
            const unsigned row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
            double s = 0.0;
            for (int k = 0; k < K; ++k) s += (double)A[row][k] * (double)B[k][col];
            d[l][i] = (float)(s + (double)c[l][i]);
        }
    }
}

inline void syncthreads() {
    if (failed.load(std::memory_order_relaxed)) throw Abort{};
    if (exited.load() > 0) sync_after_exit.store(1);
    Warp& w = *warp;
    w.sync_wait[lane].store(block_barrier->phase());
    const unsigned wp = w.bar.phase();
    for (unsigned l = 0; l < 32; ++l)
        if (w.op_wait[l].load() == wp) deadlock("__syncthreads", l, op_name(w.op[l]));
    block_barrier->arrive_and_wait();
    if (failed.load(std::memory_order_relaxed)) throw Abort{};
}

inline void syncwarp(unsigned mask) { arrive(enter(SYNCWARP, mask)); }

inline unsigned activemask() { return warp->live_mask.load(); }

// shfl.sync's source lane (PTX ISA, shfl.sync pseudocode) with CUDA's clamp for
// `width`: outside the lane's segment of `width` lanes it reads its own value.
template <class T>
inline T shfl(unsigned mask, T var, Op mode, int b, int width) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8,
                  "__shfl_*_sync of a type the emulation does not take");
    if (width < 1 || width > 32 || (width & (width - 1))) {
        fail("__shfl_sync with width %d (must be a power of two <= 32)", width);
        throw Abort{};  // leaves the warp barrier: the others see `failed` after their wait
    }
    Warp& w = enter(mode, mask);
    const int ln = (int)lane, seg = 32 - width, bval = b & 31;
    const int clamp = mode == SHFL_UP ? 0 : 31;
    const int maxl = (ln & seg) | (clamp & ~seg & 31), minl = ln & seg;
    int j;
    bool ok;
    switch (mode) {
    case SHFL_UP:   j = ln - bval; ok = j >= maxl; break;
    case SHFL_DOWN: j = ln + bval; ok = j <= maxl; break;
    case SHFL_XOR:  j = ln ^ bval; ok = j <= maxl; break;
    default:        j = minl | (bval & ~seg & 31); ok = j <= maxl; break;
    }
    w.src[lane] = ok ? (unsigned)j : lane;
    unsigned long long bits = 0;
    std::memcpy(&bits, &var, sizeof(T));
    w.in[lane] = bits;
    arrive(w);
    bits = w.out[lane];
    T r;
    std::memcpy(&r, &bits, sizeof(T));
    return r;
}

inline unsigned vote(Op op, unsigned mask, int pred) {
    Warp& w = enter(op, mask);
    w.in[lane] = pred != 0;
    arrive(w);
    return (unsigned)w.out[lane];
}

// ---- tensor cores (the host side of kernels/mma.cuh) --------------------------

// cvt.rna.tf32.f32: to nearest, ties away from zero, on the magnitude bits; the
// result keeps fp32's layout with the low 13 bits zero. Overflow rounds to inf;
// NaN stays NaN (quiet, sign kept).
inline unsigned f32_to_tf32(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7F800000u) == 0x7F800000u)  // inf, NaN
        return (u & 0x007FFFFFu) ? ((u | 0x00400000u) & 0xFFFFE000u) : u;
    return (u + 0x1000u) & 0xFFFFE000u;
}

// fp32 -> bf16 bits, to nearest even; NaN stays NaN (quiet, sign kept).
inline unsigned f32_to_bf16(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7F800000u) == 0x7F800000u && (u & 0x007FFFFFu)) return (u >> 16) | 0x0040u;
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

// cvt.rn.bf16x2.f32 d, hi, lo: `lo` in bits 0..15, `hi` in 16..31.
inline unsigned pack_bf16x2(float lo, float hi) {
    return f32_to_bf16(lo) | (f32_to_bf16(hi) << 16);
}

template <unsigned char OP>
inline void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    Warp& w = enter(OP, ~0u);
    for (int i = 0; i < 4; ++i) {
        w.a[lane][i] = a[i];
        w.c[lane][i] = d[i];
    }
    w.b[lane][0] = b[0];
    w.b[lane][1] = b[1];
    arrive(w);
    for (int i = 0; i < 4; ++i) d[i] = w.d[lane][i];
}

inline void mma_tf32_16x8x8(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    mma<MMA_TF32>(d, a, b);
}

inline void mma_bf16_16x8x16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    mma<MMA_BF16>(d, a, b);
}

// ---- launch ---------------------------------------------------------------------

// Runs f() as grid x block threads; returns 0, or 1 with error_message set.
template <class F>
int launch(dim3 grid, dim3 block, F f) {
    const unsigned nt = block.x * block.y * block.z, nw = (nt + 31) / 32;
    error_message[0] = '\0';
    failed.store(false);
    sync_after_exit.store(0);
    for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
        Barrier<NoStep> bar((int)nt, NoStep{});
        block_barrier = &bar;
        exited.store(0);
        std::vector<std::unique_ptr<Warp>> warps;
        for (unsigned i = 0; i < nw; ++i)
            warps.push_back(std::make_unique<Warp>(i, i + 1 < nw ? 32 : nt - 32 * i));
        std::vector<std::thread> threads;
        threads.reserve(nt);
        for (unsigned tz = 0; tz < block.z; ++tz)
        for (unsigned ty = 0; ty < block.y; ++ty)
        for (unsigned tx = 0; tx < block.x; ++tx) {
            const unsigned tid = tx + block.x * (ty + block.y * tz);
            Warp* w = warps[tid / 32].get();
            threads.emplace_back([=, &bar, &f] {
                thread_idx = uint3{tx, ty, tz};
                block_idx = uint3{bx, by, bz};
                block_dim = block;
                grid_dim = grid;
                warp = w;
                lane = tid % 32;
                try {
                    f();
                } catch (const Abort&) {
                }
                exited.fetch_add(1);
                w->live_mask.fetch_and(~(1u << lane));
                w->bar.arrive_and_drop();  // may run a completion step (as this thread)
                bar.arrive_and_drop();
            });
        }
        for (auto& t : threads) t.join();
        block_barrier = nullptr;
        if (failed.load()) return 1;
        if (sync_after_exit.load()) {
            std::snprintf(error_message, sizeof error_message,
                          "__syncthreads() after a thread of block (%u,%u,%u) had returned", bx, by, bz);
            return 1;
        }
    }
    return 0;
}
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)
#define __syncthreads() emu::syncthreads()

constexpr int warpSize = 32;

template <class T>
inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline float __fdividef(float a, float b) { return a / b; }

inline unsigned __float_as_uint(float x) { unsigned u; std::memcpy(&u, &x, 4); return u; }
inline float __uint_as_float(unsigned u) { float x; std::memcpy(&x, &u, 4); return x; }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }

inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::syncwarp(mask); }
inline unsigned __activemask() { return emu::activemask(); }
template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32) {
    return emu::shfl(mask, var, emu::SHFL_IDX, srcLane, width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return emu::shfl(mask, var, emu::SHFL_UP, (int)delta, width);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return emu::shfl(mask, var, emu::SHFL_DOWN, (int)delta, width);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32) {
    return emu::shfl(mask, var, emu::SHFL_XOR, laneMask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    return emu::vote(emu::BALLOT, mask, pred);
}
inline int __any_sync(unsigned mask, int pred) { return emu::vote(emu::ANY, mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return emu::vote(emu::ALL, mask, pred) == mask; }
