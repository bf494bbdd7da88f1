//! BFCL V4's single-turn benchmark: its data, its categories, the verdict on one model answer,
//! and the section scores, computed as bfcl-eval 2025.12.17 computes them.
//!
//! - Data: `BFCL_v4_<category>.json` (JSONL: `id`, `question`, `function`) and, for the AST
//!   categories, `possible_answer/BFCL_v4_<category>.json` (`id`, `ground_truth`), aligned line
//!   by line (BFCL aligns them by index; forge also checks that the ids agree).
//! - Verdicts ([`score_entry`]): AST categories decode the answer ([`super::parse`]) and run the
//!   checker ([`super::checker`]); `irrelevance`/`live_irrelevance` pass when no call decodes,
//!   `live_relevance` when one does (a decoding error counts as "no call").
//! - Sections ([`Scores::sections`]): non-live = mean(simple, multiple, parallel,
//!   parallel_multiple) with simple = mean(simple_python, simple_java, simple_javascript); live =
//!   correct/total over live_simple, live_multiple, live_parallel, live_parallel_multiple;
//!   irrelevance = mean(irrelevance, live_irrelevance); relevance = live_relevance. A section with
//!   a category not run is itself not run (BFCL shows "N/A"). Multi-turn and agentic need BFCL's
//!   Python simulators and live services and are always reported as not run.
//!
//! The entry point for a results file is [`score_results`]; the eval stage, which generates the
//! answers itself, uses [`Dataset::load`], [`super::parse::render_prompt`], [`score_entry`] and
//! [`Scores::from_verdicts`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::checker::{CallShape, Language, ast_check};
use super::parse::decode_ast;
use super::value::{Py, loads};

/// BFCL's file name prefix for V4.
pub const VERSION_PREFIX: &str = "BFCL_v4";

/// The thirteen single-turn categories forge scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    SimplePython,
    SimpleJava,
    SimpleJavascript,
    Multiple,
    Parallel,
    ParallelMultiple,
    Irrelevance,
    LiveSimple,
    LiveMultiple,
    LiveParallel,
    LiveParallelMultiple,
    LiveIrrelevance,
    LiveRelevance,
}

/// How a category judges an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Decode the calls and check them against the possible answers.
    Ast(CallShape),
    /// Right when no call decodes.
    NoCall,
    /// Right when some call decodes.
    AnyCall,
}

impl Category {
    /// All of them, in BFCL's order (non-live, then live).
    pub const ALL: [Category; 13] = [
        Category::SimplePython,
        Category::SimpleJava,
        Category::SimpleJavascript,
        Category::Multiple,
        Category::Parallel,
        Category::ParallelMultiple,
        Category::Irrelevance,
        Category::LiveSimple,
        Category::LiveMultiple,
        Category::LiveParallel,
        Category::LiveParallelMultiple,
        Category::LiveIrrelevance,
        Category::LiveRelevance,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::SimplePython => "simple_python",
            Category::SimpleJava => "simple_java",
            Category::SimpleJavascript => "simple_javascript",
            Category::Multiple => "multiple",
            Category::Parallel => "parallel",
            Category::ParallelMultiple => "parallel_multiple",
            Category::Irrelevance => "irrelevance",
            Category::LiveSimple => "live_simple",
            Category::LiveMultiple => "live_multiple",
            Category::LiveParallel => "live_parallel",
            Category::LiveParallelMultiple => "live_parallel_multiple",
            Category::LiveIrrelevance => "live_irrelevance",
            Category::LiveRelevance => "live_relevance",
        }
    }

    pub fn is_live(self) -> bool {
        self.name().starts_with("live_")
    }

    /// How the checker types values: Java and JavaScript arguments are source-code strings.
    pub fn language(self) -> Language {
        match self {
            Category::SimpleJava => Language::Java,
            Category::SimpleJavascript => Language::JavaScript,
            _ => Language::Python,
        }
    }

    pub fn judgement(self) -> Judgement {
        let name = self.name();
        if name.contains("irrelevance") {
            Judgement::NoCall
        } else if name.contains("relevance") {
            Judgement::AnyCall
        } else {
            Judgement::Ast(CallShape::of_category(name))
        }
    }

    /// `BFCL_v4_<name>.json`, in the data directory and in `possible_answer/`.
    pub fn file_name(self) -> String {
        format!("{VERSION_PREFIX}_{}.json", self.name())
    }

    /// The category of an entry id (`live_simple_3-2-0` → live_simple), as BFCL derives it
    /// (everything before the last `_`).
    pub fn of_id(id: &str) -> Option<Category> {
        let (prefix, _) = id.split(':').next()?.rsplit_once('_')?;
        prefix.parse().ok()
    }

    /// Parses a comma-separated list of category names and groups (`all`/`single_turn`,
    /// `non_live`, `live`), keeping BFCL's order and dropping repeats.
    pub fn parse_list(list: &str) -> Result<Vec<Category>, EvalError> {
        let mut chosen = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "all" | "single_turn" => chosen.extend(Category::ALL),
                "non_live" => chosen.extend(Category::ALL.iter().filter(|c| !c.is_live())),
                "live" => chosen.extend(Category::ALL.iter().filter(|c| c.is_live())),
                other => chosen.push(other.parse()?),
            }
        }
        chosen.sort();
        chosen.dedup();
        Ok(chosen)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Category {
    type Err = EvalError;

    fn from_str(s: &str) -> Result<Self, EvalError> {
        Category::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| EvalError::UnknownCategory(s.to_string()))
    }
}

