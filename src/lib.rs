//! samkit: Sharpness-Aware Minimization and its descendants.
//!
//! This facade re-exports the workspace crates so that a trainer depends on one package:
//! [`core`] is the CPU reference (parameter layout, base optimizers, the SAM family, masks).
pub use samkit_core as core;
pub use samkit_core::*;
