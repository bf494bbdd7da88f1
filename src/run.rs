//! The build loop. For each selected stage, upstream first: hash its inputs and compute its key
//! (skip if fresh) → restore from the run cache if the key was seen → otherwise execute on a
//! worker and archive. The cache is a layer in front of the executor, and every finished stage is
//! recorded in forge.lock at once, so nothing finished is lost if the run dies.
//!
//! Keys are computed when a stage's upstream has finished, from the upstream's actual output hash:
//! a rerun stage whose output is byte-identical leaves its descendants fresh (early cutoff).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::mpsc;

use crate::config::{InputRef, Pipeline, StageDef};
use crate::exec::{self, Env, Failure};
use crate::gc::human;
use crate::graph::Dag;
use crate::hash::{HashError, StatCache, content_hash};
use crate::lockfile::{LockEntry, LockError, LockFile};
use crate::plan::{Reason, action_identity, reasons, stage_key};
use crate::progress::Ui;
use crate::remote::{Remote, RemoteError, Transfer};
use crate::store::{RunEntry, Store, StoreError, clear_artifact_leftovers};
use crate::workspace::Workspace;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Hash(#[from] HashError),
    /// Bad command-line input (exit code 2).
    #[error("{0}")]
    Usage(String),
}

/// Which stages `--force` re-executes.
#[derive(Debug, Clone, Default)]
pub enum Force {
    #[default]
    None,
    All,
    Stages(BTreeSet<String>),
}

impl Force {
    fn applies(&self, stage: &str) -> bool {
        match self {
            Force::None => false,
            Force::All => true,
            Force::Stages(s) => s.contains(stage),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub targets: Vec<String>,
    pub jobs: usize,
    pub dry_run: bool,
    pub force: Force,
    pub keep_going: bool,
    pub verbose: bool,
    /// Push every stage that runs to the remote.
    pub push: bool,
    /// `forge pull`: restore or pull what the caches hold, execute nothing.
    pub pull_only: bool,
}

/// How each stage ended up.
#[derive(Debug, Default)]
pub struct RunSummary {
    pub ran: usize,
    pub restored: usize,
    pub pulled: usize,
    /// `forge pull` only: stages neither cache could supply.
    pub missing: usize,
    pub fresh: usize,
    pub failed: usize,
    pub skipped: usize,
}

#[derive(Debug, Clone)]
enum Done {
    /// Finished or fresh, with this output hash.
    Out(String),
    /// Would run (dry run / status): output unknown.
    Stale,
    Failed,
    Skipped,
}

/// A stage's state before anything runs.
enum Eval {
    Fresh {
        out: String,
    },
    /// `key` is None when an upstream is stale, so the inputs are not known yet.
    Stale {
        key: Option<String>,
        inputs: BTreeMap<String, String>,
        reasons: Vec<Reason>,
    },
}

/// What a worker sends back when its stage is done.
struct Finished {
    name: String,
    gpus: Vec<usize>,
    inputs: BTreeMap<String, String>,
    result: Result<RunEntry, Failure>,
    /// The push to the remote, when one was asked for and the stage succeeded.
    pushed: Option<Result<Transfer, RemoteError>>,
}

/// A stage waiting for a worker: its definition, key, input hashes and why it runs.
type Job<'p> = (&'p StageDef, String, BTreeMap<String, String>, Vec<Reason>);

pub struct Engine<'a> {
    pub ws: &'a Workspace,
    pub pipeline: &'a Pipeline,
    pub dag: &'a Dag,
    pub store: Store,
    pub stat: StatCache,
    pub lock: LockFile,
    pub remote: Option<Remote>,
}

/// What `forge status` says about one stage.
#[derive(Debug, Clone)]
pub struct StageStatus {
    pub stage: String,
    pub state: &'static str,
    pub reasons: Vec<Reason>,
    /// The run cache holds this stage's output for its current key.
    pub restorable: bool,
    /// The remote holds this stage's output for its current key.
    pub on_remote: bool,
}

