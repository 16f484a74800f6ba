//! A fully connected network (`Layout::mlp` names `fc{i}.weight` / `fc{i}.bias`) and, as its
//! one-layer case, the linear model of `samkit linreg` (`linear.weight` `[1, d]`,
//! `linear.bias` `[1]`, squared error).
use samkit_core::Layout;

use crate::backend::{Activation, Backend, BnMode, LinearParams, ParamGrad};
use crate::cpu::Cpu;
use crate::error::{Error, Result};
use crate::model::{
    begin_pass_from, check_arena_len, BackwardExtent, BufferKind, Kept, LossKind, Losses, Model,
    NamedBuffer, PassFrom, Targets, Unit,
};
use crate::tensor::Tensor;

struct MlpActs<B: Backend> {
    n: usize,
    /// `h[0]`: input; `h[i + 1]`: output of layer `i` (after its activation).
    h: Vec<B::Buf>,
    g: [B::Buf; 2],
    host_out: Vec<f32>,
    host_dout: Vec<f32>,
}

/// The workspace of a forward without gradient: the input and two ping-pong buffers.
struct MlpLean<B: Backend> {
    n: usize,
    x: B::Buf,
    io: [B::Buf; 2],
    host_out: Vec<f32>,
}

pub struct Mlp<B: Backend = Cpu> {
    backend: B,
    layout: Layout,
    dims: Vec<usize>,
    act: Activation,
    loss: LossKind,
    layers: Vec<LinearParams>,
    /// One unit per linear layer.
    units: Vec<Unit>,
    acts: Option<MlpActs<B>>,
    kept: Option<Kept>,
    lean: Option<MlpLean<B>>,
}

impl Mlp<Cpu> {
    /// An MLP on the CPU: `dims = [in, h1, ..., out]`, `act` between layers.
    pub fn cpu(dims: &[usize], act: Activation, loss: LossKind) -> Result<Self> {
        Self::new(Cpu::new(), dims, act, loss)
    }

    /// The linear model of `samkit linreg` on the CPU.
    pub fn linear_regression_cpu(features: usize) -> Result<Self> {
        Self::linear_regression(Cpu::new(), features)
    }
}

impl<B: Backend> Mlp<B> {
    pub fn new(backend: B, dims: &[usize], act: Activation, loss: LossKind) -> Result<Self> {
        let layout = Layout::mlp(dims)?;
        Self::with_layout(backend, layout, dims, act, loss)
    }

    /// `ŷ = x·w + b` with `linear.weight` `[1, features]` and `linear.bias` `[1]`, and the
    /// squared error `(ŷ − y)²` per sample (weights `1/B` give the batch MSE).
    pub fn linear_regression(backend: B, features: usize) -> Result<Self> {
        let mut layout = Layout::new();
        layout.push("linear.weight", &[1, features])?;
        layout.push("linear.bias", &[1])?;
        Self::with_layout(
            backend,
            layout,
            &[features, 1],
            Activation::Relu,
            LossKind::SquaredError,
        )
    }

