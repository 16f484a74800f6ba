//! What each known way of cheapening SAM's second pass costs on the CPU, side by side
//! (ALGORITHMS.md, "Cheaper second passes"): the CIFAR ResNet-18 (width 64, 10 classes), batch
//! 32 of 32×32 images, on `SAMKIT_BENCH_THREADS` threads (default 2). Criterion group
//! `second_pass`:
//! - `pass1`: a train-mode forward + backward on the batch (SAM's pass 1, the pass that keeps
//!   the activations SSAM-L starts from);
//! - `sam_pass2`: SAM's pass 2, a forward + backward at the perturbed weights (batch
//!   statistics, running statistics not updated);
//! - `ssam_l_exact` / `ssam_l_truncated`: SSAM-L's pass 2 with the default suffix mask
//!   (`s = 0.5`): the forward from the first perturbed unit `u` on pass 1's kept input, the
//!   backward through the whole network (`exact`) or stopping at `u` (`truncated`);
//! - `esam_pass2`: ESAM's pass 2 (`γ = 0.5`): a forward without gradient on the whole batch
//!   (SDS's per-sample losses), the choice of the `⌈γ·B⌉` samples of largest `ℓ'ᵢ − ℓᵢ`, and a
//!   forward + backward on those samples; in the summary also its two parts apart,
//!   `esam_sds_forward` (the forward without gradient and the choice) and `esam_subset_pass`
//!   (the forward + backward on `⌈γ·B⌉` samples), to show where its time goes;
//! - `ssam_f_fisher_128`: SSAM-F's Fisher `Σᵢ (∇ℓᵢ)²` over 128 samples (4 sub-batches of 32, BN
//!   in eval mode), as the trainer computes it every `K` steps.
//!
//! Every pass runs at the same perturbed weights: pass 1's weights plus a perturbation on the
//! suffix segments only (so that SSAM-L's reuse of pass 1's prefix is exact; the other passes'
//! cost does not depend on the weights' values).
//!
//! After the criterion group, one interleaved run (`ROUNDS` rounds, each variant once per round
//! in a fixed rotation; medians) prints one JSON line: each variant's time, its ratio to SAM's
//! pass 2 and to pass 1, and its physical floor measured in the same run: the convolutions and
//! the linear layer of the variant as the GEMMs the CPU backend runs (im2col: forward `W·col`,
//! weight gradient `dY·colᵀ`, input gradient `Wᵀ·dY`; Winograd convolutions: 16 products over
//! the whole batch's tiles per pass; the Fisher's weight gradients per sample), each shape timed with the
//! `gemm` crate on row-major operands and the same threads (in every round, best round), summed
//! (`gemm_floor_s`); and the same FLOPs at the best rate any of those shapes reached
//! (`peak_floor_s`, products of at least `PEAK_MIN_FLOP`).
//! The floor leaves out batch norm, ReLU, pooling, im2col/col2im, the Winograd transforms and
//! the loss, so
//! `over_floor` is how far each pass is from its matrix products alone.
//! `SAMKIT_BENCH_SUMMARY_ONLY=1` skips the criterion group. Under `cargo test --benches` (no
//! `--bench` argument) each variant runs once and the summary is skipped.
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use samkit_core::plan::suffix_segments;
use samkit_core::Ssam;
use samkit_nn::init::Rng;
use samkit_nn::model::{first_perturbed_unit, BackwardExtent};
use samkit_nn::{mean_weights, BnMode, Model, ResNet18, ResNetConfig, Tensor};

const BATCH: usize = 32;
/// SSAM-F's default Fisher sample count (ALGORITHMS.md).
const FISHER_SAMPLES: usize = 128;
/// ESAM's default `γ`: the share of the batch pass 2 runs on.
const ESAM_GAMMA: f64 = 0.5;
/// The perturbation's scale (SAM's default `ρ`); its direction is random.
const RHO: f32 = 0.05;
/// Rounds of the interleaved summary run.
const ROUNDS: usize = 3;
/// The smallest product whose rate counts for the peak: smaller ones (the linear layer's
/// per-sample products, tens of kFLOP) take well under a microsecond, where the clock's
/// resolution and a call's fixed cost decide the rate.
const PEAK_MIN_FLOP: f64 = 1e8;
/// Timed repetitions of each GEMM shape of the floor per round (after one warm-up call).
const GEMM_REPS: usize = 1;

