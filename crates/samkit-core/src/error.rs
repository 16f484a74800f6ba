//! One error type for the whole CPU reference, each variant carrying the context a user needs.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("invalid hyperparameter `{name}` = {value}: {why}")]
    InvalidHyperparameter {
        name: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("buffer `{what}` does not match the layout: {detail}")]
    LayoutMismatch { what: &'static str, detail: String },
    #[error("invalid layout: {0}")]
    InvalidLayout(String),
    #[error("optimizer protocol violated: {0}")]
    Protocol(String),
    #[error("optimizer state file {path}: {detail}")]
    State { path: String, detail: String },
    #[error("gradient oracle failed: {0}")]
    Oracle(String),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn hyper(
        name: &'static str,
        value: impl std::fmt::Display,
        why: &'static str,
    ) -> Self {
        Error::InvalidHyperparameter {
            name,
            value: value.to_string(),
            why,
        }
    }
}

/// Checks shared by every rule's configuration.
pub(crate) fn check_finite_nonneg(name: &'static str, v: f32) -> Result<()> {
    if !v.is_finite() || v < 0.0 {
        return Err(Error::hyper(name, v, "must be finite and >= 0"));
    }
    Ok(())
}

pub(crate) fn check_positive(name: &'static str, v: f32) -> Result<()> {
    if !v.is_finite() || v <= 0.0 {
        return Err(Error::hyper(name, v, "must be finite and > 0"));
    }
    Ok(())
}

pub(crate) fn check_unit_interval(name: &'static str, v: f32, closed_right: bool) -> Result<()> {
    let ok = v.is_finite() && v >= 0.0 && (if closed_right { v <= 1.0 } else { v < 1.0 });
    if !ok {
        let why = if closed_right {
            "must lie in [0, 1]"
        } else {
            "must lie in [0, 1)"
        };
        return Err(Error::hyper(name, v, why));
    }
    Ok(())
}
