//! Parity scenarios: GPU (or emulated GPU) against the CPU reference of samkit-core.
use std::sync::Arc;

use samkit_core::chunks::Chunks;
use samkit_core::passes::{dot_pass, norm_pass, Dir};
use samkit_core::Layout;
use samkit_cuda::{Device, Ops};

pub fn emulated(dev: &Device) -> bool {
    dev.name().contains("fake")
}

/// Deterministic pseudo-random values in [-scale/2, scale/2).
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        0.0
    } else {
        (a - b).abs() / a.abs().max(b.abs())
    }
}

pub fn norm_and_dot_match_cpu(dev: &Arc<Device>, layouts: &[Layout]) {
    for layout in layouts {
        let n = layout.len();
        let x = values(n, 1, 2.0);
        let y = values(n, 2, 2.0);
        let chunks = Chunks::new(layout);
        let xs = chunks.split(layout.split(&x).unwrap());
        let ys = chunks.split(layout.split(&y).unwrap());
        let cpu_n = norm_pass(&chunks, Dir::PLAIN, &xs, None, None, None, None);
        let cpu_d = dot_pass(&chunks, Some(&xs), &ys);
        let s = dev.stream();
        let dx = s.clone_htod(&x).unwrap();
        let dy = s.clone_htod(&y).unwrap();
        let mut ops = Ops::<f32>::new(dev, layout.clone()).unwrap();
        let r = ops.norm_sq(&dx).unwrap();
        assert!(r.finite);
        assert!(rel(r.value, cpu_n.sum_sq) < 1e-12, "n={n}: {} vs {}", r.value, cpu_n.sum_sq);
        let d = ops.dot(&dx, &dy).unwrap();
        assert!(d.finite);
        assert!(rel(d.value, cpu_d.xy) < 1e-9, "n={n}: {} vs {}", d.value, cpu_d.xy);
        assert!(rel(d.yy, cpu_d.yy) < 1e-12);
        println!("n={n}: norm² {:.6e} (rel {:.1e}), dot {:.6e}", r.value, rel(r.value, cpu_n.sum_sq), d.value);
    }
}
