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

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

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

    /// Every token some row learns to produce: at a learned position after the first, or with
    /// `inputs_too` at any position after the first.
    pub fn learned_tokens(&self, inputs_too: bool) -> BTreeSet<u32> {
        (0..self.len())
            .flat_map(|i| {
                let (ids, mask) = self.get(i);
                ids.iter()
                    .zip(mask)
                    .skip(1)
                    .filter(move |(_, m)| **m || inputs_too)
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

/// The softmax a learned position's loss is taken under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Softmax {
    /// The whole vocabulary: exact, a pass over the head's rows per position.
    #[default]
    Full,
    /// The distinct tokens of the optimizer step's rows only (a sampled softmax): such positions
    /// cost about what the layers do, not a pass over the vocabulary each. The step's, not the
    /// micro-batch's, so that how a step is cut into micro-batches changes nothing.
    Batch,
    /// The token rows the run trains. The others never move, and a norm-bounded hidden state
    /// keeps their logits near their small initial values, so for a random-initialized model
    /// whose every learned token is trained this is close to the full softmax at a fraction of
    /// the cost.
    Trained,
}

/// Which positions of a row a micro-batch learns, and under which softmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learn {
    /// The prompt's tokens (sft's `train_on_inputs`), or none of them.
    pub inputs: Option<Softmax>,
    /// The answer tokens (format's mask).
    pub answers: Softmax,
}

impl Learn {
    /// The answer tokens under the full vocabulary.
    pub const ANSWERS: Learn = Learn {
        inputs: None,
        answers: Softmax::Full,
    };

    fn at(self, answer: bool) -> Option<Softmax> {
        match answer {
            true => Some(self.answers),
            false => self.inputs,
        }
    }
}

/// A micro-batch on the device, with the flat positions (`b·T + t`) whose next token is learned.
#[derive(Debug)]
pub struct MicroBatch {
    pub batch: Batch,
    /// `[N]` u32 indices into the `[B·T]` flattened positions learned under the full vocabulary.
    pub positions: Tensor,
    /// `[N]` u32: the token each of those positions must predict.
    pub targets: Tensor,
    /// The positions learned under a shortlist softmax ([`Softmax::Batch`], [`Softmax::Trained`]),
    /// one group per shortlist.
    pub shortlisted: Vec<Shortlisted>,
    /// Real (unpadded) input tokens.
    pub tokens: usize,
    /// Learned tokens (`N`, plus the shortlisted ones).
    pub loss_tokens: usize,
}

/// The shortlists of [`Softmax::Batch`] and [`Softmax::Trained`]: ascending token ids, each
/// holding every token learned under it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shortlists<'a> {
    /// The distinct tokens of the optimizer step's rows ([`step_tokens`]).
    pub step: &'a [u32],
    /// The token rows the run trains.
    pub trained: &'a [u32],
}

/// The distinct tokens of `rows`, ascending.
pub fn step_tokens<'a>(rows: impl IntoIterator<Item = &'a [u32]>) -> Vec<u32> {
    let tokens: BTreeSet<u32> = rows.into_iter().flatten().copied().collect();
    tokens.into_iter().collect()
}

/// Positions learned under a softmax restricted to `shortlist`.
#[derive(Debug)]
pub struct Shortlisted {
    /// `[M]` u32 flat positions.
    pub positions: Tensor,
    /// `[S]` u32 token ids, ascending.
    pub shortlist: Tensor,
    /// `[M]` u32: each target's index into `shortlist`.
    pub slots: Tensor,
}

impl MicroBatch {
    /// Rows (ids, loss mask) of at least two tokens, right-padded with `pad`, learning their
    /// answer tokens.
    pub fn new(rows: &[(&[u32], &[bool])], pad: u32, device: &Device) -> Result<MicroBatch> {
        MicroBatch::build(rows, pad, Learn::ANSWERS, Shortlists::default(), device)
    }

    /// As [`MicroBatch::new`], learning the positions `learn` says under their softmax.
    pub fn build(
        rows: &[(&[u32], &[bool])],
        pad: u32,
        learn: Learn,
        shortlists: Shortlists,
        device: &Device,
    ) -> Result<MicroBatch> {
        let inputs: Vec<Vec<u32>> = rows
            .iter()
            .map(|(ids, _)| ids[..ids.len().saturating_sub(1)].to_vec())
            .collect();
        let width = inputs.iter().map(Vec::len).max().unwrap_or(0);
        let mut learned: BTreeMap<Softmax, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
        for (b, (ids, mask)) in rows.iter().enumerate() {
            for t in 0..ids.len().saturating_sub(1) {
                if let Some(softmax) = learn.at(mask[t + 1]) {
                    let (positions, targets) = learned.entry(softmax).or_default();
                    positions.push((b * width + t) as u32);
                    targets.push(ids[t + 1]);
                }
            }
        }
        let (positions, targets) = learned.remove(&Softmax::Full).unwrap_or_default();
        let mut loss_tokens = positions.len();
        let mut shortlisted = Vec::new();
        for (softmax, (at, targets)) in learned {
            let shortlist = match softmax {
                Softmax::Batch => shortlists.step,
                _ => shortlists.trained,
            };
            let slots = targets
                .iter()
                .map(|id| match shortlist.binary_search(id) {
                    Ok(slot) => Ok(slot as u32),
                    Err(_) => Err(candle_core::Error::Msg(format!(
                        "token {id} is learned under the {softmax:?} softmax but is not in its shortlist"
                    ))),
                })
                .collect::<Result<Vec<u32>>>()?;
            let (m, s) = (slots.len(), shortlist.len());
            loss_tokens += m;
            shortlisted.push(Shortlisted {
                positions: Tensor::from_vec(at, m, device)?,
                shortlist: Tensor::from_slice(shortlist, s, device)?,
                slots: Tensor::from_vec(slots, m, device)?,
            });
        }
        let n = positions.len();
        Ok(MicroBatch {
            batch: Batch::padded(&inputs, pad, false, device)?,
            positions: Tensor::from_vec(positions, n, device)?,
            targets: Tensor::from_vec(targets, n, device)?,
            shortlisted,
            tokens: inputs.iter().map(Vec::len).sum(),
            loss_tokens,
        })
    }

