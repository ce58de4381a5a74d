//! Collectives between the ranks of a data-parallel run: each rank holds a full model and
//! its own share of every global batch, and after the backward pass the ranks average their
//! gradients, so every rank takes the same optimizer step — all-reduced, or under ZeRO-1
//! reduce-scattered (each rank updates its part of the parameters) and all-gathered.
//!
//! [`Collective`] is what the trainer sees. [`Single`] is the world of one process; the
//! in-process group ([`InProcess::group`]: ranks as threads, meeting in shared memory) runs
//! data-parallel training in tests and on machines without a GPU interconnect. Averages are
//! summed in rank order, so a run repeats bit for bit whatever order the ranks arrive in.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{Error, Result, Tensor};

/// The ranks of a run, as one of them sees them.
pub trait Collective: Send + Sync {
    /// This rank, in `0..world_size()`.
    fn rank(&self) -> usize;

    fn world_size(&self) -> usize;

    /// Each tensor's mean over the ranks, on the tensor's device. Every rank passes tensors of
    /// the same shapes in the same order. A rank that stopped, or that does not arrive within
    /// the group's timeout, makes the others fail with an error naming it, never hang.
    fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>>;

    /// This rank's part of the ranks' mean of `flat`: a vector of the same length on every
    /// rank, a multiple of the world size, cut into `world_size()` equal parts in rank order
    /// (ZeRO-1's gradient reduction: each rank receives only the part it updates).
    fn reduce_scatter_mean(&self, flat: &Tensor) -> Result<Tensor>;

    /// The ranks' `part`s (vectors of one length) end to end in rank order, on every rank, on
    /// `part`'s device (ZeRO-1's return of the updated parameters).
    fn all_gather(&self, part: &Tensor) -> Result<Tensor>;
}

/// A world of one rank: the mean of one contribution is itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        Ok(tensors.to_vec())
    }

    fn reduce_scatter_mean(&self, flat: &Tensor) -> Result<Tensor> {
        Ok(flat.clone())
    }

    fn all_gather(&self, part: &Tensor) -> Result<Tensor> {
        Ok(part.clone())
    }
}

/// One rank of a group whose ranks are threads of this process.
pub struct InProcess {
    rank: usize,
    hub: Arc<Hub>,
}

struct Hub {
    world: usize,
    timeout: Duration,
    state: Mutex<Round>,
    changed: Condvar,
}

/// The collective being collected. A rank deposits into a round only once every rank has
/// taken the previous round's result.
struct Round {
    /// Each rank's contribution (host f32 per tensor), until the last one arrives.
    deposits: Vec<Option<Deposit>>,
    /// The round's result (or why there is none, for every rank), once every rank has
    /// deposited.
    result: Option<std::result::Result<Arc<Vec<Vec<f32>>>, String>>,
    /// Which ranks have taken this round's result.
    taken: Vec<bool>,
    /// Ranks whose handle was dropped (their thread ended, by success or failure).
    gone: Vec<bool>,
}

impl InProcess {
    /// The `world` ranks of a new group; a rank waits at most `timeout` for the others.
    pub fn group(world: usize, timeout: Duration) -> Vec<InProcess> {
        let hub = Arc::new(Hub {
            world,
            timeout,
            state: Mutex::new(Round {
                deposits: (0..world).map(|_| None).collect(),
                result: None,
                taken: vec![false; world],
                gone: vec![false; world],
            }),
            changed: Condvar::new(),
        });
        (0..world).map(|rank| InProcess { rank, hub: Arc::clone(&hub) }).collect()
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        self.hub.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `ready` holds, failing when a rank it waits for (`missing`) is gone or the
    /// timeout passes.
    fn wait<'a>(
        &self,
        mut state: MutexGuard<'a, Round>,
        ready: impl Fn(&Round) -> bool,
        missing: impl Fn(&Round) -> Vec<usize>,
        op: &'static str,
    ) -> Result<MutexGuard<'a, Round>> {
        let deadline = Instant::now() + self.hub.timeout;
        while !ready(&state) {
            let waiting_for = missing(&state);
            if let Some(&gone) = waiting_for.iter().find(|&&r| state.gone[r]) {
                return Err(collective_error(op, format!("rank {gone} stopped before the {op} of rank {}", self.rank)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(collective_error(
                    op,
                    format!(
                        "rank {} waited {:.0} s for rank(s) {waiting_for:?} to reach the {op}",
                        self.rank,
                        self.hub.timeout.as_secs_f64()
                    ),
                ));
            }
            state = self.hub.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        Ok(state)
    }
}

/// A rank's contribution to a round: which collective it called, and its tensors.
struct Deposit {
    op: &'static str,
    tensors: Vec<Vec<f32>>,
}

fn collective_error(op: &'static str, msg: String) -> Error {
    Error::DeviceFailed { op, device: "in-process group".into(), reason: msg }
}

impl Collective for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.hub.world
    }

    fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        let mine = tensors.iter().map(Tensor::to_f32_vec).collect::<Result<Vec<_>>>()?;
        let means = self.meet("all_reduce_mean", mine, mean_in_rank_order)?;
        tensors
            .iter()
            .zip(means.iter())
            .map(|(t, m)| Tensor::from_vec(m.clone(), t.shape())?.to_device(&t.device()))
            .collect()
    }

    fn reduce_scatter_mean(&self, flat: &Tensor) -> Result<Tensor> {
        let world = self.hub.world;
        if flat.rank() != 1 || !flat.numel().is_multiple_of(world) {
            let msg = format!("a vector whose length is a multiple of the {world} ranks");
            return Err(Error::invalid("reduce_scatter_mean", flat.shape(), msg));
        }
        let means = self.meet("reduce_scatter_mean", vec![flat.to_f32_vec()?], mean_in_rank_order)?;
        let part = flat.numel() / world;
        let mine = means[0][self.rank * part..(self.rank + 1) * part].to_vec();
        Tensor::from_vec(mine, &[part])?.to_device(&flat.device())
    }

    fn all_gather(&self, part: &Tensor) -> Result<Tensor> {
        if part.rank() != 1 {
            return Err(Error::invalid("all_gather", part.shape(), "a vector"));
        }
        let gathered = self.meet("all_gather", vec![part.to_f32_vec()?], |deposits| {
            same_sizes(deposits)?;
            Ok(vec![deposits.iter().flat_map(|d| d[0].iter().copied()).collect()])
        })?;
        let n = gathered[0].len();
        Tensor::from_vec(gathered[0].clone(), &[n])?.to_device(&part.device())
    }
}

impl InProcess {
    /// One round: every rank deposits `mine` for the collective `op`; the last to arrive
    /// computes `combine` of the deposits in rank order; every rank takes the result. Ranks
    /// that called different collectives fail, naming them.
    fn meet(
        &self,
        op: &'static str,
        mine: Vec<Vec<f32>>,
        combine: impl Fn(&[Vec<Vec<f32>>]) -> std::result::Result<Vec<Vec<f32>>, String>,
    ) -> Result<Arc<Vec<Vec<f32>>>> {
        let world = self.hub.world;
        // Every rank must have taken the previous round's result before this one deposits.
        let mut state =
            self.wait(self.lock(), |s| s.result.is_none(), |s| (0..world).filter(|&r| !s.taken[r]).collect(), op)?;
        state.deposits[self.rank] = Some(Deposit { op, tensors: mine });
        if state.deposits.iter().all(Option::is_some) {
            let deposits: Vec<Deposit> = state.deposits.iter_mut().filter_map(Option::take).collect();
            let result = match deposits.iter().position(|d| d.op != deposits[0].op) {
                Some(rank) => Err(format!("rank {rank} called {}, rank 0 {}", deposits[rank].op, deposits[0].op)),
                None => combine(&deposits.into_iter().map(|d| d.tensors).collect::<Vec<_>>()),
            };
            state.result = Some(result.map(Arc::new));
            state.taken = vec![false; world];
            self.hub.changed.notify_all();
        }
        let mut state = self.wait(
            state,
            |s| s.result.is_some(),
            |s| (0..world).filter(|&r| s.deposits[r].is_none()).collect(),
            op,
        )?;
        let result = state.result.clone().unwrap_or_else(|| Err("no result".into()));
        state.taken[self.rank] = true;
        if state.taken.iter().all(|&t| t) {
            state.result = None;
            self.hub.changed.notify_all();
        }
        drop(state);
        result.map_err(|msg| collective_error(op, msg))
    }
}

impl Drop for InProcess {
    /// Tells the ranks waiting for this one that it will not come.
    fn drop(&mut self) {
        self.lock().gone[self.rank] = true;
        self.hub.changed.notify_all();
    }
}

/// Fails, naming the first rank whose tensors' sizes are not rank 0's.
fn same_sizes(deposits: &[Vec<Vec<f32>>]) -> std::result::Result<(), String> {
    let sizes = |d: &Vec<Vec<f32>>| d.iter().map(Vec::len).collect::<Vec<_>>();
    match (1..deposits.len()).find(|&r| sizes(&deposits[r]) != sizes(&deposits[0])) {
        Some(rank) => Err(format!(
            "rank {rank} passed tensors of {:?} elements, rank 0 of {:?}",
            sizes(&deposits[rank]),
            sizes(&deposits[0])
        )),
        None => Ok(()),
    }
}

/// The element-wise mean of the ranks' contributions, summed in rank order.
fn mean_in_rank_order(deposits: &[Vec<Vec<f32>>]) -> std::result::Result<Vec<Vec<f32>>, String> {
    same_sizes(deposits)?;
    let first = &deposits[0];
    let scale = 1.0 / deposits.len() as f32;
    Ok((0..first.len())
        .map(|t| (0..first[t].len()).map(|i| deposits.iter().map(|d| d[t][i]).sum::<f32>() * scale).collect())
        .collect())
}
