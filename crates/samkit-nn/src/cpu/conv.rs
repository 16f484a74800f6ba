//! Convolution as im2col + GEMM on channel-major (`[C, N, H, W]`) activations.
//!
//! With the batch inside each channel plane, the output of `W[cout, cin·k·k] · col` is already
//! the channel-major output, so one GEMM covers a chunk of images. The batch is cut into chunks
//! whose column matrix stays within a cache-sized budget; the backward pass recomputes the
//! columns instead of keeping them (the activations of ResNet-18 at batch 32 would need
//! hundreds of MB of columns).
use rayon::prelude::*;

use super::gemm::{Gemm, MatMut, MatRef};
use crate::backend::{Conv2d, Dims, ParamGrad};
use crate::error::{Error, Result};

/// Images per chunk: as many as fit `budget` column elements, at least one.
pub(super) fn chunk_images(conv: &Conv2d, xd: Dims, budget: usize) -> usize {
    let od = conv.out_dims(xd);
    let per_image = conv.cin * conv.k * conv.k * od.hw();
    (budget / per_image.max(1)).clamp(1, xd.n.max(1))
}

/// Columns of images `n0..n0 + nb`: row `(ci, kh, kw)`, column `(n, oh, ow)`.
fn im2col(conv: &Conv2d, xd: Dims, x: &[f32], n0: usize, nb: usize, col: &mut [f32]) {
    let od = conv.out_dims(xd);
    let (k, s, p) = (conv.k, conv.stride, conv.pad);
    let (h, w, ho, wo) = (xd.h, xd.w, od.h, od.w);
    let hw = h * w;
    let cols = nb * ho * wo;
    let plane_len = xd.n * hw;
    col[..conv.cin * k * k * cols]
        .par_chunks_mut(k * k * cols)
        .enumerate()
        .for_each(|(ci, cc)| {
            let plane = &x[ci * plane_len + n0 * hw..ci * plane_len + (n0 + nb) * hw];
            for kh in 0..k {
                for kw in 0..k {
                    let row = &mut cc[(kh * k + kw) * cols..(kh * k + kw + 1) * cols];
                    // Output columns whose input column lies inside the image (stride 1).
                    let lo = p.saturating_sub(kw).min(wo);
                    let hi = (w + p).saturating_sub(kw).min(wo).max(lo);
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
                            if s == 1 {
                                out[..lo].fill(0.0);
                                out[hi..].fill(0.0);
                                out[lo..hi].copy_from_slice(&src[lo + kw - p..hi + kw - p]);
                            } else {
                                for (ow, o) in out.iter_mut().enumerate() {
                                    let iw = (ow * s + kw) as isize - p as isize;
                                    *o = if iw >= 0 && iw < w as isize {
                                        src[iw as usize]
                                    } else {
                                        0.0
                                    };
                                }
                            }
                        }
                    }
                }
            }
        });
}

