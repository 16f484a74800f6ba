//! The step plan: what a rule's step does, as plain data both backends interpret.
//!
//! A [`Rule`] and a [`StepView`] (the step count `t`, the learning rate, whether the batch has
//! tail samples) give a [`FirstPlan`]: either a one-pass update ([`ApplyPlan`]) or a
//! perturbation ([`PerturbPlan`]) whose [`SecondPlan`] says what pass 2 combines. The CPU
//! [`crate::Optimizer`] and the CUDA `GpuOptimizer` compute the plan here, once per step, and
//! run its passes; neither matches on the rule inside its step. The symbols are ALGORITHMS.md's:
//!
//! - pass 1 (perturb): `e = ρ · T ⊙ (T ⊙ d) / (‖T ⊙ n‖ + eps_p)` with the direction `d`
//!   ([`Direction`]), the elementwise factor `T` ([`Scaling`], adaptive SAM's `e = ρ·w²⊙d/…`
//!   included) and the normed vector `n = d` or `n = g` ([`NormOf`]); `w_old ← w; w ← w + e`.
//! - pass 2: the base optimizer steps from `w_old` with the combination of [`SecondPlan`].
//! - one-pass steps: the base optimizer steps from `w` with `g` (or `g + b·g_v`, LookSAM).
//!
//! Adding a rule is adding its arm to [`Rule::first_plan`] when it fits these variants; a new
//! kind of direction, norm or pass-2 combination is a new variant here and its interpretation in
//! each backend (a backend answers an error for a combination it has no kernel for), and its
//! buffers in [`Rule::plan_buffers`].
use crate::bitset::Bitset;
use crate::layout::Layout;
use crate::rules::{MaskKind, Rule, SegmentSelect, SsamNorm, EPS_LOOKSAM};

/// What the rule's plan depends on besides its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepView {
    /// Completed (not skipped) steps: the `t` of ALGORITHMS.md (LookSAM's and Sparse SAM's
    /// schedules; see [`Rule::plan_reads_step`]).
    pub t: u64,
    /// The learning rate of this step (GSAM's `ρ_t`).
    pub lr: f32,
    /// ImbSAM's split form: whether the batch has tail samples (`None`: the plain form).
    pub tail: Option<bool>,
    /// Whether Sparse SAM has a mask for this step (committed, or from `set_fisher`): SSAM-F's
    /// official schedule starts from an all-zero mask, a plain base step
    /// ([`crate::rules::Ssam::zero_mask_first`]).
    pub has_mask: bool,
}

/// Which gradient an input of a pass is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grad {
    /// The mini-batch gradient `g` of `first_step`.
    Batch,
    /// ImbSAM's head gradient `g_h` of `first_step_split`.
    Head,
    /// ImbSAM's tail gradient `g_t` of `first_step_split`.
    Tail,
}

/// The elementwise factor `T` of scale-aware rules.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scaling {
    /// `T = 1`.
    One,
    /// `T = |w|` everywhere (SAM/FriendlySAM `adaptive`; the perturbation is `w² ⊙ d`).
    AbsW,
    /// ASAM element-wise: `T = |w| + η` on weights, 1 on biases.
    AbsWPlus { eta: f32 },
    /// ASAM filter-wise: `T = ‖w_f‖ + η` per output filter of weights, 1 on biases.
    Filter { eta: f32 },
}

impl Scaling {
    /// Whether `T` reads the weights.
    pub fn reads_w(self) -> bool {
        !matches!(self, Scaling::One)
    }
}

/// Where Sparse SAM's mask of this step comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MaskStep {
    /// The committed mask.
    Current,
    /// SSAM-F: the mask computed by `set_fisher` when one waits, else the committed one; it is
    /// committed when the step completes.
    Fisher,
    /// SSAM-D at `t > 0`, `t mod K = 0`: drop the `⌊L·rate⌋` live coordinates of smallest `|g|`,
    /// grow as many dead ones by Philox keys `(seed, update)`; committed when the step completes.
    DropGrow { rate: f32, seed: u64, update: u32 },
    /// A mask of whole segments that the rule draws for this step alone and never commits
    /// ([`Rule::step_segments`]: ESAM's SWP, SAM-ON's norm layers).
    Segments,
}

