//! The step protocol shared by every rule of the family.
//!
//! Explicit form: [`Optimizer::first_step`] takes the clean gradient and either finishes a
//! one-pass step or leaves the weights perturbed; [`Optimizer::second_step`] takes the gradient
//! at the perturbed weights, restores the weights exactly and applies the base optimizer.
//! Closure form: [`Optimizer::step`] asks a [`GradRequest`] oracle for whatever the rule needs
//! (clean and perturbed gradients, ImbSAM's head and tail gradients, SSAM-F's Fisher).
use std::time::{Duration, Instant};

use crate::base::{BaseOptimizer, StepScalars};
use crate::bitset::Bitset;
use crate::chunks::Chunks;
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::params::{Params, ParamsMut};
use crate::passes::{
    centralized, dot_pass, norm_pass, per_segment, perturb_pass, restore_pass, update_pass, Base,
    Coef, Combine, Dir, Ema, FilterScales, Scale, Second, SideGv,
};
use crate::plan::{
    first_masked_segment, fisher_segments, segment_mask, suffix_segments, ApplyPlan,
    Direction as PlanDirection, ExtraAlong, FirstPlan, Grad as PlanGrad, MaskStep, NormOf,
    PerturbPlan, Scaling, SecondPlan, StepView,
};
use crate::protocol::{checks, drive_step, NoHooks, SamOptimizer, Status};
use crate::rules::{MaskClock, MaskKind, Rule, SegmentSelect};
use crate::sparse;

/// Which gradient the closure form asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradRequest {
    /// The mini-batch loss gradient at the given weights.
    Batch(Pass),
    /// ImbSAM: gradient of `Σ_{i∉tail} ℓ_i / B` at the current weights.
    Head,
    /// ImbSAM: gradient of `Σ_{i∈tail} ℓ_i / B` (without `κ`), clean or perturbed.
    Tail(Pass),
    /// SSAM-F: `Σ_i (∇ℓ_i)²` over this many training samples, BatchNorm in inference mode.
    Fisher { samples: usize },
}

/// Pass 1 updates BatchNorm running statistics; pass 2 (perturbed weights) must not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Clean,
    Perturbed,
}

/// What the oracle reports about an evaluation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Eval {
    pub loss: f64,
    /// Samples that entered the loss (ImbSAM: tail samples in the batch; 0 means none).
    pub samples: usize,
}

/// What [`Optimizer::first_step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstOutcome {
    /// The weights are perturbed: evaluate the gradient there and call `second_step`.
    Perturbed,
    /// A one-pass step was applied (plain base optimizer, LookSAM between SAM steps, ImbSAM on
    /// a batch without tail samples).
    Applied,
    /// The gradient had a non-finite value: nothing changed, the step was counted as skipped.
    Skipped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Skipped,
}

/// The result of a closure-form step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    pub outcome: Outcome,
    /// Loss of the first pass (ImbSAM: head + κ·tail).
    pub loss: f64,
    /// Loss at the perturbed weights, when there was a second pass.
    pub perturbed_loss: Option<f64>,
    /// Whether this step recomputed the sparse mask.
    pub mask_updated: bool,
}

/// Everything that persists between steps; saved and loaded by [`crate::state`] (through
/// [`crate::state::PortableState`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct State {
    /// Completed (not skipped) steps: the `t` of ALGORITHMS.md.
    pub step: u64,
    pub skipped: u64,
    /// Base-optimizer updates applied (torch's `state['step']`).
    pub base_steps: u64,
    pub base_bufs: [Vec<f32>; 3],
    /// FriendlySAM's `m`; empty until its first step.
    pub fsam_m: Vec<f32>,
    /// Sparse SAM's mask (SSAM-D: from construction; SSAM-F: after the first Fisher).
    pub mask: Option<Bitset>,
    pub mask_updates: u64,
    /// LookSAM's `g_v` and its squared norm (one entry, or one per segment).
    pub look_gv: Vec<f32>,
    pub look_gv_sq: Vec<f64>,
    /// OG-SAM's `g2_prev`, the last completed step's pass-2 gradient; empty before it.
    pub og_prev: Vec<f32>,
}

/// What the second step must do, decided by the first.
struct Pending {
    /// Squared norms of the clean gradient (LookSAM: global or per segment).
    g_sq: Vec<f64>,
    new_mask: Option<Bitset>,
    fsam_next: bool,
    /// OG-SAM: keep `g2` as `g2_prev`.
    keep_second: bool,
    /// What pass 2 combines ([`SecondPlan`]).
    second: SecondPlan,
}

