//! `linear` for activations of few rows: the small scales of a generation, where x has 2 to
//! a few dozen rows (two CFG rows per token). There gemm's packing of both operands and its
//! split of the output between threads cost more than the products (an 8-row x against a
//! 2048 → 8192 weight ran at 18 GFLOP/s here), and a bf16 weight was first widened to f32 in
//! memory. Here each thread takes a band of output features and reads its weight rows once,
//! straight from storage (bf16 widened in registers), against x rows that stay in cache: the
//! product runs at the speed the weights can be read.

use infinity_runtime::DType;
use infinity_runtime::half::bf16;
use rayon::prelude::*;

/// Whether `linear` takes this path for an x of `rows_per_item` rows per item — per entry of
/// its first dimension when it has rank 3 or more; a matrix is one item — against a weight of
/// `weight` dtype. Each path gives a row the same bits whatever the other rows, but the two
/// paths differ in their last bits, so the choice must not depend on how many items are
/// stacked: a generation's batch must not move an image from one path to the other (the
/// server promises the image a request would get alone). The crossover, where gemm's cache
/// blocking starts to win, was measured on the 2B's and layer12's shapes at about 128 rows
/// in all, that is 64 per item of generation's guided pairs; a bf16 weight also saves gemm's
/// widening, so it stays here longer.
pub(crate) fn takes(rows_per_item: usize, weight: DType) -> bool {
    match weight {
        DType::F32 => rows_per_item <= 64,
        DType::BF16 => rows_per_item <= 256,
        _ => false,
    }
}

/// A weight element as stored: f32, or bf16 (widened exactly, by a shift).
pub(crate) trait WeightElement: Copy + Send + Sync + 'static {
    const IS_BF16: bool;
    fn widen(self) -> f32;
}

impl WeightElement for f32 {
    const IS_BF16: bool = false;
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl WeightElement for bf16 {
    const IS_BF16: bool = true;
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

/// `x (rows × k) · wᵀ + bias` for w (n × k) row-major: the (rows × n) result, row-major.
pub(crate) fn linear<W: WeightElement>(x: &[f32], rows: usize, w: &[W], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
    let k = x.len().checked_div(rows).unwrap_or(0);
    assert!(x.len() == rows * k && w.len() == n * k, "few_rows::linear: operands do not match (rows {rows}, n {n})");
    let mut out = infinity_runtime::recycle::for_overwrite(rows * n);
    if rows == 0 || n == 0 {
        return out;
    }
    // Each task's band of output features, transposed (feature-major) so that bands are
    // contiguous; enough bands to keep every thread busy to the end.
    let mut transposed = vec![0.0f32; n * rows];
    let band = n.div_ceil(rayon::current_num_threads() * 8).next_multiple_of(4);
    let kernel = Kernel::detect();
    // x copied to cache-line alignment, so that no vector load of it straddles two lines
    // (10–15 % at 8–128 rows here); a row of k = 768 or 2048 stays aligned.
    let mut lines = vec![CacheLine([0.0; 16]); x.len().div_ceil(16)];
    let aligned = &mut bytemuck::cast_slice_mut::<CacheLine, f32>(&mut lines)[..x.len()];
    aligned.copy_from_slice(x);
    let x = &*aligned;
    transposed
        .par_chunks_mut(band * rows)
        .zip(w.par_chunks(band * k.max(1)))
        .for_each(|(out_band, w_band)| kernel.band(x, rows, k, w_band, out_band));
    // Back to row-major in square blocks, so that both sides are read and written a few cache
    // lines at a time (row by row, each element was a cache line of its own: 6 % of the 2B).
    const BLOCK: usize = 32;
    out.par_chunks_mut(BLOCK * n).enumerate().for_each(|(block, out_rows)| {
        for j0 in (0..n).step_by(BLOCK) {
            for (i, row) in out_rows.chunks_mut(n).enumerate() {
                let r = block * BLOCK + i;
                let end = (j0 + BLOCK).min(n);
                for (j, o) in (j0..end).zip(&mut row[j0..end]) {
                    *o = transposed[j * rows + r] + bias.map_or(0.0, |b| b[j]);
                }
            }
        }
    });
    out
}

/// Bytes of x rows held in cache while a band's weight rows stream past them (measured on the
/// 2B's shapes, bf16, 2 threads, Xeon with 2 MiB L2: 512 rows × 2048 → 6144 124 ms unblocked,
/// 90 with 512 KiB blocks, 95 with 1 MiB, 99 with 2 MiB; 288 rows × 8192 → 2048 84 → 56 ms).
const X_BLOCK_BYTES: usize = 512 << 10;

/// 16 floats on a 64-byte boundary.
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
struct CacheLine([f32; 16]);

/// The instruction set the band kernel runs in, picked from what the CPU has at run time.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    /// The fastest kernel, found once (every small-scale projection asks).
    fn detect() -> Self {
        static FASTEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *FASTEST.get_or_init(|| *Self::available().last().expect("the portable kernel runs anywhere"))
    }

    /// Every kernel this CPU can run, the fastest last (the tests check each one).
    fn available() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut all = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                all.push(Kernel::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                all.push(Kernel::Avx512);
            }
        }
        all
    }

    /// `out[j·rows + r] = Σ_i w[j·k + i]·x[r·k + i]` for the weight rows j of the band `w`.
    fn band<W: WeightElement>(self, x: &[f32], rows: usize, k: usize, w: &[W], out: &mut [f32]) {
        let n = out.len() / rows.max(1);
        assert!(
            x.len() >= rows * k && out.len() == n * rows && w.len() == n * k,
            "few_rows: band operands do not match"
        );
        match self {
            // SAFETY: `available` offers these only where the CPU has the features, and the
            // assert above keeps every read inside x and w (the kernels read rows·k of x and
            // k per weight row, and write rows per weight row of `out`).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => unsafe { x86::band_avx512(x, rows, k, w, n, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::band_avx2(x, rows, k, w, n, out) },
            Kernel::Portable => {
                for (w_row, out_row) in w.chunks(k.max(1)).zip(out.chunks_mut(rows)) {
                    for (o, x_row) in out_row.iter_mut().zip(x.chunks(k.max(1))) {
                        *o = w_row.iter().zip(x_row).map(|(w, x)| w.widen() * x).sum();
                    }
                }
            }
        }
    }
}

