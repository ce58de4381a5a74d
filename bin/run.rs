//! `infinity-run`: the command-line front end (argument parsing and reporting only).
//! `inspect FILE` lists the tensors of a checkpoint; `reconstruct` runs an image through the
//! BitVAE's bits and back. Any failure is one line on stderr, `error: <message>`, and exit
//! code 2, before any output file is written.

use std::error::Error;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::time::Instant;

use clap::{Parser, Subcommand};
use infinity::models::bitvae::BitVae;
use infinity::models::image::{fit_to, load_rgb, psnr, save_png, to_rgb8, to_tensor};
use infinity::models::schedule::{PATCH, PixelBudget, Template};
use infinity::runtime::io::Weights;

#[derive(Parser)]
#[command(name = "infinity-run", version, about = "Infinity text-to-image inference")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the tensors of a checkpoint (.safetensors or PyTorch .pth).
    ///
    /// One line per tensor (name, dtype, shape) in file order, then the tensor count and the
    /// total parameter count.
    Inspect {
        /// The checkpoint file.
        file: PathBuf,
    },
    /// Encode an image into multi-scale bits with a BitVAE and decode it back.
    ///
    /// The image is scaled to cover the nearest aspect-ratio template at the pixel budget and
    /// centre-cropped; prints the bits per scale and the PSNR of the reconstruction.
    Reconstruct {
        /// BitVAE checkpoint (official .pth or safetensors).
        #[arg(long)]
        vae: PathBuf,
        /// Input image (PNG or JPEG).
        #[arg(long)]
        image: PathBuf,
        /// Pixel budget: 0.06M (256²), 0.25M (512²), 0.60M or 1M (1024²).
        #[arg(long, default_value = "0.25M")]
        pn: PixelBudget,
        /// Output PNG.
        #[arg(short, long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Inspect { file } => inspect(&file),
        Command::Reconstruct { vae, image, pn, out } => reconstruct(&vae, &image, pn, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line whatever the message holds, so scripts can grep it; if stderr itself is
            // gone there is nobody left to tell.
            let _ = writeln!(io::stderr(), "error: {}", e.to_string().replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

fn inspect(file: &Path) -> Result<(), Box<dyn Error>> {
    let weights = Weights::open(file)?;
    let listing = listing(&weights);
    match io::stdout().lock().write_all(listing.as_bytes()) {
        // The reader stopped early (`| head`): not an error of ours.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Refuses an output path whose folder does not exist, before any slow work.
fn check_output(out: &Path) -> Result<(), Box<dyn Error>> {
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(format!("{}: the output folder does not exist", out.display()).into());
    }
    Ok(())
}

fn reconstruct(vae_path: &Path, image_path: &Path, pn: PixelBudget, out: &Path) -> Result<(), Box<dyn Error>> {
    check_output(out)?;
    let img = load_rgb(image_path)?;
    let ratio = f64::from(img.height()) / f64::from(img.width());
    let template = Template::nearest(ratio).ok_or_else(|| format!("{}: image has no area", image_path.display()))?;
    let schedule = template.schedule(pn);
    let (h, w) = schedule.pixel_size();
    println!("{}: {}x{} -> {h}x{w} (template h/w {}, {pn}, {} scales)", image_path.display(), img.width(), img.height(), template.ratio(), schedule.num_scales());

    let start = Instant::now();
    let vae = BitVae::open(vae_path)?;
    if vae.config.patch != PATCH {
        return Err(format!("{}: patch {} VAEs are not supported by the image schedules (patch {PATCH})", vae_path.display(), vae.config.patch).into());
    }
    println!("loaded {} (d = {}) in {:.2} s", vae_path.display(), vae.config.z_channels, start.elapsed().as_secs_f64());

    let input = fit_to(&img, (h, w))?;
    let start = Instant::now();
    let (q, decoded) = vae.reconstruct(&to_tensor(&input)?, &schedule.grids)?;
    let d = vae.config.z_channels;
    let mut total = 0;
    for (k, &(gh, gw)) in schedule.grids.iter().enumerate() {
        let bits = gh * gw * d;
        total += bits;
        let ones = q.scales[k].bits.to_vec::<u8>()?.iter().filter(|&&b| b == 1).count();
        println!("scale {k:2}: {gh:3}x{gw:<3} {bits:7} bits ({:.1}% ones)", 100.0 * ones as f64 / bits as f64);
    }
    let rgb = to_rgb8(&decoded)?.swap_remove(0);
    println!("{total} bits in all ({:.3} bits/pixel); encode + decode {:.2} s", total as f64 / (h * w) as f64, start.elapsed().as_secs_f64());
    println!("PSNR {:.2} dB", psnr(input.as_raw(), &rgb));
    let text = [("Software", "infinity-run reconstruct".to_string()), ("Source", format!("vae={} image={} pn={pn}", vae_path.display(), image_path.display()))];
    save_png(out, w, h, &rgb, &text)?;
    println!("wrote {}", out.display());
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
