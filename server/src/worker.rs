//! The generation thread: the one model in memory, fed batch after batch from the queue until
//! the queue closes. After each scale it reports progress to every job of the batch, decodes
//! previews for the jobs someone watches, and stops a batch whose jobs were all cancelled.

use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use infinity_models::pipeline::Pipeline;
use infinity_models::text_to_image::{Images, Picture, Prepared, ScaleProgress};
use infinity_runtime::Result;

use crate::jobs::{Job, Jobs, Status};

/// What a PNG says wrote it.
const SOFTWARE: &str = concat!("infinity-server ", env!("CARGO_PKG_VERSION"));

/// Runs batches until the queue closes. `model` names the transformer in the PNGs' metadata.
pub fn run(pipeline: &Pipeline, jobs: &Jobs, model: &str) {
    while let Some(batch) = jobs.next_batch() {
        let start = Instant::now();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run_batch(pipeline, jobs, &batch, model))) {
            let what = panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied());
            fail(jobs, &batch, &format!("internal error: {}", what.unwrap_or("the generation panicked")));
        }
        jobs.batch_done(batch.iter().map(|j| j.request.images).sum(), start.elapsed().as_secs_f64());
    }
}

/// Generates a batch and gives each job its PNGs, its error, or its cancellation.
fn run_batch(pipeline: &Pipeline, jobs: &Jobs, batch: &[Arc<Job>], model: &str) {
    match generate(pipeline, jobs, batch) {
        Ok(Some(made)) => {
            for (job, pictures) in batch.iter().zip(made.pictures) {
                // A cancel that came after the last scale still wins over the images.
                let status = match job.cancel_requested() {
                    Some(reason) => Status::Cancelled { reason },
                    None => pngs(job, &pictures, model).map_or_else(
                        |e| Status::Failed { error: e.to_string() },
                        |images| Status::Completed { images: Arc::new(images) },
                    ),
                };
                jobs.finish(job, status);
            }
        }
        // Every job was cancelled (and so already finished).
        Ok(None) => {}
        Err(e) => fail(jobs, batch, &e.to_string()),
    }
}

fn fail(jobs: &Jobs, batch: &[Arc<Job>], error: &str) {
    for job in batch {
        jobs.finish(job, Status::Failed { error: error.into() });
    }
}

/// One batch through the pipeline; `None` when all its jobs were cancelled on the way.
fn generate(pipeline: &Pipeline, jobs: &Jobs, batch: &[Arc<Job>]) -> Result<Option<Images>> {
    let prepared = pipeline.prepare(batch.iter().map(|j| j.request.clone()).collect())?;
    let refs: Vec<&Prepared> = prepared.iter().collect();
    let schedule = batch[0].size.schedule();
    pipeline.text_to_image(&refs, &schedule, |progress| after_scale(jobs, batch, progress))
}

fn after_scale(jobs: &Jobs, batch: &[Arc<Job>], progress: &ScaleProgress) -> ControlFlow<()> {
    let mut live = 0;
    for (r, job) in batch.iter().enumerate() {
        if job.status().is_final() {
            continue;
        }
        if let Some(reason) = job.cancel_requested() {
            jobs.finish(job, Status::Cancelled { reason });
            continue;
        }
        live += 1;
        // A preview that fails costs the watcher a picture, not the job its images.
        let previews = if job.watched() {
            progress.preview(r).and_then(|p| p.iter().map(|p| p.png(&[])).collect()).unwrap_or_default()
        } else {
            Vec::new()
        };
        job.advance(progress.scale + 1, progress.scales, previews);
    }
    if live == 0 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
}

/// A job's images as PNG files carrying its generation metadata.
fn pngs(job: &Job, pictures: &[Picture], model: &str) -> Result<Vec<Vec<u8>>> {
    pictures.iter().enumerate().map(|(i, p)| p.png(&job.request.png_text(i, job.size, model, SOFTWARE))).collect()
}
