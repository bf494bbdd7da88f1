//! The decoder: embedding → N × (RMSNorm → attention → residual, RMSNorm → SwiGLU MLP →
//! residual) → RMSNorm → head, for Qwen3, Qwen2 and Llama alike ([`super::config`] decides the
//! differences).
//!
//! A forward takes a [`Batch`] — token ids, explicit position ids and which slots are real — so that
//! left-padded generation batches, right-padded training batches and KV-cached decoding steps all go
//! through one code path. Parameters are plain tensors (frozen) unless they are a `Var`'s tensor
//! (trained); LoRA, NF4 and trainable token rows hook in through [`Decoder::linears_mut`] and
//! [`Decoder::train_token_rows`].
//!
//! Activation checkpointing ([`Decoder::loss_and_grads`] with `checkpoint: true`) is real: candle
//! builds its graph from the tensors each op keeps, so the first pass runs every layer on a
//! detached input and keeps only that input (`[B, T, hidden]` per layer); the backward pass then
//! walks the layers in reverse, recomputes one layer with its graph, and backpropagates the
//! incoming gradient through it (`backward` of `sum(out ⊙ grad_out)`), so at most one layer's
//! activations are alive at a time. The price is one extra forward per layer, as in PyTorch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result as CandleResult, Tensor, Var};

use super::ModelError;
use super::attention::{Attention, AttentionContext, CacheWrite, KvCache, attention_mask};
use super::config::ModelConfig;
use super::decode;
use super::embedding::{Embedding, LmHead, TokenRows};
use super::linear::{Linear, LinearId, Proj};
use super::load::{self, CONFIG_FILE};
use super::ops::{rms_norm, swiglu};
use super::rope::Rope;

/// The tokens of one forward pass.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[B, T]` u32.
    pub ids: Tensor,
    /// `[B, T]` u32: each token's position (RoPE), counted over real tokens only.
    pub positions: Tensor,
    /// `[B, T]` u8, 1 for a real token, 0 for padding; `None` when every token is real.
    pub valid: Option<Tensor>,
}

impl Batch {
    /// Rows of equal length, no padding, positions `start, start + 1, …`.
    pub fn dense(rows: &[Vec<u32>], start: u32, device: &Device) -> CandleResult<Batch> {
        let t = rows.first().map_or(0, Vec::len);
        if rows.iter().any(|r| r.len() != t) {
            candle_core::bail!("Batch::dense needs rows of equal length");
        }
        let ids: Vec<u32> = rows.concat();
        let positions: Vec<u32> = rows
            .iter()
            .flat_map(|_| (0..t as u32).map(|p| start + p))
            .collect();
        Ok(Batch {
            ids: Tensor::from_vec(ids, (rows.len(), t), device)?,
            positions: Tensor::from_vec(positions, (rows.len(), t), device)?,
            valid: None,
        })
    }

    /// Rows of any lengths padded with `pad` on the left (prompts for generation: every row's
    /// last token is in the last column) or on the right (training).
    pub fn padded(rows: &[Vec<u32>], pad: u32, left: bool, device: &Device) -> CandleResult<Batch> {
        let t = rows.iter().map(Vec::len).max().unwrap_or(0);
        let (mut ids, mut positions, mut valid) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            let gap = t - row.len();
            let (before, after) = if left { (gap, 0) } else { (0, gap) };
            ids.extend(std::iter::repeat_n(pad, before));
            ids.extend_from_slice(row);
            ids.extend(std::iter::repeat_n(pad, after));
            positions.extend(std::iter::repeat_n(0, before));
            positions.extend(0..row.len() as u32);
            positions.extend(std::iter::repeat_n(0, after));
            valid.extend(std::iter::repeat_n(0u8, before));
            valid.extend(std::iter::repeat_n(1u8, row.len()));
            valid.extend(std::iter::repeat_n(0u8, after));
        }
        let shape = (rows.len(), t);
        let all_real = valid.iter().all(|&v| v == 1);
        Ok(Batch {
            ids: Tensor::from_vec(ids, shape, device)?,
            positions: Tensor::from_vec(positions, shape, device)?,
            valid: if all_real {
                None
            } else {
                Some(Tensor::from_vec(valid, shape, device)?)
            },
        })
    }
}

/// SwiGLU MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor) -> CandleResult<Tensor> {
        if let (Some(g), Some(u)) = (self.gate.plain_dense(), self.up.plain_dense())
            && decode::applies(x, g)
            && decode::applies(x, u)
        {
            return self.down.forward(&decode::swiglu(x, g, u)?);
        }
        self.down
            .forward(&swiglu(&self.gate.forward(x)?, &self.up.forward(x)?)?)
    }
}

/// `(x + delta, rms_norm(x + delta, w))` (`x` alone without `delta`): one kernel where
/// [`decode::add_norm_applies`].
fn add_norm(
    x: &Tensor,
    delta: Option<&Tensor>,
    w: &Tensor,
    eps: f64,
    fused: bool,
) -> CandleResult<(Tensor, Tensor)> {
    match delta {
        None => Ok((x.clone(), rms_norm(x, w, eps, fused)?)),
        Some(d) if decode::add_norm_applies(x, d, w) => decode::add_rms_norm(x, d, w, eps),
        Some(d) => {
            let x = (x + d)?;
            let h = rms_norm(&x, w, eps, fused)?;
            Ok((x, h))
        }
    }
}

/// One decoder layer.
#[derive(Debug, Clone)]
pub struct Layer {
    pub input_norm: Tensor,
    pub attention: Attention,
    pub post_attention_norm: Tensor,
    pub mlp: Mlp,
    pub rms_norm_eps: f64,
}

