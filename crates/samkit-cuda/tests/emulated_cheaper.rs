//! The cost reducers of ALGORITHMS.md ("Cheaper second passes") on the emulated device against
//! samkit-core, step by step (the `run_pair` of the parity suite): every rule and option,
//! EG-/OG-SAM's extrapolation, SAM-ON's `asam` form and SSAM-L's `fisher` selection included.
//! Skipped, with one line, where no emulation is available (see `emulated.rs`).
mod common;

use std::sync::Arc;

use common::parity::{
    assert_close, mixed_layout, run_pair, run_pair_with, sgd_momentum, variants_for, Problem, Repr,
};
use samkit_core::rules::{EgSam, Esam, Rst, SamOn, SegmentSelect, SwitchProb};
use samkit_core::{FirstOutcome, Layout, MaskKind, Optimizer, Rule, Ssam};
use samkit_cuda::{Device, GpuOptimizer};

fn dev() -> Option<Arc<Device>> {
    samkit_testkit::device_or_skip()
}

/// What the GPU runs: every plan of these rules maps onto kernels it has.
fn gpu_rules() -> Vec<(&'static str, Rule)> {
    vec![
        (
            "esam",
            Rule::Esam(Esam {
                beta: 0.5,
                ..Esam::new(3)
            }),
        ),
        ("sam-on", Rule::SamOn(SamOn::default())),
        (
            "rst",
            Rule::Rst(Rst {
                p: SwitchProb::Linear {
                    p0: 0.2,
                    p1: 0.9,
                    steps: 4,
                },
                ..Rst::new(7)
            }),
        ),
        (
            "ssam-l-suffix",
            Rule::Ssam(Ssam {
                sparsity: 0.4,
                ..Ssam::structured()
            }),
        ),
        (
            "eg-sam-eta0",
            Rule::EgSam(EgSam {
                eta_x: Some(0.0),
                ..EgSam::default()
            }),
        ),
        // η_x = the learning rate (halved at step 3 by run_pair), and a fixed one.
        ("eg-sam", Rule::EgSam(EgSam::default())),
        (
            "eg-sam-eta",
            Rule::EgSam(EgSam {
                eta_x: Some(0.02),
                ..EgSam::default()
            }),
        ),
        // g2_prev = 0 at the first step (no extrapolation), then the last pass-2 gradient.
        (
            "og-sam",
            Rule::EgSam(EgSam {
                optimistic: true,
                ..EgSam::default()
            }),
        ),
        (
            "sam-on-asam",
            Rule::SamOn(SamOn {
                asam: true,
                ..SamOn::default()
            }),
        ),
        // The Fisher every K = 2 steps: a new segment mask at steps 0, 2 and 4.
        ("ssam-l-fisher", ssam_l_fisher(2)),
    ]
}

fn ssam_l_fisher(interval: u64) -> Rule {
    Rule::Ssam(Ssam {
        sparsity: 0.4,
        interval,
        mask: MaskKind::Segments {
            select: SegmentSelect::Fisher { samples: 4 },
        },
        ..Ssam::structured()
    })
}

#[test]
fn cost_reducers_match_the_cpu() {
    let Some(d) = dev() else { return };
    let layout = mixed_layout();
    for (name, rule) in gpu_rules() {
        // The flat arena also twinned with every other kernel arrangement (the same bits; SAM-ON
        // `asam`'s norm has no fused kernel and runs unfused in the fused one).
        let twins = variants_for(&rule);
        run_pair_with(
            &d,
            &layout,
            name,
            &rule,
            &sgd_momentum(),
            6,
            Repr::Flat,
            None,
            &twins,
        );
        run_pair(
            &d,
            &layout,
            name,
            &rule,
            &sgd_momentum(),
            6,
            Repr::List,
            None,
        );
        println!(
            "{name}: matches the CPU over 6 steps (flat arena and list), the same bits in {} \
             other kernel arrangements",
            twins.len()
        );
    }
}

#[test]
fn ssam_l_suffix_mask_and_first_segment_match_the_cpu() {
    let Some(d) = dev() else { return };
    let layout = mixed_layout();
    let rule = Rule::Ssam(Ssam::structured());
    let cpu = samkit_core::Optimizer::new(layout.clone(), rule.clone(), sgd_momentum()).unwrap();
    let mut gpu = GpuOptimizer::<f32>::new(&d, layout.clone(), rule, sgd_momentum()).unwrap();
    assert_eq!(gpu.mask().unwrap().as_ref(), cpu.mask());
    assert_eq!(
        gpu.first_perturbed_segment().unwrap(),
        cpu.first_perturbed_segment()
    );
    assert!(cpu.first_perturbed_segment().is_some());
}

