//! Elementwise maps over f32 slices that run in the widest vectors the CPU has, and an `exp`
//! written so that they can. The crate is compiled for baseline x86-64 (SSE2, 4 lanes) and
//! libm's `expf` is a call per element that no loop around it can vectorize; here a map's loop
//! is compiled again for AVX-512 and AVX2 and picked at run time, and `exp` is plain
//! arithmetic (no FMA, no libm), so it vectorizes in each and gives the same bits on every CPU.

/// e^x within 2 ulp for results of at least `f32::MIN_POSITIVE`; 0 below that (x < −87.34,
/// where the exact result is a subnormal under 1.2e-38), ∞ above ln(f32::MAX), NaN for NaN.
///
/// x = n·ln 2 + r with |r| ≤ ln2/2; e^r from a degree-7 polynomial (Taylor coefficients, whose
/// truncation error at |r| = 0.347 is under 1e-8 relative); 2ⁿ applied as two powers of two so that
/// neither leaves the normal range for n in [−126, 128].
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const HI: f32 = 88.722_84; // ln(f32::MAX)
    const LO: f32 = -87.336_55; // ln(f32::MIN_POSITIVE)
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2⁹ (LN2_HI has 9 trailing zero bits).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2²³ rounds to the nearest integer (|x·log2 e| < 2²²).
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let n = (xc * LOG2_E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    let n = n as i32;
    let half = n >> 1;
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let y = p * pow2(half) * pow2(n - half);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// 1 / (1 + e^−x): 0 and 1 at the ends, never NaN for a number.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `out[i] = f(input[i])`, in the widest vectors the CPU has (f should be plain arithmetic,
/// comparisons and `exp`, so that it vectorizes).
pub(crate) fn map(input: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    let n = input.len().min(out.len());
    let (input, out) = (&input[..n], &mut out[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { map_avx512(input, out, f) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { map_avx2(input, out, f) };
        }
    }
    map_plain(input, out, f)
}

/// `xs[i] = f(xs[i])`, as [`map`].
pub(crate) fn map_in_place(xs: &mut [f32], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { in_place_avx512(xs, f) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { in_place_avx2(xs, f) };
        }
    }
    xs.iter_mut().for_each(|x| *x = f(*x));
}

#[inline(always)]
fn map_plain(input: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    out.iter_mut().zip(input).for_each(|(o, &x)| *o = f(x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn map_avx512(input: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    map_plain(input, out, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn map_avx2(input: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32) {
    map_plain(input, out, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn in_place_avx512(xs: &mut [f32], f: impl Fn(f32) -> f32) {
    xs.iter_mut().for_each(|x| *x = f(*x));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn in_place_avx2(xs: &mut [f32], f: impl Fn(f32) -> f32) {
    xs.iter_mut().for_each(|x| *x = f(*x));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between a result and the f64 truth.
    fn ulps(got: f32, want: f64) -> f64 {
        let want32 = want as f32;
        let ulp = (f32::from_bits(want32.abs().to_bits() + 1) - want32.abs()) as f64;
        (got as f64 - want).abs() / ulp
    }

    /// Every 97th f32 from −104 to 89 (about 20 million values, both signs, every binade),
    /// through `map` (the vector code) and one at a time.
    #[test]
    fn exp_is_within_two_ulp_over_the_whole_range() {
        let xs: Vec<f32> = (0..u32::MAX / 97)
            .map(|i| f32::from_bits(i * 97))
            .flat_map(|x| [x, -x])
            .filter(|x| (-104.0..89.0).contains(x))
            .collect();
        let mut got = vec![0.0; xs.len()];
        map(&xs, &mut got, exp);
        let mut worst = (0.0f64, 0.0f32);
        for (&x, &y) in xs.iter().zip(&got) {
            assert_eq!(y.to_bits(), exp(x).to_bits(), "the vector and scalar code differ at {x}");
            let want = (x as f64).exp();
            if want >= f32::MIN_POSITIVE as f64 && want <= f32::MAX as f64 {
                let u = ulps(y, want);
                if u > worst.0 {
                    worst = (u, x);
                }
            } else if want < f32::MIN_POSITIVE as f64 {
                assert!(y == 0.0 || (y as f64 - want).abs() < f32::MIN_POSITIVE as f64, "exp({x}) = {y}");
            } else {
                assert_eq!(y, f32::INFINITY, "exp({x})");
            }
        }
        assert!(worst.0 <= 2.0, "exp({}) is {} ulp off", worst.1, worst.0);
    }

    #[test]
    fn exp_and_sigmoid_at_the_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(88.7).is_finite());
        assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
        assert_eq!(sigmoid(-200.0), 0.0);
        assert_eq!(sigmoid(200.0), 1.0);
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(f32::NAN).is_nan());
    }

    #[test]
    fn maps_visit_every_element() {
        let xs: Vec<f32> = (0..37).map(|i| i as f32 - 18.0).collect();
        let mut out = vec![0.0; 37];
        map(&xs, &mut out, |x| 2.0 * x + 1.0);
        let mut inplace = xs.clone();
        map_in_place(&mut inplace, |x| 2.0 * x + 1.0);
        for ((x, o), p) in xs.iter().zip(&out).zip(&inplace) {
            assert_eq!((*o, *p), (2.0 * x + 1.0, 2.0 * x + 1.0));
        }
    }
}
