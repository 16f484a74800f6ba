//! The fused streaming passes of a SAM step: the CPU twins of samkit-kernels' `kernels/*.cu`.
//!
//! A step is at most three passes over memory: a norm (with the non-finite check and, for
//! FriendlySAM, the EMA fused in), a perturbation (`w_old ← w; w ← w + s·dir`), and the restore
//! fused with the direction combination and the base-optimizer update. Each pass runs over the
//! layout's units in parallel and materialises derived vectors tile by tile in L1.
//!
//! Two things keep the passes at the copy bandwidth of the machine without changing a bit of
//! their results: each unit's loop is compiled for AVX2 where the CPU has it (`simd`: the
//! same operations in the same order, half the instructions of the SSE2 baseline), and on
//! arenas beyond the last-level cache the buffers a pass writes without reading (`w_old`, the
//! kept gradient, FriendlySAM's next `m`, the restored-and-updated `w`) are written with
//! streaming stores ([`crate::stream`]), which skip the read a plain store of an uncached line
//! costs.
use rayon::prelude::*;

use crate::base::{BaseOptimizer, StepScalars, TileState};
use crate::bitset::Bitset;
use crate::chunks::{poison, tree_sum, ChunkInfo, Chunks, Lanes, TILE};
use crate::layout::{Layout, ParamKind};
use crate::stream;

/// Runs `f` compiled for AVX2 where the CPU has it (detected at run time), else as compiled.
///
/// The closure is inlined into an AVX2 function, so its loops vectorise eight floats (four
/// doubles) per instruction. The results are the same bits: the passes' arithmetic is
/// elementwise f32 and f64 adds, multiplies and conversions, which AVX2 rounds as SSE2 does, Rust
/// never contracts `a * b + c` into an FMA, and every reduction keeps its lane order
/// ([`Lanes`]).
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is available (checked just above), the only requirement of `avx2`.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `dst ← src` for a tile of a buffer the pass only writes: streamed when the arena is
/// large ([`stream::worth_it`]), a plain copy otherwise.
#[inline(always)]
fn put(nt: bool, dst: &mut [f32], src: &[f32]) {
    if nt {
        stream::store_unfenced(dst, src);
    } else {
        dst.copy_from_slice(src);
    }
}

/// ASAM's filter-wise scales `T_f = ‖w_f‖ + η`, one per output filter of each weight segment.
#[derive(Clone, Debug, Default)]
pub struct FilterScales {
    /// Index of each segment's first filter in `t` (unused for bias segments).
    seg_start: Vec<usize>,
    filter_len: Vec<usize>,
    t: Vec<f32>,
}

impl FilterScales {
    pub fn compute(layout: &Layout, w: &[&[f32]], eta: f32) -> Self {
        let mut fs = FilterScales::default();
        for (s, ws) in layout.segments().iter().zip(w) {
            fs.seg_start.push(fs.t.len());
            let fl = s.filter_len();
            fs.filter_len.push(fl);
            if s.kind == ParamKind::Weight {
                let rows: Vec<f32> = ws
                    .par_chunks(fl)
                    .map(|row| {
                        let mut l = Lanes::default();
                        l.add_squares(row);
                        (l.total().sqrt() + eta as f64) as f32
                    })
                    .collect();
                fs.t.extend(rows);
            }
        }
        fs
    }

    pub fn scales(&self) -> &[f32] {
        &self.t
    }
}

/// Gradient centralization (pytorch_optimizer's `centralize_gradient(g, gc_conv_only=False)`):
/// a flat copy of `g` in which every segment of two or more dimensions has the mean over all
/// dimensions but the first subtracted, filter by filter; 1-D segments are copied unchanged. The
/// mean is summed in f64 (deterministic, whatever the thread count) and rounded once.
pub fn centralized(layout: &Layout, g: &[&[f32]]) -> Vec<f32> {
    let mut out = Vec::with_capacity(layout.len());
    for (s, gs) in layout.segments().iter().zip(g) {
        if s.shape.len() < 2 {
            out.extend_from_slice(gs);
            continue;
        }
        let fl = s.filter_len();
        for row in gs.chunks(fl) {
            let mean = (row.iter().map(|&x| x as f64).sum::<f64>() / fl as f64) as f32;
            out.extend(row.iter().map(|&x| x - mean));
        }
    }
    out
}

