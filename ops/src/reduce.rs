//! Reductions over one or several dimensions: `sum`, `mean`, `max`, `min`, `variance`
//! (biased or unbiased) and `argmax`, with PyTorch's `keepdim`.
//!
//! Also home of the row kernels that softmax and the norms reuse: `sum_map` (f64
//! accumulation in independent lanes, so it vectorises) and the NaN-propagating `max_nan`.

use std::borrow::Cow;

use infinity_cuda::Executor;
use infinity_runtime::{Error, Result, Tensor};
use rayon::prelude::*;

use crate::device::{executor, no_kernel};
use crate::util::{TASK_WORK, for_row_blocks};
use crate::{f32_data, require_f32};

/// The value reductions. `Max`/`Min` propagate NaN (any NaN in the reduced set gives NaN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// Sum / count; NaN when the reduced set is empty.
    Mean,
    Max,
    Min,
    /// Mean squared deviation from the mean, divided by count - 1 when `unbiased` (Bessel's
    /// correction) and by count otherwise; NaN when that divisor is not positive.
    Variance {
        unbiased: bool,
    },
}

impl ReduceOp {
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::Variance { .. } => "variance",
        }
    }

    /// Max and min have no identity, so (like PyTorch) they refuse an empty reduced set.
    fn needs_elements(self) -> bool {
        matches!(self, ReduceOp::Max | ReduceOp::Min)
    }
}

/// The named wrappers over `reduce`, expanded both here and in `reference` so that the two
/// implementations offer the same signatures.
macro_rules! named_reductions {
    () => {
        /// Sum over `dims` (all dimensions when `dims` is empty), f64 accumulation.
        pub fn sum(x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
            reduce(ReduceOp::Sum, x, dims, keepdim)
        }
        /// Mean over `dims` (all dimensions when `dims` is empty).
        pub fn mean(x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
            reduce(ReduceOp::Mean, x, dims, keepdim)
        }
        /// Maximum over `dims` (PyTorch `amax`), NaN if any reduced element is NaN.
        pub fn max(x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
            reduce(ReduceOp::Max, x, dims, keepdim)
        }
        /// Minimum over `dims` (PyTorch `amin`), NaN if any reduced element is NaN.
        pub fn min(x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
            reduce(ReduceOp::Min, x, dims, keepdim)
        }
        /// Variance over `dims`, unbiased (÷ count - 1) or biased (÷ count); see [`ReduceOp::Variance`].
        pub fn variance(x: &Tensor, dims: &[usize], unbiased: bool, keepdim: bool) -> Result<Tensor> {
            reduce(ReduceOp::Variance { unbiased }, x, dims, keepdim)
        }
    };
}

named_reductions!();

/// What a reduction keeps and returns, from validated arguments (shared by both paths).
struct Plan {
    /// Per input dimension: whether it is reduced.
    reduced: Vec<bool>,
    out_shape: Vec<usize>,
    /// Elements folded into each output element.
    count: usize,
}

