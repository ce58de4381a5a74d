//! Winograd F(4×4, 3×3) for the stride-1, pad-1 3×3 convolutions that make up most of the
//! decoders' work (their residual blocks), on the CPU.
//!
//! Each 4×4 output tile is Aᵀ [Σ_ci (G g Gᵀ) ⊙ (Bᵀ d B)] A, with g a 3×3 kernel and d the 6×6
//! input patch under the tile (points 0, ±1, ±2, ∞; Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016). That is 36 products per tile and channel pair where
//! the direct convolution does 144. The sum over input channels is, for each of the 36
//! transform-domain positions ξ, one GEMM: M_ξ (Cout × tiles) = U_ξ (Cout × Cin) · V_ξ
//! (Cin × tiles), U the transformed kernels and V the transformed patches.
//!
//! Work is cut into blocks of whole tile rows of one image, each block on one thread from
//! transform to output (its V and M stay in that core's cache). Within a block the transforms
//! run over contiguous arrays of the row's tiles: an input row is first split by column
//! phase (x[4j − 1 + m] for m = 0..4), so the 1-D transforms are vector arithmetic over j.
//!
//! Rounding: the transforms are a few additions and multiplications by small integers (Bᵀ, Aᵀ;
//! 6 rounding steps deep on the input side, 8 on the output side), and each transformed kernel
//! value is G g Gᵀ with G's entries rounded to f32 (8 steps; 10 are allowed for). So
//! |ŷ − y| ≤ γ_{Cin+25} · (|bias| + Σ_ci Σ_ξ |Aᵀ ⊗ Aᵀ|·(|G||g||Gᵀ|)·(|Bᵀ||d||B|)), the same
//! computation in absolute values, with γ_k ≈ k·2⁻²⁴: larger than the direct convolution's
//! bound by the transforms' growth, ~10⁻⁵ relative on the decoders' maps.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use super::Geometry;
use crate::matmul::{MatRef, gemm_into};
use crate::util::widest_vectors;
use gemm::Parallelism;

/// Output tile side.
const TILE: usize = 4;
/// Input patch side (TILE + 3 − 1).
const PATCH: usize = 6;
/// Transform-domain positions per tile.
const POSITIONS: usize = PATCH * PATCH;

/// Least channel counts for which the transforms cost little beside the products
/// (each input value is transformed once per Cout, each output once per Cin).
const MIN_CHANNELS: usize = 16;

/// Least tiles per image: the kernels' transform (36 values per kernel pair) and the GEMMs'
/// packing of them cost about as much as the products below this (measured, 512 channels:
/// 16² 12.2 ms against 5.0 for im2col + gemm; 32² 14.1 against 18.8; 64² 27.6 against 77).
/// Per image, not per call, and so are the blocks: an image's result must not depend on the
/// batch it is in (the server batches requests).
const MIN_TILES: usize = 64;

/// Tiles per block aimed at: enough columns for the GEMMs to run near full speed.
const BLOCK_TILES: usize = 128;

/// True when the convolution is one this path computes, and faster there: 3×3, stride 1, one
/// pixel of zeros on every side, enough channels and tiles.
pub(super) fn applies(g: &Geometry) -> bool {
    let tiles = g.h.div_ceil(TILE) * g.w.div_ceil(TILE);
    (g.kh, g.kw, g.stride, g.pad) == (3, 3, 1, [1; 4])
        && g.cin >= MIN_CHANNELS
        && g.cout >= MIN_CHANNELS
        && tiles >= MIN_TILES
}

