//! The trainer through the library API on the CPU and on the CPU emulation of a CUDA device
//! (samkit-testkit's fake driver, cuBLAS and cuDNN, loaded into this process): a tiny ResNet-18
//! trained with SGD, SAM, SSAM-F and ImbSAM on the same batches follows the same losses and
//! ends at the same weights on both, within the tolerances below. The two differ only in the
//! summation order of the convolutions, GEMMs and reductions, so the first loss agrees to
//! rounding and the trajectories drift apart slowly.
//!
//! Skipped, with one line saying why, where the emulator cannot be built (no NVRTC, no g++);
//! `SAMKIT_REQUIRE_EMULATION=1` makes that a failure.
mod common;

use common::{config, rel, run, setup, Setup, BATCH};
use samkit_core::{ImbSam, MaskKind, MaskSchedule, Rule, Sam, Ssam, SsamNorm};
use samkit_nn::cuda::CudaOptions;
use samkit_nn::Cuda;
use samkit_train::engine::Engine;
use samkit_train::{Pass2Mode, Trainer};

const WIDTH: usize = 4;
/// The first loss sees identical weights: only the summation order differs.
const FIRST_LOSS_REL: f64 = 1e-4;
/// Later losses: rounding differences of the gradients, carried through a few updates.
const LOSS_REL: f64 = 1e-3;
/// The largest difference of any weight after [`STEPS`] steps, relative to the largest weight
/// magnitude (measured: 2e-7 for all four rules with these sizes; 6e-5 for SSAM-F with batch
/// 16).
const WEIGHT_REL: f64 = 1e-3;
/// ImbSAM's: its perturbation follows the gradient of the one or two tail samples of a batch,
/// so a ReLU close to its kink at the perturbed weights can switch on one device and not on
/// the other (the emulator's thread order, `SAMKIT_FAKE_SEED`, changes the rounding), moving
/// single weights by `lr ×` a gradient entry (measured: 2e-7 here, 2.5e-3 with batch 16); the
/// losses still agree to [`LOSS_REL`].
const WEIGHT_REL_IMBSAM: f64 = 1e-2;
/// The emulated cuDNN's algorithm search: no large workspace to clear per shape.
const WORKSPACE_BYTES: usize = 4 << 20;

/// ImbSAM's τ: the rarest classes present in the training set form the tail (`n_c < τ`).
fn tau(data: &Setup) -> usize {
    let counts = data.train.class_counts();
    counts.iter().copied().filter(|&c| c > 0).min().unwrap_or(0) + 1
}

/// The four rules.
fn rules(data: &Setup) -> Vec<(&'static str, Rule)> {
    let tau = tau(data);
    vec![
        ("sgd", Rule::Base),
        (
            "sam",
            Rule::Sam(Sam {
                rho: 0.05,
                ..Sam::default()
            }),
        ),
        (
            "ssam-f",
            Rule::Ssam(Ssam {
                rho: 0.05,
                sparsity: 0.5,
                interval: 2,
                norm: SsamNorm::Masked,
                mask: MaskKind::Fisher { samples: BATCH },
                eps_p: None,
                schedule: MaskSchedule::Steps,
            }),
        ),
        (
            "imbsam",
            Rule::ImbSam(ImbSam {
                rho: 0.05,
                tau,
                kappa: 1.0,
                eps_p: None,
            }),
        ),
    ]
}

