//! Content hashes of files and directories, with a stat cache in front.
//!
//! A directory's hash is the hash of its sorted manifest (relative path, executable bit, size,
//! blake3 of the bytes). Nothing machine-specific enters a hash, so keys match across machines.
//! The [`StatCache`] remembers (size, mtime, inode) → blake3 per path: a file whose stat did not
//! change is never read again, which makes a no-op run over gigabytes cost milliseconds.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: is a symlink; stage outputs must be regular files", path.display())]
    Symlink { path: PathBuf },
    #[error("{}: is neither a file nor a directory", path.display())]
    Special { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HashError + '_ {
    move |source| HashError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file of a directory manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, `/`-separated.
    pub path: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exec: bool,
    /// blake3 of the bytes, hex.
    pub hash: String,
}

/// The hash of a sorted manifest.
pub fn manifest_digest(entries: &[Entry]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"forge-manifest-v1\0");
    for e in entries {
        h.update(&(e.path.len() as u64).to_le_bytes());
        h.update(e.path.as_bytes());
        h.update(&[u8::from(e.exec)]);
        h.update(&e.size.to_le_bytes());
        h.update(e.hash.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// Files smaller than this are read whole; larger ones are memory-mapped and hashed on all cores.
const MMAP_THRESHOLD: u64 = 1 << 22;
/// A file modified this recently might still change within the same mtime tick: not cached.
const RACY_NS: i128 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    size: u64,
    mtime_ns: i128,
    ino: u64,
}

impl Stat {
    fn of(m: &fs::Metadata) -> Stat {
        Stat {
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ino: m.ino(),
        }
    }
}

/// path → (stat, blake3), persisted under `cache/`.
pub struct StatCache {
    file: Option<PathBuf>,
    map: Mutex<HashMap<PathBuf, (Stat, [u8; 32])>>,
    dirty: AtomicBool,
}

const STAT_MAGIC: &[u8; 8] = b"FRGSTAT1";

impl StatCache {
    /// A cache that is never saved (tests, read-only commands).
    pub fn in_memory() -> StatCache {
        StatCache {
            file: None,
            map: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
        }
    }

    /// Loads `file`; a missing or unreadable cache is an empty one (it is only a cache).
    pub fn load(file: &Path) -> StatCache {
        let map = fs::read(file)
            .ok()
            .and_then(|b| decode(&b))
            .unwrap_or_default();
        StatCache {
            file: Some(file.to_path_buf()),
            map: Mutex::new(map),
            dirty: AtomicBool::new(false),
        }
    }

    /// Writes the cache atomically if it changed.
    pub fn save(&self) -> Result<(), HashError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let map = self.map.lock().expect("stat cache lock");
        let mut out = Vec::with_capacity(16 + map.len() * 96);
        out.extend_from_slice(STAT_MAGIC);
        for (path, (st, hash)) in map.iter() {
            let Some(p) = path.to_str() else { continue };
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(&st.size.to_le_bytes());
            out.extend_from_slice(&st.mtime_ns.to_le_bytes());
            out.extend_from_slice(&st.ino.to_le_bytes());
            out.extend_from_slice(hash);
        }
        drop(map);
        crate::fsutil::write_atomic(file, &out).map_err(io(file))
    }

    /// blake3 of the file at `path` with metadata `m`, from the cache when its stat is unchanged.
    fn hash(&self, path: &Path, m: &fs::Metadata) -> Result<[u8; 32], HashError> {
        let st = Stat::of(m);
        if let Some((cached, hash)) = self.map.lock().expect("stat cache lock").get(path)
            && *cached == st
        {
            return Ok(*hash);
        }
        let hash = hash_bytes(path, st.size)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        if now - st.mtime_ns > RACY_NS {
            self.map
                .lock()
                .expect("stat cache lock")
                .insert(path.to_path_buf(), (st, hash));
            self.dirty.store(true, Ordering::Release);
        }
        Ok(hash)
    }

    /// Forgets `path` (its file is gone or known bad).
    pub fn forget(&self, path: &Path) {
        if self
            .map
            .lock()
            .expect("stat cache lock")
            .remove(path)
            .is_some()
        {
            self.dirty.store(true, Ordering::Release);
        }
    }
}

fn decode(b: &[u8]) -> Option<HashMap<PathBuf, (Stat, [u8; 32])>> {
    let mut rest = b.strip_prefix(STAT_MAGIC)?;
    let mut map = HashMap::new();
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if rest.len() < n {
            return None;
        }
        let (a, b) = rest.split_at(n);
        *rest = b;
        Some(a)
    }
    while !rest.is_empty() {
        let len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().ok()?) as usize;
        let path = take(&mut rest, len)?;
        let path = PathBuf::from(std::str::from_utf8(path).ok()?);
        let size = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
        let mtime_ns = i128::from_le_bytes(take(&mut rest, 16)?.try_into().ok()?);
        let ino = u64::from_le_bytes(take(&mut rest, 8)?.try_into().ok()?);
        let hash: [u8; 32] = take(&mut rest, 32)?.try_into().ok()?;
        map.insert(
            path,
            (
                Stat {
                    size,
                    mtime_ns,
                    ino,
                },
                hash,
            ),
        );
    }
    Some(map)
}

