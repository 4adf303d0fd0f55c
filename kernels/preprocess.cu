// kernels/preprocess.cu — pre-processing as the model's first op.
// Loaded by cpstyle/ops/preprocess.py (preprocess_forward_gpu / _backward_gpu);
// reference: preprocess_forward_cpu / preprocess_backward_cpu there.
// Tests: tests/test_kernels_emulated.py, tests/test_kernels_gpu.py.
//
// Layout: images (npix, 3) float32, i.e. any (..., 3) C-contiguous array;
// scale, shift (3,) float32; bgr = 1 reads the source channel 2-c (caffe).
//
//   preprocess_forward_kernel(float* y, const float* x, const float* scale,
//                             const float* shift, int bgr, int npix)
//       y[p, c] = x[p, bgr ? 2-c : c] * scale[c] + shift[c]
//   preprocess_backward_kernel(float* dx, const float* dy, const float* scale,
//                              int bgr, int npix)
//       dx[p, bgr ? 2-c : c] = dy[p, c] * scale[c]
//
// One thread per element (3*npix); any 1-D block size. No defines.

#include "common.cuh"

extern "C" __global__ void preprocess_forward_kernel(float* y, const float* x, const float* scale,
                                                     const float* shift, int bgr, int npix) {
    long long i = global_index();
    if (i >= 3LL * npix) return;
    int c = (int)(i % 3);
    long long p = i / 3;
    int src = bgr ? 2 - c : c;
    y[i] = x[3 * p + src] * scale[c] + shift[c];
}

extern "C" __global__ void preprocess_backward_kernel(float* dx, const float* dy, const float* scale,
                                                      int bgr, int npix) {
    long long i = global_index();  // over dx: thread i writes dx[i]
    if (i >= 3LL * npix) return;
    int src = (int)(i % 3);
    long long p = i / 3;
    int c = bgr ? 2 - src : src;   // the output channel that read this source
    dx[i] = dy[3 * p + c] * scale[c];
}
