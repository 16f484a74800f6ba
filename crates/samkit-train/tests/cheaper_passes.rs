//! The trainer's side of the cheaper second passes (ALGORITHMS.md, "Cheaper second passes") on
//! a tiny ResNet-18 on the CPU: SSAM-L `exact` equals SSAM with the same segment mask and a full
//! pass 2, bit for bit; every new rule trains; and each step's pass counts follow the spec's
//! cost formulas.
mod common;

use common::{config, setup, sgd, Setup, BATCH, LR, STEPS};
use samkit_core::rules::{EgSam, Esam, Rst, SamOn, SegmentSelect, SwitchProb};
use samkit_core::{
    drive_step, Eval, GradRequest, MaskKind, NoHooks, Optimizer, Pass, Rule, Sam, Ssam,
};
use samkit_nn::{mean_weights, BnMode, Cpu, Model, ResNet18, ResNetConfig};
use samkit_train::{Pass2Mode, Passes, RunConfig, Trainer};

const WIDTH: usize = 2;
/// Pass counts are sums of a few exact binary fractions (k/8 of a batch) and of multiply-add
/// shares: equal to this.
const COUNT_EPS: f64 = 1e-12;

/// Trains `STEPS` steps; the weights after them and each step's passes.
fn train(cfg: RunConfig, data: &Setup) -> (Vec<f32>, Vec<Passes>, Vec<f64>) {
    let mut t =
        Trainer::new(cfg, data.train.clone(), data.test.clone(), data.norm).expect("a CPU trainer");
    let mut passes = Vec::new();
    let mut losses = Vec::new();
    for b in &data.batches {
        let log = t.step(b).expect("a step");
        assert!(!log.skipped, "step {} skipped", log.step);
        assert!(log.loss.is_finite());
        passes.push(log.passes);
        losses.push(log.loss);
    }
    (t.engine.net.params.clone(), passes, losses)
}

/// The same rule on the same batches with a full pass 2 (forward and backward of the whole
/// network at the perturbed weights), outside the trainer.
fn full_pass2_reference(rule: Rule, data: &Setup) -> Vec<f32> {
    let mut model =
        ResNet18::new(Cpu::new(), ResNetConfig::new(data.train.classes, WIDTH)).expect("a model");
    let mut w = model.init_params(0);
    let mut opt = Optimizer::new(model.layout().clone(), rule, sgd()).expect("an optimizer");
    let n = w.len();
    let (mut g, mut g2) = (vec![0.0f32; n], vec![0.0f32; n]);
    for b in &data.batches {
        opt.set_lr(LR).expect("lr");
        let x = samkit_nn::Tensor::from_vec(b.x.clone(), &[b.labels.len(), 3, 32, 32])
            .expect("a batch tensor");
        let mean = mean_weights(b.labels.len());
        drive_step(
            &mut opt,
            &mut w,
            (&mut g, &mut g2),
            |req, w: &Vec<f32>, out: &mut Vec<f32>| {
                let mode = match req {
                    GradRequest::Batch(Pass::Clean) => BnMode::Train,
                    GradRequest::Batch(Pass::Perturbed) => BnMode::TrainNoUpdate,
                    other => panic!("SSAM-L suffix asks for no {other:?}"),
                };
                let l = model.forward_backward(w, &x, b.labels[..].into(), &mean, mode, out)?;
                Ok::<_, samkit_nn::Error>(Eval {
                    loss: l.loss,
                    samples: l.samples,
                })
            },
            &mut NoHooks,
        )
        .expect("a step");
    }
    w
}

fn ssam_l(select: SegmentSelect) -> Rule {
    Rule::Ssam(Ssam {
        interval: 2,
        mask: MaskKind::Segments { select },
        ..Ssam::structured()
    })
}

