//! Training rows in a seeded order, cut into right-padded micro-batches whose loss positions are
//! known before the forward pass.
//!
//! The order is a pure function of (seed, epoch) — one shuffle per epoch — and optimizer step `s`
//! takes the next `grad_accum × micro_batch_size` rows of that endless stream, so the rows of any
//! step follow from (seed, step) alone: a run resumed at step `s` trains on exactly the rows an
//! uninterrupted run would have. No bucketing by length: rows are short next to the vocabulary's
//! cost, and a plain shuffle keeps steps independent of one another.
//!
//! A row of `L` tokens feeds its first `L − 1` (the last predicts nothing) and learns token `t + 1`
//! at position `t` wherever format's mask marks `t + 1` as learned. Only those positions reach the
//! head: with a 151,936-token vocabulary, logits everywhere would dominate the cost.

use std::collections::BTreeSet;

use candle_core::{Device, Result, Tensor};

use crate::data::format::TokenFile;
use crate::data::synth::rng::Rng;
use crate::model::Batch;
use crate::model::decoder::Decoder;

/// The rows of one split that fit training: at most `max_len` tokens and something to learn.
#[derive(Debug)]
pub struct Rows {
    file: TokenFile,
    kept: Vec<usize>,
    /// Rows left out for being longer than `max_len`.
    pub too_long: usize,
    /// Rows left out for having no learned token after the first.
    pub nothing_to_learn: usize,
}

impl Rows {
    pub fn new(file: TokenFile, max_len: usize) -> Rows {
        let (mut kept, mut too_long, mut nothing_to_learn) = (Vec::new(), 0, 0);
        for (i, (ids, mask)) in file.iter().enumerate() {
            if ids.len() > max_len {
                too_long += 1;
            } else if !mask.iter().skip(1).any(|&m| m) {
                nothing_to_learn += 1;
            } else {
                kept.push(i);
            }
        }
        Rows {
            file,
            kept,
            too_long,
            nothing_to_learn,
        }
    }

