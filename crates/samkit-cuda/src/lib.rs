//! samkit-cuda: the CUDA kernels of the SAM family.
pub mod compile;
pub mod env;
pub mod error;

pub use error::{Error, Result};
