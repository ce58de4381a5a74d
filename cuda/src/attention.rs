//! Launchers of kernels/attention.cu: block-causal flash attention over bf16 q, k, v with f32
//! accumulation, forward (inference and training) and backward (training).
//!
//! The mask is Infinity's next-scale mask ([`BlockCausal`]): a query sees every key of its own
//! scale block and of the earlier ones. With a KV cache the queries are one scale and the keys
//! the whole cache, which is the same rule with `q_start` > 0. Scores are either plain scaled
//! products or Infinity's cosine attention ([`Scores`]), whose L2 normalisation of q and k and
//! per-head scale are fused into the kernels, gradients included: [`Attention::backward`]
//! returns the gradients of the raw q and k and of the per-head scale.
//!
//! Layout: q (B, H, Lq, D), k and v (B, H, Lk, D), any strides for B, H and L as long as the
//! head dimension is contiguous and those strides are multiples of 8 elements: the kernels
//! move rows as 16-byte words (device buffers start 16-byte aligned). D is a multiple of 8 up
//! to 128 ([`kernel_fits`]): every Infinity preset (64 for the tiny ones, 96–120 for layer12–48,
//! 128 for the 2B and 8B). Kernels are built for 64 and 128 columns; a narrower head runs in
//! the next wider one, its missing columns zeros in shared memory (a 96-wide head does 4/3 of
//! its arithmetic).
//!
//! Precision: the tensor-core products take bf16 operands, so the probabilities P (for P·V
//! and dV) and the score gradients dS (for dK and dQ) are rounded to bf16, as in
//! FlashAttention; scores, softmax statistics, norms and accumulations are f32. O is bf16, the
//! logsumexp and every gradient f32.

use cudarc::driver::DeviceRepr;
use infinity_runtime::half::bf16;
use infinity_runtime::{DType, Error, Tensor};

use crate::Result;
use crate::exec::{Executor, Grid};
use crate::kernels::{
    ATTENTION_BACKWARD_COSINE, ATTENTION_BACKWARD_D64, ATTENTION_BACKWARD_D128, ATTENTION_BACKWARD_ROWS,
    ATTENTION_FORWARD_D64, ATTENTION_FORWARD_D128,
};
use crate::view::{DevPtr, View};

/// Most scale blocks a mask may have (`kMaxScales` in attention.cu; Infinity uses at most 15).
pub const MAX_SCALES: usize = 32;
/// The widest head the kernels take.
pub const MAX_HEAD_DIM: usize = 128;

/// Whether the kernels take heads of `head_dim` columns: a multiple of 8 (rows move as
/// 16-byte words), at most [`MAX_HEAD_DIM`].
pub fn kernel_fits(head_dim: usize) -> bool {
    head_dim > 0 && head_dim.is_multiple_of(ROW_ALIGN) && head_dim <= MAX_HEAD_DIM
}

/// Four warps per block; each owns 16 query rows (forward) or 16 keys (backward).
const THREADS: u32 = 128;
/// Query rows per forward block and keys per backward block.
const TILE: usize = 64;
/// Block size of the one-warp-per-row kernels.
const ROW_THREADS: u32 = 256;
/// Rows are moved as 16-byte words of 8 bf16.
const ROW_ALIGN: usize = 8;

#[repr(C)]
#[derive(Clone, Copy)]
struct AttentionShape {
    head_scale: DevPtr<f32>,
    batch: i32,
    heads: i32,
    q_len: i32,
    kv_len: i32,
    head_dim: i32,
    q_start: i32,
    scale: f32,
    cosine: i32,
    scales: i32,
    offsets: [i32; MAX_SCALES + 1],
}

#[repr(C)]
pub struct AttentionForwardParams {
    q: DevPtr<bf16>,
    k: DevPtr<bf16>,
    v: DevPtr<bf16>,
    out: DevPtr<bf16>,
    lse: DevPtr<f32>,
    kv_starts: DevPtr<i32>,
    q_stride: [i32; 3],
    k_stride: [i32; 3],
    v_stride: [i32; 3],
    out_stride: [i32; 3],
    shape: AttentionShape,
}

