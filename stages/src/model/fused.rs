//! candle custom ops with a backward pass written here: RMSNorm, masked softmax, RoPE,
//! cross-entropy and a matmul with a frozen weight, each checked against finite differences and
//! against its composed form.
//!
//! Why not compose them from candle ops: candle 0.11's fused kernels (`rms_norm`,
//! `softmax_last_dim`, `rope`) have no backward, and the composed forms, while correct, are slow
//! and leave garbage behind — candle's backward computes and keeps a gradient for *every* operand
//! of an op, frozen ones included: the `[B, heads, T, T]` constant of an attention mask, RoPE's
//! cos/sin, a norm's weight broadcast to the activations. Kept until the backward ends, those
//! tensors cost more memory than the activations themselves. Each op here has one gradient output
//! per input that can carry one, and nothing else.
//!
//! How they compute: the forward runs candle's own (fused, multi-threaded, CUDA-capable) kernels
//! on the op's inputs, which the op holds as detached handles — candle hands a custom op raw
//! storage, so the result is copied once into the storage the op returns. Where nothing tracks
//! a gradient (generation), the kernels run directly, without the op and its copy. The backward is
//! candle ops on tensors that track nothing, so it builds no graph. Everything runs on any device
//! candle supports; half-precision inputs are computed in f32 as transformers does. The masked
//! softmax is the exception on CUDA: there both directions are forge's own kernels
//! (`kernels/softmax.cu`), which write their result straight into the op's storage.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp1, CustomOp2, D, DType, Layout, Result, Shape, Storage, Tensor,
};

use super::ops::compute_dtype;

/// A computed tensor as storage a custom op can return (contiguous, from offset 0).
fn into_storage(y: Tensor) -> Result<(Storage, Shape)> {
    let y = if y.is_contiguous() && y.layout().start_offset() == 0 {
        y
    } else {
        y.copy()?
    };
    let shape = y.shape().clone();
    let (storage, layout) = y.storage_and_layout();
    let owned = match &*storage {
        Storage::Cpu(s) => Storage::Cpu(s.try_clone(layout)?),
        Storage::Cuda(s) => Storage::Cuda(s.try_clone(layout)?),
        Storage::Metal(_) => candle_core::bail!("Metal is not supported"),
    };
    Ok((owned, shape))
}

pub(super) fn on_cpu(y: Result<Tensor>) -> Result<(CpuStorage, Shape)> {
    match into_storage(y?)? {
        (Storage::Cpu(s), shape) => Ok((s, shape)),
        _ => candle_core::bail!("an op on CPU storage computed elsewhere"),
    }
}

pub(super) fn on_cuda(y: Result<Tensor>) -> Result<(CudaStorage, Shape)> {
    match into_storage(y?)? {
        (Storage::Cuda(s), shape) => Ok((s, shape)),
        _ => candle_core::bail!("an op on CUDA storage computed elsewhere"),
    }
}

/// `[.., 1]` sums over the last dim.
fn sum_last(x: &Tensor) -> Result<Tensor> {
    x.sum_keepdim(D::Minus1)
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `x / sqrt(mean(x²) + eps) · w` over the last dim, differentiable in `x` and (if it is
/// trained) `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let op = RmsNorm {
        x: x.detach(),
        w: w.detach(),
        eps,
    };
    if !x.track_op() && !w.track_op() {
        return op.forward();
    }
    x.apply_op2(w, op)
}

struct RmsNorm {
    x: Tensor,
    w: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self) -> Result<Tensor> {
        if self.x.dtype() == DType::F64 {
            // candle's kernel accumulates in f32: f64 (gradient checks) takes the composed form.
            super::ops::rms_norm_composed(&self.x, &self.w, self.eps)
        } else {
            candle_nn::ops::rms_norm(&self.x.contiguous()?, &self.w, self.eps as f32)
        }
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
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

    /// With `r = 1/sqrt(mean(x²) + eps)`, `n = x·r` and `gn = g·w`:
    /// `dx = r·(gn − n·mean(gn·n))` and `dw = Σ_rows g·n`.
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let up = compute_dtype(x.dtype());
        let (xu, gu, wu) = (
            x.detach().to_dtype(up)?,
            grad.to_dtype(up)?,
            w.detach().to_dtype(up)?,
        );
        let r = (xu.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let n = xu.broadcast_mul(&r)?;
        let gn = gu.broadcast_mul(&wu)?;
        let dot = (&gn * &n)?.mean_keepdim(D::Minus1)?;
        let dx = (gn - n.broadcast_mul(&dot)?)?.broadcast_mul(&r)?;
        let dw = if w.track_op() {
            let h = w.dim(0)?;
            Some((gu * n)?.reshape(((), h))?.sum(0)?.to_dtype(w.dtype())?)
        } else {
            None
        };
        Ok((Some(dx.to_dtype(x.dtype())?), dw))
    }
}

