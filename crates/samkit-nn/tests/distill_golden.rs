//! MESA/SAF's distillation loss against PyTorch (`tools/golden_distill/make_golden.py`:
//! `F.kl_div(log_softmax(z/τ), log_softmax(t/τ), log_target=True)` and autograd in f64): the
//! per-sample losses `CE_ls + λ·τ²·KL`, the `τ²·KL` terms and `d(mean ℓ)/dz`, through
//! `samkit_nn::distill` and through a model's loss (`LossKind::eval` with `Targets::Distill`).
use std::path::Path;

use samkit_nn::distill::{distill_loss, kd_term, DistillTargets};
use samkit_nn::{mean_weights, LossKind, Targets};
use serde_json::Value;

/// samkit computes in f64 from f32 logits and rounds each value to f32 once: a few f32 ulps.
const TOL: f64 = 2e-6;

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1e-3f64, |a, &b| a.max(b.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= TOL * scale,
            "{what}[{i}]: {g} vs PyTorch {w}"
        );
    }
}

#[test]
fn distillation_loss_and_gradient_match_pytorch() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/distill/kd.json");
    let text = std::fs::read_to_string(&path).expect("golden file (tools/golden_distill)");
    let cases: Value = serde_json::from_str(&text).expect("golden JSON");
    let cases = cases.as_array().expect("a list of cases");
    assert!(!cases.is_empty());
    for c in cases {
        let n = c["n"].as_u64().expect("n") as usize;
        let k = c["k"].as_u64().expect("k") as usize;
        let lambda = c["lambda"].as_f64().expect("lambda") as f32;
        let tau = c["tau"].as_f64().expect("tau") as f32;
        let s = c["smoothing"].as_f64().expect("smoothing") as f32;
        // The golden inputs are f32 values written as f64: exact.
        let z: Vec<f32> = floats(&c["z"]).iter().map(|&v| v as f32).collect();
        let t: Vec<f32> = floats(&c["t"]).iter().map(|&v| v as f32).collect();
        let y: Vec<usize> = floats(&c["y"]).iter().map(|&v| v as usize).collect();
        let w = mean_weights(n);

        let kd = kd_term(&z, &t, k, tau, lambda, &w, None, None).expect("kd");
        close("τ²·KL", &kd, &floats(&c["kd"]));

        let d = DistillTargets {
            teacher: Some(&t),
            lambda,
            tau,
            ..DistillTargets::labels_only(&y)
        };
        let mut g = vec![0f32; n * k];
        let per = distill_loss(&z, k, s, &d, &w, Some(&mut g)).expect("loss");
        close("per-sample loss", &per, &floats(&c["per_sample"]));
        close("logit gradient", &g, &floats(&c["grad"]));

        // The same through a model's loss.
        let mut g2 = vec![0f32; n * k];
        let l = LossKind::CrossEntropy { smoothing: s }
            .eval(&z, n, k, Targets::Distill(d), &w, Some(&mut g2))
            .expect("LossKind::eval");
        assert_eq!(l.per_sample, per);
        assert_eq!(g2, g);
        let mean: f64 = floats(&c["per_sample"]).iter().sum::<f64>() / n as f64;
        assert!(
            (l.loss - mean).abs() <= TOL * mean.abs().max(1.0),
            "{} vs {mean}",
            l.loss
        );
    }
}
