//! A training benchmark on random tokens, shaped like `shared/bench/torch_qlora_baseline.py` so that
//! forge and PyTorch + PEFT (+ bitsandbytes) can be timed side by side on one GPU (DESIGN.md's
//! performance anchors): one row of `seq` random ids per step, the loss on its second half, LoRA
//! on every projection, AdamW at a constant rate, no clipping, no token rows.
//!
//! It runs the sft stage's own [`Trainer`], so what it times is what `sft` does per step: the
//! forward and backward (with or without checkpointing, on a dense or NF4 base), the optimizer, and
//! the one loss read-back that ends every step.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;
use serde::Serialize;

use super::batch::MicroBatch;
use super::memory::MemoryProbe;
use super::optim::AdamWConfig;
use super::trainer::{Quant, TrainConfig, Trainer};
use crate::data::synth::rng::Rng;
use crate::model::decoder::Decoder;
use crate::model::init::{Shape, random_decoder};
use crate::model::linear::Proj;
use crate::model::lora::LoraConfig;
use crate::model::{Arch, ModelError, candle_device};

/// The model a benchmark trains.
#[derive(Debug, Clone)]
pub enum BenchModel {
    /// A Hugging Face model directory.
    Dir(PathBuf),
    /// A random-initialized Qwen3 of this preset or config.json, built in memory (speed and memory
    /// do not depend on the weights; nothing to write or carry to the GPU machine).
    Random(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub model: BenchModel,
    /// Tokens per step (one row).
    pub seq: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps before them.
    pub warmup: usize,
    pub quant: Quant,
    pub grad_checkpointing: bool,
    pub device: crate::Device,
    pub dtype: DType,
    pub lora_r: usize,
    pub lora_alpha: f64,
}

/// What it measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Tokens per second over the timed steps (`steps · seq / seconds`).
    pub tok_s: f64,
    /// Peak memory in GiB, as [`MemoryProbe`] measures it on the device (`None`: unmeasurable).
    pub peak_gib: Option<f64>,
    pub peak_measures: &'static str,
    pub step_s: f64,
    pub seq: usize,
    pub steps: usize,
    pub last_loss: f32,
    pub trainable_params: usize,
}

/// Loads the model, trains `warmup + steps` steps on one random row and times the last `steps`.
pub fn bench_sft(options: &BenchOptions) -> Result<BenchResult, ModelError> {
    if options.seq < 2 || options.steps == 0 {
        return Err(ModelError::Invalid(
            "the benchmark needs seq >= 2 and at least one timed step".into(),
        ));
    }
    let device = candle_device(options.device)?;
    let mut memory = MemoryProbe::new(&device);
    let decoder = match &options.model {
        BenchModel::Dir(dir) => Decoder::load(dir, options.dtype, &device)?,
        BenchModel::Random(preset) => {
            let config = Shape::parse(preset)?.config(Arch::Qwen3)?;
            random_decoder(&config, 0, options.dtype, &device)?
        }
    };
    let vocab = decoder.config().vocab_size.min(151_000) as u64;
    let config = TrainConfig {
        quant: options.quant,
        lora: LoraConfig {
            r: options.lora_r,
            alpha: options.lora_alpha,
            dropout: 0.0,
            targets: Proj::ALL.to_vec(),
        },
        token_rows: Vec::new(),
        adamw: AdamWConfig::default(),
        embedding_lr_scale: 1.0,
        max_grad_norm: 0.0,
        grad_checkpointing: options.grad_checkpointing,
        seed: 0,
    };
    let mut trainer = Trainer::new(decoder, &config)?;
    // The pool gives the dense weights that quantization replaced back at a synchronization only:
    // without one they would count as the first step's memory.
    device.synchronize()?;
    // One row of seq + 1 ids feeds `seq` tokens; the second half's next tokens are learned.
    let mut rng = Rng::new(0);
    let ids: Vec<u32> = (0..=options.seq)
        .map(|_| rng.below(vocab as usize) as u32)
        .collect();
    let mask: Vec<bool> = (0..=options.seq).map(|t| t > options.seq / 2).collect();
    let batch = [MicroBatch::new(&[(&ids, &mask)], 0, &device)?];
    let mut started = Instant::now();
    let mut last_loss = f32::NAN;
    for step in 0..options.warmup + options.steps {
        if step == options.warmup {
            started = Instant::now();
        }
        let out = trainer.step(&batch, 1e-4, step as u64)?;
        memory.sample();
        last_loss = out.loss.to_scalar::<f32>()?;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(BenchResult {
        tok_s: (options.steps * options.seq) as f64 / secs,
        peak_gib: memory.peak_bytes().map(|b| b as f64 / (1u64 << 30) as f64),
        peak_measures: memory.measures(),
        step_s: secs / options.steps as f64,
        seq: options.seq,
        steps: options.steps,
        last_loss,
        trainable_params: trainer.parameter_count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::decoder::tests::fixture;

    #[test]
    fn the_benchmark_trains_and_reports_throughput() {
        let options = BenchOptions {
            model: BenchModel::Dir(fixture("qwen3")),
            seq: 24,
            steps: 3,
            warmup: 1,
            quant: Quant::Nf4,
            grad_checkpointing: true,
            device: crate::Device::Cpu,
            dtype: DType::F32,
            lora_r: 4,
            lora_alpha: 8.0,
        };
        let r = bench_sft(&options).unwrap();
        assert!(r.tok_s > 0.0 && r.last_loss.is_finite(), "{r:?}");
        // r 4 on 7 projections of 2 layers: (in + out) · 4 per pair.
        let per_layer: usize = [
            (32, 64),
            (32, 32),
            (32, 32),
            (64, 32),
            (32, 64),
            (32, 64),
            (64, 32),
        ]
        .iter()
        .map(|(i, o)| (i + o) * 4)
        .sum();
        assert_eq!(r.trainable_params, 2 * per_layer);
        assert_eq!((r.seq, r.steps), (24, 3));
        assert!(r.peak_gib.is_some_and(|g| g > 0.0));
    }
}
