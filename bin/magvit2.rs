//! `infinity-run magvit2`: class-conditional Open-MAGVIT2 generation, and the Open-MAGVIT2
//! branch of `reconstruct` (argument checks and reporting; the work is in models::magvit2).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use infinity::models::image::{fit_to, psnr, save_png, to_rgb8, to_tensor};
use infinity::models::magvit2::generate::{Sampling, check_pair, generate};
use infinity::models::magvit2::{ArModel, Tokenizer, TokenizerConfig};
use infinity::models::schedule::{PixelBudget, Template};
use infinity::runtime::io::{Weights, open_checkpoint};
use infinity::runtime::{Device, DeviceName};

/// Generate ImageNet classes with an Open-MAGVIT2 AR model.
#[derive(Args)]
pub struct Magvit2Args {
    /// Class indices (0–999), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    class: Vec<usize>,
    /// Images per class.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Guidance of the pre and post sub-tokens (one value for both, or two); ≤ 1 disables.
    #[arg(long, value_delimiter = ',', default_value = "1.75,1.85")]
    cfg: Vec<f32>,
    /// Logit temperature per sub-token.
    #[arg(long, value_delimiter = ',', default_value = "1.1,1.0")]
    temperature: Vec<f32>,
    /// Keep the k largest logits per sub-token (0: all; ties at the k-th kept).
    #[arg(long, value_delimiter = ',', default_value = "0,0")]
    top_k: Vec<usize>,
    /// Nucleus mass per sub-token (1: off).
    #[arg(long, value_delimiter = ',', default_value = "1,1")]
    top_p: Vec<f32>,
    /// Random seed; the same seed gives the same image on every device.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The AR checkpoint (AR_256_B.ckpt … AR_256_XL.ckpt, or safetensors).
    #[arg(long)]
    ar: PathBuf,
    /// The tokenizer (a tokenizer .ckpt or safetensors); default: the AR checkpoint's first stage.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Image side in pixels (the released generators: 256).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Output PNG; several images are numbered (out_0000.png, …).
    #[arg(short, long, default_value = "out.png")]
    out: PathBuf,
    /// cpu, cuda / cuda:N, or shim.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceName,
}

/// One or two per-sub-token values of `flag`.
fn pair<T: Copy>(flag: &str, v: &[T]) -> Result<[T; 2], String> {
    match v {
        [a] => Ok([*a, *a]),
        [a, b] => Ok([*a, *b]),
        _ => Err(format!("--{flag} takes one value or two (pre,post)")),
    }
}

fn sampling(a: &Magvit2Args) -> Result<Sampling, String> {
    let s = Sampling {
        cfg: pair("cfg", &a.cfg)?,
        temperature: pair("temperature", &a.temperature)?,
        top_k: pair("top-k", &a.top_k)?,
        top_p: pair("top-p", &a.top_p)?,
        seed: a.seed,
    };
    if s.cfg.iter().any(|c| !c.is_finite() || *c < 0.0) {
        return Err(format!("--cfg {:?}: must be finite numbers ≥ 0", a.cfg));
    }
    if s.temperature.iter().any(|t| !(t.is_finite() && *t > 0.0)) {
        return Err(format!("--temperature {:?}: must be positive", a.temperature));
    }
    if s.top_p.iter().any(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(format!("--top-p {:?}: must be in (0, 1]", a.top_p));
    }
    Ok(s)
}

