//! Stage `normalize`: source rows (xLAM, ToolACE or OpenAI-style) → canonical
//! [`Conversation`]s. It is the only place that knows a source format: everything downstream
//! reads `data.jsonl`. A row that cannot be converted is quarantined with its reason, never fatal.
//!
//! Accepted row shapes (one JSON object per row; see [`io::RowFile`] for files):
//! - `xlam`: `{"query": str, "tools": str, "answers": str}` where `tools` and `answers` are
//!   JSON-encoded lists (already-decoded lists are accepted too). A tool is
//!   `{name, description, parameters: {pname: {type, description, default?}}}` with xLAM's
//!   Python-ish types ([`xlam_types`]); an answer is `{name, arguments: object}`.
//! - `toolace`: `{"system": str, "conversations": [{"from": str, "value": str}, ...]}`. The tools
//!   are the first JSON list of objects with a `name` inside `system` (BFCL-style schemas:
//!   `dict`, `float`, `tuple`... are mapped to JSON Schema). `from` is user/human,
//!   assistant/gpt, tool/function/observation or system. The prompt is every turn before the
//!   first assistant turn; that turn is the answer: a Python call list `[f(a=1), g(b="x")]` gives
//!   the gold calls ([`parse_python_calls`]), plain text means "no call".
//! - `openai`: `{"messages": [{role, content, tool_calls?}], "tools": [{"type": "function",
//!   "function": {name, description, parameters}}]}`. The last assistant message is the answer
//!   (its `tool_calls`, whose `arguments` may be a JSON string, are the gold calls); the messages
//!   before it are the prompt.
//!
//! The same tools recur across thousands of rows, so the stage converts each distinct tool (by
//! its source JSON text) once and reuses the converted JSON text.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value, json};

use super::io::{self, DATA_FILE, JsonlWriter, RowLedger};
use super::schema::{Conversation, Message, Quarantined, Role, ToolCall, ToolSpec};
use super::xlam_types::{self, ParamsError, json_kind};
use crate::contract::{Context, Input, Report, StageError, TypedStage};

/// Stage `normalize`.
pub struct Normalize;

/// The source format of the input rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    #[default]
    Xlam,
    Toolace,
    Openai,
}

impl SourceFormat {
    /// The name used in params and as the id prefix (`xlam-41`).
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Xlam => "xlam",
            SourceFormat::Toolace => "toolace",
            SourceFormat::Openai => "openai",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizeParams {
    #[serde(default)]
    pub format: SourceFormat,
}

/// Why a row could not be converted. Its display starts with its [`kind`](Self::kind).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowError {
    #[error("malformed_row: {0}")]
    Malformed(String),
    #[error("bad_shape: {0}")]
    Shape(String),
    #[error("bad_json: field `{field}` is not valid JSON: {error}")]
    Json { field: &'static str, error: String },
    #[error("{}: tool `{tool}`: {source}", source.kind())]
    Tool {
        tool: String,
        #[source]
        source: ParamsError,
    },
    #[error("bad_call: {0}")]
    Call(String),
    #[error("bad_call_syntax: {0}")]
    CallSyntax(#[from] CallSyntaxError),
    #[error("no_answer: the row has no assistant turn")]
    NoAnswer,
    #[error("unknown_role: `{0}`")]
    UnknownRole(String),
}

impl RowError {
    /// The quarantine reason kind counted in metrics.json.
    pub fn kind(&self) -> &'static str {
        match self {
            RowError::Malformed(_) => io::MALFORMED,
            RowError::Shape(_) => "bad_shape",
            RowError::Json { .. } => "bad_json",
            RowError::Tool { source, .. } => source.kind(),
            RowError::Call(_) => "bad_call",
            RowError::CallSyntax(_) => "bad_call_syntax",
            RowError::NoAnswer => "no_answer",
            RowError::UnknownRole(_) => "unknown_role",
        }
    }

    /// A row that failed to deserialize: bad JSON is malformed, JSON of the wrong shape is not.
    fn from_serde(e: &serde_json::Error) -> Self {
        if e.is_data() {
            RowError::Shape(e.to_string())
        } else {
            RowError::Malformed(e.to_string())
        }
    }
}

/// Converts one source row (its JSON text) into a [`Conversation`] with id `id`. Pure; the
/// stage does the same, with each distinct tool converted once.
pub fn convert_row(format: SourceFormat, row: &str, id: String) -> Result<Conversation, RowError> {
    let pieces = pieces(format, row)?;
    let tools = pieces
        .tool_texts()
        .map(|text| convert_tool(format, text))
        .collect::<Result<_, _>>()?;
    Ok(Conversation {
        id,
        messages: pieces.messages,
        tools,
        gold_calls: pieces.gold_calls,
    })
}

impl TypedStage for Normalize {
    type Params = NormalizeParams;
    const KIND: &'static str = "normalize";
    const VERSION: u32 = 1;
    const INPUTS: &'static [Input] = &[Input {
        name: "rows",
        required: true,
    }];
    const ABOUT: &'static str =
        "source rows (xLAM, ToolACE, OpenAI-style) → canonical conversations; bad rows quarantined";

    fn run(&self, params: &NormalizeParams, ctx: &Context<'_>) -> Result<Report, StageError> {
        let rows = io::RowFile::open(ctx.input("rows")?)?;
        let mut data = JsonlWriter::create(ctx.out.join(DATA_FILE))?;
        let mut ledger = RowLedger::create(ctx.out)?;
        let mut tools = ToolCache::new(params.format);
        let prefix = params.format.name();
        let total = rows.len() as u64;
        for (index, raw) in rows.iter() {
            if index % 4096 == 0 {
                ctx.check_cancelled()?;
                ctx.progress.update(index as u64, Some(total), "rows");
            }
            let id = format!("{prefix}-{index}");
            let converted = std::str::from_utf8(raw)
                .map_err(|e| RowError::Malformed(e.to_string()))
                .and_then(|row| pieces(params.format, row))
                .and_then(|p| {
                    let converted = p
                        .tool_texts()
                        .map(|text| tools.get(text))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((p, converted))
                });
            match converted {
                Ok((pieces, handles)) => {
                    let converted: Vec<&RawValue> =
                        handles.iter().map(|&h| tools.converted(h)).collect();
                    data.write(&ConversationOut {
                        id: &id,
                        messages: &pieces.messages,
                        tools: &converted,
                        gold_calls: &pieces.gold_calls,
                    })?;
                    ledger.keep();
                }
                Err(e) => {
                    let q = Quarantined {
                        index,
                        id: Some(id),
                        reason: e.to_string(),
                        row: io::row_value(raw),
                    };
                    ledger.quarantine(e.kind(), &q)?;
                }
            }
        }
        data.finish()?;
        let counts = ledger.finish()?;
        io::write_metrics(ctx.out, &counts)?;
        Ok(Report {
            summary: counts.summary(),
        })
    }
}

