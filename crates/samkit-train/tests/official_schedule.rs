//! SSAM-F's official schedule through the trainer: the epoch length comes from the data, step 0
//! is one pass, and a mask follows the first batch of every `K`-th epoch.
mod common;

use common::{config, setup, BATCH, STEPS};
use samkit_core::{MaskKind, Rule, Ssam};
use samkit_train::engine::Engine;
use samkit_train::{Pass2Mode, Trainer};

/// A narrow network: the schedule, not the model, is under test.
const WIDTH: usize = 2;

fn official(steps_per_epoch: Option<u64>) -> Rule {
    Rule::Ssam(Ssam {
        interval: 1,
        mask: MaskKind::Fisher { samples: BATCH },
        ..Ssam::fisher_official(steps_per_epoch)
    })
}

#[test]
fn the_trainer_runs_the_official_schedule_by_epochs() {
    let data = setup();
    let mut cfg = config("ssam-f", official(None), Pass2Mode::Exact, WIDTH, &data);
    cfg.epochs = 2;
    let mut t = Trainer::new(cfg, data.train.clone(), data.test.clone(), data.norm).unwrap();
    // The epoch's length is the data's: STEPS full batches.
    assert_eq!(t.cfg.rule, official(Some(STEPS as u64)));
    let mut logs = Vec::new();
    let mut updates = Vec::new();
    for _ in 0..2 {
        let mut on_step = |l: &samkit_train::StepLog| logs.push(l.clone());
        t.train_epoch(&mut on_step).unwrap();
        updates.push(t.engine.status().unwrap().mask_updates);
    }
    assert_eq!(logs.len(), 2 * STEPS);
    assert!(logs.iter().all(|l| !l.skipped));
    // Step 0 has the all-zero mask: one pass, no perturbed loss; every later step perturbs.
    assert!(logs[0].perturbed_loss.is_none(), "step 0 is a base step");
    assert!(logs[1..].iter().all(|l| l.perturbed_loss.is_some()));
    // One mask after each epoch's first batch (K = 1 epoch).
    assert_eq!(updates, vec![1, 2]);
}

#[test]
fn a_checkpointed_epoch_length_that_the_data_does_not_give_is_refused() {
    let data = setup();
    let cfg = config(
        "ssam-f",
        official(Some(STEPS as u64 + 2)),
        Pass2Mode::Exact,
        WIDTH,
        &data,
    );
    let err = Trainer::new(cfg, data.train.clone(), data.test.clone(), data.norm)
        .err()
        .expect("another epoch length is refused");
    assert!(err.to_string().contains("mask-schedule"), "{err}");
}