impl MaskStep {
    /// Whether the step may commit a new mask.
    pub fn renews(self) -> bool {
        matches!(self, MaskStep::Fisher | MaskStep::DropGrow { .. })
    }
}

/// Which vector EG-SAM/OG-SAM extrapolate along.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtraAlong {
    /// EG-SAM: the clean gradient `g`.
    Grad,
    /// OG-SAM: the previous step's pass-2 gradient `g2_prev` (state; 0 before the first step).
    PrevSecond,
}

/// EG-SAM/OG-SAM's extrapolation `w̃ = (w + e) − η_x·v`, applied after the perturbation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Extrapolate {
    pub eta: f32,
    pub along: ExtraAlong,
}

/// The perturbation direction `d` (before `T`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Direction {
    /// `d = g`.
    Grad,
    /// Gradient centralization (pytorch_optimizer's `use_gc`): `g` with, in every segment of two
    /// or more dimensions, the mean over all dimensions but the first subtracted per output
    /// filter ([`crate::passes::centralized`]).
    Centralized,
    /// Sparse SAM: `d = M ⊙ g`.
    Masked(MaskStep),
    /// FriendlySAM: `d = g − σ·m` (`d = g` at its first step, when `m` does not exist yet).
    Friendly { sigma: f32 },
}

/// The vector whose norm scales the perturbation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormOf {
    /// `‖T ⊙ d‖` (`‖e‖ = ρ` up to eps).
    Direction,
    /// `‖T ⊙ g‖`: Sparse SAM's `norm = full`, SAM with gradient centralization.
    Grad,
}

/// FriendlySAM's EMA `m ← λ·m + (1 − λ)·g` (`m ← g` at the first step), computed in pass 1 and
/// committed when the step completes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmaPlan {
    pub lambda: f32,
}

/// What the base optimizer steps with in pass 2 (`g2`: the gradient at `w + e`; ImbSAM: of the
/// tail loss, without `κ`). Always from `w_old`, restored exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SecondPlan {
    /// `g2`.
    Plain,
    /// GSAM: `g2 − α·(g − proj·g2)`, `proj = ⟨g, g2⟩ / (‖g2‖² + eps_p)`, `g` kept from pass 1.
    Gsam { alpha: f32, eps_p: f64 },
    /// ImbSAM: `κ·g2 + g_h`, `g_h` kept from pass 1.
    HeadTail { kappa: f32 },
    /// LookSAM's SAM step: `g2`, and `g_v ← g2 − (⟨g2, g⟩/‖g‖²)·g` with its `‖g_v‖²` (global, or
    /// per segment), `g` kept from pass 1.
    LookRefresh { per_segment: bool },
}

impl SecondPlan {
    /// Whether pass 2 reads a gradient kept from pass 1 (the `aux` buffer).
    pub fn reads_kept(self) -> bool {
        !matches!(self, SecondPlan::Plain)
    }

    /// Whether pass 2 reduces `⟨g, g2⟩` (GSAM's projection, LookSAM's cosine).
    pub fn dots_kept(self) -> bool {
        matches!(
            self,
            SecondPlan::Gsam { .. } | SecondPlan::LookRefresh { .. }
        )
    }
}

/// Pass 1 of a two-pass step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerturbPlan {
    /// The gradient `g` that `d` is formed from (and that the non-finite check reads).
    pub along: Grad,
    pub direction: Direction,
    pub scaling: Scaling,
    pub norm: NormOf,
    /// `ρ` of this step (GSAM: `ρ_t` at the learning rate).
    pub rho: f32,
    /// The epsilon of `ρ / (‖·‖ + eps_p)` ([`Rule::perturb_eps`]).
    pub eps_p: f64,
    /// Also keep the squared norms per segment (LookSAM per tensor).
    pub per_segment_norms: bool,
    /// A gradient copied during the perturbation for pass 2 (GSAM/LookSAM: `g`; ImbSAM: `g_h`,
    /// which the non-finite check then reads too).
    pub keep: Option<Grad>,
    pub ema: Option<EmaPlan>,
    /// EG-SAM/OG-SAM: also step back along `g` or `g2_prev` (`None` when `η_x = 0`, so that
    /// EG-SAM with `η_x = 0` is SAM's plan exactly).
    pub extrapolate: Option<Extrapolate>,
    /// OG-SAM: keep pass 2's gradient as `g2_prev` when the step completes.
    pub keep_second: bool,
    pub second: SecondPlan,
}

