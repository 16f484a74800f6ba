//! Batch norm through cuDNN (spatial mode, NCHW), the residual add and ReLU in one kernel after
//! it, and the inference-mode backward pass (with SSAM-F's per-sample squares) as a kernel.
use std::ffi::c_void;

use cudarc::cudnn::sys;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use samkit_cuda::abi::{NnBnEvalBwdArgs, NnBnEvalStatsArgs, NnResidualReluArgs};

use super::error::DnnResult;
use super::{at, need, u32_of, Cuda};
use crate::backend::{check_bn, BnConfig, BnMode, BnParams, BnState, Dims, ParamGrad};
use crate::error::{Error, Result};

/// cuDNN's `CUDNN_BN_MIN_EPSILON`: `0.0` since cuDNN 8 (`1e-5` was cuDNN 7's, and PyTorch's
/// default `eps = 1e-5` as an f32 widens to 9.99999974737875e-6, below that old bound).
const BN_MIN_EPSILON: f64 = 0.0;

/// `eps` as cuDNN takes it (f64), or an error when cuDNN would refuse it.
fn check_eps(eps: f32) -> Result<f64> {
    let e = eps as f64;
    if !(e > BN_MIN_EPSILON && e.is_finite()) {
        return Err(Error::invalid(
            "eps",
            format!("cuDNN's batch norm needs a finite eps > {BN_MIN_EPSILON}, got {e}"),
        ));
    }
    Ok(e)
}

const MODE: sys::cudnnBatchNormMode_t = sys::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL;

