//! Training the SAM family on a ResNet-18: the trainer of the `samkit` command as a library.
//!
//! A [`RunConfig`] names the rule, base optimizer, schedule, model width, batch and data;
//! [`load_data`] loads or generates the data; [`Trainer::new`] (CPU) or [`Trainer::cuda`] (a CUDA
//! device) builds the model and optimizer. [`Trainer::step`] runs one step on a batch and times
//! each phase, [`Trainer::train_epoch`] one epoch with an evaluation, [`Trainer::evaluate`] the
//! loss and accuracy on a data set. [`Trainer::save`] writes a checkpoint folder
//! (`model.safetensors` with PyTorch names, `optimizer.safetensors`, `trainer.json`, and last
//! `manifest.json` with each file's checksum) as one unit ([`checkpoint`]: a crash leaves the
//! old checkpoint or the new one, never a mix) and [`Trainer::load`] restores one, after
//! checking that its files belong together, after which the run continues bit-identically to
//! an uninterrupted one. [`limits`] refuses what cannot run (a batch larger than the training
//! set, counts out of bounds, a model that does not fit in memory) before anything is
//! allocated; [`files::write_atomic`] is how every file is written.
//!
//! Every step goes through [`samkit_core::drive_step`] with the trainer's gradient oracle, on
//! both devices ([`engine`]); the CPU runs samkit-core's `Optimizer` on host vectors, a CUDA
//! device samkit-cuda's `GpuOptimizer` on device arenas.
//!
//! ```
//! use std::sync::Arc;
//!
//! use samkit_core::{BaseOptimizer, LrSchedule, Rule, Sam};
//! use samkit_train::{load_data, DataConfig, RunConfig, Trainer, TrainerState};
//!
//! # fn main() -> samkit_train::Result<()> {
//! let data = DataConfig::synthetic(8, 4);
//! let cfg = RunConfig {
//!     optimizer: "sam".into(),
//!     rule: Rule::Sam(Sam { rho: 0.05, ..Sam::default() }),
//!     base: BaseOptimizer::sgd(0.05, 0.9, 5e-4),
//!     schedule: LrSchedule::constant(0.05),
//!     epochs: 1,
//!     batch: 4,
//!     steps_per_epoch: None,
//!     width: 2,
//!     label_smoothing: 0.0,
//!     augment: false,
//!     seed: 0,
//!     data,
//!     cuda: Default::default(),
//!     pass2: Default::default(),
//!     distill: None,
//! };
//! let (split, norm) = load_data(&cfg.data, cfg.seed)?;
//! let (train, test) = (Arc::new(split.train), Arc::new(split.test));
//! let mut t = Trainer::new(cfg.clone(), train.clone(), test.clone(), norm)?;
//! let epoch = t.train_epoch(&mut |step| println!("step {}: loss {}", step.step, step.loss))?;
//! assert_eq!(epoch.steps, 2);
//!
//! // A checkpoint, and a trainer restored from it.
//! let dir = std::env::temp_dir().join(format!("samkit-train-doc-{}", std::process::id()));
//! t.save(&dir)?;
//! let state = TrainerState::read(&dir)?;
//! let mut resumed = Trainer::new(state.config.clone(), train, test, norm)?;
//! resumed.load(&dir, state)?;
//! assert_eq!((resumed.epoch, resumed.step), (1, 2));
//! assert_eq!(resumed.engine.net.params, t.engine.net.params);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
pub mod checkpoint;
pub mod config;
pub mod cuda_options;
pub mod distill;
pub mod engine;
pub mod error;
pub mod files;
pub mod floats;
pub mod limits;
pub mod passes;
pub mod probe;
pub mod trainer;

pub use config::{load_data, DataConfig, DataSource, Pass2Mode, RunConfig};
pub use cuda_options::{CudaRunOptions, CudnnAlgo};
pub use engine::{CpuEngine, CudaEngine, Engine};
pub use error::{Result, TrainError};
pub use passes::Passes;
pub use trainer::{EpochLog, Phases, StepLog, Trainer, TrainerState};
