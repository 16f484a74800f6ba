//! The samkit optimizers [`CandleSam`](crate::CandleSam) drives, each speaking samkit's step
//! protocol ([`SamOptimizer`]) on candle Vars ([`ParamVars`]) and their gradients
//! ([`VarGrads`]).
//!
//! Every call reaches the Vars' memory only for its own duration: candle runs the loss function
//! between the calls, and it must find the Vars unlocked.
use samkit_core::SamOptimizer;

use crate::cpu::{with_vars_mut, ReadGuards};
use crate::error::{Error, Result};
use crate::vars::{ParamVars, VarGrads};

mod sealed {
    pub trait Sealed {}
    impl Sealed for samkit_core::Optimizer {}
    #[cfg(feature = "cuda")]
    impl Sealed for samkit_cuda::GpuOptimizer<f32> {}
}

/// A samkit optimizer that steps candle Vars in place: [`samkit_core::Optimizer`] (CPU Vars)
/// and, with the `cuda` feature, `samkit_cuda::GpuOptimizer<f32>` (CUDA Vars).
pub trait Backend: sealed::Sealed + SamOptimizer<ParamVars, VarGrads, Error = Error> {
    /// Refuses Vars on a device (or CUDA stream) this optimizer does not work on.
    fn check_device(&self, vars: &ParamVars) -> Result<()>;
}

impl Backend for samkit_core::Optimizer {
    fn check_device(&self, vars: &ParamVars) -> Result<()> {
        if !vars.device().is_cpu() {
            return Err(Error::Mismatch(format!(
                "the Vars are on {:?}; samkit_core::Optimizer steps CPU Vars (the `cuda` feature \
                 gives GpuOptimizer for CUDA Vars)",
                vars.device().location()
            )));
        }
        Ok(())
    }
}

