//! The `sft` stage: supervised fine-tuning with LoRA (and trainable token rows) on format's token
//! files, completion-only loss, resumable from checkpoints, writing a PEFT adapter.
//!
//! Inputs: `model` (a Hugging Face model directory with its tokenizer) and `data` (format's output:
//! `train.tokens`, `dev.tokens`). The run: LoRA pairs on `lora_targets`, the embedding/head rows
//! of `train_tokens` trainable (DESIGN.md: LoRA alone cannot teach a base model the tool tokens
//! it never saw), AdamW with warmup and a schedule, gradient accumulation and clipping
//! ([`super::trainer`]). The dev loss is measured before training, every `eval_every` steps and at
//! the end; the adapter with the lowest dev loss is the output (`adapter_model.safetensors`,
//! `adapter_config.json`), with `metrics.jsonl` (a row per step: loss, lr, grad_norm, tok_s; a row
//! per dev measurement) and `metrics.json`.
//!
//! Every `save_every` steps (default: `eval_every`) the whole training state goes to the stage's
//! state directory ([`super::checkpoint`]); a killed `forge run` resumes there and ends with the
//! same adapter as an uninterrupted run.
//!
//! Rows longer than `max_len`, or with nothing to learn, are left out and counted in the summary
//! and metrics.json, never dropped silently.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::adapter;
use super::batch::{Learn, MicroBatch, Order, Rows, Shortlists, Softmax, step_tokens};
use super::checkpoint::{self, Best, TrainState};
use super::memory::MemoryProbe;
use super::optim::AdamWConfig;
use super::schedule::{Schedule, ScheduleKind};
use super::trainer::{Quant, TrainConfig, Trainer};
use crate::data::format::{TokenFile, load_tokenizer};
use crate::data::io::{self, JsonlWriter};
use crate::model::candle_device;
use crate::model::decoder::Decoder;
use crate::model::linear::Proj;
use crate::model::lora::LoraConfig;
use crate::{Context, Device, Input, Report, StageError, TypedStage};

/// The `sft` built-in stage.
pub struct Sft;

/// Where to train: `auto` is the device the engine gives the stage (a GPU when it holds one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceParam {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

