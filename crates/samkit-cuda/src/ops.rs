//! One typed function per kernel. Each builds the kernel's argument struct from validated
//! tables and crate-owned buffers and launches it on the device's stream; nothing else in the
//! crate launches a kernel.
//!
//! The common safety argument of every launch: the argument struct is the one the kernel is
//! declared with (sizes checked by `static_assert` at compile time and by the `sk_abi*` probe at
//! load time); every address in it is either a table built by [`crate::buffers`] from buffers
//! whose lengths were checked against the plan's layout, or a crate-owned [`DevBuf`] sized from
//! the same plan (units, segments, words); all of them live until the launch is enqueued and
//! are freed in stream order afterwards; buffers written by the kernel are not read through
//! another argument of the same launch, except where the kernel reads and writes the same
//! element in one thread (w in the perturbation and the update).
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use samkit_core::BaseOptimizer;

use crate::abi::{self, *};
use crate::buffers::{DevBuf, Elem, Tab};
use crate::compile::{self, Family};
use crate::device::{Device, Kernel};
use crate::error::Result;
use crate::plan::{Plan, Work};
use crate::variants::TopkVariant;

thread_local! {
    /// Kernel launches enqueued by this thread (for the bench's launches-per-step column and the
    /// tests that count them).
    static LAUNCHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Kernel launches enqueued so far by the calling thread (all devices).
pub(crate) fn launches_on_this_thread() -> u64 {
    LAUNCHES.with(|c| c.get())
}

fn count_launch() {
    LAUNCHES.with(|c| c.set(c.get() + 1));
}

/// A one-dimensional launch of `grid` blocks (at least one) of `block` threads.
fn config(grid: u32, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.max(1), 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Enqueues `k` with `args` as its only parameter.
///
/// # Safety
/// `args` must be the argument struct `k` is declared with, and every device address in it must
/// be valid for every access the kernel makes with the given grid (see the module docs).
unsafe fn launch<A: DeviceRepr>(
    dev: &Device,
    k: &Kernel,
    grid: u32,
    block: u32,
    args: &A,
) -> Result<()> {
    count_launch();
    let mut b = dev.stream().launch_builder(&k.func);
    b.arg(args);
    b.launch(config(grid, block))?;
    Ok(())
}

/// Enqueues a fused kernel (`*_fused`, the [`crate::StepVariant::Fused`] arrangement): its first
/// stage's arguments, its second stage's, and the ticket counter that finds the last block.
///
/// # Safety
/// As [`launch`], for both argument structs; `ticket` is the work's one `u32` counter, zero
/// between launches (the kernel's last block resets it).
unsafe fn launch_fused<A: DeviceRepr, B: DeviceRepr>(
    dev: &Device,
    k: &Kernel,
    grid: u32,
    args: &A,
    second: &B,
    ticket: u64,
) -> Result<()> {
    count_launch();
    let mut b = dev.stream().launch_builder(&k.func);
    b.arg(args);
    b.arg(second);
    b.arg(&ticket);
    b.launch(config(grid, abi::BLOCK))?;
    Ok(())
}

/// Enqueues a reduction or update stage, with its second stage folded in when `second` is given
/// ([`launch_fused`]) or alone ([`launch`], `abi::BLOCK` threads).
///
/// # Safety
/// As [`launch_fused`] with `second`, as [`launch`] without.
unsafe fn launch_stage<A: DeviceRepr, B: DeviceRepr>(
    dev: &Device,
    k: &Kernel,
    grid: u32,
    args: &A,
    second: Option<&B>,
    ticket: u64,
) -> Result<()> {
    match second {
        Some(s) => launch_fused(dev, k, grid, args, s, ticket),
        None => launch(dev, k, grid, abi::BLOCK, args),
    }
}

/// Runs a family's `sk_abi*` probe: one thread writes `n` u32 values (struct sizes, offsets).
pub(crate) fn abi_probe(
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    f: &cudarc::driver::CudaFunction,
    n: usize,
) -> Result<Vec<u32>> {
    let mut out = stream.alloc_zeros::<u32>(n)?;
    let mut b = stream.launch_builder(f);
    b.arg(&mut out);
    let cfg = config(1, 1);
    // SAFETY: the probe's only parameter is a `u32*`; it writes `n` values, which `out` holds
    // (`n` comes from `abi::expected` for this very kernel).
    unsafe { b.launch(cfg) }?;
    Ok(stream.clone_dtoh(&out)?)
}

fn kernel(dev: &Device, fam: Family, name: &str) -> Result<Kernel> {
    dev.kernel(fam, name)
}

/// The direction variants of the norm and perturbation kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DirKind {
    Plain,
    /// `T = |w|` (adaptive SAM).
    Adaptive,
    /// `T = |w| + η` on weights (ASAM).
    Asam,
    /// `T = ‖w_f‖ + η` on weights (ASAM filter-wise).
    AsamFilter,
    /// `M ⊙ g`.
    Masked,
    /// `M ⊙ g` with `T = |w| + η` on weights (SAM-ON's `asam` form on its norm-layer mask).
    MaskedAsam,
    /// `g − σ·m` after FriendlySAM's first step.
    Friendly,
    /// FriendlySAM's direction with `T = |w|` (adaptive FriendlySAM).
    FriendlyAdaptive,
    /// `g` minus its per-filter mean on segments of two or more dimensions (gradient
    /// centralization; the means in [`DirExtra::filters`], from [`filter_means`]). Perturbation
    /// only: its norm is the plain one.
    Centralized,
    /// The centralized direction with `T = |w|` (adaptive SAM with gradient centralization).
    CentralizedAdaptive,
}

impl DirKind {
    fn name(self) -> &'static str {
        match self {
            DirKind::Plain => "plain",
            DirKind::Adaptive => "adaptive",
            DirKind::Asam => "asam",
            DirKind::AsamFilter => "asam_filter",
            DirKind::Masked => "masked",
            DirKind::MaskedAsam => "masked_asam",
            DirKind::Friendly => "friendly",
            DirKind::FriendlyAdaptive => "friendly_adaptive",
            DirKind::Centralized => "centralized",
            DirKind::CentralizedAdaptive => "centralized_adaptive",
        }
    }

    pub fn needs_w(self) -> bool {
        matches!(
            self,
            DirKind::Adaptive
                | DirKind::Asam
                | DirKind::MaskedAsam
                | DirKind::AsamFilter
                | DirKind::FriendlyAdaptive
                | DirKind::CentralizedAdaptive
        )
    }

    /// Whether the norm kernel has a `_fused` variant (`SK_UNFUSED_DIRECTIONS` in samkit.cuh
    /// lists those without: their two stages run as two launches in every arrangement).
    pub fn has_fused_norm(self) -> bool {
        self != DirKind::MaskedAsam
    }

    /// Sparse SAM's directions: they read a mask slot.
    pub fn is_masked(self) -> bool {
        matches!(self, DirKind::Masked | DirKind::MaskedAsam)
    }

    /// FriendlySAM's directions: they read `m` and write its EMA.
    pub fn is_friendly(self) -> bool {
        matches!(self, DirKind::Friendly | DirKind::FriendlyAdaptive)
    }
}

