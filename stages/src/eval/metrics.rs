//! The seed's metric ladder, on forge's own held-out rows (canonical [`Conversation`]s): how far
//! up from "produced some JSON" to "produced exactly the right calls in the right wrapper" each
//! generated answer got. BFCL gives one bit per entry; the ladder says where a model fails,
//! which is what a training run needs to know.
//!
//! Rungs, loosest to strictest, for a row whose gold is one or more calls ("call rows"):
//! - `emits_json`: the answer holds a JSON object or array somewhere (in a `<tool_call>` block
//!   or bare in the text).
//! - `schema_valid`: at least one call was read, and every call names an offered tool and has
//!   arguments its JSON Schema accepts (the data stages' [`Verifier`]).
//! - `tool_name`: the called names equal the gold names, as multisets.
//!   Beside it, `first_tool`: the first call read names a gold tool (what a small model gets
//!   right first: choosing the tool, before choosing how many calls).
//! - `name_and_args`: the calls equal the gold calls, as a multiset (arguments compared as JSON,
//!   `1` equal to `1.0`).
//! - `protocol`: the answer uses the Qwen wrapper as BFCL decodes it — at least one
//!   `<tool_call>\n{json}\n</tool_call>` block, and no block that makes decoding fail.
//! - `strict`: protocol and name_and_args on the calls so decoded.
//!
//! Across all rows: `hallucinated` (a call names a tool that was not offered) and `hit_cap` (the
//! generation ran to its token cap: a flag generation sets, taken as given). Rows whose gold is no
//! call are counted in `no_call_correct` (no call read from the answer).
//!
//! Where the ladder is more lenient than BFCL (deliberately: it measures format and content
//! separately), calls are read from `<tool_call>` blocks with or without the newlines around the
//! JSON and without a closing tag (a capped generation); with no `<tool_call>` tag at all, from
//! bare JSON in the text; `arguments` may be a JSON string holding an object, or be called
//! `parameters`; a call object may be wrapped as `{"function": {...}}`. Values are compared
//! exactly (no BFCL string normalization, no possible-answer alternatives): the gold is one
//! answer, not a set of them. Only `protocol` and `strict` apply BFCL's decoding rules.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::parse::decode_ast;
use super::value::Py;
use crate::data::schema::{Conversation, ToolCall};
use crate::data::verify::{SchemaCache, Verifier};

/// One generated answer to judge.
#[derive(Debug, Clone, Copy)]
pub struct LadderRow<'a> {
    pub conversation: &'a Conversation,
    /// The generated assistant text (special tokens removed).
    pub output: &'a str,
    /// Whether generation stopped at its `max_new_tokens` cap rather than at `<|im_end|>`.
    pub hit_cap: bool,
}

/// Where one answer got on the ladder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowLadder {
    /// Whether the gold is at least one call (the rungs below apply to such rows).
    pub call_row: bool,
    pub emits_json: bool,
    pub schema_valid: bool,
    pub tool_name: bool,
    pub first_tool: bool,
    pub name_and_args: bool,
    pub protocol: bool,
    pub strict: bool,
    /// For rows whose gold is no call: no call was read.
    pub no_call_correct: bool,
    pub hallucinated: bool,
    pub hit_cap: bool,
    /// The calls read leniently from the answer.
    pub calls: Vec<ToolCall>,
    /// Why the row is not strict (or, for a no-call row, why it is wrong); absent when right.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Rates (percent, 0–100) and counts over a set of rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LadderMetrics {
    pub rows: usize,
    pub call_rows: usize,
    pub no_call_rows: usize,
    /// The rungs, over call rows.
    pub emits_json: f64,
    pub schema_valid: f64,
    pub tool_name: f64,
    #[serde(default)]
    pub first_tool: f64,
    pub name_and_args: f64,
    pub protocol: f64,
    pub strict: f64,
    /// Over no-call rows.
    pub no_call_correct: f64,
    /// Over all rows.
    pub hallucinated: f64,
    pub hit_cap: f64,
}

