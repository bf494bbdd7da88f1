//! The thin file edge of the data stages, shared so that every stage reads rows, writes JSONL and
//! accounts for dropped rows the same way.
//!
//! - [`RowFile`] takes a file (a JSON array or JSONL, told apart by the first non-space byte) or a
//!   directory (its [`DATA_FILE`]) and holds each row's JSON text, so that a stage can parse only
//!   the fields it needs and pass rows on verbatim ([`JsonlWriter::write_raw`]).
//! - [`read_rows`] parses them as a record type. A row that does not parse is not an error: it
//!   comes back as a [`Quarantined`] ([`malformed`]), so one bad line never sinks a big file.
//! - [`JsonlWriter`] writes one compact JSON object per line into `<name>.tmp` and renames it into
//!   place on [`JsonlWriter::finish`], so a crash never leaves a plausible-looking half file.
//! - [`RowLedger`] is `quarantine.jsonl` plus the counts `metrics.json` reports; it keeps
//!   `rows_in == rows_kept + rows_quarantined` true by construction.
//!
//! Every I/O error carries the path it happened on.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::schema::Quarantined;
use crate::contract::StageError;

/// The rows a data stage hands on; what a directory input means.
pub const DATA_FILE: &str = "data.jsonl";
/// The rows a stage dropped, one [`Quarantined`] per line.
pub const QUARANTINE_FILE: &str = "quarantine.jsonl";
/// The stage's figures.
pub const METRICS_FILE: &str = "metrics.json";
/// The reason kind of a row that did not parse (as JSON, or as the record the stage expects).
pub const MALFORMED: &str = "malformed_row";

/// The file an input path stands for: a directory means its [`DATA_FILE`].
pub fn resolve(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(DATA_FILE)
    } else {
        path.to_path_buf()
    }
}

/// The rows of one input, held in memory as their JSON text: for stages that pass rows through
/// untouched, or parse only the fields they need (borrowing from the text).
pub struct RowFile {
    path: PathBuf,
    bytes: Vec<u8>,
    spans: Vec<Range<usize>>,
}

impl RowFile {
    /// Reads `path` (see [`resolve`]). JSONL: one row per non-blank line, so a row's index is its
    /// position among the non-blank lines. A JSON array: one row per element.
    ///
    /// Fails only when the file cannot be read, or when a JSON-array file is not valid JSON as a
    /// whole (its rows cannot be told apart then). A bad JSONL line is a row like any other; it
    /// fails when parsed.
    pub fn open(path: &Path) -> Result<Self, StageError> {
        let path = resolve(path);
        let bytes = fs::read(&path).map_err(|e| StageError::io(&path, e))?;
        let start = if bytes.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            0
        };
        let first = bytes[start..].iter().find(|b| !b.is_ascii_whitespace());
        let spans = if first == Some(&b'[') {
            let rows: Vec<&RawValue> = serde_json::from_slice(&bytes[start..]).map_err(|e| {
                StageError::Failed(format!("{}: not a valid JSON array: {e}", path.display()))
            })?;
            let base = bytes.as_ptr() as usize;
            rows.iter()
                .map(|r| {
                    let at = r.get().as_ptr() as usize - base;
                    at..at + r.get().len()
                })
                .collect()
        } else {
            let mut spans = Vec::new();
            let mut pos = start;
            while pos < bytes.len() {
                let end = memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i);
                let line = trim_span(&bytes, pos..end);
                if !line.is_empty() {
                    spans.push(line);
                }
                pos = end + 1;
            }
            spans
        };
        Ok(RowFile { path, bytes, spans })
    }

    /// The file the rows came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Each row's index and JSON text (trimmed; a JSONL row never holds a newline).
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (usize, &[u8])> + '_ {
        self.spans
            .iter()
            .enumerate()
            .map(|(i, span)| (i, &self.bytes[span.clone()]))
    }
}

fn trim_span(bytes: &[u8], mut span: Range<usize>) -> Range<usize> {
    while span.start < span.end && bytes[span.start].is_ascii_whitespace() {
        span.start += 1;
    }
    while span.end > span.start && bytes[span.end - 1].is_ascii_whitespace() {
        span.end -= 1;
    }
    span
}

