//! Mini-batch training of a linear model with SGD, SAM, SSAM-F and FriendlySAM through
//! `samkit_core::Optimizer` (the survey's figures 3 and 4).
use rayon::prelude::*;
use serde::Serialize;

use crate::error::Result;
use crate::linalg;
use crate::progress;
use crate::rng::Rng;
use samkit_core::{
    BaseOptimizer, Eval, FriendlySam, GradRequest, Layout, MaskKind, Optimizer, Rule, Sam, Ssam,
};

/// A regression data set: rows of features and targets.
#[derive(Clone, Debug)]
pub struct Data {
    pub x: Vec<Vec<f64>>,
    pub y: Vec<f64>,
}

impl Data {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn features(&self) -> usize {
        self.x.first().map_or(0, |r| r.len())
    }
}

/// `y = x·w* + b* + noise·ε` with correlated features of decreasing scale (so plain SGD
/// converges slowly along some directions). Returns (train, test, w*, b*).
pub fn generate(
    samples: usize,
    test: usize,
    d: usize,
    noise: f64,
    seed: u64,
) -> (Data, Data, Vec<f64>, f64) {
    let mut rng = Rng::stream(seed, 0x11);
    let w_star: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
    let b_star = 2.0;
    let scales: Vec<f64> = (0..d)
        .map(|j| 10f64.powf(-(j as f64) / (d.max(2) - 1) as f64))
        .collect();
    let make = |n: usize, rng: &mut Rng| {
        let mut x = Vec::with_capacity(n);
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            let mut row = Vec::with_capacity(d);
            let mut prev = 0.0;
            for &s in &scales {
                let v = 0.6 * prev + rng.normal() * s;
                row.push(v);
                prev = v;
            }
            y.push(linalg::dot(&row, &w_star) + b_star + noise * rng.normal());
            x.push(row);
        }
        Data { x, y }
    };
    let train = make(samples, &mut rng);
    let test = make(test, &mut rng);
    (train, test, w_star, b_star)
}

/// Layout of the model: `linear.weight` `[1, d]` then `linear.bias` `[1]`.
pub fn layout(d: usize) -> Result<Layout> {
    let mut l = Layout::new();
    l.push("linear.weight", &[1, d])?;
    l.push("linear.bias", &[1])?;
    Ok(l)
}

fn predict(w: &[f32], row: &[f64]) -> f64 {
    let d = row.len();
    row.iter()
        .zip(&w[..d])
        .map(|(x, &wi)| x * wi as f64)
        .sum::<f64>()
        + w[d] as f64
}

/// Mean squared error and R² of the model on a data set.
pub fn metrics(w: &[f32], data: &Data) -> (f64, f64) {
    let n = data.len() as f64;
    let mean = data.y.iter().sum::<f64>() / n;
    let (mut sse, mut sst) = (0.0, 0.0);
    for (row, &y) in data.x.iter().zip(&data.y) {
        sse += (predict(w, row) - y).powi(2);
        sst += (y - mean).powi(2);
    }
    let r2 = if sst > 0.0 { 1.0 - sse / sst } else { 0.0 };
    (sse / n, r2)
}

/// Gradient of the batch MSE `(1/B) Σ (x_i·w + b − y_i)²` into `g`; returns the loss.
pub fn batch_grad(w: &[f32], data: &Data, idx: &[usize], g: &mut [f32]) -> f64 {
    let d = data.features();
    let mut acc = vec![0.0f64; d + 1];
    let mut loss = 0.0;
    for &i in idx {
        let r = predict(w, &data.x[i]) - data.y[i];
        loss += r * r;
        for (a, x) in acc.iter_mut().zip(&data.x[i]) {
            *a += 2.0 * r * x;
        }
        acc[d] += 2.0 * r;
    }
    let b = idx.len().max(1) as f64;
    for (gi, a) in g.iter_mut().zip(acc) {
        *gi = (a / b) as f32;
    }
    loss / b
}

