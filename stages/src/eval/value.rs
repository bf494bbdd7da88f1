//! Python's object model, as far as BFCL's checker sees it.
//!
//! BFCL decides a verdict by comparing Python objects that came out of `json.loads`: `1 == 1.0`
//! and `True == 1` hold, `type(True) == int` does not, `int("1_000")` is 1000, `"" in "abc"` is
//! true, a huge integer literal is an exact `int`, and `NaN` parses. Reproducing its verdicts
//! means reproducing those semantics, so this module has its own value type ([`Py`]), its own
//! `json.loads` ([`loads`]) and the few Python operations the checker performs (`==`, `in`,
//! `len`, indexing, `str.strip`, `int(str)`, `float(str)`), each failing with the exception
//! Python would raise ([`PyErr`]), because the official checker does not catch them.
//!
//! Known, deliberate gaps: a lone UTF-16 surrogate escape (`"\ud800"`) becomes U+FFFD, since a
//! Rust string cannot hold it; nesting deeper than [`MAX_DEPTH`] fails to parse, where CPython
//! fails at its recursion limit (~1000).

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

/// A Python value made of what `json.loads` returns.
#[derive(Debug, Clone)]
pub enum Py {
    None,
    Bool(bool),
    Int(i128),
    /// An `int` outside `i128`, as canonical decimal digits (optional `-`, no leading zeros).
    BigInt(Box<str>),
    Float(f64),
    Str(String),
    List(Vec<Py>),
    Dict(Dict),
}

/// A `dict` with string keys (all JSON gives), in insertion order.
#[derive(Debug, Clone, Default)]
pub struct Dict(Vec<(String, Py)>);

impl Dict {
    pub fn new() -> Self {
        Dict(Vec::new())
    }

    pub fn get(&self, key: &str) -> Option<&Py> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// `d[key] = value`: a new key goes last, an existing one keeps its place.
    pub fn insert(&mut self, key: String, value: Py) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Py)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, Py)> for Dict {
    fn from_iter<I: IntoIterator<Item = (String, Py)>>(iter: I) -> Self {
        let mut d = Dict::new();
        for (k, v) in iter {
            d.insert(k, v);
        }
        d
    }
}

/// `type(x)` of a [`Py`], and the types BFCL's tables map parameter types to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyType {
    NoneType,
    Bool,
    Int,
    Float,
    Str,
    List,
    Dict,
    /// Only as an expected type (Java `Set`): no JSON value has it.
    Set,
}

impl PyType {
    /// Python's name of the type, as `type(x).__name__` prints it.
    pub fn name(self) -> &'static str {
        match self {
            PyType::NoneType => "NoneType",
            PyType::Bool => "bool",
            PyType::Int => "int",
            PyType::Float => "float",
            PyType::Str => "str",
            PyType::List => "list",
            PyType::Dict => "dict",
            PyType::Set => "set",
        }
    }
}

/// A Python exception the official code would raise (and not catch) at this point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyErr {
    /// The exception class: `KeyError`, `TypeError`, `ValueError`, ...
    pub kind: &'static str,
    pub message: String,
}

impl PyErr {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        PyErr {
            kind,
            message: message.into(),
        }
    }

    fn type_error(message: impl Into<String>) -> Self {
        PyErr::new("TypeError", message)
    }

    pub(crate) fn value_error(message: impl Into<String>) -> Self {
        PyErr::new("ValueError", message)
    }
}

impl fmt::Display for PyErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for PyErr {}

