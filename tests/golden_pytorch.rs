//! Golden trajectories from PyTorch: `torch.optim` and `pytorch_optimizer` (SAM, GSAM, LookSAM,
//! FriendlySAM) plus a re-implementation of the official ASAM algorithm, recorded by
//! `tools/golden/make_golden.py` into `tests/golden/*.json` (see `tools/golden/README.md`).
//!
//! Every case trains the MLP `[6, 12, 8, 3]` (tanh, mean cross-entropy) for 20 steps on fixed
//! mini-batches. Here the same 20 steps run through `samkit::Optimizer` with the hand-written
//! MLP of `tests/common/mlp.rs`, once with the closure form (`Optimizer::step`) and once with
//! the explicit `first_step` / `second_step`; both must give bit-identical weights, and after
//! every step the weights must match the reference to `max|a − b| / max(max|b|, 1e-3) ≤ 1e-5`.
//! The trajectories are replayed from the initial weights, never re-synchronised, so rounding
//! differences accumulate over the 20 steps exactly as they would in training.
//!
//! Where the reference differs from ALGORITHMS.md (documented per case below and in the README):
//! - LookSAM: `pytorch_optimizer.LookSAM` keeps `g_v` and its norms per tensor; our
//!   `LookSam { per_tensor: true }` reproduces it (and the global default must *not*).
//! - GSAM: the reference un-perturbs by subtracting `e` (`w + e − e`, which can differ from `w`
//!   by an ulp) where we restore an exact copy, and it computes the projection as
//!   `cos·‖g‖/(‖g_p‖ + eps)·g_p` with `cos = ⟨g, g_p⟩ / (‖g‖‖g_p‖ + eps)` instead of
//!   `⟨g, g_p⟩ / (‖g_p‖² + eps)`. Both are float rounding (eps = 1e-12 against norms ~0.1).
//! - FriendlySAM: the reference updates `m` with `lerp(m, g, 1 − λ)` (= `m + (1 − λ)(g − m)`)
//!   where we compute `λm + (1 − λ)g`; equal up to rounding.
//! - ASAM: the official code restores the weights by subtracting `e`; the generator (as asked)
//!   restores by copy, which is our contract, so the comparison is like for like.
mod common;

use std::path::{Path, PathBuf};

use common::mlp::Mlp;
use samkit::{
    Adam, Asam, BaseOptimizer, Eval, FirstOutcome, FriendlySam, GradRequest, Gsam, LookSam,
    Optimizer, Outcome, RmsProp, Rule, Sam, Sgd,
};
use serde_json::Value;

/// `max|a − b| / max(max|b|, 1e-3)` per step.
const TOL: f64 = 1e-5;
/// Adam and RMSprop form `1 − β`, `1 − α` in f64 as torch does (samkit_core::base); with the
/// f32 forms their trajectories were ~1.5e-6 away (RMSprop), with torch's ~3e-7 at most.
const TOL_DERIVED: f64 = 5e-7;

