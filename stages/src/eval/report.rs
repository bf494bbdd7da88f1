//! `report.md`: BFCL scores as the seed's README lays out its results (SEED.md, "Results"): a
//! section table (Non-Live AST, Live, …, Overall) and the single-turn per-category table with
//! the non-live and live columns side by side, so that a run reads against the seed's numbers
//! at a glance.

use std::fmt::Write;

use super::bfcl::{Category, Scores};

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "not run".to_string(), |v| format!("{v:.2}%"))
}

/// The left and right columns of the per-category table, row by row, as in SEED.md.
const PAIRS: [(Category, Option<Category>); 7] = [
    (Category::SimplePython, Some(Category::LiveSimple)),
    (Category::SimpleJava, Some(Category::LiveMultiple)),
    (Category::SimpleJavascript, Some(Category::LiveParallel)),
    (Category::Multiple, Some(Category::LiveParallelMultiple)),
    (Category::Parallel, Some(Category::LiveRelevance)),
    (Category::ParallelMultiple, Some(Category::LiveIrrelevance)),
    (Category::Irrelevance, None),
];

impl Scores {
    /// The report with this run's row labelled "this run".
    pub fn to_report_md(&self) -> String {
        self.to_report_md_labeled("this run")
    }

    /// The report, with `label` naming this run's row in the section table (`"+ SFT"`, a model).
    pub fn to_report_md_labeled(&self, label: &str) -> String {
        let s = self.sections();
        let cell = |c: Category| {
            self.category(c).map_or_else(
                || "not run".to_string(),
                |score| {
                    format!(
                        "{:.2}% ({}/{})",
                        score.accuracy(),
                        score.correct,
                        score.total
                    )
                },
            )
        };
        let mut out = String::new();
        out.push_str("## BFCL V4\n\n");
        out.push_str("| Stage | Non-Live AST | Live | Irrelevance | Relevance | Multi-turn | Overall (full V4) |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | not run | partial¹ |",
            pct(s.non_live),
            pct(s.live),
            pct(s.irrelevance),
            pct(s.relevance),
        );
        out.push('\n');
        out.push_str("### Per category (single-turn)\n\n");
        out.push_str("| Non-Live (hand-written) | Acc | Live (real prompts) | Acc |\n");
        out.push_str("|---|---:|---|---:|\n");
        for (left, right) in PAIRS {
            let (rname, rcell) = match right {
                Some(r) => (r.name().to_string(), cell(r)),
                None => (String::new(), String::new()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {rname} | {rcell} |",
                left.name(),
                cell(left)
            );
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "Non-Live AST = mean(simple, multiple, parallel, parallel_multiple), simple = mean of its \
             three languages ({}); Live = correct/total over the four live AST categories; \
             Irrelevance = mean(irrelevance, live_irrelevance); Relevance = live_relevance.",
            pct(s.non_live_simple)
        );
        out.push('\n');
        out.push_str(
            "¹ BFCL's single \"Overall\" blends sections not run here (multi-turn, agentic: they need \
             BFCL's Python simulators and live services), so it is not given.\n",
        );
        if let Some(limit) = self.limit {
            let _ = writeln!(
                out,
                "\n**Partial run:** only the first {limit} entries of each category were scored; \
                 these are not leaderboard figures."
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::bfcl::EntryVerdict;

    fn verdict(category: Category, i: usize, valid: bool) -> EntryVerdict {
        EntryVerdict {
            id: format!("{category}_{i}"),
            category,
            valid,
            error_type: (!valid).then(|| "x".into()),
            error: None,
        }
    }

    #[test]
    fn report_has_the_seed_layout_and_bfcl_aggregates() {
        let mut v = Vec::new();
        // simple_python 3/4, simple_java 1/2, simple_javascript 1/1 → simple = 75.00
        for (c, right, total) in [
            (Category::SimplePython, 3, 4),
            (Category::SimpleJava, 1, 2),
            (Category::SimpleJavascript, 1, 1),
            (Category::Multiple, 1, 1),
            (Category::Parallel, 0, 1),
            (Category::ParallelMultiple, 1, 2),
            (Category::LiveSimple, 2, 3),
            (Category::LiveMultiple, 1, 1),
        ] {
            for i in 0..total {
                v.push(verdict(c, i, i < right));
            }
        }
        let scores = Scores::from_verdicts(v, Some(4));
        let s = scores.sections();
        assert!((s.non_live_simple.unwrap() - 75.0).abs() < 1e-9);
        assert!((s.non_live.unwrap() - (75.0 + 100.0 + 0.0 + 50.0) / 4.0).abs() < 1e-9);
        assert_eq!(s.live, None, "live_parallel was not run");
        assert_eq!(s.irrelevance, None);
        let md = scores.to_report_md_labeled("+ SFT");
        assert!(
            md.contains("| + SFT | 56.25% | not run | not run | not run | not run | partial¹ |"),
            "{md}"
        );
        assert!(
            md.contains("| simple_python | 75.00% (3/4) | live_simple | 66.67% (2/3) |"),
            "{md}"
        );
        assert!(
            md.contains("| simple_javascript | 100.00% (1/1) | live_parallel | not run |"),
            "{md}"
        );
        assert!(md.contains("| irrelevance | not run |  |  |"), "{md}");
        assert!(md.contains("first 4 entries"), "{md}");
    }

    #[test]
    fn live_is_weighted_by_entries() {
        let mut v = Vec::new();
        for (c, right, total) in [
            (Category::LiveSimple, 1, 1),
            (Category::LiveMultiple, 0, 3),
            (Category::LiveParallel, 0, 0),
            (Category::LiveParallelMultiple, 1, 1),
        ] {
            for i in 0..total {
                v.push(verdict(c, i, i < right));
            }
        }
        // live_parallel has no entries at all: not run, so no live section.
        assert_eq!(Scores::from_verdicts(v.clone(), None).sections().live, None);
        v.push(verdict(Category::LiveParallel, 0, true));
        let s = Scores::from_verdicts(v, None).sections();
        // (1 + 0 + 1 + 1) correct of (1 + 3 + 1 + 1): weighted by entries, not a mean of four rates.
        assert!((s.live.unwrap() - 50.0).abs() < 1e-9);
    }
}
