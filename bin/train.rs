//! `infinity-train`: the training front end. `transformer` trains the Infinity transformer
//! (spec §7) on a jsonl folder or a folder of captioned images — from scratch (`--preset`,
//! `--config`) or fine-tuning (`--init`, or the transformer of `--model-dir`) — with the VAE
//! and the text encoder frozen. `vae` trains the BitVAE tokenizer (reconstruction, BSQ
//! commitment and entropy losses; single-scale `--stage 1` or multi-scale `--stage 2`; with
//! `--disc-weight`, a PatchGAN discriminator's hinge loss), from scratch or fine-tuning. `var`
//! trains a VAR class-conditional transformer on class folders, its VQVAE frozen; `magvit2` an
//! Open-MAGVIT2 generator likewise.
//! Checkpoints hold the whole run state (parameters, optimizer, data position, RNG position),
//! so re-running the same command resumes where the last checkpoint left off. The runs are
//! `models::run` (their steps `models::train` and `models::train_vae`), the model folder
//! `models::model_folder`; this file parses and validates the flags into their settings and
//! shows progress. Any failure is one line on stderr, `error: <message>`, and exit code 2;
//! every argument is checked before a weight is read.

use std::error::Error;
use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use infinity::autograd::checkpoint;
use infinity::autograd::{AdamWConfig, Annealing, LrSchedule};
use infinity::cuda::Availability;
use infinity::cuda::Executor;
use infinity::cuda::nccl::{self, Nccl};
use infinity::models::bitvae::BitVaeConfig;
use infinity::models::data::{CaptionRule, Dataset};
use infinity::models::infinity::{InfinityConfig, SamplingConfig};
use infinity::models::magvit2::ArConfig;
use infinity::models::model_folder::{self, ExportSources, ModelFiles};
use infinity::models::pipeline::Pipeline;
use infinity::models::retrieval::{Gallery, RankSummary, thumbnail};
use infinity::models::run::magvit2::{self as magvit2_run, Magvit2Run};
use infinity::models::run::transformer::{self, TransformerRun};
use infinity::models::run::vae::{self, DiscriminatorSettings, VaeRun};
use infinity::models::run::var::{self as var_run, VarRun};
use infinity::models::run::{Outcome, Progress, RunSettings};
use infinity::models::schedule::{PATCH, PixelBudget, Template};
use infinity::models::text_to_image::Request;
use infinity::models::train::{TokenWeighting, evaluate_dataset};
use infinity::models::train_vae::VaeLossWeights;
use infinity::models::var::VarConfig;
use infinity::runtime::collective::Single;
use infinity::runtime::launch::{Launch, rendezvous, supervise};
use infinity::runtime::{DType, Device, DeviceName};
use serde_json::Value;

