//! The multi-scale bit quantizer of BitVAE (models/src/bitvae/quantizer.rs) on the GPU:
//! PyTorch-exact 'bilinear', 'bicubic' and 'area' resizes (ops/src/resize.rs), the per-scale sign
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

/// Keys' cubic convolution parameter PyTorch uses.
constexpr float kCubicA = -0.75f;

/// The |x| <= 1 piece of the cubic kernel: ((A + 2)·x − (A + 3))·x·x + 1, unfused.
__device__ __forceinline__ float cubic_near(float x) {
    const float a = __fsub_rn(__fmul_rn(kCubicA + 2.0f, x), kCubicA + 3.0f);
    return __fadd_rn(__fmul_rn(__fmul_rn(a, x), x), 1.0f);
}

/// The 1 < |x| < 2 piece: ((A·x − 5A)·x + 8A)·x − 4A, unfused.
__device__ __forceinline__ float cubic_far(float x) {
    const float a = __fsub_rn(__fmul_rn(kCubicA, x), 5.0f * kCubicA);
    const float b = __fadd_rn(__fmul_rn(a, x), 8.0f * kCubicA);
    return __fsub_rn(__fmul_rn(b, x), 4.0f * kCubicA);
}

/// The four edge-clamped source indices of output index `dst` along one axis and their
/// weights, as ops/src/resize.rs computes them (PyTorch's compute_indices_weights_cubic).
struct CubicTaps {
    int index[4];
    float weight[4];
};

__device__ __forceinline__ CubicTaps cubic_taps(int dst, int in, int out) {
    const float scale = __fdiv_rn(float(in), float(out));
    const float src = __fsub_rn(__fmul_rn(__fadd_rn(float(dst), 0.5f), scale), 0.5f);
    const int i0 = min(int(floorf(src)), in - 1);
    const float t = fminf(fmaxf(__fsub_rn(src, float(i0)), 0.0f), 1.0f);
    CubicTaps k;
    k.weight[0] = cubic_far(__fadd_rn(t, 1.0f));
    k.weight[1] = cubic_near(t);
    k.weight[2] = cubic_near(__fsub_rn(1.0f, t));
    k.weight[3] = cubic_far(__fadd_rn(__fsub_rn(1.0f, t), 1.0f));
    for (int j = 0; j < 4; ++j) k.index[j] = min(max(i0 - 1 + j, 0), in - 1);
    return k;
}

/// PyTorch 'bicubic' (align_corners = False, no antialias): along W in each of the 4 rows,
/// then along H, every sum left to right, as the CPU path.
extern "C" __global__ void __launch_bounds__(256) resize_bicubic(const ResizeParams p) {
    const unsigned n = unsigned(p.batch * p.channels * p.out_h * p.out_w);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const Coord4 o = unflatten4(i, p.channels, p.out_h, p.out_w);
        const float* plane = p.src + o.b * p.src_stride[0] + o.c * p.src_stride[1];
        if (p.in_h == p.out_h && p.in_w == p.out_w) {
            p.dst[i] = plane[o.y * p.src_stride[2] + o.x * p.src_stride[3]];
            continue;
        }
        const CubicTaps ty = cubic_taps(o.y, p.in_h, p.out_h);
        const CubicTaps tx = cubic_taps(o.x, p.in_w, p.out_w);
        float acc = 0.0f;
        for (int j = 0; j < 4; ++j) {
            const float* row = plane + ty.index[j] * p.src_stride[2];
            float along_w = __fmul_rn(row[tx.index[0] * p.src_stride[3]], tx.weight[0]);
            for (int c = 1; c < 4; ++c)
                along_w = __fadd_rn(along_w, __fmul_rn(row[tx.index[c] * p.src_stride[3]], tx.weight[c]));
            const float term = __fmul_rn(along_w, ty.weight[j]);
            acc = j == 0 ? term : __fadd_rn(acc, term);
        }
        p.dst[i] = acc;
    }
}
INFINITY_SHIM_ENTRY(resize_bicubic, ResizeParams)

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

/// The nearest codebook row of every row of z (N, C): argmin over v of
/// (‖z‖² + ‖e_v‖²) − 2·z·e_v, each sum left to right, unfused, first index on ties — the
/// arithmetic of ops/src/vq.rs, so both pick the same code. One thread per row.
struct NearestCodeParams {
    const float* z;
    const float* codebook;
    long long* index;
    int z_stride[2];
    int code_stride[2];
    int rows, dim, codes;
};

__device__ __forceinline__ float strided_dot(const float* a, int sa, const float* b, int sb, int n) {
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) acc = __fadd_rn(acc, __fmul_rn(a[i * sa], b[i * sb]));
    return acc;
}

extern "C" __global__ void __launch_bounds__(256) nearest_code(const NearestCodeParams p) {
    for (unsigned r = grid_first(); r < unsigned(p.rows); r += grid_stride()) {
        const float* z = p.z + r * p.z_stride[0];
        const float z2 = strided_dot(z, p.z_stride[1], z, p.z_stride[1], p.dim);
        float best = __uint_as_float(0x7f800000u);  // +inf
        int best_index = 0;
        for (int v = 0; v < p.codes; ++v) {
            const float* e = p.codebook + v * p.code_stride[0];
            const float e2 = strided_dot(e, p.code_stride[1], e, p.code_stride[1], p.dim);
            const float cross = strided_dot(z, p.z_stride[1], e, p.code_stride[1], p.dim);
            const float d = __fsub_rn(__fadd_rn(z2, e2), __fmul_rn(2.0f, cross));
            if (d < best) {
                best = d;
                best_index = v;
            }
        }
        p.index[r] = best_index;
    }
}
INFINITY_SHIM_ENTRY(nearest_code, NearestCodeParams)
