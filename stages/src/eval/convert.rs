//! BFCL's Java and JavaScript value converters, rule for rule.
//!
//! In the Java and JavaScript categories every argument is a string of source code
//! (`"new ArrayList<>(Arrays.asList(1, 2))"`, `"3.5f"`, `"{key: 'v'}"`), and BFCL turns it into a
//! Python value with a handful of regular expressions (`java_type_converter`,
//! `js_type_converter`) before the usual checks. Their quirks decide verdicts — `char` never
//! converts, an `Array` of `String` keeps the quotes, a JavaScript dict only reads up to its first
//! `}` — so this module reproduces them, regex for regex, rather than parse Java or JavaScript.
//!
//! Python's `re` differs from Rust's regex in ways that matter here, so the patterns are
//! translated by hand (the original is quoted beside each): `$` also matches before a final
//! `\n` (→ `\n?\z` where only the match matters), `\s` is `str.isspace()` ([`S`]), `re.match`
//! anchors at the start (→ `\A`). `\d` is the Unicode decimal digit class in both.

use std::sync::OnceLock;

use regex::Regex;

use super::value::{Dict, Py, PyErr, py_float, py_int, py_slice_inner, py_strip, py_strip_chars};

/// Python's `\s`: the characters of `str.isspace()`.
const S: &str = r"[\t\n\x0B\x0C\r\x1C-\x1F \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}]";

/// The parameter types `java_type_converter` accepts (`JAVA_TYPE_CONVERSION`'s keys).
pub const JAVA_TYPES: [&str; 17] = [
    "byte",
    "short",
    "integer",
    "float",
    "double",
    "long",
    "boolean",
    "char",
    "Array",
    "ArrayList",
    "Set",
    "HashMap",
    "Hashtable",
    "Queue",
    "Stack",
    "String",
    "any",
];

/// The parameter types `js_type_converter` accepts (`JS_TYPE_CONVERSION`'s keys).
pub const JS_TYPES: [&str; 8] = [
    "String", "integer", "float", "Bigint", "Boolean", "dict", "array", "any",
];

