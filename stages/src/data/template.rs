//! Renders a conversation with the model's own chat template, byte for byte as Hugging Face
//! transformers' `apply_chat_template(messages, tools=..., tokenize=False)` does.
//!
//! Why byte-exact: the model is trained on these strings and later served by stacks (vLLM,
//! transformers) that render with the same template in Python. A one-byte difference — a `", "`
//! that became `","`, an escaped `<` in a JSON schema — is a distribution shift that silently costs
//! accuracy. So this module reproduces transformers' Jinja environment: `trim_blocks` and
//! `lstrip_blocks`, loop controls, Python string methods (`minijinja_contrib::pycompat`), a
//! `raise_exception` function, and transformers' own `tojson` filter, which is `json.dumps(x,
//! ensure_ascii=False, indent=None, separators=None, sort_keys=False)` — not Jinja's HTML-escaping
//! one. [`python_json`] is that `json.dumps`. Tools and assistant tool calls are handed to the
//! template in the shape transformers' callers give them (`{"type": "function", "function":
//! {...}}`), and `bos_token`/`eos_token`/`pad_token`/`unk_token` are in scope as transformers puts
//! its special tokens map there.
//!
//! Pure: template text and records in, a string out; the template is compiled once in
//! [`ChatTemplate::new`] and reused (it is `Send + Sync`, so rayon workers share it).
//! Golden tests against transformers itself live in `stages/fixtures/template/`.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest, Serde, Value, ValueKind};
use minijinja::{AutoEscape, Environment, ErrorKind};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::schema::{Message, Role, ToolCall, ToolSpec};

const TEMPLATE_NAME: &str = "chat_template";

/// The special-token keys of `tokenizer_config.json` that transformers exposes to the template.
const SPECIAL_TOKEN_KEYS: [&str; 4] = ["bos_token", "eos_token", "pad_token", "unk_token"];

/// Why a template could not be loaded or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("tokenizer_config.json is not valid JSON: {0}")]
    ConfigJson(#[source] serde_json::Error),
    #[error("tokenizer_config.json has no string `chat_template`")]
    NoChatTemplate,
    #[error("chat template does not compile: {0:#}")]
    Compile(#[source] minijinja::Error),
    #[error("chat template failed to render: {0:#}")]
    Render(#[source] minijinja::Error),
}

/// Options of one render beyond the messages and tools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Append the header of a new assistant turn (what a model is prompted with).
    pub add_generation_prompt: bool,
    /// Qwen3's `enable_thinking` template variable; `None` leaves it undefined, as transformers
    /// does when the caller does not pass it.
    pub enable_thinking: Option<bool>,
}

/// A compiled chat template plus the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special_tokens", &self.special_tokens)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source` (Jinja) with transformers' environment settings.
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(TemplateError::Compile)?,
        );
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(TemplateError::Compile)?;
        Ok(ChatTemplate {
            env,
            special_tokens: Vec::new(),
        })
    }

    /// Compiles the `chat_template` of a `tokenizer_config.json` (given as text) and keeps its
    /// special tokens, which may be plain strings or `{"content": ...}` objects.
    pub fn from_tokenizer_config(config_json: &str) -> Result<Self, TemplateError> {
        let config: Json = serde_json::from_str(config_json).map_err(TemplateError::ConfigJson)?;
        let source = config
            .get("chat_template")
            .and_then(Json::as_str)
            .ok_or(TemplateError::NoChatTemplate)?;
        let mut template = ChatTemplate::new(source)?;
        for key in SPECIAL_TOKEN_KEYS {
            let token = match config.get(key) {
                Some(Json::String(s)) => Some(s.clone()),
                Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(str::to_owned),
                _ => None,
            };
            if let Some(token) = token {
                template.special_tokens.push((key, token));
            }
        }
        Ok(template)
    }

    /// The special token `key` (`"eos_token"`, …) from the tokenizer config, if it had one.
    pub fn special_token(&self, key: &str) -> Option<&str> {
        self.special_tokens
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Renders `messages` offering `tools` (none: the template sees `tools=None`).
    pub fn render(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with(
            messages,
            tools,
            RenderOptions {
                add_generation_prompt,
                enable_thinking: None,
            },
        )
    }

    /// [`ChatTemplate::render`] with every option.
    pub fn render_with(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        options: RenderOptions,
    ) -> Result<String, TemplateError> {
        let mut ctx: Vec<(&str, Value)> = Vec::with_capacity(8);
        for (key, token) in &self.special_tokens {
            ctx.push((*key, Value::from(token.as_str())));
        }
        let messages: Vec<TemplateMessage<'_>> =
            messages.iter().map(TemplateMessage::from).collect();
        ctx.push(("messages", to_value(&messages)));
        let tools = if tools.is_empty() {
            Value::from(())
        } else {
            to_value(tools.iter().map(TemplateTool::from).collect::<Vec<_>>())
        };
        ctx.push(("tools", tools));
        ctx.push((
            "add_generation_prompt",
            Value::from(options.add_generation_prompt),
        ));
        if let Some(thinking) = options.enable_thinking {
            ctx.push(("enable_thinking", Value::from(thinking)));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(TemplateError::Render)?;
        template
            .render(Value::from_pairs(ctx))
            .map_err(TemplateError::Render)
    }
}

/// A message as transformers hands it to the template: `tool_calls` only when there are some.
#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: Role,
    content: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<TemplateFunction<TemplateCall<'a>>>,
}

