//! AdamW with decoupled weight decay, as `torch.optim.AdamW` (the official trainer's fused
//! CPU kernel), parameter groups with the official no-weight-decay rule, and the optimizer
//! state's safetensors round trip (for resuming).
//!
//! One step of a parameter p with gradient g, step count t (1 on the first step), group
//! learning rate lr and weight decay wd, everything in f32 except the scalar coefficients,
//! which are formed in f64 and rounded once (as PyTorch does):
//!     p ← p · (1 − lr·wd)                         (skipped when wd = 0)
//!     m ← lerp(m, g, 1 − β₁)                      (m + (1 − β₁)(g − m))
//!     v ← v·β₂ + (1 − β₂)·g·g
//!     p ← p − (lr / (1 − β₁ᵗ))·m / (√v / √(1 − β₂ᵗ) + eps)
//! The operation order is that of the fused kernel's scalar path; its vector path fuses the
//! lerp's multiply-add, which can differ by one ulp in m from the second step on.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use infinity_runtime::io::{Weights, save_safetensors};
use infinity_runtime::{DType, Error, Result, Tensor};

use crate::{GradStore, Params};

/// Name fragments that exempt a parameter from weight decay in the official trainer
/// (`train.py`'s nowd keys; several name modules this model does not have).
pub const NO_DECAY_KEYS: [&str; 15] = [
    "ada_gss",
    "beta",
    "cfg_uncond",
    "cls_token",
    "gamma",
    "lvl_embed",
    "moe_bias",
    "pos_1LC",
    "pos_embed",
    "pos_start",
    "scale_mul",
    "start_pos",
    "start_token",
    "task_token",
    "text_proj_for_sos.ca.mat_q",
];

/// The official rule (`filter_params`): 1-D tensors, biases and names containing a
/// [`NO_DECAY_KEYS`] entry get no weight decay.
pub fn decays(name: &str, shape: &[usize]) -> bool {
    !(shape.len() == 1 || name.ends_with("bias") || NO_DECAY_KEYS.iter().any(|k| name.contains(k)))
}

/// Parameters sharing multipliers of the scheduled learning rate and weight decay.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    pub name: String,
    pub params: Vec<String>,
    pub lr_scale: f64,
    pub wd_scale: f64,
}

/// The official two groups: "no_weight_decay" (wd × 0) and "weight_decay" (wd × 1), each
/// listing its parameters in `params` order; a group with no parameter is left out.
pub fn official_groups(params: &Params) -> Vec<ParamGroup> {
    let group = |name: &str, wd_scale: f64, decay: bool| ParamGroup {
        name: name.to_string(),
        params: params.iter().filter(|(n, t)| decays(n, t.shape()) == decay).map(|(n, _)| n.to_string()).collect(),
        lr_scale: 1.0,
        wd_scale,
    };
    [group("no_weight_decay", 0.0, false), group("weight_decay", 1.0, true)]
        .into_iter()
        .filter(|g| !g.params.is_empty())
        .collect()
}

/// β₁, β₂ and eps (PyTorch's defaults: 0.9, 0.999, 1e-8; train.sh uses β₂ = 0.97).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// Per-parameter state: the moment estimates and how many steps the parameter has taken.
#[derive(Clone, Debug, PartialEq)]
struct Moments {
    shape: Vec<usize>,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    step: u64,
}

/// Prefixes of the state tensors' names in a saved file (PyTorch's state keys), followed
/// by the parameter name.
const EXP_AVG: &str = "exp_avg.";
const EXP_AVG_SQ: &str = "exp_avg_sq.";
const STEP: &str = "step.";

pub struct AdamW {
    config: AdamWConfig,
    groups: Vec<ParamGroup>,
    state: HashMap<String, Moments>,
}

