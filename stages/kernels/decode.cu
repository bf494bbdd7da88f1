// Kernels for decoding one token (stages/src/model/decode.rs).
//
// Matrix-vector products of one bf16 row with bf16 weights: y = W·x, and SwiGLU's
// silu(G·x) · (U·x) in one pass over G and U.
// A decoding step reads every weight once, so it is bound by memory bandwidth; cuBLAS's kernels
// for one row reach 2.2-2.9 TB/s of an H100's ~3.35 on these shapes, and SwiGLU costs them two
// products and two elementwise kernels.
//
// A row of W is read by WPR warps (gemv_*_WPR; 8 warps a block): their lanes read it in 16-byte
// pieces (8 weights), several pieces in flight each, multiply by x (cached: every warp reads it)
// and sum in f32. W is [n, k] row-major, k a multiple of 8, every pointer 16-byte aligned.

#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#define WARPS 8
#define UNROLL 4

// The dot product of 8 bf16 pairs, in f32 (a bf16 is the high half of an f32).
__device__ __forceinline__ float dot8(uint4 a, uint4 b) {
    const uint32_t* pa = reinterpret_cast<const uint32_t*>(&a);
    const uint32_t* pb = reinterpret_cast<const uint32_t*>(&b);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        s = fmaf(__uint_as_float(pa[i] << 16), __uint_as_float(pb[i] << 16), s);
        s = fmaf(__uint_as_float(pa[i] & 0xffff0000u), __uint_as_float(pb[i] & 0xffff0000u), s);
    }
    return s;
}

// Weights are read once: keep them out of L1, which x needs.
__device__ __forceinline__ uint4 load_once(const uint4* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// The dot products of x with row `row` of each of the NW matrices `w`, split over the WPR warps of
// the row (`part` is this warp's share): this warp's partial sums in acc.
template <int NW, int WPR>
__device__ __forceinline__ void dot_rows(const __nv_bfloat16* __restrict__ x,
                                         const __nv_bfloat16* const* w, long long row, int k,
                                         int part, int lane, float* acc) {
    const uint4* xv = reinterpret_cast<const uint4*>(x);
    const uint4* wr[NW];
#pragma unroll
    for (int m = 0; m < NW; m++) {
        wr[m] = reinterpret_cast<const uint4*>(w[m] + row * k);
        acc[m] = 0.0f;
    }
    int pieces = k / 8;
    for (int base = part * 32 + lane; base < pieces; base += 32 * WPR * UNROLL) {
        uint4 wv[NW][UNROLL], xs[UNROLL];
#pragma unroll
        for (int u = 0; u < UNROLL; u++) {
            int c = base + 32 * WPR * u;
            bool in = c < pieces;
            xs[u] = in ? __ldg(xv + c) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int m = 0; m < NW; m++) wv[m][u] = in ? load_once(wr[m] + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < UNROLL; u++)
#pragma unroll
            for (int m = 0; m < NW; m++) acc[m] += dot8(wv[m][u], xs[u]);
    }
#pragma unroll
    for (int m = 0; m < NW; m++) acc[m] = warp_sum(acc[m]);
}

// Row `row` of the rows of w0, w1, w2 stacked ([n0 + n1 + n2, k]): q, k and v in one launch.
__device__ __forceinline__ const __nv_bfloat16* stacked(const __nv_bfloat16* w0,
                                                        const __nv_bfloat16* w1,
                                                        const __nv_bfloat16* w2, int n0, int n1,
                                                        long long row, int k) {
    if (row < n0) return w0 + row * k;
    if (row < n0 + n1) return w1 + (row - n0) * k;
    return w2 + (row - n0 - n1) * k;
}

// y = [W0; W1; W2]·x (n1, n2 may be 0), WPR warps per row: few rows need several warps each to
// keep enough loads in flight.
template <int WPR>
__device__ void gemv(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* w0,
                     const __nv_bfloat16* w1, const __nv_bfloat16* w2,
                     __nv_bfloat16* __restrict__ y, int n0, int n1, int n2, int k) {
    __shared__ float partial[WARPS];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    long long row = (long long)blockIdx.x * (WARPS / WPR) + warp / WPR;
    bool active = row < (long long)n0 + n1 + n2;
    float acc[1] = {0.0f};
    if (active) {
        const __nv_bfloat16* ws[1] = {stacked(w0, w1, w2, n0, n1, row, k)};
        dot_rows<1, WPR>(x, ws, 0, k, warp % WPR, lane, acc);
    }
    if (WPR > 1) {
        if (lane == 0) partial[warp] = acc[0];
        __syncthreads();
        if (lane == 0 && warp % WPR == 0)
            for (int p = 1; p < WPR; p++) acc[0] += partial[warp + p];
    }
    if (active && lane == 0 && warp % WPR == 0) y[row] = __float2bfloat16_rn(acc[0]);
}

// y[n] = silu(G[n, :] · x) · (U[n, :] · x).
template <int WPR>
__device__ void gemv_swiglu(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* g,
                            const __nv_bfloat16* u, __nv_bfloat16* __restrict__ y, int n, int k) {
    __shared__ float partial[WARPS][2];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    long long row = (long long)blockIdx.x * (WARPS / WPR) + warp / WPR;
    bool active = row < n;
    float acc[2] = {0.0f, 0.0f};
    if (active) {
        const __nv_bfloat16* ws[2] = {g, u};
        dot_rows<2, WPR>(x, ws, row, k, warp % WPR, lane, acc);
    }
    if (WPR > 1) {
        if (lane == 0) {
            partial[warp][0] = acc[0];
            partial[warp][1] = acc[1];
        }
        __syncthreads();
        if (lane == 0 && warp % WPR == 0)
            for (int p = 1; p < WPR; p++) {
                acc[0] += partial[warp + p][0];
                acc[1] += partial[warp + p][1];
            }
    }
    if (active && lane == 0 && warp % WPR == 0)
        y[row] = __float2bfloat16_rn(acc[0] / (1.0f + expf(-acc[0])) * acc[1]);
}

#define GEMV(WPR)                                                                              \
    extern "C" __global__ void gemv_bf16_##WPR(                                                \
        const __nv_bfloat16* x, const __nv_bfloat16* w0, const __nv_bfloat16* w1,              \
        const __nv_bfloat16* w2, __nv_bfloat16* y, int n0, int n1, int n2, int k) {           \
        gemv<WPR>(x, w0, w1, w2, y, n0, n1, n2, k);                                            \
    }                                                                                          \
    extern "C" __global__ void gemv_swiglu_bf16_##WPR(const __nv_bfloat16* x,                 \
                                                      const __nv_bfloat16* g,                 \
                                                      const __nv_bfloat16* u,                 \
                                                      __nv_bfloat16* y, int n, int k) {       \
        gemv_swiglu<WPR>(x, g, u, y, n, k);                                                    \
    }