/// G (6 × 3), the kernel transform.
const G: [[f64; 3]; PATCH] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Kernel pairs transformed together (their taps held tap-major on the stack, ~108 KB with the
/// first pass): long runs per position keep the 36 output streams fast (64 pairs: 7.2 % of a
/// d32 decode; 1024: 4.8 %).
const PAIRS_PER_CHUNK: usize = 1024;

/// U: for each position ξ = 6a + b, the Cout × Cin matrix of (G g Gᵀ)[a][b], written into `u`
/// (a buffer kept between calls: for 512 channels it is 38 MB, which a fresh allocation would
/// page-fault in at a cost comparable to the products). Each chunk of kernel pairs is read
/// once and written once, to the 36 positions.
fn transform_kernels(w: &[f32], pairs: usize, u: &mut Vec<f32>) {
    grow(u, POSITIONS * pairs);
    let shared = SharedOut(u.as_mut_ptr(), u.len());
    w.par_chunks(9 * PAIRS_PER_CHUNK).enumerate().for_each(|(chunk, w)| {
        let at = chunk * PAIRS_PER_CHUNK;
        // SAFETY: chunks write disjoint pair ranges of each position; `u` outlives the loop.
        let dst: [&mut [f32]; POSITIONS] =
            std::array::from_fn(|xi| unsafe { shared.part(xi * pairs + at, w.len() / 9) });
        kernel_chunk(w, dst);
    });
}

widest_vectors! {
    /// U for one chunk of kernel pairs.
    fn kernel_chunk(w: &[f32], dst: [&mut [f32]; POSITIONS]) => kernel_chunk_plain
}

/// G g Gᵀ over a chunk of pairs, vectorized across pairs: the taps are laid out tap-major,
/// then G is applied down the kernel's rows and along its columns (coefficients in f32:
/// 4 rounding steps per side).
#[inline(always)]
fn kernel_chunk_plain(w: &[f32], mut dst: [&mut [f32]; POSITIONS]) {
    let n = w.len() / 9;
    let mut taps = [[0.0f32; PAIRS_PER_CHUNK]; 9];
    for (p, g) in w.chunks_exact(9).enumerate() {
        for (kl, &v) in g.iter().enumerate() {
            taps[kl][p] = v;
        }
    }
    let gf: [[f32; 3]; PATCH] = G.map(|row| row.map(|v| v as f32));
    // (G g)[a][l] for the chunk.
    let mut gg = [[[0.0f32; PAIRS_PER_CHUNK]; 3]; PATCH];
    for (a, row) in gg.iter_mut().enumerate() {
        for (l, out) in row.iter_mut().enumerate() {
            for p in 0..n {
                out[p] = gf[a][0] * taps[l][p] + gf[a][1] * taps[3 + l][p] + gf[a][2] * taps[6 + l][p];
            }
        }
    }
    for (xi, out) in dst.iter_mut().enumerate() {
        let (a, b) = (xi / PATCH, xi % PATCH);
        for (p, o) in out[..n].iter_mut().enumerate() {
            *o = gg[a][0][p] * gf[b][0] + gg[a][1][p] * gf[b][1] + gg[a][2][p] * gf[b][2];
        }
    }
}

/// Bᵀ applied to six arrays elementwise: o = Bᵀ d.
#[inline(always)]
fn input_transform(d: [&[f32]; PATCH], o: [&mut [f32]; PATCH], n: usize) {
    let [d0, d1, d2, d3, d4, d5] = d.map(|s| &s[..n]);
    let [o0, o1, o2, o3, o4, o5] = o.map(|s| &mut s[..n]);
    for j in 0..n {
        let (p12, m12, p13) = (d1[j] + d2[j], d1[j] - d2[j], d1[j] - d3[j]);
        o0[j] = 4.0 * d0[j] - 5.0 * d2[j] + d4[j];
        o1[j] = d3[j] + d4[j] - 4.0 * p12;
        o2[j] = 4.0 * m12 - d3[j] + d4[j];
        o3[j] = d4[j] - d2[j] - 2.0 * p13;
        o4[j] = d4[j] - d2[j] + 2.0 * p13;
        o5[j] = 4.0 * d1[j] - 5.0 * d3[j] + d5[j];
    }
}

/// Aᵀ applied to six arrays elementwise: y = Aᵀ m (4 outputs).
#[inline(always)]
fn output_transform(m: [&[f32]; PATCH], y: [&mut [f32]; TILE], n: usize) {
    let [m0, m1, m2, m3, m4, m5] = m.map(|s| &s[..n]);
    let [y0, y1, y2, y3] = y.map(|s| &mut s[..n]);
    for j in 0..n {
        let (p12, m12, p34, m34) = (m1[j] + m2[j], m1[j] - m2[j], m3[j] + m4[j], m3[j] - m4[j]);
        y0[j] = m0[j] + p12 + p34;
        y1[j] = m12 + 2.0 * m34;
        y2[j] = p12 + 4.0 * p34;
        y3[j] = m12 + 8.0 * m34 + m5[j];
    }
}

/// `N` buffers of `bufs`, as slices.
fn slices<const N: usize>(bufs: &mut [Vec<f32>]) -> [&mut [f32]; N] {
    let bufs: &mut [Vec<f32>; N] = bufs.try_into().expect("N buffers");
    bufs.each_mut().map(|b| b.as_mut_slice())
}

/// Splits an image row by column phase: `phases[m][j] = row[4j − 1 + m]`, zero outside the row.
#[inline(always)]
fn split_phases(row: &[f32], phases: &mut [Vec<f32>]) {
    let w = row.len();
    let [p0, p1, p2, p3] = slices(phases);
    // Padded position q = x + 1 goes to phase q % 4, tile q / 4; q = 0 is the left padding.
    p0[0] = 0.0;
    let head = w.min(3);
    for (x, &v) in row[..head].iter().enumerate() {
        [&mut *p1, &mut *p2, &mut *p3][x][0] = v;
    }
    let body = &row[head..];
    let chunks = body.chunks_exact(TILE);
    let tail = chunks.remainder();
    for (j, c) in chunks.enumerate() {
        (p0[j + 1], p1[j + 1], p2[j + 1], p3[j + 1]) = (c[0], c[1], c[2], c[3]);
    }
    let phases = [p0, p1, p2, p3];
    for q in (w + 1 - tail.len())..TILE * phases[0].len() {
        phases[q % TILE][q / TILE] = tail.get(q - (w + 1 - tail.len())).copied().unwrap_or(0.0);
    }
}

/// One thread's working memory, kept between blocks and calls.
#[derive(Default)]
struct Scratch {
    /// Transformed patches, [ξ][ci][tile of the block].
    v: Vec<f32>,
    /// Products, [ξ][co][tile of the block].
    m: Vec<f32>,
    /// One input row split by column phase: 4 arrays of tw + 1.
    phases: Vec<Vec<f32>>,
    /// The column transform of the 6 patch rows: [row r · 6 + b][tile column].
    rows: Vec<Vec<f32>>,
    /// The output side's second pass, one output row's four columns per tile: [l][tile column].
    out: Vec<Vec<f32>>,
    /// The output side's first pass: [k · 6 + b][tile column].
    partial: Vec<Vec<f32>>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
    /// The calling thread's transformed kernels: four times the largest weight it has convolved
    /// with (151 MB for the d32 decoder's embedded upsampling conv), kept for the next call.
    static KERNELS: RefCell<Vec<f32>> = RefCell::default();
}

/// Sizes of one image's tiling.
#[derive(Clone, Copy)]
struct Tiling {
    h: usize,
    w: usize,
    cin: usize,
    cout: usize,
    /// Tile columns.
    tw: usize,
}

/// x (N, Cin, H, W) ⊛ w (Cout, Cin, 3, 3) + bias with padding 1, into `out` (N, Cout, H, W).
pub(super) fn conv3x3(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let t = Tiling { h: g.h, w: g.w, cin: g.cin, cout: g.cout, tw: g.w.div_ceil(TILE) };
    with_reused(&KERNELS, |u| {
        transform_kernels(w, g.cout * g.cin, u);
        products(g, t, x, u, bias, out)
    });
}

/// `f` with this thread's buffers in `key`, or fresh ones when they are in use: a thread
/// waiting in a parallel loop may run another convolution's task meanwhile (rayon steals work).
fn with_reused<T: Default>(key: &'static std::thread::LocalKey<RefCell<T>>, f: impl FnOnce(&mut T)) {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => f(&mut buffers),
        Err(_) => f(&mut T::default()),
    })
}

