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
//! (`tools/anchors/torch_cpu_resnet.py`, same model, batch and threads) right before our own
//! medians and prints the ratios; set `SAMKIT_TORCH_PYTHON` to the interpreter (default
//! `/work/.venv-torch/bin/python` when it exists; `SAMKIT_TORCH_PYTHON=none` skips it).
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

fn median(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[reps / 2]
}

/// PyTorch and samkit-nn back to back, in this process's run.
fn side_by_side(threads: usize) {
    let python = std::env::var("SAMKIT_TORCH_PYTHON")
        .unwrap_or_else(|_| "/work/.venv-torch/bin/python".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/anchors/torch_cpu_resnet.py");
    if python == "none" || !Path::new(&python).exists() {
        eprintln!("side-by-side: no PyTorch interpreter (SAMKIT_TORCH_PYTHON), skipped");
        return;
    }
    let reps = 5;
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args([
            "--threads",
            &threads.to_string(),
            "--reps",
            &reps.to_string(),
            "--fisher",
            "128",
        ])
        .output();
    let torch: serde_json::Value = match out {
        Ok(o) if o.status.success() => match serde_json::from_slice(&o.stdout) {
            Ok(v) => v,
            Err(e) => return eprintln!("side-by-side: bad anchor output ({e})"),
        },
        Ok(o) => {
            return eprintln!(
                "side-by-side: anchor failed: {}",
                String::from_utf8_lossy(&o.stderr)
            )
        }
        Err(e) => return eprintln!("side-by-side: cannot run {python}: {e}"),
    };
    let mut s = setup(BATCH);
    let mut opt = Optimizer::new(s.model.layout().clone(), Rule::Base, sgd()).unwrap();
    let ours_sgd = median(|| step(&mut s, &mut opt), reps);
    let ours_fwd = median(
        || drop(s.model.forward(&s.w, &s.x, BnMode::Eval).unwrap()),
        reps,
    );
    let mut opt =
        Optimizer::new(s.model.layout().clone(), Rule::Sam(Sam::default()), sgd()).unwrap();
    let ours_sam = median(|| step(&mut s, &mut opt), reps);
    let mut f = vec![0.0; s.w.len()];
    let ours_fisher = median(|| fisher(&mut s, &mut f), 3);
    let t = |k: &str| torch[k].as_f64().unwrap_or(f64::NAN);
    let summary = serde_json::json!({
        "threads": threads,
        "batch": BATCH,
        "torch": torch,
        "samkit_nn": {
            "sgd_train_step_s": ours_sgd,
            "sam_train_step_s": ours_sam,
            "forward_s": ours_fwd,
            "fisher_128_s": ours_fisher,
        },
        "ratio_sgd_step_ours_over_torch": ours_sgd / t("sgd_train_step_s"),
        "ratio_forward_ours_over_torch": ours_fwd / t("forward_s"),
        "ratio_fisher_ours_over_torch": ours_fisher / t("fisher_s"),
        "fisher_128_over_sgd_step": ours_fisher / ours_sgd,
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
