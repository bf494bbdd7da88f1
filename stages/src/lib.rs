//! forge's built-in stages, behind one small contract.
//!
//! A built-in stage is a kind (`"normalize"`), a version (bump it when the stage's outputs change
//! meaning: that invalidates every cached output of the kind), a typed params struct that rejects
//! unknown fields, named inputs, and `run`. The engine (crate `forge`) owns everything around
//! it — hashing, caching, scheduling — and this crate knows nothing of that: a stage reads its
//! inputs, writes into its empty output directory, and returns a one-line summary.

mod contract;
pub mod data;
pub mod eval;
pub mod model;
pub mod train;

pub use contract::{
    Context, Device, Input, NoProgress, ParamError, Progress, Report, Stage, StageError, TypedStage,
};

/// Every built-in stage kind, in the order `forge --help` lists them.
pub fn registry() -> &'static [&'static dyn Stage] {
    &[
        &data::synth::Synth,
        &data::normalize::Normalize,
        &data::verify::Verify,
        &data::split::Split,
        &data::format::Format,
        &model::init::ModelInit,
        &train::sft::Sft,
        &eval::stage::Eval,
    ]
}

/// The built-in stage of `kind`, if there is one.
pub fn lookup(kind: &str) -> Option<&'static dyn Stage> {
    registry().iter().copied().find(|s| s.kind() == kind)
}
