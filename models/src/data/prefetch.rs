//! Batches loaded ahead on a worker thread: while the device runs one step, the next batches'
//! images are read, decoded and resized on the host. The worker walks the batch order; each
//! batch comes with the order's state after it, which is what a checkpoint saves, so the
//! batches loaded ahead of a checkpoint are loaded again when the run resumes, not skipped.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use infinity_runtime::{Error, Result, Tensor};

use super::{BatchOrder, Dataset, OrderState, Samples};

/// One loaded batch.
pub struct Loaded {
    /// The batch's captions and items (its images taken out into `images`).
    pub samples: Samples,
    /// (B, 3, H, W) in [-1, 1]: the images that loaded.
    pub images: Tensor,
    /// The order's state after this batch: where a run saved now resumes.
    pub order: OrderState,
}

/// The batch loader: a worker thread that keeps up to `ahead` loaded batches waiting for its
/// consumer (and loads one more meanwhile).
pub struct Prefetch {
    batches: Option<Receiver<Result<Loaded>>>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetch {
    /// Starts loading the batches of `order` from `dataset`.
    pub fn start(dataset: Arc<Dataset>, mut order: BatchOrder, ahead: usize) -> Self {
        let (send, batches) = sync_channel(ahead.max(1));
        let worker = std::thread::spawn(move || {
            loop {
                let loaded = next_loaded(&dataset, &mut order);
                let failed = loaded.is_err();
                // A dropped receiver (the run ended) stops the worker, as does an error.
                if send.send(loaded).is_err() || failed {
                    return;
                }
            }
        });
        Prefetch { batches: Some(batches), worker: Some(worker) }
    }

    /// The next batch with at least one image (batches none of whose images load are
    /// skipped); an error when no image of the dataset loads at all.
    pub fn next_batch(&mut self) -> Result<Loaded> {
        match self.batches.as_ref().map(Receiver::recv) {
            Some(Ok(loaded)) => loaded,
            // The worker sends its error before it stops, so it stopped by panicking.
            _ => Err(Error::invalid("prefetch", &[], "the batch loader stopped")),
        }
    }
}

impl Drop for Prefetch {
    /// Stops the worker: without a receiver its next send fails.
    fn drop(&mut self) {
        drop(self.batches.take());
        if let Some(worker) = self.worker.take() {
            // A worker that panicked has said so on stderr; there is nothing left to do.
            let _ = worker.join();
        }
    }
}

fn next_loaded(dataset: &Dataset, order: &mut BatchOrder) -> Result<Loaded> {
    loop {
        // The order never ends: after an epoch's last batch comes the next epoch's first.
        let batch = order.next().ok_or_else(|| Error::invalid("prefetch", &[], "the batch order ended"))?;
        let mut samples = dataset.load(&batch)?;
        if let Some(images) = samples.images.take() {
            return Ok(Loaded { samples, images, order: order.state() });
        }
        // Every image of the batch failed to load (each is logged): no step to take, and no
        // step ever if that holds for the whole dataset.
        if dataset.all_images_skipped() {
            return Err(Error::format(dataset.dir(), "no image of the dataset could be loaded"));
        }
    }
}
