//! `Executor`: where kernels run, and the runtime's [`Accelerator`] for the tensors in its
//! memory. `Shim` runs the kernels' C++ build on the CPU (always available; what CI tests),
//! `Cuda` runs their NVRTC build on a GPU. Both take the same launches and the same tensors, so
//! one test body checks both. Memory moves only through `Tensor::to_device` (this executor's
//! `upload` / `download`); launchers get checked views through `view` / `view_mut`.

use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use cudarc::driver::DeviceRepr;
use infinity_runtime::{
    Accelerator, CpuStorage, DType, Device, DeviceName, DeviceStorage, Element, Error, Layout, Storage, Tensor,
    with_dtype,
};

use crate::alloc::{Buffer, Memory, MemoryStats, Pool, size_class};
use crate::error::{self, Result};
use crate::gpu::Gpu;
use crate::kernels::KernelHandle;
use crate::view::{DevPtr, View};

/// The byte the shim fills undefined memory with: NaN in f32 and bf16, −1 in i32, 255 in u8.
pub const POISON: u8 = 0xff;

/// How a new block's bytes start.
enum Init<'a> {
    Bytes(&'a [u8]),
    Zeros,
    /// Undefined: [`POISON`] on the shim, left as found on a GPU.
    Poison,
}

pub struct Executor {
    backend: Backend,
    /// Where its tensors' memory comes from and goes back to.
    pool: Arc<Pool>,
    /// Work items issued so far (see [`Executor::launches`]).
    launches: AtomicU64,
    /// Itself, for the tensors it makes: each holds its device.
    this: Weak<Executor>,
}

pub(crate) enum Backend {
    Shim,
    /// Boxed: the GPU's state (context, stream, module and cuBLAS caches) is much larger than
    /// the shim's nothing.
    Cuda(Box<Gpu>),
}

/// A one-dimensional launch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grid {
    pub blocks: u32,
    pub threads: u32,
}

/// Mirror of `shim::Grid` in kernels/shim/cuda_shim.h.
#[repr(C)]
pub(crate) struct ShimGrid {
    blocks: [u32; 3],
    threads: [u32; 3],
}

/// Blocks of a grid-stride launch under the shim. Its blocks run one after another, so more
/// would only cost time; this few also makes the kernels' grid-stride loops wrap in tests.
const SHIM_MAX_BLOCKS: usize = 4;
/// Enough blocks to fill any current GPU several times over; grid-stride loops do the rest.
const GPU_MAX_BLOCKS: usize = 1 << 16;

/// The kernels index in 32 bits.
const MAX_OFFSET: usize = i32::MAX as usize;

impl Executor {
    /// The CPU shim: always available.
    pub fn shim() -> Arc<Executor> {
        Self::new(Backend::Shim)
    }

    /// The GPU `ordinal` when CUDA can be used (see [`crate::probe`]).
    pub fn cuda(ordinal: usize) -> Result<Arc<Executor>> {
        Ok(Self::new(Backend::Cuda(Box::new(Gpu::new(ordinal)?))))
    }

    /// The executor that a `--device` name asks for: none for the CPU.
    pub fn named(name: DeviceName) -> Result<Option<Arc<Executor>>> {
        match name {
            DeviceName::Cpu => Ok(None),
            DeviceName::Shim => Ok(Some(Executor::shim())),
            DeviceName::Cuda(i) => Executor::cuda(i).map(Some),
        }
    }

    fn new(backend: Backend) -> Arc<Executor> {
        Arc::new_cyclic(|this| Executor {
            backend,
            pool: Arc::default(),
            launches: AtomicU64::new(0),
            this: this.clone(),
        })
    }

    /// This executor as the device of its tensors.
    pub fn device(&self) -> Device {
        Device::Accelerator(self.accelerator())
    }

    fn accelerator(&self) -> Arc<dyn Accelerator> {
        // Every executor is made inside an Arc (`new`), which is alive while `&self` is.
        self.this.upgrade().expect("an executor lives in the Arc it was made in")
    }

