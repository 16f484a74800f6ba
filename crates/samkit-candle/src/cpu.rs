//! Zero-copy access to the f32 storage of CPU tensors.
//!
//! The Vars are written in place through nested candle in-place ops (see [`crate::nest`]), each
//! as a `&mut [f32]` of its elements. Gradients are read in place through `storage_and_layout`
//! (read locks).
use candle_core::{CpuStorage, Layout, Storage, Tensor, Var};

use crate::error::{Error, Result};
use crate::nest::{with_each_mut, Access};

/// The CPU's access: a Var's own f32 elements.
struct CpuF32;

impl Access for CpuF32 {
    const NAME: &'static str = "CPU";
    type Item<'a> = &'a mut [f32];

    fn cpu<'a>(storage: &'a mut CpuStorage, layout: &Layout) -> candle_core::Result<&'a mut [f32]> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("samkit-candle: a Var is not f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("samkit-candle: a Var is not contiguous")
        };
        Ok(&mut data[start..end])
    }

    fn narrow<'long: 'short, 'short>(items: Vec<&'long mut [f32]>) -> Vec<&'short mut [f32]> {
        items
    }
}

/// What runs with every Var's data in hand.
type WithSlices<'f, R> = dyn FnMut(&mut [&mut [f32]]) -> R + 'f;

/// Runs `f` with a mutable slice of each Var's f32 data, in order.
pub(crate) fn with_vars_mut<R>(vars: &[&Var], f: &mut WithSlices<'_, R>) -> Result<R> {
    with_each_mut::<CpuF32, R>(vars, &mut |mut slices| f(&mut slices))
}

/// Read locks on CPU f32 tensors, for slices of their data.
pub(crate) struct ReadGuards<'t> {
    guards: Vec<(candle_core::StorageRef<'t>, &'t Layout)>,
}

impl<'t> ReadGuards<'t> {
    pub fn new(tensors: &'t [Tensor]) -> Self {
        ReadGuards {
            guards: tensors.iter().map(|t| t.storage_and_layout()).collect(),
        }
    }

    /// Each tensor's storage and layout, for a backend that reads them its own way.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn storages(&self) -> impl Iterator<Item = (&Storage, &Layout)> {
        self.guards.iter().map(|(g, l)| (&**g, *l))
    }

    /// The data of each tensor; an error for a tensor that is not contiguous f32 on the CPU.
    pub fn slices(&self) -> Result<Vec<&[f32]>> {
        self.guards
            .iter()
            .map(|(g, l)| {
                let (s, e) = l
                    .contiguous_offsets()
                    .ok_or_else(|| Error::Mismatch("a gradient is not contiguous".into()))?;
                match &**g {
                    Storage::Cpu(CpuStorage::F32(v)) => Ok(&v[s..e]),
                    other => Err(Error::Mismatch(format!(
                        "a gradient is {:?} on {:?}, expected f32 on the CPU",
                        other.dtype(),
                        other.device().location()
                    ))),
                }
            })
            .collect()
    }
}
