//! Elementwise ops: the fast path against the f64 reference for every unary op and the four
//! broadcast binary ops (both operand orders, different ranks, size-1 dimensions), layout
//! invariance, hand-checked values, erf accuracy and argument errors.
//!
//! Tolerance rule: IEEE-exact ops (+ - × ÷, √, neg, abs, square, sign, clamp, scalar forms)
//! must equal the reference bit for bit, because one correctly rounded f32 operation equals
//! the f64 result rounded to f32 (double rounding is harmless for these since 53 ≥ 2·24 + 2).
//! Transcendental ops and `affine` (two roundings) get atol 1e-6 + rtol 1e-6, about 8 ulp,
//! for inputs of magnitude below ~10.
//!
//! Also holds the layout helpers that the reduce, softmax and norm tests share.

use infinity::ops::elementwise::{self as ew, BinaryOp, UnaryOp, reference};
use infinity::runtime::{DType, Error, Tensor};
use proptest::prelude::*;

use crate::support::{
    assert_close, assert_layout_invariant, config, padded_view, randn, shape, shape_perm_seed, strided_copy,
};

fn binary_op() -> impl Strategy<Value = BinaryOp> {
    prop_oneof![Just(BinaryOp::Add), Just(BinaryOp::Sub), Just(BinaryOp::Mul), Just(BinaryOp::Div)]
}

fn unary_op() -> impl Strategy<Value = UnaryOp> {
    use UnaryOp::*;
    prop_oneof![
        prop_oneof![Just(Exp), Just(Log), Just(Tanh), Just(Sigmoid), Just(GeluTanh), Just(GeluErf), Just(Erf)],
        prop_oneof![Just(Silu), Just(Sign), Just(Neg), Just(Abs), Just(Sqrt), Just(Square)],
        (-3f32..3.0, -1f32..3.0).prop_map(|(lo, width)| Clamp { lo, hi: lo + width }),
        (binary_op(), -4f32..4.0).prop_map(|(op, s)| Scalar(op, s)),
        (-4f32..4.0, -4f32..4.0).prop_map(|(mul, add)| Affine { mul, add }),
    ]
}

fn is_exact(op: UnaryOp) -> bool {
    use UnaryOp::*;
    matches!(op, Sign | Neg | Abs | Sqrt | Square | Clamp { .. } | Scalar(..))
}

/// Asserts `got` matches `want` under the tolerance rule in the header.
#[track_caller]
fn assert_matches(op: UnaryOp, got: &Tensor, want: &Tensor) {
    if is_exact(op) {
        assert!(got.same_values(want), "{op:?}: {got:?} != {want:?}");
    } else {
        assert_close(got, want, 1e-6, 1e-6);
    }
}

/// Standard normals times 3, made positive (≥ 0.01) for the ops defined only there.
fn input(op: UnaryOp, shape: &[usize], seed: u64) -> Tensor {
    let t = randn(shape, seed, 3.0);
    if !matches!(op, UnaryOp::Log | UnaryOp::Sqrt) {
        return t;
    }
    let positive = t.to_vec::<f32>().unwrap().into_iter().map(|v| v.abs() + 0.01).collect();
    Tensor::from_vec::<f32>(positive, shape).unwrap()
}

/// An operand shape that broadcasts to `out`: some leading dimensions dropped, some set to 1.
fn operand_shape(out: Vec<usize>) -> impl Strategy<Value = Vec<usize>> {
    let rank = out.len();
    (0..=rank, prop::collection::vec(any::<bool>(), rank)).prop_map(move |(dropped, ones)| {
        out.iter().zip(&ones).skip(dropped).map(|(&n, &one)| if one { 1 } else { n }).collect()
    })
}

fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>, u64)> {
    shape(4, 6).prop_flat_map(|out| (operand_shape(out.clone()), operand_shape(out), any::<u64>()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unary_matches_reference_for_any_layout((shape, perm, seed) in shape_perm_seed(), op in unary_op()) {
        let x = input(op, &shape, seed);
        let got = ew::unary(op, &x).unwrap();
        assert_matches(op, &got, &reference::unary(op, &x).unwrap());
        assert_layout_invariant(&x, &perm, |v| ew::unary(op, v).unwrap());
    }

    #[test]
    fn binary_broadcasts_like_the_reference((a_shape, b_shape, seed) in broadcast_pair(), op in binary_op()) {
        let a = randn(&a_shape, seed, 2.0);
        let b = randn(&b_shape, seed ^ 1, 2.0);
        for (x, y) in [(&a, &b), (&b, &a)] {
            let got = ew::binary(op, x, y).unwrap();
            prop_assert!(got.same_values(&reference::binary(op, x, y).unwrap()));
            // The same values as with both operands materialised at the output shape, and as
            // with stride-0 (broadcast view), padded or transposed-storage operands.
            let full = |t: &Tensor| t.broadcast_to(got.shape()).unwrap();
            let reversed = |t: &Tensor| strided_copy(t, &(0..t.rank()).rev().collect::<Vec<_>>());
            prop_assert!(ew::binary(op, &full(x).contiguous().unwrap(), &full(y).contiguous().unwrap()).unwrap().same_values(&got));
            prop_assert!(ew::binary(op, &full(x), &full(y)).unwrap().same_values(&got));
            prop_assert!(ew::binary(op, &padded_view(x), &padded_view(y)).unwrap().same_values(&got));
            prop_assert!(ew::binary(op, &reversed(x), &reversed(y)).unwrap().same_values(&got));
        }
    }
}

#[test]
fn large_inputs_take_the_parallel_path() {
    let x = randn(&[3, 70_001], 7, 3.0);
    for op in [UnaryOp::GeluTanh, UnaryOp::Scalar(BinaryOp::Div, 3.0)] {
        assert_matches(op, &ew::unary(op, &x).unwrap(), &reference::unary(op, &x).unwrap());
    }
    let (a, row, col) = (randn(&[300, 500], 8, 1.0), randn(&[500], 9, 1.0), randn(&[300, 1], 10, 1.0));
    for b in [&row, &col] {
        assert!(ew::sub(&a, b).unwrap().same_values(&reference::sub(&a, b).unwrap()));
        assert!(ew::div(b, &a).unwrap().same_values(&reference::div(b, &a).unwrap()));
    }
}

/// Values from a 30-digit mpmath evaluation of the defining formulas, rounded to f64.
#[test]
fn activations_at_known_points() {
    let u = Tensor::from_slice::<f32>(&[-3.0, -1.0, -0.5, 0.5, 1.0, 2.0], &[6]).unwrap();
    let cases: [(UnaryOp, [f64; 6]); 4] = [
        (
            UnaryOp::GeluTanh,
            [
                -0.0036373920817730186,
                -0.1588080093917233,
                -0.15428599017485609,
                0.34571400982514394,
                0.8411919906082767,
                1.954597694087775,
            ],
        ),
        (
            UnaryOp::GeluErf,
            [
                -0.0040496940948902835,
                -0.15865525393145705,
                -0.15426876936299344,
                0.34573123063700656,
                0.8413447460685429,
                1.9544997361036416,
            ],
        ),
        (
            UnaryOp::Sigmoid,
            [
                0.04742587317756678,
                0.2689414213699951,
                0.37754066879814546,
                0.6224593312018546,
                0.7310585786300049,
                0.8807970779778824,
            ],
        ),
        (
            UnaryOp::Silu,
            [
                -0.14227761953270035,
                -0.2689414213699951,
                -0.18877033439907273,
                0.3112296656009273,
                0.7310585786300049,
                1.7615941559557649,
            ],
        ),
    ];
    for (op, want) in cases {
        let want = Tensor::from_vec(want.map(|v| v as f32).to_vec(), &[6]).unwrap();
        // A few ulp: the f32 kernels against exactly rounded values.
        assert_close(&ew::unary(op, &u).unwrap(), &want, 1e-7, 3e-7);
        assert_close(&reference::unary(op, &u).unwrap(), &want, 1e-7, 3e-7);
    }
}

#[test]
fn gelu_erf_keeps_relative_accuracy_in_the_negative_tail() {
    let u = Tensor::from_slice::<f32>(&[-5.0, -8.0, -12.0], &[3]).unwrap();
    let want = [-1.4332578593959695e-6f64, -4.976768459417427e-15, -2.1317785344932147e-32].map(|v| v as f32);
    let want = Tensor::from_slice(&want, &[3]).unwrap();
    assert_close(&ew::gelu_erf(&u).unwrap(), &want, 0.0, 1e-6);
}

#[test]
fn erf_series_matches_high_precision_values() {
    let known = [
        (1e-5, 1.1283791670579e-05),
        (0.1, 0.1124629160182849),
        (-0.3, -0.3286267594591274),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (2.0, 0.9953222650189527),
        (3.0, 0.9999779095030014),
        (4.0, 0.9999999845827421),
    ];
    for (x, want) in known {
        let got = reference::erf_series(x);
        assert!((got - want).abs() <= 1e-15 * want.abs().max(1e-3), "erf({x}) = {got}, want {want}");
    }
}

#[test]
fn fast_erf_is_within_1e7_of_the_series() {
    let xs: Vec<f32> = (-7000..=7000).map(|i| i as f32 * 1e-3).collect();
    let got = ew::erf(&Tensor::from_slice(&xs, &[xs.len()]).unwrap()).unwrap().to_vec::<f32>().unwrap();
    for (&x, &g) in xs.iter().zip(&got) {
        let want = reference::erf_series(f64::from(x));
        assert!((f64::from(g) - want).abs() <= 1e-7, "erf({x}) = {g}, want {want}");
    }
}

#[test]
fn edge_values_follow_pytorch() {
    let t = |v: &[f32]| Tensor::from_slice(v, &[v.len()]).unwrap();
    let values = |r: infinity::runtime::Result<Tensor>| r.unwrap().to_vec::<f32>().unwrap();
    assert_eq!(values(ew::sign(&t(&[-2.0, -0.0, 0.0, 3.0, f32::NAN]))), [-1.0, 0.0, 0.0, 1.0, 0.0]);
    let clamped = values(ew::clamp(&t(&[-5.0, 0.5, 5.0, f32::NAN]), -1.0, 1.0));
    assert_eq!(clamped[..3], [-1.0, 0.5, 1.0]);
    assert!(clamped[3].is_nan());
    assert_eq!(values(ew::clamp(&t(&[-5.0, 5.0]), 2.0, 1.0)), [1.0, 1.0], "lo > hi gives hi");
    assert_eq!(values(ew::exp(&t(&[0.0, f32::NEG_INFINITY]))), [1.0, 0.0]);
    let logs = values(ew::log(&t(&[1.0, 0.0, -1.0])));
    assert_eq!(logs[..2], [0.0, f32::NEG_INFINITY]);
    assert!(logs[2].is_nan());
    assert_eq!(values(ew::div(&t(&[1.0, -1.0]), &t(&[0.0]))), [f32::INFINITY, f32::NEG_INFINITY]);
    assert_eq!(values(ew::affine(&t(&[-1.0, 3.0]), 0.5, 0.5)), [0.0, 2.0]);
    assert_eq!(values(ew::sigmoid(&t(&[-200.0, 200.0]))), [0.0, 1.0]);
    assert_eq!(values(ew::gelu_tanh(&t(&[-200.0, 200.0]))), [-0.0, 200.0]);
}

#[test]
fn scalars_and_rank_zero_tensors() {
    let s = Tensor::scalar(2.0f32);
    let v = Tensor::from_slice::<f32>(&[1.0, 4.0], &[2]).unwrap();
    assert_eq!(ew::div(&s, &v).unwrap().to_vec::<f32>().unwrap(), [2.0, 0.5]);
    assert_eq!(ew::mul(&s, &s).unwrap().shape(), [] as [usize; 0]);
    assert!(ew::sub_scalar(&v, 1.0).unwrap().same_values(&ew::sub(&v, &Tensor::scalar(1.0f32)).unwrap()));
    assert!(ew::div_scalar(&v, 3.0).unwrap().same_values(&ew::div(&v, &Tensor::scalar(3.0f32)).unwrap()));
}

#[test]
fn bad_arguments_are_errors() {
    let a = randn(&[2, 3], 1, 1.0);
    let err = ew::add(&a, &randn(&[4], 2, 1.0)).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { op: "add", .. }), "{err}");
    let ints = Tensor::zeros(&[2, 3], DType::I32);
    assert!(matches!(ew::exp(&ints), Err(Error::UnsupportedDType { op: "exp", dtype: DType::I32 })));
    assert!(matches!(reference::exp(&ints), Err(Error::UnsupportedDType { op: "exp", .. })));
    let half = a.to_dtype(DType::BF16).unwrap();
    assert!(matches!(ew::mul(&a, &half), Err(Error::UnsupportedDType { op: "mul", dtype: DType::BF16 })));
    assert!(matches!(reference::mul(&a, &half), Err(Error::UnsupportedDType { op: "mul", .. })));
    assert!(matches!(ew::clamp(&a, f32::NAN, 1.0), Err(Error::InvalidArgument { op: "clamp", .. })));
    assert!(matches!(reference::clamp(&a, 0.0, f32::NAN), Err(Error::InvalidArgument { op: "clamp", .. })));
}
