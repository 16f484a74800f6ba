//! Philox4x32-10 (Salmon et al., SC 2011), the counter-based generator of SSAM-D.
//!
//! A counter-based generator gives every (index, update) pair its own random key without any
//! sequential state, so the CPU and the GPU draw bit-identical keys in any order.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

#[inline]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

/// Ten rounds of Philox4x32 on `ctr` under `key`.
#[inline]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for r in 0..10 {
        if r > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (hi0, lo0) = mulhilo(M0, c[0]);
        let (hi1, lo1) = mulhilo(M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The 32-bit key SSAM-D gives flat index `i` at mask update `update` under `seed`:
/// counter `(i_lo, i_hi, update, 0)`, key `(seed_lo, seed_hi)`, first output word.
#[inline]
pub fn index_key(seed: u64, update: u32, i: u64) -> u32 {
    philox4x32_10(
        [i as u32, (i >> 32) as u32, update, 0],
        [seed as u32, (seed >> 32) as u32],
    )[0]
}

/// Counters evaluated side by side by [`index_keys`]: two AVX2 registers of 64-bit lanes per
/// state word, enough independent chains to hide the multiplier's latency without spilling.
const LANES: usize = 8;

const LO: u64 = 0xFFFF_FFFF;

/// [`index_key`] of `LANES` indices at once, as lane-wise array loops that LLVM turns into
/// vector code: the same arithmetic as [`philox4x32_10`], keeping only the first output word.
///
/// Each 32-bit state word lives in a 64-bit lane, so a product is one `pmuludq` (which reads
/// the low halves) and its high word one shift. The high halves of `c0`..`c3` may hold garbage:
/// `c1` and `c3` only feed XORs into `c0` and `c2`, which are only read through their low
/// halves, by the products and by the final truncation.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn index_keys_lanes(key: [u32; 2], update: u32, idx: &[u64; LANES]) -> [u32; LANES] {
    let mut c0 = [0u64; LANES];
    let mut c1 = [0u64; LANES];
    let mut c2 = [update as u64; LANES];
    let mut c3 = [0u64; LANES];
    for l in 0..LANES {
        c0[l] = idx[l];
        c1[l] = idx[l] >> 32;
    }
    let (mut k0, mut k1) = (key[0] as u64, key[1] as u64);
    for r in 0..10 {
        if r > 0 {
            k0 = (k0 as u32).wrapping_add(W0) as u64;
            k1 = (k1 as u32).wrapping_add(W1) as u64;
        }
        for l in 0..LANES {
            let p0 = (c0[l] & LO) * M0 as u64;
            let p1 = (c2[l] & LO) * M1 as u64;
            c0[l] = (p1 >> 32) ^ c1[l] ^ k0;
            c1[l] = p1;
            c2[l] = (p0 >> 32) ^ c3[l] ^ k1;
            c3[l] = p0;
        }
    }
    let mut out = [0u32; LANES];
    for l in 0..LANES {
        out[l] = c0[l] as u32;
    }
    out
}

#[inline(always)]
fn index_keys_portable(seed: u64, update: u32, idx: &[u64], out: &mut [u32]) {
    let key = [seed as u32, (seed >> 32) as u32];
    let mut ii = idx.chunks_exact(LANES);
    let mut oo = out.chunks_exact_mut(LANES);
    for (i, o) in (&mut ii).zip(&mut oo) {
        let i: &[u64; LANES] = i.try_into().expect("LANES indices");
        o.copy_from_slice(&index_keys_lanes(key, update, i));
    }
    let (ri, ro) = (ii.remainder(), oo.into_remainder());
    if !ri.is_empty() {
        let mut i = [0u64; LANES];
        i[..ri.len()].copy_from_slice(ri);
        ro.copy_from_slice(&index_keys_lanes(key, update, &i)[..ri.len()]);
    }
}

/// The portable loop compiled for AVX2 (four 32×32→64 products per instruction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn index_keys_avx2(seed: u64, update: u32, idx: &[u64], out: &mut [u32]) {
    index_keys_portable(seed, update, idx, out)
}

/// [`index_key`] of many indices: `out[j] = index_key(seed, update, idx[j])`, bit for bit,
/// several counters at a time (with AVX2 where the CPU has it).
pub fn index_keys(seed: u64, update: u32, idx: &[u64], out: &mut [u32]) {
    assert_eq!(idx.len(), out.len(), "one output per index");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of
        // `index_keys_avx2`, which is otherwise the safe portable loop.
        unsafe { index_keys_avx2(seed, update, idx, out) };
        return;
    }
    index_keys_portable(seed, update, idx, out)
}

