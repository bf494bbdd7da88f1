//! A Hugging Face `config.json` read into the one shape forge's decoder needs.
//!
//! Qwen3, Qwen2 and Llama are one network with a few switches: Qwen3 normalizes each query and
//! key head with an RMSNorm and states `head_dim` explicitly; Qwen2 puts biases on the q/k/v
//! projections; Llama may bias every attention projection (`attention_bias`) or the MLP
//! (`mlp_bias`). Each arch's switches are decided here from `model_type`, so the decoder never
//! asks which model it is. Both spellings transformers has used are accepted (`rope_theta` and
//! `torch_dtype` before v5, `rope_parameters` and `dtype` after), and anything the decoder cannot
//! honour — RoPE scaling, sliding-window attention, another activation — is an error, never
//! silently ignored.

use std::path::Path;

use candle_core::DType;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ModelError;

/// The architectures forge implements, by their `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    Qwen3,
    Qwen2,
    Llama,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Qwen3, Arch::Qwen2, Arch::Llama];

    /// `config.json`'s `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Qwen3 => "qwen3",
            Arch::Qwen2 => "qwen2",
            Arch::Llama => "llama",
        }
    }

    /// `config.json`'s `architectures` entry for the causal-LM head.
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Qwen3 => "Qwen3ForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Llama => "LlamaForCausalLM",
        }
    }

    pub fn parse(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.model_type() == name)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.model_type())
    }
}

/// Everything the decoder needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections.
    pub qkv_bias: bool,
    /// A bias on the o projection.
    pub o_bias: bool,
    /// Biases on gate, up and down.
    pub mlp_bias: bool,
    /// Per-head RMSNorm of queries and keys before RoPE (Qwen3).
    pub qk_norm: bool,
    /// The dtype the checkpoint was saved in, if the config says.
    pub dtype: Option<DType>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

/// The raw fields of a `config.json` that matter; the rest is ignored.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    rms_norm_eps: f64,
    tie_word_embeddings: Option<bool>,
    hidden_act: Option<String>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    use_sliding_window: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    pad_token_id: Option<Value>,
}

/// transformers' default `rope_theta` when a config names none.
const DEFAULT_ROPE_THETA: f64 = 10_000.0;

impl ModelConfig {
    /// Reads `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<ModelConfig, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        ModelConfig::from_json(&text).map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<ModelConfig, String> {
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let arch = Arch::parse(&raw.model_type).ok_or_else(|| {
            format!(
                "model_type `{}` is not supported (supported: qwen3, qwen2, llama)",
                raw.model_type
            )
        })?;
        if let Some(act) = &raw.hidden_act
            && act != "silu"
        {
            return Err(format!("hidden_act `{act}` is not supported (only silu)"));
        }
        if raw.use_sliding_window == Some(true) {
            return Err(
                "sliding-window attention (use_sliding_window: true) is not supported".into(),
            );
        }
        let rope_theta = rope_theta(&raw)?;
        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if raw.num_attention_heads == 0 || num_kv_heads == 0 {
            return Err("num_attention_heads and num_key_value_heads must be positive".into());
        }
        if !raw.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({num_kv_heads})",
                raw.num_attention_heads
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => d,
            None if raw.hidden_size.is_multiple_of(raw.num_attention_heads) => {
                raw.hidden_size / raw.num_attention_heads
            }
            None => {
                return Err(format!(
                    "hidden_size ({}) is not a multiple of num_attention_heads ({}) and no head_dim is given",
                    raw.hidden_size, raw.num_attention_heads
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(format!("head_dim {head_dim} is odd: RoPE needs pairs"));
        }
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            // Qwen2's q/k/v projections always carry a bias, its o projection never does.
            Arch::Qwen2 => (true, false),
            Arch::Qwen3 | Arch::Llama => (attention_bias, attention_bias),
        };
        let dtype = match raw.dtype.as_deref().or(raw.torch_dtype.as_deref()) {
            None => None,
            Some(name) => Some(parse_dtype(name)?),
        };
        Ok(ModelConfig {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(usize::MAX),
            rope_theta,
            rms_norm_eps: raw.rms_norm_eps,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: arch == Arch::Llama && raw.mlp_bias.unwrap_or(false),
            qk_norm: arch == Arch::Qwen3,
            dtype,
            bos_token_id: token_ids("bos_token_id", raw.bos_token_id.as_ref())?
                .first()
                .copied(),
            eos_token_ids: token_ids("eos_token_id", raw.eos_token_id.as_ref())?,
            pad_token_id: token_ids("pad_token_id", raw.pad_token_id.as_ref())?
                .first()
                .copied(),
        })
    }

