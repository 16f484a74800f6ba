//! Sparse SAM's masks: SSAM-F's Fisher top-k and SSAM-D's random start and drop/grow.
//!
//! SSAM-D's drop/grow makes two passes over one key buffer that holds, for every index, the
//! key of the one selection it is a candidate of: `!key(|g|)` for a live index (drop), the
//! inverted Philox key for a dead one (grow). The first pass writes the keys (Philox batched,
//! for the dead indices only) and histograms their high 16 bits, both selections at once; the
//! second writes every index above its selection's boundary bin straight into the new mask and
//! lists those in the boundary bin (a small fraction of n unless the keys tie massively), then
//! ranks those on their low 16 bits (ties to the lower index). The selected sets are those of two
//! [`select_top_k`] calls over the same keys.
use rayon::prelude::*;

use crate::bitset::Bitset;
use crate::chunks::{ChunkInfo, Chunks, CHUNK};
use crate::philox::{index_key, index_keys};
use crate::select::{boundary, f32_key, select_top_k, KeySource, SliceKeys, BINS};

/// The `live` largest Fisher entries (ties to the lower index).
pub fn fisher_mask(chunks: &Chunks, fisher: &[&[f32]], n: usize, live: usize) -> Bitset {
    select_top_k(chunks.infos(), n, live, &SliceKeys(fisher))
}

/// Precomputed keys over the flat index space, every index a candidate.
struct BufferKeys<'a> {
    keys: &'a [u32],
}

impl KeySource for BufferKeys<'_> {
    #[inline]
    fn fill(&self, _: usize, info: &ChunkInfo, start: usize, keys: &mut [u32], valid: &mut [bool]) {
        let first = info.global + start;
        keys.copy_from_slice(&self.keys[first..first + keys.len()]);
        valid.fill(true);
    }
}

/// Per-unit mutable views of a flat key buffer.
fn key_units<'a>(chunks: &Chunks, keys: &'a mut [u32]) -> Vec<&'a mut [u32]> {
    let mut rest = keys;
    chunks
        .infos()
        .iter()
        .map(|c| {
            let (h, t) = std::mem::take(&mut rest).split_at_mut(c.len);
            rest = t;
            h
        })
        .collect()
}

/// Philox keys, inverted so that the smallest key is selected first.
fn random_key(seed: u64, update: u32, i: usize) -> u32 {
    !index_key(seed, update, i as u64)
}

/// SSAM-D's initial mask: the `live` indices with the smallest Philox keys at update 0.
pub fn random_mask(n: usize, live: usize, seed: u64) -> Bitset {
    let layout = crate::layout::Layout::flat(n).expect("n > 0");
    let chunks = Chunks::new(&layout);
    let mut keys = vec![0u32; n];
    keys.par_chunks_mut(CHUNK).enumerate().for_each(|(c, k)| {
        let base = (c * CHUNK) as u64;
        let idx: Vec<u64> = (base..base + k.len() as u64).collect();
        index_keys(seed, 0, &idx, k);
        for x in k.iter_mut() {
            *x = !*x;
        }
    });
    select_top_k(chunks.infos(), n, live, &BufferKeys { keys: &keys })
}

/// How many indices an SSAM-D update drops (and grows) with `live` of `n` indices live at
/// drop rate `rate`: `⌊live·rate⌋`, at most the dead count. The device optimizer uses the same.
pub fn swap_count(live: usize, n: usize, rate: f32) -> usize {
    (((live as f64) * rate as f64).floor() as usize).min(n - live)
}

/// SSAM-D's update: drop `⌊L·rate⌋` live indices with the smallest `|g|`, then grow as many
/// among the indices dead before this update, by the smallest Philox keys of `update`.
///
/// The result is that of two [`select_top_k`] calls over one key per index, with the
/// non-candidates of each selection keyed 0 (`drop_grow_by_selections`, which this computes in
/// two passes instead of ten). A candidate's drop key is never 0, but a grow key is 0 when its
/// Philox key is `u32::MAX`; the zero-keyed live indices then tie with it. Only a grow boundary
/// in the lowest bin can reach such ties, so that (astronomically rare unless nearly every dead
/// index grows) case goes to the plain definition.
pub fn drop_grow(
    chunks: &Chunks,
    g: &[&[f32]],
    mask: &Bitset,
    n: usize,
    rate: f32,
    seed: u64,
    update: u32,
) -> Bitset {
    let live = mask.count_ones();
    let k = swap_count(live, n, rate);
    if k == 0 {
        return mask.clone();
    }
    let mut keys = vec![0u32; n];
    let h = key_pass(chunks, g, mask, seed, update, &mut keys);
    let (h_drop, h_grow) = h.split_at(BINS);
    let drop = Cut::new(h_drop, k, live);
    let grow = Cut::new(h_grow, k, n - live);
    if grow.bin_p1 == 1 {
        return drop_grow_by_selections(chunks, g, mask, n, rate, seed, update);
    }
    let (mut flips, tied) = flip_pass(&keys, mask, n, &drop, &grow);
    let (tied_drop, tied_grow): (Vec<usize>, Vec<usize>) =
        tied.into_iter().partition(|&i| mask.get(i));
    resolve(&keys, &tied_drop, drop.need, &mut flips);
    resolve(&keys, &tied_grow, grow.need, &mut flips);
    mask.xor_words(&flips)
}

