//! The options users of the PyTorch peers expect: adaptive FriendlySAM, `Rule::set_rho`, the
//! epsilons of each rule, AdamW's defaults through the optimizer, amsgrad state in state files.
use samkit_core::rules::{EPS_ASAM, EPS_IMBSAM, EPS_P, EPS_SSAM_FULL};
use samkit_core::{
    Adam, Asam, BaseOptimizer, FirstOutcome, FriendlySam, Gsam, ImbSam, Layout, Optimizer, Rule,
    Sam, Ssam, SsamNorm,
};

/// `w + ρ·w²⊙d / (‖|w|⊙d‖ + eps_p)` in f64.
fn adaptive_perturbation(w: &[f32], d: &[f64], rho: f64) -> Vec<f64> {
    let n: f64 = w
        .iter()
        .zip(d)
        .map(|(&w, &d)| (w.abs() as f64 * d).powi(2))
        .sum::<f64>()
        .sqrt();
    w.iter()
        .zip(d)
        .map(|(&w, &d)| w as f64 + rho * (w as f64 * w as f64) * d / (n + EPS_P))
        .collect()
}

fn assert_close(got: &[f32], want: &[f64]) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{i}: {g} vs {w}"
        );
    }
}

#[test]
fn adaptive_friendlysam_scales_its_direction_by_w_squared() {
    let rho = 0.1f32;
    let rule = Rule::FriendlySam(FriendlySam {
        rho,
        sigma: 0.5,
        adaptive: true,
        ..FriendlySam::default()
    });
    let layout = Layout::flat(3).unwrap();
    let mut opt = Optimizer::new(layout, rule, BaseOptimizer::sgd(0.1, 0.0, 0.0)).unwrap();
    let mut w = vec![1.0f32, -2.0, 0.5];
    let g1 = [0.3f32, 0.1, -0.2];
    // Step 1: m is empty, the direction is g itself.
    let w0 = w.clone();
    assert_eq!(
        opt.first_step(&mut w[..], &g1[..]).unwrap(),
        FirstOutcome::Perturbed
    );
    let d1: Vec<f64> = g1.iter().map(|&x| x as f64).collect();
    assert_close(&w, &adaptive_perturbation(&w0, &d1, rho as f64));
    opt.second_step(&mut w[..], &[0.2f32, -0.1, 0.4][..])
        .unwrap();
    // After step 1, m = g1; step 2's direction is d = g − σ·m.
    assert_eq!(opt.friendly_momentum(), &g1[..]);
    let g3 = [-0.4f32, 0.6, 0.1];
    let w1 = w.clone();
    opt.first_step(&mut w[..], &g3[..]).unwrap();
    let d: Vec<f64> = g3
        .iter()
        .zip(&g1)
        .map(|(&g, &m)| (g - m * 0.5) as f64)
        .collect();
    assert_close(&w, &adaptive_perturbation(&w1, &d, rho as f64));
    // The non-adaptive rule differs (the option is not ignored).
    let mut plain = Optimizer::new(
        Layout::flat(3).unwrap(),
        Rule::FriendlySam(FriendlySam::default()),
        BaseOptimizer::sgd(0.1, 0.0, 0.0),
    )
    .unwrap();
    let mut wp = w0.clone();
    plain.first_step(&mut wp[..], &g1[..]).unwrap();
    let mut wa = w0.clone();
    let mut adaptive = Optimizer::new(
        Layout::flat(3).unwrap(),
        Rule::FriendlySam(FriendlySam {
            adaptive: true,
            ..FriendlySam::default()
        }),
        BaseOptimizer::sgd(0.1, 0.0, 0.0),
    )
    .unwrap();
    adaptive.first_step(&mut wa[..], &g1[..]).unwrap();
    assert_ne!(wp, wa);
}

#[test]
fn set_rho_goes_through_the_rule() {
    let mut r = Rule::Sam(Sam::default());
    r.set_rho(0.3).unwrap();
    assert_eq!(r.rho(), Some(0.3));
    assert!(r.set_rho(-1.0).is_err());
    assert!(r.set_rho(f32::NAN).is_err());
    assert_eq!(r.rho(), Some(0.3), "a rejected ρ leaves the rule as it was");
    let mut g = Rule::Gsam(Gsam::default());
    assert!(g.set_rho(0.1).is_err());
    let mut base = Rule::Base;
    assert!(base.set_rho(0.1).is_err());
    // The optimizer's set_rho is the rule's.
    let mut opt = Optimizer::new(
        Layout::flat(2).unwrap(),
        Rule::Asam(Asam::default()),
        BaseOptimizer::sgd(0.1, 0.0, 0.0),
    )
    .unwrap();
    opt.set_rho(0.7).unwrap();
    assert_eq!(opt.rule().rho(), Some(0.7));
    assert!(opt.set_rho(-0.1).is_err());
}

