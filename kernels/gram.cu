// kernels/gram.cu — the Gram matrix and its backward as our own GEMMs (no cuBLAS:
// CuPy's cuBLAS wrappers raise inside CUDA-graph capture, cupy #6290).
// Loaded by cpstyle/ops/gram.py (gram_forward_gpu, gram_backward_gpu,
// gram_backward_accumulate_gpu); reference: gram_forward_cpu, gram_backward_cpu there.
// Tests: tests/test_kernels_emulated.py, tests/test_kernels_gpu.py, tests/test_kernels_nvrtc.py.
//
// Layout: F (HW, C) float32 row-major (one image's NHWC activation); G, dG (C, C)
// float32; partial (splits, C, C) float32 work. Plain fp32 SIMT: each block owns a
// GRAM_TILE x GRAM_TILE output tile, each thread a GRAM_MICRO x GRAM_MICRO micro-tile
// (rows ty + u·T/M, columns tx + v·T/M), GRAM_K rows of the reduction dimension staged
// in shared memory per step; products accumulated with fmaf in ascending order.
//
//   gram_partial_kernel(float* partial, const float* f, int hw, int c, int chunk)
//       grid (tiles, tiles, splits), tiles = ceil(C/GRAM_TILE); blocks below the
//       diagonal (blockIdx.y > blockIdx.x) return at once (G is symmetric):
//       partial[z, i, j] = Σ_{p in [z·chunk, min(hw, (z+1)·chunk))} F[p, i]·F[p, j]
//       for the tile (blockIdx.y, blockIdx.x) on or above the diagonal
//   gram_reduce_kernel(float* g, const float* partial, float norm, int c, int splits)
//       g[i, j] = norm · Σ_{z = 0 .. splits-1} partial[z, i', j'] in that order, (i', j') =
//       (i, j) if tile(i) <= tile(j) else (j, i): split K with a fixed-order reduce,
//       deterministic, no atomics; G exactly symmetric (a diagonal tile's (i, j) and
//       (j, i) run the same fmaf chain)
//   gram_backward_kernel(float* dh, const float* f, const float* dg, int hw, int c,
//                        int accumulate)
//       grid (ceil(HW/GRAM_TILE), ceil(C/GRAM_TILE)): pixel tiles on x, whose limit
//       (2^31 - 1) an image's HW cannot reach, where y's 65535 would stop at 2048²:
//       dh[p, j] = (accumulate ? dh[p, j] : 0) + Σ_i F[p, i]·dG[i, j]   (the product
//       made whole, then added: F·dG, then dh + it, as two separate ops would)
//
// Defines the loader may override (cpstyle/ops/gram.py's gram_defines(), from
// cpstyle.cuda.config): GRAM_TILE (output tile edge), GRAM_MICRO (micro-tile edge; it
// divides GRAM_TILE), GRAM_K (staged rows). Every kernel is launched with exactly
// (GRAM_TILE/GRAM_MICRO)² threads in a 1-D block.

#ifndef GRAM_TILE
#define GRAM_TILE 64
#endif
#ifndef GRAM_MICRO
#define GRAM_MICRO 4
#endif
#ifndef GRAM_K
#define GRAM_K 16
#endif

#define GRAM_SIDE (GRAM_TILE / GRAM_MICRO)      // threads along one tile edge
#define GRAM_THREADS (GRAM_SIDE * GRAM_SIDE)

static_assert(GRAM_TILE % GRAM_MICRO == 0, "GRAM_MICRO must divide GRAM_TILE");

// One staged step of both GEMMs: acc[u][v] += Σ_r a[r][ty + u·S]·b[r][tx + v·S], r ascending.
__device__ __forceinline__ void micro_tile_step(float (&acc)[GRAM_MICRO][GRAM_MICRO],
                                                const float (&a)[GRAM_K][GRAM_TILE],
                                                const float (&b)[GRAM_K][GRAM_TILE], int tx, int ty) {
    for (int r = 0; r < GRAM_K; r++) {
        float av[GRAM_MICRO], bv[GRAM_MICRO];
        for (int u = 0; u < GRAM_MICRO; u++) av[u] = a[r][ty + u * GRAM_SIDE];
        for (int v = 0; v < GRAM_MICRO; v++) bv[v] = b[r][tx + v * GRAM_SIDE];
        for (int u = 0; u < GRAM_MICRO; u++)
            for (int v = 0; v < GRAM_MICRO; v++) acc[u][v] = fmaf(av[u], bv[v], acc[u][v]);
    }
}

