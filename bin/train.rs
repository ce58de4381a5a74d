//! `infinity-train`: the training front end. `transformer` trains the Infinity transformer
//! (spec §7) on a jsonl folder or a folder of captioned images — from scratch (`--preset`,
//! `--config`) or fine-tuning (`--init`, or the transformer of `--model-dir`) — with the VAE
//! and the text encoder frozen. `vae` trains the BitVAE tokenizer (reconstruction, BSQ
//! commitment and entropy losses; single-scale `--stage 1` or multi-scale `--stage 2`; with
//! `--disc-weight`, a PatchGAN discriminator's hinge loss), from scratch or fine-tuning.
//! Checkpoints hold the whole run state (parameters, optimizer,
//! data position, RNG position), so re-running the same command resumes where the last
//! checkpoint left off. The steps themselves are `models::train::train_step` and
//! `models::train_vae::vae_train_step`; this file parses, validates, loops and reports. Any failure is one line on stderr, `error: <message>`, and
//! exit code 2; every argument is checked before a weight is read.

use std::collections::HashMap;
use std::error::Error;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use infinity::autograd::checkpoint::{self, Checkpoint};
use infinity::autograd::optim::official_groups;
use infinity::autograd::{AdamW, AdamWConfig, Annealing, LrSchedule, Params};
use infinity::cuda::Executor;
use infinity::models::bitvae::{self, BitVae, BitVaeConfig};
use infinity::models::data::{BatchOrder, CaptionRule, Dataset, FeatureCache, Loaded, OrderState, Prefetch, Samples};
use infinity::models::infinity::teacher::{Flips, teacher_forcing};
use infinity::models::infinity::{Infinity, InfinityConfig};
use infinity::models::pipeline::{ModelFiles, Pipeline, TextEncoder, check_fit};
use infinity::models::schedule::{PATCH, PixelBudget};
use infinity::models::t5::{self, T5Config, T5Encoder, T5Tokenizer};
use infinity::models::train::{
    StepBatch, StepSettings, StepText, TEXT_ENCODER_PREFIX, TokenWeighting, evaluate, null_text, train_step,
};
use infinity::models::train_vae::{
    Adversary, Discriminator, VaeLossWeights, VaeStepSettings, vae_gan_train_step, vae_train_step,
};
use infinity::ops::index::concat;
use infinity::runtime::io::{Weights, save_safetensors};
use infinity::runtime::rng::{Philox, philox_u32};
use infinity::runtime::{Device, DeviceName, Tensor};
use serde_json::{Value, json};

mod plot;
mod report;
use report::peak_rss_mib;

/// Batches the loader thread reads and decodes ahead of the step that will train on them.
const PREFETCH: usize = 2;
/// Key of the trainer's own Philox stream (BSC flips, caption dropout), apart from the data
/// order's stream of the same seed.
const TRAINER_STREAM: u64 = 0x7472_6169_6e65_7221;
/// Key of the VAE trainer's crop positions.
const CROP_STREAM: u64 = 0x6372_6f70_7321;
/// Key of a text encoder's random initial weights, apart from the transformer's of the same seed.
const TEXT_ENCODER_SEED: u64 = 0x7465_7874_2d65_6e63;
/// Fraction of the peak learning rate the warm-up starts from (official `wp0`).
const WARMUP_START: f64 = 0.005;

#[derive(Parser)]
#[command(name = "infinity-train", version, about = "Infinity training")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the transformer; re-running the same command resumes from --out's latest checkpoint.
    Transformer(Box<TransformerArgs>),
    /// Train the BitVAE; re-running the same command resumes from --out's latest checkpoint.
    Vae(Box<VaeArgs>),
    /// Write a model folder that infinity-run reads (config.json and the models' files) from
    /// a transformer run and a BitVAE; the folder is checked by loading it before config.json,
    /// the file that makes it a model folder, is written.
    Export(ExportArgs),
    /// Score a model folder on a dataset without training it: the teacher-forced loss and the
    /// bit accuracy per scale (for held-out data, and for choosing between checkpoints).
    Eval(EvalArgs),
    /// Draw a run's training curves (metrics.csv) as an SVG: loss, and bit accuracy per scale.
    Plot {
        /// The run folder.
        #[arg(long)]
        run: PathBuf,
        /// The SVG to write.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct EvalArgs {
    /// A model folder (config.json as infinity-run reads it).
    #[arg(long)]
    model_dir: PathBuf,
    /// A jsonl folder or a folder of captioned images; every item is scored once, with its
    /// whole caption.
    #[arg(long)]
    data: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
}

#[derive(Args)]
struct ExportArgs {
    /// A transformer run folder (its latest checkpoint) or one checkpoint's params.safetensors.
    #[arg(long)]
    run: PathBuf,
    /// The BitVAE: a `vae` run folder (its latest checkpoint) or a checkpoint file.
    #[arg(long)]
    vae: PathBuf,
    /// T5 weights, for a run whose text encoder was frozen (a run that trained its text
    /// encoder holds it).
    #[arg(long)]
    t5: Option<PathBuf>,
    /// The text encoder's config.json.
    #[arg(long)]
    t5_config: PathBuf,
    /// The text encoder's tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
    /// The pixel budget the model was trained at, recorded as the folder's default.
    #[arg(long, default_value_t = PixelBudget::P006M)]
    pn: PixelBudget,
    /// The model folder to write.
    #[arg(long)]
    out: PathBuf,
}

/// What every training run takes: batch, length, randomness and where it is saved.
#[derive(Args)]
struct RunArgs {
    /// Images per step (all of one aspect-ratio template).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Total optimizer steps of the run (a resumed run continues up to this count).
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Linear learning-rate warm-up from 0.005 × the peak over this many steps.
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    /// Seed of the data order, the initial weights and every random draw of training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run folder: checkpoints, train.log, metrics.csv (and the text-feature cache).
    #[arg(long)]
    out: PathBuf,
    /// Save a checkpoint every N steps (and after the last).
    #[arg(long, default_value_t = 1000)]
    save_every: u64,
    /// Checkpoints kept (the newest).
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// cpu, cuda / cuda:N, or shim: where the models and the whole step (forward, backward,
    /// loss, clipping, AdamW) run; data loading and image decoding stay on the host.
    #[arg(long, default_value = "cpu")]
    device: DeviceName,
}