/// BFCL categories that exist but that forge does not score (multi-turn, agentic, format
/// sensitivity): results for them are skipped, not errors.
fn is_unscored_bfcl_id(id: &str) -> bool {
    [
        "multi_turn_",
        "memory_",
        "web_search_",
        "format_sensitivity",
    ]
    .iter()
    .any(|p| id.starts_with(p))
}

/// Why scoring could not start or finish. Every variant names the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Data {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: {answers} possible answers for {entries} entries", path.display())]
    AnswerCount {
        path: PathBuf,
        entries: usize,
        answers: usize,
    },
    #[error("{}:{line}: possible answer `{answer_id}` does not line up with entry `{entry_id}`", path.display())]
    Misaligned {
        path: PathBuf,
        line: usize,
        entry_id: String,
        answer_id: String,
    },
    #[error("{}:{line}: {message}", path.display())]
    ResultLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: `{id}` is not an entry of BFCL V4's single-turn data", path.display())]
    UnknownId {
        path: PathBuf,
        line: usize,
        id: String,
    },
    #[error("{}:{line}: a second result for `{id}` (the first is at {}:{first_line})", path.display(), first_path.display())]
    DuplicateId {
        path: PathBuf,
        line: usize,
        id: String,
        first_path: PathBuf,
        first_line: usize,
    },
    #[error("{}: no result for {missing} of the {total} {category} entries to score (the first: `{first}`)", path.display())]
    MissingResults {
        path: PathBuf,
        category: Category,
        missing: usize,
        total: usize,
        first: String,
    },
    #[error("{}: no results for any category to score", path.display())]
    NoResults { path: PathBuf },
    #[error("unknown BFCL category `{0}`; known: {known}", known = Category::ALL.map(Category::name).join(", "))]
    UnknownCategory(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One BFCL entry, as its data file holds it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub category: Category,
    /// `question`: a list of turns, each a list of `{role, content}` messages.
    pub question: Py,
    /// `function`: the offered functions' docs, as BFCL's checker reads them (no language hints).
    pub functions: Py,
    /// `ground_truth` from `possible_answer/`, for AST categories.
    pub answer: Option<Py>,
}

/// The entries of some categories, each cut to its first `limit` entries.
#[derive(Debug, Default)]
pub struct Dataset {
    entries: Vec<Entry>,
    /// Every id in the loaded categories' files, including those past the limit.
    all_ids: HashSet<String>,
    categories: Vec<Category>,
    limit: Option<usize>,
}

