//! Elementwise ops on `Var`s with their backward rules: broadcast arithmetic (the adjoint of
//! broadcasting sums over the replicated dimensions), the scalar forms and every unary
//! function of `infinity_ops::elementwise`. Names and signatures mirror that module.

use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_SQRT_PI};

use infinity_ops::elementwise::{self as ew, BinaryOp, UnaryOp};
use infinity_runtime::{DType, Result, Tensor};

use crate::Var;
use crate::util::{sum_to_shape, zip_map};

/// `a op b` with NumPy broadcasting.
pub fn binary(op: BinaryOp, a: &Var, b: &Var) -> Result<Var> {
    let value = ew::binary(op, a.value(), b.value())?;
    let shapes = (a.shape().to_vec(), b.shape().to_vec());
    let name = op.name();
    // Each rule keeps alive only what it reads.
    match op {
        BinaryOp::Add => Var::record(name, &[a, b], value, move |g, needs| {
            operand_grads(needs, &shapes, || Ok(g.clone()), || Ok(g.clone()))
        }),
        BinaryOp::Sub => Var::record(name, &[a, b], value, move |g, needs| {
            operand_grads(needs, &shapes, || Ok(g.clone()), || ew::neg(g))
        }),
        BinaryOp::Mul => {
            let (av, bv) = (a.value().clone(), b.value().clone());
            Var::record(name, &[a, b], value, move |g, needs| {
                operand_grads(needs, &shapes, || ew::mul(g, &bv), || ew::mul(g, &av))
            })
        }
        BinaryOp::Div => {
            let (bv, out) = (b.value().clone(), value.clone());
            Var::record(name, &[a, b], value, move |g, needs| {
                // d(a/b)/db = -(a/b)/b: the output stands in for a, already broadcast.
                let gb = || zip_map(name, [g, &out, &bv.broadcast_to(g.shape())?], |[g, y, b]| -g * y / b);
                operand_grads(needs, &shapes, || ew::div(g, &bv), gb)
            })
        }
    }
}

/// The two operand gradients of a broadcast binary op, each computed only when its operand
/// is tracked and then summed back to that operand's shape.
fn operand_grads(
    needs: &[bool],
    (sa, sb): &(Vec<usize>, Vec<usize>),
    ga: impl FnOnce() -> Result<Tensor>,
    gb: impl FnOnce() -> Result<Tensor>,
) -> Result<Vec<Option<Tensor>>> {
    let ga = needs[0].then(|| sum_to_shape(&ga()?, sa)).transpose()?;
    let gb = needs[1].then(|| sum_to_shape(&gb()?, sb)).transpose()?;
    Ok(vec![ga, gb])
}

/// Applies `op` to every element.
pub fn unary(op: UnaryOp, x: &Var) -> Result<Var> {
    let value = ew::unary(op, x.value())?;
    // Both views are kept, whichever the rule reads: in a network the activation it does not
    // read is the neighbouring op's saved input or output anyway.
    let (xv, out) = (x.value().clone(), value.clone());
    Var::record(op.name(), &[x], value, move |g, _| Ok(vec![Some(unary_backward(op, g, &xv, &out)?)]))
}

