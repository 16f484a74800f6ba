//! The flags shared by `train`, `compare`, `landscape`, `hessian` and `bench`: data, model,
//! base optimizer, schedule and every rule's hyperparameters, turned into checked configs.
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use samkit_core::rules::{EgSam, Esam, Rst, SamOn, SegmentSelect, SwitchProb};
use samkit_core::{
    Adam, Asam, BaseOptimizer, DropRate, FriendlySam, Gsam, ImbSam, LookSam, LrSchedule, MaskKind,
    MaskSchedule, RmsProp, Rule, Sam, Schedule, Sgd, Ssam, SsamNorm,
};
use samkit_train::distill::{DistillConfig, Teacher};
use samkit_train::{CudaRunOptions, CudnnAlgo, DataConfig, Pass2Mode, RunConfig};
use serde::{Deserialize, Serialize};

use crate::error::{check, CliError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataSource {
    /// Generated CIFAR-shaped images (no files needed).
    Synthetic,
    Cifar10,
    Cifar100,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    Cpu,
    Cuda,
}

/// The data set itself: what `bench` needs to build a batch (with `--long-tail`, ImbSAM's tail
/// classes), and the first part of [`DataArgs`].
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct DatasetArgs {
    /// Which data to train on.
    #[arg(long, value_enum, default_value = "synthetic")]
    pub data: DataSource,
    /// Folder with the CIFAR binary files (default: $SAMKIT_CIFAR_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Synthetic data: training images.
    #[arg(long, default_value_t = 2560)]
    pub train_size: usize,
    /// Synthetic data: test images.
    #[arg(long, default_value_t = 1000)]
    pub test_size: usize,
    /// Long-tailed subsampling of the training set with this imbalance factor (n_max/n_min)
    /// [default: none, the set as it is].
    #[arg(long)]
    pub long_tail: Option<f64>,
}

/// The data flags of a training run: the data set, and what shapes the training set's labels
/// and images over a run (`bench` times one step, which neither changes).
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct DataArgs {
    // Flattened in the serialized form too, so the keys stay those of one flat set of flags.
    #[command(flatten)]
    #[serde(flatten)]
    pub set: DatasetArgs,
    /// Symmetric label noise on the training set at this rate [default: none; 0.4 in
    /// `compare` on synthetic data].
    #[arg(long)]
    pub label_noise: Option<f64>,
    /// Turn off random crops and flips.
    #[arg(long)]
    pub no_augment: bool,
}

impl From<DataSource> for samkit_train::DataSource {
    fn from(d: DataSource) -> Self {
        match d {
            DataSource::Synthetic => samkit_train::DataSource::Synthetic,
            DataSource::Cifar10 => samkit_train::DataSource::Cifar10,
            DataSource::Cifar100 => samkit_train::DataSource::Cifar100,
        }
    }
}

impl DataArgs {
    /// The library's data configuration (what `trainer.json` records).
    pub fn config(&self) -> DataConfig {
        let d = &self.set;
        DataConfig {
            data: d.data.into(),
            data_dir: d.data_dir.clone(),
            train_size: d.train_size,
            test_size: d.test_size,
            long_tail: d.long_tail,
            label_noise: self.label_noise,
            no_augment: self.no_augment,
        }
    }
}

#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct ModelArgs {
    /// ResNet-18 stem width (64 = the standard 11.2M-parameter model) [default: 8 on the CPU
    /// with synthetic data, 16 on the CPU with CIFAR, 64 with --device cuda].
    #[arg(long)]
    pub width: Option<usize>,
    /// Label smoothing of the cross-entropy.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseKind {
    Sgd,
    Adam,
    Adamw,
    Rmsprop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    Step,
    Cosine,
}