/// Per-filter values of some segments and their per-segment lookup tables: ASAM's filter scales
/// `T_f` (weight segments), or gradient centralization's means (segments of two or more
/// dimensions). A segment outside the set has `len` 1 for the scales and 0 for the means (the
/// perturbation kernel's test for "not centralized").
pub(crate) struct Filters {
    pub t: DevBuf<f32>,
    pub start: DevBuf<u64>,
    pub len: DevBuf<u32>,
    pub segs: DevBuf<FiltSeg>,
    pub n_filters: usize,
    pub n_fsegs: usize,
}

impl Filters {
    /// ASAM's set: weight segments; the others have `len` 1.
    pub fn weights(s: &samkit_core::Segment) -> Option<u32> {
        (s.kind != samkit_core::ParamKind::Weight).then_some(1)
    }

    /// Gradient centralization's set (`samkit_core::passes::centralized`): segments of two or
    /// more dimensions; the others have `len` 0.
    pub fn matrices(s: &samkit_core::Segment) -> Option<u32> {
        (s.shape.len() < 2).then_some(0)
    }

    /// `outside(segment)` is `None` for a segment in the set, else the `len` it gets.
    pub fn new(
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
        plan: &Plan,
        outside: fn(&samkit_core::Segment) -> Option<u32>,
    ) -> Result<Self> {
        let mut start = vec![0u64; plan.n_segs];
        let mut len = vec![1u32; plan.n_segs];
        let mut segs = Vec::new();
        let mut total = 0u64;
        for (i, s) in plan.layout.segments().iter().enumerate() {
            if let Some(l) = outside(s) {
                len[i] = l;
                continue;
            }
            let fl = s.filter_len();
            let count = (s.len / fl) as u64;
            start[i] = total;
            len[i] = fl as u32;
            segs.push(FiltSeg {
                first: total,
                count,
                seg: i as u32,
                len: fl as u32,
            });
            total += count;
        }
        Ok(Filters {
            t: DevBuf::zeros(stream, total as usize)?,
            start: DevBuf::from_host(stream, &start)?,
            len: DevBuf::from_host(stream, &len)?,
            n_fsegs: segs.len(),
            segs: DevBuf::from_host(stream, &segs)?,
            n_filters: total as usize,
        })
    }
}

