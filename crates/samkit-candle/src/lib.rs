//! samkit-candle: the SAM family of [samkit](samkit_core) as a candle optimizer.
//!
//! [`CandleSam`] runs any samkit [`Rule`] (SAM, ASAM, FriendlySAM, SSAM-F/D, ImbSAM, GSAM,
//! LookSAM) with any [`BaseOptimizer`] over candle [`Var`](candle_core::Var)s, in place:
//!
//! - on the CPU, [`samkit_core::Optimizer`] works on the Vars' own `Vec<f32>` storage (reached
//!   through nested candle in-place ops, see [`cpu`](crate::cpu)); gradients are read where
//!   candle left them. No parameter or gradient is copied, except a gradient candle hands back
//!   non-contiguous (made contiguous first).
//! - on CUDA (feature `cuda`), `samkit_cuda::GpuOptimizer<f32>` works on the Vars' device
//!   buffers (`CudaSlice<f32>`) on candle's own stream.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{linear, loss, Module, VarBuilder, VarMap};
//! use samkit_candle::{CandleSam, ParamVars};
//! use samkit_core::{BaseOptimizer, Rule, Sam, Sgd};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let model = linear(4, 3, VarBuilder::from_varmap(&varmap, DType::F32, &dev).pp("fc"))?;
//! let vars = ParamVars::from_varmap(&varmap)?; // fc.bias (a bias for ASAM), fc.weight
//! let base = BaseOptimizer::Sgd(Sgd { lr: 0.05, momentum: 0.9, ..Sgd::default() });
//! let mut opt = CandleSam::new(vars, Rule::Sam(Sam { rho: 0.05, ..Sam::default() }), base)?;
//! let (x, y) = (Tensor::randn(0f32, 1., (8, 4), &dev)?, Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &dev)?);
//! let report = opt.step(|_request| loss::cross_entropy(&model.forward(&x)?, &y))?;
//! println!("loss {} then {:?} at the perturbed weights", report.loss, report.perturbed_loss);
//! # Ok(()) }
//! ```
pub mod backend;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
pub mod error;
mod nest;
pub mod optimizer;
pub mod vars;

pub use backend::Backend;
pub use error::{Error, Result};
pub use optimizer::{no_tail, CandleSam};
pub use vars::{ParamVar, ParamVars, VarGrads, BUFFER_SUFFIXES};

#[cfg(feature = "cuda")]
pub use samkit_cuda::GpuOptimizer;

pub use samkit_core::{
    BaseOptimizer, FirstOutcome, GradRequest, Outcome, ParamKind, Pass, Rule, SamOptimizer,
    StepReport,
};

impl CandleSam<samkit_core::Optimizer> {
    /// A CPU optimizer over `vars` (all on the CPU).
    pub fn new(vars: ParamVars, rule: Rule, base: BaseOptimizer) -> Result<Self> {
        let opt = samkit_core::Optimizer::new(vars.layout().clone(), rule, base)?;
        Self::with_optimizer(vars, opt)
    }
}
