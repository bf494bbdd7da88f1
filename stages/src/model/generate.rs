//! Generation: batched prompts of different lengths with a KV cache, greedy or seeded
//! temperature/top-p sampling, stop tokens, a cap on new tokens, a per-token callback for
//! streaming, and detection of degenerate repetition.
//!
//! Prompts are left-padded into one batch (every row's next token lands in the last column) and
//! prefilled in one forward; each step then feeds one token per row. A row that stops leaves the
//! batch — its cache rows are dropped — so long generations do not pay for finished ones. One row
//! on a GPU steps through a [`DecodeGraph`] instead: the same step, replayed as a CUDA graph.
//! Repetition is reported, never hidden: DESIGN.md's lesson is that merged adapters degenerate
//! into loops that teacher-forced loss cannot see, so every [`Generation`] says whether its tail
//! is periodic, and eval counts rows that hit the cap.
//!
//! [`chat`] is `forge generate`: one prompt rendered with the model's chat template, tokenized,
//! generated and decoded, with the text streamed as it is produced.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::ModelError;
use super::decoder::{Batch, Decoder};
use super::graph::DecodeGraph;
use crate::StageError;
use crate::data::format::{load_template, load_tokenizer};
use crate::data::schema::{Message, Role};
use crate::data::synth::rng::Rng;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// From `softmax(logits / temperature)` restricted to the smallest set of most likely tokens
    /// whose probability reaches `top_p`. Row `i` of a request draws from its own generator
    /// seeded by `(seed, i)`.
    Sample {
        temperature: f64,
        top_p: f64,
        seed: u64,
    },
}

/// When a generation's tail counts as degenerate: some period of at most `max_period` tokens
/// repeated at least `min_repeats` times, covering at least `min_span` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepetitionCheck {
    pub max_period: usize,
    pub min_repeats: usize,
    pub min_span: usize,
}

impl Default for RepetitionCheck {
    /// A line or call of up to 64 tokens said four times over at least 32 tokens: far beyond a
    /// list of similar items or a run of closing braces, well within a 512-token cap.
    fn default() -> Self {
        RepetitionCheck {
            max_period: 64,
            min_repeats: 4,
            min_span: 32,
        }
    }
}

/// A repeated tail: `span` final tokens that repeat a `period`-token pattern `repeats` times
/// (the last repeat may be partial).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repetition {
    pub period: usize,
    pub repeats: usize,
    pub span: usize,
}

impl RepetitionCheck {
    /// The degenerate tail of `tokens`, if it has one (the shortest qualifying period).
    pub fn find(&self, tokens: &[u32]) -> Option<Repetition> {
        let n = tokens.len();
        (1..=self.max_period.min(n / 2)).find_map(|period| {
            let run = (period..n)
                .rev()
                .take_while(|&i| tokens[i] == tokens[i - period])
                .count();
            let span = run + period;
            let repeats = span / period;
            (repeats >= self.min_repeats && span >= self.min_span).then_some(Repetition {
                period,
                repeats,
                span,
            })
        })
    }
}

/// Everything [`generate`] needs besides the model and prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Tokens that end a row (`<|im_end|>`, EOS); not included in the output.
    pub stop_tokens: Vec<u32>,
    pub repetition: RepetitionCheck,
    /// End a row as soon as its tail is degenerate (eval saves time; the row is still reported).
    pub stop_on_repetition: bool,
    /// The id put into padding slots (never attended to; any id in the vocabulary).
    pub pad_token: u32,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 512,
            sampling: Sampling::Greedy,
            stop_tokens: Vec::new(),
            repetition: RepetitionCheck::default(),
            stop_on_repetition: false,
            pad_token: 0,
        }
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// It produced this stop token.
    StopToken(u32),
    /// It reached `max_new_tokens`.
    MaxNewTokens,
    /// Its tail became degenerate and `stop_on_repetition` was set.
    Repetition,
}

