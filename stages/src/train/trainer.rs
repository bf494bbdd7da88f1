//! One fine-tuning setup shared by the sft stage and the benchmark: a decoder with LoRA pairs on
//! the chosen projections and trainable token rows, AdamW over exactly those tensors, and the
//! optimizer step with gradient accumulation and clipping.
//!
//! The loss of a step is the mean next-token NLL over every learned token of all its
//! micro-batches: each micro-batch contributes its summed NLL divided by the step's total count
//! of learned tokens (known from the masks before any forward), so the accumulated gradient is the
//! gradient of that mean — `k` micro-batches of one row give the update of one batch of `k` rows,
//! whatever their lengths.

use candle_core::{DType, Result, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::adapter::Adapter;
use super::batch::{MicroBatch, Rows};
use super::optim::{AdamW, AdamWConfig, clip_grad_norm};
use crate::model::decoder::Decoder;
use crate::model::linear::Proj;
use crate::model::lora::{LoraConfig, LoraSet, dropout_step};
use crate::model::nf4::quantize_decoder;

/// How the frozen projections are stored while training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    /// As loaded (f32 or bf16).
    #[default]
    None,
    /// QLoRA: every projection in 4-bit NF4, dequantized on the fly; embedding, head and norms
    /// stay dense.
    Nf4,
}

/// What is trained and how.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub quant: Quant,
    pub lora: LoraConfig,
    /// Token ids whose embedding (and head) rows are trained.
    pub token_rows: Vec<u32>,
    pub adamw: AdamWConfig,
    /// The token rows' learning rate as a multiple of the LoRA matrices'.
    pub embedding_lr_scale: f64,
    /// `0` turns clipping off.
    pub max_grad_norm: f64,
    pub grad_checkpointing: bool,
    /// Seeds LoRA's `A` init and dropout masks.
    pub seed: u64,
}

/// The outcome of one optimizer step, still on the device.
#[derive(Debug)]
pub struct StepOutput {
    /// The step's loss (mean NLL over its learned tokens), f32 scalar.
    pub loss: Tensor,
    /// The global gradient norm before clipping, f32 scalar.
    pub grad_norm: Tensor,
}

/// A decoder being fine-tuned.
#[derive(Debug)]
pub struct Trainer {
    pub decoder: Decoder,
    /// What is trained, installed in `decoder`.
    pub adapter: Adapter,
    /// The trained tensors' names, in the optimizer's order (`….lora_A`, `….lora_B`,
    /// `model.embed_tokens.delta`, `lm_head.delta`).
    pub names: Vec<String>,
    pub optimizer: AdamW,
    grad_checkpointing: bool,
    max_grad_norm: f64,
}

impl Trainer {
    /// Quantizes `decoder`'s projections if asked, installs fresh adapters into it (its base
    /// weights stay frozen) and an optimizer over them. Weight decay applies to the LoRA matrices only: a
    /// token row's delta decayed would pull the row back to its untrained value, which is what
    /// training the row is meant to leave.
    pub fn new(mut decoder: Decoder, config: &TrainConfig) -> Result<Trainer> {
        if config.quant == Quant::Nf4 {
            quantize_decoder(&mut decoder, &Proj::ALL)?;
        }
        let lora = LoraSet::install(&mut decoder, &config.lora, config.seed)?;
        let mut names = Vec::new();
        let mut params = Vec::new();
        for (id, pair) in &lora.layers {
            let name = id.hf_name();
            names.push(format!("{name}.lora_A"));
            params.push((pair.a().clone(), true, 1.0));
            names.push(format!("{name}.lora_B"));
            params.push((pair.b().clone(), true, 1.0));
        }
        let rows = if config.token_rows.is_empty() {
            None
        } else {
            let rows = decoder.train_token_rows(&config.token_rows, DType::F32)?;
            names.push("model.embed_tokens.delta".into());
            params.push((
                rows.embedding.delta().clone(),
                false,
                config.embedding_lr_scale,
            ));
            if let Some(head) = &rows.lm_head {
                names.push("lm_head.delta".into());
                params.push((head.delta().clone(), false, config.embedding_lr_scale));
            }
            Some(rows)
        };
        if params.is_empty() {
            candle_core::bail!("nothing to train: no LoRA targets and no token rows");
        }
        Ok(Trainer {
            decoder,
            adapter: Adapter { lora, rows },
            names,
            optimizer: AdamW::new(params, config.adamw)?,
            grad_checkpointing: config.grad_checkpointing,
            max_grad_norm: config.max_grad_norm,
        })
    }

