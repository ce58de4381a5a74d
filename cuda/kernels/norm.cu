//! Normalisations that reduce over a block of elements and rescale it (ops/src/norm.rs,
//! ops/src/softmax.rs): the row norms (the RMS norm of T5 and of Infinity's text projection,
//! the layer norm and the L2 normalisation of Infinity's blocks), the group norm
//! (+ SiLU) in front of every BitVAE decoder convolution, the softmax over the last
//! dimension, and the sums, means, maxima and minima of rows (ops/src/reduce.rs). One CUDA block per normalised block of elements: its threads stride over the
//! elements, and block_reduce combines their f32 partial results. The inputs are re-read for
//! each pass (they stay in L1/L2), which keeps register use flat for any row length.
#include "common.cuh"

/// x (..., D) as a 4-D view (a lower rank has leading sizes 1) with element strides; weight
/// and bias (D) f32 with their strides, or null for none; out contiguous in x's dtype. One
/// block per row. `stat` (mirrored in src/norm.rs): 0 RMS, 1 layer norm (centred, biased
/// variance), 2 L2 (divided by max(‖x‖, eps)).
template <class T>
struct RowNormParams {
    const T* x;
    const float* weight;
    const float* bias;
    T* out;
    int dims[4];
    int x_stride[4];
    int weight_stride;
    int bias_stride;
    float eps;
    int stat;
};

/// out = (x − mean)·inv·weight + bias, inv the statistic's inverse (mean 0 but for the layer
/// norm).
template <class T>
__device__ __forceinline__ void row_norm(const RowNormParams<T>& p) {
    const int width = p.dims[3], step = p.x_stride[3];
    const T* x = p.x + offset_of(unflatten<3>(blockIdx.x, p.dims), p.x_stride);
    T* out = p.out + blockIdx.x * width;
    float mean = 0.0f;
    if (p.stat == 1) {
        float sum = 0.0f;
        for (int c = threadIdx.x; c < width; c += blockDim.x) sum += to_float(x[c * step]);
        mean = block_sum(sum) / width;
    }
    float squares = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const float v = to_float(x[c * step]) - mean;
        squares += v * v;
    }
    squares = block_sum(squares);
    const float inv = p.stat == 2 ? 1.0f / fmaxf(sqrtf(squares), p.eps) : 1.0f / sqrtf(squares / width + p.eps);
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const float w = p.weight ? p.weight[c * p.weight_stride] : 1.0f;
        const float b = p.bias ? p.bias[c * p.bias_stride] : 0.0f;
        out[c] = from_float<T>((to_float(x[c * step]) - mean) * inv * w + b);
    }
}

extern "C" __global__ void __launch_bounds__(256) row_norm_f32(const RowNormParams<float> p) { row_norm(p); }
INFINITY_SHIM_ENTRY(row_norm_f32, RowNormParams<float>)
extern "C" __global__ void __launch_bounds__(256) row_norm_bf16(const RowNormParams<bf16> p) { row_norm(p); }
INFINITY_SHIM_ENTRY(row_norm_bf16, RowNormParams<bf16>)

/// x (N, C, H, W) f32 with element strides, weight and bias (C) f32 with their strides; out
/// contiguous. One block per (sample, group): blockIdx.x = n · groups + g.
struct GroupNormParams {
    const float* x;
    const float* weight;
    const float* bias;
    float* out;
    int x_stride[4];
    int weight_stride, bias_stride;
    int channels, height, width, groups;
    float eps;
    /// Nonzero: SiLU of the affine result (the decoder's GroupNorm → SiLU in one pass).
    int silu;
};

/// Element j of a group's channels × positions, channel-major like the group's output.
__device__ __forceinline__ float group_member(const GroupNormParams& p, const float* group, int j) {
    const int plane = p.height * p.width, s = j % plane;
    return group[j / plane * p.x_stride[1] + s / p.width * p.x_stride[2] + s % p.width * p.x_stride[3]];
}