#[test]
fn ssam_l_exact_equals_ssam_with_the_same_mask_and_a_full_pass_2() {
    let data = setup();
    let rule = ssam_l(SegmentSelect::Suffix);
    let (w, passes, _) = train(
        config("ssam-l", rule.clone(), Pass2Mode::Exact, WIDTH, &data),
        &data,
    );
    let reference = full_pass2_reference(rule, &data);
    assert_eq!(w.len(), reference.len());
    let differ = w
        .iter()
        .zip(&reference)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(differ, 0, "{differ} weights differ from the full pass 2's");
    // And pass 2 really started later: fewer forwards than SAM's 2, a whole backward.
    for p in &passes {
        assert!(p.forward < 2.0 && p.forward > 1.0, "{p:?}");
        assert!((p.backward - 2.0).abs() < COUNT_EPS, "{p:?}");
    }
}

#[test]
fn ssam_l_truncated_trains_with_fewer_passes_than_exact() {
    let data = setup();
    let rule = ssam_l(SegmentSelect::Suffix);
    let (we, exact, _) = train(
        config("ssam-l", rule.clone(), Pass2Mode::Exact, WIDTH, &data),
        &data,
    );
    let (wt, trunc, losses) = train(
        config("ssam-l", rule, Pass2Mode::Truncated, WIDTH, &data),
        &data,
    );
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(wt.iter().all(|x| x.is_finite()));
    for (e, t) in exact.iter().zip(&trunc) {
        assert!((e.forward - t.forward).abs() < COUNT_EPS, "{e:?} {t:?}");
        assert!(t.backward < e.backward, "{e:?} {t:?}");
        // Pass 2's backward covers what its forward did.
        assert!((t.backward - t.forward).abs() < COUNT_EPS, "{t:?}");
    }
    // The prefix steps with pass 1's gradient: another trajectory than exact's.
    assert_ne!(we, wt);
}

/// SGD `F + B`, SAM `2F + 2B`, ESAM `F + B + F_nograd + γ'(F + B)` with `γ' = ⌈γB⌉/B`, RST `p = 1`
/// as SAM and `p = 0` as SGD, each step's samples with them.
#[test]
fn pass_counts_follow_the_cost_formulas() {
    let data = setup();
    let b = BATCH as u64;
    let expect = |name: &str, rule: Rule, f: f64, f0: f64, bw: f64, samples: u64| {
        let (_, passes, _) = train(config(name, rule, Pass2Mode::Exact, WIDTH, &data), &data);
        for p in passes {
            assert!(
                (p.forward - f).abs() < COUNT_EPS
                    && (p.forward_nograd - f0).abs() < COUNT_EPS
                    && (p.backward - bw).abs() < COUNT_EPS
                    && p.samples == samples,
                "{name}: {p:?}, want F {f} F0 {f0} B {bw} samples {samples}"
            );
        }
    };
    expect("sgd", Rule::Base, 1.0, 0.0, 1.0, b);
    expect("sam", Rule::Sam(Sam::default()), 2.0, 0.0, 2.0, 2 * b);
    // γ = 0.3 of 8 samples: ⌈2.4⌉ = 3.
    let esam = Esam {
        gamma: 0.3,
        ..Esam::new(1)
    };
    let kept = 3.0 / BATCH as f64;
    expect(
        "esam",
        Rule::Esam(esam),
        1.0 + kept,
        1.0,
        1.0 + kept,
        2 * b + 3,
    );
    let rst = |p: f32| {
        Rule::Rst(Rst {
            p: SwitchProb::Constant { p },
            ..Rst::new(3)
        })
    };
    expect("rst", rst(1.0), 2.0, 0.0, 2.0, 2 * b);
    expect("rst", rst(0.0), 1.0, 0.0, 1.0, b);
    expect(
        "sam-on",
        Rule::SamOn(SamOn::default()),
        2.0,
        0.0,
        2.0,
        2 * b,
    );
}

