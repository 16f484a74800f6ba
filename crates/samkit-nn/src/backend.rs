//! The operations a model is made of, behind one trait so that a CUDA backend (cuDNN and
//! cuBLAS) can sit beside the CPU one and the models are written once.
//!
//! A backend owns its workspaces (im2col buffers, cuDNN algorithm caches and workspace) and
//! chooses the memory layout of activations: the CPU backend stores images channel-major
//! (`[C, N, H, W]`, so a convolution is one GEMM over the batch and batch norm reduces
//! contiguous rows); cuDNN would keep NCHW. Models only see logical NCHW [`Dims`].
//!
//! Parameters and gradients are one flat arena laid out as a `samkit_core::Layout`; operations
//! address their tensors by offset into it. Gradient writes follow [`ParamGrad`]: `Sum`
//! overwrites the parameter's gradient with the batch gradient (every parameter is used once
//! in the graph); `PerSampleSq` adds `Σ_i (∂ℓ_i/∂θ)²` over the batch's samples.
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};

/// Logical NCHW dimensions of an activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dims {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Dims { n, c, h, w }
    }

    pub const fn hw(&self) -> usize {
        self.h * self.w
    }

    pub const fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A 2-D convolution without bias: OIHW weight `[cout, cin, k, k]`, square kernel, symmetric
/// zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2d {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl Conv2d {
    pub const fn new(cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Self {
        Conv2d {
            cin,
            cout,
            k,
            stride,
            pad,
        }
    }

    pub const fn weight_len(&self) -> usize {
        self.cout * self.cin * self.k * self.k
    }

    /// Output dimensions for an input of dimensions `x`.
    pub const fn out_dims(&self, x: Dims) -> Dims {
        Dims {
            n: x.n,
            c: self.cout,
            h: (x.h + 2 * self.pad - self.k) / self.stride + 1,
            w: (x.w + 2 * self.pad - self.k) / self.stride + 1,
        }
    }

    /// Refuses an input of dimensions `xd` this convolution cannot run on (other channels, an
    /// empty kernel or stride, a kernel wider than the padded input); both backends check it.
    pub(crate) fn check_input(&self, xd: Dims) -> Result<()> {
        if xd.c != self.cin
            || self.k == 0
            || self.stride == 0
            || xd.h + 2 * self.pad < self.k
            || xd.w + 2 * self.pad < self.k
        {
            return Err(Error::shape(
                "conv2d",
                format!("{self:?} on an input of {xd:?}"),
            ));
        }
        Ok(())
    }

    /// A 1×1 stride-1 convolution without padding is a plain GEMM on the input.
    pub const fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
}

/// How batch norm normalises, and whether it updates its running statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BnMode {
    /// Batch statistics; running statistics and `num_batches_tracked` updated (SAM's pass 1).
    Train,
    /// Batch statistics; running statistics left untouched (SAM's pass 2).
    TrainNoUpdate,
    /// Running statistics (evaluation, and SSAM-F's per-sample Fisher).
    Eval,
}

impl BnMode {
    /// The mode of a pass of `samkit_core::Optimizer::step`: pass 1 updates the running
    /// statistics, pass 2 must not.
    pub fn for_pass(pass: samkit_core::Pass) -> Self {
        match pass {
            samkit_core::Pass::Clean => BnMode::Train,
            samkit_core::Pass::Perturbed => BnMode::TrainNoUpdate,
        }
    }

    pub fn uses_batch_stats(self) -> bool {
        !matches!(self, BnMode::Eval)
    }
}

/// How parameter gradients are written (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamGrad {
    /// Overwrite with the gradient of the weighted batch loss.
    Sum,
    /// Add the per-sample squared gradients `Σ_i (∂ℓ_i/∂θ)²` (samples must be independent,
    /// i.e. batch norm in [`BnMode::Eval`]).
    PerSampleSq,
}

/// Batch-norm hyperparameters (PyTorch's defaults: `eps = 1e-5`, `momentum = 0.1`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BnConfig {
    pub eps: f32,
    pub momentum: f32,
}

impl Default for BnConfig {
    fn default() -> Self {
        BnConfig {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

/// Offsets of a batch-norm layer's affine parameters (and their gradients) in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BnParams {
    pub gamma: usize,
    pub beta: usize,
}

/// Offsets of a linear layer's parameters in the arena (`weight` is `[out, in]` row-major).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearParams {
    pub inp: usize,
    pub out: usize,
    pub weight: usize,
    pub bias: Option<usize>,
}

/// Element-wise activation of the MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    Relu,
    Tanh,
}

/// Running statistics of one batch-norm layer (`num_batches_tracked` on the host) and what
/// the forward pass saved for the backward pass.
pub struct BnState<B: Backend + ?Sized> {
    pub channels: usize,
    pub running_mean: B::Buf,
    pub running_var: B::Buf,
    pub num_batches_tracked: i64,
    /// Mean and `1/sqrt(var + eps)` used by the last forward pass.
    pub saved_mean: B::Buf,
    pub saved_invstd: B::Buf,
}

impl<B: Backend + ?Sized> BnState<B> {
    /// Fresh statistics: mean 0, variance 1, no batch tracked (PyTorch's initial state).
    pub fn new(backend: &mut B, channels: usize) -> Result<Self> {
        let mut running_var = backend.alloc(channels)?;
        backend.upload(&vec![1.0; channels], &mut running_var)?;
        Ok(BnState {
            channels,
            running_mean: backend.alloc(channels)?,
            running_var,
            num_batches_tracked: 0,
            saved_mean: backend.alloc(channels)?,
            saved_invstd: backend.alloc(channels)?,
        })
    }
}

