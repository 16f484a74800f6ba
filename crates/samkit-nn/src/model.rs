//! What a trainer sees of a model: forward passes, gradients written into one flat buffer laid
//! out as the model's `samkit_core::Layout`, per-sample squared gradients for SSAM-F, and the
//! buffers (batch-norm running statistics) a checkpoint carries beside the parameters.
//!
//! What the cheaper second passes of ALGORITHMS.md ("Cheaper second passes") need from a model:
//! - per-sample losses of every pass ([`Losses::per_sample`]), also from a forward without
//!   gradient ([`Model::forward_losses`], ESAM's SDS, MESA and SAF);
//! - a forward without gradient that keeps no activation for a backward pass and leaves the
//!   last training pass's activations alone ([`Model::forward`]);
//! - passes on a subset of the batch ([`Model::forward_backward_subset`], [`select_samples`]);
//! - SSAM-L's partial passes: the network as ordered [`Unit`]s ([`Model::units`]) and a pass 2
//!   that starts at a unit from the input the last full pass kept for it
//!   ([`Model::forward_backward_from`], with the backward through the whole network or stopping
//!   at that unit, [`BackwardExtent`]).
use std::ops::Range;

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
    /// Class indices and MESA/SAF's distillation term (`crate::distill`).
    Distill(crate::distill::DistillTargets<'a>),
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

/// A piece of the network in forward order (ResNet-18: the stem, each basic block, the head;
/// an MLP: each linear layer) and the parameter segments it owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// A readable name (`stem`, `layer2.1`, `head`, `fc0`).
    pub name: String,
    /// Indices into `Layout::segments()` of the unit's parameters (contiguous: layouts follow
    /// forward order).
    pub segments: Range<usize>,
}

/// The unit that owns segment `segment` (an index into `Layout::segments()`), if any.
pub fn unit_of_segment(units: &[Unit], segment: usize) -> Option<usize> {
    units.iter().position(|u| u.segments.contains(&segment))
}

/// SSAM-L's `u`: the first unit in forward order that owns a segment for which `perturbed`
/// holds (`None` when no segment is perturbed).
pub fn first_perturbed_unit(units: &[Unit], perturbed: impl Fn(usize) -> bool) -> Option<usize> {
    units
        .iter()
        .position(|u| u.segments.clone().any(&perturbed))
}

/// Builds the units of `layout` from the unit each segment name belongs to (`unit_of` returns
/// the unit's name); an error when a unit's segments are not contiguous.
pub(crate) fn units_from_layout(
    layout: &Layout,
    unit_of: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Unit>> {
    let mut units: Vec<Unit> = Vec::new();
    for (i, seg) in layout.segments().iter().enumerate() {
        let name = unit_of(&seg.name).ok_or_else(|| {
            Error::invalid(
                "layout",
                format!("segment `{}` belongs to no unit", seg.name),
            )
        })?;
        match units.last_mut() {
            Some(u) if u.name == name => u.segments.end = i + 1,
            _ => {
                if units.iter().any(|u| u.name == name) {
                    return Err(Error::invalid(
                        "layout",
                        format!("the segments of unit `{name}` are not contiguous"),
                    ));
                }
                units.push(Unit {
                    name,
                    segments: i..i + 1,
                });
            }
        }
    }
    Ok(units)
}

/// How far the backward pass of [`Model::forward_backward_from`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackwardExtent {
    /// Through the whole network (SSAM-L `exact`): the units before the start unit are not
    /// recomputed, their backward uses the activations the last full pass kept; every
    /// segment's gradient is written.
    Full,
    /// Stops at the start unit (SSAM-L `truncated`): the gradients of the units before it are
    /// left untouched in `grad` (the caller decides what they hold, e.g. pass 1's gradient),
    /// and no input gradient of the start unit is computed.
    StopAtStart,
}

/// Targets of a [`select_samples`] subset, owned.
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedTargets {
    Labels(Vec<usize>),
    Values(Vec<f32>),
}

impl OwnedTargets {
    pub fn as_targets(&self) -> Targets<'_> {
        match self {
            OwnedTargets::Labels(l) => Targets::Labels(l),
            OwnedTargets::Values(v) => Targets::Values(v),
        }
    }
}

