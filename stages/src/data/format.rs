//! Stage `format`: renders every conversation with the model's chat template, tokenizes it with
//! the model's tokenizer, and writes token ids with a loss mask per split in a compact binary
//! [`TokenFile`] — what `sft` trains on, so that no training step ever renders or tokenizes.
//!
//! Per conversation, the assistant turn to learn is built from `gold_calls` (as `tool_calls`), or
//! is the `no_call_reply` text when there are none ([`assistant_turn`]). Then
//! `prompt = render(messages, add_generation_prompt=true)` and `full = render(messages + turn)`;
//! `full` must start with `prompt` (a template that rewrites history breaks that: the row is
//! quarantined), and the rest is the completion. The model never sees where the strings were cut:
//! tokenizing prompt and completion separately gives the same ids as tokenizing `full`, because
//! the prompt ends in `<|im_start|>assistant\n` before a special token (the golden test checks
//! this against Python `tokenizers`).
//!
//! Loss covers the completion up to and including the model's `eos_token` (`<|im_end|>`): with
//! Qwen3's template that is the empty `<think>\n\n</think>\n\n` block the template puts before a
//! final answer, the `<tool_call>` blocks or the reply text, and `<|im_end|>`. The template's
//! `\n` after `<|im_end|>` stays in the ids (the sequence is exactly the template's) with mask 0:
//! generation stops at `<|im_end|>`, so the model never has to produce it. Without an
//! `eos_token` in the completion, the whole completion is learned.
//!
//! A row longer than `max_len` tokens is quarantined, not silently cut, unless `truncate: true`:
//! then it is cut to `max_len` (the end goes) and counted; a row whose cut leaves no loss token is
//! quarantined all the same. Outputs: `<split>.tokens` for train, dev and test, `preview.txt` (the
//! first `preview` rows rendered, the learned part between `«loss»` and `«/loss»`),
//! `metrics.json` (rows in/kept/quarantined/truncated and token statistics per split, nothing
//! timing-dependent so that the output hash is stable) and `quarantine.jsonl` (each line a
//! [`Quarantined`] plus its `split`).
//!
//! # Token file layout (version 1, all integers little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FRGTOKS\0` |
//! | 8 | 4 | u32 format version (1) |
//! | 12 | 4 | u32 reserved, 0 |
//! | 16 | 8 | u64 row count `N` |
//! | 24 | 8 | u64 token count `T` |
//! | 32 | 8·(N+1) | u64 row offsets, in tokens: row `i` is tokens `off[i]..off[i+1]`; `off[0] = 0`, `off[N] = T` |
//! | 40 + 8N | 4·T | u32 token ids |
//! | 40 + 8N + 4T | ⌈T/8⌉ | loss mask bitset: token `t` is learned iff bit `t % 8` (LSB first) of byte `t / 8` is set |
//!
//! The file is exactly that long; [`TokenFile::open`] checks every size and offset.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::io::{self, JsonlWriter, RowCounts};
use super::schema::{Conversation, Message, Quarantined, Role, ToolCall};
use super::template::{ChatTemplate, TemplateError};
use crate::contract::{Context, Input, Report, StageError, TypedStage};

/// The splits `format` reads from its `data` input (`<split>.jsonl`) and writes (`<split>.tokens`).
pub const SPLITS: [&str; 3] = ["train", "dev", "test"];
/// The model directory's files this stage reads.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const PREVIEW_FILE: &str = "preview.txt";
/// Marks around the learned part of a row in `preview.txt`.
pub const LOSS_START: &str = "«loss»";
pub const LOSS_END: &str = "«/loss»";

/// Rows rendered and tokenized between two progress updates and cancellation checks.
const CHUNK: usize = 2048;

/// The `format` stage.
pub struct Format;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatParams {
    /// The longest row, in tokens, that is kept whole.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Cut rows longer than `max_len` instead of quarantining them.
    #[serde(default)]
    pub truncate: bool,
    /// How many rendered rows `preview.txt` shows.
    #[serde(default = "default_preview")]
    pub preview: usize,
    /// The assistant's answer to learn when a row has no gold calls.
    #[serde(default = "default_no_call_reply")]
    pub no_call_reply: String,
}

fn default_max_len() -> usize {
    2048
}
fn default_preview() -> usize {
    3
}
fn default_no_call_reply() -> String {
    "I'm sorry, none of the available tools can help with that.".to_owned()
}

impl Default for FormatParams {
    fn default() -> Self {
        FormatParams {
            max_len: default_max_len(),
            truncate: false,
            preview: default_preview(),
            no_call_reply: default_no_call_reply(),
        }
    }
}

impl TypedStage for Format {
    type Params = FormatParams;
    const KIND: &'static str = "format";
    const VERSION: u32 = 1;
    const INPUTS: &'static [Input] = &[
        Input {
            name: "data",
            required: true,
        },
        Input {
            name: "model",
            required: true,
        },
    ];
    const ABOUT: &'static str =
        "render conversations with the model's chat template and tokenize them (ids + loss mask)";

    fn run(&self, params: &FormatParams, ctx: &Context<'_>) -> Result<Report, StageError> {
        run(params, ctx)
    }
}

