//! The survey's theorem 1 made visible: SGD with `η_t = 1/(βt)` and SAM with the same steps
//! and `ρ_t = c/√t` on noisy least squares, the mean excess risk over seeds against `T`,
//! next to the bound's leading terms.
//!
//! Problem: `L(w) = ½‖Xw − y‖²` with `X = Q·diag(√λ)·Qᵀ` (`m = d`, a random rotation `Q`),
//! so `XᵀX = Q·diag(λ)·Qᵀ` has its spectrum in `[α, β]` by construction. Every step sees
//! fresh observations `y_t = Xw* + ξ_t`, `ξ_t ~ N(0, σ²I)` (both SAM passes the same
//! `ξ_t`), so the stochastic gradient is `XᵀX(w − w*) − Xᵀξ_t`. The excess risk is the
//! population one, `E_ξ L(w) − E_ξ L(w*) = ½(w − w*)ᵀXᵀX(w − w*)`.
use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::linalg::{self, Mat};
use crate::progress;
use crate::rng::Rng;
use samkit_core::{BaseOptimizer, Eval, GradRequest, Layout, Optimizer, Pass, Rule, Sam};

#[derive(Clone, Debug, Serialize)]
pub struct Th1Params {
    pub dim: usize,
    /// `α/β`: the smallest over the largest eigenvalue of `XᵀX` (`β = 1`).
    pub alpha_ratio: f64,
    /// Noise std `σ` (`Σ = σ²I`).
    pub sigma: f64,
    /// SAM's `ρ_t = c/√t`.
    pub c: f64,
    pub t_max: usize,
    pub seeds: usize,
}

pub struct Problem {
    pub x: Mat,
    pub h: Mat,
    pub lambdas: Vec<f64>,
    /// Columns are the eigenvectors of `XᵀX`.
    pub q: Mat,
    pub w_star: Vec<f64>,
    pub w_start: Vec<f64>,
    pub alpha: f64,
    pub beta: f64,
}

impl Problem {
    pub fn new(dim: usize, alpha_ratio: f64, rng: &mut Rng) -> Self {
        let beta = 1.0;
        let lambdas: Vec<f64> = (0..dim)
            .map(|i| {
                let t = if dim > 1 {
                    i as f64 / (dim - 1) as f64
                } else {
                    1.0
                };
                beta * (alpha_ratio + (1.0 - alpha_ratio) * t)
            })
            .collect();
        let q = linalg::random_orthogonal(dim, rng);
        let scaled = |f: &dyn Fn(f64) -> f64| -> Mat {
            let d: Mat = (0..dim)
                .map(|i| {
                    (0..dim)
                        .map(|j| if i == j { f(lambdas[i]) } else { 0.0 })
                        .collect()
                })
                .collect();
            linalg::mat_mul(&linalg::mat_mul(&q, &d), &linalg::transpose(&q))
        };
        let x = scaled(&|l| l.sqrt());
        let h = scaled(&|l| l);
        let w_star: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
        // The spectrum as measured on XᵀX, not as intended.
        let ev = linalg::sym_eigenvalues(&h);
        Problem {
            x,
            h,
            alpha: ev[0],
            beta: *ev.last().unwrap_or(&beta),
            lambdas,
            q,
            w_star,
            w_start: vec![0.0; dim],
        }
    }

    /// `½(w − w*)ᵀ XᵀX (w − w*)`.
    pub fn excess(&self, w: &[f64]) -> f64 {
        let d: Vec<f64> = w.iter().zip(&self.w_star).map(|(a, b)| a - b).collect();
        0.5 * linalg::dot(&d, &linalg::mat_vec(&self.h, &d))
    }

    /// `Tr(XᵀX Σ)` with `Σ = σ²I`.
    pub fn trace_term(&self, sigma: f64) -> f64 {
        sigma * sigma * linalg::trace(&self.h)
    }
}

/// The theorem's leading term for SGD, `Tr(XᵀXΣ)/(2T)`.
pub fn sgd_bound(trace_xtx_sigma: f64, t: usize) -> f64 {
    trace_xtx_sigma / (2.0 * t as f64)
}

/// `H_T = Σ_{t≤T} 1/t`.
pub fn harmonic(t: usize) -> f64 {
    (1..=t).map(|k| 1.0 / k as f64).sum()
}

/// SAM's: `Tr(XᵀXΣ)/(2T) + β c² H_T / (2T)`.
pub fn sam_bound(trace_xtx_sigma: f64, beta: f64, c: f64, t: usize) -> f64 {
    sgd_bound(trace_xtx_sigma, t) + beta * c * c * harmonic(t) / (2.0 * t as f64)
}

