//! NCCL collectives between processes, one GPU each: the transport every GPU cluster already
//! has (NVLink within a node, InfiniBand or sockets between nodes), loaded at run time like the
//! rest of CUDA (`libnccl.so`, from the driver's CUDA installation or the `nvidia-nccl-cu13`
//! wheel). The ranks agree on NCCL's unique id through [`rendezvous`] (rank 0 makes it); each
//! then joins with [`Nccl::join`], and the trainer sees it as any [`Collective`].
//!
//! A rank that dies makes NCCL's collectives wait forever, so the launcher watches its ranks
//! and stops them all when one ends in failure (`infinity-train --gpus`).
//!
//! The collectives run on the executor's one stream, ordered with its kernels: the trainer's
//! buckets are queued while the backward pass still runs, but the GPU runs them between its
//! kernels, not beside them (that needs a second stream and events, not built yet).

use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cudarc::nccl::{result, sys};
use infinity_runtime::collective::Collective;
use infinity_runtime::{DType, Error, Result, Tensor};

use crate::exec::{Backend, Executor};

/// NCCL's unique id: the 128 bytes rank 0 makes and hands to the others.
pub type UniqueId = [u8; 128];

/// Whether libnccl can be loaded.
pub fn available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

fn nccl_error(what: &str) -> impl FnOnce(result::NcclError) -> Error + '_ {
    move |e| Error::DeviceFailed { op: "nccl", device: "GPU".into(), reason: format!("{what}: {e:?}") }
}

fn no_library() -> Error {
    Error::DeviceUnavailable {
        op: "nccl",
        device: "cuda".into(),
        reason: "libnccl.so could not be loaded (install the NVIDIA NCCL library or the nvidia-nccl-cu13 wheel)".into(),
    }
}

/// A new unique id, on the rank that makes it (rank 0).
pub fn unique_id() -> Result<UniqueId> {
    if !available() {
        return Err(no_library());
    }
    let id = result::get_uniqueid().map_err(nccl_error("making the unique id"))?;
    Ok(id.internal.map(|c| c as u8))
}

/// This process's rank of an NCCL communicator, on its executor's GPU.
pub struct Nccl {
    exec: Arc<Executor>,
    /// NCCL calls on one communicator must not interleave.
    comm: Mutex<Comm>,
    rank: usize,
    world: usize,
}

struct Comm(sys::ncclComm_t);

// SAFETY: the communicator is only used under the Mutex, one call at a time, and NCCL allows
// a communicator to be used from any thread.
unsafe impl Send for Comm {}

impl Drop for Comm {
    fn drop(&mut self) {
        // SAFETY: the communicator was created by comm_init_rank and is destroyed once.
        let _ = unsafe { result::comm_destroy(self.0) };
    }
}

impl Nccl {
    /// Joins the `world` ranks that agreed on `id` as `rank`, on `exec`'s GPU (blocks until
    /// every rank has joined).
    pub fn join(exec: Arc<Executor>, id: &UniqueId, rank: usize, world: usize) -> Result<Nccl> {
        let Backend::Cuda(gpu) = exec.backend() else {
            return Err(Error::invalid("nccl", &[world], format!("{} is not a GPU: NCCL joins GPUs", exec.name())));
        };
        if !available() {
            return Err(no_library());
        }
        gpu.bind_to_thread()?;
        let id = sys::ncclUniqueId { internal: id.map(|b| b as std::ffi::c_char) };
        let mut comm = MaybeUninit::uninit();
        let (nranks, me) = (to_i32(world)?, to_i32(rank)?);
        // SAFETY: `comm` is written by NCCL before it is read.
        let comm = unsafe {
            result::comm_init_rank(comm.as_mut_ptr(), nranks, id, me).map_err(nccl_error("joining the ranks"))?;
            comm.assume_init()
        };
        Ok(Nccl { exec, comm: Mutex::new(Comm(comm)), rank, world })
    }
}

