//! A small deterministic objective for the protocol tests: a separable quadratic plus a quartic
//! term (so the gradient at `w + e` differs non-linearly from the one at `w`) plus per-batch
//! noise, over a layout with weight and bias segments, one of them spanning several units.
#![allow(dead_code)]
use samkit_core::{BaseOptimizer, Eval, GradRequest, Layout, Optimizer, Result, Rule, Sgd};

pub struct Problem {
    pub layout: Layout,
    curv: Vec<f32>,
    center: Vec<f32>,
}

fn hash(a: u64, b: u64) -> f32 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

impl Problem {
    pub fn new(big: bool) -> Self {
        let mut layout = Layout::new();
        layout.push("l0.weight", &[4, 5]).unwrap();
        layout.push("l0.bias", &[4]).unwrap();
        layout.push("bn.weight", &[4]).unwrap();
        layout.push("bn.bias", &[4]).unwrap();
        if big {
            layout.push("big.weight", &[130, 131]).unwrap();
        }
        layout.push("l1.weight", &[3, 4]).unwrap();
        layout.push("l1.bias", &[3]).unwrap();
        Self::with_layout(layout)
    }

    pub fn with_layout(layout: Layout) -> Self {
        let n = layout.len();
        let curv = (0..n)
            .map(|i| 0.5 + 2.0 * (hash(1, i as u64) + 0.5))
            .collect();
        let center = (0..n).map(|i| hash(2, i as u64)).collect();
        Problem {
            layout,
            curv,
            center,
        }
    }

    pub fn init(&self) -> Vec<f32> {
        (0..self.layout.len())
            .map(|i| 0.8 * hash(3, i as u64))
            .collect()
    }

    /// Gradient of batch `b` at `w`; `part`: 0 = everything, 1 = quadratic ("head"),
    /// 2 = quartic + noise ("tail").
    pub fn grad_part(&self, w: &[f32], b: u64, part: u8, out: &mut [f32]) -> f64 {
        let mut loss = 0.0f64;
        for (i, o) in out.iter_mut().enumerate() {
            let d = w[i] - self.center[i];
            let quad = self.curv[i] * d;
            let quart = 0.4 * w[i] * w[i] * w[i] + 0.05 * hash(100 + b, i as u64);
            *o = match part {
                0 => quad + quart,
                1 => quad,
                _ => quart,
            };
            loss += 0.5 * (self.curv[i] * d * d) as f64 + 0.1 * (w[i] as f64).powi(4);
        }
        loss
    }

    pub fn grad(&self, w: &[f32], b: u64, out: &mut [f32]) -> f64 {
        self.grad_part(w, b, 0, out)
    }

    /// Σ over 8 "samples" of the squared per-sample gradient.
    pub fn fisher(&self, w: &[f32], out: &mut [f32]) {
        let mut g = vec![0f32; w.len()];
        out.fill(0.0);
        for s in 0..8 {
            self.grad(w, 1000 + s, &mut g);
            for (o, &x) in out.iter_mut().zip(&g) {
                *o += x * x;
            }
        }
    }

    /// The closure-form oracle for batch `b`.
    pub fn oracle(
        &self,
        b: u64,
    ) -> impl FnMut(GradRequest, &Vec<f32>, &mut [f32]) -> Result<Eval> + '_ {
        move |req, w, out| {
            let loss = match req {
                GradRequest::Batch(_) => self.grad(w, b, out),
                GradRequest::Head => self.grad_part(w, b, 1, out),
                GradRequest::Tail(_) => self.grad_part(w, b, 2, out),
                GradRequest::Fisher { .. } => {
                    self.fisher(w, out);
                    0.0
                }
            };
            Ok(Eval { loss, samples: 1 })
        }
    }
}

pub fn sgd_momentum() -> BaseOptimizer {
    BaseOptimizer::Sgd(Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Sgd::default()
    })
}

/// Runs `steps` closure-form steps from the problem's start point.
pub fn run(p: &Problem, rule: Rule, base: BaseOptimizer, steps: u64) -> (Vec<f32>, Optimizer) {
    let mut opt = Optimizer::new(p.layout.clone(), rule, base).unwrap();
    let mut w = p.init();
    for t in 0..steps {
        opt.step(&mut w, p.oracle(t)).unwrap();
    }
    (w, opt)
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    let scale = b
        .iter()
        .fold(0f64, |m, &x| m.max(x.abs() as f64))
        .max(1e-30);
    a.iter()
        .zip(b)
        .fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs()))
        / scale
}
