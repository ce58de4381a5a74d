//! The GEMMs of cuda/src/gemm.rs (`linear`, `matmul`) against an f64 reference computed here
//! from the bf16 inputs, by property tests: odd sizes, rank 2 and 3, with and without bias, f32
//! and bf16 outputs, batches, a rank-2 side broadcast over the batch, transposed views and
//! slices of wider tensors. Every body runs on each executor of `gemm_executors()`. Under the
//! CPU shim the GEMM is a plain emulation of the very cuBLAS call a GPU makes, so these tests
//! check the row-major → column-major argument mapping on every machine, and cuBLAS itself
//! where there is a GPU.
//!
//! Bounds: an output is Σ_l a_l·b_l (+ bias) over K terms; bf16 products are exact in f32 and
//! the K − 1 sums (K with a bias) are f32 operations in an order cuBLAS picks, each off by at
//! most ε = f32::EPSILON = 2⁻²³ relative to the partial sum (a full ulp rather than half,
//! since tensor cores may truncate): in all within (K + 1)·ε·(Σ_l |a_l·b_l| + |bias|). A bf16
//! output adds half a bf16 ulp, at most 2⁻⁸ relative, of the result, and with a bias half a
//! bf16 ulp of the bias, which the output starts as (the bias is written first, rounded to
//! the output's type).

#[allow(dead_code)] // this binary uses part of the op tests' helpers
#[path = "ops/support.rs"]
mod support;

#[path = "common/cuda.rs"]
mod cuda_support;

use cuda_support::{assert_dtype_error, assert_invalid_with, host, upload};
use std::sync::{Arc, OnceLock};

use infinity::runtime::{DType, Tensor};
use infinity_cuda::gemm::{linear, matmul};
use infinity_cuda::testing::{executors, skip};
use infinity_cuda::{Error, Executor};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use support::{padded_view, randn};

const EPS: f64 = f32::EPSILON as f64;
/// Half an ulp of bf16 relative to the value: the rounding of a bf16 output.
const BF16_HALF_ULP: f64 = 1.0 / 256.0;

/// A case is a few small products; the shim's emulation runs it in well under a millisecond.
fn config() -> ProptestConfig {
    ProptestConfig { cases: 32, ..ProptestConfig::default() }
}

/// Sizes around the edges: 1, odd, and just past powers of two.
fn size() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![1usize, 2, 3, 8, 17, 33])
}

fn out_dtype(bf16_out: bool) -> DType {
    if bf16_out { DType::BF16 } else { DType::F32 }
}

/// The executors of `executors()` that can run GEMMs: a GPU without libcublas prints a SKIP
/// line instead of failing every case.
fn gemm_executors() -> &'static [&'static Arc<Executor>] {
    static USABLE: OnceLock<Vec<&'static Arc<Executor>>> = OnceLock::new();
    USABLE.get_or_init(|| {
        executors()
            .iter()
            .filter(|exec| {
                let one = upload(exec, &Tensor::zeros(&[1, 1], DType::BF16));
                match matmul(exec, &one, &one, DType::F32) {
                    Err(why @ Error::DeviceUnavailable { op: "gemm", .. }) => {
                        skip(&format!("GEMM tests on {}", exec.name()), why);
                        false
                    }
                    _ => true,
                }
            })
            .collect()
    })
}

/// A bf16 tensor of `shape` (rank ≥ 2, last two dimensions R×C) with normal values: stored
/// contiguously (layout 0); as the transpose of a contiguous C×R tensor (1: the view `permute`
/// makes, columns contiguous); as the columns 1..C+1 of a tensor C + 3 wide (2: rows
/// contiguous, their stride larger than C); or as the transpose of such a slice (3: columns
/// contiguous, their stride larger than R).
fn operand(shape: &[usize], layout: usize, seed: u64) -> Tensor {
    let last = shape.len() - 1;
    let transposed = layout == 1 || layout == 3;
    let mut stored = shape.to_vec();
    if transposed {
        stored.swap(last - 1, last);
    }
    let width = stored[last];
    if layout >= 2 {
        stored[last] += 3;
    }
    let mut t = randn(&stored, seed, 1.0).to_dtype(DType::BF16).unwrap();
    if layout >= 2 {
        t = t.narrow(last, 1, width).unwrap();
    }
    if transposed { t.transpose(last - 1, last).unwrap() } else { t }
}

/// For row-major a (M×K) and b (K×N) values: the f64 products Σ_l a(i, l)·b(l, j) and their
/// magnitudes Σ_l |a(i, l)·b(l, j)|, row-major M×N.
fn products(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut sums = vec![0.0; m * n];
    let mut magnitudes = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for l in 0..k {
                let p = f64::from(a[i * k + l]) * f64::from(b[l * n + j]);
                sums[i * n + j] += p;
                magnitudes[i * n + j] += p.abs();
            }
        }
    }
    (sums, magnitudes)
}

