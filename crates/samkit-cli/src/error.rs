//! The CLI's error type and the exit code each kind maps to.
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Exit code for a bad flag or value (the same code clap uses for usage errors).
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a failure while running an experiment (I/O, plotting, the optimizer).
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, Error)]
pub enum CliError {
    /// A flag value that parsed but is out of range or inconsistent.
    #[error("invalid value for --{flag}: {why}")]
    InvalidValue { flag: &'static str, why: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("drawing {path} failed: {detail}")]
    Plot { path: PathBuf, detail: String },
    /// A broken invariant of the run itself.
    #[error("{0}")]
    Run(String),
    /// The trainer (samkit-train), and every library error (samkit-core, -nn, -cuda, -data, the
    /// CUDA driver), which converts through it: one list of library errors and one answer to
    /// which of them are bad input, shared with the trainer.
    #[error(transparent)]
    Train(#[from] samkit_train::TrainError),
    #[error("cannot serialize {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Library errors become [`CliError::Train`] through [`samkit_train::TrainError`]'s own
/// conversions (which keep each error as the cause and fold samkit-cuda's core errors into
/// samkit-core's).
macro_rules! through_the_trainer {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for CliError {
            fn from(e: $t) -> Self {
                CliError::Train(e.into())
            }
        }
    )*};
}

through_the_trainer!(
    samkit_core::Error,
    samkit_nn::Error,
    samkit_cuda::Error,
    cudarc::driver::DriverError,
    samkit_data::DataError,
);

impl CliError {
    pub fn invalid(flag: &'static str, why: impl Into<String>) -> Self {
        CliError::InvalidValue {
            flag,
            why: why.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        CliError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn plot(path: &Path, detail: impl std::fmt::Display) -> Self {
        CliError::Plot {
            path: path.to_path_buf(),
            detail: detail.to_string(),
        }
    }

    /// Bad user input exits with 2, everything else with 1.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::InvalidValue { .. } => EXIT_USAGE,
            // Includes a model or optimizer-state file the user named that is corrupt or of
            // another run.
            CliError::Train(e) if e.is_bad_input() => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Range checks shared by the experiments' flag validation.
pub mod check {
    use super::{CliError, Result};

    pub fn finite(flag: &'static str, v: f64) -> Result<f64> {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(CliError::invalid(
                flag,
                format!("{v} is not a finite number"),
            ))
        }
    }

    pub fn positive(flag: &'static str, v: f64) -> Result<f64> {
        finite(flag, v)?;
        if v > 0.0 {
            Ok(v)
        } else {
            Err(CliError::invalid(flag, format!("{v} must be > 0")))
        }
    }

    pub fn non_negative(flag: &'static str, v: f64) -> Result<f64> {
        finite(flag, v)?;
        if v >= 0.0 {
            Ok(v)
        } else {
            Err(CliError::invalid(flag, format!("{v} must be >= 0")))
        }
    }

    /// `lo <= v < hi`.
    pub fn half_open(flag: &'static str, v: f64, lo: f64, hi: f64) -> Result<f64> {
        finite(flag, v)?;
        if v >= lo && v < hi {
            Ok(v)
        } else {
            Err(CliError::invalid(
                flag,
                format!("{v} must lie in [{lo}, {hi})"),
            ))
        }
    }

    pub fn count(flag: &'static str, v: usize, lo: usize, hi: usize) -> Result<usize> {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(CliError::invalid(
                flag,
                format!("{v} must lie between {lo} and {hi}"),
            ))
        }
    }

    pub fn non_empty<T>(flag: &'static str, v: &[T]) -> Result<()> {
        if v.is_empty() {
            Err(CliError::invalid(flag, "needs at least one value"))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn library_errors_keep_their_cause_and_exit_with_1() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let nn: CliError = samkit_nn::Error::Io {
            path: "model.safetensors".into(),
            source: io,
        }
        .into();
        assert!(matches!(
            nn,
            CliError::Train(samkit_train::TrainError::Nn(_))
        ));
        assert_eq!(nn.exit_code(), EXIT_FAILURE);
        // transparent: the nn error's own source (the I/O error) is the next link.
        let cause = nn.source().expect("a cause");
        assert!(cause.downcast_ref::<std::io::Error>().is_some(), "{cause}");

        let cuda: CliError = samkit_cuda::Error::Abi("struct sizes".into()).into();
        assert!(matches!(
            cuda,
            CliError::Train(samkit_train::TrainError::Cuda(_))
        ));
        assert_eq!(cuda.exit_code(), EXIT_FAILURE);
        assert!(cuda.to_string().starts_with("CUDA: "), "{cuda}");
        let cause = cuda.source().expect("a cause");
        assert!(cause.downcast_ref::<samkit_cuda::Error>().is_some());

        let protocol = samkit_core::Error::Protocol("second_step first".into());
        let core: CliError = samkit_cuda::Error::Core(protocol).into();
        assert!(
            matches!(core, CliError::Train(samkit_train::TrainError::Core(_))),
            "{core:?}"
        );
        // A corrupt optimizer-state file the user named is bad input.
        let state: CliError = samkit_core::Error::State {
            path: "optimizer.safetensors".into(),
            detail: "bit flip".into(),
        }
        .into();
        assert_eq!(state.exit_code(), EXIT_USAGE);

        // The trainer's errors: its bad input stays bad input, with the same message.
        let bad: CliError = samkit_train::TrainError::invalid("device", "no GPU").into();
        assert_eq!(bad.exit_code(), EXIT_USAGE);
        assert_eq!(bad.to_string(), "invalid value for --device: no GPU");
        let run: CliError = samkit_train::TrainError::from(samkit_core::Error::Protocol(
            "second_step first".into(),
        ))
        .into();
        assert_eq!(run.exit_code(), EXIT_FAILURE);
    }
}