/// The blocks of tiles, in parallel, with the transformed kernels `u`.
fn products(g: &Geometry, t: Tiling, x: &[f32], u: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let th = g.h.div_ceil(TILE);
    // Rows of tiles per block: about BLOCK_TILES tiles, but at least a block per thread for a
    // single image (the same blocks whatever the batch).
    let per_thread = th.div_ceil(rayon::current_num_threads());
    let block_rows = BLOCK_TILES.div_ceil(t.tw).min(per_thread).max(1);
    let blocks: Vec<(usize, usize)> =
        (0..g.n).flat_map(|n| (0..th).step_by(block_rows).map(move |ty| (n, ty))).collect();
    let out_ptr = SharedOut(out.as_mut_ptr(), out.len());
    blocks.into_par_iter().for_each(|(n, ty0)| {
        let rows = ty0..(ty0 + block_rows).min(th);
        let image = &x[n * t.cin * t.h * t.w..][..t.cin * t.h * t.w];
        // Blocks cover disjoint tile rows of the images; each writes only its own output rows.
        with_reused(&SCRATCH, |s| block(s, t, image, u, bias, rows, (out_ptr, n * t.cout * t.h * t.w)));
    });
}

/// Makes `buf` hold at least `len` elements. It never shrinks: convolutions of different sizes
/// take turns, and growing back would zero the difference each time (113 MB for the
/// upsampling conv's kernels after a 512-channel conv's).
fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// A buffer written by parallel tasks at disjoint places.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32, usize);