/// Every golden file, each checked by a test below.
const CASES: &[&str] = &[
    "sgd_plain",
    "sgd_momentum_wd_dampening",
    "sgd_nesterov",
    "adam_wd",
    "adamw_wd",
    "rmsprop_plain",
    "rmsprop_momentum_centered_wd",
    "sgd_maximize",
    "sgd_nesterov_maximize",
    "rmsprop_maximize",
    "sam_sgd",
    "sam_adaptive_sgd",
    "sam_adam",
    "friendlysam_sgd",
    "gsam_constant_lr",
    "gsam_steplr",
    "looksam_sgd",
    "asam_sgd",
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

struct Golden {
    name: String,
    dims: Vec<usize>,
    base: BaseOptimizer,
    rule: Rule,
    lrs: Vec<f32>,
    rhos: Option<Vec<f64>>,
    x: Vec<f32>,
    y: Vec<usize>,
    batches: Vec<Vec<usize>>,
    order: Vec<usize>,
    init: Vec<f32>,
    losses: Vec<f32>,
    grad0: Option<Vec<f32>>,
    traj: Vec<Vec<f32>>,
    /// The same reference run in float64 (rounded to f32), for ill-conditioned cases.
    traj_f64: Option<Vec<Vec<f32>>>,
}

fn f64_of(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"))
}

fn f32_of(v: &Value, key: &str) -> f32 {
    f64_of(v, key) as f32
}

fn bool_of(v: &Value, key: &str) -> bool {
    v[key]
        .as_bool()
        .unwrap_or_else(|| panic!("`{key}` is not a bool in {v}"))
}

/// An option the generator records only when set (absent: torch's default, False).
fn opt_bool(v: &Value, key: &str) -> bool {
    match v.get(key) {
        None => false,
        Some(_) => bool_of(v, key),
    }
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("an array of integers")
        .iter()
        .map(|x| x.as_u64().expect("an integer") as usize)
        .collect()
}

/// The sum of the float32 bit patterns, as the generator computes it.
fn bits_sum(a: &[f32]) -> u64 {
    a.iter().map(|x| x.to_bits() as u64).sum()
}

/// The base optimizer from torch's argument names.
fn parse_base(b: &Value) -> BaseOptimizer {
    match b["type"].as_str().expect("base.type") {
        "sgd" => BaseOptimizer::Sgd(Sgd {
            lr: f32_of(b, "lr"),
            momentum: f32_of(b, "momentum"),
            dampening: f32_of(b, "dampening"),
            nesterov: bool_of(b, "nesterov"),
            weight_decay: f32_of(b, "weight_decay"),
            maximize: opt_bool(b, "maximize"),
        }),
        kind @ ("adam" | "adamw") => {
            let betas = f32s(&b["betas"]);
            let c = Adam {
                lr: f32_of(b, "lr"),
                beta1: betas[0],
                beta2: betas[1],
                eps: f32_of(b, "eps"),
                weight_decay: f32_of(b, "weight_decay"),
                amsgrad: opt_bool(b, "amsgrad"),
                maximize: opt_bool(b, "maximize"),
            };
            if kind == "adam" {
                BaseOptimizer::Adam(c)
            } else {
                BaseOptimizer::AdamW(c)
            }
        }
        "rmsprop" => BaseOptimizer::RmsProp(RmsProp {
            lr: f32_of(b, "lr"),
            alpha: f32_of(b, "alpha"),
            eps: f32_of(b, "eps"),
            momentum: f32_of(b, "momentum"),
            centered: bool_of(b, "centered"),
            weight_decay: f32_of(b, "weight_decay"),
            maximize: opt_bool(b, "maximize"),
        }),
        other => panic!("unknown base optimizer {other}"),
    }
}

/// The rule from the reference's argument names.
fn parse_rule(r: &Value) -> Rule {
    match r["type"].as_str().expect("rule.type") {
        "base" => Rule::Base,
        "sam" => Rule::Sam(Sam {
            rho: f32_of(r, "rho"),
            adaptive: bool_of(r, "adaptive"),
            eps_p: None,
            grad_centralization: false,
        }),
        "friendlysam" => Rule::FriendlySam(FriendlySam {
            rho: f32_of(r, "rho"),
            sigma: f32_of(r, "sigma"),
            lambda: f32_of(r, "lmbda"),
            adaptive: false,
            eps_p: None,
        }),
        "gsam" => Rule::Gsam(Gsam {
            rho_max: f32_of(r, "rho_max"),
            rho_min: f32_of(r, "rho_min"),
            alpha: f32_of(r, "alpha"),
            lr_max: f32_of(r, "max_lr"),
            lr_min: f32_of(r, "min_lr"),
            eps_p: None,
        }),
        // pytorch_optimizer.LookSAM is per-tensor (g_v, ‖g‖ and ‖g_v‖ of each tensor).
        "looksam" => Rule::LookSam(LookSam {
            rho: f32_of(r, "rho"),
            k: r["k"].as_u64().expect("k"),
            alpha: f32_of(r, "alpha"),
            per_tensor: true,
            eps_p: None,
        }),
        "asam" => Rule::Asam(Asam {
            rho: f32_of(r, "rho"),
            eta: f32_of(r, "eta"),
            filterwise: false,
            eps_p: None,
        }),
        other => panic!("unknown rule {other}"),
    }
}

fn load(name: &str) -> Golden {
    let path = golden_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (see tools/golden/README.md)", path.display()));
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["case"].as_str(), Some(name));
    let dims = usizes(&v["dims"]);
    let steps = v["steps"].as_u64().expect("steps") as usize;
    let g = Golden {
        name: name.to_string(),
        base: parse_base(&v["base"]),
        rule: parse_rule(&v["rule"]),
        lrs: f32s(&v["lr_per_step"]),
        rhos: v.get("rho_per_step").map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        }),
        x: f32s(&v["x"]),
        y: usizes(&v["y"]),
        batches: v["batches"]
            .as_array()
            .expect("batches")
            .iter()
            .map(usizes)
            .collect(),
        order: usizes(&v["batch_order"]),
        init: f32s(&v["init"]),
        losses: f32s(&v["loss_per_step"]),
        grad0: v.get("grad0").map(f32s),
        traj: v["trajectory"]
            .as_array()
            .expect("trajectory")
            .iter()
            .map(f32s)
            .collect(),
        traj_f64: v
            .get("trajectory_f64")
            .map(|t| t.as_array().unwrap().iter().map(f32s).collect()),
        dims,
    };
    // The floats were read back exactly (the generator checks the decimal forms; this checks
    // the reader).
    assert_eq!(bits_sum(&g.init), v["init_bits_sum"].as_u64().unwrap());
    assert_eq!(bits_sum(&g.x), v["x_bits_sum"].as_u64().unwrap());
    // The reference model is exactly Layout::mlp(dims).
    let mlp = Mlp::new(&g.dims);
    let layout = mlp.layout();
    let names: Vec<&str> = v["param_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let shapes: Vec<Vec<usize>> = v["param_shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(usizes)
        .collect();
    assert_eq!(
        layout
            .segments()
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        names
    );
    assert_eq!(
        layout
            .segments()
            .iter()
            .map(|s| s.shape.clone())
            .collect::<Vec<_>>(),
        shapes
    );
    let n = layout.len();
    assert_eq!(g.init.len(), n);
    assert_eq!(g.x.len(), g.y.len() * g.dims[0]);
    assert_eq!(g.traj.len(), steps);
    assert!(g.traj.iter().all(|w| w.len() == n));
    assert_eq!(g.lrs.len(), steps);
    assert_eq!(g.order.len(), steps);
    assert_eq!(g.losses.len(), steps);
    g
}

