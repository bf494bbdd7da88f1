//! Adapters on disk in PEFT's layout: what sft/dpo/grpo write, and what `forge generate --adapter`
//! and the eval stage apply.
//!
//! Why PEFT's layout and not our own: an adapter directory forge writes loads with Python PEFT's
//! `PeftModel.from_pretrained` (and vLLM, which reads the same files) onto the same base, and
//! forge loads what PEFT writes; `stages/fixtures/adapter/gen_golden.py` proves both directions.
//! A directory holds two files:
//!
//! - `adapter_model.safetensors` (f32): for each adapted projection
//!   `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` `[r, in]` and
//!   `….lora_B.weight` `[out, r]` (PEFT's prefix on [`LinearId::hf_name`]); the trained token rows as
//!   PEFT's trainable tokens, `base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta`
//!   `[k, hidden]`, plus `base_model.model.lm_head.token_adapter.trainable_tokens_delta` when the
//!   head is not tied to the embedding.
//! - `adapter_config.json`: a `LoraConfig` with the fields PEFT 0.21 writes (`peft_type` LORA,
//!   `task_type` CAUSAL_LM, `r`, `lora_alpha`, `target_modules`, …) and `trainable_token_indices`:
//!   a list of ids for a tied embedding, `{"embed_tokens": ids, "lm_head": ids}` for an untied one.
//!
//! The trap in PEFT's name: `trainable_tokens_delta` is not a delta. PEFT's `TrainableTokensLayer`
//! (peft/tuners/trainable_tokens/layer.py) initializes it with the base rows (`update_layer`) and
//! `index_copy`s it over the base matrix in the forward (`get_merged_weights`): it holds the rows
//! themselves. forge's [`TokenRows`](crate::model::embedding::TokenRows) keeps a true delta added to
//! the frozen rows, so [`save`] writes `base[ids] + delta` and [`load`] subtracts `base[ids]` again.
//!
//! Tied embeddings (Qwen3, SmolLM2): PEFT wraps `embed_tokens` and gives `lm_head` a tied adapter
//! that shares its tensor and saves nothing (`TrainableTokensWrapper.adapter_state_dict` in
//! peft/utils/other.py, tying set up in `set_additional_trainable_modules`), exactly like forge's
//! one `TokenRows` serving both ends.
//!
//! [`load`] keeps the adapter un-merged: the LoRA pairs run beside the live base weights, never
//! folded into them (DESIGN.md: a QLoRA adapter merged into the bf16 weights degenerates).
//! PEFT options that change what the tensors mean and that forge does not implement (DoRA, bias
//! terms, rank/alpha patterns, inits that rewrite the base such as PiSSA) are refused by name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::{Value, json};

use crate::model::ModelError;
use crate::model::decoder::{Decoder, TrainableRows};
use crate::model::linear::{LinearId, Proj};
use crate::model::load;
use crate::model::lora::{Lora, LoraConfig, LoraSet};
use crate::model::nf4::quantize_decoder;
use crate::train::trainer::Quant;

/// The adapter's tensors.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The adapter's `LoraConfig`.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The PEFT release whose format [`save`] writes (its `peft_version` field).
pub const PEFT_VERSION: &str = "0.21.2";

/// PEFT's prefix of every key: `PeftModel.base_model` (the `LoraModel`) `.model` (the base).
const PREFIX: &str = "base_model.model.";
const EMBED_MODULE: &str = "model.embed_tokens";
const HEAD_MODULE: &str = "lm_head";
const TOKENS_SUFFIX: &str = ".token_adapter.trainable_tokens_delta";

/// A trained adapter: LoRA pairs and, optionally, trained token rows of the embedding (and head).
#[derive(Debug, Clone)]
pub struct Adapter {
    pub lora: LoraSet,
    pub rows: Option<TrainableRows>,
}

impl Adapter {
    /// Sets this adapter's tensors (a trainer's, freshly installed) to those of `from` (one read
    /// by [`load`]), to train on from there: every LoRA pair, which must be on the same
    /// projections with the same rank and scale, and the token rows `from` trains, each of which
    /// must be among this adapter's (the rest keep their zero delta).
    pub fn start_from(&self, from: &Adapter) -> Result<(), String> {
        let describe = |set: &LoraSet| {
            let (first, count) = (set.layers.values().next(), set.layers.len());
            let shape = first.map_or("none".into(), |l| {
                format!("r {}, scale {}", l.a().dims()[0], l.scale())
            });
            format!("{count} pairs, {shape}")
        };
        let same = self.lora.layers.len() == from.lora.layers.len()
            && self.lora.layers.iter().all(|(id, ours)| {
                from.lora.layers.get(id).is_some_and(|theirs| {
                    ours.a().dims() == theirs.a().dims()
                        && ours.b().dims() == theirs.b().dims()
                        && ours.scale() == theirs.scale()
                })
            });
        if !same {
            return Err(format!(
                "its LoRA ({}) is not the one this stage trains ({}): lora_r, lora_alpha and \
                 lora_targets must match",
                describe(&from.lora),
                describe(&self.lora)
            ));
        }
        let candle = |e: candle_core::Error| e.to_string();
        for (id, ours) in &self.lora.layers {
            let theirs = &from.lora.layers[id];
            ours.a().set(theirs.a()).map_err(candle)?;
            ours.b().set(theirs.b()).map_err(candle)?;
        }
        let Some(theirs) = &from.rows else {
            return Ok(());
        };
        let Some(ours) = &self.rows else {
            return Err("it trains token rows, and this stage trains none".into());
        };
        let pairs = match (&ours.lm_head, &theirs.lm_head) {
            (None, None) => vec![(&ours.embedding, &theirs.embedding)],
            (Some(ours_head), Some(theirs_head)) => vec![
                (&ours.embedding, &theirs.embedding),
                (ours_head, theirs_head),
            ],
            _ => return Err("its head is tied differently from this model's".into()),
        };
        for (ours, theirs) in pairs {
            let mut delta = ours.delta().to_vec2::<f32>().map_err(candle)?;
            let rows = theirs.delta().to_vec2::<f32>().map_err(candle)?;
            let slot: HashMap<u32, usize> = ours
                .ids()
                .iter()
                .enumerate()
                .map(|(i, &id)| (id, i))
                .collect();
            for (&id, row) in theirs.ids().iter().zip(rows) {
                let Some(&at) = slot.get(&id) else {
                    return Err(format!(
                        "it trains the row of token {id}, which this stage does not"
                    ));
                };
                delta[at] = row;
            }
            let delta = Tensor::new(delta, ours.delta().device())
                .and_then(|d| d.to_dtype(ours.delta().dtype()))
                .map_err(candle)?;
            ours.delta().set(&delta).map_err(candle)?;
        }
        Ok(())
    }
}

