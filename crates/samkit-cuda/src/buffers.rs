//! Device buffers in the two shapes a trainer has them, seen through one layout.
//!
//! A kernel receives a buffer as a table of per-segment base addresses, so one flat arena
//! (`CudaSlice<T>` of the layout's length) and a list of separate allocations (one `CudaSlice<T>`
//! per segment, or one `CudaView`/`CudaViewMut` per segment of memory another framework owns)
//! look the same to it, exactly as [`samkit_core::Params`] does on the CPU.
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{
    CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, SyncOnDrop,
    ValidAsZeroBits,
};
use samkit_core::Layout;

use crate::error::{Error, Result};

/// The element types parameters and gradients may be stored in; arithmetic is always f32.
pub trait Elem:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + std::fmt::Debug + 'static
{
    /// The suffix of the kernels instantiated for this type (`f32`, `bf16`, `f16`).
    const SUFFIX: &'static str;
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
}

impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(x: f32) -> Self {
        x
    }
}

/// The 16-bit types: stored as themselves, converted by the `half` crate.
macro_rules! half_elem {
    ($($t:ty: $suffix:literal),+) => {$(
        impl Elem for $t {
            const SUFFIX: &'static str = $suffix;
            fn to_f32(self) -> f32 {
                <$t>::to_f32(self)
            }
            fn from_f32(x: f32) -> Self {
                <$t>::from_f32(x)
            }
        }
    )+};
}

half_elem!(half::bf16: "bf16", half::f16: "f16");

/// Keeps cudarc's stream ordering of the buffers a launch uses: dropped after the launch.
pub type Guards<'a> = Vec<SyncOnDrop<'a>>;

/// Read access to a device buffer laid out as a layout.
pub trait DeviceParams<T> {
    /// Appends the device address of each segment to `out`, after checking the shape against
    /// `layout`; `guards` order `stream` after the buffer's pending writes.
    fn seg_addrs<'a>(
        &'a self,
        layout: &Layout,
        stream: &'a CudaStream,
        what: &'static str,
        out: &mut Vec<u64>,
        guards: &mut Guards<'a>,
    ) -> Result<()>;
}

/// Write access to a device buffer laid out as a layout.
pub trait DeviceParamsMut<T>: DeviceParams<T> {
    fn seg_addrs_mut<'a>(
        &'a mut self,
        layout: &Layout,
        stream: &'a CudaStream,
        what: &'static str,
        out: &mut Vec<u64>,
        guards: &mut Guards<'a>,
    ) -> Result<()>;
}

fn check_flat(layout: &Layout, what: &'static str, len: usize) -> Result<()> {
    if len != layout.len() {
        return Err(Error::Buffer {
            what,
            detail: format!("{len} elements, the layout has {}", layout.len()),
        });
    }
    Ok(())
}

/// The per-segment addresses of a flat buffer of `T` at `base` laid out as `layout`.
pub(crate) fn flat_addrs<T>(layout: &Layout, base: u64, out: &mut Vec<u64>) {
    let s = std::mem::size_of::<T>() as u64;
    out.extend(
        layout
            .segments()
            .iter()
            .map(|seg| base + seg.offset as u64 * s),
    );
}

fn check_list(layout: &Layout, what: &'static str, lens: &[usize]) -> Result<()> {
    if lens.len() != layout.segments().len() {
        return Err(Error::Buffer {
            what,
            detail: format!(
                "{} buffers, the layout has {} segments",
                lens.len(),
                layout.segments().len()
            ),
        });
    }
    for (n, s) in lens.iter().zip(layout.segments()) {
        if *n != s.len {
            return Err(Error::Buffer {
                what,
                detail: format!(
                    "buffer for `{}` has {n} elements, expected {}",
                    s.name, s.len
                ),
            });
        }
    }
    Ok(())
}

