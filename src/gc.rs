//! `forge gc`: frees the store of what nothing needs any more.
//!
//! Kept: the run-cache entries of every stage in forge.lock, every entry younger than the keep
//! window (so reverting an edit still restores instantly), and the objects those entries name.
//! Everything else under `cache/runs` and `cache/objects` goes, with `cache/tmp` leftovers and
//! the resumable state (`cache/state`) of unfinished runs last touched before the keep window.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::config::Pipeline;
use crate::lockfile::LockFile;
use crate::store::Store;
use crate::workspace::Workspace;

pub fn collect(ws: &Workspace, pipeline: &Pipeline, keep_days: f64) -> anyhow::Result<String> {
    let store = Store::open(&ws.cache)?;
    let lock = LockFile::read(&ws.lockfile)?;
    let locked: HashSet<&str> = lock
        .stages
        .iter()
        .filter(|(s, _)| pipeline.stages.contains_key(*s))
        .map(|(_, e)| e.key.as_str())
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let horizon = now.saturating_sub((keep_days.max(0.0) * 86_400.0) as u64);

    let mut live: HashSet<String> = HashSet::new();
    let (mut runs_removed, mut freed) = (0usize, 0u64);
    for (path, run) in store.runs()? {
        match run {
            Some(run) if locked.contains(run.key.as_str()) || run.created > horizon => {
                live.extend(run.manifest.into_iter().map(|e| e.hash));
            }
            _ => {
                freed += size_of(&path);
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                runs_removed += 1;
            }
        }
    }
    let mut objects_removed = 0usize;
    let objects = ws.cache.join("objects");
    for shard in fs::read_dir(&objects).with_context(|| format!("reading {}", objects.display()))? {
        let shard = shard?.path();
        let prefix = shard
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for obj in fs::read_dir(&shard).with_context(|| format!("reading {}", shard.display()))? {
            let obj = obj?.path();
            let rest = obj
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !live.contains(&format!("{prefix}{rest}")) {
                freed += size_of(&obj);
                fs::remove_file(&obj).with_context(|| format!("removing {}", obj.display()))?;
                objects_removed += 1;
            }
        }
        let _ = fs::remove_dir(&shard);
    }
    let mut states_removed = 0usize;
    let states = ws.cache.join("state");
    if states.is_dir() {
        for state in
            fs::read_dir(&states).with_context(|| format!("reading {}", states.display()))?
        {
            let state = state?.path();
            let touched = fs::metadata(&state)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            if touched <= horizon {
                freed += dir_size(&state);
                fs::remove_dir_all(&state)
                    .with_context(|| format!("removing {}", state.display()))?;
                states_removed += 1;
            }
        }
    }
    let tmp = ws.cache.join("tmp");
    freed += dir_size(&tmp);
    store.clear_tmp()?;
    Ok(format!(
        "gc: removed {runs_removed} run-cache entries, {objects_removed} objects and \
         {states_removed} unfinished runs' state, freed {}",
        human(freed)
    ))
}

fn size_of(p: &Path) -> u64 {
    fs::symlink_metadata(p).map_or(0, |m| m.len())
}

fn dir_size(p: &Path) -> u64 {
    let Ok(items) = fs::read_dir(p) else {
        return size_of(p);
    };
    items
        .filter_map(Result::ok)
        .map(|e| dir_size(&e.path()))
        .sum()
}

/// Bytes in binary units: `1.5 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
