//! Elementwise ops: broadcast binary arithmetic (`add`, `sub`, `mul`, `div`), scalar forms,
//! and unary math (`exp`, `log`, `tanh`, `sigmoid`, the two GELUs, `erf`, `silu`, `sign`,
//! `neg`, `abs`, `sqrt`, `square`, `clamp`, `affine`), each a variant of one enum run by one
//! generic kernel.

use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

use infinity_runtime::layout::{broadcast_shapes, contiguous_strides};
use infinity_runtime::{DType, Error, Result, Tensor, recycle};

use infinity_cuda::elementwise::UnaryGrad;

use crate::device::{executor, no_kernel};
use crate::util::for_row_blocks;
use crate::vector_math;
use crate::{f32_data, zip_map};

/// The four arithmetic operators, shared by the broadcast and the scalar forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

/// One-input elementwise functions. Parameterised variants carry their constants.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Exp,
    /// Natural logarithm (NaN below 0, -inf at 0).
    Log,
    Tanh,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))), PyTorch's `gelu(approximate="tanh")`.
    GeluTanh,
    /// 0.5 x (1 + erf(x / √2)), PyTorch's exact `gelu`.
    GeluErf,
    /// The error function, within 3e-10 before the final rounding to f32 (see `ERFC_FIT`).
    Erf,
    /// x · sigmoid(x) (a.k.a. swish).
    Silu,
    /// -1, 0 or 1; like PyTorch, sign(±0) = 0 and sign(NaN) = 0 (pytorch/pytorch#41245).
    Sign,
    Neg,
    Abs,
    Sqrt,
    Square,
    /// min(max(x, lo), hi): all elements become `hi` when lo > hi, NaN stays NaN; NaN bounds are rejected.
    Clamp {
        lo: f32,
        hi: f32,
    },
    /// `x op s`, computed exactly as the broadcast op would with a scalar tensor `s`.
    Scalar(BinaryOp, f32),
    /// x · mul + add in one pass (two roundings, like the unfused PyTorch expression).
    Affine {
        mul: f32,
        add: f32,
    },
}

impl UnaryOp {
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::GeluErf => "gelu_erf",
            UnaryOp::Erf => "erf",
            UnaryOp::Silu => "silu",
            UnaryOp::Sign => "sign",
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Square => "square",
            UnaryOp::Clamp { .. } => "clamp",
            UnaryOp::Scalar(BinaryOp::Add, _) => "add_scalar",
            UnaryOp::Scalar(BinaryOp::Sub, _) => "sub_scalar",
            UnaryOp::Scalar(BinaryOp::Mul, _) => "mul_scalar",
            UnaryOp::Scalar(BinaryOp::Div, _) => "div_scalar",
            UnaryOp::Affine { .. } => "affine",
        }
    }

    /// Rejects parameters without a meaningful result (shared by the fast and reference paths).
    fn check(self, x: &Tensor) -> Result<()> {
        match self {
            UnaryOp::Clamp { lo, hi } if lo.is_nan() || hi.is_nan() => {
                Err(Error::invalid("clamp", x.shape(), format!("bounds must not be NaN (got {lo}, {hi})")))
            }
            _ => Ok(()),
        }
    }
}

/// Expands `$body` once per binary op with `$f` bound to that op's f32 closure, so that each
/// kernel is monomorphised (and vectorised) per op instead of branching per element.
macro_rules! with_binary_fn {
    ($op:expr, $f:ident => $body:expr) => {
        match $op {
            BinaryOp::Add => {
                let $f = |x: f32, y: f32| x + y;
                $body
            }
            BinaryOp::Sub => {
                let $f = |x: f32, y: f32| x - y;
                $body
            }
            BinaryOp::Mul => {
                let $f = |x: f32, y: f32| x * y;
                $body
            }
            BinaryOp::Div => {
                let $f = |x: f32, y: f32| x / y;
                $body
            }
        }
    };
}

