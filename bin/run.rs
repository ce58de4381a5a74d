//! `infinity-run`: the command-line front end (argument parsing and reporting only).
//! `generate` (the default) turns prompts into PNGs; `inspect FILE` lists the tensors of a
//! checkpoint; `reconstruct` runs an image through the BitVAE's bits (or VAR's VQVAE tokens)
//! and back; `var` and `magvit2` generate ImageNet classes with a VAR or Open-MAGVIT2 model. Any failure is
//! one line on stderr, `error: <message>`, and exit code 2, before any output file is written.

use std::error::Error;
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use std::time::Instant;

mod magvit2;
mod report;
mod var;
use report::peak_rss_mib;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use infinity::cuda::Executor;
use infinity::models::bitvae::BitVae;
use infinity::models::bitvae::quantizer::Quantized;
use infinity::models::image::{fit_to, load_rgb, psnr, save_png, to_rgb8, to_tensor};
use infinity::models::infinity::{SamplingConfig, TokenLayout};
use infinity::models::model_folder::ModelFiles;
use infinity::models::pipeline::{Pipeline, TextEncoder, read_prompt_file};
use infinity::models::schedule::{PATCH, PixelBudget, Template};
use infinity::models::text_to_image::{ImageSize, Request, random_seed};
use infinity::runtime::io::{Weights, check_writable, open_checkpoint};
use infinity::runtime::{Device, DeviceName};

#[derive(Parser)]
#[command(name = "infinity-run", version, about = "Infinity text-to-image inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from text prompts (the default command).
    Generate(Box<GenerateArgs>),
    /// List the tensors of a checkpoint (.safetensors or PyTorch .pth).
    ///
    /// One line per tensor (name, dtype, shape) in file order, then the tensor count and the
    /// total parameter count.
    Inspect {
        /// The checkpoint: a file, or a sharded checkpoint's index or folder (the 8B's).
        file: PathBuf,
    },
    /// Encode an image into multi-scale bits with a BitVAE and decode it back.
    ///
    /// The image is scaled to cover the nearest aspect-ratio template at the pixel budget and
    /// centre-cropped; prints the bits per scale and the PSNR of the reconstruction.
    Reconstruct(ReconstructArgs),
    /// Generate ImageNet classes with a VAR model, or edit an image with one.
    ///
    /// Several classes make one PNG, 8 per row without padding, as the official demo does.
    /// `--edit image --mask mask` keeps the image's tokens outside the mask's white region at
    /// every scale (in- and out-painting).
    Var(Box<var::VarArgs>),
    /// Generate ImageNet classes with an Open-MAGVIT2 AR model (one PNG per image).
    ///
    /// Each token is drawn as two sub-tokens with their own guidance, temperature, top-k and
    /// top-p (`--cfg 1.75,1.85` …); the tokenizer defaults to the AR checkpoint's first stage.
    Magvit2(Box<magvit2::Magvit2Args>),
}

