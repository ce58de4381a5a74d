//! A model folder: the files of one text-to-image model (transformer, BitVAE, T5 encoder, its
//! config and tokenizer) and the `config.json` that names them and the pixel budget the model
//! was trained for. Read by `infinity-run --model-dir`, written by [`export`] from a training
//! run; this module is the only one that knows the format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use infinity_runtime::io::{Weights, save_safetensors, write_atomically};
use infinity_runtime::{DType, Device, Error, Result, Tensor};
use serde_json::{Value, json};

use crate::infinity::{self, Infinity};
use crate::params::Use;
use crate::pipeline::{Pipeline, check_fit};
use crate::schedule::PixelBudget;
use crate::t5::{T5Config, T5Tokenizer};
use crate::train::TEXT_ENCODER_PREFIX;
use crate::{bitvae, t5};

const CONFIG: &str = "config.json";
const TRANSFORMER: &str = "transformer.safetensors";
const VAE: &str = "vae.safetensors";
const T5: &str = "t5.safetensors";
const T5_CONFIG: &str = "t5_config.json";
const TOKENIZER: &str = "tokenizer.json";

/// Where the bundled default model is looked for: in the working folder (a checkout's root),
/// else in the checkout these crates were built from.
const DEFAULT_MODEL_DIR: &str = "assets/models/default";
const BUILT_MODEL_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/models/default");

/// The files of one text-to-image model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFiles {
    pub transformer: PathBuf,
    pub vae: PathBuf,
    /// T5 encoder weights: a safetensors/.pth file, a sharded index json or a Hugging Face folder.
    pub t5: PathBuf,
    /// The encoder's Hugging Face `config.json`.
    pub t5_config: PathBuf,
    pub tokenizer: PathBuf,
    /// The pixel budget the model was trained for, when its folder says so.
    pub default_pn: Option<PixelBudget>,
}

impl ModelFiles {
    /// The bundled default model's folder, for binaries run without a model argument; the
    /// error says it was looked for and why it could not be read.
    pub fn default_model() -> Result<Self> {
        let dir = [DEFAULT_MODEL_DIR, BUILT_MODEL_DIR].map(Path::new).into_iter().find(|d| d.is_dir());
        Self::from_dir(dir.unwrap_or(Path::new(DEFAULT_MODEL_DIR))).map_err(|e| {
            Error::setting(format!(
                "no model given (--model-dir or --transformer …) and the default model could not be read: {e}"
            ))
        })
    }

