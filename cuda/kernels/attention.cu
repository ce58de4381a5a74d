//! Block-causal flash attention on the tensor cores: softmax(scores + mask)·v per (batch, head)
//! with bf16 q, k, v, mma.m16n8k16 products accumulated in f32, and an online softmax, so that
//! the (Lq, Lk) score matrix never exists in memory.
//!
//! The mask is Infinity's next-scale mask: the sequence is a concatenation of scale blocks
//! [offsets[i], offsets[i+1]) and the query at position p sees exactly the keys below the end
//! of p's own block. That makes it a per-row key limit, so masking costs one comparison per
//! score and a query tile stops at the limit of its last row. Queries may be a window of the
//! sequence (q_start > 0: the current scale against a KV cache holding every earlier one).
//! With no blocks (`scales` 0) every position is its own block: causal attention, as the
//! Llama-style generators (Open-MAGVIT2) train with.
//!
//! Scores are scale·q·kᵀ, or with `cosine` Infinity's head_scale[h]·q̂·k̂ᵀ with q̂, k̂ the rows
//! divided by max(‖·‖₂, 1e-12): the norms are applied to the f32 scores, so q and k enter the
//! products unchanged. RoPE commutes with the normalisation (a rotation keeps norms), so it
//! may be applied to q and k before this kernel.
//!
//! Forward: 4 warps own 16 query rows each (a 64-row tile per block) and walk 64-key tiles,
//! their fragments read by ldmatrix; the K and V tiles arrive by cp.async, each while the
//! other's half of the step computes. P is rounded to bf16 for the P·V product, its row sums
//! stay f32. Outputs O and the row logsumexp.
//!
//! Backward (FlashAttention-2 order): a block owns 64 keys (16 per warp), accumulates dK and
//! dV in registers over the query tiles that see them, recomputing P from the logsumexp, and adds its share of dQ to an f32 buffer with atomics. The gradients of
//! the cosine normalisation and of head_scale are fused: for keys at the end of the block,
//! for queries in `attention_backward_cosine` once every key tile has added to dQ.
#include "common.cuh"

constexpr int kMaxScales = 32;
constexpr int kWarps = 4;
/// Query rows per forward block (16 per warp), and keys per forward step / backward block.
constexpr int kRows = 16 * kWarps;
constexpr int kKeys = 64;
/// Shared tiles pad each row by 16 bytes: the fragment reads of a warp then hit 32 banks.
constexpr int kPad = 8;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

/// What every attention kernel needs to know besides its tensors.
struct AttentionShape {
    /// (H,) f32 per-head multipliers of cosine attention; unused otherwise.
    const float* head_scale;
    int batch, heads, q_len, kv_len;
    /// The heads' width: at most the kernel's D, a multiple of 8. Columns past it are zeros in
    /// the shared tiles (they add nothing to the products) and are never written.
    int head_dim;
    /// Sequence position of query row 0; key j is at position j.
    int q_start;
    /// Score multiplier (times head_scale[h] with cosine).
    float scale;
    /// Nonzero: q and k rows are L2-normalised before the product.
    int cosine;
    /// Block i holds positions [offsets[i], offsets[i + 1]); offsets[scales] = kv_len. 0: every
    /// position is its own block (causal).
    int scales;
    int offsets[kMaxScales + 1];
};

/// The end of the scale block holding position `pos` (< kv_len): position `pos` attends to
/// the keys below it. Unrolled over the fixed table, so that the offsets stay in the
/// parameter bank instead of being copied to local memory for a dynamic index.
__device__ __forceinline__ int visible_end(const AttentionShape& s, int pos) {
    if (s.scales == 0) return min(pos + 1, s.kv_len);
    int end = s.kv_len;
#pragma unroll
    for (int i = kMaxScales; i >= 1; --i)
        if (i <= s.scales && s.offsets[i] > pos) end = s.offsets[i];
    return end;
}

/// The start of the scale block holding position `pos`.
__device__ __forceinline__ int block_start(const AttentionShape& s, int pos) {
    if (s.scales == 0) return pos;
    int start = 0;
#pragma unroll
    for (int i = 1; i < kMaxScales; ++i)
        if (i < s.scales && s.offsets[i] <= pos) start = s.offsets[i];
    return start;
}