GEMV(1)
GEMV(2)
GEMV(4)
GEMV(8)

// Greedy choice: per row of `cols` logits, the index of the largest (the first of equals), one
// block per row. candle's argmax takes ~100 µs for a 151,936-token row on an H100.
#define ARGMAX_THREADS 1024

__device__ __forceinline__ float load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, long long i) {
    return __bfloat162float(p[i]);
}

// The better of two candidates: the larger value, the smaller index among equals.
__device__ __forceinline__ void better(float& v, int& i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

template <typename T>
__device__ void argmax_rows(const T* __restrict__ x, uint32_t* __restrict__ out, int cols) {
    __shared__ float values[ARGMAX_THREADS / 32];
    __shared__ int indices[ARGMAX_THREADS / 32];
    const T* row = x + (long long)blockIdx.x * cols;
    float v = -INFINITY;
    int i = INT_MAX;
    for (int j = threadIdx.x; j < cols; j += ARGMAX_THREADS) better(v, i, load(row, j), j);
    for (int o = 16; o > 0; o >>= 1)
        better(v, i, __shfl_xor_sync(0xffffffff, v, o), __shfl_xor_sync(0xffffffff, i, o));
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        values[warp] = v;
        indices[warp] = i;
    }
    __syncthreads();
    if (warp != 0) return;
    v = values[lane];
    i = indices[lane];
    for (int o = 16; o > 0; o >>= 1)
        better(v, i, __shfl_xor_sync(0xffffffff, v, o), __shfl_xor_sync(0xffffffff, i, o));
    // A row of NaN or -inf only: the first token.
    if (lane == 0) out[blockIdx.x] = i == INT_MAX ? 0 : i;
}

extern "C" __global__ void argmax_f32(const float* x, uint32_t* out, int cols) {
    argmax_rows(x, out, cols);
}
extern "C" __global__ void argmax_bf16(const __nv_bfloat16* x, uint32_t* out, int cols) {
    argmax_rows(x, out, cols);
}
