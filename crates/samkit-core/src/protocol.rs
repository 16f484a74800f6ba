//! The step protocol every samkit optimizer speaks, whatever holds its buffers.
//!
//! [`SamOptimizer`] is the explicit form of a step (`first_step`, pass 2 at the perturbed
//! weights, `second_step`), with ImbSAM's split first step and SSAM-F's Fisher, and the counters
//! a trainer logs. It is implemented by [`crate::Optimizer`] (host buffers, any
//! [`crate::Params`]) and by `samkit_cuda::GpuOptimizer` (device buffers), with the same
//! outcomes on both: a non-finite gradient answers [`FirstOutcome::Skipped`] or
//! [`Outcome::Skipped`] and leaves weights and state as they were.
//!
//! [`drive_step`] is the closure form, written once for every backend: it asks an oracle for the
//! gradients the rule needs (SSAM-F's Fisher, ImbSAM's head and tail, the clean and perturbed
//! batch gradients), runs the protocol, restores the weights when the oracle fails at the
//! perturbed weights, and calls [`StepHooks`] around each phase so a trainer can time them.
//!
//! The weights `W` and gradients `G` are type parameters of the trait rather than associated
//! types so that one optimizer accepts every buffer shape its backend knows (a flat `[f32]`, a
//! `Vec<Vec<f32>>` per segment, ...) without adapters:
//!
//! ```
//! use samkit_core::{drive_step, Eval, GradRequest, Layout, NoHooks, Optimizer, Outcome};
//! use samkit_core::{BaseOptimizer, Rule, Sam, Sgd};
//!
//! let layout = Layout::from_lengths(&[2]).unwrap();
//! let mut opt = Optimizer::new(
//!     layout,
//!     Rule::Sam(Sam { rho: 0.05, ..Sam::default() }),
//!     BaseOptimizer::Sgd(Sgd { lr: 0.1, ..Sgd::default() }),
//! )
//! .unwrap();
//! let mut w = vec![1.0f32, -2.0];
//! let (mut g, mut g2) = (vec![0.0f32; 2], vec![0.0f32; 2]);
//! // Loss ½‖w‖²: the gradient is w.
//! let oracle = |_: GradRequest, w: &Vec<f32>, out: &mut Vec<f32>| {
//!     out.copy_from_slice(w);
//!     let loss = 0.5 * w.iter().map(|&x| f64::from(x * x)).sum::<f64>();
//!     Ok::<_, samkit_core::Error>(Eval { loss, samples: 2 })
//! };
//! let report = drive_step(&mut opt, &mut w, (&mut g, &mut g2), oracle, &mut NoHooks).unwrap();
//! assert_eq!(report.outcome, Outcome::Applied);
//! assert!(report.perturbed_loss.is_some());
//! ```
use std::time::Duration;

use crate::base::BaseOptimizer;
use crate::layout::Layout;
use crate::optimizer::{Eval, FirstOutcome, GradRequest, Outcome, Pass, StepReport};
use crate::rules::Rule;

/// The checks both optimizers make and the protocol errors they answer, written once so that
/// [`crate::Optimizer`] and `samkit_cuda::GpuOptimizer` accept and refuse alike, in the same
/// words.
pub mod checks {
    use crate::error::{Error, Result};
    use crate::layout::Layout;
    use crate::rules::{Rule, Ssam};

    /// A learning rate for `set_lr`: finite and > 0.
    pub fn lr(lr: f32) -> Result<()> {
        crate::error::check_positive("lr", lr)
    }