impl Plan {
    /// Validates f32 input, dims in range and listed once, and (when `needs_elements`) a
    /// non-empty reduced set. An empty `dims` reduces every dimension (PyTorch `dim=None`).
    fn new(op: &'static str, x: &Tensor, dims: &[usize], keepdim: bool, needs_elements: bool) -> Result<Plan> {
        require_f32(op, x)?;
        let shape = x.shape();
        let mut reduced = vec![dims.is_empty(); shape.len()];
        for &dim in dims {
            let seen = reduced.get_mut(dim).ok_or(Error::DimOutOfRange { op, dim, shape: shape.to_vec() })?;
            if std::mem::replace(seen, true) {
                return Err(Error::invalid(op, shape, format!("dimension {dim} is listed twice in {dims:?}")));
            }
        }
        let count = shape.iter().zip(&reduced).filter(|&(_, &r)| r).map(|(&n, _)| n).product();
        if needs_elements && count == 0 {
            return Err(Error::invalid(op, shape, format!("reduction over {dims:?} has no elements and no identity")));
        }
        let out_shape = shape
            .iter()
            .zip(&reduced)
            .filter_map(|(&n, &r)| match (r, keepdim) {
                (false, _) => Some(n),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        Ok(Plan { reduced, out_shape, count })
    }

    /// Whether `x` is contiguous and its reduced dimensions are leading ones with a kept one
    /// after them (a bias gradient's sum over tokens), which [`leading_sums`] reduces in place.
    fn leading_of_contiguous(&self, x: &Tensor) -> bool {
        let leading = self.reduced.iter().take_while(|&&r| r).count();
        x.numel() > 0
            && x.is_contiguous()
            && leading > 0
            && leading < self.reduced.len()
            && !self.reduced[leading..].contains(&true)
    }

    /// The elements of `x` as rows of `count`: kept dimensions outermost, reduced ones
    /// innermost. Borrowed (no copy) when the reduced dimensions already are innermost.
    fn rows<'a>(&self, op: &'static str, x: &'a Tensor) -> Result<Cow<'a, [f32]>> {
        let rank = self.reduced.len();
        let kept = (0..rank).filter(|&d| !self.reduced[d]);
        let perm: Vec<usize> = kept.chain((0..rank).filter(|&d| self.reduced[d])).collect();
        if perm.iter().enumerate().all(|(i, &d)| i == d) {
            f32_data(op, x)
        } else {
            Ok(Cow::Owned(x.permute(&perm)?.to_vec::<f32>()?))
        }
    }
}

/// Reduces `x` over `dims` (all dimensions when empty) with `op`, keeping reduced dimensions
/// as size 1 when `keepdim`. Input f32 with any layout; output contiguous f32.
/// Errors: `UnsupportedDType`, `DimOutOfRange`, `InvalidArgument` (a dim listed twice, or
/// max/min over an empty set).
pub fn reduce(op: ReduceOp, x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
    let name = op.name();
    let plan = Plan::new(name, x, dims, keepdim, op.needs_elements())?;
    if let Some(exec) = executor(name, &[x])? {
        return reduce_on(&exec, op, x, &plan);
    }
    let n = plan.count as f64;
    if let (ReduceOp::Sum | ReduceOp::Mean, true) = (op, plan.leading_of_contiguous(x)) {
        let sums = leading_sums(&f32_data(name, x)?, plan.count);
        let out = sums.into_iter().map(|s| if op == ReduceOp::Sum { s as f32 } else { (s / n) as f32 }).collect();
        return Tensor::from_vec(out, &plan.out_shape);
    }
    let data = plan.rows(name, x)?;
    let sum = |row: &[f32]| fold_long(row, |_, c| sum_map(c, f64::from), |a, b| a + b);
    let out = reduce_rows(&data, plan.count, &plan.out_shape, |row| match op {
        ReduceOp::Sum => sum(row) as f32,
        ReduceOp::Mean => (sum(row) / n) as f32,
        ReduceOp::Max => fold_long(row, |_, c| max_nan(c), nan_max),
        ReduceOp::Min => fold_long(row, |_, c| min_nan(c), nan_min),
        ReduceOp::Variance { unbiased } => {
            let mean = sum(row) / n;
            let squares = fold_long(row, |_, c| sum_map(c, |v| (f64::from(v) - mean).powi(2)), |a, b| a + b);
            variance_from(squares, plan.count, unbiased) as f32
        }
    });
    Tensor::from_vec(out, &plan.out_shape)
}

/// [`reduce`] on an executor: the kept dimensions outermost and the reduced ones collapsed
/// into rows (a view where the layout allows, else a device copy), one block per row, f32
/// accumulation in a tree (the CPU's is f64 in lanes).
fn reduce_on(exec: &Executor, op: ReduceOp, x: &Tensor, plan: &Plan) -> Result<Tensor> {
    use infinity_cuda::norm::{RowReduction, reduce_rows};
    let row_op = match op {
        ReduceOp::Sum => RowReduction::Sum,
        ReduceOp::Mean => RowReduction::Mean,
        ReduceOp::Max => RowReduction::Max,
        ReduceOp::Min => RowReduction::Min,
        ReduceOp::Variance { .. } => return Err(no_kernel(op.name(), x)),
    };
    let rank = plan.reduced.len();
    let kept = (0..rank).filter(|&d| !plan.reduced[d]);
    let perm: Vec<usize> = kept.chain((0..rank).filter(|&d| plan.reduced[d])).collect();
    let rows = plan.out_shape.iter().product::<usize>();
    let x = x.permute(&perm)?.reshape(&[rows, plan.count])?;
    reduce_rows(exec, row_op, &x)?.reshape(&plan.out_shape)
}

/// Index of the largest element along `dim` as an I64 tensor (PyTorch `argmax`): ties go to
/// the first index, and NaN counts as larger than every number, so the first NaN wins.
/// Errors: `UnsupportedDType`, `DimOutOfRange`, `InvalidArgument` (empty dimension).
pub fn argmax(x: &Tensor, dim: usize, keepdim: bool) -> Result<Tensor> {
    let plan = Plan::new("argmax", x, &[dim], keepdim, true)?;
    let data = plan.rows("argmax", x)?;
    let out = reduce_rows(&data, plan.count, &plan.out_shape, |row| {
        let (index, _) = fold_long(
            row,
            |offset, c| {
                let (i, v) = argmax_row(c);
                (offset + i, v)
            },
            |a, b| if beats(b.1, a.1) { b } else { a },
        );
        index as i64
    });
    Tensor::from_vec(out, &plan.out_shape)
}

/// Per column, the f64 sum of `count` rows of `data` (row-major): each row is added to the
/// accumulators in turn, instead of gathering the columns into rows by a transposed copy.
fn leading_sums(data: &[f32], count: usize) -> Vec<f64> {
    let width = data.len() / count;
    let mut sums = vec![0f64; width];
    for row in data.chunks_exact(width) {
        sums.iter_mut().zip(row).for_each(|(s, &v)| *s += f64::from(v));
    }
    sums
}

/// Folds consecutive `count`-element rows of `data` into one output element each, rows in
/// parallel when there are many.
fn reduce_rows<T: Send + Default + Clone>(
    data: &[f32],
    count: usize,
    out_shape: &[usize],
    f: impl Fn(&[f32]) -> T + Sync + Send,
) -> Vec<T> {
    let mut out = vec![T::default(); out_shape.iter().product()];
    for_row_blocks(&mut out, 1, count + 1, |start, block| {
        for (i, o) in block.iter_mut().enumerate() {
            *o = f(&data[(start + i) * count..][..count]);
        }
    });
    out
}

/// Folds one row with `kernel(offset_in_row, chunk)` and an associative, order-preserving
/// `combine`, splitting it over the rayon pool when the row alone is long enough to keep
/// several cores busy (e.g. a full reduction of a large tensor).
fn fold_long<T: Send>(
    row: &[f32],
    kernel: impl Fn(usize, &[f32]) -> T + Sync + Send,
    combine: impl Fn(T, T) -> T + Sync + Send,
) -> T {
    if row.len() <= 2 * TASK_WORK {
        return kernel(0, row);
    }
    row.par_chunks(TASK_WORK)
        .enumerate()
        .map(|(i, chunk)| kernel(i * TASK_WORK, chunk))
        .reduce_with(combine)
        // Only reached for an empty iterator, which a row this long never gives.
        .unwrap_or_else(|| kernel(0, row))
}

/// Independent accumulators per call of the row kernels: with no loop-carried dependency
/// between lanes the compiler can keep them in vector registers.
const LANES: usize = 8;

/// Folds `xs` into `LANES` interleaved accumulators with `step`, then merges them.
fn fold_lanes<A: Copy>(xs: &[f32], init: A, step: impl Fn(A, f32) -> A, merge: impl Fn(A, A) -> A) -> A {
    let (chunks, tail) = xs.as_chunks::<LANES>();
    let mut acc = [init; LANES];
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = step(*a, x);
        }
    }
    let tail = tail.iter().fold(init, |a, &x| step(a, x));
    acc.into_iter().fold(tail, merge)
}

