//! SSAM-F's `schedule = official` (ALGORITHMS.md, "SSAM-F") against a hand-written replay of
//! the official code's loop, and the exact live counts `L = N − ⌈N·s⌉` of a written sparsity.
use proptest::prelude::*;
use samkit_core::rules::{dead_count, MaskClock};
use samkit_core::{
    BaseOptimizer, FirstOutcome, Layout, MaskKind, MaskSchedule, Optimizer, Outcome, Rule, Ssam,
};

/// Parameters of the toy least-squares model: two segments, so the mask is a global top-k.
const N: usize = 10;
/// Training samples; a batch is two consecutive ones.
const SAMPLES: usize = 12;
const BATCH: usize = 2;
const LR: f32 = 0.05;
const RHO: f32 = 0.1;
/// Fisher samples per mask (the test draws the first ones; the draw is the trainer's part).
const FISHER: usize = 4;
/// The optimizer forms `e` in f32 with an f64 norm; the replay runs in f64 throughout, so the
/// weights agree to f32 rounding accumulated over a dozen steps.
const REPLAY_REL: f64 = 1e-5;

fn layout() -> Layout {
    let mut l = Layout::new();
    l.push("a.weight", &[6]).unwrap();
    l.push("b.bias", &[4]).unwrap();
    l
}

/// Sample `i`: `x_i` and `y_i` of `ℓ_i(w) = ½(x_i·w − y_i)²`, distinct magnitudes so that the
/// Fisher has no ties.
fn sample(i: usize) -> ([f64; N], f64) {
    let mut x = [0.0; N];
    for (j, v) in x.iter_mut().enumerate() {
        *v = (((i * 7 + j * 3) % 11) as f64 - 5.0) * 0.1 + 0.01 * (j as f64 + 1.0);
    }
    (x, ((i % 5) as f64 - 2.0) * 0.3)
}

/// `∇ℓ_i(w) = (x_i·w − y_i)·x_i`.
fn sample_grad(i: usize, w: &[f64]) -> [f64; N] {
    let (x, y) = sample(i);
    let r: f64 = x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() - y;
    x.map(|v| r * v)
}

/// The mean gradient of batch `b` (samples `2b, 2b + 1` mod 12).
fn batch_grad(b: usize, w: &[f64]) -> Vec<f64> {
    let mut g = vec![0.0; N];
    for k in 0..BATCH {
        let gi = sample_grad((b * BATCH + k) % SAMPLES, w);
        for (a, v) in g.iter_mut().zip(gi) {
            *a += v / BATCH as f64;
        }
    }
    g
}