/// The assistant turn a conversation teaches: its gold calls, or the no-call reply.
pub fn assistant_turn(gold_calls: &[ToolCall], no_call_reply: &str) -> Message {
    if gold_calls.is_empty() {
        Message {
            role: Role::Assistant,
            content: no_call_reply.to_owned(),
            tool_calls: Vec::new(),
        }
    } else {
        Message {
            role: Role::Assistant,
            content: String::new(),
            tool_calls: gold_calls.to_vec(),
        }
    }
}

/// A conversation rendered and cut into what the model is given and what it learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedExample {
    /// Everything before the assistant turn, ending with the generation prompt.
    pub prompt: String,
    /// The learned part: the assistant turn up to and including the `eos_token`.
    pub target: String,
    /// What the template emits after the `eos_token` (Qwen3: `"\n"`); not learned.
    pub tail: String,
}

/// Why a row could not be formatted: `kind` is the reason kind counted in metrics.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub kind: &'static str,
    pub detail: String,
}

impl Reject {
    fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Reject {
            kind,
            detail: detail.into(),
        }
    }
    fn reason(&self) -> String {
        format!("{}: {}", self.kind, self.detail)
    }
}

/// Renders `conv` with its assistant turn and splits the text (see the module docs).
pub fn render_example(
    template: &ChatTemplate,
    conv: &Conversation,
    no_call_reply: &str,
) -> Result<RenderedExample, Reject> {
    if conv.messages.is_empty() {
        return Err(Reject::new(
            "no_messages",
            "the conversation has no messages",
        ));
    }
    let render_err = |e: TemplateError| Reject::new("render_failed", e.to_string());
    let prompt = template
        .render(&conv.messages, &conv.tools, true)
        .map_err(render_err)?;
    let mut messages = conv.messages.clone();
    messages.push(assistant_turn(&conv.gold_calls, no_call_reply));
    let mut full = template
        .render(&messages, &conv.tools, false)
        .map_err(render_err)?;
    if !full.starts_with(&prompt) {
        let at = prompt
            .bytes()
            .zip(full.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        return Err(Reject::new(
            "prompt_not_prefix",
            format!("the full render differs from the prompt render at byte {at}"),
        ));
    }
    let mut completion = full.split_off(prompt.len());
    let cut = match template.special_token("eos_token") {
        Some(eos) if !eos.is_empty() => completion.rfind(eos).map(|i| i + eos.len()),
        _ => None,
    };
    let tail = completion.split_off(cut.unwrap_or(completion.len()));
    Ok(RenderedExample {
        prompt,
        target: completion,
        tail,
    })
}

/// One row of a token file: ids and, per id, whether it is learned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRow {
    pub ids: Vec<u32>,
    pub mask: Vec<bool>,
}

/// A tokenized row and whether it was cut to `max_len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow {
    pub row: TokenRow,
    pub truncated: bool,
}

/// Renders and tokenizes conversations; shared by rayon workers.
pub struct Encoder<'a> {
    pub template: &'a ChatTemplate,
    pub tokenizer: &'a Tokenizer,
    pub params: &'a FormatParams,
}

impl Encoder<'_> {
    /// Tokenizes `text` as plain text (no BOS/EOS added; special tokens in it are matched).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, Reject> {
        if text.is_empty() {
            return Ok(Vec::new());
        }
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Reject::new("tokenize_failed", e.to_string()))
    }

    /// The ids and loss mask of `conv`, cut or rejected when over `max_len`.
    pub fn encode(&self, conv: &Conversation) -> Result<EncodedRow, Reject> {
        let ex = render_example(self.template, conv, &self.params.no_call_reply)?;
        let prompt = self.tokenize(&ex.prompt)?;
        let target = self.tokenize(&ex.target)?;
        let tail = self.tokenize(&ex.tail)?;
        if target.is_empty() {
            return Err(Reject::new("no_loss_tokens", "the assistant turn is empty"));
        }
        let len = prompt.len() + target.len() + tail.len();
        let max_len = self.params.max_len;
        let mut truncated = false;
        if len > max_len {
            if !self.params.truncate {
                return Err(Reject::new(
                    "too_long",
                    format!("{len} tokens > max_len {max_len}"),
                ));
            }
            if prompt.len() >= max_len {
                return Err(Reject::new(
                    "too_long",
                    format!(
                        "the prompt alone has {} tokens >= max_len {max_len}: nothing left to learn",
                        prompt.len()
                    ),
                ));
            }
            truncated = true;
        }
        let mut row = TokenRow {
            ids: Vec::with_capacity(len),
            mask: Vec::with_capacity(len),
        };
        for (ids, learned) in [(prompt, false), (target, true), (tail, false)] {
            row.mask.extend(std::iter::repeat_n(learned, ids.len()));
            row.ids.extend(ids);
        }
        row.ids.truncate(max_len);
        row.mask.truncate(max_len);
        Ok(EncodedRow { row, truncated })
    }
}

