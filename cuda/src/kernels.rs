//! The kernel registry: the source files of kernels/ (embedded in the binary, so a build is
//! self-contained), one `Kernel` per `extern "C" __global__` entry point, and a typed handle per
//! kernel that ties it to its `#[repr(C)]` parameter struct and to its CPU-shim launcher.
//! Launch sites name a handle constant, never a string; a handle whose shim launcher is
//! missing fails to link, and the PTX check (tests/cuda_ptxas.rs) fails on an entry point
//! missing from the PTX.

use std::ffi::c_int;

use infinity_runtime::half::bf16;

use crate::adaln::{AdaLnParams, GatedResidualParams};
use crate::attention::{AttentionBackwardParams, AttentionCosineParams, AttentionForwardParams, AttentionRowsParams};
use crate::bitwise_head::{BitwiseLossParams, BitwiseSampleParams};
use crate::conv::{Im2colParams, Upsample2xParams};
use crate::elementwise::{BinaryParams, CopyParams, UnaryGradParams, UnaryParams};
use crate::exec::ShimGrid;
use crate::gemm::BiasRowsParams;
use crate::index::{EmbeddingParams, IndexAddParams};
use crate::norm::{GroupNormParams, ReduceRowsParams, RowNormParams, SoftmaxParams};
use crate::optim::{AdamWParams, SumSquaresParams};
use crate::quantize::{BsqQuantizeParams, NearestCodeParams, ResizeParams};
use crate::rng::PhiloxFillParams;
use crate::rope::{AttentionInputsParams, RopeParams};

/// The header every kernel file includes as "common.cuh"; NVRTC gets it from memory.
pub const COMMON_HEADER: &str = include_str!("../kernels/common.cuh");

/// One kernel source file of `kernels/`, compiled by NVRTC as one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Quantize,
    BitwiseHead,
    AdaLn,
    Rng,
    Attention,
    Norm,
    Elementwise,
    Index,
    Rope,
    Gemm,
    Conv,
    Optim,
}

impl Source {
    pub const ALL: [Source; 12] = [
        Source::Quantize,
        Source::BitwiseHead,
        Source::AdaLn,
        Source::Rng,
        Source::Attention,
        Source::Norm,
        Source::Elementwise,
        Source::Index,
        Source::Rope,
        Source::Gemm,
        Source::Conv,
        Source::Optim,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Source::Quantize => "quantize.cu",
            Source::BitwiseHead => "bitwise_head.cu",
            Source::AdaLn => "adaln.cu",
            Source::Rng => "rng.cu",
            Source::Attention => "attention.cu",
            Source::Norm => "norm.cu",
            Source::Elementwise => "elementwise.cu",
            Source::Index => "index.cu",
            Source::Rope => "rope.cu",
            Source::Gemm => "gemm.cu",
            Source::Conv => "conv.cu",
            Source::Optim => "optim.cu",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Source::Quantize => include_str!("../kernels/quantize.cu"),
            Source::BitwiseHead => include_str!("../kernels/bitwise_head.cu"),
            Source::AdaLn => include_str!("../kernels/adaln.cu"),
            Source::Rng => include_str!("../kernels/rng.cu"),
            Source::Attention => include_str!("../kernels/attention.cu"),
            Source::Norm => include_str!("../kernels/norm.cu"),
            Source::Elementwise => include_str!("../kernels/elementwise.cu"),
            Source::Index => include_str!("../kernels/index.cu"),
            Source::Rope => include_str!("../kernels/rope.cu"),
            Source::Gemm => include_str!("../kernels/gemm.cu"),
            Source::Conv => include_str!("../kernels/conv.cu"),
            Source::Optim => include_str!("../kernels/optim.cu"),
        }
    }

    /// The entry points this file defines.
    pub fn kernels(self) -> impl Iterator<Item = Kernel> {
        Kernel::ALL.iter().copied().filter(move |k| k.source() == self)
    }
}

/// The CPU-shim launcher that `INFINITY_SHIM_ENTRY` exports for a kernel.
pub(crate) type ShimLauncher<P> = unsafe extern "C" fn(*const ShimGrid, *const P) -> c_int;

