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
//! the drop/grow inside the first step of an update step, timed by the optimizer's own events,
//! `GpuOptimizer::time_mask_updates`, and taken out of `perturb`), each per mask update
//! (`mask_per_update_ms`) and amortised per step (`mask`). Each step runs through
//! `samkit_core::drive_step`, the trainer's protocol, with hooks that record the events.
//! Without a device it prints `{"skipped": "..."}` and exits 0.
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};
use samkit_core::{
    drive_step, Asam, BaseOptimizer, Eval, FriendlySam, GradRequest, Layout, Outcome, Rule, Sam,
    SamOptimizer, Sgd, Ssam, StepHooks, StepPhase,
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

/// The marks of one step, in order: 0 the step's start, 1 and 2 around pass 1, 3 after the
/// first step (perturbation; a one-pass step's update), 4 after pass 2, 5 after the second
/// step, 6 the step's end. Marks 4 and 5 are recorded only by a two-pass step.
const MARKS: usize = 7;

/// Time marks of one step: [`Marks::record`] marks the point after the work enqueued so far,
/// [`Marks::ms`] reads the milliseconds between two marks of the step after
/// [`Marks::finish`]. CUDA events on the GPU, the host clock on the CPU.
trait Marks {
    fn record(&mut self, slot: usize) -> Res<()>;
    /// Waits for the last mark (the step's end).
    fn finish(&mut self) -> Res<()>;
    fn ms(&self, from: usize, to: usize) -> Res<f64>;
}

/// CUDA events recorded on the stream the step's work is enqueued on.
struct EventMarks {
    stream: Arc<CudaStream>,
    ev: Vec<CudaEvent>,
}

impl Marks for EventMarks {
    fn record(&mut self, slot: usize) -> Res<()> {
        Ok(self.ev[slot].record(&self.stream)?)
    }

    fn finish(&mut self) -> Res<()> {
        Ok(self.ev[MARKS - 1].synchronize()?)
    }

    fn ms(&self, from: usize, to: usize) -> Res<f64> {
        Ok(self.ev[from].elapsed_ms(&self.ev[to])? as f64)
    }
}

/// The host clock (the CPU test of the step's accounting).
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Default)]
struct HostMarks([Option<Instant>; MARKS]);

impl Marks for HostMarks {
    fn record(&mut self, slot: usize) -> Res<()> {
        self.0[slot] = Some(Instant::now());
        Ok(())
    }

    fn finish(&mut self) -> Res<()> {
        Ok(())
    }

    fn ms(&self, from: usize, to: usize) -> Res<f64> {
        match (self.0[from], self.0[to]) {
            (Some(a), Some(b)) => Ok(b.saturating_duration_since(a).as_secs_f64() * 1e3),
            _ => Err(format!("time mark {from} or {to} was not recorded").into()),
        }
    }
}

/// The hooks of `drive_step` that record the marks at the phase boundaries.
struct Clock<'a, M> {
    marks: &'a mut M,
    fisher: bool,
    two: bool,
}

impl<M: Marks> StepHooks<Box<dyn std::error::Error>> for Clock<'_, M> {
    fn begin(&mut self, p: StepPhase) -> Res<()> {
        match p {
            StepPhase::Fisher => self.fisher = true,
            StepPhase::Pass1 => self.marks.record(1)?,
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, p: StepPhase) -> Res<()> {
        match p {
            StepPhase::Pass1 => self.marks.record(2),
            StepPhase::Perturb => self.marks.record(3),
            StepPhase::Pass2 => {
                self.two = true;
                self.marks.record(4)
            }
            StepPhase::Update => self.marks.record(5),
            StepPhase::Fisher | StepPhase::Mask => Ok(()),
        }
    }
}

/// One timed step.
struct StepTimes {
    phases: Phases,
    /// SSAM-F computed a Fisher (and its mask) this step.
    fisher: bool,
    /// The mask changed this step (SSAM-F's Fisher, SSAM-D's drop/grow).
    mask_update: bool,
    loss: f64,
    wall_ms: f64,
}

