//! LoRA: a trainable low-rank update `ΔW = (alpha / r) · B·A` beside a frozen projection.
//!
//! A [`Lora`] is a [`LinearAdapter`]: it computes `scale · B·(A·dropout(x))` from the layer's
//! input and the [`super::Linear`] adds it to the frozen output, so the base weight (dense or NF4)
//! never changes. `A [r, in]` starts as PEFT's default (Kaiming-uniform with `a = √5`, i.e.
//! uniform in ±1/√in) and `B [out, r]` at zero, so a fresh adapter leaves the model's output exactly
//! as it was. `A` and `B` are `Var`s kept in f32 (small updates survive that bf16 would round
//! away); they are cast to the activations' dtype inside the forward, where the cast is
//! differentiable.
//!
//! Dropout must draw the same mask when activation checkpointing replays a layer's forward, so
//! the mask is a function of (adapter seed, step), the step set by the trainer with
//! [`dropout_step`], never of a global RNG's position.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var};

use super::Decoder;
use super::linear::{LinearAdapter, LinearId, Proj, matmul_t};

/// What to adapt and how: the `lora_*` params of the sft stage.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Proj>,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

/// One LoRA pair on one projection.
#[derive(Debug)]
pub struct Lora {
    a: Var,
    b: Var,
    scale: f64,
    dropout: f64,
    /// Seed of this adapter's dropout masks; mixed with the step.
    seed: u64,
}

thread_local! {
    /// The training step whose dropout masks this thread draws; `None`: not training.
    static DROPOUT_STEP: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Until the guard drops, LoRA dropout in this thread draws the masks of training step `step`
/// (outside any guard there is no dropout: inference). Per thread, so that micro-batches trained
/// in parallel draw their own masks; the guard restores the step it replaced, so a micro-batch
/// that rayon runs inside another's wait leaves the outer one's step as it found it.
pub fn dropout_step(step: u64) -> DropoutStep {
    DropoutStep(DROPOUT_STEP.replace(Some(step)))
}

/// See [`dropout_step`].
#[must_use = "dropout uses the step only while the guard lives"]
pub struct DropoutStep(Option<u64>);

impl Drop for DropoutStep {
    fn drop(&mut self) {
        DROPOUT_STEP.set(self.0);
    }
}

impl Lora {
    /// A fresh pair for a `[out, in]` projection: `A` seeded from `seed`, `B = 0`.
    pub fn new(
        out_dim: usize,
        in_dim: usize,
        config: &LoraConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Lora> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let mut rng = SplitMix(seed);
        let a: Vec<f32> = (0..config.r * in_dim)
            .map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32)
            .collect();
        let a = Tensor::from_vec(a, (config.r, in_dim), device)?;
        let b = Tensor::zeros((out_dim, config.r), DType::F32, device)?;
        Lora::from_tensors(a, b, config.scale(), config.dropout, seed)
    }

    /// A pair with given `A [r, in]` and `B [out, r]` (loading a saved adapter).
    pub fn from_tensors(a: Tensor, b: Tensor, scale: f64, dropout: f64, seed: u64) -> Result<Lora> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r != rb {
            candle_core::bail!("LoRA A has rank {r} but B has rank {rb}");
        }
        Ok(Lora {
            a: Var::from_tensor(&a.to_dtype(DType::F32)?)?,
            b: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            scale,
            dropout,
            seed,
        })
    }

    pub fn a(&self) -> &Var {
        &self.a
    }

    pub fn b(&self) -> &Var {
        &self.b
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    fn dropout(&self, x: &Tensor) -> Result<Tensor> {
        let Some(step) = DROPOUT_STEP.get().filter(|_| self.dropout > 0.0) else {
            return Ok(x.clone());
        };
        let keep = 1.0 - self.dropout;
        let seed = SplitMix(self.seed ^ step.wrapping_mul(0x9e37_79b9_7f4a_7c15)).next();
        let uniform = match x.device() {
            Device::Cpu => {
                let mut rng = SplitMix(seed);
                let n = x.elem_count();
                let u: Vec<f32> = (0..n).map(|_| rng.unit() as f32).collect();
                Tensor::from_vec(u, x.shape(), x.device())?
            }
            device => {
                device.set_seed(seed)?;
                Tensor::rand(0f32, 1f32, x.shape(), device)?
            }
        };
        let mask = (uniform.lt(keep)?.to_dtype(x.dtype())? / keep)?;
        x * mask
    }
}

impl LinearAdapter for Lora {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let h = matmul_t(&self.dropout(x)?, &self.a.as_tensor().to_dtype(dtype)?)?;
        matmul_t(&h, &self.b.as_tensor().to_dtype(dtype)?)? * self.scale
    }
}

/// The LoRA pairs installed in a decoder, by projection.
#[derive(Debug, Clone)]
pub struct LoraSet {
    pub config: LoraConfig,
    pub layers: BTreeMap<LinearId, Arc<Lora>>,
}

