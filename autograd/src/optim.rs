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
//!
//! The update itself is one op, `infinity_ops::optim::adamw`: every parameter in one pass
//! (one kernel launch on an executor), in place, with the same roundings on every device. The
//! moments live on their parameter's device; state loaded from a file moves there at the first
//! step, so a run can resume on another device.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use infinity_ops::optim::{AdamWConstants, AdamWScalars, AdamWTensor, adamw};
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

/// Per-parameter state: the moment estimates (f32, the parameter's shape) and how many steps
/// the parameter has taken.
#[derive(Clone, Debug)]
struct Moments {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// Prefixes of the state tensors' names in a saved file (PyTorch's state keys), followed
/// by the parameter name.
const EXP_AVG: &str = "exp_avg.";
const EXP_AVG_SQ: &str = "exp_avg_sq.";
const STEP: &str = "step.";

#[derive(Clone)]
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

    /// A parameter's moments (exp_avg, exp_avg_sq) and step count, once it has stepped.
    pub(crate) fn moments(&self, name: &str) -> Option<(&Tensor, &Tensor, u64)> {
        self.state.get(name).map(|m| (&m.exp_avg, &m.exp_avg_sq, m.step))
    }

    /// Sets a parameter's moments and step count (ZeRO-1 cutting and joining the state).
    pub(crate) fn set_moments(&mut self, name: &str, exp_avg: Tensor, exp_avg_sq: Tensor, step: u64) {
        self.state.insert(name.to_string(), Moments { exp_avg, exp_avg_sq, step });
    }

    /// One update of every grouped parameter that has a gradient in `grads` (the others are
    /// skipped, as PyTorch skips parameters whose `.grad` is None), with learning rate
    /// lr × lr_scale and weight decay wd × wd_scale per group. Parameters, gradients and state
    /// are on one device (the state is moved to the parameters' if it is elsewhere).
    pub fn step(&mut self, params: &mut Params, grads: &GradStore, lr: f64, weight_decay: f64) -> Result<()> {
        let rates: HashMap<&str, (f64, f64)> = (self.groups.iter())
            .flat_map(|g| g.params.iter().map(move |p| (p.as_str(), (lr * g.lr_scale, weight_decay * g.wd_scale))))
            .collect();
        let mut work = Vec::new();
        for (name, param) in params.iter_mut() {
            let (Some(&(lr, wd)), Some(grad)) = (rates.get(name), grads.get(name)) else { continue };
            if grad.shape() != param.shape() {
                return Err(Error::ShapeMismatch {
                    op: "adamw",
                    lhs: param.shape().to_vec(),
                    rhs: grad.shape().to_vec(),
                });
            }
            let device = param.device();
            let moments = match self.state.get(name) {
                Some(m) if m.exp_avg.device() == device => m.clone(),
                Some(m) => Moments {
                    exp_avg: m.exp_avg.to_device(&device)?,
                    exp_avg_sq: m.exp_avg_sq.to_device(&device)?,
                    step: m.step,
                },
                None => {
                    let zeros = || Tensor::zeros_on(param.shape(), DType::F32, &device);
                    Moments { exp_avg: zeros()?, exp_avg_sq: zeros()?, step: 0 }
                }
            };
            let scalars = self.scalars(lr, wd, moments.step + 1);
            work.push((name.to_string(), param, grad, moments, scalars));
        }
        // The state's own handles go, so that the moments are private and updated in place.
        for (name, ..) in &work {
            self.state.remove(name);
        }
        let mut tensors: Vec<AdamWTensor> = (work.iter_mut())
            .map(|(_, param, grad, m, scalars)| AdamWTensor {
                param,
                grad,
                exp_avg: &mut m.exp_avg,
                exp_avg_sq: &mut m.exp_avg_sq,
                scalars: *scalars,
            })
            .collect();
        let updated = adamw(&mut tensors, self.constants());
        drop(tensors);
        // The state goes back even when the update failed (it checks before writing).
        for (name, _, _, mut moments, _) in work {
            moments.step += u64::from(updated.is_ok());
            self.state.insert(name, moments);
        }
        updated
    }

    /// β₁, β₂ and eps as the update uses them (f32).
    fn constants(&self) -> AdamWConstants {
        let c = &self.config;
        AdamWConstants {
            beta2: c.beta2 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            eps: c.eps as f32,
        }
    }

    /// A parameter's coefficients at step `t` (1 on its first), formed in f64 and rounded once.
    fn scalars(&self, lr: f64, wd: f64, t: u64) -> AdamWScalars {
        let t = t as f64;
        AdamWScalars {
            decay: (wd != 0.0).then_some((1.0 - lr * wd) as f32),
            step_size: (lr / (1.0 - self.config.beta1.powf(t))) as f32,
            bias_correction2_sqrt: (1.0 - self.config.beta2.powf(t)).sqrt() as f32,
        }
    }

    /// The state as named host tensors: `exp_avg.<param>` and `exp_avg_sq.<param>` (f32, the
    /// parameter's shape) and `step.<param>` (I64, one element), sorted by name.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut names: Vec<&String> = self.state.keys().collect();
        names.sort();
        let mut out = Vec::with_capacity(3 * names.len());
        for name in names {
            let m = &self.state[name];
            out.push((format!("{EXP_AVG}{name}"), m.exp_avg.to_cpu()?));
            out.push((format!("{EXP_AVG_SQ}{name}"), m.exp_avg_sq.to_cpu()?));
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
                // Private copies: the file's mapping is read-only, and the update is in place.
                Moments { exp_avg: exp_avg.copy()?, exp_avg_sq: exp_avg_sq.copy()?, step },
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
