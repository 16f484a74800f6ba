//! The SAM family's rules and their hyperparameters (ALGORITHMS.md is the contract).
use serde::{Deserialize, Serialize};

use crate::error::{check_finite_nonneg, check_unit_interval, Error, Result};

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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ssam {
    pub rho: f32,
    /// Fraction of coordinates left unperturbed, in `[0, 1)`.
    pub sparsity: f32,
    /// Mask update interval `K` in steps.
    pub interval: u64,
    pub norm: SsamNorm,
    pub mask: MaskKind,
    /// The perturbation epsilon `ρ / (‖d‖ + eps_p)` (pytorch_optimizer's `perturb_eps`); `None` is
    /// the rule's value in ALGORITHMS.md ([`Rule::perturb_eps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps_p: Option<f64>,
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

    /// `L = N − ⌈N·s⌉`: the number of perturbed coordinates.
    pub fn live_count(&self, n: usize) -> usize {
        let dead = (n as f64 * self.sparsity as f64).ceil() as usize;
        n - dead.min(n)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImbSam {
    pub rho: f32,
    /// Classes with at most `tau` training samples form the tail.
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
    /// The tail classes: `{c : n_c ≤ τ}`.
    pub fn tail_classes(&self, class_counts: &[usize]) -> Vec<bool> {
        class_counts.iter().map(|&n| n <= self.tau).collect()
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
            Rule::Ssam(_) => "ssam-d",
            Rule::ImbSam(_) => "imbsam",
            Rule::Gsam(_) => "gsam",
            Rule::LookSam(_) => "looksam",
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
        }
        Ok(())
    }
}