fn lora_key(id: &LinearId, half: &str) -> String {
    format!("{PREFIX}{}.lora_{half}.weight", id.hf_name())
}

fn tokens_key(module: &str) -> String {
    format!("{PREFIX}{module}{TOKENS_SUFFIX}")
}

/// `q_proj`, …, `down_proj`: the module's own name, what PEFT's `target_modules` lists.
fn module_leaf(proj: Proj) -> &'static str {
    let path = proj.hf_module();
    path.rsplit('.').next().unwrap_or(path)
}

/// `alpha` as PEFT writes it: an integer when it is one.
fn alpha_json(alpha: f64) -> Value {
    if alpha.fract() == 0.0 && alpha.abs() < 2f64.powi(53) {
        json!(alpha as i64)
    } else {
        json!(alpha)
    }
}

/// `base[ids]` (f32): the frozen rows under a token-row delta.
fn base_rows(weight: &Tensor, ids: &[u32]) -> Result<Tensor, ModelError> {
    let index = Tensor::new(ids, weight.device())?;
    Ok(weight.index_select(&index, 0)?.to_dtype(DType::F32)?)
}

/// Writes `adapter` (installed in `decoder`, whose base weights the token rows are read from) into
/// `dir` (created if missing) as PEFT would: `adapter_model.safetensors` and `adapter_config.json`
/// with `base_model_name_or_path` = `base_model`.
pub fn save(
    adapter: &Adapter,
    decoder: &Decoder,
    dir: &Path,
    base_model: &str,
) -> Result<(), ModelError> {
    let invalid =
        |m: String| ModelError::Invalid(format!("saving an adapter to {}: {m}", dir.display()));
    let config = &adapter.lora.config;
    if config.r == 0 || adapter.lora.layers.is_empty() {
        return Err(invalid(
            "the adapter has no LoRA pairs (r = 0 or no targets)".into(),
        ));
    }
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut targets: BTreeMap<Proj, BTreeSet<usize>> = BTreeMap::new();
    for (id, lora) in &adapter.lora.layers {
        let (out_dim, in_dim) = decoder
            .layers()
            .get(id.layer)
            .map(|l| l.linear(id.proj).weight().dims())
            .ok_or_else(|| {
                invalid(format!(
                    "{} is not a projection of the {}-layer model",
                    id.hf_name(),
                    decoder.layers().len()
                ))
            })?;
        let (r, a_in) = lora.a().dims2()?;
        let (b_out, b_r) = lora.b().dims2()?;
        if (r, b_r, a_in, b_out) != (config.r, config.r, in_dim, out_dim) {
            return Err(invalid(format!(
                "{}: A is {:?} and B {:?}, expected [{}, {in_dim}] and [{out_dim}, {}]",
                id.hf_name(),
                lora.a().dims(),
                lora.b().dims(),
                config.r,
                config.r
            )));
        }
        let want = config.scale();
        if (lora.scale() - want).abs() > 1e-12 * want.abs().max(1.0) {
            return Err(invalid(format!(
                "{}: scale {} differs from alpha / r = {want} of the adapter's config",
                id.hf_name(),
                lora.scale()
            )));
        }
        tensors.push((lora_key(id, "A"), lora.a().as_tensor().clone()));
        tensors.push((lora_key(id, "B"), lora.b().as_tensor().clone()));
        targets.entry(id.proj).or_default().insert(id.layer);
    }

    let mut token_indices = Value::Null;
    if let Some(rows) = &adapter.rows {
        let hidden = decoder.config().hidden_size;
        let embedding = &rows.embedding;
        if embedding.delta().dims() != [embedding.ids().len(), hidden] {
            return Err(invalid(format!(
                "token-row delta is {:?}, expected [{}, {hidden}]",
                embedding.delta().dims(),
                embedding.ids().len()
            )));
        }
        let merged = (base_rows(decoder.embedding().weight(), embedding.ids())?
            + embedding.delta().as_tensor().to_dtype(DType::F32)?)?;
        tensors.push((tokens_key(EMBED_MODULE), merged));
        match (&rows.lm_head, decoder.lm_head().weight()) {
            (None, None) => token_indices = json!(embedding.ids()),
            (Some(head), Some(weight)) => {
                let merged = (base_rows(weight, head.ids())?
                    + head.delta().as_tensor().to_dtype(DType::F32)?)?;
                tensors.push((tokens_key(HEAD_MODULE), merged));
                token_indices = json!({"embed_tokens": embedding.ids(), "lm_head": head.ids()});
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "the model's head is untied but the token rows have no head part".into(),
                ));
            }
            (Some(_), None) => {
                return Err(invalid(
                    "the model's head is tied but the token rows have a separate head part".into(),
                ));
            }
        }
    }

    let target_modules: Vec<&str> = targets.keys().map(|&p| module_leaf(p)).collect();
    // PEFT adapts every targeted projection of the chosen layers: pairs on some layers only must
    // be on the same layers for every projection, named by `layers_to_transform`.
    let layer_sets: BTreeSet<&BTreeSet<usize>> = targets.values().collect();
    let layers_to_transform = match layer_sets.into_iter().collect::<Vec<_>>()[..] {
        [layers] if layers.len() == decoder.layers().len() => Value::Null,
        [layers] => json!(layers),
        _ => {
            return Err(invalid(
                "the projections carry LoRA pairs on different layers, which a LoraConfig cannot \
                 describe"
                    .into(),
            ));
        }
    };
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    load::save_file(
        &dir.join(WEIGHTS_FILE),
        tensors
            .iter()
            .map(|(n, t)| (n.clone(), load::lazy(t, DType::F32)))
            .collect(),
    )?;
    // PEFT writes its config with sorted keys; a BTreeMap gives the same order.
    let config_json: BTreeMap<&str, Value> = BTreeMap::from([
        ("alora_invocation_tokens", Value::Null),
        ("alpha_pattern", json!({})),
        ("arrow_config", Value::Null),
        ("auto_mapping", Value::Null),
        ("base_model_name_or_path", json!(base_model)),
        ("bias", json!("none")),
        ("corda_config", Value::Null),
        ("ensure_weight_tying", json!(false)),
        ("eva_config", Value::Null),
        ("exclude_modules", Value::Null),
        ("fan_in_fan_out", json!(false)),
        ("inference_mode", json!(true)),
        ("init_lora_weights", json!(true)),
        ("kasa_config", Value::Null),
        ("layer_replication", Value::Null),
        ("layers_pattern", Value::Null),
        ("layers_to_transform", layers_to_transform),
        ("loftq_config", json!({})),
        ("lora_alpha", alpha_json(config.alpha)),
        ("lora_bias", json!(false)),
        ("lora_dropout", json!(config.dropout)),
        ("lora_ga_config", Value::Null),
        ("megatron_config", Value::Null),
        ("megatron_core", json!("megatron.core")),
        ("modules_to_save", Value::Null),
        ("monteclora_config", Value::Null),
        ("peft_type", json!("LORA")),
        ("peft_version", json!(PEFT_VERSION)),
        ("qalora_group_size", json!(16)),
        ("r", json!(config.r)),
        ("rank_pattern", json!({})),
        ("revision", Value::Null),
        ("target_modules", json!(target_modules)),
        ("target_parameters", Value::Null),
        ("task_type", json!("CAUSAL_LM")),
        ("trainable_token_indices", token_indices),
        ("use_bdlora", Value::Null),
        ("use_dora", json!(false)),
        ("use_qalora", json!(false)),
        ("use_rslora", json!(false)),
        ("velora_config", Value::Null),
    ]);
    load::write_text(
        &dir.join(CONFIG_FILE),
        &serde_json::to_string_pretty(&config_json).expect("JSON"),
    )
}