/// The named wrappers over `binary` and `unary`, expanded both here and in `reference` so
/// that the two implementations offer the same signatures.
macro_rules! named_ops {
    () => {
        /// `a + b` with NumPy broadcasting.
        pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
            binary(BinaryOp::Add, a, b)
        }
        /// `a - b` with NumPy broadcasting.
        pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
            binary(BinaryOp::Sub, a, b)
        }
        /// `a * b` with NumPy broadcasting.
        pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
            binary(BinaryOp::Mul, a, b)
        }
        /// `a / b` with NumPy broadcasting (IEEE: x/0 = ±inf, 0/0 = NaN).
        pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
            binary(BinaryOp::Div, a, b)
        }
        /// `x + s`.
        pub fn add_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
            unary(UnaryOp::Scalar(BinaryOp::Add, s), x)
        }
        /// `x - s`.
        pub fn sub_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
            unary(UnaryOp::Scalar(BinaryOp::Sub, s), x)
        }
        /// `x * s`.
        pub fn mul_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
            unary(UnaryOp::Scalar(BinaryOp::Mul, s), x)
        }
        /// `x / s` (a true division, not a multiplication by 1/s).
        pub fn div_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
            unary(UnaryOp::Scalar(BinaryOp::Div, s), x)
        }
        /// `x * mul + add` in one pass.
        pub fn affine(x: &Tensor, mul: f32, add: f32) -> Result<Tensor> {
            unary(UnaryOp::Affine { mul, add }, x)
        }
        /// min(max(x, lo), hi) (PyTorch `clamp`; see [`UnaryOp::Clamp`]).
        pub fn clamp(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
            unary(UnaryOp::Clamp { lo, hi }, x)
        }
        /// e^x.
        pub fn exp(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::Exp, x)
        }
        /// Natural logarithm.
        pub fn log(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::Log, x)
        }
        /// Hyperbolic tangent.
        pub fn tanh(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::Tanh, x)
        }
        /// 1 / (1 + e^-x).
        pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::Sigmoid, x)
        }
        /// GELU with the tanh approximation (Infinity's transformer FFN).
        pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::GeluTanh, x)
        }
        /// Exact GELU, 0.5 x (1 + erf(x / √2)).
        pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::GeluErf, x)
        }
        /// The error function.
        pub fn erf(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::Erf, x)
        }
        /// x · sigmoid(x) (the BitVAE's swish).
        pub fn silu(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::Silu, x)
        }
        /// -1, 0 or 1 (sign(0) = 0, sign(NaN) = 0 as in PyTorch).
        pub fn sign(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::Sign, x)
        }
        /// -x.
        pub fn neg(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::Neg, x)
        }
        /// |x|.
        pub fn abs(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::Abs, x)
        }
        /// √x (NaN below 0).
        pub fn sqrt(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::Sqrt, x)
        }
        /// x².
        pub fn square(x: &Tensor) -> Result<Tensor> {
            unary(UnaryOp::Square, x)
        }
    };
}

named_ops!();

