//! The distillation term of MESA and SAF (ALGORITHMS.md, "MESA and SAF"), beside the
//! label-smoothed cross-entropy:
//!
//! `L = CE_ls(z, y) + λ·τ²·mean_i KL(softmax(t_i/τ) ‖ softmax(z_i/τ))`,
//!
//! with `z` the student's logits and `t` the teacher's (MESA: the EMA model's, SAF: the logits
//! the sample got `Ẽ` epochs earlier), both through `log_softmax`, in f64 like
//! `samkit_core::loss::smooth_cross_entropy`. Its logit gradient is
//! `d(τ²·KL)/dz_c = τ·(softmax(z/τ)_c − softmax(t/τ)_c)`.
//!
//! A model sees the term through [`crate::Targets::Distill`]: its loss is then
//! `ℓ_i = CE_ls_i + λ·kd_i` (`kd_i = τ²·KL_i`, 0 for a sample without a teacher), and with
//! `λ = 0` or no teacher the computation is the cross-entropy's alone, bit for bit.
use std::cell::RefCell;

use crate::error::{Error, Result};

/// `τ` of the spec (Du et al.'s default for both methods).
pub const DEFAULT_TAU: f32 = 5.0;

/// What a pass with the distillation term compares its logits with.
#[derive(Clone, Copy, Debug)]
pub struct DistillTargets<'a> {
    /// Class indices (the label-smoothed cross-entropy's targets).
    pub labels: &'a [usize],
    /// The teacher's logits `[n, k]`, or `None` (no term: plain cross-entropy, e.g. before
    /// `E_start` or while SAF's buffer has nothing `Ẽ` epochs old).
    pub teacher: Option<&'a [f32]>,
    /// Which samples have a teacher (SAF: those seen `Ẽ` epochs earlier); `None`: all.
    pub present: Option<&'a [bool]>,
    /// `λ`, the weight of the term (≥ 0).
    pub lambda: f32,
    /// `τ`, the temperature (> 0).
    pub tau: f32,
    /// Receives a copy of the student's logits `[n, k]` of the pass (SAF's buffer is written
    /// with them each step, before the loss).
    pub record: Option<&'a RefCell<Vec<f32>>>,
}

impl<'a> DistillTargets<'a> {
    /// Plain cross-entropy on `labels` (no teacher, nothing recorded).
    pub fn labels_only(labels: &'a [usize]) -> Self {
        DistillTargets {
            labels,
            teacher: None,
            present: None,
            lambda: 0.0,
            tau: DEFAULT_TAU,
            record: None,
        }
    }

    /// Whether the term contributes at all (a teacher and `λ ≠ 0`).
    pub fn active(&self) -> bool {
        self.teacher.is_some() && self.lambda != 0.0
    }
}

/// An error unless `λ` is finite and ≥ 0 and `τ` finite and > 0.
pub fn check_hyper(lambda: f32, tau: f32) -> Result<()> {
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(Error::invalid(
            "distill lambda",
            format!("{lambda} must be finite and ≥ 0"),
        ));
    }
    if !(tau.is_finite() && tau > 0.0) {
        return Err(Error::invalid(
            "distill tau",
            format!("{tau} must be finite and > 0"),
        ));
    }
    Ok(())
}

/// `log_softmax(v/τ)` of one row, in f64.
fn log_softmax_scaled(v: &[f32], tau: f64, out: &mut [f64]) {
    let max = v
        .iter()
        .fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64 / tau));
    let sum: f64 = v.iter().map(|&x| (x as f64 / tau - max).exp()).sum();
    let lse = max + sum.ln();
    for (o, &x) in out.iter_mut().zip(v) {
        *o = x as f64 / tau - lse;
    }
}

