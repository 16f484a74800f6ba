//! The kernels of samkit-kernels' `nn.cu`: loaded by samkit-cuda's loader like the optimizer's
//! families (`Device::module`: a prebuilt cubin from `SAMKIT_CUDA_CUBIN_DIR`, else the disk cache
//! of `SAMKIT_CUDA_CACHE`, else NVRTC with samkit-cuda's options; once per device), and launched
//! by one typed function each.
//!
//! The common safety argument of every launch: the arguments are pushed in the order and with
//! the types of the kernel's parameter list in `nn.cu` (addresses as `u64`, counts as the
//! declared `u64`/`u32`, scalars as `f32`/`f64`); every address is a device buffer of the
//! backend's stream whose length the caller checked against the counts passed with it; the
//! buffers live until the launch is enqueued and are freed in stream order afterwards (cudarc);
//! every kernel runs `NN_BLOCK` threads per block, which its indexing assumes.
use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg};
use samkit_cuda::compile::Family;
use samkit_cuda::Device;

use super::error::CudaError;

/// The kernel source, from the registry of samkit-kernels (it includes `samkit.cuh`).
pub const NN: Family = samkit_kernels::NN;

/// Threads per block of every kernel of `nn.cu`.
pub const NN_BLOCK: u32 = 256;

/// The loaded kernels of `nn.cu`.
pub(crate) struct Kernels {
    stream: Arc<CudaStream>,
    /// Blocks of a grid-stride kernel that fill the device a few times over.
    max_blocks: u32,
    _module: Arc<CudaModule>,
    relu_mask: CudaFunction,
    add: CudaFunction,
    residual_relu: CudaFunction,
    act: CudaFunction,
    act_bwd: CudaFunction,
    square: CudaFunction,
    sq_accumulate: CudaFunction,
    bias_add: CudaFunction,
    col_sum: CudaFunction,
    avgpool_fwd: CudaFunction,
    avgpool_bwd: CudaFunction,
    bn_eval_stats: CudaFunction,
    bn_eval_bwd: CudaFunction,
    smooth_ce: CudaFunction,
}

