//! The tape and its handles: `Tape` records every op applied to tracked values, `Var` is a
//! value plus (when tracked) its node on a tape, and `Gradients` holds what a backward pass
//! produced for the leaves.
//!
//! Nodes are appended in execution order, so reverse creation order is a topological order:
//! the backward pass is one sweep from the output's node down to node 0, with no graph search.
//! Each node's backward closure is consumed by that sweep, which also frees what it saved.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use infinity_ops::elementwise::add;
use infinity_ops::require_f32;
use infinity_runtime::{DType, Error, Result, Tensor};

/// Gradients of a node's inputs from the gradient of its output. `needs[i]` tells whether
/// input i is tracked; an entry may be `None` where it is not (its gradient is never used).
pub(crate) type BackwardFn = Box<dyn FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send>;

struct Node {
    op: &'static str,
    /// The shape of the node's value, which its gradient must have.
    shape: Vec<usize>,
    /// The tape positions of the op's inputs; `None` for constants.
    inputs: Vec<Option<usize>>,
    /// `None` for a leaf; taken (and so freed) by the backward sweep.
    backward: Option<BackwardFn>,
}

#[derive(Default)]
struct Nodes {
    nodes: Vec<Node>,
    /// Set by the backward sweep, which consumes the closures: recording more would mix a
    /// spent graph with a new one.
    spent: bool,
}

/// Every tape gets a distinct id, so that a `Var` or `Gradients` of one tape is never
/// mistaken for one of another.
static NEXT_TAPE_ID: AtomicU64 = AtomicU64::new(0);

/// A recording of the ops of one forward pass. Cloning shares the recording. One tape serves
/// one backward pass: make a new tape per training step (or micro-batch).
#[derive(Clone)]
pub struct Tape {
    id: u64,
    nodes: Arc<Mutex<Nodes>>,
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

/// A value that may carry a node on a tape. A constant (no tape) costs nothing to operate on:
/// ops on constants only run the forward, so a model written against `Var` is also its own
/// no-grad inference path.
#[derive(Clone)]
pub struct Var {
    value: Tensor,
    node: Option<(Tape, usize)>,
}

impl Tape {
    pub fn new() -> Self {
        Tape { id: NEXT_TAPE_ID.fetch_add(1, Ordering::Relaxed), nodes: Arc::default() }
    }

    /// A poisoned lock only means another thread panicked while recording; the node list
    /// itself is never left half-written, so it is safe to go on using it.
    fn lock(&self) -> MutexGuard<'_, Nodes> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, node: Node) -> Result<usize> {
        let mut nodes = self.lock();
        if nodes.spent {
            return Err(Error::invalid(
                node.op,
                &node.shape,
                "the tape was consumed by a backward pass; use a new tape",
            ));
        }
        nodes.nodes.push(node);
        Ok(nodes.nodes.len() - 1)
    }

    /// A tracked leaf (a parameter or an input to differentiate with respect to). Gradients
    /// are computed in f32, so the value must be f32.
    pub fn leaf(&self, value: Tensor) -> Result<Var> {
        require_f32("leaf", &value)?;
        let node = Node { op: "leaf", shape: value.shape().to_vec(), inputs: Vec::new(), backward: None };
        let id = self.push(node)?;
        Ok(Var { value, node: Some((self.clone(), id)) })
    }

    /// Number of nodes recorded so far (leaves included).
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Gradients of the scalar `loss` (one element, any rank) with respect to every leaf it
    /// depends on. Consumes the recording.
    pub fn backward(&self, loss: &Var) -> Result<Gradients> {
        if loss.value.numel() != 1 {
            return Err(Error::invalid("backward", loss.shape(), "the loss must hold exactly one element"));
        }
        // The seed lives where the loss does.
        let seed = Tensor::full(loss.shape(), 1.0, DType::F32).to_device(&loss.value.device())?;
        self.backward_with_grad(loss, seed)
    }

