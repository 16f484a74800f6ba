//! The invariants listed at the end of ALGORITHMS.md.
mod common;

use common::{bits, max_rel, run, sgd_momentum, Problem};
use samkit_core::{
    Adam, Asam, BaseOptimizer, DropRate, FirstOutcome, FriendlySam, Gsam, ImbSam, Layout, LookSam,
    MaskKind, Optimizer, Outcome, ParamKind, Rule, Sam, Ssam, SsamNorm,
};

const STEPS: u64 = 12;

fn rules_with_rho(rho: f32) -> Vec<Rule> {
    vec![
        Rule::Sam(Sam {
            rho,
            adaptive: false,
            eps_p: None,
            grad_centralization: false,
        }),
        Rule::Sam(Sam {
            rho,
            adaptive: true,
            eps_p: None,
            grad_centralization: false,
        }),
        Rule::Asam(Asam {
            rho,
            ..Asam::default()
        }),
        Rule::Asam(Asam {
            rho,
            filterwise: true,
            ..Asam::default()
        }),
        Rule::FriendlySam(FriendlySam {
            rho,
            ..FriendlySam::default()
        }),
        Rule::Ssam(Ssam {
            rho,
            interval: 3,
            ..Ssam::fisher()
        }),
        Rule::Ssam(Ssam {
            rho,
            interval: 3,
            ..Ssam::dynamic(7)
        }),
        Rule::ImbSam(ImbSam {
            rho,
            ..ImbSam::default()
        }),
        Rule::Gsam(Gsam {
            rho_max: rho,
            rho_min: rho,
            ..Gsam::default()
        }),
        Rule::LookSam(LookSam {
            rho,
            k: 3,
            ..LookSam::default()
        }),
        Rule::LookSam(LookSam {
            rho,
            k: 3,
            per_tensor: true,
            ..LookSam::default()
        }),
    ]
}

fn bases() -> Vec<BaseOptimizer> {
    vec![
        sgd_momentum(),
        BaseOptimizer::Adam(Adam {
            lr: 0.01,
            weight_decay: 1e-3,
            ..Adam::default()
        }),
    ]
}

/// A base-only run on the same objective; ImbSAM's oracle splits the gradient into head and
/// tail, so its baseline steps with their sum computed the same way.
fn baseline(p: &Problem, base: &BaseOptimizer, imb: bool) -> Vec<f32> {
    let mut opt = Optimizer::new(p.layout.clone(), Rule::Base, base.clone()).unwrap();
    let mut w = p.init();
    let (mut h, mut t) = (vec![0f32; w.len()], vec![0f32; w.len()]);
    for s in 0..STEPS {
        if imb {
            p.grad_part(&w, s, 1, &mut h);
            p.grad_part(&w, s, 2, &mut t);
            let g: Vec<f32> = h.iter().zip(&t).map(|(a, b)| a + b).collect();
            opt.first_step(&mut w, &g).unwrap();
        } else {
            opt.step(&mut w, p.oracle(s)).unwrap();
        }
    }
    w
}

#[test]
fn rho_zero_gives_the_base_trajectory_exactly() {
    let p = Problem::new(true);
    for base in bases() {
        for rule in rules_with_rho(0.0) {
            let imb = matches!(rule, Rule::ImbSam(_));
            let expect = baseline(&p, &base, imb);
            let name = rule.name();
            let (w, opt) = run(&p, rule, base.clone(), STEPS);
            assert_eq!(opt.skipped_steps(), 0);
            if imb {
                // κ·g_t(w) + g_h(w) = g_t + g_h: same value, one rounding of the sum.
                assert!(max_rel(&w, &expect) < 1e-6, "{name} with {}", base.name());
            } else {
                assert_eq!(bits(&w), bits(&expect), "{name} with {}", base.name());
            }
        }
    }
}

fn sam(rho: f32) -> Rule {
    Rule::Sam(Sam {
        rho,
        adaptive: false,
        eps_p: None,
        grad_centralization: false,
    })
}

