//! Turns the catalogue into what rows are made of: each function's tool description in xLAM's
//! form (Python-ish type strings, encoded once), its parsed query templates, and calls drawn from
//! them — the query text and the gold arguments from one draw, so they cannot disagree.

use std::sync::OnceLock;

use serde::Serialize;
use serde_json::ser::Formatter;
use serde_json::{Map, Value, json};

use super::catalogue::{FAMILIES, Family, Func, Gen, Lit, Need, Param, Rule, Ty};
use super::rng::Rng;

/// The catalogue, checked and prepared once per process.
pub struct Compiled {
    pub families: Vec<&'static Family>,
    pub funcs: Vec<Function>,
    /// The indices in `funcs` of each family's functions.
    pub by_family: Vec<Vec<usize>>,
}

pub struct Function {
    pub family: usize,
    pub def: &'static Func,
    /// The xLAM tool object, JSON-encoded as Python's `json.dumps` writes it, then escaped for a
    /// place inside a JSON string (without the quotes): rows embed it as is, instead of escaping
    /// the same text again in every row.
    pub tool_json_escaped: String,
    pub templates: Vec<Template>,
    /// Indices of the templates that are clauses (joinable into a multi-call request).
    pub clauses: Vec<usize>,
}

pub struct Template {
    pub clause: bool,
    parts: Vec<Part>,
}

enum Part {
    Text(&'static str),
    Slot(Slot),
    /// Kept only when every slot inside was drawn; holds no segments.
    Segment(Vec<Part>),
}

struct Slot {
    param: usize,
    /// For booleans: the text when true, the text when false.
    choices: Option<(&'static str, &'static str)>,
}

/// One drawn call: its function, its arguments in declared order, and the request text.
pub struct Call {
    pub func: usize,
    pub args: Map<String, Value>,
    pub text: String,
}

pub fn compiled() -> Result<&'static Compiled, String> {
    static COMPILED: OnceLock<Result<Compiled, String>> = OnceLock::new();
    COMPILED.get_or_init(compile).as_ref().map_err(Clone::clone)
}

fn compile() -> Result<Compiled, String> {
    let mut funcs = Vec::new();
    let mut by_family = Vec::new();
    for (family, fam) in FAMILIES.iter().enumerate() {
        by_family.push((funcs.len()..funcs.len() + fam.funcs.len()).collect());
        for def in fam.funcs {
            let templates = def
                .templates
                .iter()
                .map(|t| {
                    parse_template(def, t)
                        .map_err(|e| format!("{}/{}: template {t:?}: {e}", fam.name, def.name))
                })
                .collect::<Result<Vec<_>, _>>()?;
            check_rules(def).map_err(|e| format!("{}/{e}", fam.name))?;
            let clauses = (0..templates.len())
                .filter(|&i| templates[i].clause)
                .collect();
            let tool_json = tool_json(def);
            let quoted = serde_json::to_string(&tool_json).expect("a string always serializes");
            funcs.push(Function {
                family,
                def,
                tool_json_escaped: quoted[1..quoted.len() - 1].to_string(),
                templates,
                clauses,
            });
        }
    }
    Ok(Compiled {
        families: FAMILIES.iter().collect(),
        funcs,
        by_family,
    })
}

fn param_index(def: &Func, name: &str) -> Result<usize, String> {
    def.params
        .iter()
        .position(|p| p.name == name)
        .ok_or_else(|| format!("no parameter `{name}`"))
}

fn check_rules(def: &Func) -> Result<(), String> {
    for rule in def.rules {
        let (Rule::Differ(a, b) | Rule::Before(a, b) | Rule::SameLength(a, b)) = rule;
        for name in [a, b] {
            param_index(def, name).map_err(|e| format!("{}: rule: {e}", def.name))?;
        }
    }
    Ok(())
}