impl Layer {
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &AttentionContext,
        cache: Option<CacheWrite<'_>>,
        fused: bool,
    ) -> CandleResult<Tensor> {
        let eps = self.rms_norm_eps;
        let h = rms_norm(x, &self.input_norm, eps, fused)?;
        let x = (x + self.attention.forward(&h, ctx, cache, fused)?)?;
        let h = rms_norm(&x, &self.post_attention_norm, eps, fused)?;
        x + self.mlp.forward(&h)?
    }

    /// [`Layer::forward`] of `x + delta` as the in-place decoding step runs it: returns the
    /// residual after attention and the MLP's output, which the caller adds (each residual add
    /// is one kernel with the norm after it where [`decode::add_norm_applies`]).
    pub(crate) fn step(
        &self,
        x: &Tensor,
        delta: Option<&Tensor>,
        ctx: &AttentionContext,
        cache: CacheWrite<'_>,
        fused: bool,
    ) -> CandleResult<(Tensor, Tensor)> {
        let eps = self.rms_norm_eps;
        let (x, h) = add_norm(x, delta, &self.input_norm, eps, fused)?;
        let attended = self.attention.forward(&h, ctx, Some(cache), fused)?;
        let (x, h) = add_norm(&x, Some(&attended), &self.post_attention_norm, eps, fused)?;
        Ok((x, self.mlp.forward(&h)?))
    }

    pub fn linear(&self, proj: Proj) -> &Linear {
        match proj {
            Proj::Q => &self.attention.q,
            Proj::K => &self.attention.k,
            Proj::V => &self.attention.v,
            Proj::O => &self.attention.o,
            Proj::Gate => &self.mlp.gate,
            Proj::Up => &self.mlp.up,
            Proj::Down => &self.mlp.down,
        }
    }

    pub fn linear_mut(&mut self, proj: Proj) -> &mut Linear {
        match proj {
            Proj::Q => &mut self.attention.q,
            Proj::K => &mut self.attention.k,
            Proj::V => &mut self.attention.v,
            Proj::O => &mut self.attention.o,
            Proj::Gate => &mut self.mlp.gate,
            Proj::Up => &mut self.mlp.up,
            Proj::Down => &mut self.mlp.down,
        }
    }
}

/// The token rows made trainable by [`Decoder::train_token_rows`]. With tied embeddings
/// `lm_head` is `None`: the embedding's rows serve the head too.
#[derive(Debug, Clone)]
pub struct TrainableRows {
    pub embedding: Arc<TokenRows>,
    pub lm_head: Option<Arc<TokenRows>>,
}

/// A Llama-family decoder.
#[derive(Debug, Clone)]
pub struct Decoder {
    config: ModelConfig,
    embedding: Embedding,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: LmHead,
    rope: Rope,
    dtype: DType,
    device: Device,
    fused: bool,
}

/// The tensors every layer has, by their name inside `model.layers.N.`.
fn layer_tensor_names(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, d, i) = (
        config.hidden_size,
        config.head_dim,
        config.intermediate_size,
    );
    let (q, kv) = (config.num_heads * d, config.num_kv_heads * d);
    let mut names = vec![
        ("input_layernorm.weight".to_string(), vec![h]),
        ("post_attention_layernorm.weight".to_string(), vec![h]),
    ];
    for (proj, out, inp, bias) in [
        (Proj::Q, q, h, config.qkv_bias),
        (Proj::K, kv, h, config.qkv_bias),
        (Proj::V, kv, h, config.qkv_bias),
        (Proj::O, h, q, config.o_bias),
        (Proj::Gate, i, h, config.mlp_bias),
        (Proj::Up, i, h, config.mlp_bias),
        (Proj::Down, h, i, config.mlp_bias),
    ] {
        names.push((format!("{}.weight", proj.hf_module()), vec![out, inp]));
        if bias {
            names.push((format!("{}.bias", proj.hf_module()), vec![out]));
        }
    }
    if config.qk_norm {
        names.push(("self_attn.q_norm.weight".to_string(), vec![d]));
        names.push(("self_attn.k_norm.weight".to_string(), vec![d]));
    }
    names
}

/// Every tensor name and shape of a model with `config`, as Hugging Face names them.
pub fn tensor_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![config.vocab_size, config.hidden_size],
    )];
    let per_layer = layer_tensor_names(config);
    for l in 0..config.num_layers {
        for (name, shape) in &per_layer {
            out.push((format!("model.layers.{l}.{name}"), shape.clone()));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![config.hidden_size]));
    if !config.tie_word_embeddings {
        out.push((
            "lm_head.weight".to_string(),
            vec![config.vocab_size, config.hidden_size],
        ));
    }
    out
}

/// Checkpoint entries that carry nothing the decoder needs.
fn ignorable(name: &str, config: &ModelConfig) -> bool {
    name.ends_with("rotary_emb.inv_freq")
        || (config.tie_word_embeddings && name == "lm_head.weight")
}

