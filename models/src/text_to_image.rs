//! Text to image as the binaries ask for it: [`Request`]s (a prompt, how many images, the
//! sampling knobs) become RGB [`Picture`]s, with a callback after every scale that reports
//! progress, may decode the image as it stands ([`ScaleProgress::preview`]) and may stop the
//! generation. `infinity-run` and `infinity-server` hold no generation logic of their own: both
//! drive it through [`Pipeline::prepare`] and [`Pipeline::text_to_image`].
//!
//! Several requests over one schedule run as one batch (the server's batching): each keeps its
//! own seed and knobs (see [`crate::infinity::generate_groups`]), so its images are those it
//! would get alone.

use std::ops::ControlFlow;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use infinity_runtime::{Error, Result, Tensor};

use crate::bitvae::quantizer::resize_codes;
use crate::image::{encode_png, to_rgb8};
use crate::infinity::generate::row_spans;
use crate::infinity::{Group, SamplingConfig, TokenLayout, generate_groups};
use crate::pipeline::Pipeline;
use crate::schedule::{PixelBudget, Schedule, Template};

/// The longest side of a preview's token grid: previews of large images are decoded at this
/// resolution (256 pixels a side with a patch-16 VAE), which keeps them cheap next to a scale.
pub const PREVIEW_TOKENS: usize = 16;

/// One prompt's images.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub prompt: String,
    /// Text for the unconditional half of guidance instead of the learned null text.
    pub negative_prompt: Option<String>,
    /// How many images (rows of the batch); all are drawn from the request's one seed.
    pub images: usize,
    pub sampling: SamplingConfig,
}

/// The picture a request asks for: an aspect-ratio template at a pixel budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageSize {
    pub template: Template,
    pub pn: PixelBudget,
}

impl ImageSize {
    pub fn schedule(self) -> Schedule {
        self.template.schedule(self.pn)
    }

    /// Pixels (height, width) of the output.
    pub fn pixels(self) -> (usize, usize) {
        self.schedule().pixel_size()
    }

    /// The nearest template and pixel budget to a `width`×`height` request, the budget no
    /// larger than `max_pn`; `None` when a side is 0.
    pub fn nearest(width: usize, height: usize, max_pn: PixelBudget) -> Option<ImageSize> {
        let template = Template::nearest(height as f64 / width as f64)?;
        let pn = PixelBudget::nearest((width * height) as f64);
        let pn = if pn.num_scales() > max_pn.num_scales() { max_pn } else { pn };
        Some(ImageSize { template, pn })
    }
}

/// A request with its prompts encoded, ready to generate.
pub struct Prepared {
    pub request: Request,
    /// The prompt was cut to the tokens the model reads.
    pub truncated: bool,
    features: Tensor,
    negative: Option<Tensor>,
}

/// An 8-bit RGB image.
#[derive(Clone, Debug, PartialEq)]
pub struct Picture {
    pub width: usize,
    pub height: usize,
    /// Interleaved RGB rows.
    pub rgb: Vec<u8>,
}

impl Picture {
    /// The image as a PNG with `text` as tEXt chunks (see [`Request::png_text`]).
    pub fn png(&self, text: &[(&str, String)]) -> Result<Vec<u8>> {
        encode_png(self.width, self.height, &self.rgb, text).map_err(|e| Error::invalid("picture.png", &[], e))
    }
}

/// What a batch made: each request's pictures, in request order, and where the time went.
pub struct Images {
    pub pictures: Vec<Vec<Picture>>,
    pub transformer_seconds: f64,
    pub decode_seconds: f64,
}

/// The state of a batch after one of its scales, handed to the caller's callback.
pub struct ScaleProgress<'a> {
    /// The scale just done (0-based) and how many the schedule has.
    pub scale: usize,
    pub scales: usize,
    pipeline: &'a Pipeline,
    /// (B, d, H, W): the codes summed so far at the final VAE grid.
    summed: &'a Tensor,
    /// Each request's rows of the batch: (first, count).
    spans: &'a [(usize, usize)],
    /// The VAE grid of the scale just done.
    grid: (usize, usize),
}

impl ScaleProgress<'_> {
    /// Request `r`'s images as they stand: the codes summed so far, decoded at this scale's
    /// resolution (at most [`PREVIEW_TOKENS`] a side). Costs one small decode; callers ask only
    /// when someone is watching.
    pub fn preview(&self, r: usize) -> Result<Vec<Picture>> {
        let &(start, rows) =
            self.spans.get(r).ok_or_else(|| Error::invalid("preview", &[r], "no such request in the batch"))?;
        let (h, w) = self.grid;
        let shrink = PREVIEW_TOKENS as f64 / h.max(w) as f64;
        let grid = if shrink < 1.0 {
            (((h as f64 * shrink).round() as usize).max(1), ((w as f64 * shrink).round() as usize).max(1))
        } else {
            (h, w)
        };
        let codes = resize_codes(&self.summed.narrow(0, start, rows)?.contiguous()?, grid)?;
        pictures(&self.pipeline.vae.decode(&codes)?)
    }
}

