//! What the adapter refuses, and how: Vars it cannot optimize, gradients and losses of the wrong
//! shape, a loss function that fails (the weights come back), and a VarMap's buffers.
#![allow(clippy::needless_update)]
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{batch_norm, linear, BatchNormConfig, VarBuilder, VarMap};
use samkit_candle::{CandleSam, Error, GradRequest, ParamVar, ParamVars};
use samkit_core::{BaseOptimizer, Layout, Optimizer, Outcome, ParamKind, Pass, Rule, Sam, Sgd};

fn sgd() -> BaseOptimizer {
    BaseOptimizer::Sgd(Sgd {
        lr: 0.1,
        momentum: 0.0,
        weight_decay: 0.0,
        ..Sgd::default()
    })
}

fn sam() -> Rule {
    Rule::Sam(Sam {
        rho: 0.05,
        adaptive: false,
        ..Sam::default()
    })
}

fn var(values: &[f32]) -> Var {
    Var::from_slice(values, values.len(), &Device::Cpu).expect("var")
}

fn two_vars() -> ParamVars {
    ParamVars::new(vec![
        ParamVar::new("w.weight", var(&[1.0, -2.0, 0.5])),
        ParamVar::new("w.bias", var(&[0.25])),
    ])
    .expect("vars")
}

fn values(opt: &CandleSam<Optimizer>) -> Vec<Vec<f32>> {
    opt.vars()
        .vars()
        .map(|v| v.to_vec1::<f32>().expect("read"))
        .collect()
}

/// `½‖w‖² + ½b²`, a loss whose gradient is the weights themselves.
fn half_sq(opt_vars: &[Tensor]) -> candle_core::Result<Tensor> {
    let mut l = opt_vars[0].sqr()?.sum_all()?;
    for v in &opt_vars[1..] {
        l = (l + v.sqr()?.sum_all()?)?;
    }
    l * 0.5
}

fn tensors(opt: &CandleSam<Optimizer>) -> Vec<Tensor> {
    opt.vars().vars().map(|v| v.as_tensor().clone()).collect()
}

#[test]
fn non_f32_var_is_refused_by_name() {
    let v = Var::from_slice(&[1.0f64, 2.0], 2, &Device::Cpu).expect("var");
    let err = ParamVars::new(vec![ParamVar::new("fc.weight", v)]).expect_err("f64");
    match &err {
        Error::Var { name, detail } => {
            assert_eq!(name, "fc.weight");
            assert!(detail.contains("F64"), "{detail}");
        }
        other => panic!("expected a Var error, got {other:?}"),
    }
}

#[test]
fn the_same_var_twice_is_refused() {
    let v = var(&[1.0, 2.0]);
    let err = ParamVars::new(vec![
        ParamVar::new("a.weight", v.clone()),
        ParamVar::new("b.weight", v),
    ])
    .expect_err("shared storage");
    match err {
        Error::Var { name, detail } => {
            assert_eq!(name, "b.weight");
            assert!(detail.contains("a.weight"), "{detail}");
        }
        other => panic!("expected a Var error, got {other:?}"),
    }
}

#[test]
fn no_vars_and_duplicate_names_are_refused() {
    assert!(matches!(
        ParamVars::new(Vec::new()),
        Err(Error::Mismatch(_))
    ));
    let err = ParamVars::new(vec![
        ParamVar::new("a.weight", var(&[1.0])),
        ParamVar::new("a.weight", var(&[2.0])),
    ])
    .expect_err("duplicate name");
    assert!(matches!(err, Error::Samkit(_)), "{err:?}");
}

#[test]
fn an_optimizer_for_another_layout_is_refused() {
    let other = Layout::flat(4).expect("layout");
    let opt = Optimizer::new(other, sam(), sgd()).expect("optimizer");
    let err = CandleSam::with_optimizer(two_vars(), opt)
        .err()
        .expect("mismatched layout");
    assert!(matches!(err, Error::Mismatch(_)), "{err:?}");
}

#[test]
fn a_non_scalar_loss_is_refused_before_any_change() {
    let mut opt = CandleSam::new(two_vars(), sam(), sgd()).expect("opt");
    let before = values(&opt);
    let t = tensors(&opt);
    let err = opt.step(|_| t[0].sqr()).expect_err("vector loss");
    match err {
        Error::LossShape { request, detail } => {
            assert_eq!(request, GradRequest::Batch(Pass::Clean));
            assert!(detail.contains("scalar"), "{detail}");
        }
        other => panic!("expected LossShape, got {other:?}"),
    }
    assert_eq!(values(&opt), before);
}

#[test]
fn a_failing_perturbed_pass_restores_the_weights() {
    let mut opt = CandleSam::new(two_vars(), sam(), sgd()).expect("opt");
    let before = values(&opt);
    let t = tensors(&opt);
    let err = opt
        .step(|req| match req {
            GradRequest::Batch(Pass::Perturbed) => Err(candle_core::Error::Msg("no data".into())),
            _ => half_sq(&t),
        })
        .expect_err("pass 2 fails");
    match &err {
        Error::LossFn { request, source } => {
            assert_eq!(*request, GradRequest::Batch(Pass::Perturbed));
            assert!(source.to_string().contains("no data"));
        }
        other => panic!("expected LossFn, got {other:?}"),
    }
    // Restored bit for bit, and the optimizer takes the next step normally.
    assert_eq!(values(&opt), before);
    let report = opt.step(|_| half_sq(&t)).expect("next step");
    assert_eq!(report.outcome, Outcome::Applied);
    assert_ne!(values(&opt), before);
}