/// got within the module doc's bound of want = products (+ bias) elementwise, with the
/// expected dtype and shape. `bias` holds each output's bias (0 without one).
fn check(
    exec: &Executor,
    got: &Tensor,
    shape: &[usize],
    bf16_out: bool,
    k: usize,
    (want, magnitude): (&[f64], &[f64]),
    bias: &[f64],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.shape(), shape, "{}: shape", exec.name());
    prop_assert_eq!(got.dtype(), out_dtype(bf16_out), "{}: dtype", exec.name());
    for (i, g) in got.to_f32_vec().unwrap().into_iter().enumerate() {
        let want = want[i] + bias[i];
        let f32_bound = (k as f64 + 1.0) * EPS * (magnitude[i] + bias[i].abs());
        let bound =
            if bf16_out { f32_bound + BF16_HALF_ULP * (want.abs() + f32_bound + bias[i].abs()) } else { f32_bound };
        let error = (f64::from(g) - want).abs();
        prop_assert!(error <= bound, "{}: index {}: got {} want {} bound {}", exec.name(), i, g, want, bound);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// y = x·wᵀ + bias for x (M, K) or (B, T, K), contiguous or a slice of a wider tensor;
    /// w (N, K) in any of `operand`'s layouts; bias absent, contiguous or strided.
    #[test]
    fn linear_matches_the_reference(b in 1usize..=3, t in size(), k in size(), n in size(), rank3: bool,
                                    x_sliced: bool, w_layout in 0usize..4, bias_kind in 0usize..3,
                                    bf16_out: bool, seed: u64) {
        let x_shape = if rank3 { vec![b, t, k] } else { vec![b * t, k] };
        let x = operand(&x_shape, if x_sliced { 2 } else { 0 }, seed);
        let w = operand(&[n, k], w_layout, seed ^ 1);
        let bias = match bias_kind {
            0 => None,
            1 => Some(padded_view(&randn(&[n], seed ^ 2, 1.0))),
            _ => Some(randn(&[n, 2], seed ^ 2, 1.0).narrow(1, 0, 1).unwrap().squeeze(1).unwrap()),
        };
        let rows = b * t;
        let wt = w.transpose(0, 1).unwrap().to_f32_vec().unwrap();
        let want = products(&x.to_f32_vec().unwrap(), &wt, rows, k, n);
        let bias_of: Vec<f64> = match &bias {
            Some(bias) => bias.to_f32_vec().unwrap().iter().cycle().take(rows * n).map(|&v| f64::from(v)).collect(),
            None => vec![0.0; rows * n],
        };
        let mut y_shape = x_shape.clone();
        *y_shape.last_mut().unwrap() = n;
        for &exec in gemm_executors() {
            let bias = bias.as_ref().map(|bias| upload(exec, bias));
            let got = host(exec, linear(exec, &upload(exec, &x), &upload(exec, &w), bias.as_ref(), out_dtype(bf16_out)));
            check(exec, &got, &y_shape, bf16_out, k, (&want.0, &want.1), &bias_of)?;
        }
    }

    /// a·b for a (Bt, M, K) or (M, K) and b (Bt, K, N) or (K, N), each side with the whole
    /// batch, rank 2 or a batch of one (both broadcast over the other's batch), in any of
    /// `operand`'s layouts.
    #[test]
    fn matmul_matches_the_reference(batch in 1usize..=3, m in size(), k in size(), n in size(),
                                    a_batch in 0usize..3, b_batch in 0usize..3, a_layout in 0usize..4,
                                    b_layout in 0usize..4, bf16_out: bool, seed: u64) {
        // Batch kinds: 0 the whole batch, 1 rank 2, 2 a batch of one.
        let shape = |kind, rows, cols| match kind {
            0 => vec![batch, rows, cols],
            1 => vec![rows, cols],
            _ => vec![1, rows, cols],
        };
        let a = operand(&shape(a_batch, m, k), a_layout, seed);
        let b = operand(&shape(b_batch, k, n), b_layout, seed ^ 1);
        let (av, bv) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
        // A broadcast side is the same matrix for every batch entry.
        let matrix = |values: &[f32], kind, p: usize, size: usize| {
            let p = if kind == 0 { p } else { 0 };
            values[p * size..(p + 1) * size].to_vec()
        };
        let (mut want, mut magnitude) = (Vec::new(), Vec::new());
        for p in 0..batch {
            let (sums, magnitudes) = products(&matrix(&av, a_batch, p, m * k), &matrix(&bv, b_batch, p, k * n), m, k, n);
            want.extend(sums);
            magnitude.extend(magnitudes);
        }
        let out_shape = match (a_batch, b_batch) {
            (1, 1) => vec![m, n],
            (0, _) | (_, 0) => vec![batch, m, n],
            _ => vec![1, m, n],
        };
        // Without a whole-batch side: one product, the first of the batch computed above.
        let count = out_shape.iter().product();
        for &exec in gemm_executors() {
            let got = host(exec, matmul(exec, &upload(exec, &a), &upload(exec, &b), out_dtype(bf16_out)));
            check(exec, &got, &out_shape, bf16_out, k, (&want[..count], &magnitude[..count]), &vec![0.0; count])?;
        }
    }
}

