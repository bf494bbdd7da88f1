//! The contract between the engine and a built-in stage.
//!
//! Stages implement [`TypedStage`] with their own params struct; the engine sees them through the
//! object-safe [`Stage`], which checks raw params against that struct before anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What a stage implements. `Params` must be `#[serde(deny_unknown_fields)]` with explicit
/// defaults, so that a typo in forge.yaml is an error and the resolved params (defaults filled in)
/// are what the stage key hashes.
pub trait TypedStage: Send + Sync + 'static {
    type Params: DeserializeOwned + Serialize;
    /// The name used in forge.yaml's `uses:`.
    const KIND: &'static str;
    /// Bump when the outputs change meaning for the same params and inputs.
    const VERSION: u32;
    /// The named inputs (`inputs:` in forge.yaml) this stage reads.
    const INPUTS: &'static [Input];
    /// One line for `forge --help`-style listings.
    const ABOUT: &'static str;

    fn run(&self, params: &Self::Params, ctx: &Context<'_>) -> Result<Report, StageError>;
}

/// A named input of a built-in stage.
#[derive(Debug, Clone, Copy)]
pub struct Input {
    pub name: &'static str,
    pub required: bool,
}

/// The engine's view of a built-in stage.
pub trait Stage: Send + Sync {
    fn kind(&self) -> &'static str;
    fn version(&self) -> u32;
    fn inputs(&self) -> &'static [Input];
    fn about(&self) -> &'static str;
    /// Checks `params` (a JSON object) against the stage's typed struct and returns them resolved:
    /// defaults filled in, in the struct's canonical form.
    fn check_params(&self, params: &Value) -> Result<Value, ParamError>;
    /// Runs the stage with params that passed [`Stage::check_params`].
    fn run(&self, params: &Value, ctx: &Context<'_>) -> Result<Report, StageError>;
}

impl<T: TypedStage> Stage for T {
    fn kind(&self) -> &'static str {
        T::KIND
    }
    fn version(&self) -> u32 {
        T::VERSION
    }
    fn inputs(&self) -> &'static [Input] {
        T::INPUTS
    }
    fn about(&self) -> &'static str {
        T::ABOUT
    }
    fn check_params(&self, params: &Value) -> Result<Value, ParamError> {
        let typed = parse_params::<T::Params>(params)?;
        serde_json::to_value(&typed).map_err(|e| ParamError {
            path: String::new(),
            message: e.to_string(),
        })
    }
    fn run(&self, params: &Value, ctx: &Context<'_>) -> Result<Report, StageError> {
        let typed =
            parse_params::<T::Params>(params).map_err(|e| StageError::Failed(e.to_string()))?;
        TypedStage::run(self, &typed, ctx)
    }
}

fn parse_params<P: DeserializeOwned>(params: &Value) -> Result<P, ParamError> {
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        ParamError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

/// Params that do not fit the stage's struct. `path` is the offending param (`rows`,
/// `optim.lr`), empty when the error is about the params as a whole.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("param `{path}`: ") })]
pub struct ParamError {
    pub path: String,
    pub message: String,
}

/// Where a stage computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA device ordinal, as seen through `CUDA_VISIBLE_DEVICES`.
    Cuda(usize),
}

/// Progress reporting: the engine draws it as the stage's progress line.
pub trait Progress: Sync {
    /// `done` of `total` steps (total unknown: `None`), with a short message (loss, tokens/s).
    fn update(&self, done: u64, total: Option<u64>, message: &str);
}

/// A progress sink that drops everything (for unit tests of stages).
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&self, _: u64, _: Option<u64>, _: &str) {}
}

/// Everything a stage may touch while it runs.
pub struct Context<'a> {
    /// The stage's name in forge.yaml (not its kind).
    pub stage: &'a str,
    /// Named input paths, read-only.
    pub inputs: &'a BTreeMap<String, PathBuf>,
    /// An empty directory; the stage writes only here (and `metrics.json` here when it has figures).
    pub out: &'a Path,
    /// Resumable state (checkpoints): a directory that outlives a killed run and is handed to the
    /// next run of the same stage key; the engine removes it once the stage has succeeded.
    pub state: &'a Path,
    pub device: Device,
    pub progress: &'a dyn Progress,
    pub cancel: &'a AtomicBool,
    /// A seed stable across machines for the same stage name; stages with a `seed` param use that.
    pub seed: u64,
}

impl Context<'_> {
    /// The path of input `name`, or an error naming it.
    pub fn input(&self, name: &str) -> Result<&Path, StageError> {
        self.inputs
            .get(name)
            .map(PathBuf::as_path)
            .ok_or_else(|| StageError::MissingInput(name.to_string()))
    }

    /// Err(Cancelled) once the engine asked the stage to stop; call it between units of work.
    pub fn check_cancelled(&self) -> Result<(), StageError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// `Context::state` for unit tests of stages that keep no resumable state.
#[cfg(test)]
pub(crate) fn unused_state() -> &'static Path {
    Path::new("/nonexistent/forge-test-state")
}

/// What a finished stage says about itself, for the `ran` line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub summary: String,
}

/// Why a stage failed.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("{0}")]
    Failed(String),
    #[error("cancelled")]
    Cancelled,
}

impl StageError {
    /// An I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StageError::Io {
            path: path.into(),
            source,
        }
    }
}