    /// The executor whose memory holds `t`; an error names the device it is on otherwise.
    pub fn of(op: &'static str, t: &Tensor) -> Result<Arc<Executor>> {
        Self::on(&t.device()).ok_or_else(|| {
            Error::invalid(op, t.shape(), format!("runs on a CUDA executor, but the tensor is on {}", t.device()))
        })
    }

    /// The executor `device` is; `None` for the CPU.
    pub fn on(device: &Device) -> Option<Arc<Executor>> {
        let any: Arc<dyn std::any::Any + Send + Sync> = device.accelerator()?.clone();
        any.downcast::<Executor>().ok()
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn name(&self) -> String {
        match &self.backend {
            Backend::Shim => "CPU shim".to_string(),
            Backend::Cuda(gpu) => gpu.name(),
        }
    }

    /// Memory in use, its peak and the allocator's cache, in bytes.
    pub fn memory(&self) -> MemoryStats {
        self.pool.stats()
    }

    /// Kernels, GEMMs and zero fills issued since the executor started: what a small scale of
    /// a generation costs on a GPU is mostly these launches, not their arithmetic.
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }

    /// Counts one kernel, GEMM or zero fill.
    pub(crate) fn count_launch(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts a new peak measurement from what is in use now.
    pub fn reset_peak(&self) {
        self.pool.reset_peak();
    }

    /// Frees the cached blocks no tensor uses.
    pub fn empty_cache(&self) {
        self.pool.empty_cache();
    }

    /// Waits until every launch so far has finished (for timing); the shim runs synchronously.
    pub fn synchronize(&self) -> Result<()> {
        match &self.backend {
            Backend::Shim => Ok(()),
            Backend::Cuda(gpu) => gpu.synchronize(),
        }
    }

    /// A block of at least `bytes` from the pool, its first `bytes` set as `init` says.
    fn block(&self, bytes: usize, init: Init) -> Result<crate::alloc::Buffer> {
        let class = size_class(bytes);
        let reused = self.pool.reuse(class);
        let (block_class, was_reused) = reused.as_ref().map_or((class, false), |&(_, found)| (found, true));
        let memory = match (&self.backend, reused.map(|(memory, _)| memory)) {
            (Backend::Shim, reused) => {
                let mut words = match reused {
                    Some(Memory::Host(words)) => words,
                    _ => vec![0u128; class / 16].into_boxed_slice(),
                };
                let fill = bytemuck::cast_slice_mut::<u128, u8>(&mut words);
                match init {
                    Init::Bytes(src) => fill[..src.len()].copy_from_slice(src),
                    Init::Zeros => {
                        self.count_launch();
                        fill.fill(0)
                    }
                    Init::Poison => fill.fill(POISON),
                }
                Memory::Host(words)
            }
            (Backend::Cuda(gpu), reused) => {
                let mut slice = match reused {
                    Some(Memory::Cuda(slice)) => slice,
                    _ => gpu.alloc(class)?,
                };
                match init {
                    Init::Bytes(src) => gpu.write(&mut slice, src)?,
                    Init::Zeros => {
                        self.count_launch();
                        gpu.zero(&mut slice)?
                    }
                    // A launch of its own per output would double the launches of a forward.
                    Init::Poison => {}
                }
                Memory::Cuda(slice)
            }
        };
        Ok(self.pool.adopt(memory, block_class, was_reused))
    }

    /// A tensor of this executor over `buffer`, seen through `layout`.
    fn adopt(&self, buffer: Buffer, dtype: DType, layout: Layout) -> Result<Tensor> {
        let len = buffer.bytes() / dtype.size_in_bytes();
        let storage = DeviceStorage::new(buffer, len, dtype, self.accelerator());
        Tensor::from_storage(Arc::new(Storage::Device(storage)), layout)
    }

    /// This executor's buffer of `t`, or an error naming where `t` lives.
    fn buffer<'t>(&self, op: &'static str, t: &'t Tensor) -> Result<&'t Buffer> {
        let buffer = t.storage().on_device().and_then(|s| s.buffer::<Buffer>());
        buffer.filter(|b| b.is_from(&self.pool)).ok_or_else(|| self.foreign(op, t))
    }

    /// A contiguous tensor whose elements are undefined until the caller writes them (a KV
    /// cache, a buffer filled piece by piece); on the shim every byte is [`POISON`].
    pub fn empty(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.tensor("empty", shape, dtype, Init::Poison)
    }

    /// A contiguous tensor of zeros, filled on the device.
    pub fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.tensor("zeros", shape, dtype, Init::Zeros)
    }