/// A [`Conversation`] as written, with its tools already serialized (see [`ToolCache`]). Field
/// names and order are Conversation's; a test reads the output back as Conversations.
#[derive(Serialize)]
struct ConversationOut<'a> {
    id: &'a str,
    messages: &'a [Message],
    tools: &'a [&'a RawValue],
    gold_calls: &'a [ToolCall],
}

/// Converted tools as JSON text, by their source JSON text.
struct ToolCache {
    format: SourceFormat,
    index: HashMap<Box<str>, Result<usize, RowError>>,
    converted: Vec<Box<RawValue>>,
}

impl ToolCache {
    fn new(format: SourceFormat) -> Self {
        ToolCache {
            format,
            index: HashMap::new(),
            converted: Vec::new(),
        }
    }

    /// The converted tool's handle for [`converted`](Self::converted).
    fn get(&mut self, text: &str) -> Result<usize, RowError> {
        if let Some(known) = self.index.get(text) {
            return known.clone();
        }
        let converted = convert_tool(self.format, text).and_then(|tool| {
            serde_json::value::to_raw_value(&tool).map_err(|e| RowError::Shape(e.to_string()))
        });
        let entry = converted.map(|raw| {
            self.converted.push(raw);
            self.converted.len() - 1
        });
        self.index.insert(text.into(), entry.clone());
        entry
    }

    fn converted(&self, handle: usize) -> &RawValue {
        &self.converted[handle]
    }
}

/// A row taken apart: its prompt, its tools still as source JSON text (`tools_source[span]`), and
/// its gold calls.
struct Pieces<'a> {
    messages: Vec<Message>,
    tools_source: Cow<'a, str>,
    tool_spans: Vec<Range<usize>>,
    gold_calls: Vec<ToolCall>,
}

impl Pieces<'_> {
    fn tool_texts(&self) -> impl Iterator<Item = &str> {
        self.tool_spans
            .iter()
            .map(|span| &self.tools_source[span.clone()])
    }
}

/// The spans of `items` (borrowed from `source`) within `source`.
fn spans_in(source: &str, items: &[&RawValue]) -> Vec<Range<usize>> {
    let base = source.as_ptr() as usize;
    items
        .iter()
        .map(|item| {
            let at = item.get().as_ptr() as usize - base;
            at..at + item.get().len()
        })
        .collect()
}

fn pieces(format: SourceFormat, row: &str) -> Result<Pieces<'_>, RowError> {
    match format {
        SourceFormat::Xlam => xlam_pieces(row),
        SourceFormat::Toolace => toolace_pieces(row),
        SourceFormat::Openai => openai_pieces(row),
    }
}

/// Converts one tool, given as source JSON text.
fn convert_tool(format: SourceFormat, text: &str) -> Result<ToolSpec, RowError> {
    match format {
        SourceFormat::Xlam => xlam_tool(text),
        SourceFormat::Toolace | SourceFormat::Openai => {
            let value = serde_json::from_str(text).map_err(|e| shape(format!("a tool: {e}")))?;
            json_schema_tool(value)
        }
    }
}

fn shape(e: impl std::fmt::Display) -> RowError {
    RowError::Shape(e.to_string())
}

// ---- xLAM ----

#[derive(Deserialize)]
struct XlamRow<'a> {
    #[serde(borrow)]
    query: Cow<'a, str>,
    #[serde(borrow)]
    tools: &'a RawValue,
    #[serde(borrow)]
    answers: &'a RawValue,
}

#[derive(Deserialize)]
struct XlamTool {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Value,
}

#[derive(Deserialize)]
struct XlamCall {
    name: String,
    #[serde(default, alias = "parameters")]
    arguments: Value,
}

fn xlam_pieces(row: &str) -> Result<Pieces<'_>, RowError> {
    let parsed: XlamRow<'_> = serde_json::from_str(row).map_err(|e| RowError::from_serde(&e))?;
    let tools_source = encoded_list(parsed.tools, "tools")?;
    let tools: Vec<&RawValue> =
        serde_json::from_str(&tools_source).map_err(|e| RowError::Json {
            field: "tools",
            error: e.to_string(),
        })?;
    let tool_spans = spans_in(&tools_source, &tools);
    let answers_source = encoded_list(parsed.answers, "answers")?;
    let answers: Vec<XlamCall> =
        serde_json::from_str(&answers_source).map_err(|e| RowError::Json {
            field: "answers",
            error: e.to_string(),
        })?;
    let gold_calls = answers
        .into_iter()
        .map(|a| call(a.name, a.arguments))
        .collect::<Result<_, _>>()?;
    Ok(Pieces {
        messages: vec![Message {
            role: Role::User,
            content: parsed.query.into_owned(),
            tool_calls: Vec::new(),
        }],
        tools_source,
        tool_spans,
        gold_calls,
    })
}