/// The natural-log-domain score multiplier of head h.
__device__ __forceinline__ float head_factor(const AttentionShape& s, int h) {
    return s.cosine ? s.scale * s.head_scale[h] : s.scale;
}

/// inv[r] = 1 / max(‖row r‖₂, 1e-12) for the ROWS rows of a shared tile (D + kPad apart):
/// D / 8 lanes read a row in 16-byte pieces and add their squares with shuffles, the block's
/// warps taking rows in turn. Every thread of the block takes part; sync before reading inv.
template <int ROWS, int D>
__device__ __forceinline__ void inverse_norms(float* inv, const bf16* tile) {
    constexpr int kLanes = D / 8, kRowsPerPass = 32 / kLanes;
    static_assert(32 % kLanes == 0, "whole rows per warp pass");
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int r0 = warp * kRowsPerPass; r0 < ROWS; r0 += kWarps * kRowsPerPass) {
        const int r = r0 + lane / kLanes;
        const uint4 piece = *reinterpret_cast<const uint4*>(tile + r * (D + kPad) + lane % kLanes * 8);
        const bf16* x = reinterpret_cast<const bf16*>(&piece);
        float squares = 0.0f;
#pragma unroll
        for (int c = 0; c < 8; ++c) squares += to_float(x[c]) * to_float(x[c]);
#pragma unroll
        for (int offset = kLanes / 2; offset > 0; offset >>= 1) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
        if (lane % kLanes == 0) inv[r] = 1.0f / fmaxf(sqrtf(squares), kNormFloor);
    }
}

/// How load_tile and load_tile_async split a ROWS × D tile into 16-byte pieces: the calling
/// thread's piece n is row `row`, columns [col, col + 8).
template <int ROWS, int D>
struct TilePiece {
    static constexpr int kChunks = D / 8, kThreads = 32 * kWarps, kPerThread = ROWS * kChunks / kThreads;
    static_assert(ROWS * kChunks % kThreads == 0, "whole pieces per thread");
    int row, col;
    __device__ __forceinline__ explicit TilePiece(int n) {
        const int i = int(threadIdx.x) + n * kThreads;
        row = i / kChunks;
        col = i % kChunks * 8;
    }
};

/// Rows [0, rows) × columns [0, cols) of a matrix with contiguous bf16 rows, `stride`
/// elements apart (rows 16-byte aligned, cols a multiple of 8), into a shared tile of ROWS
/// padded rows of D; rows past `rows` and columns past `cols` become zeros, so that padding
/// contributes nothing to the products. Every thread of the block (kWarps
/// warps) takes part. Each thread issues all its global loads before its first shared store:
/// through generic pointers the compiler cannot tell the two apart, so a loop that stored
/// each piece as it arrived would wait out one global latency per piece.
template <int ROWS, int D>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* src, int stride, int rows, int cols) {
    using Piece = TilePiece<ROWS, D>;
    uint4 pieces[Piece::kPerThread];
#pragma unroll
    for (int n = 0; n < Piece::kPerThread; ++n) {
        const Piece at(n);
        const bool real = at.row < rows && at.col < cols;
        pieces[n] = real ? *reinterpret_cast<const uint4*>(src + at.row * stride + at.col) : uint4{0, 0, 0, 0};
    }
#pragma unroll
    for (int n = 0; n < Piece::kPerThread; ++n) {
        const Piece at(n);
        *reinterpret_cast<uint4*>(tile + at.row * (D + kPad) + at.col) = pieces[n];
    }
}

/// load_tile's copy as cp.async copies: nothing passes through registers and the caller
/// computes while it lands (commit, then wait and sync before reading).
template <int ROWS, int D>
__device__ __forceinline__ void load_tile_async(bf16* tile, const bf16* src, int stride, int rows, int cols) {
    using Piece = TilePiece<ROWS, D>;
#pragma unroll
    for (int n = 0; n < Piece::kPerThread; ++n) {
        const Piece at(n);
        const bool real = at.row < rows && at.col < cols;
        cp_async_16(tile + at.row * (D + kPad) + at.col, src + (real ? at.row * stride + at.col : 0), real);
    }
}