/// Reads the rows of `path` (see [`RowFile::open`]) parsed as `T`, lazily: each row is parsed
/// when the iterator reaches it. A row that does not parse as `T` comes back as
/// `Err(Quarantined)` (see [`malformed`]).
pub fn read_rows<T: DeserializeOwned>(path: &Path) -> Result<Rows<T>, StageError> {
    Ok(Rows {
        file: RowFile::open(path)?,
        next: 0,
        _row: std::marker::PhantomData,
    })
}

/// The parsed rows of one input, in order: `(index, row)`. See [`read_rows`].
pub struct Rows<T> {
    file: RowFile,
    next: usize,
    _row: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Iterator for Rows<T> {
    type Item = (usize, Result<T, Quarantined>);

    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next;
        let span = self.file.spans.get(index)?.clone();
        self.next += 1;
        let raw = &self.file.bytes[span];
        let row = match serde_json::from_slice(raw) {
            Ok(row) => Ok(row),
            Err(e) => Err(malformed(index, &e, raw)),
        };
        Some((index, row))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.file.len() - self.next;
        (left, Some(left))
    }
}

/// The quarantine record of row `index` (JSON text `raw`) that failed to parse: reason kind
/// [`MALFORMED`], and the row as far as it can be kept (see [`row_value`]).
pub fn malformed(index: usize, error: &dyn std::fmt::Display, raw: &[u8]) -> Quarantined {
    Quarantined {
        index,
        id: None,
        reason: format!("{MALFORMED}: {error}"),
        row: row_value(raw),
    }
}

/// A row's JSON text as a value for `quarantine.jsonl`: its JSON value, else its text.
pub fn row_value(raw: &[u8]) -> Value {
    serde_json::from_slice(raw)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).into_owned()))
}

/// Writes one compact JSON value per line to `<path>.tmp`, renamed to `path` by
/// [`finish`](Self::finish). Dropped unfinished, it removes the temporary file.
pub struct JsonlWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    rows: u64,
}

impl JsonlWriter {
    pub fn create(path: impl Into<PathBuf>) -> Result<Self, StageError> {
        let path = path.into();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).map_err(|e| StageError::io(&tmp, e))?;
        Ok(JsonlWriter {
            path,
            tmp,
            out: Some(BufWriter::with_capacity(1 << 16, file)),
            rows: 0,
        })
    }

    /// Appends `row` as one line.
    pub fn write<T: Serialize + ?Sized>(&mut self, row: &T) -> Result<(), StageError> {
        let out = self
            .out
            .as_mut()
            .expect("a JsonlWriter is usable until finish");
        serde_json::to_writer(&mut *out, row)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| StageError::io(&self.tmp, e))?;
        self.rows += 1;
        Ok(())
    }

    /// Appends a row given as JSON text (a [`RowFile`] row), verbatim when it is one line.
    pub fn write_raw(&mut self, row: &[u8]) -> Result<(), StageError> {
        if memchr::memchr(b'\n', row).is_some() {
            return self.write(&row_value(row));
        }
        let out = self
            .out
            .as_mut()
            .expect("a JsonlWriter is usable until finish");
        out.write_all(row)
            .and_then(|()| out.write_all(b"\n"))
            .map_err(|e| StageError::io(&self.tmp, e))?;
        self.rows += 1;
        Ok(())
    }

    /// Flushes and moves the file into place; returns the number of rows written.
    pub fn finish(mut self) -> Result<u64, StageError> {
        let out = self.out.take().expect("finish runs once");
        drop(
            out.into_inner()
                .map_err(|e| StageError::io(&self.tmp, e.into_error()))?,
        );
        fs::rename(&self.tmp, &self.path).map_err(|e| StageError::io(&self.path, e))?;
        Ok(self.rows)
    }
}

