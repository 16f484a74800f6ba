//! A tensor is a shape, a dtype and storage on the CPU (a `Vec`) or, with the CUDA backend,
//! on a device. Inputs are NCHW (images) or `[N, F]` (features), row-major.
use crate::error::{Error, Result};

/// Element type. The network runs in `f32`; checkpoints also carry `i64` counters, which are
/// read and written by [`crate::checkpoint`] directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
        }
    }
}

/// Where a tensor's storage lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal (storage provided by the CUDA backend).
    Cuda(usize),
}

/// The memory behind a tensor: host values, or a device buffer of the CUDA backend (shared
/// when the tensor is cloned; see [`crate::cuda::DeviceStorage`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Storage {
    Cpu(Vec<f32>),
    Cuda(crate::cuda::DeviceStorage),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    storage: Storage,
}

impl Tensor {
    /// A CPU tensor over `data`, which must hold exactly `shape.iter().product()` values.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() || shape.is_empty() {
            return Err(Error::shape(
                "tensor",
                format!("{} values for shape {shape:?}", data.len()),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            dtype: DType::F32,
            storage: Storage::Cpu(data),
        })
    }

    pub fn from_slice(data: &[f32], shape: &[usize]) -> Result<Self> {
        Self::from_vec(data.to_vec(), shape)
    }

    pub fn zeros(shape: &[usize]) -> Result<Self> {
        Self::from_vec(vec![0.0; shape.iter().product()], shape)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> Device {
        match &self.storage {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(d) => Device::Cuda(d.ordinal()),
        }
    }

    /// A tensor over `storage` holding exactly `shape.iter().product()` values.
    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        let len = match &storage {
            Storage::Cpu(v) => v.len(),
            Storage::Cuda(d) => d.len(),
        };
        if n != len || shape.is_empty() {
            return Err(Error::shape(
                "tensor",
                format!("{len} values for shape {shape:?}"),
            ));
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            dtype: DType::F32,
            storage,
        })
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values of a CPU tensor, row-major (an error for a device tensor: download it with
    /// `Cuda::to_host` first).
    pub fn as_slice(&self) -> Result<&[f32]> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(d) => Err(d.not_on_host()),
        }
    }

    pub fn as_mut_slice(&mut self) -> Result<&mut [f32]> {
        match &mut self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(d) => Err(d.not_on_host()),
        }
    }

    pub fn into_vec(self) -> Result<Vec<f32>> {
        match self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Cuda(d) => Err(d.not_on_host()),
        }
    }

    /// Same values, new shape with the same number of elements (flatten, unflatten).
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        if shape.iter().product::<usize>() != self.len() || shape.is_empty() {
            return Err(Error::shape(
                "reshape",
                format!("{:?} into {shape:?}", self.shape),
            ));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// `(N, C, H, W)` of a 4-D tensor.
    pub fn dims4(&self) -> Result<(usize, usize, usize, usize)> {
        match self.shape[..] {
            [n, c, h, w] => Ok((n, c, h, w)),
            _ => Err(Error::shape(
                "tensor",
                format!("expected NCHW, got shape {:?}", self.shape),
            )),
        }
    }

    /// `(N, F)` of a 2-D tensor.
    pub fn dims2(&self) -> Result<(usize, usize)> {
        match self.shape[..] {
            [n, f] => Ok((n, f)),
            _ => Err(Error::shape(
                "tensor",
                format!("expected [N, F], got shape {:?}", self.shape),
            )),
        }
    }

    /// Rows `start..end` of the first dimension (a sub-batch), copied.
    pub fn narrow_batch(&self, start: usize, end: usize) -> Result<Tensor> {
        let n = self.shape[0];
        if start >= end || end > n {
            return Err(Error::invalid(
                "batch range",
                format!("{start}..{end} of {n} samples"),
            ));
        }
        let row = self.len() / n;
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Self::from_slice(&self.as_slice()?[start * row..end * row], &shape)
    }
}
