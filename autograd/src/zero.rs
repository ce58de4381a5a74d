//! The optimizer step of a data-parallel run, replicated or with ZeRO stage 1.
//!
//! [`Update`] turns the gradients into the parameters' update. AdamW itself is the replicated
//! update: every rank receives the ranks' mean gradients (all-reduced by the trainer, in
//! buckets during the backward pass), holds all of AdamW's moments and takes the whole step. [`Zero1`] (ZeRO stage 1, Rajbhandari et al. 2020, as
//! llm.c's `zero_stage 1`) shards the moments instead. All parameters, in their [`Params`]
//! order, form one flat vector cut into as many equal parts as there are ranks (the last one
//! padded); rank r holds the moments of part r only, 8 bytes per parameter divided by the
//! number of ranks. A step reduce-scatters the flat gradient after the backward pass (each
//! rank receives the mean of its part), takes the global norm from the parts' sums of squares, clips, updates its
//! part with AdamW and all-gathers the updated parameters: the bytes of one all-reduce, moved
//! in its two halves. AdamW is element-wise, so each parameter gets the bits the replicated
//! step gives it from the same mean gradient and the same clipping coefficient.
//!
//! A checkpoint holds the whole state either way ([`Optimizer::full_state`] gathers it), so a
//! run saved with ZeRO-1 resumes without it or with another number of ranks, and back.

use std::borrow::Cow;

use infinity_ops::elementwise::mul_scalar;
use infinity_ops::index::concat;
use infinity_ops::optim::sum_squares;
use infinity_runtime::collective::Collective;
use infinity_runtime::{DType, Device, Result, Tensor};

use crate::optim::ParamGroup;
use crate::{AdamW, GradStore, Params};

/// How an [`Update`] takes the ranks' gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduction {
    /// Averaged over the ranks before the update (the trainer all-reduces them in buckets
    /// during the backward pass, [`crate::buckets`]).
    Mean,
    /// This rank's own: the update reduces them itself (ZeRO-1's reduce-scatter).
    Own,
}

/// One optimizer step of data-parallel training: the ranks' gradients averaged, clipped to a
/// global norm and applied.
pub trait Update {
    /// What `update` expects in its `grads`.
    fn reduction(&self) -> Reduction;

    /// Takes the gradients (the ranks' mean, or this rank's own, as [`Update::reduction`]
    /// says; a parameter without one is skipped), clips their global norm to `rates.2`
    /// (`torch.nn.utils.clip_grad_norm_`), and updates `params` with learning rate `rates.0`
    /// and weight decay `rates.1`. Returns the norm before clipping and the clipped mean
    /// gradients where this rank holds them (empty under ZeRO-1, where each rank holds only
    /// its part).
    fn update(
        &mut self,
        params: &mut Params,
        grads: GradStore,
        rates: (f64, f64, f32),
        world: &dyn Collective,
    ) -> Result<(f32, GradStore)>;
}

/// The replicated step: every rank holds the mean gradients and takes the whole update.
impl Update for AdamW {
    fn reduction(&self) -> Reduction {
        Reduction::Mean
    }

    fn update(
        &mut self,
        params: &mut Params,
        mut grads: GradStore,
        (lr, weight_decay, clip): (f64, f64, f32),
        _world: &dyn Collective,
    ) -> Result<(f32, GradStore)> {
        let norm = grads.clip_norm(clip)?;
        self.step(params, &grads, lr, weight_decay)?;
        Ok((norm, grads))
    }
}

/// A run's optimizer: AdamW replicated on every rank, or sharded by ZeRO-1.
pub enum Optimizer {
    Replicated(AdamW),
    Zero1(Zero1),
}

impl Optimizer {
    /// AdamW's whole state, for the checkpoint rank 0 writes. Under ZeRO-1 this gathers every
    /// rank's part onto rank 0's host, so every rank must call it at the same step; the other
    /// ranks receive `None`.
    pub fn full_state(&self, params: &Params, world: &dyn Collective) -> Result<Option<Cow<'_, AdamW>>> {
        match self {
            Optimizer::Replicated(adamw) => Ok(Some(Cow::Borrowed(adamw))),
            Optimizer::Zero1(zero) => Ok(zero.full_state(params, world)?.map(Cow::Owned)),
        }
    }
}

impl Update for Optimizer {
    fn reduction(&self) -> Reduction {
        match self {
            Optimizer::Replicated(adamw) => adamw.reduction(),
            Optimizer::Zero1(zero) => zero.reduction(),
        }
    }

