//! BFCL's AST checker (`bfcl_eval/eval_checker/ast_eval/ast_checker.py`), rule for rule.
//!
//! A verdict here is a leaderboard verdict only if it is the official one, quirks included, so
//! this is a line-by-line port rather than a clean design: the same functions, the same order of
//! checks (which decides the reported error type), the same Python semantics (through
//! [`Py`]). Where the official code would raise instead of answering — a malformed function
//! doc, an `items` type it does not know — the port returns the exception as
//! [`Failure::exception`], so that such a case is visible instead of silently scored.
//!
//! The main rules, for reading the verdicts:
//! - simple: exactly one call; multiple: exactly one call, of the expected function; parallel and
//!   parallel_multiple: as many calls as expected, matched greedily in the order of the expected
//!   calls, each taking the first unmatched model call that passes.
//! - a call passes when its name is the function's, every required parameter is present, every
//!   given parameter is declared *and* in the possible answer, each value has the declared type
//!   (int passes for float in Python; bool never passes for int), each value is among the accepted
//!   ones (strings compared after dropping ` ,./-_*^`, lowercasing and `'`→`"`), and every
//!   parameter left out has `""` among its accepted values.
//! - Java and JavaScript arguments must be strings, converted by [`super::convert`] first.

use std::borrow::Cow;

use super::convert::{java_convert, js_convert};
use super::parse::DecodedCall;
use super::value::{Dict, Py, PyErr, PyType, int_to_float, py_eq};

/// The language of a category: how argument values are typed and converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Python,
    Java,
    JavaScript,
}

/// Which of BFCL's checkers applies, from the category name as `ast_checker` tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallShape {
    Simple,
    Multiple,
    /// parallel and parallel_multiple: order-free matching.
    Parallel,
}

impl CallShape {
    /// `"parallel" in category`, then `"multiple" in category`, else simple.
    pub fn of_category(category: &str) -> Self {
        if category.contains("parallel") {
            CallShape::Parallel
        } else if category.contains("multiple") {
            CallShape::Multiple
        } else {
            CallShape::Simple
        }
    }
}

/// Why a model output failed: BFCL's `error_type` and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// BFCL's error type (`"value_error:string"`, `"simple_function_checker:missing_required"`),
    /// or `"exception:<PythonException>"` where the official checker raises.
    pub kind: Cow<'static, str>,
    pub message: String,
}

impl Failure {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Failure {
            kind: Cow::Borrowed(kind),
            message: message.into(),
        }
    }

    /// The official checker raises `err` here: no verdict of its own.
    pub fn exception(err: PyErr) -> Self {
        Failure {
            kind: Cow::Owned(format!("exception:{}", err.kind)),
            message: err.message,
        }
    }
}

impl Failure {
    /// Whether the official checker would have raised rather than judged. Callers that try
    /// several candidates stop at an exception, as Python's would propagate.
    pub fn is_exception(&self) -> bool {
        self.kind.starts_with("exception:")
    }
}

impl From<PyErr> for Failure {
    fn from(err: PyErr) -> Self {
        Failure::exception(err)
    }
}

type Check = Result<(), Failure>;

/// `ast_checker(func_description, model_output, possible_answer, language, test_category, ...)`.
///
/// `functions` is the entry's `function` list, `answer` its `ground_truth` list.
pub fn ast_check(
    functions: &Py,
    calls: &[DecodedCall],
    answer: &Py,
    language: Language,
    shape: CallShape,
) -> Check {
    match shape {
        CallShape::Parallel => parallel_no_order(functions, calls, answer, language),
        CallShape::Multiple => multiple(functions, calls, answer, language),
        CallShape::Simple => {
            if calls.len() != 1 {
                return Err(Failure::new(
                    "simple_function_checker:wrong_count",
                    "Wrong number of functions.",
                ));
            }
            let description = functions.index(0)?;
            let expected = answer.index(0)?;
            simple(Some(&description), &calls[0], &expected, language)
        }
    }
}

/// `find_description`: the function doc named `name`, if any.
fn find_description<'a>(functions: &'a Py, name: &Py) -> Result<Option<Cow<'a, Py>>, PyErr> {
    if let Py::List(list) = functions {
        for f in list {
            if py_eq(f.get_item("name")?, name) {
                return Ok(Some(Cow::Borrowed(f)));
            }
        }
        Ok(None)
    } else {
        Ok(Some(Cow::Borrowed(functions)))
    }
}

