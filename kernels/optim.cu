// kernels/optim.cu — the Adam and L-BFGS steps, with every scalar on the device.
// Loaded by cpstyle/ops/optim.py (the _gpu functions there); reference: the
// _cpu functions there (the spec). Used by cpstyle/optimizers.py.
// Tests: tests/test_kernels_emulated.py, tests/test_kernels_gpu.py.
//
// Layout: x, g, m, v, s, y, q, d (n,) float32; every scalar lives in device
// memory as double (rho, gamma, alpha, dot products) and is read through a
// pointer, so the host never waits for one.
//
//   adam_kernel(float* x, float* m, float* v, const float* g, float lr, float beta1,
//               float beta2, float c1, float c2, float eps, int n)
//       m = β1·m + (1-β1)·g;  v = β2·v + (1-β2)·g²
//       x = clip(x − lr·(m·c1)/(sqrt(v·c2) + eps), 0, 255)    c1, c2: bias corrections
//   dot_partial_kernel(double* partial, const float* a, const float* b, int n)
//       partial[block] = Σ a·b over the block's grid-stride share; the second
//       stage is reduce_partials_kernel of kernels/update.cu
//   lbfgs_diff_kernel(float* s, float* y, const float* x, const float* x_prev,
//                     const float* g, const float* g_prev, int n)
//       s = x − x_prev;  y = g − g_prev                         (the new pair)
//   lbfgs_pair_kernel(double* rho, double* gamma, const double* sy, const double* yy)
//       one thread: sy > 1e-10 ? (rho = 1/sy, gamma = sy/yy) : (rho = 0, gamma kept)
//   lbfgs_init_kernel(double* gamma, const double* sqsum, float step_size, int n)
//       one thread: gamma = step_size/(sqrt(sqsum/n) + 1e-8)    (the first step's H0)
//   lbfgs_first_loop_kernel(float* q, double* alpha, const float* y, const double* rho,
//                           const double* sq, int n)
//       a = rho·sq;  q −= (float)a·y;  alpha = a
//   lbfgs_scale_kernel(float* q, const double* gamma, int n)
//       q = (float)gamma·q                                       (r = H0·q)
//   lbfgs_second_loop_kernel(float* r, const float* s, const double* rho,
//                            const double* alpha, const double* yr, int n)
//       r += (float)(alpha − rho·yr)·s
//   descend_clip_kernel(float* x, const float* d, int n)
//       x = clip(x − d, 0, 255)
//
// Defines: REDUCE_THREADS, REDUCE_BLOCKS (common.cuh; dot_partial_kernel only).
// Element-wise kernels: one thread per element, any 1-D block size; the
// one-thread kernels: a launch of 1 block of 1 thread.

#include "common.cuh"

extern "C" __global__ void adam_kernel(float* x, float* m, float* v, const float* g, float lr, float beta1,
                                       float beta2, float c1, float c2, float eps, int n) {
    long long i = global_index();
    if (i >= n) return;
    float gi = g[i];
    float mi = beta1 * m[i] + (1.0f - beta1) * gi;
    float vi = beta2 * v[i] + (1.0f - beta2) * (gi * gi);
    m[i] = mi;
    v[i] = vi;
    float step = lr * (mi * c1) / (sqrtf(vi * c2) + eps);
    x[i] = fminf(fmaxf(x[i] - step, 0.0f), 255.0f);
}

extern "C" __global__ void dot_partial_kernel(double* partial, const float* a, const float* b, int n) {
    double s = 0.0;
    for (long long i = global_index(); i < n; i += global_stride()) s += (double)a[i] * (double)b[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

extern "C" __global__ void lbfgs_diff_kernel(float* s, float* y, const float* x, const float* x_prev,
                                             const float* g, const float* g_prev, int n) {
    long long i = global_index();
    if (i >= n) return;
    s[i] = x[i] - x_prev[i];
    y[i] = g[i] - g_prev[i];
}

extern "C" __global__ void lbfgs_pair_kernel(double* rho, double* gamma, const double* sy, const double* yy) {
    if (global_index() != 0) return;
    double a = sy[0];
    if (a > 1e-10) {  // curvature condition; NaN fails it too
        rho[0] = 1.0 / a;
        gamma[0] = a / yy[0];
    } else {
        rho[0] = 0.0;  // the pair keeps its slot but adds nothing to H
    }
}

extern "C" __global__ void lbfgs_init_kernel(double* gamma, const double* sqsum, float step_size, int n) {
    if (global_index() != 0) return;
    gamma[0] = (double)step_size / (sqrt(sqsum[0] / (double)n) + 1e-8);
}

extern "C" __global__ void lbfgs_first_loop_kernel(float* q, double* alpha, const float* y, const double* rho,
                                                   const double* sq, int n) {
    double a = rho[0] * sq[0];
    long long i = global_index();
    if (i == 0) alpha[0] = a;
    if (i >= n) return;
    q[i] = q[i] - (float)a * y[i];
}

extern "C" __global__ void lbfgs_scale_kernel(float* q, const double* gamma, int n) {
    long long i = global_index();
    if (i >= n) return;
    q[i] = (float)gamma[0] * q[i];
}

extern "C" __global__ void lbfgs_second_loop_kernel(float* r, const float* s, const double* rho,
                                                    const double* alpha, const double* yr, int n) {
    long long i = global_index();
    if (i >= n) return;
    float c = (float)(alpha[0] - rho[0] * yr[0]);
    r[i] = r[i] + c * s[i];
}

extern "C" __global__ void descend_clip_kernel(float* x, const float* d, int n) {
    long long i = global_index();
    if (i >= n) return;
    x[i] = fminf(fmaxf(x[i] - d[i], 0.0f), 255.0f);
}
