//! The bias of a linear layer (src/gemm.rs): each output row starts as the bias, and the GEMM
//! (cuBLAS with beta = 1) then adds x·wᵀ to it, so the bias needs no second pass over the
//! output.
#include "common.cuh"

/// out (rows, cols) contiguous gets bias (cols,) f32, read with element stride bias_stride, in
/// every row; a bf16 output gets it rounded to nearest even.
template <class T>
struct BiasRowsParams {
    const float* bias;
    T* out;
    int bias_stride;
    int rows, cols;
};

template <class T>
__device__ __forceinline__ void bias_rows(const BiasRowsParams<T>& p) {
    const unsigned n = unsigned(p.rows) * unsigned(p.cols);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        p.out[i] = from_float<T>(p.bias[int(i % unsigned(p.cols)) * p.bias_stride]);
    }
}

extern "C" __global__ void __launch_bounds__(256) bias_rows_f32(const BiasRowsParams<float> p) { bias_rows(p); }
INFINITY_SHIM_ENTRY(bias_rows_f32, BiasRowsParams<float>)
extern "C" __global__ void __launch_bounds__(256) bias_rows_bf16(const BiasRowsParams<bf16> p) { bias_rows(p); }
INFINITY_SHIM_ENTRY(bias_rows_bf16, BiasRowsParams<bf16>)
