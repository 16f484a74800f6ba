//! The fixed partition of a layout into work units, and the deterministic reduction over them.
//!
//! Units never cross a segment boundary and have at most [`CHUNK`] elements, so the partition
//! depends on the layout alone: not on the thread count, not on whether the caller passed a
//! flat arena or a list of slices. Each unit reduces sequentially in a fixed lane order, and the
//! per-unit partial sums combine in a fixed pairwise tree, so every reduction gives the same
//! bits on 1 or N threads.
use crate::layout::{Layout, ParamKind};

/// Elements per work unit: small enough to balance two to a hundred threads over ResNet-18,
/// large enough that rayon's per-task cost is invisible next to the memory traffic.
pub const CHUNK: usize = 1 << 14;

/// Elements per tile inside a unit: a direction is materialised tile by tile in L1.
pub const TILE: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub segment: usize,
    pub kind: ParamKind,
    /// Offset of the unit inside its segment.
    pub seg_offset: usize,
    /// Offset of the unit in the flat index space.
    pub global: usize,
    pub len: usize,
}

#[derive(Clone, Debug)]
pub struct Chunks {
    infos: Vec<ChunkInfo>,
}

impl Chunks {
    pub fn new(layout: &Layout) -> Self {
        let mut infos = Vec::new();
        for (si, s) in layout.segments().iter().enumerate() {
            let mut off = 0;
            while off < s.len {
                let len = CHUNK.min(s.len - off);
                infos.push(ChunkInfo {
                    segment: si,
                    kind: s.kind,
                    seg_offset: off,
                    global: s.offset + off,
                    len,
                });
                off += len;
            }
        }
        Chunks { infos }
    }

    pub fn infos(&self) -> &[ChunkInfo] {
        &self.infos
    }

    /// Elements over all units (the layout's length).
    pub fn total_len(&self) -> usize {
        self.infos.last().map_or(0, |c| c.global + c.len)
    }

    /// Cuts per-segment views into per-unit views.
    pub fn split<'a>(&self, segs: Vec<&'a [f32]>) -> Vec<&'a [f32]> {
        let mut out = Vec::with_capacity(self.infos.len());
        for (si, s) in segs.into_iter().enumerate() {
            let mut rest = s;
            for c in self.infos.iter().filter(|c| c.segment == si) {
                let (h, t) = rest.split_at(c.len);
                out.push(h);
                rest = t;
            }
        }
        debug_assert_eq!(out.len(), self.infos.len());
        out
    }

    pub fn split_mut<'a>(&self, segs: Vec<&'a mut [f32]>) -> Vec<&'a mut [f32]> {
        let mut out = Vec::with_capacity(self.infos.len());
        for (si, s) in segs.into_iter().enumerate() {
            let mut rest = s;
            for c in self.infos.iter().filter(|c| c.segment == si) {
                let (h, t) = std::mem::take(&mut rest).split_at_mut(c.len);
                out.push(h);
                rest = t;
            }
        }
        debug_assert_eq!(out.len(), self.infos.len());
        out
    }

    /// Per-unit views of an internal flat buffer.
    pub fn split_flat<'a>(&self, flat: &'a [f32]) -> Vec<&'a [f32]> {
        let mut rest = flat;
        self.infos
            .iter()
            .map(|c| {
                let (h, t) = rest.split_at(c.len);
                rest = t;
                h
            })
            .collect()
    }

    pub fn split_flat_mut<'a>(&self, flat: &'a mut [f32]) -> Vec<&'a mut [f32]> {
        let mut rest = flat;
        self.infos
            .iter()
            .map(|c| {
                let (h, t) = std::mem::take(&mut rest).split_at_mut(c.len);
                rest = t;
                h
            })
            .collect()
    }
}

/// Sums partial results in a fixed pairwise tree: the shape depends on the count alone.
pub fn tree_sum(xs: &[f64]) -> f64 {
    match xs.len() {
        0 => 0.0,
        1 => xs[0],
        n => {
            let (a, b) = xs.split_at(n / 2);
            tree_sum(a) + tree_sum(b)
        }
    }
}

/// Eight f64 lanes: a fixed summation order that the compiler can still vectorise.
#[derive(Clone, Copy, Default)]
pub struct Lanes([f64; 8]);