#[repr(C)]
pub struct AttentionRowsParams {
    out: DevPtr<bf16>,
    dout: DevPtr<bf16>,
    q: DevPtr<bf16>,
    delta: DevPtr<f32>,
    q_inv: DevPtr<f32>,
    out_stride: [i32; 4],
    dout_stride: [i32; 4],
    q_stride: [i32; 3],
    batch: i32,
    heads: i32,
    q_len: i32,
    head_dim: i32,
    cosine: i32,
}

#[repr(C)]
pub struct AttentionBackwardParams {
    q: DevPtr<bf16>,
    k: DevPtr<bf16>,
    v: DevPtr<bf16>,
    dout: DevPtr<bf16>,
    lse: DevPtr<f32>,
    delta: DevPtr<f32>,
    q_inv: DevPtr<f32>,
    dq: DevPtr<f32>,
    dk: DevPtr<f32>,
    dv: DevPtr<f32>,
    q_stride: [i32; 3],
    k_stride: [i32; 3],
    v_stride: [i32; 3],
    dout_stride: [i32; 3],
    shape: AttentionShape,
}

#[repr(C)]
pub struct AttentionCosineParams {
    q: DevPtr<bf16>,
    q_inv: DevPtr<f32>,
    head_scale: DevPtr<f32>,
    dq: DevPtr<f32>,
    d_head_scale: DevPtr<f32>,
    q_stride: [i32; 3],
    batch: i32,
    heads: i32,
    q_len: i32,
    head_dim: i32,
}

// SAFETY: #[repr(C)] mirrors of the C structs of attention.cu (sizes checked by a test) made
// of plain numbers and addresses.
unsafe impl DeviceRepr for AttentionForwardParams {}
unsafe impl DeviceRepr for AttentionRowsParams {}
unsafe impl DeviceRepr for AttentionBackwardParams {}
unsafe impl DeviceRepr for AttentionCosineParams {}

/// Which keys each query sees: the sequence is cut into scale blocks
/// [offsets[i], offsets[i + 1]), and the query at position p sees the keys of p's block and of
/// every earlier one. Key j is at position j; query row r at position `q_start + r`. No offsets
/// ([`BlockCausal::causal`]) make every position its own block: causal attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCausal<'a> {
    /// 0 = offsets[0] < offsets[1] < … < offsets[n] = Lk, with 1 ≤ n ≤ [`MAX_SCALES`].
    pub offsets: &'a [usize],
    /// 0 when queries and keys are the same sequence (training); the start of the current
    /// scale when the keys are a KV cache (inference). q_start + Lq ≤ Lk, unless there is one
    /// block: every query then sees every key (cross-attention, `offsets` = [0, Lk]).
    pub q_start: usize,
}

/// How scores are formed from q and k.
#[derive(Clone, Copy)]
pub enum Scores<'a> {
    /// scale·q·kᵀ.
    Dot(f32),
    /// Infinity's cosine attention, head_scale[h]·q̂·k̂ᵀ with q̂ and k̂ the rows divided by
    /// max(‖·‖₂, 1e-12) and head_scale (H,) f32 (exp of the clamped `scale_mul_1H11`). RoPE may
    /// be applied to q and k before, as the normalisation commutes with it.
    Cosine(&'a Tensor),
}

impl BlockCausal<'_> {
    /// Causal attention: the query at position p sees the keys 0..=p.
    pub fn causal(q_start: usize) -> BlockCausal<'static> {
        BlockCausal { offsets: &[], q_start }
    }
}

/// Where each sample's keys lie in a packed k and v (the text memories of a batch, of
/// different lengths): sample i's are rows starts[i]..starts[i + 1], each at least one. Kept
/// on the device too, so that a launch reads them without a copy; made once per batch.
pub struct PackedKeys {
    starts: Vec<usize>,
    /// The same offsets, (B + 1,) i32.
    device: Tensor,
}