/// A kernel together with the parameter type it takes: `P` mirrors the kernel's C struct
/// field for field, and launching through the handle is the only way to pass it one.
pub struct KernelHandle<P> {
    pub kernel: Kernel,
    pub(crate) shim: ShimLauncher<P>,
}

macro_rules! kernels {
    ($($(#[$doc:meta])* $variant:ident, $handle:ident = $name:ident($params:ty) in $source:ident;)*) => {
        /// Every kernel entry point, by file.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Kernel {
            $($(#[$doc])* $variant,)*
        }

        impl Kernel {
            pub const ALL: &'static [Kernel] = &[$(Kernel::$variant),*];

            /// The `extern "C"` name of the entry point.
            pub fn name(self) -> &'static str {
                match self {
                    $(Kernel::$variant => stringify!($name),)*
                }
            }

            pub fn source(self) -> Source {
                match self {
                    $(Kernel::$variant => Source::$source,)*
                }
            }

            /// (size of the Rust parameter struct, size of the C one as g++ laid it out).
            #[cfg(test)]
            pub(crate) fn params_sizes(self) -> (usize, usize) {
                match self {
                    $(Kernel::$variant => {
                        unsafe extern "C" {
                            #[link_name = concat!("infinity_shim_", stringify!($name), "_params_size")]
                            fn size() -> usize;
                        }
                        // SAFETY: the shim exports this function for every kernel; it only returns a sizeof.
                        (std::mem::size_of::<$params>(), unsafe { size() })
                    })*
                }
            }
        }

        $(
            $(#[$doc])*
            pub const $handle: KernelHandle<$params> = KernelHandle {
                kernel: Kernel::$variant,
                shim: {
                    unsafe extern "C" {
                        #[link_name = concat!("infinity_shim_", stringify!($name))]
                        fn launch(grid: *const ShimGrid, params: *const $params) -> c_int;
                    }
                    launch
                },
            };
        )*
    };
}

kernels! {
    /// Bilinear resize (align_corners = false) of (B, C, H, W) f32.
    ResizeBilinear, RESIZE_BILINEAR = resize_bilinear(ResizeParams) in Quantize;
    /// Bicubic resize (align_corners = false, A = −0.75) of (B, C, H, W) f32.
    ResizeBicubic, RESIZE_BICUBIC = resize_bicubic(ResizeParams) in Quantize;
    /// Area (adaptive average) resize of (B, C, H, W) f32.
    ResizeArea, RESIZE_AREA = resize_area(ResizeParams) in Quantize;
    /// Index of the nearest codebook row of every row (VQ).
    NearestCode, NEAREST_CODE = nearest_code(NearestCodeParams) in Quantize;
    /// One scale's sign quantization: bits and codes.
    BsqQuantize, BSQ_QUANTIZE = bsq_quantize(BsqQuantizeParams) in Quantize;
    /// Temperature + CFG + top-p + Philox bit sampling from logit pairs.
    BitwiseSample, BITWISE_SAMPLE = bitwise_sample(BitwiseSampleParams) in BitwiseHead;
    /// Two-way cross-entropy per bit and its gradient.
    BitwiseLoss, BITWISE_LOSS = bitwise_loss(BitwiseLossParams) in BitwiseHead;
    /// LN(x)·(1 + scale) + shift, f32 activations.
    AdaLnModulateF32, ADALN_MODULATE_F32 = adaln_modulate_f32(AdaLnParams<f32, f32>) in AdaLn;
    /// LN(x)·(1 + scale) + shift, f32 activations to a bf16 GEMM operand.
    AdaLnModulateF32Bf16, ADALN_MODULATE_F32_BF16 = adaln_modulate_f32_bf16(AdaLnParams<f32, bf16>) in AdaLn;
    /// LN(x)·(1 + scale) + shift, bf16 activations.
    AdaLnModulateBf16, ADALN_MODULATE_BF16 = adaln_modulate_bf16(AdaLnParams<bf16, bf16>) in AdaLn;
    /// x + gate·y, f32 activations.
    GatedResidualF32, GATED_RESIDUAL_F32 = gated_residual_f32(GatedResidualParams<f32>) in AdaLn;
    /// x + gate·y, bf16 activations.
    GatedResidualBf16, GATED_RESIDUAL_BF16 = gated_residual_bf16(GatedResidualParams<bf16>) in AdaLn;
    /// Raw words of the Philox stream.
    PhiloxFill, PHILOX_FILL = philox_fill(PhiloxFillParams) in Rng;
    /// Block-causal flash attention, head dim 64: O and the row logsumexp.
    AttentionForwardD64, ATTENTION_FORWARD_D64 = attention_forward_d64(AttentionForwardParams) in Attention;
    /// Block-causal flash attention, head dim 128: O and the row logsumexp.
    AttentionForwardD128, ATTENTION_FORWARD_D128 = attention_forward_d128(AttentionForwardParams) in Attention;
    /// rowsum(dO ∘ O) and q's inverse row norms, the first step of the attention backward.
    AttentionBackwardRows, ATTENTION_BACKWARD_ROWS = attention_backward_rows(AttentionRowsParams) in Attention;
    /// dK, dV and the dQ accumulation of block-causal attention, head dim 64.
    AttentionBackwardD64, ATTENTION_BACKWARD_D64 = attention_backward_d64(AttentionBackwardParams) in Attention;
    /// dK, dV and the dQ accumulation of block-causal attention, head dim 128.
    AttentionBackwardD128, ATTENTION_BACKWARD_D128 = attention_backward_d128(AttentionBackwardParams) in Attention;
    /// dQ through the cosine normalisation, and the per-head scale's gradient.
    AttentionBackwardCosine, ATTENTION_BACKWARD_COSINE = attention_backward_cosine(AttentionCosineParams) in Attention;
    /// RMS norm, layer norm or L2 normalisation over the last dimension, f32 activations.
    RowNormF32, ROW_NORM_F32 = row_norm_f32(RowNormParams<f32>) in Norm;
    /// RMS norm, layer norm or L2 normalisation over the last dimension, bf16 activations.
    RowNormBf16, ROW_NORM_BF16 = row_norm_bf16(RowNormParams<bf16>) in Norm;
    /// Group norm of (N, C, H, W) f32 with affine weight and bias, optionally followed by SiLU.
    GroupNorm, GROUP_NORM = group_norm(GroupNormParams) in Norm;
    /// Softmax over the last dimension, f32.
    SoftmaxF32, SOFTMAX_F32 = softmax_f32(SoftmaxParams) in Norm;
    /// Sum, mean, max or min of each row (the last dimension), f32.
    ReduceRowsF32, REDUCE_ROWS_F32 = reduce_rows_f32(ReduceRowsParams) in Norm;
    /// Broadcast add, sub, mul or div of f32 operands.
    BinaryF32, BINARY_F32 = binary_f32(BinaryParams<f32>) in Elementwise;
    /// Broadcast add, sub, mul or div of bf16 operands, f32 result.
    BinaryBf16, BINARY_BF16 = binary_bf16(BinaryParams<bf16>) in Elementwise;
    /// A one-input function of f32 elements.
    UnaryF32, UNARY_F32 = unary_f32(UnaryParams<f32, f32>) in Elementwise;
    /// A one-input function of bf16 elements, f32 result.
    UnaryBf16, UNARY_BF16 = unary_bf16(UnaryParams<bf16, f32>) in Elementwise;
    /// A one-input function of bf16 elements, bf16 result.
    UnaryBf16Bf16, UNARY_BF16_BF16 = unary_bf16_bf16(UnaryParams<bf16, bf16>) in Elementwise;
    /// g·f′ of a one-input function (its backward rule), f32.
    UnaryGradF32, UNARY_GRAD_F32 = unary_grad_f32(UnaryGradParams) in Elementwise;
    /// Strided copy of f32 into f32.
    CopyF32F32, COPY_F32_F32 = copy_f32_f32(CopyParams<f32, f32>) in Elementwise;
    /// Strided copy of f32 into bf16 (rounded to nearest even).
    CopyF32Bf16, COPY_F32_BF16 = copy_f32_bf16(CopyParams<f32, bf16>) in Elementwise;
    /// Strided copy of bf16 into f32.
    CopyBf16F32, COPY_BF16_F32 = copy_bf16_f32(CopyParams<bf16, f32>) in Elementwise;
    /// Strided copy of bf16 into bf16.
    CopyBf16Bf16, COPY_BF16_BF16 = copy_bf16_bf16(CopyParams<bf16, bf16>) in Elementwise;
    /// Strided copy of u8 into u8 (labels, masks).
    CopyU8U8, COPY_U8_U8 = copy_u8_u8(CopyParams<u8, u8>) in Elementwise;
    /// Embedding rows of an f32 table for I64 ids.
    EmbeddingF32I64, EMBEDDING_F32_I64 = embedding_f32_i64(EmbeddingParams<f32, i64>) in Index;
    /// Embedding rows of an f32 table for I32 ids.
    EmbeddingF32I32, EMBEDDING_F32_I32 = embedding_f32_i32(EmbeddingParams<f32, i32>) in Index;
    /// Embedding rows of a bf16 table for I64 ids.
    EmbeddingBf16I64, EMBEDDING_BF16_I64 = embedding_bf16_i64(EmbeddingParams<bf16, i64>) in Index;
    /// Embedding rows of a bf16 table for I32 ids.
    EmbeddingBf16I32, EMBEDDING_BF16_I32 = embedding_bf16_i32(EmbeddingParams<bf16, i32>) in Index;
    /// Slices of an f32 gradient summed into the rows they were selected from.
    IndexAdd, INDEX_ADD_F32 = index_add_f32(IndexAddParams) in Index;
    /// Interleaved rotary embedding of (B, H, L, D) f32.
    RopeInterleavedF32, ROPE_INTERLEAVED_F32 = rope_interleaved_f32(RopeParams<f32>) in Rope;
    /// Interleaved rotary embedding of (B, H, L, D) bf16.
    RopeInterleavedBf16, ROPE_INTERLEAVED_BF16 = rope_interleaved_bf16(RopeParams<bf16>) in Rope;
    /// q, k, v of one scale from the fused projection: normalised, scaled, rotated, cached (D even, ≤ 128).
    AttentionInputs, ATTENTION_INPUTS = attention_inputs(AttentionInputsParams) in Rope;
    /// A linear layer's f32 bias in every row of its f32 output, before the GEMM adds to it.
    BiasRowsF32, BIAS_ROWS_F32 = bias_rows_f32(BiasRowsParams<f32>) in Gemm;
    /// A linear layer's f32 bias, rounded, in every row of its bf16 output, before the GEMM adds to it.
    BiasRowsBf16, BIAS_ROWS_BF16 = bias_rows_bf16(BiasRowsParams<bf16>) in Gemm;
    /// The bf16 column matrix of a convolution's input, one row per (channel, kernel tap).
    Im2col, IM2COL = im2col(Im2colParams) in Conv;
    /// Nearest ×2 upsampling of (B, C, H, W) f32.
    UpsampleNearest2x, UPSAMPLE_NEAREST2X = upsample_nearest2x(Upsample2xParams) in Conv;
    /// One AdamW step of many f32 parameters.
    AdamW, ADAMW_F32 = adamw_f32(AdamWParams) in Optim;
    /// Per-chunk sums of squares of many f32 tensors.
    SumSquares, SUM_SQUARES_F32 = sum_squares_f32(SumSquaresParams) in Optim;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Rust mirror that drifted from its C struct would hand the kernel garbage.
    #[test]
    fn parameter_structs_match_their_c_layout() {
        for &k in Kernel::ALL {
            let (rust, c) = k.params_sizes();
            assert_eq!(rust, c, "{}: Rust params are {rust} bytes, C params {c}", k.name());
        }
    }
}
