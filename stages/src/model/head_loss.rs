//! The output head and the cross-entropy as one custom op: per-row `-log softmax(h·W'ᵀ)[target]`
//! for final hidden states `h [N, hidden]`, where `W'` is the head matrix with its trainable token
//! rows added ([`TokenRows`]).
//!
//! Why one op: with a 151,936-token vocabulary the head and its loss are most of a small model's
//! training step, and as separate candle ops they make a dozen passes over `[N, vocab]` tensors
//! that autograd keeps alive (logits, their copy with the token rows added, the shifted
//! exponentials, the softmax, gradients initialized to zero and then added to). This op walks the
//! rows in chunks small enough to stay in cache, computes each chunk's logits, loss and — when a
//! gradient can be asked for — `softmax − onehot` at once, and keeps only what the backward needs:
//! `(softmax − onehot)·W'` `[N, hidden]` and its columns at the token rows `[N, k]`. The backward
//! is then two small products. On a CPU the softmax is one pass with a vectorizable exponential
//! ([`exp_le0`]); elsewhere (CUDA) it is candle's own kernels, chunk by chunk.

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use super::embedding::TokenRows;
use super::fused::{on_cpu, on_cuda};
use super::linear::matmul_t;
use super::nf4::cpu_slice;

/// Bytes of f32 logits per chunk: cache-sized on a CPU; on a GPU large enough for big kernels
/// (about 220 rows of Qwen3's vocabulary) while the chunk's temporaries stay well under a GiB.
const CPU_CHUNK_BYTES: usize = 8 << 20;
const GPU_CHUNK_BYTES: usize = 128 << 20;

/// Per-row NLL `[N]` (f32; f64 for f64 inputs) of `targets [N]` (u32) under the head `weight
/// [vocab, hidden]` (frozen) plus `rows` (trainable deltas), from `h [N, hidden]`. Gradients reach
/// `h` and the rows' delta.
pub fn token_nll(
    h: &Tensor,
    weight: &Tensor,
    rows: Option<&Arc<TokenRows>>,
    targets: &Tensor,
) -> Result<Tensor> {
    let (n, hidden) = h.dims2()?;
    let (vocab, w_hidden) = weight.dims2()?;
    if w_hidden != hidden || targets.dims1()? != n {
        candle_core::bail!(
            "head loss: h {:?}, weight {:?}, targets {:?}",
            h.dims(),
            weight.dims(),
            targets.dims()
        );
    }
    let delta = match rows {
        Some(r) => r.delta().as_tensor().clone(),
        None => Tensor::zeros((0, hidden), DType::F32, h.device())?,
    };
    let grad = h.track_op() || delta.track_op();
    let op = HeadNll {
        h: h.detach(),
        weight: weight.clone(),
        rows: rows.cloned(),
        targets: targets.clone(),
        vocab,
        grad,
        saved: Mutex::new(None),
    };
    h.apply_op2(&delta, op)
}

struct HeadNll {
    h: Tensor,
    weight: Tensor,
    rows: Option<Arc<TokenRows>>,
    targets: Tensor,
    vocab: usize,
    /// Whether to prepare the backward in the forward.
    grad: bool,
    /// `(softmax − onehot)·W'` `[N, hidden]` and `(softmax − onehot)` at the token rows `[N, k]`,
    /// both in the loss's dtype.
    saved: Mutex<Option<(Tensor, Tensor)>>,
}

/// The float type the loss is computed in.
fn loss_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