/// One row's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The new tokens, without the stop token.
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// The degenerate tail of `tokens`, if any.
    pub repetition: Option<Repetition>,
}

/// Generates a continuation of each prompt (each non-empty). `on_token(row, token)` is called
/// for every token appended to a row, as soon as it is chosen.
pub fn generate(
    model: &Decoder,
    prompts: &[Vec<u32>],
    options: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Generation>, ModelError> {
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        return Err(ModelError::Invalid(format!("prompt {i} is empty")));
    }
    if let Sampling::Sample {
        temperature, top_p, ..
    } = options.sampling
        && !(temperature > 0.0 && top_p > 0.0 && top_p <= 1.0)
    {
        return Err(ModelError::Invalid(format!(
            "sampling needs temperature > 0 and 0 < top_p <= 1 (got {temperature}, {top_p})"
        )));
    }
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut stops: Vec<Option<StopReason>> = vec![None; prompts.len()];
    if options.max_new_tokens == 0 {
        stops.fill(Some(StopReason::MaxNewTokens));
    }
    let mut rngs: Vec<Rng> = match options.sampling {
        Sampling::Greedy => Vec::new(),
        Sampling::Sample { seed, .. } => (0..prompts.len())
            .map(|i| Rng::for_item(seed, i as u64))
            .collect(),
    };
    // `active[k]` is the request row in batch row k.
    let mut active: Vec<usize> = (0..prompts.len()).filter(|&i| stops[i].is_none()).collect();
    let device = model.device().clone();
    let mut cache = model.new_cache();
    let mut next_position: Vec<u32> = prompts.iter().map(|p| p.len() as u32).collect();
    let mut logits = if active.is_empty() {
        None
    } else {
        let rows: Vec<Vec<u32>> = active.iter().map(|&i| prompts[i].clone()).collect();
        let batch = Batch::padded(&rows, options.pad_token, true, &device)?;
        let hidden = model.hidden(&batch, Some(&mut cache))?;
        let t = hidden.dim(1)?;
        Some(model.logits(&hidden.narrow(1, t - 1, 1)?)?.squeeze(1)?)
    };
    // One row on a GPU: each step is one replay of a CUDA graph (the host is the bottleneck).
    let mut graph = if active.len() == 1 && device.is_cuda() {
        let capacity = prompts[active[0]].len() + options.max_new_tokens;
        let cache = std::mem::replace(&mut cache, model.new_cache());
        Some(DecodeGraph::new(model, cache, capacity)?)
    } else {
        None
    };
    while let Some(step_logits) = logits.take() {
        let chosen = choose(&step_logits, &options.sampling, &active, &mut rngs)?;
        let mut keep = Vec::with_capacity(active.len());
        for (k, (&row, token)) in active.iter().zip(chosen).enumerate() {
            if options.stop_tokens.contains(&token) {
                stops[row] = Some(StopReason::StopToken(token));
                continue;
            }
            tokens[row].push(token);
            on_token(row, token);
            if tokens[row].len() >= options.max_new_tokens {
                stops[row] = Some(StopReason::MaxNewTokens);
            } else if options.stop_on_repetition && options.repetition.find(&tokens[row]).is_some()
            {
                stops[row] = Some(StopReason::Repetition);
            } else {
                keep.push(k);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            cache.select_rows(&keep)?;
            active = keep.iter().map(|&k| active[k]).collect();
        }
        let ids: Vec<u32> = active
            .iter()
            .map(|&r| *tokens[r].last().expect("a token"))
            .collect();
        if let Some(graph) = &mut graph {
            logits = Some(graph.step(ids[0])?);
            continue;
        }
        let positions: Vec<u32> = active.iter().map(|&r| next_position[r]).collect();
        for &r in &active {
            next_position[r] += 1;
        }
        let n = active.len();
        let batch = Batch {
            ids: Tensor::from_vec(ids, (n, 1), &device)?,
            positions: Tensor::from_vec(positions, (n, 1), &device)?,
            valid: None,
        };
        logits = Some(model.forward(&batch, Some(&mut cache))?.squeeze(1)?);
    }
    Ok(tokens
        .into_iter()
        .zip(stops)
        .map(|(tokens, stop)| Generation {
            repetition: options.repetition.find(&tokens),
            tokens,
            stop: stop.expect("every row stops"),
        })
        .collect())
}

/// The next token of each batch row from its logits `[B, vocab]`.
fn choose(
    logits: &Tensor,
    sampling: &Sampling,
    active: &[usize],
    rngs: &mut [Rng],
) -> Result<Vec<u32>, ModelError> {
    match *sampling {
        Sampling::Greedy => Ok(super::decode::argmax(logits)?.to_vec1::<u32>()?),
        Sampling::Sample {
            temperature, top_p, ..
        } => {
            let rows = logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            Ok(rows
                .iter()
                .zip(active)
                .map(|(row, &r)| sample(row, temperature, top_p, &mut rngs[r]))
                .collect())
        }
    }
}

/// One draw from `softmax(logits / temperature)` cut to the top-`top_p` nucleus.
fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut Rng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let by_prob = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    // A peaked distribution has its nucleus among the few most likely tokens: look there first
    // (a linear-time selection) and sort the whole vocabulary only when that is not enough.
    let nucleus_size = |sorted: &[(u32, f64)]| {
        let mut mass = 0.0;
        sorted.iter().position(|(_, p)| {
            mass += p / total;
            mass >= top_p
        })
    };
    let head = 256.min(probs.len());
    if head < probs.len() {
        probs.select_nth_unstable_by(head, by_prob);
    }
    probs[..head].sort_unstable_by(by_prob);
    let kept = match nucleus_size(&probs[..head]) {
        Some(i) => i + 1,
        None => {
            probs.sort_unstable_by(by_prob);
            nucleus_size(&probs).map_or(probs.len(), |i| i + 1)
        }
    };
    let nucleus = &probs[..kept];
    let nucleus_total: f64 = nucleus.iter().map(|p| p.1).sum();
    let mut u = ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) * nucleus_total;
    for &(id, p) in nucleus {
        if u < p {
            return id;
        }
        u -= p;
    }
    nucleus[kept - 1].0
}

