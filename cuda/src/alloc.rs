//! The caching allocator: a tensor's memory goes back to its executor's pool when the last
//! view of it is dropped, and the next request of the same size class takes it from there
//! instead of asking the driver. A generation allocates the same shapes scale after scale and
//! block after block, so after the first block nearly every request is a reuse; on a GPU that
//! keeps allocation off the driver (and its implicit synchronisation) entirely.
//!
//! The pool also keeps the counters a user sizes a batch with: bytes in use, the peak of
//! that, and bytes held in the cache.

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::CudaSlice;

/// Requests are rounded up to a multiple of this, so that nearby sizes share a class (and
/// every block keeps 16-byte vector loads aligned).
const SMALL_GRANULE: usize = 512;
/// Above this size, classes are multiples of `LARGE_GRANULE`: fewer classes for activations
/// that vary slightly in size, at most 1/1024 + 2 MiB of slack.
const LARGE_THRESHOLD: usize = 1 << 20;
const LARGE_GRANULE: usize = 2 << 20;

/// The bytes the pool hands out for a request of `bytes`.
pub fn size_class(bytes: usize) -> usize {
    let granule = if bytes <= LARGE_THRESHOLD { SMALL_GRANULE } else { LARGE_GRANULE };
    bytes.max(1).div_ceil(granule) * granule
}

/// A block of an executor's memory.
pub(crate) enum Memory {
    /// The CPU shim's memory; u128 words give every dtype (and vector loads) their alignment.
    Host(Box<[u128]>),
    Cuda(CudaSlice<u8>),
}

/// Bytes of device memory, as [`crate::Executor::memory`] reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Held by live tensors (size classes, so slightly above the tensors' own bytes).
    pub in_use: usize,
    /// The most `in_use` has been since the executor started or [`crate::Executor::reset_peak`].
    pub peak: usize,
    /// Free blocks kept for reuse.
    pub cached: usize,
}

#[derive(Default)]
struct State {
    /// Free blocks by size class.
    free: BTreeMap<usize, Vec<Memory>>,
    stats: MemoryStats,
}

/// One executor's pool; shared with every buffer it handed out, which gives its memory back
/// on drop.
#[derive(Default)]
pub(crate) struct Pool {
    state: Mutex<State>,
}

impl Pool {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a set of counters and lists that every operation leaves consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A cached block for a request of size class `class`, with its own class: the smallest
    /// free block of at least `class` and at most twice it, counted as in use. A scale's
    /// activations thus reuse the blocks of a larger scale instead of adding their own, for at
    /// most half a block of slack. None: the caller allocates one and hands it to
    /// [`Pool::adopt`].
    pub(crate) fn reuse(&self, class: usize) -> Option<(Memory, usize)> {
        let mut state = self.state();
        let (&found, _) = state.free.range(class..=2 * class).find(|(_, blocks)| !blocks.is_empty())?;
        let memory = state.free.get_mut(&found)?.pop()?;
        state.stats.cached -= found;
        state.count_in(found);
        Some((memory, found))
    }

    /// Wraps a block of size class `class` that the caller got from [`Pool::reuse`] or
    /// allocated (then counted as in use here).
    pub(crate) fn adopt(self: &Arc<Self>, memory: Memory, class: usize, reused: bool) -> Buffer {
        if !reused {
            self.state().count_in(class);
        }
        Buffer { memory: ManuallyDrop::new(memory), class, pool: self.clone() }
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        self.state().stats
    }

    pub(crate) fn reset_peak(&self) {
        let mut state = self.state();
        state.stats.peak = state.stats.in_use;
    }

    /// Frees every cached block (returns them to the driver on a GPU).
    pub(crate) fn empty_cache(&self) {
        let mut state = self.state();
        state.free.clear();
        state.stats.cached = 0;
    }
}

impl State {
    fn count_in(&mut self, class: usize) {
        self.stats.in_use += class;
        self.stats.peak = self.stats.peak.max(self.stats.in_use);
    }
}

/// A tensor's memory: a block of its executor's pool, returned there on drop.
pub(crate) struct Buffer {
    /// Taken (once) by the drop, which hands it to the pool.
    memory: ManuallyDrop<Memory>,
    class: usize,
    pool: Arc<Pool>,
}

impl Buffer {
    pub(crate) fn memory(&self) -> &Memory {
        &self.memory
    }

    pub(crate) fn memory_mut(&mut self) -> &mut Memory {
        &mut self.memory
    }

    /// Bytes of the block (its size class: at least what was asked for).
    pub(crate) fn bytes(&self) -> usize {
        self.class
    }

    /// Whether `pool` is the one this buffer came from (and so the executor it belongs to).
    pub(crate) fn is_from(&self, pool: &Arc<Pool>) -> bool {
        Arc::ptr_eq(&self.pool, pool)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and nothing reads `memory` after this.
        let memory = unsafe { ManuallyDrop::take(&mut self.memory) };
        let mut state = self.pool.state();
        state.stats.in_use -= self.class;
        state.stats.cached += self.class;
        state.free.entry(self.class).or_default().push(memory);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_to_their_granule() {
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(LARGE_THRESHOLD), LARGE_THRESHOLD);
        assert_eq!(size_class(LARGE_THRESHOLD + 1), LARGE_GRANULE);
        assert_eq!(size_class(5 << 20), 6 << 20);
    }
}