/// One step of `opt` through `samkit_core::drive_step` (the trainer's protocol), timed by
/// `marks` phase by phase. A mask update inside the first step (SSAM-D's drop/grow), which
/// the optimizer times itself (`take_mask_time`; on the GPU once `time_mask_updates` is on),
/// moves from the first step's span (the perturbation, or a one-pass step's update) to
/// `mask`. After SSAM-F's Fisher the mask is the span from the step's start to pass 1 (the
/// Fisher and its top-k).
fn timed_step<O, W, G, M, F>(
    opt: &mut O,
    marks: &mut M,
    w: &mut W,
    grads: (&mut G, &mut G),
    oracle: F,
) -> Res<StepTimes>
where
    O: SamOptimizer<W, G>,
    O::Error: 'static,
    W: ?Sized,
    G: ?Sized,
    M: Marks,
    F: FnMut(GradRequest, &W, &mut G) -> Res<Eval>,
{
    let t0 = Instant::now();
    marks.record(0)?;
    let mut clock = Clock {
        marks: &mut *marks,
        fisher: false,
        two: false,
    };
    let report = drive_step(opt, w, grads, oracle, &mut clock)?;
    let (fisher, two) = (clock.fisher, clock.two);
    marks.record(MARKS - 1)?;
    marks.finish()?;
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3;
    // Taken after a Fisher step too, so that it is not read by a later step.
    let in_first = opt.take_mask_time()?;
    let in_first = if fisher {
        0.0
    } else {
        in_first.map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let first = (marks.ms(2, 3)? - in_first).max(0.0);
    let mut p = Phases {
        mask: in_first,
        pass1: marks.ms(1, 2)?,
        total: marks.ms(0, MARKS - 1)?,
        ..Phases::default()
    };
    if fisher {
        p.mask += marks.ms(0, 1)?;
    }
    if two {
        p.perturb = first;
        p.pass2 = marks.ms(3, 4)?;
        p.update = marks.ms(4, 5)?;
    } else if report.outcome == Outcome::Applied {
        p.update = first;
    }
    Ok(StepTimes {
        phases: p,
        fisher,
        mask_update: report.mask_updated,
        loss: report.loss,
        wall_ms,
    })
}

struct Bench<'a> {
    model: &'a mut ResNet18<Cuda>,
    layout: Layout,
    w0: &'a [f32],
    x: &'a Tensor,
    y: &'a [usize],
    marks: EventMarks,
}