/// The exact expected excess risk of SGD after each of the steps `1..=t_max` (index `T−1`
/// holds `E L(w_{T+1}) − L(w*)`, the risk after `T` updates), from the per-eigendirection
/// recursion `E u²_{t+1} = (1 − η_tλ)² E u²_t + η_t² σ² λ`, `η_t = 1/(βt)`.
pub fn sgd_expected_excess(p: &Problem, sigma: f64, t_max: usize) -> Vec<f64> {
    let diff: Vec<f64> = p
        .w_start
        .iter()
        .zip(&p.w_star)
        .map(|(a, b)| a - b)
        .collect();
    let u0 = linalg::mat_t_vec(&p.q, &diff);
    let mut v: Vec<f64> = u0.iter().map(|u| u * u).collect();
    let mut out = Vec::with_capacity(t_max);
    for t in 1..=t_max {
        let eta = 1.0 / (p.beta * t as f64);
        for (vi, &l) in v.iter_mut().zip(&p.lambdas) {
            *vi = (1.0 - eta * l).powi(2) * *vi + eta * eta * sigma * sigma * l;
        }
        out.push(0.5 * v.iter().zip(&p.lambdas).map(|(v, l)| v * l).sum::<f64>());
    }
    out
}

/// Checkpoints `T` on a log grid from 1 to `t_max` (about 8 per decade).
pub fn checkpoints(t_max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..)
        .map(|k| 10f64.powf(k as f64 / 8.0).round() as usize)
        .take_while(|&t| t <= t_max)
        .collect();
    v.push(t_max);
    v.dedup();
    v
}

