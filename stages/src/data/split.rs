//! Stage `split`: conversations → train / dev / test.
//!
//! A row's split is a pure function of the seed and its normalized query (lowercased, whitespace
//! collapsed), through blake3: adding rows never moves existing ones, reordering the input moves
//! none, and every phrasing-equivalent copy of a query lands in the same split, so no test query
//! leaks into train. Exact duplicates (same normalized query, same tools) are removed first; the
//! first occurrence is kept and the others are quarantined as `duplicate of <id>`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::io::{self, JsonlWriter, RowCounts, RowLedger};
use super::schema::{Conversation, Quarantined, Role};
use crate::contract::{Context, Input, Report, StageError, TypedStage};

/// Stage `split`.
pub struct Split;

/// The split ratios (each in [0, 1], summing to 1 within 1e-9) and the hash seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSplitParams")]
pub struct SplitParams {
    pub train: f64,
    pub dev: f64,
    pub test: f64,
    pub seed: u64,
}

impl Default for SplitParams {
    fn default() -> Self {
        SplitParams {
            train: 0.8,
            dev: 0.1,
            test: 0.1,
            seed: 7,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSplitParams {
    #[serde(default = "default_train")]
    train: f64,
    #[serde(default = "default_held_out")]
    dev: f64,
    #[serde(default = "default_held_out")]
    test: f64,
    #[serde(default = "default_seed")]
    seed: u64,
}

fn default_train() -> f64 {
    SplitParams::default().train
}
fn default_held_out() -> f64 {
    SplitParams::default().dev
}
fn default_seed() -> u64 {
    SplitParams::default().seed
}

impl TryFrom<RawSplitParams> for SplitParams {
    type Error = String;

    fn try_from(raw: RawSplitParams) -> Result<Self, String> {
        let params = SplitParams {
            train: raw.train,
            dev: raw.dev,
            test: raw.test,
            seed: raw.seed,
        };
        params.check()?;
        Ok(params)
    }
}

impl SplitParams {
    /// Each ratio in [0, 1] and their sum 1 within 1e-9.
    pub fn check(&self) -> Result<(), String> {
        for (name, r) in [
            ("train", self.train),
            ("dev", self.dev),
            ("test", self.test),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("ratio `{name}` is {r}; it must be between 0 and 1"));
            }
        }
        let sum = self.train + self.dev + self.test;
        if (sum - 1.0).abs() > 1e-9 {
            return Err(format!(
                "ratios train {} + dev {} + test {} = {sum}; they must sum to 1",
                self.train, self.dev, self.test
            ));
        }
        Ok(())
    }
}

/// One of the three splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Train,
    Dev,
    Test,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Train, Part::Dev, Part::Test];

    /// `train.jsonl`, `dev.jsonl`, `test.jsonl`.
    pub fn file_name(self) -> &'static str {
        match self {
            Part::Train => "train.jsonl",
            Part::Dev => "dev.jsonl",
            Part::Test => "test.jsonl",
        }
    }
}

/// Lowercased, whitespace runs collapsed to one space, trimmed.
pub fn normalize_query(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// A conversation's query: its user messages, joined, normalized.
pub fn query_of(conversation: &Conversation) -> String {
    user_query(
        conversation
            .messages
            .iter()
            .filter(|m| m.role == Role::User)
            .map(|m| m.content.as_str()),
    )
}

fn user_query<'a>(user_messages: impl Iterator<Item = &'a str>) -> String {
    let mut text = String::new();
    for content in user_messages {
        text.push_str(content);
        text.push('\n');
    }
    normalize_query(&text)
}

