//! Elementwise ops on `Var`s with their backward rules: broadcast arithmetic (the adjoint of
//! broadcasting sums over the replicated dimensions), the scalar forms and every unary
//! function of `infinity_ops::elementwise`. Names and signatures mirror that module.

use infinity_ops::elementwise::{self as ew, BinaryOp, UnaryOp};
use infinity_runtime::{Result, Tensor};

use crate::Var;
use crate::util::sum_to_shape;

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
                let gb = || ew::div(&ew::mul(&ew::neg(g)?, &out)?, &bv);
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
    Var::record(op.name(), &[x], value, move |g, _| Ok(vec![Some(ew::unary_grad(op, g, &xv, &out)?)]))
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
