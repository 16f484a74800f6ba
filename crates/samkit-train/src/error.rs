//! The training library's error: bad input (a configuration or device that cannot run) apart
//! from failures while running, each library error kept as the cause.
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    /// A configuration value out of range or inconsistent, or a device that cannot be used:
    /// the input is wrong, not the run. `flag` names the option (the CLI's flag without `--`).
    #[error("invalid value for --{flag}: {why}")]
    InvalidValue { flag: &'static str, why: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file the user named (a checkpoint's) that cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint folder that is not one consistent checkpoint: files of different saves,
    /// a manifest or `trainer.json` that does not parse or holds values no run can have.
    #[error("checkpoint {path}: {why}")]
    Checkpoint { path: PathBuf, why: String },
    #[error("optimizer error: {0}")]
    Core(#[from] samkit_core::Error),
    /// The network stack (samkit-nn): a shape, a checkpoint, cuDNN/cuBLAS.
    #[error(transparent)]
    Nn(#[from] samkit_nn::Error),
    /// The CUDA optimizer or kernels (its samkit-core errors become [`TrainError::Core`]).
    #[error("CUDA: {0}")]
    Cuda(#[source] samkit_cuda::Error),
    /// A CUDA driver call made by the trainer itself (events, copies).
    #[error("CUDA: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// The data pipeline (samkit-data).
    #[error(transparent)]
    Data(#[from] samkit_data::DataError),
    /// A broken invariant of the run itself (a time mark never recorded).
    #[error("{0}")]
    Run(String),
    #[error("cannot serialize {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl From<samkit_cuda::Error> for TrainError {
    fn from(e: samkit_cuda::Error) -> Self {
        match e {
            samkit_cuda::Error::Core(c) => TrainError::Core(c),
            e => TrainError::Cuda(e),
        }
    }
}

impl TrainError {
    pub fn invalid(flag: &'static str, why: impl Into<String>) -> Self {
        TrainError::InvalidValue {
            flag,
            why: why.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A file that cannot be read.
    pub fn read(path: &Path, source: std::io::Error) -> Self {
        TrainError::Read {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the input was wrong (a configuration value, an unusable device, a model or
    /// optimizer-state file that is corrupt, fails its checksum or belongs to another run)
    /// rather than the run failing: the CLI exits with 2 for these, 1 otherwise.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            TrainError::InvalidValue { .. }
                | TrainError::Read { .. }
                | TrainError::Checkpoint { .. }
                | TrainError::Nn(samkit_nn::Error::Checkpoint { .. })
                | TrainError::Core(samkit_core::Error::State { .. })
        )
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn library_errors_keep_their_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let nn: TrainError = samkit_nn::Error::Io {
            path: "model.safetensors".into(),
            source: io,
        }
        .into();
        assert!(matches!(nn, TrainError::Nn(_)));
        assert!(!nn.is_bad_input());
        let cause = nn.source().expect("a cause");
        assert!(cause.downcast_ref::<std::io::Error>().is_some(), "{cause}");

        let cuda: TrainError = samkit_cuda::Error::Abi("struct sizes".into()).into();
        assert!(matches!(cuda, TrainError::Cuda(_)));
        let cause = cuda.source().expect("a cause");
        assert!(cause.downcast_ref::<samkit_cuda::Error>().is_some());

        let protocol = samkit_core::Error::Protocol("second_step first".into());
        let core: TrainError = samkit_cuda::Error::Core(protocol).into();
        assert!(matches!(core, TrainError::Core(_)), "{core:?}");

        let bad = TrainError::invalid("device", "no GPU");
        assert!(bad.is_bad_input());
        assert_eq!(bad.to_string(), "invalid value for --device: no GPU");
    }
}
