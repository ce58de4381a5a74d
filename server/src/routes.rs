//! The HTTP surface: the OpenAI-compatible image endpoint, the job API with its Server-Sent
//! Events, health, metrics and the web page; the API-key check in front of them; and the JSON
//! shapes of jobs. Handlers only translate between HTTP and [`Jobs`].

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::api::{ApiError, ImageParams, MAX_BODY_BYTES, ResponseFormat, SizeRule, parse_generation};
use crate::jobs::{Job, Jobs, Refusal, Status};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub jobs: Arc<Jobs>,
    pub settings: Arc<Settings>,
}

/// The server's fixed answers.
pub struct Settings {
    /// The model's name in `/v1/models` and `/health`.
    pub model: String,
    pub api_key: Option<String>,
    pub sizes: SizeRule,
    /// The base of `url` answers' links; else the request's `Host`.
    pub public_url: Option<String>,
    /// Unix seconds when the server started.
    pub started: u64,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/images/generations", post(generations))
        .route("/v1/jobs", post(create_job))
        .route("/v1/jobs/{id}", get(job_status))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/images/{file}", get(job_image))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|method: Method| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                format!("{method} is not allowed here"),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// With an API key set, `/v1/…` and `/metrics` need `Authorization: Bearer <key>`. A finished
/// job's image links do not: the job id in them is 128 random bits, so that `<img>` tags and
/// OpenAI-style `url` answers work without headers.
async fn authorize(State(s): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(key) = &s.settings.api_key {
        let path = request.uri().path();
        let image_link = request.method() == Method::GET && path.starts_with("/v1/jobs/") && path.contains("/images/");
        if (path.starts_with("/v1/") && !image_link) || path == "/metrics" {
            let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let Some(token) = given.and_then(|v| v.strip_prefix("Bearer ")) else {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "missing 'Authorization: Bearer <key>' header",
                )
                .into_response();
            };
            if !same_bytes(token.trim().as_bytes(), key.as_bytes()) {
                return ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", "invalid API key")
                    .into_response();
            }
        }
    }
    next.run(request).await
}

/// Compares in time independent of where the inputs differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page() -> Html<&'static str> {
    Html(include_str!("web/index.html"))
}

async fn health(State(s): State<AppState>) -> Response {
    let (queued, running) = s.jobs.counts();
    axum::Json(json!({"status": "ok", "model": s.settings.model, "queued": queued, "running": running})).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let (queued, running) = s.jobs.counts();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.jobs.metrics.render(queued, running)).into_response()
}

async fn models(State(s): State<AppState>) -> Response {
    let model =
        json!({"id": s.settings.model, "object": "model", "created": s.settings.started, "owned_by": "infinity"});
    axum::Json(json!({"object": "list", "data": [model]})).into_response()
}

/// The body, at most [`MAX_BODY_BYTES`], checked as a generation request.
async fn read_params(s: &AppState, headers: &HeaderMap, body: Body) -> Result<ImageParams, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request body is over {} KiB", MAX_BODY_BYTES >> 10),
        )
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await.map_err(|e| {
        let over = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large()
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("the request body could not be read: {e}"),
            )
        }
    })?;
    parse_generation(&bytes, s.settings.sizes)
}

fn submit(s: &AppState, params: &ImageParams) -> Result<Arc<Job>, ApiError> {
    s.jobs.submit(params.request.clone(), params.size).map_err(|refusal| match refusal {
        Refusal::Full { retry_after } => ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "the queue is full; try again later")
        },
        Refusal::ShuttingDown => ApiError {
            retry_after: Some(5),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down")
        },
    })
}

/// Cancels its job when dropped: a client that goes away mid-generation (its handler is
/// dropped with the connection) does not leave the job running. Harmless once it finished.
struct CancelOnDrop<'a>(&'a Jobs, Arc<Job>);

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        self.0.cancel(&self.1, "the client disconnected");
    }
}

/// `POST /v1/images/generations`: OpenAI's call, answered when the images are done.
async fn generations(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let params = read_params(&s, &headers, body).await?;
    let job = submit(&s, &params)?;
    let _cancel = CancelOnDrop(&s.jobs, job.clone());
    let mut status = job.watch();
    let done = status.wait_for(Status::is_final).await.map(|s| s.clone()).unwrap_or_else(|_| job.status());
    let images = match done {
        Status::Completed { images } => images,
        Status::Failed { error } => {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", error));
        }
        Status::Cancelled { reason } => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", reason));
        }
        // The status channel closed before the end: only a server going away does that.
        Status::Queued | Status::Running { .. } => {
            let msg = "the job ended without a result";
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", msg));
        }
    };
    let base = s.settings.public_url.clone().unwrap_or_else(|| base_url(&headers));
    let data: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, png)| match params.response_format {
            ResponseFormat::B64Json => json!({"b64_json": BASE64.encode(png)}),
            ResponseFormat::Url => json!({"url": format!("{base}{}", image_path(&job, i))}),
        })
        .collect();
    let (h, w) = job.size.pixels();
    let body = json!({"created": job.created, "data": data, "seed": job.request.sampling.seed, "size": format!("{w}x{h}"), "id": job.id});
    Ok(axum::Json(body).into_response())
}