#[test]
fn special_cases_equal_sam_exactly() {
    let p = Problem::new(true);
    for base in bases() {
        let (expect, _) = run(&p, sam(0.05), base.clone(), STEPS);
        let same = [
            Rule::Ssam(Ssam {
                sparsity: 0.0,
                ..Ssam::fisher()
            }),
            Rule::Ssam(Ssam {
                sparsity: 0.0,
                ..Ssam::dynamic(3)
            }),
            Rule::FriendlySam(FriendlySam {
                sigma: 0.0,
                ..FriendlySam::default()
            }),
            Rule::Gsam(Gsam {
                alpha: 0.0,
                ..Gsam::default()
            }),
            Rule::LookSam(LookSam {
                rho: 0.05,
                k: 1,
                ..LookSam::default()
            }),
        ];
        for rule in same {
            let name = rule.name();
            let (w, _) = run(&p, rule, base.clone(), STEPS);
            assert_eq!(bits(&w), bits(&expect), "{name} with {}", base.name());
        }
    }
}

#[test]
fn imbsam_with_every_class_in_the_tail_equals_sam() {
    // Every sample in the tail: the head gradient is zero and the tail gradient is the
    // whole gradient.
    let p = Problem::new(false);
    let base = sgd_momentum();
    let (expect, _) = run(&p, sam(0.05), base.clone(), STEPS);
    let mut opt = Optimizer::new(p.layout.clone(), Rule::ImbSam(ImbSam::default()), base).unwrap();
    let mut w = p.init();
    let zero = vec![0f32; w.len()];
    let mut g = vec![0f32; w.len()];
    for t in 0..STEPS {
        p.grad(&w, t, &mut g);
        assert_eq!(
            opt.first_step_split(&mut w, &zero, Some(&g)).unwrap(),
            FirstOutcome::Perturbed
        );
        p.grad(&w, t, &mut g);
        opt.second_step(&mut w, &g).unwrap();
    }
    assert!(max_rel(&w, &expect) < 1e-6);
    assert_eq!(
        // Strictly fewer than τ = 20 (ALGORITHMS.md): a class of exactly 20 is head.
        ImbSam::default().tail_classes(&[5, 19, 20, 21, 500]),
        vec![true, true, false, false, false]
    );
}

#[test]
fn asam_with_unit_scale_equals_sam() {
    // T ≡ 1 when every segment is a bias; ASAM then differs from SAM only by its eps
    // (1e-16 instead of 1e-12).
    let mut layout = Layout::new();
    layout.push_with_kind("a", &[40], ParamKind::Bias).unwrap();
    layout.push_with_kind("b", &[17], ParamKind::Bias).unwrap();
    let p = Problem::with_layout(layout);
    let (expect, _) = run(&p, sam(0.05), sgd_momentum(), STEPS);
    let asam = Rule::Asam(Asam {
        rho: 0.05,
        ..Asam::default()
    });
    let (w, _) = run(&p, asam, sgd_momentum(), STEPS);
    assert!(max_rel(&w, &expect) < 1e-6);
}

/// Perturbs from the start point after a few steps and returns `(w_before, w_after)` in f64.
fn perturbation(p: &Problem, rule: Rule, warm: u64) -> (Vec<f64>, Vec<f64>) {
    let (mut w, mut opt) = run(p, rule, sgd_momentum(), warm);
    let mut g = vec![0f32; w.len()];
    if let Some(_n) = opt.needs_fisher() {
        p.fisher(&w, &mut g);
        opt.set_fisher(&g).unwrap();
    }
    let before: Vec<f64> = w.iter().map(|&x| x as f64).collect();
    p.grad(&w, 99, &mut g);
    let out = if opt.needs_head_tail() {
        let zero = vec![0f32; g.len()];
        opt.first_step_split(&mut w, &zero, Some(&g)).unwrap()
    } else {
        opt.first_step(&mut w, &g).unwrap()
    };
    assert_eq!(out, FirstOutcome::Perturbed);
    (before, w.iter().map(|&x| x as f64).collect())
}

