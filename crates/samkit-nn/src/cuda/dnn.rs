//! Owned cuDNN and cuBLAS handles and descriptors over cudarc's `result`/`sys` layers.
//!
//! cudarc's safe cuDNN layer keeps its raw handles and descriptors private and has no batch
//! norm, and its `Drop`s panic when a destroy call fails; these wrappers expose the raw values
//! to the calls of this module's parent and ignore errors when dropping.
use std::ffi::c_int;

use cudarc::cublas::{result as blas_r, sys as blas_sys};
use cudarc::cudnn::{result as r, sys};
use cudarc::driver::CudaStream;

use super::error::{BlasResult, CudaError, DnnResult};

fn dim(v: usize, what: &'static str) -> Result<c_int, CudaError> {
    c_int::try_from(v).map_err(|_| CudaError::Cudnn {
        call: what,
        status: format!("dimension {v} does not fit a C int"),
    })
}

/// A cuDNN handle bound to one stream.
pub(crate) struct DnnHandle(pub sys::cudnnHandle_t);

impl DnnHandle {
    /// Creates a handle on `stream` (the stream's context must be current).
    pub fn new(stream: &CudaStream) -> Result<Self, CudaError> {
        let h = DnnHandle(r::create_handle().dnn("cudnnCreate")?);
        // SAFETY: `h.0` is a live handle; the stream belongs to the current context and outlives
        // the handle (the backend holds both, the handle dropped first).
        unsafe { r::set_stream(h.0, stream.cu_stream() as sys::cudaStream_t) }
            .dnn("cudnnSetStream")?;
        Ok(h)
    }
}

impl Drop for DnnHandle {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by cudnnCreate and destroyed once, here.
            let _ = unsafe { r::destroy_handle(self.0) };
        }
    }
}

/// A 4-d NCHW f32 tensor descriptor.
pub(crate) struct TensorDesc(pub sys::cudnnTensorDescriptor_t);

impl TensorDesc {
    pub fn nchw(n: usize, c: usize, h: usize, w: usize) -> Result<Self, CudaError> {
        let t = TensorDesc(r::create_tensor_descriptor().dnn("cudnnCreateTensorDescriptor")?);
        let dims = [
            dim(n, "cudnnSetTensor4dDescriptor")?,
            dim(c, "cudnnSetTensor4dDescriptor")?,
            dim(h, "cudnnSetTensor4dDescriptor")?,
            dim(w, "cudnnSetTensor4dDescriptor")?,
        ];
        // SAFETY: `t.0` was just created and is not freed.
        unsafe {
            r::set_tensor4d_descriptor(
                t.0,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                dims,
            )
        }
        .dnn("cudnnSetTensor4dDescriptor")?;
        Ok(t)
    }
}

impl Drop for TensorDesc {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created above and destroyed once, here.
            let _ = unsafe { r::destroy_tensor_descriptor(self.0) };
        }
    }
}

/// A 4-d OIHW f32 filter descriptor (`[k, c, h, w]`: output channels, input channels per
/// group, kernel height and width).
pub(crate) struct FilterDesc(pub sys::cudnnFilterDescriptor_t);

impl FilterDesc {
    pub fn oihw(k: usize, c: usize, h: usize, w: usize) -> Result<Self, CudaError> {
        let f = FilterDesc(r::create_filter_descriptor().dnn("cudnnCreateFilterDescriptor")?);
        let dims = [
            dim(k, "cudnnSetFilter4dDescriptor")?,
            dim(c, "cudnnSetFilter4dDescriptor")?,
            dim(h, "cudnnSetFilter4dDescriptor")?,
            dim(w, "cudnnSetFilter4dDescriptor")?,
        ];
        // SAFETY: `f.0` was just created and is not freed.
        unsafe {
            r::set_filter4d_descriptor(
                f.0,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                dims,
            )
        }
        .dnn("cudnnSetFilter4dDescriptor")?;
        Ok(f)
    }
}

impl Drop for FilterDesc {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created above and destroyed once, here.
            let _ = unsafe { r::destroy_filter_descriptor(self.0) };
        }
    }
}

/// A 2-d cross-correlation descriptor (what deep-learning frameworks call a convolution),
/// f32 compute.
pub(crate) struct ConvDesc(pub sys::cudnnConvolutionDescriptor_t);