/// `kd_i = τ²·KL(softmax(t_i/τ) ‖ softmax(z_i/τ))` of each of the `n` rows of `k` logits
/// (`student` and `teacher` both `[n, k]`; 0 for a row whose `present` is false), and, with
/// `grad`, `weights_i·λ·τ·(softmax(z_i/τ) − softmax(t_i/τ))` ADDED to row `i` of `grad` (the
/// gradient of `λ·Σ_i weights_i·kd_i`; rows without a teacher are left as they are).
#[allow(clippy::too_many_arguments)]
pub fn kd_term(
    student: &[f32],
    teacher: &[f32],
    k: usize,
    tau: f32,
    lambda: f32,
    weights: &[f32],
    present: Option<&[bool]>,
    grad: Option<&mut [f32]>,
) -> Result<Vec<f32>> {
    let n = weights.len();
    check_hyper(lambda, tau)?;
    if k < 2 || student.len() != n * k || teacher.len() != n * k {
        return Err(Error::shape(
            "distillation logits",
            format!(
                "{} student and {} teacher logits for {n} samples of {k} classes",
                student.len(),
                teacher.len()
            ),
        ));
    }
    if let Some(p) = present {
        if p.len() != n {
            return Err(Error::shape(
                "distillation teachers",
                format!("{} flags for {n} samples", p.len()),
            ));
        }
    }
    if let Some(g) = grad.as_deref() {
        if g.len() != n * k {
            return Err(Error::shape(
                "logit gradient",
                format!("{} values for {n}×{k} logits", g.len()),
            ));
        }
    }
    let tau = tau as f64;
    let (mut lz, mut lt) = (vec![0f64; k], vec![0f64; k]);
    let mut out = Vec::with_capacity(n);
    let mut grad = grad;
    for i in 0..n {
        if present.is_some_and(|p| !p[i]) {
            out.push(0.0);
            continue;
        }
        let (z, t) = (&student[i * k..(i + 1) * k], &teacher[i * k..(i + 1) * k]);
        log_softmax_scaled(z, tau, &mut lz);
        log_softmax_scaled(t, tau, &mut lt);
        // Σ p·(log p − log q); a class whose teacher probability underflows to 0 adds 0
        // (the limit of p·log p), as PyTorch's kl_div with log_target does.
        let kl: f64 = lt
            .iter()
            .zip(&lz)
            .map(|(&a, &b)| {
                let p = a.exp();
                if p == 0.0 {
                    0.0
                } else {
                    p * (a - b)
                }
            })
            .sum();
        out.push((tau * tau * kl) as f32);
        if let Some(g) = grad.as_deref_mut() {
            let scale = weights[i] as f64 * lambda as f64 * tau;
            for (c, o) in g[i * k..(i + 1) * k].iter_mut().enumerate() {
                *o = (*o as f64 + scale * (lz[c].exp() - lt[c].exp())) as f32;
            }
        }
    }
    Ok(out)
}

