//! Bad input gets a clear error, never a panic.
mod common;

use common::{run, sgd_momentum, Problem};
use samkit_core::{
    Asam, BaseOptimizer, DropRate, Error, FriendlySam, ImbSam, Layout, LookSam, MaskKind,
    Optimizer, Rule, Sam, Ssam,
};

fn layout() -> Layout {
    Layout::mlp(&[3, 4, 2]).unwrap()
}

fn new(rule: Rule, base: BaseOptimizer) -> Result<Optimizer, Error> {
    Optimizer::new(layout(), rule, base)
}

fn msg(e: Error) -> String {
    e.to_string()
}

#[test]
fn bad_hyperparameters_are_rejected_with_their_name() {
    let sgd = || BaseOptimizer::sgd(0.1, 0.9, 0.0);
    let cases: Vec<(Rule, &str)> = vec![
        (
            Rule::Sam(Sam {
                rho: -0.1,
                adaptive: false,
                eps_p: None,
                grad_centralization: false,
            }),
            "rho",
        ),
        (
            Rule::Sam(Sam {
                rho: f32::NAN,
                adaptive: false,
                eps_p: None,
                grad_centralization: false,
            }),
            "rho",
        ),
        (
            Rule::Sam(Sam {
                rho: f32::INFINITY,
                adaptive: false,
                eps_p: None,
                grad_centralization: false,
            }),
            "rho",
        ),
        (
            Rule::Asam(Asam {
                eta: -1.0,
                ..Asam::default()
            }),
            "eta",
        ),
        (
            Rule::FriendlySam(FriendlySam {
                lambda: 1.5,
                ..FriendlySam::default()
            }),
            "lambda",
        ),
        (
            Rule::Ssam(Ssam {
                sparsity: 1.0,
                ..Ssam::fisher()
            }),
            "sparsity",
        ),
        (
            Rule::Ssam(Ssam {
                sparsity: -0.1,
                ..Ssam::fisher()
            }),
            "sparsity",
        ),
        (
            Rule::Ssam(Ssam {
                interval: 0,
                ..Ssam::fisher()
            }),
            "interval",
        ),
        (
            Rule::Ssam(Ssam {
                mask: MaskKind::Fisher { samples: 0 },
                ..Ssam::fisher()
            }),
            "samples",
        ),
        (
            Rule::Ssam(Ssam {
                mask: MaskKind::Dynamic {
                    drop: DropRate::Constant { rate: 2.0 },
                    seed: 0,
                },
                ..Ssam::fisher()
            }),
            "drop rate",
        ),
        (
            Rule::ImbSam(ImbSam {
                kappa: -1.0,
                ..ImbSam::default()
            }),
            "kappa",
        ),
        (
            Rule::LookSam(LookSam {
                k: 0,
                ..LookSam::default()
            }),
            "k",
        ),
    ];
    for (rule, name) in cases {
        let e = new(rule.clone(), sgd())
            .err()
            .unwrap_or_else(|| panic!("{rule:?} accepted"));
        assert!(msg(e).contains(name), "{rule:?}");
    }
    for lr in [0.0, -1.0, f32::NAN] {
        let e = new(Rule::Base, BaseOptimizer::sgd(lr, 0.0, 0.0))
            .err()
            .unwrap();
        assert!(msg(e).contains("lr"));
    }
    let mut opt = new(Rule::Base, sgd()).unwrap();
    assert!(opt.set_lr(0.0).is_err());
    assert!(opt.set_lr(f32::INFINITY).is_err());
}

#[test]
fn buffers_that_do_not_match_the_layout_are_rejected() {
    let mut opt = new(Rule::Sam(Sam::default()), BaseOptimizer::sgd(0.1, 0.0, 0.0)).unwrap();
    let n = layout().len();
    let mut w = vec![0f32; n];
    let e = opt.first_step(&mut w, &vec![1f32; n - 1]).unwrap_err();
    assert!(matches!(e, Error::LayoutMismatch { .. }), "{e}");
    let mut short = vec![0f32; n + 2];
    assert!(opt.first_step(&mut short, &vec![1f32; n]).is_err());
    // Lists: wrong count, then a wrong segment length.
    let mut list: Vec<Vec<f32>> = vec![vec![0.0; 12], vec![0.0; 4], vec![0.0; 8]];
    let e = opt.first_step(&mut list, &vec![1f32; n]).unwrap_err();
    assert!(msg(e).contains("4 segments"));
    let mut list: Vec<Vec<f32>> = vec![vec![0.0; 12], vec![0.0; 4], vec![0.0; 7], vec![0.0; 2]];
    let e = opt.first_step(&mut list, &vec![1f32; n]).unwrap_err();
    assert!(e.to_string().contains("fc1.weight"), "{e}");
    // Nothing was perturbed by the failed calls.
    assert!(!opt.is_perturbed());
}

