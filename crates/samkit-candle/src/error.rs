//! Errors of the adapter: each keeps its cause (candle's, samkit's, the loss function's).
use samkit_core::GradRequest as Request;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// candle failed while the adapter read gradients or wrote the Vars.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// The samkit optimizer refused the call (protocol, layout, hyperparameters).
    #[error(transparent)]
    Samkit(#[from] samkit_core::Error),
    /// The CUDA optimizer failed.
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(#[from] samkit_cuda::Error),
    /// A Var the optimizer cannot work on (dtype, device, layout, duplicate storage).
    #[error("Var `{name}`: {detail}")]
    Var { name: String, detail: String },
    /// The Vars do not match the optimizer's layout.
    #[error("the Vars do not match the layout: {0}")]
    Mismatch(String),
    /// The user's loss function failed; the weights were restored if they were perturbed.
    #[error("the loss function failed on {request:?}")]
    LossFn {
        request: Request,
        #[source]
        source: candle_core::Error,
    },
    /// The loss function answered with a tensor of the wrong shape or dtype for the request.
    #[error("the loss for {request:?} {detail}")]
    LossShape { request: Request, detail: String },
}

pub type Result<T> = std::result::Result<T, Error>;
