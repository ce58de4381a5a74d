//! The CUDA backend. So far it only finds out whether CUDA can be used here; the kernels
//! and the tensor backend come next. cudarc loads the CUDA libraries by soname at run time
//! and panics when one is missing, so every entry point probes first.

use std::fmt;

/// Why CUDA cannot be used, or which GPU was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Availability {
    /// The driver library (libcuda) is not installed: no NVIDIA driver on this machine.
    NoDriver,
    /// The driver is present but reports no usable device.
    NoDevice(String),
    /// NVRTC (libnvrtc.so.13) is missing: kernels cannot be compiled.
    NoNvrtc,
    Available { devices: usize },
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Availability::NoDriver => f.write_str("no NVIDIA driver (libcuda) on this machine"),
            Availability::NoDevice(why) => write!(f, "the NVIDIA driver reports no usable device ({why})"),
            Availability::NoNvrtc => {
                f.write_str("NVRTC (libnvrtc.so.13) not found; put the CUDA 13.0 wheel's lib folder on LD_LIBRARY_PATH")
            }
            Availability::Available { devices } => write!(f, "{devices} CUDA device(s)"),
        }
    }
}

/// Probes the driver, a device and NVRTC, without panicking when any of them is absent.
pub fn probe() -> Availability {
    // SAFETY: the presence checks only try to dlopen the library; they call nothing in it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Availability::NoDriver;
    }
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => {}
        Ok(_) => return Availability::NoDevice("device count is 0".into()),
        Err(e) => return Availability::NoDevice(e.to_string()),
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Availability::NoNvrtc;
    }
    Availability::Available { devices: cudarc::driver::CudaContext::device_count().unwrap_or(0) as usize }
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_never_panics() {
        let a = super::probe();
        println!("CUDA: {a}");
    }
}
