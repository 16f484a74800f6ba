//! The sharpness measures `landscape` prints beside its surfaces, for one set of weights and a
//! gradient oracle `grad(w, g) -> loss` (a deterministic function of `w`):
//!
//! - ε-sharpness at ρ: `max_{‖e‖≤ρ} L(w + e) − L(w)`, estimated from below by SAM's own ascent
//!   iterated (`e ← ρ ∇L(w + e)/‖∇L(w + e)‖`, the best point kept). On a quadratic at its
//!   minimum this is power iteration, so it tends to `½ λ_max ρ²`.
//! - λ_max of the Hessian (power iteration) and its trace (Hutchinson), by the finite-difference
//!   products of [`crate::hessian::Hvp`].
//! - `‖∇L(w)‖` and the survey's §3.3 bound `λ_max(∇²L(w_SAM)) ≤ (2/ρ)·‖∇L(w_SAM)‖` (a bound the
//!   survey states for SAM's solutions; for other weights it is printed for comparison, and
//!   whether it holds is reported, not assumed).
use samkit_core::philox::PhiloxRng;
use serde::Serialize;

use crate::error::Result;
use crate::hessian::{dot, hutchinson, normalise, power, Hvp};

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct SharpnessOptions {
    /// Radius of the ε-sharpness and the ρ of the §3.3 bound.
    pub rho: f64,
    /// SAM ascent steps of the ε-sharpness estimate (1 = SAM's single step).
    pub ascent_steps: usize,
    /// Power iterations for λ_max (0: not measured).
    pub power_iters: usize,
    /// Hutchinson probes for the trace (0: not measured).
    pub hutchinson: usize,
    /// The Hessian-vector products' relative finite-difference step (`hessian --fd-eps`).
    pub fd_eps: f64,
    pub seed: u64,
}

/// One row of the sharpness table.
#[derive(Clone, Debug, Serialize)]
pub struct Sharpness {
    pub name: String,
    pub loss: f64,
    pub rho: f64,
    /// `max L(w + e) − L(w)` over the ascent's points, `‖e‖ = ρ`.
    pub eps_sharpness: f64,
    pub ascent_steps: usize,
    pub grad_norm: f64,
    pub lambda_max: Option<f64>,
    /// Hutchinson's trace and its standard error.
    pub trace: Option<(f64, f64)>,
    /// `(2/ρ)·‖∇L(w)‖`, the survey's §3.3 bound on λ_max at a SAM solution.
    pub bound: f64,
    /// `λ_max ≤ bound`, where λ_max was measured.
    pub bound_holds: Option<bool>,
    pub hessian_vector_products: usize,
}

/// Measures the table's row for weights `w`.
pub fn measure<G: FnMut(&[f32], &mut [f32]) -> Result<f64>>(
    name: &str,
    mut grad: G,
    w: &[f32],
    o: &SharpnessOptions,
) -> Result<Sharpness> {
    let n = w.len();
    let mut g = vec![0f32; n];
    let loss = grad(w, &mut g)?;
    let grad_norm = dot(&g, &g).sqrt();
    // The first direction is the gradient's (SAM's step); at a stationary point a random one.
    let mut dir = g.clone();
    if normalise(&mut dir) == 0.0 {
        let mut rng = PhiloxRng::new(o.seed, 500);
        dir.iter_mut().for_each(|x| *x = rng.normal() as f32);
        normalise(&mut dir);
    }
    let mut best = f64::NEG_INFINITY;
    let mut wp = vec![0f32; n];
    let mut gp = vec![0f32; n];
    for _ in 0..o.ascent_steps.max(1) {
        for ((p, &x), &d) in wp.iter_mut().zip(w).zip(&dir) {
            *p = x + (o.rho * d as f64) as f32;
        }
        let l = grad(&wp, &mut gp)?;
        if l.is_finite() {
            best = best.max(l);
        }
        dir.copy_from_slice(&gp);
        if normalise(&mut dir) == 0.0 {
            break;
        }
    }
    let eps_sharpness = if best.is_finite() {
        best - loss
    } else {
        f64::NAN
    };
    let bar = indicatif::ProgressBar::hidden();
    let mut h = Hvp::new(&mut grad, w.to_vec(), o.fd_eps);
    if o.power_iters > 0 || o.hutchinson > 0 {
        let mut probe: Vec<f32> = {
            let mut rng = PhiloxRng::new(o.seed, 400);
            (0..n).map(|_| rng.normal() as f32).collect()
        };
        normalise(&mut probe);
        h.check_eps(&probe)?;
    }
    let lambda_max = if o.power_iters > 0 {
        power(&mut h, n, 1, o.power_iters, o.seed, &bar)?
            .first()
            .and_then(|t| t.last().copied())
    } else {
        None
    };
    let trace = hutchinson(&mut h, n, o.hutchinson, o.seed, &bar)?;
    let bound = if o.rho > 0.0 {
        2.0 / o.rho * grad_norm
    } else {
        f64::INFINITY
    };
    Ok(Sharpness {
        name: name.to_string(),
        loss,
        rho: o.rho,
        eps_sharpness,
        ascent_steps: o.ascent_steps.max(1),
        grad_norm,
        lambda_max,
        trace,
        bound,
        bound_holds: lambda_max.map(|l| l <= bound),
        hessian_vector_products: h.count,
    })
}