impl PerturbPlan {
    /// The gradient that the non-finite check reads besides [`PerturbPlan::along`].
    pub fn also_check(&self) -> Option<Grad> {
        self.keep.filter(|&k| k != self.along)
    }

    /// The sparse mask this step reads, if any.
    pub fn mask(&self) -> Option<MaskStep> {
        match self.direction {
            Direction::Masked(m) => Some(m),
            _ => None,
        }
    }
}

/// LookSAM between SAM steps: `g + b·g_v`, `b = α·‖g‖ / (‖g_v‖ + eps)`, global (eps = 0) or per
/// segment (eps = [`EPS_LOOKSAM`]); `b = 0` when the denominator is 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GvReuse {
    pub alpha: f32,
    pub per_segment: bool,
    pub eps: f64,
}

/// A one-pass step: `w ← update(w, x)` with `x = g` or `x = g + b·g_v`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ApplyPlan {
    pub input: Grad,
    pub gv: Option<GvReuse>,
}

/// Pass 1 of a step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FirstPlan {
    /// One pass, no perturbation (the plain base optimizer, LookSAM between SAM steps, ImbSAM on
    /// a batch without tail samples).
    Apply(ApplyPlan),
    /// Perturb, then pass 2.
    Perturb(PerturbPlan),
}

/// The state a rule's plans use besides the weights' copy `w_old` and the base optimizer's
/// buffers: each backend allocates these once, at construction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanBuffers {
    /// A copy of a gradient from pass 1 to pass 2 ([`PerturbPlan::keep`]).
    pub kept_grad: bool,
    /// FriendlySAM's `m` ([`EmaPlan`]).
    pub ema: bool,
    /// Sparse SAM's mask ([`Direction::Masked`]).
    pub mask: bool,
    /// LookSAM's `g_v` and its squared norms ([`GvReuse`], [`SecondPlan::LookRefresh`]).
    pub gv: bool,
    /// ASAM filter-wise: the per-filter scales `T_f` ([`Scaling::Filter`]).
    pub filter_scales: bool,
    /// Gradient centralization: the per-filter means of `g` ([`Direction::Centralized`]).
    pub filter_means: bool,
    /// OG-SAM's `g2_prev` ([`PerturbPlan::keep_second`]), state saved with the optimizer.
    pub prev_second: bool,
}

impl Rule {
    /// The buffers every plan of the rule may use.
    pub fn plan_buffers(&self) -> PlanBuffers {
        let mut b = PlanBuffers::default();
        match self {
            Rule::Base => {}
            Rule::Sam(c) => b.filter_means = c.grad_centralization,
            Rule::Asam(c) => b.filter_scales = c.filterwise,
            Rule::FriendlySam(_) => b.ema = true,
            Rule::Ssam(_) => b.mask = true,
            Rule::ImbSam(_) | Rule::Gsam(_) => b.kept_grad = true,
            Rule::LookSam(_) => {
                b.kept_grad = true;
                b.gv = true;
            }
            Rule::Esam(_) | Rule::SamOn(_) => b.mask = true,
            Rule::Rst(_) => {}
            Rule::EgSam(c) => b.prev_second = c.optimistic,
        }
        b
    }

    /// The segments perturbed at step `t` when the plan's mask is [`MaskStep::Segments`]: ESAM's
    /// draw, SAM-ON's norm-layer segments; `None` for the other rules.
    pub fn step_segments(&self, layout: &Layout, t: u64) -> Option<Vec<bool>> {
        match self {
            Rule::Esam(c) => Some(
                (0..layout.segments().len())
                    .map(|i| c.selects(t, i))
                    .collect(),
            ),
            Rule::SamOn(_) => Some(layout.segments().iter().map(|s| s.norm).collect()),
            _ => None,
        }
    }

