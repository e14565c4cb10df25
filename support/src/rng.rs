//! Seeded, reproducible random inputs: `rand` with the small `XorShiftRng` (fast, and the same
//! sequence on every platform for a given seed).

use rand::{RngExt, SeedableRng};
use rand_xorshift::XorShiftRng;

pub use rand::Rng;
pub use rand_xorshift::XorShiftRng as TestRng;

/// A generator from a 64-bit seed.
pub fn seeded(seed: u64) -> XorShiftRng {
    XorShiftRng::seed_from_u64(seed)
}

/// `len` values uniform in `[lo, hi)`, as `f32`.
pub fn uniform_f32(rng: &mut XorShiftRng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// A value uniform in `[0, 1)` with 53 random bits.
pub fn unit_f64(rng: &mut XorShiftRng) -> f64 {
    rng.random::<f64>()
}
