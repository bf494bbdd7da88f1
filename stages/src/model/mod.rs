//! The model layer: one Llama-family decoder (Qwen3, Qwen2, Llama/SmolLM2) in candle that loads
//! Hugging Face checkpoints, trains (every op on the training path has a backward) and generates.
//!
//! - [`config`]: `config.json` → [`ModelConfig`], and the presets `forge model init` writes.
//! - [`decoder`]: the network; [`Decoder::forward`] for logits, [`Decoder::loss_and_grads`] for
//!   training (optionally with per-layer activation checkpointing).
//! - [`attention`]: grouped-query attention, masks for padded batches, the KV cache.
//! - [`linear`]: the [`Linear`] every projection goes through — the hook LoRA and NF4 plug into.
//! - [`lora`]: LoRA pairs on any of the seven projections (PEFT's init; dropout that replays).
//! - [`nf4`]: QLoRA's 4-bit NormalFloat base weights, bit-compatible with bitsandbytes, dequantized
//!   on the fly (CPU, or a CUDA kernel).
//! - [`embedding`]: the token embedding and tied/untied head, with trainable token rows.
//! - [`head_loss`]: the head and the cross-entropy as one op, for training at the learned
//!   positions.
//! - [`fused`]: RMSNorm, masked softmax, RoPE and cross-entropy as candle custom ops with a
//!   hand-written backward (candle's fused kernels have none); [`ops`]: their composed references.
//! - [`load`]: safetensors in and out (single file or sharded; f32, bf16, f16).
//! - [`import`]: a GGUF (Llama family) → a Hugging Face directory (`forge model import`).
//! - [`init`]: random-initialized models with the real tokenizer; the `model-init` stage.
//! - [`decode`]: CUDA kernels for decoding one row: bf16 projections, SwiGLU, greedy argmax.
//! - [`graph`]: batch-1 decoding steps captured once as a CUDA graph and replayed per token.
//! - [`generate`]: batched generation with a KV cache, sampling, stop tokens, repetition
//!   detection, streaming; [`generate::chat`] for `forge generate`.

pub mod attention;
pub mod config;
pub mod decode;
pub mod decoder;
pub mod embedding;
pub mod fused;
pub mod generate;
pub mod graph;
pub mod head_loss;
pub mod import;
pub mod init;
pub mod linear;
pub mod load;
pub mod lora;
pub mod nf4;
pub mod ops;
pub mod rope;

use std::path::PathBuf;

pub use config::{Arch, ModelConfig};
pub use decoder::{Batch, Decoder};
pub use linear::{DenseWeight, Linear, LinearAdapter, LinearId, LinearWeight, Proj};

/// Why loading, running or saving a model failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor `{name}`: {message}")]
    Weight { name: String, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<ModelError> for crate::StageError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Io { path, source } => crate::StageError::Io { path, source },
            other => crate::StageError::Failed(other.to_string()),
        }
    }
}

/// The candle device for a stage's [`crate::Device`]; CUDA needs the `cuda` feature.
pub fn candle_device(device: crate::Device) -> Result<candle_core::Device, ModelError> {
    match device {
        crate::Device::Cpu => Ok(candle_core::Device::Cpu),
        crate::Device::Cuda(ordinal) => {
            #[cfg(feature = "cuda")]
            {
                use candle_core::backend::BackendDevice;
                let device = candle_core::cuda_backend::CudaDevice::new(ordinal)?;
                // SAFETY: candle queues all of a thread's work on one stream, so cudarc's events
                // (which order buffers between streams) guard nothing here, and cost two event
                // creations per allocation: a large part of a decoding step's CPU time.
                unsafe { device.disable_event_tracking() };
                Ok(candle_core::Device::Cuda(device))
            }
            #[cfg(not(feature = "cuda"))]
            Err(ModelError::Invalid(format!(
                "CUDA device {ordinal} requested, but forge was built without the `cuda` feature"
            )))
        }
    }
}
