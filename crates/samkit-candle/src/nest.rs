//! Every Var's storage at once, through nested candle in-place ops (both backends).
//!
//! candle gives no public `&mut` to a tensor's storage, but an [`InplaceOp1`] receives one
//! (under the tensor's write lock) for the duration of its `cpu_fwd` / `cuda_fwd`. To hand the
//! optimizer every Var at once, the ops are nested: the op of Var 0 runs the op of Var 1 inside
//! its forward, and so on, and the innermost one calls the optimizer with all the Vars' data. The
//! optimizer thus writes the Vars' own memory, with no copy; the locks are released before candle
//! runs again. What a backend takes out of a storage (a `&mut [f32]` on the CPU, a
//! `CudaViewMut<f32>` on CUDA) is its [`Access`].
use std::cell::RefCell;

use candle_core::{CpuStorage, CudaStorage, InplaceOp1, Layout, Var};

use crate::error::{Error, Result};

/// How one backend reaches the f32 data of a Var inside an in-place op. A storage of the other
/// backend is refused with an error naming the backend. Implemented by marker types (hence
/// `'static`).
pub(crate) trait Access: 'static {
    /// The backend, for messages.
    const NAME: &'static str;

    /// The data of one Var, borrowed from its storage for `'a`.
    type Item<'a>;

    /// The data of a Var on the CPU.
    fn cpu<'a>(
        _storage: &'a mut CpuStorage,
        _layout: &Layout,
    ) -> candle_core::Result<Self::Item<'a>> {
        candle_core::bail!(
            "samkit-candle: a Var of the {} optimizer is on the CPU",
            Self::NAME
        )
    }

    /// The data of a Var on a CUDA device (candle's `CudaStorage` is a placeholder type
    /// without candle's `cuda` feature, so this compiles either way).
    fn cuda<'a>(
        _storage: &'a mut CudaStorage,
        _layout: &Layout,
    ) -> candle_core::Result<Self::Item<'a>> {
        candle_core::bail!(
            "samkit-candle: a Var of the {} optimizer is on CUDA",
            Self::NAME
        )
    }

    /// The items of the outer levels, as borrows as short as the current level's. Each
    /// implementation is the identity (its item is covariant in `'a`), which a generic bound
    /// cannot state.
    fn narrow<'long: 'short, 'short>(items: Vec<Self::Item<'long>>) -> Vec<Self::Item<'short>>;
}

/// What runs with every Var's data in hand, in order.
pub(crate) type WithItems<'f, A, R> = dyn for<'x> FnMut(Vec<<A as Access>::Item<'x>>) -> R + 'f;

/// Runs `f` once with the data of each Var of `vars`, in order, reached through `A`.
pub(crate) fn with_each_mut<A: Access, R>(vars: &[&Var], f: &mut WithItems<'_, A, R>) -> Result<R> {
    let mut out = None;
    nest::<A, R>(vars, Vec::with_capacity(vars.len()), f, &mut out)?;
    // `nest` calls `f` exactly once when every op ran.
    out.ok_or_else(|| Error::Mismatch("a Var's in-place access did not run".into()))
}

/// One level of the nesting: holds what the next levels need while candle holds the lock.
struct Nest<'v, 'a, 'f, A: Access, R> {
    rest: &'v [&'v Var],
    acc: RefCell<Option<Vec<A::Item<'a>>>>,
    f: RefCell<&'f mut WithItems<'f, A, R>>,
    out: RefCell<&'f mut Option<R>>,
}

fn nest<A: Access, R>(
    vars: &[&Var],
    acc: Vec<A::Item<'_>>,
    f: &mut WithItems<'_, A, R>,
    out: &mut Option<R>,
) -> candle_core::Result<()> {
    let Some((first, rest)) = vars.split_first() else {
        *out = Some(f(acc));
        return Ok(());
    };
    let op = Nest::<A, R> {
        rest,
        acc: RefCell::new(Some(acc)),
        f: RefCell::new(f),
        out: RefCell::new(out),
    };
    first.inplace_op1(&op)
}

impl<'a, A: Access, R> Nest<'_, 'a, '_, A, R> {
    /// Adds this level's item to the outer ones and runs the next level.
    fn descend<'s>(&self, item: A::Item<'s>) -> candle_core::Result<()>
    where
        'a: 's,
    {
        let Some(acc) = self.acc.borrow_mut().take() else {
            candle_core::bail!("samkit-candle: in-place op ran twice")
        };
        let mut acc = A::narrow::<'a, 's>(acc);
        acc.push(item);
        let mut f = self.f.borrow_mut();
        let mut out = self.out.borrow_mut();
        nest::<A, R>(self.rest, acc, &mut **f, &mut **out)
    }
}

impl<A: Access, R> InplaceOp1 for Nest<'_, '_, '_, A, R> {
    fn name(&self) -> &'static str {
        "samkit-optimizer-step"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        self.descend(A::cpu(storage, layout)?)
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        self.descend(A::cuda(storage, layout)?)
    }
}
