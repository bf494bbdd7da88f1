//! The test workspace builder: a temp dir with a forge.yaml, and the forge binary run in it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The Qwen3 tokenizer files (fetched once by scripts/fetch-tokenizer.sh into target/test-assets).
pub fn tokenizer() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dest = root.join("target/test-assets/qwen3-tokenizer");
    let st = Command::new("bash")
        .arg(root.join("scripts/fetch-tokenizer.sh"))
        .arg(&dest)
        .status()
        .unwrap();
    assert!(st.success(), "scripts/fetch-tokenizer.sh failed");
    dest
}

pub struct Ws {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// stage → its status word (`ran`, `fresh`, `restored`, `failed`, `skipped`, ...).
    pub fn states(&self) -> BTreeMap<String, String> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let first = w.next()?;
                let (state, stage) = if first == "would" {
                    (format!("would {}", w.next()?), w.next()?)
                } else {
                    (first.to_string(), w.next()?)
                };
                Some((stage.to_string(), state))
            })
            .collect()
    }

    pub fn executed(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .states()
            .into_iter()
            .filter(|(_, s)| s == "ran")
            .map(|(k, _)| k)
            .collect();
        v.sort();
        v
    }
}

impl Ws {
    pub fn new(yaml: &str) -> Ws {
        let ws = Ws {
            dir: tempfile::tempdir().unwrap(),
        };
        ws.write("forge.yaml", yaml);
        ws
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_forge"));
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("CUDA_VISIBLE_DEVICES");
        c
    }

    pub fn forge(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().unwrap())
    }

    pub fn ok(&self, args: &[&str]) -> Run {
        let r = self.forge(args);
        assert_eq!(
            r.code, 0,
            "forge {args:?} failed:\n{}\n{}",
            r.stdout, r.stderr
        );
        r
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(items) = std::fs::read_dir(dir) {
        for e in items.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p))
            } else {
                out.push(p)
            }
        }
    }
    out.sort();
    out
}

/// Every file under `dir`, relative, with its bytes.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walk(dir)
        .into_iter()
        .map(|p| {
            (
                p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .filter(|(rel, _)| !rel.starts_with('.'))
        .collect()
}

/// Every object in the store at `objects` is named by the blake3 of its bytes.
pub fn assert_store_intact(objects: &Path) {
    for obj in walk(objects) {
        let name = format!(
            "{}{}",
            obj.parent().unwrap().file_name().unwrap().to_string_lossy(),
            obj.file_name().unwrap().to_string_lossy()
        );
        let bytes = std::fs::read(&obj).unwrap();
        assert_eq!(blake3::hash(&bytes).to_hex().as_str(), name, "{obj:?}");
    }
}
