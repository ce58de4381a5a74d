//! Launchers of kernels/rope.cu: Infinity's interleaved rotary embedding of q or k (B, H, L, D)
//! by (L, D/2) cos and sin tables (ops/src/rope.rs's `rope_interleaved`; the tables come from
//! its `rope2d_table`), and [`attention_inputs`], which fuses it with the rest of what lies
//! between the qkv projection and the attention kernel at inference.

use cudarc::driver::DeviceRepr;
use infinity_runtime::half::bf16;
use infinity_runtime::{DType, Element, Error, Tensor};

use crate::Result;
use crate::exec::Executor;
use crate::kernels::{ATTENTION_INPUTS, KernelHandle, ROPE_INTERLEAVED_BF16, ROPE_INTERLEAVED_F32};
use crate::view::{DevPtr, View};

const THREADS: u32 = 256;

#[repr(C)]
pub struct RopeParams<T> {
    x: DevPtr<T>,
    cos: DevPtr<f32>,
    sin: DevPtr<f32>,
    out: DevPtr<T>,
    dims: [i32; 4],
    x_stride: [i32; 4],
    cos_stride: [i32; 2],
    sin_stride: [i32; 2],
}

#[repr(C)]
pub struct AttentionInputsParams {
    qkv: DevPtr<bf16>,
    cos: DevPtr<f32>,
    sin: DevPtr<f32>,
    head_scale: DevPtr<f32>,
    q: DevPtr<bf16>,
    k_cache: DevPtr<bf16>,
    v_cache: DevPtr<bf16>,
    qkv_stride: [i32; 4],
    cos_stride: [i32; 2],
    sin_stride: [i32; 2],
    k_stride: [i32; 3],
    v_stride: [i32; 3],
    batch: i32,
    tokens: i32,
    heads: i32,
    head_dim: i32,
}

// SAFETY: #[repr(C)] mirrors of the C structs of rope.cu (sizes checked by a test) made of
// plain numbers and addresses.
unsafe impl<T> DeviceRepr for RopeParams<T> {}
unsafe impl DeviceRepr for AttentionInputsParams {}

/// Rotates pair (2j, 2j+1) of every head vector of x (B, H, L, D), f32 or bf16 with any
/// strides, by the angle whose cosine and sine are cos[l, j] and sin[l, j] ((L, D/2) f32, any
/// strides) for position l. The output is contiguous, in x's dtype; the arithmetic is f32.
pub fn rope_interleaved(exec: &Executor, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F32 => rope_as(exec, ROPE_INTERLEAVED_F32, x, cos, sin),
        DType::BF16 => rope_as::<bf16>(exec, ROPE_INTERLEAVED_BF16, x, cos, sin),
        dtype => Err(Error::UnsupportedDType { op: "rope_interleaved", dtype }),
    }
}

fn rope_as<T: Element>(
    exec: &Executor,
    handle: KernelHandle<RopeParams<T>>,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    let op = handle.kernel.name();
    let xv = exec.view::<T, 4>(op, x)?;
    let (cv, sv) = (exec.view::<f32, 2>(op, cos)?, exec.view::<f32, 2>(op, sin)?);
    let [_, _, len, head_dim] = xv.dims;
    if head_dim % 2 != 0 {
        return Err(Error::invalid(
            op,
            x.shape(),
            format!("head dim {head_dim} is odd, so it does not split into pairs"),
        ));
    }
    for (table, v) in [(cos, &cv), (sin, &sv)] {
        if v.dims != [len, head_dim / 2] {
            return Err(Error::ShapeMismatch { op, lhs: x.shape().to_vec(), rhs: table.shape().to_vec() });
        }
    }
    let mut out = exec.output(op, x.shape(), T::DTYPE)?;
    let params = RopeParams {
        x: xv.ptr,
        cos: cv.ptr,
        sin: sv.ptr,
        out: exec.view_mut::<T, 4>(op, &mut out)?.ptr,
        dims: xv.dims,
        x_stride: xv.strides,
        cos_stride: cv.strides,
        sin_stride: sv.strides,
    };
    // SAFETY: the addresses come from views of live tensors of `exec`, the tables checked to be
    // (L, D/2); the output has x's shape.
    unsafe { exec.launch(handle, exec.grid_stride(out.layout().numel() / 2, THREADS), &params)? };
    Ok(out)
}

/// The widest head [`attention_inputs`] takes: a lane holds two rotation pairs (`kMaxPairsPerLane`).
pub const MAX_INPUTS_HEAD_DIM: usize = 128;

/// Whether [`attention_inputs`] takes heads of `head_dim`: even, at most [`MAX_INPUTS_HEAD_DIM`].
pub fn inputs_fit(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(2) && head_dim <= MAX_INPUTS_HEAD_DIM
}

