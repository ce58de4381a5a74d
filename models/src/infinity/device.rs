//! The transformer's inference forward on a CUDA [`Executor`] (a GPU, or the CPU shim that
//! runs the same kernels in tests): linear weights in bf16, GEMMs through cuBLAS with f32
//! accumulation, the residual stream in f32 and every other activation in bf16, written
//! directly in the layout the next GEMM reads. A block is 22 launches whatever the batch:
//! AdaLN modulation straight to bf16, one pass from the qkv projection to the KV cache
//! (normalisation, RoPE, append), block-causal flash attention writing token-major output, over
//! a KV cache preallocated for the whole schedule, and one cross-attention over the batch's
//! packed texts.
//!
//! What is computed once per prompt batch from a few dozen text tokens stays on the CPU model
//! and is uploaded: the text conditioning (pooling, cross-attention memory, AdaLN tables). Each
//! block's text keys and values are projected on the device (a host GEMM per block cost the
//! 2B model ~90 ms per image). The scale loop itself ([`super::generate::sample_scales`]) is
//! shared with the CPU path: only the logits of each scale come from the device.

use infinity_autograd::Var;
use infinity_cuda::Executor;
use infinity_cuda::adaln::{gated_residual, modulate};
use infinity_cuda::attention::HEAD_DIMS;
use infinity_cuda::attention::{Attention, BlockCausal, PackedKeys, Scores};
use infinity_cuda::elementwise::{add, gelu_tanh};
use infinity_cuda::gemm::linear;
use infinity_cuda::rope::attention_inputs;
use infinity_runtime::{DType, Error, Result, Tensor};

use super::block::{Block, EPS};
use super::generate::{Generated, ScaleLogits, ScaleStep, conditioning, sample_scales};
use super::model::Infinity;
use super::rope::scale_table;
use super::sampler::SamplingConfig;
use super::text::Conditioning;
use crate::schedule::Schedule;

/// `t` on the executor in `dtype`.
fn put(exec: &Executor, t: &Tensor, dtype: DType) -> Result<Tensor> {
    t.to_dtype(dtype)?.to_device(&exec.device())
}

/// A linear layer's weight (N, K) in bf16 and bias (N,) in f32.
fn linear_weights(exec: &Executor, w: &Var, b: &Var) -> Result<(Tensor, Tensor)> {
    Ok((put(exec, w.value(), DType::BF16)?, put(exec, b.value(), DType::F32)?))
}

/// The linear layers of one block on the device: weights bf16 (N, K), biases f32.
struct DeviceBlock {
    qkv: (Tensor, Tensor),
    /// (H,) f32: the cosine attention's per-head multiplier, applied to q.
    head_scale: Tensor,
    proj: (Tensor, Tensor),
    ca_q: (Tensor, Tensor),
    /// The text memory's K|V projection (2C, C), its K half without bias.
    ca_kv: (Tensor, Tensor),
    ca_proj: (Tensor, Tensor),
    fc1: (Tensor, Tensor),
    fc2: (Tensor, Tensor),
}

impl DeviceBlock {
    fn upload(exec: &Executor, b: &Block) -> Result<Self> {
        let pair = |w: &Var, bias: &Var| linear_weights(exec, w, bias);
        let heads = b.head_scale.value().numel();
        Ok(DeviceBlock {
            qkv: pair(&b.qkv_w, &b.qkv_b)?,
            head_scale: put(exec, &b.head_scale.value().reshape(&[heads])?, DType::F32)?,
            proj: pair(&b.proj_w, &b.proj_b)?,
            ca_q: pair(&b.ca_q_w, &b.ca_q_b)?,
            ca_kv: pair(&b.ca_kv_w, &b.ca_kv_b)?,
            ca_proj: pair(&b.ca_proj_w, &b.ca_proj_b)?,
            fc1: pair(&b.fc1_w, &b.fc1_b)?,
            fc2: pair(&b.fc2_w, &b.fc2_b)?,
        })
    }
}

