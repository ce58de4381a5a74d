//! Learning-rate and weight-decay schedules against hand-computed values of the official
//! formulas.

use infinity::autograd::{Annealing, LrSchedule, WdSchedule};

fn schedule(annealing: Annealing) -> LrSchedule {
    LrSchedule { peak: 2.0, warmup_iters: 10, max_iters: 111, warmup_start: 0.005, end_ratio: 0.001, annealing }
}

#[track_caller]
fn close(got: f64, want: f64) {
    assert!((got - want).abs() <= 1e-12 * want.abs().max(1.0), "{got} vs {want}");
}

#[test]
fn warmup_is_linear_from_the_start_fraction() {
    let s = schedule(Annealing::Cosine);
    close(s.lr(0), 2.0 * 0.005);
    close(s.lr(5), 2.0 * (0.005 + 0.995 * 0.5));
    close(s.lr(10), 2.0);
}

/// After the warm-up, progress p = (it − 10) / 100.
#[test]
fn annealing_shapes() {
    let cos = schedule(Annealing::Cosine);
    close(cos.lr(60), 2.0 * (0.001 + 0.999 * 0.5));
    close(cos.lr(110), 2.0 * 0.001);
    // lin0 holds the peak until p = 0.05, then falls linearly to end_ratio at p = 1.
    let lin0 = schedule(Annealing::from_official("lin0").unwrap());
    close(lin0.lr(14), 2.0);
    close(lin0.lr(60), 2.0 * (0.001 + 0.999 * 0.5 / 0.95));
    close(lin0.lr(110), 2.0 * 0.001);
    let lin00 = schedule(Annealing::from_official("lin00").unwrap());
    close(lin00.lr(35), 2.0 * (0.001 + 0.999 * 0.75));
    assert_eq!(Annealing::from_official("lin").unwrap(), Annealing::Linear { hold: 0.15 });
    let constant = schedule(Annealing::Constant);
    close(constant.lr(100), 2.0);
    assert!(Annealing::from_official("exp").is_err());
}

/// The golden's setting: train.sh's lin0 with wpe = 1 and no warm-up is a constant peak.
#[test]
fn train_sh_schedule_is_constant() {
    let s = LrSchedule {
        peak: 9.375e-5,
        warmup_iters: 0,
        max_iters: 1000,
        warmup_start: 0.005,
        end_ratio: 1.0,
        annealing: Annealing::from_official("lin0").unwrap(),
    };
    for it in [0, 1, 500, 999] {
        close(s.lr(it), 9.375e-5);
    }
    // A run too short to anneal stays at the peak instead of dividing by zero.
    close(LrSchedule { max_iters: 1, ..s }.lr(0), 9.375e-5);
}

#[test]
fn weight_decay_follows_a_half_cosine() {
    let wd = WdSchedule { start: 0.05, end: 0.01, max_iters: 101 };
    close(wd.weight_decay(0), 0.05);
    close(wd.weight_decay(50), 0.03);
    close(wd.weight_decay(100), 0.01);
    close(WdSchedule { start: 0.005, end: 0.005, max_iters: 10 }.weight_decay(3), 0.005);
}
