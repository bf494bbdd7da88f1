//! The `eval` stage: free-generates with the model on BFCL V4's single-turn entries and on our
//! own held-out test split, then scores both — BFCL with the official checker's rules, the test
//! split with the seed's metric ladder.
//!
//! Why free generation and not teacher-forced loss: DESIGN.md's lesson is that loss is blind to
//! degeneration, so every row is generated greedily until `<|im_end|>` (or the model's EOS) or
//! the `max_new_tokens` cap, and the share of rows that hit the cap is reported next to the
//! scores. Each generated row, its parsed calls and the reason it failed go to
//! `generations.jsonl`, so a score can always be traced back to the text behind it.

use std::path::Path;

use candle_core::DType;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::bfcl::{Category, Dataset, EvalError, Scores, score_entry};
use super::metrics::{LadderMetrics, LadderRow, ladder};
use super::parse::{clean_response, decode_ast, render_prompt};
use super::value::Py;
use crate::data::format::{load_template, load_tokenizer};
use crate::data::io::{self, JsonlWriter};
use crate::data::schema::{Conversation, Role};
use crate::data::split::Part;
use crate::model::candle_device;
use crate::model::decoder::Decoder;
use crate::model::generate::{GenerateOptions, Generation, StopReason, generate, with_model_stops};
use crate::train::adapter;
use crate::train::trainer::Quant;
use crate::{Context, Input, Report, StageError, TypedStage};

/// The `eval` built-in stage.
pub struct Eval;

/// The element type the model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DtypeParam {
    F32,
    Bf16,
    F16,
}

impl From<DtypeParam> for DType {
    fn from(d: DtypeParam) -> DType {
        match d {
            DtypeParam::F32 => DType::F32,
            DtypeParam::Bf16 => DType::BF16,
            DtypeParam::F16 => DType::F16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalParams {
    /// BFCL category names or groups (`all`, `non_live`, `live`).
    #[serde(default = "default_categories")]
    pub categories: Vec<String>,
    /// The first `limit` entries of each category; none: all.
    #[serde(default)]
    pub limit: Option<usize>,
    /// The first `test_limit` rows of the test split for the ladder; none: all.
    #[serde(default)]
    pub test_limit: Option<usize>,
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_dtype")]
    pub dtype: DtypeParam,
}

fn default_categories() -> Vec<String> {
    vec!["all".into()]
}
fn default_max_new_tokens() -> usize {
    512
}
fn default_batch_size() -> usize {
    8
}
fn default_dtype() -> DtypeParam {
    DtypeParam::F32
}

/// One prompt to generate for.
struct Job {
    ids: Vec<u32>,
}

/// The model, tokenizer and generation options shared by every batch.
struct Generator<'a> {
    model: Decoder,
    tokenizer: Tokenizer,
    options: GenerateOptions,
    batch_size: usize,
    ctx: &'a Context<'a>,
    done: u64,
    total: u64,
}

/// A generated row: its decoded text and how generation ended.
struct Generated {
    raw: String,
    generation: Generation,
}

impl Generated {
    fn hit_cap(&self) -> bool {
        self.generation.stop == StopReason::MaxNewTokens
    }

    fn repetition(&self) -> Value {
        self.generation.repetition.map_or(
            Value::Null,
            |r| json!({"period": r.period, "repeats": r.repeats, "span": r.span}),
        )
    }
}

impl Generator<'_> {
    fn tokenize(&self, text: &str) -> Result<Job, StageError> {
        let ids = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| StageError::Failed(format!("tokenizing a prompt: {e}")))?
            .get_ids()
            .to_vec();
        Ok(Job { ids })
    }

    /// Generates for every job, in batches, reporting progress and honouring cancellation.
    fn run(&mut self, jobs: &[Job], what: &str) -> Result<Vec<Generated>, StageError> {
        let mut out = Vec::with_capacity(jobs.len());
        for batch in jobs.chunks(self.batch_size) {
            self.ctx.check_cancelled()?;
            let prompts: Vec<Vec<u32>> = batch.iter().map(|j| j.ids.clone()).collect();
            for generation in generate(&self.model, &prompts, &self.options, &mut |_, _| {})? {
                let raw = self
                    .tokenizer
                    .decode(&generation.tokens, true)
                    .map_err(|e| StageError::Failed(format!("decoding a generation: {e}")))?;
                out.push(Generated { raw, generation });
            }
            self.done += batch.len() as u64;
            self.ctx.progress.update(
                self.done,
                Some(self.total),
                &format!("{what} rows generated"),
            );
        }
        Ok(out)
    }
}

