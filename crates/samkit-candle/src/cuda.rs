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

use candle_core::{CudaStorage, Layout as TensorLayout, Storage, Var};
use cudarc::driver::{CudaStream, CudaView, CudaViewMut};
use samkit_core::{BaseOptimizer, Rule};
use samkit_cuda::GpuOptimizer;

use crate::backend::{sam_on_vars, Backend};
use crate::cpu::ReadGuards;
use crate::error::{Error, Result};
use crate::nest::{with_each_mut, Access};
use crate::vars::ParamVars;
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

/// The device views of read-locked f32 CUDA tensors, one per tensor in order (samkit-cuda's
/// `DeviceParams` of a list of views checks them against the layout).
fn views<'g>(guards: &'g ReadGuards<'_>) -> Result<Vec<CudaView<'g, f32>>> {
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
    Ok(out)
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
type WithViews<'f, R> = dyn FnMut(&mut [CudaViewMut<'_, f32>]) -> R + 'f;

/// Runs `f` with a mutable view of each Var's device memory, in order (see [`crate::nest`]).
fn with_views_mut<R>(vars: &[&Var], f: &mut WithViews<'_, R>) -> Result<R> {
    with_each_mut::<CudaF32, R>(vars, &mut |mut views| f(&mut views))
}

// CUDA: `GpuOptimizer` on the Vars' device memory and candle's gradients, in place.
sam_on_vars!(
    GpuOptimizer<f32>,
    CudaViewMut<f32>,
    CudaView<f32>,
    views,
    with_views_mut
);