/// The input gradient of y = op(x) for the output gradient g: the backward rule of [`unary`],
/// formed from x or y, whichever the derivative reads. Rules that are other ops run wherever
/// those do; the pointwise derivatives are one kernel on an executor, in f32 (the CPU forms
/// those of x in f64), except erf's, the exact GELU's and abs's, which have none yet.
pub fn unary_grad(op: UnaryOp, g: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let name = op.name();
    // g·f′(x) with f′ in f64.
    let by_x =
        |kernel, f: fn(f64) -> f64| pointwise(name, g, x, kernel, move |g, x| (f64::from(g) * f(f64::from(x))) as f32);
    match op {
        UnaryOp::Exp => mul(g, y),
        UnaryOp::Log => div(g, x),
        UnaryOp::Neg => neg(g),
        // Piecewise constant: zero almost everywhere (PyTorch's convention at 0 too).
        UnaryOp::Sign => Tensor::zeros_on(x.shape(), DType::F32, &x.device()),
        UnaryOp::Scalar(BinaryOp::Add | BinaryOp::Sub, _) => Ok(g.clone()),
        UnaryOp::Scalar(BinaryOp::Mul, s) => mul_scalar(g, s),
        UnaryOp::Scalar(BinaryOp::Div, s) => div_scalar(g, s),
        UnaryOp::Affine { mul, .. } => mul_scalar(g, mul),
        UnaryOp::Tanh => pointwise(name, g, y, Some(UnaryGrad::Tanh), |g, y| g * (1.0 - y * y)),
        UnaryOp::Sigmoid => pointwise(name, g, y, Some(UnaryGrad::Sigmoid), |g, y| g * y * (1.0 - y)),
        UnaryOp::Sqrt => pointwise(name, g, y, Some(UnaryGrad::Sqrt), |g, y| g / (2.0 * y)),
        UnaryOp::Square => pointwise(name, g, x, Some(UnaryGrad::Square), |g, x| 2.0 * x * g),
        // PyTorch passes the gradient where lo <= x <= hi (bounds included).
        UnaryOp::Clamp { lo, hi } => {
            pointwise(
                name,
                g,
                x,
                Some(UnaryGrad::Clamp { lo, hi }),
                move |g, x| if x >= lo && x <= hi { g } else { 0.0 },
            )
        }
        UnaryOp::Abs => pointwise(name, g, x, Some(UnaryGrad::Abs), |g, x| {
            if x > 0.0 {
                g
            } else if x < 0.0 {
                -g
            } else {
                0.0
            }
        }),
        UnaryOp::Silu => by_x(Some(UnaryGrad::Silu), |x| {
            let s = logistic(x);
            s * (1.0 + x * (1.0 - s))
        }),
        UnaryOp::GeluTanh => by_x(Some(UnaryGrad::GeluTanh), |x| {
            // y = x·σ(2u), u = k(x + c x³): y' = σ(2u) + 2x·σ(2u)(1 − σ(2u))·k(1 + 3c x²).
            const K: f64 = FRAC_2_SQRT_PI * FRAC_1_SQRT_2;
            const C: f64 = 0.044715;
            let s = logistic(2.0 * K * (x + C * x * x * x));
            s + 2.0 * x * s * (1.0 - s) * K * (1.0 + 3.0 * C * x * x)
        }),
        UnaryOp::Erf => by_x(None, |x| FRAC_2_SQRT_PI * (-x * x).exp()),
        UnaryOp::GeluErf => {
            if !x.is_cpu() {
                return Err(no_kernel(name, x));
            }
            // y' = Φ(x) + x·φ(x); Φ(x) = (1 + erf(x/√2))/2 comes from the erf op.
            let erf = erf(&mul_scalar(x, FRAC_1_SQRT_2 as f32)?)?;
            zip_map(name, [g, x, &erf], |[g, x, e]| {
                let (x, e) = (f64::from(x), f64::from(e));
                let density = (-0.5 * x * x).exp() * FRAC_2_SQRT_PI * FRAC_1_SQRT_2 * 0.5;
                (f64::from(g) * (0.5 * (1.0 + e) + x * density)) as f32
            })
        }
    }
}

