//! `infinity-run var`: class-conditional VAR generation and zero-shot editing, and the VQVAE
//! branch of `reconstruct` (argument checks and reporting; the work is in models::var).

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use infinity::models::image::{fit_to, image_grid, load_rgb, psnr, save_png, to_rgb8, to_tensor};
use infinity::models::schedule::PixelBudget;
use infinity::models::var::config::{PATCH, PATCH_NUMS_256, PATCH_NUMS_512};
use infinity::models::var::generate::check_pair;
use infinity::models::var::{Edit, VarSampling, VarTransformer, VqVae, VqVaeConfig, generate};
use infinity::runtime::Device;
use infinity::runtime::io::Weights;

/// Generate ImageNet classes with a VAR model (8 images per row in one PNG).
#[derive(Args)]
pub struct VarArgs {
    /// Class indices (0–999), comma-separated; one image each.
    #[arg(long, value_delimiter = ',', required = true)]
    class: Vec<usize>,
    /// Guidance at the last scale; it ramps up linearly from 0 at the first.
    #[arg(long, default_value_t = 4.0)]
    cfg: f32,
    /// Keep the k most likely codes (0 = all, 1 = greedy).
    #[arg(long, default_value_t = 900)]
    top_k: usize,
    /// Nucleus sampling mass (0 disables).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Random seed; the same seed gives the same image on every device.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Blend the codebook by a Gumbel softmax for a smoother image (the official visualisation
    /// option; not for FID).
    #[arg(long)]
    more_smooth: bool,
    /// VAR transformer checkpoint (var_d16.pth … var_d36.pth, or safetensors).
    #[arg(long = "var")]
    transformer: PathBuf,
    /// VQVAE checkpoint (vae_ch160v4096z32.pth).
    #[arg(long)]
    vae: PathBuf,
    /// Zero-shot editing: an image whose tokens are kept outside the mask.
    #[arg(long, requires = "mask")]
    edit: Option<PathBuf>,
    /// The edit's mask, scaled and cropped like the image: white is generated anew, black kept.
    #[arg(long, requires = "edit")]
    mask: Option<PathBuf>,
    /// Output PNG.
    #[arg(short, long, default_value = "out.png")]
    out: PathBuf,
    /// cpu, cuda / cuda:N, or shim.
    #[arg(long, default_value = "cpu")]
    pub device: infinity::runtime::DeviceName,
}