// Lane-indexed loops are the point here: they fix the summation order and vectorise.
#[allow(clippy::needless_range_loop)]
impl Lanes {
    /// `lane[k] += x²` for every `x` at index `≡ k (mod 8)`, in index order.
    #[inline(always)]
    pub fn add_squares(&mut self, xs: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is available (checked just above).
            unsafe { x86::add_squares_avx2(&mut self.0, xs) };
            return;
        }
        self.add_squares_portable(xs);
    }

    /// [`Lanes::add_squares`] without AVX2.
    #[inline(always)]
    fn add_squares_portable(&mut self, xs: &[f32]) {
        let mut it = xs.chunks_exact(8);
        for c in &mut it {
            for k in 0..8 {
                let v = c[k] as f64;
                self.0[k] += v * v;
            }
        }
        for (k, &x) in it.remainder().iter().enumerate() {
            let v = x as f64;
            self.0[k] += v * v;
        }
    }

    /// `lane[k] += x·y` (in f64) for every pair at index `≡ k (mod 8)`, in index order.
    #[inline(always)]
    pub fn add_products(&mut self, xs: &[f32], ys: &[f32]) {
        let n = xs.len().min(ys.len());
        let (xs, ys) = (&xs[..n], &ys[..n]);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is available (checked just above); the lengths are equal.
            unsafe { x86::add_products_avx2(&mut self.0, xs, ys) };
            return;
        }
        self.add_products_portable(xs, ys);
    }

    /// [`Lanes::add_products`] without AVX2, on slices of equal length.
    #[inline(always)]
    fn add_products_portable(&mut self, xs: &[f32], ys: &[f32]) {
        let mut ix = xs.chunks_exact(8);
        let mut iy = ys.chunks_exact(8);
        for (a, b) in (&mut ix).zip(&mut iy) {
            for k in 0..8 {
                self.0[k] += a[k] as f64 * b[k] as f64;
            }
        }
        for (k, (&a, &b)) in ix.remainder().iter().zip(iy.remainder()).enumerate() {
            self.0[k] += a as f64 * b as f64;
        }
    }

    /// `yy.add_squares(ys)` and `xy.add_products(xs, ys)` in one sweep: with AVX2 the four
    /// dependency chains interleave (two alone are latency-bound near the memory bandwidth).
    /// Each lane's order is unchanged, so the same bits as the two calls.
    #[inline(always)]
    pub fn add_squares_and_products(yy: &mut Lanes, xy: &mut Lanes, xs: &[f32], ys: &[f32]) {
        let n = xs.len().min(ys.len());
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && n == ys.len() {
            // SAFETY: AVX2 is available (checked just above); the lengths are equal.
            unsafe { x86::squares_and_products_avx2(&mut yy.0, &mut xy.0, &xs[..n], ys) };
            return;
        }
        yy.add_squares(ys);
        xy.add_products(xs, ys);
    }

    #[inline]
    pub fn total(&self) -> f64 {
        let l = &self.0;
        ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
    }
}

/// The lane sums with AVX2: lanes 0–3 and 4–7 in two registers, each lane still summed in
/// index order with a separate multiply and add (no FMA), so the same bits as the portable loops
/// (which the compiler left at two doubles per instruction, or scalar).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Eight floats from `p`, widened to doubles: lanes 0–3 and lanes 4–7.
    ///
    /// # Safety
    /// AVX2 must be available and `p` must point to eight readable floats.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load_pd(p: *const f32) -> (__m256d, __m256d) {
        let v = _mm256_loadu_ps(p);
        (
            _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
        )
    }

    /// # Safety
    /// AVX2 must be available.
    #[target_feature(enable = "avx2")]
    pub unsafe fn add_squares_avx2(lanes: &mut [f64; 8], xs: &[f32]) {
        let l = lanes.as_mut_ptr();
        let (mut lo, mut hi) = (_mm256_loadu_pd(l), _mm256_loadu_pd(l.add(4)));
        let mut it = xs.chunks_exact(8);
        for c in &mut it {
            let (a, b) = load_pd(c.as_ptr());
            lo = _mm256_add_pd(lo, _mm256_mul_pd(a, a));
            hi = _mm256_add_pd(hi, _mm256_mul_pd(b, b));
        }
        _mm256_storeu_pd(l, lo);
        _mm256_storeu_pd(l.add(4), hi);
        for (k, &x) in it.remainder().iter().enumerate() {
            let v = x as f64;
            lanes[k] += v * v;
        }
    }

    /// `yy[k] += y²` and `xy[k] += x·y` in one loop.
    ///
    /// # Safety
    /// AVX2 must be available and `xs.len() == ys.len()`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn squares_and_products_avx2(
        yy: &mut [f64; 8],
        xy: &mut [f64; 8],
        xs: &[f32],
        ys: &[f32],
    ) {
        let (py, px) = (yy.as_mut_ptr(), xy.as_mut_ptr());
        let (mut ylo, mut yhi) = (_mm256_loadu_pd(py), _mm256_loadu_pd(py.add(4)));
        let (mut xlo, mut xhi) = (_mm256_loadu_pd(px), _mm256_loadu_pd(px.add(4)));
        let mut ix = xs.chunks_exact(8);
        let mut iy = ys.chunks_exact(8);
        for (cx, cy) in (&mut ix).zip(&mut iy) {
            let (xa, xb) = load_pd(cx.as_ptr());
            let (ya, yb) = load_pd(cy.as_ptr());
            ylo = _mm256_add_pd(ylo, _mm256_mul_pd(ya, ya));
            yhi = _mm256_add_pd(yhi, _mm256_mul_pd(yb, yb));
            xlo = _mm256_add_pd(xlo, _mm256_mul_pd(xa, ya));
            xhi = _mm256_add_pd(xhi, _mm256_mul_pd(xb, yb));
        }
        _mm256_storeu_pd(py, ylo);
        _mm256_storeu_pd(py.add(4), yhi);
        _mm256_storeu_pd(px, xlo);
        _mm256_storeu_pd(px.add(4), xhi);
        for (k, (&a, &b)) in ix.remainder().iter().zip(iy.remainder()).enumerate() {
            let v = b as f64;
            yy[k] += v * v;
            xy[k] += a as f64 * v;
        }
    }

    /// # Safety
    /// AVX2 must be available and `xs.len() == ys.len()`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn add_products_avx2(lanes: &mut [f64; 8], xs: &[f32], ys: &[f32]) {
        let l = lanes.as_mut_ptr();
        let (mut lo, mut hi) = (_mm256_loadu_pd(l), _mm256_loadu_pd(l.add(4)));
        let mut ix = xs.chunks_exact(8);
        let mut iy = ys.chunks_exact(8);
        for (cx, cy) in (&mut ix).zip(&mut iy) {
            let (xa, xb) = load_pd(cx.as_ptr());
            let (ya, yb) = load_pd(cy.as_ptr());
            lo = _mm256_add_pd(lo, _mm256_mul_pd(xa, ya));
            hi = _mm256_add_pd(hi, _mm256_mul_pd(xb, yb));
        }
        _mm256_storeu_pd(l, lo);
        _mm256_storeu_pd(l.add(4), hi);
        for (k, (&a, &b)) in ix.remainder().iter().zip(iy.remainder()).enumerate() {
            lanes[k] += a as f64 * b as f64;
        }
    }
}