impl Dataset {
    /// Loads `categories` from `data_dir` (a `bfcl_eval/data` directory, as
    /// `scripts/fetch-bfcl.sh` makes it), keeping the first `limit` entries of each.
    pub fn load(
        data_dir: &Path,
        categories: &[Category],
        limit: Option<usize>,
    ) -> Result<Self, EvalError> {
        let loaded: Vec<(Vec<Entry>, Vec<String>)> = categories
            .par_iter()
            .map(|&c| load_category(data_dir, c, limit))
            .collect::<Result<_, _>>()?;
        let mut ds = Dataset {
            categories: categories.to_vec(),
            limit,
            ..Dataset::default()
        };
        for (entries, ids) in loaded {
            ds.entries.extend(entries);
            ds.all_ids.extend(ids);
        }
        Ok(ds)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    pub fn limit(&self) -> Option<usize> {
        self.limit
    }
}

fn read_lines(path: &Path) -> Result<String, EvalError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

/// The non-blank lines of a JSONL file, numbered from 1, parsed as Python's json.loads would.
fn jsonl(path: &Path, text: &str) -> Result<Vec<(usize, Py)>, EvalError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            loads(l).map(|v| (i + 1, v)).map_err(|e| EvalError::Data {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("not valid JSON: {e}"),
            })
        })
        .collect()
}

fn str_field(path: &Path, line: usize, v: &Py, key: &str) -> Result<String, EvalError> {
    v.as_dict()
        .and_then(|d| d.get(key))
        .and_then(Py::as_str)
        .map(str::to_string)
        .ok_or_else(|| EvalError::Data {
            path: path.to_path_buf(),
            line,
            message: format!("no string `{key}`"),
        })
}

fn list_field(path: &Path, line: usize, v: &Py, key: &str) -> Result<Py, EvalError> {
    match v.as_dict().and_then(|d| d.get(key)) {
        Some(l @ Py::List(_)) => Ok(l.clone()),
        _ => Err(EvalError::Data {
            path: path.to_path_buf(),
            line,
            message: format!("no list `{key}`"),
        }),
    }
}

fn load_category(
    data_dir: &Path,
    category: Category,
    limit: Option<usize>,
) -> Result<(Vec<Entry>, Vec<String>), EvalError> {
    let path = data_dir.join(category.file_name());
    let rows = jsonl(&path, &read_lines(&path)?)?;
    let keep = limit.unwrap_or(usize::MAX).min(rows.len());
    let mut ids = Vec::with_capacity(rows.len());
    let mut entries = Vec::with_capacity(keep);
    for (i, (line, row)) in rows.iter().enumerate() {
        let id = str_field(&path, *line, row, "id")?;
        if Category::of_id(&id) != Some(category) {
            return Err(EvalError::Data {
                path: path.clone(),
                line: *line,
                message: format!("entry `{id}` is not of category {category}"),
            });
        }
        if i < keep {
            entries.push(Entry {
                id: id.clone(),
                category,
                question: list_field(&path, *line, row, "question")?,
                functions: list_field(&path, *line, row, "function")?,
                answer: None,
            });
        }
        ids.push(id);
    }
    if let Judgement::Ast(_) = category.judgement() {
        let path = data_dir.join("possible_answer").join(category.file_name());
        let answers = jsonl(&path, &read_lines(&path)?)?;
        if answers.len() != rows.len() {
            return Err(EvalError::AnswerCount {
                path,
                entries: rows.len(),
                answers: answers.len(),
            });
        }
        for (entry, (line, answer)) in entries.iter_mut().zip(&answers) {
            let answer_id = str_field(&path, *line, answer, "id")?;
            if answer_id != entry.id {
                return Err(EvalError::Misaligned {
                    path,
                    line: *line,
                    entry_id: entry.id.clone(),
                    answer_id,
                });
            }
            entry.answer = Some(list_field(&path, *line, answer, "ground_truth")?);
        }
    }
    Ok((entries, ids))
}

/// The verdict on one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryVerdict {
    pub id: String,
    pub category: Category,
    pub valid: bool,
    /// BFCL's `error_type` when not valid (`"value_error:string"`, `"ast_decoder:decoder_failed"`,
    /// ...), or `"exception:<Python exception>"` where bfcl-eval itself would crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// A readable reason, when not valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// BFCL's verdict on `output` (the model's raw text, as in BFCL's `result` field) for `entry`.
