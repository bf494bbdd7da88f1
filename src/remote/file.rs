//! `file:///path`: a directory (a shared mount) with the store's layout. Writes go to a temporary
//! name beside the target and are renamed into place, so readers never see a partial object.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Backend, RemoteError};
use crate::fsutil::{unique_name, write_atomic};

pub struct FileBackend {
    root: PathBuf,
}

impl FileBackend {
    pub fn new(path: &str) -> FileBackend {
        FileBackend {
            root: PathBuf::from(path),
        }
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn require_root(&self) -> Result<(), RemoteError> {
        if self.root.is_dir() {
            Ok(())
        } else {
            Err(RemoteError::Transient {
                url: format!("file://{}", self.root.display()),
                message: "the remote directory does not exist (not mounted?)".into(),
            })
        }
    }
}

fn missing(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

impl Backend for FileBackend {
    fn get_bytes(&self, path: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let p = self.at(path);
        match fs::read(&p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(RemoteError::io(&p)(e)),
        }
    }

    fn get_file(&self, path: &str, dest: &Path) -> Result<bool, RemoteError> {
        let p = self.at(path);
        match fs::copy(&p, dest) {
            Ok(_) => Ok(true),
            Err(e) if missing(&e) => Ok(false),
            Err(e) => Err(RemoteError::io(&p)(e)),
        }
    }

    fn exists(&self, path: &str) -> Result<bool, RemoteError> {
        Ok(self.at(path).is_file())
    }

    fn put_file(&self, path: &str, src: &Path) -> Result<(), RemoteError> {
        self.require_root()?;
        let dst = self.at(path);
        let dir = dst.parent().expect("remote paths have a parent");
        fs::create_dir_all(dir).map_err(RemoteError::io(dir))?;
        let tmp = dir.join(format!(".{}", unique_name("put")));
        let copied = fs::copy(src, &tmp)
            .map_err(RemoteError::io(&tmp))
            .and_then(|_| fs::rename(&tmp, &dst).map_err(RemoteError::io(&dst)));
        if copied.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        copied
    }

    fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        self.require_root()?;
        let dst = self.at(path);
        write_atomic(&dst, bytes).map_err(RemoteError::io(&dst))
    }
}
