//! `Tensor`: shared storage plus a strided view of it. View transforms are free; data is
//! copied only by `contiguous`, `to_dtype` and the ops.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::layout::Layout;
use crate::storage::CpuStorage;
use crate::{DType, Element, Error, Result, with_dtype};

#[derive(Clone)]
pub struct Tensor {
    storage: Arc<CpuStorage>,
    layout: Layout,
}

impl Tensor {
    /// Wraps storage in a view after checking that the view stays inside it.
    pub fn from_storage(storage: Arc<CpuStorage>, layout: Layout) -> Result<Self> {
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
        Ok(Tensor { storage: Arc::new(CpuStorage::from_vec(data)), layout: Layout::contiguous(shape) })
    }

    pub fn from_slice<T: Element>(data: &[T], shape: &[usize]) -> Result<Self> {
        Self::from_vec(data.to_vec(), shape)
    }

    pub fn scalar<T: Element>(v: T) -> Self {
        Tensor { storage: Arc::new(CpuStorage::from_vec(vec![v])), layout: Layout::contiguous(&[]) }
    }

    pub fn full(shape: &[usize], value: f32, dtype: DType) -> Self {
        let n = shape.iter().product();
        with_dtype!(dtype, T => Tensor {
            storage: Arc::new(CpuStorage::from_vec(vec![T::from_f32(value); n])),
            layout: Layout::contiguous(shape),
        })
    }

    pub fn zeros(shape: &[usize], dtype: DType) -> Self {
        Self::full(shape, 0.0, dtype)
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

    pub fn storage(&self) -> &Arc<CpuStorage> {
        &self.storage
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
            None => self.contiguous().reshape(shape),
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

    /// The same tensor with a row-major contiguous layout starting at offset 0.
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() && self.layout.offset() == 0 && self.numel() == self.storage.len() {
            return self.clone();
        }
        with_dtype!(self.dtype(), T => {
            let data = self.gather::<T>();
            Tensor { storage: Arc::new(CpuStorage::from_vec(data)), layout: Layout::contiguous(self.shape()) }
        })
    }

    fn gather<T: Element>(&self) -> Vec<T> {
        let src = self.storage.elements::<T>();
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

    /// The elements in row-major order of the view. The dtype must be exactly `T`.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        self.check_dtype::<T>("to_vec")?;
        Ok(self.gather())
    }

    /// The elements of a contiguous view, borrowed when possible. Errors on a strided view.
    pub fn as_slice<T: Element>(&self) -> Result<Cow<'_, [T]>> {
        self.check_dtype::<T>("as_slice")?;
        if !self.is_contiguous() {
            return Err(Error::invalid("as_slice", self.shape(), "the view is not contiguous"));
        }
        let o = self.layout.offset();
        Ok(match self.storage.elements::<T>() {
            Cow::Borrowed(s) => Cow::Borrowed(&s[o..o + self.numel()]),
            Cow::Owned(v) => Cow::Owned(v[o..o + self.numel()].to_vec()),
        })
    }

    /// All elements converted to f32 (exact for every dtype but i64/i32 beyond 2^24).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        with_dtype!(self.dtype(), T => self.gather::<T>().into_iter().map(Element::to_f32).collect())
    }

    /// Converts through f32; rounds to nearest even into the half types.
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let data = self.to_f32_vec();
        with_dtype!(dtype, T => Tensor {
            storage: Arc::new(CpuStorage::from_vec(data.into_iter().map(T::from_f32).collect::<Vec<T>>())),
            layout: Layout::contiguous(self.shape()),
        })
    }

    /// Raw little-endian bytes of the contiguous data (what a checkpoint writer stores).
    pub fn to_bytes(&self) -> Vec<u8> {
        let t = self.contiguous();
        t.storage.bytes().to_vec()
    }

    /// True when the two tensors have the same shape, dtype and element values (NaN never equal).
    pub fn same_values(&self, other: &Tensor) -> bool {
        self.shape() == other.shape()
            && self.dtype() == other.dtype()
            && with_dtype!(self.dtype(), T => self.gather::<T>() == other.gather::<T>())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({}, {:?}", self.dtype(), self.shape())?;
        if self.numel() <= 8 {
            write!(f, ", {:?}", self.to_f32_vec())?;
        }
        f.write_str(")")
    }
}
