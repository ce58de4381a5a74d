//! A tensor's storage: host memory ([`CpuStorage`]: an owned typed buffer, or a byte range of a
//! memory-mapped weight file that is read, and if misaligned copied, only when a tensor's data
//! is used), or an accelerator's memory ([`DeviceStorage`], opaque here: its backend's buffer).

use std::any::Any;
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;

use crate::{Accelerator, DType, Device, Element};

pub(crate) enum Owned {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
}

pub(crate) enum Buffer {
    Owned(Owned),
    Mapped { map: Arc<Mmap>, range: Range<usize> },
}

pub struct CpuStorage {
    buffer: Buffer,
    dtype: DType,
}

impl CpuStorage {
    pub fn from_vec<T: Element>(v: Vec<T>) -> Self {
        // `cast_vec` is an identity cast here: T is exactly the variant's element type.
        let owned = match T::DTYPE {
            DType::F32 => Owned::F32(bytemuck::allocation::cast_vec(v)),
            DType::BF16 => Owned::BF16(bytemuck::allocation::cast_vec(v)),
            DType::F16 => Owned::F16(bytemuck::allocation::cast_vec(v)),
            DType::I64 => Owned::I64(bytemuck::allocation::cast_vec(v)),
            DType::I32 => Owned::I32(bytemuck::allocation::cast_vec(v)),
            DType::U8 => Owned::U8(bytemuck::allocation::cast_vec(v)),
        };
        CpuStorage { buffer: Buffer::Owned(owned), dtype: T::DTYPE }
    }

    /// `range` must lie inside the map and hold a whole number of elements (checked by the loaders).
    pub(crate) fn mapped(map: Arc<Mmap>, range: Range<usize>, dtype: DType) -> Self {
        debug_assert!(range.end <= map.len() && range.len().is_multiple_of(dtype.size_in_bytes()));
        CpuStorage { buffer: Buffer::Mapped { map, range }, dtype }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn len(&self) -> usize {
        self.bytes().len() / self.dtype.size_in_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.buffer, Buffer::Mapped { .. })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.buffer {
            Buffer::Owned(Owned::F32(v)) => bytemuck::cast_slice(v),
            Buffer::Owned(Owned::BF16(v)) => bytemuck::cast_slice(v),
            Buffer::Owned(Owned::F16(v)) => bytemuck::cast_slice(v),
            Buffer::Owned(Owned::I64(v)) => bytemuck::cast_slice(v),
            Buffer::Owned(Owned::I32(v)) => bytemuck::cast_slice(v),
            Buffer::Owned(Owned::U8(v)) => v,
            Buffer::Mapped { map, range } => &map[range.clone()],
        }
    }

    /// The elements, borrowed when the bytes are suitably aligned (always for owned buffers),
    /// copied otherwise. Callers check the dtype first.
    pub fn elements<T: Element>(&self) -> Cow<'_, [T]> {
        debug_assert_eq!(T::DTYPE, self.dtype);
        let bytes = self.bytes();
        match bytemuck::try_cast_slice(bytes) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(bytes.chunks_exact(size_of::<T>()).map(bytemuck::pod_read_unaligned).collect()),
        }
    }

    /// The elements for a CPU op to write in place: `None` for a mapped file's (read-only) or
    /// when `T` is not the storage's element type.
    pub fn elements_mut<T: Element>(&mut self) -> Option<&mut [T]> {
        if T::DTYPE != self.dtype {
            return None;
        }
        let Buffer::Owned(owned) = &mut self.buffer else { return None };
        let bytes: &mut [u8] = match owned {
            Owned::F32(v) => bytemuck::cast_slice_mut(v),
            Owned::BF16(v) => bytemuck::cast_slice_mut(v),
            Owned::F16(v) => bytemuck::cast_slice_mut(v),
            Owned::I64(v) => bytemuck::cast_slice_mut(v),
            Owned::I32(v) => bytemuck::cast_slice_mut(v),
            Owned::U8(v) => bytemuck::cast_slice_mut(v),
        };
        // The element type is the vector's own, so the bytes are aligned for it.
        Some(bytemuck::cast_slice_mut(bytes))
    }
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        if let Buffer::Owned(Owned::F32(v)) = &mut self.buffer {
            crate::recycle::give(std::mem::take(v));
        }
    }
}

/// Memory of an accelerator: the backend's buffer, which the runtime only holds, and the
/// accelerator it belongs to (so a tensor can always be read back).
pub struct DeviceStorage {
    buffer: Box<dyn Any + Send + Sync>,
    /// Elements of `dtype` the buffer holds.
    len: usize,
    dtype: DType,
    accelerator: Arc<dyn Accelerator>,
}

impl DeviceStorage {
    pub fn new(buffer: impl Any + Send + Sync, len: usize, dtype: DType, accelerator: Arc<dyn Accelerator>) -> Self {
        DeviceStorage { buffer: Box::new(buffer), len, dtype, accelerator }
    }

    pub fn accelerator(&self) -> &Arc<dyn Accelerator> {
        &self.accelerator
    }

    /// The backend's buffer, when it is of type `B`.
    pub fn buffer<B: Any>(&self) -> Option<&B> {
        self.buffer.downcast_ref()
    }

    pub fn buffer_mut<B: Any>(&mut self) -> Option<&mut B> {
        self.buffer.downcast_mut()
    }
}

/// Where a tensor's elements are.
pub enum Storage {
    Cpu(CpuStorage),
    Device(DeviceStorage),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Device(s) => s.dtype,
        }
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Device(s) => s.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Device(s) => Device::Accelerator(s.accelerator.clone()),
        }
    }

    /// The host storage; `None` for an accelerator's.
    pub fn cpu(&self) -> Option<&CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
            Storage::Device(_) => None,
        }
    }

    /// The accelerator's storage; `None` for host memory.
    pub fn on_device(&self) -> Option<&DeviceStorage> {
        match self {
            Storage::Cpu(_) => None,
            Storage::Device(s) => Some(s),
        }
    }

    pub fn cpu_mut(&mut self) -> Option<&mut CpuStorage> {
        match self {
            Storage::Cpu(s) => Some(s),
            Storage::Device(_) => None,
        }
    }

    pub fn on_device_mut(&mut self) -> Option<&mut DeviceStorage> {
        match self {
            Storage::Cpu(_) => None,
            Storage::Device(s) => Some(s),
        }
    }

    /// Whether the elements are a memory-mapped range of a file.
    pub fn is_mapped(&self) -> bool {
        self.cpu().is_some_and(CpuStorage::is_mapped)
    }
}
