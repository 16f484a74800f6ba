//! One error type for the CUDA side.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// No CUDA driver library, no device, or the device cannot be opened.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// NVRTC or the CUDA headers could not be found or loaded.
    #[error("NVRTC unavailable: {0}")]
    NoNvrtc(String),
    /// A kernel family failed to compile, or compiled with warnings or spills.
    #[error("compiling kernels `{family}` for {arch}: {detail}")]
    Compile {
        family: String,
        arch: String,
        detail: String,
    },
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("{0}")]
    Core(#[from] samkit_core::Error),
    /// The host's and the kernels' shared structures disagree (a build mismatch).
    #[error("ABI mismatch between host and kernels: {0}")]
    Abi(String),
    #[error("device buffer `{what}` does not match: {detail}")]
    Buffer { what: &'static str, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True when the error means "there is no usable GPU here" (tests print a skip line).
    pub fn is_no_device(&self) -> bool {
        matches!(self, Error::NoDevice(_))
    }
}
