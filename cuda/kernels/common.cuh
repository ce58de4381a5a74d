//! Helpers shared by every kernel file: element conversions, exact (never fused) float
//! arithmetic, warp and block reductions, and the Philox 4x32-10 stream of
//! runtime/src/rng.rs. Compiled by NVRTC for the GPU and, under cuda_shim.h, by g++ for the
//! CPU shim; nothing here may depend on which.
#pragma once

#ifndef INFINITY_CUDA_SHIM
#include <cuda_bf16.h>
// Only the CPU shim build exports C launchers for the Rust side.
#define INFINITY_SHIM_ENTRY(kernel, Params)
#endif

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }

/// f32 → element type, rounding to nearest even for bf16 (as the runtime's `Element::from_f32`).
template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float v) {
    return __float2bfloat16_rn(v);
}

/// Grid-stride loops: this thread's first flat index and the step. Launchers keep element
/// counts and views below 2^31 (so 32-bit offsets suffice) and grids below 2^31 threads, so
/// the unsigned index cannot wrap.
__device__ __forceinline__ unsigned grid_first() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ unsigned grid_stride() { return gridDim.x * blockDim.x; }

/// (1 − t)·a + t·b rounded after every operation, as the CPU code computes it: the GPU
/// compiler would otherwise fuse a product into an FMA and change the last bit.
__device__ __forceinline__ float lerp_exact(float a, float b, float t) {
    return __fadd_rn(__fmul_rn(__fsub_rn(1.0f, t), a), __fmul_rn(t, b));
}

/// Sum over the warp; every lane gets the total. All 32 lanes must call it.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

/// Sum over a one-dimensional block whose size is a multiple of 32; every thread gets the
/// total, reduced in the same order for all. Every thread of the block must call it.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    float total = 0.0f;
    for (unsigned w = 0; w < (blockDim.x >> 5); ++w) total += partial[w];
    // The next call overwrites `partial`: every thread must have read it first.
    __syncthreads();
    return total;
}

/// The 32-bit word at absolute position `n` of the Philox 4x32-10 stream of `seed`: word
/// n % 4 of the block with counter (n / 4 low, n / 4 high, 0, 0) and key (seed low, seed high).
/// Bit for bit `infinity_runtime::rng::philox_u32`.
__device__ __forceinline__ unsigned philox_u32(unsigned long long seed, unsigned long long n) {
    const unsigned long long block = n >> 2;
    unsigned c0 = unsigned(block), c1 = unsigned(block >> 32), c2 = 0, c3 = 0;
    unsigned k0 = unsigned(seed), k1 = unsigned(seed >> 32);
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const unsigned long long p0 = 0xD2511F53ull * c0;
        const unsigned long long p1 = 0xCD9E8D57ull * c2;
        c0 = unsigned(p1 >> 32) ^ c1 ^ k0;
        c1 = unsigned(p1);
        c2 = unsigned(p0 >> 32) ^ c3 ^ k1;
        c3 = unsigned(p0);
    }
    // A select chain, not an array: a runtime index would put the block in local memory.
    const unsigned word = unsigned(n & 3);
    return word == 0 ? c0 : word == 1 ? c1 : word == 2 ? c2 : c3;
}

/// A word mapped to [0, 1) with 24 bits (`infinity_runtime::rng::u32_to_unit_f32`).
__device__ __forceinline__ float unit_float(unsigned x) { return float(x >> 8) * (1.0f / 16777216.0f); }
