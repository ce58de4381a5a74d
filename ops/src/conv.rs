//! 2-D convolution: x (N, Cin, H, W) ⊛ w (Cout, Cin, kh, kw) + bias, with a stride and
//! asymmetric zero padding (BitVAE's downsample pads only right and bottom).
//!
//! Fast path: per image, the output (Cout × Ho·Wo) is the product of the weights
//! (Cout × Cin·kh·kw) with a column matrix (Cin·kh·kw × Ho·Wo) on gemm. A plain 1×1 conv
//! uses the input itself as that matrix; otherwise im2col builds it one band of output rows
//! at a time, because the whole matrix is kh·kw times the input (4.8 GB for a 3×3 conv of
//! 128 channels at 1024 × 1024). Within a band both im2col and gemm run on all threads.
//! 3×3 'same' convolutions with at least 16 channels each side and 64 tiles of 4×4 an image
//! (the decoders' residual blocks) take Winograd F(4×4, 3×3) instead (`winograd`): a quarter of
//! the products, within a stated, larger rounding bound. `reference` is the direct 7-loop.

use std::ops::Range;

use infinity_cuda::Executor;
use infinity_runtime::{Error, Result, Tensor, recycle};
use rayon::prelude::*;

use crate::device::executor;
use crate::matmul::{MatRef, gemm_into, parallelism_for};
use crate::{f32_data, require_f32};

mod winograd;

/// Stride and zero padding of a convolution; `padding` is [top, bottom, left, right].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: [usize; 4],
}

impl Conv2dParams {
    /// `stride` with `pad` zeros on every side.
    pub fn new(stride: usize, pad: usize) -> Self {
        Conv2dParams { stride, padding: [pad; 4] }
    }

    /// Stride 1 and the padding that keeps H × W for an odd `kernel` size (1 → 0, 3 → 1).
    pub fn same(kernel: usize) -> Self {
        Self::new(1, kernel / 2)
    }
}

/// Most im2col elements held at once (8 MiB of f32): large enough that each band is a
/// gemm of full efficiency, small enough to stay far from the input's size on big maps.
const COL_BUDGET: usize = 1 << 21;

/// Below this many elements per task, spreading im2col rows over threads costs more than it saves.
const IM2COL_TASK_MIN: usize = 1 << 14;

