//! Activation checkpointing: a function of some `Var`s recorded as one node that keeps only
//! its inputs and recomputes its own graph when the backward sweep reaches it. Memory for the
//! activations inside falls from "every node's saved tensors" to "the inputs", at the price of
//! running the forward twice (the official trainer's `checkpointing full-block`).
//!
//! The forward runs the function on leaves of a scratch tape that is dropped at once, and the
//! backward runs it again on leaves of a fresh tape: both take the recorded code path of every
//! op, so the output the rest of the graph consumed and the graph that is differentiated are
//! computed by the same kernels on the same values — the gradients equal those of the
//! unrecomputed graph bit for bit.

use infinity_runtime::{DType, Error, Result, Tensor};

use crate::{Tape, Var};

/// `f(inputs)` recorded as one node named `op` whose backward recomputes `f`. `f` must be a
/// pure function of its inputs (every tracked value it reads comes in through them; anything
/// it captures is constant); tracked inputs are f32, as every tracked value is. With no input
/// tracked it is simply `f` on the inputs.
pub fn recomputed<F>(op: &'static str, inputs: &[&Var], f: F) -> Result<Var>
where
    F: Fn(&[Var]) -> Result<Var> + Send + 'static,
{
    if inputs.iter().all(|v| !v.is_tracked()) {
        return f(&inputs.iter().map(|v| (*v).clone()).collect::<Vec<_>>());
    }
    let values: Vec<Tensor> = inputs.iter().map(|v| v.value().clone()).collect();
    let tracked: Vec<bool> = inputs.iter().map(|v| v.is_tracked()).collect();
    let output = {
        let scratch = Tape::new();
        f(&on_tape(&scratch, &values, &tracked)?)?.into_value()
    };
    Var::record(op, inputs, output, move |g, needs| {
        let tape = Tape::new();
        let vars = on_tape(&tape, &values, needs)?;
        let out = f(&vars)?;
        if !out.is_tracked() {
            return Err(Error::invalid(op, out.shape(), "the recomputed output depends on no input"));
        }
        let mut grads = tape.backward_with_grad(&out, g.clone())?;
        vars.iter()
            .zip(needs)
            .map(|(var, &need)| match (need, grads.take(var)) {
                (false, _) => Ok(None),
                (true, Some(grad)) => Ok(Some(grad)),
                // An input the output does not depend on has a zero gradient.
                (true, None) => Tensor::zeros_on(var.shape(), DType::F32, &var.value().device()).map(Some),
            })
            .collect()
    })
}

/// `values` as leaves of `tape` where `tracked`, constants elsewhere.
fn on_tape(tape: &Tape, values: &[Tensor], tracked: &[bool]) -> Result<Vec<Var>> {
    values
        .iter()
        .zip(tracked)
        .map(|(v, &t)| if t { tape.leaf(v.clone()) } else { Ok(Var::constant(v.clone())) })
        .collect()
}
