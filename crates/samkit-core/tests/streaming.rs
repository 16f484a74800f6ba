//! The passes' streaming stores change no bit: every rule on an arena just above
//! `stream::NT_MIN_LEN` (where they stream) gives the same weights, perturbed weights and state
//! with streaming on and off. (Alone in its own test binary: `stream::set_enabled` is global.)
use samkit_core::stream::{self, NT_MIN_LEN};
use samkit_core::{
    Adam, Asam, BaseOptimizer, FirstOutcome, FriendlySam, Gsam, ImbSam, Layout, LookSam, Optimizer,
    Rule, Sam, Sgd, Ssam,
};

fn fill(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

/// Segments of odd lengths, so that units start at every alignment.
fn layout() -> Layout {
    let mut l = Layout::new();
    l.push("a.weight", &[7, 5, 3]).unwrap();
    l.push("a.bias", &[7]).unwrap();
    l.push("big.weight", &[2049, 2049]).unwrap();
    l.push("big.bias", &[2049]).unwrap();
    l.push("c.weight", &[13, 29]).unwrap();
    assert!(l.len() > NT_MIN_LEN);
    l
}

/// The gradients of two steps (and a Fisher), made once for every run.
struct Inputs {
    g: Vec<(Vec<f32>, Vec<f32>)>,
    fisher: Vec<f32>,
}

/// Bits of the weights after every half step and of every state buffer at the end.
fn trajectory(rule: &Rule, base: &BaseOptimizer, inputs: &Inputs) -> Vec<u32> {
    let layout = layout();
    let n = layout.len();
    let mut opt = Optimizer::new(layout, rule.clone(), base.clone()).unwrap();
    let mut w = fill(n, 5);
    let mut out = Vec::new();
    let mut eat = |v: &[f32]| out.extend(v.iter().step_by(61).map(|x| x.to_bits()));
    for (g, g2) in &inputs.g {
        if opt.needs_fisher().is_some() {
            opt.set_fisher(&inputs.fisher).unwrap();
        }
        let first = if opt.needs_head_tail() {
            opt.first_step_split(&mut w, g, Some(g2)).unwrap()
        } else {
            opt.first_step(&mut w, g).unwrap()
        };
        eat(&w);
        if first == FirstOutcome::Perturbed {
            opt.second_step(&mut w, g2).unwrap();
        }
        eat(&w);
    }
    for name in opt.base().state_buffers() {
        eat(opt.base_state(name).unwrap());
    }
    eat(opt.friendly_momentum());
    eat(opt.looksam_gv());
    out
}

#[test]
fn streaming_stores_change_no_bit() {
    let rules = [
        Rule::Sam(Sam::default()),
        Rule::Sam(Sam {
            adaptive: true,
            ..Sam::default()
        }),
        Rule::Asam(Asam::default()),
        Rule::Asam(Asam {
            filterwise: true,
            ..Asam::default()
        }),
        Rule::FriendlySam(FriendlySam::default()),
        Rule::Ssam(Ssam {
            interval: u64::MAX,
            ..Ssam::fisher()
        }),
        Rule::Ssam(Ssam {
            interval: 1,
            ..Ssam::dynamic(3)
        }),
        Rule::ImbSam(ImbSam::default()),
        Rule::Gsam(Gsam::default()),
        Rule::LookSam(LookSam {
            k: 2,
            ..LookSam::default()
        }),
    ];
    let bases = [
        BaseOptimizer::Sgd(Sgd {
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 5e-4,
            ..Sgd::default()
        }),
        BaseOptimizer::AdamW(Adam::adamw()),
    ];
    let n = layout().len();
    let inputs = Inputs {
        g: (0..2)
            .map(|t| (fill(n, 100 + t), fill(n, 200 + t)))
            .collect(),
        fisher: fill(n, 300),
    };
    for (i, rule) in rules.iter().enumerate() {
        // Every rule with SGD-momentum, SAM also with AdamW (the base only changes the update,
        // which streams the same way for every base).
        for base in &bases[..if i == 0 { 2 } else { 1 }] {
            stream::set_enabled(true);
            let on = trajectory(rule, base, &inputs);
            stream::set_enabled(false);
            let off = trajectory(rule, base, &inputs);
            stream::set_enabled(true);
            assert!(
                on == off,
                "{} + {}: streaming changed bits",
                rule.name(),
                base.name()
            );
        }
    }
}