    /// Whether [`Rule::first_plan`] reads [`StepView::t`] (a backend that must wait to learn the
    /// step count asks first).
    pub fn plan_reads_step(&self) -> bool {
        matches!(
            self,
            Rule::LookSam(_) | Rule::Ssam(_) | Rule::Esam(_) | Rule::Rst(_)
        )
    }

    /// The plan of the next step. `view.tail` must be `Some` exactly for ImbSAM (its split form).
    pub fn first_plan(&self, view: &StepView) -> FirstPlan {
        let eps_p = self.perturb_eps();
        let perturb = |direction, scaling, rho| PerturbPlan {
            along: Grad::Batch,
            direction,
            scaling,
            norm: NormOf::Direction,
            rho,
            eps_p,
            per_segment_norms: false,
            keep: None,
            ema: None,
            extrapolate: None,
            keep_second: false,
            second: SecondPlan::Plain,
        };
        let adaptive = |a: bool| if a { Scaling::AbsW } else { Scaling::One };
        let apply = |input| FirstPlan::Apply(ApplyPlan { input, gv: None });
        let p = match self {
            Rule::Base => return apply(Grad::Batch),
            Rule::Sam(c) if c.grad_centralization => PerturbPlan {
                norm: NormOf::Grad,
                ..perturb(Direction::Centralized, adaptive(c.adaptive), c.rho)
            },
            Rule::Sam(c) => perturb(Direction::Grad, adaptive(c.adaptive), c.rho),
            Rule::Asam(c) => {
                let s = if c.filterwise {
                    Scaling::Filter { eta: c.eta }
                } else {
                    Scaling::AbsWPlus { eta: c.eta }
                };
                perturb(Direction::Grad, s, c.rho)
            }
            Rule::FriendlySam(c) => PerturbPlan {
                ema: Some(EmaPlan { lambda: c.lambda }),
                ..perturb(
                    Direction::Friendly { sigma: c.sigma },
                    adaptive(c.adaptive),
                    c.rho,
                )
            },
            // The all-zero mask perturbs nothing: `e = 0`, `g2 = g`, the base optimizer's step,
            // taken in one pass.
            Rule::Ssam(c) if c.zero_mask_first() && !view.has_mask => return apply(Grad::Batch),
            Rule::Ssam(c) => {
                let t = view.t;
                let mask = match c.mask {
                    MaskKind::Fisher { .. } => MaskStep::Fisher,
                    MaskKind::Dynamic { ref drop, seed } if t > 0 && t % c.interval == 0 => {
                        MaskStep::DropGrow {
                            rate: drop.at(t),
                            seed,
                            update: (t / c.interval) as u32,
                        }
                    }
                    MaskKind::Dynamic { .. } => MaskStep::Current,
                    MaskKind::Segments {
                        select: SegmentSelect::Fisher { .. },
                    } => MaskStep::Fisher,
                    MaskKind::Segments {
                        select: SegmentSelect::Suffix,
                    } => MaskStep::Current,
                };
                let norm = match c.norm {
                    SsamNorm::Masked => NormOf::Direction,
                    SsamNorm::Full => NormOf::Grad,
                };
                PerturbPlan {
                    norm,
                    ..perturb(Direction::Masked(mask), Scaling::One, c.rho)
                }
            }
            Rule::ImbSam(c) => match view.tail {
                Some(true) => PerturbPlan {
                    along: Grad::Tail,
                    keep: Some(Grad::Head),
                    second: SecondPlan::HeadTail { kappa: c.kappa },
                    ..perturb(Direction::Grad, Scaling::One, c.rho)
                },
                _ => return apply(Grad::Head),
            },
            Rule::Gsam(c) => PerturbPlan {
                keep: Some(Grad::Batch),
                second: SecondPlan::Gsam {
                    alpha: c.alpha,
                    eps_p,
                },
                ..perturb(Direction::Grad, Scaling::One, c.rho_at(view.lr))
            },
            Rule::LookSam(c) if view.t % c.k == 0 => PerturbPlan {
                keep: Some(Grad::Batch),
                per_segment_norms: c.per_tensor,
                second: SecondPlan::LookRefresh {
                    per_segment: c.per_tensor,
                },
                ..perturb(Direction::Grad, Scaling::One, c.rho)
            },
            Rule::LookSam(c) => {
                // pytorch_optimizer.LookSAM adds an eps to the per-tensor ‖g_v‖ only.
                let eps = if c.per_tensor { EPS_LOOKSAM } else { 0.0 };
                return FirstPlan::Apply(ApplyPlan {
                    input: Grad::Batch,
                    gv: Some(GvReuse {
                        alpha: c.alpha,
                        per_segment: c.per_tensor,
                        eps,
                    }),
                });
            }
            // Every segment is selected at the first step and whenever β = 1: SAM's direction
            // then, so that ESAM with β = 1 is SAM (eps 1e-7) bit for bit.
            Rule::Esam(c) => {
                let rho = (c.rho as f64 / c.beta as f64) as f32;
                if view.t == 0 || c.beta >= 1.0 {
                    perturb(Direction::Grad, Scaling::One, rho)
                } else {
                    perturb(Direction::Masked(MaskStep::Segments), Scaling::One, rho)
                }
            }
            Rule::SamOn(c) => {
                let s = if c.asam {
                    Scaling::AbsWPlus { eta: c.eta }
                } else {
                    Scaling::One
                };
                perturb(Direction::Masked(MaskStep::Segments), s, c.rho)
            }
            Rule::Rst(c) if c.hits(view.t) => perturb(Direction::Grad, Scaling::One, c.rho),
            Rule::Rst(_) => return apply(Grad::Batch),
            Rule::EgSam(c) => {
                let eta = c.eta_x.unwrap_or(view.lr);
                let along = if c.optimistic {
                    ExtraAlong::PrevSecond
                } else {
                    ExtraAlong::Grad
                };
                PerturbPlan {
                    extrapolate: (eta != 0.0).then_some(Extrapolate { eta, along }),
                    keep_second: c.optimistic,
                    ..perturb(Direction::Grad, Scaling::One, c.rho)
                }
            }
        };
        FirstPlan::Perturb(p)
    }
}

