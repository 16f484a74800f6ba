//! Property tests: top-k against a sort, thread-count and representation independence of the
//! reductions, ‖e‖ = ρ, SSAM-D's drop/grow, and save/load/resume equality.
mod common;

use common::{bits, run, sgd_momentum, Problem};
use proptest::prelude::*;
use samkit_core::chunks::Chunks;
use samkit_core::select::{f32_key, top_k_mask};
use samkit_core::{
    sparse, Asam, BaseOptimizer, FriendlySam, Gsam, ImbSam, Layout, LookSam, Optimizer, RmsProp,
    Rule, Sam, Ssam,
};

fn by_sort(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| f32_key(scores[b]).cmp(&f32_key(scores[a])).then(a.cmp(&b)));
    let mut v = idx[..k.min(scores.len())].to_vec();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn top_k_equals_a_sort(
        scores in prop::collection::vec(prop_oneof![
            (0u8..6).prop_map(|x| x as f32 * 0.25),
            -1e3f32..1e3f32,
        ], 1..3000),
        frac in 0.0f64..1.2,
    ) {
        let k = ((scores.len() as f64) * frac) as usize;
        let m = top_k_mask(&scores, k);
        prop_assert_eq!(m.ones_iter().collect::<Vec<_>>(), by_sort(&scores, k));
    }

    #[test]
    fn fisher_mask_over_segments_equals_a_sort(
        lens in prop::collection::vec(1usize..5000, 1..6),
        seed in any::<u64>(),
        s in 0.0f32..0.99,
    ) {
        let mut layout = Layout::new();
        for (i, &n) in lens.iter().enumerate() {
            layout.push(format!("s{i}.weight"), &[n]).unwrap();
        }
        let n = layout.len();
        let scores: Vec<f32> = (0..n)
            .map(|i| ((i as u64).wrapping_mul(seed | 1) >> 7 & 63) as f32)
            .collect();
        let live = Ssam { sparsity: s, ..Ssam::fisher() }.live_count(n);
        let chunks = Chunks::new(&layout);
        let units = chunks.split(layout.split(&scores).unwrap());
        let m = sparse::fisher_mask(&chunks, &units, n, live);
        prop_assert_eq!(m.count_ones(), live);
        prop_assert_eq!(m.ones_iter().collect::<Vec<_>>(), by_sort(&scores, live));
    }

    #[test]
    fn sam_perturbation_has_norm_rho(
        g in prop::collection::vec(-10f32..10f32, 1..2000),
        rho in 1e-3f32..2.0,
    ) {
        prop_assume!(g.iter().any(|&x| x != 0.0));
        let layout = Layout::flat(g.len()).unwrap();
        let rule = Rule::Sam(Sam { rho, adaptive: false, eps_p: None, grad_centralization: false });
        let mut opt = Optimizer::new(layout, rule, BaseOptimizer::sgd(0.1, 0.0, 0.0)).unwrap();
        let mut w = vec![0f32; g.len()];
        opt.first_step(&mut w, &g).unwrap();
        let norm = w.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        prop_assert!((norm - rho as f64).abs() <= 1e-6 * rho as f64, "{} vs {}", norm, rho);
    }

    #[test]
    fn drop_grow_keeps_l_and_respects_its_candidates(
        n in 10usize..4000,
        s in 0.05f32..0.95,
        rate in 0.0f32..1.0,
        seed in any::<u64>(),
        update in 1u32..100,
    ) {
        let live = Ssam { sparsity: s, ..Ssam::fisher() }.live_count(n);
        let mask = sparse::random_mask(n, live, seed);
        prop_assert_eq!(mask.count_ones(), live);
        let g: Vec<f32> = (0..n).map(|i| (((i * 37) % 101) as f32 - 50.0) * 0.1).collect();
        let layout = Layout::flat(n).unwrap();
        let chunks = Chunks::new(&layout);
        let units = chunks.split_flat(&g);
        let new = sparse::drop_grow(&chunks, &units, &mask, n, rate, seed, update);
        let k = (((live as f64) * rate as f64).floor() as usize).min(n - live);
        prop_assert_eq!(new.count_ones(), live);
        let dropped: Vec<usize> = mask.ones_iter().filter(|&i| !new.get(i)).collect();
        let grown: Vec<usize> = new.ones_iter().filter(|&i| !mask.get(i)).collect();
        prop_assert_eq!(dropped.len(), k);
        prop_assert_eq!(grown.len(), k);
        // The dropped ones have the smallest |g| among the live (ties to the lower index).
        let mut live_idx: Vec<usize> = mask.ones_iter().collect();
        live_idx.sort_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()).then(a.cmp(&b)));
        let mut expect: Vec<usize> = live_idx[..k].to_vec();
        expect.sort();
        prop_assert_eq!(dropped, expect);
    }
}