/// The factor `T` of scale-aware rules, elementwise.
#[derive(Clone, Copy)]
pub enum Scale<'a> {
    One,
    /// `|w|` (adaptive SAM).
    AbsW,
    /// `|w| + η` on weights, 1 on biases (ASAM element-wise).
    AbsWPlus(f32),
    /// `‖w_f‖ + η` per filter on weights, 1 on biases (ASAM filter-wise).
    Filter(&'a FilterScales),
}

impl Scale<'_> {
    /// Writes `T` for elements `start..` of a unit; returns false when `T ≡ 1` there.
    #[inline(always)]
    fn fill(&self, info: &ChunkInfo, start: usize, w: &[f32], out: &mut [f32]) -> bool {
        match *self {
            Scale::One => false,
            Scale::AbsW => {
                for (o, &x) in out.iter_mut().zip(w) {
                    *o = x.abs();
                }
                true
            }
            Scale::AbsWPlus(eta) => {
                if info.kind == ParamKind::Bias {
                    return false;
                }
                for (o, &x) in out.iter_mut().zip(w) {
                    *o = x.abs() + eta;
                }
                true
            }
            Scale::Filter(fs) => {
                if info.kind == ParamKind::Bias {
                    return false;
                }
                let fl = fs.filter_len[info.segment];
                let base = fs.seg_start[info.segment];
                let first = info.seg_offset + start;
                for (j, o) in out.iter_mut().enumerate() {
                    *o = fs.t[base + (first + j) / fl];
                }
                true
            }
        }
    }
}

/// Which coordinates the direction keeps, and what it subtracts.
#[derive(Clone, Copy)]
pub enum Base<'a> {
    /// `g`
    Grad,
    /// `M ⊙ g` (Sparse SAM).
    Masked(&'a Bitset),
    /// `g − σ·m_prev` (FriendlySAM after its first step).
    Friendly { sigma: f32 },
}

/// A perturbation direction: `T ⊙ base` enters the norm, `T ⊙ (T ⊙ base)` the perturbation.
#[derive(Clone, Copy)]
pub struct Dir<'a> {
    pub base: Base<'a>,
    pub scale: Scale<'a>,
}

impl Dir<'_> {
    pub const PLAIN: Dir<'static> = Dir {
        base: Base::Grad,
        scale: Scale::One,
    };

    #[inline(always)]
    fn base_tile(&self, info: &ChunkInfo, start: usize, g: &[f32], m: &[f32], out: &mut [f32]) {
        match self.base {
            Base::Grad => out.copy_from_slice(g),
            // m·g with m ∈ {0, 1}; a select keeps a non-finite g out of masked-off coordinates
            // (the finiteness check sees all of g separately).
            Base::Masked(mask) => masked_tile(mask, info.global + start, g, out),
            Base::Friendly { sigma } => {
                for ((o, &x), &mp) in out.iter_mut().zip(g).zip(m) {
                    *o = x - mp * sigma;
                }
            }
        }
    }
}

/// `out[j] = if mask[start + j] { g[j] } else { 0 }`: the mask's bytes read in place, eight
/// coordinates per byte (a shift and an and per vector with AVX2), scalar at the ends. The same
/// values as `Bitset::expand` followed by a select.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn masked_tile(mask: &Bitset, start: usize, g: &[f32], out: &mut [f32]) {
    let bytes: &[u8] = bytemuck::cast_slice(mask.words());
    // x's bits and-ed with all ones (bit set) or all zeros (+0.0): no branch on random bits.
    let keep = |bit: u8, x: f32| f32::from_bits(x.to_bits() & (bit as u32).wrapping_neg());
    let pick = |i: usize, x: f32| keep((bytes[i >> 3] >> (i & 7)) & 1, x);
    let n = g.len().min(out.len());
    let mut j = 0;
    while j < n && (start + j) & 7 != 0 {
        out[j] = pick(start + j, g[j]);
        j += 1;
    }
    let whole = (n - j) / 8;
    let b0 = (start + j) >> 3;
    let body = j..j + whole * 8;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available (checked just above); one byte per 8 floats of each slice.
        unsafe {
            masked_avx2(
                &bytes[b0..b0 + whole],
                &g[body.clone()],
                &mut out[body.clone()],
            )
        };
        j += whole * 8;
        while j < n {
            out[j] = pick(start + j, g[j]);
            j += 1;
        }
        return;
    }
    for ((&b, o), x) in bytes[b0..b0 + whole]
        .iter()
        .zip(out[body.clone()].chunks_exact_mut(8))
        .zip(g[body].chunks_exact(8))
    {
        for l in 0..8 {
            o[l] = keep((b >> l) & 1, x[l]);
        }
    }
    j += whole * 8;
    while j < n {
        out[j] = pick(start + j, g[j]);
        j += 1;
    }
}