/// The flags of one step: batch, base optimizer and seed; `train`, `compare` and `bench` (which
/// times single steps) share them.
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct StepArgs {
    /// Mini-batch size [default: 64 on the CPU, 128 with --device cuda, and 128 with
    /// --preset-survey where a command has it].
    #[arg(long)]
    pub batch: Option<usize>,
    /// The base optimizer the rule steps with.
    #[arg(long, value_enum, default_value = "sgd")]
    pub base: BaseKind,
    /// Base learning rate [default: 0.1 for sgd, 1e-3 for adam and adamw, 1e-2 for rmsprop].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Momentum [default: 0.9 for sgd, 0 for rmsprop].
    #[arg(long)]
    pub momentum: Option<f32>,
    /// Weight decay (L2 for sgd, adam and rmsprop; decoupled for adamw).
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f32,
    /// SGD: Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// Adam/AdamW: divide by the running maximum of the second moment (torch's amsgrad).
    #[arg(long)]
    pub amsgrad: bool,
    /// Ascend the loss instead of descending it (torch's maximize; every base optimizer).
    #[arg(long)]
    pub maximize: bool,
    /// Seed of the data, the initialisation, every random draw of a rule and, in a training
    /// run, the shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The flags of a training run: one step's, and what shapes the run (epochs, schedule, the
/// survey preset).
#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct TrainArgs {
    /// Epochs to train [default: 4; 80 with --preset-survey].
    #[arg(long)]
    pub epochs: Option<u32>,
    // Flattened in the serialized form too: `compare --runs` tables and the resume check read
    // one flat set of keys.
    #[command(flatten)]
    #[serde(flatten)]
    pub step: StepArgs,
    /// Stop each epoch after this many steps (quick runs) [default: every full batch].
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    /// Learning-rate schedule [default: cosine to 0; step with --preset-survey].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Step schedule: epochs at which the rate is multiplied by --gamma [default: 5/8 and
    /// 15/16 of the run; 50,75 with --preset-survey].
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<u64>>,
    /// Step schedule: the factor of the rate at each milestone.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f32,
    /// Linear warm-up over this many steps.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// The survey's table-1 setup: ResNet-18 width 64, 80 epochs, batch 128, SGD lr 0.1
    /// momentum 0.9 weight decay 5e-4, ×0.1 at epochs 50 and 75, ρ = 0.05, SSAM-F n_s = 256
    /// and K = 5, SSAM-D 20 % drop/grow and K = 5, sparsity 0.5, on any device. Flags given
    /// explicitly win over the preset (a shorter --epochs scales the milestones to 5/8 and
    /// 15/16 of the run); each departure from the survey's setup is printed, and an estimate of
    /// the run's time on this device before it starts.
    #[arg(long)]
    pub preset_survey: bool,
}

