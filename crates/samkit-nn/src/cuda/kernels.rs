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
    PushKernelArg, SyncOnDrop,
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

/// Refuses fewer than 2 classes for the loss `what` (the kernels' softmax needs two).
fn need_classes(what: &'static str, k: usize) -> Result<()> {
    if k < 2 {
        return Err(crate::error::Error::shape(
            what,
            format!("{k} classes, need at least 2"),
        ));
    }
    Ok(())
}

/// The plane `hw` as the kernels' u32 for `rows` avg-pool rows whose `rows·hw` side (`what`)
/// has `len` values; `None` when there is nothing to pool.
fn pool_plane(rows: usize, hw: usize, what: &'static str, len: usize) -> Result<Option<u32>> {
    let total = rows
        .checked_mul(hw)
        .ok_or_else(|| crate::error::Error::shape("avg_pool", "rows·hw overflows"))?;
    need(what, len, total)?;
    if total == 0 {
        return Ok(None);
    }
    u32_of(hw, "avg_pool plane").map(Some)
}

/// The address of an optional buffer, 0 (the kernels' "absent") for none, with its guard.
fn opt_ptr<'a, T>(
    p: Option<&'a impl DevicePtr<T>>,
    stream: &'a CudaStream,
) -> (u64, Option<SyncOnDrop<'a>>) {
    match p {
        Some(p) => {
            let (p, guard) = p.device_ptr(stream);
            (p, Some(guard))
        }
        None => (0, None),
    }
}

