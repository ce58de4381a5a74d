//! Tensors in an executor's memory: `DeviceTensor` (a buffer plus the runtime's `Layout`,
//! so strided views keep their strides), the typed address that parameter structs carry, and
//! `View`, the checked shape/strides/address triple launchers build parameters from.

use std::marker::PhantomData;

use cudarc::driver::CudaSlice;
use infinity_runtime::{DType, Layout};

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

/// Memory owned by one executor.
pub(crate) enum Buffer {
    /// The CPU shim's memory; u128 words give every dtype (and vector loads) their alignment.
    Host(Box<[u128]>),
    Cuda(CudaSlice<u8>),
}

/// A tensor stored in an executor's memory. Made by [`crate::Executor::upload`] or by a
/// launcher; read back with [`crate::Executor::download`]. It owns its buffer: launchers take
/// inputs by `&` and in-place operands by `&mut`, so a kernel never writes memory that
/// another live tensor reads.
pub struct DeviceTensor {
    pub(crate) buffer: Buffer,
    pub(crate) dtype: DType,
    pub(crate) layout: Layout,
}

impl DeviceTensor {
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
