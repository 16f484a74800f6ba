//! The label-smoothed cross-entropy of ALGORITHMS.md, with per-sample losses.
//!
//! Target `1 − s` on the true class and `s/(C − 1)` elsewhere; `ℓ_i = −Σ_c q_c·log_softmax(z)_c`.
//! The gradient of `Σ_i w_i·ℓ_i` with respect to the logits is `w_i·(softmax(z_i) − q_i)`,
//! which gives the mean (`w_i = 1/B`) and ImbSAM's head/tail sums with one routine.
use crate::error::{Error, Result};

/// Per-sample losses and `d(Σ_i weight_i·ℓ_i)/dz` for logits `z` of shape `[B, C]`.
pub fn smooth_cross_entropy(
    logits: &[f32],
    labels: &[usize],
    classes: usize,
    smoothing: f32,
    weights: &[f32],
    grad: Option<&mut [f32]>,
) -> Result<Vec<f32>> {
    let b = labels.len();
    if classes < 2 || logits.len() != b * classes || weights.len() != b {
        return Err(Error::LayoutMismatch {
            what: "logits",
            detail: format!(
                "{} logits, {} labels, {} weights, {classes} classes",
                logits.len(),
                b,
                weights.len()
            ),
        });
    }
    if !(0.0..1.0).contains(&smoothing) {
        return Err(Error::hyper("smoothing", smoothing, "must lie in [0, 1)"));
    }
    if let Some(&bad) = labels.iter().find(|&&y| y >= classes) {
        return Err(Error::hyper(
            "label",
            bad,
            "must be < the number of classes",
        ));
    }
    let off = smoothing as f64 / (classes - 1) as f64;
    let on = 1.0 - smoothing as f64;
    let mut losses = Vec::with_capacity(b);
    let mut grad = grad;
    for (i, (&y, &wt)) in labels.iter().zip(weights).enumerate() {
        let z = &logits[i * classes..(i + 1) * classes];
        let max = z.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v)) as f64;
        let sum: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
        let lse = max + sum.ln();
        let mut l = 0.0;
        for (c, &v) in z.iter().enumerate() {
            let q = if c == y { on } else { off };
            l -= q * (v as f64 - lse);
        }
        losses.push(l as f32);
        if let Some(g) = grad.as_deref_mut() {
            let gz = &mut g[i * classes..(i + 1) * classes];
            for (c, (o, &v)) in gz.iter_mut().zip(z).enumerate() {
                let q = if c == y { on } else { off };
                *o = (wt as f64 * ((v as f64 - lse).exp() - q)) as f32;
            }
        }
    }
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let z = vec![0.3f32, -1.2, 2.0, 0.1, 0.5, -0.4];
        let y = [2usize, 0];
        let w = [0.5f32, 0.5];
        let mut g = vec![0f32; 6];
        smooth_cross_entropy(&z, &y, 3, 0.1, &w, Some(&mut g)).unwrap();
        let f = |z: &[f32]| -> f64 {
            let l = smooth_cross_entropy(z, &y, 3, 0.1, &w, None).unwrap();
            l.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum()
        };
        for i in 0..6 {
            let (mut zp, mut zm) = (z.clone(), z.clone());
            zp[i] += 1e-3;
            zm[i] -= 1e-3;
            let fd = (f(&zp) - f(&zm)) / 2e-3;
            assert!((fd - g[i] as f64).abs() < 1e-3, "{i}: {fd} vs {}", g[i]);
        }
    }

    #[test]
    fn plain_cross_entropy_of_uniform_logits_is_log_c() {
        let l = smooth_cross_entropy(&[0.0; 4], &[1], 4, 0.0, &[1.0], None).unwrap();
        assert!((l[0] as f64 - 4f64.ln()).abs() < 1e-6);
        assert!(smooth_cross_entropy(&[0.0; 4], &[4], 4, 0.0, &[1.0], None).is_err());
    }
}
