//! The interleaved rotary embedding of Infinity's attention (ops/src/rope.rs's
//! `rope_interleaved`): pair j of a head vector, elements (2j, 2j+1), is rotated by the angle
//! of its position l, column j of the (L, D/2) cos and sin tables:
//!   out[2j] = cos·x[2j] − sin·x[2j+1],   out[2j+1] = sin·x[2j] + cos·x[2j+1].
//! One thread per pair over a grid-stride loop, f32 arithmetic on f32 or bf16 vectors.
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