pub fn run(a: &VarArgs, device: &Device) -> Result<(), Box<dyn Error>> {
    // Everything that can be refused is refused before a weight is converted.
    check_numbers(a)?;
    let var_weights = Weights::open(&a.transformer)?;
    let config = VarTransformer::detect_config(&var_weights)?;
    if let Some(&bad) = a.class.iter().find(|&&c| c >= config.num_classes) {
        return Err(format!("--class {bad}: out of range, the model has classes 0–{}", config.num_classes - 1).into());
    }
    let vae_weights = Weights::open(&a.vae)?;
    let vae_config = VqVaeConfig::detect(&vae_weights.shapes())
        .map_err(|msg| format!("{}: not a VAR VQVAE: {msg}", a.vae.display()))?;
    check_pair(&config, &vae_config)
        .map_err(|e| format!("{} and {}: {e}", a.transformer.display(), a.vae.display()))?;
    let size = config.image_size();
    let edit_inputs = match (&a.edit, &a.mask) {
        (Some(image), Some(mask)) => {
            Some((fit_to(&load_rgb(image)?, (size, size))?, fit_to(&load_rgb(mask)?, (size, size))?))
        }
        _ => None,
    };

    let start = Instant::now();
    let var = VarTransformer::with_config_on(&var_weights, config, device)?;
    let vae = VqVae::with_config_on(&vae_weights, vae_config, device)?;
    drop((var_weights, vae_weights));
    println!(
        "loaded VAR d{} ({size}x{size}, {} scales) in {:.2} s; running on {device}",
        var.config.depth,
        var.config.num_scales(),
        start.elapsed().as_secs_f64()
    );
    let edit = match &edit_inputs {
        Some((image, mask)) => Some(Edit::from_mask(&vae, &to_tensor(image)?, mask, &var.config.patch_nums)?),
        None => None,
    };
    let sampling = VarSampling { cfg: a.cfg, top_k: a.top_k, top_p: a.top_p, seed: a.seed, more_smooth: a.more_smooth };
    let bar = ProgressBar::new(var.config.num_scales() as u64).with_style(
        ProgressStyle::with_template("[{bar:30}] scale {pos}/{len} {elapsed_precise}")
            .unwrap_or(ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let out = generate(&var, &vae, &a.class, &sampling, edit.as_ref(), |_| bar.inc(1))?;
    bar.finish_and_clear();
    let transformer_time = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let grid = image_grid(&vae.decode(&out.f_hat)?)?;
    let decode_time = start.elapsed().as_secs_f64();
    let classes = a.class.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
    let mut parameters = format!(
        "seed={} cfg={} top_k={} top_p={} more_smooth={} size={size}x{size} var={} vae={}",
        a.seed,
        a.cfg,
        a.top_k,
        a.top_p,
        a.more_smooth,
        a.transformer.display(),
        a.vae.display()
    );
    if let (Some(image), Some(mask)) = (&a.edit, &a.mask) {
        parameters += &format!(" edit={} mask={}", image.display(), mask.display());
    }
    let text = [
        ("classes", classes),
        ("parameters", parameters),
        ("Software", format!("infinity-run {}", env!("CARGO_PKG_VERSION"))),
    ];
    save_png(&a.out, grid.width, grid.height, &grid.rgb, &text)?;
    println!("wrote {} ({} images)", a.out.display(), a.class.len());
    println!("time: transformer {transformer_time:.2} s, decode {decode_time:.2} s");
    Ok(())
}

fn check_numbers(a: &VarArgs) -> Result<(), String> {
    if !(a.cfg.is_finite() && a.cfg >= 0.0) {
        return Err(format!("--cfg {}: must be a finite number ≥ 0", a.cfg));
    }
    if !(0.0..1.0).contains(&a.top_p) {
        return Err(format!("--top-p {}: must be in [0, 1)", a.top_p));
    }
    Ok(())
}

/// Whether a checkpoint is a VAR VQVAE (the `reconstruct` branch).
pub fn is_vqvae(path: &Path) -> Result<bool, Box<dyn Error>> {
    Ok(Weights::open(path)?.contains("quantize.embedding.weight"))
}

/// The 256² or 512² schedule of a pixel budget.
fn schedule_of(pn: PixelBudget) -> Result<&'static [usize], String> {
    match pn {
        PixelBudget::P006M => Ok(&PATCH_NUMS_256),
        PixelBudget::P025M => Ok(&PATCH_NUMS_512),
        other => Err(format!("--pn {other}: the VAR VQVAE's schedules are 0.06M (256²) and 0.25M (512²)")),
    }
}

/// Encodes each image into its tokens at every scale and decodes them back; prints the PSNR.
pub fn reconstruct(
    vae_path: &Path,
    images: &[(PathBuf, image::RgbImage)],
    pn: PixelBudget,
    out: impl Fn(usize) -> PathBuf,
    device: &Device,
) -> Result<(), Box<dyn Error>> {
    let patch_nums = schedule_of(pn)?;
    let size = patch_nums[patch_nums.len() - 1] * PATCH;
    let vae = VqVae::open_on(vae_path, device)?;
    println!(
        "loaded {} (V = {}, Cvae = {}); running on {device}",
        vae_path.display(),
        vae.config.vocab,
        vae.config.cvae()
    );
    for (index, (path, img)) in images.iter().enumerate() {
        let input = fit_to(img, (size, size))?;
        let start = Instant::now();
        let (tokens, f_hat) = vae.encode(&to_tensor(&input)?, patch_nums)?;
        let rgb = to_rgb8(&vae.decode(&f_hat)?)?.swap_remove(0);
        let total: usize = tokens.iter().map(|t| t.numel()).sum();
        let bits = total as f64 * (vae.config.vocab as f64).log2();
        println!(
            "{}: {size}x{size}, {total} tokens over {} scales ({:.3} bits/pixel), PSNR {:.2} dB, {:.2} s",
            path.display(),
            patch_nums.len(),
            bits / (size * size) as f64,
            psnr(input.as_raw(), &rgb),
            start.elapsed().as_secs_f64()
        );
        let text = [
            ("Software", "infinity-run reconstruct".to_string()),
            ("Source", format!("vae={} image={} pn={pn}", vae_path.display(), path.display())),
        ];
        let path = out(index);
        save_png(&path, size, size, &rgb, &text)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