/// Encode images into multi-scale bits with a BitVAE and decode them back.
///
/// Each image is scaled to cover the nearest aspect-ratio template at the pixel budget and
/// centre-cropped; prints the bits per scale (one image) and each image's PSNR, then their mean.
#[derive(Args)]
struct ReconstructArgs {
    /// BitVAE checkpoint (official .pth or safetensors), VAR's VQVAE (then --pn 0.06M or 0.25M
    /// picks its 256² or 512² schedule), or an Open-MAGVIT2 tokenizer (.ckpt or safetensors;
    /// --pn sets the square size).
    #[arg(long)]
    vae: PathBuf,
    /// Input image (PNG or JPEG); repeat for several.
    #[arg(long)]
    image: Vec<PathBuf>,
    /// A file listing input images, one path per line (relative to the file's folder).
    #[arg(long)]
    image_list: Option<PathBuf>,
    /// Pixel budget: 0.06M (256²), 0.25M (512²), 0.60M or 1M (1024²).
    #[arg(long, default_value = "0.25M")]
    pn: PixelBudget,
    /// Output PNG; several reconstructions are numbered (out_0000.png, …), unless --grid puts
    /// them in one.
    #[arg(short, long)]
    out: PathBuf,
    /// Write one PNG of (original, reconstruction) pairs, this many pairs per row (images of
    /// one template only).
    #[arg(long)]
    grid: Option<usize>,
    /// cpu, cuda / cuda:N, or shim: where the encoder, the quantizer and the decoder run.
    #[arg(long, default_value = "cpu")]
    device: DeviceName,
}
#[derive(Args)]
struct GenerateArgs {
    /// A prompt (repeat for several).
    #[arg(short, long)]
    prompt: Vec<String>,
    /// Text for the unconditional half of guidance instead of the learned null text.
    #[arg(long)]
    negative_prompt: Option<String>,
    /// A file with one prompt per line (blank lines skipped).
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Random seed; chosen at random (and printed) when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Guidance weight on the logits, one value or one per scale (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "3")]
    cfg: Vec<f32>,
    /// Logit temperature, one value or one per scale (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    tau: Vec<f32>,
    /// Keep the k most likely values of each bit (1 = greedy; ≥ 2 keeps both).
    #[arg(long, default_value_t = 900)]
    top_k: usize,
    /// Set a bit to its likelier value when the other has probability ≤ 1 − top_p (0 disables).
    #[arg(long, default_value_t = 0.97)]
    top_p: f32,
    /// Take the likelier value of every bit (deterministic).
    #[arg(long)]
    greedy: bool,
    /// Pixel budget: 0.06M (256²), 0.25M (512²), 0.60M or 1M (1024²); default: the model's, else 1M.
    #[arg(long)]
    pn: Option<PixelBudget>,
    /// Aspect ratio H:W; the nearest official template is used.
    #[arg(long, default_value = "1:1")]
    ratio: String,
    /// Images per prompt.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Output PNG; several images are numbered (out_0000.png, …), unless --grid puts them in one.
    #[arg(short, long, default_value = "out.png")]
    out: PathBuf,
    /// Write all images as one PNG, this many per row (in prompt order, then batch order).
    #[arg(long)]
    grid: Option<usize>,
    /// A model folder with config.json and the weight files.
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Transformer checkpoint (instead of --model-dir).
    #[arg(long, requires_all = ["vae", "t5", "t5_config", "tokenizer"], conflicts_with = "model_dir")]
    transformer: Option<PathBuf>,
    /// BitVAE checkpoint.
    #[arg(long, requires = "transformer")]
    vae: Option<PathBuf>,
    /// T5 encoder weights: file, sharded index json, or Hugging Face folder.
    #[arg(long, requires = "transformer")]
    t5: Option<PathBuf>,
    /// T5 config.json.
    #[arg(long, requires = "transformer")]
    t5_config: Option<PathBuf>,
    /// tokenizer.json of the T5 encoder.
    #[arg(long, requires = "transformer")]
    tokenizer: Option<PathBuf>,
    /// cpu, cuda / cuda:N, or shim: on a GPU the T5 encoder, the transformer and the BitVAE
    /// decoder run there (bf16 weights and GEMM operands, f32 accumulation); tokenizing and
    /// sampling stay here. `shim` runs the same GPU kernels on the CPU (slowly): for checking
    /// and debugging the GPU path without a GPU.
    #[arg(long, default_value = "cpu")]
    device: DeviceName,
}

/// The subcommand names; anything else on the command line means `generate`.
const COMMANDS: [&str; 6] = ["generate", "inspect", "reconstruct", "var", "magvit2", "help"];

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    if !(COMMANDS.contains(&first) || ["-h", "--help", "-V", "--version"].contains(&first)) {
        args.insert(1, "generate".into());
    }
    let cli: Cli = match report::parse_args(args) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Generate(g) => run_generate(*g),
        Command::Inspect { file } => inspect(&file),
        Command::Reconstruct(r) => reconstruct(&r),
        Command::Var(v) => executor(v.device)
            .map_err(Into::into)
            .and_then(|exec| var::run(&v, &exec.map_or(Device::Cpu, |e| e.device()))),
        Command::Magvit2(m) => executor(m.device)
            .map_err(Into::into)
            .and_then(|exec| magvit2::run(&m, &exec.map_or(Device::Cpu, |e| e.device()))),
    };
    report::exit_code(result)
}

