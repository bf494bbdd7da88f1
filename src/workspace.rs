//! Where a workspace keeps things, and the lock that lets one `forge run` own it at a time.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub config: PathBuf,
    pub artifacts: PathBuf,
    pub cache: PathBuf,
    pub lockfile: PathBuf,
}

impl Workspace {
    /// The workspace of the pipeline file `config` (its directory is the root).
    pub fn of(config: &Path) -> std::io::Result<Workspace> {
        let config = std::path::absolute(config)?;
        let root = config
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        Ok(Workspace {
            artifacts: root.join("artifacts"),
            cache: root.join("cache"),
            lockfile: root.join("forge.lock"),
            config,
            root,
        })
    }

    pub fn artifact(&self, stage: &str) -> PathBuf {
        self.artifacts.join(stage)
    }

    /// Takes the workspace lock. With `wait`, blocks until the holder releases it (saying so
    /// once on stderr); without, fails naming the holder's pid.
    pub fn lock(&self, wait: bool) -> Result<WorkspaceLock, LockBusy> {
        let path = self.cache.join("workspace.lock");
        let open = || -> std::io::Result<File> {
            std::fs::create_dir_all(&self.cache)?;
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
        };
        let mut file = open().map_err(|e| LockBusy::Io {
            path: path.clone(),
            source: e,
        })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let pid = holder_pid(&mut file);
                if !wait {
                    return Err(LockBusy::Held(pid));
                }
                eprintln!(
                    "forge: waiting for another forge (pid {}) to release the workspace...",
                    pid.map_or_else(|| "?".to_string(), |p| p.to_string())
                );
                file.lock().map_err(|e| LockBusy::Io {
                    path: path.clone(),
                    source: e,
                })?;
            }
            Err(TryLockError::Error(e)) => return Err(LockBusy::Io { path, source: e }),
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(WorkspaceLock { _file: file })
    }
}

fn holder_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Held for the life of a run; the OS releases it when the process ends, however it ends.
pub struct WorkspaceLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockBusy {
    #[error("the workspace is in use by another forge (pid {})", .0.map_or_else(|| "unknown".to_string(), |p| p.to_string()))]
    Held(Option<u32>),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
