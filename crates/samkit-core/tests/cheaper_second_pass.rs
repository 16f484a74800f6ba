//! The optimizer side of the cost reducers (ALGORITHMS.md, "Cheaper second passes"): ESAM's
//! SWP, SAM-ON, RST, SSAM-L's segment masks, EG-SAM/OG-SAM, and their invariants.
mod common;

use std::path::Path;

use common::{bits, run, sgd_momentum, Problem};
use samkit_core::plan::{fisher_segments, segment_mask, suffix_segments};
use samkit_core::rules::{EgSam, Esam, Rst, SamOn, SegmentSelect, SwitchProb};
use samkit_core::{FirstOutcome, Layout, MaskKind, Optimizer, Outcome, Rule, Sam, Ssam};

const STEPS: u64 = 9;

fn sam(rho: f32, eps_p: Option<f64>) -> Rule {
    Rule::Sam(Sam {
        rho,
        eps_p,
        ..Sam::default()
    })
}

fn esam(beta: f32) -> Rule {
    Rule::Esam(Esam {
        beta,
        ..Esam::new(11)
    })
}

fn rst(p: f32) -> Rule {
    Rule::Rst(Rst {
        p: SwitchProb::Constant { p },
        ..Rst::new(5)
    })
}

fn eg(eta_x: Option<f32>, optimistic: bool) -> Rule {
    Rule::EgSam(EgSam {
        eta_x,
        optimistic,
        ..EgSam::default()
    })
}

fn ssam_l_fisher() -> Rule {
    Rule::Ssam(Ssam {
        interval: 3,
        mask: MaskKind::Segments {
            select: SegmentSelect::Fisher { samples: 8 },
        },
        ..Ssam::structured()
    })
}

/// Every new rule with its non-trivial options.
fn new_rules() -> Vec<Rule> {
    vec![
        esam(0.6),
        Rule::SamOn(SamOn::default()),
        Rule::SamOn(SamOn {
            asam: true,
            ..SamOn::default()
        }),
        rst(0.5),
        Rule::Rst(Rst {
            p: SwitchProb::Linear {
                p0: 0.0,
                p1: 1.0,
                steps: 6,
            },
            ..Rst::new(3)
        }),
        Rule::Ssam(Ssam::structured()),
        ssam_l_fisher(),
        eg(None, false),
        eg(Some(0.03), true),
    ]
}

#[test]
fn esam_with_beta_one_is_sam_with_eps_1e7_bit_for_bit() {
    let p = Problem::new(true);
    let (a, _) = run(&p, esam(1.0), sgd_momentum(), STEPS);
    let (b, _) = run(&p, sam(0.05, Some(1e-7)), sgd_momentum(), STEPS);
    assert_eq!(bits(&a), bits(&b));
    // β < 1 perturbs fewer segments from the second step on: a different trajectory.
    let (c, _) = run(&p, esam(0.5), sgd_momentum(), STEPS);
    assert_ne!(bits(&c), bits(&b));
}

#[test]
fn rst_with_p_one_is_sam_and_with_p_zero_the_base_optimizer() {
    let p = Problem::new(false);
    let (a, _) = run(&p, rst(1.0), sgd_momentum(), STEPS);
    let (b, _) = run(&p, sam(0.05, None), sgd_momentum(), STEPS);
    assert_eq!(bits(&a), bits(&b));
    let (c, _) = run(&p, rst(0.0), sgd_momentum(), STEPS);
    let (d, _) = run(&p, Rule::Base, sgd_momentum(), STEPS);
    assert_eq!(bits(&c), bits(&d));
}

#[test]
fn rst_draws_are_bernoulli_p_and_the_linear_schedule_ramps() {
    let r = Rst::new(9);
    let hits = (0..20_000).filter(|&t| r.hits(t)).count() as f64 / 20_000.0;
    assert!((hits - 0.5).abs() < 0.02, "hit rate {hits}");
    let lin = SwitchProb::Linear {
        p0: 0.2,
        p1: 0.8,
        steps: 10,
    };
    assert_eq!((lin.at(0), lin.at(5), lin.at(99)), (0.2, 0.5, 0.8));
}

