//! The CUDA path: `samkit_cuda::GpuOptimizer<f32>` on the Vars' own device buffers, on candle's
//! stream, with no copy.
//!
//! candle keeps each CUDA Var in a `CudaSlice<f32>` of cudarc 0.19, the cudarc samkit-cuda
//! launches through. The Vars are reached as on the CPU (nested in-place ops, see
//! [`crate::nest`], this time through `cuda_fwd`), each as a `CudaViewMut` of its elements;
//! gradients are read as `CudaView`s under read locks. The optimizer is built on candle's own
//! context and stream ([`samkit_cuda::Device::with_stream`]), so its kernels are ordered after
//! the backward pass that produced the gradients and before the next forward pass, with no
//! synchronisation.
use std::sync::Arc;
use std::time::Duration;

use candle_core::{CudaStorage, Layout as TensorLayout, Storage, Var};
use cudarc::driver::{CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};
use samkit_core::{BaseOptimizer, FirstOutcome, Layout, Outcome, Rule, SamOptimizer, Status};
use samkit_cuda::buffers::Guards;
use samkit_cuda::{DeviceParams, DeviceParamsMut, GpuOptimizer};

use crate::backend::Backend;
use crate::cpu::ReadGuards;
use crate::error::{Error, Result};
use crate::nest::{with_each_mut, Access};
use crate::vars::{ParamVars, VarGrads};
use crate::CandleSam;

impl CandleSam<GpuOptimizer<f32>> {
    /// A CUDA optimizer over `vars` (all on one CUDA device), on candle's context and stream.
    pub fn new_cuda(vars: ParamVars, rule: Rule, base: BaseOptimizer) -> Result<Self> {
        let stream = candle_stream(&vars)?;
        let dev = samkit_cuda::Device::with_stream(stream.context().clone(), stream)?;
        let opt = GpuOptimizer::<f32>::new(&dev, vars.layout().clone(), rule, base)?;
        Self::with_optimizer(vars, opt)
    }
}

/// The stream candle runs the Vars' device on.
fn candle_stream(vars: &ParamVars) -> Result<Arc<CudaStream>> {
    match vars.device() {
        candle_core::Device::Cuda(d) => Ok(d.cuda_stream()),
        other => Err(Error::Mismatch(format!(
            "the Vars are on {:?}; GpuOptimizer steps CUDA Vars",
            other.location()
        ))),
    }
}

impl Backend for GpuOptimizer<f32> {
    fn check_device(&self, vars: &ParamVars) -> Result<()> {
        let theirs = candle_stream(vars)?;
        // One stream orders the optimizer's kernels with candle's passes; another one would race
        // with them (CandleSam::new_cuda builds the optimizer on candle's stream).
        if theirs.cu_stream() != self.device().stream().cu_stream() {
            return Err(Error::Mismatch(
                "the GpuOptimizer runs on another stream than the Vars' candle device: build it \
                 on candle's stream (CandleSam::new_cuda)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The Vars' device memory: one view per Var, in layout order.
pub(crate) struct VarViewsMut<'a>(Vec<CudaViewMut<'a, f32>>);

/// Gradients on the device: one view per Var, in layout order.
pub(crate) struct VarViews<'a>(Vec<CudaView<'a, f32>>);

fn check_lens(layout: &Layout, what: &'static str, lens: &[usize]) -> samkit_cuda::Result<()> {
    let ok = lens.len() == layout.segments().len()
        && lens.iter().zip(layout.segments()).all(|(&n, s)| n == s.len);
    if !ok {
        return Err(samkit_cuda::Error::Buffer {
            what,
            detail: format!(
                "views of {lens:?} elements, the layout has {:?}",
                layout.segments().iter().map(|s| s.len).collect::<Vec<_>>()
            ),
        });
    }
    Ok(())
}

impl DeviceParams<f32> for VarViewsMut<'_> {
    fn seg_addrs<'a>(
        &'a self,
        layout: &Layout,
        stream: &'a CudaStream,
        what: &'static str,
        out: &mut Vec<u64>,
        guards: &mut Guards<'a>,
    ) -> samkit_cuda::Result<()> {
        let lens: Vec<usize> = self.0.iter().map(|v| v.len()).collect();
        check_lens(layout, what, &lens)?;
        for v in &self.0 {
            let (p, g) = v.device_ptr(stream);
            out.push(p);
            guards.push(g);
        }
        Ok(())
    }
}

impl DeviceParamsMut<f32> for VarViewsMut<'_> {
    fn seg_addrs_mut<'a>(
        &'a mut self,
        layout: &Layout,
        stream: &'a CudaStream,
        what: &'static str,
        out: &mut Vec<u64>,
        guards: &mut Guards<'a>,
    ) -> samkit_cuda::Result<()> {
        let lens: Vec<usize> = self.0.iter().map(|v| v.len()).collect();
        check_lens(layout, what, &lens)?;
        for v in self.0.iter_mut() {
            let (p, g) = v.device_ptr_mut(stream);
            out.push(p);
            guards.push(g);
        }
        Ok(())
    }
}