/// What the norm and perturbation kernels need beyond the gradient.
#[derive(Clone, Copy, Default)]
pub(crate) struct DirExtra<'a> {
    /// FriendlySAM's two slots of `m`.
    pub m: Option<&'a DevBuf<f32>>,
    /// Sparse SAM's two mask slots, and whether this step's mask is the pending one.
    pub mask: Option<(&'a DevBuf<u64>, bool)>,
    pub filters: Option<&'a Filters>,
    pub sigma: f32,
    pub lambda: f32,
    pub eta: f32,
}

/// Pass 1: per-unit `Σ (T ⊙ base(g))²` into `work.pa`, non-finite flags of `g` (and `chk`) into
/// `work.bad`; FriendlySAM's next `m` when `ema`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm<T: Elem>(
    dev: &Device,
    plan: &Plan,
    work: &Work,
    kind: DirKind,
    g: Tab<T>,
    w: Option<Tab<T>>,
    chk: Option<Tab<T>>,
    x: DirExtra,
    ema: bool,
    fin: Option<&FinArgs>,
) -> Result<()> {
    let k = kernel(
        dev,
        compile::NORM,
        &format!(
            "sk_norm_{}_{}{}",
            kind.name(),
            T::SUFFIX,
            fused_suffix(fin.is_some())
        ),
    )?;
    assert!(!kind.needs_w() || w.is_some(), "{kind:?} needs the weights");
    assert!(
        fin.is_none() || kind.has_fused_norm(),
        "{kind:?} has no fused norm"
    );
    assert!(!kind.is_friendly() || x.m.is_some());
    assert!(!kind.is_masked() || x.mask.is_some());
    assert!(kind != DirKind::AsamFilter || x.filters.is_some());
    let a = NormArgs {
        units: plan.units.addr,
        g: g.addr,
        w: Tab::addr(w),
        chk: Tab::addr(chk),
        m: x.m.map_or(0, |m| m.addr),
        mask: x.mask.map_or(0, |m| m.0.addr),
        ft: x.filters.map_or(0, |f| f.t.addr),
        ft_start: x.filters.map_or(0, |f| f.start.addr),
        ft_len: x.filters.map_or(0, |f| f.len.addr),
        ctl: work.ctl.addr,
        part: work.pa.addr,
        bad: work.bad.addr,
        n: plan.n as u64,
        words: plan.words as u64,
        n_units: plan.n_units as u32,
        mask_pending: x.mask.is_some_and(|m| m.1) as u32,
        sigma: x.sigma,
        lambda: x.lambda,
        eta: x.eta,
        ema: ema as u32,
    };
    let grid = dev.grid(&k, plan.n_units);
    // SAFETY: see the module docs; `part` and `bad` hold one entry per unit, the FriendlySAM
    // slots 2·n floats, the mask slots 2·words words, the filter tables one entry per segment;
    // the second stage reads the partials the first stage wrote (see `fin_args`).
    unsafe { launch_stage(dev, &k, grid, &a, fin, work.ticket.addr) }
}

/// The kernel-name suffix of a stage with its second stage folded in.
fn fused_suffix(fused: bool) -> &'static str {
    if fused {
        "_fused"
    } else {
        ""
    }
}

/// Per-unit `⟨x, y⟩` into `work.pa`, `‖y‖²` into `work.pb`, non-finite flags of `y`.
pub(crate) fn dot<T: Elem>(
    dev: &Device,
    plan: &Plan,
    work: &Work,
    x: Option<Tab<T>>,
    y: Tab<T>,
    fin: Option<&FinArgs>,
) -> Result<()> {
    let k = kernel(
        dev,
        compile::NORM,
        &format!("sk_dot_{}{}", T::SUFFIX, fused_suffix(fin.is_some())),
    )?;
    let a = dot_args(plan, work, Tab::addr(x), y);
    let grid = dev.grid(&k, plan.n_units);
    // SAFETY: see the module docs; the partials hold one entry per unit; the second stage reads
    // the partials the first stage wrote (see `fin_args`).
    unsafe { launch_stage(dev, &k, grid, &a, fin, work.ticket.addr) }
}

/// The arguments of the dot-product kernels over `y` (and `x` at `x_addr`, 0 for none): per-unit
/// partials into `work.pa` and `work.pb`, non-finite flags into `work.bad`.
fn dot_args<S>(plan: &Plan, work: &Work, x_addr: u64, y: Tab<S>) -> DotArgs {
    DotArgs {
        units: plan.units.addr,
        x: x_addr,
        y: y.addr,
        pxy: work.pa.addr,
        pyy: work.pb.addr,
        bad: work.bad.addr,
        n_units: plan.n_units as u32,
        pad: 0,
    }
}

