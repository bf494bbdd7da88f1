//! The token embedding and the output head, with selected token rows trainable.
//!
//! Why rows: a base model that never saw the tool-call tokens has their rows of the (tied)
//! embedding/lm_head at initialization, and LoRA on the linear layers alone cannot raise their
//! logits (DESIGN.md). Training the whole `[vocab, hidden]` matrix would cost an optimizer state of
//! the vocabulary's size for a handful of tokens. [`TokenRows`] instead keeps the matrix frozen and
//! adds a small trainable delta `[k, hidden]` (a `Var`, zero at the start) to rows `ids`:
//! `W' = W + scatter(ids, delta)`, computed without ever materializing `W'` — the embedding adds
//! `delta[slot(id)]` to the looked-up rows, the head adds `h·deltaᵀ` to the logits of `ids`.
//! With tied embeddings one `TokenRows` serves both ends, so both gradients reach one delta.

use std::sync::Arc;

use candle_core::{D, DType, Device, Result, Tensor, Var};

use super::linear::{matmul_t, project};

/// A trainable delta on rows `ids` of a frozen `[vocab, hidden]` matrix.
#[derive(Debug)]
pub struct TokenRows {
    ids: Vec<u32>,
    ids_tensor: Tensor,
    delta: Var,
    /// `[vocab]`: 0 for a frozen row, `i + 1` for the row of `ids[i]`.
    slots: Tensor,
}

impl TokenRows {
    /// Zero deltas for `ids` (distinct, each below `vocab`), stored in `dtype`.
    pub fn new(
        ids: &[u32],
        vocab: usize,
        hidden: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<TokenRows> {
        let mut slots = vec![0u32; vocab];
        for (i, &id) in ids.iter().enumerate() {
            let Some(slot) = slots.get_mut(id as usize) else {
                candle_core::bail!("token id {id} is outside the vocabulary of {vocab}");
            };
            if *slot != 0 {
                candle_core::bail!("token id {id} is listed twice");
            }
            *slot = i as u32 + 1;
        }
        Ok(TokenRows {
            ids: ids.to_vec(),
            ids_tensor: Tensor::new(ids, device)?,
            delta: Var::zeros((ids.len(), hidden), dtype, device)?,
            slots: Tensor::from_vec(slots, vocab, device)?,
        })
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// `ids` as a u32 tensor on the delta's device.
    pub(crate) fn ids_tensor(&self) -> &Tensor {
        &self.ids_tensor
    }

    /// The trainable `[k, hidden]` delta, row `i` for token `ids[i]`.
    pub fn delta(&self) -> &Var {
        &self.delta
    }

    /// `base[ids] + delta`: the rows as trained (what PEFT's trainable-tokens layer stores).
    pub fn merged_rows(&self, base: &Tensor) -> Result<Tensor> {
        let rows = base.index_select(&self.ids_tensor, 0)?;
        rows.to_dtype(self.delta.dtype())? + self.delta.as_tensor()
    }

    /// The deltas of the tokens `ids` (flat `[N]`), zero for frozen rows: `[N, hidden]`.
    fn lookup(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        let slot = self.slots.index_select(ids, 0)?;
        let hidden = self.delta.dim(1)?;
        let zero = Tensor::zeros((1, hidden), dtype, ids.device())?;
        let table = Tensor::cat(&[&zero, &self.delta.as_tensor().to_dtype(dtype)?], 0)?;
        table.index_select(&slot, 0)
    }

    /// `logits [.., vocab] + h·deltaᵀ` on the columns `ids`.
    fn add_logits(&self, h: &Tensor, logits: &Tensor) -> Result<Tensor> {
        let extra = matmul_t(h, &self.delta.as_tensor().to_dtype(h.dtype())?)?;
        logits.index_add(
            &self.ids_tensor,
            &extra.to_dtype(logits.dtype())?,
            D::Minus1,
        )
    }
}

/// The token embedding `[vocab, hidden]`.
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Tensor,
    rows: Option<Arc<TokenRows>>,
}

impl Embedding {
    pub fn new(weight: Tensor) -> Embedding {
        Embedding { weight, rows: None }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn rows(&self) -> Option<&Arc<TokenRows>> {
        self.rows.as_ref()
    }

    pub fn set_rows(&mut self, rows: Option<Arc<TokenRows>>) {
        self.rows = rows;
    }

    /// `ids [B, T]` (u32) → `[B, T, hidden]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        let mut x = self.weight.index_select(&flat, 0)?;
        if let Some(rows) = &self.rows {
            x = (x + rows.lookup(&flat, self.weight.dtype())?)?;
        }
        x.reshape((b, t, ()))
    }
}

/// The output projection: the embedding's own matrix (tied) or a separate `[vocab, hidden]` one.
#[derive(Debug, Clone)]
pub struct LmHead {
    /// `None`: tied to the embedding.
    weight: Option<Tensor>,
    rows: Option<Arc<TokenRows>>,
}

impl LmHead {
    pub fn tied() -> LmHead {
        LmHead {
            weight: None,
            rows: None,
        }
    }

