//! Jobs and their queue: what was asked, where each job stands, the events its watchers see,
//! and how queued jobs are grouped into one generation.
//!
//! The HTTP handlers submit, look up and cancel jobs; the generation thread takes batches with
//! [`Jobs::next_batch`] and reports through [`Job::advance`] and [`Jobs::finish`]. Finished jobs
//! (and their images) are kept for the retention time, then forgotten.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use infinity_models::text_to_image::{ImageSize, Request};
use tokio::sync::{broadcast, watch};

use crate::metrics::Metrics;

/// Events a job's watchers may miss before they are dropped (previews of a slow reader).
const EVENT_BACKLOG: usize = 64;
/// Finished jobs kept at most, and their images' bytes at most, whatever their age: the
/// images are held in memory.
const MAX_FINISHED: usize = 256;
const MAX_FINISHED_BYTES: usize = 512 << 20;

/// Where a job stands.
#[derive(Clone, Debug)]
pub enum Status {
    Queued,
    /// `scale` of `scales` done (0 while its prompts are encoded).
    Running {
        scale: usize,
        scales: usize,
    },
    /// The PNG files, one per image.
    Completed {
        images: Arc<Vec<Vec<u8>>>,
    },
    Failed {
        error: String,
    },
    Cancelled {
        reason: String,
    },
}

impl Status {
    pub fn name(&self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running { .. } => "running",
            Status::Completed { .. } => "completed",
            Status::Failed { .. } => "failed",
            Status::Cancelled { .. } => "cancelled",
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self, Status::Completed { .. } | Status::Failed { .. } | Status::Cancelled { .. })
    }
}

/// What a job's watchers are told as it runs; the final status comes through [`Job::watch`].
#[derive(Clone, Debug)]
pub struct ScaleEvent {
    pub scale: usize,
    pub scales: usize,
    /// PNG previews of the images as they stand, when someone was watching.
    pub previews: Arc<Vec<Vec<u8>>>,
}

/// One request for images, from submission until it is forgotten.
pub struct Job {
    pub id: String,
    /// Unix seconds at submission.
    pub created: u64,
    pub request: Request,
    pub size: ImageSize,
    submitted: Instant,
    /// Why the job was asked to stop, once it was.
    cancel: Mutex<Option<String>>,
    status: watch::Sender<Status>,
    events: broadcast::Sender<ScaleEvent>,
}

impl Job {
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// The status now and each change after it.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// The scale events from now on.
    pub fn events(&self) -> broadcast::Receiver<ScaleEvent> {
        self.events.subscribe()
    }

    /// Whether anyone follows the job's events: previews are made only then.
    pub fn watched(&self) -> bool {
        self.events.receiver_count() > 0
    }

    /// Why the job was asked to stop, if it was: the generation thread stops it at its next
    /// scale, or drops its images if they were done meanwhile.
    pub fn cancel_requested(&self) -> Option<String> {
        self.cancel.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn request_cancel(&self, reason: &str) {
        self.cancel.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(|| reason.to_string());
    }

    /// The generation thread's report after a scale.
    pub fn advance(&self, scale: usize, scales: usize, previews: Vec<Vec<u8>>) {
        self.status.send_if_modified(|s| {
            let running = !s.is_final();
            if running {
                *s = Status::Running { scale, scales };
            }
            running
        });
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(ScaleEvent { scale, scales, previews: Arc::new(previews) });
    }

    /// Seconds since submission.
    pub fn age(&self) -> f64 {
        self.submitted.elapsed().as_secs_f64()
    }
}

/// Why a job was not accepted.
#[derive(Debug)]
pub enum Refusal {
    /// The queue holds its limit; try again in about this many seconds.
    Full {
        retry_after: u64,
    },
    ShuttingDown,
}

/// Queue limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Jobs waiting (not running) at most.
    pub max_queue: usize,
    /// Images one generation holds at most (a job asking for more runs alone).
    pub max_batch: usize,
    /// How long finished jobs and their images are kept.
    pub retention: Duration,
}

/// Told of every job as it ends (the server binary prints a line per job); called outside the
/// queue's lock, and a panic in it is contained.
pub type Reporter = Arc<dyn Fn(&Job, &Status) + Send + Sync>;

/// Every job the server knows, the queue, and the counters.
pub struct Jobs {
    registry: Mutex<Registry>,
    wake: Condvar,
    limits: Limits,
    report: Option<Reporter>,
    pub metrics: Metrics,
}

#[derive(Default)]
struct Registry {
    jobs: HashMap<String, Arc<Job>>,
    queue: VecDeque<Arc<Job>>,
    /// Finished jobs, oldest first: when, which, the bytes of their images.
    finished: VecDeque<(Instant, String, usize)>,
    finished_bytes: usize,
    running: usize,
    closed: bool,
}