fn inspect(file: &Path) -> Result<(), Box<dyn Error>> {
    let weights = open_checkpoint(file, |_| true)?;
    let listing = listing(&weights);
    match io::stdout().lock().write_all(listing.as_bytes()) {
        // The reader stopped early (`| head`): not an error of ours.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `H:W` → H/W, refusing ratios no template comes near.
fn parse_ratio(s: &str) -> Result<f64, String> {
    let bad = || format!("--ratio '{s}' is not H:W with positive numbers (e.g. 16:9)");
    let (h, w) = s.split_once(':').ok_or_else(bad)?;
    let (h, w): (f64, f64) = (h.trim().parse().map_err(|_| bad())?, w.trim().parse().map_err(|_| bad())?);
    let r = h / w;
    if !(r.is_finite() && r > 0.0) {
        return Err(bad());
    }
    if !(1.0 / 3.5..=3.5).contains(&r) {
        return Err(format!("--ratio {s}: the templates span 1:3 to 3:1"));
    }
    Ok(r)
}

fn prompts_of(g: &GenerateArgs) -> Result<Vec<String>, Box<dyn Error>> {
    let mut prompts = g.prompt.clone();
    if let Some(file) = &g.prompt_file {
        prompts.extend(read_prompt_file(file)?);
    }
    if prompts.is_empty() {
        return Err("no prompt: give -p/--prompt or --prompt-file".into());
    }
    Ok(prompts)
}

/// `out.png` for a single image, else `out_0000.png`, `out_0001.png`, ….
fn output_path(out: &Path, index: usize, total: usize) -> PathBuf {
    if total == 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().map_or("out".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}_{index:04}.png"))
}

fn run_generate(g: GenerateArgs) -> Result<(), Box<dyn Error>> {
    // Everything that can be refused is refused before a weight is read.
    let executor = executor(g.device)?;
    let prompts = prompts_of(&g)?;
    let ratio = parse_ratio(&g.ratio)?;
    if g.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if g.grid == Some(0) {
        return Err("--grid must be at least 1 image per row".into());
    }
    check_output(&g.out)?;
    let files = match (&g.transformer, &g.model_dir) {
        (Some(t), _) => ModelFiles {
            transformer: t.clone(),
            vae: g.vae.clone().ok_or("--vae is required with --transformer")?,
            t5: g.t5.clone().ok_or("--t5 is required with --transformer")?,
            t5_config: g.t5_config.clone().ok_or("--t5-config is required with --transformer")?,
            tokenizer: g.tokenizer.clone().ok_or("--tokenizer is required with --transformer")?,
            default_pn: None,
        },
        (None, Some(dir)) => ModelFiles::from_dir(dir)?,
        (None, None) => ModelFiles::default_model()?,
    };
    files.check_exist()?;
    let pn = g.pn.or(files.default_pn).unwrap_or(PixelBudget::P1M);
    let template = Template::nearest(ratio).ok_or("bad ratio")?;
    let size = ImageSize { template, pn };
    let schedule = size.schedule();
    let sampling = SamplingConfig {
        cfg: g.cfg.clone(),
        tau: g.tau.clone(),
        top_k: g.top_k,
        top_p: g.top_p,
        greedy: g.greedy,
        seed: g.seed.unwrap_or_else(random_seed),
    };
    sampling.validate(schedule.num_scales())?;
    if g.seed.is_none() {
        println!("seed {}", sampling.seed);
    }
    let (h, w) = schedule.pixel_size();
    println!(
        "{h}x{w} (H x W; template h/w {}, {pn}, {} scales, {} tokens)",
        template.ratio(),
        schedule.num_scales(),
        schedule.seq_len()
    );

    let start = Instant::now();
    let device = executor.as_ref().map_or(Device::Cpu, |exec| exec.device());
    let mut pipeline = Pipeline::load(&files, &device)?;
    match &executor {
        Some(exec) => println!("loaded models in {:.2} s; running on {}", start.elapsed().as_secs_f64(), exec.name()),
        None => println!("loaded models in {:.2} s", start.elapsed().as_secs_f64()),
    }

    let start = Instant::now();
    let requests = prompts
        .iter()
        .map(|prompt| Request {
            prompt: prompt.clone(),
            negative_prompt: g.negative_prompt.clone(),
            images: g.batch,
            sampling: sampling.clone(),
        })
        .collect();
    let prepared = pipeline.prepare(requests)?;
    let max_tokens = pipeline.text.as_ref().map_or(0, TextEncoder::max_tokens);
    pipeline.drop_text_encoder();
    if let Some(exec) = &executor {
        // The encoder's memory goes back to the GPU for the transformer's activations.
        exec.empty_cache();
    }
    for p in prepared.iter().filter(|p| p.truncated) {
        eprintln!("warning: prompt cut to the {max_tokens} tokens the model reads: {:.60}…", p.request.prompt);
    }
    let text_time = start.elapsed().as_secs_f64();

    let total = prompts.len() * g.batch;
    let (mut transformer_time, mut decode_time) = (0.0, 0.0);
    let mut tiles = Vec::new();
    let model = files.transformer.display().to_string();
    let software = format!("infinity-run {}", env!("CARGO_PKG_VERSION"));
    for (i, p) in prepared.iter().enumerate() {
        let bar = ProgressBar::new(schedule.num_scales() as u64).with_style(
            ProgressStyle::with_template("{msg:>12} [{bar:30}] scale {pos}/{len} {elapsed_precise}")
                .unwrap_or(ProgressStyle::default_bar()),
        );
        bar.set_message(format!("prompt {}/{}", i + 1, prompts.len()));
        let images = pipeline.text_to_image(&[p], &schedule, |_| {
            bar.inc(1);
            ControlFlow::Continue(())
        })?;
        bar.finish_and_clear();
        let images = images.ok_or("generation stopped")?;
        transformer_time += images.transformer_seconds;
        decode_time += images.decode_seconds;
        for (b, picture) in images.pictures.into_iter().flatten().enumerate() {
            if g.grid.is_some() {
                tiles.push(picture.rgb);
                continue;
            }
            let path = output_path(&g.out, i * g.batch + b, total);
            save_png(&path, w, h, &picture.rgb, &p.request.png_text(b, size, &model, &software))?;
            println!("wrote {}", path.display());
        }
    }
    if let Some(cols) = g.grid {
        let (sheet, sheet_w, sheet_h) = tile(&tiles, (h, w), cols);
        let listing = prompts.iter().enumerate().map(|(i, p)| format!("{i}: {p}")).collect::<Vec<_>>().join("\n");
        let parameters = format!(
            "seed={} batch={} cfg={:?} tau={:?} top_k={} top_p={} greedy={} pn={pn} size={w}x{h} grid={cols}",
            sampling.seed, g.batch, sampling.cfg, sampling.tau, sampling.top_k, sampling.top_p, sampling.greedy
        );
        let text = [("prompts", listing), ("parameters", parameters), ("Software", software)];
        save_png(&g.out, sheet_w, sheet_h, &sheet, &text)?;
        println!("wrote {} ({} images, {cols} per row)", g.out.display(), tiles.len());
    }
    println!("time: text {text_time:.2} s, transformer {transformer_time:.2} s, decode {decode_time:.2} s");
    if let Some(mib) = peak_rss_mib() {
        println!("peak memory {mib:.0} MiB");
    }
    Ok(())
}

/// White space between the images of a grid, in pixels.
const GRID_GAP: usize = 4;

/// RGB images of `(h, w)` laid out `cols` per row on white, `GRID_GAP` apart → (pixels, width, height).
fn tile(images: &[Vec<u8>], (h, w): (usize, usize), cols: usize) -> (Vec<u8>, usize, usize) {
    let cols = cols.min(images.len()).max(1);
    let rows = images.len().div_ceil(cols);
    let (sheet_w, sheet_h) = (cols * w + (cols - 1) * GRID_GAP, rows * h + rows.saturating_sub(1) * GRID_GAP);
    let mut sheet = vec![255u8; sheet_w * sheet_h * 3];
    for (i, img) in images.iter().enumerate() {
        let (x0, y0) = ((i % cols) * (w + GRID_GAP), (i / cols) * (h + GRID_GAP));
        for (y, row) in img.chunks(w * 3).enumerate() {
            let start = ((y0 + y) * sheet_w + x0) * 3;
            sheet[start..start + w * 3].copy_from_slice(row);
        }
    }
    (sheet, sheet_w, sheet_h)
}

/// Refuses an output path whose folder does not exist or cannot be written, before any slow work.
fn check_output(out: &Path) -> Result<(), Box<dyn Error>> {
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(format!("{}: the output folder does not exist", out.display()).into());
    }
    Ok(check_writable(dir)?)
}

/// The images of `--image` and `--image-list`, in that order; refuses none given or a list it
/// cannot read.
fn reconstruct_inputs(r: &ReconstructArgs) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut images = r.image.clone();
    if let Some(list) = &r.image_list {
        let text = std::fs::read_to_string(list).map_err(|e| format!("{}: {e}", list.display()))?;
        let folder = list.parent().unwrap_or(Path::new("."));
        images.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| folder.join(l)));
    }
    if images.is_empty() {
        return Err("no image: give --image or --image-list".into());
    }
    Ok(images)
}