    fn update(
        &mut self,
        params: &mut Params,
        grads: GradStore,
        rates: (f64, f64, f32),
        world: &dyn Collective,
    ) -> Result<(f32, GradStore)> {
        match self {
            Optimizer::Replicated(adamw) => adamw.update(params, grads, rates, world),
            Optimizer::Zero1(zero) => zero.update(params, grads, rates, world),
        }
    }
}

/// AdamW with its moments sharded over the ranks (ZeRO stage 1).
pub struct Zero1 {
    /// The moments of this rank's part: one entry per parameter the part overlaps, named as
    /// the parameter, holding the overlap's elements.
    part: AdamW,
    /// The whole run's groups, for [`Zero1::full_state`].
    groups: Vec<ParamGroup>,
    layout: Layout,
}

/// Where the parameters lie in the flat vector, and this rank's part of it.
struct Layout {
    /// Each parameter's name, shape and first element in the flat vector.
    params: Vec<(String, Vec<usize>, usize)>,
    /// Elements of all parameters together.
    total: usize,
    /// Elements per part (the last part padded with zeros).
    part_len: usize,
    rank: usize,
    world: usize,
    /// The parameters this rank's part overlaps.
    pieces: Vec<Piece>,
}

/// A parameter's overlap with this rank's part.
struct Piece {
    /// The parameter's index in [`Layout::params`].
    param: usize,
    /// The overlap's first element within the parameter, and its length.
    within: usize,
    len: usize,
}

impl Layout {
    fn new(params: &Params, rank: usize, world: usize) -> Layout {
        let mut at = 0;
        let params: Vec<_> = params
            .iter()
            .map(|(name, t)| {
                at += t.numel();
                (name.to_string(), t.shape().to_vec(), at - t.numel())
            })
            .collect();
        let total = at;
        let part_len = total.div_ceil(world.max(1));
        let (start, end) = ((rank * part_len).min(total), ((rank + 1) * part_len).min(total));
        let pieces = (params.iter().enumerate())
            .filter_map(|(param, (_, shape, first))| {
                let last = first + shape.iter().product::<usize>();
                let (from, to) = (start.max(*first), end.min(last));
                (from < to).then(|| Piece { param, within: from - first, len: to - from })
            })
            .collect();
        Layout { params, total, part_len, rank, world, pieces }
    }

    fn name(&self, piece: &Piece) -> &str {
        &self.params[piece.param].0
    }

    /// Elements of this rank's part that belong to parameters (the rest is padding).
    fn filled(&self) -> usize {
        self.total.saturating_sub(self.rank * self.part_len).min(self.part_len)
    }

    /// `pieces` (one per piece, in order) followed by the padding: this rank's part.
    fn part_of(&self, pieces: Vec<Tensor>, device: &Device) -> Result<Tensor> {
        let padding = Tensor::zeros_on(&[self.part_len - self.filled()], DType::F32, device)?;
        concat(&pieces.iter().chain([&padding]).collect::<Vec<_>>(), 0)
    }

    /// Each parameter's elements of the gathered flat vector `flat`, in its shape.
    fn unflatten<'a>(&'a self, flat: &'a Tensor) -> impl Iterator<Item = Result<(&'a str, Tensor)>> + 'a {
        self.params.iter().map(move |(name, shape, first)| {
            Ok((name.as_str(), flat.narrow(0, *first, shape.iter().product())?.reshape(shape)?))
        })
    }
}

/// `t`'s elements `within..within + len` as a vector of their own.
fn slice(t: &Tensor, within: usize, len: usize) -> Result<Tensor> {
    t.reshape(&[t.numel()])?.narrow(0, within, len)?.copy()
}

impl Zero1 {
    /// This rank's share of `full` (a new optimizer, or one restored from a checkpoint) for
    /// `params`, as rank `world.rank()` of `world.world_size()`.
    pub fn shard(full: AdamW, params: &Params, world: &dyn Collective) -> Result<Zero1> {
        let layout = Layout::new(params, world.rank(), world.world_size());
        let groups = full.groups().to_vec();
        let mine: Vec<&str> = layout.pieces.iter().map(|p| layout.name(p)).collect();
        let part_groups = (groups.iter())
            .map(|g| ParamGroup {
                params: g.params.iter().filter(|p| mine.contains(&p.as_str())).cloned().collect(),
                ..g.clone()
            })
            .filter(|g| !g.params.is_empty())
            .collect();
        let mut part = AdamW::new(*full.config(), part_groups)?;
        for piece in &layout.pieces {
            let name = layout.name(piece);
            if let Some((exp_avg, exp_avg_sq, step)) = full.moments(name) {
                let (m, v) = (slice(exp_avg, piece.within, piece.len)?, slice(exp_avg_sq, piece.within, piece.len)?);
                part.set_moments(name, m, v, step);
            }
        }
        Ok(Zero1 { part, groups, layout })
    }

