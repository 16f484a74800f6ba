//! Sparse SAM's masks: SSAM-F's Fisher top-k and SSAM-D's random start and drop/grow.
use crate::bitset::Bitset;
use crate::chunks::{ChunkInfo, Chunks};
use crate::philox::index_key;
use crate::select::{f32_key, select_top_k, KeySource, SliceKeys};

/// The `live` largest Fisher entries (ties to the lower index).
pub fn fisher_mask(chunks: &Chunks, fisher: &[&[f32]], n: usize, live: usize) -> Bitset {
    select_top_k(chunks.infos(), n, live, &SliceKeys(fisher))
}

/// Philox keys of the candidates, inverted so that the smallest key is selected first.
struct RandomKeys<'a> {
    seed: u64,
    update: u32,
    /// Only indices where the bit is clear are candidates (SSAM-D grows among dead indices).
    dead_in: Option<&'a Bitset>,
}

impl KeySource for RandomKeys<'_> {
    fn fill(&self, _: usize, info: &ChunkInfo, start: usize, keys: &mut [u32], valid: &mut [bool]) {
        for (j, (k, v)) in keys.iter_mut().zip(valid.iter_mut()).enumerate() {
            let i = info.global + start + j;
            *v = self.dead_in.is_none_or(|m| !m.get(i));
            *k = if *v {
                !index_key(self.seed, self.update, i as u64)
            } else {
                0
            };
        }
    }
}

/// `|g|` among the live indices, inverted so that the smallest magnitude is selected first.
struct DropKeys<'a, 'b> {
    g: &'a [&'b [f32]],
    live: &'a Bitset,
}

impl KeySource for DropKeys<'_, '_> {
    fn fill(
        &self,
        unit: usize,
        info: &ChunkInfo,
        start: usize,
        keys: &mut [u32],
        valid: &mut [bool],
    ) {
        let g = &self.g[unit][start..start + keys.len()];
        for (j, ((k, v), &x)) in keys.iter_mut().zip(valid.iter_mut()).zip(g).enumerate() {
            *v = self.live.get(info.global + start + j);
            *k = !f32_key(x.abs());
        }
    }
}

/// SSAM-D's initial mask: the `live` indices with the smallest Philox keys at update 0.
pub fn random_mask(n: usize, live: usize, seed: u64) -> Bitset {
    let layout = crate::layout::Layout::flat(n).expect("n > 0");
    let chunks = Chunks::new(&layout);
    select_top_k(
        chunks.infos(),
        n,
        live,
        &RandomKeys {
            seed,
            update: 0,
            dead_in: None,
        },
    )
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
    let drop = select_top_k(chunks.infos(), n, k, &DropKeys { g, live: mask });
    let grow = select_top_k(
        chunks.infos(),
        n,
        k,
        &RandomKeys {
            seed,
            update,
            dead_in: Some(mask),
        },
    );
    mask.drop_grow(&drop, &grow)
}
