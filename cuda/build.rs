//! Builds the CPU shim: every kernel source in kernels/*.cu, compiled by g++ as C++20 with
//! kernels/shim/cuda_shim.h force-included, plus the shim's fiber scheduler, into one static
//! library whose `infinity_shim_<kernel>` launchers src/exec.rs calls. NVRTC compiles the same
//! sources for the GPU at run time (src/nvrtc.rs); nothing here needs CUDA.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let kernels = root.join("kernels");
    println!("cargo:rerun-if-changed={}", kernels.display());

    let mut sources: Vec<PathBuf> = std::fs::read_dir(&kernels)
        .expect("cuda/kernels is readable")
        .map(|entry| entry.expect("cuda/kernels is readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cu"))
        .collect();
    sources.sort();

    cc::Build::new()
        .cpp(true)
        .std("c++20")
        // The emulator should be fast in every profile, and its debug info is never read.
        .opt_level(2)
        .debug(false)
        .warnings(true)
        .extra_warnings(true)
        // The kernels round each float operation as the CPU reference does; FMA contraction
        // would break the exact comparisons.
        .flag("-ffp-contract=off")
        // Kernels read bf16 tiles as 32- and 128-bit words, as CUDA code does.
        .flag("-fno-strict-aliasing")
        // `#pragma unroll` is for NVRTC.
        .flag("-Wno-unknown-pragmas")
        .flag("-include")
        .flag(kernels.join("shim/cuda_shim.h").to_str().expect("the source path is UTF-8"))
        // .cu is not a suffix g++ knows.
        .flag("-x")
        .flag("c++")
        .files(&sources)
        .file(kernels.join("shim/runtime.cpp"))
        .file(kernels.join("shim/selftest.cpp"))
        .compile("infinity_cuda_shim");
}
