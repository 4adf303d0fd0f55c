// kernels/conv_igemm.cu — 3x3 conv (stride 1, zero padding 1) as an implicit GEMM on
// tensor cores: no im2col in memory. Loaded by cpstyle/ops/conv_igemm.py
// (conv_forward_igemm, conv_backward_igemm); reference: conv_forward_cpu and
// conv_backward_cpu in cpstyle/ops/conv.py. Tests: tests/test_kernels_emulated.py
// (on the CPU, under tests/emulation), tests/test_kernels_nvrtc.py, tests/test_kernels_gpu.py.
//
// Layout: activations NHWC float32; w (3, 3, Cin, Cout) read as B = (9*Cin, Cout).
// GEMM: rows p = (n*H + i)*W + j (pixels, M = N*H*W), columns co (Cout),
// k = (ky*3 + kx)*Cin + ci (K = 9*Cin), A[p, k] = x[n, i+ky-1, j+kx-1, ci] or 0 outside.
//
//   conv_igemm_forward_kernel(float* y, const float* x, const float* w, const float* b,
//                             int N, int H, int W, int Cin, int Cout)
//       y = max(A·B + b, 0)                     (bias + ReLU in the epilogue)
//   conv_igemm_backward_kernel(float* dx, const float* dout, const float* y,
//                              const float* wflip, int N, int H, int W, int Cout, int Cin)
//       dx = A'·B'  with A' gathered from dz = dout ⊙ [y > 0] (the ReLU mask applied
//       as the tile is loaded) and B' = wflip (3, 3, Cout, Cin) = w flipped in space,
//       Cin and Cout swapped: dx[i, j] = Σ dz[i+1-ky, j+1-kx]·w[ky, kx]ᵀ (stride 1, pad 1)
//   conv_igemm_forward_splitk_kernel(float* part, const float* x, const float* w,
//                                    int N, int H, int W, int Cin, int Cout, int splits)
//   conv_igemm_backward_splitk_kernel(float* part, const float* dout, const float* y,
//                                     const float* wflip, int N, int H, int W, int Cout, int Cin,
//                                     int splits)
//       split-K (grid.z = splits): block z sums its share of the K stages into
//       part[z] (splits, M, Nc), raw; for layers with too few output tiles for the SMs
//   splitk_sum_kernel(float* out, const float* part, int n, int splits)
//   splitk_sum_bias_relu_kernel(float* out, const float* part, const float* b, int n,
//                               int cols, int splits)
//       out = Σ_z part[z] (then max(· + b, 0) per column): any 1-D block size
//
// Tiles: each block computes a BM x BN tile of the output with WARPS_M x WARPS_N warps
// (32*WARPS_M*WARPS_N threads: the launch must use exactly that), each warp a
// (BM/WARPS_M) x (BN/WARPS_N) tile of 16x8 mma fragments. K advances BK at a time
// through two shared-memory stages: the next stage's global loads are in registers
// while the current stage's mma run (one __syncthreads per stage; no cp.async, no
// dynamic shared memory: nothing a CUDA graph would refuse). Shared tiles hold fp32;
// operands are rounded to the precision as the fragments are read:
//   PREC 0  fp32 by 3xTF32: v = big + small (both TF32), A·B ≈ As·Bb + Ab·Bs + Ab·Bb
//   PREC 1  tf32 (mma m16n8k8, cvt.rna), fp32 accumulation
//   PREC 2  bf16 (mma m16n8k16, round to nearest even), fp32 accumulation
//
// Defines (the wrapper passes all; defaults behind #ifndef):
//   BM, BN, BK, WARPS_M, WARPS_N   tile shape (BK a multiple of 16 for bf16, of 8 else)
//   PREC                           0, 1, 2 as above
//   VEC_A   4: A rows are read as float4 (the A source's channel count % 4 == 0), else 1
//   VEC_B   4: B rows as float4 (the output channel count % 4 == 0), else 1

#include "mma.cuh"

#ifndef BM
#define BM 128
#endif
#ifndef BN
#define BN 64
#endif
#ifndef BK
#define BK 16
#endif
#ifndef WARPS_M
#define WARPS_M 2
#endif
#ifndef WARPS_N
#define WARPS_N 2
#endif
#ifndef PREC
#define PREC 1
#endif
#ifndef VEC_A
#define VEC_A 1
#endif
#ifndef VEC_B
#define VEC_B 1
#endif

