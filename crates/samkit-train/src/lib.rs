//! Training the SAM family on a ResNet-18: the trainer of the `samkit` command as a library.
//!
//! A [`RunConfig`] names the rule, base optimizer, schedule, model width, batch and data;
//! [`load_data`] loads or generates the data; [`Trainer::new`] (CPU) or [`Trainer::cuda`] (a CUDA
//! device) builds the model and optimizer. [`Trainer::step`] runs one step on a batch and times
//! each phase, [`Trainer::train_epoch`] one epoch with an evaluation, [`Trainer::evaluate`] the
//! loss and accuracy on a data set. [`Trainer::save`] writes a checkpoint folder
//! (`model.safetensors` with PyTorch names, `optimizer.safetensors`, `trainer.json`) and
//! [`Trainer::load`] restores one, after which the run continues bit-identically to an
//! uninterrupted one.
pub mod config;
pub mod engine;
pub mod error;
pub mod probe;
pub mod trainer;

pub use config::{load_data, DataConfig, DataSource, RunConfig};
pub use engine::{CpuEngine, CudaEngine};
pub use error::{Result, TrainError};
pub use trainer::{EpochLog, Phases, StepLog, Trainer, TrainerState};
