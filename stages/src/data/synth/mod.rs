//! `synth`: a seeded generator of xLAM-format tool-calling rows.
//!
//! No xLAM or ToolACE rows exist offline, yet the pipeline (normalize → verify → split → format →
//! sft) needs data in exactly that shape to be built and tested end to end. This stage draws rows
//! from a catalogue of invented tool families (`catalogue.rs`): every query states its argument
//! values, so the gold answer is recoverable from the text, and every gold answer satisfies its
//! own tool's declared types. Row kinds follow BFCL's categories (single, multiple, parallel,
//! parallel multiple, irrelevance) while no function name equals one of BFCL's.
//!
//! The output is a function of the params alone: the same seed gives the same bytes, whatever the
//! machine or thread count.

mod catalogue;
mod render;
pub(crate) mod rng;

use std::fs::File;
use std::io::{BufWriter, Write};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::contract::{Context, Input, Report, StageError, TypedStage};
use catalogue::CATCH_ALL_GROUPS;
use render::{Call, Compiled, compiled, py_json};
use rng::{Rng, mix64};

/// The `synth` stage.
pub struct Synth;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthParams {
    /// Rows to generate.
    #[serde(default = "default_rows")]
    pub rows: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The fraction of rows of each kind; they must sum to 1.
    #[serde(default)]
    pub mix: Mix,
}

fn default_rows() -> usize {
    2000
}

fn default_seed() -> u64 {
    7
}

/// Fractions of the row kinds. Deserializing checks them (each in [0, 1], summing to 1), so a bad
/// mix is a params error before anything runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawMix")]
pub struct Mix {
    pub single: f64,
    pub multiple: f64,
    pub parallel: f64,
    pub parallel_multiple: f64,
    pub irrelevance: f64,
}

impl Default for Mix {
    fn default() -> Mix {
        Mix {
            single: 0.3,
            multiple: 0.25,
            parallel: 0.15,
            parallel_multiple: 0.15,
            irrelevance: 0.15,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMix {
    single: f64,
    multiple: f64,
    parallel: f64,
    parallel_multiple: f64,
    irrelevance: f64,
}

impl Default for RawMix {
    fn default() -> RawMix {
        let Mix {
            single,
            multiple,
            parallel,
            parallel_multiple,
            irrelevance,
        } = Mix::default();
        RawMix {
            single,
            multiple,
            parallel,
            parallel_multiple,
            irrelevance,
        }
    }
}

impl TryFrom<RawMix> for Mix {
    type Error = String;

    fn try_from(raw: RawMix) -> Result<Mix, String> {
        let mix = Mix {
            single: raw.single,
            multiple: raw.multiple,
            parallel: raw.parallel,
            parallel_multiple: raw.parallel_multiple,
            irrelevance: raw.irrelevance,
        };
        for (kind, fraction) in mix.fractions() {
            if !(0.0..=1.0).contains(&fraction) {
                return Err(format!(
                    "the fraction of {} rows is {fraction}; it must be in [0, 1]",
                    kind.name()
                ));
            }
        }
        let sum: f64 = mix.fractions().iter().map(|(_, f)| f).sum();
        if (sum - 1.0).abs() > 1e-9 {
            return Err(format!(
                "the fractions (single, multiple, parallel, parallel_multiple, irrelevance) sum to {sum}; they must sum to 1"
            ));
        }
        Ok(mix)
    }
}

impl Mix {
    fn fractions(&self) -> [(Kind, f64); 5] {
        [
            (Kind::Single, self.single),
            (Kind::Multiple, self.multiple),
            (Kind::Parallel, self.parallel),
            (Kind::ParallelMultiple, self.parallel_multiple),
            (Kind::Irrelevance, self.irrelevance),
        ]
    }
}

/// A row's kind, after BFCL's categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One call of the one tool offered.
    Single,
    /// One call; several tools offered.
    Multiple,
    /// Several calls of one tool.
    Parallel,
    /// Several calls of different tools.
    ParallelMultiple,
    /// No offered tool fits: the answer is no call.
    Irrelevance,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Single => "single",
            Kind::Multiple => "multiple",
            Kind::Parallel => "parallel",
            Kind::ParallelMultiple => "parallel_multiple",
            Kind::Irrelevance => "irrelevance",
        }
    }
}

/// The kind of every row: counts as close to `rows × fraction` as whole rows allow (largest
/// remainders get the leftover rows), in a seeded shuffled order.
fn plan(mix: &Mix, rows: usize, seed: u64) -> Vec<Kind> {
    let fractions = mix.fractions();
    let exact: Vec<f64> = fractions.iter().map(|(_, f)| f * rows as f64).collect();
    let mut counts: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut by_remainder: Vec<usize> = (0..counts.len()).collect();
    by_remainder
        .sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let short = rows.saturating_sub(counts.iter().sum());
    for &i in by_remainder.iter().cycle().take(short) {
        counts[i] += 1;
    }
    let mut kinds: Vec<Kind> = fractions
        .iter()
        .zip(&counts)
        .flat_map(|((kind, _), &n)| std::iter::repeat_n(*kind, n))
        .collect();
    Rng::new(mix64(seed ^ 0x6b69_6e64_7320_706c)).shuffle(&mut kinds);
    kinds
}

/// One generated row, before encoding.
struct Row {
    query: String,
    /// Offered functions (indices into the compiled catalogue), in offered order.
    tools: Vec<usize>,
    calls: Vec<Call>,
}