impl Drop for JsonlWriter {
    fn drop(&mut self) {
        if self.out.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `rows` to `path` as JSONL (see [`JsonlWriter`]); returns the number written.
pub fn write_jsonl<'a, T, I>(path: impl Into<PathBuf>, rows: I) -> Result<u64, StageError>
where
    T: Serialize + 'a,
    I: IntoIterator<Item = &'a T>,
{
    let mut out = JsonlWriter::create(path)?;
    for row in rows {
        out.write(row)?;
    }
    out.finish()
}

/// Writes `metrics` to `<dir>/metrics.json` (pretty: it is small and read by people).
pub fn write_metrics<M: Serialize + ?Sized>(dir: &Path, metrics: &M) -> Result<(), StageError> {
    let path = dir.join(METRICS_FILE);
    let mut text = serde_json::to_vec_pretty(metrics)
        .map_err(|e| StageError::io(&path, std::io::Error::other(e)))?;
    text.push(b'\n');
    let tmp = dir.join(format!("{METRICS_FILE}.tmp"));
    fs::write(&tmp, &text).map_err(|e| StageError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| StageError::io(&path, e))
}

/// How many rows a stage took in, kept and dropped, and why it dropped them. Every row goes
/// through exactly one of [`keep`](Self::keep) and [`quarantine`](Self::quarantine).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCounts {
    pub rows_in: u64,
    pub rows_kept: u64,
    pub rows_quarantined: u64,
    /// Quarantined rows per reason kind (`malformed_row`, `unknown_type`, `duplicate`, ...).
    pub quarantined_by_reason: BTreeMap<String, u64>,
}

impl RowCounts {
    pub fn keep(&mut self) {
        self.rows_in += 1;
        self.rows_kept += 1;
    }

    pub fn quarantine(&mut self, kind: &str) {
        self.rows_in += 1;
        self.rows_quarantined += 1;
        match self.quarantined_by_reason.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.quarantined_by_reason.insert(kind.to_string(), 1);
            }
        }
    }

    /// `10 rows in, 9 kept, 1 quarantined`, for a stage's report line.
    pub fn summary(&self) -> String {
        format!(
            "{} rows in, {} kept, {} quarantined",
            self.rows_in, self.rows_kept, self.rows_quarantined
        )
    }
}

/// A stage's `quarantine.jsonl` and its [`RowCounts`].
pub struct RowLedger {
    quarantine: JsonlWriter,
    counts: RowCounts,
}

impl RowLedger {
    /// Starts `<out_dir>/quarantine.jsonl` (written, possibly empty, on [`finish`](Self::finish)).
    pub fn create(out_dir: &Path) -> Result<Self, StageError> {
        Ok(RowLedger {
            quarantine: JsonlWriter::create(out_dir.join(QUARANTINE_FILE))?,
            counts: RowCounts::default(),
        })
    }

    /// Counts a row the stage kept.
    pub fn keep(&mut self) {
        self.counts.keep();
    }

    /// Writes `row` to quarantine.jsonl and counts it under `kind`.
    pub fn quarantine(&mut self, kind: &str, row: &Quarantined) -> Result<(), StageError> {
        self.quarantine.write(row)?;
        self.counts.quarantine(kind);
        Ok(())
    }

    pub fn counts(&self) -> &RowCounts {
        &self.counts
    }

