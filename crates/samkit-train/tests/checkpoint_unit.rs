//! Issue 12 on the trainer's side: a checkpoint is one unit (a mixed folder is refused, a
//! failed or interrupted save leaves the previous checkpoint, old folders without a manifest
//! still resume), a skipped step leaves the model as it was, a batch the training set cannot
//! fill is refused, a loaded `trainer.json` is checked like flags, and non-finite losses read
//! back.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use samkit_core::{BaseOptimizer, LrSchedule, Rule, Sam};
use samkit_data::loader::make_batch;
use samkit_data::{Dataset, Normalize};
use samkit_nn::{BufferData, Model};
use samkit_train::files::fault;
use samkit_train::{load_data, DataConfig, RunConfig, TrainError, Trainer, TrainerState};

const TRAIN: usize = 8;
const TEST: usize = 4;
const BATCH: usize = 4;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("samkit-train-ck-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("a temp folder");
    d
}

/// A SAM run of width 2 on 8 synthetic images, 2 steps per epoch. Built through JSON so that
/// fields added to `RunConfig` later (with serde defaults) need no change here.
fn config(epochs: u32, batch: usize) -> RunConfig {
    let mut data = DataConfig::synthetic(TRAIN, TEST);
    data.no_augment = true;
    let v = serde_json::json!({
        "optimizer": "sam",
        "rule": Rule::Sam(Sam { rho: 0.05, ..Sam::default() }),
        "base": BaseOptimizer::sgd(0.05, 0.9, 5e-4),
        "schedule": LrSchedule::constant(0.05),
        "epochs": epochs,
        "batch": batch,
        "steps_per_epoch": null,
        "width": 2,
        "label_smoothing": 0.0,
        "augment": false,
        "seed": 0,
        "data": data,
    });
    serde_json::from_value(v).expect("a run config")
}

struct Data {
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    norm: Normalize,
}

fn data(cfg: &RunConfig) -> Data {
    let (split, norm) = load_data(&cfg.data, cfg.seed).expect("synthetic data");
    Data {
        train: Arc::new(split.train),
        test: Arc::new(split.test),
        norm,
    }
}

fn trainer(cfg: &RunConfig, d: &Data) -> Trainer {
    Trainer::new(cfg.clone(), d.train.clone(), d.test.clone(), d.norm).expect("a trainer")
}

fn epoch(t: &mut Trainer) {
    t.train_epoch(&mut |_| {}).expect("an epoch");
}

fn resume(dir: &Path, d: &Data) -> samkit_train::Result<Trainer> {
    let st = TrainerState::read(dir)?;
    let mut t = trainer(&st.config, d);
    t.load(dir, st)?;
    Ok(t)
}

fn assert_mixed(r: samkit_train::Result<Trainer>, what: &str) {
    match r {
        Err(e @ TrainError::Checkpoint { .. }) => {
            assert!(e.is_bad_input(), "{e}");
            assert!(e.to_string().contains(what), "{e}");
        }
        Err(e) => panic!("expected a checkpoint refusal naming {what}, got {e}"),
        Ok(_) => panic!("a mixed checkpoint resumed ({what})"),
    }
}

/// Two checkpoints of the same run, after epoch 1 (`a`) and after epoch 2 (`b`).
fn two_checkpoints(name: &str) -> (PathBuf, PathBuf, Data) {
    let root = tmp(name);
    let cfg = config(2, BATCH);
    let d = data(&cfg);
    let mut t = trainer(&cfg, &d);
    epoch(&mut t);
    let (a, b) = (root.join("a"), root.join("b"));
    t.save(&a).expect("save a");
    epoch(&mut t);
    t.save(&b).expect("save b");
    (a, b, d)
}

