//! QLoRA's frozen base weights: 4-bit NormalFloat (NF4) with double-quantized statistics,
//! bit-compatible with bitsandbytes 0.50.2 (`quantize_4bit(quant_type="nf4", blocksize=64,
//! compress_statistics=True)`), dequantized on the fly on the CPU or by a CUDA kernel.
//!
//! Why bit-compatible: a QLoRA adapter is trained against `dequant(NF4(W))`, and merging it into
//! anything else (the original bf16 `W`) degenerated a third of the seed's outputs (DESIGN.md).
//! forge's NF4 weights are the very values bitsandbytes' GPU path trains against, so adapters
//! move both ways and merge folds into the right matrix ([`Nf4Weight::dense`]).
//!
//! The format, element `i` of the row-major `[out, in]` weight flattened to `n` values:
//! - blocks of 64 values; `absmax[b]` = the block's largest magnitude; value `x` becomes the
//!   index of the nearest of the 16 [`NF4_CODE`] values to `x / absmax[b]` (computed as
//!   `x * (1 / absmax)`, a tie going to the lower code), packed two per byte, the even element in
//!   the high nibble (`packed[i / 2]`, `ceil(n / 2)` bytes);
//! - double quantization: `offset` = mean of the absmax vector, then `absmax − offset` is
//!   quantized blockwise (256 per block) to 8-bit codes of bitsandbytes' dynamic map
//!   ([`DYNAMIC_CODE`]) with one f32 `absmax2` per 256 blocks;
//! - dequantization: `absmax[b] = code[absmax_codes[b]] · absmax2[b / 256] + offset` (two f32
//!   roundings, never a fused multiply-add), value = `NF4[nibble] · absmax[b]` rounded once to
//!   the output dtype.
//!
//! A count `n` that is not a multiple of 64 (or of 64·256) is handled as bitsandbytes' CUDA
//! kernels do: the last block (and the last group of blocks) is partial, its absmax taken over the
//! values it has; an odd `n` leaves a low nibble that encodes a 0 pad.
//!
//! Where bitsandbytes itself is not one function, forge follows its CUDA kernels (the path QLoRA
//! trains on), checked against its source (`csrc/kernels.cu`) and a golden file written by
//! `fixtures/nf4/gen_golden.py`:
//! - a block of zeros: CUDA computes `0 · (1/0)` = NaN, which its threshold tree sends to code 0
//!   (so the block dequantizes to `−absmax[b]`, and `absmax[b]` is the double quantization's
//!   decoding of 0: near zero, not zero); bitsandbytes' PyTorch path gives code 7 (0.0). The same
//!   NaN path gives code 0 to a group of 256 equal absmaxes in the double quantization (harmless:
//!   its absmax2 is 0, so it decodes to the offset, exactly).
//! - the 8-bit codes are the nearest (CUDA's binary search, whose exact-midpoint ties go to the
//!   index it ends on); bitsandbytes' CPU library uses a 65,536-bin lookup table instead, which
//!   near zero can pick a farther code.
//! - `offset` is f32 `sum · (1/count)` as PyTorch's CUDA mean is, the sum rounded once from f64:
//!   PyTorch's own f32 sums (CPU or CUDA, each in its order) can differ in the last bit.
//! - the reciprocal `1/absmax` is exact here; bitsandbytes' CUDA library is built with
//!   `--use_fast_math`, whose approximate reciprocal can move a value lying within an ulp of a
//!   threshold to the neighbouring code. Subnormal products are not flushed to zero.
//! - bitsandbytes' CPU library dequantizes rows that are not a whole number of blocks wrongly (its
//!   AVX-512 path indexes the absmax per row); the flat definition above is what its CUDA kernel
//!   and its PyTorch path compute.
//!
//! [`Nf4Weight`] is a [`LinearWeight`]: it keeps the packed state on the weight's device and
//! dequantizes inside each forward and each backward call of [`frozen_matmul_t`] (to the
//! original dtype, then cast to the input's, as bitsandbytes' `matmul_4bit`), so the dense
//! matrix never outlives one call. The dequantization is a
//! candle custom op with a CPU path (rayon) and a CUDA path (`kernels/nf4.cu`, compiled to PTX by
//! `build.rs` under the `cuda` feature).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Storage, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

use super::Decoder;
use super::fused::frozen_matmul_t;
use super::linear::{LinearWeight, Proj, matmul_t};

/// Values per quantization block.
pub const BLOCK: usize = 64;
/// Blocks per block of the double quantization.
pub const BLOCK2: usize = 256;

/// bitsandbytes' NF4 values (`get_4bit_type("nf4")`, the same table as its CUDA kernels).
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// The decision thresholds of bitsandbytes' CUDA `dQuantizeNF4` (a value above threshold `k` gets
/// a code above `k`): the f32 midpoints of neighbouring [`NF4_CODE`] values, as its PyTorch path
/// computes them (a test checks both).
const NF4_THRESHOLDS: [f32; 15] = [
    -0.848_096_4,
    -0.610_632_9,
    -0.459_995_27,
    -0.339_679_42,
    -0.234_607_4,
    -0.137_911_74,
    -0.045_525_018,
    0.039_790_15,
    0.120_255_25,
    0.203_521_25,
    0.292_013_76,
    0.389_312_54,
    0.501_663_45,
    0.642_786_9,
    0.861_478_45,
];

