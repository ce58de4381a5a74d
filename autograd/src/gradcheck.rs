//! Finite-difference gradient checking: compares the gradients a backward pass produces
//! with central differences of the forward, element by element.
//!
//! The function under test maps leaf `Var`s to an output of any shape. A fixed random
//! projection r (standard normals) turns it into the scalar φ(x) = Σ r·f(x), summed in f64;
//! the analytic gradient is the vector-Jacobian product with r (`Tape::backward_with_grad`),
//! so no other backward rule takes part in a check.
//!
//! Numeric derivative: central differences D(h) = (φ(x+h) − φ(x−h)) / (x₊ − x₋) over the f32
//! inputs x₊, x₋ actually formed, at steps h and h/2, combined by Richardson extrapolation
//! (4·D(h/2) − D(h)) / 3, which cancels the h² truncation term and leaves O(h⁴).
//!
//! Tolerance rule: the forward runs in f32, so each output carries a rounding error of a few
//! ε·|y| (ε = f32 machine epsilon), and φ one of up to κ·ε·M with M = Σ|r·y|. Differencing
//! divides that by the step: after extrapolation the numeric derivative is within 3κ·ε·M/h of
//! the exact one. The analytic gradient, itself computed in f32, must agree within
//!     |numeric − analytic| ≤ `noise`·ε·M/h + `rtol`·|analytic|
//! with `noise` = 3κ (κ = 8 by default: a few roundings per op, plus the inputs' rounding)
//! and `rtol` = 1e-4 covering the analytic side's f32 rounding and the O(h⁴) residue. The
//! rule assumes smooth functions near the inputs (no kink within h) and intermediate values
//! no larger in magnitude than the outputs; for sums of products, whose terms can cancel, M
//! is taken at the inputs' absolute values instead (`magnitude_of_terms`), where no term
//! cancels another.

use std::fmt;

use infinity_ops::elementwise::abs;
use infinity_runtime::rng::Philox;
use infinity_runtime::{Result, Tensor};

use crate::{Tape, Var};

/// Settings of a check; see the module header for the rule they parameterise.
#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    /// The larger finite-difference step h (inputs should be of order one).
    pub step: f64,
    /// Multiple of ε·M/h allowed for the forward's rounding noise.
    pub noise: f64,
    /// Relative tolerance on the analytic gradient.
    pub rtol: f64,
    /// Seed of the random projection.
    pub seed: u64,
    /// Takes M from `f` at the inputs' absolute values instead of at the inputs: for sums of
    /// products (matmul, linear, conv), whose terms may cancel to an output far smaller than
    /// themselves while each still rounds at its own size.
    pub magnitude_of_terms: bool,
}

impl Default for GradCheck {
    fn default() -> Self {
        // h = 2⁻⁷: small against inputs of order one (the O(h⁴) residue is ~1e-9), large
        // enough that the forward's f32 noise divided by it stays far below the gradients.
        GradCheck { step: 1.0 / 128.0, noise: 24.0, rtol: 1e-4, seed: 0x6772_6164, magnitude_of_terms: false }
    }
}

/// One compared gradient element.
#[derive(Clone, Copy, Debug)]
pub struct Comparison {
    /// Which input (position in the slice given to `check`).
    pub input: usize,
    /// Row-major element index in that input.
    pub index: usize,
    pub analytic: f64,
    pub numeric: f64,
    /// The allowed |numeric − analytic|.
    pub bound: f64,
}

impl Comparison {
    /// |numeric − analytic| / bound: at most 1 for a pass (0 for exact agreement, even
    /// where the bound is 0 because the output is identically zero).
    pub fn ratio(&self) -> f64 {
        let diff = (self.numeric - self.analytic).abs();
        if diff == 0.0 { 0.0 } else { diff / self.bound }
    }
}

/// The outcome of a check: the element closest to (or furthest past) its bound.
#[derive(Clone, Copy, Debug)]
pub struct GradReport {
    pub worst: Option<Comparison>,
}