    /// The output of kernel `op`, which writes every element: undefined until then (poisoned
    /// on the shim, so that a kernel that misses an element fails its tests there).
    pub(crate) fn output(&self, op: &'static str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.tensor(op, shape, dtype, Init::Poison)
    }

    /// The output of kernel `op`, which adds into it: zeros.
    pub(crate) fn accumulator(&self, op: &'static str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        self.tensor(op, shape, dtype, Init::Zeros)
    }

    /// A contiguous tensor, nonempty and below 2^31 elements as the kernels need (checked
    /// before anything is allocated).
    fn tensor(&self, op: &'static str, shape: &[usize], dtype: DType, init: Init) -> Result<Tensor> {
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).unwrap_or(usize::MAX);
        if numel == 0 || numel > MAX_OFFSET {
            return Err(Error::invalid(op, shape, "the kernels write nonempty outputs below 2^31 elements"));
        }
        let buffer = self.block(numel * dtype.size_in_bytes(), init)?;
        self.adopt(buffer, dtype, Layout::contiguous(shape))
    }

    fn foreign(&self, op: &'static str, t: &Tensor) -> Error {
        Error::invalid(op, t.shape(), format!("the tensor is on {}, not on {}", t.device(), self.name()))
    }

    /// `t` as kernel `op` reads it: dtype `T`, rank `N`, nonempty, offsets below 2^31.
    pub(crate) fn view<T: Element, const N: usize>(&self, op: &'static str, t: &Tensor) -> Result<View<T, N>> {
        checked_view(op, t, self.address(op, t)?, N)
    }

    /// As [`Executor::view`], for a tensor the kernel writes.
    pub(crate) fn view_mut<T: Element, const N: usize>(&self, op: &'static str, t: &mut Tensor) -> Result<View<T, N>> {
        let addr = self.address_mut(op, t)?;
        checked_view(op, t, addr, N)
    }

    /// As [`Executor::view`] for a tensor of rank 0 to `N`, seen as rank `N` with leading
    /// sizes 1 (stride 0): NumPy's right alignment, for the kernels that take any rank (a
    /// scalar is one element).
    pub(crate) fn view_padded<T: Element, const N: usize>(&self, op: &'static str, t: &Tensor) -> Result<View<T, N>> {
        checked_view(op, t, self.address(op, t)?, 0)
    }

    /// As [`Executor::view_padded`], for a tensor the kernel writes.
    pub(crate) fn view_mut_padded<T: Element, const N: usize>(
        &self,
        op: &'static str,
        t: &mut Tensor,
    ) -> Result<View<T, N>> {
        let addr = self.address_mut(op, t)?;
        checked_view(op, t, addr, 0)
    }

    pub(crate) fn address(&self, op: &'static str, t: &Tensor) -> Result<u64> {
        match (self.buffer(op, t)?.memory(), &self.backend) {
            (Memory::Host(words), Backend::Shim) => Ok(words.as_ptr() as u64),
            (Memory::Cuda(slice), Backend::Cuda(gpu)) => Ok(gpu.address(slice)),
            _ => Err(self.foreign(op, t)),
        }
    }

    pub(crate) fn address_mut(&self, op: &'static str, t: &mut Tensor) -> Result<u64> {
        self.buffer(op, t)?;
        if t.storage_mut().is_none() {
            return Err(Error::invalid(
                op,
                t.shape(),
                "the tensor shares its buffer with a view; a kernel writes only memory no other tensor reads",
            ));
        }
        let buffer = t.storage_mut().and_then(Storage::on_device_mut).and_then(|s| s.buffer_mut::<Buffer>());
        let addr = match (buffer.map(Buffer::memory_mut), &self.backend) {
            (Some(Memory::Host(words)), Backend::Shim) => Some(words.as_mut_ptr() as u64),
            (Some(Memory::Cuda(slice)), Backend::Cuda(gpu)) => Some(gpu.address_mut(slice)),
            _ => None,
        };
        addr.ok_or_else(|| self.foreign(op, t))
    }

    /// A grid-stride launch over `elements` with `threads` per block.
    pub(crate) fn grid_stride(&self, elements: usize, threads: u32) -> Grid {
        let max = match &self.backend {
            Backend::Shim => SHIM_MAX_BLOCKS,
            Backend::Cuda(_) => GPU_MAX_BLOCKS,
        };
        // Launchers only pass nonempty views of fewer than 2^31 elements.
        Grid { blocks: elements.div_ceil(threads as usize).clamp(1, max) as u32, threads }
    }

    /// Runs the kernel of `handle` with `params` and waits for the shim (the GPU runs
    /// asynchronously; its errors surface at the next download).
    ///
    /// # Safety
    /// Every address in `params` must come from a view of a live tensor of this executor taken
    /// for this launch (`view_mut` for those the kernel writes), with the sizes and strides the
    /// kernel will use.
    pub(crate) unsafe fn launch<P: DeviceRepr>(&self, handle: KernelHandle<P>, grid: Grid, params: &P) -> Result<()> {
        self.count_launch();
        match &self.backend {
            Backend::Shim => {
                let shape = ShimGrid { blocks: [grid.blocks, 1, 1], threads: [grid.threads, 1, 1] };
                // SAFETY: the caller vouches for the addresses; the launcher reads `params`
                // during the call only.
                shim_status(handle.kernel.name(), unsafe { (handle.shim)(&shape, params) })
            }
            Backend::Cuda(gpu) => gpu.launch(handle.kernel, grid, params),
        }
    }
}

