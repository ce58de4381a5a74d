//! The GPU side of `Executor`: one device, its default stream, and the kernel modules, each
//! compiled by NVRTC for the device's own architecture on first use (cubin, cached on disk)
//! and kept loaded; and the cuBLAS handle of the GEMMs. Everything runs on the one stream, in
//! order, so cudarc's cross-stream event tracking never comes into play.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use infinity_runtime::Error;

use crate::error::{self, Result};
use crate::exec::Grid;
use crate::gemm::{GemmArgs, GemmType, Transpose};
use crate::kernels::{Kernel, Source};
use crate::nvrtc::{Compiler, Output};
use crate::toolkit::Toolkit;
use crate::{Availability, probe};

pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// `sm_XY` of the device: the cubins are built for exactly this architecture.
    arch: String,
    compiler: Compiler,
    modules: Mutex<HashMap<Source, Arc<CudaModule>>>,
    functions: Mutex<HashMap<Kernel, CudaFunction>>,
    /// The cuBLAS handle, bound to `stream`; made by the first GEMM, so that libcublas is
    /// needed only by processes that multiply.
    blas: Mutex<Option<CudaBlas>>,
}

impl Gpu {
    pub(crate) fn new(ordinal: usize) -> Result<Gpu> {
        match probe() {
            Availability::Available { devices } if ordinal < devices => {}
            Availability::Available { devices } => {
                return Err(Error::invalid("cuda", &[devices], format!("no GPU {ordinal}")));
            }
            other => return Err(error::unavailable(other)),
        }
        let toolkit = Toolkit::locate()?;
        let ctx = CudaContext::new(ordinal).map_err(error::driver(format!("opening cuda:{ordinal}")))?;
        let (major, minor) = ctx.compute_capability().map_err(error::driver("reading the compute capability"))?;
        let stream = ctx.default_stream();
        Ok(Gpu {
            ctx,
            stream,
            arch: format!("sm_{major}{minor}"),
            compiler: Compiler::new(toolkit),
            modules: Mutex::default(),
            functions: Mutex::default(),
            blas: Mutex::default(),
        })
    }

    pub(crate) fn name(&self) -> String {
        let device = self.ctx.name().unwrap_or_else(|_| "unnamed GPU".to_string());
        format!("cuda:{} ({device}, {})", self.ctx.ordinal(), self.arch)
    }

    /// A new block of `bytes` (contents unspecified: every caller writes it first).
    pub(crate) fn alloc(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        // SAFETY: u8 has no invalid bit patterns, and the pool's callers fill the block (a copy
        // or zeros) before any kernel reads it.
        unsafe { self.stream.alloc::<u8>(bytes) }.map_err(error::driver(format!("allocating {bytes} bytes")))
    }

    /// Copies `bytes` into the start of `slice`.
    pub(crate) fn write(&self, slice: &mut CudaSlice<u8>, bytes: &[u8]) -> Result<()> {
        self.stream
            .memcpy_htod(bytes, &mut slice.slice_mut(..bytes.len()))
            .map_err(error::driver(format!("copying {} bytes to the GPU", bytes.len())))
    }

    pub(crate) fn zero(&self, slice: &mut CudaSlice<u8>) -> Result<()> {
        self.stream.memset_zeros(slice).map_err(error::driver("zeroing GPU memory"))
    }

    /// The first `len` bytes of `slice`, after waiting for the stream, so that errors of
    /// earlier launches surface here.
    pub(crate) fn download(&self, slice: &CudaSlice<u8>, len: usize) -> Result<Vec<u8>> {
        let bytes = self.stream.clone_dtoh(&slice.slice(..len)).map_err(error::driver("copying from the GPU"))?;
        self.synchronize()?;
        Ok(bytes)
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(error::driver("waiting for the GPU"))
    }

    /// The stream every launch of this GPU goes to, for libraries that take it raw (NCCL).
    pub(crate) fn raw_stream(&self) -> cudarc::driver::sys::CUstream {
        self.stream.cu_stream()
    }

    /// Makes this GPU's context the calling thread's current one (NCCL creates its
    /// communicator on the current device).
    pub(crate) fn bind_to_thread(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(error::driver("binding the context to the thread"))
    }

    pub(crate) fn address(&self, slice: &CudaSlice<u8>) -> u64 {
        slice.device_ptr(&self.stream).0
    }

