//! The SAM family on the GPU, behind the step protocol of [`samkit_core::Optimizer`].
//!
//! Same rules ([`Rule`]), same base optimizers ([`BaseOptimizer`]), same explicit form
//! (`first_step` / `second_step`, ImbSAM's `first_step_split`, SSAM-F's `set_fisher`) and closure
//! form (`step`), on device buffers: one flat `CudaSlice<T>` arena or one `CudaSlice<T>` per
//! segment, `T` = `f32`, `half::bf16` or `half::f16` (arithmetic in f32, optimizer state in f32).
//!
//! Stream-ordered, without host synchronisation inside a step: the norm, the skip decision and
//! the step's scalars stay on the device ([`crate::abi::Ctl`]); the perturbation is scaled
//! there. What differs from the CPU because of that:
//!
//! - A non-finite gradient is detected on the device. The step is skipped exactly as on the CPU
//!   (weights and every state buffer left as they were, the skip counted), and the outcomes are
//!   the CPU's: `first_step` answers `Skipped`, `second_step` answers `Skipped` when the gradient
//!   of pass 2 is the non-finite one. To answer, `first_step` waits for its skip decision (a
//!   small pinned copy) and `second_step` for the end of the step. With
//!   [`GpuOptimizer::set_sync_outcomes`]`(false)` `first_step` does not wait: it answers
//!   `Perturbed` or `Applied` whatever the gradient (the weights are then unperturbed and the
//!   gradient of pass 2 is discarded), a pass-1 skip surfaces from `second_step`, and a skipped
//!   one-pass step only in [`GpuOptimizer::status`].
//! - Counters ([`GpuOptimizer::steps`], ...) and [`GpuOptimizer::needs_fisher`] read that status
//!   copy, so they wait for the previous step. LookSAM and Sparse SAM read it at the start of
//!   `first_step` (their schedule depends on the count of completed steps); the other rules never
//!   wait.
//!
//! State files are the CPU optimizer's ([`samkit_core::state`]): [`GpuOptimizer::save_state`],
//! [`GpuOptimizer::load_state`] and their byte forms write and read the same safetensors bytes
//! as [`samkit_core::Optimizer`], so a state moves between the two in either direction, and a
//! resumed run continues bit-identically to an uninterrupted one on the same device.
use std::sync::Arc;

use std::time::Duration;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, PinnedHostSlice};
use samkit_core::plan::{
    first_masked_segment, segment_mask, suffix_segments, ApplyPlan, Direction as PlanDirection,
    FirstPlan, Grad as PlanGrad, MaskStep, NormOf, PerturbPlan, Scaling, SecondPlan, StepView,
};
use samkit_core::plan::{fisher_segments_from_sums, ExtraAlong, Extrapolate};
use samkit_core::protocol::checks;
use samkit_core::rules::{MaskClock, SegmentSelect};
use samkit_core::{
    drive_step, BaseOptimizer, Bitset, Error as CoreError, Eval, FirstOutcome, GradRequest, Layout,
    MaskKind, NoHooks, Outcome, Rule, SamOptimizer, StepReport,
};

use crate::abi::{self, Ctl, FinArgs};
use crate::buffers::{Arena, DevBuf, DeviceParams, DeviceParamsMut, Elem, Guards, Tab, TableCache};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::{self, DirExtra, DirKind, Extrap, Filters, Fin, Keys, Second, SelBufs};
use crate::plan::{Plan, Work};
use crate::variants::{StepVariant, Variants};

mod state;

/// A page-locked copy of the device's [`Ctl`], filled asynchronously at the end of a step, and
/// the event that says when it has arrived. The event is ours, recorded after every copy:
/// `PinnedHostSlice`'s own event is recorded by cudarc only while the context tracks events
/// across streams, and samkit-nn's backend turns that tracking off, so with it alone a read
/// returned before the copy had landed (stale step counters on the H200: SSAM-F's Fisher and
/// SSAM-D's schedule ran off by a step).
struct StatusCopy {
    host: PinnedHostSlice<Ctl>,
    arrived: CudaEvent,
}

impl StatusCopy {
    fn new(dev: &Device) -> Result<Self> {
        let ctx = dev.context();
        // SAFETY: page-locked memory for one Ctl; read only after a device copy filled it
        // (`read` waits for the event recorded after the copy).
        let host = unsafe { ctx.alloc_pinned_with_flags::<Ctl>(1, 0) }?;
        let arrived = ctx.new_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))?;
        Ok(StatusCopy { host, arrived })
    }

    /// Enqueues the copy of `ctl` on the device's stream (returns at once).
    fn enqueue(&mut self, dev: &Device, ctl: &CudaSlice<Ctl>) -> Result<()> {
        let stream = dev.stream();
        stream.memcpy_dtoh(ctl, &mut self.host)?;
        self.arrived.record(stream)?;
        Ok(())
    }

    /// The last copy enqueued, once it has arrived (waits for it).
    fn read(&self) -> Result<Ctl> {
        self.arrived.synchronize()?;
        Ok(self.host.as_slice()?[0])
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    Idle,
    /// What pass 1 left for pass 2: whether a new mask waits in the pending slot, whether
    /// FriendlySAM's EMA waits in the next slot, the combination of pass 2 and the plan's eps.
    Perturbed {
        mask_pending: bool,
        fsam: bool,
        second: SecondPlan,
        eps_p: f64,
        /// OG-SAM: pass 2's gradient becomes `g2_prev` when the step completes.
        keep_second: bool,
    },
}

/// The optimizer's counters as of the last completed (or skipped) step (the CPU optimizer's).
pub use samkit_core::Status;