impl Accelerator for Executor {
    fn name(&self) -> String {
        Executor::name(self)
    }

    /// Copies the elements `t` can reach into this executor's memory, keeping its strides (a
    /// strided host view stays a strided device view).
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        let layout = t.layout();
        if t.numel() == 0 {
            return Err(Error::invalid("upload", t.shape(), "empty tensors are not supported on the device"));
        }
        let size = t.dtype().size_in_bytes();
        let bytes = &t.cpu_storage("upload")?.bytes()[layout.offset() * size..layout.max_extent() * size];
        let buffer = self.block(bytes.len(), Init::Bytes(bytes))?;
        self.adopt(buffer, t.dtype(), Layout::new(layout.shape().to_vec(), layout.strides().to_vec(), 0))
    }

    /// The tensor's elements back in host memory, with the same layout.
    fn download(&self, t: &Tensor) -> Result<Tensor> {
        let extent = t.layout().max_extent() * t.dtype().size_in_bytes();
        let bytes = match (self.buffer("download", t)?.memory(), &self.backend) {
            (Memory::Host(words), Backend::Shim) => bytemuck::cast_slice(words)[..extent].to_vec(),
            (Memory::Cuda(slice), Backend::Cuda(gpu)) => gpu.download(slice, extent)?,
            _ => return Err(self.foreign("download", t)),
        };
        let storage = with_dtype!(t.dtype(), T => CpuStorage::from_vec(bytemuck::pod_collect_to_vec::<u8, T>(&bytes)));
        Tensor::from_storage(Arc::new(Storage::Cpu(storage)), t.layout().clone())
    }

    fn copy(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        crate::elementwise::cast(self, t, dtype)
    }

    fn zeros(&self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Executor::zeros(self, shape, dtype)
    }
}