#define IG_THREADS (32 * WARPS_M * WARPS_N)
#define IG_WM (BM / WARPS_M)          // warp tile rows
#define IG_WN (BN / WARPS_N)          // warp tile columns
#define IG_MT (IG_WM / 16)            // 16-row mma fragments per warp
#define IG_NT (IG_WN / 8)             // 8-column mma fragments per warp
#define IG_KSTEP (PREC == 2 ? 16 : 8) // K of one mma
#define IG_APAD 4                     // As row stride BK+4: fragment reads hit 32 banks
#define IG_BPAD 8                     // Bs row stride BN+8: likewise
#define IG_A_PER (BM * BK / VEC_A / IG_THREADS)  // A vectors each thread loads per stage
#define IG_B_PER (BK * BN / VEC_B / IG_THREADS)  // B vectors likewise

static_assert(PREC == 0 || PREC == 1 || PREC == 2, "PREC must be 0 (3xTF32), 1 (TF32) or 2 (BF16)");
static_assert(VEC_A == 1 || VEC_A == 4, "VEC_A must be 1 or 4");
static_assert(VEC_B == 1 || VEC_B == 4, "VEC_B must be 1 or 4");
static_assert(BM % (16 * WARPS_M) == 0, "BM must be a multiple of 16*WARPS_M");
static_assert(BN % (8 * WARPS_N) == 0, "BN must be a multiple of 8*WARPS_N");
static_assert(BK % IG_KSTEP == 0, "BK must be a multiple of the mma's K (8, or 16 for bf16)");
static_assert((BM * BK / VEC_A) % IG_THREADS == 0 && IG_A_PER > 0,
              "the A tile must split evenly over the threads");
static_assert((BK * BN / VEC_B) % IG_THREADS == 0 && IG_B_PER > 0,
              "the B tile must split evenly over the threads");
static_assert(IG_THREADS % (BK / VEC_A) == 0, "threads must cover whole A tile rows");
static_assert(IG_THREADS % (BN / VEC_B) == 0, "threads must cover whole B tile rows");
static_assert(2 * (BM * (BK + IG_APAD) + BK * (BN + IG_BPAD)) * 4 <= 48 * 1024,
              "two stages must fit 48 KB of static shared memory");

// Full unrolling keeps the fragment and accumulator arrays in registers (a loop
// left rolled indexes them at run time: local memory). g++ has no `#pragma unroll`.
#ifdef CPSTYLE_EMULATION
#define IG_UNROLL
#else
#define IG_UNROLL _Pragma("unroll")
#endif

// The float's bits and back (CUDA intrinsics; the emulation defines them too).
__device__ __forceinline__ float tf32_value(unsigned bits) { return __uint_as_float(bits); }

// One stage of the GEMM in registers on its way from global to shared memory.
struct IgStage {
    float a[IG_A_PER][VEC_A];
    float b[IG_B_PER][VEC_B];
};

// The A rows this thread loads: tile row r = tid / (BK/VEC_A) + s * (IG_THREADS/(BK/VEC_A)).
// For each, the pixel's own element offset and (i, j), i = -(1<<20) past the last pixel
// so that every tap of it reads as outside the image.
struct IgRows {
    long long base[IG_A_PER];
    int i[IG_A_PER], j[IG_A_PER];
};

__device__ __forceinline__ void ig_rows(IgRows& r, int m0, int M, int H, int W, int C) {
    const int rstep = IG_THREADS / (BK / VEC_A);
    const int r0 = threadIdx.x / (BK / VEC_A);
    IG_UNROLL
    for (int s = 0; s < IG_A_PER; ++s) {
        int p = m0 + r0 + s * rstep;
        if (p < M) {
            int hw = p % (H * W);
            r.i[s] = hw / W;
            r.j[s] = hw - r.i[s] * W;
            r.base[s] = (long long)p * C;
        } else {
            r.i[s] = -(1 << 20);
            r.j[s] = 0;
            r.base[s] = 0;
        }
    }
}

