//! Training: what turns a base model into a tool-calling one — the sft stage (and later dpo and
//! grpo), the optimizer, the learning-rate schedule, resumable checkpoints, and the adapter format
//! they all write.
//!
//! Training never edits the base weights: it trains LoRA pairs and selected token rows beside the
//! frozen (possibly NF4-quantized) base, and [`adapter`] writes exactly those, in PEFT's layout, so
//! that PEFT, vLLM and forge's own `generate`/`eval` apply them on the same base.

pub mod adapter;
pub mod batch;
pub mod bench;
pub mod checkpoint;
pub mod memory;
pub mod optim;
pub mod schedule;
pub mod sft;
pub mod trainer;