fn eval_error(e: EvalError) -> StageError {
    match e {
        EvalError::Io { path, source } => StageError::Io { path, source },
        other => StageError::Failed(other.to_string()),
    }
}

/// `decode_ast`'s calls as JSON (`null` where the text does not decode).
fn decoded_calls(text: &str) -> Value {
    let to_json = |p: &Py| {
        let text = p.dumps();
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    match decode_ast(text) {
        Ok(calls) => Value::Array(
            calls
                .iter()
                .map(|c| json!({"name": to_json(&c.name), "arguments": to_json(&Py::Dict(c.arguments.clone()))}))
                .collect(),
        ),
        Err(_) => Value::Null,
    }
}

/// The test split's rows, cut to `limit`. Malformed rows are an error: the split stage wrote them.
fn test_rows(data_dir: &Path, limit: Option<usize>) -> Result<Vec<Conversation>, StageError> {
    let path = data_dir.join(Part::Test.file_name());
    let mut rows = Vec::new();
    for (index, row) in io::read_rows::<Conversation>(&path)? {
        if limit.is_some_and(|l| rows.len() >= l) {
            break;
        }
        rows.push(row.map_err(|q| {
            StageError::Failed(format!(
                "{}: row {index} is not a conversation: {}",
                path.display(),
                q.reason
            ))
        })?);
    }
    Ok(rows)
}

fn pct(n: usize, d: usize) -> f64 {
    if d == 0 {
        0.0
    } else {
        100.0 * n as f64 / d as f64
    }
}

/// What an applied adapter is: `r 16, alpha 32, 252 LoRA pairs, 3 token rows` and the same
/// figures for metrics.json.
fn adapter_summary(a: &adapter::Adapter) -> (String, Value) {
    let c = &a.lora.config;
    let rows = a.rows.as_ref().map_or(0, |r| r.embedding.ids().len());
    let pairs = a.lora.layers.len();
    (
        format!(
            "r {}, alpha {}, {pairs} LoRA pairs, {rows} token rows",
            c.r, c.alpha
        ),
        json!({"r": c.r, "alpha": c.alpha, "lora_pairs": pairs, "token_rows": rows}),
    )
}

/// The model with its adapter applied (un-merged), on the base the adapter was trained against:
/// a QLoRA adapter learned the NF4 weights' errors (DESIGN.md: the same adapter on the original
/// weights degenerates). Also the adapter's summary for the report and metrics.json.
fn load_model(
    model_dir: &Path,
    adapter_dir: Option<&Path>,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<(Decoder, Option<(String, Value)>), StageError> {
    let mut model = Decoder::load(model_dir, dtype, device)?;
    let Some(dir) = adapter_dir else {
        return Ok((model, None));
    };
    let (adapter, quant) = adapter::load_on_trained_base(dir, &mut model)?;
    let (summary, mut value) = adapter_summary(&adapter);
    value["base"] = json!(quant);
    Ok((
        model,
        Some((format!("{summary}, {} base", base_name(quant)), value)),
    ))
}

fn base_name(quant: Quant) -> &'static str {
    match quant {
        Quant::None => "dense",
        Quant::Nf4 => "NF4",
    }
}

fn ladder_table(m: Option<&LadderMetrics>) -> String {
    let Some(m) = m else {
        return "## Metric ladder (held-out test split)\n\nnot run (no `data` input)\n".into();
    };
    let mut out = format!(
        "## Metric ladder (held-out test split)\n\n{} rows: {} with a gold call, {} without.\n\n| Metric | Rate |\n|---|---:|\n",
        m.rows, m.call_rows, m.no_call_rows
    );
    for (name, v) in [
        ("emits_json", m.emits_json),
        ("schema_valid", m.schema_valid),
        ("tool_name", m.tool_name),
        ("first_tool", m.first_tool),
        ("name_and_args", m.name_and_args),
        ("protocol", m.protocol),
        ("strict", m.strict),
        ("no_call_correct", m.no_call_correct),
        ("hallucinated", m.hallucinated),
        ("hit_cap", m.hit_cap),
    ] {
        out.push_str(&format!("| {name} | {v:.2}% |\n"));
    }
    out
}

impl TypedStage for Eval {
    type Params = EvalParams;
    const KIND: &'static str = "eval";
    const VERSION: u32 = 2;
    const INPUTS: &'static [Input] = &[
        Input {
            name: "model",
            required: true,
        },
        Input {
            name: "bfcl",
            required: true,
        },
        Input {
            name: "data",
            required: false,
        },
        Input {
            name: "adapter",
            required: false,
        },
    ];
    const ABOUT: &'static str = "free-generates on BFCL V4 single-turn and the held-out test split; BFCL scores and the metric ladder";

    fn run(&self, params: &EvalParams, ctx: &Context<'_>) -> Result<Report, StageError> {
        if params.batch_size == 0 || params.max_new_tokens == 0 {
            return Err(StageError::Failed(
                "params `batch_size` and `max_new_tokens` must be at least 1".into(),
            ));
        }
        let model_dir = ctx.input("model")?;
        let categories = Category::parse_list(&params.categories.join(",")).map_err(eval_error)?;
        let dataset =
            Dataset::load(ctx.input("bfcl")?, &categories, params.limit).map_err(eval_error)?;
        let tests = match ctx.inputs.get("data") {
            Some(dir) => Some(test_rows(dir, params.test_limit)?),
            None => None,
        };

        let template = load_template(model_dir)?;
        let tokenizer = load_tokenizer(model_dir)?;
        let (model, adapter) = load_model(
            model_dir,
            ctx.inputs.get("adapter").map(|p| p.as_path()),
            params.dtype.into(),
            &candle_device(ctx.device)?,
        )?;
        let base = GenerateOptions {
            max_new_tokens: params.max_new_tokens,
            ..GenerateOptions::default()
        };
        let options = with_model_stops(&base, &template, &tokenizer, &model);
        let total = (dataset.entries().len() + tests.as_ref().map_or(0, Vec::len)) as u64;
        let mut generator = Generator {
            model,
            tokenizer,
            options,
            batch_size: params.batch_size,
            ctx,
            done: 0,
            total,
        };

        let mut writer = JsonlWriter::create(ctx.out.join("generations.jsonl"))?;
        let jobs = dataset
            .entries()
            .iter()
            .map(|e| generator.tokenize(&render_prompt(e)))
            .collect::<Result<Vec<_>, _>>()?;
        let generated = generator.run(&jobs, "BFCL")?;
        let mut verdicts = Vec::with_capacity(generated.len());
        let mut capped = 0;
        for (entry, g) in dataset.entries().iter().zip(&generated) {
            let result = clean_response(&g.raw);
            let verdict = score_entry(entry, result);
            capped += usize::from(g.hit_cap());
            writer.write(&json!({
                "id": entry.id,
                "category": entry.category.name(),
                "raw": g.raw,
                "calls": decoded_calls(result),
                "valid": verdict.valid,
                "error_type": verdict.error_type,
                "error": verdict.error,
                "new_tokens": g.generation.tokens.len(),
                "hit_cap": g.hit_cap(),
                "repetition": g.repetition(),
            }))?;
            verdicts.push(verdict);
        }
        let scores = Scores::from_verdicts(verdicts, params.limit);

        let mut ladder_metrics = None;
        let mut ladder_capped = 0;
        if let Some(rows) = &tests {
            let jobs = rows
                .iter()
                .map(|conv| {
                    let prompt: Vec<_> = conv
                        .messages
                        .iter()
                        .take_while(|m| m.role != Role::Assistant)
                        .cloned()
                        .collect();
                    let text = template.render(&prompt, &conv.tools, true).map_err(|e| {
                        StageError::Failed(format!("rendering test row `{}`: {e}", conv.id))
                    })?;
                    generator.tokenize(&text)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let generated = generator.run(&jobs, "test")?;
            let outputs: Vec<&str> = generated.iter().map(|g| clean_response(&g.raw)).collect();
            let (judged, metrics) = ladder(rows.iter().zip(&generated).zip(&outputs).map(
                |((conversation, g), output)| LadderRow {
                    conversation,
                    output,
                    hit_cap: g.hit_cap(),
                },
            ));
            for ((conv, g), judged) in rows.iter().zip(&generated).zip(&judged) {
                ladder_capped += usize::from(g.hit_cap());
                let valid = if judged.call_row {
                    judged.strict
                } else {
                    judged.no_call_correct
                };
                writer.write(&json!({
                    "id": conv.id,
                    "category": "test",
                    "raw": g.raw,
                    "calls": judged.calls,
                    "valid": valid,
                    "error": judged.reason,
                    "ladder": judged,
                    "new_tokens": g.generation.tokens.len(),
                    "hit_cap": g.hit_cap(),
                    "repetition": g.repetition(),
                }))?;
            }
            ladder_metrics = Some(metrics);
        }
        writer.finish()?;

        let bfcl_rows = scores.entries.len();
        let test_rows = tests.as_ref().map_or(0, Vec::len);
        let mut metrics = scores.to_metrics_json();
        metrics["bfcl"]["hit_cap"] = json!(pct(capped, bfcl_rows));
        if let Some(m) = &ladder_metrics {
            metrics["ladder"] = serde_json::to_value(m)
                .map_err(|e| StageError::Failed(format!("serializing the ladder: {e}")))?;
        }
        metrics["generation"] = json!({
            "rows": bfcl_rows + test_rows,
            "hit_cap": pct(capped + ladder_capped, bfcl_rows + test_rows),
            "max_new_tokens": params.max_new_tokens,
        });
        if let Some(a) = &adapter {
            metrics["adapter"] = a.1.clone();
        }
        io::write_metrics(ctx.out, &metrics)?;

        let report = format!(
            "{}{}\n{}\nhit_cap: {:.2}% of {} generated rows (cap {} new tokens).\n",
            adapter.as_ref().map_or_else(String::new, |a| format!(
                "Adapter (un-merged): {}.\n\n",
                a.0
            )),
            scores.to_report_md(),
            ladder_table(ladder_metrics.as_ref()),
            pct(capped + ladder_capped, bfcl_rows + test_rows),
            bfcl_rows + test_rows,
            params.max_new_tokens
        );
        let report_path = ctx.out.join("report.md");
        std::fs::write(&report_path, report).map_err(|e| StageError::io(&report_path, e))?;

        let s = scores.sections();
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        let mut summary = format!(
            "BFCL {bfcl_rows} entries: non-live {} live {} irrelevance {}",
            fmt(s.non_live),
            fmt(s.live),
            fmt(s.irrelevance)
        );
        if let Some(m) = &ladder_metrics {
            summary.push_str(&format!(
                "; ladder {} rows: protocol {:.2} strict {:.2}",
                m.rows, m.protocol, m.strict
            ));
        }
        summary.push_str(&format!(
            "; hit_cap {:.2}%",
            pct(capped + ladder_capped, bfcl_rows + test_rows)
        ));
        if let Some(a) = &adapter {
            summary.push_str(&format!("; adapter {}", a.0));
        }
        Ok(Report { summary })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::contract::NoProgress;
    use crate::data::schema::{Message, ToolCall, ToolSpec};
    use crate::data::template::golden::tokenizer_dir;
    use crate::model::config::{Arch, Preset};
    use crate::model::init::{Shape, init_model};
    use crate::model::linear::{LinearWeight, Proj};
    use crate::model::ops::tests::max_abs_diff;

    fn run_eval(
        inputs: &BTreeMap<String, PathBuf>,
        params: Value,
        out: &Path,
    ) -> Result<Report, StageError> {
        let cancel = AtomicBool::new(false);
        let ctx = Context {
            stage: "eval",
            inputs,
            out,
            state: crate::contract::unused_state(),
            device: crate::Device::Cpu,
            progress: &NoProgress,
            cancel: &cancel,
            seed: 0,
        };
        let params = crate::Stage::check_params(&Eval, &params).unwrap();
        crate::Stage::run(&Eval, &params, &ctx)
    }

    fn test_split(dir: &Path) {
        let tool = ToolSpec {
            name: "get_weather".into(),
            description: "Weather for a city.".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        };
        let row = |id: &str, gold: Vec<ToolCall>| Conversation {
            id: id.into(),
            messages: vec![Message {
                role: Role::User,
                content: "Weather in Paris?".into(),
                tool_calls: Vec::new(),
            }],
            tools: vec![tool.clone()],
            gold_calls: gold,
        };
        let rows = vec![
            row(
                "t-0",
                vec![ToolCall {
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris"}).as_object().unwrap().clone(),
                }],
            ),
            row("t-1", Vec::new()),
            row("t-2", Vec::new()),
        ];
        io::write_jsonl(dir.join("test.jsonl"), &rows).unwrap();
    }

    #[test]
    fn generates_scores_and_writes_every_output() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        init_model(
            Arch::Qwen3,
            &Shape::Preset(Preset::Tiny),
            0,
            &model,
            tokenizer_dir(),
        )
        .unwrap();
        let data = tmp.path().join("split");
        std::fs::create_dir_all(&data).unwrap();
        test_split(&data);
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let inputs: BTreeMap<String, PathBuf> = [
            ("model".to_string(), model.clone()),
            (
                "bfcl".to_string(),
                super::super::agreement::data_dir().to_path_buf(),
            ),
            ("data".to_string(), data),
        ]
        .into();
        let params = json!({"categories": ["simple_python", "irrelevance", "live_irrelevance"],
                            "limit": 1, "test_limit": 2, "max_new_tokens": 4, "batch_size": 2});
        let report = run_eval(&inputs, params.clone(), &out).unwrap();
        assert!(report.summary.contains("hit_cap"), "{}", report.summary);

        let lines: Vec<Value> = std::fs::read_to_string(out.join("generations.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3 + 2);
        assert_eq!(lines.iter().filter(|l| l["category"] == "test").count(), 2);
        for line in &lines {
            assert!(
                line["hit_cap"].is_boolean() && line["valid"].is_boolean(),
                "{line}"
            );
            assert!(line["new_tokens"].as_u64().unwrap() <= 4, "{line}");
        }

        let metrics: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap())
                .unwrap();
        let bfcl = &metrics["bfcl"];
        let categories = bfcl["categories"].as_object().unwrap();
        assert_eq!(categories.len(), 3);
        let summed: u64 = categories
            .values()
            .map(|c| c["total"].as_u64().unwrap())
            .sum();
        assert_eq!(summed, bfcl["entries"].as_u64().unwrap());
        assert_eq!(summed, 3);
        // A section is scored only when all its categories ran: here only irrelevance.
        assert!(bfcl["sections"]["irrelevance"].is_number(), "{metrics}");
        assert!(bfcl["sections"].get("non_live").is_none(), "{metrics}");
        assert!(bfcl["hit_cap"].is_number());
        assert_eq!(metrics["ladder"]["rows"], 2);
        assert!(metrics["ladder"]["hit_cap"].is_number());
        assert_eq!(metrics["generation"]["rows"], 5);
        let capped = lines.iter().filter(|l| l["hit_cap"] == true).count();
        let rate = metrics["generation"]["hit_cap"].as_f64().unwrap();
        assert!(
            (rate - 100.0 * capped as f64 / 5.0).abs() < 1e-9,
            "{rate} vs {capped}"
        );

        let report_md = std::fs::read_to_string(out.join("report.md")).unwrap();
        assert!(report_md.contains("## BFCL V4"), "{report_md}");
        assert!(report_md.contains("| strict |"), "{report_md}");

        // An adapter input is applied (un-merged): the same rows generate otherwise, and the
        // outputs say which adapter ran.
        let adapter_dir = tmp.path().join("adapter");
        let mut decoder = Decoder::load(&model, DType::F32, &candle_core::Device::Cpu).unwrap();
        let trained = crate::train::adapter::tests::trained(
            &mut decoder,
            &[Proj::Q, Proj::Down],
            &[151657, 151658],
        );
        // Strong enough to move a random model off its favourite token.
        for pair in trained.lora.layers.values() {
            pair.b()
                .set(&(pair.b().as_tensor() * 20.0).unwrap())
                .unwrap();
        }
        adapter::save(&trained, &decoder, &adapter_dir, "tiny").unwrap();
        let mut with_adapter = inputs.clone();
        with_adapter.insert("adapter".into(), adapter_dir.clone());
        let out2 = tmp.path().join("out2");
        std::fs::create_dir_all(&out2).unwrap();
        let report = run_eval(&with_adapter, params.clone(), &out2).unwrap();
        assert!(
            report
                .summary
                .contains("adapter r 4, alpha 8, 8 LoRA pairs, 2 token rows"),
            "{}",
            report.summary
        );
        let raws = |dir: &Path| -> Vec<String> {
            std::fs::read_to_string(dir.join("generations.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap()["raw"].to_string())
                .collect()
        };
        let (plain, adapted) = (raws(&out), raws(&out2));
        assert_eq!(plain.len(), adapted.len());
        assert_ne!(plain, adapted, "the adapter changes the generations");
        let metrics: Value =
            serde_json::from_str(&std::fs::read_to_string(out2.join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(metrics["adapter"]["lora_pairs"], 8, "{metrics}");
        assert_eq!(metrics["adapter"]["base"], "none", "{metrics}");
        assert!(
            std::fs::read_to_string(out2.join("report.md"))
                .unwrap()
                .starts_with("Adapter (un-merged): r 4")
        );

        // An adapter the sft stage trained on an NF4 base is applied to the NF4 base.
        let metrics_file = adapter_dir.join("metrics.json");
        let q_proj = |m: &mut Decoder| {
            let (_, linear) = m.linears_mut().next().unwrap();
            linear.weight().dense().unwrap()
        };
        let cpu = candle_core::Device::Cpu;
        for (quant, want_nf4) in [(None, false), (Some("none"), false), (Some("nf4"), true)] {
            match quant {
                Some(q) => std::fs::write(&metrics_file, format!(r#"{{"quant": "{q}"}}"#)).unwrap(),
                None => std::fs::remove_file(&metrics_file).unwrap_or(()),
            }
            let (mut m, summary) =
                load_model(&model, Some(&adapter_dir), DType::F32, &cpu).unwrap();
            let got = q_proj(&mut m);
            let dense = q_proj(&mut decoder);
            let nf4 = crate::model::nf4::Nf4Weight::quantize(&dense).unwrap();
            let want = if want_nf4 {
                nf4.dense().unwrap()
            } else {
                dense
            };
            assert_eq!(max_abs_diff(&got, &want), 0.0, "{quant:?}");
            let (text, value) = summary.unwrap();
            assert_eq!(text.contains("NF4 base"), want_nf4, "{text}");
            assert_eq!(value["base"], if want_nf4 { "nf4" } else { "none" });
        }
        std::fs::write(&metrics_file, r#"{"quant": "int3"}"#).unwrap();
        let err = load_model(&model, Some(&adapter_dir), DType::F32, &cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("adapter/metrics.json: field `quant`"), "{err}");
        std::fs::remove_file(&metrics_file).unwrap();

        // A broken adapter fails the stage, naming the file.
        std::fs::remove_file(adapter_dir.join(adapter::WEIGHTS_FILE)).unwrap();
        let out3 = tmp.path().join("out3");
        std::fs::create_dir_all(&out3).unwrap();
        let err = run_eval(&with_adapter, params, &out3)
            .unwrap_err()
            .to_string();
        assert!(err.contains("adapter/adapter_model.safetensors"), "{err}");
    }

    #[test]
    fn params_have_explicit_defaults_and_reject_unknown_fields() {
        let resolved = crate::Stage::check_params(&Eval, &json!({})).unwrap();
        assert_eq!(
            resolved,
            json!({"categories": ["all"], "limit": null, "test_limit": null,
                   "max_new_tokens": 512, "batch_size": 8, "dtype": "f32"})
        );
        assert!(crate::Stage::check_params(&Eval, &json!({"limt": 1})).is_err());
    }
}