fn parse_template(def: &Func, text: &'static str) -> Result<Template, String> {
    let mut top: Vec<Part> = Vec::new();
    let mut segment: Option<Vec<Part>> = None;
    let mut used = vec![false; def.params.len()];
    let mut rest = text;
    while !rest.is_empty() {
        let cut = rest.find(['{', '[', ']', '}']).unwrap_or(rest.len());
        if cut > 0 {
            let part = Part::Text(&rest[..cut]);
            segment.as_mut().unwrap_or(&mut top).push(part);
            rest = &rest[cut..];
            continue;
        }
        match rest.as_bytes()[0] {
            b'[' if segment.is_none() => {
                segment = Some(Vec::new());
                rest = &rest[1..];
            }
            b']' => {
                let seg = segment.take().ok_or("`]` without `[`")?;
                if !seg.iter().any(|p| matches!(p, Part::Slot(_))) {
                    return Err("a segment without a parameter".into());
                }
                top.push(Part::Segment(seg));
                rest = &rest[1..];
            }
            b'{' => {
                let end = rest.find('}').ok_or("`{` without `}`")?;
                let inner = &rest[1..end];
                let (name, choices) = match inner.split_once(':') {
                    Some((name, texts)) => {
                        let (yes, no) = texts
                            .split_once('|')
                            .ok_or("a boolean slot needs `yes|no`")?;
                        (name, Some((yes, no)))
                    }
                    None => (inner, None),
                };
                let param = param_index(def, name)?;
                let p = &def.params[param];
                if choices.is_some() != (p.source.ty() == Ty::Bool) {
                    return Err(format!(
                        "`{name}`: booleans, and only they, take `{{{name}:yes|no}}`"
                    ));
                }
                if std::mem::replace(&mut used[param], true) {
                    return Err(format!("`{name}` appears twice"));
                }
                let required = matches!(p.need, Need::Required);
                if required == segment.is_some() {
                    return Err(format!(
                        "`{name}` is {}: it belongs {} a `[...]` segment",
                        if required { "required" } else { "optional" },
                        if required { "outside" } else { "inside" }
                    ));
                }
                segment
                    .as_mut()
                    .unwrap_or(&mut top)
                    .push(Part::Slot(Slot { param, choices }));
                rest = &rest[end + 1..];
            }
            other => return Err(format!("unexpected `{}`", other as char)),
        }
    }
    if segment.is_some() {
        return Err("`[` without `]`".into());
    }
    for (p, used) in def.params.iter().zip(&used) {
        if matches!(p.need, Need::Required) && !used {
            return Err(format!("required `{}` is not stated", p.name));
        }
    }
    Ok(Template {
        clause: text.starts_with(|c: char| c.is_ascii_lowercase()),
        parts: top,
    })
}

#[cfg(test)]
pub fn parse_template_for_test(def: &Func, text: &'static str) -> Result<(), String> {
    parse_template(def, text).map(|_| ())
}

// ---- tool descriptions -------------------------------------------------------------------------

/// Python's `json.dumps` separators (", " and ": "), as xLAM's encoded strings use.
struct PyFormatter;

impl Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// `value` JSON-encoded the way Python's `json.dumps` does (key order kept, non-ASCII kept).
pub fn py_json(value: &impl Serialize) -> String {
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, PyFormatter);
    value
        .serialize(&mut ser)
        .expect("serializing into memory cannot fail");
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.as_bytes().iter().chain(b"\0") {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn lit_value(lit: Lit) -> Value {
    match lit {
        Lit::Str(s) => json!(s),
        Lit::Int(n) => json!(n),
        Lit::Float(x) => json!(x),
        Lit::Bool(b) => json!(b),
    }
}

/// A literal as Python's `repr` writes it, for `default=` type strings.
fn py_repr(lit: Lit) -> String {
    match lit {
        Lit::Str(s) => format!("'{s}'"),
        Lit::Int(n) => n.to_string(),
        Lit::Float(x) if x.fract() == 0.0 => format!("{x:.1}"),
        Lit::Float(x) => x.to_string(),
        Lit::Bool(true) => "True".into(),
        Lit::Bool(false) => "False".into(),
    }
}

fn base_type(ty: Ty, style: u64) -> &'static str {
    match ty {
        Ty::Str => "str",
        Ty::Int => "int",
        Ty::Float => "float",
        Ty::Bool => "bool",
        Ty::ListStr => "List[str]",
        Ty::ListInt => "List[int]",
        Ty::ListFloat => "List[float]",
        Ty::Dict if style.is_multiple_of(2) => "dict",
        Ty::Dict => "Dict",
        Ty::FloatPair => "Tuple[float, float]",
    }
}