/// The transformer's weights in an executor's memory.
pub struct DeviceInfinity<'e> {
    exec: &'e Executor,
    blocks: Vec<DeviceBlock>,
    /// (15, C) f32.
    lvl_embed: Tensor,
    word_embed: (Tensor, Tensor),
    head: (Tensor, Tensor),
    heads: usize,
    head_dim: usize,
}

impl<'e> DeviceInfinity<'e> {
    /// Uploads `model`'s weights (linear weights rounded to bf16).
    pub fn upload(exec: &'e Executor, model: &Infinity) -> Result<Self> {
        const OP: &str = "infinity.upload";
        let c = &model.config;
        if !HEAD_DIMS.contains(&c.head_dim()) {
            return Err(Error::invalid(
                OP,
                &[c.head_dim()],
                format!("head dim {}: the attention kernels are built for {HEAD_DIMS:?}", c.head_dim()),
            ));
        }
        Ok(DeviceInfinity {
            exec,
            blocks: model.blocks.iter().map(|b| DeviceBlock::upload(exec, b)).collect::<Result<_>>()?,
            lvl_embed: put(exec, model.lvl_embed.value(), DType::F32)?,
            word_embed: linear_weights(exec, &model.word_embed_w, &model.word_embed_b)?,
            head: linear_weights(exec, &model.head_w, &model.head_b)?,
            heads: c.num_heads,
            head_dim: c.head_dim(),
        })
    }

    /// The per-batch state of one generation over `schedule`: conditioning rows, text keys and
    /// values, and KV caches sized for every scale.
    pub fn session<'s>(
        &'s self,
        model: &Infinity,
        cond: &Conditioning,
        schedule: &'s Schedule,
        with_uncond: bool,
    ) -> Result<DeviceSession<'s, 'e>> {
        let exec = self.exec;
        let rows = cond.cond.dim(0)?;
        let total = schedule.seq_len();
        let cache_shape = [rows, self.heads, total, self.head_dim];
        let cache = || exec.empty(&cache_shape, DType::BF16);
        // Row i of a (R, N, C) table as its own (R, C) tensor.
        fn row_tensors<const N: usize>(exec: &Executor, table: &Tensor) -> Result<[Tensor; N]> {
            let rows: Vec<Tensor> =
                (0..N).map(|i| put(exec, &table.narrow(1, i, 1)?.squeeze(1)?, DType::F32)).collect::<Result<_>>()?;
            rows.try_into().map_err(|_| Error::invalid("infinity.session", table.shape(), format!("expected {N} rows")))
        }
        let memory = put(exec, cond.memory.value(), DType::BF16)?;
        let memory_len = memory.shape()[0];
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (block, weights) in model.blocks.iter().zip(&self.blocks) {
            let ada = infinity_ops::elementwise::add(cond.ada.value(), block.ada_gss.value())?;
            let c = block.ada_gss.dim(1)?;
            let broadcast = |t: &Tensor| put(exec, &t.reshape(&[1, c])?.broadcast_to(&[rows, c])?, DType::F32);
            let norm_scale = infinity_ops::elementwise::add_scalar(block.ca_norm_w.value(), -1.0)?;
            // (ΣLᵢ, 2, H, hd): the keys and values of every sample's text, one GEMM.
            let (w, b) = &weights.ca_kv;
            let text =
                linear(exec, &memory, w, Some(b), DType::BF16)?.reshape(&[memory_len, 2, self.heads, self.head_dim])?;
            // The keys (i = 0) or values (i = 1) of every sample as a packed (1, H, ΣLᵢ, hd) view.
            let part = |i: usize| text.narrow(1, i, 1)?.squeeze(1)?.permute(&[1, 0, 2])?.unsqueeze(0);
            blocks.push(BlockState {
                ada: row_tensors(exec, &ada)?,
                ca_norm: (broadcast(&norm_scale)?, broadcast(block.ca_norm_b.value())?),
                text_kv: (part(0)?, part(1)?),
                cache: (cache()?, cache()?),
            });
        }
        Ok(DeviceSession {
            engine: self,
            schedule,
            blocks,
            text_keys: PackedKeys::new(exec, &cond.lens)?,
            head_ada: row_tensors(exec, cond.head_ada.value())?,
            start: put(exec, model.start_tokens(cond)?.value(), DType::F32)?,
            with_uncond,
            filled: 0,
        })
    }
}