/// The explicit protocol with candle `GradStore`s gives the closure form's result.
#[test]
fn explicit_protocol_matches_the_closure_form() {
    let mut a = CandleSam::new(two_vars(), sam(), sgd()).expect("opt");
    let mut b = CandleSam::new(two_vars(), sam(), sgd()).expect("opt");
    let (ta, tb) = (tensors(&a), tensors(&b));
    for _ in 0..3 {
        a.step(|_| half_sq(&ta)).expect("closure step");
        let g1 = half_sq(&tb).and_then(|l| l.backward()).expect("pass 1");
        assert_eq!(
            b.first_step(&g1).expect("first"),
            samkit_core::FirstOutcome::Perturbed
        );
        let g2 = half_sq(&tb).and_then(|l| l.backward()).expect("pass 2");
        assert_eq!(b.second_step(&g2).expect("second"), Outcome::Applied);
    }
    assert_eq!(values(&a), values(&b));
}

/// A Var the loss does not reach gets a zero gradient: SGD without weight decay leaves it.
#[test]
fn a_var_outside_the_loss_gets_zero_gradient() {
    let mut opt = CandleSam::new(two_vars(), sam(), sgd()).expect("opt");
    let t = tensors(&opt);
    let bias_before = values(&opt)[1].clone();
    opt.step(|_| t[0].sqr()?.sum_all()).expect("step");
    assert_eq!(values(&opt)[1], bias_before);
}

#[test]
fn fisher_and_gradients_of_the_wrong_shape_are_refused() {
    let mut opt = CandleSam::new(two_vars(), sam(), sgd()).expect("opt");
    let err = opt
        .set_fisher(vec![Tensor::zeros(3, DType::F32, &Device::Cpu).expect("t")])
        .expect_err("one tensor for two Vars");
    assert!(matches!(err, Error::Mismatch(_)), "{err:?}");
    let err = opt
        .set_fisher(vec![
            Tensor::zeros(3, DType::F32, &Device::Cpu).expect("t"),
            Tensor::zeros(2, DType::F32, &Device::Cpu).expect("t"),
        ])
        .expect_err("wrong shape");
    assert!(
        matches!(err, Error::Var { ref name, .. } if name == "w.bias"),
        "{err:?}"
    );
    // Shapes right, but SAM has no Fisher: samkit's protocol error comes through.
    let err = opt
        .set_fisher(vec![
            Tensor::zeros(3, DType::F32, &Device::Cpu).expect("t"),
            Tensor::zeros(1, DType::F32, &Device::Cpu).expect("t"),
        ])
        .expect_err("SAM takes no Fisher");
    assert!(matches!(err, Error::Samkit(_)), "{err:?}");
    let err = opt
        .vars()
        .fisher_from_losses(&Tensor::zeros((2, 2), DType::F32, &Device::Cpu).expect("t"))
        .expect_err("per-sample losses are a vector");
    assert!(matches!(err, Error::LossShape { .. }), "{err:?}");
}

#[test]
fn from_varmap_sorts_names_classifies_biases_and_skips_running_stats() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    linear(3, 2, vb.pp("fc")).expect("linear");
    batch_norm(2, BatchNormConfig::default(), vb.pp("bn")).expect("bn");
    let vars = ParamVars::from_varmap(&varmap).expect("vars");
    let seen: Vec<(&str, ParamKind)> = vars
        .layout()
        .segments()
        .iter()
        .map(|s| (s.name.as_str(), s.kind))
        .collect();
    assert_eq!(
        seen,
        [
            ("bn.bias", ParamKind::Bias),
            ("bn.weight", ParamKind::Weight),
            ("fc.bias", ParamKind::Bias),
            ("fc.weight", ParamKind::Weight),
        ]
    );
}

/// The Vars are reached through one nested in-place op per Var: a model of many tensors steps on
/// a test thread's default 2 MiB stack.
#[test]
fn a_thousand_vars_step_on_a_small_stack() {
    const VARS: usize = 1000;
    let params = (0..VARS)
        .map(|i| ParamVar::new(format!("l{i}.weight"), var(&[i as f32, 1.0])))
        .collect();
    let mut opt = CandleSam::new(ParamVars::new(params).expect("vars"), sam(), sgd()).expect("opt");
    let t = tensors(&opt);
    let report = opt.step(|_| half_sq(&t)).expect("step");
    assert_eq!(report.outcome, Outcome::Applied);
    // ½‖w‖²: SAM's step is w ← w − lr·(w + e) with e along w, so every weight shrinks.
    let after = values(&opt);
    assert!(
        after[VARS - 1][0] < (VARS - 1) as f32,
        "{:?}",
        after[VARS - 1]
    );
}