/// Transposed views made on the device (`Tensor::permute`, no copy) multiply as the
/// host tensors they view: here exactly, with small integers.
#[test]
fn device_permuted_operands_are_read_in_place() {
    let a = Tensor::from_vec((0..24).map(|i| (i % 7) as f32 - 3.0).collect(), &[2, 4, 3])
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let b = Tensor::from_vec((0..20).map(|i| (i % 5) as f32 - 2.0).collect(), &[5, 4])
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    // The views (2, 3, 4) and (4, 5), the second broadcast over the batch.
    let (at, bt) = (a.permute(&[0, 2, 1]).unwrap(), b.transpose(0, 1).unwrap());
    let (av, bv) = (at.to_f32_vec().unwrap(), bt.to_f32_vec().unwrap());
    let want: Vec<f32> = (0..2 * 3 * 5)
        .map(|e| {
            let (p, i, j) = (e / 15, e / 5 % 3, e % 5);
            (0..4).map(|l| av[p * 12 + i * 4 + l] * bv[l * 5 + j]).sum()
        })
        .collect();
    for &exec in gemm_executors() {
        let da = upload(exec, &a).permute(&[0, 2, 1]).unwrap();
        let db = upload(exec, &b).permute(&[1, 0]).unwrap();
        let got = host(exec, matmul(exec, &da, &db, DType::F32));
        assert_eq!(got.shape(), [2, 3, 5], "{}", exec.name());
        assert_eq!(got.to_f32_vec().unwrap(), want, "{}", exec.name());
    }
}

/// Bad input is a typed error naming the op, never a panic or a launch.
#[test]
fn preconditions_are_typed_errors() {
    let exec = &executors()[0];
    let t = |shape: &[usize], dtype: DType| upload(exec, &Tensor::zeros(shape, dtype));
    let (x, w, bias) = (t(&[3, 8], DType::BF16), t(&[5, 8], DType::BF16), t(&[5], DType::F32));
    assert!(linear(exec, &x, &w, Some(&bias), DType::BF16).is_ok());

    assert_dtype_error(linear(exec, &t(&[3, 8], DType::F32), &w, None, DType::F32));
    assert_dtype_error(linear(exec, &x, &t(&[5, 8], DType::F32), None, DType::F32));
    assert_dtype_error(linear(exec, &x, &w, Some(&t(&[5], DType::BF16)), DType::F32));
    assert_dtype_error(linear(exec, &x, &w, None, DType::I32));
    assert_invalid_with(linear(exec, &x, &t(&[5, 7], DType::BF16), None, DType::F32), "linear", "[3, 8] and [5, 7]");
    assert_invalid_with(linear(exec, &x, &w, Some(&t(&[4], DType::F32)), DType::F32), "linear", "[5, 8] and [4]");
    assert_invalid_with(linear(exec, &t(&[8], DType::BF16), &w, None, DType::F32), "linear", "2 or 3 dimensions");
    assert_invalid_with(
        linear(exec, &t(&[1, 1, 3, 8], DType::BF16), &w, None, DType::F32),
        "linear",
        "2 or 3 dimensions",
    );
    // x (3, 8) as the transpose of an (8, 3) tensor: K is not contiguous.
    let x_t = t(&[8, 3], DType::BF16).permute(&[1, 0]).unwrap();
    assert_invalid_with(linear(exec, &x_t, &w, None, DType::F32), "linear", "last dimension must be contiguous");
    // x (2, 3, 8) with its two leading dimensions swapped: no single row stride.
    let x_swapped = t(&[3, 2, 8], DType::BF16).permute(&[1, 0, 2]).unwrap();
    assert_invalid_with(linear(exec, &x_swapped, &w, None, DType::F32), "linear", "collapse to rows");
    // w (5, 8) with neither dimension contiguous.
    let w_strided = t(&[5, 8, 2], DType::BF16).narrow(2, 0, 1).unwrap().squeeze(2).unwrap();
    assert_invalid_with(linear(exec, &x, &w_strided, None, DType::F32), "linear", "cannot be read in place");

    let (a, b) = (t(&[2, 3, 4], DType::BF16), t(&[2, 4, 5], DType::BF16));
    assert!(matmul(exec, &a, &b, DType::BF16).is_ok());
    assert_dtype_error(matmul(exec, &a, &t(&[4, 5], DType::F32), DType::F32));
    assert_dtype_error(matmul(exec, &a, &b, DType::U8));
    assert_invalid_with(matmul(exec, &a, &t(&[2, 3, 5], DType::BF16), DType::F32), "matmul", "[2, 3, 4] and [2, 3, 5]");
    assert_invalid_with(matmul(exec, &a, &t(&[3, 4, 5], DType::BF16), DType::F32), "matmul", "[2, 3, 4] and [3, 4, 5]");
    assert_invalid_with(matmul(exec, &t(&[4], DType::BF16), &b, DType::F32), "matmul", "2 or 3 dimensions");
    // a (2, 3, 4) with strides (1, 8, 2): neither of its last two dimensions is contiguous.
    let a_strided = t(&[3, 4, 2], DType::BF16).permute(&[2, 0, 1]).unwrap();
    assert_invalid_with(matmul(exec, &a_strided, &b, DType::F32), "matmul", "cannot be read in place");
}