pub fn score_entry(entry: &Entry, output: &str) -> EntryVerdict {
    let verdict = |error: Option<(String, String)>| {
        let (error_type, error) = match error {
            Some((t, e)) => (Some(t), Some(e)),
            None => (None, None),
        };
        EntryVerdict {
            id: entry.id.clone(),
            category: entry.category,
            valid: error_type.is_none(),
            error_type,
            error,
        }
    };
    let decoded = decode_ast(output);
    match entry.category.judgement() {
        Judgement::NoCall => match decoded {
            Ok(calls) if !calls.is_empty() => verdict(Some((
                "irrelevance_error:decoder_success".into(),
                format!(
                    "Valid syntax: {} call(s) decoded where none should be.",
                    calls.len()
                ),
            ))),
            _ => verdict(None),
        },
        Judgement::AnyCall => match decoded {
            Ok(calls) if !calls.is_empty() => verdict(None),
            Ok(_) => verdict(Some((
                "relevance_error:decoder_failed".into(),
                "No call decoded where one should be.".into(),
            ))),
            Err(e) => verdict(Some((
                "relevance_error:decoder_failed".into(),
                format!("No call decoded where one should be: {e}"),
            ))),
        },
        Judgement::Ast(shape) => match decoded {
            Err(e) => verdict(Some((
                "ast_decoder:decoder_failed".into(),
                format!("Invalid syntax. Failed to decode AST. {e}"),
            ))),
            Ok(calls) => {
                let empty = Py::List(Vec::new());
                let answer = entry.answer.as_ref().unwrap_or(&empty);
                match ast_check(
                    &entry.functions,
                    &calls,
                    answer,
                    entry.category.language(),
                    shape,
                ) {
                    Ok(()) => verdict(None),
                    Err(f) => verdict(Some((f.kind.into_owned(), f.message))),
                }
            }
        },
    }
}

/// One category's tally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryScore {
    pub category: Category,
    pub correct: usize,
    pub total: usize,
}

impl CategoryScore {
    /// Percent correct (0–100); 0 for an empty category.
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            100.0 * self.correct as f64 / self.total as f64
        }
    }
}

/// BFCL's section scores, in percent; `None` where a category they need was not run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sections {
    /// mean(simple, multiple, parallel, parallel_multiple): BFCL's "Non-Live AST".
    pub non_live: Option<f64>,
    /// mean(simple_python, simple_java, simple_javascript).
    pub non_live_simple: Option<f64>,
    /// correct/total over the four live AST categories: BFCL's "Live".
    pub live: Option<f64>,
    /// mean(irrelevance, live_irrelevance).
    pub irrelevance: Option<f64>,
    /// live_relevance.
    pub relevance: Option<f64>,
}

/// Everything a scoring run found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Scores {
    /// One verdict per scored entry, in data order.
    pub entries: Vec<EntryVerdict>,
    /// The categories scored, in BFCL's order.
    pub categories: Vec<CategoryScore>,
    /// The per-category limit the run used, if any (the scores are then not leaderboard scores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Result lines skipped: categories not selected, or not single-turn (multi-turn, agentic).
    #[serde(default)]
    pub ignored_results: usize,
}

impl Scores {
    /// Tallies `verdicts` per category.
    pub fn from_verdicts(entries: Vec<EntryVerdict>, limit: Option<usize>) -> Self {
        let mut categories: Vec<CategoryScore> = Vec::new();
        for v in &entries {
            let slot = match categories.iter_mut().find(|c| c.category == v.category) {
                Some(s) => s,
                None => {
                    categories.push(CategoryScore {
                        category: v.category,
                        correct: 0,
                        total: 0,
                    });
                    categories.last_mut().expect("just pushed")
                }
            };
            slot.total += 1;
            slot.correct += usize::from(v.valid);
        }
        categories.sort_by_key(|c| c.category);
        Scores {
            entries,
            categories,
            limit,
            ignored_results: 0,
        }
    }

    /// The tally of `category`, if it was scored.
    pub fn category(&self, category: Category) -> Option<&CategoryScore> {
        self.categories.iter().find(|c| c.category == category)
    }

    fn accuracy(&self, category: Category) -> Option<f64> {
        self.category(category).map(CategoryScore::accuracy)
    }

    fn mean(values: &[Option<f64>]) -> Option<f64> {
        let v: Option<Vec<f64>> = values.iter().copied().collect();
        v.map(|v| v.iter().sum::<f64>() / v.len() as f64)
    }

