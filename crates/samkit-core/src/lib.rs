//! samkit-core: the CPU reference of the SAM family.
//!
//! - [`layout`]: the flat parameter arena and its named segments; [`params`]: flat or list
//!   buffers.
//! - [`base`]: SGD, Adam, AdamW, RMSprop with `torch.optim` semantics; [`schedule`]: learning
//!   rates.
//! - [`rules`] and [`optimizer`]: SAM, ASAM, FriendlySAM, SSAM-F/D, ImbSAM, GSAM, LookSAM behind
//!   one step protocol, with state saved by [`state`].
//! - [`protocol`]: that protocol as a trait, [`SamOptimizer`], shared with the CUDA optimizer,
//!   and [`drive_step`], the closure form of a step for any backend.
//! - [`plan`]: what a rule's step does, as plain data both backends interpret.
//! - [`passes`]: the fused streaming passes (the CPU twins of the CUDA kernels); [`select`],
//!   [`bitset`], [`philox`], [`sparse`]: masks.
//! - [`stream`]: non-temporal stores and the fastest copy (the streaming passes' byte floor).
//! - [`loss`]: the label-smoothed cross-entropy of ALGORITHMS.md.
//!
//! Every reduction is deterministic: same bits on one thread or many.
pub mod base;
pub mod bitset;
pub mod chunks;
pub mod error;
pub mod layout;
pub mod loss;
pub mod optimizer;
pub mod params;
pub mod passes;
pub mod philox;
pub mod plan;
pub mod protocol;
pub mod rules;
pub mod schedule;
pub mod select;
pub mod sparse;
pub mod state;
pub mod stream;

pub use base::{Adam, BaseOptimizer, RmsProp, Sgd};
pub use bitset::Bitset;
pub use error::{Error, Result};
pub use layout::{Layout, ParamKind, Segment};
pub use optimizer::{Eval, FirstOutcome, GradRequest, Optimizer, Outcome, Pass, StepReport};
pub use params::{Params, ParamsMut};
pub use protocol::{drive_step, NoHooks, SamOptimizer, Status, StepHooks, StepPhase};
pub use rules::{
    Asam, DropRate, FriendlySam, Gsam, ImbSam, LookSam, MaskKind, MaskSchedule, Rule, Sam, Ssam,
    SsamNorm,
};
pub use schedule::{LrSchedule, Schedule};