/// bitsandbytes' 8-bit dynamic map (`create_dynamic_map()`, signed, 7 exponent bits), sorted, as
/// f32 bit patterns: the codes of the double-quantized absmax.
pub const DYNAMIC_CODE: [f32; 256] = {
    const BITS: [u32; 256] = [
        0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a,
        0xbf650000, 0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666,
        0xbf4bcccd, 0xbf483333, 0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334,
        0xbf32999a, 0xbf2f0000, 0xbf2b6666, 0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000,
        0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a, 0xbf0b0000, 0xbf076666, 0xbf03cccc,
        0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a, 0xbedc6666, 0xbed53333,
        0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000, 0xbea2cccc,
        0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
        0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000,
        0xbddb3334, 0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8,
        0xbda75c2a, 0xbda1999a, 0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd,
        0xbd7e147b, 0xbd728f5d, 0xbd670a3d, 0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3,
        0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148, 0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7,
        0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148, 0xbc1f3b64, 0xbc160418,
        0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4, 0xbbab020d,
        0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
        0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705,
        0xb923d70b, 0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94,
        0xb513a3b7, 0x00000000, 0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034,
        0x388aefb3, 0x38ba1f4b, 0x3923d70b, 0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1,
        0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d, 0x3af1a9fc, 0x3b1db22d, 0x3b428f5c,
        0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4, 0x3bcfdf3b, 0x3be24dd3,
        0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148, 0x3c68f5c3,
        0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
        0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f,
        0x3d670a3d, 0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b,
        0x3d9bd70a, 0x3da1999a, 0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667,
        0x3dc428f7, 0x3dc9eb85, 0x3ddb3334, 0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333,
        0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd, 0x3e6f3333, 0x3e7d9999, 0x3e860000,
        0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000, 0x3eb13333, 0x3eb86666,
        0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a, 0x3eeacccc,
        0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
        0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd,
        0x3f2b6666, 0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000,
        0x3f44999a, 0x3f483333, 0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333,
        0x3f5dcccd, 0x3f616666, 0x3f650000, 0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666,
        0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
    ];
    let mut out = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        out[i] = f32::from_bits(BITS[i]);
        i += 1;
    }
    out
};

/// The NF4 code of a value already divided by its block's absmax: the number of thresholds below
/// it (NaN, from an all-zero block, gets 0 as in CUDA's tree).
fn nf4_index(x: f32) -> u8 {
    NF4_THRESHOLDS.iter().filter(|&&t| x > t).count() as u8
}

/// bitsandbytes' CUDA `dQuantize<0>`: the dynamic-map code nearest to `x` in `[-1, 1]`, by its
/// binary search (ported literally: a tie at a midpoint goes to the index the search ends on).
fn dynamic_index(code: &[f32; 256], x: f32) -> u8 {
    let (mut pivot, mut upper_pivot, mut lower_pivot) = (127usize, 255usize, 0usize);
    let (mut lower, mut upper) = (-1.0f32, 1.0f32);
    let mut val = code[pivot];
    let mut step = 64;
    while step > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = code[pivot];
        step >>= 1;
    }
    if upper_pivot == 255 {
        upper = code[255];
    }
    if lower_pivot == 0 {
        lower = code[0];
    }
    let index = if x > val {
        if x > (upper + val) * 0.5 {
            upper_pivot
        } else {
            pivot
        }
    } else if x < (lower + val) * 0.5 {
        lower_pivot
    } else {
        pivot
    };
    index as u8
}