impl Golden {
    /// Inputs and labels of the mini-batch used at step `t`.
    fn batch(&self, t: usize) -> (Vec<f32>, Vec<usize>) {
        let d = self.dims[0];
        let idx = &self.batches[self.order[t]];
        let x = idx
            .iter()
            .flat_map(|&i| self.x[i * d..(i + 1) * d].iter().copied())
            .collect();
        let y = idx.iter().map(|&i| self.y[i]).collect();
        (x, y)
    }
}

#[derive(Clone, Copy, Debug)]
enum Drive {
    /// `Optimizer::step` with a gradient oracle.
    Closure,
    /// `first_step`, then (if perturbed) `second_step`.
    Explicit,
}

/// Replays the case with `rule`; returns the weights after every step and the clean loss at
/// the start of every step.
fn replay(g: &Golden, rule: &Rule, drive: Drive) -> (Vec<Vec<f32>>, Vec<f64>) {
    let mlp = Mlp::new(&g.dims);
    let mut opt = Optimizer::new(mlp.layout(), rule.clone(), g.base.clone()).expect("optimizer");
    let mut w = g.init.clone();
    let n = w.len();
    let mut out = Vec::with_capacity(g.traj.len());
    let mut losses = Vec::with_capacity(g.traj.len());
    for t in 0..g.traj.len() {
        // The schedule: the learning rate torch used at this step.
        opt.set_lr(g.lrs[t]).unwrap();
        let (xb, yb) = g.batch(t);
        let loss = match drive {
            Drive::Closure => {
                let report = opt
                    .step(&mut w, |req, wp: &Vec<f32>, grad: &mut [f32]| match req {
                        GradRequest::Batch(_) => Ok(Eval {
                            loss: mlp.loss_grad(wp, &xb, &yb, grad),
                            samples: yb.len(),
                        }),
                        other => panic!("{}: unexpected request {other:?}", g.name),
                    })
                    .unwrap();
                assert_eq!(report.outcome, Outcome::Applied, "{} step {t}", g.name);
                report.loss
            }
            Drive::Explicit => {
                let mut grad = vec![0f32; n];
                let loss = mlp.loss_grad(&w, &xb, &yb, &mut grad);
                match opt.first_step(&mut w, &grad).unwrap() {
                    FirstOutcome::Perturbed => {
                        mlp.loss_grad(&w, &xb, &yb, &mut grad);
                        let o = opt.second_step(&mut w, &grad).unwrap();
                        assert_eq!(o, Outcome::Applied, "{} step {t}", g.name);
                    }
                    FirstOutcome::Applied => {}
                    FirstOutcome::Skipped => panic!("{}: step {t} skipped", g.name),
                }
                loss
            }
        };
        losses.push(loss);
        out.push(w.clone());
    }
    assert_eq!(opt.steps(), g.traj.len() as u64);
    assert_eq!(opt.skipped_steps(), 0);
    (out, losses)
}

