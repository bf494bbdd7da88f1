//! Grouped-query self-attention, the masks that make padded batches exact, and the KV cache.
//!
//! Masks: a query at slot `i` (of this forward's `T`) sees key slot `j` (of the cache's `P` plus
//! these `T`) iff `j <= P + i` (causal, by slot: the cache holds the past in order) and key `j` is a
//! real token (not padding). Masked scores are set — not added — to the dtype's lowest finite
//! value, so a padding query that sees no key at all gets a uniform, finite softmax instead of
//! NaN, and real queries never notice padding: `exp(min - max)` is exactly 0.
//!
//! Grouped queries are computed without repeating keys and values: the queries of the `G` heads
//! sharing a KV head are stacked as `G·T` rows of one matmul per KV head.

use candle_core::{D, DType, Device, Result, Tensor};

use super::decode;
use super::linear::Linear;
use super::ops::{masked_softmax, rms_norm};
use super::rope;

/// Per-forward inputs shared by every layer: RoPE tables `[B, T, D/2]` and the mask
/// `[B, 1, T, P + T]` (u8, 1 = may attend; `None` when every query sees every key).
#[derive(Debug, Clone)]
pub struct AttentionContext {
    pub cos: Tensor,
    pub sin: Tensor,
    pub mask: Option<Tensor>,
}

/// The mask of the module docs: `past_valid [B, P]` and `valid [B, T]` (u8; `None` = all real).
pub fn attention_mask(
    batch: usize,
    past: usize,
    t: usize,
    past_valid: Option<&Tensor>,
    valid: Option<&Tensor>,
    device: &Device,
) -> Result<Tensor> {
    let s = past + t;
    let causal: Vec<u8> = (0..t)
        .flat_map(|i| (0..s).map(move |j| u8::from(j <= past + i)))
        .collect();
    let causal = Tensor::from_vec(causal, (1, t, s), device)?;
    let mask = match joined_valid(batch, past, past_valid, t, valid, device)? {
        None => causal.broadcast_as((batch, t, s))?.contiguous()?,
        Some(k) => causal.broadcast_mul(&k.unsqueeze(1)?)?,
    };
    mask.unsqueeze(1)
}

/// Which of `past` cached and `t` new slots are real tokens, `[B, past + t]` u8 (`None` = all).
/// A part with no slots is left out: CUDA cannot allocate an empty tensor.
fn joined_valid(
    batch: usize,
    past: usize,
    past_valid: Option<&Tensor>,
    t: usize,
    valid: Option<&Tensor>,
    device: &Device,
) -> Result<Option<Tensor>> {
    if past_valid.is_none() && valid.is_none() {
        return Ok(None);
    }
    let mut parts = Vec::with_capacity(2);
    for (n, part) in [(past, past_valid), (t, valid)] {
        match part {
            Some(part) => parts.push(part.clone()),
            None if n > 0 => parts.push(Tensor::ones((batch, n), DType::U8, device)?),
            None => {}
        }
    }
    Ok(Some(Tensor::cat(&parts, 1)?))
}

/// The keys and values a layer has seen, in buffers `[B, kv_heads, capacity, head_dim]` of which
/// the first `len` slots are filled. Appending writes the new slots in place and doubles the
/// capacity when full, so a decoding step copies one slot, not the whole past.
#[derive(Debug, Clone)]
pub struct KvBuffers {
    k: Tensor,
    v: Tensor,
    len: usize,
}

/// A layer's cache; `None` before the first forward.
pub type LayerCache = Option<KvBuffers>;

/// Where a forward's keys and values go.
#[derive(Debug)]
pub enum CacheWrite<'a> {
    /// Appended to the layer's cache, which grows as needed; attention sees the filled slots.
    Append(&'a mut LayerCache),
    /// Written in place into buffers that keep their address (a captured CUDA graph's, see
    /// [`super::graph`]) at the slot `index` holds: u32 `[B, kv_heads, T, head_dim]`, every
    /// element the slot number. Attention runs over every slot of the buffers; the context's mask
    /// hides those not written yet.
    At {
        buffers: &'a KvBuffers,
        index: &'a Tensor,
    },
}