// Global -> registers for the stage starting at k0. MASK: A = src ⊙ [ysrc > 0].
template <bool MASK>
__device__ __forceinline__ void ig_load(IgStage& st, const IgRows& r, const float* __restrict__ src,
                                        const float* __restrict__ ysrc, const float* __restrict__ wm,
                                        int k0, int K, int H, int W, int C, int Nc, int n0) {
    {   // A: column group c of BK/VEC_A, fixed per thread; one tap per group
        const int k = k0 + (threadIdx.x % (BK / VEC_A)) * VEC_A;
        int di = 0, dj = 0, ci = 0;
        const bool kin = k < K;
        if (kin) {
            int tap = k / C;
            ci = k - tap * C;
            di = tap / 3 - 1;
            dj = tap % 3 - 1;
        }
        IG_UNROLL
        for (int s = 0; s < IG_A_PER; ++s) {
            int ii = r.i[s] + di, jj = r.j[s] + dj;
            bool in = kin && ii >= 0 && ii < H && jj >= 0 && jj < W;
            long long off = r.base[s] + ((long long)di * W + dj) * C + ci;
#if VEC_A == 4
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (in) {
                v = *reinterpret_cast<const float4*>(src + off);
                if (MASK) {
                    float4 m = *reinterpret_cast<const float4*>(ysrc + off);
                    v.x = m.x > 0.f ? v.x : 0.f;
                    v.y = m.y > 0.f ? v.y : 0.f;
                    v.z = m.z > 0.f ? v.z : 0.f;
                    v.w = m.w > 0.f ? v.w : 0.f;
                }
            }
            st.a[s][0] = v.x; st.a[s][1] = v.y; st.a[s][2] = v.z; st.a[s][3] = v.w;
#else
            float v = 0.f;
            if (in) {
                v = src[off];
                if (MASK && !(ysrc[off] > 0.f)) v = 0.f;
            }
            st.a[s][0] = v;
#endif
        }
    }
    {   // B: rows k, columns n0 + c*VEC_B
        const int c = (threadIdx.x % (BN / VEC_B)) * VEC_B;
        const int rstep = IG_THREADS / (BN / VEC_B);
        const int n = n0 + c;
        IG_UNROLL
        for (int s = 0; s < IG_B_PER; ++s) {
            int k = k0 + threadIdx.x / (BN / VEC_B) + s * rstep;
            const float* row = wm + (long long)k * Nc + n;
#if VEC_B == 4
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (k < K && n < Nc) v = *reinterpret_cast<const float4*>(row);
            st.b[s][0] = v.x; st.b[s][1] = v.y; st.b[s][2] = v.z; st.b[s][3] = v.w;
#else
            st.b[s][0] = (k < K && n < Nc) ? row[0] : 0.f;
#endif
        }
    }
}

__device__ __forceinline__ void ig_store(float (*As)[BK + IG_APAD], float (*Bs)[BN + IG_BPAD],
                                         const IgStage& st) {
    const int ca = (threadIdx.x % (BK / VEC_A)) * VEC_A;
    const int ra = threadIdx.x / (BK / VEC_A);
    IG_UNROLL
    for (int s = 0; s < IG_A_PER; ++s)
        IG_UNROLL
        for (int v = 0; v < VEC_A; ++v)
            As[ra + s * (IG_THREADS / (BK / VEC_A))][ca + v] = st.a[s][v];
    const int cb = (threadIdx.x % (BN / VEC_B)) * VEC_B;
    const int rb = threadIdx.x / (BN / VEC_B);
    IG_UNROLL
    for (int s = 0; s < IG_B_PER; ++s)
        IG_UNROLL
        for (int v = 0; v < VEC_B; ++v)
            Bs[rb + s * (IG_THREADS / (BN / VEC_B))][cb + v] = st.b[s][v];
}