/// The per-sample losses `ℓ_i = CE_ls_i + λ·kd_i` of `[n, k]` logits against `d`, and with
/// `grad` the gradient of `Σ_i weights_i·ℓ_i` (overwritten). Records the logits into
/// `d.record` first. Without an active term (no teacher or `λ = 0`) this is exactly
/// `samkit_core::loss::smooth_cross_entropy`.
pub fn distill_loss(
    logits: &[f32],
    k: usize,
    smoothing: f32,
    d: &DistillTargets<'_>,
    weights: &[f32],
    grad: Option<&mut [f32]>,
) -> Result<Vec<f32>> {
    let n = d.labels.len();
    if weights.len() != n || logits.len() != n * k {
        return Err(Error::shape(
            "loss",
            format!(
                "{} logits for {n}×{k}, {} weights",
                logits.len(),
                weights.len()
            ),
        ));
    }
    check_hyper(d.lambda, d.tau)?;
    if let Some(r) = d.record {
        let mut r = r
            .try_borrow_mut()
            .map_err(|_| Error::invalid("distillation record", "already borrowed".to_string()))?;
        r.clear();
        r.extend_from_slice(logits);
    }
    let mut grad = grad;
    let mut losses = samkit_core::loss::smooth_cross_entropy(
        logits,
        d.labels,
        k,
        smoothing,
        weights,
        grad.as_deref_mut(),
    )?;
    if let (Some(teacher), true) = (d.teacher, d.active()) {
        let kd = kd_term(
            logits, teacher, k, d.tau, d.lambda, weights, d.present, grad,
        )?;
        for (l, kd) in losses.iter_mut().zip(kd) {
            *l = (*l as f64 + d.lambda as f64 * kd as f64) as f32;
        }
    }
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Central differences in f64 of a loss computed in f64 and rounded to f32: step and
    /// tolerance sized for the f32 rounding of the per-sample values.
    const FD_STEP: f32 = 1e-2;
    const FD_TOL: f64 = 2e-3;

    fn total(z: &[f32], t: &[f32], w: &[f32], lambda: f32, tau: f32) -> f64 {
        let labels = [1usize, 0, 2];
        let d = DistillTargets {
            teacher: Some(t),
            lambda,
            tau,
            ..DistillTargets::labels_only(&labels)
        };
        distill_loss(z, 3, 0.1, &d, w, None)
            .unwrap()
            .iter()
            .zip(w)
            .map(|(&l, &w)| l as f64 * w as f64)
            .sum()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let z = vec![0.3f32, -1.2, 2.0, 0.1, 0.5, -0.4, 1.5, 1.4, -2.0];
        let t = vec![1.0f32, 0.2, -0.5, -1.0, 2.5, 0.0, 0.3, 0.3, 0.9];
        let w = [0.25f32, 0.5, 0.25];
        for (lambda, tau) in [(0.8f32, 5.0f32), (0.3, 1.0), (2.0, 0.5)] {
            let labels = [1usize, 0, 2];
            let d = DistillTargets {
                teacher: Some(&t),
                lambda,
                tau,
                ..DistillTargets::labels_only(&labels)
            };
            let mut g = vec![0f32; 9];
            distill_loss(&z, 3, 0.1, &d, &w, Some(&mut g)).unwrap();
            for i in 0..9 {
                let (mut zp, mut zm) = (z.clone(), z.clone());
                zp[i] += FD_STEP;
                zm[i] -= FD_STEP;
                let fd = (total(&zp, &t, &w, lambda, tau) - total(&zm, &t, &w, lambda, tau))
                    / (2.0 * FD_STEP as f64);
                assert!(
                    (fd - g[i] as f64).abs() < FD_TOL,
                    "λ {lambda} τ {tau} logit {i}: {fd} vs {}",
                    g[i]
                );
            }
        }
    }

    #[test]
    fn hand_computed_two_classes() {
        // τ = 1, t = (0, 0): p = (½, ½); z = (ln 3, 0): q = (¾, ¼).
        // KL = ½ ln(½/¾) + ½ ln(½/¼) = ½ ln(4/3); gradient q − p = (¼, −¼).
        let z = [3f32.ln(), 0.0];
        let t = [0f32, 0.0];
        let kd = kd_term(&z, &t, 2, 1.0, 1.0, &[1.0], None, None).unwrap();
        let want = 0.5 * (4.0f64 / 3.0).ln();
        assert!((kd[0] as f64 - want).abs() < 1e-7, "{} vs {want}", kd[0]);
        let mut g = vec![0f32; 2];
        kd_term(&z, &t, 2, 1.0, 1.0, &[1.0], None, Some(&mut g)).unwrap();
        assert!(
            (g[0] - 0.25).abs() < 1e-7 && (g[1] + 0.25).abs() < 1e-7,
            "{g:?}"
        );
        // τ = 2 scales the gradient by τ and takes softmax(z/2) = (√3, 1)/(√3 + 1).
        let mut g = vec![0f32; 2];
        kd_term(&z, &t, 2, 2.0, 1.0, &[1.0], None, Some(&mut g)).unwrap();
        let q0 = 3f64.sqrt() / (3f64.sqrt() + 1.0);
        assert!((g[0] as f64 - 2.0 * (q0 - 0.5)).abs() < 1e-6, "{g:?}");
    }

    #[test]
    fn equal_logits_have_no_term_and_absent_samples_are_skipped() {
        let z = [0.5f32, -0.5, 2.0, 1.0, 0.0, -1.0];
        let mut g = vec![7f32; 6];
        let kd = kd_term(&z, &z, 3, 5.0, 0.8, &[0.5, 0.5], None, Some(&mut g)).unwrap();
        assert!(kd.iter().all(|&v| v.abs() < 1e-7), "{kd:?}");
        assert!(g.iter().all(|&v| (v - 7.0).abs() < 1e-6), "{g:?}");
        let t = [0f32; 6];
        let mut g = vec![0f32; 6];
        let kd = kd_term(
            &z,
            &t,
            3,
            5.0,
            0.8,
            &[0.5, 0.5],
            Some(&[false, true]),
            Some(&mut g),
        )
        .unwrap();
        assert_eq!(kd[0], 0.0);
        assert!(kd[1] > 0.0);
        assert_eq!(&g[..3], &[0.0; 3], "no teacher: no gradient");
        assert!(g[3..].iter().any(|&v| v != 0.0));
    }

    #[test]
    fn lambda_zero_or_no_teacher_is_the_cross_entropy_bit_for_bit() {
        let z = [0.3f32, -1.2, 2.0, 0.1, 0.5, -0.4];
        let labels = [2usize, 0];
        let w = [0.5f32, 0.5];
        let mut want = vec![0f32; 6];
        let ce = samkit_core::loss::smooth_cross_entropy(&z, &labels, 3, 0.1, &w, Some(&mut want))
            .unwrap();
        let t = [9f32, -3.0, 1.0, 0.0, 4.0, 2.0];
        let rec = RefCell::new(Vec::new());
        for d in [
            DistillTargets {
                teacher: Some(&t),
                lambda: 0.0,
                record: Some(&rec),
                ..DistillTargets::labels_only(&labels)
            },
            DistillTargets {
                lambda: 0.8,
                ..DistillTargets::labels_only(&labels)
            },
        ] {
            let mut g = vec![0f32; 6];
            let l = distill_loss(&z, 3, 0.1, &d, &w, Some(&mut g)).unwrap();
            assert_eq!(l, ce);
            assert_eq!(g, want);
        }
        assert_eq!(rec.borrow().as_slice(), &z, "the logits are recorded");
    }

    #[test]
    fn bad_hyperparameters_and_shapes_are_errors() {
        let z = [0f32; 4];
        assert!(kd_term(&z, &z, 2, 0.0, 1.0, &[1.0, 1.0], None, None).is_err());
        assert!(kd_term(&z, &z, 2, f32::NAN, 1.0, &[1.0, 1.0], None, None).is_err());
        assert!(kd_term(&z, &z, 2, 1.0, -1.0, &[1.0, 1.0], None, None).is_err());
        assert!(kd_term(&z, &z[..2], 2, 1.0, 1.0, &[1.0, 1.0], None, None).is_err());
        assert!(kd_term(&z, &z, 2, 1.0, 1.0, &[1.0, 1.0], Some(&[true]), None).is_err());
        assert!(kd_term(&z, &z, 1, 1.0, 1.0, &[1.0; 4], None, None).is_err());
    }
}