impl LoraSet {
    /// Installs fresh pairs on every targeted projection of `decoder` (replacing any adapter
    /// there). Each pair's `A` is seeded from `seed` and its place, so the same seed gives the
    /// same adapter whatever the order of construction.
    pub fn install(decoder: &mut Decoder, config: &LoraConfig, seed: u64) -> Result<LoraSet> {
        let device = decoder.device().clone();
        let mut layers = BTreeMap::new();
        for (id, linear) in decoder.linears_mut() {
            if !config.targets.contains(&id.proj) {
                continue;
            }
            let (out_dim, in_dim) = linear.weight().dims();
            let place = (id.layer as u64) << 8 | id.proj as u64;
            let pair_seed = SplitMix(seed ^ place.wrapping_mul(0xbf58_476d_1ce4_e5b9)).next();
            let lora = Arc::new(Lora::new(out_dim, in_dim, config, pair_seed, &device)?);
            linear.set_adapter(Some(lora.clone()));
            layers.insert(id, lora);
        }
        Ok(LoraSet {
            config: config.clone(),
            layers,
        })
    }

    /// Installs given pairs (a loaded adapter) into `decoder`.
    pub fn attach(&self, decoder: &mut Decoder) {
        for (id, linear) in decoder.linears_mut() {
            if let Some(lora) = self.layers.get(&id) {
                linear.set_adapter(Some(lora.clone()));
            }
        }
    }

    /// Every trainable tensor: `A` then `B` of each pair, in projection order.
    pub fn vars(&self) -> Vec<&Var> {
        self.layers.values().flat_map(|l| [l.a(), l.b()]).collect()
    }
}

/// SplitMix64: a tiny seeded generator whose stream is the same on every machine.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Batch;

    fn tiny() -> Decoder {
        Decoder::load(
            &crate::model::decoder::tests::fixture("qwen3"),
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    }

    fn config() -> LoraConfig {
        LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: Proj::ALL.to_vec(),
        }
    }

    #[test]
    fn a_fresh_adapter_leaves_the_logits_unchanged_and_is_seeded() {
        let base = tiny();
        let batch = Batch::dense(&[vec![1, 5, 9, 13, 2]], 0, &Device::Cpu).unwrap();
        let want = base.forward(&batch, None).unwrap();
        let mut adapted = base.clone();
        let set = LoraSet::install(&mut adapted, &config(), 7).unwrap();
        assert_eq!(set.layers.len(), base.layers().len() * 7);
        let got = adapted.forward(&batch, None).unwrap();
        let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);

        let again = LoraSet::install(&mut base.clone(), &config(), 7).unwrap();
        let other = LoraSet::install(&mut base.clone(), &config(), 8).unwrap();
        let first_a = |s: &LoraSet| {
            s.vars()[0]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(first_a(&set), first_a(&again));
        assert_ne!(first_a(&set), first_a(&other));
        let bound = 1.0 / (base.config().hidden_size as f32).sqrt();
        assert!(first_a(&set).iter().all(|v| v.abs() <= bound));
    }

    #[test]
    fn the_update_equals_a_dense_weight_change_and_gets_gradients() {
        let dev = Device::Cpu;
        let cfg = LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            targets: vec![Proj::Q],
        };
        let lora = Lora::new(3, 5, &cfg, 1, &dev).unwrap();
        lora.b()
            .set(
                &Tensor::arange(0f32, 6., &dev)
                    .unwrap()
                    .reshape((3, 2))
                    .unwrap(),
            )
            .unwrap();
        let x = Tensor::arange(0f32, 10., &dev)
            .unwrap()
            .reshape((2, 5))
            .unwrap();
        let y = lora.forward(&x).unwrap();
        let delta = (lora.b().matmul(lora.a()).unwrap() * lora.scale()).unwrap();
        let dense = matmul_t(&x, &delta).unwrap();
        let diff = (&y - dense).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(lora.a().as_tensor()).is_some());
        assert!(grads.get(lora.b().as_tensor()).is_some());
    }

    #[test]
    fn dropout_is_a_function_of_the_step_and_off_outside_training() {
        let dev = Device::Cpu;
        let cfg = LoraConfig {
            r: 2,
            alpha: 2.0,
            dropout: 0.5,
            targets: vec![Proj::Q],
        };
        let lora = Lora::new(3, 64, &cfg, 1, &dev).unwrap();
        lora.b()
            .set(&Tensor::ones((3, 2), DType::F32, &dev).unwrap())
            .unwrap();
        let x = Tensor::ones((4, 64), DType::F32, &dev).unwrap();
        let out = || {
            lora.forward(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let at = |step| {
            let _step = dropout_step(step);
            out()
        };
        let off = out();
        assert_eq!(at(3), at(3));
        assert_ne!(at(3), at(4));
        assert_ne!(at(3), off);
        assert_eq!(out(), off);
        // A guard inside another restores the outer step when it drops; other threads see none.
        let outer = dropout_step(3);
        assert_eq!(at(4), at(4));
        assert_eq!(out(), at(3));
        assert_eq!(std::thread::scope(|s| s.spawn(out).join().unwrap()), off);
        drop(outer);
        assert_eq!(out(), off);
    }
}