struct Patterns {
    int: Regex,
    java_float: Regex,
    java_double: Regex,
    java_long: Regex,
    arraylist_aslist: Regex,
    arraylist_add: Regex,
    add_call: Regex,
    arraylist_empty: Regex,
    array: Regex,
    hashmap: Regex,
    put_call: Regex,
    hashmap_empty: Regex,
    js_float: Regex,
    js_bigint: Regex,
    js_array_2d: Regex,
    js_array: Regex,
    brackets: Regex,
    js_dict: Regex,
    js_pair: fancy_regex::Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |p: String| Regex::new(&p).expect("valid converter regex");
        Patterns {
            // r"^-?\d+$"
            int: re(r"\A-?\d+\n?\z".into()),
            // r"^-?\d+(\.\d+)?([eE][+-]?\d+)?[fF]$"
            java_float: re(r"\A-?\d+(\.\d+)?([eE][+-]?\d+)?[fF]\n?\z".into()),
            // r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$"
            java_double: re(r"\A-?\d+(\.\d+)?([eE][+-]?\d+)?\n?\z".into()),
            // r"^-?\d+[lL]$"
            java_long: re(r"\A-?\d+[lL]\n?\z".into()),
            // re.search(r"new\s+ArrayList<\w*>\(Arrays\.asList\((.+?)\)\)", s)
            arraylist_aslist: re(format!(r"new{S}+ArrayList<\w*>\(Arrays\.asList\((.+?)\)\)")),
            // re.search(r"new\s+ArrayList<\w*>\(\)\s*\{\{\s*(.+?)\s*\}\}", s, re.DOTALL)
            arraylist_add: re(format!(
                r"new{S}+ArrayList<\w*>\(\){S}*\{{\{{{S}*((?s:.)+?){S}*\}}\}}"
            )),
            // re.findall(r"add\((.+?)\)", s)
            add_call: re(r"add\((.+?)\)".into()),
            // re.search(r"new\s+ArrayList<\w*>\(\)", s)
            arraylist_empty: re(format!(r"new{S}+ArrayList<\w*>\(\)")),
            // re.search(r"new\s+\w+\[\]\s*\{(.*?)\}", s)
            array: re(format!(r"new{S}+\w+\[\]{S}*\{{(.*?)\}}")),
            // re.search(r"new\s+HashMap<.*?>\s*\(\)\s*\{\s*\{?\s*(.*?)\s*\}?\s*\}", s, re.DOTALL)
            hashmap: re(format!(
                r"(?s)new{S}+HashMap<.*?>{S}*\(\){S}*\{{{S}*\{{?{S}*(.*?){S}*\}}?{S}*\}}"
            )),
            // re.findall(r"put\(\"(.*?)\",\s*(.*?)\)", s)
            put_call: re(format!(r#"put\("(.*?)",{S}*(.*?)\)"#)),
            // re.search(r"new\s+HashMap<.*?>\s*\(\)", s)
            hashmap_empty: re(format!(r"new{S}+HashMap<.*?>{S}*\(\)")),
            // r"^-?\d+(\.\d+)?$"
            js_float: re(r"\A-?\d+(\.\d+)?\n?\z".into()),
            // r"^-?\d+n$"
            js_bigint: re(r"\A-?\d+n\n?\z".into()),
            // re.match(r"\[\s*\[.*?\]\s*(,\s*\[.*?\]\s*)*\]|\bnew\s+Array\(\s*\[.*?\]\s*(,\s*\[.*?\]\s*)*\)", s)
            js_array_2d: re(format!(
                r"\A(?:\[{S}*\[.*?\]{S}*(,{S}*\[.*?\]{S}*)*\]|\bnew{S}+Array\({S}*\[.*?\]{S}*(,{S}*\[.*?\]{S}*)*\))"
            )),
            // re.match(r"\[(.*?)\]|\bnew\s+Array\((.*?)\)", s)
            js_array: re(format!(r"\A(?:\[(.*?)\]|\bnew{S}+Array\((.*?)\))")),
            // re.findall(r"\[(.*?)\]", s)
            brackets: re(r"\[(.*?)\]".into()),
            // re.match(r"\{(.*?)\}", s)
            js_dict: re(r"\A\{(.*?)\}".into()),
            // re.findall(r"([^:]+):\s*(.*?)(?:,\s*(?=[^,]+:)|$)", s) — s never holds a newline
            js_pair: fancy_regex::Regex::new(&format!(
                r"([^:]+):{S}*(.*?)(?:,{S}*(?=[^,]+:)|\z)"
            ))
            .expect("valid converter regex"),
        }
    })
}

fn unsupported(expected: &str) -> PyErr {
    PyErr::value_error(format!("Unsupported type: {expected}"))
}

/// Drops the `[fF]` or `[lL]` suffix that `re.sub(r"[fF]$", "", s)` removes from a string the
/// pattern matched (the suffix sits at the end or just before a final newline).
fn drop_suffix(s: &str) -> String {
    let (body, newline) = match s.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (s, ""),
    };
    let mut body = body.to_string();
    body.pop();
    body + newline
}

/// `java_type_converter(value, expected_type, nested_type)`.
pub fn java_convert(value: &str, expected: &str, nested: Option<&str>) -> Result<Py, PyErr> {
    if !JAVA_TYPES.contains(&expected) {
        return Err(unsupported(expected));
    }
    let p = patterns();
    let keep = || Ok(Py::Str(value.to_string()));
    match expected {
        "byte" | "short" | "integer" => {
            if p.int.is_match(value) {
                py_int(value)
            } else {
                keep()
            }
        }
        "float" => {
            if p.java_float.is_match(value) {
                py_float(&drop_suffix(value)).map(Py::Float)
            } else {
                keep()
            }
        }
        "double" => {
            if p.java_double.is_match(value) {
                py_float(value).map(Py::Float)
            } else {
                keep()
            }
        }
        "long" => {
            if p.java_long.is_match(value) {
                py_int(&drop_suffix(value))
            } else {
                keep()
            }
        }
        "boolean" => match value {
            "true" => Ok(Py::Bool(true)),
            "false" => Ok(Py::Bool(false)),
            _ => keep(),
        },
        // BFCL's pattern r"^\'.$\'" can never match (`$` is followed by a quote), so a char
        // always stays the string it was given.
        "char" => keep(),
        "ArrayList" => parse_arraylist(value, nested),
        "Array" => parse_array(value, nested),
        "HashMap" => Ok(parse_hashmap(value)),
        "Set" | "Hashtable" => Err(PyErr::new(
            "NotImplementedError",
            "Set conversion is not implemented",
        )),
        "Queue" | "Stack" => Err(PyErr::new(
            "NotImplementedError",
            format!("{expected} conversion is not implemented"),
        )),
        _ => keep(), // "String" | "any"
    }
}

