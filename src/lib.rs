//! samkit: Sharpness-Aware Minimization and its descendants.
//!
//! This facade re-exports the workspace crates so that a trainer depends on one package:
//! - [`core`]: the CPU reference (parameter layout, base optimizers, the SAM family, masks,
//!   RNG); its items are also re-exported at the top level.
//! - [`cuda`]: the CUDA kernels and the GPU optimizer (builds without CUDA; a device is opened
//!   at run time, and its absence is an error, never a panic).
//! - [`nn`]: tensors, the CPU backend, ResNet-18, MLP, checkpoints with PyTorch names.
//! - [`data`]: CIFAR loaders, synthetic data, long-tail and label-noise transforms, batches.
pub use samkit_core as core;
pub use samkit_core::*;
pub use samkit_cuda as cuda;
pub use samkit_data as data;
pub use samkit_nn as nn;
