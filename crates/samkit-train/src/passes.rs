//! What a step costs in network passes, and the trainer's side of the cheaper second passes
//! (ALGORITHMS.md, "Cheaper second passes"): SSAM-L's pass 2 from the first perturbed unit and
//! ESAM's SDS (the samples of pass 2).
//!
//! Every step counts its forwards (with and without gradient), backwards and samples in units
//! of a whole-batch pass ([`Passes`]): SGD is `F + B`, SAM `2F + 2B`. A pass on a subset of
//! the batch counts its share of the samples; a pass over part of the network (SSAM-L) counts
//! its share of the network's multiply-adds ([`UnitCost`]), since the units of a ResNet differ
//! in cost by their spatial size, not by their parameter count.
use std::borrow::{Borrow, BorrowMut};

use serde::{Deserialize, Serialize};

use samkit_core::plan::suffix_segments;
use samkit_core::rules::SegmentSelect;
use samkit_core::{Eval, Layout, MaskKind, Rule, Ssam};
use samkit_data::Batch;
use samkit_nn::model::{select_samples, BackwardExtent, Unit};
use samkit_nn::{mean_weights, BnMode, Model, ResNet18, Tensor};

use crate::config::{Pass2Mode, RunConfig};
use crate::engine::Engine;
use crate::error::Result;

/// The network passes of a step (or their mean over steps), each in units of a whole-batch
/// pass of the whole network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Passes {
    /// Forwards that keep activations for a backward.
    pub forward: f64,
    /// Forwards without gradient (ESAM's SDS).
    pub forward_nograd: f64,
    pub backward: f64,
    /// Samples through all forwards of the step (a sample seen twice counts twice).
    pub samples: u64,
}

impl Passes {
    pub fn add(&mut self, o: &Passes) {
        self.forward += o.forward;
        self.forward_nograd += o.forward_nograd;
        self.backward += o.backward;
        self.samples += o.samples;
    }

    /// `self` divided by `steps` (the mean per step; samples rounded to nearest).
    pub fn mean(&self, steps: u64) -> Passes {
        let d = steps.max(1) as f64;
        Passes {
            forward: self.forward / d,
            forward_nograd: self.forward_nograd / d,
            backward: self.backward / d,
            samples: (self.samples as f64 / d).round() as u64,
        }
    }

    /// A forward and backward over `part` of the network on `n` of `batch` samples.
    pub(crate) fn grad_pass(&mut self, n: usize, batch: usize, forward: f64, backward: f64) {
        let share = n as f64 / batch.max(1) as f64;
        self.forward += forward * share;
        self.backward += backward * share;
        self.samples += n as u64;
    }

    /// A forward without gradient over the whole network on `n` of `batch` samples.
    pub(crate) fn nograd_pass(&mut self, n: usize, batch: usize) {
        self.forward_nograd += n as f64 / batch.max(1) as f64;
        self.samples += n as u64;
    }
}

/// The multiply-adds of each unit of a CIFAR ResNet-18 (convolutions and the linear head; batch
/// norm and ReLU are a few percent and left out), from the parameter shapes and the spatial size
/// each stage runs at: the stem and `layer1` at the input's, each later stage at half the
/// previous one's.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitCost {
    macs: Vec<f64>,
}

impl UnitCost {
    /// The costs of `units` of `layout` for `hw × hw` input images.
    pub fn resnet(layout: &Layout, units: &[Unit], hw: usize) -> Self {
        let segs = layout.segments();
        let macs = units
            .iter()
            .map(|u| {
                let side = stage_side(&u.name, hw) as f64;
                segs[u.segments.clone()]
                    .iter()
                    .map(|s| match s.shape.len() {
                        // A convolution [cout, cin, k, k]: every weight once per output pixel.
                        4 => s.len as f64 * side * side,
                        // The linear head [out, in].
                        2 => s.len as f64,
                        _ => 0.0,
                    })
                    .sum()
            })
            .collect();
        UnitCost { macs }
    }

    /// The share of the network's multiply-adds in units `start..`.
    pub fn from_unit(&self, start: usize) -> f64 {
        let total: f64 = self.macs.iter().sum();
        if total <= 0.0 {
            return 1.0;
        }
        self.macs.iter().skip(start).sum::<f64>() / total
    }
}

/// The output side of a unit's convolutions: `layerL.*` at `hw / 2^(L-1)`, the rest at `hw`.
fn stage_side(unit: &str, hw: usize) -> usize {
    let stage = unit
        .strip_prefix("layer")
        .and_then(|r| r.split('.').next())
        .and_then(|l| l.parse::<u32>().ok())
        .unwrap_or(1);
    (hw >> stage.saturating_sub(1).min(usize::BITS - 1)).max(1)
}

