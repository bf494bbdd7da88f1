//! Checks tool calls against the offered tools' JSON Schemas. The [`Verifier`] is the pure core
//! that gold-data filtering (stage `verify`), DPO pair mining, the GRPO reward and eval all share,
//! so one call is judged the same way everywhere. Compiling a schema costs far more than checking
//! a call, so a verifier compiles each tool once, and a [`SchemaCache`] shares compiled schemas
//! across the many rows that offer the same tools.
//!
//! Stage `verify` keeps a conversation when every gold call is [`Verdict::Valid`] (a row with no
//! gold calls — "the right answer is no call" — is valid) and quarantines it otherwise, with the
//! failing calls' verdicts as the reason.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::io::{self, DATA_FILE, JsonlWriter, RowLedger};
use super::schema::{Quarantined, Role, ToolCall, ToolSpec};
use crate::contract::{Context, Input, Report, StageError, TypedStage};

/// The judgement on one call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Valid,
    /// The call names a tool that was not offered.
    UnknownTool {
        name: String,
    },
    /// The arguments break the tool's schema; one message per violation.
    SchemaViolation {
        errors: Vec<String>,
    },
    /// The tool's own parameters are not a valid JSON Schema, so no call of it can be checked.
    InvalidToolSchema {
        name: String,
        error: String,
    },
}

impl Verdict {
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid)
    }

    /// A snake_case name, used as the quarantine reason kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::UnknownTool { .. } => "unknown_tool",
            Verdict::SchemaViolation { .. } => "schema_violation",
            Verdict::InvalidToolSchema { .. } => "invalid_tool_schema",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Valid => f.write_str("valid"),
            Verdict::UnknownTool { name } => write!(f, "unknown tool `{name}`"),
            Verdict::SchemaViolation { errors } => {
                write!(f, "schema violation: {}", errors.join("; "))
            }
            Verdict::InvalidToolSchema { name, error } => {
                write!(f, "tool `{name}` has an invalid schema: {error}")
            }
        }
    }
}

/// At most this many violations are reported per call.
const MAX_ERRORS: usize = 8;

type Compiled = Result<Arc<jsonschema::Validator>, Arc<str>>;

fn compile(schema: &Value) -> Compiled {
    jsonschema::validator_for(schema)
        .map(Arc::new)
        .map_err(|e| Arc::from(e.to_string()))
}

/// Compiled schemas by their JSON text, shared by the verifiers of many rows.
#[derive(Default)]
pub struct SchemaCache {
    compiled: HashMap<Box<str>, Compiled>,
    key: Vec<u8>,
}

impl SchemaCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many distinct schemas were compiled.
    pub fn len(&self) -> usize {
        self.compiled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.compiled.is_empty()
    }

    fn get(&mut self, schema: &Value) -> Compiled {
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        let compiled = match serde_json::to_writer(&mut key, schema) {
            Ok(()) => self.get_or_compile(&String::from_utf8_lossy(&key), || compile(schema)),
            Err(_) => compile(schema),
        };
        self.key = key;
        compiled
    }

    /// The compiled schema whose JSON text is `text`.
    fn get_text(&mut self, text: &str) -> Compiled {
        self.get_or_compile(text, || match serde_json::from_str::<Value>(text) {
            Ok(schema) => compile(&schema),
            Err(e) => Err(Arc::from(e.to_string())),
        })
    }

    fn get_or_compile(&mut self, key: &str, compile: impl FnOnce() -> Compiled) -> Compiled {
        if let Some(c) = self.compiled.get(key) {
            return c.clone();
        }
        let c = compile();
        self.compiled.insert(key.into(), c.clone());
        c
    }
}

/// Judges calls against one tool list.
pub struct Verifier {
    tools: Vec<(String, Compiled)>,
}

impl Verifier {
    /// Compiles each tool's parameters schema.
    pub fn new(tools: &[ToolSpec]) -> Self {
        Self::with_cache(tools, &mut SchemaCache::new())
    }