/// The dtype of the frozen weights and activations (adapters and optimizer state are f32):
/// `auto` is f32 on a CPU, bf16 on a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtypeParam {
    #[default]
    Auto,
    F32,
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftParams {
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Passes over the training rows (fractions allowed); with neither this nor `max_steps`, 1.
    #[serde(default)]
    pub epochs: Option<f64>,
    /// Optimizer steps, instead of `epochs`.
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Rows per forward pass.
    #[serde(default = "one")]
    pub micro_batch_size: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Rows longer than this many tokens are left out (and counted).
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// The share of steps spent warming the learning rate up from zero.
    #[serde(default = "default_warmup_ratio")]
    pub warmup_ratio: f64,
    #[serde(default = "default_lr_scheduler")]
    pub lr_scheduler: ScheduleKind,
    /// AdamW's decoupled weight decay, applied to the LoRA matrices (not to token rows).
    #[serde(default)]
    pub weight_decay: f64,
    /// Learn every token of a row, the prompt's too, not only the answer's (Axolotl's name). The
    /// dev loss stays the answer tokens'.
    #[serde(default)]
    pub train_on_inputs: bool,
    /// The softmax the prompt's tokens are learned under with `train_on_inputs`: `full` (the
    /// vocabulary, exact) or `batch` (the step's own tokens only: a sampled softmax that costs
    /// next to nothing, where `full` takes a pass over the vocabulary per prompt token).
    #[serde(default)]
    pub input_softmax: Softmax,
    /// The same for the answer tokens, or `trained` (for either): the rows the run trains (with
    /// `train_completion_tokens`). The dev loss stays the full vocabulary's, so it shows what a
    /// shortlist costs; for the tiny model on a CPU the full head is half of a step.
    #[serde(default)]
    pub answer_softmax: Softmax,
    /// With `train_on_inputs`: a prompt token's weight in the loss, an answer token's being 1
    /// (OpenAI's fine-tuning name); prompts outnumber answers about six tokens to one.
    #[serde(default = "default_prompt_loss_weight")]
    pub prompt_loss_weight: f64,
    /// The trained token rows' learning rate as a multiple of `lr` (Axolotl's name).
    #[serde(default = "default_embedding_lr_scale")]
    pub embedding_lr_scale: f64,
    /// Clip the global gradient norm to this; 0 turns clipping off.
    #[serde(default = "default_max_grad_norm")]
    pub max_grad_norm: f64,
    #[serde(default = "default_lora_r")]
    pub lora_r: usize,
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
    #[serde(default = "default_lora_dropout")]
    pub lora_dropout: f64,
    /// Projections that get LoRA pairs: any of q, k, v, o, gate, up, down.
    #[serde(default = "default_lora_targets")]
    pub lora_targets: Vec<Proj>,
    /// Tokens (each one token of the model's tokenizer) whose embedding/head rows are trained.
    #[serde(default = "default_train_tokens")]
    pub train_tokens: Vec<String>,
    /// Also train the rows of every token the training rows learn to produce (with
    /// `train_on_inputs`, the prompts' tokens too). A model whose embedding never learned them
    /// needs it: a random-initialized one's logits are bounded by its small frozen rows, so no
    /// LoRA can make it confident of any token, and its prompts' words mean nothing to it.
    #[serde(default)]
    pub train_completion_tokens: bool,
    /// `nf4`: QLoRA, the frozen projections in 4-bit NormalFloat.
    #[serde(default)]
    pub quant: Quant,
    /// Recompute each layer's activations in the backward pass instead of keeping them.
    #[serde(default)]
    pub grad_checkpointing: bool,
    /// Measure the dev loss every this many steps (and before the first, and after the last).
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Measure the dev loss on the first this many dev rows; none: all.
    #[serde(default)]
    pub dev_limit: Option<usize>,
    /// Checkpoint every this many steps; none: every `eval_every`.
    #[serde(default)]
    pub save_every: Option<u64>,
    /// Seeds the data order, LoRA's init and dropout.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub device: DeviceParam,
    #[serde(default)]
    pub dtype: DtypeParam,
}

fn default_lr() -> f64 {
    2e-4
}
fn one() -> usize {
    1
}
fn default_max_len() -> usize {
    2048
}
fn default_warmup_ratio() -> f64 {
    0.03
}
fn default_lr_scheduler() -> ScheduleKind {
    ScheduleKind::Cosine
}
fn default_embedding_lr_scale() -> f64 {
    1.0
}
fn default_prompt_loss_weight() -> f64 {
    1.0
}
fn default_max_grad_norm() -> f64 {
    1.0
}
fn default_lora_r() -> usize {
    16
}
fn default_lora_alpha() -> f64 {
    32.0
}
fn default_lora_dropout() -> f64 {
    0.05
}
fn default_lora_targets() -> Vec<Proj> {
    Proj::ALL.to_vec()
}
fn default_train_tokens() -> Vec<String> {
    vec!["<tool_call>".into(), "</tool_call>".into()]
}
fn default_eval_every() -> u64 {
    50
}