/// `list(d.keys())[0]` of a one-call possible answer `{func_name: {...}}`.
fn first_key(answer: &Py) -> Result<Py, PyErr> {
    match answer {
        Py::Dict(d) => d
            .keys()
            .next()
            .map(|k| Py::Str(k.to_string()))
            .ok_or_else(|| PyErr::new("IndexError", "list index out of range")),
        other => Err(PyErr::new(
            "AttributeError",
            format!(
                "'{}' object has no attribute 'keys'",
                other.py_type().name()
            ),
        )),
    }
}

fn multiple(functions: &Py, calls: &[DecodedCall], answers: &Py, language: Language) -> Check {
    if calls.len() != answers.py_len()? {
        return Err(Failure::new(
            "multiple_function_checker:wrong_count",
            "Wrong number of functions.",
        ));
    }
    let expected = answers.index(0)?;
    let description = find_description(functions, &first_key(&expected)?)?;
    // An empty `calls` with one expected answer failed the count above.
    let call = calls
        .first()
        .ok_or_else(|| PyErr::new("IndexError", "list index out of range"))?;
    simple(description.as_deref(), call, &expected, language)
}

fn parallel_no_order(
    functions: &Py,
    calls: &[DecodedCall],
    answers: &Py,
    language: Language,
) -> Check {
    let n = answers.py_len()?;
    if calls.len() != n {
        return Err(Failure::new(
            "parallel_function_checker_no_order:wrong_count",
            "Wrong number of functions.",
        ));
    }
    let mut matched = vec![false; calls.len()];
    for i in 0..n {
        let expected = answers.index(i)?;
        let description = find_description(functions, &first_key(&expected)?)?;
        let mut last: Check = Ok(());
        for (index, call) in calls.iter().enumerate() {
            if matched[index] {
                continue;
            }
            last = simple(description.as_deref(), call, &expected, language);
            if last.is_ok() {
                matched[index] = true;
                break;
            }
            if let Err(f) = &last
                && f.is_exception()
            {
                return last;
            }
        }
        if let Err(f) = last {
            let open: Vec<usize> = (0..calls.len()).filter(|&j| !matched[j]).collect();
            return Err(Failure {
                kind: Cow::Borrowed("parallel_function_checker_no_order:cannot_find_match"),
                message: format!(
                    "Could not find a matching function among index {open:?} of model output for index {i} of possible answers (last: {})",
                    f.message
                ),
            });
        }
    }
    Ok(())
}

/// The Python type a parameter type maps to, per language (`PYTHON_TYPE_MAPPING`,
/// `JAVA_TYPE_CONVERSION`, `JS_TYPE_CONVERSION`); `KeyError` for any other.
fn mapped_type(language: Language, type_name: &Py) -> Result<PyType, PyErr> {
    let Some(t) = type_name.as_str() else {
        return Err(if matches!(type_name, Py::List(_) | Py::Dict(_)) {
            PyErr::new(
                "TypeError",
                format!("unhashable type: '{}'", type_name.py_type().name()),
            )
        } else {
            PyErr::new("KeyError", type_name.repr())
        });
    };
    let mapped = match language {
        Language::Python => match t {
            "string" | "any" => Some(PyType::Str),
            "integer" => Some(PyType::Int),
            "float" => Some(PyType::Float),
            "boolean" => Some(PyType::Bool),
            "array" | "tuple" => Some(PyType::List),
            "dict" => Some(PyType::Dict),
            _ => None,
        },
        Language::Java => match t {
            "byte" | "short" | "integer" | "long" => Some(PyType::Int),
            "float" | "double" => Some(PyType::Float),
            "boolean" => Some(PyType::Bool),
            "char" | "String" | "any" => Some(PyType::Str),
            "Array" | "ArrayList" | "Queue" | "Stack" => Some(PyType::List),
            "Set" => Some(PyType::Set),
            "HashMap" | "Hashtable" => Some(PyType::Dict),
            _ => None,
        },
        Language::JavaScript => match t {
            "String" | "any" => Some(PyType::Str),
            "integer" | "Bigint" => Some(PyType::Int),
            "float" => Some(PyType::Float),
            "Boolean" => Some(PyType::Bool),
            "dict" => Some(PyType::Dict),
            "array" => Some(PyType::List),
            _ => None,
        },
    };
    mapped.ok_or_else(|| PyErr::new("KeyError", format!("'{t}'")))
}