/// Per-segment sums `Σ_seg y` in f64 into `work.seg_tmp` (a fixed-shape tree: per unit, then per
/// segment over its units); the step state is left as it is. SSAM-L fisher's per-segment Fisher.
pub(crate) fn seg_sums<S: Elem>(dev: &Device, plan: &Plan, work: &Work, y: Tab<S>) -> Result<()> {
    let k = kernel(dev, compile::NORM, &format!("sk_sum_{}", S::SUFFIX))?;
    let a = dot_args(plan, work, 0, y);
    // SAFETY: see the module docs; the partials hold one entry per unit.
    unsafe { launch(dev, &k, dev.grid(&k, plan.n_units), abi::BLOCK, &a) }?;
    let mut f = Fin::new(abi::FIN_SEG);
    f.per_seg = true;
    f.with_bad = false;
    finalize(dev, plan, work, None, f)
}

/// `T_f = ‖w_f‖ + η` for every filter of every weight segment.
pub(crate) fn filter_norms<T: Elem>(dev: &Device, f: &Filters, w: Tab<T>, eta: f32) -> Result<()> {
    let Some((k, a, grid)) = filter_launch(dev, f, "sk_filter_norms", w, eta)? else {
        return Ok(());
    };
    // SAFETY: see the module docs; `t` holds one entry per filter, `segs` one per weight segment.
    unsafe { launch(dev, &k, grid, abi::BLOCK, &a) }
}

/// Gradient centralization's per-filter means of `g`, `(Σ_f g / len) as f32` with the sum in
/// f64 (`samkit_core::passes::centralized`), into `f.t`.
pub(crate) fn filter_means<T: Elem>(dev: &Device, f: &Filters, g: Tab<T>) -> Result<()> {
    let Some((k, a, grid)) = filter_launch(dev, f, "sk_filter_means", g, 0.0)? else {
        return Ok(());
    };
    // SAFETY: see the module docs; `t` holds one entry per filter, `segs` one per segment of the
    // set; the kernel reads `w` (here the gradient) as filter_norms does.
    unsafe { launch(dev, &k, grid, abi::BLOCK, &a) }
}

/// The per-filter kernels' plumbing: the kernel `{name}_{T}`, its arguments over `src` into
/// `f.t`, and its grid (one warp per filter); `None` when the set has no filter (no launch).
fn filter_launch<T: Elem>(
    dev: &Device,
    f: &Filters,
    name: &str,
    src: Tab<T>,
    eta: f32,
) -> Result<Option<(Kernel, FiltArgs, u32)>> {
    if f.n_filters == 0 {
        return Ok(None);
    }
    let k = kernel(dev, compile::NORM, &format!("{name}_{}", T::SUFFIX))?;
    let a = FiltArgs {
        w: src.addr,
        segs: f.segs.addr,
        t: f.t.addr,
        n_filters: f.n_filters as u64,
        n_segs: f.n_fsegs as u32,
        eta,
    };
    let warps = (abi::BLOCK / 32) as usize;
    let grid = dev.grid(&k, f.n_filters.div_ceil(warps));
    Ok(Some((k, a, grid)))
}

/// Parameters of the second reduction stage (see `FIN_*` in `samkit-kernels/kernels/norm.cu`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fin {
    pub mode: u32,
    pub rule: u32,
    pub per_seg: bool,
    /// Use `work.pb` (dot products).
    pub with_b: bool,
    /// Read the non-finite flags.
    pub with_bad: bool,
    pub rho: f32,
    pub eps: f64,
    pub alpha: f32,
    /// The host-known coefficients of the update direction `κ·x + b·(y − proj·x)` (ImbSAM's κ
    /// and 1; GSAM's and LookSAM's are formed on the device).
    pub kappa: f32,
    pub b: f32,
    pub lr: f32,
}

impl Fin {
    pub fn new(mode: u32) -> Self {
        Fin {
            mode,
            rule: abi::RULE_PLAIN,
            per_seg: false,
            with_b: false,
            with_bad: true,
            rho: 0.0,
            eps: 0.0,
            alpha: 0.0,
            kappa: 1.0,
            b: 0.0,
            lr: 0.0,
        }
    }
}

/// The second stage: fixed-order f64 sums of the partials, the skip decision and the step's
/// scalars, all on the device.
pub(crate) fn finalize(
    dev: &Device,
    plan: &Plan,
    work: &Work,
    base: Option<&BaseOptimizer>,
    f: Fin,
) -> Result<()> {
    let k = kernel(dev, compile::NORM, "sk_finalize")?;
    let a = fin_args(plan, work, base, f);
    // SAFETY: see the module docs; one block; per-unit inputs hold n_units entries, per-segment
    // buffers n_segs, `seg_units` n_segs + 1.
    unsafe { launch(dev, &k, 1, abi::FIN_BLOCK, &a) }
}

