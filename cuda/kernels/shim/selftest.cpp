//! Kernels that test the CPU shim itself (built into the shim library only, never for the GPU;
//! cuda/src/exec.rs runs them): warp shuffles within full and partial warps, threads that
//! return before a barrier, and a barrier mismatch that must be reported as a deadlock.

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
