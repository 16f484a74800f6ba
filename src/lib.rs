//! samkit: Sharpness-Aware Minimization and its descendants.
//!
//! This facade re-exports the workspace crates so that a trainer depends on one package:
//! [`core`] is the CPU reference (parameter layout, base optimizers, the SAM family, masks).
pub use samkit_core as core;
/// The network stack: tensors, the CPU (and CUDA) backends, ResNet-18, MLP, checkpoints.
pub use samkit_nn as nn;
pub use samkit_core::*;