#[derive(Args)]
struct VaeArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Training images: a folder of `<h_div_w>_<count>.jsonl` files, or of images with `.txt`
    /// captions (captions are not used).
    #[arg(long)]
    data: PathBuf,
    /// Train from scratch with a released architecture: d16, d24, d32, d64, d14_patchify.
    #[arg(long, conflicts_with_all = ["config", "init"])]
    preset: Option<String>,
    /// Train from scratch with the architecture in this JSON file
    /// (`{"base_ch", "ch_mult", "num_res_blocks", "z_channels", "patch"}`).
    #[arg(long, conflicts_with = "init")]
    config: Option<PathBuf>,
    /// Fine-tune this BitVAE checkpoint (official .pth or safetensors).
    #[arg(long)]
    init: Option<PathBuf>,
    /// 1: quantize the whole latent once (single-scale BSQ); 2: the multi-scale quantizer over
    /// the scales of --pn.
    #[arg(long, default_value_t = 2)]
    stage: u8,
    /// Pixel budget (image size and scale schedule): 0.06M (256²), 0.25M (512²), 0.60M or 1M.
    #[arg(long, default_value_t = PixelBudget::P006M)]
    pn: PixelBudget,
    /// Learning rate (constant after the warm-up).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// AdamW weight decay (not applied to 1-D parameters and biases).
    #[arg(long, default_value_t = 0.0)]
    wd: f64,
    /// AdamW β₁,β₂.
    #[arg(long, value_delimiter = ',', default_value = "0.9,0.95")]
    betas: Vec<f64>,
    /// Global gradient-norm clipping threshold (0 disables).
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Weight of the BSQ commitment loss ‖z − sg(q)‖² (official default).
    #[arg(long, default_value_t = VaeLossWeights::default().commitment)]
    commit_weight: f32,
    /// Weight of the entropy penalty, applied divided by --inv-temperature (official default).
    #[arg(long, default_value_t = VaeLossWeights::default().entropy)]
    entropy_weight: f32,
    /// Sharpness of the soft bit assignment in the entropy penalty (official default).
    #[arg(long, default_value_t = VaeLossWeights::default().inv_temperature)]
    inv_temperature: f32,
    /// Weight of the adversarial loss of a PatchGAN discriminator trained alongside with the
    /// hinge loss (0: no discriminator).
    // A negative value reaches the range check (one clear error) instead of reading as a flag.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    disc_weight: f32,
    /// Width of the discriminator's first conv (the next two are 2× and 4× as wide).
    #[arg(long, default_value_t = 64)]
    disc_channels: usize,
    /// Steps taken before the adversarial loss enters the VAE's loss (the discriminator
    /// learns from the first step).
    #[arg(long, default_value_t = 0)]
    disc_start: u64,
    /// Stage 1 only: train on random square crops of this many pixels (a multiple of the
    /// patch), one per image and step. The networks are convolutional, so a crop teaches the
    /// same filters at a fraction of the cost of the whole image.
    #[arg(long)]
    crop: Option<usize>,
}

#[derive(Args)]
struct TransformerArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Training data: a folder of `<h_div_w>_<count>.jsonl` files, or of images with `.txt` captions.
    #[arg(long)]
    data: PathBuf,
    /// A model folder (config.json as infinity-run reads it): its VAE and text encoder, and its
    /// transformer as the starting point (fine-tuning).
    #[arg(long, conflicts_with_all = ["vae", "t5", "t5_config", "tokenizer", "preset", "config", "init"])]
    model_dir: Option<PathBuf>,
    /// BitVAE checkpoint (frozen).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// T5 encoder weights: file, sharded index json, or Hugging Face folder (frozen, unless
    /// --train-text-encoder makes them the starting point).
    #[arg(long)]
    t5: Option<PathBuf>,
    /// T5 config.json.
    #[arg(long)]
    t5_config: Option<PathBuf>,
    /// tokenizer.json of the T5 encoder.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Train from scratch with an official model size: layer12, layer16, …, layer48, 2b.
    #[arg(long, conflicts_with_all = ["config", "init"])]
    preset: Option<String>,
    /// Train from scratch with the transformer configuration in this JSON file.
    #[arg(long, conflicts_with = "init")]
    config: Option<PathBuf>,
    /// Fine-tune this transformer checkpoint (official .pth or safetensors).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Pixel budget: 0.06M (256²), 0.25M (512²), 0.60M or 1M; default: the model folder's, else 0.06M.
    #[arg(long)]
    pn: Option<PixelBudget>,
    /// Peak learning rate; default 6e-3 · batch · accumulate / 256 (train.sh's tblr).
    #[arg(long)]
    lr: Option<f64>,
    /// AdamW weight decay (not applied to 1-D parameters, biases and embeddings).
    #[arg(long, default_value_t = 0.005)]
    wd: f64,
    /// AdamW β₁,β₂.
    #[arg(long, value_delimiter = ',', default_value = "0.9,0.97")]
    betas: Vec<f64>,
    /// Global gradient-norm clipping threshold (0 disables).
    #[arg(long, default_value_t = 5.0)]
    clip: f32,
    /// Bitwise Self-Correction: flip probabilities drawn up to this strength (0 disables).
    #[arg(long, default_value_t = 0.3)]
    bsc_strength: f32,
    /// Probability of training a sample on the null text instead of its caption (for CFG).
    #[arg(long, default_value_t = 0.1)]
    cond_drop: f32,
    /// Weigh every token equally (1/L) instead of by 1/√(scale area), scripts/train.sh's choice.
    #[arg(long)]
    uniform_token_weights: bool,
    /// Train the T5 encoder with the transformer (one optimiser, one checkpoint), from --t5 or,
    /// without it, from random weights of --t5-config's shape.
    #[arg(long)]
    train_text_encoder: bool,
    /// Keep each image's BitVAE latent in memory after its first encoding (the VAE is frozen):
    /// for data sets small enough to hold every latent.
    #[arg(long)]
    cache_latents: bool,
    /// Micro-batches of --batch images per optimizer step, their gradients accumulated (the
    /// official `--ac`): a global batch of batch × N in the memory of one micro-batch.
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// Activation checkpointing (the official `--checkpointing full-block`): keep only each
    /// block's input through the forward and recompute the block in the backward pass; same
    /// gradients, a fraction of the activation memory, about a third more compute.
    #[arg(long)]
    recompute_blocks: bool,
}

fn main() -> ExitCode {
    report::exit_code(match Cli::parse().command {
        Command::Transformer(args) => train_transformer(&args),
        Command::Export(args) => export(&args),
        Command::Eval(args) => eval(&args),
        Command::Plot { run, out } => plot_run(&run, &out),
        Command::Vae(args) => train_vae(&args),
    })
}

/// Where the BitVAE's starting weights come from.
enum VaeStart {
    Scratch(BitVaeConfig),
    Checkpoint(PathBuf),
}

/// The validated `vae` command line.
struct VaePlan {
    start: VaeStart,
    optim: Optim,
    lr: LrSchedule,
    losses: VaeLossWeights,
    /// Stage 2: quantize over the scales of --pn (else stage 1, the latent grid only).
    multiscale: bool,
}