/// Validated sizes of one convolution.
struct Geometry {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    /// [top, bottom, left, right]
    pad: [usize; 4],
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv2dParams) -> Result<Self> {
        for t in [Some(x), Some(w), bias].into_iter().flatten() {
            require_f32("conv2d", t)?;
        }
        let g = Self::from_shapes(x.shape(), w.shape(), p)?;
        if let Some(b) = bias.filter(|b| b.shape() != [g.cout]) {
            return Err(Error::ShapeMismatch { op: "conv2d", lhs: w.shape().to_vec(), rhs: b.shape().to_vec() });
        }
        Ok(g)
    }

    fn from_shapes(x: &[usize], w: &[usize], p: Conv2dParams) -> Result<Self> {
        let &[n, cin, h, wd] = x else {
            return Err(Error::invalid("conv2d", x, "the input must be (N, C, H, W)"));
        };
        let &[cout, wcin, kh, kw] = w else {
            return Err(Error::invalid("conv2d", w, "the weight must be (C_out, C_in, kh, kw)"));
        };
        if wcin != cin {
            return Err(Error::ShapeMismatch { op: "conv2d", lhs: x.to_vec(), rhs: w.to_vec() });
        }
        if p.stride == 0 {
            return Err(Error::invalid("conv2d", x, "the stride must be at least 1"));
        }
        let [top, bottom, left, right] = p.padding;
        let (ph, pw) = (h + top + bottom, wd + left + right);
        if kh == 0 || kw == 0 || kh > ph || kw > pw {
            return Err(Error::invalid(
                "conv2d",
                x,
                format!("a {kh}×{kw} kernel does not fit the padded {ph}×{pw} input"),
            ));
        }
        let (ho, wo) = ((ph - kh) / p.stride + 1, (pw - kw) / p.stride + 1);
        Ok(Geometry { n, cin, h, w: wd, cout, kh, kw, stride: p.stride, pad: p.padding, ho, wo })
    }

    /// The geometry of the weight gradient of x ⊛ w for x, the output gradient dy and w's
    /// spatial size; refuses a dy whose shape is not the convolution's output.
    fn of_weight_grad(x: &Tensor, dy: &Tensor, (kh, kw): (usize, usize), p: Conv2dParams) -> Result<Self> {
        let (cout, cin) = (dy.shape().get(1).copied().unwrap_or(0), x.shape().get(1).copied().unwrap_or(0));
        let g = Self::from_shapes(x.shape(), &[cout, cin, kh, kw], p)?;
        if dy.shape() != g.out_shape() {
            return Err(Error::ShapeMismatch { op: "conv2d", lhs: g.out_shape().to_vec(), rhs: dy.shape().to_vec() });
        }
        Ok(g)
    }

    /// Output rows per im2col band: as many as fit the budget, spread evenly over the bands.
    fn band_rows(&self) -> usize {
        let max_rows = (COL_BUDGET / (self.taps() * self.wo).max(1)).clamp(1, self.ho);
        self.ho.div_ceil(self.ho.div_ceil(max_rows))
    }

    fn out_shape(&self) -> [usize; 4] {
        [self.n, self.cout, self.ho, self.wo]
    }

    /// Rows of the column matrix: one per (input channel, kernel row, kernel column).
    fn taps(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    /// A 1×1 conv without stride or padding is a plain product with the input.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == [0; 4]
    }

    /// The output columns whose kernel column `kx` lands inside the image rather than in the
    /// padding: left <= ox·stride + kx < left + w.
    fn valid_columns(&self, kx: usize) -> Range<usize> {
        let left = self.pad[2];
        let lo = left.saturating_sub(kx).div_ceil(self.stride).min(self.wo);
        let hi = match (left + self.w).checked_sub(kx + 1) {
            Some(last) => (last / self.stride + 1).min(self.wo),
            None => 0,
        };
        lo..hi.max(lo)
    }

    /// The input row under output row `oy` and kernel row `ky`, or None in the padding.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky).checked_sub(self.pad[0]).filter(|&iy| iy < self.h)
    }
}

/// Fills `col` (taps × band): row (ci, ky, kx) holds, for each output pixel of output rows
/// `rows`, the input value under that kernel tap (0 in the padding).
fn im2col(image: &[f32], g: &Geometry, rows: Range<usize>, col: &mut [f32]) {
    let band = rows.len() * g.wo;
    let min_len = IM2COL_TASK_MIN.div_ceil(band);
    col.par_chunks_mut(band).with_min_len(min_len).enumerate().for_each(|(tap, dst)| {
        let (ci, ky, kx) = (tap / (g.kh * g.kw), tap / g.kw % g.kh, tap % g.kw);
        let plane = &image[ci * g.h * g.w..][..g.h * g.w];
        let valid = g.valid_columns(kx);
        for (oy, out) in rows.clone().zip(dst.chunks_mut(g.wo)) {
            match g.input_row(oy, ky) {
                Some(iy) if !valid.is_empty() => {
                    out[..valid.start].fill(0.0);
                    out[valid.end..].fill(0.0);
                    let src = &plane[iy * g.w + valid.start * g.stride + kx - g.pad[2]..];
                    let out = &mut out[valid.clone()];
                    if g.stride == 1 {
                        // The common case is a straight copy (memcpy rather than a strided loop).
                        out.copy_from_slice(&src[..out.len()]);
                    } else {
                        out.iter_mut().zip(src.iter().step_by(g.stride)).for_each(|(o, &v)| *o = v);
                    }
                }
                _ => out.fill(0.0),
            }
        }
    });
}