impl KvBuffers {
    /// Appends `k`, `v` `[B, kv_heads, T, head_dim]` to `slot` and returns every cached key and
    /// value (views of the buffers, `[B, kv_heads, len, head_dim]`).
    fn append(slot: &mut LayerCache, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let t = k.dim(2)?;
        let buffers = match slot.take() {
            Some(b) if b.len + t <= b.k.dim(2)? => b,
            Some(b) => {
                let capacity = (b.len + t).max(2 * b.k.dim(2)?);
                b.grown(capacity)?
            }
            None => {
                let (bsz, heads, _, d) = k.dims4()?;
                let cap = t.next_power_of_two().max(64);
                KvBuffers {
                    k: Tensor::zeros((bsz, heads, cap, d), k.dtype(), k.device())?,
                    v: Tensor::zeros((bsz, heads, cap, d), v.dtype(), v.device())?,
                    len: 0,
                }
            }
        };
        buffers.k.slice_set(&k.contiguous()?, 2, buffers.len)?;
        buffers.v.slice_set(&v.contiguous()?, 2, buffers.len)?;
        let len = buffers.len + t;
        let views = (buffers.k.narrow(2, 0, len)?, buffers.v.narrow(2, 0, len)?);
        *slot = Some(KvBuffers { len, ..buffers });
        Ok(views)
    }

    /// Writes `k`, `v` `[B, kv_heads, T, head_dim]` at the slots of `index` (see
    /// [`CacheWrite::At`]) and returns the whole buffers.
    fn write_at(&self, k: &Tensor, v: &Tensor, index: &Tensor) -> Result<(Tensor, Tensor)> {
        self.k.scatter_set(index, &k.contiguous()?, 2)?;
        self.v.scatter_set(index, &v.contiguous()?, 2)?;
        Ok((self.k.clone(), self.v.clone()))
    }

    /// Batch rows.
    pub(crate) fn rows(&self) -> usize {
        self.k.dims()[0]
    }

    /// Slots the buffers hold, filled or not.
    fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    /// The same contents in buffers of `capacity` slots.
    fn grown(self, capacity: usize) -> Result<KvBuffers> {
        let grow = |b: &Tensor| -> Result<Tensor> {
            let (bsz, heads, _, d) = b.dims4()?;
            let new = Tensor::zeros((bsz, heads, capacity, d), b.dtype(), b.device())?;
            new.slice_set(&b.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
            Ok(new)
        };
        Ok(KvBuffers {
            k: grow(&self.k)?,
            v: grow(&self.v)?,
            len: self.len,
        })
    }
}

/// Every layer's keys and values plus which past slots are real tokens, for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    /// `[B, len]` u8; `None` while every cached token is real.
    pub(crate) valid: Option<Tensor>,
    pub(crate) len: usize,
}

impl KvCache {
    pub fn new(num_layers: usize) -> KvCache {
        KvCache {
            layers: vec![None; num_layers],
            valid: None,
            len: 0,
        }
    }

    /// Slots cached (padding included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records that `t` more slots were cached, with their validity (`None` = all real).
    pub(crate) fn advance(
        &mut self,
        batch: usize,
        t: usize,
        valid: Option<&Tensor>,
        device: &Device,
    ) -> Result<()> {
        self.valid = joined_valid(batch, self.len, self.valid.as_ref(), t, valid, device)?;
        self.len += t;
        Ok(())
    }

    /// Makes every layer's buffers hold `capacity` slots or more, so that slots up to there are
    /// written in place, at addresses that stay fixed. Returns the capacity they have now (the
    /// largest of the layers').
    pub(crate) fn reserve(&mut self, capacity: usize) -> Result<usize> {
        let mut reserved = capacity;
        for slot in &mut self.layers {
            if let Some(b) = slot.take() {
                let b = if b.capacity() < capacity {
                    b.grown(capacity)?
                } else {
                    b
                };
                reserved = reserved.max(b.capacity());
                *slot = Some(b);
            }
        }
        Ok(reserved)
    }

    /// Records that `t` more real slots were written in place ([`CacheWrite::At`]).
    pub(crate) fn advance_in_place(&mut self, t: usize) {
        for b in self.layers.iter_mut().flatten() {
            b.len += t;
        }
        self.len += t;
    }