/// One selection's cut on the high 16 bits of its keys: candidates in bins above
/// `bin_p1 - 1` are taken, the `need` best of bin `bin_p1 - 1` too; `bin_p1 == 0` takes all.
struct Cut {
    bin_p1: u32,
    need: u64,
}

impl Cut {
    fn new(h: &[u64], k: usize, candidates: usize) -> Cut {
        // More than all (a drop rate above 1) drops all the live ones too: the zero-keyed dead
        // indices the definition adds to its drop set do not change the mask.
        if k >= candidates {
            return Cut { bin_p1: 0, need: 0 };
        }
        let (bin, above) = boundary(h, k as u64);
        Cut {
            bin_p1: bin as u32 + 1,
            need: k as u64 - above,
        }
    }
}

/// Units per task of the key pass (two tasks per thread): each task fills one histogram.
fn groups(units: usize) -> usize {
    units
        .div_ceil((rayon::current_num_threads() * 2).max(1))
        .max(1)
}

/// Writes every index's key (drop key if live, grow key if dead) and returns the histogram of
/// their high 16 bits: the drop side in `0..BINS`, the grow side in `BINS..2 * BINS`.
/// Integer sums, so the schedule cannot change them.
fn key_pass(
    chunks: &Chunks,
    g: &[&[f32]],
    mask: &Bitset,
    seed: u64,
    update: u32,
    keys: &mut [u32],
) -> Vec<u64> {
    let infos = chunks.infos();
    let mut views = key_units(chunks, keys);
    let per = groups(infos.len());
    views
        .par_chunks_mut(per)
        .zip(infos.par_chunks(per))
        .zip(g.par_chunks(per))
        .map(|((views, infos), gs)| {
            let mut h = vec![0u32; 2 * BINS];
            let mut dead = Vec::with_capacity(CHUNK);
            let mut philox = Vec::with_capacity(CHUNK);
            for ((keys, info), g) in views.iter_mut().zip(infos).zip(gs) {
                let unit = UnitKeys {
                    info,
                    g,
                    words: mask.words(),
                    seed,
                    update,
                };
                unit.fill(keys, &mut h, &mut dead, &mut philox);
            }
            h
        })
        .fold(
            || vec![0u64; 2 * BINS],
            |mut acc, h| {
                for (a, x) in acc.iter_mut().zip(h) {
                    *a += x as u64;
                }
                acc
            },
        )
        .reduce(
            || vec![0u64; 2 * BINS],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(b) {
                    *x += y;
                }
                a
            },
        )
}

/// The inputs of one unit's keys.
struct UnitKeys<'a> {
    info: &'a ChunkInfo,
    g: &'a [f32],
    words: &'a [u64],
    seed: u64,
    update: u32,
}

impl UnitKeys<'_> {
    /// Walks the unit's mask words: a live index gets its drop key at once, a dead one is
    /// listed, and the listed ones get their Philox keys in one batch.
    fn fill(&self, keys: &mut [u32], h: &mut [u32], dead: &mut Vec<u64>, philox: &mut Vec<u32>) {
        let (s, e) = (self.info.global, self.info.global + self.info.len);
        let (h_drop, h_grow) = h.split_at_mut(BINS);
        dead.clear();
        for w in s / 64..e.div_ceil(64) {
            let base = w * 64;
            let mut range = !0u64;
            if base < s {
                range &= !0u64 << (s - base);
            }
            if base + 64 > e {
                range &= !0u64 >> (base + 64 - e);
            }
            let m = self.words[w];
            let mut l = m & range;
            while l != 0 {
                let j = base + l.trailing_zeros() as usize - s;
                let key = !f32_key(self.g[j].abs());
                keys[j] = key;
                h_drop[(key >> 16) as usize] += 1;
                l &= l - 1;
            }
            let mut d = !m & range;
            while d != 0 {
                dead.push((base + d.trailing_zeros() as usize) as u64);
                d &= d - 1;
            }
        }
        philox.resize(dead.len(), 0);
        index_keys(self.seed, self.update, dead, philox);
        for (&i, &p) in dead.iter().zip(philox.iter()) {
            let key = !p;
            keys[i as usize - s] = key;
            h_grow[(key >> 16) as usize] += 1;
        }
    }
}