impl HeadNll {
    fn forward(&self) -> Result<Tensor> {
        let device = self.h.device();
        let n = self.h.dim(0)?;
        let up = loss_dtype(self.h.dtype());
        let chunk_bytes = match device {
            Device::Cpu => CPU_CHUNK_BYTES,
            _ => GPU_CHUNK_BYTES,
        };
        let chunk = (chunk_bytes / (4 * self.vocab)).max(1);
        let (mut nll, mut dh, mut d_rows) = (Vec::new(), Vec::new(), Vec::new());
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let h = self.h.narrow(0, start, len)?;
            let targets = self.targets.narrow(0, start, len)?;
            let logits = matmul_t(&h, &self.weight)?.to_dtype(up)?;
            let rows = match &self.rows {
                Some(rows) => {
                    let delta = rows.delta().as_tensor().detach().to_dtype(up)?;
                    let extra = matmul_t(&h.to_dtype(up)?, &delta)?;
                    Some((rows.as_ref(), extra))
                }
                None => None,
            };
            let rows = rows.as_ref().map(|(r, e)| (*r, e));
            let (chunk_nll, dlogits) = softmax_rows(&logits, rows, &targets, self.grad)?;
            nll.push(chunk_nll);
            if let Some((dlogits, at_rows)) = dlogits {
                let mut g = dlogits
                    .to_dtype(self.weight.dtype())?
                    .matmul(&self.weight)?
                    .to_dtype(up)?;
                if let (Some(rows), Some(at_rows)) = (&self.rows, at_rows) {
                    let delta = rows.delta().as_tensor().detach().to_dtype(up)?;
                    g = (g + at_rows.matmul(&delta)?)?;
                    d_rows.push(at_rows);
                }
                dh.push(g);
            }
        }
        if self.grad {
            let k = self.rows.as_ref().map_or(0, |r| r.ids().len());
            let d_rows = if d_rows.is_empty() {
                Tensor::zeros((n, k), up, device)?
            } else {
                Tensor::cat(&d_rows, 0)?
            };
            *self.saved.lock().expect("not poisoned") = Some((Tensor::cat(&dh, 0)?, d_rows));
        }
        Tensor::cat(&nll, 0)
    }
}

/// `softmax − onehot` of a chunk's logits, and its columns at the token rows (when there are).
type Dlogits = (Tensor, Option<Tensor>);

/// Per-row `lse(x') − x'[target]` of f32/f64 logits `[c, vocab]`, where `x'` is `x` with
/// `extra [c, k]` added at the token rows' columns, and with `grad` `softmax(x') − onehot(target)`.
fn softmax_rows(
    logits: &Tensor,
    rows: Option<(&TokenRows, &Tensor)>,
    targets: &Tensor,
    grad: bool,
) -> Result<(Tensor, Option<Dlogits>)> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        return softmax_rows_cpu(logits, rows, targets, grad);
    }
    let logits = match rows {
        Some((rows, extra)) => logits.index_add(rows.ids_tensor(), extra, 1)?,
        None => logits.clone(),
    };
    let max = logits.max_keepdim(1)?;
    let e = logits.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(1)?;
    let lse = (sum.log()? + &max)?;
    let index = targets.unsqueeze(1)?.contiguous()?;
    let nll = (lse - logits.gather(&index, 1)?)?.squeeze(1)?;
    if !grad {
        return Ok((nll, None));
    }
    let minus_one =
        Tensor::full(-1f32, index.shape(), logits.device())?.to_dtype(logits.dtype())?;
    let d = e.broadcast_div(&sum)?.scatter_add(&index, &minus_one, 1)?;
    let at_rows = match rows {
        Some((rows, _)) => Some(d.index_select(rows.ids_tensor(), 1)?),
        None => None,
    };
    Ok((nll, Some((d, at_rows))))
}

/// [`softmax_rows`] on the CPU, rows in parallel, each in one buffer: the logits with the token
/// rows' extra added, then in place their exponentials (summed as they are made), then the
/// softmax.
fn softmax_rows_cpu(
    logits: &Tensor,
    rows: Option<(&TokenRows, &Tensor)>,
    targets: &Tensor,
    grad: bool,
) -> Result<(Tensor, Option<Dlogits>)> {
    let (c, vocab) = logits.dims2()?;
    let targets: Vec<u32> = targets.to_vec1()?;
    let logits = logits.contiguous()?;
    let (storage, layout) = logits.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("head loss: CPU logits in other storage");
    };
    let x = cpu_slice::<f32>(cpu, layout)?;
    let (ids, extra): (&[u32], Vec<f32>) = match rows {
        Some((rows, extra)) => (rows.ids(), extra.flatten_all()?.to_vec1()?),
        None => (&[], Vec::new()),
    };
    let k = ids.len();
    let mut d = vec![0f32; c * vocab];
    let nll: Vec<f32> = d
        .par_chunks_mut(vocab)
        .zip(x.par_chunks(vocab))
        .zip(targets.par_iter())
        .enumerate()
        .map(|(row, ((d, x), &t))| {
            d.copy_from_slice(x);
            for (&id, e) in ids.iter().zip(&extra[row * k..(row + 1) * k]) {
                d[id as usize] += e;
            }
            let picked = d[t as usize];
            let max = lanes(d, f32::NEG_INFINITY, f32::max);
            let mut sums = [0f32; LANES];
            for chunk in d.chunks_mut(LANES) {
                for (s, v) in sums.iter_mut().zip(chunk) {
                    *v = exp_le0(*v - max);
                    *s += *v;
                }
            }
            let sum: f32 = sums.iter().sum();
            if grad {
                let inv = 1.0 / sum;
                for v in d.iter_mut() {
                    *v *= inv;
                }
                d[t as usize] -= 1.0;
            }
            max + sum.ln() - picked
        })
        .collect();
    let device = logits.device();
    let nll = Tensor::from_vec(nll, c, device)?;
    if !grad {
        return Ok((nll, None));
    }
    let at_rows = match rows {
        Some(_) => {
            let picked: Vec<f32> = (0..c)
                .flat_map(|r| ids.iter().map(move |&id| (r, id)))
                .map(|(r, id)| d[r * vocab + id as usize])
                .collect();
            Some(Tensor::from_vec(picked, (c, k), device)?)
        }
        None => None,
    };
    Ok((
        nll,
        Some((Tensor::from_vec(d, (c, vocab), device)?, at_rows)),
    ))
}