    /// The `config.json` transformers (v4 and v5), vLLM and forge itself read back as this config.
    pub fn to_hf_json(&self) -> Value {
        let mut v = json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "initializer_range": INIT_STD,
            "use_cache": true,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": match self.eos_token_ids.as_slice() {
                [] => Value::Null,
                [one] => json!(one),
                many => json!(many),
            },
        });
        let obj = v.as_object_mut().expect("a JSON object");
        if let Some(pad) = self.pad_token_id {
            obj.insert("pad_token_id".into(), json!(pad));
        }
        if let Some(dtype) = self.dtype {
            obj.insert("torch_dtype".into(), json!(dtype_name(dtype)));
        }
        match self.arch {
            Arch::Qwen3 | Arch::Llama => {
                obj.insert("attention_bias".into(), json!(self.qkv_bias));
            }
            Arch::Qwen2 => {}
        }
        match self.arch {
            Arch::Llama => {
                obj.insert("mlp_bias".into(), json!(self.mlp_bias));
            }
            Arch::Qwen3 | Arch::Qwen2 => {
                obj.insert("use_sliding_window".into(), json!(false));
            }
        }
        v
    }

    /// Queries per key/value head (grouped-query attention).
    pub fn kv_groups(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// The number of parameters (tied embeddings counted once).
    pub fn parameter_count(&self) -> usize {
        let (h, q, kv) = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
        );
        let attn = h * q
            + 2 * h * kv
            + q * h
            + if self.qkv_bias { q + 2 * kv } else { 0 }
            + if self.o_bias { h } else { 0 }
            + if self.qk_norm { 2 * self.head_dim } else { 0 };
        let mlp = 3 * h * self.intermediate_size
            + if self.mlp_bias {
                2 * self.intermediate_size + h
            } else {
                0
            };
        let layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_layers * layer + h
    }
}

fn rope_theta(raw: &HfConfig) -> Result<f64, String> {
    for (key, value) in [
        ("rope_scaling", &raw.rope_scaling),
        ("rope_parameters", &raw.rope_parameters),
    ] {
        let Some(Value::Object(params)) = value else {
            continue;
        };
        let kind = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if kind != "default" {
            return Err(format!(
                "{key}: RoPE type `{kind}` is not supported (only default)"
            ));
        }
        if let Some(theta) = params.get("rope_theta").and_then(Value::as_f64) {
            return Ok(theta);
        }
    }
    Ok(raw.rope_theta.unwrap_or(DEFAULT_ROPE_THETA))
}

fn token_ids(key: &str, value: Option<&Value>) -> Result<Vec<u32>, String> {
    let one = |v: &Value| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| format!("{key}: expected a token id, got {v}"))
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

/// A dtype by its PyTorch name (`bfloat16`) or short name (`bf16`).
pub fn parse_dtype(name: &str) -> Result<DType, String> {
    match name.trim_start_matches("torch.") {
        "float32" | "f32" | "float" => Ok(DType::F32),
        "bfloat16" | "bf16" => Ok(DType::BF16),
        "float16" | "f16" | "half" => Ok(DType::F16),
        "float64" | "f64" | "double" => Ok(DType::F64),
        other => Err(format!(
            "dtype `{other}` is not supported (float32, bfloat16, float16)"
        )),
    }
}

/// PyTorch's name of a float dtype, as `config.json` spells it.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        DType::F64 => "float64",
        _ => "float32",
    }
}

/// The standard deviation of transformers' weight init (`initializer_range`), which
/// [`super::init`] follows.
pub const INIT_STD: f64 = 0.02;

/// The Qwen3 tokenizer's ids that presets put into the config: `<|endoftext|>` (BOS) and
/// `<|im_end|>` (EOS of a chat turn).
const QWEN3_BOS: u32 = 151_643;
const QWEN3_EOS: u32 = 151_645;
/// Qwen3's embedding rows: the tokenizer's 151,669 tokens padded to a multiple of 128.
pub const QWEN3_VOCAB: usize = 151_936;

/// A named model shape for `forge model init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// A few layers, hidden 64, the real vocabulary: trains on a CPU in minutes.
    Tiny,
    /// Qwen3-0.6B's shape.
    Qwen3_0_6B,
    /// Qwen3-4B's shape.
    Qwen3_4B,
}

