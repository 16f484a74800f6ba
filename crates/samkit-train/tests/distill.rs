//! MESA and SAF through the trainer (ALGORITHMS.md "MESA and SAF"): with `λ = 0` the run is the
//! base optimizer's bit for bit (the teacher's forward and SAF's bookkeeping change nothing);
//! with `λ > 0` the term moves the weights; MESA's active steps cost one forward without
//! gradient more, and that work (with the EMA update and SAF's ring) is timed into the step;
//! and a run resumed from a checkpoint (MESA's teacher, SAF's buffer) continues
//! exactly as the uninterrupted one.
use std::path::PathBuf;
use std::sync::Arc;

use samkit_core::{BaseOptimizer, LrSchedule, Rule};
use samkit_data::{Dataset, Normalize};
use samkit_nn::Model;
use samkit_train::distill::{DistillConfig, Teacher};
use samkit_train::{load_data, DataConfig, RunConfig, StepLog, Trainer, TrainerState};

const TRAIN: usize = 12;
const TEST: usize = 4;
const BATCH: usize = 4;

fn config(distill: Option<DistillConfig>, epochs: u32) -> RunConfig {
    let mut data = DataConfig::synthetic(TRAIN, TEST);
    data.no_augment = true;
    // Built through JSON so that fields added to `RunConfig` later (with serde defaults) need
    // no change here.
    let v = serde_json::json!({
        "optimizer": distill.map_or("sgd", |d| d.name()),
        "rule": Rule::Base,
        "base": BaseOptimizer::sgd(0.05, 0.9, 5e-4),
        "schedule": LrSchedule::constant(0.05),
        "epochs": epochs,
        "batch": BATCH,
        "steps_per_epoch": null,
        "width": 2,
        "label_smoothing": 0.1,
        "augment": false,
        "seed": 7,
        "data": data,
        "distill": distill,
    });
    serde_json::from_value(v).expect("a run config")
}

/// MESA with a fast teacher (so that a few steps move it) active from epoch 1.
fn mesa(lambda: f32) -> DistillConfig {
    DistillConfig {
        teacher: Teacher::Mesa { decay: 0.5 },
        lambda,
        start_epoch: 1,
        ..DistillConfig::mesa()
    }
}

/// SAF looking back one epoch, active from epoch 1.
fn saf(lambda: f32) -> DistillConfig {
    DistillConfig {
        teacher: Teacher::Saf { lag: 1 },
        lambda,
        start_epoch: 1,
        ..DistillConfig::saf()
    }
}

struct Data {
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    norm: Normalize,
}

fn data() -> Data {
    let (split, norm) = load_data(&config(None, 1).data, 7).expect("synthetic data");
    Data {
        train: Arc::new(split.train),
        test: Arc::new(split.test),
        norm,
    }
}

fn trainer(cfg: &RunConfig, d: &Data) -> Trainer {
    Trainer::new(cfg.clone(), d.train.clone(), d.test.clone(), d.norm).expect("a trainer")
}

