//! Gradients averaged over the ranks in buckets while the backward pass still runs, as PyTorch
//! DDP does. The parameters are grouped, from the last one back, into buckets of about
//! [`BUCKET_BYTES`]; the backward pass hands over each gradient as soon as it is final (the
//! last layers' first, see [`crate::Tracked::backward`]), and a bucket whose gradients are all
//! there goes to a communication thread, which all-reduces it while the pass goes on. Buckets
//! go in one fixed order on every rank, as the collectives require. A parameter that this
//! rank's batch did not reach contributes zeros, known only at the end of the pass, so its
//! bucket and the ones after it wait for the end; it has a mean only if some rank's batch
//! reached it.

use std::collections::HashMap;
use std::sync::mpsc::{Sender, channel};
use std::thread::{Scope, ScopedJoinHandle};

use infinity_runtime::collective::Collective;
use infinity_runtime::{DType, Device, Error, Result, Tensor};

use crate::{GradStore, Params};

/// Gradient bytes per bucket (DDP's default): large enough to reach the link's bandwidth,
/// small enough that the first bucket is ready early in the backward pass.
pub const BUCKET_BYTES: usize = 25 << 20;

/// One step's gradients of this rank on their way to the ranks' mean.
pub struct BucketedMean<'scope> {
    /// Each parameter's name, shape and device, in `Params` order.
    params: Vec<(String, Vec<usize>, Device)>,
    index: HashMap<String, usize>,
    /// Each bucket's parameters, in the order the buckets go.
    buckets: Vec<Vec<usize>>,
    /// This rank's final gradient of each parameter, until its bucket goes.
    ready: Vec<Option<Tensor>>,
    /// Whether this rank's batch reached each parameter.
    reached: Vec<bool>,
    /// The next bucket to go.
    next: usize,
    to_comm: Option<Sender<Vec<Tensor>>>,
    comm: ScopedJoinHandle<'scope, Result<Vec<Vec<Tensor>>>>,
}

