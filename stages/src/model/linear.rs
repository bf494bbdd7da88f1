//! The one linear layer every projection (q, k, v, o, gate, up, down) goes through, built so that
//! fine-tuning can change how it computes without touching the decoder.
//!
//! `y = W(x) + b + A(x)`: a base weight `W` behind the [`LinearWeight`] trait (dense here; SFT adds
//! an NF4-quantized one that dequantizes on the fly, in forward and in backward), an optional
//! bias, and an optional [`LinearAdapter`] whose output is added (LoRA's `B·A·x·scale`). Both are
//! swapped through [`Linear::set_weight`] and [`Linear::set_adapter`], reached by name through
//! [`super::Decoder::linears_mut`]. Gradients flow through whatever candle ops the weight and
//! adapter use; a `Var` inside them is trained, a plain tensor is frozen.

use std::fmt;
use std::sync::Arc;

use candle_core::{D, Result, Tensor};

/// A linear layer's base weight: `x [.., in] → x·Wᵀ [.., out]`.
///
/// A frozen weight whose input needs a gradient should compute through
/// [`super::fused::frozen_matmul_t`] (as [`project`] does for a dense one): candle's matmul would
/// also compute and keep a gradient for the weight. A quantized weight passes it a closure that
/// dequantizes, so the dense matrix exists only inside one forward or backward call.
pub trait LinearWeight: Send + Sync + fmt::Debug {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// `(out_features, in_features)`.
    fn dims(&self) -> (usize, usize);
    /// The weight as a dense `[out, in]` tensor (dequantized if the weight is quantized): for
    /// merging adapters and for saving.
    fn dense(&self) -> Result<Tensor>;
    /// The weight itself when it is stored dense (`[out, in]`), for kernels that read it directly.
    fn as_dense(&self) -> Option<&Tensor> {
        None
    }
}

/// Something added to a linear layer's output, computed from the same input (LoRA).
///
/// With activation checkpointing ([`super::Decoder::loss_and_grads`]) a layer's forward runs twice
/// for one step: an adapter with randomness (dropout) must draw the same mask both times.
pub trait LinearAdapter: Send + Sync + fmt::Debug {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

/// A dense weight `[out, in]` (a `Var`'s tensor makes it trainable).
#[derive(Debug, Clone)]
pub struct DenseWeight {
    pub weight: Tensor,
}

impl LinearWeight for DenseWeight {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        project(x, &self.weight)
    }
    fn dims(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[0], d[1])
    }
    fn dense(&self) -> Result<Tensor> {
        Ok(self.weight.clone())
    }
    fn as_dense(&self) -> Option<&Tensor> {
        Some(&self.weight)
    }
}

/// `x [.., in] · wᵀ` for `w [out, in]`, flattening leading dims into one matmul.
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let in_dim = x.dim(D::Minus1)?;
    let lead = x.dims()[..x.rank() - 1].to_vec();
    let rows: usize = lead.iter().product();
    let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?;
    let mut shape = lead;
    shape.push(w.dim(0)?);
    y.reshape(shape)
}

/// `x · wᵀ` by the cheapest op that gives every gradient asked for:
/// [`super::fused::frozen_matmul_t`] when only `x` needs one, [`matmul_t`] otherwise; one row
/// decoding on a GPU (no gradient) by [`super::decode::project`].
pub fn project(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if super::decode::applies(x, w) {
        return super::decode::project(x, w);
    }
    if x.track_op() && !w.track_op() {
        let w = w.clone();
        super::fused::frozen_matmul_t(x, Arc::new(move || Ok(w.clone())))
    } else {
        matmul_t(x, w)
    }
}

/// A projection of the decoder.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Arc<dyn LinearWeight>,
    bias: Option<Tensor>,
    adapter: Option<Arc<dyn LinearAdapter>>,
}

impl Linear {
    pub fn new(weight: Arc<dyn LinearWeight>, bias: Option<Tensor>) -> Linear {
        Linear {
            weight,
            bias,
            adapter: None,
        }
    }

    pub fn dense(weight: Tensor, bias: Option<Tensor>) -> Linear {
        Linear::new(Arc::new(DenseWeight { weight }), bias)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = self.weight.forward(x)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(adapter) = &self.adapter {
            y = (y + adapter.forward(x)?)?;
        }
        Ok(y)
    }

    pub fn weight(&self) -> &Arc<dyn LinearWeight> {
        &self.weight
    }

    /// Replaces the base weight (e.g. by its NF4 quantization); the shape must stay.
    pub fn set_weight(&mut self, weight: Arc<dyn LinearWeight>) -> Result<()> {
        if weight.dims() != self.weight.dims() {
            candle_core::bail!(
                "replacement weight is {:?}, the layer's is {:?}",
                weight.dims(),
                self.weight.dims()
            );
        }
        self.weight = weight;
        Ok(())
    }

    /// The dense weight of a layer that is nothing else (no bias, no adapter): `x·Wᵀ` is all it
    /// computes.
    pub fn plain_dense(&self) -> Option<&Tensor> {
        match (&self.bias, &self.adapter) {
            (None, None) => self.weight.as_dense(),
            _ => None,
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn adapter(&self) -> Option<&Arc<dyn LinearAdapter>> {
        self.adapter.as_ref()
    }

    /// Installs (or with `None` removes) the adapter added to this layer's output.
    pub fn set_adapter(&mut self, adapter: Option<Arc<dyn LinearAdapter>>) {
        self.adapter = adapter;
    }
}

/// The seven projection kinds of a decoder layer; in params (sft's `lora_targets`) by their
/// [`Proj::short`] names.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The short name SFT's `lora_targets` uses (`q`, …, `down`).
    pub fn short(self) -> &'static str {
        match self {
            Proj::Q => "q",
            Proj::K => "k",
            Proj::V => "v",
            Proj::O => "o",
            Proj::Gate => "gate",
            Proj::Up => "up",
            Proj::Down => "down",
        }
    }