    pub fn untied(weight: Tensor) -> LmHead {
        LmHead {
            weight: Some(weight),
            rows: None,
        }
    }

    /// The separate head matrix (`None` when tied).
    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    pub fn rows(&self) -> Option<&Arc<TokenRows>> {
        self.rows.as_ref()
    }

    pub fn set_rows(&mut self, rows: Option<Arc<TokenRows>>) {
        self.rows = rows;
    }

    /// Per-row NLL `[N]` of `targets [N]` from hidden states `h [N, hidden]`: the head and the loss
    /// as one op ([`super::head_loss`]).
    pub fn token_nll(&self, h: &Tensor, targets: &Tensor, embedding: &Embedding) -> Result<Tensor> {
        let w = self.weight.as_ref().unwrap_or(&embedding.weight);
        super::head_loss::token_nll(h, w, self.rows.as_ref(), targets)
    }

    /// Per-row NLL `[N]` (f32) under a softmax over the tokens `shortlist [S]` only (u32,
    /// distinct), of the targets whose indices into `shortlist` are `slots [N]`: a sampled
    /// softmax, `N·S` logits instead of `N·vocab`. Gradients reach `h` and the rows' delta.
    pub fn shortlist_nll(
        &self,
        h: &Tensor,
        shortlist: &Tensor,
        slots: &Tensor,
        embedding: &Embedding,
    ) -> Result<Tensor> {
        let w = self.weight.as_ref().unwrap_or(&embedding.weight);
        let mut rows = w.index_select(shortlist, 0)?;
        if let Some(r) = &self.rows {
            rows = (rows + r.lookup(shortlist, w.dtype())?)?;
        }
        let logits = matmul_t(h, &rows)?.to_dtype(DType::F32)?;
        let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        log_p.gather(&slots.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
    }

    /// `h [.., hidden]` → logits `[.., vocab]`.
    pub fn forward(&self, h: &Tensor, embedding: &Embedding) -> Result<Tensor> {
        let w = self.weight.as_ref().unwrap_or(&embedding.weight);
        let logits = project(h, w)?;
        match &self.rows {
            Some(rows) => rows.add_logits(h, &logits),
            None => Ok(logits),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_act_as_if_the_matrix_were_edited() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.], [2., -1.]], &dev).unwrap();
        let rows = Arc::new(TokenRows::new(&[3, 1], 4, 2, DType::F32, &dev).unwrap());
        let delta = Tensor::new(&[[0.5f32, 0.5], [-1., 2.]], &dev).unwrap();
        rows.delta().set(&delta).unwrap();
        let mut edited = w.to_vec2::<f32>().unwrap();
        edited[3] = vec![2.5, -0.5];
        edited[1] = vec![-1., 3.];
        let edited = Tensor::new(edited, &dev).unwrap();