fn cfg(blocks: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1), 1, 1),
        block_dim: (NN_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Kernels {
    pub fn load(dev: &Device, stream: &Arc<CudaStream>) -> Result<Self, CudaError> {
        // samkit-cuda's loader: the same prebuilt cubins, disk cache and per-device module cache
        // as the optimizer's families.
        let module = dev.module(NN)?;
        let f = |name: &str| module.load_function(name);
        Ok(Kernels {
            stream: stream.clone(),
            max_blocks: dev.sm_count().max(1) * 16,
            relu_mask: f("sk_nn_relu_mask")?,
            add: f("sk_nn_add")?,
            residual_relu: f("sk_nn_residual_relu")?,
            act: f("sk_nn_act")?,
            act_bwd: f("sk_nn_act_bwd")?,
            square: f("sk_nn_square")?,
            sq_accumulate: f("sk_nn_sq_accumulate")?,
            bias_add: f("sk_nn_bias_add")?,
            col_sum: f("sk_nn_col_sum")?,
            avgpool_fwd: f("sk_nn_avgpool_fwd")?,
            avgpool_bwd: f("sk_nn_avgpool_bwd")?,
            bn_eval_stats: f("sk_nn_bn_eval_stats")?,
            bn_eval_bwd: f("sk_nn_bn_eval_bwd")?,
            smooth_ce: f("sk_nn_smooth_ce")?,
            _module: module,
        })
    }

    /// Blocks for `items` work items of one thread each.
    fn blocks(&self, items: u64) -> u32 {
        items
            .div_ceil(NN_BLOCK as u64)
            .clamp(1, self.max_blocks as u64) as u32
    }

    /// `dy[i] ← 0` where `y[i] ≤ 0`, `i < n`.
    ///
    /// # Safety
    /// `y` and `dy` hold `n` f32 each on the backend's stream.
    pub unsafe fn relu_mask(&self, y: u64, dy: u64, n: u64) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(&self.relu_mask);
        b.arg(&y).arg(&dy).arg(&n);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(n))) }?;
        Ok(())
    }

    /// `dst ← dst + src` over `n`.
    ///
    /// # Safety
    /// `dst` and `src` hold `n` f32 each.
    pub unsafe fn add(&self, dst: u64, src: u64, n: u64) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(&self.add);
        b.arg(&dst).arg(&src).arg(&n);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(n))) }?;
        Ok(())
    }

    /// `y ← act(y + r)`, `r` = 0 for none.
    ///
    /// # Safety
    /// `y` (and `r` unless 0) hold `n` f32.
    pub unsafe fn residual_relu(
        &self,
        y: u64,
        r: u64,
        n: u64,
        relu: bool,
    ) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let relu = relu as u32;
        let mut b = self.stream.launch_builder(&self.residual_relu);
        b.arg(&y).arg(&r).arg(&n).arg(&relu);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(n))) }?;
        Ok(())
    }

    /// `x ← act(x)`, kind 0 = ReLU, 1 = tanh.
    ///
    /// # Safety
    /// `x` holds `n` f32.
    pub unsafe fn act(&self, x: u64, n: u64, kind: u32) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(&self.act);
        b.arg(&x).arg(&n).arg(&kind);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(n))) }?;
        Ok(())
    }

    /// `dy ← dy ⊙ act'` from the output `y`.
    ///
    /// # Safety
    /// `y` and `dy` hold `n` f32.
    pub unsafe fn act_bwd(&self, y: u64, dy: u64, n: u64, kind: u32) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(&self.act_bwd);
        b.arg(&y).arg(&dy).arg(&n).arg(&kind);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(n))) }?;
        Ok(())
    }

    /// `y ← x²`.
    ///
    /// # Safety
    /// `x` and `y` hold `n` f32.
    pub unsafe fn square(&self, x: u64, y: u64, n: u64) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(&self.square);
        b.arg(&x).arg(&y).arg(&n);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(n))) }?;
        Ok(())
    }

    /// `dst[j] += Σ_{b < count} src[b·stride + j]²`, `j < len`.
    ///
    /// # Safety
    /// `src` holds `(count − 1)·stride + len` f32, `dst` holds `len`.
    pub unsafe fn sq_accumulate(
        &self,
        src: u64,
        dst: u64,
        len: u64,
        stride: u64,
        count: u32,
    ) -> Result<(), CudaError> {
        if len == 0 || count == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(&self.sq_accumulate);
        b.arg(&src).arg(&dst).arg(&len).arg(&stride).arg(&count);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(len))) }?;
        Ok(())
    }

    /// `y[i, o] += bias[o]` over `n` rows of `out`.
    ///
    /// # Safety
    /// `y` holds `n·out` f32, `bias` holds `out`.
    pub unsafe fn bias_add(&self, y: u64, bias: u64, n: u64, out: u32) -> Result<(), CudaError> {
        if n == 0 || out == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(&self.bias_add);
        b.arg(&y).arg(&bias).arg(&n).arg(&out);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(n * out as u64))) }?;
        Ok(())
    }

    /// `out[c] (+)= Σ_r f(x[r, c])`.
    ///
    /// # Safety
    /// `x` holds `rows·cols` f32, `out` holds `cols`.
    pub unsafe fn col_sum(
        &self,
        x: u64,
        out: u64,
        rows: u32,
        cols: u32,
        square: bool,
        accumulate: bool,
    ) -> Result<(), CudaError> {
        if cols == 0 {
            return Ok(());
        }
        let (sq, acc) = (square as u32, accumulate as u32);
        let mut b = self.stream.launch_builder(&self.col_sum);
        b.arg(&x).arg(&out).arg(&rows).arg(&cols).arg(&sq).arg(&acc);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(cols as u64))) }?;
        Ok(())
    }

    /// `y[r] = mean(x[r·hw..(r + 1)·hw])`.
    ///
    /// # Safety
    /// `x` holds `rows·hw` f32, `y` holds `rows`.
    pub unsafe fn avgpool_fwd(&self, x: u64, y: u64, rows: u64, hw: u32) -> Result<(), CudaError> {
        if rows == 0 || hw == 0 {
            return Ok(());
        }
        let inv = 1.0f64 / hw as f64;
        let mut b = self.stream.launch_builder(&self.avgpool_fwd);
        b.arg(&x).arg(&y).arg(&rows).arg(&hw).arg(&inv);
        // One warp per row.
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(rows * 32))) }?;
        Ok(())
    }

    /// `dx[r·hw + j] = dy[r] / hw`.
    ///
    /// # Safety
    /// `dy` holds `rows` f32, `dx` holds `rows·hw`.
    pub unsafe fn avgpool_bwd(
        &self,
        dy: u64,
        dx: u64,
        rows: u64,
        hw: u32,
    ) -> Result<(), CudaError> {
        if rows == 0 || hw == 0 {
            return Ok(());
        }
        let inv = 1.0f32 / hw as f32;
        let mut b = self.stream.launch_builder(&self.avgpool_bwd);
        b.arg(&dy).arg(&dx).arg(&rows).arg(&hw).arg(&inv);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(rows * hw as u64))) }?;
        Ok(())
    }

    /// `saved_mean ← running_mean`, `saved_invstd ← 1/√(running_var + eps)`.
    ///
    /// # Safety
    /// The four buffers hold `c` f32 each.
    pub unsafe fn bn_eval_stats(
        &self,
        rmean: u64,
        rvar: u64,
        smean: u64,
        sinvstd: u64,
        c: u32,
        eps: f64,
    ) -> Result<(), CudaError> {
        let mut b = self.stream.launch_builder(&self.bn_eval_stats);
        b.arg(&rmean)
            .arg(&rvar)
            .arg(&smean)
            .arg(&sinvstd)
            .arg(&c)
            .arg(&eps);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(c as u64))) }?;
        Ok(())
    }

    /// Batch-norm backward with fixed statistics (see `nn.cu`).
    ///
    /// # Safety
    /// `x`, `dy`, `dx` hold `n·c·hw` f32 (NCHW); `gamma`, `mean`, `invstd`, `dgamma`, `dbeta`
    /// hold `c`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn bn_eval_bwd(
        &self,
        x: u64,
        dy: u64,
        gamma: u64,
        mean: u64,
        invstd: u64,
        dgamma: u64,
        dbeta: u64,
        dx: u64,
        (n, c, hw): (u32, u32, u32),
        per_sample_sq: bool,
    ) -> Result<(), CudaError> {
        if c == 0 {
            return Ok(());
        }
        let psq = per_sample_sq as u32;
        let mut b = self.stream.launch_builder(&self.bn_eval_bwd);
        b.arg(&x)
            .arg(&dy)
            .arg(&gamma)
            .arg(&mean)
            .arg(&invstd)
            .arg(&dgamma)
            .arg(&dbeta)
            .arg(&dx)
            .arg(&n)
            .arg(&c)
            .arg(&hw)
            .arg(&psq);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(c.min(self.max_blocks * 4))) }?;
        Ok(())
    }

    /// Label-smoothed cross-entropy of `n` rows of `k` logits (see `nn.cu`); `dz` = 0 for no
    /// gradient.
    ///
    /// # Safety
    /// `z` (and `dz` unless 0) hold `n·k` f32, `labels` holds `n` u32 below `k`, `w` and `loss`
    /// hold `n` f32; `k ≥ 2`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn smooth_ce(
        &self,
        z: u64,
        labels: u64,
        w: u64,
        loss: u64,
        dz: u64,
        n: u32,
        k: u32,
        smoothing: f32,
    ) -> Result<(), CudaError> {
        if n == 0 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(&self.smooth_ce);
        b.arg(&z)
            .arg(&labels)
            .arg(&w)
            .arg(&loss)
            .arg(&dz)
            .arg(&n)
            .arg(&k)
            .arg(&smoothing);
        // SAFETY: the argument list matches the kernel's (module docs) and the caller
        // guarantees the buffer sizes (this function's contract).
        unsafe { b.launch(cfg(self.blocks(n as u64))) }?;
        Ok(())
    }
}