/// `F = Σ_i (∇ℓ_i)²` over the first [`FISHER`] samples.
fn fisher(w: &[f64]) -> Vec<f64> {
    let mut f = vec![0.0; N];
    for i in 0..FISHER {
        for (a, v) in f.iter_mut().zip(sample_grad(i, w)) {
            *a += v * v;
        }
    }
    f
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn sgd() -> BaseOptimizer {
    BaseOptimizer::sgd(LR, 0.0, 0.0)
}

fn official(steps_per_epoch: u64, k_epochs: u64) -> Ssam {
    Ssam {
        rho: RHO,
        interval: k_epochs,
        mask: MaskKind::Fisher { samples: FISHER },
        ..Ssam::fisher_official(Some(steps_per_epoch))
    }
}

/// The official code's training loop, replayed by hand in f64: the mask starts all zero; each
/// step is a SAM step with the current mask (`e = ρ·M⊙g/‖M⊙g‖`, 0 for the zero mask, then
/// SGD with `g2 = ∇L(w + e)`); after the first batch of every epoch `e` with `e mod K = 0` the
/// mask becomes the top `L` of the Fisher at the weights that step left. Returns the weights
/// after every step and the steps after which a mask was computed.
fn official_replay(w0: &[f64], epochs: usize, per: usize, k: usize) -> (Vec<Vec<f64>>, Vec<usize>) {
    let live = Ssam::fisher().live_count(N);
    let mut w = w0.to_vec();
    let mut mask = vec![false; N];
    let (mut traj, mut updates) = (Vec::new(), Vec::new());
    for epoch in 0..epochs {
        for batch_idx in 0..per {
            let b = epoch * per + batch_idx;
            let g = batch_grad(b, &w);
            let d: Vec<f64> = g
                .iter()
                .zip(&mask)
                .map(|(&v, &m)| if m { v } else { 0.0 })
                .collect();
            let norm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
            let g2 = if norm > 0.0 {
                let pert: Vec<f64> = w
                    .iter()
                    .zip(&d)
                    .map(|(&a, &v)| a + RHO as f64 * v / norm)
                    .collect();
                batch_grad(b, &pert)
            } else {
                g
            };
            for (a, v) in w.iter_mut().zip(&g2) {
                *a -= LR as f64 * v;
            }
            traj.push(w.clone());
            if epoch % k == 0 && batch_idx == 0 {
                let f = fisher(&w);
                let mut order: Vec<usize> = (0..N).collect();
                order.sort_by(|&a, &c| f[c].total_cmp(&f[a]).then(a.cmp(&c)));
                mask = vec![false; N];
                for &i in &order[..live] {
                    mask[i] = true;
                }
                updates.push(b);
            }
        }
    }
    (traj, updates)
}

fn max_rel(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn ssam_f_official_schedule_reproduces_the_official_loop() {
    let (per, k, epochs) = (3usize, 2usize, 5usize);
    let w0: Vec<f64> = (0..N).map(|j| 0.2 * (j as f64 - 4.5) / 4.5).collect();
    let (want, want_updates) = official_replay(&w0, epochs, per, k);
    // Masks come after the first batch of epochs 0, 2 and 4.
    assert_eq!(want_updates, vec![0, 6, 12]);
    let rule = Rule::Ssam(official(per as u64, k as u64));
    let mut opt = Optimizer::new(layout(), rule, sgd()).unwrap();
    let mut w = f32s(&w0);
    let mut fisher_before = Vec::new();
    let mut masks = Vec::new();
    assert_eq!(want.len(), epochs * per);
    for (b, want_b) in want.iter().enumerate() {
        if let Some(samples) = opt.needs_fisher() {
            assert_eq!(samples, FISHER);
            fisher_before.push(b);
            opt.set_fisher(&f32s(&fisher(&f64s(&w)))).unwrap();
        }
        let g = f32s(&batch_grad(b, &f64s(&w)));
        let before = w.clone();
        match opt.first_step(&mut w, &g).unwrap() {
            FirstOutcome::Applied => {
                // Step 0 perturbs nothing: the base optimizer's step, bit for bit.
                assert_eq!(b, 0, "only the zero mask's step is one pass");
                let mut base = Optimizer::new(layout(), Rule::Base, sgd()).unwrap();
                let mut wb = before.clone();
                base.first_step(&mut wb, &g).unwrap();
                assert_eq!(w, wb, "step 0 is the base optimizer's step");
            }
            FirstOutcome::Perturbed => {
                let g2 = f32s(&batch_grad(b, &f64s(&w)));
                assert_eq!(opt.second_step(&mut w, &g2).unwrap(), Outcome::Applied);
            }
            FirstOutcome::Skipped => panic!("step {b}: finite gradients are not skipped"),
        }
        masks.push((opt.mask().cloned(), opt.mask_updates()));
        let rel = max_rel(&w, want_b);
        assert!(
            rel < REPLAY_REL,
            "step {b}: {rel:e} off the official replay"
        );
    }
    // The Fisher of the mask computed after batch b is asked for before batch b + 1, at the
    // same weights; the mask changes only at those steps (epoch boundaries, every K epochs).
    let asked: Vec<usize> = want_updates.iter().map(|b| b + 1).collect();
    assert_eq!(fisher_before, asked);
    assert_eq!(opt.mask_updates(), want_updates.len() as u64);
    assert!(masks[0].0.is_none(), "no mask before the first Fisher");
    for b in 1..masks.len() {
        let ((m, u), (m0, u0)) = (&masks[b], &masks[b - 1]);
        assert_eq!(u - u0, asked.contains(&b) as u64, "step {b}: mask updates");
        assert!(m == m0 || asked.contains(&b), "step {b}: the mask changed");
    }
}

#[test]
fn a_skipped_fisher_step_asks_for_the_fisher_again() {
    // Epochs of 2 steps, K = 1 epoch: masks are due after batches 0, 2, 4, ...
    let mut opt = Optimizer::new(layout(), Rule::Ssam(official(2, 1)), sgd()).unwrap();
    let mut w = vec![0.1f32; N];
    let g = |w: &[f32], b: usize| f32s(&batch_grad(b, &f64s(w)));
    assert_eq!(opt.needs_fisher(), None);
    let g0 = g(&w, 0);
    assert_eq!(opt.first_step(&mut w, &g0).unwrap(), FirstOutcome::Applied);
    assert_eq!(opt.needs_fisher(), Some(FISHER));
    opt.set_fisher(&f32s(&fisher(&f64s(&w)))).unwrap();
    let mut bad = g(&w, 1);
    bad[3] = f32::NAN;
    assert_eq!(opt.first_step(&mut w, &bad).unwrap(), FirstOutcome::Skipped);
    // The skipped step dropped its new mask: the Fisher is due again.
    assert_eq!((opt.mask_updates(), opt.needs_fisher()), (0, Some(FISHER)));
    opt.set_fisher(&f32s(&fisher(&f64s(&w)))).unwrap();
    let g1 = g(&w, 2);
    assert_eq!(
        opt.first_step(&mut w, &g1).unwrap(),
        FirstOutcome::Perturbed
    );
    let g2 = g(&w, 2);
    opt.second_step(&mut w, &g2).unwrap();
    // Batch 2 (the first of epoch 1) is done: the next mask is due before batch 3.
    assert_eq!((opt.mask_updates(), opt.needs_fisher()), (1, Some(FISHER)));
}

#[test]
fn the_official_schedule_is_checked() {
    // Without the epoch's length an optimizer refuses it, naming it.
    let err = Optimizer::new(layout(), Rule::Ssam(Ssam::fisher_official(None)), sgd())
        .err()
        .expect("an unset epoch length is refused");
    assert!(err.to_string().contains("steps_per_epoch"), "{err}");
    // Only SSAM-F's coordinate mask has it.
    let d = Rule::Ssam(Ssam {
        schedule: MaskSchedule::Official {
            steps_per_epoch: Some(3),
        },
        ..Ssam::dynamic(1)
    });
    assert!(d.validate().unwrap_err().to_string().contains("schedule"));
    let zero = Rule::Ssam(Ssam::fisher_official(Some(0)));
    assert!(zero.validate().is_err());
    // A config written before the schedule existed reads as the survey's; official round-trips.
    let mut old = serde_json::to_value(Rule::Ssam(Ssam::fisher())).unwrap();
    assert!(old.get("schedule").is_none(), "the default is not written");
    old.as_object_mut().unwrap().remove("schedule");
    let back: Rule = serde_json::from_value(old).unwrap();
    assert_eq!(back, Rule::Ssam(Ssam::fisher()));
    let off = Rule::Ssam(official(7, 2));
    let text = serde_json::to_string(&off).unwrap();
    assert_eq!(serde_json::from_str::<Rule>(&text).unwrap(), off);
}

#[test]
fn fisher_due_counts_batches_in_epochs() {
    let c = official(4, 3);
    let due = |steps, skipped, mask_updates| {
        c.fisher_due(&MaskClock {
            steps,
            skipped,
            mask_updates,
        })
    };
    assert!(!due(0, 0, 0), "the first mask is the zero mask");
    assert!(
        due(1, 0, 0) && due(0, 1, 0),
        "after batch 0, applied or skipped"
    );
    assert!(
        !due(1, 0, 1) && !due(12, 0, 1),
        "none again until epoch 3's first batch"
    );
    assert!(due(13, 0, 1) && due(10, 3, 1) && !due(13, 0, 2));
    // The survey's schedule: every K steps, from step 0.
    let s = Ssam {
        interval: 3,
        ..Ssam::fisher()
    };
    let steps: Vec<u64> = (0..8)
        .filter(|&t| {
            s.fisher_due(&MaskClock {
                steps: t,
                ..MaskClock::default()
            })
        })
        .collect();
    assert_eq!(steps, vec![0, 3, 6]);
}

/// `⌈N·m / 10^d⌉` of the decimal `m / 10^d`, in integers.
fn exact_dead(n: usize, m: u64, d: u32) -> usize {
    (n as u128 * m as u128).div_ceil(10u128.pow(d)) as usize
}

/// The count with `s` as an f32 cast to f64, the formula before counts were exact.
fn f32_dead(n: usize, s: f32) -> usize {
    ((n as f64 * s as f64).ceil() as usize).min(n)
}

/// A WRN-28-10-sized parameter count (36.5 M).
const WRN_28_10: usize = 36_479_194;

#[test]
fn live_counts_are_exact_for_the_written_sparsity() {
    let live = |n, s| {
        Ssam {
            sparsity: s,
            ..Ssam::fisher()
        }
        .live_count(n)
    };
    assert_eq!(live(250, 0.2), 200);
    assert_eq!(250 - f32_dead(250, 0.2), 199, "the f32 product's count");
    // 0.9·N = 32,831,274.6: L = N − 32,831,275.
    assert_eq!(live(WRN_28_10, 0.9), 3_647_919);
    assert_eq!(WRN_28_10 - f32_dead(WRN_28_10, 0.9), 3_647_920);
    assert_eq!(live(1000, 0.0), 1000);
    assert_eq!(live(7, 0.5), 3);
    assert_eq!(dead_count(3, 0.999_999), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn live_count_is_n_minus_the_ceiling_of_the_written_product(
        n in prop_oneof![1usize..5000, 5000usize..200_000_000],
        d in 1u32..5,
        frac in 0.0f64..1.0,
    ) {
        // A sparsity written with d decimals, as a user types it.
        let m = ((10u64.pow(d) as f64) * frac) as u64;
        let text = format!("0.{m:0w$}", w = d as usize);
        let s: f32 = text.parse().unwrap();
        let live = Ssam { sparsity: s, ..Ssam::fisher() }.live_count(n);
        prop_assert_eq!(live, n - exact_dead(n, m, d), "n = {}, s = {}", n, text);
        // ALGORITHMS.md's f64 form, snapped within 1e-9, agrees where f64 holds N·s exactly
        // enough (below 10⁷ parameters).
        if n < 10_000_000 {
            let x = n as f64 * text.parse::<f64>().unwrap();
            let x = if (x - x.round()).abs() <= 1e-9 { x.round() } else { x };
            prop_assert_eq!(dead_count(n, s), x.ceil() as usize);
        }
    }
}
