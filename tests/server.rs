//! `infinity-server` end to end, serving the bundled default model on loopback: clients nobody
//! here wrote (the `openai` Python package, curl, headless Chromium), every fault a client can
//! cause, batching, a bounded load run, and graceful shutdown.
//!
//! The external clients print `SKIP:` where they are missing; CI installs them and sets
//! INFINITY_SERVER_REQUIRE_CLIENTS, which turns a skip into a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use infinity::server::client::{Response, load, request, send_raw};
use serde_json::{Value, json};

const KEY: &str = "test-key-123";

/// A server process; killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
    /// Its per-job lines; read at the end (`terminate`), or closed by a test.
    stdout: Option<BufReader<ChildStdout>>,
}

impl Served {
    fn start(args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_infinity-server"))
            .args(["--port", "0"])
            .args(args)
            .env_remove("INFINITY_API_KEY")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start infinity-server");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(stdout.read_line(&mut line).unwrap() > 0, "the server exited before listening");
            if let Some(url) = line.trim().strip_prefix("listening on http://") {
                break url.parse().unwrap();
            }
        };
        Served { child, addr, stdout: Some(stdout) }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Response {
        let body = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        request(self.addr, method, path, &[("Authorization", &format!("Bearer {KEY}"))], &body).unwrap()
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self.call("GET", "/metrics", Value::Null).text();
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Polls the job until it is final (or the time runs out).
    fn wait_job(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let job = self.call("GET", &format!("/v1/jobs/{id}"), Value::Null).json();
            if ["completed", "failed", "cancelled"].contains(&job["status"].as_str().unwrap())
                || start.elapsed() > Duration::from_secs(120)
            {
                return job;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then the exit status and the rest of stdout.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let mut rest = String::new();
        if let Some(stdout) = self.stdout.as_mut() {
            stdout.read_to_string(&mut rest).unwrap();
        }
        (status, rest)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints the skip, or fails where CI requires the external clients.
fn skip(reason: &str) {
    assert!(std::env::var_os("INFINITY_SERVER_REQUIRE_CLIENTS").is_none(), "required client missing: {reason}");
    println!("SKIP: {reason}");
}

fn python() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    venv.exists().then_some(venv)
}

fn python_has(python: &Path, module: &str) -> bool {
    Command::new(python).args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success())
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/server").join(name)
}

/// (width, height) and pixels of a PNG.
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

fn png_text(bytes: &[u8]) -> Vec<(String, String)> {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    reader.info().uncompressed_latin1_text.iter().map(|t| (t.keyword.clone(), t.text.clone())).collect()
}

#[test]
fn the_openai_python_package_generates_in_both_formats() {
    let Some(python) = python().filter(|p| python_has(p, "openai")) else {
        return skip("the openai package is not installed in .venv (pip install openai)");
    };
    let server = Served::start(&["--api-key", KEY]);
    let out = Command::new(python)
        .arg(script("openai_client.py"))
        .args([format!("http://{}", server.addr), KEY.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("openai client saw {seen}");
    assert_eq!(seen["models"], json!(["infinity-default"]));
    // 1024x1024 maps to the default model's largest budget, 256².
    assert_eq!(seen["b64_sizes"], json!([[256, 256], [256, 256]]));
    assert_eq!(seen["seed"], 11);
    assert_eq!(seen["url_size"], json!([256, 256]));
    assert_eq!(seen["url_type"], "image/png");
    assert_eq!(seen["bad_size"], json!([400, "size"]));
    assert_eq!(seen["wrong_key"], 401);
}

/// curl's view of the job API: a job's Server-Sent Events carry one preview per scale, each
/// sharper than the last, then the result; the status, the image and the metadata follow.
#[test]
fn curl_follows_a_job_and_its_events() {
    if Command::new("curl").arg("--version").output().is_err() {
        return skip("curl is not installed");
    }
    let server = Served::start(&[]);
    let base = format!("http://{}", server.addr);
    let curl = |args: &[&str]| {
        let out = Command::new("curl").args(["-sS", "--max-time", "120"]).args(args).output().unwrap();
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    // Queued behind a job that keeps the model busy, so that the events start at the beginning.
    let busy: Value =
        serde_json::from_str(&curl(&["-X", "POST", &format!("{base}/v1/jobs"), "-d", r#"{"prompt": "fire", "n": 4}"#]))
            .unwrap();
    let job: Value = serde_json::from_str(&curl(&[
        "-X",
        "POST",
        &format!("{base}/v1/jobs"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"prompt": "red apple", "seed": 5, "size": "512x512", "n": 2}"#,
    ]))
    .unwrap();
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(job["position"], 1, "{job}");
    let id = job["id"].as_str().unwrap();
    let events = curl(&["-N", &format!("{base}/v1/jobs/{id}/events")]);
    let parsed: Vec<(String, Value)> = events
        .split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_string(), serde_json::from_str(data).unwrap()))
        })
        .collect();
    let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"status"), "{names:?}");
    assert_eq!(names.last(), Some(&"completed"), "{names:?}");
    let scales: Vec<&Value> = parsed.iter().filter(|(n, _)| n == "scale").map(|(_, v)| v).collect();
    assert_eq!(scales.len(), 7, "one event per scale of the 0.06M schedule: {names:?}");
    let mut last_side = 0;
    for (k, e) in scales.iter().enumerate() {
        assert_eq!((e["scale"].as_u64(), e["scales"].as_u64()), (Some(k as u64 + 1), Some(7)));
        let previews = e["previews"].as_array().unwrap();
        assert_eq!(previews.len(), 2, "a preview per image");
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD.decode(previews[0].as_str().unwrap()).unwrap();
        let (w, h, _) = decode_png(&png);
        assert!(w == h && w >= last_side && w <= 256, "previews grow with the scales: {w}x{h} after {last_side}");
        last_side = w;
    }
    assert_eq!(last_side, 256, "the last preview is the full image");

    let done: Value = serde_json::from_str(&curl(&[&format!("{base}/v1/jobs/{id}")])).unwrap();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["size"], "256x256", "512x512 maps to the model's largest budget");
    let png = Command::new("curl")
        .args(["-sS", &format!("{base}{}", done["images"][1].as_str().unwrap())])
        .output()
        .unwrap()
        .stdout;
    let (w, h, _) = decode_png(&png);
    assert_eq!((w, h), (256, 256));
    let text = png_text(&png);
    let get = |k: &str| text.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(get("prompt"), "red apple");
    assert!(
        get("parameters").contains("seed=5 batch_index=1") && get("parameters").contains("pn=0.06M"),
        "{}",
        get("parameters")
    );
    assert!(get("Software").starts_with("infinity-server"));
    server.wait_job(busy["id"].as_str().unwrap());
}

#[test]
fn the_web_page_shows_previews_then_the_result_in_headless_chromium() {
    let Some(chromium) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        return skip("no Chromium (apt-get install chromium)");
    };
    let Some(python) = python().filter(|p| python_has(p, "websocket")) else {
        return skip("the websocket-client package is not installed in .venv (pip install websocket-client)");
    };
    let server = Served::start(&[]);
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-page.png");
    let out = Command::new(python)
        .arg(script("browser.py"))
        .args([chromium, &format!("http://{}", server.addr), shot.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("page: {seen}; screenshot {}", shot.display());
    assert_eq!(seen["state"], "completed");
    assert!(seen["previews"].as_u64().unwrap() >= 1, "no preview reached the page: {seen}");
    assert_eq!(seen["results"], 1);
    let (w, h, pixels) = decode_png(&std::fs::read(&shot).unwrap());
    assert!(w >= 800 && h >= 500, "{w}x{h}");
    // Not blank: many distinct colours (the page's greys alone are a handful).
    let mut colours: Vec<[u8; 3]> =
        pixels.chunks(pixels.len() / (w * h) as usize).map(|p| [p[0], p[1], p[2]]).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 500, "the screenshot has only {} colours", colours.len());
}

fn assert_error(r: &Response, status: u16, param: Option<&str>, words: &str) {
    let body = r.json();
    assert_eq!(r.status, status, "{}", r.text());
    let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("no error message in {}", r.text()));
    assert!(message.contains(words), "{message:?} lacks {words:?}");
    assert!(body["error"]["type"].is_string(), "{body}");
    assert_eq!(body["error"]["param"].as_str(), param, "{body}");
}