/// Σ f(x) over `xs`, accumulated in f64: the summation order then moves the result by far
/// less than an f32 ulp.
pub(crate) fn sum_map(xs: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    fold_lanes(xs, 0.0, |a, x| a + f(x), |a, b| a + b)
}

/// Maximum of `xs`; NaN if any element is NaN; -inf for an empty slice.
pub(crate) fn max_nan(xs: &[f32]) -> f32 {
    fold_lanes(xs, f32::NEG_INFINITY, nan_max, nan_max)
}

fn min_nan(xs: &[f32]) -> f32 {
    fold_lanes(xs, f32::INFINITY, nan_min, nan_min)
}

/// max with NaN propagation (f32::max drops NaN): once the accumulator is NaN it stays.
fn nan_max(acc: f32, x: f32) -> f32 {
    if x > acc || x.is_nan() { x } else { acc }
}

fn nan_min(acc: f32, x: f32) -> f32 {
    if x < acc || x.is_nan() { x } else { acc }
}

/// Whether `x` replaces `best` as argmax: strictly larger, or the first NaN.
fn beats(x: f32, best: f32) -> bool {
    x > best || (x.is_nan() && !best.is_nan())
}

fn argmax_row(xs: &[f32]) -> (usize, f32) {
    xs.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if beats(x, best.1) { (i, x) } else { best })
}