    /// Keeps only the first `n` rows.
    pub fn truncate(&mut self, n: usize) {
        self.kept.truncate(n);
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Every token some row learns to produce (a learned position after the first).
    pub fn learned_tokens(&self) -> BTreeSet<u32> {
        (0..self.len())
            .flat_map(|i| {
                let (ids, mask) = self.get(i);
                ids.iter()
                    .zip(mask)
                    .skip(1)
                    .filter(|(_, m)| **m)
                    .map(|(id, _)| *id)
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Kept row `i`: its ids and loss mask.
    pub fn get(&self, i: usize) -> (&[u32], &[bool]) {
        self.file
            .get(self.kept[i])
            .expect("kept rows are in the file")
    }

    /// The kept rows in file order, `size` at a time (evaluation).
    pub fn chunks(&self, size: usize) -> impl Iterator<Item = Vec<(&[u32], &[bool])>> {
        self.kept
            .chunks(size)
            .map(|c| c.iter().map(|&i| self.get_raw(i)).collect())
    }

    fn get_raw(&self, i: usize) -> (&[u32], &[bool]) {
        self.file.get(i).expect("kept rows are in the file")
    }
}

/// The seeded endless stream of row indices (`0..n`): epoch `e` is a shuffle seeded by
/// (seed, e).
#[derive(Debug)]
pub struct Order {
    seed: u64,
    n: usize,
    epoch: Option<(u64, Vec<usize>)>,
}

impl Order {
    pub fn new(seed: u64, n: usize) -> Order {
        Order {
            seed,
            n,
            epoch: None,
        }
    }

    /// The row at `position` of the stream.
    pub fn at(&mut self, position: u64) -> usize {
        let n = self.n as u64;
        let epoch = position / n;
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut perm: Vec<usize> = (0..self.n).collect();
            Rng::for_item(self.seed, epoch).shuffle(&mut perm);
            self.epoch = Some((epoch, perm));
        }
        let (_, perm) = self.epoch.as_ref().expect("just set");
        perm[(position % n) as usize]
    }

    /// The micro-batches (row indices) of optimizer step `step`.
    pub fn step(
        &mut self,
        step: u64,
        grad_accum: usize,
        micro_batch_size: usize,
    ) -> Vec<Vec<usize>> {
        let per_step = (grad_accum * micro_batch_size) as u64;
        (0..grad_accum)
            .map(|j| {
                let start = step * per_step + (j * micro_batch_size) as u64;
                (start..start + micro_batch_size as u64)
                    .map(|p| self.at(p))
                    .collect()
            })
            .collect()
    }
}

/// Which positions of a row a micro-batch learns, and under which softmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// The answer tokens (format's mask), under the full vocabulary.
    Answers,
    /// Every token after the first, under the full vocabulary (sft's `train_on_inputs`).
    EveryToken,
    /// The answer tokens under the full vocabulary, the prompt's under a softmax over the tokens of
    /// the micro-batch only (a sampled softmax: the prompt positions cost about what the layers
    /// do, not a pass over the vocabulary each).
    PromptInBatch,
}

/// A micro-batch on the device, with the flat positions (`b·T + t`) whose next token is learned.
#[derive(Debug)]
pub struct MicroBatch {
    pub batch: Batch,
    /// `[N]` u32 indices into the `[B·T]` flattened positions.
    pub positions: Tensor,
    /// `[N]` u32: the token each of those positions must predict.
    pub targets: Tensor,
    /// The prompt positions learned under the in-batch softmax ([`Learn::PromptInBatch`]).
    pub prompt: Option<InBatch>,
    /// Real (unpadded) input tokens.
    pub tokens: usize,
    /// Learned tokens (`N`, plus the prompt's in-batch ones).
    pub loss_tokens: usize,
}

/// Positions learned under a softmax restricted to `shortlist`, the distinct tokens of the
/// micro-batch.
#[derive(Debug)]
pub struct InBatch {
    /// `[M]` u32 flat positions.
    pub positions: Tensor,
    /// `[S]` u32 token ids.
    pub shortlist: Tensor,
    /// `[M]` u32: each target's index into `shortlist`.
    pub slots: Tensor,
}

impl MicroBatch {
    /// Rows (ids, loss mask) of at least two tokens, right-padded with `pad`, learning their
    /// answer tokens.
    pub fn new(rows: &[(&[u32], &[bool])], pad: u32, device: &Device) -> Result<MicroBatch> {
        MicroBatch::build(rows, pad, Learn::Answers, device)
    }

    /// As [`MicroBatch::new`], learning the positions `learn` says.
    pub fn build(
        rows: &[(&[u32], &[bool])],
        pad: u32,
        learn: Learn,
        device: &Device,
    ) -> Result<MicroBatch> {
        let inputs: Vec<Vec<u32>> = rows
            .iter()
            .map(|(ids, _)| ids[..ids.len().saturating_sub(1)].to_vec())
            .collect();
        let width = inputs.iter().map(Vec::len).max().unwrap_or(0);
        let (mut positions, mut targets) = (Vec::new(), Vec::new());
        let (mut prompt_positions, mut prompt_targets) = (Vec::new(), Vec::new());
        for (b, (ids, mask)) in rows.iter().enumerate() {
            for t in 0..ids.len().saturating_sub(1) {
                let flat = (b * width + t) as u32;
                if mask[t + 1] || learn == Learn::EveryToken {
                    positions.push(flat);
                    targets.push(ids[t + 1]);
                } else if learn == Learn::PromptInBatch {
                    prompt_positions.push(flat);
                    prompt_targets.push(ids[t + 1]);
                }
            }
        }
        let prompt = match prompt_positions.is_empty() {
            true => None,
            false => {
                let shortlist: BTreeSet<u32> = rows
                    .iter()
                    .flat_map(|(ids, _)| ids.iter().copied())
                    .collect();
                let shortlist: Vec<u32> = shortlist.into_iter().collect();
                let slots: Vec<u32> = prompt_targets
                    .iter()
                    .map(|id| shortlist.binary_search(id).expect("a row's own token") as u32)
                    .collect();
                let (m, s) = (slots.len(), shortlist.len());
                Some(InBatch {
                    positions: Tensor::from_vec(prompt_positions, m, device)?,
                    shortlist: Tensor::from_vec(shortlist, s, device)?,
                    slots: Tensor::from_vec(slots, m, device)?,
                })
            }
        };
        let loss_tokens = positions.len() + prompt_targets.len();
        let n = positions.len();
        Ok(MicroBatch {
            batch: Batch::padded(&inputs, pad, false, device)?,
            positions: Tensor::from_vec(positions, n, device)?,
            targets: Tensor::from_vec(targets, n, device)?,
            prompt,
            tokens: inputs.iter().map(Vec::len).sum(),
            loss_tokens,
        })
    }

    /// `scale ·` the summed next-token NLL of the learned positions, from the final hidden states
    /// `[B, T, hidden]`: the head runs on those positions only.
    pub fn loss(&self, model: &Decoder, hidden: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, t, h) = hidden.dims3()?;
        let flat = hidden.reshape((b * t, h))?;
        let picked = flat.index_select(&self.positions, 0)?;
        let mut sum = model.token_nll(&picked, &self.targets)?.sum_all()?;
        if let Some(p) = &self.prompt {
            let picked = flat.index_select(&p.positions, 0)?;
            let nll = model.shortlist_nll(&picked, &p.shortlist, &p.slots)?;
            let extra = nll.sum_all()?.to_dtype(sum.dtype())?;
            sum = (sum + extra)?;
        }
        sum * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::format::{TokenRow, write_token_file};

    fn file(rows: &[(Vec<u32>, Vec<bool>)]) -> TokenFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tokens");
        let rows: Vec<TokenRow> = rows
            .iter()
            .map(|(ids, mask)| TokenRow {
                ids: ids.clone(),
                mask: mask.clone(),
            })
            .collect();
        write_token_file(&path, &rows).unwrap();
        TokenFile::open(&path).unwrap()
    }

    #[test]
    fn long_and_unlearnable_rows_are_counted_not_kept() {
        let rows = Rows::new(
            file(&[
                (vec![1, 2, 3], vec![false, true, true]),
                (vec![1, 2, 3, 4, 5], vec![false, false, true, true, true]),
                (vec![7, 8], vec![true, false]),
                (vec![9, 9], vec![false, true]),
            ]),
            4,
        );
        assert_eq!(
            (rows.len(), rows.too_long, rows.nothing_to_learn),
            (2, 1, 1)
        );
        assert_eq!(rows.get(1).0, [9, 9]);
        assert_eq!(
            rows.learned_tokens().into_iter().collect::<Vec<_>>(),
            [2, 3, 9]
        );
        let chunks: Vec<_> = rows.chunks(1).collect();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0][0].0, [1, 2, 3]);
    }

    #[test]
    fn the_order_is_a_function_of_seed_and_position() {
        let mut a = Order::new(5, 10);
        let first: Vec<usize> = (0..30).map(|p| a.at(p)).collect();
        // Each epoch is a permutation, and epochs differ.
        for epoch in first.chunks(10) {
            let mut sorted = epoch.to_vec();
            sorted.sort();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(first[..10], first[10..20]);
        // Asked out of order, or by a fresh stream, the answers are the same.
        let mut b = Order::new(5, 10);
        assert_eq!(b.at(25), first[25]);
        assert_eq!(b.at(3), first[3]);
        assert_ne!(
            (0..10).map(|p| Order::new(6, 10).at(p)).collect::<Vec<_>>(),
            first[..10]
        );
        // Step 2 with 2 micro-batches of 3 takes stream positions 12..18.
        assert_eq!(
            b.step(2, 2, 3),
            vec![first[12..15].to_vec(), first[15..18].to_vec()]
        );
    }

    #[test]
    fn micro_batches_predict_the_next_learned_token() {
        let rows: Vec<(&[u32], &[bool])> = vec![
            (&[10, 11, 12, 13], &[false, false, true, true]),
            (&[20, 21], &[false, true]),
        ];
        let mb = MicroBatch::new(&rows, 0, &Device::Cpu).unwrap();
        assert_eq!(
            mb.batch.ids.to_vec2::<u32>().unwrap(),
            [[10, 11, 12], [20, 0, 0]]
        );
        // Row 0 learns 12 (at t = 1) and 13 (t = 2); row 1 learns 21 at t = 0, flat index 3.
        assert_eq!(mb.positions.to_vec1::<u32>().unwrap(), [1, 2, 3]);
        assert_eq!(mb.targets.to_vec1::<u32>().unwrap(), [12, 13, 21]);
        assert_eq!((mb.tokens, mb.loss_tokens), (4, 3));
        assert!(mb.prompt.is_none());
        // Learning every token: the prompt's too.
        let mb = MicroBatch::build(&rows, 0, Learn::EveryToken, &Device::Cpu).unwrap();
        assert_eq!(mb.positions.to_vec1::<u32>().unwrap(), [0, 1, 2, 3]);
        assert_eq!(mb.targets.to_vec1::<u32>().unwrap(), [11, 12, 13, 21]);
        assert_eq!((mb.tokens, mb.loss_tokens), (4, 4));
        // The prompt under the in-batch softmax: row 0's position 0 learns 11, one of the six
        // tokens of the batch; the answers stay under the full vocabulary.
        let mb = MicroBatch::build(&rows, 0, Learn::PromptInBatch, &Device::Cpu).unwrap();
        assert_eq!(mb.positions.to_vec1::<u32>().unwrap(), [1, 2, 3]);
        let prompt = mb.prompt.as_ref().unwrap();
        assert_eq!(prompt.positions.to_vec1::<u32>().unwrap(), [0]);
        assert_eq!(
            prompt.shortlist.to_vec1::<u32>().unwrap(),
            [10, 11, 12, 13, 20, 21]
        );
        assert_eq!(prompt.slots.to_vec1::<u32>().unwrap(), [1]);
        assert_eq!((mb.tokens, mb.loss_tokens), (4, 4));
    }
}