/// `f(g, v)` of every element: on the CPU the closure, on an executor `kernel` (its f32
/// form), or an error naming the op when it has none.
fn pointwise(
    name: &'static str,
    g: &Tensor,
    v: &Tensor,
    kernel: Option<UnaryGrad>,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Tensor> {
    match executor(name, &[g, v])? {
        None => zip_map(name, [g, v], |[g, v]| f(g, v)),
        Some(exec) => match kernel {
            Some(kernel) => infinity_cuda::elementwise::unary_grad(&exec, kernel, g, v),
            None => Err(no_kernel(name, v)),
        },
    }
}

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `a op b` with NumPy broadcasting. Inputs are f32 with any layout; the output is contiguous
/// with the broadcast shape. Errors: `UnsupportedDType`, `ShapeMismatch` (not broadcastable).
pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = op.name();
    if let Some(exec) = executor(name, &[a, b])? {
        crate::require_f32(name, a)?;
        use infinity_cuda::elementwise::BinaryOp as Kernel;
        let kernel = match op {
            BinaryOp::Add => Kernel::Add,
            BinaryOp::Sub => Kernel::Sub,
            BinaryOp::Mul => Kernel::Mul,
            BinaryOp::Div => Kernel::Div,
        };
        return infinity_cuda::elementwise::binary(&exec, kernel, a, b);
    }
    let (ad, bd) = (f32_data(name, a)?, f32_data(name, b)?);
    let shape = broadcast_shapes(name, a.shape(), b.shape())?;
    let plan = BroadcastPlan::new(&shape, a.shape(), b.shape());
    let mut out = recycle::for_overwrite(shape.iter().product());
    let (n, sa, sb) = plan.inner;
    with_binary_fn!(op, f => for_row_blocks(&mut out, n, 3 * n, |start, block| {
        for (r, row) in block.chunks_mut(n).enumerate() {
            let (oa, ob) = plan.row_offsets(start + r);
            zip_row(f, row, &ad[oa..], sa, &bd[ob..], sb);
        }
    }));
    Tensor::from_vec(out, &shape)
}

/// `out[i] = f(a[i * sa], b[i * sb])`, with the unit-stride and broadcast (stride 0) cases
/// spelled out so that they vectorise.
#[inline(always)]
fn zip_row(f: impl Fn(f32, f32) -> f32, out: &mut [f32], a: &[f32], sa: usize, b: &[f32], sb: usize) {
    match (sa, sb) {
        (1, 1) => out.iter_mut().zip(a).zip(b).for_each(|((o, &x), &y)| *o = f(x, y)),
        (1, 0) => {
            let y = b[0];
            out.iter_mut().zip(a).for_each(|(o, &x)| *o = f(x, y));
        }
        (0, 1) => {
            let x = a[0];
            out.iter_mut().zip(b).for_each(|(o, &y)| *o = f(x, y));
        }
        _ => out.iter_mut().enumerate().for_each(|(i, o)| *o = f(a[i * sa], b[i * sb])),
    }
}

/// How the output's elements map onto the two contiguous operands: dimensions of size 1 are
/// dropped and neighbours that step through both operands uniformly are merged, so that a
/// typical broadcast becomes a few long rows.
struct BroadcastPlan {
    /// (size, stride in a, stride in b) of the outer dimensions, outermost first.
    outer: Vec<(usize, usize, usize)>,
    /// The same for the innermost dimension, which is the row the kernel loops over.
    inner: (usize, usize, usize),
}

impl BroadcastPlan {
    fn new(shape: &[usize], a: &[usize], b: &[usize]) -> Self {
        let (sa, sb) = (broadcast_strides(shape, a), broadcast_strides(shape, b));
        let mut dims: Vec<(usize, usize, usize)> = Vec::new();
        for ((&n, &da), &db) in shape.iter().zip(&sa).zip(&sb) {
            match dims.last_mut() {
                _ if n == 1 => {}
                Some(last) if last.1 == da * n && last.2 == db * n => *last = (last.0 * n, da, db),
                _ => dims.push((n, da, db)),
            }
        }
        let inner = dims.pop().unwrap_or((1, 0, 0));
        BroadcastPlan { outer: dims, inner }
    }

    /// Offsets in a and b of the first element of output row `row`.
    fn row_offsets(&self, mut row: usize) -> (usize, usize) {
        let (mut oa, mut ob) = (0, 0);
        for &(n, sa, sb) in self.outer.iter().rev() {
            oa += (row % n) * sa;
            ob += (row % n) * sb;
            row /= n;
        }
        (oa, ob)
    }
}

/// Strides of a contiguous tensor of shape `own` viewed at the (right-aligned) broadcast
/// shape `shape`: 0 along the dimensions it is broadcast over.
fn broadcast_strides(shape: &[usize], own: &[usize]) -> Vec<usize> {
    let lead = shape.len() - own.len();
    let own_strides = contiguous_strides(own);
    (0..shape.len()).map(|d| if d < lead || own[d - lead] == 1 { 0 } else { own_strides[d - lead] }).collect()
}