/// [`super::generate`] with the transformer's forward on the device: the same conditioning,
/// sampling and bit bookkeeping, the logits of each scale from `engine`.
#[allow(clippy::too_many_arguments)]
pub fn generate(
    engine: &DeviceInfinity,
    model: &Infinity,
    prompts: &[Tensor],
    negatives: Option<&[Tensor]>,
    schedule: &Schedule,
    sampling: &SamplingConfig,
    forced: &[Tensor],
    observe: impl FnMut(ScaleStep),
) -> Result<Generated> {
    let cond = conditioning(model, prompts, negatives, schedule, sampling)?;
    let mut session = engine.session(model, &cond, schedule, sampling.uses_cfg())?;
    sample_scales(&mut session, prompts.len(), model.config.bits, schedule, sampling, forced, observe)
}

/// One block's per-batch state.
struct BlockState {
    /// [gamma1, gamma2, scale1, scale2, shift1, shift2], each (R, C) f32.
    ada: [Tensor; 6],
    /// The cross-attention LayerNorm's affine as AdaLN rows (weight − 1, bias), (R, C) views.
    ca_norm: (Tensor, Tensor),
    /// Every sample's text keys and values, packed: (1, H, ΣLᵢ, hd) bf16 each.
    text_kv: (Tensor, Tensor),
    /// Keys (normalised, rotated) and values of every scale so far: (R, H, L, hd).
    cache: (Tensor, Tensor),
}

/// A generation in progress on the device.
pub struct DeviceSession<'s, 'e> {
    engine: &'s DeviceInfinity<'e>,
    schedule: &'s Schedule,
    blocks: Vec<BlockState>,
    /// Where each sample's text lies in the blocks' packed text keys and values.
    text_keys: PackedKeys,
    /// The head's AdaLN [scale, shift], (R, C) f32.
    head_ada: [Tensor; 2],
    /// (R, 1, C) f32.
    start: Tensor,
    with_uncond: bool,
    /// Tokens already in the caches.
    filled: usize,
}

impl DeviceSession<'_, '_> {
    /// Embeds a next-scale input (B, n, bits), doubled for the unconditional half.
    fn embed(&self, input: &Tensor) -> Result<Tensor> {
        let input = if self.with_uncond { infinity_ops::index::concat(&[input, input], 0)? } else { input.clone() };
        let (w, b) = &self.engine.word_embed;
        linear(self.engine.exec, &put(self.engine.exec, &input, DType::BF16)?, w, Some(b), DType::F32)
    }

    fn forward_scale(&mut self, x: &Tensor, k: usize) -> Result<Tensor> {
        let exec = self.engine.exec;
        let grid = self.schedule.grids[k];
        let n = grid.0 * grid.1;
        let (cos, sin) = scale_table(grid, self.schedule.full_grid, self.engine.head_dim)?;
        let (cos, sin) = (put(exec, &cos, DType::F32)?, put(exec, &sin, DType::F32)?);
        let offsets = &self.schedule.offsets()[..=k + 1];
        let mut h = add(exec, x, &self.engine.lvl_embed.narrow(0, k, 1)?)?;
        for (block, state) in self.engine.blocks.iter().zip(&mut self.blocks) {
            let step = BlockStep {
                exec,
                heads: self.engine.heads,
                n,
                start: self.filled,
                offsets,
                cos: &cos,
                sin: &sin,
                text_keys: &self.text_keys,
            };
            h = step.run(block, state, &h)?;
        }
        self.filled += n;
        Ok(h)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let exec = self.engine.exec;
        let a = modulate(exec, hidden, &self.head_ada[0], &self.head_ada[1], EPS, DType::BF16)?;
        let (w, b) = &self.engine.head;
        linear(exec, &a, w, Some(b), DType::F32)
    }
}