/// Everything the `vae` command can refuse before reading a weight.
fn plan_vae(a: &VaeArgs) -> Result<VaePlan, Box<dyn Error>> {
    check_data(&a.data)?;
    check_counts(a.run.batch, a.run.steps, a.run.save_every, a.run.keep)?;
    let optim = check_optimizer(a.lr, a.wd, &a.betas, a.clip)?;
    let multiscale = match a.stage {
        1 => false,
        2 => true,
        s => return Err(format!("--stage {s} must be 1 (single-scale) or 2 (multi-scale)").into()),
    };
    check_range("commit-weight", f64::from(a.commit_weight), 0.0..=f64::MAX)?;
    check_range("entropy-weight", f64::from(a.entropy_weight), 0.0..=f64::MAX)?;
    if !(a.disc_weight.is_finite() && a.disc_weight >= 0.0) {
        return Err(format!("--disc-weight {} must be a non-negative number", a.disc_weight).into());
    }
    if a.disc_channels == 0 {
        return Err("--disc-channels must be at least 1".into());
    }
    if !(a.inv_temperature.is_finite() && a.inv_temperature > 0.0) {
        return Err(format!("--inv-temperature {} must be a positive number", a.inv_temperature).into());
    }
    let start = match (&a.preset, &a.config, &a.init) {
        (Some(name), ..) => VaeStart::Scratch(BitVaeConfig::preset(name).ok_or_else(|| {
            format!("unknown --preset '{name}' (expected one of {})", BitVaeConfig::PRESETS.join(", "))
        })?),
        (_, Some(path), _) => VaeStart::Scratch(read_json_config(path, BitVaeConfig::from_json)?),
        (.., Some(init)) => VaeStart::Checkpoint(existing(init, "init")?),
        _ => return Err("no BitVAE: give --preset, --config or --init".into()),
    };
    if let VaeStart::Scratch(config) = &start {
        check_vae_patch(config, multiscale)?;
    }
    match a.crop {
        Some(_) if multiscale => {
            return Err("--crop is for --stage 1: the multi-scale stage follows the whole image's schedule".into());
        }
        Some(c) if c == 0 || c % PATCH != 0 => {
            return Err(format!("--crop {c} must be a positive multiple of {PATCH} pixels").into());
        }
        _ => {}
    }
    Ok(VaePlan {
        start,
        optim,
        lr: constant_lr(a.lr, a.run.warmup_steps, a.run.steps),
        losses: VaeLossWeights {
            commitment: a.commit_weight,
            entropy: a.entropy_weight,
            inv_temperature: a.inv_temperature,
        },
        multiscale,
    })
}

/// The --pn scale schedules are grids of 16-pixel tokens: the multi-scale stage needs patch 16.
fn check_vae_patch(config: &BitVaeConfig, multiscale: bool) -> Result<(), String> {
    if multiscale && config.patch != 16 {
        return Err(format!(
            "--stage 2 follows the --pn scale schedules, which need patch 16 (this BitVAE has patch {}); use --stage 1",
            config.patch
        ));
    }
    Ok(())
}

/// Where the transformer's starting weights come from.
enum Start {
    Scratch(InfinityConfig),
    Checkpoint(PathBuf),
}

/// The validated command line.
struct Plan {
    vae: PathBuf,
    /// None: a text encoder trained from scratch.
    t5: Option<PathBuf>,
    t5_config: PathBuf,
    tokenizer: PathBuf,
    start: Start,
    pn: PixelBudget,
    /// Clipping threshold (`f32::INFINITY` for `--clip 0`).
    clip: f32,
    lr: LrSchedule,
    adamw: AdamWConfig,
}

fn check_range(name: &str, value: f64, range: std::ops::RangeInclusive<f64>) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!("--{name} {value} is outside [{}, {}]", range.start(), range.end()))
    }
}

/// `path` if it exists, else an error naming it and the flag it was given to.
fn existing(path: &Path, flag: &str) -> Result<PathBuf, String> {
    if path.exists() {
        Ok(path.to_path_buf())
    } else {
        Err(format!("{}: no such file or folder (--{flag})", path.display()))
    }
}

/// Everything that can be refused, refused before any slow work.
fn plan(a: &TransformerArgs) -> Result<Plan, Box<dyn Error>> {
    check_data(&a.data)?;
    check_counts(a.run.batch, a.run.steps, a.run.save_every, a.run.keep)?;
    if a.accumulate == 0 {
        return Err("--accumulate must be at least 1".into());
    }
    let peak = a.lr.unwrap_or(6e-3 * (a.run.batch * a.accumulate) as f64 / 256.0);
    let optim = check_optimizer(peak, a.wd, &a.betas, a.clip)?;
    check_range("bsc-strength", f64::from(a.bsc_strength), 0.0..=1.0)?;
    check_range("cond-drop", f64::from(a.cond_drop), 0.0..=1.0)?;

    let (files, start, default_pn) = match &a.model_dir {
        Some(dir) => {
            let files = ModelFiles::from_dir(dir)?;
            files.check_exist()?;
            let start = Start::Checkpoint(files.transformer.clone());
            let pn = files.default_pn;
            ((files.vae, Some(files.t5), files.t5_config, files.tokenizer), start, pn)
        }
        None => {
            let need = |p: &Option<PathBuf>, flag: &str| -> Result<PathBuf, String> {
                let p = p.as_ref().ok_or_else(|| format!("--{flag} is required without --model-dir"))?;
                existing(p, flag)
            };
            let start = match (&a.preset, &a.config, &a.init) {
                (Some(name), ..) => Start::Scratch(InfinityConfig::preset(name).ok_or_else(|| {
                    format!("unknown --preset '{name}' (expected one of {})", InfinityConfig::PRESETS.join(", "))
                })?),
                (_, Some(path), _) => Start::Scratch(read_config(path)?),
                (.., Some(init)) => Start::Checkpoint(existing(init, "init")?),
                _ => return Err("no transformer: give --preset, --config, --init or --model-dir".into()),
            };
            let t5 = match &a.t5 {
                Some(p) => Some(existing(p, "t5")?),
                None if a.train_text_encoder => None,
                None => return Err("--t5 is required without --model-dir, unless --train-text-encoder".into()),
            };
            let files = (need(&a.vae, "vae")?, t5, need(&a.t5_config, "t5-config")?, need(&a.tokenizer, "tokenizer")?);
            (files, start, None)
        }
    };
    if let Start::Scratch(config) = &start
        && config.spatial_patchify
    {
        return Err("training spatially patchified (8b) transformers is not supported".into());
    }
    let (vae, t5, t5_config, tokenizer) = files;
    Ok(Plan {
        vae,
        t5,
        t5_config,
        tokenizer,
        start,
        pn: a.pn.or(default_pn).unwrap_or(PixelBudget::P006M),
        clip: optim.clip,
        lr: constant_lr(peak, a.run.warmup_steps, a.run.steps),
        adamw: optim.adamw,
    })
}

/// The checks every command's step and save counts get.
fn check_counts(batch: usize, steps: u64, save_every: u64, keep: usize) -> Result<(), String> {
    if batch == 0 || steps == 0 || save_every == 0 || keep == 0 {
        return Err("--batch, --steps, --save-every and --keep must be at least 1".into());
    }
    Ok(())
}

/// The validated optimizer flags.
struct Optim {
    adamw: AdamWConfig,
    /// Clipping threshold (`f32::INFINITY` for `--clip 0`).
    clip: f32,
}

