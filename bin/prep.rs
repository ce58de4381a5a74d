//! `infinity-prep`: builds the training data of the default model and its tokenizer.
//!
//! `emoji` fetches the emoji renderings (Twemoji, Noto, three Fluent styles) and the emojibase
//! names and keywords through npm (pinned versions), renders every emoji of every style onto a
//! white square, writes captions in several phrasings (plain and naming the style) and
//! lays them out as the official jsonl folders, `train/` and `eval/` (a held-out ~5 % of the
//! emojis, chosen by a hash of the code point so the split never depends on listing order).
//! `tokenizer` trains a SentencePiece-style Unigram tokenizer on a jsonl folder's captions.
//! Any failure is one line on stderr and exit code 2.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};

mod emoji;
// Shared with the other binaries; this one reports no memory figure.
#[allow(dead_code)]
mod report;

use clap::{Parser, Subcommand};
use infinity::models::data::{fnv1a64, read_jsonl_lines};
use infinity::models::t5::train_tokenizer;
use infinity::runtime::io::write_atomically;
use infinity::runtime::rng::philox_u32;

use emoji::Package;

#[derive(Parser)]
#[command(name = "infinity-prep", version, about = "Prepare the default model's data and tokenizer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch (npm), render and caption the emoji sets as jsonl folders `train/` and `eval/`.
    Emoji {
        /// Output folder; the npm packages are kept in its `packages/` (fetched once).
        #[arg(long, default_value = "data/emoji")]
        out: PathBuf,
        /// Side of the square images in pixels (256 is the 0.06M pixel budget).
        #[arg(long, default_value_t = 256)]
        size: u32,
        /// Fraction of the emojis (with all their captions) held out for evaluation.
        #[arg(long, default_value_t = 0.05)]
        holdout: f64,
        /// The renderings to include (comma-separated): twemoji, noto, fluent-flat, fluent-modern,
        /// fluent-3d; each is captioned plainly and by its name ("red apple, noto style").
        #[arg(long, value_delimiter = ',', default_value = "twemoji,noto,fluent-flat,fluent-modern,fluent-3d")]
        styles: Vec<String>,
    },
    /// Train a Unigram tokenizer (T5 framing: <pad> 0, </s> 1, <unk> 2) on a jsonl folder's captions.
    Tokenizer {
        /// A folder of `<h_div_w>_<count>.jsonl` files.
        #[arg(long)]
        data: PathBuf,
        /// Vocabulary size, special tokens included.
        #[arg(long, default_value_t = 1024)]
        vocab_size: usize,
        /// Where to write `tokenizer.json`.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match report::parse_args(std::env::args_os()) {
        Ok(cli) => report::exit_code(run(cli)),
        Err(code) => code,
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn Error>> {
    match cli.command {
        Command::Emoji { out, size, holdout, styles } => {
            if !(0.0..1.0).contains(&holdout) {
                return Err(format!("--holdout {holdout} must be in [0, 1)").into());
            }
            if !(16..=4096).contains(&size) {
                return Err(format!("--size {size} must be between 16 and 4096").into());
            }
            let styles = styles
                .iter()
                .map(|name| {
                    emoji::STYLES.iter().find(|s| s.folder == name.as_str()).ok_or_else(|| {
                        let known: Vec<&str> = emoji::STYLES.iter().map(|s| s.folder).collect();
                        format!("--styles: unknown style '{name}' (one of {})", known.join(", "))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            prepare_emoji(&out, size, holdout, &styles)
        }
        Command::Tokenizer { data, vocab_size, out } => {
            let captions = jsonl_captions(&data)?;
            if captions.is_empty() {
                return Err(format!("{}: no captions in the folder's .jsonl files", data.display()).into());
            }
            let json = train_tokenizer(&captions, vocab_size)?;
            write_atomically(&out, |w| w.write_all(json.as_bytes()))?;
            eprintln!("tokenizer: {} captions → {}", captions.len(), out.display());
            Ok(())
        }
    }
}

fn prepare_emoji(out: &Path, size: u32, holdout: f64, styles: &[&emoji::Style]) -> Result<(), Box<dyn Error>> {
    let packages = out.join("packages");
    let emojibase = fetch(&emoji::EMOJIBASE, &packages)?;
    let entries = emoji::read_emojibase(&emojibase.join("en/data.json"), &emojibase.join("en/messages.json"))?;

    let mut splits: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut held_out_images = Vec::new();
    for style in styles {
        let source = fetch(&style.package, &packages)?.join(style.images);
        let images = out.join("images").join(style.folder);
        std::fs::create_dir_all(&images).map_err(|e| format!("{}: {e}", images.display()))?;
        let (mut missing, mut rendered) = (Vec::new(), 0usize);
        for entry in &entries {
            let Some(file) = emoji::image_file(&source, &entry.hexcode, style.extension) else {
                missing.push(entry.hexcode.clone());
                continue;
            };
            let name = format!("{}.png", entry.hexcode.to_lowercase());
            emoji::render_png(&file, size, &images.join(&name))?;
            rendered += 1;
            // A hash of the code point (FNV-1a, then Philox to mix its poorly mixed high bits),
            // not a draw from a stream: adding or removing emojis in a later release moves no
            // other emoji across the split, and an emoji is held out in every style.
            let unit = philox_u32(fnv1a64(entry.hexcode.as_bytes()), 0) as f64 / 2f64.powi(32);
            let split = if unit < holdout { "eval" } else { "train" };
            let image_path = format!("../images/{}/{name}", style.folder);
            if split == "eval" {
                held_out_images.push(image_path.clone());
            }
            for caption in entry.captions(style.name) {
                // `name` is what `infinity-train score` prompts with; `hexcode` groups the styles.
                let line = serde_json::json!({
                    "image_path": image_path,
                    "h_div_w": 1.0,
                    "long_caption": caption,
                    "long_caption_type": "user_prompt",
                    "hexcode": entry.hexcode,
                    "name": entry.label,
                    "style": style.name,
                });
                splits.entry(split).or_default().push(line.to_string());
            }
        }
        eprintln!(
            "{}: {rendered} emojis rendered at {size}×{size}; {} without an image: {}",
            style.name,
            missing.len(),
            missing.join(" ")
        );
    }
    for (split, lines) in &splits {
        let dir = out.join(split);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // A previous run's file under another count would be read as more data.
        for old in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
            let old = old?.path();
            if old.extension().is_some_and(|e| e == "jsonl") {
                std::fs::remove_file(&old).map_err(|e| format!("{}: {e}", old.display()))?;
            }
        }
        let file = dir.join(format!("1.000_{}.jsonl", lines.len()));
        write_atomically(&file, |w| w.write_all((lines.join("\n") + "\n").as_bytes()))?;
        eprintln!("{split}: {} captions → {}", lines.len(), file.display());
    }
    // The held-out images, as `infinity-run reconstruct --image-list` reads them.
    let list = out.join("eval").join("images.txt");
    write_atomically(&list, |w| w.write_all((held_out_images.join("\n") + "\n").as_bytes()))?;
    write_atomically(out.join("ATTRIBUTION.md"), |w| w.write_all(emoji::attribution(styles).as_bytes()))?;
    Ok(())
}

/// The unpacked package folder, fetched with `npm pack` (which checks the registry's
/// integrity hash) on first use.
fn fetch(package: &Package, dir: &Path) -> Result<PathBuf, Box<dyn Error>> {
    let unpacked = dir.join(package.folder());
    if unpacked.join("package.json").exists() {
        return Ok(unpacked);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let spec = package.spec();
    eprintln!("fetching {spec} with npm");
    let pack = Process::new("npm")
        .args(["pack", &spec, "--silent", "--pack-destination"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run npm (needed to fetch {spec}): {e}"))?;
    if !pack.status.success() {
        return Err(format!("npm pack {spec} failed: {}", String::from_utf8_lossy(&pack.stderr).trim()).into());
    }
    let tarball = dir.join(String::from_utf8_lossy(&pack.stdout).trim().lines().last().unwrap_or_default());
    let staging = dir.join(format!("{}.partial", package.folder()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("{}: {e}", staging.display()))?;
    let untar = Process::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&staging)
        .arg("--strip-components=1")
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !untar.success() {
        return Err(format!("{}: tar could not unpack it", tarball.display()).into());
    }
    // Renamed into place only once complete, so an interrupted fetch is redone, not trusted.
    std::fs::rename(&staging, &unpacked).map_err(|e| format!("{}: {e}", unpacked.display()))?;
    Ok(unpacked)
}

/// Every `long_caption` of the `.jsonl` files in `dir`.
fn jsonl_captions(dir: &Path) -> Result<Vec<String>, Box<dyn Error>> {
    Ok(read_jsonl_lines(dir)?.iter().map(|line| line.string("long_caption")).collect::<Result<_, _>>()?)
}
