//! `ptxas -v`: assembles a kernel file's PTX for a real architecture (no GPU needed) and reads
//! the resources it reports per kernel: registers, shared memory, stack frame and spills.
//! CI prints these for every kernel and fails on any spill.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{self, Result};
use crate::kernels::Source;
use crate::toolkit::Toolkit;

/// What ptxas reports for one kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub kernel: String,
    pub registers: u32,
    /// Static shared memory per block.
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

impl Resources {
    pub fn spills(&self) -> bool {
        self.spill_stores > 0 || self.spill_loads > 0
    }
}

/// Assembles `ptx` (NVRTC's output for `source`) for `arch` (`sm_80`, `sm_90a`, …) and returns
/// the report of every kernel in it.
pub fn assemble(toolkit: &Toolkit, source: Source, ptx: &[u8], arch: &str) -> Result<Vec<Resources>> {
    let fail = |msg: String| error::ptxas(source.file_name(), arch, msg);
    let ptxas = toolkit.ptxas().ok_or_else(|| fail(format!("no ptxas in {}/bin", toolkit.home().display())))?;
    // ptxas reads only files; the name is unique within and across processes.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let input = std::env::temp_dir().join(format!(
        "infinity-{}-{arch}-{}-{}.ptx",
        source.file_name(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&input, ptx).map_err(|e| fail(format!("writing {}: {e}", input.display())))?;
    let output =
        Command::new(&ptxas).arg("-v").arg(format!("-arch={arch}")).arg("-o").arg("/dev/null").arg(&input).output();
    let _ = std::fs::remove_file(&input);
    let output = output.map_err(|e| fail(format!("running {}: {e}", ptxas.display())))?;
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        return Err(fail(format!("{}:\n{report}", output.status)));
    }
    Ok(parse(&report))
}

/// Reads ptxas's `-v` report, which names each kernel and then describes it:
/// ```text
/// ptxas info    : Compiling entry function 'bsq_quantize' for 'sm_80'
/// ptxas info    : Function properties for bsq_quantize
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 30 registers, used 1 barriers, 128 bytes smem, 420 bytes cmem[0]
/// ```
pub fn parse(report: &str) -> Vec<Resources> {
    let mut kernels: Vec<Resources> = Vec::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default();
            kernels.push(Resources { kernel: name.to_string(), ..Resources::default() });
            continue;
        }
        let Some(current) = kernels.last_mut() else { continue };
        for (phrase, field) in [
            (" registers", &mut current.registers),
            (" bytes smem", &mut current.shared_bytes),
            (" bytes stack frame", &mut current.stack_bytes),
            (" bytes spill stores", &mut current.spill_stores),
            (" bytes spill loads", &mut current.spill_loads),
        ] {
            if let Some(n) = number_before(line, phrase) {
                *field = n;
            }
        }
    }
    kernels
}

/// The number just before `phrase` in `line` ("…, 128 bytes smem" → 128).
fn number_before(line: &str, phrase: &str) -> Option<u32> {
    let end = line.find(phrase)?;
    line[..end].rsplit([' ', ',', ':']).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_verbose_report() {
        let report = "ptxas info    : 0 bytes gmem\n\
            ptxas info    : Compiling entry function 'a' for 'sm_80'\n\
            ptxas info    : Function properties for a\n\
            \x20   8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
            ptxas info    : Used 40 registers, used 1 barriers, 128 bytes smem, 400 bytes cmem[0]\n\
            ptxas info    : Compiling entry function 'b' for 'sm_80'\n\
            ptxas info    : Function properties for b\n\
            \x20   0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
            ptxas info    : Used 12 registers, used 0 barriers, 380 bytes cmem[0]\n";
        let got = parse(report);
        let want = [
            Resources {
                kernel: "a".into(),
                registers: 40,
                shared_bytes: 128,
                stack_bytes: 8,
                spill_stores: 4,
                spill_loads: 12,
            },
            Resources { kernel: "b".into(), registers: 12, ..Resources::default() },
        ];
        assert_eq!(got, want);
        assert!(got[0].spills() && !got[1].spills());
    }
}
