//! The CUDA backend: cuDNN convolutions and batch norm, cuBLAS GEMMs for linear layers, and the
//! small kernels of samkit-kernels' `kernels/nn.cu`, on one stream shared with samkit-cuda's optimizer.
//!
//! - Activations are NCHW f32 device buffers (`Buf = CudaSlice<f32>`); parameters and gradients
//!   are one flat arena (`Arena = CudaSlice<f32>`, laid out as the model's
//!   `samkit_core::Layout`), exactly what [`samkit_cuda::GpuOptimizer`] steps, so
//!   `GpuOptimizer::step(&mut w, |req, w, g| model.forward_backward(w, .., g))` runs a whole
//!   SAM step on the device. Weights are OIHW.
//! - Convolutions: forward, backward-data (`beta = 1` for `accumulate_dx`) and backward-filter,
//!   each with an algorithm chosen once per shape and cached (cuDNN's benchmark,
//!   `cudnnFind*AlgorithmEx`, by default; its heuristics, `cudnnGet*Algorithm_v7`, with
//!   [`AlgoSearch::Heuristic`]), and one workspace grown to the largest algorithm's need and
//!   reused. TF32 is off unless [`CudaOptions::tf32`] (FMA math in cuDNN, default math in cuBLAS).
//! - Batch norm: `cudnnBatchNormalizationForwardTraining` (the running statistics updated with
//!   `exponentialAverageFactor = momentum` in [`BnMode::Train`]; in [`BnMode::TrainNoUpdate`] the
//!   factor is 0 and no running-statistics buffer is passed at all, so that not even a NaN batch
//!   can reach them), `...ForwardInference` in [`BnMode::Eval`], `cudnnBatchNormalizationBackward`
//!   for batch statistics; the inference-mode backward (and its per-sample squares) is a kernel.
//!   The residual add and the ReLU run after cuDNN in one element-wise kernel.
//! - SSAM-F's per-sample squared gradients ([`ParamGrad::PerSampleSq`]): a convolution's
//!   per-sample weight gradients come from one grouped backward-filter call per chunk of samples
//!   (the chunk's images as the groups of one image), squared and added by a kernel; linear
//!   layers use `(dy²)ᵀ·x²`; batch norm (inference mode) squares per-sample sums.
//! - Errors are values: no driver or device, a missing cuDNN/cuBLAS ([`libs`]), a failed call.
//!
//! Every operation binds the device's context to the calling thread first, so a model may move
//! between threads (it is `Send`), though never be used from two at once.
mod bn;
mod conv;
mod dnn;
mod error;
mod kernels;
pub mod libs;
mod linear;
mod tensor;

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use samkit_cuda::Device as GpuDevice;

use crate::backend::{
    need, Activation, Backend, BnConfig, BnMode, BnParams, BnState, Conv2d, Dims, LinearParams,
    ParamGrad,
};
use crate::error::{Error, Result};
use crate::mlp::Mlp;
use crate::model::LossKind;
use crate::resnet::{ResNet18, ResNetConfig};
use crate::tensor::{Device, Storage, Tensor};

pub use conv::Op as ConvOp;
pub use error::CudaError;
pub use kernels::NN as NN_KERNELS;
pub use tensor::DeviceStorage;

/// How convolution algorithms are chosen, once per shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgoSearch {
    /// Run every algorithm on the real buffers and keep the fastest (`cudnnFind*AlgorithmEx`,
    /// PyTorch's `torch.backends.cudnn.benchmark = True`).
    Benchmark,
    /// cuDNN's heuristics (`cudnnGet*Algorithm_v7`): nothing is run.
    Heuristic,
}