/// `impl SamOptimizer<ParamVars, VarGrads> for $opt`: each call delegates to `$opt`'s own
/// protocol on `[$item]` weights and `[$grad]` gradients, both backends alike: the gradients are
/// read under read locks through `$grads` (a `fn(&ReadGuards) -> Result<Vec<$grad>>`), the Vars
/// are reached in place through `$with_mut` (a `fn(&[&Var], &mut dyn FnMut(&mut [$item]) -> R)
/// -> Result<R>`), and the shapes are checked against the Vars first.
macro_rules! sam_on_vars {
    ($opt:ty, $item:ty, $grad:ty, $grads:path, $with_mut:path) => {
        impl samkit_core::SamOptimizer<$crate::vars::ParamVars, $crate::vars::VarGrads> for $opt {
            type Error = $crate::error::Error;

            fn layout(&self) -> &samkit_core::Layout {
                <Self as samkit_core::SamOptimizer<[$item], [$grad]>>::layout(self)
            }

            fn rule(&self) -> &samkit_core::Rule {
                <Self as samkit_core::SamOptimizer<[$item], [$grad]>>::rule(self)
            }

            fn base(&self) -> &samkit_core::BaseOptimizer {
                <Self as samkit_core::SamOptimizer<[$item], [$grad]>>::base(self)
            }

            fn lr(&self) -> f32 {
                <Self as samkit_core::SamOptimizer<[$item], [$grad]>>::lr(self)
            }

            fn set_lr(&mut self, lr: f32) -> $crate::error::Result<()> {
                Ok(<Self as samkit_core::SamOptimizer<[$item], [$grad]>>::set_lr(self, lr)?)
            }

            fn set_rho(&mut self, rho: f32) -> $crate::error::Result<()> {
                Ok(<Self as samkit_core::SamOptimizer<[$item], [$grad]>>::set_rho(self, rho)?)
            }

            fn is_perturbed(&self) -> bool {
                <Self as samkit_core::SamOptimizer<[$item], [$grad]>>::is_perturbed(self)
            }

            fn needs_fisher(&mut self) -> $crate::error::Result<Option<usize>> {
                Ok(<Self as samkit_core::SamOptimizer<[$item], [$grad]>>::needs_fisher(self)?)
            }

            fn needs_head_tail(&self) -> bool {
                <Self as samkit_core::SamOptimizer<[$item], [$grad]>>::needs_head_tail(self)
            }

            fn set_fisher(&mut self, fisher: &$crate::vars::VarGrads) -> $crate::error::Result<()> {
                let guards = $crate::cpu::ReadGuards::new(fisher.tensors());
                let f = $grads(&guards)?;
                Ok(
                    <Self as samkit_core::SamOptimizer<[$item], [$grad]>>::set_fisher(
                        self,
                        &f[..],
                    )?,
                )
            }

            fn first_step(
                &mut self,
                w: &mut $crate::vars::ParamVars,
                g: &$crate::vars::VarGrads,
            ) -> $crate::error::Result<samkit_core::FirstOutcome> {
                w.check_grads("gradient", g)?;
                let guards = $crate::cpu::ReadGuards::new(g.tensors());
                let g = $grads(&guards)?;
                let vars: Vec<_> = w.vars().collect();
                Ok($with_mut(&vars, &mut |w| {
                    <Self as samkit_core::SamOptimizer<[$item], [$grad]>>::first_step(
                        self,
                        w,
                        &g[..],
                    )
                })??)
            }

            fn first_step_split(
                &mut self,
                w: &mut $crate::vars::ParamVars,
                head: &$crate::vars::VarGrads,
                tail: Option<&$crate::vars::VarGrads>,
            ) -> $crate::error::Result<samkit_core::FirstOutcome> {
                w.check_grads("head gradient", head)?;
                if let Some(t) = tail {
                    w.check_grads("tail gradient", t)?;
                }
                let hg = $crate::cpu::ReadGuards::new(head.tensors());
                let h = $grads(&hg)?;
                let tg = tail.map(|t| $crate::cpu::ReadGuards::new(t.tensors()));
                let t = tg.as_ref().map(|g| $grads(g)).transpose()?;
                let vars: Vec<_> = w.vars().collect();
                Ok($with_mut(&vars, &mut |w| {
                    <Self as samkit_core::SamOptimizer<[$item], [$grad]>>::first_step_split(
                        self,
                        w,
                        &h[..],
                        t.as_deref(),
                    )
                })??)
            }

            fn second_step(
                &mut self,
                w: &mut $crate::vars::ParamVars,
                g2: &$crate::vars::VarGrads,
            ) -> $crate::error::Result<samkit_core::Outcome> {
                w.check_grads("perturbed gradient", g2)?;
                let guards = $crate::cpu::ReadGuards::new(g2.tensors());
                let g = $grads(&guards)?;
                let vars: Vec<_> = w.vars().collect();
                Ok($with_mut(&vars, &mut |w| {
                    <Self as samkit_core::SamOptimizer<[$item], [$grad]>>::second_step(
                        self,
                        w,
                        &g[..],
                    )
                })??)
            }

            fn abort(&mut self, w: &mut $crate::vars::ParamVars) -> $crate::error::Result<()> {
                let vars: Vec<_> = w.vars().collect();
                Ok($with_mut(&vars, &mut |w| {
                    <Self as samkit_core::SamOptimizer<[$item], [$grad]>>::abort(self, w)
                })??)
            }

            fn status(&mut self) -> $crate::error::Result<samkit_core::Status> {
                Ok(<Self as samkit_core::SamOptimizer<[$item], [$grad]>>::status(self)?)
            }

            fn take_mask_time(&mut self) -> $crate::error::Result<Option<std::time::Duration>> {
                Ok(<Self as samkit_core::SamOptimizer<[$item], [$grad]>>::take_mask_time(self)?)
            }
        }
    };
}
// The CUDA path (crate::cuda) uses it for GpuOptimizer.
#[cfg(feature = "cuda")]
pub(crate) use sam_on_vars;

// The CPU: samkit-core on the Vars' own `Vec<f32>` storage (through nested in-place ops, see
// `crate::cpu`); gradients are read where candle left them. No copy.
sam_on_vars!(
    samkit_core::Optimizer,
    &mut [f32],
    &[f32],
    ReadGuards::slices,
    with_vars_mut
);