/// The input gradient of `y = op(x)` for output gradient `g`.
fn unary_backward(op: UnaryOp, g: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let name = op.name();
    // f64 derivative of an input element (for rules that read only x).
    let by_x = |f: fn(f64) -> f64| zip_map(name, [g, x], |[g, x]| (f64::from(g) * f(f64::from(x))) as f32);
    match op {
        UnaryOp::Exp => ew::mul(g, y),
        UnaryOp::Log => ew::div(g, x),
        UnaryOp::Tanh => zip_map(name, [g, y], |[g, y]| g * (1.0 - y * y)),
        UnaryOp::Sigmoid => zip_map(name, [g, y], |[g, y]| g * y * (1.0 - y)),
        UnaryOp::Silu => by_x(|x| {
            let s = logistic(x);
            s * (1.0 + x * (1.0 - s))
        }),
        UnaryOp::GeluTanh => by_x(|x| {
            // y = x·σ(2u), u = k(x + c x³): y' = σ(2u) + 2x·σ(2u)(1 − σ(2u))·k(1 + 3c x²).
            const K: f64 = FRAC_2_SQRT_PI * FRAC_1_SQRT_2;
            const C: f64 = 0.044715;
            let s = logistic(2.0 * K * (x + C * x * x * x));
            s + 2.0 * x * s * (1.0 - s) * K * (1.0 + 3.0 * C * x * x)
        }),
        UnaryOp::GeluErf => {
            // y' = Φ(x) + x·φ(x); Φ(x) = (1 + erf(x/√2))/2 comes from the erf op.
            let erf = ew::erf(&ew::mul_scalar(x, FRAC_1_SQRT_2 as f32)?)?;
            zip_map(name, [g, x, &erf], |[g, x, e]| {
                let (x, e) = (f64::from(x), f64::from(e));
                let density = (-0.5 * x * x).exp() * FRAC_2_SQRT_PI * FRAC_1_SQRT_2 * 0.5;
                (f64::from(g) * (0.5 * (1.0 + e) + x * density)) as f32
            })
        }
        UnaryOp::Erf => by_x(|x| FRAC_2_SQRT_PI * (-x * x).exp()),
        // Piecewise constant: zero almost everywhere (PyTorch's convention at 0 too).
        UnaryOp::Sign => Ok(Tensor::zeros(x.shape(), DType::F32)),
        UnaryOp::Neg => ew::neg(g),
        UnaryOp::Abs => zip_map(name, [g, x], |[g, x]| {
            if x > 0.0 {
                g
            } else if x < 0.0 {
                -g
            } else {
                0.0
            }
        }),
        UnaryOp::Sqrt => zip_map(name, [g, y], |[g, y]| g / (2.0 * y)),
        UnaryOp::Square => zip_map(name, [g, x], |[g, x]| 2.0 * x * g),
        // PyTorch passes the gradient where lo <= x <= hi (bounds included).
        UnaryOp::Clamp { lo, hi } => zip_map(name, [g, x], |[g, x]| if x >= lo && x <= hi { g } else { 0.0 }),
        UnaryOp::Scalar(BinaryOp::Add | BinaryOp::Sub, _) => Ok(g.clone()),
        UnaryOp::Scalar(BinaryOp::Mul, s) => ew::mul_scalar(g, s),
        UnaryOp::Scalar(BinaryOp::Div, s) => ew::div_scalar(g, s),
        UnaryOp::Affine { mul, .. } => ew::mul_scalar(g, mul),
    }
}

fn logistic(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `a + b` with NumPy broadcasting.
pub fn add(a: &Var, b: &Var) -> Result<Var> {
    binary(BinaryOp::Add, a, b)
}

/// `a - b` with NumPy broadcasting.
pub fn sub(a: &Var, b: &Var) -> Result<Var> {
    binary(BinaryOp::Sub, a, b)
}

/// `a * b` with NumPy broadcasting.
pub fn mul(a: &Var, b: &Var) -> Result<Var> {
    binary(BinaryOp::Mul, a, b)
}

/// `a / b` with NumPy broadcasting.
pub fn div(a: &Var, b: &Var) -> Result<Var> {
    binary(BinaryOp::Div, a, b)
}

/// `x * mul + add` in one pass.
pub fn affine(x: &Var, mul: f32, add: f32) -> Result<Var> {
    unary(UnaryOp::Affine { mul, add }, x)
}

/// min(max(x, lo), hi); the gradient passes where lo <= x <= hi.
pub fn clamp(x: &Var, lo: f32, hi: f32) -> Result<Var> {
    unary(UnaryOp::Clamp { lo, hi }, x)
}

/// Expands to one wrapper per scalar form: `name(x, s) = x op s`.
macro_rules! scalar_fns {
    ($($name:ident => $op:ident $symbol:literal),* $(,)?) => {$(
        #[doc = concat!("`x ", $symbol, " s` for a scalar `s`.")]
        pub fn $name(x: &Var, s: f32) -> Result<Var> {
            unary(UnaryOp::Scalar(BinaryOp::$op, s), x)
        }
    )*};
}

scalar_fns!(add_scalar => Add "+", sub_scalar => Sub "-", mul_scalar => Mul "*", div_scalar => Div "/");

/// Expands to one wrapper per parameterless unary op.
macro_rules! unary_fns {
    ($($name:ident => $op:ident),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "` of every element (see [`UnaryOp::", stringify!($op), "`]).")]
        pub fn $name(x: &Var) -> Result<Var> {
            unary(UnaryOp::$op, x)
        }
    )*};
}

unary_fns!(
    exp => Exp,
    log => Log,
    tanh => Tanh,
    sigmoid => Sigmoid,
    gelu_tanh => GeluTanh,
    gelu_erf => GeluErf,
    erf => Erf,
    silu => Silu,
    sign => Sign,
    neg => Neg,
    abs => Abs,
    sqrt => Sqrt,
    square => Square,
);