    /// Keeps only the batch rows `rows` (in that order): finished sequences leave the batch.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        let Some(device) = self
            .layers
            .iter()
            .flatten()
            .map(|b| b.k.device().clone())
            .next()
        else {
            return Ok(());
        };
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            &device,
        )?;
        for b in self.layers.iter_mut().flatten() {
            b.k = b.k.index_select(&idx, 0)?;
            b.v = b.v.index_select(&idx, 0)?;
        }
        if let Some(valid) = &mut self.valid {
            *valid = valid.index_select(&idx, 0)?;
        }
        Ok(())
    }
}

/// One layer's self-attention.
#[derive(Debug, Clone)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// Qwen3's per-head RMSNorm weights `[head_dim]` of queries and keys.
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
}

impl Attention {
    /// `x [B, T, hidden]` → `[B, T, hidden]`; with `cache`, keys and values are cached there.
    pub fn forward(
        &self,
        x: &Tensor,
        ctx: &AttentionContext,
        cache: Option<CacheWrite<'_>>,
        fused: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let (q, k, v) = self.project_qkv(x)?;
        let scale = 1.0 / (d as f64).sqrt();
        // One row written in place: norms, rotations and cache writes in one kernel.
        if let Some(CacheWrite::At { buffers, index }) = &cache {
            let norms = match (&self.q_norm, &self.k_norm) {
                (Some(qw), Some(kw)) => Some(Some((qw, kw))),
                (None, None) => Some(None),
                _ => None,
            };
            if let Some(norms) = norms {
                let step = decode::QkvStep {
                    q: &q,
                    k: &k,
                    v: &v,
                    norms,
                    eps: self.rms_norm_eps,
                    cos: &ctx.cos,
                    sin: &ctx.sin,
                    index,
                    k_cache: &buffers.k,
                    v_cache: &buffers.v,
                };
                if b == 1 && t == 1 && step.applies() {
                    let q = decode::qkv_norm_rope_write(&step)?;
                    let (k, v) = (&buffers.k, &buffers.v);
                    let out = if decode::attention_applies(&q, k, v, index) {
                        decode::attention(&q, k, v, index, scale)?.reshape((b, t, h * d))?
                    } else {
                        attend(&q, k, v, ctx.mask.as_ref(), scale, fused)?
                    };
                    return self.o.forward(&out);
                }
            }
        }
        let q = q.reshape((b, t, h, d))?;
        let k = k.reshape((b, t, kvh, d))?;
        let v = v.reshape((b, t, kvh, d))?;
        let q = match &self.q_norm {
            Some(w) => rms_norm(&q, w, self.rms_norm_eps, fused)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(w) => rms_norm(&k, w, self.rms_norm_eps, fused)?,
            None => k,
        };
        let q = q.transpose(1, 2)?.contiguous()?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let q = rope::apply(&q, &ctx.cos, &ctx.sin, fused)?;
        let k = rope::apply(&k, &ctx.cos, &ctx.sin, fused)?;
        let (k, v) = match cache {
            Some(CacheWrite::Append(slot)) => KvBuffers::append(slot, &k, &v)?,
            Some(CacheWrite::At { buffers, index }) => {
                let (k, v) = buffers.write_at(&k, &v, index)?;
                // One row over the whole buffers: one kernel, masked by the slot `index` holds
                // (the context's mask says the same).
                let q = q.contiguous()?;
                if decode::attention_applies(&q, &k, &v, index) {
                    let out = decode::attention(&q, &k, &v, index, scale)?;
                    return self.o.forward(&out.reshape((b, t, h * d))?);
                }
                (k, v)
            }
            None => (k, v),
        };
        self.o
            .forward(&attend(&q, &k, &v, ctx.mask.as_ref(), scale, fused)?)
    }

    /// `x`'s queries, keys and values: one kernel for the three when decoding one row with plain
    /// dense weights ([`super::decode`]).
    fn project_qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        if let (Some(q), Some(k), Some(v)) = (
            self.q.plain_dense(),
            self.k.plain_dense(),
            self.v.plain_dense(),
        ) && [q, k, v].iter().all(|w| decode::applies(x, w))
        {
            let qkv = decode::project_stacked(x, &[q, k, v])?;
            let (nq, nk) = (q.dim(0)?, k.dim(0)?);
            return Ok((
                qkv.narrow(D::Minus1, 0, nq)?,
                qkv.narrow(D::Minus1, nq, nk)?,
                qkv.narrow(D::Minus1, nq + nk, v.dim(0)?)?,
            ));
        }
        Ok((self.q.forward(x)?, self.k.forward(x)?, self.v.forward(x)?))
    }
}