/// Settings of the CUDA backend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CudaOptions {
    /// TF32 tensor-core math for convolutions and GEMMs (off: exact FP32, as PyTorch with
    /// `allow_tf32 = False`; the parity tests need it off).
    pub tf32: bool,
    pub algo: AlgoSearch,
    /// Only deterministic convolution algorithms.
    pub deterministic: bool,
    /// The largest cuDNN workspace an algorithm may use, in bytes.
    pub workspace_limit: usize,
    /// Values of the scratch buffer that holds a chunk of per-sample weight gradients
    /// (SSAM-F's Fisher); a convolution's samples are processed `budget / weights` at a time.
    pub per_sample_budget: usize,
    /// Keep cudarc's cross-stream event tracking on the device's context object. Off by default:
    /// the backend (and samkit-cuda's optimizer on the same `Device`) use one stream, and the
    /// tracking costs two driver calls per buffer per operation. Turn it on when buffers of
    /// this `Device` are also used on other streams of its context.
    pub event_tracking: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            tf32: false,
            algo: AlgoSearch::Benchmark,
            deterministic: false,
            workspace_limit: 1 << 30,
            per_sample_budget: 1 << 25,
            event_tracking: false,
        }
    }
}

impl CudaOptions {
    /// The defaults with the choices that make GPU runs reproducible across processes (what an
    /// exact resume on the device needs): deterministic algorithms only, chosen by cuDNN's
    /// heuristics rather than by timing (a benchmark can pick another algorithm per run).
    pub fn reproducible() -> Self {
        CudaOptions {
            algo: AlgoSearch::Heuristic,
            deterministic: true,
            ..CudaOptions::default()
        }
    }
}

/// The CUDA backend and its reusable state: handles, cached convolution plans and algorithms,
/// descriptors, the cuDNN workspace and the per-sample scratch buffers.
pub struct Cuda {
    // The handles come first: fields drop in order, and they must go before the context.
    dnn: dnn::DnnHandle,
    blas: dnn::BlasHandle,
    convs: HashMap<conv::ConvKey, conv::ConvPlan>,
    tensors: HashMap<[usize; 4], dnn::TensorDesc>,
    /// Grouped backward-filter for per-sample gradients (false after cuDNN refused it once).
    grouped_psg: bool,
    /// Algorithms fixed per direction by [`Cuda::pin_algorithm`] (`None`: the search of
    /// `opts.algo`).
    pinned: [Option<u32>; 3],
    workspace: Option<CudaSlice<u8>>,
    scratch: [Option<CudaSlice<f32>>; 2],
    kernels: kernels::Kernels,
    opts: CudaOptions,
    /// `eps` of the last batch-norm forward pass (cuDNN's backward call takes it again).
    bn_eps: f64,
    stream: Arc<CudaStream>,
    dev: Arc<GpuDevice>,
}

// SAFETY: the raw cuDNN and cuBLAS handles are used only through `&mut self` (never from two
// threads at once, which is all NVIDIA asks of a handle), and every operation makes the
// device's context current on the calling thread before using them.
unsafe impl Send for Cuda {}

impl Drop for Cuda {
    fn drop(&mut self) {
        // The handles are destroyed after this, with the context current.
        let _ = self.dev.context().bind_to_thread();
    }
}

/// The address of `len` values at `off` in a device buffer of `have` values, or a shape error.
fn at(base: u64, off: usize, len: usize, have: usize, what: &'static str) -> Result<u64> {
    if off.checked_add(len).is_none_or(|e| e > have) {
        return Err(Error::shape(
            what,
            format!("{off}+{len} past a buffer of {have}"),
        ));
    }
    Ok(base + 4 * off as u64)
}

fn u32_of(v: usize, what: &'static str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::shape(what, format!("{v} does not fit 32 bits")))
}

impl Cuda {
    /// The backend on `dev`'s stream (the one samkit-cuda's optimizer uses), with
    /// [`CudaOptions::default`].
    pub fn new(dev: &Arc<GpuDevice>) -> Result<Self> {
        Self::with_options(dev, CudaOptions::default())
    }

    /// The backend on device `ordinal` with `opts`. Without a driver or a GPU this is an error
    /// for which [`Error::is_no_device`] holds.
    pub fn open(ordinal: usize, opts: CudaOptions) -> Result<Self> {
        let dev = GpuDevice::open(ordinal).map_err(CudaError::from)?;
        Self::with_options(&dev, opts)
    }