/// The parameter's xLAM entry. Optional parameters are marked in each of the ways xLAM data
/// does (chosen per parameter by a hash of its name, so a function always reads the same).
fn param_json(func: &Func, p: &Param) -> Value {
    let style = fnv1a(&[func.name, p.name]);
    let base = base_type(p.source.ty(), style >> 8);
    let mut description = p.description.to_string();
    if let Some(allowed) = p.source.allowed() {
        let list: Vec<String> = allowed.iter().map(|v| format!("'{v}'")).collect();
        description.push_str(&format!(" Allowed values: {}.", list.join(", ")));
    }
    let (ty, default) = match p.need {
        Need::Required => (base.to_string(), None),
        Need::Optional => (format!("{base}, optional"), None),
        Need::Default(lit) => match style % 4 {
            0 => (format!("{base}, optional"), Some(lit_value(lit))),
            1 => (format!("{base}, default={}", py_repr(lit)), None),
            2 => (base.to_string(), Some(lit_value(lit))),
            _ => {
                description.push_str(&format!(" Defaults to {}.", py_repr(lit)));
                (format!("{base}, optional"), None)
            }
        },
    };
    let mut entry = Map::new();
    entry.insert("description".into(), json!(description));
    entry.insert("type".into(), json!(ty));
    if let Some(default) = default {
        entry.insert("default".into(), default);
    }
    Value::Object(entry)
}

fn tool_json(func: &Func) -> String {
    let mut params = Map::new();
    for p in func.params {
        params.insert(p.name.to_string(), param_json(func, p));
    }
    let mut tool = Map::new();
    tool.insert("name".into(), json!(func.name));
    tool.insert("description".into(), json!(func.description));
    tool.insert("parameters".into(), Value::Object(params));
    py_json(&tool)
}

// ---- drawing values ----------------------------------------------------------------------------

pub(super) const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `items` as a person lists them: "a", "a and b", "a, b and c" (sometimes with the Oxford comma).
fn spoken_list(items: &[String], r: &mut Rng) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => {
            let comma = if init.len() > 1 && r.chance(0.3) {
                ","
            } else {
                ""
            };
            format!("{}{comma} and {last}", init.join(", "))
        }
    }
}

fn quoted(s: &str, r: &mut Rng) -> String {
    let styles: &[(&str, &str)] = match (s.contains('"'), s.contains('\'')) {
        (true, _) => &[("'", "'"), ("“", "”")],
        (false, true) => &[("\"", "\""), ("“", "”")],
        (false, false) => &[("\"", "\""), ("'", "'"), ("“", "”")],
    };
    let (open, close) = r.pick(styles);
    format!("{open}{s}{close}")
}

/// A value with `decimals` digits after the point, exactly as stated in the text.
fn decimal(lo: f64, hi: f64, decimals: u32, r: &mut Rng) -> (f64, String) {
    let scale = 10f64.powi(decimals as i32);
    let n = r.range((lo * scale).round() as i64, (hi * scale).round() as i64);
    let x = n as f64 / scale;
    (x, x.to_string())
}

