//! A fixed-length bitset over the flat parameter index space (Sparse SAM's masks).
use std::sync::atomic::{AtomicU64, Ordering};

/// Eight 0.0/1.0 floats for each byte value, little-endian bit order.
static BYTE_TO_FLOATS: [[f32; 8]; 256] = {
    let mut t = [[0f32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut k = 0;
        while k < 8 {
            t[b][k] = ((b >> k) & 1) as f32;
            k += 1;
        }
        b += 1;
    }
    t
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitset {
    len: usize,
    words: Vec<u64>,
}

impl Bitset {
    pub fn zeros(len: usize) -> Self {
        Bitset {
            len,
            words: vec![0; len.div_ceil(64)],
        }
    }

    pub fn ones(len: usize) -> Self {
        let mut b = Bitset {
            len,
            words: vec![!0; len.div_ceil(64)],
        };
        b.clear_tail();
        b
    }

    fn clear_tail(&mut self) {
        let r = self.len % 64;
        if r != 0 {
            if let Some(w) = self.words.last_mut() {
                *w &= (1u64 << r) - 1;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get(&self, i: usize) -> bool {
        (self.words[i >> 6] >> (i & 63)) & 1 == 1
    }

    #[inline]
    pub fn set(&mut self, i: usize, v: bool) {
        let m = 1u64 << (i & 63);
        if v {
            self.words[i >> 6] |= m;
        } else {
            self.words[i >> 6] &= !m;
        }
    }

    pub fn count_ones(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// Indices of set bits, ascending.
    pub fn ones_iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + b)
            })
        })
    }

    /// Writes `mask[i] as f32` (0 or 1) for `i in start..start + out.len()`: a byte of the
    /// mask at a time through a table of eight floats per byte value, scalar at the ends.
    #[inline]
    pub fn expand(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        let bytes: &[u8] = bytemuck::cast_slice(&self.words);
        let mut i = start;
        let mut o = out;
        let bit = |i: usize| ((bytes[i >> 3] >> (i & 7)) & 1) as f32;
        while i < end && i & 7 != 0 {
            o[0] = bit(i);
            o = &mut o[1..];
            i += 1;
        }
        let whole = (end - i) / 8;
        let (body, tail) = o.split_at_mut(whole * 8);
        for (dst, &b) in body
            .chunks_exact_mut(8)
            .zip(&bytes[i >> 3..(i >> 3) + whole])
        {
            dst.copy_from_slice(&BYTE_TO_FLOATS[b as usize]);
        }
        i += whole * 8;
        for t in tail.iter_mut() {
            *t = bit(i);
            i += 1;
        }
    }

    /// `self ^ flips`: the bits of `flips` toggled (its bits past `len` are ignored).
    pub(crate) fn xor_words(&self, flips: &[u64]) -> Bitset {
        assert_eq!(flips.len(), self.words.len(), "one flip word per word");
        let mut b = Bitset {
            len: self.len,
            words: self.words.iter().zip(flips).map(|(&m, &f)| m ^ f).collect(),
        };
        b.clear_tail();
        b
    }

    /// `self & !drop | grow`, the SSAM-D update.
    pub fn drop_grow(&self, drop: &Bitset, grow: &Bitset) -> Bitset {
        let words = self
            .words
            .iter()
            .zip(&drop.words)
            .zip(&grow.words)
            .map(|((&m, &d), &g)| (m & !d) | g)
            .collect();
        Bitset {
            len: self.len,
            words,
        }
    }

    /// Little-endian bytes of the words, for safetensors.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    pub fn from_bytes(len: usize, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != len.div_ceil(64) * 8 {
            return None;
        }
        let words = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let mut b = Bitset { len, words };
        b.clear_tail();
        Some(b)
    }
}

/// A bitset that many threads set bits in at once (OR is commutative, so the result does not
/// depend on the schedule).
pub(crate) struct AtomicBitset {
    len: usize,
    words: Vec<AtomicU64>,
}

impl AtomicBitset {
    pub fn zeros(len: usize) -> Self {
        AtomicBitset {
            len,
            words: (0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    #[inline]
    pub fn or_word(&self, word: usize, bits: u64) {
        if bits != 0 {
            self.words[word].fetch_or(bits, Ordering::Relaxed);
        }
    }

    pub fn finish(self) -> Bitset {
        Bitset {
            len: self.len,
            words: self.words.into_iter().map(AtomicU64::into_inner).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_count() {
        let mut b = Bitset::zeros(130);
        for i in [0, 63, 64, 129] {
            b.set(i, true);
        }
        assert_eq!(b.count_ones(), 4);
        assert_eq!(b.ones_iter().collect::<Vec<_>>(), vec![0, 63, 64, 129]);
        let r = Bitset::from_bytes(130, &b.to_bytes()).unwrap();
        assert_eq!(r, b);
        assert_eq!(Bitset::ones(130).count_ones(), 130);
        let mut e = [0f32; 3];
        b.expand(63, &mut e);
        assert_eq!(e, [1.0, 1.0, 0.0]);
        // Every start and length against the bit-by-bit definition.
        let mut r = Bitset::zeros(300);
        for i in (0..300).filter(|i| (i * 7) % 11 < 5) {
            r.set(i, true);
        }
        for start in 0..40 {
            for len in 0..80 {
                let mut out = vec![9f32; len];
                r.expand(start, &mut out);
                let want: Vec<f32> = (start..start + len)
                    .map(|i| r.get(i) as u8 as f32)
                    .collect();
                assert_eq!(out, want, "start {start} len {len}");
            }
        }
    }
}
