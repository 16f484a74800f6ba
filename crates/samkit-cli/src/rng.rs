//! The experiments' random streams: samkit-core's counter-based Philox generator under the
//! names the experiments use.
//!
//! Every random stream of an experiment is `Rng::stream(seed, id)`: a pure function of the
//! user's `--seed` and the stream's id (seed index, optimizer, ...), so results do not depend
//! on how rayon schedules the work.
use samkit_core::philox::PhiloxRng;

#[derive(Clone, Debug)]
pub struct Rng(PhiloxRng);

impl Rng {
    #[cfg(test)]
    pub fn new(seed: u64) -> Self {
        Rng(PhiloxRng::new(seed, 0))
    }

    /// An independent stream for `(seed, id)`.
    pub fn stream(seed: u64, id: u64) -> Self {
        // Philox streams are 32-bit; the id's high half goes into the key.
        let key = seed ^ (id >> 32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Rng(PhiloxRng::new(key, (id as u32).wrapping_add(1)))
    }

    #[cfg(test)]
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform index in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        self.0.normal()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        self.0.shuffle(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::stream(7, 1).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::stream(7, 1).next_u64(), Rng::stream(7, 2).next_u64());
        assert_ne!(Rng::stream(7, 1).next_u64(), Rng::stream(8, 1).next_u64());
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut r = Rng::new(3);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }

    #[test]
    fn below_and_shuffle_stay_in_range() {
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| r.below(7) < 7));
        let mut v: Vec<usize> = (0..50).collect();
        r.shuffle(&mut v);
        let mut s = v.clone();
        s.sort_unstable();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
        assert_ne!(v, s);
    }
}