enum Phase {
    Idle,
    Perturbed(Pending),
}

pub struct Optimizer {
    layout: Layout,
    chunks: Chunks,
    rule: Rule,
    base: BaseOptimizer,
    lr: f32,
    pub(crate) st: State,
    phase: Phase,
    w_old: Vec<f32>,
    /// A second gradient kept across the passes: GSAM/LookSAM's clean `g`, ImbSAM's `g_h`.
    aux: Vec<f32>,
    /// FriendlySAM's next `m`, committed when the step completes.
    fsam_next: Vec<f32>,
    /// SSAM-F's mask for the current step, from `set_fisher`.
    fisher_mask: Option<Bitset>,
    /// Gradient buffers of the closure form.
    scratch: [Vec<f32>; 2],
    /// Time spent on the last mask computation (top-k or drop/grow), for phase timings.
    mask_time: Option<Duration>,
    /// Whether the last step was skipped (for [`Status::last_skipped`]).
    last_skipped: bool,
}

impl Optimizer {
    pub fn new(layout: Layout, rule: Rule, base: BaseOptimizer) -> Result<Self> {
        rule.validate()?;
        base.validate()?;
        if layout.is_empty() {
            return Err(Error::InvalidLayout("the layout has no parameters".into()));
        }
        let n = layout.len();
        let mut st = State::default();
        for (i, _) in base.state_buffers().iter().enumerate() {
            st.base_bufs[i] = vec![0.0; n];
        }
        checks::rule_layout(&rule, &layout)?;
        if let Rule::Ssam(c) = &rule {
            match c.mask {
                MaskKind::Dynamic { seed, .. } => {
                    st.mask = Some(sparse::random_mask(n, c.live_count(n), seed));
                }
                MaskKind::Segments {
                    select: SegmentSelect::Suffix,
                } => {
                    let pick = suffix_segments(&layout, c.live_count(n));
                    st.mask = Some(segment_mask(&layout, &pick));
                }
                _ => {}
            }
        }
        let bufs = rule.plan_buffers();
        let lr = base.lr();
        Ok(Optimizer {
            chunks: Chunks::new(&layout),
            w_old: vec![0.0; n],
            aux: if bufs.kept_grad {
                vec![0.0; n]
            } else {
                Vec::new()
            },
            fsam_next: if bufs.ema { vec![0.0; n] } else { Vec::new() },
            layout,
            rule,
            base,
            lr,
            st,
            phase: Phase::Idle,
            fisher_mask: None,
            scratch: [Vec::new(), Vec::new()],
            mask_time: None,
            last_skipped: false,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    pub fn base(&self) -> &BaseOptimizer {
        &self.base
    }

    pub fn lr(&self) -> f32 {
        self.lr
    }

    /// Sets the learning rate of the next steps (from a schedule).
    pub fn set_lr(&mut self, lr: f32) -> Result<()> {
        checks::lr(lr)?;
        self.lr = lr;
        Ok(())
    }

    /// Sets the perturbation radius of the next steps (a schedule such as `ρ_t = c/√t`).
    /// GSAM ties ρ to the learning rate instead; the plain base optimizer has none.
    pub fn set_rho(&mut self, rho: f32) -> Result<()> {
        self.rule.set_rho(rho)
    }

    /// Completed steps.
    pub fn steps(&self) -> u64 {
        self.st.step
    }

    /// Steps skipped because a gradient had a non-finite value.
    pub fn skipped_steps(&self) -> u64 {
        self.st.skipped
    }

    pub fn mask(&self) -> Option<&Bitset> {
        self.st.mask.as_ref()
    }

    pub fn mask_updates(&self) -> u64 {
        self.st.mask_updates
    }

    /// The first segment (forward order) that the committed mask perturbs (SSAM-L: the trainer
    /// starts pass 2 at the unit that owns it); `None` without a mask or with an empty one.
    pub fn first_perturbed_segment(&self) -> Option<usize> {
        first_masked_segment(&self.layout, self.st.mask.as_ref()?)
    }

    /// OG-SAM's `g2_prev` (empty before its first completed step, and for the other rules).
    pub fn og_prev(&self) -> &[f32] {
        &self.st.og_prev
    }

    /// The counters after the last step (the same answer as `GpuOptimizer::status`).
    pub fn status(&self) -> Status {
        Status {
            steps: self.st.step,
            skipped: self.st.skipped,
            base_steps: self.st.base_steps,
            mask_updates: self.st.mask_updates,
            last_skipped: self.last_skipped,
        }
    }

    /// Time of the most recent mask computation (SSAM-F's top-k in `set_fisher`, SSAM-D's
    /// drop/grow inside `first_step`), taken and cleared: the trainer's "mask update" phase.
    pub fn take_mask_time(&mut self) -> Option<Duration> {
        self.mask_time.take()
    }

    /// A base-optimizer state buffer by its torch name (`momentum_buffer`, `exp_avg`, ...).
    pub fn base_state(&self, name: &str) -> Option<&[f32]> {
        let i = self.base.state_buffers().iter().position(|&s| s == name)?;
        Some(&self.st.base_bufs[i])
    }

    /// FriendlySAM's `m` (empty before its first step).
    pub fn friendly_momentum(&self) -> &[f32] {
        &self.st.fsam_m
    }

    /// LookSAM's `g_v`, the component of the SAM gradient orthogonal to the clean gradient
    /// (empty before its first completed step, and for the other rules).
    pub fn looksam_gv(&self) -> &[f32] {
        &self.st.look_gv
    }

    /// True between `first_step` returning `Perturbed` and `second_step`.
    pub fn is_perturbed(&self) -> bool {
        matches!(self.phase, Phase::Perturbed(_))
    }

    /// Whether the next step needs the Fisher information (SSAM-F: every `K` steps, or with the
    /// official schedule after the first batch of every `K`-th epoch;
    /// [`crate::rules::Ssam::fisher_due`]).
    pub fn needs_fisher(&self) -> Option<usize> {
        match &self.rule {
            Rule::Ssam(c) if self.fisher_mask.is_none() => {
                let clock = MaskClock {
                    steps: self.st.step,
                    skipped: self.st.skipped,
                    mask_updates: self.st.mask_updates,
                };
                c.fisher_samples().filter(|_| c.fisher_due(&clock))
            }
            _ => None,
        }
    }

    /// Whether the rule takes separate head and tail gradients (ImbSAM).
    pub fn needs_head_tail(&self) -> bool {
        matches!(self.rule, Rule::ImbSam(_))
    }

    /// SSAM-F: hands over `F = Σ_i (∇ℓ_i)²`; the mask becomes its top `L` entries at the
    /// next step.
    pub fn set_fisher<G: Params + ?Sized>(&mut self, fisher: &G) -> Result<()> {
        let c = checks::fisher_rule(&self.rule)?;
        self.expect_idle("set_fisher")?;
        let segs = fisher.segments(&self.layout, "fisher")?;
        let live = c.live_count(self.layout.len());
        let clock = Instant::now();
        self.fisher_mask = Some(if matches!(c.mask, MaskKind::Segments { .. }) {
            let pick = fisher_segments(&self.layout, &segs, live);
            segment_mask(&self.layout, &pick)
        } else {
            let units = self.chunks.split(segs);
            sparse::fisher_mask(&self.chunks, &units, self.layout.len(), live)
        });
        self.mask_time = Some(clock.elapsed());
        Ok(())
    }

    fn expect_idle(&self, what: &str) -> Result<()> {
        checks::idle(self.is_perturbed(), what)
    }

    fn skip(&mut self) -> FirstOutcome {
        self.st.skipped += 1;
        self.last_skipped = true;
        FirstOutcome::Skipped
    }

    fn scalars(&self) -> StepScalars {
        self.base.scalars(self.lr, self.st.base_steps + 1)
    }

    /// Splits the base state buffers into units (empty vectors for unused buffers).
    fn base_units<'a>(chunks: &Chunks, bufs: &'a mut [Vec<f32>; 3]) -> [Vec<&'a mut [f32]>; 3] {
        let [a, b, c] = bufs;
        let split = |v: &'a mut Vec<f32>| {
            if v.is_empty() {
                Vec::new()
            } else {
                chunks.split_flat_mut(v)
            }
        };
        [split(a), split(b), split(c)]
    }

    /// A one-pass update `w ← update(w, x + coef·y)`, with the step bookkeeping.
    fn apply_in_place<P: ParamsMut + ?Sized>(
        &mut self,
        w: &mut P,
        x: &[&[f32]],
        y: Option<Second>,
    ) -> Result<()> {
        let sc = self.scalars();
        let ws = self
            .chunks
            .split_mut(w.segments_mut(&self.layout, "weights")?);
        let state = Self::base_units(&self.chunks, &mut self.st.base_bufs);
        update_pass(
            &self.chunks,
            &self.base,
            &sc,
            ws,
            None,
            Combine { x, a: 1.0, y },
            state,
            None,
        );
        self.st.base_steps += 1;
        self.st.step += 1;
        self.last_skipped = false;
        Ok(())
    }

    /// Pass 1 of a step. See [`FirstOutcome`].
    pub fn first_step<P, G>(&mut self, w: &mut P, g: &G) -> Result<FirstOutcome>
    where
        P: ParamsMut + ?Sized,
        G: Params + ?Sized,
    {
        self.expect_idle("first_step")?;
        checks::first_step_form(&self.rule, false)?;
        if let Some(n) = Optimizer::needs_fisher(self) {
            return Err(checks::fisher_missing(n, self.st.step));
        }
        let view = self.view(None);
        let plan = self.rule.first_plan(&view);
        let g_u = self.chunks.split(g.segments(&self.layout, "gradient")?);
        let inputs = Inputs {
            grads: vec![(PlanGrad::Batch, g, g_u)],
        };
        self.run_first(w, plan, &inputs)
    }

    /// ImbSAM's pass 1: `head` and `tail` are the gradients of `Σ_{i∉tail} ℓ_i / B` and
    /// `Σ_{i∈tail} ℓ_i / B` (without `κ`); `tail = None` when the batch has no tail sample,
    /// which makes this a plain step with the head gradient.
    pub fn first_step_split<P, G>(
        &mut self,
        w: &mut P,
        head: &G,
        tail: Option<&G>,
    ) -> Result<FirstOutcome>
    where
        P: ParamsMut + ?Sized,
        G: Params + ?Sized,
    {
        self.expect_idle("first_step_split")?;
        checks::first_step_form(&self.rule, true)?;
        let plan = self.rule.first_plan(&self.view(Some(tail.is_some())));
        let h_u = self
            .chunks
            .split(head.segments(&self.layout, "head gradient")?);
        let mut grads = vec![(PlanGrad::Head, head, h_u)];
        if let Some(tail) = tail {
            let t_u = self
                .chunks
                .split(tail.segments(&self.layout, "tail gradient")?);
            grads.push((PlanGrad::Tail, tail, t_u));
        }
        self.run_first(w, plan, &Inputs { grads })
    }

    /// What the rule's plan reads of the optimizer's state.
    fn view(&self, tail: Option<bool>) -> StepView {
        StepView {
            t: self.st.step,
            lr: self.lr,
            tail,
            has_mask: self.st.mask.is_some() || self.fisher_mask.is_some(),
        }
    }

    /// Runs pass 1 of `plan`.
    fn run_first<P, G>(
        &mut self,
        w: &mut P,
        plan: FirstPlan,
        inputs: &Inputs<'_, G>,
    ) -> Result<FirstOutcome>
    where
        P: ParamsMut + ?Sized,
        G: Params + ?Sized,
    {
        match plan {
            FirstPlan::Apply(ApplyPlan { input, gv: None }) => {
                let x = inputs.units(input)?;
                if !dot_pass(&self.chunks, None, x).finite {
                    return Ok(self.skip());
                }
                self.apply_in_place(w, x, None)?;
                Ok(FirstOutcome::Applied)
            }
            FirstPlan::Apply(ApplyPlan {
                input,
                gv: Some(reuse),
            }) => {
                let g_u = inputs.units(input)?;
                let out = norm_pass(&self.chunks, Dir::PLAIN, g_u, None, None, None, None);
                if !out.finite {
                    return Ok(self.skip());
                }
                let segs = self.layout.segments().len();
                let gv_sq = self.st.look_gv_sq.clone();
                // b = α·‖g‖ / (‖g_v‖ + eps), 0 when the denominator is.
                let coef = |g_sq: f64, gv_sq: f64| -> f32 {
                    let gv = gv_sq.sqrt();
                    if gv + reuse.eps > 0.0 {
                        (reuse.alpha as f64 * g_sq.sqrt() / (gv + reuse.eps)) as f32
                    } else {
                        0.0
                    }
                };
                let per: Vec<f32>;
                let b = if reuse.per_segment {
                    let g_sq = per_segment(&self.chunks, &out.parts, segs);
                    per = g_sq.iter().zip(&gv_sq).map(|(&a, &b)| coef(a, b)).collect();
                    Coef::PerSegment(&per)
                } else {
                    Coef::Global(coef(out.sum_sq, gv_sq[0]))
                };
                let look_gv = std::mem::take(&mut self.st.look_gv);
                let gv_units: Vec<&[f32]> = self.chunks.split_flat(&look_gv);
                let sec = Second {
                    y: &gv_units,
                    b,
                    c: 0.0,
                };
                let r = self.apply_in_place(w, g_u, Some(sec));
                self.st.look_gv = look_gv;
                r?;
                Ok(FirstOutcome::Applied)
            }
            FirstPlan::Perturb(p) => self.perturb(w, &p, inputs),
        }
    }

    /// Pass 1 of a two-pass step: the mask of the step (Sparse SAM), the norm with the
    /// non-finite check (and FriendlySAM's EMA), then `w_old ← w; w ← w + e`, copying the
    /// gradient pass 2 needs again.
    fn perturb<P, G>(
        &mut self,
        w: &mut P,
        p: &PerturbPlan,
        inputs: &Inputs<'_, G>,
    ) -> Result<FirstOutcome>
    where
        P: ParamsMut + ?Sized,
        G: Params + ?Sized,
    {
        let g_u = inputs.units(p.along)?;
        let n = self.layout.len();
        let step_mask = match p.mask() {
            Some(MaskStep::Segments) => {
                let pick = self
                    .rule
                    .step_segments(&self.layout, self.st.step)
                    .ok_or_else(|| {
                        Error::Protocol(format!(
                            "{} has no per-step segment selection",
                            self.rule.name()
                        ))
                    })?;
                Some(segment_mask(&self.layout, &pick))
            }
            _ => None,
        };
        let new_mask = match p.mask() {
            None | Some(MaskStep::Current) | Some(MaskStep::Segments) => None,
            Some(MaskStep::Fisher) => self.fisher_mask.take(),
            Some(MaskStep::DropGrow { rate, seed, update }) => {
                let clock = Instant::now();
                let mask =
                    self.st.mask.as_ref().ok_or_else(|| {
                        Error::Protocol("SSAM-D's drop/grow without a mask".into())
                    })?;
                let m = sparse::drop_grow(&self.chunks, g_u, mask, n, rate, seed, update);
                self.mask_time = Some(clock.elapsed());
                Some(m)
            }
        };
        let mask = match p.mask() {
            Some(_) => Some(
                step_mask
                    .as_ref()
                    .or(new_mask.as_ref())
                    .or(self.st.mask.as_ref())
                    .ok_or_else(|| {
                        Error::Protocol("Sparse SAM without a mask: call set_fisher first".into())
                    })?,
            ),
            None => None,
        };
        let fs;
        let scale = match p.scaling {
            Scaling::One => Scale::One,
            Scaling::AbsW => Scale::AbsW,
            Scaling::AbsWPlus { eta } => Scale::AbsWPlus(eta),
            Scaling::Filter { eta } => {
                let segs = w.segments(&self.layout, "weights")?;
                fs = FilterScales::compute(&self.layout, &segs, eta);
                Scale::Filter(&fs)
            }
        };
        let first_m = self.st.fsam_m.is_empty();
        let gc: Vec<f32>;
        let gc_u: Vec<&[f32]>;
        let (base, d_u) = match p.direction {
            PlanDirection::Grad => (Base::Grad, g_u),
            PlanDirection::Centralized => {
                // pytorch_optimizer's use_gc: the perturbation along the centralized g.
                let g = inputs.source(p.along)?;
                gc = centralized(&self.layout, &g.segments(&self.layout, "gradient")?);
                gc_u = self.chunks.split_flat(&gc);
                (Base::Grad, &gc_u[..])
            }
            PlanDirection::Masked(_) => (
                Base::Masked(mask.expect("a mask for a masked direction")),
                g_u,
            ),
            PlanDirection::Friendly { .. } if first_m => (Base::Grad, g_u),
            PlanDirection::Friendly { sigma } => (Base::Friendly { sigma }, g_u),
        };
        let pert_dir = Dir { base, scale };
        let norm_dir = match p.norm {
            NormOf::Direction => pert_dir,
            NormOf::Grad => Dir {
                base: Base::Grad,
                scale,
            },
        };
        let ema = p.ema.map(|e| Ema {
            lambda: e.lambda,
            first: first_m,
        });
        let also = p.also_check().map(|k| inputs.units(k)).transpose()?;
        let m_prev: Vec<&[f32]> = if first_m {
            Vec::new()
        } else {
            self.chunks.split_flat(&self.st.fsam_m)
        };
        let m_opt = (!m_prev.is_empty()).then_some(&m_prev[..]);
        let out = {
            let w_ro = if p.scaling.reads_w() {
                Some(self.chunks.split(w.segments(&self.layout, "weights")?))
            } else {
                None
            };
            let ema_out = ema.map(|e| (e, self.chunks.split_flat_mut(&mut self.fsam_next)));
            norm_pass(
                &self.chunks,
                norm_dir,
                g_u,
                w_ro.as_deref(),
                m_opt,
                ema_out,
                also,
            )
        };
        if !out.finite {
            // A new mask of a skipped step is dropped with it (SSAM-F asks for the Fisher again).
            self.st.skipped += 1;
            self.last_skipped = true;
            return Ok(FirstOutcome::Skipped);
        }
        let s = perturb_scale(p.rho, out.norm(), p.eps_p);
        let ws = self
            .chunks
            .split_mut(w.segments_mut(&self.layout, "weights")?);
        let olds = self.chunks.split_flat_mut(&mut self.w_old);
        let copy = match p.keep {
            Some(k) => Some((inputs.units(k)?, self.chunks.split_flat_mut(&mut self.aux))),
            None => None,
        };
        perturb_pass(&self.chunks, pert_dir, s, ws, olds, d_u, m_opt, copy);
        if let Some(x) = p.extrapolate {
            // EG-SAM/OG-SAM: w̃ = (w + e) − η_x·v, after the perturbation (w_old is already
            // kept, so the restore stays exact). OG-SAM's g2_prev is 0 before its first step.
            let v: Option<Vec<&[f32]>> = match x.along {
                ExtraAlong::Grad => Some(g_u.to_vec()),
                ExtraAlong::PrevSecond if self.st.og_prev.is_empty() => None,
                ExtraAlong::PrevSecond => Some(self.chunks.split_flat(&self.st.og_prev)),
            };
            if let Some(v) = v {
                let ws = self
                    .chunks
                    .split_mut(w.segments_mut(&self.layout, "weights")?);
                for (wu, vu) in ws.into_iter().zip(v) {
                    for (a, &b) in wu.iter_mut().zip(vu) {
                        *a -= x.eta * b;
                    }
                }
            }
        }
        let g_sq = if p.per_segment_norms {
            per_segment(&self.chunks, &out.parts, self.layout.segments().len())
        } else {
            vec![out.sum_sq]
        };
        self.phase = Phase::Perturbed(Pending {
            g_sq,
            new_mask,
            fsam_next: ema.is_some(),
            keep_second: p.keep_second,
            second: p.second,
        });
        Ok(FirstOutcome::Perturbed)
    }
    /// Pass 2: `g2` is the gradient at the perturbed weights (ImbSAM: of the tail loss,
    /// without `κ`). Restores the weights exactly and applies the base optimizer.
    pub fn second_step<P, G>(&mut self, w: &mut P, g2: &G) -> Result<Outcome>
    where
        P: ParamsMut + ?Sized,
        G: Params + ?Sized,
    {
        let Phase::Perturbed(_) = self.phase else {
            return Err(checks::not_perturbed());
        };
        let g2_u = self
            .chunks
            .split(g2.segments(&self.layout, "perturbed gradient")?);
        // Validate the weights before leaving the perturbed phase.
        w.segments(&self.layout, "weights")?;
        let Phase::Perturbed(pending) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            unreachable!()
        };
        let uses_aux = pending.second.dots_kept();
        let aux_u: Vec<&[f32]> = if uses_aux {
            self.chunks.split_flat(&self.aux)
        } else {
            Vec::new()
        };
        let dots = dot_pass(&self.chunks, uses_aux.then_some(&aux_u[..]), &g2_u);
        if !dots.finite {
            let ws = self
                .chunks
                .split_mut(w.segments_mut(&self.layout, "weights")?);
            restore_pass(ws, &self.chunks.split_flat(&self.w_old));
            self.st.skipped += 1;
            self.last_skipped = true;
            return Ok(Outcome::Skipped);
        }
        let segs = self.layout.segments().len();
        let sc = self.scalars();
        let aux_all: Vec<&[f32]> = if self.aux.is_empty() {
            Vec::new()
        } else {
            self.chunks.split_flat(&self.aux)
        };
        let mut look_gv = std::mem::take(&mut self.st.look_gv);
        let per_c: Vec<f32>;
        let (combine_a, combine_y, side_c) = match pending.second {
            SecondPlan::Gsam { alpha, eps_p } => {
                // g_p − α·(g − proj·g_p), with proj = ⟨g, g_p⟩ / (‖g_p‖² + eps_p).
                let proj = (dots.xy / (dots.yy + eps_p)) as f32;
                let y = Second {
                    y: &aux_all[..],
                    b: Coef::Global(-alpha),
                    c: proj,
                };
                (1.0, Some(y), None)
            }
            SecondPlan::HeadTail { kappa } => {
                let y = Second {
                    y: &aux_all[..],
                    b: Coef::Global(1.0),
                    c: 0.0,
                };
                (kappa, Some(y), None)
            }
            SecondPlan::LookRefresh {
                per_segment: per_tensor,
            } => {
                if look_gv.is_empty() {
                    look_gv = vec![0.0; self.layout.len()];
                }
                let ratio = |xy: f64, gg: f64| if gg > 0.0 { (xy / gg) as f32 } else { 0.0 };
                let side = if per_tensor {
                    let xy = per_segment(&self.chunks, &dots.xy_parts, segs);
                    per_c = xy
                        .iter()
                        .zip(&pending.g_sq)
                        .map(|(&a, &b)| ratio(a, b))
                        .collect();
                    Coef::PerSegment(&per_c)
                } else {
                    Coef::Global(ratio(dots.xy, pending.g_sq[0]))
                };
                (1.0, None, Some(side))
            }
            SecondPlan::Plain => (1.0, None, None),
        };
        let gv_parts = {
            let ws = self
                .chunks
                .split_mut(w.segments_mut(&self.layout, "weights")?);
            let olds = self.chunks.split_flat(&self.w_old);
            let state = Self::base_units(&self.chunks, &mut self.st.base_bufs);
            let side = side_c.map(|c| SideGv {
                g: &aux_all,
                c,
                out: self.chunks.split_flat_mut(&mut look_gv),
            });
            update_pass(
                &self.chunks,
                &self.base,
                &sc,
                ws,
                Some(&olds),
                Combine {
                    x: &g2_u,
                    a: combine_a,
                    y: combine_y,
                },
                state,
                side,
            )
        };
        if let SecondPlan::LookRefresh {
            per_segment: per_tensor,
        } = pending.second
        {
            self.st.look_gv_sq = if per_tensor {
                per_segment(&self.chunks, &gv_parts, segs)
            } else {
                vec![crate::chunks::tree_sum(&gv_parts)]
            };
        }
        self.st.look_gv = look_gv;
        if pending.fsam_next {
            if self.st.fsam_m.is_empty() {
                self.st.fsam_m = vec![0.0; self.layout.len()];
            }
            std::mem::swap(&mut self.st.fsam_m, &mut self.fsam_next);
        }
        if let Some(m) = pending.new_mask {
            self.st.mask = Some(m);
            self.st.mask_updates += 1;
        }
        if pending.keep_second {
            let prev = &mut self.st.og_prev;
            prev.clear();
            for u in &g2_u {
                prev.extend_from_slice(u);
            }
        }
        self.st.base_steps += 1;
        self.st.step += 1;
        self.last_skipped = false;
        Ok(Outcome::Applied)
    }