pub struct GpuOptimizer<T: Elem> {
    dev: Arc<Device>,
    plan: Plan,
    work: Work,
    rule: Rule,
    base: BaseOptimizer,
    lr: f32,
    w_old: Arena<T>,
    aux: Option<Arena<T>>,
    state: [Option<DevBuf<f32>>; 3],
    /// FriendlySAM's two slots of `m`.
    fsam: Option<DevBuf<f32>>,
    /// Sparse SAM's two mask slots.
    masks: Option<DevBuf<u64>>,
    sel: Option<SelBufs>,
    look_gv: Option<DevBuf<f32>>,
    filters: Option<Filters>,
    /// Gradient centralization's per-filter means of `g` (segments of two or more dimensions).
    centers: Option<Filters>,
    tables: TableCache,
    /// An asynchronous copy of the step state, made at the end of every step.
    status: StatusCopy,
    status_fresh: bool,
    known: Ctl,
    phase: Phase,
    /// SSAM-F: a mask from `set_fisher` waits in the pending slot.
    fisher_ready: bool,
    scratch: Option<[CudaSlice<T>; 2]>,
    /// Events around SSAM-D's drop/grow (see [`GpuOptimizer::time_mask_updates`]), and whether
    /// they hold an update not yet taken.
    mask_events: Option<[CudaEvent; 2]>,
    mask_recorded: bool,
    /// The kernel arrangement (see [`crate::variants`]); every variant gives the same bits.
    variants: Variants,
    /// Whether `first_step` waits for its skip decision (see [`GpuOptimizer::set_sync_outcomes`]).
    sync_outcomes: bool,
    /// The segment selection in the current mask slot ([`MaskStep::Segments`]); `None` when the
    /// slot may hold anything else (construction, a loaded state).
    seg_pick: Option<Vec<bool>>,
    /// OG-SAM's `g2_prev` (flat f32, `n` values), written by the update of every completed step.
    og_prev: Option<DevBuf<f32>>,
    /// Whether `og_prev` holds a step's `g2` (the CPU's non-empty `og_prev`): before the first
    /// completed step the extrapolation is skipped, as on the CPU. Known on the host because
    /// `second_step` waits for the end of its step.
    og_kept: bool,
}

type Opt<'a, T> = Option<Tab<'a, T>>;

/// The scalars of a direction; the buffers it needs are the optimizer's own.
#[derive(Clone, Copy, Debug, Default)]
struct Spec {
    /// Sparse SAM: this step's mask is the pending one.
    mask_pending: bool,
    sigma: f32,
    lambda: f32,
    eta: f32,
}

/// The first stage of a two-stage reduction (per-unit partials, then [`ops::finalize`]).
#[derive(Clone, Copy)]
enum Reduce<'a, T> {
    /// [`ops::norm`]: kind, gradient, weights, second finiteness check, extras, FriendlySAM's EMA.
    Norm(
        DirKind,
        Tab<'a, T>,
        Opt<'a, T>,
        Opt<'a, T>,
        DirExtra<'a>,
        bool,
    ),
    /// [`ops::dot`]: `⟨x, y⟩`, `‖y‖²`.
    Dot(Opt<'a, T>, Tab<'a, T>),
}

/// The gradient a plan names, among those the step was given.
fn input_tab<'a, T: Elem>(
    inputs: &[(PlanGrad, Tab<'a, T>)],
    which: PlanGrad,
) -> Result<Tab<'a, T>> {
    inputs
        .iter()
        .find(|e| e.0 == which)
        .map(|e| e.1)
        .ok_or_else(|| {
            protocol(format!(
                "the step's plan reads the {which:?} gradient, which was not given"
            ))
        })
}

/// A buffer the plan needs that the optimizer did not allocate for its rule (a bug: the buffers
/// come from [`Rule::plan_buffers`]).
fn missing(what: &str) -> Error {
    protocol(format!(
        "the step's plan needs the {what} buffer, which this rule did not allocate"
    ))
}

/// The kernel variant of a plan's direction and scaling.
fn dir_kind(d: PlanDirection, s: Scaling) -> Result<DirKind> {
    Ok(match (d, s) {
        (PlanDirection::Grad, Scaling::One) => DirKind::Plain,
        (PlanDirection::Grad, Scaling::AbsW) => DirKind::Adaptive,
        (PlanDirection::Grad, Scaling::AbsWPlus { .. }) => DirKind::Asam,
        (PlanDirection::Grad, Scaling::Filter { .. }) => DirKind::AsamFilter,
        (PlanDirection::Masked(_), Scaling::One) => DirKind::Masked,
        (PlanDirection::Masked(_), Scaling::AbsWPlus { .. }) => DirKind::MaskedAsam,
        (PlanDirection::Friendly { .. }, Scaling::One) => DirKind::Friendly,
        (PlanDirection::Friendly { .. }, Scaling::AbsW) => DirKind::FriendlyAdaptive,
        (PlanDirection::Centralized, Scaling::One) => DirKind::Centralized,
        (PlanDirection::Centralized, Scaling::AbsW) => DirKind::CentralizedAdaptive,
        (d, s) => {
            return Err(protocol(format!(
                "the GPU has no kernel for the direction {d:?} with the scaling {s:?}"
            )))
        }
    })
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::Core(CoreError::Protocol(msg.into()))
}

