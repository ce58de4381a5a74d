//! Helpers shared by every kernel file: element conversions, exact (never fused) float
//! arithmetic, warp and block reductions, strided indexing of N-D views, SiLU, the bf16
//! tensor-core mma with its fragment helpers, and the Philox 4x32-10 stream of
//! runtime/src/rng.rs. Compiled by NVRTC for the GPU and, under cuda_shim.h, by g++ for the
//! CPU shim; only the mma (inline PTX or the shim's emulation) depends on which.
#pragma once

#ifndef INFINITY_CUDA_SHIM
#include <cuda_bf16.h>
// Only the CPU shim build exports C launchers for the Rust side.
#define INFINITY_SHIM_ENTRY(kernel, Params)
#endif

typedef __nv_bfloat16 bf16;

/// The floor of a vector norm that divides it (F.normalize's eps): the cosine attention's q
/// and k.
constexpr float kNormFloor = 1e-12f;

/// Entry point NAME of 256-thread blocks running BODY(p) on its parameters, whose type (a
/// template instance) comes last so that its commas pass through; the typedef names it for
/// INFINITY_SHIM_ENTRY.
#define INFINITY_KERNEL(NAME, BODY, ...)                                                        \
    typedef __VA_ARGS__ NAME##_params;                                                          \
    extern "C" __global__ void __launch_bounds__(256) NAME(const NAME##_params p) { BODY(p); } \
    INFINITY_SHIM_ENTRY(NAME, NAME##_params)

/// D = A·B + D on the tensor cores for one warp: A 16×16 and B 16×8 bf16, D 16×8 f32. Each
/// lane holds fragments (PTX ISA, mma.m16n8k16 with .bf16), with g = lane / 4, t = lane % 4
/// and the lower-indexed element in the low half of each 32-bit register:
///   a[0] = A(g, 2t..2t+1)  a[1] = A(g+8, 2t..2t+1)  a[2] = A(g, 2t+8..2t+9)  a[3] = A(g+8, 2t+8..2t+9)
///   b[0] = B(2t..2t+1, g)  b[1] = B(2t+8..2t+9, g)
///   d[0], d[1] = D(g, 2t), D(g, 2t+1)       d[2], d[3] = D(g+8, 2t), D(g+8, 2t+1)
/// All 32 lanes must call it. The CPU shim rebuilds A and B from the lanes' fragments.
#ifdef INFINITY_CUDA_SHIM
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2]) {
    shim::mma_m16n8k16_bf16(d, a, b);
}
#else
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2]) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

/// `ldmatrix.sync.aligned.m8n8.x4(.trans).shared.b16`: four 8×8 bf16 matrices from shared
/// memory, lane l naming row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned). r[m] is the
/// calling lane's fragment word of matrix m: (row g, columns 2t..2t+1), or with `trans`
/// (rows 2t..2t+1, column g), g = lane / 4, t = lane % 4. One instruction for what would be
/// four 32-bit (or eight 16-bit) shared loads per lane. All 32 lanes must call it.
#ifdef INFINITY_CUDA_SHIM
template <bool trans>
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const bf16* row) {
    const unsigned lane = shim::current_thread->lane, g = lane / 4, t = lane % 4;
    for (int m = 0; m < 4; ++m) {
        if (trans) {
            const bf16* lo = shim::exchange(row, 8 * m + 2 * t);
            const bf16* hi = shim::exchange(row, 8 * m + 2 * t + 1);
            r[m] = unsigned(__bfloat16_as_ushort(lo[g])) | unsigned(__bfloat16_as_ushort(hi[g])) << 16;
        } else {
            r[m] = *reinterpret_cast<const unsigned*>(shim::exchange(row, 8 * m + g) + 2 * t);
        }
    }
}
#else
template <bool trans>
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const bf16* row) {
    const unsigned address = unsigned(__cvta_generic_to_shared(row));
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(address));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(address));
}
#endif