// ---------------------------------------------------------------------------------------------
// Masked softmax

/// Softmax over the last dim of `scores · scale` `[B, H, T, S]` where `mask` `[B or 1, 1, T, S]`
/// (u8) is 1; a masked score counts as the dtype's lowest value (a row with no visible key becomes
/// uniform, not NaN). The gradient reaches unmasked scores only. On CUDA both directions are one
/// kernel each (`kernels/softmax.cu`) that reads and writes the scores in their own dtype.
pub fn masked_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let op = MaskedSoftmax {
        scores: scores.detach(),
        mask: mask.cloned(),
        scale,
    };
    if scores.device().is_cuda() || scores.dtype() == DType::F32 {
        let scores = scores.contiguous()?;
        return match scores.track_op() {
            true => scores.apply_op1(op),
            false => scores.apply_op1_no_bwd(&op),
        };
    }
    if !scores.track_op() {
        return op.composed();
    }
    scores.apply_op1(op)
}

struct MaskedSoftmax {
    scores: Tensor,
    mask: Option<Tensor>,
    scale: f64,
}

impl MaskedSoftmax {
    /// candle's kernels on the upcast, scaled and masked scores (the CPU path for other dtypes
    /// than f32).
    fn composed(&self) -> Result<Tensor> {
        let dtype = self.scores.dtype();
        let up = self
            .scores
            .to_dtype(compute_dtype(dtype))?
            .affine(self.scale, 0.0)?;
        let up = match &self.mask {
            Some(mask) => super::ops::apply_mask(&up, mask)?,
            None => up,
        };
        candle_nn::ops::softmax_last_dim(&up.contiguous()?)?.to_dtype(dtype)
    }
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }
    fn cpu_fwd(&self, scores: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        match scores {
            CpuStorage::F32(_) => cpu::softmax_fwd(scores, layout, self.mask.as_ref(), self.scale),
            _ => on_cpu(self.composed()),
        }
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, scores: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        cuda::softmax_fwd(scores, layout, self.mask.as_ref(), self.scale)
    }

    /// `dx = scale · y·(g − Σ g·y)`, zero where masked.
    fn bwd(&self, x: &Tensor, y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if y.device().is_cuda() || y.dtype() == DType::F32 {
            let backward = MaskedSoftmaxBackward {
                mask: self.mask.clone(),
                scale: self.scale,
            };
            return y
                .contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &backward)
                .map(Some);
        }
        let up = compute_dtype(x.dtype());
        let (yu, gu) = (y.to_dtype(up)?, grad.to_dtype(up)?);
        let dot = sum_last(&(&gu * &yu)?)?;
        let dx = (yu * gu.broadcast_sub(&dot)?)?.affine(self.scale, 0.0)?;
        let dx = match &self.mask {
            Some(mask) => mask
                .broadcast_as(dx.shape())?
                .where_cond(&dx, &dx.zeros_like()?)?,
            None => dx,
        };
        Ok(Some(dx.to_dtype(x.dtype())?))
    }
}

/// The backward of [`MaskedSoftmax`] as one kernel (CUDA, and f32 on a CPU): `(y, g) → dx`.
struct MaskedSoftmaxBackward {
    mask: Option<Tensor>,
    scale: f64,
}

impl CustomOp2 for MaskedSoftmaxBackward {
    fn name(&self) -> &'static str {
        "masked-softmax-backward"
    }
    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        y_layout: &Layout,
        g: &CpuStorage,
        g_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        cpu::softmax_bwd((y, y_layout), (g, g_layout), self.mask.as_ref(), self.scale)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        y: &CudaStorage,
        y_layout: &Layout,
        g: &CudaStorage,
        g_layout: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        cuda::softmax_bwd(y, y_layout, g, g_layout, self.mask.as_ref(), self.scale)
    }
}

