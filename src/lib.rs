//! forge: a Make-like, content-addressed build of LLM post-training pipelines.
//!
//! `config` and `graph` know nothing of execution; `hash` and `store` know nothing of stages.

pub mod cli;
pub mod config;
pub mod exec;
pub mod fsutil;
pub mod gc;
pub mod graph;
pub mod hash;
pub mod lockfile;
pub mod metrics;
pub mod plan;
pub mod progress;
pub mod remote;
pub mod run;
pub mod store;
pub mod workspace;
