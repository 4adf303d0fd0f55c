// kernels/common.cuh — pasted into every kernels/*.cu that includes it, by
// cpstyle/cuda.py (kernel_source), so CuPy's cache key sees its text.
//
//   global_index(), global_stride()   64-bit flat thread index / grid-stride step
//   block_sum(v)                      deterministic tree sum of one double per
//                                     thread over a block of REDUCE_THREADS threads;
//                                     the result is valid in thread 0 only
//
// Defines the loader may override (cpstyle.cuda.reduce_defines()):
//   REDUCE_THREADS  threads per block of every reduction kernel (power of two);
//                   the launch must use exactly this block size
//   REDUCE_BLOCKS   upper bound on the grid of a first reduction stage, i.e. on
//                   the number of partial sums (sizes the callers' buffers)

#ifndef REDUCE_THREADS
#define REDUCE_THREADS 256
#endif
#ifndef REDUCE_BLOCKS
#define REDUCE_BLOCKS 256
#endif

static_assert(REDUCE_THREADS > 0 && (REDUCE_THREADS & (REDUCE_THREADS - 1)) == 0,
              "REDUCE_THREADS must be a power of two");

// Sizes go in as int, but products such as N*H*W*9*C may pass 2^31.
__device__ __forceinline__ long long global_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long global_stride() {
    return (long long)gridDim.x * blockDim.x;
}

// Every thread of the block must call it (it holds __syncthreads). The pairing
// of the tree is fixed, so the sum is bit-for-bit the same on every run.
__device__ double block_sum(double v) {
    __shared__ double s[REDUCE_THREADS];
    s[threadIdx.x] = v;
    __syncthreads();
    for (unsigned h = REDUCE_THREADS / 2; h > 0; h >>= 1) {
        if (threadIdx.x < h) s[threadIdx.x] += s[threadIdx.x + h];
        __syncthreads();
    }
    return s[0];  // thread 0 only: other threads may already be in the next call
}