#[test]
fn every_new_rule_trains_on_the_cpu() {
    let data = setup();
    let rules = [
        ("ssam-l", ssam_l(SegmentSelect::Fisher { samples: 8 })),
        (
            "esam",
            Rule::Esam(Esam {
                beta: 0.5,
                ..Esam::new(2)
            }),
        ),
        ("sam-on", Rule::SamOn(SamOn::default())),
        (
            "sam-on",
            Rule::SamOn(SamOn {
                asam: true,
                ..SamOn::default()
            }),
        ),
        (
            "rst",
            Rule::Rst(Rst {
                p: SwitchProb::Linear {
                    p0: 0.0,
                    p1: 1.0,
                    steps: STEPS as u64 - 1,
                },
                ..Rst::new(4)
            }),
        ),
        ("eg-sam", Rule::EgSam(EgSam::default())),
        (
            "og-sam",
            Rule::EgSam(EgSam {
                optimistic: true,
                eta_x: Some(0.01),
                ..EgSam::default()
            }),
        ),
    ];
    let init = {
        let m = ResNet18::new(Cpu::new(), ResNetConfig::new(data.train.classes, WIDTH))
            .expect("a model");
        m.init_params(0)
    };
    for (name, rule) in rules {
        for mode in [Pass2Mode::Exact, Pass2Mode::Truncated] {
            let (w, passes, losses) = train(config(name, rule.clone(), mode, WIDTH, &data), &data);
            assert!(
                w.iter().all(|x| x.is_finite()),
                "{name}: non-finite weights"
            );
            assert_ne!(w, init, "{name}: the weights did not move");
            assert!(losses.iter().all(|l| l.is_finite()), "{name}: {losses:?}");
            assert!(
                passes.iter().all(|p| p.forward >= 1.0 && p.backward >= 1.0),
                "{name}: {passes:?}"
            );
            if !matches!(rule, Rule::Ssam(_)) {
                // `--pass2` is SSAM-L's alone.
                break;
            }
        }
    }
}

#[test]
fn a_config_without_pass2_reads_as_exact() {
    let data = setup();
    let cfg = config(
        "sam",
        Rule::Sam(Sam::default()),
        Pass2Mode::Truncated,
        WIDTH,
        &data,
    );
    let mut v = serde_json::to_value(&cfg).expect("a config serializes");
    assert_eq!(v["pass2"], "truncated");
    v.as_object_mut().expect("an object").remove("pass2");
    let old: RunConfig = serde_json::from_value(v).expect("an old config reads");
    assert_eq!(old.pass2, Pass2Mode::Exact);
}

/// SSAM-L with a Fisher-chosen mask: on a step whose Fisher ran (steps 0 and 2 at interval 2)
/// the mask may have moved, so pass 1's kept prefix is not known to be unperturbed and pass 2
/// runs in full; on the step between, it starts at the committed mask's first perturbed unit.
/// (Sparsity 0.99 here: at width 2 a mask of half the segments starts at the stem.)
#[test]
fn ssam_l_runs_pass_2_in_full_on_a_step_whose_fisher_may_have_moved_the_mask() {
    let data = setup();
    let samples = 8;
    let rule = Rule::Ssam(Ssam {
        interval: 2,
        sparsity: 0.99,
        mask: MaskKind::Segments {
            select: SegmentSelect::Fisher { samples },
        },
        ..Ssam::structured()
    });
    let (_, passes, _) = train(
        config("ssam-l", rule, Pass2Mode::Exact, WIDTH, &data),
        &data,
    );
    let fisher = samples as f64 / BATCH as f64;
    for (i, p) in passes.iter().enumerate() {
        if i % 2 == 0 {
            // The Fisher, pass 1 and a whole pass 2.
            let want = fisher + 2.0;
            assert!((p.forward - want).abs() < COUNT_EPS, "step {i}: {p:?}");
            assert!((p.backward - want).abs() < COUNT_EPS, "step {i}: {p:?}");
        } else {
            // Pass 2 from the committed mask's first perturbed unit, backward in full.
            assert!(p.forward > 1.0 && p.forward < 2.0, "step {i}: {p:?}");
            assert!((p.backward - 2.0).abs() < COUNT_EPS, "step {i}: {p:?}");
        }
    }
}