    /// The vector-Jacobian product: gradients of Σ `output`·`grad` with respect to the leaves,
    /// for an `output` of any shape and a `grad` of the same shape. Consumes the recording.
    pub fn backward_with_grad(&self, output: &Var, grad: Tensor) -> Result<Gradients> {
        let mut leaves = HashMap::new();
        self.sweep(output, grad, &mut |leaf, g| {
            leaves.insert(leaf, g);
            Ok(())
        })?;
        Ok(Gradients { tape: self.id, leaves })
    }

    /// [`Tape::backward`], handing each leaf's gradient to `on_leaf` (with the leaf's position
    /// on the tape) as soon as it is final — once the sweep has passed the first node that
    /// read the leaf — rather than all at the end: the gradients of the last layers are ready
    /// while the sweep still runs through the first ones, and their reduction between ranks
    /// can overlap it. Consumes the recording.
    pub(crate) fn backward_streaming(
        &self,
        loss: &Var,
        on_leaf: &mut dyn FnMut(usize, Tensor) -> Result<()>,
    ) -> Result<()> {
        if loss.value.numel() != 1 {
            return Err(Error::invalid("backward", loss.shape(), "the loss must hold exactly one element"));
        }
        let seed = Tensor::full(loss.shape(), 1.0, DType::F32).to_device(&loss.value.device())?;
        self.sweep(loss, seed, on_leaf)
    }

    /// The backward sweep from `output` seeded with `grad`, each leaf's gradient handed to
    /// `on_leaf` once final.
    fn sweep(&self, output: &Var, grad: Tensor, on_leaf: &mut dyn FnMut(usize, Tensor) -> Result<()>) -> Result<()> {
        const OP: &str = "backward";
        let Some((tape, root)) = &output.node else {
            return Err(Error::invalid(OP, output.shape(), "the output does not depend on any leaf of a tape"));
        };
        if tape.id != self.id {
            return Err(Error::invalid(OP, output.shape(), "the output was recorded on another tape"));
        }
        require_f32(OP, &grad)?;
        if grad.shape() != output.shape() {
            return Err(Error::ShapeMismatch { op: OP, lhs: output.shape().to_vec(), rhs: grad.shape().to_vec() });
        }
        let mut nodes = {
            let mut guard = self.lock();
            if guard.spent {
                return Err(Error::invalid(OP, output.shape(), "the tape was already consumed by a backward pass"));
            }
            guard.spent = true;
            std::mem::take(&mut guard.nodes)
        };
        nodes.truncate(root + 1);
        // The leaves whose gradient is final once the sweep is past each node: those it is the
        // first reader of.
        let mut first_reader = vec![usize::MAX; nodes.len()];
        for (id, node) in nodes.iter().enumerate() {
            for &input in node.inputs.iter().flatten() {
                first_reader[input] = first_reader[input].min(id);
            }
        }
        let mut final_after: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (leaf, _) in nodes.iter().enumerate().filter(|(_, n)| n.backward.is_none()) {
            if let Some(readers) = final_after.get_mut(first_reader[leaf]) {
                readers.push(leaf);
            }
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; nodes.len()];
        grads[*root] = Some(grad);
        while let Some(node) = nodes.pop() {
            let id = nodes.len();
            if let Some(g) = grads[id].take() {
                // A leaf still holding its gradient here is the output itself.
                let Some(backward) = node.backward else {
                    on_leaf(id, g.contiguous()?)?;
                    continue;
                };
                let needs: Vec<bool> = node.inputs.iter().map(Option::is_some).collect();
                let input_grads = backward(&g, &needs)?;
                for (input, input_grad) in node.inputs.iter().zip(input_grads) {
                    let (Some(input), Some(input_grad)) = (*input, input_grad) else { continue };
                    let expected = &nodes[input].shape;
                    if input_grad.shape() != expected.as_slice() {
                        return Err(Error::ShapeMismatch {
                            op: node.op,
                            lhs: expected.clone(),
                            rhs: input_grad.shape().to_vec(),
                        });
                    }
                    grads[input] = Some(match grads[input].take() {
                        None => input_grad,
                        Some(sum) => add(&sum, &input_grad)?,
                    });
                }
            }
            for &leaf in &final_after[id] {
                if let Some(g) = grads[leaf].take() {
                    on_leaf(leaf, g.contiguous()?)?;
                }
            }
        }
        Ok(())
    }
}