/// The A fragment of rows [0, 16) × columns [k0, k0 + 16) of a row-major shared tile, for the
/// calling lane (g = lane / 4, t = lane % 4).
__device__ __forceinline__ void load_a(unsigned a[4], const bf16* tile, int stride, int k0, int g, int t) {
    const bf16* p = tile + g * stride + k0 + 2 * t;
    a[0] = load_bf16x2(p);
    a[1] = load_bf16x2(p + 8 * stride);
    a[2] = load_bf16x2(p + 8);
    a[3] = load_bf16x2(p + 8 * stride + 8);
}

/// The B fragment of B(k, n) = tile(n0 + n, k0 + k): the k index runs along the tile's rows.
__device__ __forceinline__ void load_b_rows(unsigned b[2], const bf16* tile, int stride, int n0, int k0, int g, int t) {
    const bf16* p = tile + (n0 + g) * stride + k0 + 2 * t;
    b[0] = load_bf16x2(p);
    b[1] = load_bf16x2(p + 8);
}

/// The B fragment of B(k, n) = tile(k0 + k, n0 + n): the k index runs down the tile's columns.
__device__ __forceinline__ void load_b_cols(unsigned b[2], const bf16* tile, int stride, int k0, int n0, int g, int t) {
    const bf16* p = tile + (k0 + 2 * t) * stride + n0 + g;
    b[0] = gather_bf16x2(p, stride);
    b[1] = gather_bf16x2(p + 8 * stride, stride);
}

/// The A fragment of a 16 × 16 block held as two 16 × 8 accumulators (columns 0..7 in c0,
/// 8..15 in c1), rounded to bf16: a product's result becomes the next product's left operand
/// without going through memory.
__device__ __forceinline__ void accumulators_to_a(unsigned a[4], const float c0[4], const float c1[4]) {
    a[0] = pack_bf16x2(c0[0], c0[1]);
    a[1] = pack_bf16x2(c0[2], c0[3]);
    a[2] = pack_bf16x2(c1[0], c1[1]);
    a[3] = pack_bf16x2(c1[2], c1[3]);
}

/// q (B, H, Lq, D), k and v (B, H, Lk, D) and out (B, H, Lq, D) bf16, each with element
/// strides for (B, H, L) (a token-major out is the (B, Lq, H·D) operand of the projection
/// that follows); lse (B, H, Lq) f32 contiguous, or null when no backward follows. Grid:
/// B·H·⌈Lq / 64⌉ blocks of 128 threads.
///
/// With `kv_starts` (B + 1 rising offsets) the keys are packed instead: sample b's are rows
/// kv_starts[b] .. kv_starts[b + 1] of k and v's sample 0, all visible to each of its queries
/// (cross-attention to texts of different lengths, one launch for the batch).
struct AttentionForwardParams {
    const bf16* q;
    const bf16* k;
    const bf16* v;
    bf16* out;
    /// ln Σ_j exp(score_ij) over the visible keys, per query row.
    float* lse;
    const int* kv_starts;
    int q_stride[3];
    int k_stride[3];
    int v_stride[3];
    int out_stride[3];
    AttentionShape shape;
};