impl<'a> Engine<'a> {
    pub fn open(
        ws: &'a Workspace,
        pipeline: &'a Pipeline,
        dag: &'a Dag,
        remote: Option<Remote>,
    ) -> Result<Engine<'a>, EngineError> {
        Ok(Engine {
            remote,
            store: Store::open(&ws.cache)?,
            stat: StatCache::load(&ws.cache.join("stat-cache")),
            lock: LockFile::read(&ws.lockfile)?,
            ws,
            pipeline,
            dag,
        })
    }

    fn evaluate(
        &self,
        lock: &LockFile,
        def: &StageDef,
        done: &HashMap<String, Done>,
        forced: bool,
    ) -> Result<Eval, EngineError> {
        let mut known = BTreeMap::new();
        let mut hashes = BTreeMap::new();
        for (name, r) in &def.inputs {
            let h = match r {
                InputRef::Path(p) => Some(content_hash(&self.ws.root.join(p), &self.stat)?),
                InputRef::Stage { stage, sub } => match done.get(stage) {
                    Some(Done::Out(h)) => Some(format!("{h}{sub}")),
                    _ => None,
                },
            };
            if let Some(h) = &h {
                hashes.insert(name.clone(), h.clone());
            }
            known.insert(name.clone(), h);
        }
        let entry = lock.stages.get(&def.name);
        if hashes.len() < known.len() {
            return Ok(Eval::Stale {
                key: None,
                inputs: hashes,
                reasons: reasons(def, entry, &known),
            });
        }
        let key = stage_key(def, &hashes);
        let mut why = Vec::new();
        if forced {
            why.push(Reason::Forced);
        }
        match entry {
            Some(e) if e.key == key => {
                let dir = self.ws.artifact(&def.name);
                let path = format!("artifacts/{}", def.name);
                if !dir.is_dir() {
                    why.push(Reason::OutputMissing { path });
                } else if content_hash(&dir, &self.stat).ok().as_ref() != Some(&e.out) {
                    why.push(Reason::OutputModified { path });
                }
                if why.is_empty() {
                    return Ok(Eval::Fresh { out: e.out.clone() });
                }
            }
            _ => {
                let mut r = reasons(def, entry, &known);
                if r.is_empty() {
                    r.push(Reason::KeyChanged);
                }
                why.extend(r);
            }
        }
        Ok(Eval::Stale {
            key: Some(key),
            inputs: hashes,
            reasons: why,
        })
    }

    /// Records a finished or restored stage in forge.lock (written at once, atomically).
    fn record(
        &self,
        lock: &mut LockFile,
        def: &StageDef,
        inputs: BTreeMap<String, String>,
        run: &RunEntry,
        prev: &mut Option<LockFile>,
    ) -> Result<(), EngineError> {
        if let Some(before) = prev.take()
            && !before.stages.is_empty()
        {
            before.write(&self.ws.cache.join("prev.lock"))?;
        }
        let (uses, stage_version, cmd) = action_identity(def);
        lock.stages.insert(
            def.name.clone(),
            LockEntry {
                key: run.key.clone(),
                uses,
                stage_version,
                cmd,
                params: def.params.clone(),
                vars: def.vars.clone(),
                inputs,
                out: run.out.clone(),
                duration_s: run.duration_s,
                metrics: run.metrics.clone(),
            },
        );
        let stages = &self.pipeline.stages;
        lock.stages.retain(|k, _| stages.contains_key(k));
        lock.write(&self.ws.lockfile)?;
        Ok(())
    }

    /// Runs the selected stages. Returns how each ended; stage failures are in the summary, not
    /// errors.
    pub fn run(&mut self, opts: &RunOptions, ui: &Ui) -> Result<RunSummary, EngineError> {
        let selected = self.dag.select(&opts.targets).map_err(EngineError::Usage)?;
        if let Force::Stages(s) = &opts.force
            && let Some(bad) = s.iter().find(|s| !self.pipeline.stages.contains_key(*s))
        {
            return Err(EngineError::Usage(format!(
                "--force={bad}: no stage `{bad}`"
            )));
        }
        let gpu_names = exec::gpu_names();
        for name in &selected {
            let need = self.pipeline.stages[name].gpus as usize;
            if need > gpu_names.len() {
                return Err(EngineError::Usage(format!(
                    "stage `{name}` needs {need} GPUs; this machine offers {}",
                    gpu_names.len()
                )));
            }
        }
        if !opts.dry_run {
            self.store.clear_tmp()?;
            clear_artifact_leftovers(&self.ws.artifacts)?;
        }
        let mut lock = std::mem::take(&mut self.lock);
        let mut prev = Some(lock.clone());
        let mut summary = RunSummary::default();
        let mut done: HashMap<String, Done> = HashMap::new();
        let mut pending: VecDeque<&str> = selected.iter().map(String::as_str).collect();
        let mut queue: VecDeque<Job> = VecDeque::new();
        let mut free_gpus = vec![true; gpu_names.len()];
        let mut running = 0usize;
        let mut stop = false;
        let jobs = opts.jobs.max(1);
        let (tx, rx) = mpsc::channel::<Finished>();
        let mut why_ran: HashMap<String, Vec<Reason>> = HashMap::new();

        let result = std::thread::scope(|scope| -> Result<(), EngineError> {
            loop {
                // Decide every stage whose upstream is decided.
                let mut still = VecDeque::new();
                while let Some(name) = pending.pop_front() {
                    let def = &self.pipeline.stages[name];
                    if def.upstream.iter().any(|u| !done.contains_key(u)) {
                        still.push_back(name);
                        continue;
                    }
                    if let Some(bad) = def
                        .upstream
                        .iter()
                        .find(|u| matches!(done[*u], Done::Failed | Done::Skipped))
                    {
                        ui.result("skipped", name, &format!("upstream `{bad}` did not finish"));
                        done.insert(name.to_string(), Done::Skipped);
                        summary.skipped += 1;
                        continue;
                    }
                    if stop {
                        ui.result("skipped", name, "an earlier stage failed");
                        done.insert(name.to_string(), Done::Skipped);
                        summary.skipped += 1;
                        continue;
                    }
                    let forced = opts.force.applies(name);
                    match self.evaluate(&lock, def, &done, forced) {
                        Err(e) => {
                            ui.result("failed", name, &e.to_string());
                            done.insert(name.to_string(), Done::Failed);
                            summary.failed += 1;
                            stop |= !opts.keep_going;
                        }
                        Ok(Eval::Fresh { out }) => {
                            ui.result("fresh", name, "");
                            done.insert(name.to_string(), Done::Out(out));
                            summary.fresh += 1;
                        }
                        Ok(Eval::Stale {
                            key: None, reasons, ..
                        }) => {
                            ui.result("would run", name, &join(&reasons));
                            done.insert(name.to_string(), Done::Stale);
                        }
                        Ok(Eval::Stale {
                            key: Some(key),
                            inputs,
                            reasons,
                        }) => {
                            let cached = (!forced)
                                .then(|| self.store.get_run(&key))
                                .flatten()
                                .filter(|run| self.store.verify_run(run, &self.stat));
                            match (cached, opts.dry_run) {
                                (Some(run), true) => {
                                    ui.result("would restore", name, &join(&reasons));
                                    done.insert(name.to_string(), Done::Out(run.out));
                                }
                                (Some(run), false) => {
                                    self.store
                                        .materialize(&run.manifest, &self.ws.artifact(name))?;
                                    self.record(&mut lock, def, inputs, &run, &mut prev)?;
                                    ui.result("restored", name, &because(&reasons));
                                    done.insert(name.to_string(), Done::Out(run.out));
                                    summary.restored += 1;
                                }
                                (None, true) => {
                                    let on_remote = self
                                        .remote
                                        .as_ref()
                                        .is_some_and(|r| r.has_run(&key).unwrap_or(false));
                                    let verb = if on_remote { "would pull" } else { "would run" };
                                    ui.result(verb, name, &join(&reasons));
                                    done.insert(name.to_string(), Done::Stale);
                                }
                                (None, false) => match (!forced)
                                    .then(|| self.pull(name, &key, ui))
                                    .flatten()
                                {
                                    Some((run, moved)) => {
                                        self.store
                                            .materialize(&run.manifest, &self.ws.artifact(name))?;
                                        self.record(&mut lock, def, inputs, &run, &mut prev)?;
                                        let detail = format!(
                                            "{} objects, {}  {}",
                                            moved.objects,
                                            human(moved.bytes),
                                            because(&reasons)
                                        );
                                        ui.result("pulled", name, &detail);
                                        done.insert(name.to_string(), Done::Out(run.out));
                                        summary.pulled += 1;
                                    }
                                    None if opts.pull_only => {
                                        ui.result(
                                            "missing",
                                            name,
                                            "in neither the local nor the remote cache",
                                        );
                                        done.insert(name.to_string(), Done::Stale);
                                        summary.missing += 1;
                                    }
                                    None => queue.push_back((def, key, inputs, reasons)),
                                },
                            }
                        }
                    }
                }
                pending = still;

                if stop {
                    for (def, ..) in queue.drain(..) {
                        ui.result("skipped", &def.name, "an earlier stage failed");
                        done.insert(def.name.clone(), Done::Skipped);
                        summary.skipped += 1;
                    }
                }
                // Start what fits: at most `jobs` at once, GPUs never shared.
                while running < jobs {
                    let Some(pos) = queue.iter().position(|(d, ..)| {
                        free_gpus.iter().filter(|f| **f).count() >= d.gpus as usize
                    }) else {
                        break;
                    };
                    let (def, key, inputs, reasons) = queue.remove(pos).expect("position is valid");
                    let gpus: Vec<usize> = (0..free_gpus.len())
                        .filter(|&i| free_gpus[i])
                        .take(def.gpus as usize)
                        .collect();
                    for &g in &gpus {
                        free_gpus[g] = false;
                    }
                    why_ran.insert(def.name.clone(), reasons);
                    let tx = tx.clone();
                    let env = Env {
                        ws: self.ws,
                        store: &self.store,
                        stat: &self.stat,
                        verbose: opts.verbose,
                        gpu_names: &gpu_names,
                    };
                    let progress = ui.start(&def.name);
                    let push = opts.push.then_some(self.remote.as_ref()).flatten();
                    let store = &self.store;
                    scope.spawn(move || {
                        let result = exec::execute(&env, def, &key, &gpus, &progress);
                        let pushed = match (&result, push) {
                            (Ok(run), Some(remote)) => Some(remote.push_run(run, store, &progress)),
                            _ => None,
                        };
                        progress.finish();
                        let _ = tx.send(Finished {
                            name: def.name.clone(),
                            gpus,
                            inputs,
                            result,
                            pushed,
                        });
                    });
                    running += 1;
                }
                if running == 0 {
                    if pending.is_empty() && queue.is_empty() {
                        return Ok(());
                    }
                    // Nothing can start and nothing runs: only possible if a stage waits for a
                    // stage outside the selection, which `select` rules out.
                    unreachable!("scheduler stalled with pending stages");
                }
                let Finished {
                    name,
                    gpus,
                    inputs,
                    result,
                    pushed,
                } = rx.recv().expect("a worker is running");
                match pushed {
                    Some(Err(e)) => warn_remote(ui, &e),
                    Some(Ok(t)) if t.objects > 0 => ui.note(&format!(
                        "pushed {name}: {} objects, {}",
                        t.objects,
                        human(t.bytes)
                    )),
                    _ => {}
                }
                running -= 1;
                for g in gpus {
                    free_gpus[g] = true;
                }
                let def = &self.pipeline.stages[&name];
                match result {
                    Ok(run) => {
                        self.store
                            .materialize(&run.manifest, &self.ws.artifact(&name))?;
                        self.record(&mut lock, def, inputs, &run, &mut prev)?;
                        let why = why_ran.remove(&name).unwrap_or_default();
                        let detail = [
                            format!("{:.1}s", run.duration_s),
                            run.summary.clone(),
                            because(&why),
                        ]
                        .into_iter()
                        .filter(|p| !p.is_empty())
                        .collect::<Vec<_>>()
                        .join("  ");
                        ui.result("ran", &name, &detail);
                        done.insert(name, Done::Out(run.out));
                        summary.ran += 1;
                    }
                    Err(f) => {
                        ui.result("failed", &name, &f.message);
                        show_failure(ui, &self.ws.root, &f);
                        done.insert(name, Done::Failed);
                        summary.failed += 1;
                        stop |= !opts.keep_going;
                    }
                }
            }
        });
        self.lock = lock;
        self.stat.save()?;
        result?;
        Ok(summary)
    }

    /// Pulls `key` from the remote, if there is one and it has the run. Problems are warnings: the
    /// stage then runs here.
    fn pull(&self, stage: &str, key: &str, ui: &Ui) -> Option<(RunEntry, Transfer)> {
        let remote = self.remote.as_ref()?;
        let progress = ui.start(&format!("{stage} ↓"));
        let pulled = remote.pull_run(key, &self.store, &self.stat, &progress);
        progress.finish();
        match pulled {
            Ok(found) => found,
            Err(e) => {
                warn_remote(ui, &e);
                None
            }
        }
    }

    /// `forge push`: the recorded output of each selected stage, with its objects.
    pub fn push(&self, targets: &[String], ui: &Ui) -> Result<RunSummary, EngineError> {
        let remote = self.remote.as_ref().ok_or_else(|| {
            EngineError::Usage(
                "no remote: set `remote:` in forge.yaml, --remote URL or FORGE_REMOTE".into(),
            )
        })?;
        let mut summary = RunSummary::default();
        for name in self.dag.select(targets).map_err(EngineError::Usage)? {
            let Some(run) = self
                .lock
                .stages
                .get(&name)
                .and_then(|e| self.store.get_run(&e.key))
            else {
                ui.result("missing", &name, "never ran here (nothing to push)");
                summary.missing += 1;
                continue;
            };
            let progress = ui.start(&format!("{name} ↑"));
            let pushed = remote.push_run(&run, &self.store, &progress);
            progress.finish();
            match pushed {
                Ok(t) => ui.result(
                    "pushed",
                    &name,
                    &format!("{} objects, {}", t.objects, human(t.bytes)),
                ),
                Err(e) => {
                    ui.result("failed", &name, &e.to_string());
                    summary.failed += 1;
                }
            }
        }
        Ok(summary)
    }

    /// What `forge status` reports for every stage, without running anything.
    pub fn status(&self) -> Result<Vec<StageStatus>, EngineError> {
        let mut done = HashMap::new();
        let mut out = Vec::new();
        for name in self.dag.order() {
            let def = &self.pipeline.stages[name];
            let (d, reasons, restorable, on_remote) =
                match self.evaluate(&self.lock, def, &done, false)? {
                    Eval::Fresh { out } => (Done::Out(out), Vec::new(), false, false),
                    Eval::Stale {
                        key: None, reasons, ..
                    } => (Done::Stale, reasons, false, false),
                    Eval::Stale {
                        key: Some(key),
                        reasons,
                        ..
                    } => match self.store.get_run(&key) {
                        Some(run) => (Done::Out(run.out), reasons, true, false),
                        None => {
                            let on_remote = match self.remote.as_ref().map(|r| r.has_run(&key)) {
                                Some(Ok(yes)) => yes,
                                Some(Err(e)) => {
                                    if !matches!(e, RemoteError::Down) {
                                        eprintln!("warning: remote: {e}; continuing without it");
                                    }
                                    false
                                }
                                None => false,
                            };
                            (Done::Stale, reasons, false, on_remote)
                        }
                    },
                };
            let state = match (&d, self.lock.stages.contains_key(name)) {
                (_, false) => "never-run",
                (Done::Out(_), true) if reasons.is_empty() => "fresh",
                _ => "stale",
            };
            out.push(StageStatus {
                stage: name.clone(),
                state,
                reasons,
                restorable,
                on_remote,
            });
            done.insert(name.clone(), d);
        }
        self.stat.save()?;
        Ok(out)
    }
}

fn join(reasons: &[Reason]) -> String {
    reasons
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The reasons worth showing on a result line (`never ran` goes without saying).
fn because(reasons: &[Reason]) -> String {
    let shown: Vec<&Reason> = reasons.iter().filter(|r| **r != Reason::NeverRan).collect();
    if shown.is_empty() {
        String::new()
    } else {
        format!(
            "({})",
            shown
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    }
}

/// Remote trouble never fails a run: say it once and carry on locally.
fn warn_remote(ui: &Ui, e: &RemoteError) {
    if !matches!(e, RemoteError::Down) {
        ui.note(&format!("warning: remote: {e}; continuing without it"));
    }
}

fn show_failure(ui: &Ui, root: &Path, f: &Failure) {
    let mut text = String::new();
    for line in &f.tail {
        text.push_str(&format!("  | {line}\n"));
    }
    if let Some(log) = &f.log {
        let shown = log.strip_prefix(root).unwrap_or(log);
        text.push_str(&format!("  (full log: {})", shown.display()));
    }
    if !text.is_empty() {
        ui.note(text.trim_end());
    }
}
