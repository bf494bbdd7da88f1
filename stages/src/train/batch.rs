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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// Which positions of a row a micro-batch learns, under which softmax and at which weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Learn {
    /// The prompt's tokens (sft's `train_on_inputs`), or none of them.
    pub inputs: Option<Softmax>,
    /// The answer tokens (format's mask).
    pub answers: Softmax,
    /// A prompt token's weight in the loss, an answer token's being 1.
    pub input_weight: f64,
}

impl Learn {
    /// The answer tokens under the full vocabulary.
    pub const ANSWERS: Learn = Learn {
        inputs: None,
        answers: Softmax::Full,
        input_weight: 1.0,
    };
}

/// A micro-batch on the device, with the flat positions (`b·T + t`) whose next token is learned.
#[derive(Debug)]
pub struct MicroBatch {
    pub batch: Batch,
    /// The learned positions: the answers' group, then the prompt's (either may be absent).
    pub groups: Vec<Learned>,
    /// Real (unpadded) input tokens.
    pub tokens: usize,
    /// Learned tokens, each counted at its weight.
    pub loss_weight: f64,
}

/// Positions learned under one softmax at one weight.
#[derive(Debug)]
pub struct Learned {
    /// `[M]` u32 flat positions.
    pub positions: Tensor,
    /// `[M]` u32: the token each position must predict, as its id under the full vocabulary and
    /// as its index into `shortlist` under a shortlist.
    pub targets: Tensor,
    /// `[S]` u32 token ids, ascending, for [`Softmax::Batch`] and [`Softmax::Trained`].
    pub shortlist: Option<Tensor>,
    /// Each position's weight in the loss.
    pub weight: f64,
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
        let kinds = [
            (true, Some(learn.answers), 1.0),
            (false, learn.inputs, learn.input_weight),
        ];
        let mut groups = Vec::new();
        let mut loss_weight = 0.0;
        for (answers, softmax, weight) in kinds {
            let Some(softmax) = softmax else { continue };
            let (mut positions, mut targets) = (Vec::new(), Vec::new());
            for (b, (ids, mask)) in rows.iter().enumerate() {
                for t in 0..ids.len().saturating_sub(1) {
                    if mask[t + 1] == answers {
                        positions.push((b * width + t) as u32);
                        targets.push(ids[t + 1]);
                    }
                }
            }
            if positions.is_empty() {
                continue;
            }
            let shortlist = match softmax {
                Softmax::Full => None,
                Softmax::Batch => Some(shortlists.step),
                Softmax::Trained => Some(shortlists.trained),
            };
            if let Some(shortlist) = shortlist {
                for id in &mut targets {
                    *id = match shortlist.binary_search(id) {
                        Ok(slot) => slot as u32,
                        Err(_) => candle_core::bail!(
                            "token {id} is learned under the {softmax:?} softmax but is not in its shortlist"
                        ),
                    };
                }
            }
            let m = positions.len();
            loss_weight += weight * m as f64;
            groups.push(Learned {
                positions: Tensor::from_vec(positions, m, device)?,
                targets: Tensor::from_vec(targets, m, device)?,
                shortlist: shortlist
                    .map(|s| Tensor::from_slice(s, s.len(), device))
                    .transpose()?,
                weight,
            });
        }
        Ok(MicroBatch {
            batch: Batch::padded(&inputs, pad, false, device)?,
            groups,
            tokens: inputs.iter().map(Vec::len).sum(),
            loss_weight,
        })
    }

    /// `scale ·` the weighted sum of the learned positions' next-token NLL, from the final hidden
    /// states `[B, T, hidden]`: the head runs on those positions only.
    pub fn loss(&self, model: &Decoder, hidden: &Tensor, scale: f64) -> Result<Tensor> {
        let (b, t, h) = hidden.dims3()?;
        let flat = hidden.reshape((b * t, h))?;
        let mut total: Option<Tensor> = None;
        for group in &self.groups {
            let picked = flat.index_select(&group.positions, 0)?;
            let nll = match &group.shortlist {
                None => model.token_nll(&picked, &group.targets)?,
                Some(shortlist) => model.shortlist_nll(&picked, shortlist, &group.targets)?,
            };
            let sum = (nll.sum_all()? * group.weight)?;
            total = Some(match total {
                Some(t) => {
                    let sum = sum.to_dtype(t.dtype())?;
                    (t + sum)?
                }
                None => sum,
            });
        }
        match total {
            Some(total) => total * scale,
            None => candle_core::bail!("a micro-batch with nothing to learn"),
        }
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
        /// Each group's (positions, targets, shortlist, weight).
        type Group = (Vec<u32>, Vec<u32>, Option<Vec<u32>>, f64);
        let groups = |mb: &MicroBatch| -> Vec<Group> {
            let v = |t: &Tensor| t.to_vec1::<u32>().unwrap();
            mb.groups
                .iter()
                .map(|g| {
                    let list = g.shortlist.as_ref().map(v);
                    (v(&g.positions), v(&g.targets), list, g.weight)
                })
                .collect()
        };
        let mb = MicroBatch::new(&rows, 0, &Device::Cpu).unwrap();
        assert_eq!(
            mb.batch.ids.to_vec2::<u32>().unwrap(),
            [[10, 11, 12], [20, 0, 0]]
        );
        // Row 0 learns 12 (at t = 1) and 13 (t = 2); row 1 learns 21 at t = 0, flat index 3.
        assert_eq!(groups(&mb), [(vec![1, 2, 3], vec![12, 13, 21], None, 1.0)]);
        assert_eq!((mb.tokens, mb.loss_weight), (4, 3.0));
        // Learning every token: the prompt's (row 0's 11 at t = 0) too, at its own weight.
        let every = Learn {
            inputs: Some(Softmax::Full),
            answers: Softmax::Full,
            input_weight: 0.25,
        };
        let none = Shortlists::default();
        let mb = MicroBatch::build(&rows, 0, every, none, &Device::Cpu).unwrap();
        assert_eq!(
            groups(&mb),
            [
                (vec![1, 2, 3], vec![12, 13, 21], None, 1.0),
                (vec![0], vec![11], None, 0.25)
            ]
        );
        assert_eq!((mb.tokens, mb.loss_weight), (4, 3.25));
        // The prompt under the step's softmax: 11 is slot 1 of the six tokens of the step.
        let step = step_tokens(rows.iter().map(|(ids, _)| *ids));
        let trained = [5, 12, 13, 21];
        let shortlists = Shortlists {
            step: &step,
            trained: &trained,
        };
        let prompt_in_batch = Learn {
            inputs: Some(Softmax::Batch),
            ..Learn::ANSWERS
        };
        let mb = MicroBatch::build(&rows, 0, prompt_in_batch, shortlists, &Device::Cpu).unwrap();
        assert_eq!(groups(&mb)[1], (vec![0], vec![1], Some(step.clone()), 1.0));
        // The answers under the trained rows' softmax: their slots in those rows.
        let answers = Learn {
            answers: Softmax::Trained,
            ..prompt_in_batch
        };
        let mb = MicroBatch::build(&rows, 0, answers, shortlists, &Device::Cpu).unwrap();
        assert_eq!(
            groups(&mb)[0],
            (vec![1, 2, 3], vec![1, 2, 3], Some(trained.to_vec()), 1.0)
        );
        // A learned token whose row is not trained cannot be learned under that softmax.
        let shortlists = Shortlists {
            step: &step,
            trained: &[12, 13],
        };
        let err = MicroBatch::build(&rows, 0, answers, shortlists, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("token 21"), "{err}");
    }
}