impl PackedKeys {
    /// The packing of samples with `lens` keys each, in order.
    pub fn new(exec: &Executor, lens: &[usize]) -> Result<PackedKeys> {
        const OP: &str = "packed_keys";
        let starts: Vec<usize> = std::iter::once(0)
            .chain(lens.iter().scan(0, |end, &len| {
                *end += len;
                Some(*end)
            }))
            .collect();
        if lens.is_empty() || lens.contains(&0) || starts.last().is_some_and(|&n| n > i32::MAX as usize) {
            return Err(Error::invalid(OP, lens, "each sample needs at least one key, 2^31 in all at most"));
        }
        let table: Vec<i32> = starts.iter().map(|&s| s as i32).collect();
        let device = Tensor::from_vec(table, &[starts.len()])?.to_device(&exec.device())?;
        Ok(PackedKeys { starts, device })
    }
}

/// One attention call: the tensors (see the module header for shapes) and how they interact.
#[derive(Clone, Copy)]
pub struct Attention<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub mask: BlockCausal<'a>,
    pub scores: Scores<'a>,
}

/// The forward's results, contiguous.
pub struct Output {
    /// (B, H, Lq, D) bf16.
    pub out: Tensor,
    /// (B, H, Lq) f32: ln Σ_j exp(score_ij) over each row's visible keys (what the backward
    /// recomputes the probabilities from).
    pub lse: Tensor,
}

/// Gradients of a loss, f32 and contiguous, given its gradient with respect to the output.
pub struct Gradients {
    /// (B, H, Lq, D), with respect to the raw q (through the normalisation for cosine scores).
    pub dq: Tensor,
    /// (B, H, Lk, D), with respect to the raw k.
    pub dk: Tensor,
    /// (B, H, Lk, D).
    pub dv: Tensor,
    /// (H,) with respect to head_scale, for cosine scores.
    pub head_scale: Option<Tensor>,
}

/// The checked operands of a call.
struct Operands {
    q: View<bf16, 4>,
    k: View<bf16, 4>,
    v: View<bf16, 4>,
    shape: AttentionShape,
}

impl Operands {
    fn head_dim(&self) -> usize {
        self.q.dims[3] as usize
    }

    /// (B, H, Lq) and (B, H, Lq, D).
    fn row_shapes(&self) -> ([usize; 3], [usize; 4]) {
        let [b, h, l, d] = self.q.dims.map(|n| n as usize);
        ([b, h, l], [b, h, l, d])
    }
}