fn distinct_words(
    pool: &[&str],
    lo: usize,
    hi: usize,
    len: Option<usize>,
    r: &mut Rng,
) -> Vec<String> {
    let k = len
        .unwrap_or_else(|| r.range(lo as i64, hi as i64) as usize)
        .min(pool.len());
    let mut idx: Vec<usize> = (0..pool.len()).collect();
    r.shuffle(&mut idx);
    idx[..k].iter().map(|&i| pool[i].to_string()).collect()
}

/// Draws a value for `source` and how the request states it. `len` fixes a list's length.
fn draw(source: &Gen, len: Option<usize>, r: &mut Rng) -> (Value, String) {
    let count = |r: &mut Rng, lo: usize, hi: usize| {
        len.unwrap_or_else(|| r.range(lo as i64, hi as i64) as usize)
    };
    match *source {
        Gen::Words(pool) | Gen::Choice(pool) => {
            let s = *r.pick(pool);
            (json!(s), s.to_string())
        }
        Gen::Quoted(pool) => {
            let s = *r.pick(pool);
            (json!(s), quoted(s, r))
        }
        Gen::Int(lo, hi) => {
            let n = r.range(lo, hi);
            (json!(n), n.to_string())
        }
        Gen::Float(lo, hi, decimals) => {
            let (x, text) = decimal(lo, hi, decimals, r);
            (json!(x), text)
        }
        Gen::Bool => (json!(r.chance(0.5)), String::new()),
        Gen::Date => {
            let (y, m, d) = (r.range(2025, 2026), r.range(1, 12), r.range(1, 28));
            let iso = format!("{y}-{m:02}-{d:02}");
            let month = MONTHS[(m - 1) as usize];
            let text = match r.below(5) {
                0 => format!("{month} {d}, {y}"),
                1 => format!("{d} {month} {y}"),
                _ => iso.clone(),
            };
            (json!(iso), text)
        }
        Gen::Time => {
            let (h, m) = (r.range(6, 22), 15 * r.range(0, 3));
            let value = format!("{h:02}:{m:02}");
            let text = if r.chance(0.3) {
                let (h12, half) = match h {
                    0..=11 => (h, "am"),
                    12 => (12, "pm"),
                    _ => (h - 12, "pm"),
                };
                format!("{h12}:{m:02} {half}")
            } else {
                value.clone()
            };
            (json!(value), text)
        }
        Gen::WordList(pool, lo, hi) | Gen::ChoiceList(pool, lo, hi) => {
            let words = distinct_words(pool, lo, hi, len, r);
            let text = spoken_list(&words, r);
            (json!(words), text)
        }
        Gen::IntList(lo, hi, min, max) => {
            let k = count(r, min, max);
            let ns: Vec<i64> = (0..k).map(|_| r.range(lo, hi)).collect();
            let texts: Vec<String> = ns.iter().map(i64::to_string).collect();
            (json!(ns), number_list(&texts, r))
        }
        Gen::FloatList(lo, hi, decimals, min, max) => {
            let k = count(r, min, max);
            let (xs, texts): (Vec<f64>, Vec<String>) =
                (0..k).map(|_| decimal(lo, hi, decimals, r)).unzip();
            (json!(xs), number_list(&texts, r))
        }
        Gen::Custom(_, make) => make(r),
    }
}

fn number_list(texts: &[String], r: &mut Rng) -> String {
    if r.chance(0.5) {
        format!("[{}]", texts.join(", "))
    } else {
        spoken_list(texts, r)
    }
}

fn list_len(v: &Value) -> Option<usize> {
    v.as_array().map(Vec::len)
}

/// Strictly before: numbers by value, strings (ISO dates) lexicographically.
fn before(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        _ => None,
    }
}