#[test]
fn eg_sam_with_eta_zero_is_sam_and_extrapolates_otherwise() {
    let p = Problem::new(false);
    let (a, _) = run(&p, eg(Some(0.0), false), sgd_momentum(), STEPS);
    let (b, _) = run(&p, sam(0.05, None), sgd_momentum(), STEPS);
    assert_eq!(bits(&a), bits(&b));
    // The perturbed point: w − η_x·g + ρ·g/(‖g‖ + eps_p), η_x = the learning rate by default.
    let mut opt = Optimizer::new(p.layout.clone(), eg(None, false), sgd_momentum()).unwrap();
    let w0 = p.init();
    let mut w = w0.clone();
    let mut g = vec![0.0; w.len()];
    p.grad(&w, 0, &mut g);
    assert_eq!(opt.first_step(&mut w, &g).unwrap(), FirstOutcome::Perturbed);
    let norm = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let (eta, s) = (opt.lr() as f64, 0.05 / norm);
    for i in 0..w.len() {
        let want = w0[i] as f64 + (s - eta) * g[i] as f64;
        assert!((w[i] as f64 - want).abs() < 1e-6, "{i}: {} vs {want}", w[i]);
    }
    // The restore is exact.
    opt.abort(&mut w).unwrap();
    assert_eq!(bits(&w), bits(&w0));
}

#[test]
fn og_sam_keeps_the_last_pass_two_gradient() {
    let p = Problem::new(false);
    let mut opt = Optimizer::new(p.layout.clone(), eg(Some(0.05), true), sgd_momentum()).unwrap();
    let mut w = p.init();
    let n = w.len();
    let (mut g, mut g2) = (vec![0.0; n], vec![0.0; n]);
    assert!(opt.og_prev().is_empty());
    for t in 0..3 {
        p.grad(&w, t, &mut g);
        let w_before = w.clone();
        assert_eq!(opt.first_step(&mut w, &g).unwrap(), FirstOutcome::Perturbed);
        if t > 0 {
            // OG extrapolates along the previous step's g2, not along g.
            let prev = opt.og_prev().to_vec();
            let norm = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
            let s = 0.05 / norm;
            for i in 0..n {
                let want = w_before[i] as f64 + s * g[i] as f64 - 0.05 * prev[i] as f64;
                assert!((w[i] as f64 - want).abs() < 1e-6);
            }
        }
        p.grad(&w, t, &mut g2);
        assert_eq!(opt.second_step(&mut w, &g2).unwrap(), Outcome::Applied);
        assert_eq!(bits(opt.og_prev()), bits(&g2));
    }
}

#[test]
fn sam_on_perturbs_only_norm_segments_with_norm_rho() {
    let p = Problem::new(false);
    for asam in [false, true] {
        let rule = Rule::SamOn(SamOn {
            rho: 0.3,
            asam,
            ..SamOn::default()
        });
        let mut opt = Optimizer::new(p.layout.clone(), rule, sgd_momentum()).unwrap();
        let w0 = p.init();
        let mut w = w0.clone();
        let mut g = vec![0.0; w.len()];
        p.grad(&w, 0, &mut g);
        assert_eq!(opt.first_step(&mut w, &g).unwrap(), FirstOutcome::Perturbed);
        let mut sq = 0.0f64;
        for s in p.layout.segments() {
            for i in s.range() {
                let e = w[i] as f64 - w0[i] as f64;
                if s.norm {
                    sq += e * e;
                } else {
                    assert_eq!(e, 0.0, "{} is not a norm segment", s.name);
                }
            }
        }
        if !asam {
            // ‖e‖ = ρ: the rule normalises by its own direction's norm.
            assert!((sq.sqrt() - 0.3).abs() < 1e-6 * 0.3, "‖e‖ = {}", sq.sqrt());
        } else {
            assert!(sq > 0.0);
        }
        opt.abort(&mut w).unwrap();
        assert_eq!(bits(&w), bits(&w0));
    }
    // A layout with no norm segment has nothing to perturb: an error, not a silent base step.
    let mlp = Layout::mlp(&[3, 4, 2]).unwrap();
    assert!(Optimizer::new(mlp, Rule::SamOn(SamOn::default()), sgd_momentum()).is_err());
}

