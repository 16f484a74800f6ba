//! MESA and SAF through the trainer on the CPU emulation of a CUDA device (samkit-testkit's
//! fake driver, cuBLAS and cuDNN): the teacher's EMA (`sk_nn_ema`), its forward, and SAF's
//! buffer on the device follow the CPU trainer within the tolerances of `tests/cuda_vs_cpu.rs`,
//! and with `λ = 0` the device run is the device's SGD run bit for bit.
//!
//! Skipped, with one line saying why, where the emulator cannot be built (no NVRTC, no g++);
//! `SAMKIT_REQUIRE_EMULATION=1` makes that a failure.
use std::sync::Arc;

use samkit_core::{BaseOptimizer, LrSchedule, Rule};
use samkit_data::{Dataset, Normalize};
use samkit_nn::cuda::CudaOptions;
use samkit_nn::Cuda;
use samkit_train::distill::{DistillConfig, Teacher};
use samkit_train::engine::{CudaEngine, Engine};
use samkit_train::{load_data, DataConfig, RunConfig, Trainer};

const TRAIN: usize = 16;
const BATCH: usize = 8;
const EPOCHS: u32 = 2;
/// The losses: rounding differences of the gradients (summation order of the convolutions
/// and GEMMs), carried through a few updates (as `cuda_vs_cpu.rs`).
const LOSS_REL: f64 = 1e-3;
/// The largest weight difference relative to the largest weight (as `cuda_vs_cpu.rs`).
const WEIGHT_REL: f64 = 1e-3;
/// The emulated cuDNN's algorithm search: no large workspace to clear per shape.
const WORKSPACE_BYTES: usize = 4 << 20;

struct Data {
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    norm: Normalize,
}

fn config(distill: Option<DistillConfig>) -> RunConfig {
    let mut data = DataConfig::synthetic(TRAIN, 4);
    data.no_augment = true;
    // Through JSON: fields added to `RunConfig` later (with serde defaults) need no change.
    let v = serde_json::json!({
        "optimizer": distill.map_or("sgd", |d| d.name()),
        "rule": Rule::Base,
        "base": BaseOptimizer::sgd(0.05, 0.9, 5e-4),
        "schedule": LrSchedule::constant(0.05),
        "epochs": EPOCHS,
        "batch": BATCH,
        "steps_per_epoch": null,
        "width": 4,
        "label_smoothing": 0.0,
        "augment": false,
        "seed": 3,
        "data": data,
        "distill": distill,
    });
    serde_json::from_value(v).expect("a run config")
}

fn data() -> Data {
    let (split, norm) = load_data(&config(None).data, 3).expect("synthetic data");
    Data {
        train: Arc::new(split.train),
        test: Arc::new(split.test),
        norm,
    }
}

fn gpu(dev: &Arc<samkit_cuda::Device>, cfg: &RunConfig, d: &Data) -> Trainer<CudaEngine> {
    let opts = CudaOptions {
        deterministic: true,
        workspace_limit: WORKSPACE_BYTES,
        ..CudaOptions::default()
    };
    let cuda = Cuda::with_options(dev, opts).expect("the emulated backend");
    let t = Trainer::cuda_on(cuda, cfg.clone(), d.train.clone(), d.test.clone(), d.norm)
        .expect("an emulated CUDA trainer");
    assert!(t.engine.describe().starts_with("CUDA"));
    t
}

fn losses<E: Engine>(t: &mut Trainer<E>) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..EPOCHS {
        t.train_epoch(&mut |l| {
            assert!(!l.skipped, "step {} skipped", l.step);
            out.push(l.loss)
        })
        .expect("an epoch");
    }
    out
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}

fn max_diff(a: &[f32], b: &[f32]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, w| m.max(w.abs())) as f64;
    let diff = a
        .iter()
        .zip(b)
        .fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
    (diff, scale)
}

#[test]
fn emulated_device_mesa_and_saf_follow_the_cpu() {
    let Some(dev) = samkit_testkit::or_skip(samkit_testkit::device_with_dnn()) else {
        return;
    };
    let d = data();
    let cases = [
        DistillConfig {
            teacher: Teacher::Mesa { decay: 0.5 },
            start_epoch: 0,
            ..DistillConfig::mesa()
        },
        DistillConfig {
            teacher: Teacher::Saf { lag: 1 },
            start_epoch: 0,
            ..DistillConfig::saf()
        },
    ];
    for dc in cases {
        let cfg = config(Some(dc));
        let mut cpu =
            Trainer::new(cfg.clone(), d.train.clone(), d.test.clone(), d.norm).expect("CPU");
        let mut dev_t = gpu(&dev, &cfg, &d);
        let (lc, lg) = (losses(&mut cpu), losses(&mut dev_t));
        println!("{}: cpu {lc:?}\n{}: cuda {lg:?}", dc.name(), dc.name());
        for (i, (c, g)) in lc.iter().zip(&lg).enumerate() {
            assert!(
                rel(*c, *g) < LOSS_REL,
                "{} step {i}: {lc:?} vs {lg:?}",
                dc.name()
            );
        }
        let wc = cpu.engine.net.params.clone();
        let wg = dev_t.engine.host_params().expect("device weights");
        let (diff, scale) = max_diff(&wc, &wg);
        assert!(
            diff <= WEIGHT_REL * scale,
            "{}: weights {diff} (scale {scale})",
            dc.name()
        );
        if let (
            Some(samkit_train::distill::Distiller::Mesa(_, tc)),
            Some(samkit_train::distill::Distiller::Mesa(_, tg)),
        ) = (cpu.distill.as_mut(), dev_t.distill.as_mut())
        {
            let ec = tc
                .host_params(&mut cpu.engine.net.model)
                .expect("CPU teacher");
            let eg = tg
                .host_params(&mut dev_t.engine.net().model)
                .expect("device teacher");
            let (diff, scale) = max_diff(&ec, &eg);
            assert!(
                diff <= WEIGHT_REL * scale,
                "MESA teacher: {diff} (scale {scale})"
            );
            assert_ne!(ec, wc, "the teacher lags the model");
        }
    }
}

#[test]
fn emulated_device_lambda_zero_is_the_device_base_run_bit_for_bit() {
    let Some(dev) = samkit_testkit::or_skip(samkit_testkit::device_with_dnn()) else {
        return;
    };
    let d = data();
    let mut base = gpu(&dev, &config(None), &d);
    let lb = losses(&mut base);
    let wb = base.engine.host_params().expect("device weights");
    let dc = DistillConfig {
        lambda: 0.0,
        start_epoch: 0,
        ..DistillConfig::mesa()
    };
    let mut t = gpu(&dev, &config(Some(dc)), &d);
    let lt = losses(&mut t);
    let wt = t.engine.host_params().expect("device weights");
    assert_eq!(lt, lb, "losses");
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&wt), bits(&wb), "weights");
}
