//! What can go wrong on the CUDA side, as values: no device, a library that is not installed,
//! a failed cuDNN / cuBLAS / driver call, or kernels that cannot be built.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CudaError {
    /// No CUDA driver library, no device, or the device cannot be opened.
    #[error("no CUDA device: {0}")]
    NoDevice(String),
    /// cuDNN or cuBLAS is not installed where the dynamic loader (or the search of
    /// `samkit_nn::cuda::libs`) looks, or lacks a function the backend calls.
    #[error("{lib} unavailable: {detail}")]
    MissingLibrary { lib: &'static str, detail: String },
    #[error("cuDNN {call}: {status}")]
    Cudnn { call: &'static str, status: String },
    #[error("cuBLAS {call}: {status}")]
    Cublas { call: &'static str, status: String },
    /// No convolution algorithm fits (workspace limit, TF32 off, determinism).
    #[error("no cuDNN algorithm for {op} of {detail}")]
    NoAlgorithm { op: &'static str, detail: String },
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// samkit-cuda: opening the device, NVRTC, the kernel build.
    #[error(transparent)]
    Samkit(#[from] samkit_cuda::Error),
}

impl CudaError {
    /// True when there is no usable GPU here (tests print a skip line).
    pub fn is_no_device(&self) -> bool {
        match self {
            CudaError::NoDevice(_) => true,
            CudaError::Samkit(e) => e.is_no_device(),
            _ => false,
        }
    }
}

pub(crate) trait DnnResult<T> {
    /// Names the cuDNN call of a failed status.
    fn dnn(self, call: &'static str) -> Result<T, CudaError>;
}

impl<T> DnnResult<T> for Result<T, cudarc::cudnn::result::CudnnError> {
    fn dnn(self, call: &'static str) -> Result<T, CudaError> {
        self.map_err(|e| CudaError::Cudnn {
            call,
            status: format!("{:?}", e.0),
        })
    }
}

pub(crate) trait BlasResult<T> {
    /// Names the cuBLAS call of a failed status.
    fn blas(self, call: &'static str) -> Result<T, CudaError>;
}

impl<T> BlasResult<T> for Result<T, cudarc::cublas::result::CublasError> {
    fn blas(self, call: &'static str) -> Result<T, CudaError> {
        self.map_err(|e| CudaError::Cublas {
            call,
            status: format!("{:?}", e.0),
        })
    }
}

impl From<cudarc::driver::DriverError> for crate::error::Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        crate::error::Error::Cuda(CudaError::Driver(e))
    }
}

impl From<samkit_cuda::Error> for crate::error::Error {
    fn from(e: samkit_cuda::Error) -> Self {
        crate::error::Error::Cuda(CudaError::Samkit(e))
    }
}
