//! Batch-1 decoding as one CUDA graph per token.
//!
//! Why: a decoding step of one row is ≈ 600 small candle ops, and candle spends ≈ 12 µs of host
//! time on each (bookkeeping, a stream-ordered allocation, the launch) — twice the GPU's own time
//! for the step on an H100 (bench/RESULTS.md). Captured once into a CUDA graph, the step is
//! replayed by one launch per token.
//!
//! A replay repeats the captured kernels with the captured arguments, so everything a step reads
//! or writes must keep its shape and address from token to token: the token and its slot live in
//! a fixed device buffer (written before each replay), the RoPE angles of every slot are computed
//! once and picked by that slot on the device, the KV cache is reserved at its final capacity and
//! written in place ([`CacheWrite::At`](super::attention::CacheWrite)), attention runs over every
//! slot of the cache with a mask made on the device (slot ≤ the current one), and the logits are
//! copied into a fixed buffer. Temporaries are allocated and freed inside the step: captured, they
//! become the graph's own memory. candle uploads the shapes and strides of non-contiguous operands
//! per op; its parameter cache ([`CudaDevice::enable_cuda_graph_htod_cache`], filled by an eager
//! warm-up step) serves them from device memory instead while capturing.
//!
//! The same step runs eagerly on any device (the CPU tests check it against the growing cache);
//! on CUDA the first step is the warm-up, the second is captured and every later one replayed.
//!
//! [`CudaDevice::enable_cuda_graph_htod_cache`]: candle_core::cuda_backend::CudaDevice::enable_cuda_graph_htod_cache

use candle_core::{DType, Result, Tensor};

use super::attention::{AttentionContext, KvCache};
use super::decoder::Decoder;
use super::rope::Rope;

/// The decoding steps of one row after its prefill, on a cache of fixed capacity.
pub struct DecodeGraph<'m> {
    model: &'m Decoder,
    cache: KvCache,
    capacity: usize,
    /// `[2]` u32: the token fed and its slot, which is also its position (one row, no padding).
    io: Tensor,
    /// `[capacity, head_dim / 2]`: the RoPE tables of every slot.
    cos: Tensor,
    sin: Tensor,
    /// `[capacity]` u32: `0, 1, …`, for the attention mask.
    slots: Tensor,
    /// `[1, vocab]`: the last step's logits.
    logits: Tensor,
    steps: usize,
    #[cfg(feature = "cuda")]
    graph: Option<candle_core::cuda_backend::cudarc::driver::CudaGraph>,
}

