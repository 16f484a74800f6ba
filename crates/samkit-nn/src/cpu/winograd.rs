//! 3×3, stride-1, pad-1 convolutions by Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray,
//! 2016) on channel-major (`[C, N, H, W]`) activations.
//!
//! Each 4×4 input tile (stride 2, overlapping by 2) is transformed to 16 values `V = Bᵀ d B`,
//! each 3×3 filter to 16 values `U = G g Gᵀ`; the 16 tile positions ξ are 16 independent
//! GEMMs `M[ξ] = U[ξ] · V[ξ]` over the channels, and `Y = Aᵀ M A` gives the 2×2 output tile.
//! That is 16 multiplies per output tile and channel pair where the direct form needs 36:
//! 2.25× fewer FLOPs in the GEMMs, which are what a ResNet's convolutions spend their time on.
//! The data gradient of such a convolution is the same kind of convolution with the filters
//! rotated by 180° and their channel axes swapped, so the backward pass uses this too. The
//! weight gradient is the same algebra run backwards: per tile position, the transformed
//! output gradients times the transformed input tiles, summed over the tiles by a GEMM, then
//! transformed back to 3×3 (per-sample squared gradients stay on im2col + GEMM).
//!
//! Results differ from the direct form by float rounding only (the transforms add at most
//! four terms with coefficients ±1 and ±½), and do not depend on the thread count: every
//! output tile is one GEMM column, whatever chunk it lands in.
use rayon::prelude::*;

use super::conv::{for_thread_chunks, plan_images, ConvScratch, SharedMut, ThreadBufs};
use super::gemm::{Gemm, MatMut, MatRef};
use crate::backend::{Conv2d, Dims};
use crate::error::Result;

/// Tile positions of F(2×2, 3×3): a 4×4 input tile per 2×2 output tile.
const XI: usize = 16;

/// Fewest input and output channels for which the transforms pay for themselves: the GEMMs'
/// inner dimension is the channel count, and below this the transforms' memory traffic
/// outweighs the FLOPs saved (the 3-channel stem stays on im2col).
pub(super) const MIN_CHANNELS: usize = 16;

/// Whether `conv` on inputs of `xd` runs through Winograd: 3×3, stride 1, pad 1 (the output
/// is the input's size), even height and width (whole 2×2 output tiles), enough channels.
pub(super) fn applies(conv: &Conv2d, xd: Dims) -> bool {
    conv.k == 3
        && conv.stride == 1
        && conv.pad == 1
        && xd.h >= 2
        && xd.w >= 2
        && xd.h % 2 == 0
        && xd.w % 2 == 0
        && conv.cin >= MIN_CHANNELS
        && conv.cout >= MIN_CHANNELS
}

/// Which convolution of the weights `w[cout, cin, 3, 3]` to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    /// `y[cout] = w ⋆ x[cin]`: the forward pass.
    Forward,
    /// `dx[cin] = rot180(w)ᵀ ⋆ dy[cout]`: the data gradient.
    Data,
}

/// `U = G g Gᵀ` of one 3×3 filter `g` (row-major), as 16 values in tile-position order.
fn filter_transform(g: [f32; 9]) -> [f32; XI] {
    // G g: rows g0, (g0 + g1 + g2)/2, (g0 − g1 + g2)/2, g2 of the filter's rows.
    let mut t = [[0.0f32; 3]; 4];
    for c in 0..3 {
        let (a, b, d) = (g[c], g[3 + c], g[6 + c]);
        t[0][c] = a;
        t[1][c] = 0.5 * (a + b + d);
        t[2][c] = 0.5 * (a - b + d);
        t[3][c] = d;
    }
    let mut u = [0.0f32; XI];
    for (r, row) in t.iter().enumerate() {
        let [a, b, d] = *row;
        u[4 * r] = a;
        u[4 * r + 1] = 0.5 * (a + b + d);
        u[4 * r + 2] = 0.5 * (a - b + d);
        u[4 * r + 3] = d;
    }
    u
}

