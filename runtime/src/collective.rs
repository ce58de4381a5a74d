//! Collectives between the ranks of a data-parallel run: each rank holds a full model and
//! its own share of every global batch, and after the backward pass the ranks average their
//! gradients, so every rank takes the same optimizer step.
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

/// The all-reduce being collected. A rank deposits into a round only once every rank has
/// taken the previous round's result.
struct Round {
    /// Each rank's contribution (host f32 per tensor), until the last one arrives.
    deposits: Vec<Option<Vec<Vec<f32>>>>,
    /// The round's means (or why there are none, for every rank), once every rank has
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
                deposits: vec![None; world],
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
    ) -> Result<MutexGuard<'a, Round>> {
        let deadline = Instant::now() + self.hub.timeout;
        while !ready(&state) {
            let waiting_for = missing(&state);
            if let Some(&gone) = waiting_for.iter().find(|&&r| state.gone[r]) {
                return Err(collective_error(format!(
                    "rank {gone} stopped before the all-reduce of rank {}",
                    self.rank
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(collective_error(format!(
                    "rank {} waited {:.0} s for rank(s) {waiting_for:?} to reach the all-reduce",
                    self.rank,
                    self.hub.timeout.as_secs_f64()
                )));
            }
            state = self.hub.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        Ok(state)
    }
}

fn collective_error(msg: String) -> Error {
    Error::DeviceFailed { op: "all_reduce", device: "in-process group".into(), reason: msg }
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
        let world = self.hub.world;
        // Every rank must have taken the previous round's result before this one deposits.
        let mut state =
            self.wait(self.lock(), |s| s.result.is_none(), |s| (0..world).filter(|&r| !s.taken[r]).collect())?;
        state.deposits[self.rank] = Some(mine);
        if state.deposits.iter().all(Option::is_some) {
            let deposits: Vec<Vec<Vec<f32>>> = state.deposits.iter_mut().filter_map(Option::take).collect();
            state.result = Some(mean_in_rank_order(&deposits).map(Arc::new));
            state.taken = vec![false; world];
            self.hub.changed.notify_all();
        }
        let mut state =
            self.wait(state, |s| s.result.is_some(), |s| (0..world).filter(|&r| s.deposits[r].is_none()).collect())?;
        let means = state.result.clone().unwrap_or_else(|| Err("no result".into()));
        state.taken[self.rank] = true;
        if state.taken.iter().all(|&t| t) {
            state.result = None;
            self.hub.changed.notify_all();
        }
        drop(state);
        let means = means.map_err(collective_error)?;
        tensors
            .iter()
            .zip(means.iter())
            .map(|(t, m)| Tensor::from_vec(m.clone(), t.shape())?.to_device(&t.device()))
            .collect()
    }
}

impl Drop for InProcess {
    /// Tells the ranks waiting for this one that it will not come.
    fn drop(&mut self) {
        self.lock().gone[self.rank] = true;
        self.hub.changed.notify_all();
    }
}

/// The element-wise mean of the ranks' contributions, summed in rank order.
fn mean_in_rank_order(deposits: &[Vec<Vec<f32>>]) -> std::result::Result<Vec<Vec<f32>>, String> {
    let first = &deposits[0];
    let sizes = |d: &Vec<Vec<f32>>| d.iter().map(Vec::len).collect::<Vec<_>>();
    if let Some(rank) = (1..deposits.len()).find(|&r| sizes(&deposits[r]) != sizes(first)) {
        return Err(format!(
            "rank {rank} passed tensors of {:?} elements, rank 0 of {:?}",
            sizes(&deposits[rank]),
            sizes(first)
        ));
    }
    let scale = 1.0 / deposits.len() as f32;
    Ok((0..first.len())
        .map(|t| (0..first[t].len()).map(|i| deposits.iter().map(|d| d[t][i]).sum::<f32>() * scale).collect())
        .collect())
}
