//! CUDA kernels for decoding one row (`kernels/decode.cu`): projections `x·Wᵀ` and SwiGLU's
//! `silu(x·Gᵀ) · (x·Uᵀ)` (one pass over both weights) of one bf16 row, and the greedy argmax.
//!
//! Why: decoding one row reads every weight once per token, so its speed is the memory bandwidth
//! its matrix-vector products reach; cuBLAS's kernels for this shape reached 2.2-2.9 TB/s of an
//! H100's ~3.35 in bench/RESULTS.md's profile, and SwiGLU cost two products plus two elementwise
//! kernels. candle's argmax takes ~100 µs per 151,936-token row. [`applies`] says when the
//! products run here; everything else (training, prefill, batches, other dtypes and devices)
//! stays on candle's matmul.
//!
//! [`attention`]: one query row over a decode graph's fixed-capacity KV cache, masked by the
//! current slot read on the device, in two launches (parts over spans of slots, then their merge)
//! instead of candle's two matmuls and softmax (~10 µs a layer on an H100). [`add_rms_norm`]: a
//! residual add and the RMSNorm after it as one kernel. [`qkv_norm_rope_write`]: q/k norms, RoPE
//! and the KV cache writes of one token as one kernel instead of six.

use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Result, Shape, Tensor};

/// Whether [`project`] and [`swiglu`] compute `x · wᵀ` for `x [.., k]`: one row of bf16 on CUDA
/// that tracks no gradient, and a contiguous bf16 `w [n, k]` with `k` a multiple of 8.
pub fn applies(x: &Tensor, w: &Tensor) -> bool {
    let aligned = |t: &Tensor| t.is_contiguous() && t.layout().start_offset().is_multiple_of(8);
    cfg!(feature = "cuda")
        && x.device().is_cuda()
        && x.dtype() == DType::BF16
        && w.dtype() == DType::BF16
        && !x.track_op()
        && x.elem_count() == w.dim(1).unwrap_or(0)
        && w.rank() == 2
        && x.elem_count().is_multiple_of(8)
        && aligned(x)
        && aligned(w)
}

/// `x [.., k] · wᵀ` → `[.., n]` (see [`applies`]).
pub fn project(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    project_stacked(x, &[w])
}

/// `x · [w0; w1; …]ᵀ` → `[.., n0 + n1 + …]` for up to three weights `[n_i, k]` (each as in
/// [`applies`]): q, k and v in one launch.
pub fn project_stacked(x: &Tensor, weights: &[&Tensor]) -> Result<Tensor> {
    if weights.is_empty() || weights.len() > 3 {
        candle_core::bail!("gemv stacks 1 to 3 weights, not {}", weights.len());
    }
    x.apply_op1_no_bwd(&Gemv {
        weights: weights.iter().map(|&w| w.clone()).collect(),
        swiglu: false,
    })
}

/// `silu(x · gᵀ) · (x · uᵀ)` → `[.., n]` for `g`, `u` `[n, k]` (see [`applies`], for both).
pub fn swiglu(x: &Tensor, g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if g.dims() != u.dims() {
        candle_core::bail!("swiglu: gate {:?} and up {:?} differ", g.dims(), u.dims());
    }
    x.apply_op1_no_bwd(&Gemv {
        weights: vec![g.clone(), u.clone()],
        swiglu: true,
    })
}

/// The index of each row's largest logit: `[.., vocab]` → u32 `[..]`, the first of equals (as
/// candle's argmax picks).
pub fn argmax(logits: &Tensor) -> Result<Tensor> {
    if cfg!(feature = "cuda")
        && logits.device().is_cuda()
        && matches!(logits.dtype(), DType::F32 | DType::BF16)
    {
        return logits.contiguous()?.apply_op1_no_bwd(&Argmax);
    }
    logits.argmax(D::Minus1)
}

/// Whether [`add_rms_norm`] computes `x + delta` and its RMSNorm with `w`: one row of bf16 on
/// CUDA (`x`, `delta` of one shape, `[.., n]` with `n` elements in all), no gradient, contiguous,
/// and a contiguous bf16 `w [n]`.
pub fn add_norm_applies(x: &Tensor, delta: &Tensor, w: &Tensor) -> bool {
    let n = w.elem_count();
    cfg!(feature = "cuda")
        && x.device().is_cuda()
        && [x, delta, w]
            .iter()
            .all(|t| t.dtype() == DType::BF16 && t.is_contiguous())
        && !x.track_op()
        && !delta.track_op()
        && !w.track_op()
        && w.rank() == 1
        && n > 0
        && x.dims() == delta.dims()
        && x.elem_count() == n
        && x.dims().last() == Some(&n)
}