impl Preset {
    pub const NAMES: [&'static str; 3] = ["tiny", "0.6b", "4b"];

    pub fn parse(name: &str) -> Option<Preset> {
        match name {
            "tiny" => Some(Preset::Tiny),
            "0.6b" => Some(Preset::Qwen3_0_6B),
            "4b" => Some(Preset::Qwen3_4B),
            _ => None,
        }
    }

    /// The config of this preset for `arch`. The real-model shapes exist only for Qwen3; tiny
    /// exists for every arch (with its own switches) and is saved in f32, the others in bf16 as
    /// the released checkpoints are.
    pub fn config(self, arch: Arch) -> Result<ModelConfig, String> {
        let base = |hidden, inter, layers, heads, kv, head_dim, dtype| ModelConfig {
            arch,
            vocab_size: QWEN3_VOCAB,
            hidden_size: hidden,
            intermediate_size: inter,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            max_position_embeddings: 40_960,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            qkv_bias: arch == Arch::Qwen2,
            o_bias: false,
            mlp_bias: false,
            qk_norm: arch == Arch::Qwen3,
            dtype: Some(dtype),
            bos_token_id: Some(QWEN3_BOS),
            eos_token_ids: vec![QWEN3_EOS],
            pad_token_id: None,
        };
        match (self, arch) {
            // Heads of 64 dims, though the model is 64 wide: Qwen3 normalizes queries and keys,
            // which caps an attention logit at √head_dim (±4 with 16 dims, too flat for attention
            // to pick one position out of hundreds; ±8 with 64).
            (Preset::Tiny, _) => Ok(base(64, 256, 4, 4, 2, 64, DType::F32)),
            (Preset::Qwen3_0_6B, Arch::Qwen3) => Ok(base(1024, 3072, 28, 16, 8, 128, DType::BF16)),
            (Preset::Qwen3_4B, Arch::Qwen3) => Ok(base(2560, 9728, 36, 32, 8, 128, DType::BF16)),
            (_, arch) => Err(format!(
                "preset {self:?} exists only for qwen3, not {arch} (tiny exists for every arch)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen3_4b_json() -> &'static str {
        // Qwen3-4B's config.json as released (transformers 4 spelling).
        r#"{"architectures":["Qwen3ForCausalLM"],"attention_bias":false,"attention_dropout":0.0,
            "bos_token_id":151643,"eos_token_id":151645,"head_dim":128,"hidden_act":"silu",
            "hidden_size":2560,"initializer_range":0.02,"intermediate_size":9728,
            "max_position_embeddings":40960,"max_window_layers":36,"model_type":"qwen3",
            "num_attention_heads":32,"num_hidden_layers":36,"num_key_value_heads":8,
            "rms_norm_eps":1e-06,"rope_scaling":null,"rope_theta":1000000,"sliding_window":null,
            "tie_word_embeddings":true,"torch_dtype":"bfloat16","transformers_version":"4.51.0",
            "use_cache":true,"use_sliding_window":false,"vocab_size":151936}"#
    }

    #[test]
    fn qwen3_4b_config_matches_its_preset() {
        let parsed = ModelConfig::from_json(qwen3_4b_json()).unwrap();
        assert_eq!(parsed, Preset::Qwen3_4B.config(Arch::Qwen3).unwrap());
        assert_eq!(parsed.kv_groups(), 4);
        // Qwen3-4B has 4.02 B parameters with the tied embedding counted once.
        assert_eq!(parsed.parameter_count(), 4_022_468_096);
    }

    #[test]
    fn transformers_5_spelling_and_qwen2_biases() {
        let text = r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
            "num_key_value_heads":1,"rms_norm_eps":1e-6,"dtype":"float16",
            "rope_parameters":{"rope_theta":5000.0,"rope_type":"default"},"eos_token_id":[3,4]}"#;
        let c = ModelConfig::from_json(text).unwrap();
        assert_eq!(
            (
                c.rope_theta,
                c.dtype,
                c.head_dim,
                c.qkv_bias,
                c.o_bias,
                c.qk_norm
            ),
            (5000.0, Some(DType::F16), 4, true, false, false)
        );
        assert_eq!(c.eos_token_ids, vec![3, 4]);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn unsupported_features_are_errors_not_ignored() {
        let with = |extra: &str| {
            format!(
                r#"{{"model_type":"llama","vocab_size":10,"hidden_size":8,"intermediate_size":16,
                "num_hidden_layers":1,"num_attention_heads":2,"rms_norm_eps":1e-6{extra}}}"#
            )
        };
        assert!(ModelConfig::from_json(&with("")).is_ok());
        for (extra, needle) in [
            (
                r#","rope_scaling":{"rope_type":"llama3","factor":8.0}"#,
                "llama3",
            ),
            (r#","hidden_act":"gelu""#, "gelu"),
            (r#","use_sliding_window":true"#, "sliding"),
            (r#","num_key_value_heads":3"#, "multiple"),
        ] {
            let err = ModelConfig::from_json(&with(extra)).unwrap_err();
            assert!(err.contains(needle), "{extra}: {err}");
        }
        let err = ModelConfig::from_json(&with("").replace("llama", "gpt2")).unwrap_err();
        assert!(err.contains("gpt2"), "{err}");
    }

    #[test]
    fn hf_json_round_trips_for_every_arch() {
        for arch in Arch::ALL {
            let mut config = Preset::Tiny.config(arch).unwrap();
            config.mlp_bias = arch == Arch::Llama;
            config.o_bias = arch == Arch::Llama;
            config.qkv_bias = arch != Arch::Qwen3;
            let back = ModelConfig::from_json(&config.to_hf_json().to_string()).unwrap();
            assert_eq!(back, config, "{arch}");
        }
        assert!(Preset::Qwen3_4B.config(Arch::Llama).is_err());
    }
}
