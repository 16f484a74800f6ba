//! Optimizer-side cost of one step of every rule on ResNet-18's 11,173,962-parameter layout,
//! next to a memory copy of the same bytes measured in the same run.
//!
//! Each rule's byte count is what its fused passes must move per parameter (reads + writes of
//! 4-byte values); `floor` is that count divided by the copy bandwidth measured here.
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;
use samkit::core::chunks::{Chunks, CHUNK};
use samkit::core::sparse;
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

/// Bytes per parameter each rule's passes move in one step.
fn bytes_per_param(rule: &Rule) -> u64 {
    match rule {
        // check g (4) + update: w, g, m read; w, m written (20)
        Rule::Base => 24,
        // norm g (4) + perturb: w, g read; w_old, w written (16) + check g2 (4) + update (20)
        Rule::Sam(c) if c.adaptive => 48,
        Rule::Sam(_) | Rule::Ssam(_) => 44,
        Rule::Asam(_) => 48,
        // norm: g, m read, m_next written (12) + perturb with m (20) + check + update
        Rule::FriendlySam(_) => 56,
        // perturb also copies g (20); dots read g, g2 (8); update also reads g (24)
        Rule::Gsam(_) => 56,
        Rule::ImbSam(_) => 60,
        Rule::LookSam(_) => unreachable!("LookSAM alternates step kinds; not in this table"),
        // Masked like Sparse SAM.
        Rule::Esam(_) | Rule::SamOn(_) => 44,
        // SAM's passes + the extrapolation: w, v read, w written (12).
        Rule::EgSam(_) => 56,
        Rule::Rst(_) => unreachable!("RST alternates step kinds; not in this table"),
    }
}

/// A copy split into one contiguous part per rayon thread (each a plain `memcpy`, which uses
/// streaming stores at this size): the fastest copy this machine does.
fn par_copy(dst: &mut [f32], src: &[f32]) {
    let per = src.len().div_ceil(rayon::current_num_threads()).max(CHUNK);
    dst.par_chunks_mut(per)
        .zip(src.par_chunks(per))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// Bytes moved per second (read + write) by a parallel copy: the median of 15 runs, as the
/// optimizer steps are summarised below.
fn memcpy_bandwidth(n: usize) -> f64 {
    let src = fill(n, 1);
    let mut dst = vec![0f32; n];
    par_copy(&mut dst, &src);
    let mut ts: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            par_copy(&mut dst, black_box(&src));
            black_box(&mut dst);
            t.elapsed().as_secs_f64()
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    (2 * 4 * n) as f64 / ts[ts.len() / 2]
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

fn step(opt: &mut Optimizer, w: &mut Vec<f32>, g: &[f32], g2: &[f32]) {
    let out = if opt.needs_head_tail() {
        opt.first_step_split(w, g, Some(g2)).unwrap()
    } else {
        opt.first_step(w, g).unwrap()
    };
    if out == FirstOutcome::Perturbed {
        opt.second_step(w, g2).unwrap();
    }
}

fn bench_optimizers(c: &mut Criterion) {
    let layout = Layout::resnet18(10, 64).unwrap();
    let n = layout.len();
    let copy_bw = memcpy_bandwidth(n);
    let g = fill(n, 7);
    let g2 = fill(n, 9);
    let mut group = c.benchmark_group("optimizer_step_resnet18");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Bytes(8 * n as u64));
    group.bench_function("memcpy (8 B/param)", |b| {
        let src = fill(n, 3);
        let mut dst = vec![0f32; n];
        b.iter(|| par_copy(&mut dst, black_box(&src)))
    });
    let mut summary = Vec::new();
    for rule in rules() {
        let bpp = bytes_per_param(&rule);
        let name = rule.name();
        let mut opt = Optimizer::new(layout.clone(), rule, sgd_momentum()).unwrap();
        if opt.needs_fisher().is_some() {
            opt.set_fisher(&fill(n, 11)).unwrap();
        }
        let mut w = fill(n, 5);
        group.throughput(Throughput::Bytes(bpp * n as u64));
        group.bench_function(format!("{name}+sgd-momentum ({bpp} B/param)"), |b| {
            b.iter(|| step(&mut opt, &mut w, &g, &g2))
        });
        // A direct median for the summary table, independent of criterion's report.
        let mut ts: Vec<f64> = (0..15)
            .map(|_| {
                let t = Instant::now();
                step(&mut opt, &mut w, &g, &g2);
                t.elapsed().as_secs_f64()
            })
            .collect();
        ts.sort_by(f64::total_cmp);
        let t = ts[ts.len() / 2];
        let floor = (bpp * n as u64) as f64 / copy_bw;
        summary.push((name, bpp, t, floor));
    }
    group.finish();
    println!(
        "\nmemcpy bandwidth: {:.2} GB/s ({} threads)",
        copy_bw / 1e9,
        rayon::current_num_threads()
    );
    println!(
        "{:<16} {:>8} {:>10} {:>10} {:>10} {:>8}",
        "rule", "B/param", "time ms", "GB/s", "floor ms", "ratio"
    );
    for (name, bpp, t, floor) in summary {
        let gbs = (bpp * n as u64) as f64 / t / 1e9;
        println!(
            "{name:<16} {bpp:>8} {:>10.2} {gbs:>10.2} {:>10.2} {:>8.2}",
            t * 1e3,
            floor * 1e3,
            t / floor
        );
    }
}

/// SSAM-D's drop/grow (two selections over the live and dead sets) on the same layout.
fn bench_mask_updates(c: &mut Criterion) {
    let layout = Layout::resnet18(10, 64).unwrap();
    let n = layout.len();
    let chunks = Chunks::new(&layout);
    let g = fill(n, 13);
    let live = Ssam::dynamic(0).live_count(n);
    let mask = sparse::random_mask(n, live, 1);
    let units = chunks.split(layout.split(&g).unwrap());
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

criterion_group!(benches, bench_optimizers, bench_mask_updates);
criterion_main!(benches);
