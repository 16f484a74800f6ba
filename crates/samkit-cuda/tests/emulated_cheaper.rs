//! The cost reducers of ALGORITHMS.md ("Cheaper second passes") on the emulated device against
//! samkit-core, step by step (the `run_pair` of the parity suite), and a clear error for the
//! rules and options the GPU has no kernels for yet. Skipped, with one line, where no emulation
//! is available (see `emulated.rs`).
mod common;

use std::sync::Arc;

use common::parity::{assert_close, mixed_layout, run_pair, sgd_momentum, Problem, Repr};
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
    ]
}

#[test]
fn cost_reducers_match_the_cpu() {
    let Some(d) = dev() else { return };
    let layout = mixed_layout();
    for (name, rule) in gpu_rules() {
        for repr in [Repr::Flat, Repr::List] {
            run_pair(&d, &layout, name, &rule, &sgd_momentum(), 6, repr, None);
        }
        println!("{name}: matches the CPU over 6 steps (flat arena and list)");
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

#[test]
fn unimplemented_rules_are_refused_with_an_error() {
    let Some(d) = dev() else { return };
    let layout = mixed_layout();
    let refused = [
        Rule::EgSam(EgSam::default()),
        Rule::EgSam(EgSam {
            eta_x: Some(0.0),
            optimistic: true,
            ..EgSam::default()
        }),
        Rule::SamOn(SamOn {
            asam: true,
            ..SamOn::default()
        }),
        Rule::Ssam(Ssam {
            mask: MaskKind::Segments {
                select: SegmentSelect::Fisher { samples: 4 },
            },
            ..Ssam::structured()
        }),
    ];
    for rule in refused {
        let name = rule.name();
        let Err(e) = GpuOptimizer::<f32>::new(&d, layout.clone(), rule, sgd_momentum()) else {
            panic!("{name} must be refused on the GPU")
        };
        let msg = e.to_string();
        assert!(msg.contains("not implemented yet"), "{name}: {msg}");
    }
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
        let step = |cpu: &mut Optimizer, w: &mut Vec<f32>, t: u64| {
            let g = p.grad(w, t, 0);
            let fo = cpu.first_step(w, &g).unwrap();
            let g2 = (fo == FirstOutcome::Perturbed).then(|| {
                let g2 = p.grad(w, t, 0);
                cpu.second_step(w, &g2).unwrap();
                g2
            });
            (g, g2)
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
            let (g, g2) = step(&mut cpu, &mut w, t);
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
        }
        println!("{name}: a CPU state resumes on the device");
    }
}
