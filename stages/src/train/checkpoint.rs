//! Resumable training state in the stage's state directory ([`crate::Context::state`]), which
//! outlives a killed run and is handed to the next run of the same stage key.
//!
//! A checkpoint is everything the rest of the run depends on: the trained tensors, AdamW's
//! moments, the step, the best adapter so far with its dev loss, the tokens seen and the metrics
//! rows written so far. With the data order and dropout masks functions of (seed, step), a run
//! resumed from it computes what the uninterrupted run would have, bit for bit on a CPU.
//!
//! Each checkpoint is a directory `step-NNNNNNNN/` (`tensors.safetensors`, `state.json`) written
//! under a `.tmp` name and renamed into place, so a kill at any instant leaves either the previous
//! checkpoint or the new one complete; older checkpoints are removed after the rename.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::trainer::Trainer;
use crate::StageError;
use crate::model::load;

const TENSORS_FILE: &str = "tensors.safetensors";
const STATE_FILE: &str = "state.json";
const PREFIX: &str = "step-";

/// The lowest dev loss so far and the step it was measured after.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub step: u64,
    pub dev_loss: f64,
}

/// The non-tensor part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// Input tokens trained on (padding excluded).
    pub tokens_seen: u64,
    pub best: Option<Best>,
    /// The `metrics.jsonl` rows so far.
    pub metrics: Vec<Value>,
    /// The trained tensors' names: a checkpoint of another trainable set is not resumed.
    pub names: Vec<String>,
}

/// A checkpoint read back: its state and, when a dev loss was measured, the best adapter's values.
#[derive(Debug)]
pub struct Restored {
    pub state: TrainState,
    pub best_values: Option<Vec<Tensor>>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StageError + '_ {
    move |e| StageError::io(path, e)
}