/// The second stage's arguments: for [`finalize`], or folded into [`norm`], [`dot`] (the fused
/// variant), where the launch's last block runs it over the partials its blocks wrote.
pub(crate) fn fin_args(plan: &Plan, work: &Work, base: Option<&BaseOptimizer>, f: Fin) -> FinArgs {
    // Adam's bias corrections are formed on the device from β1, β2 and lr as torch holds them
    // (BaseOptimizer::scalars).
    let (adam, beta1, beta2) = match base.and_then(BaseOptimizer::adam_betas) {
        Some((b1, b2)) => (1, b1, b2),
        None => (0, 0.0, 0.0),
    };
    FinArgs {
        pa: work.pa.addr,
        pb: if f.with_b { work.pb.addr } else { 0 },
        bad: if f.with_bad { work.bad.addr } else { 0 },
        seg_units: plan.seg_units.addr,
        ctl: work.ctl.addr,
        seg_tmp: work.seg_tmp.addr,
        seg_gsq: work.seg_gsq.addr,
        seg_gv: work.seg_gv.addr,
        b_seg: work.b_seg.addr,
        coef_c_seg: work.coef_c_seg.addr,
        eps: f.eps,
        n_units: plan.n_units as u32,
        n_segs: plan.n_segs as u32,
        mode: f.mode,
        rule: f.rule,
        per_seg: f.per_seg as u32,
        adam,
        rho: f.rho,
        alpha: f.alpha,
        kappa: f.kappa,
        b: f.b,
        lr: f.lr,
        lr_hyper: samkit_core::base::hyper_f64(f.lr),
        beta1,
        beta2,
        pad: 0,
    }
}

/// EG-SAM/OG-SAM's extrapolation `w̃ = (w + e) − η_x·v`, fused into the perturbation.
#[derive(Clone, Copy, Default)]
pub(crate) enum Extrap<'a> {
    #[default]
    None,
    /// `v = g`, the gradient the perturbation reads (EG-SAM).
    Grad { eta: f32 },
    /// `v = g2_prev`, a flat f32 buffer of `n` values (OG-SAM).
    Prev { prev: &'a DevBuf<f32>, eta: f32 },
}

/// Pass 2: `w_old ← w; w ← w + s·dir` (unless the step is skipped), with an optional copy and
/// an optional extrapolation.
#[allow(clippy::too_many_arguments)]
pub(crate) fn perturb<T: Elem>(
    dev: &Device,
    plan: &Plan,
    work: &Work,
    kind: DirKind,
    w: Tab<T>,
    w_old: Tab<T>,
    g: Tab<T>,
    x: DirExtra,
    copy: Option<(Tab<T>, Tab<T>)>,
    extra: Extrap,
) -> Result<()> {
    let k = kernel(
        dev,
        compile::PERTURB,
        &format!("sk_perturb_{}_{}", kind.name(), T::SUFFIX),
    )?;
    assert!(!kind.is_friendly() || x.m.is_some());
    assert!(!kind.is_masked() || x.mask.is_some());
    assert!(kind != DirKind::AsamFilter || x.filters.is_some());
    assert!(
        !matches!(kind, DirKind::Centralized | DirKind::CentralizedAdaptive) || x.filters.is_some()
    );
    let a = PerturbArgs {
        units: plan.units.addr,
        w: w.addr,
        w_old: w_old.addr,
        g: g.addr,
        m: x.m.map_or(0, |m| m.addr),
        mask: x.mask.map_or(0, |m| m.0.addr),
        ft: x.filters.map_or(0, |f| f.t.addr),
        ft_start: x.filters.map_or(0, |f| f.start.addr),
        ft_len: x.filters.map_or(0, |f| f.len.addr),
        copy_src: copy.map_or(0, |c| c.0.addr),
        copy_dst: copy.map_or(0, |c| c.1.addr),
        ctl: work.ctl.addr,
        n: plan.n as u64,
        words: plan.words as u64,
        n_units: plan.n_units as u32,
        mask_pending: x.mask.is_some_and(|m| m.1) as u32,
        sigma: x.sigma,
        eta: x.eta,
        prev: match extra {
            Extrap::Prev { prev, .. } => prev.addr,
            _ => 0,
        },
        eta_x: match extra {
            Extrap::None => 0.0,
            Extrap::Grad { eta } | Extrap::Prev { eta, .. } => eta,
        },
        extra: match extra {
            Extrap::None => abi::EXTRA_NONE,
            Extrap::Grad { .. } => abi::EXTRA_GRAD,
            Extrap::Prev { .. } => abi::EXTRA_PREV,
        },
    };
    // SAFETY: see the module docs; w, w_old and the copy's destination are distinct buffers;
    // OG-SAM's `prev` is a crate-owned flat buffer of n floats, only read.
    unsafe { launch(dev, &k, dev.grid(&k, plan.n_units), abi::BLOCK, &a) }
}