struct Setup {
    model: ResNet18,
    /// Pass 1's weights.
    w: Vec<f32>,
    /// The perturbed weights of every pass 2 (the suffix segments moved).
    w2: Vec<f32>,
    x: Tensor,
    y: Vec<usize>,
    wts: Vec<f32>,
    g: Vec<f32>,
    /// Pass 1's per-sample losses (ESAM's `ℓᵢ`).
    l1: Vec<f32>,
    /// SSAM-L's first perturbed unit under the default suffix mask.
    start: usize,
    fisher: Vec<f32>,
}

fn setup() -> Setup {
    let model = ResNet18::cpu(ResNetConfig::new(10, 64)).expect("the standard ResNet-18");
    let w = model.init_params(0);
    let layout = model.layout().clone();
    let pick = suffix_segments(&layout, Ssam::structured().live_count(layout.len()));
    let start = first_perturbed_unit(model.units(), |s| pick[s])
        .expect("the suffix mask perturbs at least one unit");
    let mut e = vec![0.0; w.len()];
    Rng::new(2).fill_normal(&mut e, 1.0);
    let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
    let mut w2 = w.clone();
    for (seg, &on) in layout.segments().iter().zip(&pick) {
        if on {
            for i in seg.range() {
                w2[i] += RHO * e[i] / norm;
            }
        }
    }
    let mut xv = vec![0.0; BATCH * 3 * 32 * 32];
    Rng::new(1).fill_normal(&mut xv, 1.0);
    let n = w.len();
    Setup {
        model,
        w,
        w2,
        x: Tensor::from_vec(xv, &[BATCH, 3, 32, 32]).expect("an NCHW batch"),
        y: (0..BATCH).map(|i| (i * 7) % 10).collect(),
        wts: mean_weights(BATCH),
        g: vec![0.0; n],
        l1: Vec::new(),
        start,
        fisher: vec![0.0; n],
    }
}

impl Setup {
    /// SAM's pass 1; keeps the activations SSAM-L's passes start from.
    fn pass1(&mut self) {
        let l = self
            .model
            .forward_backward(
                &self.w,
                &self.x,
                (&self.y).into(),
                &self.wts,
                BnMode::Train,
                &mut self.g,
            )
            .expect("pass 1");
        self.l1 = l.per_sample;
    }

    fn sam_pass2(&mut self) {
        black_box(
            self.model
                .forward_backward(
                    &self.w2,
                    &self.x,
                    (&self.y).into(),
                    &self.wts,
                    BnMode::TrainNoUpdate,
                    &mut self.g,
                )
                .expect("SAM's pass 2"),
        );
    }

    /// SSAM-L's pass 2; needs pass 1 kept (a pass from the same unit may repeat).
    fn ssam_l(&mut self, extent: BackwardExtent) {
        black_box(
            self.model
                .forward_backward_from(
                    &self.w2,
                    self.start,
                    (&self.y).into(),
                    &self.wts,
                    extent,
                    &mut self.g,
                )
                .expect("SSAM-L's pass 2 after pass 1"),
        );
    }

    /// ESAM's pass 2: SDS's no-gradient losses, the `⌈γ·B⌉` samples of largest `ℓ'ᵢ − ℓᵢ`
    /// (ties to the lower index), a forward + backward on them.
    fn esam_pass2(&mut self) {
        let chosen = self.esam_sds();
        self.esam_subset(&chosen);
    }

    /// SDS: the forward without gradient on the whole batch and the choice of `B⁺`.
    fn esam_sds(&mut self) -> Vec<usize> {
        let l2 = self
            .model
            .forward_losses(&self.w2, &self.x, (&self.y).into(), BnMode::TrainNoUpdate)
            .expect("SDS's forward");
        let mut order: Vec<usize> = (0..BATCH).collect();
        let gain = |i: usize| l2.per_sample[i] - self.l1[i];
        order.sort_by(|&a, &b| gain(b).total_cmp(&gain(a)).then(a.cmp(&b)));
        order.truncate(esam_keep(BATCH));
        order
    }

    /// The forward + backward on `B⁺` (its cost does not depend on which samples).
    fn esam_subset(&mut self, chosen: &[usize]) {
        black_box(
            self.model
                .forward_backward_subset(
                    &self.w2,
                    &self.x,
                    (&self.y).into(),
                    chosen,
                    BnMode::TrainNoUpdate,
                    &mut self.g,
                )
                .expect("ESAM's pass 2 on B⁺"),
        );
    }

    fn fisher(&mut self) {
        self.fisher.fill(0.0);
        for _ in 0..FISHER_SAMPLES / BATCH {
            self.model
                .per_sample_grad_sq(&self.w, &self.x, (&self.y).into(), &mut self.fisher)
                .expect("per-sample gradients");
        }
    }
}