/// The executor `--device` names; none for the CPU.
fn executor(name: DeviceName) -> Result<Option<Arc<Executor>>, String> {
    Executor::named(name).map_err(|e| format!("--device {name}: {e}"))
}

fn reconstruct(r: &ReconstructArgs) -> Result<(), Box<dyn Error>> {
    let device = executor(r.device)?.map_or(Device::Cpu, |exec| exec.device());
    check_output(&r.out)?;
    if r.grid == Some(0) {
        return Err("--grid must be at least 1 pair per row".into());
    }
    let images = reconstruct_inputs(r)?;
    // Every image decoded before any work, so a bad one leaves no partial output behind.
    let decoded_inputs = images.iter().map(|p| load_rgb(p)).collect::<Result<Vec<_>, _>>()?;
    if var::is_vqvae(&r.vae)? {
        if r.grid.is_some() {
            return Err("--grid is for BitVAE reconstructions; VAR's VQVAE writes one PNG per image".into());
        }
        let inputs: Vec<_> = images.iter().cloned().zip(decoded_inputs).collect();
        return var::reconstruct(&r.vae, &inputs, r.pn, |i| output_path(&r.out, i, images.len()), &device);
    }
    if magvit2::is_tokenizer(&r.vae)? {
        if r.grid.is_some() {
            return Err("--grid is for BitVAE reconstructions; Open-MAGVIT2's writes one PNG per image".into());
        }
        let inputs: Vec<_> = images.iter().cloned().zip(decoded_inputs).collect();
        return magvit2::reconstruct(&r.vae, &inputs, r.pn, |i| output_path(&r.out, i, images.len()), &device);
    }
    let start = Instant::now();
    let vae = BitVae::open_on(&r.vae, &device)?;
    let layout = TokenLayout::of_vae_patch(vae.config.patch).ok_or_else(|| {
        let patch = vae.config.patch;
        format!(
            "{}: patch {patch} VAEs do not fit the image schedules (patch {PATCH}, or {})",
            r.vae.display(),
            PATCH / 2
        )
    })?;
    println!(
        "loaded {} (d = {}) in {:.2} s; running on {device}",
        r.vae.display(),
        vae.config.z_channels,
        start.elapsed().as_secs_f64()
    );

    let (mut psnrs, mut pairs, mut size) = (Vec::new(), Vec::new(), None);
    for (index, (path, img)) in images.iter().zip(decoded_inputs).enumerate() {
        let ratio = f64::from(img.height()) / f64::from(img.width());
        let template = Template::nearest(ratio).ok_or_else(|| format!("{}: image has no area", path.display()))?;
        let schedule = template.schedule(r.pn);
        let (h, w) = schedule.pixel_size();
        if r.grid.is_some() && *size.get_or_insert((h, w)) != (h, w) {
            return Err(
                format!("{}: --grid needs images of one template ({h}x{w} after others)", path.display()).into()
            );
        }
        let input = fit_to(&img, (h, w))?;
        let start = Instant::now();
        // The VAE's own grids: twice the token grids for the 8B's patch-8 VAE.
        let grids = layout.vae_grids(&schedule.grids);
        let (q, decoded) = vae.reconstruct(&to_tensor(&input)?, &grids)?;
        let rgb = to_rgb8(&decoded)?.swap_remove(0);
        let quality = psnr(input.as_raw(), &rgb);
        psnrs.push(quality);
        if images.len() == 1 {
            println!(
                "{}: {}x{} -> {h}x{w} (template h/w {}, {}, {} scales)",
                path.display(),
                img.width(),
                img.height(),
                template.ratio(),
                r.pn,
                schedule.num_scales()
            );
            print_bits(&q, &grids, vae.config.z_channels, (h, w))?;
            println!("encode + decode {:.2} s", start.elapsed().as_secs_f64());
        }
        println!("{}: PSNR {quality:.2} dB", path.display());
        if r.grid.is_some() {
            pairs.extend([input.into_raw(), rgb]);
            continue;
        }
        let text = [
            ("Software", "infinity-run reconstruct".to_string()),
            ("Source", format!("vae={} image={} pn={}", r.vae.display(), path.display(), r.pn)),
        ];
        let out = output_path(&r.out, index, images.len());
        save_png(&out, w, h, &rgb, &text)?;
        println!("wrote {}", out.display());
    }
    if images.len() > 1 {
        println!("mean PSNR {:.2} dB over {} images", psnrs.iter().sum::<f64>() / psnrs.len() as f64, psnrs.len());
    }
    if let (Some(cols), Some((h, w))) = (r.grid, size) {
        let (sheet, sheet_w, sheet_h) = tile(&pairs, (h, w), 2 * cols);
        let listing = images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n");
        let text = [
            ("Software", "infinity-run reconstruct".to_string()),
            ("Source", format!("vae={} pn={} pairs of original and reconstruction", r.vae.display(), r.pn)),
            ("images", listing),
        ];
        save_png(&r.out, sheet_w, sheet_h, &sheet, &text)?;
        println!("wrote {} ({} pairs, {cols} per row)", r.out.display(), images.len());
    }
    Ok(())
}