#[test]
fn a_folder_mixing_two_saves_is_refused() {
    let (a, b, d) = two_checkpoints("mixed");
    assert!(b.join(samkit_train::checkpoint::MANIFEST).exists());
    resume(&b, &d).expect("an intact checkpoint resumes");

    // The optimizer of step 2 beside the model and trainer.json of step 4: the manifest
    // names the file that does not belong.
    std::fs::copy(
        a.join("optimizer.safetensors"),
        b.join("optimizer.safetensors"),
    )
    .unwrap();
    assert_mixed(resume(&b, &d), "optimizer.safetensors");
    // Without the manifest (a folder of an older samkit), the step counts still disagree.
    std::fs::remove_file(b.join(samkit_train::checkpoint::MANIFEST)).unwrap();
    assert_mixed(resume(&b, &d), "optimizer.safetensors is at step 2");

    // The model of step 2 with the optimizer and trainer.json of step 4, no manifest: the
    // batch norms counted 2 batches.
    let (a, b, d) = two_checkpoints("mixed-model");
    std::fs::copy(a.join("model.safetensors"), b.join("model.safetensors")).unwrap();
    std::fs::remove_file(b.join(samkit_train::checkpoint::MANIFEST)).unwrap();
    assert_mixed(resume(&b, &d), "num_batches_tracked = 2");
}

#[test]
fn a_checkpoint_without_a_manifest_still_resumes_exactly() {
    let (a, b, d) = two_checkpoints("old");
    std::fs::remove_file(a.join(samkit_train::checkpoint::MANIFEST)).unwrap();
    let mut t = resume(&a, &d).expect("an old checkpoint resumes");
    epoch(&mut t);
    let full = resume(&b, &d).expect("the uninterrupted run's checkpoint");
    assert_eq!(t.engine.net.params, full.engine.net.params);
    assert_eq!(t.step, full.step);
}

fn leftovers(dir: &Path) -> Vec<String> {
    let parent = dir.parent().expect("a parent");
    let mut v: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    v.sort();
    v
}

#[test]
fn a_failed_rename_leaves_the_previous_checkpoint_whole() {
    let root = tmp("fail");
    let cfg = config(2, BATCH);
    let d = data(&cfg);
    let mut t = trainer(&cfg, &d);
    epoch(&mut t);
    let ck = root.join("checkpoint");
    t.save(&ck).expect("the first save");
    let first = std::fs::read(ck.join("model.safetensors")).unwrap();
    epoch(&mut t);
    // The renames of a save: trainer.json and the manifest into the staging folder, the old
    // folder aside, the staging folder into place. Each one failing in turn.
    for n in 0..4 {
        fault::fail_rename_after(n);
        let e = t.save(&ck).expect_err("the injected failure");
        fault::clear();
        assert!(e.to_string().contains("injected"), "rename {n}: {e}");
        assert_eq!(leftovers(&ck), Vec::<String>::new(), "rename {n}");
        let back = resume(&ck, &d).expect("the previous checkpoint");
        assert_eq!((back.epoch, back.step), (1, 2), "rename {n}");
        assert_eq!(std::fs::read(ck.join("model.safetensors")).unwrap(), first);
    }
    t.save(&ck).expect("a save after the failures");
    let back = resume(&ck, &d).expect("the new checkpoint");
    assert_eq!((back.epoch, back.step), (2, 4));
}

#[test]
fn a_crash_between_the_switching_renames_recovers_the_newest_checkpoint() {
    let (a, b, d) = two_checkpoints("crash");
    let root = a.parent().unwrap().to_path_buf();
    let ck = root.join("checkpoint");
    // What a save of `b` over `a` killed between its two renames leaves: the old folder
    // aside, the complete new one still staged, no checkpoint.
    std::fs::rename(&a, root.join(".checkpoint.old-1-0")).unwrap();
    std::fs::rename(&b, root.join(".checkpoint.new-1-1")).unwrap();
    let t = resume(&ck, &d).expect("recovered");
    assert_eq!((t.epoch, t.step), (2, 4));
    assert_eq!(leftovers(&ck), Vec::<String>::new());

    // Killed while staging (no manifest yet): the old checkpoint comes back.
    let (a, b, d) = two_checkpoints("crash-staging");
    let root = a.parent().unwrap().to_path_buf();
    let ck = root.join("checkpoint");
    std::fs::remove_file(b.join(samkit_train::checkpoint::MANIFEST)).unwrap();
    std::fs::rename(&a, root.join(".checkpoint.old-1-0")).unwrap();
    std::fs::rename(&b, root.join(".checkpoint.new-1-1")).unwrap();
    let t = resume(&ck, &d).expect("recovered");
    assert_eq!((t.epoch, t.step), (1, 2));
}