#[test]
fn protocol_misuse_is_an_error() {
    let n = layout().len();
    let mut w = vec![0.5f32; n];
    let g = vec![1f32; n];
    let mut opt = new(Rule::Sam(Sam::default()), BaseOptimizer::sgd(0.1, 0.0, 0.0)).unwrap();
    assert!(matches!(
        opt.second_step(&mut w, &g),
        Err(Error::Protocol(_))
    ));
    opt.first_step(&mut w, &g).unwrap();
    assert!(matches!(
        opt.first_step(&mut w, &g),
        Err(Error::Protocol(_))
    ));
    assert!(opt.state_bytes().is_err());
    opt.second_step(&mut w, &g).unwrap();

    let mut imb = new(
        Rule::ImbSam(ImbSam::default()),
        BaseOptimizer::sgd(0.1, 0.0, 0.0),
    )
    .unwrap();
    assert!(msg(imb.first_step(&mut w, &g).unwrap_err()).contains("first_step_split"));
    let mut sam = new(Rule::Sam(Sam::default()), BaseOptimizer::sgd(0.1, 0.0, 0.0)).unwrap();
    assert!(sam.first_step_split(&mut w, &g, None).is_err());
    assert!(sam.set_fisher(&g).is_err());

    let mut f = new(
        Rule::Ssam(Ssam::fisher()),
        BaseOptimizer::sgd(0.1, 0.0, 0.0),
    )
    .unwrap();
    assert_eq!(f.needs_fisher(), Some(128));
    assert!(msg(f.first_step(&mut w, &g).unwrap_err()).contains("set_fisher"));
    f.set_fisher(&g).unwrap();
    assert_eq!(f.needs_fisher(), None);
    f.first_step(&mut w, &g).unwrap();
    f.second_step(&mut w, &g).unwrap();
}

#[test]
fn state_files_are_checked() {
    let p = Problem::new(false);
    let (_, opt) = run(&p, Rule::Sam(Sam::default()), sgd_momentum(), 2);
    let bytes = opt.state_bytes().unwrap();
    let path = std::path::Path::new("state.safetensors");

    let other_layout = Problem::new(true).layout;
    let mut o = Optimizer::new(other_layout, Rule::Sam(Sam::default()), sgd_momentum()).unwrap();
    let e = o.load_state_bytes(&bytes, path).unwrap_err();
    assert!(msg(e).contains("another layout"));

    let mut o = Optimizer::new(
        p.layout.clone(),
        Rule::Asam(Asam::default()),
        sgd_momentum(),
    )
    .unwrap();
    assert!(msg(o.load_state_bytes(&bytes, path).unwrap_err()).contains("rule"));

    let adam = BaseOptimizer::Adam(Default::default());
    let mut o = Optimizer::new(p.layout.clone(), Rule::Sam(Sam::default()), adam).unwrap();
    assert!(msg(o.load_state_bytes(&bytes, path).unwrap_err()).contains("base optimizer"));

    let mut o =
        Optimizer::new(p.layout.clone(), Rule::Sam(Sam::default()), sgd_momentum()).unwrap();
    assert!(o.load_state_bytes(b"not a safetensors file", path).is_err());
    assert!(o.load_state_bytes(&bytes[..bytes.len() / 2], path).is_err());
    let e = o
        .load_state("/nonexistent/dir/state.safetensors")
        .unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    o.load_state_bytes(&bytes, path).unwrap();
    assert_eq!(o.steps(), 2);
}

#[test]
fn rho_can_follow_a_schedule() {
    let n = layout().len();
    let mut opt = new(Rule::Sam(Sam::default()), BaseOptimizer::sgd(0.1, 0.0, 0.0)).unwrap();
    opt.set_rho(0.2).unwrap();
    assert_eq!(
        opt.rule(),
        &Rule::Sam(Sam {
            rho: 0.2,
            adaptive: false,
            eps_p: None,
            grad_centralization: false,
        })
    );
    assert!(opt.set_rho(-1.0).is_err());
    assert!(opt.set_rho(f32::NAN).is_err());
    let mut w = vec![0f32; n];
    let g: Vec<f32> = (0..n).map(|i| i as f32 - 5.0).collect();
    opt.first_step(&mut w, &g).unwrap();
    let norm = w.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    assert!((norm - 0.2).abs() < 1e-6);
    let mut base = new(Rule::Base, BaseOptimizer::sgd(0.1, 0.0, 0.0)).unwrap();
    assert!(base.set_rho(0.1).is_err());
}
