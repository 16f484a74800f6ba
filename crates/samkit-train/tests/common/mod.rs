//! Setup shared by the trainer's tests that train a tiny ResNet-18 for a few steps on fixed
//! synthetic batches (`mod common;` in each): the data and batches, the run configuration, the
//! step loop, and the relative difference the tolerances are stated in.
// Each test binary compiles this module on its own and uses only some of the helpers.
#![allow(dead_code)]
use std::sync::Arc;

use samkit_core::{BaseOptimizer, LrSchedule, Rule, Sgd};
use samkit_data::loader::make_batch;
use samkit_data::{Batch, Dataset, Normalize};
use samkit_train::engine::Engine;
use samkit_train::{load_data, DataConfig, Pass2Mode, Passes, RunConfig, Trainer};

/// Steps per run: enough for SSAM-F to update its mask twice (interval 2) and for the
/// momentum to carry rounding differences forward.
pub const STEPS: usize = 3;
pub const BATCH: usize = 8;
pub const LR: f32 = 0.05;

/// The synthetic training and test sets and the [`STEPS`] fixed, unaugmented batches every run
/// of a test trains on.
pub struct Setup {
    pub train: Arc<Dataset>,
    pub test: Arc<Dataset>,
    pub norm: Normalize,
    pub batches: Vec<Batch>,
}

pub fn setup() -> Setup {
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

/// SGD with momentum and weight decay at [`LR`].
pub fn sgd() -> BaseOptimizer {
    BaseOptimizer::Sgd(Sgd {
        lr: LR,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Sgd::default()
    })
}

/// One epoch of [`STEPS`] steps of `rule` over SGD at a constant [`LR`], a network of `width`,
/// no augmentation or label smoothing, seed 0.
pub fn config(name: &str, rule: Rule, pass2: Pass2Mode, width: usize, data: &Setup) -> RunConfig {
    let mut d = DataConfig::synthetic(data.train.len(), data.test.len());
    d.no_augment = true;
    RunConfig {
        optimizer: name.into(),
        rule,
        base: sgd(),
        schedule: LrSchedule::constant(LR),
        epochs: 1,
        batch: BATCH,
        steps_per_epoch: Some(STEPS),
        width,
        label_smoothing: 0.0,
        augment: false,
        seed: 0,
        data: d,
        cuda: Default::default(),
        pass2,
        distill: None,
    }
}

/// Trains on the fixed batches (no step may be skipped): each step's loss and pass counts.
pub fn run<E: Engine>(t: &mut Trainer<E>, data: &Setup) -> (Vec<f64>, Vec<Passes>) {
    data.batches
        .iter()
        .map(|b| {
            let log = t.step(b).expect("a step");
            assert!(
                !log.skipped,
                "{}: step {} skipped",
                t.cfg.optimizer, log.step
            );
            (log.loss, log.passes)
        })
        .unzip()
}

/// `|a - b|` relative to the larger magnitude (never divided by zero).
pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}
