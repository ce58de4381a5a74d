//! Broadcast arithmetic, scalar forms and unary functions.

use infinity::autograd::elementwise as ew;
use infinity::ops::elementwise::{BinaryOp, UnaryOp};
use proptest::prelude::*;

use crate::support::{check, config, layout, randn, randn_map, shape};

/// A pair of broadcast-compatible shapes: `full`, and `full` with some dimensions set to 1
/// and some leading ones dropped; `swap` says which operand gets which.
fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (shape(3, 4), any::<u64>(), any::<bool>()).prop_map(|(full, bits, swap)| {
        let drop = (bits as usize) % (full.len() + 1);
        let small: Vec<usize> =
            full.iter().enumerate().skip(drop).map(|(d, &n)| if bits >> (8 + d) & 1 == 1 { 1 } else { n }).collect();
        // A rank-0 operand is not a broadcast case the models use; keep at least one dim.
        let small = if small.is_empty() { vec![1] } else { small };
        if swap { (small, full) } else { (full, small) }
    })
}

/// Values with magnitude in [0.5, 1.5) and random sign: safe divisors.
fn away_from_zero(v: f32) -> f32 {
    (0.5 + (v.abs() % 1.0)).copysign(v)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn binary_ops_with_broadcasting(
        (sa, sb) in broadcast_pair(),
        op in prop_oneof![Just(BinaryOp::Add), Just(BinaryOp::Sub), Just(BinaryOp::Mul), Just(BinaryOp::Div)],
        (la, lb) in (any::<u8>(), any::<u8>()),
        seed in any::<u64>(),
    ) {
        let a = layout(&randn(&sa, seed, 1.0), la);
        let b = layout(&randn_map(&sb, seed ^ 1, away_from_zero), lb);
        check(&[a, b], |v| ew::binary(op, &v[0], &v[1]));
    }

    #[test]
    fn scalar_forms(s in shape(3, 5), seed in any::<u64>(), c in 0.25f32..3.0, which in 0usize..5, l in any::<u8>()) {
        let x = layout(&randn(&s, seed, 1.0), l);
        check(&[x], |v| match which {
            0 => ew::add_scalar(&v[0], c),
            1 => ew::sub_scalar(&v[0], c),
            2 => ew::mul_scalar(&v[0], -c),
            3 => ew::div_scalar(&v[0], c),
            _ => ew::affine(&v[0], -c, c),
        });
    }

    #[test]
    fn smooth_unary_functions(s in shape(3, 5), seed in any::<u64>(), which in 0usize..10, l in any::<u8>()) {
        let (op, x) = match which {
            0 => (UnaryOp::Exp, randn(&s, seed, 1.0)),
            1 => (UnaryOp::Log, randn_map(&s, seed, |v| 0.3 + v.abs())),
            2 => (UnaryOp::Tanh, randn(&s, seed, 1.5)),
            3 => (UnaryOp::Sigmoid, randn(&s, seed, 2.0)),
            4 => (UnaryOp::Silu, randn(&s, seed, 2.0)),
            // Within ±3.5: further out 1 + erf (or 1 + tanh) cancels in the f32 forward, and a
            // finite difference of it is noise next to the (right) analytic gradient.
            5 => (UnaryOp::GeluTanh, randn_map(&s, seed, |v| (2.0 * v).clamp(-3.5, 3.5))),
            6 => (UnaryOp::GeluErf, randn_map(&s, seed, |v| (2.0 * v).clamp(-3.5, 3.5))),
            7 => (UnaryOp::Erf, randn(&s, seed, 1.0)),
            8 => (UnaryOp::Sqrt, randn_map(&s, seed, |v| 0.3 + v.abs())),
            _ => (UnaryOp::Square, randn(&s, seed, 1.0)),
        };
        check(&[layout(&x, l)], |v| ew::unary(op, &v[0]));
    }

    /// Functions with kinks or steps, evaluated at least 0.2 away from them (finite
    /// differences straddling a kink are meaningless).
    #[test]
    fn piecewise_unary_functions(s in shape(3, 5), seed in any::<u64>(), which in 0usize..4, l in any::<u8>()) {
        let (op, x) = match which {
            0 => (UnaryOp::Abs, randn_map(&s, seed, away_from_zero)),
            1 => (UnaryOp::Neg, randn(&s, seed, 1.0)),
            2 => (UnaryOp::Sign, randn_map(&s, seed, away_from_zero)),
            // Magnitudes in [0.2, 0.8) or [1.2, 1.8): inside and outside the bounds ±1.
            _ => (UnaryOp::Clamp { lo: -1.0, hi: 1.0 }, randn_map(&s, seed, |v| {
                let (a, frac) = (v.abs(), 0.6 * (v.abs() % 1.0));
                (if a % 2.0 < 1.0 { 0.2 + frac } else { 1.2 + frac }).copysign(v)
            })),
        };
        check(&[layout(&x, l)], |v| ew::unary(op, &v[0]));
    }
}