impl<'m> DecodeGraph<'m> {
    /// Takes over `cache` after the prefill of one unpadded row and reserves room for `capacity`
    /// slots in all.
    pub fn new(model: &'m Decoder, mut cache: KvCache, capacity: usize) -> Result<DecodeGraph<'m>> {
        let rows = cache.layers.iter().flatten().map(|b| b.rows()).next();
        if rows != Some(1) || cache.valid.is_some() {
            candle_core::bail!("a decode graph continues one prefilled row without padding");
        }
        if capacity <= cache.len() {
            candle_core::bail!(
                "a capacity of {capacity} slots leaves no room after {}",
                cache.len()
            );
        }
        // Buffers larger than asked stay as they are: the mask then covers their capacity.
        let capacity = cache.reserve(capacity)?;
        let device = model.device();
        let config = model.config();
        let slots = Tensor::arange(0u32, capacity as u32, device)?;
        let (cos, sin) = Rope::new(config.head_dim, config.rope_theta)
            .tables(&slots.unsqueeze(0)?, model.dtype())?;
        Ok(DecodeGraph {
            model,
            cache,
            capacity,
            io: Tensor::zeros(2, DType::U32, device)?,
            cos: cos.squeeze(0)?,
            sin: sin.squeeze(0)?,
            slots,
            logits: Tensor::zeros((1, config.vocab_size), model.dtype(), device)?,
            steps: 0,
            #[cfg(feature = "cuda")]
            graph: None,
        })
    }

    /// Feeds `token` at the next slot; returns the logits `[1, vocab]` of what follows it. The
    /// tensor is overwritten by the next step.
    pub fn step(&mut self, token: u32) -> Result<Tensor> {
        let slot = self.cache.len();
        if slot >= self.capacity {
            candle_core::bail!("the decode graph's {} slots are full", self.capacity);
        }
        let device = self.model.device();
        self.io
            .slice_set(&Tensor::new(&[token, slot as u32], device)?, 0, 0)?;
        self.run()?;
        self.cache.advance_in_place(1);
        self.steps += 1;
        Ok(self.logits.clone())
    }

    #[cfg(feature = "cuda")]
    fn run(&mut self) -> Result<()> {
        use candle_core::cuda_backend::WrapErr;

        if let Some(graph) = &self.graph {
            return graph.launch().w();
        }
        let candle_core::Device::Cuda(device) = self.model.device() else {
            return self.forward();
        };
        // With several streams and event tracking, cudarc orders buffers by events recorded
        // outside the capture, which a capture may not wait on.
        if device
            .cuda_stream()
            .context()
            .is_managing_stream_synchronization()
        {
            return self.forward();
        }
        let _cached_uploads = device.enable_cuda_graph_htod_cache();
        if self.steps == 0 {
            return self.forward();
        }
        let graph = self.capture(device)?;
        graph.launch().w()?;
        self.graph = Some(graph);
        Ok(())
    }

    #[cfg(not(feature = "cuda"))]
    fn run(&mut self) -> Result<()> {
        self.forward()
    }

    /// Records one [`DecodeGraph::forward`] on the device's stream, without running it.
    #[cfg(feature = "cuda")]
    fn capture(
        &self,
        device: &candle_core::cuda_backend::CudaDevice,
    ) -> Result<candle_core::cuda_backend::cudarc::driver::CudaGraph> {
        use candle_core::cuda_backend::WrapErr;
        use candle_core::cuda_backend::cudarc::driver::sys;

        let stream = device.cuda_stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .w()?;
        let recorded = self.forward();
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0)).w();
        recorded?;
        graph?.ok_or_else(|| candle_core::Error::Msg("the captured decode step is empty".into()))
    }

    /// One step from `io` into `logits`, every temporary freed before it returns.
    fn forward(&self) -> Result<()> {
        let model = self.model;
        let config = model.config();
        let ids = self.io.narrow(0, 0, 1)?.reshape((1, 1))?;
        let slot = self.io.narrow(0, 1, 1)?;
        let half = config.head_dim / 2;
        let ctx = AttentionContext {
            cos: self.cos.index_select(&slot, 0)?.reshape((1, 1, half))?,
            sin: self.sin.index_select(&slot, 0)?.reshape((1, 1, half))?,
            mask: Some(
                self.slots
                    .broadcast_le(&slot)?
                    .reshape((1, 1, 1, self.capacity))?,
            ),
        };
        let index = slot
            .reshape((1, 1, 1, 1))?
            .broadcast_as((1, config.num_kv_heads, 1, config.head_dim))?
            .contiguous()?;
        let logits = model.forward_in_place(&ids, &ctx, &index, &self.cache)?;
        self.logits
            .slice_set(&logits.reshape((1, config.vocab_size))?, 0, 0)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::decoder::Batch;
    use crate::model::decoder::tests::{ARCHS, fixture};

    /// Greedy tokens after `prompt`, stepping with the growing cache (`graph: false`) or with a
    /// [`DecodeGraph`]; the prefill as [`crate::model::generate::generate`] does it.
    fn greedy(model: &Decoder, prompt: &[u32], new: usize, graph: bool) -> Vec<u32> {
        let device = model.device();
        let mut cache = model.new_cache();
        let batch = Batch::dense(&[prompt.to_vec()], 0, device).unwrap();
        let hidden = model.hidden(&batch, Some(&mut cache)).unwrap();
        let last = hidden.narrow(1, prompt.len() - 1, 1).unwrap();
        let logits = model.logits(&last).unwrap();
        // On the CPU: the first of equal logits, as `generate` picks (candle's CUDA argmax may
        // pick a later one, and bf16 logits of the tiny fixtures tie now and then).
        let next = |logits: &Tensor| {
            logits
                .to_device(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .argmax(0)
                .unwrap()
                .to_scalar::<u32>()
                .unwrap()
        };
        let mut tokens = vec![next(&logits)];
        let mut graph =
            graph.then(|| DecodeGraph::new(model, cache.clone(), prompt.len() + new).unwrap());
        while tokens.len() < new {
            let token = *tokens.last().unwrap();
            let logits = match &mut graph {
                Some(g) => g.step(token).unwrap(),
                None => {
                    let position = (prompt.len() + tokens.len() - 1) as u32;
                    let batch = Batch::dense(&[vec![token]], position, device).unwrap();
                    model.forward(&batch, Some(&mut cache)).unwrap()
                }
            };
            tokens.push(next(&logits));
        }
        tokens
    }

    #[test]
    fn in_place_steps_match_the_growing_cache() {
        for arch in ARCHS {
            let model = Decoder::load(&fixture(arch), DType::F32, &Device::Cpu).unwrap();
            let prompt = [5u32, 9, 11, 2, 7, 40, 3];
            let want = greedy(&model, &prompt, 20, false);
            assert_eq!(greedy(&model, &prompt, 20, true), want, "{arch}");
        }
    }

    #[test]
    fn a_full_graph_refuses_another_step() {
        let model = Decoder::load(&fixture("qwen3"), DType::F32, &Device::Cpu).unwrap();
        let mut cache = model.new_cache();
        let batch = Batch::dense(&[vec![1, 2, 3]], 0, &Device::Cpu).unwrap();
        model.forward(&batch, Some(&mut cache)).unwrap();
        // The prefill's buffers hold 64 slots already: more than the 4 asked for.
        let mut graph = DecodeGraph::new(&model, cache, 4).unwrap();
        let steps = (0..100).take_while(|&t| graph.step(t).is_ok()).count();
        assert_eq!(steps, 64 - 3);
    }

    /// On the GPU machine: the captured, replayed step gives the eager steps' greedy tokens (all of
    /// them in f32; bf16's agreement is printed), with and without LoRA, and `generate` takes it
    /// for one row.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_graph_decoding_matches_the_eager_steps() {
        use crate::model::generate::{GenerateOptions, generate};
        use crate::model::linear::Proj;
        use crate::model::lora::{LoraConfig, LoraSet};

        let gpu = crate::model::candle_device(crate::Device::Cuda(0))
            .expect("a CUDA device: this test runs on the GPU machine");
        let prompt = [5u32, 9, 11, 2, 7, 40, 3, 100, 4];
        let new = 40;
        for arch in ARCHS {
            for dtype in [DType::F32, DType::BF16] {
                let mut model = Decoder::load(&fixture(arch), dtype, &gpu).unwrap();
                for lora in [false, true] {
                    if lora {
                        let config = LoraConfig {
                            r: 4,
                            alpha: 8.0,
                            dropout: 0.0,
                            targets: Proj::ALL.to_vec(),
                        };
                        let set = LoraSet::install(&mut model, &config, 3).unwrap();
                        for l in set.layers.values() {
                            let b = l.b().as_tensor();
                            l.b()
                                .set(&(b.ones_like().unwrap() * 0.01).unwrap())
                                .unwrap();
                        }
                    }
                    let want = greedy(&model, &prompt, new, false);
                    let got = greedy(&model, &prompt, new, true);
                    let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
                    println!(
                        "{arch} {dtype:?} lora {lora}: {same} of {new} greedy tokens as the eager steps"
                    );
                    if dtype == DType::F32 {
                        assert_eq!(got, want, "{arch} lora {lora}");
                    }
                    let options = GenerateOptions {
                        max_new_tokens: new,
                        ..GenerateOptions::default()
                    };
                    let generated = generate(&model, &[prompt.to_vec()], &options, &mut |_, _| {})
                        .unwrap()
                        .pop()
                        .unwrap();
                    assert_eq!(generated.tokens, got, "{arch} {dtype:?}: generate's graph");
                }
            }
        }
        // The third step and later are replays.
        let model = Decoder::load(&fixture("qwen3"), DType::BF16, &gpu).unwrap();
        let mut cache = model.new_cache();
        let batch = Batch::dense(&[prompt.to_vec()], 0, &gpu).unwrap();
        model.forward(&batch, Some(&mut cache)).unwrap();
        let mut graph = DecodeGraph::new(&model, cache, 64).unwrap();
        graph.step(1).unwrap();
        assert!(graph.graph.is_none(), "the first step warms up");
        graph.step(2).unwrap();
        assert!(graph.graph.is_some(), "the second step is captured");
    }
}
