//! Convolution as im2col + GEMM on channel-major (`[C, N, H, W]`) activations.
//!
//! With the batch inside each channel plane, the output of `W[cout, cin·k·k] · col` for a
//! chunk of images is the chunk's slice of the channel-major output. The batch is cut into
//! chunks whose column matrix stays cache-sized (large column matrices make the GEMM stream
//! its packed operand from memory), and the chunks are spread over the threads, each with its
//! own column buffer, single-threaded GEMMs and, in the backward pass, its own weight-gradient
//! accumulator (summed at the end). The backward pass recomputes the columns instead of
//! keeping them: ResNet-18 at batch 32 would need hundreds of MB of columns.
use std::iter::StepBy;
use std::ops::Range;

use rayon::prelude::*;

use super::gemm::{Gemm, MatMut, MatRef};
use super::winograd::{self, Direction};
use crate::backend::{need, Conv2d, Dims, ParamGrad};
use crate::error::Result;

/// Elements of one sample's weight-gradient block in the per-sample squared gradients.
const PSG_BLOCK: usize = 1 << 16;

/// Per-thread workspaces of the convolutions.
#[derive(Default)]
pub(super) struct ThreadBufs {
    pub(super) col: Vec<f32>,
    pub(super) acc: Vec<f32>,
    pub(super) tmp: Vec<f32>,
    /// One zero-bordered input plane of the Winograd input transform.
    pub(super) pad: Vec<f32>,
}

pub(super) struct ConvScratch<'a> {
    pub bufs: &'a mut Vec<ThreadBufs>,
    pub budget: usize,
    pub threads: usize,
    /// The Winograd-transformed filters of the convolution being run.
    pub wino_u: &'a mut Vec<f32>,
    /// Whether 3×3 stride-1 convolutions may run through Winograd (else im2col + GEMM).
    pub winograd: bool,
}

impl ConvScratch<'_> {
    /// The same workspaces for one more call.
    pub(super) fn reborrow(&mut self) -> ConvScratch<'_> {
        ConvScratch {
            bufs: self.bufs,
            budget: self.budget,
            threads: self.threads,
            wino_u: self.wino_u,
            winograd: self.winograd,
        }
    }
}

/// A pointer that may cross threads; every use writes a region no other thread touches.
#[derive(Clone, Copy)]
pub(super) struct SharedMut(pub(super) *mut f32);
// SAFETY: see the uses: each thread writes disjoint image ranges.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not the field).
    pub(super) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// How the batch is cut: `chunks` chunks of `nb` images (the last may be shorter), run by
/// `groups` threads, chunk `c` by thread `c % groups`; `gemm_threads` per GEMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) nb: usize,
    pub(super) chunks: usize,
    pub(super) groups: usize,
    pub(super) gemm_threads: usize,
}

fn plan(conv: &Conv2d, xd: Dims, budget: usize, threads: usize) -> Plan {
    plan_images(
        conv.cin * conv.k * conv.k * conv.out_dims(xd).hw(),
        xd.n,
        budget,
        threads,
    )
}

/// Chunks of `n` images whose workspace of `per_image` values each stays within `budget`,
/// at least one chunk per thread where there are enough images.
pub(super) fn plan_images(per_image: usize, n: usize, budget: usize, threads: usize) -> Plan {
    let per_image = per_image.max(1);
    let n = n.max(1);
    let threads = threads.max(1);
    let mut chunks = (n * per_image).div_ceil(budget.max(1)).max(threads.min(n));
    if chunks >= threads {
        chunks = chunks.div_ceil(threads) * threads;
    }
    let nb = n.div_ceil(chunks.min(n));
    let chunks = n.div_ceil(nb);
    let groups = threads.min(chunks);
    Plan {
        nb,
        chunks,
        groups,
        gemm_threads: if groups < threads { threads } else { 1 },
    }
}

/// Runs `body` on `pl.groups` threads at once: thread `t` with the workspaces `bufs[t]` (added
/// as needed) and its chunks of the plan, `t, t + groups, …`.
pub(super) fn for_thread_chunks<F>(bufs: &mut Vec<ThreadBufs>, pl: Plan, body: F) -> Result<()>
where
    F: Fn(&mut ThreadBufs, StepBy<Range<usize>>) -> Result<()> + Sync + Send,
{
    if bufs.len() < pl.groups {
        bufs.resize_with(pl.groups, ThreadBufs::default);
    }
    bufs[..pl.groups]
        .par_iter_mut()
        .enumerate()
        .try_for_each(|(t, tb)| body(tb, (t..pl.chunks).step_by(pl.groups)))
}