impl DeviceParams<f32> for VarViews<'_> {
    fn seg_addrs<'a>(
        &'a self,
        layout: &Layout,
        stream: &'a CudaStream,
        what: &'static str,
        out: &mut Vec<u64>,
        guards: &mut Guards<'a>,
    ) -> samkit_cuda::Result<()> {
        let lens: Vec<usize> = self.0.iter().map(|v| v.len()).collect();
        check_lens(layout, what, &lens)?;
        for v in &self.0 {
            let (p, g) = v.device_ptr(stream);
            out.push(p);
            guards.push(g);
        }
        Ok(())
    }
}

/// The device views of read-locked f32 CUDA tensors.
fn views<'g>(guards: &'g ReadGuards<'_>) -> Result<VarViews<'g>> {
    let mut out = Vec::new();
    for (storage, layout) in guards.storages() {
        let Storage::Cuda(cs) = storage else {
            return Err(Error::Mismatch(format!(
                "a gradient is on {:?}, expected the Vars' CUDA device",
                storage.device().location()
            )));
        };
        let (s, e) = layout
            .contiguous_offsets()
            .ok_or_else(|| Error::Mismatch("a gradient is not contiguous".into()))?;
        let slice = cs.as_cuda_slice::<f32>()?;
        let view = slice
            .try_slice(s..e)
            .ok_or_else(|| Error::Mismatch("a gradient's range is outside its buffer".into()))?;
        out.push(view);
    }
    Ok(VarViews(out))
}

/// CUDA's access: a view of a Var's own device elements.
struct CudaF32;

impl Access for CudaF32 {
    const NAME: &'static str = "CUDA";
    type Item<'a> = CudaViewMut<'a, f32>;

    fn cuda<'a>(
        storage: &'a mut CudaStorage,
        layout: &TensorLayout,
    ) -> candle_core::Result<CudaViewMut<'a, f32>> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("samkit-candle: a Var is not contiguous")
        };
        let slice = storage.as_cuda_slice_mut::<f32>()?;
        let Some(view) = slice.try_slice_mut(start..end) else {
            candle_core::bail!("samkit-candle: a Var's range is outside its buffer")
        };
        Ok(view)
    }

    fn narrow<'long: 'short, 'short>(
        items: Vec<CudaViewMut<'long, f32>>,
    ) -> Vec<CudaViewMut<'short, f32>> {
        items
    }
}

/// What runs with every Var's device memory in hand.
type WithViews<'f, R> = dyn FnMut(&mut VarViewsMut<'_>) -> R + 'f;

/// Runs `f` with a mutable view of each Var's device memory, in order (see [`crate::nest`]).
fn with_views_mut<R>(vars: &[&Var], f: &mut WithViews<'_, R>) -> Result<R> {
    with_each_mut::<CudaF32, R>(vars, &mut |views| f(&mut VarViewsMut(views)))
}

