//! `samkit hessian`: the top eigenvalues of the loss Hessian at a checkpoint, by power
//! iteration (with deflation) and by Lanczos (full re-orthogonalisation), and its trace by
//! Hutchinson's estimator — the survey's "future work" (PyHessian's methods).
//!
//! The network stack has explicit first-order backward passes, so a Hessian-vector product is
//! a central difference of two gradients, `Hv ≈ (∇L(w + εv) − ∇L(w − εv)) / 2ε` with `‖v‖ = 1`,
//! over a fixed sample set with batch norm in inference mode (a deterministic function of w).
//! On a smooth loss this is the Hessian to O(ε²) (the tests recover a known spectrum). A ReLU
//! network is only piecewise smooth: units whose activation changes sign within ±εv add to
//! the difference, so the estimates depend on ε (PyHessian's exact double-backward product
//! ignores those kinks). The command reports the ε it used; compare runs at equal ε.
//!
//! A too small ε is refused rather than turned into zeros: the weights are `f32`, so
//! `w + εv` moves each weight by whole units in its last place. Before any product the
//! command checks, on a random direction, how much of the asked-for step rounding loses
//! (bad input, exit 2, with the smallest `--fd-eps` that works for this checkpoint), and on
//! the first product whether the two gradients differ by more than their own rounding
//! (exit 1: only known after computing).
use std::path::PathBuf;

use clap::Args;
use samkit_core::philox::PhiloxRng;
use serde::Serialize;

use crate::error::{check, CliError, Result};
use crate::output::{write_json, Output};
use crate::plot::{self, Axes, Series};
use crate::progress;
use samkit_train::probe::{trained, Probe};

#[derive(Args, Debug)]
pub struct HessianArgs {
    /// Checkpoint folder written by `samkit train` (its `checkpoint/`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Training images the loss is averaged over.
    #[arg(long, default_value_t = 256)]
    pub samples: usize,
    /// Eigenvalues to find by power iteration with deflation.
    #[arg(long, default_value_t = 2)]
    pub top: usize,
    /// Power iterations per eigenvalue.
    #[arg(long, default_value_t = 15)]
    pub power_iters: usize,
    /// Lanczos steps (0: skip).
    #[arg(long, default_value_t = 20)]
    pub lanczos: usize,
    /// Hutchinson probes for the trace (0: skip).
    #[arg(long, default_value_t = 10)]
    pub hutchinson: usize,
    /// Random probes of the spectral density by stochastic Lanczos quadrature (0: skip).
    #[arg(long, default_value_t = 2)]
    pub slq_probes: usize,
    /// Lanczos steps per spectral-density probe.
    #[arg(long, default_value_t = 20)]
    pub slq_steps: usize,
    /// Gaussian width of the spectral density, as a fraction of the spectrum's span.
    #[arg(long, default_value_t = 0.01)]
    pub slq_sigma: f64,
    /// Finite-difference step ε of the Hessian-vector product (relative to ‖w‖ / √N).
    #[arg(long, default_value_t = 1e-2)]
    pub fd_eps: f64,
    /// Seed of the random start vectors and probes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder: hessian.json, power_iteration.png, and spectral_density.png with
    /// hessian.png (both side by side) when --slq-probes > 0.
    #[arg(long, default_value = "results/hessian")]
    pub out: PathBuf,
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

pub(crate) fn normalise(v: &mut [f32]) -> f64 {
    let n = dot(v, v).sqrt();
    if n > 0.0 {
        for x in v.iter_mut() {
            *x = (*x as f64 / n) as f32;
        }
    }
    n
}

/// `v ← v − Σ (v·q) q` for orthonormal `qs`.
fn orthogonalise(v: &mut [f32], qs: &[Vec<f32>]) {
    for q in qs {
        let c = dot(v, q) as f32;
        for (x, &y) in v.iter_mut().zip(q) {
            *x -= c * y;
        }
    }
}

/// The largest fraction of the step `2εv` that rounding `w ± εv` to `f32` may lose (in norm)
/// before the products are refused: beyond it, the direction actually probed is not `v`.
pub const MAX_ROUNDING_LOSS: f64 = 1e-2;
/// The largest `--fd-eps`: a step as large as the typical weight is no derivative.
pub const MAX_REL_EPS: f64 = 1.0;
/// The two gradients of a product must differ by more than this many `f32` epsilons of their
/// norm; below it their difference is the rounding of the gradient computation itself.
pub const GRAD_CANCELLATION_ULPS: f64 = 100.0;
/// The typical-weight scale used when the weights are (nearly) all zero.
const MIN_WEIGHT_RMS: f64 = 1e-3;

/// Hessian-vector products by central differences of a gradient oracle `grad(w, out)`.
pub struct Hvp<G> {
    grad: G,
    w: Vec<f32>,
    rel_eps: f64,
    eps: f64,
    plus: Vec<f32>,
    minus: Vec<f32>,
    wp: Vec<f32>,
    pub count: usize,
}

impl<G: FnMut(&[f32], &mut [f32]) -> Result<f64>> Hvp<G> {
    /// Products at `w`, with `ε = rel_eps · ‖w‖/√N` (the typical weight magnitude).
    pub fn new(grad: G, w: Vec<f32>, rel_eps: f64) -> Self {
        let n = w.len();
        let eps = rel_eps * Self::weight_scale(&w);
        Hvp {
            grad,
            w,
            rel_eps,
            eps,
            plus: vec![0.0; n],
            minus: vec![0.0; n],
            wp: vec![0.0; n],
            count: 0,
        }
    }