/// A seeded stream of random numbers from Philox4x32-10 in counter mode: reproducible on
/// every platform, and cheap to fork into independent streams (`seed`, `stream`).
#[derive(Clone, Debug)]
pub struct PhiloxRng {
    key: [u32; 2],
    stream: u32,
    counter: u64,
    buf: [u32; 4],
    used: usize,
}

impl PhiloxRng {
    pub fn new(seed: u64, stream: u32) -> Self {
        PhiloxRng {
            key: [seed as u32, (seed >> 32) as u32],
            stream,
            counter: 0,
            buf: [0; 4],
            used: 4,
        }
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.used == 4 {
            let c = self.counter;
            self.buf = philox4x32_10(
                [c as u32, (c >> 32) as u32, self.stream, 0x5A4D_4B54],
                self.key,
            );
            self.counter += 1;
            self.used = 0;
        }
        let v = self.buf[self.used];
        self.used += 1;
        v
    }

    pub fn next_u64(&mut self) -> u64 {
        ((self.next_u32() as u64) << 32) | self.next_u32() as u64
    }

    /// Uniform in `[0, 1)` with 24 random bits.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform_f64();
        let u2 = self.uniform_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform in `0..n` without modulo bias (Lemire's method); `n > 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        loop {
            let x = self.next_u64();
            let m = (x as u128) * (n as u128);
            let lo = m as u64;
            if lo >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_roughly_uniform() {
        let mut a = PhiloxRng::new(42, 1);
        let mut b = PhiloxRng::new(42, 1);
        let mut c = PhiloxRng::new(42, 2);
        let xs: Vec<u32> = (0..10).map(|_| a.next_u32()).collect();
        assert_eq!(xs, (0..10).map(|_| b.next_u32()).collect::<Vec<_>>());
        assert_ne!(xs, (0..10).map(|_| c.next_u32()).collect::<Vec<_>>());
        let mean: f64 = (0..20_000).map(|_| a.uniform() as f64).sum::<f64>() / 20_000.0;
        assert!((mean - 0.5).abs() < 0.01);
        let m2: f64 = (0..20_000).map(|_| a.normal().powi(2)).sum::<f64>() / 20_000.0;
        assert!((m2 - 1.0).abs() < 0.05);
        let mut hist = [0usize; 3];
        for _ in 0..3000 {
            hist[a.below(3) as usize] += 1;
        }
        assert!(hist.iter().all(|&h| (900..1100).contains(&h)));
        let mut v: Vec<u32> = (0..50).collect();
        a.shuffle(&mut v);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(v, s);
    }

    /// The batched keys equal the scalar ones: every batch length around the lane count,
    /// indices above 2^32, extreme seeds and updates, and the portable path as well as the
    /// dispatched one.
    #[test]
    fn batched_keys_equal_scalar_keys() {
        let mut rng = PhiloxRng::new(7, 3);
        let seeds = [0u64, 1, u64::MAX, 0xDEAD_BEEF_0123_4567, rng.next_u64()];
        let updates = [0u32, 1, 5, u32::MAX, rng.next_u32()];
        for (t, (&seed, &update)) in seeds.iter().zip(&updates).enumerate() {
            for len in (0..3 * LANES + 2).chain([1000]) {
                let idx: Vec<u64> = (0..len as u64)
                    .map(|j| match (j + t as u64) % 4 {
                        0 => j,
                        1 => rng.next_u64(),
                        2 => (1u64 << 32) + j,
                        _ => u64::MAX - j,
                    })
                    .collect();
                let want: Vec<u32> = idx.iter().map(|&i| index_key(seed, update, i)).collect();
                let mut got = vec![0u32; len];
                index_keys(seed, update, &idx, &mut got);
                assert_eq!(got, want, "seed {seed} update {update} len {len}");
                let mut got = vec![0u32; len];
                index_keys_portable(seed, update, &idx, &mut got);
                assert_eq!(got, want, "portable: seed {seed} update {update} len {len}");
            }
        }
    }

    /// Known-answer vectors of the Random123 distribution (kat_vectors, philox4x32_10).
    #[test]
    fn random123_known_answers() {
        assert_eq!(
            philox4x32_10([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([!0; 4], [!0; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }
}