    /// One whole step through a gradient oracle: `oracle(request, weights, grad_out)` writes
    /// the requested gradient (flat, in layout order) into `grad_out` and reports the loss. For
    /// [`GradRequest::Fisher`] the buffer starts at zero, so an oracle may accumulate into it.
    /// This is [`drive_step`] with the optimizer's own gradient buffers and no hooks.
    pub fn step<P, F>(&mut self, w: &mut P, mut oracle: F) -> Result<StepReport>
    where
        P: ParamsMut + ?Sized,
        F: FnMut(GradRequest, &P, &mut [f32]) -> Result<Eval>,
    {
        let n = self.layout.len();
        let mut bufs = std::mem::take(&mut self.scratch);
        for b in bufs.iter_mut() {
            b.resize(n, 0.0);
        }
        let [g, g2] = &mut bufs;
        let zeroing = |req: GradRequest, w: &P, out: &mut [f32]| {
            if matches!(req, GradRequest::Fisher { .. }) {
                out.fill(0.0);
            }
            oracle(req, w, out)
        };
        let r = drive_step(self, w, (&mut g[..], &mut g2[..]), zeroing, &mut NoHooks);
        self.scratch = bufs;
        r
    }

    /// Abandons a perturbed step: restores the weights exactly, leaves all state as it was.
    pub fn abort<P: ParamsMut + ?Sized>(&mut self, w: &mut P) -> Result<()> {
        if let Phase::Perturbed(_) = self.phase {
            let ws = self
                .chunks
                .split_mut(w.segments_mut(&self.layout, "weights")?);
            restore_pass(ws, &self.chunks.split_flat(&self.w_old));
            self.phase = Phase::Idle;
        }
        Ok(())
    }