/// `⌈γ·B⌉`.
fn esam_keep(b: usize) -> usize {
    ((ESAM_GAMMA * b as f64).ceil() as usize).clamp(1, b)
}

fn bench(c: &mut Criterion, s: &mut Setup) {
    let mut g = c.benchmark_group("second_pass");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    g.bench_function("pass1", |b| b.iter(|| s.pass1()));
    g.bench_function("sam_pass2", |b| b.iter(|| s.sam_pass2()));
    s.pass1();
    g.bench_function("ssam_l_exact", |b| {
        b.iter(|| s.ssam_l(BackwardExtent::Full))
    });
    g.bench_function("ssam_l_truncated", |b| {
        b.iter(|| s.ssam_l(BackwardExtent::StopAtStart))
    });
    g.bench_function("esam_pass2", |b| b.iter(|| s.esam_pass2()));
    g.bench_function("ssam_f_fisher_128", |b| b.iter(|| s.fisher()));
    g.finish();
}

/// One matrix product `[m×k]·[k×n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Gemm {
    m: usize,
    n: usize,
    k: usize,
}

impl Gemm {
    fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }
}

/// A layer with weights, as the GEMMs of its passes, each with how many times it runs.
struct Layer {
    unit: usize,
    /// Forward `W·col` (`[cout × cin·k²]·[cin·k² × N·oh·ow]`; the linear layer:
    /// `x·Wᵀ`); for a Winograd convolution 16 products `U[ξ]·V[ξ]` over the tiles.
    fwd: (Gemm, usize),
    /// Weight gradient `dY·colᵀ` (Winograd: 16 products over the tiles).
    dw: (Gemm, usize),
    /// Input gradient `Wᵀ·dY` (none for the stem: its input is the images).
    dx: Option<(Gemm, usize)>,
    /// One sample's weight gradient (the Fisher's per-sample products, im2col always).
    dw_one: Gemm,
    /// Whether the input gradient feeds the unit's input (conv1 and the shortcut do; conv2's
    /// feeds conv1): a backward stopping at this unit skips it.
    at_unit_input: bool,
}

/// Tile positions of Winograd's F(2×2, 3×3).
const WINOGRAD_XI: usize = 16;

/// Whether the CPU backend runs this convolution through Winograd (`cpu/winograd.rs`:
/// 3×3, stride 1, at least 16 channels each way, even output size).
fn takes_winograd(k: usize, stride: usize, cin: usize, cout: usize, o: usize) -> bool {
    k == 3 && stride == 1 && cin >= 16 && cout >= 16 && o >= 2 && o % 2 == 0
}

/// The convolutions and the linear layer of the CIFAR ResNet-18, from its layout: 4-D weights
/// `[cout, cin, k, k]` (stride 2 for a block's `conv1` and its 1×1 shortcut where the block has
/// one, padding `k / 2`), and `linear.weight` `[out, in]`.
fn layers(model: &ResNet18, n: usize) -> Vec<Layer> {
    let layout = model.layout();
    let units = model.units();
    let segs = layout.segments();
    let mut out = Vec::new();
    let mut hw = 32usize;
    for (u, unit) in units.iter().enumerate() {
        let names: Vec<&str> = unit.segments.clone().map(|i| &*segs[i].name).collect();
        let downsample = names.iter().any(|s| s.contains("shortcut.0.weight"));
        let hw_in = hw;
        for i in unit.segments.clone() {
            let s = &segs[i];
            match *s.shape.as_slice() {
                [cout, cin, kh, kw] => {
                    let first = s.name.ends_with("conv1.weight") || s.name.contains("shortcut");
                    let stride = if downsample && first { 2 } else { 1 };
                    let src = if s.name.ends_with("conv2.weight") {
                        hw_in / if downsample { 2 } else { 1 }
                    } else {
                        hw_in
                    };
                    let o = src / stride;
                    let (kk, cols) = (cin * kh * kw, o * o);
                    let dw_one = Gemm {
                        m: cout,
                        n: kk,
                        k: cols,
                    };
                    let layer = if takes_winograd(kh, stride, cin, cout, o) {
                        let tiles = n * cols / 4;
                        Layer {
                            unit: u,
                            fwd: (
                                Gemm {
                                    m: cout,
                                    n: tiles,
                                    k: cin,
                                },
                                WINOGRAD_XI,
                            ),
                            dw: (
                                Gemm {
                                    m: cout,
                                    n: cin,
                                    k: tiles,
                                },
                                WINOGRAD_XI,
                            ),
                            dx: (u > 0).then_some((
                                Gemm {
                                    m: cin,
                                    n: tiles,
                                    k: cout,
                                },
                                WINOGRAD_XI,
                            )),
                            dw_one,
                            at_unit_input: first,
                        }
                    } else {
                        Layer {
                            unit: u,
                            fwd: (
                                Gemm {
                                    m: cout,
                                    n: n * cols,
                                    k: kk,
                                },
                                1,
                            ),
                            dw: (
                                Gemm {
                                    m: cout,
                                    n: kk,
                                    k: n * cols,
                                },
                                1,
                            ),
                            dx: (u > 0).then_some((
                                Gemm {
                                    m: kk,
                                    n: n * cols,
                                    k: cout,
                                },
                                1,
                            )),
                            dw_one,
                            at_unit_input: first,
                        }
                    };
                    out.push(layer);
                    if s.name.ends_with("conv2.weight") || u == 0 {
                        hw = o;
                    }
                }
                [o, i] => out.push(Layer {
                    unit: u,
                    fwd: (Gemm { m: n, n: o, k: i }, 1),
                    dw: (Gemm { m: o, n: i, k: n }, 1),
                    dx: Some((Gemm { m: n, n: i, k: o }, 1)),
                    dw_one: Gemm { m: o, n: i, k: 1 },
                    at_unit_input: true,
                }),
                _ => {}
            }
        }
    }
    out
}