/// The values of a contiguous CUDA operand as a view; `what` names it in the error.
#[cfg(feature = "cuda")]
pub(crate) fn cuda_view<'a, T: candle_core::cuda_backend::CudaDType>(
    s: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what} is not contiguous");
    };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

/// As [`cuda_view`], for a tensor's storage (from `Tensor::storage_and_layout`).
#[cfg(feature = "cuda")]
pub(crate) fn storage_view<'a, T: candle_core::cuda_backend::CudaDType>(
    s: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    let Storage::Cuda(s) = s else {
        candle_core::bail!("{what} is not on the GPU");
    };
    cuda_view(s, layout, what)
}

/// The shape facts the kernels take: `(rows, cols, rows_per_batch, t, mask_batches)`.
fn geometry(layout: &Layout, mask: Option<&Tensor>) -> Result<(usize, i32, i32, i32, i32)> {
    let (b, h, t, s) = layout.shape().dims4()?;
    if !layout.is_contiguous() {
        candle_core::bail!("masked softmax: the scores must be contiguous");
    }
    let mask_batches = match mask {
        None => 1,
        Some(m) => {
            let (mb, one, mt, ms) = m.dims4()?;
            if m.dtype() != DType::U8 || one != 1 || mt != t || ms != s || (mb != 1 && mb != b) {
                candle_core::bail!(
                    "masked softmax: a mask {:?} {:?} for scores {:?}",
                    m.dtype(),
                    m.dims(),
                    layout.dims()
                );
            }
            mb
        }
    };
    Ok((
        b * h * t,
        s as i32,
        (h * t) as i32,
        t as i32,
        mask_batches as i32,
    ))
}

/// The masked softmax's f32 kernels on a CPU: one pass over each row each way, rows in
/// parallel, where the composed form makes five passes forward and eight backward, each into a new
/// `[B, H, T, S]` buffer. The geometry and the mask's meaning are the CUDA kernels'.
mod cpu {
    use candle_core::{CpuStorage, Layout, Result, Shape, Storage, Tensor};
    use rayon::prelude::*;

    use crate::model::head_loss::{exp_le0, lanes};
    use crate::model::nf4::cpu_slice;