impl AdamW {
    /// Errors when a parameter is listed in two groups.
    pub fn new(config: AdamWConfig, groups: Vec<ParamGroup>) -> Result<Self> {
        let mut seen = HashMap::new();
        for g in &groups {
            for p in &g.params {
                if let Some(other) = seen.insert(p.as_str(), g.name.as_str()) {
                    return Err(Error::invalid(
                        "adamw",
                        &[],
                        format!("parameter '{p}' is in both group '{other}' and group '{}'", g.name),
                    ));
                }
            }
        }
        Ok(AdamW { config, groups, state: HashMap::new() })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Steps taken by a parameter (0 before its first update).
    pub fn step_count(&self, name: &str) -> u64 {
        self.state.get(name).map_or(0, |m| m.step)
    }

    /// One update of every grouped parameter that has a gradient in `grads` (the others are
    /// skipped, as PyTorch skips parameters whose `.grad` is None), with learning rate
    /// lr × lr_scale and weight decay wd × wd_scale per group.
    pub fn step(&mut self, params: &mut Params, grads: &GradStore, lr: f64, weight_decay: f64) -> Result<()> {
        for group in &self.groups {
            let (lr, wd) = (lr * group.lr_scale, weight_decay * group.wd_scale);
            for name in &group.params {
                let Some(grad) = grads.get(name) else { continue };
                let param = params.get(name)?;
                if grad.shape() != param.shape() {
                    return Err(Error::ShapeMismatch {
                        op: "adamw",
                        lhs: param.shape().to_vec(),
                        rhs: grad.shape().to_vec(),
                    });
                }
                let n = param.numel();
                let moments = self.state.entry(name.clone()).or_insert_with(|| Moments {
                    shape: param.shape().to_vec(),
                    exp_avg: vec![0.0; n],
                    exp_avg_sq: vec![0.0; n],
                    step: 0,
                });
                let mut p = param.to_vec::<f32>()?;
                moments.step += 1;
                update(&self.config, lr, wd, &mut p, &grad.to_vec::<f32>()?, moments);
                let shape = param.shape().to_vec();
                params.set(name, Tensor::from_vec(p, &shape)?)?;
            }
        }
        Ok(())
    }

    /// The state as named tensors: `exp_avg.<param>` and `exp_avg_sq.<param>` (f32, the
    /// parameter's shape) and `step.<param>` (I64, one element), sorted by name.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut names: Vec<&String> = self.state.keys().collect();
        names.sort();
        let mut out = Vec::with_capacity(3 * names.len());
        for name in names {
            let m = &self.state[name];
            out.push((format!("{EXP_AVG}{name}"), Tensor::from_vec(m.exp_avg.clone(), &m.shape)?));
            out.push((format!("{EXP_AVG_SQ}{name}"), Tensor::from_vec(m.exp_avg_sq.clone(), &m.shape)?));
            out.push((format!("{STEP}{name}"), Tensor::from_vec(vec![m.step as i64], &[1])?));
        }
        Ok(out)
    }

    /// Writes the state to a safetensors file (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let tensors = self.state_tensors()?;
        save_safetensors(path, tensors.iter().map(|(n, t)| (n.as_str(), t)), &BTreeMap::new())
    }

    /// Replaces the state with the one saved in `path` (bit for bit). Every state tensor must
    /// belong to a grouped parameter and come with its two partners.
    pub fn load(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let weights = Weights::open(path)?;
        let mut state = HashMap::new();
        for (key, t) in weights.iter() {
            let Some(name) = key.strip_prefix(STEP) else { continue };
            if !self.groups.iter().any(|g| g.params.iter().any(|p| p == name)) {
                return Err(Error::tensor(weights.path(), key, "names no parameter of the optimizer's groups"));
            }
            let step = match t.to_vec::<i64>()?.as_slice() {
                &[s] if s >= 0 => s as u64,
                _ => return Err(Error::tensor(weights.path(), key, "expected one non-negative I64 step count")),
            };
            let moment = |prefix: &str| -> Result<&Tensor> {
                let t = weights.get(&format!("{prefix}{name}"))?;
                if t.dtype() != DType::F32 {
                    return Err(Error::tensor(weights.path(), format!("{prefix}{name}"), "expected F32"));
                }
                Ok(t)
            };
            let (exp_avg, exp_avg_sq) = (moment(EXP_AVG)?, moment(EXP_AVG_SQ)?);
            if exp_avg.shape() != exp_avg_sq.shape() {
                return Err(Error::tensor(weights.path(), key, "the two moments have different shapes"));
            }
            state.insert(
                name.to_string(),
                Moments {
                    shape: exp_avg.shape().to_vec(),
                    exp_avg: exp_avg.to_vec::<f32>()?,
                    exp_avg_sq: exp_avg_sq.to_vec::<f32>()?,
                    step,
                },
            );
        }
        let expected = 3 * state.len();
        if weights.len() != expected {
            return Err(Error::format(
                weights.path(),
                format!("{} tensors, but the {} step entries account for {expected}", weights.len(), state.len()),
            ));
        }
        self.state = state;
        Ok(())
    }
}

/// The AdamW update of one parameter (see the module header); `moments.step` already counts
/// this step.
fn update(config: &AdamWConfig, lr: f64, wd: f64, p: &mut [f32], g: &[f32], moments: &mut Moments) {
    let t = moments.step as f64;
    let bias_correction1 = 1.0 - config.beta1.powf(t);
    let bias_correction2_sqrt = (1.0 - config.beta2.powf(t)).sqrt();
    let decay = (1.0 - lr * wd) as f32;
    let step_size = (lr / bias_correction1) as f32;
    let (b2, c1, c2) = (config.beta2 as f32, (1.0 - config.beta1) as f32, (1.0 - config.beta2) as f32);
    let (bc2_sqrt, eps) = (bias_correction2_sqrt as f32, config.eps as f32);
    let Moments { exp_avg, exp_avg_sq, .. } = moments;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(exp_avg.iter_mut()).zip(exp_avg_sq.iter_mut()) {
        if wd != 0.0 {
            *p *= decay;
        }
        *m = lerp(*m, g, c1);
        *v = *v * b2 + c2 * g * g;
        let denom = v.sqrt() / bc2_sqrt + eps;
        *p -= step_size * *m / denom;
    }
}

/// PyTorch's `lerp(a, b, w)`: a + w(b − a), evaluated from the nearer end for accuracy.
fn lerp(a: f32, b: f32, w: f32) -> f32 {
    if w.abs() < 0.5 { a + w * (b - a) } else { b - (b - a) * (1.0 - w) }
}