/// `(x + delta, rms_norm(x + delta) · w)` in one kernel (see [`add_norm_applies`]): the sum
/// rounded to bf16 as a separate add would, the norm in f32 and rounded once, as candle's
/// `rms_norm` does. Both are views of one `[2, n]` buffer.
pub fn add_rms_norm(x: &Tensor, delta: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let both = x.apply_op2_no_bwd(
        delta,
        &AddRmsNorm {
            w: w.clone(),
            eps: eps as f32,
        },
    )?;
    Ok((
        both.get(0)?.reshape(x.shape())?,
        both.get(1)?.reshape(x.shape())?,
    ))
}

/// [`add_rms_norm`]'s op: `x` and `delta` are the operands.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct AddRmsNorm {
    w: Tensor,
    eps: f32,
}

impl candle_core::CustomOp2 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("add-rms-norm runs on CUDA only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        delta: &candle_core::CudaStorage,
        delta_layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::bail;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{CudaStorage, WrapErr};

        use super::fused::{cuda_view, storage_view};
        use half::bf16;

        let n = self.w.elem_count();
        let dev = x.device();
        let xs = cuda_view::<bf16>(x, x_layout, "add-rms-norm: x")?;
        let ds = cuda_view::<bf16>(delta, delta_layout, "add-rms-norm: delta")?;
        if xs.len() != n || ds.len() != n {
            bail!(
                "add-rms-norm: rows of {} and {} for a weight of {n}",
                xs.len(),
                ds.len()
            );
        }
        let (w, w_layout) = self.w.storage_and_layout();
        let ws = storage_view::<bf16>(&w, w_layout, "add-rms-norm: the weight")?;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(2 * n)? };
        let func = dev.get_or_load_custom_func("add_rms_norm_bf16", MODULE, PTX)?;
        let (n_arg, eps) = (n as i32, self.eps);
        let mut b = func.builder();
        b.arg(&xs).arg(&ds).arg(&ws).arg(&out).arg(&n_arg).arg(&eps);
        let config = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `add_rms_norm_bf16` in kernels/decode.cu.
        unsafe { b.launch(config) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((2, n)),
        ))
    }
}

/// One token's projected queries, keys and values, and what [`qkv_norm_rope_write`] does to them.
pub struct QkvStep<'a> {
    /// `[1, 1, heads · d]`, `[1, 1, kv_heads · d]`, `[1, 1, kv_heads · d]`.
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// Per-head RMSNorm weights `[d]` of q and k (Qwen3), or none.
    pub norms: Option<(&'a Tensor, &'a Tensor)>,
    pub eps: f64,
    /// The slot's RoPE tables, `d / 2` values each.
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// u32, the slot first (as [`attention`]'s).
    pub index: &'a Tensor,
    /// `[1, kv_heads, capacity, d]`, written at the slot.
    pub k_cache: &'a Tensor,
    pub v_cache: &'a Tensor,
}

impl QkvStep<'_> {
    /// Whether [`qkv_norm_rope_write`] applies: bf16 on CUDA, no gradient, everything
    /// contiguous, `d` a power of two from 8 to 256, head counts that match the cache.
    pub fn applies(&self) -> bool {
        let Ok((1, kvh, _, d)) = self.k_cache.dims4() else {
            return false;
        };
        let mut tensors = vec![
            self.q,
            self.k,
            self.v,
            self.cos,
            self.sin,
            self.k_cache,
            self.v_cache,
        ];
        if let Some((qw, kw)) = self.norms {
            tensors.extend([qw, kw]);
        }
        let norms_fit = self
            .norms
            .is_none_or(|(qw, kw)| qw.elem_count() == d && kw.elem_count() == d);
        cfg!(feature = "cuda")
            && self.q.device().is_cuda()
            && tensors
                .iter()
                .all(|t| t.dtype() == DType::BF16 && t.is_contiguous() && !t.track_op())
            && d.is_power_of_two()
            && (8..=256).contains(&d)
            && self.v_cache.dims() == self.k_cache.dims()
            && self.q.elem_count() > 0
            && self.q.elem_count().is_multiple_of(d * kvh)
            && self.k.elem_count() == kvh * d
            && self.v.elem_count() == kvh * d
            && self.cos.elem_count() == d / 2
            && self.sin.elem_count() == d / 2
            && norms_fit
            && self.index.dtype() == DType::U32
            && self.index.is_contiguous()
            && self.index.elem_count() > 0
    }
}