impl<T: Elem> GpuOptimizer<T> {
    pub fn new(dev: &Arc<Device>, layout: Layout, rule: Rule, base: BaseOptimizer) -> Result<Self> {
        rule.validate()?;
        base.validate()?;
        // What a rule needs of the layout on the GPU is what it needs on the CPU: every rule and
        // option has its kernels (EG-/OG-SAM's extrapolation, SAM-ON's `asam` form and SSAM-L's
        // `fisher` selection included).
        checks::rule_layout(&rule, &layout)?;
        if layout.is_empty() {
            return Err(CoreError::InvalidLayout("the layout has no parameters".into()).into());
        }
        let stream = dev.stream().clone();
        let plan = Plan::new(&stream, layout)?;
        let work = Work::new(&stream, &plan)?;
        let n = plan.n;
        let w_old = Arena::<T>::zeros(&stream, &plan.layout)?;
        let bufs = rule.plan_buffers();
        let aux = if bufs.kept_grad {
            Some(Arena::<T>::zeros(&stream, &plan.layout)?)
        } else {
            None
        };
        let nstate = base.state_buffers().len();
        let mut state: [Option<DevBuf<f32>>; 3] = [None, None, None];
        for s in state.iter_mut().take(nstate) {
            *s = Some(DevBuf::zeros(&stream, n)?);
        }
        let fsam = match bufs.ema {
            true => Some(DevBuf::zeros(&stream, 2 * n)?),
            false => None,
        };
        let (masks, sel) = match bufs.mask {
            true => (
                Some(DevBuf::zeros(&stream, 2 * plan.words)?),
                Some(SelBufs::new(&stream, &plan)?),
            ),
            false => (None, None),
        };
        let og_prev = match bufs.prev_second {
            true => Some(DevBuf::zeros(&stream, n)?),
            false => None,
        };
        let look_gv = match bufs.gv {
            true => Some(DevBuf::zeros(&stream, n)?),
            false => None,
        };
        let filters = match bufs.filter_scales {
            true => Some(Filters::new(&stream, &plan, Filters::weights)?),
            false => None,
        };
        let centers = match bufs.filter_means {
            true => Some(Filters::new(&stream, &plan, Filters::matrices)?),
            false => None,
        };
        let status = StatusCopy::new(dev)?;
        let lr = base.lr();
        let mut opt = GpuOptimizer {
            dev: dev.clone(),
            plan,
            work,
            rule,
            base,
            lr,
            w_old,
            aux,
            state,
            fsam,
            masks,
            sel,
            look_gv,
            filters,
            centers,
            tables: TableCache::new(32),
            status,
            status_fresh: false,
            known: Ctl::default(),
            phase: Phase::Idle,
            fisher_ready: false,
            scratch: None,
            mask_events: None,
            mask_recorded: false,
            variants: Variants::default(),
            sync_outcomes: true,
            seg_pick: None,
            og_prev,
            og_kept: false,
        };
        if let Rule::Ssam(c) = &opt.rule {
            if let MaskKind::Segments {
                select: SegmentSelect::Suffix,
            } = c.mask
            {
                // SSAM-L suffix: a fixed mask of whole segments, built on the host.
                let pick = suffix_segments(&opt.plan.layout, c.live_count(n));
                let mask = segment_mask(&opt.plan.layout, &pick);
                opt.upload_mask(&mask, false)?;
            }
        }
        if let Rule::Ssam(c) = &opt.rule {
            if let MaskKind::Dynamic { seed, .. } = c.mask {
                // SSAM-D's initial mask: the L indices with the smallest Philox keys at update 0.
                let live = c.live_count(n) as u64;
                opt.select_mask::<T>(Keys::Init(seed, 0), live, abi::COMB_TO_CURRENT)?;
            }
        }
        Ok(opt)
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    pub fn layout(&self) -> &Layout {
        &self.plan.layout
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

    /// Sets the perturbation radius of the next steps (a schedule such as `ρ_t = c/√t`), as
    /// [`samkit_core::Optimizer::set_rho`]. GSAM ties ρ to the learning rate instead; the plain
    /// base optimizer has none.
    pub fn set_rho(&mut self, rho: f32) -> Result<()> {
        Ok(self.rule.set_rho(rho)?)
    }

    /// The kernel arrangement of the next steps.
    pub fn variants(&self) -> Variants {
        self.variants
    }

    /// Selects the kernel arrangement of the next steps (default: [`Variants::default`], today's
    /// kernels). Every variant gives the same bits (the parity tests check it); they differ in
    /// launches and memory traffic only. Not while the weights are perturbed: the two passes of
    /// a step use one arrangement.
    pub fn set_variants(&mut self, v: Variants) -> Result<()> {
        self.expect_idle("set_variants")?;
        self.variants = v;
        if let Some(sel) = &mut self.sel {
            sel.topk = v.topk;
        }
        Ok(())
    }

    /// Whether `first_step` waits for its skip decision to answer `Skipped` (default: yes, the
    /// CPU optimizer's outcomes). Off, `first_step` never waits on the host and answers
    /// `Perturbed` or `Applied`; a skip of pass 1 then surfaces from `second_step` (which waits
    /// for the end of the step either way) and, for one-pass steps, from [`GpuOptimizer::status`].
    pub fn set_sync_outcomes(&mut self, on: bool) {
        self.sync_outcomes = on;
    }

    pub fn sync_outcomes(&self) -> bool {
        self.sync_outcomes
    }

    /// True between `first_step` returning `Perturbed` and `second_step`.
    pub fn is_perturbed(&self) -> bool {
        matches!(self.phase, Phase::Perturbed { .. })
    }

    /// Whether the rule takes separate head and tail gradients (ImbSAM).
    pub fn needs_head_tail(&self) -> bool {
        matches!(self.rule, Rule::ImbSam(_))
    }

    /// Times SSAM-D's drop/grow, which runs inside `first_step`, with CUDA events, for
    /// [`GpuOptimizer::take_mask_time`] (off by default: it costs two event records per mask
    /// update and nothing otherwise).
    pub fn time_mask_updates(&mut self, on: bool) -> Result<()> {
        if !on {
            self.mask_events = None;
            self.mask_recorded = false;
        } else if self.mask_events.is_none() {
            let ctx = self.dev.context();
            let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
            self.mask_events = Some([ctx.new_event(flags)?, ctx.new_event(flags)?]);
        }
        Ok(())
    }

    /// Device time of the mask update enqueued by the last `first_step` (SSAM-D's drop/grow),
    /// once; `None` when that step updated no mask or timing is off. Waits for the update to
    /// finish on the device (not for the rest of the step). The CPU optimizer's
    /// `take_mask_time` answers the same question.
    pub fn take_mask_time(&mut self) -> Result<Option<Duration>> {
        if !std::mem::take(&mut self.mask_recorded) {
            return Ok(None);
        }
        let [start, end] = self.mask_events.as_ref().expect("events while recorded");
        let ms = start.elapsed_ms(end)?;
        Ok(Some(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3)))
    }

    fn record_status(&mut self) -> Result<()> {
        self.status.enqueue(&self.dev, &self.work.ctl.slice)?;
        self.status_fresh = true;
        Ok(())
    }

    /// The device's step state as of the last recorded step (waits for it if needed).
    fn sync_status(&mut self) -> Result<Ctl> {
        if self.status_fresh {
            self.known = self.status.read()?;
            self.status_fresh = false;
        }
        Ok(self.known)
    }

    /// The counters after the last step (waits for its end on the device).
    pub fn status(&mut self) -> Result<Status> {
        let c = self.sync_status()?;
        Ok(Status {
            steps: c.step,
            skipped: c.skipped,
            base_steps: c.base_steps,
            mask_updates: c.mask_updates,
            last_skipped: c.skip != 0,
        })
    }

    /// Completed steps.
    pub fn steps(&mut self) -> Result<u64> {
        Ok(self.status()?.steps)
    }

    /// Steps skipped because a gradient had a non-finite value.
    pub fn skipped_steps(&mut self) -> Result<u64> {
        Ok(self.status()?.skipped)
    }

    pub fn mask_updates(&mut self) -> Result<u64> {
        Ok(self.status()?.mask_updates)
    }

    /// The outcome of the last step (`None` before the first one).
    pub fn last_outcome(&mut self) -> Result<Option<Outcome>> {
        Ok(self.status()?.last_outcome())
    }

    /// With [`GpuOptimizer::sync_outcomes`], turns what `first_step` enqueued into the CPU's
    /// outcome: waits for the skip decision and, on a skip, completes the step (the commit counts
    /// it; the weights were not touched).
    fn settle_first(&mut self, out: FirstOutcome) -> Result<FirstOutcome> {
        if !self.sync_outcomes {
            return Ok(out);
        }
        match out {
            FirstOutcome::Applied => {
                // The one-pass step recorded its status at its end.
                let skipped = self.sync_status()?.skip != 0;
                Ok(if skipped { FirstOutcome::Skipped } else { out })
            }
            FirstOutcome::Perturbed => {
                // Keep the counters of the previous step, then read the decision of this one.
                self.sync_status()?;
                self.status.enqueue(&self.dev, &self.work.ctl.slice)?;
                let skip = self.status.read()?.skip != 0;
                if !skip {
                    return Ok(out);
                }
                self.phase = Phase::Idle;
                ops::commit(&self.dev, &self.work, false, false)?;
                self.record_status()?;
                Ok(FirstOutcome::Skipped)
            }
            FirstOutcome::Skipped => Ok(out),
        }
    }

    /// Whether the next step needs the Fisher information (SSAM-F: every `K` steps, or with the
    /// official schedule after the first batch of every `K`-th epoch, as the CPU optimizer
    /// decides with `Ssam::fisher_due`); reads the counters, so it waits for the previous step.
    pub fn needs_fisher(&mut self) -> Result<Option<usize>> {
        match &self.rule {
            // SSAM-F and SSAM-L `fisher` (the official schedule is SSAM-F's only): the CPU's
            // `Ssam::fisher_due` on the device's counters.
            Rule::Ssam(c) if c.fisher_samples().is_some() && !self.fisher_ready => {
                let c = c.clone();
                let s = self.sync_status()?;
                let clock = MaskClock {
                    steps: s.step,
                    skipped: s.skipped,
                    mask_updates: s.mask_updates,
                };
                Ok(c.fisher_samples().filter(|_| c.fisher_due(&clock)))
            }
            _ => Ok(None),
        }
    }

    /// The count of completed steps when the rule's plan reads it ([`Rule::plan_reads_step`]:
    /// then it waits for the previous step), else 0 (never waits).
    fn plan_step(&mut self) -> Result<u64> {
        Ok(if self.rule.plan_reads_step() {
            self.sync_status()?.step
        } else {
            0
        })
    }

    /// What the rule's plan reads of the optimizer's state (the CPU optimizer's `view`).
    fn view(&mut self, tail: Option<bool>) -> Result<StepView> {
        Ok(StepView {
            t: self.plan_step()?,
            lr: self.lr,
            tail,
            has_mask: self.has_mask()?,
        })
    }

    /// Whether Sparse SAM has a mask for the next step ([`StepView::has_mask`]): only SSAM-F's
    /// official schedule, whose first mask is all zero, can lack one (before its first Fisher).
    fn has_mask(&mut self) -> Result<bool> {
        Ok(match &self.rule {
            Rule::Ssam(c) if c.zero_mask_first() => {
                self.fisher_ready || self.sync_status()?.mask_updates > 0
            }
            _ => true,
        })
    }

    /// The committed sparse mask (`None` for other rules, and for SSAM-F before its first
    /// completed step). Downloads it.
    pub fn mask(&mut self) -> Result<Option<Bitset>> {
        if self.masks.is_none() {
            return Ok(None);
        }
        let c = self.work.ctl(self.dev.stream())?;
        self.committed_mask(&c)
    }

    /// The first segment (forward order) that the committed mask perturbs (SSAM-L: where the
    /// trainer starts pass 2), as [`samkit_core::Optimizer::first_perturbed_segment`].
    /// Downloads the mask.
    pub fn first_perturbed_segment(&mut self) -> Result<Option<usize>> {
        Ok(self
            .mask()?
            .and_then(|m| first_masked_segment(&self.plan.layout, &m)))
    }

    /// A base-optimizer state buffer by its torch name (`momentum_buffer`, `exp_avg`, ...),
    /// downloaded.
    pub fn base_state(&self, name: &str) -> Result<Option<Vec<f32>>> {
        let Some(i) = self.base.state_buffers().iter().position(|&s| s == name) else {
            return Ok(None);
        };
        let b = self.state[i].as_ref().expect("state buffer");
        let mut v = b.download(self.dev.stream())?;
        v.truncate(self.plan.n);
        Ok(Some(v))
    }

    /// FriendlySAM's `m` (empty before its first completed step), downloaded.
    pub fn friendly_momentum(&self) -> Result<Vec<f32>> {
        let Some(m) = &self.fsam else {
            return Ok(Vec::new());
        };
        let c = self.work.ctl(self.dev.stream())?;
        if c.fsam_init == 0 {
            return Ok(Vec::new());
        }
        let all = m.download(self.dev.stream())?;
        let n = self.plan.n;
        Ok(all[c.fsam_cur as usize * n..(c.fsam_cur as usize + 1) * n].to_vec())
    }

    /// LookSAM's `g_v` (zeros before its first SAM step), downloaded.
    pub fn look_gv(&self) -> Result<Vec<f32>> {
        match &self.look_gv {
            Some(b) => {
                let mut v = b.download(self.dev.stream())?;
                v.truncate(self.plan.n);
                Ok(v)
            }
            None => Ok(Vec::new()),
        }
    }

    /// OG-SAM's `g2_prev` (empty before its first completed step, and for the other rules),
    /// downloaded, as [`samkit_core::Optimizer::og_prev`].
    pub fn og_prev(&self) -> Result<Vec<f32>> {
        match &self.og_prev {
            Some(b) if self.og_kept => {
                let mut v = b.download(self.dev.stream())?;
                v.truncate(self.plan.n);
                Ok(v)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The address table of a buffer the step reads ([`TableCache::read`] with the layout).
    /// Borrows `self` only for the call.
    fn read_tab<'a, S: Elem, B: DeviceParams<S> + ?Sized>(
        &mut self,
        stream: &'a Arc<cudarc::driver::CudaStream>,
        b: &'a B,
        what: &'static str,
        guards: &mut Guards<'a>,
    ) -> Result<Tab<'a, S>> {
        self.tables.read(&self.plan.layout, stream, b, what, guards)
    }

    /// [`GpuOptimizer::read_tab`] for a buffer the step writes.
    fn write_tab<'a, S: Elem, B: DeviceParamsMut<S> + ?Sized>(
        &mut self,
        stream: &'a Arc<cudarc::driver::CudaStream>,
        b: &'a mut B,
        what: &'static str,
        guards: &mut Guards<'a>,
    ) -> Result<Tab<'a, S>> {
        self.tables
            .write(&self.plan.layout, stream, b, what, guards)
    }