/// The GEMMs of each variant, by name, and how many times each runs.
fn variants(model: &ResNet18, start: usize) -> Vec<(&'static str, Vec<(Gemm, usize)>)> {
    let full = layers(model, BATCH);
    let sub = layers(model, esam_keep(BATCH));
    // Forward of units `from..`, backward of units `stop..` (no input gradient at `stop`).
    let pass = |ls: &[Layer], from: usize, stop: usize| -> Vec<(Gemm, usize)> {
        let mut v = Vec::new();
        for l in ls.iter().filter(|l| l.unit >= from) {
            v.push(l.fwd);
        }
        for l in ls.iter().filter(|l| l.unit >= stop) {
            v.push(l.dw);
            let skip = l.unit == stop && stop > 0 && l.at_unit_input;
            if let (Some(dx), false) = (l.dx, skip) {
                v.push(dx);
            }
        }
        v
    };
    let nograd: Vec<(Gemm, usize)> = full.iter().map(|l| l.fwd).collect();
    let subset = pass(&sub, 0, 0);
    let mut esam = nograd.clone();
    esam.extend(subset.iter().copied());
    let reps = FISHER_SAMPLES / BATCH;
    let mut fisher = Vec::new();
    for l in &full {
        fisher.push((l.fwd.0, l.fwd.1 * reps));
        if let Some((dx, times)) = l.dx {
            fisher.push((dx, times * reps));
        }
        fisher.push((l.dw_one, reps * BATCH));
    }
    vec![
        ("pass1", pass(&full, 0, 0)),
        ("sam_pass2", pass(&full, 0, 0)),
        ("ssam_l_exact", pass(&full, start, 0)),
        ("ssam_l_truncated", pass(&full, start, start)),
        ("esam_pass2", esam),
        ("esam_sds_forward", nograd),
        ("esam_subset_pass", subset),
        ("ssam_f_fisher_128", fisher),
    ]
}