/// `cp.async.cg.shared.global`: 16 bytes from global `src` to shared `dst` (both 16-byte
/// aligned) without passing through registers, or 16 zero bytes when `!valid` (src is then not
/// read). Copies are grouped by cp_async_commit; cp_async_wait<N> waits until at most N of the
/// calling thread's groups are still in flight (a __syncthreads must follow before other threads
/// read the data). The shim copies at once, so its waits have nothing to do.
#ifdef INFINITY_CUDA_SHIM
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
    if (valid)
        memcpy(dst, src, 16);
    else
        memset(dst, 0, 16);
}
__device__ __forceinline__ void cp_async_commit() {}
template <int N>
__device__ __forceinline__ void cp_async_wait() {}
#else
__device__ __forceinline__ void cp_async_16(void* dst, const void* src, bool valid) {
    const unsigned address = unsigned(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(address), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
#endif

/// Two adjacent bf16 (p[0] low, p[1] high) as one 32-bit fragment register; p 4-byte aligned.
__device__ __forceinline__ unsigned load_bf16x2(const bf16* p) { return *reinterpret_cast<const unsigned*>(p); }

/// p[0] (low half) and p[stride] (high half) as one fragment register: a pair along the
/// slow dimension of a row-major tile.
__device__ __forceinline__ unsigned gather_bf16x2(const bf16* p, int stride) {
    return unsigned(__bfloat16_as_ushort(p[0])) | unsigned(__bfloat16_as_ushort(p[stride])) << 16;
}

/// lo and hi rounded to bf16 (nearest even) and packed as one fragment register.
__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    return unsigned(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
           unsigned(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(unsigned char v) { return float(v); }

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
/// Exact for the values a u8 came from (the copy of u8 into u8, through its float).
template <>
__device__ __forceinline__ unsigned char from_float<unsigned char>(float v) {
    return (unsigned char)v;
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

/// The reduction operators of the warp and block reductions below.
struct Sum {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
/// The larger of a and b, and NaN when either is NaN (fmaxf would drop a NaN), so that a row
/// holding NaN reduces to NaN as in the CPU reference's max.
struct MaxNan {
    __device__ __forceinline__ float operator()(float a, float b) const { return (a > b || a != a) ? a : b; }
};

/// `op` over the warp by a butterfly; every lane gets the result. All 32 lanes must call it.
template <class Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

/// Sum over the warp; every lane gets the total. All 32 lanes must call it.
__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, Sum()); }

/// Reductions over the four lanes that share g = lane / 4 in the mma fragment layout (one
/// row of a C fragment); every lane of the warp must call them.
__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

/// `op` over a one-dimensional block whose size is a multiple of 32; every thread gets the
/// result, reduced in the same order for all. Every thread of the block must call it.
template <class Op>
__device__ __forceinline__ float block_reduce(float v, Op op) {
    __shared__ float partial[32];
    v = warp_reduce(v, op);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    float total = partial[0];
    for (unsigned w = 1; w < (blockDim.x >> 5); ++w) total = op(total, partial[w]);
    // The next call overwrites `partial`: every thread must have read it first.
    __syncthreads();
    return total;
}

__device__ __forceinline__ float block_sum(float v) { return block_reduce(v, Sum()); }

/// Row-major coordinates of a flat index in a view of N dimensions.
template <int N>
struct Coords {
    int at[N];
};

/// The coordinates of flat index `i` in a view of sizes `dims` (row-major, last fastest).
template <int N>
__device__ __forceinline__ Coords<N> unflatten(unsigned i, const int* dims) {
    Coords<N> k;
#pragma unroll
    for (int d = N - 1; d >= 0; --d) {
        k.at[d] = int(i % unsigned(dims[d]));
        i /= unsigned(dims[d]);
    }
    return k;
}

/// Element offset of coordinates `k` in a view with element strides `stride`.
template <int N>
__device__ __forceinline__ int offset_of(const Coords<N>& k, const int* stride) {
    int offset = 0;
#pragma unroll
    for (int d = 0; d < N; ++d) offset += k.at[d] * stride[d];
    return offset;
}

/// x·sigmoid(x) as x / (1 + e^−x): one rounding fewer than the product form.
__device__ __forceinline__ float silu(float x) { return __fdiv_rn(x, __fadd_rn(1.0f, expf(-x))); }

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
