//! The remote cache: the local store's layout (`objects/ab/cdef…`, `runs/<key>.json`) behind a
//! URL, so a stage one machine ran is pulled instead of rerun on another.
//!
//! Backends (`file://`, `http(s)://`, `s3://`) only move bytes; everything about trust is here:
//! objects go up before the run entry that names them (a run entry is never visible without its
//! objects), everything pulled is re-hashed before it enters the local store, and a pulled
//! manifest whose paths could escape the stage's output directory is refused. Transient errors
//! are retried with backoff; a remote that stays unreachable is switched off for the rest of the
//! command with one warning, and work goes on locally.

mod file;
mod http;
mod s3;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rayon::prelude::*;

use crate::hash::{Entry, StatCache, manifest_digest};
use crate::store::{RunEntry, Store, StoreError};

/// Parallel transfers per command.
const PARALLEL: usize = 8;
/// Waits between attempts of a transient failure.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_millis(800),
    Duration::from_millis(2000),
];

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Worth retrying: connection refused or reset, timeout, 5xx.
    #[error("{url}: {message}")]
    Transient { url: String, message: String },
    #[error("{url}: {message}")]
    Permanent { url: String, message: String },
    #[error("remote object {hash} is corrupt (its bytes hash to {got}); not used")]
    Corrupt { hash: String, got: String },
    #[error("remote run entry {key} is unsafe or malformed: {why}; not used")]
    BadManifest { key: String, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "unsupported remote `{0}`: expected file:///PATH, http(s)://HOST/PREFIX or s3://BUCKET/PREFIX"
    )]
    Url(String),
    #[error("the remote was unreachable earlier in this command; not tried again")]
    Down,
}

impl RemoteError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RemoteError + '_ {
        move |source| RemoteError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What a backend must do: move whole objects by path, streaming files.
trait Backend: Send + Sync {
    /// Small objects (run entries): None when absent.
    fn get_bytes(&self, path: &str) -> Result<Option<Vec<u8>>, RemoteError>;
    /// Streams the object into `dest`; false when absent.
    fn get_file(&self, path: &str, dest: &Path) -> Result<bool, RemoteError>;
    fn exists(&self, path: &str) -> Result<bool, RemoteError>;
    /// Streams `src` to `path`. Writers of one path always write the same bytes (objects are
    /// content-addressed; a key's run entry differs only for a nondeterministic stage, and then
    /// either complete entry is valid), so a lost race is harmless.
    fn put_file(&self, path: &str, src: &Path) -> Result<(), RemoteError>;
    fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<(), RemoteError>;
}

pub struct Remote {
    url: String,
    backend: Box<dyn Backend>,
    down: AtomicBool,
}

/// What a push or pull moved.
#[derive(Debug, Default)]
pub struct Transfer {
    pub objects: usize,
    pub bytes: u64,
}

fn object_path(hash: &str) -> String {
    format!(
        "objects/{}/{}",
        &hash[..2.min(hash.len())],
        &hash[2.min(hash.len())..]
    )
}

fn run_path(key: &str) -> String {
    format!("runs/{key}.json")
}