    /// Like [`new`](Self::new), reusing (and filling) `cache`.
    pub fn with_cache(tools: &[ToolSpec], cache: &mut SchemaCache) -> Self {
        Verifier {
            tools: tools
                .iter()
                .map(|t| (t.name.clone(), cache.get(&t.parameters)))
                .collect(),
        }
    }

    /// The tools whose own schema is invalid, with the reason.
    pub fn invalid_tools(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tools
            .iter()
            .filter_map(|(name, c)| c.as_ref().err().map(|e| (name.as_str(), e.as_ref())))
    }

    /// Judges one call. When two tools share a name, the first one offered counts.
    pub fn verify(&self, call: &ToolCall) -> Verdict {
        self.verify_arguments(&call.name, &Value::Object(call.arguments.clone()))
    }

    /// Judges a call of tool `name` with `arguments` (an object, when well-formed).
    pub fn verify_arguments(&self, name: &str, arguments: &Value) -> Verdict {
        let Some((name, compiled)) = self.tools.iter().find(|(tool, _)| tool == name) else {
            return Verdict::UnknownTool {
                name: name.to_string(),
            };
        };
        let validator = match compiled {
            Ok(v) => v,
            Err(error) => {
                return Verdict::InvalidToolSchema {
                    name: name.clone(),
                    error: error.to_string(),
                };
            }
        };
        if validator.is_valid(arguments) {
            return Verdict::Valid;
        }
        let errors = validator
            .iter_errors(arguments)
            .take(MAX_ERRORS)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        Verdict::SchemaViolation { errors }
    }
}

/// Stage `verify`.
pub struct Verify;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyParams {}

/// metrics.json of stage `verify`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyMetrics {
    #[serde(flatten)]
    pub rows: io::RowCounts,
    /// Gold calls checked, and how many were valid.
    pub calls: u64,
    pub calls_valid: u64,
    /// Distinct tool schemas compiled.
    pub schemas: u64,
}

impl TypedStage for Verify {
    type Params = VerifyParams;
    const KIND: &'static str = "verify";
    const VERSION: u32 = 1;
    const INPUTS: &'static [Input] = &[Input {
        name: "data",
        required: true,
    }];
    const ABOUT: &'static str =
        "checks every gold call against its tool's JSON Schema; failing rows quarantined";

    fn run(&self, _: &VerifyParams, ctx: &Context<'_>) -> Result<Report, StageError> {
        let rows = io::RowFile::open(ctx.input("data")?)?;
        let mut data = JsonlWriter::create(ctx.out.join(DATA_FILE))?;
        let mut ledger = RowLedger::create(ctx.out)?;
        let mut cache = SchemaCache::new();
        let (mut calls, mut calls_valid) = (0u64, 0u64);
        let total = rows.len() as u64;
        for (index, raw) in rows.iter() {
            if index % 4096 == 0 {
                ctx.check_cancelled()?;
                ctx.progress.update(index as u64, Some(total), "rows");
            }
            let row: RowView<'_> = match serde_json::from_slice(raw) {
                Ok(row) => row,
                Err(e) => {
                    ledger.quarantine(io::MALFORMED, &io::malformed(index, &e, raw))?;
                    continue;
                }
            };
            let verifier = Verifier {
                tools: row
                    .tools
                    .iter()
                    .map(|t| (t.name.to_string(), cache.get_text(t.parameters.get())))
                    .collect(),
            };
            let mut first_kind = None;
            let mut failures = Vec::new();
            for (i, call) in row.gold_calls.into_iter().enumerate() {
                calls += 1;
                let verdict = verifier.verify_arguments(&call.name, &Value::Object(call.arguments));
                if verdict.is_valid() {
                    calls_valid += 1;
                    continue;
                }
                first_kind.get_or_insert(verdict.kind());
                failures.push(format!("call {i} `{}`: {verdict}", call.name));
            }
            match first_kind {
                None => {
                    data.write_raw(raw)?;
                    ledger.keep();
                }
                Some(kind) => {
                    let q = Quarantined {
                        index,
                        id: Some(row.id.into_owned()),
                        reason: format!("{kind}: {}", failures.join(" | ")),
                        row: io::row_value(raw),
                    };
                    ledger.quarantine(kind, &q)?;
                }
            }
        }
        data.finish()?;
        let rows = ledger.finish()?;
        let metrics = VerifyMetrics {
            rows,
            calls,
            calls_valid,
            schemas: cache.len() as u64,
        };
        io::write_metrics(ctx.out, &metrics)?;
        Ok(Report {
            summary: format!(
                "{}; {calls_valid}/{calls} gold calls valid",
                metrics.rows.summary()
            ),
        })
    }
}

