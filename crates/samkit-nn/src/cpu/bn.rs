//! Batch norm over channel-major activations: each channel's `N·H·W` values are one
//! contiguous row, reduced in `f64` (two passes: mean, then centred variance).
use rayon::prelude::*;

use crate::backend::{check_bn, BnConfig, BnMode, Dims, ParamGrad};
use crate::error::{Error, Result};

pub(super) struct BnBufs<'a> {
    pub running_mean: &'a mut [f32],
    pub running_var: &'a mut [f32],
    pub saved_mean: &'a mut [f32],
    pub saved_invstd: &'a mut [f32],
    pub num_batches_tracked: &'a mut i64,
}

#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    mode: BnMode,
    cfg: BnConfig,
    d: Dims,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    st: BnBufs<'_>,
    stats: &mut Vec<[f64; 2]>,
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) -> Result<()> {
    check_bn(d, x.len(), y.len(), st.running_mean.len())?;
    if let Some(r) = residual {
        check_bn(d, r.len(), y.len(), d.c)?;
    }
    let m = d.n * d.hw();
    if mode.uses_batch_stats() {
        if m < 2 {
            return Err(Error::invalid(
                "batch",
                format!(
                    "batch norm in training mode needs more than one value per channel ({d:?})"
                ),
            ));
        }
        stats.resize(d.c, [0.0; 2]);
        stats
            .par_iter_mut()
            .zip(x[..d.len()].par_chunks(m))
            .for_each(|(s, xc)| {
                let mean = xc.iter().map(|&v| v as f64).sum::<f64>() / m as f64;
                let var = xc
                    .iter()
                    .map(|&v| {
                        let t = v as f64 - mean;
                        t * t
                    })
                    .sum::<f64>()
                    / m as f64;
                *s = [mean, var];
            });
        for (c, s) in stats.iter().enumerate() {
            st.saved_mean[c] = s[0] as f32;
            st.saved_invstd[c] = (1.0 / (s[1] + cfg.eps as f64).sqrt()) as f32;
            if mode == BnMode::Train {
                let mom = cfg.momentum;
                let unbiased = (s[1] * m as f64 / (m - 1) as f64) as f32;
                st.running_mean[c] = (1.0 - mom) * st.running_mean[c] + mom * s[0] as f32;
                st.running_var[c] = (1.0 - mom) * st.running_var[c] + mom * unbiased;
            }
        }
        if mode == BnMode::Train {
            *st.num_batches_tracked += 1;
        }
    } else {
        for c in 0..d.c {
            st.saved_mean[c] = st.running_mean[c];
            st.saved_invstd[c] = (1.0 / (st.running_var[c] as f64 + cfg.eps as f64).sqrt()) as f32;
        }
    }
    let (mean, invstd) = (&*st.saved_mean, &*st.saved_invstd);
    let apply = |c: usize, yc: &mut [f32], xc: &[f32], rc: Option<&[f32]>| {
        let scale = gamma[c] * invstd[c];
        let shift = beta[c] - mean[c] * scale;
        match (rc, relu) {
            (None, false) => yc
                .iter_mut()
                .zip(xc)
                .for_each(|(o, &v)| *o = v * scale + shift),
            (None, true) => yc
                .iter_mut()
                .zip(xc)
                .for_each(|(o, &v)| *o = (v * scale + shift).max(0.0)),
            (Some(r), false) => yc
                .iter_mut()
                .zip(xc.iter().zip(r))
                .for_each(|(o, (&v, &r))| *o = v * scale + shift + r),
            (Some(r), true) => yc
                .iter_mut()
                .zip(xc.iter().zip(r))
                .for_each(|(o, (&v, &r))| *o = (v * scale + shift + r).max(0.0)),
        }
    };
    let (y, x) = (&mut y[..d.len()], &x[..d.len()]);
    match residual {
        None => y
            .par_chunks_mut(m)
            .zip(x.par_chunks(m))
            .enumerate()
            .for_each(|(c, (yc, xc))| apply(c, yc, xc, None)),
        Some(r) => y
            .par_chunks_mut(m)
            .zip(x.par_chunks(m).zip(r[..d.len()].par_chunks(m)))
            .enumerate()
            .for_each(|(c, (yc, (xc, rc)))| apply(c, yc, xc, Some(rc))),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    mode: BnMode,
    d: Dims,
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    pg: ParamGrad,
    stats: &mut Vec<[f64; 2]>,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dx: &mut [f32],
) -> Result<()> {
    check_bn(d, x.len(), dx.len(), gamma.len())?;
    check_bn(d, dy.len(), dx.len(), mean.len())?;
    if pg == ParamGrad::PerSampleSq && mode != BnMode::Eval {
        return Err(Error::invalid(
            "mode",
            "per-sample gradients need batch norm in eval mode (samples must be independent)",
        ));
    }
    let (n, hw) = (d.n, d.hw());
    let m = n * hw;
    stats.resize(d.c, [0.0; 2]);
    let (x, dy, dx) = (&x[..d.len()], &dy[..d.len()], &mut dx[..d.len()]);
    // Per channel: Σ dy and Σ dy·x̂ (or, per sample, the sums of their squares).
    stats
        .par_iter_mut()
        .zip(x.par_chunks(m).zip(dy.par_chunks(m)))
        .enumerate()
        .for_each(|(c, (s, (xc, gc)))| {
            let (mu, is) = (mean[c], invstd[c]);
            let sums = |xs: &[f32], gs: &[f32]| {
                let (mut sb, mut sg) = (0.0f64, 0.0f64);
                for (&v, &g) in xs.iter().zip(gs) {
                    sb += g as f64;
                    sg += g as f64 * ((v - mu) * is) as f64;
                }
                (sb, sg)
            };
            *s = match pg {
                ParamGrad::Sum => {
                    let (sb, sg) = sums(xc, gc);
                    [sb, sg]
                }
                ParamGrad::PerSampleSq => {
                    let (mut qb, mut qg) = (0.0, 0.0);
                    for i in 0..n {
                        let (sb, sg) = sums(&xc[i * hw..(i + 1) * hw], &gc[i * hw..(i + 1) * hw]);
                        qb += sb * sb;
                        qg += sg * sg;
                    }
                    [qb, qg]
                }
            };
        });
    for (c, s) in stats.iter().enumerate() {
        match pg {
            ParamGrad::Sum => {
                dbeta[c] = s[0] as f32;
                dgamma[c] = s[1] as f32;
            }
            ParamGrad::PerSampleSq => {
                dbeta[c] += s[0] as f32;
                dgamma[c] += s[1] as f32;
            }
        }
    }
    let stats = &*stats;
    dx.par_chunks_mut(m)
        .zip(x.par_chunks(m).zip(dy.par_chunks(m)))
        .enumerate()
        .for_each(|(c, (oc, (xc, gc)))| {
            let (mu, is) = (mean[c], invstd[c]);
            let k = gamma[c] * is;
            if mode.uses_batch_stats() {
                let mb = (stats[c][0] / m as f64) as f32;
                let mg = (stats[c][1] / m as f64) as f32;
                for (o, (&v, &g)) in oc.iter_mut().zip(xc.iter().zip(gc)) {
                    let xh = (v - mu) * is;
                    *o = k * (g - mb - xh * mg);
                }
            } else {
                for (o, &g) in oc.iter_mut().zip(gc) {
                    *o = k * g;
                }
            }
        });
    Ok(())
}