/// q and k normed per head (when [`QkvStep::norms`]) and rotated; k and v written into the
/// caches at the slot; returns q `[1, heads, 1, d]`. One kernel instead of two norms, two
/// rotations and two scatters (see [`QkvStep::applies`]).
pub fn qkv_norm_rope_write(step: &QkvStep<'_>) -> Result<Tensor> {
    let d = step.k_cache.dim(3)?;
    let heads = step.q.elem_count() / d;
    let q = step.q.apply_op1_no_bwd(&QkvNormRopeWrite {
        k: step.k.clone(),
        v: step.v.clone(),
        norms: step.norms.map(|(a, b)| (a.clone(), b.clone())),
        eps: step.eps as f32,
        cos: step.cos.clone(),
        sin: step.sin.clone(),
        index: step.index.clone(),
        k_cache: step.k_cache.clone(),
        v_cache: step.v_cache.clone(),
    })?;
    q.reshape((1, heads, 1, d))
}

/// [`qkv_norm_rope_write`]'s op: q is the operand.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct QkvNormRopeWrite {
    k: Tensor,
    v: Tensor,
    norms: Option<(Tensor, Tensor)>,
    eps: f32,
    cos: Tensor,
    sin: Tensor,
    index: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
}

impl CustomOp1 for QkvNormRopeWrite {
    fn name(&self) -> &'static str {
        "qkv-norm-rope-write"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("qkv-norm-rope-write runs on CUDA only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{CudaStorage, WrapErr};

        use super::fused::{cuda_view, storage_view};
        use half::bf16;

        let (_, kvh, cap, d) = self.k_cache.dims4()?;
        let dev = q.device();
        let qs = cuda_view::<bf16>(q, layout, "qkv-norm-rope-write: q")?;
        let heads = qs.len() / d;
        // Absent norms: q and k stand in, unread.
        let (qw, kw) = match &self.norms {
            Some((a, b)) => (a, b),
            None => (&self.k, &self.k),
        };
        let bf16s = [
            &self.k,
            &self.v,
            qw,
            kw,
            &self.cos,
            &self.sin,
            &self.k_cache,
            &self.v_cache,
        ];
        let guards: Vec<_> = bf16s.iter().map(|t| t.storage_and_layout()).collect();
        let views = guards
            .iter()
            .map(|(s, l)| storage_view::<bf16>(s, l, "qkv-norm-rope-write: an operand"))
            .collect::<Result<Vec<_>>>()?;
        let (index, index_layout) = self.index.storage_and_layout();
        let index = storage_view::<u32>(&index, index_layout, "qkv-norm-rope-write: the slot")?;
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(heads * d)? };
        let func = dev.get_or_load_custom_func("qkv_norm_rope_write_bf16", MODULE, PTX)?;
        let (h_arg, kvh_arg, cap_arg) = (heads as i32, kvh as i32, cap as i32);
        let (has_norm, eps) = (i32::from(self.norms.is_some()), self.eps);
        let mut b = func.builder();
        b.arg(&qs);
        for view in &views[..6] {
            b.arg(view);
        }
        b.arg(&index).arg(&out);
        // The caches are written in place through these views (the decode graph's buffers, as
        // `scatter_set` writes them): nothing else reads them during this launch.
        b.arg(&views[6]).arg(&views[7]);
        b.arg(&h_arg)
            .arg(&kvh_arg)
            .arg(&cap_arg)
            .arg(&has_norm)
            .arg(&eps);
        let config = LaunchConfig {
            grid_dim: ((heads + 2 * kvh) as u32, 1, 1),
            block_dim: (d as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `qkv_norm_rope_write_bf16` in kernels/decode.cu.
        unsafe { b.launch(config) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(heads * d),
        ))
    }
}

/// Head sizes the attention kernel is built for.
const ATTENTION_HEAD_DIMS: [usize; 6] = [8, 16, 32, 64, 128, 256];

