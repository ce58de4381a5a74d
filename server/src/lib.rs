//! `infinity-server`: one text-to-image model behind HTTP.
//!
//! - [`api`]: request bodies checked field by field, and the OpenAI-shaped errors;
//! - [`jobs`]: jobs, their statuses and events, the bounded queue and its batching;
//! - `worker`: the generation thread that owns the model;
//! - `routes`: the endpoints (OpenAI's `POST /v1/images/generations`, the job API with
//!   Server-Sent Events, health, metrics, the web page);
//! - [`metrics`]: the Prometheus counters;
//! - [`client`]: a plain HTTP/1.1 client and a load generator, for tests, benches and scripts.
//!
//! The HTTP side runs on a small tokio runtime; the model runs on its own thread and is fed
//! through the queue, so a slow generation never blocks a request that only asks.

pub mod api;
pub mod client;
pub mod jobs;
pub mod metrics;
mod routes;
mod worker;

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use infinity_models::pipeline::Pipeline;

pub use api::SizeRule;
use jobs::Jobs;
pub use jobs::{Job, Limits, Reporter, Status};
use routes::{AppState, Settings};

/// How the server is set up.
#[derive(Clone)]
pub struct Config {
    pub address: SocketAddr,
    /// With a key, the API asks for `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    pub limits: Limits,
    pub sizes: SizeRule,
    /// The model's name in the API, and in the PNGs' metadata.
    pub model: String,
    /// The server's address as clients reach it (`https://images.example.com`), for the links
    /// of `url` answers; without it, the request's `Host`.
    pub public_url: Option<String>,
    /// Told of every job as it ends: completed, failed or cancelled, after how long.
    pub report: Option<Reporter>,
}

/// A bound server, not yet serving.
pub struct Server {
    listener: TcpListener,
    config: Config,
}

impl Server {
    /// Binds the address (port 0 picks a free one; see [`Server::local_addr`]).
    pub fn bind(config: Config) -> io::Result<Server> {
        let listener = TcpListener::bind(config.address)?;
        listener.set_nonblocking(true)?;
        Ok(Server { listener, config })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `pipeline` until `shutdown` completes; then refuses new jobs, cancels the queued
    /// ones, finishes the running generation and returns once every answer is sent.
    pub fn serve(self, pipeline: Pipeline, shutdown: impl Future<Output = ()> + Send + 'static) -> io::Result<()> {
        let jobs = Arc::new(Jobs::new(self.config.limits, self.config.report.clone()));
        let settings = Settings {
            model: self.config.model.clone(),
            api_key: self.config.api_key.clone(),
            sizes: self.config.sizes,
            public_url: self.config.public_url.clone(),
            started: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        };
        let state = AppState { jobs: jobs.clone(), settings: Arc::new(settings) };
        // The model's thread and its rayon pool do the heavy work; two threads answer HTTP.
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let worker = {
            let (jobs, model) = (jobs.clone(), self.config.model.clone());
            std::thread::Builder::new()
                .name("generation".into())
                .spawn(move || worker::run(&pipeline, &jobs, &model))?
        };
        let closing = jobs.clone();
        let served = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(self.listener)?;
            axum::serve(listener, routes::router(state))
                .with_graceful_shutdown(async move {
                    shutdown.await;
                    closing.close();
                })
                .await
        });
        // Closed on every way out (a failed serve too), so that the generation thread ends.
        jobs.close();
        worker.join().map_err(|_| io::Error::other("the generation thread panicked"))?;
        served
    }
}

/// Completes on Ctrl-C or, on Unix, SIGTERM: the usual `shutdown` for [`Server::serve`].
pub async fn stop_signal() {
    let ctrl_c = async {
        // Without a handler there is nothing to wait for but the other signal.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