    /// The whole state, gathered from every rank's part onto rank 0's host (every rank must
    /// call it; the others receive `None`).
    pub fn full_state(&self, params: &Params, world: &dyn Collective) -> Result<Option<AdamW>> {
        self.gather_state(params, world, GATHER_CHUNK)
    }

    /// [`Zero1::full_state`], gathering `chunk` elements of each rank's part at a time.
    fn gather_state(&self, params: &Params, world: &dyn Collective, chunk: usize) -> Result<Option<AdamW>> {
        let keep = world.rank() == 0;
        let (layout, device) = (&self.layout, params.device());
        // Step counts travel as f32: exact up to 2^24 steps. A rank reports the count of the
        // parameters it holds a piece of (the same on every rank that does), 0 elsewhere.
        let mut steps = vec![0.0f32; layout.params.len()];
        for piece in &layout.pieces {
            steps[piece.param] = self.part.step_count(layout.name(piece)) as f32;
        }
        let gathered = world.all_gather(&Tensor::from_vec(steps, &[layout.params.len()])?)?.to_f32_vec()?;
        let step =
            |param: usize| gathered.chunks(layout.params.len()).map(|rank| rank[param]).fold(0.0f32, f32::max) as u64;
        // Each moment's flat vector, assembled on the host a chunk of every part at a time, so
        // that the device holds no more than its own part and one chunk per rank.
        let moment = |which: usize| -> Result<Tensor> {
            let pieces = (layout.pieces.iter())
                .map(|piece| match self.part.moments(layout.name(piece)) {
                    Some(moments) => Ok([moments.0, moments.1][which].clone()),
                    None => Tensor::zeros_on(&[piece.len], DType::F32, &device),
                })
                .collect::<Result<Vec<_>>>()?;
            let part = layout.part_of(pieces, &device)?;
            let part_len = layout.part_len;
            let mut flat = vec![0.0f32; if keep { part_len * layout.world } else { 0 }];
            for start in (0..part_len).step_by(chunk.max(1)) {
                let len = chunk.min(part_len - start);
                let got = world.all_gather(&part.narrow(0, start, len)?)?;
                if keep {
                    for (rank, from) in got.to_f32_vec()?.chunks(len).enumerate() {
                        flat[rank * part_len + start..][..len].copy_from_slice(from);
                    }
                }
            }
            let n = flat.len();
            Tensor::from_vec(flat, &[n])
        };
        let (exp_avg, exp_avg_sq) = (moment(0)?, moment(1)?);
        if !keep {
            return Ok(None);
        }
        let mut full = AdamW::new(*self.part.config(), self.groups.clone())?;
        for (i, (m, v)) in layout.unflatten(&exp_avg).zip(layout.unflatten(&exp_avg_sq)).enumerate() {
            let ((name, m), (_, v)) = (m?, v?);
            if step(i) > 0 {
                full.set_moments(name, m.copy()?, v.copy()?, step(i));
            }
        }
        Ok(Some(full))
    }
}

/// Elements of each rank's part that a checkpoint gathers at a time (64 MiB of f32).
const GATHER_CHUNK: usize = 1 << 24;

impl Update for Zero1 {
    fn reduction(&self) -> Reduction {
        Reduction::Own
    }

