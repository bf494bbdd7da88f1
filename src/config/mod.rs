//! forge.yaml → a validated, typed [`Pipeline`].
//!
//! Parsing keeps source locations ([`raw`]); validation resolves `${...}` references
//! ([`interp`]), applies `--set` overrides, checks built-in params against each stage's own typed
//! struct, and checks that every referenced stage and input file exists. Every error names
//! file:line:column and the name at fault, before anything runs. Nothing here executes or hashes.

pub mod interp;
mod raw;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use forge_stages::Stage;
use indexmap::IndexMap;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use interp::{Piece, Template, is_name_char};
use raw::{RawFile, RawStage};

/// A 1-based position in forge.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    pub line: u64,
    pub column: u64,
}

impl<T> From<&Spanned<T>> for Loc {
    fn from(s: &Spanned<T>) -> Loc {
        Loc {
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{}:{}: {message}", file.display(), at.line, at.column)]
    At {
        file: PathBuf,
        at: Loc,
        message: String,
    },
    #[error("{0}")]
    Set(String),
}

/// A validated pipeline.
#[derive(Debug)]
pub struct Pipeline {
    /// forge.yaml as the user named it (for messages).
    pub file: PathBuf,
    /// The workspace root: the directory holding forge.yaml.
    pub root: PathBuf,
    /// Stages in declaration order.
    pub stages: IndexMap<String, StageDef>,
    /// The shared cache, if forge.yaml names one.
    pub remote: Option<RemoteConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    pub url: String,
    /// Push every stage that runs.
    pub push: bool,
}

/// Whether `url` names a remote kind forge can use.
pub fn remote_url_ok(url: &str) -> bool {
    ["file:///", "http://", "https://", "s3://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len())
}

#[derive(Debug)]
pub struct StageDef {
    pub name: String,
    pub at: Loc,
    pub action: Action,
    /// Resolved params: vars substituted, `--set` applied, and for built-ins checked and filled
    /// with defaults by the stage's own struct. Always a JSON object.
    pub params: Value,
    /// Named inputs. Built-ins: their `inputs:`. Commands: each dep by its path, and each
    /// referenced or needed stage as `stages.NAME`.
    pub inputs: BTreeMap<String, InputRef>,
    /// Stages that must finish first (referenced or needed).
    pub upstream: BTreeSet<String>,
    pub gpus: u32,
    /// The vars this stage references, with their values.
    pub vars: BTreeMap<String, Value>,
}

pub enum Action {
    Builtin(&'static dyn Stage),
    /// The command; every `${...}` in it was checked to exist.
    Cmd(Template),
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Builtin(s) => write!(f, "Builtin({} v{})", s.kind(), s.version()),
            Action::Cmd(t) => write!(f, "Cmd({})", render_key_cmd(t)),
        }
    }
}

/// The command text that enters the stage key: every `${...}` kept symbolic (the values of params
/// and vars enter the key on their own; paths are machine-specific).
pub fn render_key_cmd(t: &Template) -> String {
    t.pieces.iter().map(|p| p.to_string()).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputRef {
    /// A workspace path, relative to the root.
    Path(String),
    /// A stage's output directory, or a path below it (`sub` empty or starting with `/`).
    Stage { stage: String, sub: String },
}

/// A `--set STAGE.PARAM=VALUE` override.
#[derive(Debug, Clone, PartialEq)]
pub struct Set {
    pub stage: String,
    pub param: String,
    pub value: Value,
    pub text: String,
}

impl Set {
    /// Parses `STAGE.PARAM=VALUE`; VALUE is read as a YAML scalar (number, bool, string...).
    pub fn parse(text: &str) -> Result<Set, ConfigError> {
        let bad = |why: &str| ConfigError::Set(format!("--set `{text}`: {why}"));
        let (lhs, value) = text
            .split_once('=')
            .ok_or_else(|| bad("expected STAGE.PARAM=VALUE"))?;
        let (stage, param) = lhs
            .split_once('.')
            .ok_or_else(|| bad("expected STAGE.PARAM=VALUE"))?;
        if stage.is_empty()
            || param.is_empty()
            || !stage.chars().all(is_name_char)
            || !param.chars().all(is_name_char)
        {
            return Err(bad("expected STAGE.PARAM=VALUE with plain names"));
        }
        let value = if value.trim().is_empty() {
            Value::String(value.to_string())
        } else {
            serde_saphyr::from_str::<Value>(value)
                .unwrap_or_else(|_| Value::String(value.to_string()))
        };
        Ok(Set {
            stage: stage.to_string(),
            param: param.to_string(),
            value,
            text: text.to_string(),
        })
    }
}

/// Reads and validates `file`. `sets` are applied as if they were written in the file.
pub fn load(file: &Path, sets: &[Set]) -> Result<Pipeline, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let root = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parse(&text, file, &root, sets)
}

/// Validates forge.yaml `text`; `file` names it in errors and `root` resolves relative paths.
pub fn parse(text: &str, file: &Path, root: &Path, sets: &[Set]) -> Result<Pipeline, ConfigError> {
    let at = |at: Loc, message: String| ConfigError::At {
        file: file.to_path_buf(),
        at,
        message,
    };
    let options = serde_saphyr::options! { strict_booleans: true };
    let raw: RawFile = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
        let loc = e
            .location()
            .map(|l| Loc {
                line: l.line(),
                column: l.column(),
            })
            .unwrap_or_default();
        let mut message = yaml_message(&e);
        let line = text
            .lines()
            .nth(loc.line.saturating_sub(1) as usize)
            .unwrap_or("");
        if message.contains("flow") && line.contains("${") {
            message.push_str(
                " (inside `{ ... }`, quote values that hold `${...}`: `{ rows: \"${stages.a}\" }`)",
            );
        }
        at(loc, message)
    })?;