/// `simple_function_checker(func_description, model_output, possible_answer, language, ...)`.
/// `description` is None where `find_description` found no function of the expected name.
fn simple(
    description: Option<&Py>,
    call: &DecodedCall,
    expected: &Py,
    language: Language,
) -> Check {
    // possible_answer = list(possible_answer.values())[0]
    let possible = match expected {
        Py::Dict(d) => d
            .iter()
            .next()
            .map(|(_, v)| v)
            .ok_or_else(|| PyErr::new("IndexError", "list index out of range"))?,
        other => {
            return Err(PyErr::new(
                "AttributeError",
                format!(
                    "'{}' object has no attribute 'values'",
                    other.py_type().name()
                ),
            )
            .into());
        }
    };
    let description = description
        .ok_or_else(|| PyErr::new("TypeError", "'NoneType' object is not subscriptable"))?;
    let func_name = description.get_item("name")?;
    let parameters = description.get_item("parameters")?;
    let param_details = parameters.get_item("properties")?;
    let required = parameters.get_item("required")?;

    if !py_eq(&call.name, func_name) {
        return Err(Failure::new(
            "simple_function_checker:wrong_func_name",
            format!(
                "Function name {} not found in model output.",
                func_name.repr()
            ),
        ));
    }
    let params = &call.arguments;

    for param in required.iter()? {
        let present = match param.as_ref() {
            Py::Str(p) => params.contains_key(p),
            Py::List(_) | Py::Dict(_) => {
                return Err(PyErr::new(
                    "TypeError",
                    format!("unhashable type: '{}'", param.py_type().name()),
                )
                .into());
            }
            _ => false,
        };
        if !present {
            return Err(Failure::new(
                "simple_function_checker:missing_required",
                format!("Missing required parameter: {}.", param.repr()),
            ));
        }
    }

    for (param, value) in params.iter() {
        if !param_details.contains_str(param)? || !possible.contains_str(param)? {
            return Err(Failure::new(
                "simple_function_checker:unexpected_param",
                format!("Unexpected parameter: '{param}'."),
            ));
        }
        let details = param_details.get_item(param)?;
        let type_name = details.get_item("type")?;
        let options = possible.get_item(param)?;
        let mut value = Cow::Borrowed(value);
        let mut nested: Option<PyType> = None;
        let expected_type = mapped_type(language, type_name)?;
        let type_str = type_name.as_str().unwrap_or_default();
        match language {
            Language::Java | Language::JavaScript => {
                let Py::Str(text) = value.as_ref() else {
                    let (kind, lang) = if language == Language::Java {
                        ("type_error:java", "java")
                    } else {
                        ("type_error:js", "js")
                    };
                    return Err(Failure::new(
                        kind,
                        format!(
                            "Incorrect type for parameter '{param}' ({lang}). Expected type String, got {}. Parameter value: {}.",
                            value.py_type().name(),
                            value.repr()
                        ),
                    ));
                };
                let converted = if matches!(type_str, "Array" | "ArrayList" | "array") {
                    let nested_name = details.get_item("items")?.get_item("type")?;
                    nested = Some(mapped_type(language, nested_name)?);
                    let nested_str = nested_name.as_str();
                    if language == Language::Java {
                        java_convert(text, type_str, nested_str)?
                    } else {
                        js_convert(text, type_str, nested_str)?
                    }
                } else if language == Language::Java {
                    java_convert(text, type_str, None)?
                } else {
                    js_convert(text, type_str, None)?
                };
                value = Cow::Owned(converted);
            }
            Language::Python => {
                if matches!(type_str, "array" | "tuple") {
                    let nested_name = details.get_item("items")?.get_item("type")?;
                    nested = Some(mapped_type(language, nested_name)?);
                }
            }
        }

        // Python lets an int stand for a float.
        if language == Language::Python
            && type_str == "float"
            && value.py_type() == PyType::Int
            && !matches!(value.as_ref(), Py::Bool(_))
        {
            value = Cow::Owned(Py::Float(int_to_float(&value)?));
        }

        let typed = type_checker(param, &value, options, type_str, expected_type, nested)?;
        typed.result?;

        if !typed.is_variable {
            if expected_type == PyType::Dict {
                dict_checker(param, &value, options)?;
                continue;
            } else if expected_type == PyType::List && nested == Some(PyType::Dict) {
                list_dict_checker(param, &value, options)?;
                continue;
            } else if expected_type == PyType::Str {
                string_checker(param, &value, options)?;
                continue;
            } else if expected_type == PyType::List {
                list_checker(param, &value, options)?;
                continue;
            }
        }

        if !options.contains(&value)? {
            return Err(Failure::new(
                "value_error:others",
                format!(
                    "Invalid value for parameter '{param}': {}. Expected one of {}.",
                    value.repr(),
                    options.repr()
                ),
            ));
        }
    }

    for param in possible.iter()? {
        let Py::Str(name) = param.as_ref() else {
            continue;
        };
        if !params.contains_key(name)
            && !possible.get_item(name)?.contains(&Py::Str(String::new()))?
        {
            return Err(Failure::new(
                "simple_function_checker:missing_optional",
                format!("Optional parameter '{name}' not provided and not marked as optional."),
            ));
        }
    }
    Ok(())
}