/// x (N, Cin, H, W) ⊛ w (Cout, Cin, kh, kw) + bias (Cout) → (N, Cout, Ho, Wo).
///
/// On an executor the weight is a bf16 GEMM operand (x is rounded to bf16 as it is unfolded).
/// The kernel pads every side alike; what a side has beyond that (the BitVAE encoder's
/// downsampling pads only bottom and right) is added as zeros first.
pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, params: Conv2dParams) -> Result<Tensor> {
    let inputs: Vec<&Tensor> = [Some(x), Some(w), bias].into_iter().flatten().collect();
    if let Some(exec) = executor("conv2d", &inputs)? {
        let even = params.padding.into_iter().min().unwrap_or(0);
        let x = pad_zeros(&exec, x, params.padding.map(|p| p - even))?;
        // The weight is a GEMM operand (an f32 one, e.g. a training parameter, is rounded).
        let w = crate::matmul::gemm_operand("conv2d", w)?;
        return infinity_cuda::conv::conv2d(&exec, &x, &w, bias, params.stride, even);
    }
    let g = Geometry::new(x, w, bias, params)?;
    let (plane_in, plane_out, taps) = (g.cin * g.h * g.w, g.ho * g.wo, g.taps());
    let len = g.out_shape().iter().product();
    if len == 0 {
        return Tensor::from_vec(Vec::<f32>::new(), &g.out_shape());
    }
    let (xd, wd) = (f32_data("conv2d", x)?, f32_data("conv2d", w)?);
    if winograd::applies(&g) {
        let bias = bias.map(|b| f32_data("conv2d", b)).transpose()?;
        let mut out = recycle::for_overwrite(len);
        winograd::conv3x3(&g, &xd, &wd, bias.as_deref(), &mut out);
        return Tensor::from_vec(out, &g.out_shape());
    }
    let mut out = recycle::zeroed(len);
    if let Some(bias) = bias {
        // gemm accumulates onto the bias already in place.
        let bias = f32_data("conv2d", bias)?;
        out.chunks_mut(plane_out).zip(bias.iter().cycle()).for_each(|(plane, &b)| plane.fill(b));
    }
    let accumulate = bias.is_some();
    let weights = MatRef { data: &wd, offset: 0, row_stride: taps, col_stride: 1 };

    let band_rows = g.band_rows();
    let mut col = if g.is_pointwise() { Vec::new() } else { vec![0.0f32; taps * band_rows * g.wo] };

    for (img, dst) in out.chunks_mut(g.cout * plane_out).enumerate() {
        let image = &xd[img * plane_in..][..plane_in];
        if g.is_pointwise() {
            let rhs = MatRef { data: image, offset: 0, row_stride: plane_out, col_stride: 1 };
            let par = parallelism_for(g.cout, taps, plane_out);
            gemm_into(dst, plane_out, weights, rhs, (g.cout, taps, plane_out), accumulate, par);
            continue;
        }
        for r0 in (0..g.ho).step_by(band_rows) {
            let rows = r0..(r0 + band_rows).min(g.ho);
            let cols = rows.len() * g.wo;
            let col = &mut col[..taps * cols];
            im2col(image, &g, rows, col);
            let rhs = MatRef { data: col, offset: 0, row_stride: cols, col_stride: 1 };
            let par = parallelism_for(g.cout, taps, cols);
            gemm_into(&mut dst[r0 * g.wo..], plane_out, weights, rhs, (g.cout, taps, cols), accumulate, par);
        }
    }
    Tensor::from_vec(out, &g.out_shape())
}

