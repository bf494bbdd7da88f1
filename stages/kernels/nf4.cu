// NF4 dequantization for forge (stages/src/model/nf4.rs): bitsandbytes' 4-bit NormalFloat with
// blocksize 64 and double-quantized absmax (8-bit dynamic codes, blocksize 256, plus an offset).
//
// Bit-exact with bitsandbytes' CUDA path: the absmax of block b is
// `code[absmax_codes[b]] * absmax2[b / 256] + offset` (a multiply then an add, each rounded to
// f32: never a fused multiply-add), and value i is `NF4[nibble] * absmax` rounded once to the
// output type (round to nearest even). Byte i / 2 holds value i in its high nibble when i is
// even. The last byte of an odd count holds one value.
//
// Each thread expands one 4-byte word into 8 values (one 16-byte store in bf16/f16, two in f32):
// 8 threads cover a 64-value block, a warp writes 512 contiguous bytes of bf16. The absmax is
// decoded per thread from the read-only cache (the 8 threads of a block read the same words).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#define NF4_BLOCK 64
#define NF4_BLOCK2 256
#define NF4_THREADS 256

__device__ __constant__ float NF4_CODE[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

__device__ __forceinline__ void store8(float* out, const float* v) {
    float4* o = reinterpret_cast<float4*>(out);
    o[0] = make_float4(v[0], v[1], v[2], v[3]);
    o[1] = make_float4(v[4], v[5], v[6], v[7]);
}

__device__ __forceinline__ uint32_t pack2(__nv_bfloat16* /*tag*/, float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);  // .x = a: the lower address
    return *reinterpret_cast<uint32_t*>(&h);
}

__device__ __forceinline__ uint32_t pack2(__half* /*tag*/, float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&h);
}

template <typename T> __device__ __forceinline__ void store8(T* out, const float* v) {
    uint4 w;
    w.x = pack2((T*)0, v[0], v[1]);
    w.y = pack2((T*)0, v[2], v[3]);
    w.z = pack2((T*)0, v[4], v[5]);
    w.w = pack2((T*)0, v[6], v[7]);
    *reinterpret_cast<uint4*>(out) = w;
}

__device__ __forceinline__ void store1(float* out, float v) { *out = v; }
__device__ __forceinline__ void store1(__nv_bfloat16* out, float v) { *out = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store1(__half* out, float v) { *out = __float2half_rn(v); }

// packed: ceil(n / 2) bytes; absmax_codes: ceil(n / 64); absmax2: ceil(n / 64 / 256);
// code: the 256-entry dynamic map; out: n values. All base pointers as cudaMalloc returns them
// (packed 4-byte aligned, out 16-byte aligned).
template <typename T>
__device__ void nf4_dequant(
    const uint8_t* __restrict__ packed, const uint8_t* __restrict__ absmax_codes,
    const float* __restrict__ absmax2, const float* __restrict__ code, float offset,
    unsigned long long n, T* __restrict__ out
) {
    __shared__ float lut[16];
    if (threadIdx.x < 16) lut[threadIdx.x] = NF4_CODE[threadIdx.x];
    __syncthreads();

    const unsigned long long word = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned long long first = word * 8;  // first value of this thread
    if (first >= n) return;

    const unsigned long long block = first / NF4_BLOCK;
    const float scale = __ldg(&absmax2[block / NF4_BLOCK2]);
    const float absmax = __fadd_rn(__fmul_rn(__ldg(&code[__ldg(&absmax_codes[block])]), scale), offset);

    if (first + 8 <= n) {
        const uint32_t q = __ldg(reinterpret_cast<const uint32_t*>(packed) + word);
        float v[8];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint32_t byte = (q >> (8 * j)) & 0xFF;  // little endian: byte j at address 4w + j
            v[2 * j] = __fmul_rn(lut[byte >> 4], absmax);
            v[2 * j + 1] = __fmul_rn(lut[byte & 0x0F], absmax);
        }
        store8(out + first, v);
    } else {
        // The last, partial word: byte loads only (the buffer may end inside it).
        for (unsigned long long i = first; i < n; i++) {
            const uint32_t byte = packed[i / 2];
            const uint32_t nibble = (i % 2 == 0) ? (byte >> 4) : (byte & 0x0F);
            store1(out + i, __fmul_rn(lut[nibble], absmax));
        }
    }
}

#define NF4_KERNEL(NAME, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(NF4_THREADS) NAME(                               \
        const uint8_t* packed, const uint8_t* absmax_codes, const float* absmax2, const float* code, \
        float offset, unsigned long long n, T* out                                                   \
    ) {                                                                                             \
        nf4_dequant<T>(packed, absmax_codes, absmax2, code, offset, n, out);                        \
    }

NF4_KERNEL(nf4_dequant_f32, float)
NF4_KERNEL(nf4_dequant_bf16, __nv_bfloat16)
NF4_KERNEL(nf4_dequant_f16, __half)