/// The JSON text of a list field that is either JSON-encoded text (xLAM's way) or a list.
fn encoded_list<'a>(field: &'a RawValue, name: &'static str) -> Result<Cow<'a, str>, RowError> {
    let text = field.get();
    match text.as_bytes().first() {
        // A JSON string without escapes is its own text between the quotes.
        Some(b'"') if !text.contains('\\') => Ok(Cow::Borrowed(&text[1..text.len() - 1])),
        Some(b'"') => serde_json::from_str::<String>(text)
            .map(Cow::Owned)
            .map_err(|e| shape(format!("`{name}`: {e}"))),
        Some(b'[') => Ok(Cow::Borrowed(text)),
        _ => Err(shape(format!(
            "`{name}` must be a list or JSON text of one, found {}",
            text.chars().take(40).collect::<String>()
        ))),
    }
}

fn xlam_tool(text: &str) -> Result<ToolSpec, RowError> {
    let tool: XlamTool = serde_json::from_str(text).map_err(|e| shape(format!("a tool: {e}")))?;
    let parameters =
        xlam_types::parameters_schema(&tool.parameters).map_err(|source| RowError::Tool {
            tool: tool.name.clone(),
            source,
        })?;
    Ok(ToolSpec {
        name: tool.name,
        description: tool.description.unwrap_or_default(),
        parameters,
    })
}

/// A gold call from a name and arguments that are an object, JSON text of one, or absent.
fn call(name: String, arguments: Value) -> Result<ToolCall, RowError> {
    let arguments = match arguments {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        Value::String(text) if text.trim().is_empty() => Map::new(),
        Value::String(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => map,
            Ok(other) => {
                return Err(RowError::Call(format!(
                    "arguments of `{name}` are {}, not an object",
                    json_kind(&other)
                )));
            }
            Err(e) => {
                return Err(RowError::Call(format!(
                    "arguments of `{name}` are not valid JSON: {e}"
                )));
            }
        },
        other => {
            return Err(RowError::Call(format!(
                "arguments of `{name}` are {}, not an object",
                json_kind(&other)
            )));
        }
    };
    Ok(ToolCall { name, arguments })
}

// ---- ToolACE ----

#[derive(Deserialize)]
struct ToolAceRow<'a> {
    #[serde(default, borrow)]
    system: Cow<'a, str>,
    conversations: Vec<ToolAceTurn>,
}

#[derive(Deserialize)]
struct ToolAceTurn {
    from: String,
    value: String,
}

fn toolace_pieces(row: &str) -> Result<Pieces<'_>, RowError> {
    let row: ToolAceRow<'_> = serde_json::from_str(row).map_err(|e| RowError::from_serde(&e))?;
    let tool_spans = tools_in_text(&row.system);
    let mut messages = Vec::new();
    for turn in row.conversations {
        let role = role(&turn.from)?;
        if role != Role::Assistant {
            messages.push(Message {
                role,
                content: turn.value,
                tool_calls: Vec::new(),
            });
            continue;
        }
        let gold_calls = if looks_like_calls(&turn.value) {
            parse_python_calls(&turn.value)?
        } else {
            Vec::new()
        };
        return Ok(Pieces {
            messages,
            tools_source: row.system,
            tool_spans,
            gold_calls,
        });
    }
    Err(RowError::NoAnswer)
}

fn role(from: &str) -> Result<Role, RowError> {
    Ok(match from.to_ascii_lowercase().as_str() {
        "user" | "human" => Role::User,
        "assistant" | "gpt" => Role::Assistant,
        "tool" | "function" | "observation" => Role::Tool,
        "system" => Role::System,
        _ => return Err(RowError::UnknownRole(from.to_string())),
    })
}

/// `[name(` at the start: the answer is meant as a call list, so it must parse as one.
fn looks_like_calls(text: &str) -> bool {
    let Some(rest) = text.trim_start().strip_prefix('[') else {
        return false;
    };
    match rest.find('(') {
        Some(i) => {
            let name = rest[..i].trim();
            !name.is_empty() && name.bytes().all(is_name_byte)
        }
        None => false,
    }
}

/// The spans of the first JSON list of objects with a string `name` embedded in `text`; none
/// found means no tools.
fn tools_in_text(text: &str) -> Vec<Range<usize>> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(borrow, rename = "name")]
        _name: Cow<'a, str>,
    }
    for (i, _) in text.match_indices('[') {
        let mut values =
            serde_json::Deserializer::from_str(&text[i..]).into_iter::<Vec<&RawValue>>();
        let Some(Ok(list)) = values.next() else {
            continue;
        };
        let named = |t: &&RawValue| serde_json::from_str::<Named<'_>>(t.get()).is_ok();
        if !list.is_empty() && list.iter().all(named) {
            return spans_in(text, &list);
        }
    }
    Vec::new()
}

/// A tool whose parameters are (near-)JSON Schema: `{name, description, parameters}`, or wrapped
/// as `{"type": "function", "function": {...}}`.
fn json_schema_tool(tool: Value) -> Result<ToolSpec, RowError> {
    let mut tool = match tool {
        Value::Object(mut obj) => match obj.remove("function") {
            Some(Value::Object(inner)) => inner,
            Some(other) => {
                return Err(shape(format!("tool `function` is {}", json_kind(&other))));
            }
            None => obj,
        },
        other => {
            return Err(shape(format!(
                "a tool is {}, not an object",
                json_kind(&other)
            )));
        }
    };
    let name = match tool.remove("name") {
        Some(Value::String(name)) => name,
        _ => return Err(shape("a tool has no string `name`")),
    };
    let description = match tool.remove("description") {
        Some(Value::String(d)) => d,
        _ => String::new(),
    };
    let mut parameters = match tool.remove("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p,
        Some(other) => {
            return Err(shape(format!(
                "parameters of tool `{name}` are {}",
                json_kind(&other)
            )));
        }
    };
    fix_schema(&mut parameters);
    Ok(ToolSpec {
        name,
        description,
        parameters,
    })
}