/// One run: the excess risk after each checkpoint `T` (after `T` updates). `sam = None`
/// runs SGD, `Some(c)` SAM with `ρ_t = c/√t`.
pub fn run_once(
    p: &Problem,
    sigma: f64,
    sam: Option<f64>,
    checks: &[usize],
    rng: &mut Rng,
) -> Result<Vec<f64>> {
    let d = p.w_star.len();
    let layout = Layout::flat(d)?;
    let xw_star = linalg::mat_vec(&p.x, &p.w_star);
    let t_max = *checks.last().unwrap_or(&0);
    let mut w: Vec<f32> = p.w_start.iter().map(|&v| v as f32).collect();
    let mut out = Vec::with_capacity(checks.len());
    let mut next = 0;
    // One optimizer per run; η_t and (for SAM) ρ_t are set before every step.
    let rule = match sam {
        None => Rule::Base,
        Some(c) => Rule::Sam(Sam {
            rho: c as f32,
            adaptive: false,
            eps_p: None,
            grad_centralization: false,
        }),
    };
    let mut opt = Optimizer::new(layout.clone(), rule, BaseOptimizer::sgd(1.0, 0.0, 0.0))?;
    let mut y = vec![0.0; d];
    for t in 1..=t_max {
        let eta = (1.0 / (p.beta * t as f64)) as f32;
        for (yi, &b) in y.iter_mut().zip(&xw_star) {
            *yi = b + sigma * rng.normal();
        }
        let oracle = |req: GradRequest, w: &Vec<f32>, g: &mut [f32]| -> samkit_core::Result<Eval> {
            if !matches!(req, GradRequest::Batch(Pass::Clean | Pass::Perturbed)) {
                return Err(samkit_core::Error::Oracle(format!("no {req:?} gradient")));
            }
            let wf: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            let r: Vec<f64> = linalg::mat_vec(&p.x, &wf)
                .iter()
                .zip(&y)
                .map(|(a, b)| a - b)
                .collect();
            let grad = linalg::mat_t_vec(&p.x, &r);
            for (gi, v) in g.iter_mut().zip(grad) {
                *gi = v as f32;
            }
            Ok(Eval {
                loss: 0.5 * linalg::dot(&r, &r),
                samples: 1,
            })
        };
        opt.set_lr(eta)?;
        if let Some(c) = sam {
            opt.set_rho((c / (t as f64).sqrt()) as f32)?;
        }
        opt.step(&mut w, oracle)?;
        if checks.get(next) == Some(&t) {
            let wf: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            out.push(p.excess(&wf));
            next += 1;
        }
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct Th1Result {
    pub params: Th1Params,
    pub alpha: f64,
    pub beta: f64,
    pub trace_xtx_sigma: f64,
    pub t: Vec<usize>,
    pub sgd_mean: Vec<f64>,
    pub sam_mean: Vec<f64>,
    pub sgd_expected: Vec<f64>,
    pub sgd_bound: Vec<f64>,
    pub sam_bound: Vec<f64>,
}

pub fn run(p: &Th1Params, seed: u64) -> Result<Th1Result> {
    let mut prng = Rng::stream(seed, 0x7481);
    let prob = Problem::new(p.dim, p.alpha_ratio, &mut prng);
    let checks = checkpoints(p.t_max);
    let pb = progress::bar(2 * p.seeds as u64, "theorem 1 runs");
    let runs: Vec<(Vec<f64>, Vec<f64>)> = (0..p.seeds)
        .into_par_iter()
        .map(|s| {
            let sgd = run_once(
                &prob,
                p.sigma,
                None,
                &checks,
                &mut Rng::stream(seed, 1000 + s as u64),
            )?;
            pb.inc(1);
            let sam = run_once(
                &prob,
                p.sigma,
                Some(p.c),
                &checks,
                &mut Rng::stream(seed, 1000 + s as u64),
            )?;
            pb.inc(1);
            Ok((sgd, sam))
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    let mean = |second: bool| -> Vec<f64> {
        (0..checks.len())
            .map(|i| {
                let sum: f64 = runs
                    .iter()
                    .map(|(sgd, sam)| if second { sam[i] } else { sgd[i] })
                    .sum();
                sum / runs.len() as f64
            })
            .collect()
    };
    let exact = sgd_expected_excess(&prob, p.sigma, p.t_max);
    let tr = prob.trace_term(p.sigma);
    Ok(Th1Result {
        params: p.clone(),
        alpha: prob.alpha,
        beta: prob.beta,
        trace_xtx_sigma: tr,
        sgd_mean: mean(false),
        sam_mean: mean(true),
        sgd_expected: checks.iter().map(|&t| exact[t - 1]).collect(),
        sgd_bound: checks.iter().map(|&t| sgd_bound(tr, t)).collect(),
        sam_bound: checks
            .iter()
            .map(|&t| sam_bound(tr, prob.beta, p.c, t))
            .collect(),
        t: checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_formulas() {
        // Σ = 4·I, spectrum {1, 0.5}: Tr(XᵀXΣ) = 4·1.5 = 6, and 6/(2·10) = 0.3.
        assert!((sgd_bound(6.0, 10) - 0.3).abs() < 1e-15);
        assert!((harmonic(10) - 2.928_968_253_968_254).abs() < 1e-12);
        // + β c² H_T/(2T) = 0.25·2.928968/20.
        assert!((sam_bound(6.0, 1.0, 0.5, 10) - 0.336_612_103_174_603_2).abs() < 1e-12);
        let mut rng = Rng::new(1);
        let p = Problem::new(2, 0.5, &mut rng);
        assert!((p.trace_term(2.0) - 6.0).abs() < 1e-12);
    }

    #[test]
    fn problem_has_the_requested_spectrum() {
        let p = Problem::new(6, 0.75, &mut Rng::new(2));
        let ev = linalg::sym_eigenvalues(&p.h);
        assert!(
            (ev[0] - 0.75).abs() < 1e-10 && (ev[5] - 1.0).abs() < 1e-10,
            "{ev:?}"
        );
        // XᵀX really is the Gram matrix of X.
        let xtx = linalg::mat_mul(&linalg::transpose(&p.x), &p.x);
        for (a, b) in xtx.iter().flatten().zip(p.h.iter().flatten()) {
            assert!((a - b).abs() < 1e-12);
        }
        assert_eq!(p.excess(&p.w_star), 0.0);
    }

    #[test]
    fn checkpoints_are_increasing_and_end_at_t_max() {
        let c = checkpoints(1000);
        assert_eq!(c[0], 1);
        assert_eq!(*c.last().unwrap(), 1000);
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(checkpoints(1), vec![1]);
    }

    #[test]
    fn monte_carlo_sgd_matches_the_exact_expectation() {
        let mut rng = Rng::new(4);
        let prob = Problem::new(3, 0.75, &mut rng);
        let checks = vec![10, 100, 400];
        let exact = sgd_expected_excess(&prob, 1.0, 400);
        let seeds = 3000;
        let sums = (0..seeds)
            .into_par_iter()
            .map(|s| run_once(&prob, 1.0, None, &checks, &mut Rng::stream(11, s)).unwrap())
            .reduce(
                || vec![0.0; 3],
                |a, b| a.iter().zip(&b).map(|(x, y)| x + y).collect(),
            );
        for (i, &t) in checks.iter().enumerate() {
            let mc = sums[i] / seeds as f64;
            let want = exact[t - 1];
            assert!(
                (mc / want - 1.0).abs() < 0.08,
                "T = {t}: Monte Carlo {mc}, exact {want}"
            );
        }
    }

    #[test]
    fn sam_with_c_zero_is_sgd_and_c_changes_the_path() {
        let prob = Problem::new(4, 0.75, &mut Rng::new(6));
        let checks = checkpoints(200);
        let run =
            |c: Option<f64>| run_once(&prob, 0.5, c, &checks, &mut Rng::stream(2, 9)).unwrap();
        let sgd = run(None);
        assert_eq!(sgd, run(Some(0.0)));
        assert_ne!(sgd, run(Some(0.8)));
        // The excess risk decays like 1/T.
        let last = checks.len() - 1;
        assert!(sgd[last] < sgd[0] / 20.0, "{sgd:?}");
    }

    #[test]
    fn summary_has_one_entry_per_checkpoint() {
        let p = Th1Params {
            dim: 3,
            alpha_ratio: 0.75,
            sigma: 0.3,
            c: 0.5,
            t_max: 100,
            seeds: 8,
        };
        let r = run(&p, 5).unwrap();
        let n = r.t.len();
        for v in [
            &r.sgd_mean,
            &r.sam_mean,
            &r.sgd_expected,
            &r.sgd_bound,
            &r.sam_bound,
        ] {
            assert_eq!(v.len(), n);
        }
        assert!(r.sgd_bound.iter().zip(&r.sam_bound).all(|(a, b)| a < b));
        assert!((r.alpha - 0.75).abs() < 1e-9 && (r.beta - 1.0).abs() < 1e-9);
    }
}