/// A mask of whole segments: the bits of every segment `i` with `pick[i]`.
pub fn segment_mask(layout: &Layout, pick: &[bool]) -> Bitset {
    let n = layout.len();
    let mut words = vec![0u64; n.div_ceil(64)];
    for (seg, _) in layout.segments().iter().zip(pick).filter(|(_, &p)| p) {
        let (a, b) = (seg.offset, seg.offset + seg.len);
        let mut i = a;
        while i < b {
            // Whole words at once where the range covers them.
            let (w, bit) = (i / 64, i % 64);
            let take = (64 - bit).min(b - i);
            let bits = if take == 64 {
                !0u64
            } else {
                ((1u64 << take) - 1) << bit
            };
            words[w] |= bits;
            i += take;
        }
    }
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    Bitset::from_bytes(n, &bytes).expect("the words of n bits")
}

/// SSAM-L `suffix`: the shortest suffix of the segments (forward order) holding at least `live`
/// parameters (all segments when the layout holds fewer).
pub fn suffix_segments(layout: &Layout, live: usize) -> Vec<bool> {
    let segs = layout.segments();
    let mut pick = vec![false; segs.len()];
    let mut count = 0usize;
    for (i, s) in segs.iter().enumerate().rev() {
        if count >= live {
            break;
        }
        pick[i] = true;
        count += s.len;
    }
    pick
}

/// SSAM-L `fisher`: the segments in descending order of their mean Fisher `Σ_seg F / n_seg`
/// (ties to the lower segment index, NaN lowest), taken while the parameter count stays `≤ live`
/// (the first segment that would pass it ends the selection). `fisher` is per segment.
pub fn fisher_segments(layout: &Layout, fisher: &[&[f32]], live: usize) -> Vec<bool> {
    let sums: Vec<f64> = fisher
        .iter()
        .map(|f| f.iter().map(|&x| x as f64).sum::<f64>())
        .collect();
    fisher_segments_from_sums(layout, &sums, live)
}