template <int D>
__device__ __forceinline__ void attention_forward(const AttentionForwardParams& p) {
    constexpr int S = D + kPad;
    __shared__ __align__(16) bf16 k_tile[kKeys * S];
    // Holds the block's query tile until its fragments are in registers.
    __shared__ __align__(16) bf16 v_tile[kKeys * S];
    // 1/‖row‖ of the key tile (cosine scores), and of the query tile before the key loop.
    __shared__ float k_inv[kKeys];
    static_assert(kRows == kKeys, "the query tile's norms borrow k_inv");
    const AttentionShape& sh = p.shape;
    const int tiles = (sh.q_len + kRows - 1) / kRows;
    // The last query tiles see the most keys: start them first.
    const int tile = tiles - 1 - int(blockIdx.x) % tiles, bh = int(blockIdx.x) / tiles;
    const int b = bh / sh.heads, h = bh % sh.heads;
    const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
    // The 8×8 matrix of an ldmatrix whose row this lane names, and the row.
    const int mat = threadIdx.x % 32 / 8, mat_row = threadIdx.x % 8;
    const int row0 = tile * kRows, rows = min(kRows, sh.q_len - row0);
    const float neg_inf = __uint_as_float(0xff800000u);

    bf16* const q_tile = v_tile;
    const bf16* q = p.q + b * p.q_stride[0] + h * p.q_stride[1] + row0 * p.q_stride[2];
    const bf16* k = p.k + b * p.k_stride[0] + h * p.k_stride[1];
    const bf16* v = p.v + b * p.v_stride[0] + h * p.v_stride[1];
    int kv_len = sh.kv_len;
    if (p.kv_starts != nullptr) {
        const int first = p.kv_starts[b];
        kv_len = p.kv_starts[b + 1] - first;
        k = p.k + h * p.k_stride[1] + first * p.k_stride[2];
        v = p.v + h * p.v_stride[1] + first * p.v_stride[2];
    }
    // The first key tile lands while the queries are set up.
    load_tile_async<kKeys, D>(k_tile, k, p.k_stride[2], min(kKeys, kv_len), sh.head_dim);
    cp_async_commit();
    load_tile<kRows, D>(q_tile, q, p.q_stride[2], rows, sh.head_dim);
    __syncthreads();
    if (sh.cosine) {
        inverse_norms<kRows, D>(k_inv, q_tile);
        __syncthreads();
    }
    // This warp's 16 query rows, in registers for the whole key loop.
    const bf16* q_warp = q_tile + warp * 16 * S;
    unsigned qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) load_a(qf[kk], q_warp, S, kk * 16, g, t);
    // Per row of the lane (g and g + 8 of the warp): the log2-domain score multiplier and the
    // end of the visible keys (padding rows copy the last real row).
    float factor[2];
    int end[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const float inv = sh.cosine ? k_inv[warp * 16 + g + 8 * i] : 1.0f;
        factor[i] = head_factor(sh, h) * inv * kLog2e;
        end[i] = p.kv_starts ? kv_len : visible_end(sh, sh.q_start + min(row0 + warp * 16 + g + 8 * i, sh.q_len - 1));
    }
    const int tile_end = p.kv_starts ? kv_len : visible_end(sh, sh.q_start + row0 + rows - 1);
    // The query tile and its norms are overwritten next.
    __syncthreads();

    float o[D / 8][4] = {};
    float m[2] = {neg_inf, neg_inf}, l[2] = {0.0f, 0.0f};
    // Each step's V lands while its scores are computed, the next step's K while P·V is.
    for (int key0 = 0; key0 < tile_end; key0 += kKeys) {
        load_tile_async<kKeys, D>(v_tile, v + key0 * p.v_stride[2], p.v_stride[2], min(kKeys, kv_len - key0), sh.head_dim);
        cp_async_commit();
        cp_async_wait<1>(); // this step's K
        __syncthreads();
        if (sh.cosine) {
            inverse_norms<kKeys, D>(k_inv, k_tile);
            __syncthreads();
        }

        // S = Q·Kᵀ. One ldmatrix gives the B fragments of key tiles nt and nt + 1: matrix m
        // holds keys (nt + m / 2)·8.. and columns kk·16 + (m % 2)·8.. of the tile.
        float s[kKeys / 8][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
            for (int nt = 0; nt < kKeys / 8; nt += 2) {
                unsigned kb[4];
                ldmatrix_x4<false>(kb, k_tile + ((nt + mat / 2) * 8 + mat_row) * S + kk * 16 + mat % 2 * 8);
                mma_m16n8k16_bf16(s[nt], qf[kk], kb);
                mma_m16n8k16_bf16(s[nt + 1], qf[kk], kb + 2);
            }

        // Online softmax in the log2 domain: element [nt][2i + c] is row i's key nt·8 + 2t + c.
#pragma unroll
        for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int i = r / 2, key = nt * 8 + 2 * t + r % 2;
                const float x = s[nt][r] * factor[i] * (sh.cosine ? k_inv[key] : 1.0f);
                s[nt][r] = key0 + key < end[i] ? x : neg_inf;
            }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float top = m[i];
#pragma unroll
            for (int nt = 0; nt < kKeys / 8; ++nt) top = fmaxf(top, fmaxf(s[nt][2 * i], s[nt][2 * i + 1]));
            // Finite: key 0 is visible to every row and comes in the first step.
            top = quad_max(top);
            // exp2(−inf) = 0 on the first step, where o and l are still zero.
            const float correction = exp2f(m[i] - top);
            m[i] = top;
            l[i] *= correction;
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt) {
                o[nt][2 * i] *= correction;
                o[nt][2 * i + 1] *= correction;
            }
