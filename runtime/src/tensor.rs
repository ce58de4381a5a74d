//! `Tensor`: shared storage plus a strided view of it, on the CPU or an accelerator (the
//! device is the storage's). View transforms are free on every device; data is copied only by
//! `contiguous`, `to_dtype`, `to_device` and the ops.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::layout::Layout;
use crate::storage::{CpuStorage, Storage};
use crate::{DType, Device, Element, Error, Result, with_dtype};

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    layout: Layout,
}

fn host(storage: CpuStorage) -> Arc<Storage> {
    Arc::new(Storage::Cpu(storage))
}

impl Tensor {
    /// Wraps storage in a view after checking that the view stays inside it.
    pub fn from_storage(storage: Arc<Storage>, layout: Layout) -> Result<Self> {
        if layout.max_extent() > storage.len() {
            return Err(Error::invalid(
                "from_storage",
                layout.shape(),
                format!("view needs {} elements but the storage holds {}", layout.max_extent(), storage.len()),
            ));
        }
        Ok(Tensor { storage, layout })
    }

    pub fn from_vec<T: Element>(data: Vec<T>, shape: &[usize]) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::invalid("from_vec", shape, format!("{} values do not fill the shape", data.len())));
        }
        Ok(Tensor { storage: host(CpuStorage::from_vec(data)), layout: Layout::contiguous(shape) })
    }

    pub fn from_slice<T: Element>(data: &[T], shape: &[usize]) -> Result<Self> {
        Self::from_vec(data.to_vec(), shape)
    }

    pub fn scalar<T: Element>(v: T) -> Self {
        Tensor { storage: host(CpuStorage::from_vec(vec![v])), layout: Layout::contiguous(&[]) }
    }

    pub fn full(shape: &[usize], value: f32, dtype: DType) -> Self {
        let n = shape.iter().product();
        with_dtype!(dtype, T => Tensor {
            storage: host(CpuStorage::from_vec(vec![T::from_f32(value); n])),
            layout: Layout::contiguous(shape),
        })
    }

    pub fn zeros(shape: &[usize], dtype: DType) -> Self {
        Self::full(shape, 0.0, dtype)
    }

    /// Zeros made where they are needed: on an accelerator without a host copy to upload.
    pub fn zeros_on(shape: &[usize], dtype: DType, device: &Device) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Self::zeros(shape, dtype)),
            Device::Accelerator(a) => a.zeros(shape, dtype),
        }
    }

    pub fn shape(&self) -> &[usize] {
        self.layout.shape()
    }

    pub fn strides(&self) -> &[usize] {
        self.layout.strides()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// The storage for a kernel to write: `None` while another tensor shares it, so that no
    /// op writes memory a live view reads.
    pub fn storage_mut(&mut self) -> Option<&mut Storage> {
        Arc::get_mut(&mut self.storage)
    }

    /// The host storage for a CPU op named `op`; an error names the device it is on.
    pub fn cpu_storage(&self, op: &'static str) -> Result<&CpuStorage> {
        self.storage.cpu().ok_or_else(|| self.not_on_cpu(op))
    }

    fn not_on_cpu(&self, op: &'static str) -> Error {
        Error::invalid(op, self.shape(), format!("runs on the CPU, but the tensor is on {}", self.device()))
    }

    pub fn device(&self) -> Device {
        self.storage.device()
    }

    pub fn is_cpu(&self) -> bool {
        self.storage.cpu().is_some()
    }

    /// The same values on `device`: uploaded (strides kept), downloaded (layout kept) or, when
    /// already there, shared.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        match (&*self.storage, device) {
            (Storage::Cpu(_), Device::Cpu) => Ok(self.clone()),
            (Storage::Cpu(_), Device::Accelerator(to)) => to.upload(self),
            (Storage::Device(s), Device::Cpu) => s.accelerator().download(self),
            (Storage::Device(s), Device::Accelerator(to)) if Arc::ptr_eq(s.accelerator(), to) => Ok(self.clone()),
            (Storage::Device(s), Device::Accelerator(to)) => to.upload(&s.accelerator().download(self)?),
        }
    }

    /// The tensor in host memory (shared when already there).
    pub fn to_cpu(&self) -> Result<Tensor> {
        self.to_device(&Device::Cpu)
    }

    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    pub fn rank(&self) -> usize {
        self.layout.rank()
    }

    pub fn numel(&self) -> usize {
        self.layout.numel()
    }

    /// Size of dimension `dim`.
    pub fn dim(&self, dim: usize) -> Result<usize> {
        self.shape().get(dim).copied().ok_or(Error::DimOutOfRange { op: "dim", dim, shape: self.shape().to_vec() })
    }

    pub fn is_contiguous(&self) -> bool {
        self.layout.is_contiguous()
    }

    fn view(&self, layout: Layout) -> Tensor {
        Tensor { storage: self.storage.clone(), layout }
    }

    /// A view when the data is contiguous, a copy otherwise.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        match self.layout.reshape(shape)? {
            Some(l) => Ok(self.view(l)),
            None => self.contiguous()?.reshape(shape),
        }
    }

    pub fn permute(&self, dims: &[usize]) -> Result<Tensor> {
        Ok(self.view(self.layout.permute(dims)?))
    }

    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        Ok(self.view(self.layout.transpose(a, b)?))
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        Ok(self.view(self.layout.narrow(dim, start, len)?))
    }

    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        Ok(self.view(self.layout.broadcast_to(shape)?))
    }

    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        Ok(self.view(self.layout.unsqueeze(dim)?))
    }

    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        Ok(self.view(self.layout.squeeze(dim)?))
    }

    /// The same tensor with a row-major contiguous layout starting at offset 0, on the same
    /// device.
    pub fn contiguous(&self) -> Result<Tensor> {
        let dense = self.is_contiguous() && self.layout.offset() == 0;
        let shared = match &*self.storage {
            // On the host the storage then holds exactly the tensor's elements (`to_bytes`).
            Storage::Cpu(s) => dense && self.numel() == s.len(),
            // A device block is a size class, larger than the tensor: only the layout matters.
            Storage::Device(_) => dense,
        };
        if shared { Ok(self.clone()) } else { self.copy() }
    }

    fn gather<T: Element>(&self, storage: &CpuStorage) -> Vec<T> {
        let src = storage.elements::<T>();
        if self.is_contiguous() {
            let o = self.layout.offset();
            return src[o..o + self.numel()].to_vec();
        }
        let mut out = Vec::with_capacity(self.numel());
        match (self.shape().last(), self.strides().last()) {
            // Rows contiguous in storage (a permute that keeps the last dimension): slice copies.
            (Some(&inner), Some(&1)) => {
                self.layout.for_each_row(|base| out.extend_from_slice(&src[base..base + inner]))
            }
            _ => self.layout.for_each_offset(|i| out.push(src[i])),
        }
        out
    }

    fn check_dtype<T: Element>(&self, op: &'static str) -> Result<()> {
        if self.dtype() == T::DTYPE {
            Ok(())
        } else {
            Err(Error::DTypeMismatch { op, expected: T::DTYPE, got: self.dtype() })
        }
    }

    /// The elements in row-major order of the view, read back from the device if need be. The
    /// dtype must be exactly `T`.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.check_dtype::<T>("to_vec")?;
        let host = self.to_cpu()?;
        Ok(host.gather(host.cpu_storage("to_vec")?))
    }

    /// The elements of a contiguous host view, borrowed when possible. Errors on a strided view
    /// or a device tensor.
    pub fn as_slice<T: Element>(&self) -> Result<Cow<'_, [T]>> {
        self.check_dtype::<T>("as_slice")?;
        let storage = self.cpu_storage("as_slice")?;
        if !self.is_contiguous() {
            return Err(Error::invalid("as_slice", self.shape(), "the view is not contiguous"));
        }
        let o = self.layout.offset();
        Ok(match storage.elements::<T>() {
            Cow::Borrowed(s) => Cow::Borrowed(&s[o..o + self.numel()]),
            Cow::Owned(v) => Cow::Owned(v[o..o + self.numel()].to_vec()),
        })
    }

    /// All elements converted to f32 (exact for every dtype but i64/i32 beyond 2^24), read back
    /// from the device if need be.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        let host = self.to_cpu()?;
        let storage = host.cpu_storage("to_f32_vec")?;
        Ok(with_dtype!(self.dtype(), T => host.gather::<T>(storage).into_iter().map(Element::to_f32).collect()))
    }

    /// A private contiguous copy on the same device: a buffer no other tensor shares, which
    /// an in-place op may write (what `Arc::make_mut` does for plain data).
    pub fn copy(&self) -> Result<Tensor> {
        match &*self.storage {
            Storage::Cpu(s) => Ok(with_dtype!(self.dtype(), T => Tensor {
                storage: host(CpuStorage::from_vec(self.gather::<T>(s))),
                layout: Layout::contiguous(self.shape()),
            })),
            Storage::Device(s) => s.accelerator().copy(self, self.dtype()),
        }
    }

    /// A contiguous copy in `dtype` on the same device (shared when the dtype is already
    /// `dtype`); converts through f32, rounding to nearest even into the half types.
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        match &*self.storage {
            Storage::Cpu(_) => {
                let data = self.to_f32_vec()?;
                Ok(with_dtype!(dtype, T => Tensor {
                    storage: host(CpuStorage::from_vec(data.into_iter().map(T::from_f32).collect::<Vec<T>>())),
                    layout: Layout::contiguous(self.shape()),
                }))
            }
            Storage::Device(s) => s.accelerator().copy(self, dtype),
        }
    }

    /// Raw little-endian bytes of the contiguous data (what a checkpoint writer stores).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let t = self.to_cpu()?.contiguous()?;
        Ok(t.cpu_storage("to_bytes")?.bytes().to_vec())
    }

    /// True when the two tensors have the same shape, dtype and element values (NaN never
    /// equal), wherever they live; values that cannot be read back are not the same.
    pub fn same_values(&self, other: &Tensor) -> bool {
        let values = |t: &Tensor| t.to_cpu().ok();
        let (Some(a), Some(b)) = (values(self), values(other)) else { return false };
        let (Some(sa), Some(sb)) = (a.storage.cpu(), b.storage.cpu()) else { return false };
        a.shape() == b.shape()
            && a.dtype() == b.dtype()
            && with_dtype!(a.dtype(), T => a.gather::<T>(sa) == b.gather::<T>(sb))
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({}, {:?}", self.dtype(), self.shape())?;
        match self.storage.cpu() {
            Some(s) if self.numel() <= 8 => {
                let values: Vec<f32> =
                    with_dtype!(self.dtype(), T => self.gather::<T>(s).into_iter().map(Element::to_f32).collect());
                write!(f, ", {values:?}")?;
            }
            Some(_) => {}
            None => write!(f, ", on {}", self.device())?,
        }
        f.write_str(")")
    }
}