fn all_rules() -> Vec<Rule> {
    vec![
        Rule::Base,
        Rule::Sam(Sam::default()),
        Rule::Sam(Sam {
            rho: 0.5,
            adaptive: true,
            eps_p: None,
            grad_centralization: false,
        }),
        Rule::Asam(Asam::default()),
        Rule::Asam(Asam {
            filterwise: true,
            ..Asam::default()
        }),
        Rule::FriendlySam(FriendlySam::default()),
        Rule::Ssam(Ssam {
            interval: 2,
            ..Ssam::fisher()
        }),
        Rule::Ssam(Ssam {
            interval: 2,
            ..Ssam::dynamic(9)
        }),
        Rule::ImbSam(ImbSam::default()),
        Rule::Gsam(Gsam::default()),
        Rule::LookSam(LookSam {
            k: 2,
            ..LookSam::default()
        }),
        Rule::LookSam(LookSam {
            k: 2,
            per_tensor: true,
            ..LookSam::default()
        }),
    ]
}

#[test]
fn every_rule_gives_the_same_bits_on_any_thread_count_and_representation() {
    let p = Problem::new(true);
    for rule in all_rules() {
        let name = rule.name();
        let reference = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| run(&p, rule.clone(), sgd_momentum(), 6).0);
        for threads in [2, 3, 8] {
            let w = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run(&p, rule.clone(), sgd_momentum(), 6).0);
            assert_eq!(bits(&w), bits(&reference), "{name} on {threads} threads");
        }
        // The same steps through a list of separate tensors.
        let mut opt = Optimizer::new(p.layout.clone(), rule.clone(), sgd_momentum()).unwrap();
        let mut list: Vec<Vec<f32>> = p
            .layout
            .split(&p.init())
            .unwrap()
            .into_iter()
            .map(<[f32]>::to_vec)
            .collect();
        for t in 0..6 {
            let mut oracle = p.oracle(t);
            opt.step(&mut list, |req, w: &Vec<Vec<f32>>, out| {
                let flat: Vec<f32> = w.concat();
                oracle(req, &flat, out)
            })
            .unwrap();
        }
        assert_eq!(bits(&list.concat()), bits(&reference), "{name} as a list");
    }
}

#[test]
fn save_load_resume_is_bit_identical() {
    let p = Problem::new(true);
    let bases = [
        sgd_momentum(),
        BaseOptimizer::AdamW(samkit_core::Adam {
            lr: 0.01,
            weight_decay: 0.01,
            ..Default::default()
        }),
        BaseOptimizer::RmsProp(RmsProp {
            momentum: 0.5,
            centered: true,
            ..RmsProp::default()
        }),
    ];
    let dir = std::env::temp_dir().join(format!("samkit-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for base in bases {
        for rule in all_rules() {
            let name = format!("{} + {}", rule.name(), base.name());
            let (full, _) = run(&p, rule.clone(), base.clone(), 7);
            let (mut w, opt) = run(&p, rule.clone(), base.clone(), 3);
            let path = dir.join("state.safetensors");
            opt.save_state(&path).unwrap();
            drop(opt);
            let mut resumed = Optimizer::new(p.layout.clone(), rule.clone(), base.clone()).unwrap();
            resumed.load_state(&path).unwrap();
            assert_eq!(resumed.steps(), 3, "{name}");
            for t in 3..7 {
                resumed.step(&mut w, p.oracle(t)).unwrap();
            }
            assert_eq!(bits(&w), bits(&full), "{name}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