extern "C" __global__ void __launch_bounds__(GRAM_THREADS)
gram_partial_kernel(float* partial, const float* f, int hw, int c, int chunk) {
    if (blockIdx.y > blockIdx.x) return;  // below the diagonal: mirrored in the reduce
    __shared__ float a[GRAM_K][GRAM_TILE];  // F[p, i0 + col]
    __shared__ float b[GRAM_K][GRAM_TILE];  // F[p, j0 + col]
    const int i0 = blockIdx.y * GRAM_TILE, j0 = blockIdx.x * GRAM_TILE;
    const long long p0 = (long long)blockIdx.z * chunk;
    const long long p1 = p0 + chunk < hw ? p0 + chunk : hw;
    const int tx = threadIdx.x % GRAM_SIDE, ty = threadIdx.x / GRAM_SIDE;
    float acc[GRAM_MICRO][GRAM_MICRO];
    for (int u = 0; u < GRAM_MICRO; u++)
        for (int v = 0; v < GRAM_MICRO; v++) acc[u][v] = 0.0f;
    for (long long p = p0; p < p1; p += GRAM_K) {
        for (int e = threadIdx.x; e < GRAM_K * GRAM_TILE; e += GRAM_THREADS) {
            int r = e / GRAM_TILE, col = e % GRAM_TILE;
            long long pp = p + r;
            bool row = pp < p1;
            a[r][col] = row && i0 + col < c ? f[pp * c + i0 + col] : 0.0f;
            b[r][col] = row && j0 + col < c ? f[pp * c + j0 + col] : 0.0f;
        }
        __syncthreads();
        micro_tile_step(acc, a, b, tx, ty);
        __syncthreads();
    }
    float* out = partial + (long long)blockIdx.z * c * c;
    for (int u = 0; u < GRAM_MICRO; u++) {
        int i = i0 + ty + u * GRAM_SIDE;
        if (i >= c) continue;
        for (int v = 0; v < GRAM_MICRO; v++) {
            int j = j0 + tx + v * GRAM_SIDE;
            if (j < c) out[(long long)i * c + j] = acc[u][v];
        }
    }
}

extern "C" __global__ void gram_reduce_kernel(float* g, const float* partial, float norm, int c, int splits) {
    long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long cc = (long long)c * c;
    if (e >= cc) return;
    int i = (int)(e / c), j = (int)(e % c);
    long long src = i / GRAM_TILE <= j / GRAM_TILE ? e : (long long)j * c + i;
    float s = 0.0f;
    for (int z = 0; z < splits; z++) s += partial[z * cc + src];
    g[e] = s * norm;
}

extern "C" __global__ void __launch_bounds__(GRAM_THREADS)
gram_backward_kernel(float* dh, const float* f, const float* dg, int hw, int c, int accumulate) {
    __shared__ float a[GRAM_K][GRAM_TILE];  // F[p0 + row, k0 + r], transposed
    __shared__ float b[GRAM_K][GRAM_TILE];  // dG[k0 + r, j0 + col]
    const long long p0 = (long long)blockIdx.x * GRAM_TILE;
    const int j0 = blockIdx.y * GRAM_TILE;
    const int tx = threadIdx.x % GRAM_SIDE, ty = threadIdx.x / GRAM_SIDE;
    float acc[GRAM_MICRO][GRAM_MICRO];
    for (int u = 0; u < GRAM_MICRO; u++)
        for (int v = 0; v < GRAM_MICRO; v++) acc[u][v] = 0.0f;
    for (int k0 = 0; k0 < c; k0 += GRAM_K) {
        for (int e = threadIdx.x; e < GRAM_K * GRAM_TILE; e += GRAM_THREADS) {
            int r = e % GRAM_K, row = e / GRAM_K;  // consecutive threads: consecutive i
            long long p = p0 + row;
            a[r][row] = p < hw && k0 + r < c ? f[p * c + k0 + r] : 0.0f;
            int kr = e / GRAM_TILE, col = e % GRAM_TILE;
            b[kr][col] = k0 + kr < c && j0 + col < c ? dg[(long long)(k0 + kr) * c + j0 + col] : 0.0f;
        }
        __syncthreads();
        micro_tile_step(acc, a, b, tx, ty);
        __syncthreads();
    }
    for (int u = 0; u < GRAM_MICRO; u++) {
        long long p = p0 + ty + u * GRAM_SIDE;
        if (p >= hw) continue;
        for (int v = 0; v < GRAM_MICRO; v++) {
            int j = j0 + tx + v * GRAM_SIDE;
            if (j >= c) continue;
            float* o = dh + p * c + j;
            *o = accumulate ? *o + acc[u][v] : acc[u][v];
        }
    }
}