/// The non-finite check holds for the new kernels' paths too: a poisoned gradient of pass 1 or
/// pass 2 skips the step with the weights and every state (OG-SAM's g2_prev, SSAM-L's pending
/// mask) as they were, as on the CPU.
#[test]
fn the_new_kernels_skip_non_finite_steps_exactly() {
    let Some(d) = dev() else { return };
    let layout = mixed_layout();
    for (name, rule) in gpu_rules()
        .into_iter()
        .filter(|(n, _)| ["og-sam", "eg-sam", "sam-on-asam", "ssam-l-fisher"].contains(n))
    {
        for poison in [Some((1, 1)), Some((2, 2)), Some((0, 1))] {
            run_pair(
                &d,
                &layout,
                name,
                &rule,
                &sgd_momentum(),
                4,
                Repr::Flat,
                poison,
            );
        }
        println!("{name}: skips exactly");
    }
}

/// SSAM-L `fisher` on the device: the per-segment Fisher sums are reduced on the device and the
/// segments chosen on the host by samkit-core's rule. Fisher values built so that the ranking by
/// mean differs from the ranking by sum and from the forward order, with a NaN segment (ranked
/// lowest) and a tie (to the lower segment): the device's mask is the CPU's, and so is the first
/// perturbed segment that SSAM-L's trainer reads once the step commits it.
#[test]
fn ssam_l_fisher_picks_the_cpu_segments_from_device_sums() {
    let Some(d) = dev() else { return };
    let layout = mixed_layout();
    // Per segment (a.w 20, a.b 4, bn.w 4, bn.b 3, big.w 9170, c.w 12, c.b 3): its mean, and
    // whether its values vary around it (so that its sum is not exact in f32 and the order of
    // the device's tree matters in the last bits). a.b and c.w tie exactly at 5 (constant
    // values, exact sums): a.b, the lower segment, ranks first.
    let segs = [
        (0.1f32, true),
        (5.0, false),
        (0.5, true),
        (f32::NAN, false),
        (1.0, true),
        (5.0, false),
        (0.25, true),
    ];
    let mut f = Vec::with_capacity(layout.len());
    for (seg, &(m, vary)) in layout.segments().iter().zip(&segs) {
        let at = |i: usize| {
            if vary {
                m * (1.0 + 0.01 * ((i % 7) as f32 - 3.0))
            } else {
                m
            }
        };
        f.extend((0..seg.len).map(at));
    }
    // Budgets: the big segment fits (and ends the choice before a.w), it does not (a.b and c.w
    // only), and only a.b fits (the tie decides: c.w first would pick nothing).
    for sparsity in [0.001f32, 0.4, 0.9989] {
        let rule = Rule::Ssam(Ssam {
            sparsity,
            mask: MaskKind::Segments {
                select: SegmentSelect::Fisher { samples: 2 },
            },
            ..Ssam::structured()
        });
        let mut cpu = Optimizer::new(layout.clone(), rule.clone(), sgd_momentum()).unwrap();
        let mut gpu = GpuOptimizer::<f32>::new(&d, layout.clone(), rule, sgd_momentum()).unwrap();
        assert_eq!(gpu.needs_fisher().unwrap(), cpu.needs_fisher());
        assert_eq!(gpu.needs_fisher().unwrap(), Some(2));
        cpu.set_fisher(&f).unwrap();
        let s = d.stream();
        let df = s.clone_htod(&f).unwrap();
        gpu.set_fisher::<f32, _>(&df).unwrap();
        // Handed over, not yet committed: no Fisher is asked again, no mask is committed yet.
        assert_eq!(gpu.needs_fisher().unwrap(), None);
        assert_eq!(gpu.mask().unwrap(), None);
        let p = Problem::new(layout.clone());
        let mut w = p.init();
        let mut dw = s.clone_htod(&w).unwrap();
        let g = p.grad(&w, 0, 0);
        assert_eq!(cpu.first_step(&mut w, &g).unwrap(), FirstOutcome::Perturbed);
        let dg = s.clone_htod(&g).unwrap();
        assert_eq!(
            gpu.first_step(&mut dw, &dg).unwrap(),
            FirstOutcome::Perturbed
        );
        assert_close(&s.clone_dtoh(&dw).unwrap(), &w, 1e-6, "perturbed weights");
        let g2 = p.grad(&w, 0, 0);
        cpu.second_step(&mut w, &g2).unwrap();
        gpu.second_step(&mut dw, &s.clone_htod(&g2).unwrap())
            .unwrap();
        let (cm, gm) = (cpu.mask().cloned(), gpu.mask().unwrap());
        assert!(cm.is_some(), "s = {sparsity}: the CPU committed a mask");
        assert_eq!(gm, cm, "s = {sparsity}: the segment masks differ");
        assert_eq!(
            gpu.first_perturbed_segment().unwrap(),
            cpu.first_perturbed_segment(),
            "s = {sparsity}"
        );
        assert_eq!(gpu.mask_updates().unwrap(), 1);
        println!(
            "s = {sparsity}: segments {:?} from the device's sums, as the CPU",
            samkit_core::plan::first_masked_segment(&layout, cm.as_ref().unwrap())
        );
    }
}