    /// `‖w‖/√N`, at least [`MIN_WEIGHT_RMS`].
    fn weight_scale(w: &[f32]) -> f64 {
        (dot(w, w) / w.len().max(1) as f64)
            .sqrt()
            .max(MIN_WEIGHT_RMS)
    }

    /// `out ← w + s·ε·v` in `f32`, exactly as the products form it.
    fn perturbed(w: &[f32], eps: f64, s: f32, v: &[f32], out: &mut [f32]) {
        let e = eps as f32;
        for ((p, &w), &d) in out.iter_mut().zip(w).zip(v) {
            *p = w + s * e * d;
        }
    }

    /// The fraction (in norm) of the step `2·ε·v` that rounding `w ± ε·v` to `f32` loses,
    /// for `ε = rel_eps·‖w‖/√N`: 0 when the weights move exactly as asked, about 1 when they
    /// do not move at all.
    pub fn rounding_loss(&self, v: &[f32], rel_eps: f64) -> f64 {
        let eps = rel_eps * Self::weight_scale(&self.w);
        let mut plus = vec![0f32; v.len()];
        let mut minus = vec![0f32; v.len()];
        Self::perturbed(&self.w, eps, 1.0, v, &mut plus);
        Self::perturbed(&self.w, eps, -1.0, v, &mut minus);
        let (mut err, mut want) = (0.0, 0.0);
        for ((&p, &m), &d) in plus.iter().zip(&minus).zip(v) {
            let asked = 2.0 * eps * d as f64;
            err += (p as f64 - m as f64 - asked).powi(2);
            want += asked * asked;
        }
        if want > 0.0 {
            (err / want).sqrt()
        } else {
            0.0
        }
    }

    /// Refuses an `ε` that rounding to `f32` would lose (more than [`MAX_ROUNDING_LOSS`] of
    /// the step along the unit vector `v`), naming `--fd-eps` and the range that works for
    /// these weights.
    pub fn check_eps(&self, v: &[f32]) -> Result<()> {
        // The smallest power of √10 (from 1e-12 on) that loses at most half the allowance.
        let smallest = (0..=24)
            .map(|k| 10f64.powf(-12.0 + k as f64 / 2.0))
            .find(|&r| self.rounding_loss(v, r) <= MAX_ROUNDING_LOSS / 2.0)
            .unwrap_or(MAX_REL_EPS);
        let loss = self.rounding_loss(v, self.rel_eps);
        if loss > MAX_ROUNDING_LOSS {
            return Err(CliError::invalid(
                "fd-eps",
                format!(
                    "{} (ε = {:.2e}) is lost to f32 rounding of the weights ({:.0} % of the step \
                     w ± εv goes missing; the products would be noise or zeros); for this \
                     checkpoint use a value between {smallest:.0e} and {MAX_REL_EPS} \
                     (default 1e-2)",
                    self.rel_eps,
                    self.eps,
                    100.0 * loss.min(1.0)
                ),
            ));
        }
        Ok(())
    }