/// The impls of [`DeviceParams`] (`seg_addrs`, `device_ptr`) and [`DeviceParamsMut`]
/// (`seg_addrs_mut`, `device_ptr_mut`, `mut` receiver) for buffer types of one shape: `flat`, one
/// buffer of the layout's length, or `list`, a slice of buffers, one per segment in layout order
/// (separate allocations, `CudaSlice`, or views of memory another framework owns, candle's Vars
/// through samkit-candle). The two traits differ only in the borrow and the pointer they take.
macro_rules! seg_addrs_impls {
    ($shape:ident $tr:ident::$f:ident $recv:tt, $ptr:ident: $($t:ty),+) => {$(
        seg_addrs_impls!(@one $shape $tr::$f $recv, $ptr, $t);
    )+};
    (@one $shape:ident $tr:ident::$f:ident ($($m:tt)?), $ptr:ident, $t:ty) => {
        impl<T> $tr<T> for seg_addrs_impls!(@ty $shape $t) {
            fn $f<'a>(
                &'a $($m)? self,
                layout: &Layout,
                stream: &'a CudaStream,
                what: &'static str,
                out: &mut Vec<u64>,
                guards: &mut Guards<'a>,
            ) -> Result<()> {
                seg_addrs_impls!(@body $shape self, $ptr, layout, stream, what, out, guards)
            }
        }
    };
    (@ty flat $t:ty) => { $t };
    (@ty list $t:ty) => { [$t] };
    (@body flat $s:ident, $ptr:ident, $layout:ident, $stream:ident, $what:ident, $out:ident,
     $guards:ident) => {{
        check_flat($layout, $what, $s.len())?;
        let (p, g) = $s.$ptr($stream);
        flat_addrs::<T>($layout, p, $out);
        $guards.push(g);
        Ok(())
    }};
    (@body list $s:ident, $ptr:ident, $layout:ident, $stream:ident, $what:ident, $out:ident,
     $guards:ident) => {{
        let lens: Vec<usize> = $s.iter().map(|s| s.len()).collect();
        check_list($layout, $what, &lens)?;
        for s in $s {
            let (p, g) = s.$ptr($stream);
            $out.push(p);
            $guards.push(g);
        }
        Ok(())
    }};
}

seg_addrs_impls!(flat DeviceParams::seg_addrs(), device_ptr:
    CudaSlice<T>, CudaView<'_, T>, CudaViewMut<'_, T>);
seg_addrs_impls!(flat DeviceParamsMut::seg_addrs_mut(mut), device_ptr_mut:
    CudaSlice<T>, CudaViewMut<'_, T>);
seg_addrs_impls!(list DeviceParams::seg_addrs(), device_ptr:
    CudaSlice<T>, CudaView<'_, T>, CudaViewMut<'_, T>);
seg_addrs_impls!(list DeviceParamsMut::seg_addrs_mut(mut), device_ptr_mut:
    CudaSlice<T>, CudaViewMut<'_, T>);

// A `Vec` of any of them, as its slice.
impl<T, B> DeviceParams<T> for Vec<B>
where
    [B]: DeviceParams<T>,
{
    fn seg_addrs<'a>(
        &'a self,
        layout: &Layout,
        stream: &'a CudaStream,
        what: &'static str,
        out: &mut Vec<u64>,
        guards: &mut Guards<'a>,
    ) -> Result<()> {
        self.as_slice().seg_addrs(layout, stream, what, out, guards)
    }
}

impl<T, B> DeviceParamsMut<T> for Vec<B>
where
    [B]: DeviceParamsMut<T>,
{
    fn seg_addrs_mut<'a>(
        &'a mut self,
        layout: &Layout,
        stream: &'a CudaStream,
        what: &'static str,
        out: &mut Vec<u64>,
        guards: &mut Guards<'a>,
    ) -> Result<()> {
        self.as_mut_slice()
            .seg_addrs_mut(layout, stream, what, out, guards)
    }
}

/// A device buffer the crate owns, with its address taken once. Every kernel that uses it runs
/// on the stream it was allocated on, and cudarc frees it in stream order, so the address is
/// valid for every launch enqueued while the buffer lives.
pub(crate) struct DevBuf<T> {
    pub slice: CudaSlice<T>,
    pub addr: u64,
}

impl<T: DeviceRepr + ValidAsZeroBits> DevBuf<T> {
    pub fn zeros(stream: &Arc<CudaStream>, len: usize) -> Result<Self> {
        let slice = stream.alloc_zeros::<T>(len.max(1))?;
        let addr = {
            let (p, _g) = slice.device_ptr(stream);
            p
        };
        Ok(DevBuf { slice, addr })
    }

    pub fn from_host(stream: &Arc<CudaStream>, v: &[T]) -> Result<Self> {
        if v.is_empty() {
            return Self::zeros(stream, 1);
        }
        let slice = stream.clone_htod(v)?;
        let addr = {
            let (p, _g) = slice.device_ptr(stream);
            p
        };
        Ok(DevBuf { slice, addr })
    }

    pub fn download(&self, stream: &Arc<CudaStream>) -> Result<Vec<T>> {
        Ok(stream.clone_dtoh(&self.slice)?)
    }
}

/// Ties a table to the borrow it was made from and to its element type (`Send + Sync`).
type Marker<'a, T> = PhantomData<(&'a (), fn() -> T)>;

/// A validated table of per-segment addresses of a buffer of `T` on the device, usable for the
/// call it was made for (`'a` borrows the buffer).
#[derive(Clone, Copy)]
pub(crate) struct Tab<'a, T> {
    pub addr: u64,
    _p: Marker<'a, T>,
}

