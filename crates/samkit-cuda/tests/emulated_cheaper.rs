//! The cost reducers of ALGORITHMS.md ("Cheaper second passes") on the emulated device against
//! samkit-core, step by step (the `run_pair` of the parity suite), and a clear error for the
//! rules and options the GPU has no kernels for yet. Skipped, with one line, where no emulation
//! is available (see `emulated.rs`).
mod common;

use std::sync::Arc;

use common::parity::{mixed_layout, run_pair, sgd_momentum, Repr};
use samkit_core::rules::{EgSam, Esam, Rst, SamOn, SegmentSelect, SwitchProb};
use samkit_core::{Layout, MaskKind, Rule, Ssam};
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