/// Independent accumulators: enough for the compiler to keep a vector register busy.
const LANES: usize = 16;

/// `x` folded by `f` over [`LANES`] interleaved accumulators (vectorizable), then across them.
#[inline(always)]
pub(crate) fn lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32 + Copy) -> f32 {
    let mut acc = [init; LANES];
    for chunk in x.chunks(LANES) {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a = f(*a, v);
        }
    }
    acc.into_iter().fold(init, f)
}

/// `exp(x)` for `x ≤ 0` in plain arithmetic the compiler vectorizes (libm's `expf` is a call per
/// element, and slow where it underflows): Cephes' range reduction and degree-6 polynomial, about
/// one ulp from the exact value; below −87.3 (where f32 runs out of normal numbers) the result
/// is 0.
#[inline]
pub fn exp_le0(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding it rounds to an integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.max(-87.3);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ from the integer in `shifted`'s mantissa (n ≥ −126: a normal number).
    let bits = (shifted.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23;
    let y = y * f32::from_bits(bits as u32);
    if x < -87.3 { 0.0 } else { y }
}

impl CustomOp2 for HeadNll {
    fn name(&self) -> &'static str {
        "head-nll"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        on_cpu(self.forward())
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        on_cuda(self.forward())
    }

    /// `dh = g ⊙ (softmax − onehot)·W'`, `dΔ = (g ⊙ (softmax − onehot)[:, ids])ᵀ·h`.
    fn bwd(
        &self,
        h: &Tensor,
        delta: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().expect("not poisoned");
        let Some((dh, d_rows)) = saved.as_ref() else {
            candle_core::bail!("head loss: backward of a forward that kept no gradient");
        };
        let g = grad.to_dtype(dh.dtype())?.unsqueeze(1)?;
        let gh = dh.broadcast_mul(&g)?.to_dtype(h.dtype())?;
        let gd = if self.rows.is_some() {
            let hu = self.h.to_dtype(d_rows.dtype())?;
            Some(
                d_rows
                    .broadcast_mul(&g)?
                    .t()?
                    .matmul(&hu)?
                    .to_dtype(delta.dtype())?,
            )
        } else {
            None
        };
        Ok((Some(gh), gd))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::model::ops::tests::max_abs_diff;
    use crate::model::ops::tests::{check_grad, randn};
    use crate::model::ops::token_nll_composed;

    /// The reference: logits through candle ops, rows added as [`TokenRows`] does, composed NLL.
    fn composed(h: &Tensor, w: &Tensor, rows: &TokenRows, targets: &Tensor) -> Tensor {
        let logits = matmul_t(h, w).unwrap();
        let extra = matmul_t(h, rows.delta().as_tensor()).unwrap();
        let logits = logits.index_add(rows.ids_tensor(), &extra, 1).unwrap();
        token_nll_composed(&logits, targets).unwrap()
    }

    #[test]
    fn matches_the_composed_head_and_loss_in_value_and_gradient() {
        let dev = Device::Cpu;
        let (n, hidden, vocab) = (7, 6, 50);
        let w = randn(&[vocab, hidden], 1);
        let h = Var::from_tensor(&randn(&[n, hidden], 2)).unwrap();
        let rows = Arc::new(TokenRows::new(&[3, 17, 40], vocab, hidden, DType::F64, &dev).unwrap());
        rows.delta()
            .set(&(randn(&[3, hidden], 3) * 0.5).unwrap())
            .unwrap();
        let targets = Tensor::new(&[3u32, 0, 17, 49, 40, 3, 8], &dev).unwrap();
        let probe = randn(&[n], 4);
        let fused = || token_nll(h.as_tensor(), &w, Some(&rows), &targets).unwrap();
        let reference = || composed(h.as_tensor(), &w, &rows, &targets);
        assert!(max_abs_diff(&fused(), &reference()) < 1e-12);
        let loss = |t: Tensor| (t * &probe).unwrap().sum_all().unwrap();
        let (gf, gr) = (
            loss(fused()).backward().unwrap(),
            loss(reference()).backward().unwrap(),
        );
        for v in [h.as_tensor(), rows.delta().as_tensor()] {
            let err = max_abs_diff(gf.get(v).unwrap(), gr.get(v).unwrap());
            assert!(err < 1e-12, "gradient differs by {err}");
        }
        let f = || loss(fused()).to_scalar::<f64>().unwrap();
        let all: Vec<usize> = (0..n * hidden).collect();
        let gh = gf.get(h.as_tensor()).unwrap();
        assert!(check_grad(&h, gh, &all, 1e-5, 1e-4, &f) < 1e-6);
        let gd = gf.get(rows.delta().as_tensor()).unwrap();
        assert!(check_grad(rows.delta(), gd, &all[..18], 1e-5, 1e-4, &f) < 1e-6);
    }

    #[test]
    fn the_cpu_f32_path_agrees_with_candle_kernels_across_chunks() {
        let dev = Device::Cpu;
        // More rows than one CPU chunk holds at this vocabulary, and logits of every size.
        let (vocab, hidden) = (70_000, 8);
        let n = 2 * (CPU_CHUNK_BYTES / (4 * vocab)) + 3;
        let f32_of = |t: Tensor| t.to_dtype(DType::F32).unwrap();
        let w = f32_of((randn(&[vocab, hidden], 5) * 3.0).unwrap());
        let h = Var::from_tensor(&f32_of(randn(&[n, hidden], 6))).unwrap();
        let targets = Tensor::from_vec(
            (0..n as u32)
                .map(|i| i * 7919 % vocab as u32)
                .collect::<Vec<_>>(),
            n,
            &dev,
        )
        .unwrap();
        let ids: Vec<u32> = (0..n as u32)
            .map(|i| i * 7919 % vocab as u32)
            .step_by(3)
            .chain([5])
            .collect();
        let rows = Arc::new(TokenRows::new(&ids, vocab, hidden, DType::F32, &dev).unwrap());
        rows.delta()
            .set(&f32_of(randn(&[ids.len(), hidden], 7)))
            .unwrap();
        for with_rows in [false, true] {
            let r = with_rows.then_some(&rows);
            let nll = token_nll(h.as_tensor(), &w, r, &targets).unwrap();
            let want = if with_rows {
                composed(h.as_tensor(), &w, &rows, &targets)
            } else {
                token_nll_composed(&matmul_t(h.as_tensor(), &w).unwrap(), &targets).unwrap()
            };
            assert!(
                max_abs_diff(&nll, &want) < 1e-4,
                "{}",
                max_abs_diff(&nll, &want)
            );
            let g = nll.sum_all().unwrap().backward().unwrap();
            let want_g = want.sum_all().unwrap().backward().unwrap();
            let mut vars = vec![h.as_tensor()];
            if with_rows {
                vars.push(rows.delta().as_tensor());
            }
            for v in vars {
                let (a, b) = (g.get(v).unwrap(), want_g.get(v).unwrap());
                assert!(
                    max_abs_diff(a, b) < 1e-4,
                    "rows {with_rows}: {}",
                    max_abs_diff(a, b)
                );
            }
        }
        // With nothing to differentiate, the same losses (no gradient prepared).
        let plain = token_nll(&h.as_tensor().detach(), &w, None, &targets).unwrap();
        let tracked = token_nll(h.as_tensor(), &w, None, &targets).unwrap();
        assert_eq!(max_abs_diff(&plain, &tracked), 0.0);
    }

    #[test]
    fn the_fast_exponential_is_within_two_ulps() {
        let mut worst = 0f64;
        let mut x = 0f32;
        while x > -87.0 {
            let (got, want) = (f64::from(exp_le0(x)), f64::from(x).exp());
            worst = worst.max((got - want).abs() / want);
            x -= 0.001_37;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp_le0(0.0), 1.0);
        assert_eq!(exp_le0(-100.0), 0.0);
        assert_eq!(exp_le0(f32::MIN), 0.0);
    }
}
