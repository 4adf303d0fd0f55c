// kernels/optim.cu — the Adam and L-BFGS steps, with every scalar and counter on the
// device, so that one captured CUDA graph of a step replays for every iteration.
// Loaded by cpstyle/ops/optim.py (the _gpu functions there); reference: the
// _cpu functions there (the spec). Used by cpstyle/optimizers.py.
// Tests: tests/test_kernels_emulated.py, tests/test_kernels_gpu.py.
//
// Layout: x, g, m, v, q, d, x_prev, g_prev (n,) float32; S, Y (m, n) float32 rings
// of L-BFGS pairs; every scalar lives in device memory as double (rho (m), alpha (m),
// gamma, dot products, Adam's corr = [t, c1, c2]) and is read through a pointer.
// ring = [steps, head] int32: steps taken (this one included, once
// lbfgs_advance_kernel has run), head = the slot the next pair goes to. Position j
// (0 = oldest .. m-1 = newest) is slot (head + j) % m; slots never written hold
// zeros and rho = 0, so they add exactly nothing (up to the sign of a zero).
//
//   adam_count_kernel(double* corr, double beta1, double beta2)        one thread
//       t = corr[0] + 1;  corr = [t, 1/(1 − β1^t), 1/(1 − β2^t)]      (bias corrections)
//   adam_kernel(float* x, float* m, float* v, const float* g, const double* corr,
//               float lr, float beta1, float beta2, float eps, int n)
//       m = β1·m + (1-β1)·g;  v = β2·v + (1-β2)·g²
//       x = clip(x − lr·(m·c1)/(sqrt(v·c2) + eps), 0, 255)    c1, c2 = (float)corr[1..2]
//   lbfgs_advance_kernel(int* ring, int m)                              one thread
//       steps > 0 ? head = (head + 1) % m : head kept;  steps += 1
//   lbfgs_diff_kernel(float* S, float* Y, float* x_prev, float* g_prev, float* q,
//                     const float* x, const float* g, const int* ring, int m, int n)
//       steps > 1: S[slot(m-1)] = x − x_prev, Y[slot(m-1)] = g − g_prev (the new pair);
//       always: x_prev = x, g_prev = g, q = g
//   dot_partial_kernel(double* partial, const float* a, const float* b, const int* ring,
//                      int ja, int jb, int m, int n)
//       partial[block] = Σ a_j·b_j over the block's grid-stride share, a_j = a + slot(ja)·n
//       (b likewise; jb < 0: b itself); the second stage is reduce_partials_kernel of
//       kernels/update.cu
//   lbfgs_pair_kernel(double* rho, double* gamma, const double* sy, const double* yy,
//                     const int* ring, int m)                          one thread
//       steps > 1, k = slot(m-1): sy > 1e-10 ? (rho[k] = 1/sy, gamma = sy/yy) : rho[k] = 0
//   lbfgs_init_kernel(double* gamma, const double* sqsum, const int* ring, float step_size, int n)
//       one thread, steps == 1 only: gamma = step_size/(sqrt(sqsum/n) + 1e-8)  (the first H0)
//   lbfgs_first_loop_kernel(float* q, double* alpha, const float* Y, const double* rho,
//                           const double* sq, const int* ring, int j, int m, int n)
//       k = slot(j): a = rho[k]·sq;  q −= (float)a·Y[k];  alpha[k] = a
//   lbfgs_scale_kernel(float* q, const double* gamma, int n)
//       q = (float)gamma·q                                       (r = H0·q)
//   lbfgs_second_loop_kernel(float* r, const float* S, const double* rho,
//                            const double* alpha, const double* yr, const int* ring,
//                            int j, int m, int n)
//       k = slot(j): r += (float)(alpha[k] − rho[k]·yr)·S[k]
//   descend_clip_kernel(float* x, const float* d, int n)
//       x = clip(x − d, 0, 255)
//
// Defines: REDUCE_THREADS, REDUCE_BLOCKS (common.cuh; dot_partial_kernel only).
// Element-wise kernels: one thread per element, any 1-D block size; the
// one-thread kernels: a launch of 1 block of 1 thread.

#include "common.cuh"

__device__ __forceinline__ long long ring_slot(const int* ring, int j, int m) {
    return (long long)((ring[1] + j) % m);
}