fn check_optimizer(lr: f64, wd: f64, betas: &[f64], clip: f32) -> Result<Optim, String> {
    if !(lr.is_finite() && lr > 0.0) {
        return Err(format!("--lr {lr} must be a positive number"));
    }
    check_range("wd", wd, 0.0..=1.0)?;
    let &[beta1, beta2] = betas else {
        return Err("--betas takes two values, β₁,β₂ (e.g. 0.9,0.97)".into());
    };
    check_range("betas", beta1, 0.0..=0.999_999)?;
    check_range("betas", beta2, 0.0..=0.999_999)?;
    check_range("clip", f64::from(clip), 0.0..=f64::MAX)?;
    Ok(Optim { adamw: AdamWConfig { beta1, beta2, eps: 1e-8 }, clip: if clip == 0.0 { f32::INFINITY } else { clip } })
}

/// train.sh's `lin0` with `wpe = 1`: after the warm-up the rate stays at the peak.
fn constant_lr(peak: f64, warmup_steps: usize, steps: u64) -> LrSchedule {
    LrSchedule {
        peak,
        warmup_iters: warmup_steps,
        max_iters: steps as usize,
        warmup_start: WARMUP_START,
        end_ratio: 1.0,
        annealing: Annealing::Constant,
    }
}

/// The `--data` folder, refused unless it is one.
fn check_data(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!("{}: the data folder does not exist or is not a folder", dir.display()))
    }
}

fn read_config(path: &Path) -> Result<InfinityConfig, String> {
    read_json_config(path, InfinityConfig::from_json)
}

/// A configuration JSON file parsed by `parse`; errors name the file.
fn read_json_config<T>(path: &Path, parse: impl FnOnce(&Value) -> Result<T, String>) -> Result<T, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
    parse(&v).map_err(|e| format!("{}: {e}", path.display()))
}

/// A jsonl folder when it holds any `.jsonl` file, else a folder of captioned images.
fn open_dataset(dir: &Path, pn: PixelBudget) -> Result<Dataset, Box<dyn Error>> {
    let has_jsonl = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .any(|e| e.path().extension().is_some_and(|x| x == "jsonl"));
    Ok(if has_jsonl { Dataset::from_jsonl_dir(dir, pn)? } else { Dataset::from_image_folder(dir, pn)? })
}

/// The run state a checkpoint carries besides parameters and optimizer.
struct RunState {
    order: OrderState,
    /// The trainer stream's position.
    rng: Philox,
}

impl RunState {
    fn to_json(&self, a: &TransformerArgs) -> Value {
        let mut state = run_json("transformer", a.run.seed, a.run.batch, self.order);
        state["rng_offset"] = json!(self.rng.offset);
        state
    }

    fn from_checkpoint(saved: &Checkpoint, a: &TransformerArgs) -> Result<Self, Box<dyn Error>> {
        let order = saved_order(saved, "transformer", a.run.seed, a.run.batch)?;
        let offset =
            saved.state.get("rng_offset").and_then(Value::as_u64).ok_or_else(|| not_ours(saved, "transformer"))?;
        Ok(RunState { order, rng: Philox { seed: a.run.seed ^ TRAINER_STREAM, offset } })
    }
}

/// The run state every command saves: which command, its seed and batch size, and the data
/// position.
fn run_json(command: &str, seed: u64, batch: usize, order: OrderState) -> Value {
    json!({ "command": command, "seed": seed, "batch": batch, "order": order.to_json() })
}

fn not_ours(saved: &Checkpoint, command: &str) -> String {
    format!("{}: not a checkpoint of infinity-train {command}", saved.dir.display())
}

/// The data position of `saved`, refused when it was written by another command (runs of
/// the transformer command from before the field existed count as `transformer`) or by a
/// run with another seed or batch size (its data position would mean other batches).
fn saved_order(saved: &Checkpoint, command: &str, seed: u64, batch: usize) -> Result<OrderState, Box<dyn Error>> {
    let s = &saved.state;
    if s.get("command").and_then(Value::as_str).unwrap_or("transformer") != command {
        return Err(not_ours(saved, command).into());
    }
    let (saved_seed, saved_batch) = (s.get("seed").and_then(Value::as_u64), s.get("batch").and_then(Value::as_u64));
    if (saved_seed, saved_batch) != (Some(seed), Some(batch as u64)) {
        return Err(format!(
            "{}: saved by a run with --seed {} --batch {}; resume with the same values or use another --out",
            saved.dir.display(),
            saved_seed.map_or("?".into(), |v| v.to_string()),
            saved_batch.map_or("?".into(), |v| v.to_string())
        )
        .into());
    }
    Ok(OrderState::from_json(s.get("order").and_then(Value::as_str).ok_or_else(|| not_ours(saved, command))?)?)
}

/// `metrics.csv`: one row per step. On a resumed run the rows past the checkpoint (written
/// after it by the interrupted run) are dropped, so each step appears once.
struct Metrics {
    file: File,
}

impl Metrics {
    fn open(path: &Path, header: &str, resumed_at: u64) -> Result<Self, Box<dyn Error>> {
        let old = match fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            read => read.map_err(|e| format!("{}: {e}", path.display()))?,
        };
        let mut lines = old.lines();
        let mut kept = format!("{header}\n");
        if let Some(first) = lines.next() {
            if first != header {
                return Err(format!(
                    "{}: its columns are not this run's ({header}); use another --out",
                    path.display()
                )
                .into());
            }
            let steps_done =
                |l: &&str| l.split(',').next().and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| s <= resumed_at);
            for line in lines.filter(steps_done) {
                kept += line;
                kept.push('\n');
            }
        }
        fs::write(path, kept).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = OpenOptions::new().append(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Metrics { file })
    }

    fn row(&mut self, fields: &[String]) -> std::io::Result<()> {
        writeln!(self.file, "{}", fields.join(","))
    }
}

/// `metrics.csv` and `train.log` of the run folder `out` resumed at `step0`, or `None` (after
/// saying so) when the run has already reached `steps`.
fn open_run(out: &Path, header: &str, step0: u64, steps: u64) -> Result<Option<(Metrics, File)>, Box<dyn Error>> {
    let metrics = Metrics::open(&out.join("metrics.csv"), header, step0)?;
    let log_path = out.join("train.log");
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    if step0 >= steps {
        println!("{}: already at step {step0} of {steps}", out.display());
        return Ok(None);
    }
    Ok(Some((metrics, log_file)))
}

/// Prints the run's opening line and logs it after the command line.
fn announce(log_file: &mut File, intro: &str) -> Result<(), Box<dyn Error>> {
    println!("{intro}");
    let command: Vec<String> = std::env::args().collect();
    log(log_file, &format!("$ {}\n{intro}", command.join(" ")))
}

/// The progress bar of a run of `steps` steps resumed at `step0`.
fn progress_bar(steps: u64, step0: u64) -> ProgressBar {
    ProgressBar::new(steps).with_position(step0).with_style(
        ProgressStyle::with_template("step {pos}/{len} [{bar:30}] {msg} {per_sec} ETA {eta}")
            .unwrap_or(ProgressStyle::default_bar()),
    )
}