extern "C" __global__ void __launch_bounds__(256) group_norm(const GroupNormParams p) {
    const int n = blockIdx.x / p.groups, per_group = p.channels / p.groups;
    const int c0 = blockIdx.x % p.groups * per_group, plane = p.height * p.width, members = per_group * plane;
    const float* group = p.x + n * p.x_stride[0] + c0 * p.x_stride[1];
    // The group's channels are consecutive, so its outputs are one contiguous run.
    float* out = p.out + (n * p.channels + c0) * plane;
    // Two passes for the statistics: the centred second one keeps the variance accurate when
    // |mean| ≫ std.
    float sum = 0.0f;
    for (int j = threadIdx.x; j < members; j += blockDim.x) sum += group_member(p, group, j);
    const float mean = block_sum(sum) / members;
    float squares = 0.0f;
    for (int j = threadIdx.x; j < members; j += blockDim.x) {
        const float d = group_member(p, group, j) - mean;
        squares += d * d;
    }
    const float rstd = 1.0f / sqrtf(block_sum(squares) / members + p.eps);
    for (int j = threadIdx.x; j < members; j += blockDim.x) {
        const int c = c0 + j / plane;
        const float y = (group_member(p, group, j) - mean) * rstd * p.weight[c * p.weight_stride] +
                        p.bias[c * p.bias_stride];
        out[j] = p.silu ? silu(y) : y;
    }
}
INFINITY_SHIM_ENTRY(group_norm, GroupNormParams)

/// x (..., D) f32 as a 4-D view (leading sizes 1 for a lower rank) with element strides; out
/// contiguous. One block per row.
struct SoftmaxParams {
    const float* x;
    float* out;
    int dims[4];
    int x_stride[4];
};

/// exp(x − max) / Σ exp(x − max). The max propagates NaN, so a row holding NaN or +inf, or
/// only −inf, comes out all NaN, as in the CPU op.
extern "C" __global__ void __launch_bounds__(256) softmax_f32(const SoftmaxParams p) {
    const int width = p.dims[3], step = p.x_stride[3];
    const float* x = p.x + offset_of(unflatten<3>(blockIdx.x, p.dims), p.x_stride);
    float* out = p.out + blockIdx.x * width;
    float top = __uint_as_float(0xff800000u);  // −inf
    for (int c = threadIdx.x; c < width; c += blockDim.x) top = MaxNan()(top, x[c * step]);
    top = block_reduce(top, MaxNan());
    // Each thread keeps its exponentials in `out` and rescales the same elements afterwards:
    // no other thread reads them, so no barrier is needed in between.
    float sum = 0.0f;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        const float e = expf(x[c * step] - top);
        out[c] = e;
        sum += e;
    }
    const float inv = 1.0f / block_sum(sum);
    for (int c = threadIdx.x; c < width; c += blockDim.x) out[c] *= inv;
}
INFINITY_SHIM_ENTRY(softmax_f32, SoftmaxParams)

/// x (..., D) f32 as a 4-D view (leading sizes 1 for a lower rank) with element strides; out
/// holds one value per row. `op`: 0 sum, 1 mean, 2 max, 3 min (mirrored in src/norm.rs).
struct ReduceRowsParams {
    const float* x;
    float* out;
    int dims[4];
    int x_stride[4];
    int op;
};

/// The smaller of a and b, and NaN when either is NaN, as `MaxNan`.
struct MinNan {
    __device__ __forceinline__ float operator()(float a, float b) const { return (a < b || a != a) ? a : b; }
};

template <class Op>
__device__ __forceinline__ float reduce_row(const float* x, int width, int step, float init, Op op) {
    float acc = init;
    for (int c = threadIdx.x; c < width; c += blockDim.x) acc = op(acc, x[c * step]);
    return block_reduce(acc, op);
}

/// One block per row; the f32 partial results of its threads are combined by block_reduce.
extern "C" __global__ void __launch_bounds__(256) reduce_rows_f32(const ReduceRowsParams p) {
    const int width = p.dims[3], step = p.x_stride[3];
    const float* x = p.x + offset_of(unflatten<3>(blockIdx.x, p.dims), p.x_stride);
    const float inf = __uint_as_float(0x7f800000u);
    float r;
    switch (p.op) {
        case 2: r = reduce_row(x, width, step, -inf, MaxNan()); break;
        case 3: r = reduce_row(x, width, step, inf, MinNan()); break;
        default: r = reduce_row(x, width, step, 0.0f, Sum()); break;
    }
    if (threadIdx.x == 0) p.out[blockIdx.x] = p.op == 1 ? r / width : r;
}
INFINITY_SHIM_ENTRY(reduce_rows_f32, ReduceRowsParams)
