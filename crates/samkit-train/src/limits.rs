//! The checks a run passes before anything is allocated or trained: counts within bounds, a
//! batch that the training set can fill, a memory estimate that fits, and a `trainer.json`
//! read from disk held to the same bounds as the flags that made it.
use samkit_core::{MaskKind, Rule};
use samkit_data::Dataset;

use crate::config::RunConfig;
use crate::error::{Result, TrainError};
use crate::trainer::TrainerState;

/// The largest batch a flag may set (as the CLI's `--batch`).
pub const MAX_BATCH: usize = 1 << 16;
/// The widest ResNet-18 stem (as the CLI's `--width`): 2.9 billion parameters.
pub const MAX_WIDTH: usize = 1024;
/// The most epochs a run may plan (as the CLI's `--epochs`).
pub const MAX_EPOCHS: u32 = 100_000;
/// The most samples of SSAM-F's empirical Fisher: its draw holds one index per sample, and
/// 2^24 of them (128 MiB) is far beyond any training set samkit reads.
pub const MAX_FISHER_SAMPLES: usize = 1 << 24;
/// ResNet-18 (CIFAR stem) parameters per squared stem width: 11.17M at width 64.
const PARAMS_PER_WIDTH_SQ: usize = 2_728;
/// Copies of the parameter vector a CPU run holds: weights, two gradients, and up to five
/// optimizer buffers (momentum or Adam's moments and maximum, FriendlySAM's average, SSAM's
/// mask, LookSAM's direction).
const PARAM_COPIES: usize = 8;
/// Activation floats the forward pass keeps for the backward per image and unit of width on
/// 32×32 images (every convolution's, batch norm's and ReLU's output, rounded up).
const ACTIVATIONS_PER_WIDTH: usize = 32 * 1024;

fn bound(field: &'static str, v: usize, lo: usize, hi: usize) -> Result<()> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(TrainError::invalid(
            field,
            format!("{v} must lie between {lo} and {hi}"),
        ))
    }
}

/// The refusal of a batch larger than the training set: an epoch of it would have no step.
pub fn batch_too_large(cfg: &RunConfig, train_len: usize) -> TrainError {
    let why = if cfg.data.long_tail.is_some() {
        " after --long-tail's subsampling"
    } else {
        ""
    };
    TrainError::invalid(
        "batch",
        format!(
            "{} is larger than the training set ({train_len} images{why}): an epoch would \
             have no full batch; lower --batch or use more data (--train-size, a smaller \
             --long-tail)",
            cfg.batch
        ),
    )
}

/// Bytes a CPU run of `cfg` holds while training, roughly: the parameter vector's copies and
/// the activations of one batch.
pub fn memory_estimate(cfg: &RunConfig, classes: usize) -> u128 {
    let w = cfg.width as u128;
    let params = PARAMS_PER_WIDTH_SQ as u128 * w * w + 8 * w * classes as u128;
    let acts = cfg.batch as u128 * ACTIVATIONS_PER_WIDTH as u128 * w;
    4 * (PARAM_COPIES as u128 * params + acts)
}

