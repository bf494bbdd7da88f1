//! `forge metrics`: the figures stages write to `metrics.json`, and how they moved between locks.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use anyhow::Context as _;

use crate::exec::read_metrics;
use crate::lockfile::LockFile;
use crate::workspace::Workspace;

/// Every numeric metric of `stages`' materialized metrics.json, as a table or JSON.
pub fn show(ws: &Workspace, stages: &[String], json: bool) -> anyhow::Result<String> {
    let mut all: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
    for s in stages {
        let m = read_metrics(&ws.artifact(s).join("metrics.json"));
        if !m.is_empty() {
            all.insert(s, m);
        }
    }
    if json {
        return Ok(serde_json::to_string_pretty(&all)? + "\n");
    }
    if all.is_empty() {
        return Ok("no stage has written metrics.json yet\n".into());
    }
    let rows: Vec<[String; 3]> = all
        .iter()
        .flat_map(|(s, m)| {
            m.iter()
                .map(move |(k, v)| [s.to_string(), k.clone(), fmt_num(*v)])
        })
        .collect();
    Ok(table(&["stage", "metric", "value"], &rows))
}

/// The metrics recorded in forge.lock against those of `against` (default: the lock as it was
/// before the last run that changed it, kept at `cache/prev.lock`).
pub fn diff(ws: &Workspace, against: Option<&Path>) -> anyhow::Result<String> {
    let now = LockFile::read(&ws.lockfile)?;
    let prev_path = against.map_or_else(|| ws.cache.join("prev.lock"), Path::to_path_buf);
    if !prev_path.exists() {
        anyhow::bail!(
            "{}: no previous lock to compare with (one is kept after a run changes forge.lock; or pass --against FILE)",
            prev_path.display()
        );
    }
    let old =
        LockFile::read(&prev_path).with_context(|| format!("reading {}", prev_path.display()))?;
    let mut rows = Vec::new();
    let stages: std::collections::BTreeSet<&String> =
        now.stages.keys().chain(old.stages.keys()).collect();
    for s in stages {
        let empty = BTreeMap::new();
        let a = old.stages.get(s).map_or(&empty, |e| &e.metrics);
        let b = now.stages.get(s).map_or(&empty, |e| &e.metrics);
        let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        for k in names {
            let (x, y) = (a.get(k), b.get(k));
            if x == y {
                continue;
            }
            let change = match (x, y) {
                (Some(x), Some(y)) => {
                    format!("{}{}", if y >= x { "+" } else { "" }, fmt_num(y - x))
                }
                _ => "—".into(),
            };
            let show = |v: Option<&f64>| v.map_or_else(|| "—".to_string(), |v| fmt_num(*v));
            rows.push([s.clone(), k.clone(), show(x), show(y), change]);
        }
    }
    if rows.is_empty() {
        return Ok("no metric changed\n".into());
    }
    Ok(table(&["stage", "metric", "old", "new", "change"], &rows))
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> String {
    let mut w = head.map(str::len);
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        let _ = writeln!(out, "{}", s.join("  ").trim_end());
    };
    line(head.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_compactly() {
        assert_eq!(fmt_num(3.0), "3");
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(1.0 / 3.0), "0.333333");
    }
}