impl ScaleLogits for DeviceSession<'_, '_> {
    fn scale_logits(&mut self, k: usize, input: Option<&Tensor>) -> Result<Tensor> {
        if k >= self.schedule.num_scales() || self.filled != self.schedule.offsets()[k] {
            return Err(Error::invalid("infinity.device", &[k], "scales must run in order, each once"));
        }
        let x = match input {
            None => self.start.clone(),
            Some(u) => self.embed(u)?,
        };
        let hidden = self.forward_scale(&x, k)?;
        self.logits(&hidden)?.to_cpu()
    }
}

/// What one block's forward over one scale needs besides its weights and state.
struct BlockStep<'a> {
    exec: &'a Executor,
    heads: usize,
    /// Tokens of this scale.
    n: usize,
    /// Cache position of the scale's first token.
    start: usize,
    /// Scale offsets up to the end of this scale.
    offsets: &'a [usize],
    cos: &'a Tensor,
    sin: &'a Tensor,
    text_keys: &'a PackedKeys,
}

impl BlockStep<'_> {
    /// models/src/infinity/block.rs's `Block::forward`, op for op.
    fn run(&self, w: &DeviceBlock, s: &mut BlockState, x: &Tensor) -> Result<Tensor> {
        let exec = self.exec;
        let [gamma1, gamma2, scale1, scale2, shift1, shift2] = &s.ada;
        let rows = x.shape()[0];
        let c = x.shape()[2];
        let hd = c / self.heads;

        // Self-attention over the cache. q and k are normalised, scaled and rotated once per
        // token as the cache is filled, so the kernel computes plain scale-1 scores.
        let a = modulate(exec, x, scale1, shift1, EPS, DType::BF16)?;
        let qkv =
            linear(exec, &a, &w.qkv.0, Some(&w.qkv.1), DType::BF16)?.reshape(&[rows, self.n, 3, self.heads, hd])?;
        let (k_cache, v_cache) = &mut s.cache;
        let q = attention_inputs(exec, &qkv, self.cos, self.sin, &w.head_scale, k_cache, v_cache, self.start)?;
        let end = self.start + self.n;
        let mut o = exec.empty(&[rows, self.n, self.heads, hd], DType::BF16)?;
        Attention {
            q: &q,
            k: &k_cache.narrow(2, 0, end)?,
            v: &v_cache.narrow(2, 0, end)?,
            mask: BlockCausal { offsets: self.offsets, q_start: self.start },
            scores: Scores::Dot(1.0),
        }
        .forward_into(exec, &mut o, 0)?;
        let y = linear(exec, &o.reshape(&[rows, self.n, c])?, &w.proj.0, Some(&w.proj.1), DType::F32)?;
        let x = gated_residual(exec, x, &y, gamma1)?;

        // Cross-attention of each sample's queries to its own text, one launch for the batch.
        let h = modulate(exec, &x, &s.ca_norm.0, &s.ca_norm.1, EPS, DType::BF16)?;
        let q = linear(exec, &h, &w.ca_q.0, Some(&w.ca_q.1), DType::BF16)?
            .reshape(&[rows, self.n, self.heads, hd])?
            .permute(&[0, 2, 1, 3])?;
        let (text_k, text_v) = &s.text_kv;
        let mut o = exec.empty(&[rows, self.n, self.heads, hd], DType::BF16)?;
        Attention {
            q: &q,
            k: text_k,
            v: text_v,
            mask: BlockCausal { offsets: &[0, text_k.shape()[2]], q_start: 0 },
            scores: Scores::Dot(1.0 / (hd as f32).sqrt()),
        }
        .forward_packed_into(exec, self.text_keys, &mut o, 0)?;
        let o = o.reshape(&[rows, self.n, c])?;
        let x = add(exec, &x, &linear(exec, &o, &w.ca_proj.0, Some(&w.ca_proj.1), DType::F32)?)?;

        // FFN with the second gate.
        let f = modulate(exec, &x, scale2, shift2, EPS, DType::BF16)?;
        // The hidden layer (4C wide) only ever exists in bf16.
        let f = gelu_tanh(exec, &linear(exec, &f, &w.fc1.0, Some(&w.fc1.1), DType::BF16)?, DType::BF16)?;
        let f = linear(exec, &f, &w.fc2.0, Some(&w.fc2.1), DType::F32)?;
        gated_residual(exec, &x, &f, gamma2)
    }
}