/// Whether [`attention`] computes the attention of `q [1, heads, 1, d]` over a fixed-capacity
/// cache `k`, `v [1, kv_heads, capacity, d]` (a decode graph's): bf16 on CUDA, no gradient,
/// contiguous and 16-byte aligned, `heads` a multiple of `kv_heads`, `d` one of 8, 16, …, 256,
/// and `index` contiguous u32 whose first element is the current slot.
pub fn attention_applies(q: &Tensor, k: &Tensor, v: &Tensor, index: &Tensor) -> bool {
    let aligned = |t: &Tensor| t.is_contiguous() && t.layout().start_offset().is_multiple_of(8);
    let (Ok((1, h, 1, d)), Ok((1, kvh, cap, dk))) = (q.dims4(), k.dims4()) else {
        return false;
    };
    cfg!(feature = "cuda")
        && q.device().is_cuda()
        && [q, k, v]
            .iter()
            .all(|t| t.dtype() == DType::BF16 && aligned(t))
        && !q.track_op()
        && v.dims() == k.dims()
        && dk == d
        && ATTENTION_HEAD_DIMS.contains(&d)
        && kvh > 0
        && h.is_multiple_of(kvh)
        && cap > 0
        && index.dtype() == DType::U32
        && index.is_contiguous()
        && index.elem_count() > 0
}

/// `softmax(scale · q·kᵀ, slots ≤ index[0]) · v` → `[1, heads, 1, d]` for one query row over a
/// fixed-capacity cache, query head `i` reading KV head `i / (heads / kv_heads)` (see
/// [`attention_applies`]); f32 inside.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, index: &Tensor, scale: f64) -> Result<Tensor> {
    q.apply_op1_no_bwd(&Attention {
        k: k.clone(),
        v: v.clone(),
        index: index.clone(),
        scale: scale as f32,
    })
}

/// [`attention`]'s op: `q` is the operand.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Attention {
    k: Tensor,
    v: Tensor,
    index: Tensor,
    scale: f32,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "decode-attention"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("decode attention runs on CUDA only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{CudaStorage, WrapErr};

        use super::fused::{cuda_view, storage_view};
        use half::bf16;

        const THREADS: usize = 256;
        const PER: usize = 4;

        let (_, h, _, d) = layout.shape().dims4()?;
        let (_, kvh, cap, _) = self.k.dims4()?;
        let dev = q.device();
        let q = cuda_view::<bf16>(q, layout, "decode attention: q")?;
        let (k, v, index) = (
            self.k.storage_and_layout(),
            self.v.storage_and_layout(),
            self.index.storage_and_layout(),
        );
        let kk = &storage_view::<bf16>(&k.0, k.1, "decode attention: the key cache")?;
        let vv = &storage_view::<bf16>(&v.0, v.1, "decode attention: the value cache")?;
        let ii = storage_view::<u32>(&index.0, index.1, "decode attention: the slot")?;
        let span = THREADS / (d / 8) * PER;
        let splits = cap.div_ceil(span);
        // SAFETY: every block writes its part; the combine writes every output.
        let part = unsafe { dev.alloc::<f32>(h * splits * (d + 2))? };
        let out = unsafe { dev.alloc::<bf16>(h * d)? };
        let func = dev.get_or_load_custom_func(&format!("attention_part_bf16_{d}"), MODULE, PTX)?;
        let (cap_arg, group_arg, scale) = (cap as i32, (h / kvh) as i32, self.scale);
        let mut b = func.builder();
        b.arg(&q).arg(kk).arg(vv).arg(&ii).arg(&part);
        b.arg(&cap_arg).arg(&group_arg).arg(&scale);
        let config = LaunchConfig {
            grid_dim: (h as u32, splits as u32, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `attention_part_bf16_*` in kernels/decode.cu.
        unsafe { b.launch(config) }.w()?;
        let func =
            dev.get_or_load_custom_func(&format!("attention_combine_bf16_{d}"), MODULE, PTX)?;
        let splits_arg = splits as i32;
        let mut b = func.builder();
        b.arg(&part).arg(&out).arg(&splits_arg);
        let config = LaunchConfig {
            grid_dim: (h as u32, 1, 1),
            block_dim: (d as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `attention_combine_bf16_*` in kernels/decode.cu.
        unsafe { b.launch(config) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            layout.shape().clone(),
        ))
    }
}

/// Stacked projections, or (`swiglu`) SwiGLU's gate and up.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Gemv {
    weights: Vec<Tensor>,
    swiglu: bool,
}

impl CustomOp1 for Gemv {
    fn name(&self) -> &'static str {
        "gemv"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("gemv runs on CUDA only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::bail;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{CudaStorage, WrapErr};

        use super::fused::{cuda_view, storage_view};
        use half::bf16;

        const WARPS: usize = 8;

        let k = self.weights[0].dim(1)?;
        let rows: Vec<usize> = self
            .weights
            .iter()
            .map(|w| w.dim(0))
            .collect::<Result<_>>()?;
        let n = if self.swiglu {
            rows[0]
        } else {
            rows.iter().sum()
        };
        let dev = x.device();
        let x = cuda_view::<bf16>(x, layout, "gemv: x")?;
        if x.len() != k {
            bail!("gemv: x {:?} for weights of {k} columns", layout.dims());
        }
        let guards: Vec<_> = self
            .weights
            .iter()
            .map(|w| w.storage_and_layout())
            .collect();
        let views = guards
            .iter()
            .map(|(s, l)| storage_view::<bf16>(s, l, "gemv: a weight"))
            .collect::<Result<Vec<_>>>()?;
        // Enough warps for ~4096 in all (a few dozen per SM): a few rows get several each.
        let per_row = [1, 2, 4, 8]
            .into_iter()
            .find(|p| n * p >= 4096)
            .unwrap_or(8);
        // SAFETY: the kernel writes every element.
        let out = unsafe { dev.alloc::<bf16>(n)? };
        let kernel = match self.swiglu {
            true => format!("gemv_swiglu_bf16_{per_row}"),
            false => format!("gemv_bf16_{per_row}"),
        };
        let func = dev.get_or_load_custom_func(&kernel, MODULE, PTX)?;
        let (n_arg, k_arg) = (n as i32, k as i32);
        let counts: Vec<i32> = (0..3)
            .map(|i| rows.get(i).map_or(0, |&r| r as i32))
            .collect();
        let mut b = func.builder();
        b.arg(&x);
        if self.swiglu {
            b.arg(&views[0]).arg(&views[1]).arg(&out);
            b.arg(&n_arg);
        } else {
            // Absent weights: the first again, with no rows.
            for i in 0..3 {
                b.arg(&views[i.min(views.len() - 1)]);
            }
            b.arg(&out);
            b.arg(&counts[0]).arg(&counts[1]).arg(&counts[2]);
        }
        b.arg(&k_arg);
        let config = LaunchConfig {
            grid_dim: ((n * per_row).div_ceil(WARPS) as u32, 1, 1),
            block_dim: (32 * WARPS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `gemv_bf16_*` / `gemv_swiglu_bf16_*` in kernels/decode.cu.
        unsafe { b.launch(config) }.w()?;
        let mut dims = layout.dims().to_vec();
        *dims.last_mut().expect("x has a last dim") = n;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), dims.into()))
    }
}

