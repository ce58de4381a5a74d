//! The counters behind `GET /metrics`, in Prometheus' text format: jobs by outcome, the job
//! latency histogram, images made (in all and per second over the last minute), batch sizes,
//! and the process's resident memory.

use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::jobs::Status;

/// Upper bounds (seconds) of the latency histogram's buckets, submission to final status.
const LATENCY_BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0];
/// The window of the images-per-second gauge.
const RATE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Metrics(Mutex<Counters>);

#[derive(Default)]
struct Counters {
    submitted: u64,
    refused: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
    images: u64,
    /// Completed jobs' latencies: per bucket (cumulative when written), their sum.
    latency_buckets: [u64; LATENCY_BUCKETS.len()],
    latency_sum: f64,
    batches: u64,
    batch_images: u64,
    batch_seconds: f64,
    /// (when, images) of recent completions.
    recent: VecDeque<(Instant, usize)>,
}

impl Metrics {
    fn counters(&self) -> MutexGuard<'_, Counters> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn submitted(&self) {
        self.counters().submitted += 1;
    }

    pub fn refused(&self) {
        self.counters().refused += 1;
    }

    /// A job reached `status` after `seconds`, having asked for `images`.
    pub fn finished(&self, status: &Status, seconds: f64, images: usize) {
        let mut c = self.counters();
        match status {
            Status::Completed { .. } => {
                c.completed += 1;
                c.images += images as u64;
                c.latency_sum += seconds;
                if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| seconds <= b) {
                    c.latency_buckets[i] += 1;
                }
                let now = Instant::now();
                c.recent.push_back((now, images));
                trim(&mut c.recent, now);
            }
            Status::Failed { .. } => c.failed += 1,
            Status::Cancelled { .. } => c.cancelled += 1,
            Status::Queued | Status::Running { .. } => {}
        }
    }

    /// One generation of `images` took `seconds`.
    pub fn batch(&self, images: usize, seconds: f64) {
        let mut c = self.counters();
        c.batches += 1;
        c.batch_images += images as u64;
        c.batch_seconds += seconds;
    }

    /// The mean seconds of a generation so far (1 before the first).
    pub fn mean_batch_seconds(&self) -> f64 {
        let c = self.counters();
        if c.batches == 0 { 1.0 } else { c.batch_seconds / c.batches as f64 }
    }

    /// The Prometheus text exposition, with the queue's state now.
    pub fn render(&self, queued: usize, running: usize) -> String {
        let mut c = self.counters();
        trim(&mut c.recent, Instant::now());
        let recent_images: usize = c.recent.iter().map(|&(_, n)| n).sum();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in lines {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |v: String| vec![(String::new(), v)];
        metric("infinity_queue_length", "gauge", "Jobs waiting for the model.", &plain(queued.to_string()));
        metric("infinity_running_jobs", "gauge", "Jobs in the generation under way.", &plain(running.to_string()));
        let states = [
            ("submitted", c.submitted),
            ("refused", c.refused),
            ("completed", c.completed),
            ("failed", c.failed),
            ("cancelled", c.cancelled),
        ];
        let by_state: Vec<_> = states.iter().map(|(s, n)| (format!("{{state=\"{s}\"}}"), n.to_string())).collect();
        metric(
            "infinity_jobs_total",
            "counter",
            "Jobs by what became of them (refused: the queue was full).",
            &by_state,
        );
        metric("infinity_images_total", "counter", "Images generated.", &plain(c.images.to_string()));
        let rate = recent_images as f64 / RATE_WINDOW.as_secs_f64();
        metric(
            "infinity_images_per_second",
            "gauge",
            "Images generated per second over the last minute.",
            &plain(format!("{rate:.4}")),
        );
        let mut buckets = Vec::new();
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(c.latency_buckets) {
            cumulative += n;
            buckets.push((format!("_bucket{{le=\"{bound}\"}}"), cumulative.to_string()));
        }
        buckets.push(("_bucket{le=\"+Inf\"}".into(), c.completed.to_string()));
        buckets.push(("_sum".into(), format!("{:.4}", c.latency_sum)));
        buckets.push(("_count".into(), c.completed.to_string()));
        metric("infinity_job_seconds", "histogram", "Seconds from submission to the images, completed jobs.", &buckets);
        metric("infinity_batches_total", "counter", "Generations run.", &plain(c.batches.to_string()));
        metric(
            "infinity_batch_images_total",
            "counter",
            "Images over all generations (their mean is the batching).",
            &plain(c.batch_images.to_string()),
        );
        if let Some(bytes) = resident_bytes() {
            metric(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of the server process.",
                &plain(bytes.to_string()),
            );
        }
        out
    }
}

/// Drops the completions older than the rate's window.
fn trim(recent: &mut VecDeque<(Instant, usize)>, now: Instant) {
    while recent.front().is_some_and(|&(at, _)| now.duration_since(at) > RATE_WINDOW) {
        recent.pop_front();
    }
}

/// The process's resident set, from /proc (Linux); `None` elsewhere.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // 4 KiB pages: Linux's on x86-64 and its default on aarch64.
    Some(pages * 4096)
}
