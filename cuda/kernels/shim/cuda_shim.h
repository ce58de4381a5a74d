//! CPU emulation of the CUDA execution model, force-included (g++ -include) ahead of every
//! kernel file when the kernels are built for the CPU shim, so that the very source NVRTC
//! compiles for the GPU also runs, and is tested, on a machine without one.
//!
//! Model: a launch runs its blocks one after another on the calling OS thread; inside a block
//! every CUDA thread is a fiber with its own stack (runtime.cpp switches them). `__syncthreads` and the warp
//! collectives are cooperative switch points: a fiber parks there until every live thread of
//! its block (or warp) has arrived, and a thread that has returned no longer counts, as on the
//! GPU. Because a block runs on one OS thread, `__shared__` is `static thread_local`: shared by
//! the block's fibers, private to concurrent launches from other test threads.
//! Between two barriers a fiber runs alone; passes alternate between descending and ascending
//! thread order, so that a missing barrier shows as a wrong result whichever thread the
//! unsynchronised read depends on.
//! Not emulated: races between blocks (blocks are serial), and warp collectives reached from
//! divergent code (undefined on the GPU too; the shim pairs whatever warp barriers meet). A
//! block whose threads wait at barriers that can never all open is reported as a deadlock.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#define INFINITY_CUDA_SHIM 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static thread_local
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
    unsigned x, y, z;
};

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};

namespace shim {

/// What a kernel sees of the thread it runs as.
struct ThreadState {
    uint3 idx;
    unsigned lane;
    unsigned warp;
    /// Warp barriers this thread has passed: its parity picks the shuffle exchange buffer.
    unsigned warp_syncs;
};

extern thread_local ThreadState* current_thread;
extern thread_local uint3 block_idx;
extern thread_local uint3 block_dim;
extern thread_local uint3 grid_dim;

/// Parks the calling thread until every live thread of its block has arrived.
void sync_block();
/// Parks the calling thread until every live lane of its warp has arrived.
void sync_warp();
/// The calling warp's 32 exchange slots for shuffle number `parity` (0 or 1).
uint64_t* exchange_slots(unsigned parity);

/// Grid and block sizes of a launch, as the Rust side passes them.
struct Grid {
    unsigned blocks[3];
    unsigned threads[3];
};

/// Runs `body(arg)` as every thread of every block of `grid`. Returns 0, or a nonzero code
/// that the Rust side turns into an error (see cuda/src/exec.rs).
int run_grid(const Grid& grid, void (*body)(const void*), const void* arg);

/// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32` for the calling warp (fragment layout
/// in common.cuh): the lanes deposit their A and B fragments in the warp's slots, meet, and
/// each computes its own four outputs from the rebuilt matrices. Every live lane must call it.
void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2]);

/// Lane `src` of the calling warp's values of `v` (every live lane must call it).
template <class T>
T exchange(T v, unsigned src) {
    static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value, "shuffle of a large type");
    ThreadState& t = *current_thread;
    // Lanes that passed this shuffle's barrier may already write the next shuffle's values;
    // alternating buffers keeps them from overwriting values not yet read.
    uint64_t* slots = exchange_slots(t.warp_syncs & 1);
    memcpy(&slots[t.lane], &v, sizeof(T));
    sync_warp();
    T out;
    memcpy(&out, &slots[src], sizeof(T));
    return out;
}

}  // namespace shim

#define threadIdx (::shim::current_thread->idx)
#define blockIdx (::shim::block_idx)
#define blockDim (::shim::block_dim)
#define gridDim (::shim::grid_dim)

inline void __syncthreads() { shim::sync_block(); }
/// The mask is not emulated: every live lane of the warp takes part.
inline void __syncwarp(unsigned = 0xffffffffu) { shim::sync_warp(); }

template <class T>
T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
    unsigned lane = shim::current_thread->lane;
    unsigned src = lane ^ unsigned(lane_mask);
    // As on the GPU, a source outside the caller's group of `width` lanes yields its own value.
    if ((src & ~unsigned(width - 1)) != (lane & ~unsigned(width - 1))) src = lane;
    return shim::exchange(v, src);
}

template <class T>
T min(T a, T b) {
    return b < a ? b : a;
}
template <class T>
T max(T a, T b) {
    return a < b ? b : a;
}

// Correctly rounded arithmetic that the GPU compiler may not fuse into FMAs. On the CPU the
// shim is compiled with -ffp-contract=off, so the plain operators are already exact.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/// Fibers switch only at barriers, so a read-modify-write is atomic.
inline float atomicAdd(float* address, float v) {
    const float old = *address;
    *address = old + v;
    return old;
}

/// bfloat16 with the GPU's conversions: round to nearest even, NaN to the canonical 0x7FFF.
struct __nv_bfloat16 {
    uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = uint32_t(h.bits) << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fff};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {uint16_t(u >> 16)};
}

/// Exports a C launcher `infinity_shim_<kernel>` for the Rust side, and the size of the
/// kernel's parameter struct so that a test can check the Rust mirror against it.
#define INFINITY_SHIM_ENTRY(kernel, Params)                                                          \
    extern "C" int infinity_shim_##kernel(const shim::Grid* grid, const Params* params) {            \
        return shim::run_grid(*grid, [](const void* p) { kernel(*static_cast<const Params*>(p)); }, \
                              params);                                                               \
    }                                                                                                \
    extern "C" size_t infinity_shim_##kernel##_params_size() { return sizeof(Params); }
