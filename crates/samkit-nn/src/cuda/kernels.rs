//! The kernels of samkit-kernels' `nn.cu`: loaded by samkit-cuda's loader like the optimizer's
//! families (`Device::module`: a prebuilt cubin from `SAMKIT_CUDA_CUBIN_DIR`, else the disk cache
//! of `SAMKIT_CUDA_CACHE`, else NVRTC with samkit-cuda's options; once per device, and refused
//! unless the family's `sk_abi_nn` probe reports the layouts of `samkit_cuda::abi`), and launched
//! by one typed function each.
//!
//! Every kernel takes one `#[repr(C)]` argument struct of `samkit_cuda::abi` (`Nn*Args`), the
//! twin of the struct `nn.cu` declares: the pairing of a kernel with its struct is written once,
//! in [`Kernels::load`] (a [`NnKernel<A>`] only launches with an `A`). The launchers that the
//! call sites can give whole device slices or views take those and check their lengths, so they
//! are safe; the others take the struct, and their callers vouch for the addresses in it
//! (`# Safety` of each). Every kernel runs [`NN_BLOCK`] threads per block (it traps on another
//! shape) over a grid-stride loop with 64-bit indices, so any grid gives the same results.
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{
    CudaFunction, CudaModule, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use samkit_cuda::abi::{
    NnActArgs, NnActBwdArgs, NnAddArgs, NnAvgPoolBwdArgs, NnAvgPoolFwdArgs, NnBiasAddArgs,
    NnBnEvalBwdArgs, NnBnEvalStatsArgs, NnColSumArgs, NnReluMaskArgs, NnResidualReluArgs,
    NnSmoothCeArgs, NnSqAccumulateArgs, NnSquareArgs, NN_ACT_RELU, NN_ACT_TANH,
};
use samkit_cuda::abi::{NnEmaArgs, NnKdArgs};
use samkit_cuda::compile::Family;
use samkit_cuda::Device;

use super::error::CudaError;
use super::{need, u32_of};
use crate::backend::Activation;
use crate::error::Result;

/// The kernel source, from the registry of samkit-kernels (it includes `samkit.cuh`).
pub const NN: Family = samkit_kernels::NN;

/// Threads per block of every kernel of `nn.cu` (reported by its ABI probe and checked at load).
pub const NN_BLOCK: u32 = samkit_cuda::abi::NN_BLOCK;

/// Grid-stride blocks per SM at most: enough to fill the SM a few times over (8 blocks of
/// [`NN_BLOCK`] threads are resident per SM on every supported architecture), few enough that a
/// huge activation does not launch millions of blocks.
const BLOCKS_PER_SM: u32 = 16;

/// A kernel of `nn.cu` whose one parameter is an `A`.
struct NnKernel<A> {
    func: CudaFunction,
    _args: PhantomData<fn(A)>,
}

impl<A: DeviceRepr> NnKernel<A> {
    /// `name` from `module`; the caller pairs it with the struct its `nn.cu` signature takes.
    fn load(module: &Arc<CudaModule>, name: &str) -> Result<Self> {
        Ok(NnKernel {
            func: module.load_function(name).map_err(CudaError::from)?,
            _args: PhantomData,
        })
    }

    /// Enqueues the kernel on `stream` with `blocks` blocks of [`NN_BLOCK`] threads.
    ///
    /// # Safety
    /// Every address in `args` is a device buffer usable on `stream` that holds what the kernel
    /// reads and writes for the counts in `args` (each launcher's `# Safety`), alive until the
    /// kernel has run (stream-ordered frees guarantee that for the backend's buffers).
    unsafe fn launch(&self, stream: &Arc<CudaStream>, blocks: u32, args: &A) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (blocks.max(1), 1, 1),
            block_dim: (NN_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = stream.launch_builder(&self.func);
        b.arg(args);
        // SAFETY: the kernel takes exactly one `A` (paired in `Kernels::load`, the struct's
        // layout checked by the family's ABI probe when the module loaded), with NN_BLOCK
        // threads as its indexing requires; the addresses are the caller's contract.
        unsafe { b.launch(cfg) }.map_err(CudaError::from)?;
        Ok(())
    }
}

/// The loaded kernels of `nn.cu`.
pub(crate) struct Kernels {
    stream: Arc<CudaStream>,
    /// Blocks of a grid-stride kernel that fill the device a few times over.
    max_blocks: u32,
    _module: Arc<CudaModule>,
    relu_mask: NnKernel<NnReluMaskArgs>,
    add: NnKernel<NnAddArgs>,
    residual_relu: NnKernel<NnResidualReluArgs>,
    act: NnKernel<NnActArgs>,
    act_bwd: NnKernel<NnActBwdArgs>,
    square: NnKernel<NnSquareArgs>,
    sq_accumulate: NnKernel<NnSqAccumulateArgs>,
    bias_add: NnKernel<NnBiasAddArgs>,
    col_sum: NnKernel<NnColSumArgs>,
    avgpool_fwd: NnKernel<NnAvgPoolFwdArgs>,
    avgpool_bwd: NnKernel<NnAvgPoolBwdArgs>,
    bn_eval_stats: NnKernel<NnBnEvalStatsArgs>,
    bn_eval_bwd: NnKernel<NnBnEvalBwdArgs>,
    smooth_ce: NnKernel<NnSmoothCeArgs>,
    kd: NnKernel<NnKdArgs>,
    ema: NnKernel<NnEmaArgs>,
}

fn act_kind(act: Activation) -> u32 {
    match act {
        Activation::Relu => NN_ACT_RELU,
        Activation::Tanh => NN_ACT_TANH,
    }
}

impl Kernels {
    pub fn load(dev: &Device, stream: &Arc<CudaStream>) -> Result<Self> {
        // samkit-cuda's loader: the same prebuilt cubins, disk cache, per-device module cache
        // and ABI check as the optimizer's families.
        let module = dev.module(NN).map_err(CudaError::from)?;
        Ok(Kernels {
            stream: stream.clone(),
            max_blocks: dev.sm_count().max(1) * BLOCKS_PER_SM,
            relu_mask: NnKernel::load(&module, "sk_nn_relu_mask")?,
            add: NnKernel::load(&module, "sk_nn_add")?,
            residual_relu: NnKernel::load(&module, "sk_nn_residual_relu")?,
            act: NnKernel::load(&module, "sk_nn_act")?,
            act_bwd: NnKernel::load(&module, "sk_nn_act_bwd")?,
            square: NnKernel::load(&module, "sk_nn_square")?,
            sq_accumulate: NnKernel::load(&module, "sk_nn_sq_accumulate")?,
            bias_add: NnKernel::load(&module, "sk_nn_bias_add")?,
            col_sum: NnKernel::load(&module, "sk_nn_col_sum")?,
            avgpool_fwd: NnKernel::load(&module, "sk_nn_avgpool_fwd")?,
            avgpool_bwd: NnKernel::load(&module, "sk_nn_avgpool_bwd")?,
            bn_eval_stats: NnKernel::load(&module, "sk_nn_bn_eval_stats")?,
            bn_eval_bwd: NnKernel::load(&module, "sk_nn_bn_eval_bwd")?,
            smooth_ce: NnKernel::load(&module, "sk_nn_smooth_ce")?,
            kd: NnKernel::load(&module, "sk_nn_kd")?,
            ema: NnKernel::load(&module, "sk_nn_ema")?,
            _module: module,
        })
    }

    /// Blocks for `items` work items of one thread each.
    fn blocks(&self, items: u64) -> u32 {
        items
            .div_ceil(NN_BLOCK as u64)
            .clamp(1, self.max_blocks as u64) as u32
    }

    /// `dy[i] ← 0` where `y[i] ≤ 0` (ReLU backward from its output), over `dy.len()` values.
    pub fn relu_mask(
        &self,
        y: &impl DevicePtr<f32>,
        dy: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let n = dy.len();
        need("relu output", y.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (y, _gy) = y.device_ptr(&self.stream);
        let (dy, _gd) = dy.device_ptr_mut(&self.stream);
        let a = NnReluMaskArgs { y, dy, n: n as u64 };
        // SAFETY: y and dy are device buffers of this stream holding at least n f32 (checked
        // above), borrowed (guards alive) across the launch.
        unsafe { self.relu_mask.launch(&self.stream, self.blocks(a.n), &a) }
    }

    /// `dst ← dst + src` over `dst.len()` values.
    pub fn add(&self, dst: &mut impl DevicePtrMut<f32>, src: &impl DevicePtr<f32>) -> Result<()> {
        let n = dst.len();
        need("add source", src.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (src, _gs) = src.device_ptr(&self.stream);
        let (dst, _gd) = dst.device_ptr_mut(&self.stream);
        let a = NnAddArgs {
            dst,
            src,
            n: n as u64,
        };
        // SAFETY: dst and src are device buffers of this stream holding at least n f32 (checked
        // above; distinct, as a `&mut` and a `&` borrow), borrowed across the launch.
        unsafe { self.add.launch(&self.stream, self.blocks(a.n), &a) }
    }

    /// `x ← act(x)` in place.
    pub fn act(&self, act: Activation, x: &mut impl DevicePtrMut<f32>) -> Result<()> {
        let n = x.len() as u64;
        if n == 0 {
            return Ok(());
        }
        let (x, _g) = x.device_ptr_mut(&self.stream);
        let a = NnActArgs {
            x,
            n,
            kind: act_kind(act),
            pad: 0,
        };
        // SAFETY: x is a device buffer of this stream of n f32, borrowed across the launch.
        unsafe { self.act.launch(&self.stream, self.blocks(n), &a) }
    }

    /// `dy ← dy ⊙ act'` from the activation's output `y`, over `dy.len()` values.
    pub fn act_bwd(
        &self,
        act: Activation,
        y: &impl DevicePtr<f32>,
        dy: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let n = dy.len();
        need("activation output", y.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (y, _gy) = y.device_ptr(&self.stream);
        let (dy, _gd) = dy.device_ptr_mut(&self.stream);
        let a = NnActBwdArgs {
            y,
            dy,
            n: n as u64,
            kind: act_kind(act),
            pad: 0,
        };
        // SAFETY: y and dy are device buffers of this stream holding at least n f32 (checked
        // above), borrowed across the launch.
        unsafe { self.act_bwd.launch(&self.stream, self.blocks(a.n), &a) }
    }

    /// `y[r] = mean(x[r·hw..(r + 1)·hw])` for the `y.len()` rows.
    pub fn avgpool_fwd(
        &self,
        x: &impl DevicePtr<f32>,
        y: &mut impl DevicePtrMut<f32>,
        hw: usize,
    ) -> Result<()> {
        let rows = y.len();
        let total = rows
            .checked_mul(hw)
            .ok_or_else(|| crate::error::Error::shape("avg_pool", "rows·hw overflows"))?;
        need("avg_pool input", x.len(), total)?;
        if total == 0 {
            return Ok(());
        }
        let hw32 = u32_of(hw, "avg_pool plane")?;
        let (x, _gx) = x.device_ptr(&self.stream);
        let (y, _gy) = y.device_ptr_mut(&self.stream);
        let a = NnAvgPoolFwdArgs {
            x,
            y,
            rows: rows as u64,
            inv: 1.0 / hw as f64,
            hw: hw32,
            pad: 0,
        };
        // SAFETY: x holds rows·hw f32 and y rows (checked above), device buffers of this stream
        // borrowed across the launch. One warp per row: 32 threads of work each.
        unsafe {
            self.avgpool_fwd
                .launch(&self.stream, self.blocks(a.rows * 32), &a)
        }
    }

    /// `dx[r·hw + j] = dy[r] / hw` for the `dy.len()` rows.
    pub fn avgpool_bwd(
        &self,
        dy: &impl DevicePtr<f32>,
        dx: &mut impl DevicePtrMut<f32>,
        hw: usize,
    ) -> Result<()> {
        let rows = dy.len();
        let total = rows
            .checked_mul(hw)
            .ok_or_else(|| crate::error::Error::shape("avg_pool", "rows·hw overflows"))?;
        need("avg_pool input gradient", dx.len(), total)?;
        if total == 0 {
            return Ok(());
        }
        let hw32 = u32_of(hw, "avg_pool plane")?;
        let (dy, _gy) = dy.device_ptr(&self.stream);
        let (dx, _gx) = dx.device_ptr_mut(&self.stream);
        let a = NnAvgPoolBwdArgs {
            dy,
            dx,
            rows: rows as u64,
            hw: hw32,
            inv: 1.0 / hw as f32,
        };
        // SAFETY: dy holds rows f32 and dx rows·hw (checked above), device buffers of this
        // stream borrowed across the launch.
        unsafe {
            self.avgpool_bwd
                .launch(&self.stream, self.blocks(total as u64), &a)
        }
    }

    /// Label-smoothed cross-entropy of the `loss.len()` rows of `k` logits (see `nn.cu`), and
    /// with `dz` its gradient weighted per row by `w`.
    #[allow(clippy::too_many_arguments)]
    pub fn smooth_ce(
        &self,
        z: &impl DevicePtr<f32>,
        labels: &impl DevicePtr<u32>,
        w: &impl DevicePtr<f32>,
        loss: &mut impl DevicePtrMut<f32>,
        dz: Option<&mut impl DevicePtrMut<f32>>,
        k: usize,
        smoothing: f32,
    ) -> Result<()> {
        let n = loss.len();
        if k < 2 {
            return Err(crate::error::Error::shape(
                "cross-entropy",
                format!("{k} classes, need at least 2"),
            ));
        }
        let nk = n
            .checked_mul(k)
            .ok_or_else(|| crate::error::Error::shape("cross-entropy", "n·k overflows"))?;
        need("logits", z.len(), nk)?;
        need("labels", labels.len(), n)?;
        need("sample weights", w.len(), n)?;
        if let Some(dz) = dz.as_deref() {
            need("logit gradient", dz.len(), nk)?;
        }
        if n == 0 {
            return Ok(());
        }
        let k32 = u32_of(k, "classes")?;
        let (z, _gz) = z.device_ptr(&self.stream);
        let (labels, _gl) = labels.device_ptr(&self.stream);
        let (w, _gw) = w.device_ptr(&self.stream);
        let (loss, _go) = loss.device_ptr_mut(&self.stream);
        let (dz, _gd) = match dz {
            Some(g) => {
                let (p, guard) = g.device_ptr_mut(&self.stream);
                (p, Some(guard))
            }
            None => (0, None),
        };
        let a = NnSmoothCeArgs {
            z,
            labels,
            w,
            loss,
            dz,
            n: n as u64,
            k: k32,
            smoothing,
        };
        // SAFETY: z (and dz when not null) hold n·k f32, labels n u32, w and loss n f32 (checked
        // above), device buffers of this stream borrowed across the launch; k ≥ 2 (checked). A
        // label ≥ k only selects no "on" class (the kernel compares, never indexes with it).
        unsafe { self.smooth_ce.launch(&self.stream, self.blocks(a.n), &a) }
    }

    /// MESA/SAF's distillation term of the `kd.len()` rows of `k` logits `z` against the
    /// teacher's `t` (see `nn.cu`, `sk_nn_kd`): `kd` gets `τ²·KL` per row, and `dz` (when given)
    /// gets `w_i·λ·τ·(softmax(z_i/τ) − softmax(t_i/τ))` ADDED; rows whose `present` flag is 0
    /// get 0 and no gradient (`present` absent: every row has a teacher).
    #[allow(clippy::too_many_arguments)]
    pub fn kd(
        &self,
        z: &impl DevicePtr<f32>,
        t: &impl DevicePtr<f32>,
        w: &impl DevicePtr<f32>,
        present: Option<&impl DevicePtr<u32>>,
        kd: &mut impl DevicePtrMut<f32>,
        dz: Option<&mut impl DevicePtrMut<f32>>,
        k: usize,
        tau: f32,
        lambda: f32,
    ) -> Result<()> {
        let n = kd.len();
        if k < 2 {
            return Err(crate::error::Error::shape(
                "distillation",
                format!("{k} classes, need at least 2"),
            ));
        }
        crate::distill::check_hyper(lambda, tau)?;
        let nk = n
            .checked_mul(k)
            .ok_or_else(|| crate::error::Error::shape("distillation", "n·k overflows"))?;
        need("student logits", z.len(), nk)?;
        need("teacher logits", t.len(), nk)?;
        need("sample weights", w.len(), n)?;
        if let Some(p) = present {
            need("teacher flags", p.len(), n)?;
        }
        if let Some(dz) = dz.as_deref() {
            need("logit gradient", dz.len(), nk)?;
        }
        if n == 0 {
            return Ok(());
        }
        let k32 = u32_of(k, "classes")?;
        let (z, _gz) = z.device_ptr(&self.stream);
        let (t, _gt) = t.device_ptr(&self.stream);
        let (w, _gw) = w.device_ptr(&self.stream);
        let (present, _gp) = match present {
            Some(p) => {
                let (p, guard) = p.device_ptr(&self.stream);
                (p, Some(guard))
            }
            None => (0, None),
        };
        let (kd, _go) = kd.device_ptr_mut(&self.stream);
        let (dz, _gd) = match dz {
            Some(g) => {
                let (p, guard) = g.device_ptr_mut(&self.stream);
                (p, Some(guard))
            }
            None => (0, None),
        };
        let a = NnKdArgs {
            z,
            t,
            w,
            present,
            kd,
            dz,
            n: n as u64,
            k: k32,
            tau,
            lam: lambda,
            pad: 0,
        };
        // SAFETY: z, t (and dz when not null) hold n·k f32, w and kd n f32, present (when not
        // null) n u32 (checked above), device buffers of this stream borrowed across the
        // launch; k ≥ 2 and τ > 0 (checked).
        unsafe { self.kd.launch(&self.stream, self.blocks(a.n), &a) }
    }

    /// MESA's teacher update `ema ← d·ema + (1 − d)·w` over `ema.len()` values (`w` at least
    /// as long), `1 − d` rounded once in f32 as the CPU update does.
    pub fn ema(
        &self,
        ema: &mut impl DevicePtrMut<f32>,
        w: &impl DevicePtr<f32>,
        d: f32,
    ) -> Result<()> {
        let n = ema.len();
        need("EMA source", w.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let (w, _gw) = w.device_ptr(&self.stream);
        let (ema, _ge) = ema.device_ptr_mut(&self.stream);
        let a = NnEmaArgs {
            ema,
            w,
            n: n as u64,
            d,
            one_m_d: 1.0 - d,
        };
        // SAFETY: ema holds n f32 and w at least n (checked above), device buffers of this
        // stream borrowed across the launch.
        unsafe { self.ema.launch(&self.stream, self.blocks(a.n), &a) }
    }

    /// `y ← act(y + r)` with `r` = 0 for no residual (`relu` = 0: no activation).
    ///
    /// # Safety
    /// `a.y` (and `a.r` unless 0) are device buffers of the backend's stream holding `a.n` f32.
    pub unsafe fn residual_relu(&self, a: &NnResidualReluArgs) -> Result<()> {
        if a.n == 0 {
            return Ok(());
        }
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe { self.residual_relu.launch(&self.stream, self.blocks(a.n), a) }
    }

    /// `y ← x²`.
    ///
    /// # Safety
    /// `a.x` and `a.y` are device buffers of the backend's stream holding `a.n` f32 each.
    pub unsafe fn square(&self, a: &NnSquareArgs) -> Result<()> {
        if a.n == 0 {
            return Ok(());
        }
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe { self.square.launch(&self.stream, self.blocks(a.n), a) }
    }

    /// `dst[j] += Σ_{b < count} src[b·stride + j]²`, `j < len`.
    ///
    /// # Safety
    /// `a.src` holds `(count − 1)·stride + len` f32 and `a.dst` holds `len`, device buffers of
    /// the backend's stream.
    pub unsafe fn sq_accumulate(&self, a: &NnSqAccumulateArgs) -> Result<()> {
        if a.len == 0 || a.count == 0 {
            return Ok(());
        }
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe {
            self.sq_accumulate
                .launch(&self.stream, self.blocks(a.len), a)
        }
    }

    /// `y[r, o] += b[o]` over `rows` rows of `out`.
    ///
    /// # Safety
    /// `a.y` holds `rows·out` f32 and `a.b` holds `out`, device buffers of the backend's stream.
    pub unsafe fn bias_add(&self, a: &NnBiasAddArgs) -> Result<()> {
        let total = a.rows.saturating_mul(a.out as u64);
        if total == 0 {
            return Ok(());
        }
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe { self.bias_add.launch(&self.stream, self.blocks(total), a) }
    }

    /// `out[c] (+)= Σ_r f(x[r, c])`, `f` = identity or square.
    ///
    /// # Safety
    /// `a.x` holds `rows·cols` f32 and `a.out` holds `cols`, device buffers of the backend's
    /// stream.
    pub unsafe fn col_sum(&self, a: &NnColSumArgs) -> Result<()> {
        if a.cols == 0 {
            return Ok(());
        }
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe {
            self.col_sum
                .launch(&self.stream, self.blocks(a.cols as u64), a)
        }
    }

    /// `saved_mean ← running_mean`, `saved_invstd ← 1/√(running_var + eps)`.
    ///
    /// # Safety
    /// The four buffers of `a` are device buffers of the backend's stream holding `c` f32 each.
    pub unsafe fn bn_eval_stats(&self, a: &NnBnEvalStatsArgs) -> Result<()> {
        if a.c == 0 {
            return Ok(());
        }
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe {
            self.bn_eval_stats
                .launch(&self.stream, self.blocks(a.c as u64), a)
        }
    }

    /// Batch-norm backward with fixed statistics (see `nn.cu`), one block per channel.
    ///
    /// # Safety
    /// `a.x`, `a.dy`, `a.dx` hold `n·c·hw` f32 (NCHW); `gamma`, `mean`, `invstd`, `dgamma`,
    /// `dbeta` hold `c`; device buffers of the backend's stream; `dgamma` and `dbeta` disjoint.
    pub unsafe fn bn_eval_bwd(&self, a: &NnBnEvalBwdArgs) -> Result<()> {
        if a.c == 0 {
            return Ok(());
        }
        // The kernel loops over channels by block: a grid of at most c blocks.
        let blocks = a.c.min(self.max_blocks.saturating_mul(4));
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe { self.bn_eval_bwd.launch(&self.stream, blocks, a) }
    }
}
