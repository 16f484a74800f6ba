//! What defines a training run ([`RunConfig`], saved in every checkpoint's `trainer.json`) and
//! the data it trains on ([`DataConfig`], [`load_data`]).
use std::path::PathBuf;

use samkit_core::{BaseOptimizer, LrSchedule, Rule};
use samkit_data::cifar::Cifar;
use samkit_data::synthetic::SyntheticSpec;
use samkit_data::{transform, Normalize, Split};
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// Where the images come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// Generated CIFAR-shaped images (no files needed).
    Synthetic,
    Cifar10,
    Cifar100,
}

impl DataSource {
    /// The name the output uses.
    pub fn name(self) -> &'static str {
        match self {
            DataSource::Synthetic => "synthetic",
            DataSource::Cifar10 => "CIFAR-10",
            DataSource::Cifar100 => "CIFAR-100",
        }
    }
}

/// The data of a run and the transforms applied to its training set. The field names are
/// those of the CLI's flags (and of `trainer.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    pub data: DataSource,
    /// Folder with the CIFAR binary files (`None`: `$SAMKIT_CIFAR_DIR`).
    pub data_dir: Option<PathBuf>,
    /// Synthetic data: training images.
    pub train_size: usize,
    /// Synthetic data: test images.
    pub test_size: usize,
    /// Long-tailed subsampling of the training set with this imbalance factor (n_max/n_min).
    pub long_tail: Option<f64>,
    /// Symmetric label noise on the training set at this rate.
    pub label_noise: Option<f64>,
    /// No random crops and flips.
    pub no_augment: bool,
}

impl DataConfig {
    /// The name of the data set, for the output.
    pub fn data_name(&self) -> &'static str {
        self.data.name()
    }

    /// Synthetic data of `train` training and `test` test images, no transforms.
    pub fn synthetic(train: usize, test: usize) -> Self {
        DataConfig {
            data: DataSource::Synthetic,
            data_dir: None,
            train_size: train,
            test_size: test,
            long_tail: None,
            label_noise: None,
            no_augment: false,
        }
    }
}

/// Everything a training run needs: the optimizer (rule, base optimizer, schedule), the model,
/// the batches and the data. Serialized as the `config` of `trainer.json`, from which a resumed
/// run is rebuilt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunConfig {
    /// The optimizer's name (`sam`, `ssam-f`, ...): a label for the output.
    pub optimizer: String,
    pub rule: Rule,
    pub base: BaseOptimizer,
    pub schedule: LrSchedule,
    pub epochs: u32,
    pub batch: usize,
    /// Stop each epoch after this many steps (quick runs).
    pub steps_per_epoch: Option<usize>,
    /// ResNet-18 stem width (64: the standard 11.2M-parameter model).
    pub width: usize,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f32,
    /// Random crops and flips of the training images.
    pub augment: bool,
    /// Seeds the initial weights, the data order and augmentation, SSAM's random draws.
    pub seed: u64,
    pub data: DataConfig,
    /// The device settings of a CUDA run (ignored on the CPU); a config written before they
    /// existed reads as the defaults.
    #[serde(default)]
    pub cuda: crate::cuda_options::CudaRunOptions,
    /// SSAM-L's pass 2 (ALGORITHMS.md, "SSAM-L"); ignored by the other rules. A config written
    /// before it existed reads as [`Pass2Mode::Exact`].
    #[serde(default)]
    pub pass2: Pass2Mode,
    /// MESA's or SAF's distillation term (`crate::distill`, ALGORITHMS.md "MESA and SAF") on
    /// the base optimizer's loss; `None` for every other optimizer (and in a config written
    /// before it existed).
    #[serde(default)]
    pub distill: Option<crate::distill::DistillConfig>,
}

/// How SSAM-L's pass 2 runs from the first perturbed unit `u`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pass2Mode {
    /// The forward starts at `u` from pass 1's kept input, the backward runs through the whole
    /// network: bit-identical to a full pass 2.
    #[default]
    Exact,
    /// The backward also stops at `u`; the segments before `u` step with their pass-1
    /// gradient (an approximation: SAM on the suffix, the base optimizer on the prefix).
    Truncated,
}

impl Pass2Mode {
    pub fn name(self) -> &'static str {
        match self {
            Pass2Mode::Exact => "exact",
            Pass2Mode::Truncated => "truncated",
        }
    }
}

fn count(flag: &'static str, v: usize, lo: usize, hi: usize) -> Result<usize> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(TrainError::invalid(
            flag,
            format!("{v} must lie between {lo} and {hi}"),
        ))
    }
}

/// Loads or generates the data `d` names, with the long-tail and noise transforms; `seed`
/// seeds the synthetic images and the transforms. A value the data cannot take (a missing
/// CIFAR folder, an imbalance factor below 1) is [`TrainError::InvalidValue`].
pub fn load_data(d: &DataConfig, seed: u64) -> Result<(Split, Normalize)> {
    let bad = |flag: &'static str| {
        move |e: samkit_data::DataError| TrainError::invalid(flag, e.to_string())
    };
    let (mut split, norm) = match d.data {
        DataSource::Synthetic => {
            count("train-size", d.train_size, 1, 10_000_000)?;
            count("test-size", d.test_size, 1, 10_000_000)?;
            let spec = SyntheticSpec {
                train: d.train_size,
                test: d.test_size,
                seed,
                ..SyntheticSpec::default()
            };
            let s = samkit_data::synthetic::generate(&spec).map_err(bad("data"))?;
            let n = Normalize::fit(&s.train);
            (s, n)
        }
        DataSource::Cifar10 | DataSource::Cifar100 => {
            let which = if d.data == DataSource::Cifar10 {
                Cifar::C10
            } else {
                Cifar::C100
            };
            let s =
                samkit_data::cifar::load(which, d.data_dir.as_deref()).map_err(bad("data-dir"))?;
            let n = if which == Cifar::C10 {
                Normalize::CIFAR10
            } else {
                Normalize::CIFAR100
            };
            (s, n)
        }
    };
    if let Some(f) = d.long_tail {
        split.train = transform::long_tail(&split.train, f, seed).map_err(bad("long-tail"))?;
        split.description += &format!("; long-tailed with imbalance factor {f}");
    }
    if let Some(r) = d.label_noise {
        let (noisy, flipped) =
            transform::label_noise(&split.train, r, seed).map_err(bad("label-noise"))?;
        split.train = noisy;
        split.description += &format!("; symmetric label noise {r} ({flipped} labels changed)");
    }
    Ok((split, norm))
}