impl SftParams {
    /// Checks what serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), String> {
        let fail = |m: &str| Err(m.to_string());
        if self.epochs.is_some() && self.max_steps.is_some() {
            return fail("give `epochs` or `max_steps`, not both");
        }
        if self.epochs.is_some_and(|e| !(e.is_finite() && e > 0.0)) {
            return fail("`epochs` must be a positive number");
        }
        if self.max_steps == Some(0) {
            return fail("`max_steps` must be at least 1");
        }
        if self.input_softmax != Softmax::Full && !self.train_on_inputs {
            return fail(
                "`input_softmax` applies to the prompt's tokens: set `train_on_inputs: true`",
            );
        }
        if self.prompt_loss_weight != 1.0 && !self.train_on_inputs {
            return fail(
                "`prompt_loss_weight` weighs the prompt's tokens: set `train_on_inputs: true`",
            );
        }
        if !(self.prompt_loss_weight.is_finite() && self.prompt_loss_weight > 0.0) {
            return fail("`prompt_loss_weight` must be a positive number");
        }
        if (self.input_softmax == Softmax::Trained || self.answer_softmax == Softmax::Trained)
            && !self.train_completion_tokens
        {
            return fail(
                "the `trained` softmax needs the row of every learned token trained: set `train_completion_tokens: true`",
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return fail("`lr` must be a positive number");
        }
        if self.micro_batch_size == 0 || self.grad_accum == 0 {
            return fail("`micro_batch_size` and `grad_accum` must be at least 1");
        }
        if self.max_len < 2 {
            return fail("`max_len` must be at least 2");
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return fail("`warmup_ratio` must be in [0, 1]");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return fail("`weight_decay` must be 0 or more");
        }
        if !(self.embedding_lr_scale > 0.0 && self.embedding_lr_scale.is_finite()) {
            return fail("`embedding_lr_scale` must be above 0");
        }
        if !(self.max_grad_norm >= 0.0 && self.max_grad_norm.is_finite()) {
            return fail("`max_grad_norm` must be 0 (no clipping) or more");
        }
        if self.lora_r == 0 {
            return fail("`lora_r` must be at least 1");
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return fail("`lora_alpha` must be a positive number");
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return fail("`lora_dropout` must be in [0, 1)");
        }
        if self.lora_targets.is_empty() {
            return fail("`lora_targets` needs at least one of q, k, v, o, gate, up, down");
        }
        if let Some(dup) = duplicate(&self.lora_targets) {
            return Err(format!("`lora_targets` lists `{}` twice", dup.short()));
        }
        if let Some(dup) = duplicate(&self.train_tokens) {
            return Err(format!("`train_tokens` lists `{dup}` twice"));
        }
        if self.dev_limit == Some(0) {
            return fail("`dev_limit` must be at least 1 (leave it out for every dev row)");
        }
        if self.eval_every == 0 || self.save_every == Some(0) {
            return fail("`eval_every` and `save_every` must be at least 1");
        }
        Ok(())
    }

    /// Optimizer steps over `rows` training rows.
    pub fn total_steps(&self, rows: usize) -> u64 {
        if let Some(steps) = self.max_steps {
            return steps;
        }
        let per_step = (self.micro_batch_size * self.grad_accum) as f64;
        ((self.epochs.unwrap_or(1.0) * rows as f64 / per_step).ceil() as u64).max(1)
    }

    fn train_config(&self, token_rows: Vec<u32>) -> TrainConfig {
        TrainConfig {
            quant: self.quant,
            lora: LoraConfig {
                r: self.lora_r,
                alpha: self.lora_alpha,
                dropout: self.lora_dropout,
                targets: self.lora_targets.clone(),
            },
            token_rows,
            adamw: AdamWConfig {
                weight_decay: self.weight_decay,
                ..AdamWConfig::default()
            },
            embedding_lr_scale: self.embedding_lr_scale,
            max_grad_norm: self.max_grad_norm,
            grad_checkpointing: self.grad_checkpointing,
            seed: self.seed,
        }
    }
}

fn duplicate<T: PartialEq>(items: &[T]) -> Option<&T> {
    items
        .iter()
        .enumerate()
        .find(|(i, x)| items[..*i].contains(x))
        .map(|(_, x)| x)
}