    for (name, value) in &raw.vars {
        if !name.chars().all(is_name_char) {
            return Err(at(
                value.into(),
                format!("var `{name}`: names may hold only letters, digits, `_` and `-`"),
            ));
        }
        if contains_reference(&value.value) {
            return Err(at(
                value.into(),
                format!("var `{name}` may not contain `${{...}}` references"),
            ));
        }
    }
    let vars: BTreeMap<&str, (&Value, Loc)> = raw
        .vars
        .iter()
        .map(|(k, v)| (k.as_str(), (&v.value, Loc::from(v))))
        .collect();

    let remote = match raw.remote {
        Some(r) if !remote_url_ok(&r.url.value) => {
            return Err(at(
                Loc::from(&r.url),
                format!(
                    "remote `{}`: expected file:///PATH, http(s)://HOST/PREFIX or s3://BUCKET/PREFIX",
                    r.url.value
                ),
            ));
        }
        Some(r) => Some(RemoteConfig {
            url: r.url.value,
            push: r.push,
        }),
        None => None,
    };
    let all: IndexMap<String, (Loc, RawStage)> = raw
        .stages
        .into_iter()
        .map(|(k, v)| (k.value.clone(), (Loc::from(&k), v)))
        .collect();
    for set in sets {
        if !all.contains_key(&set.stage) {
            return Err(ConfigError::Set(format!(
                "--set `{}`: no stage `{}` in {}",
                set.text,
                set.stage,
                file.display()
            )));
        }
    }

    let mut stages = IndexMap::new();
    for (name, (loc, stage)) in &all {
        let ctx = StageCx {
            name,
            at: *loc,
            file,
            root,
            vars: &vars,
            all: &all,
            sets: sets.iter().filter(|s| &s.stage == name).collect(),
        };
        stages.insert(name.clone(), ctx.validate(stage)?);
    }
    Ok(Pipeline {
        file: file.to_path_buf(),
        root: root.to_path_buf(),
        stages,
        remote,
    })
}

/// serde-saphyr's message without its own location prefix or snippet (we add ours).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("").trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // "line 3 column 5: msg" style prefixes, if present, are redundant with ours.
    let msg = match first.split_once(": ") {
        Some((pre, rest)) if pre.starts_with("line ") => rest,
        _ => first,
    };
    let msg = msg.split(", set DuplicateKeyPolicy").next().unwrap_or(msg);
    match msg.strip_prefix("invalid ") {
        Some(ty) if ty.starts_with('u') || ty.starts_with('i') => {
            format!("expected an integer ({ty})")
        }
        _ => msg.to_string(),
    }
}

