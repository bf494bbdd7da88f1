//! The two ends of BFCL's Qwen function-calling handler (`model_handler/local_inference/
//! qwen_fc.py`): the prompt it builds for an entry, and how it reads the model's answer.
//!
//! Decoding reproduces `QwenFCHandler.decode_ast` exactly, because a leaderboard number depends
//! on it as much as on the checker: blocks are found with `<tool_call>\n(.*?)\n</tool_call>`, so
//! a block without the newlines around its JSON is not seen at all (and a first block missing its
//! closing newline swallows the next one); a block that is not valid JSON is silently skipped; a
//! block that is JSON but not an object, or lacks `name` or `arguments`, or whose `arguments` is
//! not an object (a JSON *string* of arguments included) fails the whole answer.
//!
//! The prompt is what the handler's `_format_prompt` concatenates — not the model's chat
//! template: the tools are BFCL's own function docs (with the language hints BFCL adds at
//! generation time), one `json.dumps` line each, ASCII-escaped.

use super::bfcl::{Category, Entry};
use super::checker::Language;
use super::value::{Dict, Py, loads};

/// One decoded call: `{name: arguments}` as `decode_ast` returns it.
#[derive(Debug, Clone)]
pub struct DecodedCall {
    /// Usually a string; JSON allows any hashable value here and the checker then never matches.
    pub name: Py,
    pub arguments: Dict,
}

/// Why `decode_ast` raised: the answer counts as "no call" for relevance and fails AST entries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "Model did not return a list of function calls: a <tool_call> block holds a {0}, not an object"
    )]
    NotAnObject(&'static str),
    #[error("a <tool_call> object has no `{0}` key")]
    MissingKey(&'static str),
    #[error("`arguments` is a {0}, not an object")]
    ArgumentsNotObject(&'static str),
    #[error("`name` is a {0}, which cannot be a dict key")]
    UnhashableName(&'static str),
}

const OPEN: &str = "<tool_call>\n";
const CLOSE: &str = "\n</tool_call>";

/// `QwenFCHandler._extract_tool_calls`: the JSON value of every `<tool_call>\n…\n</tool_call>`
/// block that parses; the others are dropped without a word.
pub fn extract_tool_calls(text: &str) -> Vec<Py> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(o) = text[pos..].find(OPEN) {
        let start = pos + o + OPEN.len();
        let Some(c) = text[start..].find(CLOSE) else {
            break;
        };
        if let Ok(v) = loads(&text[start..start + c]) {
            out.push(v);
        }
        pos = start + c + CLOSE.len();
    }
    out
}

/// `QwenFCHandler.decode_ast`: the calls of a model answer (possibly none).
pub fn decode_ast(text: &str) -> Result<Vec<DecodedCall>, DecodeError> {
    let blocks = extract_tool_calls(text);
    if let Some(bad) = blocks.iter().find(|b| !matches!(b, Py::Dict(_))) {
        return Err(DecodeError::NotAnObject(bad.py_type().name()));
    }
    blocks
        .into_iter()
        .map(|block| {
            let Py::Dict(mut d) = block else {
                unreachable!("checked above")
            };
            let name = take(&mut d, "name").ok_or(DecodeError::MissingKey("name"))?;
            let arguments = match take(&mut d, "arguments") {
                None => return Err(DecodeError::MissingKey("arguments")),
                Some(Py::Dict(a)) => a,
                Some(other) => return Err(DecodeError::ArgumentsNotObject(other.py_type().name())),
            };
            if matches!(name, Py::List(_) | Py::Dict(_)) {
                return Err(DecodeError::UnhashableName(name.py_type().name()));
            }
            Ok(DecodedCall { name, arguments })
        })
        .collect()
}

fn take(d: &mut Dict, key: &str) -> Option<Py> {
    d.get(key).cloned()
}

/// What the handler keeps of a raw completion (`_parse_query_response_prompting`): the text
/// after the last `</think>`, leading newlines dropped. This, not the raw text, is the `result`
/// BFCL scores. `raw` is the completion as decoded without special tokens (`<|im_end|>`), which
/// is what vLLM's completions API returns.
pub fn clean_response(raw: &str) -> &str {
    match raw.rsplit_once("</think>") {
        Some((_, after)) => after.trim_start_matches('\n'),
        None => raw,
    }
}

const TOOLS_HEADER: &str = "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>";
const TOOLS_FOOTER: &str = "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

/// The prompt BFCL's Qwen FC handler sends for `entry` (its first turn), ending with the
/// assistant header: `QwenFCHandler._format_prompt(question[0], function)` with the function
/// docs as `load_dataset_entry` prepares them for generation.
pub fn render_prompt(entry: &Entry) -> String {
    let functions = with_language_hints(&entry.functions, entry.category);
    let empty = Vec::new();
    let messages = match entry.question.index(0).ok().as_deref() {
        Some(Py::List(m)) => m.clone(),
        _ => empty,
    };
    format_prompt(&messages, &functions)
}

fn field<'a>(message: &'a Py, key: &str) -> Option<&'a Py> {
    message.as_dict().and_then(|d| d.get(key))
}