/// Memory this machine can still give (`MemAvailable` of `/proc/meminfo`), where known.
fn available_memory() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn gib(bytes: u128) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Checks a run's counts against the training set before the model is built: the bounds of
/// the flags, a batch the set can fill, SSAM-F's sample count, and (`on_host`: a CPU run) the
/// memory estimate against the memory available.
pub fn check_run(cfg: &RunConfig, train: &Dataset, on_host: bool) -> Result<()> {
    bound("batch", cfg.batch, 1, MAX_BATCH)?;
    bound("width", cfg.width, 1, MAX_WIDTH)?;
    bound("epochs", cfg.epochs as usize, 1, MAX_EPOCHS as usize)?;
    if let Some(s) = cfg.steps_per_epoch {
        bound("steps-per-epoch", s, 1, usize::MAX)?;
    }
    if let Rule::Ssam(s) = &cfg.rule {
        if let MaskKind::Fisher { samples } = s.mask {
            bound("fisher-samples", samples, 1, MAX_FISHER_SAMPLES)?;
        }
    }
    if train.len() < cfg.batch {
        return Err(batch_too_large(cfg, train.len()));
    }
    if on_host {
        let need = memory_estimate(cfg, train.classes);
        if let Some(have) = available_memory() {
            if need > have {
                // Blame the flag behind the larger part: the parameters grow with the
                // width's square, the activations with batch × width.
                let w = cfg.width as u128;
                let params = 4 * PARAM_COPIES as u128 * PARAMS_PER_WIDTH_SQ as u128 * w * w;
                let flag = if 2 * params >= need { "width" } else { "batch" };
                return Err(TrainError::invalid(
                    flag,
                    format!(
                        "width {} and batch {} need about {:.1} GiB, this machine has {:.1} GiB \
                         available",
                        cfg.width,
                        cfg.batch,
                        gib(need),
                        gib(have)
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Bytes of one 32×32 RGB image as the data pipeline holds it (`f32`).
const IMAGE_BYTES: u128 = 3 * 32 * 32 * 4;

/// Checks that the synthetic data `d` asks for fits in the memory available before it is
/// generated (`--train-size`, `--test-size`: up to 10 million images, 123 GB, pass the
/// bounds). CIFAR's sizes are fixed and small.
pub fn check_data(d: &crate::config::DataConfig) -> Result<()> {
    if d.data != crate::config::DataSource::Synthetic {
        return Ok(());
    }
    let need = (d.train_size as u128 + d.test_size as u128) * IMAGE_BYTES;
    if let Some(have) = available_memory() {
        if need > have {
            let flag = if d.train_size >= d.test_size {
                "train-size"
            } else {
                "test-size"
            };
            return Err(TrainError::invalid(
                flag,
                format!(
                    "{} training and {} test images need about {:.1} GiB, this machine has \
                     {:.1} GiB available",
                    d.train_size,
                    d.test_size,
                    gib(need),
                    gib(have)
                ),
            ));
        }
    }
    Ok(())
}

fn field(name: &str, r: Result<()>) -> std::result::Result<(), String> {
    r.map_err(|e| match e {
        TrainError::InvalidValue { why, .. } => format!("\"{name}\": {why}"),
        e => format!("\"{name}\": {e}"),
    })
}

/// Checks a `trainer.json` read from disk as the flags that wrote it were checked: every
/// count in bounds, the rule, base optimizer, schedule and device settings valid, and the
/// progress (`epoch`, `history`) consistent with the plan.
pub fn check_state(st: &TrainerState) -> std::result::Result<(), String> {
    let c = &st.config;
    field("batch", bound("batch", c.batch, 1, MAX_BATCH))?;
    field("width", bound("width", c.width, 1, MAX_WIDTH))?;
    field(
        "epochs",
        bound("epochs", c.epochs as usize, 1, MAX_EPOCHS as usize),
    )?;
    if let Some(s) = c.steps_per_epoch {
        field(
            "steps_per_epoch",
            bound("steps_per_epoch", s, 1, usize::MAX),
        )?;
    }
    if let Rule::Ssam(s) = &c.rule {
        if let MaskKind::Fisher { samples } = s.mask {
            field(
                "samples",
                bound("fisher-samples", samples, 1, MAX_FISHER_SAMPLES),
            )?;
        }
    }
    let ls = c.label_smoothing;
    if !(ls.is_finite() && (0.0..1.0).contains(&ls)) {
        return Err(format!("\"label_smoothing\": {ls} must lie in [0, 1)"));
    }
    c.rule.validate().map_err(|e| format!("\"rule\": {e}"))?;
    c.base.validate().map_err(|e| format!("\"base\": {e}"))?;
    c.schedule
        .validate()
        .map_err(|e| format!("\"schedule\": {e}"))?;
    field("cuda", c.cuda.validate())?;
    if st.epoch > c.epochs {
        return Err(format!(
            "\"epoch\": {} completed epochs of a run of {}",
            st.epoch, c.epochs
        ));
    }
    if st.history.len() != st.epoch as usize {
        return Err(format!(
            "\"history\" has {} epochs, \"epoch\" says {} were completed",
            st.history.len(),
            st.epoch
        ));
    }
    Ok(())
}