#pragma unroll
            for (int nt = 0; nt < kKeys / 8; ++nt)
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    const float e = exp2f(s[nt][2 * i + c] - top);
                    s[nt][2 * i + c] = e;
                    // A per-lane partial sum: the four lanes of a row are added at the end.
                    l[i] += e;
                }
        }

        cp_async_wait<0>(); // this step's V
        // Every warp is done with K and its norms: the next step's K may land.
        __syncthreads();
        const int next = key0 + kKeys;
        if (next < tile_end)
            load_tile_async<kKeys, D>(k_tile, k + next * p.k_stride[2], p.k_stride[2], min(kKeys, kv_len - next), sh.head_dim);
        cp_async_commit();

        // O += P·V, P rounded to bf16. A transposing ldmatrix gives the B fragments of
        // column tiles nt and nt + 1: matrix m holds keys kk·16 + (m % 2)·8.. and columns
        // (nt + m / 2)·8.. of the tile.
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk) {
            unsigned pa[4];
            accumulators_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int nt = 0; nt < D / 8; nt += 2) {
                unsigned vb[4];
                ldmatrix_x4<true>(vb, v_tile + (kk * 16 + mat % 2 * 8 + mat_row) * S + (nt + mat / 2) * 8);
                mma_m16n8k16_bf16(o[nt], pa, vb);
                mma_m16n8k16_bf16(o[nt + 1], pa, vb + 2);
            }
        }
        // V is overwritten next.
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const float total = quad_sum(l[i]);
        const int row = row0 + warp * 16 + g + 8 * i;
        if (row >= sh.q_len) continue;
        const float inv = 1.0f / total;
        bf16* out = p.out + b * p.out_stride[0] + h * p.out_stride[1] + row * p.out_stride[2] + 2 * t;
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt)
            if (nt * 8 < sh.head_dim)
                *reinterpret_cast<unsigned*>(out + nt * 8) = pack_bf16x2(o[nt][2 * i] * inv, o[nt][2 * i + 1] * inv);
        if (t == 0 && p.lse != nullptr) p.lse[bh * sh.q_len + row] = (m[i] + log2f(total)) * kLn2;
    }
}

extern "C" __global__ void __launch_bounds__(128) attention_forward_d64(const AttentionForwardParams p) {
    attention_forward<64>(p);
}
INFINITY_SHIM_ENTRY(attention_forward_d64, AttentionForwardParams)
extern "C" __global__ void __launch_bounds__(128) attention_forward_d128(const AttentionForwardParams p) {
    attention_forward<128>(p);
}
INFINITY_SHIM_ENTRY(attention_forward_d128, AttentionForwardParams)

/// The per-row terms of the backward, one warp per query row: delta = rowsum(dO ∘ O), the
/// softmax adjoint's row term, from the forward output and its gradient (B, H, Lq, D) bf16
/// with element strides; with cosine scores also q_inv = 1 / max(‖q row‖₂, 1e-12) from q
/// (B, H, Lq, D) with element strides for (B, H, L). Outputs (B, H, Lq) f32 contiguous.
struct AttentionRowsParams {
    const bf16* out;
    const bf16* dout;
    const bf16* q;
    float* delta;
    float* q_inv;
    int out_stride[4];
    int dout_stride[4];
    int q_stride[3];
    int batch, heads, q_len, head_dim;
    int cosine;
};

extern "C" __global__ void __launch_bounds__(256) attention_backward_rows(const AttentionRowsParams p) {
    const unsigned rows = unsigned(p.batch * p.heads * p.q_len), lane = threadIdx.x % 32;
    for (unsigned row = grid_first() / 32; row < rows; row += grid_stride() / 32) {
        const int i = int(row % p.q_len), h = int(row / p.q_len % p.heads), b = int(row / p.q_len / p.heads);
        const bf16* o = p.out + b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2];
        const bf16* d = p.dout + b * p.dout_stride[0] + h * p.dout_stride[1] + i * p.dout_stride[2];
        const bf16* q = p.q + b * p.q_stride[0] + h * p.q_stride[1] + i * p.q_stride[2];
        float sum = 0.0f, squares = 0.0f;
        for (int c = int(lane); c < p.head_dim; c += 32) {
            sum += to_float(o[c * p.out_stride[3]]) * to_float(d[c * p.dout_stride[3]]);
            if (p.cosine) {
                const float x = to_float(q[c]);
                squares += x * x;
            }
        }
        sum = warp_sum(sum);
        squares = warp_sum(squares);
        if (lane != 0) continue;
        p.delta[row] = sum;
        if (p.cosine) p.q_inv[row] = 1.0f / fmaxf(sqrtf(squares), kNormFloor);
    }
}
INFINITY_SHIM_ENTRY(attention_backward_rows, AttentionRowsParams)