    /// What the rule needs of the layout, at construction, besides [`Rule::validate`]: the
    /// official Sparse SAM schedule's epoch length ([`Ssam::check_epoch_length`]) and SAM-ON's
    /// norm-layer segments. An error then, never a panic or a wrong step later.
    pub fn rule_layout(rule: &Rule, layout: &Layout) -> Result<()> {
        if let Rule::Ssam(c) = rule {
            c.check_epoch_length()?;
        }
        if matches!(rule, Rule::SamOn(_)) && !layout.has_norm_segments() {
            return Err(Error::InvalidLayout(
                "SAM-ON perturbs the norm-layer segments and the layout marks none (name them \
                 like `bn1.weight`, or mark them with Layout::set_norm)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// A call (`what`) that needs the weights unperturbed.
    pub fn idle(perturbed: bool, what: &str) -> Result<()> {
        if perturbed {
            return Err(Error::Protocol(format!(
                "{what} called while the weights are perturbed: call second_step first"
            )));
        }
        Ok(())
    }

    /// Pass 1 in the rule's form: ImbSAM takes `first_step_split` (`split`), every other rule
    /// `first_step`.
    pub fn first_step_form(rule: &Rule, split: bool) -> Result<()> {
        match (matches!(rule, Rule::ImbSam(_)), split) {
            (true, false) => Err(Error::Protocol(
                "ImbSAM takes separate head and tail gradients: call first_step_split".into(),
            )),
            (false, true) => Err(Error::Protocol(format!(
                "first_step_split is ImbSAM's; {} takes first_step",
                rule.name()
            ))),
            _ => Ok(()),
        }
    }

    /// The configuration `set_fisher` works with: SSAM-F's, or SSAM-L's with the `fisher`
    /// selection.
    pub fn fisher_rule(rule: &Rule) -> Result<&Ssam> {
        let Rule::Ssam(c) = rule else {
            return Err(Error::Protocol(format!(
                "set_fisher is for SSAM-F, not {}",
                rule.name()
            )));
        };
        if c.fisher_samples().is_none() {
            return Err(Error::Protocol(format!(
                "set_fisher is for SSAM-F and SSAM-L fisher, not {}",
                rule.name()
            )));
        }
        Ok(c)
    }

    /// The error of pass 1 while the Fisher information over `samples` samples is due at
    /// step `step`.
    pub fn fisher_missing(samples: usize, step: u64) -> Error {
        Error::Protocol(format!(
            "SSAM-F needs the Fisher information over {samples} samples at step {step}: call \
             set_fisher first"
        ))
    }

    /// The error of `second_step` without a perturbation.
    pub fn not_perturbed() -> Error {
        Error::Protocol("second_step without a perturbation: call first_step first".into())
    }
}

/// An optimizer's counters as of its last completed (or skipped) step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Completed steps (the `t` of ALGORITHMS.md).
    pub steps: u64,
    /// Steps skipped because a gradient had a non-finite value.
    pub skipped: u64,
    /// Base-optimizer updates applied (torch's `state['step']`).
    pub base_steps: u64,
    /// Sparse SAM mask updates committed.
    pub mask_updates: u64,
    /// Whether the last step was skipped.
    pub last_skipped: bool,
}

impl Status {
    /// The outcome of the last step (`None` before the first one).
    pub fn last_outcome(&self) -> Option<Outcome> {
        if self.steps + self.skipped == 0 {
            None
        } else if self.last_skipped {
            Some(Outcome::Skipped)
        } else {
            Some(Outcome::Applied)
        }
    }
}

/// The step protocol of the SAM family on weights `W` and gradients `G`.
///
/// A step: if [`needs_fisher`](SamOptimizer::needs_fisher) answers `Some(n)`, hand over the
/// Fisher with [`set_fisher`](SamOptimizer::set_fisher); then [`first_step`](SamOptimizer::first_step)
/// with the clean gradient (ImbSAM, when [`needs_head_tail`](SamOptimizer::needs_head_tail):
/// [`first_step_split`](SamOptimizer::first_step_split) with the head and tail gradients). On
/// [`FirstOutcome::Perturbed`], evaluate the gradient at the perturbed weights and call
/// [`second_step`](SamOptimizer::second_step), or [`abort`](SamOptimizer::abort) to give the
/// step up. [`drive_step`] does all of this with a gradient oracle.
pub trait SamOptimizer<W: ?Sized, G: ?Sized = W> {
    /// The backend's error; a protocol or hyperparameter error of samkit-core converts into it.
    type Error: From<crate::Error> + std::error::Error;

    fn layout(&self) -> &Layout;
    fn rule(&self) -> &Rule;
    fn base(&self) -> &BaseOptimizer;
    /// The learning rate of the next steps.
    fn lr(&self) -> f32;
    /// Sets the learning rate of the next steps (from a schedule).
    fn set_lr(&mut self, lr: f32) -> Result<(), Self::Error>;
    /// Sets the perturbation radius of the next steps; an error for GSAM (ρ follows the learning
    /// rate) and the plain base optimizer.
    fn set_rho(&mut self, rho: f32) -> Result<(), Self::Error>;
    /// True between `first_step` answering `Perturbed` and `second_step` (or `abort`).
    fn is_perturbed(&self) -> bool;
    /// SSAM-F: the number of training samples of the Fisher the next step needs, every `K`
    /// steps. Reads the step count (a backend may wait for the previous step).
    fn needs_fisher(&mut self) -> Result<Option<usize>, Self::Error>;
    /// ImbSAM: pass 1 takes separate head and tail gradients.
    fn needs_head_tail(&self) -> bool;
    /// SSAM-F: hands over `F = Σ_i (∇ℓ_i)²`; the mask becomes its top entries at the next step.
    fn set_fisher(&mut self, fisher: &G) -> Result<(), Self::Error>;
    /// Pass 1 with the clean gradient. See [`FirstOutcome`].
    fn first_step(&mut self, w: &mut W, g: &G) -> Result<FirstOutcome, Self::Error>;
    /// ImbSAM's pass 1: the gradients of `Σ_{i∉tail} ℓ_i / B` and `Σ_{i∈tail} ℓ_i / B`
    /// (without `κ`); `tail = None` when the batch has no tail sample.
    fn first_step_split(
        &mut self,
        w: &mut W,
        head: &G,
        tail: Option<&G>,
    ) -> Result<FirstOutcome, Self::Error>;
    /// Pass 2 with the gradient at the perturbed weights (ImbSAM: of the tail loss): restores
    /// the weights exactly and applies the base optimizer, or skips the step when that gradient
    /// has a non-finite value.
    fn second_step(&mut self, w: &mut W, g2: &G) -> Result<Outcome, Self::Error>;
    /// Abandons a perturbed step: restores the weights exactly, leaves all state as it was.
    fn abort(&mut self, w: &mut W) -> Result<(), Self::Error>;
    /// The counters after the last step (a backend may wait for its end).
    fn status(&mut self) -> Result<Status, Self::Error>;
    /// Time of the most recent mask computation (SSAM-F's top-k, SSAM-D's drop/grow), taken
    /// once; `None` when there was none or the backend does not time it.
    fn take_mask_time(&mut self) -> Result<Option<Duration>, Self::Error>;
}

/// The phases of a closure-form step, in the order [`drive_step`] runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StepPhase {
    /// SSAM-F: the oracle computes the Fisher.
    Fisher,
    /// SSAM-F: the optimizer turns the Fisher into the next mask (`set_fisher`).
    Mask,
    /// The oracle computes the clean gradient (ImbSAM: head and tail).
    Pass1,
    /// `first_step`: the perturbation, or the whole update of a one-pass step (SSAM-D's
    /// drop/grow is inside; see [`SamOptimizer::take_mask_time`]).
    Perturb,
    /// The oracle computes the gradient at the perturbed weights.
    Pass2,
    /// `second_step`: restore and update.
    Update,
}

/// Callbacks around the phases of [`drive_step`], for timing (a CPU trainer reads a clock; a
/// GPU trainer records events on its stream). A phase that does not run (no Fisher this step,
/// no second pass) is not announced. `E` is the oracle's error type.
pub trait StepHooks<E> {
    fn begin(&mut self, _phase: StepPhase) -> Result<(), E> {
        Ok(())
    }
    fn end(&mut self, _phase: StepPhase) -> Result<(), E> {
        Ok(())
    }
}

/// Hooks that do nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl<E> StepHooks<E> for NoHooks {}

fn phase<T, E, H: StepHooks<E> + ?Sized>(
    hooks: &mut H,
    p: StepPhase,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    hooks.begin(p)?;
    let r = f()?;
    hooks.end(p)?;
    Ok(r)
}

/// One whole step of `opt` through a gradient oracle, on any backend.
///
/// `oracle(request, weights, grad_out)` overwrites `grad_out` with the requested gradient (see
/// [`GradRequest`]; for [`GradRequest::Fisher`] the buffer's previous content is unspecified)
/// and reports the loss. `grads` are two gradient buffers laid out as the optimizer's layout:
/// pass 1 (ImbSAM: the head) and SSAM-F's Fisher go to the first, pass 2 and ImbSAM's tail to
/// the second. The oracle's error type `E` is its own; the optimizer's errors convert into it.
/// When the oracle fails at the perturbed weights the step is aborted (weights restored) and
/// the oracle's error returned.
pub fn drive_step<O, W, G, E, F, H>(
    opt: &mut O,
    w: &mut W,
    grads: (&mut G, &mut G),
    mut oracle: F,
    hooks: &mut H,
) -> Result<StepReport, E>
where
    O: SamOptimizer<W, G> + ?Sized,
    W: ?Sized,
    G: ?Sized,
    E: From<O::Error>,
    F: FnMut(GradRequest, &W, &mut G) -> Result<Eval, E>,
    H: StepHooks<E> + ?Sized,
{
    let (g, g2) = grads;
    let before = opt.status()?.mask_updates;
    let mut mask_updated = false;
    if let Some(samples) = opt.needs_fisher()? {
        phase(hooks, StepPhase::Fisher, || {
            oracle(GradRequest::Fisher { samples }, &*w, g)
        })?;
        phase(hooks, StepPhase::Mask, || Ok(opt.set_fisher(&*g)?))?;
        mask_updated = true;
    }
    let (first, loss, pass2) = if opt.needs_head_tail() {
        let kappa = match opt.rule() {
            Rule::ImbSam(c) => f64::from(c.kappa),
            _ => 1.0,
        };
        let (head, tail) = phase(hooks, StepPhase::Pass1, || {
            let head = oracle(GradRequest::Head, &*w, g)?;
            let tail = oracle(GradRequest::Tail(Pass::Clean), &*w, g2)?;
            Ok((head, tail))
        })?;
        let loss = head.loss + kappa * tail.loss;
        let tail_grad = (tail.samples > 0).then_some(&*g2);
        let first = phase(hooks, StepPhase::Perturb, || {
            Ok(opt.first_step_split(w, &*g, tail_grad)?)
        })?;
        (first, loss, GradRequest::Tail(Pass::Perturbed))
    } else {
        let e = phase(hooks, StepPhase::Pass1, || {
            oracle(GradRequest::Batch(Pass::Clean), &*w, g)
        })?;
        let first = phase(hooks, StepPhase::Perturb, || Ok(opt.first_step(w, &*g)?))?;
        (first, e.loss, GradRequest::Batch(Pass::Perturbed))
    };
    let (outcome, perturbed_loss) = match first {
        FirstOutcome::Applied => (Outcome::Applied, None),
        FirstOutcome::Skipped => (Outcome::Skipped, None),
        FirstOutcome::Perturbed => {
            let e = match phase(hooks, StepPhase::Pass2, || oracle(pass2, &*w, g2)) {
                Ok(e) => e,
                Err(err) => {
                    opt.abort(w)?;
                    return Err(err);
                }
            };
            let out = phase(hooks, StepPhase::Update, || Ok(opt.second_step(w, &*g2)?))?;
            (out, Some(e.loss))
        }
    };
    if !mask_updated {
        mask_updated = opt.status()?.mask_updates > before;
    }
    Ok(StepReport {
        outcome,
        loss,
        perturbed_loss,
        mask_updated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Optimizer, Sam, Sgd};

    #[derive(Debug, PartialEq)]
    enum OracleError {
        Core(String),
        Diverged,
    }

    impl From<crate::Error> for OracleError {
        fn from(e: crate::Error) -> Self {
            OracleError::Core(e.to_string())
        }
    }

    /// Records the phases in order.
    #[derive(Default)]
    struct Log(Vec<(bool, StepPhase)>);

    impl<E> StepHooks<E> for Log {
        fn begin(&mut self, p: StepPhase) -> Result<(), E> {
            self.0.push((true, p));
            Ok(())
        }
        fn end(&mut self, p: StepPhase) -> Result<(), E> {
            self.0.push((false, p));
            Ok(())
        }
    }

    fn sam() -> Optimizer {
        Optimizer::new(
            Layout::from_lengths(&[3]).unwrap(),
            Rule::Sam(Sam {
                rho: 0.05,
                ..Sam::default()
            }),
            BaseOptimizer::Sgd(Sgd {
                lr: 0.1,
                ..Sgd::default()
            }),
        )
        .unwrap()
    }

    fn quadratic(_: GradRequest, w: &[f32], out: &mut [f32]) -> Result<Eval, OracleError> {
        out.copy_from_slice(w);
        Ok(Eval {
            loss: w.iter().map(|&x| f64::from(x * x)).sum::<f64>() / 2.0,
            samples: 1,
        })
    }

    #[test]
    fn hooks_bracket_each_phase_in_order() {
        let mut opt = sam();
        let mut w = [1.0f32, -2.0, 0.5];
        let (mut g, mut g2) = (vec![0.0; 3], vec![0.0; 3]);
        let mut log = Log::default();
        let r = drive_step(
            &mut opt,
            &mut w[..],
            (&mut g[..], &mut g2[..]),
            quadratic,
            &mut log,
        )
        .unwrap();
        assert_eq!(r.outcome, Outcome::Applied);
        use StepPhase::*;
        let want: Vec<(bool, StepPhase)> = [Pass1, Perturb, Pass2, Update]
            .iter()
            .flat_map(|&p| [(true, p), (false, p)])
            .collect();
        assert_eq!(log.0, want);
        assert_eq!(
            opt.status(),
            Status {
                steps: 1,
                base_steps: 1,
                ..Status::default()
            }
        );
    }

    #[test]
    fn matches_optimizer_step() {
        let (mut a, mut b) = (sam(), sam());
        let mut wa = vec![1.0f32, -2.0, 0.5];
        let mut wb = wa.clone();
        let (mut g, mut g2) = (vec![0.0; 3], vec![0.0; 3]);
        for _ in 0..3 {
            drive_step(
                &mut a,
                &mut wa[..],
                (&mut g[..], &mut g2[..]),
                quadratic,
                &mut NoHooks,
            )
            .unwrap();
            b.step(&mut wb[..], |_, w: &[f32], out| {
                out.copy_from_slice(w);
                Ok(Eval::default())
            })
            .unwrap();
        }
        assert_eq!(wa, wb);
    }

    #[test]
    fn an_oracle_error_at_the_perturbed_weights_restores_them() {
        let mut opt = sam();
        let w0 = vec![1.0f32, -2.0, 0.5];
        let mut w = w0.clone();
        let (mut g, mut g2) = (vec![0.0; 3], vec![0.0; 3]);
        let oracle = |req: GradRequest, w: &[f32], out: &mut [f32]| match req {
            GradRequest::Batch(Pass::Perturbed) => Err(OracleError::Diverged),
            _ => quadratic(req, w, out),
        };
        let e = drive_step(
            &mut opt,
            &mut w[..],
            (&mut g[..], &mut g2[..]),
            oracle,
            &mut NoHooks,
        );
        assert_eq!(e, Err(OracleError::Diverged));
        assert_eq!(w, w0);
        assert!(!SamOptimizer::<[f32]>::is_perturbed(&opt));
        assert_eq!(opt.status(), Status::default());
    }

    #[test]
    fn a_non_finite_gradient_is_a_skipped_step() {
        let mut opt = sam();
        let w0 = vec![1.0f32, -2.0, 0.5];
        let mut w = w0.clone();
        let (mut g, mut g2) = (vec![0.0; 3], vec![0.0; 3]);
        let oracle = |req: GradRequest, w: &[f32], out: &mut [f32]| {
            quadratic(req, w, out)?;
            out[1] = f32::NAN;
            Ok::<_, OracleError>(Eval::default())
        };
        let r = drive_step(
            &mut opt,
            &mut w[..],
            (&mut g[..], &mut g2[..]),
            oracle,
            &mut NoHooks,
        )
        .unwrap();
        assert_eq!(r.outcome, Outcome::Skipped);
        assert_eq!(r.perturbed_loss, None);
        assert_eq!(w, w0);
        let s = opt.status();
        assert_eq!((s.steps, s.skipped, s.last_skipped), (0, 1, true));
        assert_eq!(s.last_outcome(), Some(Outcome::Skipped));
    }
}