/// Maps BFCL/ToolACE schema dialect to JSON Schema: Python type names (`dict`, `float`,
/// `tuple`...), `any`, `required: null`, and per-property `required: true`.
fn fix_schema(schema: &mut Value) {
    let Value::Object(obj) = schema else {
        return;
    };
    if let Some(Value::String(ty)) = obj.get_mut("type") {
        let mapped = match ty.as_str() {
            "dict" => Some("object"),
            "float" => Some("number"),
            "tuple" | "list" => Some("array"),
            "str" => Some("string"),
            "int" => Some("integer"),
            "bool" => Some("boolean"),
            "any" => None,
            _ => Some(""),
        };
        match mapped {
            None => {
                obj.remove("type");
            }
            Some("") => {}
            Some(m) => *ty = m.to_string(),
        }
    }
    if obj.get("required").is_some_and(|r| !r.is_array()) {
        obj.remove("required");
    }
    let mut newly_required = Vec::new();
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for (name, prop) in props.iter_mut() {
            if let Some(Value::Bool(required)) =
                prop.as_object_mut().and_then(|p| p.remove("required"))
                && required
            {
                newly_required.push(Value::String(name.clone()));
            }
            fix_schema(prop);
        }
    }
    if !newly_required.is_empty() {
        let required = obj.entry("required").or_insert_with(|| json!([]));
        if let Value::Array(list) = required {
            for name in newly_required {
                if !list.contains(&name) {
                    list.push(name);
                }
            }
        }
    }
    for key in ["items", "additionalProperties"] {
        match obj.get_mut(key) {
            Some(Value::Array(list)) => list.iter_mut().for_each(fix_schema),
            Some(v) => fix_schema(v),
            None => {}
        }
    }
    for key in ["anyOf", "oneOf", "allOf", "prefixItems"] {
        if let Some(Value::Array(list)) = obj.get_mut(key) {
            list.iter_mut().for_each(fix_schema);
        }
    }
}

// ---- OpenAI-style ----

#[derive(Deserialize)]
struct OpenAiRow<'a> {
    messages: Vec<OpenAiMessage>,
    #[serde(default, borrow)]
    tools: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct OpenAiMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    tool_calls: Option<Vec<OpenAiToolCall>>,
}

#[derive(Deserialize)]
struct OpenAiToolCall {
    function: OpenAiFunction,
}

#[derive(Deserialize)]
struct OpenAiFunction {
    name: String,
    #[serde(default)]
    arguments: Value,
}

fn openai_pieces(row: &str) -> Result<Pieces<'_>, RowError> {
    let parsed: OpenAiRow<'_> = serde_json::from_str(row).map_err(|e| RowError::from_serde(&e))?;
    let tool_spans = spans_in(row, parsed.tools.as_deref().unwrap_or_default());
    let answer = parsed
        .messages
        .iter()
        .rposition(|m| m.role == "assistant")
        .ok_or(RowError::NoAnswer)?;
    let mut messages = Vec::with_capacity(answer);
    let mut gold_calls = Vec::new();
    for (i, m) in parsed.messages.into_iter().enumerate().take(answer + 1) {
        let role = match m.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" | "function" => Role::Tool,
            other => return Err(RowError::UnknownRole(other.to_string())),
        };
        let calls = m
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| call(c.function.name, c.function.arguments))
            .collect::<Result<Vec<_>, _>>()?;
        if i == answer {
            gold_calls = calls;
        } else {
            messages.push(Message {
                role,
                content: text_content(&m.content)?.into_owned(),
                tool_calls: calls,
            });
        }
    }
    Ok(Pieces {
        messages,
        tools_source: Cow::Borrowed(row),
        tool_spans,
        gold_calls,
    })
}

/// Message content: text, null, or a list of parts whose `text`s are joined.
fn text_content(content: &Value) -> Result<Cow<'_, str>, RowError> {
    match content {
        Value::Null => Ok(Cow::Borrowed("")),
        Value::String(s) => Ok(Cow::Borrowed(s)),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match part {
                    Value::String(s) => text.push_str(s),
                    Value::Object(p) => {
                        if let Some(Value::String(s)) = p.get("text") {
                            text.push_str(s);
                        }
                    }
                    other => {
                        return Err(shape(format!("a content part is {}", json_kind(other))));
                    }
                }
            }
            Ok(Cow::Owned(text))
        }
        other => Err(shape(format!("message content is {}", json_kind(other)))),
    }
}

// ---- Python call syntax ----

/// Why a Python-syntax call list does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why} at byte {at}")]
pub struct CallSyntaxError {
    pub at: usize,
    pub why: String,
}

/// Parses `[f(a=1, b="x"), g()]` (brackets optional) into calls. Values: strings in either quote
/// kind (with escapes, raw `r"..."` and triple quotes), ints, floats, `True`/`False`/`None`,
/// lists, tuples (as lists) and dicts, nested. Arguments must be keywords.
pub fn parse_python_calls(text: &str) -> Result<Vec<ToolCall>, CallSyntaxError> {
    let mut p = PyParser {
        s: text,
        b: text.as_bytes(),
        pos: 0,
    };
    let bracketed = p.eat(b'[');
    let mut calls = Vec::new();
    loop {
        p.ws();
        if bracketed && p.eat(b']') {
            break;
        }
        if !bracketed && p.pos == p.b.len() {
            break;
        }
        calls.push(p.call()?);
        if p.eat(b',') {
            continue;
        }
        if bracketed {
            p.expect(b']')?;
        }
        break;
    }
    p.ws();
    if p.pos != p.b.len() {
        return Err(p.err("unexpected text after the calls"));
    }
    Ok(calls)
}

