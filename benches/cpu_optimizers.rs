//! Optimizer-side cost of one step of every rule on ResNet-18's 11,173,962-parameter layout,
//! against the fastest copy this machine does, measured in the same run.
//!
//! One run prints three tables (after the criterion groups, which `SAMKIT_BENCH_QUICK=1` skips):
//! 1. the copy floor: every [`CopyVariant`] (plain `copy_from_slice` or AVX2 streaming stores +
//!    `sfence`; on one thread, one part per thread, or rayon parts of 64 KiB as the passes split
//!    the layout) at several sizes, from in-cache to well beyond the last-level cache, the rule's
//!    arena included (arena-sized buffers copied cold), the fastest of the repetitions. The
//!    floor is the fastest copy at the arena's size, in that table or re-timed in the rounds.
//! 2. every rule + SGD-momentum: the bytes its passes must move per parameter (reads and writes
//!    of 4-byte values, listed per pass below), the median time of its first and second step,
//!    GB/s, and the ratio to the floor (`time / (bytes / floor GB/s)`; also to the median copy).
//!    Rules and the floor's copy run in alternating rounds, so that other load on the machine
//!    hits both alike.
//! 3. SAM's optimizer side next to `pytorch_optimizer.SAM` (`tools/anchors/torch_cpu_sam_opt.py`),
//!    the two alternated, when `SAMKIT_TORCH_PYTHON` names an interpreter with torch and
//!    pytorch_optimizer (default `/work/.venv-torch/bin/python` when it exists; `none` skips).
//!
//! `SAMKIT_BENCH_THREADS` sets the rayon threads (default 2), for the rules and the copies alike.
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use samkit::core::chunks::Chunks;
use samkit::core::sparse;
use samkit::core::stream::CopyVariant;
use samkit::{
    Asam, BaseOptimizer, FirstOutcome, FriendlySam, Gsam, ImbSam, Layout, Optimizer, Rule, Sam,
    Sgd, Ssam,
};

fn sgd_momentum() -> BaseOptimizer {
    BaseOptimizer::Sgd(Sgd {
        lr: 1e-4,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Sgd::default()
    })
}