/// Requests that no tool of the catalogue (search excepted) could serve.
const CHITCHAT: &[&str] = &[
    "Tell me a joke about penguins.",
    "Write a haiku about autumn in Kyoto.",
    "Why is the sky blue? Keep it short.",
    "What's your favourite colour, and why?",
    "Can you explain recursion like I'm five?",
    "Give me three tips for staying focused while studying.",
    "Summarize the plot of Hamlet in two sentences.",
    "How do I politely decline a wedding invitation?",
    "Rewrite this sentence to sound friendlier: \"Send me the file now.\"",
    "What is the difference between weather and climate?",
    "Compose a short birthday poem for my friend Zoë.",
    "Which is better for a beginner, chess or go? Just your opinion.",
];

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A single clause made into a request.
fn single_request(clause: &str, r: &mut Rng) -> String {
    match r.below(8) {
        0 => format!("{}.", capitalize(clause)),
        1 => format!("Please {clause}."),
        2 => format!("Could you {clause}?"),
        3 => format!("Can you {clause} for me?"),
        4 => format!("I'd like you to {clause}."),
        5 => format!("Help me {clause}, please."),
        6 => format!("Quick one: {clause}."),
        _ => format!("Hey, {clause}, thanks!"),
    }
}

/// Several clauses made into one request, in order.
fn joint_request(clauses: &[String], r: &mut Rng) -> String {
    const COUNTS: [&str; 5] = ["zero", "one", "two", "three", "four"];
    let n = clauses.len();
    let (init, last) = clauses.split_at(n - 1);
    match r.below(6) {
        0 if n == 2 => format!("Please {} and {}.", clauses[0], clauses[1]),
        0 => format!("Please {}, and {}.", init.join(", "), last[0]),
        1 => format!("Could you {}?", clauses.join(", then ")),
        2 => format!(
            "I have {} requests: {}.",
            COUNTS.get(n).copied().unwrap_or("several"),
            clauses.join("; ")
        ),
        3 => {
            let mut text = format!("{}.", capitalize(&clauses[0]));
            for (i, clause) in clauses[1..].iter().enumerate() {
                let connector = if n > 2 && i + 2 == n {
                    "Finally, "
                } else {
                    "Also, "
                };
                text.push_str(&format!(" {connector}{clause}."));
            }
            text
        }
        4 => {
            let mut text = String::from("Do these for me:");
            for (i, clause) in clauses.iter().enumerate() {
                text.push_str(&format!("\n{}. {clause}", i + 1));
            }
            text
        }
        _ => format!("I need you to {}.", clauses.join(" and also ")),
    }
}