/// The device protocol on the Vars' views.
type DevW<'a> = VarViewsMut<'a>;
type DevG<'a> = VarViews<'a>;

/// CUDA: `GpuOptimizer` on the Vars' device memory and candle's gradients, in place.
impl SamOptimizer<ParamVars, VarGrads> for GpuOptimizer<f32> {
    type Error = Error;

    fn layout(&self) -> &Layout {
        <Self as SamOptimizer<DevW, DevG>>::layout(self)
    }

    fn rule(&self) -> &Rule {
        <Self as SamOptimizer<DevW, DevG>>::rule(self)
    }

    fn base(&self) -> &BaseOptimizer {
        <Self as SamOptimizer<DevW, DevG>>::base(self)
    }

    fn lr(&self) -> f32 {
        <Self as SamOptimizer<DevW, DevG>>::lr(self)
    }

    fn set_lr(&mut self, lr: f32) -> Result<()> {
        Ok(<Self as SamOptimizer<DevW, DevG>>::set_lr(self, lr)?)
    }

    fn set_rho(&mut self, rho: f32) -> Result<()> {
        Ok(<Self as SamOptimizer<DevW, DevG>>::set_rho(self, rho)?)
    }

    fn is_perturbed(&self) -> bool {
        <Self as SamOptimizer<DevW, DevG>>::is_perturbed(self)
    }

    fn needs_fisher(&mut self) -> Result<Option<usize>> {
        Ok(<Self as SamOptimizer<DevW, DevG>>::needs_fisher(self)?)
    }

    fn needs_head_tail(&self) -> bool {
        <Self as SamOptimizer<DevW, DevG>>::needs_head_tail(self)
    }

    fn set_fisher(&mut self, fisher: &VarGrads) -> Result<()> {
        let guards = ReadGuards::new(fisher.tensors());
        let f = views(&guards)?;
        Ok(<Self as SamOptimizer<DevW, DevG>>::set_fisher(self, &f)?)
    }

    fn first_step(&mut self, w: &mut ParamVars, g: &VarGrads) -> Result<FirstOutcome> {
        w.check_grads("gradient", g)?;
        let guards = ReadGuards::new(g.tensors());
        let g = views(&guards)?;
        let vars: Vec<_> = w.vars().collect();
        Ok(with_views_mut(&vars, &mut |w| {
            <Self as SamOptimizer<DevW, DevG>>::first_step(self, w, &g)
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
        let h = views(&hg)?;
        let tg = tail.map(|t| ReadGuards::new(t.tensors()));
        let t = tg.as_ref().map(|g| views(g)).transpose()?;
        let vars: Vec<_> = w.vars().collect();
        Ok(with_views_mut(&vars, &mut |w| {
            <Self as SamOptimizer<DevW, DevG>>::first_step_split(self, w, &h, t.as_ref())
        })??)
    }

    fn second_step(&mut self, w: &mut ParamVars, g2: &VarGrads) -> Result<Outcome> {
        w.check_grads("perturbed gradient", g2)?;
        let guards = ReadGuards::new(g2.tensors());
        let g = views(&guards)?;
        let vars: Vec<_> = w.vars().collect();
        Ok(with_views_mut(&vars, &mut |w| {
            <Self as SamOptimizer<DevW, DevG>>::second_step(self, w, &g)
        })??)
    }

    fn abort(&mut self, w: &mut ParamVars) -> Result<()> {
        let vars: Vec<_> = w.vars().collect();
        Ok(with_views_mut(&vars, &mut |w| {
            <Self as SamOptimizer<DevW, DevG>>::abort(self, w)
        })??)
    }

    fn status(&mut self) -> Result<Status> {
        Ok(<Self as SamOptimizer<DevW, DevG>>::status(self)?)
    }

    fn take_mask_time(&mut self) -> Result<Option<Duration>> {
        Ok(<Self as SamOptimizer<DevW, DevG>>::take_mask_time(self)?)
    }
}