/// Why a token file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a valid token file: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl From<TokenFileError> for StageError {
    fn from(e: TokenFileError) -> Self {
        match e {
            TokenFileError::Io { path, source } => StageError::Io { path, source },
            e @ TokenFileError::Invalid { .. } => StageError::Failed(e.to_string()),
        }
    }
}

const MAGIC: &[u8; 8] = b"FRGTOKS\0";
const TOKEN_FILE_VERSION: u32 = 1;
const HEADER_LEN: usize = 32;

/// Writes `rows` as a token file (layout in the module docs).
pub fn write_token_file(path: &Path, rows: &[TokenRow]) -> Result<(), TokenFileError> {
    let io_err = |source| TokenFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    for (i, row) in rows.iter().enumerate() {
        if row.ids.len() != row.mask.len() {
            return Err(TokenFileError::Invalid {
                path: path.to_path_buf(),
                reason: format!(
                    "row {i} has {} ids but {} mask entries",
                    row.ids.len(),
                    row.mask.len()
                ),
            });
        }
    }
    let total: usize = rows.iter().map(|r| r.ids.len()).sum();
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(io_err)?);
    let mut header = Vec::with_capacity(HEADER_LEN + 8 * (rows.len() + 1));
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&TOKEN_FILE_VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    header.extend_from_slice(&(total as u64).to_le_bytes());
    let mut offset = 0u64;
    header.extend_from_slice(&offset.to_le_bytes());
    for row in rows {
        offset += row.ids.len() as u64;
        header.extend_from_slice(&offset.to_le_bytes());
    }
    out.write_all(&header).map_err(io_err)?;
    for row in rows {
        let bytes: Vec<u8> = row.ids.iter().flat_map(|id| id.to_le_bytes()).collect();
        out.write_all(&bytes).map_err(io_err)?;
    }
    let mut bits = vec![0u8; total.div_ceil(8)];
    for (t, learned) in rows.iter().flat_map(|r| &r.mask).enumerate() {
        if *learned {
            bits[t / 8] |= 1 << (t % 8);
        }
    }
    out.write_all(&bits).map_err(io_err)?;
    out.into_inner()
        .map_err(|e| io_err(e.into_error()))?
        .sync_all()
        .map_err(io_err)
}

/// A token file read into memory: rows of ids with their loss masks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFile {
    offsets: Vec<usize>,
    ids: Vec<u32>,
    mask: Vec<bool>,
}

impl TokenFile {
    /// Reads and checks a token file.
    pub fn open(path: &Path) -> Result<TokenFile, TokenFileError> {
        let bytes = fs::read(path).map_err(|source| TokenFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        TokenFile::parse(&bytes).map_err(|reason| TokenFileError::Invalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn parse(bytes: &[u8]) -> Result<TokenFile, String> {
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err("no token-file header".into());
        }
        let version = u32_at(8);
        if version != TOKEN_FILE_VERSION {
            return Err(format!(
                "version {version}, this build reads {TOKEN_FILE_VERSION}"
            ));
        }
        let too_big = || "row or token count too large".to_string();
        let rows = usize::try_from(u64_at(16)).map_err(|_| too_big())?;
        let total = usize::try_from(u64_at(24)).map_err(|_| too_big())?;
        let expected = rows
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(HEADER_LEN))
            .and_then(|n| n.checked_add(total.checked_mul(4)?))
            .and_then(|n| n.checked_add(total.div_ceil(8)))
            .ok_or_else(too_big)?;
        if bytes.len() != expected {
            return Err(format!(
                "{} bytes, but {rows} rows of {total} tokens take {expected}",
                bytes.len()
            ));
        }
        let mut offsets = Vec::with_capacity(rows + 1);
        for i in 0..=rows {
            let off = u64_at(HEADER_LEN + 8 * i) as usize;
            let prev = offsets.last().copied().unwrap_or(0);
            if off < prev || off > total || (i == 0 && off != 0) {
                return Err(format!("row offset {i} ({off}) out of order or range"));
            }
            offsets.push(off);
        }
        if offsets[rows] != total {
            return Err(format!(
                "the last row ends at {}, not at {total}",
                offsets[rows]
            ));
        }
        let ids_at = HEADER_LEN + 8 * (rows + 1);
        let ids = bytes[ids_at..ids_at + 4 * total]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let bits = &bytes[ids_at + 4 * total..];
        let mask = (0..total)
            .map(|t| (bits[t / 8] >> (t % 8)) & 1 == 1)
            .collect();
        Ok(TokenFile { offsets, ids, mask })
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of tokens over all rows.
    pub fn total_tokens(&self) -> usize {
        self.ids.len()
    }

    /// Row `i`: its token ids and, per id, whether it is learned.
    pub fn get(&self, i: usize) -> Option<(&[u32], &[bool])> {
        let range = *self.offsets.get(i)?..*self.offsets.get(i + 1)?;
        Some((&self.ids[range.clone()], &self.mask[range]))
    }

    /// Every row in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u32], &[bool])> {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// Length statistics of the kept rows, in tokens (absent when no row was kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    pub min: usize,
    pub mean: f64,
    pub p50: usize,
    pub p95: usize,
    pub max: usize,
}

impl LengthStats {
    /// Nearest-rank percentiles of `lengths`.
    pub fn of(lengths: &[usize]) -> Option<LengthStats> {
        if lengths.is_empty() {
            return None;
        }
        let mut sorted = lengths.to_vec();
        sorted.sort_unstable();
        let rank =
            |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        let sum: usize = sorted.iter().sum();
        Some(LengthStats {
            min: sorted[0],
            mean: sum as f64 / sorted.len() as f64,
            p50: rank(0.50),
            p95: rank(0.95),
            max: sorted[sorted.len() - 1],
        })
    }
}

/// One split's figures in metrics.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMetrics {
    #[serde(flatten)]
    pub rows: RowCounts,
    pub rows_truncated: u64,
    pub tokens: u64,
    pub loss_tokens: u64,
    pub length: Option<LengthStats>,
}

/// metrics.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormatMetrics {
    pub splits: BTreeMap<String, SplitMetrics>,
    pub rows_in: u64,
    pub rows_kept: u64,
    pub rows_quarantined: u64,
    pub rows_truncated: u64,
    pub tokens: u64,
    pub loss_tokens: u64,
}