impl<'scope> BucketedMean<'scope> {
    /// Buckets of about `bucket_bytes` over `params`, and the communication thread (in `scope`)
    /// that all-reduces them over `world` in order.
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        params: &Params,
        world: &'env dyn Collective,
        bucket_bytes: usize,
    ) -> Self {
        let params: Vec<_> =
            params.iter().map(|(name, t)| (name.to_string(), t.shape().to_vec(), t.device())).collect();
        let mut buckets: Vec<Vec<usize>> = Vec::new();
        let mut bytes = 0;
        for (i, (_, shape, _)) in params.iter().enumerate().rev() {
            let size = shape.iter().product::<usize>() * size_of::<f32>();
            match buckets.last_mut() {
                Some(bucket) if bytes + size <= bucket_bytes => bucket.push(i),
                _ => {
                    buckets.push(vec![i]);
                    bytes = 0;
                }
            }
            bytes += size;
        }
        let (to_comm, from_main) = channel::<Vec<Tensor>>();
        let comm = scope.spawn(move || from_main.iter().map(|bucket| world.all_reduce_mean(&bucket)).collect());
        let index = params.iter().enumerate().map(|(i, (name, ..))| (name.clone(), i)).collect();
        let n = params.len();
        BucketedMean {
            params,
            index,
            buckets,
            ready: vec![None; n],
            reached: vec![false; n],
            next: 0,
            to_comm: Some(to_comm),
            comm,
        }
    }

    /// The final gradient of parameter `name` on this rank; the buckets it completes go.
    pub fn push(&mut self, name: &str, grad: Tensor) -> Result<()> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| Error::invalid("bucketed_mean", grad.shape(), format!("'{name}' is not a parameter")))?;
        if grad.shape() != self.params[i].1 {
            return Err(Error::ShapeMismatch {
                op: "bucketed_mean",
                lhs: self.params[i].1.clone(),
                rhs: grad.shape().to_vec(),
            });
        }
        self.ready[i] = Some(grad);
        self.reached[i] = true;
        while self.next < self.buckets.len() && self.buckets[self.next].iter().all(|&p| self.ready[p].is_some()) {
            self.send_next();
        }
        Ok(())
    }

    /// Buckets gone so far: how much of the reduction was under way before the pass ended.
    pub fn sent(&self) -> usize {
        self.next
    }

    fn send_next(&mut self) {
        let bucket = self.buckets[self.next].iter().map(|&p| self.ready[p].take()).collect::<Option<Vec<_>>>();
        let bucket = bucket.expect("a bucket goes once all its gradients are ready");
        self.next += 1;
        // A send fails only when the thread has ended, on a collective's error, which `finish`
        // reports.
        let _ = self.to_comm.as_ref().map(|to| to.send(bucket));
    }

    /// The end of the backward pass: the parameters this rank's batch did not reach contribute
    /// zeros, the remaining buckets go, and the means come back — with an entry for each
    /// parameter some rank's batch reached.
    pub fn finish(mut self, world: &dyn Collective) -> Result<GradStore> {
        for (i, (_, shape, device)) in self.params.iter().enumerate() {
            if !self.reached[i] {
                self.ready[i] = Some(Tensor::zeros_on(shape, DType::F32, device)?);
            }
        }
        while self.next < self.buckets.len() {
            self.send_next();
        }
        drop(self.to_comm.take());
        let means = self
            .comm
            .join()
            .map_err(|_| Error::invalid("bucketed_mean", &[], "the communication thread panicked"))??;
        let reached: Vec<f32> = self.reached.iter().map(|&r| f32::from(u8::from(r))).collect();
        let reached = world.all_reduce_mean(&[Tensor::from_vec(reached, &[self.params.len()])?])?[0].to_f32_vec()?;
        let mut by_param: Vec<Option<Tensor>> = vec![None; self.params.len()];
        for (bucket, means) in self.buckets.iter().zip(means) {
            for (&p, mean) in bucket.iter().zip(means) {
                by_param[p] = Some(mean);
            }
        }
        let mut store = GradStore::default();
        for ((name, ..), (mean, reached)) in self.params.iter().zip(by_param.into_iter().zip(reached)) {
            if let (Some(mean), true) = (mean, reached > 0.0) {
                store.insert(name.clone(), mean);
            }
        }
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use infinity_runtime::collective::InProcess;

    use super::*;

    /// Two ranks, 36-byte buckets over five parameters: [p3, p2] and [p1, p0, never]. The
    /// first bucket goes as soon as its two gradients are in, in either order, before the
    /// pass ends; p0, which rank 1's batch did not reach, is averaged with zeros there; a
    /// parameter no rank reached gets no mean; every rank receives the same bits.
    #[test]
    fn buckets_go_when_full_and_average_in_rank_order() {
        const SHAPES: [(&str, &[usize]); 5] =
            [("never", &[2]), ("p0", &[3]), ("p1", &[2, 2]), ("p2", &[5]), ("p3", &[1])];
        let params =
            Params::new(SHAPES.iter().map(|&(n, s)| (n.to_string(), Tensor::zeros(s, DType::F32))).collect()).unwrap();
        let grad = |name: &str, rank: usize| {
            let (i, &(_, shape)) = SHAPES.iter().enumerate().find(|(_, (n, _))| *n == name).unwrap();
            let n = shape.iter().product::<usize>();
            Tensor::from_vec((0..n).map(|j| (i * 7 + j) as f32 * 0.25 + 10.0 * rank as f32).collect(), shape).unwrap()
        };
        let means: Vec<(usize, GradStore)> = InProcess::group(2, Duration::from_secs(60))
            .into_iter()
            .map(|rank| {
                let params = params.clone();
                std::thread::spawn(move || {
                    let r = rank.rank();
                    std::thread::scope(|scope| {
                        let mut mean = BucketedMean::start(scope, &params, &rank, 36);
                        let first = if r == 0 { ["p3", "p2"] } else { ["p2", "p3"] };
                        for name in first {
                            mean.push(name, grad(name, r)).unwrap();
                        }
                        let sent = mean.sent();
                        let rest: &[&str] = if r == 0 { &["p1", "p0"] } else { &["p1"] };
                        for &name in rest {
                            mean.push(name, grad(name, r)).unwrap();
                        }
                        (sent, mean.finish(&rank).unwrap())
                    })
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for (sent, store) in &means {
            assert_eq!(*sent, 1, "the first bucket went during the pass");
            assert!(store.get("never").is_none());
            for name in ["p0", "p1", "p2", "p3"] {
                let (g0, g1) = (grad(name, 0).to_f32_vec().unwrap(), grad(name, 1).to_f32_vec().unwrap());
                let want: Vec<f32> = if name == "p0" {
                    g0.iter().map(|&a| (0.0 + a + 0.0) * 0.5).collect()
                } else {
                    g0.iter().zip(&g1).map(|(&a, &b)| (0.0 + a + b) * 0.5).collect()
                };
                assert_eq!(store.get(name).unwrap().to_f32_vec().unwrap(), want, "{name}");
                assert_eq!(store.get(name).unwrap().shape(), grad(name, 0).shape());
            }
        }
    }
}