    fn expect_idle(&self, what: &str) -> Result<()> {
        Ok(checks::idle(self.is_perturbed(), what)?)
    }

    fn state_refs(&self) -> [Option<&DevBuf<f32>>; 3] {
        [
            self.state[0].as_ref(),
            self.state[1].as_ref(),
            self.state[2].as_ref(),
        ]
    }

    fn fused(&self) -> bool {
        self.variants.step == StepVariant::Fused
    }

    /// A reduction and its second stage: two launches, or one with [`StepVariant::Fused`] (the
    /// last block runs the second stage; same bits).
    fn reduce(&self, r: Reduce<T>, base: Option<&BaseOptimizer>, f: Fin) -> Result<()> {
        let (dev, plan, work) = (&self.dev, &self.plan, &self.work);
        // A direction without a fused norm kernel runs its two stages as two launches.
        let fusable = match r {
            Reduce::Norm(kind, ..) => kind.has_fused_norm(),
            Reduce::Dot(..) => true,
        };
        let fa: Option<FinArgs> =
            (self.fused() && fusable).then(|| ops::fin_args(plan, work, base, f));
        match r {
            Reduce::Norm(kind, g, w, chk, x, ema) => {
                ops::norm::<T>(dev, plan, work, kind, g, w, chk, x, ema, fa.as_ref())?
            }
            Reduce::Dot(x, y) => ops::dot::<T>(dev, plan, work, x, y, fa.as_ref())?,
        }
        if fa.is_none() {
            ops::finalize(dev, plan, work, base, f)?;
        }
        Ok(())
    }