impl Py {
    pub fn py_type(&self) -> PyType {
        match self {
            Py::None => PyType::NoneType,
            Py::Bool(_) => PyType::Bool,
            Py::Int(_) | Py::BigInt(_) => PyType::Int,
            Py::Float(_) => PyType::Float,
            Py::Str(_) => PyType::Str,
            Py::List(_) => PyType::List,
            Py::Dict(_) => PyType::Dict,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Py::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_dict(&self) -> Option<&Dict> {
        match self {
            Py::Dict(d) => Some(d),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Py]> {
        match self {
            Py::List(l) => Some(l),
            _ => None,
        }
    }

    /// `self == ""`.
    pub fn is_empty_str(&self) -> bool {
        matches!(self, Py::Str(s) if s.is_empty())
    }

    fn is_hashable(&self) -> bool {
        !matches!(self, Py::List(_) | Py::Dict(_))
    }

    /// `len(self)`.
    pub fn py_len(&self) -> Result<usize, PyErr> {
        match self {
            Py::Str(s) => Ok(s.chars().count()),
            Py::List(l) => Ok(l.len()),
            Py::Dict(d) => Ok(d.len()),
            other => Err(PyErr::type_error(format!(
                "object of type '{}' has no len()",
                other.py_type().name()
            ))),
        }
    }

    /// `self[i]` for a non-negative integer `i`.
    pub fn index(&self, i: usize) -> Result<Cow<'_, Py>, PyErr> {
        match self {
            Py::List(l) => l
                .get(i)
                .map(Cow::Borrowed)
                .ok_or_else(|| PyErr::new("IndexError", "list index out of range")),
            Py::Str(s) => s
                .chars()
                .nth(i)
                .map(|c| Cow::Owned(Py::Str(c.to_string())))
                .ok_or_else(|| PyErr::new("IndexError", "string index out of range")),
            // JSON dicts have string keys only, so an int key is never there.
            Py::Dict(_) => Err(PyErr::new("KeyError", i.to_string())),
            other => Err(PyErr::type_error(format!(
                "'{}' object is not subscriptable",
                other.py_type().name()
            ))),
        }
    }

    /// `self[key]` for a string key.
    pub fn get_item(&self, key: &str) -> Result<&Py, PyErr> {
        match self {
            Py::Dict(d) => d
                .get(key)
                .ok_or_else(|| PyErr::new("KeyError", format!("'{key}'"))),
            Py::List(_) | Py::Str(_) => Err(PyErr::type_error(format!(
                "{} indices must be integers or slices, not str",
                self.py_type().name()
            ))),
            other => Err(PyErr::type_error(format!(
                "'{}' object is not subscriptable",
                other.py_type().name()
            ))),
        }
    }

    /// `for x in self`: list items, a string's characters, a dict's keys.
    pub fn iter(&self) -> Result<Vec<Cow<'_, Py>>, PyErr> {
        match self {
            Py::List(l) => Ok(l.iter().map(Cow::Borrowed).collect()),
            Py::Str(s) => Ok(s
                .chars()
                .map(|c| Cow::Owned(Py::Str(c.to_string())))
                .collect()),
            Py::Dict(d) => Ok(d
                .keys()
                .map(|k| Cow::Owned(Py::Str(k.to_string())))
                .collect()),
            other => Err(PyErr::type_error(format!(
                "'{}' object is not iterable",
                other.py_type().name()
            ))),
        }
    }

    /// `item in self`.
    pub fn contains(&self, item: &Py) -> Result<bool, PyErr> {
        match self {
            Py::List(l) => Ok(l.iter().any(|x| py_eq(x, item))),
            Py::Str(s) => match item {
                Py::Str(needle) => Ok(s.contains(needle.as_str())),
                other => Err(PyErr::type_error(format!(
                    "'in <string>' requires string as left operand, not {}",
                    other.py_type().name()
                ))),
            },
            Py::Dict(d) => match item {
                Py::Str(k) => Ok(d.contains_key(k)),
                other if other.is_hashable() => Ok(false),
                other => Err(PyErr::type_error(format!(
                    "unhashable type: '{}'",
                    other.py_type().name()
                ))),
            },
            other => Err(PyErr::type_error(format!(
                "argument of type '{}' is not iterable",
                other.py_type().name()
            ))),
        }
    }

    /// `key in self` for a string key.
    pub fn contains_str(&self, key: &str) -> Result<bool, PyErr> {
        match self {
            Py::Dict(d) => Ok(d.contains_key(key)),
            Py::Str(s) => Ok(s.contains(key)),
            Py::List(l) => Ok(l.iter().any(|x| x.as_str() == Some(key))),
            other => Err(PyErr::type_error(format!(
                "argument of type '{}' is not iterable",
                other.py_type().name()
            ))),
        }
    }

    /// Python's `repr()` of the value, for error messages.
    pub fn repr(&self) -> String {
        let mut out = String::new();
        write_repr(&mut out, self);
        out
    }
}

fn write_repr(out: &mut String, v: &Py) {
    match v {
        Py::None => out.push_str("None"),
        Py::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
        Py::Int(i) => out.push_str(&i.to_string()),
        Py::BigInt(s) => out.push_str(s),
        Py::Float(f) => out.push_str(&float_repr(*f)),
        Py::Str(s) => {
            let quote = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            out.push(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                        out.push_str(&format!("\\x{:02x}", c as u32))
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
        }
        Py::List(l) => {
            out.push('[');
            for (i, x) in l.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, x);
            }
            out.push(']');
        }
        Py::Dict(d) => {
            out.push('{');
            for (i, (k, x)) in d.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &Py::Str(k.to_string()));
                out.push_str(": ");
                write_repr(out, x);
            }
            out.push('}');
        }
    }
}