/// The transformed filters as `u[m][ξ][k]` (`m` output, `k` input channels of the
/// convolution being run), so that `U[ξ]` is the `m × k` view at offset `ξ·k`, row stride `16·k`.
fn transform_weights(w: &[f32], conv: &Conv2d, dir: Direction, u: &mut Vec<f32>) {
    let (m, k) = match dir {
        Direction::Forward => (conv.cout, conv.cin),
        Direction::Data => (conv.cin, conv.cout),
    };
    if u.len() < m * XI * k {
        u.resize(m * XI * k, 0.0);
    }
    let cin = conv.cin;
    u[..m * XI * k]
        .par_chunks_mut(XI * k)
        .enumerate()
        .for_each(|(mo, row)| {
            for ki in 0..k {
                let mut g = [0.0f32; 9];
                match dir {
                    Direction::Forward => g.copy_from_slice(&w[(mo * cin + ki) * 9..][..9]),
                    Direction::Data => {
                        let src = &w[(ki * cin + mo) * 9..][..9];
                        for (gi, s) in g.iter_mut().zip(src.iter().rev()) {
                            *gi = *s;
                        }
                    }
                }
                for (xi, v) in filter_transform(g).into_iter().enumerate() {
                    row[xi * k + ki] = v;
                }
            }
        });
}

