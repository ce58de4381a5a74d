//! Elementwise ops of the three networks (ops/src/elementwise.rs): the broadcast add and
//! multiply of residuals, biases and gates, the tanh GELU (T5's gated FFN, Infinity's MLP)
//! and SiLU (the BitVAE) activations, exp, tanh, sigmoid, sqrt, square, clamp and x·a + b
//! (the scalar forms), the gradients of those functions, and the strided copy that casts,
//! gathers views into contiguous operands and writes into a slice of a larger tensor (the KV
//! cache). One thread
//! per output element over a grid-stride loop; inputs are read through element strides (a
//! stride of 0 broadcasts); the arithmetic runs in f32 on f32 or bf16 inputs.
#include "common.cuh"

/// The op codes of `BinaryParams::op` and `UnaryParams::op` (mirrored in src/elementwise.rs).
enum BinaryOp : int { kAdd = 0, kMul = 1, kSub = 2, kDiv = 3 };
enum UnaryOp : int {
    kGeluTanh = 0, kSilu = 1, kExp = 2, kClamp = 3, kAffine = 4, kTanh = 5, kSigmoid = 6, kSqrt = 7, kSquare = 8,
    kLog = 9, kAbs = 10, kSign = 11
};

/// out (dims, contiguous) = a op b, with a and b seen at the output's 4-D shape through their
/// element strides (0 along broadcast dimensions).
template <class T>
struct BinaryParams {
    const T* a;
    const T* b;
    float* out;
    int dims[4];
    int a_stride[4];
    int b_stride[4];
    int op;
};

/// Correctly rounded, never fused: f32 inputs give the CPU's results bit for bit.
__device__ __forceinline__ float apply(int op, float a, float b) {
    switch (op) {
        case kAdd: return __fadd_rn(a, b);
        case kMul: return __fmul_rn(a, b);
        case kSub: return __fsub_rn(a, b);
        default: return __fdiv_rn(a, b);
    }
}

template <class T>
__device__ __forceinline__ void binary(const BinaryParams<T>& p) {
    const unsigned n = unsigned(p.dims[0] * p.dims[1] * p.dims[2] * p.dims[3]);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const Coords<4> k = unflatten<4>(i, p.dims);
        const float a = to_float(p.a[offset_of(k, p.a_stride)]), b = to_float(p.b[offset_of(k, p.b_stride)]);
        p.out[i] = apply(p.op, a, b);
    }
}

extern "C" __global__ void __launch_bounds__(256) binary_f32(const BinaryParams<float> p) { binary(p); }
INFINITY_SHIM_ENTRY(binary_f32, BinaryParams<float>)
extern "C" __global__ void __launch_bounds__(256) binary_bf16(const BinaryParams<bf16> p) { binary(p); }
INFINITY_SHIM_ENTRY(binary_bf16, BinaryParams<bf16>)

/// out (dims, contiguous) = f(x), x a 4-D view with element strides; out in f32, or in the
/// bf16 a GEMM reads next. `a` and `b` are the constants of clamp (lo, hi) and affine
/// (mul, add).
template <class In, class Out>
struct UnaryParams {
    const In* x;
    Out* out;
    int dims[4];
    int x_stride[4];
    int op;
    float a;
    float b;
};

/// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) written as x·sigmoid(2√(2/π)·(…)), which
/// does not cancel for large negative x as 1 + tanh would.
__device__ __forceinline__ float gelu_tanh(float x) {
    const float two_k = 1.5957691216057308f;  // 2·√(2/π)
    return __fdiv_rn(x, __fadd_rn(1.0f, expf(-two_k * (x + 0.044715f * x * x * x))));
}

template <class In, class Out>
__device__ __forceinline__ void unary(const UnaryParams<In, Out>& p) {
    const unsigned n = unsigned(p.dims[0] * p.dims[1] * p.dims[2] * p.dims[3]);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const float x = to_float(p.x[offset_of(unflatten<4>(i, p.dims), p.x_stride)]);
        float y;
        switch (p.op) {
            case kGeluTanh: y = gelu_tanh(x); break;
            case kSilu: y = silu(x); break;
            case kExp: y = expf(x); break;
            // NaN stays NaN, as fminf/fmaxf would not keep it.
            case kClamp: y = x != x ? x : fminf(fmaxf(x, p.a), p.b); break;
            case kTanh: y = tanhf(x); break;
            case kSigmoid: y = __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x))); break;
            case kSqrt: y = sqrtf(x); break;
            case kSquare: y = __fmul_rn(x, x); break;
            case kLog: y = logf(x); break;
            case kAbs: y = fabsf(x); break;
            // sign(±0) = sign(NaN) = 0, as on the CPU (and in PyTorch).
            case kSign: y = float(x > 0.0f) - float(x < 0.0f); break;
            // Two roundings, like the CPU's x * mul + add.
            default: y = __fadd_rn(__fmul_rn(x, p.a), p.b); break;
        }
        p.out[i] = from_float<Out>(y);
    }
}

