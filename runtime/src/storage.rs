//! CPU storage: an owned typed buffer, or a byte range of a memory-mapped weight file that
//! is read (and, if misaligned, copied) only when a tensor's data is used.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;

use crate::{DType, Element};

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
}
