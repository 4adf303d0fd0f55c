// kernels/conv.cu — 3x3 conv (stride 1, zero padding 1) + bias + ReLU as a GEMM.
// Loaded by cpstyle/ops/conv.py (im2col_gpu, col2im_gpu, conv_forward_gpu, conv_backward_gpu);
// reference: im2col_cpu, col2im_cpu, conv_forward_cpu, conv_backward_cpu there. The GEMM
// itself is cupy.matmul; these are the kernels around it.
// Tests: tests/test_kernels_emulated.py, tests/test_kernels_gpu.py.
//
// Layout: x (N, H, W, C) float32 NHWC; cols (N*H*W, 9*C), column (ky*3+kx)*C + c.
//
//   im2col_kernel(float* cols, const float* x, int N, int H, int W, int C)
//       cols[(n*H+i)*W+j, (ky*3+kx)*C+c] = x[n, i+ky-1, j+kx-1, c], 0 outside
//   bias_relu_kernel(float* y, const float* b, int rows, int C)        in place
//       y[r, c] = max(y[r, c] + b[c], 0)           (the GEMM epilogue)
//   relu_backward_kernel(float* dz, const float* dout, const float* y, int n)
//       dz = y > 0 ? dout : 0                      (y: the forward's output)
//   col2im_kernel(float* out, const float* p, int N, int H, int W, int C)
//       out[n, a, b, c] = Σ_{ky,kx} p[(n*H+a+1-ky)*W + b+1-kx, (ky*3+kx)*C + c] over
//       the taps inside the image: the adjoint of im2col, summed in col2im_cpu's
//       order (centre tap first). The backward of conv1_1 (Cin 3, Cout 64):
//       dz·Wᵀ is 27 columns wide, where im2col of dz is 576 wide and its GEMM
//       only 3 (cuBLAS's worst shape: 5.3 ms of a 40 ms 1024² iteration).
//   col2im_bias_relu_kernel(float* y, const float* p, const float* b, int N, int H, int W, int C)
//       y = max(col2im(p) + b, 0): the forward's col2im form (conv_forward_cpu's,
//       for Cout <= Cin), p = x·W' with W' the kernel flipped in space.
//
// One thread per output element; any 1-D block size. No defines.

#include "common.cuh"

extern "C" __global__ void im2col_kernel(float* cols, const float* x, int N, int H, int W, int C) {
    long long i = global_index();
    long long k9 = 9LL * C;
    if (i >= (long long)N * H * W * k9) return;
    long long row = i / k9;          // (n*H + y)*W + x0 of the output pixel
    int k = (int)(i - row * k9);
    int tap = k / C, c = k - tap * C;
    int ky = tap / 3, kx = tap - ky * 3;
    int j = (int)(row % W);
    long long t = row / W;
    int yy = (int)(t % H) + ky - 1;
    int xx = j + kx - 1;
    long long n = t / H;
    float v = 0.0f;
    if (yy >= 0 && yy < H && xx >= 0 && xx < W)
        v = x[((n * H + yy) * W + xx) * C + c];
    cols[i] = v;
}

extern "C" __global__ void bias_relu_kernel(float* y, const float* b, int rows, int C) {
    long long i = global_index();
    if (i >= (long long)rows * C) return;
    y[i] = fmaxf(y[i] + b[i % C], 0.0f);
}

extern "C" __global__ void relu_backward_kernel(float* dz, const float* dout, const float* y, int n) {
    long long i = global_index();
    if (i >= n) return;
    dz[i] = y[i] > 0.0f ? dout[i] : 0.0f;
}

// Σ over the taps for output element i = ((n*H + a)*W + b)*C + c; see col2im_kernel.
__device__ __forceinline__ float col2im_sum(const float* p, long long i, int H, int W, int C) {
    long long pix = i / C;           // (n*H + a)*W + b of the output pixel
    int c = (int)(i - pix * C);
    int b = (int)(pix % W);
    long long t = pix / W;
    int a = (int)(t % H);
    long long n = t / H;
    long long k9 = 9LL * C;
    float s = p[pix * k9 + 4LL * C + c];  // the centre tap: always inside
    for (int tap = 0; tap < 9; ++tap) {
        if (tap == 4) continue;
        int ky = tap / 3, kx = tap - 3 * ky;
        int sa = a + 1 - ky, sb = b + 1 - kx;
        if (sa < 0 || sa >= H || sb < 0 || sb >= W) continue;
        s += p[((n * H + sa) * W + sb) * k9 + (long long)tap * C + c];
    }
    return s;
}

extern "C" __global__ void col2im_kernel(float* out, const float* p, int N, int H, int W, int C) {
    long long i = global_index();
    if (i >= (long long)N * H * W * C) return;
    out[i] = col2im_sum(p, i, H, W, C);
}

extern "C" __global__ void col2im_bias_relu_kernel(float* y, const float* p, const float* b,
                                                   int N, int H, int W, int C) {
    long long i = global_index();
    if (i >= (long long)N * H * W * C) return;
    y[i] = fmaxf(col2im_sum(p, i, H, W, C) + b[i % C], 0.0f);
}