    pub fn sections(&self) -> Sections {
        use Category::*;
        let simple = Self::mean(&[
            self.accuracy(SimplePython),
            self.accuracy(SimpleJava),
            self.accuracy(SimpleJavascript),
        ]);
        let non_live = Self::mean(&[
            simple,
            self.accuracy(Multiple),
            self.accuracy(Parallel),
            self.accuracy(ParallelMultiple),
        ]);
        let live_parts: Option<Vec<&CategoryScore>> =
            [LiveSimple, LiveMultiple, LiveParallel, LiveParallelMultiple]
                .iter()
                .map(|&c| self.category(c))
                .collect();
        let live = live_parts.and_then(|parts| {
            let total: usize = parts.iter().map(|p| p.total).sum();
            let correct: usize = parts.iter().map(|p| p.correct).sum();
            (total > 0).then(|| 100.0 * correct as f64 / total as f64)
        });
        Sections {
            non_live,
            non_live_simple: simple,
            live,
            irrelevance: Self::mean(&[self.accuracy(Irrelevance), self.accuracy(LiveIrrelevance)]),
            relevance: self.accuracy(LiveRelevance),
        }
    }

    /// The figures for `metrics.json`: percentages (0–100) under `bfcl`, sections first, then
    /// per category `accuracy`, `correct` and `total`. Sections not run are absent; multi-turn
    /// and agentic are listed under `not_run`.
    pub fn to_metrics_json(&self) -> Value {
        let s = self.sections();
        let mut sections = serde_json::Map::new();
        for (name, value) in [
            ("non_live", s.non_live),
            ("non_live_simple", s.non_live_simple),
            ("live", s.live),
            ("irrelevance", s.irrelevance),
            ("relevance", s.relevance),
        ] {
            if let Some(v) = value {
                sections.insert(name.into(), json!(v));
            }
        }
        let categories: serde_json::Map<String, Value> = self
            .categories
            .iter()
            .map(|c| {
                (
                    c.category.name().to_string(),
                    json!({"accuracy": c.accuracy(), "correct": c.correct, "total": c.total}),
                )
            })
            .collect();
        let mut bfcl = json!({
            "sections": sections,
            "categories": categories,
            "entries": self.entries.len(),
            "not_run": ["multi_turn", "agentic"],
        });
        if let Some(limit) = self.limit {
            bfcl["limit_per_category"] = json!(limit);
        }
        json!({ "bfcl": bfcl })
    }
}

/// One line of a BFCL result file: the entry id and the model's raw text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultLine {
    pub id: String,
    /// The raw model text; `None` when the line's `result` is not a string (BFCL's multi-turn
    /// results are lists), which is an error only if the line is to be scored.
    pub result: Option<String>,
    /// What `result` is, for messages: "a string", "a list", ...
    pub result_type: &'static str,
    pub path: PathBuf,
    /// 1-based.
    pub line: usize,
}

/// Reads BFCL result lines (`{"id": ..., "result": "<raw model text>", ...}`, other fields
/// ignored) from a file, or from every `*_result.json` file under a directory (BFCL's own
/// `result/<model>/...` layout), in path order.
pub fn read_results(path: &Path) -> Result<Vec<ResultLine>, EvalError> {
    let mut files = Vec::new();
    if path.is_dir() {
        collect_result_files(path, &mut files)?;
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut out = Vec::new();
    for file in files {
        let text = read_lines(&file)?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            out.push(parse_result_line(&file, i + 1, line)?);
        }
    }
    Ok(out)
}

fn collect_result_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), EvalError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err(&path))?;
        if kind.is_dir() {
            collect_result_files(&path, out)?;
        } else if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with("_result.json"))
        {
            out.push(path);
        }
    }
    Ok(())
}

fn parse_result_line(path: &Path, line: usize, text: &str) -> Result<ResultLine, EvalError> {
    let bad = |message: String| EvalError::ResultLine {
        path: path.to_path_buf(),
        line,
        message,
    };
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let Value::Object(o) = v else {
        return Err(bad("not a JSON object".into()));
    };
    let id = match o.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("`id` is not a string".into())),
        None => return Err(bad("no `id`".into())),
    };
    let (result, result_type) = match o.get("result") {
        Some(Value::String(s)) => (Some(s.clone()), "a string"),
        Some(Value::Array(_)) => (None, "a list"),
        Some(Value::Object(_)) => (None, "an object"),
        Some(Value::Null) => (None, "null"),
        Some(_) => (None, "a number or boolean"),
        None => return Err(bad(format!("no `result` for `{id}`"))),
    };
    Ok(ResultLine {
        id,
        result,
        result_type,
        path: path.to_path_buf(),
        line,
    })
}

