//! xLAM describes tool parameters with Python-ish type strings (`List[int]`, `str, optional`,
//! `Tuple[float, float], default=(0, 0)`). This turns them into JSON Schema, so that verify, the
//! chat template and everything past normalize speak one schema language. Pure: no I/O.
//!
//! The rules (DESIGN.md, "Facts carried over from the seed"):
//! - `str int float bool` → `string integer number boolean`;
//! - bare `list List tuple Tuple` → array, `set Set` → array with `uniqueItems`, `dict Dict` →
//!   object; `List[T]`/`Set[T]` → `items`; `Dict[K, V]` → `additionalProperties: V`;
//!   `Tuple[A, B]` → `prefixItems` with `minItems`/`maxItems`, `Tuple[T, ...]` → `items`;
//! - `Union[A, B]` → `anyOf`; `Callable`/`Callable[...]` → `{}` (anything);
//! - also `Any` → `{}`, `None` → null, `Optional[T]` → `anyOf [T, null]` (and optional);
//! - a trailing `, optional` or `, default=...`, a `default` key, or the word "default" in the
//!   description makes a parameter optional (not `required`);
//! - commas inside brackets do not split. Anything else is a [`TypeError`], never a panic.

use serde_json::{Map, Value, json};

/// Why a type string has no schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    #[error("unknown type `{name}` in `{ty}`")]
    Unknown { ty: String, name: String },
    #[error("malformed type `{ty}`: {why}")]
    Malformed { ty: String, why: String },
}

impl TypeError {
    /// The quarantine reason kind.
    pub fn kind(&self) -> &'static str {
        match self {
            TypeError::Unknown { .. } => "unknown_type",
            TypeError::Malformed { .. } => "malformed_type",
        }
    }
}

/// A type string's schema, and whether a modifier in it (`, optional`, `, default=...`,
/// `Optional[...]`) made the parameter optional.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamType {
    pub schema: Value,
    pub optional: bool,
}

/// Converts one xLAM type string, modifiers included.
pub fn parse_type(ty: &str) -> Result<ParamType, TypeError> {
    let (expr, modifiers) = split_first_top_level_comma(ty);
    let mut optional = match modifiers {
        Some(rest) => parse_modifiers(ty, rest)?,
        None => false,
    };
    let expr = expr.trim();
    if expr.is_empty() {
        return Err(malformed(ty, "empty type".into()));
    }
    let mut parser = Parser {
        ty,
        s: expr.as_bytes(),
        pos: 0,
    };
    let schema = parser.expr(0)?;
    parser.ws();
    if parser.pos != parser.s.len() {
        let rest = &expr[parser.pos..];
        return Err(malformed(ty, format!("unexpected `{rest}` after the type")));
    }
    let head = expr.strip_prefix("typing.").unwrap_or(expr);
    optional |=
        head.starts_with("Optional") && head["Optional".len()..].trim_start().starts_with('[');
    Ok(ParamType { schema, optional })
}

/// Why a tool's xLAM `parameters` have no schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("parameters must be an object of {{name: {{type, description}}}}, found {found}")]
    NotAnObject { found: &'static str },
    #[error("parameter `{name}`: {why}")]
    BadParam { name: String, why: String },
    #[error("parameter `{name}`: {source}")]
    Type {
        name: String,
        #[source]
        source: TypeError,
    },
}

impl ParamsError {
    /// The quarantine reason kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ParamsError::NotAnObject { .. } | ParamsError::BadParam { .. } => "bad_parameters",
            ParamsError::Type { source, .. } => source.kind(),
        }
    }
}

/// Converts a tool's xLAM `parameters` (`{pname: {type, description, default?}}`) to an object
/// schema `{type: object, properties, required}`. Missing/null parameters mean none; parameters
/// that already are an object schema (`"type": "object"`) pass through unchanged.
pub fn parameters_schema(params: &Value) -> Result<Value, ParamsError> {
    let map = match params {
        Value::Null => return Ok(json!({"type": "object", "properties": {}, "required": []})),
        Value::Object(map) => map,
        other => {
            return Err(ParamsError::NotAnObject {
                found: json_kind(other),
            });
        }
    };
    if map.get("type").and_then(Value::as_str) == Some("object") {
        return Ok(params.clone());
    }
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, spec) in map {
        let (schema, optional) = param_schema(name, spec)?;
        if !optional {
            required.push(Value::String(name.clone()));
        }
        properties.insert(name.clone(), schema);
    }
    Ok(json!({"type": "object", "properties": properties, "required": required}))
}