    fn with_layout(
        backend: B,
        layout: Layout,
        dims: &[usize],
        act: Activation,
        loss: LossKind,
    ) -> Result<Self> {
        if dims.contains(&0) {
            return Err(Error::invalid("dims", format!("{dims:?} has a zero size")));
        }
        if let LossKind::CrossEntropy { smoothing } = loss {
            if !(0.0..1.0).contains(&smoothing) || dims[dims.len() - 1] < 2 {
                return Err(Error::invalid(
                    "loss",
                    format!("cross-entropy needs ≥ 2 classes and smoothing in [0, 1) ({loss:?})"),
                ));
            }
        }
        let segs = layout.segments();
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, d)| LinearParams {
                inp: d[0],
                out: d[1],
                weight: segs[2 * i].offset,
                bias: Some(segs[2 * i + 1].offset),
            })
            .collect();
        if segs.len() != 2 * (dims.len() - 1) {
            return Err(Error::invalid(
                "layout",
                format!("{} segments for {} layers", segs.len(), dims.len() - 1),
            ));
        }
        let units = (0..dims.len() - 1)
            .map(|i| Unit {
                name: match segs[2 * i].name.split_once('.') {
                    Some((layer, _)) => layer.to_string(),
                    None => format!("layer{i}"),
                },
                segments: 2 * i..2 * i + 2,
            })
            .collect();
        Ok(Mlp {
            backend,
            layout,
            dims: dims.to_vec(),
            act,
            loss,
            layers,
            units,
            acts: None,
            kept: None,
            lean: None,
        })
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    pub fn loss_kind(&self) -> LossKind {
        self.loss
    }

    /// PyTorch's default `nn.Linear` initialisation from a seed.
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        let mut p = vec![0.0; self.layout.len()];
        let mut rng = crate::init::Rng::new(seed);
        for l in &self.layers {
            let bound = 1.0 / (l.inp as f32).sqrt();
            rng.fill_uniform(&mut p[l.weight..l.weight + l.inp * l.out], bound);
            if let Some(b) = l.bias {
                rng.fill_uniform(&mut p[b..b + l.out], bound);
            }
        }
        p
    }

    fn ensure_acts(&mut self, n: usize) -> Result<()> {
        if matches!(&self.acts, Some(a) if a.n >= n) {
            return Ok(());
        }
        self.kept = None;
        let b = &mut self.backend;
        let h = self
            .dims
            .iter()
            .map(|&d| b.alloc(n * d))
            .collect::<Result<Vec<_>>>()?;
        let max = n * self.dims.iter().max().copied().unwrap_or(1);
        let out = n * self.dims[self.dims.len() - 1];
        self.acts = Some(MlpActs {
            n,
            h,
            g: [b.alloc(max)?, b.alloc(max)?],
            host_out: vec![0.0; out],
            host_dout: vec![0.0; out],
        });
        Ok(())
    }

    fn check_input(&self, params: &B::Arena, x: &Tensor) -> Result<usize> {
        check_arena_len::<B>("parameters", params, &self.layout)?;
        let n = x.shape().first().copied().unwrap_or(0);
        if n == 0 || x.len() != n * self.dims[0] {
            return Err(Error::shape(
                "input",
                format!(
                    "shape {:?} for {} features per sample",
                    x.shape(),
                    self.dims[0]
                ),
            ));
        }
        Ok(n)
    }

    /// A full forward pass that keeps its activations (for a backward pass, and for passes
    /// from a later layer).
    fn run_forward(&mut self, params: &B::Arena, x: &Tensor) -> Result<usize> {
        let n = self.check_input(params, x)?;
        self.ensure_acts(n)?;
        self.kept = None;
        let a = self.acts.as_mut().expect("workspace allocated");
        self.backend.load_features(x, &mut a.h[0])?;
        self.run_forward_from(params, n, 0)?;
        self.kept = Some(Kept {
            n,
            mode: BnMode::Train,
            clean: self.layers.len() - 1,
        });
        Ok(n)
    }

    /// Layers `start..` of a forward pass over the `n` samples in the workspace, from the
    /// input layer `start` has there.
    fn run_forward_from(&mut self, params: &B::Arena, n: usize, start: usize) -> Result<()> {
        let Self {
            backend: be,
            layers,
            acts,
            act,
            dims,
            ..
        } = self;
        let a = acts.as_mut().expect("workspace allocated");
        for (i, l) in layers.iter().enumerate().skip(start) {
            let (inp, out) = a.h.split_at_mut(i + 1);
            be.linear_forward(n, *l, &inp[i], params, &mut out[0])?;
            if i + 1 < layers.len() {
                be.activation_forward(*act, &mut out[0])?;
            }
        }
        let k = dims[dims.len() - 1];
        be.download(&a.h[layers.len()], &mut a.host_out[..n * k])?;
        Ok(())
    }

    /// A forward pass in the workspace of [`Model::forward`] (outputs in its `host_out`).
    fn run_forward_lean(&mut self, params: &B::Arena, x: &Tensor) -> Result<usize> {
        let n = self.check_input(params, x)?;
        if !matches!(&self.lean, Some(l) if l.n >= n) {
            let b = &mut self.backend;
            let max = n * self.dims.iter().max().copied().unwrap_or(1);
            self.lean = Some(MlpLean {
                n,
                x: b.alloc(n * self.dims[0])?,
                io: [b.alloc(max)?, b.alloc(max)?],
                host_out: vec![0.0; n * self.dims[self.dims.len() - 1]],
            });
        }
        let Self {
            backend: be,
            layers,
            lean,
            act,
            dims,
            ..
        } = self;
        let l = lean.as_mut().expect("workspace allocated");
        be.load_features(x, &mut l.x)?;
        for (i, layer) in layers.iter().enumerate() {
            let [i0, i1] = &mut l.io;
            // Layer i reads the input (i = 0) or the other ping-pong buffer.
            let (input, out) = match i % 2 {
                0 => (&*i1, i0),
                _ => (&*i0, i1),
            };
            let input = if i == 0 { &l.x } else { input };
            be.linear_forward(n, *layer, input, params, out)?;
            if i + 1 < layers.len() {
                be.activation_forward(*act, out)?;
            }
        }
        let k = dims[dims.len() - 1];
        be.download(&l.io[(layers.len() - 1) % 2], &mut l.host_out[..n * k])?;
        Ok(n)
    }

    /// The losses of the outputs the last pass with gradient left on the host, and their
    /// gradient in `host_dout` for [`Mlp::run_backward`].
    fn loss_of_kept(&mut self, n: usize, targets: Targets<'_>, weights: &[f32]) -> Result<Losses> {
        let k = self.dims[self.dims.len() - 1];
        let a = self.acts.as_mut().expect("workspace allocated");
        self.loss
            .eval_into(&a.host_out, &mut a.host_dout, n, k, targets, weights)
    }

    /// Backward from `host_dout` through layers `stop..` (layer `stop`'s input gradient is
    /// not computed).
    fn run_backward(
        &mut self,
        params: &B::Arena,
        n: usize,
        pg: ParamGrad,
        grad: &mut B::Arena,
        stop: usize,
    ) -> Result<()> {
        let Self {
            backend: be,
            layers,
            acts,
            act,
            dims,
            ..
        } = self;
        let a = acts.as_mut().expect("workspace allocated");
        let k = dims[dims.len() - 1];
        let [g0, g1] = &mut a.g;
        be.upload(&a.host_dout[..n * k], g0)?;
        for (i, l) in layers.iter().enumerate().skip(stop).rev() {
            let dx = if i > stop { Some(&mut *g1) } else { None };
            be.linear_backward(n, *l, &a.h[i], g0, params, pg, grad, dx)?;
            if i > stop {
                be.activation_backward(*act, &a.h[i], g1)?;
                std::mem::swap(g0, g1);
            }
        }
        Ok(())
    }
}

