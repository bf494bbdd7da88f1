//! Random-initialized models with the real tokenizer: `forge model init` and the `model-init`
//! stage.
//!
//! No Qwen weights are reachable offline, and speed or memory do not depend on the weights'
//! values, so tests, the default pipeline and GPU benchmarks run on models of the real
//! architectures initialized the way transformers initializes them: every matrix normal(0, 0.02),
//! biases 0, RMSNorm weights 1. The draw is seeded and split into fixed chunks, each with its own
//! generator derived from (seed, tensor name, chunk), so the bytes depend on the seed alone — not
//! on thread count or tensor order — and a stage's output hashes the same on every machine. A 4B
//! model's 8 GB are generated one tensor at a time as they are written.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::ModelError;
use super::config::{Arch, INIT_STD, ModelConfig, Preset};
use super::decoder::{Decoder, tensor_shapes};
use super::load::{self, CONFIG_FILE, LazyTensor};
use crate::contract::{Context, Input, Report, StageError, TypedStage};
use crate::data::format::{TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, load_tokenizer};
use crate::data::synth::rng::Rng;

/// Elements drawn by one generator: the unit of parallelism and of reproducibility.
const CHUNK: usize = 1 << 20;

/// Above this many bytes the weights are written as shards (transformers' default of 5 GB).
pub const MAX_SHARD_BYTES: u64 = 5 * 1024 * 1024 * 1024;

/// A model shape: a named preset or a `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Preset(Preset),
    Config(ModelConfig),
}

impl Shape {
    /// A preset name (`tiny`, `0.6b`, `4b`) or the path of a `config.json`.
    pub fn parse(preset_or_path: &str) -> Result<Shape, ModelError> {
        if let Some(p) = Preset::parse(preset_or_path) {
            return Ok(Shape::Preset(p));
        }
        let path = Path::new(preset_or_path);
        if !path.is_file() {
            return Err(ModelError::Invalid(format!(
                "preset `{preset_or_path}` is neither one of {} nor a config.json file",
                Preset::NAMES.join(", ")
            )));
        }
        Ok(Shape::Config(ModelConfig::from_file(path)?))
    }

    /// The config for `arch` (a config file must be of that arch).
    pub fn config(&self, arch: Arch) -> Result<ModelConfig, ModelError> {
        match self {
            Shape::Preset(p) => p.config(arch).map_err(ModelError::Invalid),
            Shape::Config(c) if c.arch == arch => Ok(c.clone()),
            Shape::Config(c) => Err(ModelError::Invalid(format!(
                "the config is a {} model, not {arch}",
                c.arch
            ))),
        }
    }
}

/// What [`init_model`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct InitReport {
    pub config: ModelConfig,
    pub dtype: DType,
    pub parameters: usize,
}

impl InitReport {
    pub fn summary(&self) -> String {
        let c = &self.config;
        format!(
            "{} model, {} layers, hidden {}, {:.2}M parameters ({})",
            c.arch,
            c.num_layers,
            c.hidden_size,
            self.parameters as f64 / 1e6,
            super::config::dtype_name(self.dtype)
        )
    }
}

/// How a tensor is initialized, by its name.
fn is_norm(name: &str) -> bool {
    name.ends_with("norm.weight")
}

