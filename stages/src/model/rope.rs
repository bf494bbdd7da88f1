//! Rotary position embeddings as transformers computes them (`rope_type: default`, the
//! half-split "rotate_half" layout, not interleaved pairs).
//!
//! The cos/sin tables are made per forward from explicit position ids `[B, T]`: with left-padded
//! batches every row has its own positions, and the KV cache continues each row where it stopped.
//! Frequencies are computed in f32 like transformers' (`1 / theta^(2i/d)`), in f64 for f64 models.

use candle_core::{D, DType, Device, Result, Tensor};

use super::ops::compute_dtype;

/// The inverse frequencies of one head size and base.
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    theta: f64,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f64) -> Rope {
        Rope { head_dim, theta }
    }

    fn inv_freq(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        let half = self.head_dim / 2;
        if dtype == DType::F64 {
            let v: Vec<f64> = (0..half)
                .map(|i| 1.0 / self.theta.powf((2 * i) as f64 / self.head_dim as f64))
                .collect();
            Tensor::from_vec(v, half, device)
        } else {
            let theta = self.theta as f32;
            let v: Vec<f32> = (0..half)
                .map(|i| 1.0 / theta.powf((2 * i) as f32 / self.head_dim as f32))
                .collect();
            Tensor::from_vec(v, half, device)
        }
    }

    /// `(cos, sin)`, each `[B, T, head_dim / 2]` in `dtype`, for position ids `[B, T]` (u32).
    pub fn tables(&self, positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let up = compute_dtype(dtype);
        let inv = self.inv_freq(up, positions.device())?;
        let freqs = positions
            .to_dtype(up)?
            .unsqueeze(D::Minus1)?
            .broadcast_mul(&inv.reshape((1, 1, ()))?)?;
        Ok((
            freqs.cos()?.to_dtype(dtype)?.contiguous()?,
            freqs.sin()?.to_dtype(dtype)?.contiguous()?,
        ))
    }
}

/// Rotates `x` `[B, H, T, D]` by the tables of [`Rope::tables`] (the fused op, or the composed
/// reference).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, fused: bool) -> Result<Tensor> {
    if fused {
        super::fused::rope(x, cos, sin)
    } else {
        apply_composed(x, cos, sin)
    }
}

/// [`apply`] from candle ops: `x·cos + rotate_half(x)·sin`, as transformers writes it.
pub fn apply_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?.unsqueeze(1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?.unsqueeze(1)?;
    x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?
}

/// `[x1, x2] → [-x2, x1]` over the last dim.
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(shape: &[usize], dtype: DType) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| ((i * 37 % 17) as f64 - 8.0) / 8.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn rotation_matches_the_closed_form_and_the_fused_kernel() {
        let rope = Rope::new(4, 10_000.0);
        let positions = Tensor::new(&[[0u32, 1, 5], [7, 0, 2]], &Device::Cpu).unwrap();
        let (cos, sin) = rope.tables(&positions, DType::F32).unwrap();
        let x = input(&[2, 3, 3, 4], DType::F32);
        let composed = apply(&x, &cos, &sin, false).unwrap();
        let fused = apply(&x, &cos, &sin, true).unwrap();
        let diff = (&composed - &fused)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        // Pair (x[i], x[i + d/2]) turns by angle pos / theta^(2i/d).
        let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let out = composed.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (b, h, t) = (1, 2, 0); // row 1, head 2, token 0: position 7
        let base = ((b * 3 + h) * 3 + t) * 4;
        for i in 0..2 {
            let angle = 7.0 / 10_000f64.powf(2.0 * i as f64 / 4.0);
            let (x1, x2) = (flat[base + i] as f64, flat[base + i + 2] as f64);
            let want1 = x1 * angle.cos() - x2 * angle.sin();
            let want2 = x2 * angle.cos() + x1 * angle.sin();
            assert!((out[base + i] as f64 - want1).abs() < 1e-5);
            assert!((out[base + i + 2] as f64 - want2).abs() < 1e-5);
        }
    }
}
