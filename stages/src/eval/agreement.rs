//! forge's BFCL scoring against bfcl-eval's own verdicts (the fixture made by
//! `stages/fixtures/bfcl/gen_agreement.py`, which runs the official decoder and checker).
//!
//! The BFCL data comes from `scripts/fetch-bfcl.sh` into `<workspace>/target/test-assets/
//! bfcl-data` on first use; if the fetch fails, the tests fail.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize;

use super::bfcl::{Category, Dataset, Entry, EntryVerdict, Scores, score_entry, score_results};
use super::parse::render_prompt;

/// The entries whose gold answer the official checker itself rejects (data bugs in BFCL V4), with
/// the official error type. forge must reject them too: its numbers are leaderboard numbers.
const GOLD_REJECTED: [(&str, &str); 8] = [
    // `parts` is an ArrayList of `any`: its elements convert to strings, but the answer holds
    // the int 42 and the bool true, which no string equals.
    ("simple_java_36", "value_error:list/tuple"),
    // The answer for the HashMap `meta` is {"format": "epoch_millis"}, a bare string where a list
    // of accepted values belongs: the checker compares against its characters.
    ("simple_java_64", "value_error:dict_value"),
    // Same as simple_java_36: `true` among `any`-typed ArrayList elements.
    ("simple_java_65", "value_error:list/tuple"),
    // The answers name a parameter that is not required but omit one that is.
    (
        "live_simple_106-63-0",
        "simple_function_checker:missing_required",
    ),
    (
        "live_simple_112-68-0",
        "simple_function_checker:missing_required",
    ),
    (
        "live_multiple_507-149-4",
        "simple_function_checker:missing_required",
    ),
    // The answer's `_from` is not a parameter of the function (it declares `from`).
    (
        "live_multiple_862-181-3",
        "simple_function_checker:unexpected_param",
    ),
    (
        "live_multiple_964-207-0",
        "simple_function_checker:missing_required",
    ),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

/// `<workspace>/target/test-assets/bfcl-data`, fetched once per test process.
pub(crate) fn data_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = workspace();
        let dir = root.join("target/test-assets/bfcl-data");
        let out = std::process::Command::new("bash")
            .arg(root.join("scripts/fetch-bfcl.sh"))
            .arg(&dir)
            .output()
            .expect("run scripts/fetch-bfcl.sh");
        assert!(
            out.status.success(),
            "scripts/fetch-bfcl.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn dataset() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| Dataset::load(data_dir(), &Category::ALL, None).expect("BFCL data loads"))
}

fn entries_by_id() -> HashMap<&'static str, &'static Entry> {
    dataset()
        .entries()
        .iter()
        .map(|e| (e.id.as_str(), e))
        .collect()
}

/// The lines of a gzipped JSONL fixture, its header line skipped.
fn fixture<T: for<'de> Deserialize<'de>>(name: &str) -> Vec<T> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/bfcl")
        .join(name);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .skip(1)
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 2))
        })
        .collect()
}

#[derive(Debug, Deserialize)]
struct Case {
    id: String,
    category: Category,
    mutation: String,
    output: String,
    valid: bool,
    error_type: Option<String>,
}

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| fixture("agreement.jsonl.gz"))
}