// acc += the warp's share of As·Bs for one stage.
__device__ __forceinline__ void ig_compute(float (&acc)[IG_MT][IG_NT][4],
                                           const float (*As)[BK + IG_APAD],
                                           const float (*Bs)[BN + IG_BPAD], int wm0, int wn0) {
    const int lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    IG_UNROLL
    for (int kk = 0; kk < BK; kk += IG_KSTEP) {
#if PREC == 2
        unsigned a[IG_MT][4], b[IG_NT][2];
        IG_UNROLL
        for (int mt = 0; mt < IG_MT; ++mt) {
            const int r = wm0 + mt * 16 + g;
            a[mt][0] = pack_bf16x2(As[r][kk + 2 * t], As[r][kk + 2 * t + 1]);
            a[mt][1] = pack_bf16x2(As[r + 8][kk + 2 * t], As[r + 8][kk + 2 * t + 1]);
            a[mt][2] = pack_bf16x2(As[r][kk + 2 * t + 8], As[r][kk + 2 * t + 9]);
            a[mt][3] = pack_bf16x2(As[r + 8][kk + 2 * t + 8], As[r + 8][kk + 2 * t + 9]);
        }
        IG_UNROLL
        for (int nt = 0; nt < IG_NT; ++nt) {
            const int c = wn0 + nt * 8 + g;
            b[nt][0] = pack_bf16x2(Bs[kk + 2 * t][c], Bs[kk + 2 * t + 1][c]);
            b[nt][1] = pack_bf16x2(Bs[kk + 2 * t + 8][c], Bs[kk + 2 * t + 9][c]);
        }
        IG_UNROLL
        for (int mt = 0; mt < IG_MT; ++mt)
            IG_UNROLL
            for (int nt = 0; nt < IG_NT; ++nt)
                mma_bf16_16x8x16(acc[mt][nt], a[mt], b[nt]);
#else
        unsigned a[IG_MT][4], b[IG_NT][2];
#if PREC == 0
        unsigned as[IG_MT][4], bs[IG_NT][2];
#endif
        IG_UNROLL
        for (int mt = 0; mt < IG_MT; ++mt) {
            const int r = wm0 + mt * 16 + g;
            const float v[4] = {As[r][kk + t], As[r + 8][kk + t], As[r][kk + t + 4], As[r + 8][kk + t + 4]};
            IG_UNROLL
            for (int q = 0; q < 4; ++q) {
                a[mt][q] = f32_to_tf32(v[q]);
#if PREC == 0
                as[mt][q] = f32_to_tf32(v[q] - tf32_value(a[mt][q]));
#endif
            }
        }
        IG_UNROLL
        for (int nt = 0; nt < IG_NT; ++nt) {
            const int c = wn0 + nt * 8 + g;
            const float v[2] = {Bs[kk + t][c], Bs[kk + t + 4][c]};
            IG_UNROLL
            for (int q = 0; q < 2; ++q) {
                b[nt][q] = f32_to_tf32(v[q]);
#if PREC == 0
                bs[nt][q] = f32_to_tf32(v[q] - tf32_value(b[nt][q]));
#endif
            }
        }
        IG_UNROLL
        for (int mt = 0; mt < IG_MT; ++mt)
            IG_UNROLL
            for (int nt = 0; nt < IG_NT; ++nt) {
#if PREC == 0
                mma_tf32_16x8x8(acc[mt][nt], as[mt], b[nt]);  // small terms first
                mma_tf32_16x8x8(acc[mt][nt], a[mt], bs[nt]);
#endif
                mma_tf32_16x8x8(acc[mt][nt], a[mt], b[nt]);
            }
#endif
    }
}