/// The table as CSV (empty cells where a measure was skipped).
pub fn csv(rows: &[Sharpness]) -> String {
    let opt = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    let mut s = String::from(
        "name,loss,rho,eps_sharpness,ascent_steps,grad_norm,lambda_max,trace,trace_se,bound_2_over_rho_grad_norm,bound_holds\n",
    );
    for r in rows {
        s += &format!(
            "{},{},{},{},{},{},{},{},{},{},{}\n",
            r.name.replace(',', ";"),
            r.loss,
            r.rho,
            r.eps_sharpness,
            r.ascent_steps,
            r.grad_norm,
            opt(r.lambda_max),
            opt(r.trace.map(|t| t.0)),
            opt(r.trace.map(|t| t.1)),
            r.bound,
            r.bound_holds.map_or(String::new(), |b| b.to_string())
        );
    }
    s
}

/// The table as text lines for the console and the figure.
pub fn table(rows: &[Sharpness]) -> Vec<String> {
    let num = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
    let mut out = vec![format!(
        "{:<22} {:>9} {:>12} {:>10} {:>11} {:>16} {:>12} {:>6}",
        "checkpoint", "loss", "ε-sharpness", "‖∇L‖", "λmax", "trace (± se)", "2‖∇L‖/ρ", "holds"
    )];
    for r in rows {
        out.push(format!(
            "{:<22} {:>9.4} {:>12.4} {:>10.4} {:>11} {:>16} {:>12.4} {:>6}",
            r.name,
            r.loss,
            r.eps_sharpness,
            r.grad_norm,
            num(r.lambda_max),
            r.trace
                .map_or("-".to_string(), |(m, se)| format!("{m:.2} ± {se:.2}")),
            r.bound,
            r.bound_holds.map_or("-", |b| if b { "yes" } else { "no" })
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `L(w) = ½ Σ λ_i w_i²`.
    fn quadratic(lambdas: Vec<f64>) -> impl FnMut(&[f32], &mut [f32]) -> Result<f64> {
        move |w, g| {
            let mut l = 0.0;
            for ((o, &x), &k) in g.iter_mut().zip(w).zip(&lambdas) {
                *o = (k * x as f64) as f32;
                l += 0.5 * k * (x as f64).powi(2);
            }
            Ok(l)
        }
    }

    const OPTS: SharpnessOptions = SharpnessOptions {
        rho: 0.1,
        ascent_steps: 40,
        power_iters: 60,
        hutchinson: 50,
        fd_eps: 1e-2,
        seed: 1,
    };

    /// Relative tolerance of quantities estimated in f32 by finite differences.
    const REL_TOL: f64 = 1e-3;

    #[test]
    fn at_a_quadratic_minimum_the_measures_are_the_spectrum() {
        let n = 50;
        let lambdas: Vec<f64> = (0..n)
            .map(|i| if i == 3 { 8.0 } else { 0.1 * (i % 5) as f64 })
            .collect();
        let trace: f64 = lambdas.iter().sum();
        let w = vec![0f32; n];
        let s = measure("q", quadratic(lambdas), &w, &OPTS).unwrap();
        assert_eq!(s.loss, 0.0);
        assert_eq!(s.grad_norm, 0.0);
        // The worst point of the ρ-ball is ρ along the top eigenvector: ½·8·ρ².
        let want = 0.5 * 8.0 * OPTS.rho * OPTS.rho;
        assert!(
            (s.eps_sharpness - want).abs() < REL_TOL * want,
            "{} vs {want}",
            s.eps_sharpness
        );
        let l = s.lambda_max.unwrap();
        assert!((l - 8.0).abs() < REL_TOL * 8.0, "{l}");
        let (t, _) = s.trace.unwrap();
        assert!((t - trace).abs() < REL_TOL * trace, "{t} vs {trace}");
        // A zero gradient bounds nothing: the survey's bound fails at a sharp minimum.
        assert_eq!(s.bound, 0.0);
        assert_eq!(s.bound_holds, Some(false));
    }

    #[test]
    fn away_from_the_minimum_the_bound_uses_the_gradient_norm() {
        // L = ½(4x² + y²) at (1, 0): ∇L = (4, 0), λmax = 4, bound 2·4/ρ = 80 ≥ 4.
        let s = measure("p", quadratic(vec![4.0, 1.0]), &[1.0, 0.0], &OPTS).unwrap();
        assert!((s.grad_norm - 4.0).abs() < 1e-6);
        assert!((s.bound - 80.0).abs() < 1e-4);
        assert_eq!(s.bound_holds, Some(true));
        // One SAM step along ∇L: L(1.1, 0) − L(1, 0) = 2·(1.21 − 1) = 0.42.
        let one = SharpnessOptions {
            ascent_steps: 1,
            power_iters: 0,
            hutchinson: 0,
            ..OPTS
        };
        let s1 = measure("p", quadratic(vec![4.0, 1.0]), &[1.0, 0.0], &one).unwrap();
        assert!(
            (s1.eps_sharpness - 0.42).abs() < 1e-5,
            "{}",
            s1.eps_sharpness
        );
        assert_eq!(s1.lambda_max, None);
        assert_eq!(s1.bound_holds, None);
        assert_eq!(s1.hessian_vector_products, 0);
        // The table and the CSV carry every row, with blanks for what was skipped.
        let csv = csv(&[s, s1]);
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.lines().nth(2).unwrap().ends_with(",,,,80,"), "{csv}");
        assert_eq!(table(&[]).len(), 1);
    }
}
