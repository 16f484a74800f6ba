//! Non-temporal (streaming) stores and the copies built on them: the byte floor of the
//! streaming passes, and the stores those passes use for buffers they write without reading.
//!
//! A plain store to a line that is not in cache first reads that line (read-for-ownership), so a
//! pass that writes a buffer it does not read moves that buffer twice, and a `memcpy` of `n`
//! bytes moves `3n`. A non-temporal store (`vmovntps`) writes whole lines to memory through the
//! write-combining buffers, without that read and without evicting the pass's working set. It
//! pays only for data that is not read again soon: the passes use it on arenas of at least
//! [`NT_MIN_LEN`] elements, far beyond the last-level cache, and never for a buffer they read.
//!
//! Streaming stores are weakly ordered: every function here that issues them ends with an
//! `sfence`, so their data is visible to any thread that synchronises with the caller after it
//! returns (rayon's join does). Only AVX2 machines (detected at run time) stream; elsewhere the
//! functions are plain copies. Either way the stored values are the same bits.
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

use crate::chunks::CHUNK;

/// Elements of a buffer from which the passes stream the buffers they only write: 4 Mi f32 is
/// 16 MiB, so a step over such an arena (weights, gradient, saved weights, momentum: 64 MiB and
/// more) cannot stay in a 32 MiB last-level cache between its passes, and a streamed line would
/// have been evicted before it was read again anyway. Below it, plain stores keep the buffers in
/// cache for the next pass.
pub const NT_MIN_LEN: usize = 1 << 22;

/// Whether this machine streams (x86-64 with AVX2, detected once; the std macro caches it).
#[inline]
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a pass over an arena of `len` elements should stream the buffers it only writes.
#[inline]
pub fn worth_it(len: usize) -> bool {
    len >= NT_MIN_LEN && available() && ENABLED.load(Ordering::Relaxed)
}

/// Whether the passes may stream (on unless [`set_enabled`] turned it off).
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the passes' streaming stores on or off for the whole process: for measuring what they
/// save (`benches/cpu_optimizers.rs`) and for testing that they change no bit. The copies of
/// this module ([`copy`], [`CopyVariant`]) stream regardless.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// `dst ← src` with streaming stores where the machine has them (then an `sfence`), a plain
/// copy elsewhere. Same bits either way.
pub fn copy(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "stream::copy: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX2 was detected above; the lengths are equal (asserted).
        unsafe {
            x86::store_avx2(dst, src);
            x86::sfence();
        }
        return;
    }
    dst.copy_from_slice(src);
}

/// `dst ← src` with streaming stores and no fence: for the passes, which store tile by tile and
/// call [`fence`] once at the end of a unit. Falls back to a plain copy without AVX2.
#[inline]
pub fn store_unfenced(dst: &mut [f32], src: &[f32]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "stream::store_unfenced: lengths differ"
    );
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: AVX2 was detected above; the lengths are equal (asserted).
        unsafe { x86::store_avx2(dst, src) };
        return;
    }
    dst.copy_from_slice(src);
}

/// Orders the streaming stores issued so far by this thread before its later stores (a no-op
/// without AVX2, where nothing streamed).
#[inline]
pub fn fence() {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: sfence is SSE, present on every x86-64.
        unsafe { x86::sfence() };
    }
}

/// How a copy is split over threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// On the calling thread.
    Serial,
    /// One contiguous part per rayon thread.
    PerThread,
    /// Parts of [`CHUNK`] elements, as the passes split the layout.
    Chunks,
}

/// How a copy stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// `copy_from_slice` (the C library's `memcpy`).
    Plain,
    /// AVX2 streaming stores ([`copy`]).
    Streaming,
}

/// One way of copying: the candidates of the copy floor that `benches/cpu_optimizers.rs`
/// measures, the fastest of which bounds every streaming pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyVariant {
    pub split: Split,
    pub store: Store,
}

impl CopyVariant {
    /// Every combination; the streaming ones only where the machine streams.
    pub fn all() -> Vec<CopyVariant> {
        let mut v = Vec::new();
        for store in [Store::Plain, Store::Streaming] {
            if store == Store::Streaming && !available() {
                continue;
            }
            for split in [Split::Serial, Split::PerThread, Split::Chunks] {
                v.push(CopyVariant { split, store });
            }
        }
        v
    }

