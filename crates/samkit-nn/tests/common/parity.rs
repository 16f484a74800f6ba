//! The bodies of the CPU vs CUDA parity tests of samkit-nn, shared by `tests/cuda_parity.rs`
//! (a real device) and `tests/emulated.rs` (the fake driver, cuBLAS and cuDNN of
//! samkit-testkit, on the CPU): every layer of the [`Backend`] trait, a whole
//! ResNet-18 forward and backward, batch-norm running statistics, SSAM-F's per-sample Fisher, an
//! MLP, the device loss, and a SAM step through samkit-cuda's `GpuOptimizer` on `ResNet18<Cuda>`
//! against `samkit_core::Optimizer` on `ResNet18<Cpu>`.
//!
//! TF32 is off (the backend's default). Tolerances are relative L2 errors per tensor (per
//! parameter segment for gradients), stated at each comparison; every comparison prints its
//! error, so `--nocapture` shows how close the backends are (scripts/gpu-check.sh keeps the log).
//! The CPU backend keeps activations channel-major (`[C, N, H, W]`, see its README); the layer
//! tests convert its buffers to NCHW to compare them, the model tests compare outputs and the
//! flat gradient arena only.
use std::sync::{Arc, Mutex, MutexGuard};

use samkit_core::{BaseOptimizer, GradRequest, Layout, Optimizer, Rule, Sam, Sgd};
use samkit_cuda::GpuOptimizer;
use samkit_nn::backend::{
    Activation, Backend, BnConfig, BnMode, BnParams, BnState, Conv2d, Dims, LinearParams, ParamGrad,
};
use samkit_nn::cuda::{ConvOp, CudaOptions};
use samkit_nn::init::Rng;
use samkit_nn::{mean_weights, Cpu, Cuda, LossKind, Mlp, Model, ResNet18, ResNetConfig, Tensor};

/// Where the tests run: the device, and the size of the model tests (ResNet-18 width and batch;
/// the layer tests have fixed sizes).
pub struct Env {
    pub dev: Arc<samkit_cuda::Device>,
    pub width: usize,
    pub batch: usize,
    /// A missing cuDNN or cuBLAS fails the test instead of skipping it.
    pub required: bool,
    /// The options every backend of the tests starts from (the emulation caps the cuDNN
    /// workspace: an algorithm search allocates and clears up to `workspace_limit` bytes).
    pub opts: CudaOptions,
    /// This test's turn on a real device (see [`one_at_a_time`]), held until the test ends;
    /// `None` on the emulated device, which has no such limit.
    pub turn: Option<MutexGuard<'static, ()>>,
}

