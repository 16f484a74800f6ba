//! Times SSAM-D's drop/grow at 20 % on ResNet-18's layout (half the mask live), as in
//! `benches/cpu_optimizers.rs`: `cargo run --release -p samkit-core --example drop_grow_time`.
use std::time::Instant;

use samkit_core::chunks::Chunks;
use samkit_core::layout::Layout;
use samkit_core::sparse;

fn main() {
    let layout = Layout::resnet18(10, 64).unwrap();
    let n = layout.len();
    let chunks = Chunks::new(&layout);
    let mut x = 13u32.wrapping_mul(2_654_435_761).max(1);
    let g: Vec<f32> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) - 0.5
        })
        .collect();
    let live = n / 2;
    let mask = sparse::random_mask(n, live, 1);
    let units = chunks.split(layout.split(&g).unwrap());
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let mut ts = Vec::new();
    let mut out = mask.clone();
    for _ in 0..reps {
        let t = Instant::now();
        out = sparse::drop_grow(&chunks, &units, &mask, n, 0.2, 1, 1);
        ts.push(t.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    println!(
        "drop/grow of {n} ({live} live): {} live after, median {:.2} ms, min {:.2} ms",
        out.count_ones(),
        ts[ts.len() / 2] * 1e3,
        ts[0] * 1e3
    );
}