    /// The backend on device 0 with [`CudaOptions::default`] (see [`Cuda::open`]).
    pub fn open_default() -> Result<Self> {
        Self::open(0, CudaOptions::default())
    }

    pub fn with_options(dev: &Arc<GpuDevice>, opts: CudaOptions) -> Result<Self> {
        libs::ensure()?;
        let stream = dev.stream().clone();
        dev.context().bind_to_thread()?;
        if !opts.event_tracking {
            // SAFETY: cudarc's contract for untracked buffers is that the user orders their uses
            // across streams. Every buffer made from here on through this context object is
            // allocated, used and freed on `dev.stream()` alone (this backend and samkit-cuda's
            // optimizer), where the stream orders them; `CudaOptions::event_tracking` documents
            // the exception.
            unsafe { dev.context().disable_event_tracking() };
        }
        let dnn = dnn::DnnHandle::new(&stream)?;
        let blas = dnn::BlasHandle::new(&stream, opts.tf32)?;
        let kernels = kernels::Kernels::load(dev, &stream)?;
        Ok(Cuda {
            dnn,
            blas,
            convs: HashMap::new(),
            tensors: HashMap::new(),
            grouped_psg: true,
            pinned: [None; 3],
            workspace: None,
            scratch: [None, None],
            kernels,
            opts,
            bn_eps: 1e-5,
            stream,
            dev: dev.clone(),
        })
    }

    /// The samkit-cuda device (for a [`samkit_cuda::GpuOptimizer`] on the same stream).
    pub fn gpu(&self) -> &Arc<GpuDevice> {
        &self.dev
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn options(&self) -> &CudaOptions {
        &self.opts
    }

    /// cuDNN's version (`major·10000 + minor·100 + patch` for cuDNN 9).
    pub fn cudnn_version(&self) -> usize {
        cudarc::cudnn::result::get_version()
    }

    /// Waits for everything enqueued so far.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }

    /// A device arena holding `host` (parameters, for instance).
    pub fn arena_from(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        self.bind()?;
        if host.is_empty() {
            return Ok(self.stream.null()?);
        }
        Ok(self.stream.clone_htod(host)?)
    }

    /// A zeroed device arena of `len` values (a gradient buffer).
    pub fn arena_zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.bind()?;
        if len == 0 {
            return Ok(self.stream.null()?);
        }
        Ok(self.stream.alloc_zeros(len)?)
    }