    /// `scale ·` the summed next-token NLL of the learned positions, from the final hidden states
    /// `[B, T, hidden]`: the head runs on those positions only.
    pub fn loss(&self, model: &Decoder, hidden: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, t, h) = hidden.dims3()?;
        let flat = hidden.reshape((b * t, h))?;
        let mut sums = Vec::new();
        if self.positions.dims1()? > 0 {
            let picked = flat.index_select(&self.positions, 0)?;
            sums.push(model.token_nll(&picked, &self.targets)?.sum_all()?);
        }
        for group in &self.shortlisted {
            let picked = flat.index_select(&group.positions, 0)?;
            let nll = model.shortlist_nll(&picked, &group.shortlist, &group.slots)?;
            sums.push(nll.sum_all()?);
        }
        let mut sums = sums.into_iter();
        let Some(mut sum) = sums.next() else {
            candle_core::bail!("a micro-batch with nothing to learn");
        };
        for s in sums {
            let s = s.to_dtype(sum.dtype())?;
            sum = (sum + s)?;
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
                (vec![9, 8, 9], vec![false, false, true]),
            ]),
            4,
        );
        assert_eq!(
            (rows.len(), rows.too_long, rows.nothing_to_learn),
            (2, 1, 1)
        );
        assert_eq!(rows.get(1).0, [9, 8, 9]);
        assert_eq!(
            rows.learned_tokens(false).into_iter().collect::<Vec<_>>(),
            [2, 3, 9]
        );
        // Rows that learn their prompts too produce every token after the first.
        assert_eq!(
            rows.learned_tokens(true).into_iter().collect::<Vec<_>>(),
            [2, 3, 8, 9]
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
        assert!(mb.shortlisted.is_empty());
        // Learning every token: the prompt's too.
        let every = Learn {
            inputs: Some(Softmax::Full),
            answers: Softmax::Full,
        };
        let none = Shortlists::default();
        let mb = MicroBatch::build(&rows, 0, every, none, &Device::Cpu).unwrap();
        assert_eq!(mb.positions.to_vec1::<u32>().unwrap(), [0, 1, 2, 3]);
        assert_eq!(mb.targets.to_vec1::<u32>().unwrap(), [11, 12, 13, 21]);
        assert_eq!((mb.tokens, mb.loss_tokens), (4, 4));
        // The prompt under the step's softmax: row 0's position 0 learns 11, one of the six
        // tokens of the step; the answers stay under the full vocabulary.
        let prompt_in_batch = Learn {
            inputs: Some(Softmax::Batch),
            answers: Softmax::Full,
        };
        let step = step_tokens(rows.iter().map(|(ids, _)| *ids));
        let shortlists = Shortlists {
            step: &step,
            trained: &[],
        };
        let mb = MicroBatch::build(&rows, 0, prompt_in_batch, shortlists, &Device::Cpu).unwrap();
        assert_eq!(mb.positions.to_vec1::<u32>().unwrap(), [1, 2, 3]);
        let [in_batch] = &mb.shortlisted[..] else {
            panic!("one shortlist")
        };
        assert_eq!(in_batch.positions.to_vec1::<u32>().unwrap(), [0]);
        assert_eq!(
            in_batch.shortlist.to_vec1::<u32>().unwrap(),
            [10, 11, 12, 13, 20, 21]
        );
        assert_eq!(in_batch.slots.to_vec1::<u32>().unwrap(), [1]);
        assert_eq!((mb.tokens, mb.loss_tokens), (4, 4));
        // The answers under the trained rows' softmax, the prompt under the step's: two
        // shortlists, nothing reaches the full head.
        let both = Learn {
            inputs: Some(Softmax::Batch),
            answers: Softmax::Trained,
        };
        let shortlists = Shortlists {
            step: &step,
            trained: &[5, 12, 13, 21],
        };
        let mb = MicroBatch::build(&rows, 0, both, shortlists, &Device::Cpu).unwrap();
        assert_eq!(mb.positions.dims1().unwrap(), 0);
        let [in_batch, trained] = &mb.shortlisted[..] else {
            panic!("two shortlists")
        };
        assert_eq!(in_batch.positions.to_vec1::<u32>().unwrap(), [0]);
        assert_eq!(trained.positions.to_vec1::<u32>().unwrap(), [1, 2, 3]);
        assert_eq!(trained.shortlist.to_vec1::<u32>().unwrap(), [5, 12, 13, 21]);
        assert_eq!(trained.slots.to_vec1::<u32>().unwrap(), [1, 2, 3]);
        assert_eq!((mb.tokens, mb.loss_tokens), (4, 4));
        // A learned token whose row is not trained cannot be learned under that softmax.
        let answers = Learn {
            inputs: None,
            answers: Softmax::Trained,
        };
        let shortlists = Shortlists {
            step: &step,
            trained: &[12, 13],
        };
        let err = MicroBatch::build(&rows, 0, answers, shortlists, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("token 21"), "{err}");
    }
}
