//! `infinity-server` under load, serving the bundled default model (256², 7 scales) on
//! loopback: one request's latency, the batching speedup (k same-size requests at once against
//! k one after another), and closed-loop load from 1, 4 and 8 clients (requests/s, p50/p99,
//! resident memory). The ceiling is the model's own throughput at the batch size, measured as
//! one job of `--max-batch` images.
//!
//! `cargo bench --bench server` (BENCH_SECONDS sets each load run's length, default 10). Under
//! `cargo test` (no `--bench` argument) every step runs once, briefly, as a smoke test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use infinity::server::client::{Response, load, request};
use serde_json::json;

const MAX_BATCH: usize = 4;

struct Served(Child, SocketAddr);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_infinity-server"))
        .args(["--port", "0", "--max-batch", &MAX_BATCH.to_string(), "--max-queue", "64"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("start infinity-server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .find_map(|l| l.ok()?.strip_prefix("listening on http://").map(|a| a.parse().unwrap()))
        .expect("the server did not start");
    // Its per-job lines are read (and dropped), so that the pipe never fills.
    std::thread::spawn(move || lines.for_each(drop));
    Served(child, addr)
}

fn generate(addr: SocketAddr, body: &serde_json::Value) -> Response {
    let r = request(addr, "POST", "/v1/images/generations", &[], body.to_string().as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

fn rss_mib(addr: SocketAddr) -> f64 {
    let text = request(addr, "GET", "/metrics", &[], b"").unwrap().text();
    let line = text.lines().find(|l| l.starts_with("process_resident_memory_bytes")).unwrap_or("x 0");
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap_or(0.0) / 1048576.0
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let seconds: u64 = match bench {
        true => std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10),
        false => 1,
    };
    let server = start();
    let addr = server.1;
    let body = |seed: u64| json!({"prompt": "red apple", "seed": seed});
    generate(addr, &body(0)); // warm-up

    let single: Vec<f64> = (1..=5)
        .map(|seed| {
            let t = Instant::now();
            generate(addr, &body(seed));
            t.elapsed().as_secs_f64()
        })
        .collect();
    let mut sorted = single.clone();
    sorted.sort_by(f64::total_cmp);
    println!("one request (1 image, 256², cfg 3): median {:.3} s over 5", sorted[2]);

    let t = Instant::now();
    generate(addr, &json!({"prompt": "red apple", "n": MAX_BATCH, "seed": 1}));
    let batch_seconds = t.elapsed().as_secs_f64();
    println!(
        "ceiling: one job of {MAX_BATCH} images in {batch_seconds:.3} s = {:.2} images/s (1 image alone: {:.2} images/s)",
        MAX_BATCH as f64 / batch_seconds,
        1.0 / sorted[2]
    );

    let t = Instant::now();
    for seed in 0..MAX_BATCH as u64 {
        generate(addr, &body(seed));
    }
    let sequential = t.elapsed().as_secs_f64();
    // Behind a job of another size, so that all of them wait in the queue and run as one
    // generation (from an idle server the first would start alone); timed from that job's end.
    let busy = std::thread::spawn(move || {
        generate(addr, &json!({"prompt": "fire", "size": "256x512", "seed": 1}));
        Instant::now()
    });
    std::thread::sleep(Duration::from_millis(20));
    let ends: Vec<Instant> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..MAX_BATCH as u64)
            .map(|seed| {
                s.spawn(move || {
                    generate(addr, &body(seed));
                    Instant::now()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let started = busy.join().unwrap();
    let concurrent = ends.iter().map(|e| e.duration_since(started).as_secs_f64()).fold(0.0, f64::max);
    println!(
        "batching: {MAX_BATCH} requests one after another {sequential:.3} s, at once {concurrent:.3} s: {:.2}× faster",
        sequential / concurrent
    );

    let client_counts: &[usize] = if bench { &[1, 4, 8] } else { &[2] };
    for &clients in client_counts {
        let report = load(
            addr,
            "/v1/images/generations",
            &[],
            body(3).to_string().as_bytes(),
            clients,
            Duration::from_secs(seconds),
            usize::MAX,
        );
        println!(
            "load {clients} client(s), {:.1} s: {:.2} requests/s ({} ok, {} failed), p50 {:.3} s, p99 {:.3} s, RSS {:.0} MiB",
            report.seconds,
            report.per_second(),
            report.ok,
            report.failed,
            report.quantile(0.5),
            report.quantile(0.99),
            rss_mib(addr)
        );
    }
}