/// `t` as a view of rank `N`, from a rank of `min_rank` to `N` (lower ranks get leading sizes 1
/// with stride 0).
fn checked_view<T: Element, const N: usize>(
    op: &'static str,
    t: &Tensor,
    base: u64,
    min_rank: usize,
) -> Result<View<T, N>> {
    if t.dtype() != T::DTYPE {
        return Err(Error::DTypeMismatch { op, expected: T::DTYPE, got: t.dtype() });
    }
    let (shape, strides) = (t.layout().shape(), t.layout().strides());
    if !(min_rank..=N).contains(&shape.len()) {
        let expected = if min_rank == N { format!("{N}") } else { format!("{min_rank} to {N}") };
        return Err(Error::invalid(op, shape, format!("expected {expected} dimensions")));
    }
    if t.numel() == 0 || t.layout().max_extent() > MAX_OFFSET {
        return Err(Error::invalid(op, shape, "the kernels need a nonempty view below 2^31 elements"));
    }
    // Both fit: every size and stride is at most the extent.
    let lead = N - shape.len();
    let dims = std::array::from_fn(|i| if i < lead { 1 } else { shape[i - lead] as i32 });
    let strides = std::array::from_fn(|i| if i < lead { 0 } else { strides[i - lead] as i32 });
    let addr = base + (t.layout().offset() * T::DTYPE.size_in_bytes()) as u64;
    Ok(View { ptr: DevPtr::new(addr), dims, strides })
}

/// The meaning of the shim launcher's return codes (kernels/shim/runtime.cpp).
fn shim_status(kernel: &'static str, status: c_int) -> Result<()> {
    let reason = match status {
        0 => return Ok(()),
        1 => "invalid launch shape (1 to 1024 threads per block, at least one block)",
        2 => "the threads of a block stopped at different barriers (a deadlock on a GPU)",
        3 => "could not allocate the fibers' stacks and contexts",
        _ => "unknown status",
    };
    Err(error::shim(kernel, reason))
}

#[cfg(test)]
mod tests {
    use infinity_runtime::half::bf16;

    use super::*;

    type SelfTest = unsafe extern "C" fn(*const ShimGrid, *const *mut i32) -> c_int;

    unsafe extern "C" {
        fn infinity_shim_shim_selftest_shuffle(grid: *const ShimGrid, out: *const *mut i32) -> c_int;
        fn infinity_shim_shim_selftest_early_exit(grid: *const ShimGrid, out: *const *mut i32) -> c_int;
        fn infinity_shim_shim_selftest_deadlock(grid: *const ShimGrid, out: *const *mut i32) -> c_int;
    }

    /// Runs one of kernels/shim/selftest.cpp's kernels as one block of `threads` threads.
    fn selftest(kernel: SelfTest, threads: u32) -> (Result<()>, Vec<i32>) {
        let mut out = vec![-1i32; threads as usize];
        let grid = ShimGrid { blocks: [1, 1, 1], threads: [threads, 1, 1] };
        // SAFETY: the kernels write out[threadIdx.x] only, below `threads`.
        let status = unsafe { kernel(&grid, &out.as_mut_ptr()) };
        (shim_status("shim selftest", status), out)
    }

