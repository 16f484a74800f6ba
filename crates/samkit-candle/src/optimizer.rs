//! [`CandleSam`]: a samkit optimizer driving candle Vars through the two-pass step.
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use samkit_core::{
    drive_step, Eval, FirstOutcome, GradRequest, NoHooks, Outcome, StepHooks, StepReport,
};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::vars::{ParamVars, VarGrads};

/// The sample count the closure-form step reports to samkit's driver for a scalar loss: the
/// adapter does not know how many samples entered it, and any non-zero count means "some" (for
/// ImbSAM's tail: the batch has tail samples).
const SOME_SAMPLES: usize = 1;

/// Any samkit rule and base optimizer over candle Vars.
///
/// The backend `O` is the samkit optimizer that owns the state: [`samkit_core::Optimizer`] for
/// Vars on the CPU ([`CandleSam::new`]) or, with the `cuda` feature, `samkit_cuda`'s
/// `GpuOptimizer<f32>` for Vars on a CUDA device (`CandleSam::new_cuda`). Both update the Vars'
/// own memory in place. The adapter is generic over `O` through samkit's [`SamOptimizer`](samkit_core::SamOptimizer)
/// protocol, and [`step`](CandleSam::step) is samkit's [`drive_step`] with candle's backward
/// pass as the gradient oracle.
///
/// Two ways to step:
/// - [`step`](CandleSam::step) takes the loss function and runs every pass the rule asks for;
/// - the explicit protocol ([`first_step`](CandleSam::first_step) /
///   [`second_step`](CandleSam::second_step), [`set_fisher`](CandleSam::set_fisher)) takes
///   candle `GradStore`s for a trainer that runs its own passes.
pub struct CandleSam<O> {
    vars: ParamVars,
    opt: O,
}

impl<O: Backend> CandleSam<O> {
    /// Wraps an optimizer built for `vars.layout()` on the Vars' device.
    pub fn with_optimizer(vars: ParamVars, opt: O) -> Result<Self> {
        if opt.layout() != vars.layout() {
            return Err(Error::Mismatch(format!(
                "the optimizer's layout has {} segments ({} parameters), the Vars {} ({})",
                opt.layout().segments().len(),
                opt.layout().len(),
                vars.layout().segments().len(),
                vars.layout().len()
            )));
        }
        opt.check_device(&vars)?;
        Ok(CandleSam { vars, opt })
    }

    pub fn vars(&self) -> &ParamVars {
        &self.vars
    }

    /// The samkit optimizer: learning rate and ρ schedules (`set_lr`, `set_rho`), counters
    /// (`status`), state.
    pub fn optimizer(&self) -> &O {
        &self.opt
    }

    pub fn optimizer_mut(&mut self) -> &mut O {
        &mut self.opt
    }

    pub fn into_parts(self) -> (ParamVars, O) {
        (self.vars, self.opt)
    }

    /// Pass 1 of the explicit protocol, with the gradients of the clean loss.
    pub fn first_step(&mut self, grads: &GradStore) -> Result<FirstOutcome> {
        let g = self.vars.grads(grads)?;
        self.opt.first_step(&mut self.vars, &g)
    }

    /// ImbSAM's pass 1: the gradients of the head loss and, when the batch has tail samples, of
    /// the tail loss (see [`samkit_core::SamOptimizer::first_step_split`]).
    pub fn first_step_split(
        &mut self,
        head: &GradStore,
        tail: Option<&GradStore>,
    ) -> Result<FirstOutcome> {
        let h = self.vars.grads(head)?;
        let t = tail.map(|t| self.vars.grads(t)).transpose()?;
        self.opt.first_step_split(&mut self.vars, &h, t.as_ref())
    }

    /// Pass 2 of the explicit protocol, with the gradients at the perturbed weights: restores
    /// the weights and applies the base optimizer.
    pub fn second_step(&mut self, grads: &GradStore) -> Result<Outcome> {
        let g = self.vars.grads(grads)?;
        self.opt.second_step(&mut self.vars, &g)
    }

    /// Restores the weights of a perturbed step without updating them.
    pub fn abort(&mut self) -> Result<()> {
        self.opt.abort(&mut self.vars)
    }

    /// SSAM-F: hands over `F = Σ_i (∇ℓ_i)²`, one tensor per Var in layout order (see also
    /// [`ParamVars::fisher_from_losses`]).
    pub fn set_fisher(&mut self, fisher: Vec<Tensor>) -> Result<()> {
        let f = self.vars.grads_from(fisher)?;
        self.opt.set_fisher(&f)
    }

