// tests/emulation/cuda_emu.h — the CUDA subset our kernels use, on the host
// (DESIGN.md §7.3). Compiled by tests/emulation/harness.py in front of a
// kernels/NAME.cu (as given by cpstyle.cuda.kernel_source) with g++ -std=c++20.
//
// - threadIdx/blockIdx/blockDim/gridDim: thread-locals of each emulated thread;
//   blockIdx, threadIdx are uint3 as in CUDA (unsigned arithmetic included).
// - A launch runs the blocks one after another; the threads of one block run as
//   std::threads at once, so __shared__ = static is shared by exactly one block.
// - __syncthreads(): a std::barrier over the block's threads. A thread that
//   returns leaves the barrier (arrive_and_drop), so a kernel that returns early
//   before a __syncthreads does not hang: it is reported as an error instead
//   (best effort: it is caught when the early thread has left first).
// - atomicAdd through std::atomic_ref.
// Not emulated: warp shuffles/votes, warp-synchronous code, tensor cores,
// dynamic shared memory, streams, texture memory.
#pragma once
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <math.h>
#include <thread>
#include <vector>

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {
inline thread_local uint3 thread_idx{0, 0, 0};
inline thread_local uint3 block_idx{0, 0, 0};
inline thread_local dim3 block_dim;
inline thread_local dim3 grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::atomic<int> exited{0};
inline std::atomic<int> sync_after_exit{0};
inline char error_message[256] = "";

inline void syncthreads() {
    if (exited.load() > 0) sync_after_exit.store(1);
    block_barrier->arrive_and_wait();
}

// Runs f() as grid x block threads; returns 0, or 1 with error_message set.
template <class F>
int launch(dim3 grid, dim3 block, F f) {
    const unsigned nt = block.x * block.y * block.z;
    error_message[0] = '\0';
    sync_after_exit.store(0);
    for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> bar((std::ptrdiff_t)nt);
        block_barrier = &bar;
        exited.store(0);
        std::vector<std::thread> threads;
        threads.reserve(nt);
        for (unsigned tz = 0; tz < block.z; ++tz)
        for (unsigned ty = 0; ty < block.y; ++ty)
        for (unsigned tx = 0; tx < block.x; ++tx)
            threads.emplace_back([=, &bar, &f] {
                thread_idx = uint3{tx, ty, tz};
                block_idx = uint3{bx, by, bz};
                block_dim = block;
                grid_dim = grid;
                f();
                exited.fetch_add(1);
                bar.arrive_and_drop();
            });
        for (auto& t : threads) t.join();
        block_barrier = nullptr;
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

template <class T>
inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline float __fdividef(float a, float b) { return a / b; }