/// The body of [`masked_tile`] with AVX2: each mask byte broadcast, tested against the eight
/// bit values at once, and the all-ones/all-zeros result and-ed with eight floats of `g`.
///
/// # Safety
/// AVX2 must be available, and `g.len() == out.len() == 8 * bytes.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn masked_avx2(bytes: &[u8], g: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    let (src, dst) = (g.as_ptr(), out.as_mut_ptr());
    for (k, &b) in bytes.iter().enumerate() {
        let set = _mm256_and_si256(_mm256_set1_epi32(b as i32), bits);
        let keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(set, bits));
        let x = _mm256_loadu_ps(src.add(8 * k));
        _mm256_storeu_ps(dst.add(8 * k), _mm256_and_ps(x, keep));
    }
}

/// FriendlySAM's EMA written by the norm pass into the next-state buffer.
#[derive(Clone, Copy)]
pub struct Ema {
    pub lambda: f32,
    /// First step: `m ← g`.
    pub first: bool,
}

/// Result of a norm pass: `Σ x²` of the direction and whether `g` was finite everywhere.
#[derive(Clone, Debug)]
pub struct NormOut {
    pub sum_sq: f64,
    pub finite: bool,
    /// Per-unit partial sums, for per-segment norms.
    pub parts: Vec<f64>,
}

impl NormOut {
    pub fn norm(&self) -> f64 {
        self.sum_sq.sqrt()
    }
}

fn empty_units<'a>(n: usize) -> Vec<&'a [f32]> {
    vec![&[][..]; n]
}

/// FriendlySAM's EMA of one tile into `out` (`m ← g` at the first step), through the L1 tile
/// `buf` when it is streamed.
#[inline(always)]
fn ema_tile(nt: bool, ema: Ema, out: &mut [f32], m: &[f32], g: &[f32], buf: &mut [f32]) {
    if ema.first {
        put(nt, out, g);
    } else {
        let c = 1.0 - ema.lambda;
        for ((o, &mp), &x) in buf.iter_mut().zip(m).zip(g) {
            *o = mp * ema.lambda + x * c;
        }
        put(nt, out, buf);
    }
}