/// The clean loss at the start of every step, against torch's (a loose sanity check: the
/// weights themselves are compared strictly).
fn check_losses(g: &Golden, losses: &[f64]) {
    for (t, (&ours, &theirs)) in losses.iter().zip(&g.losses).enumerate() {
        let theirs = theirs as f64;
        assert!(
            (ours - theirs).abs() <= 1e-4 * theirs.abs().max(1.0),
            "{} step {t}: loss {ours} vs torch {theirs}",
            g.name
        );
    }
}

/// `max|a − b| / max(max|b|, 1e-3)` at every step.
fn rel_errors(ours: &[Vec<f32>], reference: &[Vec<f32>]) -> Vec<f64> {
    ours.iter()
        .zip(reference)
        .map(|(a, b)| {
            let diff = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| (x as f64 - y as f64).abs())
                .fold(0.0, f64::max);
            let scale = b.iter().map(|&y| (y as f64).abs()).fold(1e-3, f64::max);
            diff / scale
        })
        .collect()
}

/// Runs both drives, checks they agree bit for bit, and returns the weights after every step
/// and the clean losses.
fn replay_both(g: &Golden, rule: &Rule) -> (Vec<Vec<f32>>, Vec<f64>) {
    let (closure, losses) = replay(g, rule, Drive::Closure);
    let (explicit, _) = replay(g, rule, Drive::Explicit);
    for (t, (a, b)) in closure.iter().zip(&explicit).enumerate() {
        let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same,
            "{}: closure and explicit forms differ at step {t}",
            g.name
        );
    }
    (closure, losses)
}

/// Loads a case, replays it and asserts the tolerance at every step; returns the worst error.
fn check(name: &str, tol: f64) -> f64 {
    let g = load(name);
    let (ours, losses) = replay_both(&g, &g.rule);
    check_losses(&g, &losses);
    let errs = rel_errors(&ours, &g.traj);
    let (worst_t, worst) = errs
        .iter()
        .copied()
        .enumerate()
        .fold((0, 0.0), |a, (t, e)| if e > a.1 { (t, e) } else { a });
    println!(
        "{name:<30} worst relative error {worst:.3e} (step {worst_t}), final {:.3e}",
        errs.last().unwrap()
    );
    let per_step: Vec<String> = errs.iter().map(|e| format!("{e:.2e}")).collect();
    for (t, &e) in errs.iter().enumerate() {
        assert!(
            e <= tol,
            "{name}: step {t}: relative error {e:.3e} > {tol:.0e} (per step: {per_step:?})"
        );
    }
    worst
}

// ---- torch.optim ---------------------------------------------------------------------------

#[test]
fn sgd_plain() {
    check("sgd_plain", TOL);
}

#[test]
fn sgd_momentum_weight_decay_dampening() {
    check("sgd_momentum_wd_dampening", TOL);
}

#[test]
fn sgd_nesterov() {
    check("sgd_nesterov", TOL);
}

#[test]
fn adam_with_weight_decay() {
    check("adam_wd", TOL_DERIVED);
}

#[test]
fn adamw_with_weight_decay() {
    check("adamw_wd", TOL_DERIVED);
}

#[test]
fn rmsprop_plain() {
    check("rmsprop_plain", TOL_DERIVED);
}

#[test]
fn rmsprop_momentum_centered_weight_decay() {
    check("rmsprop_momentum_centered_wd", TOL);
}

/// A maximize case: checks the trajectory, then that the same run without `maximize` is far
/// from the reference (the loss rises under maximize, so the two runs part at once), so that
/// the case tests the option and not only the rest of the optimizer.
fn check_maximize(name: &str) {
    check(name, TOL);
    let mut g = load(name);
    match &mut g.base {
        BaseOptimizer::Sgd(c) => c.maximize = false,
        BaseOptimizer::RmsProp(c) => c.maximize = false,
        other => panic!("{name}: {} is not a maximize case here", other.name()),
    }
    let (descent, _) = replay_both(&g, &g.rule);
    let worst = rel_errors(&descent, &g.traj)
        .into_iter()
        .fold(0.0, f64::max);
    println!("{name} without maximize (not the reference): worst {worst:.3e}");
    assert!(
        worst > 1e4 * TOL,
        "{name}: the run without maximize should not match the reference ({worst:.3e})"
    );
    // Ascent: the loss at the last step is above the first (cross-entropy of a fresh MLP).
    assert!(g.losses.last() > g.losses.first(), "{name}: {:?}", g.losses);
}