/// Which modules a config's `target_modules` (or `exclude_modules`) names: PEFT's rules
/// (`check_target_module_exists`): a list matches a module whose name is an entry or ends with
/// `.entry`; a string is a regular expression matched against the whole name.
#[derive(Debug)]
enum ModuleSpec {
    List(Vec<String>),
    Regex(String, regex::Regex),
}

impl ModuleSpec {
    fn parse(value: &Value, field: &str) -> Result<Option<ModuleSpec>, String> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s == "all-linear" => Ok(Some(ModuleSpec::List(
                Proj::ALL
                    .iter()
                    .map(|&p| module_leaf(p).to_string())
                    .collect(),
            ))),
            Value::String(s) => regex::Regex::new(&format!("^(?:{s})$"))
                .map(|re| Some(ModuleSpec::Regex(s.clone(), re)))
                .map_err(|e| format!("`{field}`: `{s}` is not a regular expression: {e}")),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("`{field}`: expected module names, found {v}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|names| Some(ModuleSpec::List(names))),
            other => Err(format!(
                "`{field}`: expected a list of module names or a regular expression, found {other}"
            )),
        }
    }

    fn matches_entry(entry: &str, name: &str) -> bool {
        name == entry || name.ends_with(&format!(".{entry}"))
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            ModuleSpec::List(entries) => entries.iter().any(|e| ModuleSpec::matches_entry(e, name)),
            ModuleSpec::Regex(_, re) => re.is_match(name),
        }
    }
}

/// `trainable_token_indices`: the rows of the embedding (a list), or per module (a map).
#[derive(Debug, Default)]
struct TokenIndices {
    embedding: Option<Vec<u32>>,
    head: Option<Vec<u32>>,
}

/// The parts of a PEFT `LoraConfig` that decide what the tensors mean.
#[derive(Debug)]
struct PeftLora {
    r: usize,
    alpha: f64,
    dropout: f64,
    rslora: bool,
    targets: ModuleSpec,
    exclude: Option<ModuleSpec>,
    layers: Option<Vec<usize>>,
    tokens: TokenIndices,
}

fn is_set(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

fn token_ids(value: &Value, field: &str) -> Result<Vec<u32>, String> {
    let ids = value
        .as_array()
        .ok_or_else(|| format!("`{field}`: expected a list of token ids, found {value}"))?;
    ids.iter()
        .map(|v| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| format!("`{field}`: `{v}` is not a token id"))
        })
        .collect()
}

impl PeftLora {
    fn parse(cfg: &serde_json::Map<String, Value>) -> Result<PeftLora, String> {
        let get = |k: &str| cfg.get(k);
        match get("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            other => {
                return Err(format!(
                    "`peft_type` is {}, forge applies LORA adapters only",
                    other.map_or_else(|| "missing".to_string(), |t| format!("`{t}`"))
                ));
            }
        }
        match get("task_type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) if t == "CAUSAL_LM" => {}
            Some(other) => {
                return Err(format!(
                    "`task_type` is {other}, forge applies CAUSAL_LM adapters only"
                ));
            }
        }
        let refuse = |field: &str, what: &str| -> Result<(), String> {
            if is_set(get(field)) {
                Err(format!(
                    "`{field}` is set ({}): {what} is not supported",
                    get(field).expect("set")
                ))
            } else {
                Ok(())
            }
        };
        refuse("use_dora", "DoRA")?;
        refuse("lora_bias", "a LoRA bias")?;
        refuse("fan_in_fan_out", "a transposed (Conv1D) base layer")?;
        refuse("modules_to_save", "fully trained modules")?;
        refuse("rank_pattern", "a per-module rank")?;
        refuse("alpha_pattern", "a per-module alpha")?;
        refuse("layer_replication", "layer replication")?;
        refuse("target_parameters", "LoRA on parameters")?;
        refuse("use_qalora", "QA-LoRA")?;
        refuse("use_bdlora", "BD-LoRA")?;
        refuse("alora_invocation_tokens", "activated LoRA")?;
        match get("bias") {
            None | Some(Value::Null) => {}
            Some(Value::String(b)) if b == "none" => {}
            Some(other) => return Err(format!("`bias` is {other}: only \"none\" is supported")),
        }
        if let Some(Value::String(init)) = get("init_lora_weights") {
            let residual = ["pissa", "olora", "corda", "loftq", "lora_ga"];
            if residual.iter().any(|r| init.starts_with(r)) {
                return Err(format!(
                    "`init_lora_weights` is \"{init}\": that init rewrites the base weights, so the \
                     adapter applies to a residual model, not to the base (convert it with PEFT first)"
                ));
            }
        }
        match get("layers_pattern") {
            None | Some(Value::Null) => {}
            Some(Value::String(p)) if p.is_empty() || p == "layers" => {}
            Some(Value::Array(a)) if a.iter().all(|p| p == "layers") => {}
            Some(other) => {
                return Err(format!(
                    "`layers_pattern` is {other}: forge's layers are `model.layers`"
                ));
            }
        }

