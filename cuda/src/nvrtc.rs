//! NVRTC compilation of one kernel file to PTX (for the ptxas checks) or to a cubin (for the
//! GPU), with common.cuh handed over from memory and the CUDA headers from the toolkit. Results
//! are cached on disk under a key that covers everything that changes the output: NVRTC's
//! version, the architecture, the options and the source text of the file and its header.

use std::ffi::{CString, c_char};
use std::path::PathBuf;
use std::ptr;

use cudarc::nvrtc::sys::{self, nvrtcProgram, nvrtcResult};
use infinity_runtime::io::write_atomically;

use crate::Availability;
use crate::error::{self, Result};
use crate::kernels::{COMMON_HEADER, Source};
use crate::toolkit::{Toolkit, nvrtc_present};

/// What NVRTC produces: PTX text for a virtual architecture (`compute_80`), or a cubin of
/// machine code for a real one (`sm_90`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Ptx,
    Cubin,
}

impl Output {
    fn extension(self) -> &'static str {
        match self {
            Output::Ptx => "ptx",
            Output::Cubin => "cubin",
        }
    }
}

/// NVRTC with a toolkit's headers and an optional on-disk cache.
#[derive(Clone, Debug)]
pub struct Compiler {
    toolkit: Toolkit,
    cache: Option<PathBuf>,
}

impl Compiler {
    /// Caches in INFINITY_CUDA_CACHE, else $XDG_CACHE_HOME/infinity-cuda, else
    /// ~/.cache/infinity-cuda (no cache when none of them is set).
    pub fn new(toolkit: Toolkit) -> Self {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let cache = var("INFINITY_CUDA_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("infinity-cuda")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/infinity-cuda")));
        Compiler { toolkit, cache }
    }

    /// The same compiler, caching in `dir` instead.
    pub fn with_cache(self, dir: impl Into<PathBuf>) -> Self {
        Compiler { cache: Some(dir.into()), ..self }
    }

    /// Compiles `source` for `arch` (`compute_XX[a]` for PTX, `sm_XX[a]` for a cubin), or
    /// reads the result of an identical compilation from the cache.
    pub fn compile(&self, source: Source, arch: &str, output: Output) -> Result<Vec<u8>> {
        if !nvrtc_present() {
            return Err(error::unavailable(Availability::NoNvrtc));
        }
        let options = vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".to_string(),
            format!("--include-path={}", self.toolkit.include_dir().display()),
        ];
        let (major, minor) = version(source, arch)?;
        let mut key = Key(FNV_OFFSET);
        for part in [&major.to_le_bytes()[..], &minor.to_le_bytes(), output.extension().as_bytes()] {
            key.add(part);
        }
        for part in options.iter().map(String::as_str).chain([COMMON_HEADER, source.text()]) {
            key.add(part.as_bytes());
        }
        let stem = source.file_name().trim_end_matches(".cu");
        let name = format!("{stem}-{arch}-{:016x}.{}", key.0, output.extension());
        let cached = self.cache.as_ref().map(|dir| dir.join(name));
        if let Some(bytes) = cached.as_ref().and_then(|path| std::fs::read(path).ok()) {
            return Ok(bytes);
        }
        let bytes = run(source, arch, output, &options)?;
        if let Some(path) = cached {
            // The cache only saves time: a read-only or full disk must not fail the compilation.
            let _ = path.parent().map(std::fs::create_dir_all);
            let _ = write_atomically(&path, |w| w.write_all(&bytes));
        }
        Ok(bytes)
    }
}

/// A cache key: 64-bit FNV-1a, whose value never changes between Rust releases (unlike std's
/// DefaultHasher), so cache names stay valid. Each part is preceded by its length, so that
/// moving bytes from one part to the next changes the key.
struct Key(u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl Key {
    fn add(&mut self, part: &[u8]) {
        self.0 = fnv1a(fnv1a(self.0, &(part.len() as u64).to_le_bytes()), part);
    }
}

fn version(source: Source, arch: &str) -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked by the caller); the function writes two ints.
    check(unsafe { sys::nvrtcVersion(&mut major, &mut minor) }, source, arch, "nvrtcVersion")?;
    Ok((major, minor))
}