/// Pass 1: `‖T ⊙ base(g)‖²`, the non-finite check over all of `g` (and of `also_check`), and
/// FriendlySAM's EMA.
pub fn norm_pass(
    chunks: &Chunks,
    dir: Dir,
    g: &[&[f32]],
    w: Option<&[&[f32]]>,
    m: Option<&[&[f32]]>,
    ema: Option<(Ema, Vec<&mut [f32]>)>,
    also_check: Option<&[&[f32]]>,
) -> NormOut {
    let n = chunks.infos().len();
    let chk = also_check
        .map(<[_]>::to_vec)
        .unwrap_or_else(|| empty_units(n));
    let plain = matches!((dir.base, dir.scale, &ema), (Base::Grad, Scale::One, None));
    let w = w.map(<[_]>::to_vec).unwrap_or_else(|| empty_units(n));
    let m = m.map(<[_]>::to_vec).unwrap_or_else(|| empty_units(n));
    let (ema, mut next) = match ema {
        Some((e, v)) => (Some(e), v.into_iter().map(Some).collect::<Vec<_>>()),
        None => (None, (0..n).map(|_| None).collect()),
    };
    let nt = stream::worth_it(chunks.total_len());
    let partial: Vec<(f64, f32)> = chunks
        .infos()
        .par_iter()
        .zip(g.par_iter())
        .zip(w.par_iter())
        .zip(m.par_iter())
        .zip(next.par_iter_mut().zip(chk.par_iter()))
        .map(|((((info, g), w), m), (next, chk))| {
            simd(
                #[inline(always)]
                || {
                    let mut lanes = Lanes::default();
                    let mut bad = poison(chk);
                    let mut dir_t = [0f32; TILE];
                    let mut t_t = [0f32; TILE];
                    let mut m_t = [0f32; TILE];
                    let mut s = 0;
                    while s < info.len {
                        let e = TILE.min(info.len - s);
                        let gt = &g[s..s + e];
                        if plain {
                            // Σ g² in f64 cannot overflow from f32 values: it is finite iff g is.
                            lanes.add_squares(gt);
                            s += e;
                            continue;
                        }
                        let mt = if m.is_empty() { &[][..] } else { &m[s..s + e] };
                        bad += poison(gt);
                        let d = &mut dir_t[..e];
                        let wt = if w.is_empty() { &[][..] } else { &w[s..s + e] };
                        let scaled = dir.scale.fill(info, s, wt, &mut t_t[..e]);
                        // The direction `T ⊙ base(g)` of this tile; for Base::Grad formed straight from
                        // g (the values the copy-then-scale form holds).
                        let sq: &[f32] = match (dir.base, scaled) {
                            (Base::Grad, true) => {
                                for ((x, &gv), &t) in d.iter_mut().zip(gt).zip(&t_t[..e]) {
                                    *x = gv * t;
                                }
                                d
                            }
                            (Base::Grad, false) => gt,
                            _ => {
                                dir.base_tile(info, s, gt, mt, d);
                                if scaled {
                                    for (x, &t) in d.iter_mut().zip(&t_t[..e]) {
                                        *x *= t;
                                    }
                                }
                                d
                            }
                        };
                        lanes.add_squares(sq);
                        if let (Some(ema), Some(next)) = (ema, next.as_deref_mut()) {
                            ema_tile(nt, ema, &mut next[s..s + e], mt, gt, &mut m_t[..e]);
                        }
                        s += e;
                    }
                    if nt {
                        stream::fence();
                    }
                    let total = lanes.total();
                    if !total.is_finite() {
                        bad = f32::NAN;
                    }
                    (total, bad)
                },
            )
        })
        .collect();
    let parts: Vec<f64> = partial.iter().map(|p| p.0).collect();
    NormOut {
        sum_sq: tree_sum(&parts),
        finite: partial.iter().all(|p| p.1 == 0.0),
        parts,
    }
}

/// A buffer to copy during the perturbation, and its destination.
pub type CopyTo<'a, 'b> = (&'a [&'b [f32]], Vec<&'a mut [f32]>);