        let r = get("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| format!("`r` must be a positive integer, found {:?}", get("r")))?
            as usize;
        let alpha = get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| {
            format!(
                "`lora_alpha` must be a number, found {:?}",
                get("lora_alpha")
            )
        })?;
        let dropout = match get("lora_dropout") {
            None | Some(Value::Null) => 0.0,
            Some(v) => v
                .as_f64()
                .filter(|d| (0.0..1.0).contains(d))
                .ok_or_else(|| format!("`lora_dropout` must be a number in [0, 1), found {v}"))?,
        };
        let rslora = match get("use_rslora") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(format!("`use_rslora` must be true or false, found {other}"));
            }
        };
        let targets = ModuleSpec::parse(
            get("target_modules").unwrap_or(&Value::Null),
            "target_modules",
        )?
        .ok_or("`target_modules` is missing: the config adapts no module")?;
        let exclude = ModuleSpec::parse(
            get("exclude_modules").unwrap_or(&Value::Null),
            "exclude_modules",
        )?;
        let layers = match get("layers_to_transform") {
            None | Some(Value::Null) => None,
            Some(v) if v.is_u64() => Some(vec![v.as_u64().expect("u64") as usize]),
            Some(Value::Array(a)) if a.is_empty() => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|v| v.as_u64().map(|l| l as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or("`layers_to_transform`: expected layer numbers")?,
            ),
            Some(other) => {
                return Err(format!(
                    "`layers_to_transform`: expected layer numbers, found {other}"
                ));
            }
        };
        let mut tokens = TokenIndices::default();
        match get("trainable_token_indices") {
            None | Some(Value::Null) => {}
            Some(list @ Value::Array(_)) => {
                tokens.embedding = Some(token_ids(list, "trainable_token_indices")?);
            }
            Some(Value::Object(map)) => {
                for (module, ids) in map {
                    let field = format!("trainable_token_indices.{module}");
                    let ids = token_ids(ids, &field)?;
                    let slot = if ModuleSpec::matches_entry(module, EMBED_MODULE) {
                        &mut tokens.embedding
                    } else if module == HEAD_MODULE {
                        &mut tokens.head
                    } else {
                        return Err(format!(
                            "`{field}`: forge trains token rows of `embed_tokens` and `lm_head` only"
                        ));
                    };
                    if slot.replace(ids).is_some() {
                        return Err(format!("`{field}`: the module is listed twice"));
                    }
                }
            }
            Some(other) => {
                return Err(format!(
                    "`trainable_token_indices`: expected a list or a map of token ids, found {other}"
                ));
            }
        }
        Ok(PeftLora {
            r,
            alpha,
            dropout,
            rslora,
            targets,
            exclude,
            layers,
            tokens,
        })
    }

    /// PEFT's `scaling`: `alpha / r`, or `alpha / √r` with rsLoRA.
    fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Whether PEFT puts a LoRA pair on projection `id` (`check_target_module_exists`).
    fn targets(&self, id: &LinearId) -> bool {
        let name = id.hf_name();
        if self.exclude.as_ref().is_some_and(|e| e.matches(&name)) {
            return false;
        }
        if !self.targets.matches(&name) {
            return false;
        }
        // PEFT applies `layers_to_transform` to list targets only.
        match (&self.targets, &self.layers) {
            (ModuleSpec::List(_), Some(layers)) => layers.contains(&id.layer),
            _ => true,
        }
    }
}

/// How the base was stored while the adapter in `dir` was trained: what the sft stage recorded in
/// its `metrics.json` (an adapter from elsewhere, without one, trained on the dense weights).
fn trained_quant(dir: &Path) -> Result<Quant, ModelError> {
    let path = dir.join("metrics.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Quant::None),
        Err(source) => return Err(ModelError::Io { path, source }),
    };
    let config_error = |message: String| ModelError::Config {
        path: path.clone(),
        message,
    };
    let metrics: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| config_error(e.to_string()))?;
    match metrics.get("quant") {
        None => Ok(Quant::None),
        Some(q) => serde_json::from_value(q.clone())
            .map_err(|e| config_error(format!("field `quant`: {e}"))),
    }
}

/// [`load`] onto the base the adapter was trained against: a QLoRA adapter learned the NF4
/// weights' errors (DESIGN.md: the same adapter on the original weights degenerates), so the
/// projections are quantized first when [`trained_quant`] says NF4.
pub fn load_on_trained_base(
    dir: &Path,
    decoder: &mut Decoder,
) -> Result<(Adapter, Quant), ModelError> {
    let quant = trained_quant(dir)?;
    if quant == Quant::Nf4 {
        quantize_decoder(decoder, &Proj::ALL)?;
    }
    Ok((load(dir, decoder)?, quant))
}