    pub(crate) fn address_mut(&self, slice: &mut CudaSlice<u8>) -> u64 {
        slice.device_ptr_mut(&self.stream).0
    }

    fn function(&self, kernel: Kernel) -> Result<CudaFunction> {
        let mut functions = self.functions.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = functions.get(&kernel) {
            return Ok(f.clone());
        }
        let f = self
            .module(kernel.source())?
            .load_function(kernel.name())
            .map_err(error::driver(format!("finding {} in its module", kernel.name())))?;
        functions.insert(kernel, f.clone());
        Ok(f)
    }

    fn module(&self, source: Source) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = modules.get(&source) {
            return Ok(m.clone());
        }
        let cubin = self.compiler.compile(source, &self.arch, Output::Cubin)?;
        let module = self
            .ctx
            .load_module(Ptx::from_binary(cubin))
            .map_err(error::driver(format!("loading {}", source.file_name())))?;
        modules.insert(source, module.clone());
        Ok(module)
    }

    pub(crate) fn launch<P: DeviceRepr>(&self, kernel: Kernel, grid: Grid, params: &P) -> Result<()> {
        let f = self.function(kernel)?;
        let config =
            LaunchConfig { grid_dim: (grid.blocks, 1, 1), block_dim: (grid.threads, 1, 1), shared_mem_bytes: 0 };
        let mut launch = self.stream.launch_builder(&f);
        launch.arg(params);
        // SAFETY: `params` is the kernel's own parameter struct (a `KernelHandle` ties them)
        // and the caller of `Executor::launch` vouches for the addresses in it.
        unsafe { launch.launch(config) }.map_err(error::driver(format!("launching {}", kernel.name())))?;
        Ok(())
    }

    /// Queues one `cublasGemmStridedBatchedEx` call on the stream, after the kernels launched
    /// before it.
    ///
    /// # Safety
    /// Every address in `args` must come from a view of a live tensor of this GPU that holds
    /// every element the call addresses, C's written by nothing else meanwhile.
    pub(crate) unsafe fn gemm(&self, args: &GemmArgs) -> Result<()> {
        let mut blas = self.blas.lock().unwrap_or_else(PoisonError::into_inner);
        let blas = match &mut *blas {
            Some(blas) => blas,
            slot @ None => slot.insert(self.new_blas()?),
        };
        // cuBLAS launches into the context current on the calling thread.
        self.ctx.bind_to_thread().map_err(error::driver("binding the GPU's context"))?;
        let op = |t| match t {
            Transpose::No => cublasOperation_t::CUBLAS_OP_N,
            Transpose::Yes => cublasOperation_t::CUBLAS_OP_T,
        };
        let dtype = |t| match t {
            GemmType::Bf16 => cudaDataType::CUDA_R_16BF,
            GemmType::F32 => cudaDataType::CUDA_R_32F,
        };
        let (a, b, c) = (&args.a, &args.b, &args.c);
        // SAFETY: the handle is live and bound to this GPU's stream; the caller vouches for
        // the addresses; alpha and beta are f32 on the host, as CUBLAS_COMPUTE_32F reads them
        // in the default pointer mode.
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *blas.handle(),
                op(args.transa),
                op(args.transb),
                args.m,
                args.n,
                args.k,
                (&args.alpha as *const f32).cast::<c_void>(),
                a.addr as *const c_void,
                dtype(a.dtype),
                a.ld,
                a.stride,
                b.addr as *const c_void,
                dtype(b.dtype),
                b.ld,
                b.stride,
                (&args.beta as *const f32).cast::<c_void>(),
                c.addr as *mut c_void,
                dtype(c.dtype),
                c.ld,
                c.stride,
                args.batch,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(error::cublas(format!("a {}×{}×{} GEMM, batch {}", args.m, args.n, args.k, args.batch)))
    }

    /// A cuBLAS handle on this GPU's stream, or an unavailable-device error when the library is
    /// missing (cudarc would panic on the first call into it).
    fn new_blas(&self) -> Result<CudaBlas> {
        // SAFETY: the presence check only tries to dlopen the library; it calls nothing in it.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(error::no_cublas());
        }
        CudaBlas::new(self.stream.clone()).map_err(error::cublas("creating a handle"))
    }
}
