//! Times the global top-k (keep 50 %) over 11,173,962 scores: `cargo run --release --example topk_time`.
use std::time::Instant;

use samkit_core::select::top_k_mask;

fn main() {
    let n = 11_173_962usize;
    let mut x = 0x1234_5678u32;
    let s: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let u = x as f32 / u32::MAX as f32;
            u * u * u * 1e-3
        })
        .collect();
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let mut ts = Vec::new();
    let mut live = 0;
    for _ in 0..reps {
        let t = Instant::now();
        live = top_k_mask(&s, n / 2).count_ones();
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    println!(
        "top-k of {n}: {live} selected, median {:.2} ms",
        ts[ts.len() / 2] * 1e3
    );
}
