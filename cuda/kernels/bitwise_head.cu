//! The bitwise classifier head: logits (B, n, 2d) hold one pair (l0, l1) per bit, l0 scoring
//! the −1 code. For inference, `bitwise_sample` fuses temperature, classifier-free guidance,
//! the top-p rule and a Philox draw into one pass (the executor path of ops/src/bitwise.rs's
//! `sample_bits`, same seed ⇒ same bits). For training, `bitwise_loss` fuses the two-way
//! cross-entropy and its gradient without materialising probabilities.
#include "common.cuh"

/// Bits (B, n, d) u8, contiguous, from raw logits (R, n, 2d): rows b < B are conditional,
/// rows B + b the unconditional halves when `with_uncond`. Pair i = (b·n + t)·d + j draws
/// stream position `offset + i`.
struct BitwiseSampleParams {
    const float* logits;
    unsigned char* bits;
    unsigned long long seed, offset;
    int logits_stride[3];
    int batch, tokens, dim;
    int with_uncond;
    /// Greedy selection (also top-k = 1): the larger logit wins, ties go to bit 0.
    int greedy;
    float cfg, tau;
    /// Nucleus mass; 0 or 1 disables the rule.
    float top_p;
};

/// logit / τ, then w·cond + (1 − w)·uncond: ops/src/bitwise.rs's guidance, rounded the same way.
__device__ __forceinline__ float guided(const BitwiseSampleParams& p, const float* cond, int uncond_offset, int k) {
    const float c = __fdiv_rn(cond[k * p.logits_stride[2]], p.tau);
    if (!p.with_uncond) return c;
    const float u = __fdiv_rn(cond[uncond_offset + k * p.logits_stride[2]], p.tau);
    return __fadd_rn(__fmul_rn(p.cfg, c), __fmul_rn(__fsub_rn(1.0f, p.cfg), u));
}

extern "C" __global__ void __launch_bounds__(256) bitwise_sample(const BitwiseSampleParams p) {
    const unsigned pairs = unsigned(p.batch * p.tokens * p.dim);
    const int uncond_offset = p.batch * p.logits_stride[0];
    for (unsigned i = grid_first(); i < pairs; i += grid_stride()) {
        const int j = int(i % p.dim), t = int(i / p.dim % p.tokens), b = int(i / p.dim / p.tokens);
        const float* row = p.logits + b * p.logits_stride[0] + t * p.logits_stride[1];
        const float l0 = guided(p, row, uncond_offset, 2 * j), l1 = guided(p, row, uncond_offset, 2 * j + 1);
        unsigned char bit;
        if (p.greedy) {
            bit = l1 > l0;
        } else {
            // ops/src/bitwise.rs's `sample_bits` per pair, operation for operation.
            const float p1 = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(__fsub_rn(l0, l1))));
            const bool nucleus = p.top_p > 0.0f && p.top_p < 1.0f;
            if (nucleus && fminf(p1, __fsub_rn(1.0f, p1)) <= __fsub_rn(1.0f, p.top_p))
                bit = p1 > 0.5f;
            else
                bit = unit_float(philox_u32(p.seed, p.offset + i)) < p1;
        }
        p.bits[i] = bit;
    }
}
INFINITY_SHIM_ENTRY(bitwise_sample, BitwiseSampleParams)

/// Per pair with label y (u8, nonzero means bit 1) and z = l_other − l_label:
/// loss = logsumexp(l0, l1) − l_y = softplus(z), and the gradient of the loss, scaled by
/// `grad_scale` (e.g. 1/count for a mean), is softmax − onehot = (+σ(z) on the other logit,
/// −σ(z) on the label's). Outputs contiguous: loss (B, n, d), grad (B, n, 2d).
struct BitwiseLossParams {
    const float* logits;
    const unsigned char* labels;
    float* loss;
    float* grad;
    int logits_stride[3];
    int labels_stride[3];
    int batch, tokens, dim;
    float grad_scale;
};

extern "C" __global__ void __launch_bounds__(256) bitwise_loss(const BitwiseLossParams p) {
    const unsigned pairs = unsigned(p.batch * p.tokens * p.dim);
    for (unsigned i = grid_first(); i < pairs; i += grid_stride()) {
        const int j = int(i % p.dim), t = int(i / p.dim % p.tokens), b = int(i / p.dim / p.tokens);
        const float* l = p.logits + b * p.logits_stride[0] + t * p.logits_stride[1];
        const float l0 = l[2 * j * p.logits_stride[2]], l1 = l[(2 * j + 1) * p.logits_stride[2]];
        const bool one = p.labels[b * p.labels_stride[0] + t * p.labels_stride[1] + j * p.labels_stride[2]] != 0;
        const float z = one ? l0 - l1 : l1 - l0;
        // Stable for any finite z: exp only ever sees −|z|.
        const float e = expf(-fabsf(z));
        p.loss[i] = fmaxf(z, 0.0f) + log1pf(e);
        const float sigma = z >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
        const float g = sigma * p.grad_scale;
        p.grad[2 * i] = one ? g : -g;
        p.grad[2 * i + 1] = one ? -g : g;
    }
}
INFINITY_SHIM_ENTRY(bitwise_loss, BitwiseLossParams)