#[derive(Args, Clone, Debug, Serialize, Deserialize)]
pub struct RuleArgs {
    /// Perturbation radius ρ (default: each rule's own, 0.05 for the survey's rules).
    // A negative value is a value (refused as one, naming --rho), not an unknown flag.
    #[arg(long, allow_negative_numbers = true)]
    pub rho: Option<f32>,
    /// SAM and FriendlySAM: the adaptive variant (e ∝ w² ⊙ d, the norm over |w| ⊙ d).
    #[arg(long)]
    pub adaptive: bool,
    /// The perturbation epsilon eps_p in ρ / (‖d‖ + eps_p) (default: each rule's value in
    /// docs/ALGORITHMS.md: 1e-12, ASAM and ImbSAM 1e-16, SSAM with --ssam-full-norm 1e-7).
    #[arg(long)]
    pub perturb_eps: Option<f64>,
    /// SAM: gradient centralization of the perturbation (pytorch_optimizer's use_gc; CPU only).
    #[arg(long)]
    pub grad_centralization: bool,
    /// ASAM: η in T = |w| + η.
    #[arg(long, default_value_t = 0.01)]
    pub asam_eta: f32,
    /// ASAM: filter-wise T.
    #[arg(long)]
    pub filterwise: bool,
    /// FriendlySAM: σ.
    #[arg(long, default_value_t = 1.0)]
    pub sigma: f32,
    /// FriendlySAM: λ.
    #[arg(long, default_value_t = 0.9)]
    pub lambda: f32,
    /// Sparse SAM: sparsity s.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f32,
    /// Sparse SAM: mask update interval K (steps).
    #[arg(long, default_value_t = 5)]
    pub mask_interval: u64,
    /// SSAM-F: samples of the empirical Fisher (n_s) [default: 128; 256 with
    /// --preset-survey].
    #[arg(long)]
    pub fisher_samples: Option<usize>,
    /// SSAM-D: drop/grow fraction r.
    #[arg(long, default_value_t = 0.2)]
    pub drop_rate: f32,
    /// SSAM-D: cosine r_t schedule (r_0 = --drop-rate) instead of a constant rate.
    #[arg(long)]
    pub drop_cosine: bool,
    /// Sparse SAM: normalise by ‖g‖ (the official code) instead of ‖M ⊙ g‖.
    #[arg(long)]
    pub ssam_full_norm: bool,
    /// SSAM-F: when the Fisher mask is computed: `steps` (before the first step, then every
    /// --mask-interval steps) or `official` (the official code: an all-zero first mask, so
    /// step 0 is a plain base step; a new mask after the first batch of every
    /// --mask-interval-th epoch, K in epochs; Fisher samples without replacement from the
    /// shuffled, augmented training set) [default: steps].
    #[arg(long, value_enum, value_name = "WHEN")]
    pub mask_schedule: Option<MaskScheduleArg>,
    /// ImbSAM: classes with fewer than τ training samples form the tail (n_c < τ); with
    /// --long-tail, every run's head/tail test accuracy splits the classes there too.
    #[arg(long, default_value_t = 20)]
    pub tau: usize,
    /// ImbSAM: weight κ of the tail loss.
    #[arg(long, default_value_t = 1.0)]
    pub kappa: f32,
    /// GSAM: α.
    #[arg(long, default_value_t = 0.4)]
    pub gsam_alpha: f32,
    /// GSAM: ρ at the smallest learning rate (default: ρ).
    #[arg(long)]
    pub rho_min: Option<f32>,
    /// LookSAM: SAM step every k steps.
    #[arg(long, default_value_t = 5)]
    pub looksam_k: u64,
    /// LookSAM: α.
    #[arg(long, default_value_t = 0.7)]
    pub looksam_alpha: f32,
    /// SSAM-L: pass 2 from the first perturbed unit: `exact` (the backward through the whole
    /// network; equals a full pass 2) or `truncated` (the backward stops there and the layers
    /// before it step with pass 1's gradient: an approximation) [default: exact].
    #[arg(long, value_enum, value_name = "MODE")]
    pub pass2: Option<Pass2Arg>,
    /// SSAM-L: the perturbed segments: `suffix` (the last layers holding (1−s)·N parameters)
    /// or `fisher` (segments by mean Fisher, every --mask-interval steps) [default: suffix].
    #[arg(long, value_enum, value_name = "HOW")]
    pub mask_select: Option<MaskSelectArg>,
    /// ESAM: probability β that a parameter tensor is perturbed at a step, in (0, 1]
    /// [default: 0.6].
    #[arg(long, allow_negative_numbers = true)]
    pub esam_beta: Option<f32>,
    /// ESAM: fraction γ of the batch (largest loss rise) in pass 2, in (0, 1] [default: 0.5].
    #[arg(long, allow_negative_numbers = true)]
    pub esam_gamma: Option<f32>,
    /// RST: probability p of a SAM step, in [0, 1] [default: 0.5].
    #[arg(long, allow_negative_numbers = true)]
    pub rst_p: Option<f32>,
    /// RST: switch p linearly from --rst-p at the first step to this value at the last.
    #[arg(long, allow_negative_numbers = true)]
    pub rst_p_end: Option<f32>,
    /// EG-SAM/OG-SAM (reconstructed): the extrapolation step η_x [default: the current
    /// learning rate].
    #[arg(long, allow_negative_numbers = true)]
    pub eta_x: Option<f32>,
    /// SAM-ON: ASAM's element-wise form on the norm layers (η from --asam-eta).
    #[arg(long)]
    pub sam_on_asam: bool,
    /// MESA/SAF: weight λ of the distillation term, ≥ 0 (0: the base optimizer exactly)
    /// [default: 0.8 for MESA, 0.3 for SAF].
    #[arg(long, allow_negative_numbers = true)]
    pub distill_lambda: Option<f32>,
    /// MESA/SAF: temperature τ of the distillation term, > 0 [default: 5].
    #[arg(long, allow_negative_numbers = true)]
    pub distill_tau: Option<f32>,
    /// MESA/SAF: the first epoch (from 0) with the distillation term; plain base steps before
    /// [default: 5].
    #[arg(long)]
    pub distill_start: Option<u32>,
    /// MESA: decay d of the teacher's exponential moving average, in [0, 1) [default: 0.9998].
    #[arg(long, allow_negative_numbers = true)]
    pub mesa_decay: Option<f32>,
    /// SAF: the teacher's logits are this many epochs old, 1 to 64 [default: 3].
    #[arg(long)]
    pub saf_lag: Option<u32>,
}