/// Tiles of images `n0..n0 + nb`, transformed: `v[c][ξ][t]` for the `k` channels of `x`,
/// tile `t = (n·th + ty)·tw + tx`. `pad` is workspace for one image's zero-bordered plane,
/// split into even and odd columns: tile `tx` reads padded columns `2tx..2tx + 4`, which are
/// entries `tx` and `tx + 1` of both halves, so every loop below runs over consecutive tiles
/// and vectorises (a loop per tile, gathering 16 values, ran scalar and took 8 % of a step).
#[allow(clippy::too_many_arguments)]
fn input_transform(
    x: &[f32],
    d: Dims,
    k: usize,
    n0: usize,
    nb: usize,
    v: &mut [f32],
    pad: &mut Vec<f32>,
) {
    let (h, w) = (d.h, d.w);
    let (th, tw) = (h / 2, w / 2);
    let tiles = nb * th * tw;
    // Padded row r (0..h + 2) has even entries at r·half, odd entries at (h + 2 + r)·half;
    // then 8 rows of `Bᵀ d` (4 on even, 4 on odd columns) of the current tile row.
    let half = tw + 1;
    pad.clear();
    pad.resize((2 * (h + 2) + 8) * half, 0.0);
    let (even, rest) = pad.split_at_mut((h + 2) * half);
    let (odd, rows_t) = rest.split_at_mut((h + 2) * half);
    for c in 0..k {
        let vc = &mut v[c * XI * tiles..(c + 1) * XI * tiles];
        for j in 0..nb {
            let plane = &x[(c * d.n + n0 + j) * h * w..][..h * w];
            // Padded column 2i is input column 2i − 1, padded column 2i + 1 is input column 2i;
            // the border rows and columns stay zero.
            for r in 0..h {
                let row = &plane[r * w..][..w];
                let e = &mut even[(r + 1) * half + 1..][..tw];
                let o = &mut odd[(r + 1) * half..][..tw];
                for ((e, o), pair) in e.iter_mut().zip(o.iter_mut()).zip(row.chunks_exact(2)) {
                    *o = pair[0];
                    *e = pair[1];
                }
            }
            for ty in 0..th {
                // Bᵀ d on the tile row's 4 padded rows, per column: d0 − d2, d1 + d2, d2 − d1,
                // d1 − d3; rows 0..4 of `rows_t` on the even columns, 4..8 on the odd ones.
                for (half_cols, base) in [(&*even, 0), (&*odd, 4)] {
                    let d = |r: usize| &half_cols[(2 * ty + r) * half..][..half];
                    let (d0, d1, d2, d3) = (d(0), d(1), d(2), d(3));
                    let (t0, tail) = rows_t[base * half..].split_at_mut(half);
                    let (t1, tail) = tail.split_at_mut(half);
                    let (t2, tail) = tail.split_at_mut(half);
                    let t3 = &mut tail[..half];
                    for i in 0..half {
                        t0[i] = d0[i] - d2[i];
                        t1[i] = d1[i] + d2[i];
                        t2[i] = d2[i] - d1[i];
                        t3[i] = d1[i] - d3[i];
                    }
                }
                // The same on the tile's columns 2tx..2tx + 4 = even tx, odd tx, even tx + 1,
                // odd tx + 1: four slices of consecutive tiles per row of Bᵀ d.
                let t_first = (j * th + ty) * tw;
                for r in 0..4 {
                    let te = &rows_t[r * half..][..half];
                    let to = &rows_t[(4 + r) * half..][..half];
                    let (a, b, c2, d2) = (&te[..tw], &to[..tw], &te[1..], &to[1..]);
                    let at = |xi: usize| (4 * r + xi) * tiles + t_first;
                    for (o, (a, c2)) in vc[at(0)..][..tw].iter_mut().zip(a.iter().zip(c2)) {
                        *o = a - c2;
                    }
                    for (o, (b, c2)) in vc[at(1)..][..tw].iter_mut().zip(b.iter().zip(c2)) {
                        *o = b + c2;
                    }
                    for (o, (b, c2)) in vc[at(2)..][..tw].iter_mut().zip(b.iter().zip(c2)) {
                        *o = c2 - b;
                    }
                    for (o, (b, d2)) in vc[at(3)..][..tw].iter_mut().zip(b.iter().zip(d2)) {
                        *o = b - d2;
                    }
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` of the products `mm[c][ξ][t]` into images `n0..n0 + nb` of the `m` output
/// channels of `y` (added to them when `accumulate`).
///
/// # Safety
/// `y` points to a channel-major buffer of `m · d.n · d.h · d.w` values whose planes of images
/// `n0..n0 + nb` no other thread accesses during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    mm: &[f32],
    d: Dims,
    m: usize,
    n0: usize,
    nb: usize,
    y: SharedMut,
    accumulate: bool,
) {
    let (h, w) = (d.h, d.w);
    let (th, tw) = (h / 2, w / 2);
    let tiles = nb * th * tw;
    for c in 0..m {
        let mc = &mm[c * XI * tiles..(c + 1) * XI * tiles];
        for j in 0..nb {
            // SAFETY: the plane of image n0 + j of channel c lies inside the buffer and belongs
            // to this call alone (the caller's contract).
            let plane =
                std::slice::from_raw_parts_mut(y.ptr().add((c * d.n + n0 + j) * h * w), h * w);
            for ty in 0..th {
                let t0 = (j * th + ty) * tw;
                let (top, bottom) = plane[2 * ty * w..(2 * ty + 2) * w].split_at_mut(w);
                for tx in 0..tw {
                    let t_idx = t0 + tx;
                    let e = |xi: usize| mc[xi * tiles + t_idx];
                    // Aᵀ M: rows m0 + m1 + m2 and m1 − m2 − m3; then the same on columns.
                    let mut s = [[0.0f32; 4]; 2];
                    let [s0, s1] = &mut s;
                    for (c4, (a0, a1)) in s0.iter_mut().zip(s1.iter_mut()).enumerate() {
                        let (m0, m1, m2, m3) = (e(c4), e(4 + c4), e(8 + c4), e(12 + c4));
                        *a0 = m0 + m1 + m2;
                        *a1 = m1 - m2 - m3;
                    }
                    let out = [
                        [s[0][0] + s[0][1] + s[0][2], s[0][1] - s[0][2] - s[0][3]],
                        [s[1][0] + s[1][1] + s[1][2], s[1][1] - s[1][2] - s[1][3]],
                    ];
                    let (a, b) = (
                        &mut top[2 * tx..2 * tx + 2],
                        &mut bottom[2 * tx..2 * tx + 2],
                    );
                    if accumulate {
                        a[0] += out[0][0];
                        a[1] += out[0][1];
                        b[0] += out[1][0];
                        b[1] += out[1][1];
                    } else {
                        a.copy_from_slice(&out[0]);
                        b.copy_from_slice(&out[1]);
                    }
                }
            }
        }
    }
}

/// Images `n0..n0 + nb` of chunk `c` (of `per_chunk` images out of `n`) and their tile count,
/// with the thread's workspaces grown for `k` transformed input and `m` product channels.
fn tile_chunk(
    tb: &mut ThreadBufs,
    c: usize,
    per_chunk: usize,
    n: usize,
    tiles_per_image: usize,
    k: usize,
    m: usize,
) -> (usize, usize, usize) {
    let n0 = c * per_chunk;
    let nb = per_chunk.min(n - n0);
    let tiles = nb * tiles_per_image;
    if tb.col.len() < XI * k * tiles {
        tb.col.resize(XI * k * tiles, 0.0);
    }
    if tb.tmp.len() < XI * m * tiles {
        tb.tmp.resize(XI * m * tiles, 0.0);
    }
    (n0, nb, tiles)
}

/// Runs the convolution of `dir` with the weights `w[cout, cin, 3, 3]` of `conv`: from `src`
/// (`k` channels of `d`'s size) into `dst` (`m` channels), overwriting or adding to it.
/// `src` and `dst` have been length-checked by the caller, and `applies(conv, d)` holds.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    s: ConvScratch<'_>,
    conv: &Conv2d,
    dir: Direction,
    d: Dims,
    w: &[f32],
    src: &[f32],
    dst: &mut [f32],
    accumulate: bool,
) -> Result<()> {
    let (m, k) = match dir {
        Direction::Forward => (conv.cout, conv.cin),
        Direction::Data => (conv.cin, conv.cout),
    };
    transform_weights(w, conv, dir, s.wino_u);
    let u: &[f32] = &s.wino_u[..m * XI * k];
    let tiles_per_image = (d.h / 2) * (d.w / 2);
    let pl = plan_images(XI * (m + k) * tiles_per_image, d.n, s.budget, s.threads);
    let g = Gemm {
        threads: pl.gemm_threads,
    };
    let yp = SharedMut(dst.as_mut_ptr());
    for_thread_chunks(s.bufs, pl, |tb, chunks| -> Result<()> {
        for c in chunks {
            let (n0, nb, tiles) = tile_chunk(tb, c, pl.nb, d.n, tiles_per_image, k, m);
            input_transform(src, d, k, n0, nb, &mut tb.col, &mut tb.pad);
            for xi in 0..XI {
                g.run(
                    m,
                    tiles,
                    k,
                    MatMut::new(&mut tb.tmp[..XI * m * tiles], xi * tiles, XI * tiles, 1),
                    false,
                    MatRef::new(u, xi * k, XI * k, 1),
                    MatRef::new(&tb.col[..XI * k * tiles], xi * tiles, XI * tiles, 1),
                )?;
            }
            // SAFETY: the planes of images n0..n0 + nb of every output channel belong to
            // this chunk alone.
            unsafe { output_transform(&tb.tmp, d, m, n0, nb, yp, accumulate) };
        }
        Ok(())
    })
}

/// `A dY Aᵀ` of the 2×2 output-gradient tiles of images `n0..n0 + nb`: `e[c][ξ][t]` for the
/// `m` channels of `dy`.
fn output_grad_transform(dy: &[f32], d: Dims, m: usize, n0: usize, nb: usize, e: &mut [f32]) {
    let (h, w) = (d.h, d.w);
    let (th, tw) = (h / 2, w / 2);
    let tiles = nb * th * tw;
    for c in 0..m {
        let ec = &mut e[c * XI * tiles..(c + 1) * XI * tiles];
        for j in 0..nb {
            let plane = &dy[(c * d.n + n0 + j) * h * w..][..h * w];
            for ty in 0..th {
                let (top, bottom) = (&plane[2 * ty * w..][..w], &plane[(2 * ty + 1) * w..][..w]);
                let t0 = (j * th + ty) * tw;
                for tx in 0..tw {
                    let (a, b) = (top[2 * tx], top[2 * tx + 1]);
                    let (c2, e2) = (bottom[2 * tx], bottom[2 * tx + 1]);
                    // A dY: rows [a, b], [a + c, b + e], [a − c, b − e], [−c, −e]; each row
                    // [p, q] then becomes [p, p + q, p − q, −q].
                    let rows = [[a, b], [a + c2, b + e2], [a - c2, b - e2], [-c2, -e2]];
                    let t_idx = t0 + tx;
                    for (r, [p, q]) in rows.into_iter().enumerate() {
                        let o = 4 * r * tiles + t_idx;
                        ec[o] = p;
                        ec[o + tiles] = p + q;
                        ec[o + 2 * tiles] = p - q;
                        ec[o + 3 * tiles] = -q;
                    }
                }
            }
        }
    }
}

/// `Gᵀ u G`: the 3×3 filter gradient of the 16 transformed-filter gradients `u`.
fn filter_grad_transform(u: [f32; XI]) -> [f32; 9] {
    // Gᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]], on rows, then on columns.
    let mut r = [[0.0f32; 4]; 3];
    for c in 0..4 {
        let (u0, u1, u2, u3) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
        r[0][c] = u0 + 0.5 * (u1 + u2);
        r[1][c] = 0.5 * (u1 - u2);
        r[2][c] = 0.5 * (u1 + u2) + u3;
    }
    let mut g = [0.0f32; 9];
    for (i, [r0, r1, r2, r3]) in r.into_iter().enumerate() {
        g[3 * i] = r0 + 0.5 * (r1 + r2);
        g[3 * i + 1] = 0.5 * (r1 - r2);
        g[3 * i + 2] = 0.5 * (r1 + r2) + r3;
    }
    g
}

/// The weight gradient `dw[cout, cin, 3, 3] = Σ_n dy ⋆ x` of `conv` (overwritten): per tile
/// position ξ, `dU[ξ] = Σ_t (A dY Aᵀ)[ξ] · (Bᵀ d B)[ξ]ᵀ` over the tiles, a GEMM whose inner
/// dimension is the tile count, accumulated per thread, summed in thread order, then
/// `dw = Gᵀ dU G`. `applies(conv, d)` holds; lengths were checked by the caller.
pub(super) fn weight_grad(
    s: ConvScratch<'_>,
    conv: &Conv2d,
    d: Dims,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
) -> Result<()> {
    let (m, k) = (conv.cout, conv.cin);
    let tiles_per_image = (d.h / 2) * (d.w / 2);
    let pl = plan_images(XI * (m + k) * tiles_per_image, d.n, s.budget, s.threads);
    let g = Gemm {
        threads: pl.gemm_threads,
    };
    let acc_len = m * XI * k;
    for_thread_chunks(s.bufs, pl, |tb, chunks| -> Result<()> {
        if tb.acc.len() < acc_len {
            tb.acc.resize(acc_len, 0.0);
        }
        tb.acc[..acc_len].fill(0.0);
        for c in chunks {
            let (n0, nb, tiles) = tile_chunk(tb, c, pl.nb, d.n, tiles_per_image, k, m);
            input_transform(x, d, k, n0, nb, &mut tb.col, &mut tb.pad);
            output_grad_transform(dy, d, m, n0, nb, &mut tb.tmp);
            for xi in 0..XI {
                g.run(
                    m,
                    k,
                    tiles,
                    MatMut::new(&mut tb.acc[..acc_len], xi * k, XI * k, 1),
                    true,
                    MatRef::new(&tb.tmp[..XI * m * tiles], xi * tiles, XI * tiles, 1),
                    MatRef::new(&tb.col[..XI * k * tiles], xi * tiles, 1, XI * tiles),
                )?;
            }
        }
        Ok(())
    })?;
    let accs: Vec<&[f32]> = s.bufs[..pl.groups]
        .iter()
        .map(|b| &b.acc[..acc_len])
        .collect();
    dw[..m * k * 9]
        .par_chunks_mut(k * 9)
        .enumerate()
        .for_each(|(co, row)| {
            for ci in 0..k {
                let mut u = [0.0f32; XI];
                for (xi, ux) in u.iter_mut().enumerate() {
                    let at = (co * XI + xi) * k + ci;
                    *ux = accs.iter().map(|a| a[at]).sum();
                }
                row[ci * 9..(ci + 1) * 9].copy_from_slice(&filter_grad_transform(u));
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct convolution, in f64: `y[co, n, i, j] = Σ w[co, ci, a, b] · x[ci, n, i+a−1, j+b−1]`.
    fn direct(conv: &Conv2d, d: Dims, x: &[f32], w: &[f32]) -> Vec<f64> {
        let (h, wd) = (d.h as isize, d.w as isize);
        let mut y = vec![0.0f64; conv.cout * d.n * d.h * d.w];
        for co in 0..conv.cout {
            for n in 0..d.n {
                for i in 0..h {
                    for j in 0..wd {
                        let mut acc = 0.0f64;
                        for ci in 0..conv.cin {
                            for a in 0..3isize {
                                for b in 0..3isize {
                                    let (ii, jj) = (i + a - 1, j + b - 1);
                                    if ii < 0 || jj < 0 || ii >= h || jj >= wd {
                                        continue;
                                    }
                                    let xv = x[((ci * d.n + n) as isize * h + ii) as usize * d.w
                                        + jj as usize];
                                    let wv =
                                        w[((co * conv.cin + ci) * 3 + a as usize) * 3 + b as usize];
                                    acc += xv as f64 * wv as f64;
                                }
                            }
                        }
                        y[((co * d.n + n) * d.h + i as usize) * d.w + j as usize] = acc;
                    }
                }
            }
        }
        y
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 * 0.731 + seed as f32 * 1.37).sin() * 43758.547).fract() - 0.5)
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn scratch_run(
        threads: usize,
        budget: usize,
        conv: &Conv2d,
        dir: Direction,
        d: Dims,
        w: &[f32],
        src: &[f32],
        dst: &mut [f32],
        accumulate: bool,
    ) {
        let mut bufs = Vec::new();
        let mut u = Vec::new();
        run(
            ConvScratch {
                bufs: &mut bufs,
                budget,
                threads,
                wino_u: &mut u,
                winograd: true,
            },
            conv,
            dir,
            d,
            w,
            src,
            dst,
            accumulate,
        )
        .unwrap();
    }

    /// Relative to the largest magnitude: the transforms round like a sum of a few terms.
    fn close(got: &[f32], want: &[f64], what: &str) {
        let scale = want.iter().fold(1e-3f64, |a, v| a.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= 1e-5 * scale,
                "{what}: element {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn forward_matches_the_direct_convolution_at_every_chunking() {
        let conv = Conv2d::new(16, 20, 3, 1, 1);
        let d = Dims::new(3, 16, 6, 8);
        let x = values(d.len(), 1);
        let w = values(conv.weight_len(), 2);
        let want = direct(&conv, d, &x, &w);
        for threads in [1, 2, 3] {
            for budget in [1, 5000, 1 << 20] {
                let mut y = vec![f32::NAN; want.len()];
                scratch_run(
                    threads,
                    budget,
                    &conv,
                    Direction::Forward,
                    d,
                    &w,
                    &x,
                    &mut y,
                    false,
                );
                close(&y, &want, &format!("threads {threads} budget {budget}"));
                // Adding onto what is there.
                let mut y2: Vec<f32> = want.iter().map(|v| *v as f32).collect();
                scratch_run(
                    threads,
                    budget,
                    &conv,
                    Direction::Forward,
                    d,
                    &w,
                    &x,
                    &mut y2,
                    true,
                );
                let twice: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
                close(&y2, &twice, "accumulated");
            }
        }
    }

    #[test]
    fn data_direction_is_the_adjoint_of_the_forward() {
        // ⟨conv(x), dy⟩ = ⟨x, convᵀ(dy)⟩ for any x, dy.
        let conv = Conv2d::new(17, 16, 3, 1, 1);
        let d = Dims::new(2, 17, 4, 6);
        let od = conv.out_dims(d);
        let x = values(d.len(), 3);
        let dy = values(od.len(), 4);
        let w = values(conv.weight_len(), 5);
        let y = direct(&conv, d, &x, &w);
        let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| a * *b as f64).sum();
        for threads in [1, 2] {
            let mut dx = vec![f32::NAN; d.len()];
            scratch_run(
                threads,
                3000,
                &conv,
                Direction::Data,
                od,
                &w,
                &dy,
                &mut dx,
                false,
            );
            let rhs: f64 = dx.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!(
                (lhs - rhs).abs() <= 1e-4 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn weight_gradient_matches_the_direct_sum() {
        // dw[co, ci, a, b] = Σ_{n,i,j} dy[co, n, i, j] · x[ci, n, i+a−1, j+b−1].
        let conv = Conv2d::new(16, 18, 3, 1, 1);
        let d = Dims::new(3, 16, 6, 4);
        let od = conv.out_dims(d);
        let x = values(d.len(), 6);
        let dy = values(od.len(), 7);
        let (h, wd) = (d.h as isize, d.w as isize);
        let mut want = vec![0.0f64; conv.weight_len()];
        for co in 0..conv.cout {
            for ci in 0..conv.cin {
                for a in 0..3isize {
                    for b in 0..3isize {
                        let mut acc = 0.0f64;
                        for n in 0..d.n {
                            for i in 0..h {
                                for j in 0..wd {
                                    let (ii, jj) = (i + a - 1, j + b - 1);
                                    if ii < 0 || jj < 0 || ii >= h || jj >= wd {
                                        continue;
                                    }
                                    let xv =
                                        x[((ci * d.n + n) * d.h + ii as usize) * d.w + jj as usize];
                                    let gv =
                                        dy[((co * d.n + n) * d.h + i as usize) * d.w + j as usize];
                                    acc += xv as f64 * gv as f64;
                                }
                            }
                        }
                        want[((co * conv.cin + ci) * 3 + a as usize) * 3 + b as usize] = acc;
                    }
                }
            }
        }
        for threads in [1, 2, 3] {
            for budget in [1, 4000, 1 << 20] {
                let mut bufs = Vec::new();
                let mut u = Vec::new();
                let mut dw = vec![f32::NAN; conv.weight_len()];
                weight_grad(
                    ConvScratch {
                        bufs: &mut bufs,
                        budget,
                        threads,
                        wino_u: &mut u,
                        winograd: true,
                    },
                    &conv,
                    d,
                    &x,
                    &dy,
                    &mut dw,
                )
                .unwrap();
                close(
                    &dw,
                    &want,
                    &format!("dw, threads {threads} budget {budget}"),
                );
            }
        }
    }

    #[test]
    fn only_3x3_stride_1_pad_1_even_convolutions_with_enough_channels_apply() {
        let d = Dims::new(2, 64, 8, 8);
        assert!(applies(&Conv2d::new(64, 64, 3, 1, 1), d));
        assert!(!applies(&Conv2d::new(64, 64, 3, 2, 1), d));
        assert!(!applies(&Conv2d::new(64, 64, 1, 1, 0), d));
        assert!(!applies(
            &Conv2d::new(3, 64, 3, 1, 1),
            Dims::new(2, 3, 8, 8)
        ));
        assert!(!applies(
            &Conv2d::new(64, 64, 3, 1, 1),
            Dims::new(2, 64, 7, 8)
        ));
    }
}
