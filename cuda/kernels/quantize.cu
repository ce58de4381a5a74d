//! The multi-scale bit quantizer of BitVAE (models/src/bitvae/quantizer.rs) on the GPU:
//! PyTorch-exact 'bilinear' and 'area' resizes (ops/src/resize.rs), the per-scale sign
//! quantization (bits, ±1/√d codes and packed bits in one pass), and the fused update of the
//! latent-grid residual and code sum. Every float operation is rounded as the CPU code rounds
//! it, so the bits agree with the CPU path exactly, not just within a tolerance.
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
/// 0), codes (B, d, h, w) = ±code_scale, packed (B, h, w, ⌈d/8⌉) u8 with bit j of the token in
/// bit j % 8 (least significant first) of byte j / 8.
struct BsqQuantizeParams {
    const float* residual;
    unsigned char* bits;
    float* codes;
    unsigned char* packed;
    int residual_stride[4];
    int batch, dim, height, width;
    /// 1/√d as the CPU computes it (in f64, rounded once).
    float code_scale;
};

extern "C" __global__ void __launch_bounds__(256) bsq_quantize(const BsqQuantizeParams p) {
    const unsigned tokens = unsigned(p.batch * p.height * p.width);
    const int bytes = (p.dim + 7) / 8;
    const int plane = p.height * p.width;
    for (unsigned t = grid_first(); t < tokens; t += grid_stride()) {
        const int x = int(t % p.width), y = int(t / p.width % p.height), b = int(t / plane);
        const float* r = p.residual + b * p.residual_stride[0] + y * p.residual_stride[2] +
                         x * p.residual_stride[3];
        unsigned char* bits = p.bits + t * p.dim;
        float* codes = p.codes + b * p.dim * plane + y * p.width + x;
        unsigned char* packed = p.packed + t * bytes;
        unsigned byte = 0;
        for (int j = 0; j < p.dim; ++j) {
            const unsigned bit = r[j * p.residual_stride[1]] > 0.0f ? 1u : 0u;
            bits[j] = (unsigned char)bit;
            codes[j * plane] = bit ? p.code_scale : -p.code_scale;
            byte |= bit << (j & 7);
            if ((j & 7) == 7 || j == p.dim - 1) {
                packed[j >> 3] = (unsigned char)byte;
                byte = 0;
            }
        }
    }
}
INFINITY_SHIM_ENTRY(bsq_quantize, BsqQuantizeParams)

/// residual −= up(codes) and summed += up(codes) over the latent grid (B, d, H, W), where the
/// codes are the packed bits of one scale (B, h, w, ⌈d/8⌉) and `up` is the bilinear resize
/// h×w → H×W (an exact identity when the sizes agree). One thread per latent element.
struct BsqUpdateParams {
    const unsigned char* packed;
    float* residual;
    float* summed;
    int residual_stride[4];
    int summed_stride[4];
    int batch, dim, height, width, full_h, full_w;
    float code_scale;
};

__device__ __forceinline__ float code_at(const BsqUpdateParams& p, int b, int j, int y, int x) {
    const int bytes = (p.dim + 7) / 8;
    const unsigned char byte = p.packed[((b * p.height + y) * p.width + x) * bytes + (j >> 3)];
    return (byte >> (j & 7)) & 1u ? p.code_scale : -p.code_scale;
}

extern "C" __global__ void __launch_bounds__(256) bsq_update(const BsqUpdateParams p) {
    const unsigned n = unsigned(p.batch * p.dim * p.full_h * p.full_w);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const Coord4 o = unflatten4(i, p.dim, p.full_h, p.full_w);
        const Taps ty = bilinear_taps(o.y, p.height, p.full_h);
        const Taps tx = bilinear_taps(o.x, p.width, p.full_w);
        const float t = lerp_exact(code_at(p, o.b, o.c, ty.i0, tx.i0), code_at(p, o.b, o.c, ty.i0, tx.i1), tx.lambda);
        const float d = lerp_exact(code_at(p, o.b, o.c, ty.i1, tx.i0), code_at(p, o.b, o.c, ty.i1, tx.i1), tx.lambda);
        const float up = lerp_exact(t, d, ty.lambda);
        float* r = p.residual + o.b * p.residual_stride[0] + o.c * p.residual_stride[1] +
                   o.y * p.residual_stride[2] + o.x * p.residual_stride[3];
        float* s = p.summed + o.b * p.summed_stride[0] + o.c * p.summed_stride[1] +
                   o.y * p.summed_stride[2] + o.x * p.summed_stride[3];
        *r = *r - up;
        *s = *s + up;
    }
}
INFINITY_SHIM_ENTRY(bsq_update, BsqUpdateParams)