/// SSAM-L's `--pass2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pass2Arg {
    Exact,
    Truncated,
}

/// SSAM-F's `--mask-schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskScheduleArg {
    Steps,
    Official,
}

/// SSAM-L's `--mask-select`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskSelectArg {
    Suffix,
    Fisher,
}

impl RuleArgs {
    /// The flags of issue 11's rules that were given, each with the optimizers it applies to.
    fn given_rule_flags(&self) -> Vec<(&'static str, &'static [&'static str])> {
        const SSAM_L: &[&str] = &["ssam-l"];
        const EG: &[&str] = &["eg-sam", "og-sam"];
        const DISTILL: &[&str] = &["mesa", "saf"];
        [
            (self.pass2.is_some(), "pass2", SSAM_L),
            (self.mask_select.is_some(), "mask-select", SSAM_L),
            (
                self.mask_schedule.is_some(),
                "mask-schedule",
                &["ssam-f"][..],
            ),
            (self.esam_beta.is_some(), "esam-beta", &["esam"][..]),
            (self.esam_gamma.is_some(), "esam-gamma", &["esam"][..]),
            (self.rst_p.is_some(), "rst-p", &["rst"][..]),
            (self.rst_p_end.is_some(), "rst-p-end", &["rst"][..]),
            (self.eta_x.is_some(), "eta-x", EG),
            (self.sam_on_asam, "sam-on-asam", &["sam-on"][..]),
            (self.distill_lambda.is_some(), "distill-lambda", DISTILL),
            (self.distill_tau.is_some(), "distill-tau", DISTILL),
            (self.distill_start.is_some(), "distill-start", DISTILL),
            (self.mesa_decay.is_some(), "mesa-decay", &["mesa"][..]),
            (self.saf_lag.is_some(), "saf-lag", &["saf"][..]),
        ]
        .into_iter()
        .filter(|&(given, _, _)| given)
        .map(|(_, flag, to)| (flag, to))
        .collect()
    }

    /// MESA's or SAF's settings for optimizer `name` (`None` for the others), the spec's
    /// defaults overridden by the flags; a bad value is an error naming its flag.
    pub fn distill_config(&self, name: &str) -> Result<Option<DistillConfig>> {
        let mut c = match name {
            "mesa" => DistillConfig::mesa(),
            "saf" => DistillConfig::saf(),
            _ => return Ok(None),
        };
        c.lambda = self.distill_lambda.unwrap_or(c.lambda);
        c.tau = self.distill_tau.unwrap_or(c.tau);
        c.start_epoch = self.distill_start.unwrap_or(c.start_epoch);
        c.teacher = match c.teacher {
            Teacher::Mesa { decay } => Teacher::Mesa {
                decay: self.mesa_decay.unwrap_or(decay),
            },
            Teacher::Saf { lag } => Teacher::Saf {
                lag: self.saf_lag.unwrap_or(lag),
            },
        };
        c.validate().map_err(|e| match e {
            samkit_train::TrainError::InvalidValue { flag, why } => CliError::invalid(flag, why),
            other => CliError::invalid("optimizer", other.to_string()),
        })?;
        Ok(Some(c))
    }

    /// An error naming the first given rule flag that applies to none of `optimizers` (a
    /// comparison accepts a flag that applies to any of its optimizers).
    pub fn check_applies<S: AsRef<str>>(&self, optimizers: &[S]) -> Result<()> {
        for (flag, to) in self.given_rule_flags() {
            if !optimizers.iter().any(|o| to.contains(&o.as_ref())) {
                return Err(CliError::invalid(
                    flag,
                    format!("only applies to {}", to.join(" and ")),
                ));
            }
        }
        Ok(())
    }

    /// SSAM-L's pass 2 mode.
    pub fn pass2_mode(&self) -> Pass2Mode {
        match self.pass2 {
            Some(Pass2Arg::Truncated) => Pass2Mode::Truncated,
            Some(Pass2Arg::Exact) | None => Pass2Mode::Exact,
        }
    }
}

/// `v ∈ (0, 1]`, finite.
fn open_unit(flag: &'static str, v: f32) -> Result<f32> {
    check::positive(flag, v as f64)?;
    if v <= 1.0 {
        Ok(v)
    } else {
        Err(CliError::invalid(flag, format!("{v} must lie in (0, 1]")))
    }
}

/// `v ∈ [0, 1]`, finite.
fn unit(flag: &'static str, v: f32) -> Result<f32> {
    check::non_negative(flag, v as f64)?;
    if v <= 1.0 {
        Ok(v)
    } else {
        Err(CliError::invalid(flag, format!("{v} must lie in [0, 1]")))
    }
}

/// Device, data, model, schedule and rule flags: everything that defines a run but the
/// optimizer's name.
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// The device to train on (cuda: one NVIDIA GPU through cudarc).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub rule: RuleArgs,
    #[command(flatten)]
    pub cuda: CudaArgs,
}

