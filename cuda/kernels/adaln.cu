//! Shared-AdaLN pieces of a transformer block (models/src/infinity/block.rs): the modulated
//! LayerNorm LN(x)·(1 + scale) + shift (LN over C without affine) and the gated residual add
//! x + gate·y, each for f32 and bf16 activations with f32 modulation and f32 arithmetic.
#include "common.cuh"

/// x (B, n, C) with element strides, scale and shift (B, C) f32 with their own strides (they
/// are rows of one modulation tensor); out (B, n, C) contiguous, in x's dtype or, from an f32
/// stream, directly in the bf16 a GEMM reads. One block per token row; the block size must be
/// a multiple of 32.
template <class In, class Out>
struct AdaLnParams {
    const In* x;
    const float* scale;
    const float* shift;
    Out* out;
    int x_stride[3];
    int scale_stride[2];
    int shift_stride[2];
    int batch, tokens, channels;
    float eps;
};

template <class In, class Out>
__device__ __forceinline__ void adaln_modulate(const AdaLnParams<In, Out>& p) {
    const int row = blockIdx.x, b = row / p.tokens, t = row % p.tokens;
    const In* x = p.x + b * p.x_stride[0] + t * p.x_stride[1];
    const float* scale = p.scale + b * p.scale_stride[0];
    const float* shift = p.shift + b * p.shift_stride[0];
    Out* out = p.out + row * p.channels;
    // Two passes over the row (it stays in L1): the centred second pass keeps the variance
    // accurate when |mean| ≫ std.
    float sum = 0.0f;
    for (int c = threadIdx.x; c < p.channels; c += blockDim.x) sum += to_float(x[c * p.x_stride[2]]);
    const float mean = block_sum(sum) / p.channels;
    float squares = 0.0f;
    for (int c = threadIdx.x; c < p.channels; c += blockDim.x) {
        const float d = to_float(x[c * p.x_stride[2]]) - mean;
        squares += d * d;
    }
    const float rstd = 1.0f / sqrtf(block_sum(squares) / p.channels + p.eps);
    for (int c = threadIdx.x; c < p.channels; c += blockDim.x) {
        const float n = (to_float(x[c * p.x_stride[2]]) - mean) * rstd;
        out[c] = from_float<Out>(n * (1.0f + scale[c * p.scale_stride[1]]) + shift[c * p.shift_stride[1]]);
    }
}

INFINITY_KERNEL(adaln_modulate_f32, adaln_modulate, AdaLnParams<float, float>)
INFINITY_KERNEL(adaln_modulate_f32_bf16, adaln_modulate, AdaLnParams<float, bf16>)
INFINITY_KERNEL(adaln_modulate_bf16, adaln_modulate, AdaLnParams<bf16, bf16>)

/// out = x + gate·y with x, y (B, n, C) and gate (B, C) f32, all with element strides; out
/// contiguous. The product and the sum are rounded separately, as the CPU's `add(x, mul(y,
/// gate))`, so f32 results agree exactly.
template <class T>
struct GatedResidualParams {
    const T* x;
    const T* y;
    const float* gate;
    T* out;
    int x_stride[3];
    int y_stride[3];
    int gate_stride[2];
    int batch, tokens, channels;
};

template <class T>
__device__ __forceinline__ void gated_residual(const GatedResidualParams<T>& p) {
    const unsigned n = unsigned(p.batch * p.tokens * p.channels);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const int c = int(i % p.channels), t = int(i / p.channels % p.tokens), b = int(i / p.channels / p.tokens);
        const float x = to_float(p.x[b * p.x_stride[0] + t * p.x_stride[1] + c * p.x_stride[2]]);
        const float y = to_float(p.y[b * p.y_stride[0] + t * p.y_stride[1] + c * p.y_stride[2]]);
        const float g = p.gate[b * p.gate_stride[0] + c * p.gate_stride[1]];
        p.out[i] = from_float<T>(__fadd_rn(x, __fmul_rn(y, g)));
    }
}

extern "C" __global__ void __launch_bounds__(256) gated_residual_f32(const GatedResidualParams<float> p) {
    gated_residual(p);
}
INFINITY_SHIM_ENTRY(gated_residual_f32, GatedResidualParams<float>)
extern "C" __global__ void __launch_bounds__(256) gated_residual_bf16(const GatedResidualParams<bf16> p) {
    gated_residual(p);
}
INFINITY_SHIM_ENTRY(gated_residual_bf16, GatedResidualParams<bf16>)
