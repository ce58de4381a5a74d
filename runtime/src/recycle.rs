//! Host buffers of dropped f32 tensors, kept for later ops' outputs.
//!
//! The allocator maps a large block afresh each time (glibc's mmap threshold is at most
//! 32 MiB), and the first write of each 4 KiB page faults (measured here at ~2.4 µs a page):
//! an op writing a 33 MB map (128 channels at 256²) spent ~20 ms in page faults, more than its
//! own work. Recycled buffers are already mapped. Only buffers of at least `MIN_BYTES` are
//! kept, at most `LIMIT_BYTES` in all (the oldest go first), so the memory held is bounded.
//!
//! Only buffers handed out here come back here: an op that allocates for itself keeps the
//! allocator's own reuse of what it frees, which holding its buffers would take away.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// Smaller buffers come from the allocator's own free lists cheaply.
const MIN_BYTES: usize = 1 << 20;

/// Most bytes held for reuse.
const LIMIT_BYTES: usize = 1 << 30;

struct Pool {
    /// Oldest first.
    buffers: VecDeque<Vec<f32>>,
    bytes: usize,
    /// Addresses of the buffers handed out and not yet given back. (One dropped without
    /// becoming a tensor stays noted, and a later buffer at its address is then kept too:
    /// harmless, it is plain memory.)
    lent: Option<HashSet<usize>>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { buffers: VecDeque::new(), bytes: 0, lent: None });

fn pool() -> MutexGuard<'static, Pool> {
    // A poisoned pool is only a lost cache: buffers are plain memory.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

fn bytes(v: &Vec<f32>) -> usize {
    v.capacity() * size_of::<f32>()
}

/// Keeps a dropped tensor's buffer for reuse if it was handed out here.
pub(crate) fn give(v: Vec<f32>) {
    let size = bytes(&v);
    if size < MIN_BYTES {
        return;
    }
    let mut pool = pool();
    if !pool.lent.get_or_insert_default().remove(&(v.as_ptr() as usize)) || size > LIMIT_BYTES {
        return;
    }
    while pool.bytes + size > LIMIT_BYTES {
        let Some(old) = pool.buffers.pop_front() else { break };
        pool.bytes -= bytes(&old);
    }
    pool.bytes += size;
    pool.buffers.push_back(v);
}

/// A buffer for `len` elements: a kept one that holds them without wasting more than as much
/// again (the tightest), or a fresh one of zeros; large ones are noted as lent.
fn lend(len: usize) -> Vec<f32> {
    if len * size_of::<f32>() < MIN_BYTES {
        return vec![0.0; len];
    }
    let mut pool = pool();
    let fits = |v: &Vec<f32>| (len..=2 * len).contains(&v.capacity());
    let kept = pool.buffers.iter().enumerate().filter(|(_, v)| fits(v)).min_by_key(|(_, v)| v.capacity());
    let v = match kept.map(|(at, _)| at) {
        Some(at) => {
            let v = pool.buffers.remove(at).expect("an index found just now");
            pool.bytes -= bytes(&v);
            v
        }
        None => vec![0.0; len],
    };
    pool.lent.get_or_insert_default().insert(v.as_ptr() as usize);
    v
}

/// `len` zeros.
pub fn zeroed(len: usize) -> Vec<f32> {
    let mut v = lend(len);
    v.clear();
    v.resize(len, 0.0);
    v
}

/// `len` elements of unspecified value (a recycled buffer's old contents, or zeros), for an op
/// that writes every element: it skips zeroing what will be overwritten.
pub fn for_overwrite(len: usize) -> Vec<f32> {
    let mut v = lend(len);
    v.resize(len, 0.0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is global: one test walks through its rules, with sizes no other test uses.
    #[test]
    fn lent_buffers_are_reused_within_their_size_and_the_limit() {
        let len = MIN_BYTES / 4 * 3 + 7;
        let mut v = for_overwrite(len);
        v.fill(1.5);
        let ptr = v.as_ptr();
        give(v);
        // Too large a request for it, then one it fits: the same memory, zeroed or not. (Every
        // buffer lent goes back, as a tensor's does when dropped.)
        let bigger = zeroed(len + 1);
        assert_ne!(bigger.as_ptr(), ptr);
        give(bigger);
        let again = for_overwrite(len - 5);
        assert_eq!((again.as_ptr(), again.len()), (ptr, len - 5));
        give(again);
        let zeros = zeroed(len - 3);
        assert_eq!(zeros.as_ptr(), ptr);
        assert!(zeros.iter().all(|&x| x == 0.0));
        // Less than half its size takes another buffer.
        give(zeros);
        let half = for_overwrite(len / 2 - 1);
        assert_ne!(half.as_ptr(), ptr);
        give(half);
        // A buffer not lent here goes back to the allocator.
        let own = vec![0.0f32; len + 3];
        let own_ptr = own.as_ptr();
        give(own);
        assert!(pool().buffers.iter().all(|v| v.as_ptr() != own_ptr));
        // Past the limit the oldest buffers are let go.
        for _ in 0..LIMIT_BYTES / (len * 4) + 1 {
            give(for_overwrite(len + 11));
        }
        assert!(pool().bytes <= LIMIT_BYTES);
    }
}
