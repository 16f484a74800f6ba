//! One step of each rule on a quadratic `½ wᵀAw`, against values computed by hand in f64.
use samkit_core::{
    Asam, BaseOptimizer, FriendlySam, Gsam, ImbSam, Layout, LookSam, Optimizer, Rule, Sam, Ssam,
};

const A: [[f64; 3]; 3] = [[3.0, 0.5, 0.0], [0.5, 2.0, -0.4], [0.0, -0.4, 1.0]];
const W0: [f64; 3] = [0.8, -0.6, 0.3];
const LR: f64 = 0.1;

fn grad(w: &[f64]) -> Vec<f64> {
    (0..3)
        .map(|i| (0..3).map(|j| A[i][j] * w[j]).sum())
        .collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(a: f64, x: &[f64], y: &[f64]) -> Vec<f64> {
    x.iter().zip(y).map(|(x, y)| a * x + y).collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn layout() -> Layout {
    let mut l = Layout::new();
    l.push("w.weight", &[3]).unwrap();
    l
}

/// Runs one explicit two-pass step with the gradient of the quadratic, in f32.
fn one_step(opt: &mut Optimizer, w: &mut Vec<f32>) {
    let g = f32s(&grad(&f64s(w)));
    opt.first_step(w, &g).unwrap();
    let g2 = f32s(&grad(&f64s(w)));
    opt.second_step(w, &g2).unwrap();
}

fn sgd() -> BaseOptimizer {
    BaseOptimizer::sgd(LR as f32, 0.0, 0.0)
}

fn assert_close(got: &[f32], want: &[f64]) {
    for (g, w) in got.iter().zip(want) {
        assert!(
            (*g as f64 - w).abs() <= 2e-6 * w.abs().max(1e-3),
            "got {got:?}, want {want:?}"
        );
    }
}

#[test]
fn sam_step() {
    let rho = 0.05;
    let g = grad(&W0);
    let e: Vec<f64> = g.iter().map(|x| rho * x / norm(&g)).collect();
    let g2 = grad(&axpy(1.0, &e, &W0));
    let want = axpy(-LR, &g2, &W0);
    let mut opt = Optimizer::new(layout(), Rule::Sam(Sam::default()), sgd()).unwrap();
    let mut w = f32s(&W0);
    one_step(&mut opt, &mut w);
    assert_close(&w, &want);
}

#[test]
fn adaptive_sam_step() {
    let rho = 0.5;
    let g = grad(&W0);
    let tg: Vec<f64> = g.iter().zip(&W0).map(|(g, w)| w.abs() * g).collect();
    let e: Vec<f64> = g
        .iter()
        .zip(&W0)
        .map(|(g, w)| rho * w * w * g / norm(&tg))
        .collect();
    let want = axpy(-LR, &grad(&axpy(1.0, &e, &W0)), &W0);
    let rule = Rule::Sam(Sam {
        rho: rho as f32,
        adaptive: true,
        eps_p: None,
        grad_centralization: false,
    });
    let mut opt = Optimizer::new(layout(), rule, sgd()).unwrap();
    let mut w = f32s(&W0);
    one_step(&mut opt, &mut w);
    assert_close(&w, &want);
}

#[test]
fn asam_step_elementwise_and_filterwise() {
    let (rho, eta) = (0.5, 0.01);
    // Element-wise: T = |w| + η.
    let g = grad(&W0);
    let t: Vec<f64> = W0.iter().map(|w| w.abs() + eta).collect();
    let tg: Vec<f64> = g.iter().zip(&t).map(|(g, t)| t * g).collect();
    let e: Vec<f64> = tg
        .iter()
        .zip(&t)
        .map(|(x, t)| rho * t * x / norm(&tg))
        .collect();
    let want = axpy(-LR, &grad(&axpy(1.0, &e, &W0)), &W0);
    let rule = Rule::Asam(Asam {
        rho: rho as f32,
        eta: eta as f32,
        filterwise: false,
        eps_p: None,
    });
    let mut opt = Optimizer::new(layout(), rule, sgd()).unwrap();
    let mut w = f32s(&W0);
    one_step(&mut opt, &mut w);
    assert_close(&w, &want);

    // Filter-wise on a [1, 2] weight (one filter of two elements) and a [1] bias (T = 1).
    let mut l = Layout::new();
    l.push("conv.weight", &[1, 2]).unwrap();
    l.push("conv.bias", &[1]).unwrap();
    let tf = (W0[0] * W0[0] + W0[1] * W0[1]).sqrt() + eta;
    let t = [tf, tf, 1.0];
    let tg: Vec<f64> = g.iter().zip(&t).map(|(g, t)| t * g).collect();
    let e: Vec<f64> = tg
        .iter()
        .zip(&t)
        .map(|(x, t)| rho * t * x / norm(&tg))
        .collect();
    let want = axpy(-LR, &grad(&axpy(1.0, &e, &W0)), &W0);
    let rule = Rule::Asam(Asam {
        rho: rho as f32,
        eta: eta as f32,
        filterwise: true,
        eps_p: None,
    });
    let mut opt = Optimizer::new(l, rule, sgd()).unwrap();
    let mut w = f32s(&W0);
    one_step(&mut opt, &mut w);
    assert_close(&w, &want);
}

#[test]
fn friendly_sam_two_steps() {
    let (rho, sigma, lambda) = (0.05, 1.0, 0.9);
    // Step 1: m = g, a plain SAM step.
    let g1 = grad(&W0);
    let e1: Vec<f64> = g1.iter().map(|x| rho * x / norm(&g1)).collect();
    let w1 = axpy(-LR, &grad(&axpy(1.0, &e1, &W0)), &W0);
    // Step 2: d = g − σ·m_prev, m = λ·m_prev + (1 − λ)·g.
    let g2 = grad(&w1);
    let d: Vec<f64> = g2.iter().zip(&g1).map(|(g, m)| g - sigma * m).collect();
    let e2: Vec<f64> = d.iter().map(|x| rho * x / norm(&d)).collect();
    let w2 = axpy(-LR, &grad(&axpy(1.0, &e2, &w1)), &w1);
    let m2: Vec<f64> = g1
        .iter()
        .zip(&g2)
        .map(|(m, g)| lambda * m + (1.0 - lambda) * g)
        .collect();
    let mut opt =
        Optimizer::new(layout(), Rule::FriendlySam(FriendlySam::default()), sgd()).unwrap();
    let mut w = f32s(&W0);
    one_step(&mut opt, &mut w);
    assert_close(&w, &w1);
    one_step(&mut opt, &mut w);
    assert_close(&w, &w2);
    assert_close(opt.friendly_momentum(), &m2);
}

#[test]
fn gsam_step() {
    let (rho, alpha) = (0.05, 0.4);
    let g = grad(&W0);
    let e: Vec<f64> = g.iter().map(|x| rho * x / norm(&g)).collect();
    let gp = grad(&axpy(1.0, &e, &W0));
    let proj = dot(&g, &gp) / dot(&gp, &gp);
    let perp: Vec<f64> = g.iter().zip(&gp).map(|(g, p)| g - proj * p).collect();
    let d: Vec<f64> = gp.iter().zip(&perp).map(|(p, v)| p - alpha * v).collect();
    let want = axpy(-LR, &d, &W0);
    let rule = Rule::Gsam(Gsam {
        rho_max: rho as f32,
        rho_min: rho as f32,
        alpha: alpha as f32,
        ..Gsam::default()
    });
    let mut opt = Optimizer::new(layout(), rule, sgd()).unwrap();
    let mut w = f32s(&W0);
    one_step(&mut opt, &mut w);
    assert_close(&w, &want);
}

#[test]
fn gsam_rho_follows_the_learning_rate() {
    let c = Gsam {
        rho_max: 0.1,
        rho_min: 0.02,
        lr_max: 0.2,
        lr_min: 0.002,
        ..Gsam::default()
    };
    assert!((c.rho_at(0.2) - 0.1).abs() < 1e-7);
    assert!((c.rho_at(0.002) - 0.02).abs() < 1e-7);
    assert!((c.rho_at(0.101) - 0.06).abs() < 1e-6);
}

#[test]
fn ssam_fisher_step() {
    let rho = 0.05;
    // Fisher [3, 1, 2]: with s = 0.5, L = 3 − ⌈1.5⌉ = 1: only index 0 is perturbed.
    let g = grad(&W0);
    let e = [rho * g[0].signum(), 0.0, 0.0];
    let want = axpy(-LR, &grad(&axpy(1.0, &e, &W0)), &W0);
    let mut opt = Optimizer::new(layout(), Rule::Ssam(Ssam::fisher()), sgd()).unwrap();
    opt.set_fisher(&vec![3.0f32, 1.0, 2.0]).unwrap();
    let mut w = f32s(&W0);
    one_step(&mut opt, &mut w);
    assert_close(&w, &want);
    assert_eq!(opt.mask().unwrap().ones_iter().collect::<Vec<_>>(), vec![0]);
}

#[test]
fn imbsam_step() {
    let (rho, kappa) = (0.05, 2.0);
    // Head: the quadratic in A; tail: a separate quadratic 0.5·‖w − c‖².
    let c = [0.1, 0.2, -0.3];
    let tail = |w: &[f64]| -> Vec<f64> { w.iter().zip(&c).map(|(w, c)| w - c).collect() };
    let gh = grad(&W0);
    let gt = tail(&W0);
    let e: Vec<f64> = gt.iter().map(|x| rho * x / norm(&gt)).collect();
    let gt2 = tail(&axpy(1.0, &e, &W0));
    let d: Vec<f64> = gt2.iter().zip(&gh).map(|(t, h)| kappa * t + h).collect();
    let want = axpy(-LR, &d, &W0);
    let rule = Rule::ImbSam(ImbSam {
        rho: rho as f32,
        tau: 20,
        kappa: kappa as f32,
        eps_p: None,
    });
    let mut opt = Optimizer::new(layout(), rule, sgd()).unwrap();
    let mut w = f32s(&W0);
    let (h32, t32) = (f32s(&gh), f32s(&gt));
    opt.first_step_split(&mut w, &h32, Some(&t32)).unwrap();
    let gt2_32 = f32s(&tail(&f64s(&w)));
    opt.second_step(&mut w, &gt2_32).unwrap();
    assert_close(&w, &want);
    // A batch without tail samples is a plain step with the head gradient.
    let mut w = f32s(&W0);
    let mut opt = Optimizer::new(layout(), Rule::ImbSam(ImbSam::default()), sgd()).unwrap();
    opt.first_step_split(&mut w, &h32, None).unwrap();
    assert_close(&w, &axpy(-LR, &gh, &W0));
}

#[test]
fn looksam_reuses_the_orthogonal_component() {
    let (rho, alpha) = (0.1, 0.7);
    // Step 0: a SAM step; g_v = g_s − (⟨g, g_s⟩/‖g‖²)·g.
    let g = grad(&W0);
    let e: Vec<f64> = g.iter().map(|x| rho * x / norm(&g)).collect();
    let gs = grad(&axpy(1.0, &e, &W0));
    let w1 = axpy(-LR, &gs, &W0);
    let c = dot(&g, &gs) / dot(&g, &g);
    let gv: Vec<f64> = gs.iter().zip(&g).map(|(s, g)| s - c * g).collect();
    // Step 1: one pass, d = g + α·(‖g‖/‖g_v‖)·g_v.
    let g1 = grad(&w1);
    let beta = alpha * norm(&g1) / norm(&gv);
    let w2 = axpy(-LR, &axpy(beta, &gv, &g1), &w1);
    let rule = Rule::LookSam(LookSam {
        rho: rho as f32,
        k: 2,
        alpha: alpha as f32,
        per_tensor: false,
        eps_p: None,
    });
    let mut opt = Optimizer::new(layout(), rule, sgd()).unwrap();
    let mut w = f32s(&W0);
    one_step(&mut opt, &mut w);
    assert_close(&w, &w1);
    let g1_32 = f32s(&grad(&f64s(&w)));
    let out = opt.first_step(&mut w, &g1_32).unwrap();
    assert_eq!(out, samkit_core::FirstOutcome::Applied);
    assert_close(&w, &w2);
}