fn fill(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Bytes per parameter each rule's passes must move in one step, and which: `r` reads, `w`
/// writes, 4 bytes each (`w_old`: the saved weights, `m`: the momentum, `aux`: a gradient kept
/// for pass 2, `m'`: FriendlySAM's next EMA).
fn bytes_per_param(rule: &Rule) -> (u64, &'static str) {
    match rule {
        Rule::Base => (24, "check r g | update r w g m, w w m"),
        Rule::Sam(c) if c.adaptive => (
            48,
            "norm r g w | perturb r w g, w w_old w | check r g2 | update r w_old g2 m, w w m",
        ),
        Rule::Sam(_) => (
            44,
            "norm r g | perturb r w g, w w_old w | check r g2 | update r w_old g2 m, w w m",
        ),
        Rule::Ssam(_) => (
            44,
            "as SAM (+ the mask, 1 bit per parameter, read twice)",
        ),
        Rule::Asam(_) => (48, "as adaptive SAM (T = |w| + eta)"),
        Rule::FriendlySam(_) => (
            56,
            "norm r g m, w m' | perturb r w g m, w w_old w | check r g2 | update 20",
        ),
        Rule::ImbSam(_) => (
            60,
            "norm r g_t g_h | perturb r w g_t g_h, w w_old w aux | check r g2 | update r w_old g2 aux m, w w m",
        ),
        Rule::Gsam(_) => (
            56,
            "norm r g | perturb r w g, w w_old w aux | dots r aux g2 | update r w_old g2 aux m, w w m",
        ),
        _ => unreachable!("not in this table"),
    }
}

fn rules() -> Vec<Rule> {
    vec![
        Rule::Base,
        Rule::Sam(Sam::default()),
        Rule::Sam(Sam {
            rho: 0.5,
            adaptive: true,
            ..Sam::default()
        }),
        Rule::Asam(Asam::default()),
        Rule::FriendlySam(FriendlySam::default()),
        // The mask is computed once (below); mask updates are benchmarked on their own.
        Rule::Ssam(Ssam {
            interval: u64::MAX,
            ..Ssam::fisher()
        }),
        Rule::ImbSam(ImbSam::default()),
        Rule::Gsam(Gsam::default()),
    ]
}

fn optimizer(layout: &Layout, rule: Rule) -> Optimizer {
    let n = layout.len();
    let mut opt = Optimizer::new(layout.clone(), rule, sgd_momentum()).expect("valid rule");
    if opt.needs_fisher().is_some() {
        opt.set_fisher(&fill(n, 11))
            .expect("fisher of the layout's length");
    }
    opt
}

/// One step; the times of its first and second halves.
fn step(opt: &mut Optimizer, w: &mut [f32], g: &[f32], g2: &[f32]) -> (f64, f64) {
    let t = Instant::now();
    let out = if opt.needs_head_tail() {
        opt.first_step_split(w, g, Some(g2))
    } else {
        opt.first_step(w, g)
    }
    .expect("first step");
    let first = t.elapsed().as_secs_f64();
    let t = Instant::now();
    if out == FirstOutcome::Perturbed {
        opt.second_step(w, g2).expect("second step");
    }
    (first, t.elapsed().as_secs_f64())
}

fn bench_optimizers(c: &mut Criterion) {
    let layout = Layout::resnet18(10, 64).expect("resnet18 layout");
    let n = layout.len();
    let g = fill(n, 7);
    let g2 = fill(n, 9);
    let mut group = c.benchmark_group("optimizer_step_resnet18");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    for rule in rules() {
        let (bpp, _) = bytes_per_param(&rule);
        let name = rule.name();
        let mut opt = optimizer(&layout, rule);
        let mut w = fill(n, 5);
        group.throughput(Throughput::Bytes(bpp * n as u64));
        group.bench_function(format!("{name}+sgd-momentum ({bpp} B/param)"), |b| {
            b.iter(|| step(&mut opt, &mut w, &g, &g2))
        });
    }
    group.finish();
}

/// SSAM-D's drop/grow (two selections over the live and dead sets) on the same layout.
fn bench_mask_updates(c: &mut Criterion) {
    let layout = Layout::resnet18(10, 64).expect("resnet18 layout");
    let n = layout.len();
    let chunks = Chunks::new(&layout);
    let g = fill(n, 13);
    let live = Ssam::dynamic(0).live_count(n);
    let mask = sparse::random_mask(n, live, 1);
    let units = chunks.split(layout.split(&g).expect("layout split"));
    let mut group = c.benchmark_group("mask_update_resnet18");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes(4 * n as u64));
    group.bench_function("ssam-d drop/grow 20%", |b| {
        b.iter(|| black_box(sparse::drop_grow(&chunks, &units, &mask, n, 0.2, 1, 1)))
    });
    group.finish();
}

/// Bytes of a buffer from which a copy is timed cold: twice the 32 MiB last-level cache of this
/// machine kind would hold it entirely, so a quarter of that is already too large to be a
/// cache-resident size.
const COLD_FROM_BYTES: usize = 16 << 20;

/// Bytes read between cold repetitions: three times a 32 MiB last-level cache, so that neither
/// the source nor the destination of the previous copy is left in any cache.
const EVICT_BYTES: usize = 96 << 20;

