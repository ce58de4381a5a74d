//! Rotary position embedding: the interleaved-pair rotation (GPT-J / complex style) and the
//! angle tables of Infinity's 2-D RoPE (spec §4.4).
//!
//! Pair j of a head vector is elements (2j, 2j+1), rotated by the angle of row `pos`, column j
//! of the tables: out[2j] = cos·x[2j] − sin·x[2j+1], out[2j+1] = sin·x[2j] + cos·x[2j+1].
//! This is not the "rotate-half" layout, which pairs element j with element j + hd/2.

use std::borrow::Cow;

use infinity_runtime::{Error, Result, Tensor};
use rayon::prelude::*;

use crate::device::executor;
use crate::f32_data;

/// Validated inputs in row-major order, shared by the fast path and the reference.
struct Inputs<'a> {
    x: Cow<'a, [f32]>,
    cos: Cow<'a, [f32]>,
    sin: Cow<'a, [f32]>,
    len: usize,
    head_dim: usize,
}

fn prepare<'a>(op: &'static str, x: &'a Tensor, cos: &'a Tensor, sin: &'a Tensor) -> Result<Inputs<'a>> {
    let &[.., len, head_dim] = x.shape() else {
        return Err(Error::invalid(op, x.shape(), "x must have at least 2 dimensions (..., length, head dim)"));
    };
    if !head_dim.is_multiple_of(2) {
        return Err(Error::invalid(
            op,
            x.shape(),
            format!("head dim {head_dim} is odd, so it does not split into pairs"),
        ));
    }
    for table in [cos, sin] {
        if table.shape() != [len, head_dim / 2] {
            return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: table.shape().to_vec() });
        }
    }
    Ok(Inputs { x: f32_data(op, x)?, cos: f32_data(op, cos)?, sin: f32_data(op, sin)?, len, head_dim })
}

/// Rotates the pairs of every head vector of `x` (..., L, hd), typically (B, H, L, hd), by the
/// angles whose cosines and sines are `cos` and `sin` (L, hd/2): position l uses row l.
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if let Some(exec) = executor("rope_interleaved", &[x, cos, sin])? {
        crate::require_f32("rope_interleaved", x)?;
        // The kernel takes (B, H, L, D): lower ranks get leading sizes 1.
        let mut x4 = x.clone();
        while x4.rank() < 4 {
            x4 = x4.unsqueeze(0)?;
        }
        return infinity_cuda::rope::rope_interleaved(&exec, &x4, cos, sin)?.reshape(x.shape());
    }
    let inp = prepare("rope_interleaved", x, cos, sin)?;
    let (len, hd, half) = (inp.len, inp.head_dim, inp.head_dim / 2);
    let mut out = vec![0f32; inp.x.len()];
    // Empty tensors have nothing to rotate (and zero-sized chunks are not allowed below).
    if !out.is_empty() {
        out.par_chunks_mut(hd).zip(inp.x.par_chunks(hd)).enumerate().with_min_len(64).for_each(|(row, (o, xr))| {
            let pos = row % len;
            let (c, s) = (&inp.cos[pos * half..(pos + 1) * half], &inp.sin[pos * half..(pos + 1) * half]);
            for (((op, xp), &c), &s) in o.chunks_exact_mut(2).zip(xr.chunks_exact(2)).zip(c).zip(s) {
                op[0] = c * xp[0] - s * xp[1];
                op[1] = s * xp[0] + c * xp[1];
            }
        });
    }
    Tensor::from_vec(out, x.shape())
}

/// Cosine and sine tables (L, hd/2) of Infinity's 2-D RoPE for tokens at grid positions
/// `(y, x)`. With half = hd/2 and inv_freq[i] = 1 / base^(2i/half) for i < half/2, the angle of
/// pair j is y·inv_freq[j] for j < half/2 (rows use the first half of the head dims) and
/// x·inv_freq[j − half/2] otherwise (columns use the second half).
///
/// As in the reference, the powers and angles are formed in f32 (positions must be below 2^24
/// to be exact); cos and sin of each f32 angle are then evaluated in f64 and rounded, so the
/// tables do not depend on the platform's f32 libm.
pub fn rope2d_table(positions: &[(usize, usize)], head_dim: usize, base: f32) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rope2d_table";
    // Each of the two axes needs a whole number of pairs.
    if head_dim == 0 || !head_dim.is_multiple_of(4) {
        return Err(Error::invalid(OP, &[head_dim], format!("head dim {head_dim} is not a positive multiple of 4")));
    }
    if !(base.is_finite() && base > 0.0) {
        return Err(Error::invalid(OP, &[head_dim], format!("base {base} is not a positive finite number")));
    }
    let half = head_dim / 2;
    let quarter = half / 2;
    let inv_freq: Vec<f32> = (0..quarter).map(|i| 1.0 / base.powf((2 * i) as f32 / half as f32)).collect();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &(y, x) in positions {
        for coord in [y, x] {
            for &f in &inv_freq {
                let angle = f64::from(coord as f32 * f);
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    Ok((Tensor::from_vec(cos, &[positions.len(), half])?, Tensor::from_vec(sin, &[positions.len(), half])?))
}

pub mod reference {
    //! The rotation as plain loops over (row, pair), each output formed in f64 and rounded once.

    use infinity_runtime::{Result, Tensor};

    use super::prepare;

    pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let inp = prepare("rope_interleaved", x, cos, sin)?;
        let (len, hd, half) = (inp.len, inp.head_dim, inp.head_dim / 2);
        let rows = inp.x.len().checked_div(hd).unwrap_or(0);
        let mut out = vec![0f32; inp.x.len()];
        for row in 0..rows {
            let pos = row % len;
            for j in 0..half {
                let (c, s) = (f64::from(inp.cos[pos * half + j]), f64::from(inp.sin[pos * half + j]));
                let (a, b) = (f64::from(inp.x[row * hd + 2 * j]), f64::from(inp.x[row * hd + 2 * j + 1]));
                out[row * hd + 2 * j] = (c * a - s * b) as f32;
                out[row * hd + 2 * j + 1] = (s * a + c * b) as f32;
            }
        }
        Tensor::from_vec(out, x.shape())
    }
}