/// torch: `grad = -grad` first, then the weight decay, the momentum buffer (cloned on the
/// first step, blended with `1 − dampening` after) and the step.
#[test]
fn sgd_maximize() {
    check_maximize("sgd_maximize");
}

#[test]
fn sgd_nesterov_maximize() {
    check_maximize("sgd_nesterov_maximize");
}

/// torch: `grad = -grad` first, then the weight decay, `square_avg`, `grad_avg` (centered) and
/// the momentum buffer from the negated gradient.
#[test]
fn rmsprop_maximize() {
    check_maximize("rmsprop_maximize");
}

// ---- pytorch_optimizer ---------------------------------------------------------------------

#[test]
fn sam_sgd() {
    check("sam_sgd", TOL);
}

#[test]
fn sam_adaptive_sgd() {
    check("sam_adaptive_sgd", TOL);
}

#[test]
fn sam_adam() {
    check("sam_adam", TOL);
}

/// The reference's EMA is `lerp(m, g, 1 − λ)`; ours is `λm + (1 − λ)g`: equal up to rounding.
#[test]
fn friendlysam_sgd() {
    check("friendlysam_sgd", TOL);
}

/// GSAM's reference restores by subtraction and places eps inside its cosine; both are
/// rounding-level differences (see the module docs).
#[test]
fn gsam_constant_lr() {
    let g = load("gsam_constant_lr");
    check_gsam_rho(&g);
    check("gsam_constant_lr", TOL);
}

/// StepLR ×0.1 at step 10; `ProportionScheduler` maps lr ∈ [min_lr, max_lr] to
/// ρ ∈ [rho_min, rho_max]; torch's call order is `opt.step()`, `sched.step()`,
/// `opt.update_rho_t()`, so the ρ of step t follows the lr of step t, which `Gsam::rho_at`
/// reproduces from `set_lr`.
#[test]
fn gsam_steplr() {
    let g = load("gsam_steplr");
    check_gsam_rho(&g);
    check("gsam_steplr", TOL);
}

/// Our `Gsam::rho_at(lr_t)` is the reference's ρ_t at every step.
fn check_gsam_rho(g: &Golden) {
    let Rule::Gsam(c) = &g.rule else {
        panic!("{} is not a GSAM case", g.name)
    };
    let rhos = g.rhos.as_ref().expect("rho_per_step");
    for (t, (&lr, &rho)) in g.lrs.iter().zip(rhos).enumerate() {
        let ours = c.rho_at(lr) as f64;
        assert!(
            (ours - rho).abs() <= 1e-6 * rho.abs(),
            "{} step {t}: rho {ours} vs reference {rho}",
            g.name
        );
    }
}

/// pytorch_optimizer.LookSAM keeps `g_v` per tensor: `per_tensor: true` reproduces it, and the
/// global `g_v` of ALGORITHMS.md (the default) must visibly differ, or the case would not
/// test the option.
///
/// This case cannot meet 1e-5 against the float32 reference, for a reason that is the
/// reference's: it normalises each tensor's `g_v = g_s − (⟨g, g_s⟩/‖g‖²)·g` to `α‖g‖`, and for
/// the 3-element `fc2.bias` `g` and `g_s` are almost parallel (`‖g_v‖/‖g_s‖ ≈ 9e-3` at step 0),
/// so the float32 rounding of `g_v` (and any difference already in `g`, `g_s`) is amplified
/// ~100× into the update at every step. The reference's *own* float32 run is therefore up to
/// ~3e-5 away from its exact (float64) trajectory, which the file also holds (ours, with its
/// f64 reductions, stays within ~8e-6 of it). We check:
/// (1) against the float32 reference, the strictest bound that covers the reference's own
///     rounding noise: `LOOKSAM_TOL` = 5e-5 (observed 3.5e-5);
/// (2) against the reference's float64 trajectory, the usual 1e-5 at every step;
/// (3) that ours is never much less accurate than the reference's float32 run (within 2× its
///     distance to the float64 trajectory + 1e-6), so the gap to the float32 file is rounding
///     noise, not a difference of algorithm.
const LOOKSAM_TOL: f64 = 5e-5;