/// Applies `op` to every element. Inputs are f32 with any layout; the output is contiguous.
/// Errors: `UnsupportedDType`, `InvalidArgument` (NaN clamp bounds).
pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    op.check(x)?;
    if let Some(exec) = executor(op.name(), &[x])? {
        use infinity_cuda::elementwise::UnaryOp as Kernel;
        let kernel = match op {
            UnaryOp::GeluTanh => Kernel::GeluTanh,
            UnaryOp::Silu => Kernel::Silu,
            UnaryOp::Exp => Kernel::Exp,
            UnaryOp::Tanh => Kernel::Tanh,
            UnaryOp::Sigmoid => Kernel::Sigmoid,
            UnaryOp::Sqrt => Kernel::Sqrt,
            UnaryOp::Square => Kernel::Square,
            UnaryOp::Log => Kernel::Log,
            UnaryOp::Abs => Kernel::Abs,
            UnaryOp::Sign => Kernel::Sign,
            UnaryOp::Clamp { lo, hi } => Kernel::Clamp { lo, hi },
            UnaryOp::Affine { mul, add } => Kernel::Affine { mul, add },
            // −x·1 + (−0) keeps the sign of a zero, as negation does.
            UnaryOp::Neg => Kernel::Affine { mul: -1.0, add: -0.0 },
            // x·1 + s and x·s + (−0) round as x + s and x·s do, signed zeros included.
            UnaryOp::Scalar(BinaryOp::Add, s) => Kernel::Affine { mul: 1.0, add: s },
            UnaryOp::Scalar(BinaryOp::Sub, s) => Kernel::Affine { mul: 1.0, add: -s },
            UnaryOp::Scalar(BinaryOp::Mul, s) => Kernel::Affine { mul: s, add: -0.0 },
            _ => return Err(no_kernel(op.name(), x)),
        };
        // bf16 activations (between two bf16 GEMMs) stay bf16.
        return infinity_cuda::elementwise::unary(&exec, kernel, x, x.dtype());
    }
    let data = f32_data(op.name(), x)?;
    let mut out = recycle::for_overwrite(data.len());
    match op {
        UnaryOp::Exp => map_into(&data, &mut out, vector_math::exp),
        UnaryOp::Log => map_into(&data, &mut out, f32::ln),
        UnaryOp::Tanh => map_into(&data, &mut out, f32::tanh),
        UnaryOp::Sigmoid => map_into(&data, &mut out, vector_math::sigmoid),
        // 0.5 (1 + tanh z) = sigmoid(2z): no cancellation for large negative x, where
        // 1 + tanh z would lose all relative precision.
        UnaryOp::GeluTanh => map_into(&data, &mut out, |x| {
            const TWO_K: f32 = (2.0 * FRAC_2_SQRT_PI * FRAC_1_SQRT_2) as f32;
            x * vector_math::sigmoid(TWO_K * (x + 0.044715 * x * x * x))
        }),
        // 1 + erf(-t) = erfc(t): relative accuracy in the negative tail.
        UnaryOp::GeluErf => map_into(&data, &mut out, |x| {
            let x = f64::from(x);
            (0.5 * x * erfc_f64(-x * FRAC_1_SQRT_2)) as f32
        }),
        UnaryOp::Erf => map_into(&data, &mut out, |x| erf_f64(f64::from(x)) as f32),
        UnaryOp::Silu => map_into(&data, &mut out, |x| x * vector_math::sigmoid(x)),
        UnaryOp::Sign => map_into(&data, &mut out, |x| f32::from(x > 0.0) - f32::from(x < 0.0)),
        UnaryOp::Neg => map_into(&data, &mut out, |x| -x),
        UnaryOp::Abs => map_into(&data, &mut out, f32::abs),
        UnaryOp::Sqrt => map_into(&data, &mut out, f32::sqrt),
        UnaryOp::Square => map_into(&data, &mut out, |x| x * x),
        UnaryOp::Clamp { lo, hi } => map_into(&data, &mut out, |x| {
            // Comparisons (not f32::max/min) so that NaN inputs stay NaN.
            let y = if x < lo { lo } else { x };
            if y > hi { hi } else { y }
        }),
        UnaryOp::Scalar(op, s) => with_binary_fn!(op, f => map_into(&data, &mut out, |x| f(x, s))),
        UnaryOp::Affine { mul, add } => map_into(&data, &mut out, |x| x * mul + add),
    }
    Tensor::from_vec(out, x.shape())
}