/// Adds the columns of images `n0..n0 + nb` back into their input positions (the adjoint of
/// [`im2col`]); the images' planes are zeroed first unless `accumulate`.
fn col2im(
    conv: &Conv2d,
    xd: Dims,
    col: &[f32],
    n0: usize,
    nb: usize,
    dx: &mut [f32],
    accumulate: bool,
) {
    let od = conv.out_dims(xd);
    let (k, s, p) = (conv.k, conv.stride, conv.pad);
    let (h, w, ho, wo) = (xd.h, xd.w, od.h, od.w);
    let hw = h * w;
    let cols = nb * ho * wo;
    dx[..xd.len()]
        .par_chunks_mut(xd.n * hw)
        .enumerate()
        .for_each(|(ci, plane)| {
            let plane = &mut plane[n0 * hw..(n0 + nb) * hw];
            if !accumulate {
                plane.fill(0.0);
            }
            let cc = &col[ci * k * k * cols..(ci + 1) * k * k * cols];
            for kh in 0..k {
                for kw in 0..k {
                    let row = &cc[(kh * k + kw) * cols..(kh * k + kw + 1) * cols];
                    let lo = p.saturating_sub(kw).min(wo);
                    let hi = (w + p).saturating_sub(kw).min(wo).max(lo);
                    for n in 0..nb {
                        for oh in 0..ho {
                            let ih = (oh * s + kh) as isize - p as isize;
                            if ih < 0 || ih >= h as isize {
                                continue;
                            }
                            let src = &row[(n * ho + oh) * wo..(n * ho + oh + 1) * wo];
                            let dst = &mut plane
                                [n * hw + ih as usize * w..n * hw + (ih as usize + 1) * w];
                            if s == 1 {
                                for (d, v) in
                                    dst[lo + kw - p..hi + kw - p].iter_mut().zip(&src[lo..hi])
                                {
                                    *d += v;
                                }
                            } else {
                                for (ow, v) in src.iter().enumerate() {
                                    let iw = (ow * s + kw) as isize - p as isize;
                                    if iw >= 0 && iw < w as isize {
                                        dst[iw as usize] += v;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
}

fn check_conv(conv: &Conv2d, xd: Dims) -> Result<()> {
    if xd.c != conv.cin
        || conv.k == 0
        || conv.stride == 0
        || xd.h + 2 * conv.pad < conv.k
        || xd.w + 2 * conv.pad < conv.k
    {
        return Err(Error::shape(
            "conv2d",
            format!("{conv:?} on an input of {xd:?}"),
        ));
    }
    Ok(())
}

fn check_len(what: &'static str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::shape(what, format!("{have} values, need {need}")));
    }
    Ok(())
}

pub(super) struct ConvScratch<'a> {
    pub col: &'a mut Vec<f32>,
    pub tmp: &'a mut Vec<f32>,
    pub budget: usize,
    pub gemm: Gemm,
}

pub(super) fn forward(
    s: ConvScratch<'_>,
    conv: &Conv2d,
    xd: Dims,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
) -> Result<()> {
    check_conv(conv, xd)?;
    let od = conv.out_dims(xd);
    check_len("conv2d input", x.len(), xd.len())?;
    check_len("conv2d weight", w.len(), conv.weight_len())?;
    check_len("conv2d output", y.len(), od.len())?;
    let ckk = conv.cin * conv.k * conv.k;
    let (hwo, n_all) = (od.hw(), xd.n);
    let nb_max = chunk_images(conv, xd, s.budget);
    let mut n0 = 0;
    while n0 < n_all {
        let nb = nb_max.min(n_all - n0);
        let cols = nb * hwo;
        let dst = MatMut::new(y, n0 * hwo, n_all * hwo, 1);
        if conv.is_pointwise() {
            let rhs = MatRef::new(x, n0 * hwo, n_all * hwo, 1);
            s.gemm
                .run(conv.cout, cols, ckk, dst, false, MatRef::rows(w, ckk), rhs)?;
        } else {
            if s.col.len() < ckk * cols {
                s.col.resize(ckk * cols, 0.0);
            }
            im2col(conv, xd, x, n0, nb, s.col);
            s.gemm.run(
                conv.cout,
                cols,
                ckk,
                dst,
                false,
                MatRef::rows(w, ckk),
                MatRef::rows(s.col, cols),
            )?;
        }
        n0 += nb;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    s: ConvScratch<'_>,
    conv: &Conv2d,
    xd: Dims,
    x: &[f32],
    dy: &[f32],
    w: &[f32],
    mode: ParamGrad,
    dw: &mut [f32],
    mut dx: Option<&mut [f32]>,
    accumulate_dx: bool,
) -> Result<()> {
    check_conv(conv, xd)?;
    let od = conv.out_dims(xd);
    check_len("conv2d input", x.len(), xd.len())?;
    check_len("conv2d output gradient", dy.len(), od.len())?;
    check_len("conv2d weight", w.len(), conv.weight_len())?;
    check_len("conv2d weight gradient", dw.len(), conv.weight_len())?;
    if let Some(dx) = dx.as_deref() {
        check_len("conv2d input gradient", dx.len(), xd.len())?;
    }
    let ckk = conv.cin * conv.k * conv.k;
    let cout = conv.cout;
    let (hwo, hwi, n_all) = (od.hw(), xd.hw(), xd.n);
    let nb_max = chunk_images(conv, xd, s.budget);
    let g = s.gemm;
    let pointwise = conv.is_pointwise();
    if mode == ParamGrad::PerSampleSq && s.tmp.len() < conv.weight_len() {
        s.tmp.resize(conv.weight_len(), 0.0);
    }
    let mut n0 = 0;
    while n0 < n_all {
        let nb = nb_max.min(n_all - n0);
        let cols = nb * hwo;
        if !pointwise {
            if s.col.len() < ckk * cols {
                s.col.resize(ckk * cols, 0.0);
            }
            im2col(conv, xd, x, n0, nb, s.col);
        }
        // The columns of this chunk, as a [ckk, cols] view.
        let colv = if pointwise {
            MatRef::new(x, n0 * hwi, n_all * hwi, 1)
        } else {
            MatRef::rows(s.col, cols)
        };
        match mode {
            ParamGrad::Sum => {
                let lhs = MatRef::new(dy, n0 * hwo, n_all * hwo, 1);
                let rhs = MatRef::new(colv.data, colv.off, colv.cs, colv.rs);
                g.run(cout, ckk, cols, MatMut::rows(dw, ckk), n0 > 0, lhs, rhs)?;
            }
            ParamGrad::PerSampleSq => {
                for j in 0..nb {
                    let lhs = MatRef::new(dy, (n0 + j) * hwo, n_all * hwo, 1);
                    let rhs =
                        MatRef::new(colv.data, colv.off + j * hwo * colv.cs, colv.cs, colv.rs);
                    let tmp = &mut s.tmp[..conv.weight_len()];
                    g.run(cout, ckk, hwo, MatMut::rows(tmp, ckk), false, lhs, rhs)?;
                    dw[..tmp.len()]
                        .par_chunks_mut(4096)
                        .zip(tmp.par_chunks(4096))
                        .for_each(|(d, t)| {
                            for (d, t) in d.iter_mut().zip(t) {
                                *d += t * t;
                            }
                        });
                }
            }
        }
        if let Some(dx) = dx.as_deref_mut() {
            let lhs = MatRef::rows_t(w, ckk);
            let rhs = MatRef::new(dy, n0 * hwo, n_all * hwo, 1);
            if pointwise {
                let dst = MatMut::new(dx, n0 * hwi, n_all * hwi, 1);
                g.run(ckk, cols, cout, dst, accumulate_dx, lhs, rhs)?;
            } else {
                g.run(ckk, cols, cout, MatMut::rows(s.col, cols), false, lhs, rhs)?;
                col2im(conv, xd, s.col, n0, nb, dx, accumulate_dx);
            }
        }
        n0 += nb;
    }
    Ok(())
}