/// (B, 3, H, W) images in [-1, 1] → pictures.
fn pictures(images: &Tensor) -> Result<Vec<Picture>> {
    let (height, width) = (images.dim(2)?, images.dim(3)?);
    Ok(to_rgb8(images)?.into_iter().map(|rgb| Picture { width, height, rgb }).collect())
}

impl Request {
    /// The PNG text chunks of image `index` of this request: the prompt, every knob that
    /// reproduces it, the size and the model, and `software` (who wrote it).
    pub fn png_text(&self, index: usize, size: ImageSize, model: &str, software: &str) -> Vec<(&'static str, String)> {
        let s = &self.sampling;
        let (h, w) = size.pixels();
        let parameters = format!(
            "seed={} batch_index={index} cfg={:?} tau={:?} top_k={} top_p={} greedy={} pn={} template={} size={w}x{h} transformer={model}",
            s.seed,
            s.cfg,
            s.tau,
            s.top_k,
            s.top_p,
            s.greedy,
            size.pn,
            size.template.ratio(),
        );
        let mut text = vec![("prompt", self.prompt.clone()), ("parameters", parameters), ("Software", software.into())];
        if let Some(n) = &self.negative_prompt {
            text.push(("negative_prompt", n.clone()));
        }
        text
    }
}

impl Pipeline {
    /// Encodes the prompts (and negative prompts) of `requests` as one batch through the text
    /// encoder, which must still be loaded; refuses a request for no images.
    pub fn prepare(&self, requests: Vec<Request>) -> Result<Vec<Prepared>> {
        if let Some(r) = requests.iter().find(|r| r.images == 0) {
            return Err(Error::setting(format!("a request for no images ({:.40})", r.prompt)));
        }
        let mut texts: Vec<&str> = requests.iter().map(|r| r.prompt.as_str()).collect();
        texts.extend(requests.iter().filter_map(|r| r.negative_prompt.as_deref()));
        let mut encoded = self.encode_prompts(&texts)?.into_iter();
        let prompts: Vec<_> = encoded.by_ref().take(requests.len()).collect();
        Ok(requests
            .into_iter()
            .zip(prompts)
            .map(|(request, p)| {
                let negative = request.negative_prompt.as_ref().and_then(|_| encoded.next()).map(|n| n.features);
                Prepared { request, truncated: p.truncated, features: p.features, negative }
            })
            .collect())
    }

    /// Generates the images of `batch` over `schedule` as one batch, then decodes them.
    /// `on_scale` runs after every scale; when it breaks, generation stops there and `None` is
    /// returned.
    pub fn text_to_image(
        &self,
        batch: &[&Prepared],
        schedule: &Schedule,
        mut on_scale: impl FnMut(&ScaleProgress) -> ControlFlow<()>,
    ) -> Result<Option<Images>> {
        let rows: Vec<(Vec<Tensor>, Option<Vec<Tensor>>)> = batch
            .iter()
            .map(|p| {
                let n = p.request.images;
                (vec![p.features.clone(); n], p.negative.as_ref().map(|neg| vec![neg.clone(); n]))
            })
            .collect();
        let groups: Vec<Group> = batch
            .iter()
            .zip(&rows)
            .map(|(p, (prompts, negatives))| Group {
                prompts,
                negatives: negatives.as_deref(),
                sampling: &p.request.sampling,
            })
            .collect();
        let spans = row_spans(batch.iter().map(|p| p.request.images));
        let layout = TokenLayout::of(&self.transformer.config);

        let start = Instant::now();
        let generated = generate_groups(&self.transformer, &groups, schedule, &[], |step| {
            let progress = ScaleProgress {
                scale: step.index,
                scales: schedule.num_scales(),
                pipeline: self,
                summed: step.summed_codes,
                spans: &spans,
                grid: layout.vae_grid(schedule.grids[step.index]),
            };
            on_scale(&progress)
        })?;
        let Some(generated) = generated else { return Ok(None) };
        let transformer_seconds = start.elapsed().as_secs_f64();

        let start = Instant::now();
        let mut all = pictures(&self.vae.decode(&generated.summed_codes)?)?.into_iter();
        let pictures = spans.iter().map(|&(_, n)| all.by_ref().take(n).collect()).collect();
        Ok(Some(Images { pictures, transformer_seconds, decode_seconds: start.elapsed().as_secs_f64() }))
    }
}

/// A seed from the clock, the process and a counter, for requests that did not ask for one
/// (two in the same nanosecond still differ).
pub fn random_seed() -> u64 {
    static DRAWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let count = DRAWN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mixed = (nanos ^ (u64::from(std::process::id()) << 32)).wrapping_add(count.wrapping_mul(0xD1B5_4A32_D192_ED03));
    // Below 2^53, so that a seed survives JSON read as doubles (the web page shows and reuses it).
    mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11
}