impl Remote {
    pub fn open(url: &str) -> Result<Remote, RemoteError> {
        let backend: Box<dyn Backend> = if let Some(path) = url.strip_prefix("file://") {
            Box::new(file::FileBackend::new(path))
        } else if url.starts_with("http://") || url.starts_with("https://") {
            Box::new(http::HttpBackend::new(url))
        } else if let Some(rest) = url.strip_prefix("s3://") {
            Box::new(s3::S3Backend::new(url, rest)?)
        } else {
            return Err(RemoteError::Url(url.to_string()));
        };
        Ok(Remote {
            url: url.to_string(),
            backend,
            down: AtomicBool::new(false),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `op`, retrying transient failures; a remote that stays unreachable is marked down.
    fn retry<T>(&self, mut op: impl FnMut() -> Result<T, RemoteError>) -> Result<T, RemoteError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(RemoteError::Down);
        }
        let mut waits = BACKOFF.iter();
        loop {
            match op() {
                Err(RemoteError::Transient { url, message }) => match waits.next() {
                    Some(w) => std::thread::sleep(*w),
                    None => {
                        self.down.store(true, Ordering::Relaxed);
                        return Err(RemoteError::Transient { url, message });
                    }
                },
                other => return other,
            }
        }
    }

    /// Whether the remote holds a run entry for `key`.
    pub fn has_run(&self, key: &str) -> Result<bool, RemoteError> {
        self.retry(|| self.backend.exists(&run_path(key)))
    }

    /// Pulls the run for `key` into the local store (every object re-hashed); None when the remote
    /// has no such run.
    pub fn pull_run(
        &self,
        key: &str,
        store: &Store,
        stat: &StatCache,
        progress: &dyn forge_stages::Progress,
    ) -> Result<Option<(RunEntry, Transfer)>, RemoteError> {
        let Some(bytes) = self.retry(|| self.backend.get_bytes(&run_path(key)))? else {
            return Ok(None);
        };
        let run = parse_run(key, &bytes)?;
        let missing: Vec<&Entry> = run
            .manifest
            .iter()
            .filter(|e| !store.verify(e, stat))
            .collect();
        let moved = self.parallel(&missing, progress, |e| {
            let tmp = store.tmp_path("pull");
            let fetched = self.retry(|| self.backend.get_file(&object_path(&e.hash), &tmp));
            let result = match fetched {
                Ok(true) => {
                    let got = blake3_file(&tmp)?;
                    if got == e.hash {
                        store.adopt(&tmp, e)?;
                        Ok(true)
                    } else {
                        Err(RemoteError::Corrupt {
                            hash: e.hash.clone(),
                            got,
                        })
                    }
                }
                Ok(false) => Err(RemoteError::BadManifest {
                    key: key.to_string(),
                    why: format!("it names object {} which the remote does not have", e.hash),
                }),
                Err(err) => Err(err),
            };
            let _ = std::fs::remove_file(&tmp);
            result
        })?;
        store.put_run(&run)?;
        Ok(Some((run, moved)))
    }

    /// Pushes `run` and the objects it names (those the remote lacks), objects first.
    pub fn push_run(
        &self,
        run: &RunEntry,
        store: &Store,
        progress: &dyn forge_stages::Progress,
    ) -> Result<Transfer, RemoteError> {
        let entries: Vec<&Entry> = run.manifest.iter().collect();
        let moved = self.parallel(&entries, progress, |e| {
            let path = object_path(&e.hash);
            if self.retry(|| self.backend.exists(&path))? {
                return Ok(false);
            }
            let src = store.object_path(&e.hash);
            self.retry(|| self.backend.put_file(&path, &src))?;
            Ok(true)
        })?;
        if !self.retry(|| self.backend.exists(&run_path(&run.key)))? {
            let json = serde_json::to_vec_pretty(run).expect("run entries serialize");
            self.retry(|| self.backend.put_bytes(&run_path(&run.key), &json))?;
        }
        Ok(moved)
    }

    /// Applies `f` to every entry on up to PARALLEL threads; `f` says whether it moved the object.
    /// Reports progress, and returns what was moved.
    fn parallel(
        &self,
        entries: &[&Entry],
        progress: &dyn forge_stages::Progress,
        f: impl Fn(&Entry) -> Result<bool, RemoteError> + Sync,
    ) -> Result<Transfer, RemoteError> {
        let total = entries.len() as u64;
        let done = AtomicUsize::new(0);
        let moved = AtomicUsize::new(0);
        let bytes = AtomicU64::new(0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(PARALLEL)
            .build()
            .map_err(|e| RemoteError::Permanent {
                url: self.url.clone(),
                message: e.to_string(),
            })?;
        pool.install(|| {
            entries.par_iter().try_for_each(|e| {
                if f(e)? {
                    moved.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(e.size, Ordering::Relaxed);
                }
                let n = done.fetch_add(1, Ordering::Relaxed) as u64 + 1;
                progress.update(
                    n,
                    Some(total),
                    &crate::gc::human(bytes.load(Ordering::Relaxed)),
                );
                Ok::<(), RemoteError>(())
            })
        })?;
        Ok(Transfer {
            objects: moved.into_inner(),
            bytes: bytes.into_inner(),
        })
    }
}

fn blake3_file(path: &Path) -> Result<String, RemoteError> {
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path).map_err(RemoteError::io(path))?;
    Ok(h.finalize().to_hex().to_string())
}

/// A pulled run entry, checked: it is for `key`, its manifest digest is right, and every path
/// stays inside the output directory.
fn parse_run(key: &str, bytes: &[u8]) -> Result<RunEntry, RemoteError> {
    let bad = |why: String| RemoteError::BadManifest {
        key: key.to_string(),
        why,
    };
    let run: RunEntry =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a run entry: {e}")))?;
    if run.key != key {
        return Err(bad(format!("it is for key {}", run.key)));
    }
    for e in &run.manifest {
        check_relative(&e.path).map_err(|why| bad(format!("path `{}` {why}", e.path)))?;
        if e.hash.len() != 64 || !e.hash.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(format!(
                "object name `{}` is not a blake3 hash",
                e.hash
            )));
        }
    }
    if manifest_digest(&run.manifest) != run.out {
        return Err(bad("its manifest does not match its output hash".into()));
    }
    Ok(run)
}

/// A manifest path must be relative, `/`-separated plain names: no `..`, `.`, empty or absolute
/// parts, so materializing it can never write outside the stage's directory.
fn check_relative(path: &str) -> Result<(), &'static str> {
    if path.is_empty() || path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return Err("is not a relative path");
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("escapes the output directory");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_that_could_escape_are_refused() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a/.",
            "",
            "a\\..\\b",
        ] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
        for good in ["a", "a/b.txt", "..a/b..", ".hidden"] {
            assert!(check_relative(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn run_entries_are_checked_before_use() {
        let e = Entry {
            path: "x".into(),
            size: 1,
            exec: false,
            hash: "a".repeat(64),
        };
        let mut run = RunEntry {
            key: "k".into(),
            stage: "s".into(),
            out: manifest_digest(std::slice::from_ref(&e)),
            manifest: vec![e],
            duration_s: 0.0,
            created: 0,
            summary: String::new(),
            metrics: Default::default(),
        };
        let bytes = |r: &RunEntry| serde_json::to_vec(r).unwrap();
        assert!(parse_run("k", &bytes(&run)).is_ok());
        assert!(matches!(
            parse_run("other", &bytes(&run)),
            Err(RemoteError::BadManifest { .. })
        ));
        run.manifest[0].path = "../../outside".into();
        run.out = manifest_digest(&run.manifest);
        let err = parse_run("k", &bytes(&run)).unwrap_err().to_string();
        assert!(err.contains("escapes the output directory"), "{err}");
        run.manifest[0].path = "x".into();
        assert!(
            parse_run("k", &bytes(&run))
                .unwrap_err()
                .to_string()
                .contains("does not match its output hash")
        );
    }
}
