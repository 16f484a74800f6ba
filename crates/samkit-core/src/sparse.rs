//! Sparse SAM's masks: SSAM-F's Fisher top-k and SSAM-D's random start and drop/grow.
//!
//! SSAM-D's keys (a Philox evaluation per index, or `|g|` looked up through the layout) are
//! computed once into a key buffer; the radix select then makes its four cheap passes over it.
use rayon::prelude::*;

use crate::bitset::Bitset;
use crate::chunks::{ChunkInfo, Chunks};
use crate::philox::index_key;
use crate::select::{f32_key, select_top_k, KeySource, SliceKeys};

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
    keys.par_chunks_mut(crate::chunks::CHUNK)
        .enumerate()
        .for_each(|(c, k)| {
            let base = c * crate::chunks::CHUNK;
            for (j, x) in k.iter_mut().enumerate() {
                *x = random_key(seed, 0, base + j);
            }
        });
    select_top_k(chunks.infos(), n, live, &BufferKeys { keys: &keys })
}

/// SSAM-D's update: drop `⌊L·rate⌋` live indices with the smallest `|g|`, then grow as many
/// among the indices dead before this update, by the smallest Philox keys of `update`.
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
    let k = ((live as f64) * rate as f64).floor() as usize;
    let k = k.min(n - live);
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
