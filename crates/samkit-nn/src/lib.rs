//! samkit-nn: a thin tensor layer and just enough of a network stack to train the CIFAR
//! ResNet-18 (and an MLP, and the linear model of `samkit linreg`) with every optimizer of the
//! SAM family, and to measure what each variant costs per step.
//!
//! - [`tensor`]: shape, dtype and storage (CPU `Vec`; the CUDA backend adds device storage).
//! - [`backend`]: the operations (conv2d, batch norm, ReLU, residual add, average pooling,
//!   linear) with explicit backward passes, behind the [`Backend`] trait; [`cpu`] implements
//!   them with im2col + GEMM (Winograd F(2×2, 3×3) for 3×3 stride-1
//!   convolutions) and rayon. [`cuda`] with cuDNN, cuBLAS and
//!   samkit-kernels' `kernels/nn.cu`, on device arenas that samkit-cuda's `GpuOptimizer` steps.
//! - [`model`]: the [`Model`] trait a trainer drives: `forward`, `forward_backward` into a flat
//!   gradient laid out as `samkit_core::Layout`, `per_sample_grad_sq` for SSAM-F's Fisher, and
//!   buffers; [`resnet`] and [`mlp`] implement it.
//! - [`checkpoint`]: safetensors with PyTorch `state_dict` names, atomic writes.
//!
//! Parameters and gradients live in one flat arena (what `samkit_core::Optimizer` steps), so a
//! whole SAM step is a closure over the model:
//!
//! ```
//! use samkit_core::{BaseOptimizer, GradRequest, Optimizer, Rule, Sam, Sgd};
//! use samkit_nn::{mean_weights, BnMode, Model, ResNet18, ResNetConfig, Tensor};
//!
//! let mut model = ResNet18::cpu(ResNetConfig::new(10, 2)).unwrap();
//! let mut w = model.init_params(0);
//! let x = Tensor::zeros(&[2, 3, 8, 8]).unwrap();
//! let y = vec![1usize, 3];
//! let wts = mean_weights(2);
//! let base = BaseOptimizer::Sgd(Sgd { lr: 0.1, ..Sgd::default() });
//! let mut opt = Optimizer::new(model.layout().clone(), Rule::Sam(Sam::default()), base).unwrap();
//! let report = opt
//!     .step(&mut w[..], |req, w, g| match req {
//!         GradRequest::Batch(pass) => Ok(model
//!             .forward_backward(w, &x, (&y).into(), &wts, BnMode::for_pass(pass), g)?
//!             .eval()),
//!         other => unreachable!("{other:?}"),
//!     })
//!     .unwrap();
//! assert!(report.perturbed_loss.is_some());
//! ```
pub mod backend;
pub mod checkpoint;
pub mod cpu;
pub mod cuda;
pub mod distill;
pub mod error;
pub mod init;
pub mod mlp;
pub mod model;
pub mod resnet;
pub mod tensor;

pub use backend::{Activation, Backend, BnConfig, BnMode, Conv2d, Dims, ParamGrad};
pub use cpu::Cpu;
pub use cuda::Cuda;
pub use error::{Error, Result};
pub use mlp::Mlp;
pub use model::{
    mean_weights, BufferData, BufferKind, LossKind, Losses, Model, NamedBuffer, Targets,
};
pub use resnet::{ResNet18, ResNetConfig};
pub use tensor::{DType, Device, Storage, Tensor};
