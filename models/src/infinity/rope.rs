//! Token positions of Infinity's 2-D RoPE: each scale's rows and columns are spread over the
//! template's final 1M grid (at every pixel budget) and rounded half to even, in f32 as the
//! official code computes them.

use infinity_ops::rope::rope2d_table;
use infinity_runtime::{Result, Tensor};

const BASE: f32 = 10_000.0;

/// Grid positions (y, x) of the tokens of an (h, w) scale, row-major, normalised to `full`.
pub fn scale_positions((h, w): (usize, usize), (full_h, full_w): (usize, usize)) -> Vec<(usize, usize)> {
    // Python float ratio, rounded to f32, times the f32 index; torch.round is half-to-even.
    let axis = |n: usize, full: usize| -> Vec<usize> {
        let ratio = (full as f64 / n as f64) as f32;
        (0..n).map(|i| (i as f32 * ratio).round_ties_even() as usize).collect()
    };
    let (ys, xs) = (axis(h, full_h), axis(w, full_w));
    ys.iter().flat_map(|&y| xs.iter().map(move |&x| (y, x))).collect()
}

/// (cos, sin) tables, each (h·w, head_dim/2), for the tokens of one scale.
pub fn scale_table(grid: (usize, usize), full: (usize, usize), head_dim: usize) -> Result<(Tensor, Tensor)> {
    rope2d_table(&scale_positions(grid, full), head_dim, BASE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn square_tables_of_the_spec() {
        let rows = |n| scale_positions((n, 1), (64, 64)).into_iter().map(|(y, _)| y).collect::<Vec<_>>();
        assert_eq!(rows(6), [0, 11, 21, 32, 43, 53]);
        assert_eq!(rows(20), [0, 3, 6, 10, 13, 16, 19, 22, 26, 29, 32, 35, 38, 42, 45, 48, 51, 54, 58, 61]);
    }

    #[test]
    fn ties_round_to_even() {
        // Template 2.0 (1M grid 90×45): a 2×2 scale puts column 1 at 22.5 → 22, not 23.
        assert_eq!(scale_positions((2, 2), (90, 45)), [(0, 0), (0, 22), (45, 0), (45, 22)]);
    }
}
