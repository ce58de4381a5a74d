//! Shape, strides and offset of a view into storage, and the view transforms (reshape,
//! permute, narrow, broadcast) that only rewrite this metadata.

use crate::{Error, Result};

/// Strides are in elements. A stride of 0 marks a broadcast dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d;
    }
    strides
}

/// NumPy broadcasting of two shapes (aligned at the trailing dimension).
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() { 1 } else { a[i - (rank - a.len())] };
        let db = if i < rank - b.len() { 1 } else { b[i - (rank - b.len())] };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(Error::ShapeMismatch { op, lhs: a.to_vec(), rhs: b.to_vec() }),
        };
    }
    Ok(out)
}

impl Layout {
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
    }

    pub fn new(shape: Vec<usize>, strides: Vec<usize>, offset: usize) -> Self {
        debug_assert_eq!(shape.len(), strides.len());
        Layout { shape, strides, offset }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Row-major contiguous (size-1 dimensions may carry any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// One past the largest storage element this view can touch (0 for an empty view).
    pub fn max_extent(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        self.offset + self.shape.iter().zip(&self.strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>() + 1
    }

    fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim < self.rank() { Ok(()) } else { Err(Error::DimOutOfRange { op, dim, shape: self.shape.clone() }) }
    }

    /// A view with the new shape, when the element order allows one without copying.
    pub fn reshape(&self, shape: &[usize]) -> Result<Option<Layout>> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape.clone(), rhs: shape.to_vec() });
        }
        Ok(self.is_contiguous().then(|| Layout { offset: self.offset, ..Layout::contiguous(shape) }))
    }

    pub fn permute(&self, dims: &[usize]) -> Result<Layout> {
        let mut seen = vec![false; self.rank()];
        if dims.len() != self.rank() {
            return Err(Error::invalid("permute", &self.shape, format!("permutation {dims:?} has the wrong length")));
        }
        for &d in dims {
            if d >= self.rank() || std::mem::replace(&mut seen[d], true) {
                return Err(Error::invalid("permute", &self.shape, format!("{dims:?} is not a permutation")));
            }
        }
        Ok(Layout {
            shape: dims.iter().map(|&d| self.shape[d]).collect(),
            strides: dims.iter().map(|&d| self.strides[d]).collect(),
            offset: self.offset,
        })
    }

    pub fn transpose(&self, a: usize, b: usize) -> Result<Layout> {
        self.check_dim("transpose", a)?;
        self.check_dim("transpose", b)?;
        let mut dims: Vec<usize> = (0..self.rank()).collect();
        dims.swap(a, b);
        self.permute(&dims)
    }

    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        self.check_dim("narrow", dim)?;
        if start.checked_add(len).is_none_or(|end| end > self.shape[dim]) {
            return Err(Error::invalid(
                "narrow",
                &self.shape,
                format!("range {start}..{} exceeds dimension {dim}", start.saturating_add(len)),
            ));
        }
        let mut out = self.clone();
        out.shape[dim] = len;
        if len > 0 {
            out.offset += start * self.strides[dim];
        }
        Ok(out)
    }

    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Layout> {
        let err = || Error::ShapeMismatch { op: "broadcast_to", lhs: self.shape.clone(), rhs: shape.to_vec() };
        if shape.len() < self.rank() {
            return Err(err());
        }
        let lead = shape.len() - self.rank();
        let mut strides = vec![0; shape.len()];
        for (i, &d) in shape.iter().enumerate().skip(lead) {
            let (sd, ss) = (self.shape[i - lead], self.strides[i - lead]);
            strides[i] = match sd {
                _ if sd == d => ss,
                1 => 0,
                _ => return Err(err()),
            };
        }
        Ok(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }

    pub fn unsqueeze(&self, dim: usize) -> Result<Layout> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange { op: "unsqueeze", dim, shape: self.shape.clone() });
        }
        let mut out = self.clone();
        let stride = self.strides.get(dim).map_or(1, |&s| s * self.shape[dim]);
        out.shape.insert(dim, 1);
        out.strides.insert(dim, stride);
        Ok(out)
    }

    pub fn squeeze(&self, dim: usize) -> Result<Layout> {
        self.check_dim("squeeze", dim)?;
        if self.shape[dim] != 1 {
            return Err(Error::invalid("squeeze", &self.shape, format!("dimension {dim} is not of size 1")));
        }
        let mut out = self.clone();
        out.shape.remove(dim);
        out.strides.remove(dim);
        Ok(out)
    }

    /// Calls `f` with the storage offset of every element, in row-major order of the view.
    pub fn for_each_offset(&self, mut f: impl FnMut(usize)) {
        if self.numel() == 0 {
            return;
        }
        if self.is_contiguous() {
            (self.offset..self.offset + self.numel()).for_each(f);
            return;
        }
        let rank = self.rank();
        let (inner, inner_stride) = (self.shape[rank - 1], self.strides[rank - 1]);
        self.for_each_row(|base| (0..inner).for_each(|i| f(base + i * inner_stride)));
    }

    /// Calls `f` with the storage offset of the first element of every innermost row (rank ≥ 1),
    /// in row-major order: the row's `shape[rank − 1]` elements lie `strides[rank − 1]` apart, so
    /// with a unit inner stride each row is one slice of storage.
    pub fn for_each_row(&self, mut f: impl FnMut(usize)) {
        if self.numel() == 0 || self.rank() == 0 {
            return;
        }
        let outer = self.rank() - 1;
        let mut index = vec![0usize; outer];
        let mut base = self.offset;
        loop {
            f(base);
            // Odometer over the outer dimensions.
            let mut d = outer;
            loop {
                if d == 0 {
                    return;
                }
                d -= 1;
                index[d] += 1;
                base += self.strides[d];
                if index[d] < self.shape[d] {
                    break;
                }
                base -= self.strides[d] * self.shape[d];
                index[d] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_rules() {
        assert_eq!(broadcast_shapes("t", &[3, 1, 5], &[4, 1]).unwrap(), vec![3, 4, 5]);
        assert!(broadcast_shapes("t", &[3], &[4]).is_err());
    }

    #[test]
    fn offsets_of_a_transposed_narrowed_view() {
        let l = Layout::contiguous(&[3, 4]).transpose(0, 1).unwrap().narrow(0, 1, 2).unwrap();
        let mut got = vec![];
        l.for_each_offset(|o| got.push(o));
        assert_eq!(got, vec![1, 5, 9, 2, 6, 10]);
        assert_eq!(l.max_extent(), 11);
    }

    #[test]
    fn rows_of_a_permuted_view_keep_their_inner_run() {
        // (2, 3, 4) viewed as (3, 2, 4) from offset 1 along the last dimension, 3 wide.
        let l = Layout::contiguous(&[2, 3, 4]).permute(&[1, 0, 2]).unwrap().narrow(2, 1, 3).unwrap();
        let mut rows = vec![];
        l.for_each_row(|base| rows.push(base));
        assert_eq!(rows, vec![1, 13, 5, 17, 9, 21]);
        let mut offsets = vec![];
        l.for_each_offset(|o| offsets.push(o));
        let from_rows: Vec<usize> = rows.iter().flat_map(|&b| b..b + 3).collect();
        assert_eq!(offsets, from_rows);
    }

    #[test]
    fn reshape_needs_contiguity() {
        let l = Layout::contiguous(&[2, 3]);
        assert!(l.reshape(&[3, 2]).unwrap().is_some());
        assert!(l.transpose(0, 1).unwrap().reshape(&[6]).unwrap().is_none());
        assert!(l.reshape(&[5]).is_err());
    }
}