/// `conv2d(nearest ×2 upsampling of x, w, bias, padding 1)` for a 3×3 w (the decoders'
/// upsampling), without the upsampled map. Each output phase (row parity py, column parity
/// px) reads only a 2×2 window of x: upsampled rows 2i + py − 1 + ky (ky = 0, 1, 2) are x rows
/// i − 1, i, i for py = 0 and i, i, i + 1 for py = 1, so the taps landing on one x row are
/// summed into a 2×2 kernel first (rows w₀ | w₁ + w₂ and w₀ + w₁ | w₂, likewise for columns).
/// On large maps the four phase kernels, each placed at offset (py, px) of a 3×3 window centred
/// on x's pixel, make one 3×3 'same' convolution of x with 4·Cout outputs (the Winograd path:
/// 9 products per x pixel and channel pair); on small ones each phase is a 2×2 convolution of
/// x padded on one side (16 products; the upsampled map's convolution does 36). The phase
/// planes are then interleaved. On an executor: the composition, which has its kernels there.
pub fn upsample2x_conv3x3(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let upsampled = |x: &Tensor| {
        let (h, wd) = (x.shape().get(2).copied().unwrap_or(0), x.shape().get(3).copied().unwrap_or(0));
        crate::resize::resize(x, (2 * h, 2 * wd), crate::resize::ResizeMode::Nearest)
    };
    if executor("conv2d", &[Some(x), Some(w), bias].into_iter().flatten().collect::<Vec<_>>())?.is_some() {
        return conv2d(&upsampled(x)?, w, bias, Conv2dParams::same(3));
    }
    let g = Geometry::new(x, w, bias, Conv2dParams::same(3))?;
    if (g.kh, g.kw) != (3, 3) {
        return Err(Error::invalid("upsample2x_conv3x3", w.shape(), "the weight must be (C_out, C_in, 3, 3)"));
    }
    let (h, wd, pairs) = (g.h, g.w, g.cout * g.cin);
    let taps = f32_data("conv2d", w)?;
    const PHASES: [(usize, usize); 4] = [(0, 0), (0, 1), (1, 0), (1, 1)];
    // The phase kernels laid out (phase, Cout, Cin, side, side), each at offset `at` of a
    // side × side window.
    let kernels = |side: usize, at: fn(usize) -> usize| -> Result<Tensor> {
        // Every tap is written when the window is the phase kernel itself.
        let len = 4 * pairs * side * side;
        let mut kernel = if side == 2 { recycle::for_overwrite(len) } else { recycle::zeroed(len) };
        for (dst, (py, px)) in kernel.chunks_mut(pairs * side * side).zip(PHASES) {
            let chunks = dst.par_chunks_mut(side * side * 1024).zip(taps.par_chunks(9 * 1024));
            chunks.for_each(|(dst, taps)| {
                for (dst, w3) in dst.chunks_exact_mut(side * side).zip(taps.chunks_exact(9)) {
                    let row = |r: usize| [w3[3 * r], w3[3 * r + 1], w3[3 * r + 2]];
                    let rows = fold_taps(py, [row(0), row(1), row(2)], |a, b| std::array::from_fn(|i| a[i] + b[i]));
                    for (r, taps) in rows.into_iter().enumerate() {
                        let at_row = &mut dst[(at(py) + r) * side + at(px)..][..2];
                        at_row.copy_from_slice(&fold_taps(px, taps, |a, b| a + b));
                    }
                }
            });
        }
        Tensor::from_vec(kernel, &[4 * g.cout, g.cin, side, side])
    };
    // The embedding pays once the map is large enough for the Winograd path to amortise its
    // four times larger kernel transform (measured, 512 channels: from 32² 69 ms against 55
    // for the four phase convolutions, from 64² 118 against 159).
    let embed = winograd::applies(&Geometry { cout: 4 * g.cout, ..g }) && h * wd >= EMBED_MIN_PIXELS;
    // Plane (image, phase, co) of the phase outputs: one tensor (N, 4·Cout, H, W) or four (N, Cout, H, W).
    let phases: Vec<Tensor> = if embed {
        let bias = bias.map(|b| crate::index::concat(&[b, b, b, b], 0)).transpose()?;
        vec![conv2d(x, &kernels(3, |p| p)?, bias.as_ref(), Conv2dParams::same(3))?]
    } else {
        let all = kernels(2, |_| 0)?;
        PHASES
            .into_iter()
            .enumerate()
            .map(|(phase, (py, px))| {
                let padding = [1 - py, py, 1 - px, px];
                conv2d(x, &all.narrow(0, phase * g.cout, g.cout)?, bias, Conv2dParams { stride: 1, padding })
            })
            .collect::<Result<_>>()?
    };
    let data: Vec<_> = phases.iter().map(|t| t.as_slice::<f32>()).collect::<Result<_>>()?;
    let plane = |n: usize, phase: usize, co: usize| match &data[..] {
        [one] => &one[((n * 4 + phase) * g.cout + co) * h * wd..][..h * wd],
        four => &four[phase][(n * g.cout + co) * h * wd..][..h * wd],
    };
    let mut out = recycle::for_overwrite(g.n * g.cout * 4 * h * wd);
    // Output row 2i + py interleaves row i of phases (py, 0) and (py, 1).
    out.par_chunks_mut(4 * h * wd).enumerate().for_each(|(i, dst)| {
        let (n, co) = (i / g.cout, i % g.cout);
        for (r, dst) in dst.chunks_exact_mut(2 * wd).enumerate() {
            let (i, py) = (r / 2, r % 2);
            let (left, right) = (&plane(n, 2 * py, co)[i * wd..][..wd], &plane(n, 2 * py + 1, co)[i * wd..][..wd]);
            for (pair, (&a, &b)) in dst.chunks_exact_mut(2).zip(left.iter().zip(right)) {
                pair.copy_from_slice(&[a, b]);
            }
        }
    });
    Tensor::from_vec(out, &[g.n, g.cout, 2 * h, 2 * wd])
}

