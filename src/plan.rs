//! Stage keys and why a stage is stale.
//!
//! key = blake3 of a canonical serialization of: the cache schema version, the built-in kind and
//! version (or the command with its `${...}` kept symbolic), the resolved params, the values of the
//! vars the stage references, and the content hash of each named input. Nothing else — no mtimes,
//! absolute paths or hostnames — so keys match across machines. A stage depends only on its own
//! params and the vars it references, which makes staleness param-granular.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::config::{Action, StageDef, render_key_cmd};
use crate::lockfile::LockEntry;

/// Bump to invalidate every key (a change in how keys or manifests are computed).
pub const CACHE_SCHEMA: u32 = 1;

/// Why a stage must run (cargo's `DirtyReason`, for pipelines).
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    NeverRan,
    Forced,
    /// Built-in kind or version changed, or the command text changed.
    ActionChanged {
        old: String,
        new: String,
    },
    ParamChanged {
        stage: String,
        name: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    VarChanged {
        name: String,
        old: Option<Value>,
        new: Option<Value>,
    },
    InputChanged {
        name: String,
    },
    UpstreamStale {
        stage: String,
    },
    OutputMissing {
        path: String,
    },
    OutputModified {
        path: String,
    },
    /// The key differs for a reason the lock cannot show (e.g. a new cache schema).
    KeyChanged,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<Value>| {
            v.as_ref()
                .map_or_else(|| "(unset)".to_string(), |v| v.to_string())
        };
        match self {
            Reason::NeverRan => f.write_str("never ran"),
            Reason::Forced => f.write_str("forced"),
            Reason::ActionChanged { old, new } => {
                write!(f, "stage version or command changed: {old} → {new}")
            }
            Reason::ParamChanged {
                stage,
                name,
                old,
                new,
            } => {
                write!(
                    f,
                    "param `{stage}.{name}` changed {} → {}",
                    show(old),
                    show(new)
                )
            }
            Reason::VarChanged { name, old, new } => {
                write!(f, "var `{name}` changed {} → {}", show(old), show(new))
            }
            Reason::InputChanged { name } => match name.strip_prefix("stages.") {
                Some(up) => write!(f, "upstream `{up}` produced a new output"),
                None => write!(f, "input `{name}` changed"),
            },
            Reason::UpstreamStale { stage } => write!(f, "upstream `{stage}` is stale"),
            Reason::OutputMissing { path } => write!(f, "output `{path}` is missing"),
            Reason::OutputModified { path } => write!(f, "output `{path}` was modified by hand"),
            Reason::KeyChanged => f.write_str("stage key changed (cache schema)"),
        }
    }
}

/// How the action is recorded in the lock: (`uses`, version, `cmd`).
pub fn action_identity(def: &StageDef) -> (Option<String>, Option<u32>, Option<String>) {
    match &def.action {
        Action::Builtin(s) => (Some(s.kind().to_string()), Some(s.version()), None),
        Action::Cmd(t) => (None, None, Some(render_key_cmd(t))),
    }
}

fn action_text(uses: &Option<String>, version: Option<u32>, cmd: &Option<String>) -> String {
    match (uses, version, cmd) {
        (Some(u), Some(v), _) => format!("{u} v{v}"),
        (Some(u), None, _) => u.clone(),
        (None, _, Some(c)) => format!("`{c}`"),
        _ => "?".into(),
    }
}

/// The stage key for `def` given the content hash of each input.
pub fn stage_key(def: &StageDef, inputs: &BTreeMap<String, String>) -> String {
    let (uses, version, cmd) = action_identity(def);
    let material = serde_json::json!({
        "schema": CACHE_SCHEMA,
        "uses": uses,
        "version": version,
        "cmd": cmd,
        "params": def.params,
        "vars": def.vars,
        "inputs": inputs,
    });
    let mut h = blake3::Hasher::new();
    write_canonical(&material, &mut h);
    h.finalize().to_hex().to_string()
}

/// JSON with object keys sorted at every level, whatever the map type's own order.
fn write_canonical(v: &Value, h: &mut blake3::Hasher) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            h.update(b"{");
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                h.update(Value::String(k.clone()).to_string().as_bytes());
                h.update(b":");
                write_canonical(&o[k], h);
            }
            h.update(b"}");
        }
        Value::Array(a) => {
            h.update(b"[");
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    h.update(b",");
                }
                write_canonical(x, h);
            }
            h.update(b"]");
        }
        other => {
            h.update(other.to_string().as_bytes());
        }
    }
}

