//! The embedding lookup of T5's token ids (ops/src/index.rs's `embedding`): rows of a (V, D)
//! table gathered for ids of any shape. A pure copy, so exact in every dtype. The ids live on
//! the device, so the kernel checks them: an id outside 0..V copies nothing and raises a flag
//! that the launcher turns into an error.
//!
//! And its adjoint, `index_add` (the gradient of the embedding and of index_select): slices of
//! a gradient summed into the rows they were read from. Without atomics: the launcher groups
//! the source slices by target row on the host (a CSR table in source order), and each thread
//! sums one output element's sources in that order, so the result is deterministic and equal,
//! bit for bit, to the CPU loop that adds them one after another.
#include "common.cuh"

/// out (ids…, D) contiguous = weight[ids…, :], the ids a 4-D view (leading sizes 1 for a lower
/// rank) with element strides, weight (V, D) with its strides. `bad` is set to 1 when any id
/// is outside 0..vocab (every writer writes the same value, so the race is benign).
template <class T, class Id>
struct EmbeddingParams {
    const T* weight;
    const Id* ids;
    T* out;
    int* bad;
    int ids_dims[4];
    int ids_stride[4];
    int weight_stride[2];
    int vocab, width;
};

/// One thread per output element: consecutive threads copy consecutive elements of a row.
template <class T, class Id>
__device__ __forceinline__ void embedding(const EmbeddingParams<T, Id>& p) {
    const unsigned n = unsigned(p.ids_dims[0] * p.ids_dims[1] * p.ids_dims[2] * p.ids_dims[3] * p.width);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const unsigned token = i / unsigned(p.width);
        const long long id = p.ids[offset_of(unflatten<4>(token, p.ids_dims), p.ids_stride)];
        if (id < 0 || id >= p.vocab) {
            *p.bad = 1;
            continue;
        }
        p.out[i] = p.weight[int(id) * p.weight_stride[0] + int(i % unsigned(p.width)) * p.weight_stride[1]];
    }
}

// One entry point per (table dtype, id dtype); the aliases keep the commas of the template
// arguments out of INFINITY_SHIM_ENTRY's argument list.
using EmbeddingF32I64 = EmbeddingParams<float, long long>;
using EmbeddingF32I32 = EmbeddingParams<float, int>;
using EmbeddingBf16I64 = EmbeddingParams<bf16, long long>;
using EmbeddingBf16I32 = EmbeddingParams<bf16, int>;

extern "C" __global__ void __launch_bounds__(256) embedding_f32_i64(const EmbeddingF32I64 p) { embedding(p); }
INFINITY_SHIM_ENTRY(embedding_f32_i64, EmbeddingF32I64)
extern "C" __global__ void __launch_bounds__(256) embedding_f32_i32(const EmbeddingF32I32 p) { embedding(p); }
INFINITY_SHIM_ENTRY(embedding_f32_i32, EmbeddingF32I32)
extern "C" __global__ void __launch_bounds__(256) embedding_bf16_i64(const EmbeddingBf16I64 p) { embedding(p); }
INFINITY_SHIM_ENTRY(embedding_bf16_i64, EmbeddingBf16I64)
extern "C" __global__ void __launch_bounds__(256) embedding_bf16_i32(const EmbeddingBf16I32 p) { embedding(p); }
INFINITY_SHIM_ENTRY(embedding_bf16_i32, EmbeddingBf16I32)

/// out (outer, size, inner) contiguous: out[o, t, c] = Σ src[o, order[k], c] over k in
/// starts[t]..starts[t+1], in increasing k (the source order), from 0. src is an
/// (outer, picked, inner) view with element strides.
struct IndexAddParams {
    const float* src;
    const int* starts;
    const int* order;
    float* out;
    int src_dims[3];
    int src_stride[3];
    int size;
};

__device__ __forceinline__ void index_add(const IndexAddParams& p) {
    const int inner = p.src_dims[2];
    const unsigned n = unsigned(p.src_dims[0] * p.size * inner);
    for (unsigned i = grid_first(); i < n; i += grid_stride()) {
        const int c = int(i % unsigned(inner)), t = int(i / unsigned(inner)) % p.size;
        const int o = int(i / unsigned(inner * p.size));
        const float* base = p.src + o * p.src_stride[0] + c * p.src_stride[2];
        float sum = 0.0f;
        for (int k = p.starts[t]; k < p.starts[t + 1]; ++k) sum += base[p.order[k] * p.src_stride[1]];
        p.out[i] = sum;
    }
}

INFINITY_KERNEL(index_add_f32, index_add, IndexAddParams)