fn is_name_byte(b: u8) -> bool {
    !matches!(
        b,
        b'(' | b')' | b'[' | b']' | b'{' | b'}' | b',' | b'=' | b'"' | b'\'' | b'\n'
    )
}

const MAX_NESTING: usize = 64;

struct PyParser<'a> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> PyParser<'a> {
    fn err(&self, why: impl Into<String>) -> CallSyntaxError {
        CallSyntaxError {
            at: self.pos,
            why: why.into(),
        }
    }

    fn ws(&mut self) {
        while self.b.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), CallSyntaxError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.err(format!("expected `{}`", c as char)))
        }
    }

    fn call(&mut self) -> Result<ToolCall, CallSyntaxError> {
        self.ws();
        let start = self.pos;
        while self.b.get(self.pos).is_some_and(|&b| is_name_byte(b)) {
            self.pos += 1;
        }
        let name = self.s[start..self.pos].trim();
        if name.is_empty() {
            return Err(self.err("expected a function name"));
        }
        self.expect(b'(')?;
        let mut arguments = Map::new();
        loop {
            if self.eat(b')') {
                break;
            }
            let key_at = self.pos;
            let key = self.identifier();
            if key.is_empty() || self.peek() != Some(b'=') {
                self.pos = key_at;
                return Err(self.err("expected a keyword argument `name=value`"));
            }
            self.pos += 1;
            let value = self.value(0)?;
            if arguments.insert(key.to_string(), value).is_some() {
                self.pos = key_at;
                return Err(self.err(format!("argument `{key}` given twice")));
            }
            if !self.eat(b',') {
                self.expect(b')')?;
                break;
            }
        }
        Ok(ToolCall {
            name: name.to_string(),
            arguments,
        })
    }

    fn identifier(&mut self) -> &'a str {
        self.ws();
        let start = self.pos;
        while self
            .b
            .get(self.pos)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80)
        {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    fn value(&mut self, depth: usize) -> Result<Value, CallSyntaxError> {
        if depth > MAX_NESTING {
            return Err(self.err("values nested too deeply"));
        }
        match self.peek() {
            Some(b'"' | b'\'') => self.string(false).map(Value::String),
            Some(b'[') => self.sequence(b']', depth),
            Some(b'(') => self.sequence(b')', depth),
            Some(b'{') => self.dict(depth),
            Some(b'-' | b'+' | b'.' | b'0'..=b'9') => self.number(),
            Some(b'r' | b'R') if matches!(self.b.get(self.pos + 1), Some(b'"' | b'\'')) => {
                self.pos += 1;
                self.string(true).map(Value::String)
            }
            Some(_) => {
                let at = self.pos;
                match self.identifier() {
                    "True" | "true" => Ok(Value::Bool(true)),
                    "False" | "false" => Ok(Value::Bool(false)),
                    "None" | "null" => Ok(Value::Null),
                    "" => Err(self.err("expected a value")),
                    other => {
                        let why = format!("`{other}` is not a literal value");
                        self.pos = at;
                        Err(self.err(why))
                    }
                }
            }
            None => Err(self.err("expected a value, found the end")),
        }
    }

    fn sequence(&mut self, close: u8, depth: usize) -> Result<Value, CallSyntaxError> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Ok(Value::Array(items));
            }
            items.push(self.value(depth + 1)?);
            if !self.eat(b',') {
                self.expect(close)?;
                return Ok(Value::Array(items));
            }
        }
    }

    fn dict(&mut self, depth: usize) -> Result<Value, CallSyntaxError> {
        self.pos += 1;
        let mut map = Map::new();
        loop {
            if self.eat(b'}') {
                return Ok(Value::Object(map));
            }
            let key = match self.value(depth + 1)? {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
                _ => return Err(self.err("a dict key must be a string, number or bool")),
            };
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            map.insert(key, value);
            if !self.eat(b',') {
                self.expect(b'}')?;
                return Ok(Value::Object(map));
            }
        }
    }

    fn number(&mut self) -> Result<Value, CallSyntaxError> {
        let start = self.pos;
        let mut is_float = false;
        if matches!(self.b.get(self.pos), Some(b'-' | b'+')) {
            self.pos += 1;
        }
        while let Some(&b) = self.b.get(self.pos) {
            match b {
                b'0'..=b'9' | b'_' => {}
                b'.' | b'e' | b'E' => is_float = true,
                b'-' | b'+' if matches!(self.b[self.pos - 1], b'e' | b'E') => {}
                _ => break,
            }
            self.pos += 1;
        }
        let text: String = self.s[start..self.pos]
            .chars()
            .filter(|&c| c != '_')
            .collect();
        let text = text.strip_prefix('+').unwrap_or(&text);
        let number = if is_float {
            text.parse::<f64>().ok().and_then(Number::from_f64)
        } else {
            text.parse::<i64>()
                .map(Number::from)
                .or_else(|_| text.parse::<u64>().map(Number::from))
                .ok()
                .or_else(|| text.parse::<f64>().ok().and_then(Number::from_f64))
        };
        match number {
            Some(n) => Ok(Value::Number(n)),
            None => {
                self.pos = start;
                Err(self.err(format!("`{text}` is not a number")))
            }
        }
    }

    /// A quoted string at `pos` (after any `r` prefix).
    fn string(&mut self, raw: bool) -> Result<String, CallSyntaxError> {
        let start = self.pos;
        let quote = self.b[self.pos];
        let triple = self.b[self.pos..].starts_with(&[quote; 3]);
        let delim = if triple { 3 } else { 1 };
        self.pos += delim;
        let mut out = String::new();
        let mut chars = self.s[self.pos..].char_indices();
        while let Some((i, c)) = chars.next() {
            let at = self.pos + i;
            if c as u32 == u32::from(quote) {
                if !triple {
                    self.pos = at + 1;
                    return Ok(out);
                }
                if self.b[at..].starts_with(&[quote; 3]) {
                    self.pos = at + 3;
                    return Ok(out);
                }
                out.push(c);
            } else if c == '\\' {
                let Some((_, e)) = chars.next() else {
                    break;
                };
                if raw {
                    out.push('\\');
                    out.push(e);
                    continue;
                }
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    'a' => out.push('\u{7}'),
                    '0' => out.push('\0'),
                    '\\' | '\'' | '"' => out.push(e),
                    '\n' => {}
                    'x' | 'u' | 'U' => {
                        let len = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = chars.by_ref().take(len).map(|(_, h)| h).collect();
                        let decoded = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                        match decoded {
                            Some(ch) if hex.len() == len => out.push(ch),
                            _ => {
                                self.pos = at;
                                return Err(self.err(format!("bad escape `\\{e}{hex}`")));
                            }
                        }
                    }
                    other => {
                        out.push('\\');
                        out.push(other);
                    }
                }
            } else if c == '\n' && !triple {
                break;
            } else {
                out.push(c);
            }
        }
        self.pos = start;
        Err(self.err("unterminated string"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::contract::{Device, NoProgress};
    use crate::data::io::RowCounts;

    type Parts = (Vec<Message>, Vec<ToolSpec>, Vec<ToolCall>);

    fn convert(format: SourceFormat, row: &Value) -> Result<Parts, RowError> {
        let c = convert_row(format, &row.to_string(), "t-0".into())?;
        assert_eq!(c.id, "t-0");
        Ok((c.messages, c.tools, c.gold_calls))
    }

    fn from_xlam(row: &Value) -> Result<Parts, RowError> {
        convert(SourceFormat::Xlam, row)
    }

    fn from_toolace(row: &Value) -> Result<Parts, RowError> {
        convert(SourceFormat::Toolace, row)
    }

    fn from_openai(row: &Value) -> Result<Parts, RowError> {
        convert(SourceFormat::Openai, row)
    }

    fn user(content: String) -> Message {
        Message {
            role: Role::User,
            content,
            tool_calls: Vec::new(),
        }
    }

    fn calls(text: &str) -> Vec<ToolCall> {
        parse_python_calls(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn python_calls_with_every_literal_kind() {
        let got = calls(
            r#"[get_weather(city="San Francisco, CA", days=3, temp=-1.5e2, ok=True, x=None),
               search(q='it\'s "quoted"\n', tags=["a", 'b'], point=(1, 2.5), opts={"k": [1, {"n": False}], 2: 'two'}),
               noargs()]"#,
        );
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].name, "get_weather");
        assert_eq!(
            got[0].arguments,
            args(
                json!({"city": "San Francisco, CA", "days": 3, "temp": -150.0, "ok": true, "x": null})
            )
        );
        assert_eq!(got[1].name, "search");
        assert_eq!(
            got[1].arguments,
            args(
                json!({"q": "it's \"quoted\"\n", "tags": ["a", "b"], "point": [1, 2.5],
                        "opts": {"k": [1, {"n": false}], "2": "two"}})
            )
        );
        assert_eq!(
            got[2],
            ToolCall {
                name: "noargs".into(),
                arguments: Map::new()
            }
        );
    }

    #[test]
    fn python_strings_escapes_and_forms() {
        let one = |lit: &str| calls(&format!("[f(s={lit})]"))[0].arguments["s"].clone();
        assert_eq!(one(r#""a\tb\\c""#), json!("a\tb\\c"));
        assert_eq!(one(r"'\x41\u00e9\U0001F600'"), json!("Aé😀"));
        assert_eq!(one(r"r'\d+\.'"), json!("\\d+\\."));
        assert_eq!(one(r#"'''it's ''fine'''"#), json!("it's ''fine"));
        assert_eq!(
            one(r#""""multi
line""""#),
            json!("multi\nline")
        );
        assert_eq!(one("'ünïcödé, (ok)'"), json!("ünïcödé, (ok)"));
        assert_eq!(one(r"'\q'"), json!("\\q"));
        assert_eq!(one("1_000"), json!(1000));
        assert_eq!(one("+7"), json!(7));
        assert_eq!(one(".5"), json!(0.5));
        assert_eq!(one("18446744073709551615"), json!(18446744073709551615u64));
        assert_eq!(one("[]"), json!([]));
        assert_eq!(one("{}"), json!({}));
        assert_eq!(one("[1, 2,]"), json!([1, 2]));
    }

    #[test]
    fn python_call_lists_in_other_shapes() {
        assert_eq!(calls("[]"), vec![]);
        assert_eq!(calls("f(a=1)")[0].arguments, args(json!({"a": 1})));
        assert_eq!(
            calls("[Get Live Events(sport='x')]")[0].name,
            "Get Live Events"
        );
        assert_eq!(calls("[math.sqrt(x=4), g(y=1,)]").len(), 2);
    }

    #[test]
    fn python_syntax_errors_are_errors() {
        for text in [
            "[f(1)]",
            "[f(a=1)",
            "[f(a=)]",
            "[f(a=foo)]",
            "[f(a='x)]",
            "[f(a=1, a=2)]",
            "[f(a=1)] trailing",
            "[f(a=[1, 2)]",
            "[f(a={1})]",
            "[f(a={[1]: 2})]",
            "[f(a='\\x4')]",
            "[f(a=1e999)]",
            "[f(a=--1)]",
            "[(a=1)]",
            "[f a=1]",
        ] {
            assert!(parse_python_calls(text).is_err(), "{text} should not parse");
        }
        let deep = format!("[f(a={}1{})]", "[".repeat(200), "]".repeat(200));
        assert!(parse_python_calls(&deep).is_err());
    }

    fn xlam_row(tools: Value, answers: Value) -> Value {
        json!({"query": "What is the weather?", "tools": tools.to_string(), "answers": answers.to_string()})
    }

    #[test]
    fn xlam_row_becomes_a_conversation() {
        let row = xlam_row(
            json!([{"name": "weather", "description": "Forecast.", "parameters": {
                "city": {"type": "str", "description": "City."},
                "days": {"type": "int, optional", "description": "Days.", "default": 1}}}]),
            json!([{"name": "weather", "arguments": {"city": "Paris"}}]),
        );
        let (messages, tools, gold) = from_xlam(&row).unwrap();
        assert_eq!(messages, vec![user("What is the weather?".into())]);
        assert_eq!(tools.len(), 1);
        assert_eq!(tools[0].description, "Forecast.");
        assert_eq!(tools[0].parameters["required"], json!(["city"]));
        assert_eq!(tools[0].parameters["properties"]["days"]["type"], "integer");
        assert_eq!(
            gold,
            vec![ToolCall {
                name: "weather".into(),
                arguments: args(json!({"city": "Paris"}))
            }]
        );
    }

    #[test]
    fn xlam_bad_rows_say_why() {
        let kind = |row: Value| from_xlam(&row).unwrap_err().kind();
        assert_eq!(kind(json!([1])), "bad_shape");
        assert_eq!(kind(json!({"tools": "[]", "answers": "[]"})), "bad_shape");
        assert_eq!(
            kind(json!({"query": "q", "tools": "[{", "answers": "[]"})),
            "bad_json"
        );
        assert_eq!(
            kind(json!({"query": "q", "tools": "[{\"description\": \"\"}]", "answers": "[]"})),
            "bad_shape"
        );
        assert_eq!(
            kind(json!({"query": "q", "tools": 3, "answers": "[]"})),
            "bad_shape"
        );
        assert_eq!(
            kind(json!({"query": 3, "tools": "[]", "answers": "[]"})),
            "bad_shape"
        );
        assert_eq!(
            kind(xlam_row(
                json!([{"name": "t", "parameters": {"x": {"type": "Widget"}}}]),
                json!([])
            )),
            "unknown_type"
        );
        assert_eq!(
            kind(xlam_row(
                json!([]),
                json!([{"name": "t", "arguments": [1]}])
            )),
            "bad_call"
        );
        assert_eq!(
            kind(xlam_row(
                json!([]),
                json!([{"name": "t", "arguments": "{"}])
            )),
            "bad_call"
        );
        let decoded = json!({"query": "q", "tools": [], "answers": [{"name": "t", "arguments": "{\"a\": 1}"}]});
        assert_eq!(
            from_xlam(&decoded).unwrap().2[0].arguments,
            args(json!({"a": 1}))
        );
    }

    fn toolace_row(answer: &str) -> Value {
        let tools = json!([{"name": "Get Live Events", "description": "Events.", "parameters": {
            "type": "dict",
            "properties": {
                "sport": {"type": "string", "description": "Sport."},
                "limit": {"type": "float", "required": true},
                "filter": {"type": "dict", "properties": {"tags": {"type": "tuple", "items": {"type": "any"}}}}
            },
            "required": ["sport"]
        }, "required": null}]);
        json!({
            "system": format!("You are an expert. Here is a list of functions in JSON format [that you can invoke]:\n{tools}. Should you decide..."),
            "conversations": [
                {"from": "user", "value": "Any games tonight?"},
                {"from": "assistant", "value": answer},
                {"from": "tool", "value": "[]"},
                {"from": "assistant", "value": "None found."}
            ]
        })
    }

    #[test]
    fn toolace_rows_convert() {
        let (messages, tools, gold) =
            from_toolace(&toolace_row("[Get Live Events(sport=\"soccer\", limit=5)]")).unwrap();
        assert_eq!(messages, vec![user("Any games tonight?".into())]);
        assert_eq!(tools[0].name, "Get Live Events");
        let p = &tools[0].parameters;
        assert_eq!(p["type"], "object");
        assert_eq!(p["required"], json!(["sport", "limit"]));
        assert_eq!(p["properties"]["limit"], json!({"type": "number"}));
        assert_eq!(p["properties"]["filter"]["type"], "object");
        assert_eq!(
            p["properties"]["filter"]["properties"]["tags"],
            json!({"type": "array", "items": {}})
        );
        assert!(jsonschema::meta::is_valid(p), "{p}");
        assert_eq!(
            gold,
            vec![ToolCall {
                name: "Get Live Events".into(),
                arguments: args(json!({"sport": "soccer", "limit": 5}))
            }]
        );

        let (_, _, gold) = from_toolace(&toolace_row("I need to know which sport.")).unwrap();
        assert!(gold.is_empty());
        let err = from_toolace(&toolace_row("[Get Live Events(soccer)]")).unwrap_err();
        assert_eq!(err.kind(), "bad_call_syntax");

        let mut bad_role = toolace_row("[]");
        bad_role["conversations"][0]["from"] = json!("narrator");
        assert_eq!(from_toolace(&bad_role).unwrap_err().kind(), "unknown_role");
        let no_answer = json!({"system": "", "conversations": [{"from": "user", "value": "hi"}]});
        assert_eq!(from_toolace(&no_answer).unwrap_err(), RowError::NoAnswer);
        let (_, tools, _) = from_toolace(&json!({"conversations": [
            {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}))
        .unwrap();
        assert!(tools.is_empty());
    }

    #[test]
    fn openai_rows_convert() {
        let row = json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Oslo?"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}},
                    {"id": "c2", "type": "function", "function": {"name": "time", "arguments": {"tz": "CET"}}}
                ]}
            ],
            "tools": [
                {"type": "function", "function": {"name": "weather", "description": "Forecast.",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"name": "time"}
            ]
        });
        let (messages, tools, gold) = from_openai(&row).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].role, Role::System);
        assert_eq!(messages[1].content, "Weather in Oslo?");
        assert_eq!(tools[0].parameters["required"], json!(["city"]));
        assert_eq!(
            tools[1].parameters,
            json!({"type": "object", "properties": {}})
        );
        assert_eq!(gold.len(), 2);
        assert_eq!(gold[0].arguments, args(json!({"city": "Oslo"})));
        assert_eq!(gold[1].arguments, args(json!({"tz": "CET"})));

        let text_answer = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]});
        let (messages, tools, gold) = from_openai(&text_answer).unwrap();
        assert_eq!((messages.len(), tools.len(), gold.len()), (1, 0, 0));
        let no_answer = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(from_openai(&no_answer).unwrap_err(), RowError::NoAnswer);
        let bad_args = json!({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]});
        assert_eq!(from_openai(&bad_args).unwrap_err().kind(), "bad_call");
    }

    fn run_stage(format: SourceFormat, input: &str) -> (tempfile::TempDir, RowCounts) {
        let dir = tempfile::tempdir().unwrap();
        let input_path = dir.path().join("rows.jsonl");
        fs::write(&input_path, input).unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let inputs: BTreeMap<String, PathBuf> = [("rows".to_string(), input_path)].into();
        let cancel = AtomicBool::new(false);
        let ctx = Context {
            stage: "normalize",
            inputs: &inputs,
            out: &out,
            state: crate::contract::unused_state(),
            device: Device::Cpu,
            progress: &NoProgress,
            cancel: &cancel,
            seed: 0,
        };
        let report = Normalize.run(&NormalizeParams { format }, &ctx).unwrap();
        let counts: RowCounts =
            serde_json::from_slice(&fs::read(out.join(io::METRICS_FILE)).unwrap()).unwrap();
        assert_eq!(report.summary, counts.summary());
        (dir, counts)
    }

    #[test]
    fn stage_writes_data_quarantine_and_metrics() {
        let good = xlam_row(
            json!([{"name": "t", "description": "", "parameters": {"x": {"type": "int"}}}]),
            json!([{"name": "t", "arguments": {"x": 1}}]),
        );
        let unknown = xlam_row(
            json!([{"name": "t", "parameters": {"x": {"type": "Widget"}}}]),
            json!([]),
        );
        let unknown_again = xlam_row(
            json!([{"name": "t", "parameters": {"x": {"type": "Widget"}}}]),
            json!([{"name": "t", "arguments": {}}]),
        );
        let input = format!("{good}\nnot json\n\n{unknown}\n{good}\n{unknown_again}\n");
        let (dir, counts) = run_stage(SourceFormat::Xlam, &input);
        let out = dir.path().join("out");
        assert_eq!(counts.rows_in, 5);
        assert_eq!(counts.rows_in, counts.rows_kept + counts.rows_quarantined);
        assert_eq!(counts.rows_kept, 2);
        assert_eq!(counts.quarantined_by_reason[io::MALFORMED], 1);
        assert_eq!(counts.quarantined_by_reason["unknown_type"], 2);

        let kept: Vec<Conversation> = io::read_rows::<Conversation>(&out)
            .unwrap()
            .map(|(_, r)| r.unwrap())
            .collect();
        assert_eq!(
            kept.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["xlam-0", "xlam-3"]
        );
        assert_eq!(kept[0].gold_calls[0].arguments["x"], json!(1));
        let pure = convert_row(SourceFormat::Xlam, &good.to_string(), "xlam-3".into()).unwrap();
        assert_eq!(
            kept[1], pure,
            "the stage's cached conversion matches convert_row"
        );
        let quarantined: Vec<Quarantined> =
            io::read_rows::<Quarantined>(&out.join(io::QUARANTINE_FILE))
                .unwrap()
                .map(|(_, r)| r.unwrap())
                .collect();
        assert_eq!(
            quarantined.iter().map(|q| q.index).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        assert_eq!(quarantined[2].reason, quarantined[1].reason);
        assert_eq!(quarantined[1].id.as_deref(), Some("xlam-2"));
        assert!(
            quarantined[1].reason.contains("Widget"),
            "{}",
            quarantined[1].reason
        );
        assert_eq!(quarantined[1].row, unknown);
        let names: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn stage_ids_follow_the_format_and_cancel_stops_it() {
        let row = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]});
        let (dir, counts) = run_stage(SourceFormat::Openai, &format!("{row}\n{row}\n"));
        assert_eq!(counts.rows_kept, 2);
        let ids: Vec<String> = io::read_rows::<Conversation>(&dir.path().join("out"))
            .unwrap()
            .map(|(_, r)| r.unwrap().id)
            .collect();
        assert_eq!(ids, ["openai-0", "openai-1"]);

        let inputs: BTreeMap<String, PathBuf> =
            [("rows".to_string(), dir.path().join("rows.jsonl"))].into();
        let out = dir.path().join("cancelled");
        fs::create_dir(&out).unwrap();
        let cancel = AtomicBool::new(true);
        let ctx = Context {
            stage: "normalize",
            inputs: &inputs,
            out: &out,
            state: crate::contract::unused_state(),
            device: Device::Cpu,
            progress: &NoProgress,
            cancel: &cancel,
            seed: 0,
        };
        let err = Normalize
            .run(&NormalizeParams::default(), &ctx)
            .unwrap_err();
        assert!(matches!(err, StageError::Cancelled));
        assert_eq!(
            fs::read_dir(&out).unwrap().count(),
            0,
            "no temporary files left"
        );
    }

    #[test]
    fn params_reject_unknown_fields_and_default_to_xlam() {
        use crate::contract::Stage;
        let resolved = Normalize.check_params(&json!({})).unwrap();
        assert_eq!(resolved, json!({"format": "xlam"}));
        assert!(Normalize.check_params(&json!({"format": "csv"})).is_err());
        let err = Normalize
            .check_params(&json!({"fromat": "xlam"}))
            .unwrap_err();
        assert!(err.message.contains("fromat"), "{err}");
    }
}