/// `nested_type` is truthy in Python unless it is None or "".
fn truthy(nested: Option<&str>) -> Option<&str> {
    nested.filter(|n| !n.is_empty())
}

fn java_element(element: &str, nested: Option<&str>) -> Result<Py, PyErr> {
    match truthy(nested) {
        Some("char" | "String") => Ok(Py::Str(py_slice_inner(element).to_string())),
        Some(n) => java_convert(element, n, None),
        None => parse_java_value(element),
    }
}

fn parse_arraylist(input: &str, nested: Option<&str>) -> Result<Py, PyErr> {
    let p = patterns();
    if let Some(c) = p.arraylist_aslist.captures(input) {
        let elements = c.get(1).map_or("", |m| m.as_str());
        return elements
            .split(',')
            .map(|e| java_element(py_strip(e), nested))
            .collect::<Result<_, _>>()
            .map(Py::List);
    }
    if let Some(c) = p.arraylist_add.captures(input) {
        let adds = c.get(1).map_or("", |m| m.as_str());
        return p
            .add_call
            .captures_iter(adds)
            .map(|m| java_element(py_strip(m.get(1).map_or("", |m| m.as_str())), nested))
            .collect::<Result<_, _>>()
            .map(Py::List);
    }
    if p.arraylist_empty.is_match(input) {
        return Ok(Py::List(Vec::new()));
    }
    Ok(Py::Str(input.to_string()))
}

fn parse_array(input: &str, nested: Option<&str>) -> Result<Py, PyErr> {
    let Some(c) = patterns().array.captures(input) else {
        return Ok(Py::Str(input.to_string()));
    };
    let elements = c.get(1).map_or("", |m| m.as_str());
    elements
        .split(',')
        .map(py_strip)
        .filter(|e| !e.is_empty())
        .map(|e| match truthy(nested) {
            Some(n) => java_convert(e, n, None),
            None => parse_java_value(e),
        })
        .collect::<Result<_, _>>()
        .map(Py::List)
}

fn parse_hashmap(input: &str) -> Py {
    let p = patterns();
    if let Some(c) = p.hashmap.captures(input) {
        let puts = c.get(1).map_or("", |m| m.as_str());
        let mut elements = Dict::new();
        if !py_strip(puts).is_empty() {
            for m in p.put_call.captures_iter(puts) {
                let key = m.get(1).map_or("", |m| m.as_str()).to_string();
                let value = py_strip(m.get(2).map_or("", |m| m.as_str()));
                // parse_java_value only raises on a long literal with a trailing newline, which
                // a stripped value cannot have.
                let value = parse_java_value(value).unwrap_or_else(|_| Py::Str(value.into()));
                elements.insert(key, value);
            }
        }
        return Py::Dict(elements);
    }
    if p.hashmap_empty.is_match(input) {
        return Py::Dict(Dict::new());
    }
    Py::Str(input.to_string())
}

/// `parse_java_value(value_str)`: a Java literal whose type is not known.
fn parse_java_value(s: &str) -> Result<Py, PyErr> {
    let p = patterns();
    if s == "true" {
        return Ok(Py::Bool(true));
    }
    if s == "false" {
        return Ok(Py::Bool(false));
    }
    if s.starts_with('"') && s.ends_with('"') {
        return Ok(Py::Str(py_slice_inner(s).to_string()));
    }
    if p.java_long.is_match(s) {
        let mut body = s.to_string();
        body.pop();
        return py_int(&body);
    }
    if p.java_float.is_match(s) {
        return py_float(&drop_suffix(s)).map(Py::Float);
    }
    if let Ok(v) = py_int(s) {
        return Ok(v);
    }
    if let Ok(f) = py_float(s) {
        return Ok(Py::Float(f));
    }
    Ok(Py::Str(s.to_string()))
}

