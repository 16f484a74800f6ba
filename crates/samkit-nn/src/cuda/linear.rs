//! Linear layers through cuBLAS (row-major `[N, F]` activations and `[out, in]` weights are
//! column-major `[F, N]` and `[in, out]` matrices to cuBLAS, so no transposition is copied).
use std::ffi::c_int;

use cudarc::cublas::{result as blas, sys};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use samkit_cuda::abi::{NnBiasAddArgs, NnColSumArgs, NnSquareArgs};

use super::error::BlasResult;
use super::{at, need, u32_of, Cuda};
use crate::backend::{LinearParams, ParamGrad};
use crate::error::{Error, Result};

fn int(v: usize, what: &'static str) -> Result<c_int> {
    c_int::try_from(v).map_err(|_| Error::shape(what, format!("{v} does not fit a C int")))
}

use sys::cublasOperation_t::{CUBLAS_OP_N as N, CUBLAS_OP_T as T};

impl Cuda {
    /// `C[m×n] = alpha·op(A)·op(B) + beta·C`, column-major, on raw addresses.
    ///
    /// # Safety
    /// The addresses hold the matrices their leading dimensions and sizes describe, on this
    /// stream; `c` is not read through `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn sgemm(
        &self,
        (ta, tb): (sys::cublasOperation_t, sys::cublasOperation_t),
        (m, n, k): (usize, usize, usize),
        (a, lda): (u64, usize),
        (b, ldb): (u64, usize),
        beta: f32,
        (c, ldc): (u64, usize),
    ) -> Result<()> {
        let alpha = 1.0f32;
        // SAFETY: the caller's contract for the matrices; alpha and beta are host f32 (the
        // handle's default pointer mode) read during the call; the handle is live.
        unsafe {
            blas::sgemm(
                self.blas.0,
                ta,
                tb,
                int(m, "gemm m")?,
                int(n, "gemm n")?,
                int(k, "gemm k")?,
                &alpha,
                a as *const f32,
                int(lda, "gemm lda")?,
                b as *const f32,
                int(ldb, "gemm ldb")?,
                &beta,
                c as *mut f32,
                int(ldc, "gemm ldc")?,
            )
        }
        .blas("cublasSgemm")?;
        Ok(())
    }

    /// `y[N, out] = x[N, in]·Wᵀ + b`.
    pub(super) fn lin_forward(
        &mut self,
        n: usize,
        l: LinearParams,
        x: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        need("linear input", x.len(), n * l.inp)?;
        need("linear output", y.len(), n * l.out)?;
        if n == 0 || l.out == 0 {
            return Ok(());
        }
        self.bind()?;
        let st = self.stream.clone();
        let (xp, _g1) = x.device_ptr(&st);
        let (pp, _g2) = params.device_ptr(&st);
        let (yp, _g3) = y.device_ptr_mut(&st);
        let wp = at(pp, l.weight, l.out * l.inp, params.len(), "linear weight")?;
        // y' [out × N] = (W' [in × out])ᵀ · x' [in × N].
        // SAFETY: W holds out·in values, x n·in, y n·out (checked above); y is its own buffer.
        unsafe {
            self.sgemm(
                (T, N),
                (l.out, n, l.inp),
                (wp, l.inp),
                (xp, l.inp),
                0.0,
                (yp, l.out),
            )
        }?;
        if let Some(bo) = l.bias {
            let bp = at(pp, bo, l.out, params.len(), "linear bias")?;
            let a = NnBiasAddArgs {
                y: yp,
                b: bp,
                rows: n as u64,
                out: u32_of(l.out, "linear out")?,
                pad: 0,
            };
            // SAFETY: y holds n·out values, the bias out, on this stream (checked above).
            unsafe { self.kernels.bias_add(&a) }?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn lin_backward(
        &mut self,
        n: usize,
        l: LinearParams,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        pg: ParamGrad,
        grad: &mut CudaSlice<f32>,
        dx: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        need("linear input", x.len(), n * l.inp)?;
        need("linear output gradient", dy.len(), n * l.out)?;
        if let Some(dx) = dx.as_deref() {
            need("linear input gradient", dx.len(), n * l.inp)?;
        }
        self.bind()?;
        let st = self.stream.clone();
        if n == 0 {
            // No sample: a zero batch gradient, nothing to add.
            if pg == ParamGrad::Sum {
                let wl = l.out * l.inp;
                at(0, l.weight, wl, grad.len(), "linear weight gradient")?;
                st.memset_zeros(&mut grad.slice_mut(l.weight..l.weight + wl))?;
                if let Some(bo) = l.bias {
                    at(0, bo, l.out, grad.len(), "linear bias gradient")?;
                    st.memset_zeros(&mut grad.slice_mut(bo..bo + l.out))?;
                }
            }
            return Ok(());
        }
        let (xp, _g1) = x.device_ptr(&st);
        let (gyp, _g2) = dy.device_ptr(&st);
        let (pp, _g3) = params.device_ptr(&st);
        let grad_len = grad.len();
        let (gp, _g4) = grad.device_ptr_mut(&st);
        let wl = l.out * l.inp;
        let wp = at(pp, l.weight, wl, params.len(), "linear weight")?;
        let dwp = at(gp, l.weight, wl, grad_len, "linear weight gradient")?;
        let dbp = match l.bias {
            Some(bo) => Some(at(gp, bo, l.out, grad_len, "linear bias gradient")?),
            None => None,
        };
        // The weight gradient: dW' [in × out] = x' [in × N] · (dy' [out × N])ᵀ, overwritten
        // (Sum) or, with squared inputs, added (PerSampleSq: Σ_i (dy_i x_iᵀ)² = (dy²)ᵀ·x²).
        let (a, b, beta) = match pg {
            ParamGrad::Sum => (xp, gyp, 0.0),
            ParamGrad::PerSampleSq => {
                let sx = self.scratch(0, n * l.inp)?;
                let sy = self.scratch(1, n * l.out)?;
                let (sqx, sqy) = (
                    NnSquareArgs {
                        x: xp,
                        y: sx,
                        n: (n * l.inp) as u64,
                    },
                    NnSquareArgs {
                        x: gyp,
                        y: sy,
                        n: (n * l.out) as u64,
                    },
                );
                // SAFETY: x holds n·in values and scratch 0 at least as many; dy and scratch 1
                // n·out; all on this stream.
                unsafe {
                    self.kernels.square(&sqx)?;
                    self.kernels.square(&sqy)?;
                }
                (sx, sy, 1.0)
            }
        };
        // SAFETY: a holds n·in values, b n·out, the gradient segment out·in (checked above).
        unsafe {
            self.sgemm(
                (N, T),
                (l.inp, l.out, n),
                (a, l.inp),
                (b, l.out),
                beta,
                (dwp, l.inp),
            )
        }?;
        if let Some(dbp) = dbp {
            // Per-sample squares are added to what the gradient holds; a sum is written.
            let psq = (pg == ParamGrad::PerSampleSq) as u32;
            let a = NnColSumArgs {
                x: gyp,
                out: dbp,
                rows: u32_of(n, "batch")?,
                cols: u32_of(l.out, "linear out")?,
                square: psq,
                accumulate: psq,
            };
            // SAFETY: dy holds n·out values, the bias gradient segment out, on this stream.
            unsafe { self.kernels.col_sum(&a) }?;
        }
        if let Some(dx) = dx {
            let (dxp, _g5) = dx.device_ptr_mut(&st);
            // dx' [in × N] = W' [in × out] · dy' [out × N].
            // SAFETY: W holds out·in values, dy n·out, dx n·in (checked above).
            unsafe {
                self.sgemm(
                    (N, N),
                    (l.inp, n, l.out),
                    (wp, l.inp),
                    (gyp, l.out),
                    0.0,
                    (dxp, l.inp),
                )
            }?;
        }
        Ok(())
    }
}