/// The parts of a [`Conversation`] row that verify reads, borrowed from its text; the tools'
/// schemas stay JSON text, the key of the [`SchemaCache`]. Messages are read to check the row.
#[derive(Deserialize)]
struct RowView<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, rename = "messages")]
    _messages: Vec<MessageView<'a>>,
    #[serde(borrow)]
    tools: Vec<ToolView<'a>>,
    #[serde(borrow)]
    gold_calls: Vec<CallView<'a>>,
}

/// A [`Message`](super::schema::Message), unread.
#[derive(Deserialize)]
struct MessageView<'a> {
    #[serde(rename = "role")]
    _role: Role,
    #[serde(default, borrow, rename = "content")]
    _content: Cow<'a, str>,
    #[serde(default, borrow, rename = "tool_calls")]
    _tool_calls: Option<&'a RawValue>,
}

/// A [`ToolSpec`] with its parameters left as JSON text.
#[derive(Deserialize)]
struct ToolView<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default, borrow, rename = "description")]
    _description: Cow<'a, str>,
    #[serde(borrow)]
    parameters: &'a RawValue,
}

/// A [`ToolCall`].
#[derive(Deserialize)]
struct CallView<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    arguments: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicBool;

    use serde_json::json;

    use super::*;
    use crate::contract::{Device, NoProgress};
    use crate::data::schema::{Conversation, Message};

    fn tool(name: &str, parameters: Value) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters,
        }
    }

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            name: name.into(),
            arguments: arguments.as_object().cloned().unwrap_or_else(Map::new),
        }
    }

    fn weather() -> ToolSpec {
        tool(
            "weather",
            json!({"type": "object", "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "point": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}],
                          "minItems": 2, "maxItems": 2}
            }, "required": ["city"]}),
        )
    }

    #[test]
    fn verdicts() {
        let broken = tool(
            "broken",
            json!({"type": "object", "properties": {"x": {"type": "widget"}}}),
        );
        let v = Verifier::new(&[weather(), broken]);
        assert_eq!(
            v.verify(&call("weather", json!({"city": "Oslo"}))),
            Verdict::Valid
        );
        assert_eq!(
            v.verify(&call(
                "weather",
                json!({"city": "Oslo", "days": 2, "point": [1, 2.5]})
            )),
            Verdict::Valid
        );
        assert_eq!(
            v.verify(&call("forecast", json!({}))),
            Verdict::UnknownTool {
                name: "forecast".into()
            }
        );
        let Verdict::SchemaViolation { errors } =
            v.verify(&call("weather", json!({"days": "2", "point": [1]})))
        else {
            panic!("expected a schema violation");
        };
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors.iter().any(|e| e.contains("city")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("/days")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("/point")), "{errors:?}");
        let verdict = v.verify(&call("broken", json!({"x": 1})));
        assert_eq!(verdict.kind(), "invalid_tool_schema");
        assert!(matches!(&verdict, Verdict::InvalidToolSchema { name, .. } if name == "broken"));
        assert_eq!(
            v.invalid_tools().map(|(n, _)| n).collect::<Vec<_>>(),
            ["broken"]
        );
    }

    #[test]
    fn verdict_serializes_with_its_kind() {
        let v = Verdict::UnknownTool { name: "x".into() };
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            json!({"verdict": "unknown_tool", "name": "x"})
        );
        assert_eq!(
            serde_json::to_value(Verdict::Valid).unwrap(),
            json!({"verdict": "valid"})
        );
    }

    #[test]
    fn the_cache_compiles_each_distinct_schema_once() {
        let mut cache = SchemaCache::new();
        let a = Verifier::with_cache(
            &[weather(), tool("t", json!({"type": "object"}))],
            &mut cache,
        );
        let b = Verifier::with_cache(&[weather()], &mut cache);
        assert_eq!(cache.len(), 2);
        assert!(Arc::ptr_eq(
            a.tools[0].1.as_ref().unwrap(),
            b.tools[0].1.as_ref().unwrap()
        ));
    }

    #[test]
    fn verifier_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
    }

    fn conversation(id: &str, tools: Vec<ToolSpec>, gold: Vec<ToolCall>) -> Conversation {
        Conversation {
            id: id.into(),
            messages: vec![Message {
                role: Role::User,
                content: "q".into(),
                tool_calls: vec![],
            }],
            tools,
            gold_calls: gold,
        }
    }

    #[test]
    fn stage_keeps_valid_rows_and_quarantines_the_rest() {
        let rows = [
            conversation(
                "r-0",
                vec![weather()],
                vec![call("weather", json!({"city": "Oslo"}))],
            ),
            conversation("r-1", vec![weather()], vec![]),
            conversation(
                "r-2",
                vec![weather()],
                vec![
                    call("weather", json!({"city": "A"})),
                    call("weather", json!({"city": 3})),
                ],
            ),
            conversation("r-3", vec![], vec![call("weather", json!({}))]),
        ];
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        fs::create_dir(&input).unwrap();
        let mut text = String::new();
        for r in &rows[..2] {
            text += &serde_json::to_string(r).unwrap();
            text.push('\n');
        }
        text += "{\"id\": \"no messages\"}\n";
        for r in &rows[2..] {
            text += &serde_json::to_string(r).unwrap();
            text.push('\n');
        }
        fs::write(input.join(DATA_FILE), text).unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let inputs: BTreeMap<String, PathBuf> = [("data".to_string(), input)].into();
        let cancel = AtomicBool::new(false);
        let ctx = Context {
            stage: "verify",
            inputs: &inputs,
            out: &out,
            state: crate::contract::unused_state(),
            device: Device::Cpu,
            progress: &NoProgress,
            cancel: &cancel,
            seed: 0,
        };
        Verify.run(&VerifyParams {}, &ctx).unwrap();

        let kept: Vec<Conversation> = io::read_rows::<Conversation>(&out)
            .unwrap()
            .map(|(_, r)| r.unwrap())
            .collect();
        assert_eq!(kept, rows[..2].to_vec());
        let q: Vec<Quarantined> = io::read_rows::<Quarantined>(&out.join(io::QUARANTINE_FILE))
            .unwrap()
            .map(|(_, r)| r.unwrap())
            .collect();
        assert_eq!(q.iter().map(|q| q.index).collect::<Vec<_>>(), [2, 3, 4]);
        assert!(
            q[1].reason
                .starts_with("schema_violation: call 1 `weather`"),
            "{}",
            q[1].reason
        );
        assert!(q[1].reason.contains("/city"), "{}", q[1].reason);
        assert_eq!(q[1].row, serde_json::to_value(&rows[2]).unwrap());
        assert!(q[2].reason.starts_with("unknown_tool"), "{}", q[2].reason);

        let m: VerifyMetrics =
            serde_json::from_slice(&fs::read(out.join(io::METRICS_FILE)).unwrap()).unwrap();
        assert_eq!(m.rows.rows_in, 5);
        assert_eq!(m.rows.rows_in, m.rows.rows_kept + m.rows.rows_quarantined);
        assert_eq!(m.rows.rows_kept, 2);
        assert_eq!(m.rows.quarantined_by_reason["schema_violation"], 1);
        assert_eq!(m.rows.quarantined_by_reason["unknown_tool"], 1);
        assert_eq!(m.rows.quarantined_by_reason[io::MALFORMED], 1);
        assert_eq!((m.calls, m.calls_valid), (4, 2));
        assert_eq!(m.schemas, 1);
    }
}