impl ConvDesc {
    pub fn new(
        pad: usize,
        stride: usize,
        groups: usize,
        math: sys::cudnnMathType_t,
    ) -> Result<Self, CudaError> {
        let c =
            ConvDesc(r::create_convolution_descriptor().dnn("cudnnCreateConvolutionDescriptor")?);
        let (p, s) = (
            dim(pad, "cudnnSetConvolution2dDescriptor")?,
            dim(stride, "cudnnSetConvolution2dDescriptor")?,
        );
        // SAFETY: `c.0` was just created and is not freed.
        unsafe {
            r::set_convolution2d_descriptor(
                c.0,
                p,
                p,
                s,
                s,
                1,
                1,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            )
        }
        .dnn("cudnnSetConvolution2dDescriptor")?;
        c.set_math(math)?;
        if groups > 1 {
            // SAFETY: as above.
            unsafe {
                r::set_convolution_group_count(c.0, dim(groups, "cudnnSetConvolutionGroupCount")?)
            }
            .dnn("cudnnSetConvolutionGroupCount")?;
        }
        Ok(c)
    }

    pub fn set_math(&self, math: sys::cudnnMathType_t) -> Result<(), CudaError> {
        // SAFETY: `self.0` is live.
        unsafe { r::set_convolution_math_type(self.0, math) }.dnn("cudnnSetConvolutionMathType")
    }
}

impl Drop for ConvDesc {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created above and destroyed once, here.
            let _ = unsafe { r::destroy_convolution_descriptor(self.0) };
        }
    }
}

/// One entry of cuDNN's algorithm lists (`cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t`
/// have this layout), read with plain integers so that a value this build of cudarc does not
/// know cannot make an invalid Rust enum.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RawPerf {
    pub algo: u32,
    pub status: u32,
    pub time: f32,
    pub memory: usize,
    pub determinism: u32,
    pub math_type: u32,
    pub reserved: [c_int; 3],
}

// The three perf structs of cuDNN and `RawPerf` must have the same size.
const _: () = assert!(
    std::mem::size_of::<RawPerf>() == std::mem::size_of::<sys::cudnnConvolutionFwdAlgoPerf_t>()
        && std::mem::size_of::<RawPerf>()
            == std::mem::size_of::<sys::cudnnConvolutionBwdDataAlgoPerf_t>()
        && std::mem::size_of::<RawPerf>()
            == std::mem::size_of::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>()
);

pub(crate) fn fwd_algo(a: u32) -> Option<sys::cudnnConvolutionFwdAlgo_t> {
    use sys::cudnnConvolutionFwdAlgo_t::*;
    Some(match a {
        0 => CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        1 => CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
        2 => CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        3 => CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        4 => CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        5 => CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        6 => CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
        7 => CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        _ => return None,
    })
}

pub(crate) fn bwd_data_algo(a: u32) -> Option<sys::cudnnConvolutionBwdDataAlgo_t> {
    use sys::cudnnConvolutionBwdDataAlgo_t::*;
    Some(match a {
        0 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
        1 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        2 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
        3 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
        4 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
        5 => CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
        _ => return None,
    })
}

pub(crate) fn bwd_filter_algo(a: u32) -> Option<sys::cudnnConvolutionBwdFilterAlgo_t> {
    use sys::cudnnConvolutionBwdFilterAlgo_t::*;
    Some(match a {
        0 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
        1 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        2 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
        3 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
        4 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
        5 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
        6 => CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
        _ => return None,
    })
}

pub(crate) fn math_type(m: u32) -> sys::cudnnMathType_t {
    use sys::cudnnMathType_t::*;
    match m {
        1 => CUDNN_TENSOR_OP_MATH,
        2 => CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION,
        3 => CUDNN_FMA_MATH,
        _ => CUDNN_DEFAULT_MATH,
    }
}

/// A cuBLAS handle bound to one stream.
pub(crate) struct BlasHandle(pub blas_sys::cublasHandle_t);

impl BlasHandle {
    /// Creates a handle on `stream` (its context current); TF32 tensor-core math only when
    /// asked (the default math mode of FP32 GEMMs does not convert to TF32).
    pub fn new(stream: &CudaStream, tf32: bool) -> Result<Self, CudaError> {
        let h = BlasHandle(blas_r::create_handle().blas("cublasCreate")?);
        // SAFETY: `h.0` is a live handle; the stream outlives it (see `DnnHandle::new`).
        unsafe { blas_r::set_stream(h.0, stream.cu_stream() as blas_sys::cudaStream_t) }
            .blas("cublasSetStream")?;
        let mode = if tf32 {
            blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: `h.0` is a live handle.
        unsafe { blas_sys::cublasSetMathMode(h.0, mode) }
            .result()
            .blas("cublasSetMathMode")?;
        Ok(h)
    }
}

impl Drop for BlasHandle {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by cublasCreate and destroyed once, here.
            let _ = unsafe { blas_r::destroy_handle(self.0) };
        }
    }
}
