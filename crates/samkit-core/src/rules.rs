//! The SAM family's rules and their hyperparameters (ALGORITHMS.md is the contract).
use serde::{Deserialize, Serialize};

use crate::error::{check_finite_nonneg, check_unit_interval, Error, Result};

/// `x ∈ (0, 1]` (a probability or fraction that must not be 0).
fn check_open_unit(name: &'static str, x: f32) -> Result<()> {
    if !(x > 0.0 && x <= 1.0) {
        return Err(Error::hyper(name, x, "must be in (0, 1]"));
    }
    Ok(())
}

// Every epsilon of the family, one constant per meaning, used by the CPU optimizer and handed to
// the CUDA kernels as arguments (no kernel holds its own copy).

/// `eps_p`: added to a norm before dividing by it, unless a rule says otherwise; also GSAM's
/// projection `⟨g, g_p⟩ / (‖g_p‖² + eps_p)`.
pub const EPS_P: f64 = 1e-12;
/// ASAM's perturbation denominator `‖T ⊙ g‖ + 1e-16` (the official code).
pub const EPS_ASAM: f64 = 1e-16;
/// ImbSAM's perturbation denominator `‖g_t‖ + 1e-16` (the official code).
pub const EPS_IMBSAM: f64 = 1e-16;
/// Sparse SAM with `norm = full`: `‖g‖ + 1e-7` (the official code).
pub const EPS_SSAM_FULL: f64 = 1e-7;
/// LookSAM per tensor: `α·‖g‖ / (‖g_v‖ + 1e-8)` (pytorch_optimizer.LookSAM).
pub const EPS_LOOKSAM: f64 = 1e-8;
/// ESAM's SWP: `(ρ/β)·g_S / (‖g_S‖ + 1e-7)` (the official code).
pub const EPS_ESAM: f64 = 1e-7;
/// SAM-ON: `‖g_N‖ + 1e-16` (the official code, which builds on ASAM's).
pub const EPS_SAM_ON: f64 = 1e-16;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sam {
    pub rho: f32,
    /// `e = ρ·w²⊙g / ‖|w|⊙g‖` (the `adaptive=True` of the PyTorch implementations).
    pub adaptive: bool,
    /// The perturbation epsilon `ρ / (‖d‖ + eps_p)` (pytorch_optimizer's `perturb_eps`); `None` is
    /// the rule's value in ALGORITHMS.md ([`Rule::perturb_eps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
    /// Gradient centralization (pytorch_optimizer's `SAM(use_gc=True)`): the perturbation
    /// follows `g` with the mean over all dimensions but the first subtracted from every
    /// segment of two or more dimensions (conv and linear weights); the norm is still `‖g‖`'s,
    /// as in the reference. Segments of [`crate::Layout::from_lengths`] are 1-D: give shapes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub grad_centralization: bool,
}