/// [`opt_ptr`] for a buffer the kernel writes.
fn opt_ptr_mut<'a, T>(
    p: Option<&'a mut impl DevicePtrMut<T>>,
    stream: &'a CudaStream,
) -> (u64, Option<SyncOnDrop<'a>>) {
    match p {
        Some(p) => {
            let (p, guard) = p.device_ptr_mut(stream);
            (p, Some(guard))
        }
        None => (0, None),
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

    /// Enqueues `kernel` with the blocks of `items` work items; nothing when there are none.
    ///
    /// # Safety
    /// As [`NnKernel::launch`]: the addresses in `a` hold what the kernel reads and writes.
    unsafe fn launch_items<A: DeviceRepr>(
        &self,
        kernel: &NnKernel<A>,
        items: u64,
        a: &A,
    ) -> Result<()> {
        if items == 0 {
            return Ok(());
        }
        // SAFETY: the caller's contract above is `launch`'s.
        unsafe { kernel.launch(&self.stream, self.blocks(items), a) }
    }

    /// Enqueues `kernel` over the `n = dst.len()` values of `dst`, reading `src` (`what`,
    /// refused when shorter than `n`), with the struct `args` makes of `(src, dst, n)`.
    ///
    /// # Safety
    /// The struct `args` makes has the kernel read at most `n` values at `src` and write at
    /// most `n` at `dst`.
    unsafe fn launch_src_dst<A: DeviceRepr>(
        &self,
        kernel: &NnKernel<A>,
        what: &'static str,
        src: &impl DevicePtr<f32>,
        dst: &mut impl DevicePtrMut<f32>,
        args: impl FnOnce(u64, u64, u64) -> A,
    ) -> Result<()> {
        let n = dst.len();
        need(what, src.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let n = n as u64;
        // SAFETY: src and dst hold at least n f32 (checked above); the caller's contract keeps
        // the kernel within n values of each.
        unsafe { self.launch_read_write(kernel, n, src, dst, |src, dst| args(src, dst, n)) }
    }

    /// Enqueues `kernel` for `items` work items with the struct `args` makes of the addresses
    /// of `src` (read) and `dst` (written), both borrowed until the launch is enqueued.
    ///
    /// # Safety
    /// The struct `args` makes has the kernel read and write within `src` and `dst`.
    unsafe fn launch_read_write<A: DeviceRepr>(
        &self,
        kernel: &NnKernel<A>,
        items: u64,
        src: &impl DevicePtr<f32>,
        dst: &mut impl DevicePtrMut<f32>,
        args: impl FnOnce(u64, u64) -> A,
    ) -> Result<()> {
        let (src, _gs) = src.device_ptr(&self.stream);
        let (dst, _gd) = dst.device_ptr_mut(&self.stream);
        let a = args(src, dst);
        // SAFETY: src and dst are device buffers of this stream (distinct, as a `&` and a
        // `&mut` borrow), borrowed (guards alive) across the launch; the caller's contract
        // keeps the kernel within them.
        unsafe { kernel.launch(&self.stream, self.blocks(items), &a) }
    }

    /// `dy[i] ← 0` where `y[i] ≤ 0` (ReLU backward from its output), over `dy.len()` values.
    pub fn relu_mask(
        &self,
        y: &impl DevicePtr<f32>,
        dy: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        // SAFETY: the kernel reads y and writes dy for the n values it is given.
        unsafe {
            self.launch_src_dst(&self.relu_mask, "relu output", y, dy, |y, dy, n| {
                NnReluMaskArgs { y, dy, n }
            })
        }
    }

    /// `dst ← dst + src` over `dst.len()` values.
    pub fn add(&self, dst: &mut impl DevicePtrMut<f32>, src: &impl DevicePtr<f32>) -> Result<()> {
        // SAFETY: the kernel reads src and updates dst for the n values it is given.
        unsafe {
            self.launch_src_dst(&self.add, "add source", src, dst, |src, dst, n| NnAddArgs {
                dst,
                src,
                n,
            })
        }
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
        // SAFETY: the kernel reads y and updates dy for the n values it is given.
        unsafe {
            self.launch_src_dst(&self.act_bwd, "activation output", y, dy, |y, dy, n| {
                NnActBwdArgs {
                    y,
                    dy,
                    n,
                    kind: act_kind(act),
                    pad: 0,
                }
            })
        }
    }

    /// `y[r] = mean(x[r·hw..(r + 1)·hw])` for the `y.len()` rows.
    pub fn avgpool_fwd(
        &self,
        x: &impl DevicePtr<f32>,
        y: &mut impl DevicePtrMut<f32>,
        hw: usize,
    ) -> Result<()> {
        let rows = y.len();
        let Some(hw32) = pool_plane(rows, hw, "avg_pool input", x.len())? else {
            return Ok(());
        };
        let rows = rows as u64;
        // SAFETY: x holds rows·hw f32 and y rows (checked above), what the kernel reads and
        // writes. One warp per row: 32 threads of work each.
        unsafe {
            self.launch_read_write(&self.avgpool_fwd, rows * 32, x, y, |x, y| {
                NnAvgPoolFwdArgs {
                    x,
                    y,
                    rows,
                    inv: 1.0 / hw as f64,
                    hw: hw32,
                    pad: 0,
                }
            })
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
        let Some(hw32) = pool_plane(rows, hw, "avg_pool input gradient", dx.len())? else {
            return Ok(());
        };
        let rows = rows as u64;
        // SAFETY: dy holds rows f32 and dx rows·hw (checked above), what the kernel reads and
        // writes.
        unsafe {
            self.launch_read_write(&self.avgpool_bwd, rows * hw as u64, dy, dx, |dy, dx| {
                NnAvgPoolBwdArgs {
                    dy,
                    dx,
                    rows,
                    hw: hw32,
                    inv: 1.0 / hw as f32,
                }
            })
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
        need_classes("cross-entropy", k)?;
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
        let (dz, _gd) = opt_ptr_mut(dz, &self.stream);
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
        need_classes("distillation", k)?;
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
        let (present, _gp) = opt_ptr(present, &self.stream);
        let (kd, _go) = kd.device_ptr_mut(&self.stream);
        let (dz, _gd) = opt_ptr_mut(dz, &self.stream);
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
        // SAFETY: the kernel reads w and updates ema for the n values it is given.
        unsafe {
            self.launch_src_dst(&self.ema, "EMA source", w, ema, |w, ema, n| NnEmaArgs {
                ema,
                w,
                n,
                d,
                one_m_d: 1.0 - d,
            })
        }
    }

    /// `y ← act(y + r)` with `r` = 0 for no residual (`relu` = 0: no activation).
    ///
    /// # Safety
    /// `a.y` (and `a.r` unless 0) are device buffers of the backend's stream holding `a.n` f32.
    pub unsafe fn residual_relu(&self, a: &NnResidualReluArgs) -> Result<()> {
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe { self.launch_items(&self.residual_relu, a.n, a) }
    }

    /// `y ← x²`.
    ///
    /// # Safety
    /// `a.x` and `a.y` are device buffers of the backend's stream holding `a.n` f32 each.
    pub unsafe fn square(&self, a: &NnSquareArgs) -> Result<()> {
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe { self.launch_items(&self.square, a.n, a) }
    }

    /// `dst[j] += Σ_{b < count} src[b·stride + j]²`, `j < len`.
    ///
    /// # Safety
    /// `a.src` holds `(count − 1)·stride + len` f32 and `a.dst` holds `len`, device buffers of
    /// the backend's stream.
    pub unsafe fn sq_accumulate(&self, a: &NnSqAccumulateArgs) -> Result<()> {
        // No rows to add: no work, like no columns.
        let items = if a.count == 0 { 0 } else { a.len };
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe { self.launch_items(&self.sq_accumulate, items, a) }
    }

    /// `y[r, o] += b[o]` over `rows` rows of `out`.
    ///
    /// # Safety
    /// `a.y` holds `rows·out` f32 and `a.b` holds `out`, device buffers of the backend's stream.
    pub unsafe fn bias_add(&self, a: &NnBiasAddArgs) -> Result<()> {
        let total = a.rows.saturating_mul(a.out as u64);
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe { self.launch_items(&self.bias_add, total, a) }
    }

    /// `out[c] (+)= Σ_r f(x[r, c])`, `f` = identity or square.
    ///
    /// # Safety
    /// `a.x` holds `rows·cols` f32 and `a.out` holds `cols`, device buffers of the backend's
    /// stream.
    pub unsafe fn col_sum(&self, a: &NnColSumArgs) -> Result<()> {
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe { self.launch_items(&self.col_sum, a.cols as u64, a) }
    }

    /// `saved_mean ← running_mean`, `saved_invstd ← 1/√(running_var + eps)`.
    ///
    /// # Safety
    /// The four buffers of `a` are device buffers of the backend's stream holding `c` f32 each.
    pub unsafe fn bn_eval_stats(&self, a: &NnBnEvalStatsArgs) -> Result<()> {
        // SAFETY: the caller's contract above is what the kernel reads and writes.
        unsafe { self.launch_items(&self.bn_eval_stats, a.c as u64, a) }
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