/// `js_type_converter(value, expected_type, nested_type)`.
pub fn js_convert(value: &str, expected: &str, nested: Option<&str>) -> Result<Py, PyErr> {
    if !JS_TYPES.contains(&expected) {
        return Err(unsupported(expected));
    }
    let p = patterns();
    let keep = || Ok(Py::Str(value.to_string()));
    match expected {
        "String" => {
            let quoted = (value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\''));
            if quoted {
                Ok(Py::Str(py_slice_inner(value).to_string()))
            } else {
                keep()
            }
        }
        "integer" => {
            if p.int.is_match(value) {
                py_int(value)
            } else {
                keep()
            }
        }
        "float" => {
            if p.js_float.is_match(value) {
                py_float(value).map(Py::Float)
            } else {
                keep()
            }
        }
        "Bigint" => {
            if p.js_bigint.is_match(value) {
                let mut body = value.to_string();
                body.pop();
                py_int(&body)
            } else {
                keep()
            }
        }
        "Boolean" => match value {
            "true" => Ok(Py::Bool(true)),
            "false" => Ok(Py::Bool(false)),
            _ => keep(),
        },
        "dict" => Ok(parse_js_dict(value)),
        "array" => Ok(parse_js_array(value, nested)),
        _ => keep(), // "any"
    }
}

/// `parse_js_collection(code, "array", nested_type)`; any exception inside gives back the code.
fn parse_js_array(code: &str, nested: Option<&str>) -> Py {
    let code = py_strip(code);
    try_js_array(code, nested).unwrap_or_else(|_| Py::Str(code.to_string()))
}

fn try_js_array(code: &str, nested: Option<&str>) -> Result<Py, PyErr> {
    let p = patterns();
    if let Some(m) = p.js_array_2d.find(code) {
        let mut elements = Vec::new();
        for (idx, inner) in p.brackets.captures_iter(m.as_str()).enumerate() {
            let mut inner = py_strip(inner.get(1).map_or("", |m| m.as_str()));
            if idx == 0 && inner.starts_with('[') {
                inner = &inner[1..];
            }
            let row = inner
                .split(',')
                .map(|e| parse_js_value(py_strip(e)))
                .collect();
            elements.push(Py::List(row));
        }
        return Ok(Py::List(elements));
    }
    let Some(c) = p.js_array.captures(code) else {
        return Ok(Py::Str(code.to_string()));
    };
    let elements_str = c
        .get(1)
        .or_else(|| c.get(2))
        .map_or("", |m| py_strip(m.as_str()));
    let elements: Vec<&str> = if elements_str.is_empty() {
        Vec::new()
    } else {
        elements_str.split(',').collect()
    };
    match truthy(nested) {
        Some(n) => elements
            .into_iter()
            .map(|e| {
                let e = py_strip(e);
                let quoted = e.starts_with('\'') || e.starts_with('"');
                js_convert(e, n, quoted.then_some("String"))
            })
            .collect::<Result<_, _>>()
            .map(Py::List),
        None => Ok(Py::List(
            elements
                .into_iter()
                .map(|e| parse_js_value(py_strip(e)))
                .collect(),
        )),
    }
}

/// `parse_js_collection(code, "dict", ...)`; a failure inside gives back the code.
fn parse_js_dict(code: &str) -> Py {
    let code = py_strip(code);
    if code == "{}" {
        return Py::Dict(Dict::new());
    }
    let p = patterns();
    let Some(c) = p.js_dict.captures(code) else {
        return Py::Str(code.to_string());
    };
    let content = c.get(1).map_or("", |m| m.as_str());
    let mut dict = Dict::new();
    for pair in p.js_pair.captures_iter(content) {
        // The backtracking engine gives up on pathological input, where Python would only be
        // slow; that is the one way this loop fails, and BFCL's own `except` returns the code.
        let Ok(pair) = pair else {
            return Py::Str(code.to_string());
        };
        let key = py_strip_chars(
            py_strip(pair.get(1).map_or("", |m| m.as_str())),
            &['\'', '"'],
        );
        let value = py_strip(pair.get(2).map_or("", |m| m.as_str()));
        let parsed = if value.starts_with('[') && value.ends_with(']') {
            parse_js_array(value, None)
        } else if value.starts_with('{') && value.ends_with('}') {
            parse_js_dict(value)
        } else {
            parse_js_value(py_strip_chars(value, &['\'', '"']))
        };
        dict.insert(key.to_string(), parsed);
    }
    Py::Dict(dict)
}

