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

/// Optimizer buffers of each base optimizer on the device, at most: SGD's momentum; Adam's two
/// moments and AMSGrad's maximum; RMSprop's square average, momentum and centred average.
fn base_buffers(base: &samkit_core::BaseOptimizer) -> u128 {
    match base {
        samkit_core::BaseOptimizer::Sgd(_) => 1,
        _ => 3,
    }
}
/// Parameter-sized buffers of the SAM rule on the device, at most: the perturbation (or the
/// saved weights it restores) and one rule buffer (FriendlySAM's average, SSAM's mask,
/// LookSAM's direction).
const RULE_BUFFERS: u128 = 2;
/// What the device needs beyond the estimate's parts: cuBLAS's workspace, the allocator's
/// rounding, kernels' scratch (reductions, top-k keys), the batch's input and labels.
const DEVICE_SLACK: u128 = 256 << 20;
/// The bound a device estimate is held to where the device's free memory cannot be asked:
/// above the memory of any single GPU sold today (the H200 has 141 GB), so a run refused by it
/// could not run anywhere.
pub const DEVICE_MEMORY_BOUND: u128 = 192 << 30;

/// The parts of the device memory a `--device cuda` run of ResNet-18 needs, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceEstimate {
    pub parameters: u128,
    /// The two gradient arenas (pass 1 and pass 2).
    pub gradients: u128,
    pub optimizer: u128,
    /// What the forward keeps for the backward at the run's batch size.
    pub activations: u128,
    /// cuDNN's workspace limit (`--cudnn-workspace-mb`) and a fixed slack.
    pub workspace: u128,
}

impl DeviceEstimate {
    pub fn total(&self) -> u128 {
        self.parameters + self.gradients + self.optimizer + self.activations + self.workspace
    }

    /// The flag behind the larger part: the parameter-sized buffers grow with the width's
    /// square, the activations with batch × width, the workspace with its own flag.
    pub fn blame(&self) -> &'static str {
        let params = self.parameters + self.gradients + self.optimizer;
        if params >= self.activations && params >= self.workspace {
            "width"
        } else if self.activations >= self.workspace {
            "batch"
        } else {
            "cudnn-workspace-mb"
        }
    }

    fn describe(&self) -> String {
        format!(
            "about {:.2} GiB (parameters {:.2}, gradients {:.2}, optimizer state {:.2}, \
             activations {:.2}, workspace {:.2})",
            gib(self.total()),
            gib(self.parameters),
            gib(self.gradients),
            gib(self.optimizer),
            gib(self.activations),
            gib(self.workspace)
        )
    }
}

/// The device memory a `--device cuda` run of `cfg` needs, part by part.
pub fn device_estimate(cfg: &RunConfig, classes: usize) -> DeviceEstimate {
    let w = cfg.width as u128;
    let p = 4 * (PARAMS_PER_WIDTH_SQ as u128 * w * w + 8 * w * classes as u128);
    DeviceEstimate {
        parameters: p,
        gradients: 2 * p,
        optimizer: (base_buffers(&cfg.base) + RULE_BUFFERS) * p,
        activations: 4 * cfg.batch as u128 * ACTIVATIONS_PER_WIDTH as u128 * w,
        workspace: ((cfg.cuda.cudnn_workspace_mb as u128) << 20) + DEVICE_SLACK,
    }
}

/// Checks a device run's estimate against the device's free memory (`free`, from the
/// driver), or, where that cannot be asked (`None`), against [`DEVICE_MEMORY_BOUND`].
/// Returns a note to print when the free memory was unknown.
pub fn check_device_memory(
    cfg: &RunConfig,
    classes: usize,
    free: Option<u128>,
) -> Result<Option<String>> {
    let est = device_estimate(cfg, classes);
    let (limit, what, note) = match free {
        Some(f) => (f, format!("the device has {:.2} GiB free", gib(f)), None),
        None => (
            DEVICE_MEMORY_BOUND,
            format!(
                "more than any GPU holds ({:.0} GiB); the device's free memory could not be \
                 asked",
                gib(DEVICE_MEMORY_BOUND)
            ),
            Some(format!(
                "note: the device's free memory could not be asked; the run needs {}",
                est.describe()
            )),
        ),
    };
    if est.total() > limit {
        return Err(TrainError::invalid(
            est.blame(),
            format!(
                "width {} and batch {} on the device need {}, {what}",
                cfg.width,
                cfg.batch,
                est.describe()
            ),
        ));
    }
    Ok(note)
}