/// Python's `str(x)` where the handler formats a message field into the prompt.
fn text_of(v: Option<&Py>) -> String {
    match v {
        Some(Py::Str(s)) => s.clone(),
        Some(other) => other.repr(),
        None => String::new(),
    }
}

fn role_of(message: &Py) -> &str {
    field(message, "role").and_then(Py::as_str).unwrap_or("")
}

/// `QwenFCHandler._format_prompt(messages, function)`.
fn format_prompt(messages: &[Py], functions: &[Py]) -> String {
    let mut out = String::new();
    let first_is_system = messages.first().is_some_and(|m| role_of(m) == "system");
    if !functions.is_empty() {
        out.push_str("<|im_start|>system\n");
        if first_is_system {
            out.push_str(&text_of(field(&messages[0], "content")));
            out.push_str("\n\n");
        }
        out.push_str(TOOLS_HEADER);
        for tool in functions {
            out.push('\n');
            out.push_str(&tool.dumps());
        }
        out.push_str(TOOLS_FOOTER);
    } else if first_is_system {
        out.push_str("<|im_start|>system\n");
        out.push_str(&text_of(field(&messages[0], "content")));
        out.push_str("<|im_end|>\n");
    }

    let last_query_index = messages
        .iter()
        .rposition(|m| {
            role_of(m) == "user"
                && field(m, "content").and_then(Py::as_str).is_some_and(|c| {
                    !(c.starts_with("<tool_response>") && c.ends_with("</tool_response>"))
                })
        })
        .unwrap_or(messages.len().saturating_sub(1));

    for (idx, message) in messages.iter().enumerate() {
        let role = role_of(message);
        let mut content = text_of(field(message, "content"));
        if role == "user" || (role == "system" && idx != 0) {
            out.push_str(&format!("<|im_start|>{role}\n{content}<|im_end|>\n"));
        } else if role == "assistant" {
            let mut reasoning = String::new();
            match field(message, "reasoning_content") {
                Some(Py::Str(r)) if !r.is_empty() => reasoning = r.clone(),
                _ => {
                    if let Some((before, _)) = content.split_once("</think>") {
                        let before = before.trim_end_matches('\n');
                        reasoning = before
                            .rsplit_once("<think>")
                            .map_or(before, |(_, r)| r)
                            .trim_start_matches('\n')
                            .to_string();
                        content = content
                            .rsplit_once("</think>")
                            .map_or("", |(_, a)| a)
                            .trim_start_matches('\n')
                            .to_string();
                    }
                }
            }
            if idx > last_query_index && (idx == messages.len() - 1 || !reasoning.is_empty()) {
                out.push_str(&format!(
                    "<|im_start|>{role}\n<think>\n{}\n</think>\n\n{}",
                    reasoning.trim_matches('\n'),
                    content.trim_start_matches('\n')
                ));
            } else {
                out.push_str(&format!("<|im_start|>{role}\n{content}"));
            }
            if let Some(Py::List(calls)) = field(message, "tool_calls") {
                for call in calls {
                    // The handler tells the first call apart by equality, not position.
                    let is_first = super::value::py_eq(call, &calls[0]);
                    if !is_first || !content.is_empty() {
                        out.push('\n');
                    }
                    let call = field(call, "function").unwrap_or(call);
                    out.push_str("<tool_call>\n{\"name\": \"");
                    out.push_str(&text_of(field(call, "name")));
                    out.push_str("\", \"arguments\": ");
                    match field(call, "arguments") {
                        Some(Py::Str(s)) => out.push_str(s),
                        Some(other) => out.push_str(&other.dumps()),
                        None => out.push_str("null"),
                    }
                    out.push_str("}\n</tool_call>");
                }
            }
            out.push_str("<|im_end|>\n");
        } else if role == "tool" {
            let prev = idx.checked_sub(1).map(|i| role_of(&messages[i]));
            let next = messages.get(idx + 1).map(role_of);
            if idx == 0 || prev != Some("tool") {
                out.push_str("<|im_start|>user");
            }
            out.push_str(&format!("\n<tool_response>\n{content}\n</tool_response>"));
            if idx == messages.len() - 1 || next != Some("tool") {
                out.push_str("<|im_end|>\n");
            }
        }
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

/// `_func_doc_language_specific_pre_processing`: the hint BFCL appends to every function
/// description at generation time, and for Java and JavaScript the parameters retyped as
/// strings (their real type moved into the description).
fn with_language_hints(functions: &Py, category: Category) -> Vec<Py> {
    let Py::List(functions) = functions else {
        return Vec::new();
    };
    let language = category.language();
    let hint = match language {
        Language::Java => " Note that the provided function is in Java 8 SDK syntax.",
        Language::JavaScript => " Note that the provided function is in JavaScript syntax.",
        Language::Python => " Note that the provided function is in Python 3 syntax.",
    };
    functions
        .iter()
        .map(|f| {
            let Py::Dict(f) = f else { return f.clone() };
            let mut f = f.clone();
            append(&mut f, "description", hint);
            if language != Language::Python
                && let Some(Py::Dict(params)) = f.get("parameters").cloned()
            {
                let mut params = params;
                if let Some(Py::Dict(props)) = params.get("properties").cloned() {
                    let props: Dict = props
                        .iter()
                        .map(|(k, v)| (k.to_string(), retype(v, language)))
                        .collect();
                    params.insert("properties".into(), Py::Dict(props));
                }
                f.insert("parameters".into(), Py::Dict(params));
            }
            Py::Dict(f)
        })
        .collect()
}

fn append(d: &mut Dict, key: &str, suffix: &str) {
    let text = text_of(d.get(key)) + suffix;
    d.insert(key.into(), Py::Str(text));
}

fn retype(param: &Py, language: Language) -> Py {
    let Py::Dict(p) = param else {
        return param.clone();
    };
    let mut p = p.clone();
    let t = text_of(p.get("type"));
    let lang = if language == Language::Java {
        "Java"
    } else {
        "JavaScript"
    };
    if t == "any" {
        append(
            &mut p,
            "description",
            &format!(
                " This parameter can be of any type of {lang} object in string representation."
            ),
        );
    } else {
        append(
            &mut p,
            "description",
            &format!(" This is {lang} {t} type parameter in string representation."),
        );
    }
    let is_list = if language == Language::Java {
        t == "ArrayList" || t == "Array"
    } else {
        t == "array"
    };
    if is_list {
        let item_type = text_of(
            p.get("items")
                .and_then(|i| i.as_dict())
                .and_then(|i| i.get("type")),
        );
        append(
            &mut p,
            "description",
            &format!(
                " The list elements are of type {item_type}; they are not in string representation."
            ),
        );
        p = p
            .iter()
            .filter(|(k, _)| *k != "items")
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
    }
    if language == Language::JavaScript
        && t == "dict"
        && let Some(props) = p.get("properties").cloned()
    {
        append(
            &mut p,
            "description",
            &format!(
                " The dictionary entries have the following schema; they are not in string representation. {}",
                props.dumps()
            ),
        );
        p = p
            .iter()
            .filter(|(k, _)| *k != "properties")
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
    }
    p.insert("type".into(), Py::Str("string".into()));
    Py::Dict(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Result<Vec<String>, DecodeError> {
        decode_ast(text).map(|calls| calls.iter().map(|c| c.name.repr()).collect())
    }

    #[test]
    fn decoding_follows_the_qwen_handler() {
        let one = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>";
        assert_eq!(names(one).unwrap(), ["'f'"]);
        let two = format!("Sure.\n{one}\n{}\nDone", one.replace("\"f\"", "\"g\""));
        assert_eq!(names(&two).unwrap(), ["'f'", "'g'"]);
        // No newlines around the JSON: not a block at all.
        assert_eq!(
            names("<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>").unwrap(),
            Vec::<String>::new()
        );
        // A first block without its closing newline swallows the second: one unparsable block.
        let swallowed = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}</tool_call>\n<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call>";
        assert_eq!(names(swallowed).unwrap(), Vec::<String>::new());
        // Unparsable blocks are skipped, the rest kept.
        assert_eq!(
            names(&format!("<tool_call>\n{{oops}}\n</tool_call>\n{one}")).unwrap(),
            ["'f'"]
        );
        // Arguments as a JSON string, a non-object block, a missing key: the answer fails.
        assert_eq!(
            decode_ast(
                "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}\n</tool_call>"
            )
            .unwrap_err(),
            DecodeError::ArgumentsNotObject("str")
        );
        assert_eq!(
            decode_ast("<tool_call>\n[1]\n</tool_call>").unwrap_err(),
            DecodeError::NotAnObject("list")
        );
        assert_eq!(
            decode_ast("<tool_call>\n{\"arguments\": {}}\n</tool_call>").unwrap_err(),
            DecodeError::MissingKey("name")
        );
        assert_eq!(
            decode_ast("<tool_call>\n{\"name\": [\"f\"], \"arguments\": {}}\n</tool_call>")
                .unwrap_err(),
            DecodeError::UnhashableName("list")
        );
        assert_eq!(
            names("<tool_call>\n{\"name\": 7, \"arguments\": {}}\n</tool_call>").unwrap(),
            ["7"]
        );
        assert_eq!(
            names("<tool_call>\n\n</tool_call>").unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn clean_response_drops_the_thinking() {
        assert_eq!(clean_response("<think>\nhmm\n</think>\n\nanswer"), "answer");
        assert_eq!(clean_response("a</think>b</think>\nc"), "c");
        assert_eq!(clean_response("\nplain"), "\nplain");
    }
}