    /// Runs `f(row, mask row, out row)` over the rows of `out`, in parallel.
    fn rows(
        layout: &Layout,
        mask: Option<&Tensor>,
        f: impl Fn(usize, Option<&[u8]>, &mut [f32]) + Sync,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, cols, per_batch, t, mask_batches) = super::geometry(layout, mask)?;
        let (cols, per_batch, t) = (cols as usize, per_batch as usize, t as usize);
        let mask = mask.map(Tensor::contiguous).transpose()?;
        let guard = mask.as_ref().map(Tensor::storage_and_layout);
        let mask = match &guard {
            Some((storage, layout)) => match &**storage {
                Storage::Cpu(s) => Some(cpu_slice::<u8>(s, layout)?),
                _ => candle_core::bail!("masked softmax: the mask is not on the CPU"),
            },
            None => None,
        };
        let mut out = vec![0f32; rows * cols];
        out.par_chunks_mut(cols).enumerate().for_each(|(r, y)| {
            let m = mask.map(|m| {
                let b = if mask_batches == 1 { 0 } else { r / per_batch };
                let at = (b * t + r % t) * cols;
                &m[at..at + cols]
            });
            f(r, m, y)
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    pub(super) fn softmax_fwd(
        scores: &CpuStorage,
        layout: &Layout,
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<(CpuStorage, Shape)> {
        let x = cpu_slice::<f32>(scores, layout)?;
        let scale = scale as f32;
        rows(layout, mask, |r, m, y| {
            let x = &x[r * y.len()..(r + 1) * y.len()];
            for (y, &x) in y.iter_mut().zip(x) {
                *y = x * scale;
            }
            if let Some(m) = m {
                for (y, &m) in y.iter_mut().zip(m) {
                    *y = if m == 0 { f32::NEG_INFINITY } else { *y };
                }
            }
            let max = lanes(y, f32::NEG_INFINITY, f32::max);
            if max == f32::NEG_INFINITY {
                // Every key masked: uniform, as with every score at the lowest value.
                y.fill(1.0 / y.len() as f32);
                return;
            }
            for y in y.iter_mut() {
                *y = exp_le0(*y - max);
            }
            let inv = 1.0 / lanes(y, 0.0, |a, b| a + b);
            for y in y.iter_mut() {
                *y *= inv;
            }
        })
    }

    pub(super) fn softmax_bwd(
        (y, y_layout): (&CpuStorage, &Layout),
        (g, g_layout): (&CpuStorage, &Layout),
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<(CpuStorage, Shape)> {
        if y_layout.shape() != g_layout.shape() {
            candle_core::bail!("masked softmax backward: y and its gradient differ in shape");
        }
        let (y, g) = (
            cpu_slice::<f32>(y, y_layout)?,
            cpu_slice::<f32>(g, g_layout)?,
        );
        let scale = scale as f32;
        rows(y_layout, mask, |r, m, dx| {
            let at = r * dx.len()..(r + 1) * dx.len();
            let (y, g) = (&y[at.clone()], &g[at]);
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *dx = y * g;
            }
            let dot = lanes(dx, 0.0, |a, b| a + b);
            for ((dx, &y), &g) in dx.iter_mut().zip(y).zip(g) {
                *dx = scale * y * (g - dot);
            }
            if let Some(m) = m {
                for (dx, &m) in dx.iter_mut().zip(m) {
                    *dx = if m == 0 { 0.0 } else { *dx };
                }
            }
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::WrapErr;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::{CudaStorage, DType, Layout, Result, Shape, Tensor};
    use half::{bf16, f16};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/softmax.ptx"));

    /// Runs `launch` with the mask's slice, if there is a mask.
    fn with_mask<R>(
        mask: Option<&Tensor>,
        launch: impl FnOnce(Option<&CudaView<'_, u8>>) -> Result<R>,
    ) -> Result<R> {
        let Some(m) = mask else {
            return launch(None);
        };
        let m = m.contiguous()?;
        let (storage, layout) = m.storage_and_layout();
        launch(Some(&super::storage_view(
            &storage,
            layout,
            "masked softmax: the mask",
        )?))
    }

    pub(super) fn softmax_fwd(
        scores: &CudaStorage,
        layout: &Layout,
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<(CudaStorage, Shape)> {
        launch("masked_softmax_fwd", &[(scores, layout)], mask, scale)
    }

    pub(super) fn softmax_bwd(
        y: &CudaStorage,
        y_layout: &Layout,
        g: &CudaStorage,
        g_layout: &Layout,
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<(CudaStorage, Shape)> {
        if y_layout.shape() != g_layout.shape() {
            candle_core::bail!("masked softmax backward: y and its gradient differ in shape");
        }
        launch(
            "masked_softmax_bwd",
            &[(y, y_layout), (g, g_layout)],
            mask,
            scale,
        )
    }

    /// Runs kernel `{name}_{dtype}` of kernels/softmax.cu, whose arguments are `inputs` (scores
    /// shaped, one dtype), the mask (or null), the output, then the geometry and the scale.
    fn launch(
        name: &str,
        inputs: &[(&CudaStorage, &Layout)],
        mask: Option<&Tensor>,
        scale: f64,
    ) -> Result<(CudaStorage, Shape)> {
        fn run<T: candle_core::cuda_backend::CudaDType + DeviceRepr>(
            kernel: &str,
            inputs: &[(&CudaStorage, &Layout)],
            mask: Option<&Tensor>,
            scale: f32,
        ) -> Result<CudaStorage> {
            let (first, layout) = inputs[0];
            let dev = first.device();
            let (rows, cols, per_batch, t, mask_batches) = super::geometry(layout, mask)?;
            let views = inputs
                .iter()
                .map(|(s, l)| super::cuda_view::<T>(s, l, "masked softmax: an input"))
                .collect::<Result<Vec<_>>>()?;
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<T>(rows * cols as usize)? };
            let func = dev.get_or_load_custom_func(kernel, "forge_softmax", PTX)?;
            // The kernels read no mask where its pointer is null.
            const NULL: u64 = 0;
            with_mask(mask, |m| {
                let mut b = func.builder();
                for v in &views {
                    b.arg(v);
                }
                match m {
                    Some(m) => b.arg(m),
                    None => b.arg(&NULL),
                };
                b.arg(&out).arg(&cols).arg(&per_batch);
                b.arg(&t).arg(&mask_batches).arg(&scale);
                // SAFETY: arguments match `{name}_*` in kernels/softmax.cu.
                unsafe { b.launch(config(rows)) }.w()?;
                Ok(())
            })?;
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }
        let (first, layout) = inputs[0];
        let scale = scale as f32;
        let out = match first.dtype() {
            DType::F32 => run::<f32>(&format!("{name}_f32"), inputs, mask, scale)?,
            DType::BF16 => run::<bf16>(&format!("{name}_bf16"), inputs, mask, scale)?,
            DType::F16 => run::<f16>(&format!("{name}_f16"), inputs, mask, scale)?,
            other => candle_core::bail!("{name} of {other:?}"),
        };
        Ok((out, layout.shape().clone()))
    }

    /// One block of 256 threads per row.
    fn config(rows: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RoPE

/// Rotates `x` `[B, H, T, D]` by the tables `[B, T, D/2]` (half-split layout).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    x.apply_op1(Rope {
        x: x.detach(),
        cos: cos.clone(),
        sin: sin.clone(),
    })
}

struct Rope {
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        on_cpu(candle_nn::rotary_emb::rope(
            &self.x.contiguous()?,
            &self.cos,
            &self.sin,
        ))
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        on_cuda(candle_nn::rotary_emb::rope(
            &self.x.contiguous()?,
            &self.cos,
            &self.sin,
        ))
    }

    /// A rotation's transpose is the rotation by the opposite angle: `rope(g, cos, −sin)`.
    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(candle_nn::rotary_emb::rope(
            &grad.contiguous()?,
            &self.cos,
            &self.sin.neg()?,
        )?))
    }
}

// ---------------------------------------------------------------------------------------------
// Frozen matmul

/// Produces a frozen weight `[out, in]` when it is needed.
pub type WeightFn = Arc<dyn Fn() -> Result<Tensor> + Send + Sync>;

/// `x [.., in] · Wᵀ` for a frozen `W`, with a gradient for `x` only.
///
/// candle's matmul backward computes and keeps the gradient of both operands: through a frozen
/// weight that is a wasted matmul and a weight-sized tensor per projection per step (for a 4B
/// model, gigabytes). This op's backward computes `grad · W` alone. `weight` is called in the
/// forward and again in the backward, so a quantized base (NF4) can dequantize on the fly and is
/// never kept dequantized.
pub fn frozen_matmul_t(x: &Tensor, weight: WeightFn) -> Result<Tensor> {
    x.apply_op1_arc(Arc::new(Box::new(FrozenMatmul {
        x: x.detach(),
        weight,
    })))
}

struct FrozenMatmul {
    x: Tensor,
    weight: WeightFn,
}

impl FrozenMatmul {
    fn forward(&self) -> Result<Tensor> {
        super::linear::matmul_t(&self.x, &(self.weight)()?)
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        on_cpu(self.forward())
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        on_cuda(self.forward())
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let w = (self.weight)()?;
        let out = w.dim(0)?;
        let g = grad.reshape(((), out))?.matmul(&w)?;
        Ok(Some(g.reshape(x.shape())?))
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// Per-row `-log softmax(logits)[target]`: `[N, V]`, targets `[N]` (u32) → `[N]`.
///
/// With the real vocabulary (151,936) one 512-token row has 78 M logits; the composed form's
/// forward and backward make about fifteen passes over them plus as many full-size temporaries
/// kept by candle's backward; this op makes five and keeps none.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    if targets.dims1()? != n {
        candle_core::bail!(
            "cross-entropy: {n} rows of logits, {} targets",
            targets.dims1()?
        );
    }
    let max = targets.max(0)?.to_dtype(DType::U32)?.to_scalar::<u32>()?;
    if n > 0 && max as usize >= vocab {
        candle_core::bail!("cross-entropy: target {max} is outside the vocabulary of {vocab}");
    }
    logits.apply_op1(CrossEntropy {
        logits: logits.detach(),
        targets: targets.unsqueeze(1)?.contiguous()?,
    })
}

struct CrossEntropy {
    logits: Tensor,
    /// `[N, 1]` u32.
    targets: Tensor,
}

impl CrossEntropy {
    fn forward(&self) -> Result<Tensor> {
        let x = self.logits.to_dtype(compute_dtype(self.logits.dtype()))?;
        let max = x.max_keepdim(D::Minus1)?;
        let lse = (sum_last(&x.broadcast_sub(&max)?.exp()?)?.log()? + max)?;
        let picked = x.gather(&self.targets, 1)?;
        (lse - picked)?.squeeze(1)?.to_dtype(self.logits.dtype())
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        on_cpu(self.forward())
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        on_cuda(self.forward())
    }

    /// `dx = (softmax(x) − onehot(target))·g`.
    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let up = compute_dtype(x.dtype());
        let g = grad.to_dtype(up)?.unsqueeze(1)?;
        let probs = candle_nn::ops::softmax_last_dim(&x.detach().to_dtype(up)?.contiguous()?)?;
        let dx = probs
            .broadcast_mul(&g)?
            .scatter_add(&self.targets, &g.neg()?, 1)?;
        Ok(Some(dx.to_dtype(x.dtype())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::model::ops::tests::{check_grad, max_abs_diff, randn};
    use crate::model::ops::{apply_mask, rms_norm_composed, softmax_composed};

    /// Checks op `f` against `reference` (the composed form) in value and gradient, and against
    /// finite differences, for the inputs `vars`; `probe` weights the outputs.
    fn check(
        vars: &[&Var],
        f: &dyn Fn() -> Tensor,
        reference: &dyn Fn() -> Tensor,
        probe: &Tensor,
    ) {
        let (y, r) = (f(), reference());
        assert!(
            max_abs_diff(&y, &r) < 1e-12,
            "value differs by {}",
            max_abs_diff(&y, &r)
        );
        let loss = |t: Tensor| (t * probe).unwrap().sum_all().unwrap();
        let (gy, gr) = (loss(y).backward().unwrap(), loss(r).backward().unwrap());
        let scalar = || loss(f()).to_scalar::<f64>().unwrap();
        for v in vars {
            let (a, b) = (
                gy.get(v.as_tensor()).unwrap(),
                gr.get(v.as_tensor()).unwrap(),
            );
            assert!(
                max_abs_diff(a, b) < 1e-12,
                "gradient differs by {}",
                max_abs_diff(a, b)
            );
            let coords: Vec<usize> = (0..v.elem_count()).step_by(3).collect();
            let worst = check_grad(v, a, &coords, 1e-5, 1e-4, &scalar);
            assert!(worst < 1e-6, "worst relative error {worst}");
        }
        // Nothing but the inputs' gradients is left behind (plus the probe's: candle keeps one for
        // both operands of the test's own multiplication).
        assert_eq!(gy.get_ids().count(), vars.len() + 1);
    }

    #[test]
    fn rms_norm_matches_its_composed_form_and_finite_differences() {
        let x = Var::from_tensor(&randn(&[2, 3, 8], 1)).unwrap();
        let w = Var::from_tensor(&randn(&[8], 2)).unwrap();
        let probe = randn(&[2, 3, 8], 3);
        check(
            &[&x, &w],
            &|| rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap(),
            &|| rms_norm_composed(x.as_tensor(), w.as_tensor(), 1e-6).unwrap(),
            &probe,
        );
        // A frozen weight gets no gradient at all.
        let frozen = randn(&[8], 2);
        let y = rms_norm(x.as_tensor(), &frozen, 1e-6).unwrap();
        let grads = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(grads.get_ids().count(), 2, "x and the probe");
    }

    #[test]
    fn masked_softmax_matches_its_composed_form_and_finite_differences() {
        let dev = Device::Cpu;
        let s = Var::from_tensor(&(randn(&[2, 2, 3, 4], 4) * 3.0).unwrap()).unwrap();
        // Row 0 of batch 1 sees no key at all.
        let mask = Tensor::new(
            &[
                [[[1u8, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]],
                [[[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]]],
            ],
            &dev,
        )
        .unwrap();
        let probe = randn(&[2, 2, 3, 4], 5);
        check(
            &[&s],
            &|| masked_softmax(s.as_tensor(), Some(&mask), 0.7).unwrap(),
            &|| {
                let scaled = (s.as_tensor() * 0.7).unwrap();
                softmax_composed(&apply_mask(&scaled, &mask).unwrap()).unwrap()
            },
            &probe,
        );
        let y = masked_softmax(s.as_tensor(), Some(&mask), 0.7).unwrap();
        let uniform = y.get(1).unwrap().get(0).unwrap().get(0).unwrap();
        assert_eq!(uniform.to_vec1::<f64>().unwrap(), [0.25; 4]);
    }

    /// The f32 CPU kernels against the composed form in f64: every mask shape, a row that sees
    /// nothing, rows long enough for several lanes' worth.
    #[test]
    fn masked_softmax_in_f32_on_the_cpu_matches_the_composed_form() {
        let dev = Device::Cpu;
        let (b, h, t, s) = (2, 3, 4, 37);
        let scores = (randn(&[b, h, t, s], 14) * 4.0).unwrap();
        let probe = randn(&[b, h, t, s], 15);
        let keys: Vec<u8> = (0..b * t * s)
            .map(|i| u8::from(i % 5 != 2 && (i / s) % t * 9 >= i % s))
            .collect();
        let mut per_batch = Tensor::from_vec(keys, (b, 1, t, s), &dev).unwrap();
        // Query 0 of batch 1 sees no key at all.
        per_batch = per_batch
            .slice_assign(
                &[1..2, 0..1, 0..1, 0..s],
                &Tensor::zeros((1, 1, 1, s), DType::U8, &dev).unwrap(),
            )
            .unwrap();
        let shared = per_batch.narrow(0, 0, 1).unwrap();
        for mask in [Some(&per_batch), Some(&shared), None] {
            let x = Var::from_tensor(&scores).unwrap();
            let run = |y: Tensor| {
                let grads = (&y * &probe)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let dx = grads
                    .get(x.as_tensor())
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap();
                (y.to_dtype(DType::F64).unwrap(), dx)
            };
            let (got_y, got_dx) = run(masked_softmax(x.as_tensor(), mask, 0.3).unwrap());
            let x64 = x.as_tensor().to_dtype(DType::F64).unwrap();
            let scaled = (x64 * 0.3).unwrap();
            let masked = match mask {
                Some(m) => apply_mask(&scaled, m).unwrap(),
                None => scaled,
            };
            let (want_y, want_dx) = run(softmax_composed(&masked).unwrap());
            let (ey, edx) = (
                max_abs_diff(&got_y, &want_y),
                max_abs_diff(&got_dx, &want_dx),
            );
            assert!(
                ey < 1e-6 && edx < 1e-6,
                "{:?}: {ey} {edx}",
                mask.map(|m| m.dims().to_vec())
            );
        }
        // Without a gradient to track, the same kernel: the same bits.
        let tracked = masked_softmax(&Var::from_tensor(&scores).unwrap(), Some(&per_batch), 0.3);
        let plain = masked_softmax(&scores, Some(&per_batch), 0.3).unwrap();
        assert_eq!(max_abs_diff(&tracked.unwrap(), &plain), 0.0);
    }

    /// The device check of `kernels/softmax.cu`: values and gradients as on the CPU, for every
    /// mask shape, rows longer than a block, rows that see nothing, in f32 and bf16.
    #[cfg(feature = "cuda")]
    #[test]
    fn masked_softmax_on_cuda_matches_the_cpu() {
        let gpu = Device::new_cuda(0).expect("the cuda feature's tests need a GPU");
        let (b, h, t, s) = (2, 3, 5, 700);
        let scores = (randn(&[b, h, t, s], 12) * 4.0).unwrap();
        let probe = randn(&[b, h, t, s], 13);
        let keys: Vec<u8> = (0..b * t * s)
            .map(|i| u8::from(i % 7 != 3 && (i / s) % t <= i % s / 100))
            .collect();
        let per_batch = Tensor::from_vec(keys, (b, 1, t, s), &Device::Cpu).unwrap();
        // Query 0 of batch 1 sees no key at all.
        let per_batch = per_batch
            .slice_assign(
                &[1..2, 0..1, 0..1, 0..s],
                &Tensor::zeros((1, 1, 1, s), DType::U8, &Device::Cpu).unwrap(),
            )
            .unwrap();
        let shared = per_batch.narrow(0, 0, 1).unwrap();
        for mask in [Some(&per_batch), Some(&shared), None] {
            for (dtype, tol) in [(DType::F32, 1e-6), (DType::BF16, 2e-2)] {
                let run = |dev: &Device| {
                    let x =
                        Var::from_tensor(&scores.to_dtype(dtype).unwrap().to_device(dev).unwrap())
                            .unwrap();
                    let m = mask.map(|m| m.to_device(dev).unwrap());
                    let y = masked_softmax(x.as_tensor(), m.as_ref(), 0.3).unwrap();
                    let p = probe.to_dtype(dtype).unwrap().to_device(dev).unwrap();
                    let grads = (&y * p).unwrap().sum_all().unwrap().backward().unwrap();
                    let dx = grads.get(x.as_tensor()).unwrap().clone();
                    let cpu = |t: &Tensor| {
                        t.to_device(&Device::Cpu)
                            .unwrap()
                            .to_dtype(DType::F64)
                            .unwrap()
                    };
                    (cpu(&y), cpu(&dx))
                };
                let (want_y, want_dx) = run(&Device::Cpu);
                let (got_y, got_dx) = run(&gpu);
                let (ey, edx) = (
                    max_abs_diff(&got_y, &want_y),
                    max_abs_diff(&got_dx, &want_dx),
                );
                println!(
                    "mask {:?} {dtype:?}: probs differ by {ey:.1e}, gradients by {edx:.1e}",
                    mask.map(|m| m.dims().to_vec())
                );
                assert!(ey < tol && edx < tol, "{dtype:?}: {ey} {edx}");
            }
        }
    }

    #[test]
    fn rope_matches_its_composed_form_and_finite_differences() {
        let x = Var::from_tensor(&randn(&[2, 3, 4, 6], 6)).unwrap();
        let positions = Tensor::new(&[[0u32, 1, 5, 9], [3, 0, 0, 1]], &Device::Cpu).unwrap();
        let (cos, sin) = crate::model::rope::Rope::new(6, 100.0)
            .tables(&positions, DType::F64)
            .unwrap();
        let probe = randn(&[2, 3, 4, 6], 7);
        check(
            &[&x],
            &|| rope(x.as_tensor(), &cos, &sin).unwrap(),
            &|| crate::model::rope::apply_composed(x.as_tensor(), &cos, &sin).unwrap(),
            &probe,
        );
    }

    #[test]
    fn cross_entropy_matches_its_composed_form_and_finite_differences() {
        let x = Var::from_tensor(&(randn(&[5, 40], 8) * 4.0).unwrap()).unwrap();
        let targets = Tensor::new(&[0u32, 39, 17, 17, 20], &Device::Cpu).unwrap();
        let probe = randn(&[5], 9);
        check(
            &[&x],
            &|| cross_entropy(x.as_tensor(), &targets).unwrap(),
            &|| crate::model::ops::token_nll_composed(x.as_tensor(), &targets).unwrap(),
            &probe,
        );
        let bad = Tensor::new(&[0u32, 40, 0, 0, 0], &Device::Cpu).unwrap();
        assert!(cross_entropy(x.as_tensor(), &bad).is_err());
    }

    #[test]
    fn half_precision_inputs_are_computed_in_f32() {
        let x = randn(&[3, 16], 10);
        let w = randn(&[16], 11);
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            let (xh, wh) = (x.to_dtype(dtype).unwrap(), w.to_dtype(dtype).unwrap());
            let a = rms_norm(&xh, &wh, 1e-6).unwrap();
            assert_eq!(a.dtype(), dtype);
            let b = rms_norm_composed(&x, &w, 1e-6).unwrap();
            let tol = if dtype == DType::F32 { 1e-5 } else { 5e-2 };
            assert!(
                max_abs_diff(&a, &b) < tol,
                "{dtype:?}: {}",
                max_abs_diff(&a, &b)
            );
        }
    }
}
