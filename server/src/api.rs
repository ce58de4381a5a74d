//! The bodies of the image endpoints, checked field by field, and the one error shape every
//! endpoint answers with: OpenAI's `{"error": {"message", "type", "param", "code"}}` and an
//! HTTP status. Fields OpenAI defines and this model has no use for (`quality`, `style`,
//! `user`, …) are accepted and ignored, so that existing clients work unchanged.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use infinity_models::infinity::SamplingConfig;
use infinity_models::schedule::PixelBudget;
use infinity_models::text_to_image::{ImageSize, Request, random_seed};
use serde_json::{Map, Value, json};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 << 10;
/// The longest prompt (and negative prompt) accepted, in characters; the model reads at most
/// its tokenizer's limit of it (512 tokens for the official models).
pub const MAX_PROMPT_CHARS: usize = 4000;
/// Images one request may ask for, as OpenAI's API allows.
pub const MAX_IMAGES: u64 = 10;
/// The longest side a `size` may name.
const MAX_SIDE: usize = 8192;

/// An error answer: its status, OpenAI's error `type`, the request field at fault.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    /// Seconds a refused client should wait (HTTP 429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400: `param` is missing, of the wrong type or out of range.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError { param: Some(param), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, retry_after: None }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": Value::Null}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// How generated images are returned by `POST /v1/images/generations`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFormat {
    /// Base64 PNG in the response (OpenAI's default, and the format clients expect).
    B64Json,
    /// A link to the PNG, served by this server while the job is kept.
    Url,
}

/// A generation request, checked: what to generate and how to answer.
#[derive(Clone, Debug)]
pub struct ImageParams {
    pub request: Request,
    pub size: ImageSize,
    pub response_format: ResponseFormat,
}

/// What the loaded model allows: sizes up to `max_pn`, `default` for `"auto"`.
#[derive(Clone, Copy, Debug)]
pub struct SizeRule {
    pub default: ImageSize,
    pub max_pn: PixelBudget,
}

/// Parses and checks a generation body (`POST /v1/images/generations` and `POST /v1/jobs`).
pub fn parse_generation(body: &[u8], sizes: SizeRule) -> Result<ImageParams, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", format!("malformed JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", "the body must be a JSON object"));
    };
    let f = Fields(&fields);
    let prompt = f.text("prompt")?.ok_or_else(|| ApiError::invalid("prompt", "'prompt' is required"))?;
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "'prompt' is empty"));
    }
    let negative_prompt = f.text("negative_prompt")?;
    f.string("model")?;
    let images = f.integer("n", 1, MAX_IMAGES)?.unwrap_or(1) as usize;
    let size = match f.string("size")? {
        None | Some("auto") => sizes.default,
        Some(s) => parse_size(s, sizes.max_pn)?,
    };
    let response_format = match f.string("response_format")? {
        None | Some("b64_json") => ResponseFormat::B64Json,
        Some("url") => ResponseFormat::Url,
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format",
                format!("'response_format' is \"b64_json\" or \"url\", not \"{other}\""),
            ));
        }
    };
    let scales = size.schedule().num_scales();
    let defaults = SamplingConfig::default();
    let sampling = SamplingConfig {
        cfg: f.per_scale("cfg", scales, |w| w.is_finite(), "a finite number")?.unwrap_or(defaults.cfg),
        tau: f.per_scale("tau", scales, |t| t > 0.0 && t.is_finite(), "a positive number")?.unwrap_or(defaults.tau),
        top_k: f.integer("top_k", 0, u64::from(u32::MAX))?.map_or(defaults.top_k, |k| k as usize),
        top_p: f
            .number("top_p", |p| (0.0..=1.0).contains(&p), "a number in [0, 1]")?
            .map_or(defaults.top_p, |p| p as f32),
        greedy: f.boolean("greedy")?.unwrap_or(false),
        // Kept below 2^53 so that JavaScript clients read it back exactly.
        seed: f.integer("seed", 0, (1 << 53) - 1)?.unwrap_or_else(random_seed),
    };
    Ok(ImageParams { request: Request { prompt, negative_prompt, images, sampling }, size, response_format })
}

/// `"WxH"` → the nearest template and pixel budget (the budget at most `max_pn`).
fn parse_size(s: &str, max_pn: PixelBudget) -> Result<ImageSize, ApiError> {
    let bad = || {
        ApiError::invalid("size", format!("'size' is \"auto\" or \"WIDTHxHEIGHT\" (e.g. \"1024x1024\"), not \"{s}\""))
    };
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?);
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(ApiError::invalid("size", format!("'size' {s}: each side must be 1 to {MAX_SIDE} pixels")));
    }
    // The templates span 1:3 to 3:1; a size a little beyond maps to the nearest, a size far
    // beyond is a mistake.
    if !(0.25..=4.0).contains(&(h as f64 / w as f64)) {
        return Err(ApiError::invalid("size", format!("'size' {s}: the templates span 1:3 to 3:1 (height:width)")));
    }
    ImageSize::nearest(w, h, max_pn).ok_or_else(bad)
}

/// Typed access to a body's fields; `null` counts as absent, and every error names the field.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &'static str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(name, format!("'{name}' must be a string"))),
        }
    }

    /// A string of at most [`MAX_PROMPT_CHARS`] characters.
    fn text(&self, name: &'static str) -> Result<Option<String>, ApiError> {
        let Some(s) = self.string(name)? else { return Ok(None) };
        let chars = s.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return Err(ApiError::invalid(
                name,
                format!("'{name}' is {chars} characters, over the limit of {MAX_PROMPT_CHARS}"),
            ));
        }
        Ok(Some(s.to_string()))
    }

    fn integer(&self, name: &'static str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::invalid(name, format!("'{name}' must be an integer from {min} to {max}, not {v}"))),
        }
    }

    fn boolean(&self, name: &'static str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::invalid(name, format!("'{name}' must be true or false, not {v}"))),
        }
    }

    fn number(&self, name: &'static str, ok: impl Fn(f64) -> bool, what: &str) -> Result<Option<f64>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        match v.as_f64() {
            Some(x) if ok(x) => Ok(Some(x)),
            _ => Err(ApiError::invalid(name, format!("'{name}' must be {what}, not {v}"))),
        }
    }

    /// One number, or an array of one per scale (`scales` of them).
    fn per_scale(
        &self,
        name: &'static str,
        scales: usize,
        ok: impl Fn(f32) -> bool,
        what: &str,
    ) -> Result<Option<Vec<f32>>, ApiError> {
        let Some(v) = self.get(name) else { return Ok(None) };
        let values: Option<Vec<f32>> = match v {
            Value::Array(items) => items.iter().map(|x| x.as_f64().map(|x| x as f32)).collect(),
            _ => v.as_f64().map(|x| vec![x as f32]),
        };
        match values {
            Some(vs) if !vs.is_empty() && vs.iter().all(|&x| ok(x)) && (vs.len() == 1 || vs.len() == scales) => {
                Ok(Some(vs))
            }
            _ => Err(ApiError::invalid(
                name,
                format!("'{name}' must be {what}, or an array of one per scale ({scales} at this size), not {v}"),
            )),
        }
    }
}