/// Scores a BFCL result file (or directory, see [`read_results`]) against the data in
/// `data_dir`, as `bfcl evaluate` would for BFCL's Qwen FC handler.
///
/// - `categories`: the categories to score; `None` means every category with at least one line
///   in the results.
/// - `limit`: score only the first `limit` entries of each category (data order); results for
///   later entries are ignored.
///
/// Every entry to score must have exactly one result line, whose `result` is a string. Lines for
/// categories not selected, or for BFCL categories forge does not score (multi-turn, agentic,
/// format sensitivity), are counted in [`Scores::ignored_results`]; lines for entries past the
/// limit are skipped; an id that is no BFCL entry is an error, as is a repeated id.
pub fn score_results(
    data_dir: &Path,
    results_path: &Path,
    categories: Option<&[Category]>,
    limit: Option<usize>,
) -> Result<Scores, EvalError> {
    let results = read_results(results_path)?;
    let mut by_id: HashMap<&str, &ResultLine> = HashMap::with_capacity(results.len());
    for r in &results {
        if let Some(first) = by_id.insert(&r.id, r) {
            return Err(EvalError::DuplicateId {
                path: r.path.clone(),
                line: r.line,
                id: r.id.clone(),
                first_path: first.path.clone(),
                first_line: first.line,
            });
        }
    }
    let mut ignored = 0;
    for r in &results {
        if Category::of_id(&r.id).is_none() {
            if !is_unscored_bfcl_id(&r.id) {
                return Err(EvalError::UnknownId {
                    path: r.path.clone(),
                    line: r.line,
                    id: r.id.clone(),
                });
            }
            ignored += 1;
        }
    }
    let selected: Vec<Category> = match categories {
        Some(c) => c.to_vec(),
        None => {
            let present: HashSet<Category> = results
                .iter()
                .filter_map(|r| Category::of_id(&r.id))
                .collect();
            Category::ALL
                .into_iter()
                .filter(|c| present.contains(c))
                .collect()
        }
    };
    if selected.is_empty() {
        return Err(EvalError::NoResults {
            path: results_path.to_path_buf(),
        });
    }
    let data = Dataset::load(data_dir, &selected, limit)?;
    for r in &results {
        match Category::of_id(&r.id) {
            Some(c) if selected.contains(&c) && !data.all_ids.contains(&r.id) => {
                return Err(EvalError::UnknownId {
                    path: r.path.clone(),
                    line: r.line,
                    id: r.id.clone(),
                });
            }
            Some(c) if !selected.contains(&c) => ignored += 1,
            _ => {}
        }
    }

    let mut pairs = Vec::with_capacity(data.entries.len());
    for category in &selected {
        let entries: Vec<&Entry> = data
            .entries
            .iter()
            .filter(|e| e.category == *category)
            .collect();
        let missing: Vec<&&Entry> = entries
            .iter()
            .filter(|e| !by_id.contains_key(e.id.as_str()))
            .collect();
        if let Some(first) = missing.first() {
            return Err(EvalError::MissingResults {
                path: results_path.to_path_buf(),
                category: *category,
                missing: missing.len(),
                total: entries.len(),
                first: first.id.clone(),
            });
        }
        for e in entries {
            let r = by_id[e.id.as_str()];
            let Some(text) = r.result.as_deref() else {
                return Err(EvalError::ResultLine {
                    path: r.path.clone(),
                    line: r.line,
                    message: format!(
                        "`result` of `{}` is {}, not a string: forge scores the raw text of a Qwen-format model, as BFCL's Qwen FC handler does",
                        r.id, r.result_type
                    ),
                });
            };
            pairs.push((e, text));
        }
    }
    // Beyond the lines counted as ignored above, results past the limit are silently skipped.
    let verdicts: Vec<EntryVerdict> = pairs
        .par_iter()
        .map(|(entry, text)| score_entry(entry, text))
        .collect();
    let mut scores = Scores::from_verdicts(verdicts, limit);
    scores.ignored_results = ignored;
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const FUNC: &str = r#"[{"name": "f", "description": "d", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}]"#;

    /// A data dir with two simple_python entries and one irrelevance entry.
    fn data() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let q = r#"[[{"role": "user", "content": "q"}]]"#;
        let line = |id: &str| format!(r#"{{"id": "{id}", "question": {q}, "function": {FUNC}}}"#);
        fs::write(
            dir.path().join("BFCL_v4_simple_python.json"),
            format!("{}\n{}\n", line("simple_python_0"), line("simple_python_1")),
        )
        .unwrap();
        fs::write(
            dir.path().join("BFCL_v4_irrelevance.json"),
            line("irrelevance_0"),
        )
        .unwrap();
        fs::create_dir(dir.path().join("possible_answer")).unwrap();
        fs::write(
            dir.path()
                .join("possible_answer/BFCL_v4_simple_python.json"),
            "{\"id\": \"simple_python_0\", \"ground_truth\": [{\"f\": {\"x\": [1]}}]}\n\
             {\"id\": \"simple_python_1\", \"ground_truth\": [{\"f\": {\"x\": [2]}}]}\n",
        )
        .unwrap();
        dir
    }

    fn call(x: i64) -> String {
        format!(
            "<tool_call>\\n{{\\\"name\\\": \\\"f\\\", \\\"arguments\\\": {{\\\"x\\\": {x}}}}}\\n</tool_call>"
        )
    }

    fn results(dir: &Path, lines: &[String]) -> PathBuf {
        let path = dir.join("results.jsonl");
        fs::write(&path, lines.join("\n")).unwrap();
        path
    }

    fn line(id: &str, result: &str) -> String {
        format!(r#"{{"id": "{id}", "result": "{result}"}}"#)
    }

    #[test]
    fn scores_a_results_file() {
        let d = data();
        let r = results(
            d.path(),
            &[
                line("simple_python_1", &call(3)),
                line("simple_python_0", &call(1)),
                line("irrelevance_0", "No tool fits."),
                String::new(),
            ],
        );
        let s = score_results(d.path(), &r, None, None).unwrap();
        assert_eq!(
            s.entries
                .iter()
                .map(|v| (v.id.as_str(), v.valid, v.error_type.as_deref()))
                .collect::<Vec<_>>(),
            [
                ("simple_python_0", true, None),
                ("simple_python_1", false, Some("value_error:others")),
                ("irrelevance_0", true, None),
            ]
        );
        assert_eq!(s.category(Category::SimplePython).unwrap().correct, 1);
        assert_eq!(
            s.sections().non_live,
            None,
            "java and the rest were not run"
        );

        let only = score_results(d.path(), &r, Some(&[Category::SimplePython]), Some(1)).unwrap();
        assert_eq!(only.entries.len(), 1);
        assert_eq!(only.ignored_results, 1, "the irrelevance line");
    }

    fn err(d: &Path, lines: &[String], categories: Option<&[Category]>) -> String {
        let r = results(d, lines);
        score_results(d, &r, categories, None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_results_are_errors_with_their_place() {
        let d = data();
        let p = d.path();
        let e = err(p, &[line("simple_python_0", "x"), "{oops".into()], None);
        assert!(e.contains("results.jsonl:2: not valid JSON"), "{e}");
        let e = err(p, &["[1]".into()], None);
        assert!(e.contains("results.jsonl:1: not a JSON object"), "{e}");
        let e = err(p, &[r#"{"result": "x"}"#.into()], None);
        assert!(e.contains("results.jsonl:1: no `id`"), "{e}");
        let e = err(p, &[r#"{"id": "simple_python_0"}"#.into()], None);
        assert!(
            e.contains("results.jsonl:1: no `result` for `simple_python_0`"),
            "{e}"
        );
        let e = err(
            p,
            &[
                line("simple_python_0", "a"),
                line("simple_python_1", "b"),
                line("simple_python_0", "c"),
            ],
            None,
        );
        assert!(
            e.contains("results.jsonl:3: a second result for `simple_python_0`"),
            "{e}"
        );
        assert!(e.contains("results.jsonl:1)"), "{e}");
        let e = err(
            p,
            &[line("simple_python_0", "a"), line("simple_python_7", "b")],
            None,
        );
        assert!(
            e.contains("results.jsonl:2: `simple_python_7` is not an entry"),
            "{e}"
        );
        let e = err(p, &[line("nonsense", "a")], None);
        assert!(e.contains("`nonsense` is not an entry"), "{e}");
        let e = err(p, &[line("simple_python_1", "a")], None);
        assert!(
            e.contains("no result for 1 of the 2 simple_python entries to score (the first: `simple_python_0`)"),
            "{e}"
        );
        let e = err(
            p,
            &[
                line("simple_python_0", "a"),
                r#"{"id": "simple_python_1", "result": [["f()"]]}"#.into(),
            ],
            None,
        );
        assert!(
            e.contains("results.jsonl:2: `result` of `simple_python_1` is a list"),
            "{e}"
        );
        let e = err(
            p,
            &[r#"{"id": "multi_turn_base_0", "result": [[]]}"#.into()],
            None,
        );
        assert!(e.contains("no results for any category"), "{e}");
        let e = err(
            p,
            &[line("irrelevance_0", "a")],
            Some(&[Category::Multiple]),
        );
        assert!(e.contains("BFCL_v4_multiple.json"), "{e}");
        let missing = p.join("nowhere.jsonl");
        let e = score_results(p, &missing, None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nowhere.jsonl"), "{e}");
    }

    #[test]
    fn bad_data_is_an_error_with_its_place() {
        let d = data();
        let answers = d.path().join("possible_answer/BFCL_v4_simple_python.json");
        let good = fs::read_to_string(&answers).unwrap();
        fs::write(&answers, good.replace("simple_python_1", "simple_python_9")).unwrap();
        let e = Dataset::load(d.path(), &[Category::SimplePython], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("BFCL_v4_simple_python.json:2: possible answer `simple_python_9` does not line up with entry `simple_python_1`"), "{e}");
        fs::write(&answers, good.lines().next().unwrap()).unwrap();
        let e = Dataset::load(d.path(), &[Category::SimplePython], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 possible answers for 2 entries"), "{e}");
        fs::write(
            d.path().join("BFCL_v4_irrelevance.json"),
            "{\"id\": \"irrelevance_0\"",
        )
        .unwrap();
        let e = Dataset::load(d.path(), &[Category::Irrelevance], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("BFCL_v4_irrelevance.json:1: not valid JSON"),
            "{e}"
        );
        fs::write(
            d.path().join("BFCL_v4_irrelevance.json"),
            "{\"id\": \"parallel_0\"}",
        )
        .unwrap();
        let e = Dataset::load(d.path(), &[Category::Irrelevance], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("entry `parallel_0` is not of category irrelevance"),
            "{e}"
        );
    }

    #[test]
    fn results_directories_in_bfcls_layout() {
        let d = data();
        let sub = d.path().join("result/Qwen_Qwen3/non_live");
        fs::create_dir_all(&sub).unwrap();
        fs::write(
            sub.join("BFCL_v4_simple_python_result.json"),
            format!(
                "{}\n{}\n",
                line("simple_python_0", &call(1)),
                line("simple_python_1", &call(2))
            ),
        )
        .unwrap();
        fs::write(sub.join("notes.txt"), "not results").unwrap();
        let s = score_results(d.path(), &d.path().join("result"), None, None).unwrap();
        assert_eq!(s.category(Category::SimplePython).unwrap().correct, 2);
    }

    #[test]
    fn categories_parse_by_name_and_group() {
        assert_eq!(Category::parse_list("all").unwrap().len(), 13);
        assert_eq!(
            Category::parse_list("live_simple, simple_java,live_simple").unwrap(),
            [Category::SimpleJava, Category::LiveSimple]
        );
        assert_eq!(Category::parse_list("non_live").unwrap().len(), 7);
        assert_eq!(Category::parse_list("live").unwrap().len(), 6);
        let e = Category::parse_list("simple").unwrap_err().to_string();
        assert!(e.contains("unknown BFCL category `simple`"), "{e}");
        assert_eq!(
            Category::of_id("live_parallel_multiple_3-1-0"),
            Some(Category::LiveParallelMultiple)
        );
        assert_eq!(Category::of_id("multi_turn_base_3"), None);
        assert_eq!(Category::of_id("x"), None);
    }
}
