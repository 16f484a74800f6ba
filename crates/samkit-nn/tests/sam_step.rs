//! The model driven by `samkit_core::Optimizer::step`: a SAM step leaves batch-norm running
//! statistics exactly as pass 1 left them, and every rule of the family trains the small
//! ResNet through the same closure (SSAM-F's Fisher through `per_sample_grad_sq`, ImbSAM's head
//! and tail losses through sample weights).
use samkit_core::{
    Asam, BaseOptimizer, Eval, FriendlySam, GradRequest, Gsam, ImbSam, LookSam, Optimizer, Pass,
    Rule, Sam, Sgd, Ssam,
};
use samkit_nn::init::Rng;
use samkit_nn::{mean_weights, BnMode, Model, ResNet18, ResNetConfig, Tensor};

fn setup(n: usize) -> (ResNet18, Vec<f32>, Tensor, Vec<usize>) {
    let model = ResNet18::cpu(ResNetConfig::new(4, 2)).unwrap();
    let w = model.init_params(11);
    let mut xv = vec![0.0; n * 3 * 8 * 8];
    Rng::new(12).fill_normal(&mut xv, 1.0);
    let x = Tensor::from_vec(xv, &[n, 3, 8, 8]).unwrap();
    let y = (0..n).map(|i| (i * 7 + 1) % 4).collect();
    (model, w, x, y)
}

fn sgd() -> BaseOptimizer {
    BaseOptimizer::Sgd(Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Sgd::default()
    })
}

#[test]
fn sam_step_leaves_running_statistics_as_pass_one_left_them() {
    let (mut model, mut w, x, y) = setup(6);
    let (mut reference, _, _, _) = setup(6);
    let wts = mean_weights(6);
    // Pass 1 alone, at the same weights, on an identical model.
    let mut g = vec![0.0; w.len()];
    reference
        .forward_backward(&w, &x, (&y).into(), &wts, BnMode::Train, &mut g)
        .unwrap();
    let after_pass1 = reference.buffers().unwrap();

    let mut opt = Optimizer::new(model.layout().clone(), Rule::Sam(Sam::default()), sgd()).unwrap();
    let mut modes = Vec::new();
    let report = opt
        .step(&mut w[..], |req, w, g| match req {
            GradRequest::Batch(pass) => {
                modes.push(BnMode::for_pass(pass));
                Ok(model
                    .forward_backward(w, &x, (&y).into(), &wts, BnMode::for_pass(pass), g)?
                    .eval())
            }
            other => panic!("unexpected request {other:?}"),
        })
        .unwrap();
    assert_eq!(modes, [BnMode::Train, BnMode::TrainNoUpdate]);
    assert!(report.perturbed_loss.is_some());
    assert_eq!(
        model.buffers().unwrap(),
        after_pass1,
        "pass 2 changed the running statistics"
    );

    // The check can fail: a second training-mode pass at the perturbed weights moves them.
    reference.forward(&w, &x, BnMode::Train).unwrap();
    assert_ne!(reference.buffers().unwrap(), after_pass1);
}

fn rules() -> Vec<Rule> {
    let mut fisher = Ssam::fisher();
    fisher.mask = samkit_core::MaskKind::Fisher { samples: 8 };
    fisher.interval = 2;
    let mut dynamic = Ssam::dynamic(3);
    dynamic.interval = 2;
    vec![
        Rule::Base,
        Rule::Sam(Sam::default()),
        Rule::Sam(Sam {
            adaptive: true,
            rho: 0.5,
            eps_p: None,
            grad_centralization: false,
        }),
        Rule::Asam(Asam::default()),
        Rule::FriendlySam(FriendlySam::default()),
        Rule::Ssam(fisher),
        Rule::Ssam(dynamic),
        Rule::ImbSam(ImbSam {
            tau: 2,
            ..ImbSam::default()
        }),
        Rule::Gsam(Gsam::default()),
        Rule::LookSam(LookSam {
            k: 2,
            ..LookSam::default()
        }),
    ]
}

#[test]
fn every_rule_of_the_family_trains_the_resnet() {
    let n = 8;
    for rule in rules() {
        let name = rule.name();
        let (mut model, mut w, x, y) = setup(n);
        // ImbSAM: classes 2 and 3 form the tail (two samples each in this batch).
        let tail: Vec<bool> = y.iter().map(|&c| c >= 2).collect();
        let head_w: Vec<f32> = tail
            .iter()
            .map(|&t| if t { 0.0 } else { 1.0 / n as f32 })
            .collect();
        let tail_w: Vec<f32> = tail
            .iter()
            .map(|&t| if t { 1.0 / n as f32 } else { 0.0 })
            .collect();
        let wts = mean_weights(n);
        let mut opt = Optimizer::new(model.layout().clone(), rule, sgd()).unwrap();
        let mut losses = Vec::new();
        let mut fishers = 0;
        for _ in 0..6 {
            let r = opt
                .step(&mut w[..], |req, w, g| {
                    let (wts, mode) = match req {
                        GradRequest::Batch(pass) => (&wts, BnMode::for_pass(pass)),
                        // Head then tail at the clean weights: statistics updated once.
                        GradRequest::Head => (&head_w, BnMode::Train),
                        GradRequest::Tail(Pass::Clean) => (&tail_w, BnMode::TrainNoUpdate),
                        GradRequest::Tail(Pass::Perturbed) => (&tail_w, BnMode::TrainNoUpdate),
                        GradRequest::Fisher { samples } => {
                            assert_eq!(samples, n);
                            fishers += 1;
                            let l = model.per_sample_grad_sq(w, &x, (&y).into(), g)?;
                            return Ok(Eval {
                                loss: l.per_sample.iter().map(|&v| v as f64).sum::<f64>()
                                    / n as f64,
                                samples: n,
                            });
                        }
                    };
                    Ok(model
                        .forward_backward(w, &x, (&y).into(), wts, mode, g)?
                        .eval())
                })
                .unwrap();
            assert_eq!(r.outcome, samkit_core::Outcome::Applied, "{name}");
            losses.push(r.loss);
        }
        assert!(w.iter().all(|v| v.is_finite()), "{name}");
        assert!(
            losses[5] < losses[0],
            "{name}: loss did not decrease: {losses:?}"
        );
        if name == "ssam-f" {
            assert!(fishers >= 2, "the Fisher mask is recomputed every 2 steps");
        }
    }
}