/// The split of a normalized query: a uniform draw in [0, 1) from blake3(seed, query) against the
/// cumulative ratios. A split with ratio 0 never gets a row.
pub fn assign(params: &SplitParams, normalized_query: &str) -> Part {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&params.seed.to_le_bytes());
    hasher.update(normalized_query.as_bytes());
    let bytes = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&bytes.as_bytes()[..8]);
    let u = (u64::from_le_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
    let ratios = [params.train, params.dev, params.test];
    let mut cumulative = 0.0;
    let mut last = Part::Train;
    for (part, ratio) in Part::ALL.into_iter().zip(ratios) {
        if ratio <= 0.0 {
            continue;
        }
        cumulative += ratio;
        last = part;
        if u < cumulative {
            return part;
        }
    }
    last
}

/// The identity of a row for de-duplication: its normalized query and its tools' JSON text (in
/// any order).
fn duplicate_key(query: &str, tools: &[&RawValue]) -> [u8; 32] {
    let mut tools: Vec<&str> = tools.iter().map(|t| t.get()).collect();
    tools.sort_unstable();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(query.len() as u64).to_le_bytes());
    hasher.update(query.as_bytes());
    for t in tools {
        hasher.update(&(t.len() as u64).to_le_bytes());
        hasher.update(t.as_bytes());
    }
    *hasher.finalize().as_bytes()
}

/// The parts of a [`Conversation`] row that split reads, borrowed from its text.
#[derive(Deserialize)]
struct RowView<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    messages: Vec<MessageView<'a>>,
    #[serde(borrow)]
    tools: Vec<&'a RawValue>,
    #[serde(borrow, rename = "gold_calls")]
    _gold_calls: &'a RawValue,
}

#[derive(Deserialize)]
struct MessageView<'a> {
    role: Role,
    #[serde(default, borrow)]
    content: Cow<'a, str>,
}

/// metrics.json of stage `split`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    #[serde(flatten)]
    pub rows: RowCounts,
    pub duplicates: u64,
    pub train: u64,
    pub dev: u64,
    pub test: u64,
}