    /// Pass 3 and the end of the step: the update, LookSAM's `‖g_v‖²` (`gv`), the commit.
    /// [`StepVariant::Fused`] folds the commit into the update (its last block); the `‖g_v‖²`
    /// reduction then follows the commit, which does not touch what it reads or writes.
    #[allow(clippy::too_many_arguments)]
    fn update_commit(
        &self,
        wt: Tab<T>,
        src: Opt<T>,
        x: Tab<T>,
        y: Second<T>,
        per_seg_b: bool,
        side: Option<(Tab<T>, &DevBuf<f32>, bool)>,
        gv: Option<Fin>,
        keep: Option<&DevBuf<f32>>,
        fsam: bool,
        mask_pending: bool,
    ) -> Result<()> {
        let (dev, plan, work) = (&self.dev, &self.plan, &self.work);
        let commit = self
            .fused()
            .then(|| ops::commit_args(work, fsam, mask_pending));
        ops::update::<T>(
            dev,
            plan,
            work,
            &self.base,
            self.lr,
            self.state_refs(),
            wt,
            src,
            x,
            y,
            per_seg_b,
            side,
            keep,
            commit.as_ref(),
        )?;
        if let Some(f) = gv {
            ops::finalize(dev, plan, work, None, f)?;
        }
        if commit.is_none() {
            ops::commit(dev, work, fsam, mask_pending)?;
        }
        Ok(())
    }

    /// SSAM-F: hands over `F = Σ_i (∇ℓ_i)²` (any element type); the mask becomes its top `L`
    /// entries at the next step. Computed on the device into the pending mask slot.
    pub fn set_fisher<S: Elem, G: DeviceParams<S> + ?Sized>(&mut self, fisher: &G) -> Result<()> {
        let c = checks::fisher_rule(&self.rule)?;
        self.expect_idle("set_fisher")?;
        if matches!(c.mask, MaskKind::Segments { .. }) {
            return self.set_fisher_segments(fisher);
        }
        let live = c.live_count(self.plan.n) as u64;
        let stream = self.dev.stream().clone();
        let mut guards = Vec::new();
        let ft = self.read_tab::<S, G>(&stream, fisher, "fisher", &mut guards)?;
        self.select_mask::<S>(Keys::Scores(ft), live, abi::COMB_TO_PENDING)?;
        drop(guards);
        self.fisher_ready = true;
        Ok(())
    }

    /// The `k` top keys (ties to the lower index) as a new mask, written into a slot by `mode`
    /// (`abi::COMB_TO_CURRENT`, `abi::COMB_TO_PENDING`): SSAM-D's initial mask, SSAM-F's.
    fn select_mask<S: Elem>(&mut self, keys: Keys<S>, k: u64, mode: u32) -> Result<()> {
        let sel = self.sel.as_mut().expect("selection buffers");
        ops::select::<S>(&self.dev, &self.plan, &self.work, sel, keys, k, false)?;
        let masks = self.masks.as_ref().expect("mask slots");
        ops::mask_combine(&self.dev, &self.plan, &self.work, masks, sel, mode)
    }

    /// SSAM-L `fisher`: the mask of whole segments from `F`, into the pending slot. The
    /// per-segment sums `Σ_seg F` are reduced on the device (f64, a fixed tree) and downloaded,
    /// one f64 per segment once every `K` steps; the choice itself (rank by mean, fill the
    /// budget greedily) runs on the host, in samkit-core's own function
    /// ([`fisher_segments_from_sums`]): a sort of a few dozen segments is no GPU work, and one
    /// function keeps the two optimizers' rule identical. The sums' order differs from the
    /// CPU's sequential sum in the last bits only; two segments' means that close would rank
    /// either way on either device.
    fn set_fisher_segments<S: Elem, G: DeviceParams<S> + ?Sized>(
        &mut self,
        fisher: &G,
    ) -> Result<()> {
        let Rule::Ssam(c) = &self.rule else {
            unreachable!("set_fisher checked the rule")
        };
        let live = c.live_count(self.plan.n);
        let stream = self.dev.stream().clone();
        let mut guards = Vec::new();
        let ft = self.read_tab::<S, G>(&stream, fisher, "fisher", &mut guards)?;
        ops::seg_sums::<S>(&self.dev, &self.plan, &self.work, ft)?;
        let mut sums = self.work.seg_tmp.download(&stream)?;
        drop(guards);
        sums.truncate(self.plan.n_segs);
        let pick = fisher_segments_from_sums(&self.plan.layout, &sums, live);
        let mask = segment_mask(&self.plan.layout, &pick);
        self.upload_mask(&mask, true)?;
        self.fisher_ready = true;
        Ok(())
    }