impl Cuda {
    /// The cached descriptors of an activation and of its per-channel parameters.
    fn bn_descs(
        &mut self,
        d: Dims,
    ) -> Result<(sys::cudnnTensorDescriptor_t, sys::cudnnTensorDescriptor_t)> {
        let x = self.tensor_desc([d.n, d.c, d.h, d.w])?.0;
        let p = self.tensor_desc([1, d.c, 1, 1])?.0;
        Ok((x, p))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn bn_forward(
        &mut self,
        mode: BnMode,
        cfg: BnConfig,
        d: Dims,
        x: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        p: BnParams,
        state: &mut BnState<Self>,
        residual: Option<&CudaSlice<f32>>,
        relu: bool,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_bn(d, x.len(), y.len(), state.channels)?;
        if let Some(r) = residual {
            check_bn(d, r.len(), y.len(), d.c)?;
        }
        for (b, what) in [
            (&state.running_mean, "running mean"),
            (&state.running_var, "running variance"),
            (&state.saved_mean, "saved mean"),
            (&state.saved_invstd, "saved 1/std"),
        ] {
            need(what, b.len(), d.c)?;
        }
        let eps = check_eps(cfg.eps)?;
        if mode.uses_batch_stats() && d.n * d.hw() < 2 {
            return Err(Error::invalid(
                "batch",
                format!(
                    "batch norm in training mode needs more than one value per channel ({d:?})"
                ),
            ));
        }
        self.bind()?;
        self.bn_eps = eps;
        let (xd, pd) = self.bn_descs(d)?;
        let st = self.stream.clone();
        let h = self.dnn.0;
        let (xp, _g1) = x.device_ptr(&st);
        let (pp, _g2) = params.device_ptr(&st);
        let (yp, _g3) = y.device_ptr_mut(&st);
        let gamma = at(pp, p.gamma, d.c, params.len(), "batch_norm weight")?;
        let beta = at(pp, p.beta, d.c, params.len(), "batch_norm bias")?;
        let (one, zero) = (1.0f32, 0.0f32);
        let (alpha, beta0): (*const c_void, *const c_void) =
            ((&one as *const f32).cast(), (&zero as *const f32).cast());
        {
            let BnState {
                running_mean,
                running_var,
                saved_mean,
                saved_invstd,
                ..
            } = &mut *state;
            let (rm, _g4) = running_mean.device_ptr_mut(&st);
            let (rv, _g5) = running_var.device_ptr_mut(&st);
            let (sm, _g6) = saved_mean.device_ptr_mut(&st);
            let (si, _g7) = saved_invstd.device_ptr_mut(&st);
            match mode {
                BnMode::Train | BnMode::TrainNoUpdate => {
                    // TrainNoUpdate: factor 0 and no running-statistics buffers (cuDNN allows
                    // both null), so they are not even read.
                    let (factor, rm, rv) = if mode == BnMode::Train {
                        (cfg.momentum as f64, rm, rv)
                    } else {
                        (0.0, 0, 0)
                    };
                    // SAFETY: x and y hold d.len() values and match the NCHW descriptor; gamma,
                    // beta, the running and saved statistics hold d.c values and match the
                    // [1, C, 1, 1] descriptor (checked above); y is its own buffer; alpha and
                    // beta0 are host f32 read during the call.
                    unsafe {
                        sys::cudnnBatchNormalizationForwardTraining(
                            h,
                            MODE,
                            alpha,
                            beta0,
                            xd,
                            xp as *const c_void,
                            xd,
                            yp as *mut c_void,
                            pd,
                            gamma as *const c_void,
                            beta as *const c_void,
                            factor,
                            rm as *mut c_void,
                            rv as *mut c_void,
                            eps,
                            sm as *mut c_void,
                            si as *mut c_void,
                        )
                    }
                    .result()
                    .dnn("cudnnBatchNormalizationForwardTraining")?;
                }
                BnMode::Eval => {
                    // SAFETY: as above, with the running statistics as the estimates (read).
                    unsafe {
                        sys::cudnnBatchNormalizationForwardInference(
                            h,
                            MODE,
                            alpha,
                            beta0,
                            xd,
                            xp as *const c_void,
                            xd,
                            yp as *mut c_void,
                            pd,
                            gamma as *const c_void,
                            beta as *const c_void,
                            rm as *const c_void,
                            rv as *const c_void,
                            eps,
                        )
                    }
                    .result()
                    .dnn("cudnnBatchNormalizationForwardInference")?;
                    // What the backward pass reads: the running mean and 1/√(var + eps).
                    let a = NnBnEvalStatsArgs {
                        rmean: rm,
                        rvar: rv,
                        smean: sm,
                        sinvstd: si,
                        eps,
                        c: u32_of(d.c, "channels")?,
                        pad: 0,
                    };
                    // SAFETY: the four buffers hold d.c values on this stream (checked above).
                    unsafe { self.kernels.bn_eval_stats(&a) }?;
                }
            }
        }
        if mode == BnMode::Train {
            state.num_batches_tracked += 1;
        }
        if residual.is_some() || relu {
            let (rp, _g8) = match residual {
                Some(r) => {
                    let (p, g) = r.device_ptr(&st);
                    (p, Some(g))
                }
                None => (0, None),
            };
            let a = NnResidualReluArgs {
                y: yp,
                r: rp,
                n: d.len() as u64,
                relu: relu as u32,
                pad: 0,
            };
            // SAFETY: y (and the residual) hold d.len() values on this stream (checked above).
            unsafe { self.kernels.residual_relu(&a) }?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn bn_backward(
        &mut self,
        mode: BnMode,
        d: Dims,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        p: BnParams,
        state: &BnState<Self>,
        pg: ParamGrad,
        grad: &mut CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_bn(d, x.len(), dx.len(), state.channels)?;
        check_bn(d, dy.len(), dx.len(), d.c)?;
        need("saved mean", state.saved_mean.len(), d.c)?;
        need("saved 1/std", state.saved_invstd.len(), d.c)?;
        if pg == ParamGrad::PerSampleSq && mode != BnMode::Eval {
            return Err(Error::invalid(
                "mode",
                "per-sample gradients need batch norm in eval mode (samples must be independent)",
            ));
        }
        if p.beta < p.gamma + d.c && p.gamma < p.beta + d.c {
            return Err(Error::shape(
                "batch_norm",
                "weight and bias segments overlap",
            ));
        }
        self.bind()?;
        let (xd, pd) = self.bn_descs(d)?;
        let st = self.stream.clone();
        let h = self.dnn.0;
        let (xp, _g1) = x.device_ptr(&st);
        let (gyp, _g2) = dy.device_ptr(&st);
        let (pp, _g3) = params.device_ptr(&st);
        let grad_len = grad.len();
        let (gp, _g4) = grad.device_ptr_mut(&st);
        let (dxp, _g5) = dx.device_ptr_mut(&st);
        let (sm, _g6) = state.saved_mean.device_ptr(&st);
        let (si, _g7) = state.saved_invstd.device_ptr(&st);
        let gamma = at(pp, p.gamma, d.c, params.len(), "batch_norm weight")?;
        let dgamma = at(gp, p.gamma, d.c, grad_len, "batch_norm weight gradient")?;
        let dbeta = at(gp, p.beta, d.c, grad_len, "batch_norm bias gradient")?;
        if mode.uses_batch_stats() {
            let (one, zero) = (1.0f32, 0.0f32);
            let (a1, b0): (*const c_void, *const c_void) =
                ((&one as *const f32).cast(), (&zero as *const f32).cast());
            // SAFETY: x, dy, dx hold d.len() values (NCHW descriptor), gamma, the gradient
            // segments and the saved statistics d.c values ([1, C, 1, 1] descriptor), checked
            // above; dx and the gradient segments (disjoint, checked) are written, nothing else;
            // the scaling factors are host f32 read during the call.
            unsafe {
                sys::cudnnBatchNormalizationBackward(
                    h,
                    MODE,
                    a1,
                    b0,
                    a1,
                    b0,
                    xd,
                    xp as *const c_void,
                    xd,
                    gyp as *const c_void,
                    xd,
                    dxp as *mut c_void,
                    pd,
                    gamma as *const c_void,
                    dgamma as *mut c_void,
                    dbeta as *mut c_void,
                    self.bn_eps.max(BN_MIN_EPSILON),
                    sm as *const c_void,
                    si as *const c_void,
                )
            }
            .result()
            .dnn("cudnnBatchNormalizationBackward")?;
        } else {
            let a = NnBnEvalBwdArgs {
                x: xp,
                dy: gyp,
                gamma,
                mean: sm,
                invstd: si,
                dgamma,
                dbeta,
                dx: dxp,
                n: u32_of(d.n, "batch")?,
                c: u32_of(d.c, "channels")?,
                hw: u32_of(d.hw(), "plane")?,
                psq: (pg == ParamGrad::PerSampleSq) as u32,
            };
            // SAFETY: as above, for the kernel's NCHW indexing of n·c·hw values (x, dy, dx) and
            // c (gamma, the saved statistics, the disjoint gradient segments).
            unsafe { self.kernels.bn_eval_bwd(&a) }?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytorch_default_eps_is_accepted() {
        // 1e-5 as an f32 widens to 9.99999974737875e-6: below cuDNN 7's minimum, fine for 8+.
        let eps = BnConfig::default().eps;
        assert_eq!(check_eps(eps).unwrap(), eps as f64);
        assert!(check_eps(1e-3).is_ok());
        for bad in [0.0, -1e-5, f32::NAN, f32::INFINITY] {
            assert!(check_eps(bad).is_err(), "{bad}");
        }
    }
}