/// Pass 2: `w_old ← w; w ← w + s·T⊙(T⊙base(g))`, optionally copying `src` into `copy_to`
/// (the gradient GSAM, LookSAM and ImbSAM need again after pass 2).
#[allow(clippy::too_many_arguments)]
pub fn perturb_pass(
    chunks: &Chunks,
    dir: Dir,
    scale: f32,
    w: Vec<&mut [f32]>,
    w_old: Vec<&mut [f32]>,
    g: &[&[f32]],
    m: Option<&[&[f32]]>,
    copy: Option<CopyTo>,
) {
    let n = chunks.infos().len();
    let m = m.map(<[_]>::to_vec).unwrap_or_else(|| empty_units(n));
    let (csrc, mut cdst) = match copy {
        Some((s, d)) => (s.to_vec(), d.into_iter().map(Some).collect::<Vec<_>>()),
        None => (empty_units(n), (0..n).map(|_| None).collect()),
    };
    let mut w = w;
    let mut w_old = w_old;
    let plain = matches!((dir.base, dir.scale), (Base::Grad, Scale::One));
    let nt = stream::worth_it(chunks.total_len());
    chunks
        .infos()
        .par_iter()
        .zip(w.par_iter_mut())
        .zip(w_old.par_iter_mut())
        .zip(g.par_iter())
        .zip(m.par_iter())
        .zip(csrc.par_iter().zip(cdst.par_iter_mut()))
        // Last unit first: the norm pass just streamed g (and FriendlySAM's m) front to back,
        // so its last units are still in the last-level cache.
        .rev()
        .for_each(|(((((info, w), w_old), g), m), (csrc, cdst))| {
            simd(
                #[inline(always)]
                || {
                    if let Some(d) = cdst.as_deref_mut() {
                        put(nt, d, csrc);
                    }
                    if plain && !nt {
                        // One sweep: save, then step along g.
                        for ((wv, o), &gv) in w.iter_mut().zip(w_old.iter_mut()).zip(g.iter()) {
                            *o = *wv;
                            *wv += gv * scale;
                        }
                        return;
                    }
                    let mut dir_t = [0f32; TILE];
                    let mut t_t = [0f32; TILE];
                    let mut s = 0;
                    while s < info.len {
                        let e = TILE.min(info.len - s);
                        // Save the tile first (streamed past the cache when the arena is large); the
                        // tile of w stays in L1 for the step below.
                        put(nt, &mut w_old[s..s + e], &w[s..s + e]);
                        if plain {
                            for (wv, &gv) in w[s..s + e].iter_mut().zip(&g[s..s + e]) {
                                *wv += gv * scale;
                            }
                            s += e;
                            continue;
                        }
                        let mt = if m.is_empty() { &[][..] } else { &m[s..s + e] };
                        let d = &mut dir_t[..e];
                        let gt = &g[s..s + e];
                        let wt = &mut w[s..s + e];
                        let grad = matches!(dir.base, Base::Grad);
                        if !grad {
                            dir.base_tile(info, s, gt, mt, d);
                        }
                        // The base, for Base::Grad read straight from g (the values the copy would hold).
                        let bt: &[f32] = if grad { gt } else { d };
                        match dir.scale {
                            // Adaptive SAM: e = (w² ⊙ g)·s, as the reference implementations.
                            Scale::AbsW => {
                                for (wv, &x) in wt.iter_mut().zip(bt) {
                                    *wv += x * (*wv * *wv) * scale;
                                }
                            }
                            _ if dir.scale.fill(info, s, wt, &mut t_t[..e]) => {
                                for ((wv, &x), &t) in wt.iter_mut().zip(bt).zip(&t_t[..e]) {
                                    *wv += t * (t * x) * scale;
                                }
                            }
                            _ => {
                                for (wv, &x) in wt.iter_mut().zip(bt) {
                                    *wv += x * scale;
                                }
                            }
                        }
                        s += e;
                    }
                    if nt {
                        stream::fence();
                    }
                },
            )
        });
}

/// Result of a dot pass, with per-unit partials for per-segment reductions.
#[derive(Clone, Debug)]
pub struct DotOut {
    pub xy: f64,
    pub yy: f64,
    pub finite: bool,
    pub xy_parts: Vec<f64>,
    pub yy_parts: Vec<f64>,
}

/// `(⟨x, y⟩, ‖y‖², y finite)` in one pass: GSAM's projection, LookSAM's cosine, and the
/// non-finite check of a pass-2 gradient (with `x = None`).
pub fn dot_pass(chunks: &Chunks, x: Option<&[&[f32]]>, y: &[&[f32]]) -> DotOut {
    let n = chunks.infos().len();
    let x = x.map(<[_]>::to_vec).unwrap_or_else(|| empty_units(n));
    let parts: Vec<(f64, f64, f32)> = x
        .par_iter()
        .zip(y.par_iter())
        .map(|(x, y)| {
            simd(
                #[inline(always)]
                || {
                    let mut yy = Lanes::default();
                    let mut xy = Lanes::default();
                    if x.is_empty() {
                        yy.add_squares(y);
                    } else {
                        Lanes::add_squares_and_products(&mut yy, &mut xy, x, y);
                    }
                    // Σ y² in f64 is finite iff y is (f32 squares cannot overflow it).
                    let yy = yy.total();
                    (xy.total(), yy, if yy.is_finite() { 0.0 } else { f32::NAN })
                },
            )
        })
        .collect();
    let xy_parts: Vec<f64> = parts.iter().map(|p| p.0).collect();
    let yy_parts: Vec<f64> = parts.iter().map(|p| p.1).collect();
    DotOut {
        xy: tree_sum(&xy_parts),
        yy: tree_sum(&yy_parts),
        finite: parts.iter().all(|p| p.2 == 0.0),
        xy_parts,
        yy_parts,
    }
}