/// The forward's q, k, v and dout (B, H, Lq, D) bf16 with element strides for (B, H, L); lse,
/// delta and (cosine scores only) q_inv (B, H, Lq) f32 contiguous. Outputs f32 contiguous:
/// dk, dv (B, H, Lk, D) written; dq (B, H, Lq, D) zeroed by the launcher and accumulated here
/// (scale·Σ_j dS_ij·k̂_j; attention_backward_cosine finishes it for cosine scores).
/// Grid: B·H·⌈Lk / 64⌉ blocks of 128 threads.
struct AttentionBackwardParams {
    const bf16* q;
    const bf16* k;
    const bf16* v;
    const bf16* dout;
    const float* lse;
    const float* delta;
    const float* q_inv;
    float* dq;
    float* dk;
    float* dv;
    int q_stride[3];
    int k_stride[3];
    int v_stride[3];
    int dout_stride[3];
    AttentionShape shape;
};

/// Query rows per backward step: K, V, Q, dO and dS tiles fit the 48 KiB of static shared memory.
template <int D>
constexpr int kBackwardRows = D == 64 ? 32 : 16;

template <int D>
__device__ __forceinline__ void attention_backward(const AttentionBackwardParams& p) {
    constexpr int S = D + kPad, R = kBackwardRows<D>, SK = kKeys + kPad;
    // dQ = dS·K: each warp takes a 16-query block and kDqTiles of its 8-column tiles.
    constexpr int kWarpsPerQueries = kWarps / (R / 16), kDqTiles = D / 8 / kWarpsPerQueries;
    __shared__ __align__(16) bf16 k_tile[kKeys * S];
    __shared__ __align__(16) bf16 v_tile[kKeys * S];
    __shared__ __align__(16) bf16 q_tile[R * S];
    __shared__ __align__(16) bf16 do_tile[R * S];
    // dS·(1/‖k‖) of the step, row-major (query, key).
    __shared__ __align__(16) bf16 ds_tile[R * SK];
    __shared__ float k_inv[kKeys];
    __shared__ float row_lse[R], row_delta[R], row_inv[R];
    __shared__ int row_end[R];
    const AttentionShape& sh = p.shape;
    const int tiles = (sh.kv_len + kKeys - 1) / kKeys;
    const int tile = int(blockIdx.x) % tiles, bh = int(blockIdx.x) / tiles;
    const int b = bh / sh.heads, h = bh % sh.heads;
    const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
    const int key0 = tile * kKeys, warp_key = warp * 16;
    const float head = head_factor(sh, h);

    const bf16* k = p.k + b * p.k_stride[0] + h * p.k_stride[1] + key0 * p.k_stride[2];
    const bf16* v = p.v + b * p.v_stride[0] + h * p.v_stride[1] + key0 * p.v_stride[2];
    load_tile<kKeys, D>(k_tile, k, p.k_stride[2], min(kKeys, sh.kv_len - key0), sh.head_dim);
    load_tile<kKeys, D>(v_tile, v, p.v_stride[2], min(kKeys, sh.kv_len - key0), sh.head_dim);
    __syncthreads();
    if (sh.cosine)
        inverse_norms<kKeys, D>(k_inv, k_tile);
    else if (threadIdx.x < kKeys)
        k_inv[threadIdx.x] = 1.0f;
    __syncthreads();
    // 1/‖k‖ of the lane's two keys, warp_key + g + 8i (1 without cosine scores).
    const float key_inv[2] = {k_inv[warp_key + g], k_inv[warp_key + g + 8]};

    const bf16* q = p.q + b * p.q_stride[0] + h * p.q_stride[1];
    const bf16* dout = p.dout + b * p.dout_stride[0] + h * p.dout_stride[1];
    float dk[D / 8][4] = {}, dv[D / 8][4] = {};
    // Queries before the scale block of key0 see none of these keys.
    const int first = max(0, block_start(sh, key0) - sh.q_start);
    for (int row0 = first / R * R; row0 < sh.q_len; row0 += R) {
        const int rows = min(R, sh.q_len - row0);
        load_tile<R, D>(q_tile, q + row0 * p.q_stride[2], p.q_stride[2], rows, sh.head_dim);
        load_tile<R, D>(do_tile, dout + row0 * p.dout_stride[2], p.dout_stride[2], rows, sh.head_dim);
        if (threadIdx.x < R) {
            // Padding rows see no key, so their P and dS are zero.
            const int r = threadIdx.x, flat = bh * sh.q_len + row0 + r;
            const bool real = r < rows;
            row_lse[r] = real ? p.lse[flat] * kLog2e : 0.0f;
            row_delta[r] = real ? p.delta[flat] : 0.0f;
            row_end[r] = real ? visible_end(sh, sh.q_start + row0 + r) : 0;
            row_inv[r] = real && sh.cosine ? p.q_inv[flat] : 1.0f;
        }
        __syncthreads();

        // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ for the warp's 16 keys × R queries: element [nt][2i + c]
        // is key warp_key + g + 8i, query nt·8 + 2t + c.
        float st[R / 8][4] = {}, dpt[R / 8][4] = {};
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned ka[4], va[4];
            load_a(ka, k_tile + warp_key * S, S, kk * 16, g, t);
            load_a(va, v_tile + warp_key * S, S, kk * 16, g, t);
#pragma unroll
            for (int nt = 0; nt < R / 8; ++nt) {
                unsigned qb[2], db[2];
                load_b_rows(qb, q_tile, S, nt * 8, kk * 16, g, t);
                load_b_rows(db, do_tile, S, nt * 8, kk * 16, g, t);
                mma_m16n8k16_bf16(st[nt], ka, qb);
                mma_m16n8k16_bf16(dpt[nt], va, db);
            }
        }
        // P from the logsumexp, dS = P ∘ (dP − delta). st becomes P; dpt becomes dS/‖q‖ (the
        // dK operand) and dS/‖k‖ goes to shared memory (the dQ operand).
#pragma unroll
        for (int nt = 0; nt < R / 8; ++nt)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int i = r / 2, query = nt * 8 + 2 * t + r % 2, key = warp_key + g + 8 * i;
                const float x = st[nt][r] * head * kLog2e * key_inv[i] * row_inv[query];
                const float prob = key0 + key < row_end[query] ? exp2f(x - row_lse[query]) : 0.0f;
                const float ds = prob * (dpt[nt][r] - row_delta[query]);
                st[nt][r] = prob;
                dpt[nt][r] = ds * row_inv[query];
                ds_tile[query * SK + key] = __float2bfloat16_rn(ds * key_inv[i]);
            }
        // dV += Pᵀ·dO and dK += (dS/‖q‖)ᵀ·Q over the step's queries.
