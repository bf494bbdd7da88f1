//! forge: a Make-like, content-addressed build of LLM post-training pipelines.
//!
//! `config` and `graph` know nothing of execution; `hash` and `store` know nothing of stages.

pub mod config;
pub mod fsutil;
pub mod graph;
pub mod hash;
