//! One error type for the network stack; every variant names what did not fit.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// A tensor or buffer had the wrong shape or length for the operation.
    #[error("shape mismatch in {what}: {detail}")]
    Shape { what: &'static str, detail: String },
    /// An argument outside its domain (a label past the class count, a bad width, ...).
    #[error("invalid argument `{name}`: {detail}")]
    Invalid { name: &'static str, detail: String },
    /// The operation is not available on this backend or device.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A checkpoint whose names, shapes or dtypes do not match the model, or a bad file.
    #[error("checkpoint {path}: {detail}")]
    Checkpoint { path: String, detail: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] samkit_core::Error),
    /// The CUDA backend: no device, a missing library (cuDNN, cuBLAS, NVRTC) or a failed call.
    #[error(transparent)]
    Cuda(#[from] crate::cuda::CudaError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when the error means "there is no usable CUDA device here" (tests print a skip
    /// line instead of failing).
    pub fn is_no_device(&self) -> bool {
        matches!(self, Error::Cuda(e) if e.is_no_device())
    }

    pub(crate) fn shape(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            what,
            detail: detail.into(),
        }
    }

    pub(crate) fn invalid(name: &'static str, detail: impl Into<String>) -> Self {
        Error::Invalid {
            name,
            detail: detail.into(),
        }
    }
}

/// Lets a gradient oracle written with this crate return its errors from the closure of
/// `samkit_core::Optimizer::step`.
impl From<Error> for samkit_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Core(c) => c,
            other => samkit_core::Error::Oracle(other.to_string()),
        }
    }
}