impl Attention<'_> {
    /// softmax(scores + block-causal mask)·v, and the row logsumexp for [`Attention::backward`].
    pub fn forward(&self, exec: &Executor) -> Result<Output> {
        const OP: &str = "attention_forward";
        let ops = self.operands(exec, OP)?;
        let (rows, full) = ops.row_shapes();
        let mut out = exec.output(OP, &full, DType::BF16)?;
        let mut lse = exec.output(OP, &rows, DType::F32)?;
        let out_view = exec.view_mut::<bf16, 4>(OP, &mut out)?;
        let lse_ptr = exec.view_mut::<f32, 3>(OP, &mut lse)?.ptr;
        // SAFETY: both outputs were just allocated with the q rows.
        unsafe { launch_forward(exec, &ops, &out_view, lse_ptr, DevPtr::new(0))? };
        Ok(Output { out, lse })
    }

    /// The forward for inference, no logsumexp: O written into `out`, a contiguous
    /// (B', Lq, H, D) bf16 tensor, as its samples `batch_start..batch_start + B`. Token-major,
    /// so that (B', Lq, H·D) is the output projection's operand as it stands, and the samples
    /// of several calls can share one tensor.
    pub fn forward_into(&self, exec: &Executor, out: &mut Tensor, batch_start: usize) -> Result<()> {
        const OP: &str = "attention_forward";
        let ops = self.operands(exec, OP)?;
        let slice = self.output_slice(exec, OP, &ops, out, batch_start)?;
        // SAFETY: `slice` addresses samples batch_start.. of `out`.
        unsafe { launch_forward(exec, &ops, &slice, DevPtr::new(0), DevPtr::new(0)) }
    }

    /// Samples `batch_start..` of a contiguous (B', Lq, H, D) bf16 `out` as the kernel's
    /// (B, H, Lq, D) output view, checked to hold the output of q.
    fn output_slice(
        &self,
        exec: &Executor,
        op: &'static str,
        ops: &Operands,
        out: &mut Tensor,
        batch_start: usize,
    ) -> Result<View<bf16, 4>> {
        let [batch, heads, q_len, head_dim] = ops.q.dims.map(|n| n as usize);
        let fits = out.shape().len() == 4
            && out.shape()[1..] == [q_len, heads, head_dim]
            && batch_start + batch <= out.shape()[0]
            && out.layout().is_contiguous();
        if !fits {
            let msg = format!(
                "cannot hold the output of q {:?} as samples {batch_start}.. of a contiguous (B, Lq, H, D) tensor",
                self.q.shape()
            );
            return Err(Error::invalid(op, out.shape(), msg));
        }
        let view = exec.view_mut::<bf16, 4>(op, out)?;
        let [sample, token, head, _] = view.strides;
        Ok(View {
            ptr: view.ptr.add(batch_start * sample as usize),
            dims: ops.q.dims,
            strides: [sample, head, token, 1],
        })
    }

    /// [`Attention::forward_into`] for samples whose keys differ in number (cross-attention
    /// to each sample's own text), in one launch: k and v are (1, H, ΣLᵢ, D), sample i's keys
    /// the rows `keys` gives it, every one visible to each of its queries; the mask is the one
    /// block [0, ΣLᵢ].
    pub fn forward_packed_into(
        &self,
        exec: &Executor,
        keys: &PackedKeys,
        out: &mut Tensor,
        batch_start: usize,
    ) -> Result<()> {
        const OP: &str = "attention_forward";
        let ops = self.checked_operands(exec, OP, Some(keys))?;
        let slice = self.output_slice(exec, OP, &ops, out, batch_start)?;
        let starts = exec.view::<i32, 1>(OP, &keys.device)?.ptr;
        // SAFETY: `slice` addresses samples batch_start.. of `out`; the packed offsets were
        // checked against k's rows (`checked_operands`), and the device copy holds the same.
        unsafe { launch_forward(exec, &ops, &slice, DevPtr::new(0), starts) }
    }

    /// The gradients for output gradient `dout` (B, H, Lq, D) bf16 (strided like q), given the
    /// forward's `output` for the same call.
    pub fn backward(&self, exec: &Executor, output: &Output, dout: &Tensor) -> Result<Gradients> {
        const OP: &str = "attention_backward";
        let ops = self.operands(exec, OP)?;
        let (_, full) = ops.row_shapes();
        let o = exec.view::<bf16, 4>(OP, &output.out)?;
        let lse = exec.view::<f32, 3>(OP, &output.lse)?;
        let d_out = rows_view(exec, OP, dout)?;
        for (t, dims) in [(&output.out, &o.dims[..]), (dout, &d_out.dims[..])] {
            if dims != ops.q.dims {
                return Err(mismatch(OP, self.q, t));
            }
        }
        // The kernel indexes lse by row.
        if lse.dims[..] != ops.q.dims[..3] || !output.lse.layout().is_contiguous() {
            return Err(mismatch(OP, self.q, &output.lse));
        }

        let terms = row_terms(exec, &o, &d_out, &ops)?;
        let kv_rows = [full[0], full[1], ops.k.dims[2] as usize, full[3]];
        let mut dq = exec.accumulator(OP, &full, DType::F32)?;
        let mut dk = exec.output(OP, &kv_rows, DType::F32)?;
        let mut dv = exec.output(OP, &kv_rows, DType::F32)?;
        let params = AttentionBackwardParams {
            q: ops.q.ptr,
            k: ops.k.ptr,
            v: ops.v.ptr,
            dout: d_out.ptr,
            lse: lse.ptr,
            delta: exec.view::<f32, 3>(OP, &terms.delta)?.ptr,
            q_inv: terms.q_inv_ptr(exec)?,
            dq: exec.view_mut::<f32, 4>(OP, &mut dq)?.ptr,
            dk: exec.view_mut::<f32, 4>(OP, &mut dk)?.ptr,
            dv: exec.view_mut::<f32, 4>(OP, &mut dv)?.ptr,
            q_stride: row_strides(&ops.q),
            k_stride: row_strides(&ops.k),
            v_stride: row_strides(&ops.v),
            dout_stride: row_strides(&d_out),
            shape: ops.shape,
        };
        let handle = if ops.head_dim() <= 64 { ATTENTION_BACKWARD_D64 } else { ATTENTION_BACKWARD_D128 };
        // SAFETY: views of live tensors of `exec`, checked above against q's rows (dout, lse,
        // delta) or allocated with the q and k rows (dq, dk, dv); dq starts at zero.
        unsafe { exec.launch(handle, tiles(&ops.q, kv_rows[2]), &params)? };

        let head_scale = match self.scores {
            Scores::Dot(_) => None,
            Scores::Cosine(_) => Some(cosine_gradients(exec, &ops, terms.q_inv_ptr(exec)?, &mut dq)?),
        };
        Ok(Gradients { dq, dk, dv, head_scale })
    }

    /// Checks dtypes, shapes, strides, the mask and the scores, and builds the kernels' shape.
    fn operands(&self, exec: &Executor, op: &'static str) -> Result<Operands> {
        self.checked_operands(exec, op, None)
    }

    /// As [`Attention::operands`]; with `packed` k and v hold one sample (the packed keys of
    /// every sample), which must be those `packed` describes, seen through the one-block mask.
    fn checked_operands(&self, exec: &Executor, op: &'static str, packed: Option<&PackedKeys>) -> Result<Operands> {
        let (q, k, v) = (rows_view(exec, op, self.q)?, rows_view(exec, op, self.k)?, rows_view(exec, op, self.v)?);
        let [batch, heads, q_len, head_dim] = q.dims;
        let k_batch = if packed.is_some() { 1 } else { batch };
        if k.dims != [k_batch, heads, k.dims[2], head_dim] {
            return Err(mismatch(op, self.q, self.k));
        }
        if let Some(keys) = packed {
            let fits = keys.starts.len() == batch as usize + 1
                && keys.starts.last() == Some(&(k.dims[2] as usize))
                && self.mask.offsets.len() == 2;
            if !fits {
                let msg = format!(
                    "packed keys {:?} for {batch} samples of {} keys, with the one-block mask",
                    keys.starts, k.dims[2]
                );
                return Err(Error::invalid(op, self.k.shape(), msg));
            }
        }
        if v.dims != k.dims {
            return Err(mismatch(op, self.k, self.v));
        }
        if !kernel_fits(head_dim as usize) {
            return Err(Error::invalid(
                op,
                self.q.shape(),
                format!("head dim {head_dim}: the kernels take multiples of {ROW_ALIGN} up to {MAX_HEAD_DIM}"),
            ));
        }
        let kv_len = k.dims[2];
        let (offsets, scales) = self.offsets(op, kv_len as usize)?;
        // One block masks nothing: any number of queries may see all keys (cross-attention);
        // causal and block-causal queries must be positions of the keys.
        let past_keys = self.mask.q_start.checked_add(q_len as usize).is_none_or(|end| end > kv_len as usize);
        if scales != 1 && past_keys {
            return Err(Error::invalid(
                op,
                self.q.shape(),
                format!("queries at positions {}.. run past the {kv_len} keys", self.mask.q_start),
            ));
        }
        let (head_scale, scale, cosine) = match self.scores {
            Scores::Dot(scale) if scale.is_finite() => (DevPtr::new(0), scale, 0),
            Scores::Dot(scale) => {
                return Err(Error::invalid(op, self.q.shape(), format!("scale {scale} is not finite")));
            }
            Scores::Cosine(t) => {
                let view = exec.view::<f32, 1>(op, t)?;
                if view.dims != [heads] || view.strides != [1] {
                    return Err(mismatch(op, self.q, t));
                }
                (view.ptr, 1.0, 1)
            }
        };
        let shape = AttentionShape {
            head_scale,
            batch,
            heads,
            q_len,
            kv_len,
            head_dim,
            // Below kv_len, which fits in i32.
            q_start: self.mask.q_start as i32,
            scale,
            cosine,
            scales,
            offsets,
        };
        Ok(Operands { q, k, v, shape })
    }

    /// The mask's offsets as the kernels' table, and the number of blocks.
    fn offsets(&self, op: &'static str, kv_len: usize) -> Result<([i32; MAX_SCALES + 1], i32)> {
        let given = self.mask.offsets;
        if given.is_empty() {
            // Causal: the kernels take no table.
            return Ok(([0; MAX_SCALES + 1], 0));
        }
        let valid = (2..=MAX_SCALES + 1).contains(&given.len())
            && given[0] == 0
            && given.windows(2).all(|w| w[0] < w[1])
            && given.last() == Some(&kv_len);
        if !valid {
            return Err(Error::invalid(
                op,
                given,
                format!("block offsets must rise strictly from 0 to the {kv_len} keys, with 1 to {MAX_SCALES} blocks"),
            ));
        }
        let mut table = [0; MAX_SCALES + 1];
        // Each offset is at most kv_len, which fits in i32.
        table.iter_mut().zip(given).for_each(|(slot, &o)| *slot = o as i32);
        Ok((table, given.len() as i32 - 1))
    }
}