/// Mask words per task of the flip pass.
const BLOCK_WORDS: usize = CHUNK / 64;

/// The bits to toggle for every index above its selection's boundary bin (the live ones are
/// dropped, the dead ones grown), and the indices inside the boundary bins, ascending.
fn flip_pass(
    keys: &[u32],
    mask: &Bitset,
    n: usize,
    drop: &Cut,
    grow: &Cut,
) -> (Vec<u64>, Vec<usize>) {
    let words = mask.words();
    let mut flips = vec![0u64; words.len()];
    let (dp, gp) = (drop.bin_p1, grow.bin_p1);
    let tied: Vec<Vec<usize>> = flips
        .par_chunks_mut(BLOCK_WORDS)
        .enumerate()
        .map(|(b, fl)| {
            let mut tied = Vec::new();
            for (o, f) in fl.iter_mut().enumerate() {
                let w = b * BLOCK_WORDS + o;
                let base = w * 64;
                let m = words[w];
                let ks = &keys[base..(base + 64).min(n)];
                let (mut take, mut eq) = (0u64, 0u64);
                for (j, &key) in ks.iter().enumerate() {
                    let bp = if (m >> j) & 1 == 1 { dp } else { gp };
                    let hi = (key >> 16) + 1;
                    take |= ((hi > bp) as u64) << j;
                    eq |= ((hi == bp) as u64) << j;
                }
                *f = take;
                while eq != 0 {
                    tied.push(base + eq.trailing_zeros() as usize);
                    eq &= eq - 1;
                }
            }
            tied
        })
        .collect();
    (flips, tied.concat())
}

/// Takes the `need` largest keys among `tied` (ascending indices, one high-16 bin) by their
/// low 16 bits, ties to the lower index, into `flips`.
fn resolve(keys: &[u32], tied: &[usize], need: u64, flips: &mut [u64]) {
    if tied.is_empty() {
        return;
    }
    let mut h = vec![0u64; BINS];
    for &i in tied {
        h[(keys[i] & 0xFFFF) as usize] += 1;
    }
    let (b, above) = boundary(&h, need);
    let (b, need_eq) = (b as u32, need - above);
    let mut rank = 0u64;
    for &i in tied {
        let lo = keys[i] & 0xFFFF;
        let take = lo > b
            || (lo == b && {
                rank += 1;
                rank <= need_eq
            });
        if take {
            flips[i >> 6] |= 1 << (i & 63);
        }
    }
}