/// Minimum time of `GEMM_REPS` row-major products of shape `g` on `threads` threads (after
/// one untimed call).
fn time_gemm(g: Gemm, threads: usize) -> f64 {
    let mut rng = Rng::new(3);
    let mut a = vec![0.0f32; g.m * g.k];
    let mut b = vec![0.0f32; g.k * g.n];
    rng.fill_normal(&mut a, 1.0);
    rng.fill_normal(&mut b, 1.0);
    let mut c = vec![0.0f32; g.m * g.n];
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let mut run = || {
        // SAFETY: `a` is m×k, `b` k×n and `c` m×n, row-major and contiguous (column stride 1,
        // row stride the column count), and `c` does not alias `a` or `b`.
        unsafe {
            gemm::gemm(
                g.m,
                g.n,
                g.k,
                c.as_mut_ptr(),
                1,
                g.n as isize,
                false,
                a.as_ptr(),
                1,
                g.k as isize,
                b.as_ptr(),
                1,
                g.n as isize,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                par,
            )
        }
    };
    run();
    let mut best = f64::INFINITY;
    for _ in 0..GEMM_REPS {
        let t = Instant::now();
        run();
        best = best.min(t.elapsed().as_secs_f64());
    }
    black_box(&c);
    best
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The interleaved run: each variant once per round, then the GEMM floor; one JSON line.
fn summary(s: &mut Setup, threads: usize) {
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let names = [
        "pass1",
        "ssam_l_exact",
        "ssam_l_truncated",
        "sam_pass2",
        "esam_pass2",
        "esam_sds_forward",
        "esam_subset_pass",
        "ssam_f_fisher_128",
    ];
    let mut times: HashMap<&str, Vec<f64>> = HashMap::new();
    let vs = variants(&s.model, s.start);
    let mut shapes: HashMap<Gemm, f64> = HashMap::new();
    for (_, list) in &vs {
        for (g, _) in list {
            shapes.insert(*g, f64::INFINITY);
        }
    }
    let first_samples: Vec<usize> = (0..esam_keep(BATCH)).collect();
    // Warm-up: every workspace allocated once.
    s.pass1();
    s.esam_pass2();
    for _ in 0..ROUNDS {
        // pass1 first: the SSAM-L passes continue it.
        for name in names {
            let t = Instant::now();
            match name {
                "pass1" => s.pass1(),
                "ssam_l_exact" => s.ssam_l(BackwardExtent::Full),
                "ssam_l_truncated" => s.ssam_l(BackwardExtent::StopAtStart),
                "sam_pass2" => s.sam_pass2(),
                "esam_pass2" => s.esam_pass2(),
                "esam_sds_forward" => {
                    black_box(s.esam_sds());
                }
                "esam_subset_pass" => s.esam_subset(&first_samples),
                _ => s.fisher(),
            }
            times
                .entry(name)
                .or_default()
                .push(t.elapsed().as_secs_f64());
        }
        // The floor's products in the same rounds, so that other load on the machine weighs on
        // both alike; each shape's best round counts.
        for (g, best) in shapes.iter_mut() {
            *best = best.min(time_gemm(*g, threads));
        }
    }
    // The best rate of any shape: `flops / peak` bounds the products from below wherever
    // a shape runs slower than the best one (the per-shape sum is the same products at the
    // rates measured for them).
    let peak = shapes
        .iter()
        .filter(|(g, _)| g.flops() >= PEAK_MIN_FLOP)
        .map(|(g, t)| g.flops() / t)
        .fold(0.0f64, f64::max);
    let med: HashMap<&str, f64> = times.into_iter().map(|(k, v)| (k, median(v))).collect();
    let floor =
        |list: &[(Gemm, usize)]| -> f64 { list.iter().map(|(g, r)| shapes[g] * *r as f64).sum() };
    let (sam2, p1) = (med["sam_pass2"], med["pass1"]);
    let sam_floor = vs
        .iter()
        .find(|(n, _)| *n == "sam_pass2")
        .map_or(f64::NAN, |(_, l)| floor(l));
    let mut rows = serde_json::Map::new();
    for (name, list) in &vs {
        let f = floor(list);
        let flops: f64 = list.iter().map(|(g, r)| g.flops() * *r as f64).sum();
        let t = med[name];
        rows.insert(
            name.to_string(),
            serde_json::json!({
                "median_s": t,
                "over_sam_pass2": t / sam2,
                "over_pass1": t / p1,
                "gemm_gflop": flops / 1e9,
                "gemm_floor_s": f,
                "over_floor": t / f,
                "peak_floor_s": flops / peak,
                "over_peak_floor": t * peak / flops,
                "floor_over_sam_pass2_floor": f / sam_floor,
            }),
        );
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let out = serde_json::json!({
        "threads": threads,
        "batch": BATCH,
        "rounds": ROUNDS,
        "ssam_l_start_unit": s.model.units()[s.start].name,
        "esam_subset": esam_keep(BATCH),
        "loadavg_before": load_before.trim(),
        "loadavg_after": load_after.trim(),
        "gemm_peak_gflops": peak / 1e9,
        "gemm_min_gflops": shapes.iter().map(|(g, t)| g.flops() / t).fold(f64::INFINITY, f64::min) / 1e9,
        "variants": rows,
    });
    println!("second_pass summary: {out}");
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
    let mut s = setup();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not (criterion then runs
    // each benchmark once as a test), and the summary's minutes are not a test's.
    let benching = std::env::args().any(|a| a == "--bench");
    if std::env::var("SAMKIT_BENCH_SUMMARY_ONLY").is_err() || !benching {
        let mut c = Criterion::default().configure_from_args();
        bench(&mut c, &mut s);
        c.final_summary();
    }
    if benching {
        summary(&mut s, threads);
    }
}