mod plot;
mod report;
use report::peak_rss_mib;

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
    /// Train a VAR class-conditional transformer on an ImageNet-style folder of class
    /// sub-folders, its VQVAE frozen; re-running the same command resumes from --out's latest
    /// checkpoint. The checkpoints' params.safetensors is what `infinity-run var --var` reads.
    Var(Box<VarTrainArgs>),
    /// Train an Open-MAGVIT2 generator on an ImageNet-style folder of class sub-folders, its
    /// tokenizer frozen; re-running the same command resumes from --out's latest checkpoint. The
    /// checkpoints' params.safetensors is what `infinity-run magvit2 --ar` reads.
    Magvit2(Box<Magvit2TrainArgs>),
    /// Write a model folder that infinity-run reads (config.json and the models' files) from
    /// a transformer run and a BitVAE; the folder is checked by loading it before config.json,
    /// the file that makes it a model folder, is written.
    Export(ExportArgs),
    /// Score a model folder on a dataset without training it: the teacher-forced loss and the
    /// bit accuracy per scale (for held-out data, and for choosing between checkpoints).
    Eval(EvalArgs),
    /// Score a model folder on a concept data set (infinity-prep emoji's folder) as a user sees
    /// it: one picture per concept name, ranked among all concepts by its pixel distance (32×32)
    /// to each concept's nearest image; then the held-out teacher-forced loss.
    Score(ScoreArgs),
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
struct ScoreArgs {
    /// A model folder (config.json as infinity-run reads it).
    #[arg(long)]
    model_dir: PathBuf,
    /// A concept data set: `train/` and `eval/` jsonl folders whose lines name their concept
    /// (`hexcode`, `name`), as `infinity-prep emoji` writes them.
    #[arg(long, default_value = "data/emoji")]
    data: PathBuf,
    /// How many training concepts to draw (chosen by a hash of their keys); every held-out one is.
    #[arg(long, default_value_t = 100)]
    train_names: usize,
    /// The sampling seed of every picture (otherwise infinity-run's defaults: cfg 3, top-p 0.97).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Pictures per generation batch, and images per forward pass of the loss (the figures do
    /// not depend on it).
    #[arg(long, default_value_t = 8)]
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
    /// The dtype of the tensors computed with in half precision on a device (linear weights,
    /// embedding tables, convolution kernels; of the transformer, the text encoder and the
    /// BitVAE): f32 as trained, or bf16 for about half the size (the rest stays f32).
    #[arg(long, value_enum, default_value_t = WeightsDType::F32)]
    weights: WeightsDType,
    /// The model folder to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum WeightsDType {
    F32,
    Bf16,
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
    #[arg(long, default_value_t = 0.0)]
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
struct VarTrainArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Training images: one sub-folder per class (sorted names are the class indices), as
    /// ImageNet's train folder.
    #[arg(long)]
    data: PathBuf,
    /// The VQVAE checkpoint (vae_ch160v4096z32.pth), frozen.
    #[arg(long)]
    vae: PathBuf,
    /// Train from scratch with a released architecture: d16, d20, d24, d30, d36.
    #[arg(long, conflicts_with_all = ["config", "init"])]
    preset: Option<String>,
    /// Train from scratch with the architecture in this JSON file (`{"depth", "embed_dim",
    /// "num_heads", "num_classes", "resolution": 256 | 512}`, optionally "mlp_hidden",
    /// "shared_aln", "vocab", "cvae").
    #[arg(long, conflicts_with = "init")]
    config: Option<PathBuf>,
    /// Fine-tune this VAR checkpoint (a released var_dNN.pth or safetensors).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Peak learning rate; default the official 1e-4 · batch · accumulate / 256 (tblr scaling).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning rate at the end of the run, as a fraction of the peak (official `wpe`); the
    /// official `lin0` schedule holds the peak for 5% of the run after the warm-up, then decays
    /// linearly to it. (The official warm-up is 2% of the run: --warmup-steps steps/50.)
    #[arg(long, default_value_t = 0.01)]
    end_lr: f64,
    /// AdamW weight decay (not applied to 1-D parameters, biases, embeddings and gains).
    #[arg(long, default_value_t = 0.05)]
    wd: f64,
    /// AdamW β₁,β₂.
    #[arg(long, value_delimiter = ',', default_value = "0.9,0.95")]
    betas: Vec<f64>,
    /// Global gradient-norm clipping threshold (0 disables).
    #[arg(long, default_value_t = 2.0)]
    clip: f32,
    /// Probability of training a sample as the null class (for CFG).
    #[arg(long, default_value_t = 0.1)]
    label_dropout: f32,
    /// Micro-batches of --batch images per optimizer step (the official `--ac`).
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
}