/// Output columns `lo..hi` whose input column `ow·s + kw − p` lies inside `0..w`.
fn valid_cols(wo: usize, w: usize, s: usize, p: usize, kw: usize) -> (usize, usize) {
    // ow·s ≥ p − kw and ow·s < w + p − kw.
    let lo = p.saturating_sub(kw).div_ceil(s).min(wo);
    let hi = (w + p).saturating_sub(kw).div_ceil(s).min(wo).max(lo);
    (lo, hi)
}

/// Columns of images `n0..n0 + nb`: row `(ci, kh, kw)`, column `(n, oh, ow)`.
fn im2col(conv: &Conv2d, xd: Dims, x: &[f32], n0: usize, nb: usize, col: &mut [f32]) {
    let od = conv.out_dims(xd);
    let (k, s, p) = (conv.k, conv.stride, conv.pad);
    let (h, w, ho, wo) = (xd.h, xd.w, od.h, od.w);
    let hw = h * w;
    let cols = nb * ho * wo;
    let plane_len = xd.n * hw;
    for (ci, cc) in col[..conv.cin * k * k * cols]
        .chunks_mut(k * k * cols)
        .enumerate()
    {
        let plane = &x[ci * plane_len + n0 * hw..ci * plane_len + (n0 + nb) * hw];
        for kh in 0..k {
            for kw in 0..k {
                let row = &mut cc[(kh * k + kw) * cols..(kh * k + kw + 1) * cols];
                let (lo, hi) = valid_cols(wo, w, s, p, kw);
                for n in 0..nb {
                    let img = &plane[n * hw..(n + 1) * hw];
                    for oh in 0..ho {
                        let out = &mut row[(n * ho + oh) * wo..(n * ho + oh + 1) * wo];
                        let ih = (oh * s + kh) as isize - p as isize;
                        if ih < 0 || ih >= h as isize {
                            out.fill(0.0);
                            continue;
                        }
                        let src = &img[ih as usize * w..(ih as usize + 1) * w];
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        if s == 1 {
                            out[lo..hi].copy_from_slice(&src[lo + kw - p..hi + kw - p]);
                        } else if lo < hi {
                            let first = lo * s + kw - p;
                            for (o, v) in out[lo..hi].iter_mut().zip(src[first..].iter().step_by(s))
                            {
                                *o = *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adds the columns of images `n0..n0 + nb` back into their input positions (the adjoint of
/// [`im2col`]); the images' planes are zeroed first unless `accumulate`.
///
/// # Safety
/// `dx` points to a channel-major buffer of `xd.len()` values whose planes of images
/// `n0..n0 + nb` no other thread accesses during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn col2im(
    conv: &Conv2d,
    xd: Dims,
    col: &[f32],
    n0: usize,
    nb: usize,
    dx: SharedMut,
    accumulate: bool,
) {
    let od = conv.out_dims(xd);
    let (k, s, p) = (conv.k, conv.stride, conv.pad);
    let (h, w, ho, wo) = (xd.h, xd.w, od.h, od.w);
    let hw = h * w;
    let cols = nb * ho * wo;
    for ci in 0..conv.cin {
        let cc = &col[ci * k * k * cols..(ci + 1) * k * k * cols];
        for j in 0..nb {
            // SAFETY: image `n0 + j` of channel `ci` lies inside the buffer and belongs to
            // this call alone (the caller's contract).
            let plane = std::slice::from_raw_parts_mut(dx.ptr().add((ci * xd.n + n0 + j) * hw), hw);
            if !accumulate {
                plane.fill(0.0);
            }
            for kh in 0..k {
                for kw in 0..k {
                    let row = &cc[(kh * k + kw) * cols + j * ho * wo..][..ho * wo];
                    let (lo, hi) = valid_cols(wo, w, s, p, kw);
                    for oh in 0..ho {
                        let ih = (oh * s + kh) as isize - p as isize;
                        if ih < 0 || ih >= h as isize {
                            continue;
                        }
                        let src = &row[oh * wo..(oh + 1) * wo];
                        let dst = &mut plane[ih as usize * w..(ih as usize + 1) * w];
                        if s == 1 {
                            for (d, v) in dst[lo + kw - p..hi + kw - p].iter_mut().zip(&src[lo..hi])
                            {
                                *d += v;
                            }
                        } else if lo < hi {
                            let first = lo * s + kw - p;
                            for (d, v) in dst[first..].iter_mut().step_by(s).zip(&src[lo..hi]) {
                                *d += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn forward(
    s: ConvScratch<'_>,
    conv: &Conv2d,
    xd: Dims,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
) -> Result<()> {
    conv.check_input(xd)?;
    let od = conv.out_dims(xd);
    need("conv2d input", x.len(), xd.len())?;
    need("conv2d weight", w.len(), conv.weight_len())?;
    need("conv2d output", y.len(), od.len())?;
    if s.winograd && winograd::applies(conv, xd) {
        return winograd::run(s, conv, Direction::Forward, xd, w, x, y, false);
    }
    let ckk = conv.cin * conv.k * conv.k;
    let (hwo, n_all) = (od.hw(), xd.n);
    let pl = plan(conv, xd, s.budget, s.threads);
    let g = Gemm {
        threads: pl.gemm_threads,
    };
    let y_len = od.len();
    let yp = SharedMut(y.as_mut_ptr());
    for_thread_chunks(s.bufs, pl, |tb, chunks| -> Result<()> {
        for c in chunks {
            let n0 = c * pl.nb;
            let nb = pl.nb.min(n_all - n0);
            let cols = nb * hwo;
            let rhs = if conv.is_pointwise() {
                MatRef::new(x, n0 * hwo, n_all * hwo, 1)
            } else {
                if tb.col.len() < ckk * cols {
                    tb.col.resize(ckk * cols, 0.0);
                }
                im2col(conv, xd, x, n0, nb, &mut tb.col);
                MatRef::rows(&tb.col[..ckk * cols], cols)
            };
            // SAFETY: columns n0·hwo..(n0 + nb)·hwo of every output row belong to this
            // chunk alone.
            unsafe {
                g.run_shared(
                    conv.cout,
                    cols,
                    ckk,
                    yp.ptr(),
                    y_len,
                    (n0 * hwo, n_all * hwo, 1),
                    false,
                    MatRef::rows(w, ckk),
                    rhs,
                )?;
            }
        }
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    mut s: ConvScratch<'_>,
    conv: &Conv2d,
    xd: Dims,
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    mode: ParamGrad,
    dw: &mut [f32],
    dx: Option<&mut [f32]>,
    accumulate_dx: bool,
) -> Result<()> {
    conv.check_input(xd)?;
    let od = conv.out_dims(xd);
    need("conv2d input", x.len(), xd.len())?;
    need("conv2d output gradient", dy.len(), od.len())?;
    need("conv2d weight", w.len(), conv.weight_len())?;
    need("conv2d weight gradient", dw.len(), conv.weight_len())?;
    if let Some(dx) = dx.as_deref() {
        need("conv2d input gradient", dx.len(), xd.len())?;
    }
    let ckk = conv.cin * conv.k * conv.k;
    let wl = conv.weight_len();
    let cout = conv.cout;
    let (hwo, hwi, n_all) = (od.hw(), xd.hw(), xd.n);
    let pl = plan(conv, xd, s.budget, s.threads);
    let g = Gemm {
        threads: pl.gemm_threads,
    };
    let pointwise = conv.is_pointwise();
    let dx_len = xd.len();
    // A Winograd convolution gives the data gradient after the weight gradient's sweep.
    let winograd = s.winograd && winograd::applies(conv, xd);
    if winograd && mode == ParamGrad::Sum {
        winograd::weight_grad(s.reborrow(), conv, xd, x, dy, dw)?;
        if let Some(dx) = dx {
            winograd::run(s, conv, Direction::Data, od, w, dy, dx, accumulate_dx)?;
        }
        return Ok(());
    }
    let (dx_winograd, dx) = if winograd { (dx, None) } else { (None, dx) };
    let dxp = dx.map(|d| SharedMut(d.as_mut_ptr()));
    for_thread_chunks(s.bufs, pl, |tb, chunks| -> Result<()> {
        if tb.acc.len() < wl {
            tb.acc.resize(wl, 0.0);
        }
        if mode == ParamGrad::PerSampleSq {
            tb.acc[..wl].fill(0.0);
            if tb.tmp.len() < wl {
                tb.tmp.resize(wl, 0.0);
            }
        }
        let mut first = true;
        for c in chunks {
            let n0 = c * pl.nb;
            let nb = pl.nb.min(n_all - n0);
            let cols = nb * hwo;
            if !pointwise {
                if tb.col.len() < ckk * cols {
                    tb.col.resize(ckk * cols, 0.0);
                }
                im2col(conv, xd, x, n0, nb, &mut tb.col);
            }
            {
                // The columns of this chunk, as a [ckk, cols] view.
                let colv = if pointwise {
                    MatRef::new(x, n0 * hwi, n_all * hwi, 1)
                } else {
                    MatRef::rows(&tb.col[..ckk * cols], cols)
                };
                match mode {
                    ParamGrad::Sum => {
                        let lhs = MatRef::new(dy, n0 * hwo, n_all * hwo, 1);
                        let rhs = MatRef::new(colv.data, colv.off, colv.cs, colv.rs);
                        g.run(
                            cout,
                            ckk,
                            cols,
                            MatMut::rows(&mut tb.acc[..wl], ckk),
                            !first,
                            lhs,
                            rhs,
                        )?;
                    }
                    ParamGrad::PerSampleSq => {
                        // Blocks of output rows, so that each sample's block of the weight
                        // gradient is squared into the accumulator while it is in cache.
                        let rows = (PSG_BLOCK / ckk).clamp(1, cout);
                        for r0 in (0..cout).step_by(rows) {
                            let m = rows.min(cout - r0);
                            let (acc, tmp) = (
                                &mut tb.acc[r0 * ckk..(r0 + m) * ckk],
                                &mut tb.tmp[..m * ckk],
                            );
                            for j in 0..nb {
                                let lhs = MatRef::new(
                                    dy,
                                    r0 * n_all * hwo + (n0 + j) * hwo,
                                    n_all * hwo,
                                    1,
                                );
                                let rhs = MatRef::new(
                                    colv.data,
                                    colv.off + j * hwo * colv.cs,
                                    colv.cs,
                                    colv.rs,
                                );
                                g.run(m, ckk, hwo, MatMut::rows(tmp, ckk), false, lhs, rhs)?;
                                for (a, v) in acc.iter_mut().zip(tmp.iter()) {
                                    *a += v * v;
                                }
                            }
                        }
                    }
                }
            }
            first = false;
            if let Some(dxp) = dxp {
                let lhs = MatRef::rows_t(w, ckk);
                let rhs = MatRef::new(dy, n0 * hwo, n_all * hwo, 1);
                if pointwise {
                    // SAFETY: columns n0·hwi..(n0 + nb)·hwi of every input row belong to
                    // this chunk alone.
                    unsafe {
                        g.run_shared(
                            ckk,
                            cols,
                            cout,
                            dxp.ptr(),
                            dx_len,
                            (n0 * hwi, n_all * hwi, 1),
                            accumulate_dx,
                            lhs,
                            rhs,
                        )?;
                    }
                } else {
                    g.run(
                        ckk,
                        cols,
                        cout,
                        MatMut::rows(&mut tb.col[..ckk * cols], cols),
                        false,
                        lhs,
                        rhs,
                    )?;
                    // SAFETY: the planes of images n0..n0 + nb belong to this chunk alone.
                    unsafe { col2im(conv, xd, &tb.col, n0, nb, dxp, accumulate_dx) };
                }
            }
        }
        Ok(())
    })?;
    // Sum the per-thread weight gradients.
    let accs: Vec<&[f32]> = s.bufs[..pl.groups].iter().map(|b| &b.acc[..wl]).collect();
    dw[..wl]
        .par_chunks_mut(1 << 14)
        .enumerate()
        .for_each(|(i, d)| {
            let r = i * (1 << 14)..i * (1 << 14) + d.len();
            if mode == ParamGrad::Sum {
                d.copy_from_slice(&accs[0][r.clone()]);
            } else {
                d.iter_mut()
                    .zip(&accs[0][r.clone()])
                    .for_each(|(d, a)| *d += a);
            }
            for a in &accs[1..] {
                d.iter_mut().zip(&a[r.clone()]).for_each(|(d, a)| *d += a);
            }
        });
    if let Some(dx) = dx_winograd {
        winograd::run(s, conv, Direction::Data, od, w, dy, dx, accumulate_dx)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_the_batch_and_balance_the_threads() {
        let c = Conv2d::new(64, 64, 3, 1, 1);
        for n in [1, 2, 3, 7, 32, 33] {
            for threads in [1, 2, 3] {
                for budget in [1, 1 << 16, 1 << 20, usize::MAX / 4] {
                    let p = plan(&c, Dims::new(n, 64, 32, 32), budget, threads);
                    assert!(p.nb * p.chunks >= n && p.nb * (p.chunks - 1) < n, "{p:?}");
                    assert!(p.groups >= 1 && p.groups <= threads.min(p.chunks));
                }
            }
        }
        let p = plan(&c, Dims::new(32, 64, 32, 32), 1 << 19, 2);
        assert_eq!((p.nb, p.chunks, p.groups, p.gemm_threads), (1, 32, 2, 1));
    }
}