        let mut emb = Embedding::new(w.clone());
        emb.set_rows(Some(rows.clone()));
        let ids = Tensor::new(&[[3u32, 0, 1, 1]], &dev).unwrap();
        let want = Embedding::new(edited.clone()).forward(&ids).unwrap();
        assert_eq!(
            emb.forward(&ids).unwrap().to_vec3::<f32>().unwrap(),
            want.to_vec3::<f32>().unwrap()
        );

        let mut head = LmHead::tied();
        head.set_rows(Some(rows.clone()));
        let h = Tensor::new(&[[[0.5f32, -2.0], [1.0, 1.0]]], &dev).unwrap();
        let want = LmHead::untied(edited.clone())
            .forward(&h, &emb)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(
            head.forward(&h, &emb).unwrap().to_vec3::<f32>().unwrap(),
            want
        );
        assert_eq!(
            rows.merged_rows(&w).unwrap().to_vec2::<f32>().unwrap(),
            [[2.5, -0.5], [-1., 3.]]
        );
    }

    #[test]
    fn the_shortlist_softmax_is_the_full_one_restricted_to_its_tokens() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.], [2., -1.]], &dev).unwrap();
        let rows = Arc::new(TokenRows::new(&[3], 4, 2, DType::F32, &dev).unwrap());
        rows.delta()
            .set(&Tensor::new(&[[0.5f32, 0.5]], &dev).unwrap())
            .unwrap();
        let emb = Embedding::new(w);
        let mut head = LmHead::tied();
        head.set_rows(Some(rows.clone()));
        let h = Tensor::new(&[[0.5f32, -2.0], [1.0, 1.0]], &dev).unwrap();
        let shortlist = Tensor::new(&[0u32, 3], &dev).unwrap();
        // Row 0 learns token 3 (slot 1), row 1 token 0 (slot 0).
        let slots = Tensor::new(&[1u32, 0], &dev).unwrap();
        let nll = head.shortlist_nll(&h, &shortlist, &slots, &emb).unwrap();
        let logits = head.forward(&h, &emb).unwrap().to_vec2::<f32>().unwrap();
        let want: Vec<f32> = [(0, 3), (1, 0)]
            .iter()
            .map(|&(r, t)| {
                let z = (logits[r][0].exp() + logits[r][3].exp()).ln();
                z - logits[r][t]
            })
            .collect();
        let got = nll.to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // Row 0's target is the trained token 3: its delta gets a gradient.
        let grads = nll.sum_all().unwrap().backward().unwrap();
        let g = grads.get(rows.delta().as_tensor()).unwrap();
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }

    #[test]
    fn only_listed_distinct_in_range_ids_are_accepted() {
        let dev = Device::Cpu;
        assert!(TokenRows::new(&[4], 4, 2, DType::F32, &dev).is_err());
        assert!(TokenRows::new(&[1, 1], 4, 2, DType::F32, &dev).is_err());
    }

    #[test]
    fn gradient_reaches_the_delta_from_both_ends() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &dev).unwrap();
        let rows = Arc::new(TokenRows::new(&[2], 3, 2, DType::F32, &dev).unwrap());
        let mut emb = Embedding::new(w);
        emb.set_rows(Some(rows.clone()));
        let mut head = LmHead::tied();
        head.set_rows(Some(rows.clone()));
        let ids = Tensor::new(&[[2u32]], &dev).unwrap();
        let x = emb.forward(&ids).unwrap();
        let logits = head.forward(&x, &emb).unwrap();
        // logit of token 2 = |w2 + d|²: gradient 2·(w2 + d) = (2, 2) at d = 0.
        let loss = logits.narrow(2, 2, 1).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(rows.delta().as_tensor()).unwrap();
        assert_eq!(g.to_vec2::<f32>().unwrap(), [[2., 2.]]);
    }
}