impl TypedStage for Split {
    type Params = SplitParams;
    const KIND: &'static str = "split";
    const VERSION: u32 = 1;
    const INPUTS: &'static [Input] = &[Input {
        name: "data",
        required: true,
    }];
    const ABOUT: &'static str =
        "de-duplicates conversations and splits them train/dev/test by a seeded hash of the query";

    fn run(&self, params: &SplitParams, ctx: &Context<'_>) -> Result<Report, StageError> {
        params.check().map_err(StageError::Failed)?;
        let rows = io::RowFile::open(ctx.input("data")?)?;
        let mut writers = Part::ALL
            .iter()
            .map(|p| JsonlWriter::create(ctx.out.join(p.file_name())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ledger = RowLedger::create(ctx.out)?;
        let mut seen: HashMap<[u8; 32], String> = HashMap::with_capacity(rows.len());
        let mut duplicates = 0;
        let total = rows.len() as u64;
        for (index, raw) in rows.iter() {
            if index % 4096 == 0 {
                ctx.check_cancelled()?;
                ctx.progress.update(index as u64, Some(total), "rows");
            }
            let row: RowView<'_> = match serde_json::from_slice(raw) {
                Ok(row) => row,
                Err(e) => {
                    ledger.quarantine(io::MALFORMED, &io::malformed(index, &e, raw))?;
                    continue;
                }
            };
            let query = user_query(
                row.messages
                    .iter()
                    .filter(|m| m.role == Role::User)
                    .map(|m| m.content.as_ref()),
            );
            match seen.entry(duplicate_key(&query, &row.tools)) {
                Entry::Occupied(first) => {
                    duplicates += 1;
                    let q = Quarantined {
                        index,
                        id: Some(row.id.into_owned()),
                        reason: format!("duplicate of {}", first.get()),
                        row: io::row_value(raw),
                    };
                    ledger.quarantine("duplicate", &q)?;
                }
                Entry::Vacant(slot) => {
                    slot.insert(row.id.into_owned());
                    writers[assign(params, &query) as usize].write_raw(raw)?;
                    ledger.keep();
                }
            }
        }
        let mut sizes = [0u64; 3];
        for (size, writer) in sizes.iter_mut().zip(writers) {
            *size = writer.finish()?;
        }
        let metrics = SplitMetrics {
            rows: ledger.finish()?,
            duplicates,
            train: sizes[0],
            dev: sizes[1],
            test: sizes[2],
        };
        io::write_metrics(ctx.out, &metrics)?;
        Ok(Report {
            summary: format!(
                "{} train, {} dev, {} test; {} duplicates, {} quarantined",
                metrics.train, metrics.dev, metrics.test, duplicates, metrics.rows.rows_quarantined
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::AtomicBool;

    use serde_json::json;

    use super::*;
    use crate::contract::{Device, NoProgress, Stage};
    use crate::data::schema::{Message, ToolSpec};

    fn conv(id: &str, query: &str, tool: &str) -> Conversation {
        Conversation {
            id: id.into(),
            messages: vec![Message {
                role: Role::User,
                content: query.into(),
                tool_calls: vec![],
            }],
            tools: vec![ToolSpec {
                name: tool.into(),
                description: String::new(),
                parameters: json!({"type": "object"}),
            }],
            gold_calls: vec![],
        }
    }

    #[test]
    fn queries_normalize() {
        assert_eq!(normalize_query("  Hello\t\n  WORLD  "), "hello world");
        assert_eq!(normalize_query("ÉTÉ  à Paris"), "été à paris");
        assert_eq!(normalize_query(" \n "), "");
    }

    #[test]
    fn params_default_and_are_checked_when_parsed() {
        let resolved = Split.check_params(&json!({})).unwrap();
        assert_eq!(
            resolved,
            json!({"train": 0.8, "dev": 0.1, "test": 0.1, "seed": 7})
        );
        let ok = Split.check_params(&json!({"train": 0.7, "dev": 0.2, "test": 0.1, "seed": 1}));
        assert_eq!(ok.unwrap()["seed"], 1);
        assert!(
            Split
                .check_params(&json!({"train": 1.0, "dev": 0.0, "test": 0.0}))
                .is_ok()
        );
        let err = Split.check_params(&json!({"train": 0.9})).unwrap_err();
        assert!(err.message.contains("must sum to 1"), "{err}");
        let err = Split
            .check_params(&json!({"train": 1.2, "dev": -0.1, "test": -0.1}))
            .unwrap_err();
        assert!(err.message.contains("between 0 and 1"), "{err}");
        let err = Split.check_params(&json!({"trian": 0.8})).unwrap_err();
        assert!(err.message.contains("trian"), "{err}");
    }

    #[test]
    fn assignment_follows_the_ratios_and_the_seed() {
        let params = SplitParams::default();
        let mut counts = HashMap::new();
        let n = 20_000;
        for i in 0..n {
            *counts
                .entry(assign(&params, &format!("query {i}")))
                .or_insert(0) += 1;
        }
        let share = |p: Part| f64::from(counts[&p]) / f64::from(n);
        assert!((share(Part::Train) - 0.8).abs() < 0.02, "{counts:?}");
        assert!((share(Part::Dev) - 0.1).abs() < 0.02, "{counts:?}");
        assert!((share(Part::Test) - 0.1).abs() < 0.02, "{counts:?}");

        let other = SplitParams {
            seed: 8,
            ..SplitParams::default()
        };
        let moved = (0..1000)
            .filter(|i| {
                let q = format!("query {i}");
                assign(&params, &q) != assign(&other, &q)
            })
            .count();
        assert!(moved > 100, "another seed should reshuffle, moved {moved}");

        let only_test = SplitParams {
            train: 0.0,
            dev: 0.0,
            test: 1.0,
            seed: 7,
        };
        assert!((0..200).all(|i| assign(&only_test, &format!("q{i}")) == Part::Test));
        let no_test = SplitParams {
            train: 0.5,
            dev: 0.5 - 1e-10,
            test: 0.0,
            seed: 7,
        };
        assert!((0..2000).all(|i| assign(&no_test, &format!("q{i}")) != Part::Test));
    }

    fn run_split(dir: &Path, name: &str, rows: &[Conversation], params: &SplitParams) -> PathBuf {
        let input = dir.join(format!("{name}.jsonl"));
        io::write_jsonl(&input, rows).unwrap();
        let out = dir.join(name);
        fs::create_dir(&out).unwrap();
        let inputs: BTreeMap<String, PathBuf> = [("data".to_string(), input)].into();
        let cancel = AtomicBool::new(false);
        let ctx = Context {
            stage: "split",
            inputs: &inputs,
            out: &out,
            state: crate::contract::unused_state(),
            device: Device::Cpu,
            progress: &NoProgress,
            cancel: &cancel,
            seed: 0,
        };
        TypedStage::run(&Split, params, &ctx).unwrap();
        out
    }

    fn part_of(out: &Path) -> HashMap<String, Part> {
        let mut parts = HashMap::new();
        for part in Part::ALL {
            for (_, row) in io::read_rows::<Conversation>(&out.join(part.file_name())).unwrap() {
                assert!(parts.insert(row.unwrap().id, part).is_none());
            }
        }
        parts
    }

    #[test]
    fn stage_dedups_then_splits_stably() {
        let dir = tempfile::tempdir().unwrap();
        let params = SplitParams {
            train: 0.5,
            dev: 0.25,
            test: 0.25,
            seed: 3,
        };
        let mut rows: Vec<Conversation> = (0..300)
            .map(|i| conv(&format!("r-{i}"), &format!("Query number {i}"), "t"))
            .collect();
        rows.push(conv("dup-a", "  QUERY   number 5 ", "t"));
        rows.push(conv("same-query-other-tool", "query number 5", "u"));
        rows.push(conv("dup-b", "query number 7", "t"));

        let out = run_split(dir.path(), "first", &rows, &params);
        let parts = part_of(&out);
        assert_eq!(parts.len(), 301);
        assert!(!parts.contains_key("dup-a") && !parts.contains_key("dup-b"));
        assert_eq!(
            parts["same-query-other-tool"], parts["r-5"],
            "same query, same split"
        );

        let m: SplitMetrics =
            serde_json::from_slice(&fs::read(out.join(io::METRICS_FILE)).unwrap()).unwrap();
        assert_eq!(m.duplicates, 2);
        assert_eq!(m.rows.rows_in, 303);
        assert_eq!(m.rows.rows_in, m.rows.rows_kept + m.rows.rows_quarantined);
        assert_eq!(m.train + m.dev + m.test, m.rows.rows_kept);
        assert_eq!(m.rows.quarantined_by_reason["duplicate"], 2);
        for part in Part::ALL {
            assert!(
                parts.values().filter(|p| **p == part).count() > 30,
                "{part:?} {m:?}"
            );
        }
        let q: Vec<Quarantined> = io::read_rows::<Quarantined>(&out.join(io::QUARANTINE_FILE))
            .unwrap()
            .map(|(_, r)| r.unwrap())
            .collect();
        assert_eq!(q.len(), 2);
        assert_eq!(
            (q[0].index, q[0].reason.as_str()),
            (300, "duplicate of r-5")
        );
        assert_eq!(q[1].reason, "duplicate of r-7");

        // Reordered, with new rows added: every earlier row keeps its split.
        let mut more = rows.clone();
        more.reverse();
        more.extend((300..400).map(|i| conv(&format!("r-{i}"), &format!("Query number {i}"), "t")));
        let out2 = run_split(dir.path(), "second", &more, &params);
        let parts2 = part_of(&out2);
        for (id, part) in &parts {
            if id != "r-5" && id != "r-7" {
                assert_eq!(parts2.get(id), Some(part), "{id} moved");
            }
        }
        assert_eq!(parts2.len(), 401);
    }
}