/// Least input pixels for [`upsample2x_conv3x3`] to embed its phases in one 3×3 convolution.
const EMBED_MIN_PIXELS: usize = 48 * 48;

/// The two window rows (or columns) of upsampling phase p from the three of a 3×3 kernel:
/// w₀ | w₁ + w₂ for p = 0, w₀ + w₁ | w₂ for p = 1.
fn fold_taps<T: Copy>(p: usize, [a, b, c]: [T; 3], add: impl Fn(T, T) -> T) -> [T; 2] {
    if p == 0 { [a, add(b, c)] } else { [add(a, b), c] }
}

/// x (B, C, H, W) on `exec` with [top, bottom, left, right] rows and columns of zeros around
/// it (shared when there are none).
fn pad_zeros(exec: &Executor, x: &Tensor, [top, bottom, left, right]: [usize; 4]) -> Result<Tensor> {
    if x.rank() != 4 {
        return Err(Error::invalid("conv2d", x.shape(), "expected an input (B, C, H, W)"));
    }
    let mut x = x.clone();
    for (dim, before, after) in [(2, top, bottom), (3, left, right)] {
        let zeros = |n: usize| -> Result<Option<Tensor>> {
            let mut shape = x.shape().to_vec();
            shape[dim] = n;
            if n == 0 { Ok(None) } else { exec.zeros(&shape, x.dtype()).map(Some) }
        };
        let (before, after) = (zeros(before)?, zeros(after)?);
        if before.is_some() || after.is_some() {
            let pieces: Vec<&Tensor> = [before.as_ref(), Some(&x), after.as_ref()].into_iter().flatten().collect();
            x = crate::index::concat(&pieces, dim)?;
        }
    }
    Ok(x)
}

/// The weight gradient of [`conv2d`]: for x (N, Cin, H, W) and the output gradient
/// dy (N, Cout, Ho, Wo), dw (Cout, Cin, kh, kw) = Σ over images and output pixels of
/// dy · the input under each tap. It is the transposed product of the forward's: dy
/// (Cout × Ho·Wo) times the column matrix transposed (Ho·Wo × Cin·kh·kw), built by the same
/// im2col one band at a time and accumulated in place, so strides and padding cost nothing extra.
///
/// On an executor: the column matrix of every image (im2col, bf16) times dy (rounded to bf16)
/// per image, summed over the images.
pub fn conv2d_weight_grad(x: &Tensor, dy: &Tensor, kernel: (usize, usize), params: Conv2dParams) -> Result<Tensor> {
    let g = Geometry::of_weight_grad(x, dy, kernel, params)?;
    if let Some(exec) = executor("conv2d", &[x, dy])? {
        let even = params.padding.into_iter().min().unwrap_or(0);
        let x = pad_zeros(&exec, x, params.padding.map(|p| p - even))?;
        let cols = infinity_cuda::conv::im2col(&exec, &x, kernel, params.stride, even)?;
        let dy = dy.reshape(&[g.n, g.cout, g.ho * g.wo])?;
        let per_image = crate::matmul::matmul(&dy, &cols.transpose(1, 2)?)?;
        return crate::reduce::sum(&per_image, &[0], false)?.reshape(&[g.cout, g.cin, g.kh, g.kw]);
    }
    require_f32("conv2d", x)?;
    require_f32("conv2d", dy)?;
    let (plane_in, plane_out, taps) = (g.cin * g.h * g.w, g.ho * g.wo, g.taps());
    let mut dw = vec![0.0f32; g.cout * taps];
    let (xd, gd) = (f32_data("conv2d", x)?, f32_data("conv2d", dy)?);
    let band_rows = g.band_rows();
    let mut col = if g.is_pointwise() { Vec::new() } else { vec![0.0f32; taps * band_rows * g.wo] };
    let mut accumulate = false;
    for img in 0..g.n {
        let image = &xd[img * plane_in..][..plane_in];
        let grad = &gd[img * g.cout * plane_out..][..g.cout * plane_out];
        for r0 in (0..g.ho).step_by(band_rows) {
            let rows = r0..(r0 + band_rows).min(g.ho);
            let cols = rows.len() * g.wo;
            // The column matrix (taps × cols): the input itself for a plain 1×1 conv (taps a
            // plane apart), else this band's im2col.
            let rhs = if g.is_pointwise() {
                MatRef { data: image, offset: r0 * g.wo, row_stride: 1, col_stride: plane_out }
            } else {
                im2col(image, &g, rows, &mut col[..taps * cols]);
                MatRef { data: &col[..taps * cols], offset: 0, row_stride: 1, col_stride: cols }
            };
            let lhs = MatRef { data: grad, offset: r0 * g.wo, row_stride: plane_out, col_stride: 1 };
            let par = parallelism_for(g.cout, cols, taps);
            gemm_into(&mut dw, taps, lhs, rhs, (g.cout, cols, taps), accumulate, par);
            accumulate = true;
        }
    }
    Tensor::from_vec(dw, &[g.cout, g.cin, g.kh, g.kw])
}