/// Runs the forward kernel of `ops`, O into `out` (q's dims, any (B, H, L) strides, D
/// contiguous) and the logsumexp into `lse` ((B, H, Lq) contiguous) unless it is null; with a
/// non-null `kv_starts`, the keys are packed (see [`Attention::forward_packed_into`]).
///
/// # Safety
/// `out` and a non-null `lse` must address writable memory of `exec` holding those elements;
/// a non-null `kv_starts` must hold B + 1 rising offsets within k's rows.
unsafe fn launch_forward(
    exec: &Executor,
    ops: &Operands,
    out: &View<bf16, 4>,
    lse: DevPtr<f32>,
    kv_starts: DevPtr<i32>,
) -> Result<()> {
    let handle = if ops.head_dim() <= 64 { ATTENTION_FORWARD_D64 } else { ATTENTION_FORWARD_D128 };
    let params = AttentionForwardParams {
        q: ops.q.ptr,
        k: ops.k.ptr,
        v: ops.v.ptr,
        out: out.ptr,
        lse,
        kv_starts,
        q_stride: row_strides(&ops.q),
        k_stride: row_strides(&ops.k),
        v_stride: row_strides(&ops.v),
        out_stride: row_strides(out),
        shape: ops.shape,
    };
    // SAFETY: q, k, v and the mask were checked by `operands`; the caller vouches for the
    // outputs.
    unsafe { exec.launch(handle, tiles(&ops.q, ops.q.dims[2] as usize), &params) }
}