#[test]
fn each_rule_names_its_perturbation_epsilon() {
    assert_eq!(Rule::Sam(Sam::default()).perturb_eps(), EPS_P);
    assert_eq!(Rule::Asam(Asam::default()).perturb_eps(), EPS_ASAM);
    assert_eq!(Rule::ImbSam(ImbSam::default()).perturb_eps(), EPS_IMBSAM);
    let full = Ssam {
        norm: SsamNorm::Full,
        ..Ssam::fisher()
    };
    assert_eq!(Rule::Ssam(full).perturb_eps(), EPS_SSAM_FULL);
    assert_eq!(Rule::Ssam(Ssam::fisher()).perturb_eps(), EPS_P);
}

#[test]
fn amsgrad_state_round_trips_through_a_state_file() {
    let base = BaseOptimizer::AdamW(Adam {
        lr: 0.01,
        amsgrad: true,
        maximize: true,
        ..Adam::adamw()
    });
    let layout = Layout::flat(4).unwrap();
    let mut opt = Optimizer::new(layout.clone(), Rule::Sam(Sam::default()), base.clone()).unwrap();
    let mut w = [0.5f32, -0.25, 1.0, 2.0];
    for g in [[1.0f32, -2.0, 0.5, 0.0], [0.1, 0.1, -0.1, 3.0]] {
        opt.first_step(&mut w[..], &g[..]).unwrap();
        opt.second_step(&mut w[..], &g[..]).unwrap();
    }
    let vmax = opt.base_state("max_exp_avg_sq").unwrap().to_vec();
    assert!(vmax.iter().any(|&x| x > 0.0));
    let bytes = opt.state_bytes().unwrap();
    let mut back = Optimizer::new(layout, Rule::Sam(Sam::default()), base).unwrap();
    back.load_state_bytes(&bytes, std::path::Path::new("mem"))
        .unwrap();
    assert_eq!(back.base_state("max_exp_avg_sq").unwrap(), &vmax[..]);
}

#[test]
fn perturbation_epsilon_is_configurable_and_validated() {
    let rule = |eps_p| {
        Rule::Sam(Sam {
            rho: 1.0,
            eps_p,
            ..Sam::default()
        })
    };
    assert_eq!(rule(None).perturb_eps(), EPS_P);
    assert_eq!(rule(Some(0.5)).perturb_eps(), 0.5);
    assert!(rule(Some(-1.0)).validate().is_err());
    assert!(rule(Some(f64::NAN)).validate().is_err());
    assert!(Optimizer::new(
        Layout::flat(2).unwrap(),
        rule(Some(f64::INFINITY)),
        BaseOptimizer::sgd(0.1, 0.0, 0.0)
    )
    .is_err());
    // e = ρ·g / (‖g‖ + eps_p): with ‖g‖ = 5 and eps_p = 5 the step is half of ρ·g/‖g‖.
    let mut opt = Optimizer::new(
        Layout::flat(2).unwrap(),
        rule(Some(5.0)),
        BaseOptimizer::sgd(0.1, 0.0, 0.0),
    )
    .unwrap();
    let mut w = vec![0.0f32, 0.0];
    opt.first_step(&mut w[..], &[3.0f32, 4.0][..]).unwrap();
    assert_close(&w, &[0.3, 0.4]);
    // GSAM: the same eps in the perturbation.
    let mut gsam = Optimizer::new(
        Layout::flat(2).unwrap(),
        Rule::Gsam(Gsam {
            eps_p: Some(5.0),
            ..Gsam::default()
        }),
        BaseOptimizer::sgd(0.1, 0.0, 0.0),
    )
    .unwrap();
    let mut w = vec![0.0f32, 0.0];
    gsam.first_step(&mut w[..], &[3.0f32, 4.0][..]).unwrap();
    assert_close(&w, &[0.015, 0.02]);
}

#[test]
fn grad_centralization_perturbs_along_the_centralized_gradient() {
    // A 2×3 weight (centralized per row) and a bias of 2 (left alone).
    let layout =
        Layout::from_named(&[("fc.weight", &[2usize, 3][..]), ("fc.bias", &[2][..])]).unwrap();
    let g = [1.0f32, 2.0, 6.0, -1.0, 0.0, 4.0, 0.5, -0.5];
    let rho = 0.2f64;
    let rule = Rule::Sam(Sam {
        rho: rho as f32,
        grad_centralization: true,
        ..Sam::default()
    });
    let mut opt = Optimizer::new(layout, rule, BaseOptimizer::sgd(0.1, 0.0, 0.0)).unwrap();
    let mut w = vec![0.0f32; 8];
    opt.first_step(&mut w[..], &g[..]).unwrap();
    // Row means 3 and 1; the norm is the raw gradient's (pytorch_optimizer's order).
    let gc = [-2.0, -1.0, 3.0, -2.0, -1.0, 3.0, 0.5, -0.5];
    let norm = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let want: Vec<f64> = gc.iter().map(|&x| rho * x / (norm + EPS_P)).collect();
    assert_close(&w, &want);
    // The second step restores w exactly before the base update (the option only moves the
    // perturbation).
    opt.second_step(&mut w[..], &[0.0f32; 8][..]).unwrap();
    assert_eq!(w, vec![0.0f32; 8]);
}