struct Argmax;

impl CustomOp1 for Argmax {
    fn name(&self) -> &'static str {
        "argmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("this argmax runs on CUDA only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{
            CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
        };
        use candle_core::cuda_backend::{CudaStorage, WrapErr};
        use half::bf16;

        let dims = layout.dims();
        let Some((&cols, lead)) = dims.split_last() else {
            candle_core::bail!("argmax of a scalar");
        };
        let rows: usize = lead.iter().product();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("argmax: the logits are not contiguous");
        };
        fn run<T: candle_core::cuda_backend::CudaDType + DeviceRepr>(
            x: &CudaStorage,
            (start, end): (usize, usize),
            kernel: &str,
            rows: usize,
            cols: usize,
        ) -> Result<CudaSlice<u32>> {
            let dev = x.device();
            let x = x.as_cuda_slice::<T>()?.slice(start..end);
            // SAFETY: the kernel writes every element.
            let out = unsafe { dev.alloc::<u32>(rows)? };
            let func = dev.get_or_load_custom_func(kernel, MODULE, PTX)?;
            let cols = cols as i32;
            let mut b = func.builder();
            b.arg(&x).arg(&out).arg(&cols);
            let config = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match `argmax_*` in kernels/decode.cu.
            unsafe { b.launch(config) }.w()?;
            Ok(out)
        }
        let range = (start, end);
        let out = match x.dtype() {
            DType::F32 => run::<f32>(x, range, "argmax_f32", rows, cols)?,
            DType::BF16 => run::<bf16>(x, range, "argmax_bf16", rows, cols)?,
            other => candle_core::bail!("argmax of {other:?} logits"),
        };
        let dev = x.device().clone();
        Ok((CudaStorage::wrap_cuda_slice(out, dev), lead.into()))
    }
}

