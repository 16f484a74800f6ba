//! Times a ResNet-18 train step on the CPU:
//! `cargo run --release --example step_time -- [batch] [width] [reps] [winograd 1|0]`.
use std::time::Instant;

use samkit_core::{BaseOptimizer, GradRequest, Optimizer, Rule, Sgd};
use samkit_nn::init::Rng;
use samkit_nn::{mean_weights, BnMode, Cpu, Model, ResNet18, ResNetConfig, Tensor};

mod common;
use common::cpu_time;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (b, width, reps) = (
        args.first().copied().unwrap_or(32),
        args.get(1).copied().unwrap_or(64),
        args.get(2).copied().unwrap_or(5),
    );
    let winograd = args.get(3).is_none_or(|&v| v != 0);
    let mut model = ResNet18::new(
        Cpu::new().with_winograd(winograd),
        ResNetConfig::new(10, width),
    )
    .unwrap();
    let mut w = model.init_params(0);
    let mut xv = vec![0.0; b * 3 * 32 * 32];
    Rng::new(1).fill_normal(&mut xv, 1.0);
    let x = Tensor::from_vec(xv, &[b, 3, 32, 32]).unwrap();
    let y: Vec<usize> = (0..b).map(|i| i % 10).collect();
    let wts = mean_weights(b);
    let base = BaseOptimizer::Sgd(Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Sgd::default()
    });
    let mut opt = Optimizer::new(model.layout().clone(), Rule::Base, base).unwrap();
    let mut times = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..reps + 1 {
        let t = Instant::now();
        let c = cpu_time();
        opt.step(&mut w[..], |req, w, g| match req {
            GradRequest::Batch(p) => Ok(model
                .forward_backward(w, &x, (&y).into(), &wts, BnMode::for_pass(p), g)?
                .eval()),
            _ => unreachable!(),
        })
        .unwrap();
        times.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_time() - c);
    }
    let mut fwd = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        model.forward(&w, &x, BnMode::TrainNoUpdate).unwrap();
        fwd.push(t.elapsed().as_secs_f64());
    }
    let mut fisher = vec![0.0; w.len()];
    let (c, t) = (cpu_time(), Instant::now());
    for _ in 0..4 {
        model
            .per_sample_grad_sq(&w, &x, (&y).into(), &mut fisher)
            .unwrap();
    }
    println!(
        "fisher over {} samples: {:.3} s wall, {:.3} s cpu",
        4 * b,
        t.elapsed().as_secs_f64(),
        cpu_time() - c
    );
    times.remove(0);
    cpu.remove(0);
    cpu.sort_by(f64::total_cmp);
    times.sort_by(f64::total_cmp);
    fwd.sort_by(f64::total_cmp);
    println!("threads {} batch {b} width {width} winograd {winograd}: train step median {:.3} s (min {:.3}); forward median {:.3} s; cpu per step median {:.3} s (min {:.3})",
        rayon::current_num_threads(), times[times.len() / 2], times[0], fwd[fwd.len() / 2], cpu[cpu.len() / 2], cpu[0]);
}