    /// `out ← H v` for a unit vector `v`.
    pub fn apply(&mut self, v: &[f32], out: &mut [f32]) -> Result<()> {
        for s in [1.0f32, -1.0] {
            Self::perturbed(&self.w, self.eps, s, v, &mut self.wp);
            let g = if s > 0.0 {
                &mut self.plus
            } else {
                &mut self.minus
            };
            (self.grad)(&self.wp, g)?;
        }
        if self.count == 0 {
            self.check_cancellation()?;
        }
        for ((o, &a), &b) in out.iter_mut().zip(&self.plus).zip(&self.minus) {
            *o = ((a as f64 - b as f64) / (2.0 * self.eps)) as f32;
        }
        self.count += 1;
        Ok(())
    }
}

impl<G> Hvp<G> {
    /// After the first product: the two gradients must differ by more than the rounding of
    /// their own computation ([`GRAD_CANCELLATION_ULPS`]), else every product is noise.
    fn check_cancellation(&self) -> Result<()> {
        let diff: f64 = self
            .plus
            .iter()
            .zip(&self.minus)
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let g = dot(&self.plus, &self.plus)
            .sqrt()
            .max(dot(&self.minus, &self.minus).sqrt());
        let floor = GRAD_CANCELLATION_ULPS * f32::EPSILON as f64 * g;
        if g > 0.0 && diff <= floor {
            return Err(CliError::Run(format!(
                "--fd-eps {}: the gradients at w ± εv (ε = {:.2e}) differ by {:.1e} of their \
                 norm, within f32 rounding ({:.1e}): the Hessian-vector products would be \
                 rounding noise. Use a larger --fd-eps (default 1e-2)",
                self.rel_eps,
                self.eps,
                diff / g,
                floor / g
            )));
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct Report {
    checkpoint: String,
    optimizer: String,
    samples: usize,
    fd_eps: f64,
    power: Vec<Vec<f64>>,
    top_eigenvalues_power: Vec<f64>,
    lanczos_ritz_values: Vec<f64>,
    trace_hutchinson: Option<(f64, f64)>,
    /// Stochastic Lanczos quadrature: nodes `(θ, weight)` (weights sum to 1), the Gaussian
    /// width, and the density curve `(t, φ(t))` drawn in spectral_density.png.
    slq_nodes: Vec<(f64, f64)>,
    slq_sigma: f64,
    spectral_density: Vec<(f64, f64)>,
    hessian_vector_products: usize,
}

/// Power iteration for the `top` largest-magnitude eigenvalues, deflating found vectors.
pub(crate) fn power<G: FnMut(&[f32], &mut [f32]) -> Result<f64>>(
    h: &mut Hvp<G>,
    n: usize,
    top: usize,
    iters: usize,
    seed: u64,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<Vec<f64>>> {
    let mut found: Vec<Vec<f32>> = Vec::new();
    let mut traces = Vec::new();
    let mut hv = vec![0f32; n];
    for k in 0..top {
        let mut rng = PhiloxRng::new(seed, 100 + k as u32);
        let mut v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        orthogonalise(&mut v, &found);
        normalise(&mut v);
        let mut trace = Vec::new();
        for _ in 0..iters {
            h.apply(&v, &mut hv)?;
            bar.inc(1);
            let lambda = dot(&v, &hv);
            trace.push(lambda);
            v.copy_from_slice(&hv);
            orthogonalise(&mut v, &found);
            if normalise(&mut v) == 0.0 {
                break;
            }
        }
        found.push(v);
        traces.push(trace);
    }
    Ok(traces)
}

/// Hutchinson's estimate of the trace with `probes` Rademacher vectors: the mean and its
/// standard error, or `None` for no probes.
pub(crate) fn hutchinson<G: FnMut(&[f32], &mut [f32]) -> Result<f64>>(
    h: &mut Hvp<G>,
    n: usize,
    probes: usize,
    seed: u64,
    bar: &indicatif::ProgressBar,
) -> Result<Option<(f64, f64)>> {
    if probes == 0 {
        return Ok(None);
    }
    let mut rng = PhiloxRng::new(seed, 300);
    let mut hv = vec![0f32; n];
    let mut est = Vec::new();
    let scale = (n as f64).sqrt() as f32;
    for _ in 0..probes {
        // Rademacher v with ‖v‖² = N, applied as the unit vector v/√N.
        let v: Vec<f32> = (0..n)
            .map(|_| {
                if rng.next_u32() & 1 == 1 {
                    1.0 / scale
                } else {
                    -1.0 / scale
                }
            })
            .collect();
        h.apply(&v, &mut hv)?;
        bar.inc(1);
        est.push(dot(&v, &hv) * n as f64);
    }
    let m = est.iter().sum::<f64>() / est.len() as f64;
    let var = est.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (est.len().max(2) - 1) as f64;
    Ok(Some((m, (var / est.len() as f64).sqrt())))
}

/// `m` Lanczos steps from the unit vector `q`, with full re-orthogonalisation: the tridiagonal
/// matrix `T` (`α` on the diagonal, `β` beside it), shorter if the Krylov space closes.
fn lanczos_tridiagonal<G: FnMut(&[f32], &mut [f32]) -> Result<f64>>(
    h: &mut Hvp<G>,
    q: Vec<f32>,
    m: usize,
    bar: &indicatif::ProgressBar,
) -> Result<crate::linalg::Mat> {
    let n = q.len();
    let mut qs: Vec<Vec<f32>> = vec![q];
    let (mut alpha, mut beta) = (Vec::new(), Vec::new());
    let mut w = vec![0f32; n];
    for j in 0..m {
        h.apply(&qs[j], &mut w)?;
        bar.inc(1);
        let a = dot(&w, &qs[j]);
        alpha.push(a);
        orthogonalise(&mut w, &qs);
        orthogonalise(&mut w, &qs);
        let b = normalise(&mut w);
        if j + 1 == m || b < 1e-10 {
            break;
        }
        beta.push(b);
        qs.push(w.clone());
    }
    let k = alpha.len();
    let mut t = vec![vec![0.0; k]; k];
    for i in 0..k {
        t[i][i] = alpha[i];
        if i + 1 < k {
            t[i][i + 1] = beta[i];
            t[i + 1][i] = beta[i];
        }
    }
    Ok(t)
}

/// A random unit vector of stream `stream`.
fn random_unit(n: usize, seed: u64, stream: u32) -> Vec<f32> {
    let mut rng = PhiloxRng::new(seed, stream);
    let mut q: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    normalise(&mut q);
    q
}

/// Lanczos with full re-orthogonalisation; returns the Ritz values, largest first.
fn lanczos<G: FnMut(&[f32], &mut [f32]) -> Result<f64>>(
    h: &mut Hvp<G>,
    n: usize,
    m: usize,
    seed: u64,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<f64>> {
    let t = lanczos_tridiagonal(h, random_unit(n, seed, 200), m, bar)?;
    let mut ev = crate::linalg::sym_eigenvalues(&t);
    ev.reverse();
    Ok(ev)
}

/// Stochastic Lanczos quadrature (Ubaru et al. 2017; PyHessian's density): for each of
/// `probes` random unit vectors `v`, `m` Lanczos steps give `T = Q Θ Qᵀ`, and
/// `vᵀ f(H) v ≈ Σ_k Q[0][k]² f(θ_k)`. The nodes `θ_k` with weights `Q[0][k]² / probes` are a
/// discrete spectral measure of total weight 1 (each probe's weights sum to 1).
pub(crate) fn slq<G: FnMut(&[f32], &mut [f32]) -> Result<f64>>(
    h: &mut Hvp<G>,
    n: usize,
    probes: usize,
    m: usize,
    seed: u64,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<(f64, f64)>> {
    let mut nodes = Vec::new();
    for p in 0..probes {
        let t = lanczos_tridiagonal(h, random_unit(n, seed, 600 + p as u32), m, bar)?;
        for (theta, vec) in crate::linalg::sym_eigen(&t) {
            nodes.push((theta, vec[0] * vec[0] / probes as f64));
        }
    }
    Ok(nodes)
}

/// Points of the density curve.
pub const DENSITY_POINTS: usize = 400;

/// The SLQ nodes smoothed by Gaussians of width `sigma` into a density on a grid spanning the
/// nodes ± 4σ: `(t, φ(t))` with `∫φ = Σ weights`.
pub fn spectral_density(nodes: &[(f64, f64)], sigma: f64) -> Vec<(f64, f64)> {
    if nodes.is_empty() || sigma.is_nan() || sigma <= 0.0 {
        return Vec::new();
    }
    let lo = nodes.iter().map(|n| n.0).fold(f64::INFINITY, f64::min) - 4.0 * sigma;
    let hi = nodes.iter().map(|n| n.0).fold(f64::NEG_INFINITY, f64::max) + 4.0 * sigma;
    let norm = 1.0 / (sigma * (2.0 * std::f64::consts::PI).sqrt());
    (0..DENSITY_POINTS)
        .map(|i| {
            let t = lo + (hi - lo) * i as f64 / (DENSITY_POINTS - 1) as f64;
            let phi = nodes
                .iter()
                .map(|&(th, w)| w * norm * (-0.5 * ((t - th) / sigma).powi(2)).exp())
                .sum();
            (t, phi)
        })
        .collect()
}

/// The Gaussian width of the density: `rel` times the span of the nodes (at least
/// [`MIN_SIGMA`], so a single node still draws).
pub fn density_sigma(nodes: &[(f64, f64)], rel: f64) -> f64 {
    let lo = nodes.iter().map(|n| n.0).fold(f64::INFINITY, f64::min);
    let hi = nodes.iter().map(|n| n.0).fold(f64::NEG_INFINITY, f64::max);
    (rel * (hi - lo)).max(MIN_SIGMA)
}

/// The smallest Gaussian width of the density.
pub const MIN_SIGMA: f64 = 1e-6;

/// The density's floor on its log axis: PyHessian's plots show the density down to about
/// this far below its peak.
const DENSITY_FLOOR: f64 = 1e-6;

pub fn run(a: &HessianArgs, out: &mut Output) -> Result<()> {
    check::count("samples", a.samples, 1, 1_000_000)?;
    check::count("top", a.top, 0, 100)?;
    check::count("power-iters", a.power_iters, 1, 10_000)?;
    check::count("lanczos", a.lanczos, 0, 500)?;
    check::count("hutchinson", a.hutchinson, 0, 100_000)?;
    check::count("slq-probes", a.slq_probes, 0, 1000)?;
    check::count("slq-steps", a.slq_steps, 1, 500)?;
    check::positive("slq-sigma", a.slq_sigma)?;
    check::positive("fd-eps", a.fd_eps)?;
    if a.fd_eps > MAX_REL_EPS {
        return Err(CliError::invalid(
            "fd-eps",
            format!(
                "{} is a step larger than the typical weight, not a derivative (at most \
                 {MAX_REL_EPS}; default 1e-2)",
                a.fd_eps
            ),
        ));
    }
    let (mut t, data) = trained(&a.checkpoint)?;
    // The output folder before the products, after the checkpoint (a bad --checkpoint leaves
    // no folder behind).
    crate::landscape::ensure_writable_dir(&a.out)?;
    samkit_train::files::check_output_names(
        &a.out,
        &[
            "hessian.json",
            "hessian.png",
            "power_iteration.png",
            "spectral_density.png",
        ],
    )?;
    let optimizer = t.cfg.optimizer.clone();
    out.say(format!(
        "checkpoint {} ({optimizer}); data: {data}",
        a.checkpoint.display()
    ));
    let train = t.train_set().clone();
    let probe = Probe::new(&t, &train, a.samples)?;
    let n = t.engine.net.params.len();
    let w0 = t.engine.net.params.clone();
    let mut h = Hvp::new(
        |w: &[f32], g: &mut [f32]| Ok(probe.grad(&mut t, w, g)?),
        w0,
        a.fd_eps,
    );
    // A direction like the ones the methods use (random, unit): how much of the step the
    // weights' rounding loses does not depend much on which.
    let mut rng = PhiloxRng::new(a.seed, 400);
    let mut probe_dir: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    normalise(&mut probe_dir);
    h.check_eps(&probe_dir)?;
    let fd_eps = h.eps;
    let total = a.top * a.power_iters + a.lanczos + a.hutchinson + a.slq_probes * a.slq_steps;
    let bar = progress::bar(total as u64, "hessian-vector products");
    let power_traces = power(&mut h, n, a.top, a.power_iters, a.seed, &bar)?;
    let ritz = if a.lanczos > 0 {
        lanczos(&mut h, n, a.lanczos, a.seed, &bar)?
    } else {
        Vec::new()
    };
    let trace = hutchinson(&mut h, n, a.hutchinson, a.seed, &bar)?;
    let nodes = slq(&mut h, n, a.slq_probes, a.slq_steps, a.seed, &bar)?;
    let sigma = density_sigma(&nodes, a.slq_sigma);
    let density = spectral_density(&nodes, sigma);
    bar.finish_and_clear();
    let tops: Vec<f64> = power_traces
        .iter()
        .filter_map(|t| t.last().copied())
        .collect();
    out.say(format!(
        "{} parameters, {} samples, ε = {fd_eps:.3e}, {} Hessian-vector products",
        n,
        probe.samples(),
        h.count
    ));
    out.say("(finite-difference products on a piecewise-linear network: the estimates depend on ε; compare checkpoints at equal --fd-eps)");
    for (k, l) in tops.iter().enumerate() {
        out.say(format!("power iteration: λ{} = {l:.5}", k + 1));
    }
    if !ritz.is_empty() {
        let show: Vec<String> = ritz.iter().take(5).map(|x| format!("{x:.5}")).collect();
        out.say(format!(
            "lanczos ({} steps): largest Ritz values {}",
            a.lanczos,
            show.join(", ")
        ));
        out.say(format!(
            "lanczos: smallest Ritz value {:.5}",
            ritz.last().copied().unwrap_or(0.0)
        ));
    }
    if let Some((m, se)) = trace {
        out.say(format!(
            "hutchinson ({} probes): trace = {m:.4} ± {se:.4}",
            a.hutchinson
        ));
    }
    if !nodes.is_empty() {
        let lo = nodes.iter().map(|n| n.0).fold(f64::INFINITY, f64::min);
        let hi = nodes.iter().map(|n| n.0).fold(f64::NEG_INFINITY, f64::max);
        out.say(format!(
            "spectral density (SLQ, {} probes × {} steps): nodes from {lo:.4} to {hi:.4}, σ = {sigma:.3e}",
            a.slq_probes, a.slq_steps
        ));
    }
    plot::init_fonts();
    let series: Vec<Series> = power_traces
        .iter()
        .enumerate()
        .map(|(k, tr)| {
            Series::line(
                format!("λ{}", k + 1),
                plot::palette(k),
                tr.iter()
                    .enumerate()
                    .map(|(i, &v)| ((i + 1) as f64, v))
                    .collect(),
            )
            .with_markers()
        })
        .collect();
    let power_axes = power_axes(&optimizer, &series);
    if !series.is_empty() {
        let png = a.out.join("power_iteration.png");
        plot::png(&png, (900, 600), |area| {
            plot::line_chart(area, &power_axes, &series)
        })?;
        out.wrote(png);
    }
    // A density with no positive finite value (non-finite products) has nothing to draw on a
    // log axis; hessian.json still holds its nodes.
    let drawable = density.iter().any(|p| p.1.is_finite() && p.1 > 0.0);
    if drawable {
        let (axes, curve) = density_chart(&density, sigma, a.slq_probes, a.slq_steps);
        let png = a.out.join("spectral_density.png");
        plot::png(&png, (900, 600), |area| {
            plot::line_chart(area, &axes, &curve)
        })?;
        out.wrote(png);
        // Both side by side: how power iteration converged, and the spectrum it converged in.
        let png = a.out.join("hessian.png");
        plot::png(&png, (1700, 600), |root| {
            let panels = root.split_evenly((1, 2));
            if !series.is_empty() {
                plot::line_chart(&panels[0], &power_axes, &series)?;
            }
            plot::line_chart(&panels[1], &axes, &curve)
        })?;
        out.wrote(png);
    }
    let json = a.out.join("hessian.json");
    write_json(
        &json,
        &Report {
            checkpoint: a.checkpoint.display().to_string(),
            optimizer,
            samples: probe.samples(),
            fd_eps,
            power: power_traces,
            top_eigenvalues_power: tops,
            lanczos_ritz_values: ritz,
            trace_hutchinson: trace,
            slq_nodes: nodes,
            slq_sigma: sigma,
            spectral_density: density,
            hessian_vector_products: h.count,
        },
    )?;
    out.wrote(json);
    Ok(())
}

/// The power-iteration chart's axes: the y range padded above the curves so the legend
/// (upper right) sits over empty space, not over the λ1 line.
fn power_axes(optimizer: &str, series: &[Series]) -> Axes {
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = plot::fit_range(ys, false);
    let mut axes = Axes::new(
        format!("Power iteration at {optimizer}'s checkpoint (Rayleigh quotient)"),
        "iteration",
        "eigenvalue estimate",
    )
    .integer_x();
    axes.y_range = Some((lo, hi + LEGEND_HEADROOM * (hi - lo)));
    axes
}

/// The share of the power-iteration chart's height added above the curves for the legend.
const LEGEND_HEADROOM: f64 = 0.35;

/// The spectral density chart (log density axis, floored [`DENSITY_FLOOR`] below the peak).
fn density_chart(
    density: &[(f64, f64)],
    sigma: f64,
    probes: usize,
    steps: usize,
) -> (Axes, Vec<Series>) {
    let peak = density
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    let floor = peak * DENSITY_FLOOR;
    let curve = vec![Series::line(
        "",
        plot::palette(0),
        density.iter().map(|&(t, p)| (t, p.max(floor))).collect(),
    )];
    let mut axes = Axes::new(
        format!(
            "Hessian spectral density (stochastic Lanczos quadrature, {probes} probes × {steps} steps, σ = {sigma:.2e})"
        ),
        "eigenvalue",
        "density",
    )
    .log_y();
    axes.y_range = Some((floor, peak * 2.0));
    (axes, curve)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quadratic with known spectrum: `L(w) = ½ Σ λ_i w_i²`, gradient `λ ⊙ w`.
    fn quadratic(lambdas: Vec<f64>) -> impl FnMut(&[f32], &mut [f32]) -> Result<f64> {
        move |w, g| {
            for ((o, &x), &l) in g.iter_mut().zip(w).zip(&lambdas) {
                *o = (l * x as f64) as f32;
            }
            Ok(0.0)
        }
    }

    fn unit(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = PhiloxRng::new(seed, 1);
        let mut v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        normalise(&mut v);
        v
    }

    #[test]
    fn an_eps_lost_to_rounding_is_refused_naming_the_flag_and_a_range() {
        let n = 10_000;
        let w: Vec<f32> = (0..n).map(|i| 0.1 + 0.001 * (i % 97) as f32).collect();
        let v = unit(n, 3);
        for rel in [1e-12, 1e-6] {
            let h = Hvp::new(quadratic(vec![1.0; n]), w.clone(), rel);
            assert!(h.rounding_loss(&v, rel) > MAX_ROUNDING_LOSS, "{rel}");
            match h.check_eps(&v) {
                Err(CliError::InvalidValue { flag, why }) => {
                    assert_eq!(flag, "fd-eps");
                    assert!(why.contains("rounding") && why.contains("between"), "{why}");
                }
                other => panic!("{rel}: expected a refusal of --fd-eps, got {other:?}"),
            }
        }
        // The default, and the smallest value the message suggests, pass.
        let h = Hvp::new(quadratic(vec![1.0; n]), w.clone(), 1e-2);
        assert!(h.rounding_loss(&v, 1e-2) < MAX_ROUNDING_LOSS / 10.0);
        h.check_eps(&v).unwrap();
        let why = match Hvp::new(quadratic(vec![1.0; n]), w.clone(), 1e-12).check_eps(&v) {
            Err(CliError::InvalidValue { why, .. }) => why,
            other => panic!("{other:?}"),
        };
        let lo: f64 = why
            .split("between ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no range in {why}"));
        Hvp::new(quadratic(vec![1.0; n]), w, lo)
            .check_eps(&v)
            .unwrap();
    }

    #[test]
    fn gradients_equal_to_rounding_are_an_error_not_zeros() {
        // g = c + 1e-6·w: the Hessian's step is far below the rounding of |c|.
        let n = 100;
        let grad = |w: &[f32], g: &mut [f32]| -> Result<f64> {
            for (o, &x) in g.iter_mut().zip(w) {
                *o = 1000.0 + 1e-6 * x;
            }
            Ok(0.0)
        };
        let w = vec![0.5f32; n];
        let v = unit(n, 4);
        let mut h = Hvp::new(grad, w, 1e-2);
        h.check_eps(&v).unwrap();
        let mut out = vec![0f32; n];
        match h.apply(&v, &mut out) {
            Err(e @ CliError::Run(_)) => {
                assert_eq!(e.exit_code(), crate::error::EXIT_FAILURE);
                assert!(e.to_string().contains("--fd-eps"), "{e}");
            }
            other => panic!("expected a run error, got {other:?}"),
        }
        // A well-conditioned product passes the same check.
        let mut h = Hvp::new(quadratic(vec![2.0; n]), vec![0.5f32; n], 1e-2);
        h.apply(&v, &mut out).unwrap();
        assert!((dot(&v, &out) - 2.0).abs() < 1e-3);
    }

    #[test]
    fn power_lanczos_and_hutchinson_recover_a_known_spectrum() {
        let n = 200;
        let lambdas: Vec<f64> = (0..n)
            .map(|i| {
                if i == 7 {
                    9.0
                } else if i == 50 {
                    5.0
                } else {
                    (i % 10) as f64 * 0.1 - 0.3
                }
            })
            .collect();
        let trace: f64 = lambdas.iter().sum();
        let lambdas_sum = trace;
        let w: Vec<f32> = (0..n).map(|i| 0.1 + 0.001 * i as f32).collect();
        let mut h = Hvp::new(quadratic(lambdas), w, 1e-2);
        let bar = indicatif::ProgressBar::hidden();
        let p = power(&mut h, n, 2, 60, 1, &bar).unwrap();
        assert!(
            (p[0].last().unwrap() - 9.0).abs() < 1e-3,
            "{:?}",
            p[0].last()
        );
        assert!(
            (p[1].last().unwrap() - 5.0).abs() < 1e-2,
            "{:?}",
            p[1].last()
        );
        let ritz = lanczos(&mut h, n, 30, 2, &bar).unwrap();
        assert!(
            (ritz[0] - 9.0).abs() < 1e-3 && (ritz[1] - 5.0).abs() < 1e-3,
            "{ritz:?}"
        );
        // Stochastic Lanczos quadrature: weights sum to 1, the mean node is trace/N, the top
        // node is λ1, and the density integrates to 1.
        let nodes = slq(&mut h, n, 3, 30, 4, &bar).unwrap();
        let total: f64 = nodes.iter().map(|x| x.1).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let mean: f64 = nodes.iter().map(|x| x.0 * x.1).sum();
        let want = lambdas_sum / n as f64;
        assert!(
            (mean - want).abs() < 0.2 * want.abs().max(0.05),
            "{mean} vs {want}"
        );
        let top = nodes.iter().map(|x| x.0).fold(f64::NEG_INFINITY, f64::max);
        assert!((top - 9.0).abs() < 1e-3, "{top}");
        let sigma = density_sigma(&nodes, 0.01);
        let d = spectral_density(&nodes, sigma);
        assert_eq!(d.len(), DENSITY_POINTS);
        let integral: f64 = d
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
            .sum();
        assert!((integral - 1.0).abs() < 1e-3, "{integral}");
        // Hutchinson's estimate of the trace, as `run` makes it.
        let (est, se) = hutchinson(&mut h, n, 200, 3, &bar).unwrap().unwrap();
        assert!(se < 1e-3, "{se}");
        assert!(hutchinson(&mut h, n, 0, 3, &bar).unwrap().is_none());
        // Rademacher probes are exact for a diagonal Hessian.
        assert!(
            (est - trace).abs() < 1e-3 * trace.abs().max(1.0),
            "{est} vs {trace}"
        );
    }
}

#[cfg(test)]
mod model_tests {
    use std::sync::Arc;

    use super::*;
    use samkit_train::{DataConfig, DataSource, Trainer};

    fn tiny() -> (Trainer, Probe) {
        let data = DataConfig {
            data: DataSource::Synthetic,
            data_dir: None,
            train_size: 64,
            test_size: 16,
            long_tail: None,
            label_noise: None,
            no_augment: true,
        };
        let (split, norm) = samkit_train::load_data(&data, 0).unwrap();
        let cfg = samkit_train::RunConfig {
            optimizer: "sgd".into(),
            rule: samkit_core::Rule::Base,
            base: samkit_core::BaseOptimizer::sgd(0.1, 0.0, 0.0),
            schedule: samkit_core::LrSchedule::constant(0.1),
            epochs: 1,
            batch: 16,
            steps_per_epoch: None,
            width: 2,
            label_smoothing: 0.0,
            augment: false,
            seed: 0,
            data,
            cuda: Default::default(),
            pass2: Default::default(),
            distill: None,
        };
        let t = Trainer::new(cfg, Arc::new(split.train), Arc::new(split.test), norm).unwrap();
        let train = t.train_set().clone();
        let p = Probe::new(&t, &train, 32).unwrap();
        (t, p)
    }

    #[test]
    fn eval_mode_gradient_matches_the_loss() {
        let (mut t, p) = tiny();
        let w = t.engine.net.params.clone();
        let n = w.len();
        let mut g = vec![0f32; n];
        p.grad(&mut t, &w, &mut g).unwrap();
        let mut rng = PhiloxRng::new(5, 5);
        let mut d: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
        normalise(&mut d);
        let h = 1e-2f32;
        let at = |s: f32, t: &mut Trainer| {
            let ws: Vec<f32> = w.iter().zip(&d).map(|(a, b)| a + s * h * b).collect();
            p.loss_acc(t, &ws).unwrap().0
        };
        let fd = (at(1.0, &mut t) - at(-1.0, &mut t)) / (2.0 * h as f64);
        let an = dot(&g, &d);
        assert!(
            (fd - an).abs() < 2e-2 * an.abs().max(1e-3),
            "fd {fd} vs analytic {an}"
        );
    }
}
