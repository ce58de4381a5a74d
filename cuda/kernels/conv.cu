//! The BitVAE decoder's convolutions (ops/src/conv.rs) as GEMMs, and its nearest ×2
//! upsampling (ops/src/resize.rs). im2col lays every kernel tap of every output pixel out as
//! a bf16 column matrix, which cuBLAS then multiplies by the weights (src/conv.rs); both
//! kernels are pure gathers, one thread per output element over a grid-stride loop, so they
//! are exact (im2col up to its one rounding to bf16).
#include "common.cuh"

/// x (B, C, H, W) f32 with element strides → col (B, C·kh·kw, Ho·Wo) bf16 contiguous: row
/// c·kh·kw + i·kw + j holds, for every output pixel (oy, ox), the input at (oy·stride + i −
/// padding, ox·stride + j − padding), 0 in the padding. The row order is the weight's
/// (Cout, C, kh, kw) order, so the weight reshaped to (Cout, C·kh·kw) multiplies it directly.
struct Im2colParams {
    const float* x;
    bf16* col;
    int x_stride[4];
    int batch, channels, height, width;
    int kernel_h, kernel_w, stride, padding;
    int out_h, out_w;
};

extern "C" __global__ void __launch_bounds__(256) im2col(const Im2colParams p) {
    const unsigned pixels = unsigned(p.out_h * p.out_w), taps = unsigned(p.channels * p.kernel_h * p.kernel_w);
    const unsigned n = unsigned(p.batch) * taps * pixels;
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const unsigned pixel = i % pixels, row = i / pixels;
        const int tap = int(row % taps), b = int(row / taps);
        const int c = tap / (p.kernel_h * p.kernel_w), ky = tap / p.kernel_w % p.kernel_h, kx = tap % p.kernel_w;
        const int iy = int(pixel / unsigned(p.out_w)) * p.stride + ky - p.padding;
        const int ix = int(pixel % unsigned(p.out_w)) * p.stride + kx - p.padding;
        const bool inside = iy >= 0 && iy < p.height && ix >= 0 && ix < p.width;
        const float v = inside
            ? p.x[b * p.x_stride[0] + c * p.x_stride[1] + iy * p.x_stride[2] + ix * p.x_stride[3]]
            : 0.0f;
        p.col[i] = from_float<bf16>(v);
    }
}
INFINITY_SHIM_ENTRY(im2col, Im2colParams)

/// x (B, C, H, W) f32 with element strides → out (B, C, 2H, 2W) f32 contiguous.
struct Upsample2xParams {
    const float* x;
    float* out;
    int x_stride[4];
    int batch, channels, in_h, in_w;
};

/// PyTorch `interpolate(scale_factor=2, mode="nearest")`: its source index floor(dst · 0.5)
/// is dst / 2, exactly.
extern "C" __global__ void __launch_bounds__(256) upsample_nearest2x(const Upsample2xParams p) {
    const int dims[4] = {p.batch, p.channels, 2 * p.in_h, 2 * p.in_w};
    const unsigned n = unsigned(dims[0] * dims[1] * dims[2] * dims[3]);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        Coords<4> k = unflatten<4>(i, dims);
        k.at[2] /= 2;
        k.at[3] /= 2;
        p.out[i] = p.x[offset_of(k, p.x_stride)];
    }
}
INFINITY_SHIM_ENTRY(upsample_nearest2x, Upsample2xParams)