/// `parse_js_value(value_str)`.
fn parse_js_value(s: &str) -> Py {
    let s = py_strip(s);
    match s {
        "true" => return Py::Bool(true),
        "false" => return Py::Bool(false),
        _ => {}
    }
    if (s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')) {
        return Py::Str(py_slice_inner(s).to_string());
    }
    if let Ok(v) = py_int(s) {
        return v;
    }
    if let Ok(f) = py_float(s) {
        return Py::Float(f);
    }
    Py::Str(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::value::{loads, py_eq};

    fn j(value: &str, t: &str, nested: Option<&str>) -> Py {
        java_convert(value, t, nested).unwrap()
    }

    fn js(value: &str, t: &str, nested: Option<&str>) -> Py {
        js_convert(value, t, nested).unwrap()
    }

    fn eq(got: Py, want_json: &str) {
        let want = loads(want_json).unwrap();
        assert!(py_eq(&got, &want), "got {}, want {want_json}", got.repr());
        assert_eq!(got.py_type(), want.py_type(), "{}", got.repr());
    }

    // The cases of bfcl-eval's own test_java_type_converter / test_js_type_converter, plus the
    // quirks the checker's verdicts depend on.
    #[test]
    fn java_converter() {
        eq(j("true", "boolean", None), "true");
        eq(j("123", "integer", None), "123");
        eq(j("-123", "integer", None), "-123");
        eq(j("3.14f", "float", None), "3.14");
        eq(j("3e-3F", "float", None), "0.003");
        eq(j("3f", "float", None), "3.0");
        eq(j("3.14", "float", None), "\"3.14\"");
        eq(j("3.14e2", "double", None), "314.0");
        eq(j("123L", "long", None), "123");
        eq(j("123", "long", None), "\"123\"");
        eq(
            j("9223372036854775807L", "long", None),
            "9223372036854775807",
        );
        eq(j("a", "char", None), "\"a\"");
        eq(j("'a'", "char", None), "\"'a'\"");
        eq(j("123", "any", None), "\"123\"");
        eq(j("5\n", "integer", None), "5");
        eq(j("new int[]{1, 2, 3}", "Array", None), "[1, 2, 3]");
        eq(
            j("new int[] { 1, 2, 3 }", "Array", Some("integer")),
            "[1, 2, 3]",
        );
        eq(j("new int[]{}", "Array", None), "[]");
        eq(
            j("new String[]{\"a\", b}", "Array", Some("String")),
            r#"["\"a\"", "b"]"#,
        );
        eq(
            j("new long[]{1L, 2, 3L}", "Array", Some("long")),
            r#"[1, "2", 3]"#,
        );
        eq(j("{1, 2}", "Array", None), "\"{1, 2}\"");
        eq(
            j(
                "new ArrayList<>(Arrays.asList(\"a\", \"b\"))",
                "ArrayList",
                Some("String"),
            ),
            r#"["a", "b"]"#,
        );
        eq(
            j(
                "new ArrayList<>(Arrays.asList(1, \"abc\", true))",
                "ArrayList",
                None,
            ),
            r#"[1, "abc", true]"#,
        );
        eq(
            j(
                "new ArrayList<Float>() {{ add(1.0f); add(2.0f); }}",
                "ArrayList",
                Some("float"),
            ),
            "[1.0, 2.0]",
        );
        eq(
            j(
                "new ArrayList<Character>() {{ add('a'); add('b'); }}",
                "ArrayList",
                Some("char"),
            ),
            r#"["a", "b"]"#,
        );
        eq(j("new ArrayList<>()", "ArrayList", None), "[]");
        eq(
            j(
                "new HashMap<String, Object>() {{ put(\"key1\", 1); put(\"key2\", \"value\"); put(\"key3\", true); }}",
                "HashMap",
                None,
            ),
            r#"{"key1": 1, "key2": "value", "key3": true}"#,
        );
        eq(j("new HashMap<>() {{}}", "HashMap", None), "{}");
        eq(j("new HashMap<>()", "HashMap", None), "{}");
        eq(
            j(
                "new HashMap<String, String>() { { put(\"key\", \"value\"); } }",
                "HashMap",
                None,
            ),
            r#"{"key": "value"}"#,
        );
        assert_eq!(
            java_convert("x", "Set", None).unwrap_err().kind,
            "NotImplementedError"
        );
        assert_eq!(
            java_convert("x", "Object", None).unwrap_err().kind,
            "ValueError"
        );
        assert_eq!(
            java_convert(&"9".repeat(5000), "integer", None)
                .unwrap_err()
                .kind,
            "ValueError"
        );
    }

    #[test]
    fn js_converter() {
        eq(js("true", "Boolean", None), "true");
        eq(js("True", "Boolean", None), "\"True\"");
        eq(js("123", "integer", None), "123");
        eq(js("3.14", "float", None), "3.14");
        eq(js("3", "float", None), "3.0");
        eq(js("3e0", "float", None), "\"3e0\"");
        eq(js("123n", "Bigint", None), "123");
        assert_eq!(
            js_convert("123n\n", "Bigint", None).unwrap_err().kind,
            "ValueError"
        );
        eq(js("abc", "String", None), "\"abc\"");
        eq(js("'abc'", "String", None), "\"abc\"");
        eq(js("[1, 2, 3]", "array", None), "[1, 2, 3]");
        eq(js("new Array(1, 2, 3)", "array", None), "[1, 2, 3]");
        eq(js("[1, 'two', true]", "array", None), r#"[1, "two", true]"#);
        eq(js("[]", "array", None), "[]");
        eq(js("[1.1, 2.2]", "array", Some("float")), "[1.1, 2.2]");
        eq(js("[1n, 2n]", "array", Some("Bigint")), "[1, 2]");
        eq(
            js(r#"["hello", "world"]"#, "array", Some("String")),
            r#"["hello", "world"]"#,
        );
        eq(
            js(" [ [ 1, 2 ], [ 3,   4], [5, 6]]", "array", Some("array")),
            "[[1, 2], [3, 4], [5, 6]]",
        );
        eq(
            js("new Array([1, 2], [3, 4])", "array", Some("array")),
            "[[1, 2], [3, 4]]",
        );
        // An unsupported element type raises inside the array branch, which returns the code.
        eq(js("[1, 2]", "array", Some("Object")), "\"[1, 2]\"");
        eq(js("{}", "dict", None), "{}");
        eq(js("{'key': 'value'}", "dict", None), r#"{"key": "value"}"#);
        eq(
            js(
                "{'key1': 123, 'key2': 'value', 'key3': false}",
                "dict",
                None,
            ),
            r#"{"key1": 123, "key2": "value", "key3": false}"#,
        );
        eq(
            js(
                r#"{"initialState": initialStateObject, "reducers": reducersMap, "middlewares": ["loggerMiddleware"], "enhancers": ["applyMiddleware", "myMiddleWare"]}"#,
                "dict",
                None,
            ),
            r#"{"initialState": "initialStateObject", "reducers": "reducersMap", "middlewares": ["loggerMiddleware"], "enhancers": ["applyMiddleware", "myMiddleWare"]}"#,
        );
        // The lookahead splits pairs only where another `key:` follows.
        eq(
            js("{a: 1, b, c: 2}", "dict", None),
            r#"{"a": "1, b", "c": 2}"#,
        );
        eq(js("{a: {b: 1}}", "dict", None), r#"{"a": "{b: 1"}"#);
        eq(js("not a dict", "dict", None), "\"not a dict\"");
        assert_eq!(
            js_convert("x", "Object", None).unwrap_err().kind,
            "ValueError"
        );
    }
}
