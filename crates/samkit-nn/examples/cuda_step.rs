//! Times a ResNet-18 CIFAR train step on the GPU, phase by phase, with CUDA events, for each
//! optimizer of the family, and prints one JSON object (also written to `--out`):
//!
//! ```text
//! cargo run --release -p samkit-nn --example cuda_step -- \
//!     [--batch 128] [--width 64] [--steps 20] [--warmup 3] \
//!     [--optimizers sgd,sam,asam,friendlysam,ssam-f,ssam-d] [--workspace-mb 1024] [--out FILE]
//! ```
//!
//! fp32, TF32 off, NCHW, cuDNN algorithms benchmarked once per shape (the settings of
//! `tools/anchors/torch_gpu_resnet.py`, whose PyTorch times scripts/gpu-check.sh puts beside
//! these). `--workspace-mb` caps the cuDNN workspace (`CudaOptions::workspace_limit`; the GPU
//! check's rehearsal on the emulated device, whose cuDNN needs none, passes 4 so that no
//! gigabyte is cleared per shape). The batch is uploaded once (a device tensor), the labels stay
//! on the host (the model computes the loss there from the downloaded logits, as on the CPU).
//!
//! Phases (milliseconds, mean over the timed steps; `median_step_ms` is the median whole step):
//! `pass1` (forward + backward at w), `perturb` (norm and perturbation; the whole update for
//! SGD), `pass2` (forward + backward at w + e), `update` (restore + base optimizer), `mask`
//! (SSAM-F: the Fisher over n_s samples and the top-k, on the steps that compute it; SSAM-D:
//! the drop/grow inside the perturbation of an update step, measured as the difference from the
//! other steps), each per mask update (`mask_per_update_ms`) and amortised per step (`mask`).
//! Without a device it prints `{"skipped": "..."}` and exits 0.
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice};
use samkit_core::{
    Asam, BaseOptimizer, FirstOutcome, FriendlySam, Layout, MaskKind, Rule, Sam, Sgd, Ssam,
};
use samkit_cuda::GpuOptimizer;
use samkit_nn::cuda::CudaOptions;
use samkit_nn::init::Rng;
use samkit_nn::{mean_weights, BnMode, Cuda, Model, ResNet18, ResNetConfig, Tensor};
use serde_json::{json, Value};

struct Args {
    batch: usize,
    width: usize,
    steps: usize,
    warmup: usize,
    optimizers: Vec<String>,
    workspace_mb: usize,
    out: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        batch: 128,
        width: 64,
        steps: 20,
        warmup: 3,
        optimizers: "sgd,sam,asam,friendlysam,ssam-f,ssam-d"
            .split(',')
            .map(String::from)
            .collect(),
        workspace_mb: CudaOptions::default().workspace_limit >> 20,
        out: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        let num = |s: &str| -> usize {
            s.parse().unwrap_or_else(|_| {
                eprintln!("{}: not a number: {s}", v[i]);
                std::process::exit(2)
            })
        };
        match v[i].as_str() {
            "--batch" => a.batch = num(&val),
            "--width" => a.width = num(&val),
            "--steps" => a.steps = num(&val).max(1),
            "--warmup" => a.warmup = num(&val),
            "--optimizers" => a.optimizers = val.split(',').map(String::from).collect(),
            "--workspace-mb" => a.workspace_mb = num(&val).max(1),
            "--out" => a.out = Some(val),
            other => {
                eprintln!("unknown argument {other} (see the example's documentation)");
                std::process::exit(2)
            }
        }
        i += 2;
    }
    a
}