    pub(crate) fn check_idle_for_save(&self) -> Result<()> {
        self.expect_idle("save")
    }

    pub(crate) fn fisher_pending(&self) -> bool {
        self.fisher_mask.is_some()
    }
}

/// The gradients handed to pass 1, by their role in the plan, with their per-unit views.
struct Inputs<'a, G: ?Sized> {
    grads: Vec<(PlanGrad, &'a G, Vec<&'a [f32]>)>,
}

impl<'a, G: Params + ?Sized> Inputs<'a, G> {
    fn find(&self, which: PlanGrad) -> Result<&(PlanGrad, &'a G, Vec<&'a [f32]>)> {
        self.grads.iter().find(|e| e.0 == which).ok_or_else(|| {
            Error::Protocol(format!(
                "the step's plan reads the {which:?} gradient, which was not given"
            ))
        })
    }

    fn units(&self, which: PlanGrad) -> Result<&[&'a [f32]]> {
        Ok(&self.find(which)?.2)
    }

    fn source(&self, which: PlanGrad) -> Result<&'a G> {
        Ok(self.find(which)?.1)
    }
}

/// `ρ / (‖d‖ + eps)`, and 0 for a zero direction (never NaN).
fn perturb_scale(rho: f32, norm: f64, eps: f64) -> f32 {
    if norm > 0.0 {
        (rho as f64 / (norm + eps)) as f32
    } else {
        0.0
    }
}