impl GradReport {
    pub fn passed(&self) -> bool {
        self.worst.is_none_or(|c| c.ratio() <= 1.0)
    }
}

impl fmt::Display for GradReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.worst {
            None => f.write_str("no gradient elements"),
            Some(c) => write!(
                f,
                "input {} element {}: analytic {:e}, numeric {:e}, |diff| {:e} vs bound {:e} (ratio {:.3})",
                c.input,
                c.index,
                c.analytic,
                c.numeric,
                (c.numeric - c.analytic).abs(),
                c.bound,
                c.ratio()
            ),
        }
    }
}

impl GradCheck {
    /// Checks the gradients of `f` with respect to every tensor of `inputs` (f32, any layout:
    /// the analytic pass sees them as given, the numeric one as perturbed contiguous copies).
    /// Errors come from `f` itself, or from `backward` when its output depends on no input.
    pub fn check(&self, f: impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor]) -> Result<GradReport> {
        let tape = Tape::new();
        let leaves = inputs.iter().map(|t| tape.leaf(t.clone())).collect::<Result<Vec<_>>>()?;
        let out = f(&leaves)?;
        let r = Philox::new(self.seed).normal(out.value().numel());
        let projection = Tensor::from_vec(r.clone(), out.shape())?;
        let mut grads = tape.backward_with_grad(&out, projection)?;
        let r: Vec<f64> = r.into_iter().map(f64::from).collect();

        // φ and M = Σ|r·y| of `f` evaluated on constants.
        let phi = |values: &[Tensor]| -> Result<(f64, f64)> {
            let vars: Vec<Var> = values.iter().cloned().map(Var::constant).collect();
            let y = f(&vars)?.into_value().to_f32_vec()?;
            Ok(y.iter()
                .zip(&r)
                .fold((0.0, 0.0), |(s, m), (&y, &r)| (s + r * f64::from(y), m + (r * f64::from(y)).abs())))
        };
        let mut values: Vec<Tensor> = inputs.iter().map(Tensor::contiguous).collect::<Result<_>>()?;
        let (_, magnitude) = if self.magnitude_of_terms {
            phi(&values.iter().map(abs).collect::<Result<Vec<_>>>()?)?
        } else {
            phi(&values)?
        };
        let noise = self.noise * f64::from(f32::EPSILON) * magnitude / self.step;

        let mut worst: Option<Comparison> = None;
        for (input, leaf) in leaves.iter().enumerate() {
            let analytic = match grads.take(leaf) {
                Some(g) => g.to_f32_vec()?,
                None => vec![0.0; leaf.value().numel()],
            };
            let base = values[input].to_vec::<f32>()?;
            let shape = values[input].shape().to_vec();
            for (index, &a) in analytic.iter().enumerate() {
                // D(h): the central difference over the f32 points actually formed.
                let mut difference = |h: f64| -> Result<f64> {
                    let x = f64::from(base[index]);
                    let (plus, minus) = ((x + h) as f32, (x - h) as f32);
                    let mut eval = |v: f32| -> Result<f64> {
                        let mut data = base.clone();
                        data[index] = v;
                        values[input] = Tensor::from_vec(data, &shape)?;
                        Ok(phi(&values)?.0)
                    };
                    let (up, down) = (eval(plus)?, eval(minus)?);
                    Ok((up - down) / (f64::from(plus) - f64::from(minus)))
                };
                let (coarse, fine) = (difference(self.step)?, difference(self.step / 2.0)?);
                let numeric = (4.0 * fine - coarse) / 3.0;
                let analytic = f64::from(a);
                let c = Comparison { input, index, analytic, numeric, bound: noise + self.rtol * analytic.abs() };
                if worst.is_none_or(|w| c.ratio() > w.ratio() || c.ratio().is_nan()) {
                    worst = Some(c);
                }
            }
            values[input] = Tensor::from_vec(base, &shape)?;
        }
        Ok(GradReport { worst })
    }
}