fn check(status: nvrtcResult, source: Source, arch: &str, step: &'static str) -> Result<()> {
    match status {
        nvrtcResult::NVRTC_SUCCESS => Ok(()),
        _ => Err(error::compile(source.file_name(), arch, step, format!("{status:?}"))),
    }
}

/// Destroys the program however compilation ends.
struct Program(nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed only here.
        unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

fn run(source: Source, arch: &str, output: Output, options: &[String]) -> Result<Vec<u8>> {
    let c = |s: &str| CString::new(s).expect("kernel sources and options contain no NUL");
    let (text, name) = (c(source.text()), c(source.file_name()));
    let (header, header_name) = (c(COMMON_HEADER), c("common.cuh"));
    let mut raw = ptr::null_mut();
    // SAFETY: every pointer refers to a NUL-terminated string that outlives the program.
    let created = unsafe {
        sys::nvrtcCreateProgram(&mut raw, text.as_ptr(), name.as_ptr(), 1, &header.as_ptr(), &header_name.as_ptr())
    };
    check(created, source, arch, "nvrtcCreateProgram")?;
    let program = Program(raw);

    let options: Vec<CString> = options.iter().map(|o| c(o)).collect();
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `option_ptrs` holds `options.len()` valid strings.
    let compiled = unsafe { sys::nvrtcCompileProgram(program.0, option_ptrs.len() as i32, option_ptrs.as_ptr()) };
    if compiled != nvrtcResult::NVRTC_SUCCESS {
        let log = read(&program, sys::nvrtcGetProgramLogSize, sys::nvrtcGetProgramLog)
            .map(|log| String::from_utf8_lossy(&log).trim_end_matches('\0').to_string())
            .unwrap_or_else(|status| format!("{status:?} (and no log)"));
        return Err(error::compile(source.file_name(), arch, "compile", log));
    }
    let result = match output {
        Output::Ptx => read(&program, sys::nvrtcGetPTXSize, sys::nvrtcGetPTX).map(|mut ptx| {
            // PTX comes NUL-terminated; keep the text only.
            ptx.pop_if(|b| *b == 0);
            ptx
        }),
        Output::Cubin => read(&program, sys::nvrtcGetCUBINSize, sys::nvrtcGetCUBIN),
    };
    result.map_err(|status| error::compile(source.file_name(), arch, "reading the output", format!("{status:?}")))
}

type SizeFn = unsafe fn(nvrtcProgram, *mut usize) -> nvrtcResult;
type ReadFn = unsafe fn(nvrtcProgram, *mut c_char) -> nvrtcResult;

/// One of NVRTC's size-then-copy outputs (log, PTX, cubin).
fn read(program: &Program, size: SizeFn, copy: ReadFn) -> std::result::Result<Vec<u8>, nvrtcResult> {
    let mut len = 0;
    // SAFETY: `program` is a live program; `size` writes one usize.
    let status = unsafe { size(program.0, &mut len) };
    if status != nvrtcResult::NVRTC_SUCCESS {
        return Err(status);
    }
    let mut out = vec![0u8; len];
    // SAFETY: `out` has the `len` bytes NVRTC asked for.
    let status = unsafe { copy(program.0, out.as_mut_ptr().cast()) };
    if status != nvrtcResult::NVRTC_SUCCESS {
        return Err(status);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_is_length_prefixed_fnv1a() {
        // Published FNV-1a 64 test vector.
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x85944171f73967e8);
        let (mut a, mut b) = (Key(FNV_OFFSET), Key(FNV_OFFSET));
        a.add(b"ab");
        a.add(b"c");
        b.add(b"a");
        b.add(b"bc");
        assert_ne!(a.0, b.0);
    }
}
