//! The canonical records every data stage speaks (DESIGN.md, "Data formats between stages").
//! Nothing past `normalize` knows any source format; one JSON object per line on disk.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A tool offered to the model: its parameters are a JSON Schema object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub parameters: Value,
}

/// One call of a tool, with its arguments as a JSON object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// A chat message. `tool_calls` only on assistant messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

/// A training/eval example. A single-turn row is one user message; `gold_calls` are the calls the
/// assistant should make next (empty: the right answer is no call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Stable across runs: `<source>-<row index>` (e.g. `xlam-41`).
    pub id: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub gold_calls: Vec<ToolCall>,
}

/// A DPO preference pair: same prompt and tools, a chosen and a rejected assistant answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub prompt: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub chosen: Vec<ToolCall>,
    pub rejected: Vec<ToolCall>,
    pub reason: String,
}

/// A row a stage dropped: written to `quarantine.jsonl`, counted in `metrics.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The row's 0-based index in the stage's input.
    pub index: usize,
    /// Its id, when it got far enough to have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub reason: String,
    /// The row as it came in (or as much of it as could be kept).
    pub row: Value,
}