fn abs_max(values: &[f32]) -> f32 {
    values.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// First level: the packed nibbles and the f32 absmax of every 64-value block.
fn quantize_blocks(values: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut packed = vec![0u8; values.len().div_ceil(2)];
    let mut absmax = vec![0f32; values.len().div_ceil(BLOCK)];
    packed
        .par_chunks_mut(BLOCK / 2)
        .zip(absmax.par_iter_mut())
        .zip(values.par_chunks(BLOCK))
        .for_each(|((bytes, am), block)| {
            *am = abs_max(block);
            // 1/0 = inf for a block of zeros: 0·inf = NaN, code 0, as on CUDA.
            let inv = 1.0 / *am;
            for (byte, pair) in bytes.iter_mut().zip(block.chunks(2)) {
                let hi = nf4_index(pair[0] * inv);
                let lo = nf4_index(pair.get(1).copied().unwrap_or(0.0) * inv);
                *byte = (hi << 4) | lo;
            }
        });
    (packed, absmax)
}

/// The double quantization's offset: the mean of the absmax vector.
fn mean_offset(absmax: &[f32]) -> f32 {
    let sum = absmax.iter().map(|&a| f64::from(a)).sum::<f64>() as f32;
    sum * (1.0 / absmax.len() as f32)
}

/// Second level: `absmax − offset` in groups of 256 → (8-bit codes, f32 absmax2 per group).
fn quantize_absmax(absmax: &[f32], offset: f32, code: &[f32; 256]) -> (Vec<u8>, Vec<f32>) {
    let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let mut codes = Vec::with_capacity(centered.len());
    let mut absmax2 = Vec::with_capacity(centered.len().div_ceil(BLOCK2));
    for group in centered.chunks(BLOCK2) {
        let m = abs_max(group);
        let inv = 1.0 / m;
        absmax2.push(m);
        codes.extend(group.iter().map(|&v| dynamic_index(code, v * inv)));
    }
    (codes, absmax2)
}

/// The absmax of block `b`, as bitsandbytes decodes it (multiply, then add, each rounded).
fn block_absmax(b: usize, codes: &[u8], absmax2: &[f32], code: &[f32], offset: f32) -> f32 {
    code[codes[b] as usize] * absmax2[b / BLOCK2] + offset
}

/// Dequantizes `out.len()` values, converting each f32 product once with `convert`.
fn dequantize_into<T: Send>(
    out: &mut [T],
    packed: &[u8],
    codes: &[u8],
    absmax2: &[f32],
    code: &[f32],
    offset: f32,
    convert: impl Fn(f32) -> T + Sync,
) {
    out.par_chunks_mut(BLOCK)
        .enumerate()
        .for_each(|(b, block)| {
            let absmax = block_absmax(b, codes, absmax2, code, offset);
            for (j, o) in block.iter_mut().enumerate() {
                let i = b * BLOCK + j;
                let byte = packed[i / 2];
                let nibble = if i.is_multiple_of(2) {
                    byte >> 4
                } else {
                    byte & 0x0f
                };
                *o = convert(NF4_CODE[nibble as usize] * absmax);
            }
        });
}

/// The NF4 state of one weight in host memory: bitsandbytes' `QuantState` with nested statistics
/// (`absmax` = `absmax_codes`, `state2.absmax` = `absmax2`, `state2.code` = `code`).
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4State {
    /// `ceil(n / 2)` bytes; value `2k` in the high nibble of byte `k`.
    pub packed: Vec<u8>,
    /// One 8-bit code per 64-value block.
    pub absmax_codes: Vec<u8>,
    /// One scale per 256 blocks.
    pub absmax2: Vec<f32>,
    pub offset: f32,
    /// The 256-entry map `absmax_codes` index ([`DYNAMIC_CODE`] when quantized here).
    pub code: Vec<f32>,
    /// `(out_features, in_features)`.
    pub shape: (usize, usize),
    /// The dtype of the weight that was quantized: what [`Nf4Weight::dense`] returns.
    pub dtype: DType,
}

impl Nf4State {
    /// Quantizes the row-major values of a `shape` weight of `dtype` (f32, bf16 or f16, as
    /// bitsandbytes accepts).
    pub fn quantize(values: &[f32], shape: (usize, usize), dtype: DType) -> Result<Nf4State> {
        check_dtype(dtype)?;
        if values.len() != shape.0 * shape.1 || values.is_empty() {
            candle_core::bail!(
                "NF4: {} values for a {shape:?} weight (an empty one cannot be quantized)",
                values.len()
            );
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            candle_core::bail!("NF4: value {i} of the {shape:?} weight is {}", values[i]);
        }
        let (packed, absmax) = quantize_blocks(values);
        let offset = mean_offset(&absmax);
        let (absmax_codes, absmax2) = quantize_absmax(&absmax, offset, &DYNAMIC_CODE);
        Ok(Nf4State {
            packed,
            absmax_codes,
            absmax2,
            offset,
            code: DYNAMIC_CODE.to_vec(),
            shape,
            dtype,
        })
    }

    /// The number of weight values.
    pub fn len(&self) -> usize {
        self.shape.0 * self.shape.1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that the parts fit the shape (a state read from elsewhere).
    pub fn validate(&self) -> Result<()> {
        check_dtype(self.dtype)?;
        let n = self.len();
        let blocks = n.div_ceil(BLOCK);
        let expect = [
            ("packed bytes", self.packed.len(), n.div_ceil(2)),
            ("absmax codes", self.absmax_codes.len(), blocks),
            (
                "absmax2 scales",
                self.absmax2.len(),
                blocks.div_ceil(BLOCK2),
            ),
            ("code entries", self.code.len(), 256),
        ];
        for (what, got, want) in expect {
            if got != want || n == 0 {
                candle_core::bail!(
                    "NF4 state of a {:?} weight: {got} {what}, expected {want}",
                    self.shape
                );
            }
        }
        Ok(())
    }

    /// The decoded absmax of every 64-value block.
    pub fn absmax(&self) -> Vec<f32> {
        (0..self.absmax_codes.len())
            .map(|b| {
                block_absmax(
                    b,
                    &self.absmax_codes,
                    &self.absmax2,
                    &self.code,
                    self.offset,
                )
            })
            .collect()
    }

    /// The dequantized values in f32 (row-major).
    pub fn dequantize_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.len()];
        dequantize_into(
            &mut out,
            &self.packed,
            &self.absmax_codes,
            &self.absmax2,
            &self.code,
            self.offset,
            |v| v,
        );
        out
    }
}

fn check_dtype(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::BF16 | DType::F16 => Ok(()),
        other => candle_core::bail!("NF4 quantizes f32, bf16 or f16 weights, not {other:?}"),
    }
}

/// Bytes an NF4 weight of `shape` takes: packed nibbles, absmax codes, absmax2, the code table
/// and the offset.
pub fn footprint(shape: (usize, usize)) -> usize {
    let n = shape.0 * shape.1;
    let blocks = n.div_ceil(BLOCK);
    n.div_ceil(2) + blocks + 4 * blocks.div_ceil(BLOCK2) + 4 * 256 + 4
}

/// A frozen NF4 base weight on a device (see the module docs).
#[derive(Debug, Clone)]
pub struct Nf4Weight {
    /// u8 `[ceil(n / 2)]`.
    packed: Tensor,
    /// u8 `[ceil(n / 64)]`.
    absmax_codes: Tensor,
    /// f32 `[ceil(n / 64 / 256)]`.
    absmax2: Tensor,
    /// f32 `[256]`.
    code: Tensor,
    offset: f32,
    shape: (usize, usize),
    dtype: DType,
}

impl Nf4Weight {
    /// Quantizes a dense `[out, in]` weight (f32, bf16 or f16, on any device; the quantization
    /// itself runs on the CPU) and keeps the state on the weight's device.
    pub fn quantize(weight: &Tensor) -> Result<Nf4Weight> {
        let shape = weight.dims2()?;
        let values = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let state = Nf4State::quantize(&values, shape, weight.dtype())?;
        Nf4Weight::from_state(&state, weight.device())
    }

    /// Puts a state (quantized here or read from a bitsandbytes checkpoint) on `device`.
    pub fn from_state(state: &Nf4State, device: &Device) -> Result<Nf4Weight> {
        state.validate()?;
        let len = |v: &[u8]| v.len();
        Ok(Nf4Weight {
            packed: Tensor::from_vec(state.packed.clone(), len(&state.packed), device)?,
            absmax_codes: Tensor::from_vec(
                state.absmax_codes.clone(),
                len(&state.absmax_codes),
                device,
            )?,
            absmax2: Tensor::from_vec(state.absmax2.clone(), state.absmax2.len(), device)?,
            code: Tensor::from_vec(state.code.clone(), 256, device)?,
            offset: state.offset,
            shape: state.shape,
            dtype: state.dtype,
        })
    }