/// A quarantine.jsonl line: which split the row came from, and the usual record.
#[derive(Serialize)]
struct SplitQuarantined<'a> {
    split: &'a str,
    #[serde(flatten)]
    row: &'a Quarantined,
}

fn read_text(path: &Path) -> Result<String, StageError> {
    fs::read_to_string(path).map_err(|e| StageError::io(path, e))
}

/// Loads the tokenizer of a model directory, with any padding or truncation it was saved with
/// turned off: the stage decides about lengths itself.
pub fn load_tokenizer(model_dir: &Path) -> Result<Tokenizer, StageError> {
    let path = model_dir.join(TOKENIZER_FILE);
    if !path.is_file() {
        return Err(StageError::io(
            &path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no tokenizer file"),
        ));
    }
    let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| {
        StageError::Failed(format!("{}: cannot load tokenizer: {e}", path.display()))
    })?;
    tokenizer
        .with_truncation(None)
        .map_err(|e| StageError::Failed(format!("{}: {e}", path.display())))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// Loads the chat template of a model directory.
pub fn load_template(model_dir: &Path) -> Result<ChatTemplate, StageError> {
    let path = model_dir.join(TOKENIZER_CONFIG_FILE);
    ChatTemplate::from_tokenizer_config(&read_text(&path)?)
        .map_err(|e| StageError::Failed(format!("{}: {e}", path.display())))
}