/// Reads the adapter in `dir` (PEFT's layout, written by [`save`] or by PEFT itself), checks every
/// key and shape against `decoder`, and installs it there un-merged: the LoRA pairs on their
/// projections, the token rows through [`Decoder::train_token_rows`] (f32 deltas). `decoder` must
/// carry no adapter yet. Nothing is installed unless the whole adapter checks out.
pub fn load(dir: &Path, decoder: &mut Decoder) -> Result<Adapter, ModelError> {
    let config_path = dir.join(CONFIG_FILE);
    let weights_path = dir.join(WEIGHTS_FILE);
    let config_error = |message: String| ModelError::Config {
        path: config_path.clone(),
        message,
    };
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| ModelError::io(&config_path, e))?;
    let raw: serde_json::Map<String, Value> =
        serde_json::from_str(&text).map_err(|e| config_error(format!("not a JSON object: {e}")))?;
    let peft = PeftLora::parse(&raw).map_err(config_error)?;

    if decoder.linears().any(|(_, l)| l.adapter().is_some())
        || decoder.embedding().rows().is_some()
        || decoder.lm_head().rows().is_some()
    {
        return Err(ModelError::Invalid(format!(
            "adapter {}: the model already carries an adapter; load onto a fresh base",
            dir.display()
        )));
    }

    let projections: HashMap<String, (LinearId, (usize, usize))> = decoder
        .linears()
        .map(|(id, l)| (id.hf_name(), (id, l.weight().dims())))
        .collect();
    if let ModuleSpec::List(entries) = &peft.targets {
        for entry in entries {
            if !projections
                .keys()
                .any(|name| ModuleSpec::matches_entry(entry, name))
            {
                return Err(config_error(format!(
                    "`target_modules`: `{entry}` names no projection forge can adapt ({})",
                    Proj::ALL.map(module_leaf).join(", ")
                )));
            }
        }
    }
    let targeted: BTreeMap<LinearId, (usize, usize)> = projections
        .values()
        .filter(|(id, _)| peft.targets(id))
        .map(|&(id, dims)| (id, dims))
        .collect();
    if targeted.is_empty() {
        let spec = match &peft.targets {
            ModuleSpec::List(entries) => format!("{entries:?}"),
            ModuleSpec::Regex(s, _) => format!("`{s}`"),
        };
        return Err(config_error(format!(
            "`target_modules` {spec} selects no projection of this {}-layer model",
            decoder.layers().len()
        )));
    }

    let mut tensors = load::load_file(&weights_path, Some(DType::F32), decoder.device())?;
    let weight_error = |key: &str, message: String| ModelError::Safetensors {
        path: weights_path.clone(),
        message: format!("tensor `{key}`: {message}"),
    };
    let mut keys: Vec<String> = tensors.keys().cloned().collect();
    keys.sort();
    for key in &keys {
        if tensors[key].dtype() != DType::F32 {
            return Err(weight_error(
                key,
                format!("is {:?}, not a float tensor", tensors[key].dtype()),
            ));
        }
        let known = key
            .strip_prefix(PREFIX)
            .and_then(|k| {
                k.strip_suffix(".lora_A.weight")
                    .or_else(|| k.strip_suffix(".lora_B.weight"))
            })
            .and_then(|module| projections.get(module));
        match known {
            Some((id, _)) if !targeted.contains_key(id) => {
                return Err(weight_error(
                    key,
                    format!(
                        "adapts {}, which {CONFIG_FILE} does not target",
                        id.hf_name()
                    ),
                ));
            }
            Some(_) => {}
            None if key == &tokens_key(EMBED_MODULE) || key == &tokens_key(HEAD_MODULE) => {}
            None => {
                return Err(weight_error(
                    key,
                    "is neither a LoRA matrix of a projection (q/k/v/o/gate/up/down) of this model \
                     nor trainable token rows"
                        .into(),
                ));
            }
        }
    }

    let scale = peft.scale();
    let mut layers = BTreeMap::new();
    for (id, &(out_dim, in_dim)) in &targeted {
        let mut take = |half: &str, shape: [usize; 2]| -> Result<Tensor, ModelError> {
            let key = lora_key(id, half);
            let t = tensors.remove(&key).ok_or_else(|| {
                weight_error(
                    &key,
                    format!("missing, though {CONFIG_FILE} targets {}", id.hf_name()),
                )
            })?;
            if t.dims() != shape {
                return Err(weight_error(
                    &key,
                    format!(
                        "has shape {:?}, expected {shape:?} (r = {} on a [{out_dim}, {in_dim}] projection)",
                        t.dims(),
                        peft.r
                    ),
                ));
            }
            Ok(t)
        };
        let a = take("A", [peft.r, in_dim])?;
        let b = take("B", [out_dim, peft.r])?;
        let place = ((id.layer as u64) << 8) | id.proj as u64;
        let seed = place.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let lora = Lora::from_tensors(a, b, scale, peft.dropout, seed)?;
        layers.insert(*id, std::sync::Arc::new(lora));
    }

    // Token rows: forge's rows share one id list between the embedding and an untied head, so
    // the ids are the union of both lists; a row PEFT does not train at one end gets a zero delta
    // there.
    let tied = decoder.config().tie_word_embeddings;
    let vocab = decoder.config().vocab_size;
    let hidden = decoder.config().hidden_size;
    let mut tokens = peft.tokens;
    if tied && let Some(head) = tokens.head.take() {
        // PEFT ties a head listed with the embedding's ids to the embedding's adapter (and saves
        // nothing for it); other lists would untie the head, which forge cannot represent.
        if tokens.embedding.as_ref() != Some(&head) {
            return Err(config_error(
                "`trainable_token_indices`: the model ties lm_head to embed_tokens, so lm_head's \
                 rows must be embed_tokens' rows"
                    .into(),
            ));
        }
    }
    let mut ids: Vec<u32> = Vec::new();
    for list in [&tokens.embedding, &tokens.head].into_iter().flatten() {
        let mut seen = BTreeSet::new();
        for &id in list {
            if id as usize >= vocab {
                return Err(config_error(format!(
                    "`trainable_token_indices`: token id {id} is outside the vocabulary of {vocab}"
                )));
            }
            if !seen.insert(id) {
                return Err(config_error(format!(
                    "`trainable_token_indices`: token id {id} is listed twice"
                )));
            }
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let mut deltas = Vec::new();
    for (list, module, weight) in [
        (
            &tokens.embedding,
            EMBED_MODULE,
            Some(decoder.embedding().weight()),
        ),
        (&tokens.head, HEAD_MODULE, decoder.lm_head().weight()),
    ] {
        let key = tokens_key(module);
        let Some(list) = list else {
            if tensors.contains_key(&key) {
                return Err(weight_error(
                    &key,
                    format!("{CONFIG_FILE} lists no trainable tokens for {module}"),
                ));
            }
            deltas.push(None);
            continue;
        };
        let weight = weight.expect("an untied head has a weight");
        let rows = tensors.remove(&key).ok_or_else(|| {
            weight_error(
                &key,
                format!("missing, though {CONFIG_FILE} lists trainable tokens for {module}"),
            )
        })?;
        if rows.dims() != [list.len(), hidden] {
            return Err(weight_error(
                &key,
                format!(
                    "has shape {:?}, expected [{}, {hidden}] ({} token ids)",
                    rows.dims(),
                    list.len(),
                    list.len()
                ),
            ));
        }
        // PEFT stores the rows themselves; forge keeps their difference to the frozen rows.
        let base = base_rows(weight, &ids)?;
        let target = ids
            .iter()
            .enumerate()
            .map(|(slot, id)| match list.iter().position(|l| l == id) {
                Some(j) => rows.narrow(0, j, 1),
                None => base.narrow(0, slot, 1),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        deltas.push(Some((Tensor::cat(&target, 0)? - &base)?));
    }
    if let Some(key) = tensors.keys().min() {
        return Err(weight_error(key, "is not part of the adapter".into()));
    }

    // Everything checked: install.
    let config = LoraConfig {
        r: peft.r,
        // forge's pairs scale by alpha / r; rsLoRA's alpha / √r is the same scale with this alpha.
        alpha: scale * peft.r as f64,
        dropout: peft.dropout,
        targets: {
            let set: BTreeSet<Proj> = layers.keys().map(|id: &LinearId| id.proj).collect();
            set.into_iter().collect()
        },
    };
    let lora = LoraSet { config, layers };
    lora.attach(decoder);
    let rows = if ids.is_empty() {
        None
    } else {
        let rows = decoder.train_token_rows(&ids, DType::F32)?;
        let zero = || Tensor::zeros((ids.len(), hidden), DType::F32, decoder.device());
        let mut deltas = deltas.into_iter();
        let embed = deltas.next().flatten().map_or_else(zero, Ok)?;
        rows.embedding.delta().set(&embed)?;
        let head = deltas.next().flatten();
        match (&rows.lm_head, head) {
            (Some(lm_head), Some(delta)) => lm_head.delta().set(&delta)?,
            (Some(_), None) | (None, None) => {}
            (None, Some(_)) => unreachable!("a tied head's rows were folded into the embedding's"),
        }
        Some(rows)
    };
    Ok(Adapter { lora, rows })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use candle_core::{Device, Var};

    use super::*;
    use crate::model::Batch;
    use crate::model::decoder::tests::fixture;
    use crate::model::ops::tests::max_abs_diff;

    /// `stages/fixtures/adapter`: adapters forge and PEFT wrote, and PEFT's logits with each.
    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/adapter")
    }

    /// `n` values uniform in ±`amp`, the same on every machine.
    pub(crate) fn pseudo(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    /// Installs LoRA on `targets` with random nonzero `B` and token rows `ids` with random nonzero
    /// deltas (both ends for an untied head): an adapter as if trained.
    pub(crate) fn trained(decoder: &mut Decoder, targets: &[Proj], ids: &[u32]) -> Adapter {
        let config = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.05,
            targets: targets.to_vec(),
        };
        let lora = LoraSet::install(decoder, &config, 11).unwrap();
        for (i, pair) in lora.layers.values().enumerate() {
            let b = pair.b().as_tensor();
            let values = pseudo(b.elem_count(), 100 + i as u64, 0.3);
            pair.b()
                .set(&Tensor::from_vec(values, b.dims(), b.device()).unwrap())
                .unwrap();
        }
        let rows = decoder.train_token_rows(ids, DType::F32).unwrap();
        for (seed, r) in [(1, Some(&rows.embedding)), (2, rows.lm_head.as_ref())] {
            if let Some(r) = r {
                let d = r.delta().as_tensor();
                let values = pseudo(d.elem_count(), seed, 0.5);
                r.delta()
                    .set(&Tensor::from_vec(values, d.dims(), d.device()).unwrap())
                    .unwrap();
            }
        }
        Adapter {
            lora,
            rows: Some(rows),
        }
    }

    fn base(arch: &str) -> Decoder {
        Decoder::load(&fixture(arch), DType::F32, &Device::Cpu).unwrap()
    }

    /// The forge-written fixtures: (directory name, arch, targets, token ids).
    fn forge_cases() -> [(&'static str, &'static str, Vec<Proj>, Vec<u32>); 2] {
        [
            ("forge-qwen3", "qwen3", Proj::ALL.to_vec(), vec![3, 77, 127]),
            (
                "forge-qwen2",
                "qwen2",
                vec![Proj::Q, Proj::V, Proj::O, Proj::Down],
                vec![5, 77, 100],
            ),
        ]
    }

    fn logits(model: &Decoder, ids: &Tensor) -> Tensor {
        let rows = ids.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
        model
            .forward(&Batch::dense(&rows, 0, &Device::Cpu).unwrap(), None)
            .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn save_then_load_round_trips_exactly() {
        for (_, arch, targets, ids) in forge_cases() {
            let mut trained_model = base(arch);
            let adapter = trained(&mut trained_model, &targets, &ids);
            let dir = tempfile::tempdir().unwrap();
            save(&adapter, &trained_model, dir.path(), "base").unwrap();

            let mut loaded_model = base(arch);
            let loaded = load(dir.path(), &mut loaded_model).unwrap();
            assert_eq!(loaded.lora.config, adapter.lora.config, "{arch}");
            assert_eq!(loaded.lora.layers.len(), adapter.lora.layers.len());
            for (id, pair) in &adapter.lora.layers {
                let other = &loaded.lora.layers[id];
                assert_eq!(values(other.a()), values(pair.a()), "{arch} {id:?}");
                assert_eq!(values(other.b()), values(pair.b()), "{arch} {id:?}");
                assert_eq!(other.scale(), pair.scale());
            }
            let (want, got) = (adapter.rows.unwrap(), loaded.rows.unwrap());
            assert_eq!(got.embedding.ids(), ids.as_slice());
            assert_eq!(got.lm_head.is_some(), want.lm_head.is_some(), "{arch}");
            // PEFT stores the trained rows themselves: those round-trip bit for bit; the delta
            // comes back as their difference to the frozen rows.
            let pairs = [
                (
                    Some(&want.embedding),
                    Some(&got.embedding),
                    trained_model.embedding().weight(),
                ),
                (
                    want.lm_head.as_ref(),
                    got.lm_head.as_ref(),
                    trained_model
                        .lm_head()
                        .weight()
                        .unwrap_or(trained_model.embedding().weight()),
                ),
            ];
            for (w, g, weight) in pairs {
                let (Some(w), Some(g)) = (w, g) else { continue };
                assert_eq!(
                    values(&w.merged_rows(weight).unwrap()),
                    values(&g.merged_rows(weight).unwrap()),
                    "{arch}"
                );
                assert!(max_abs_diff(w.delta(), g.delta()) < 1e-6, "{arch}");
            }
            let ids = Tensor::new(&[[3u32, 77, 5, 127, 100, 1, 77]], &Device::Cpu).unwrap();
            let (before, after) = (logits(&trained_model, &ids), logits(&loaded_model, &ids));
            assert!(max_abs_diff(&before, &after) < 1e-5, "{arch}");
            assert!(
                max_abs_diff(&before, &logits(&base(arch), &ids)) > 0.1,
                "{arch}"
            );
        }
    }

    #[test]
    fn a_trainer_starts_from_a_saved_adapter() {
        use crate::train::trainer::{TrainConfig, Trainer};
        for (_, arch, targets, ids) in forge_cases() {
            let mut trained_model = base(arch);
            let adapter = trained(&mut trained_model, &targets, &ids);
            let dir = tempfile::tempdir().unwrap();
            save(&adapter, &trained_model, dir.path(), "base").unwrap();
            let loaded = load(dir.path(), &mut base(arch)).unwrap();
            let trainer = |r: usize, token_rows: Vec<u32>| {
                let config = TrainConfig {
                    lora: LoraConfig {
                        r,
                        alpha: 2.0 * r as f64,
                        dropout: 0.0,
                        targets: targets.clone(),
                    },
                    token_rows,
                    ..crate::train::trainer::tests::config()
                };
                Trainer::new(base(arch), &config).unwrap()
            };
            // One more row than the adapter trains: it starts at zero, and the model is the
            // adapter's.
            let mut rows = ids.clone();
            rows.push(60);
            let started = trainer(4, rows);
            started.adapter.start_from(&loaded).unwrap();
            let probe = Tensor::new(&[[3u32, 77, 5, 127, 60, 1, 77]], &Device::Cpu).unwrap();
            let (want, got) = (
                logits(&trained_model, &probe),
                logits(&started.decoder, &probe),
            );
            assert!(max_abs_diff(&want, &got) < 1e-5, "{arch}");
            let err = trainer(8, ids.clone())
                .adapter
                .start_from(&loaded)
                .unwrap_err();
            assert!(err.contains("lora_r"), "{err}");
            let err = trainer(4, ids[1..].to_vec())
                .adapter
                .start_from(&loaded)
                .unwrap_err();
            assert!(err.contains(&format!("token {}", ids[0])), "{err}");
        }
    }

    /// The forge-written fixtures are what `save` writes today: PEFT's golden logits for them
    /// (gen_golden.py) prove forge's current format. `FORGE_WRITE_ADAPTER_FIXTURES=1` rewrites them;
    /// rerun gen_golden.py after that.
    #[test]
    fn forge_fixtures_are_what_save_writes() {
        let rewrite = std::env::var_os("FORGE_WRITE_ADAPTER_FIXTURES").is_some();
        for (name, arch, targets, ids) in forge_cases() {
            let mut model = base(arch);
            let adapter = trained(&mut model, &targets, &ids);
            let committed = fixtures().join(name);
            let base_model = format!("stages/fixtures/model/{arch}");
            if rewrite {
                save(&adapter, &model, &committed, &base_model).unwrap();
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            save(&adapter, &model, dir.path(), &base_model).unwrap();
            for file in [CONFIG_FILE, WEIGHTS_FILE] {
                assert!(
                    std::fs::read(dir.path().join(file)).unwrap()
                        == std::fs::read(committed.join(file)).unwrap(),
                    "{name}/{file} differs from what save writes now: rerun with \
                     FORGE_WRITE_ADAPTER_FIXTURES=1, then gen_golden.py"
                );
            }
        }
    }

    /// forge loading each fixture adapter computes the logits Python PEFT computed with it:
    /// forge's own files (so PEFT reads them as forge means them) and PEFT's (rsLoRA,
    /// `layers_to_transform`, a regex target, per-module token rows).
    #[test]
    fn logits_match_python_peft_on_forge_and_peft_adapters() {
        let golden =
            load::load_file(&fixtures().join("golden.safetensors"), None, &Device::Cpu).unwrap();
        let ids = &golden["ids"];
        for (name, arch) in [
            ("forge-qwen3", "qwen3"),
            ("forge-qwen2", "qwen2"),
            ("peft-qwen3", "qwen3"),
            ("peft-qwen2", "qwen2"),
        ] {
            let mut model = base(arch);
            let base_logits = logits(&model, ids);
            assert!(max_abs_diff(&base_logits, &golden[&format!("base-{arch}")]) < 1e-4);
            let adapter = load(&fixtures().join(name), &mut model).unwrap();
            let got = logits(&model, ids);
            let err = max_abs_diff(&got, &golden[name]);
            let moved = max_abs_diff(&base_logits, &golden[name]);
            eprintln!("{name}: max |forge - PEFT| = {err:e}, max |PEFT - base| = {moved}");
            assert!(err < 1e-4, "{name}: forge differs from PEFT by {err}");
            assert!(moved > 0.1, "{name}: the adapter barely moves the logits");
            assert!(adapter.rows.is_some(), "{name}");
        }
    }

    #[test]
    fn peft_options_are_honored_where_they_change_the_meaning() {
        let mut model = base("qwen3");
        let adapter = load(&fixtures().join("peft-qwen3"), &mut model).unwrap();
        // rsLoRA: alpha / sqrt(r) = 6 / 2; layers_to_transform = [1]: layer 0 stays plain.
        let scales: BTreeSet<u64> = adapter
            .lora
            .layers
            .values()
            .map(|l| l.scale().to_bits())
            .collect();
        assert_eq!(scales, BTreeSet::from([3f64.to_bits()]));
        assert_eq!(adapter.lora.config.scale(), 3.0);
        assert!(adapter.lora.layers.keys().all(|id| id.layer == 1));
        assert_eq!(adapter.lora.layers.len(), 4);
        assert!(model.layers()[0].linear(Proj::Q).adapter().is_none());

        // Untied head with different rows per end: one id list, zero deltas where PEFT trains none.
        let mut model = base("qwen2");
        let adapter = load(&fixtures().join("peft-qwen2"), &mut model).unwrap();
        let rows = adapter.rows.unwrap();
        assert_eq!(rows.embedding.ids(), &[5, 77, 100]);
        let zero_row = |t: &Var, slot: usize| {
            values(&t.as_tensor().narrow(0, slot, 1).unwrap())
                .iter()
                .all(|&v| v == 0.0)
        };
        let head = rows.lm_head.unwrap();
        assert!(zero_row(rows.embedding.delta(), 2) && !zero_row(rows.embedding.delta(), 0));
        assert!(zero_row(head.delta(), 0) && !zero_row(head.delta(), 2));
    }

    /// A copy of fixture `name` in a temporary directory, with its config and tensors edited.
    fn edited(
        name: &str,
        config: impl FnOnce(&mut serde_json::Map<String, Value>),
        weights: impl FnOnce(&mut BTreeMap<String, Tensor>),
    ) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let src = fixtures().join(name);
        let mut cfg: serde_json::Map<String, Value> =
            serde_json::from_str(&std::fs::read_to_string(src.join(CONFIG_FILE)).unwrap()).unwrap();
        config(&mut cfg);
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            serde_json::to_string(&cfg).unwrap(),
        )
        .unwrap();
        let mut tensors: BTreeMap<String, Tensor> =
            load::load_file(&src.join(WEIGHTS_FILE), None, &Device::Cpu)
                .unwrap()
                .into_iter()
                .collect();
        weights(&mut tensors);
        load::save_file(
            &dir.path().join(WEIGHTS_FILE),
            tensors
                .iter()
                .map(|(n, t)| (n.clone(), load::lazy(t, t.dtype())))
                .collect(),
        )
        .unwrap();
        dir
    }

    /// Loads `dir` onto a fresh `arch` base, expecting an error; the base must stay untouched.
    fn load_error(dir: &Path, arch: &str) -> String {
        let mut model = base(arch);
        let err = load(dir, &mut model).unwrap_err().to_string();
        assert!(
            model.linears().all(|(_, l)| l.adapter().is_none())
                && model.embedding().rows().is_none(),
            "a failed load installed something: {err}"
        );
        err
    }

    #[test]
    fn broken_or_mismatched_adapters_are_clear_errors() {
        let q0 = "base_model.model.model.layers.0.self_attn.q_proj";
        let keep = |_: &mut serde_json::Map<String, Value>| {};
        let same = |_: &mut BTreeMap<String, Tensor>| {};
        let set = |k: &'static str, v: Value| {
            move |c: &mut serde_json::Map<String, Value>| {
                c.insert(k.into(), v);
            }
        };
        let cases: Vec<(&str, tempfile::TempDir, &str, Vec<String>)> = vec![
            (
                "wrong shape",
                edited("forge-qwen3", keep, |t| {
                    t.insert(
                        format!("{q0}.lora_A.weight"),
                        Tensor::zeros((3, 32), DType::F32, &Device::Cpu).unwrap(),
                    );
                }),
                "qwen3",
                vec![
                    WEIGHTS_FILE.into(),
                    format!("{q0}.lora_A.weight"),
                    "shape [3, 32], expected [4, 32]".into(),
                ],
            ),
            (
                "missing key",
                edited("forge-qwen3", keep, |t| {
                    t.remove(&format!("{q0}.lora_B.weight"));
                }),
                "qwen3",
                vec![format!("{q0}.lora_B.weight"), "missing".into()],
            ),
            (
                "missing token rows",
                edited("forge-qwen3", keep, |t| {
                    t.remove(&tokens_key(EMBED_MODULE));
                }),
                "qwen3",
                vec![tokens_key(EMBED_MODULE), "missing".into()],
            ),
            (
                "unknown target",
                edited(
                    "forge-qwen3",
                    set("target_modules", json!(["q_proj", "embed_tokens"])),
                    same,
                ),
                "qwen3",
                vec![
                    CONFIG_FILE.into(),
                    "`embed_tokens` names no projection".into(),
                ],
            ),
            (
                "tensor of an untargeted module",
                edited(
                    "forge-qwen3",
                    set("target_modules", json!(["k_proj"])),
                    same,
                ),
                "qwen3",
                vec![
                    "layers.0.mlp.down_proj.lora_A.weight".into(),
                    "which adapter_config.json does not target".into(),
                ],
            ),
            (
                "unknown tensor",
                edited("forge-qwen3", keep, |t| {
                    t.insert(
                        "base_model.model.lm_head.lora_A.weight".into(),
                        Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap(),
                    );
                }),
                "qwen3",
                vec![
                    "base_model.model.lm_head.lora_A.weight".into(),
                    "is neither".into(),
                ],
            ),
            (
                "DoRA",
                edited("forge-qwen3", set("use_dora", json!(true)), same),
                "qwen3",
                vec![CONFIG_FILE.into(), "DoRA is not supported".into()],
            ),
            (
                "not LoRA",
                edited("forge-qwen3", set("peft_type", json!("IA3")), same),
                "qwen3",
                vec!["`peft_type` is `IA3`".into()],
            ),
            (
                "token outside the vocabulary",
                edited(
                    "forge-qwen3",
                    set("trainable_token_indices", json!([3, 77, 128])),
                    same,
                ),
                "qwen3",
                vec!["token id 128 is outside the vocabulary of 128".into()],
            ),
            (
                "another model's adapter",
                edited("forge-qwen2", keep, same),
                "qwen3",
                vec![WEIGHTS_FILE.into(), "has shape".into()],
            ),
        ];
        for (what, dir, arch, needles) in cases {
            let err = load_error(dir.path(), arch);
            for needle in needles {
                assert!(err.contains(&needle), "{what}: `{needle}` not in: {err}");
            }
        }

        let missing = tempfile::tempdir().unwrap();
        let err = load_error(&missing.path().join("nope"), "qwen3");
        assert!(err.contains("nope/adapter_config.json"), "{err}");

        let mut model = base("qwen3");
        load(&fixtures().join("forge-qwen3"), &mut model).unwrap();
        let err = load(&fixtures().join("peft-qwen3"), &mut model)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already carries an adapter"), "{err}");
    }

    #[test]
    fn pairs_on_some_layers_save_as_layers_to_transform() {
        let mut model = base("qwen3");
        let mut adapter = trained(&mut model, &[Proj::Q, Proj::Up], &[3]);
        adapter.lora.layers.retain(|id, _| id.layer == 1);
        let dir = tempfile::tempdir().unwrap();
        save(&adapter, &model, dir.path(), "base").unwrap();
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
                .unwrap();
        assert_eq!(config["layers_to_transform"], json!([1]));
        assert_eq!(config["target_modules"], json!(["q_proj", "up_proj"]));
        let loaded = load(dir.path(), &mut base("qwen3")).unwrap();
        let ids: Vec<LinearId> = loaded.lora.layers.keys().copied().collect();
        assert_eq!(ids, adapter.lora.layers.keys().copied().collect::<Vec<_>>());

        let mut adapter = trained(&mut base("qwen3"), &[Proj::Q, Proj::Up], &[3]);
        adapter
            .lora
            .layers
            .retain(|id, _| id.proj == Proj::Q || id.layer == 1);
        let err = save(&adapter, &model, dir.path(), "base").unwrap_err();
        assert!(err.to_string().contains("different layers"), "{err}");
    }
}
