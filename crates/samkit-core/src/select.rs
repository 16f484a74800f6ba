//! Global top-k selection in O(N): a two-level radix select on 32-bit keys.
//!
//! Keys are totally ordered `u32`s (larger is better); ties go to the lower flat index, so the
//! selected set is a pure function of the keys. Four passes over the keys, each parallel over
//! the layout's units and each independent of the thread count: a histogram of the high 16
//! bits, a histogram of the low 16 bits inside the boundary bin, a count of keys equal to the
//! threshold per unit, and the write of the bitset.
use rayon::prelude::*;

use crate::bitset::{AtomicBitset, Bitset};
use crate::chunks::{ChunkInfo, TILE};

/// Produces the keys of one tile of one unit.
pub trait KeySource: Sync {
    /// Writes keys for elements `start..start + keys.len()` of unit `unit`, and whether each
    /// element is a candidate at all.
    fn fill(
        &self,
        unit: usize,
        info: &ChunkInfo,
        start: usize,
        keys: &mut [u32],
        valid: &mut [bool],
    );
}

/// Maps an `f32` to a `u32` with the same order (NaN below everything).
#[inline]
pub fn f32_key(x: f32) -> u32 {
    if x.is_nan() {
        return 0;
    }
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

pub(crate) const BINS: usize = 1 << 16;

fn for_each_tile(
    src: &impl KeySource,
    unit: usize,
    info: &ChunkInfo,
    mut f: impl FnMut(usize, &[u32], &[bool]),
) {
    let mut keys = [0u32; TILE];
    let mut valid = [false; TILE];
    let mut start = 0;
    while start < info.len {
        let n = TILE.min(info.len - start);
        src.fill(unit, info, start, &mut keys[..n], &mut valid[..n]);
        f(start, &keys[..n], &valid[..n]);
        start += n;
    }
}

/// Histograms summed over groups of units; integer sums, so the schedule cannot change them.
fn histogram(
    units: &[ChunkInfo],
    src: &impl KeySource,
    bin: impl Fn(u32) -> Option<usize> + Sync,
) -> Vec<u64> {
    let groups = (rayon::current_num_threads() * 2).max(1);
    let per = units.len().div_ceil(groups).max(1);
    units
        .par_chunks(per)
        .enumerate()
        .map(|(gi, group)| {
            let mut h = vec![0u32; BINS];
            for (j, info) in group.iter().enumerate() {
                for_each_tile(src, gi * per + j, info, |_, keys, valid| {
                    for (&k, &v) in keys.iter().zip(valid) {
                        if v {
                            if let Some(b) = bin(k) {
                                h[b] += 1;
                            }
                        }
                    }
                });
            }
            h
        })
        .fold(
            || vec![0u64; BINS],
            |mut acc, h| {
                for (a, x) in acc.iter_mut().zip(h) {
                    *a += x as u64;
                }
                acc
            },
        )
        .reduce(
            || vec![0u64; BINS],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

/// The bin holding the `k`-th largest element (1-based), and how many lie in higher bins.
pub(crate) fn boundary(h: &[u64], k: u64) -> (usize, u64) {
    let mut above = 0u64;
    for b in (0..h.len()).rev() {
        if above + h[b] >= k {
            return (b, above);
        }
        above += h[b];
    }
    unreachable!("k exceeds the number of candidates")
}

/// Selects the `k` candidates with the largest keys over the `n`-element index space covered
/// by `units`. Fewer than `k` candidates: all of them are selected.
pub fn select_top_k(units: &[ChunkInfo], n: usize, k: usize, src: &impl KeySource) -> Bitset {
    if k == 0 {
        return Bitset::zeros(n);
    }
    let h_hi = histogram(units, src, |key| Some((key >> 16) as usize));
    let total: u64 = h_hi.iter().sum();
    let k = k as u64;
    let take_all = k >= total;
    let (threshold, need_eq, all_eq) = if take_all {
        (0u32, u64::MAX, true)
    } else {
        let (b_hi, above_hi) = boundary(&h_hi, k);
        let h_lo = histogram(units, src, |key| {
            ((key >> 16) as usize == b_hi).then_some((key & 0xFFFF) as usize)
        });
        let (b_lo, above_lo) = boundary(&h_lo, k - above_hi);
        let t = ((b_hi as u32) << 16) | b_lo as u32;
        let need = k - above_hi - above_lo;
        (t, need, need == h_lo[b_lo])
    };

    // How many threshold-equal keys each unit holds, so each unit knows its rank offset; not
    // needed when every threshold-equal key is taken (no tie to break).
    let eq_counts: Vec<u64> = if all_eq {
        vec![0; units.len()]
    } else {
        units
            .par_iter()
            .enumerate()
            .map(|(u, info)| {
                let mut c = 0u64;
                for_each_tile(src, u, info, |_, keys, valid| {
                    c += keys
                        .iter()
                        .zip(valid)
                        .filter(|(&k, &v)| v && k == threshold)
                        .count() as u64;
                });
                c
            })
            .collect()
    };
    let mut eq_before = Vec::with_capacity(units.len());
    let mut acc = 0u64;
    for c in &eq_counts {
        eq_before.push(acc);
        acc += c;
    }

    let out = AtomicBitset::zeros(n);
    units.par_iter().enumerate().for_each(|(u, info)| {
        let mut rank = eq_before[u];
        let mut bits = 0u64;
        let mut i = info.global;
        for_each_tile(src, u, info, |_, keys, valid| {
            // Branch-free: a random half of the keys is taken, which a branch would mispredict.
            for (&key, &v) in keys.iter().zip(valid) {
                let eq = v & (key == threshold);
                rank += eq as u64;
                let take = v & (take_all | (key > threshold) | (eq & (rank <= need_eq)));
                bits |= (take as u64) << (i & 63);
                i += 1;
                if i & 63 == 0 {
                    out.or_word((i >> 6) - 1, bits);
                    bits = 0;
                }
            }
        });
        if i & 63 != 0 {
            out.or_word(i >> 6, bits);
        }
    });
    out.finish()
}

/// Top-k of a flat score slice: the plain entry point for users with one buffer of scores.
pub fn top_k_mask(scores: &[f32], k: usize) -> Bitset {
    let mut layout = crate::layout::Layout::new();
    if scores.is_empty() {
        return Bitset::zeros(0);
    }
    layout
        .push("scores.weight", &[scores.len()])
        .expect("a non-empty layout");
    let chunks = crate::chunks::Chunks::new(&layout);
    let units = chunks.split_flat(scores);
    select_top_k(chunks.infos(), scores.len(), k, &SliceKeys(&units))
}

/// Keys from per-unit `f32` score slices (all candidates).
pub struct SliceKeys<'a, 'b>(pub &'a [&'b [f32]]);

impl KeySource for SliceKeys<'_, '_> {
    #[inline]
    fn fill(&self, unit: usize, _: &ChunkInfo, start: usize, keys: &mut [u32], valid: &mut [bool]) {
        let s = &self.0[unit][start..start + keys.len()];
        for ((k, v), &x) in keys.iter_mut().zip(valid.iter_mut()).zip(s) {
            *k = f32_key(x);
            *v = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_sort(scores: &[f32], k: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        idx.sort_by(|&a, &b| f32_key(scores[b]).cmp(&f32_key(scores[a])).then(a.cmp(&b)));
        let mut v = idx[..k.min(scores.len())].to_vec();
        v.sort();
        v
    }

    #[test]
    fn matches_sort_with_ties() {
        let scores: Vec<f32> = (0..50_000)
            .map(|i| ((i * 7919) % 97) as f32 * 0.5)
            .collect();
        for k in [0, 1, 17, 25_000, 49_999, 50_000, 60_000] {
            let m = top_k_mask(&scores, k);
            assert_eq!(
                m.ones_iter().collect::<Vec<_>>(),
                by_sort(&scores, k),
                "k={k}"
            );
        }
    }

    #[test]
    fn key_order_matches_float_order() {
        let xs = [-f32::INFINITY, -2.0, -0.0, 0.0, 1e-30, 3.0, f32::INFINITY];
        for w in xs.windows(2) {
            assert!(f32_key(w[0]) < f32_key(w[1]), "{:?}", w);
        }
        assert_eq!(f32_key(f32::NAN), 0);
    }
}