/// Judges one row. `cache` shares compiled tool schemas across rows.
pub fn judge_row(row: &LadderRow<'_>, cache: &mut SchemaCache) -> RowLadder {
    let conv = row.conversation;
    let read = read_lenient(row.output);
    let gold = &conv.gold_calls;
    let call_row = !gold.is_empty();
    let verifier = Verifier::with_cache(&conv.tools, cache);

    let verdicts: Vec<_> = read.calls.iter().map(|c| verifier.verify(c)).collect();
    let schema_valid = !read.calls.is_empty() && verdicts.iter().all(|v| v.is_valid());
    let offered = |name: &str| conv.tools.iter().any(|t| t.name == name);
    let hallucinated = read.calls.iter().any(|c| !offered(&c.name));
    let tool_name = call_row && same_multiset(&read.calls, gold, |a, b| a.name == b.name);
    let first_tool = read
        .calls
        .first()
        .is_some_and(|c| gold.iter().any(|g| g.name == c.name));
    let name_and_args = call_row && same_multiset(&read.calls, gold, calls_equal);

    let strict_calls = decode_ast(row.output).ok().filter(|c| !c.is_empty());
    let protocol = strict_calls.is_some();
    let strict = call_row
        && strict_calls.as_ref().is_some_and(|calls| {
            let calls: Option<Vec<ToolCall>> = calls.iter().map(decoded_to_call).collect();
            calls.is_some_and(|calls| same_multiset(&calls, gold, calls_equal))
        });
    let no_call_correct = !call_row && read.calls.is_empty();

    let reason = if call_row {
        (!strict).then(|| {
            if !read.emits_json {
                "no JSON in the answer".to_string()
            } else if read.calls.is_empty() {
                "JSON but no call object (`name` + `arguments`)".to_string()
            } else if let Some((c, v)) = read
                .calls
                .iter()
                .zip(&verdicts)
                .find(|(_, v)| !v.is_valid())
            {
                format!("call `{}`: {v}", c.name)
            } else if !tool_name {
                format!(
                    "called {:?}, gold {:?}",
                    read.calls.iter().map(|c| &c.name).collect::<Vec<_>>(),
                    gold.iter().map(|c| &c.name).collect::<Vec<_>>()
                )
            } else if !name_and_args {
                "right tools, wrong arguments".to_string()
            } else {
                "right calls, but not in BFCL's `<tool_call>\\n…\\n</tool_call>` format".to_string()
            }
        })
    } else {
        (!no_call_correct).then(|| format!("{} call(s) where none was wanted", read.calls.len()))
    };

    RowLadder {
        call_row,
        emits_json: read.emits_json,
        schema_valid,
        tool_name,
        first_tool,
        name_and_args,
        protocol,
        strict,
        no_call_correct,
        hallucinated,
        hit_cap: row.hit_cap,
        calls: read.calls,
        reason,
    }
}

/// Judges every row and sums the ladder.
pub fn ladder<'a>(
    rows: impl IntoIterator<Item = LadderRow<'a>>,
) -> (Vec<RowLadder>, LadderMetrics) {
    let mut cache = SchemaCache::new();
    let judged: Vec<RowLadder> = rows
        .into_iter()
        .map(|r| judge_row(&r, &mut cache))
        .collect();
    let metrics = summarize(&judged);
    (judged, metrics)
}

