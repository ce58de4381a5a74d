//! Where the CUDA compiler pieces are: the headers NVRTC needs (cuda_bf16.h is not built into
//! it) and ptxas. CI installs them from pinned PyPI wheels (.ci/tools/cuda-wheels.sh) and names
//! the folder in INFINITY_CUDA_HOME; a machine with a regular CUDA install is found through
//! CUDA_HOME, CUDA_PATH or /usr/local/cuda.

use std::path::{Path, PathBuf};

use crate::error::{self, Result};

/// The variables and the default location searched, in order.
const HOME_VARS: [&str; 3] = ["INFINITY_CUDA_HOME", "CUDA_HOME", "CUDA_PATH"];
const DEFAULT_HOME: &str = "/usr/local/cuda";

/// A CUDA folder with `include/` (and, for the spill checks, `bin/ptxas`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolkit {
    home: PathBuf,
}

impl Toolkit {
    /// The first candidate folder whose `include/` holds the CUDA headers.
    pub fn locate() -> Result<Toolkit> {
        let candidates: Vec<PathBuf> = HOME_VARS
            .iter()
            .filter_map(std::env::var_os)
            .map(PathBuf::from)
            .chain([PathBuf::from(DEFAULT_HOME)])
            .collect();
        candidates
            .iter()
            .find(|home| home.join("include/cuda_bf16.h").is_file())
            .map(|home| Toolkit { home: home.clone() })
            .ok_or_else(|| {
                error::no_toolkit(candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
            })
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn include_dir(&self) -> PathBuf {
        self.home.join("include")
    }

    /// `bin/ptxas`, when this toolkit has one.
    pub fn ptxas(&self) -> Option<PathBuf> {
        Some(self.home.join("bin/ptxas")).filter(|p| p.is_file())
    }
}

/// Whether libnvrtc.so.13 can be loaded. cudarc panics on the first call into a library that
/// is missing, so everything that compiles asks this first.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library; calls nothing in it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}