    /// Pass 1 of a step. `Perturbed`: evaluate the gradient at the (perturbed) weights and call
    /// `second_step`; `Applied`: a one-pass step was enqueued. See the module docs on skips.
    pub fn first_step<W, G>(&mut self, w: &mut W, g: &G) -> Result<FirstOutcome>
    where
        W: DeviceParamsMut<T> + ?Sized,
        G: DeviceParams<T> + ?Sized,
    {
        self.expect_idle("first_step")?;
        checks::first_step_form(&self.rule, false)?;
        let view = self.view(None)?;
        if let Some(n) = self.needs_fisher()? {
            return Err(checks::fisher_missing(n, view.t).into());
        }
        let stream = self.dev.stream().clone();
        let mut guards = Vec::new();
        let gt = self.read_tab::<T, G>(&stream, g, "gradient", &mut guards)?;
        let wt = self.write_tab::<T, W>(&stream, w, "weights", &mut guards)?;
        let plan = self.rule.first_plan(&view);
        let out = self.run_first(plan, wt, &[(PlanGrad::Batch, gt)]);
        drop(guards);
        self.settle_first(out?)
    }

    /// ImbSAM's pass 1: the gradients of `Σ_{i∉tail} ℓ_i / B` and `Σ_{i∈tail} ℓ_i / B` (without
    /// `κ`); `tail = None` when the batch has no tail sample (a plain step with the head).
    pub fn first_step_split<W, G>(
        &mut self,
        w: &mut W,
        head: &G,
        tail: Option<&G>,
    ) -> Result<FirstOutcome>
    where
        W: DeviceParamsMut<T> + ?Sized,
        G: DeviceParams<T> + ?Sized,
    {
        self.expect_idle("first_step_split")?;
        checks::first_step_form(&self.rule, true)?;
        let stream = self.dev.stream().clone();
        let mut guards = Vec::new();
        let ht = self.read_tab::<T, G>(&stream, head, "head gradient", &mut guards)?;
        let mut inputs = vec![(PlanGrad::Head, ht)];
        if let Some(t) = tail {
            let tt = self.read_tab::<T, G>(&stream, t, "tail gradient", &mut guards)?;
            inputs.push((PlanGrad::Tail, tt));
        }
        let wt = self.write_tab::<T, W>(&stream, w, "weights", &mut guards)?;
        let view = self.view(Some(tail.is_some()))?;
        let plan = self.rule.first_plan(&view);
        let out = self.run_first(plan, wt, &inputs);
        drop(guards);
        self.settle_first(out?)
    }

    /// Enqueues pass 1 of `plan` (see [`samkit_core::plan`]).
    fn run_first(
        &mut self,
        plan: FirstPlan,
        wt: Tab<T>,
        inputs: &[(PlanGrad, Tab<T>)],
    ) -> Result<FirstOutcome> {
        match plan {
            FirstPlan::Apply(ApplyPlan { input, gv: None }) => {
                let x = input_tab(inputs, input)?;
                let f = Fin::new(abi::FIN_CHECK);
                self.apply_in_place(Reduce::Dot(None, x), wt, x, false, false, f)
            }
            FirstPlan::Apply(ApplyPlan {
                input,
                gv: Some(reuse),
            }) => {
                let x = input_tab(inputs, input)?;
                let e = DirExtra::default();
                let r = Reduce::Norm(DirKind::Plain, x, None, None, e, false);
                let mut f = Fin::new(abi::FIN_LOOK1);
                // α‖g‖ / (‖g_v‖ + eps) per tensor (the global form's eps is 0).
                f.eps = reuse.eps;
                f.alpha = reuse.alpha;
                f.per_seg = reuse.per_segment;
                // g + b·(g_v − 0·g), b from ‖g‖ and ‖g_v‖ on the device.
                self.apply_in_place(r, wt, x, true, reuse.per_segment, f)
            }
            FirstPlan::Perturb(p) => self.perturb(&p, wt, inputs),
        }
    }

    /// Pass 1 of a two-pass step: the mask of the step (Sparse SAM), the filter scales (ASAM
    /// filter-wise) or means (gradient centralization), then the norm with the skip decision and scale (device) and the perturbation.
    fn perturb(
        &mut self,
        p: &PerturbPlan,
        wt: Tab<T>,
        inputs: &[(PlanGrad, Tab<T>)],
    ) -> Result<FirstOutcome> {
        let gt = input_tab(inputs, p.along)?;
        if p.keep_second && self.og_prev.is_none() {
            return Err(missing("g2_prev"));
        }
        let mask_pending = match p.mask() {
            None | Some(MaskStep::Current) => false,
            Some(MaskStep::Segments) => {
                // ESAM's draw / SAM-ON's norm segments: a host-built mask of whole segments in
                // the current slot, uploaded when it changes; never committed.
                let t = self.plan_step()?;
                let pick = self
                    .rule
                    .step_segments(&self.plan.layout, t)
                    .ok_or_else(|| missing("per-step segment selection"))?;
                if self.seg_pick.as_ref() != Some(&pick) {
                    let mask = segment_mask(&self.plan.layout, &pick);
                    self.upload_mask(&mask, false)?;
                    self.seg_pick = Some(pick);
                }
                false
            }
            Some(MaskStep::Fisher) => std::mem::take(&mut self.fisher_ready),
            Some(MaskStep::DropGrow { rate, seed, update }) => {
                let stream = self.dev.stream().clone();
                if let Some([start, _]) = &self.mask_events {
                    start.record(&stream)?;
                }
                self.drop_grow(gt, rate, seed, update)?;
                if let Some([_, end]) = &self.mask_events {
                    end.record(&stream)?;
                    self.mask_recorded = true;
                }
                true
            }
        };
        let mut spec = Spec {
            mask_pending,
            ..Spec::default()
        };
        match p.scaling {
            Scaling::Filter { eta } => {
                let f = self
                    .filters
                    .as_ref()
                    .ok_or_else(|| missing("filter scales"))?;
                ops::filter_norms::<T>(&self.dev, f, wt, eta)?;
                spec.eta = eta;
            }
            Scaling::AbsWPlus { eta } => spec.eta = eta,
            Scaling::One | Scaling::AbsW => {}
        }
        match p.direction {
            PlanDirection::Friendly { sigma } => spec.sigma = sigma,
            PlanDirection::Centralized => {
                let c = self
                    .centers
                    .as_ref()
                    .ok_or_else(|| missing("filter means"))?;
                ops::filter_means::<T>(&self.dev, c, gt)?;
            }
            PlanDirection::Grad | PlanDirection::Masked(_) => {}
        }
        if let Some(e) = p.ema {
            spec.lambda = e.lambda;
        }
        let pert_kind = dir_kind(p.direction, p.scaling)?;
        let norm_kind = match p.norm {
            NormOf::Direction => pert_kind,
            NormOf::Grad => dir_kind(PlanDirection::Grad, p.scaling)?,
        };
        let chk = p.also_check().map(|k| input_tab(inputs, k)).transpose()?;
        let copy = match p.keep {
            Some(k) => {
                let aux = self.aux.as_ref().ok_or_else(|| missing("kept gradient"))?;
                Some((input_tab(inputs, k)?, aux.tab()))
            }
            None => None,
        };
        let wr = norm_kind.needs_w().then_some(wt);
        let mut f = Fin::new(abi::FIN_NORM);
        f.rho = p.rho;
        f.eps = p.eps_p;
        f.per_seg = p.per_segment_norms;
        let fsam = p.ema.is_some();
        let x = self.dir_extra(norm_kind, pert_kind, spec);
        self.reduce(Reduce::Norm(norm_kind, gt, wr, chk, x, fsam), None, f)?;
        let w_old = self.w_old.tab();
        // EG-SAM/OG-SAM: w̃ = (w + e) − η_x·v in the same pass. OG-SAM's g2_prev is 0 before its
        // first completed step, where the CPU skips the extrapolation: so does this.
        let extra = match p.extrapolate {
            None => Extrap::None,
            Some(Extrapolate {
                eta,
                along: ExtraAlong::Grad,
            }) => Extrap::Grad { eta },
            Some(Extrapolate {
                eta,
                along: ExtraAlong::PrevSecond,
            }) => match &self.og_prev {
                Some(prev) if self.og_kept => Extrap::Prev { prev, eta },
                Some(_) => Extrap::None,
                None => return Err(missing("g2_prev")),
            },
        };
        ops::perturb::<T>(
            &self.dev, &self.plan, &self.work, pert_kind, wt, w_old, gt, x, copy, extra,
        )?;
        self.phase = Phase::Perturbed {
            mask_pending,
            fsam,
            second: p.second,
            eps_p: p.eps_p,
            keep_second: p.keep_second,
        };
        Ok(FirstOutcome::Perturbed)
    }