/// A `size`² crop of each image at a position drawn from the crop stream at (`seed`, `step`),
/// so a resumed run crops exactly as the uninterrupted one. Errors name the flag when an
/// image is smaller than the crop.
fn random_crops(images: &Tensor, size: usize, seed: u64, step: u64) -> Result<Tensor, Box<dyn Error>> {
    let (n, h, w) = (images.dim(0)?, images.dim(2)?, images.dim(3)?);
    if size > h || size > w {
        return Err(format!("--crop {size} is larger than the {h}×{w} training images").into());
    }
    let draw = |i: usize, axis: u64, room: usize| {
        let u = philox_u32(seed ^ CROP_STREAM, (step * n as u64 + i as u64) * 2 + axis);
        ((u as u64 * (room as u64 + 1)) >> 32) as usize
    };
    let crops = (0..n)
        .map(|i| images.narrow(0, i, 1)?.narrow(2, draw(i, 0, h - size), size)?.narrow(3, draw(i, 1, w - size), size))
        .collect::<infinity::runtime::Result<Vec<_>>>()?;
    Ok(concat(&crops.iter().collect::<Vec<_>>(), 0)?)
}

/// The sub-folder of a `vae` checkpoint holding the discriminator's own checkpoint.
const DISCRIMINATOR_DIR: &str = "discriminator";

/// Where a checkpoint goes and how many are kept.
struct Saving<'a> {
    out: &'a Path,
    every: u64,
    last: u64,
    keep: usize,
}

impl Saving<'_> {
    /// Whether a checkpoint is due after `step`: every `every` steps and the last.
    fn due(&self, step: u64) -> bool {
        step.is_multiple_of(self.every) || step == self.last
    }

    /// Saves the discriminator when a checkpoint is due after `step`, into the sub-folder of
    /// the folder `checkpoint::save` is about to fill (its naming). It must come before
    /// [`Saving::after`], so that the folder `latest.json` points at is always complete.
    fn discriminator_before(&self, step: u64, d: &Discriminator) -> Result<(), Box<dyn Error>> {
        if self.due(step) {
            let dir = self.out.join(format!("step-{step:09}")).join(DISCRIMINATOR_DIR);
            checkpoint::save(&dir, step, &d.params, &d.optimizer, &Value::Null, 1)?;
        }
        Ok(())
    }

    /// Saves after `step` when it is due, and logs it.
    fn after(
        &self,
        step: u64,
        params: &Params,
        optimizer: &AdamW,
        state: &Value,
        bar: &ProgressBar,
        log_file: &mut File,
    ) -> Result<(), Box<dyn Error>> {
        if self.due(step) {
            let dir = checkpoint::save(self.out, step, params, optimizer, state, self.keep)?;
            let line = format!("saved {}", dir.display());
            bar.println(&line);
            log(log_file, &line)?;
        }
        Ok(())
    }
}

/// Closes the progress bar and reports the run's time, skipped images and peak memory.
fn finish(
    bar: &ProgressBar,
    log_file: &mut File,
    (step0, step): (u64, u64),
    run_start: Instant,
    dataset: &Dataset,
) -> Result<(), Box<dyn Error>> {
    bar.finish_and_clear();
    let done = format!(
        "trained steps {}..{step} in {:.2} s; {}",
        step0 + 1,
        run_start.elapsed().as_secs_f64(),
        dataset.skip_report()
    );
    println!("{done}");
    log(log_file, &done)?;
    if let Some(mib) = peak_rss_mib() {
        println!("peak memory {mib:.0} MiB");
    }
    Ok(())
}

/// Appends a line to `train.log`.
fn log(file: &mut File, line: &str) -> Result<(), Box<dyn Error>> {
    writeln!(file, "{line}")?;
    Ok(())
}