// SAFETY: only used to hand disjoint parts of one exclusively borrowed slice to the threads.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Elements `offset .. offset + len`.
    ///
    /// # Safety
    /// Callers must write only elements no other thread touches meanwhile.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, offset: usize, len: usize) -> &mut [f32] {
        assert!(offset + len <= self.1, "{offset} + {len} beyond the buffer");
        // SAFETY: in bounds (asserted); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

/// Transforms, products and inverse transform of the tiles in tile rows `rows` of one image.
fn block(
    s: &mut Scratch,
    t: Tiling,
    image: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    rows: Range<usize>,
    out: (SharedOut, usize),
) {
    let tiles = rows.len() * t.tw;
    grow(&mut s.v, POSITIONS * t.cin * tiles);
    grow(&mut s.m, POSITIONS * t.cout * tiles);
    for (bufs, count, len) in [(&mut s.phases, 4, t.tw + 1), (&mut s.rows, POSITIONS, t.tw), (&mut s.out, TILE, t.tw)] {
        bufs.resize_with(count, Vec::new);
        bufs.iter_mut().for_each(|b| b.resize(len, 0.0));
    }
    s.partial.resize_with(TILE * PATCH, Vec::new);
    s.partial.iter_mut().for_each(|b| b.resize(t.tw, 0.0));

    transform_inputs(s, t, image, rows.clone());
    for xi in 0..POSITIONS {
        let lhs = MatRef { data: u, offset: xi * t.cout * t.cin, row_stride: t.cin, col_stride: 1 };
        let rhs = MatRef { data: &s.v, offset: xi * t.cin * tiles, row_stride: tiles, col_stride: 1 };
        let dst = &mut s.m[xi * t.cout * tiles..][..t.cout * tiles];
        gemm_into(dst, tiles, lhs, rhs, (t.cout, t.cin, tiles), false, Parallelism::None);
    }
    transform_outputs(s, t, bias, rows.clone(), out);
}

widest_vectors! {
    /// V[ξ][ci][tile] = (Bᵀ d B)[ξ] for every tile of the block and input channel.
    fn transform_inputs(s: &mut Scratch, t: Tiling, image: &[f32], rows: Range<usize>) => transform_inputs_plain
}