    /// The optimizer-owned buffers the norm and perturbation kernels of these kinds read.
    fn dir_extra(&self, norm_kind: DirKind, pert_kind: DirKind, spec: Spec) -> DirExtra<'_> {
        let fsam = norm_kind.is_friendly();
        let uses_mask = norm_kind.is_masked() || pert_kind.is_masked();
        DirExtra {
            m: self.fsam.as_ref().filter(|_| fsam),
            mask: self
                .masks
                .as_ref()
                .filter(|_| uses_mask)
                .map(|m| (m, spec.mask_pending)),
            filters: self.filters.as_ref().or(self.centers.as_ref()),
            sigma: spec.sigma,
            lambda: spec.lambda,
            eta: spec.eta,
        }
    }

    /// A one-pass step `w ← update(w, x)`, or `w ← update(w, x + b·(g_v − 0·x))` with LookSAM's
    /// `g_v`, after the reduction `r` and its second stage `fin` checked the gradient.
    fn apply_in_place(
        &mut self,
        r: Reduce<T>,
        wt: Tab<T>,
        x: Tab<T>,
        with_gv: bool,
        per_seg_b: bool,
        mut fin: Fin,
    ) -> Result<FirstOutcome> {
        fin.lr = self.lr;
        let y = if with_gv {
            Second::F32(self.look_gv.as_ref().expect("g_v"))
        } else {
            Second::None
        };
        self.reduce(r, Some(&self.base), fin)?;
        self.update_commit(wt, None, x, y, per_seg_b, None, None, None, false, false)?;
        self.record_status()?;
        Ok(FirstOutcome::Applied)
    }

    /// Writes `mask` into the current mask slot, or the pending one (committed when the step
    /// completes), and waits (the host copy is dropped on return).
    fn upload_mask(&mut self, mask: &Bitset, pending: bool) -> Result<()> {
        let stream = self.dev.stream().clone();
        let c = self.work.ctl(&stream)?;
        let words = self.plan.words;
        let masks = self.masks.as_mut().ok_or_else(|| missing("mask"))?;
        let start = (c.mask_cur ^ pending as u32) as usize * words;
        let mut slot = masks.slice.slice_mut(start..start + words);
        stream.memcpy_htod(mask.words(), &mut slot)?;
        stream.synchronize()?;
        Ok(())
    }

    /// SSAM-D: the new mask into the pending slot: drop the `⌊L·rate⌋` live indices with the
    /// smallest `|g|`, grow as many among the dead ones by Philox keys.
    fn drop_grow(&mut self, gt: Tab<T>, rate: f32, seed: u64, update: u32) -> Result<()> {
        let Rule::Ssam(c) = &self.rule else {
            unreachable!()
        };
        let n = self.plan.n;
        let live = c.live_count(n);
        let k = samkit_core::sparse::swap_count(live, n, rate) as u64;
        let masks = self.masks.as_ref().expect("mask slots");
        let sel = self.sel.as_mut().expect("selection buffers");
        // k = 0: the mask stays as it is.
        let mode = if k == 0 {
            abi::COMB_KEEP
        } else {
            let drop = Keys::Drop(gt, masks);
            ops::select::<T>(&self.dev, &self.plan, &self.work, sel, drop, k, false)?;
            let grow = Keys::Grow(masks, seed, update);
            ops::select::<T>(&self.dev, &self.plan, &self.work, sel, grow, k, true)?;
            abi::COMB_DROP_GROW
        };
        ops::mask_combine(&self.dev, &self.plan, &self.work, masks, sel, mode)
    }

    /// Pass 2: `g2` is the gradient at the perturbed weights (ImbSAM: of the tail loss, without
    /// `κ`). Restores the weights exactly and applies the base optimizer, in one pass. Waits for
    /// the end of the step to answer its outcome (`Skipped` when a gradient was non-finite).
    pub fn second_step<W, G>(&mut self, w: &mut W, g2: &G) -> Result<Outcome>
    where
        W: DeviceParamsMut<T> + ?Sized,
        G: DeviceParams<T> + ?Sized,
    {
        let Phase::Perturbed {
            mask_pending,
            fsam,
            second,
            eps_p,
            keep_second,
        } = self.phase
        else {
            return Err(checks::not_perturbed().into());
        };
        let stream = self.dev.stream().clone();
        let mut guards = Vec::new();
        let g2t = self.read_tab::<T, G>(&stream, g2, "perturbed gradient", &mut guards)?;
        let wt = self.write_tab::<T, W>(&stream, w, "weights", &mut guards)?;
        self.phase = Phase::Idle;
        let uses_aux = second.dots_kept();
        let aux = self.aux.as_ref().map(|a| a.tab());
        let mut f = Fin::new(abi::FIN_SECOND);
        f.with_b = true;
        // GSAM's projection ⟨g, g_p⟩ / (‖g_p‖² + eps_p).
        f.eps = eps_p;
        f.lr = self.lr;
        let mut y = Second::None;
        let mut side = None;
        let mut per_tensor = false;
        let kept = || aux.ok_or_else(|| missing("kept gradient"));
        match second {
            SecondPlan::Gsam { alpha, eps_p: _ } => {
                f.rule = abi::RULE_GSAM;
                f.alpha = alpha;
                y = Second::Typed(kept()?);
            }
            SecondPlan::HeadTail { kappa } => {
                f.kappa = kappa;
                f.b = 1.0;
                y = Second::Typed(kept()?);
            }
            SecondPlan::LookRefresh { per_segment } => {
                f.rule = abi::RULE_LOOKSAM;
                f.per_seg = per_segment;
                per_tensor = per_segment;
                let gv = self.look_gv.as_ref().ok_or_else(|| missing("g_v"))?;
                side = Some((kept()?, gv, per_segment));
            }
            SecondPlan::Plain => {}
        }
        self.reduce(
            Reduce::Dot(aux.filter(|_| uses_aux), g2t),
            Some(&self.base),
            f,
        )?;
        let w_old = self.w_old.tab();
        let gv = side.is_some().then(|| {
            let mut f = Fin::new(abi::FIN_GV);
            f.with_bad = false;
            f.per_seg = per_tensor;
            f
        });
        // OG-SAM: the update also writes g2 into g2_prev, unless the step is skipped.
        let keep = self.og_prev.as_ref().filter(|_| keep_second);
        self.update_commit(
            wt,
            Some(w_old),
            g2t,
            y,
            false,
            side,
            gv,
            keep,
            fsam,
            mask_pending,
        )?;
        drop(guards);
        self.record_status()?;
        Ok(if self.sync_status()?.skip != 0 {
            Outcome::Skipped
        } else {
            self.og_kept |= keep_second;
            Outcome::Applied
        })
    }

    /// Abandons a perturbed step: restores the weights exactly, leaves all state as it was.
    pub fn abort<W: DeviceParamsMut<T> + ?Sized>(&mut self, w: &mut W) -> Result<()> {
        if let Phase::Perturbed { .. } = self.phase {
            let stream = self.dev.stream().clone();
            let mut guards = Vec::new();
            let wt = self.write_tab::<T, W>(&stream, w, "weights", &mut guards)?;
            ops::restore::<T>(&self.dev, &self.plan, wt, self.w_old.tab())?;
            drop(guards);
            self.phase = Phase::Idle;
        }
        Ok(())
    }

    /// One whole step through a gradient oracle: `oracle(request, weights, grad_out)` writes the
    /// requested gradient (flat, in layout order, on the device) into `grad_out` and reports the
    /// loss; for [`GradRequest::Fisher`] the buffer starts at zero, so an oracle may accumulate
    /// into it. This is [`drive_step`] with the optimizer's own gradient buffers and no hooks.
    pub fn step<W, F>(&mut self, w: &mut W, mut oracle: F) -> Result<StepReport>
    where
        W: DeviceParamsMut<T> + ?Sized,
        F: FnMut(GradRequest, &W, &mut CudaSlice<T>) -> Result<Eval>,
    {
        let [mut g, mut g2] = match self.scratch.take() {
            Some(b) => b,
            None => {
                let s = self.dev.stream();
                [
                    s.alloc_zeros::<T>(self.plan.n)?,
                    s.alloc_zeros::<T>(self.plan.n)?,
                ]
            }
        };
        let stream = self.dev.stream().clone();
        let zeroing = |req: GradRequest, w: &W, out: &mut CudaSlice<T>| {
            if matches!(req, GradRequest::Fisher { .. }) {
                stream.memset_zeros(out)?;
            }
            oracle(req, w, out)
        };
        let r = drive_step(self, w, (&mut g, &mut g2), zeroing, &mut NoHooks);
        self.scratch = Some([g, g2]);
        r
    }
}