#[test]
fn esam_perturbs_the_drawn_segments_with_norm_rho_over_beta() {
    let p = Problem::new(true);
    let beta = 0.5;
    let rule = esam(beta);
    let Rule::Esam(c) = &rule else { unreachable!() };
    let c = c.clone();
    let mut opt = Optimizer::new(p.layout.clone(), rule, sgd_momentum()).unwrap();
    let mut w = p.init();
    let n = w.len();
    let (mut g, mut g2) = (vec![0.0; n], vec![0.0; n]);
    let mut partial = 0;
    for t in 0..6 {
        p.grad(&w, t, &mut g);
        let w0 = w.clone();
        assert_eq!(opt.first_step(&mut w, &g).unwrap(), FirstOutcome::Perturbed);
        let mut sq = 0.0f64;
        let mut picked = 0;
        for (k, s) in p.layout.segments().iter().enumerate() {
            let on = c.selects(t, k);
            picked += on as usize;
            for i in s.range() {
                let e = w[i] as f64 - w0[i] as f64;
                if on {
                    sq += e * e;
                } else {
                    assert_eq!(e, 0.0);
                }
            }
        }
        if t == 0 {
            assert_eq!(
                picked,
                p.layout.segments().len(),
                "all segments at the first step"
            );
        }
        if picked > 0 && picked < p.layout.segments().len() {
            partial += 1;
        }
        if picked > 0 {
            let want = 0.05 / beta as f64;
            assert!(
                (sq.sqrt() - want).abs() < 1e-5 * want,
                "‖e‖ = {}",
                sq.sqrt()
            );
        }
        p.grad(&w, t, &mut g2);
        opt.second_step(&mut w, &g2).unwrap();
    }
    assert!(partial > 0, "β = 0.5 leaves some segments out");
}

/// A sparsity at which Sparse SAM perturbs exactly `live` of `n` coordinates.
fn sparsity_for(live: usize, n: usize) -> f32 {
    let guess = (n - live) as f32 / n as f32;
    let mut s = guess;
    for k in -64i32..64 {
        s = f32::from_bits((guess.to_bits() as i32 + k) as u32);
        let probe = Ssam {
            sparsity: s,
            ..Ssam::fisher()
        };
        if probe.live_count(n) == live {
            return s;
        }
    }
    panic!("no f32 sparsity gives {live} of {n} (last {s})");
}

#[test]
fn ssam_l_equals_ssam_with_the_same_mask_bit_for_bit() {
    let p = Problem::new(true);
    let n = p.layout.len();
    let l = Rule::Ssam(Ssam {
        sparsity: 0.3,
        ..Ssam::structured()
    });
    let mut opt_l = Optimizer::new(p.layout.clone(), l, sgd_momentum()).unwrap();
    let mask = opt_l.mask().unwrap().clone();
    let live = mask.count_ones();
    // The suffix: the last segments, at least (1 − s)·N parameters, the shortest such.
    let first = opt_l.first_perturbed_segment().unwrap();
    let segs = p.layout.segments();
    let suffix: usize = segs[first..].iter().map(|s| s.len).sum();
    let need = Ssam {
        sparsity: 0.3,
        ..Ssam::fisher()
    }
    .live_count(n);
    assert_eq!(live, suffix);
    assert!(suffix >= need && suffix - segs[first].len < need);
    // SSAM-F whose Fisher is 1 on the suffix and 0 elsewhere, at the sparsity that keeps exactly
    // the suffix: the same mask, so the same steps.
    let f = Rule::Ssam(Ssam {
        sparsity: sparsity_for(live, n),
        interval: 1000,
        ..Ssam::fisher()
    });
    let mut opt_f = Optimizer::new(p.layout.clone(), f, sgd_momentum()).unwrap();
    let fisher: Vec<f32> = (0..n).map(|i| mask.get(i) as u8 as f32).collect();
    opt_f.set_fisher(&fisher).unwrap();
    let (mut wl, mut wf) = (p.init(), p.init());
    let (mut g, mut g2) = (vec![0.0; n], vec![0.0; n]);
    for t in 0..STEPS {
        for (opt, w) in [(&mut opt_l, &mut wl), (&mut opt_f, &mut wf)] {
            p.grad(w, t, &mut g);
            assert_eq!(opt.first_step(w, &g).unwrap(), FirstOutcome::Perturbed);
            p.grad(w, t, &mut g2);
            opt.second_step(w, &g2).unwrap();
        }
        assert_eq!(opt_f.mask(), Some(&mask));
        assert_eq!(bits(&wl), bits(&wf), "step {t}");
    }
}