    /// The raw state, copied to host memory.
    pub fn state(&self) -> Result<Nf4State> {
        Ok(Nf4State {
            packed: self.packed.to_vec1()?,
            absmax_codes: self.absmax_codes.to_vec1()?,
            absmax2: self.absmax2.to_vec1()?,
            offset: self.offset,
            code: self.code.to_vec1()?,
            shape: self.shape,
            dtype: self.dtype,
        })
    }

    /// The dtype of the weight that was quantized.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Bytes the state takes on its device.
    pub fn bytes(&self) -> usize {
        footprint(self.shape)
    }

    /// The dense `[out, in]` weight in `dtype`, as bitsandbytes' `matmul_4bit` forms it:
    /// dequantized to the original dtype, then cast. (From an f32 original, dequantizing straight
    /// into bf16/f16 rounds the same f32 product once: the same values, one pass less.)
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        let direct =
            dtype == self.dtype || (self.dtype == DType::F32 && check_dtype(dtype).is_ok());
        let out = if direct { dtype } else { self.dtype };
        let w = self.packed.apply_op1_no_bwd(&Dequantize {
            weight: self,
            dtype: out,
        })?;
        if out == dtype {
            Ok(w)
        } else {
            w.to_dtype(dtype)
        }
    }
}

impl LinearWeight for Nf4Weight {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        if !x.track_op() {
            return matmul_t(x, &self.dequantize(dtype)?);
        }
        let this = self.clone();
        frozen_matmul_t(x, Arc::new(move || this.dequantize(dtype)))
    }

    fn dims(&self) -> (usize, usize) {
        self.shape
    }

    fn dense(&self) -> Result<Tensor> {
        self.dequantize(self.dtype)
    }
}

/// Replaces the projections `projs` of every layer by their NF4 quantization (QLoRA quantizes all
/// seven; the embedding, head and norms stay dense).
pub fn quantize_decoder(decoder: &mut Decoder, projs: &[Proj]) -> Result<()> {
    for (id, linear) in decoder.linears_mut() {
        if projs.contains(&id.proj) {
            let weight = Nf4Weight::quantize(&linear.weight().dense()?)?;
            linear.set_weight(Arc::new(weight))?;
        }
    }
    Ok(())
}

/// The dequantization as a candle op on the packed tensor (the rest of the state rides along).
struct Dequantize<'a> {
    weight: &'a Nf4Weight,
    dtype: DType,
}

/// A contiguous tensor's values in CPU storage.
pub(crate) fn cpu_slice<'s, T: candle_core::WithDType>(
    s: &'s CpuStorage,
    layout: &Layout,
) -> Result<&'s [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&s.as_slice::<T>()?[start..end]),
        None => candle_core::bail!("a custom op's operand is not contiguous"),
    }
}