/// The protocol on device buffers (a flat `CudaSlice<T>` arena or one slice per segment): the
/// inherent methods of the same names.
impl<T, W, G> SamOptimizer<W, G> for GpuOptimizer<T>
where
    T: Elem,
    W: DeviceParamsMut<T> + ?Sized,
    G: DeviceParams<T> + ?Sized,
{
    type Error = Error;

    fn layout(&self) -> &Layout {
        &self.plan.layout
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
        GpuOptimizer::set_lr(self, lr)
    }

    fn set_rho(&mut self, rho: f32) -> Result<()> {
        GpuOptimizer::set_rho(self, rho)
    }

    fn is_perturbed(&self) -> bool {
        GpuOptimizer::is_perturbed(self)
    }

    fn needs_fisher(&mut self) -> Result<Option<usize>> {
        GpuOptimizer::needs_fisher(self)
    }

    fn needs_head_tail(&self) -> bool {
        GpuOptimizer::needs_head_tail(self)
    }

    fn set_fisher(&mut self, fisher: &G) -> Result<()> {
        GpuOptimizer::set_fisher::<T, G>(self, fisher)
    }

    fn first_step(&mut self, w: &mut W, g: &G) -> Result<FirstOutcome> {
        GpuOptimizer::first_step(self, w, g)
    }

    fn first_step_split(&mut self, w: &mut W, head: &G, tail: Option<&G>) -> Result<FirstOutcome> {
        GpuOptimizer::first_step_split(self, w, head, tail)
    }

    fn second_step(&mut self, w: &mut W, g2: &G) -> Result<Outcome> {
        GpuOptimizer::second_step(self, w, g2)
    }

    fn abort(&mut self, w: &mut W) -> Result<()> {
        GpuOptimizer::abort(self, w)
    }

    fn status(&mut self) -> Result<Status> {
        GpuOptimizer::status(self)
    }

    fn take_mask_time(&mut self) -> Result<Option<Duration>> {
        GpuOptimizer::take_mask_time(self)
    }
}
