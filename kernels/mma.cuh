// kernels/mma.cuh — tensor cores for kernels/*.cu: the two warp-wide mma.sync
// shapes we use and the operand conversions they need. Pasted into each
// kernels/*.cu that includes it, by cpstyle/cuda.py (kernel_source), like
// common.cuh. On the GPU each function is one PTX instruction (inline asm;
// sm_80 or later). Under the CPU emulation (tests/emulation/cuda_emu.h defines
// CPSTYLE_EMULATION) the same names call emu::... there: the conversions bit for
// bit, the mma from the assembled fragments (products exact, one rounding to
// fp32: the hardware's internal order/precision is unspecified, so compare with
// tolerances). Tests: tests/test_emulation_warp.py (emulation, NVRTC).
//
//   f32_to_tf32(x)             cvt.rna.tf32.f32: to TF32 (10 mantissa bits), to nearest,
//                              ties away from zero; the float's bits with the low 13 zero,
//                              so __uint_as_float() of it is the rounded value (PTX calls
//                              the .tf32 layout implementation-defined: the low bits are
//                              cleared here rather than assumed)
//   pack_bf16x2(lo, hi)        cvt.rn.bf16x2.f32 d, hi, lo: both to bf16, to nearest even;
//                              lo in bits 0..15, hi in bits 16..31
//   mma_tf32_16x8x8(d, a, b)   d = A·B + d, A 16x8, B 8x8 (TF32 bits in a[4], b[2]), d fp32:
//                              mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
//   mma_bf16_16x8x16(d, a, b)  d = A·B + d, A 16x16, B 16x8 (bf16x2 in a[4], b[2]), d fp32:
//                              mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
//
// The mma are warp-collective: all 32 lanes of a full warp call them together,
// converged (a partial warp or a lane that has returned is an error under the
// emulation, undefined on the GPU). Each lane holds a fragment; with
// g = lane >> 2, t = lane & 3 the (row, column) of its elements are
//   TF32 m16n8k8   A a0 (g, t)    a1 (g+8, t)    a2 (g, t+4)    a3 (g+8, t+4)
//                  B b0 (k=t, n=g)    b1 (k=t+4, n=g)
//   BF16 m16n8k16  A a0 (g, 2t|2t+1)    a1 (g+8, 2t|2t+1)
//                    a2 (g, 2t+8|2t+9)  a3 (g+8, 2t+8|2t+9)
//                  B b0 (k=2t|2t+1, n=g)    b1 (k=2t+8|2t+9, n=g)
//                  x|y: the register packs two bf16, x in the low half (bits 0..15),
//                  y in the high half, i.e. a0 = pack_bf16x2(A[g][2t], A[g][2t+1])
//   C/D (both)     d0 (g, 2t)    d1 (g, 2t+1)    d2 (g+8, 2t)    d3 (g+8, 2t+1)
// Checked against the PTX ISA (9.0 numbering; 9.7.14.5.x in 8.x): §9.7.15.5.7
// "Matrix Fragments for mma.m16n8k8" (.tf32 A, B; C/D .f32), §9.7.15.5.8 "Matrix
// Fragments for mma.m16n8k16 with floating point type" (.bf16 A, B; C/D .f32),
// elements listed low to high in each register; and cvt's description: for
// .bf16x2 "the value converted from input a is stored in the upper half of d".

#ifndef CPSTYLE_MMA_CUH
#define CPSTYLE_MMA_CUH

#ifndef CPSTYLE_EMULATION

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "kernels/mma.cuh needs sm_80 or later (mma.sync tf32/bf16, cvt.rna.tf32)"
#endif

// The conversions are pure per-thread: plain asm, so the compiler may CSE them.
__device__ __forceinline__ unsigned f32_to_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r & 0xFFFFE000u;
}

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// The mma are warp-collective: volatile, never merged, moved or dropped.
__device__ __forceinline__ void mma_tf32_16x8x8(float (&d)[4], const unsigned (&a)[4],
                                                const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

#else  // the CPU emulation: tests/emulation/cuda_emu.h

__device__ __forceinline__ unsigned f32_to_tf32(float x) { return emu::f32_to_tf32(x); }

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    return emu::pack_bf16x2(lo, hi);
}

__device__ __forceinline__ void mma_tf32_16x8x8(float (&d)[4], const unsigned (&a)[4],
                                                const unsigned (&b)[2]) {
    emu::mma_tf32_16x8x8(d, a, b);
}

__device__ __forceinline__ void mma_bf16_16x8x16(float (&d)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2]) {
    emu::mma_bf16_16x8x16(d, a, b);
}

#endif  // CPSTYLE_EMULATION
#endif  // CPSTYLE_MMA_CUH