impl Jobs {
    pub fn new(limits: Limits, report: Option<Reporter>) -> Self {
        Jobs { registry: Mutex::default(), wake: Condvar::new(), limits, report, metrics: Metrics::default() }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic never happens while the lock is held; should one, the data is still whole.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a request.
    pub fn submit(&self, request: Request, size: ImageSize) -> Result<Arc<Job>, Refusal> {
        let mut reg = self.registry();
        if reg.closed {
            return Err(Refusal::ShuttingDown);
        }
        if reg.queue.len() >= self.limits.max_queue {
            let batches = reg.queue.len().div_ceil(self.limits.max_batch.max(1)) + 1;
            let retry_after = (self.metrics.mean_batch_seconds() * batches as f64).ceil().max(1.0) as u64;
            self.metrics.refused();
            return Err(Refusal::Full { retry_after });
        }
        let job = Arc::new(Job {
            id: new_id(),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            request,
            size,
            submitted: Instant::now(),
            cancel: Mutex::new(None),
            status: watch::Sender::new(Status::Queued),
            events: broadcast::Sender::new(EVENT_BACKLOG),
        });
        self.prune(&mut reg);
        reg.jobs.insert(job.id.clone(), job.clone());
        reg.queue.push_back(job.clone());
        self.metrics.submitted();
        drop(reg);
        self.wake.notify_all();
        Ok(job)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Job>> {
        let mut reg = self.registry();
        self.prune(&mut reg);
        reg.jobs.get(id).cloned()
    }

    /// A queued job's place in the queue, 1 for the next to run.
    pub fn position(&self, job: &Job) -> Option<usize> {
        self.registry().queue.iter().position(|j| j.id == job.id).map(|i| i + 1)
    }

    /// Jobs waiting, and jobs in the running generation.
    pub fn counts(&self) -> (usize, usize) {
        let reg = self.registry();
        (reg.queue.len(), reg.running)
    }

    /// Cancels a job: a queued one at once, a running one at its next scale. False when it had
    /// already finished.
    pub fn cancel(&self, job: &Arc<Job>, reason: &str) -> bool {
        let mut reg = self.registry();
        if job.status().is_final() {
            return false;
        }
        job.request_cancel(reason);
        if let Some(i) = reg.queue.iter().position(|j| j.id == job.id) {
            reg.queue.remove(i);
            let status = Status::Cancelled { reason: reason.into() };
            if self.record(&mut reg, job, status.clone()) {
                drop(reg);
                self.tell(job, &status);
            }
        }
        true
    }

    /// Records a job's final status (once; later calls are ignored) and tells its watchers.
    pub fn finish(&self, job: &Job, status: Status) {
        let recorded = self.record(&mut self.registry(), job, status.clone());
        if recorded {
            self.tell(job, &status);
        }
    }

    /// [`Jobs::finish`] under the registry's lock, which makes the check and the change one
    /// step; false when the job had already finished.
    fn record(&self, reg: &mut Registry, job: &Job, status: Status) -> bool {
        if job.status().is_final() {
            return false;
        }
        let bytes = match &status {
            Status::Completed { images } => images.iter().map(Vec::len).sum(),
            _ => 0,
        };
        self.metrics.finished(&status, job.age(), job.request.images);
        reg.finished.push_back((Instant::now(), job.id.clone(), bytes));
        reg.finished_bytes += bytes;
        job.status.send_replace(status);
        self.prune(reg);
        true
    }

    /// The reporter's call for a job that just ended; whatever goes wrong in it stays there.
    fn tell(&self, job: &Job, status: &Status) {
        if let Some(report) = &self.report {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| report(job, status)));
        }
    }

    /// Waits for work and takes the next batch: the oldest queued job and the queued jobs of
    /// the same size after it, while their images fit in `max_batch`. `None` once the queue is
    /// closed and empty.
    pub fn next_batch(&self) -> Option<Vec<Arc<Job>>> {
        let mut reg = self.registry();
        loop {
            if let Some(first) = reg.queue.pop_front() {
                let mut images = first.request.images;
                let mut batch = vec![first];
                let mut i = 0;
                while i < reg.queue.len() {
                    let job = &reg.queue[i];
                    if job.size == batch[0].size && images + job.request.images <= self.limits.max_batch {
                        images += job.request.images;
                        batch.extend(reg.queue.remove(i));
                    } else {
                        i += 1;
                    }
                }
                reg.running = batch.len();
                for job in &batch {
                    job.status.send_replace(Status::Running { scale: 0, scales: job.size.schedule().num_scales() });
                }
                return Some(batch);
            }
            reg.running = 0;
            if reg.closed {
                return None;
            }
            reg = self.wake.wait(reg).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The generation thread is done with its batch.
    pub fn batch_done(&self, images: usize, seconds: f64) {
        self.registry().running = 0;
        self.metrics.batch(images, seconds);
    }

    /// Refuses new jobs and cancels the queued ones; the running generation finishes.
    pub fn close(&self) {
        let mut reg = self.registry();
        reg.closed = true;
        let queued: Vec<Arc<Job>> = reg.queue.drain(..).collect();
        let status = Status::Cancelled { reason: "the server is shutting down".into() };
        let ended: Vec<&Arc<Job>> = queued
            .iter()
            .filter(|job| {
                job.request_cancel("the server is shutting down");
                self.record(&mut reg, job, status.clone())
            })
            .collect();
        drop(reg);
        self.wake.notify_all();
        for job in ended {
            self.tell(job, &status);
        }
    }

    /// Forgets finished jobs past the retention time, and the oldest beyond [`MAX_FINISHED`]
    /// jobs or [`MAX_FINISHED_BYTES`] of images.
    fn prune(&self, reg: &mut Registry) {
        while let Some((at, _, _)) = reg.finished.front() {
            let over = reg.finished.len() > MAX_FINISHED || reg.finished_bytes > MAX_FINISHED_BYTES;
            if at.elapsed() < self.limits.retention && !over {
                break;
            }
            if let Some((_, id, bytes)) = reg.finished.pop_front() {
                reg.jobs.remove(&id);
                reg.finished_bytes -= bytes;
            }
        }
    }
}

/// 128 random bits in hex: a job's id is also the capability to fetch its images.
fn new_id() -> String {
    // RandomState draws its keys from the operating system's randomness.
    let half = || RandomState::new().hash_one(Instant::now());
    format!("{:016x}{:016x}", half(), half())
}