/// The x86 kernels. A band is visited in tiles of NW weight rows × NX x rows whose NW·NX
/// sums run in vector lanes, so that each weight vector read meets NX x vectors. (Blocking k
/// so that a tile's weight rows stay in L1 while the x rows pass was tried: no faster here.)
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::WeightElement;

    /// One instruction set's vector operations.
    trait Simd {
        type V: Copy;
        const LANES: usize;
        unsafe fn zero() -> Self::V;
        unsafe fn load(p: *const f32) -> Self::V;
        unsafe fn load_weight<W: WeightElement>(p: *const W) -> Self::V;
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        unsafe fn sum(v: Self::V) -> f32;
    }

    struct Avx512;
    struct Avx2;

    impl Simd for Avx512 {
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            unsafe { _mm512_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_weight<W: WeightElement>(p: *const W) -> __m512 {
            unsafe {
                if W::IS_BF16 {
                    let halves = _mm256_loadu_si256(p as *const __m256i);
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(halves)))
                } else {
                    _mm512_loadu_ps(p as *const f32)
                }
            }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn sum(v: __m512) -> f32 {
            unsafe { _mm512_reduce_add_ps(v) }
        }
    }

    impl Simd for Avx2 {
        type V = __m256;
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> __m256 {
            unsafe { _mm256_setzero_ps() }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_weight<W: WeightElement>(p: *const W) -> __m256 {
            unsafe {
                if W::IS_BF16 {
                    let halves = _mm_loadu_si128(p as *const __m128i);
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(halves)))
                } else {
                    _mm256_loadu_ps(p as *const f32)
                }
            }
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn sum(v: __m256) -> f32 {
            unsafe {
                let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
                _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps::<1>(pair, pair)))
            }
        }
    }

    /// 16 lanes; a 4 × 4 tile keeps 16 accumulators, 4 weight vectors and an x vector in the
    /// 32 registers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn band_avx512<W: WeightElement>(
        x: &[f32],
        rows: usize,
        k: usize,
        w: &[W],
        n: usize,
        out: &mut [f32],
    ) {
        unsafe { band::<Avx512, W, 4, 4>(x, rows, k, w, n, out) }
    }

    /// 8 lanes in 16 registers: a 2 × 4 tile keeps 8 accumulators, 2 weight vectors and an x
    /// vector.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn band_avx2<W: WeightElement>(
        x: &[f32],
        rows: usize,
        k: usize,
        w: &[W],
        n: usize,
        out: &mut [f32],
    ) {
        unsafe { band::<Avx2, W, 2, 4>(x, rows, k, w, n, out) }
    }

    /// `out[j·rows + r] = Σ_i w[j·k + i]·x[r·k + i]` over the band's n weight rows.
    ///
    /// Safety: the CPU has S's features; x holds rows·k elements, w n·k and out n·rows.
    #[inline(always)]
    unsafe fn band<S: Simd, W: WeightElement, const NW: usize, const NX: usize>(
        x: &[f32],
        rows: usize,
        k: usize,
        w: &[W],
        n: usize,
        out: &mut [f32],
    ) {
        let (xp, wp, op) = (x.as_ptr(), w.as_ptr(), out.as_mut_ptr());
        // x in blocks of rows that stay in L2 while the band's weight rows stream past them
        // once per block (without it 512 rows × 2048 were read from L3 for every tile).
        let block = (super::X_BLOCK_BYTES / (4 * k).max(1)).max(NX) / NX * NX;
        for first in (0..rows).step_by(block) {
            let last = (first + block).min(rows);
            let mut j = 0;
            while j < n {
                let nw = if j + NW <= n { NW } else { 1 };
                let mut r = first;
                while r < last {
                    let nx = if r + NX <= last { NX } else { 1 };
                    // SAFETY: weight rows j..j+nw and x rows r..r+nx exist; their sums land in
                    // out[(j + a)·rows + r + b], inside out.
                    unsafe {
                        let (x, w, out) = (xp.add(r * k), wp.add(j * k), op.add(j * rows + r));
                        match (nw == NW, nx == NX) {
                            (true, true) => tile::<S, W, NW, NX>(x, w, out, k, rows),
                            (true, false) => tile::<S, W, NW, 1>(x, w, out, k, rows),
                            (false, true) => tile::<S, W, 1, NX>(x, w, out, k, rows),
                            (false, false) => tile::<S, W, 1, 1>(x, w, out, k, rows),
                        }
                    }
                    r += nx;
                }
                j += nw;
            }
        }
    }

    /// The NW × NX dot products of weight rows w.. and x rows x.. (row stride k), into
    /// out[a·out_stride + b].
    // The accumulators form an NW × NX register tile indexed by both loop variables.
    #[allow(clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn tile<S: Simd, W: WeightElement, const NW: usize, const NX: usize>(
        x: *const f32,
        w: *const W,
        out: *mut f32,
        k: usize,
        out_stride: usize,
    ) {
        // SAFETY (the whole body): the rows hold k elements; the vector loads stop at `full`.
        unsafe {
            let full = k - k % S::LANES;
            let mut acc = [[S::zero(); NX]; NW];
            let mut i = 0;
            while i < full {
                let wv: [S::V; NW] = std::array::from_fn(|a| S::load_weight(w.add(a * k + i)));
                for b in 0..NX {
                    let xv = S::load(x.add(b * k + i));
                    for a in 0..NW {
                        acc[a][b] = S::fma(wv[a], xv, acc[a][b]);
                    }
                }
                i += S::LANES;
            }
            for a in 0..NW {
                for b in 0..NX {
                    let tail: f32 = (full..k).map(|i| (*w.add(a * k + i)).widen() * *x.add(b * k + i)).sum();
                    *out.add(a * out_stride + b) = S::sum(acc[a][b]) + tail;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infinity_runtime::rng::Philox;

    /// f64 sums of the same products: the ground truth.
    fn reference(x: &[f32], rows: usize, w: &[f32], n: usize, bias: &[f32]) -> Vec<f32> {
        let k = x.len() / rows;
        let mut out = Vec::with_capacity(rows * n);
        for r in 0..rows {
            for j in 0..n {
                let dot: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[j * k + i] as f64).sum();
                out.push((dot + bias[j] as f64) as f32);
            }
        }
        out
    }

    /// Every kernel the CPU has, at shapes that leave remainders in each tile dimension, for
    /// f32 and bf16 weights, within the rounding of k-term f32 sums: (k + 1)·ε·Σ|x·w| (+ |bias|).
    #[test]
    fn every_kernel_matches_the_reference_with_remainders_in_every_dimension() {
        // The last has x rows in several cache blocks, the last one partial.
        for (rows, k, n) in
            [(1, 1, 1), (2, 16, 4), (3, 37, 5), (7, 300, 13), (8, 64, 64), (13, 129, 9), (13, 20_000, 9)]
        {
            let x = Philox::new(1).normal(rows * k);
            let w = Philox::new(2).normal(n * k);
            let bias = Philox::new(3).normal(n);
            let w16: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let w16_wide: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
            let check = |what: String, got: &[f32], wv: &[f32], bias: &[f32], transposed: bool| {
                let want = reference(&x, rows, wv, n, bias);
                for r in 0..rows {
                    for j in 0..n {
                        let abs: f32 =
                            (0..k).map(|i| (x[r * k + i] * wv[j * k + i]).abs()).sum::<f32>() + bias[j].abs();
                        let g = if transposed { got[j * rows + r] } else { got[r * n + j] };
                        let e = want[r * n + j];
                        let bound = (k as f32 + 1.0) * f32::EPSILON * abs;
                        assert!((g - e).abs() <= bound, "{what}: rows {rows} k {k} n {n} at ({r}, {j}): {g} vs {e}");
                    }
                }
            };
            let zeros = vec![0.0; n];
            for kernel in Kernel::available() {
                let mut got = vec![0.0; n * rows];
                kernel.band(&x, rows, k, &w, &mut got);
                check(format!("{kernel:?} f32"), &got, &w, &zeros, true);
                kernel.band(&x, rows, k, &w16, &mut got);
                check(format!("{kernel:?} bf16"), &got, &w16_wide, &zeros, true);
            }
            check("linear".into(), &linear(&x, rows, &w, n, Some(&bias)), &w, &bias, false);
            check("linear bf16".into(), &linear(&x, rows, &w16, n, Some(&bias)), &w16_wide, &bias, false);
        }
    }
}