INFINITY_KERNEL(unary_f32, unary, UnaryParams<float, float>)
INFINITY_KERNEL(unary_bf16, unary, UnaryParams<bf16, float>)
INFINITY_KERNEL(unary_bf16_bf16, unary, UnaryParams<bf16, bf16>)

/// out = g·f′ of a one-input function, from its output gradient g and the input x or output
/// y the derivative is formed from (`v`), both seen through element strides at out's 4-D
/// shape; f32 throughout. `op` (mirrored in src/elementwise.rs): 0 tanh GELU (x), 1 SiLU (x),
/// 2 clamp to [a, b] (x, the bounds passing the gradient), 3 tanh (y), 4 sigmoid (y), 5 sqrt
/// (y), 6 square (x), 7 abs (x: the gradient's sign flipped below 0, zero at 0).
struct UnaryGradParams {
    const float* g;
    const float* v;
    float* out;
    int dims[4];
    int g_stride[4];
    int v_stride[4];
    int op;
    float a;
    float b;
};

__device__ __forceinline__ float logistic(float x) { return 1.0f / (1.0f + expf(-x)); }

extern "C" __global__ void __launch_bounds__(256) unary_grad_f32(const UnaryGradParams p) {
    const unsigned n = unsigned(p.dims[0] * p.dims[1] * p.dims[2] * p.dims[3]);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const Coords<4> k = unflatten<4>(i, p.dims);
        const float g = p.g[offset_of(k, p.g_stride)], v = p.v[offset_of(k, p.v_stride)];
        float d;
        switch (p.op) {
            case 0: {
                // y = x·σ(2u), u = κ(x + c·x³): y′ = σ(2u) + 2x·σ(2u)(1 − σ(2u))·κ(1 + 3c·x²).
                const float kappa = 0.7978845608028654f, c = 0.044715f;
                const float s = logistic(2.0f * kappa * (v + c * v * v * v));
                d = s + 2.0f * v * s * (1.0f - s) * kappa * (1.0f + 3.0f * c * v * v);
                break;
            }
            case 1: {
                const float s = logistic(v);
                d = s * (1.0f + v * (1.0f - s));
                break;
            }
            // The gradient passes or is zero, whatever it holds (NaN included), as on the CPU.
            case 2: p.out[i] = (v >= p.a && v <= p.b) ? g : 0.0f; continue;
            case 3: d = 1.0f - v * v; break;
            case 4: d = v * (1.0f - v); break;
            case 5: d = 0.5f / v; break;
            case 7: p.out[i] = v > 0.0f ? g : v < 0.0f ? -g : 0.0f; continue;
            default: d = 2.0f * v; break;
        }
        p.out[i] = g * d;
    }
}
INFINITY_SHIM_ENTRY(unary_grad_f32, UnaryGradParams)

/// dst[k] = src[k] over a 4-D index space, both read and written through element strides;
/// a bf16 destination gets the f32 value rounded to nearest even.
template <class S, class D>
struct CopyParams {
    const S* src;
    D* dst;
    int dims[4];
    int src_stride[4];
    int dst_stride[4];
};

template <class S, class D>
__device__ __forceinline__ void copy(const CopyParams<S, D>& p) {
    const unsigned n = unsigned(p.dims[0] * p.dims[1] * p.dims[2] * p.dims[3]);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const Coords<4> k = unflatten<4>(i, p.dims);
        p.dst[offset_of(k, p.dst_stride)] = from_float<D>(to_float(p.src[offset_of(k, p.src_stride)]));
    }
}

INFINITY_KERNEL(copy_f32_f32, copy, CopyParams<float, float>)
INFINITY_KERNEL(copy_f32_bf16, copy, CopyParams<float, bf16>)
INFINITY_KERNEL(copy_bf16_f32, copy, CopyParams<bf16, float>)
INFINITY_KERNEL(copy_bf16_bf16, copy, CopyParams<bf16, bf16>)
INFINITY_KERNEL(copy_u8_u8, copy, CopyParams<unsigned char, unsigned char>)