/// The bits of each scale (and the share of ones), and the total per pixel.
fn print_bits(q: &Quantized, grids: &[(usize, usize)], d: usize, (h, w): (usize, usize)) -> Result<(), Box<dyn Error>> {
    let mut total = 0;
    for (k, &(gh, gw)) in grids.iter().enumerate() {
        let bits = gh * gw * d;
        total += bits;
        let ones = q.scales[k].bits.to_vec::<u8>()?.iter().filter(|&&b| b == 1).count();
        println!("scale {k:2}: {gh:3}x{gw:<3} {bits:7} bits ({:.1}% ones)", 100.0 * ones as f64 / bits as f64);
    }
    println!("{total} bits in all ({:.3} bits/pixel)", total as f64 / (h * w) as f64);
    Ok(())
}

/// `name  dtype  shape` in aligned columns, then `<n> tensors, <total> parameters`.
fn listing(weights: &Weights) -> String {
    let rows: Vec<(&str, &str, String)> =
        weights.iter().map(|(name, t)| (name, t.dtype().name(), format!("{:?}", t.shape()))).collect();
    let name_width = rows.iter().map(|(name, ..)| name.chars().count()).max().unwrap_or(0);
    let dtype_width = rows.iter().map(|(_, dtype, _)| dtype.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, dtype, shape) in rows {
        out += &format!("{name:<name_width$}  {dtype:<dtype_width$}  {shape}\n");
    }
    out += &format!("{} tensors, {} parameters\n", weights.len(), thousands(weights.total_params()));
    out
}

/// `1234567` → `1,234,567`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
