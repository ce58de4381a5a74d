//! The T5 encoder's inference forward on a CUDA [`Executor`] (a GPU, or the CPU shim that runs
//! the same kernels in tests), op for op the CPU encoder of [`super::model`]: packed prompts,
//! pre-RMSNorm blocks of unscaled self-attention with the relative position bias and a gated
//! tanh-GELU FFN, then the final RMSNorm.
//!
//! Precision: the matrices are bf16 and every GEMM accumulates in f32 (cuBLAS on a GPU); the
//! residual stream, the norms, the scores with their bias, the softmax and the FFN gate stay
//! f32, and a tensor is rounded to bf16 only where it becomes a GEMM operand. The embedding
//! table keeps a bf16 checkpoint's dtype (the lookup copies rows exactly, so widening after it
//! is the CPU encoder's widening); any other table is f32.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use infinity_autograd::Var;
use infinity_cuda::Executor;
use infinity_cuda::elementwise::{add, cast, copy_into, gelu_tanh, mul};
use infinity_cuda::gemm::{linear, matmul};
use infinity_cuda::index::embedding;
use infinity_cuda::norm::{rms_norm, softmax};
use infinity_ops::index::concat;
use infinity_runtime::{DType, Error, Result, Tensor};

use super::config::T5Config;
use super::model::{Layer, T5Encoder, position_bias};
use crate::device_util::put;

/// Weights (N, K) stacked along N into one bf16 matrix, so that projections of the same input
/// run as one GEMM (each output element is still its own row's dot product).
fn stacked(exec: &Executor, weights: &[&Var]) -> Result<Tensor> {
    let bf16: Vec<Tensor> = weights.iter().map(|w| w.value().to_dtype(DType::BF16)).collect::<Result<_>>()?;
    concat(&bf16.iter().collect::<Vec<_>>(), 0)?.to_device(&exec.device())
}

/// One block's weights on the device: norms (d_model) f32, matrices bf16.
struct DeviceLayer {
    attn_norm: Tensor,
    /// (3·inner, d_model): q, k and v.
    qkv: Tensor,
    o: Tensor,
    ffn_norm: Tensor,
    /// (2·d_ff, d_model): wi_0 (the GELU's input) then wi_1 (the gate).
    wi: Tensor,
    wo: Tensor,
}

impl DeviceLayer {
    fn upload(exec: &Executor, l: &Layer) -> Result<Self> {
        Ok(DeviceLayer {
            attn_norm: put(exec, l.attn_norm.value(), DType::F32)?,
            qkv: stacked(exec, &[&l.q, &l.k, &l.v])?,
            o: put(exec, l.o.value(), DType::BF16)?,
            ffn_norm: put(exec, l.ffn_norm.value(), DType::F32)?,
            wi: stacked(exec, &[&l.wi_0, &l.wi_1])?,
            wo: put(exec, l.wo.value(), DType::BF16)?,
        })
    }
}

/// The T5 encoder's weights in an executor's memory.
pub struct DeviceT5<'e> {
    exec: &'e Executor,
    config: T5Config,
    /// (vocab, d_model), bf16 or f32 (see the module doc).
    embed: Tensor,
    /// (num_buckets, num_heads) on the host: each prompt length's bias is formed from it there
    /// by the CPU encoder's own code, then uploaded. A constant, so that this never records on
    /// the tape of an encoder built for training.
    bias_table: Var,
    layers: Vec<DeviceLayer>,
    final_norm: Tensor,
}

impl<'e> DeviceT5<'e> {
    /// Uploads `encoder`'s weights (matrices rounded to bf16).
    pub fn upload(exec: &'e Executor, encoder: &T5Encoder) -> Result<Self> {
        let table = encoder.embed.value();
        let table_dtype = if table.dtype() == DType::BF16 { DType::BF16 } else { DType::F32 };
        Ok(DeviceT5 {
            exec,
            config: encoder.config.clone(),
            embed: put(exec, table, table_dtype)?,
            bias_table: Var::constant(encoder.bias_table.value().clone()),
            layers: encoder.layers.iter().map(|l| DeviceLayer::upload(exec, l)).collect::<Result<_>>()?,
            final_norm: put(exec, encoder.final_norm.value(), DType::F32)?,
        })
    }