/// The self-attention inputs of one scale at inference, from the fused projection qkv
/// (B, n, 3, H, D) bf16 (D even and at most 128, contiguous; other strides free) in one pass, as
/// models/src/infinity/block.rs forms them: returns q̃ = head_scale[h]·rope(q / max(‖q‖, 1e-12))
/// (B, H, n, D) bf16, and writes k̃ = rope(k / max(‖k‖, 1e-12)) and v into the caches
/// (B, H, L, D) bf16 at positions `start..start + n`. cos and sin are the scale's (n, D/2) f32
/// tables, head_scale (H,) f32. Attention over q̃ and the caches is then plain scale-1
/// attention: the cosine scores' normalisation is done once per token here, not per key tile.
#[allow(clippy::too_many_arguments)]
pub fn attention_inputs(
    exec: &Executor,
    qkv: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    head_scale: &Tensor,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    start: usize,
) -> Result<Tensor> {
    const OP: &str = "attention_inputs";
    let xv = exec.view::<bf16, 5>(OP, qkv)?;
    let [batch, tokens, three, heads, head_dim] = xv.dims;
    if !inputs_fit(head_dim as usize) {
        let msg = format!("head dim {head_dim}: the kernel takes even head dims up to {MAX_INPUTS_HEAD_DIM}");
        return Err(Error::invalid(OP, qkv.shape(), msg));
    }
    if three != 3 || xv.strides[4] != 1 {
        let msg = "expected (B, n, 3, H, D) with D contiguous";
        return Err(Error::invalid(OP, qkv.shape(), msg));
    }
    let (cv, sv) = (exec.view::<f32, 2>(OP, cos)?, exec.view::<f32, 2>(OP, sin)?);
    for (table, v) in [(cos, &cv), (sin, &sv)] {
        if v.dims != [tokens, head_dim / 2] {
            return Err(Error::ShapeMismatch { op: OP, lhs: qkv.shape().to_vec(), rhs: table.shape().to_vec() });
        }
    }
    let scale = exec.view::<f32, 1>(OP, head_scale)?;
    // The kernel indexes head_scale by head.
    if scale.dims != [heads] || (heads > 1 && scale.strides != [1]) {
        return Err(Error::ShapeMismatch { op: OP, lhs: qkv.shape().to_vec(), rhs: head_scale.shape().to_vec() });
    }
    let (k_slot, k_stride) = cache_slot(exec, OP, k_cache, [batch, heads, head_dim], start, tokens)?;
    let (v_slot, v_stride) = cache_slot(exec, OP, v_cache, [batch, heads, head_dim], start, tokens)?;
    let mut q = exec.output(OP, &[batch, heads, tokens, head_dim].map(|n| n as usize), DType::BF16)?;
    let params = AttentionInputsParams {
        qkv: xv.ptr,
        cos: cv.ptr,
        sin: sv.ptr,
        head_scale: scale.ptr,
        q: exec.view_mut::<bf16, 4>(OP, &mut q)?.ptr,
        k_cache: k_slot,
        v_cache: v_slot,
        qkv_stride: [xv.strides[0], xv.strides[1], xv.strides[2], xv.strides[3]],
        cos_stride: cv.strides,
        sin_stride: sv.strides,
        k_stride,
        v_stride,
        batch,
        tokens,
        heads,
        head_dim,
    };
    let rows = (batch * tokens * heads) as usize;
    // SAFETY: the addresses come from views of live tensors of `exec`: qkv's and the tables'
    // shapes were checked above, q was allocated with (B, H, n, D), and each cache holds
    // positions start..start + n of (B, H, ·, D) (`cache_slot`).
    unsafe { exec.launch(ATTENTION_INPUTS, exec.grid_stride(rows * 32, THREADS), &params)? };
    Ok(q)
}

/// The address of position `start` of a (B, H, L, D) bf16 cache that must hold `len` positions
/// from there (D contiguous), and its (B, H, L) strides.
fn cache_slot(
    exec: &Executor,
    op: &'static str,
    cache: &mut Tensor,
    [batch, heads, head_dim]: [i32; 3],
    start: usize,
    len: i32,
) -> Result<(DevPtr<bf16>, [i32; 3])> {
    let View { ptr, dims, strides } = exec.view_mut::<bf16, 4>(op, cache)?;
    if dims[0] != batch || dims[1] != heads || dims[3] != head_dim || strides[3] != 1 {
        let msg = format!("a cache for {batch} samples of {heads} heads of {head_dim}, the last dimension contiguous");
        return Err(Error::invalid(op, cache.shape(), msg));
    }
    if start + len as usize > dims[2] as usize {
        let msg = format!("positions {start}..{} run past the cache's {}", start + len as usize, dims[2]);
        return Err(Error::invalid(op, cache.shape(), msg));
    }
    Ok((ptr.add(start * strides[2] as usize), [strides[0], strides[1], strides[2]]))
}