/// The per-row terms of the backward, (B, H, Lq) f32.
struct RowTerms {
    /// rowsum(dO ∘ O).
    delta: Tensor,
    /// 1 / max(‖q row‖₂, 1e-12), for cosine scores.
    q_inv: Option<Tensor>,
}

impl RowTerms {
    /// q_inv's address, or null without cosine scores (the kernels then never read it).
    fn q_inv_ptr(&self, exec: &Executor) -> Result<DevPtr<f32>> {
        const OP: &str = "attention_backward";
        self.q_inv.as_ref().map_or(Ok(DevPtr::new(0)), |t| exec.view::<f32, 3>(OP, t).map(|v| v.ptr))
    }
}

/// The row terms from the forward output `o` and its gradient `d_out` (attention_backward_rows).
fn row_terms(exec: &Executor, o: &View<bf16, 4>, d_out: &View<bf16, 4>, ops: &Operands) -> Result<RowTerms> {
    const OP: &str = "attention_backward_rows";
    let (rows, _) = ops.row_shapes();
    let cosine = ops.shape.cosine != 0;
    let mut delta = exec.output(OP, &rows, DType::F32)?;
    let mut q_inv = cosine.then(|| exec.output(OP, &rows, DType::F32)).transpose()?;
    let [batch, heads, q_len, head_dim] = ops.q.dims;
    let params = AttentionRowsParams {
        out: o.ptr,
        dout: d_out.ptr,
        q: ops.q.ptr,
        delta: exec.view_mut::<f32, 3>(OP, &mut delta)?.ptr,
        q_inv: q_inv.as_mut().map_or(Ok(DevPtr::new(0)), |t| exec.view_mut::<f32, 3>(OP, t).map(|v| v.ptr))?,
        out_stride: o.strides,
        dout_stride: d_out.strides,
        q_stride: row_strides(&ops.q),
        batch,
        heads,
        q_len,
        head_dim,
        cosine: ops.shape.cosine,
    };
    // SAFETY: o and dout have q's shape (checked by the caller); delta and q_inv have its rows.
    unsafe { exec.launch(ATTENTION_BACKWARD_ROWS, row_warps(exec, ops), &params)? };
    Ok(RowTerms { delta, q_inv })
}

