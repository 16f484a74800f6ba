//! Zero-copy access to the f32 storage of CPU tensors.
//!
//! candle gives no public `&mut` to a tensor's storage, but an [`InplaceOp1`] receives one
//! (under the tensor's write lock) for the duration of its `cpu_fwd`. To hand the optimizer every
//! Var at once, the ops are nested: the op of Var 0 runs the op of Var 1 inside its `cpu_fwd`,
//! and so on, and the innermost one calls the optimizer with all the slices. The optimizer thus
//! writes the Vars' own memory, with no copy; the locks are released before candle runs again.
//! Gradients are read in place through `storage_and_layout` (read locks).
use std::cell::RefCell;

use candle_core::{CpuStorage, InplaceOp1, Layout, Storage, Tensor, Var};

use crate::error::{Error, Result};

/// What runs with every Var's data in hand.
type WithSlices<'f, R> = dyn FnMut(&mut [&mut [f32]]) -> R + 'f;

/// Runs `f` with a mutable slice of each Var's f32 data, in order.
pub(crate) fn with_vars_mut<R>(vars: &[&Var], f: &mut WithSlices<'_, R>) -> Result<R> {
    let mut out = None;
    nest(vars, Vec::with_capacity(vars.len()), f, &mut out)?;
    // `nest` calls `f` exactly once when every op ran.
    out.ok_or_else(|| Error::Mismatch("a Var's in-place access did not run".into()))
}

/// One level of the nesting: holds what the next levels need while candle holds the lock.
struct Nest<'v, 'a, 'f, R> {
    rest: &'v [&'v Var],
    acc: RefCell<Option<Vec<&'a mut [f32]>>>,
    f: RefCell<&'f mut WithSlices<'f, R>>,
    out: RefCell<&'f mut Option<R>>,
}

fn nest<R>(
    vars: &[&Var],
    mut acc: Vec<&mut [f32]>,
    f: &mut WithSlices<'_, R>,
    out: &mut Option<R>,
) -> candle_core::Result<()> {
    let Some((first, rest)) = vars.split_first() else {
        *out = Some(f(&mut acc));
        return Ok(());
    };
    let op = Nest {
        rest,
        acc: RefCell::new(Some(acc)),
        f: RefCell::new(f),
        out: RefCell::new(out),
    };
    first.inplace_op1(&op)
}

impl<R> InplaceOp1 for Nest<'_, '_, '_, R> {
    fn name(&self) -> &'static str {
        "samkit-optimizer-step"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("samkit-candle: a Var is not f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("samkit-candle: a Var is not contiguous")
        };
        let slice = &mut data[start..end];
        let Some(acc) = self.acc.borrow_mut().take() else {
            candle_core::bail!("samkit-candle: in-place op ran twice")
        };
        // The outer slices live longer than this one: the vector narrows to this lifetime.
        let mut acc: Vec<&mut [f32]> = acc;
        acc.push(slice);
        let mut f = self.f.borrow_mut();
        let mut out = self.out.borrow_mut();
        nest(self.rest, acc, &mut **f, &mut **out)
    }
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