impl Bench<'_> {
    fn run(&mut self, name: &str, warmup: usize, steps: usize) -> Res<Value> {
        let be = self.model.backend_mut();
        let dev = be.gpu().clone();
        let mut w = be.arena_from(self.w0).map_err(nn)?;
        let mut g: CudaSlice<f32> = be.arena_zeros(self.w0.len()).map_err(nn)?;
        let mut g2 = be.arena_zeros(self.w0.len()).map_err(nn)?;
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
        let mut opt = GpuOptimizer::<f32>::new(&dev, self.layout.clone(), r, base)?;
        // SSAM-D's drop/grow runs inside the first step: the optimizer times it with two
        // events per mask update so that it can be moved to the mask phase.
        opt.time_mask_updates(true)?;
        let wts = mean_weights(self.y.len());
        let mut rows: Vec<StepTimes> = Vec::new();
        let (model, x, y) = (&mut *self.model, self.x, self.y);
        for step in 0..warmup + steps {
            let oracle = |req: GradRequest, w: &CudaSlice<f32>, out: &mut CudaSlice<f32>| {
                let e = match req {
                    GradRequest::Fisher { samples } => {
                        model.backend_mut().stream().memset_zeros(out)?;
                        let mut done = 0;
                        let mut e = Eval::default();
                        while done < samples {
                            let m = (samples - done).min(y.len());
                            let (xs, ys) = if m == y.len() {
                                (x.clone(), y.to_vec())
                            } else {
                                let host = model.backend_mut().to_host(x).map_err(nn)?;
                                (host.narrow_batch(0, m).map_err(nn)?, y[..m].to_vec())
                            };
                            e = model
                                .per_sample_grad_sq(w, &xs, (&ys).into(), out)
                                .map_err(nn)?
                                .eval();
                            done += m;
                        }
                        e
                    }
                    GradRequest::Batch(pass) => model
                        .forward_backward(w, x, y.into(), &wts, BnMode::for_pass(pass), out)
                        .map_err(nn)?
                        .eval(),
                    other => return Err(format!("{name}: no {other:?} in this bench").into()),
                };
                Ok(e)
            };
            let t = timed_step(&mut opt, &mut self.marks, &mut w, (&mut g, &mut g2), oracle)?;
            if !t.loss.is_finite() {
                return Err(format!("{name}: non-finite loss at step {step}").into());
            }
            if step >= warmup {
                rows.push(t);
            }
        }
        let col =
            |f: fn(&Phases) -> f64| -> Vec<f64> { rows.iter().map(|r| f(&r.phases)).collect() };
        let n = rows.len().max(1) as f64;
        let updates = rows.iter().filter(|r| r.fisher || r.mask_update).count();
        let mask_total: f64 = col(|p| p.mask).iter().sum();
        let totals = col(|p| p.total);
        let wall: Vec<f64> = rows.iter().map(|r| r.wall_ms).collect();
        Ok(json!({
            "pass1_ms": mean(&col(|p| p.pass1)),
            "perturb_ms": mean(&col(|p| p.perturb)),
            "pass2_ms": mean(&col(|p| p.pass2)),
            "update_ms": mean(&col(|p| p.update)),
            "mask_ms": mask_total / n,
            "mask_updates": updates,
            "mask_per_update_ms": if updates > 0 { mask_total / updates as f64 } else { 0.0 },
            "mask_interval": interval,
            "mean_step_ms": mean(&totals),
            "median_step_ms": median(&totals),
            "min_step_ms": totals.iter().copied().fold(f64::INFINITY, f64::min),
            "median_wall_ms": median(&wall),
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
    run_on(Cuda::open(0, opts).map_err(nn)?, a)
}

/// The bench on an opened backend (device 0, or the emulated device of the tests).
fn run_on(mut cuda: Cuda, a: &Args) -> Res<Value> {
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
    let ev = (0..MARKS)
        .map(|_| ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)))
        .collect::<Result<Vec<_>, _>>()?;
    let layout = model.layout().clone();
    let stream = model.backend_mut().stream().clone();
    let mut b = Bench {
        model: &mut model,
        layout,
        w0: &w0,
        x: &x,
        y: &y,
        marks: EventMarks { stream, ev },
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

#[cfg(test)]
mod tests {
    use samkit_core::Optimizer;
    use samkit_nn::{Activation, LossKind, Mlp};

    use super::*;

    /// Slack for comparing sums of the same f64 milliseconds (rounding only).
    const MS_EPS: f64 = 1e-9;

    /// The step accounting of the bench, with the host clock and the CPU optimizer: SSAM-D's
    /// drop/grow, timed by the optimizer inside the first step, is the mask phase of its update
    /// steps and is no longer part of the perturbation; the first step's span is split between
    /// the two with nothing lost.
    #[test]
    fn ssam_d_drop_grow_is_timed_as_the_mask_phase_on_the_cpu() -> Res<()> {
        let smoothing = 0.0;
        let mut model = Mlp::cpu(
            &[16, 64, 64, 10],
            Activation::Relu,
            LossKind::CrossEntropy { smoothing },
        )?;
        let mut w = model.init_params(0);
        let n = 8;
        let mut xv = vec![0.0; n * 16];
        Rng::new(1).fill_normal(&mut xv, 1.0);
        let x = Tensor::from_vec(xv, &[n, 16])?;
        let y: Vec<usize> = (0..n).map(|i| i % 10).collect();
        let wts = mean_weights(n);
        let rule = Rule::Ssam(Ssam {
            interval: 2,
            ..Ssam::dynamic(7)
        });
        let base = BaseOptimizer::Sgd(Sgd {
            lr: 0.1,
            ..Sgd::default()
        });
        let mut opt = Optimizer::new(model.layout().clone(), rule, base)?;
        let (mut g, mut g2) = (vec![0.0; w.len()], vec![0.0; w.len()]);
        let mut marks = HostMarks::default();
        let mut updates = 0;
        for step in 0..6 {
            let oracle = |req: GradRequest, w: &[f32], out: &mut [f32]| -> Res<Eval> {
                match req {
                    GradRequest::Batch(pass) => Ok(model
                        .forward_backward(w, &x, (&y).into(), &wts, BnMode::for_pass(pass), out)?
                        .eval()),
                    other => Err(format!("no {other:?} for SSAM-D").into()),
                }
            };
            let t = timed_step(
                &mut opt,
                &mut marks,
                &mut w[..],
                (&mut g[..], &mut g2[..]),
                oracle,
            )?;
            let p = t.phases;
            assert!(!t.fisher, "step {step}: SSAM-D computes no Fisher");
            assert!(p.pass2 > 0.0, "step {step}: SSAM-D runs pass 2");
            let first = marks.ms(2, 3)?;
            assert!(
                (p.perturb + p.mask - first).abs() < MS_EPS,
                "step {step}: perturb {} + mask {} != first step {first}",
                p.perturb,
                p.mask
            );
            if t.mask_update {
                updates += 1;
                assert!(p.mask > 0.0, "step {step}: the drop/grow was not timed");
                assert!(
                    p.perturb < first,
                    "step {step}: the drop/grow stayed in perturb"
                );
            } else {
                assert_eq!(p.mask, 0.0, "step {step}: no mask update, no mask time");
            }
            let phases = p.pass1 + p.perturb + p.pass2 + p.update + p.mask;
            assert!(p.total + MS_EPS >= phases, "step {step}: phases overlap");
        }
        // Interval 2 over 6 steps.
        assert!(updates >= 2, "{updates} mask updates");
        Ok(())
    }

    /// The same accounting with CUDA events on the emulated device (skipped with one line
    /// where it cannot be built): SSAM-D's mask updates in the timed steps have a mask time.
    #[test]
    fn ssam_d_mask_phase_is_timed_on_the_emulated_device() -> Res<()> {
        let Some(dev) = samkit_testkit::or_skip(samkit_testkit::device_with_dnn()) else {
            return Ok(());
        };
        let a = Args {
            batch: 4,
            width: 4,
            // SSAM-D's default interval is 5: the update of step 5 is a timed step.
            steps: 6,
            warmup: 1,
            optimizers: vec!["ssam-d".into()],
            workspace_mb: 4,
            out: None,
        };
        let opts = CudaOptions {
            workspace_limit: a.workspace_mb << 20,
            ..CudaOptions::default()
        };
        let v = run_on(Cuda::with_options(&dev, opts)?, &a)?;
        let r = &v["optimizers"]["ssam-d"];
        let updates = r["mask_updates"].as_u64().unwrap_or(0);
        assert!(updates >= 1, "no SSAM-D mask update timed: {r}");
        let mask = r["mask_ms"].as_f64().unwrap_or(0.0);
        assert!(mask > 0.0, "SSAM-D's mask update timed as 0 ms: {r}");
        Ok(())
    }
}