fn plot_run(run: &Path, out: &Path) -> Result<(), Box<dyn Error>> {
    let path = run.join("metrics.csv");
    let csv = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The run folder's own name: where it lives is nobody's business in a committed plot.
    let title = run.file_name().map_or_else(|| run.display().to_string(), |n| n.to_string_lossy().into_owned());
    let svg = plot::metrics_svg(&csv, &title).map_err(|e| format!("{}: {e}", path.display()))?;
    infinity::runtime::io::write_atomically(out, |w| w.write_all(svg.as_bytes()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// A run folder's latest checkpoint parameters, or `path` itself when it is a file.
fn checkpoint_params(path: &Path, flag: &str) -> Result<PathBuf, Box<dyn Error>> {
    if path.is_dir() {
        let saved = checkpoint::latest(path)?
            .ok_or_else(|| format!("{}: no checkpoint in the run folder (--{flag})", path.display()))?;
        return Ok(saved.dir.join("params.safetensors"));
    }
    Ok(existing(path, flag)?)
}

fn export(a: &ExportArgs) -> Result<(), Box<dyn Error>> {
    let run = checkpoint_params(&a.run, "run")?;
    let vae = checkpoint_params(&a.vae, "vae")?;
    for (path, flag) in [(&a.t5_config, "t5-config"), (&a.tokenizer, "tokenizer")] {
        existing(path, flag)?;
    }
    let weights = Weights::open(&run)?;
    let (text, transformer): (Vec<_>, Vec<_>) =
        weights.iter().partition(|(key, _)| key.starts_with(TEXT_ENCODER_PREFIX));
    if text.is_empty() && a.t5.is_none() {
        return Err(
            format!("{}: the run did not train a text encoder; give its weights with --t5", run.display()).into()
        );
    }
    fs::create_dir_all(&a.out).map_err(|e| format!("{}: cannot create the folder: {e}", a.out.display()))?;
    let copy = |from: &Path, name: &str| -> Result<(), Box<dyn Error>> {
        let bytes = fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
        infinity::runtime::io::write_atomically(a.out.join(name), |w| w.write_all(&bytes))?;
        Ok(())
    };
    let metadata = std::collections::BTreeMap::from([("source".to_string(), run.display().to_string())]);
    save_safetensors(a.out.join("transformer.safetensors"), transformer, &metadata)?;
    match &a.t5 {
        Some(t5) => copy(t5, "t5.safetensors")?,
        None => {
            let stripped = text.iter().map(|(k, t)| (k.trim_start_matches(TEXT_ENCODER_PREFIX), *t));
            save_safetensors(a.out.join("t5.safetensors"), stripped, &metadata)?;
        }
    }
    copy(&vae, "vae.safetensors")?;
    copy(&a.t5_config, "t5_config.json")?;
    copy(&a.tokenizer, "tokenizer.json")?;
    let files = ModelFiles {
        transformer: a.out.join("transformer.safetensors"),
        vae: a.out.join("vae.safetensors"),
        t5: a.out.join("t5.safetensors"),
        t5_config: a.out.join("t5_config.json"),
        tokenizer: a.out.join("tokenizer.json"),
        default_pn: Some(a.pn),
    };
    Pipeline::load(&files, &Device::Cpu)?;
    let config = json!({
        "transformer": "transformer.safetensors",
        "vae": "vae.safetensors",
        "t5": "t5.safetensors",
        "t5_config": "t5_config.json",
        "tokenizer": "tokenizer.json",
        "pn": a.pn.to_string(),
    });
    let text = serde_json::to_string_pretty(&config)? + "\n";
    infinity::runtime::io::write_atomically(a.out.join("config.json"), |w| w.write_all(text.as_bytes()))?;
    println!("exported {} and {} to {}", run.display(), vae.display(), a.out.display());
    Ok(())
}

/// The transformer's text side: a frozen encoder whose features are cached on disk, or an
/// encoder training alongside, fed token ids.
enum Text {
    Frozen { encoder: Box<TextEncoder>, cache: FeatureCache },
    Trained { tokenizer: Box<T5Tokenizer>, config: T5Config },
}

impl Text {
    fn prompts(&self, captions: &[&str]) -> Result<Vec<StepText>, Box<dyn Error>> {
        Ok(match self {
            Text::Frozen { encoder, cache } => cache
                .features(captions, |c| Ok(encoder.encode(c)?.into_iter().map(|p| p.features).collect()))?
                .into_iter()
                .map(StepText::Features)
                .collect(),
            Text::Trained { tokenizer, .. } => captions
                .iter()
                .map(|c| Ok(StepText::Tokens(tokenizer.encode(c)?.ids)))
                .collect::<Result<_, Box<dyn Error>>>()?,
        })
    }

    fn trained(&self) -> Option<&T5Config> {
        match self {
            Text::Trained { config, .. } => Some(config),
            Text::Frozen { .. } => None,
        }
    }
}

/// BitVAE latents of the batch's images, kept per image path with --cache-latents.
struct Latents {
    cache: Option<HashMap<PathBuf, Tensor>>,
}

impl Latents {
    fn encode(
        &mut self,
        vae: &BitVae,
        images: &Tensor,
        samples: &Samples,
        dataset: &Dataset,
    ) -> Result<Tensor, Box<dyn Error>> {
        // The latents come back to the host, where teacher forcing draws its flips.
        let encode = |images: &Tensor| -> Result<Tensor, Box<dyn Error>> { Ok(vae.encode(images)?.to_cpu()?) };
        let Some(cache) = &mut self.cache else { return encode(images) };
        let mut rows = Vec::with_capacity(samples.items.len());
        for (i, &item) in samples.items.iter().enumerate() {
            let path = &dataset.items()[item].image;
            if !cache.contains_key(path) {
                cache.insert(path.clone(), encode(&images.narrow(0, i, 1)?)?);
            }
            rows.push(cache[path].clone());
        }
        Ok(concat(&rows.iter().collect::<Vec<_>>(), 0)?)
    }
}

fn train_transformer(a: &TransformerArgs) -> Result<(), Box<dyn Error>> {
    let plan = plan(a)?;
    let device = training_device(a.run.device)?;
    fs::create_dir_all(&a.run.out)
        .map_err(|e| format!("{}: cannot create the run folder: {e}", a.run.out.display()))?;
    let dataset = Arc::new(open_dataset(&a.data, plan.pn)?);
    let resume = checkpoint::latest(&a.run.out)?;
    let step0 = resume.as_ref().map_or(0, |c| c.step);
    let mut state = match &resume {
        Some(saved) => RunState::from_checkpoint(saved, a)?,
        None => RunState { order: OrderState::default(), rng: Philox::new(a.run.seed ^ TRAINER_STREAM) },
    };
    let order = BatchOrder::new(&dataset, a.run.batch, a.run.seed, state.order)?;
    let scales = plan.pn.num_scales();
    let header = ["step,loss,lr,grad_norm".to_string()]
        .into_iter()
        .chain((0..scales).map(|k| format!("bit_acc_{k}")))
        .chain(["samples_per_s".to_string(), "tokens_per_s".to_string()])
        .collect::<Vec<_>>()
        .join(",");
    let Some((mut metrics, mut log_file)) = open_run(&a.run.out, &header, step0, a.run.steps)? else { return Ok(()) };

    // The models: configurations first, so a mismatch is reported before the large reads.
    let start = Instant::now();
    let t5_config = T5Config::open(&plan.t5_config)?;
    let vae_weights = bitvae::state_dict(&plan.vae)?;
    let vae_config = bitvae::detect_config(&vae_weights)?;
    let (weights, config, source) = match &plan.start {
        Start::Scratch(config) => {
            (Infinity::initial_weights(config, a.run.seed)?, config.clone(), "the official initialisation".to_string())
        }
        Start::Checkpoint(path) => {
            let w = Weights::open(path)?;
            let config = Infinity::detect_config(&w)?;
            if config.spatial_patchify {
                return Err(format!(
                    "{}: training spatially patchified (8b) transformers is not supported",
                    path.display()
                )
                .into());
            }
            (w, config, path.display().to_string())
        }
    };
    check_fit(&config, &source, &vae_config, &plan.vae, &t5_config, &plan.t5_config)?;
    let vae = BitVae::with_config_on(&vae_weights, vae_config, &device)?;
    let mut params: Params = Infinity::parameters(&weights, &config)?;
    // The f32 master copies are all training needs: release the checkpoint's mapping.
    drop(weights);
    let text = if a.train_text_encoder {
        let t5_weights = match &plan.t5 {
            Some(path) => t5::open_checkpoint(path)?,
            None => T5Encoder::random_weights(&t5_config, a.run.seed ^ TEXT_ENCODER_SEED)?,
        };
        let encoder = T5Encoder::parameters(&t5_weights, &t5_config, TEXT_ENCODER_PREFIX)?;
        params = Params::new(params.iter().chain(encoder.iter()).map(|(n, t)| (n.to_string(), t.clone())).collect())?;
        Text::Trained { tokenizer: Box::new(T5Tokenizer::open(&plan.tokenizer)?), config: t5_config }
    } else {
        let t5 = plan.t5.as_ref().ok_or("a frozen text encoder needs --t5")?;
        let encoder = TextEncoder::with_config(t5, t5_config, &plan.tokenizer, &device)?;
        let cache = FeatureCache::new(
            a.run.out.join("text-cache"),
            format!("t5={} config={} tokenizer={}", t5.display(), plan.t5_config.display(), plan.tokenizer.display()),
        )?;
        Text::Frozen { encoder: Box::new(encoder), cache }
    };
    // The f32 master weights, their gradients and AdamW's state all live on the device.
    let mut params = params.to_device(&device)?;
    let mut optimizer = AdamW::new(plan.adamw, official_groups(&params))?;
    if let Some(saved) = &resume {
        saved.restore(&mut params, &mut optimizer)?;
    }
    let n_params: usize = params.iter().map(|(_, t)| t.numel()).sum();
    let what = match &resume {
        Some(saved) => format!("resuming {} at step {step0}", saved.dir.display()),
        None => format!("starting from {source}"),
    };
    let intro = format!(
        "{what} on {device}: {n_params} parameters, {} items ({}), pn {}, batch {} × {} micro-batches, peak lr {:e}; \
         models loaded in {:.2} s",
        dataset.items().len(),
        dataset.skip_report(),
        plan.pn,
        a.run.batch,
        a.accumulate,
        plan.lr.peak,
        start.elapsed().as_secs_f64()
    );
    announce(&mut log_file, &intro)?;

    let bar = progress_bar(a.run.steps, step0);
    let saving = Saving { out: &a.run.out, every: a.run.save_every, last: a.run.steps, keep: a.run.keep };
    let mut latents = Latents { cache: a.cache_latents.then(HashMap::new) };
    let mut batches = Prefetch::start(Arc::clone(&dataset), order, PREFETCH);
    let run_start = Instant::now();
    let mut step = step0;
    while step < a.run.steps {
        let step_start = Instant::now();
        // Each micro-batch's prompts, targets and schedule; the step borrows them.
        let mut micro = Vec::with_capacity(a.accumulate);
        for _ in 0..a.accumulate {
            let Loaded { samples, images, order } = batches.next_batch()?;
            state.order = order;
            let schedule = samples.template.schedule(plan.pn);
            let latent = latents.encode(&vae, &images, &samples, &dataset)?;
            let flips = if a.bsc_strength > 0.0 {
                Flips::Random { strength: a.bsc_strength, rng: &mut state.rng }
            } else {
                Flips::None
            };
            let targets = teacher_forcing(&latent, &schedule.grids, flips)?;
            let captions: Vec<&str> = samples.captions.iter().map(String::as_str).collect();
            let mut prompts = text.prompts(&captions)?;
            for (prompt, u) in prompts.iter_mut().zip(state.rng.uniform(captions.len())) {
                if u < a.cond_drop {
                    let len = match prompt {
                        StepText::Features(t) => t.dim(0)?,
                        StepText::Tokens(ids) => ids.len(),
                    };
                    *prompt = StepText::Features(null_text(&params, len)?);
                }
            }
            micro.push((prompts, targets, schedule));
        }
        let batches: Vec<StepBatch> = (micro.iter())
            .map(|(prompts, targets, schedule)| StepBatch { prompts, text_encoder: text.trained(), targets, schedule })
            .collect();
        let lr = plan.lr.lr(step as usize);
        let weighting = if a.uniform_token_weights { TokenWeighting::Uniform } else { TokenWeighting::ByScale };
        let settings =
            StepSettings { lr, weight_decay: a.wd, clip: plan.clip, weighting, recompute_blocks: a.recompute_blocks };
        let stats = train_step(&mut params, &mut optimizer, &config, &batches, settings)?;
        let seconds = step_start.elapsed().as_secs_f64();
        let samples: usize = micro.iter().map(|(prompts, ..)| prompts.len()).sum();
        let tokens: usize = micro.iter().map(|(prompts, _, schedule)| prompts.len() * schedule.seq_len()).sum();
        let (samples_per_s, tokens_per_s) = (samples as f64 / seconds, tokens as f64 / seconds);
        step += 1;

        // `{:?}` prints the shortest text that reads back as the same f32: runs compare exactly.
        let mut row =
            vec![step.to_string(), format!("{:?}", stats.loss), format!("{lr:e}"), format!("{:?}", stats.grad_norm)];
        row.extend(stats.scale_accuracy.iter().map(|acc| format!("{acc:.4}")));
        row.extend([format!("{samples_per_s:.3}"), format!("{tokens_per_s:.0}")]);
        metrics.row(&row)?;
        let scale_loss: Vec<String> = stats.scale_loss.iter().map(|l| format!("{l:.4}")).collect();
        let line = format!(
            "step {step} loss {:.4} lr {lr:.3e} grad_norm {:.3} bit_acc(last scale) {:.4} scale losses [{}] \
             {:.2} s/step, {samples_per_s:.2} samples/s, {tokens_per_s:.0} tokens/s",
            stats.loss,
            stats.grad_norm,
            stats.scale_accuracy.last().copied().unwrap_or(0.0),
            scale_loss.join(" "),
            run_start.elapsed().as_secs_f64() / (step - step0) as f64
        );
        log(&mut log_file, &line)?;
        bar.set_message(format!("loss {:.4}, {samples_per_s:.2} samples/s, {tokens_per_s:.0} tokens/s", stats.loss));
        bar.set_position(step);

        saving.after(step, &params, &optimizer, &state.to_json(a), &bar, &mut log_file)?;
    }
    finish(&bar, &mut log_file, (step0, step), run_start, &dataset)
}

fn eval(a: &EvalArgs) -> Result<(), Box<dyn Error>> {
    if a.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    check_data(&a.data)?;
    let files = ModelFiles::from_dir(&a.model_dir)?;
    files.check_exist()?;
    let pn = files.default_pn.unwrap_or(PixelBudget::P1M);
    let dataset = open_dataset(&a.data, pn)?.with_caption_rule(CaptionRule::Plain);
    let pipeline = Pipeline::load(&files, &Device::Cpu)?;
    let start = Instant::now();
    let scales = pn.num_scales();
    let (mut weighted_loss, mut scale_loss, mut scale_accuracy) = (0.0, vec![0.0; scales], vec![0.0; scales]);
    let mut scored = 0usize;
    for bucket in dataset.buckets() {
        let schedule = bucket.template.schedule(pn);
        for chunk in bucket.items.chunks(a.batch) {
            let (images, captions): (Vec<Tensor>, Vec<&str>) = chunk
                .iter()
                .filter_map(|&i| Some((dataset.load_image(i)?, dataset.items()[i].caption.long.as_str())))
                .unzip();
            if images.is_empty() {
                continue;
            }
            let latent = pipeline.vae.encode(&concat(&images.iter().collect::<Vec<_>>(), 0)?)?;
            let targets = teacher_forcing(&latent, &schedule.grids, Flips::None)?;
            let prompts: Vec<Tensor> = pipeline.encode_prompts(&captions)?.into_iter().map(|p| p.features).collect();
            let stats = evaluate(&pipeline.transformer, &prompts, &targets, &schedule, TokenWeighting::ByScale)?;
            // Sample-weighted means over the batches.
            let n = images.len() as f64;
            weighted_loss += f64::from(stats.loss) * n;
            for (sums, values) in [(&mut scale_loss, &stats.scale_loss), (&mut scale_accuracy, &stats.scale_accuracy)] {
                sums.iter_mut().zip(values).for_each(|(sum, v)| *sum += f64::from(*v) * n);
            }
            scored += images.len();
            eprintln!("scored {scored} of {} items", dataset.items().len());
        }
    }
    if scored == 0 {
        return Err(format!("{}: no image of the dataset could be loaded", a.data.display()).into());
    }
    let mean = |v: &[f64]| v.iter().map(|x| format!("{:.4}", x / scored as f64)).collect::<Vec<_>>().join(" ");
    println!(
        "{scored} items ({}) in {:.1} s: loss {:.4}; per scale: loss [{}], bit accuracy [{}]",
        dataset.skip_report(),
        start.elapsed().as_secs_f64(),
        weighted_loss / scored as f64,
        mean(&scale_loss),
        mean(&scale_accuracy)
    );
    Ok(())
}

/// The device `--device` names.
fn training_device(name: DeviceName) -> Result<Device, String> {
    let exec = Executor::named(name).map_err(|e| format!("--device {name}: {e}"))?;
    Ok(exec.map_or(Device::Cpu, |exec| exec.device()))
}

fn train_vae(a: &VaeArgs) -> Result<(), Box<dyn Error>> {
    let plan = plan_vae(a)?;
    let device = training_device(a.run.device)?;
    fs::create_dir_all(&a.run.out)
        .map_err(|e| format!("{}: cannot create the run folder: {e}", a.run.out.display()))?;
    let dataset = Arc::new(open_dataset(&a.data, a.pn)?);
    let resume = checkpoint::latest(&a.run.out)?;
    let step0 = resume.as_ref().map_or(0, |c| c.step);
    let order_state = match &resume {
        Some(saved) => saved_order(saved, "vae", a.run.seed, a.run.batch)?,
        None => OrderState::default(),
    };
    let order = BatchOrder::new(&dataset, a.run.batch, a.run.seed, order_state)?;
    let with_disc = a.disc_weight > 0.0;
    let header = if with_disc {
        "step,loss,lr,grad_norm,reconstruction,commitment,entropy,disc_loss,gen_adv"
    } else {
        "step,loss,lr,grad_norm,reconstruction,commitment,entropy"
    };
    let Some((mut metrics, mut log_file)) = open_run(&a.run.out, header, step0, a.run.steps)? else { return Ok(()) };

    let start = Instant::now();
    let (weights, config, source) = match &plan.start {
        VaeStart::Scratch(config) => {
            (BitVae::random_weights(config, a.run.seed)?, config.clone(), "random init".to_string())
        }
        VaeStart::Checkpoint(path) => {
            let w = bitvae::state_dict(path)?;
            let config = bitvae::detect_config(&w)?;
            check_vae_patch(&config, plan.multiscale).map_err(|e| format!("{}: {e}", path.display()))?;
            (w, config, path.display().to_string())
        }
    };
    // The f32 master weights, their gradients and AdamW's state all live on the device.
    let mut params = BitVae::parameters(&weights, &config)?.to_device(&device)?;
    drop(weights);
    let mut optimizer = AdamW::new(plan.optim.adamw, official_groups(&params))?;
    let mut discriminator = with_disc
        .then(|| -> Result<Discriminator, Box<dyn Error>> {
            let mut d = Discriminator::new(a.disc_channels, a.run.seed, plan.optim.adamw)?;
            d.params = d.params.to_device(&device)?;
            Ok(d)
        })
        .transpose()?;
    if let Some(saved) = &resume {
        saved.restore(&mut params, &mut optimizer)?;
        if let Some(d) = &mut discriminator {
            let dir = saved.dir.join(DISCRIMINATOR_DIR);
            let inner = checkpoint::latest(&dir)?
                .ok_or_else(|| format!("{}: no discriminator checkpoint to resume", dir.display()))?;
            inner.restore(&mut d.params, &mut d.optimizer)?;
        }
    }
    let n_params: usize = params.iter().map(|(_, t)| t.numel()).sum();
    let what = match &resume {
        Some(saved) => format!("resuming {} at step {step0}", saved.dir.display()),
        None => format!("starting from {source}"),
    };
    let adversary = match &discriminator {
        Some(d) => {
            let n: usize = d.params.iter().map(|(_, t)| t.numel()).sum();
            format!(", discriminator {n} parameters (weight {} after step {})", a.disc_weight, a.disc_start)
        }
        None => String::new(),
    };
    let intro = format!(
        "{what} on {device}: BitVAE {}, {n_params} parameters{adversary}, stage {}, {} items ({}), pn {}, batch {}, lr {:e}; loaded in {:.2} s",
        config.to_json(),
        a.stage,
        dataset.items().len(),
        dataset.skip_report(),
        a.pn,
        a.run.batch,
        a.lr,
        start.elapsed().as_secs_f64()
    );
    announce(&mut log_file, &intro)?;

    let bar = progress_bar(a.run.steps, step0);
    let saving = Saving { out: &a.run.out, every: a.run.save_every, last: a.run.steps, keep: a.run.keep };
    let mut batches = Prefetch::start(Arc::clone(&dataset), order, PREFETCH);
    let run_start = Instant::now();
    let mut step = step0;
    while step < a.run.steps {
        let Loaded { samples, images, order } = batches.next_batch()?;
        let images = match a.crop {
            Some(size) => random_crops(&images, size, a.run.seed, step)?,
            None => images,
        };
        let grids = if plan.multiscale {
            samples.template.schedule(a.pn).grids
        } else {
            vec![(images.dim(2)? / config.patch, images.dim(3)? / config.patch)]
        };
        let lr = plan.lr.lr(step as usize);
        let settings = VaeStepSettings { lr, weight_decay: a.wd, clip: plan.optim.clip, losses: plan.losses };
        let (stats, gan) = match &mut discriminator {
            Some(discriminator) => {
                let weight = if step >= a.disc_start { a.disc_weight } else { 0.0 };
                let adversary = Adversary { discriminator, weight };
                let (stats, gan) =
                    vae_gan_train_step(&mut params, &mut optimizer, &config, &images, &grids, settings, adversary)?;
                (stats, Some(gan))
            }
            None => (vae_train_step(&mut params, &mut optimizer, &config, &images, &grids, settings)?, None),
        };
        step += 1;

        // `{:?}` prints the shortest text that reads back as the same f32: runs compare exactly.
        let mut row = vec![
            step.to_string(),
            format!("{:?}", stats.loss),
            format!("{lr:e}"),
            format!("{:?}", stats.grad_norm),
            format!("{:?}", stats.reconstruction),
            format!("{:?}", stats.commitment),
            format!("{:?}", stats.entropy),
        ];
        let mut adversarial = String::new();
        if let Some(gan) = gan {
            row.extend([format!("{:?}", gan.disc_loss), format!("{:?}", gan.gen_adv)]);
            adversarial = format!(" disc_loss {:.4} gen_adv {:.4}", gan.disc_loss, gan.gen_adv);
        }
        metrics.row(&row)?;
        let line = format!(
            "step {step} loss {:.4} (reconstruction {:.4} commitment {:.4} entropy {:.4}{adversarial}) lr {lr:.3e} grad_norm {:.3} {:.2} s/step",
            stats.loss,
            stats.reconstruction,
            stats.commitment,
            stats.entropy,
            stats.grad_norm,
            run_start.elapsed().as_secs_f64() / (step - step0) as f64
        );
        log(&mut log_file, &line)?;
        bar.set_message(format!("loss {:.4}", stats.loss));
        bar.set_position(step);
        if let Some(d) = &discriminator {
            saving.discriminator_before(step, d)?;
        }
        saving.after(
            step,
            &params,
            &optimizer,
            &run_json("vae", a.run.seed, a.run.batch, order),
            &bar,
            &mut log_file,
        )?;
    }
    finish(&bar, &mut log_file, (step0, step), run_start, &dataset)
}