impl Compiled {
    fn group_of(&self, func: usize) -> &'static str {
        self.families[self.funcs[func].family].group
    }

    /// A function, uniform over families first so that big families do not dominate.
    fn pick_func(&self, r: &mut Rng) -> usize {
        let family = r.below(self.families.len());
        *r.pick(&self.by_family[family])
    }

    /// Adds functions to `taken` until it holds `want`, each passing `ok` and not yet taken
    /// (fewer if such functions are too rare to find).
    fn fill_to(
        &self,
        taken: &mut Vec<usize>,
        want: usize,
        r: &mut Rng,
        ok: impl Fn(usize) -> bool,
    ) {
        for _ in 0..50 * want {
            if taken.len() == want {
                break;
            }
            let f = self.pick_func(r);
            if ok(f) && !taken.contains(&f) {
                taken.push(f);
            }
        }
    }

    /// A call of `func` with any of its templates, and the request stating it alone.
    fn lone_call(&self, func: usize, r: &mut Rng) -> Result<(Call, String), String> {
        let template = r.below(self.funcs[func].templates.len());
        let call = self.draw_call(func, template, r)?;
        let request = if self.funcs[func].templates[template].clause {
            single_request(&call.text, r)
        } else {
            call.text.clone()
        };
        Ok((call, request))
    }

    /// A call of `func` stated as a clause, with arguments unlike every call in `calls`.
    fn fresh_clause_call(
        &self,
        func: usize,
        calls: &[Call],
        r: &mut Rng,
    ) -> Result<Option<Call>, String> {
        for _ in 0..50 {
            let template = *r.pick(&self.funcs[func].clauses);
            let call = self.draw_call(func, template, r)?;
            if !calls.iter().any(|c| c.func == func && c.args == call.args) {
                return Ok(Some(call));
            }
        }
        Ok(None)
    }

    fn make_row(&self, kind: Kind, r: &mut Rng) -> Result<Row, String> {
        match kind {
            Kind::Single => {
                let f = self.pick_func(r);
                let (call, query) = self.lone_call(f, r)?;
                Ok(Row {
                    query,
                    tools: vec![f],
                    calls: vec![call],
                })
            }
            Kind::Multiple => {
                let f = self.pick_func(r);
                let (call, query) = self.lone_call(f, r)?;
                let mut tools = vec![f];
                let siblings = &self.by_family[self.funcs[f].family];
                if siblings.len() > 1 && r.chance(0.6) {
                    self.fill_to(&mut tools, 2, r, |g| siblings.contains(&g));
                }
                let distractors = r.range(1, 4) as usize;
                self.fill_to(&mut tools, 1 + distractors, r, |_| true);
                r.shuffle(&mut tools);
                Ok(Row {
                    query,
                    tools,
                    calls: vec![call],
                })
            }
            Kind::Parallel => {
                let f = self.pick_func(r);
                let n = r.range(2, 4) as usize;
                let mut calls = Vec::new();
                while calls.len() < n {
                    match self.fresh_clause_call(f, &calls, r)? {
                        Some(call) => calls.push(call),
                        None => break,
                    }
                }
                if calls.len() < 2 {
                    return Err(format!(
                        "{}: could not draw two different calls",
                        self.funcs[f].def.name
                    ));
                }
                let mut tools = vec![f];
                if r.chance(0.3) {
                    let distractors = r.range(1, 2) as usize;
                    self.fill_to(&mut tools, 1 + distractors, r, |_| true);
                    r.shuffle(&mut tools);
                }
                let texts: Vec<String> = calls.iter().map(|c| c.text.clone()).collect();
                Ok(Row {
                    query: joint_request(&texts, r),
                    tools,
                    calls,
                })
            }
            Kind::ParallelMultiple => {
                let m = r.range(2, 3) as usize;
                let mut funcs = vec![self.pick_func(r)];
                let siblings = &self.by_family[self.funcs[funcs[0]].family];
                if siblings.len() > 1 && r.chance(0.35) {
                    self.fill_to(&mut funcs, 2, r, |g| siblings.contains(&g));
                }
                self.fill_to(&mut funcs, m, r, |_| true);
                let total = r.range(funcs.len() as i64, 4) as usize;
                let mut calls = Vec::new();
                for i in 0..total {
                    let f = if i < funcs.len() {
                        funcs[i]
                    } else {
                        *r.pick(&funcs)
                    };
                    if let Some(call) = self.fresh_clause_call(f, &calls, r)? {
                        calls.push(call);
                    }
                }
                r.shuffle(&mut calls);
                let mut tools = funcs;
                let want = tools.len() + r.range(0, 2) as usize;
                self.fill_to(&mut tools, want, r, |_| true);
                r.shuffle(&mut tools);
                let texts: Vec<String> = calls.iter().map(|c| c.text.clone()).collect();
                Ok(Row {
                    query: joint_request(&texts, r),
                    tools,
                    calls,
                })
            }
            Kind::Irrelevance => {
                let (query, source_group) = if r.chance(0.8) {
                    let f = self.pick_func(r);
                    (self.lone_call(f, r)?.1, Some(self.group_of(f)))
                } else {
                    (r.pick(CHITCHAT).to_string(), None)
                };
                let mut tools = Vec::new();
                let want = r.range(1, 3) as usize;
                self.fill_to(&mut tools, want, r, |g| {
                    let group = self.group_of(g);
                    Some(group) != source_group && !CATCH_ALL_GROUPS.contains(&group)
                });
                Ok(Row {
                    query,
                    tools,
                    calls: Vec::new(),
                })
            }
        }
    }

    /// The row as one line of xLAM JSON (no newline): `{"query": ..., "tools": ..., "answers": ...}`
    /// with `tools` and `answers` JSON-encoded strings, as xLAM has them.
    #[cfg(test)]
    fn encode(&self, row: &Row) -> String {
        let mut line = String::with_capacity(4096);
        self.encode_into(row, &mut line);
        line
    }

    fn encode_into(&self, row: &Row, line: &mut String) {
        let answers: Vec<Answer> = row
            .calls
            .iter()
            .map(|c| Answer {
                name: self.funcs[c.func].def.name,
                arguments: &c.args,
            })
            .collect();
        let string = |s: &str| serde_json::to_string(s).expect("a string always serializes");
        // Written out rather than derived so that the tool texts, escaped once per process, are
        // not escaped again per row (most of a row's bytes); a test checks it equals the derived
        // form.
        line.push_str("{\"query\":");
        line.push_str(&string(&row.query));
        line.push_str(",\"tools\":\"[");
        for (i, &f) in row.tools.iter().enumerate() {
            if i > 0 {
                line.push_str(", ");
            }
            line.push_str(&self.funcs[f].tool_json_escaped);
        }
        line.push_str("]\",\"answers\":");
        line.push_str(&string(&py_json(&answers)));
        line.push('}');
    }
}

#[derive(Serialize)]
struct Answer<'a> {
    name: &'a str,
    arguments: &'a Map<String, Value>,
}

/// Consecutive rows, encoded, with what the metrics need of them.
#[derive(Default)]
struct Block {
    text: String,
    offered: Vec<usize>,
    called: Vec<usize>,
    calls: usize,
}

fn make_block(
    c: &Compiled,
    seed: u64,
    kinds: &[Kind],
    rows: std::ops::Range<usize>,
) -> Result<Block, String> {
    let mut block = Block {
        text: String::with_capacity(rows.len() * 2048),
        ..Block::default()
    };
    for i in rows {
        let row = row_at(c, seed, i, kinds[i])?;
        c.encode_into(&row, &mut block.text);
        block.text.push('\n');
        block.offered.extend(&row.tools);
        block.called.extend(row.calls.iter().map(|call| call.func));
        block.calls += row.calls.len();
    }
    Ok(block)
}

/// Row `index` of a run seeded with `seed`: a function of those alone.
fn row_at(c: &Compiled, seed: u64, index: usize, kind: Kind) -> Result<Row, String> {
    c.make_row(kind, &mut Rng::for_item(seed, index as u64))
}

#[derive(Serialize)]
struct KindCounts {
    single: usize,
    multiple: usize,
    parallel: usize,
    parallel_multiple: usize,
    irrelevance: usize,
}