#[test]
fn perturbation_norm_is_rho() {
    let p = Problem::new(true);
    let rho = 0.05;
    let rules = vec![
        sam(rho),
        Rule::FriendlySam(FriendlySam {
            rho,
            ..FriendlySam::default()
        }),
        Rule::Ssam(Ssam {
            rho,
            ..Ssam::fisher()
        }),
        Rule::Ssam(Ssam {
            rho,
            ..Ssam::dynamic(11)
        }),
        Rule::ImbSam(ImbSam {
            rho,
            ..ImbSam::default()
        }),
        Rule::Gsam(Gsam {
            rho_max: rho,
            rho_min: rho,
            ..Gsam::default()
        }),
        Rule::LookSam(LookSam {
            rho,
            k: 2,
            ..LookSam::default()
        }),
    ];
    for rule in rules {
        let name = rule.name();
        for warm in [0, 2, 4] {
            let (a, b) = perturbation(&p, rule.clone(), warm);
            let norm = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (y - x).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                (norm - rho as f64).abs() / (rho as f64) < 1e-5,
                "{name} after {warm} steps: ‖e‖ = {norm}"
            );
        }
    }
}

#[test]
fn asam_scaled_perturbation_norm_is_rho() {
    // ASAM normalises T⊙g, so ‖T⁻¹e‖ = ρ; T from the weights before the step.
    let p = Problem::new(false);
    let (eta, rho) = (0.01, 0.5);
    let rule = Rule::Asam(Asam {
        rho,
        eta,
        filterwise: false,
        eps_p: None,
    });
    let (a, b) = perturbation(&p, rule, 3);
    let mut s = 0.0;
    for seg in p.layout.segments() {
        for i in seg.range() {
            let t = if seg.kind == ParamKind::Weight {
                (a[i] as f32).abs() as f64 + eta as f64
            } else {
                1.0
            };
            s += ((b[i] - a[i]) / t).powi(2);
        }
    }
    assert!(
        (s.sqrt() - rho as f64).abs() / (rho as f64) < 1e-5,
        "{}",
        s.sqrt()
    );
}

#[test]
fn restore_is_bit_identical_and_updates_start_from_w_old() {
    let p = Problem::new(true);
    for rule in rules_with_rho(0.05) {
        let name = rule.name();
        let (mut w, mut opt) = run(&p, rule, sgd_momentum(), 4);
        if opt.needs_fisher().is_some() {
            let mut f = vec![0f32; w.len()];
            p.fisher(&w, &mut f);
            opt.set_fisher(&f).unwrap();
        }
        let before = w.clone();
        let mom_before = opt.base_state("momentum_buffer").unwrap().to_vec();
        let mut g = vec![0f32; w.len()];
        p.grad(&w, 50, &mut g);
        let out = if opt.needs_head_tail() {
            opt.first_step_split(&mut w, &g, Some(&g)).unwrap()
        } else {
            opt.first_step(&mut w, &g).unwrap()
        };
        if out != FirstOutcome::Perturbed {
            continue;
        }
        assert_ne!(
            bits(&w),
            bits(&before),
            "{name}: perturbation changed nothing"
        );
        // A non-finite pass-2 gradient: the restore is exact and nothing else moves.
        let mut bad = g.clone();
        bad[w.len() / 2] = f32::NAN;
        assert_eq!(opt.second_step(&mut w, &bad).unwrap(), Outcome::Skipped);
        assert_eq!(bits(&w), bits(&before), "{name}: restore is not exact");
        assert_eq!(
            bits(opt.base_state("momentum_buffer").unwrap()),
            bits(&mom_before),
            "{name}: momentum moved on a skipped step"
        );
        assert_eq!(opt.skipped_steps(), 1);
        // abort() restores exactly as well.
        let out = if opt.needs_head_tail() {
            opt.first_step_split(&mut w, &g, Some(&g)).unwrap()
        } else {
            opt.first_step(&mut w, &g).unwrap()
        };
        assert_eq!(out, FirstOutcome::Perturbed);
        opt.abort(&mut w).unwrap();
        assert_eq!(bits(&w), bits(&before), "{name}: abort is not exact");
    }
}

