//! Executes one stage: a shell command or a built-in, into a fresh directory under `cache/tmp/`,
//! then archives the finished output into the store and records the run.
//!
//! Runs on a worker thread. A command runs in its own process group and dies with forge
//! (PR_SET_PDEATHSIG), so a `kill -9` of forge leaves no stage writing behind its back.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use forge_stages::{Context, Device};
use serde_json::Value;

use crate::config::interp::Piece;
use crate::config::{Action, InputRef, StageDef, scalar_text};
use crate::hash::StatCache;
use crate::progress::{StageProgress, parse_progress_line};
use crate::store::{RunEntry, Store};
use crate::workspace::Workspace;

/// How many lines of a failed command's stderr are shown.
pub const TAIL_LINES: usize = 20;

/// Why a stage failed: a message, the tail of its stderr, and where the whole log is.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub tail: Vec<String>,
    pub log: Option<PathBuf>,
}

impl Failure {
    fn msg(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            tail: Vec::new(),
            log: None,
        }
    }
}

pub struct Env<'a> {
    pub ws: &'a Workspace,
    pub store: &'a Store,
    pub stat: &'a StatCache,
    /// Echo every output line of commands, prefixed with the stage name.
    pub verbose: bool,
    /// The GPU names jobs are given (`CUDA_VISIBLE_DEVICES` entries).
    pub gpu_names: &'a [String],
}

/// The GPUs stages may hold: `CUDA_VISIBLE_DEVICES` if set, else the machine's NVIDIA devices.
/// A machine with none still has one slot, so `resources: {gpu: 1}` stages never overlap there.
pub fn gpu_names() -> Vec<String> {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        let names: Vec<String> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if !names.is_empty() {
            return names;
        }
    }
    let count = fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.strip_prefix("nvidia")
                        .is_some_and(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_digit()))
                })
                .count()
        })
        .unwrap_or(0);
    (0..count.max(1)).map(|i| i.to_string()).collect()
}

/// Runs `def` and archives its output. `gpus` are indices into `env.gpu_names`.
pub fn execute(
    env: &Env<'_>,
    def: &StageDef,
    key: &str,
    gpus: &[usize],
    progress: &StageProgress,
) -> Result<RunEntry, Failure> {
    let tmp = env
        .store
        .tmp_dir(&def.name)
        .map_err(|e| Failure::msg(e.to_string()))?;
    let result = execute_in(env, def, key, gpus, progress, &tmp);
    let _ = crate::fsutil::remove_all(&tmp);
    result
}

fn execute_in(
    env: &Env<'_>,
    def: &StageDef,
    key: &str,
    gpus: &[usize],
    progress: &StageProgress,
    tmp: &Path,
) -> Result<RunEntry, Failure> {
    let out = tmp.join("out");
    fs::create_dir_all(&out).map_err(|e| Failure::msg(format!("{}: {e}", out.display())))?;
    let state = env
        .store
        .state_dir(key)
        .map_err(|e| Failure::msg(e.to_string()))?;
    let started = Instant::now();
    let summary = match &def.action {
        Action::Cmd(template) => {
            let params_file = tmp.join("params.json");
            fs::write(
                &params_file,
                serde_json::to_vec_pretty(&def.params).expect("params serialize"),
            )
            .map_err(|e| Failure::msg(format!("{}: {e}", params_file.display())))?;
            let cmd = template
                .render(|p| {
                    Ok::<_, ()>(match p {
                        Piece::Stage(s) => env.ws.artifact(s).display().to_string(),
                        Piece::Out => out.display().to_string(),
                        Piece::Var(v) => scalar_text(&def.vars[v]),
                        Piece::Param(p) => scalar_text(&def.params[p]),
                        Piece::Lit(l) => l.clone(),
                    })
                })
                .expect("rendering cannot fail");
            run_command(env, def, &cmd, tmp, &state, gpus, progress)?;
            String::new()
        }
        Action::Builtin(stage) => {
            let inputs: BTreeMap<String, PathBuf> = def
                .inputs
                .iter()
                .map(|(name, r)| {
                    let path = match r {
                        InputRef::Path(p) => env.ws.root.join(p),
                        InputRef::Stage { stage, sub } => {
                            env.ws.artifact(stage).join(sub.trim_start_matches('/'))
                        }
                    };
                    (name.clone(), path)
                })
                .collect();
            let cancel = AtomicBool::new(false);
            let seed = def
                .params
                .get("seed")
                .and_then(Value::as_u64)
                .unwrap_or_else(|| {
                    u64::from_le_bytes(
                        blake3::hash(def.name.as_bytes()).as_bytes()[..8]
                            .try_into()
                            .expect("8 bytes"),
                    )
                });
            let ctx = Context {
                stage: &def.name,
                inputs: &inputs,
                out: &out,
                state: &state,
                device: gpus.first().map_or(Device::Cpu, |&g| Device::Cuda(g)),
                progress,
                cancel: &cancel,
                seed,
            };
            match std::panic::catch_unwind(AssertUnwindSafe(|| stage.run(&def.params, &ctx))) {
                Ok(Ok(report)) => report.summary,
                Ok(Err(e)) => return Err(Failure::msg(e.to_string())),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    return Err(Failure::msg(format!("stage panicked: {what}")));
                }
            }
        }
    };
    let duration_s = started.elapsed().as_secs_f64();
    let metrics = read_metrics(&out.join("metrics.json"));
    let manifest = env
        .store
        .archive(&out, env.stat)
        .map_err(|e| Failure::msg(e.to_string()))?;
    let run = RunEntry {
        key: key.to_string(),
        stage: def.name.clone(),
        out: crate::hash::manifest_digest(&manifest),
        manifest,
        duration_s,
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        summary,
        metrics,
    };
    env.store
        .put_run(&run)
        .map_err(|e| Failure::msg(e.to_string()))?;
    env.store
        .drop_state(key)
        .map_err(|e| Failure::msg(e.to_string()))?;
    Ok(run)
}