/// The f32 values of tensor `name` with `n` elements, chunk `chunk` (of [`CHUNK`] elements).
fn draw(seed: u64, name: &str, n: usize, chunk: usize) -> Vec<f32> {
    let len = CHUNK.min(n - chunk * CHUNK);
    if is_norm(name) {
        return vec![1.0; len];
    }
    if name.ends_with(".bias") {
        return vec![0.0; len];
    }
    let name_hash = u64::from_le_bytes(
        blake3::hash(name.as_bytes()).as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let mut rng = Rng::for_item(seed ^ name_hash, chunk as u64);
    let mut out = Vec::with_capacity(len);
    let unit = |rng: &mut Rng| ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    while out.len() < len {
        // Box–Muller: two independent normals per pair of uniforms in (0, 1).
        let (u1, u2) = (unit(&mut rng), unit(&mut rng));
        let r = (-2.0 * u1.ln()).sqrt() * INIT_STD;
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        if out.len() < len {
            out.push((r * theta.sin()) as f32);
        }
    }
    out
}

/// All values of tensor `name`, as little-endian bytes of `dtype`.
fn tensor_values(seed: u64, name: &str, n: usize, dtype: DType) -> Result<Vec<u8>, ModelError> {
    let chunks: Vec<Vec<u8>> = (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|c| {
            let v = draw(seed, name, n, c);
            match dtype {
                DType::F32 => Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                DType::BF16 => Ok(v
                    .iter()
                    .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                    .collect()),
                DType::F16 => Ok(v
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect()),
                other => Err(ModelError::Invalid(format!(
                    "cannot initialize weights in {other:?}"
                ))),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(chunks.concat())
}

/// The dtype a config's weights are written in: its own, or f32.
fn weight_dtype(config: &ModelConfig) -> DType {
    config.dtype.unwrap_or(DType::F32)
}

/// A random-initialized decoder in memory (the same values [`init_model`] writes for `seed`).
pub fn random_decoder(
    config: &ModelConfig,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<Decoder, ModelError> {
    let mut weights = std::collections::HashMap::new();
    for (name, shape) in tensor_shapes(config) {
        let n = shape.iter().product();
        let bytes = tensor_values(seed, &name, n, DType::F32)?;
        let t = Tensor::from_raw_buffer(&bytes, DType::F32, &shape, device)?.to_dtype(dtype)?;
        weights.insert(name, t);
    }
    Decoder::from_weights(config.clone(), &mut weights, dtype, device)
}

/// Writes a random-initialized model of `arch` and `shape` into `out_dir` (created if missing):
/// `config.json`, `model.safetensors` (sharded above 5 GB), and `tokenizer.json` +
/// `tokenizer_config.json` copied from `tokenizer_dir`. The tokenizer must fit the vocabulary.
pub fn init_model(
    arch: Arch,
    shape: &Shape,
    seed: u64,
    out_dir: &Path,
    tokenizer_dir: &Path,
) -> Result<InitReport, ModelError> {
    let config = shape.config(arch)?;
    let tokenizer = load_tokenizer(tokenizer_dir).map_err(stage_to_model)?;
    let tokens = tokenizer.get_vocab_size(true);
    if tokens > config.vocab_size {
        return Err(ModelError::Invalid(format!(
            "the tokenizer in {} has {tokens} tokens, more than the model's vocabulary of {}",
            tokenizer_dir.display(),
            config.vocab_size
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::io(out_dir, e))?;
    for file in [TOKENIZER_FILE, TOKENIZER_CONFIG_FILE] {
        let (from, to) = (tokenizer_dir.join(file), out_dir.join(file));
        std::fs::copy(&from, &to).map_err(|e| ModelError::io(&from, e))?;
    }
    let dtype = weight_dtype(&config);
    let mut written = config.clone();
    written.dtype = Some(dtype);
    load::write_text(
        &out_dir.join(CONFIG_FILE),
        &serde_json::to_string_pretty(&written.to_hf_json()).expect("JSON"),
    )?;
    let tensors = tensor_shapes(&config)
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let key = name.clone();
            let lazy = LazyTensor::new(dtype, shape, move || tensor_values(seed, &key, n, dtype));
            (name, lazy)
        })
        .collect();
    load::save_weights(out_dir, tensors, MAX_SHARD_BYTES)?;
    Ok(InitReport {
        parameters: config.parameter_count(),
        config: written,
        dtype,
    })
}

fn stage_to_model(e: StageError) -> ModelError {
    match e {
        StageError::Io { path, source } => ModelError::Io { path, source },
        other => ModelError::Invalid(other.to_string()),
    }
}

/// The `model-init` stage: a random-initialized model with the real tokenizer, cached like any
/// stage output. `preset: config` takes the shape from the optional `config` input (a
/// `config.json`), so that editing that file reruns the stage.
pub struct ModelInit;

/// A preset name as forge.yaml spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresetParam {
    #[serde(rename = "tiny")]
    Tiny,
    #[serde(rename = "0.6b")]
    Qwen3_0_6B,
    #[serde(rename = "4b")]
    Qwen3_4B,
    /// The `config` input's `config.json`.
    #[serde(rename = "config")]
    Config,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInitParams {
    #[serde(default = "default_arch")]
    pub arch: ArchParam,
    #[serde(default = "default_preset")]
    pub preset: PresetParam,
    #[serde(default)]
    pub seed: u64,
}

/// An arch as forge.yaml spells it (`model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchParam {
    Qwen3,
    Qwen2,
    Llama,
}

impl From<ArchParam> for Arch {
    fn from(a: ArchParam) -> Arch {
        match a {
            ArchParam::Qwen3 => Arch::Qwen3,
            ArchParam::Qwen2 => Arch::Qwen2,
            ArchParam::Llama => Arch::Llama,
        }
    }
}

fn default_arch() -> ArchParam {
    ArchParam::Qwen3
}
fn default_preset() -> PresetParam {
    PresetParam::Tiny
}

impl TypedStage for ModelInit {
    type Params = ModelInitParams;
    const KIND: &'static str = "model-init";
    /// 2: the tiny preset's heads are 64 dims wide.
    const VERSION: u32 = 2;
    const INPUTS: &'static [Input] = &[
        Input {
            name: "tokenizer",
            required: true,
        },
        Input {
            name: "config",
            required: false,
        },
    ];
    const ABOUT: &'static str =
        "a random-initialized model (Qwen3/Qwen2/Llama shape) with the real tokenizer files";

    fn run(&self, params: &ModelInitParams, ctx: &Context<'_>) -> Result<Report, StageError> {
        let tokenizer = ctx.input("tokenizer")?;
        let config_input = ctx.inputs.get("config");
        let shape = match (params.preset, config_input) {
            (PresetParam::Config, Some(path)) => Shape::Config(ModelConfig::from_file(path)?),
            (PresetParam::Config, None) => {
                return Err(StageError::Failed(
                    "preset `config` needs the input `config` (a config.json)".into(),
                ));
            }
            (_, Some(_)) => {
                return Err(StageError::Failed(
                    "input `config` is given: set preset to `config` to use it".into(),
                ));
            }
            (PresetParam::Tiny, None) => Shape::Preset(Preset::Tiny),
            (PresetParam::Qwen3_0_6B, None) => Shape::Preset(Preset::Qwen3_0_6B),
            (PresetParam::Qwen3_4B, None) => Shape::Preset(Preset::Qwen3_4B),
        };
        ctx.check_cancelled()?;
        let report = init_model(params.arch.into(), &shape, params.seed, ctx.out, tokenizer)?;
        Ok(Report {
            summary: report.summary(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::contract::NoProgress;
    use crate::data::template::golden::tokenizer_dir;

    #[test]
    fn draws_follow_the_seed_only_and_look_normal() {
        let n = CHUNK + 1000;
        let a = draw(3, "model.layers.0.mlp.up_proj.weight", n, 0);
        assert_eq!(a, draw(3, "model.layers.0.mlp.up_proj.weight", n, 0));
        assert_ne!(a, draw(4, "model.layers.0.mlp.up_proj.weight", n, 0));
        assert_ne!(a, draw(3, "model.layers.1.mlp.up_proj.weight", n, 0));
        assert_eq!(draw(3, "x.weight", n, 1).len(), 1000);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((var.sqrt() - INIT_STD).abs() < 1e-4, "std {}", var.sqrt());
        assert!(
            draw(3, "model.norm.weight", 10, 0)
                .iter()
                .all(|&x| x == 1.0)
        );
        assert!(draw(3, "a.bias", 10, 0).iter().all(|&x| x == 0.0));
    }

    #[test]
    fn the_stage_writes_a_loadable_tiny_model_with_the_tokenizer() {
        let out = tempfile::tempdir().unwrap();
        let inputs = BTreeMap::from([("tokenizer".to_string(), tokenizer_dir().to_path_buf())]);
        let cancel = AtomicBool::new(false);
        let ctx = Context {
            stage: "model",
            inputs: &inputs,
            out: out.path(),
            state: crate::contract::unused_state(),
            device: crate::Device::Cpu,
            progress: &NoProgress,
            cancel: &cancel,
            seed: 0,
        };
        let params = crate::Stage::check_params(&ModelInit, &serde_json::json!({})).unwrap();
        assert_eq!(
            params,
            serde_json::json!({"arch": "qwen3", "preset": "tiny", "seed": 0})
        );
        let report = crate::Stage::run(&ModelInit, &params, &ctx).unwrap();
        assert!(
            report
                .summary
                .starts_with("qwen3 model, 4 layers, hidden 64"),
            "{}",
            report.summary
        );
        for f in [
            CONFIG_FILE,
            "model.safetensors",
            TOKENIZER_FILE,
            TOKENIZER_CONFIG_FILE,
        ] {
            assert!(out.path().join(f).is_file(), "{f}");
        }
        let model = Decoder::load(out.path(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(model.config(), &Preset::Tiny.config(Arch::Qwen3).unwrap());
        // The written weights are random_decoder's for the same seed.
        let mem = random_decoder(model.config(), 0, DType::F32, &Device::Cpu).unwrap();
        for ((n1, a), (n2, b)) in model
            .named_weights()
            .unwrap()
            .iter()
            .zip(mem.named_weights().unwrap().iter())
        {
            assert_eq!(n1, n2);
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(d, 0.0, "{n1}");
        }
        // A second run with the same seed writes the same bytes.
        let again = tempfile::tempdir().unwrap();
        let ctx2 = Context {
            out: again.path(),
            ..ctx
        };
        crate::Stage::run(&ModelInit, &params, &ctx2).unwrap();
        let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
        assert!(read(out.path()) == read(again.path()));

        let bad = crate::Stage::check_params(&ModelInit, &serde_json::json!({"preset": "7b"}));
        assert!(bad.unwrap_err().to_string().contains("preset"));
    }

    #[test]
    fn file_presets_must_match_the_arch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let config = Preset::Tiny.config(Arch::Llama).unwrap();
        std::fs::write(&path, config.to_hf_json().to_string()).unwrap();
        let shape = Shape::parse(path.to_str().unwrap()).unwrap();
        assert_eq!(shape.config(Arch::Llama).unwrap(), config);
        assert!(shape.config(Arch::Qwen3).is_err());
        let err = Shape::parse("huge").unwrap_err().to_string();
        assert!(err.contains("tiny, 0.6b, 4b"), "{err}");
    }
}
