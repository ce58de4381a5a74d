//! The GPU build of every kernel, checked without a GPU: NVRTC compiles each kernel file for
//! compute_80 and compute_90a, ptxas assembles the PTX for sm_80 and sm_90a, and the test
//! prints every kernel's registers / shared memory / stack / spills and fails on any spill.
//! Also: the on-disk compilation cache is used, and a cubin (what a GPU loads) is produced.
//! Without NVRTC or ptxas these print a SKIP line (CI sets INFINITY_CUDA_REQUIRE_TOOLKIT, which
//! makes them fail instead).

use std::io::Write;

use infinity_cuda::kernels::{Kernel, Source};
use infinity_cuda::nvrtc::{Compiler, Output};
use infinity_cuda::ptxas::{Resources, assemble};
use infinity_cuda::testing::toolkit;

/// (NVRTC's virtual architecture, ptxas's real one): Ampere, and Hopper with its
/// architecture-specific features.
const TARGETS: [(&str, &str); 2] = [("compute_80", "sm_80"), ("compute_90a", "sm_90a")];

#[test]
fn every_kernel_assembles_without_spills() {
    let Some(toolkit) = toolkit("NVRTC + ptxas check of the kernels", true) else { return };
    let compiler = Compiler::new(toolkit.clone());
    let mut rows: Vec<(&str, &str, Resources)> = Vec::new();
    for (virtual_arch, arch) in TARGETS {
        for source in Source::ALL {
            let ptx = compiler.compile(source, virtual_arch, Output::Ptx).unwrap_or_else(|e| panic!("{e}"));
            let text = String::from_utf8_lossy(&ptx);
            for kernel in source.kernels() {
                assert!(
                    text.contains(&format!(".entry {}(", kernel.name())),
                    "{} has no entry point {} in its PTX",
                    source.file_name(),
                    kernel.name()
                );
            }
            let report = assemble(&toolkit, source, &ptx, arch).unwrap_or_else(|e| panic!("{e}"));
            rows.extend(report.into_iter().map(|r| (source.file_name(), arch, r)));
        }
    }

    let mut table = format!(
        "{:<16} {:<24} {:<7} {:>9} {:>11} {:>11} {:>12} {:>11}\n",
        "file", "kernel", "arch", "registers", "smem bytes", "stack bytes", "spill stores", "spill loads"
    );
    for (file, arch, r) in &rows {
        table += &format!(
            "{file:<16} {:<24} {arch:<7} {:>9} {:>11} {:>11} {:>12} {:>11}\n",
            r.kernel, r.registers, r.shared_bytes, r.stack_bytes, r.spill_stores, r.spill_loads
        );
    }
    // Straight to stderr, past the harness's capture: CI's log shows the table every run.
    let _ = std::io::stderr().write_all(table.as_bytes());

    for &kernel in Kernel::ALL {
        let reported = rows.iter().filter(|(_, _, r)| r.kernel == kernel.name()).count();
        assert_eq!(reported, TARGETS.len(), "{} reported {reported} times", kernel.name());
    }
    let spilling: Vec<String> =
        rows.iter().filter(|(_, _, r)| r.spills()).map(|(_, arch, r)| format!("{} on {arch}", r.kernel)).collect();
    assert!(spilling.is_empty(), "register spills in: {}", spilling.join(", "));
}

#[test]
fn compilations_are_cached_on_disk() {
    let Some(toolkit) = toolkit("NVRTC compilation cache", false) else { return };
    let dir = std::env::temp_dir().join(format!("infinity-cuda-cache-test-{}", std::process::id()));
    let compiler = Compiler::new(toolkit).with_cache(&dir);
    let cubin = compiler.compile(Source::Rng, "sm_80", Output::Cubin).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&cubin[..4], b"\x7fELF", "a cubin is an ELF image");

    let stored: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(stored.len(), 1, "one cache entry: {stored:?}");
    let name = stored[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("rng-sm_80-") && name.ends_with(".cubin"), "{name}");
    assert_eq!(std::fs::read(&stored[0]).unwrap(), cubin);

    // A second compilation is answered from the file, whatever it holds.
    std::fs::write(&stored[0], b"from the cache").unwrap();
    assert_eq!(compiler.compile(Source::Rng, "sm_80", Output::Cubin).unwrap(), b"from the cache");
    std::fs::remove_dir_all(&dir).unwrap();
}