/// One parameter's schema (type, plus its description and non-null default) and whether it is
/// optional.
pub fn param_schema(name: &str, spec: &Value) -> Result<(Value, bool), ParamsError> {
    let bad = |why: &str| ParamsError::BadParam {
        name: name.to_string(),
        why: why.to_string(),
    };
    let spec = spec
        .as_object()
        .ok_or_else(|| bad(&format!("expected an object, found {}", json_kind(spec))))?;
    let ty = match spec.get("type") {
        Some(Value::String(ty)) => ty,
        Some(other) => {
            return Err(bad(&format!(
                "`type` is {}, not a string",
                json_kind(other)
            )));
        }
        None => return Err(bad("has no `type`")),
    };
    let ParamType {
        mut schema,
        mut optional,
    } = parse_type(ty).map_err(|source| ParamsError::Type {
        name: name.to_string(),
        source,
    })?;
    let description = match spec.get("description") {
        Some(Value::String(d)) => d.as_str(),
        None | Some(Value::Null) => "",
        Some(other) => return Err(bad(&format!("`description` is {}", json_kind(other)))),
    };
    optional |= spec.contains_key("default") || mentions_default(description);
    if let Value::Object(obj) = &mut schema {
        if !description.is_empty() {
            obj.insert("description".into(), Value::String(description.to_string()));
        }
        if let Some(default) = spec.get("default").filter(|d| !d.is_null()) {
            obj.insert("default".into(), default.clone());
        }
    }
    Ok((schema, optional))
}

fn mentions_default(description: &str) -> bool {
    description
        .as_bytes()
        .windows(7)
        .any(|w| w.eq_ignore_ascii_case(b"default"))
}

/// The JSON type of `v`, for messages.
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn malformed(ty: &str, why: String) -> TypeError {
    TypeError::Malformed {
        ty: ty.to_string(),
        why,
    }
}

/// Splits `ty` at its first comma outside brackets: the type, then its modifiers.
fn split_first_top_level_comma(ty: &str) -> (&str, Option<&str>) {
    let mut depth = 0i32;
    for (i, b) in ty.bytes().enumerate() {
        match b {
            b'[' | b'(' | b'{' => depth += 1,
            b']' | b')' | b'}' => depth -= 1,
            b',' if depth == 0 => return (&ty[..i], Some(&ty[i + 1..])),
            _ => {}
        }
    }
    (ty, None)
}

/// `optional`, `default=...`, or `optional, default=...`; everything after `default` is its value.
fn parse_modifiers(ty: &str, mut rest: &str) -> Result<bool, TypeError> {
    loop {
        let r = rest.trim_start();
        if starts_with_ignore_case(r, "default") {
            return Ok(true);
        }
        if !starts_with_ignore_case(r, "optional") {
            let why = format!("unexpected `{}` after the type", r.trim_end());
            return Err(malformed(ty, why));
        }
        let after = r["optional".len()..].trim_start();
        if after.is_empty() {
            return Ok(true);
        }
        rest = after.strip_prefix(',').ok_or_else(|| {
            malformed(
                ty,
                format!("unexpected `{}` after `optional`", after.trim_end()),
            )
        })?;
    }
}

fn starts_with_ignore_case(s: &str, word: &str) -> bool {
    s.get(..word.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(word))
}

enum Arg {
    Type(Value),
    Ellipsis,
}

/// Recursive descent over `name` or `name[arg, ...]`.
struct Parser<'a> {
    ty: &'a str,
    s: &'a [u8],
    pos: usize,
}

