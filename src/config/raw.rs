//! forge.yaml as written: serde types that keep each value's source location, so that every later
//! check can point at file:line:column.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    #[serde(default)]
    pub vars: IndexMap<String, Spanned<Value>>,
    pub remote: Option<RawRemote>,
    /// Keys keep their location so errors can point at the stage's name.
    pub stages: IndexMap<Spanned<String>, RawStage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    /// A built-in stage kind.
    pub uses: Option<Spanned<String>>,
    #[serde(default)]
    pub inputs: IndexMap<String, Spanned<String>>,
    /// A shell command.
    pub cmd: Option<Spanned<String>>,
    #[serde(default)]
    pub deps: Vec<Spanned<String>>,
    #[serde(default)]
    pub needs: Vec<Spanned<String>>,
    #[serde(default)]
    pub params: IndexMap<String, Spanned<Value>>,
    pub resources: Option<RawResources>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawResources {
    #[serde(default)]
    pub gpu: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemote {
    pub url: Spanned<String>,
    #[serde(default)]
    pub push: bool,
}