/// [`drop_grow`] as two [`select_top_k`] calls over a full key buffer each: the definition,
/// taken when the grow boundary falls in the lowest bin (see [`drop_grow`]), and the reference
/// of the tests.
fn drop_grow_by_selections(
    chunks: &Chunks,
    g: &[&[f32]],
    mask: &Bitset,
    n: usize,
    rate: f32,
    seed: u64,
    update: u32,
) -> Bitset {
    let live = mask.count_ones();
    let k = swap_count(live, n, rate);
    if k == 0 {
        return mask.clone();
    }
    // Each selection runs over one key per index, with the non-candidates keyed 0 so that
    // no per-element candidate test is needed: a live index's drop key `!key(|g|)` is never 0
    // (no float maps to u32::MAX), and `k <= candidates` keeps zeros out of the selection —
    // except when every candidate is taken, which is handled without a selection.
    let mut keys = vec![0u32; n];
    let select = |keys: &mut Vec<u32>, live_side: bool| -> Bitset {
        key_units(chunks, keys)
            .into_par_iter()
            .zip(chunks.infos().par_iter())
            .zip(g.par_iter())
            .for_each(|((k, info), g)| {
                for (j, (x, &gv)) in k.iter_mut().zip(g.iter()).enumerate() {
                    let i = info.global + j;
                    *x = match (mask.get(i), live_side) {
                        (true, true) => !f32_key(gv.abs()),
                        (false, false) => random_key(seed, update, i),
                        _ => 0,
                    };
                }
            });
        let candidates = if live_side { live } else { n - live };
        if k == candidates {
            let mut all = mask.clone();
            if !live_side {
                all = Bitset::ones(n).drop_grow(mask, &Bitset::zeros(n));
            }
            return all;
        }
        select_top_k(chunks.infos(), n, k, &BufferKeys { keys })
    };
    let drop = select(&mut keys, true);
    let grow = select(&mut keys, false);
    mask.drop_grow(&drop, &grow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::philox::PhiloxRng;

    /// A layout of segments with odd lengths, so that units start and end inside mask words,
    /// some longer than a unit.
    fn layout(rng: &mut PhiloxRng, segments: usize, max_len: u64) -> Layout {
        let mut l = Layout::new();
        for s in 0..segments {
            let len = 1 + rng.below(max_len) as usize;
            l.push(format!("s{s}.weight"), &[len]).unwrap();
        }
        l
    }

    /// Gradients with many exact ties in `|g|` (both signs, ±0), and a few NaNs and infinities.
    fn gradient(rng: &mut PhiloxRng, n: usize, distinct: u64) -> Vec<f32> {
        (0..n)
            .map(|_| match rng.below(100) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => -0.0,
                3 => 0.0,
                4..=50 => (rng.below(distinct) as f32 - distinct as f32 / 2.0) * 0.25,
                _ => rng.normal() as f32,
            })
            .collect()
    }

    /// A mask of density `p`, with runs of all-live and all-dead words.
    fn mask(rng: &mut PhiloxRng, n: usize, p: f64) -> Bitset {
        let mut m = Bitset::zeros(n);
        let mut i = 0;
        while i < n {
            let run = 1 + rng.below(200) as usize;
            let kind = rng.below(4);
            for j in i..(i + run).min(n) {
                let v = match kind {
                    0 => true,
                    1 => false,
                    _ => rng.uniform_f64() < p,
                };
                m.set(j, v);
            }
            i += run;
        }
        m
    }

    #[test]
    fn drop_grow_equals_the_two_selections() {
        let mut rng = PhiloxRng::new(11, 0);
        for case in 0..40 {
            let (segs, max_len) = match case % 4 {
                0 => (1, 200),
                1 => (8, 3000),
                2 => (5, 40_000),
                _ => (3, 70_000),
            };
            let l = layout(&mut rng, segs, max_len);
            let n = l.len();
            let chunks = Chunks::new(&l);
            let distinct = 1 + rng.below(40);
            let g = gradient(&mut rng, n, distinct);
            let units = chunks.split(l.split(&g).unwrap());
            let p = [0.02, 0.3, 0.5, 0.8, 0.99][case % 5];
            let m = mask(&mut rng, n, p);
            let seed = rng.next_u64();
            let update = rng.next_u32();
            for rate in [0.0f32, 0.001, 0.2, 0.5, 0.97, 1.0, 3.0] {
                let want = drop_grow_by_selections(&chunks, &units, &m, n, rate, seed, update);
                let got = drop_grow(&chunks, &units, &m, n, rate, seed, update);
                assert!(got == want, "case {case} n {n} p {p} rate {rate}");
                if rate <= 1.0 {
                    assert_eq!(got.count_ones(), m.count_ones());
                }
            }
        }
    }

    #[test]
    fn drop_grow_is_independent_of_the_thread_count() {
        let mut rng = PhiloxRng::new(5, 0);
        let l = layout(&mut rng, 6, 100_000);
        let n = l.len();
        let chunks = Chunks::new(&l);
        let g = gradient(&mut rng, n, 7);
        let units = chunks.split(l.split(&g).unwrap());
        let m = random_mask(n, n / 2, 3);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| drop_grow(&chunks, &units, &m, n, 0.2, 3, 4))
        };
        let one = run(1);
        assert!(one == drop_grow_by_selections(&chunks, &units, &m, n, 0.2, 3, 4));
        for threads in [2, 3, 7] {
            assert!(run(threads) == one, "{threads} threads");
        }
    }

    #[test]
    fn random_mask_takes_the_smallest_keys() {
        for (n, live, seed) in [
            (1usize, 1usize, 0u64),
            (100, 37, 9),
            (70_001, 20_000, 1 << 40),
        ] {
            let m = random_mask(n, live, seed);
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by_key(|&i| (index_key(seed, 0, i as u64), i));
            let mut want = Bitset::zeros(n);
            for &i in &idx[..live] {
                want.set(i, true);
            }
            assert!(m == want, "n {n} live {live}");
        }
    }
}