extern "C" __global__ void adam_count_kernel(double* corr, double beta1, double beta2) {
    if (global_index() != 0) return;
    double t = corr[0] + 1.0;
    corr[0] = t;
    corr[1] = 1.0 / (1.0 - pow(beta1, t));  // as the host's 1/(1 - beta1**t)
    corr[2] = 1.0 / (1.0 - pow(beta2, t));
}

extern "C" __global__ void adam_kernel(float* x, float* m, float* v, const float* g, const double* corr,
                                       float lr, float beta1, float beta2, float eps, int n) {
    long long i = global_index();
    if (i >= n) return;
    float c1 = (float)corr[1], c2 = (float)corr[2];
    float gi = g[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    float step = lr * (mi * c1) / (sqrtf(vi * c2) + eps);
    x[i] = fminf(fmaxf(x[i] - step, 0.0f), 255.0f);
}

extern "C" __global__ void lbfgs_advance_kernel(int* ring, int m) {
    if (global_index() != 0) return;
    if (ring[0] > 0) ring[1] = (ring[1] + 1) % m;
    ring[0] = ring[0] + 1;
}

extern "C" __global__ void lbfgs_diff_kernel(float* S, float* Y, float* x_prev, float* g_prev, float* q,
                                             const float* x, const float* g, const int* ring, int m, int n) {
    long long i = global_index();
    if (i >= n) return;
    if (ring[0] > 1) {
        long long k = ring_slot(ring, m - 1, m) * n + i;
        S[k] = x[i] - x_prev[i];
        Y[k] = g[i] - g_prev[i];
    }
    x_prev[i] = x[i];
    g_prev[i] = g[i];
    q[i] = g[i];
}

extern "C" __global__ void dot_partial_kernel(double* partial, const float* a, const float* b, const int* ring,
                                              int ja, int jb, int m, int n) {
    const float* pa = a + ring_slot(ring, ja, m) * n;
    const float* pb = jb < 0 ? b : b + ring_slot(ring, jb, m) * n;
    double s = 0.0;
    for (long long i = global_index(); i < n; i += global_stride()) s += (double)pa[i] * (double)pb[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void lbfgs_pair_kernel(double* rho, double* gamma, const double* sy, const double* yy,
                                             const int* ring, int m) {
    if (global_index() != 0 || ring[0] <= 1) return;
    long long k = ring_slot(ring, m - 1, m);
    double a = sy[0];
    if (a > 1e-10) {  // curvature condition; NaN fails it too
        rho[k] = 1.0 / a;
        gamma[0] = a / yy[0];
    } else {
        rho[k] = 0.0;  // the pair keeps its slot but adds nothing to H
    }
}

extern "C" __global__ void lbfgs_init_kernel(double* gamma, const double* sqsum, const int* ring, float step_size,
                                             int n) {
    if (global_index() != 0 || ring[0] != 1) return;
    gamma[0] = (double)step_size / (sqrt(sqsum[0] / (double)n) + 1e-8);
}

extern "C" __global__ void lbfgs_first_loop_kernel(float* q, double* alpha, const float* Y, const double* rho,
                                                   const double* sq, const int* ring, int j, int m, int n) {
    long long k = ring_slot(ring, j, m);
    double a = rho[k] * sq[0];
    long long i = global_index();
    if (i == 0) alpha[k] = a;
    if (i >= n) return;
    q[i] = q[i] - (float)a * Y[k * n + i];
}

extern "C" __global__ void lbfgs_scale_kernel(float* q, const double* gamma, int n) {
    long long i = global_index();
    if (i >= n) return;
    q[i] = (float)gamma[0] * q[i];
}

extern "C" __global__ void lbfgs_second_loop_kernel(float* r, const float* S, const double* rho,
                                                    const double* alpha, const double* yr, const int* ring,
                                                    int j, int m, int n) {
    long long i = global_index();
    if (i >= n) return;
    long long k = ring_slot(ring, j, m);
    float c = (float)(alpha[k] - rho[k] * yr[0]);
    r[i] = r[i] + c * S[k * n + i];
}

extern "C" __global__ void descend_clip_kernel(float* x, const float* d, int n) {
    long long i = global_index();
    if (i >= n) return;
    x[i] = fminf(fmaxf(x[i] - d[i], 0.0f), 255.0f);
}
