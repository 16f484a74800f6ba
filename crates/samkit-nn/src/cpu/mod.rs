//! The CPU backend: im2col + GEMM convolutions (Winograd F(2×2, 3×3) for the 3×3 stride-1 ones), channel-parallel batch norm (rayon), and
//! channel-major (`[C, N, H, W]`) activations. Parallelism follows rayon's pool
//! (`RAYON_NUM_THREADS`); the GEMMs use the same number of threads unless told otherwise.
mod bn;
mod conv;
pub mod gemm;
mod winograd;

use rayon::prelude::*;

use crate::backend::{
    need, Activation, Backend, BnConfig, BnMode, BnParams, BnState, Conv2d, Dims, LinearParams,
    ParamGrad,
};
use crate::error::{Error, Result};
use crate::tensor::{Device, Tensor};
use gemm::{Gemm, MatMut, MatRef};

/// Elements of the im2col matrix of one chunk of images (4 MiB by default: one 32×32 image
/// of a 64-channel 3×3 convolution).
pub const DEFAULT_COL_BUDGET: usize = 1 << 20;

/// The CPU backend and its reusable workspaces.
pub struct Cpu {
    gemm: Gemm,
    threads: usize,
    col_budget: usize,
    conv_bufs: Vec<conv::ThreadBufs>,
    winograd_filters: Vec<f32>,
    winograd: bool,
    tmp: Vec<f32>,
    tmp2: Vec<f32>,
    stats: Vec<[f64; 2]>,
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpu {
    /// Convolutions spread over as many threads as rayon's current pool, in im2col chunks of
    /// [`DEFAULT_COL_BUDGET`] elements ([`Cpu::with_threads`] and [`Cpu::with_col_budget`]
    /// change them; nothing is read from the environment).
    pub fn new() -> Self {
        Cpu {
            gemm: Gemm {
                threads: rayon::current_num_threads(),
            },
            threads: rayon::current_num_threads(),
            col_budget: DEFAULT_COL_BUDGET,
            conv_bufs: Vec::new(),
            winograd_filters: Vec::new(),
            winograd: true,
            tmp: Vec::new(),
            tmp2: Vec::new(),
            stats: Vec::new(),
        }
    }

    /// The threads over which convolutions spread their chunks of images (and GEMMs their
    /// work when there are fewer chunks than threads); rayon's pool by default.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self.gemm = Gemm {
            threads: self.threads,
        };
        self
    }

    /// Caps the im2col matrix of one chunk of images at `elements` values.
    pub fn with_col_budget(mut self, elements: usize) -> Self {
        self.col_budget = elements.max(1);
        self
    }

    /// Whether 3×3, stride-1, pad-1 convolutions with at least 16 channels on even-sized
    /// inputs run through Winograd's F(2×2, 3×3) (the default: 2.25× fewer GEMM FLOPs in the
    /// forward pass and the data gradient) or through im2col + GEMM like every other shape.
    /// The two differ by float rounding only.
    pub fn with_winograd(mut self, on: bool) -> Self {
        self.winograd = on;
        self
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    fn scratch(&mut self) -> conv::ConvScratch<'_> {
        conv::ConvScratch {
            bufs: &mut self.conv_bufs,
            budget: self.col_budget,
            threads: self.threads,
            wino_u: &mut self.winograd_filters,
            winograd: self.winograd,
        }
    }
}

fn seg<'a>(a: &'a [f32], off: usize, len: usize, what: &'static str) -> Result<&'a [f32]> {
    a.get(off..off + len)
        .ok_or_else(|| Error::shape(what, format!("{off}+{len} past an arena of {}", a.len())))
}

fn seg_mut<'a>(
    a: &'a mut [f32],
    off: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a mut [f32]> {
    let n = a.len();
    a.get_mut(off..off + len)
        .ok_or_else(|| Error::shape(what, format!("{off}+{len} past an arena of {n}")))
}