    /// Reads `dir/config.json`: `{"transformer", "vae", "t5", "t5_config", "tokenizer"}` file
    /// names relative to the folder (defaults: transformer.safetensors, vae.safetensors,
    /// t5.safetensors, t5_config.json, tokenizer.json) and optionally `"pn"`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG);
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?;
        let file = |key: &str, default: &str| -> Result<PathBuf> {
            match v.get(key) {
                None => Ok(dir.join(default)),
                Some(Value::String(name)) => Ok(dir.join(name)),
                Some(_) => Err(Error::format(&config_path, format!("'{key}' must be a file name"))),
            }
        };
        let default_pn = match v.get("pn") {
            None => None,
            Some(Value::String(s)) => Some(s.parse().map_err(|e: String| Error::format(&config_path, e))?),
            Some(_) => return Err(Error::format(&config_path, "'pn' must be a string such as \"0.06M\"")),
        };
        Ok(ModelFiles {
            transformer: file("transformer", TRANSFORMER)?,
            vae: file("vae", VAE)?,
            t5: file("t5", T5)?,
            t5_config: file("t5_config", T5_CONFIG)?,
            tokenizer: file("tokenizer", TOKENIZER)?,
            default_pn,
        })
    }

    /// The files of an exported model folder `dir` (the names `export` writes).
    fn named_in(dir: &Path, pn: PixelBudget) -> ModelFiles {
        ModelFiles {
            transformer: dir.join(TRANSFORMER),
            vae: dir.join(VAE),
            t5: dir.join(T5),
            t5_config: dir.join(T5_CONFIG),
            tokenizer: dir.join(TOKENIZER),
            default_pn: Some(pn),
        }
    }

    fn paths(&self) -> [&Path; 5] {
        [&self.transformer, &self.vae, &self.t5, &self.t5_config, &self.tokenizer].map(PathBuf::as_path)
    }

    /// Fails on the first file that does not exist, naming it.
    pub fn check_exist(&self) -> Result<()> {
        for p in self.paths() {
            if !p.exists() {
                return Err(Error::io(p, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder")));
            }
        }
        Ok(())
    }
}

/// What a model folder is exported from.
#[derive(Clone, Debug)]
pub struct ExportSources {
    /// A transformer run's parameters (`params.safetensors` of a checkpoint); those under
    /// [`TEXT_ENCODER_PREFIX`], when the run trained its text encoder, are the T5 encoder.
    pub params: PathBuf,
    pub vae: PathBuf,
    /// T5 weights, for a run whose text encoder was frozen.
    pub t5: Option<PathBuf>,
    pub t5_config: PathBuf,
    pub tokenizer: PathBuf,
    /// The pixel budget the model was trained at: the folder's default.
    pub pn: PixelBudget,
    /// The dtype the tensors a device computes with in half precision are written in (linear
    /// weights, embedding tables, convolution kernels): F32 as trained, or BF16 for about half
    /// the folder; the rest (norms, biases, scales, embeddings added to activations) stays f32.
    /// The CPU multiplies bf16 linear weights as stored and widens convolution kernels; an
    /// accelerator takes every GEMM operand in bf16 anyway.
    pub weights: DType,
}

/// Writes the model folder `out` from `sources`. The sources are checked against each other
/// first (an error names the file given, not its copy); the files are then written into a
/// staging folder inside `out` and checked by loading them (on the CPU), and only then moved
/// into `out`, `config.json` (the file that makes it a model folder) last. A failed export
/// leaves `out` as it was, a model folder already there included.
pub fn export(sources: &ExportSources, out: &Path) -> Result<ModelFiles> {
    let weights = Weights::open(&sources.params)?;
    let trained_text_encoder = weights.iter().any(|(key, _)| key.starts_with(TEXT_ENCODER_PREFIX));
    if !trained_text_encoder && sources.t5.is_none() {
        return Err(Error::format(&sources.params, "the run did not train a text encoder; give its weights with --t5"));
    }
    let t5_config = T5Config::open(&sources.t5_config)?;
    T5Tokenizer::open(&sources.tokenizer)?;
    let vae_config = bitvae::detect_config(&bitvae::state_dict(&sources.vae)?)?;
    let transformer_config = Infinity::detect_config(&weights)?;
    let params = sources.params.display().to_string();
    check_fit(&transformer_config, &params, &vae_config, &sources.vae, &t5_config, &sources.t5_config)?;

    // Inside `out`, so that the moves are renames within one file system.
    let staging = out.join(format!(".export.{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let staged = ModelFiles::named_in(&staging, sources.pn);
    let checked =
        write_files(sources, &weights, &staged).and_then(|()| Pipeline::load(&staged, &Device::Cpu).map(drop));
    let files = ModelFiles::named_in(out, sources.pn);
    let moved = checked.and_then(|()| {
        for (from, to) in staged.paths().into_iter().zip(files.paths()) {
            std::fs::rename(from, to).map_err(|e| Error::io(to, e))?;
        }
        Ok(())
    });
    // Best effort: the export's own error is what the caller needs to see.
    let _ = std::fs::remove_dir_all(&staging);
    moved?;
    let config = json!({
        "transformer": TRANSFORMER,
        "vae": VAE,
        "t5": T5,
        "t5_config": T5_CONFIG,
        "tokenizer": TOKENIZER,
        "pn": sources.pn.to_string(),
    });
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| Error::format(out.join(CONFIG), e.to_string()))? + "\n";
    write_atomically(out.join(CONFIG), |w| w.write_all(text.as_bytes()))?;
    Ok(files)
}

/// The model files of an export: the run's transformer (and text encoder, if it trained one)
/// and copies of the rest; with `sources.weights` BF16 the tensors a device computes with in
/// bf16 (`Use::takes_bf16`) are rounded to it, the rest kept.
fn write_files(sources: &ExportSources, weights: &Weights, files: &ModelFiles) -> Result<()> {
    let narrowed = |tensors: Vec<(&str, &Tensor)>, use_of: &dyn Fn(&str, &[usize]) -> Use| -> Result<Vec<_>> {
        tensors
            .into_iter()
            .map(|(key, t)| {
                let round = t.dtype() == DType::F32 && use_of(key, t.shape()).takes_bf16();
                Ok((key.to_string(), if round { t.to_dtype(sources.weights)? } else { t.clone() }))
            })
            .collect()
    };
    let save = |path: &Path, tensors: Vec<(String, Tensor)>, source: &Path| {
        let metadata = BTreeMap::from([("source".to_string(), source.display().to_string())]);
        save_safetensors(path, tensors.iter().map(|(k, t)| (k, t)), &metadata)
    };
    let copy = |from: &Path, to: &Path| -> Result<()> {
        let bytes = std::fs::read(from).map_err(|e| Error::io(from, e))?;
        write_atomically(to, |w| w.write_all(&bytes))
    };
    let (text, transformer): (Vec<_>, Vec<_>) =
        weights.iter().partition(|(key, _)| key.starts_with(TEXT_ENCODER_PREFIX));
    save(&files.transformer, narrowed(transformer, &infinity::params::use_of)?, &sources.params)?;
    match &sources.t5 {
        Some(t5) if sources.weights == DType::F32 => copy(t5, &files.t5)?,
        Some(t5) => save(&files.t5, narrowed(Weights::open(t5)?.iter().collect(), &t5::params::use_of)?, t5)?,
        None => {
            let stripped = text.into_iter().map(|(k, t)| (k.trim_start_matches(TEXT_ENCODER_PREFIX), t)).collect();
            save(&files.t5, narrowed(stripped, &t5::params::use_of)?, &sources.params)?
        }
    }
    if sources.weights == DType::F32 {
        copy(&sources.vae, &files.vae)?;
    } else {
        let vae = bitvae::state_dict(&sources.vae)?;
        save(&files.vae, narrowed(vae.iter().collect(), &|_, shape| bitvae::params::use_of(shape))?, &sources.vae)?;
    }
    copy(&sources.t5_config, &files.t5_config)?;
    copy(&sources.tokenizer, &files.tokenizer)
}