    pub fn parse(short: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.short() == short)
    }

    /// The module's path inside a layer, as Hugging Face (and PEFT) name it.
    pub fn hf_module(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }
}

/// Which projection of which layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinearId {
    pub layer: usize,
    pub proj: Proj,
}

impl LinearId {
    /// The Hugging Face module path: `model.layers.3.self_attn.q_proj` (append `.weight`/`.bias`
    /// for tensor names; PEFT's adapter keys are built on it).
    pub fn hf_name(&self) -> String {
        format!("model.layers.{}.{}", self.layer, self.proj.hf_module())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    #[derive(Debug)]
    struct AddConst(f64);

    impl LinearAdapter for AddConst {
        fn forward(&self, x: &Tensor) -> Result<Tensor> {
            let (rows, _) = x.dims2()?;
            Tensor::full(self.0 as f32, (rows, 2), x.device())
        }
    }

    #[test]
    fn forward_adds_bias_and_adapter_and_weights_can_be_swapped() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
        let b = Tensor::new(&[10f32, 20.], &dev).unwrap();
        let x = Tensor::new(&[[1f32, 0., -1.]], &dev).unwrap();
        let mut lin = Linear::dense(w, Some(b));
        assert_eq!(
            lin.forward(&x).unwrap().to_vec2::<f32>().unwrap(),
            [[8., 18.]]
        );
        lin.set_adapter(Some(Arc::new(AddConst(0.5))));
        assert_eq!(
            lin.forward(&x).unwrap().to_vec2::<f32>().unwrap(),
            [[8.5, 18.5]]
        );
        let wrong = DenseWeight {
            weight: Tensor::zeros((3, 3), DType::F32, &dev).unwrap(),
        };
        assert!(lin.set_weight(Arc::new(wrong)).is_err());
        let zeros = DenseWeight {
            weight: Tensor::zeros((2, 3), DType::F32, &dev).unwrap(),
        };
        lin.set_weight(Arc::new(zeros)).unwrap();
        assert_eq!(
            lin.forward(&x).unwrap().to_vec2::<f32>().unwrap(),
            [[10.5, 20.5]]
        );
    }

    #[test]
    fn a_var_weight_gets_the_gradient_of_a_batched_input() {
        let dev = Device::Cpu;
        let w = Var::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &dev).unwrap();
        let lin = Linear::dense(w.as_tensor().clone(), None);
        let x = Tensor::new(&[[[1f32, 2.], [3., 4.]]], &dev).unwrap();
        let y = lin.forward(&x).unwrap();
        assert_eq!(y.dims(), [1, 2, 3]);
        let grads = y.sum_all().unwrap().backward().unwrap();
        // d(sum y)/dW[o, i] = sum over rows of x[., i].
        let g = grads.get(w.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(g, [[4., 6.], [4., 6.], [4., 6.]]);
    }

    #[test]
    fn frozen_matmul_gives_the_input_gradient_only() {
        let dev = Device::Cpu;
        let v = |n: usize, k: f64| -> Vec<f64> {
            (0..n).map(|i| ((i * 7 % 11) as f64 - 5.0) * k).collect()
        };
        let w = Tensor::from_vec(v(12, 0.3), (4, 3), &dev).unwrap();
        let x = Var::from_tensor(&Tensor::from_vec(v(30, 0.2), (2, 5, 3), &dev).unwrap()).unwrap();
        let probe = Tensor::from_vec(v(40, 0.1), (2, 5, 4), &dev).unwrap();
        let frozen = project(x.as_tensor(), &w).unwrap();
        let plain = matmul_t(x.as_tensor(), &w).unwrap();
        assert_eq!(
            frozen.to_vec3::<f64>().unwrap(),
            plain.to_vec3::<f64>().unwrap()
        );
        let g_frozen = (frozen * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_plain = (plain * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (a, b) = (
            g_frozen.get(x.as_tensor()).unwrap(),
            g_plain.get(x.as_tensor()).unwrap(),
        );
        assert_eq!(a.to_vec3::<f64>().unwrap(), b.to_vec3::<f64>().unwrap());
        // candle's own matmul leaves a weight-sized gradient behind; the frozen op does not (both
        // keep one for the probe of the test's multiplication).
        assert_eq!(g_frozen.get_ids().count(), 2);
        assert_eq!(g_plain.get_ids().count(), 3);
        let f = || {
            (project(x.as_tensor(), &w).unwrap() * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let coords: Vec<usize> = (0..30).collect();
        let worst = crate::model::ops::tests::check_grad(&x, a, &coords, 1e-6, 1e-6, &f);
        assert!(worst < 1e-8, "worst relative error {worst}");
    }

    #[test]
    fn names_follow_hugging_face() {
        let id = LinearId {
            layer: 3,
            proj: Proj::Gate,
        };
        assert_eq!(id.hf_name(), "model.layers.3.mlp.gate_proj");
        assert_eq!(Proj::parse("down"), Some(Proj::Down));
        assert_eq!(Proj::parse("lm_head"), None);
        for proj in Proj::ALL {
            assert_eq!(serde_json::to_value(proj).unwrap(), proj.short());
        }
    }
}
