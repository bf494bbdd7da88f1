//! The content-addressed object store and the run cache, under `cache/`.
//!
//! - `objects/ab/cdef…`: one read-only file per distinct content, named by its blake3.
//! - `runs/<key>.json`: stage key → the output manifest it produced (plus duration and metrics),
//!   so a key seen before is restored instead of executed.
//! - `tmp/`: where outputs are built before they are complete; never read as a result.
//!
//! Objects enter only by rename of a complete file, so a crash never leaves a torn object under a
//! real name. Every object is checked against its hash (through the stat cache) before it is
//! materialized: one whose bytes changed is deleted and its run rebuilt, never used.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{remove_all, unique_name, write_atomic};
use crate::hash::{Entry, HashError, StatCache, Symlinks, file_hash, manifest_digest, scan_dir};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Hash(#[from] HashError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What one execution of a stage produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunEntry {
    pub key: String,
    pub stage: String,
    /// Manifest digest of the output directory.
    pub out: String,
    pub manifest: Vec<Entry>,
    pub duration_s: f64,
    /// Unix seconds when the run finished.
    pub created: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating as needed) the store under `cache_dir`.
    pub fn open(cache_dir: &Path) -> Result<Store, StoreError> {
        for sub in ["objects", "runs", "tmp", "logs"] {
            let p = cache_dir.join(sub);
            fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(Store {
            root: cache_dir.to_path_buf(),
        })
    }

    pub fn object_path(&self, hash: &str) -> PathBuf {
        let (a, b) = hash.split_at(2.min(hash.len()));
        self.root.join("objects").join(a).join(b)
    }

    fn run_path(&self, key: &str) -> PathBuf {
        self.root.join("runs").join(format!("{key}.json"))
    }

    pub fn log_path(&self, stage: &str) -> PathBuf {
        self.root.join("logs").join(format!("{stage}.log"))
    }

    /// The directory a stage keeps its resumable state in (training checkpoints) while it runs
    /// with `key`: it survives a killed run, so the next run of the same key picks it up, and is
    /// removed once that key's run has been archived ([`Store::drop_state`]).
    pub fn state_dir(&self, key: &str) -> Result<PathBuf, StoreError> {
        let p = self.root.join("state").join(key);
        fs::create_dir_all(&p).map_err(io(&p))?;
        Ok(p)
    }

    pub fn drop_state(&self, key: &str) -> Result<(), StoreError> {
        let p = self.root.join("state").join(key);
        remove_all(&p).map_err(io(&p))
    }

    /// A fresh, empty directory under `tmp/`.
    pub fn tmp_dir(&self, prefix: &str) -> Result<PathBuf, StoreError> {
        let p = self.root.join("tmp").join(unique_name(prefix));
        fs::create_dir_all(&p).map_err(io(&p))?;
        Ok(p)
    }

    /// A fresh path under `tmp/` for one file (not created).
    pub fn tmp_path(&self, prefix: &str) -> PathBuf {
        self.root.join("tmp").join(unique_name(prefix))
    }

    /// Removes everything under `tmp/`: leftovers of runs that were killed. Only call it while
    /// holding the workspace lock.
    pub fn clear_tmp(&self) -> Result<(), StoreError> {
        let tmp = self.root.join("tmp");
        for item in fs::read_dir(&tmp).map_err(io(&tmp))? {
            let p = item.map_err(io(&tmp))?.path();
            remove_all(&p).map_err(io(&p))?;
        }
        Ok(())
    }

    /// Moves every file of the finished output directory `out` into the store; returns its
    /// manifest. `out` is consumed.
    pub fn archive(&self, out: &Path, stat: &StatCache) -> Result<Vec<Entry>, StoreError> {
        let manifest = scan_dir(out, stat, Symlinks::Refuse)?;
        for e in &manifest {
            let src = out.join(&e.path);
            let dst = self.object_path(&e.hash);
            if dst.exists() && self.verify(e, stat) {
                continue;
            }
            let mode = if e.exec { 0o555 } else { 0o444 };
            fs::set_permissions(&src, fs::Permissions::from_mode(mode)).map_err(io(&src))?;
            let parent = dst.parent().expect("objects have a parent");
            fs::create_dir_all(parent).map_err(io(parent))?;
            fs::rename(&src, &dst).map_err(io(&dst))?;
        }
        remove_all(out).map_err(io(out))?;
        Ok(manifest)
    }

    /// Whether the object for `e` exists with exactly its bytes. A corrupt object is deleted.
    pub fn verify(&self, e: &Entry, stat: &StatCache) -> bool {
        let p = self.object_path(&e.hash);
        match file_hash(&p, stat) {
            Ok(h) if h == e.hash => true,
            Ok(_) => {
                eprintln!(
                    "warning: cache object {} does not match its hash; discarding it",
                    p.display()
                );
                stat.forget(&p);
                let _ = fs::remove_file(&p);
                false
            }
            Err(_) => false,
        }
    }

    /// Moves `file`, whose bytes were checked to hash to `e.hash`, into the store.
    pub fn adopt(&self, file: &Path, e: &Entry) -> Result<(), StoreError> {
        let mode = if e.exec { 0o555 } else { 0o444 };
        fs::set_permissions(file, fs::Permissions::from_mode(mode)).map_err(io(file))?;
        let dst = self.object_path(&e.hash);
        let parent = dst.parent().expect("objects have a parent");
        fs::create_dir_all(parent).map_err(io(parent))?;
        fs::rename(file, &dst).map_err(io(&dst))
    }

    pub fn put_run(&self, run: &RunEntry) -> Result<(), StoreError> {
        let p = self.run_path(&run.key);
        let json = serde_json::to_vec_pretty(run).expect("run entries serialize");
        write_atomic(&p, &json).map_err(io(&p))
    }

    /// The run cache entry for `key`, if one exists and is readable.
    pub fn get_run(&self, key: &str) -> Option<RunEntry> {
        let bytes = fs::read(self.run_path(key)).ok()?;
        let run: RunEntry = serde_json::from_slice(&bytes).ok()?;
        (run.key == key && manifest_digest(&run.manifest) == run.out).then_some(run)
    }

    /// Every run cache entry, with the path of its file.
    pub fn runs(&self) -> Result<Vec<(PathBuf, Option<RunEntry>)>, StoreError> {
        let dir = self.root.join("runs");
        let mut out = Vec::new();
        for item in fs::read_dir(&dir).map_err(io(&dir))? {
            let p = item.map_err(io(&dir))?.path();
            let run = fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            out.push((p, run));
        }
        Ok(out)
    }

    /// Whether every object of `run` is present and intact.
    pub fn verify_run(&self, run: &RunEntry, stat: &StatCache) -> bool {
        run.manifest.iter().all(|e| self.verify(e, stat))
    }

    /// Makes `dest` hold exactly `manifest`'s files, read-only, linked from the store (reflink,
    /// else hardlink, else copy). Built beside `dest` and swapped in, so `dest` is either the old
    /// tree, absent, or the new tree.
    pub fn materialize(&self, manifest: &[Entry], dest: &Path) -> Result<(), StoreError> {
        let parent = dest.parent().expect("artifact dirs have a parent");
        fs::create_dir_all(parent).map_err(io(parent))?;
        let name = dest
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let staging = parent.join(format!(".tmp-{}", unique_name(&name)));
        fs::create_dir_all(&staging).map_err(io(&staging))?;
        let built = (|| {
            for e in manifest {
                let to = staging.join(&e.path);
                if let Some(d) = to.parent() {
                    fs::create_dir_all(d).map_err(io(d))?;
                }
                link(&self.object_path(&e.hash), &to, e.exec)?;
            }
            Ok(())
        })();
        if let Err(e) = built {
            let _ = remove_all(&staging);
            return Err(e);
        }
        if fs::symlink_metadata(dest).is_ok() {
            let old = parent.join(format!(".old-{}", unique_name(&name)));
            fs::rename(dest, &old).map_err(io(dest))?;
            fs::rename(&staging, dest).map_err(io(dest))?;
            remove_all(&old).map_err(io(&old))?;
        } else {
            fs::rename(&staging, dest).map_err(io(dest))?;
        }
        Ok(())
    }
}