/// One test at a time on a real device. On the H200 (driver 13, cuDNN 9.14, 2026-11-30) with
/// four test threads, five tests of this binary failed while opening the device
/// (`CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED`) and two in cuDNN's algorithm search (every
/// algorithm `CUDNN_STATUS_INTERNAL_ERROR`), while the batch-norm, linear and loss tests that
/// ran beside them passed. Serialised, the device has one user at a time, as in the trainer;
/// the lease ended before a serialised run, so the next GPU check is the first. A test that
/// panicked leaves the lock poisoned, which says nothing about the device: the next test takes
/// its turn anyway.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static DEVICE: Mutex<()> = Mutex::new(());
    DEVICE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Env {
    /// The CUDA backend, or `None` after printing the skip line (no cuDNN or cuBLAS).
    pub fn cuda_with(&self, opts: CudaOptions) -> Option<Cuda> {
        match Cuda::with_options(&self.dev, opts) {
            Ok(c) => Some(c),
            Err(samkit_nn::Error::Cuda(e @ samkit_nn::cuda::CudaError::MissingLibrary { .. }))
                if !self.required =>
            {
                println!("skip: no CUDA libraries ({e})");
                None
            }
            Err(e) => panic!("the CUDA backend: {e}"),
        }
    }

    pub fn cuda(&self) -> Option<Cuda> {
        self.cuda_with(self.opts)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn normal(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut v = vec![0.0; n];
    Rng::new(seed).fill_normal(&mut v, std);
    v
}

/// The CPU backend's channel-major `[C, N, H, W]` buffer as NCHW.
fn cnhw_to_nchw(v: &[f32], d: Dims) -> Vec<f32> {
    let hw = d.hw();
    let mut out = vec![0.0; d.len()];
    for c in 0..d.c {
        for i in 0..d.n {
            let (s, t) = ((c * d.n + i) * hw, (i * d.c + c) * hw);
            out[t..t + hw].copy_from_slice(&v[s..s + hw]);
        }
    }
    out
}

/// Relative L2 error `‖got − want‖ / ‖want‖` (absolute when `want` is ~0); prints it and fails
/// above `tol`.
fn close(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let (mut d2, mut w2, mut maxd) = (0f64, 0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}: non-finite value {g} at {i}");
        let d = g as f64 - w as f64;
        d2 += d * d;
        w2 += (w as f64) * (w as f64);
        maxd = maxd.max(d.abs());
    }
    let rel = if w2.sqrt() > 1e-20 {
        d2.sqrt() / w2.sqrt()
    } else {
        d2.sqrt()
    };
    println!(
        "{what:<44} rel L2 {rel:9.2e}  max |Δ| {maxd:9.2e}  (‖want‖ {:.3e}, tol {tol:.0e})",
        w2.sqrt()
    );
    assert!(rel <= tol, "{what}: relative error {rel:e} above {tol:e}");
    rel
}

fn dl(c: &mut Cuda, b: &<Cuda as Backend>::Buf) -> Vec<f32> {
    let mut v = vec![0.0; Cuda::buf_len(b)];
    c.download(b, &mut v).unwrap();
    v
}

fn up(c: &mut Cuda, v: &[f32]) -> <Cuda as Backend>::Buf {
    let mut b = c.alloc(v.len()).unwrap();
    c.upload(v, &mut b).unwrap();
    b
}

/// An NCHW tensor loaded into each backend's layout.
fn images(cpu: &mut Cpu, gpu: &mut Cuda, d: Dims, seed: u64) -> (Vec<f32>, <Cuda as Backend>::Buf) {
    let t = Tensor::from_vec(normal(d.len(), seed, 1.0), &[d.n, d.c, d.h, d.w]).unwrap();
    let mut a = cpu.alloc(d.len()).unwrap();
    cpu.load_images(&t, &mut a).unwrap();
    let mut b = gpu.alloc(d.len()).unwrap();
    gpu.load_images(&t, &mut b).unwrap();
    (a, b)
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

pub fn conv2d_forward_backward_and_per_sample_squares_match_cpu(env: &Env) {
    // Chunks of two samples for the per-sample gradients (several grouped calls per batch).
    let opts = CudaOptions {
        per_sample_budget: 2 * 64 * 32 * 9,
        ..env.opts
    };
    let Some(mut gpu) = env.cuda_with(opts) else {
        return;
    };
    let mut cpu = Cpu::new();
    let cases = [
        (Conv2d::new(3, 16, 3, 1, 1), Dims::new(4, 3, 12, 12)),
        (Conv2d::new(16, 32, 3, 2, 1), Dims::new(5, 16, 12, 12)),
        (Conv2d::new(16, 32, 1, 2, 0), Dims::new(5, 16, 12, 12)),
        (Conv2d::new(8, 8, 1, 1, 0), Dims::new(3, 8, 7, 7)),
        (Conv2d::new(32, 64, 3, 1, 1), Dims::new(3, 32, 4, 4)),
    ];
    for (i, (c, xd)) in cases.into_iter().enumerate() {
        let od = c.out_dims(xd);
        let off = 7 + i;
        let arena = off + c.weight_len() + 5;
        let p = normal(arena, 100 + i as u64, 0.2);
        let (pc, pg) = (p.clone(), up(&mut gpu, &p));
        let (xc, xg) = images(&mut cpu, &mut gpu, xd, 200 + i as u64);
        let mut yc = cpu.alloc(od.len()).unwrap();
        let mut yg = gpu.alloc(od.len()).unwrap();
        cpu.conv2d_forward(&c, xd, &xc, &pc, off, &mut yc).unwrap();
        gpu.conv2d_forward(&c, xd, &xg, &pg, off, &mut yg).unwrap();
        close(
            &format!("conv {c:?} forward"),
            &dl(&mut gpu, &yg),
            &cnhw_to_nchw(&yc, od),
            1e-4,
        );
        let (dyc, dyg) = images(&mut cpu, &mut gpu, od, 300 + i as u64);
        for accumulate in [false, true] {
            let (mut dxc, mut dxg) = images(&mut cpu, &mut gpu, xd, 400 + i as u64);
            let g0 = normal(arena, 500, 1.0);
            let (mut gc, mut gg) = (g0.clone(), up(&mut gpu, &g0));
            cpu.conv2d_backward(
                &c,
                xd,
                &xc,
                &dyc,
                &pc,
                off,
                ParamGrad::Sum,
                &mut gc,
                Some(&mut dxc),
                accumulate,
            )
            .unwrap();
            gpu.conv2d_backward(
                &c,
                xd,
                &xg,
                &dyg,
                &pg,
                off,
                ParamGrad::Sum,
                &mut gg,
                Some(&mut dxg),
                accumulate,
            )
            .unwrap();
            let gg = dl(&mut gpu, &gg);
            close(&format!("conv {c:?} dw"), &gg, &gc, 1e-4);
            assert_eq!(gg[..off], g0[..off], "outside the weight segment");
            assert_eq!(gg[off + c.weight_len()..], g0[off + c.weight_len()..]);
            close(
                &format!("conv {c:?} dx (accumulate {accumulate})"),
                &dl(&mut gpu, &dxg),
                &cnhw_to_nchw(&dxc, xd),
                1e-4,
            );
        }
        // Per-sample squares, added to what the arena holds.
        let f0: Vec<f32> = normal(arena, 600, 1.0).iter().map(|v| v.abs()).collect();
        let (mut fc, mut fg) = (f0.clone(), up(&mut gpu, &f0));
        cpu.conv2d_backward(
            &c,
            xd,
            &xc,
            &dyc,
            &pc,
            off,
            ParamGrad::PerSampleSq,
            &mut fc,
            None,
            false,
        )
        .unwrap();
        gpu.conv2d_backward(
            &c,
            xd,
            &xg,
            &dyg,
            &pg,
            off,
            ParamGrad::PerSampleSq,
            &mut fg,
            None,
            false,
        )
        .unwrap();
        close(
            &format!("conv {c:?} per-sample squares"),
            &dl(&mut gpu, &fg),
            &fc,
            2e-4,
        );
    }
    for line in gpu.algorithms() {
        println!("{line}");
    }
}

/// ResNet-18's stem convolution (3→64, 3×3, batch 8, 32×32): its weight gradient with each of
/// cuDNN's backward-filter algorithms in turn ([`Cuda::pin_algorithm`]), written with β = 0
/// into a segment that holds other values, against the CPU. On the H200 (2026-11-30) the
/// benchmark search chose algorithm 3 for this shape and SAM's pass-2 update of this weight came
/// out 8e-2 from the CPU; this says which algorithm, if any, is wrong on its own. Algorithms
/// cuDNN does not run for this shape are listed, not failed.
pub fn conv2d_backward_filter_every_algorithm_matches_cpu(env: &Env) {
    let c = Conv2d::new(3, 64, 3, 1, 1);
    let xd = Dims::new(8, 3, 32, 32);
    let od = c.out_dims(xd);
    let wl = c.weight_len();
    // The stem is the arena's first segment; values after it must stay.
    let arena = wl + 64;
    let p = normal(arena, 700, 0.2);
    let g0 = normal(arena, 701, 1.0);
    let mut cpu = Cpu::new();
    let Some(mut first) = env.cuda() else {
        return;
    };
    let (xc, _) = images(&mut cpu, &mut first, xd, 702);
    let (dyc, _) = images(&mut cpu, &mut first, od, 703);
    let mut gc = g0.clone();
    cpu.conv2d_backward(
        &c,
        xd,
        &xc,
        &dyc,
        &p,
        0,
        ParamGrad::Sum,
        &mut gc,
        None,
        false,
    )
    .unwrap();
    // The device's arena after two calls with `algo` pinned (the second writes over the first
    // one's result, as pass 2 over pass 1); `None` without a backend.
    let device = |cpu: &mut Cpu, algo: u32| -> Option<samkit_nn::Result<Vec<f32>>> {
        let mut gpu = env.cuda()?;
        gpu.pin_algorithm(ConvOp::BwdFilter, Some(algo));
        let (_, xg) = images(cpu, &mut gpu, xd, 702);
        let (_, dyg) = images(cpu, &mut gpu, od, 703);
        let pg = up(&mut gpu, &p);
        let mut gg = up(&mut gpu, &g0);
        let mut run = || {
            gpu.conv2d_backward(
                &c,
                xd,
                &xg,
                &dyg,
                &pg,
                0,
                ParamGrad::Sum,
                &mut gg,
                None,
                false,
            )
        };
        let r = run().and_then(|()| run());
        Some(r.map(|()| dl(&mut gpu, &gg)))
    };
    let (mut ran, mut wrong) = (Vec::new(), Vec::new());
    for algo in 0..=6u32 {
        let Some(r) = device(&mut cpu, algo) else {
            return;
        };
        let got = match r {
            Ok(got) => got,
            Err(e) => {
                println!("backward-filter algorithm {algo}: not run for this shape ({e})");
                continue;
            }
        };
        assert_eq!(got[wl..], g0[wl..], "algorithm {algo}: outside the segment");
        let (mut d2, mut w2) = (0f64, 0f64);
        for (&a, &b) in got[..wl].iter().zip(&gc[..wl]) {
            d2 += (a as f64 - b as f64).powi(2);
            w2 += (b as f64).powi(2);
        }
        let rel = (d2 / w2).sqrt();
        println!("backward-filter algorithm {algo}: rel L2 {rel:.2e} against the CPU");
        ran.push(algo);
        if rel.is_nan() || rel > 1e-4 {
            wrong.push(format!("algorithm {algo}: rel L2 {rel:e}"));
        }
    }
    assert!(!ran.is_empty(), "no backward-filter algorithm ran");
    // A value that names no algorithm is refused at the first call, with the value.
    if let Some(r) = device(&mut cpu, 9) {
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("9 is not a cuDNN backward-filter algorithm"),
            "{e}"
        );
    }
    assert!(
        wrong.is_empty(),
        "stem weight gradient off the CPU's (tolerance 1e-4): {wrong:?}"
    );
}

/// The per-sample path without grouped calls (one sample at a time) gives the same squares.
pub fn conv2d_per_sample_squares_are_the_same_in_chunks_of_one(env: &Env) {
    let one = CudaOptions {
        per_sample_budget: 1,
        ..env.opts
    };
    let Some(mut a) = env.cuda_with(one) else {
        return;
    };
    let Some(mut b) = env.cuda() else {
        return;
    };
    let c = Conv2d::new(8, 16, 3, 2, 1);
    let xd = Dims::new(6, 8, 9, 9);
    let od = c.out_dims(xd);
    let p = normal(c.weight_len(), 1, 0.3);
    let x = Tensor::from_vec(normal(xd.len(), 2, 1.0), &[6, 8, 9, 9]).unwrap();
    let dy = Tensor::from_vec(normal(od.len(), 3, 1.0), &[od.n, od.c, od.h, od.w]).unwrap();
    let mut out = Vec::new();
    for g in [&mut a, &mut b] {
        let pg = up(g, &p);
        let mut xg = g.alloc(xd.len()).unwrap();
        g.load_images(&x, &mut xg).unwrap();
        let mut dyg = g.alloc(od.len()).unwrap();
        g.load_images(&dy, &mut dyg).unwrap();
        let mut f = g.alloc(c.weight_len()).unwrap();
        g.conv2d_backward(
            &c,
            xd,
            &xg,
            &dyg,
            &pg,
            0,
            ParamGrad::PerSampleSq,
            &mut f,
            None,
            false,
        )
        .unwrap();
        out.push(dl(g, &f));
    }
    close(
        "per-sample squares, chunks of 1 vs 6",
        &out[0],
        &out[1],
        2e-4,
    );
}

pub fn batch_norm_matches_cpu_in_every_mode(env: &Env) {
    let Some(mut gpu) = env.cuda() else {
        return;
    };
    let mut cpu = Cpu::new();
    let d = Dims::new(4, 6, 5, 5);
    let cfg = BnConfig::default();
    let p = BnParams {
        gamma: 3,
        beta: 3 + d.c + 2,
    };
    let arena = p.beta + d.c + 4;
    let mut pv = normal(arena, 7, 0.5);
    for v in &mut pv[p.gamma..p.gamma + d.c] {
        *v += 1.0;
    }
    let pgpu = up(&mut gpu, &pv);
    let rm = normal(d.c, 8, 0.3);
    let rv: Vec<f32> = normal(d.c, 9, 0.3).iter().map(|v| 1.0 + v.abs()).collect();
    for mode in [BnMode::Train, BnMode::TrainNoUpdate, BnMode::Eval] {
        for (residual, relu) in [(false, false), (false, true), (true, true)] {
            let tag = format!("bn {mode:?} residual {residual} relu {relu}");
            let mut sc = BnState::new(&mut cpu, d.c).unwrap();
            let mut sg = BnState::new(&mut gpu, d.c).unwrap();
            cpu.upload(&rm, &mut sc.running_mean).unwrap();
            cpu.upload(&rv, &mut sc.running_var).unwrap();
            gpu.upload(&rm, &mut sg.running_mean).unwrap();
            gpu.upload(&rv, &mut sg.running_var).unwrap();
            let (xc, xg) = images(&mut cpu, &mut gpu, d, 10);
            let (rc, rg) = images(&mut cpu, &mut gpu, d, 11);
            let mut yc = cpu.alloc(d.len()).unwrap();
            let mut yg = gpu.alloc(d.len()).unwrap();
            cpu.batch_norm_forward(
                mode,
                cfg,
                d,
                &xc,
                &pv,
                p,
                &mut sc,
                residual.then_some(&rc),
                relu,
                &mut yc,
            )
            .unwrap();
            gpu.batch_norm_forward(
                mode,
                cfg,
                d,
                &xg,
                &pgpu,
                p,
                &mut sg,
                residual.then_some(&rg),
                relu,
                &mut yg,
            )
            .unwrap();
            close(
                &format!("{tag}: y"),
                &dl(&mut gpu, &yg),
                &cnhw_to_nchw(&yc, d),
                1e-5,
            );
            close(
                &format!("{tag}: running mean"),
                &dl(&mut gpu, &sg.running_mean),
                &sc.running_mean,
                1e-5,
            );
            close(
                &format!("{tag}: running var"),
                &dl(&mut gpu, &sg.running_var),
                &sc.running_var,
                1e-5,
            );
            if mode != BnMode::Train {
                assert_eq!(dl(&mut gpu, &sg.running_mean), rm, "{tag}: mean touched");
                assert_eq!(dl(&mut gpu, &sg.running_var), rv, "{tag}: var touched");
            }
            assert_eq!(sg.num_batches_tracked, sc.num_batches_tracked, "{tag}");
            close(
                &format!("{tag}: saved mean"),
                &dl(&mut gpu, &sg.saved_mean),
                &sc.saved_mean,
                1e-5,
            );
            close(
                &format!("{tag}: saved 1/std"),
                &dl(&mut gpu, &sg.saved_invstd),
                &sc.saved_invstd,
                1e-5,
            );
            let pgs: &[ParamGrad] = if mode == BnMode::Eval {
                &[ParamGrad::Sum, ParamGrad::PerSampleSq]
            } else {
                &[ParamGrad::Sum]
            };
            for &pg in pgs {
                let (dyc, dyg) = images(&mut cpu, &mut gpu, d, 12);
                let g0: Vec<f32> = normal(arena, 13, 1.0).iter().map(|v| v.abs()).collect();
                let (mut gc, mut gg) = (g0.clone(), up(&mut gpu, &g0));
                let mut dxc = cpu.alloc(d.len()).unwrap();
                let mut dxg = gpu.alloc(d.len()).unwrap();
                cpu.batch_norm_backward(mode, d, &xc, &dyc, &pv, p, &sc, pg, &mut gc, &mut dxc)
                    .unwrap();
                gpu.batch_norm_backward(mode, d, &xg, &dyg, &pgpu, p, &sg, pg, &mut gg, &mut dxg)
                    .unwrap();
                let gg = dl(&mut gpu, &gg);
                close(
                    &format!("{tag} {pg:?}: dgamma"),
                    &gg[p.gamma..p.gamma + d.c],
                    &gc[p.gamma..p.gamma + d.c],
                    1e-5,
                );
                close(
                    &format!("{tag} {pg:?}: dbeta"),
                    &gg[p.beta..p.beta + d.c],
                    &gc[p.beta..p.beta + d.c],
                    1e-5,
                );
                assert_eq!(gg[..p.gamma], g0[..p.gamma]);
                assert_eq!(gg[p.gamma + d.c..p.beta], g0[p.gamma + d.c..p.beta]);
                assert_eq!(gg[p.beta + d.c..], g0[p.beta + d.c..]);
                close(
                    &format!("{tag} {pg:?}: dx"),
                    &dl(&mut gpu, &dxg),
                    &cnhw_to_nchw(&dxc, d),
                    1e-5,
                );
            }
        }
    }
}

pub fn relu_add_activations_and_pooling_match_cpu(env: &Env) {
    let Some(mut gpu) = env.cuda() else {
        return;
    };
    let mut cpu = Cpu::new();
    let n = 5000;
    let y = normal(n, 20, 1.0);
    let g = normal(n, 21, 1.0);
    // ReLU mask.
    let (yg, mut gg) = (up(&mut gpu, &y), up(&mut gpu, &g));
    let mut gc = g.clone();
    cpu.relu_backward(&y, &mut gc).unwrap();
    gpu.relu_backward(&yg, &mut gg).unwrap();
    assert_eq!(dl(&mut gpu, &gg), gc, "relu_backward");
    // Add.
    let mut dc = g.clone();
    let mut dg = up(&mut gpu, &g);
    cpu.add_assign(&mut dc, &y).unwrap();
    gpu.add_assign(&mut dg, &yg).unwrap();
    assert_eq!(dl(&mut gpu, &dg), dc, "add_assign");
    // Activations.
    for act in [Activation::Relu, Activation::Tanh] {
        let mut xc = y.clone();
        let mut xg = up(&mut gpu, &y);
        cpu.activation_forward(act, &mut xc).unwrap();
        gpu.activation_forward(act, &mut xg).unwrap();
        close(&format!("{act:?} forward"), &dl(&mut gpu, &xg), &xc, 1e-6);
        let mut gc = g.clone();
        let mut gg = up(&mut gpu, &g);
        cpu.activation_backward(act, &xc, &mut gc).unwrap();
        let xg_host = dl(&mut gpu, &xg);
        let xg2 = up(&mut gpu, &xc);
        gpu.activation_backward(act, &xg2, &mut gg).unwrap();
        assert_eq!(xg_host.len(), xc.len());
        close(&format!("{act:?} backward"), &dl(&mut gpu, &gg), &gc, 1e-6);
    }
    // Global average pooling.
    let d = Dims::new(3, 5, 4, 4);
    let (xc, xg) = images(&mut cpu, &mut gpu, d, 22);
    let mut pc = cpu.alloc(d.n * d.c).unwrap();
    let mut pg = gpu.alloc(d.n * d.c).unwrap();
    cpu.avg_pool_forward(d, &xc, &mut pc).unwrap();
    gpu.avg_pool_forward(d, &xg, &mut pg).unwrap();
    close("avg_pool forward", &dl(&mut gpu, &pg), &pc, 1e-7);
    let dy = normal(d.n * d.c, 23, 1.0);
    let dyg = up(&mut gpu, &dy);
    let mut dxc = cpu.alloc(d.len()).unwrap();
    let mut dxg = gpu.alloc(d.len()).unwrap();
    cpu.avg_pool_backward(d, &dy, &mut dxc).unwrap();
    gpu.avg_pool_backward(d, &dyg, &mut dxg).unwrap();
    assert_eq!(
        dl(&mut gpu, &dxg),
        cnhw_to_nchw(&dxc, d),
        "avg_pool backward"
    );
}

pub fn linear_matches_cpu(env: &Env) {
    let Some(mut gpu) = env.cuda() else {
        return;
    };
    let mut cpu = Cpu::new();
    let (n, inp, out) = (6, 11, 4);
    let l = LinearParams {
        inp,
        out,
        weight: 2,
        bias: Some(2 + inp * out + 3),
    };
    let arena = 2 + inp * out + 3 + out + 1;
    let p = normal(arena, 30, 0.4);
    let pg = up(&mut gpu, &p);
    let x = normal(n * inp, 31, 1.0);
    let xg = up(&mut gpu, &x);
    let mut yc = vec![0.0; n * out];
    let mut yg = gpu.alloc(n * out).unwrap();
    cpu.linear_forward(n, l, &x, &p, &mut yc).unwrap();
    gpu.linear_forward(n, l, &xg, &pg, &mut yg).unwrap();
    close("linear forward", &dl(&mut gpu, &yg), &yc, 1e-6);
    let dy = normal(n * out, 32, 1.0);
    let dyg = up(&mut gpu, &dy);
    for pgm in [ParamGrad::Sum, ParamGrad::PerSampleSq] {
        let g0: Vec<f32> = normal(arena, 33, 1.0).iter().map(|v| v.abs()).collect();
        let (mut gc, mut gg) = (g0.clone(), up(&mut gpu, &g0));
        let mut dxc = vec![0.0; n * inp];
        let mut dxg = gpu.alloc(n * inp).unwrap();
        cpu.linear_backward(n, l, &x, &dy, &p, pgm, &mut gc, Some(&mut dxc))
            .unwrap();
        gpu.linear_backward(n, l, &xg, &dyg, &pg, pgm, &mut gg, Some(&mut dxg))
            .unwrap();
        close(
            &format!("linear {pgm:?} gradient arena"),
            &dl(&mut gpu, &gg),
            &gc,
            1e-6,
        );
        close(
            &format!("linear {pgm:?} dx"),
            &dl(&mut gpu, &dxg),
            &dxc,
            1e-6,
        );
    }
}

pub fn device_loss_matches_samkit_core(env: &Env) {
    let Some(mut gpu) = env.cuda() else {
        return;
    };
    let (n, k) = (9, 10);
    let z = normal(n * k, 40, 3.0);
    let labels: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % k).collect();
    let w: Vec<f32> = (0..n).map(|i| 0.05 + 0.01 * i as f32).collect();
    let mut gc = vec![0.0; n * k];
    let lc =
        samkit_core::loss::smooth_cross_entropy(&z, &labels, k, 0.1, &w, Some(&mut gc)).unwrap();
    let zg = up(&mut gpu, &z);
    let mut gg = gpu.alloc(n * k).unwrap();
    let lg = gpu
        .smooth_cross_entropy(&zg, &labels, k, 0.1, &w, Some(&mut gg))
        .unwrap();
    close("loss per sample", &lg, &lc, 1e-6);
    close("loss gradient", &dl(&mut gpu, &gg), &gc, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

fn batch(env: &Env, seed: u64) -> (Tensor, Vec<usize>) {
    let b = env.batch;
    let x = Tensor::from_vec(normal(b * 3 * 32 * 32, seed, 1.0), &[b, 3, 32, 32]).unwrap();
    let y = (0..b).map(|i| (i * 3 + seed as usize) % 10).collect();
    (x, y)
}

/// Per-segment comparison of two arenas laid out as `layout`.
fn close_arena(what: &str, layout: &Layout, got: &[f32], want: &[f32], tol: f64) {
    close_segments(what, layout, got, want, |_| tol);
}

/// Every segment of the arena within its own tolerance `tol(segment index)`.
fn close_segments(
    what: &str,
    layout: &Layout,
    got: &[f32],
    want: &[f32],
    tol: impl Fn(usize) -> f64,
) {
    let mut worst = (0.0f64, String::new());
    for (i, s) in layout.segments().iter().enumerate() {
        let r = close(
            &format!("{what} {}", s.name),
            &got[s.range()],
            &want[s.range()],
            tol(i),
        );
        if r > worst.0 {
            worst = (r, s.name.clone());
        }
    }
    println!("{what}: worst segment {} ({:.2e})", worst.1, worst.0);
}

/// A ResNet-18 gradient within 2e-3 (relative L2, whole arena) and 5e-3 per segment, or within
/// twice what the CPU's own gradient moves under a rounding-sized nudge of the weights
/// ([`cpu_gradient_rounding_floor`]) where that is larger; the same rule for pass 1 and pass 2.
fn gradient_close(what: &str, layout: &Layout, got: &[f32], want: &[f32], floor: &(f64, Vec<f64>)) {
    let (whole, per) = floor;
    close(
        &format!("{what} (whole arena)"),
        got,
        want,
        2e-3f64.max(2.0 * whole),
    );
    close_segments(what, layout, got, want, |i| 5e-3f64.max(2.0 * per[i]));
}

/// Relative weight changes of about one f32 rounding, by which the CPU's own gradient is moved to
/// measure how well conditioned it is.
const ROUNDING_NUDGE: f32 = 1e-7;

/// How far the CPU's own ResNet-18 gradient moves when every weight moves by about one
/// rounding (`w·(1 + 1e-7·N(0,1))`, two draws, the larger kept): the whole arena's and each
/// segment's relative L2 change. At width 64 and batch 8 this is 1.6e-3 to 6e-3 for the whole
/// arena (measured 2026-11-30: ReLU and max-style ties flip under such nudges), which is where
/// the H200's 4.3e-3 against a fixed 2e-3 tolerance came from. Two correct implementations
/// cannot be asked to agree more closely than one of them agrees with itself.
fn cpu_gradient_rounding_floor(
    cpu: &mut ResNet18<Cpu>,
    w: &[f32],
    x: &Tensor,
    y: &[usize],
    wts: &[f32],
    layout: &Layout,
) -> (f64, Vec<f64>) {
    let mut g0 = vec![0.0; w.len()];
    cpu.forward_backward(w, x, y.into(), wts, BnMode::TrainNoUpdate, &mut g0)
        .unwrap();
    let rel = |a: &[f32], b: &[f32]| {
        let (mut d2, mut b2) = (0f64, 0f64);
        for (&p, &q) in a.iter().zip(b) {
            d2 += (p as f64 - q as f64).powi(2);
            b2 += (q as f64).powi(2);
        }
        if b2.sqrt() > 1e-20 {
            (d2 / b2).sqrt()
        } else {
            d2.sqrt()
        }
    };
    let mut whole = 0f64;
    let mut per = vec![0f64; layout.segments().len()];
    for seed in [101, 102] {
        let noise = normal(w.len(), seed, 1.0);
        let wn: Vec<f32> = w
            .iter()
            .zip(&noise)
            .map(|(v, e)| v * (1.0 + ROUNDING_NUDGE * e))
            .collect();
        let mut g = vec![0.0; w.len()];
        cpu.forward_backward(&wn, x, y.into(), wts, BnMode::TrainNoUpdate, &mut g)
            .unwrap();
        whole = whole.max(rel(&g, &g0));
        for (f, s) in per.iter_mut().zip(layout.segments()) {
            *f = f.max(rel(&g[s.range()], &g0[s.range()]));
        }
    }
    println!("cpu gradient under a rounding nudge of the weights: rel L2 {whole:.2e}");
    (whole, per)
}

fn resnets(env: &Env) -> Option<(ResNet18<Cpu>, ResNet18<Cuda>)> {
    let gpu = env.cuda()?;
    let mut cfg = ResNetConfig::new(10, env.width);
    cfg.label_smoothing = 0.1;
    Some((
        ResNet18::cpu(cfg).unwrap(),
        ResNet18::new(gpu, cfg).unwrap(),
    ))
}

/// The two ResNets of [`resnets`] at the CPU's initial weights of seed `init` (`w`, and `wg` on
/// the device), the batch of seed `data`, mean sample weights and a zeroed gradient arena on
/// each side.
struct ResNetCase {
    cpu: ResNet18<Cpu>,
    gpu: ResNet18<Cuda>,
    layout: Layout,
    w: Vec<f32>,
    wg: <Cuda as Backend>::Arena,
    x: Tensor,
    y: Vec<usize>,
    wts: Vec<f32>,
    gc: Vec<f32>,
    gg: <Cuda as Backend>::Arena,
}

fn resnet_case(env: &Env, init: u64, data: u64) -> Option<ResNetCase> {
    let (cpu, mut gpu) = resnets(env)?;
    let layout = cpu.layout().clone();
    let w = cpu.init_params(init);
    let wg = gpu.backend_mut().arena_from(&w).unwrap();
    let (x, y) = batch(env, data);
    let wts = mean_weights(env.batch);
    let gc = vec![0.0; w.len()];
    let gg = gpu.backend_mut().arena_zeros(w.len()).unwrap();
    Some(ResNetCase {
        cpu,
        gpu,
        layout,
        w,
        wg,
        x,
        y,
        wts,
        gc,
        gg,
    })
}

fn stats_close(what: &str, gpu: &mut ResNet18<Cuda>, cpu: &mut ResNet18<Cpu>, tol: f64) {
    let (sg, sc) = (gpu.running_stats().unwrap(), cpu.running_stats().unwrap());
    let names = cpu.bn_names().to_vec();
    for ((name, (mg, vg)), (mc, vc)) in names.iter().zip(sg).zip(sc) {
        close(&format!("{what} {name}.running_mean"), &mg, &mc, tol);
        close(&format!("{what} {name}.running_var"), &vg, &vc, tol);
    }
}

/// ResNet-18 (`env.width`, `env.batch`, 32×32): logits, per-sample losses, the gradient
/// ([`gradient_close`]) and every running statistic (≤ 1e-4) after a training pass; the pass-2
/// mode leaves the statistics exactly alone and its gradient follows the same rule; evaluation
/// logits.
pub fn resnet18_forward_backward_matches_cpu(env: &Env) {
    let Some(ResNetCase {
        mut cpu,
        mut gpu,
        layout,
        w,
        wg,
        x,
        y,
        wts,
        mut gc,
        mut gg,
    }) = resnet_case(env, 0, 1)
    else {
        return;
    };
    let lc = cpu
        .forward_backward(&w, &x, (&y).into(), &wts, BnMode::Train, &mut gc)
        .unwrap();
    let lg = gpu
        .forward_backward(&wg, &x, (&y).into(), &wts, BnMode::Train, &mut gg)
        .unwrap();
    close(
        "resnet18 per-sample losses",
        &lg.per_sample,
        &lc.per_sample,
        1e-4,
    );
    assert!((lg.loss - lc.loss).abs() <= 1e-4 * lc.loss.abs().max(1.0));
    let ggh = gpu.backend_mut().arena_to_host(&gg).unwrap();
    stats_close("after Train:", &mut gpu, &mut cpu, 1e-4);
    let floor = cpu_gradient_rounding_floor(&mut cpu, &w, &x, &y, &wts, &layout);
    gradient_close("resnet18 gradient", &layout, &ggh, &gc, &floor);
    assert_eq!(gpu.buffers().unwrap().len(), cpu.buffers().unwrap().len());

    // Pass 2 of a SAM step: batch statistics, running statistics untouched (bit for bit).
    let before = gpu.running_stats().unwrap();
    let (x2, y2) = batch(env, 2);
    let lc2 = cpu
        .forward_backward(&w, &x2, (&y2).into(), &wts, BnMode::TrainNoUpdate, &mut gc)
        .unwrap();
    let lg2 = gpu
        .forward_backward(&wg, &x2, (&y2).into(), &wts, BnMode::TrainNoUpdate, &mut gg)
        .unwrap();
    assert_eq!(
        gpu.running_stats().unwrap(),
        before,
        "TrainNoUpdate touched the statistics"
    );
    close(
        "resnet18 TrainNoUpdate losses",
        &lg2.per_sample,
        &lc2.per_sample,
        1e-4,
    );
    let floor2 = cpu_gradient_rounding_floor(&mut cpu, &w, &x2, &y2, &wts, &layout);
    gradient_close(
        "resnet18 TrainNoUpdate gradient",
        &layout,
        &gpu.backend_mut().arena_to_host(&gg).unwrap(),
        &gc,
        &floor2,
    );

    // Evaluation with the running statistics; a device-resident input gives the same logits.
    let oc = cpu.forward(&w, &x2, BnMode::Eval).unwrap();
    let og = gpu.forward(&wg, &x2, BnMode::Eval).unwrap();
    close(
        "resnet18 eval logits",
        og.as_slice().unwrap(),
        oc.as_slice().unwrap(),
        1e-4,
    );
    let xd = gpu.backend_mut().to_device(&x2).unwrap();
    let od = gpu.forward(&wg, &xd, BnMode::Eval).unwrap();
    assert_eq!(od, og, "a device input gives other logits than a host one");
    for line in gpu.backend_mut().algorithms() {
        println!("{line}");
    }
}

/// SSAM-F's Fisher `Σ_i (∇ℓ_i)²` over a batch with BN in inference mode (after one training
/// pass set the running statistics): relative L2 ≤ 5e-3, per segment ≤ 1e-2.
pub fn resnet18_per_sample_fisher_matches_cpu(env: &Env) {
    let Some(ResNetCase {
        mut cpu,
        mut gpu,
        layout,
        w,
        wg,
        x,
        y,
        wts,
        mut gc,
        mut gg,
    }) = resnet_case(env, 3, 4)
    else {
        return;
    };
    cpu.forward_backward(&w, &x, (&y).into(), &wts, BnMode::Train, &mut gc)
        .unwrap();
    gpu.forward_backward(&wg, &x, (&y).into(), &wts, BnMode::Train, &mut gg)
        .unwrap();
    let before = gpu.running_stats().unwrap();
    let (x2, y2) = batch(env, 5);
    let mut fc = vec![0.0; w.len()];
    let mut fg = gpu.backend_mut().arena_zeros(w.len()).unwrap();
    let lc = cpu
        .per_sample_grad_sq(&w, &x2, (&y2).into(), &mut fc)
        .unwrap();
    let lg = gpu
        .per_sample_grad_sq(&wg, &x2, (&y2).into(), &mut fg)
        .unwrap();
    close("fisher losses", &lg.per_sample, &lc.per_sample, 1e-4);
    // A second sub-batch adds to the first.
    cpu.per_sample_grad_sq(&w, &x, (&y).into(), &mut fc)
        .unwrap();
    gpu.per_sample_grad_sq(&wg, &x, (&y).into(), &mut fg)
        .unwrap();
    let fgh = gpu.backend_mut().arena_to_host(&fg).unwrap();
    assert!(fgh.iter().all(|v| *v >= 0.0), "negative squares");
    close("fisher (whole arena)", &fgh, &fc, 5e-3);
    close_arena("fisher", &layout, &fgh, &fc, 1e-2);
    assert_eq!(
        gpu.running_stats().unwrap(),
        before,
        "the Fisher touched the statistics"
    );
}

pub fn mlp_matches_cpu(env: &Env) {
    // The model owns its backend: the device arenas come from a second backend on the same
    // device, hence the same stream.
    let Some(aux) = env.cuda() else {
        return;
    };
    let gpu = Cuda::with_options(aux.gpu(), env.opts).unwrap();
    let dims = [20, 32, 16, 10];
    let loss = LossKind::CrossEntropy { smoothing: 0.05 };
    let mut cpu = Mlp::cpu(&dims, Activation::Tanh, loss).unwrap();
    let mut gm = Mlp::new(gpu, &dims, Activation::Tanh, loss).unwrap();
    let w = cpu.init_params(5);
    let layout = cpu.layout().clone();
    let n = 12;
    let x = Tensor::from_vec(normal(n * 20, 6, 1.0), &[n, 20]).unwrap();
    let y: Vec<usize> = (0..n).map(|i| i % 10).collect();
    let wts = mean_weights(n);
    let wg = aux.arena_from(&w).unwrap();
    let mut gg = aux.arena_zeros(w.len()).unwrap();
    let mut gc = vec![0.0; w.len()];
    let lc = cpu
        .forward_backward(&w, &x, (&y).into(), &wts, BnMode::Train, &mut gc)
        .unwrap();
    let lg = gm
        .forward_backward(&wg, &x, (&y).into(), &wts, BnMode::Train, &mut gg)
        .unwrap();
    close("mlp losses", &lg.per_sample, &lc.per_sample, 1e-5);
    close_arena(
        "mlp gradient",
        &layout,
        &aux.arena_to_host(&gg).unwrap(),
        &gc,
        1e-5,
    );
    let mut fc = vec![0.0; w.len()];
    let mut fg = aux.arena_zeros(w.len()).unwrap();
    cpu.per_sample_grad_sq(&w, &x, (&y).into(), &mut fc)
        .unwrap();
    gm.per_sample_grad_sq(&wg, &x, (&y).into(), &mut fg)
        .unwrap();
    close_arena(
        "mlp fisher",
        &layout,
        &aux.arena_to_host(&fg).unwrap(),
        &fc,
        1e-5,
    );
}

/// Two SAM steps (SGD with momentum and weight decay) through samkit-cuda's `GpuOptimizer` on
/// `ResNet18<Cuda>` against `samkit_core::Optimizer` on `ResNet18<Cpu>`: the losses of both
/// passes, the weight updates per segment (relative L2 ≤ 5e-3, or twice the CPU gradient's own
/// rounding floor) and the running statistics, which only pass 1 updates.
pub fn sam_step_through_gpu_optimizer_matches_cpu(env: &Env) {
    let Some((mut cpu, mut gpu)) = resnets(env) else {
        return;
    };
    let layout = cpu.layout().clone();
    let w0 = cpu.init_params(9);
    let base = BaseOptimizer::Sgd(Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Sgd::default()
    });
    let rule = Rule::Sam(Sam::default());
    let mut oc = Optimizer::new(layout.clone(), rule.clone(), base.clone()).unwrap();
    let dev = gpu.backend_mut().gpu().clone();
    let mut og = GpuOptimizer::<f32>::new(&dev, layout.clone(), rule, base).unwrap();
    let mut wc = w0.clone();
    let mut wg = gpu.backend_mut().arena_from(&w0).unwrap();
    let wts = mean_weights(env.batch);
    for step in 0..2u64 {
        let (x, y) = batch(env, 10 + step);
        // How much the step's gradient is moved by rounding alone (see the helper): the
        // perturbation direction and the update follow it.
        let (floor, floor_seg) = cpu_gradient_rounding_floor(&mut cpu, &wc, &x, &y, &wts, &layout);
        let rc = oc
            .step(&mut wc[..], |req, w, g| match req {
                GradRequest::Batch(pass) => Ok(cpu
                    .forward_backward(w, &x, (&y).into(), &wts, BnMode::for_pass(pass), g)?
                    .eval()),
                other => panic!("unexpected request {other:?}"),
            })
            .unwrap();
        let rg = og
            .step(&mut wg, |req, w, g| match req {
                GradRequest::Batch(pass) => gpu
                    .forward_backward(w, &x, (&y).into(), &wts, BnMode::for_pass(pass), g)
                    .map(|l| l.eval())
                    .map_err(|e| samkit_cuda::Error::Core(e.into())),
                other => panic!("unexpected request {other:?}"),
            })
            .unwrap();
        println!("step {step}: cpu {rc:?}\n        gpu {rg:?}");
        if step == 0 {
            for a in gpu.backend_mut().algorithms() {
                println!("algorithm: {a}");
            }
        }
        assert_eq!(rg.outcome, rc.outcome);
        assert!((rg.loss - rc.loss).abs() <= 1e-4 * rc.loss.abs().max(1.0));
        let (pg, pc) = (rg.perturbed_loss.unwrap(), rc.perturbed_loss.unwrap());
        // On the H200 the perturbed loss of step 1 differed by 1.3e-4 (relative) at a gradient
        // rounding floor of ~5e-3.
        assert!(
            (pg - pc).abs() <= 1e-4f64.max(floor) * pc.abs().max(1.0),
            "{pg} vs {pc} (gradient rounding floor {floor:.2e})"
        );
        let wgh = gpu.backend_mut().arena_to_host(&wg).unwrap();
        let du_g: Vec<f32> = wgh.iter().zip(&w0).map(|(a, b)| a - b).collect();
        let du_c: Vec<f32> = wc.iter().zip(&w0).map(|(a, b)| a - b).collect();
        for (s, f) in layout.segments().iter().zip(&floor_seg) {
            close(
                &format!("step {step} update {}", s.name),
                &du_g[s.range()],
                &du_c[s.range()],
                5e-3f64.max(2.0 * f),
            );
        }
        stats_close(&format!("step {step}:"), &mut gpu, &mut cpu, 1e-4);
    }
}

// ---------------------------------------------------------------------------------------------
// MESA and SAF
// ---------------------------------------------------------------------------------------------

/// MESA/SAF's distillation term on the device (`sk_nn_kd`, `Cuda::distill_kd`) against
/// `samkit_nn::distill::kd_term`: the same f64 expressions, so only exp/log of another math
/// library differ, far below one f32 ulp; bad input is an error before any launch.
pub fn device_distillation_term_matches_cpu(env: &Env) {
    let Some(mut gpu) = env.cuda() else {
        return;
    };
    for (n, k, tau, lambda) in [(9usize, 10usize, 5.0f32, 0.8f32), (5, 100, 1.0, 0.3)] {
        let z = normal(n * k, 41 + k as u64, 3.0);
        let t = normal(n * k, 42 + k as u64, 3.0);
        let w: Vec<f32> = (0..n).map(|i| 0.05 + 0.01 * i as f32).collect();
        let present: Vec<bool> = (0..n).map(|i| i % 3 != 1).collect();
        let g0 = normal(n * k, 43, 0.1);
        for flags in [None, Some(&present[..])] {
            let mut gc = g0.clone();
            let kc = samkit_nn::distill::kd_term(&z, &t, k, tau, lambda, &w, flags, Some(&mut gc))
                .unwrap();
            let (zg, tg) = (up(&mut gpu, &z), up(&mut gpu, &t));
            let mut gg = up(&mut gpu, &g0);
            let kg = gpu
                .distill_kd(&zg, &tg, k, tau, lambda, &w, flags, Some(&mut gg))
                .unwrap();
            close("distillation term per sample", &kg, &kc, 1e-6);
            close(
                "distillation logit gradient (added)",
                &dl(&mut gpu, &gg),
                &gc,
                1e-6,
            );
            let no_grad = gpu
                .distill_kd(&zg, &tg, k, tau, lambda, &w, flags, None)
                .unwrap();
            assert_eq!(no_grad, kg, "the terms without a gradient");
        }
    }
    let z = up(&mut gpu, &normal(20, 46, 1.0));
    let w = [0.5f32; 2];
    assert!(gpu
        .distill_kd(&z, &z, 10, 0.0, 0.8, &w, None, None)
        .is_err());
    assert!(gpu
        .distill_kd(&z, &z, 10, 5.0, -1.0, &w, None, None)
        .is_err());
    assert!(gpu
        .distill_kd(&z, &z, 20, 5.0, 0.8, &w, None, None)
        .is_err());
    assert!(gpu
        .distill_kd(&z, &z, 10, 5.0, 0.8, &w, Some(&[true]), None)
        .is_err());
}

/// MESA's teacher update on the device (`sk_nn_ema`, `Cuda::ema_update`) is the host's f32
/// expression `d·e + (1 − d)·w` bit for bit (no fused multiply-add on either side).
pub fn device_ema_update_is_the_cpu_update_bit_for_bit(env: &Env) {
    let Some(mut gpu) = env.cuda() else {
        return;
    };
    let n = 1000;
    let w = normal(n, 44, 1.0);
    let mut ema = normal(n, 45, 1.0);
    let mut eg = up(&mut gpu, &ema);
    let wg = up(&mut gpu, &w);
    let d = 0.9998f32;
    let c = 1.0 - d;
    for _ in 0..3 {
        for (e, &x) in ema.iter_mut().zip(&w) {
            *e = d * *e + c * x;
        }
        gpu.ema_update(&mut eg, &wg, d).unwrap();
    }
    let got = dl(&mut gpu, &eg);
    for (i, (g, e)) in got.iter().zip(&ema).enumerate() {
        assert_eq!(
            g.to_bits(),
            e.to_bits(),
            "value {i}: device {g} vs host {e}"
        );
    }
    let short = up(&mut gpu, &w[..10]);
    assert!(gpu.ema_update(&mut eg, &short, d).is_err());
}
