//! Sample order: each epoch is a Philox-seeded shuffle of all items, cut into batches of one
//! template each by walking the shuffled order and closing a template's batch whenever it is
//! full. Everything is a pure function of (seed, epoch), so the position (epoch, batch) is the
//! whole state: saving it and restoring it continues with exactly the batches that would
//! have come next.

use infinity_runtime::rng::{Philox, philox_u32};
use infinity_runtime::{Error, Result};
use serde_json::{Value, json};

use super::Dataset;
use super::caption::CAPTION_DRAWS;
use crate::schedule::Template;

/// Caption draws use the upper half of the seed's stream, shuffles the lower half, so the two
/// never share a position.
const CAPTION_STREAM: u64 = 1 << 63;

/// Where a `BatchOrder` stands: the next batch is batch `batch` of epoch `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderState {
    pub epoch: u64,
    pub batch: u64,
}

impl OrderState {
    /// `{"epoch":E,"batch":B}`, for a checkpoint's metadata.
    pub fn to_json(self) -> String {
        json!({ "epoch": self.epoch, "batch": self.batch }).to_string()
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |msg: &str| Error::invalid("data.OrderState.from_json", &[], format!("{msg} in '{text}'"));
        let v: Value = serde_json::from_str(text).map_err(|_| bad("invalid JSON"))?;
        let field = |key: &str| v.get(key).and_then(Value::as_u64).ok_or_else(|| bad(&format!("no integer '{key}'")));
        Ok(OrderState { epoch: field("epoch")?, batch: field("batch")? })
    }
}

/// One slot of a batch: the item, and the stream position its caption is drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub item: usize,
    pub caption_rng: Philox,
}

/// Items of one template, all resized to the same pixel size.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub template: Template,
    pub slots: Vec<Slot>,
}

/// Endless, resumable sequence of batches over a dataset's items.
pub struct BatchOrder {
    seed: u64,
    batch_size: usize,
    /// Bucket index of each item.
    bucket_of: Vec<usize>,
    templates: Vec<Template>,
    state: OrderState,
    /// The batches of `state.epoch`, computed when the epoch is entered.
    epoch: Vec<Batch>,
    /// This rank's share of every batch: (rank, ranks) of a data-parallel run.
    share: (usize, usize),
}

impl BatchOrder {
    /// Starts at `state` (`OrderState::default()` for a fresh run). Every batch holds exactly
    /// `batch_size` items; the remainder of each template in an epoch waits for a later epoch,
    /// whose different shuffle brings those items into full batches.
    pub fn new(dataset: &Dataset, batch_size: usize, seed: u64, state: OrderState) -> Result<Self> {
        let largest = dataset.buckets().iter().map(|b| b.items.len()).max().unwrap_or(0);
        if batch_size == 0 || largest < batch_size {
            return Err(Error::setting(format!(
                "--batch {batch_size}: a batch is {batch_size} images of one aspect-ratio template, and the data's \
                 largest template has {largest}"
            )));
        }
        let mut bucket_of = vec![0; dataset.items().len()];
        for (b, bucket) in dataset.buckets().iter().enumerate() {
            for &i in &bucket.items {
                bucket_of[i] = b;
            }
        }
        let templates = dataset.buckets().iter().map(|b| b.template).collect();
        let mut order = BatchOrder { seed, batch_size, bucket_of, templates, state, epoch: Vec::new(), share: (0, 1) };
        order.epoch = order.epoch_batches(state.epoch);
        Ok(order)
    }

    /// Rank `rank`'s share of a data-parallel run of `ranks`: each batch of this order (the
    /// global batch) yields its `rank`-th slice of batch_size / ranks slots. The order and its
    /// state are the global ones, so a run saved with one number of ranks resumes with
    /// another at the same global batch size.
    pub fn sharded(mut self, rank: usize, ranks: usize) -> Result<Self> {
        if ranks == 0 || rank >= ranks || !self.batch_size.is_multiple_of(ranks) {
            let msg = format!("rank {rank} of {ranks} cannot take an equal share of batches of {}", self.batch_size);
            return Err(Error::setting(msg));
        }
        self.share = (rank, ranks);
        Ok(self)
    }

    /// The position of the next batch.
    pub fn state(&self) -> OrderState {
        self.state
    }

    /// The item indices in the order epoch `epoch` visits them (Fisher–Yates on Philox words).
    pub fn shuffled(&self, epoch: u64) -> Vec<usize> {
        let n = self.bucket_of.len();
        let mut order: Vec<usize> = (0..n).collect();
        let base = epoch * n as u64;
        for i in (1..n).rev() {
            // Multiply-shift maps a word onto 0..=i; its bias (< i / 2^32) is irrelevant here.
            let j = ((u64::from(philox_u32(self.seed, base + i as u64)) * (i as u64 + 1)) >> 32) as usize;
            order.swap(i, j);
        }
        order
    }

    fn epoch_batches(&self, epoch: u64) -> Vec<Batch> {
        let n = self.bucket_of.len() as u64;
        let mut open: Vec<Vec<Slot>> = vec![Vec::new(); self.templates.len()];
        let mut batches = Vec::new();
        for (position, item) in self.shuffled(epoch).into_iter().enumerate() {
            let offset = CAPTION_STREAM + (epoch * n + position as u64) * CAPTION_DRAWS;
            let bucket = self.bucket_of[item];
            open[bucket].push(Slot { item, caption_rng: Philox { seed: self.seed, offset } });
            if open[bucket].len() == self.batch_size {
                batches.push(Batch { template: self.templates[bucket], slots: std::mem::take(&mut open[bucket]) });
            }
        }
        batches
    }
}

impl Iterator for BatchOrder {
    type Item = Batch;

    /// Never ends: after the last batch of an epoch comes the first of the next.
    fn next(&mut self) -> Option<Batch> {
        while self.state.batch >= self.epoch.len() as u64 {
            self.state = OrderState { epoch: self.state.epoch + 1, batch: 0 };
            self.epoch = self.epoch_batches(self.state.epoch);
        }
        let mut batch = self.epoch[self.state.batch as usize].clone();
        self.state.batch += 1;
        let (rank, ranks) = self.share;
        let share = self.batch_size / ranks;
        batch.slots = batch.slots.split_off(rank * share);
        batch.slots.truncate(share);
        Some(batch)
    }
}