/// What `forge generate` asks for.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    pub system: Option<String>,
    /// A trained adapter directory (PEFT's layout, [`crate::train::adapter`]), applied un-merged:
    /// its LoRA pairs run beside the base weights, never folded into them.
    pub adapter: Option<PathBuf>,
    /// Stop tokens are filled in from the tokenizer's `eos_token` and the config's EOS ids.
    pub generate: GenerateOptions,
    pub dtype: DType,
    pub device: Device,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            system: None,
            adapter: None,
            generate: GenerateOptions::default(),
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// The result of [`chat`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// The rendered prompt the model was given.
    pub prompt: String,
    /// The reply, decoded without special tokens.
    pub text: String,
    pub generation: Generation,
}

fn stage_error(e: StageError) -> ModelError {
    match e {
        StageError::Io { path, source } => ModelError::Io { path, source },
        other => ModelError::Invalid(other.to_string()),
    }
}

/// `options` with the model's stop tokens added — the tokenizer config's `eos_token` and the
/// model config's EOS ids — and its pad token, as `forge generate` and the eval stage use them.
pub fn with_model_stops(
    options: &GenerateOptions,
    template: &crate::data::template::ChatTemplate,
    tokenizer: &tokenizers::Tokenizer,
    model: &Decoder,
) -> GenerateOptions {
    let mut out = options.clone();
    if let Some(eos) = template.special_token("eos_token")
        && let Some(id) = tokenizer.token_to_id(eos)
    {
        out.stop_tokens.push(id);
    }
    out.stop_tokens
        .extend(model.config().eos_token_ids.iter().copied());
    out.stop_tokens.sort_unstable();
    out.stop_tokens.dedup();
    if let Some(pad) = model.config().pad_token_id {
        out.pad_token = pad;
    }
    out
}

