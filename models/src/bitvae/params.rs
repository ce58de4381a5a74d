//! Gathers a BitVAE's tensors from a checkpoint in the native (`x.conv.weight`) or the flat
//! (`x.weight`) key form, both of which the official loader accepts.

use std::collections::HashSet;

use infinity_runtime::Result;
use infinity_runtime::io::Weights;

use super::config::{BitVaeConfig, flat_key};
use crate::params::{Params, Use, refuse_unexpected};

/// How the autoencoder uses a tensor of `shape`: convolution kernels as GEMM operands.
pub(crate) fn use_of(shape: &[usize]) -> Use {
    if shape.len() == 4 { Use::ConvWeight } else { Use::F32 }
}

pub(super) fn gather(weights: &Weights, config: &BitVaeConfig) -> Result<Params> {
    let mut p = Params::new(weights);
    let mut used = HashSet::new();
    for entry in config.entries().into_iter().filter(|e| !e.buffer) {
        let flat = flat_key(&entry.key);
        let stored = match (weights.contains(&entry.key), weights.contains(&flat)) {
            (true, _) => entry.key.clone(),
            (false, true) => flat,
            (false, false) => return Err(p.error(&entry.key, format!("missing (expected shape {:?})", entry.shape))),
        };
        p.insert(weights, &entry.key, &stored, &entry.shape, use_of(&entry.shape))?;
        used.insert(stored);
    }
    // Inside the networks anything else means an architecture we do not build (e.g. attention).
    refuse_unexpected(
        weights,
        |k| used.contains(k) || !(k.starts_with("encoder.") || k.starts_with("decoder.")),
        "BitVAE configuration",
    )?;
    Ok(p)
}
