//! The kernels one at a time, outside an optimizer: deterministic norms and dot products, the
//! Fisher accumulation, top-k masks and SSAM-D's masks. Results that the host reads back wait for
//! the stream; the rest is enqueued.
use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtrMut};
use samkit_core::{Bitset, Layout};

use crate::abi;
use crate::buffers::{DevBuf, DeviceParams, Elem, TableCache};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::{self, DirExtra, DirKind, Fin, Keys, SelBufs};
use crate::plan::{Plan, Work};
use crate::variants::Variants;

/// Standalone kernels over one layout, for buffers of `T`.
pub struct Ops<T: Elem> {
    dev: Arc<Device>,
    plan: Plan,
    work: Work,
    sel: SelBufs,
    masks: DevBuf<u64>,
    tables: TableCache,
    variants: Variants,
    _p: std::marker::PhantomData<T>,
}

/// A sum of squares (or a dot product) and the non-finite check that came with it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reduction {
    /// `Σ x²`, or `⟨x, y⟩` for a dot product.
    pub value: f64,
    /// `‖y‖²` for a dot product.
    pub yy: f64,
    /// Every element checked was finite.
    pub finite: bool,
}

impl<T: Elem> Ops<T> {
    pub fn new(dev: &Arc<Device>, layout: Layout) -> Result<Self> {
        if layout.is_empty() {
            return Err(
                samkit_core::Error::InvalidLayout("the layout has no parameters".into()).into(),
            );
        }
        let stream = dev.stream().clone();
        let plan = Plan::new(&stream, layout)?;
        Ok(Ops {
            work: Work::new(&stream, &plan)?,
            sel: SelBufs::new(&stream, &plan)?,
            masks: DevBuf::zeros(&stream, 2 * plan.words)?,
            plan,
            dev: dev.clone(),
            tables: TableCache::new(16),
            variants: Variants::default(),
            _p: std::marker::PhantomData,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.plan.layout
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// The kernel arrangement of the next calls.
    pub fn variants(&self) -> Variants {
        self.variants
    }

    /// Selects the kernel arrangement of the next calls (default: today's kernels). Every
    /// variant gives the same bits; the top-k masks and SSAM-D's masks follow `v.topk`.
    pub fn set_variants(&mut self, v: Variants) {
        self.variants = v;
        self.sel.topk = v.topk;
    }

    fn fused(&self) -> bool {
        self.variants.step == crate::variants::StepVariant::Fused
    }

    fn read_sum(&self) -> Result<Reduction> {
        let c = self.work.ctl(self.dev.stream())?;
        Ok(Reduction {
            value: c.g_sq,
            yy: c.yy,
            finite: c.skip == 0,
        })
    }

    /// `‖x‖²` over all segments (two-stage, f64, the same bits on every run) and whether `x` is
    /// finite.
    pub fn norm_sq<B: DeviceParams<T> + ?Sized>(&mut self, x: &B) -> Result<Reduction> {
        let stream = self.dev.stream().clone();
        let mut guards = Vec::new();
        let xt = self
            .tables
            .read(&self.plan.layout, &stream, x, "x", &mut guards)?;
        let d = DirExtra::default();
        let f = Fin::new(abi::FIN_SUM);
        // The fused arrangement: the second stage in the norm kernel's last block.
        let fa = self
            .fused()
            .then(|| ops::fin_args(&self.plan, &self.work, None, f));
        ops::norm::<T>(
            &self.dev,
            &self.plan,
            &self.work,
            DirKind::Plain,
            xt,
            None,
            None,
            d,
            false,
            fa.as_ref(),
        )?;
        if fa.is_none() {
            ops::finalize(&self.dev, &self.plan, &self.work, None, f)?;
        }
        drop(guards);
        self.read_sum()
    }

    /// `⟨x, y⟩`, `‖y‖²` and whether `y` is finite.
    pub fn dot<B: DeviceParams<T> + ?Sized>(&mut self, x: &B, y: &B) -> Result<Reduction> {
        let stream = self.dev.stream().clone();
        let mut guards = Vec::new();
        let xt = self
            .tables
            .read(&self.plan.layout, &stream, x, "x", &mut guards)?;
        let yt = self
            .tables
            .read(&self.plan.layout, &stream, y, "y", &mut guards)?;
        let mut f = Fin::new(abi::FIN_SUM);
        f.with_b = true;
        let fa = self
            .fused()
            .then(|| ops::fin_args(&self.plan, &self.work, None, f));
        ops::dot::<T>(&self.dev, &self.plan, &self.work, Some(xt), yt, fa.as_ref())?;
        if fa.is_none() {
            ops::finalize(&self.dev, &self.plan, &self.work, None, f)?;
        }
        drop(guards);
        self.read_sum()
    }

    /// `F += g ⊙ g`, `F` a flat f32 buffer of the layout's length (enqueued, no wait).
    pub fn fisher_accumulate<B: DeviceParams<T> + ?Sized>(
        &mut self,
        fisher: &mut CudaSlice<f32>,
        g: &B,
    ) -> Result<()> {
        if fisher.len() != self.plan.n {
            return Err(Error::Buffer {
                what: "fisher",
                detail: format!("{} elements, the layout has {}", fisher.len(), self.plan.n),
            });
        }
        let stream = self.dev.stream().clone();
        let mut guards = Vec::new();
        let gt = self
            .tables
            .read(&self.plan.layout, &stream, g, "gradient", &mut guards)?;
        let (f, fg) = fisher.device_ptr_mut(&stream);
        ops::fisher::<T>(&self.dev, &self.plan, f, gt)?;
        drop(fg);
        drop(guards);
        Ok(())
    }

    fn download_bits(&self, b: &DevBuf<u64>, slot: usize) -> Result<Bitset> {
        let all = b.download(self.dev.stream())?;
        let w = self.plan.words;
        let bytes: Vec<u8> = all[slot * w..(slot + 1) * w]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        Bitset::from_bytes(self.plan.n, &bytes).ok_or_else(|| Error::Abi("bitset size".into()))
    }

    /// The `k` largest scores over all segments, ties to the lower flat index: the same set as
    /// `samkit_core::select::top_k_mask` on the concatenated scores.
    pub fn top_k_mask<S: Elem, B: DeviceParams<S> + ?Sized>(
        &mut self,
        scores: &B,
        k: usize,
    ) -> Result<Bitset> {
        let stream = self.dev.stream().clone();
        let mut guards = Vec::new();
        let st = self
            .tables
            .read(&self.plan.layout, &stream, scores, "scores", &mut guards)?;
        ops::select::<S>(
            &self.dev,
            &self.plan,
            &self.work,
            &mut self.sel,
            Keys::Scores(st),
            k as u64,
            false,
        )?;
        drop(guards);
        self.download_bits(&self.sel.a, 0)
    }

    /// SSAM-D's initial mask: `live` indices with the smallest Philox keys of update 0
    /// (`samkit_core::sparse::random_mask`).
    pub fn random_mask(&mut self, live: usize, seed: u64) -> Result<Bitset> {
        ops::select::<T>(
            &self.dev,
            &self.plan,
            &self.work,
            &mut self.sel,
            Keys::Init(seed, 0),
            live as u64,
            false,
        )?;
        self.download_bits(&self.sel.a, 0)
    }

    /// SSAM-D's update of `mask` with the gradient `g` (`samkit_core::sparse::drop_grow`).
    pub fn drop_grow<B: DeviceParams<T> + ?Sized>(
        &mut self,
        g: &B,
        mask: &Bitset,
        rate: f32,
        seed: u64,
        update: u32,
    ) -> Result<Bitset> {
        if mask.len() != self.plan.n {
            return Err(Error::Buffer {
                what: "mask",
                detail: format!("{} bits, the layout has {}", mask.len(), self.plan.n),
            });
        }
        let stream = self.dev.stream().clone();
        // The standalone step state never commits: the current mask is slot 0.
        let c = self.work.ctl(&stream)?;
        let cur = c.mask_cur as usize;
        let w = self.plan.words;
        {
            let mut view = self.masks.slice.slice_mut(cur * w..(cur + 1) * w);
            stream.memcpy_htod(mask.words(), &mut view)?;
        }
        let n = self.plan.n;
        let live = mask.count_ones();
        let k = ((((live as f64) * rate as f64).floor()) as usize).min(n - live) as u64;
        let mut guards = Vec::new();
        let gt = self
            .tables
            .read(&self.plan.layout, &stream, g, "gradient", &mut guards)?;
        // k = 0: the mask stays as it is.
        let mode = if k == 0 {
            abi::COMB_KEEP
        } else {
            let (dev, plan, work) = (&self.dev, &self.plan, &self.work);
            let drop = Keys::Drop(gt, &self.masks);
            ops::select::<T>(dev, plan, work, &mut self.sel, drop, k, false)?;
            let grow = Keys::<T>::Grow(&self.masks, seed, update);
            ops::select::<T>(dev, plan, work, &mut self.sel, grow, k, true)?;
            abi::COMB_DROP_GROW
        };
        ops::mask_combine(
            &self.dev,
            &self.plan,
            &self.work,
            &self.masks,
            &self.sel,
            mode,
        )?;
        drop(guards);
        self.download_bits(&self.masks, cur ^ 1)
    }
}
