//! CPU time of the convolutions of ResNet-18 (batch 32) under different chunk budgets, with
//! Winograd on (w) and off (i: im2col + GEMM for every shape):
//! `cargo run --release --example conv_time [budget ...]` (GF/s: of the direct form's FLOPs).
use samkit_nn::backend::ParamGrad;
use samkit_nn::init::Rng;
use samkit_nn::{Backend, Conv2d, Cpu, Dims};

mod common;
use common::cpu_time;

fn main() {
    let n = 32;
    let shapes = [
        (Conv2d::new(3, 64, 3, 1, 1), Dims::new(n, 3, 32, 32)),
        (Conv2d::new(64, 64, 3, 1, 1), Dims::new(n, 64, 32, 32)),
        (Conv2d::new(64, 128, 3, 2, 1), Dims::new(n, 64, 32, 32)),
        (Conv2d::new(128, 128, 3, 1, 1), Dims::new(n, 128, 16, 16)),
        (Conv2d::new(64, 128, 1, 2, 0), Dims::new(n, 64, 32, 32)),
        (Conv2d::new(256, 256, 3, 1, 1), Dims::new(n, 256, 8, 8)),
        (Conv2d::new(512, 512, 3, 1, 1), Dims::new(n, 512, 4, 4)),
    ];
    let budgets: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let budgets = if budgets.is_empty() {
        vec![1 << 18, 1 << 20, 1 << 22, 1 << 24]
    } else {
        budgets
    };
    let mut rng = Rng::new(0);
    for (c, d) in shapes {
        let od = c.out_dims(d);
        let mut x = vec![0.0; d.len()];
        let mut w = vec![0.0; c.weight_len()];
        let mut dy = vec![0.0; od.len()];
        rng.fill_normal(&mut x, 1.0);
        rng.fill_normal(&mut w, 0.1);
        rng.fill_normal(&mut dy, 1.0);
        let mut y = vec![0.0; od.len()];
        let mut dw = vec![0.0; w.len()];
        let mut dx = vec![0.0; x.len()];
        let flops = 2.0 * (c.weight_len() * od.hw() * n) as f64;
        let mut line = format!(
            "{:>3}->{:<3} k{} s{} {:>2}x{:<2}",
            c.cin, c.cout, c.k, c.stride, d.h, d.w
        );
        for (b, wino) in budgets.iter().flat_map(|&b| [(b, true), (b, false)]) {
            let mut be = Cpu::new().with_col_budget(b).with_winograd(wino);
            be.conv2d_forward(&c, d, &x, &w, 0, &mut y).unwrap();
            let mut best = [f64::MAX; 2];
            for _ in 0..3 {
                let t = cpu_time();
                be.conv2d_forward(&c, d, &x, &w, 0, &mut y).unwrap();
                let t1 = cpu_time();
                be.conv2d_backward(
                    &c,
                    d,
                    &x,
                    &dy,
                    &w,
                    0,
                    ParamGrad::Sum,
                    &mut dw,
                    Some(&mut dx),
                    false,
                )
                .unwrap();
                let t2 = cpu_time();
                best[0] = best[0].min(t1 - t);
                best[1] = best[1].min(t2 - t1);
            }
            line += &format!(
                " | b{}{}: fwd {:5.1} ms {:4.0} GF/s bwd {:5.1} ms {:4.0} GF/s",
                b,
                if wino { "w" } else { "i" },
                best[0] * 1e3,
                flops / best[0] / 1e9,
                best[1] * 1e3,
                2.0 * flops / best[1] / 1e9
            );
        }
        println!("{line}");
    }
}