/// Writes the trainer's tensors and moments, `state` and the best adapter's values as the
/// checkpoint of `state.step` in `dir`, then removes older ones. Returns its directory.
pub fn save(
    dir: &Path,
    trainer: &Trainer,
    state: &TrainState,
    best_values: Option<&[Tensor]>,
) -> Result<PathBuf, StageError> {
    let name = format!("{PREFIX}{:08}", state.step);
    let tmp = dir.join(format!("{name}.tmp"));
    let done = dir.join(&name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let mut tensors = Vec::new();
    for (name, slot) in trainer.names.iter().zip(&trainer.optimizer.slots) {
        tensors.push((
            format!("param/{name}"),
            load::lazy(slot.var.as_tensor(), DType::F32),
        ));
        tensors.push((format!("m/{name}"), load::lazy(&slot.m, DType::F32)));
        tensors.push((format!("v/{name}"), load::lazy(&slot.v, DType::F32)));
    }
    for (name, t) in trainer.names.iter().zip(best_values.unwrap_or_default()) {
        tensors.push((format!("best/{name}"), load::lazy(t, DType::F32)));
    }
    load::save_file(&tmp.join(TENSORS_FILE), tensors)?;
    let state_path = tmp.join(STATE_FILE);
    let text = serde_json::to_vec(state).expect("the state serializes");
    fs::write(&state_path, text).map_err(io(&state_path))?;
    fs::rename(&tmp, &done).map_err(io(&done))?;
    for (step, old) in checkpoints(dir)? {
        if step != state.step {
            fs::remove_dir_all(&old).map_err(io(&old))?;
        }
    }
    Ok(done)
}

/// The complete checkpoints in `dir` (step, path), oldest first; leftovers of interrupted writes
/// are not among them.
fn checkpoints(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StageError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StageError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        if let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Loads the newest checkpoint in `dir` into `trainer` (tensors and moments) and returns its state;
/// `None` when there is none. A checkpoint of another trainable set is an error.
pub fn restore(dir: &Path, trainer: &mut Trainer) -> Result<Option<Restored>, StageError> {
    let Some((_, path)) = checkpoints(dir)?.pop() else {
        return Ok(None);
    };
    let state_path = path.join(STATE_FILE);
    let text = fs::read(&state_path).map_err(io(&state_path))?;
    let state: TrainState = serde_json::from_slice(&text).map_err(|e| {
        StageError::Failed(format!(
            "{}: not a checkpoint state: {e}",
            state_path.display()
        ))
    })?;
    let other = || {
        StageError::Failed(format!(
            "{}: the checkpoint trains other tensors than this run",
            path.display()
        ))
    };
    if state.names != trainer.names {
        return Err(other());
    }
    let tensors_path = path.join(TENSORS_FILE);
    let mut tensors = load::load_file(&tensors_path, None, trainer.decoder.device())?;
    let mut take = |key: String| {
        tensors.remove(&key).ok_or_else(|| {
            StageError::Failed(format!("{}: `{key}` is missing", tensors_path.display()))
        })
    };
    let mut loaded = Vec::with_capacity(trainer.names.len());
    for (name, slot) in trainer.names.iter().zip(&trainer.optimizer.slots) {
        let [p, m, v] = ["param", "m", "v"].map(|kind| take(format!("{kind}/{name}")));
        let (p, m, v) = (p?, m?, v?);
        if [&p, &m, &v].iter().any(|t| t.dims() != slot.var.dims()) {
            return Err(other());
        }
        loaded.push((p, m, v));
    }
    for (slot, (p, m, v)) in trainer.optimizer.slots.iter_mut().zip(loaded) {
        slot.var
            .set(&p)
            .map_err(|e| StageError::Failed(format!("{}: {e}", tensors_path.display())))?;
        slot.m = m;
        slot.v = v;
    }
    trainer.optimizer.steps = state.step;
    let best_values = match state.best {
        Some(_) => Some(
            trainer
                .names
                .iter()
                .map(|name| take(format!("best/{name}")))
                .collect::<Result<_, _>>()?,
        ),
        None => None,
    };
    Ok(Some(Restored { state, best_values }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::trainer::tests::{config, fixture_model, micro, rows};

    fn bits(trainer: &Trainer) -> Vec<Vec<u32>> {
        trainer
            .optimizer
            .slots
            .iter()
            .flat_map(|s| [s.var.as_tensor(), &s.m, &s.v])
            .map(|t| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_restored_trainer_continues_bit_for_bit() {
        let mut cfg = config();
        cfg.lora.dropout = 0.3;
        let batches: Vec<_> = rows().chunks(2).map(micro).collect();
        let run = |trainer: &mut Trainer, steps: std::ops::Range<u64>| {
            for step in steps {
                trainer.step(&batches, 5e-3, step).unwrap();
            }
        };
        let mut first = Trainer::new(fixture_model(), &cfg).unwrap();
        run(&mut first, 0..3);
        let dir = tempfile::tempdir().unwrap();
        let state = TrainState {
            step: 3,
            tokens_seen: 30,
            best: Some(Best {
                step: 2,
                dev_loss: 1.25,
            }),
            metrics: vec![serde_json::json!({"step": 1, "loss": 4.5})],
            names: first.names.clone(),
        };
        let best = first.values().unwrap();
        save(dir.path(), &first, &state, Some(&best)).unwrap();
        // A later checkpoint replaces the earlier one; an interrupted write is ignored.
        std::fs::create_dir(dir.path().join("step-00000009.tmp")).unwrap();
        run(&mut first, 3..5);

        let mut second = Trainer::new(fixture_model(), &cfg).unwrap();
        assert_ne!(bits(&second), bits(&first));
        let restored = restore(dir.path(), &mut second).unwrap().unwrap();
        assert_eq!(restored.state, state);
        assert_eq!(second.optimizer.steps, 3);
        let best_back = restored.best_values.unwrap();
        assert_eq!(best_back.len(), best.len());
        run(&mut second, 3..5);
        assert_eq!(bits(&second), bits(&first));

        let state5 = TrainState { step: 5, ..state };
        save(dir.path(), &second, &state5, None).unwrap();
        let names: Vec<_> = checkpoints(dir.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(names, [5]);
        // A checkpoint of another trainable set is refused.
        let mut other_cfg = cfg.clone();
        other_cfg.token_rows = vec![7];
        let mut other = Trainer::new(fixture_model(), &other_cfg).unwrap();
        let err = restore(dir.path(), &mut other).unwrap_err().to_string();
        assert!(err.contains("other tensors"), "{err}");
    }
}