#[test]
fn looksam_sgd() {
    let g = load("looksam_sgd");
    let (ours, losses) = replay_both(&g, &g.rule);
    check_losses(&g, &losses);
    let exact = g.traj_f64.as_ref().expect("trajectory_f64");
    let e32 = rel_errors(&ours, &g.traj);
    let e_ours = rel_errors(&ours, exact);
    let e_ref = rel_errors(&g.traj, exact);
    let fmt = |e: &[f64]| {
        e.iter()
            .map(|x| format!("{x:.1e}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("looksam_sgd  ours vs torch f32:  {}", fmt(&e32));
    println!("looksam_sgd  ours vs exact f64:  {}", fmt(&e_ours));
    println!("looksam_sgd  torch f32 vs f64:   {}", fmt(&e_ref));
    println!(
        "looksam_sgd                    worst relative error {:.3e} (vs f64: ours {:.3e}, torch {:.3e})",
        e32.iter().copied().fold(0.0, f64::max),
        e_ours.iter().copied().fold(0.0, f64::max),
        e_ref.iter().copied().fold(0.0, f64::max)
    );
    for t in 0..ours.len() {
        assert!(
            e32[t] <= LOOKSAM_TOL,
            "step {t}: {:.3e} vs torch f32",
            e32[t]
        );
        assert!(e_ours[t] <= TOL, "step {t}: {:.3e} vs torch f64", e_ours[t]);
        assert!(
            e_ours[t] <= 2.0 * e_ref[t] + 1e-6,
            "step {t}: ours is {:.3e} from the exact trajectory, torch f32 only {:.3e}",
            e_ours[t],
            e_ref[t]
        );
    }

    let Rule::LookSam(c) = &g.rule else {
        panic!("not a LookSAM case")
    };
    let global = Rule::LookSam(LookSam {
        per_tensor: false,
        ..c.clone()
    });
    let worst = rel_errors(&replay_both(&g, &global).0, &g.traj)
        .into_iter()
        .fold(0.0, f64::max);
    println!("looksam_sgd with a global g_v (not the reference): worst {worst:.3e}");
    assert!(
        worst > 100.0 * LOOKSAM_TOL,
        "the global LookSAM variant should not match the per-tensor reference ({worst:.3e})"
    );
}

// ---- ASAM (official algorithm, re-implemented in the generator) ----------------------------

#[test]
fn asam_sgd() {
    check("asam_sgd", TOL);
}

// ---- the harness itself --------------------------------------------------------------------

/// The MLP of `tests/common/mlp.rs` against torch autograd: the loss and gradient at the
/// initial weights on the first batch.
#[test]
fn mlp_matches_torch_autograd() {
    let mut checked = 0;
    for name in CASES {
        let g = load(name);
        let Some(grad0) = &g.grad0 else { continue };
        let mlp = Mlp::new(&g.dims);
        let (xb, yb) = g.batch(0);
        let mut grad = vec![0f32; grad0.len()];
        let loss = mlp.loss_grad(&g.init, &xb, &yb, &mut grad);
        assert!(
            (loss - g.losses[0] as f64).abs() <= 1e-6,
            "{name}: loss {loss}"
        );
        let err = rel_errors(&[grad], std::slice::from_ref(grad0))[0];
        assert!(err <= 1e-6, "{name}: gradient relative error {err:.3e}");
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn mlp_gradient_matches_finite_differences() {
    let mlp = Mlp::new(&[3, 4, 2]);
    let n = mlp.num_params();
    let w: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
    let x = [0.5f32, -1.0, 0.25, 1.5, 0.0, -0.75];
    let y = [1usize, 0];
    let mut g = vec![0f32; n];
    mlp.loss_grad(&w, &x, &y, &mut g);
    for i in 0..n {
        let h = 1e-2f32;
        let (mut wp, mut wm) = (w.clone(), w.clone());
        wp[i] += h;
        wm[i] -= h;
        let fd = (mlp.loss(&wp, &x, &y) - mlp.loss(&wm, &x, &y)) / (wp[i] - wm[i]) as f64;
        assert!(
            (fd - g[i] as f64).abs() < 1e-4,
            "param {i}: {fd} vs {}",
            g[i]
        );
    }
}

/// Every JSON file in tests/golden is a known case with a test, and every case has its file.
#[test]
fn every_golden_file_has_a_test() {
    let mut found: Vec<String> = std::fs::read_dir(golden_dir())
        .expect("tests/golden")
        .filter_map(|e| {
            let p = e.ok()?.path();
            (p.extension()? == "json").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    found.sort();
    let mut known: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    known.sort();
    assert_eq!(found, known);
}