/// Enforces the function's rules on the drawn values; false when they still fail after this pass.
fn apply_rules(def: &Func, drawn: &mut [Option<(Value, String)>], r: &mut Rng) -> bool {
    let mut ok = true;
    for rule in def.rules {
        let (Rule::Differ(a, b) | Rule::Before(a, b) | Rule::SameLength(a, b)) = *rule;
        let ia = def
            .params
            .iter()
            .position(|p| p.name == a)
            .expect("rules are checked at compile");
        let ib = def
            .params
            .iter()
            .position(|p| p.name == b)
            .expect("rules are checked at compile");
        let (Some((va, _)), Some((vb, _))) = (&drawn[ia], &drawn[ib]) else {
            continue;
        };
        let redraw_b = match rule {
            Rule::Differ(..) => va == vb,
            Rule::Before(..) => match before(va, vb) {
                Some(std::cmp::Ordering::Less) => false,
                Some(std::cmp::Ordering::Greater) => {
                    drawn.swap(ia, ib);
                    false
                }
                _ => true,
            },
            Rule::SameLength(..) => {
                let want = list_len(va);
                if want != list_len(vb) {
                    drawn[ib] = Some(draw(&def.params[ib].source, want, r));
                }
                false
            }
        };
        if redraw_b {
            drawn[ib] = Some(draw(&def.params[ib].source, None, r));
            ok = false;
        }
    }
    ok
}

impl Compiled {
    /// Draws a call of function `func` stated by its template `template`. Each optional parameter
    /// the template can state is drawn with even odds; the gold arguments are exactly the
    /// parameters the text ended up stating.
    pub fn draw_call(&self, func: usize, template: usize, r: &mut Rng) -> Result<Call, String> {
        let f = &self.funcs[func];
        let def = f.def;
        let t = &f.templates[template];
        let mut drawn: Vec<Option<(Value, String)>> = vec![None; def.params.len()];
        let want = |slot: &Slot, drawn: &mut Vec<Option<(Value, String)>>, r: &mut Rng| {
            let p = &def.params[slot.param];
            if matches!(p.need, Need::Required) || r.chance(0.5) {
                drawn[slot.param] = Some(draw(&p.source, None, r));
            }
        };
        for part in &t.parts {
            match part {
                Part::Text(_) => {}
                Part::Slot(slot) => want(slot, &mut drawn, r),
                Part::Segment(parts) => {
                    for part in parts {
                        if let Part::Slot(slot) = part {
                            want(slot, &mut drawn, r);
                        }
                    }
                }
            }
        }
        let mut attempts = 0;
        while !apply_rules(def, &mut drawn, r) {
            attempts += 1;
            if attempts == 1000 {
                return Err(format!(
                    "{}: could not draw values that satisfy its rules",
                    def.name
                ));
            }
        }

        let mut text = String::new();
        let mut stated = vec![false; def.params.len()];
        let say = |slot: &Slot, text: &mut String, stated: &mut Vec<bool>| {
            let (value, said) = drawn[slot.param]
                .as_ref()
                .expect("only drawn slots are said");
            match slot.choices {
                Some((yes, no)) => text.push_str(if value.as_bool() == Some(true) {
                    yes
                } else {
                    no
                }),
                None => text.push_str(said),
            }
            stated[slot.param] = true;
        };
        for part in &t.parts {
            match part {
                Part::Text(s) => text.push_str(s),
                Part::Slot(slot) => say(slot, &mut text, &mut stated),
                Part::Segment(parts) => {
                    let complete = parts.iter().all(|p| match p {
                        Part::Slot(slot) => drawn[slot.param].is_some(),
                        _ => true,
                    });
                    if complete {
                        for part in parts {
                            match part {
                                Part::Text(s) => text.push_str(s),
                                Part::Slot(slot) => say(slot, &mut text, &mut stated),
                                Part::Segment(_) => unreachable!("segments do not nest"),
                            }
                        }
                    }
                }
            }
        }
        let mut args = Map::new();
        for (i, p) in def.params.iter().enumerate() {
            if stated[i] {
                let (value, _) = drawn[i].take().expect("stated implies drawn");
                args.insert(p.name.to_string(), value);
            }
        }
        Ok(Call { func, args, text })
    }
}