    /// The trained tensors' current values (detached copies), in [`Trainer::names`] order.
    pub fn values(&self) -> Result<Vec<Tensor>> {
        self.optimizer
            .slots
            .iter()
            .map(|s| s.var.as_tensor().copy())
            .collect()
    }

    /// Sets the trained tensors to `values` (in [`Trainer::names`] order).
    pub fn set_values(&self, values: &[Tensor]) -> Result<()> {
        for (slot, v) in self.optimizer.slots.iter().zip(values) {
            slot.var.set(v)?;
        }
        Ok(())
    }

    /// Trained parameters, in elements.
    pub fn parameter_count(&self) -> usize {
        self.optimizer
            .slots
            .iter()
            .map(|s| s.var.elem_count())
            .sum()
    }

    /// One optimizer step over `micro` (the step's micro-batches) at learning rate `lr`.
    /// `step` seeds LoRA dropout: micro-batch `j` of it draws masks for `step · len + j`.
    pub fn step(&mut self, micro: &[MicroBatch], lr: f64, step: u64) -> Result<StepOutput> {
        let (loss, grads) = self.gradients(micro, step)?;
        let (grad_norm, grads) = clip_grad_norm(&grads, self.max_grad_norm)?;
        self.optimizer.step(&grads, lr)?;
        Ok(StepOutput { loss, grad_norm })
    }

    /// The loss of a step over `micro` (f32 scalar) and its gradient for each trained tensor,
    /// accumulated over the micro-batches (see the module docs for the normalization). On a CPU
    /// the micro-batches run in parallel, their gradients summed in order: the same bits as one
    /// after the other.
    pub fn gradients(&self, micro: &[MicroBatch], step: u64) -> Result<(Tensor, Vec<Tensor>)> {
        let loss_weight: f64 = micro.iter().map(|m| m.loss_weight).sum();
        if loss_weight == 0.0 {
            candle_core::bail!("a step without learned tokens");
        }
        let scale = 1.0 / loss_weight;
        let params: Vec<Tensor> = self
            .optimizer
            .slots
            .iter()
            .map(|s| s.var.as_tensor().clone())
            .collect();
        let param_refs: Vec<&Tensor> = params.iter().collect();
        let one = |(j, mb): (usize, &MicroBatch)| -> Result<(Tensor, Vec<Option<Tensor>>)> {
            let _dropout = dropout_step(step * micro.len() as u64 + j as u64);
            let (loss, mut grads) = self.decoder.loss_and_grads(
                &mb.batch,
                self.grad_checkpointing,
                &param_refs,
                |m, h| mb.loss(m, h, scale),
            )?;
            let grads = params.iter().map(|p| grads.remove(p)).collect();
            Ok((loss.to_dtype(DType::F32)?, grads))
        };
        let parts = match self.decoder.device().is_cpu() {
            true => micro.par_iter().enumerate().map(one).collect(),
            false => micro
                .iter()
                .enumerate()
                .map(one)
                .collect::<Result<Vec<_>>>(),
        }?;
        let mut sums: Vec<Option<Tensor>> = vec![None; params.len()];
        let mut loss: Option<Tensor> = None;
        for (l, grads) in parts {
            for (sum, g) in sums.iter_mut().zip(grads) {
                *sum = match (sum.take(), g) {
                    (Some(s), Some(g)) => Some((s + g)?),
                    (s, g) => s.or(g),
                };
            }
            loss = Some(match loss {
                Some(acc) => (acc + l)?,
                None => l,
            });
        }
        let grads = sums
            .into_iter()
            .zip(&params)
            .map(|(g, p)| g.map_or_else(|| p.zeros_like(), Ok))
            .collect::<Result<Vec<_>>>()?;
        let loss =
            loss.ok_or_else(|| candle_core::Error::Msg("a step without micro-batches".into()))?;
        Ok((loss, grads))
    }