#[test]
fn emulated_cuda_trainer_follows_the_cpu_trainer() {
    let Some(dev) = samkit_testkit::or_skip(samkit_testkit::device_with_dnn()) else {
        return;
    };
    let data = setup();
    let opts = CudaOptions {
        deterministic: true,
        workspace_limit: WORKSPACE_BYTES,
        ..CudaOptions::default()
    };
    for (name, rule) in rules(&data) {
        let cfg = config(name, rule, Pass2Mode::default(), WIDTH, &data);
        let mut cpu = Trainer::new(
            cfg.clone(),
            data.train.clone(),
            data.test.clone(),
            data.norm,
        )
        .expect("a CPU trainer");
        let cuda = Cuda::with_options(&dev, opts).expect("the emulated backend");
        let mut gpu = Trainer::cuda_on(cuda, cfg, data.train.clone(), data.test.clone(), data.norm)
            .expect("an emulated CUDA trainer");
        assert!(gpu.engine.describe().starts_with("CUDA"));
        if name == "imbsam" {
            let (counts, tau) = (data.train.class_counts(), tau(&data));
            let tail_samples = data
                .batches
                .iter()
                .flat_map(|b| &b.labels)
                .filter(|&&y| counts[y] < tau)
                .count();
            assert!(tail_samples > 0, "imbsam: no tail sample in the batches");
        }
        let (lc, lg) = (run(&mut cpu, &data).0, run(&mut gpu, &data).0);
        println!("{name}: cpu {lc:?}\n{name}: cuda {lg:?}");
        assert!(
            rel(lc[0], lg[0]) < FIRST_LOSS_REL,
            "{name}: first loss {lc:?} vs {lg:?}"
        );
        for (i, (c, g)) in lc.iter().zip(&lg).enumerate() {
            assert!(rel(*c, *g) < LOSS_REL, "{name} step {i}: {lc:?} vs {lg:?}");
        }
        let wc = cpu.engine.net.params.clone();
        let wg = gpu.engine.host_params().expect("the device weights");
        assert_eq!(wc.len(), wg.len());
        let scale = wc.iter().fold(0f32, |m, w| m.max(w.abs())) as f64;
        let diff = wc
            .iter()
            .zip(&wg)
            .fold(0f64, |m, (a, b)| m.max(f64::from((a - b).abs())));
        println!("{name}: largest weight difference {diff:e} (largest weight {scale})");
        let tol = if name == "imbsam" {
            WEIGHT_REL_IMBSAM
        } else {
            WEIGHT_REL
        };
        assert!(
            diff <= tol * scale,
            "{name}: weights differ by {diff} (scale {scale})"
        );
    }
}

#[test]
fn a_checkpoint_of_the_emulated_device_continues_on_the_cpu() {
    let Some(dev) = samkit_testkit::or_skip(samkit_testkit::device_with_dnn()) else {
        return;
    };
    let data = setup();
    let (name, rule) = rules(&data).swap_remove(1);
    let cfg = config(name, rule, Pass2Mode::default(), WIDTH, &data);
    let opts = CudaOptions {
        deterministic: true,
        workspace_limit: WORKSPACE_BYTES,
        ..CudaOptions::default()
    };
    let cuda = Cuda::with_options(&dev, opts).expect("the emulated backend");
    let mut gpu = Trainer::cuda_on(
        cuda,
        cfg.clone(),
        data.train.clone(),
        data.test.clone(),
        data.norm,
    )
    .expect("an emulated CUDA trainer");
    gpu.step(&data.batches[0]).expect("a step");
    let dir = std::env::temp_dir().join(format!("samkit-train-ck-{}", std::process::id()));
    gpu.save(&dir).expect("a checkpoint");
    let state = samkit_train::TrainerState::read(&dir).expect("trainer.json");
    assert_eq!(state.step, 1);
    let mut cpu =
        Trainer::new(cfg, data.train.clone(), data.test.clone(), data.norm).expect("a CPU trainer");
    cpu.load(&dir, state)
        .expect("the device's checkpoint on the CPU");
    let wg = gpu.engine.host_params().expect("the device weights");
    assert_eq!(
        cpu.engine.net.params, wg,
        "the checkpoint holds the weights exactly"
    );
    let (c, g) = (
        cpu.step(&data.batches[1]).expect("a step"),
        gpu.step(&data.batches[1]).expect("a step"),
    );
    assert_eq!(c.step, g.step);
    assert!(
        rel(c.loss, g.loss) < FIRST_LOSS_REL,
        "{} vs {}",
        c.loss,
        g.loss
    );
    std::fs::remove_dir_all(&dir).expect("remove the checkpoint");
}