fn rule(name: &str) -> Rule {
    match name {
        "sgd" => Rule::Base,
        "sam" => Rule::Sam(Sam::default()),
        "asam" => Rule::Asam(Asam::default()),
        "friendlysam" => Rule::FriendlySam(FriendlySam::default()),
        "ssam-f" => Rule::Ssam(Ssam::fisher()),
        "ssam-d" => Rule::Ssam(Ssam::dynamic(7)),
        other => {
            eprintln!("unknown optimizer {other}: sgd, sam, asam, friendlysam, ssam-f, ssam-d");
            std::process::exit(2)
        }
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn nn(e: samkit_nn::Error) -> Box<dyn std::error::Error> {
    Box::new(e)
}

#[derive(Default, Clone, Copy)]
struct Phases {
    pass1: f64,
    perturb: f64,
    pass2: f64,
    update: f64,
    mask: f64,
    total: f64,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

struct Bench<'a> {
    model: &'a mut ResNet18<Cuda>,
    layout: Layout,
    w0: &'a [f32],
    x: &'a Tensor,
    y: &'a [usize],
    ev: Vec<CudaEvent>,
}

impl Bench<'_> {
    fn ms(&self, a: usize, b: usize) -> Res<f64> {
        Ok(self.ev[a].elapsed_ms(&self.ev[b])? as f64)
    }

    fn run(&mut self, name: &str, warmup: usize, steps: usize) -> Res<Value> {
        let be = self.model.backend_mut();
        let dev = be.gpu().clone();
        let stream = be.stream().clone();
        let mut w = be.arena_from(self.w0).map_err(nn)?;
        let mut g: CudaSlice<f32> = be.arena_zeros(self.w0.len()).map_err(nn)?;
        let mut g2 = be.arena_zeros(self.w0.len()).map_err(nn)?;
        let mut fisher = be.arena_zeros(self.w0.len()).map_err(nn)?;
        let base = BaseOptimizer::Sgd(Sgd {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            ..Sgd::default()
        });
        let r = rule(name);
        let interval = match &r {
            Rule::Ssam(c) => Some(c.interval),
            _ => None,
        };
        let dynamic = matches!(&r, Rule::Ssam(c) if matches!(c.mask, MaskKind::Dynamic { .. }));
        let mut opt = GpuOptimizer::<f32>::new(&dev, self.layout.clone(), r, base)?;
        let wts = mean_weights(self.y.len());
        // (phases, a Fisher was computed, SSAM-D updated its mask in the perturbation)
        let mut rows: Vec<(Phases, bool, bool)> = Vec::new();
        let mut wall = Vec::new();
        for step in 0..warmup + steps {
            let t0 = Instant::now();
            let updates_before = opt.mask_updates()?;
            self.ev[0].record(&stream)?;
            let mut fisher_step = false;
            if let Some(ns) = opt.needs_fisher()? {
                stream.memset_zeros(&mut fisher)?;
                let mut done = 0;
                while done < ns {
                    let m = (ns - done).min(self.y.len());
                    let (xs, ys) = if m == self.y.len() {
                        (self.x.clone(), self.y.to_vec())
                    } else {
                        let host = self.model.backend_mut().to_host(self.x).map_err(nn)?;
                        (host.narrow_batch(0, m).map_err(nn)?, self.y[..m].to_vec())
                    };
                    self.model
                        .per_sample_grad_sq(&w, &xs, (&ys).into(), &mut fisher)
                        .map_err(nn)?;
                    done += m;
                }
                opt.set_fisher::<f32, _>(&fisher)?;
                fisher_step = true;
            }
            self.ev[1].record(&stream)?;
            let l1 = self
                .model
                .forward_backward(&w, self.x, self.y.into(), &wts, BnMode::Train, &mut g)
                .map_err(nn)?;
            self.ev[2].record(&stream)?;
            let first = opt.first_step(&mut w, &g)?;
            self.ev[3].record(&stream)?;
            let two = first == FirstOutcome::Perturbed;
            if two {
                self.model
                    .forward_backward(
                        &w,
                        self.x,
                        self.y.into(),
                        &wts,
                        BnMode::TrainNoUpdate,
                        &mut g2,
                    )
                    .map_err(nn)?;
                self.ev[4].record(&stream)?;
                opt.second_step(&mut w, &g2)?;
            } else {
                self.ev[4].record(&stream)?;
            }
            self.ev[5].record(&stream)?;
            self.ev[5].synchronize()?;
            wall.push(t0.elapsed().as_secs_f64() * 1e3);
            if !l1.loss.is_finite() {
                return Err(format!("{name}: non-finite loss at step {step}").into());
            }
            let mask_update = fisher_step || opt.mask_updates()? > updates_before;
            let mut p = Phases {
                mask: self.ms(0, 1)?,
                pass1: self.ms(1, 2)?,
                total: self.ms(0, 5)?,
                ..Phases::default()
            };
            if two {
                p.perturb = self.ms(2, 3)?;
                p.pass2 = self.ms(3, 4)?;
                p.update = self.ms(4, 5)?;
            } else {
                p.update = self.ms(2, 3)?;
            }
            if step >= warmup {
                rows.push((p, fisher_step, mask_update && dynamic));
            }
        }
        let col =
            |f: fn(&Phases) -> f64, sel: &dyn Fn(&(Phases, bool, bool)) -> bool| -> Vec<f64> {
                rows.iter().filter(|r| sel(r)).map(|r| f(&r.0)).collect()
            };
        let all = |_: &(Phases, bool, bool)| true;
        let plain = |r: &(Phases, bool, bool)| !r.2;
        let upd = |r: &(Phases, bool, bool)| r.2;
        let fisher = |r: &(Phases, bool, bool)| r.1;
        let n = rows.len().max(1) as f64;
        // SSAM-D's mask update hides in the perturbation of its update steps.
        let (perturb, mask_total, updates) = if dynamic {
            let (pp, pu) = (col(|p| p.perturb, &plain), col(|p| p.perturb, &upd));
            let extra = (mean(&pu) - mean(&pp)).max(0.0);
            (mean(&pp), extra * pu.len() as f64, pu.len())
        } else {
            let masks = col(|p| p.mask, &fisher);
            (
                mean(&col(|p| p.perturb, &all)),
                masks.iter().sum::<f64>(),
                masks.len(),
            )
        };
        let totals = col(|p| p.total, &all);
        Ok(json!({
            "pass1_ms": mean(&col(|p| p.pass1, &all)),
            "perturb_ms": perturb,
            "pass2_ms": mean(&col(|p| p.pass2, &all)),
            "update_ms": mean(&col(|p| p.update, &all)),
            "mask_ms": mask_total / n,
            "mask_updates": updates,
            "mask_per_update_ms": if updates > 0 { mask_total / updates as f64 } else { 0.0 },
            "mask_interval": interval,
            "mean_step_ms": mean(&totals),
            "median_step_ms": median(&totals),
            "min_step_ms": totals.iter().copied().fold(f64::INFINITY, f64::min),
            "median_wall_ms": median(&wall[warmup..]),
            "steps": rows.len(),
        }))
    }
}

fn main() {
    let a = args();
    let out = match run(&a) {
        Ok(v) => v,
        Err(e) => {
            let no_device = e
                .downcast_ref::<samkit_nn::Error>()
                .is_some_and(|e| e.is_no_device());
            if no_device {
                json!({ "skipped": format!("no CUDA device ({e})") })
            } else {
                eprintln!("cuda_step: {e}");
                std::process::exit(1);
            }
        }
    };
    let s = serde_json::to_string_pretty(&out).expect("json");
    println!("{s}");
    if let Some(f) = &a.out {
        if let Err(e) = std::fs::write(f, &s) {
            eprintln!("writing {f}: {e}");
            std::process::exit(1);
        }
    }
}

fn run(a: &Args) -> Res<Value> {
    let opts = CudaOptions {
        workspace_limit: a.workspace_mb << 20,
        ..CudaOptions::default()
    };
    let mut cuda = Cuda::open(0, opts).map_err(nn)?;
    let mut xv = vec![0.0; a.batch * 3 * 32 * 32];
    Rng::new(1).fill_normal(&mut xv, 1.0);
    let x = cuda
        .to_device(&Tensor::from_vec(xv, &[a.batch, 3, 32, 32]).map_err(nn)?)
        .map_err(nn)?;
    let y: Vec<usize> = (0..a.batch).map(|i| (i * 7 + 3) % 10).collect();
    let device = cuda.gpu().name().to_string();
    let cudnn = cuda.cudnn_version();
    let opts = *cuda.options();
    let ctx = cuda.gpu().context().clone();
    let mut model = ResNet18::new(cuda, ResNetConfig::new(10, a.width)).map_err(nn)?;
    let w0 = model.init_params(0);
    let ev = (0..6)
        .map(|_| ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)))
        .collect::<Result<Vec<_>, _>>()?;
    let layout = model.layout().clone();
    let mut b = Bench {
        model: &mut model,
        layout,
        w0: &w0,
        x: &x,
        y: &y,
        ev,
    };
    let mut results = serde_json::Map::new();
    for name in &a.optimizers {
        eprintln!("cuda_step: {name}");
        let r = b.run(name, a.warmup.max(1), a.steps)?;
        results.insert(name.clone(), r);
    }
    let algos = model.backend_mut().algorithms();
    let ws = model.backend_mut().workspace_bytes();
    Ok(json!({
        "bench": "samkit-nn ResNet-18 CIFAR train step",
        "device": device,
        "cudnn_version": cudnn,
        "batch": a.batch,
        "width": a.width,
        "params": w0.len(),
        "precision": "fp32",
        "tf32": opts.tf32,
        "memory_format": "NCHW",
        "algo_search": format!("{:?}", opts.algo),
        "cudarc_event_tracking": opts.event_tracking,
        "warmup_steps": a.warmup.max(1),
        "optimizers": results,
        "cudnn_workspace_bytes": ws,
        "algorithms": algos,
    }))
}
