//! Tensors whose storage is a device buffer.
use std::sync::Arc;

use cudarc::driver::CudaSlice;

use super::Cuda;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// A device buffer behind a [`Tensor`] ([`Storage::Cuda`]). Cloning a tensor shares it (device
/// tensors are read-only inputs: a batch uploaded once and fed to `forward` many times); two
/// tensors are equal when they share the buffer.
#[derive(Clone)]
pub struct DeviceStorage {
    buf: Arc<CudaSlice<f32>>,
}

impl DeviceStorage {
    pub fn slice(&self) -> &CudaSlice<f32> {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The ordinal of the device that holds it.
    pub fn ordinal(&self) -> usize {
        self.buf.ordinal()
    }

    pub(crate) fn not_on_host(&self) -> Error {
        Error::Unsupported(format!(
            "the tensor lives on cuda:{} (download it with Cuda::to_host first)",
            self.ordinal()
        ))
    }
}

impl std::fmt::Debug for DeviceStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceStorage(cuda:{}, {} values)",
            self.ordinal(),
            self.len()
        )
    }
}

impl PartialEq for DeviceStorage {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
}

impl Tensor {
    /// A tensor over a device buffer holding exactly `shape.iter().product()` values.
    pub fn from_device(buf: CudaSlice<f32>, shape: &[usize]) -> Result<Tensor> {
        Tensor::from_storage(Storage::Cuda(DeviceStorage { buf: Arc::new(buf) }), shape)
    }

    /// The device buffer of a device tensor.
    pub fn device_slice(&self) -> Option<&CudaSlice<f32>> {
        match self.storage() {
            Storage::Cuda(d) => Some(d.slice()),
            Storage::Cpu(_) => None,
        }
    }
}

impl Cuda {
    /// A copy of `t` on this backend's device (a device tensor is copied too).
    pub fn to_device(&mut self, t: &Tensor) -> Result<Tensor> {
        let mut buf = self.arena_zeros(t.len())?;
        crate::backend::Backend::load_features(self, t, &mut buf)?;
        Tensor::from_device(buf, t.shape())
    }

    /// A host copy of `t` (a host tensor is cloned).
    pub fn to_host(&mut self, t: &Tensor) -> Result<Tensor> {
        match t.storage() {
            Storage::Cpu(_) => Ok(t.clone()),
            Storage::Cuda(d) => {
                let v = self.arena_to_host(d.slice())?;
                Tensor::from_vec(v, t.shape())
            }
        }
    }
}
