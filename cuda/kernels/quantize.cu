//! The multi-scale bit quantizer of BitVAE (models/src/bitvae/quantizer.rs) on the GPU:
//! PyTorch-exact 'bilinear' and 'area' resizes (ops/src/resize.rs), the per-scale sign
//! quantization (bits and ±1/√d codes in one pass). Every float operation is rounded as the
//! CPU code rounds it, so the bits agree with the CPU path exactly, not just within a
//! tolerance.
#include "common.cuh"

/// (B, C, H, W) → (B, C, out_h, out_w). `src_stride` is in elements, per dimension; the
/// output is contiguous.
struct ResizeParams {
    const float* src;
    float* dst;
    int src_stride[4];
    int batch, channels, in_h, in_w, out_h, out_w;
};

/// Source taps of one output index along one axis: PyTorch's align_corners=False
/// half-pixel rule evaluated in f32, negative positions clamped to the first sample.
struct Taps {
    int i0, i1;
    float lambda;
};

__device__ __forceinline__ Taps bilinear_taps(int dst, int in, int out) {
    const float scale = __fdiv_rn(float(in), float(out));
    const float src = fmaxf(__fsub_rn(__fmul_rn(__fadd_rn(float(dst), 0.5f), scale), 0.5f), 0.0f);
    const int i0 = min(int(floorf(src)), in - 1);
    return {i0, min(i0 + 1, in - 1), __fsub_rn(src, float(i0))};
}

/// Splits a flat index over (B, C, H, W) into its coordinates.
struct Coord4 {
    int b, c, y, x;
};

__device__ __forceinline__ Coord4 unflatten4(unsigned i, unsigned channels, unsigned h, unsigned w) {
    Coord4 k;
    k.x = int(i % w);
    i /= w;
    k.y = int(i % h);
    i /= h;
    k.c = int(i % channels);
    k.b = int(i / channels);
    return k;
}

extern "C" __global__ void __launch_bounds__(256) resize_bilinear(const ResizeParams p) {
    const unsigned n = unsigned(p.batch * p.channels * p.out_h * p.out_w);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const Coord4 o = unflatten4(i, p.channels, p.out_h, p.out_w);
        const float* plane = p.src + o.b * p.src_stride[0] + o.c * p.src_stride[1];
        if (p.in_h == p.out_h && p.in_w == p.out_w) {
            // A copy, as the CPU path: the weights would be exact, but 0·inf in the unused
            // neighbour would not.
            p.dst[i] = plane[o.y * p.src_stride[2] + o.x * p.src_stride[3]];
            continue;
        }
        const Taps ty = bilinear_taps(o.y, p.in_h, p.out_h);
        const Taps tx = bilinear_taps(o.x, p.in_w, p.out_w);
        const float* top = plane + ty.i0 * p.src_stride[2];
        const float* bottom = plane + ty.i1 * p.src_stride[2];
        const int c0 = tx.i0 * p.src_stride[3], c1 = tx.i1 * p.src_stride[3];
        // PyTorch's grouping: along W in both rows, then along H.
        const float t = lerp_exact(top[c0], top[c1], tx.lambda);
        const float b = lerp_exact(bottom[c0], bottom[c1], tx.lambda);
        p.dst[i] = lerp_exact(t, b, ty.lambda);
    }
}
INFINITY_SHIM_ENTRY(resize_bilinear, ResizeParams)

/// PyTorch 'area' (adaptive average pooling): the mean over rows [⌊y·H/oh⌋, ⌈(y+1)·H/oh⌉) and
/// the same for columns; windows may overlap.
extern "C" __global__ void __launch_bounds__(256) resize_area(const ResizeParams p) {
    const unsigned n = unsigned(p.batch * p.channels * p.out_h * p.out_w);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const Coord4 o = unflatten4(i, p.channels, p.out_h, p.out_w);
        const int r0 = o.y * p.in_h / p.out_h, r1 = ((o.y + 1) * p.in_h + p.out_h - 1) / p.out_h;
        const int c0 = o.x * p.in_w / p.out_w, c1 = ((o.x + 1) * p.in_w + p.out_w - 1) / p.out_w;
        const float* plane = p.src + o.b * p.src_stride[0] + o.c * p.src_stride[1];
        // One running sum in row-major order, divided by the window height, then its width:
        // the CPU's rounding.
        float sum = -0.0f;
        for (int r = r0; r < r1; ++r)
            for (int c = c0; c < c1; ++c) sum += plane[r * p.src_stride[2] + c * p.src_stride[3]];
        p.dst[i] = __fdiv_rn(__fdiv_rn(sum, float(r1 - r0)), float(c1 - c0));
    }
}
INFINITY_SHIM_ENTRY(resize_area, ResizeParams)

/// One scale's quantization of the residual (B, d, h, w), one thread per token (b, y, x).
/// Outputs are contiguous: bits (B, h, w, d) u8 (1 where the residual is > 0; 0 and NaN give
/// 0) and codes (B, d, h, w) = ±code_scale.
struct BsqQuantizeParams {
    const float* residual;
    unsigned char* bits;
    float* codes;
    int residual_stride[4];
    int batch, dim, height, width;
    /// 1/√d as the CPU computes it (in f64, rounded once).
    float code_scale;
};

extern "C" __global__ void __launch_bounds__(256) bsq_quantize(const BsqQuantizeParams p) {
    const unsigned tokens = unsigned(p.batch * p.height * p.width);
    const int plane = p.height * p.width;
    for (unsigned t = grid_first(); t < tokens; t += grid_stride()) {
        const int x = int(t % p.width), y = int(t / p.width % p.height), b = int(t / plane);
        const float* r = p.residual + b * p.residual_stride[0] + y * p.residual_stride[2] +
                         x * p.residual_stride[3];
        unsigned char* bits = p.bits + t * p.dim;
        float* codes = p.codes + b * p.dim * plane + y * p.width + x;
        for (int j = 0; j < p.dim; ++j) {
            const unsigned bit = r[j * p.residual_stride[1]] > 0.0f ? 1u : 0u;
            bits[j] = (unsigned char)bit;
            codes[j * plane] = bit ? p.code_scale : -p.code_scale;
        }
    }
}
INFINITY_SHIM_ENTRY(bsq_quantize, BsqQuantizeParams)