/// Sum of squared deviations → variance, NaN when the divisor count - correction is not positive.
fn variance_from(squares: f64, count: usize, unbiased: bool) -> f64 {
    let divisor = count as f64 - f64::from(u8::from(unbiased));
    if divisor > 0.0 { squares / divisor } else { f64::NAN }
}

/// Plain implementations: each input element is routed (by its multi-index) to the list of
/// its output element, and every list is reduced with f64 arithmetic.
pub mod reference {
    use infinity_runtime::{Result, Tensor};

    use super::{Plan, ReduceOp, variance_from};
    use crate::elementwise::reference::{ravel, unravel};

    named_reductions!();

    /// Reference of [`super::reduce`].
    pub fn reduce(op: ReduceOp, x: &Tensor, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let plan = Plan::new(op.name(), x, dims, keepdim, op.needs_elements())?;
        let out = groups(x, &plan)?
            .into_iter()
            .map(|g| {
                let n = g.len() as f64;
                let mean = g.iter().sum::<f64>() / n;
                let value = match op {
                    ReduceOp::Sum => g.iter().sum(),
                    ReduceOp::Mean => mean,
                    ReduceOp::Max if g.iter().any(|v| v.is_nan()) => f64::NAN,
                    ReduceOp::Max => g.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    ReduceOp::Min if g.iter().any(|v| v.is_nan()) => f64::NAN,
                    ReduceOp::Min => g.iter().copied().fold(f64::INFINITY, f64::min),
                    ReduceOp::Variance { unbiased } => {
                        variance_from(g.iter().map(|v| (v - mean).powi(2)).sum(), g.len(), unbiased)
                    }
                };
                value as f32
            })
            .collect();
        Tensor::from_vec(out, &plan.out_shape)
    }

    /// Reference of [`super::argmax`].
    pub fn argmax(x: &Tensor, dim: usize, keepdim: bool) -> Result<Tensor> {
        let plan = Plan::new("argmax", x, &[dim], keepdim, true)?;
        // Lists hold the elements in increasing index along `dim`, so positions are indices.
        let out = groups(x, &plan)?
            .into_iter()
            .map(|g| {
                let first_nan = g.iter().position(|v| v.is_nan());
                let largest = g.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                first_nan.or_else(|| g.iter().position(|&v| v == largest)).unwrap_or(0) as i64
            })
            .collect();
        Tensor::from_vec(out, &plan.out_shape)
    }

    /// The elements of `x` grouped by output element (in row-major output order).
    fn groups(x: &Tensor, plan: &Plan) -> Result<Vec<Vec<f64>>> {
        let shape = x.shape();
        let kept_shape: Vec<usize> = shape.iter().zip(&plan.reduced).map(|(&n, &r)| if r { 1 } else { n }).collect();
        let mut groups = vec![Vec::new(); kept_shape.iter().product()];
        for (flat, v) in x.to_vec::<f32>()?.into_iter().enumerate() {
            let mut idx = unravel(flat, shape);
            for (i, &r) in idx.iter_mut().zip(&plan.reduced) {
                if r {
                    *i = 0;
                }
            }
            groups[ravel(&idx, &kept_shape)].push(f64::from(v));
        }
        Ok(groups)
    }
}