/// `get_possible_answer_type`: the type of the first accepted value that is not `""`.
fn possible_answer_type(options: &Py) -> Result<Option<PyType>, PyErr> {
    Ok(options
        .iter()?
        .into_iter()
        .find(|o| !o.is_empty_str())
        .map(|o| o.py_type()))
}

struct TypeCheck {
    result: Check,
    is_variable: bool,
}

/// `type_checker(param, value, possible_answer, expected_type_description,
/// expected_type_converted, nested_type_converted)`. One level of nesting only, as theirs.
fn type_checker(
    param: &str,
    value: &Py,
    options: &Py,
    description: &str,
    expected: PyType,
    nested: Option<PyType>,
) -> Result<TypeCheck, PyErr> {
    let answer_type = possible_answer_type(options)?;
    // A value of the answers' type where the doc says otherwise is "a variable": BFCL accepts it.
    let is_variable = answer_type.is_some_and(|t| t != expected);
    let mut nested_failure = None;

    if value.py_type() == expected {
        let Some(nested) = nested else {
            return Ok(TypeCheck {
                result: Ok(()),
                is_variable,
            });
        };
        for option in options.iter()? {
            let mut flag = true;
            if let Py::List(_) = option.as_ref() {
                for item in value.iter()? {
                    let inner = type_checker(param, &item, &option, nested.name(), nested, None)?;
                    if inner.result.is_err() {
                        flag = false;
                        break;
                    }
                }
            }
            if flag {
                return Ok(TypeCheck {
                    result: Ok(()),
                    is_variable,
                });
            }
        }
        nested_failure = Some(format!(
            "Nested type checking failed for parameter '{param}'. Expected outer type {description} with inner type {}. Parameter value: {}.",
            nested.name(),
            value.repr()
        ));
        // Falls through, as the official code does: a nested failure stays a failure below, but
        // with the "variable" escape hatch examined first.
    }

    if let Some(t) = answer_type
        && value.py_type() == t
    {
        return Ok(TypeCheck {
            result: match nested_failure {
                // `result` still carries the nested failure: returned as is, invalid.
                Some(message) => Err(Failure::new("type_error:nested", message)),
                None => Ok(()),
            },
            is_variable: true,
        });
    }
    Ok(TypeCheck {
        result: Err(Failure::new(
            "type_error:simple",
            format!(
                "Incorrect type for parameter '{param}'. Expected type {description}, got {}. Parameter value: {}.",
                value.py_type().name(),
                value.repr()
            ),
        )),
        is_variable: false,
    })
}

/// `standardize_string`: drop ` ,./-_*^`, lowercase, `'` → `"`.
pub fn standardize(s: &str) -> String {
    let kept: String = s
        .chars()
        .filter(|c| !matches!(c, ' ' | ',' | '.' | '/' | '-' | '_' | '*' | '^'))
        .collect();
    kept.to_lowercase().replace('\'', "\"")
}