fn contains_reference(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("${") && !s.contains("$${"),
        Value::Array(a) => a.iter().any(contains_reference),
        Value::Object(o) => o.values().any(contains_reference),
        _ => false,
    }
}

struct StageCx<'a> {
    name: &'a str,
    at: Loc,
    file: &'a Path,
    root: &'a Path,
    vars: &'a BTreeMap<&'a str, (&'a Value, Loc)>,
    all: &'a IndexMap<String, (Loc, RawStage)>,
    sets: Vec<&'a Set>,
}

impl StageCx<'_> {
    fn err(&self, at: Loc, message: String) -> ConfigError {
        ConfigError::At {
            file: self.file.to_path_buf(),
            at,
            message,
        }
    }

    fn validate(&self, raw: &RawStage) -> Result<StageDef, ConfigError> {
        let name = self.name;
        if !name.chars().all(is_name_char) {
            return Err(self.err(
                self.at,
                format!("stage `{name}`: names may hold only letters, digits, `_` and `-`"),
            ));
        }
        let mut used_vars = BTreeMap::new();
        let mut upstream = BTreeSet::new();
        let mut inputs = BTreeMap::new();

        let mut params = Map::new();
        for (key, value) in &raw.params {
            let v = self.interpolate_value(&value.value, Loc::from(value), &mut used_vars)?;
            params.insert(key.clone(), v);
        }

        for need in &raw.needs {
            self.check_stage_ref(&need.value, need.into())?;
            upstream.insert(need.value.clone());
            inputs.insert(
                format!("stages.{}", need.value),
                InputRef::Stage {
                    stage: need.value.clone(),
                    sub: String::new(),
                },
            );
        }

        let action = match (&raw.uses, &raw.cmd) {
            (Some(_), Some(cmd)) => {
                return Err(self.err(
                    cmd.into(),
                    format!("stage `{name}` has both `uses:` and `cmd:`; give one"),
                ));
            }
            (None, None) => {
                return Err(self.err(
                    self.at,
                    format!("stage `{name}` needs either `uses:` (a built-in stage) or `cmd:` (a shell command)"),
                ));
            }
            (Some(uses), None) => {
                let stage = forge_stages::lookup(&uses.value).ok_or_else(|| {
                    let kinds: Vec<_> = forge_stages::registry().iter().map(|s| s.kind()).collect();
                    let known = if kinds.is_empty() {
                        "none yet".to_string()
                    } else {
                        kinds.join(", ")
                    };
                    self.err(
                        uses.into(),
                        format!(
                            "stage `{name}`: unknown stage kind `{}` (built-in kinds: {known})",
                            uses.value
                        ),
                    )
                })?;
                if let Some(dep) = raw.deps.first() {
                    return Err(self.err(dep.into(), format!("stage `{name}`: `deps:` is for `cmd:` stages; a built-in stage takes `inputs:`")));
                }
                self.apply_sets(&mut params, None)?;
                for (input, value) in &raw.inputs {
                    let loc = Loc::from(value);
                    if !stage.inputs().iter().any(|i| i.name == input) {
                        let names: Vec<_> = stage.inputs().iter().map(|i| i.name).collect();
                        return Err(self.err(
                            loc,
                            format!(
                                "stage `{name}`: `{}` has no input `{input}` (inputs: {})",
                                stage.kind(),
                                names.join(", ")
                            ),
                        ));
                    }
                    let r = self.input_ref(&value.value, loc, &mut used_vars)?;
                    if let InputRef::Stage { stage, .. } = &r {
                        upstream.insert(stage.clone());
                    }
                    inputs.insert(input.clone(), r);
                }
                if let Some(missing) = stage
                    .inputs()
                    .iter()
                    .find(|i| i.required && !raw.inputs.contains_key(i.name))
                {
                    return Err(self.err(
                        self.at,
                        format!(
                            "stage `{name}`: `{}` needs input `{}`",
                            stage.kind(),
                            missing.name
                        ),
                    ));
                }
                let resolved = stage.check_params(&Value::Object(params)).map_err(|e| {
                    let top = e.path.split(['.', '[']).next().unwrap_or("");
                    let loc = raw
                        .params
                        .get(top)
                        .map(Loc::from)
                        .or_else(|| {
                            raw.params
                                .iter()
                                .find(|(k, _)| e.message.contains(&format!("`{k}`")))
                                .map(|(_, v)| Loc::from(v))
                        })
                        .unwrap_or(self.at);
                    let from_set = if self.sets.is_empty() {
                        ""
                    } else {
                        " (with --set applied)"
                    };
                    self.err(
                        loc,
                        format!("stage `{name}` (uses: {}): {e}{from_set}", stage.kind()),
                    )
                })?;
                params = match resolved {
                    Value::Object(m) => m,
                    other => {
                        return Err(self.err(
                            self.at,
                            format!("stage `{name}`: params resolve to {other}, not a mapping"),
                        ));
                    }
                };
                Action::Builtin(stage)
            }
            (None, Some(cmd)) => {
                if let Some((input, value)) = raw.inputs.first() {
                    return Err(self.err(value.into(), format!("stage `{name}`: `inputs:` ({input}) is for built-in stages; a `cmd:` stage lists `deps:`")));
                }
                self.apply_sets(&mut params, Some(&raw.params))?;
                let loc = Loc::from(cmd);
                let template = Template::parse(&cmd.value)
                    .map_err(|m| self.err(loc, format!("stage `{name}`: {m}")))?;
                let mut pieces = Vec::new();
                for piece in template.pieces {
                    match &piece {
                        Piece::Var(v) => {
                            self.var(v, loc, &mut used_vars)?;
                        }
                        Piece::Param(p) if !params.contains_key(p) => {
                            return Err(self.err(loc, format!("stage `{name}`: `${{params.{p}}}` but the stage has no param `{p}`")));
                        }
                        Piece::Stage(s) => {
                            self.check_stage_ref(s, loc)?;
                            upstream.insert(s.clone());
                            inputs.insert(
                                format!("stages.{s}"),
                                InputRef::Stage {
                                    stage: s.clone(),
                                    sub: String::new(),
                                },
                            );
                        }
                        _ => {}
                    }
                    pieces.push(piece);
                }
                for dep in &raw.deps {
                    let dloc = Loc::from(dep);
                    let path = self.plain_string(&dep.value, dloc, &mut used_vars)?;
                    self.check_path(&path, dloc)?;
                    inputs.insert(path.clone(), InputRef::Path(path));
                }
                Action::Cmd(Template { pieces })
            }
        };

        Ok(StageDef {
            name: name.to_string(),
            at: self.at,
            action,
            params: Value::Object(params),
            inputs,
            upstream,
            gpus: raw.resources.as_ref().map_or(0, |r| r.gpu),
            vars: used_vars,
        })
    }

    fn apply_sets(
        &self,
        params: &mut Map<String, Value>,
        declared: Option<&IndexMap<String, Spanned<Value>>>,
    ) -> Result<(), ConfigError> {
        for set in &self.sets {
            if let Some(declared) = declared
                && !declared.contains_key(&set.param)
            {
                let names: Vec<_> = declared.keys().map(String::as_str).collect();
                let names = if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                };
                return Err(self.err(
                    self.at,
                    format!(
                        "--set `{}`: stage `{}` has no param `{}` (params: {names})",
                        set.text, self.name, set.param
                    ),
                ));
            }
            params.insert(set.param.clone(), set.value.clone());
        }
        Ok(())
    }

    fn check_stage_ref(&self, stage: &str, at: Loc) -> Result<(), ConfigError> {
        if stage == self.name {
            return Err(self.err(at, format!("stage `{stage}` refers to itself")));
        }
        if !self.all.contains_key(stage) {
            return Err(self.err(
                at,
                format!("stage `{}` refers to unknown stage `{stage}`", self.name),
            ));
        }
        Ok(())
    }

    fn check_path(&self, path: &str, at: Loc) -> Result<(), ConfigError> {
        let p = Path::new(path);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(self.err(
                at,
                format!(
                    "stage `{}`: input `{path}` must be a path inside the workspace",
                    self.name
                ),
            ));
        }
        if p.starts_with("artifacts") || p.starts_with("cache") {
            return Err(self.err(at, format!("stage `{}`: input `{path}` is forge's own output; refer to it as ${{stages.NAME}}", self.name)));
        }
        if !self.root.join(p).exists() {
            return Err(self.err(
                at,
                format!("stage `{}`: missing input file `{path}`", self.name),
            ));
        }
        Ok(())
    }

    fn var(
        &self,
        name: &str,
        at: Loc,
        used: &mut BTreeMap<String, Value>,
    ) -> Result<Value, ConfigError> {
        let (value, _) = self.vars.get(name).ok_or_else(|| {
            self.err(
                at,
                format!("stage `{}` refers to unknown var `{name}`", self.name),
            )
        })?;
        used.insert(name.to_string(), (*value).clone());
        Ok((*value).clone())
    }

    /// Substitutes vars in a string where only vars may appear.
    fn plain_string(
        &self,
        s: &str,
        at: Loc,
        used: &mut BTreeMap<String, Value>,
    ) -> Result<String, ConfigError> {
        let t =
            Template::parse(s).map_err(|m| self.err(at, format!("stage `{}`: {m}", self.name)))?;
        t.render(|p| match p {
            Piece::Var(v) => Ok(scalar_text(&self.var(v, at, used)?)),
            other => Err(self.err(
                at,
                format!(
                    "stage `{}`: `{other}` is not allowed here; only ${{vars.NAME}}",
                    self.name
                ),
            )),
        })
    }

    /// Substitutes vars in a param value; a string that is exactly `${vars.X}` takes X's type.
    fn interpolate_value(
        &self,
        v: &Value,
        at: Loc,
        used: &mut BTreeMap<String, Value>,
    ) -> Result<Value, ConfigError> {
        Ok(match v {
            Value::String(s) => {
                let t = Template::parse(s)
                    .map_err(|m| self.err(at, format!("stage `{}`: {m}", self.name)))?;
                match t.single() {
                    Some(Piece::Var(name)) => self.var(name, at, used)?,
                    _ => Value::String(self.plain_string(s, at, used)?),
                }
            }
            Value::Array(a) => Value::Array(
                a.iter()
                    .map(|x| self.interpolate_value(x, at, used))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| Ok((k.clone(), self.interpolate_value(x, at, used)?)))
                    .collect::<Result<_, ConfigError>>()?,
            ),
            other => other.clone(),
        })
    }

    /// A built-in stage's input: `${stages.X}` (optionally followed by a sub-path) or a path.
    fn input_ref(
        &self,
        s: &str,
        at: Loc,
        used: &mut BTreeMap<String, Value>,
    ) -> Result<InputRef, ConfigError> {
        let t =
            Template::parse(s).map_err(|m| self.err(at, format!("stage `{}`: {m}", self.name)))?;
        if let Some(Piece::Stage(stage)) = t.pieces.first() {
            self.check_stage_ref(stage, at)?;
            let rest = Template {
                pieces: t.pieces[1..].to_vec(),
            };
            let sub = rest.render(|p| match p {
                Piece::Var(v) => Ok(scalar_text(&self.var(v, at, used)?)),
                other => Err(self.err(
                    at,
                    format!(
                        "stage `{}`: `{other}` is not allowed after ${{stages.{stage}}}",
                        self.name
                    ),
                )),
            })?;
            if !sub.is_empty() && (!sub.starts_with('/') || sub.contains("..")) {
                return Err(self.err(
                    at,
                    format!(
                        "stage `{}`: expected `${{stages.{stage}}}/PATH`, got `{s}`",
                        self.name
                    ),
                ));
            }
            return Ok(InputRef::Stage {
                stage: stage.clone(),
                sub,
            });
        }
        let path = self.plain_string(s, at, used)?;
        self.check_path(&path, at)?;
        Ok(InputRef::Path(path))
    }
}

/// A param or var as it appears inside a command: strings bare, everything else as JSON.
pub fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