/// The second term of an update direction.
#[derive(Clone, Copy)]
pub(crate) enum Second<'a, T> {
    None,
    /// `b·(y − proj·x)` with `y` in the parameters' type.
    Typed(Tab<'a, T>),
    /// `b·(y − proj·x)` with `y` a flat f32 buffer (LookSAM's `g_v`).
    F32(&'a DevBuf<f32>),
}

/// Pass 3: `w ← update(src, κ·x + b·(y − proj·x))`, coefficients and the base optimizer's scalars
/// from the step state; `lr` is this step's learning rate (AdamW's decoupled decay).
#[allow(clippy::too_many_arguments)]
pub(crate) fn update<T: Elem>(
    dev: &Device,
    plan: &Plan,
    work: &Work,
    opt: &BaseOptimizer,
    lr: f32,
    state: [Option<&DevBuf<f32>>; 3],
    w: Tab<T>,
    src: Option<Tab<T>>,
    x: Tab<T>,
    y: Second<T>,
    per_seg_b: bool,
    side: Option<(Tab<T>, &DevBuf<f32>, bool)>,
    keep: Option<&DevBuf<f32>>,
    commit: Option<&CommitArgs>,
) -> Result<()> {
    // The derived constants exactly as the CPU forms them (BaseOptimizer::consts).
    let k = opt.consts(lr);
    let (name, mut a) = match opt {
        BaseOptimizer::Sgd(c) => (
            "sgd",
            UpdateArgs {
                nesterov: c.nesterov as u32,
                has_momentum: (c.momentum != 0.0) as u32,
                momentum: c.momentum,
                one_m_dampening: k.one_m_dampening,
                weight_decay: c.weight_decay,
                maximize: c.maximize as u32,
                ..UpdateArgs::default()
            },
        ),
        BaseOptimizer::Adam(c) | BaseOptimizer::AdamW(c) => (
            if matches!(opt, BaseOptimizer::AdamW(_)) {
                "adamw"
            } else {
                "adam"
            },
            UpdateArgs {
                weight_decay: c.weight_decay,
                one_m_beta1: k.one_m_beta1,
                beta2: c.beta2,
                one_m_beta2: k.one_m_beta2,
                eps: c.eps,
                // AdamW: `w *= 1 − lr·λ`, with this step's learning rate.
                wscale: k.wscale,
                amsgrad: c.amsgrad as u32,
                maximize: c.maximize as u32,
                ..UpdateArgs::default()
            },
        ),
        BaseOptimizer::RmsProp(c) => (
            "rmsprop",
            UpdateArgs {
                centered: c.centered as u32,
                has_momentum: (c.momentum != 0.0) as u32,
                momentum: c.momentum,
                weight_decay: c.weight_decay,
                eps: c.eps,
                alpha: c.alpha,
                one_m_alpha: k.one_m_alpha,
                maximize: c.maximize as u32,
                ..UpdateArgs::default()
            },
        ),
    };
    let k = kernel(
        dev,
        compile::UPDATE,
        &format!(
            "sk_update_{name}_{}{}",
            T::SUFFIX,
            fused_suffix(commit.is_some())
        ),
    )?;
    let need = opt.state_buffers().len();
    assert!(
        state.iter().take(need).all(Option::is_some),
        "missing optimizer state"
    );
    a.units = plan.units.addr;
    a.w = w.addr;
    a.src = Tab::addr(src);
    a.x = x.addr;
    match y {
        Second::None => {}
        Second::Typed(t) => a.y = t.addr,
        Second::F32(b) => a.y32 = b.addr,
    }
    if let Some((g, out, per_seg_c)) = side {
        a.side_g = g.addr;
        a.side_out = out.addr;
        a.part = work.pa.addr;
        if per_seg_c {
            a.coef_c_seg = work.coef_c_seg.addr;
        }
    }
    if per_seg_b {
        a.b_seg = work.b_seg.addr;
    }
    if let Some(k) = keep {
        a.keep = k.addr;
    }
    a.s0 = state[0].map_or(0, |b| b.addr);
    a.s1 = state[1].map_or(0, |b| b.addr);
    a.s2 = state[2].map_or(0, |b| b.addr);
    a.ctl = work.ctl.addr;
    a.n_units = plan.n_units as u32;
    let grid = dev.grid(&k, plan.n_units);
    // SAFETY: see the module docs; state buffers, g_v and `keep` hold n floats, w is read (as the
    // source when `src` is none) and written by the same thread, element by element; the
    // commit touches the step state only, after every block has read it.
    unsafe { launch_stage(dev, &k, grid, &a, commit, work.ticket.addr) }
}

/// `w ← w_old`.
pub(crate) fn restore<T: Elem>(dev: &Device, plan: &Plan, w: Tab<T>, w_old: Tab<T>) -> Result<()> {
    let k = kernel(dev, compile::UPDATE, &format!("sk_restore_{}", T::SUFFIX))?;
    let a = RestoreArgs {
        units: plan.units.addr,
        w: w.addr,
        w_old: w_old.addr,
        n_units: plan.n_units as u32,
        pad: 0,
    };
    // SAFETY: see the module docs.
    unsafe { launch(dev, &k, dev.grid(&k, plan.n_units), abi::BLOCK, &a) }
}

/// The end of a step: counters, FriendlySAM's and the mask's slot flips.
pub(crate) fn commit(dev: &Device, work: &Work, fsam: bool, mask_pending: bool) -> Result<()> {
    let k = kernel(dev, compile::UPDATE, "sk_commit")?;
    let a = commit_args(work, fsam, mask_pending);
    // SAFETY: see the module docs; one thread touches the step state only.
    unsafe { launch(dev, &k, 1, 32, &a) }
}

/// The commit's arguments: for [`commit`], or folded into [`update`] (the fused variant).
pub(crate) fn commit_args(work: &Work, fsam: bool, mask_pending: bool) -> CommitArgs {
    CommitArgs {
        ctl: work.ctl.addr,
        fsam: fsam as u32,
        mask_pending: mask_pending as u32,
    }
}

/// `F += g ⊙ g` over a flat f32 Fisher buffer at `f` of the layout's length.
pub(crate) fn fisher<T: Elem>(dev: &Device, plan: &Plan, f: u64, g: Tab<T>) -> Result<()> {
    let k = kernel(dev, compile::FISHER, &format!("sk_fisher_{}", T::SUFFIX))?;
    let a = FisherArgs {
        units: plan.units.addr,
        g: g.addr,
        f,
        n_units: plan.n_units as u32,
        pad: 0,
    };
    // SAFETY: see the module docs; `f` is a flat f32 buffer of n elements, checked by the caller.
    unsafe { launch(dev, &k, dev.grid(&k, plan.n_units), abi::BLOCK, &a) }
}

/// The scratch of one selection.
pub(crate) struct SelBufs {
    pub hist: DevBuf<u64>,
    pub st: DevBuf<SelState>,
    pub eq: DevBuf<u32>,
    pub eq_base: DevBuf<u64>,
    /// Two result bitsets (SSAM-D's drop and grow sets; SSAM-F and the initial mask use the
    /// first).
    pub a: DevBuf<u64>,
    pub b: DevBuf<u64>,
    /// The kernel arrangement of the selections (see [`crate::variants`]).
    pub topk: TopkVariant,
    /// Vectorized: SSAM-D's Philox keys, `UNIT` per unit (allocated by the first grow or initial
    /// mask that needs them).
    keys: Option<DevBuf<u32>>,
}

impl SelBufs {
    pub fn new(stream: &std::sync::Arc<cudarc::driver::CudaStream>, plan: &Plan) -> Result<Self> {
        Ok(SelBufs {
            hist: DevBuf::zeros(stream, abi::HIST_BINS)?,
            st: DevBuf::zeros(stream, 1)?,
            eq: DevBuf::zeros(stream, plan.n_units * abi::WARPS)?,
            eq_base: DevBuf::zeros(stream, plan.n_units * abi::WARPS)?,
            a: DevBuf::zeros(stream, plan.words)?,
            b: DevBuf::zeros(stream, plan.words)?,
            topk: TopkVariant::default(),
            keys: None,
        })
    }

    fn keys(
        &mut self,
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
        plan: &Plan,
    ) -> Result<u64> {
        if self.keys.is_none() {
            self.keys = Some(DevBuf::zeros(stream, plan.n_units * abi::UNIT)?);
        }
        Ok(self.keys.as_ref().map_or(0, |k| k.addr))
    }
}

/// The key source of a selection.
#[derive(Clone, Copy)]
pub(crate) enum Keys<'a, T> {
    /// `f32_key(score)`, all candidates.
    Scores(Tab<'a, T>),
    /// `!f32_key(|g|)` among the live indices of the committed mask.
    Drop(Tab<'a, T>, &'a DevBuf<u64>),
    /// `!philox(seed, update, i)` among the dead indices of the committed mask.
    Grow(&'a DevBuf<u64>, u64, u32),
    /// `!philox(seed, update, i)`, all candidates.
    Init(u64, u32),
}

/// Top-`k` of the keys (ties to the lower index) into `out` (`plan.words` words, overwritten).
/// `k ≥ candidates` selects every candidate; `k = 0` none.
pub(crate) fn select<T: Elem>(
    dev: &Device,
    plan: &Plan,
    work: &Work,
    sel: &mut SelBufs,
    keys: Keys<T>,
    k: u64,
    into_b: bool,
) -> Result<()> {
    let stream = dev.stream().clone();
    {
        let out = if into_b { &mut sel.b } else { &mut sel.a };
        stream.memset_zeros(&mut out.slice)?;
    }
    if k == 0 {
        return Ok(());
    }
    stream.memset_zeros(&mut sel.hist.slice)?;
    let (suffix, src, mask, seed, update) = match keys {
        Keys::Scores(t) => (format!("scores_{}", T::SUFFIX), t.addr, 0, 0, 0),
        Keys::Drop(t, m) => (format!("drop_{}", T::SUFFIX), t.addr, m.addr, 0, 0),
        Keys::Grow(m, seed, up) => ("grow".to_string(), 0, m.addr, seed, up),
        Keys::Init(seed, up) => ("init".to_string(), 0, 0, seed, up),
    };
    let out = if into_b { sel.b.addr } else { sel.a.addr };
    let mut a = SelArgs {
        units: plan.units.addr,
        src,
        mask,
        ctl: work.ctl.addr,
        hist: sel.hist.addr,
        st: sel.st.addr,
        eq: sel.eq.addr,
        eq_base: sel.eq_base.addr,
        out,
        seed,
        words: plan.words as u64,
        k,
        n_units: plan.n_units as u32,
        update,
        pass: 0,
        pad: 0,
    };
    if sel.topk == TopkVariant::Vectorized {
        if matches!(keys, Keys::Grow(..) | Keys::Init(..)) {
            // The Philox keys: computed by pass 0, loaded by the later passes.
            a.src = sel.keys(&stream, plan)?;
        }
        let hist = kernel(dev, compile::SELECT, &format!("sk_selv_hist_{suffix}"))?;
        let count = kernel(dev, compile::SELECT, &format!("sk_selv_count_{suffix}"))?;
        let write = kernel(dev, compile::SELECT, &format!("sk_selv_write_{suffix}"))?;
        for pass in 0..3 {
            a.pass = pass;
            // SAFETY: see the module docs; the histogram holds HIST_BINS counters, the state one
            // SelState (its ticket is 0 between launches); the mask (drop, grow) has two slots of
            // `words` words; the key buffer (grow, init) UNIT keys per unit, written by pass 0
            // only, one thread per pack.
            unsafe { launch(dev, &hist, dev.grid(&hist, plan.n_units), abi::BLOCK, &a) }?;
        }
        // SAFETY: as above; `eq` and `eq_base` hold n_units · WARPS entries.
        unsafe { launch(dev, &count, dev.grid(&count, plan.n_units), abi::BLOCK, &a) }?;
        // SAFETY: as above; `out` holds `words` words, written with atomic ORs.
        return unsafe { launch(dev, &write, dev.grid(&write, plan.n_units), abi::BLOCK, &a) };
    }
    let hist = kernel(dev, compile::SELECT, &format!("sk_sel_hist_{suffix}"))?;
    let scan = kernel(dev, compile::SELECT, "sk_sel_scan")?;
    let count = kernel(dev, compile::SELECT, &format!("sk_sel_count_{suffix}"))?;
    let eq_scan = kernel(dev, compile::SELECT, "sk_sel_eq_scan")?;
    let write = kernel(dev, compile::SELECT, &format!("sk_sel_write_{suffix}"))?;
    for pass in 0..3 {
        a.pass = pass;
        // SAFETY: see the module docs; the histogram holds HIST_BINS counters, the state one
        // SelState; the mask (drop, grow) has two slots of `words` words.
        unsafe { launch(dev, &hist, dev.grid(&hist, plan.n_units), abi::BLOCK, &a) }?;
        // SAFETY: as above; one warp.
        unsafe { launch(dev, &scan, 1, 32, &a) }?;
    }
    // SAFETY: as above; `eq` and `eq_base` hold n_units · WARPS entries.
    unsafe { launch(dev, &count, dev.grid(&count, plan.n_units), abi::BLOCK, &a) }?;
    // SAFETY: as above; one block.
    unsafe { launch(dev, &eq_scan, 1, abi::SCAN_BLOCK, &a) }?;
    // SAFETY: as above; `out` holds `words` words, written with atomic ORs.
    unsafe { launch(dev, &write, dev.grid(&write, plan.n_units), abi::BLOCK, &a) }
}

/// Writes a mask slot from the selection results (see `COMB_*` in `samkit-kernels/kernels/select.cu`).
pub(crate) fn mask_combine(
    dev: &Device,
    plan: &Plan,
    work: &Work,
    masks: &DevBuf<u64>,
    sel: &SelBufs,
    mode: u32,
) -> Result<()> {
    let k = kernel(dev, compile::SELECT, "sk_mask_combine")?;
    let a = CombArgs {
        mask: masks.addr,
        a: sel.a.addr,
        b: sel.b.addr,
        ctl: work.ctl.addr,
        words: plan.words as u64,
        mode,
        pad: 0,
    };
    let blocks = plan.words.div_ceil(abi::BLOCK as usize);
    // SAFETY: see the module docs; `masks` has two slots of `words` words, `a` and `b` one.
    unsafe { launch(dev, &k, dev.grid(&k, blocks), abi::BLOCK, &a) }
}