impl Decoder {
    /// Loads a Hugging Face model directory (`config.json` + safetensors) in `dtype`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Decoder, ModelError> {
        let config = ModelConfig::from_file(&dir.join(CONFIG_FILE))?;
        let mut weights = load::load_dir(dir, Some(dtype), device)?;
        Decoder::from_weights(config, &mut weights, dtype, device).map_err(|e| match e {
            ModelError::Weight { name, message } => ModelError::Weight {
                name,
                message: format!("{message} (in {})", dir.display()),
            },
            other => other,
        })
    }

    /// Builds the decoder from named tensors (taken out of `weights`; a `Var`'s tensor stays
    /// trainable). Every expected tensor must be there with its shape, and nothing else may be.
    pub fn from_weights(
        config: ModelConfig,
        weights: &mut HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Decoder, ModelError> {
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor, ModelError> {
            let t = weights.remove(name).ok_or_else(|| ModelError::Weight {
                name: name.to_string(),
                message: "missing from the checkpoint".into(),
            })?;
            if t.dims() != shape {
                return Err(ModelError::Weight {
                    name: name.to_string(),
                    message: format!("has shape {:?}, the config implies {shape:?}", t.dims()),
                });
            }
            if t.dtype() != dtype {
                return Err(ModelError::Weight {
                    name: name.to_string(),
                    message: format!("is {:?}, the model is {dtype:?}", t.dtype()),
                });
            }
            Ok(t)
        };
        let (h, d, i) = (
            config.hidden_size,
            config.head_dim,
            config.intermediate_size,
        );
        let (q, kv) = (config.num_heads * d, config.num_kv_heads * d);
        let embedding = Embedding::new(take("model.embed_tokens.weight", &[config.vocab_size, h])?);
        let mut layers = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            let p = format!("model.layers.{l}.");
            let mut linear = |proj: Proj, out: usize, inp: usize, bias: bool| {
                let name = format!("{p}{}", proj.hf_module());
                let w = take(&format!("{name}.weight"), &[out, inp])?;
                let b = if bias {
                    Some(take(&format!("{name}.bias"), &[out])?)
                } else {
                    None
                };
                Ok::<_, ModelError>(Linear::dense(w, b))
            };
            let attention = Attention {
                q: linear(Proj::Q, q, h, config.qkv_bias)?,
                k: linear(Proj::K, kv, h, config.qkv_bias)?,
                v: linear(Proj::V, kv, h, config.qkv_bias)?,
                o: linear(Proj::O, h, q, config.o_bias)?,
                q_norm: None,
                k_norm: None,
                num_heads: config.num_heads,
                num_kv_heads: config.num_kv_heads,
                head_dim: d,
                rms_norm_eps: config.rms_norm_eps,
            };
            let mlp = Mlp {
                gate: linear(Proj::Gate, i, h, config.mlp_bias)?,
                up: linear(Proj::Up, i, h, config.mlp_bias)?,
                down: linear(Proj::Down, h, i, config.mlp_bias)?,
            };
            let (q_norm, k_norm) = if config.qk_norm {
                (
                    Some(take(&format!("{p}self_attn.q_norm.weight"), &[d])?),
                    Some(take(&format!("{p}self_attn.k_norm.weight"), &[d])?),
                )
            } else {
                (None, None)
            };
            layers.push(Layer {
                input_norm: take(&format!("{p}input_layernorm.weight"), &[h])?,
                attention: Attention {
                    q_norm,
                    k_norm,
                    ..attention
                },
                post_attention_norm: take(&format!("{p}post_attention_layernorm.weight"), &[h])?,
                mlp,
                rms_norm_eps: config.rms_norm_eps,
            });
        }
        let norm = take("model.norm.weight", &[h])?;
        let lm_head = if config.tie_word_embeddings {
            LmHead::tied()
        } else {
            LmHead::untied(take("lm_head.weight", &[config.vocab_size, h])?)
        };
        let mut unexpected: Vec<&String> =
            weights.keys().filter(|n| !ignorable(n, &config)).collect();
        if !unexpected.is_empty() {
            unexpected.sort();
            return Err(ModelError::Weight {
                name: unexpected[0].clone(),
                message: format!(
                    "is not part of a {} model ({} unexpected tensors)",
                    config.arch,
                    unexpected.len()
                ),
            });
        }
        Ok(Decoder {
            rope: Rope::new(config.head_dim, config.rope_theta),
            config,
            embedding,
            layers,
            norm,
            lm_head,
            dtype,
            device: device.clone(),
            fused: true,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn embedding(&self) -> &Embedding {
        &self.embedding
    }

    pub fn lm_head(&self) -> &LmHead {
        &self.lm_head
    }

    /// Whether RMSNorm, softmax and RoPE run as the fused ops of [`super::fused`] (the default)
    /// or composed of candle ops (the slow reference, for tests that compare the two).
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// Every projection, in layer order then q, k, v, o, gate, up, down.
    pub fn linears(&self) -> impl Iterator<Item = (LinearId, &Linear)> {
        self.layers.iter().enumerate().flat_map(|(layer, l)| {
            Proj::ALL
                .into_iter()
                .map(move |proj| (LinearId { layer, proj }, l.linear(proj)))
        })
    }

    /// Every projection, mutably: to install adapters or replace base weights.
    pub fn linears_mut(&mut self) -> impl Iterator<Item = (LinearId, &mut Linear)> {
        self.layers.iter_mut().enumerate().flat_map(|(layer, l)| {
            let Layer {
                attention: Attention { q, k, v, o, .. },
                mlp: Mlp { gate, up, down },
                ..
            } = l;
            [
                (Proj::Q, q),
                (Proj::K, k),
                (Proj::V, v),
                (Proj::O, o),
                (Proj::Gate, gate),
                (Proj::Up, up),
                (Proj::Down, down),
            ]
            .into_iter()
            .map(move |(proj, lin)| (LinearId { layer, proj }, lin))
        })
    }

    /// Makes the embedding (and head) rows of `ids` trainable: zero deltas in `dtype` (f32 keeps
    /// small updates that bf16 would round away) on the frozen matrix. Replaces earlier rows.
    pub fn train_token_rows(&mut self, ids: &[u32], dtype: DType) -> CandleResult<TrainableRows> {
        let new = || {
            TokenRows::new(
                ids,
                self.config.vocab_size,
                self.config.hidden_size,
                dtype,
                &self.device,
            )
            .map(Arc::new)
        };
        let embedding = new()?;
        let lm_head = if self.config.tie_word_embeddings {
            None
        } else {
            Some(new()?)
        };
        self.embedding.set_rows(Some(embedding.clone()));
        self.lm_head
            .set_rows(Some(lm_head.clone().unwrap_or_else(|| embedding.clone())));
        Ok(TrainableRows { embedding, lm_head })
    }

    /// RoPE tables and attention mask of a forward over `batch` after `cache`'s slots.
    fn context(&self, batch: &Batch, cache: Option<&KvCache>) -> CandleResult<AttentionContext> {
        let (b, t) = batch.ids.dims2()?;
        let (cos, sin) = self.rope.tables(&batch.positions, self.dtype)?;
        let past_valid = cache.and_then(|c| c.valid.as_ref());
        // One new token per row and no padding anywhere (decoding): it sees every key.
        let mask = if t == 1 && past_valid.is_none() && batch.valid.is_none() {
            None
        } else {
            Some(attention_mask(
                b,
                cache.map_or(0, KvCache::len),
                t,
                past_valid,
                batch.valid.as_ref(),
                &self.device,
            )?)
        };
        Ok(AttentionContext { cos, sin, mask })
    }

    /// The final hidden states `[B, T, hidden]` (after the last RMSNorm). With `cache`, the
    /// batch continues the cached slots and is appended to them.
    pub fn hidden(&self, batch: &Batch, mut cache: Option<&mut KvCache>) -> CandleResult<Tensor> {
        let ctx = self.context(batch, cache.as_deref())?;
        let mut x = self.embedding.forward(&batch.ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| CacheWrite::Append(&mut c.layers[i]));
            x = layer.forward(&x, &ctx, slot, self.fused)?;
        }
        if let Some(cache) = cache {
            let (b, t) = batch.ids.dims2()?;
            cache.advance(b, t, batch.valid.as_ref(), &self.device)?;
        }
        self.final_norm(&x)
    }

    /// Logits `[1, 1, vocab]` of one token `ids [1, 1]` whose keys and values are written in place
    /// into `cache`'s buffers at the slot `index` holds ([`CacheWrite::At`]), with `ctx` for that
    /// slot: the decoding step [`super::graph`] captures. The cache's bookkeeping is the caller's.
    pub(crate) fn forward_in_place(
        &self,
        ids: &Tensor,
        ctx: &AttentionContext,
        index: &Tensor,
        cache: &KvCache,
    ) -> CandleResult<Tensor> {
        // Each layer's MLP output is added to the residual by the next norm's kernel.
        let mut x = self.embedding.forward(ids)?;
        let mut delta = None;
        for (layer, buffers) in self.layers.iter().zip(&cache.layers) {
            let Some(buffers) = buffers else {
                candle_core::bail!("writing in place into a cache that has no buffers yet");
            };
            let write = CacheWrite::At { buffers, index };
            let (residual, mlp) = layer.step(&x, delta.as_ref(), ctx, write, self.fused)?;
            (x, delta) = (residual, Some(mlp));
        }
        let eps = self.config.rms_norm_eps;
        let (_, normed) = add_norm(&x, delta.as_ref(), &self.norm, eps, self.fused)?;
        self.logits(&normed)
    }

    /// [`Decoder::hidden`] for evaluation while trainable tensors take part: candle keeps an op's
    /// inputs alive for a backward that will never come, so each layer's output is detached and
    /// at most one layer's activations exist at a time.
    pub fn hidden_no_grad(&self, batch: &Batch) -> CandleResult<Tensor> {
        let ctx = self.context(batch, None)?;
        let mut x = self.embedding.forward(&batch.ids)?.detach();
        for layer in &self.layers {
            x = layer.forward(&x, &ctx, None, self.fused)?.detach();
        }
        self.final_norm(&x)
    }

    fn final_norm(&self, x: &Tensor) -> CandleResult<Tensor> {
        rms_norm(x, &self.norm, self.config.rms_norm_eps, self.fused)
    }

    /// Logits `[.., vocab]` of hidden states `[.., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> CandleResult<Tensor> {
        self.lm_head.forward(hidden, &self.embedding)
    }

    /// Per-row next-token NLL `[N]` of `targets [N]` (u32) from final hidden states
    /// `[N, hidden]`: the head and the cross-entropy as one op ([`super::head_loss`]) that keeps no
    /// `[N, vocab]` tensor — what training computes at its learned positions.
    pub fn token_nll(&self, hidden: &Tensor, targets: &Tensor) -> CandleResult<Tensor> {
        self.lm_head.token_nll(hidden, targets, &self.embedding)
    }

    /// Per-row NLL `[N]` of the targets `shortlist[slots]` under a softmax over `shortlist` only
    /// ([`super::embedding::LmHead::shortlist_nll`]).
    pub fn shortlist_nll(
        &self,
        hidden: &Tensor,
        shortlist: &Tensor,
        slots: &Tensor,
    ) -> CandleResult<Tensor> {
        self.lm_head
            .shortlist_nll(hidden, shortlist, slots, &self.embedding)
    }

    /// Logits `[B, T, vocab]` of every position.
    pub fn forward(&self, batch: &Batch, cache: Option<&mut KvCache>) -> CandleResult<Tensor> {
        self.logits(&self.hidden(batch, cache)?)
    }

    /// A fresh cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Computes `loss(self, hidden)` over `batch` (`hidden` = the final hidden states) and the
    /// gradients of the trainable tensors `params` (`Var`s' tensors: LoRA matrices, token-row
    /// deltas, …). Returns the loss (detached) and a store holding exactly the gradients of those
    /// `params` the loss depends on.
    ///
    /// With `checkpoint`, layer activations are recomputed in the backward pass instead of kept
    /// (see the module docs); the gradients are the same. A `loss` that needs logits at a few
    /// positions only (completion tokens) should compute them there only: with a 151,936-token
    /// vocabulary the head and the loss are most of a small model's cost.
    pub fn loss_and_grads(
        &self,
        batch: &Batch,
        checkpoint: bool,
        params: &[&Tensor],
        loss: impl FnOnce(&Decoder, &Tensor) -> CandleResult<Tensor>,
    ) -> CandleResult<(Tensor, GradStore)> {
        // candle's backward also keeps gradients of frozen operands; only `params`' are wanted.
        let keep = |mut store: GradStore, into: &mut GradStore| -> CandleResult<()> {
            let mut kept = GradStore::default();
            for p in params {
                if let Some(g) = store.remove(p) {
                    kept.insert(p, g);
                }
            }
            into.extend(kept)
        };
        let mut grads = GradStore::default();
        if !checkpoint {
            let l = loss(self, &self.hidden(batch, None)?)?;
            keep(l.backward()?, &mut grads)?;
            return Ok((l.detach(), grads));
        }
        let ctx = self.context(batch, None)?;
        let embedded = self.embedding.forward(&batch.ids)?;
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = embedded.detach();
        for layer in &self.layers {
            let next = layer.forward(&x, &ctx, None, self.fused)?.detach();
            inputs.push(x);
            x = next;
        }
        let last = Var::from_tensor(&x)?;
        let l = loss(self, &self.final_norm(last.as_tensor())?)?;
        let mut head = l.backward()?;
        let value = l.detach();
        // The head's graph (logits: the largest activation of all) must not outlive its backward.
        drop(l);
        let mut upstream = head.remove(last.as_tensor());
        keep(head, &mut grads)?;
        for (layer, input) in self.layers.iter().zip(inputs).rev() {
            let Some(g) = upstream.take() else { break };
            let input = Var::from_tensor(&input)?;
            let out = layer.forward(input.as_tensor(), &ctx, None, self.fused)?;
            let mut layer_grads = (out * g)?.sum_all()?.backward()?;
            upstream = layer_grads.remove(input.as_tensor());
            keep(layer_grads, &mut grads)?;
        }
        if let Some(g) = upstream
            && embedded.track_op()
        {
            keep((embedded * g)?.sum_all()?.backward()?, &mut grads)?;
        }
        Ok((value, grads))
    }

    /// Every weight as Hugging Face names it, dense (quantized weights dequantized; adapters and
    /// trainable rows are not folded in).
    pub fn named_weights(&self) -> CandleResult<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embedding.weight().clone(),
        )];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}.");
            out.push((
                format!("{p}input_layernorm.weight"),
                layer.input_norm.clone(),
            ));
            out.push((
                format!("{p}post_attention_layernorm.weight"),
                layer.post_attention_norm.clone(),
            ));
            if let (Some(qn), Some(kn)) = (&layer.attention.q_norm, &layer.attention.k_norm) {
                out.push((format!("{p}self_attn.q_norm.weight"), qn.clone()));
                out.push((format!("{p}self_attn.k_norm.weight"), kn.clone()));
            }
            for proj in Proj::ALL {
                let lin = layer.linear(proj);
                let name = LinearId { layer: l, proj }.hf_name();
                out.push((format!("{name}.weight"), lin.weight().dense()?));
                if let Some(b) = lin.bias() {
                    out.push((format!("{name}.bias"), b.clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(w) = self.lm_head.weight() {
            out.push(("lm_head.weight".to_string(), w.clone()));
        }
        Ok(out)
    }

    /// Writes `config.json` and the weights (in `dtype`, sharded above `max_shard_bytes`) into
    /// `dir`, which must exist.
    pub fn save(&self, dir: &Path, dtype: DType, max_shard_bytes: u64) -> Result<(), ModelError> {
        let mut config = self.config.clone();
        config.dtype = Some(dtype);
        load::write_text(
            &dir.join(CONFIG_FILE),
            &serde_json::to_string_pretty(&config.to_hf_json()).expect("JSON"),
        )?;
        let weights = self.named_weights()?;
        let lazy = weights
            .iter()
            .map(|(n, t)| (n.clone(), load::lazy(t, dtype)))
            .collect();
        load::save_weights(dir, lazy, max_shard_bytes)?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use candle_core::D;

    use super::*;
    use crate::model::ops::masked_mean_nll;
    use crate::model::ops::tests::{check_grad, max_abs_diff};

    pub const ARCHS: [&str; 3] = ["qwen3", "qwen2", "llama"];

    /// `stages/fixtures/model/<arch>`: a tiny random model and transformers' logits for it.
    pub fn fixture(arch: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/model")
            .join(arch)
    }

    fn golden(arch: &str) -> HashMap<String, Tensor> {
        load::load_file(
            &fixture(arch).join("golden.safetensors"),
            None,
            &Device::Cpu,
        )
        .unwrap()
    }

    fn ids_u32(t: &Tensor) -> Tensor {
        t.to_dtype(DType::U32).unwrap()
    }

    /// The worst error of the model's logits against transformers' over both golden inputs
    /// (padded positions excluded: their outputs are meaningless in both).
    fn golden_error(model: &Decoder, g: &HashMap<String, Tensor>) -> f64 {
        let ids = ids_u32(&g["ids"]);
        let rows = ids.to_vec2::<u32>().unwrap();
        let logits = model
            .forward(&Batch::dense(&rows, 0, &Device::Cpu).unwrap(), None)
            .unwrap();
        let single = max_abs_diff(&logits, &g["logits"]);
        let batch = Batch {
            ids: ids_u32(&g["batch_ids"]),
            positions: ids_u32(&g["batch_positions"]),
            valid: Some(g["batch_mask"].to_dtype(DType::U8).unwrap()),
        };
        let logits = model
            .forward(&batch, None)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let mask = g["batch_mask"]
            .to_dtype(DType::F32)
            .unwrap()
            .unsqueeze(D::Minus1)
            .unwrap();
        let diff = (logits - &g["batch_logits"])
            .unwrap()
            .broadcast_mul(&mask)
            .unwrap();
        let batched = max_abs_diff(&diff, &diff.zeros_like().unwrap());
        single.max(batched)
    }

    #[test]
    fn logits_match_transformers_for_every_arch() {
        for arch in ARCHS {
            let g = golden(arch);
            let mut model = Decoder::load(&fixture(arch), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(model.config().arch.model_type(), arch);
            for fused in [true, false] {
                model.set_fused(fused);
                let err = golden_error(&model, &g);
                println!("{arch} (fused kernels {fused}): max abs logit error {err:.2e}");
                assert!(err < 1e-4, "{arch} fused={fused}: max abs error {err}");
            }
        }
    }

    #[test]
    fn padded_rows_give_the_logits_of_the_rows_alone() {
        let model = Decoder::load(&fixture("qwen3"), DType::F32, &Device::Cpu).unwrap();
        let rows = vec![vec![5u32, 9, 11, 2, 7], vec![3, 1], vec![100, 4, 6]];
        for left in [true, false] {
            let batch = Batch::padded(&rows, 0, left, &Device::Cpu).unwrap();
            let logits = model.forward(&batch, None).unwrap();
            let width = logits.dim(1).unwrap();
            for (i, row) in rows.iter().enumerate() {
                let alone = model
                    .forward(
                        &Batch::dense(std::slice::from_ref(row), 0, &Device::Cpu).unwrap(),
                        None,
                    )
                    .unwrap();
                let start = if left { width - row.len() } else { 0 };
                let part = logits.get(i).unwrap().narrow(0, start, row.len()).unwrap();
                let err = max_abs_diff(&part, &alone.get(0).unwrap());
                assert!(err < 1e-5, "row {i} left={left}: {err}");
            }
        }
    }

    #[test]
    fn sharded_and_half_precision_checkpoints_load() {
        let model = Decoder::load(&fixture("qwen2"), DType::F32, &Device::Cpu).unwrap();
        let g = golden("qwen2");
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path(), DType::F32, 30_000).unwrap();
        assert!(dir.path().join(load::INDEX_FILE).is_file());
        let sharded = Decoder::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(golden_error(&sharded, &g), golden_error(&model, &g));

        for dtype in [DType::BF16, DType::F16] {
            let dir = tempfile::tempdir().unwrap();
            model.save(dir.path(), dtype, u64::MAX).unwrap();
            let config = ModelConfig::from_file(&dir.path().join(CONFIG_FILE)).unwrap();
            assert_eq!(config.dtype, Some(dtype));
            let half = Decoder::load(dir.path(), dtype, &Device::Cpu).unwrap();
            let upcast = Decoder::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
            for ((name, w), (_, h)) in model
                .named_weights()
                .unwrap()
                .iter()
                .zip(upcast.named_weights().unwrap().iter())
            {
                // The saved weights are the model's, rounded to the half dtype.
                let rounded = w.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
                assert_eq!(max_abs_diff(&rounded, h), 0.0, "{name}");
            }
            // A half-precision forward stays near the f32 one (logits of magnitude ~4).
            let err = golden_error(&half, &g);
            assert!(err < 0.1, "{dtype:?}: {err}");
        }
    }

    #[test]
    fn unexpected_or_missing_tensors_are_named() {
        let dir = fixture("llama");
        let config = ModelConfig::from_file(&dir.join(CONFIG_FILE)).unwrap();
        let weights = load::load_dir(&dir, Some(DType::F32), &Device::Cpu).unwrap();
        let mut extra = weights.clone();
        extra.insert(
            "model.layers.9.mlp.up_proj.weight".into(),
            weights["model.norm.weight"].clone(),
        );
        let err = Decoder::from_weights(config.clone(), &mut extra, DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.layers.9.mlp.up_proj.weight"), "{err}");
        let mut missing = weights;
        missing.remove("model.layers.1.self_attn.o_proj.weight");
        let err = Decoder::from_weights(config, &mut missing, DType::F32, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers.1.self_attn.o_proj.weight") && err.contains("missing"),
            "{err}"
        );
    }

    /// A right-padded training batch and its next-token loss (mean over real targets).
    fn training_batch() -> (Batch, Tensor, Tensor) {
        let rows = vec![vec![5u32, 9, 11, 2, 7, 64, 3], vec![3, 1, 127, 8]];
        let batch = Batch::padded(&rows, 0, false, &Device::Cpu).unwrap();
        let t = batch.ids.dim(1).unwrap();
        let targets = batch
            .ids
            .narrow(1, 1, t - 1)
            .unwrap()
            .flatten_all()
            .unwrap();
        let weights = batch
            .valid
            .as_ref()
            .unwrap()
            .narrow(1, 1, t - 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        (batch, targets, weights)
    }

    fn next_token_loss(
        model: &Decoder,
        hidden: &Tensor,
        targets: &Tensor,
        weights: &Tensor,
    ) -> CandleResult<Tensor> {
        let t = hidden.dim(1)?;
        let logits = model.logits(&hidden.narrow(1, 0, t - 1)?)?;
        let v = logits.dim(D::Minus1)?;
        masked_mean_nll(&logits.reshape(((), v))?, targets, weights)
    }

    /// The fixture model in f64 with every parameter a `Var`.
    fn trainable(arch: &str) -> (Decoder, Vec<(String, Var)>) {
        let dir = fixture(arch);
        let config = ModelConfig::from_file(&dir.join(CONFIG_FILE)).unwrap();
        let weights = load::load_dir(&dir, Some(DType::F64), &Device::Cpu).unwrap();
        let mut vars: Vec<(String, Var)> = weights
            .iter()
            .map(|(n, t)| (n.clone(), Var::from_tensor(t).unwrap()))
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut map: HashMap<String, Tensor> = vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        let model = Decoder::from_weights(config, &mut map, DType::F64, &Device::Cpu).unwrap();
        (model, vars)
    }

    /// A few coordinates spread over a tensor of `n` elements.
    fn coords(n: usize) -> Vec<usize> {
        let mut c: Vec<usize> = [0, n / 3, n / 2 + 1, n - 1]
            .into_iter()
            .filter(|&i| i < n)
            .collect();
        c.dedup();
        c
    }

    /// The kind of a parameter by its name, with the layer number dropped.
    fn kind(name: &str) -> String {
        name.split('.')
            .filter(|p| p.parse::<usize>().is_err())
            .collect::<Vec<_>>()
            .join(".")
    }

    #[test]
    fn gradients_of_every_parameter_kind_match_finite_differences() {
        let (batch, targets, weights) = training_batch();
        let mut kinds = std::collections::BTreeMap::<String, f64>::new();
        for arch in ARCHS {
            let (model, vars) = trainable(arch);
            let params: Vec<&Tensor> = vars.iter().map(|(_, v)| v.as_tensor()).collect();
            let (_, grads) = model
                .loss_and_grads(&batch, false, &params, |m, h| {
                    next_token_loss(m, h, &targets, &weights)
                })
                .unwrap();
            assert_eq!(
                grads.get_ids().count(),
                params.len(),
                "{arch}: the params' gradients only"
            );
            let f = || {
                let h = model.hidden(&batch, None).unwrap();
                next_token_loss(&model, &h, &targets, &weights)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            for (name, var) in &vars {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{arch}: no gradient for {name}"));
                let worst = check_grad(var, g, &coords(var.elem_count()), 1e-5, 1e-4, &f);
                let e = kinds.entry(format!("{arch} {}", kind(name))).or_default();
                *e = e.max(worst);
            }
        }
        for (kind, worst) in &kinds {
            println!("{kind}: worst relative error {worst:.1e}");
        }
        // Every kind the issue names is covered: q/k norms (qwen3), biases (qwen2), untied head.
        for needed in [
            "qwen3 model.layers.self_attn.q_norm.weight",
            "qwen3 model.layers.self_attn.k_norm.weight",
            "qwen2 model.layers.self_attn.q_proj.bias",
            "qwen2 lm_head.weight",
            "llama model.layers.mlp.down_proj.weight",
            "llama model.embed_tokens.weight",
        ] {
            assert!(kinds.contains_key(needed), "{needed} not checked");
        }
        let worst = kinds.values().fold(0f64, |a, &b| a.max(b));
        assert!(worst < 1e-5, "worst relative error {worst}");
    }

    #[test]
    fn trainable_token_rows_get_finite_difference_gradients_from_both_ends() {
        let (batch, targets, weights) = training_batch();
        for arch in ["qwen3", "qwen2"] {
            let mut model = Decoder::load(&fixture(arch), DType::F64, &Device::Cpu).unwrap();
            // 9 and 127 are in the batch, 40 is not: its row still gets a gradient via the head.
            let rows = model.train_token_rows(&[9, 40, 127], DType::F64).unwrap();
            assert_eq!(rows.lm_head.is_some(), arch == "qwen2");
            // Start from non-zero deltas so the check is not at a special point.
            let start = Tensor::from_vec(
                (0..3 * 32)
                    .map(|i| ((i % 7) as f64 - 3.0) * 0.01)
                    .collect::<Vec<_>>(),
                (3, 32),
                &Device::Cpu,
            )
            .unwrap();
            let mut deltas = vec![rows.embedding.delta().clone()];
            deltas.extend(rows.lm_head.iter().map(|r| r.delta().clone()));
            for d in &deltas {
                d.set(&start).unwrap();
            }
            let params: Vec<&Tensor> = deltas.iter().map(|d| d.as_tensor()).collect();
            let (_, grads) = model
                .loss_and_grads(&batch, false, &params, |m, h| {
                    next_token_loss(m, h, &targets, &weights)
                })
                .unwrap();
            let f = || {
                let h = model.hidden(&batch, None).unwrap();
                next_token_loss(&model, &h, &targets, &weights)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            for (i, d) in deltas.iter().enumerate() {
                let g = grads.get(d.as_tensor()).expect("a gradient for the delta");
                let all: Vec<usize> = (0..96).collect();
                let worst = check_grad(d, g, &all, 1e-5, 1e-4, &f);
                println!("{arch} token rows ({i}): worst relative error {worst:.1e}");
                assert!(worst < 1e-5, "{arch}: {worst}");
                // The absent token's row learns through the head only: in the shared delta when
                // tied, in the head's own delta (the second) when not.
                let row40 = g
                    .get(1)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                let through_head = arch == "qwen3" || i == 1;
                assert_eq!(row40 > 0.0, through_head, "{arch} delta {i}: {row40}");
            }
            // No other parameter is trained: the frozen weights have no gradient.
            assert_eq!(grads.get_ids().count(), params.len());
        }
    }

    #[test]
    fn checkpointing_gives_the_same_loss_and_gradients() {
        let (batch, targets, weights) = training_batch();
        for arch in ARCHS {
            let (mut model, vars) = trainable(arch);
            let rows = model.train_token_rows(&[9, 127], DType::F64).unwrap();
            let loss = |m: &Decoder, h: &Tensor| next_token_loss(m, h, &targets, &weights);
            let mut all: Vec<(String, Tensor)> = vars
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                .collect();
            all.push(("rows".into(), rows.embedding.delta().as_tensor().clone()));
            let params: Vec<&Tensor> = all.iter().map(|(_, t)| t).collect();
            let (l1, g1) = model.loss_and_grads(&batch, false, &params, loss).unwrap();
            let (l2, g2) = model.loss_and_grads(&batch, true, &params, loss).unwrap();
            assert_eq!(
                l1.to_scalar::<f64>().unwrap(),
                l2.to_scalar::<f64>().unwrap()
            );
            assert_eq!(g2.get_ids().count(), params.len());
            for (name, t) in all {
                let (a, b) = (g1.get(&t).unwrap(), g2.get(&t).unwrap());
                let err = max_abs_diff(a, b);
                assert!(err < 1e-12, "{arch} {name}: {err}");
            }
        }
    }

    #[test]
    fn gradient_steps_lower_the_loss() {
        let (batch, targets, weights) = training_batch();
        let (model, vars) = trainable("qwen3");
        let loss = |m: &Decoder, h: &Tensor| next_token_loss(m, h, &targets, &weights);
        let params: Vec<&Tensor> = vars.iter().map(|(_, v)| v.as_tensor()).collect();
        let (first, _) = model.loss_and_grads(&batch, true, &params, loss).unwrap();
        for _ in 0..10 {
            let (_, grads) = model.loss_and_grads(&batch, true, &params, loss).unwrap();
            for (_, v) in &vars {
                let g = grads.get(v.as_tensor()).unwrap();
                v.set(&(v.as_tensor() - (g * 0.5).unwrap()).unwrap())
                    .unwrap();
            }
        }
        let (last, _) = model.loss_and_grads(&batch, true, &params, loss).unwrap();
        let (first, last) = (
            first.to_scalar::<f64>().unwrap(),
            last.to_scalar::<f64>().unwrap(),
        );
        assert!(last < 0.5 * first, "loss {first} -> {last}");
    }

    /// On the GPU machine (`--features cuda`): the same logits, greedy tokens and LoRA/token-row
    /// gradients as on the CPU; bf16 logits within bf16's precision.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_agrees_with_cpu() {
        use crate::model::generate::{GenerateOptions, generate};
        use crate::model::linear::Proj;
        use crate::model::lora::{LoraConfig, LoraSet};

        let cpu = Device::Cpu;
        let gpu = Device::new_cuda(0).expect("a CUDA device: this test runs on the GPU machine");
        let rows = vec![vec![5u32, 9, 11, 2, 7, 40, 3], vec![3, 1], vec![100, 4, 6]];
        let masked = |logits: &Tensor, batch: &Batch| {
            let mask = batch.valid.as_ref().unwrap().to_dtype(DType::F32).unwrap();
            let logits = logits
                .to_device(&cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            logits
                .broadcast_mul(&mask.to_device(&cpu).unwrap().unsqueeze(D::Minus1).unwrap())
                .unwrap()
        };
        let options = GenerateOptions {
            max_new_tokens: 24,
            ..GenerateOptions::default()
        };
        let lora = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: Proj::ALL.to_vec(),
        };
        let (train, targets, weights) = training_batch();
        for arch in ARCHS {
            let reference = Decoder::load(&fixture(arch), DType::F32, &cpu).unwrap();
            let batch = Batch::padded(&rows, 0, true, &cpu).unwrap();
            let want = masked(&reference.forward(&batch, None).unwrap(), &batch);
            let scale = max_abs_diff(&want, &want.zeros_like().unwrap());
            let want_tokens = generate(&reference, &rows, &options, &mut |_, _| {}).unwrap();
            for (dtype, tolerance) in [(DType::F32, 1e-4), (DType::BF16, 3e-2 * scale)] {
                let model = Decoder::load(&fixture(arch), dtype, &gpu).unwrap();
                let batch = Batch::padded(&rows, 0, true, &gpu).unwrap();
                let got = masked(&model.forward(&batch, None).unwrap(), &batch);
                let err = max_abs_diff(&got, &want);
                println!(
                    "{arch} {dtype:?} on CUDA: max abs logit error {err:.2e} (logits up to {scale:.2})"
                );
                assert!(err < tolerance, "{arch} {dtype:?}: {err}");
                let tokens = generate(&model, &rows, &options, &mut |_, _| {}).unwrap();
                let same = tokens
                    .iter()
                    .zip(&want_tokens)
                    .map(|(a, b)| {
                        a.tokens
                            .iter()
                            .zip(&b.tokens)
                            .take_while(|(x, y)| x == y)
                            .count()
                    })
                    .sum::<usize>();
                println!(
                    "{arch} {dtype:?}: {same} of {} greedy tokens as on the CPU",
                    3 * 24
                );
                if dtype == DType::F32 {
                    assert_eq!(tokens, want_tokens, "{arch}: greedy tokens");
                }
            }

            // Gradients of LoRA pairs (B set non-zero) and token rows, checkpointed on the GPU.
            let grads = |device: &Device, checkpoint: bool| {
                let mut model = Decoder::load(&fixture(arch), DType::F32, device).unwrap();
                let set = LoraSet::install(&mut model, &lora, 3).unwrap();
                for (i, l) in set.layers.values().enumerate() {
                    let n = l.b().as_tensor().elem_count();
                    let b = Tensor::arange(0f32, n as f32, &cpu)
                        .unwrap()
                        .affine(0.01, i as f64 * 0.001)
                        .unwrap()
                        .reshape(l.b().as_tensor().shape())
                        .unwrap();
                    l.b().set(&b.to_device(device).unwrap()).unwrap();
                }
                let rows = model.train_token_rows(&[9, 127], DType::F32).unwrap();
                let mut params: Vec<&Tensor> = set.vars().into_iter().map(Var::as_tensor).collect();
                params.push(rows.embedding.delta().as_tensor());
                let batch = Batch {
                    ids: train.ids.to_device(device).unwrap(),
                    positions: train.positions.to_device(device).unwrap(),
                    valid: train.valid.as_ref().map(|v| v.to_device(device).unwrap()),
                };
                let (t, w) = (
                    targets.to_device(device).unwrap(),
                    weights
                        .to_dtype(DType::F32)
                        .unwrap()
                        .to_device(device)
                        .unwrap(),
                );
                let (_, g) = model
                    .loss_and_grads(&batch, checkpoint, &params, |m, h| {
                        next_token_loss(m, h, &t, &w)
                    })
                    .unwrap();
                params
                    .iter()
                    .map(|p| g.get(p).unwrap().to_device(&cpu).unwrap())
                    .collect::<Vec<_>>()
            };
            let want = grads(&cpu, false);
            let got = grads(&gpu, true);
            let worst = want
                .iter()
                .zip(&got)
                .map(|(w, g)| {
                    max_abs_diff(w, g) / max_abs_diff(w, &w.zeros_like().unwrap()).max(1e-12)
                })
                .fold(0.0, f64::max);
            println!(
                "{arch}: LoRA and token-row gradients on CUDA, worst relative error {worst:.2e}"
            );
            assert!(worst < 1e-3, "{arch}: {worst}");
        }
    }
}