/// Grouped-query attention of `q [B, heads, T, d]` over `k`, `v` `[B, kv_heads, S, d]` with
/// `mask` (broadcast to `[B, heads, T, S]`) and `scale` → `[B, T, heads · d]`.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    fused: bool,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let (kvh, s) = (k.dim(1)?, k.dim(2)?);
    let groups = h / kvh;
    let q = q.reshape((b, kvh, groups * t, d))?;
    let scores = q.matmul(&k.t()?)?.reshape((b, h, t, s))?;
    let probs = masked_softmax(&scores, mask, scale, fused)?;
    probs
        .reshape((b, kvh, groups * t, s))?
        .matmul(v)?
        .reshape((b, h, t, d))?
        .transpose(1, 2)?
        .reshape((b, t, h * d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_by_slot_and_hides_padding() {
        let dev = Device::Cpu;
        // Row 0: one padding slot then two real tokens; row 1: all real. Two cached slots.
        let past_valid = Tensor::new(&[[0u8, 1], [1, 1]], &dev).unwrap();
        let m = attention_mask(2, 2, 1, Some(&past_valid), None, &dev).unwrap();
        assert_eq!(m.dims(), [2, 1, 1, 3]);
        let m = m.squeeze(1).unwrap().to_vec3::<u8>().unwrap();
        assert_eq!(m, [[[0, 1, 1]], [[1, 1, 1]]]);
        let valid = Tensor::new(&[[0u8, 1, 1]], &dev).unwrap();
        let m = attention_mask(1, 0, 3, None, Some(&valid), &dev).unwrap();
        let m = m.squeeze(1).unwrap().to_vec3::<u8>().unwrap();
        assert_eq!(m, [[[0, 0, 0], [0, 1, 0], [0, 1, 1]]]);
    }

    #[test]
    fn cache_tracks_validity_and_drops_rows() {
        let dev = Device::Cpu;
        let mut cache = KvCache::new(1);
        let k = Tensor::arange(0f32, 8., &dev)
            .unwrap()
            .reshape((2, 1, 2, 2))
            .unwrap();
        KvBuffers::append(&mut cache.layers[0], &k, &k).unwrap();
        let valid = Tensor::new(&[[0u8, 1], [1, 1]], &dev).unwrap();
        cache.advance(2, 2, Some(&valid), &dev).unwrap();
        cache.advance(2, 1, None, &dev).unwrap();
        assert_eq!(cache.len(), 3);
        assert_eq!(
            cache.valid.as_ref().unwrap().to_vec2::<u8>().unwrap(),
            [[0, 1, 1], [1, 1, 1]]
        );
        cache.select_rows(&[1]).unwrap();
        let b = cache.layers[0].as_ref().unwrap();
        assert_eq!(
            b.k.narrow(2, 0, b.len)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            [4., 5., 6., 7.]
        );
        assert_eq!(
            cache.valid.as_ref().unwrap().to_vec2::<u8>().unwrap(),
            [[1, 1, 1]]
        );
    }

    #[test]
    fn buffers_grow_past_their_capacity_and_keep_every_slot() {
        let dev = Device::Cpu;
        let mut slot: LayerCache = None;
        let mut want: Option<Tensor> = None;
        let mut total = 0;
        for (i, t) in [50usize, 10, 1, 30, 1, 100].into_iter().enumerate() {
            let k = Tensor::arange(0f32, (2 * 3 * t * 4) as f32, &dev)
                .unwrap()
                .affine(1.0, i as f64 * 1000.0)
                .unwrap()
                .reshape((2, 3, t, 4))
                .unwrap();
            let (got_k, got_v) = KvBuffers::append(&mut slot, &k, &(&k * 2.0).unwrap()).unwrap();
            want = Some(match want {
                None => k,
                Some(w) => Tensor::cat(&[&w, &k], 2).unwrap(),
            });
            total += t;
            let w = want.as_ref().unwrap();
            assert_eq!(got_k.dims(), [2, 3, total, 4]);
            let diff = (got_k - w).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
            let diff = (got_v - (w * 2.0).unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        }
        assert!(slot.unwrap().k.dim(2).unwrap() >= 192);
    }
}