/// How a step's pass 2 runs in the trainer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SecondPass {
    /// A forward and backward of the whole batch through the whole network.
    Full,
    /// SSAM-L: from the first perturbed unit `start`, from pass 1's kept input; `prefix` is the
    /// number of parameters before it (the values pass 1's gradient keeps when `truncated`);
    /// `share` the part of the network's multiply-adds from `start` on.
    FromUnit {
        start: usize,
        mode: Pass2Mode,
        prefix: usize,
        share: f64,
    },
    /// ESAM's SDS: a forward without gradient at `w + e` on the whole batch, then pass 2 on
    /// the `⌈γ·B⌉` samples whose loss rose most.
    Sds { gamma: f32 },
}

/// Whether the rule is SSAM-L.
pub fn is_ssam_l(rule: &Rule) -> bool {
    matches!(
        rule,
        Rule::Ssam(Ssam {
            mask: MaskKind::Segments { .. },
            ..
        })
    )
}

impl SecondPass {
    /// SSAM-L's pass 2 when its first perturbed segment is `first_segment` (`None`: no mask
    /// yet, which starts at the first unit).
    pub fn from_segment(
        layout: &Layout,
        units: &[Unit],
        cost: &UnitCost,
        first_segment: Option<usize>,
        mode: Pass2Mode,
    ) -> SecondPass {
        let start = first_segment
            .and_then(|s| samkit_nn::model::unit_of_segment(units, s))
            .unwrap_or(0);
        let prefix = units
            .get(start)
            .and_then(|u| layout.segments().get(u.segments.start))
            .map_or(0, |s| s.offset);
        SecondPass::FromUnit {
            start,
            mode,
            prefix,
            share: cost.from_unit(start),
        }
    }

    /// SSAM-L `suffix`: the first perturbed segment is fixed by the layout.
    pub fn suffix_segment(layout: &Layout, c: &Ssam) -> Option<usize> {
        suffix_segments(layout, c.live_count(layout.len()))
            .iter()
            .position(|&p| p)
    }

    /// The values of pass 1's gradient that pass 2 must keep (SSAM-L `truncated` from a unit
    /// after the first).
    pub fn kept_prefix(&self) -> Option<usize> {
        match *self {
            SecondPass::FromUnit {
                mode: Pass2Mode::Truncated,
                prefix,
                start,
                ..
            } if start > 0 && prefix > 0 => Some(prefix),
            _ => None,
        }
    }
}

/// How the next step's pass 2 runs: SSAM-L from its first perturbed unit (the committed mask's;
/// the suffix's is fixed by the layout), ESAM with SDS when `γ < 1`, every other rule in full.
pub fn plan_step<E: Engine>(cfg: &RunConfig, engine: &mut E) -> Result<SecondPass> {
    Ok(match &cfg.rule {
        Rule::Ssam(c) if is_ssam_l(&cfg.rule) => {
            let first = match c.mask {
                MaskKind::Segments {
                    select: SegmentSelect::Suffix,
                } => SecondPass::suffix_segment(engine.net().model.layout(), c),
                _ => engine.first_perturbed_segment()?,
            };
            let model = &engine.net().model;
            let cost = UnitCost::resnet(model.layout(), model.units(), IMAGE_SIDE);
            SecondPass::from_segment(model.layout(), model.units(), &cost, first, cfg.pass2)
        }
        // With γ = 1 every sample is kept: the ranking forward would change nothing.
        Rule::Esam(c) if sds_count(cfg.batch, c.gamma) < cfg.batch => {
            SecondPass::Sds { gamma: c.gamma }
        }
        _ => SecondPass::Full,
    })
}

/// The side of the (CIFAR-shaped) images the trainer's ResNet-18 sees.
const IMAGE_SIDE: usize = 32;

/// The batch of a step's pass 2: staged where the passes read it, on the host, and pass 1's
/// per-sample losses.
pub(crate) struct Pass2Batch<'a> {
    pub x: &'a Tensor,
    pub host: &'a Batch,
    pub clean: &'a [f32],
}

