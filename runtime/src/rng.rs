//! Philox 4x32-10 counter-based RNG (Salmon et al., "Parallel random numbers: as easy as
//! 1, 2, 3", SC'11). The value at stream position `i` for a seed is a pure function of
//! `(seed, offset + i)`, so a CUDA kernel that computes the same function per element
//! reproduces the CPU stream exactly, whatever its launch shape.
//!
//! Stream definition (shared with the CUDA kernels): key = (seed low word, seed high word);
//! element `n` (a 64-bit position) is word `n % 4` of the Philox block whose 128-bit counter
//! is (low word of n/4, high word of n/4, 0, 0).

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Ten rounds of Philox 4x32 on one counter block.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        c = [((p1 >> 32) as u32) ^ c[1] ^ k[0], p1 as u32, ((p0 >> 32) as u32) ^ c[3] ^ k[1], p0 as u32];
    }
    c
}

/// The 32-bit word at absolute stream position `n` for `seed`.
pub fn philox_u32(seed: u64, n: u64) -> u32 {
    let block = n / 4;
    let out = philox4x32_10([block as u32, (block >> 32) as u32, 0, 0], [seed as u32, (seed >> 32) as u32]);
    out[(n % 4) as usize]
}

/// Maps a word to [0, 1) with 24 bits of precision (every value exactly representable in f32).
pub fn u32_to_unit_f32(x: u32) -> f32 {
    (x >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// A position in the stream of one seed. Drawing advances the offset, which is all the state
/// there is: saving `(seed, offset)` saves the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Philox {
    pub seed: u64,
    pub offset: u64,
}

impl Philox {
    pub fn new(seed: u64) -> Self {
        Philox { seed, offset: 0 }
    }

    /// Fills `out` with uniforms in [0, 1) from positions `offset..offset+len` and advances.
    pub fn fill_uniform(&mut self, out: &mut [f32]) {
        let base = self.offset;
        for (i, o) in out.iter_mut().enumerate() {
            *o = u32_to_unit_f32(philox_u32(self.seed, base + i as u64));
        }
        self.offset += out.len() as u64;
    }

    pub fn uniform(&mut self, len: usize) -> Vec<f32> {
        let mut v = vec![0.0; len];
        self.fill_uniform(&mut v);
        v
    }

    /// Standard normals by Box–Muller on consecutive pairs of uniforms (positions 2i, 2i+1).
    pub fn normal(&mut self, len: usize) -> Vec<f32> {
        let u = self.uniform(len.div_ceil(2) * 2);
        let mut out = Vec::with_capacity(len + 1);
        for pair in u.chunks_exact(2) {
            // 1 - u lies in (0, 1], so the log is finite.
            let r = (-2.0 * f64::from(1.0 - pair[0]).ln()).sqrt();
            let theta = std::f64::consts::TAU * f64::from(pair[1]);
            out.push((r * theta.cos()) as f32);
            out.push((r * theta.sin()) as f32);
        }
        out.truncate(len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors published with the Random123 library.
    #[test]
    fn known_answers() {
        assert_eq!(philox4x32_10([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd]);
        assert_eq!(
            philox4x32_10([0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344], [0xa4093822, 0x299f31d0]),
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1]
        );
    }

    #[test]
    fn stream_is_independent_of_how_it_is_drawn() {
        let mut whole = Philox::new(7);
        let all = whole.uniform(11);
        let mut split = Philox::new(7);
        let mut parts = split.uniform(3);
        parts.extend(split.uniform(8));
        assert_eq!(all, parts);
        assert_eq!(whole, split);
        let direct: Vec<f32> = (0..11).map(|n| u32_to_unit_f32(philox_u32(7, n))).collect();
        assert_eq!(all, direct);
    }

    #[test]
    fn uniform_moments() {
        let u = Philox::new(1).uniform(100_000);
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().map(|&x| x as f64).sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        let n = Philox::new(2).normal(100_001);
        let m = n.iter().map(|&x| x as f64).sum::<f64>() / n.len() as f64;
        let v = n.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n.len() as f64;
        assert!(m.abs() < 0.01 && (v - 1.0).abs() < 0.02, "mean {m} var {v}");
    }
}