/// Trains `epochs` epochs; the step logs.
fn train(t: &mut Trainer, epochs: u32) -> Vec<StepLog> {
    let mut logs = Vec::new();
    for _ in 0..epochs {
        t.train_epoch(&mut |l| logs.push(l.clone()))
            .expect("an epoch");
    }
    logs
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("samkit-distill-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn lambda_zero_is_the_base_optimizer_bit_for_bit() {
    let d = data();
    let mut base = trainer(&config(None, 3), &d);
    let base_logs = train(&mut base, 3);
    for dc in [mesa(0.0), saf(0.0)] {
        let mut t = trainer(&config(Some(dc), 3), &d);
        let logs = train(&mut t, 3);
        assert_eq!(
            bits(&t.engine.net.params),
            bits(&base.engine.net.params),
            "{} with λ = 0: the weights",
            dc.name()
        );
        assert_eq!(
            t.engine.net.model.buffers().expect("buffers"),
            base.engine.net.model.buffers().expect("buffers"),
            "{}: the running statistics",
            dc.name()
        );
        let losses = |l: &[StepLog]| l.iter().map(|s| s.loss.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            losses(&logs),
            losses(&base_logs),
            "{}: the losses",
            dc.name()
        );
    }
}

#[test]
fn the_term_moves_the_weights_and_mesa_pays_one_nograd_forward() {
    let d = data();
    let mut base = trainer(&config(None, 2), &d);
    let base_logs = train(&mut base, 2);
    let losses = |l: &[StepLog]| l.iter().map(|s| s.loss.to_bits()).collect::<Vec<_>>();
    for dc in [mesa(0.8), saf(0.3)] {
        let mut t = trainer(&config(Some(dc), 2), &d);
        let logs = train(&mut t, 2);
        let steps = logs.len() / 2;
        // Epoch 0 is plain base steps: the same losses as the base run's.
        assert_eq!(
            losses(&logs[..steps]),
            losses(&base_logs[..steps]),
            "{}",
            dc.name()
        );
        assert_ne!(
            bits(&t.engine.net.params),
            bits(&base.engine.net.params),
            "{} with λ > 0 changes the run",
            dc.name()
        );
        for (i, l) in logs.iter().enumerate() {
            let nograd = match dc.teacher {
                Teacher::Mesa { .. } if i >= steps => 1.0,
                _ => 0.0,
            };
            assert_eq!(l.passes.forward_nograd, nograd, "{} step {i}", dc.name());
            assert_eq!((l.passes.forward, l.passes.backward), (1.0, 1.0));
            assert!(l.loss.is_finite() && l.perturbed_loss.is_none());
            // The teacher's forward, the EMA update and SAF's ring are timed into the step.
            let s = &l.seconds;
            assert!(s.distill > 0.0, "{} step {i}: {s:?}", dc.name());
            let sum = s.pass1 + s.perturb + s.pass2 + s.update + s.mask + s.distill;
            assert_eq!(s.total(), sum, "{} step {i}", dc.name());
        }
    }
    assert!(
        base_logs.iter().all(|l| l.seconds.distill == 0.0),
        "a run without MESA/SAF spends nothing on distillation"
    );
}

#[test]
fn a_resumed_run_equals_the_uninterrupted_one() {
    let d = data();
    for dc in [mesa(0.8), saf(0.3)] {
        let cfg = config(Some(dc), 3);
        let mut whole = trainer(&cfg, &d);
        let whole_logs = train(&mut whole, 3);

        let mut first = trainer(&cfg, &d);
        train(&mut first, 2);
        let dir = tmp(dc.name());
        first.save(&dir).expect("save");
        let file = match dc.teacher {
            Teacher::Mesa { .. } => samkit_train::distill::TEACHER_FILE,
            Teacher::Saf { .. } => samkit_train::distill::SAF_FILE,
        };
        assert!(dir.join(file).exists(), "{file} in the checkpoint");
        let st = TrainerState::read(&dir).expect("trainer.json");
        assert_eq!(st.config.distill, Some(dc));
        let mut resumed = trainer(&st.config, &d);
        resumed.load(&dir, st).expect("load");
        let logs = train(&mut resumed, 1);
        assert_eq!(
            bits(&resumed.engine.net.params),
            bits(&whole.engine.net.params),
            "{}: resumed weights",
            dc.name()
        );
        let tail = &whole_logs[whole_logs.len() - logs.len()..];
        for (a, b) in logs.iter().zip(tail) {
            assert_eq!(
                a.loss.to_bits(),
                b.loss.to_bits(),
                "{} step {}",
                dc.name(),
                a.step
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn distillation_on_another_rule_is_refused_naming_the_optimizer() {
    let d = data();
    let mut cfg = config(Some(mesa(0.8)), 1);
    cfg.rule = Rule::Sam(samkit_core::Sam::default());
    let mut t = trainer(&cfg, &d);
    match t.train_epoch(&mut |_| {}) {
        Err(samkit_train::TrainError::InvalidValue { flag, .. }) => assert_eq!(flag, "optimizer"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("MESA on SAM trained"),
    }
}
