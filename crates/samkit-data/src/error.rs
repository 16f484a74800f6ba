use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: file not found (expected the {what} binary file here)")]
    Missing { path: PathBuf, what: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: truncated or malformed: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("invalid dataset option `{name}` = {value}: {why}")]
    Invalid {
        name: &'static str,
        value: String,
        why: &'static str,
    },
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn invalid(
        name: &'static str,
        value: impl std::fmt::Display,
        why: &'static str,
    ) -> Self {
        DataError::Invalid {
            name,
            value: value.to_string(),
            why,
        }
    }
}