impl<B: Backend> Model for Mlp<B> {
    type Backend = B;

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn forward(&mut self, params: &B::Arena, x: &Tensor, _mode: BnMode) -> Result<Tensor> {
        let n = self.run_forward_lean(params, x)?;
        let k = self.dims[self.dims.len() - 1];
        let l = self.lean.as_ref().expect("workspace allocated");
        Tensor::from_slice(&l.host_out[..n * k], &[n, k])
    }

    fn forward_losses(
        &mut self,
        params: &B::Arena,
        x: &Tensor,
        targets: Targets<'_>,
        _mode: BnMode,
    ) -> Result<Losses> {
        let n = self.run_forward_lean(params, x)?;
        let k = self.dims[self.dims.len() - 1];
        let l = self.lean.as_ref().expect("workspace allocated");
        self.loss.eval_mean(&l.host_out, n, k, targets)
    }

    fn units(&self) -> &[Unit] {
        &self.units
    }

    fn forward_backward_from(
        &mut self,
        params: &B::Arena,
        start: usize,
        targets: Targets<'_>,
        weights: &[f32],
        backward: BackwardExtent,
        grad: &mut B::Arena,
    ) -> Result<Losses> {
        // The MLP has no batch norm: the pass's mode does not matter.
        let PassFrom { n, stop, .. } = begin_pass_from::<B>(
            &mut self.kept,
            &self.layout,
            self.units.len(),
            params,
            grad,
            start,
            backward,
        )?;
        self.run_forward_from(params, n, start)?;
        let losses = self.loss_of_kept(n, targets, weights)?;
        self.run_backward(params, n, ParamGrad::Sum, grad, stop)?;
        Ok(losses)
    }

    fn forward_backward(
        &mut self,
        params: &B::Arena,
        x: &Tensor,
        targets: Targets<'_>,
        weights: &[f32],
        _mode: BnMode,
        grad: &mut B::Arena,
    ) -> Result<Losses> {
        check_arena_len::<B>("gradient", grad, &self.layout)?;
        let n = self.run_forward(params, x)?;
        let losses = self.loss_of_kept(n, targets, weights)?;
        self.run_backward(params, n, ParamGrad::Sum, grad, 0)?;
        Ok(losses)
    }

    fn per_sample_grad_sq(
        &mut self,
        params: &B::Arena,
        x: &Tensor,
        targets: Targets<'_>,
        out: &mut B::Arena,
    ) -> Result<Losses> {
        check_arena_len::<B>("fisher", out, &self.layout)?;
        let n = self.run_forward(params, x)?;
        let losses = self.loss_of_kept(n, targets, &vec![1.0; n])?;
        // Samples are independent, so row i of every backpropagated gradient is sample i's
        // own, and each layer's per-sample gradient is the rank-one dy_i·x_iᵀ.
        self.run_backward(params, n, ParamGrad::PerSampleSq, out, 0)?;
        Ok(losses)
    }

    fn buffers(&mut self) -> Result<Vec<NamedBuffer>> {
        Ok(Vec::new())
    }

    fn buffer_specs(&self) -> Vec<(String, Vec<usize>, BufferKind)> {
        Vec::new()
    }

    fn set_buffers(&mut self, buffers: &[NamedBuffer]) -> Result<()> {
        match buffers.first() {
            None => Ok(()),
            Some(b) => Err(Error::shape(
                "buffers",
                format!("the MLP has no buffer `{}`", b.name),
            )),
        }
    }
}