/// Read + write bandwidth of `v` copying `len` floats, `(median, best)` over `reps` timings. In-cache
/// sizes repeat the copy back to back (each timing is enough copies for about a millisecond, so
/// that it is not timer noise); sizes from [`COLD_FROM_BYTES`] on are timed cold, after reading
/// `evict` through, as the rules' passes find their arena-sized buffers: a copy that finds part of
/// its source still in the L3 (back to back, a 44.7 MB copy here measured 87 GB/s against 47 GB/s
/// cold) would be a floor of a workload no rule has.
fn copy_gbs(
    v: CopyVariant,
    src: &[f32],
    dst: &mut [f32],
    reps: usize,
    evict: &[f32],
) -> (f64, f64) {
    let len = src.len();
    let cold = 4 * len >= COLD_FROM_BYTES;
    let inner = if cold {
        1
    } else {
        ((1usize << 21) / len).max(1)
    };
    v.run(dst, src);
    let ts: Vec<f64> = (0..reps)
        .map(|_| {
            if cold {
                black_box(evict.iter().fold(0f32, |a, &x| a + x));
            }
            let t = Instant::now();
            for _ in 0..inner {
                v.run(dst, black_box(src));
            }
            black_box(&mut *dst);
            t.elapsed().as_secs_f64() / inner as f64
        })
        .collect();
    let best = ts.iter().copied().fold(f64::INFINITY, f64::min);
    let gbs = |t: f64| 8.0 * len as f64 / t / 1e9;
    (gbs(median(ts)), gbs(best))
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Table 1: every copy variant at every size, the fastest of `reps` timings; returns the variant
/// that was fastest at the arena's size with its best and median bandwidth.
fn copy_table(n: usize, reps: usize) -> (CopyVariant, f64, f64) {
    // 256 KiB (L2), 8 MiB (last-level cache), the arena, 4× the arena (far beyond the cache).
    let sizes = [1usize << 16, 1 << 21, n, 4 * n];
    let variants = CopyVariant::all();
    let evict = fill(EVICT_BYTES / 4, 2);
    let mut best = (variants[0], 0.0, 0.0);
    println!(
        "\ncopy bandwidth, GB/s (read + write, the fastest of {reps}; buffers of {} MiB and more \
         timed cold, after reading {} MiB through):",
        COLD_FROM_BYTES >> 20,
        EVICT_BYTES >> 20
    );
    print!("{:<42}", "variant \\ bytes per buffer");
    for s in sizes {
        print!(" {:>12}", 4 * s);
    }
    println!();
    let mut per_size = vec![(variants[0], 0f64); sizes.len()];
    for v in &variants {
        print!("{:<42}", v.name());
        for (i, &s) in sizes.iter().enumerate() {
            let src = fill(s, 1);
            let mut dst = vec![0f32; s];
            let (med, gbs) = copy_gbs(*v, &src, &mut dst, reps, &evict);
            print!(" {gbs:>12.1}");
            if gbs > per_size[i].1 {
                per_size[i] = (*v, gbs);
            }
            if s == n && gbs > best.1 {
                best = (*v, gbs, med);
            }
        }
        println!();
    }
    print!("{:<42}", "best");
    for (_, gbs) in &per_size {
        print!(" {gbs:>12.1}");
    }
    println!();
    best
}

/// Tables 2 and 3.
fn table() {
    let quick = quick();
    let (copy_reps, rounds) = if quick { (7, 7) } else { (15, 15) };
    let threads = rayon::current_num_threads();
    let layout = Layout::resnet18(10, 64).expect("resnet18 layout");
    let n = layout.len();
    println!(
        "\n== optimizer side vs the copy floor: {n} parameters, {threads} threads, {} ==",
        if quick { "quick" } else { "full" }
    );
    println!("load average before: {}", load());
    let (floor_v, floor_first, floor_first_med) = copy_table(n, copy_reps);
    let g = fill(n, 7);
    let g2 = fill(n, 9);
    let mut setups: Vec<(Rule, Optimizer, Vec<f32>)> = rules()
        .into_iter()
        .map(|r| (r.clone(), optimizer(&layout, r), fill(n, 5)))
        .collect();
    for (_, opt, w) in setups.iter_mut() {
        step(opt, w, &g, &g2); // first-touch the state buffers
    }
    // Alternating rounds: each round times the floor's copy once and every rule once.
    let src = fill(n, 1);
    let mut dst = vec![0f32; n];
    let mut floor_ts = Vec::new();
    let mut times: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); setups.len()];
    for _ in 0..rounds {
        let t = Instant::now();
        floor_v.run(&mut dst, black_box(&src));
        floor_ts.push(t.elapsed().as_secs_f64());
        for (i, (_, opt, w)) in setups.iter_mut().enumerate() {
            let (a, b) = step(opt, w, &g, &g2);
            times[i].0.push(a);
            times[i].1.push(b);
        }
    }
    let gbs = |t: f64| 8.0 * n as f64 / t / 1e9;
    let round_best = gbs(floor_ts.iter().copied().fold(f64::INFINITY, f64::min));
    let round_med = gbs(median(floor_ts));
    // The fastest copy seen in the run: a floor the rules could beat is no floor. The medians
    // give a second, gentler reference (what the copy does typically on this machine now).
    let floor = floor_first.max(round_best);
    let floor_med = floor_first_med.max(round_med);
    println!(
        "floor: {} at {} B: best {floor_first:.1} GB/s (median {floor_first_med:.1}) in table 1, \
         best {round_best:.1} (median {round_med:.1}) within the rounds; floor = the best, \
         {floor:.1} GB/s; median copy {floor_med:.1} GB/s",
        floor_v.name(),
        4 * n
    );
    println!(
        "\n{:<14} {:>7} {:>9} {:>9} {:>9} {:>7} {:>9} {:>6} {:>9}  bytes",
        "rule+sgd-mom",
        "B/param",
        "first ms",
        "second ms",
        "total ms",
        "GB/s",
        "floor ms",
        "ratio",
        "vs median"
    );
    let mut sam_total = f64::NAN;
    for ((rule, _, _), (t1, t2)) in setups.iter().zip(times) {
        let (bpp, what) = bytes_per_param(rule);
        let (a, b) = (median(t1), median(t2));
        let t = a + b;
        let bytes = (bpp * n as u64) as f64;
        let floor_t = bytes / (floor * 1e9);
        println!(
            "{:<14} {bpp:>7} {:>9.2} {:>9.2} {:>9.2} {:>7.1} {:>9.2} {:>6.2} {:>9.2}  {what}",
            rule.name(),
            a * 1e3,
            b * 1e3,
            t * 1e3,
            bytes / t / 1e9,
            floor_t * 1e3,
            t / floor_t,
            t * floor_med * 1e9 / bytes
        );
        if matches!(rule, Rule::Sam(c) if !c.adaptive) {
            sam_total = t;
        }
    }
    println!("load average after: {}", load());
    side_by_side(&layout, threads, &g, &g2, sam_total);
}

