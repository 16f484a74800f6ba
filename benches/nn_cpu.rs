//! CPU cost of training the CIFAR ResNet-18 (width 64, 10 classes, 11,173,962 parameters) with
//! samkit-nn, batch 32 of 32×32 images, on `SAMKIT_BENCH_THREADS` threads (default 2):
//! - `sgd_step`: forward + backward + SGD update (momentum 0.9, weight decay 5e-4) through
//!   `samkit::Optimizer::step`;
//! - `sam_step`: the same with SAM (two forward/backward passes);
//! - `forward_eval`: inference logits;
//! - `fisher_128`: SSAM-F's `Σ_i (∇ℓ_i)²` over 128 samples (4 sub-batches of 32), BN in eval
//!   mode.
//!
//! After the criterion groups, a side-by-side run measures PyTorch on the same machine
//! (`tools/anchors/torch_cpu_resnet.py`: same model, batch, optimizer and threads) and
//! samkit-nn alternately, two rounds, and prints one JSON line with the times and ratios
//! (ratios of minimum times, the least disturbed by other work on a shared machine, and of
//! medians). `SAMKIT_TORCH_PYTHON` names the interpreter (default
//! `/work/.venv-torch/bin/python` when it exists; `none` skips the side-by-side);
//! `SAMKIT_BENCH_SIDE_BY_SIDE_ONLY=1` skips the criterion groups.
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::Criterion;
use samkit::nn::init::Rng;
use samkit::nn::{mean_weights, BnMode, Model, ResNet18, ResNetConfig, Tensor};
use samkit::{BaseOptimizer, GradRequest, Optimizer, Rule, Sam, Sgd};

const BATCH: usize = 32;

struct Setup {
    model: ResNet18,
    w: Vec<f32>,
    x: Tensor,
    y: Vec<usize>,
    wts: Vec<f32>,
}

fn setup(n: usize) -> Setup {
    let model = ResNet18::cpu(ResNetConfig::new(10, 64)).unwrap();
    let w = model.init_params(0);
    let mut xv = vec![0.0; n * 3 * 32 * 32];
    Rng::new(1).fill_normal(&mut xv, 1.0);
    Setup {
        model,
        w,
        x: Tensor::from_vec(xv, &[n, 3, 32, 32]).unwrap(),
        y: (0..n).map(|i| (i * 7) % 10).collect(),
        wts: mean_weights(n),
    }
}

fn sgd() -> BaseOptimizer {
    BaseOptimizer::Sgd(Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Sgd::default()
    })
}

/// One closure-form optimizer step.
fn step(s: &mut Setup, opt: &mut Optimizer) {
    let Setup {
        model,
        w,
        x,
        y,
        wts,
    } = s;
    opt.step(&mut w[..], |req, w, g| match req {
        GradRequest::Batch(pass) => Ok(model
            .forward_backward(w, x, (&*y).into(), wts, BnMode::for_pass(pass), g)?
            .eval()),
        other => unreachable!("{other:?}"),
    })
    .unwrap();
}

fn fisher(s: &mut Setup, out: &mut [f32]) {
    out.fill(0.0);
    for _ in 0..128 / BATCH {
        s.model
            .per_sample_grad_sq(&s.w, &s.x, (&s.y).into(), out)
            .unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("resnet18_cpu_b32");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let mut s = setup(BATCH);
    let mut opt = Optimizer::new(s.model.layout().clone(), Rule::Base, sgd()).unwrap();
    g.bench_function("sgd_step", |b| b.iter(|| step(&mut s, &mut opt)));
    let mut opt =
        Optimizer::new(s.model.layout().clone(), Rule::Sam(Sam::default()), sgd()).unwrap();
    g.bench_function("sam_step", |b| b.iter(|| step(&mut s, &mut opt)));
    g.bench_function("forward_eval", |b| {
        b.iter(|| black_box(s.model.forward(&s.w, &s.x, BnMode::Eval).unwrap()))
    });
    let mut f = vec![0.0; s.w.len()];
    g.bench_function("fisher_128", |b| b.iter(|| fisher(&mut s, &mut f)));
    g.finish();
}

/// Median and minimum of `reps` timed calls after one warm-up call.
fn timed(mut f: impl FnMut(), reps: usize) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[reps / 2], t[0])
}