impl CustomOp1 for Dequantize<'_> {
    fn name(&self) -> &'static str {
        "nf4-dequantize"
    }

    fn cpu_fwd(&self, packed: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = self.weight;
        let packed = cpu_slice::<u8>(packed, layout)?;
        let (codes, codes_layout) = w.absmax_codes.storage_and_layout();
        let (absmax2, absmax2_layout) = w.absmax2.storage_and_layout();
        let (code, code_layout) = w.code.storage_and_layout();
        let (Storage::Cpu(codes), Storage::Cpu(absmax2), Storage::Cpu(code)) =
            (&*codes, &*absmax2, &*code)
        else {
            candle_core::bail!("NF4: the state is split between devices");
        };
        let codes = cpu_slice::<u8>(codes, codes_layout)?;
        let absmax2 = cpu_slice::<f32>(absmax2, absmax2_layout)?;
        let code = cpu_slice::<f32>(code, code_layout)?;
        let n = w.shape.0 * w.shape.1;
        let storage = match self.dtype {
            DType::F32 => {
                let mut out = vec![0f32; n];
                dequantize_into(&mut out, packed, codes, absmax2, code, w.offset, |v| v);
                CpuStorage::F32(out)
            }
            DType::BF16 => {
                let mut out = vec![bf16::ZERO; n];
                dequantize_into(
                    &mut out,
                    packed,
                    codes,
                    absmax2,
                    code,
                    w.offset,
                    bf16::from_f32,
                );
                CpuStorage::BF16(out)
            }
            DType::F16 => {
                let mut out = vec![f16::ZERO; n];
                dequantize_into(
                    &mut out,
                    packed,
                    codes,
                    absmax2,
                    code,
                    w.offset,
                    f16::from_f32,
                );
                CpuStorage::F16(out)
            }
            other => candle_core::bail!("NF4 dequantizes to f32, bf16 or f16, not {other:?}"),
        };
        Ok((storage, Shape::from(w.shape)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        packed: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::dequantize(self.weight, self.dtype, packed, layout)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
    use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage};
    use half::{bf16, f16};

    use super::Nf4Weight;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/nf4.ptx"));
    const THREADS: u32 = 256;

    /// The kernel's pointer arguments need whole allocations (alignment for its vector loads).
    fn whole<'a, T: candle_core::cuda_backend::CudaDType>(
        s: &'a CudaStorage,
        layout: &Layout,
    ) -> Result<&'a CudaSlice<T>> {
        if !layout.is_contiguous() || layout.start_offset() != 0 {
            candle_core::bail!("NF4: a state tensor is a view, not a whole buffer");
        }
        s.as_cuda_slice::<T>()
    }

    pub(super) fn dequantize(
        w: &Nf4Weight,
        dtype: DType,
        packed: &CudaStorage,
        layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dev = packed.device().clone();
        let packed = whole::<u8>(packed, layout)?;
        let (codes, codes_layout) = w.absmax_codes.storage_and_layout();
        let (absmax2, absmax2_layout) = w.absmax2.storage_and_layout();
        let (code, code_layout) = w.code.storage_and_layout();
        let (Storage::Cuda(codes), Storage::Cuda(absmax2), Storage::Cuda(code)) =
            (&*codes, &*absmax2, &*code)
        else {
            candle_core::bail!("NF4: the state is split between devices");
        };
        let args = Args {
            dev: &dev,
            packed,
            codes: whole::<u8>(codes, codes_layout)?,
            absmax2: whole::<f32>(absmax2, absmax2_layout)?,
            code: whole::<f32>(code, code_layout)?,
            offset: w.offset,
            n: (w.shape.0 * w.shape.1) as u64,
        };
        let storage = match dtype {
            DType::F32 => {
                CudaStorage::wrap_cuda_slice(args.launch::<f32>("nf4_dequant_f32")?, dev.clone())
            }
            DType::BF16 => {
                CudaStorage::wrap_cuda_slice(args.launch::<bf16>("nf4_dequant_bf16")?, dev.clone())
            }
            DType::F16 => {
                CudaStorage::wrap_cuda_slice(args.launch::<f16>("nf4_dequant_f16")?, dev.clone())
            }
            other => candle_core::bail!("NF4 dequantizes to f32, bf16 or f16, not {other:?}"),
        };
        Ok((storage, Shape::from(w.shape)))
    }

    struct Args<'a> {
        dev: &'a CudaDevice,
        packed: &'a CudaSlice<u8>,
        codes: &'a CudaSlice<u8>,
        absmax2: &'a CudaSlice<f32>,
        code: &'a CudaSlice<f32>,
        offset: f32,
        n: u64,
    }

    impl Args<'_> {
        fn launch<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
            &self,
            kernel: &str,
        ) -> Result<CudaSlice<T>> {
            let func = self.dev.get_or_load_custom_func(kernel, "forge_nf4", PTX)?;
            // SAFETY: the kernel writes all n values.
            let out = unsafe { self.dev.alloc::<T>(self.n as usize)? };
            let words = self.n.div_ceil(8);
            let cfg = LaunchConfig {
                grid_dim: (words.div_ceil(u64::from(THREADS)) as u32, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut builder = func.builder();
            builder.arg(self.packed);
            builder.arg(self.codes);
            builder.arg(self.absmax2);
            builder.arg(self.code);
            builder.arg(&self.offset);
            builder.arg(&self.n);
            builder.arg(&out);
            // SAFETY: argument types and order match the kernel's signature in kernels/nf4.cu;
            // the buffers have the sizes Nf4State::validate checked.
            unsafe { builder.launch(cfg) }.w()?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use candle_core::{D, Var};

    use super::*;
    use crate::model::decoder::tests::fixture;
    use crate::model::ops::tests::max_abs_diff;
    use crate::model::ops::tests::{check_grad, randn};
    use crate::model::{Batch, LinearWeight};

    const CASES: [&str; 5] = ["f32", "bf16", "special", "near_mean", "f16_odd"];

    /// `fixtures/nf4/golden.safetensors` (see `gen_golden.py` beside it).
    fn golden() -> HashMap<String, Tensor> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/nf4/golden.safetensors");
        crate::model::load::load_file(&path, None, &Device::Cpu).unwrap()
    }

    fn get<'a>(g: &'a HashMap<String, Tensor>, case: &str, key: &str) -> &'a Tensor {
        &g[&format!("{case}.{key}")]
    }

    fn u8s(t: &Tensor) -> Vec<u8> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Bit patterns (as f32: exact for bf16/f16 too, signed zeros kept).
    fn bits(t: &Tensor) -> Vec<u32> {
        let v: Vec<f32> = t
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        v.iter().map(|x| x.to_bits()).collect()
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// Equal slices, or a panic naming the first difference (not thousands of values).
    fn same<T: PartialEq + std::fmt::Debug>(a: &[T], b: &[T], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        if let Some(i) = (0..a.len()).find(|&i| a[i] != b[i]) {
            panic!("{what}: first difference at {i}: {:?} vs {:?}", a[i], b[i]);
        }
    }

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn nf4_tables_are_bitsandbytes() {
        for (k, t) in NF4_THRESHOLDS.iter().enumerate() {
            assert_eq!(*t, (NF4_CODE[k] + NF4_CODE[k + 1]) / 2.0, "threshold {k}");
            assert_eq!(nf4_index(*t), k as u8, "a tie goes to the lower code");
            assert_eq!(nf4_index(NF4_CODE[k]), k as u8);
        }
        assert_eq!(nf4_index(f32::NAN), 0);
        let g = golden();
        assert_eq!(
            bits(&g["code"]),
            DYNAMIC_CODE.map(f32::to_bits).to_vec(),
            "the dynamic map"
        );
        assert!(DYNAMIC_CODE.windows(2).all(|w| w[0] < w[1]));
        // The binary search finds the nearest code wherever there is no tie.
        let mut x = -1.0f32;
        while x <= 1.0 {
            let q = dynamic_index(&DYNAMIC_CODE, x) as usize;
            let nearest = (0..256)
                .min_by(|&a, &b| {
                    (DYNAMIC_CODE[a] - x)
                        .abs()
                        .total_cmp(&(DYNAMIC_CODE[b] - x).abs())
                })
                .unwrap();
            assert_eq!(
                (DYNAMIC_CODE[q] - x).abs(),
                (DYNAMIC_CODE[nearest] - x).abs(),
                "{x}"
            );
            x += 0.000_37;
        }
    }

    #[test]
    fn nf4_quantization_matches_bitsandbytes() {
        let g = golden();
        for case in CASES {
            let input = get(&g, case, "input");
            let values = f32s(input);
            let (packed, absmax) = quantize_blocks(&values);
            assert_eq!(
                packed,
                u8s(get(&g, case, "packed")),
                "{case}: packed nibbles"
            );
            let absmax_t = Tensor::new(absmax.as_slice(), &Device::Cpu).unwrap();
            assert_eq!(
                bits(&absmax_t),
                bits(get(&g, case, "absmax")),
                "{case}: absmax"
            );

            // The offset: bitsandbytes' comes from PyTorch's f32 sum (module docs).
            let bnb_offset = f32s(get(&g, case, "offset"))[0];
            let offset = mean_offset(&absmax);
            println!(
                "{case}: offset {offset:e}, bitsandbytes {bnb_offset:e} ({} ulp)",
                ulps(offset, bnb_offset)
            );
            assert!(ulps(offset, bnb_offset) <= 1, "{case}: offset");

            // The double quantization from bitsandbytes' offset: the nearest codes, exactly.
            let (codes, absmax2) = quantize_absmax(&absmax, bnb_offset, &DYNAMIC_CODE);
            let want = u8s(get(&g, case, "absmax_codes"));
            same(&codes, &want, &format!("{case}: absmax codes"));
            let absmax2_t = Tensor::new(absmax2.as_slice(), &Device::Cpu).unwrap();
            assert_eq!(bits(&absmax2_t), bits(get(&g, case, "absmax2")), "{case}");

            // Where bitsandbytes' CPU lookup table chose otherwise, its code is farther.
            let native = u8s(get(&g, case, "absmax_codes_native"));
            let mut differ = 0;
            for (b, (&ours, &theirs)) in codes.iter().zip(&native).enumerate() {
                if ours != theirs {
                    differ += 1;
                    let x = (absmax[b] - bnb_offset) * (1.0 / absmax2[b / BLOCK2]);
                    let d = |q: u8| (DYNAMIC_CODE[q as usize] - x).abs();
                    assert!(d(ours) < d(theirs), "{case} block {b}: {x}");
                }
            }
            println!("{case}: {differ} absmax codes differ from the CPU library's lookup table");
            if case == "near_mean" {
                assert!(
                    differ > 0,
                    "the case meant to show the lookup table's error"
                );
            }

            // The whole pipeline.
            let state = Nf4State::quantize(&values, input.dims2().unwrap(), input.dtype()).unwrap();
            assert_eq!(state.packed, packed);
            if offset == bnb_offset {
                assert_eq!(state.absmax2, absmax2, "{case}");
                same(&state.absmax_codes, &want, case);
            }
        }
    }

    #[test]
    fn nf4_dequantization_matches_bitsandbytes() {
        let g = golden();
        for case in CASES {
            let input = get(&g, case, "input");
            let state = Nf4State {
                packed: u8s(get(&g, case, "packed")),
                absmax_codes: u8s(get(&g, case, "absmax_codes")),
                absmax2: f32s(get(&g, case, "absmax2")),
                offset: f32s(get(&g, case, "offset"))[0],
                code: f32s(&g["code"]),
                shape: input.dims2().unwrap(),
                dtype: input.dtype(),
            };
            let w = Nf4Weight::from_state(&state, &Device::Cpu).unwrap();
            let dense = w.dense().unwrap();
            let want = get(&g, case, "dequant");
            assert_eq!(dense.dtype(), input.dtype());
            assert_eq!(dense.dims(), input.dims());
            same(
                &bits(&dense),
                &bits(want),
                &format!("{case}: dequantized values"),
            );
            assert_eq!(w.state().unwrap(), state);

            // Every output dtype: the f32 products rounded once to the original dtype, then cast.
            let raw = Tensor::new(state.dequantize_f32().as_slice(), &Device::Cpu).unwrap();
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let expect = if input.dtype() == DType::F32 || input.dtype() == dtype {
                    raw.to_dtype(dtype).unwrap()
                } else {
                    raw.to_dtype(input.dtype())
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let got = w.dequantize(dtype).unwrap();
                assert_eq!(got.dtype(), dtype);
                same(&bits(&got), &bits(&expect), &format!("{case} → {dtype:?}"));
            }

            // Quantized here from the input: the same, or off by the offset's last bit.
            let ours = Nf4Weight::quantize(input).unwrap().dense().unwrap();
            let scale = max_abs_diff(input, &input.zeros_like().unwrap());
            let err = max_abs_diff(&ours, want) / scale;
            println!("{case}: quantized here vs bitsandbytes, max |Δ| / max |w| = {err:e}");
            let exact = ulps(Nf4Weight::quantize(input).unwrap().offset, state.offset) == 0;
            if exact {
                same(&bits(&ours), &bits(want), case);
            } else {
                assert!(err < 1e-5, "{case}: {err}");
            }
        }
    }

    /// The device check (`cargo test --features cuda -p forge-stages nf4_cuda -- --nocapture` on
    /// a GPU machine): the CUDA kernel gives the CPU path's bits, and its speed on the largest
    /// projection of Qwen3-4B.
    #[cfg(feature = "cuda")]
    #[test]
    fn nf4_cuda_dequantization_matches_the_cpu() {
        let gpu = Device::new_cuda(0).expect("the cuda feature's tests need a GPU");
        let g = golden();
        for case in CASES {
            let input = get(&g, case, "input");
            let cpu = Nf4Weight::quantize(input).unwrap();
            let on_gpu = Nf4Weight::from_state(&cpu.state().unwrap(), &gpu).unwrap();
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                let (a, b) = (
                    cpu.dequantize(dtype).unwrap(),
                    on_gpu.dequantize(dtype).unwrap(),
                );
                same(&bits(&b), &bits(&a), &format!("{case} → {dtype:?} on CUDA"));
            }
            let x = Tensor::ones((3, input.dim(1).unwrap()), input.dtype(), &gpu).unwrap();
            let y = on_gpu.forward(&x).unwrap().to_device(&Device::Cpu).unwrap();
            let want = cpu.forward(&x.to_device(&Device::Cpu).unwrap()).unwrap();
            assert!(
                max_abs_diff(&y, &want) <= 1e-2 * max_abs_diff(&want, &want.zeros_like().unwrap())
            );
        }

        let (rows, cols) = (9728, 2560);
        let w = Tensor::randn(0f32, 0.02, (rows, cols), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let cpu = Nf4Weight::quantize(&w).unwrap();
        let on_gpu = Nf4Weight::from_state(&cpu.state().unwrap(), &gpu).unwrap();
        let want = cpu.dense().unwrap();
        same(
            &bits(&on_gpu.dense().unwrap()),
            &bits(&want),
            "9728×2560 bf16 on CUDA",
        );
        let reps = 100;
        gpu.synchronize().unwrap();
        let start = std::time::Instant::now();
        for _ in 0..reps {
            on_gpu.dequantize(DType::BF16).unwrap();
        }
        gpu.synchronize().unwrap();
        let each = start.elapsed().as_secs_f64() / reps as f64;
        let bytes = (rows * cols / 2 + rows * cols * 2) as f64;
        println!(
            "NF4 → bf16 dequantization of {rows}×{cols}: {:.1} µs, {:.0} GB/s",
            each * 1e6,
            bytes / each / 1e9
        );
    }

    #[test]
    fn nf4_degenerate_blocks_follow_the_cuda_kernels() {
        // Block 1 is all zeros: code 0 (CUDA's NaN path), dequantized to −absmax, and its absmax
        // (0) decodes to the dynamic map's nearest: (code[0] = −0.99297)·absmax2 + offset ≠ 0.
        let mut values: Vec<f32> = (0..192)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        values[64..128].fill(0.0);
        let state = Nf4State::quantize(&values, (3, 64), DType::F32).unwrap();
        assert!(state.packed[32..64].iter().all(|&b| b == 0));
        let absmax = state.absmax();
        let deq = state.dequantize_f32();
        let expect = DYNAMIC_CODE[0] * state.absmax2[0] + state.offset;
        assert_eq!(absmax[1], expect);
        assert!(
            absmax[1] > 0.0 && absmax[1] < 0.01 * absmax[0],
            "{absmax:?}"
        );
        assert!(deq[64..128].iter().all(|&v| v == -absmax[1]));

        // All blocks with one absmax: absmax − offset is 0 everywhere, absmax2 = 0, codes 0; the
        // absmax still decodes exactly (code · 0 + offset).
        let values: Vec<f32> = (0..320)
            .map(|i| {
                if i % 64 == 5 {
                    -2.5
                } else {
                    (i % 9) as f32 * 0.25
                }
            })
            .collect();
        let state = Nf4State::quantize(&values, (5, 64), DType::F32).unwrap();
        assert_eq!(state.absmax2, [0.0]);
        assert!(state.absmax_codes.iter().all(|&c| c == 0));
        assert_eq!(state.absmax(), [2.5; 5]);
        for (v, d) in values.iter().zip(state.dequantize_f32()) {
            assert_eq!(d, NF4_CODE[nf4_index(v / 2.5) as usize] * 2.5, "{v}");
        }

        // An odd count: the last byte's low nibble encodes a 0 pad (code 7).
        let state = Nf4State::quantize(&[0.5, -1.0, 0.25], (1, 3), DType::F32).unwrap();
        // 0.5 → 12 (0.4407 < 0.5 < the 0.5017 threshold), −1 → 0, 0.25 → 10, pad 0 → 7.
        assert_eq!(state.packed, [0xc0, 0xa7]);
        assert_eq!(state.dequantize_f32().len(), 3);

        assert!(Nf4State::quantize(&[1.0, f32::NAN], (1, 2), DType::F32).is_err());
        assert!(Nf4State::quantize(&[], (0, 2), DType::F32).is_err());
        assert!(Nf4State::quantize(&[1.0], (1, 1), DType::F64).is_err());
        let mut broken = Nf4State::quantize(&[1.0, 2.0], (1, 2), DType::F32).unwrap();
        broken.absmax2.push(1.0);
        assert!(Nf4Weight::from_state(&broken, &Device::Cpu).is_err());
    }

    #[test]
    fn nf4_weights_forward_and_pass_the_input_gradient() {
        let dev = Device::Cpu;
        // [48, 64]: 48 blocks; [10, 48]: 480 values, a partial last block.
        let w1 = Nf4Weight::quantize(
            &(randn(&[48, 64], 21) * 0.2)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        )
        .unwrap();
        let w2 = Nf4Weight::quantize(
            &(randn(&[10, 48], 22) * 0.3)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap(),
        )
        .unwrap();
        assert_eq!((w1.dims(), w2.dims()), ((48, 64), (10, 48)));
        let x = Var::from_tensor(&randn(&[2, 3, 64], 23)).unwrap();
        let probe = randn(&[2, 3, 10], 24);
        let nf4 = || w2.forward(&w1.forward(x.as_tensor()).unwrap()).unwrap();
        let (d1, d2) = (
            w1.dense().unwrap().to_dtype(DType::F64).unwrap(),
            w2.dense().unwrap().to_dtype(DType::F64).unwrap(),
        );
        let dense = || matmul_t(&matmul_t(x.as_tensor(), &d1).unwrap(), &d2).unwrap();
        let (y, r) = (nf4(), dense());
        assert_eq!(y.to_vec3::<f64>().unwrap(), r.to_vec3::<f64>().unwrap());
        // Inference (no gradient tracked) takes the plain matmul: the same values.
        let plain = w2
            .forward(&w1.forward(&x.as_tensor().detach()).unwrap())
            .unwrap();
        assert_eq!(plain.to_vec3::<f64>().unwrap(), r.to_vec3::<f64>().unwrap());

        let loss = |t: Tensor| (t * &probe).unwrap().sum_all().unwrap();
        let grads = loss(y).backward().unwrap();
        let reference = loss(r).backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        assert!(max_abs_diff(g, reference.get(x.as_tensor()).unwrap()) < 1e-12);
        // x's and the probe's: no weight-sized gradient is computed or kept.
        assert_eq!(grads.get_ids().count(), 2);
        let f = || loss(nf4()).to_scalar::<f64>().unwrap();
        let coords: Vec<usize> = (0..x.elem_count()).step_by(5).collect();
        let worst = check_grad(&x, g, &coords, 1e-6, 1e-6, &f);
        // f64 rounding over eps = 1e-6: ~1e-7 relative where a gradient is small.
        assert!(worst < 1e-6, "worst relative error {worst}");

        // A bf16 original gives bf16 values however the input is typed.
        let wb = Nf4Weight::quantize(&randn(&[8, 64], 25).to_dtype(DType::BF16).unwrap()).unwrap();
        assert_eq!(wb.dense().unwrap().dtype(), DType::BF16);
        let xb = randn(&[1, 64], 26).to_dtype(DType::BF16).unwrap();
        assert_eq!(wb.forward(&xb).unwrap().dtype(), DType::BF16);
        let dev_x = Tensor::ones((1, 64), DType::F32, &dev).unwrap();
        let yf = wb.forward(&dev_x).unwrap();
        let want = matmul_t(&dev_x, &wb.dense().unwrap().to_dtype(DType::F32).unwrap()).unwrap();
        assert_eq!(yf.to_vec2::<f32>().unwrap(), want.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn nf4_quantized_qwen3_fixture_stays_close_to_the_dense_model() {
        let dense = Decoder::load(&fixture("qwen3"), DType::F32, &Device::Cpu).unwrap();
        let mut model = Decoder::load(&fixture("qwen3"), DType::F32, &Device::Cpu).unwrap();

        // Only the listed projections change.
        quantize_decoder(&mut model, &[Proj::Q]).unwrap();
        for ((id, a), (_, b)) in dense.linears().zip(model.linears()) {
            let (a, b) = (a.weight().dense().unwrap(), b.weight().dense().unwrap());
            let roundtrip = Nf4Weight::quantize(&a).unwrap().dense().unwrap();
            let want = if id.proj == Proj::Q { &roundtrip } else { &a };
            assert_eq!(bits(&b), bits(want), "{id:?}");
        }

        let mut model = Decoder::load(&fixture("qwen3"), DType::F32, &Device::Cpu).unwrap();
        quantize_decoder(&mut model, &Proj::ALL).unwrap();
        let (mut dense_bytes, mut nf4_bytes, mut weight_err) = (0, 0, 0f64);
        for ((_, a), (_, b)) in dense.linears().zip(model.linears()) {
            let (a, b) = (a.weight().dense().unwrap(), b.weight().dense().unwrap());
            dense_bytes += a.elem_count() * 4;
            nf4_bytes += footprint(a.dims2().unwrap());
            let rel = max_abs_diff(&a, &b) / max_abs_diff(&a, &a.zeros_like().unwrap());
            weight_err = weight_err.max(rel);
        }
        // The NF4 model computes exactly the dense model whose projections are the dequantized
        // weights.
        let mut reference = Decoder::load(&fixture("qwen3"), DType::F32, &Device::Cpu).unwrap();
        for (_, linear) in reference.linears_mut() {
            let weight = Nf4Weight::quantize(&linear.weight().dense().unwrap())
                .unwrap()
                .dense()
                .unwrap();
            linear
                .set_weight(Arc::new(crate::model::DenseWeight { weight }))
                .unwrap();
        }
        let rows = vec![
            vec![5u32, 9, 11, 2, 7, 100, 3, 64, 1],
            vec![17, 4, 0, 99, 31, 8, 2, 2, 6],
        ];
        let batch = Batch::dense(&rows, 0, &Device::Cpu).unwrap();
        let l0 = dense.forward(&batch, None).unwrap();
        let l1 = model.forward(&batch, None).unwrap();
        let lr = reference.forward(&batch, None).unwrap();
        same(
            &bits(&l1),
            &bits(&lr),
            "NF4 model vs its dequantized dense model",
        );

        let sq = |t: &Tensor| {
            f64::from(
                t.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        };
        let (mut num, mut den) = (0f64, 0f64);
        for ((_, a), (_, b)) in dense.linears().zip(model.linears()) {
            let (a, b) = (a.weight().dense().unwrap(), b.weight().dense().unwrap());
            num += sq(&(&a - &b).unwrap());
            den += sq(&a);
        }
        let weight_rms = (num / den).sqrt();
        let logits_rms = (sq(&(&l0 - &l1).unwrap()) / sq(&l0)).sqrt();
        let agree = l0
            .argmax(D::Minus1)
            .unwrap()
            .eq(&l1.argmax(D::Minus1).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!(
            "qwen3 fixture, 14 projections: f32 {dense_bytes} B → NF4 {nf4_bytes} B ({:.2}×); \
             weights: relative RMS error {weight_rms:.4}, worst {weight_err:.3} of the max; \
             logits: relative RMS change {logits_rms:.4}, max |Δ| {:.4}; argmax agreement \
             {agree:.3}",
            dense_bytes as f64 / nf4_bytes as f64,
            max_abs_diff(&l0, &l1),
        );
        // Neighbouring NF4 codes are at most 0.277 apart: an error of at most 0.139·absmax, plus
        // the double-quantized absmax's own (≤ half a step of the dynamic map near 1, 0.0035).
        assert!(weight_err < 0.15, "worst weight error {weight_err}");
        // NF4 of near-Gaussian weights: about 10% RMS error (QLoRA's ~20 dB).
        assert!(weight_rms > 0.02 && weight_rms < 0.15, "{weight_rms}");
        assert!(logits_rms > 0.0 && logits_rms < 1.0, "{logits_rms}");
    }
}