impl<T> Tab<'_, T> {
    pub fn addr(t: Option<Self>) -> u64 {
        t.map_or(0, |t| t.addr)
    }
}

/// The address table of a crate-owned flat arena of the layout's length, built once.
pub(crate) struct FlatTable<T> {
    table: DevBuf<u64>,
    _p: PhantomData<fn() -> T>,
}

impl<T> FlatTable<T> {
    pub fn new(stream: &Arc<CudaStream>, layout: &Layout, buf: &DevBuf<T>) -> Result<Self> {
        let mut v = Vec::with_capacity(layout.segments().len());
        flat_addrs::<T>(layout, buf.addr, &mut v);
        Ok(FlatTable {
            table: DevBuf::from_host(stream, &v)?,
            _p: PhantomData,
        })
    }

    /// The table. Its lifetime is not tied to `self`: the owner (an optimizer) keeps the arena
    /// and the table for as long as it enqueues kernels.
    pub fn tab(&self) -> Tab<'static, T> {
        Tab {
            addr: self.table.addr,
            _p: PhantomData,
        }
    }
}

/// A crate-owned flat arena of the layout's length and its address table.
pub(crate) struct Arena<T> {
    /// Owns the memory the table points into.
    #[allow(dead_code)]
    buf: DevBuf<T>,
    table: FlatTable<T>,
}

impl<T: DeviceRepr + ValidAsZeroBits> Arena<T> {
    pub fn zeros(stream: &Arc<CudaStream>, layout: &Layout) -> Result<Self> {
        let buf = DevBuf::zeros(stream, layout.len())?;
        let table = FlatTable::new(stream, layout, &buf)?;
        Ok(Arena { buf, table })
    }

    pub fn from_host(stream: &Arc<CudaStream>, layout: &Layout, v: &[T]) -> Result<Self> {
        let buf = DevBuf::from_host(stream, v)?;
        let table = FlatTable::new(stream, layout, &buf)?;
        Ok(Arena { buf, table })
    }

    /// The table (see [`FlatTable::tab`]).
    pub fn tab(&self) -> Tab<'static, T> {
        self.table.tab()
    }
}

/// Uploaded address tables, keyed by their contents: a trainer that hands over the same
/// buffers every step uploads each table once.
pub(crate) struct TableCache {
    entries: Vec<(Vec<u64>, DevBuf<u64>)>,
    cap: usize,
}

impl TableCache {
    pub fn new(cap: usize) -> Self {
        TableCache {
            entries: Vec::new(),
            cap,
        }
    }

    /// The table of a buffer the kernels read, checked against `layout`; `guards` order `stream`
    /// after the buffer's pending writes.
    pub fn read<'a, T, B: DeviceParams<T> + ?Sized>(
        &mut self,
        layout: &Layout,
        stream: &'a Arc<CudaStream>,
        b: &'a B,
        what: &'static str,
        guards: &mut Guards<'a>,
    ) -> Result<Tab<'a, T>> {
        let mut addrs = Vec::with_capacity(layout.segments().len());
        b.seg_addrs(layout, stream, what, &mut addrs, guards)?;
        self.get(stream, &addrs)
    }

    /// [`TableCache::read`] for a buffer the kernels write.
    pub fn write<'a, T, B: DeviceParamsMut<T> + ?Sized>(
        &mut self,
        layout: &Layout,
        stream: &'a Arc<CudaStream>,
        b: &'a mut B,
        what: &'static str,
        guards: &mut Guards<'a>,
    ) -> Result<Tab<'a, T>> {
        let mut addrs = Vec::with_capacity(layout.segments().len());
        b.seg_addrs_mut(layout, stream, what, &mut addrs, guards)?;
        self.get(stream, &addrs)
    }

    /// The device table of `addrs` (uploaded on a miss, asynchronously).
    pub fn get<'a, T>(&mut self, stream: &Arc<CudaStream>, addrs: &[u64]) -> Result<Tab<'a, T>> {
        if let Some(i) = self.entries.iter().position(|(k, _)| k == addrs) {
            let e = self.entries.remove(i);
            let addr = e.1.addr;
            self.entries.push(e);
            return Ok(Tab {
                addr,
                _p: PhantomData,
            });
        }
        let buf = DevBuf::from_host(stream, addrs)?;
        let addr = buf.addr;
        if self.entries.len() >= self.cap {
            self.entries.remove(0);
        }
        self.entries.push((addrs.to_vec(), buf));
        Ok(Tab {
            addr,
            _p: PhantomData,
        })
    }
}