fn torch_anchor(
    python: &str,
    threads: usize,
    reps: usize,
    fisher: bool,
) -> Option<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/anchors/torch_cpu_resnet.py");
    let fisher = if fisher { "128" } else { "0" };
    let out = std::process::Command::new(python)
        .arg(&script)
        .args([
            "--threads",
            &threads.to_string(),
            "--reps",
            &reps.to_string(),
            "--fisher",
            fisher,
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout)
            .map_err(|e| eprintln!("side-by-side: bad anchor output ({e})"))
            .ok(),
        Ok(o) => {
            eprintln!(
                "side-by-side: anchor failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("side-by-side: cannot run {python}: {e}");
            None
        }
    }
}

/// PyTorch and samkit-nn alternately, two rounds, in this process's run; ratios of the
/// minimum times (the least disturbed by other work on a shared machine) and of the medians.
fn side_by_side(threads: usize) {
    let python = std::env::var("SAMKIT_TORCH_PYTHON")
        .unwrap_or_else(|_| "/work/.venv-torch/bin/python".into());
    if python == "none" || !Path::new(&python).exists() {
        eprintln!("side-by-side: no PyTorch interpreter (SAMKIT_TORCH_PYTHON), skipped");
        return;
    }
    let reps = 3;
    let mut s = setup(BATCH);
    let mut sgd_opt = Optimizer::new(s.model.layout().clone(), Rule::Base, sgd()).unwrap();
    let mut sam_opt =
        Optimizer::new(s.model.layout().clone(), Rule::Sam(Sam::default()), sgd()).unwrap();
    let mut f = vec![0.0; s.w.len()];
    let (mut torch_step, mut torch_fwd, mut ours_step, mut ours_fwd) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut torch_fisher = f64::NAN;
    let mut torch_first = serde_json::Value::Null;
    for round in 0..2 {
        let Some(t) = torch_anchor(&python, threads, reps, round == 0) else {
            return;
        };
        let g = |k: &str| t[k].as_f64().unwrap_or(f64::NAN);
        torch_step.push((g("sgd_train_step_s"), g("sgd_train_step_min_s")));
        torch_fwd.push(g("forward_s"));
        if round == 0 {
            torch_fisher = g("fisher_s");
            torch_first = t.clone();
        }
        ours_step.push(timed(|| step(&mut s, &mut sgd_opt), reps));
        ours_fwd.push(
            timed(
                || drop(s.model.forward(&s.w, &s.x, BnMode::Eval).unwrap()),
                reps,
            )
            .0,
        );
    }
    let ours_sam = timed(|| step(&mut s, &mut sam_opt), reps);
    let ours_fisher = timed(|| fisher(&mut s, &mut f), 1).0;
    let min = |v: &[(f64, f64)]| v.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
    let med = |v: &[(f64, f64)]| v.iter().map(|x| x.0).sum::<f64>() / v.len() as f64;
    let fmin = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let summary = serde_json::json!({
        "threads": threads,
        "batch": BATCH,
        "loadavg_after": load.trim(),
        "torch_first_round": torch_first,
        "torch": { "sgd_step_min_s": min(&torch_step), "sgd_step_median_s": med(&torch_step), "forward_min_s": fmin(&torch_fwd), "fisher_128_s": torch_fisher },
        "samkit_nn": {
            "sgd_step_min_s": min(&ours_step),
            "sgd_step_median_s": med(&ours_step),
            "sam_step_median_s": ours_sam.0,
            "forward_min_s": fmin(&ours_fwd),
            "fisher_128_s": ours_fisher,
        },
        "ratio_sgd_step_min_ours_over_torch": min(&ours_step) / min(&torch_step),
        "ratio_sgd_step_median_ours_over_torch": med(&ours_step) / med(&torch_step),
        "ratio_forward_min_ours_over_torch": fmin(&ours_fwd) / fmin(&torch_fwd),
        "ratio_fisher_ours_over_torch": ours_fisher / torch_fisher,
        "ours_fisher_128_over_sgd_step_median": ours_fisher / med(&ours_step),
        "ours_sam_over_sgd_step_median": ours_sam.0 / med(&ours_step),
    });
    println!("side-by-side: {summary}");
}

fn main() {
    let threads: usize = std::env::var("SAMKIT_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .expect("the global rayon pool is configured once");
    if std::env::var("SAMKIT_BENCH_SIDE_BY_SIDE_ONLY").is_err() {
        let mut c = Criterion::default().configure_from_args();
        bench(&mut c);
        c.final_summary();
    }
    side_by_side(threads);
}
