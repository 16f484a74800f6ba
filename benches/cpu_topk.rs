//! Global top-k (keep 50 %) over 11,173,962 Fisher scores: the radix select next to a full
//! sort of the same keys and a memory copy of the scores, measured in the same run.
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use samkit::core::select::{f32_key, top_k_mask};

fn scores(n: usize) -> Vec<f32> {
    let mut x = 0x1234_5678u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Squared gradients: non-negative, heavy-tailed, with ties among small values.
            let u = x as f32 / u32::MAX as f32;
            (u * u * u * 1e-3 * 65536.0).round() / 65536.0
        })
        .collect()
}

fn bench_topk(c: &mut Criterion) {
    let n = 11_173_962usize;
    let s = scores(n);
    let k = n / 2;
    let mut group = c.benchmark_group("topk_resnet18");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(4 * n as u64));
    group.bench_function("memcpy scores", |b| {
        let mut dst = vec![0f32; n];
        b.iter(|| dst.copy_from_slice(black_box(&s)))
    });
    group.bench_function("radix select top-50%", |b| {
        b.iter(|| black_box(top_k_mask(black_box(&s), k)))
    });
    group.bench_function("full sort (u64 key|index, unstable)", |b| {
        b.iter(|| {
            let mut keys: Vec<u64> = s
                .iter()
                .enumerate()
                .map(|(i, &x)| ((f32_key(x) as u64) << 32) | (u32::MAX - i as u32) as u64)
                .collect();
            keys.sort_unstable();
            black_box(keys[n - k])
        })
    });
    group.finish();
}

criterion_group!(benches, bench_topk);
criterion_main!(benches);
