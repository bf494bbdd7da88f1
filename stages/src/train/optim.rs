//! AdamW and gradient clipping as tensor ops on the parameters' device.
//!
//! Everything stays where the parameters are: moments, clipping factor and update are computed by
//! candle ops without a host round trip, so a CUDA step costs kernel launches, never a copy of
//! the parameters or a synchronization (the trainer reads back one scalar per step). Moments are
//! f32 whatever the activations' dtype, and the update is PyTorch's `AdamW`: decoupled weight
//! decay `p ← p·(1 − lr·wd)`, then `p ← p − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`.

use candle_core::{DType, Result, Tensor, Var};

/// AdamW's hyper-parameters other than the learning rate (which the schedule gives per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults, without weight decay.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One trained tensor with its moments.
#[derive(Debug)]
pub struct Slot {
    pub var: Var,
    /// Whether weight decay applies to it.
    pub decay: bool,
    /// Its learning rate as a multiple of the step's.
    pub lr_scale: f64,
    pub m: Tensor,
    pub v: Tensor,
}

/// AdamW over a fixed list of `Var`s (f32).
#[derive(Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub slots: Vec<Slot>,
    /// Updates done so far (the `t` of the bias corrections).
    pub steps: u64,
}

impl AdamW {
    /// Zero moments for `params` (`(var, decay, lr_scale)`).
    pub fn new(params: Vec<(Var, bool, f64)>, config: AdamWConfig) -> Result<AdamW> {
        let slots = params
            .into_iter()
            .map(|(var, decay, lr_scale)| {
                if var.dtype() != DType::F32 {
                    candle_core::bail!("AdamW trains f32 tensors, got {:?}", var.dtype());
                }
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                Ok(Slot {
                    var,
                    decay,
                    lr_scale,
                    m,
                    v,
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            config,
            slots,
            steps: 0,
        })
    }

    /// One update with `grads` (one per slot, in order) at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            candle_core::bail!(
                "{} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            );
        }
        self.steps += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.config;
        let t = self.steps as i32;
        let bc1 = 1.0 - beta1.powi(t);
        let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let lr = lr * slot.lr_scale;
            let g = g.to_dtype(DType::F32)?;
            slot.m = ((&slot.m * beta1)? + (&g * (1.0 - beta1))?)?;
            slot.v = ((&slot.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((slot.v.sqrt()? / bc2_sqrt)? + eps)?;
            let mut p = slot.var.as_tensor().detach();
            if slot.decay && weight_decay != 0.0 {
                p = (p * (1.0 - lr * weight_decay))?;
            }
            let update = ((&slot.m / denom)? * (lr / bc1))?;
            slot.var.set(&(p - update)?)?;
        }
        Ok(())
    }
}

/// The global L2 norm of `grads` (a scalar f32 tensor) and, when `max_norm > 0`, `grads` scaled
/// by `min(1, max_norm / (norm + 1e-6))` — PyTorch's `clip_grad_norm_`, without reading the norm
/// back to the host.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<(Tensor, Vec<Tensor>)> {
    let mut squares = Vec::with_capacity(grads.len());
    for g in grads {
        squares.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
    }
    let norm = Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?;
    if max_norm <= 0.0 {
        return Ok((norm, grads.to_vec()));
    }
    let coef = ((&norm + 1e-6)?.recip()? * max_norm)?.minimum(1.0)?;
    let clipped = grads
        .iter()
        .map(|g| g.broadcast_mul(&coef.to_dtype(g.dtype())?))
        .collect::<Result<_>>()?;
    Ok((norm, clipped))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn v(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// PyTorch's AdamW on one scalar, in f64: the reference the tensor version must match.
    fn reference(p0: f64, grads: &[f64], lr: f64, c: AdamWConfig, decay: bool) -> f64 {
        let (mut p, mut m, mut s) = (p0, 0.0, 0.0);
        for (i, g) in grads.iter().enumerate() {
            let t = (i + 1) as i32;
            if decay {
                p *= 1.0 - lr * c.weight_decay;
            }
            m = c.beta1 * m + (1.0 - c.beta1) * g;
            s = c.beta2 * s + (1.0 - c.beta2) * g * g;
            let denom = s.sqrt() / (1.0 - c.beta2.powi(t)).sqrt() + c.eps;
            p -= lr / (1.0 - c.beta1.powi(t)) * m / denom;
        }
        p
    }

    #[test]
    fn adamw_matches_the_pytorch_update() {
        let dev = Device::Cpu;
        let config = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let a = Var::new(&[1.0f32, -2.0], &dev).unwrap();
        let b = Var::new(&[0.5f32], &dev).unwrap();
        let mut opt = AdamW::new(
            vec![(a.clone(), true, 1.0), (b.clone(), false, 0.5)],
            config,
        )
        .unwrap();
        let ga = [[0.3f32, -0.1], [0.2, 0.4], [-0.5, 0.05]];
        let gb = [[1.0f32], [-1.0], [0.25]];
        for (x, y) in ga.iter().zip(&gb) {
            let grads = [Tensor::new(x, &dev).unwrap(), Tensor::new(y, &dev).unwrap()];
            opt.step(&grads, 1e-2).unwrap();
        }
        assert_eq!(opt.steps, 3);
        let col = |k: usize| ga.iter().map(|g| f64::from(g[k])).collect::<Vec<_>>();
        let want_a = [
            reference(1.0, &col(0), 1e-2, config, true),
            reference(-2.0, &col(1), 1e-2, config, true),
        ];
        // b trains at half the rate (its lr_scale).
        let want_b = reference(0.5, &[1.0, -1.0, 0.25], 0.5e-2, config, false);
        let got_a = v(a.as_tensor());
        for (g, w) in got_a.iter().zip(want_a) {
            assert!((f64::from(*g) - w).abs() < 1e-6, "{g} vs {w}");
        }
        assert!((f64::from(v(b.as_tensor())[0]) - want_b).abs() < 1e-6);
        // Decay moved the decayed parameter beyond what Adam alone would have.
        let no_decay = reference(1.0, &col(0), 1e-2, AdamWConfig::default(), true);
        assert!((want_a[0] - no_decay).abs() > 1e-5);
    }

    #[test]
    fn clipping_scales_to_the_max_norm_only_when_above_it() {
        let dev = Device::Cpu;
        let grads = [
            Tensor::new(&[3.0f32, 0.0], &dev).unwrap(),
            Tensor::new(&[[4.0f32]], &dev).unwrap(),
        ];
        let (norm, clipped) = clip_grad_norm(&grads, 1.0).unwrap();
        assert!((norm.to_scalar::<f32>().unwrap() - 5.0).abs() < 1e-6);
        let (n2, _) = clip_grad_norm(&clipped, 0.0).unwrap();
        assert!((n2.to_scalar::<f32>().unwrap() - 1.0).abs() < 1e-5);
        assert!((v(&clipped[0])[0] - 0.6).abs() < 1e-6);
        let (_, same) = clip_grad_norm(&grads, 10.0).unwrap();
        assert_eq!(v(&same[0]), v(&grads[0]));
        assert_eq!(v(&same[1]), v(&grads[1]));
    }
}