    /// The mean next-token NLL over every learned token of `rows`, `batch_size` rows at a time
    /// (in parallel on a CPU), without dropout; `None` when `rows` is empty.
    pub fn eval_loss(&self, rows: &Rows, batch_size: usize, pad: u32) -> Result<Option<f64>> {
        let one = |chunk: &Vec<(&[u32], &[bool])>| -> Result<(f64, f64)> {
            let mb = MicroBatch::new(chunk, pad, self.decoder.device())?;
            let hidden = self.decoder.hidden_no_grad(&mb.batch)?;
            let sum = mb.loss(&self.decoder, &hidden, 1.0)?.to_dtype(DType::F64)?;
            Ok((sum.to_scalar::<f64>()?, mb.loss_weight))
        };
        let chunks: Vec<_> = rows.chunks(batch_size).collect();
        let sums = match self.decoder.device().is_cpu() {
            true => chunks.par_iter().map(one).collect(),
            false => chunks.iter().map(one).collect::<Result<Vec<_>>>(),
        }?;
        let count: f64 = sums.iter().map(|(_, n)| n).sum();
        Ok((!sums.is_empty()).then(|| sums.iter().map(|(s, _)| s).sum::<f64>() / count))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::Batch;
    use crate::model::decoder::tests::fixture;
    use crate::model::linear::Proj;
    use crate::model::ops::tests::max_abs_diff;
    use crate::train::batch::{Learn, Shortlists, Softmax};

    /// The qwen3 fixture (hidden 32, vocab 128) with every projection adapted and two token rows.
    pub fn config() -> TrainConfig {
        TrainConfig {
            quant: Quant::None,
            lora: LoraConfig {
                r: 4,
                alpha: 8.0,
                dropout: 0.0,
                targets: Proj::ALL.to_vec(),
            },
            token_rows: vec![5, 100],
            adamw: AdamWConfig::default(),
            embedding_lr_scale: 1.0,
            max_grad_norm: 1.0,
            grad_checkpointing: false,
            seed: 3,
        }
    }

    pub fn fixture_model() -> Decoder {
        Decoder::load(&fixture("qwen3"), DType::F32, &Device::Cpu).unwrap()
    }

    /// Rows of different lengths whose second half is learned.
    pub fn rows() -> Vec<(Vec<u32>, Vec<bool>)> {
        [9usize, 14, 6, 11]
            .iter()
            .enumerate()
            .map(|(r, &len)| {
                let ids = (0..len)
                    .map(|t| ((r * 37 + t * 11) % 120) as u32 + 1)
                    .collect();
                let mask = (0..len).map(|t| t >= len / 2).collect();
                (ids, mask)
            })
            .collect()
    }

    pub fn micro(rows: &[(Vec<u32>, Vec<bool>)]) -> MicroBatch {
        let refs: Vec<(&[u32], &[bool])> = rows
            .iter()
            .map(|(i, m)| (i.as_slice(), m.as_slice()))
            .collect();
        MicroBatch::new(&refs, 0, &Device::Cpu).unwrap()
    }

    #[test]
    fn fresh_adapters_leave_the_model_as_it_was() {
        let base = fixture_model();
        let batch = Batch::dense(&[vec![5, 9, 100, 13, 2, 5]], 0, &Device::Cpu).unwrap();
        let want = base.forward(&batch, None).unwrap();
        let trainer = Trainer::new(base.clone(), &config()).unwrap();
        // 2 layers × 7 projections × (A, B), then the tied embedding's delta.
        assert_eq!(trainer.names.len(), 29);
        assert_eq!(trainer.names[28], "model.embed_tokens.delta");
        let got = trainer.decoder.forward(&batch, None).unwrap();
        assert_eq!(max_abs_diff(&got, &want), 0.0);
    }

    #[test]
    fn parallel_micro_batches_give_the_bits_of_one_after_the_other() {
        let mut cfg = config();
        cfg.lora.dropout = 0.2;
        let trainer = Trainer::new(fixture_model(), &cfg).unwrap();
        let ones: Vec<MicroBatch> = rows().chunks(1).map(micro).collect();
        let (loss, grads) = trainer.gradients(&ones, 7).unwrap();
        // One after the other on this thread, each with its own dropout step, summed in order.
        let scale = 1.0 / ones.iter().map(|m| m.loss_weight).sum::<f64>();
        let params: Vec<Tensor> = trainer.values().unwrap();
        let vars: Vec<&Tensor> = trainer
            .optimizer
            .slots
            .iter()
            .map(|s| s.var.as_tensor())
            .collect();
        let (mut want_loss, mut want) = (0f32, vec![None::<Tensor>; params.len()]);
        for (j, mb) in ones.iter().enumerate() {
            let _dropout = dropout_step(7 * ones.len() as u64 + j as u64);
            let (l, mut g) = trainer
                .decoder
                .loss_and_grads(&mb.batch, false, &vars, |m, h| mb.loss(m, h, scale))
                .unwrap();
            want_loss += l.to_scalar::<f32>().unwrap();
            for (sum, v) in want.iter_mut().zip(&vars) {
                if let Some(g) = g.remove(v) {
                    *sum = Some(match sum.take() {
                        Some(s) => (s + g).unwrap(),
                        None => g,
                    });
                }
            }
        }
        assert_eq!(loss.to_scalar::<f32>().unwrap(), want_loss);
        for ((name, got), want) in trainer.names.iter().zip(&grads).zip(want) {
            let want = want.unwrap_or_else(|| got.zeros_like().unwrap());
            assert_eq!(max_abs_diff(got, &want), 0.0, "{name}");
        }
        // Dropout is on: another step draws other masks (`B` of the first pair: `A`'s gradient
        // is 0 while `B` is).
        let other = trainer.gradients(&ones, 8).unwrap().1;
        assert!(max_abs_diff(&other[1], &grads[1]) > 0.0);
    }

    #[test]
    fn micro_batches_of_one_accumulate_to_the_gradient_of_the_whole_batch() {
        let trainer = Trainer::new(fixture_model(), &config()).unwrap();
        let rows = rows();
        let whole = [micro(&rows)];
        let ones: Vec<MicroBatch> = rows.chunks(1).map(micro).collect();
        let (loss_whole, g_whole) = trainer.gradients(&whole, 0).unwrap();
        let (loss_ones, g_ones) = trainer.gradients(&ones, 0).unwrap();
        let (a, b) = (
            loss_whole.to_scalar::<f32>().unwrap(),
            loss_ones.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5 * a.abs(), "loss {a} vs {b}");
        let mut nonzero = 0;
        for ((name, x), y) in trainer.names.iter().zip(&g_whole).zip(&g_ones) {
            let scale = x
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            nonzero += usize::from(scale > 0.0);
            assert!(
                max_abs_diff(x, y) <= 1e-5 * f64::from(scale.max(1e-6)),
                "{name}: {} of {scale}",
                max_abs_diff(x, y)
            );
        }
        assert!(nonzero > 14, "B and the row delta get gradients: {nonzero}");
        // The unnormalized alternative (a mean per micro-batch) would differ: the rows learn
        // different numbers of tokens.
        let per_row: f32 = ones
            .iter()
            .map(|m| {
                trainer
                    .gradients(std::slice::from_ref(m), 0)
                    .unwrap()
                    .0
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .sum::<f32>()
            / ones.len() as f32;
        assert!((per_row - a).abs() > 1e-4, "{per_row} vs {a}");
    }

    /// The loss before and after 20 steps on the rows, and the trainer.
    fn train(quant: Quant) -> (f32, f32, Trainer) {
        let mut trainer =
            Trainer::new(fixture_model(), &TrainConfig { quant, ..config() }).unwrap();
        let batch = [micro(&rows())];
        let first = trainer.step(&batch, 1e-2, 0).unwrap().loss;
        for step in 1..20 {
            trainer.step(&batch, 1e-2, step).unwrap();
        }
        let last = trainer.gradients(&batch, 20).unwrap().0;
        (
            first.to_scalar::<f32>().unwrap(),
            last.to_scalar::<f32>().unwrap(),
            trainer,
        )
    }

    #[test]
    fn learned_positions_count_at_their_weight_under_their_softmax() {
        let trainer = Trainer::new(fixture_model(), &config()).unwrap();
        let rows = rows();
        let refs: Vec<(&[u32], &[bool])> = rows
            .iter()
            .map(|(i, m)| (i.as_slice(), m.as_slice()))
            .collect();
        let shortlist: std::collections::BTreeSet<u32> = rows
            .iter()
            .flat_map(|(ids, _)| ids.iter().copied())
            .collect();
        // The trained rows: a shortlist other than the batch's, holding every answer token.
        let trained: Vec<u32> = rows
            .iter()
            .flat_map(|(ids, mask)| ids.iter().zip(mask).filter(|(_, m)| **m).map(|(id, _)| *id))
            .chain([7, 40, 41])
            .collect::<std::collections::BTreeSet<u32>>()
            .into_iter()
            .collect();
        for answers in [Softmax::Full, Softmax::Batch, Softmax::Trained] {
            let learn = Learn {
                inputs: Some(Softmax::Batch),
                answers,
                input_weight: 0.3,
            };
            let step: Vec<u32> = shortlist.iter().copied().collect();
            let shortlists = Shortlists {
                step: &step,
                trained: &trained,
            };
            let mb = MicroBatch::build(&refs, 0, learn, shortlists, &Device::Cpu).unwrap();
            let loss = trainer.gradients(&[mb], 0).unwrap().0;
            // The same weighted mean from the full logits, row by row.
            let (mut total, mut n) = (0f64, 0f64);
            for (ids, mask) in &rows {
                let inputs = vec![ids[..ids.len() - 1].to_vec()];
                let batch = Batch::dense(&inputs, 0, &Device::Cpu).unwrap();
                let logits = trainer.decoder.forward(&batch, None).unwrap();
                let logits = logits.to_vec3::<f32>().unwrap().remove(0);
                for (t, row) in logits.iter().enumerate() {
                    let over: Vec<usize> = match (mask[t + 1], answers) {
                        (true, Softmax::Full) => (0..row.len()).collect(),
                        (true, Softmax::Trained) => trained.iter().map(|&id| id as usize).collect(),
                        _ => shortlist.iter().map(|&id| id as usize).collect(),
                    };
                    let lse = over
                        .iter()
                        .map(|&j| f64::from(row[j]).exp())
                        .sum::<f64>()
                        .ln();
                    let weight = if mask[t + 1] { 1.0 } else { 0.3 };
                    total += weight * (lse - f64::from(row[ids[t + 1] as usize]));
                    n += weight;
                }
            }
            let (got, want) = (f64::from(loss.to_scalar::<f32>().unwrap()), total / n);
            assert!(
                (got - want).abs() < 1e-5 * want,
                "{answers:?}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn steps_lower_the_loss_of_what_they_train_on() {
        let (first, last, _) = train(Quant::None);
        assert!(last < 0.7 * first, "loss {first} -> {last}");
    }

    #[test]
    fn qlora_trains_the_same_tensors_on_an_nf4_base_and_converges() {
        let (first, last, qlora) = train(Quant::Nf4);
        assert!(last < 0.7 * first, "loss {first} -> {last}");
        let (dense_first, _, dense) = train(Quant::None);
        assert_eq!(qlora.names, dense.names);
        let shapes = |t: &Trainer| -> Vec<Vec<usize>> {
            t.optimizer
                .slots
                .iter()
                .map(|s| s.var.dims().to_vec())
                .collect()
        };
        assert_eq!(shapes(&qlora), shapes(&dense));
        // The base really is quantized: every projection now holds NF4-rounded values.
        let base = fixture_model();
        for ((id, q), (_, b)) in qlora.decoder.linears().zip(base.linears()) {
            let dense = b.weight().dense().unwrap();
            let err = max_abs_diff(&q.weight().dense().unwrap(), &dense);
            let scale = max_abs_diff(&dense, &dense.zeros_like().unwrap());
            // NF4's widest gap between codes is under a third of a block's absmax.
            assert!(
                err > 0.0 && err < 0.2 * scale,
                "{}: {err} of {scale}",
                id.hf_name()
            );
        }
        assert_ne!(first, dense_first);
    }
}