fn hash_bytes(path: &Path, size: u64) -> Result<[u8; 32], HashError> {
    let mut h = blake3::Hasher::new();
    if size >= MMAP_THRESHOLD {
        h.update_mmap_rayon(path).map_err(io(path))?;
    } else {
        let mut f = fs::File::open(path).map_err(io(path))?;
        let mut buf = Vec::with_capacity(size as usize);
        f.read_to_end(&mut buf).map_err(io(path))?;
        h.update(&buf);
    }
    Ok(*h.finalize().as_bytes())
}

/// The blake3 (hex) of one file, through the stat cache.
pub fn file_hash(path: &Path, stat: &StatCache) -> Result<String, HashError> {
    let m = fs::metadata(path).map_err(io(path))?;
    Ok(blake3::Hash::from(stat.hash(path, &m)?)
        .to_hex()
        .to_string())
}

/// Whether symlinks inside a scanned directory are followed (inputs) or refused (outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    Follow,
    Refuse,
}

/// The sorted manifest of every regular file under `dir`.
pub fn scan_dir(dir: &Path, stat: &StatCache, symlinks: Symlinks) -> Result<Vec<Entry>, HashError> {
    let mut files = Vec::new();
    walk(dir, "", symlinks, &mut files)?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
        .into_par_iter()
        .map(|(rel, path, m)| {
            let hash = stat.hash(&path, &m)?;
            Ok(Entry {
                path: rel,
                size: m.len(),
                exec: m.permissions().mode() & 0o111 != 0,
                hash: blake3::Hash::from(hash).to_hex().to_string(),
            })
        })
        .collect()
}

fn walk(
    dir: &Path,
    prefix: &str,
    symlinks: Symlinks,
    out: &mut Vec<(String, PathBuf, fs::Metadata)>,
) -> Result<(), HashError> {
    for item in fs::read_dir(dir).map_err(io(dir))? {
        let item = item.map_err(io(dir))?;
        let path = item.path();
        let name = item.file_name();
        let name = name.to_string_lossy();
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let mut m = item.metadata().map_err(io(&path))?;
        if m.file_type().is_symlink() {
            if symlinks == Symlinks::Refuse {
                return Err(HashError::Symlink { path });
            }
            m = fs::metadata(&path).map_err(io(&path))?;
        }
        if m.is_dir() {
            walk(&path, &rel, symlinks, out)?;
        } else if m.is_file() {
            out.push((rel, path, m));
        } else {
            return Err(HashError::Special { path });
        }
    }
    Ok(())
}

/// The content hash of an input path: a file's blake3, or a directory's manifest digest.
pub fn content_hash(path: &Path, stat: &StatCache) -> Result<String, HashError> {
    let m = fs::metadata(path).map_err(io(path))?;
    if m.is_dir() {
        Ok(manifest_digest(&scan_dir(path, stat, Symlinks::Follow)?))
    } else if m.is_file() {
        file_hash(path, stat)
    } else {
        Err(HashError::Special {
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_hash_depends_on_content_names_and_exec_bit_only() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            fs::create_dir_all(d.join("sub")).unwrap();
            fs::write(d.join("sub/x.txt"), "hello").unwrap();
            fs::write(d.join("y"), "world").unwrap();
        }
        let s = StatCache::in_memory();
        let ha = content_hash(a.path(), &s).unwrap();
        assert_eq!(
            ha,
            content_hash(b.path(), &s).unwrap(),
            "same tree, different place: same hash"
        );
        let m = scan_dir(a.path(), &s, Symlinks::Refuse).unwrap();
        assert_eq!(
            m.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["sub/x.txt", "y"]
        );
        assert_eq!(m[0].hash, blake3::hash(b"hello").to_hex().to_string());

        fs::set_permissions(b.path().join("y"), fs::Permissions::from_mode(0o755)).unwrap();
        let hb = content_hash(b.path(), &s).unwrap();
        assert_ne!(ha, hb, "exec bit counts");
        fs::rename(b.path().join("y"), b.path().join("z")).unwrap();
        assert_ne!(hb, content_hash(b.path(), &s).unwrap(), "names count");
    }

    #[test]
    fn stat_cache_round_trips_and_skips_rehash_only_for_unchanged_stat() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, "one").unwrap();
        // Age the file so the racy-mtime guard lets it into the cache.
        let old = SystemTime::now() - std::time::Duration::from_secs(10);
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let cache_file = d.path().join("stat");
        let s = StatCache::load(&cache_file);
        assert_eq!(
            file_hash(&f, &s).unwrap(),
            blake3::hash(b"one").to_hex().to_string()
        );
        s.save().unwrap();

        let s2 = StatCache::load(&cache_file);
        assert_eq!(s2.map.lock().unwrap().len(), 1);
        // Same size and mtime forced back: the cache answers (proving it is consulted) ...
        fs::write(&f, "two").unwrap();
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(
            file_hash(&f, &s2).unwrap(),
            blake3::hash(b"one").to_hex().to_string()
        );
        // ... and any stat change makes it rehash.
        fs::write(&f, "three").unwrap();
        assert_eq!(
            file_hash(&f, &s2).unwrap(),
            blake3::hash(b"three").to_hex().to_string()
        );
    }

    #[test]
    fn outputs_refuse_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("l")).unwrap();
        assert!(matches!(
            scan_dir(d.path(), &StatCache::in_memory(), Symlinks::Refuse),
            Err(HashError::Symlink { .. })
        ));
    }
}
