//! Convolutions through cuDNN: descriptors and algorithms cached per shape, one workspace.
use std::ffi::c_void;

use cudarc::cudnn::sys;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use samkit_cuda::abi::NnSqAccumulateArgs;

use super::dnn::{self, ConvDesc, FilterDesc, RawPerf, TensorDesc};
use super::error::{CudaError, DnnResult};
use super::{at, need, u32_of, AlgoSearch, Cuda};
use crate::backend::{Conv2d, Dims, ParamGrad};
use crate::error::{Error, Result};

/// A convolution shape: `groups` groups of `conv` over `n` images of `groups·cin` channels.
/// `groups > 1` only for per-sample weight gradients (one group per sample, `n = 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ConvKey {
    pub conv: Conv2d,
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub groups: usize,
}

/// A direction of a convolution (the three cuDNN calls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Fwd = 0,
    BwdData = 1,
    BwdFilter = 2,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Fwd => "forward",
            Op::BwdData => "backward-data",
            Op::BwdFilter => "backward-filter",
        }
    }
}

/// The algorithm chosen for one direction of one shape, and its workspace.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Chosen {
    pub algo: u32,
    pub ws: usize,
    pub math: u32,
    /// cuDNN's measured time (benchmark) or 0 (heuristics).
    pub ms: f32,
}

/// Descriptors of one shape, one convolution descriptor per direction (each carries the math
/// type of its own algorithm), and the algorithms chosen so far.
pub(crate) struct ConvPlan {
    key: ConvKey,
    x: TensorDesc,
    w: FilterDesc,
    y: TensorDesc,
    cd: [ConvDesc; 3],
    chosen: [Option<Chosen>; 3],
}

impl ConvPlan {
    fn new(key: ConvKey, math: sys::cudnnMathType_t) -> std::result::Result<Self, CudaError> {
        let c = key.conv;
        let od = c.out_dims(Dims::new(key.n, c.cin, key.h, key.w));
        let g = key.groups;
        Ok(ConvPlan {
            key,
            x: TensorDesc::nchw(key.n, g * c.cin, key.h, key.w)?,
            w: FilterDesc::oihw(g * c.cout, c.cin, c.k, c.k)?,
            y: TensorDesc::nchw(key.n, g * c.cout, od.h, od.w)?,
            cd: [
                ConvDesc::new(c.pad, c.stride, g, math)?,
                ConvDesc::new(c.pad, c.stride, g, math)?,
                ConvDesc::new(c.pad, c.stride, g, math)?,
            ],
            chosen: [None; 3],
        })
    }

    pub fn describe(&self) -> Vec<String> {
        let k = self.key;
        let c = k.conv;
        [Op::Fwd, Op::BwdData, Op::BwdFilter]
            .into_iter()
            .filter_map(|op| {
                self.chosen[op as usize].map(|ch| {
                    format!(
                        "conv {}x{} {}->{} s{} p{} on {}x{}x{}x{}{}: {} algo {} math {} ws {} B {:.3} ms",
                        c.k,
                        c.k,
                        c.cin,
                        c.cout,
                        c.stride,
                        c.pad,
                        k.n,
                        c.cin,
                        k.h,
                        k.w,
                        if k.groups > 1 {
                            format!(" ({} groups)", k.groups)
                        } else {
                            String::new()
                        },
                        op.name(),
                        ch.algo,
                        ch.math,
                        ch.ws,
                        ch.ms
                    )
                })
            })
            .collect()
    }
}

const ONE: f32 = 1.0;

impl Cuda {
    fn search_math(&self) -> sys::cudnnMathType_t {
        if self.opts.tf32 {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        }
    }

