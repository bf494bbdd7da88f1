// The masked, scaled softmax of attention scores and its backward, for forge's training and
// generation on CUDA (stages/src/model/fused.rs). One pass over the scores each way in their own
// dtype, arithmetic in f32: the composed form (scale, upcast, mask, softmax, downcast) reads and
// writes the [B, H, T, S] scores five times, in f32.
//
// Scores are rows of `cols` keys: row r belongs to batch r / rows_per_batch and query r % t. The
// mask (u8, 1 = may attend; null: none) is [mask_batches, 1, t, cols]: one row per
// (batch, query), shared by the heads. A masked key gets probability 0 and gradient 0; a row that
// sees no key is uniform (1 / cols), as when every score is set to the lowest value.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#define THREADS 256

__device__ __forceinline__ float load(const float* p, int i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float load(const __half* p, int i) { return __half2float(p[i]); }
__device__ __forceinline__ void store(float* p, int i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int i, float v) { p[i] = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store(__half* p, int i, float v) { p[i] = __float2half_rn(v); }

// The block-wide reduction of v (every thread gets the result).
template <bool MAX> __device__ float block_reduce(float v) {
    __shared__ float partial[THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffff, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // partial may still be read by a previous reduction
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < THREADS / 32 ? partial[lane] : (MAX ? -INFINITY : 0.0f);
    for (int o = 16; o > 0; o >>= 1) {
        float w = __shfl_xor_sync(0xffffffff, v, o);
        v = MAX ? fmaxf(v, w) : v + w;
    }
    return v;
}

__device__ __forceinline__ const uint8_t* mask_row(const uint8_t* mask, long long row,
                                                   int rows_per_batch, int t, int mask_batches,
                                                   int cols) {
    if (!mask) return nullptr;
    long long b = mask_batches == 1 ? 0 : row / rows_per_batch;
    return mask + (b * t + row % t) * (long long)cols;
}

template <typename T>
__device__ void softmax_fwd(const T* __restrict__ x, const uint8_t* __restrict__ mask,
                            T* __restrict__ y, int cols, int rows_per_batch, int t,
                            int mask_batches, float scale) {
    long long row = blockIdx.x;
    const T* xr = x + row * cols;
    T* yr = y + row * cols;
    const uint8_t* m = mask_row(mask, row, rows_per_batch, t, mask_batches, cols);
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < cols; j += THREADS)
        if (!m || m[j]) mx = fmaxf(mx, load(xr, j) * scale);
    mx = block_reduce<true>(mx);
    if (mx == -INFINITY) {
        for (int j = threadIdx.x; j < cols; j += THREADS) store(yr, j, 1.0f / cols);
        return;
    }
    float sum = 0.0f;
    for (int j = threadIdx.x; j < cols; j += THREADS)
        if (!m || m[j]) sum += expf(load(xr, j) * scale - mx);
    float inv = 1.0f / block_reduce<false>(sum);
    for (int j = threadIdx.x; j < cols; j += THREADS)
        store(yr, j, (!m || m[j]) ? expf(load(xr, j) * scale - mx) * inv : 0.0f);
}

// dx = scale · y · (g − Σ g·y), 0 where masked.
template <typename T>
__device__ void softmax_bwd(const T* __restrict__ y, const T* __restrict__ g,
                            const uint8_t* __restrict__ mask, T* __restrict__ dx,
                            int cols, int rows_per_batch, int t, int mask_batches, float scale) {
    long long row = blockIdx.x;
    const T* yr = y + row * cols;
    const T* gr = g + row * cols;
    T* dr = dx + row * cols;
    const uint8_t* m = mask_row(mask, row, rows_per_batch, t, mask_batches, cols);
    float dot = 0.0f;
    for (int j = threadIdx.x; j < cols; j += THREADS) dot += load(yr, j) * load(gr, j);
    dot = block_reduce<false>(dot);
    for (int j = threadIdx.x; j < cols; j += THREADS)
        store(dr, j, (!m || m[j]) ? scale * load(yr, j) * (load(gr, j) - dot) : 0.0f);
}

#define INSTANTIATE(T, NAME)                                                                     \
    extern "C" __global__ void masked_softmax_fwd_##NAME(                                      \
        const T* x, const uint8_t* mask, T* y, int cols, int rows_per_batch, int t,            \
        int mask_batches, float scale) {                                                       \
        softmax_fwd(x, mask, y, cols, rows_per_batch, t, mask_batches, scale);                 \
    }                                                                                          \
    extern "C" __global__ void masked_softmax_bwd_##NAME(                                      \
        const T* y, const T* g, const uint8_t* mask, T* dx, int cols, int rows_per_batch,      \
        int t, int mask_batches, float scale) {                                                \
        softmax_bwd(y, g, mask, dx, cols, rows_per_batch, t, mask_batches, scale);             \
    }

INSTANTIATE(float, f32)
INSTANTIATE(__nv_bfloat16, bf16)
INSTANTIATE(__half, f16)