/// The direct 7-loop with f64 accumulation: the ground truth for the tests.
pub mod reference {
    use super::*;

    /// Calls `f(out, x, w)` with the flat indices of the output element, input element and
    /// weight of every tap that lands inside the image (taps in the padding contribute 0).
    fn for_each_tap(g: &Geometry, mut f: impl FnMut(usize, usize, usize)) {
        for n in 0..g.n {
            for co in 0..g.cout {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let out = ((n * g.cout + co) * g.ho + oy) * g.wo + ox;
                        for ci in 0..g.cin {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    // Signed positions: taps left of / above the image are padding.
                                    let iy = (oy * g.stride + ky) as isize - g.pad[0] as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad[2] as isize;
                                    if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w {
                                        continue;
                                    }
                                    let x = ((n * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize;
                                    f(out, x, ((co * g.cin + ci) * g.kh + ky) * g.kw + kx);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The direct 7-loop with f64 accumulation.
    pub fn conv2d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, params: Conv2dParams) -> Result<Tensor> {
        let g = Geometry::new(x, w, bias, params)?;
        let (xd, wd) = (x.to_vec::<f32>()?, w.to_vec::<f32>()?);
        let mut acc = vec![0f64; g.out_shape().iter().product()];
        if let Some(bias) = bias {
            let b = bias.to_vec::<f32>()?;
            let plane = g.ho * g.wo;
            acc.iter_mut().enumerate().for_each(|(i, a)| *a = f64::from(b[i / plane % g.cout]));
        }
        for_each_tap(&g, |out, xi, wi| acc[out] += f64::from(xd[xi]) * f64::from(wd[wi]));
        Tensor::from_vec(acc.into_iter().map(|v| v as f32).collect(), &g.out_shape())
    }

    /// dw[co, ci, ky, kx] = Σ over images and output pixels of dy · the input under the tap,
    /// accumulated in f64.
    pub fn conv2d_weight_grad(x: &Tensor, dy: &Tensor, kernel: (usize, usize), params: Conv2dParams) -> Result<Tensor> {
        let g = Geometry::of_weight_grad(x, dy, kernel, params)?;
        let (xd, gd) = (x.to_vec::<f32>()?, dy.to_vec::<f32>()?);
        let mut dw = vec![0f64; g.cout * g.taps()];
        for_each_tap(&g, |out, xi, wi| dw[wi] += f64::from(gd[out]) * f64::from(xd[xi]));
        Tensor::from_vec(dw.into_iter().map(|v| v as f32).collect(), &[g.cout, g.cin, g.kh, g.kw])
    }
}