/// [`fisher_segments`] from the per-segment sums `Σ_seg F` (f64, one per segment): the GPU
/// optimizer reduces them on the device and chooses here, with the CPU's rule.
pub fn fisher_segments_from_sums(layout: &Layout, sums: &[f64], live: usize) -> Vec<bool> {
    let means: Vec<f64> = sums
        .iter()
        .zip(layout.segments())
        .map(|(&s, seg)| {
            let m = s / seg.len.max(1) as f64;
            if m.is_nan() {
                f64::NEG_INFINITY
            } else {
                m
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..means.len()).collect();
    order.sort_by(|&a, &b| means[b].total_cmp(&means[a]).then(a.cmp(&b)));
    let segs = layout.segments();
    let mut pick = vec![false; segs.len()];
    let mut count = 0usize;
    for i in order {
        if count + segs[i].len > live {
            break;
        }
        pick[i] = true;
        count += segs[i].len;
    }
    pick
}

/// The first segment (forward order) a mask perturbs: SSAM-L's trainer finds the first
/// perturbed unit from it.
pub fn first_masked_segment(layout: &Layout, mask: &Bitset) -> Option<usize> {
    let first = mask.ones_iter().next()?;
    layout
        .segments()
        .iter()
        .position(|s| s.range().contains(&first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Gsam, ImbSam, LookSam, Sam, Ssam};

    fn view(t: u64) -> StepView {
        StepView {
            t,
            lr: 0.1,
            tail: None,
            has_mask: true,
        }
    }

    #[test]
    fn looksam_perturbs_every_k_steps_and_reuses_gv_between() {
        let r = Rule::LookSam(LookSam {
            k: 3,
            per_tensor: true,
            ..LookSam::default()
        });
        let FirstPlan::Perturb(p) = r.first_plan(&view(3)) else {
            panic!("t = 3 is a SAM step")
        };
        assert_eq!(p.keep, Some(Grad::Batch));
        assert!(p.per_segment_norms);
        assert_eq!(p.second, SecondPlan::LookRefresh { per_segment: true });
        let FirstPlan::Apply(a) = r.first_plan(&view(4)) else {
            panic!("t = 4 reuses g_v")
        };
        assert_eq!(a.gv.map(|g| g.eps), Some(EPS_LOOKSAM));
    }

    #[test]
    fn imbsam_without_tail_is_one_pass_with_the_head() {
        let r = Rule::ImbSam(ImbSam::default());
        let v = |tail| StepView {
            tail: Some(tail),
            ..view(0)
        };
        assert_eq!(
            r.first_plan(&v(false)),
            FirstPlan::Apply(ApplyPlan {
                input: Grad::Head,
                gv: None
            })
        );
        let FirstPlan::Perturb(p) = r.first_plan(&v(true)) else {
            panic!("a tail perturbs")
        };
        assert_eq!((p.along, p.also_check()), (Grad::Tail, Some(Grad::Head)));
    }

    #[test]
    fn gsam_rho_follows_the_learning_rate_and_ssam_d_renews_every_k() {
        let g = Rule::Gsam(Gsam {
            rho_max: 0.1,
            rho_min: 0.0,
            lr_max: 0.2,
            lr_min: 0.0,
            ..Gsam::default()
        });
        let FirstPlan::Perturb(p) = g.first_plan(&view(0)) else {
            panic!("GSAM perturbs")
        };
        assert_eq!(p.rho, g_rho(&g, 0.1));
        let s = Rule::Ssam(Ssam {
            interval: 2,
            ..Ssam::dynamic(1)
        });
        let masks: Vec<bool> = (0..5)
            .map(|t| match s.first_plan(&view(t)) {
                FirstPlan::Perturb(p) => p.mask().is_some_and(MaskStep::renews),
                FirstPlan::Apply(_) => panic!("SSAM perturbs"),
            })
            .collect();
        assert_eq!(masks, [false, false, true, false, true]);
    }

    #[test]
    fn ssam_f_official_steps_without_a_mask_then_reads_the_fisher() {
        let r = Rule::Ssam(Ssam::fisher_official(Some(4)));
        let no_mask = StepView {
            has_mask: false,
            ..view(0)
        };
        assert_eq!(
            r.first_plan(&no_mask),
            FirstPlan::Apply(ApplyPlan {
                input: Grad::Batch,
                gv: None
            })
        );
        let FirstPlan::Perturb(p) = r.first_plan(&view(1)) else {
            panic!("a mask perturbs")
        };
        assert_eq!(p.mask(), Some(MaskStep::Fisher));
        // The survey's schedule has no zero mask: the plan asks for one (set_fisher first).
        let FirstPlan::Perturb(s) = Rule::Ssam(Ssam::fisher()).first_plan(&no_mask) else {
            panic!("the survey's SSAM-F perturbs")
        };
        assert_eq!(s.mask(), Some(MaskStep::Fisher));
    }

    fn g_rho(r: &Rule, lr: f32) -> f32 {
        match r {
            Rule::Gsam(c) => c.rho_at(lr),
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_cost_reducers_plans() {
        use crate::rules::{EgSam, Esam, Rst, SamOn, SwitchProb, EPS_ESAM, EPS_SAM_ON};
        // ESAM: SAM's direction at the first step (every segment drawn), a per-step segment mask
        // after it, ρ/β and eps 1e-7 throughout.
        let e = Rule::Esam(Esam {
            beta: 0.5,
            ..Esam::new(1)
        });
        let (FirstPlan::Perturb(p0), FirstPlan::Perturb(p1)) =
            (e.first_plan(&view(0)), e.first_plan(&view(1)))
        else {
            panic!("ESAM perturbs")
        };
        assert_eq!(p0.direction, Direction::Grad);
        assert_eq!(p1.direction, Direction::Masked(MaskStep::Segments));
        assert!(!MaskStep::Segments.renews());
        assert_eq!((p1.rho, p1.eps_p), (0.1, EPS_ESAM));
        let FirstPlan::Perturb(on) = Rule::SamOn(SamOn::default()).first_plan(&view(3)) else {
            panic!("SAM-ON perturbs")
        };
        assert_eq!(
            (on.mask(), on.eps_p),
            (Some(MaskStep::Segments), EPS_SAM_ON)
        );
        // RST: a SAM step or a base step, by the draw.
        let r = Rst {
            p: SwitchProb::Constant { p: 0.5 },
            ..Rst::new(2)
        };
        for t in 0..16 {
            let plan = Rule::Rst(r.clone()).first_plan(&view(t));
            assert_eq!(matches!(plan, FirstPlan::Perturb(_)), r.hits(t), "step {t}");
        }
        // EG-SAM: η_x = the learning rate unless set; η_x = 0 is SAM's plan.
        let eg = |eta_x, optimistic| match Rule::EgSam(EgSam {
            eta_x,
            optimistic,
            ..EgSam::default()
        })
        .first_plan(&view(0))
        {
            FirstPlan::Perturb(p) => p,
            FirstPlan::Apply(_) => panic!("EG-SAM perturbs"),
        };
        let sam = match Rule::Sam(crate::rules::Sam::default()).first_plan(&view(0)) {
            FirstPlan::Perturb(p) => p,
            FirstPlan::Apply(_) => unreachable!(),
        };
        assert_eq!(eg(Some(0.0), false), sam);
        assert_eq!(
            eg(None, false).extrapolate,
            Some(Extrapolate {
                eta: 0.1,
                along: ExtraAlong::Grad
            })
        );
        let og = eg(Some(0.2), true);
        assert!(og.keep_second);
        assert_eq!(
            og.extrapolate.map(|x| x.along),
            Some(ExtraAlong::PrevSecond)
        );
    }

    #[test]
    fn centralized_sam_norms_the_raw_gradient() {
        let r = Rule::Sam(Sam {
            grad_centralization: true,
            adaptive: true,
            ..Sam::default()
        });
        let FirstPlan::Perturb(p) = r.first_plan(&view(0)) else {
            panic!("SAM perturbs")
        };
        assert_eq!(
            (p.direction, p.norm, p.scaling),
            (Direction::Centralized, NormOf::Grad, Scaling::AbsW)
        );
    }
}
