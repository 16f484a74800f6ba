//! The samkit optimizers [`CandleSam`](crate::CandleSam) drives, each speaking samkit's step
//! protocol ([`SamOptimizer`]) on candle Vars ([`ParamVars`]) and their gradients
//! ([`VarGrads`]).
//!
//! Every call reaches the Vars' memory only for its own duration: candle runs the loss function
//! between the calls, and it must find the Vars unlocked.
use std::time::Duration;

use samkit_core::{BaseOptimizer, FirstOutcome, Layout, Outcome, Rule, SamOptimizer, Status};

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

/// The host protocol on the Vars' slices.
type HostW<'a> = [&'a mut [f32]];
type HostG<'a> = [&'a [f32]];

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

/// The CPU: samkit-core on the Vars' own `Vec<f32>` storage (through nested in-place ops, see
/// [`crate::cpu`]); gradients are read where candle left them. No copy.
impl SamOptimizer<ParamVars, VarGrads> for samkit_core::Optimizer {
    type Error = Error;

    fn layout(&self) -> &Layout {
        <Self as SamOptimizer<HostW, HostG>>::layout(self)
    }

    fn rule(&self) -> &Rule {
        <Self as SamOptimizer<HostW, HostG>>::rule(self)
    }

    fn base(&self) -> &BaseOptimizer {
        <Self as SamOptimizer<HostW, HostG>>::base(self)
    }

    fn lr(&self) -> f32 {
        <Self as SamOptimizer<HostW, HostG>>::lr(self)
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        Ok(<Self as SamOptimizer<HostW, HostG>>::set_lr(self, lr)?)
    }

    fn set_rho(&mut self, rho: f32) -> Result<()> {
        Ok(<Self as SamOptimizer<HostW, HostG>>::set_rho(self, rho)?)
    }

    fn is_perturbed(&self) -> bool {
        <Self as SamOptimizer<HostW, HostG>>::is_perturbed(self)
    }

    fn needs_fisher(&mut self) -> Result<Option<usize>> {
        Ok(<Self as SamOptimizer<HostW, HostG>>::needs_fisher(self)?)
    }

    fn needs_head_tail(&self) -> bool {
        <Self as SamOptimizer<HostW, HostG>>::needs_head_tail(self)
    }

    fn set_fisher(&mut self, fisher: &VarGrads) -> Result<()> {
        let guards = ReadGuards::new(fisher.tensors());
        let f = guards.slices()?;
        Ok(<Self as SamOptimizer<HostW, HostG>>::set_fisher(
            self,
            &f[..],
        )?)
    }

    fn first_step(&mut self, w: &mut ParamVars, g: &VarGrads) -> Result<FirstOutcome> {
        w.check_grads("gradient", g)?;
        let guards = ReadGuards::new(g.tensors());
        let g = guards.slices()?;
        let vars: Vec<_> = w.vars().collect();
        Ok(with_vars_mut(&vars, &mut |w| {
            <Self as SamOptimizer<HostW, HostG>>::first_step(self, w, &g[..])
        })??)
    }

    fn first_step_split(
        &mut self,
        w: &mut ParamVars,
        head: &VarGrads,
        tail: Option<&VarGrads>,
    ) -> Result<FirstOutcome> {
        w.check_grads("head gradient", head)?;
        if let Some(t) = tail {
            w.check_grads("tail gradient", t)?;
        }
        let hg = ReadGuards::new(head.tensors());
        let h = hg.slices()?;
        let tg = tail.map(|t| ReadGuards::new(t.tensors()));
        let t = tg.as_ref().map(|g| g.slices()).transpose()?;
        let vars: Vec<_> = w.vars().collect();
        Ok(with_vars_mut(&vars, &mut |w| {
            <Self as SamOptimizer<HostW, HostG>>::first_step_split(self, w, &h[..], t.as_deref())
        })??)
    }

    fn second_step(&mut self, w: &mut ParamVars, g2: &VarGrads) -> Result<Outcome> {
        w.check_grads("perturbed gradient", g2)?;
        let guards = ReadGuards::new(g2.tensors());
        let g = guards.slices()?;
        let vars: Vec<_> = w.vars().collect();
        Ok(with_vars_mut(&vars, &mut |w| {
            <Self as SamOptimizer<HostW, HostG>>::second_step(self, w, &g[..])
        })??)
    }

    fn abort(&mut self, w: &mut ParamVars) -> Result<()> {
        let vars: Vec<_> = w.vars().collect();
        Ok(with_vars_mut(&vars, &mut |w| {
            <Self as SamOptimizer<HostW, HostG>>::abort(self, w)
        })??)
    }

    fn status(&mut self) -> Result<Status> {
        Ok(<Self as SamOptimizer<HostW, HostG>>::status(self)?)
    }

    fn take_mask_time(&mut self) -> Result<Option<Duration>> {
        Ok(<Self as SamOptimizer<HostW, HostG>>::take_mask_time(self)?)
    }
}
