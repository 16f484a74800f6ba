//! Times the optimizer side of one SAM + SGD-momentum step on the ResNet-18 layout, pass by
//! pass: `cargo run --release --example sam_step_time [reps]`.
use std::time::Instant;

use samkit_core::{BaseOptimizer, Layout, Optimizer, Rule, Sam, Sgd};

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

fn main() {
    let reps: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let layout = Layout::resnet18(10, 64).unwrap();
    let n = layout.len();
    let base = BaseOptimizer::Sgd(Sgd {
        lr: 1e-4,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Sgd::default()
    });
    let mut opt = Optimizer::new(layout, Rule::Sam(Sam::default()), base).unwrap();
    let (mut w, g, g2) = (fill(n, 5), fill(n, 7), fill(n, 9));
    let (mut t1, mut t2, mut tc) = (Vec::new(), Vec::new(), Vec::new());
    let src = fill(n, 3);
    let mut dst = vec![0f32; n];
    for _ in 0..reps {
        let t = Instant::now();
        opt.first_step(&mut w, &g).unwrap();
        t1.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        opt.second_step(&mut w, &g2).unwrap();
        t2.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let per = n.div_ceil(rayon::current_num_threads());
        rayon::scope(|sc| {
            for (d, s) in dst.chunks_mut(per).zip(src.chunks(per)) {
                sc.spawn(move |_| d.copy_from_slice(s));
            }
        });
        tc.push(t.elapsed().as_secs_f64());
    }
    let (a, b, c) = (median(t1), median(t2), median(tc));
    let gbs = |bytes: f64, t: f64| bytes * n as f64 / t / 1e9;
    println!(
        "first_step {:.2} ms ({:.1} GB/s at 20 B/param), second_step {:.2} ms ({:.1} GB/s at 24 B/param), total {:.2} ms; parallel memcpy {:.2} ms ({:.1} GB/s)",
        a * 1e3,
        gbs(20.0, a),
        b * 1e3,
        gbs(24.0, b),
        (a + b) * 1e3,
        c * 1e3,
        gbs(8.0, c)
    );
}
