//! The decoder's non-linear building blocks in two forms: composed of candle ops (the reference:
//! obviously right, differentiable through candle's autograd, slow) and the custom ops of
//! [`super::fused`] (candle's fused kernels forward, a hand-written backward). The decoder uses the
//! fused forms unless told otherwise ([`super::Decoder::set_fused`]); tests hold the two equal.
//!
//! Half-precision inputs are computed in f32 and cast back, as transformers does for RMSNorm and
//! softmax; f32 and f64 are computed in their own precision (f64 is what gradient checks use).

use candle_core::{D, DType, Result, Tensor};

use super::fused;

/// The dtype a reduction over `dtype` values is computed in.
pub fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// `x / sqrt(mean(x²) + eps) · weight` over the last dim (transformers' `Qwen3RMSNorm` /
/// `LlamaRMSNorm`).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, fused: bool) -> Result<Tensor> {
    if fused {
        fused::rms_norm(x, weight, eps)
    } else {
        rms_norm_composed(x, weight, eps)
    }
}

/// [`rms_norm`] from candle ops: normalized in f32, cast back, then scaled, as transformers does.
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let up = x.to_dtype(compute_dtype(dtype))?;
    let mean_sq = up.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = up.broadcast_div(&(mean_sq + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Softmax over the last dim of attention scores `[B, H, T, S]` times `scale`, where `mask`
/// `[B, 1, T, S]` (u8) allows.
pub fn masked_softmax(
    scores: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    fused: bool,
) -> Result<Tensor> {
    if fused {
        return fused::masked_softmax(scores, mask, scale);
    }
    let dtype = scores.dtype();
    let up = scores.affine(scale, 0.0)?.to_dtype(compute_dtype(dtype))?;
    let up = match mask {
        Some(mask) => apply_mask(&up, mask)?,
        None => up,
    };
    softmax_composed(&up)?.to_dtype(dtype)
}

/// Scores where `mask` (broadcast to them) is 0 set to the dtype's lowest finite value: set, not
/// added, so a row that sees nothing becomes uniform instead of NaN.
pub fn apply_mask(scores: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let lowest = lowest(scores.dtype(), scores.device())?.broadcast_as(scores.shape())?;
    mask.broadcast_as(scores.shape())?
        .where_cond(scores, &lowest)
}

/// The lowest finite value of a float dtype.
pub fn lowest(dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
    match dtype {
        DType::F64 => Tensor::new(f64::MIN, device),
        DType::F32 => Tensor::new(f32::MIN, device),
        DType::BF16 => Tensor::new(half::bf16::MIN, device),
        DType::F16 => Tensor::new(half::f16::MIN, device),
        other => candle_core::bail!("scores of dtype {other:?}"),
    }
}

/// Softmax over the last dim from candle ops, stabilized by the row maximum.
pub fn softmax_composed(x: &Tensor) -> Result<Tensor> {
    // The shift is a constant for the gradient: softmax does not depend on it.
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// SwiGLU's activation: `silu(gate) · up` (candle's `silu` has a backward).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// Per-row negative log-likelihood `-log softmax(logits)[target]`: logits `[N, V]`, targets `[N]`
/// (u32) → `[N]` (f32 for half-precision logits), by the fused op.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let x = logits.to_dtype(compute_dtype(logits.dtype()))?;
    fused::cross_entropy(&x, targets)
}

/// [`token_nll`] from candle ops.
pub fn token_nll_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let x = logits.to_dtype(compute_dtype(logits.dtype()))?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let lse = (x
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?;
    let picked = x.gather(&targets.unsqueeze(1)?.contiguous()?, 1)?;
    (lse - picked)?.squeeze(1)
}

/// The mean of [`token_nll`] over the rows, weighted by `weights` (`[N]`, e.g. a 0/1 loss mask).
pub fn masked_mean_nll(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let nll = token_nll(logits, targets)?;
    let w = weights.to_dtype(nll.dtype())?;
    (nll * &w)?.sum_all()?.broadcast_div(&w.sum_all()?)
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// Central finite differences of `f` at `coords` of `x` against the analytic gradient
    /// `analytic` (same shape as `x`), in f64; returns the worst relative error, with `floor`
    /// keeping near-zero derivatives from dividing by noise.
    pub fn check_grad(
        x: &Var,
        analytic: &Tensor,
        coords: &[usize],
        eps: f64,
        floor: f64,
        f: &dyn Fn() -> f64,
    ) -> f64 {
        let base = x
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let g = analytic.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let mut worst: f64 = 0.0;
        for &i in coords {
            let mut v = base.clone();
            v[i] = base[i] + eps;
            x.set(&Tensor::from_vec(v.clone(), x.shape(), x.device()).unwrap())
                .unwrap();
            let plus = f();
            v[i] = base[i] - eps;
            x.set(&Tensor::from_vec(v, x.shape(), x.device()).unwrap())
                .unwrap();
            let minus = f();
            let numeric = (plus - minus) / (2.0 * eps);
            let err = (numeric - g[i]).abs() / numeric.abs().max(g[i].abs()).max(floor);
            worst = worst.max(err);
        }
        x.set(&Tensor::from_vec(base, x.shape(), x.device()).unwrap())
            .unwrap();
        worst
    }

    /// The largest absolute difference of two same-shaped tensors, computed in f64.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    /// Values in [-1, 1), f64, from a seed.
    pub fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::data::synth::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn composed_rms_norm_and_softmax_gradients_match_finite_differences() {
        let x = Var::from_tensor(&randn(&[3, 6], 5)).unwrap();
        let w = Var::from_tensor(&randn(&[6], 6)).unwrap();
        let probe = randn(&[3, 6], 7);
        let loss = || {
            (rms_norm_composed(x.as_tensor(), w.as_tensor(), 1e-6).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss().backward().unwrap();
        let f = || loss().to_scalar::<f64>().unwrap();
        let all: Vec<usize> = (0..18).collect();
        let gx = grads.get(x.as_tensor()).unwrap();
        let gw = grads.get(w.as_tensor()).unwrap();
        assert!(check_grad(&x, gx, &all, 1e-5, 1e-4, &f) < 1e-6);
        assert!(check_grad(&w, gw, &all[..6], 1e-5, 1e-4, &f) < 1e-6);

        let loss = || {
            (softmax_composed(x.as_tensor()).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss().backward().unwrap();
        let f = || loss().to_scalar::<f64>().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap();
        assert!(check_grad(&x, gx, &all, 1e-5, 1e-4, &f) < 1e-6);
    }

    #[test]
    fn masked_rows_get_no_gradient_from_the_mean_nll() {
        let x = Var::from_tensor(&randn(&[4, 5], 8)).unwrap();
        let targets = Tensor::new(&[1u32, 4, 0, 2], &Device::Cpu).unwrap();
        let weights = Tensor::new(&[1f64, 0., 1., 1.], &Device::Cpu).unwrap();
        let nll = || masked_mean_nll(x.as_tensor(), &targets, &weights).unwrap();
        let grads = nll().backward().unwrap();
        let f = || nll().to_scalar::<f64>().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap();
        let all: Vec<usize> = (0..20).collect();
        assert!(check_grad(&x, gx, &all, 1e-5, 1e-4, &f) < 1e-6);
        let row1 = gx.get(1).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(row1.to_scalar::<f64>().unwrap(), 0.0);
    }

    #[test]
    fn nll_is_minus_log_softmax() {
        let logits = Tensor::new(&[[0f32, 0., 0., 0.], [10., 0., 0., 0.]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        let nll = token_nll(&logits, &targets)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!((nll[0] - 4f32.ln()).abs() < 1e-6);
        let expected = (1.0 + 3.0 * (-10f32).exp()).ln();
        assert!((nll[1] - expected).abs() < 1e-6);
    }
}
