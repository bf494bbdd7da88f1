//! Evaluation: BFCL V4 single-turn scoring that agrees with the official checker verdict for
//! verdict, and the seed's metric ladder on forge's own held-out rows.
//!
//! Why a port and not a call into Python: forge runs where Python is not set up, scoring must
//! take well under a second, and the eval stage's numbers must be leaderboard numbers — so
//! every rule of bfcl-eval 2025.12.17 that decides a verdict is reproduced here, quirks
//! included, and `stages/fixtures/bfcl/` holds the official verdicts on thousands of answers
//! that the tests demand forge reproduce.
//!
//! - [`value`]: Python's values, `json.loads` and comparison semantics, which the checker's
//!   verdicts rest on.
//! - [`parse`]: BFCL's Qwen function-calling handler: the prompt it builds, how it decodes
//!   `<tool_call>` blocks.
//! - [`convert`]: BFCL's Java and JavaScript value converters.
//! - [`checker`]: BFCL's AST checker.
//! - [`bfcl`]: data, categories, per-entry verdicts, section scores; [`bfcl::score_results`]
//!   scores a BFCL result file.
//! - [`report`]: `report.md` in the seed's results layout.
//! - [`metrics`]: the seed's ladder (emits_json … strict, hallucinated, hit_cap).

#[cfg(test)]
mod agreement;
pub mod bfcl;
pub mod checker;
pub mod convert;
pub mod metrics;
pub mod parse;
pub mod report;
pub mod stage;
pub mod value;

pub use bfcl::{
    Category, CategoryScore, Dataset, Entry, EntryVerdict, EvalError, ResultLine, Scores, Sections,
    read_results, score_entry, score_results,
};
pub use parse::{clean_response, decode_ast, render_prompt};
