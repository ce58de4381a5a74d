//! How kernels see tensors: the typed address that parameter structs carry, and `View`, the
//! checked shape/strides/address triple launchers build parameters from.

use std::marker::PhantomData;

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

/// A tensor as a kernel sees it: address of its first element, sizes and element strides,
/// all offsets it can reach below 2^31 (the kernels index in 32 bits).
pub(crate) struct View<T, const N: usize> {
    pub ptr: DevPtr<T>,
    pub dims: [i32; N],
    pub strides: [i32; N],
}
