//! The training-side containers: `Params` (named f32 parameters, updated by the optimizer),
//! `Tracked` (those parameters as leaves of one tape) and `GradStore` (named f32 gradients,
//! with micro-batch accumulation and global-norm clipping).

use std::collections::HashMap;

use infinity_ops::elementwise::{add, mul_scalar};
use infinity_ops::optim::sum_squares;
use infinity_runtime::io::Weights;
use infinity_runtime::{DType, Device, Error, Result, Tensor};

use crate::{Gradients, Tape, Var};

fn unknown(op: &'static str, name: &str) -> Error {
    Error::invalid(op, &[], format!("there is no parameter named '{name}'"))
}

/// Named parameters in a fixed order, each a contiguous f32 tensor (fp32 master weights).
#[derive(Clone, Debug, Default)]
pub struct Params {
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
}

impl Params {
    /// Parameters from (name, tensor) pairs; names must be unique. Other float dtypes are
    /// converted to f32 (master weights); integer tensors are rejected.
    pub fn new(entries: Vec<(String, Tensor)>) -> Result<Self> {
        let mut params = Params::default();
        for (name, t) in entries {
            if !t.dtype().is_float() {
                return Err(Error::UnsupportedDType { op: "params", dtype: t.dtype() });
            }
            if params.index.insert(name.clone(), params.entries.len()).is_some() {
                return Err(Error::invalid("params", t.shape(), format!("the name '{name}' occurs twice")));
            }
            params.entries.push((name, t.to_dtype(DType::F32)?.contiguous()?));
        }
        Ok(params)
    }

    /// Every tensor of a checkpoint as a parameter (buffers included: drop them with
    /// `Params::new` on a filtered list when the model has any).
    pub fn from_weights(weights: &Weights) -> Result<Self> {
        Self::new(weights.iter().map(|(name, t)| (name.to_string(), t.clone())).collect())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.index.get(name).map(|&i| &self.entries[i].1).ok_or_else(|| unknown("params", name))
    }

    /// Names and tensors in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Tensor)> {
        self.entries.iter().map(|(name, t)| (name.as_str(), t))
    }

    /// Names and tensors in order, for the optimiser's in-place update.
    pub(crate) fn iter_mut(&mut self) -> impl ExactSizeIterator<Item = (&str, &mut Tensor)> {
        self.entries.iter_mut().map(|(name, t)| (name.as_str(), t))
    }

    /// The same parameters on `device` (the training device).
    pub fn to_device(&self, device: &Device) -> Result<Params> {
        let entries = self.entries.iter().map(|(n, t)| Ok((n.clone(), t.to_device(device)?))).collect::<Result<_>>()?;
        Ok(Params { entries, index: self.index.clone() })
    }

    /// The device the parameters live on (the CPU for an empty set).
    pub fn device(&self) -> Device {
        self.entries.first().map_or(Device::Cpu, |(_, t)| t.device())
    }

    /// Replaces a parameter's value; the shape must stay the same.
    pub fn set(&mut self, name: &str, value: Tensor) -> Result<()> {
        let &i = self.index.get(name).ok_or_else(|| unknown("params", name))?;
        let current = &self.entries[i].1;
        if value.shape() != current.shape() {
            return Err(Error::ShapeMismatch {
                op: "params",
                lhs: current.shape().to_vec(),
                rhs: value.shape().to_vec(),
            });
        }
        infinity_ops::require_f32("params", &value)?;
        self.entries[i].1 = value.contiguous()?;
        Ok(())
    }

    /// Every parameter as a leaf of `tape`, for one forward and backward pass.
    pub fn track(&self, tape: &Tape) -> Result<Tracked> {
        let vars =
            self.entries.iter().map(|(name, t)| Ok((name.clone(), tape.leaf(t.clone())?))).collect::<Result<_>>()?;
        Ok(Tracked { vars, index: self.index.clone() })
    }
}

/// The parameters as leaves of one tape, looked up by name by the model's forward.
pub struct Tracked {
    vars: Vec<(String, Var)>,
    index: HashMap<String, usize>,
}

impl Tracked {
    /// Named leaves made elsewhere (a gradient check's), for a model that looks them up by name.
    pub fn from_vars(vars: Vec<(String, Var)>) -> Self {
        let index = vars.iter().enumerate().map(|(i, (name, _))| (name.clone(), i)).collect();
        Tracked { vars, index }
    }

    pub fn get(&self, name: &str) -> Result<&Var> {
        self.index.get(name).map(|&i| &self.vars[i].1).ok_or_else(|| unknown("tracked", name))
    }