#[derive(Serialize)]
struct Metrics {
    rows: usize,
    seed: u64,
    kinds: KindCounts,
    /// Gold calls over all rows.
    calls: usize,
    /// Distinct families and functions offered in some row.
    families_used: usize,
    functions_used: usize,
    /// Distinct functions in some gold answer.
    functions_called: usize,
    catalogue_families: usize,
    catalogue_functions: usize,
}

/// Rows made (in parallel blocks of `BLOCK`) between progress updates and cancellation checks.
const CHUNK: usize = 8192;
const BLOCK: usize = 256;

impl TypedStage for Synth {
    type Params = SynthParams;
    const KIND: &'static str = "synth";
    const VERSION: u32 = 1;
    const INPUTS: &'static [Input] = &[];
    const ABOUT: &'static str =
        "generate seeded xLAM-format tool-calling rows (single, multiple, parallel, irrelevance)";

    fn run(&self, params: &SynthParams, ctx: &Context<'_>) -> Result<Report, StageError> {
        let c = compiled().map_err(StageError::Failed)?;
        let kinds = plan(&params.mix, params.rows, params.seed);
        let mut offered = vec![false; c.funcs.len()];
        let mut called = vec![false; c.funcs.len()];
        let mut calls = 0;

        let data = ctx.out.join("data.jsonl");
        let io = |e| StageError::io(&data, e);
        let mut w = BufWriter::new(File::create(&data).map_err(io)?);
        let mut write = |blocks: Vec<Block>| -> Result<(), StageError> {
            for block in &blocks {
                w.write_all(block.text.as_bytes()).map_err(io)?;
                for &f in &block.offered {
                    offered[f] = true;
                }
                for &f in &block.called {
                    called[f] = true;
                }
                calls += block.calls;
            }
            Ok(())
        };
        // Chunk k is written while chunk k + 1 is made.
        let mut pending: Option<Vec<Block>> = None;
        for start in (0..kinds.len()).step_by(CHUNK) {
            ctx.check_cancelled()?;
            let end = (start + CHUNK).min(kinds.len());
            let (made, written) = rayon::join(
                || {
                    (start..end)
                        .step_by(BLOCK)
                        .collect::<Vec<_>>()
                        .into_par_iter()
                        .map(|b| make_block(c, params.seed, &kinds, b..(b + BLOCK).min(end)))
                        .collect::<Result<Vec<Block>, String>>()
                },
                || pending.take().map_or(Ok(()), &mut write),
            );
            written?;
            pending = Some(made.map_err(StageError::Failed)?);
            ctx.progress
                .update(end as u64, Some(kinds.len() as u64), "rows");
        }
        if let Some(blocks) = pending {
            write(blocks)?;
        }
        w.flush().map_err(io)?;

        let count = |k: Kind| kinds.iter().filter(|&&x| x == k).count();
        let families_used = (0..c.families.len())
            .filter(|&fam| c.by_family[fam].iter().any(|&f| offered[f]))
            .count();
        let metrics = Metrics {
            rows: kinds.len(),
            seed: params.seed,
            kinds: KindCounts {
                single: count(Kind::Single),
                multiple: count(Kind::Multiple),
                parallel: count(Kind::Parallel),
                parallel_multiple: count(Kind::ParallelMultiple),
                irrelevance: count(Kind::Irrelevance),
            },
            calls,
            families_used,
            functions_used: offered.iter().filter(|&&x| x).count(),
            functions_called: called.iter().filter(|&&x| x).count(),
            catalogue_families: c.families.len(),
            catalogue_functions: c.funcs.len(),
        };
        let path = ctx.out.join("metrics.json");
        let mut text = serde_json::to_string_pretty(&metrics).expect("metrics always serialize");
        text.push('\n');
        std::fs::write(&path, text).map_err(|e| StageError::io(&path, e))?;

        let k = &metrics.kinds;
        Ok(Report {
            summary: format!(
                "{} rows ({} single, {} multiple, {} parallel, {} parallel multiple, {} irrelevance) from {} families",
                metrics.rows,
                k.single,
                k.multiple,
                k.parallel,
                k.parallel_multiple,
                k.irrelevance,
                metrics.families_used
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::AtomicBool;

    use serde_json::json;

    use super::*;
    use crate::contract::{Device, NoProgress, Stage};
    use catalogue::Need;

    /// A function's tool object as xLAM's `tools` string holds it.
    fn tool_json(f: &render::Function) -> String {
        serde_json::from_str(&format!("\"{}\"", f.tool_json_escaped)).unwrap()
    }

    fn ctx_run(params: &Value, out: &Path, cancel: bool) -> Result<Report, StageError> {
        let stage: &dyn Stage = &Synth;
        let resolved = stage.check_params(params).expect("params are valid");
        let inputs = BTreeMap::new();
        let cancel = AtomicBool::new(cancel);
        let ctx = Context {
            stage: "synth",
            inputs: &inputs,
            out,
            state: crate::contract::unused_state(),
            device: Device::Cpu,
            progress: &NoProgress,
            cancel: &cancel,
            seed: 0,
        };
        stage.run(&resolved, &ctx)
    }

    fn run_to_dir(params: Value) -> (tempfile::TempDir, Report) {
        let dir = tempfile::tempdir().unwrap();
        let report = ctx_run(&params, dir.path(), false).unwrap();
        (dir, report)
    }

    /// The rows of a run, encoded, without touching the disk.
    fn lines(rows: usize, seed: u64) -> Vec<String> {
        let c = compiled().unwrap();
        let kinds = plan(&Mix::default(), rows, seed);
        (0..rows)
            .map(|i| c.encode(&row_at(c, seed, i, kinds[i]).unwrap()))
            .collect()
    }

    fn parse_row(line: &str) -> (String, Vec<Value>, Vec<Value>) {
        let row: Value = serde_json::from_str(line).unwrap();
        let obj = row.as_object().unwrap();
        assert_eq!(
            obj.keys().collect::<Vec<_>>(),
            ["query", "tools", "answers"]
        );
        let tools: Vec<Value> = serde_json::from_str(obj["tools"].as_str().unwrap()).unwrap();
        let answers: Vec<Value> = serde_json::from_str(obj["answers"].as_str().unwrap()).unwrap();
        (obj["query"].as_str().unwrap().to_string(), tools, answers)
    }

    fn kind_of(tools: &[Value], answers: &[Value]) -> &'static str {
        let names: BTreeSet<&str> = answers
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        match answers.len() {
            0 => "irrelevance",
            1 if tools.len() == 1 => "single",
            1 => "multiple",
            _ if names.len() == 1 => "parallel",
            _ => "parallel_multiple",
        }
    }

    // ---- an independent reading of xLAM's type strings, to check the gold answers ----

    /// Splits at commas outside brackets.
    fn top_level_split(s: &str) -> Vec<&str> {
        let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
        for (i, ch) in s.char_indices() {
            match ch {
                '[' => depth += 1,
                ']' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(s[start..i].trim());
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(s[start..].trim());
        parts
    }

    /// (base type, optional?) of a parameter entry, by DESIGN.md's xLAM rules.
    fn read_param(entry: &Value) -> (String, bool) {
        let ty = entry["type"].as_str().unwrap();
        let parts = top_level_split(ty);
        let modifiers = &parts[1..];
        let optional = modifiers
            .iter()
            .any(|m| *m == "optional" || m.starts_with("default="))
            || entry.get("default").is_some()
            || entry["description"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("default");
        for m in modifiers {
            assert!(
                *m == "optional" || m.starts_with("default="),
                "modifier {m:?} in {ty:?}"
            );
        }
        (parts[0].to_string(), optional)
    }

    fn conforms(ty: &str, v: &Value) -> bool {
        let inner = |prefix: &str| ty.strip_prefix(prefix).and_then(|t| t.strip_suffix(']'));
        match ty {
            "str" => v.is_string(),
            "int" => v.is_i64() || v.is_u64(),
            "float" => v.is_number(),
            "bool" => v.is_boolean(),
            "dict" | "Dict" => v.is_object(),
            _ => {
                if let Some(item) = inner("List[") {
                    v.as_array()
                        .is_some_and(|a| a.iter().all(|x| conforms(item, x)))
                } else if let Some(items) = inner("Tuple[") {
                    let items = top_level_split(items);
                    v.as_array().is_some_and(|a| {
                        a.len() == items.len() && a.iter().zip(&items).all(|(x, t)| conforms(t, x))
                    })
                } else {
                    panic!("unknown type {ty:?}")
                }
            }
        }
    }

    fn allowed_values(description: &str) -> Option<Vec<String>> {
        let rest = description.split_once("Allowed values: ")?.1;
        let end = rest.find("'.").expect("the allowed values end with '.");
        Some(
            rest[..=end]
                .split(", ")
                .map(|v| v.trim_matches('\'').to_string())
                .collect(),
        )
    }

    fn is_iso_date(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 10
            && b[4] == b'-'
            && b[7] == b'-'
            && s.split('-').all(|p| p.bytes().all(|c| c.is_ascii_digit()))
    }

    fn is_clock(s: &str) -> bool {
        let b = s.as_bytes();
        b.len() == 5 && b[2] == b':' && s.split(':').all(|p| p.bytes().all(|c| c.is_ascii_digit()))
    }

    /// Whether the query states `v` (in one of the forms the generator writes).
    fn stated(query: &str, v: &Value) -> bool {
        match v {
            Value::String(s) if is_iso_date(s) => {
                let (y, m, d) = (
                    &s[..4],
                    s[5..7].parse::<usize>().unwrap(),
                    s[8..].parse::<u32>().unwrap(),
                );
                let month = render::MONTHS[m - 1];
                query.contains(s.as_str())
                    || query.contains(&format!("{month} {d}, {y}"))
                    || query.contains(&format!("{d} {month} {y}"))
            }
            Value::String(s) if is_clock(s) => {
                let (h, m) = (s[..2].parse::<u32>().unwrap(), &s[3..]);
                let h12 = if h > 12 { h - 12 } else { h };
                let half = if h >= 12 { "pm" } else { "am" };
                query.contains(s.as_str()) || query.contains(&format!("{h12}:{m} {half}"))
            }
            Value::String(s) => query.contains(s.as_str()),
            Value::Number(n) => match n.as_i64() {
                Some(i) => query.contains(&i.to_string()),
                None => query.contains(&n.as_f64().unwrap().to_string()),
            },
            Value::Bool(_) => true,
            Value::Array(items) => items.iter().all(|x| stated(query, x)),
            Value::Object(fields) => fields.values().all(|x| stated(query, x)),
            Value::Null => false,
        }
    }

    /// Checks a row the way a strict consumer would; returns its kind.
    fn check_row(line: &str) -> &'static str {
        let (query, tools, answers) = parse_row(line);
        assert!(!query.trim().is_empty());
        let mut offered = BTreeMap::new();
        for tool in &tools {
            let name = tool["name"].as_str().unwrap();
            assert!(tool["description"].as_str().is_some_and(|d| !d.is_empty()));
            assert!(
                offered.insert(name, tool).is_none(),
                "{name} offered twice: {line}"
            );
        }
        for answer in &answers {
            let name = answer["name"].as_str().unwrap();
            let tool = offered
                .get(name)
                .unwrap_or_else(|| panic!("{name} not offered: {line}"));
            let params = tool["parameters"].as_object().unwrap();
            let args = answer["arguments"].as_object().unwrap();
            for (pname, entry) in params {
                let (ty, optional) = read_param(entry);
                match args.get(pname) {
                    None => assert!(optional, "required {name}.{pname} missing: {line}"),
                    Some(v) => {
                        assert!(conforms(&ty, v), "{name}.{pname}: {v} is not {ty}: {line}");
                        let description = entry["description"].as_str().unwrap();
                        if let Some(allowed) = allowed_values(description) {
                            let values = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
                            for x in values {
                                assert!(
                                    allowed.iter().any(|a| x == a.as_str()),
                                    "{name}.{pname}: {x} not allowed: {line}"
                                );
                            }
                        }
                        assert!(
                            stated(&query, v),
                            "{name}.{pname}: {v} is not in the query: {line}"
                        );
                    }
                }
            }
            for pname in args.keys() {
                assert!(
                    params.contains_key(pname),
                    "{name}: undeclared argument {pname}: {line}"
                );
            }
        }
        for (i, a) in answers.iter().enumerate() {
            assert!(!answers[..i].contains(a), "a call repeats: {line}");
        }
        kind_of(&tools, &answers)
    }

    // ---- params ----

    #[test]
    fn params_have_explicit_defaults_and_reject_unknown_fields() {
        let stage: &dyn Stage = &Synth;
        assert_eq!(
            stage.check_params(&json!({})).unwrap(),
            json!({"rows": 2000, "seed": 7, "mix": {
                "single": 0.3, "multiple": 0.25, "parallel": 0.15, "parallel_multiple": 0.15, "irrelevance": 0.15
            }})
        );
        let e = stage.check_params(&json!({"rowz": 5})).unwrap_err();
        assert!(e.to_string().contains("rowz"), "{e}");
        let mix = json!({"single": 0.3, "multiple": 0.25, "parallel": 0.15, "parallel_multiple": 0.15,
                         "irrelevance": 0.15, "chitchat": 0.0});
        let e = stage.check_params(&json!({"mix": mix})).unwrap_err();
        assert!(e.to_string().contains("chitchat"), "{e}");
    }

    #[test]
    fn the_mix_must_sum_to_one() {
        let stage: &dyn Stage = &Synth;
        let mix = |single: f64, irrelevance: f64| {
            json!({"mix": {"single": single, "multiple": 0.25, "parallel": 0.15, "parallel_multiple": 0.15,
                           "irrelevance": irrelevance}})
        };
        let e = stage
            .check_params(&json!({"mix": {"single": 0.5}}))
            .unwrap_err();
        assert_eq!(e.path, "mix");
        assert!(e.message.contains("must sum to 1"), "{e}");
        assert!(stage.check_params(&mix(0.3 + 1e-12, 0.15)).is_ok());
        assert!(stage.check_params(&mix(0.3 + 1e-8, 0.15)).is_err());
        let e = stage.check_params(&mix(0.5, -0.05)).unwrap_err();
        assert!(
            e.message.contains("irrelevance") && e.message.contains("[0, 1]"),
            "{e}"
        );
        let only_single = json!({"mix": {"single": 1, "multiple": 0, "parallel": 0, "parallel_multiple": 0,
                                         "irrelevance": 0}});
        assert!(stage.check_params(&only_single).is_ok());
    }

    #[test]
    fn the_plan_gives_each_kind_its_share_in_a_seeded_order() {
        let count = |kinds: &[Kind], k: Kind| kinds.iter().filter(|&&x| x == k).count();
        let kinds = plan(&Mix::default(), 1000, 1);
        let counts: Vec<usize> = Mix::default()
            .fractions()
            .iter()
            .map(|(k, _)| count(&kinds, *k))
            .collect();
        assert_eq!(counts, [300, 250, 150, 150, 150]);
        for rows in [0, 1, 7, 333] {
            assert_eq!(plan(&Mix::default(), rows, 1).len(), rows);
        }
        let odd = Mix {
            single: 1.0 / 3.0,
            multiple: 1.0 / 3.0,
            parallel: 1.0 / 3.0,
            parallel_multiple: 0.0,
            irrelevance: 0.0,
        };
        let kinds = plan(&odd, 10, 1);
        assert_eq!(kinds.len(), 10);
        assert!(count(&kinds, Kind::ParallelMultiple) == 0 && count(&kinds, Kind::Single) >= 3);
        assert_ne!(
            plan(&Mix::default(), 1000, 1),
            plan(&Mix::default(), 1000, 2)
        );
        assert_eq!(
            plan(&Mix::default(), 1000, 1),
            plan(&Mix::default(), 1000, 1)
        );
    }

    // ---- the catalogue ----

    #[test]
    fn the_catalogue_is_wide_and_well_formed() {
        let c = compiled().unwrap();
        assert!(c.families.len() >= 40, "{} families", c.families.len());
        let mut names = BTreeSet::new();
        let mut base_types = BTreeSet::new();
        let mut optional_styles = BTreeSet::new();
        let mut enums = 0;
        for f in &c.funcs {
            let name = f.def.name;
            assert!(names.insert(name), "{name} twice");
            assert!(
                name.starts_with(|ch: char| ch.is_ascii_lowercase())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert!(
                f.templates.len() >= 3 && f.clauses.len() >= 2,
                "{name}: too few templates"
            );
            for (t, text) in f.templates.iter().zip(f.def.templates) {
                if t.clause {
                    assert!(
                        !text.ends_with(['.', '?', '!']),
                        "{name}: clause {text:?} ends a sentence"
                    );
                }
            }
            let tool: Value = serde_json::from_str(&tool_json(f)).unwrap();
            assert_eq!(
                tool.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["name", "description", "parameters"]
            );
            for (p, (pname, entry)) in f
                .def
                .params
                .iter()
                .zip(tool["parameters"].as_object().unwrap())
            {
                assert_eq!(p.name, pname);
                let (ty, optional) = read_param(entry);
                assert_eq!(
                    optional,
                    !matches!(p.need, Need::Required),
                    "{name}.{pname}: {entry}"
                );
                let ty_string = entry["type"].as_str().unwrap();
                optional_styles.insert(
                    match (
                        entry.get("default").is_some(),
                        ty_string.contains("default="),
                    ) {
                        _ if !optional => "required",
                        (true, _) if ty_string.ends_with(", optional") => "optional + default key",
                        (true, _) => "default key alone",
                        (false, true) => "default= in the type",
                        (false, false) => "optional",
                    },
                );
                if let Some(default) = entry.get("default") {
                    assert!(
                        conforms(&ty, default),
                        "{name}.{pname}: default {default} is not {ty}"
                    );
                }
                let description = entry["description"].as_str().unwrap();
                if let Some(allowed) = allowed_values(description) {
                    enums += 1;
                    assert_eq!(allowed, p.source.allowed().unwrap(), "{name}.{pname}");
                    if let Some(default) = entry.get("default") {
                        assert!(
                            allowed.iter().any(|a| default == a.as_str()),
                            "{name}.{pname}: default {default}"
                        );
                    }
                }
                base_types.insert(ty);
            }
        }
        let want = [
            "str",
            "int",
            "float",
            "bool",
            "List[str]",
            "List[int]",
            "List[float]",
            "Tuple[float, float]",
        ];
        for ty in want {
            assert!(base_types.contains(ty), "no parameter of type {ty}");
        }
        assert!(
            base_types.contains("dict") && base_types.contains("Dict"),
            "{base_types:?}"
        );
        assert!(enums >= 30, "{enums} enum parameters");
        assert_eq!(optional_styles.len(), 5, "{optional_styles:?}");
    }

    #[test]
    fn bad_templates_are_refused() {
        use catalogue::{Func, Gen, Param};
        const PARAMS: &[Param] = &[
            Param {
                name: "city",
                description: "",
                source: Gen::Words(&["Oslo"]),
                need: Need::Required,
            },
            Param {
                name: "fast",
                description: "",
                source: Gen::Bool,
                need: Need::Optional,
            },
        ];
        let func = |t: &'static [&'static str]| Func {
            name: "f",
            description: "",
            params: PARAMS,
            templates: t,
            rules: &[],
        };
        let parse = |t: &'static str| render::parse_template_for_test(&func(&[]), t);
        assert!(parse("go to {city}[{fast: fast| slow}]").is_ok());
        assert!(
            parse("go somewhere")
                .unwrap_err()
                .contains("required `city`")
        );
        assert!(parse("go to [{city}]").unwrap_err().contains("outside"));
        assert!(
            parse("go to {city} {fast:a|b}")
                .unwrap_err()
                .contains("inside")
        );
        assert!(
            parse("go to {city}[ {fast}]")
                .unwrap_err()
                .contains("booleans")
        );
        assert!(parse("go to {town}").unwrap_err().contains("no parameter"));
        assert!(
            parse("go to {city}[ now")
                .unwrap_err()
                .contains("without `]`")
        );
        assert!(parse("go to {city} {city}").unwrap_err().contains("twice"));
    }

    #[test]
    fn no_function_name_is_a_bfcl_name() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        let dest: PathBuf = root.join("target/test-assets/bfcl-data");
        let status = std::process::Command::new("bash")
            .arg(root.join("scripts/fetch-bfcl.sh"))
            .arg(&dest)
            .status()
            .expect("bash runs");
        assert!(status.success(), "scripts/fetch-bfcl.sh failed: {status}");

        let mut bfcl = BTreeSet::new();
        let mut files = 0;
        for entry in std::fs::read_dir(&dest).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_string();
            if !(file.starts_with("BFCL_v4_") && file.ends_with(".json")) {
                continue;
            }
            files += 1;
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                // Not every file is JSONL (format_sensitivity is one JSON document of ids).
                let Ok(Value::Object(row)) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                for f in row
                    .get("function")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    bfcl.insert(f["name"].as_str().unwrap().to_string());
                }
            }
        }
        assert!(
            files >= 15,
            "only {files} BFCL_v4_*.json files in {}",
            dest.display()
        );
        assert!(bfcl.len() > 1500, "only {} BFCL function names", bfcl.len());
        assert!(bfcl.contains("math.factorial") && bfcl.contains("calculate_triangle_area"));
        // BFCL's FC mode sends dotted names with `_` for `.`; compare both spellings, any case.
        let taken: BTreeSet<String> = bfcl
            .iter()
            .flat_map(|n| [n.to_lowercase(), n.to_lowercase().replace('.', "_")])
            .collect();
        let clashes: Vec<&str> = compiled()
            .unwrap()
            .funcs
            .iter()
            .map(|f| f.def.name)
            .filter(|n| taken.contains(&n.to_lowercase()))
            .collect();
        assert!(
            clashes.is_empty(),
            "synth names that BFCL uses: {clashes:?}"
        );
    }

    // ---- rows ----

    #[test]
    fn gold_answers_satisfy_their_tools_and_are_stated_in_the_query() {
        let mut kinds = BTreeMap::new();
        for seed in 0..25 {
            for line in lines(400, seed) {
                *kinds.entry(check_row(&line)).or_insert(0) += 1;
            }
        }
        assert_eq!(kinds.len(), 5, "{kinds:?}");
    }

    #[test]
    fn every_function_gets_called_and_every_template_used() {
        let c = compiled().unwrap();
        let mut called = BTreeSet::new();
        for line in lines(6000, 3) {
            let (_, _, answers) = parse_row(&line);
            called.extend(
                answers
                    .iter()
                    .map(|a| a["name"].as_str().unwrap().to_string()),
            );
        }
        let missing: Vec<&str> = c
            .funcs
            .iter()
            .map(|f| f.def.name)
            .filter(|n| !called.contains(*n))
            .collect();
        assert!(missing.is_empty(), "never called: {missing:?}");
        // Each template must be drawable with and without its optional parts.
        for (fi, f) in c.funcs.iter().enumerate() {
            for ti in 0..f.templates.len() {
                let mut arg_counts = BTreeSet::new();
                for i in 0..40 {
                    let call = c
                        .draw_call(fi, ti, &mut Rng::for_item(ti as u64, i))
                        .unwrap();
                    assert!(
                        !call.text.contains(['{', '}']),
                        "template syntax left in {:?}",
                        call.text
                    );
                    arg_counts.insert(call.args.len());
                }
                let optional = f
                    .def
                    .params
                    .iter()
                    .filter(|p| !matches!(p.need, Need::Required))
                    .count();
                assert!(
                    optional == 0 || arg_counts.len() > 1,
                    "{}: template {ti} never varies",
                    f.def.name
                );
            }
        }
    }

    #[test]
    fn rows_encode_as_the_derived_serialization_would() {
        #[derive(Serialize)]
        struct XlamRow<'a> {
            query: &'a str,
            tools: String,
            answers: String,
        }
        let c = compiled().unwrap();
        let kinds = plan(&Mix::default(), 300, 9);
        for (i, kind) in kinds.into_iter().enumerate() {
            let row = row_at(c, 9, i, kind).unwrap();
            let tools: Vec<String> = row.tools.iter().map(|&f| tool_json(&c.funcs[f])).collect();
            let answers: Vec<Answer> = row
                .calls
                .iter()
                .map(|call| Answer {
                    name: c.funcs[call.func].def.name,
                    arguments: &call.args,
                })
                .collect();
            let derived = XlamRow {
                query: &row.query,
                tools: format!("[{}]", tools.join(", ")),
                answers: py_json(&answers),
            };
            assert_eq!(c.encode(&row), serde_json::to_string(&derived).unwrap());
        }
    }