#[test]
fn sam_update_is_the_base_update_from_w_old() {
    // The fused restore + update equals torch's SGD step taken from the unperturbed weights
    // with the pass-2 gradient, bit for bit.
    let p = Problem::new(true);
    let (mut w, mut opt) = run(&p, sam(0.05), sgd_momentum(), 3);
    let w_old = w.clone();
    let mom = opt.base_state("momentum_buffer").unwrap().to_vec();
    let mut g = vec![0f32; w.len()];
    p.grad(&w, 7, &mut g);
    opt.first_step(&mut w, &g).unwrap();
    let mut g2 = vec![0f32; w.len()];
    p.grad(&w, 7, &mut g2);
    opt.second_step(&mut w, &g2).unwrap();
    let (lr, mu, wd) = (0.05f32, 0.9f32, 5e-4f32);
    let expect: Vec<f32> = (0..w.len())
        .map(|i| {
            let d = g2[i] + wd * w_old[i];
            let m = mu * mom[i] + (1.0 - 0.0) * d;
            w_old[i] - lr * m
        })
        .collect();
    assert_eq!(bits(&w), bits(&expect));
}

#[test]
fn non_finite_first_gradient_skips_every_rule() {
    let p = Problem::new(false);
    let mut rules = rules_with_rho(0.05);
    rules.push(Rule::Base);
    for rule in rules {
        let name = rule.name();
        let (mut w, mut opt) = run(&p, rule, sgd_momentum(), 3);
        if opt.needs_fisher().is_some() {
            let mut f = vec![0f32; w.len()];
            p.fisher(&w, &mut f);
            opt.set_fisher(&f).unwrap();
        }
        let before = opt.state_bytes();
        let w0 = w.clone();
        let mut g = vec![0f32; w.len()];
        p.grad(&w, 9, &mut g);
        g[3] = f32::INFINITY;
        let out = if opt.needs_head_tail() {
            opt.first_step_split(&mut w, &g, Some(&g)).unwrap()
        } else {
            opt.first_step(&mut w, &g).unwrap()
        };
        assert_eq!(out, FirstOutcome::Skipped, "{name}");
        assert_eq!(bits(&w), bits(&w0), "{name}");
        assert_eq!(opt.skipped_steps(), 1, "{name}");
        assert_eq!(opt.steps(), 3, "{name}");
        if let (Ok(a), Ok(b)) = (before, opt.state_bytes()) {
            // Only the skipped counter in the metadata may differ.
            assert_eq!(a.len(), b.len(), "{name}");
        }
    }
}

#[test]
fn ssam_masks_have_l_live_entries_and_follow_their_schedule() {
    let p = Problem::new(true);
    let n = p.layout.len();
    for (rule, seed_dependent) in [
        (
            Rule::Ssam(Ssam {
                interval: 2,
                ..Ssam::fisher()
            }),
            false,
        ),
        (
            Rule::Ssam(Ssam {
                interval: 2,
                norm: SsamNorm::Full,
                mask: MaskKind::Dynamic {
                    drop: DropRate::Cosine {
                        r0: 0.5,
                        total_steps: 10,
                    },
                    seed: 5,
                },
                ..Ssam::fisher()
            }),
            true,
        ),
    ] {
        let Rule::Ssam(c) = &rule else { unreachable!() };
        let live = c.live_count(n);
        assert_eq!(live, n - (n as f64 * 0.5).ceil() as usize);
        let (_, opt) = run(&p, rule.clone(), sgd_momentum(), 7);
        let m = opt.mask().unwrap();
        assert_eq!(m.count_ones(), live);
        // Updates at t = 0 (Fisher only), 2, 4, 6.
        let expect_updates = if seed_dependent { 3 } else { 4 };
        assert_eq!(opt.mask_updates(), expect_updates, "{}", rule.name());
    }
}

#[test]
fn friendly_momentum_follows_the_ema() {
    let p = Problem::new(false);
    let rule = Rule::FriendlySam(FriendlySam::default());
    let (mut w, mut opt) = run(&p, rule, sgd_momentum(), 1);
    let mut g = vec![0f32; w.len()];
    p.grad(&p.init(), 0, &mut g);
    assert_eq!(bits(opt.friendly_momentum()), bits(&g), "first step: m = g");
    let m_prev = opt.friendly_momentum().to_vec();
    p.grad(&w, 1, &mut g);
    opt.first_step(&mut w, &g).unwrap();
    let mut g2 = vec![0f32; w.len()];
    p.grad(&w, 1, &mut g2);
    opt.second_step(&mut w, &g2).unwrap();
    for i in 0..g.len() {
        let expect = m_prev[i] * 0.9 + g[i] * (1.0 - 0.9f32);
        assert_eq!(opt.friendly_momentum()[i].to_bits(), expect.to_bits());
    }
}