#pragma unroll
        for (int kk = 0; kk < R / 16; ++kk) {
            unsigned pa[4], da[4];
            accumulators_to_a(pa, st[2 * kk], st[2 * kk + 1]);
            accumulators_to_a(da, dpt[2 * kk], dpt[2 * kk + 1]);
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt) {
                unsigned db[2], qb[2];
                load_b_cols(db, do_tile, S, kk * 16, nt * 8, g, t);
                load_b_cols(qb, q_tile, S, kk * 16, nt * 8, g, t);
                mma_m16n8k16_bf16(dv[nt], pa, db);
                mma_m16n8k16_bf16(dk[nt], da, qb);
            }
        }
        // ds_tile is complete.
        __syncthreads();

        // dQ += scale·(dS/‖k‖)·K for this block's keys.
        const int query_block = warp / kWarpsPerQueries, col_tile0 = warp % kWarpsPerQueries * kDqTiles;
        float dq[kDqTiles][4] = {};
#pragma unroll
        for (int kk = 0; kk < kKeys / 16; ++kk) {
            unsigned da[4];
            load_a(da, ds_tile + query_block * 16 * SK, SK, kk * 16, g, t);
#pragma unroll
            for (int n = 0; n < kDqTiles; ++n) {
                unsigned kb[2];
                load_b_cols(kb, k_tile, S, kk * 16, (col_tile0 + n) * 8, g, t);
                mma_m16n8k16_bf16(dq[n], da, kb);
            }
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int row = row0 + query_block * 16 + g + 8 * (r / 2);
            if (row >= sh.q_len) continue;
            float* dq_row = p.dq + (bh * sh.q_len + row) * sh.head_dim + 2 * t + r % 2;
#pragma unroll
            for (int n = 0; n < kDqTiles; ++n)
                if ((col_tile0 + n) * 8 < sh.head_dim) atomicAdd(dq_row + (col_tile0 + n) * 8, dq[n][r] * sh.scale);
        }
        // The step's tiles are overwritten next.
        __syncthreads();
    }

    // dV = Σ Pᵀ·dO. dK = c·(1/‖k‖)·(acc − k̂ (k̂·acc)) with c = head and acc = Σ (dS/‖q‖)ᵀ·Q:
    // the gradient through k̂ = k/‖k‖ (without cosine, ‖k‖ counts as 1 and k̂·acc as 0).
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int local = warp_key + g + 8 * i, key = key0 + local;
        const float inv = key_inv[i];
        const bf16* k_row = k_tile + local * S + 2 * t;
        float along = 0.0f;
        if (sh.cosine) {
#pragma unroll
            for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
                for (int c = 0; c < 2; ++c) along += inv * to_float(k_row[nt * 8 + c]) * dk[nt][2 * i + c];
            along = quad_sum(along);
        }
        if (key >= sh.kv_len) continue;
        float* dk_row = p.dk + (bh * sh.kv_len + key) * sh.head_dim + 2 * t;
        float* dv_row = p.dv + (bh * sh.kv_len + key) * sh.head_dim + 2 * t;
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt) {
            if (nt * 8 >= sh.head_dim) continue;
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const float k_hat = sh.cosine ? inv * to_float(k_row[nt * 8 + c]) : 0.0f;
                dk_row[nt * 8 + c] = head * inv * (dk[nt][2 * i + c] - k_hat * along);
                dv_row[nt * 8 + c] = dv[nt][2 * i + c];
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(128) attention_backward_d64(const AttentionBackwardParams p) {
    attention_backward<64>(p);
}
INFINITY_SHIM_ENTRY(attention_backward_d64, AttentionBackwardParams)
extern "C" __global__ void __launch_bounds__(128) attention_backward_d128(const AttentionBackwardParams p) {
    attention_backward<128>(p);
}
INFINITY_SHIM_ENTRY(attention_backward_d128, AttentionBackwardParams)

/// Finishes dq of cosine attention once every key block has added to it: with dq holding
/// G = scale·Σ_j dS_ij·k̂_j, ρ = q̂·G, the gradient through q̂ = q/‖q‖ is
/// head_scale[h]·(G − q̂ρ)/‖q‖ (in place), and head_scale's gradient gains Σ ρ over the rows.
/// q (B, H, Lq, D) bf16 with element strides for (B, H, L) and q_inv its rows' inverse norms
/// (attention_backward_rows); dq contiguous; d_head_scale (H,) f32 zeroed by the launcher.
/// One warp per row.
struct AttentionCosineParams {
    const bf16* q;
    const float* q_inv;
    const float* head_scale;
    float* dq;
    float* d_head_scale;
    int q_stride[3];
    int batch, heads, q_len, head_dim;
};

extern "C" __global__ void __launch_bounds__(256) attention_backward_cosine(const AttentionCosineParams p) {
    const unsigned rows = unsigned(p.batch * p.heads * p.q_len), lane = threadIdx.x % 32;
    for (unsigned row = grid_first() / 32; row < rows; row += grid_stride() / 32) {
        const int i = int(row % p.q_len), h = int(row / p.q_len % p.heads), b = int(row / p.q_len / p.heads);
        const bf16* q = p.q + b * p.q_stride[0] + h * p.q_stride[1] + i * p.q_stride[2];
        float* dq = p.dq + row * p.head_dim;
        float along = 0.0f;
        for (int c = int(lane); c < p.head_dim; c += 32) along += to_float(q[c]) * dq[c];
        const float inv = p.q_inv[row], rho = inv * warp_sum(along);
        for (int c = int(lane); c < p.head_dim; c += 32)
            dq[c] = p.head_scale[h] * inv * (dq[c] - inv * to_float(q[c]) * rho);
        if (lane == 0) atomicAdd(p.d_head_scale + h, rho);
    }
}
INFINITY_SHIM_ENTRY(attention_backward_cosine, AttentionCosineParams)
