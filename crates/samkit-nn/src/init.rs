//! Seeded initialisation (splitmix64 → uniform floats), enough for tests and benches; golden
//! and checkpoint tests load exact weights instead.

/// A small deterministic generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Fills with values uniform in `[-bound, bound)`.
    pub fn fill_uniform(&mut self, dst: &mut [f32], bound: f32) {
        for v in dst {
            *v = (2.0 * self.uniform() - 1.0) * bound;
        }
    }

    /// Standard normal values (Box–Muller).
    pub fn fill_normal(&mut self, dst: &mut [f32], std: f32) {
        for v in dst {
            let u1 = self.uniform().max(1e-7) as f64;
            let u2 = self.uniform() as f64;
            *v = ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std;
        }
    }
}