/// The ids of `tokens` in the tokenizer of `model_dir`; each must be one token.
pub fn token_ids(model_dir: &Path, tokens: &[String]) -> Result<Vec<u32>, StageError> {
    if tokens.is_empty() {
        return Ok(Vec::new());
    }
    let tokenizer = load_tokenizer(model_dir)?;
    tokens
        .iter()
        .map(|t| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                let pieces = tokenizer
                    .encode_fast(t.as_str(), false)
                    .map(|e| e.get_tokens().join(" "))
                    .unwrap_or_default();
                StageError::Failed(format!(
                    "param `train_tokens`: `{t}` is not a single token of {}'s tokenizer (it encodes as: {pieces})",
                    model_dir.display()
                ))
            })
        })
        .collect()
}

/// The device and dtype params resolved against the device the engine gave the stage.
pub fn resolve_device(device: DeviceParam, dtype: DtypeParam, given: Device) -> (Device, DType) {
    let device = match (device, given) {
        (DeviceParam::Auto, d) => d,
        (DeviceParam::Cpu, _) => Device::Cpu,
        (DeviceParam::Cuda, Device::Cuda(n)) => Device::Cuda(n),
        (DeviceParam::Cuda, Device::Cpu) => Device::Cuda(0),
    };
    let dtype = match (dtype, device) {
        (DtypeParam::F32, _) | (DtypeParam::Auto, Device::Cpu) => DType::F32,
        (DtypeParam::Bf16, _) | (DtypeParam::Auto, Device::Cuda(_)) => DType::BF16,
    };
    (device, dtype)
}

fn open_split(data_dir: &Path, split: &str, max_len: usize) -> Result<Rows, StageError> {
    let file = TokenFile::open(&data_dir.join(format!("{split}.tokens")))?;
    Ok(Rows::new(file, max_len))
}

fn candle_err(e: candle_core::Error) -> StageError {
    StageError::Failed(e.to_string())
}

impl TypedStage for Sft {
    type Params = SftParams;
    const KIND: &'static str = "sft";
    /// 2: prompt and answer tokens are summed as separate groups (other rounding), and the
    /// `batch` softmax is the step's tokens.
    const VERSION: u32 = 2;
    const INPUTS: &'static [Input] = &[
        Input {
            name: "model",
            required: true,
        },
        Input {
            name: "data",
            required: true,
        },
        Input {
            name: "adapter",
            required: false,
        },
    ];
    const ABOUT: &'static str =
        "LoRA fine-tuning (and trained token rows) on format's token files; writes a PEFT adapter";

    fn run(&self, params: &SftParams, ctx: &Context<'_>) -> Result<Report, StageError> {
        run(params, ctx)
    }
}