/// Answers `prompt` (a user message, after an optional system message) with the model in
/// `model_dir`, rendered with its chat template; `on_text` receives the reply as it is decoded.
pub fn chat(
    model_dir: &Path,
    prompt: &str,
    options: &ChatOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<ChatReply, ModelError> {
    let template = load_template(model_dir).map_err(stage_error)?;
    let tokenizer = load_tokenizer(model_dir).map_err(stage_error)?;
    let mut model = Decoder::load(model_dir, options.dtype, &options.device)?;
    if let Some(adapter) = &options.adapter {
        crate::train::adapter::load_on_trained_base(adapter, &mut model)?;
    }
    let mut messages = Vec::new();
    if let Some(system) = &options.system {
        messages.push(Message {
            role: Role::System,
            content: system.clone(),
            tool_calls: Vec::new(),
        });
    }
    messages.push(Message {
        role: Role::User,
        content: prompt.to_string(),
        tool_calls: Vec::new(),
    });
    let rendered = template
        .render(&messages, &[], true)
        .map_err(|e| ModelError::Invalid(format!("{}: {e}", model_dir.display())))?;
    let ids = tokenizer
        .encode_fast(rendered.as_str(), false)
        .map_err(|e| ModelError::Invalid(format!("tokenizing the prompt: {e}")))?
        .get_ids()
        .to_vec();

    let gen_options = with_model_stops(&options.generate, &template, &tokenizer, &model);

    let mut stream = tokenizer.decode_stream(true);
    let mut stream_error = None;
    let generation = generate(&model, &[ids], &gen_options, &mut |_, token| {
        if stream_error.is_some() {
            return;
        }
        match stream.step(token) {
            Ok(Some(text)) => on_text(&text),
            Ok(None) => {}
            Err(e) => stream_error = Some(e.to_string()),
        }
    })?
    .pop()
    .expect("one prompt, one generation");
    if let Some(e) = stream_error {
        return Err(ModelError::Invalid(format!("decoding the reply: {e}")));
    }
    let text = tokenizer
        .decode(&generation.tokens, true)
        .map_err(|e| ModelError::Invalid(format!("decoding the reply: {e}")))?;
    Ok(ChatReply {
        prompt: rendered,
        text,
        generation,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, Preset};
    use crate::model::decoder::tests::fixture;
    use crate::model::init::{Shape, init_model, random_decoder};

    /// The tiny preset (real vocabulary) and two fixture models of the other archs.
    fn models() -> Vec<(String, Decoder)> {
        let tiny = Preset::Tiny.config(Arch::Qwen3).unwrap();
        vec![
            (
                "tiny qwen3".into(),
                random_decoder(&tiny, 1, DType::F32, &Device::Cpu).unwrap(),
            ),
            (
                "qwen2 fixture".into(),
                Decoder::load(&fixture("qwen2"), DType::F32, &Device::Cpu).unwrap(),
            ),
            (
                "llama fixture".into(),
                Decoder::load(&fixture("llama"), DType::F32, &Device::Cpu).unwrap(),
            ),
        ]
    }

    fn prompts() -> Vec<Vec<u32>> {
        vec![
            vec![5, 9, 11, 2, 7, 64, 3],
            vec![17],
            vec![100, 4, 6, 1, 1, 90, 33, 21, 8, 12, 77, 2],
            vec![3, 120],
        ]
    }

    fn greedy(max_new_tokens: usize, stop_tokens: Vec<u32>) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens,
            stop_tokens,
            ..GenerateOptions::default()
        }
    }

    /// Greedy decoding by recomputing the whole sequence for every new token.
    fn recompute(model: &Decoder, prompt: &[u32], n: usize) -> Vec<u32> {
        let mut seq = prompt.to_vec();
        for _ in 0..n {
            let batch = Batch::dense(std::slice::from_ref(&seq), 0, &Device::Cpu).unwrap();
            let logits = model.forward(&batch, None).unwrap();
            let last = logits.get(0).unwrap().get(seq.len() - 1).unwrap();
            seq.push(last.argmax(0).unwrap().to_scalar::<u32>().unwrap());
        }
        seq[prompt.len()..].to_vec()
    }

    #[test]
    fn greedy_with_the_cache_equals_full_recomputation() {
        for (name, model) in models() {
            for prompt in prompts() {
                let got = generate(
                    &model,
                    std::slice::from_ref(&prompt),
                    &greedy(20, vec![]),
                    &mut |_, _| {},
                )
                .unwrap()
                .pop()
                .unwrap();
                assert_eq!(got.stop, StopReason::MaxNewTokens);
                assert_eq!(
                    got.tokens,
                    recompute(&model, &prompt, 20),
                    "{name} {prompt:?}"
                );
            }
        }
    }

    #[test]
    fn batched_generation_equals_one_at_a_time() {
        for (name, model) in models() {
            let prompts = prompts();
            let alone = |p: &Vec<u32>, opts: &GenerateOptions| {
                generate(&model, std::slice::from_ref(p), opts, &mut |_, _| {})
                    .unwrap()
                    .pop()
                    .unwrap()
            };
            // A stop token that the first row produces mid-way, so rows leave the batch at
            // different steps.
            let free = alone(&prompts[0], &greedy(16, vec![]));
            let stop = free.tokens[5];
            let opts = greedy(16, vec![stop]);
            let mut streamed = vec![Vec::new(); prompts.len()];
            let batched =
                generate(&model, &prompts, &opts, &mut |row, t| streamed[row].push(t)).unwrap();
            assert_eq!(batched[0].stop, StopReason::StopToken(stop), "{name}");
            assert!(batched[0].tokens.len() <= 5, "{name}");
            for (i, p) in prompts.iter().enumerate() {
                assert_eq!(batched[i], alone(p, &opts), "{name}: row {i}");
                assert_eq!(streamed[i], batched[i].tokens, "{name}: stream of row {i}");
            }
        }
    }

    #[test]
    fn sampling_is_seeded_and_a_tiny_nucleus_is_greedy() {
        let (_, model) = models().swap_remove(1);
        let prompts = prompts();
        let sampled = |seed, temperature, top_p| {
            let opts = GenerateOptions {
                max_new_tokens: 12,
                sampling: Sampling::Sample {
                    temperature,
                    top_p,
                    seed,
                },
                ..GenerateOptions::default()
            };
            generate(&model, &prompts, &opts, &mut |_, _| {}).unwrap()
        };
        assert_eq!(sampled(7, 1.0, 0.9), sampled(7, 1.0, 0.9));
        assert_ne!(sampled(7, 1.0, 0.9), sampled(8, 1.0, 0.9));
        let greedy_out = generate(&model, &prompts, &greedy(12, vec![]), &mut |_, _| {}).unwrap();
        assert_eq!(sampled(7, 1.0, 1e-9), greedy_out);
        let bad = GenerateOptions {
            sampling: Sampling::Sample {
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
            },
            ..GenerateOptions::default()
        };
        assert!(generate(&model, &prompts, &bad, &mut |_, _| {}).is_err());
    }

    #[test]
    fn samples_follow_the_tempered_nucleus() {
        let logits = [0f32, 3f32.ln(), -30.0];
        let mut rng = Rng::new(1);
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| sample(&logits, 1.0, 1.0, &mut rng) == 1)
            .count();
        let freq = ones as f64 / n as f64;
        assert!((freq - 0.75).abs() < 0.015, "{freq}");
        // Temperature 0.5 squares the odds: 9 : 1.
        let ones = (0..n)
            .filter(|_| sample(&logits, 0.5, 1.0, &mut rng) == 1)
            .count();
        assert!((ones as f64 / n as f64 - 0.9).abs() < 0.015);
        // The nucleus of mass 0.5 is token 1 alone.
        assert!((0..100).all(|_| sample(&logits, 1.0, 0.5, &mut rng) == 1));
    }

    #[test]
    fn repetition_is_found_at_the_tail_only() {
        let check = RepetitionCheck {
            max_period: 8,
            min_repeats: 3,
            min_span: 9,
        };
        let looped: Vec<u32> = [1, 2]
            .into_iter()
            .chain([7, 8, 9].repeat(4))
            .chain([7])
            .collect();
        assert_eq!(
            check.find(&looped),
            Some(Repetition {
                period: 3,
                repeats: 4,
                span: 13
            })
        );
        assert_eq!(check.find(&[5; 9]).map(|r| r.period), Some(1));
        assert_eq!(check.find(&[5; 8]), None, "span below min_span");
        let mut ended: Vec<u32> = [7, 8, 9].repeat(4);
        ended.push(1);
        assert_eq!(check.find(&ended), None, "the loop was left");
        assert_eq!(check.find(&(0..40).collect::<Vec<_>>()), None);
    }

    #[test]
    fn edge_cases_stop_cleanly() {
        let (_, model) = models().swap_remove(1);
        let out = generate(&model, &prompts(), &greedy(0, vec![]), &mut |_, _| {}).unwrap();
        assert!(
            out.iter()
                .all(|g| g.tokens.is_empty() && g.stop == StopReason::MaxNewTokens)
        );
        assert!(generate(&model, &[vec![]], &greedy(3, vec![]), &mut |_, _| {}).is_err());
        assert!(
            generate(&model, &[], &greedy(3, vec![]), &mut |_, _| {})
                .unwrap()
                .is_empty()
        );
        let always = GenerateOptions {
            stop_on_repetition: true,
            repetition: RepetitionCheck {
                max_period: 4,
                min_repeats: 1,
                min_span: 1,
            },
            ..greedy(10, vec![])
        };
        let out = generate(&model, &prompts(), &always, &mut |_, _| {}).unwrap();
        for g in out {
            assert_eq!((g.stop, g.tokens.len()), (StopReason::Repetition, 2));
            assert!(g.repetition.is_some());
        }
    }

    #[test]
    fn chat_renders_with_the_template_and_streams_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let tokenizer = crate::data::template::golden::tokenizer_dir();
        init_model(
            Arch::Qwen3,
            &Shape::Preset(Preset::Tiny),
            3,
            dir.path(),
            tokenizer,
        )
        .unwrap();
        let options = ChatOptions {
            system: Some("Be brief.".into()),
            generate: greedy(8, vec![]),
            ..ChatOptions::default()
        };
        let mut streamed = String::new();
        let reply = chat(dir.path(), "Hello", &options, &mut |t| streamed.push_str(t)).unwrap();
        assert_eq!(
            reply.prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!reply.generation.tokens.is_empty() && reply.generation.tokens.len() <= 8);
        assert_eq!(streamed, reply.text);

        // An adapter is applied: the same prompt, greedy, gives another reply.
        let adapter_dir = dir.path().join("adapter");
        let mut model = Decoder::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let adapter = crate::train::adapter::tests::trained(
            &mut model,
            &[crate::model::Proj::Q, crate::model::Proj::Down],
            &[151657, 151658],
        );
        crate::train::adapter::save(&adapter, &model, &adapter_dir, "tiny").unwrap();
        let with_adapter = ChatOptions {
            adapter: Some(adapter_dir),
            ..options.clone()
        };
        let adapted = chat(dir.path(), "Hello", &with_adapter, &mut |_| {}).unwrap();
        assert_eq!(adapted.prompt, reply.prompt);
        assert_ne!(adapted.generation.tokens, reply.generation.tokens);

        let missing = ChatOptions {
            adapter: Some(dir.path().join("no-adapter")),
            ..options
        };
        let err = chat(dir.path(), "Hello", &missing, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("no-adapter/adapter_config.json"), "{err}");
    }
}
