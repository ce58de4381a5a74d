//! Tape semantics: gradient accumulation over reuse, constants, detach, misuse errors, the
//! parameter containers, and that the gradient checker rejects a wrong gradient.

use infinity::autograd::elementwise::{add, mul, mul_scalar};
use infinity::autograd::gradcheck::GradCheck;
use infinity::autograd::reduce::sum;
use infinity::autograd::{Params, Tape, Var};
use infinity::runtime::{DType, Tensor};

fn vector(v: &[f32]) -> Tensor {
    Tensor::from_slice(v, &[v.len()]).unwrap()
}

/// d/dx Σ (x·x + 3x) = 2x + 3: the two uses of x in the product and the third in the sum
/// must all add into the same leaf.
#[test]
fn reused_values_accumulate() {
    let tape = Tape::new();
    let x = tape.leaf(vector(&[1.0, -2.0, 0.5])).unwrap();
    let y = add(&mul(&x, &x).unwrap(), &mul_scalar(&x, 3.0).unwrap()).unwrap();
    let grads = tape.backward(&sum(&y, &[], false).unwrap()).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec::<f32>().unwrap(), vec![5.0, -1.0, 4.0]);
}

#[test]
fn constants_and_detached_values_get_no_gradient() {
    let tape = Tape::new();
    let x = tape.leaf(vector(&[1.0, 2.0])).unwrap();
    let unused = tape.leaf(vector(&[3.0])).unwrap();
    let c = Var::constant(vector(&[4.0, 5.0]));
    assert!(!mul(&c, &c).unwrap().is_tracked(), "ops on constants record nothing");
    let n = tape.len();
    // x · detach(x): the detached factor is a constant, so the gradient is x, not 2x.
    let y = sum(&mul(&mul(&x, &x.detach()).unwrap(), &c).unwrap(), &[], false).unwrap();
    assert_eq!(tape.len(), n + 3);
    let grads = tape.backward(&y).unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec::<f32>().unwrap(), vec![4.0, 10.0]);
    assert!(grads.get(&unused).is_none());
    assert!(grads.get(&c).is_none());
}

#[test]
fn misuse_is_an_error() {
    let (tape, other) = (Tape::new(), Tape::new());
    let x = tape.leaf(vector(&[1.0, 2.0])).unwrap();
    let z = other.leaf(vector(&[1.0, 2.0])).unwrap();
    assert!(add(&x, &z).is_err(), "values of two tapes");
    assert!(tape.leaf(Tensor::zeros(&[2], DType::I64)).is_err(), "a non-f32 leaf");
    let y = mul_scalar(&x, 2.0).unwrap();
    assert!(tape.backward(&y).is_err(), "a loss of two elements");
    assert!(other.backward(&sum(&y, &[], false).unwrap()).is_err(), "a loss of another tape");
    assert!(tape.backward(&Var::constant(Tensor::scalar(1.0f32))).is_err(), "a constant loss");
    let loss = sum(&y, &[], false).unwrap();
    let grads = tape.backward(&loss).unwrap();
    assert!(grads.get(&z).is_none(), "a leaf of another tape");
    assert!(tape.backward(&loss).is_err(), "a second backward");
    assert!(mul(&x, &x).is_err(), "recording on a consumed tape");
}

#[test]
fn tracked_parameters_collect_named_gradients() {
    let params = Params::new(vec![
        ("w".into(), vector(&[1.0, 2.0])),
        ("frozen_by_use".into(), vector(&[0.0])),
        ("half".into(), vector(&[1.0]).to_dtype(DType::BF16).unwrap()),
    ])
    .unwrap();
    assert_eq!(params.get("half").unwrap().dtype(), DType::F32, "master weights are f32");
    let tape = Tape::new();
    let tracked = params.track(&tape).unwrap();
    let w = tracked.get("w").unwrap();
    let loss = sum(&mul(w, w).unwrap(), &[], false).unwrap();
    let grads = tracked.gradients(tape.backward(&loss).unwrap());
    assert_eq!(grads.get("w").unwrap().to_vec::<f32>().unwrap(), vec![2.0, 4.0]);
    assert!(grads.get("frozen_by_use").is_none(), "unused parameters get no gradient");
    assert!(tracked.get("missing").is_err());
    assert!(Params::new(vec![("a".into(), vector(&[1.0])), ("a".into(), vector(&[2.0]))]).is_err());
    assert!(Params::new(vec![("ids".into(), Tensor::zeros(&[2], DType::I32))]).is_err());
}

/// The checker must fail a wrong gradient: with x · detach(x) the analytic gradient is x
/// while finite differences see 2x.
#[test]
fn gradient_checker_catches_a_wrong_rule() {
    let x = vector(&[0.5, -1.0, 1.5]);
    let report = GradCheck::default().check(|v| mul(&v[0], &v[0].detach()), &[x]).unwrap();
    assert!(!report.passed(), "{report}");
}

/// A backward pass hands each parameter's gradient over as soon as it is final: the one the
/// last op read first, the one the first op read last — whatever order the parameters were
/// tracked in (a sweep that handed them over at their own place on the tape would go c, b,
/// a) — each once, with the values of the whole pass.
#[test]
fn gradients_are_handed_over_as_soon_as_final() {
    let params = Params::new(vec![
        ("a".into(), vector(&[1.0, -2.0])),
        ("b".into(), vector(&[0.5, 3.0])),
        ("c".into(), vector(&[2.0, 1.5])),
        ("unused".into(), vector(&[4.0])),
    ])
    .unwrap();
    let loss_of = |tracked: &infinity::autograd::Tracked| {
        let (a, b, c) = (tracked.get("a").unwrap(), tracked.get("b").unwrap(), tracked.get("c").unwrap());
        let h = mul(&mul_scalar(c, 3.0).unwrap(), c).unwrap();
        let h = add(&mul(&h, b).unwrap(), b).unwrap();
        sum(&mul(&h, a).unwrap(), &[], false).unwrap()
    };
    let tape = Tape::new();
    let tracked = params.track(&tape).unwrap();
    let mut order = Vec::new();
    let mut streamed = Vec::new();
    tracked
        .backward(&tape, &loss_of(&tracked), &mut |name, g| {
            order.push(name.to_string());
            streamed.push((name.to_string(), g.to_vec::<f32>()?));
            Ok(())
        })
        .unwrap();
    assert_eq!(order, ["a", "b", "c"]);
    let tape = Tape::new();
    let tracked = params.track(&tape).unwrap();
    let whole = tracked.gradients(tape.backward(&loss_of(&tracked)).unwrap());
    for (name, g) in streamed {
        assert_eq!(g, whole.get(&name).unwrap().to_vec::<f32>().unwrap(), "{name}");
    }
}