#[derive(Args)]
struct Magvit2TrainArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Training images: one sub-folder per class (sorted names are the class indices).
    #[arg(long)]
    data: PathBuf,
    /// The tokenizer (a tokenizer .ckpt, an AR .ckpt's first stage, or safetensors), frozen.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Train from scratch with a released size: B, L, XL.
    #[arg(long, conflicts_with = "init")]
    preset: Option<String>,
    /// Fine-tune this AR checkpoint (a released .ckpt or safetensors).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Image side in pixels (the released models: 256).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Peak learning rate (the official configs' 3e-4).
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Learning rate at the end of the run, as a fraction of the peak (official `wpe` 0.1; the
    /// peak is held for 5% of the run after the warm-up, then decays linearly).
    #[arg(long, default_value_t = 0.1)]
    end_lr: f64,
    /// AdamW weight decay (not applied to 1-D parameters).
    #[arg(long, default_value_t = 0.05)]
    wd: f64,
    /// AdamW β₁,β₂.
    #[arg(long, value_delimiter = ',', default_value = "0.9,0.95")]
    betas: Vec<f64>,
    /// Global gradient-norm clipping threshold (0 disables).
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Probability of training a sample as the null class (for CFG).
    #[arg(long, default_value_t = 0.1)]
    label_dropout: f32,
    /// Micro-batches of --batch images per optimizer step.
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
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
    /// Peak learning rate; default 6e-3 · batch · accumulate · GPUs / 256 (train.sh's tblr).
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
    /// Data-parallel over this many GPUs of this machine: one process per GPU (torchrun's
    /// environment, NCCL between them), each training on --batch images of every global batch
    /// of --batch × N. Needs --device cuda. Several machines: start one process per GPU with
    /// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set (e.g. by torchrun --no-python).
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    /// ZeRO stage: 0 keeps AdamW's whole state on every rank; 1 shards it over the ranks (each
    /// holds 1/N of the moments; the gradients are reduce-scattered and the updated parameters
    /// all-gathered, the bytes of one all-reduce). Checkpoints hold the whole state either way.
    #[arg(long, default_value_t = 0)]
    zero: u8,
}

fn main() -> ExitCode {
    let cli: Cli = match report::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    report::exit_code(match cli.command {
        Command::Transformer(args) => train_transformer(&args),
        Command::Export(args) => export(&args),
        Command::Eval(args) => eval(&args),
        Command::Score(args) => score(&args),
        Command::Plot { run, out } => plot_run(&run, &out),
        Command::Vae(args) => train_vae(&args),
        Command::Var(args) => train_var(&args),
        Command::Magvit2(args) => train_magvit2(&args),
    })
}

/// The `vae` run of the command line: everything it can refuse, refused before any slow work.
fn plan_vae(a: &VaeArgs, device: Device) -> Result<VaeRun, Box<dyn Error>> {
    check_data(&a.data)?;
    check_counts(a.run.batch, a.run.steps, a.run.save_every, a.run.keep)?;
    let optim = check_optimizer(a.lr, a.wd, &a.betas, a.clip)?;
    let multiscale = match a.stage {
        1 => false,
        2 => true,
        s => return Err(format!("--stage {s} must be 1 (single-scale) or 2 (multi-scale)").into()),
    };
    check_non_negative("commit-weight", a.commit_weight)?;
    check_non_negative("entropy-weight", a.entropy_weight)?;
    check_non_negative("disc-weight", a.disc_weight)?;
    if a.disc_channels == 0 {
        return Err("--disc-channels must be at least 1".into());
    }
    if !(a.inv_temperature.is_finite() && a.inv_temperature > 0.0) {
        return Err(format!("--inv-temperature {} must be a positive number", a.inv_temperature).into());
    }
    let start = match (&a.preset, &a.config, &a.init) {
        (Some(name), ..) => vae::Start::Scratch(BitVaeConfig::preset(name).ok_or_else(|| {
            format!("unknown --preset '{name}' (expected one of {})", BitVaeConfig::PRESETS.join(", "))
        })?),
        (_, Some(path), _) => vae::Start::Scratch(read_json_config(path, BitVaeConfig::from_json)?),
        (.., Some(init)) => vae::Start::Checkpoint(existing(init, "init")?),
        _ => return Err("no BitVAE: give --preset, --config or --init".into()),
    };
    if let vae::Start::Scratch(config) = &start {
        vae::check_patch(config, multiscale)?;
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
    Ok(VaeRun {
        run: run_settings(&a.run, device),
        data: a.data.clone(),
        start,
        pn: a.pn,
        lr: constant_lr(a.lr, a.run.warmup_steps, a.run.steps),
        adamw: optim.adamw,
        weight_decay: a.wd,
        clip: optim.clip,
        losses: VaeLossWeights {
            commitment: a.commit_weight,
            entropy: a.entropy_weight,
            inv_temperature: a.inv_temperature,
        },
        multiscale,
        crop: a.crop,
        discriminator: (a.disc_weight > 0.0).then_some(DiscriminatorSettings {
            channels: a.disc_channels,
            weight: a.disc_weight,
            start: a.disc_start,
        }),
    })
}

/// The settings every run takes, from its flags.
fn run_settings(a: &RunArgs, device: Device) -> RunSettings {
    RunSettings {
        out: a.out.clone(),
        steps: a.steps,
        batch: a.batch,
        seed: a.seed,
        save_every: a.save_every,
        keep: a.keep,
        device,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    }
}

fn check_non_negative(name: &str, value: f32) -> Result<(), String> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(format!("--{name} {value} must be a non-negative number"))
    }
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