/// The kernels' module, as candle loads it.
#[cfg(feature = "cuda")]
const MODULE: &str = "forge_decode";

#[cfg(feature = "cuda")]
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode.ptx"));

#[cfg(test)]
mod tests {
    /// On the GPU machine: both kernels against candle's matmul in f32 on the same bf16 values.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_gemv_matches_matmul() {
        use candle_core::{DType, Device, Tensor};

        use super::*;
        use crate::model::linear::matmul_t;
        use crate::model::ops::tests::max_abs_diff;

        let gpu = Device::new_cuda(0).expect("the cuda feature's tests need a GPU");
        for (n, k) in [(24, 8), (1000, 2560), (2560, 9728), (37, 264)] {
            let values = |rows: usize, seed: usize| {
                let v: Vec<f32> = (0..rows * k)
                    .map(|i| (((i * 7919 + seed) % 1999) as f32 - 999.0) / 999.0)
                    .collect();
                Tensor::from_vec(v, (rows, k), &gpu)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap()
            };
            let (x, g, u) = (
                values(1, 1).unsqueeze(0).unwrap(),
                values(n, 2),
                values(n, 3),
            );
            let up = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            assert!(applies(&x, &g));
            let want = matmul_t(&up(&x), &up(&g)).unwrap();
            let got = project(&x, &g).unwrap();
            assert_eq!(got.dims(), [1, 1, n]);
            let scale = max_abs_diff(&want, &want.zeros_like().unwrap());
            let err = max_abs_diff(&up(&got), &want);
            println!("gemv [{n}, {k}]: max abs error {err:.2e} (values up to {scale:.1})");
            assert!(err <= 1e-2 * scale.max(1.0), "gemv [{n}, {k}]: {err}");
            let up_part = matmul_t(&up(&x), &up(&u)).unwrap();
            let stacked = project_stacked(&x, &[&g, &u, &g]).unwrap();
            let want_stacked = Tensor::cat(&[&want, &up_part, &want], 2).unwrap();
            let err = max_abs_diff(&up(&stacked), &want_stacked);
            assert!(
                err <= 1e-2 * scale.max(1.0),
                "stacked [3 × {n}, {k}]: {err}"
            );
            let want = (want.silu().unwrap() * up_part).unwrap();
            let got = swiglu(&x, &g, &u).unwrap();
            let scale = max_abs_diff(&want, &want.zeros_like().unwrap());
            let err = max_abs_diff(&up(&got), &want);
            println!("swiglu [{n}, {k}]: max abs error {err:.2e} (values up to {scale:.1})");
            assert!(err <= 1e-2 * scale.max(1.0), "swiglu [{n}, {k}]: {err}");
        }
    }

    /// On the GPU machine: the attention kernel against the candle path (`attend`, in f32 on the
    /// same bf16 values) with the mask of the current slot; slots after it hold large values that
    /// must stay hidden.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_decode_attention_matches_candle() {
        use candle_core::{DType, Device, Tensor};

        use super::*;
        use crate::model::attention::attend;
        use crate::model::ops::tests::max_abs_diff;

        let gpu = Device::new_cuda(0).expect("the cuda feature's tests need a GPU");
        // (heads, kv heads, head dim, capacity, current slot)
        let cases = [
            (32, 8, 128, 640, 517),
            (32, 8, 128, 640, 639),
            (4, 2, 16, 64, 0),
            (4, 1, 8, 2000, 1999),
            (8, 8, 64, 100, 70),
            (16, 4, 256, 33, 20),
        ];
        for (h, kvh, d, cap, cur) in cases {
            let values = |n: usize, seed: usize, big: Option<usize>| {
                let v: Vec<f32> = (0..n)
                    .map(|i| {
                        let x = (((i * 7919 + seed) % 1999) as f32 - 999.0) / 999.0;
                        match big {
                            Some(row) if (i / d) % cap > row => 100.0,
                            _ => 2.0 * x,
                        }
                    })
                    .collect();
                Tensor::from_vec(v, n, &gpu)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap()
            };
            let q = values(h * d, 1, None).reshape((1, h, 1, d)).unwrap();
            let k = values(kvh * cap * d, 2, Some(cur))
                .reshape((1, kvh, cap, d))
                .unwrap();
            let v = values(kvh * cap * d, 3, Some(cur))
                .reshape((1, kvh, cap, d))
                .unwrap();
            let index = Tensor::full(cur as u32, (1, kvh, 1, d), &gpu).unwrap();
            let mask = Tensor::arange(0u32, cap as u32, &gpu)
                .unwrap()
                .broadcast_le(&Tensor::new(&[cur as u32], &gpu).unwrap())
                .unwrap()
                .reshape((1, 1, 1, cap))
                .unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let up = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let want = attend(&up(&q), &up(&k), &up(&v), Some(&mask), scale, false).unwrap();
            assert!(attention_applies(&q, &k, &v, &index));
            let got = attention(&q, &k, &v, &index, scale).unwrap();
            assert_eq!(got.dims(), [1, h, 1, d]);
            let got = up(&got).reshape((1, 1, h * d)).unwrap();
            let scale = max_abs_diff(&want, &want.zeros_like().unwrap());
            let err = max_abs_diff(&got, &want);
            println!(
                "attention h {h} kvh {kvh} d {d} slot {cur} of {cap}: max abs error {err:.2e} (values up to {scale:.2})"
            );
            assert!(
                err <= 1e-2 * scale.max(0.1),
                "attention {h} {kvh} {d} {cap} {cur}: {err}"
            );
        }
    }

    /// On the GPU machine: the residual add and RMSNorm kernel against candle's add and
    /// `rms_norm` (both forms) on the same bf16 values.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_add_rms_norm_matches_candle() {
        use candle_core::{DType, Device, Tensor};

        use super::*;
        use crate::model::ops::rms_norm;
        use crate::model::ops::tests::max_abs_diff;

        let gpu = Device::new_cuda(0).expect("the cuda feature's tests need a GPU");
        for n in [32, 2560, 4100] {
            let values = |seed: usize, amp: f32| {
                let v: Vec<f32> = (0..n)
                    .map(|i| amp * (((i * 7919 + seed) % 1999) as f32 - 999.0) / 999.0)
                    .collect();
                Tensor::from_vec(v, n, &gpu)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap()
            };
            let x = values(1, 30.0).reshape((1, 1, n)).unwrap();
            let delta = values(2, 3.0).reshape((1, 1, n)).unwrap();
            let w = values(3, 2.0);
            assert!(add_norm_applies(&x, &delta, &w));
            let (sum, normed) = add_rms_norm(&x, &delta, &w, 1e-6).unwrap();
            let want_sum = (&x + &delta).unwrap();
            let up = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            assert_eq!(sum.dims(), [1, 1, n]);
            assert_eq!(max_abs_diff(&up(&sum), &up(&want_sum)), 0.0, "sum of {n}");
            for fused in [true, false] {
                let want = rms_norm(&want_sum, &w, 1e-6, fused).unwrap();
                let scale = max_abs_diff(&up(&want), &up(&want.zeros_like().unwrap()));
                let err = max_abs_diff(&up(&normed), &up(&want));
                println!(
                    "add-rms-norm of {n} (fused {fused}): max abs error {err:.2e} (values up to {scale:.2})"
                );
                assert!(
                    err <= 1e-2 * scale,
                    "add-rms-norm of {n} (fused {fused}): {err}"
                );
            }
        }
    }

    /// On the GPU machine: the norm, RoPE and cache-write kernel against candle's path (per-head
    /// `rms_norm`, `rope::apply`, `scatter_set`), with and without the q/k norms.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_qkv_norm_rope_write_matches_candle() {
        use candle_core::{DType, Device, Tensor};

        use super::*;
        use crate::model::ops::rms_norm;
        use crate::model::ops::tests::max_abs_diff;
        use crate::model::rope::{self, Rope};

        let gpu = Device::new_cuda(0).expect("the cuda feature's tests need a GPU");
        let eps = 1e-6;
        for (h, kvh, d, cap, slot, norm) in [
            (32, 8, 128, 640, 517, true),
            (32, 8, 128, 640, 517, false),
            (4, 2, 16, 64, 0, true),
            (4, 1, 8, 64, 63, false),
            (8, 2, 256, 20, 7, true),
        ] {
            let values = |n: usize, seed: usize, amp: f32| {
                let v: Vec<f32> = (0..n)
                    .map(|i| amp * (((i * 7919 + seed) % 1999) as f32 - 999.0) / 999.0)
                    .collect();
                Tensor::from_vec(v, n, &gpu)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap()
            };
            let q = values(h * d, 1, 3.0).reshape((1, 1, h * d)).unwrap();
            let k = values(kvh * d, 2, 3.0).reshape((1, 1, kvh * d)).unwrap();
            let v = values(kvh * d, 3, 3.0).reshape((1, 1, kvh * d)).unwrap();
            let (qw, kw) = (values(d, 4, 2.0), values(d, 5, 2.0));
            let positions = Tensor::new(&[[slot as u32]], &gpu).unwrap();
            let (cos, sin) = Rope::new(d, 1e6).tables(&positions, DType::BF16).unwrap();
            let index = Tensor::full(slot as u32, (1, kvh, 1, d), &gpu).unwrap();
            let zeros = || Tensor::zeros((1, kvh, cap, d), DType::BF16, &gpu).unwrap();
            let (k_cache, v_cache) = (zeros(), zeros());
            let step = QkvStep {
                q: &q,
                k: &k,
                v: &v,
                norms: norm.then_some((&qw, &kw)),
                eps,
                cos: &cos,
                sin: &sin,
                index: &index,
                k_cache: &k_cache,
                v_cache: &v_cache,
            };
            assert!(step.applies());
            let got_q = qkv_norm_rope_write(&step).unwrap();
            assert_eq!(got_q.dims(), [1, h, 1, d]);
            let want = |x: &Tensor, heads: usize, w: &Tensor| {
                let x = x.reshape((1, 1, heads, d)).unwrap();
                let x = if norm {
                    rms_norm(&x, w, eps, true).unwrap()
                } else {
                    x
                };
                let x = x.transpose(1, 2).unwrap().contiguous().unwrap();
                rope::apply(&x, &cos, &sin, true).unwrap()
            };
            let up = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
            let check = |what: &str, got: &Tensor, want: &Tensor| {
                let scale = max_abs_diff(&up(want), &up(&want.zeros_like().unwrap()));
                let err = max_abs_diff(&up(got), &up(want));
                println!(
                    "qkv {what} h {h} kvh {kvh} d {d} norm {norm}: max abs error {err:.2e} (values up to {scale:.2})"
                );
                assert!(err <= 1e-2 * scale, "{what} {h} {kvh} {d} {norm}: {err}");
            };
            check("q", &got_q, &want(&q, h, &qw));
            check(
                "k",
                &k_cache.narrow(2, slot, 1).unwrap(),
                &want(&k, kvh, &kw),
            );
            let want_v = v.reshape((1, 1, kvh, d)).unwrap().transpose(1, 2).unwrap();
            let got_v = v_cache.narrow(2, slot, 1).unwrap();
            assert_eq!(max_abs_diff(&up(&got_v), &up(&want_v)), 0.0, "v");
            // Nothing but the slot is written.
            for cache in [&k_cache, &v_cache] {
                let rest = Tensor::cat(
                    &[
                        cache.narrow(2, 0, slot).unwrap(),
                        cache.narrow(2, slot + 1, cap - slot - 1).unwrap(),
                    ],
                    2,
                )
                .unwrap();
                assert_eq!(
                    max_abs_diff(&up(&rest), &up(&rest.zeros_like().unwrap())),
                    0.0
                );
            }
        }
    }

    /// On the GPU machine: the argmax kernel picks what candle's argmax picks on the CPU, the
    /// first of equal values included.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_argmax_matches_the_cpu() {
        use candle_core::{D, DType, Device, Tensor};

        use super::*;

        let gpu = Device::new_cuda(0).expect("the cuda feature's tests need a GPU");
        let vocab = 151_936;
        let mut v: Vec<f32> = (0..3 * vocab)
            .map(|i| ((i * 7919 % 100_003) as f32) / 100_003.0)
            .collect();
        // Row 1: its maximum twice; row 2: every value equal.
        v[vocab + 70_000] = 2.0;
        v[vocab + 150_000] = 2.0;
        v[2 * vocab..].fill(0.5);
        let cpu = Tensor::from_vec(v, (3, vocab), &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let x = cpu.to_dtype(dtype).unwrap();
            let want = x.argmax(D::Minus1).unwrap().to_vec1::<u32>().unwrap();
            let got = argmax(&x.to_device(&gpu).unwrap()).unwrap();
            assert_eq!(got.to_vec1::<u32>().unwrap(), want, "{dtype:?}");
            assert_eq!(want[1..], [70_000, 0]);
        }
    }
}