fn run(params: &FormatParams, ctx: &Context<'_>) -> Result<Report, StageError> {
    if params.max_len == 0 {
        return Err(StageError::Failed(
            "param `max_len` must be at least 1".into(),
        ));
    }
    let data_dir = ctx.input("data")?;
    let model_dir = ctx.input("model")?;
    let template = load_template(model_dir)?;
    let tokenizer = load_tokenizer(model_dir)?;
    let encoder = Encoder {
        template: &template,
        tokenizer: &tokenizer,
        params,
    };

    // All inputs are read first, so that a missing split fails before any work is done.
    let mut inputs = Vec::with_capacity(SPLITS.len());
    for split in SPLITS {
        let path = data_dir.join(format!("{split}.jsonl"));
        if !path.is_file() {
            return Err(StageError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "split file missing"),
            ));
        }
        inputs.push((
            split,
            io::read_rows::<Conversation>(&path)?.collect::<Vec<_>>(),
        ));
    }
    let total_rows: usize = inputs.iter().map(|(_, rows)| rows.len()).sum();

    let mut quarantine = JsonlWriter::create(ctx.out.join(io::QUARANTINE_FILE))?;
    let mut preview = String::new();
    let mut previewed = 0usize;
    let mut metrics = FormatMetrics {
        splits: BTreeMap::new(),
        rows_in: 0,
        rows_kept: 0,
        rows_quarantined: 0,
        rows_truncated: 0,
        tokens: 0,
        loss_tokens: 0,
    };
    let started = Instant::now();
    let mut done = 0usize;
    for (split, rows) in &inputs {
        let split: &str = split;
        let mut counts = RowCounts::default();
        let mut kept: Vec<TokenRow> = Vec::with_capacity(rows.len());
        let mut truncated = 0u64;
        ctx.check_cancelled()?;
        for chunk in rows.chunks(CHUNK) {
            ctx.check_cancelled()?;
            let encoded: Vec<Result<EncodedRow, Reject>> = chunk
                .par_iter()
                .map(|(_, row)| match row {
                    Ok(conv) => encoder.encode(conv),
                    Err(q) => Err(Reject::new(io::MALFORMED, q.reason.clone())),
                })
                .collect();
            for ((index, row), result) in chunk.iter().zip(encoded) {
                match (row, result) {
                    (Ok(conv), Ok(enc)) => {
                        if previewed < params.preview {
                            write_preview(&mut preview, &encoder, split, *index, conv, &enc)?;
                            previewed += 1;
                        }
                        truncated += u64::from(enc.truncated);
                        counts.keep();
                        kept.push(enc.row);
                    }
                    (Err(q), _) => {
                        quarantine.write(&SplitQuarantined { split, row: q })?;
                        counts.quarantine(io::MALFORMED);
                    }
                    (Ok(conv), Err(reject)) => {
                        let q = Quarantined {
                            index: *index,
                            id: Some(conv.id.clone()),
                            reason: reject.reason(),
                            row: serde_json::to_value(conv)
                                .map_err(|e| StageError::Failed(e.to_string()))?,
                        };
                        quarantine.write(&SplitQuarantined { split, row: &q })?;
                        counts.quarantine(reject.kind);
                    }
                }
            }
            done += chunk.len();
            let tokens_so_far =
                metrics.tokens + kept.iter().map(|r| r.ids.len() as u64).sum::<u64>();
            ctx.progress.update(
                done as u64,
                Some(total_rows as u64),
                &format!(
                    "{}/s",
                    human_tokens(tokens_so_far as f64 / started.elapsed().as_secs_f64())
                ),
            );
        }
        write_token_file(&ctx.out.join(format!("{split}.tokens")), &kept)?;
        let lengths: Vec<usize> = kept.iter().map(|r| r.ids.len()).collect();
        let split_metrics = SplitMetrics {
            rows_truncated: truncated,
            tokens: lengths.iter().sum::<usize>() as u64,
            loss_tokens: kept
                .iter()
                .map(|r| r.mask.iter().filter(|m| **m).count() as u64)
                .sum(),
            length: LengthStats::of(&lengths),
            rows: counts,
        };
        metrics.rows_in += split_metrics.rows.rows_in;
        metrics.rows_kept += split_metrics.rows.rows_kept;
        metrics.rows_quarantined += split_metrics.rows.rows_quarantined;
        metrics.rows_truncated += split_metrics.rows_truncated;
        metrics.tokens += split_metrics.tokens;
        metrics.loss_tokens += split_metrics.loss_tokens;
        metrics.splits.insert(split.to_string(), split_metrics);
    }
    quarantine.finish()?;
    let preview_path = ctx.out.join(PREVIEW_FILE);
    fs::write(&preview_path, preview).map_err(|e| StageError::io(&preview_path, e))?;
    io::write_metrics(ctx.out, &metrics)?;

    let secs = started.elapsed().as_secs_f64();
    let per_split: Vec<String> = SPLITS
        .iter()
        .filter_map(|s| {
            metrics
                .splits
                .get(*s)
                .map(|m| format!("{s} {}", m.rows.rows_kept))
        })
        .collect();
    Ok(Report {
        summary: format!(
            "{} rows kept ({}), {} quarantined, {} truncated; {} tokens at {}/s",
            metrics.rows_kept,
            per_split.join(", "),
            metrics.rows_quarantined,
            metrics.rows_truncated,
            human_tokens(metrics.tokens as f64),
            human_tokens(metrics.tokens as f64 / secs.max(1e-9)),
        ),
    })
}

fn write_preview(
    out: &mut String,
    encoder: &Encoder<'_>,
    split: &str,
    index: usize,
    conv: &Conversation,
    enc: &EncodedRow,
) -> Result<(), StageError> {
    let ex = render_example(encoder.template, conv, &encoder.params.no_call_reply)
        .map_err(|r| StageError::Failed(r.reason()))?;
    let learned = enc.row.mask.iter().filter(|m| **m).count();
    let cut = if enc.truncated { ", truncated" } else { "" };
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "=== {split}[{index}] {}: {} tokens, {learned} learned{cut} ===",
        conv.id,
        enc.row.ids.len()
    );
    let _ = writeln!(
        out,
        "{}{LOSS_START}{}{LOSS_END}{}",
        ex.prompt, ex.target, ex.tail
    );
    Ok(())
}

