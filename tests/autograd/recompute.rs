//! Activation checkpointing ([`recomputed`]): a segment recorded as one node gives the
//! gradients of the same segment recorded op by op, bit for bit, on the CPU and on every
//! executor; it matches finite differences; inputs it ignores get zeros, constants nothing.

use infinity::autograd::attention::attention;
use infinity::autograd::elementwise::{add, gelu_tanh, mul};
use infinity::autograd::matmul::linear;
use infinity::autograd::recompute::recomputed;
use infinity::autograd::reduce::sum;
use infinity::autograd::{Tape, Var};
use infinity::cuda::testing::executors;
use infinity::runtime::{Device, Result, Tensor};

use crate::support::{check, randn};

/// A block-like segment: x (2, 3, 8) through a linear layer, GELU, self-attention over the
/// tokens and a residual; w (8, 8), b (8).
fn segment(v: &[Var]) -> Result<Var> {
    let h = gelu_tanh(&linear(&v[0], &v[1], Some(&v[2]))?)?;
    let heads = h.reshape(&[2, 3, 2, 4])?.permute(&[0, 2, 1, 3])?;
    let o = attention(&heads, &heads, &heads, None, 0.5)?.permute(&[0, 2, 1, 3])?.reshape(&[2, 3, 8])?;
    add(&v[0], &mul(&o, &h)?)
}

fn inputs() -> Vec<Tensor> {
    vec![randn(&[2, 3, 8], 1, 1.0), randn(&[8, 8], 2, 0.3), randn(&[8], 3, 0.1)]
}

/// The gradients of Σ y·r (r a fixed random weighting) for `y` = the segment twice over, each
/// recorded op by op or recomputed, with every input a leaf on `device`.
fn gradients(device: &Device, recompute: bool) -> Vec<Vec<f32>> {
    let tape = Tape::new();
    let leaves: Vec<Var> = inputs().iter().map(|t| tape.leaf(t.to_device(device).unwrap()).unwrap()).collect();
    let run = |x: &Var| {
        let args = [x, &leaves[1], &leaves[2]];
        if recompute { recomputed("test.segment", &args, segment) } else { segment(&args.map(Var::clone)) }
    };
    let y = run(&run(&leaves[0]).unwrap()).unwrap();
    let r = Var::constant(randn(&[2, 3, 8], 4, 1.0).to_device(device).unwrap());
    let grads = tape.backward(&sum(&mul(&y, &r).unwrap(), &[], false).unwrap()).unwrap();
    leaves.iter().map(|l| grads.get(l).unwrap().to_f32_vec().unwrap()).collect()
}

#[test]
fn recomputed_gradients_equal_recorded_ones_on_every_device() {
    let devices = std::iter::once(Device::Cpu).chain(executors().iter().map(|e| e.device()));
    for device in devices {
        assert_eq!(gradients(&device, true), gradients(&device, false), "{device}");
    }
}

#[test]
fn a_recomputed_segment_is_one_node_and_matches_finite_differences() {
    let tape = Tape::new();
    let leaves: Vec<Var> = inputs().into_iter().map(|t| tape.leaf(t).unwrap()).collect();
    let before = tape.len();
    recomputed("test.segment", &leaves.iter().collect::<Vec<_>>(), segment).unwrap();
    assert_eq!(tape.len(), before + 1, "the segment's own ops land on a scratch tape");
    check(&inputs(), |v| recomputed("test.segment", &v.iter().collect::<Vec<_>>(), segment));
}

/// An ignored tracked input gets a zero gradient (its leaf is still part of the step); a
/// constant input none.
#[test]
fn ignored_and_constant_inputs() {
    let tape = Tape::new();
    let x = tape.leaf(randn(&[3, 4], 5, 1.0)).unwrap();
    let ignored = tape.leaf(randn(&[2], 6, 1.0)).unwrap();
    let w = Var::constant(randn(&[4, 4], 7, 0.5));
    let y = recomputed("test.inputs", &[&x, &ignored, &w], |v| linear(&v[0], &v[2], None)).unwrap();
    let grads = tape.backward(&sum(&y, &[], false).unwrap()).unwrap();
    assert_eq!(grads.get(&ignored).unwrap().to_f32_vec().unwrap(), vec![0.0; 2]);
    assert!(grads.get(&w).is_none());
    assert_eq!(grads.get(&x).unwrap().shape(), &[3, 4]);
}