    /// The last hidden state (Lᵢ, d_model) f32 of each prompt (content ids then EOS), computed
    /// on its own tokens: the contract of [`T5Encoder::encode_batch`]. An id outside the
    /// vocabulary is an `InvalidArgument` error naming it (the embedding kernel checks every
    /// id) and its position in the prompts laid end to end.
    pub fn encode_batch(&self, prompts: &[&[u32]]) -> Result<Vec<Tensor>> {
        const OP: &str = "t5.device.encode";
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        if lens.contains(&0) {
            return Err(Error::invalid(OP, &lens, "every prompt needs at least one token (its EOS)"));
        }
        let hidden = self.forward(&prompts.concat(), &lens)?;
        let mut offset = 0;
        lens.iter()
            .map(|&len| {
                offset += len;
                hidden.narrow(0, offset - len, len)
            })
            .collect()
    }

    /// Encodes packed prompts (`ids` split into runs of `lens`, none empty) → (Σ lens, d_model)
    /// on the host.
    fn forward(&self, ids: &[u32], lens: &[usize]) -> Result<Tensor> {
        let exec = self.exec;
        // i64, not i32: every u32 id reaches the kernel's range check unchanged.
        let ids = Tensor::from_vec(ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(), &[ids.len()])?;
        let mut x = embedding(exec, &self.embed, &ids.to_device(&exec.device())?)?;
        if x.dtype() != DType::F32 {
            x = cast(exec, &x, DType::F32)?;
        }
        // One upload per distinct length; every block and every prompt of that length shares it.
        let mut by_len: HashMap<usize, Tensor> = HashMap::new();
        let mut biases = Vec::with_capacity(lens.len());
        for &len in lens {
            biases.push(match by_len.entry(len) {
                Entry::Occupied(e) => e.get().clone(),
                Entry::Vacant(e) => e.insert(self.position_bias(len)?).clone(),
            });
        }
        for layer in &self.layers {
            x = self.block(layer, &x, lens, &biases)?;
        }
        rms_norm(exec, &x, Some(&self.final_norm), self.config.layer_norm_epsilon)?.to_cpu()
    }

    /// The (heads, len, len) f32 position bias of a prompt of `len` tokens, contiguous so that
    /// every block reads it in row order.
    fn position_bias(&self, len: usize) -> Result<Tensor> {
        let bias = position_bias(&self.bias_table, &self.config, len)?;
        put(self.exec, &bias.value().contiguous()?, DType::F32)
    }

    /// One block on packed tokens `x` (N, d_model) f32: each prompt (a run of `lens`) attends to
    /// its own tokens with its own bias.
    fn block(&self, w: &DeviceLayer, x: &Tensor, lens: &[usize], biases: &[Tensor]) -> Result<Tensor> {
        let (exec, c) = (self.exec, &self.config);
        let n = x.shape()[0];
        let normed =
            |x: &Tensor, weight| cast(exec, &rms_norm(exec, x, Some(weight), c.layer_norm_epsilon)?, DType::BF16);

        // (N, 3, heads, d_kv): each token's q, k and v.
        let qkv = linear(exec, &normed(x, &w.attn_norm)?, &w.qkv, None, DType::BF16)?;
        let qkv = qkv.reshape(&[n, 3, c.num_heads, c.d_kv])?;
        let mut attended = exec.empty(&[n, c.num_heads, c.d_kv], DType::BF16)?;
        let mut offset = 0;
        for (&len, bias) in lens.iter().zip(biases) {
            let rows = qkv.narrow(0, offset, len)?;
            // Part i (q, k or v) of this prompt as (heads, len, d_kv): a view the GEMMs read in
            // place.
            let part = |i| rows.narrow(1, i, 1)?.squeeze(1)?.permute(&[1, 0, 2]);
            // T5 does not scale the scores by 1/√d_kv: its initialisation accounts for it.
            let scores = matmul(exec, &part(0)?, &part(1)?.permute(&[0, 2, 1])?, DType::F32)?;
            let probs = cast(exec, &softmax(exec, &add(exec, &scores, bias)?)?, DType::BF16)?;
            let a = matmul(exec, &probs, &part(2)?, DType::BF16)?;
            copy_into(exec, &a.permute(&[1, 0, 2])?, &mut attended, 0, offset)?;
            offset += len;
        }
        let attended = attended.reshape(&[n, c.inner_dim()])?;
        let x = add(exec, x, &linear(exec, &attended, &w.o, None, DType::F32)?)?;

        let wi = linear(exec, &normed(&x, &w.ffn_norm)?, &w.wi, None, DType::F32)?;
        let gated =
            mul(exec, &gelu_tanh(exec, &wi.narrow(1, 0, c.d_ff)?, DType::F32)?, &wi.narrow(1, c.d_ff, c.d_ff)?)?;
        add(exec, &x, &linear(exec, &cast(exec, &gated, DType::BF16)?, &w.wo, None, DType::F32)?)
    }
}
