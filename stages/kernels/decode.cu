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

// Attention of one query row over a fixed-capacity KV cache (a decode graph's, see
// stages/src/model/graph.rs): q [H, D], k and v [KVH, CAP, D] bf16, slots <= the current one (read
// from device memory: `index[0]`) visible, query head h reading KV head h / (H / KVH).
//
// Bound by latency: a few MB of cache per layer, read once. Each block takes one query head and
// a span of slots (all its K and V loads issued at once), softmaxes its part and writes the
// partial result (its max, its sum of exponentials, its weighted sum of values) in f32;
// attention_combine merges a head's parts. A head's D values are read by D/8 lanes, 16 bytes each.
#define ATT_THREADS 256
#define ATT_PER 4

__device__ __forceinline__ void unpack8(uint4 a, float* f) {
    const uint32_t* p = reinterpret_cast<const uint32_t*>(&a);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(p[i] << 16);
        f[2 * i + 1] = __uint_as_float(p[i] & 0xffff0000u);
    }
}

template <int D>
__device__ void attention_part(const __nv_bfloat16* __restrict__ q,
                               const __nv_bfloat16* __restrict__ k,
                               const __nv_bfloat16* __restrict__ v,
                               const uint32_t* __restrict__ index, float* __restrict__ part,
                               int cap, int group, float scale) {
    constexpr int LANES = D / 8;
    constexpr int GROUPS = ATT_THREADS / LANES;
    constexpr int SPAN = GROUPS * ATT_PER;
    __shared__ float red[GROUPS][D];
    __shared__ float warp_m[ATT_THREADS / 32], warp_l[ATT_THREADS / 32];
    int head = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
    int kv = head / group;
    int g = threadIdx.x / LANES, lane = threadIdx.x % LANES;
    int warp = threadIdx.x / 32, wl = threadIdx.x % 32;
    long long cur = index[0];
    int base = split * SPAN;
    float* out = part + ((long long)head * splits + split) * (D + 2);
    if (base > cur) {
        for (int i = threadIdx.x; i < D + 2; i += ATT_THREADS)
            out[i] = i == D ? -INFINITY : 0.0f;
        return;
    }
    float qf[8];
    unpack8(reinterpret_cast<const uint4*>(q + (long long)head * D)[lane], qf);
    const uint4* kh = reinterpret_cast<const uint4*>(k + (long long)kv * cap * D);
    const uint4* vh = reinterpret_cast<const uint4*>(v + (long long)kv * cap * D);
    uint4 kr[ATT_PER], vr[ATT_PER];
    bool valid[ATT_PER];
#pragma unroll
    for (int p = 0; p < ATT_PER; p++) {
        long long j = base + p * GROUPS + g;
        valid[p] = j <= cur && j < cap;
        kr[p] = valid[p] ? load_once(kh + j * LANES + lane) : make_uint4(0, 0, 0, 0);
        vr[p] = valid[p] ? load_once(vh + j * LANES + lane) : make_uint4(0, 0, 0, 0);
    }
    float s[ATT_PER];
    float m = -INFINITY;
#pragma unroll
    for (int p = 0; p < ATT_PER; p++) {
        float kf[8];
        unpack8(kr[p], kf);
        float d = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) d = fmaf(qf[i], kf[i], d);
        for (int o = LANES / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffff, d, o);
        s[p] = valid[p] ? d * scale : -INFINITY;
        m = fmaxf(m, s[p]);
    }
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
    if (wl == 0) warp_m[warp] = m;
    __syncthreads();
#pragma unroll
    for (int w = 0; w < ATT_THREADS / 32; w++) m = fmaxf(m, warp_m[w]);
    // Slot `base` is visible, so m is finite.
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float l = 0.0f;
#pragma unroll
    for (int p = 0; p < ATT_PER; p++) {
        float e = valid[p] ? expf(s[p] - m) : 0.0f;
        l += e;
        float vf[8];
        unpack8(vr[p], vf);
#pragma unroll
        for (int i = 0; i < 8; i++) acc[i] = fmaf(e, vf[i], acc[i]);
    }
    // Every lane of a group holds the group's sum: count it once.
    l = lane == 0 ? l : 0.0f;
    for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffff, l, o);
    if (wl == 0) warp_l[warp] = l;
#pragma unroll
    for (int i = 0; i < 8; i++) red[g][lane * 8 + i] = acc[i];
    __syncthreads();
    for (int i = threadIdx.x; i < D; i += ATT_THREADS) {
        float sum = 0.0f;
        for (int r = 0; r < GROUPS; r++) sum += red[r][i];
        out[i] = sum;
    }
    if (threadIdx.x == 0) {
        float total = 0.0f;
        for (int w = 0; w < ATT_THREADS / 32; w++) total += warp_l[w];
        out[D] = m;
        out[D + 1] = total;
    }
}

// out [H, D] bf16 from the parts [H, splits, D + 2]; one block of D threads per head.
template <int D>
__device__ void attention_combine(const float* __restrict__ part, __nv_bfloat16* __restrict__ y,
                                  int splits) {
    int head = blockIdx.x;
    const float* p = part + (long long)head * splits * (D + 2);
    float m = -INFINITY;
    for (int s = 0; s < splits; s++) m = fmaxf(m, p[s * (D + 2) + D]);
    float l = 0.0f, acc = 0.0f;
    for (int s = 0; s < splits; s++) {
        float ms = p[s * (D + 2) + D];
        float w = ms == -INFINITY ? 0.0f : expf(ms - m);
        l = fmaf(w, p[s * (D + 2) + D + 1], l);
        acc = fmaf(w, p[s * (D + 2) + threadIdx.x], acc);
    }
    y[(long long)head * D + threadIdx.x] = __float2bfloat16_rn(acc / l);
}