    pub fn name(&self) -> String {
        let store = match self.store {
            Store::Plain => "copy_from_slice",
            Store::Streaming => "avx2 stream+sfence",
        };
        let split = match self.split {
            Split::Serial => "1 thread",
            Split::PerThread => "1 part/thread",
            Split::Chunks => "rayon 64 KiB parts",
        };
        format!("{store}, {split}")
    }

    /// `dst ← src` this way.
    pub fn run(&self, dst: &mut [f32], src: &[f32]) {
        assert_eq!(dst.len(), src.len(), "CopyVariant::run: lengths differ");
        let one = |d: &mut [f32], s: &[f32]| match self.store {
            Store::Plain => d.copy_from_slice(s),
            Store::Streaming => copy(d, s),
        };
        match self.split {
            Split::Serial => one(dst, src),
            Split::PerThread => {
                let per = src.len().div_ceil(rayon::current_num_threads()).max(CHUNK);
                dst.par_chunks_mut(per)
                    .zip(src.par_chunks(per))
                    .for_each(|(d, s)| one(d, s));
            }
            Split::Chunks => dst
                .par_chunks_mut(CHUNK)
                .zip(src.par_chunks(CHUNK))
                .for_each(|(d, s)| one(d, s)),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Streams `src` into `dst`: plain stores up to `dst`'s first 64-byte boundary, `vmovntps`
    /// for every whole cache line after it, plain stores for the tail. Only whole lines are
    /// streamed: a line written partly by streaming stores leaves the write-combining buffer
    /// as a partial write, which the memory controller merges at the cost of a read.
    ///
    /// # Safety
    /// AVX2 must be available and `dst.len() == src.len()`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn store_avx2(dst: &mut [f32], src: &[f32]) {
        let n = dst.len();
        let d = dst.as_mut_ptr();
        let s = src.as_ptr();
        let head = (d.align_offset(64)).min(n);
        for i in 0..head {
            *d.add(i) = *s.add(i);
        }
        let mut i = head;
        while i + 32 <= n {
            // Two whole lines per iteration.
            let a = _mm256_loadu_ps(s.add(i));
            let b = _mm256_loadu_ps(s.add(i + 8));
            let c = _mm256_loadu_ps(s.add(i + 16));
            let e = _mm256_loadu_ps(s.add(i + 24));
            _mm256_stream_ps(d.add(i), a);
            _mm256_stream_ps(d.add(i + 8), b);
            _mm256_stream_ps(d.add(i + 16), c);
            _mm256_stream_ps(d.add(i + 24), e);
            i += 32;
        }
        if i + 16 <= n {
            _mm256_stream_ps(d.add(i), _mm256_loadu_ps(s.add(i)));
            _mm256_stream_ps(d.add(i + 8), _mm256_loadu_ps(s.add(i + 8)));
            i += 16;
        }
        while i < n {
            *d.add(i) = *s.add(i);
            i += 1;
        }
    }

    /// # Safety
    /// SSE (every x86-64 has it).
    #[inline]
    pub unsafe fn sfence() {
        _mm_sfence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_copies_exactly_at_any_alignment_and_length() {
        let src: Vec<f32> = (0..CHUNK * 3 + 77).map(|i| i as f32 * 0.37 - 5.0).collect();
        for v in CopyVariant::all() {
            // Offsets 0..9 put the destination at every 4-byte alignment of a 32-byte block.
            for off in [0usize, 1, 3, 7, 9] {
                for len in [0usize, 5, 8, 31, 33, 1000, src.len() - off] {
                    let mut dst = vec![f32::NAN; len + off];
                    v.run(&mut dst[off..], &src[..len]);
                    assert!(
                        dst[off..]
                            .iter()
                            .zip(&src[..len])
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} off {off} len {len}",
                        v.name()
                    );
                    assert!(dst[..off].iter().all(|x| x.is_nan()), "wrote before dst");
                }
            }
        }
    }

    #[test]
    fn unfenced_store_then_fence_matches_copy() {
        let src: Vec<f32> = (0..1029).map(|i| (i as f32).sin()).collect();
        let mut a = vec![0.0; 1029];
        store_unfenced(&mut a[..], &src);
        fence();
        assert_eq!(a, src);
    }
}