#[test]
fn set_fisher_is_refused_for_ssam_l_suffix_and_other_rules() {
    let Some(d) = dev() else { return };
    let layout = mixed_layout();
    let f = d.stream().alloc_zeros::<f32>(layout.len()).unwrap();
    for rule in [
        Rule::Ssam(Ssam::structured()),
        Rule::SamOn(SamOn::default()),
    ] {
        let name = rule.name();
        let mut gpu = GpuOptimizer::<f32>::new(&d, layout.clone(), rule, sgd_momentum()).unwrap();
        assert_eq!(gpu.needs_fisher().unwrap(), None, "{name}");
        let e = gpu.set_fisher::<f32, _>(&f).unwrap_err().to_string();
        assert!(e.contains("set_fisher is for SSAM-F"), "{name}: {e}");
    }
}

#[test]
fn sam_on_without_norm_segments_is_a_layout_error() {
    let Some(d) = dev() else { return };
    // SAM-ON without norm segments is a layout error, as on the CPU.
    let mlp = Layout::mlp(&[3, 4, 2]).unwrap();
    assert!(
        GpuOptimizer::<f32>::new(&d, mlp, Rule::SamOn(SamOn::default()), sgd_momentum()).is_err()
    );
}

/// A CPU state after a few steps loads into the device optimizer (the same bytes back), and both
/// continue alike: the new rules keep no state the GPU cannot hold (ESAM's and SAM-ON's masks are
/// drawn per step, SSAM-L suffix's is saved).
#[test]
fn cpu_states_of_the_new_rules_resume_on_the_device() {
    let Some(d) = dev() else { return };
    let layout = mixed_layout();
    let p = Problem::new(layout.clone());
    let at = std::path::Path::new("state.safetensors");
    for (name, rule) in gpu_rules() {
        let mut cpu = Optimizer::new(layout.clone(), rule.clone(), sgd_momentum()).unwrap();
        let mut w = p.init();
        // SSAM-L fisher: the Fisher the CPU asks for, also handed to the device once it runs.
        let step = |cpu: &mut Optimizer, w: &mut Vec<f32>, t: u64| {
            let fisher = cpu.needs_fisher().map(|s| p.fisher(w, s));
            if let Some(f) = &fisher {
                cpu.set_fisher(f).unwrap();
            }
            let g = p.grad(w, t, 0);
            let fo = cpu.first_step(w, &g).unwrap();
            let g2 = (fo == FirstOutcome::Perturbed).then(|| {
                let g2 = p.grad(w, t, 0);
                cpu.second_step(w, &g2).unwrap();
                g2
            });
            (fisher, g, g2)
        };
        for t in 0..3 {
            step(&mut cpu, &mut w, t);
        }
        let bytes = cpu.state_bytes().unwrap();
        let mut gpu = GpuOptimizer::<f32>::new(&d, layout.clone(), rule, sgd_momentum()).unwrap();
        gpu.load_state_bytes(&bytes, at).unwrap();
        assert!(
            gpu.state_bytes().unwrap() == bytes,
            "{name}: device bytes back"
        );
        let s = d.stream();
        let mut dw = s.clone_htod(&w).unwrap();
        for t in 3..6 {
            let (fisher, g, g2) = step(&mut cpu, &mut w, t);
            assert_eq!(
                gpu.needs_fisher().unwrap().is_some(),
                fisher.is_some(),
                "{name}: step {t}"
            );
            if let Some(f) = fisher {
                gpu.set_fisher::<f32, _>(&s.clone_htod(&f).unwrap())
                    .unwrap();
            }
            let dg = s.clone_htod(&g).unwrap();
            let fo = gpu.first_step(&mut dw, &dg).unwrap();
            assert_eq!(
                fo == FirstOutcome::Perturbed,
                g2.is_some(),
                "{name}: step {t}"
            );
            if let Some(g2) = g2 {
                let dg2 = s.clone_htod(&g2).unwrap();
                gpu.second_step(&mut dw, &dg2).unwrap();
            }
            let got = s.clone_dtoh(&dw).unwrap();
            assert_close(&got, &w, 1e-6, &format!("{name}: resumed step {t}"));
            assert_eq!(gpu.mask().unwrap().as_ref(), cpu.mask(), "{name}: step {t}");
            assert_eq!(gpu.og_prev().unwrap(), cpu.og_prev(), "{name}: step {t}");
        }
        println!("{name}: a CPU state resumes on the device");
    }
}
