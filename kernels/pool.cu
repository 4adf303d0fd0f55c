// kernels/pool.cu — max-pool and average-pool 2x2, stride 2, floor for odd sizes.
// Loaded by cpstyle/ops/pool.py (maxpool_forward_gpu, maxpool_backward_gpu,
// avgpool_forward_gpu, avgpool_backward_gpu); reference: the _cpu functions there.
// Tests: tests/test_kernels_emulated.py, tests/test_kernels_gpu.py.
//
// Layout: x, dx (N, H, W, C) float32; y, dy, argmax (N, H/2, W/2, C) (floor),
// argmax uint8 = window slot 2*dy+dx of the first maximum in row-major order.
//
//   maxpool_forward_kernel(float* y, unsigned char* argmax, const float* x,
//                          int N, int H, int W, int C)
//       y = max over the window, argmax = first slot holding it (strict >)
//   maxpool_backward_kernel(float* dx, const float* dy, const unsigned char* argmax,
//                           int N, int H, int W, int C)      H, W: of dx
//       dx[n,i,j,c] = argmax[n,i/2,j/2,c] == 2*(i%2)+j%2 ? dy[n,i/2,j/2,c] : 0,
//       and 0 in the cropped last row/column: every dx element is written, so
//       no zero-fill and no atomics are needed
//   avgpool_forward_kernel(float* y, const float* x, int N, int H, int W, int C)
//       y = (x[slot 0] + x[slot 1] + x[slot 2] + x[slot 3]) * 0.25, in that order
//   avgpool_backward_kernel(float* dx, const float* dy, int N, int H, int W, int C)
//       dx[n,i,j,c] = dy[n,i/2,j/2,c] * 0.25, 0 in the cropped last row/column
//
// One thread per output element (forward: of y; backward: of dx). No defines.

#include "common.cuh"

extern "C" __global__ void maxpool_forward_kernel(float* y, unsigned char* argmax, const float* x,
                                                  int N, int H, int W, int C) {
    int Ho = H / 2, Wo = W / 2;
    long long i = global_index();
    if (i >= (long long)N * Ho * Wo * C) return;
    int c = (int)(i % C);
    long long t = i / C;
    int oj = (int)(t % Wo);
    t /= Wo;
    int oi = (int)(t % Ho);
    long long n = t / Ho;
    const float* p = x + ((n * H + 2 * oi) * W + 2 * oj) * C + c;  // window slot 0
    float best = p[0];
    int arg = 0;
    float v = p[C];                                                   // slot 1
    if (v > best) { best = v; arg = 1; }
    v = p[(long long)W * C];                                          // slot 2
    if (v > best) { best = v; arg = 2; }
    v = p[(long long)W * C + C];                                      // slot 3
    if (v > best) { best = v; arg = 3; }
    y[i] = best;
    argmax[i] = (unsigned char)arg;
}

extern "C" __global__ void maxpool_backward_kernel(float* dx, const float* dy, const unsigned char* argmax,
                                                   int N, int H, int W, int C) {
    int Ho = H / 2, Wo = W / 2;
    long long i = global_index();
    if (i >= (long long)N * H * W * C) return;
    int c = (int)(i % C);
    long long t = i / C;
    int j = (int)(t % W);
    t /= W;
    int r = (int)(t % H);
    long long n = t / H;
    float v = 0.0f;
    if (r < 2 * Ho && j < 2 * Wo) {
        long long o = ((n * Ho + r / 2) * Wo + j / 2) * C + c;
        if (argmax[o] == 2 * (r & 1) + (j & 1)) v = dy[o];
    }
    dx[i] = v;
}

extern "C" __global__ void avgpool_forward_kernel(float* y, const float* x, int N, int H, int W, int C) {
    int Ho = H / 2, Wo = W / 2;
    long long i = global_index();
    if (i >= (long long)N * Ho * Wo * C) return;
    int c = (int)(i % C);
    long long t = i / C;
    int oj = (int)(t % Wo);
    t /= Wo;
    int oi = (int)(t % Ho);
    long long n = t / Ho;
    const float* p = x + ((n * H + 2 * oi) * W + 2 * oj) * C + c;  // window slot 0
    long long row = (long long)W * C;
    y[i] = (((p[0] + p[C]) + p[row]) + p[row + C]) * 0.25f;
}

extern "C" __global__ void avgpool_backward_kernel(float* dx, const float* dy, int N, int H, int W, int C) {
    int Ho = H / 2, Wo = W / 2;
    long long i = global_index();
    if (i >= (long long)N * H * W * C) return;
    int c = (int)(i % C);
    long long t = i / C;
    int j = (int)(t % W);
    t /= W;
    int r = (int)(t % H);
    long long n = t / H;
    float v = 0.0f;
    if (r < 2 * Ho && j < 2 * Wo) v = dy[((n * Ho + r / 2) * Wo + j / 2) * C + c] * 0.25f;
    dx[i] = v;
}