    fn plan(&mut self, key: ConvKey) -> Result<&ConvPlan> {
        use std::collections::hash_map::Entry;
        let math = self.search_math();
        Ok(match self.convs.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(ConvPlan::new(key, math)?),
        })
    }

    /// A temporary workspace for a benchmark: the limit, or less when that much is not free.
    fn find_workspace(&self) -> Result<(Option<CudaSlice<u8>>, usize)> {
        let free = self
            .dev
            .context()
            .mem_get_info()
            .map(|(free, _)| free)
            .unwrap_or(0);
        let mut bytes = self.opts.workspace_limit.min(free / 2);
        while bytes >= 1 << 20 {
            if let Ok(b) = self.stream.alloc_zeros::<u8>(bytes) {
                return Ok((Some(b), bytes));
            }
            bytes /= 2;
        }
        Ok((None, 0))
    }

    /// The algorithm of `op` for `key`, chosen at the first call. `a`, `b` are the addresses of
    /// the operation's inputs (x and w, w and dy, x and dy); a benchmark writes its outputs to
    /// a scratch buffer, never to the caller's.
    fn choose(&mut self, key: ConvKey, op: Op, a: u64, b: u64) -> Result<Chosen> {
        self.plan(key)?;
        if let Some(c) = self.convs[&key].chosen[op as usize] {
            return Ok(c);
        }
        if let Some(algo) = self.pinned[op as usize] {
            return self.pin(key, op, algo);
        }
        let c = key.conv;
        let g = key.groups;
        let od = c.out_dims(Dims::new(key.n, c.cin, key.h, key.w));
        let st = self.stream.clone();
        let mut perf = [RawPerf::default(); 8];
        let mut count: std::ffi::c_int = 0;
        let h = self.dnn.0;
        let (ws_buf, ws_bytes, out) = match self.opts.algo {
            AlgoSearch::Benchmark => {
                let out_len = match op {
                    Op::Fwd => key.n * g * c.cout * od.hw(),
                    Op::BwdData => key.n * g * c.cin * key.h * key.w,
                    Op::BwdFilter => g * c.weight_len(),
                };
                let (ws, bytes) = self.find_workspace()?;
                (ws, bytes, Some(st.alloc_zeros::<f32>(out_len.max(1))?))
            }
            AlgoSearch::Heuristic => (None, 0, None),
        };
        let limit = match self.opts.algo {
            AlgoSearch::Benchmark => ws_bytes,
            AlgoSearch::Heuristic => self.opts.workspace_limit,
        };
        {
            let p = &self.convs[&key];
            let cd = p.cd[op as usize].0;
            let (wsp, _g1) = match &ws_buf {
                Some(w) => {
                    let (ptr, gd) = w.device_ptr(&st);
                    (ptr, Some(gd))
                }
                None => (0, None),
            };
            let (outp, _g2) = match &out {
                Some(o) => {
                    let (ptr, gd) = o.device_ptr(&st);
                    (ptr, Some(gd))
                }
                None => (0, None),
            };
            let (a, b, wsp, outp) = (
                a as *const c_void,
                b as *const c_void,
                wsp as *mut c_void,
                outp as *mut c_void,
            );
            let req = perf.len() as std::ffi::c_int;
            // SAFETY: the handle, descriptors and buffers are live; `a` and `b` are the
            // operation's inputs with the descriptors' shapes (the caller checked their lengths),
            // `outp` a scratch buffer of the output's size, `wsp` a workspace of `ws_bytes`; each
            // entry of `perf` has the layout of the call's perf struct (checked at compile time
            // in `dnn`), and at most `req` entries are written.
            let status = unsafe {
                match (self.opts.algo, op) {
                    (AlgoSearch::Benchmark, Op::Fwd) => {
                        sys::cudnnFindConvolutionForwardAlgorithmEx(
                            h,
                            p.x.0,
                            a,
                            p.w.0,
                            b,
                            cd,
                            p.y.0,
                            outp,
                            req,
                            &mut count,
                            perf.as_mut_ptr().cast(),
                            wsp,
                            ws_bytes,
                        )
                    }
                    (AlgoSearch::Benchmark, Op::BwdData) => {
                        sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                            h,
                            p.w.0,
                            a,
                            p.y.0,
                            b,
                            cd,
                            p.x.0,
                            outp,
                            req,
                            &mut count,
                            perf.as_mut_ptr().cast(),
                            wsp,
                            ws_bytes,
                        )
                    }
                    (AlgoSearch::Benchmark, Op::BwdFilter) => {
                        sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                            h,
                            p.x.0,
                            a,
                            p.y.0,
                            b,
                            cd,
                            p.w.0,
                            outp,
                            req,
                            &mut count,
                            perf.as_mut_ptr().cast(),
                            wsp,
                            ws_bytes,
                        )
                    }
                    (AlgoSearch::Heuristic, Op::Fwd) => {
                        sys::cudnnGetConvolutionForwardAlgorithm_v7(
                            h,
                            p.x.0,
                            p.w.0,
                            cd,
                            p.y.0,
                            req,
                            &mut count,
                            perf.as_mut_ptr().cast(),
                        )
                    }
                    (AlgoSearch::Heuristic, Op::BwdData) => {
                        sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                            h,
                            p.w.0,
                            p.y.0,
                            cd,
                            p.x.0,
                            req,
                            &mut count,
                            perf.as_mut_ptr().cast(),
                        )
                    }
                    (AlgoSearch::Heuristic, Op::BwdFilter) => {
                        sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                            h,
                            p.x.0,
                            p.y.0,
                            cd,
                            p.w.0,
                            req,
                            &mut count,
                            perf.as_mut_ptr().cast(),
                        )
                    }
                }
            };
            status.result().dnn(match (self.opts.algo, op) {
                (AlgoSearch::Benchmark, _) => "cudnnFindConvolution*AlgorithmEx",
                (AlgoSearch::Heuristic, _) => "cudnnGetConvolution*Algorithm_v7",
            })?;
        }
        // The benchmark's buffers go back before anything else is allocated.
        drop(out);
        drop(ws_buf);
        let valid = |a: u32| match op {
            Op::Fwd => dnn::fwd_algo(a).is_some(),
            Op::BwdData => dnn::bwd_data_algo(a).is_some(),
            Op::BwdFilter => dnn::bwd_filter_algo(a).is_some(),
        };
        let tf32 = self.opts.tf32;
        let det = self.opts.deterministic;
        let found = perf[..(count.max(0) as usize).min(perf.len())]
            .iter()
            .find(|r| {
                r.status == 0
                    && valid(r.algo)
                    && r.memory <= limit
                    && (tf32 || (r.math_type != 1 && r.math_type != 2))
                    && (!det || r.determinism == 1)
            })
            .copied();
        let Some(r) = found else {
            return Err(CudaError::NoAlgorithm {
                op: op.name(),
                detail: format!(
                    "{key:?} (workspace limit {limit} B, tf32 {tf32}, deterministic {det}; cuDNN \
                     listed {:?})",
                    &perf[..(count.max(0) as usize).min(perf.len())]
                ),
            }
            .into());
        };
        let math = if tf32 {
            dnn::math_type(r.math_type)
        } else {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        };
        let size = self.set_math_and_workspace(key, op, r.algo, math)?;
        let chosen = Chosen {
            algo: r.algo,
            ws: size.max(r.memory),
            math: math as u32,
            ms: r.time,
        };
        if let Some(p) = self.convs.get_mut(&key) {
            p.chosen[op as usize] = Some(chosen);
        }
        Ok(chosen)
    }

    /// `algo` (cuDNN's value) for `op` of `key`, without a search ([`Cuda::pin_algorithm`]):
    /// FP32 math unless TF32 is on, the workspace cuDNN asks for it. An algorithm cuDNN does not
    /// support for the shape is its error (`CUDNN_STATUS_NOT_SUPPORTED`).
    fn pin(&mut self, key: ConvKey, op: Op, algo: u32) -> Result<Chosen> {
        let valid = match op {
            Op::Fwd => dnn::fwd_algo(algo).is_some(),
            Op::BwdData => dnn::bwd_data_algo(algo).is_some(),
            Op::BwdFilter => dnn::bwd_filter_algo(algo).is_some(),
        };
        if !valid {
            return Err(CudaError::NoAlgorithm {
                op: op.name(),
                detail: format!("{key:?}: {algo} is not a cuDNN {} algorithm", op.name()),
            }
            .into());
        }
        let math = if self.opts.tf32 {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        };
        let ws = self.set_math_and_workspace(key, op, algo, math)?;
        let chosen = Chosen {
            algo,
            ws,
            math: math as u32,
            ms: 0.0,
        };
        if let Some(p) = self.convs.get_mut(&key) {
            p.chosen[op as usize] = Some(chosen);
        }
        Ok(chosen)
    }

    /// Sets `math` on `op`'s descriptor of `key` and asks cuDNN for the workspace of `algo` (a
    /// valid value of `op`'s enum) there, in bytes.
    fn set_math_and_workspace(
        &mut self,
        key: ConvKey,
        op: Op,
        algo: u32,
        math: sys::cudnnMathType_t,
    ) -> Result<usize> {
        let h = self.dnn.0;
        let p = &self.convs[&key];
        let cd = &p.cd[op as usize];
        cd.set_math(math)?;
        let mut size = 0usize;
        // SAFETY: live handle and descriptors; `algo` is a valid value of the call's enum
        // (checked by the caller); cuDNN writes one usize.
        unsafe {
            match op {
                Op::Fwd => sys::cudnnGetConvolutionForwardWorkspaceSize(
                    h,
                    p.x.0,
                    p.w.0,
                    cd.0,
                    p.y.0,
                    dnn::fwd_algo(algo).expect("valid"),
                    &mut size,
                ),
                Op::BwdData => sys::cudnnGetConvolutionBackwardDataWorkspaceSize(
                    h,
                    p.w.0,
                    p.y.0,
                    cd.0,
                    p.x.0,
                    dnn::bwd_data_algo(algo).expect("valid"),
                    &mut size,
                ),
                Op::BwdFilter => sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                    h,
                    p.x.0,
                    p.y.0,
                    cd.0,
                    p.w.0,
                    dnn::bwd_filter_algo(algo).expect("valid"),
                    &mut size,
                ),
            }
        }
        .result()
        .dnn("cudnnGetConvolution*WorkspaceSize")?;
        Ok(size)
    }

    /// Runs `op` of `key` with `alpha = 1` and the given `beta` on raw addresses: `a`, `b` its
    /// inputs (as in [`Cuda::choose`]), `out` its output.
    ///
    /// # Safety
    /// The addresses hold the descriptors' shapes on this stream (x: n·g·cin·h·w, w: g·cout·cin·k²,
    /// y: n·g·cout·ho·wo values); `out` is not read through `a` or `b`.
    unsafe fn run(
        &mut self,
        key: ConvKey,
        op: Op,
        a: u64,
        b: u64,
        out: u64,
        beta: f32,
    ) -> Result<()> {
        let ch = self.choose(key, op, a, b)?;
        let ws = self.workspace(ch.ws)?;
        let p = &self.convs[&key];
        let cd = p.cd[op as usize].0;
        let h = self.dnn.0;
        let alpha: *const c_void = (&ONE as *const f32).cast();
        let beta: *const c_void = (&beta as *const f32).cast();
        let (a, b, out, ws) = (
            a as *const c_void,
            b as *const c_void,
            out as *mut c_void,
            ws as *mut c_void,
        );
        // SAFETY: the caller's contract for the data; the handle, descriptors and the workspace
        // (at least `ch.ws` bytes, stream-ordered) are live; the algorithm value is valid for the
        // call (checked when it was chosen); alpha and beta point to f32 on the host, read
        // during the call.
        unsafe {
            match op {
                Op::Fwd => sys::cudnnConvolutionForward(
                    h,
                    alpha,
                    p.x.0,
                    a,
                    p.w.0,
                    b,
                    cd,
                    dnn::fwd_algo(ch.algo).expect("valid"),
                    ws,
                    ch.ws,
                    beta,
                    p.y.0,
                    out,
                ),
                Op::BwdData => sys::cudnnConvolutionBackwardData(
                    h,
                    alpha,
                    p.w.0,
                    a,
                    p.y.0,
                    b,
                    cd,
                    dnn::bwd_data_algo(ch.algo).expect("valid"),
                    ws,
                    ch.ws,
                    beta,
                    p.x.0,
                    out,
                ),
                Op::BwdFilter => sys::cudnnConvolutionBackwardFilter(
                    h,
                    alpha,
                    p.x.0,
                    a,
                    p.y.0,
                    b,
                    cd,
                    dnn::bwd_filter_algo(ch.algo).expect("valid"),
                    ws,
                    ch.ws,
                    beta,
                    p.w.0,
                    out,
                ),
            }
        }
        .result()
        .dnn(match op {
            Op::Fwd => "cudnnConvolutionForward",
            Op::BwdData => "cudnnConvolutionBackwardData",
            Op::BwdFilter => "cudnnConvolutionBackwardFilter",
        })?;
        Ok(())
    }

    pub(super) fn conv_forward(
        &mut self,
        c: &Conv2d,
        xd: Dims,
        x: &CudaSlice<f32>,
        params: &CudaSlice<f32>,
        w_off: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        c.check_input(xd)?;
        let od = c.out_dims(xd);
        need("conv2d input", x.len(), xd.len())?;
        need("conv2d output", y.len(), od.len())?;
        self.bind()?;
        let st = self.stream.clone();
        let (xp, _g1) = x.device_ptr(&st);
        let (pp, _g2) = params.device_ptr(&st);
        let (yp, _g3) = y.device_ptr_mut(&st);
        let wp = at(pp, w_off, c.weight_len(), params.len(), "conv2d weight")?;
        let key = ConvKey {
            conv: *c,
            n: xd.n,
            h: xd.h,
            w: xd.w,
            groups: 1,
        };
        // SAFETY: x holds xd.len() values, the weight segment c.weight_len(), y od.len()
        // (checked above); y is a different buffer from x and the parameters.
        unsafe { self.run(key, Op::Fwd, xp, wp, yp, 0.0) }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn conv_backward(
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
        c.check_input(xd)?;
        let od = c.out_dims(xd);
        need("conv2d input", x.len(), xd.len())?;
        need("conv2d output gradient", dy.len(), od.len())?;
        if let Some(dx) = dx.as_deref() {
            need("conv2d input gradient", dx.len(), xd.len())?;
        }
        self.bind()?;
        let st = self.stream.clone();
        let (xp, _g1) = x.device_ptr(&st);
        let (gyp, _g2) = dy.device_ptr(&st);
        let (pp, _g3) = params.device_ptr(&st);
        let grad_len = grad.len();
        let (gp, _g4) = grad.device_ptr_mut(&st);
        let wl = c.weight_len();
        let wp = at(pp, w_off, wl, params.len(), "conv2d weight")?;
        let dwp = at(gp, w_off, wl, grad_len, "conv2d weight gradient")?;
        let key = ConvKey {
            conv: *c,
            n: xd.n,
            h: xd.h,
            w: xd.w,
            groups: 1,
        };
        match mode {
            // SAFETY: x, dy and the gradient segment hold the shapes of `key` (checked above).
            ParamGrad::Sum => unsafe { self.run(key, Op::BwdFilter, xp, gyp, dwp, 0.0) }?,
            ParamGrad::PerSampleSq => self.conv_per_sample_sq(c, xd, xp, gyp, dwp)?,
        }
        if let Some(dx) = dx {
            let (dxp, _g5) = dx.device_ptr_mut(&st);
            let beta = if accumulate_dx { 1.0 } else { 0.0 };
            // SAFETY: w, dy and dx hold the shapes of `key` (checked above); dx is a buffer of
            // its own.
            unsafe { self.run(key, Op::BwdData, wp, gyp, dxp, beta) }?;
        }
        Ok(())
    }

    /// `dw += Σ_i (∂ℓ_i/∂w)²` over the batch, chunk by chunk: each chunk's per-sample weight
    /// gradients into scratch 0 (one grouped backward-filter call, the chunk's samples as groups;
    /// or one call per sample where cuDNN refuses the grouped form), then squared and added.
    fn conv_per_sample_sq(&mut self, c: &Conv2d, xd: Dims, x: u64, dy: u64, dw: u64) -> Result<()> {
        let wl = c.weight_len();
        let od = c.out_dims(xd);
        let (xs, ys) = (4 * (c.cin * xd.hw()) as u64, 4 * (c.cout * od.hw()) as u64);
        let max_nb = (self.opts.per_sample_budget / wl.max(1)).clamp(1, xd.n.max(1));
        let chunks = xd.n.div_ceil(max_nb);
        let nb = xd.n.div_ceil(chunks.max(1));
        let scratch = self.scratch(0, nb * wl)?;
        let mut i0 = 0;
        while i0 < xd.n {
            let m = nb.min(xd.n - i0);
            let (xc, yc) = (x + i0 as u64 * xs, dy + i0 as u64 * ys);
            let grouped = self.grouped_psg && m > 1 && {
                let key = ConvKey {
                    conv: *c,
                    n: 1,
                    h: xd.h,
                    w: xd.w,
                    groups: m,
                };
                // SAFETY: the chunk's m images of x and dy are the one image of m·cin and m·cout
                // channels the grouped descriptors describe; scratch 0 holds m·wl values.
                match unsafe { self.run(key, Op::BwdFilter, xc, yc, scratch, 0.0) } {
                    Ok(()) => true,
                    Err(Error::Cuda(CudaError::NoAlgorithm { .. }))
                    | Err(Error::Cuda(CudaError::Cudnn { .. })) => {
                        // cuDNN cannot do this grouped shape: one sample at a time from now on.
                        self.grouped_psg = false;
                        self.convs.remove(&key);
                        false
                    }
                    Err(e) => return Err(e),
                }
            };
            if !grouped {
                let key = ConvKey {
                    conv: *c,
                    n: 1,
                    h: xd.h,
                    w: xd.w,
                    groups: 1,
                };
                for j in 0..m as u64 {
                    // SAFETY: image i0 + j of x and dy, and block j of scratch 0 (wl values).
                    unsafe {
                        self.run(
                            key,
                            Op::BwdFilter,
                            xc + j * xs,
                            yc + j * ys,
                            scratch + 4 * j * wl as u64,
                            0.0,
                        )
                    }?;
                }
            }
            let a = NnSqAccumulateArgs {
                src: scratch,
                dst: dw,
                len: wl as u64,
                stride: wl as u64,
                count: u32_of(m, "per-sample chunk")?,
                pad: 0,
            };
            // SAFETY: scratch 0 holds m blocks of wl values, dw holds wl (checked by the caller).
            unsafe { self.kernels.sq_accumulate(&a) }?;
            i0 += m;
        }
        Ok(())
    }
}