/// Python's `repr(float)` (`inf`, `nan`, `1e-05`, `100.0`).
fn float_repr(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        crate::data::template::python_float_repr(f)
    }
}

/// Python's `a == b` for JSON-made values.
pub fn py_eq(a: &Py, b: &Py) -> bool {
    match (a, b) {
        (Py::None, Py::None) => true,
        (Py::Str(x), Py::Str(y)) => x == y,
        (Py::List(x), Py::List(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Py::Dict(x), Py::Dict(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => match (Number::of(a), Number::of(b)) {
            (Some(x), Some(y)) => x.eq(&y),
            _ => false,
        },
    }
}

/// The numeric tower Python compares exactly: bool ⊂ int, and int vs float without rounding.
enum Number<'a> {
    Int(i128),
    Big(&'a str),
    Float(f64),
}

impl<'a> Number<'a> {
    fn of(v: &'a Py) -> Option<Self> {
        match v {
            Py::Bool(b) => Some(Number::Int(i128::from(*b))),
            Py::Int(i) => Some(Number::Int(*i)),
            Py::BigInt(s) => Some(Number::Big(s)),
            Py::Float(f) => Some(Number::Float(*f)),
            _ => None,
        }
    }

    fn eq(&self, other: &Number<'_>) -> bool {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a == b,
            (Number::Big(a), Number::Big(b)) => a == b,
            (Number::Float(a), Number::Float(b)) => a == b,
            (Number::Int(i), Number::Float(f)) | (Number::Float(f), Number::Int(i)) => {
                f.is_finite() && f.fract() == 0.0 && f.abs() < 1.0e38 && *f as i128 == *i
            }
            (Number::Big(s), Number::Float(f)) | (Number::Float(f), Number::Big(s)) => {
                f.is_finite() && f.fract() == 0.0 && format!("{f:.0}") == *s
            }
            (Number::Int(_), Number::Big(_)) | (Number::Big(_), Number::Int(_)) => false,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// json.loads

/// Deeper nesting fails to parse (CPython fails near its recursion limit, ~1000).
pub const MAX_DEPTH: usize = 900;

/// Why [`loads`] rejected a text: the message and the character offset, as Python reports them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}: char {pos}")]
pub struct JsonError {
    pub message: &'static str,
    /// Offset in bytes of the UTF-8 text.
    pub pos: usize,
}

/// Python's `json.loads(text)` with its defaults: `NaN`/`Infinity`/`-Infinity` accepted,
/// control characters inside strings rejected, integers exact (more than 4300 digits fail, as
/// Python's int conversion limit makes them), later duplicate keys overwrite earlier ones.
pub fn loads(text: &str) -> Result<Py, JsonError> {
    let mut p = Parser {
        s: text.as_bytes(),
        text,
        i: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("Extra data"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn err(&self, message: &'static str) -> JsonError {
        JsonError {
            message,
            pos: self.i,
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Py, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("maximum recursion depth exceeded"));
        }
        match self.s.get(self.i) {
            Some(b'"') => {
                self.i += 1;
                self.string().map(Py::Str)
            }
            Some(b'{') => {
                self.i += 1;
                self.object(depth)
            }
            Some(b'[') => {
                self.i += 1;
                self.array(depth)
            }
            Some(b'n') if self.eat("null") => Ok(Py::None),
            Some(b't') if self.eat("true") => Ok(Py::Bool(true)),
            Some(b'f') if self.eat("false") => Ok(Py::Bool(false)),
            Some(b'N') if self.eat("NaN") => Ok(Py::Float(f64::NAN)),
            Some(b'I') if self.eat("Infinity") => Ok(Py::Float(f64::INFINITY)),
            Some(b'-') if self.s[self.i..].starts_with(b"-Infinity") => {
                self.i += 9;
                Ok(Py::Float(f64::NEG_INFINITY))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("Expecting value")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Py, JsonError> {
        let start = self.i;
        if self.s[self.i] == b'-' {
            self.i += 1;
        }
        match self.s.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => {
                self.i = start;
                return Err(self.err("Expecting value"));
            }
        }
        let mut is_float = false;
        if self.s.get(self.i) == Some(&b'.') {
            let dot = self.i;
            self.i += 1;
            if self.digits() == 0 {
                self.i = dot;
            } else {
                is_float = true;
            }
        }
        if let Some(b'e' | b'E') = self.s.get(self.i) {
            let e = self.i;
            self.i += 1;
            if let Some(b'+' | b'-') = self.s.get(self.i) {
                self.i += 1;
            }
            if self.digits() == 0 {
                self.i = e;
            } else {
                is_float = true;
            }
        }
        let lit = &self.text[start..self.i];
        if is_float {
            return Ok(Py::Float(lit.parse().unwrap_or(f64::NAN)));
        }
        int_from_ascii(lit).map_err(|_| JsonError {
            message: "Exceeds the limit (4300 digits) for integer string conversion",
            pos: start,
        })
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .ok_or_else(|| self.err("Invalid \\uXXXX escape"))?;
        let v = u32::from_str_radix(std::str::from_utf8(h).unwrap_or("0"), 16).unwrap_or(0);
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        let mut out = String::new();
        loop {
            let start = self.i;
            while let Some(&b) = self.s.get(self.i) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.i += 1;
            }
            out.push_str(&self.text[start..self.i]);
            match self.s.get(self.i) {
                None => return Err(self.err("Unterminated string starting at")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.i += 1;
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.err("Unterminated string starting at"));
                    };
                    self.i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let mut c = hi;
                            if (0xD800..0xDC00).contains(&hi)
                                && self.s[self.i..].starts_with(b"\\u")
                            {
                                let save = self.i;
                                self.i += 2;
                                match self.hex4() {
                                    Ok(lo) if (0xDC00..0xE000).contains(&lo) => {
                                        c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                                    }
                                    _ => self.i = save,
                                }
                            }
                            out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                        }
                        _ => {
                            self.i -= 2;
                            return Err(self.err("Invalid \\escape"));
                        }
                    }
                }
                Some(_) => return Err(self.err("Invalid control character at")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Py, JsonError> {
        let mut d = Dict::new();
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(Py::Dict(d));
        }
        loop {
            if self.s.get(self.i) != Some(&b'"') {
                return Err(self.err("Expecting property name enclosed in double quotes"));
            }
            self.i += 1;
            let key = self.string()?;
            self.ws();
            if self.s.get(self.i) != Some(&b':') {
                return Err(self.err("Expecting ':' delimiter"));
            }
            self.i += 1;
            self.ws();
            let v = self.value(depth + 1)?;
            d.insert(key, v);
            self.ws();
            match self.s.get(self.i) {
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Py::Dict(d));
                }
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                _ => return Err(self.err("Expecting ',' delimiter")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Py, JsonError> {
        let mut l = Vec::new();
        self.ws();
        if self.s.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(Py::List(l));
        }
        loop {
            l.push(self.value(depth + 1)?);
            self.ws();
            match self.s.get(self.i) {
                Some(b']') => {
                    self.i += 1;
                    return Ok(Py::List(l));
                }
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                _ => return Err(self.err("Expecting ',' delimiter")),
            }
        }
    }
}

/// Python's limit on the digits of an `int(str)` conversion (`sys.get_int_max_str_digits()`).
const MAX_INT_DIGITS: usize = 4300;

/// An `int` from `-?[0-9]+` (leading zeros allowed).
fn int_from_ascii(lit: &str) -> Result<Py, PyErr> {
    let (neg, digits) = match lit.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, lit.strip_prefix('+').unwrap_or(lit)),
    };
    if digits.len() > MAX_INT_DIGITS {
        return Err(PyErr::value_error(format!(
            "Exceeds the limit ({MAX_INT_DIGITS} digits) for integer string conversion"
        )));
    }
    if let Ok(v) = lit.parse::<i128>() {
        return Ok(Py::Int(v));
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() {
        return Ok(Py::Int(0));
    }
    Ok(Py::BigInt(
        if neg {
            format!("-{trimmed}")
        } else {
            trimmed.to_string()
        }
        .into(),
    ))
}

// ------------------------------------------------------------------------------------------------
// str methods and the int()/float() constructors

/// `str.isspace()` for one character.
pub fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n'
            | '\u{0B}'
            | '\u{0C}'
            | '\r'
            | '\u{1C}'..='\u{1F}'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// `s.strip(chars)`.
pub fn py_strip_chars<'a>(s: &'a str, chars: &[char]) -> &'a str {
    s.trim_matches(|c| chars.contains(&c))
}

/// `s[1:-1]`.
pub fn py_slice_inner(s: &str) -> &str {
    let mut it = s.char_indices();
    let Some(_) = it.next() else { return "" };
    let start = it.next().map_or(s.len(), |(i, _)| i);
    let end = s.char_indices().next_back().map_or(0, |(i, _)| i);
    if start >= end { "" } else { &s[start..end] }
}

/// The value of a Unicode decimal digit (general category Nd), as `int()` and `\d` read it.
pub fn decimal_digit(c: char) -> Option<u32> {
    if c.is_ascii_digit() {
        return Some(c as u32 - '0' as u32);
    }
    if c.is_ascii() || !is_nd(c) {
        return None;
    }
    // Nd characters come in runs of whole decades 0..9, so the offset within the run gives it.
    let mut k = 0u32;
    let mut p = c as u32;
    while p > 0 && char::from_u32(p - 1).is_some_and(is_nd) {
        p -= 1;
        k += 1;
    }
    Some(k % 10)
}

fn is_nd(c: char) -> bool {
    static ND: OnceLock<regex::Regex> = OnceLock::new();
    let re = ND.get_or_init(|| regex::Regex::new(r"\A\d\z").expect("valid regex"));
    let mut buf = [0u8; 4];
    re.is_match(c.encode_utf8(&mut buf))
}

/// Digits with single underscores between them (PEP 515), as ASCII; `None` if malformed.
fn digitpart(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut prev_digit = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '_' {
            if !prev_digit || chars.peek().is_none_or(|&n| decimal_digit(n).is_none()) {
                return None;
            }
            prev_digit = false;
            continue;
        }
        let d = decimal_digit(c)?;
        out.push(char::from_digit(d, 10).unwrap_or('0'));
        prev_digit = true;
    }
    (!out.is_empty()).then_some(out)
}

/// Python's `int(s)` for a string (base 10).
pub fn py_int(s: &str) -> Result<Py, PyErr> {
    let invalid = || PyErr::value_error(format!("invalid literal for int() with base 10: '{s}'"));
    let t = py_strip(s);
    let (sign, rest) = match t.chars().next() {
        Some('-') => ("-", &t[1..]),
        Some('+') => ("", &t[1..]),
        _ => ("", t),
    };
    let digits = digitpart(rest).ok_or_else(invalid)?;
    int_from_ascii(&format!("{sign}{digits}"))
}

/// Python's `float(s)` for a string.
pub fn py_float(s: &str) -> Result<f64, PyErr> {
    let invalid = || PyErr::value_error(format!("could not convert string to float: '{s}'"));
    let t = py_strip(s);
    let (neg, rest) = match t.chars().next() {
        Some('-') => (true, &t[1..]),
        Some('+') => (false, &t[1..]),
        _ => (false, t),
    };
    let lower = rest.to_ascii_lowercase();
    let magnitude = if lower == "inf" || lower == "infinity" {
        f64::INFINITY
    } else if lower == "nan" {
        f64::NAN
    } else {
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (int_part, frac_part) = match mantissa.find('.') {
            Some(i) => (&mantissa[..i], Some(&mantissa[i + 1..])),
            None => (mantissa, None),
        };
        let int_digits = if int_part.is_empty() {
            String::new()
        } else {
            digitpart(int_part).ok_or_else(invalid)?
        };
        let frac_digits = match frac_part {
            None | Some("") => String::new(),
            Some(f) => digitpart(f).ok_or_else(invalid)?,
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(invalid());
        }
        let mut ascii = format!("{int_digits}.{frac_digits}");
        if ascii.starts_with('.') {
            ascii.insert(0, '0');
        }
        if let Some(e) = exponent {
            let (esign, edigits) = match e.chars().next() {
                Some('-') => ("-", &e[1..]),
                Some('+') => ("", &e[1..]),
                _ => ("", e),
            };
            ascii.push('e');
            ascii.push_str(esign);
            ascii.push_str(&digitpart(edigits).ok_or_else(invalid)?);
        }
        ascii.parse::<f64>().map_err(|_| invalid())?
    };
    Ok(if neg { -magnitude } else { magnitude })
}

/// `float(x)` of an `int`: `OverflowError` past the float range.
pub fn int_to_float(v: &Py) -> Result<f64, PyErr> {
    match v {
        Py::Int(i) => Ok(*i as f64),
        Py::BigInt(s) => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(f),
            _ => Err(PyErr::new(
                "OverflowError",
                "int too large to convert to float",
            )),
        },
        _ => Err(PyErr::type_error("not an int")),
    }
}

// ------------------------------------------------------------------------------------------------
// json.dumps

impl Py {
    /// `json.dumps(self)` with Python's defaults (`ensure_ascii=True`, `", "` and `": "`),
    /// through the template module's byte-exact `json.dumps`.
    pub fn dumps(&self) -> String {
        let options = crate::data::template::JsonOptions {
            ensure_ascii: true,
            ..Default::default()
        };
        crate::data::template::python_json(&self.to_template_value(), &options)
            .unwrap_or_else(|e| format!("<unserializable: {e}>"))
    }

    fn to_template_value(&self) -> minijinja::Value {
        use minijinja::Value;
        match self {
            Py::None => Value::from(()),
            Py::Bool(b) => Value::from(*b),
            Py::Int(i) => Value::from(*i),
            // Beyond 128 bits: no template value holds it; it never occurs in BFCL's data.
            Py::BigInt(s) => Value::from(s.parse::<f64>().unwrap_or(f64::NAN)),
            Py::Float(f) => Value::from(*f),
            Py::Str(s) => Value::from(s.as_str()),
            Py::List(l) => Value::from_iter(l.iter().map(Py::to_template_value)),
            Py::Dict(d) => Value::from_pairs(d.iter().map(|(k, v)| (k, v.to_template_value()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Py {
        loads(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn loads_reads_what_python_reads() {
        assert!(matches!(l("1"), Py::Int(1)));
        assert!(matches!(l("-0"), Py::Int(0)));
        assert!(matches!(l("1.0"), Py::Float(f) if f == 1.0));
        assert!(matches!(l("1e2"), Py::Float(f) if f == 100.0));
        assert!(matches!(l("1E400"), Py::Float(f) if f == f64::INFINITY));
        assert!(matches!(l(" NaN "), Py::Float(f) if f.is_nan()));
        assert!(matches!(l("-Infinity"), Py::Float(f) if f == f64::NEG_INFINITY));
        assert!(
            matches!(l("123456789012345678901234567890123456789012"), Py::BigInt(s) if &*s == "123456789012345678901234567890123456789012")
        );
        assert!(matches!(l(r#""\ud83d\ude00\u0041""#), Py::Str(s) if s == "😀A"));
        assert!(matches!(l(r#""\ud800x""#), Py::Str(s) if s == "\u{FFFD}x"));
        let d = l(r#"{"a": 1, "b": 2, "a": 3}"#);
        let d = d.as_dict().unwrap();
        assert_eq!(d.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(matches!(d.get("a"), Some(Py::Int(3))));
        for bad in [
            "01",
            "1.",
            ".5",
            "[1,]",
            "{\"a\":1,}",
            "'a'",
            "\"a\nb\"",
            "\u{feff}1",
            "tru",
            "-",
            "{1: 2}",
            "[1] x",
            r#""\x""#,
            "",
        ] {
            assert!(loads(bad).is_err(), "{bad:?} should not parse");
        }
        let big = "9".repeat(4301);
        assert!(loads(&big).is_err());
        assert!(loads(&"9".repeat(4300)).is_ok());
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert!(loads(&deep).is_err());
    }

    #[test]
    fn equality_follows_python() {
        assert!(py_eq(&l("1"), &l("1.0")));
        assert!(py_eq(&l("true"), &l("1")));
        assert!(py_eq(&l("false"), &l("0.0")));
        assert!(!py_eq(&l("1"), &l("\"1\"")));
        assert!(!py_eq(&l("NaN"), &l("NaN")));
        assert!(py_eq(&l("[1, 2.0]"), &l("[1.0, 2]")));
        assert!(py_eq(
            &l(r#"{"a": [1], "b": 2}"#),
            &l(r#"{"b": 2.0, "a": [true]}"#)
        ));
        assert!(!py_eq(&l(r#"{"a": 1}"#), &l(r#"{"a": 1, "b": 2}"#)));
        assert!(py_eq(
            &l("1e40"),
            &l("10000000000000000303786028427003666890752")
        ));
        assert!(!py_eq(
            &l("1e40"),
            &l("10000000000000000000000000000000000000000")
        ));
        assert!(!py_eq(&l("0.5"), &l("0")));
        assert!(!py_eq(&l("null"), &l("0")));
    }

    #[test]
    fn containment_follows_python() {
        assert!(l("\"abc\"").contains(&l("\"\"")).unwrap());
        assert!(l("[1, 2]").contains(&l("2.0")).unwrap());
        assert!(l(r#"{"a": 1}"#).contains(&l("\"a\"")).unwrap());
        assert!(!l(r#"{"a": 1}"#).contains(&l("1")).unwrap());
        assert_eq!(
            l(r#"{"a": 1}"#).contains(&l("[1]")).unwrap_err().kind,
            "TypeError"
        );
        assert_eq!(l("5").contains(&l("5")).unwrap_err().kind, "TypeError");
        assert_eq!(l("\"ab\"").contains(&l("5")).unwrap_err().kind, "TypeError");
    }

    #[test]
    fn int_and_float_constructors_follow_python() {
        assert!(matches!(py_int(" 1_000\n"), Ok(Py::Int(1000))));
        assert!(matches!(py_int("+7"), Ok(Py::Int(7))));
        assert!(matches!(py_int("007"), Ok(Py::Int(7))));
        assert!(matches!(py_int("١٢"), Ok(Py::Int(12))));
        for bad in ["1_", "_1", "1__0", "1.0", "", "-", "0x1", "1 2"] {
            assert!(py_int(bad).is_err(), "int({bad:?})");
        }
        assert_eq!(py_float("1_0.5").unwrap(), 10.5);
        assert_eq!(py_float(" .5 ").unwrap(), 0.5);
        assert_eq!(py_float("5.").unwrap(), 5.0);
        assert_eq!(py_float("1e1_0").unwrap(), 1e10);
        assert_eq!(py_float("-Infinity").unwrap(), f64::NEG_INFINITY);
        assert!(py_float("nAn").unwrap().is_nan());
        for bad in ["1e", ".", "e5", "1._5", "1f", "", "infinit", "1.5.2"] {
            assert!(py_float(bad).is_err(), "float({bad:?})");
        }
        assert_eq!(decimal_digit('٣'), Some(3));
        assert_eq!(decimal_digit('𝟗'), Some(9));
        assert_eq!(decimal_digit('x'), None);
    }

    #[test]
    fn strings_and_slices() {
        assert_eq!(py_strip("\u{1c} a \u{3000}"), "a");
        assert_eq!(py_slice_inner("\"ab\""), "ab");
        assert_eq!(py_slice_inner("a"), "");
        assert_eq!(py_slice_inner("ab"), "");
        assert_eq!(py_slice_inner("éxé"), "x");
        assert_eq!(py_strip_chars("'\"a'\"", &['\'', '"']), "a");
    }

    #[test]
    fn dumps_is_json_dumps() {
        assert_eq!(
            l(r#"{"a": [1, 2.5, true, null], "é": "x\"y", "f": 1e16}"#).dumps(),
            r#"{"a": [1, 2.5, true, null], "\u00e9": "x\"y", "f": 1e+16}"#
        );
    }

    #[test]
    fn repr_is_pythons() {
        assert_eq!(
            l(r#"{"a": [1, 2.5, true, null, "it's"], "b": "x"}"#).repr(),
            r#"{'a': [1, 2.5, True, None, "it's"], 'b': 'x'}"#
        );
    }
}