fn map_into(input: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync + Send) {
    for_row_blocks(out, 1, 2, |start, block| vector_math::map(&input[start..], block, &f));
}

/// erf(x)/x = Σ c_n x^(2n) with c_n = (2/√π) (-1)^n / (n! (2n + 1)), stored highest power
/// first. Ten terms reach 1e-14 relative accuracy for |x| < 0.5, where 1 - erfc(x) would
/// lose the leading digits.
const ERF_TAYLOR: [f64; 10] = {
    let mut c = [0.0; 10];
    let mut n_factorial = 1.0;
    let mut n = 0;
    while n < 10 {
        let sign = if n % 2 == 0 { 1.0 } else { -1.0 };
        c[9 - n] = FRAC_2_SQRT_PI * sign / (n_factorial * (2 * n + 1) as f64);
        n += 1;
        n_factorial *= n as f64;
    }
    c
};

/// erfc(x) = t · exp(-x² + R(t)) with t = 1 / (1 + x/2), for x ≥ 0.5. R is a degree-12
/// polynomial (highest power first) from a 40-digit least-squares Chebyshev fit (mpmath
/// `chebyfit`) of ln(erfc(x) / t) + x² over t ∈ [1/6, 1], i.e. x ∈ [0, 10]; the relative
/// error of erfc is below 2.6e-10 there. Beyond x = 10, erfc < 2.1e-45 is below any f32.
const ERFC_FIT: [f64; 13] = [
    0.19388128270414512,
    -1.4292314877977548,
    4.570752023643479,
    -8.201518207004172,
    8.928410930537526,
    -6.08126627567074,
    2.8582885124993496,
    -1.154821836093412,
    0.15979980307870043,
    0.04190885010290795,
    0.37960224393383923,
    0.999697379094175,
    -1.2655032187704547,
];

/// Σ c_i t^(n-1-i) for coefficients stored highest power first.
fn horner(coefficients: &[f64], t: f64) -> f64 {
    coefficients.iter().fold(0.0, |acc, &c| acc * t + c)
}

fn erf_taylor(x: f64) -> f64 {
    x * horner(&ERF_TAYLOR, x * x)
}

fn erfc_tail(x: f64) -> f64 {
    if x > 10.0 {
        return 0.0;
    }
    let t = 1.0 / (1.0 + 0.5 * x);
    t * (-x * x + horner(&ERFC_FIT, t)).exp()
}

fn erf_f64(x: f64) -> f64 {
    if x.abs() < 0.5 { erf_taylor(x) } else { (1.0 - erfc_tail(x.abs())).copysign(x) }
}

fn erfc_f64(x: f64) -> f64 {
    match x {
        _ if x.abs() < 0.5 => 1.0 - erf_taylor(x),
        _ if x > 0.0 => erfc_tail(x),
        _ => 2.0 - erfc_tail(-x),
    }
}

/// Plain implementations: one loop over the output elements (through multi-indices where
/// broadcasting maps them), math in f64, rounded to f32 once.
pub mod reference {
    use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

    use infinity_runtime::layout::broadcast_shapes;
    use infinity_runtime::{Result, Tensor};

    use super::{BinaryOp, UnaryOp};
    use crate::require_f32;

    named_ops!();