/// Per-segment sums of per-unit partials (a unit never crosses a segment), each in the same
/// fixed tree as the global sum.
pub fn per_segment(chunks: &Chunks, parts: &[f64], segments: usize) -> Vec<f64> {
    let mut out = vec![0.0; segments];
    let infos = chunks.infos();
    let mut i = 0;
    while i < infos.len() {
        let s = infos[i].segment;
        let mut j = i;
        while j < infos.len() && infos[j].segment == s {
            j += 1;
        }
        out[s] = tree_sum(&parts[i..j]);
        i = j;
    }
    out
}

/// A coefficient that is either global or one per segment.
#[derive(Clone, Copy)]
pub enum Coef<'a> {
    Global(f32),
    PerSegment(&'a [f32]),
}

impl Coef<'_> {
    #[inline]
    fn at(&self, info: &ChunkInfo) -> f32 {
        match *self {
            Coef::Global(c) => c,
            Coef::PerSegment(v) => v[info.segment],
        }
    }
}

/// The direction the base optimizer steps with: `a·x + b·(y − c·x)`. The literal form keeps
/// the invariants exact: GSAM's `g_p − α·(g − proj·g_p)` is `g_p` bit for bit when `α = 0`,
/// and when `ρ = 0` (`proj` rounds to 1, so `g − proj·g_p` is exactly 0).
pub struct Combine<'a, 'b> {
    pub x: &'a [&'b [f32]],
    pub a: f32,
    pub y: Option<Second<'a, 'b>>,
}

/// The `b·(y − c·x)` term of a [`Combine`].
pub struct Second<'a, 'b> {
    pub y: &'a [&'b [f32]],
    pub b: Coef<'a>,
    pub c: f32,
}

/// LookSAM's side output of a SAM step: `g_v = x − c·g`, and `‖g_v‖²` returned.
pub struct SideGv<'a, 'b> {
    pub g: &'a [&'b [f32]],
    pub c: Coef<'a>,
    pub out: Vec<&'a mut [f32]>,
}