#[test]
fn forge_agrees_with_bfcl_eval_on_every_case() {
    let entries = entries_by_id();
    let cases = cases();
    assert!(cases.len() >= 3000, "only {} cases", cases.len());
    let categories: BTreeSet<Category> = cases.iter().map(|c| c.category).collect();
    assert_eq!(categories.len(), 13, "categories covered: {categories:?}");
    let mutations: BTreeSet<&str> = cases.iter().map(|c| c.mutation.as_str()).collect();
    for m in [
        "gold",
        "wrong_value",
        "wrong_type",
        "missing_required",
        "extra_param",
        "wrong_function",
        "wrong_count",
        "reordered",
        "unparsable",
        "no_call",
        "args_as_string",
        "missing_newlines",
    ] {
        assert!(mutations.contains(m), "no `{m}` case in the fixture");
    }
    let mut mismatches = Vec::new();
    let mut by_error: BTreeMap<String, usize> = BTreeMap::new();
    for case in cases {
        let entry = entries
            .get(case.id.as_str())
            .unwrap_or_else(|| panic!("fixture case for unknown entry {}", case.id));
        assert_eq!(entry.category, case.category, "{}", case.id);
        let got: EntryVerdict = score_entry(entry, &case.output);
        *by_error
            .entry(case.error_type.clone().unwrap_or_else(|| "valid".into()))
            .or_default() += 1;
        if got.valid != case.valid || got.error_type != case.error_type {
            mismatches.push(format!(
                "{} [{}]: official {:?}, forge {:?} ({:?})\n    output: {:?}",
                case.id, case.mutation, case.error_type, got.error_type, got.error, case.output
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases disagree with bfcl-eval:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The fixture exercises failures all over the checker, not only the easy ones.
    for kind in [
        "ast_decoder:decoder_failed",
        "type_error:simple",
        "type_error:nested",
        "type_error:java",
        "type_error:js",
        "value_error:string",
        "value_error:list/tuple",
        "value_error:dict_value",
        "value_error:dict_key",
        "value_error:others",
        "simple_function_checker:missing_optional",
        "parallel_function_checker_no_order:cannot_find_match",
        "irrelevance_error:decoder_success",
        "relevance_error:decoder_failed",
        // Where the official converter raises (a 5000-digit Java integer): forge says so too.
        "exception:ValueError",
    ] {
        assert!(
            by_error.contains_key(kind),
            "no case of {kind}: {by_error:?}"
        );
    }
}

#[test]
fn gold_answers_score_full_marks_except_where_bfcl_rejects_its_own_gold() {
    let entries = entries_by_id();
    let gold: Vec<&Case> = cases().iter().filter(|c| c.mutation == "gold").collect();
    let ids: BTreeSet<&str> = gold.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids.len(),
        dataset().entries().len(),
        "every entry has a gold case"
    );

    let verdicts: Vec<EntryVerdict> = gold
        .iter()
        .map(|c| score_entry(entries[c.id.as_str()], &c.output))
        .collect();
    let rejected: Vec<(&str, &str)> = verdicts
        .iter()
        .filter(|v| !v.valid)
        .map(|v| (v.id.as_str(), v.error_type.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(rejected, GOLD_REJECTED, "gold answers forge rejects");
    let official: Vec<(&str, &str)> = gold
        .iter()
        .filter(|c| !c.valid)
        .map(|c| (c.id.as_str(), c.error_type.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(official, GOLD_REJECTED, "gold answers bfcl-eval rejects");

    let scores = Scores::from_verdicts(verdicts, None);
    for c in &scores.categories {
        let rejects = GOLD_REJECTED
            .iter()
            .filter(|(id, _)| Category::of_id(id) == Some(c.category))
            .count();
        assert_eq!(c.correct + rejects, c.total, "{}", c.category);
    }
}

#[derive(Debug, Deserialize)]
struct PromptHash {
    id: String,
    blake3: String,
}

#[test]
fn prompts_are_the_qwen_fc_handlers_byte_for_byte() {
    let entries = entries_by_id();
    let hashes: Vec<PromptHash> = fixture("prompts.jsonl.gz");
    assert_eq!(hashes.len(), dataset().entries().len());
    let mut differ = Vec::new();
    for h in &hashes {
        let prompt = render_prompt(entries[h.id.as_str()]);
        if blake3::hash(prompt.as_bytes()).to_hex().as_str() != h.blake3 {
            differ.push(h.id.as_str());
        }
    }
    assert!(
        differ.is_empty(),
        "{} of {} prompts differ from bfcl-eval's: {:?}",
        differ.len(),
        hashes.len(),
        &differ[..differ.len().min(20)]
    );
}

#[test]
fn prompt_layout() {
    let entry = entries_by_id()["simple_java_0"];
    let prompt = render_prompt(entry);
    assert!(
        prompt.starts_with("<|im_start|>system\n# Tools\n\nYou may call one or more functions")
    );
    assert!(prompt.contains("Note that the provided function is in Java 8 SDK syntax."));
    assert!(prompt.contains(r#""controller": {"type": "string", "description": "The IResultSetController instance responsible for controlling the result set. This parameter can be of any type of Java object in string representation."}"#));
    assert!(prompt.ends_with("<|im_end|>\n<|im_start|>assistant\n"));
}

#[test]
fn a_results_file_of_gold_answers_scores_as_bfcl_does() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let mut text = String::new();
    for c in cases().iter().filter(|c| c.mutation == "gold") {
        text += &serde_json::json!({"id": c.id, "result": c.output, "latency": 0.1}).to_string();
        text.push('\n');
    }
    text += &serde_json::json!({"id": "multi_turn_base_0", "result": [["x"]]}).to_string();
    text.push('\n');
    std::fs::write(&results, text).unwrap();

    let all = score_results(data_dir(), &results, None, None).unwrap();
    assert_eq!(all.entries.len(), dataset().entries().len());
    assert_eq!(all.ignored_results, 1, "the multi-turn line");
    let s = all.sections();
    let java = 97.0;
    let simple = (100.0 + java + 100.0) / 3.0;
    assert!((s.non_live.unwrap() - (simple + 300.0) / 4.0).abs() < 1e-9);
    // live: 5 rejected golds among 258 + 1053 + 16 + 24 entries.
    assert!((s.live.unwrap() - 100.0 * (1351.0 - 5.0) / 1351.0).abs() < 1e-9);
    assert_eq!(s.irrelevance, Some(100.0));
    assert_eq!(s.relevance, Some(100.0));
    let md = all.to_report_md();
    assert!(
        md.contains("| simple_java | 97.00% (97/100) | live_multiple |"),
        "{md}"
    );
    let m = all.to_metrics_json();
    assert_eq!(m["bfcl"]["categories"]["simple_java"]["correct"], 97);
    assert_eq!(m["bfcl"]["sections"]["irrelevance"], 100.0);

    let some = score_results(
        data_dir(),
        &results,
        Some(&[Category::SimpleJava, Category::LiveRelevance]),
        Some(40),
    )
    .unwrap();
    assert_eq!(some.entries.len(), 40 + 16);
    assert_eq!(
        some.category(Category::SimpleJava).unwrap().correct,
        39,
        "of the first 40, only simple_java_36 is a rejected gold"
    );
    assert_eq!(some.sections().non_live, None);
}