/// Pass 2 at the perturbed weights `w` as `plan` says, its gradient written into `g`, its
/// passes counted into `passes`. Batch norm uses the batch statistics and never updates the
/// running ones, as every pass 2.
pub(crate) fn second_pass<E: Engine>(
    model: &mut ResNet18<E::B>,
    plan: SecondPass,
    batch: Pass2Batch<'_>,
    w: &E::A,
    g: &mut E::A,
    passes: &mut Passes,
) -> Result<Eval> {
    let labels = &batch.host.labels[..];
    let n = labels.len();
    let mode = BnMode::TrainNoUpdate;
    let l = match plan {
        SecondPass::Full => {
            passes.grad_pass(n, n, 1.0, 1.0);
            model.forward_backward(
                w.borrow(),
                batch.x,
                labels.into(),
                &mean_weights(n),
                mode,
                g.borrow_mut(),
            )?
        }
        SecondPass::FromUnit {
            start, mode, share, ..
        } => {
            let (extent, backward) = match mode {
                Pass2Mode::Truncated if start > 0 => (BackwardExtent::StopAtStart, share),
                _ => (BackwardExtent::Full, 1.0),
            };
            passes.grad_pass(n, n, share, backward);
            model.forward_backward_from(
                w.borrow(),
                start,
                labels.into(),
                &mean_weights(n),
                extent,
                g.borrow_mut(),
            )?
        }
        SecondPass::Sds { gamma } => {
            let perturbed = model.forward_losses(w.borrow(), batch.x, labels.into(), mode)?;
            passes.nograd_pass(n, n);
            let subset = sds_subset(batch.clean, &perturbed.per_sample, gamma);
            passes.grad_pass(subset.len(), n, 1.0, 1.0);
            // Gathered on the host (a staged batch may live on a device), then staged.
            let host = Tensor::from_vec(batch.host.x.clone(), &[n, 3, IMAGE_SIDE, IMAGE_SIDE])?;
            let (xs, ts) = select_samples(&host, labels.into(), &subset)?;
            let xs = E::stage(model, xs)?;
            model.forward_backward(
                w.borrow(),
                &xs,
                ts.as_targets(),
                &mean_weights(subset.len()),
                mode,
                g.borrow_mut(),
            )?
        }
    };
    Ok(Eval {
        loss: l.loss,
        samples: l.samples,
    })
}

/// ESAM's `B⁺`: the `⌈γ·B⌉` samples of largest `ℓ'_i − ℓ_i` (`perturbed` − `clean`), ties to the
/// lower index, returned in increasing index order (so that `γ = 1` keeps the batch as it is).
/// A NaN difference ranks lowest.
pub fn sds_subset(clean: &[f32], perturbed: &[f32], gamma: f32) -> Vec<usize> {
    let b = clean.len().min(perturbed.len());
    let k = sds_count(b, gamma);
    let rise: Vec<f64> = clean
        .iter()
        .zip(perturbed)
        .map(|(&l, &lp)| {
            let d = lp as f64 - l as f64;
            if d.is_nan() {
                f64::NEG_INFINITY
            } else {
                d
            }
        })
        .collect();
    let mut order: Vec<usize> = (0..b).collect();
    order.sort_by(|&i, &j| rise[j].total_cmp(&rise[i]).then(i.cmp(&j)));
    let mut pick: Vec<usize> = order.into_iter().take(k).collect();
    pick.sort_unstable();
    pick
}

/// `⌈γ·B⌉`, at least 1 and at most `B` (γ ∈ (0, 1] by the rule's validation).
///
/// γ arrives as an f32, which may lie above the decimal the user wrote (0.2 is stored as
/// 0.2000000030): `γ·B` is taken `B` f32 ulps lower before the ceiling, so that 0.2 of 5 is 1,
/// not 2.
pub fn sds_count(batch: usize, gamma: f32) -> usize {
    let b = batch as f64;
    let exact = b * gamma as f64 - b * f64::from(f32::EPSILON);
    (exact.ceil().max(0.0) as usize).clamp(1.min(batch), batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sds_keeps_the_largest_rises_ties_to_the_lower_index() {
        let clean = [1.0, 1.0, 1.0, 1.0, 1.0];
        let pert = [1.5, 2.0, 1.5, f32::NAN, 0.5];
        // ⌈0.5·5⌉ = 3: sample 1 (rise 1), then 0 and 2 tie at 0.5.
        assert_eq!(sds_subset(&clean, &pert, 0.5), vec![0, 1, 2]);
        assert_eq!(sds_subset(&clean, &pert, 0.2), vec![1]);
        assert_eq!(sds_subset(&clean, &pert, 1.0), vec![0, 1, 2, 3, 4]);
        assert_eq!(sds_count(32, 0.5), 16);
        assert_eq!(sds_count(31, 0.5), 16);
        assert_eq!(sds_count(3, 1e-6), 1);
    }

    #[test]
    fn stages_halve_the_side() {
        assert_eq!(stage_side("stem", 32), 32);
        assert_eq!(stage_side("layer1.0", 32), 32);
        assert_eq!(stage_side("layer3.1", 32), 8);
        assert_eq!(stage_side("layer4.0", 32), 4);
        assert_eq!(stage_side("head", 32), 32);
    }

    #[test]
    fn pass_counts_add_up() {
        let mut p = Passes::default();
        p.grad_pass(32, 32, 1.0, 1.0);
        p.nograd_pass(32, 32);
        p.grad_pass(16, 32, 1.0, 1.0);
        assert_eq!(
            p,
            Passes {
                forward: 1.5,
                forward_nograd: 1.0,
                backward: 1.5,
                samples: 80
            }
        );
        let m = p.mean(2);
        assert_eq!((m.forward, m.samples), (0.75, 40));
    }
}