#[test]
fn ssam_l_fisher_selects_whole_segments_by_mean_fisher() {
    let mut layout = Layout::new();
    for (name, len) in [
        ("a.weight", 4),
        ("b.weight", 2),
        ("c.weight", 3),
        ("d.weight", 2),
    ] {
        layout.push(name, &[len]).unwrap();
    }
    // Means 1, 5, 5, 0.5: b (ties to the lower index), then c; a would pass the budget of 6.
    let f: Vec<Vec<f32>> = vec![vec![1.0; 4], vec![5.0; 2], vec![5.0; 3], vec![0.5; 2]];
    let views: Vec<&[f32]> = f.iter().map(Vec::as_slice).collect();
    assert_eq!(
        fisher_segments(&layout, &views, 6),
        [false, true, true, false]
    );
    assert_eq!(suffix_segments(&layout, 4), [false, false, true, true]);
    assert_eq!(suffix_segments(&layout, 5), [false, false, true, true]);
    assert_eq!(suffix_segments(&layout, 6), [false, true, true, true]);
    let m = segment_mask(&layout, &[false, true, false, true]);
    let on: Vec<usize> = m.ones_iter().collect();
    assert_eq!(on, [4, 5, 9, 10]);
    // Through the optimizer: set_fisher commits the segment mask at the next step.
    let p = Problem::with_layout(layout.clone());
    let mut opt = Optimizer::new(layout.clone(), ssam_l_fisher(), sgd_momentum()).unwrap();
    let flat: Vec<f32> = f.concat();
    assert_eq!(opt.needs_fisher(), Some(8));
    opt.set_fisher(&flat).unwrap();
    let mut w = p.init();
    let mut g = vec![0.0; w.len()];
    p.grad(&w, 0, &mut g);
    opt.first_step(&mut w, &g).unwrap();
    opt.second_step(&mut w, &g).unwrap();
    let live = Ssam::structured().live_count(layout.len());
    let want = segment_mask(&layout, &fisher_segments(&layout, &views, live));
    assert_eq!(opt.mask(), Some(&want));
    assert_eq!(
        opt.first_perturbed_segment(),
        want.ones_iter().next().map(|i| {
            layout
                .segments()
                .iter()
                .position(|s| s.range().contains(&i))
                .unwrap()
        })
    );
}