/// How cuDNN picks convolution algorithms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CudnnAlgoArg {
    /// Time every algorithm once per shape and keep the fastest.
    Benchmark,
    /// cuDNN's heuristics: nothing is timed.
    Heuristic,
}

/// CUDA device settings, only with `--device cuda`. They change the numbers a step produces, so
/// they are recorded in the run's config and a resumed run keeps them.
#[derive(Args, Clone, Debug, Default)]
pub struct CudaArgs {
    /// The CUDA device ordinal [default: 0].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub cuda_device: Option<usize>,
    /// TF32 tensor-core math in convolutions and GEMMs (faster; not exact FP32).
    #[arg(long)]
    pub tf32: bool,
    /// How cuDNN picks convolution algorithms [default: benchmark].
    #[arg(long, value_enum, value_name = "HOW")]
    pub cudnn_algo: Option<CudnnAlgoArg>,
    /// Only deterministic cuDNN algorithms (repeated runs give the same bits).
    #[arg(long)]
    pub cudnn_deterministic: bool,
    /// The largest cuDNN workspace an algorithm may use, in MiB [default: 1024].
    #[arg(long, value_name = "MIB")]
    pub cudnn_workspace_mb: Option<usize>,
}

impl CudaArgs {
    /// The flag of a setting given with `--device cpu`, where it means nothing.
    fn first_given(&self) -> Option<&'static str> {
        if self.cuda_device.is_some() {
            Some("cuda-device")
        } else if self.tf32 {
            Some("tf32")
        } else if self.cudnn_algo.is_some() {
            Some("cudnn-algo")
        } else if self.cudnn_deterministic {
            Some("cudnn-deterministic")
        } else if self.cudnn_workspace_mb.is_some() {
            Some("cudnn-workspace-mb")
        } else {
            None
        }
    }

    /// The device settings of a run on `device`.
    pub fn options(&self, device: Device) -> Result<CudaRunOptions> {
        if device == Device::Cpu {
            if let Some(flag) = self.first_given() {
                return Err(CliError::invalid(flag, "only applies with --device cuda"));
            }
        }
        let d = CudaRunOptions::default();
        let o = CudaRunOptions {
            device: self.cuda_device.unwrap_or(d.device),
            tf32: self.tf32,
            cudnn_algo: match self.cudnn_algo {
                None => d.cudnn_algo,
                Some(CudnnAlgoArg::Benchmark) => CudnnAlgo::Benchmark,
                Some(CudnnAlgoArg::Heuristic) => CudnnAlgo::Heuristic,
            },
            cudnn_deterministic: self.cudnn_deterministic,
            cudnn_workspace_mb: self.cudnn_workspace_mb.unwrap_or(d.cudnn_workspace_mb),
        };
        o.validate()?;
        Ok(o)
    }
}

impl RunArgs {
    /// The run configuration of optimizer `name`; a rule flag that does not apply to it is
    /// refused.
    pub fn config(&self, name: &str) -> Result<RunConfig> {
        self.config_among(name, &[name])
    }

