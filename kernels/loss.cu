// kernels/loss.cu — loss sums and gradient epilogues, all on the device.
// Loaded by cpstyle/ops/loss.py (mse_sum_gpu, denoise_sum_gpu, adj_weights_gpu,
// scaled_diff_gpu, denoise_backward_accumulate_gpu); reference: mse_forward_cpu,
// mse_backward_cpu, denoise_forward_cpu, denoise_backward_cpu there, and the
// adj weights of DESIGN.md §5 (cpstyle/objective.py).
// Tests: tests/test_kernels_emulated.py, tests/test_kernels_gpu.py.
//
// Sums are deterministic two-stage reductions in double, no atomics: a first
// stage with a fixed grid (<= REDUCE_BLOCKS blocks of REDUCE_THREADS threads,
// grid-stride) writes one partial per block, then sum_partials_kernel (one block)
// adds them up. Layout: x (N, H, W, C) float32; losses, weights, adj, coef (n,)
// float32; coef[0] read through a pointer so it never leaves the device.
//
//   sqdiff_partial_kernel(double* partial, const float* a, const float* b, int n)
//       partial[block] = Σ (a-b)²  over the block's grid-stride share
//   tv_partial_kernel(double* partial, const float* x, int N, int H, int W, int C)
//       partial[block] = Σ |x[i+1,j]-x[i,j]| + Σ |x[i,j+1]-x[i,j]|  (share)
//   sum_partials_kernel(float* out, const double* partial, int nparts, float scale,
//                       int accumulate)                       one block
//       out[0] = (accumulate ? out[0] : 0) + scale · Σ partial
//   adj_weights_kernel(float* adj, float* coef, const float* losses,
//                      const float* weights, int n)
//       adj[i] = 1/(losses[i] + 1e-10f), coef[i] = weights[i]·adj[i]
//   scaled_diff_kernel(float* out, const float* a, const float* b, const float* coef,
//                      float k, int accumulate, int n)
//       out = (accumulate ? out : 0) + k·coef[0]·(a - b)   (content-MSE tap gradient,
//       added into the backward's dh where one is there; Gram-loss dG)
//   tv_grad_accumulate_kernel(float* g, const float* x, const float* coef,
//                             int N, int H, int W, int C)
//       g += coef[0] · ∂TV/∂x,  ∂TV/∂x[i,j] = sign(x[i,j]-x[i-1,j]) - sign(x[i+1,j]-x[i,j])
//                                          + the same along j, sign(0) = 0
//
// Defines: REDUCE_THREADS, REDUCE_BLOCKS (common.cuh). Element-wise kernels: one
// thread per element, any 1-D block size.

#include "common.cuh"

extern "C" __global__ void sqdiff_partial_kernel(double* partial, const float* a, const float* b, int n) {
    double s = 0.0;
    for (long long i = global_index(); i < n; i += global_stride()) {
        double d = (double)a[i] - (double)b[i];
        s += d * d;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void tv_partial_kernel(double* partial, const float* x, int N, int H, int W, int C) {
    double s = 0.0;
    long long total = (long long)N * H * W * C;
    long long row = (long long)W * C;
    for (long long i = global_index(); i < total; i += global_stride()) {
        long long t = i / C;
        int j = (int)(t % W);
        int r = (int)((t / W) % H);
        float v = x[i];
        if (r + 1 < H) s += fabsf(x[i + row] - v);
        if (j + 1 < W) s += fabsf(x[i + C] - v);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void sum_partials_kernel(float* out, const double* partial, int nparts, float scale,
                                               int accumulate) {
    double s = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += partial[i];
    s = block_sum(s);
    if (threadIdx.x == 0) out[0] = (float)((accumulate ? (double)out[0] : 0.0) + (double)scale * s);
}

extern "C" __global__ void adj_weights_kernel(float* adj, float* coef, const float* losses,
                                              const float* weights, int n) {
    long long i = global_index();
    if (i >= n) return;
    float a = 1.0f / (losses[i] + 1e-10f);
    adj[i] = a;
    coef[i] = weights[i] * a;
}

extern "C" __global__ void scaled_diff_kernel(float* out, const float* a, const float* b, const float* coef,
                                              float k, int accumulate, int n) {
    long long i = global_index();
    if (i >= n) return;
    float v = (k * coef[0]) * (a[i] - b[i]);
    out[i] = accumulate ? out[i] + v : v;
}

__device__ __forceinline__ float sign_of(float v) {
    return (float)((v > 0.0f) - (v < 0.0f));
}

extern "C" __global__ void tv_grad_accumulate_kernel(float* g, const float* x, const float* coef,
                                                     int N, int H, int W, int C) {
    long long i = global_index();
    if (i >= (long long)N * H * W * C) return;
    long long t = i / C;
    int j = (int)(t % W);
    int r = (int)((t / W) % H);
    long long row = (long long)W * C;
    float v = x[i];
    float d = 0.0f;  // a sum of small integers: exact in any order
    if (r > 0) d += sign_of(v - x[i - row]);
    if (r + 1 < H) d -= sign_of(x[i + row] - v);
    if (j > 0) d += sign_of(v - x[i - C]);
    if (j + 1 < W) d -= sign_of(x[i + C] - v);
    g[i] += coef[0] * d;
}