/// The samples `subset` (indices into the batch, in that order) of a host batch `x` (first
/// dimension the batch) and of its targets. The indices must be distinct and below the batch
/// size, and at least one (a prefix of a permutation, `&perm[..k]`, is such a list). Device
/// tensors are refused: gather on the host before the upload.
pub fn select_samples(
    x: &Tensor,
    targets: Targets<'_>,
    subset: &[usize],
) -> Result<(Tensor, OwnedTargets)> {
    let shape = x.shape();
    let n = shape.first().copied().unwrap_or(0);
    if subset.is_empty() {
        return Err(Error::invalid("subset", "no sample selected".to_string()));
    }
    let mut seen = vec![false; n];
    for &i in subset {
        if i >= n {
            return Err(Error::invalid(
                "subset",
                format!("sample {i} of a batch of {n}"),
            ));
        }
        if std::mem::replace(&mut seen[i], true) {
            return Err(Error::invalid(
                "subset",
                format!("sample {i} selected twice"),
            ));
        }
    }
    let data = x.as_slice()?;
    let row = data.len() / n;
    let mut out = Vec::with_capacity(subset.len() * row);
    for &i in subset {
        out.extend_from_slice(&data[i * row..(i + 1) * row]);
    }
    let mut sub_shape = shape.to_vec();
    sub_shape[0] = subset.len();
    let t = match targets {
        Targets::Labels(l) => {
            if l.len() != n {
                return Err(Error::shape(
                    "labels",
                    format!("{} labels for {n} samples", l.len()),
                ));
            }
            OwnedTargets::Labels(subset.iter().map(|&i| l[i]).collect())
        }
        Targets::Distill(_) => {
            return Err(Error::invalid(
                "subset",
                "a pass with the distillation term runs on the whole batch".to_string(),
            ))
        }
        Targets::Values(v) => {
            if v.len() % n != 0 {
                return Err(Error::shape(
                    "targets",
                    format!("{} targets for {n} samples", v.len()),
                ));
            }
            let per = v.len() / n;
            OwnedTargets::Values(
                subset
                    .iter()
                    .flat_map(|&i| v[i * per..(i + 1) * per].iter().copied())
                    .collect(),
            )
        }
    };
    Ok((Tensor::from_vec(out, &sub_shape)?, t))
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
    ///
    /// Keeps no activation for a backward pass (a small workspace of its own, reused from
    /// call to call) and leaves what the last pass with gradient kept untouched, so that a
    /// [`Model::forward_backward_from`] may follow it.
    fn forward(
        &mut self,
        params: &<Self::Backend as Backend>::Arena,
        x: &Tensor,
        mode: BnMode,
    ) -> Result<Tensor>;

    /// A forward without gradient (as [`Model::forward`]) and the per-sample losses of its
    /// outputs; `loss` is their mean.
    fn forward_losses(
        &mut self,
        params: &<Self::Backend as Backend>::Arena,
        x: &Tensor,
        targets: Targets<'_>,
        mode: BnMode,
    ) -> Result<Losses>;

    /// The network's units in forward order.
    fn units(&self) -> &[Unit];

    /// Pass 2 from unit `start` (SSAM-L): the units before `start` are not recomputed; unit
    /// `start` runs from the input that the last full pass with gradient
    /// ([`Model::forward_backward`] or [`Model::per_sample_grad_sq`]) computed for it, on
    /// that pass's batch, at `params`. Returns that batch's per-sample losses (`targets` and
    /// `weights` as in [`Model::forward_backward`]) and writes the gradient of `Σ wᵢℓᵢ`
    /// over the segments `backward` covers.
    ///
    /// Batch norm uses the batch statistics (the kept pass's mode: the running statistics when
    /// it ran in [`BnMode::Eval`]) and never updates the running statistics. With the weights
    /// of the units before `start` unchanged since the kept pass, the losses and the
    /// gradients written are bit-identical to those of a full
    /// `forward_backward(.., BnMode::TrainNoUpdate, ..)`.
    ///
    /// An error when nothing is kept (no full pass yet, or a pass on another batch shape
    /// since), or when a pass from an earlier unit ran since the full pass (its activations
    /// are no longer those of the full pass): a pass from `start` may follow passes from
    /// units `≥ start`.
    #[allow(clippy::too_many_arguments)]
    fn forward_backward_from(
        &mut self,
        params: &<Self::Backend as Backend>::Arena,
        start: usize,
        targets: Targets<'_>,
        weights: &[f32],
        backward: BackwardExtent,
        grad: &mut <Self::Backend as Backend>::Arena,
    ) -> Result<Losses>;

    /// [`Model::forward_backward`] on the samples `subset` of a host batch (see
    /// [`select_samples`]): batch norm normalises with the subset's statistics, the gradient
    /// is that of the subset's mean loss `mean_{i∈subset} ℓᵢ` (ESAM's pass 2 on `B⁺`), and
    /// the per-sample losses come in `subset` order.
    fn forward_backward_subset(
        &mut self,
        params: &<Self::Backend as Backend>::Arena,
        x: &Tensor,
        targets: Targets<'_>,
        subset: &[usize],
        mode: BnMode,
        grad: &mut <Self::Backend as Backend>::Arena,
    ) -> Result<Losses> {
        let (xs, ts) = select_samples(x, targets, subset)?;
        let w = mean_weights(subset.len());
        self.forward_backward(params, &xs, ts.as_targets(), &w, mode, grad)
    }

    /// [`Model::forward_losses`] on the samples `subset` of a host batch (see
    /// [`select_samples`]; batch statistics of the subset), losses in `subset` order.
    fn forward_losses_subset(
        &mut self,
        params: &<Self::Backend as Backend>::Arena,
        x: &Tensor,
        targets: Targets<'_>,
        subset: &[usize],
        mode: BnMode,
    ) -> Result<Losses> {
        let (xs, ts) = select_samples(x, targets, subset)?;
        self.forward_losses(params, &xs, ts.as_targets(), mode)
    }

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
    /// [`LossKind::eval`] of the first `n·out` values of a model's host output buffer,
    /// writing `d(Σ w_i ℓ_i)/d(outputs)` into the first `n·out` values of `dout` (the
    /// workspaces are sized for the largest batch seen, so both may be longer).
    pub(crate) fn eval_into(
        &self,
        outputs: &[f32],
        dout: &mut [f32],
        n: usize,
        out: usize,
        targets: Targets<'_>,
        weights: &[f32],
    ) -> Result<Losses> {
        let len = n * out;
        if outputs.len() < len || dout.len() < len {
            return Err(Error::shape(
                "loss",
                format!(
                    "{} outputs and {} output gradients for {n}×{out}",
                    outputs.len(),
                    dout.len()
                ),
            ));
        }
        self.eval(
            &outputs[..len],
            n,
            out,
            targets,
            weights,
            Some(&mut dout[..len]),
        )
    }

    /// The per-sample losses and their mean of the first `n·out` values of a model's host
    /// output buffer, without gradient ([`Model::forward_losses`]).
    pub(crate) fn eval_mean(
        &self,
        outputs: &[f32],
        n: usize,
        out: usize,
        targets: Targets<'_>,
    ) -> Result<Losses> {
        let len = n * out;
        let outputs = outputs.get(..len).ok_or_else(|| {
            Error::shape("loss", format!("{} outputs for {n}×{out}", outputs.len()))
        })?;
        self.eval(outputs, n, out, targets, &mean_weights(n), None)
    }

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
            (LossKind::CrossEntropy { smoothing }, Targets::Distill(d)) => {
                crate::distill::distill_loss(outputs, out, smoothing, &d, weights, grad)?
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

/// What the last full pass with gradient left in a model's workspace, for
/// [`Model::forward_backward_from`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kept {
    /// Batch size of the kept pass.
    pub n: usize,
    /// The batch-norm mode it ran in.
    pub mode: BnMode,
    /// Units `0..=clean` still have the kept pass's inputs (a pass from unit `u` recomputes
    /// the activations of the units from `u` on, so afterwards only `0..=u` are clean).
    pub clean: usize,
}

impl Kept {
    /// The kept pass a pass from `start` of a network of `units` units may continue, and the
    /// batch-norm mode of that pass (batch statistics never update the running ones).
    pub(crate) fn continue_from(
        kept: Option<Kept>,
        start: usize,
        units: usize,
    ) -> Result<(Kept, BnMode)> {
        if start >= units {
            return Err(Error::invalid(
                "start unit",
                format!("unit {start} of a network of {units} units"),
            ));
        }
        let k = kept.ok_or_else(|| {
            Error::invalid(
                "start unit",
                "no full pass with gradient is kept for this batch (run forward_backward first)"
                    .to_string(),
            )
        })?;
        if start > k.clean {
            return Err(Error::invalid(
                "start unit",
                format!(
                    "unit {start}'s kept input was overwritten by a pass from unit {}",
                    k.clean
                ),
            ));
        }
        let mode = match k.mode {
            BnMode::Eval => BnMode::Eval,
            BnMode::Train | BnMode::TrainNoUpdate => BnMode::TrainNoUpdate,
        };
        Ok((k, mode))
    }
}

/// A pass from a unit ([`Model::forward_backward_from`]) that [`begin_pass_from`] admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PassFrom {
    /// Batch size of the kept pass it continues.
    pub n: usize,
    /// Batch-norm mode of the pass (see [`Kept::continue_from`]).
    pub mode: BnMode,
    /// The unit its backward stops at (its input gradient is not computed).
    pub stop: usize,
}

/// The bookkeeping of [`Model::forward_backward_from`] that every model shares: checks the
/// parameter and gradient arenas against `layout`, admits a pass from `start` after the kept
/// pass `kept` of a network of `units` units, and marks the units from `start` on as no longer
/// holding the kept pass's activations (the pass is about to overwrite them, and a failure
/// half-way leaves them overwritten too).
#[allow(clippy::too_many_arguments)]
pub(crate) fn begin_pass_from<B: Backend>(
    kept: &mut Option<Kept>,
    layout: &Layout,
    units: usize,
    params: &B::Arena,
    grad: &B::Arena,
    start: usize,
    backward: BackwardExtent,
) -> Result<PassFrom> {
    check_arena_len::<B>("parameters", params, layout)?;
    check_arena_len::<B>("gradient", grad, layout)?;
    let (k, mode) = Kept::continue_from(*kept, start, units)?;
    *kept = Some(Kept { clean: start, ..k });
    let stop = match backward {
        BackwardExtent::Full => 0,
        BackwardExtent::StopAtStart => start,
    };
    Ok(PassFrom { n: k.n, mode, stop })
}