/// [`check_device_memory`] on an opened device: its free memory from the driver
/// (`cuMemGetInfo`), before anything of the run is allocated there. Where the driver cannot
/// answer, the bound is checked and a note printed on stderr.
pub fn check_cuda_memory(
    ctx: &cudarc::driver::CudaContext,
    cfg: &RunConfig,
    classes: usize,
) -> Result<()> {
    let free = ctx.mem_get_info().ok().map(|(free, _)| free as u128);
    if let Some(note) = check_device_memory(cfg, classes, free)? {
        eprintln!("{note}");
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

#[cfg(test)]
mod tests {
    use samkit_core::{BaseOptimizer, LrSchedule, Rule, Sam, Sgd};

    use super::*;
    use crate::config::{DataConfig, Pass2Mode};

    fn config(width: usize, batch: usize) -> RunConfig {
        RunConfig {
            optimizer: "sam".into(),
            rule: Rule::Sam(Sam::default()),
            base: BaseOptimizer::Sgd(Sgd::default()),
            schedule: LrSchedule::constant(0.1),
            epochs: 1,
            batch,
            steps_per_epoch: None,
            width,
            label_smoothing: 0.0,
            augment: false,
            seed: 0,
            data: DataConfig::synthetic(batch, batch),
            cuda: Default::default(),
            pass2: Pass2Mode::Exact,
            distill: None,
        }
    }

    const GIB: u128 = 1 << 30;

    #[test]
    fn the_device_estimate_adds_up_its_parts_and_grows_as_the_model() {
        let c = config(64, 128);
        let e = device_estimate(&c, 10);
        // ResNet-18 at width 64 holds 11.17M parameters: 44.7 MB of f32.
        let p = e.parameters;
        assert!((44_000_000..46_000_000).contains(&p), "{p}");
        assert_eq!(e.gradients, 2 * p);
        // SGD's momentum and the rule's two buffers.
        assert_eq!(e.optimizer, 3 * p);
        assert_eq!(
            e.total(),
            e.parameters + e.gradients + e.optimizer + e.activations + e.workspace
        );
        assert!(e.workspace > (c.cuda.cudnn_workspace_mb as u128) << 20);
        // Adam keeps more state than SGD.
        let mut adam = c.clone();
        adam.base = BaseOptimizer::Adam(samkit_core::Adam::default());
        assert!(device_estimate(&adam, 10).optimizer > e.optimizer);
        // Twice the width: four times the parameters; twice the batch: twice the activations.
        let p2 = device_estimate(&config(128, 128), 10).parameters;
        assert!(p2 > 3 * p && p2 < 5 * p, "{p2} against {p}");
        assert_eq!(
            device_estimate(&config(64, 256), 10).activations,
            2 * e.activations
        );
        // The standard run fits in a small GPU's 16 GiB.
        assert!(e.total() < 16 * GIB, "{}", e.describe());
    }

    #[test]
    fn a_run_larger_than_the_free_memory_is_refused_naming_the_flag_and_estimate() {
        // Width 1024: 2.9 billion parameters, tens of GiB before any activation.
        let wide = config(MAX_WIDTH, 64);
        let e = check_device_memory(&wide, 10, Some(16 * GIB)).expect_err("too wide");
        let msg = e.to_string();
        assert!(e.is_bad_input(), "{msg}");
        assert!(
            msg.contains("--width") && msg.contains("GiB") && msg.contains("16.00 GiB free"),
            "{msg}"
        );
        // A batch whose activations dominate is blamed on --batch.
        let big_batch = config(64, MAX_BATCH);
        let e = check_device_memory(&big_batch, 10, Some(GIB)).expect_err("too many images");
        assert!(e.to_string().contains("--batch"), "{e}");
        // What fits passes, with no note.
        let small = config(8, 32);
        assert_eq!(
            check_device_memory(&small, 10, Some(16 * GIB)).expect("fits"),
            None
        );
    }

    #[test]
    fn without_the_free_memory_the_bound_is_checked_and_a_note_given() {
        let small = config(8, 32);
        let note = check_device_memory(&small, 10, None)
            .expect("fits under the bound")
            .expect("a note");
        assert!(
            note.contains("could not be asked") && note.contains("GiB"),
            "{note}"
        );
        // 2.9 billion parameters and a batch of 65536 at width 1024: beyond any GPU.
        let huge = config(MAX_WIDTH, MAX_BATCH);
        assert!(device_estimate(&huge, 10).total() > DEVICE_MEMORY_BOUND);
        let e = check_device_memory(&huge, 10, None).expect_err("beyond any GPU");
        assert!(e.to_string().contains("more than any GPU"), "{e}");
    }
}