#[test]
fn the_restore_is_bit_identical_for_every_new_rule() {
    let p = Problem::new(false);
    for rule in new_rules() {
        let name = rule.name();
        let mut opt = Optimizer::new(p.layout.clone(), rule, sgd_momentum()).unwrap();
        let mut w = p.init();
        let n = w.len();
        let (mut g, mut f) = (vec![0.0; n], vec![0.0; n]);
        for t in 0..4 {
            if opt.needs_fisher().is_some() {
                p.fisher(&w, &mut f);
                opt.set_fisher(&f).unwrap();
            }
            p.grad(&w, t, &mut g);
            let w0 = w.clone();
            if opt.first_step(&mut w, &g).unwrap() == FirstOutcome::Perturbed {
                opt.abort(&mut w).unwrap();
                assert_eq!(bits(&w), bits(&w0), "{name} at step {t}");
                // Run the step for real so that later steps see state (an aborted step drops
                // the Fisher mask it was handed, as SSAM-F's does).
                if opt.needs_fisher().is_some() {
                    opt.set_fisher(&f).unwrap();
                }
                opt.first_step(&mut w, &g).unwrap();
                let mut g2 = vec![0.0; n];
                p.grad(&w, t, &mut g2);
                opt.second_step(&mut w, &g2).unwrap();
            }
        }
    }
}

#[test]
fn state_round_trips_for_every_new_rule() {
    let p = Problem::new(false);
    for rule in new_rules() {
        let name = rule.name();
        let (mut w, opt) = run(&p, rule.clone(), sgd_momentum(), 4);
        let bytes = opt.state_bytes().unwrap();
        let mut a = opt;
        let mut b = Optimizer::new(p.layout.clone(), rule, sgd_momentum()).unwrap();
        b.load_state_bytes(&bytes, Path::new("mem")).unwrap();
        assert_eq!(b.state_bytes().unwrap(), bytes, "{name}");
        let mut wb = w.clone();
        for t in 4..8 {
            a.step(&mut w, p.oracle(t)).unwrap();
            b.step(&mut wb, p.oracle(t)).unwrap();
        }
        assert_eq!(
            bits(&w),
            bits(&wb),
            "{name}: a resumed run continues bit-identically"
        );
    }
    // OG-SAM's g2_prev is its state: an EG-SAM optimizer refuses it.
    let (_, og) = run(&p, eg(Some(0.05), true), sgd_momentum(), 2);
    assert_eq!(og.og_prev().len(), p.layout.len());
    let bytes = og.state_bytes().unwrap();
    let mut other =
        Optimizer::new(p.layout.clone(), eg(Some(0.05), false), sgd_momentum()).unwrap();
    assert!(other.load_state_bytes(&bytes, Path::new("mem")).is_err());
}

#[test]
fn bad_hyperparameters_are_errors_and_rules_serialise_by_name() {
    let l = Problem::new(false).layout;
    let bad = [
        esam(0.0),
        esam(1.5),
        Rule::Esam(Esam {
            gamma: 0.0,
            ..Esam::new(1)
        }),
        rst(-0.1),
        Rule::Rst(Rst {
            p: SwitchProb::Linear {
                p0: 0.1,
                p1: 0.9,
                steps: 0,
            },
            ..Rst::new(1)
        }),
        eg(Some(f32::NAN), false),
        Rule::SamOn(SamOn {
            rho: -1.0,
            ..SamOn::default()
        }),
        Rule::Ssam(Ssam {
            mask: MaskKind::Segments {
                select: SegmentSelect::Fisher { samples: 0 },
            },
            ..Ssam::structured()
        }),
    ];
    for r in bad {
        assert!(
            Optimizer::new(l.clone(), r.clone(), sgd_momentum()).is_err(),
            "{r:?}"
        );
    }
    let names: Vec<&str> = new_rules().iter().map(Rule::name).collect();
    assert_eq!(
        names,
        ["esam", "sam-on", "sam-on", "rst", "rst", "ssam-l", "ssam-l", "eg-sam", "og-sam"]
    );
    for r in new_rules() {
        let json = serde_json::to_string(&r).unwrap();
        let back: Rule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r, "{json}");
    }
    // The defaults of the spec.
    assert_eq!(SamOn::default().rho, 0.5);
    let e = Esam::new(0);
    assert_eq!((e.beta, e.gamma, e.rho), (0.6, 0.5, 0.05));
    assert_eq!(Rst::new(0).p, SwitchProb::Constant { p: 0.5 });
}
