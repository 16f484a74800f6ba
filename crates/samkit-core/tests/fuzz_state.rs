//! Mutation fuzzing of the optimizer-state reader (`samkit_core::state`): valid state files of
//! several rules, mutated (bit flips, truncation, length fields blown up, random bytes), must
//! load as an error or a checked state, never panic, and never ask for a block of memory
//! larger than a small multiple of the file.

use std::path::Path;

use proptest::prelude::*;
use samkit_core::state::PortableState;
use samkit_core::{BaseOptimizer, FirstOutcome, FriendlySam, Layout, LookSam, Optimizer, Rule};
use samkit_core::{Sam, Ssam};
use samkit_testkit::fuzz::{allocation_bound, cases, largest_allocation, mutated, mutations};

#[global_allocator]
static ALLOC: samkit_testkit::fuzz::Recording = samkit_testkit::fuzz::Recording;

fn layout() -> Layout {
    let mut l = Layout::new();
    l.push("a.weight", &[4, 6]).unwrap();
    l.push("a.bias", &[4]).unwrap();
    l.push("b.weight", &[40]).unwrap();
    l
}

fn rules() -> Vec<Rule> {
    vec![
        Rule::Sam(Sam::default()),
        Rule::FriendlySam(FriendlySam::default()),
        Rule::Ssam(Ssam {
            interval: 1,
            ..Ssam::fisher()
        }),
        Rule::LookSam(LookSam {
            k: 2,
            per_tensor: true,
            ..LookSam::default()
        }),
    ]
}

/// An optimizer of `rule` after three steps on a fixed quadratic-ish gradient.
fn trained(rule: Rule) -> Optimizer {
    let l = layout();
    let mut w: Vec<f32> = (0..l.len()).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
    let mut opt = Optimizer::new(l, rule, BaseOptimizer::sgd(0.05, 0.9, 1e-3)).unwrap();
    for t in 0..3 {
        let g: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, &x)| 0.5 * x + ((i + t) % 5) as f32 * 0.01)
            .collect();
        if opt.needs_fisher().is_some() {
            let f: Vec<f32> = g.iter().map(|v| v * v).collect();
            opt.set_fisher(&f).unwrap();
        }
        if opt.first_step(&mut w, &g).unwrap() == FirstOutcome::Perturbed {
            let g2: Vec<f32> = g.iter().map(|v| v * 1.1).collect();
            opt.second_step(&mut w, &g2).unwrap();
        }
    }
    opt
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn mutated_state_files_are_refused_or_loaded_never_a_panic(
        which in 0usize..4,
        muts in mutations(),
    ) {
        let rule = rules()[which].clone();
        let opt = trained(rule.clone());
        let good = opt.state_bytes().unwrap();
        let bad = mutated(&good, &muts);
        let p = Path::new("fuzz.safetensors");
        let (decoded, largest) = largest_allocation(|| PortableState::from_bytes(&bad, p));
        prop_assert!(
            largest <= allocation_bound(bad.len()),
            "{largest} bytes allocated at once for a {}-byte file", bad.len()
        );
        if let Ok(s) = decoded {
            // A decoded state serialises again.
            prop_assert!(s.to_bytes().is_ok());
        }
        let mut fresh = Optimizer::new(layout(), rule, opt.base().clone()).unwrap();
        let before = fresh.state_bytes().unwrap();
        let (loaded, largest) = largest_allocation(|| fresh.load_state_bytes(&bad, p));
        prop_assert!(largest <= allocation_bound(bad.len()));
        match loaded {
            // Only a mutation that left the state as it was (or one the checksums cannot see,
            // such as a change in the padding) loads; the result is a state the optimizer took.
            Ok(()) => prop_assert!(fresh.state_bytes().is_ok()),
            Err(e) => {
                prop_assert!(e.to_string().contains("fuzz.safetensors"), "{e}");
                prop_assert_eq!(fresh.state_bytes().unwrap(), before);
            }
        }
    }
}
