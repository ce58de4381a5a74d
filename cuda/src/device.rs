//! Tensors in an executor's memory: `DeviceTensor` (a shared buffer plus the runtime's
//! `Layout`, so strided views keep their strides and cost no copy), the typed address that
//! parameter structs carry, and `View`, the checked shape/strides/address triple launchers
//! build parameters from.

use std::marker::PhantomData;
use std::sync::Arc;

use infinity_runtime::{DType, Error as RuntimeError, Layout};

use crate::Result;
use crate::alloc::Buffer;

/// An element address in an executor's memory: a host address under the CPU shim, a device
/// address on the GPU. `#[repr(transparent)]` over u64, so that it has the size and alignment
/// of the C pointer it mirrors in a parameter struct.
#[repr(transparent)]
pub(crate) struct DevPtr<T> {
    addr: u64,
    _element: PhantomData<*mut T>,
}

impl<T> DevPtr<T> {
    pub(crate) fn new(addr: u64) -> Self {
        DevPtr { addr, _element: PhantomData }
    }

    /// The raw address, for the library calls (cuBLAS) that take untyped pointers.
    pub(crate) fn addr(self) -> u64 {
        self.addr
    }

    /// The address `elements` further on.
    pub(crate) fn add(self, elements: usize) -> Self {
        DevPtr::new(self.addr + (elements * std::mem::size_of::<T>()) as u64)
    }

    /// Whether the address is a multiple of `bytes` (vector loads need their own alignment).
    pub(crate) fn is_aligned(self, bytes: u64) -> bool {
        self.addr.is_multiple_of(bytes)
    }

    /// The null address: an optional operand that is absent (the kernel tests for it).
    pub(crate) fn null() -> Self {
        DevPtr::new(0)
    }
}

impl<T> Clone for DevPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for DevPtr<T> {}

/// A tensor stored in an executor's memory. Made by [`crate::Executor::upload`] or by a
/// launcher; read back with [`crate::Executor::download`]. Views (`narrow`, `permute`, …)
/// share the buffer. Launchers take inputs by `&` and in-place operands by `&mut`, and a
/// kernel may write only a buffer that no other tensor shares, so it never writes memory
/// another live tensor reads.
#[derive(Clone)]
pub struct DeviceTensor {
    pub(crate) buffer: Arc<Buffer>,
    pub(crate) dtype: DType,
    pub(crate) layout: Layout,
}

impl DeviceTensor {
    /// The same elements seen through `layout`, sharing the buffer.
    fn with_layout(&self, layout: Layout) -> DeviceTensor {
        DeviceTensor { buffer: self.buffer.clone(), dtype: self.dtype, layout }
    }

    /// Elements `start..start + len` of dimension `dim`, without copying.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<DeviceTensor> {
        Ok(self.with_layout(self.layout.narrow(dim, start, len)?))
    }

    /// The dimensions reordered, without copying.
    pub fn permute(&self, dims: &[usize]) -> Result<DeviceTensor> {
        Ok(self.with_layout(self.layout.permute(dims)?))
    }

    /// A size-1 dimension inserted at `dim`.
    pub fn unsqueeze(&self, dim: usize) -> Result<DeviceTensor> {
        Ok(self.with_layout(self.layout.unsqueeze(dim)?))
    }

    /// The size-1 dimension `dim` removed.
    pub fn squeeze(&self, dim: usize) -> Result<DeviceTensor> {
        Ok(self.with_layout(self.layout.squeeze(dim)?))
    }

    /// The same elements with a new shape; the tensor must be contiguous (copy it with
    /// [`crate::elementwise::cast`] first otherwise).
    pub fn reshape(&self, shape: &[usize]) -> Result<DeviceTensor> {
        match self.layout.reshape(shape)? {
            Some(layout) => Ok(self.with_layout(layout)),
            None => Err(RuntimeError::invalid(
                "reshape",
                self.shape(),
                format!("strides {:?} are not contiguous; copy the tensor first", self.layout.strides()),
            )
            .into()),
        }
    }

    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// A tensor as a kernel sees it: address of its first element, sizes and element strides,
/// all offsets it can reach below 2^31 (the kernels index in 32 bits).
pub(crate) struct View<T, const N: usize> {
    pub ptr: DevPtr<T>,
    pub dims: [i32; N],
    pub strides: [i32; N],
}