    /// The values of a device arena.
    pub fn arena_to_host(&self, a: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.bind()?;
        if a.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.stream.clone_dtoh(a)?)
    }

    /// The convolution algorithms chosen so far: one line per shape and direction.
    pub fn algorithms(&self) -> Vec<String> {
        let mut v: Vec<String> = self.convs.values().flat_map(|p| p.describe()).collect();
        v.sort();
        v
    }

    /// Every convolution shape met from now on runs `op` with cuDNN's algorithm `algo` (the
    /// value of its `cudnnConvolution*Algo_t`), without a search; `None` returns to the
    /// search of [`CudaOptions::algo`]. Shapes met before keep their algorithm. For checking one
    /// algorithm against the CPU; an algorithm cuDNN does not support for a shape fails that
    /// shape's first call.
    pub fn pin_algorithm(&mut self, op: ConvOp, algo: Option<u32>) {
        self.pinned[op as usize] = algo;
    }

    /// Bytes of the cuDNN workspace.
    pub fn workspace_bytes(&self) -> usize {
        self.workspace.as_ref().map_or(0, |w| w.len())
    }

    fn bind(&self) -> Result<()> {
        self.dev.context().bind_to_thread()?;
        Ok(())
    }

    /// The cuDNN workspace, grown to at least `bytes` (in 4 MiB steps); its address. Used only
    /// on the backend's stream, where cudarc also frees it, so the address stays valid for every
    /// call enqueued before the next growth.
    fn workspace(&mut self, bytes: usize) -> Result<u64> {
        if bytes == 0 {
            return Ok(0);
        }
        if self.workspace.as_ref().is_none_or(|w| w.len() < bytes) {
            let want = bytes.div_ceil(4 << 20) * (4 << 20);
            self.workspace = None;
            self.workspace = Some(self.stream.alloc_zeros::<u8>(want)?);
        }
        let w = self.workspace.as_ref().expect("allocated above");
        let (p, _g) = w.device_ptr(&self.stream);
        Ok(p)
    }

    /// Scratch buffer `i` (of two), grown to at least `len` values; its address (same validity
    /// as [`Cuda::workspace`]).
    fn scratch(&mut self, i: usize, len: usize) -> Result<u64> {
        let slot = &mut self.scratch[i];
        if slot.as_ref().is_none_or(|s| s.len() < len) {
            *slot = None;
            *slot = Some(self.stream.alloc_zeros::<f32>(len.max(1))?);
        }
        let s = slot.as_ref().expect("allocated above");
        let (p, _g) = s.device_ptr(&self.stream);
        Ok(p)
    }

    /// A cached NCHW tensor descriptor.
    fn tensor_desc(&mut self, d: [usize; 4]) -> Result<&dnn::TensorDesc> {
        use std::collections::hash_map::Entry;
        Ok(match self.tensors.entry(d) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(dnn::TensorDesc::nchw(d[0], d[1], d[2], d[3])?),
        })
    }

    /// Label-smoothed cross-entropy (ALGORITHMS.md) of `[n, k]` logits on the device: the
    /// per-sample losses, and `d(Σ wᵢℓᵢ)/dz` into `grad` when given (same values as
    /// `samkit_core::loss::smooth_cross_entropy`, computed in f64 on the device).
    pub fn smooth_cross_entropy(
        &mut self,
        logits: &CudaSlice<f32>,
        labels: &[usize],
        k: usize,
        smoothing: f32,
        weights: &[f32],
        grad: Option<&mut CudaSlice<f32>>,
    ) -> Result<Vec<f32>> {
        let n = labels.len();
        if k < 2 || weights.len() != n || !(0.0..1.0).contains(&smoothing) {
            return Err(Error::invalid(
                "loss",
                format!(
                    "{n} labels, {} weights, {k} classes, smoothing {smoothing}",
                    weights.len()
                ),
            ));
        }
        if let Some(&bad) = labels.iter().find(|&&y| y >= k) {
            return Err(Error::invalid(
                "labels",
                format!("label {bad} of {k} classes"),
            ));
        }
        need("logits", logits.len(), n * k)?;
        if let Some(g) = grad.as_deref() {
            need("logit gradient", g.len(), n * k)?;
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        self.bind()?;
        let st = self.stream.clone();
        let lab: Vec<u32> = labels.iter().map(|&y| y as u32).collect();
        let lab = st.clone_htod(&lab)?;
        let wts = st.clone_htod(weights)?;
        let mut loss = st.alloc_zeros::<f32>(n)?;
        self.kernels
            .smooth_ce(logits, &lab, &wts, &mut loss, grad, k, smoothing)?;
        Ok(st.clone_dtoh(&loss)?)
    }

    /// MESA/SAF's distillation term on the device (`samkit_nn::distill::kd_term`, the same f64
    /// expressions): `τ²·KL(softmax(t_i/τ) ‖ softmax(z_i/τ))` of each of the `weights.len()`
    /// rows of `k` logits, and with `grad` `weights_i·λ·τ·(softmax(z_i/τ) − softmax(t_i/τ))`
    /// added to it; rows whose `present` is false get 0 and no gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn distill_kd(
        &mut self,
        student: &CudaSlice<f32>,
        teacher: &CudaSlice<f32>,
        k: usize,
        tau: f32,
        lambda: f32,
        weights: &[f32],
        present: Option<&[bool]>,
        grad: Option<&mut CudaSlice<f32>>,
    ) -> Result<Vec<f32>> {
        let n = weights.len();
        if let Some(p) = present {
            if p.len() != n {
                return Err(Error::shape(
                    "distillation teachers",
                    format!("{} flags for {n} samples", p.len()),
                ));
            }
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        self.bind()?;
        let st = self.stream.clone();
        let wts = st.clone_htod(weights)?;
        let flags = match present {
            Some(p) => {
                let f: Vec<u32> = p.iter().map(|&b| b as u32).collect();
                Some(st.clone_htod(&f)?)
            }
            None => None,
        };
        let mut kd = st.alloc_zeros::<f32>(n)?;
        self.kernels.kd(
            student,
            teacher,
            &wts,
            flags.as_ref(),
            &mut kd,
            grad,
            k,
            tau,
            lambda,
        )?;
        Ok(st.clone_dtoh(&kd)?)
    }

    /// MESA's teacher update on the device: `ema ← d·ema + (1 − d)·w` in f32, bit for bit the
    /// CPU's (`samkit_train::distill`), over the whole of `ema` (`w` as long).
    pub fn ema_update(
        &mut self,
        ema: &mut CudaSlice<f32>,
        w: &CudaSlice<f32>,
        d: f32,
    ) -> Result<()> {
        if ema.len() != w.len() {
            return Err(Error::shape(
                "EMA",
                format!("{} EMA values for {} weights", ema.len(), w.len()),
            ));
        }
        self.bind()?;
        self.kernels.ema(ema, w, d)
    }
}

