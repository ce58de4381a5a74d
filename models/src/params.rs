//! A model's tensors gathered from a checkpoint: each one checked against the shape its
//! configuration implies (errors name the file and the stored key), then handed to the layers
//! by name on the model's device in the dtype its use asks for there (the dtype policy): on
//! the CPU a linear weight stays in its stored dtype (so half-precision files stay mapped) and
//! the rest is widened to f32; on an accelerator every GEMM operand is bf16 and the rest f32,
//! each tensor converted and uploaded as it is taken, never a host copy of the whole model.
//! The official loaders skip missing and surplus tensors silently; these checks refuse both.

use std::collections::HashMap;
use std::path::PathBuf;

use infinity_autograd::{Params as TrainParams, Tracked, Var};
use infinity_runtime::io::Weights;
use infinity_runtime::rng::Philox;
use infinity_runtime::{DType, Device, Error, Result, Tensor};

/// Where a model's layers get their parameters by name: constants from a checkpoint for
/// inference, or a training step's tracked leaves.
pub(crate) type Source<'a> = &'a mut dyn FnMut(&str) -> Result<Var>;

/// How a layer uses a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// Multiplied by `linear` (or gathered row-wise), which takes bf16/f16 as stored.
    AsStored,
    /// A convolution's weight: the GEMM operand its unfolded input is multiplied by.
    ConvWeight,
    /// An embedding table, gathered row-wise: the lookup copies rows exactly, so a bf16 table
    /// stays bf16 on every device (elsewhere f32 on an accelerator, whose lookup takes f32 or bf16).
    Rows,
    /// Needed in f32 (norm weights, biases, embeddings added to activations, ...).
    F32,
}

impl Use {
    /// Whether some device computes with a bf16 copy of the tensor as it is: GEMM operands and
    /// gathered tables (an accelerator takes them in bf16, the CPU linear weights and tables as
    /// stored, convolution kernels widened). A bf16 export rounds only these; the rest would be
    /// widened back to f32 everywhere, so rounding them would lose precision and save nothing.
    pub(crate) fn takes_bf16(self) -> bool {
        !matches!(self, Use::F32)
    }

    /// The dtype a tensor stored as `stored` takes on `device`.
    fn dtype(self, stored: DType, device: &Device) -> DType {
        match (self, device) {
            (Use::AsStored | Use::Rows, Device::Cpu) => stored,
            (Use::AsStored | Use::ConvWeight, Device::Accelerator(_)) => DType::BF16,
            (Use::Rows, Device::Accelerator(_)) if stored == DType::BF16 => DType::BF16,
            (Use::Rows | Use::ConvWeight | Use::F32, _) => DType::F32,
        }
    }
}

pub(crate) struct Params {
    path: PathBuf,
    /// As stored, with their use.
    tensors: HashMap<String, (Tensor, Use)>,
    /// Where `take` puts them.
    device: Device,
}

impl Params {
    pub(crate) fn new(weights: &Weights) -> Self {
        Params { path: weights.path().to_path_buf(), tensors: HashMap::new(), device: Device::Cpu }
    }

    /// Hands the tensors out on `device` from now on.
    pub(crate) fn place_on(&mut self, device: &Device) {
        self.device = device.clone();
    }

    pub(crate) fn error(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::Tensor { path: self.path.clone(), key: key.to_string(), msg: msg.into() }
    }

    /// Checks the stored tensor `stored` against `shape` and keeps it under `key` (the name the
    /// layers ask for, which an alias or the flat key form may differ from).
    pub(crate) fn insert(
        &mut self,
        weights: &Weights,
        key: &str,
        stored: &str,
        shape: &[usize],
        use_: Use,
    ) -> Result<()> {
        let t = weights.get(stored)?;
        if t.shape() != shape {
            return Err(self.error(
                stored,
                format!("shape {:?} does not fit the configuration, which needs {shape:?}", t.shape()),
            ));
        }
        if !t.dtype().is_float() {
            return Err(self.error(stored, format!("dtype {} is not a floating-point type", t.dtype())));
        }
        self.tensors.insert(key.to_string(), (t.clone(), use_));
        Ok(())
    }

    /// Removes a tensor by the name `insert` kept it under and returns it on the device, in
    /// the dtype its use takes there.
    pub(crate) fn take(&mut self, key: &str) -> Result<Tensor> {
        let (t, use_) = self
            .tensors
            .remove(key)
            .ok_or_else(|| self.error(key, "requested twice or not part of the configuration"))?;
        t.to_dtype(use_.dtype(t.dtype(), &self.device))?.to_device(&self.device)
    }
}

/// Refuses the first tensor that `expected` does not accept: a checkpoint holding more than the
/// model builds is a different architecture, and its extra weights would be lost silently.
pub(crate) fn refuse_unexpected(weights: &Weights, expected: impl Fn(&str) -> bool, model: &str) -> Result<()> {
    match weights.iter().find(|(k, _)| !expected(k)) {
        Some((key, _)) => {
            Err(Error::tensor(weights.path(), key, format!("unexpected tensor: not part of the detected {model}")))
        }
        None => Ok(()),
    }
}

/// The entries `keys` of a gathered checkpoint as trainable parameters, in that order.
pub(crate) fn trainable(p: &mut Params, keys: impl IntoIterator<Item = String>) -> Result<TrainParams> {
    TrainParams::new(keys.into_iter().map(|k| Ok((k.clone(), p.take(&k)?))).collect::<Result<_>>()?)
}

/// A parameter source over a training step's tracked leaves that checks each one against the
/// shape its configuration implies (`shapes`: key → shape); `op` names the model in errors.
pub(crate) fn tracked_source<'a>(
    op: &'static str,
    shapes: HashMap<String, Vec<usize>>,
    params: &'a Tracked,
) -> impl FnMut(&str) -> Result<Var> + 'a {
    move |key| {
        let var = params.get(key)?;
        // Models ask only for their configuration's keys.
        let want = shapes.get(key).map_or(&[][..], Vec::as_slice);
        if want != var.shape() {
            return Err(Error::ShapeMismatch { op, lhs: want.to_vec(), rhs: var.shape().to_vec() });
        }
        Ok(var.clone())
    }
}

/// `n` normals of standard deviation `std` redrawn until inside [−2, 2], PyTorch's
/// `trunc_normal_` with its default absolute bounds.
pub(crate) fn truncated_normal(rng: &mut Philox, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.extend(rng.normal(n - out.len()).into_iter().map(|x| x * std).filter(|x| x.abs() <= 2.0));
    }
    out
}