/// The protocol on host buffers of any shape ([`Params`] / [`ParamsMut`]): the inherent methods
/// of the same names, with [`Optimizer::status`] and [`Optimizer::take_mask_time`].
impl<P, G> SamOptimizer<P, G> for Optimizer
where
    P: ParamsMut + ?Sized,
    G: Params + ?Sized,
{
    type Error = Error;

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn rule(&self) -> &Rule {
        &self.rule
    }

    fn base(&self) -> &BaseOptimizer {
        &self.base
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        Optimizer::set_lr(self, lr)
    }

    fn set_rho(&mut self, rho: f32) -> Result<()> {
        Optimizer::set_rho(self, rho)
    }

    fn is_perturbed(&self) -> bool {
        Optimizer::is_perturbed(self)
    }

    fn needs_fisher(&mut self) -> Result<Option<usize>> {
        Ok(Optimizer::needs_fisher(self))
    }

    fn needs_head_tail(&self) -> bool {
        Optimizer::needs_head_tail(self)
    }

    fn set_fisher(&mut self, fisher: &G) -> Result<()> {
        Optimizer::set_fisher(self, fisher)
    }

    fn first_step(&mut self, w: &mut P, g: &G) -> Result<FirstOutcome> {
        Optimizer::first_step(self, w, g)
    }

    fn first_step_split(&mut self, w: &mut P, head: &G, tail: Option<&G>) -> Result<FirstOutcome> {
        Optimizer::first_step_split(self, w, head, tail)
    }

    fn second_step(&mut self, w: &mut P, g2: &G) -> Result<Outcome> {
        Optimizer::second_step(self, w, g2)
    }

    fn abort(&mut self, w: &mut P) -> Result<()> {
        Optimizer::abort(self, w)
    }

    fn status(&mut self) -> Result<Status> {
        Ok(Optimizer::status(self))
    }

    fn take_mask_time(&mut self) -> Result<Option<Duration>> {
        Ok(Optimizer::take_mask_time(self))
    }
}