    /// Closes quarantine.jsonl; the counts are the stage's to put in metrics.json.
    pub fn finish(self) -> Result<RowCounts, StageError> {
        self.quarantine.finish()?;
        Ok(self.counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Row {
        a: u32,
    }

    fn collect<T: DeserializeOwned>(path: &Path) -> Vec<(usize, Result<T, Quarantined>)> {
        read_rows::<T>(path).unwrap().collect()
    }

    #[test]
    fn jsonl_rows_keep_their_index_and_bad_lines_are_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        fs::write(
            &path,
            "{\"a\": 1}\n\n  \n{\"a\": oops}\r\n{\"b\": 2}\n{\"a\": 4}",
        )
        .unwrap();
        let rows = collect::<Row>(&path);
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0], (0, Ok(Row { a: 1 })));
        let (i, bad) = &rows[1];
        assert_eq!(*i, 1);
        let bad = bad.as_ref().unwrap_err();
        assert_eq!(bad.index, 1);
        assert!(bad.reason.starts_with(MALFORMED), "{}", bad.reason);
        assert_eq!(bad.row, json!("{\"a\": oops}"));
        let wrong_shape = rows[2].1.as_ref().unwrap_err();
        assert_eq!(wrong_shape.index, 2);
        assert!(
            wrong_shape.reason.contains("missing field `a`"),
            "{}",
            wrong_shape.reason
        );
        assert_eq!(wrong_shape.row, json!({"b": 2}));
        assert_eq!(rows[3], (3, Ok(Row { a: 4 })));
    }

    #[test]
    fn invalid_utf8_is_one_bad_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.jsonl");
        fs::write(&path, b"{\"a\": 1}\n\"\xff\xfe\"\n{\"a\": 2}\n").unwrap();
        let rows = collect::<Value>(&path);
        assert_eq!(rows.len(), 3);
        assert!(rows[1].1.is_err());
        assert_eq!(rows[2].1.as_ref().unwrap(), &json!({"a": 2}));
    }

    #[test]
    fn a_json_array_file_and_a_bom_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.json");
        fs::write(
            &path,
            "\u{feff} \n [{\"a\": 1}, {\"a\": \"x\"}, {\"a\": 3}]",
        )
        .unwrap();
        let rows = collect::<Row>(&path);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], (0, Ok(Row { a: 1 })));
        assert_eq!(rows[1].1.as_ref().unwrap_err().row, json!({"a": "x"}));
        assert_eq!(rows[2], (2, Ok(Row { a: 3 })));
    }

    #[test]
    fn a_broken_json_array_fails_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.json");
        fs::write(&path, "[{\"a\": 1},").unwrap();
        let err = read_rows::<Value>(&path).err().unwrap().to_string();
        assert!(err.contains("rows.json"), "{err}");
    }

    #[test]
    fn a_directory_means_its_data_file_and_a_missing_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_rows::<Value>(dir.path()).err().unwrap();
        assert!(matches!(&err, StageError::Io { path, .. } if path.ends_with(DATA_FILE)));
        fs::write(dir.path().join(DATA_FILE), "{\"a\": 7}\n").unwrap();
        let rows = collect::<Row>(dir.path());
        assert_eq!(rows, vec![(0, Ok(Row { a: 7 }))]);
    }

    #[test]
    fn writer_round_trips_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let rows = vec![json!({"a": 1}), json!({"a": 2, "s": "x\ny"})];
        assert_eq!(write_jsonl(&path, &rows).unwrap(), 2);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        let back: Vec<Value> = collect::<Value>(&path)
            .into_iter()
            .map(|(_, r)| r.unwrap())
            .collect();
        assert_eq!(back, rows);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.jsonl")]);
    }

    #[test]
    fn row_file_gives_trimmed_row_text_and_raw_rows_pass_through() {
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("rows.jsonl");
        fs::write(&jsonl, "  {\"a\": 1}  \r\n\n{\"b\":[1, 2]}").unwrap();
        let file = RowFile::open(&jsonl).unwrap();
        assert_eq!(file.path(), jsonl);
        let rows: Vec<_> = file.iter().collect();
        assert_eq!(rows, [(0, &b"{\"a\": 1}"[..]), (1, &b"{\"b\":[1, 2]}"[..])]);

        let array = dir.path().join("rows.json");
        fs::write(&array, "[\n  {\"a\": 1},\n  {\n    \"b\": 2\n  }\n]\n").unwrap();
        let file = RowFile::open(&array).unwrap();
        assert_eq!(file.len(), 2);
        let out = dir.path().join("out.jsonl");
        let mut w = JsonlWriter::create(&out).unwrap();
        for (_, row) in file.iter() {
            w.write_raw(row).unwrap();
        }
        assert_eq!(w.finish().unwrap(), 2);
        assert_eq!(fs::read_to_string(&out).unwrap(), "{\"a\": 1}\n{\"b\":2}\n");
    }

    #[test]
    fn an_unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut w = JsonlWriter::create(&path).unwrap();
        w.write(&json!({"a": 1})).unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn ledger_counts_add_up_and_metrics_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = RowLedger::create(dir.path()).unwrap();
        ledger.keep();
        for (i, kind) in ["x", "y", "x"].into_iter().enumerate() {
            let q = Quarantined {
                index: i,
                id: None,
                reason: kind.into(),
                row: json!(i),
            };
            ledger.quarantine(kind, &q).unwrap();
        }
        let counts = ledger.finish().unwrap();
        assert_eq!(counts.rows_in, 4);
        assert_eq!(counts.rows_in, counts.rows_kept + counts.rows_quarantined);
        assert_eq!(counts.quarantined_by_reason["x"], 2);
        assert_eq!(counts.quarantined_by_reason["y"], 1);
        let q: Vec<Quarantined> = collect::<Quarantined>(&dir.path().join(QUARANTINE_FILE))
            .into_iter()
            .map(|(_, r)| r.unwrap())
            .collect();
        assert_eq!(q.iter().map(|q| q.index).collect::<Vec<_>>(), vec![0, 1, 2]);
        write_metrics(dir.path(), &counts).unwrap();
        let back: RowCounts =
            serde_json::from_slice(&fs::read(dir.path().join(METRICS_FILE)).unwrap()).unwrap();
        assert_eq!(back, counts);
    }
}