/// A value with its strings standardized (top level only, as BFCL does).
fn standardize_value(v: &Py) -> Cow<'_, Py> {
    match v {
        Py::Str(s) => Cow::Owned(Py::Str(standardize(s))),
        other => Cow::Borrowed(other),
    }
}

/// `[x[i] for i in range(len(x))]`, with the `len` and indexing errors Python would raise.
fn indexed(x: &Py) -> Result<Vec<Cow<'_, Py>>, PyErr> {
    let n = x.py_len()?;
    (0..n).map(|i| x.index(i)).collect()
}

fn string_checker(param: &str, value: &Py, options: &Py) -> Check {
    let standardized: Vec<String> = indexed(options)?
        .iter()
        .filter_map(|o| o.as_str().map(standardize))
        .collect();
    let model = standardize(value.as_str().unwrap_or_default());
    if !standardized.contains(&model) {
        return Err(Failure::new(
            "value_error:string",
            format!(
                "Invalid value for parameter '{param}': {}. Expected one of {}. Case insensitive.",
                value.repr(),
                options.repr()
            ),
        ));
    }
    Ok(())
}

fn list_checker(param: &str, value: &Py, options: &Py) -> Check {
    let model: Vec<Py> = value
        .iter()?
        .iter()
        .map(|x| standardize_value(x).into_owned())
        .collect();
    let model = Py::List(model);
    let mut found = false;
    for option in indexed(options)? {
        let standardized: Vec<Py> = indexed(&option)?
            .iter()
            .map(|x| standardize_value(x).into_owned())
            .collect();
        if py_eq(&model, &Py::List(standardized)) {
            found = true;
        }
    }
    if !found {
        return Err(Failure::new(
            "value_error:list/tuple",
            format!(
                "Invalid value for parameter '{param}': {}. Expected one of {}.",
                value.repr(),
                options.repr()
            ),
        ));
    }
    Ok(())
}

fn dict_checker(param: &str, value: &Py, options: &Py) -> Check {
    let mut result: Check = Err(Failure::new("dict_checker:unclear", ""));
    for option in indexed(options)? {
        if option.is_empty_str() {
            continue;
        }
        result = Err(Failure::new("dict_checker:unclear", ""));
        let mut flag = true;
        let model: &Dict = match value {
            Py::Dict(d) => d,
            other => {
                return Err(PyErr::new(
                    "AttributeError",
                    format!(
                        "'{}' object has no attribute 'items'",
                        other.py_type().name()
                    ),
                )
                .into());
            }
        };
        for (key, v) in model.iter() {
            if !option.contains_str(key)? {
                result = Err(Failure::new(
                    "value_error:dict_key",
                    format!("Unexpected dict key parameter: '{key}'."),
                ));
                flag = false;
                break;
            }
            let standardized_value = standardize_value(v);
            let accepted = option.get_item(key)?;
            let standardized: Vec<Py> = indexed(accepted)?
                .iter()
                .map(|x| standardize_value(x).into_owned())
                .collect();
            if !standardized.iter().any(|s| py_eq(s, &standardized_value)) {
                result = Err(Failure::new(
                    "value_error:dict_value",
                    format!(
                        "Invalid value for parameter '{key}': {}. Expected one of {}.",
                        v.repr(),
                        Py::List(standardized).repr()
                    ),
                ));
                flag = false;
                break;
            }
        }
        let Py::Dict(accepted) = option.as_ref() else {
            return Err(PyErr::new(
                "AttributeError",
                format!(
                    "'{}' object has no attribute 'items'",
                    option.py_type().name()
                ),
            )
            .into());
        };
        for (key, accepted_values) in accepted.iter() {
            if !model.contains_key(key) && !accepted_values.contains(&Py::Str(String::new()))? {
                result = Err(Failure::new(
                    "value_error:dict_key",
                    format!("Missing dict key parameter: '{key}'."),
                ));
                flag = false;
                break;
            }
        }
        if flag {
            return Ok(());
        }
    }
    if let Err(f) = &result
        && f.message.is_empty()
    {
        return Err(Failure::new(
            "dict_checker:unclear",
            format!("No accepted dict matched parameter '{param}'."),
        ));
    }
    result
}