impl<'a> From<&'a Message> for TemplateMessage<'a> {
    fn from(m: &'a Message) -> Self {
        TemplateMessage {
            role: m.role,
            content: &m.content,
            tool_calls: m.tool_calls.iter().map(TemplateCall::wrap).collect(),
        }
    }
}

/// OpenAI-style `{"type": "function", "function": ...}` wrapper (tools and calls alike).
#[derive(Serialize)]
struct TemplateFunction<T> {
    r#type: &'static str,
    function: T,
}

#[derive(Serialize)]
struct TemplateCall<'a> {
    name: &'a str,
    arguments: &'a Map<String, Json>,
}

impl<'a> TemplateCall<'a> {
    fn wrap(c: &'a ToolCall) -> TemplateFunction<Self> {
        TemplateFunction {
            r#type: "function",
            function: TemplateCall {
                name: &c.name,
                arguments: &c.arguments,
            },
        }
    }
}

type TemplateTool<'a> = TemplateFunction<&'a ToolSpec>;

impl<'a> From<&'a ToolSpec> for TemplateTool<'a> {
    fn from(t: &'a ToolSpec) -> Self {
        TemplateFunction {
            r#type: "function",
            function: t,
        }
    }
}

/// A serde value as a template value (map order kept: minijinja's `preserve_order`).
fn to_value<T: Serialize>(value: T) -> Value {
    Value::from(Serde(value))
}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`;
/// arguments positionally in that order or by keyword.
fn tojson_filter(
    value: &Value,
    args: Rest<Value>,
    kwargs: Kwargs,
) -> Result<String, minijinja::Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let arg = |i: usize| -> Result<Option<Value>, minijinja::Error> {
        match (args.get(i), kwargs.get::<Option<Value>>(NAMES[i])?) {
            (Some(_), Some(_)) => Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson got multiple values for `{}`", NAMES[i]),
            )),
            (Some(v), None) => Ok(Some(v.clone()).filter(|v| !v.is_none())),
            (None, Some(v)) => Ok(Some(v).filter(|v| !v.is_none())),
            (None, None) => Ok(None),
        }
    };
    let bad = |what: &str| {
        minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: bad {what}"))
    };
    let mut opts = JsonOptions::default();
    if let Some(v) = arg(0)? {
        opts.ensure_ascii = v.is_true();
    }
    if let Some(v) = arg(1)? {
        opts.indent = Some(if let Some(s) = v.as_str() {
            s.to_owned()
        } else {
            let n = v.as_i64().ok_or_else(|| bad("indent"))?;
            " ".repeat(n.max(0) as usize)
        });
    }
    if let Some(v) = arg(2)? {
        let item = v.get_item_by_index(0)?;
        let key = v.get_item_by_index(1)?;
        match (item.as_str(), key.as_str()) {
            (Some(i), Some(k)) => opts.separators = Some((i.to_owned(), k.to_owned())),
            _ => return Err(bad("separators")),
        }
    }
    if let Some(v) = arg(3)? {
        opts.sort_keys = v.is_true();
    }
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(out)
}

/// Options of Python's `json.dumps` that [`python_json`] supports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JsonOptions {
    pub ensure_ascii: bool,
    /// Indentation per level; `None` is Python's `indent=None` (one line).
    pub indent: Option<String>,
    /// `(item, key)` separators; `None` is Python's default for the indent setting.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
}

/// Python's `json.dumps(value, ...)` of a template value, byte for byte (floats in `repr` form,
/// `NaN`/`Infinity` allowed, control characters as `\u00XX`, key order kept unless sorted).
pub fn python_json(value: &Value, options: &JsonOptions) -> Result<String, minijinja::Error> {
    let mut out = String::new();
    write_json(&mut out, value, options, 0)?;
    Ok(out)
}

fn write_json(
    out: &mut String,
    value: &Value,
    opts: &JsonOptions,
    depth: usize,
) -> Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => {
            write_string(out, value.as_str().unwrap_or_default(), opts.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), opts, depth, |out, i| {
                write_json(out, &items[i], opts, depth + 1)
            })?;
        }
        ValueKind::Map | ValueKind::Plain => {
            let mut pairs = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                pairs.push((json_key(&key)?, item));
            }
            if opts.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            let key_sep = match &opts.separators {
                Some((_, k)) => k.as_str(),
                None => ": ",
            };
            write_container(out, '{', '}', pairs.len(), opts, depth, |out, i| {
                write_string(out, &pairs[i].0, opts.ensure_ascii);
                out.push_str(key_sep);
                write_json(out, &pairs[i].1, opts, depth + 1)
            })?;
        }
        _ => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {} is not JSON serializable", value.kind()),
            ));
        }
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    opts: &JsonOptions,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), minijinja::Error>,
) -> Result<(), minijinja::Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    // Python's defaults: ", " on one line, "," when indenting (the newline separates items).
    let item_sep = match (&opts.separators, &opts.indent) {
        (Some((i, _)), _) => i.as_str(),
        (None, None) => ", ",
        (None, Some(_)) => ",",
    };
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &opts.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(item_sep);
        }
        newline(out, depth + 1);
        item(out, i)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// A map key as Python's json module turns it into a string.
fn json_key(key: &Value) -> Result<String, minijinja::Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
        ValueKind::None => "null".to_owned(),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_owned(),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key);
            s
        }
        kind => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {kind}"),
            ));
        }
    })
}

fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        // Integers (up to 128 bits) display as plain digits.
        out.push_str(&value.to_string());
    } else {
        let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
        out.push_str(&python_float_repr(f));
    }
}

/// Python's `repr(float)`: the shortest round-tripping digits, in positional notation for
/// exponents -5 < e < 16 (always with a fractional part) and as `1e+16`, `1.5e-07` otherwise.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".to_owned();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned();
    }
    // `{:e}` is the shortest round-trip form, `d.ddde[-]x`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if x.is_sign_negative() {
        out.push('-');
    }
    if !(-5 < exp && exp < 16) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        ));
    } else if exp < 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-exp - 1) as usize));
        out.push_str(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(&digits);
            out.push_str(&"0".repeat(int_len - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

/// A JSON string literal as Python's json module writes it.
fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(v: Json, opts: &JsonOptions) -> String {
        python_json(&to_value(&v), opts).unwrap()
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e20, "1.2345e+20"),
            (1e100, "1e+100"),
            (123456.789, "123456.789"),
            (-2.5e-300, "-2.5e-300"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "repr({x:e})");
        }
    }

    #[test]
    fn json_matches_python_dumps_defaults() {
        let v: Json = serde_json::from_str(
            r#"{"z": 1, "a": [1.0, -2, true, null, {}], "é<>&": "q\"b\\s\n\u0001\u007f ü 😀", "e": []}"#,
        )
        .unwrap();
        assert_eq!(
            json(v.clone(), &JsonOptions::default()),
            "{\"z\": 1, \"a\": [1.0, -2, true, null, {}], \"é<>&\": \"q\\\"b\\\\s\\n\\u0001\u{7f} ü 😀\", \"e\": []}"
        );
        let opts = JsonOptions {
            ensure_ascii: true,
            indent: Some("  ".into()),
            separators: None,
            sort_keys: true,
        };
        assert_eq!(
            json(v, &opts),
            "{\n  \"a\": [\n    1.0,\n    -2,\n    true,\n    null,\n    {}\n  ],\n  \"e\": [],\n  \
             \"z\": 1,\n  \"\\u00e9<>&\": \"q\\\"b\\\\s\\n\\u0001\\u007f \\u00fc \\ud83d\\ude00\"\n}"
        );
    }

    #[test]
    fn tojson_filter_takes_python_arguments() {
        let t = ChatTemplate::new(
            "{{ x | tojson }}|{{ x | tojson(separators=(',', ':')) }}|{{ x | tojson(true, sort_keys=true) }}",
        )
        .unwrap();
        let got = t
            .env
            .get_template(TEMPLATE_NAME)
            .unwrap()
            .render(
                minijinja::context! { x => to_value(serde_json::json!({"b": "é", "a": [1, 2]})) },
            )
            .unwrap();
        assert_eq!(
            got,
            r#"{"b": "é", "a": [1, 2]}|{"b":"é","a":[1,2]}|{"a": [1, 2], "b": "\u00e9"}"#
        );
    }

    #[test]
    fn raise_exception_fails_the_render() {
        let t = ChatTemplate::new("{{ raise_exception('no system role here') }}").unwrap();
        let err = t.render(&[], &[], false).unwrap_err().to_string();
        assert!(err.contains("no system role here"), "{err}");
    }

    #[test]
    fn config_without_template_is_an_error() {
        assert!(matches!(
            ChatTemplate::from_tokenizer_config(r#"{"eos_token": "<e>"}"#),
            Err(TemplateError::NoChatTemplate)
        ));
        let t = ChatTemplate::from_tokenizer_config(
            r#"{"chat_template": "{{ eos_token }}{{ bos_token }}", "eos_token": {"content": "<e>"}, "bos_token": null}"#,
        )
        .unwrap();
        assert_eq!(t.special_token("eos_token"), Some("<e>"));
        assert_eq!(t.render(&[], &[], false).unwrap(), "<e>");
    }
}

/// The real Qwen3 tokenizer and the golden renders made by transformers, for tests here and in
/// `format`. The tokenizer is fetched by `scripts/fetch-tokenizer.sh` on first use; if that
/// fails, the tests fail.
#[cfg(test)]
pub(crate) mod golden {
    use std::io::Read;
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use serde::Deserialize;

    use crate::data::schema::Conversation;

    #[derive(Debug, Deserialize)]
    pub struct Case {
        pub conversation: Conversation,
        pub no_call_reply: String,
        pub enable_thinking: Option<bool>,
        pub prompt: String,
        pub full: String,
        pub prompt_ids: Vec<u32>,
        pub full_ids: Vec<u32>,
    }

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the crate sits in the workspace")
            .to_path_buf()
    }

    /// `<workspace>/target/test-assets/qwen3-tokenizer`, fetched once per test process.
    pub fn tokenizer_dir() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let root = workspace();
            let dir = root.join("target/test-assets/qwen3-tokenizer");
            let out = std::process::Command::new("bash")
                .arg(root.join("scripts/fetch-tokenizer.sh"))
                .arg(&dir)
                .output()
                .expect("run scripts/fetch-tokenizer.sh");
            assert!(
                out.status.success(),
                "scripts/fetch-tokenizer.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            dir
        })
    }

    /// The cases of `stages/fixtures/template/golden.jsonl.gz` (its header line skipped).
    pub fn cases() -> Vec<Case> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/template/golden.jsonl.gz");
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.split('\n')
            .filter(|l| !l.is_empty() && !l.starts_with("{\"versions\""))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .collect()
    }

    #[test]
    fn renders_match_transformers_byte_for_byte() {
        let config =
            std::fs::read_to_string(tokenizer_dir().join("tokenizer_config.json")).unwrap();
        let template = super::ChatTemplate::from_tokenizer_config(&config).unwrap();
        let cases = cases();
        assert!(cases.len() >= 200, "only {} golden cases", cases.len());
        let mut mismatches = Vec::new();
        for case in &cases {
            let conv = &case.conversation;
            let options = |add_generation_prompt| super::RenderOptions {
                add_generation_prompt,
                enable_thinking: case.enable_thinking,
            };
            let prompt = template
                .render_with(&conv.messages, &conv.tools, options(true))
                .unwrap();
            let mut messages = conv.messages.clone();
            messages.push(crate::data::format::assistant_turn(
                &conv.gold_calls,
                &case.no_call_reply,
            ));
            let full = template
                .render_with(&messages, &conv.tools, options(false))
                .unwrap();
            if prompt != case.prompt || full != case.full {
                mismatches.push(conv.id.clone());
            }
        }
        assert!(
            mismatches.is_empty(),
            "{} of {} renders differ from transformers: {mismatches:?}",
            mismatches.len(),
            cases.len()
        );
    }
}