fn run(params: &SftParams, ctx: &Context<'_>) -> Result<Report, StageError> {
    let started = Instant::now();
    params
        .validate()
        .map_err(|m| StageError::Failed(format!("param {m}")))?;
    let model_dir = ctx.input("model")?;
    let data_dir = ctx.input("data")?;
    let train = open_split(data_dir, "train", params.max_len)?;
    let mut dev = open_split(data_dir, "dev", params.max_len)?;
    if let Some(limit) = params.dev_limit {
        dev.truncate(limit);
    }
    if train.is_empty() {
        return Err(StageError::Failed(format!(
            "no training rows left: {} longer than max_len {}, {} with nothing to learn",
            train.too_long, params.max_len, train.nothing_to_learn
        )));
    }
    let mut token_rows: BTreeSet<u32> = token_ids(model_dir, &params.train_tokens)?
        .into_iter()
        .collect();
    if params.train_completion_tokens {
        token_rows.extend(train.learned_tokens(params.train_on_inputs));
    }
    let (device, dtype) = resolve_device(params.device, params.dtype, ctx.device);
    let candle = candle_device(device)?;
    let mut memory = MemoryProbe::new(&candle);
    let decoder = Decoder::load(model_dir, dtype, &candle)?;
    let start = match ctx.inputs.get("adapter") {
        Some(dir) => {
            let started = adapter::load(dir, &mut decoder.clone())?;
            if let Some(rows) = &started.rows {
                token_rows.extend(rows.embedding.ids());
            }
            Some((dir, started))
        }
        None => None,
    };
    let vocab = decoder.config().vocab_size;
    for (name, rows) in [("train", &train), ("dev", &dev)] {
        if let Some(id) = (0..rows.len())
            .flat_map(|i| rows.get(i).0.iter().copied())
            .find(|&id| id as usize >= vocab)
        {
            return Err(StageError::Failed(format!(
                "{name}.tokens holds token id {id}, outside the model's vocabulary of {vocab}: was it formatted with another tokenizer?"
            )));
        }
    }
    let pad = decoder.config().pad_token_id.unwrap_or(0);
    let token_rows: Vec<u32> = token_rows.into_iter().collect();
    let mut trainer =
        Trainer::new(decoder, &params.train_config(token_rows.clone())).map_err(candle_err)?;
    if let Some((dir, started)) = &start {
        trainer
            .adapter
            .start_from(started)
            .map_err(|m| StageError::Failed(format!("input `adapter` {}: {m}", dir.display())))?;
    }

    let total = params.total_steps(train.len());
    let schedule = Schedule::new(params.lr_scheduler, params.lr, params.warmup_ratio, total);
    let save_every = params.save_every.unwrap_or(params.eval_every);
    let mut order = Order::new(params.seed, train.len());
    let eval_batch = params.micro_batch_size;
    let learn = Learn {
        inputs: params.train_on_inputs.then_some(params.input_softmax),
        answers: params.answer_softmax,
        input_weight: params.prompt_loss_weight,
    };

    let (mut state, mut best_values, resumed_from) =
        match checkpoint::restore(ctx.state, &mut trainer)? {
            Some(r) => {
                let step = r.state.step;
                (r.state, r.best_values, Some(step))
            }
            None => (
                TrainState {
                    step: 0,
                    tokens_seen: 0,
                    best: None,
                    metrics: Vec::new(),
                    names: trainer.names.clone(),
                },
                None,
                None,
            ),
        };
    let dev_eval = |trainer: &Trainer,
                    state: &mut TrainState,
                    best_values: &mut Option<Vec<Tensor>>|
     -> Result<(), StageError> {
        let Some(loss) = trainer
            .eval_loss(&dev, eval_batch, pad)
            .map_err(candle_err)?
        else {
            return Ok(());
        };
        state
            .metrics
            .push(json!({"step": state.step, "dev_loss": loss}));
        if state.best.is_none_or(|b| loss < b.dev_loss) {
            state.best = Some(Best {
                step: state.step,
                dev_loss: loss,
            });
            *best_values = Some(trainer.values().map_err(candle_err)?);
        }
        Ok(())
    };
    if resumed_from.is_none() {
        ctx.progress
            .update(0, Some(total), "measuring the dev loss before training");
        dev_eval(&trainer, &mut state, &mut best_values)?;
    }

    let train_started = Instant::now();
    let mut tokens_this_run = 0u64;
    let mut last_loss = None;
    while state.step < total {
        ctx.check_cancelled()?;
        let step = state.step;
        let lr = schedule.lr(step);
        let t0 = Instant::now();
        let step_rows = order.step(step, params.grad_accum, params.micro_batch_size);
        let step_tokens = step_tokens(step_rows.iter().flatten().map(|&i| train.get(i).0));
        let shortlists = Shortlists {
            step: &step_tokens,
            trained: &token_rows,
        };
        let micro = step_rows
            .iter()
            .map(|rows| {
                let rows: Vec<_> = rows.iter().map(|&i| train.get(i)).collect();
                MicroBatch::build(&rows, pad, learn, shortlists, &candle)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(candle_err)?;
        let out = trainer.step(&micro, lr, step).map_err(candle_err)?;
        memory.sample();
        let figures = Tensor::stack(&[&out.loss, &out.grad_norm], 0)
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(candle_err)?;
        let (loss, grad_norm) = (f64::from(figures[0]), f64::from(figures[1]));
        if !loss.is_finite() {
            return Err(StageError::Failed(format!(
                "the loss became {loss} at step {} (lr {lr:.2e}): lower `lr` or check the data",
                step + 1
            )));
        }
        let tokens: usize = micro.iter().map(|m| m.tokens).sum();
        let tok_s = tokens as f64 / t0.elapsed().as_secs_f64();
        state.step += 1;
        state.tokens_seen += tokens as u64;
        tokens_this_run += tokens as u64;
        last_loss = Some(loss);
        state.metrics.push(json!({
            "step": state.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tok_s": tok_s.round(),
        }));
        ctx.progress.update(
            state.step,
            Some(total),
            &format!("loss {loss:.3} lr {lr:.1e} {tok_s:.0} tok/s"),
        );
        let at_end = state.step == total;
        if state.step % params.eval_every == 0 || at_end {
            dev_eval(&trainer, &mut state, &mut best_values)?;
        }
        if !at_end && state.step % save_every == 0 {
            checkpoint::save(ctx.state, &trainer, &state, best_values.as_deref())?;
        }
    }
    let train_secs = train_started.elapsed().as_secs_f64();

    if let Some(best) = &best_values {
        trainer.set_values(best).map_err(candle_err)?;
    }
    adapter::save(
        &trainer.adapter,
        &trainer.decoder,
        ctx.out,
        &model_dir.display().to_string(),
    )?;
    let mut rows_out = JsonlWriter::create(ctx.out.join("metrics.jsonl"))?;
    for row in &state.metrics {
        rows_out.write(row)?;
    }
    rows_out.finish()?;

    let dev_losses: Vec<f64> = state
        .metrics
        .iter()
        .filter_map(|r| r.get("dev_loss").and_then(Value::as_f64))
        .collect();
    let skipped =
        |rows: &Rows| json!({"too_long": rows.too_long, "nothing_to_learn": rows.nothing_to_learn});
    let tok_s = tokens_this_run as f64 / train_secs.max(1e-9);
    let peak = memory.peak_bytes();
    io::write_metrics(
        ctx.out,
        &json!({
            "steps": total,
            "epochs": (total as f64 * (params.micro_batch_size * params.grad_accum) as f64)
                / train.len() as f64,
            "train_rows": train.len(),
            "dev_rows": dev.len(),
            "train_rows_left_out": skipped(&train),
            "dev_rows_left_out": skipped(&dev),
            "start_dev_loss": dev_losses.first(),
            "final_dev_loss": dev_losses.last(),
            "best_dev_loss": state.best.map(|b| b.dev_loss),
            "best_step": state.best.map(|b| b.step),
            "final_train_loss": last_loss,
            "tokens_seen": state.tokens_seen,
            "trainable_params": trainer.parameter_count(),
            "tok_s": tok_s.round(),
            "wall_time_s": started.elapsed().as_secs_f64(),
            "resumed_from_step": resumed_from,
            "peak_memory_gib": peak.map(|b| b as f64 / (1u64 << 30) as f64),
            "peak_memory_measures": memory.measures(),
            "device": match device {
                Device::Cpu => "cpu".to_string(),
                Device::Cuda(n) => format!("cuda:{n}"),
            },
            "dtype": format!("{dtype:?}").to_lowercase(),
            "quant": params.quant,
        }),
    )?;

    let mut summary = format!("{total} steps");
    if let Some(from) = resumed_from {
        summary.push_str(&format!(" (resumed at step {from})"));
    }
    match (dev_losses.first(), state.best) {
        (Some(start), Some(best)) => summary.push_str(&format!(
            ", dev loss {start:.3} → {:.3} (best, step {})",
            best.dev_loss, best.step
        )),
        _ => summary.push_str(", no dev rows: the final adapter is the output"),
    }
    summary.push_str(&format!(", {tok_s:.0} tok/s"));
    if [&train, &dev]
        .iter()
        .any(|r| r.too_long + r.nothing_to_learn > 0)
    {
        summary.push_str(&format!(
            "; left out (over max_len {} / nothing to learn): train {}/{}, dev {}/{}",
            params.max_len,
            train.too_long,
            train.nothing_to_learn,
            dev.too_long,
            dev.nothing_to_learn
        ));
    }
    Ok(Report { summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: serde_json::Value) -> Result<SftParams, String> {
        let p: SftParams = serde_json::from_value(json).map_err(|e| e.to_string())?;
        p.validate().map(|()| p)
    }

    #[test]
    fn defaults_are_explicit_and_steps_follow_epochs_or_max_steps() {
        let p = params(json!({})).unwrap();
        assert_eq!((p.lr, p.lora_r, p.lora_alpha), (2e-4, 16, 32.0));
        assert_eq!(p.lora_targets, Proj::ALL);
        assert_eq!(p.train_tokens, ["<tool_call>", "</tool_call>"]);
        assert_eq!(p.embedding_lr_scale, 1.0);
        assert!(!p.train_on_inputs);
        assert_eq!(
            (p.input_softmax, p.answer_softmax),
            (Softmax::Full, Softmax::Full)
        );
        assert_eq!(
            (p.quant, p.device, p.dtype),
            (Quant::None, DeviceParam::Auto, DtypeParam::Auto)
        );
        // One epoch by default: 10 rows, 2 per micro-batch, 2 micro-batches per step.
        let p = params(json!({"micro_batch_size": 2, "grad_accum": 2})).unwrap();
        assert_eq!(p.total_steps(10), 3);
        assert_eq!(params(json!({"epochs": 2.5})).unwrap().total_steps(10), 25);
        assert_eq!(params(json!({"max_steps": 7})).unwrap().total_steps(10), 7);
    }

    #[test]
    fn bad_params_say_what_is_wrong() {
        for (json, needle) in [
            (json!({"epochs": 1, "max_steps": 5}), "not both"),
            (json!({"input_softmax": "batch"}), "train_on_inputs"),
            (
                json!({"answer_softmax": "trained"}),
                "train_completion_tokens",
            ),
            (
                json!({"lora_targets": ["q", "lm_head"]}),
                "unknown variant `lm_head`",
            ),
            (json!({"lora_targets": ["q", "q"]}), "lists `q` twice"),
            (json!({"lora_dropout": 1.0}), "lora_dropout"),
            (json!({"quant": "int8"}), "unknown variant `int8`"),
            (json!({"lr": 0.0}), "`lr`"),
            (json!({"warmup_ratio": 1.5}), "warmup_ratio"),
            (json!({"dev_limit": 0}), "dev_limit"),
            (json!({"embedding_lr_scale": 0.0}), "embedding_lr_scale"),
            (
                json!({"learning_rate": 1e-4}),
                "unknown field `learning_rate`",
            ),
        ] {
            let err = params(json.clone()).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn auto_means_the_engine_device_and_its_dtype() {
        use {DeviceParam as D, DtypeParam as T};
        assert_eq!(
            resolve_device(D::Auto, T::Auto, Device::Cpu),
            (Device::Cpu, DType::F32)
        );
        assert_eq!(
            resolve_device(D::Auto, T::Auto, Device::Cuda(1)),
            (Device::Cuda(1), DType::BF16)
        );
        assert_eq!(
            resolve_device(D::Cpu, T::Auto, Device::Cuda(1)),
            (Device::Cpu, DType::F32)
        );
        assert_eq!(
            resolve_device(D::Cuda, T::F32, Device::Cpu),
            (Device::Cuda(0), DType::F32)
        );
    }
}