/// The `transformer` run of the command line: everything it can refuse, refused before any
/// slow work.
fn plan(a: &TransformerArgs, device: Device, ranks: usize) -> Result<TransformerRun, Box<dyn Error>> {
    check_data(&a.data)?;
    check_counts(a.run.batch, a.run.steps, a.run.save_every, a.run.keep)?;
    if a.accumulate == 0 {
        return Err("--accumulate must be at least 1".into());
    }
    // train.sh's tblr scaled by the global batch: every rank's micro-batches together.
    let peak = a.lr.unwrap_or(6e-3 * (a.run.batch * a.accumulate * ranks) as f64 / 256.0);
    let optim = check_optimizer(peak, a.wd, &a.betas, a.clip)?;
    check_range("bsc-strength", f64::from(a.bsc_strength), 0.0..=1.0)?;
    check_range("cond-drop", f64::from(a.cond_drop), 0.0..=1.0)?;
    if a.zero > 1 {
        return Err(format!("--zero {}: the stages are 0 (replicated) and 1 (AdamW's state sharded)", a.zero).into());
    }

    let (files, start, default_pn) = match &a.model_dir {
        Some(dir) => {
            let files = ModelFiles::from_dir(dir)?;
            files.check_exist()?;
            let start = transformer::Start::Checkpoint(files.transformer.clone());
            let pn = files.default_pn;
            ((files.vae, Some(files.t5), files.t5_config, files.tokenizer), start, pn)
        }
        None => {
            let need = |p: &Option<PathBuf>, flag: &str| -> Result<PathBuf, String> {
                let p = p.as_ref().ok_or_else(|| format!("--{flag} is required without --model-dir"))?;
                existing(p, flag)
            };
            let start = match (&a.preset, &a.config, &a.init) {
                (Some(name), ..) => transformer::Start::Scratch(InfinityConfig::preset(name).ok_or_else(|| {
                    format!("unknown --preset '{name}' (expected one of {})", InfinityConfig::PRESETS.join(", "))
                })?),
                (_, Some(path), _) => transformer::Start::Scratch(read_config(path)?),
                (.., Some(init)) => transformer::Start::Checkpoint(existing(init, "init")?),
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
    let (vae, t5, t5_config, tokenizer) = files;
    Ok(TransformerRun {
        run: run_settings(&a.run, device),
        data: a.data.clone(),
        vae,
        t5,
        t5_config,
        tokenizer,
        start,
        pn: a.pn.or(default_pn).unwrap_or(PixelBudget::P006M),
        lr: constant_lr(peak, a.run.warmup_steps, a.run.steps),
        adamw: optim.adamw,
        weight_decay: a.wd,
        clip: optim.clip,
        bsc_strength: a.bsc_strength,
        cond_drop: a.cond_drop,
        weighting: if a.uniform_token_weights { TokenWeighting::Uniform } else { TokenWeighting::ByScale },
        train_text_encoder: a.train_text_encoder,
        cache_latents: a.cache_latents,
        accumulate: a.accumulate,
        recompute_blocks: a.recompute_blocks,
        zero1: a.zero == 1,
    })
}

/// The checks every command's step and save counts get.
fn check_counts(batch: usize, steps: u64, save_every: u64, keep: usize) -> Result<(), String> {
    let counts = [("batch", batch as u64), ("steps", steps), ("save-every", save_every), ("keep", keep as u64)];
    match counts.iter().find(|(_, n)| *n == 0) {
        Some((flag, _)) => Err(format!("--{flag} must be at least 1")),
        None => Ok(()),
    }
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
    check_non_negative("clip", clip)?;
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

/// The progress bar of a run, and the lines it prints beside it.
struct Bar(Option<ProgressBar>);

impl Progress for Bar {
    fn start(&mut self, intro: &str, from: u64, to: u64) {
        println!("{intro}");
        let style = ProgressStyle::with_template("step {pos}/{len} [{bar:30}] {msg} {per_sec} ETA {eta}")
            .unwrap_or(ProgressStyle::default_bar());
        self.0 = Some(ProgressBar::new(to).with_position(from).with_style(style));
    }

    fn step(&mut self, step: u64, status: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(status.to_string());
            bar.set_position(step);
        }
    }

    fn note(&mut self, line: &str) {
        match &self.0 {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }
}

/// Reports how a run ended, with the process's peak memory.
fn finish(bar: Bar, out: &Path, outcome: &Outcome) {
    if let Some(bar) = bar.0 {
        bar.finish_and_clear();
    }
    println!("{}: {outcome}", out.display());
    if let (Outcome::Trained { .. }, Some(mib)) = (outcome, peak_rss_mib()) {
        println!("peak memory {mib:.0} MiB");
    }
}

/// The device `--device` names.
fn training_device(name: DeviceName) -> Result<Device, String> {
    let exec = Executor::named(name).map_err(|e| format!("--device {name}: {e}"))?;
    Ok(exec.map_or(Device::Cpu, |exec| exec.device()))
}

fn train_transformer(a: &TransformerArgs) -> Result<(), Box<dyn Error>> {
    if let Some(launch) = Launch::from_env()? {
        return train_rank(a, &launch);
    }
    if a.gpus == 0 {
        return Err("--gpus must be at least 1".into());
    }
    if a.gpus > 1 {
        return launch_ranks(a);
    }
    let run = plan(a, training_device(a.run.device)?, 1)?;
    let mut bar = Bar(None);
    let outcome = run.train(&Single, &mut bar)?;
    finish(bar, &a.run.out, &outcome);
    Ok(())
}

/// How long a rank waits for the others to meet (model loading happens after).
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

/// `--gpus N`: this command again as N processes, rank r on GPU r, torchrun's environment
/// each; rank 0 shows the progress. Every flag is checked here first, once.
fn launch_ranks(a: &TransformerArgs) -> Result<(), Box<dyn Error>> {
    let n = a.gpus;
    if !matches!(a.run.device, DeviceName::Cuda(_)) {
        return Err(format!("--gpus {n} runs one process per GPU: give --device cuda").into());
    }
    match infinity::cuda::probe() {
        Availability::Available { devices } if devices >= n => {}
        Availability::Available { devices } => return Err(format!("--gpus {n}: {devices} GPU(s) visible").into()),
        other => return Err(format!("--gpus {n}: {other}").into()),
    }
    plan(a, Device::Cpu, n)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    drop_flag(&mut args, "--gpus");
    let exe = std::env::current_exe()?;
    let mut ranks = Vec::with_capacity(n);
    for rank in 0..n {
        let child = std::process::Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(if rank == 0 { Stdio::inherit() } else { Stdio::null() })
            .spawn()?;
        ranks.push(child);
    }
    Ok(supervise(ranks)?)
}

/// Removes `flag` and its value (`--flag V` or `--flag=V`) from `args`.
fn drop_flag(args: &mut Vec<String>, flag: &str) {
    if let Some(i) = args.iter().position(|a| a == flag) {
        args.drain(i..(i + 2).min(args.len()));
    }
    args.retain(|a| !a.starts_with(&format!("{flag}=")));
}

/// One rank of a multi-process run: the GPU of its LOCAL_RANK, NCCL between the ranks (rank 0
/// makes the communicator's id and hands it out at MASTER_ADDR:MASTER_PORT).
fn train_rank(a: &TransformerArgs, launch: &Launch) -> Result<(), Box<dyn Error>> {
    if !matches!(a.run.device, DeviceName::Cuda(_)) {
        return Err("a multi-process run trains on GPUs: give --device cuda (each rank takes its LOCAL_RANK's)".into());
    }
    let exec = Executor::cuda(launch.local_rank)?;
    let token = if launch.rank == 0 { Some(nccl::unique_id()?) } else { None };
    let id = rendezvous(&launch.master, launch.rank, launch.world_size, token.as_ref(), RENDEZVOUS_TIMEOUT)?;
    let world = Nccl::join(Arc::clone(&exec), &id, launch.rank, launch.world_size)?;
    let run = plan(a, exec.device(), launch.world_size)?;
    let mut bar = Bar(None);
    let outcome = run.train(&world, &mut bar)?;
    if launch.rank == 0 {
        finish(bar, &a.run.out, &outcome);
    }
    Ok(())
}

fn train_vae(a: &VaeArgs) -> Result<(), Box<dyn Error>> {
    let run = plan_vae(a, training_device(a.run.device)?)?;
    let mut bar = Bar(None);
    let outcome = run.train(&mut bar)?;
    finish(bar, &a.run.out, &outcome);
    Ok(())
}

/// The checks and the schedule the class-conditional runs share: counts, accumulation, the
/// optimizer flags, the end ratio and the label dropout; the official `lin0` (the peak held for
/// 5% of the run after the warm-up, then a linear decay to `end_lr` × the peak).
fn plan_classes(
    run: &RunArgs,
    accumulate: usize,
    (peak, wd, betas, clip): (f64, f64, &[f64], f32),
    end_lr: f64,
    label_dropout: f32,
) -> Result<(Optim, LrSchedule), Box<dyn Error>> {
    check_counts(run.batch, run.steps, run.save_every, run.keep)?;
    if accumulate == 0 {
        return Err("--accumulate must be at least 1".into());
    }
    let optim = check_optimizer(peak, wd, betas, clip)?;
    check_range("end-lr", end_lr, 0.0..=1.0)?;
    check_range("label-dropout", f64::from(label_dropout), 0.0..=1.0)?;
    let lr = LrSchedule {
        peak,
        warmup_iters: run.warmup_steps,
        max_iters: run.steps as usize,
        warmup_start: WARMUP_START,
        end_ratio: end_lr,
        annealing: Annealing::Linear { hold: 0.05 },
    };
    Ok((optim, lr))
}

fn train_var(a: &VarTrainArgs) -> Result<(), Box<dyn Error>> {
    let run = plan_var(a, training_device(a.run.device)?)?;
    let mut bar = Bar(None);
    let outcome = run.train(&Single, &mut bar)?;
    finish(bar, &a.run.out, &outcome);
    Ok(())
}

/// The `var` run of the command line: everything it can refuse, refused before any slow work.
fn plan_var(a: &VarTrainArgs, device: Device) -> Result<VarRun, Box<dyn Error>> {
    check_data(&a.data)?;
    existing(&a.vae, "vae")?;
    let peak = a.lr.unwrap_or(1e-4 * (a.run.batch * a.accumulate) as f64 / 256.0);
    let (optim, lr) = plan_classes(&a.run, a.accumulate, (peak, a.wd, &a.betas, a.clip), a.end_lr, a.label_dropout)?;
    let start =
        match (&a.preset, &a.config, &a.init) {
            (Some(name), ..) => var_run::Start::Scratch(VarConfig::preset(name).ok_or_else(|| {
                format!("unknown --preset '{name}' (expected one of {})", VarConfig::PRESETS.join(", "))
            })?),
            (_, Some(path), _) => var_run::Start::Scratch(read_json_config(path, VarConfig::from_json)?),
            (.., Some(init)) => var_run::Start::Checkpoint(existing(init, "init")?),
            _ => return Err("no VAR transformer: give --preset, --config or --init".into()),
        };
    Ok(VarRun {
        run: run_settings(&a.run, device),
        data: a.data.clone(),
        vae: a.vae.clone(),
        start,
        lr,
        adamw: optim.adamw,
        weight_decay: a.wd,
        clip: optim.clip,
        label_dropout: a.label_dropout,
        accumulate: a.accumulate,
    })
}

fn train_magvit2(a: &Magvit2TrainArgs) -> Result<(), Box<dyn Error>> {
    let run = plan_magvit2(a, training_device(a.run.device)?)?;
    let mut bar = Bar(None);
    let outcome = run.train(&Single, &mut bar)?;
    finish(bar, &a.run.out, &outcome);
    Ok(())
}

/// The `magvit2` run of the command line: everything it can refuse, refused before any slow work.
fn plan_magvit2(a: &Magvit2TrainArgs, device: Device) -> Result<Magvit2Run, Box<dyn Error>> {
    check_data(&a.data)?;
    existing(&a.tokenizer, "tokenizer")?;
    let (optim, lr) = plan_classes(&a.run, a.accumulate, (a.lr, a.wd, &a.betas, a.clip), a.end_lr, a.label_dropout)?;
    let start =
        match (&a.preset, &a.init) {
            (Some(name), _) => magvit2_run::Start::Scratch(ArConfig::preset(name).ok_or_else(|| {
                format!("unknown --preset '{name}' (expected one of {})", ArConfig::PRESETS.join(", "))
            })?),
            (_, Some(init)) => magvit2_run::Start::Checkpoint(existing(init, "init")?),
            _ => return Err("no AR model: give --preset or --init".into()),
        };
    Ok(Magvit2Run {
        run: run_settings(&a.run, device),
        data: a.data.clone(),
        tokenizer: a.tokenizer.clone(),
        start,
        size: a.size,
        lr,
        adamw: optim.adamw,
        weight_decay: a.wd,
        clip: optim.clip,
        label_dropout: a.label_dropout,
        accumulate: a.accumulate,
    })
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
        return Ok(saved.params_path());
    }
    Ok(existing(path, flag)?)
}

fn export(a: &ExportArgs) -> Result<(), Box<dyn Error>> {
    let params = checkpoint_params(&a.run, "run")?;
    let vae = checkpoint_params(&a.vae, "vae")?;
    let t5 = a.t5.as_deref().map(|p| existing(p, "t5")).transpose()?;
    let sources = ExportSources {
        params,
        vae,
        t5,
        t5_config: existing(&a.t5_config, "t5-config")?,
        tokenizer: existing(&a.tokenizer, "tokenizer")?,
        pn: a.pn,
        weights: match a.weights {
            WeightsDType::F32 => DType::F32,
            WeightsDType::Bf16 => DType::BF16,
        },
    };
    model_folder::export(&sources, &a.out)?;
    println!("exported {} and {} to {}", sources.params.display(), sources.vae.display(), a.out.display());
    Ok(())
}

fn eval(a: &EvalArgs) -> Result<(), Box<dyn Error>> {
    if a.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    check_data(&a.data)?;
    let files = ModelFiles::from_dir(&a.model_dir)?;
    files.check_exist()?;
    let pn = files.default_pn.unwrap_or(PixelBudget::P1M);
    let dataset = Dataset::open(&a.data, pn)?.with_caption_rule(CaptionRule::Plain);
    let pipeline = Pipeline::load(&files, &Device::Cpu)?;
    let start = Instant::now();
    let total = dataset.items().len();
    let scores = evaluate_dataset(&pipeline, &dataset, a.batch, |n| eprintln!("scored {n} of {total} items"))?;
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(" ");
    println!(
        "{} items ({}) in {:.1} s: loss {:.4}; per scale: loss [{}], bit accuracy [{}]",
        scores.items,
        dataset.skip_report(),
        start.elapsed().as_secs_f64(),
        scores.loss,
        list(&scores.scale_loss),
        list(&scores.scale_accuracy)
    );
    Ok(())
}

fn score(a: &ScoreArgs) -> Result<(), Box<dyn Error>> {
    if a.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let files = ModelFiles::from_dir(&a.model_dir)?;
    files.check_exist()?;
    let start = Instant::now();
    let gallery = Gallery::open(&a.data)?;
    let concepts = gallery.concepts();
    eprintln!(
        "gallery: {} concepts from {} in {:.1} s",
        concepts.len(),
        a.data.display(),
        start.elapsed().as_secs_f64()
    );
    let pipeline = Pipeline::load(&files, &Device::Cpu)?;
    let pn = files.default_pn.unwrap_or(PixelBudget::P1M);
    let schedule = Template::exact(1.0).ok_or("no square template")?.schedule(pn);

    let sampling = SamplingConfig { seed: a.seed, ..SamplingConfig::default() };
    for (split, held_out, count) in [("training", false, Some(a.train_names)), ("held-out", true, None)] {
        let picked = gallery.sample(held_out, count);
        let start = Instant::now();
        let mut ranks = Vec::with_capacity(picked.len());
        for chunk in picked.chunks(a.batch) {
            let requests = chunk
                .iter()
                .map(|&c| Request {
                    prompt: concepts[c].name.clone(),
                    negative_prompt: None,
                    images: 1,
                    sampling: sampling.clone(),
                })
                .collect();
            let prepared = pipeline.prepare(requests)?;
            let batch: Vec<&_> = prepared.iter().collect();
            let images = pipeline.text_to_image(&batch, &schedule, |_| ControlFlow::Continue(()))?;
            let images = images.ok_or("generation stopped")?;
            for (&c, pictures) in chunk.iter().zip(&images.pictures) {
                let picture = &pictures[0];
                ranks.push(gallery.rank(&thumbnail(&picture.rgb, picture.width, picture.height)?, c));
            }
            eprintln!("{split}: {} of {} names drawn", ranks.len(), picked.len());
        }
        let Some(summary) = RankSummary::of(&ranks) else { continue };
        println!(
            "{split} names ({} of {} concepts, seed {}, {:.1} s): {summary}",
            summary.count,
            concepts.len(),
            a.seed,
            start.elapsed().as_secs_f64()
        );
    }

    let held_out = a.data.join("eval");
    let dataset = Dataset::open(&held_out, pn)?.with_caption_rule(CaptionRule::Plain);
    let scores = evaluate_dataset(&pipeline, &dataset, a.batch, |_| {})?;
    println!(
        "held-out teacher-forced loss {:.4} ({} captions of {}), bit accuracy per scale [{}]",
        scores.loss,
        scores.items,
        held_out.display(),
        scores.scale_accuracy.iter().map(|x| format!("{x:.3}")).collect::<Vec<_>>().join(" ")
    );
    Ok(())
}
