//! The interleaved rotary embedding of Infinity's attention (ops/src/rope.rs's
//! `rope_interleaved`): pair j of a head vector, elements (2j, 2j+1), is rotated by the angle
//! of its position l, column j of the (L, D/2) cos and sin tables:
//!   out[2j] = cos·x[2j] − sin·x[2j+1],   out[2j+1] = sin·x[2j] + cos·x[2j+1].
//! One thread per pair over a grid-stride loop, f32 arithmetic on f32 or bf16 vectors.
//!
//! And the inference path's fusion of everything between the qkv projection and the
//! attention kernel (models/src/infinity/block.rs): the cosine attention's L2 normalisation,
//! the per-head scale on q, the rotation, and the KV-cache append, in one pass over qkv.
#include "common.cuh"

/// x (B, H, L, D) with element strides, cos and sin (L, D/2) f32 with their strides; out
/// (B, H, L, D) contiguous in x's dtype.
template <class T>
struct RopeParams {
    const T* x;
    const float* cos;
    const float* sin;
    T* out;
    int dims[4];
    int x_stride[4];
    int cos_stride[2];
    int sin_stride[2];
};

template <class T>
__device__ __forceinline__ void rope_interleaved(const RopeParams<T>& p) {
    const int half = p.dims[3] / 2;
    const unsigned pairs = unsigned(p.dims[0] * p.dims[1] * p.dims[2] * half);
    for (unsigned i = grid_first(); i < pairs; i += grid_stride()) {
        const unsigned row = i / unsigned(half);
        const int j = int(i % unsigned(half));
        const Coords<3> k = unflatten<3>(row, p.dims);
        const T* x = p.x + offset_of(k, p.x_stride) + 2 * j * p.x_stride[3];
        const float a = to_float(x[0]), b = to_float(x[p.x_stride[3]]);
        const int l = k.at[2];
        const float c = p.cos[l * p.cos_stride[0] + j * p.cos_stride[1]];
        const float s = p.sin[l * p.sin_stride[0] + j * p.sin_stride[1]];
        T* out = p.out + row * p.dims[3] + 2 * j;
        out[0] = from_float<T>(c * a - s * b);
        out[1] = from_float<T>(s * a + c * b);
    }
}

extern "C" __global__ void __launch_bounds__(256) rope_interleaved_f32(const RopeParams<float> p) {
    rope_interleaved(p);
}
INFINITY_SHIM_ENTRY(rope_interleaved_f32, RopeParams<float>)
extern "C" __global__ void __launch_bounds__(256) rope_interleaved_bf16(const RopeParams<bf16> p) {
    rope_interleaved(p);
}
INFINITY_SHIM_ENTRY(rope_interleaved_bf16, RopeParams<bf16>)

/// The most rotation pairs a lane holds: head dims up to 32 · 2 · 2 = 128.
constexpr int kMaxPairsPerLane = 2;

/// qkv (B, n, 3, H, D) bf16 as the fused projection leaves it, with element strides for its
/// first four dimensions (D contiguous, even, at most 128); cos and sin (n, D/2) f32 with
/// strides; head_scale (H,) f32. Writes q (B, H, n, D) bf16 contiguous, and keys and values to
/// the caches, (B, H, ·, D) with element strides, whose pointers address the scale's first
/// position.
struct AttentionInputsParams {
    const bf16* qkv;
    const float* cos;
    const float* sin;
    const float* head_scale;
    bf16* q;
    bf16* k_cache;
    bf16* v_cache;
    int qkv_stride[4];
    int cos_stride[2];
    int sin_stride[2];
    int k_stride[3];
    int v_stride[3];
    int batch, tokens, heads, head_dim;
};

/// A warp per (sample, token, head), lane l holding the rotation pairs l, l + 32 (those below
/// D/2): q ← head_scale·rope(q / max(‖q‖, 1e-12)), k ← rope(k / max(‖k‖, 1e-12)), v as it is.
/// The norms are f32 sums of the bf16 inputs; each output is rounded to bf16 once.
extern "C" __global__ void __launch_bounds__(256) attention_inputs(const AttentionInputsParams p) {
    const int lane = threadIdx.x % 32, pairs = p.head_dim / 2;
    const unsigned rows = unsigned(p.batch * p.tokens * p.heads);
    const unsigned warps = gridDim.x * blockDim.x / 32;
    for (unsigned r = (blockIdx.x * blockDim.x + threadIdx.x) / 32; r < rows; r += warps) {
        const int h = int(r % unsigned(p.heads)), t = int(r / unsigned(p.heads) % unsigned(p.tokens));
        const int b = int(r / unsigned(p.heads * p.tokens));
        const bf16* src = p.qkv + b * p.qkv_stride[0] + t * p.qkv_stride[1] + h * p.qkv_stride[3];
        float c[kMaxPairsPerLane], s[kMaxPairsPerLane];
#pragma unroll
        for (int e = 0; e < kMaxPairsPerLane; ++e) {
            const int j = lane + 32 * e;
            c[e] = j < pairs ? p.cos[t * p.cos_stride[0] + j * p.cos_stride[1]] : 0.0f;
            s[e] = j < pairs ? p.sin[t * p.sin_stride[0] + j * p.sin_stride[1]] : 0.0f;
        }
        bf16* const dst[3] = {
            p.q + ((b * p.heads + h) * p.tokens + t) * p.head_dim,
            p.k_cache + b * p.k_stride[0] + h * p.k_stride[1] + t * p.k_stride[2],
            p.v_cache + b * p.v_stride[0] + h * p.v_stride[1] + t * p.v_stride[2],
        };
#pragma unroll
        for (int part = 0; part < 3; ++part) {
            // x[2e], x[2e + 1]: pair lane + 32e; zeros past the head dim.
            float x[2 * kMaxPairsPerLane];
#pragma unroll
            for (int e = 0; e < kMaxPairsPerLane; ++e) {
                const int j = lane + 32 * e;
                const bf16* pair = src + part * p.qkv_stride[2] + 2 * j;
                x[2 * e] = j < pairs ? to_float(pair[0]) : 0.0f;
                x[2 * e + 1] = j < pairs ? to_float(pair[1]) : 0.0f;
            }
            bf16* out = dst[part];
            float factor = 1.0f;
            if (part != 2) {
                float squares = 0.0f;
#pragma unroll
                for (int e = 0; e < 2 * kMaxPairsPerLane; ++e) squares += x[e] * x[e];
                factor = 1.0f / fmaxf(sqrtf(warp_sum(squares)), kNormFloor);
                if (part == 0) factor *= p.head_scale[h];
            }
#pragma unroll
            for (int e = 0; e < kMaxPairsPerLane; ++e) {
                const int j = lane + 32 * e;
                if (j >= pairs) continue;
                const float a = x[2 * e] * factor, bb = x[2 * e + 1] * factor;
                if (part == 2) {
                    out[2 * j] = from_float<bf16>(x[2 * e]);
                    out[2 * j + 1] = from_float<bf16>(x[2 * e + 1]);
                } else {
                    out[2 * j] = from_float<bf16>(c[e] * a - s[e] * bb);
                    out[2 * j + 1] = from_float<bf16>(s[e] * a + c[e] * bb);
                }
            }
        }
    }
}
INFINITY_SHIM_ENTRY(attention_inputs, AttentionInputsParams)
