//! Random words on the device: the Philox 4x32-10 stream of runtime/src/rng.rs, position for
//! position, so that device-side noise equals the CPU's for the same seed and offset.
#include "common.cuh"

/// out[i] = word `offset + i` of the stream of `seed`, for i < count.
struct PhiloxFillParams {
    unsigned* out;
    unsigned long long seed, offset;
    int count;
};

extern "C" __global__ void __launch_bounds__(256) philox_fill(const PhiloxFillParams p) {
    for (unsigned i = grid_first(); i < unsigned(p.count); i += grid_stride()) p.out[i] = philox_u32(p.seed, p.offset + i);
}
INFINITY_SHIM_ENTRY(philox_fill, PhiloxFillParams)