/// Table 3: SAM's optimizer side against pytorch_optimizer.SAM, alternated in two rounds.
fn side_by_side(layout: &Layout, threads: usize, g: &[f32], g2: &[f32], sam_table: f64) {
    let python = std::env::var("SAMKIT_TORCH_PYTHON")
        .unwrap_or_else(|_| "/work/.venv-torch/bin/python".into());
    if python == "none" || !Path::new(&python).exists() {
        println!("\nside-by-side: no PyTorch interpreter (SAMKIT_TORCH_PYTHON), skipped");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/anchors");
    let mut opt = optimizer(layout, Rule::Sam(Sam::default()));
    let mut w = fill(layout.len(), 5);
    // Per round: (median, min) of samkit's steps, of the anchor's default and foreach=True.
    let (mut ours, mut loop_s, mut foreach_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = serde_json::Value::Null;
    for _ in 0..2 {
        let out = std::process::Command::new(&python)
            .arg(dir.join("torch_cpu_sam_opt.py"))
            .args(["--threads", &threads.to_string(), "--reps", "9"])
            .current_dir(&dir)
            .output();
        let json = match out {
            Ok(o) if o.status.success() => {
                serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()
            }
            Ok(o) => {
                println!(
                    "\nside-by-side: the anchor failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                return;
            }
            Err(e) => {
                println!("\nside-by-side: cannot run {python}: {e}");
                return;
            }
        };
        let f = |k: &str| json[k].as_f64().unwrap_or(f64::NAN);
        loop_s.push((f("sam_opt_median_s"), f("sam_opt_min_s")));
        foreach_s.push((f("sam_opt_foreach_median_s"), f("sam_opt_foreach_min_s")));
        last = json;
        let ts: Vec<f64> = (0..9)
            .map(|_| {
                let (a, b) = step(&mut opt, &mut w, g, g2);
                a + b
            })
            .collect();
        let lo = ts.iter().copied().fold(f64::INFINITY, f64::min);
        ours.push((median(ts), lo));
    }
    // The less disturbed round's median, and the minimum over both rounds, for each side.
    let best = |v: &[(f64, f64)]| {
        let m = v.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
        let lo = v.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
        (m, lo)
    };
    let (ours, loop_s, foreach_s) = (best(&ours), best(&loop_s), best(&foreach_s));
    let torch = (loop_s.0.min(foreach_s.0), loop_s.1.min(foreach_s.1));
    println!(
        "\nSAM optimizer side, {threads} threads, median (min) of the less disturbed round: \
         samkit {:.2} ms ({:.2}); pytorch_optimizer.SAM {:.2} ms ({:.2}) with foreach=None (the \
         default), {:.2} ms ({:.2}) with foreach=True; torch's faster / samkit = {:.2} by \
         medians, {:.2} by minima (the table's SAM row: {:.2} ms)",
        ours.0 * 1e3,
        ours.1 * 1e3,
        loop_s.0 * 1e3,
        loop_s.1 * 1e3,
        foreach_s.0 * 1e3,
        foreach_s.1 * 1e3,
        torch.0 / ours.0,
        torch.1 / ours.1,
        sam_table * 1e3
    );
    println!("torch's last report: {last}");
    println!("load average after: {}", load());
}

fn quick() -> bool {
    std::env::var("SAMKIT_BENCH_QUICK").is_ok_and(|v| v == "1")
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
    if !quick() {
        let mut c = Criterion::default().configure_from_args();
        bench_optimizers(&mut c);
        bench_mask_updates(&mut c);
        c.final_summary();
    }
    table();
}