fn human_tokens(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use serde_json::{Value, json};

    use super::*;
    use crate::contract::NoProgress;
    use crate::data::template::golden;

    fn model() -> (ChatTemplate, Tokenizer) {
        let dir = golden::tokenizer_dir();
        (load_template(dir).unwrap(), load_tokenizer(dir).unwrap())
    }

    #[test]
    fn token_ids_match_python_tokenizers_and_the_split_is_invisible() {
        let (template, tokenizer) = model();
        let cases = golden::cases();
        let mut checked_encoder = 0;
        for case in &cases {
            let params = FormatParams {
                max_len: usize::MAX,
                no_call_reply: case.no_call_reply.clone(),
                ..FormatParams::default()
            };
            let enc = Encoder {
                template: &template,
                tokenizer: &tokenizer,
                params: &params,
            };
            let id = &case.conversation.id;
            assert_eq!(
                enc.tokenize(&case.prompt).unwrap(),
                case.prompt_ids,
                "{id} prompt"
            );
            assert_eq!(
                enc.tokenize(&case.full).unwrap(),
                case.full_ids,
                "{id} full"
            );
            if case.enable_thinking.is_some() {
                continue;
            }
            // The stage's separately tokenized parts add up to the tokenization of the whole.
            let row = enc.encode(&case.conversation).unwrap();
            assert!(!row.truncated);
            assert_eq!(row.row.ids, case.full_ids, "{id} encoded");
            let ex = render_example(&template, &case.conversation, &case.no_call_reply).unwrap();
            assert_eq!(ex.prompt, case.prompt, "{id}");
            assert!(ex.target.ends_with("<|im_end|>"), "{id}: {:?}", ex.target);
            assert_eq!(ex.tail, "\n", "{id}");
            let learned: Vec<usize> = (0..row.row.mask.len())
                .filter(|&t| row.row.mask[t])
                .collect();
            let n_prompt = case.prompt_ids.len();
            assert_eq!(
                learned.first(),
                Some(&n_prompt),
                "{id}: loss starts after the prompt"
            );
            assert_eq!(
                learned.last(),
                Some(&(row.row.ids.len() - 2)),
                "{id}: loss ends at <|im_end|>"
            );
            assert_eq!(
                learned.len(),
                row.row.ids.len() - n_prompt - 1,
                "{id}: contiguous"
            );
            assert_eq!(
                row.row.ids[row.row.ids.len() - 2],
                151645,
                "{id}: <|im_end|>"
            );
            checked_encoder += 1;
        }
        assert!(
            checked_encoder >= 100,
            "only {checked_encoder} cases went through the encoder"
        );
    }

    fn rows(n_rows: usize, n_tokens: impl Fn(usize) -> usize) -> Vec<TokenRow> {
        (0..n_rows)
            .map(|i| {
                let n = n_tokens(i);
                TokenRow {
                    ids: (0..n)
                        .map(|t| (i * 1000 + t) as u32 * 7919 % 151_936)
                        .collect(),
                    mask: (0..n).map(|t| (t * 3 + i) % 5 < 2).collect(),
                }
            })
            .collect()
    }

    #[test]
    fn token_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        for (n_rows, shape) in [(0, 0), (1, 0), (5, 1), (40, 2)] {
            let written = rows(n_rows, |i| match shape {
                0 => 0,
                1 => i * 3 + 1,
                _ => (i * 37) % 23,
            });
            let path = dir.path().join(format!("{n_rows}-{shape}.tokens"));
            write_token_file(&path, &written).unwrap();
            let file = TokenFile::open(&path).unwrap();
            assert_eq!(file.len(), n_rows);
            assert_eq!(
                file.total_tokens(),
                written.iter().map(|r| r.ids.len()).sum::<usize>()
            );
            for (i, row) in written.iter().enumerate() {
                let (ids, mask) = file.get(i).unwrap();
                assert_eq!((ids, mask), (&row.ids[..], &row.mask[..]), "row {i}");
            }
            assert!(file.get(n_rows).is_none());
            assert_eq!(file.iter().count(), n_rows);
        }
    }

    #[test]
    fn damaged_token_files_are_rejected_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.tokens");
        write_token_file(&path, &rows(3, |i| i + 9)).unwrap();
        let good = fs::read(&path).unwrap();
        let mut bad_offset = good.clone();
        bad_offset[HEADER_LEN + 8..HEADER_LEN + 16].copy_from_slice(&1000u64.to_le_bytes());
        let mut bad_version = good.clone();
        bad_version[8] = 9;
        let damaged = [
            good[..good.len() - 1].to_vec(),
            [good.clone(), vec![0]].concat(),
            bad_offset,
            bad_version,
            b"not a token file at all, not at all".to_vec(),
        ];
        for bytes in damaged {
            fs::write(&path, &bytes).unwrap();
            let err = TokenFile::open(&path).unwrap_err();
            assert!(matches!(err, TokenFileError::Invalid { .. }), "{err}");
            assert!(err.to_string().contains("train.tokens"), "{err}");
        }
        let missing = TokenFile::open(&dir.path().join("none.tokens")).unwrap_err();
        assert!(missing.to_string().contains("none.tokens"), "{missing}");
        let uneven = TokenRow {
            ids: vec![1, 2],
            mask: vec![true],
        };
        assert!(write_token_file(&path, &[uneven]).is_err());
    }

    #[test]
    fn length_stats_use_nearest_rank() {
        assert_eq!(LengthStats::of(&[]), None);
        let lengths: Vec<usize> = (1..=100).rev().collect();
        let s = LengthStats::of(&lengths).unwrap();
        assert_eq!((s.min, s.p50, s.p95, s.max), (1, 50, 95, 100));
        assert!((s.mean - 50.5).abs() < 1e-9);
        let one = LengthStats::of(&[7]).unwrap();
        assert_eq!((one.min, one.p50, one.p95, one.max), (7, 7, 7, 7));
    }

    #[test]
    fn params_have_defaults_and_reject_unknown_fields() {
        let p: FormatParams = serde_json::from_value(json!({})).unwrap();
        assert_eq!(p, FormatParams::default());
        assert_eq!((p.max_len, p.truncate, p.preview), (2048, false, 3));
        assert!(serde_json::from_value::<FormatParams>(json!({"max_length": 10})).is_err());
    }

    struct Run {
        out: tempfile::TempDir,
        report: Result<Report, StageError>,
    }

    fn run_stage(params: &FormatParams, splits: &[(&str, String)]) -> Run {
        let data = tempfile::tempdir().unwrap();
        for (split, text) in splits {
            fs::write(data.path().join(format!("{split}.jsonl")), text).unwrap();
        }
        let out = tempfile::tempdir().unwrap();
        let inputs = BTreeMap::from([
            ("data".to_string(), data.path().to_path_buf()),
            ("model".to_string(), golden::tokenizer_dir().to_path_buf()),
        ]);
        let cancel = AtomicBool::new(false);
        let ctx = Context {
            stage: "format",
            inputs: &inputs,
            out: out.path(),
            state: crate::contract::unused_state(),
            device: crate::contract::Device::Cpu,
            progress: &NoProgress,
            cancel: &cancel,
            seed: 0,
        };
        let report = Format.run(params, &ctx);
        Run { out, report }
    }

    fn jsonl(convs: &[&Conversation]) -> String {
        convs
            .iter()
            .map(|c| serde_json::to_string(c).unwrap() + "\n")
            .collect()
    }

    #[test]
    fn run_writes_tokens_preview_metrics_and_quarantine() {
        let cases = golden::cases();
        let default_reply = FormatParams::default().no_call_reply;
        let plain: Vec<&golden::Case> = cases
            .iter()
            .filter(|c| c.enable_thinking.is_none())
            .filter(|c| !c.conversation.gold_calls.is_empty() || c.no_call_reply == default_reply)
            .collect();
        let convs: Vec<&Conversation> = plain.iter().map(|c| &c.conversation).collect();
        let longest = plain.iter().map(|c| c.full_ids.len()).max().unwrap();
        let max_len = plain.iter().map(|c| c.full_ids.len()).sum::<usize>() / plain.len();
        let too_long = plain.iter().filter(|c| c.full_ids.len() > max_len).count();
        assert!(too_long > 0 && longest > max_len);
        let empty = Conversation {
            id: "empty".into(),
            messages: vec![],
            tools: vec![],
            gold_calls: vec![],
        };
        let train = jsonl(&convs[..60]) + "{\"id\": \"broken\", \n" + &jsonl(&[&empty]);
        let splits = [
            ("train", train),
            ("dev", jsonl(&convs[60..80])),
            ("test", String::new()),
        ];
        let params = FormatParams {
            max_len,
            ..FormatParams::default()
        };
        let run = run_stage(&params, &splits);
        let report = run.report.unwrap();
        let out = run.out.path();

        let metrics: Value =
            serde_json::from_slice(&fs::read(out.join("metrics.json")).unwrap()).unwrap();
        let train_m = &metrics["splits"]["train"];
        let over =
            |r: &[&golden::Case]| r.iter().filter(|c| c.full_ids.len() > max_len).count() as u64;
        assert_eq!(train_m["rows_in"], 62);
        assert_eq!(train_m["rows_quarantined"], over(&plain[..60]) + 2);
        assert_eq!(train_m["quarantined_by_reason"]["malformed_row"], 1);
        assert_eq!(train_m["quarantined_by_reason"]["no_messages"], 1);
        assert_eq!(train_m["rows_truncated"], 0);
        assert_eq!(
            metrics["splits"]["dev"]["rows_kept"],
            20 - over(&plain[60..80])
        );
        assert_eq!(metrics["splits"]["test"]["rows_in"], 0);
        assert_eq!(metrics["splits"]["test"]["length"], Value::Null);
        let rows_in = metrics["rows_in"].as_u64().unwrap();
        let kept_plus_q =
            metrics["rows_kept"].as_u64().unwrap() + metrics["rows_quarantined"].as_u64().unwrap();
        assert_eq!(rows_in, kept_plus_q);
        assert!(train_m["length"]["max"].as_u64().unwrap() <= max_len as u64);
        assert!(report.summary.contains("tokens"), "{}", report.summary);

        // Every kept train row is the golden tokenization, in input order.
        let file = TokenFile::open(&out.join("train.tokens")).unwrap();
        let kept: Vec<&&golden::Case> = plain[..60]
            .iter()
            .filter(|c| c.full_ids.len() <= max_len)
            .collect();
        assert_eq!(file.len(), kept.len());
        for (i, case) in kept.iter().enumerate() {
            let (ids, mask) = file.get(i).unwrap();
            assert_eq!(ids, &case.full_ids[..], "{}", case.conversation.id);
            assert!(!mask[..case.prompt_ids.len()].iter().any(|m| *m));
            assert!(mask[case.prompt_ids.len()]);
        }
        assert_eq!(train_m["tokens"], file.total_tokens() as u64);
        assert_eq!(TokenFile::open(&out.join("test.tokens")).unwrap().len(), 0);

        let quarantine = fs::read_to_string(out.join("quarantine.jsonl")).unwrap();
        let lines: Vec<Value> = quarantine
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines.len() as u64,
            metrics["rows_quarantined"].as_u64().unwrap()
        );
        let broken = lines.iter().find(|q| q["index"] == 60).unwrap();
        assert_eq!(broken["split"], "train");
        assert!(
            broken["reason"]
                .as_str()
                .unwrap()
                .starts_with("malformed_row")
        );
        assert!(
            lines
                .iter()
                .any(|q| q["reason"].as_str().unwrap().starts_with("too_long"))
        );
        assert!(lines.iter().any(|q| q["split"] == "dev") == (over(&plain[60..80]) > 0));

        let preview = fs::read_to_string(out.join(PREVIEW_FILE)).unwrap();
        assert_eq!(preview.matches("=== train[").count(), 3);
        assert_eq!(preview.matches(LOSS_START).count(), 3);
        assert_eq!(
            preview.matches(&format!("<|im_end|>{LOSS_END}\n")).count(),
            3
        );
    }

    #[test]
    fn truncate_cuts_long_rows_and_counts_them() {
        let cases = golden::cases();
        let case = cases
            .iter()
            .find(|c| c.enable_thinking.is_none() && c.full_ids.len() > c.prompt_ids.len() + 20)
            .unwrap();
        let max_len = case.prompt_ids.len() + 5;
        let params = FormatParams {
            max_len,
            truncate: true,
            preview: 0,
            no_call_reply: case.no_call_reply.clone(),
        };
        let tiny = FormatParams {
            max_len: case.prompt_ids.len(),
            ..params.clone()
        };
        let text = jsonl(&[&case.conversation]);
        let splits = [
            ("train", text.clone()),
            ("dev", String::new()),
            ("test", String::new()),
        ];

        let run = run_stage(&params, &splits);
        run.report.unwrap();
        let file = TokenFile::open(&run.out.path().join("train.tokens")).unwrap();
        let (ids, mask) = file.get(0).unwrap();
        assert_eq!(ids, &case.full_ids[..max_len]);
        assert_eq!(mask.iter().filter(|m| **m).count(), 5);
        let metrics: Value =
            serde_json::from_slice(&fs::read(run.out.path().join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(metrics["rows_truncated"], 1);
        assert_eq!(
            fs::read_to_string(run.out.path().join(PREVIEW_FILE)).unwrap(),
            ""
        );

        // A cut that leaves nothing to learn is no row at all.
        let run = run_stage(&tiny, &splits);
        run.report.unwrap();
        let file = TokenFile::open(&run.out.path().join("train.tokens")).unwrap();
        assert!(file.is_empty());
    }

    #[test]
    fn a_missing_split_fails_naming_its_path() {
        let run = run_stage(&FormatParams::default(), &[("train", String::new())]);
        let err = run.report.unwrap_err();
        assert!(
            matches!(&err, StageError::Io { path, .. } if path.ends_with("dev.jsonl")),
            "{err}"
        );
    }

    #[test]
    fn a_cancelled_run_stops() {
        let data = tempfile::tempdir().unwrap();
        for split in SPLITS {
            fs::write(data.path().join(format!("{split}.jsonl")), "").unwrap();
        }
        let out = tempfile::tempdir().unwrap();
        let inputs = BTreeMap::from([
            ("data".to_string(), data.path().to_path_buf()),
            ("model".to_string(), golden::tokenizer_dir().to_path_buf()),
        ]);
        let cancel = AtomicBool::new(true);
        let ctx = Context {
            stage: "format",
            inputs: &inputs,
            out: out.path(),
            state: crate::contract::unused_state(),
            device: crate::contract::Device::Cpu,
            progress: &NoProgress,
            cancel: &cancel,
            seed: 0,
        };
        assert!(matches!(
            Format.run(&FormatParams::default(), &ctx),
            Err(StageError::Cancelled)
        ));
    }
}