    /// A backward pass of `loss` over the parameters' `tape`, handing each parameter's
    /// gradient to `on_grad` as soon as it is final (the last layers' first), while the pass
    /// goes on through the earlier ones. A parameter the loss does not depend on is not handed
    /// over. Consumes the recording.
    pub fn backward(&self, tape: &Tape, loss: &Var, on_grad: &mut dyn FnMut(&str, Tensor) -> Result<()>) -> Result<()> {
        let names: HashMap<usize, &str> =
            self.vars.iter().filter_map(|(name, v)| v.position_on(tape).map(|id| (id, name.as_str()))).collect();
        tape.backward_streaming(loss, &mut |leaf, g| match names.get(&leaf) {
            Some(name) => on_grad(name, g),
            None => Ok(()),
        })
    }

    /// The gradients of the parameters from a backward pass over their tape. A parameter
    /// the loss does not depend on gets no entry (as PyTorch leaves its `.grad` None, so the
    /// optimizer skips it).
    pub fn gradients(&self, mut grads: Gradients) -> GradStore {
        let mut store = GradStore::default();
        for (name, var) in &self.vars {
            if let Some(g) = grads.take(var) {
                store.insert(name.clone(), g);
            }
        }
        store
    }
}

/// Named f32 gradients, in parameter order.
#[derive(Clone, Debug, Default)]
pub struct GradStore {
    grads: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
}

impl GradStore {
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.index.get(name).map(|&i| &self.grads[i].1)
    }

    /// Sets the gradient of `name`, replacing any earlier one.
    pub fn insert(&mut self, name: String, grad: Tensor) {
        match self.index.get(&name) {
            Some(&i) => self.grads[i].1 = grad,
            None => {
                self.index.insert(name.clone(), self.grads.len());
                self.grads.push((name, grad));
            }
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Tensor)> {
        self.grads.iter().map(|(name, g)| (name.as_str(), g))
    }

    /// Gradient accumulation: adds `scale` × `g` (one micro-batch's gradient of `name`) to
    /// the store. With n micro-batches and scale 1/n the store ends up holding the gradient of
    /// the mean loss, as the official trainer's loss × 1/ac.
    pub fn add_scaled(&mut self, name: &str, g: &Tensor, scale: f32) -> Result<()> {
        let scaled = if scale == 1.0 { g.clone() } else { mul_scalar(g, scale)? };
        let sum = match self.get(name) {
            // `add` would broadcast; gradients of one parameter must match exactly.
            Some(sum) if sum.shape() != g.shape() => {
                return Err(Error::ShapeMismatch {
                    op: "accumulate",
                    lhs: sum.shape().to_vec(),
                    rhs: g.shape().to_vec(),
                });
            }
            Some(sum) => add(sum, &scaled)?,
            None => scaled,
        };
        self.insert(name.to_string(), sum);
        Ok(())
    }

    /// [`GradStore::add_scaled`] for every gradient of `micro`.
    pub fn accumulate(&mut self, micro: &GradStore, scale: f32) -> Result<()> {
        micro.grads.iter().try_for_each(|(name, g)| self.add_scaled(name, g, scale))
    }

    /// Removes and returns the gradient of `name`.
    pub fn take(&mut self, name: &str) -> Option<Tensor> {
        let i = self.index.remove(name)?;
        let (_, g) = self.grads.remove(i);
        for at in self.index.values_mut().filter(|at| **at > i) {
            *at -= 1;
        }
        Some(g)
    }

    /// The same gradients in the order of `params` (the order every rank and device agrees
    /// on, whatever order a backward pass finished them in).
    pub fn ordered_as(mut self, params: &Params) -> GradStore {
        let mut ordered = GradStore::default();
        for (name, _) in params.iter() {
            if let Some(g) = self.take(name) {
                ordered.insert(name.to_string(), g);
            }
        }
        ordered
    }

    /// The L2 norm of all gradients together (the norm of the per-tensor norms), in f64; one
    /// pass over all of them on their device.
    pub fn total_norm(&self) -> Result<f64> {
        let grads: Vec<&Tensor> = self.grads.iter().map(|(_, g)| g).collect();
        Ok(sum_squares(&grads)?.sqrt())
    }

    /// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: when the total norm exceeds
    /// `max_norm`, every gradient is multiplied by max_norm / (norm + 1e-6). Returns the total
    /// norm before clipping (NaN or inf when a gradient is not finite; the gradients are then
    /// scaled by 0 or NaN exactly as PyTorch's are, and the caller decides whether to step).
    pub fn clip_norm(&mut self, max_norm: f32) -> Result<f32> {
        let norm = self.total_norm()? as f32;
        // The coefficient in f32 like PyTorch's (a 0-dim f32 tensor), clamped to at most 1.
        let coefficient = max_norm / (norm + 1e-6);
        if coefficient < 1.0 || coefficient.is_nan() {
            for (_, g) in &mut self.grads {
                *g = mul_scalar(g, coefficient)?;
            }
        }
        Ok(norm)
    }
}