pub fn run(a: &Magvit2Args, device: &Device) -> Result<(), Box<dyn Error>> {
    // Everything that can be refused is refused before a weight is converted.
    let sampling = sampling(a)?;
    if a.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let ar_weights = open_checkpoint(&a.ar, |_| true)?;
    let tok_weights = match &a.tokenizer {
        Some(path) => open_checkpoint(path, |_| true)?,
        None => ar_weights.clone(),
    };
    let tok_path = a.tokenizer.as_deref().unwrap_or(&a.ar);
    let tok_config = TokenizerConfig::detect(&tok_weights)
        .map_err(|msg| format!("{}: not an Open-MAGVIT2 tokenizer: {msg}", tok_path.display()))?;
    let f = tok_config.downsample();
    if a.size == 0 || !a.size.is_multiple_of(f) {
        return Err(
            format!("--size {}: must be a positive multiple of the tokenizer's {f} pixels per token", a.size).into()
        );
    }
    let config = ArModel::detect_config(&ar_weights, a.size / f)?;
    if let Some(&bad) = a.class.iter().find(|&&c| c >= config.class_num) {
        return Err(format!("--class {bad}: out of range, the model has classes 0–{}", config.class_num - 1).into());
    }
    check_pair(&config, &tok_config).map_err(|e| format!("{} and {}: {e}", a.ar.display(), tok_path.display()))?;

    let start = Instant::now();
    let ar = ArModel::with_config_on(&ar_weights, config, device)?;
    let tokenizer = Tokenizer::with_config_on(&tok_weights, tok_config, device)?;
    drop((ar_weights, tok_weights));
    println!(
        "loaded the AR model (width {}, {} + {} layers) and the tokenizer in {:.2} s; {}x{} images, {} tokens; running on {device}",
        ar.config.dim,
        ar.config.spatial_layers,
        ar.config.factorized_layers,
        start.elapsed().as_secs_f64(),
        a.size,
        a.size,
        ar.config.tokens()
    );
    let labels: Vec<usize> = a.class.iter().flat_map(|&c| std::iter::repeat_n(c, a.batch)).collect();
    let bar = ProgressBar::new(ar.config.tokens() as u64).with_style(
        ProgressStyle::with_template("[{bar:30}] token {pos}/{len} {elapsed_precise}")
            .unwrap_or(ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let out = generate(&ar, &labels, &sampling, |_| bar.inc(1))?;
    bar.finish_and_clear();
    let ar_time = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let images = to_rgb8(&tokenizer.decode(&out.codes)?)?;
    let decode_time = start.elapsed().as_secs_f64();
    for (i, (rgb, class)) in images.iter().zip(&labels).enumerate() {
        let path = numbered(&a.out, i, images.len());
        let parameters = format!(
            "seed={} batch_index={} cfg={:?} temperature={:?} top_k={:?} top_p={:?} size={}x{} ar={} tokenizer={}",
            a.seed,
            i % a.batch,
            sampling.cfg,
            sampling.temperature,
            sampling.top_k,
            sampling.top_p,
            a.size,
            a.size,
            a.ar.display(),
            tok_path.display()
        );
        let text = [
            ("class", class.to_string()),
            ("parameters", parameters),
            ("Software", format!("infinity-run {}", env!("CARGO_PKG_VERSION"))),
        ];
        save_png(&path, a.size, a.size, rgb, &text)?;
        println!("wrote {}", path.display());
    }
    println!("time: AR {ar_time:.2} s, decode {decode_time:.2} s");
    Ok(())
}

/// `out.png` for a single image, else `out_0000.png`, `out_0001.png`, ….
fn numbered(out: &Path, index: usize, total: usize) -> PathBuf {
    if total == 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().map_or("out".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}_{index:04}.png"))
}

/// Whether a checkpoint holds an Open-MAGVIT2 tokenizer (the `reconstruct` branch).
pub fn is_tokenizer(path: &Path) -> Result<bool, Box<dyn Error>> {
    Ok(TokenizerConfig::detect(&Weights::open(path)?).is_ok())
}

/// Tokenises each image at the budget's square size and decodes it back; prints the PSNR.
pub fn reconstruct(
    path: &Path,
    images: &[(PathBuf, image::RgbImage)],
    pn: PixelBudget,
    out: impl Fn(usize) -> PathBuf,
    device: &Device,
) -> Result<(), Box<dyn Error>> {
    let (size, _) = Template::exact(1.0).ok_or("no square template")?.schedule(pn).pixel_size();
    let tok = Tokenizer::open_on(path, device)?;
    println!(
        "loaded {} ({} bits per token, 1/{} per side); running on {device}",
        path.display(),
        tok.config.z_channels,
        tok.config.downsample()
    );
    for (index, (image_path, img)) in images.iter().enumerate() {
        let input = fit_to(img, (size, size))?;
        let start = Instant::now();
        let q = tok.tokenize(&to_tensor(&input)?)?;
        let rgb = to_rgb8(&tok.decode(&q.codes)?)?.swap_remove(0);
        let tokens = q.indices.numel();
        println!(
            "{}: {size}x{size}, {tokens} tokens of {} bits ({:.3} bits/pixel), PSNR {:.2} dB, {:.2} s",
            image_path.display(),
            tok.config.z_channels,
            (tokens * tok.config.z_channels) as f64 / (size * size) as f64,
            psnr(input.as_raw(), &rgb),
            start.elapsed().as_secs_f64()
        );
        let text = [
            ("Software", "infinity-run reconstruct".to_string()),
            ("Source", format!("tokenizer={} image={} pn={pn}", path.display(), image_path.display())),
        ];
        let target = out(index);
        save_png(&target, size, size, &rgb, &text)?;
        println!("wrote {}", target.display());
    }
    Ok(())
}