#[inline(always)]
fn transform_inputs_plain(s: &mut Scratch, t: Tiling, image: &[f32], rows: Range<usize>) {
    let tiles = rows.len() * t.tw;
    let Scratch { v, phases, rows: cols, .. } = s;
    for ci in 0..t.cin {
        let plane = &image[ci * t.h * t.w..][..t.h * t.w];
        for (i, ty) in rows.clone().enumerate() {
            // The column transform of each of the tile row's six input rows; the first two are
            // the previous tile row's last two.
            let fresh = if i == 0 { 0 } else { 2 };
            if i > 0 {
                for b in 0..2 * PATCH {
                    cols.swap(b, 4 * PATCH + b);
                }
            }
            for r in fresh..PATCH {
                let dst = slices(&mut cols[r * PATCH..][..PATCH]);
                let Some(iy) = (ty * TILE + r).checked_sub(1).filter(|&iy| iy < t.h) else {
                    dst.into_iter().for_each(|c| c.fill(0.0));
                    continue;
                };
                split_phases(&plane[iy * t.w..][..t.w], phases);
                let d =
                    [&phases[0][..], &phases[1][..], &phases[2][..], &phases[3][..], &phases[0][1..], &phases[1][1..]];
                input_transform(d, dst, t.tw);
            }
            // The row transform, column b of the patch at a time, straight into V.
            for b in 0..PATCH {
                let d = [0, 1, 2, 3, 4, 5].map(|r| &cols[r * PATCH + b][..]);
                let at = |a: usize| ((a * PATCH + b) * t.cin + ci) * tiles + i * t.tw;
                let dst = v.get_disjoint_mut([0, 1, 2, 3, 4, 5].map(|a| at(a)..at(a) + t.tw));
                input_transform(d, dst.expect("six positions of V"), t.tw);
            }
        }
    }
}

widest_vectors! {
    /// out = Aᵀ M A + bias for every tile of the block and output channel, cut to the image;
    /// `out` is the shared output and the offset of this image in it.
    fn transform_outputs(s: &mut Scratch, t: Tiling, bias: Option<&[f32]>, rows: Range<usize>, out: (SharedOut, usize))
        => transform_outputs_plain
}

#[inline(always)]
fn transform_outputs_plain(
    s: &mut Scratch,
    t: Tiling,
    bias: Option<&[f32]>,
    rows: Range<usize>,
    (out, image): (SharedOut, usize),
) {
    let tiles = rows.len() * t.tw;
    let Scratch { m, out: y, partial, .. } = s;
    for co in 0..t.cout {
        let b0 = bias.map_or(0.0, |b| b[co]);
        for (i, ty) in rows.clone().enumerate() {
            let at = |xi: usize| (xi * t.cout + co) * tiles + i * t.tw;
            // Down the patch's rows for each column b, then along the columns.
            for b in 0..PATCH {
                let col = [0, 1, 2, 3, 4, 5].map(|a| &m[at(a * PATCH + b)..][..t.tw]);
                let dst = partial.get_disjoint_mut([0, 1, 2, 3].map(|k| k * PATCH + b));
                output_transform(col, dst.expect("four partial rows").map(|p| p.as_mut_slice()), t.tw);
            }
            for k in 0..TILE.min(t.h - ty * TILE) {
                let row = [0, 1, 2, 3, 4, 5].map(|b| &partial[k * PATCH + b][..]);
                output_transform(row, slices(y), t.tw);
                // Tile j's four columns are y[0..4][j].
                // SAFETY: output row ty·4 + k of channel co lies under this block's tile row ty,
                // which no other block holds; the output outlives the parallel loop.
                let dst = unsafe { out.part(image + (co * t.h + ty * TILE + k) * t.w, t.w) };
                let mut chunks = dst.chunks_exact_mut(TILE);
                for (j, o) in chunks.by_ref().enumerate() {
                    o.copy_from_slice(&[y[0][j] + b0, y[1][j] + b0, y[2][j] + b0, y[3][j] + b0]);
                }
                let j = t.w / TILE;
                for (l, o) in chunks.into_remainder().iter_mut().enumerate() {
                    *o = y[l][j] + b0;
                }
            }
        }
    }
}
