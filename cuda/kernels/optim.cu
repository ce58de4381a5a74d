//! The optimiser's multi-tensor kernels (ops/src/optim.rs): AdamW's update of every parameter
//! in one launch, and the sums of squares of every gradient (the global norm that clipping
//! needs) in another. Each launch takes a table of its tensors in device memory; the tensors
//! are cut into chunks of kChunk elements, numbered across the table, and each block takes
//! chunks by a grid-stride loop, so one launch covers a thousand tensors of any sizes.
//!
//! AdamW rounds every operation as autograd/src/optim.rs's CPU loop does (no fused
//! multiply-adds, IEEE square root and division), so a step equals the CPU's bit for bit and a
//! run resumes on either device with the same numbers.
#include "common.cuh"

/// Elements per chunk; a chunk never spans two tensors.
constexpr int kChunk = 4096;

/// The table entry holding chunk c: the last whose first chunk is ≤ c (entries are in order
/// of their first chunks, the first at 0).
template <class Entry>
__device__ __forceinline__ const Entry& owner(const Entry* table, int count, int c) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (table[mid].first_chunk <= c)
            lo = mid;
        else
            hi = mid - 1;
    }
    return table[lo];
}

/// One parameter of an AdamW step with its step's coefficients (formed on the host in f64
/// and rounded once, as PyTorch does): decay = 1 − lr·wd (applied when `decays`), step_size =
/// lr / (1 − β₁ᵗ), bias_correction2_sqrt = √(1 − β₂ᵗ). Every tensor contiguous f32.
struct AdamWTensor {
    float* param;
    const float* grad;
    float* exp_avg;
    float* exp_avg_sq;
    int numel, first_chunk;
    float decay, step_size, bias_correction2_sqrt;
    int decays;
};

struct AdamWParams {
    const AdamWTensor* tensors;
    int count, chunks;
    float beta2, one_minus_beta1, one_minus_beta2, eps;
};

/// PyTorch's lerp a + w(b − a), evaluated from the nearer end.
__device__ __forceinline__ float lerp_torch(float a, float b, float w) {
    return fabsf(w) < 0.5f ? __fadd_rn(a, __fmul_rn(w, __fsub_rn(b, a)))
                           : __fsub_rn(b, __fmul_rn(__fsub_rn(b, a), __fsub_rn(1.0f, w)));
}

/// p ← p·decay; m ← lerp(m, g, 1 − β₁); v ← v·β₂ + (1 − β₂)·g·g;
/// p ← p − step_size·m / (√v / √(1 − β₂ᵗ) + eps).
__device__ __forceinline__ void adamw(const AdamWParams& p) {
    for (int c = blockIdx.x; c < p.chunks; c += gridDim.x) {
        const AdamWTensor& t = owner(p.tensors, p.count, c);
        const int start = (c - t.first_chunk) * kChunk, end = min(start + kChunk, t.numel);
        for (int i = start + int(threadIdx.x); i < end; i += int(blockDim.x)) {
            const float g = t.grad[i];
            float param = t.param[i];
            if (t.decays) param = __fmul_rn(param, t.decay);
            const float m = lerp_torch(t.exp_avg[i], g, p.one_minus_beta1);
            const float v = __fadd_rn(__fmul_rn(t.exp_avg_sq[i], p.beta2), __fmul_rn(__fmul_rn(p.one_minus_beta2, g), g));
            const float denom = __fadd_rn(__fdiv_rn(sqrtf(v), t.bias_correction2_sqrt), p.eps);
            t.param[i] = __fsub_rn(param, __fdiv_rn(__fmul_rn(t.step_size, m), denom));
            t.exp_avg[i] = m;
            t.exp_avg_sq[i] = v;
        }
    }
}

INFINITY_KERNEL(adamw_f32, adamw, AdamWParams)

/// One tensor of a sum of squares: contiguous f32.
struct SquaresTensor {
    const float* data;
    int numel, first_chunk;
};

/// partial[c] = Σ x² over chunk c (f32; the host adds the chunks in f64, in order, so the
/// total does not depend on the grid).
struct SumSquaresParams {
    const SquaresTensor* tensors;
    float* partial;
    int count, chunks;
};

__device__ __forceinline__ void sum_squares(const SumSquaresParams& p) {
    // The loop bound is the same for the whole block, so every thread reaches block_sum.
    for (int c = blockIdx.x; c < p.chunks; c += gridDim.x) {
        const SquaresTensor& t = owner(p.tensors, p.count, c);
        const int start = (c - t.first_chunk) * kChunk, end = min(start + kChunk, t.numel);
        float sum = 0.0f;
        for (int i = start + int(threadIdx.x); i < end; i += int(blockDim.x)) sum = __fadd_rn(sum, __fmul_rn(t.data[i], t.data[i]));
        const float total = block_sum(sum);
        if (threadIdx.x == 0) p.partial[c] = total;
    }
}

INFINITY_KERNEL(sum_squares_f32, sum_squares, SumSquaresParams)
