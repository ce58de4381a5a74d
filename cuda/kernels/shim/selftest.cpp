//! Kernels that test the CPU shim itself (built into the shim library only, never for the GPU;
//! cuda/src/exec.rs runs them): warp shuffles within full and partial warps, threads that
//! return before a barrier, a barrier mismatch that must be reported as a deadlock, and the
//! fragment layout of the emulated tensor-core mma.

struct SelfTestParams {
    int* out;
};

/// out[t] = the sum of the thread indices of t's warp, by an xor-shuffle butterfly.
extern "C" void shim_selftest_shuffle(const SelfTestParams p) {
    int v = int(threadIdx.x);
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    p.out[threadIdx.x] = v;
}
INFINITY_SHIM_ENTRY(shim_selftest_shuffle, SelfTestParams)

/// Odd threads return at once; the even ones meet at barriers without them and read what
/// their neighbour wrote: out[t] = t + 2 (mod the block) for even t.
extern "C" void shim_selftest_early_exit(const SelfTestParams p) {
    __shared__ int slots[1024];
    const unsigned t = threadIdx.x;
    if (t % 2) return;
    slots[t] = int(t);
    __syncthreads();
    p.out[t] = slots[(t + 2) % (blockDim.x & ~1u)];
    __syncthreads();
}
INFINITY_SHIM_ENTRY(shim_selftest_early_exit, SelfTestParams)

/// Lane 0 waits for the block while the others wait for the warp: a deadlock on a GPU.
extern "C" void shim_selftest_deadlock(const SelfTestParams p) {
    if (threadIdx.x == 0)
        __syncthreads();
    else
        __syncwarp();
    p.out[threadIdx.x] = 1;
}
INFINITY_SHIM_ENTRY(shim_selftest_deadlock, SelfTestParams)

struct MmaTestParams {
    const unsigned short* a;
    const unsigned short* b;
    const float* c;
    float* d;
};

/// D = A·B + C for row-major A (16×16) and B (16×8) bf16 bits and C, D (16×8) f32, one warp,
/// with every fragment loaded and stored by the PTX ISA layout that common.cuh documents.
extern "C" void shim_selftest_mma(const MmaTestParams p) {
    const unsigned g = threadIdx.x / 4, t = threadIdx.x % 4;
    auto pair = [](unsigned short lo, unsigned short hi) { return unsigned(lo) | unsigned(hi) << 16; };
    unsigned a[4], b[2];
    for (unsigned r = 0; r < 4; ++r) {
        const unsigned row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
        a[r] = pair(p.a[row * 16 + col], p.a[row * 16 + col + 1]);
    }
    for (unsigned r = 0; r < 2; ++r) {
        const unsigned k = 2 * t + 8 * r;
        b[r] = pair(p.b[k * 8 + g], p.b[(k + 1) * 8 + g]);
    }
    float d[4];
    for (unsigned r = 0; r < 4; ++r) d[r] = p.c[(g + 8 * (r / 2)) * 8 + 2 * t + r % 2];
    shim::mma_m16n8k16_bf16(d, a, b);
    for (unsigned r = 0; r < 4; ++r) p.d[(g + 8 * (r / 2)) * 8 + 2 * t + r % 2] = d[r];
}
INFINITY_SHIM_ENTRY(shim_selftest_mma, MmaTestParams)