fn run_command(
    env: &Env<'_>,
    def: &StageDef,
    cmd: &str,
    tmp: &Path,
    state: &Path,
    gpus: &[usize],
    progress: &StageProgress,
) -> Result<(), Failure> {
    let log_path = env.store.log_path(&def.name);
    let log = fs::File::create(&log_path)
        .map_err(|e| Failure::msg(format!("{}: {e}", log_path.display())))?;
    let log = Mutex::new(log);
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(cmd)
        .current_dir(&env.ws.root)
        .env("FORGE_OUT", tmp.join("out"))
        .env("FORGE_PARAMS", tmp.join("params.json"))
        .env("FORGE_STAGE", &def.name)
        .env("FORGE_STATE", state)
        .env("FORGE_ROOT", &env.ws.root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if !gpus.is_empty() {
        let names: Vec<&str> = gpus.iter().map(|&g| env.gpu_names[g].as_str()).collect();
        c.env("CUDA_VISIBLE_DEVICES", names.join(","));
    }
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                || libc::getppid() as u32 != parent
            {
                return Err(std::io::Error::other(
                    "forge exited before the stage started",
                ));
            }
            Ok(())
        });
    }
    let mut child = c
        .spawn()
        .map_err(|e| Failure::msg(format!("cannot start /bin/sh: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let tail = Mutex::new(VecDeque::with_capacity(TAIL_LINES));
    let status = std::thread::scope(|s| {
        s.spawn(|| {
            for_each_line(stdout, |line| {
                if let Some((done, total, msg)) = parse_progress_line(line) {
                    forge_stages::Progress::update(progress, done, total, msg);
                }
                log_line(&log, env.verbose, &def.name, line);
            })
        });
        s.spawn(|| {
            for_each_line(stderr, |line| {
                let mut t = tail.lock().expect("tail lock");
                if t.len() == TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line.to_string());
                drop(t);
                log_line(&log, env.verbose, &def.name, line);
            })
        });
        child.wait()
    });
    let status = status.map_err(|e| Failure::msg(format!("waiting for the command: {e}")))?;
    if status.success() {
        return Ok(());
    }
    let message = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => format!("command exited with status {code}"),
        (None, Some(sig)) => format!("command killed by signal {sig}"),
        _ => "command failed".to_string(),
    };
    Err(Failure {
        message,
        tail: tail.into_inner().expect("tail lock").into(),
        log: Some(log_path),
    })
}

fn for_each_line(r: impl Read, mut f: impl FnMut(&str)) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
        let line = String::from_utf8_lossy(&buf);
        f(line.trim_end_matches(['\n', '\r']));
        buf.clear();
    }
}

fn log_line(log: &Mutex<fs::File>, verbose: bool, stage: &str, line: &str) {
    let _ = writeln!(log.lock().expect("log lock"), "{line}");
    if verbose {
        eprintln!("[{stage}] {line}");
    }
}

/// The numeric leaves of a stage's `metrics.json`, flattened to dotted names.
pub fn read_metrics(path: &Path) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    if let Some(v) = fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    {
        flatten("", &v, &mut out);
    }
    out
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.insert(prefix.to_string(), f);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, x, out);
            }
        }
        _ => {}
    }
}