fn list_dict_checker(param: &str, value: &Py, options: &Py) -> Check {
    let mut result: Check = Err(Failure::new(
        "list_dict_checker:unclear",
        format!("No accepted list of dicts matched parameter '{param}'."),
    ));
    let model = value.iter()?;
    for option in indexed(options)? {
        let mut flag = true;
        if model.len() != option.py_len()? {
            result = Err(Failure::new(
                "value_error:list_dict_count",
                "Wrong number of dictionaries in the list.",
            ));
            continue;
        }
        for (i, item) in model.iter().enumerate() {
            let wrapped = Py::List(vec![option.index(i)?.into_owned()]);
            result = dict_checker(param, item, &wrapped);
            if let Err(f) = &result {
                if f.is_exception() {
                    return result;
                }
                flag = false;
                break;
            }
        }
        if flag {
            return Ok(());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::value::loads;

    fn py(s: &str) -> Py {
        loads(s).unwrap()
    }

    fn call(name: &str, args: &str) -> DecodedCall {
        DecodedCall {
            name: Py::Str(name.into()),
            arguments: py(args).as_dict().unwrap().clone(),
        }
    }

    fn doc(name: &str, props: &str, required: &str) -> String {
        format!(
            r#"{{"name": "{name}", "description": "", "parameters": {{"type": "dict", "properties": {props}, "required": {required}}}}}"#
        )
    }

    fn check(
        functions: &str,
        calls: &[DecodedCall],
        answer: &str,
        lang: Language,
        shape: CallShape,
    ) -> Result<(), String> {
        ast_check(&py(functions), calls, &py(answer), lang, shape).map_err(|f| f.kind.into_owned())
    }

    fn simple_py(props: &str, required: &str, args: &str, answer: &str) -> Result<(), String> {
        let f = format!("[{}]", doc("f", props, required));
        check(
            &f,
            &[call("f", args)],
            &format!(r#"[{{"f": {answer}}}]"#),
            Language::Python,
            CallShape::Simple,
        )
    }

    #[test]
    fn python_types_and_values() {
        let props =
            r#"{"x": {"type": "float"}, "n": {"type": "integer"}, "b": {"type": "boolean"}}"#;
        let answer = r#"{"x": [2.0], "n": [3, ""], "b": ["", false]}"#;
        assert_eq!(simple_py(props, r#"["x"]"#, r#"{"x": 2}"#, answer), Ok(()));
        assert_eq!(
            simple_py(props, r#"["x"]"#, r#"{"x": 2.0, "n": 3}"#, answer),
            Ok(())
        );
        assert_eq!(
            simple_py(props, r#"["x"]"#, r#"{"x": 2.0, "n": 3.0}"#, answer),
            Err("type_error:simple".into())
        );
        assert_eq!(
            simple_py(props, r#"["x"]"#, r#"{"x": 2.0, "n": true}"#, answer),
            Err("type_error:simple".into())
        );
        assert_eq!(
            simple_py(props, r#"["x"]"#, r#"{"x": 2.5}"#, answer),
            Err("value_error:others".into())
        );
        assert_eq!(
            simple_py(props, r#"["x"]"#, r#"{"n": 3}"#, answer),
            Err("simple_function_checker:missing_required".into())
        );
        assert_eq!(
            simple_py(props, r#"["x"]"#, r#"{"x": 2, "z": 1}"#, answer),
            Err("simple_function_checker:unexpected_param".into())
        );
        let strict = r#"{"x": [2.0], "n": [3]}"#;
        assert_eq!(
            simple_py(props, r#"["x"]"#, r#"{"x": 2}"#, strict),
            Err("simple_function_checker:missing_optional".into())
        );
    }

    #[test]
    fn strings_lists_and_dicts() {
        let props = r#"{"s": {"type": "string"}, "l": {"type": "array", "items": {"type": "string"}}, "d": {"type": "dict"}}"#;
        let answer = r#"{"s": ["New York, NY"], "l": [["a b", "c"], ""], "d": [{"k": ["v"], "o": ["", 1]}, ""]}"#;
        let ok = |args: &str| simple_py(props, r#"["s"]"#, args, answer);
        assert_eq!(ok(r#"{"s": "new york ny"}"#), Ok(()));
        assert_eq!(ok(r#"{"s": "NEW_YORK.NY"}"#), Ok(()));
        assert_eq!(ok(r#"{"s": "Boston"}"#), Err("value_error:string".into()));
        assert_eq!(
            ok(r#"{"s": "ny", "l": ["A-B", "C"]}"#),
            Err("value_error:string".into())
        );
        assert_eq!(ok(r#"{"s": "newyork,ny", "l": ["A-B", "C"]}"#), Ok(()));
        // "" among the accepted lists matches an empty list, as len("") == 0 there.
        assert_eq!(ok(r#"{"s": "newyorkny", "l": []}"#), Ok(()));
        assert_eq!(
            ok(r#"{"s": "newyorkny", "l": ["c", "a b"]}"#),
            Err("value_error:list/tuple".into())
        );
        // The nested type check lets anything through once it reaches the "" option, so the
        // wrong element type only shows up as a wrong value.
        assert_eq!(
            ok(r#"{"s": "newyorkny", "l": [1, 2]}"#),
            Err("value_error:list/tuple".into())
        );
        let no_empty = r#"{"s": ["x"], "l": [["a"]]}"#;
        assert_eq!(
            simple_py(props, r#"["s"]"#, r#"{"s": "x", "l": [1]}"#, no_empty),
            Err("type_error:nested".into())
        );
        assert_eq!(ok(r#"{"s": "newyorkny", "d": {"k": "V"}}"#), Ok(()));
        assert_eq!(ok(r#"{"s": "newyorkny", "d": {"k": "v", "o": 1}}"#), Ok(()));
        assert_eq!(
            ok(r#"{"s": "newyorkny", "d": {"k": "w"}}"#),
            Err("value_error:dict_value".into())
        );
        assert_eq!(
            ok(r#"{"s": "newyorkny", "d": {"o": 1}}"#),
            Err("value_error:dict_key".into())
        );
        assert_eq!(
            ok(r#"{"s": "newyorkny", "d": {"k": "v", "z": 1}}"#),
            Err("value_error:dict_key".into())
        );
    }

    #[test]
    fn list_of_dicts() {
        let props = r#"{"l": {"type": "array", "items": {"type": "dict"}}}"#;
        let answer = r#"{"l": [[{"a": [1]}, {"a": [2], "b": ["", "x"]}]]}"#;
        let ok = |args: &str| simple_py(props, r#"["l"]"#, args, answer);
        assert_eq!(ok(r#"{"l": [{"a": 1}, {"a": 2}]}"#), Ok(()));
        assert_eq!(ok(r#"{"l": [{"a": 1}, {"a": 2, "b": "X"}]}"#), Ok(()));
        assert_eq!(
            ok(r#"{"l": [{"a": 2}, {"a": 1}]}"#),
            Err("value_error:dict_value".into())
        );
        assert_eq!(
            ok(r#"{"l": [{"a": 1}]}"#),
            Err("value_error:list_dict_count".into())
        );
    }

    #[test]
    fn parallel_matching_is_greedy_and_order_free() {
        let f = format!(
            "[{}]",
            doc("f", r#"{"x": {"type": "integer"}}"#, r#"["x"]"#)
        );
        let answer = r#"[{"f": {"x": [1]}}, {"f": {"x": [2]}}]"#;
        let run =
            |calls: &[DecodedCall]| check(&f, calls, answer, Language::Python, CallShape::Parallel);
        assert_eq!(
            run(&[call("f", r#"{"x": 2}"#), call("f", r#"{"x": 1}"#)]),
            Ok(())
        );
        assert_eq!(
            run(&[call("f", r#"{"x": 1}"#), call("f", r#"{"x": 1}"#)]),
            Err("parallel_function_checker_no_order:cannot_find_match".into())
        );
        assert_eq!(
            run(&[call("f", r#"{"x": 1}"#)]),
            Err("parallel_function_checker_no_order:wrong_count".into())
        );
        // Greedy: answer 0 takes the first call that fits it, even if a later answer needed it.
        let answer = r#"[{"f": {"x": [1, 2]}}, {"f": {"x": [1]}}]"#;
        assert_eq!(
            check(
                &f,
                &[call("f", r#"{"x": 1}"#), call("f", r#"{"x": 2}"#)],
                answer,
                Language::Python,
                CallShape::Parallel
            ),
            Err("parallel_function_checker_no_order:cannot_find_match".into())
        );
    }

    #[test]
    fn multiple_and_simple_counts() {
        let f = format!(
            "[{}, {}]",
            doc("f", r#"{"x": {"type": "integer"}}"#, r#"["x"]"#),
            doc("g", r#"{"x": {"type": "integer"}}"#, r#"["x"]"#)
        );
        let answer = r#"[{"g": {"x": [1]}}]"#;
        assert_eq!(
            check(
                &f,
                &[call("g", r#"{"x": 1}"#)],
                answer,
                Language::Python,
                CallShape::Multiple
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &f,
                &[call("f", r#"{"x": 1}"#)],
                answer,
                Language::Python,
                CallShape::Multiple
            ),
            Err("simple_function_checker:wrong_func_name".into())
        );
        assert_eq!(
            check(&f, &[], answer, Language::Python, CallShape::Multiple),
            Err("multiple_function_checker:wrong_count".into())
        );
        assert_eq!(
            check(
                &f,
                &[],
                r#"[{"f": {"x": [1]}}]"#,
                Language::Python,
                CallShape::Simple
            ),
            Err("simple_function_checker:wrong_count".into())
        );
    }

    #[test]
    fn java_and_javascript_values_are_converted_strings() {
        let f = format!(
            "[{}]",
            doc(
                "f",
                r#"{"n": {"type": "long"}, "l": {"type": "ArrayList", "items": {"type": "String"}}}"#,
                r#"["n"]"#
            )
        );
        let answer = r#"[{"f": {"n": [5], "l": [["a", "b"], ""]}}]"#;
        let run = |args: &str| {
            check(
                &f,
                &[call("f", args)],
                answer,
                Language::Java,
                CallShape::Simple,
            )
        };
        assert_eq!(run(r#"{"n": "5L"}"#), Ok(()));
        assert_eq!(run(r#"{"n": 5}"#), Err("type_error:java".into()));
        assert_eq!(run(r#"{"n": "5"}"#), Err("type_error:simple".into()));
        assert_eq!(
            run(r#"{"n": "5L", "l": "new ArrayList<>(Arrays.asList(\"a\", \"b\"))"}"#),
            Ok(())
        );
        let f = format!(
            "[{}]",
            doc("f", r#"{"b": {"type": "Boolean"}}"#, r#"["b"]"#)
        );
        let answer = r#"[{"f": {"b": [true]}}]"#;
        assert_eq!(
            check(
                &f,
                &[call("f", r#"{"b": "true"}"#)],
                answer,
                Language::JavaScript,
                CallShape::Simple
            ),
            Ok(())
        );
        assert_eq!(
            check(
                &f,
                &[call("f", r#"{"b": true}"#)],
                answer,
                Language::JavaScript,
                CallShape::Simple
            ),
            Err("type_error:js".into())
        );
    }

    #[test]
    fn malformed_docs_raise_as_the_official_checker_does() {
        let f = r#"[{"name": "f", "parameters": {"type": "dict", "properties": {"l": {"type": "array"}}, "required": []}}]"#;
        assert_eq!(
            check(
                f,
                &[call("f", r#"{"l": [1]}"#)],
                r#"[{"f": {"l": [[1]]}}]"#,
                Language::Python,
                CallShape::Simple
            ),
            Err("exception:KeyError".into())
        );
        let f = r#"[{"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "number"}}, "required": []}}]"#;
        assert_eq!(
            check(
                f,
                &[call("f", r#"{"x": 1}"#)],
                r#"[{"f": {"x": [1]}}]"#,
                Language::Python,
                CallShape::Simple
            ),
            Err("exception:KeyError".into())
        );
    }

    #[test]
    fn standardization() {
        assert_eq!(standardize("April 1, 2024"), "april12024");
        assert_eq!(standardize("It's A/B_c*d^e-f."), "it\"sabcdef");
    }
}