/// Pass 3: `w ← update(src, a·x + b·y)`, where `src` is `w_old` (the exact restore) or `w`
/// itself. Returns the per-unit partials of `‖g_v‖²` when LookSAM's side output is asked for.
#[allow(clippy::too_many_arguments)]
pub fn update_pass(
    chunks: &Chunks,
    opt: &BaseOptimizer,
    sc: &StepScalars,
    w: Vec<&mut [f32]>,
    w_old: Option<&[&[f32]]>,
    dir: Combine,
    state: [Vec<&mut [f32]>; 3],
    side: Option<SideGv>,
) -> Vec<f64> {
    let n = chunks.infos().len();
    let src = w_old.map(<[_]>::to_vec).unwrap_or_else(|| empty_units(n));
    let (y, b, yc) = match dir.y {
        Some(sec) => (sec.y.to_vec(), sec.b, sec.c),
        None => (empty_units(n), Coef::Global(0.0), 0.0),
    };
    let (sg, sc_c, mut sout) = match side {
        Some(s) => (
            s.g.to_vec(),
            s.c,
            s.out.into_iter().map(Some).collect::<Vec<_>>(),
        ),
        None => (
            empty_units(n),
            Coef::Global(0.0),
            (0..n).map(|_| None).collect(),
        ),
    };
    let [s0, s1, s2] = state;
    let (mut s0, mut s1, mut s2) = (optional(s0, n), optional(s1, n), optional(s2, n));
    let mut w = w;
    let a = dir.a;
    // The restore writes w without reading it: stream it on large arenas. The in-place update
    // reads w, so its lines are in cache and plain stores cost no extra read.
    let nt = !src.iter().all(|u| u.is_empty()) && stream::worth_it(chunks.total_len());
    let mut parts: Vec<f64> = chunks
        .infos()
        .par_iter()
        .zip(w.par_iter_mut())
        .zip(src.par_iter())
        .zip(dir.x.par_iter())
        .zip(y.par_iter())
        .zip(
            s0.par_iter_mut()
                .zip(s1.par_iter_mut())
                .zip(s2.par_iter_mut()),
        )
        .zip(sg.par_iter().zip(sout.par_iter_mut()))
        // Last unit first: the check of g2 (and GSAM's dot pass) just streamed it front to
        // back, so its last units are still in the last-level cache. Reversed back below.
        .rev()
        .map(
            |((((((info, w), src), x), y), ((s0, s1), s2)), (sg, sout))| {
                simd(
                    #[inline(always)]
                    || {
                        let len = w.len();
                        let b = b.at(info);
                        let c = sc_c.at(info);
                        let mut d_t = [0f32; TILE];
                        let mut w_t = [0f32; TILE];
                        let mut o_t = [0f32; TILE];
                        let mut v_t = [0f32; TILE];
                        let mut gv = Lanes::default();
                        let mut s = 0;
                        while s < len {
                            let e = TILE.min(len - s);
                            let xt = &x[s..s + e];
                            let d = &mut d_t[..e];
                            let direct = y.is_empty() && a == 1.0;
                            if y.is_empty() {
                                if direct {
                                    // The direction is x itself, passed without a copy below.
                                } else {
                                    for (o, &xv) in d.iter_mut().zip(xt) {
                                        *o = a * xv;
                                    }
                                }
                            } else {
                                for ((o, &xv), &yv) in d.iter_mut().zip(xt).zip(&y[s..s + e]) {
                                    *o = a * xv + b * (yv - yc * xv);
                                }
                            }
                            if let Some(out) = sout.as_deref_mut() {
                                let o = &mut v_t[..e];
                                for ((o, &xv), &gvv) in o.iter_mut().zip(xt).zip(&sg[s..s + e]) {
                                    *o = xv - c * gvv;
                                }
                                gv.add_squares(o);
                                put(nt, &mut out[s..s + e], o);
                            }
                            let wsrc: &[f32] = if src.is_empty() {
                                w_t[..e].copy_from_slice(&w[s..s + e]);
                                &w_t[..e]
                            } else {
                                &src[s..s + e]
                            };
                            let (t0, t1, t2) = (sub(s0, s, e), sub(s1, s, e), sub(s2, s, e));
                            let dir = if direct { xt } else { d };
                            let st = TileState { s: [t0, t1, t2] };
                            if nt {
                                // Updated into L1, then streamed out.
                                opt.apply(sc, wsrc, dir, &mut o_t[..e], st);
                                stream::store_unfenced(&mut w[s..s + e], &o_t[..e]);
                            } else {
                                opt.apply(sc, wsrc, dir, &mut w[s..s + e], st);
                            }
                            s += e;
                        }
                        if nt {
                            stream::fence();
                        }
                        gv.total()
                    },
                )
            },
        )
        .collect();
    parts.reverse();
    parts
}

/// Per-unit views of a buffer that may be absent (an empty vector).
fn optional(v: Vec<&mut [f32]>, n: usize) -> Vec<Option<&mut [f32]>> {
    if v.is_empty() {
        (0..n).map(|_| None).collect()
    } else {
        v.into_iter().map(Some).collect()
    }
}

fn sub<'x>(o: &'x mut Option<&mut [f32]>, s: usize, e: usize) -> &'x mut [f32] {
    match o {
        Some(v) => &mut v[s..s + e],
        None => &mut [],
    }
}

/// `w ← w_old`: the exact restore of a skipped step.
pub fn restore_pass(w: Vec<&mut [f32]>, w_old: &[&[f32]]) {
    let mut w = w;
    w.par_iter_mut()
        .zip(w_old.par_iter())
        .for_each(|(w, o)| w.copy_from_slice(o));
}

/// `F += g ⊙ g`: SSAM-F's empirical Fisher, one per-sample gradient at a time.
pub fn fisher_accumulate(fisher: &mut [f32], g: &[f32]) {
    fisher
        .par_chunks_mut(crate::chunks::CHUNK)
        .zip(g.par_chunks(crate::chunks::CHUNK))
        .for_each(|(f, g)| {
            for (f, &x) in f.iter_mut().zip(g) {
                *f += x * x;
            }
        });
}