const PAR_CHUNK: usize = 1 << 15;

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Arena = [f32];

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn alloc(&mut self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn buf_len(buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn arena_len(arena: &[f32]) -> usize {
        arena.len()
    }

    fn upload(&mut self, src: &[f32], dst: &mut Vec<f32>) -> Result<()> {
        need("upload", dst.len(), src.len())?;
        dst[..src.len()].copy_from_slice(src);
        Ok(())
    }

    fn download(&mut self, src: &Vec<f32>, dst: &mut [f32]) -> Result<()> {
        need("download", src.len(), dst.len())?;
        dst.copy_from_slice(&src[..dst.len()]);
        Ok(())
    }

    fn load_images(&mut self, x: &Tensor, dst: &mut Vec<f32>) -> Result<()> {
        let (n, c, h, w) = x.dims4()?;
        let src = x.as_slice()?;
        need("images", dst.len(), src.len())?;
        let hw = h * w;
        dst[..src.len()]
            .par_chunks_mut(n * hw)
            .enumerate()
            .for_each(|(ci, plane)| {
                for (i, img) in plane.chunks_mut(hw).enumerate() {
                    img.copy_from_slice(&src[(i * c + ci) * hw..(i * c + ci + 1) * hw]);
                }
            });
        Ok(())
    }

    fn load_features(&mut self, x: &Tensor, dst: &mut Vec<f32>) -> Result<()> {
        let src = x.as_slice()?;
        self.upload(src, dst)
    }

    fn conv2d_forward(
        &mut self,
        c: &Conv2d,
        xd: Dims,
        x: &Vec<f32>,
        params: &[f32],
        w_off: usize,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        let w = seg(params, w_off, c.weight_len(), "conv2d weight")?;
        conv::forward(self.scratch(), c, xd, x, w, y)
    }

    fn conv2d_backward(
        &mut self,
        c: &Conv2d,
        xd: Dims,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        params: &[f32],
        w_off: usize,
        mode: ParamGrad,
        grad: &mut [f32],
        dx: Option<&mut Vec<f32>>,
        accumulate_dx: bool,
    ) -> Result<()> {
        let w = seg(params, w_off, c.weight_len(), "conv2d weight")?;
        let dw = seg_mut(grad, w_off, c.weight_len(), "conv2d weight gradient")?;
        let dx = dx.map(|v| v.as_mut_slice());
        conv::backward(self.scratch(), c, xd, x, dy, w, mode, dw, dx, accumulate_dx)
    }

    fn batch_norm_forward(
        &mut self,
        mode: BnMode,
        cfg: BnConfig,
        d: Dims,
        x: &Vec<f32>,
        params: &[f32],
        p: BnParams,
        state: &mut BnState<Self>,
        residual: Option<&Vec<f32>>,
        relu: bool,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        let gamma = seg(params, p.gamma, d.c, "batch_norm weight")?;
        let beta = seg(params, p.beta, d.c, "batch_norm bias")?;
        let st = bn::BnBufs {
            running_mean: &mut state.running_mean,
            running_var: &mut state.running_var,
            saved_mean: &mut state.saved_mean,
            saved_invstd: &mut state.saved_invstd,
            num_batches_tracked: &mut state.num_batches_tracked,
        };
        bn::forward(
            mode,
            cfg,
            d,
            x,
            gamma,
            beta,
            st,
            &mut self.stats,
            residual.map(|r| r.as_slice()),
            relu,
            y,
        )
    }

    fn batch_norm_backward(
        &mut self,
        mode: BnMode,
        d: Dims,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        params: &[f32],
        p: BnParams,
        state: &BnState<Self>,
        pg: ParamGrad,
        grad: &mut [f32],
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        let gamma = seg(params, p.gamma, d.c, "batch_norm weight")?;
        if p.beta < p.gamma + d.c && p.gamma < p.beta + d.c {
            return Err(Error::shape(
                "batch_norm",
                "weight and bias segments overlap",
            ));
        }
        // Two disjoint segments of one arena.
        let (dgamma, dbeta) = if p.gamma < p.beta {
            let (a, b) = grad.split_at_mut(p.beta);
            (
                seg_mut(a, p.gamma, d.c, "batch_norm weight gradient")?,
                seg_mut(b, 0, d.c, "batch_norm bias gradient")?,
            )
        } else {
            let (a, b) = grad.split_at_mut(p.gamma);
            let db = seg_mut(a, p.beta, d.c, "batch_norm bias gradient")?;
            (seg_mut(b, 0, d.c, "batch_norm weight gradient")?, db)
        };
        bn::backward(
            mode,
            d,
            x,
            dy,
            gamma,
            &state.saved_mean,
            &state.saved_invstd,
            pg,
            &mut self.stats,
            dgamma,
            dbeta,
            dx,
        )
    }

    fn relu_backward(&mut self, y: &Vec<f32>, dy: &mut Vec<f32>) -> Result<()> {
        let n = y.len().min(dy.len());
        dy[..n]
            .par_chunks_mut(PAR_CHUNK)
            .zip(y[..n].par_chunks(PAR_CHUNK))
            .for_each(|(g, y)| {
                for (g, &y) in g.iter_mut().zip(y) {
                    if y <= 0.0 {
                        *g = 0.0;
                    }
                }
            });
        Ok(())
    }

    fn add_assign(&mut self, dst: &mut Vec<f32>, src: &Vec<f32>) -> Result<()> {
        let n = dst.len().min(src.len());
        dst[..n]
            .par_chunks_mut(PAR_CHUNK)
            .zip(src[..n].par_chunks(PAR_CHUNK))
            .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d += s));
        Ok(())
    }

    fn avg_pool_forward(&mut self, d: Dims, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        need("avg_pool input", x.len(), d.len())?;
        need("avg_pool output", y.len(), d.n * d.c)?;
        let hw = d.hw();
        let inv = 1.0 / hw as f64;
        for c in 0..d.c {
            for i in 0..d.n {
                let s: f64 = x[(c * d.n + i) * hw..(c * d.n + i + 1) * hw]
                    .iter()
                    .map(|&v| v as f64)
                    .sum();
                y[i * d.c + c] = (s * inv) as f32;
            }
        }
        Ok(())
    }

    fn avg_pool_backward(&mut self, d: Dims, dy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        need("avg_pool output gradient", dy.len(), d.n * d.c)?;
        need("avg_pool input gradient", dx.len(), d.len())?;
        let hw = d.hw();
        let inv = 1.0 / hw as f32;
        dx[..d.len()]
            .par_chunks_mut(hw)
            .enumerate()
            .for_each(|(j, out)| {
                let (c, i) = (j / d.n, j % d.n);
                out.fill(dy[i * d.c + c] * inv);
            });
        Ok(())
    }

    fn linear_forward(
        &mut self,
        n: usize,
        l: LinearParams,
        x: &Vec<f32>,
        params: &[f32],
        y: &mut Vec<f32>,
    ) -> Result<()> {
        let w = seg(params, l.weight, l.out * l.inp, "linear weight")?;
        need("linear input", x.len(), n * l.inp)?;
        need("linear output", y.len(), n * l.out)?;
        self.gemm.run(
            n,
            l.out,
            l.inp,
            MatMut::rows(y, l.out),
            false,
            MatRef::rows(x, l.inp),
            MatRef::rows_t(w, l.inp),
        )?;
        if let Some(bo) = l.bias {
            let b = seg(params, bo, l.out, "linear bias")?;
            for row in y[..n * l.out].chunks_mut(l.out) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
        Ok(())
    }

    fn linear_backward(
        &mut self,
        n: usize,
        l: LinearParams,
        x: &Vec<f32>,
        dy: &Vec<f32>,
        params: &[f32],
        pg: ParamGrad,
        grad: &mut [f32],
        dx: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let w = seg(params, l.weight, l.out * l.inp, "linear weight")?;
        need("linear input", x.len(), n * l.inp)?;
        need("linear output gradient", dy.len(), n * l.out)?;
        let (x, dy) = (&x[..n * l.inp], &dy[..n * l.out]);
        {
            let dw = seg_mut(grad, l.weight, l.out * l.inp, "linear weight gradient")?;
            match pg {
                ParamGrad::Sum => self.gemm.run(
                    l.out,
                    l.inp,
                    n,
                    MatMut::rows(dw, l.inp),
                    false,
                    MatRef::rows_t(dy, l.out),
                    MatRef::rows(x, l.inp),
                )?,
                ParamGrad::PerSampleSq => {
                    // Per-sample gradients of a linear layer are rank one:
                    // Σ_i (dy_i x_iᵀ)² = (dy²)ᵀ · x².
                    self.tmp.clear();
                    self.tmp.extend(dy.iter().map(|v| v * v));
                    self.tmp2.clear();
                    self.tmp2.extend(x.iter().map(|v| v * v));
                    self.gemm.run(
                        l.out,
                        l.inp,
                        n,
                        MatMut::rows(dw, l.inp),
                        true,
                        MatRef::rows_t(&self.tmp, l.out),
                        MatRef::rows(&self.tmp2, l.inp),
                    )?;
                }
            }
        }
        if let Some(bo) = l.bias {
            let db = seg_mut(grad, bo, l.out, "linear bias gradient")?;
            if pg == ParamGrad::Sum {
                db.fill(0.0);
            }
            for o in 0..l.out {
                let s: f64 = match pg {
                    ParamGrad::Sum => (0..n).map(|i| dy[i * l.out + o] as f64).sum(),
                    ParamGrad::PerSampleSq => {
                        (0..n).map(|i| (dy[i * l.out + o] as f64).powi(2)).sum()
                    }
                };
                db[o] += s as f32;
            }
        }
        if let Some(dx) = dx {
            need("linear input gradient", dx.len(), n * l.inp)?;
            self.gemm.run(
                n,
                l.inp,
                l.out,
                MatMut::rows(dx, l.inp),
                false,
                MatRef::rows(dy, l.out),
                MatRef::rows(w, l.inp),
            )?;
        }
        Ok(())
    }

    fn activation_forward(&mut self, act: Activation, x: &mut Vec<f32>) -> Result<()> {
        x.par_chunks_mut(PAR_CHUNK).for_each(|c| match act {
            Activation::Relu => c.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Tanh => c.iter_mut().for_each(|v| *v = v.tanh()),
        });
        Ok(())
    }

    fn activation_backward(
        &mut self,
        act: Activation,
        y: &Vec<f32>,
        dy: &mut Vec<f32>,
    ) -> Result<()> {
        match act {
            Activation::Relu => self.relu_backward(y, dy),
            Activation::Tanh => {
                let n = y.len().min(dy.len());
                dy[..n]
                    .par_chunks_mut(PAR_CHUNK)
                    .zip(y[..n].par_chunks(PAR_CHUNK))
                    .for_each(|(g, y)| g.iter_mut().zip(y).for_each(|(g, y)| *g *= 1.0 - y * y));
                Ok(())
            }
        }
    }
}