#define ATTENTION(D)                                                                           \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS) attention_part_bf16_##D(        \
        const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,               \
        const uint32_t* index, float* part, int cap, int group, float scale) {                 \
        attention_part<D>(q, k, v, index, part, cap, group, scale);                            \
    }                                                                                          \
    extern "C" __global__ void attention_combine_bf16_##D(const float* part,                  \
                                                          __nv_bfloat16* y, int splits) {      \
        attention_combine<D>(part, y, splits);                                                 \
    }
ATTENTION(8)
ATTENTION(16)
ATTENTION(32)
ATTENTION(64)
ATTENTION(128)
ATTENTION(256)

// The residual add and the RMSNorm after it, for one row of n bf16: s = x + delta (rounded to
// bf16, as a separate add would), y = s / sqrt(mean(s²) + eps) · w in f32, rounded once (as
// candle's rms_norm kernel); s and y go to out[0..n] and out[n..2n]. One block of NORM_THREADS.
#define NORM_THREADS 1024

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    add_rms_norm_bf16(const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ delta,
                      const __nv_bfloat16* __restrict__ w, __nv_bfloat16* __restrict__ out, int n,
                      float eps) {
    __shared__ float warp_sq[NORM_THREADS / 32];
    float sq = 0.0f;
    for (int i = threadIdx.x; i < n; i += NORM_THREADS) {
        __nv_bfloat16 s = __float2bfloat16_rn(__bfloat162float(x[i]) + __bfloat162float(delta[i]));
        out[i] = s;
        float f = __bfloat162float(s);
        sq = fmaf(f, f, sq);
    }
    for (int o = 16; o > 0; o >>= 1) sq += __shfl_xor_sync(0xffffffff, sq, o);
    if (threadIdx.x % 32 == 0) warp_sq[threadIdx.x / 32] = sq;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < NORM_THREADS / 32; i++) total += warp_sq[i];
    float inv = rsqrtf(total / n + eps);
    // Each thread reads back only what it wrote.
    for (int i = threadIdx.x; i < n; i += NORM_THREADS)
        out[n + i] = __float2bfloat16_rn(__bfloat162float(out[i]) * inv * __bfloat162float(w[i]));
}

// One token's queries, keys and values after their projections (q [H, D], k and v [KVH, D]):
// q and k RMSNormed per head with qw, kw (when has_norm; in f32, rounded once as candle's
// rms_norm), rotated by RoPE (cos, sin [D / 2]: x·cos + rotate_half(x)·sin in f32, rounded once),
// q to q_out [H, D], k and v into the caches [KVH, CAP, D] at the slot index[0]. One block of D
// threads per head: H for q, then KVH for k, then KVH for v. D a power of two <= 256.
extern "C" __global__ void __launch_bounds__(256) qkv_norm_rope_write_bf16(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ k,
    const __nv_bfloat16* __restrict__ v, const __nv_bfloat16* __restrict__ qw,
    const __nv_bfloat16* __restrict__ kw, const __nv_bfloat16* __restrict__ cos,
    const __nv_bfloat16* __restrict__ sin, const uint32_t* __restrict__ index,
    __nv_bfloat16* __restrict__ q_out, __nv_bfloat16* __restrict__ k_cache,
    __nv_bfloat16* __restrict__ v_cache, int heads, int kv_heads, int cap, int has_norm,
    float eps) {
    __shared__ float buf[256];
    int d = blockDim.x, t = threadIdx.x, b = blockIdx.x;
    long long slot = index[0];
    const __nv_bfloat16 *src, *w = nullptr;
    __nv_bfloat16* dst;
    bool rotate = true;
    if (b < heads) {
        src = q + (long long)b * d;
        w = qw;
        dst = q_out + (long long)b * d;
    } else if (b < heads + kv_heads) {
        int kv = b - heads;
        src = k + (long long)kv * d;
        w = kw;
        dst = k_cache + ((long long)kv * cap + slot) * d;
    } else {
        int kv = b - heads - kv_heads;
        src = v + (long long)kv * d;
        dst = v_cache + ((long long)kv * cap + slot) * d;
        rotate = false;
    }
    float x = __bfloat162float(src[t]);
    if (rotate && has_norm) {
        buf[t] = x * x;
        __syncthreads();
        for (int s = d / 2; s > 0; s >>= 1) {
            if (t < s) buf[t] += buf[t + s];
            __syncthreads();
        }
        float inv = rsqrtf(buf[0] / d + eps);
        __syncthreads();
        x = __bfloat162float(__float2bfloat16_rn(x * inv * __bfloat162float(w[t])));
    }
    if (rotate) {
        int half = d / 2;
        buf[t] = x;
        __syncthreads();
        float other = t < half ? -buf[t + half] : buf[t - half];
        int i = t % half;
        x = x * __bfloat162float(cos[i]) + other * __bfloat162float(sin[i]);
    }
    dst[t] = __float2bfloat16_rn(x);
}
