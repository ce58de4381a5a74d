//! Data-parallel training: the in-process collective (ranks as threads) averages in rank order
//! and names a rank that stopped or hangs; the transformer's run over 2 ranks takes the same
//! steps as one rank over the same global batches; a run resumes with another number of
//! ranks on the same global data order; a rank that dies stops the others with an error
//! naming it; and the multi-process side without GPUs: torchrun's environment, the rendezvous
//! that hands out NCCL's id, and the launcher's watch over its ranks.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::tiny_transformer_run;
use infinity::autograd::checkpoint;
use infinity::cuda::Executor;
use infinity::models::data::{BatchOrder, Dataset, OrderState};
use infinity::models::image::save_png;
use infinity::models::run::transformer::TransformerRun;
use infinity::models::run::{Outcome, Progress};
use infinity::models::schedule::PixelBudget;
use infinity::runtime::collective::{Collective, InProcess, Single};
use infinity::runtime::io::Weights;
use infinity::runtime::launch::{Launch, Token, rendezvous, supervise};
use infinity::runtime::{DType, Tensor};

const LONG: Duration = Duration::from_secs(120);

/// Each of `world` threads runs `body` with its rank's handle; their results in rank order.
fn on_ranks<T: Send + 'static>(
    world: usize,
    timeout: Duration,
    body: impl Fn(InProcess) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let body = Arc::new(body);
    let threads: Vec<_> = InProcess::group(world, timeout)
        .into_iter()
        .map(|rank| {
            let body = Arc::clone(&body);
            thread::spawn(move || body(rank))
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn ranks_average_in_rank_order_every_round() {
    let means = on_ranks(3, LONG, |rank| {
        let r = rank.rank() as f32;
        (0..40)
            .map(|round| {
                let round = round as f32;
                let a = Tensor::from_vec(vec![r + round, 0.1 * r, -r * round], &[3]).unwrap();
                let b = Tensor::from_vec(vec![r * 1e-3; 4], &[2, 2]).unwrap();
                let out = rank.all_reduce_mean(&[a, b]).unwrap();
                assert_eq!(out[1].shape(), [2, 2]);
                (out[0].to_f32_vec().unwrap(), out[1].to_f32_vec().unwrap())
            })
            .collect::<Vec<_>>()
    });
    for (round, got) in means[0].iter().enumerate() {
        let round = round as f32;
        // Summed in rank order from zero, then scaled: the reference does the same.
        let mean = |f: &dyn Fn(f32) -> f32| (0.0 + f(0.0) + f(1.0) + f(2.0)) * (1.0 / 3.0);
        let expected = vec![mean(&|r| r + round), mean(&|r| 0.1 * r), mean(&|r| -r * round)];
        assert_eq!(got.0, expected, "round {round}");
        assert_eq!(got.1, vec![mean(&|r| r * 1e-3); 4]);
    }
    // Every rank received the very same bits.
    assert!(means.iter().all(|m| *m == means[0]));
}

#[test]
fn a_rank_that_stopped_is_named_at_once() {
    let started = Instant::now();
    let results = on_ranks(3, LONG, |rank| {
        if rank.rank() == 2 {
            // The rank's thread ends without reaching the all-reduce: its handle drops.
            return Ok(Vec::new());
        }
        rank.all_reduce_mean(&[Tensor::from_vec(vec![1.0f32], &[1]).unwrap()])
    });
    for result in &results[..2] {
        let err = result.as_ref().unwrap_err().to_string();
        assert!(err.contains("rank 2 stopped"), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "waited for the timeout instead");
}

#[test]
fn a_rank_that_hangs_is_named_after_the_timeout() {
    let started = Instant::now();
    let results = on_ranks(2, Duration::from_millis(300), |rank| {
        if rank.rank() == 1 {
            thread::sleep(Duration::from_secs(3));
            return Ok(Vec::new());
        }
        rank.all_reduce_mean(&[Tensor::from_vec(vec![1.0f32], &[1]).unwrap()])
    });
    let err = results[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("rank 0 waited 0 s for rank(s) [1]"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn ranks_passing_different_tensors_are_refused() {
    let results = on_ranks(2, LONG, |rank| {
        let n = 2 + rank.rank();
        rank.all_reduce_mean(&[Tensor::from_vec(vec![1.0f32; n], &[n]).unwrap()])
    });
    for result in &results {
        let err = result.as_ref().unwrap_err().to_string();
        assert!(err.contains("rank 1 passed tensors of [3] elements, rank 0 of [2]"), "{err}");
    }
}

/// ZeRO-1's two halves of an all-reduce: reduce-scatter hands each rank its part of the
/// rank-order mean, all-gather puts the ranks' parts end to end on every rank; a length the
/// ranks do not divide, and ranks calling different collectives, are refused, naming them.
#[test]
fn ranks_reduce_scatter_and_all_gather() {
    let results = on_ranks(2, LONG, |rank| {
        let r = rank.rank() as f32;
        let flat = Tensor::from_vec((0..6).map(|i| i as f32 + 10.0 * r).collect(), &[6]).unwrap();
        let part = rank.reduce_scatter_mean(&flat).unwrap().to_f32_vec().unwrap();
        let all = rank.all_gather(&Tensor::from_vec(vec![r, 0.5 - r, 7.0], &[3]).unwrap()).unwrap();
        (part, all.to_f32_vec().unwrap())
    });
    // The mean of i and i + 10 is i + 5 (halving is exact).
    assert_eq!(results[0], (vec![5.0, 6.0, 7.0], vec![0.0, 0.5, 7.0, 1.0, -0.5, 7.0]));
    assert_eq!(results[1], (vec![8.0, 9.0, 10.0], vec![0.0, 0.5, 7.0, 1.0, -0.5, 7.0]));
    assert_eq!(
        Single.reduce_scatter_mean(&Tensor::from_vec(vec![1.0f32, 2.0], &[2]).unwrap()).unwrap().to_f32_vec().unwrap(),
        [1.0, 2.0]
    );

    let uneven =
        on_ranks(2, LONG, |rank| rank.reduce_scatter_mean(&Tensor::from_vec(vec![1.0f32; 3], &[3]).unwrap()).map(drop));
    let err = uneven[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("a multiple of the 2 ranks"), "{err}");
    let mixed = on_ranks(2, LONG, |rank| {
        let v = Tensor::from_vec(vec![1.0f32; 2], &[2]).unwrap();
        if rank.rank() == 0 { rank.all_gather(&v).map(drop) } else { rank.reduce_scatter_mean(&v).map(drop) }
    });
    for result in &mixed {
        let err = result.as_ref().unwrap_err().to_string();
        assert!(err.contains("rank 1 called reduce_scatter_mean, rank 0 all_gather"), "{err}");
    }
}

/// The shares of every rank together are the global batch, in order, for any number of ranks
/// and any resume point: the data order does not depend on the world size.
#[test]
fn every_world_size_shares_out_the_same_global_batches() {
    let dir = temp_dir("order");
    let data = images(&dir, 12);
    let dataset = Dataset::open(&data, PixelBudget::P006M).unwrap();
    let global = |state: OrderState| BatchOrder::new(&dataset, 4, 9, state).unwrap();
    let reference: Vec<Vec<usize>> =
        global(OrderState::default()).take(9).map(|b| b.slots.iter().map(|s| s.item).collect()).collect();
    for ranks in [1, 2, 4] {
        for resume_at in [0, 2, 5] {
            let state = {
                let mut order = global(OrderState::default());
                order.by_ref().take(resume_at).for_each(drop);
                order.state()
            };
            let mut shards: Vec<BatchOrder> = (0..ranks).map(|r| global(state).sharded(r, ranks).unwrap()).collect();
            for expected in &reference[resume_at..] {
                let got: Vec<usize> =
                    shards.iter_mut().flat_map(|s| s.next().unwrap().slots.into_iter().map(|s| s.item)).collect();
                assert_eq!(&got, expected, "{ranks} ranks resumed at batch {resume_at}");
            }
        }
    }
    assert!(global(OrderState::default()).sharded(1, 3).is_err());
    fs::remove_dir_all(&dir).unwrap();
}

/// Two ranks of batch 2, with AdamW replicated or sharded (ZeRO-1), against one rank of
/// batch 2 accumulating 2 micro-batches: the same global batches (one aspect-ratio template,
/// so a global batch of 4 is two consecutive batches of 2), and the same arithmetic — a
/// micro-batch's gradient × ½ summed equals the ranks' gradients summed × ½ exactly, scaling
/// by a power of two being exact — so the parameters after 3 steps are equal bit for bit. Against one rank of batch 4 (one loss over
/// 4 samples instead of two over 2, averaged) only the summation order differs: the first
/// step's loss, taken before any update, within the bound of that reordering.
#[test]
fn two_ranks_take_the_steps_of_one_rank_over_the_global_batch() {
    let dir = temp_dir("equal");
    let data = images(&dir, 4);
    let ranked = dir.join("ranked");
    let results = on_ranks(2, LONG, {
        let (data, out) = (data.clone(), ranked.clone());
        move |rank| tiny_run(&data, &out, 2, 1, 3).train(&rank, &mut Quiet)
    });
    for result in results {
        assert!(matches!(result, Ok(Outcome::Trained { from: 0, to: 3, .. })), "{result:?}");
    }
    // And with AdamW's state sharded over the two ranks (ZeRO-1).
    let sharded = dir.join("sharded");
    on_ranks(2, LONG, {
        let (data, out) = (data.clone(), sharded.clone());
        move |rank| {
            let mut run = tiny_run(&data, &out, 2, 1, 3);
            run.zero1 = true;
            run.train(&rank, &mut Quiet).unwrap()
        }
    });
    let accumulated = dir.join("accumulated");
    tiny_run(&data, &accumulated, 2, 2, 3).train(&Single, &mut Quiet).unwrap();
    let b = last_params(&accumulated);
    for run in [&ranked, &sharded] {
        let a = last_params(run);
        assert_eq!(a.len(), b.len());
        for (name, t) in a.iter() {
            assert!(t.to_f32_vec().unwrap() == b.get(name).unwrap().to_f32_vec().unwrap(), "{name} differs");
        }
        assert_eq!(losses(run), losses(&accumulated));
    }

    let whole = dir.join("whole");
    tiny_run(&data, &whole, 4, 1, 1).train(&Single, &mut Quiet).unwrap();
    let (ranked_loss, whole_loss) = (losses(&ranked)[0], losses(&whole)[0]);
    // Summing n positive f32 terms in another order moves the sum by at most 2(n − 1)ε of
    // it: n = 4 samples × 521 tokens × 32 bits here.
    let bound = 2.0 * (4.0 * 521.0 * 32.0) * f32::EPSILON * whole_loss;
    assert!((ranked_loss - whole_loss).abs() <= bound, "{ranked_loss} vs {whole_loss} (bound {bound})");
    fs::remove_dir_all(&dir).unwrap();
}

/// The same on the shim (the GPU's kernels on the CPU): every rank's step on the device,
/// its gradients averaged through the host, the parameters after a step equal bit for bit to
/// one rank's accumulating 2 micro-batches there (the CPU test above takes 3 steps).
#[test]
fn on_a_device_two_ranks_take_the_steps_of_accumulated_micro_batches() {
    let dir = temp_dir("equal-shim");
    let data = images(&dir, 4);
    let on_shim = |out: &Path, accumulate: usize| {
        let mut run = tiny_run(&data, out, 2, accumulate, 1);
        run.run.device = Executor::shim().device();
        run
    };
    let ranked = dir.join("ranked");
    let runs = [on_shim(&ranked, 1), on_shim(&ranked, 1)];
    let results = on_ranks(2, LONG, move |rank| runs[rank.rank()].train(&rank, &mut Quiet).map(drop));
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let accumulated = dir.join("accumulated");
    on_shim(&accumulated, 2).train(&Single, &mut Quiet).unwrap();
    let (a, b) = (last_params(&ranked), last_params(&accumulated));
    for (name, t) in a.iter() {
        assert!(t.to_f32_vec().unwrap() == b.get(name).unwrap().to_f32_vec().unwrap(), "{name} differs");
    }
    assert_eq!(losses(&ranked), losses(&accumulated));
    fs::remove_dir_all(&dir).unwrap();
}

/// ZeRO-1 over 3 ranks (the flat vector's parts cut through parameters, the last one padded)
/// takes the replicated optimizer's steps bit for bit: AdamW is element-wise, the mean
/// gradients are the same rank-order sums, and the clipping coefficient (every step clipped
/// here) the same: the norm's sums of squares are gathered in f64. Its checkpoints hold the
/// same whole state, so a ZeRO-1 run resumes without it (or with another number of ranks) as
/// any run does. The same in one process.
#[test]
fn zero1_takes_the_replicated_steps_and_saves_the_whole_state() {
    let dir = temp_dir("zero1");
    let data = images(&dir, 3);
    let train = |out: &Path, zero1: bool| {
        let (data, out) = (data.clone(), out.to_path_buf());
        on_ranks(3, LONG, move |rank| {
            let mut run = tiny_run(&data, &out, 1, 1, 3);
            run.zero1 = zero1;
            // Below the gradients' norms (0.085–0.11): every step is clipped.
            run.clip = 0.05;
            run.train(&rank, &mut Quiet).unwrap()
        });
    };
    let (replicated, sharded) = (dir.join("replicated"), dir.join("sharded"));
    train(&replicated, false);
    train(&sharded, true);
    assert_same_runs(&sharded, &replicated);
    // One process (`--zero 1` without --gpus): the world of one, its part the whole vector.
    let alone = |out: &Path, zero1: bool| {
        let mut run = tiny_run(&data, out, 3, 1, 3);
        (run.zero1, run.clip) = (zero1, 0.05);
        run.train(&Single, &mut Quiet).unwrap();
    };
    let (replicated, sharded) = (dir.join("replicated-1"), dir.join("sharded-1"));
    alone(&replicated, false);
    alone(&sharded, true);
    assert_same_runs(&sharded, &replicated);
    fs::remove_dir_all(&dir).unwrap();
}

/// Two run folders hold the same losses, gradient norms, parameters and optimizer state, bit
/// for bit.
fn assert_same_runs(a: &Path, b: &Path) {
    assert_eq!(losses(a), losses(b));
    let grad_norms = |out: &Path| -> Vec<String> {
        let csv = fs::read_to_string(out.join("metrics.csv")).unwrap();
        csv.lines().skip(1).map(|l| l.split(',').nth(3).unwrap().to_string()).collect()
    };
    assert_eq!(grad_norms(a), grad_norms(b));
    let optimizer = |out: &Path| {
        Weights::open(checkpoint::latest(out).unwrap().unwrap().dir.join("optimizer.safetensors")).unwrap()
    };
    for (x, y) in [(last_params(a), last_params(b)), (optimizer(a), optimizer(b))] {
        assert_eq!(x.len(), y.len());
        for (name, t) in x.iter() {
            let other = y.get(name).unwrap();
            let same = match t.dtype() {
                DType::I64 => t.to_vec::<i64>().unwrap() == other.to_vec::<i64>().unwrap(),
                _ => t.to_f32_vec().unwrap() == other.to_f32_vec().unwrap(),
            };
            assert!(same, "{name} differs");
        }
    }
}

/// Saved by 2 ranks of batch 2 after 2 steps, a run resumes on 1 rank of batch 4 or 4 ranks
/// of batch 1 (the same global batch) at the same data position; a global batch of another
/// size is refused, naming it.
#[test]
fn a_run_resumes_with_another_number_of_ranks() {
    let dir = temp_dir("resume");
    let data = images(&dir, 8);
    let saved = dir.join("saved");
    on_ranks(2, LONG, {
        let (data, out) = (data.clone(), saved.clone());
        move |rank| tiny_run(&data, &out, 2, 1, 2).train(&rank, &mut Quiet).unwrap()
    });
    let order_after = |out: &Path| checkpoint::latest(out).unwrap().unwrap().state["order"].clone();
    let unbroken = dir.join("unbroken");
    on_ranks(2, LONG, {
        let (data, out) = (data.clone(), unbroken.clone());
        move |rank| tiny_run(&data, &out, 2, 1, 4).train(&rank, &mut Quiet).unwrap()
    });
    for (ranks, batch) in [(1, 4), (4, 1)] {
        let out = dir.join(format!("resumed-{ranks}"));
        copy_dir(&saved, &out);
        let results = on_ranks(ranks, LONG, {
            let (data, out) = (data.clone(), out.clone());
            move |rank| tiny_run(&data, &out, batch, 1, 4).train(&rank, &mut Quiet).unwrap()
        });
        assert!(results.iter().all(|r| matches!(r, Outcome::Trained { from: 2, to: 4, .. })));
        assert_eq!(order_after(&out), order_after(&unbroken), "{ranks} ranks");
        // The same batches, summed in another order: the losses agree to rounding.
        for (a, b) in losses(&out).iter().zip(losses(&unbroken)) {
            assert!((a - b).abs() <= 1e-4 * b, "{ranks} ranks: {a} vs {b}");
        }
    }
    let err = tiny_run(&data, &saved, 2, 1, 4).train(&Single, &mut Quiet).unwrap_err().to_string();
    assert!(err.contains("a global batch of 4"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

/// A rank that dies mid-run (here its run ends after 1 step of 3) stops the other with an
/// error naming it at the next all-reduce, without waiting for the timeout.
#[test]
fn a_rank_that_dies_stops_the_others_naming_it() {
    let dir = temp_dir("dies");
    let data = images(&dir, 4);
    let out = dir.join("out");
    let started = Instant::now();
    let results = on_ranks(2, LONG, move |rank| {
        let steps = if rank.rank() == 1 { 1 } else { 3 };
        tiny_run(&data, &out, 2, 1, steps).train(&rank, &mut Quiet)
    });
    let err = results[0].as_ref().unwrap_err().to_string();
    assert!(err.contains("rank 1 stopped"), "{err}");
    assert!(started.elapsed() < LONG);
    fs::remove_dir_all(&dir).unwrap();
}

struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: &str, _: u64, _: u64) {}
    fn step(&mut self, _: u64, _: &str) {}
    fn note(&mut self, _: &str) {}
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infinity-dp-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` distinct 256×256 images with captions, all of one template.
fn images(dir: &Path, n: usize) -> PathBuf {
    let data = dir.join("data");
    fs::create_dir_all(&data).unwrap();
    for i in 0..n {
        let rgb: Vec<u8> = (0..256 * 256 * 3).map(|p| ((p * (7 + i) + i * 31) % 251) as u8).collect();
        save_png(&data.join(format!("img{i}.png")), 256, 256, &rgb, &[]).unwrap();
        fs::write(data.join(format!("img{i}.txt")), format!("picture {i} with stripes")).unwrap();
    }
    data
}

/// The tiny run of [`tiny_transformer_run`] with `accumulate` micro-batches, the learning rate
/// constant over 4 steps whatever the run's length (runs resumed at other lengths compare),
/// and without Bitwise Self-Correction and caption dropout, whose draws are each rank's own
/// (as the official trainer's processes draw them), so that runs over different numbers of
/// ranks compare.
fn tiny_run(data: &Path, out: &Path, batch: usize, accumulate: usize, steps: u64) -> TransformerRun {
    let mut run = tiny_transformer_run(data, out, batch, steps);
    run.accumulate = accumulate;
    run.lr.max_iters = 4;
    run
}

fn last_params(out: &Path) -> Weights {
    Weights::open(checkpoint::latest(out).unwrap().unwrap().params_path()).unwrap()
}

/// The loss column of metrics.csv.
fn losses(out: &Path) -> Vec<f32> {
    let csv = fs::read_to_string(out.join("metrics.csv")).unwrap();
    csv.lines().skip(1).map(|l| l.split(',').nth(1).unwrap().parse().unwrap()).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() { copy_dir(&path, &target) } else { fs::copy(&path, &target).map(drop).unwrap() }
    }
}

/// A port nobody listens on yet.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// Rank 0 hands its token to every other rank, whichever starts first.
#[test]
fn the_ranks_meet_and_receive_rank_0s_token() {
    let master = free_address();
    let token: Token = std::array::from_fn(|i| (i * 7 % 256) as u8);
    let threads: Vec<_> = (0..4)
        .map(|rank| {
            let master = master.clone();
            thread::spawn(move || {
                // The others start first and wait for rank 0.
                if rank == 0 {
                    thread::sleep(Duration::from_millis(200));
                }
                rendezvous(&master, rank, 4, (rank == 0).then_some(&token), LONG).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), token);
    }
}

#[test]
fn a_rendezvous_names_what_went_wrong() {
    let token = [1u8; 128];
    let short = Duration::from_millis(300);
    // Rank 2 never comes.
    let master = free_address();
    let joining = {
        let master = master.clone();
        thread::spawn(move || rendezvous(&master, 1, 3, None, LONG))
    };
    let err = rendezvous(&master, 0, 3, Some(&token), short).unwrap_err().to_string();
    assert!(err.contains("rank 0 waited 0 s") && err.contains("for rank(s) [2]"), "{err}");
    // Rank 1 had its token as soon as it came; it learns of the failure from the collective.
    assert_eq!(joining.join().unwrap().unwrap(), token);
    // Rank 1 was started for another world size.
    let master = free_address();
    let other = {
        let master = master.clone();
        thread::spawn(move || rendezvous(&master, 1, 4, None, LONG))
    };
    let err = rendezvous(&master, 0, 3, Some(&token), LONG).unwrap_err().to_string();
    assert!(err.contains("rank 1 was started with WORLD_SIZE=4, rank 0 with 3"), "{err}");
    let _ = other.join();
    // Nobody listens.
    let err = rendezvous(&free_address(), 1, 2, None, short).unwrap_err().to_string();
    assert!(err.contains("rank 1 could not reach rank 0"), "{err}");
}

#[test]
fn the_launch_environment_is_torchruns() {
    let env = |pairs: &'static [(&str, &str)]| {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    };
    let launch = Launch::from_vars(env(&[
        ("RANK", "5"),
        ("WORLD_SIZE", "16"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "node0"),
        ("MASTER_PORT", "29500"),
    ]))
    .unwrap();
    assert_eq!(launch, Some(Launch { rank: 5, world_size: 16, local_rank: 1, master: "node0:29500".into() }));
    assert_eq!(Launch::from_vars(env(&[])).unwrap(), None);
    assert_eq!(Launch::from_vars(env(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(), None);
    let err = |pairs| Launch::from_vars(env(pairs)).unwrap_err().to_string();
    assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "2")]).contains("RANK=2 is not below WORLD_SIZE=2"));
    assert!(err(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("MASTER_ADDR", "x")]).contains("MASTER_PORT is not set"));
    assert!(err(&[("WORLD_SIZE", "two")]).contains("WORLD_SIZE=two is not a count"));
}

/// The launcher's watch: a rank that fails stops the others at once, named; all succeeding is
/// success.
#[test]
fn a_failing_rank_stops_the_launch() {
    let spawn = |script: &str| std::process::Command::new("sh").args(["-c", script]).spawn().unwrap();
    let started = Instant::now();
    let err = supervise(vec![spawn("sleep 30"), spawn("exit 3")]).unwrap_err().to_string();
    assert!(err.contains("rank 1 failed (exit status: 3); the other ranks were stopped"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "the sleeping rank was not stopped");
    supervise(vec![spawn("exit 0"), spawn("sleep 0.2")]).unwrap();
}

/// Real NCCL, when this machine has a GPU and libnccl: a world of one rank joins through the
/// rendezvous and averages on the GPU (the mean of one rank is its own gradient, so the
/// values come back exactly), 2-D and 4-D tensors included, and reduce-scatters and gathers.
#[test]
fn nccl_averages_on_a_gpu_in_a_world_of_one() {
    use infinity::cuda::nccl::{self, Nccl};
    use infinity::cuda::testing::{executors, skip};

    // After the shim comes GPU 0, when there is one.
    let Some(gpu) = executors().get(1) else {
        return skip("NCCL world-size-1 run", "no GPU on this machine");
    };
    if !nccl::available() {
        return skip("NCCL world-size-1 run", "libnccl.so cannot be loaded");
    }
    let id = nccl::unique_id().unwrap();
    let id = rendezvous(&free_address(), 0, 1, Some(&id), LONG).unwrap();
    let world = Nccl::join(Arc::clone(gpu), &id, 0, 1).unwrap();
    let a = Tensor::from_vec((0..12).map(|i| i as f32 * 0.5).collect(), &[3, 4]).unwrap();
    let b = Tensor::from_vec(vec![1.25f32; 16], &[1, 2, 2, 4]).unwrap();
    let means = world.all_reduce_mean(&[a.to_device(&gpu.device()).unwrap(), b.clone()]).unwrap();
    assert_eq!(means[0].shape(), [3, 4]);
    assert_eq!(means[0].to_f32_vec().unwrap(), a.to_f32_vec().unwrap());
    assert_eq!(means[1].to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
    // ZeRO-1's halves: the one rank's part is the whole vector.
    let flat = a.reshape(&[12]).unwrap();
    assert_eq!(world.reduce_scatter_mean(&flat).unwrap().to_f32_vec().unwrap(), flat.to_f32_vec().unwrap());
    assert_eq!(world.all_gather(&flat).unwrap().to_f32_vec().unwrap(), flat.to_f32_vec().unwrap());
}
