//! `infinity-server`: serves one text-to-image model over HTTP (argument parsing and reporting
//! only; the server is `infinity::server`). With no model argument it serves the bundled
//! default model. Stops on Ctrl-C or SIGTERM after finishing the running generation. Any
//! failure to start is one line on stderr, `error: <message>`, and exit code 2.

use std::error::Error;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod report;

use clap::Parser;
use infinity::cuda::Executor;
use infinity::models::model_folder::ModelFiles;
use infinity::models::pipeline::Pipeline;
use infinity::models::schedule::{PixelBudget, Template};
use infinity::models::text_to_image::ImageSize;
use infinity::runtime::{Device, DeviceName};
use infinity::server::{Config, Job, Limits, Server, SizeRule, Status, stop_signal};

#[derive(Parser)]
#[command(
    name = "infinity-server",
    version,
    about = "Infinity text-to-image over HTTP: an OpenAI-compatible API, jobs with live previews, a web page"
)]
struct Args {
    /// A model folder with config.json and the weight files (default: the bundled model).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// cpu, cuda / cuda:N, or shim: where the models run.
    #[arg(long, default_value = "cpu")]
    device: DeviceName,
    /// The address to listen on; 0.0.0.0 opens the server to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The port (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on the API (also read from INFINITY_API_KEY).
    #[arg(long, env = "INFINITY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Jobs that may wait for the model; more are refused with 429 and Retry-After.
    #[arg(long, default_value_t = 32)]
    max_queue: usize,
    /// Images one generation may hold: queued jobs of one size are batched up to it (the
    /// guidance pairs come on top).
    #[arg(long, default_value_t = 4)]
    max_batch: usize,
    /// The largest pixel budget a size maps to (default: the model's, else 1M).
    #[arg(long)]
    max_pn: Option<PixelBudget>,
    /// The server's address as clients reach it (behind a proxy or TLS), for `url` answers'
    /// links; default: the address each request was sent to.
    #[arg(long)]
    public_url: Option<String>,
    /// Seconds finished jobs and their images are kept.
    #[arg(long, default_value_t = 3600)]
    retention: u64,
}

fn main() -> ExitCode {
    let args: Args = match report::parse_args(std::env::args_os()) {
        Ok(args) => args,
        Err(code) => return code,
    };
    report::exit_code(run(args))
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    if args.max_queue == 0 || args.max_batch == 0 {
        return Err("--max-queue and --max-batch must be at least 1".into());
    }
    if args.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        return Err("--api-key is empty".into());
    }
    let executor = Executor::named(args.device).map_err(|e| format!("--device {}: {e}", args.device))?;
    let device = executor.as_ref().map_or(Device::Cpu, |e| e.device());
    let files = match &args.model_dir {
        Some(dir) => ModelFiles::from_dir(dir)?,
        None => ModelFiles::default_model()?,
    };
    files.check_exist()?;
    let model_pn = files.default_pn.unwrap_or(PixelBudget::P1M);
    let template = Template::nearest(1.0).ok_or("no square template")?;
    let config = Config {
        address: SocketAddr::new(args.host, args.port),
        api_key: args.api_key.clone(),
        limits: Limits {
            max_queue: args.max_queue,
            max_batch: args.max_batch,
            retention: Duration::from_secs(args.retention),
        },
        sizes: SizeRule { default: ImageSize { template, pn: model_pn }, max_pn: args.max_pn.unwrap_or(model_pn) },
        model: model_name(&files),
        public_url: args.public_url.as_deref().map(|u| u.trim_end_matches('/').to_string()),
        report: Some(Arc::new(report_job)),
    };
    // Bound before the slow load, so that a taken port is reported at once.
    let server = Server::bind(config).map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let start = Instant::now();
    let pipeline = Pipeline::load(&files, &device)?;
    println!("loaded {} in {:.2} s on {device}", files.transformer.display(), start.elapsed().as_secs_f64());
    println!("listening on http://{}", server.local_addr()?);
    if args.api_key.is_some() {
        println!("the API needs 'Authorization: Bearer <key>'");
    }
    // Tests and scripts read the address as soon as it is printed.
    std::io::stdout().flush()?;
    server.serve(pipeline, stop_signal())?;
    match report::peak_rss_mib() {
        Some(mib) => println!("stopped; peak memory {mib:.0} MiB"),
        None => println!("stopped"),
    }
    Ok(())
}

/// One line per finished job: its id, outcome, size, time and prompt.
fn report_job(job: &Job, status: &Status) {
    let (h, w) = job.size.pixels();
    let why = match status {
        Status::Failed { error } => format!(" ({error})"),
        Status::Cancelled { reason } => format!(" ({reason})"),
        _ => String::new(),
    };
    // A closed stdout (the reader went away) must not stop the server: the line is dropped.
    let _ = writeln!(
        std::io::stdout().lock(),
        "job {} {}{why}: {} image(s) {w}x{h} in {:.2} s: {:.60}",
        &job.id[..8],
        status.name(),
        job.request.images,
        job.age(),
        job.request.prompt
    );
}

/// The model's name in the API: its folder's name, else the transformer file's.
fn model_name(files: &ModelFiles) -> String {
    let path = &files.transformer;
    let folder = path.parent().and_then(|p| p.file_name());
    let name = folder.or(path.file_stem()).map(|n| n.to_string_lossy().into_owned());
    format!("infinity-{}", name.unwrap_or_else(|| "model".into()))
}