impl ResNet18<Cuda> {
    /// The model on the CUDA backend of `dev`.
    pub fn cuda(dev: &Arc<GpuDevice>, cfg: ResNetConfig) -> Result<Self> {
        Self::new(Cuda::new(dev)?, cfg)
    }
}

impl Mlp<Cuda> {
    /// An MLP on the CUDA backend of `dev`: `dims = [in, h1, ..., out]`, `act` between layers.
    pub fn cuda(
        dev: &Arc<GpuDevice>,
        dims: &[usize],
        act: Activation,
        loss: LossKind,
    ) -> Result<Self> {
        Self::new(Cuda::new(dev)?, dims, act, loss)
    }
}

impl Backend for Cuda {
    type Buf = CudaSlice<f32>;
    type Arena = CudaSlice<f32>;

    fn device(&self) -> Device {
        Device::Cuda(self.dev.context().ordinal())
    }

    fn alloc(&mut self, len: usize) -> Result<CudaSlice<f32>> {
        self.arena_zeros(len)
    }

    fn buf_len(buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }

    fn arena_len(arena: &CudaSlice<f32>) -> usize {
        arena.len()
    }

    fn upload(&mut self, src: &[f32], dst: &mut CudaSlice<f32>) -> Result<()> {
        need("upload", dst.len(), src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        self.stream
            .memcpy_htod(src, &mut dst.slice_mut(..src.len()))?;
        Ok(())
    }

    fn download(&mut self, src: &CudaSlice<f32>, dst: &mut [f32]) -> Result<()> {
        need("download", src.len(), dst.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        self.stream.memcpy_dtoh(&src.slice(..dst.len()), dst)?;
        Ok(())
    }

    fn load_images(&mut self, x: &Tensor, dst: &mut CudaSlice<f32>) -> Result<()> {
        x.dims4()?;
        self.load_features(x, dst)
    }

    fn load_features(&mut self, x: &Tensor, dst: &mut CudaSlice<f32>) -> Result<()> {
        let len = x.len();
        need("input", dst.len(), len)?;
        match x.storage() {
            Storage::Cpu(v) => self.upload(v, dst),
            Storage::Cuda(d) => {
                self.bind()?;
                self.stream
                    .memcpy_dtod(d.slice(), &mut dst.slice_mut(..len))?;
                Ok(())
            }
        }
    }

    fn conv2d_forward(
        &mut self,
        c: &Conv2d,
        xd: Dims,
        x: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        w_off: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.conv_forward(c, xd, x, params, w_off, y)
    }

    fn conv2d_backward(
        &mut self,
        c: &Conv2d,
        xd: Dims,
        x: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        w_off: usize,
        mode: ParamGrad,
        grad: &mut CudaSlice<f32>,
        dx: Option<&mut CudaSlice<f32>>,
        accumulate_dx: bool,
    ) -> Result<()> {
        self.conv_backward(c, xd, x, dy, params, w_off, mode, grad, dx, accumulate_dx)
    }

    fn batch_norm_forward(
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
        self.bn_forward(mode, cfg, d, x, params, p, state, residual, relu, y)
    }

    fn batch_norm_backward(
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
        self.bn_backward(mode, d, x, dy, params, p, state, pg, grad, dx)
    }

    fn relu_backward(&mut self, y: &CudaSlice<f32>, dy: &mut CudaSlice<f32>) -> Result<()> {
        self.activation_backward(Activation::Relu, y, dy)
    }

    fn add_assign(&mut self, dst: &mut CudaSlice<f32>, src: &CudaSlice<f32>) -> Result<()> {
        let n = dst.len().min(src.len());
        self.bind()?;
        self.kernels.add(&mut dst.slice_mut(..n), &src.slice(..n))
    }

    fn avg_pool_forward(
        &mut self,
        d: Dims,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        need("avg_pool input", x.len(), d.len())?;
        need("avg_pool output", y.len(), d.n * d.c)?;
        self.bind()?;
        // NCHW: the n·c rows of hw values, pooled into y's first n·c values.
        self.kernels
            .avgpool_fwd(x, &mut y.slice_mut(..d.n * d.c), d.hw())
    }

    fn avg_pool_backward(
        &mut self,
        d: Dims,
        dy: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        need("avg_pool output gradient", dy.len(), d.n * d.c)?;
        need("avg_pool input gradient", dx.len(), d.len())?;
        self.bind()?;
        self.kernels.avgpool_bwd(&dy.slice(..d.n * d.c), dx, d.hw())
    }

    fn linear_forward(
        &mut self,
        n: usize,
        l: LinearParams,
        x: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.lin_forward(n, l, x, params, y)
    }

    fn linear_backward(
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
        self.lin_backward(n, l, x, dy, params, pg, grad, dx)
    }

    fn activation_forward(&mut self, act: Activation, x: &mut CudaSlice<f32>) -> Result<()> {
        self.bind()?;
        self.kernels.act(act, x)
    }

    fn activation_backward(
        &mut self,
        act: Activation,
        y: &CudaSlice<f32>,
        dy: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = y.len().min(dy.len());
        self.bind()?;
        let mut dy = dy.slice_mut(..n);
        match act {
            Activation::Relu => self.kernels.relu_mask(y, &mut dy),
            Activation::Tanh => self.kernels.act_bwd(act, y, &mut dy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_addresses_are_bounds_checked() {
        assert_eq!(at(1000, 3, 5, 8, "x").unwrap(), 1012);
        assert!(at(1000, 4, 5, 8, "x").is_err());
        assert!(at(1000, usize::MAX, 2, 8, "x").is_err());
        assert_eq!(at(0, 0, 0, 0, "x").unwrap(), 0);
    }

    #[test]
    fn defaults_are_exact_fp32_with_benchmarked_algorithms() {
        let o = CudaOptions::default();
        assert!(!o.tf32 && !o.deterministic && !o.event_tracking);
        assert_eq!(o.algo, AlgoSearch::Benchmark);
        assert!(o.workspace_limit >= 1 << 20 && o.per_sample_budget >= 1 << 20);
    }

    #[test]
    fn reproducible_options_change_only_the_algorithm_choice() {
        let o = CudaOptions::reproducible();
        assert_eq!(o.algo, AlgoSearch::Heuristic);
        assert!(o.deterministic);
        let d = CudaOptions::default();
        assert_eq!(
            CudaOptions {
                algo: d.algo,
                deterministic: d.deterministic,
                ..o
            },
            d
        );
    }

    #[test]
    fn the_backend_and_device_tensors_move_between_threads() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Cuda>();
        send::<ResNet18<Cuda>>();
        send_sync::<Tensor>();
    }
}
