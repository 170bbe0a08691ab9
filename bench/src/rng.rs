//! A tiny xorshift64* generator: reproducible packet loss without a dependency. The load
//! tool's lossy path (`tun.rs`) and the tests' UDP relay (`tests/common/relay.rs`, which
//! includes this file) drop packets by it.

/// xorshift64*, seeded.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}