fn link(object: &Path, to: &Path, exec: bool) -> Result<(), StoreError> {
    if reflink_copy::reflink(object, to).is_ok() || fs::hard_link(object, to).is_ok() {
        return Ok(());
    }
    fs::copy(object, to).map_err(io(to))?;
    let mode = if exec { 0o555 } else { 0o444 };
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(io(to))
}

/// Removes materialization leftovers (`.tmp-*`, `.old-*`) under the artifacts directory.
pub fn clear_artifact_leftovers(artifacts: &Path) -> Result<(), StoreError> {
    let Ok(items) = fs::read_dir(artifacts) else {
        return Ok(());
    };
    for item in items {
        let p = item.map_err(io(artifacts))?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(".tmp-") || name.starts_with(".old-") {
            remove_all(&p).map_err(io(&p))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(store: &Store, files: &[(&str, &str)]) -> PathBuf {
        let out = store.tmp_dir("t").unwrap();
        for (p, c) in files {
            let f = out.join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(f, c).unwrap();
        }
        out
    }

    #[test]
    fn archive_then_materialize_reproduces_the_tree_read_only() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join("cache")).unwrap();
        let stat = StatCache::in_memory();
        let out = build(
            &store,
            &[("a.txt", "A"), ("sub/b.txt", "B"), ("dup.txt", "A")],
        );
        let manifest = store.archive(&out, &stat).unwrap();
        assert!(!out.exists());
        assert_eq!(manifest.len(), 3);
        let dest = d.path().join("artifacts/s");
        store.materialize(&manifest, &dest).unwrap();
        assert_eq!(fs::read_to_string(dest.join("sub/b.txt")).unwrap(), "B");
        assert_eq!(
            fs::metadata(dest.join("a.txt"))
                .unwrap()
                .permissions()
                .mode()
                & 0o222,
            0
        );
        assert_eq!(
            manifest_digest(&scan_dir(&dest, &stat, Symlinks::Refuse).unwrap()),
            manifest_digest(&manifest)
        );

        // Re-materializing a different manifest replaces the tree completely.
        let out2 = build(&store, &[("c.txt", "C")]);
        let m2 = store.archive(&out2, &stat).unwrap();
        store.materialize(&m2, &dest).unwrap();
        assert!(!dest.join("a.txt").exists() && dest.join("c.txt").exists());
        assert_eq!(
            fs::read_dir(d.path().join("artifacts")).unwrap().count(),
            1,
            "no staging leftovers"
        );
    }

    #[test]
    fn corrupt_object_is_detected_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let stat = StatCache::in_memory();
        let m = store
            .archive(&build(&store, &[("x", "good bytes")]), &stat)
            .unwrap();
        let run = RunEntry {
            key: "k".into(),
            stage: "s".into(),
            out: manifest_digest(&m),
            manifest: m.clone(),
            duration_s: 0.0,
            created: 0,
            summary: String::new(),
            metrics: BTreeMap::new(),
        };
        store.put_run(&run).unwrap();
        assert_eq!(store.get_run("k").as_ref(), Some(&run));
        assert!(store.verify_run(&run, &stat));
        let obj = store.object_path(&m[0].hash);
        fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&obj, "evil bytes").unwrap();
        assert!(!store.verify_run(&run, &stat));
        assert!(!obj.exists(), "the corrupt object is discarded");
    }
}