const MAX_DEPTH: usize = 32;

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn err(&self, why: impl Into<String>) -> TypeError {
        malformed(self.ty, why.into())
    }

    fn ident(&mut self) -> Result<&'a str, TypeError> {
        self.ws();
        let start = self.pos;
        while self
            .s
            .get(self.pos)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.err(format!("expected a type name at byte {start}")));
        }
        // Only ASCII bytes were consumed, so this is valid UTF-8.
        Ok(std::str::from_utf8(&self.s[start..self.pos]).unwrap_or_default())
    }

    fn expr(&mut self, depth: usize) -> Result<Value, TypeError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        let name = self.ident()?;
        let name = name.strip_prefix("typing.").unwrap_or(name);
        if !self.eat(b'[') {
            return self.bare(name);
        }
        if matches!(name, "Callable" | "callable") {
            self.skip_to_close()?;
            return Ok(json!({}));
        }
        let args = self.args(depth)?;
        self.generic(name, args)
    }

    fn args(&mut self, depth: usize) -> Result<Vec<Arg>, TypeError> {
        let mut args = Vec::new();
        loop {
            self.ws();
            if self.s[self.pos..].starts_with(b"...") {
                self.pos += 3;
                args.push(Arg::Ellipsis);
            } else {
                args.push(Arg::Type(self.expr(depth + 1)?));
            }
            if self.eat(b',') {
                continue;
            }
            if self.eat(b']') {
                return Ok(args);
            }
            return Err(self.err(format!("expected `,` or `]` at byte {}", self.pos)));
        }
    }

    /// Skips the arguments of `Callable[...]` up to its closing bracket.
    fn skip_to_close(&mut self) -> Result<(), TypeError> {
        let mut depth = 1;
        while let Some(&b) = self.s.get(self.pos) {
            self.pos += 1;
            match b {
                b'[' => depth += 1,
                b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        Err(self.err("unclosed `[`"))
    }

    fn bare(&self, name: &str) -> Result<Value, TypeError> {
        Ok(match name {
            "str" => json!({"type": "string"}),
            "int" => json!({"type": "integer"}),
            "float" => json!({"type": "number"}),
            "bool" => json!({"type": "boolean"}),
            "list" | "List" | "tuple" | "Tuple" => json!({"type": "array"}),
            "set" | "Set" => json!({"type": "array", "uniqueItems": true}),
            "dict" | "Dict" => json!({"type": "object"}),
            "Any" | "Callable" | "callable" => json!({}),
            "None" | "NoneType" => json!({"type": "null"}),
            "Union" | "Optional" => return Err(self.err(format!("`{name}` needs type arguments"))),
            _ => return Err(self.unknown(name)),
        })
    }

    fn generic(&self, name: &str, args: Vec<Arg>) -> Result<Value, TypeError> {
        match name {
            "list" | "List" | "set" | "Set" => {
                let [item] = self
                    .types(name, args)?
                    .try_into()
                    .map_err(|_| self.err(format!("`{name}[...]` takes one type argument")))?;
                let mut schema = json!({"type": "array", "items": item});
                if name.eq_ignore_ascii_case("set") {
                    schema["uniqueItems"] = Value::Bool(true);
                }
                Ok(schema)
            }
            "dict" | "Dict" => {
                let [_key, value] = self
                    .types(name, args)?
                    .try_into()
                    .map_err(|_| self.err(format!("`{name}[...]` takes a key and a value type")))?;
                let mut schema = json!({"type": "object"});
                if value != json!({}) {
                    schema["additionalProperties"] = value;
                }
                Ok(schema)
            }
            "tuple" | "Tuple" => match args.as_slice() {
                [Arg::Type(item), Arg::Ellipsis] => Ok(json!({"type": "array", "items": item})),
                _ => {
                    let items = self.types(name, args)?;
                    let n = items.len();
                    Ok(json!({"type": "array", "prefixItems": items, "minItems": n, "maxItems": n}))
                }
            },
            "Union" => {
                let mut types = self.types(name, args)?;
                if types.len() == 1 {
                    Ok(types.remove(0))
                } else {
                    Ok(json!({"anyOf": types}))
                }
            }
            "Optional" => {
                let [inner] = self
                    .types(name, args)?
                    .try_into()
                    .map_err(|_| self.err("`Optional[...]` takes one type argument".to_string()))?;
                Ok(json!({"anyOf": [inner, {"type": "null"}]}))
            }
            "str" | "int" | "float" | "bool" | "Any" | "None" | "NoneType" => {
                Err(self.err(format!("`{name}` takes no type arguments")))
            }
            _ => Err(self.unknown(name)),
        }
    }

    fn types(&self, name: &str, args: Vec<Arg>) -> Result<Vec<Value>, TypeError> {
        args.into_iter()
            .map(|a| match a {
                Arg::Type(t) => Ok(t),
                Arg::Ellipsis => Err(self.err(format!("`...` is not allowed in `{name}[...]`"))),
            })
            .collect()
    }

    fn unknown(&self, name: &str) -> TypeError {
        TypeError::Unknown {
            ty: self.ty.to_string(),
            name: name.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(ty: &str) -> Value {
        let p = parse_type(ty).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert!(!p.optional, "{ty} should not be optional");
        p.schema
    }

    fn optional(ty: &str) -> Value {
        let p = parse_type(ty).unwrap_or_else(|e| panic!("{ty}: {e}"));
        assert!(p.optional, "{ty} should be optional");
        p.schema
    }

    #[test]
    fn scalars() {
        assert_eq!(schema("str"), json!({"type": "string"}));
        assert_eq!(schema("int"), json!({"type": "integer"}));
        assert_eq!(schema("float"), json!({"type": "number"}));
        assert_eq!(schema("bool"), json!({"type": "boolean"}));
        assert_eq!(schema("  int  "), json!({"type": "integer"}));
        assert_eq!(schema("typing.Any"), json!({}));
        assert_eq!(schema("None"), json!({"type": "null"}));
    }

    #[test]
    fn bare_containers() {
        for t in ["list", "List", "tuple", "Tuple"] {
            assert_eq!(schema(t), json!({"type": "array"}), "{t}");
        }
        for t in ["set", "Set"] {
            assert_eq!(
                schema(t),
                json!({"type": "array", "uniqueItems": true}),
                "{t}"
            );
        }
        for t in ["dict", "Dict"] {
            assert_eq!(schema(t), json!({"type": "object"}), "{t}");
        }
    }

    #[test]
    fn generic_lists_sets_and_dicts() {
        assert_eq!(
            schema("List[int]"),
            json!({"type": "array", "items": {"type": "integer"}})
        );
        assert_eq!(
            schema("list[str]"),
            json!({"type": "array", "items": {"type": "string"}})
        );
        assert_eq!(
            schema("Set[str]"),
            json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true})
        );
        assert_eq!(
            schema("Dict[str, List[int]]"),
            json!({"type": "object", "additionalProperties":
                {"type": "array", "items": {"type": "integer"}}})
        );
        assert_eq!(schema("Dict[str, Any]"), json!({"type": "object"}));
        assert_eq!(
            schema("List[List[float]]"),
            json!({"type": "array", "items": {"type": "array", "items": {"type": "number"}}})
        );
    }

    #[test]
    fn tuples() {
        assert_eq!(
            schema("Tuple[int, str]"),
            json!({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                   "minItems": 2, "maxItems": 2})
        );
        assert_eq!(schema("Tuple[float, float, float]")["maxItems"], json!(3));
        assert_eq!(
            schema("Tuple[int, ...]"),
            json!({"type": "array", "items": {"type": "integer"}})
        );
        assert_eq!(
            optional("Tuple[float, float], optional"),
            json!({"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}],
                   "minItems": 2, "maxItems": 2})
        );
    }

    #[test]
    fn unions_optionals_and_callables() {
        assert_eq!(
            schema("Union[int, float]"),
            json!({"anyOf": [{"type": "integer"}, {"type": "number"}]})
        );
        assert_eq!(
            schema("List[Union[int, float]]"),
            json!({"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "number"}]}})
        );
        assert_eq!(schema("Union[str]"), json!({"type": "string"}));
        assert_eq!(
            optional("Optional[int]"),
            json!({"anyOf": [{"type": "integer"}, {"type": "null"}]})
        );
        assert_eq!(schema("Callable"), json!({}));
        assert_eq!(schema("Callable[[int, str], bool]"), json!({}));
        assert_eq!(
            schema("List[Callable[..., Any]]"),
            json!({"type": "array", "items": {}})
        );
    }

    #[test]
    fn every_optional_marker_form() {
        for (ty, expected) in [
            ("int, optional", "integer"),
            ("int,optional", "integer"),
            ("int, Optional", "integer"),
            ("int , optional ", "integer"),
            ("int, default=5", "integer"),
            ("int, default 5", "integer"),
            ("int, Default: 5", "integer"),
            ("int, optional, default=5", "integer"),
            ("str, default='a, b'", "string"),
            ("str, default=\"[x\"", "string"),
        ] {
            assert_eq!(optional(ty), json!({"type": expected}), "{ty}");
        }
        assert_eq!(
            optional("List[int], default=[1, 2]"),
            json!({"type": "array", "items": {"type": "integer"}})
        );
        assert_eq!(
            optional("Dict[str, int], optional"),
            json!({"type": "object", "additionalProperties": {"type": "integer"}})
        );
    }

    #[test]
    fn unknown_and_malformed_types_are_errors() {
        let unknown = |ty: &str, name: &str| {
            assert_eq!(
                parse_type(ty),
                Err(TypeError::Unknown {
                    ty: ty.into(),
                    name: name.into()
                }),
                "{ty}"
            );
        };
        unknown("string", "string");
        unknown("List[Foo]", "Foo");
        unknown("Dict[str, datetime]", "datetime");
        unknown("Frobnicate[int]", "Frobnicate");
        for ty in [
            "",
            "   ",
            ", optional",
            "List[int",
            "List[]",
            "List[int, str]",
            "Dict[str]",
            "str[int]",
            "Union",
            "Union[int, ...]",
            "Tuple[..., int]",
            "Callable[[int]",
            "int int",
            "int, required",
            "int, optionally",
            "List[int]]",
            "int)",
            "é",
        ] {
            let err = parse_type(ty).expect_err(ty);
            assert_eq!(err.kind(), "malformed_type", "{ty}: {err}");
        }
        let deep = format!("{}int{}", "List[".repeat(100), "]".repeat(100));
        assert!(matches!(
            parse_type(&deep),
            Err(TypeError::Malformed { .. })
        ));
    }

    #[test]
    fn parameters_become_an_object_schema() {
        let params = json!({
            "city": {"type": "str", "description": "The city."},
            "days": {"type": "int, optional", "description": "How many days."},
            "units": {"type": "str", "description": "Units.", "default": "metric"},
            "lang": {"type": "str", "description": "Language, defaults to English."},
            "limit": {"type": "int", "description": "Max rows.", "default": null},
            "point": {"type": "Tuple[float, float]", "description": ""}
        });
        let schema = parameters_schema(&params).unwrap();
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["required"], json!(["city", "point"]));
        let props = &schema["properties"];
        assert_eq!(
            props["city"],
            json!({"type": "string", "description": "The city."})
        );
        assert_eq!(
            props["units"],
            json!({"type": "string", "description": "Units.", "default": "metric"})
        );
        assert_eq!(
            props["limit"],
            json!({"type": "integer", "description": "Max rows."})
        );
        assert!(props["point"].get("description").is_none());
        assert_eq!(props.as_object().unwrap().len(), 6);
    }

    #[test]
    fn missing_parameters_and_ready_schemas() {
        let empty = parameters_schema(&Value::Null).unwrap();
        assert_eq!(empty["properties"], json!({}));
        assert_eq!(parameters_schema(&json!({})).unwrap(), empty);
        let ready = json!({"type": "object", "properties": {"x": {"type": "integer"}}});
        assert_eq!(parameters_schema(&ready).unwrap(), ready);
    }

    #[test]
    fn bad_parameters_are_typed_errors() {
        let kind = |v: Value| parameters_schema(&v).unwrap_err().kind();
        assert_eq!(kind(json!([1])), "bad_parameters");
        assert_eq!(kind(json!({"x": "int"})), "bad_parameters");
        assert_eq!(
            kind(json!({"x": {"description": "no type"}})),
            "bad_parameters"
        );
        assert_eq!(kind(json!({"x": {"type": 3}})), "bad_parameters");
        assert_eq!(
            kind(json!({"x": {"type": "int", "description": 3}})),
            "bad_parameters"
        );
        assert_eq!(kind(json!({"x": {"type": "Widget"}})), "unknown_type");
        assert_eq!(kind(json!({"x": {"type": "List[int"}})), "malformed_type");
        let err = parameters_schema(&json!({"x": {"type": "Widget"}})).unwrap_err();
        assert!(
            err.to_string().contains("`x`") && err.to_string().contains("Widget"),
            "{err}"
        );
    }

    #[test]
    fn generated_schemas_are_valid_json_schema() {
        for ty in [
            "Tuple[int, str]",
            "Dict[str, List[int]]",
            "Set[str]",
            "Optional[List[Union[int, float]]]",
            "Callable[..., Any]",
        ] {
            let schema = schema_or_optional(ty);
            assert!(jsonschema::meta::is_valid(&schema), "{ty}: {schema}");
        }
        let tuple = jsonschema::validator_for(&schema("Tuple[int, str]")).unwrap();
        assert!(tuple.is_valid(&json!([1, "a"])));
        assert!(!tuple.is_valid(&json!([1])));
        assert!(!tuple.is_valid(&json!([1, "a", 2])));
        assert!(!tuple.is_valid(&json!(["a", 1])));
        let set = jsonschema::validator_for(&schema("Set[int]")).unwrap();
        assert!(set.is_valid(&json!([1, 2])));
        assert!(!set.is_valid(&json!([1, 1])));
    }

    fn schema_or_optional(ty: &str) -> Value {
        parse_type(ty).unwrap().schema
    }
}