fn to_i32(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::invalid("nccl", &[n], "more ranks than NCCL counts"))
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    /// One NCCL group of in-place averages (`ncclAvg`) over f32 copies of the tensors on this
    /// GPU's stream.
    fn all_reduce_mean(&self, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
        const OP: &str = "all_reduce";
        let (gpu, comm) = self.stream_and_comm(OP)?;
        let mut out = tensors.iter().map(|t| self.private_vector(t)).collect::<Result<Vec<_>>>()?;
        result::group_start().map_err(nccl_error("starting the group"))?;
        for t in &mut out {
            let addr = self.exec.address_mut(OP, t)? as *mut c_void;
            // SAFETY: `addr` holds t.numel() f32 of this GPU, alive until the stream has run
            // the reduction (the tensors are returned, and read through the same stream).
            unsafe { result::all_reduce(addr, addr, t.numel(), F32, sys::ncclRedOp_t::ncclAvg, comm.0, gpu) }
                .map_err(nccl_error("averaging over the ranks"))?;
        }
        result::group_end().map_err(nccl_error("ending the group"))?;
        out.iter().zip(tensors).map(|(mean, t)| mean.reshape(t.shape())).collect()
    }

    /// `ncclReduceScatter` with `ncclAvg` from an f32 copy of `flat` on this GPU.
    fn reduce_scatter_mean(&self, flat: &Tensor) -> Result<Tensor> {
        const OP: &str = "reduce_scatter";
        if flat.rank() != 1 || !flat.numel().is_multiple_of(self.world) {
            let msg = format!("a vector whose length is a multiple of the {} ranks", self.world);
            return Err(Error::invalid(OP, flat.shape(), msg));
        }
        let (gpu, comm) = self.stream_and_comm(OP)?;
        let send = self.private_vector(flat)?;
        let part = flat.numel() / self.world;
        let mut out = self.exec.output(OP, &[part], DType::F32)?;
        let from = self.exec.address(OP, &send)? as *const c_void;
        let to = self.exec.address_mut(OP, &mut out)? as *mut c_void;
        // SAFETY: `from` holds world × part f32 and `to` part f32 of this GPU, both alive
        // until the stream has run the reduction (`send` is dropped after the stream's work
        // is queued; the executor frees buffers in stream order).
        unsafe { result::reduce_scatter(from, to, part, F32, sys::ncclRedOp_t::ncclAvg, comm.0, gpu) }
            .map_err(nccl_error("averaging over the ranks"))?;
        Ok(out)
    }

    /// `ncclAllGather` of an f32 copy of `part` on this GPU.
    fn all_gather(&self, part: &Tensor) -> Result<Tensor> {
        const OP: &str = "all_gather";
        if part.rank() != 1 {
            return Err(Error::invalid(OP, part.shape(), "a vector"));
        }
        let (gpu, comm) = self.stream_and_comm(OP)?;
        let send = self.private_vector(part)?;
        let mut out = self.exec.output(OP, &[part.numel() * self.world], DType::F32)?;
        let from = self.exec.address(OP, &send)? as *const c_void;
        let to = self.exec.address_mut(OP, &mut out)? as *mut c_void;
        // SAFETY: as for `reduce_scatter_mean`, with part f32 sent and world × part received.
        unsafe { result::all_gather(from, to, part.numel(), F32, comm.0, gpu) }
            .map_err(nccl_error("gathering from the ranks"))?;
        Ok(out)
    }
}

const F32: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;

impl Nccl {
    /// This GPU's stream and the communicator, held for one collective. The calling thread
    /// may be the trainer's communication thread: the context is made current on it first.
    fn stream_and_comm(&self, op: &'static str) -> Result<(sys::cudaStream_t, MutexGuard<'_, Comm>)> {
        let Backend::Cuda(gpu) = self.exec.backend() else {
            return Err(Error::invalid(op, &[self.world], "NCCL's executor is not a GPU"));
        };
        gpu.bind_to_thread()?;
        let comm = self.comm.lock().unwrap_or_else(PoisonError::into_inner);
        Ok((gpu.raw_stream() as sys::cudaStream_t, comm))
    }

    /// A private f32 copy of `t`, flattened, on this GPU: a buffer NCCL may read and write.
    fn private_vector(&self, t: &Tensor) -> Result<Tensor> {
        t.to_device(&self.exec.device())?.to_dtype(DType::F32)?.reshape(&[t.numel()])?.copy()
    }
}
