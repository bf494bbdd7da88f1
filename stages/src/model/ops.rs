//! The decoder's non-linear building blocks, each in two forms: composed of candle ops that have a
//! backward pass, and candle's fused kernel, which is faster but has none (candle 0.11's
//! `softmax_last_dim`, `rms_norm` and `rope` record no gradient: a loss behind them trains
//! nothing upstream, silently). The fused form is taken only when it is allowed and no input
//! carries a gradient (`Tensor::track_op`): inference gets the speed, training the correctness,
//! and nobody has to remember which is which.
//!
//! Half-precision inputs are computed in f32 and cast back, as transformers does for RMSNorm and
//! softmax; f32 and f64 are computed in their own precision (f64 is what gradient checks use).

use candle_core::{D, DType, Result, Tensor};

/// Whether candle's fused kernels may run: allowed, and no input needs a gradient.
pub fn can_fuse(allow_fused: bool, inputs: &[&Tensor]) -> bool {
    allow_fused && !inputs.iter().any(|t| t.track_op())
}

/// The dtype a reduction over `dtype` values is computed in.
pub fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// `x / sqrt(mean(x²) + eps) · weight` over the last dim (transformers' `Qwen3RMSNorm` /
/// `LlamaRMSNorm`: normalized in f32, cast back, then scaled).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, allow_fused: bool) -> Result<Tensor> {
    if can_fuse(allow_fused, &[x, weight]) {
        return candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32);
    }
    let dtype = x.dtype();
    let up = x.to_dtype(compute_dtype(dtype))?;
    let mean_sq = up.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = up.broadcast_div(&(mean_sq + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Softmax over the last dim, stabilized by the row maximum.
pub fn softmax_last_dim(x: &Tensor, allow_fused: bool) -> Result<Tensor> {
    let dtype = x.dtype();
    if can_fuse(allow_fused, &[x]) {
        let up = x.to_dtype(compute_dtype(dtype))?.contiguous()?;
        return candle_nn::ops::softmax_last_dim(&up)?.to_dtype(dtype);
    }
    let up = x.to_dtype(compute_dtype(dtype))?;
    // The shift is a constant for the gradient: softmax does not depend on it.
    let max = up.max_keepdim(D::Minus1)?.detach();
    let e = up.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)?.to_dtype(dtype)
}

/// SwiGLU's activation: `silu(gate) · up` (candle's `silu` has a backward).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// Per-row negative log-likelihood `-log softmax(logits)[target]`: logits `[N, V]`, targets `[N]`
/// (u32) → `[N]`, computed in f32 (f64 stays f64).
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
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

/// The mean of [`token_nll`] over the rows whose `weights` (`[N]`, 0 or 1 for a loss mask) are
/// non-zero, weighted.
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

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::data::synth::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n)
            .map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn all(shape: &[usize]) -> Vec<usize> {
        (0..shape.iter().product()).collect()
    }

    #[test]
    fn fused_and_composed_forms_agree() {
        let x = randn(&[2, 3, 8], 1).to_dtype(DType::F32).unwrap();
        let w = randn(&[8], 2).to_dtype(DType::F32).unwrap();
        let a = rms_norm(&x, &w, 1e-6, true).unwrap();
        let b = rms_norm(&x, &w, 1e-6, false).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        let a = softmax_last_dim(&x, true).unwrap();
        let b = softmax_last_dim(&x, false).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
    }

    #[test]
    fn a_tracked_input_never_takes_the_fused_kernel() {
        let x = Var::from_tensor(&randn(&[2, 4], 3)).unwrap();
        let w = randn(&[4], 4);
        assert!(!can_fuse(true, &[x.as_tensor(), &w]));
        assert!(can_fuse(true, &[&w]));
        // Fused would leave x without a gradient; the composed form reaches it.
        let y = rms_norm(x.as_tensor(), &w, 1e-6, true).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_some());
    }

    #[test]
    fn rms_norm_gradients_match_finite_differences() {
        let x = Var::from_tensor(&randn(&[3, 6], 5)).unwrap();
        let w = Var::from_tensor(&randn(&[6], 6)).unwrap();
        let probe = randn(&[3, 6], 7);
        let loss = || {
            (rms_norm(x.as_tensor(), w.as_tensor(), 1e-6, true).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss().backward().unwrap();
        let f = || loss().to_scalar::<f64>().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap();
        let gw = grads.get(w.as_tensor()).unwrap();
        assert!(check_grad(&x, gx, &all(&[3, 6]), 1e-6, 1e-6, &f) < 1e-6);
        assert!(check_grad(&w, gw, &all(&[6]), 1e-6, 1e-6, &f) < 1e-6);
    }

    #[test]
    fn softmax_and_nll_gradients_match_finite_differences() {
        let x = Var::from_tensor(&randn(&[4, 5], 8)).unwrap();
        let probe = randn(&[4, 5], 9);
        let loss = || {
            (softmax_last_dim(x.as_tensor(), true).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss().backward().unwrap();
        let f = || loss().to_scalar::<f64>().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap();
        assert!(check_grad(&x, gx, &all(&[4, 5]), 1e-6, 1e-6, &f) < 1e-6);

        let targets = Tensor::new(&[1u32, 4, 0, 2], &Device::Cpu).unwrap();
        let weights = Tensor::new(&[1f64, 0., 1., 1.], &Device::Cpu).unwrap();
        let nll = || masked_mean_nll(x.as_tensor(), &targets, &weights).unwrap();
        let grads = nll().backward().unwrap();
        let f = || nll().to_scalar::<f64>().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap();
        assert!(check_grad(&x, gx, &all(&[4, 5]), 1e-6, 1e-6, &f) < 1e-6);
        // The masked row gets no gradient at all.
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
