//! A small candle CNN trained on synthetic images with samkit's SAM and SSAM-F through
//! `samkit_candle::CandleSam`, printing the loss of each epoch.
//!
//!     cargo run -p samkit-candle --release --example train_cnn
//!     cargo run -p samkit-candle --release --features cuda --example train_cnn -- --cuda
//!
//! The data: 8×8 single-channel images of three classes, each a bright bar (horizontal,
//! vertical, diagonal) at a random offset under noise; the model: two 3×3 convolutions, global
//! average pooling and a linear head (527 parameters). Seconds on a CPU.
#![allow(clippy::needless_update)] // hyperparameters written out; `..Default` keeps new fields
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::ops::log_softmax;
use candle_nn::{conv2d, linear, Conv2d, Conv2dConfig, Linear, VarBuilder, VarMap};
use samkit_candle::{Backend, CandleSam, GradRequest, ParamVars};
use samkit_core::{BaseOptimizer, MaskKind, Rule, Sam, Sgd, Ssam, SsamNorm};

const SIDE: usize = 8;
const CLASSES: usize = 3;
const TRAIN: usize = 384;
const TEST: usize = 192;
const BATCH: usize = 32;
const EPOCHS: usize = 6;
/// SSAM-F: the Fisher over this many training samples, every `FISHER_INTERVAL` steps.
const FISHER_SAMPLES: usize = 32;
const FISHER_INTERVAL: u64 = 12;
const NOISE: f32 = 0.3;

struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    head: Linear,
}

impl Cnn {
    fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let same = Conv2dConfig {
            padding: 1,
            ..Conv2dConfig::default()
        };
        Ok(Cnn {
            conv1: conv2d(1, 6, 3, same, vb.pp("conv1"))?,
            conv2: conv2d(6, 8, 3, same, vb.pp("conv2"))?,
            head: linear(8, CLASSES, vb.pp("head"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(x)?.relu()?.max_pool2d(2)?;
        let h = self.conv2.forward(&h)?.relu()?;
        self.head.forward(&h.mean(D::Minus1)?.mean(D::Minus1)?)
    }

    /// Cross-entropy of each sample.
    fn per_sample_loss(&self, x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
        let logp = log_softmax(&self.forward(x)?, D::Minus1)?;
        logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
    }
}

/// A deterministic stream in [0, 1) (a 64-bit LCG, to need no RNG crate).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `n` images `[n, 1, 8, 8]` and their labels.
fn images(n: usize, seed: u64, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let mut r = Lcg(seed);
    let mut x = vec![0f32; n * SIDE * SIDE];
    let mut y = Vec::with_capacity(n);
    for (i, img) in x.chunks_mut(SIDE * SIDE).enumerate() {
        let class = i % CLASSES;
        let at = (r.next() * SIDE as f32) as usize % SIDE;
        for k in 0..SIDE {
            let (row, col) = match class {
                0 => (at, k),
                1 => (k, at),
                _ => (k, (k + at) % SIDE),
            };
            img[row * SIDE + col] = 1.0;
        }
        for p in img.iter_mut() {
            *p += NOISE * (r.next() - 0.5);
        }
        y.push(class as u32);
    }
    Ok((
        Tensor::from_vec(x, (n, 1, SIDE, SIDE), dev)?,
        Tensor::from_vec(y, n, dev)?,
    ))
}

fn accuracy(model: &Cnn, x: &Tensor, y: &Tensor) -> candle_core::Result<f64> {
    let pred = model.forward(x)?.argmax(D::Minus1)?;
    let right = pred
        .eq(y)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(right as f64 / y.elem_count() as f64)
}

fn sgd() -> BaseOptimizer {
    BaseOptimizer::Sgd(Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Sgd::default()
    })
}

/// The optimizer over the model's Vars (CPU or CUDA, by the backend `O`).
type Make<O> = fn(ParamVars, Rule) -> samkit_candle::Result<CandleSam<O>>;

fn train<O: Backend>(
    name: &str,
    rule: Rule,
    dev: &Device,
    make: Make<O>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (xs, ys) = images(TRAIN, 1, dev)?;
    let (xt, yt) = images(TEST, 2, dev)?;
    let varmap = VarMap::new();
    let model = Cnn::new(VarBuilder::from_varmap(&varmap, DType::F32, dev))?;
    // The layout: every Var of the VarMap, sorted by name, biases classified by name.
    let vars = ParamVars::from_varmap(&varmap)?;
    println!(
        "{name}: {} tensors, {} parameters",
        vars.len(),
        vars.layout().len()
    );
    let mut opt = make(vars, rule)?;
    for epoch in 1..=EPOCHS {
        let (mut sum, mut perturbed, mut masks) = (0.0, 0.0, 0);
        let batches = TRAIN / BATCH;
        for b in 0..batches {
            let x = xs.narrow(0, b * BATCH, BATCH)?;
            let y = ys.narrow(0, b * BATCH, BATCH)?;
            let report = opt.step(|request| match request {
                // SSAM-F: per-sample losses over the first training samples; the adapter takes
                // one backward pass per sample for F = Σ (∇ℓ_i)².
                GradRequest::Fisher { samples } => {
                    let n = samples.min(TRAIN);
                    model.per_sample_loss(&xs.narrow(0, 0, n)?, &ys.narrow(0, 0, n)?)
                }
                // The same batch at the clean and at the perturbed weights.
                _ => model.per_sample_loss(&x, &y)?.mean_all(),
            })?;
            sum += report.loss;
            perturbed += report.perturbed_loss.unwrap_or(report.loss);
            masks += usize::from(report.mask_updated);
        }
        let n = batches as f64;
        println!(
            "{name} epoch {epoch}: loss {:.4}, at the perturbed weights {:.4}, test accuracy \
             {:.3}{}",
            sum / n,
            perturbed / n,
            accuracy(&model, &xt, &yt)?,
            if masks > 0 {
                format!(", {masks} mask updates")
            } else {
                String::new()
            }
        );
    }
    let status = opt.optimizer_mut().status()?;
    println!(
        "{name}: {} steps, {} skipped\n",
        status.steps, status.skipped
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cuda = std::env::args().any(|a| a == "--cuda");
    let sam = Rule::Sam(Sam {
        rho: 0.05,
        adaptive: false,
        ..Sam::default()
    });
    let ssam_f = Rule::Ssam(Ssam {
        rho: 0.05,
        sparsity: 0.5,
        interval: FISHER_INTERVAL,
        norm: SsamNorm::Masked,
        mask: MaskKind::Fisher {
            samples: FISHER_SAMPLES,
        },
        ..Ssam::fisher()
    });
    if cuda {
        return train_cuda(sam, ssam_f);
    }
    let cpu: Make<samkit_core::Optimizer> = |vars, rule| CandleSam::new(vars, rule, sgd());
    train("SAM", sam, &Device::Cpu, cpu)?;
    train("SSAM-F", ssam_f, &Device::Cpu, cpu)?;
    Ok(())
}

#[cfg(feature = "cuda")]
fn train_cuda(sam: Rule, ssam_f: Rule) -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::new_cuda(0)?;
    let gpu: Make<samkit_cuda::GpuOptimizer<f32>> =
        |vars, rule| CandleSam::new_cuda(vars, rule, sgd());
    train("SAM (CUDA)", sam, &dev, gpu)?;
    train("SSAM-F (CUDA)", ssam_f, &dev, gpu)?;
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn train_cuda(_: Rule, _: Rule) -> Result<(), Box<dyn std::error::Error>> {
    Err("--cuda needs the `cuda` feature of samkit-candle".into())
}