/// What differs between the lock's record of a stage and its definition now. `inputs` holds each
/// input's hash where known; `None` means the input comes from a stale upstream stage.
pub fn reasons(
    def: &StageDef,
    entry: Option<&LockEntry>,
    inputs: &BTreeMap<String, Option<String>>,
) -> Vec<Reason> {
    let Some(entry) = entry else {
        return vec![Reason::NeverRan];
    };
    let mut out = Vec::new();
    let (uses, version, cmd) = action_identity(def);
    if (&uses, version, &cmd) != (&entry.uses, entry.stage_version, &entry.cmd) {
        out.push(Reason::ActionChanged {
            old: action_text(&entry.uses, entry.stage_version, &entry.cmd),
            new: action_text(&uses, version, &cmd),
        });
    }
    let empty = serde_json::Map::new();
    let now = def.params.as_object().unwrap_or(&empty);
    let then = entry.params.as_object().unwrap_or(&empty);
    let mut names: Vec<&String> = now.keys().chain(then.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        if now.get(name) != then.get(name) {
            out.push(Reason::ParamChanged {
                stage: def.name.clone(),
                name: name.clone(),
                old: then.get(name).cloned(),
                new: now.get(name).cloned(),
            });
        }
    }
    let mut vars: Vec<&String> = def.vars.keys().chain(entry.vars.keys()).collect();
    vars.sort();
    vars.dedup();
    for name in vars {
        if def.vars.get(name) != entry.vars.get(name) {
            out.push(Reason::VarChanged {
                name: name.clone(),
                old: entry.vars.get(name).cloned(),
                new: def.vars.get(name).cloned(),
            });
        }
    }
    for (name, hash) in inputs {
        match hash {
            None => {
                let stage = name.strip_prefix("stages.").unwrap_or(name).to_string();
                out.push(Reason::UpstreamStale { stage });
            }
            Some(h) if entry.inputs.get(name) != Some(h) => {
                out.push(Reason::InputChanged { name: name.clone() })
            }
            Some(_) => {}
        }
    }
    for name in entry.inputs.keys() {
        if !inputs.contains_key(name) {
            out.push(Reason::InputChanged { name: name.clone() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn def(yaml: &str) -> StageDef {
        let dir = tempfile::tempdir().unwrap();
        let mut p = crate::config::parse(yaml, Path::new("forge.yaml"), dir.path(), &[]).unwrap();
        p.stages.swap_remove("s").unwrap()
    }

    fn entry(d: &StageDef, inputs: &BTreeMap<String, String>) -> LockEntry {
        let (uses, stage_version, cmd) = action_identity(d);
        LockEntry {
            key: stage_key(d, inputs),
            uses,
            stage_version,
            cmd,
            params: d.params.clone(),
            vars: d.vars.clone(),
            inputs: inputs.clone(),
            out: "o".into(),
            duration_s: 0.0,
            metrics: BTreeMap::new(),
        }
    }

    #[test]
    fn key_ignores_param_order_and_follows_values() {
        let a = def("stages:\n  s:\n    cmd: echo ${params.a}\n    params: {a: 1, b: x}\n");
        let b = def("stages:\n  s:\n    cmd: echo ${params.a}\n    params: {b: x, a: 1}\n");
        let c = def("stages:\n  s:\n    cmd: echo ${params.a}\n    params: {b: y, a: 1}\n");
        let none = BTreeMap::new();
        assert_eq!(stage_key(&a, &none), stage_key(&b, &none));
        assert_ne!(stage_key(&a, &none), stage_key(&c, &none));
        let with_input = BTreeMap::from([("f".to_string(), "h1".to_string())]);
        assert_ne!(stage_key(&a, &none), stage_key(&a, &with_input));
    }

    #[test]
    fn reasons_name_each_difference() {
        let old =
            def("vars: {m: a}\nstages:\n  s:\n    cmd: echo ${vars.m}\n    params: {lr: 1.0e-4}\n");
        let new = def(
            "vars: {m: b}\nstages:\n  s:\n    cmd: echo ${vars.m} again\n    params: {lr: 2.0e-4}\n",
        );
        let ins = BTreeMap::from([("data".to_string(), "h1".to_string())]);
        let e = entry(&old, &ins);
        let now = BTreeMap::from([
            ("data".to_string(), Some("h2".to_string())),
            ("stages.up".to_string(), None),
        ]);
        let text: Vec<String> = reasons(&new, Some(&e), &now)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            [
                "stage version or command changed: `echo ${vars.m}` → `echo ${vars.m} again`",
                "param `s.lr` changed 0.0001 → 0.0002",
                "var `m` changed \"a\" → \"b\"",
                "input `data` changed",
                "upstream `up` is stale",
            ]
        );
        assert_eq!(reasons(&new, None, &now), [Reason::NeverRan]);
        let same: BTreeMap<_, _> = ins
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        assert!(reasons(&old, Some(&e), &same).is_empty());
    }
}