    /// One whole step: asks `loss_fn` for each loss the rule needs, at the weights as they are
    /// when it is called, and backpropagates it.
    ///
    /// `loss_fn(request)` computes, from the Vars:
    /// - `Batch(Clean)` then, for two-pass rules, `Batch(Perturbed)`: the mini-batch loss, a
    ///   scalar (the same batch both times; BatchNorm statistics should only be updated by the
    ///   clean pass);
    /// - `Fisher { samples }` (SSAM-F, every `interval` steps, before the batch): a vector of
    ///   per-sample losses over about `samples` training samples, BatchNorm in inference mode;
    ///   `F = Σ_i (∇ℓ_i)²` takes one backward pass per sample
    ///   ([`ParamVars::fisher_from_losses`]);
    /// - `Head` and `Tail(Clean)`, then `Tail(Perturbed)` (ImbSAM): the scalar losses
    ///   `Σ_{i∉tail} ℓ_i / B` and `Σ_{i∈tail} ℓ_i / B` (without `κ`); answer `Tail(Clean)` with
    ///   an empty tensor ([`no_tail`]) when the batch has no tail sample.
    ///
    /// If the perturbed pass fails, the weights are restored before the error is returned.
    pub fn step<F>(&mut self, loss_fn: F) -> Result<StepReport>
    where
        F: FnMut(GradRequest) -> candle_core::Result<Tensor>,
    {
        self.step_with_hooks(loss_fn, &mut NoHooks)
    }

    /// [`step`](Self::step) with samkit's phase hooks (for timing).
    pub fn step_with_hooks<F, H>(&mut self, mut loss_fn: F, hooks: &mut H) -> Result<StepReport>
    where
        F: FnMut(GradRequest) -> candle_core::Result<Tensor>,
        H: StepHooks<Error> + ?Sized,
    {
        let oracle = |request: GradRequest, vars: &ParamVars, out: &mut VarGrads| {
            let loss = loss_fn(request).map_err(|source| Error::LossFn { request, source })?;
            answer(request, vars, &loss, out)
        };
        // The oracle replaces these with candle's gradients; they are dropped with the step, so
        // candle's memory is not held between steps.
        let (mut g, mut g2) = (VarGrads::default(), VarGrads::default());
        drive_step(
            &mut self.opt,
            &mut self.vars,
            (&mut g, &mut g2),
            oracle,
            hooks,
        )
    }
}

/// Turns the loss the user computed for `request` into the gradient samkit's driver asked for.
fn answer(
    request: GradRequest,
    vars: &ParamVars,
    loss: &Tensor,
    out: &mut VarGrads,
) -> Result<Eval> {
    match request {
        GradRequest::Fisher { .. } => {
            *out = vars.fisher_from_losses(loss)?;
            let mean = loss.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            Ok(Eval {
                loss: mean,
                samples: loss.elem_count(),
            })
        }
        GradRequest::Tail(_) if loss.elem_count() == 0 => Ok(Eval {
            loss: 0.0,
            samples: 0,
        }),
        GradRequest::Tail(_) | GradRequest::Head | GradRequest::Batch(_) => {
            let value = scalar(request, loss)?;
            *out = vars.grads(&loss.backward()?)?;
            Ok(Eval {
                loss: value,
                samples: SOME_SAMPLES,
            })
        }
    }
}

/// The value of a scalar loss (any shape with one element, f32 or f64).
fn scalar(request: GradRequest, loss: &Tensor) -> Result<f64> {
    if loss.elem_count() != 1 {
        return Err(Error::LossShape {
            request,
            detail: format!("must be a scalar, got shape {:?}", loss.dims()),
        });
    }
    if !matches!(loss.dtype(), DType::F32 | DType::F64) {
        return Err(Error::LossShape {
            request,
            detail: format!("must be f32 or f64, got {:?}", loss.dtype()),
        });
    }
    Ok(loss
        .flatten_all()?
        .to_dtype(DType::F64)?
        .squeeze(0)?
        .to_scalar::<f64>()?)
}

/// The answer to `Tail(Clean)` for a batch without tail samples (ImbSAM): an empty tensor.
pub fn no_tail(device: &candle_core::Device) -> candle_core::Result<Tensor> {
    Tensor::zeros((0,), DType::F32, device)
}