/// SSAM-F's empirical Fisher `Σ_i (∇ℓ_i)²` over the given samples, `ℓ_i = (x_i·w + b − y_i)²`.
pub fn fisher(w: &[f32], data: &Data, idx: &[usize], out: &mut [f32]) {
    let d = data.features();
    let mut acc = vec![0.0f64; d + 1];
    for &i in idx {
        let r = predict(w, &data.x[i]) - data.y[i];
        for (a, x) in acc.iter_mut().zip(&data.x[i]) {
            *a += (2.0 * r * x).powi(2);
        }
        acc[d] += (2.0 * r).powi(2);
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a as f32;
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TrainParams {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub rho: f64,
    pub sparsity: f64,
    pub fisher_samples: usize,
    pub mask_interval: u64,
}

/// The four optimizers of the survey's figures 3 and 4.
pub fn rules(p: &TrainParams) -> Vec<(&'static str, Rule)> {
    let rho = p.rho as f32;
    vec![
        ("SGD", Rule::Base),
        (
            "SAM",
            Rule::Sam(Sam {
                rho,
                adaptive: false,
                eps_p: None,
                grad_centralization: false,
            }),
        ),
        (
            "SSAM-F",
            Rule::Ssam(Ssam {
                rho,
                sparsity: p.sparsity as f32,
                interval: p.mask_interval,
                mask: MaskKind::Fisher {
                    samples: p.fisher_samples,
                },
                ..Ssam::fisher()
            }),
        ),
        (
            "FriendlySAM",
            Rule::FriendlySam(FriendlySam {
                rho,
                ..FriendlySam::default()
            }),
        ),
    ]
}

#[derive(Clone, Debug, Serialize)]
pub struct History {
    pub optimizer: String,
    /// Mean mini-batch loss of each epoch.
    pub epoch_loss: Vec<f64>,
    /// Train-set MSE and R² after each epoch.
    pub train_mse: Vec<f64>,
    pub train_r2: Vec<f64>,
    pub test_mse: Vec<f64>,
    pub test_r2: Vec<f64>,
    pub mask_updates: u64,
    pub skipped_steps: u64,
}

/// Trains one model; every optimizer sees the same shuffles (stream `seed`).
pub fn train(
    name: &str,
    rule: Rule,
    p: &TrainParams,
    train: &Data,
    test: &Data,
    seed: u64,
    tick: &dyn Fn(),
) -> Result<History> {
    let d = train.features();
    let base = BaseOptimizer::sgd(p.lr as f32, p.momentum as f32, 0.0);
    let mut opt = Optimizer::new(layout(d)?, rule, base)?;
    let mut w = vec![0.0f32; d + 1];
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut shuffle_rng = Rng::stream(seed, 0x22);
    let mut fisher_rng = Rng::stream(seed, 0x33);
    let mut h = History {
        optimizer: name.to_string(),
        epoch_loss: Vec::new(),
        train_mse: Vec::new(),
        train_r2: Vec::new(),
        test_mse: Vec::new(),
        test_r2: Vec::new(),
        mask_updates: 0,
        skipped_steps: 0,
    };
    for _ in 0..p.epochs {
        shuffle_rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        let mut batches = 0usize;
        for idx in order.chunks(p.batch_size) {
            let report = opt.step(&mut w, |req, w: &Vec<f32>, g| match req {
                GradRequest::Batch(_) => Ok(Eval {
                    loss: batch_grad(w, train, idx, g),
                    samples: idx.len(),
                }),
                GradRequest::Fisher { samples } => {
                    let pick: Vec<usize> = (0..samples)
                        .map(|_| fisher_rng.below(train.len()))
                        .collect();
                    fisher(w, train, &pick, g);
                    Ok(Eval { loss: 0.0, samples })
                }
                other => Err(samkit_core::Error::Oracle(format!(
                    "linear regression has no {other:?} gradient"
                ))),
            })?;
            loss_sum += report.loss;
            batches += 1;
        }
        h.epoch_loss.push(loss_sum / batches.max(1) as f64);
        let (m, r) = metrics(&w, train);
        h.train_mse.push(m);
        h.train_r2.push(r);
        let (m, r) = metrics(&w, test);
        h.test_mse.push(m);
        h.test_r2.push(r);
        tick();
    }
    h.mask_updates = opt.mask_updates();
    h.skipped_steps = opt.skipped_steps();
    Ok(h)
}

pub fn train_all(
    p: &TrainParams,
    train_set: &Data,
    test_set: &Data,
    seed: u64,
) -> Result<Vec<History>> {
    let rules = rules(p);
    let pb = progress::bar((rules.len() * p.epochs) as u64, "linreg epochs");
    let tick = || pb.inc(1);
    let out = rules
        .into_par_iter()
        .map(|(name, rule)| train(name, rule, p, train_set, test_set, seed, &tick))
        .collect::<Result<Vec<_>>>();
    pb.finish_and_clear();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> TrainParams {
        TrainParams {
            epochs: 20,
            batch_size: 16,
            lr: 0.02,
            momentum: 0.0,
            rho: 0.05,
            sparsity: 0.5,
            fisher_samples: 32,
            mask_interval: 5,
        }
    }

    #[test]
    fn batch_gradient_matches_finite_differences() {
        let (train, _, _, _) = generate(20, 1, 4, 0.1, 1);
        let idx: Vec<usize> = (0..20).collect();
        let w = vec![0.3f32, -0.2, 0.1, 0.5, 1.0];
        let mut g = vec![0.0f32; 5];
        let loss = batch_grad(&w, &train, &idx, &mut g);
        assert!((loss - metrics(&w, &train).0).abs() < 1e-9);
        for k in 0..5 {
            let h = 1e-3f32;
            let mut wp = w.clone();
            wp[k] += h;
            let mut wm = w.clone();
            wm[k] -= h;
            let mut tmp = vec![0.0f32; 5];
            let fd = (batch_grad(&wp, &train, &idx, &mut tmp)
                - batch_grad(&wm, &train, &idx, &mut tmp))
                / (2.0 * h as f64);
            assert!(
                (fd - g[k] as f64).abs() < 1e-3 * (1.0 + fd.abs()),
                "k = {k}: {fd} vs {}",
                g[k]
            );
        }
    }

    #[test]
    fn fisher_is_the_sum_of_squared_per_sample_gradients() {
        let (train, _, _, _) = generate(5, 1, 3, 0.1, 2);
        let w = vec![0.1f32, 0.2, 0.3, 0.4];
        let mut f = vec![0.0f32; 4];
        fisher(&w, &train, &[0, 1, 2], &mut f);
        let mut want = [0.0f64; 4];
        for i in 0..3 {
            let mut g = vec![0.0f32; 4];
            batch_grad(&w, &train, &[i], &mut g);
            for k in 0..4 {
                want[k] += (g[k] as f64).powi(2);
            }
        }
        for k in 0..4 {
            assert!((f[k] as f64 - want[k]).abs() < 1e-4 * (1.0 + want[k]));
        }
    }

    #[test]
    fn every_optimizer_fits_the_data() {
        let (train_set, test_set, _, _) = generate(400, 100, 5, 0.3, 3);
        let hs = train_all(&params(), &train_set, &test_set, 7).unwrap();
        assert_eq!(hs.len(), 4);
        for h in &hs {
            assert_eq!(h.train_r2.len(), 20);
            assert!(
                h.train_r2[19] > 0.8,
                "{}: R² {}",
                h.optimizer,
                h.train_r2[19]
            );
            assert!(
                h.train_mse[19] < h.train_mse[0],
                "{} did not improve",
                h.optimizer
            );
            assert_eq!(h.skipped_steps, 0);
        }
        let ssam = hs.iter().find(|h| h.optimizer == "SSAM-F").unwrap();
        assert!(ssam.mask_updates > 0);
    }
}