/// A cheap, vectorisable finiteness probe: the sum of `x * 0` is 0 for finite inputs and
/// NaN as soon as one input is NaN or infinite.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub fn poison(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = xs.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] += c[k] * 0.0;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for &x in it.remainder() {
        s += x * 0.0;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_cover_the_layout_in_order() {
        let mut l = Layout::new();
        l.push("a.weight", &[CHUNK * 2 + 5]).unwrap();
        l.push("b.bias", &[3]).unwrap();
        let c = Chunks::new(&l);
        assert_eq!(c.infos().len(), 4);
        let total: usize = c.infos().iter().map(|i| i.len).sum();
        assert_eq!(total, l.len());
        assert_eq!(c.infos()[3].global, CHUNK * 2 + 5);
        assert_eq!(c.infos()[3].kind, ParamKind::Bias);
    }

    #[test]
    fn lane_sums_are_the_same_bits_with_and_without_avx2() {
        let xs: Vec<f32> = (0..1037)
            .map(|i| ((i * 7919) % 1000) as f32 * 1.37e-3 - 0.6)
            .collect();
        let ys: Vec<f32> = xs.iter().rev().map(|&x| x * 3.1 + 0.2).collect();
        for len in [0, 3, 8, 13, 512, 1037] {
            let (mut a, mut b) = (Lanes::default(), Lanes::default());
            // Twice: the second call adds onto lanes that are no longer zero.
            for _ in 0..2 {
                a.add_squares(&xs[..len]);
                b.add_squares_portable(&xs[..len]);
                a.add_products(&xs[..len], &ys[..len]);
                b.add_products_portable(&xs[..len], &ys[..len]);
            }
            let bits = |l: &Lanes| l.0.map(f64::to_bits);
            assert_eq!(bits(&a), bits(&b), "len {len}");
            let (mut yy, mut xy) = (Lanes::default(), Lanes::default());
            let (mut yy2, mut xy2) = (Lanes::default(), Lanes::default());
            for _ in 0..2 {
                Lanes::add_squares_and_products(&mut yy, &mut xy, &xs[..len], &ys[..len]);
                yy2.add_squares_portable(&ys[..len]);
                xy2.add_products_portable(&xs[..len], &ys[..len]);
            }
            assert_eq!(
                (bits(&yy), bits(&xy)),
                (bits(&yy2), bits(&xy2)),
                "len {len}"
            );
        }
    }

    #[test]
    fn poison_detects_non_finite() {
        assert_eq!(poison(&[1.0; 19]), 0.0);
        assert!(poison(&[1.0, f32::INFINITY, 2.0]).is_nan());
        let mut v = vec![1.0; 100];
        v[97] = f32::NAN;
        assert!(poison(&v).is_nan());
    }
}