/// The operations of the models. Buffers are allocated once per batch shape by the models and
/// reused every step; nothing in a forward or backward pass allocates on the device.
pub trait Backend {
    /// Activation memory (a `Vec<f32>` on the CPU, a device slice with CUDA).
    type Buf;
    /// A flat parameter or gradient arena as the optimizer holds it (`[f32]` on the CPU).
    type Arena: ?Sized;

    fn device(&self) -> Device;

    /// A zeroed buffer of `len` values.
    fn alloc(&mut self, len: usize) -> Result<Self::Buf>;
    fn buf_len(buf: &Self::Buf) -> usize;
    fn arena_len(arena: &Self::Arena) -> usize;
    /// Copies host values into a buffer (same length).
    fn upload(&mut self, src: &[f32], dst: &mut Self::Buf) -> Result<()>;
    /// Copies a buffer to the host (same length).
    fn download(&mut self, src: &Self::Buf, dst: &mut [f32]) -> Result<()>;

    /// An NCHW image batch into the backend's activation layout.
    fn load_images(&mut self, x: &Tensor, dst: &mut Self::Buf) -> Result<()>;
    /// A row-major `[N, F]` feature batch (the input of a linear layer; any tensor whose
    /// first dimension is the batch) into a buffer.
    fn load_features(&mut self, x: &Tensor, dst: &mut Self::Buf) -> Result<()>;

    /// `y = conv(x, w)`, `x` of dimensions `xd`, weight at `w_off` in `params`.
    fn conv2d_forward(
        &mut self,
        conv: &Conv2d,
        xd: Dims,
        x: &Self::Buf,
        params: &Self::Arena,
        w_off: usize,
        y: &mut Self::Buf,
    ) -> Result<()>;

    /// Weight gradient into `grad` at `w_off` (see [`ParamGrad`]) and, when `dx` is given,
    /// the input gradient (added to `dx` when `accumulate_dx`, written otherwise).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward(
        &mut self,
        conv: &Conv2d,
        xd: Dims,
        x: &Self::Buf,
        dy: &Self::Buf,
        params: &Self::Arena,
        w_off: usize,
        mode: ParamGrad,
        grad: &mut Self::Arena,
        dx: Option<&mut Self::Buf>,
        accumulate_dx: bool,
    ) -> Result<()>;

    /// `y = act(bn(x) + residual)` with `act` = ReLU when `relu`; saves what the backward
    /// pass needs in `state` and updates the running statistics in [`BnMode::Train`].
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_forward(
        &mut self,
        mode: BnMode,
        cfg: BnConfig,
        d: Dims,
        x: &Self::Buf,
        params: &Self::Arena,
        p: BnParams,
        state: &mut BnState<Self>,
        residual: Option<&Self::Buf>,
        relu: bool,
        y: &mut Self::Buf,
    ) -> Result<()>;

    /// Gradients of batch norm (without its activation: mask `dy` first with
    /// [`Backend::relu_backward`]) for the forward pass of the same `mode`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &mut self,
        mode: BnMode,
        d: Dims,
        x: &Self::Buf,
        dy: &Self::Buf,
        params: &Self::Arena,
        p: BnParams,
        state: &BnState<Self>,
        pg: ParamGrad,
        grad: &mut Self::Arena,
        dx: &mut Self::Buf,
    ) -> Result<()>;

    /// `dy ← dy ⊙ [y > 0]` in place, `y` the ReLU's output.
    fn relu_backward(&mut self, y: &Self::Buf, dy: &mut Self::Buf) -> Result<()>;
    /// `dst ← dst + src`.
    fn add_assign(&mut self, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()>;

    /// Global average pooling to a row-major `[N, C]` feature buffer.
    fn avg_pool_forward(&mut self, d: Dims, x: &Self::Buf, y: &mut Self::Buf) -> Result<()>;
    fn avg_pool_backward(&mut self, d: Dims, dy: &Self::Buf, dx: &mut Self::Buf) -> Result<()>;

    /// `y[N, out] = x[N, in] · Wᵀ + b`.
    fn linear_forward(
        &mut self,
        n: usize,
        l: LinearParams,
        x: &Self::Buf,
        params: &Self::Arena,
        y: &mut Self::Buf,
    ) -> Result<()>;

    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &mut self,
        n: usize,
        l: LinearParams,
        x: &Self::Buf,
        dy: &Self::Buf,
        params: &Self::Arena,
        pg: ParamGrad,
        grad: &mut Self::Arena,
        dx: Option<&mut Self::Buf>,
    ) -> Result<()>;

    /// `x ← act(x)` in place.
    fn activation_forward(&mut self, act: Activation, x: &mut Self::Buf) -> Result<()>;
    /// `dy ← dy ⊙ act'(·)`, from the activation's output `y`.
    fn activation_backward(
        &mut self,
        act: Activation,
        y: &Self::Buf,
        dy: &mut Self::Buf,
    ) -> Result<()>;
}

/// Refuses a buffer `what` of `have` values where `need` are read or written (both backends).
pub(crate) fn need(what: &'static str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::shape(what, format!("{have} values, need {need}")));
    }
    Ok(())
}

/// Refuses batch-norm buffers `x` and `y` of fewer values than `d` holds, or `c` channels
/// other than its (both backends).
pub(crate) fn check_bn(d: Dims, x: usize, y: usize, c: usize) -> Result<()> {
    if x < d.len() || y < d.len() || c != d.c {
        return Err(Error::shape(
            "batch_norm",
            format!("{d:?} with buffers of {x}, {y} values and {c} channels"),
        ));
    }
    Ok(())
}