/// The rates of judged rows.
pub fn summarize(rows: &[RowLadder]) -> LadderMetrics {
    let calls: Vec<&RowLadder> = rows.iter().filter(|r| r.call_row).collect();
    let no_calls = rows.len() - calls.len();
    let rate = |n: usize, d: usize| {
        if d == 0 {
            0.0
        } else {
            100.0 * n as f64 / d as f64
        }
    };
    let over_calls =
        |f: fn(&RowLadder) -> bool| rate(calls.iter().filter(|r| f(r)).count(), calls.len());
    let over_all =
        |f: fn(&RowLadder) -> bool| rate(rows.iter().filter(|r| f(r)).count(), rows.len());
    LadderMetrics {
        rows: rows.len(),
        call_rows: calls.len(),
        no_call_rows: no_calls,
        emits_json: over_calls(|r| r.emits_json),
        schema_valid: over_calls(|r| r.schema_valid),
        tool_name: over_calls(|r| r.tool_name),
        first_tool: over_calls(|r| r.first_tool),
        name_and_args: over_calls(|r| r.name_and_args),
        protocol: over_calls(|r| r.protocol),
        strict: over_calls(|r| r.strict),
        no_call_correct: rate(
            rows.iter()
                .filter(|r| !r.call_row && r.no_call_correct)
                .count(),
            no_calls,
        ),
        hallucinated: over_all(|r| r.hallucinated),
        hit_cap: over_all(|r| r.hit_cap),
    }
}

fn same_multiset<T>(got: &[ToolCall], want: &[T], eq: impl Fn(&ToolCall, &T) -> bool) -> bool {
    if got.len() != want.len() {
        return false;
    }
    let mut used = vec![false; got.len()];
    want.iter().all(|w| {
        let hit = (0..got.len()).find(|&i| !used[i] && eq(&got[i], w));
        hit.map(|i| used[i] = true).is_some()
    })
}

fn calls_equal(a: &ToolCall, b: &ToolCall) -> bool {
    a.name == b.name
        && json_equal(
            &Value::Object(a.arguments.clone()),
            &Value::Object(b.arguments.clone()),
        )
}

/// JSON equality with numbers compared by value (`1` == `1.0`), objects ignoring key order.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

/// A strictly decoded call as a canonical [`ToolCall`], when its name is a string and its
/// values are representable JSON (not NaN or infinite).
fn decoded_to_call(c: &super::parse::DecodedCall) -> Option<ToolCall> {
    let name = c.name.as_str()?.to_string();
    let arguments = c
        .arguments
        .iter()
        .map(|(k, v)| Some((k.to_string(), py_to_json(v)?)))
        .collect::<Option<Map<String, Value>>>()?;
    Some(ToolCall { name, arguments })
}