/// `http://host` as the client reached us (for `url` answers without `--public-url`).
fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("http://{host}")
}

fn image_path(job: &Job, i: usize) -> String {
    format!("/v1/jobs/{}/images/{i}.png", job.id)
}

/// `POST /v1/jobs`: queues the request and answers at once (202) with the job.
async fn create_job(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let params = read_params(&s, &headers, body).await?;
    let job = submit(&s, &params)?;
    Ok((StatusCode::ACCEPTED, axum::Json(job_json(&s.jobs, &job))).into_response())
}

fn find(s: &AppState, id: &str) -> Result<Arc<Job>, ApiError> {
    s.jobs.get(id).ok_or_else(|| {
        ApiError::not_found(format!("no job '{id}' (finished jobs are kept for a while, then forgotten)"))
    })
}

/// A job as the API shows it.
pub fn job_json(jobs: &Jobs, job: &Job) -> Value {
    let (h, w) = job.size.pixels();
    let status = job.status();
    let mut v = json!({
        "id": job.id,
        "object": "image.job",
        "created": job.created,
        "status": status.name(),
        "prompt": job.request.prompt,
        "n": job.request.images,
        "size": format!("{w}x{h}"),
        "seed": job.request.sampling.seed,
    });
    match status {
        Status::Queued => v["position"] = json!(jobs.position(job)),
        Status::Running { scale, scales } => {
            v["scale"] = json!(scale);
            v["scales"] = json!(scales);
        }
        Status::Completed { images } => {
            v["images"] = json!((0..images.len()).map(|i| image_path(job, i)).collect::<Vec<_>>())
        }
        Status::Failed { error } => v["error"] = json!(error),
        Status::Cancelled { reason } => v["reason"] = json!(reason),
    }
    v
}

/// A path parameter that did not parse (bad percent-encoding): a JSON 400 like every refusal.
fn bad_path(e: PathRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", e.body_text())
}

async fn job_status(State(s): State<AppState>, id: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(bad_path)?;
    let job = find(&s, &id)?;
    Ok(axum::Json(job_json(&s.jobs, &job)).into_response())
}

async fn cancel_job(State(s): State<AppState>, id: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(bad_path)?;
    let job = find(&s, &id)?;
    if !s.jobs.cancel(&job, "cancelled") {
        let msg = format!("job '{id}' already {}", job.status().name());
        return Err(ApiError::new(StatusCode::CONFLICT, "invalid_request_error", msg));
    }
    Ok((StatusCode::ACCEPTED, axum::Json(job_json(&s.jobs, &job))).into_response())
}

async fn job_image(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((id, file)) = path.map_err(bad_path)?;
    let job = find(&s, &id)?;
    let Status::Completed { images } = job.status() else {
        return Err(ApiError::not_found(format!("job '{id}' has no images ({})", job.status().name())));
    };
    let png = file.strip_suffix(".png").and_then(|i| i.parse::<usize>().ok()).and_then(|i| images.get(i)).ok_or_else(
        || ApiError::not_found(format!("job '{id}' has images 0.png to {}.png", images.len().saturating_sub(1))),
    )?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "private, max-age=3600")], png.clone())
        .into_response())
}

/// `GET /v1/jobs/{id}/events`: a `status` event with the job as it stands, a `scale` event after
/// every scale (with PNG previews, base64), then the final `completed`, `failed` or `cancelled`
/// event with the job, and the stream ends.
async fn job_events(State(s): State<AppState>, id: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(bad_path)?;
    let job = find(&s, &id)?;
    // Subscribed before the first look at the status, so that no scale falls in between.
    let mut scales = job.events();
    let mut status = job.watch();
    let (tx, rx) = mpsc::channel::<Event>(16);
    let jobs = s.jobs.clone();
    tokio::spawn(async move {
        let json_event = |name: &str, v: &Value| Event::default().event(name).data(v.to_string());
        if tx.send(json_event("status", &job_json(&jobs, &job))).await.is_err() {
            return;
        }
        loop {
            if status.borrow_and_update().is_final() {
                // The scales reported before the end come first.
                while let Ok(e) = scales.try_recv() {
                    let _ = tx.send(scale_event(&e)).await;
                }
                let _ = tx.send(json_event(job.status().name(), &job_json(&jobs, &job))).await;
                return;
            }
            tokio::select! {
                event = scales.recv() => match event {
                    Ok(e) => if tx.send(scale_event(&e)).await.is_err() { return },
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                changed = status.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Ok(sse(stream).into_response())
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> impl IntoResponse {
    Sse::new(stream).keep_alive(KeepAlive::default())
}

fn scale_event(e: &crate::jobs::ScaleEvent) -> Event {
    let previews: Vec<String> = e.previews.iter().map(|png| BASE64.encode(png)).collect();
    Event::default()
        .event("scale")
        .data(json!({"scale": e.scale, "scales": e.scales, "previews": previews}).to_string())
}