    /// Row-major multi-index of flat position `flat` in `shape`.
    pub(crate) fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = vec![0; shape.len()];
        for (i, &n) in idx.iter_mut().zip(shape).rev() {
            *i = flat % n;
            flat /= n;
        }
        idx
    }

    /// Row-major flat position of multi-index `idx` in `shape`.
    pub(crate) fn ravel(idx: &[usize], shape: &[usize]) -> usize {
        idx.iter().zip(shape).fold(0, |flat, (&i, &n)| flat * n + i)
    }

    /// Reference of [`super::binary`].
    pub fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let name = op.name();
        require_f32(name, a)?;
        require_f32(name, b)?;
        let shape = broadcast_shapes(name, a.shape(), b.shape())?;
        let (av, bv) = (a.to_vec::<f32>()?, b.to_vec::<f32>()?);
        // The operand element that broadcasting maps output index `idx` to.
        let source = |idx: &[usize], own: &[usize]| {
            let lead = idx.len() - own.len();
            let mapped: Vec<usize> =
                own.iter().enumerate().map(|(d, &n)| if n == 1 { 0 } else { idx[lead + d] }).collect();
            ravel(&mapped, own)
        };
        let out = (0..shape.iter().product())
            .map(|flat| {
                let idx = unravel(flat, &shape);
                let x = f64::from(av[source(&idx, a.shape())]);
                let y = f64::from(bv[source(&idx, b.shape())]);
                apply_binary(op, x, y) as f32
            })
            .collect();
        Tensor::from_vec(out, &shape)
    }

    fn apply_binary(op: BinaryOp, x: f64, y: f64) -> f64 {
        match op {
            BinaryOp::Add => x + y,
            BinaryOp::Sub => x - y,
            BinaryOp::Mul => x * y,
            BinaryOp::Div => x / y,
        }
    }

    /// Reference of [`super::unary`].
    pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
        op.check(x)?;
        require_f32(op.name(), x)?;
        let out = x.to_vec::<f32>()?.into_iter().map(|v| apply_unary(op, f64::from(v)) as f32).collect();
        Tensor::from_vec(out, x.shape())
    }

    fn apply_unary(op: UnaryOp, x: f64) -> f64 {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        match op {
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::GeluTanh => {
                let k = FRAC_2_SQRT_PI * FRAC_1_SQRT_2;
                0.5 * x * (1.0 + (k * (x + 0.044715 * x.powi(3))).tanh())
            }
            UnaryOp::GeluErf => 0.5 * x * (1.0 + erf_series(x * FRAC_1_SQRT_2)),
            UnaryOp::Erf => erf_series(x),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Sign => match x {
                _ if x > 0.0 => 1.0,
                _ if x < 0.0 => -1.0,
                _ => 0.0,
            },
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Square => x * x,
            UnaryOp::Clamp { lo, hi } => match x {
                _ if x.is_nan() => x,
                _ => x.max(f64::from(lo)).min(f64::from(hi)),
            },
            UnaryOp::Scalar(op, s) => apply_binary(op, x, f64::from(s)),
            UnaryOp::Affine { mul, add } => x * f64::from(mul) + f64::from(add),
        }
    }

    /// erf by its series of positive terms, which converges everywhere without cancellation:
    /// erf(x) = (2/√π) e^(-x²) Σ_{n≥0} 2ⁿ x^(2n+1) / (1·3·…·(2n+1)).
    /// |x| ≥ 6 gives ±1 (erfc(6) ≈ 2e-17 is below f64 resolution at 1).
    pub fn erf_series(x: f64) -> f64 {
        let a = x.abs();
        if a.is_nan() {
            return x;
        }
        if a >= 6.0 {
            return 1f64.copysign(x);
        }
        let (mut term, mut sum) = (a, 0.0);
        // Terms grow until n ≈ x² (≤ 36) and then shrink geometrically: 400 is ample.
        for n in 0..400 {
            sum += term;
            if term <= sum * 1e-17 {
                break;
            }
            term *= 2.0 * a * a / (2 * n + 3) as f64;
        }
        (FRAC_2_SQRT_PI * (-a * a).exp() * sum).copysign(x)
    }
}