fn py_to_json(v: &Py) -> Option<Value> {
    Some(match v {
        Py::None => Value::Null,
        Py::Bool(b) => Value::Bool(*b),
        Py::Int(i) => match i64::try_from(*i) {
            Ok(i) => Value::from(i),
            Err(_) => Value::from(u64::try_from(*i).ok()?),
        },
        Py::BigInt(_) => return None,
        Py::Float(f) => Value::from(serde_json::Number::from_f64(*f)?),
        Py::Str(s) => Value::String(s.clone()),
        Py::List(l) => Value::Array(l.iter().map(py_to_json).collect::<Option<_>>()?),
        Py::Dict(d) => Value::Object(
            d.iter()
                .map(|(k, v)| Some((k.to_string(), py_to_json(v)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

struct Lenient {
    emits_json: bool,
    calls: Vec<ToolCall>,
}

const OPEN_TAG: &str = "<tool_call>";
const CLOSE_TAG: &str = "</tool_call>";

/// Reads calls the forgiving way (see the module docs).
fn read_lenient(text: &str) -> Lenient {
    let mut values = Vec::new();
    if text.contains(OPEN_TAG) {
        let mut rest = text;
        while let Some(o) = rest.find(OPEN_TAG) {
            let body_start = o + OPEN_TAG.len();
            let (body, next) = match rest[body_start..].find(CLOSE_TAG) {
                Some(c) => (
                    &rest[body_start..body_start + c],
                    body_start + c + CLOSE_TAG.len(),
                ),
                None => (&rest[body_start..], rest.len()),
            };
            values.extend(json_values(body));
            rest = &rest[next..];
        }
    } else {
        values = json_values(text);
    }
    let mut calls = Vec::new();
    for v in &values {
        match v {
            Value::Array(items) => calls.extend(items.iter().filter_map(as_call)),
            other => calls.extend(as_call(other)),
        }
    }
    Lenient {
        emits_json: !values.is_empty(),
        calls,
    }
}

/// Every JSON object or array that starts somewhere in `text`, left to right, not overlapping.
fn json_values(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find(['{', '[']) {
        let start = i + off;
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) => {
                i = start + stream.byte_offset();
                out.push(v);
            }
            _ => i = start + 1,
        }
    }
    out
}

fn as_call(v: &Value) -> Option<ToolCall> {
    let obj = v.as_object()?;
    let obj = match obj.get("function") {
        Some(Value::Object(inner)) if !obj.contains_key("name") => inner,
        _ => obj,
    };
    let name = obj.get("name")?.as_str()?.to_string();
    let arguments = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => m,
            _ => return None,
        },
        Some(_) => return None,
    };
    Some(ToolCall { name, arguments })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::data::schema::{Message, Role, ToolSpec};

    fn conv(gold: Vec<ToolCall>) -> Conversation {
        let tool = |name: &str| ToolSpec {
            name: name.into(),
            description: String::new(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}),
        };
        Conversation {
            id: "t-0".into(),
            messages: vec![Message {
                role: Role::User,
                content: "q".into(),
                tool_calls: vec![],
            }],
            tools: vec![tool("weather"), tool("news")],
            gold_calls: gold,
        }
    }

    fn call(name: &str, args: Value) -> ToolCall {
        ToolCall {
            name: name.into(),
            arguments: args.as_object().unwrap().clone(),
        }
    }

    fn judge(gold: Vec<ToolCall>, output: &str) -> RowLadder {
        let c = conv(gold);
        judge_row(
            &LadderRow {
                conversation: &c,
                output,
                hit_cap: false,
            },
            &mut SchemaCache::new(),
        )
    }

    /// The rungs a row reached, in ladder order, as a compact string.
    fn rungs(r: &RowLadder) -> String {
        [
            ("J", r.emits_json),
            ("S", r.schema_valid),
            ("T", r.tool_name),
            ("A", r.name_and_args),
            ("P", r.protocol),
            ("X", r.strict),
            ("H", r.hallucinated),
        ]
        .iter()
        .map(|(k, v)| if *v { *k } else { "-" })
        .collect()
    }

    fn gold() -> Vec<ToolCall> {
        vec![call("weather", json!({"city": "Oslo", "days": 2}))]
    }

    #[test]
    fn each_rung_on_hand_made_answers() {
        let ok = r#"{"name": "weather", "arguments": {"city": "Oslo", "days": 2}}"#;
        let cases = [
            ("I cannot do that.", "-------"),
            ("Here: {\"note\": 1}", "J------"),
            (
                r#"{"name": "weather", "arguments": {"days": "2"}}"#,
                "J-T----",
            ),
            (
                r#"{"name": "forecast", "arguments": {"city": "Oslo"}}"#,
                "J-----H",
            ),
            (
                r#"{"name": "news", "arguments": {"city": "Oslo"}}"#,
                "JS-----",
            ),
            (
                r#"{"name": "weather", "arguments": {"city": "Bergen", "days": 2}}"#,
                "JST----",
            ),
            (ok, "JSTA---"),
            (&format!("<tool_call>{ok}</tool_call>"), "JSTA---"),
            (&format!("<tool_call>\n{ok}"), "JSTA---"),
            (
                &format!(
                    "<tool_call>\n{}\n</tool_call>",
                    ok.replace("\"days\": 2", "\"days\": 3")
                ),
                "JST-P--",
            ),
            (&format!("<tool_call>\n{ok}\n</tool_call>"), "JSTAPX-"),
            (
                &format!("<tool_call>\n{}\n</tool_call>", ok.replace("2}", "2.0}")),
                "JSTAPX-",
            ),
            (
                r#"<tool_call>
{"name": "weather", "arguments": "{\"city\": \"Oslo\", \"days\": 2}"}
</tool_call>"#,
                "JSTA---",
            ),
            (&format!("[{ok}]"), "JSTA---"),
            (
                r#"{"function": {"name": "weather", "parameters": {"city": "Oslo", "days": 2}}}"#,
                "JSTA---",
            ),
        ];
        for (output, want) in cases {
            let r = judge(gold(), output);
            assert_eq!(rungs(&r), want, "{output}");
            assert_eq!(r.reason.is_none(), r.strict, "{output}: {:?}", r.reason);
        }
    }

    #[test]
    fn multiset_of_calls_ignores_order_but_not_count() {
        let g = vec![
            call("weather", json!({"city": "A"})),
            call("news", json!({"city": "B"})),
        ];
        let block = |n: &str, c: &str| {
            format!(
                "<tool_call>\n{{\"name\": \"{n}\", \"arguments\": {{\"city\": \"{c}\"}}}}\n</tool_call>"
            )
        };
        let both = format!("{}\n{}", block("news", "B"), block("weather", "A"));
        assert_eq!(rungs(&judge(g.clone(), &both)), "JSTAPX-");
        let twice = format!("{}\n{}", block("weather", "A"), block("weather", "A"));
        assert_eq!(rungs(&judge(g.clone(), &twice)), "JS--P--");
        assert_eq!(rungs(&judge(g.clone(), &block("weather", "A"))), "JS--P--");
        let first_tool = |output: &str| judge(g.clone(), output).first_tool;
        assert!(first_tool(&both) && first_tool(&twice) && first_tool(&block("news", "B")));
        let ghost_first = format!("{}\n{}", block("ghost", "A"), block("weather", "A"));
        assert!(!first_tool(&ghost_first) && !first_tool("no call"));
    }

    #[test]
    fn no_call_rows_and_the_summary() {
        let none = judge(vec![], "Sorry, no tool fits.");
        assert!(!none.call_row && none.no_call_correct && none.reason.is_none());
        let wrong = judge(vec![], r#"{"name": "weather", "arguments": {"city": "x"}}"#);
        assert!(!wrong.no_call_correct);
        assert!(wrong.reason.is_some());
        let good = judge(
            gold(),
            "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 2}}\n</tool_call>",
        );
        let mut capped = judge(gold(), "{\"name\": \"weather\"");
        capped.hit_cap = true;
        let halluc = judge(gold(), "{\"name\": \"ghost\", \"arguments\": {}}");
        let m = summarize(&[none, wrong, good, capped, halluc]);
        assert_eq!((m.rows, m.call_rows, m.no_call_rows), (5, 3, 2));
        assert!((m.strict - 100.0 / 3.0).abs() < 1e-9);
        assert!((m.emits_json - 200.0 / 3.0).abs() < 1e-9);
        assert!((m.first_tool - 100.0 / 3.0).abs() < 1e-9);
        assert!((m.no_call_correct - 50.0).abs() < 1e-9);
        assert!((m.hit_cap - 20.0).abs() < 1e-9);
        assert!((m.hallucinated - 20.0).abs() < 1e-9);
    }

    #[test]
    fn ladder_runs_over_rows() {
        let c = conv(gold());
        let rows = [
            LadderRow {
                conversation: &c,
                output: "no",
                hit_cap: true,
            },
            LadderRow {
                conversation: &c,
                output: "<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 2}}\n</tool_call>",
                hit_cap: false,
            },
        ];
        let (judged, m) = ladder(rows);
        assert_eq!(judged.len(), 2);
        assert!((m.strict - 50.0).abs() < 1e-9);
        assert!((m.hit_cap - 50.0).abs() < 1e-9);
    }
}