/// Turns dq's accumulated scale·Σ dS·k̂ into the gradient of the raw q, and returns the
/// gradient of head_scale.
fn cosine_gradients(exec: &Executor, ops: &Operands, q_inv: DevPtr<f32>, dq: &mut Tensor) -> Result<Tensor> {
    const OP: &str = "attention_backward_cosine";
    let [batch, heads, q_len, head_dim] = ops.q.dims;
    let mut d_head_scale = exec.accumulator(OP, &[heads as usize], DType::F32)?;
    let params = AttentionCosineParams {
        q: ops.q.ptr,
        q_inv,
        head_scale: ops.shape.head_scale,
        dq: exec.view_mut::<f32, 4>(OP, dq)?.ptr,
        d_head_scale: exec.view_mut::<f32, 1>(OP, &mut d_head_scale)?.ptr,
        q_stride: row_strides(&ops.q),
        batch,
        heads,
        q_len,
        head_dim,
    };
    // SAFETY: q and head_scale were checked by `operands`; dq has q's shape, contiguous;
    // d_head_scale is (H,), zeroed.
    unsafe { exec.launch(ATTENTION_BACKWARD_COSINE, row_warps(exec, ops), &params)? };
    Ok(d_head_scale)
}

fn mismatch(op: &'static str, lhs: &Tensor, rhs: &Tensor) -> crate::Error {
    Error::ShapeMismatch { op, lhs: lhs.shape().to_vec(), rhs: rhs.shape().to_vec() }
}

/// A (B, H, L, D) bf16 operand whose rows the kernels can move as 16-byte words: D contiguous,
/// every other stride (of a dimension longer than 1) a multiple of 8, and the first element
/// 16-byte aligned (buffers are; a view's offset must keep it so).
fn rows_view(exec: &Executor, op: &'static str, t: &Tensor) -> Result<View<bf16, 4>> {
    let view = exec.view::<bf16, 4>(op, t)?;
    let aligned = (0..3).all(|i| view.dims[i] == 1 || (view.strides[i] as usize).is_multiple_of(ROW_ALIGN));
    if view.strides[3] != 1 || !aligned || !view.ptr.is_aligned(16) {
        return Err(Error::invalid(
            op,
            t.shape(),
            format!(
                "strides {:?}, offset {}: the head dimension must be contiguous, the other strides and the \
                 offset multiples of {ROW_ALIGN}",
                t.layout().strides(),
                t.layout().offset()
            ),
        ));
    }
    Ok(view)
}

/// The (B, H, L) strides of an operand (its D stride is 1).
fn row_strides(view: &View<bf16, 4>) -> [i32; 3] {
    [view.strides[0], view.strides[1], view.strides[2]]
}

/// A warp per (batch, head, query row).
fn row_warps(exec: &Executor, ops: &Operands) -> Grid {
    let (rows, _) = ops.row_shapes();
    exec.grid_stride(rows.iter().product::<usize>() * 32, ROW_THREADS)
}

/// One block per (batch, head, 64-row tile of `len` rows).
fn tiles(q: &View<bf16, 4>, len: usize) -> Grid {
    let heads = q.dims[0] as usize * q.dims[1] as usize;
    // Below the element count of a checked view, which fits in i32.
    Grid { blocks: (heads * len.div_ceil(TILE)) as u32, threads: THREADS }
}
