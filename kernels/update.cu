// kernels/update.cu — the tutorial's step, with std(g) computed on the device.
// Loaded by cpstyle/ops/update.py (update_gpu_inplace); reference: update_cpu.
// Tests: tests/test_kernels_emulated.py, tests/test_kernels_gpu.py.
//
//   x ← clip(x − g · step_size/(std(g) + 1e-8), 0, 255)    population std
//
// std by two passes in double (sum -> mean, then Σ(g-mean)²), each a
// deterministic two-stage reduction: a first stage with a fixed grid
// (<= REDUCE_BLOCKS blocks of REDUCE_THREADS threads) writes one partial per
// block, reduce_partials_kernel (one block) adds them. x, g (n,) float32.
//
//   sum_partial_kernel(double* partial, const float* g, int n)
//       partial[block] = Σ g  over the block's grid-stride share
//   centered_sqsum_partial_kernel(double* partial, const float* g, const double* total, int n)
//       partial[block] = Σ (g - total[0]/n)²
//   reduce_partials_kernel(double* out, const double* partial, int nparts)   one block
//       out[0] = Σ partial
//   update_kernel(float* x, const float* g, const double* sqsum, float step_size, int n)
//       s = step_size/(sqrt(sqsum[0]/n) + 1e-8);  x = min(max(x - g·s, 0), 255)
//
// Defines: REDUCE_THREADS, REDUCE_BLOCKS (common.cuh). update_kernel: one thread
// per element, any 1-D block size.

#include "common.cuh"

extern "C" __global__ void sum_partial_kernel(double* partial, const float* g, int n) {
    double s = 0.0;
    for (long long i = global_index(); i < n; i += global_stride()) s += (double)g[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void centered_sqsum_partial_kernel(double* partial, const float* g, const double* total,
                                                         int n) {
    double mean = total[0] / (double)n;
    double s = 0.0;
    for (long long i = global_index(); i < n; i += global_stride()) {
        double d = (double)g[i] - mean;
        s += d * d;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void reduce_partials_kernel(double* out, const double* partial, int nparts) {
    double s = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += partial[i];
    s = block_sum(s);
    if (threadIdx.x == 0) out[0] = s;
}

extern "C" __global__ void update_kernel(float* x, const float* g, const double* sqsum, float step_size, int n) {
    long long i = global_index();
    if (i >= n) return;
    float s = (float)((double)step_size / (sqrt(sqsum[0] / (double)n) + 1e-8));
    x[i] = fminf(fmaxf(x[i] - g[i] * s, 0.0f), 255.0f);
}