impl Var {
    /// An untracked value: ops on it record nothing and it never receives a gradient.
    pub fn constant(value: Tensor) -> Self {
        Var { value, node: None }
    }

    pub fn value(&self) -> &Tensor {
        &self.value
    }

    pub fn into_value(self) -> Tensor {
        self.value
    }

    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    pub fn rank(&self) -> usize {
        self.value.rank()
    }

    /// Size of dimension `dim`.
    pub fn dim(&self, dim: usize) -> Result<usize> {
        self.value.dim(dim)
    }

    /// The value's position on `tape`, if it was recorded there.
    pub(crate) fn position_on(&self, tape: &Tape) -> Option<usize> {
        self.node.as_ref().filter(|(t, _)| t.id == tape.id).map(|&(_, id)| id)
    }

    /// Whether the value depends on a leaf of a tape (and so will receive a gradient).
    pub fn is_tracked(&self) -> bool {
        self.node.is_some()
    }

    /// The same value cut off from the tape: gradients do not flow through the result.
    pub fn detach(&self) -> Var {
        Var::constant(self.value.clone())
    }

    /// Records `value = op(inputs)` with `backward` as the rule for the inputs' gradients, or
    /// returns an untracked result (dropping `backward` unrun) when no input is tracked.
    /// Errors when tracked inputs come from different tapes.
    pub(crate) fn record(
        op: &'static str,
        inputs: &[&Var],
        value: Tensor,
        backward: impl FnOnce(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + 'static,
    ) -> Result<Var> {
        let mut tape: Option<&Tape> = None;
        for (t, _) in inputs.iter().filter_map(|v| v.node.as_ref()) {
            match tape {
                Some(first) if first.id != t.id => {
                    return Err(Error::invalid(op, value.shape(), "the inputs were recorded on different tapes"));
                }
                _ => tape = Some(t),
            }
        }
        let Some(tape) = tape else { return Ok(Var::constant(value)) };
        let node = Node {
            op,
            shape: value.shape().to_vec(),
            inputs: inputs.iter().map(|v| v.node.as_ref().map(|(_, id)| *id)).collect(),
            backward: Some(Box::new(backward)),
        };
        let id = tape.push(node)?;
        Ok(Var { value, node: Some((tape.clone(), id)) })
    }
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.node {
            Some((tape, id)) => write!(f, "Var(tape {} node {id}, {:?})", tape.id, self.value),
            None => write!(f, "Var(constant, {:?})", self.value),
        }
    }
}

impl From<Tensor> for Var {
    fn from(value: Tensor) -> Self {
        Var::constant(value)
    }
}

/// The gradients of one backward pass, one contiguous f32 tensor per leaf that the output
/// depends on.
pub struct Gradients {
    tape: u64,
    leaves: HashMap<usize, Tensor>,
}

impl Gradients {
    /// The gradient of a leaf; `None` for a leaf the output does not depend on, a non-leaf,
    /// a constant or a `Var` of another tape.
    pub fn get(&self, var: &Var) -> Option<&Tensor> {
        match &var.node {
            Some((tape, id)) if tape.id == self.tape => self.leaves.get(id),
            _ => None,
        }
    }

    /// Removes and returns the gradient of a leaf (as `get`), avoiding a copy.
    pub fn take(&mut self, var: &Var) -> Option<Tensor> {
        match &var.node {
            Some((tape, id)) if tape.id == self.tape => self.leaves.remove(id),
            _ => None,
        }
    }
}