    #[test]
    fn run_writes_rows_and_metrics_that_agree() {
        let (dir, report) = run_to_dir(json!({"rows": 3000, "seed": 11}));
        let data = std::fs::read_to_string(dir.path().join("data.jsonl")).unwrap();
        let metrics: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("metrics.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(data.lines().count(), 3000);
        assert!(data.ends_with('\n'));
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        let (mut calls, mut offered) = (0, BTreeSet::new());
        for line in data.lines() {
            *kinds.entry(check_row(line)).or_insert(0) += 1;
            let (_, tools, answers) = parse_row(line);
            calls += answers.len() as u64;
            offered.extend(
                tools
                    .iter()
                    .map(|t| t["name"].as_str().unwrap().to_string()),
            );
        }
        assert_eq!(metrics["rows"], 3000);
        assert_eq!(metrics["seed"], 11);
        for (kind, n) in &kinds {
            assert_eq!(metrics["kinds"][kind], *n, "{kind}");
        }
        assert_eq!(metrics["kinds"]["single"], 900);
        assert_eq!(metrics["calls"], calls);
        assert_eq!(metrics["functions_used"], offered.len() as u64);
        assert!(
            metrics["families_used"].as_u64().unwrap() >= 40,
            "{metrics}"
        );
        assert!(
            report.summary.starts_with("3000 rows (900 single"),
            "{}",
            report.summary
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let read = |dir: &tempfile::TempDir, f: &str| std::fs::read(dir.path().join(f)).unwrap();
        let (a, _) = run_to_dir(json!({"rows": 5000, "seed": 5}));
        let (b, _) = run_to_dir(json!({"rows": 5000, "seed": 5}));
        let (c, _) = run_to_dir(json!({"rows": 5000, "seed": 6}));
        assert_eq!(read(&a, "data.jsonl"), read(&b, "data.jsonl"));
        assert_eq!(read(&a, "metrics.json"), read(&b, "metrics.json"));
        assert_ne!(read(&a, "data.jsonl"), read(&c, "data.jsonl"));
    }

    #[test]
    fn a_cancelled_run_stops() {
        let dir = tempfile::tempdir().unwrap();
        let result = ctx_run(&json!({"rows": 100}), dir.path(), true);
        assert!(matches!(result, Err(StageError::Cancelled)), "{result:?}");
    }
}