    /// The run configuration of optimizer `name`, one of `all` (a comparison's optimizers): a
    /// rule flag that applies to none of them is refused.
    pub fn config_among<S: AsRef<str>>(&self, name: &str, all: &[S]) -> Result<RunConfig> {
        self.rule.check_applies(all)?;
        let mut rule = self.rule.clone();
        if self.train.preset_survey && rule.fisher_samples.is_none() {
            rule.fisher_samples = Some(super::preset::FISHER_SAMPLES);
        }
        let train_len = match self.data.set.data {
            DataSource::Synthetic => self.data.set.train_size,
            DataSource::Cifar10 | DataSource::Cifar100 => 50_000,
        };
        let mut cfg = run_config(
            name,
            self.device,
            &self.data,
            &self.model,
            &self.train,
            &rule,
            train_len,
        )?;
        cfg.cuda = self.cuda.options(self.device)?;
        cfg.pass2 = self.rule.pass2_mode();
        cfg.distill = self.rule.distill_config(name)?;
        Ok(cfg)
    }
}

/// SSAM-F's n_s without `--fisher-samples` (docs/ALGORITHMS.md's default).
const FISHER_SAMPLES: usize = 128;

/// The optimizers `--optimizers` and `--optimizer` accept.
pub const OPTIMIZERS: [&str; 18] = [
    "sgd",
    "sam",
    "sam-adaptive",
    "asam",
    "friendlysam",
    "ssam-f",
    "ssam-d",
    "imbsam",
    "gsam",
    "looksam",
    "ssam-l",
    "esam",
    "sam-on",
    "rst",
    "eg-sam",
    "og-sam",
    "mesa",
    "saf",
];

impl TrainArgs {
    /// `(epochs, batch, lr, schedule)` with the preset and the CPU defaults applied.
    fn resolved(&self, device: Device) -> (u32, usize, f32, ScheduleKind, Vec<u64>) {
        let survey = self.preset_survey;
        let epochs = self.epochs.unwrap_or(if survey { 80 } else { 4 });
        let batch = self
            .step
            .batch
            .unwrap_or(if survey || device == Device::Cuda {
                128
            } else {
                64
            });
        let lr = self.step.lr.unwrap_or(match self.step.base {
            BaseKind::Sgd => 0.1,
            BaseKind::Adam | BaseKind::Adamw => 1e-3,
            BaseKind::Rmsprop => 1e-2,
        });
        let schedule = self.schedule.unwrap_or(if survey {
            ScheduleKind::Step
        } else {
            ScheduleKind::Cosine
        });
        let milestones = self.milestones.clone().unwrap_or_else(|| {
            if survey {
                super::preset::milestones(epochs)
            } else {
                vec![(epochs as u64 * 5) / 8, (epochs as u64 * 15) / 16]
            }
        });
        (epochs, batch, lr, schedule, milestones)
    }
}

/// The base optimizer from the flags.
fn base_optimizer(t: &StepArgs, lr: f32) -> BaseOptimizer {
    let wd = t.weight_decay;
    // Adam and AdamW differ only in their defaults (coupled or decoupled weight decay).
    let adam = |defaults: Adam| Adam {
        lr,
        weight_decay: wd,
        amsgrad: t.amsgrad,
        maximize: t.maximize,
        ..defaults
    };
    match t.base {
        BaseKind::Sgd => BaseOptimizer::Sgd(Sgd {
            lr,
            momentum: t.momentum.unwrap_or(0.9),
            dampening: 0.0,
            nesterov: t.nesterov,
            weight_decay: wd,
            maximize: t.maximize,
        }),
        BaseKind::Adam => BaseOptimizer::Adam(adam(Adam::default())),
        BaseKind::Adamw => BaseOptimizer::AdamW(adam(Adam::adamw())),
        BaseKind::Rmsprop => BaseOptimizer::RmsProp(RmsProp {
            lr,
            momentum: t.momentum.unwrap_or(0.0),
            weight_decay: wd,
            maximize: t.maximize,
            ..RmsProp::default()
        }),
    }
}