#[test]
fn every_bad_request_gets_its_status_and_the_server_keeps_serving() {
    let server = Served::start(&["--api-key", KEY, "--max-queue", "1"]);
    let post = |body: &[u8]| {
        request(server.addr, "POST", "/v1/images/generations", &[("Authorization", &format!("Bearer {KEY}"))], body)
            .unwrap()
    };
    assert_error(&post(b"{\"prompt\": "), 400, None, "malformed JSON");
    assert_error(&post(b"[1, 2]"), 400, None, "JSON object");
    assert_error(&post(br#"{"n": 1}"#), 400, Some("prompt"), "required");
    assert_error(&post(br#"{"prompt": 5}"#), 400, Some("prompt"), "string");
    assert_error(&post(br#"{"prompt": "a", "n": "two"}"#), 400, Some("n"), "integer from 1 to 10");
    assert_error(&post(br#"{"prompt": "a", "n": 11}"#), 400, Some("n"), "integer from 1 to 10");
    assert_error(&post(br#"{"prompt": "a", "size": "huge"}"#), 400, Some("size"), "WIDTHxHEIGHT");
    assert_error(&post(br#"{"prompt": "a", "size": "4096x256"}"#), 400, Some("size"), "1:3 to 3:1");
    assert_error(&post(br#"{"prompt": "a", "response_format": "jpeg"}"#), 400, Some("response_format"), "b64_json");
    assert_error(&post(br#"{"prompt": "a", "tau": 0}"#), 400, Some("tau"), "positive");
    assert_error(&post(br#"{"prompt": "a", "cfg": [1, 2]}"#), 400, Some("cfg"), "one per scale (7");
    assert_error(&post(br#"{"prompt": "a", "top_p": 2}"#), 400, Some("top_p"), "[0, 1]");
    assert_error(&post(br#"{"prompt": "a", "seed": -1}"#), 400, Some("seed"), "integer");
    let long = json!({"prompt": "a".repeat(4001)}).to_string();
    assert_error(&post(long.as_bytes()), 400, Some("prompt"), "over the limit of 4000");
    let huge = json!({"prompt": "a", "pad": "x".repeat(100_000)}).to_string();
    assert_error(&post(huge.as_bytes()), 413, None, "over 64 KiB");
    // A body longer than it declared: the declared length is read, the rest is not a request.
    let lying = format!(
        "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{{\"prompt\": \"a\"}}"
    );
    assert_error(&send_raw(server.addr, lying.as_bytes()).unwrap(), 400, None, "malformed JSON");

    // Keys.
    let no_key = request(server.addr, "POST", "/v1/images/generations", &[], br#"{"prompt": "a"}"#).unwrap();
    assert_error(&no_key, 401, None, "Authorization");
    assert_eq!(no_key.header("www-authenticate"), Some("Bearer"));
    let wrong = request(server.addr, "GET", "/v1/models", &[("Authorization", "Bearer nope")], b"").unwrap();
    assert_error(&wrong, 401, None, "invalid API key");
    assert_eq!(request(server.addr, "GET", "/metrics", &[], b"").unwrap().status, 401);
    assert_eq!(request(server.addr, "GET", "/health", &[], b"").unwrap().status, 200, "health needs no key");
    assert_eq!(request(server.addr, "GET", "/", &[], b"").unwrap().status, 200, "the page needs no key");

    // Routes.
    assert_error(&server.call("GET", "/v2/nothing", Value::Null), 404, None, "no such endpoint");
    assert_error(&server.call("DELETE", "/v1/jobs", Value::Null), 405, None, "DELETE is not allowed");
    assert_error(&server.call("GET", "/v1/jobs/0123", Value::Null), 404, None, "no job '0123'");

    // Queue full: one job runs, one waits, the next is refused with a time to come back.
    let running = server.call("POST", "/v1/jobs", json!({"prompt": "fire", "n": 10}));
    assert_eq!(running.status, 202, "{}", running.text());
    let start = Instant::now();
    while server.call("GET", &format!("/v1/jobs/{}", running.json()["id"].as_str().unwrap()), Value::Null).json()["status"]
        == "queued"
    {
        assert!(start.elapsed() < Duration::from_secs(30), "the first job never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let waiting = server.call("POST", "/v1/jobs", json!({"prompt": "frog", "n": 10, "size": "256x512"}));
    assert_eq!(waiting.json()["position"], 1, "{}", waiting.text());
    let refused = server.call("POST", "/v1/images/generations", json!({"prompt": "cat"}));
    assert_error(&refused, 429, None, "queue is full");
    assert!(refused.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);

    // Cancel: the queued job at once, the running one at its next scale.
    let waiting_id = waiting.json()["id"].as_str().unwrap().to_string();
    let cancelled = server.call("POST", &format!("/v1/jobs/{waiting_id}/cancel"), Value::Null);
    assert_eq!(
        (cancelled.status, cancelled.json()["status"].as_str()),
        (202, Some("cancelled")),
        "{}",
        cancelled.text()
    );
    let running_id = running.json()["id"].as_str().unwrap().to_string();
    assert_eq!(server.call("POST", &format!("/v1/jobs/{running_id}/cancel"), Value::Null).status, 202);
    let ended = server.wait_job(&running_id);
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_error(
        &server.call("POST", &format!("/v1/jobs/{running_id}/cancel"), Value::Null),
        409,
        None,
        "already cancelled",
    );
    assert_error(
        &server.call("GET", &format!("/v1/jobs/{running_id}/images/0.png"), Value::Null),
        404,
        None,
        "no images",
    );

    // A client that disconnects mid-generation: its job is cancelled, not left running.
    let before = server.metric("infinity_jobs_total{state=\"cancelled\"}");
    {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let body = json!({"prompt": "snowman", "n": 10}).to_string();
        write!(stream, "POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        while server.metric("infinity_running_jobs") < 1.0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let start = Instant::now();
    while server.metric("infinity_jobs_total{state=\"cancelled\"}") <= before {
        assert!(start.elapsed() < Duration::from_secs(60), "the abandoned job was never cancelled");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.metric("infinity_running_jobs"), 0.0);

    // A path that is not even UTF-8.
    assert_error(&server.call("GET", "/v1/jobs/%FF", Value::Null), 400, None, "");

    // And it still serves, prompts beyond Latin-1 included (their PNG text is UTF-8 iTXt).
    let prompt = "red apple 🍎 “fresh”";
    let ok = server.call("POST", "/v1/images/generations", json!({"prompt": prompt, "seed": 1}));
    assert_eq!(ok.status, 200, "{}", ok.text());
    use base64::Engine;
    let png =
        base64::engine::general_purpose::STANDARD.decode(ok.json()["data"][0]["b64_json"].as_str().unwrap()).unwrap();
    let reader = png::Decoder::new(std::io::Cursor::new(&png)).read_info().unwrap();
    let utf8: Vec<_> =
        reader.info().utf8_text.iter().filter(|t| t.keyword == "prompt").map(|t| t.get_text().unwrap()).collect();
    assert_eq!(utf8, [prompt]);
}

/// Same-size requests arriving together run as one generation, and each gets the images it
/// would get alone. Then a bounded load run: throughput, latency and the batching speedup are
/// reported (never asserted: timings are the bench's), memory must stay bounded.
#[test]
fn concurrent_requests_are_batched_and_load_keeps_memory_bounded() {
    let server = Served::start(&["--max-batch", "4", "--api-key", KEY]);
    // Prompts of different lengths: the text encoder's batch as well as the transformer's.
    let prompts = ["grinning face", "red apple", "a fire emoji on white", "frog"];
    let body = |seed: u64| json!({"prompt": prompts[seed as usize % 4], "seed": seed}).to_string();
    let auth = format!("Bearer {KEY}");
    let headers = [("Authorization", auth.as_str())];
    let start = Instant::now();
    let alone: Vec<Response> = (0..4)
        .map(|seed| request(server.addr, "POST", "/v1/images/generations", &headers, body(seed).as_bytes()).unwrap())
        .collect();
    assert!(alone.iter().all(|r| r.status == 200));
    let sequential = start.elapsed().as_secs_f64();
    let batches_before = server.metric("infinity_batches_total");
    // One job keeps the model busy while four same-size requests queue behind it.
    let busy = server.call("POST", "/v1/jobs", json!({"prompt": "fire", "n": 4, "size": "256x512"}));
    let start = Instant::now();
    let together: Vec<Response> = std::thread::scope(|s| {
        let handles: Vec<_> = [0, 1, 2, 3]
            .map(|seed| {
                let (b, headers) = (body(seed), &headers);
                s.spawn(move || request(server.addr, "POST", "/v1/images/generations", headers, b.as_bytes()).unwrap())
            })
            .into_iter()
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let concurrent = start.elapsed().as_secs_f64();
    server.wait_job(busy.json()["id"].as_str().unwrap());
    assert!(together.iter().all(|r| r.status == 200));
    let batches = server.metric("infinity_batches_total") - batches_before;
    assert!(batches <= 3.0, "4 queued same-size requests ran in {batches} generations after the busy one");
    for (seed, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.json()["data"], b.json()["data"], "seed {seed}: a request's image depends on its batch");
    }
    println!(
        "4 requests: sequential {sequential:.2} s, concurrent {concurrent:.2} s (incl. a 4-image job ahead of them)"
    );

    let rss_before = server.metric("process_resident_memory_bytes");
    let report =
        load(server.addr, "/v1/images/generations", &headers, body(9).as_bytes(), 4, Duration::from_secs(6), 50);
    let rss_after = server.metric("process_resident_memory_bytes");
    println!(
        "load, 4 clients for {:.1} s: {} ok, {} failed, {:.2} requests/s, p50 {:.2} s, p99 {:.2} s; RSS {:.0} → {:.0} MiB",
        report.seconds,
        report.ok,
        report.failed,
        report.per_second(),
        report.quantile(0.5),
        report.quantile(0.99),
        rss_before / 1048576.0,
        rss_after / 1048576.0
    );
    assert_eq!(report.failed, 0);
    assert!(report.ok >= 4);
    assert!(
        rss_after - rss_before < 256.0 * 1048576.0,
        "RSS grew by {:.0} MiB under load",
        (rss_after - rss_before) / 1048576.0
    );
}

#[test]
fn shutdown_finishes_the_running_generation_and_refuses_new_work() {
    let server = Served::start(&[]);
    let addr = server.addr;
    let in_flight = std::thread::spawn(move || {
        request(addr, "POST", "/v1/images/generations", &[], json!({"prompt": "frog", "n": 6}).to_string().as_bytes())
            .unwrap()
    });
    while server.metric("infinity_running_jobs") < 1.0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let queued = server.call("POST", "/v1/jobs", json!({"prompt": "cat", "size": "512x256"}));
    assert_eq!(queued.status, 202);
    let (status, out) = server.terminate();
    let answered = in_flight.join().unwrap();
    assert_eq!(answered.status, 200, "the running request is finished: {}", answered.text());
    assert_eq!(answered.json()["data"].as_array().unwrap().len(), 6);
    assert!(status.success(), "{status:?}");
    assert!(out.contains("stopped"), "{out}");
    // A line per job: the queued one cancelled by the shutdown, the running one completed.
    assert!(out.contains("cancelled (the server is shutting down): 1 image(s) 352x176"), "{out}");
    assert!(out.contains("completed: 6 image(s) 256x256"), "{out}");
    assert!(TcpStream::connect(addr).is_err(), "still listening after shutdown");
}

/// Its reader gone (stdout a closed pipe), the server's per-job lines are dropped and it
/// keeps generating (a print that panicked once killed the generation thread).
#[test]
fn a_closed_stdout_does_not_stop_the_server() {
    let mut server = Served::start(&[]);
    drop(server.stdout.take());
    for seed in 0..2 {
        let r = server.call("POST", "/v1/images/generations", json!({"prompt": "fire", "seed": seed}));
        assert_eq!(r.status, 200, "request {seed}: {}", r.text());
    }
}

#[test]
fn bad_arguments_and_a_taken_port_are_one_line_errors() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_infinity-server")).args(args).env_remove("INFINITY_API_KEY").output().unwrap()
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for (args, words) in [
        (vec!["--max-batch", "0"], "--max-batch must be at least 1"),
        (vec!["--port", "70000"], "--port"),
        (vec!["--host", "nowhere"], "--host"),
        (vec!["--model-dir", "/nonexistent"], "/nonexistent"),
        (vec!["--port", port.as_str()], "cannot listen on 127.0.0.1"),
        (vec!["--max-pn", "2M"], "unknown pixel budget"),
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains(words), "{args:?}: {err}");
    }
}
