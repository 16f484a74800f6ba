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
    #[error("optimizer error: {0}")]
    Core(#[from] samkit_core::Error),
    /// A failure of the network stack, the data pipeline or a checkpoint while running.
    #[error("{0}")]
    Run(String),
    #[error("cannot serialize {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

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