    fn update(
        &mut self,
        params: &mut Params,
        grads: GradStore,
        (lr, weight_decay, clip): (f64, f64, f32),
        world: &dyn Collective,
    ) -> Result<(f32, GradStore)> {
        let (layout, device) = (&self.layout, params.device());
        // Which parameters some rank's batch reached (the others take no step).
        let present: Vec<f32> = params.iter().map(|(name, _)| f32::from(u8::from(grads.get(name).is_some()))).collect();
        let present = world.all_reduce_mean(&[Tensor::from_vec(present, &[params.len()])?])?[0].to_f32_vec()?;
        let mut flat = Vec::with_capacity(params.len() + 1);
        for (name, p) in params.iter() {
            flat.push(match grads.get(name) {
                Some(g) => g.reshape(&[g.numel()])?,
                None => Tensor::zeros_on(&[p.numel()], DType::F32, &device)?,
            });
        }
        drop(grads);
        flat.push(Tensor::zeros_on(&[layout.part_len * layout.world - layout.total], DType::F32, &device)?);
        let flat = concat(&flat.iter().collect::<Vec<_>>(), 0)?;
        let mut mine = world.reduce_scatter_mean(&flat)?;
        drop(flat);

        // The global norm from the parts' sums of squares: each f64 sum travels as two f32
        // (its rounding and the remainder, 48 bits together) and every rank adds them all in
        // f64, in rank order.
        let squares = if layout.filled() > 0 { sum_squares(&[&mine.narrow(0, 0, layout.filled())?])? } else { 0.0 };
        let high = squares as f32;
        let halves = Tensor::from_vec(vec![high, (squares - f64::from(high)) as f32], &[2])?;
        let all = world.all_gather(&halves)?.to_f32_vec()?;
        let norm = all.iter().map(|&h| f64::from(h)).sum::<f64>().sqrt() as f32;
        let coefficient = clip / (norm + 1e-6);
        if coefficient < 1.0 || coefficient.is_nan() {
            mine = mul_scalar(&mine, coefficient)?;
        }

        // This rank's part of the update, then everyone's parts gathered.
        let mut entries = Vec::new();
        let mut part_grads = GradStore::default();
        let mut at = 0;
        for piece in &layout.pieces {
            let name = layout.name(piece);
            if present[piece.param] > 0.0 {
                entries.push((name.to_string(), slice(params.get(name)?, piece.within, piece.len)?));
                part_grads.insert(name.to_string(), mine.narrow(0, at, piece.len)?.copy()?);
            }
            at += piece.len;
        }
        let mut stepped = Params::new(entries)?;
        self.part.step(&mut stepped, &part_grads, lr, weight_decay)?;
        let values = (layout.pieces.iter())
            .map(|piece| {
                let name = layout.name(piece);
                match stepped.get(name) {
                    Ok(value) => Ok(value.clone()),
                    Err(_) => slice(params.get(name)?, piece.within, piece.len),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let flat = world.all_gather(&layout.part_of(values, &device)?)?;
        for entry in layout.unflatten(&flat) {
            let (name, value) = entry?;
            params.set(name, value)?;
        }
        Ok((norm, GradStore::default()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use infinity_runtime::collective::InProcess;

    use super::*;
    use crate::AdamWConfig;

    fn ramp(shape: &[usize], from: f32) -> Tensor {
        let n = shape.iter().product::<usize>();
        Tensor::from_vec((0..n).map(|i| from + 0.5 * i as f32).collect(), shape).unwrap()
    }

    /// Sharded over 3 ranks and gathered back 4 elements at a time — parts that cut through
    /// parameters, the last one padded, chunks that end inside a part — the state is the one
    /// sharded, bit for bit, on rank 0; a parameter that never stepped stays without state.
    #[test]
    fn a_sharded_state_gathers_back_whole() {
        let shapes: [(&str, &[usize]); 4] = [("a", &[2, 3]), ("b", &[5]), ("c", &[4]), ("d", &[1, 2])];
        let params = Params::new(shapes.iter().map(|&(n, s)| (n.to_string(), ramp(s, 0.0))).collect()).unwrap();
        let names: Vec<String> = shapes.iter().map(|(n, _)| n.to_string()).collect();
        let groups = vec![ParamGroup { name: "all".into(), params: names, lr_scale: 1.0, wd_scale: 1.0 }];
        let mut full = AdamW::new(AdamWConfig::default(), groups).unwrap();
        for (i, &(name, shape)) in shapes.iter().enumerate().filter(|(_, (n, _))| *n != "c") {
            full.set_moments(name, ramp(shape, 100.0 * i as f32), ramp(shape, -7.0 * i as f32), 3 + i as u64);
        }
        let ranks: Vec<_> = InProcess::group(3, Duration::from_secs(60))
            .into_iter()
            .map(|rank| {
                let (full, params) = (full.clone(), params.clone());
                std::thread::spawn(move || {
                    Zero1::shard(full, &params, &rank).unwrap().gather_state(&params, &rank, 4).unwrap()
                })
            })
            .collect();
        let gathered: Vec<Option<AdamW>> = ranks.into_iter().map(|r| r.join().unwrap()).collect();
        assert!(gathered[1..].iter().all(Option::is_none), "only rank 0 receives the state");
        let (got, want) = (gathered[0].as_ref().unwrap().state_tensors().unwrap(), full.state_tensors().unwrap());
        assert_eq!(got.len(), want.len());
        for ((name, a), (want_name, b)) in got.iter().zip(&want) {
            assert_eq!(name, want_name);
            let same = match a.dtype() {
                DType::I64 => a.to_vec::<i64>().unwrap() == b.to_vec::<i64>().unwrap(),
                _ => a.shape() == b.shape() && a.to_f32_vec().unwrap() == b.to_f32_vec().unwrap(),
            };
            assert!(same, "{name} differs");
        }
    }
}
