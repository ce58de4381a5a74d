//! Support for the kernel tests (tests/cuda_*.rs): one test body runs on every executor that
//! is usable here (the CPU shim always, GPU 0 when there is one), and what cannot run says so
//! with a `SKIP:` line instead of passing silently.

use std::fmt::Display;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use crate::toolkit::{Toolkit, nvrtc_present};
use crate::{Availability, Executor};

/// When set (CI sets it), a missing NVRTC or ptxas fails the tests that need them instead of
/// skipping them: the checks CI exists for must never be skipped there.
pub const REQUIRE_TOOLKIT_VAR: &str = "INFINITY_CUDA_REQUIRE_TOOLKIT";

/// Writes `SKIP: {what}: {why}` to stderr directly, past the test harness's output capture,
/// so that the line shows for a passing test too.
pub fn skip(what: &str, why: impl Display) {
    let _ = writeln!(std::io::stderr(), "SKIP: {what}: {why}");
}

/// The executors every kernel test runs on. The first call announces a GPU that is missing.
pub fn executors() -> &'static [Arc<Executor>] {
    static EXECUTORS: OnceLock<Vec<Arc<Executor>>> = OnceLock::new();
    EXECUTORS.get_or_init(|| {
        let mut all = vec![Executor::shim()];
        match Executor::cuda(0) {
            Ok(gpu) => all.push(gpu),
            Err(why) => skip("kernel tests on a GPU (the CPU shim runs them)", why),
        }
        all
    })
}

/// The toolkit for a test that compiles kernels with NVRTC (and runs ptxas when
/// `needs_ptxas`). Without it: a SKIP line and `None`, or a panic when
/// [`REQUIRE_TOOLKIT_VAR`] is set.
pub fn toolkit(test: &str, needs_ptxas: bool) -> Option<Toolkit> {
    let found = if nvrtc_present() {
        Toolkit::locate().map_err(|e| e.to_string()).and_then(|t| match t.ptxas() {
            None if needs_ptxas => Err(format!("no ptxas in {}/bin", t.home().display())),
            _ => Ok(t),
        })
    } else {
        Err(Availability::NoNvrtc.to_string())
    };
    match found {
        Ok(toolkit) => Some(toolkit),
        Err(why) if std::env::var_os(REQUIRE_TOOLKIT_VAR).is_some() => {
            panic!("{test}: {why} ({REQUIRE_TOOLKIT_VAR} is set, so this check may not be skipped)")
        }
        Err(why) => {
            skip(test, why);
            None
        }
    }
}