/// The rule called `name`, with its hyperparameters from the flags.
pub fn rule(
    name: &str,
    r: &RuleArgs,
    seed: u64,
    total_steps: u64,
    lr_range: (f32, f32),
) -> Result<Rule> {
    if let Some(v) = r.rho {
        // Blamed on --rho here rather than on --optimizer by the rule's own validation.
        check::positive("rho", v as f64)?;
    }
    let rho = |default: f32| r.rho.unwrap_or(default);
    let ssam = |mask: MaskKind| Ssam {
        rho: rho(0.05),
        sparsity: r.sparsity,
        interval: r.mask_interval,
        norm: if r.ssam_full_norm {
            SsamNorm::Full
        } else {
            SsamNorm::Masked
        },
        mask,
        eps_p: r.perturb_eps,
        schedule: MaskSchedule::Steps,
    };
    let rule = match name {
        // MESA and SAF step with the base optimizer; their term is `RunConfig::distill`.
        "sgd" | "base" | "mesa" | "saf" => Rule::Base,
        "sam" => Rule::Sam(Sam {
            rho: rho(0.05),
            adaptive: r.adaptive,
            eps_p: r.perturb_eps,
            grad_centralization: r.grad_centralization,
        }),
        "sam-adaptive" => Rule::Sam(Sam {
            rho: rho(0.5),
            adaptive: true,
            eps_p: r.perturb_eps,
            grad_centralization: r.grad_centralization,
        }),
        "asam" => Rule::Asam(Asam {
            rho: rho(0.5),
            eta: r.asam_eta,
            filterwise: r.filterwise,
            eps_p: r.perturb_eps,
        }),
        "friendlysam" => Rule::FriendlySam(FriendlySam {
            rho: rho(0.05),
            sigma: r.sigma,
            lambda: r.lambda,
            adaptive: r.adaptive,
            eps_p: r.perturb_eps,
        }),
        "ssam-f" => Rule::Ssam(Ssam {
            // The official schedule's epoch length comes from the trainer's data.
            schedule: match r.mask_schedule {
                Some(MaskScheduleArg::Official) => MaskSchedule::Official {
                    steps_per_epoch: None,
                },
                Some(MaskScheduleArg::Steps) | None => MaskSchedule::Steps,
            },
            ..ssam(MaskKind::Fisher {
                samples: r.fisher_samples.unwrap_or(FISHER_SAMPLES),
            })
        }),
        "ssam-d" => Rule::Ssam(ssam(MaskKind::Dynamic {
            drop: if r.drop_cosine {
                DropRate::Cosine {
                    r0: r.drop_rate,
                    total_steps: total_steps.max(1),
                }
            } else {
                DropRate::Constant { rate: r.drop_rate }
            },
            seed,
        })),
        "imbsam" => Rule::ImbSam(ImbSam {
            rho: rho(0.05),
            tau: r.tau,
            kappa: r.kappa,
            eps_p: r.perturb_eps,
        }),
        "gsam" => Rule::Gsam(Gsam {
            rho_max: rho(0.05),
            rho_min: r.rho_min.unwrap_or(rho(0.05)),
            alpha: r.gsam_alpha,
            lr_max: lr_range.0,
            lr_min: lr_range.1,
            eps_p: r.perturb_eps,
        }),
        "looksam" => Rule::LookSam(LookSam {
            rho: rho(0.1),
            k: r.looksam_k,
            alpha: r.looksam_alpha,
            per_tensor: false,
            eps_p: r.perturb_eps,
        }),
        "ssam-l" => Rule::Ssam(ssam(MaskKind::Segments {
            select: match r.mask_select {
                Some(MaskSelectArg::Fisher) => SegmentSelect::Fisher {
                    samples: r.fisher_samples.unwrap_or(FISHER_SAMPLES),
                },
                Some(MaskSelectArg::Suffix) | None => SegmentSelect::Suffix,
            },
        })),
        "esam" => {
            let d = Esam::new(seed);
            Rule::Esam(Esam {
                rho: rho(d.rho),
                beta: r
                    .esam_beta
                    .map_or(Ok(d.beta), |v| open_unit("esam-beta", v))?,
                gamma: r
                    .esam_gamma
                    .map_or(Ok(d.gamma), |v| open_unit("esam-gamma", v))?,
                eps_p: r.perturb_eps,
                ..d
            })
        }
        "sam-on" => {
            let d = SamOn::default();
            Rule::SamOn(SamOn {
                rho: rho(d.rho),
                asam: r.sam_on_asam,
                eta: r.asam_eta,
                eps_p: r.perturb_eps,
            })
        }
        "rst" => {
            let p = r.rst_p.map_or(Ok(0.5), |v| unit("rst-p", v))?;
            Rule::Rst(Rst {
                rho: rho(0.05),
                p: match r.rst_p_end {
                    Some(end) => SwitchProb::Linear {
                        p0: p,
                        p1: unit("rst-p-end", end)?,
                        steps: total_steps.saturating_sub(1).max(1),
                    },
                    None => SwitchProb::Constant { p },
                },
                eps_p: r.perturb_eps,
                ..Rst::new(seed)
            })
        }
        "eg-sam" | "og-sam" => Rule::EgSam(EgSam {
            rho: rho(0.05),
            eta_x: r
                .eta_x
                .map(|v| check::non_negative("eta-x", v as f64).map(|_| v))
                .transpose()?,
            optimistic: name == "og-sam",
            eps_p: r.perturb_eps,
        }),
        other => {
            return Err(CliError::invalid(
                "optimizer",
                format!(
                    "unknown optimizer `{other}`; choose from {}",
                    OPTIMIZERS.join(", ")
                ),
            ))
        }
    };
    rule.validate()
        .map_err(|e| CliError::invalid("optimizer", e.to_string()))?;
    Ok(rule)
}