    #[test]
    fn shim_shuffles_within_each_warp() {
        let (status, out) = selftest(infinity_shim_shim_selftest_shuffle, 64);
        status.unwrap();
        let want: Vec<i32> = (0..64).map(|t| if t < 32 { 496 } else { 32 * 32 + 496 }).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn shim_barriers_release_without_returned_threads() {
        let (status, out) = selftest(infinity_shim_shim_selftest_early_exit, 70);
        status.unwrap();
        let want: Vec<i32> = (0..70).map(|t| if t % 2 == 1 { -1 } else { (t + 2) % 70 }).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn shim_reports_mismatched_barriers_and_bad_shapes() {
        let (status, out) = selftest(infinity_shim_shim_selftest_deadlock, 32);
        assert!(
            matches!(&status, Err(Error::DeviceFailed { reason, .. }) if reason.contains("deadlock")),
            "{status:?}"
        );
        assert!(out.iter().all(|&v| v == -1), "no thread may pass its barrier");
        let (status, _) = selftest(infinity_shim_shim_selftest_shuffle, 2048);
        assert!(
            matches!(&status, Err(Error::DeviceFailed { reason, .. }) if reason.contains("launch shape")),
            "{status:?}"
        );
    }

    /// Mirror of `MmaTestParams` in kernels/shim/selftest.cpp.
    #[repr(C)]
    struct MmaTest {
        a: *const u16,
        b: *const u16,
        c: *const f32,
        d: *mut f32,
    }

    unsafe extern "C" {
        fn infinity_shim_shim_selftest_mma(grid: *const ShimGrid, params: *const MmaTest) -> c_int;
    }

    /// D = A·B + C (A 16×16, B 16×8, C 16×8, row-major) through the shim's mma, by a kernel
    /// that loads and stores the fragments by the PTX ISA layout.
    fn shim_mma(a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
        let bits = |x: &[f32]| x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect::<Vec<_>>();
        let (a, b) = (bits(a), bits(b));
        let mut d = vec![f32::NAN; 128];
        let params = MmaTest { a: a.as_ptr(), b: b.as_ptr(), c: c.as_ptr(), d: d.as_mut_ptr() };
        let grid = ShimGrid { blocks: [1, 1, 1], threads: [32, 1, 1] };
        // SAFETY: the kernel reads 256, 128 and 128 elements and writes 128.
        shim_status("shim selftest", unsafe { infinity_shim_shim_selftest_mma(&grid, &params) }).unwrap();
        d
    }

    #[test]
    fn shim_mma_follows_the_fragment_layout() {
        // Small integers: every product and sum is exact.
        let b: Vec<f32> = (0..128).map(|i| (i % 13) as f32 - 6.0).collect();
        let c: Vec<f32> = (0..128).map(|i| (i % 7) as f32).collect();
        let identity: Vec<f32> = (0..256).map(|i| f32::from(u8::from(i / 16 == i % 16))).collect();
        let want: Vec<f32> = b.iter().zip(&c).map(|(x, y)| x + y).collect();
        assert_eq!(shim_mma(&identity, &b, &c), want, "I·B + C");

        let a: Vec<f32> = (0..256).map(|i| (i * 5 % 11) as f32 - 5.0).collect();
        let want: Vec<f32> = (0..128)
            .map(|i| {
                let (row, col) = (i / 8, i % 8);
                c[i] + (0..16).map(|k| a[row * 16 + k] * b[k * 8 + col]).sum::<f32>()
            })
            .collect();
        assert_eq!(shim_mma(&a, &b, &c), want, "A·B + C");
    }

    #[test]
    fn upload_keeps_strides_and_download_restores_values() {
        let exec = Executor::shim();
        let base = Tensor::from_vec((0..24).map(|i| i as f32).collect::<Vec<_>>(), &[2, 3, 4]).unwrap();
        let view = base.permute(&[2, 0, 1]).unwrap().narrow(0, 1, 2).unwrap();
        let device = view.to_device(&exec.device()).unwrap();
        assert_eq!(device.layout().strides(), view.strides());
        assert_eq!(device.device(), exec.device());
        let back = device.to_cpu().unwrap();
        assert!(back.is_cpu() && back.same_values(&view));
        // A dense device tensor is already contiguous, though its block is a larger size class.
        let dense = Tensor::zeros(&[3, 5], DType::F32).to_device(&exec.device()).unwrap();
        assert!(Arc::ptr_eq(dense.storage(), dense.contiguous().unwrap().storage()), "no copy");
    }

    #[test]
    fn memory_is_reused_initialised_as_asked_and_counted() {
        let exec = Executor::shim();
        let ones = Tensor::from_vec(vec![1.0f32; 300], &[300]).unwrap();
        let first = ones.to_device(&exec.device()).unwrap();
        let address = exec.address("test", &first).unwrap();
        let class = size_class(1200);
        assert_eq!(exec.memory(), MemoryStats { in_use: class, peak: class, cached: 0 });
        let view = first.narrow(0, 10, 5).unwrap();
        drop(first);
        assert_eq!(exec.memory().in_use, class, "a live view keeps the buffer");
        drop(view);
        assert_eq!(exec.memory(), MemoryStats { in_use: 0, peak: class, cached: class });

        // A request of the same class gets the same block back: poisoned for a kernel output,
        // zeroed for an accumulator.
        let again = exec.output("test", &[290], DType::F32).unwrap();
        assert_eq!(exec.address("test", &again).unwrap(), address);
        assert!(again.to_vec::<f32>().unwrap().iter().all(|v| v.is_nan()));
        drop(again);
        let again = exec.accumulator("test", &[290], DType::F32).unwrap();
        assert_eq!(exec.address("test", &again).unwrap(), address);
        assert!(again.to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
        let other = exec.output("test", &[1000], DType::F32).unwrap();
        let other_class = size_class(4000);
        assert_eq!(exec.memory(), MemoryStats { in_use: class + other_class, peak: class + other_class, cached: 0 });
        let other_address = exec.address("test", &other).unwrap();
        drop((again, other));

        // A smaller request takes the smallest cached block up to twice its class, not more.
        let smaller = exec.output("test", &[700], DType::F32).unwrap();
        assert_eq!(exec.address("test", &smaller).unwrap(), other_address, "2800 bytes reuse the 4096-byte block");
        assert_eq!(exec.memory().in_use, other_class);
        let tiny = exec.output("test", &[10], DType::F32).unwrap();
        assert_eq!(exec.memory().cached, class, "40 bytes do not take a block 1536 bytes large");
        drop((smaller, tiny));
        exec.reset_peak();
        exec.empty_cache();
        assert_eq!(exec.memory(), MemoryStats::default());
    }

    #[test]
    fn tensors_stay_with_their_executor() {
        let (a, b) = (Executor::shim(), Executor::shim());
        let t = Tensor::zeros(&[4], DType::F32).to_device(&a.device()).unwrap();
        let err = b.view::<f32, 1>("test", &t).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.starts_with("test: ") && err.contains("not on CPU shim"), "{err}");
        assert!(Executor::of("test", &t).is_ok_and(|e| Arc::ptr_eq(&e, &a)));
        let err = Executor::of("test", &t.to_cpu().unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("the tensor is on cpu"), "{err}");
    }

    #[test]
    fn views_check_dtype_and_rank() {
        let exec = Executor::shim();
        let t = exec.output("test", &[2, 3], DType::F32).unwrap();
        assert!(exec.view::<f32, 2>("test", &t).is_ok());
        assert!(matches!(exec.view::<u8, 2>("test", &t), Err(Error::DTypeMismatch { .. })));
        assert!(matches!(exec.view::<f32, 3>("test", &t), Err(Error::InvalidArgument { .. })));
        assert!(exec.output("test", &[1 << 20, 1 << 20], DType::U8).is_err(), "refused before allocating");
    }

    #[test]
    fn padded_views_align_to_the_right() {
        let exec = Executor::shim();
        let t = exec.output("test", &[2, 3], DType::F32).unwrap();
        let v = exec.view_padded::<f32, 4>("test", &t).unwrap();
        assert_eq!((v.dims, v.strides), ([1, 1, 2, 3], [0, 0, 3, 1]));
        assert!(matches!(exec.view_padded::<f32, 1>("test", &t), Err(Error::InvalidArgument { .. })));
    }
}
