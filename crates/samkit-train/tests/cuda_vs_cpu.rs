//! The trainer through the library API on the CPU and on the CPU emulation of a CUDA device
//! (samkit-testkit's fake driver, cuBLAS and cuDNN, loaded into this process): a tiny ResNet-18
//! trained with SGD, SAM, SSAM-F and ImbSAM on the same batches follows the same losses and
//! ends at the same weights on both, within the tolerances below. The two differ only in the
//! summation order of the convolutions, GEMMs and reductions, so the first loss agrees to
//! rounding and the trajectories drift apart slowly.
//!
//! Skipped, with one line saying why, where the emulator cannot be built (no NVRTC, no g++);
//! `SAMKIT_REQUIRE_EMULATION=1` makes that a failure.
use std::sync::Arc;

use samkit_core::{BaseOptimizer, ImbSam, LrSchedule, MaskKind, Rule, Sam, Sgd, Ssam, SsamNorm};
use samkit_data::loader::make_batch;
use samkit_data::{Batch, Dataset, Normalize};
use samkit_nn::cuda::CudaOptions;
use samkit_nn::Cuda;
use samkit_train::engine::Engine;
use samkit_train::{load_data, DataConfig, RunConfig, Trainer};

/// Steps per rule: enough for SSAM-F to update its mask twice (interval 2) and for the
/// momentum to carry rounding differences forward.
const STEPS: usize = 3;
const BATCH: usize = 8;
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

struct Setup {
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    norm: Normalize,
    batches: Vec<Batch>,
}

fn setup() -> Setup {
    let mut data = DataConfig::synthetic(STEPS * BATCH, BATCH);
    data.no_augment = true;
    let (split, norm) = load_data(&data, 0).expect("synthetic data");
    let train = Arc::new(split.train);
    let batches = (0..STEPS)
        .map(|s| {
            let idx: Vec<usize> = (s * BATCH..(s + 1) * BATCH).collect();
            make_batch(&train, &idx, None, &norm, (0, 0))
        })
        .collect();
    Setup {
        train,
        test: Arc::new(split.test),
        norm,
        batches,
    }
}

fn config(name: &str, rule: Rule, data: &Setup) -> RunConfig {
    let lr = 0.05;
    let mut d = DataConfig::synthetic(data.train.len(), data.test.len());
    d.no_augment = true;
    RunConfig {
        optimizer: name.into(),
        rule,
        base: BaseOptimizer::Sgd(Sgd {
            lr,
            momentum: 0.9,
            weight_decay: 5e-4,
            ..Sgd::default()
        }),
        schedule: LrSchedule::constant(lr),
        epochs: 1,
        batch: BATCH,
        steps_per_epoch: Some(STEPS),
        width: WIDTH,
        label_smoothing: 0.0,
        augment: false,
        seed: 0,
        data: d,
        cuda: Default::default(),
        pass2: Default::default(),
        distill: None,
    }
}

/// ImbSAM's τ: the rarest classes present in the training set form the tail.
fn tau(data: &Setup) -> usize {
    let counts = data.train.class_counts();
    counts.iter().copied().filter(|&c| c > 0).min().unwrap_or(0)
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

/// The losses of [`STEPS`] steps on the fixed batches.
fn losses<E: Engine>(t: &mut Trainer<E>, data: &Setup) -> Vec<f64> {
    data.batches
        .iter()
        .map(|b| {
            let log = t.step(b).expect("a step");
            assert!(
                !log.skipped,
                "{}: step {} skipped",
                t.cfg.optimizer, log.step
            );
            log.loss
        })
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
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
        let cfg = config(name, rule, &data);
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
                .filter(|&&y| counts[y] <= tau)
                .count();
            assert!(tail_samples > 0, "imbsam: no tail sample in the batches");
        }
        let (lc, lg) = (losses(&mut cpu, &data), losses(&mut gpu, &data));
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
    let cfg = config(name, rule, &data);
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
