//! The keys and values of the positions a causal model has run so far, grown by one recorded
//! concatenation per call: what the class-conditional generators (VAR, Open-MAGVIT2) attend
//! over, in generation (constants) and in training (recorded, so the gradient of a key
//! collects the attention of every later query).

use infinity_autograd::Var;
use infinity_autograd::index::concat;
use infinity_runtime::Result;

/// (B, H, tokens, hd) keys and values so far.
#[derive(Default)]
pub struct KvCache {
    k: Option<Var>,
    v: Option<Var>,
}

impl KvCache {
    /// Appends the keys and values (B, H, n, hd) of new positions; returns every key and value.
    pub fn append(&mut self, k: Var, v: Var) -> Result<(Var, Var)> {
        Ok((grown(&mut self.k, k)?, grown(&mut self.v, v)?))
    }
}

fn grown(old: &mut Option<Var>, new: Var) -> Result<Var> {
    let all = match old.take() {
        Some(o) => concat(&[&o, &new], 2)?,
        None => new,
    };
    *old = Some(all.clone());
    Ok(all)
}
