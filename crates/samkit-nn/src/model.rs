//! What a trainer sees of a model: forward passes, gradients written into one flat buffer laid
//! out as the model's `samkit_core::Layout`, per-sample squared gradients for SSAM-F, and the
//! buffers (batch-norm running statistics) a checkpoint carries beside the parameters.
use samkit_core::{Eval, Layout};

use crate::backend::{Backend, BnMode};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// What the loss compares the outputs with.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// Class indices (label-smoothed cross-entropy on the logits).
    Labels(&'a [usize]),
    /// Regression targets, `out` values per sample (squared error).
    Values(&'a [f32]),
}

impl<'a> From<&'a [usize]> for Targets<'a> {
    fn from(l: &'a [usize]) -> Self {
        Targets::Labels(l)
    }
}

impl<'a> From<&'a Vec<usize>> for Targets<'a> {
    fn from(l: &'a Vec<usize>) -> Self {
        Targets::Labels(l)
    }
}

impl<'a> From<&'a [f32]> for Targets<'a> {
    fn from(v: &'a [f32]) -> Self {
        Targets::Values(v)
    }
}

/// Losses of one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Losses {
    /// `ℓ_i` of every sample.
    pub per_sample: Vec<f32>,
    /// `Σ_i weight_i·ℓ_i`: the loss whose gradient was computed (`weight_i = 1/B` gives the
    /// mean; ImbSAM's head and tail losses zero the other samples' weights).
    pub loss: f64,
    /// Samples with a non-zero weight.
    pub samples: usize,
}

impl Losses {
    /// The report `samkit_core::Optimizer::step`'s oracle returns.
    pub fn eval(&self) -> Eval {
        Eval {
            loss: self.loss,
            samples: self.samples,
        }
    }
}

/// `1/B` for each of `b` samples: the weights of a mean loss.
pub fn mean_weights(b: usize) -> Vec<f32> {
    vec![1.0 / b.max(1) as f32; b]
}

/// An error unless `arena` holds exactly the values of `layout` (`what` names the buffer).
pub(crate) fn check_arena_len<B: Backend>(
    what: &'static str,
    arena: &B::Arena,
    layout: &Layout,
) -> Result<()> {
    let have = B::arena_len(arena);
    if have != layout.len() {
        return Err(Error::shape(
            what,
            format!("{have} values, the layout has {}", layout.len()),
        ));
    }
    Ok(())
}

/// A non-trainable tensor saved with the model (PyTorch's buffers).
#[derive(Clone, Debug, PartialEq)]
pub enum BufferData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NamedBuffer {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: BufferData,
}

/// A network whose parameters live in one flat arena laid out as [`Model::layout`].
pub trait Model {
    type Backend: Backend;

    /// Parameter names, shapes and offsets, in `model.parameters()` order.
    fn layout(&self) -> &Layout;

    /// Outputs (logits) `[N, out]` on the host, without gradients. In [`BnMode::Train`] the
    /// running statistics are updated as a training forward pass would.
    fn forward(
        &mut self,
        params: &<Self::Backend as Backend>::Arena,
        x: &Tensor,
        mode: BnMode,
    ) -> Result<Tensor>;

    /// Per-sample losses and the gradient of `Σ_i weight_i·ℓ_i`, written over `grad` (laid
    /// out as the parameters).
    fn forward_backward(
        &mut self,
        params: &<Self::Backend as Backend>::Arena,
        x: &Tensor,
        targets: Targets<'_>,
        weights: &[f32],
        mode: BnMode,
        grad: &mut <Self::Backend as Backend>::Arena,
    ) -> Result<Losses>;

    /// Adds `Σ_i (∇ℓ_i)²` over the batch's samples to `out` (SSAM-F's empirical Fisher), with
    /// batch norm in inference mode (running statistics, not updated). Call it on successive
    /// sub-batches to cover `n_s` samples.
    fn per_sample_grad_sq(
        &mut self,
        params: &<Self::Backend as Backend>::Arena,
        x: &Tensor,
        targets: Targets<'_>,
        out: &mut <Self::Backend as Backend>::Arena,
    ) -> Result<Losses>;

    /// Buffers saved beside the parameters (batch-norm running statistics), in
    /// `state_dict` order.
    fn buffers(&mut self) -> Result<Vec<NamedBuffer>>;

    /// Names and shapes of [`Model::buffers`], without reading them.
    fn buffer_specs(&self) -> Vec<(String, Vec<usize>, BufferKind)>;

    /// Replaces the buffers; names and shapes must match [`Model::buffer_specs`].
    fn set_buffers(&mut self, buffers: &[NamedBuffer]) -> Result<()>;
}

/// The element type of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferKind {
    F32,
    I64,
}

/// The loss of a model's outputs: per-sample values and `d(Σ w_i ℓ_i)/d(outputs)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossKind {
    /// Label-smoothed cross-entropy of ALGORITHMS.md (`smoothing = 0`: plain cross-entropy).
    CrossEntropy { smoothing: f32 },
    /// `ℓ_i = Σ_o (y_io − t_io)²` (the linear model of `samkit linreg`).
    SquaredError,
}

impl LossKind {
    /// Per-sample losses of outputs `[n, out]`; fills `grad` (same shape) when given.
    pub fn eval(
        &self,
        outputs: &[f32],
        n: usize,
        out: usize,
        targets: Targets<'_>,
        weights: &[f32],
        grad: Option<&mut [f32]>,
    ) -> Result<Losses> {
        if weights.len() != n || outputs.len() != n * out {
            return Err(Error::shape(
                "loss",
                format!(
                    "{} outputs for {n}×{out}, {} weights",
                    outputs.len(),
                    weights.len()
                ),
            ));
        }
        let per_sample = match (*self, targets) {
            (LossKind::CrossEntropy { smoothing }, Targets::Labels(labels)) => {
                if labels.len() != n {
                    return Err(Error::shape(
                        "labels",
                        format!("{} labels for {n} samples", labels.len()),
                    ));
                }
                samkit_core::loss::smooth_cross_entropy(
                    outputs, labels, out, smoothing, weights, grad,
                )?
            }
            (LossKind::SquaredError, Targets::Values(t)) => {
                if t.len() != n * out {
                    return Err(Error::shape(
                        "targets",
                        format!("{} targets for {n}×{out} outputs", t.len()),
                    ));
                }
                let mut losses = Vec::with_capacity(n);
                let mut grad = grad;
                for i in 0..n {
                    let mut l = 0.0f64;
                    for o in 0..out {
                        let r = outputs[i * out + o] as f64 - t[i * out + o] as f64;
                        l += r * r;
                        if let Some(g) = grad.as_deref_mut() {
                            g[i * out + o] = (2.0 * weights[i] as f64 * r) as f32;
                        }
                    }
                    losses.push(l as f32);
                }
                losses
            }
            (k, _) => {
                return Err(Error::invalid(
                    "targets",
                    format!(
                        "{k:?} needs {} targets",
                        match k {
                            LossKind::CrossEntropy { .. } => "class-label",
                            LossKind::SquaredError => "real-valued",
                        }
                    ),
                ))
            }
        };
        let loss = per_sample
            .iter()
            .zip(weights)
            .map(|(&l, &w)| l as f64 * w as f64)
            .sum();
        Ok(Losses {
            samples: weights.iter().filter(|&&w| w != 0.0).count(),
            per_sample,
            loss,
        })
    }
}