/// Builds the run configuration of optimizer `name` from the flags.
#[allow(clippy::too_many_arguments)]
pub fn run_config(
    name: &str,
    device: Device,
    data: &DataArgs,
    model: &ModelArgs,
    t: &TrainArgs,
    r: &RuleArgs,
    train_len: usize,
) -> Result<RunConfig> {
    let (epochs, batch, lr, sched, milestones) = t.resolved(device);
    check::count("epochs", epochs as usize, 1, 100_000)?;
    check::count("batch", batch, 1, 1 << 16)?;
    check::positive("lr", lr as f64)?;
    check::half_open("label-smoothing", model.label_smoothing as f64, 0.0, 1.0)?;
    if let Some(s) = t.steps_per_epoch {
        check::count("steps-per-epoch", s, 1, usize::MAX)?;
    }
    let per_epoch = {
        let full = train_len / batch.max(1);
        let full = if full == 0 { 1 } else { full };
        t.steps_per_epoch.map_or(full, |s| s.min(full))
    } as u64;
    let total = per_epoch * epochs as u64;
    let schedule = LrSchedule {
        base_lr: lr,
        schedule: match sched {
            ScheduleKind::Constant => Schedule::Constant,
            ScheduleKind::Step => Schedule::Step {
                milestones,
                gamma: t.gamma,
            },
            ScheduleKind::Cosine => Schedule::Cosine {
                total_steps: total,
                lr_min: 0.0,
            },
        },
        warmup_steps: t.warmup,
        steps_per_epoch: per_epoch,
    };
    schedule
        .validate()
        .map_err(|e| CliError::invalid("schedule", e.to_string()))?;
    let base = base_optimizer(&t.step, lr);
    base.validate()
        .map_err(|e| CliError::invalid("base", e.to_string()))?;
    let rule = rule(name, r, t.step.seed, total, schedule.range())?;
    let width = model.width.unwrap_or(match (device, data.set.data) {
        _ if t.preset_survey => super::preset::WIDTH,
        (Device::Cpu, DataSource::Synthetic) => 8,
        (Device::Cpu, _) => 16,
        (Device::Cuda, _) => 64,
    });
    check::count("width", width, 1, 1024)?;
    Ok(RunConfig {
        optimizer: name.to_string(),
        rule,
        base,
        schedule,
        epochs,
        batch,
        steps_per_epoch: t.steps_per_epoch,
        width,
        label_smoothing: model.label_smoothing,
        augment: !data.no_augment,
        seed: t.step.seed,
        data: data.config(),
        cuda: CudaRunOptions::default(),
        pass2: r.pass2_mode(),
        distill: None,
    })
}