impl Default for Sam {
    fn default() -> Self {
        Sam {
            rho: 0.05,
            adaptive: false,
            eps_p: None,
            grad_centralization: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Asam {
    pub rho: f32,
    pub eta: f32,
    /// `T` constant over each output filter: `‖w_f‖ + η`.
    pub filterwise: bool,
    /// The perturbation epsilon `ρ / (‖d‖ + eps_p)` (pytorch_optimizer's `perturb_eps`); `None` is
    /// the rule's value in ALGORITHMS.md ([`Rule::perturb_eps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
}

impl Default for Asam {
    fn default() -> Self {
        Asam {
            rho: 0.5,
            eta: 0.01,
            filterwise: false,
            eps_p: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FriendlySam {
    pub rho: f32,
    pub sigma: f32,
    pub lambda: f32,
    /// `e = ρ·w²⊙d / ‖|w|⊙d‖` (pytorch_optimizer's `FriendlySAM(adaptive=True)`), `d` the
    /// FriendlySAM direction.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adaptive: bool,
    /// The perturbation epsilon `ρ / (‖d‖ + eps_p)` (pytorch_optimizer's `perturb_eps`); `None` is
    /// the rule's value in ALGORITHMS.md ([`Rule::perturb_eps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
}

impl Default for FriendlySam {
    fn default() -> Self {
        FriendlySam {
            rho: 0.05,
            sigma: 1.0,
            lambda: 0.9,
            adaptive: false,
            eps_p: None,
        }
    }
}

/// How Sparse SAM normalises its masked direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SsamNorm {
    /// `‖M ⊙ g‖` (the survey's eq. 3, `‖e‖ = ρ`).
    Masked,
    /// `‖g‖ + 1e-7` (the official code, [`EPS_SSAM_FULL`]).
    Full,
}

/// SSAM-D's drop fraction `r_t`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DropRate {
    Constant {
        rate: f32,
    },
    /// `r_0·(1 + cos(π·t/T))/2` (the official code, `r_0 = 0.5`).
    Cosine {
        r0: f32,
        total_steps: u64,
    },
}

impl DropRate {
    pub fn at(&self, t: u64) -> f32 {
        match *self {
            DropRate::Constant { rate } => rate,
            DropRate::Cosine { r0, total_steps } => {
                let x = t.min(total_steps) as f64 / total_steps as f64;
                (r0 as f64 * (1.0 + (std::f64::consts::PI * x).cos()) / 2.0) as f32
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MaskKind {
    /// SSAM-F: top-`L` of the empirical Fisher over `samples` training samples.
    Fisher { samples: usize },
    /// SSAM-D: random initial mask, then drop by `|g|` and grow at random every `K` steps.
    Dynamic { drop: DropRate, seed: u64 },
    /// SSAM-L: a mask of whole segments ([`SegmentSelect`]); the perturbation is SSAM's.
    Segments { select: SegmentSelect },
}

/// How SSAM-L chooses its segments (ALGORITHMS.md, "SSAM-L").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "select", rename_all = "lowercase")]
pub enum SegmentSelect {
    /// The shortest suffix of the segments in forward order holding at least `L` parameters;
    /// fixed by the layout.
    Suffix,
    /// Segments in descending order of their mean Fisher over `samples` training samples, taken
    /// while the count stays `≤ L`; recomputed every `K` steps like SSAM-F.
    Fisher { samples: usize },
}

/// SAM-ON (Mueller et al., NeurIPS 2023): SAM over the norm-layer affine segments only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamOn {
    pub rho: f32,
    /// The ASAM element-wise form restricted to the norm segments (`T = |w| + η` on weights).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub asam: bool,
    /// ASAM's `η` of the `asam` form.
    pub eta: f32,
    /// The perturbation epsilon; `None` is [`EPS_SAM_ON`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
}

impl Default for SamOn {
    fn default() -> Self {
        SamOn {
            rho: 0.5,
            asam: false,
            eta: 0.01,
            eps_p: None,
        }
    }
}

/// RST's switching probability.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SwitchProb {
    Constant {
        p: f32,
    },
    /// `p_0 + (p_1 − p_0)·min(t, T)/T` over `T = steps` steps.
    Linear {
        p0: f32,
        p1: f32,
        steps: u64,
    },
}

impl SwitchProb {
    pub fn at(&self, t: u64) -> f32 {
        match *self {
            SwitchProb::Constant { p } => p,
            SwitchProb::Linear { p0, p1, steps } => {
                let x = t.min(steps) as f64 / steps as f64;
                (p0 as f64 + (p1 as f64 - p0 as f64) * x) as f32
            }
        }
    }
}

/// RST (Zhao et al., AAAI 2023): a SAM step with probability `p`, else a base step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rst {
    pub rho: f32,
    pub p: SwitchProb,
    /// The Philox key of the draws `(seed, step)`.
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
}

impl Rst {
    pub fn new(seed: u64) -> Self {
        Rst {
            rho: 0.05,
            p: SwitchProb::Constant { p: 0.5 },
            seed,
            eps_p: None,
        }
    }

    /// Whether step `t` is a SAM step: a uniform draw `u ∈ [0, 1)` from the Philox key
    /// `(seed, t)` against `p_t` (`p = 1` always hits, `p = 0` never).
    pub fn hits(&self, t: u64) -> bool {
        let u = crate::philox::index_key(self.seed, RST_STREAM, t) as f64 / 4_294_967_296.0;
        u < self.p.at(t) as f64
    }
}

/// The `update` word of RST's Philox counters, apart from SSAM-D's (small) update numbers.
const RST_STREAM: u32 = 0x5253_5400;
/// The `update` word of ESAM's segment draws (the step's low 32 bits go to the index word).
const ESAM_STREAM: u32 = 0x4553_414d;

/// ESAM (Du et al., ICLR 2022): the optimizer side is SWP (stochastic weight perturbation);
/// `gamma` is SDS's fraction of the batch that pass 2 keeps, read by the trainer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Esam {
    pub rho: f32,
    /// The probability that a segment is perturbed at a step, in `(0, 1]`.
    pub beta: f32,
    /// SDS: the fraction of the batch in pass 2, in `(0, 1]`.
    pub gamma: f32,
    /// The Philox key of the draws `(seed, step, segment)`.
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
}

impl Esam {
    pub fn new(seed: u64) -> Self {
        Esam {
            rho: 0.05,
            beta: 0.6,
            gamma: 0.5,
            seed,
            eps_p: None,
        }
    }

    /// Whether segment `segment` is perturbed at step `t`: every segment at `t = 0`, else a
    /// uniform draw from the Philox key `(seed, t, segment)` below `β`.
    pub fn selects(&self, t: u64, segment: usize) -> bool {
        if t == 0 {
            return true;
        }
        let ctr = [
            segment as u32,
            (segment as u64 >> 32) as u32,
            t as u32,
            (t >> 32) as u32 ^ ESAM_STREAM,
        ];
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        let u = crate::philox::philox4x32_10(ctr, key)[0] as f64 / 4_294_967_296.0;
        u < self.beta as f64
    }
}

/// EG-SAM / OG-SAM (reconstructed, ALGORITHMS.md): `w̃ = w − η_x·v + ρ·g/(‖g‖ + eps_p)` with
/// `v = g` (EG) or the previous step's pass-2 gradient (OG, `optimistic`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EgSam {
    pub rho: f32,
    /// The extrapolation step `η_x`; `None` is the current learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_x: Option<f32>,
    /// OG-SAM: extrapolate along the previous pass-2 gradient (kept as state).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optimistic: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
}

impl Default for EgSam {
    fn default() -> Self {
        EgSam {
            rho: 0.05,
            eta_x: None,
            optimistic: false,
            eps_p: None,
        }
    }
}

/// When SSAM-F computes its Fisher mask (ALGORITHMS.md, "SSAM-F").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MaskSchedule {
    /// The survey's: a mask before the first step and then every `K` steps.
    #[default]
    Steps,
    /// The official code's: the first mask is all zero (step 0 is a plain base step), each new
    /// mask is computed after the first batch of every `K`-th epoch (epochs `0, K, 2K, ...`)
    /// at the weights that step left, so `K` counts epochs. The optimizer counts batches
    /// (applied and skipped steps), so it needs the epoch's length: `steps_per_epoch`, `None`
    /// until a trainer sets it from its data (an optimizer refuses `None`).
    Official { steps_per_epoch: Option<u64> },
}

impl MaskSchedule {
    fn is_steps(&self) -> bool {
        *self == MaskSchedule::Steps
    }
}

/// The counters SSAM-F's schedule reads ([`Ssam::fisher_due`]); both optimizers report them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaskClock {
    /// Completed (applied) steps: the `t` of ALGORITHMS.md.
    pub steps: u64,
    /// Skipped steps (a trainer's batch index is `steps + skipped`).
    pub skipped: u64,
    /// Masks committed so far.
    pub mask_updates: u64,
}

/// How close `N·s` (in f64) must come to an integer to be taken as that integer before
/// `⌈⌉`: ALGORITHMS.md's "Counts are exact for the sparsity as the user wrote it". Used only
/// where [`dead_count`] cannot form the exact fraction (a decimal of more digits than u128
/// holds, never a sparsity in `[0, 1)` written with fewer than 30 decimals).
pub const COUNT_SNAP: f64 = 1e-9;

/// The decimal the user wrote for an f32 hyperparameter: the shortest one that reads back as
/// the same f32 (what `{}` prints, so `0.2f32` is `0.2`; every decimal of at most 6
/// significant digits reads back as itself), as `(m, d)` with the value `m / 10^d`. `None`
/// for a negative or non-finite value, or digits beyond u128.
pub fn written_fraction(x: f32) -> Option<(u128, u32)> {
    if !x.is_finite() || x < 0.0 {
        return None;
    }
    // Display never uses an exponent for floats: `int[.frac]`.
    let text = format!("{x}");
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let d = u32::try_from(frac.len()).ok()?;
    let m = format!("{int}{frac}").parse::<u128>().ok()?;
    Some((m, d))
}

/// `⌈N·s⌉` for the sparsity `s` as written ([`written_fraction`]), exactly: `⌈N·m / 10^d⌉` in
/// integers, at most `n`. `N = 250, s = 0.2` gives 50 (`N·s` with the f32 `s` is 50.0000007,
/// whose ceiling is 51). This is ALGORITHMS.md's f64 product snapped within [`COUNT_SNAP`]
/// wherever that product lands within the snap of the exact value; at `N ≳ 10⁷` f64's own
/// rounding of `N·s` can exceed 1e-9, and the integers stay exact.
pub fn dead_count(n: usize, s: f32) -> usize {
    let exact = written_fraction(s).and_then(|(m, d)| {
        let den = 10u128.checked_pow(d)?;
        Some((n as u128).checked_mul(m)?.div_ceil(den))
    });
    let dead = exact.unwrap_or_else(|| {
        let x = n as f64 * s as f64;
        let r = x.round();
        let x = if (x - r).abs() <= COUNT_SNAP { r } else { x };
        x.ceil().max(0.0) as u128
    });
    dead.min(n as u128) as usize
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ssam {
    pub rho: f32,
    /// Fraction of coordinates left unperturbed, in `[0, 1)`.
    pub sparsity: f32,
    /// Mask update interval `K`: steps, or epochs with [`MaskSchedule::Official`].
    pub interval: u64,
    pub norm: SsamNorm,
    pub mask: MaskKind,
    /// The perturbation epsilon `ρ / (‖d‖ + eps_p)` (pytorch_optimizer's `perturb_eps`); `None` is
    /// the rule's value in ALGORITHMS.md ([`Rule::perturb_eps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
    /// SSAM-F's mask schedule (a config written before it existed reads as the survey's).
    #[serde(default, skip_serializing_if = "MaskSchedule::is_steps")]
    pub schedule: MaskSchedule,
}

impl Ssam {
    pub fn fisher() -> Self {
        Ssam {
            rho: 0.05,
            sparsity: 0.5,
            interval: 5,
            norm: SsamNorm::Masked,
            mask: MaskKind::Fisher { samples: 128 },
            eps_p: None,
            schedule: MaskSchedule::Steps,
        }
    }

    /// SSAM-F with the official code's schedule ([`MaskSchedule::Official`]): `K` in epochs of
    /// `steps_per_epoch` batches (`None`: set by the trainer from its data).
    pub fn fisher_official(steps_per_epoch: Option<u64>) -> Self {
        Ssam {
            schedule: MaskSchedule::Official { steps_per_epoch },
            ..Ssam::fisher()
        }
    }

    pub fn dynamic(seed: u64) -> Self {
        Ssam {
            mask: MaskKind::Dynamic {
                drop: DropRate::Constant { rate: 0.2 },
                seed,
            },
            ..Ssam::fisher()
        }
    }

    /// SSAM-L with the default suffix selection.
    pub fn structured() -> Self {
        Ssam {
            mask: MaskKind::Segments {
                select: SegmentSelect::Suffix,
            },
            ..Ssam::fisher()
        }
    }

    /// The Fisher sample count, when the mask comes from the Fisher (SSAM-F, SSAM-L `fisher`).
    pub fn fisher_samples(&self) -> Option<usize> {
        match self.mask {
            MaskKind::Fisher { samples }
            | MaskKind::Segments {
                select: SegmentSelect::Fisher { samples },
            } => Some(samples),
            _ => None,
        }
    }

    /// Whether the mask exists from construction (SSAM-D's random mask, SSAM-L's suffix).
    pub fn mask_from_start(&self) -> bool {
        matches!(
            self.mask,
            MaskKind::Dynamic { .. }
                | MaskKind::Segments {
                    select: SegmentSelect::Suffix
                }
        )
    }

    /// `L = N − ⌈N·s⌉`: the number of perturbed coordinates, exact for the sparsity as
    /// written ([`dead_count`]). The official schedule's `⌊N·(1−s)⌋` is the same number
    /// (`⌊N − x⌋ = N − ⌈x⌉`), so both schedules count with this.
    pub fn live_count(&self, n: usize) -> usize {
        n - dead_count(n, self.sparsity)
    }

    /// Whether the step after `clock` needs a new Fisher (the caller asks only when none waits
    /// already): never for SSAM-D and SSAM-L `suffix`; with [`MaskSchedule::Steps`] at every
    /// step `t` with `t mod K = 0`; with [`MaskSchedule::Official`] while fewer masks were
    /// committed than first batches of epochs `0, K, 2K, ...` completed (applied or skipped),
    /// so the Fisher comes right after such a batch, at the weights it left, and again after
    /// a skipped step that dropped it.
    pub fn fisher_due(&self, clock: &MaskClock) -> bool {
        if self.fisher_samples().is_none() {
            return false;
        }
        match self.schedule {
            MaskSchedule::Steps => clock.steps % self.interval == 0,
            MaskSchedule::Official { steps_per_epoch } => {
                let per = steps_per_epoch.unwrap_or(1).max(1);
                let batches = clock.steps + clock.skipped;
                let due = if batches == 0 {
                    0
                } else {
                    (batches - 1) / per / self.interval + 1
                };
                clock.mask_updates < due
            }
        }
    }

    /// What an optimizer checks at construction besides [`Rule::validate`]: the official
    /// schedule counts epochs, so it needs their length (`steps_per_epoch`, which a trainer
    /// fills in from its data).
    pub fn check_epoch_length(&self) -> Result<()> {
        if self.schedule
            == (MaskSchedule::Official {
                steps_per_epoch: None,
            })
        {
            return Err(Error::hyper(
                "steps_per_epoch",
                "unset",
                "SSAM-F's official schedule counts K in epochs: give the epoch's length",
            ));
        }
        Ok(())
    }

    /// Whether the step perturbs nothing when no mask exists yet (the official schedule's
    /// all-zero first mask) instead of needing one.
    pub fn zero_mask_first(&self) -> bool {
        matches!(self.schedule, MaskSchedule::Official { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImbSam {
    pub rho: f32,
    /// Classes with fewer than `tau` training samples form the tail (`n_c < τ`, the official
    /// code's and the long-tail benchmarks' "few-shot" boundary).
    pub tau: usize,
    /// Weight of the tail loss (2 reproduces the official code).
    pub kappa: f32,
    /// The perturbation epsilon `ρ / (‖d‖ + eps_p)` (pytorch_optimizer's `perturb_eps`); `None` is
    /// the rule's value in ALGORITHMS.md ([`Rule::perturb_eps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
}

impl Default for ImbSam {
    fn default() -> Self {
        ImbSam {
            rho: 0.05,
            tau: 20,
            kappa: 1.0,
            eps_p: None,
        }
    }
}

impl ImbSam {
    /// The tail classes: `{c : n_c < τ}` (strict, ALGORITHMS.md "ImbSAM").
    pub fn tail_classes(&self, class_counts: &[usize]) -> Vec<bool> {
        class_counts.iter().map(|&n| n < self.tau).collect()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gsam {
    pub rho_max: f32,
    pub rho_min: f32,
    pub alpha: f32,
    /// The learning-rate range `ρ_t` follows; equal values give the constant `ρ_max`.
    pub lr_max: f32,
    pub lr_min: f32,
    /// The perturbation epsilon `ρ / (‖d‖ + eps_p)` (pytorch_optimizer's `perturb_eps`); `None` is
    /// the rule's value in ALGORITHMS.md ([`Rule::perturb_eps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
}

impl Default for Gsam {
    fn default() -> Self {
        Gsam {
            rho_max: 0.05,
            rho_min: 0.05,
            alpha: 0.4,
            lr_max: 0.1,
            lr_min: 0.1,
            eps_p: None,
        }
    }
}

impl Gsam {
    /// `ρ_t` at learning rate `lr`.
    pub fn rho_at(&self, lr: f32) -> f32 {
        if self.lr_max > self.lr_min {
            let f = (lr as f64 - self.lr_min as f64) / (self.lr_max as f64 - self.lr_min as f64);
            (self.rho_min as f64 + (self.rho_max as f64 - self.rho_min as f64) * f) as f32
        } else {
            self.rho_max
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LookSam {
    pub rho: f32,
    pub k: u64,
    pub alpha: f32,
    /// Per-tensor `g_v` and norms, as `pytorch_optimizer.LookSAM` (default: global vectors).
    pub per_tensor: bool,
    /// The perturbation epsilon `ρ / (‖d‖ + eps_p)` (pytorch_optimizer's `perturb_eps`); `None` is
    /// the rule's value in ALGORITHMS.md ([`Rule::perturb_eps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
}

impl Default for LookSam {
    fn default() -> Self {
        LookSam {
            rho: 0.1,
            k: 5,
            alpha: 0.7,
            per_tensor: false,
            eps_p: None,
        }
    }
}

/// Every rule of the family. `Base` is the plain base optimizer: one pass, no perturbation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "lowercase")]
pub enum Rule {
    Base,
    Sam(Sam),
    Asam(Asam),
    FriendlySam(FriendlySam),
    Ssam(Ssam),
    ImbSam(ImbSam),
    Gsam(Gsam),
    LookSam(LookSam),
    Esam(Esam),
    #[serde(rename = "sam-on")]
    SamOn(SamOn),
    Rst(Rst),
    #[serde(rename = "eg-sam")]
    EgSam(EgSam),
}

impl Rule {
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Base => "base",
            Rule::Sam(s) if s.adaptive => "sam-adaptive",
            Rule::Sam(_) => "sam",
            Rule::Asam(_) => "asam",
            Rule::FriendlySam(_) => "friendlysam",
            Rule::Ssam(Ssam {
                mask: MaskKind::Fisher { .. },
                ..
            }) => "ssam-f",
            Rule::Ssam(Ssam {
                mask: MaskKind::Segments { .. },
                ..
            }) => "ssam-l",
            Rule::Ssam(_) => "ssam-d",
            Rule::ImbSam(_) => "imbsam",
            Rule::Gsam(_) => "gsam",
            Rule::LookSam(_) => "looksam",
            Rule::Esam(_) => "esam",
            Rule::SamOn(_) => "sam-on",
            Rule::Rst(_) => "rst",
            Rule::EgSam(c) if c.optimistic => "og-sam",
            Rule::EgSam(_) => "eg-sam",
        }
    }

    /// Sets the perturbation radius `ρ` (a schedule such as `ρ_t = c/√t`), validated. GSAM ties
    /// ρ to the learning rate instead (`rho_max`/`rho_min`), and the plain base optimizer has
    /// none: both are errors, and the rule is left unchanged on any error.
    pub fn set_rho(&mut self, rho: f32) -> Result<()> {
        check_finite_nonneg("rho", rho)?;
        match self {
            Rule::Sam(c) => c.rho = rho,
            Rule::Asam(c) => c.rho = rho,
            Rule::FriendlySam(c) => c.rho = rho,
            Rule::Ssam(c) => c.rho = rho,
            Rule::ImbSam(c) => c.rho = rho,
            Rule::LookSam(c) => c.rho = rho,
            Rule::Esam(c) => c.rho = rho,
            Rule::SamOn(c) => c.rho = rho,
            Rule::Rst(c) => c.rho = rho,
            Rule::EgSam(c) => c.rho = rho,
            Rule::Gsam(_) | Rule::Base => {
                return Err(Error::Protocol(format!(
                    "{} has no settable ρ (GSAM derives ρ_t from the learning rate)",
                    self.name()
                )))
            }
        }
        Ok(())
    }

    /// The perturbation radius of the rule (GSAM: `rho_max`; the base optimizer: none).
    pub fn rho(&self) -> Option<f32> {
        match self {
            Rule::Base => None,
            Rule::Sam(c) => Some(c.rho),
            Rule::Asam(c) => Some(c.rho),
            Rule::FriendlySam(c) => Some(c.rho),
            Rule::Ssam(c) => Some(c.rho),
            Rule::ImbSam(c) => Some(c.rho),
            Rule::Gsam(c) => Some(c.rho_max),
            Rule::LookSam(c) => Some(c.rho),
            Rule::Esam(c) => Some(c.rho),
            Rule::SamOn(c) => Some(c.rho),
            Rule::Rst(c) => Some(c.rho),
            Rule::EgSam(c) => Some(c.rho),
        }
    }

    /// The epsilon of the rule's perturbation denominator `ρ / (‖d‖ + eps)`: the rule's
    /// `eps_p` when set, else its value in ALGORITHMS.md (the base optimizer has no
    /// perturbation and answers [`EPS_P`]). GSAM's projection `⟨g, g_p⟩ / (‖g_p‖² + eps)` uses
    /// the same value, as the official code's `perturb_eps`.
    pub fn perturb_eps(&self) -> f64 {
        self.eps_override()
            .unwrap_or_else(|| self.default_perturb_eps())
    }

    fn eps_override(&self) -> Option<f64> {
        match self {
            Rule::Base => None,
            Rule::Sam(c) => c.eps_p,
            Rule::Asam(c) => c.eps_p,
            Rule::FriendlySam(c) => c.eps_p,
            Rule::Ssam(c) => c.eps_p,
            Rule::ImbSam(c) => c.eps_p,
            Rule::Gsam(c) => c.eps_p,
            Rule::LookSam(c) => c.eps_p,
            Rule::Esam(c) => c.eps_p,
            Rule::SamOn(c) => c.eps_p,
            Rule::Rst(c) => c.eps_p,
            Rule::EgSam(c) => c.eps_p,
        }
    }

    /// The perturbation epsilon ALGORITHMS.md gives the rule.
    pub fn default_perturb_eps(&self) -> f64 {
        match self {
            Rule::Asam(_) => EPS_ASAM,
            Rule::ImbSam(_) => EPS_IMBSAM,
            Rule::Ssam(Ssam {
                norm: SsamNorm::Full,
                ..
            }) => EPS_SSAM_FULL,
            Rule::Esam(_) => EPS_ESAM,
            Rule::SamOn(_) => EPS_SAM_ON,
            _ => EPS_P,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if let Some(eps) = self.eps_override() {
            if !(eps.is_finite() && eps >= 0.0) {
                return Err(Error::hyper("eps_p", eps, "must be finite and >= 0"));
            }
        }
        match self {
            Rule::Base => {}
            Rule::Sam(c) => check_finite_nonneg("rho", c.rho)?,
            Rule::Asam(c) => {
                check_finite_nonneg("rho", c.rho)?;
                check_finite_nonneg("eta", c.eta)?;
            }
            Rule::FriendlySam(c) => {
                check_finite_nonneg("rho", c.rho)?;
                check_finite_nonneg("sigma", c.sigma)?;
                check_unit_interval("lambda", c.lambda, true)?;
            }
            Rule::Ssam(c) => {
                check_finite_nonneg("rho", c.rho)?;
                check_unit_interval("sparsity", c.sparsity, false)?;
                if c.interval == 0 {
                    return Err(Error::hyper("interval (K)", 0, "must be >= 1"));
                }
                if let MaskSchedule::Official { steps_per_epoch } = c.schedule {
                    if !matches!(c.mask, MaskKind::Fisher { .. }) {
                        return Err(Error::hyper(
                            "schedule",
                            "official",
                            "is SSAM-F's (a Fisher mask of coordinates)",
                        ));
                    }
                    if steps_per_epoch == Some(0) {
                        return Err(Error::hyper("steps_per_epoch", 0, "must be >= 1"));
                    }
                }
                match &c.mask {
                    MaskKind::Fisher { samples } => {
                        if *samples == 0 {
                            return Err(Error::hyper("fisher samples", 0, "must be >= 1"));
                        }
                    }
                    MaskKind::Dynamic { drop, .. } => match *drop {
                        DropRate::Constant { rate } => {
                            check_unit_interval("drop rate", rate, true)?
                        }
                        DropRate::Cosine { r0, total_steps } => {
                            check_unit_interval("drop rate r0", r0, true)?;
                            if total_steps == 0 {
                                return Err(Error::hyper("total_steps", 0, "must be >= 1"));
                            }
                        }
                    },
                    MaskKind::Segments { select } => {
                        if let SegmentSelect::Fisher { samples: 0 } = select {
                            return Err(Error::hyper("fisher samples", 0, "must be >= 1"));
                        }
                    }
                }
            }
            Rule::ImbSam(c) => {
                check_finite_nonneg("rho", c.rho)?;
                check_finite_nonneg("kappa", c.kappa)?;
            }
            Rule::Gsam(c) => {
                check_finite_nonneg("rho_max", c.rho_max)?;
                check_finite_nonneg("rho_min", c.rho_min)?;
                check_finite_nonneg("alpha", c.alpha)?;
                check_finite_nonneg("lr_max", c.lr_max)?;
                check_finite_nonneg("lr_min", c.lr_min)?;
                if c.rho_min > c.rho_max {
                    return Err(Error::hyper(
                        "rho_min",
                        c.rho_min,
                        "must not exceed rho_max",
                    ));
                }
            }
            Rule::LookSam(c) => {
                check_finite_nonneg("rho", c.rho)?;
                check_finite_nonneg("alpha", c.alpha)?;
                if c.k == 0 {
                    return Err(Error::hyper("k", 0, "must be >= 1"));
                }
            }
            Rule::Esam(c) => {
                check_finite_nonneg("rho", c.rho)?;
                check_open_unit("beta", c.beta)?;
                check_open_unit("gamma", c.gamma)?;
            }
            Rule::SamOn(c) => {
                check_finite_nonneg("rho", c.rho)?;
                check_finite_nonneg("eta", c.eta)?;
            }
            Rule::Rst(c) => {
                check_finite_nonneg("rho", c.rho)?;
                match c.p {
                    SwitchProb::Constant { p } => check_unit_interval("p", p, true)?,
                    SwitchProb::Linear { p0, p1, steps } => {
                        check_unit_interval("p0", p0, true)?;
                        check_unit_interval("p1", p1, true)?;
                        if steps == 0 {
                            return Err(Error::hyper("steps", 0, "must be >= 1"));
                        }
                    }
                }
            }
            Rule::EgSam(c) => {
                check_finite_nonneg("rho", c.rho)?;
                if let Some(eta) = c.eta_x {
                    check_finite_nonneg("eta_x", eta)?;
                }
            }
        }
        Ok(())
    }
}