// The whole GEMM of one block: out[p, n] = epilogue(Σ_k A[p, k]·wm[k, n]).
// src/ysrc: the A source (C channels) and, with MASK, its ReLU mask source.
// splits > 1: block z sums only its share of the K stages and writes the raw sums
// to out + z*M*Nc (split-K; a reduce kernel finishes them).
template <bool MASK, bool BIAS_RELU>
__device__ __forceinline__ void ig_conv(float* __restrict__ out, const float* __restrict__ src,
                                        const float* __restrict__ ysrc, const float* __restrict__ wm,
                                        const float* __restrict__ bias, int N, int H, int W, int C,
                                        int Nc, int splits) {
    __shared__ float As[2][BM][BK + IG_APAD];
    __shared__ float Bs[2][BK][BN + IG_BPAD];
    const int M = N * H * W, K = 9 * C;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int warp = threadIdx.x / 32;
    const int wm0 = (warp / WARPS_N) * IG_WM, wn0 = (warp % WARPS_N) * IG_WN;
    float acc[IG_MT][IG_NT][4];
    IG_UNROLL
    for (int mt = 0; mt < IG_MT; ++mt)
        IG_UNROLL
        for (int nt = 0; nt < IG_NT; ++nt)
            IG_UNROLL
            for (int q = 0; q < 4; ++q) acc[mt][nt][q] = 0.f;
    IgRows rows;
    ig_rows(rows, m0, M, H, W, C);
    IgStage st;
    const int stages = (K + BK - 1) / BK;
    const int per = (stages + splits - 1) / splits;  // this block's stages: s0 .. s1-1
    const int s0 = (int)blockIdx.z * per < stages ? (int)blockIdx.z * per : stages;
    const int s1 = s0 + per < stages ? s0 + per : stages;
    if (splits > 1) out += (long long)blockIdx.z * M * Nc;
    if (s0 < s1) {  // the same for every thread of the block (an empty split writes zeros)
        ig_load<MASK>(st, rows, src, ysrc, wm, s0 * BK, K, H, W, C, Nc, n0);
        ig_store(As[0], Bs[0], st);
        __syncthreads();
    }
    for (int s = s0; s < s1; ++s) {
        const int b = (s - s0) & 1;
        const bool more = s + 1 < s1;
        if (more) ig_load<MASK>(st, rows, src, ysrc, wm, (s + 1) * BK, K, H, W, C, Nc, n0);
        ig_compute(acc, As[b], Bs[b], wm0, wn0);
        // The other stage was last read before the previous __syncthreads.
        if (more) ig_store(As[b ^ 1], Bs[b ^ 1], st);
        __syncthreads();
    }
    const int lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    IG_UNROLL
    for (int mt = 0; mt < IG_MT; ++mt)
        IG_UNROLL
        for (int half = 0; half < 2; ++half) {
            const int p = m0 + wm0 + mt * 16 + g + 8 * half;
            if (p >= M) continue;
            float* row = out + (long long)p * Nc;
            IG_UNROLL
            for (int nt = 0; nt < IG_NT; ++nt) {
                const int n = n0 + wn0 + nt * 8 + 2 * t;
                IG_UNROLL
                for (int e = 0; e < 2; ++e) {
                    if (n + e >= Nc) continue;
                    float v = acc[mt][nt][2 * half + e];
                    if (BIAS_RELU && splits == 1) v = fmaxf(v + bias[n + e], 0.f);
                    row[n + e] = v;
                }
            }
        }
}

extern "C" __global__ void __launch_bounds__(IG_THREADS)
conv_igemm_forward_kernel(float* y, const float* x, const float* w, const float* b,
                          int N, int H, int W, int Cin, int Cout) {
    ig_conv<false, true>(y, x, nullptr, w, b, N, H, W, Cin, Cout, 1);
}

extern "C" __global__ void __launch_bounds__(IG_THREADS)
conv_igemm_backward_kernel(float* dx, const float* dout, const float* y, const float* wflip,
                           int N, int H, int W, int Cout, int Cin) {
    ig_conv<true, false>(dx, dout, y, wflip, nullptr, N, H, W, Cout, Cin, 1);
}

extern "C" __global__ void __launch_bounds__(IG_THREADS)
conv_igemm_forward_splitk_kernel(float* part, const float* x, const float* w,
                                 int N, int H, int W, int Cin, int Cout, int splits) {
    ig_conv<false, true>(part, x, nullptr, w, nullptr, N, H, W, Cin, Cout, splits);
}

extern "C" __global__ void __launch_bounds__(IG_THREADS)
conv_igemm_backward_splitk_kernel(float* part, const float* dout, const float* y,
                                  const float* wflip, int N, int H, int W, int Cout, int Cin,
                                  int splits) {
    ig_conv<true, false>(part, dout, y, wflip, nullptr, N, H, W, Cout, Cin, splits);
}

// Split-K's second pass, one thread per output element, the splits summed in order
// (the same result every run).
extern "C" __global__ void splitk_sum_kernel(float* out, const float* part, int n, int splits) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = part[i];
    for (int z = 1; z < splits; ++z) v += part[(long long)z * n + i];
    out[i] = v;
}

extern "C" __global__ void splitk_sum_bias_relu_kernel(float* out, const float* part, const float* b,
                                                       int n, int cols, int splits) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = part[i];
    for (int z = 1; z < splits; ++z) v += part[(long long)z * n + i];
    out[i] = fmaxf(v + b[i % cols], 0.f);
}