fn buffers(t: &mut Trainer) -> Vec<(String, Vec<u64>)> {
    t.engine
        .net
        .model
        .buffers()
        .expect("buffers")
        .into_iter()
        .map(|b| {
            let bits = match b.data {
                BufferData::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
                BufferData::I64(v) => v.iter().map(|&x| x as u64).collect(),
            };
            (b.name, bits)
        })
        .collect()
}

#[test]
fn a_skipped_step_leaves_batch_norm_statistics_as_they_were() {
    let cfg = config(1, BATCH);
    let d = data(&cfg);
    let mut t = trainer(&cfg, &d);
    let idx: Vec<usize> = (0..BATCH).collect();
    let good = make_batch(&d.train, &idx, None, &d.norm, (0, 0));
    t.step(&good).expect("a good step");
    let before = buffers(&mut t);
    let params = t.engine.net.params.clone();
    let mut bad = good.clone();
    bad.x[0] = f32::INFINITY;
    let log = t.step(&bad).expect("a skipped step is no error");
    assert!(log.skipped, "a non-finite input must skip the step");
    assert_eq!(buffers(&mut t), before, "running statistics changed");
    assert_eq!(t.engine.net.params, params);
}

#[test]
fn a_batch_larger_than_the_training_set_is_refused() {
    let cfg = config(1, TRAIN + 1);
    let d = data(&cfg);
    let e = match Trainer::new(cfg, d.train.clone(), d.test.clone(), d.norm) {
        Err(e) => e,
        Ok(_) => panic!("a run of epochs without a step was built"),
    };
    assert!(e.is_bad_input(), "{e}");
    assert!(e.to_string().contains("--batch"), "{e}");
}

#[test]
fn a_loaded_trainer_json_is_checked_like_flags() {
    let (a, _, d) = two_checkpoints("json");
    let path = a.join("trainer.json");
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (field, value, says) in [
        ("batch", serde_json::json!(0), "\"batch\": 0"),
        ("width", serde_json::json!(100_000), "\"width\": 100000"),
        (
            "steps_per_epoch",
            serde_json::json!(0),
            "\"steps_per_epoch\": 0",
        ),
        ("epochs", serde_json::json!(0), "\"epochs\": 0"),
    ] {
        let mut v = good.clone();
        v["config"][field] = value.clone();
        std::fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
        match TrainerState::read(&a) {
            Err(e) => {
                assert!(e.is_bad_input(), "{e}");
                assert!(e.to_string().contains(says), "{field}: {e}");
            }
            Ok(_) => panic!("{field} = {value} was accepted"),
        }
    }
    std::fs::write(&path, "{ not json").unwrap();
    let e = TrainerState::read(&a).expect_err("not JSON");
    assert!(e.is_bad_input(), "{e}");
    let e = TrainerState::read(&a.join("nonexistent")).expect_err("no folder");
    assert!(
        e.is_bad_input() && e.to_string().starts_with("cannot read"),
        "{e}"
    );
    let _ = d;
}

#[test]
fn non_finite_losses_survive_a_checkpoint() {
    let root = tmp("nan");
    let cfg = config(2, BATCH);
    let d = data(&cfg);
    let mut t = trainer(&cfg, &d);
    epoch(&mut t);
    t.history[0].train_loss = f64::NAN;
    t.history[0].test_loss = f64::INFINITY;
    let ck = root.join("checkpoint");
    t.save(&ck).expect("save");
    let st = TrainerState::read(&ck).expect("a diverged run's checkpoint reads back");
    assert!(st.history[0].train_loss.is_nan());
    assert_eq!(st.history[0].test_loss, f64::INFINITY);
    assert_eq!(
        st.history[0].test_accuracy.to_bits(),
        t.history[0].test_accuracy.to_bits()
    );
}
