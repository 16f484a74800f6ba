//! A candle MLP trained through `CandleSam` follows samkit-core's own trajectory: the reference
//! is `samkit_core::Optimizer` on a flat `Vec<f32>` of the same weights, stepped by
//! `samkit_core::drive_step` with gradients computed by candle from fresh tensors built from that
//! flat vector. Both sides evaluate the same candle graph on the same bits, so the gradients are
//! identical and the trajectories must be bit-identical: any copy, reordering, stale read or
//! missed write-back in the adapter shows up as a difference.
//!
//! Hyperparameters are written out field by field (defaults change); `..Default` follows them so
//! that a field added upstream keeps its default here.
#![allow(clippy::needless_update)]
use candle_core::{Device, Tensor, Var, D};
use candle_nn::ops::log_softmax;
use samkit_candle::{no_tail, Backend, CandleSam, ParamVar, ParamVars};
use samkit_core::{
    drive_step, Adam, Asam, BaseOptimizer, Eval, FriendlySam, GradRequest, ImbSam, Layout,
    MaskKind, NoHooks, Optimizer, Outcome, ParamKind, Pass, Rule, Sam, Sgd, Ssam, SsamNorm,
};

const IN: usize = 6;
const HIDDEN: usize = 10;
const CLASSES: usize = 3;
const BATCH: usize = 12;
const STEPS: usize = 10;
/// SSAM-F's Fisher batch: the first samples of the step's batch.
const FISHER_SAMPLES: usize = 5;
/// ImbSAM: the last class is the tail.
const TAIL_CLASS: u32 = 2;

/// A deterministic stream of values in [-1, 1) (a 32-bit LCG: no RNG crate, same on every run).
struct Lcg(u32);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (self.0 >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }

    fn fill(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// `(name, shape)` of the MLP's parameters, in layout order.
fn shapes() -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("fc1.weight", vec![HIDDEN, IN]),
        ("fc1.bias", vec![HIDDEN]),
        ("fc2.weight", vec![CLASSES, HIDDEN]),
        ("fc2.bias", vec![CLASSES]),
    ]
}

fn layout() -> Layout {
    let mut l = Layout::new();
    for (name, shape) in shapes() {
        l.push(name, &shape).expect("valid segment");
    }
    l
}

fn initial_weights() -> Vec<f32> {
    Lcg(7).fill(layout().len(), 0.5)
}

/// Batch `t`: inputs and labels (every batch but one has tail samples, for ImbSAM's both paths).
fn batch(t: usize) -> (Vec<f32>, Vec<u32>) {
    let mut r = Lcg(1000 + t as u32);
    let x = r.fill(BATCH * IN, 1.0);
    let y = (0..BATCH)
        .map(|i| {
            let c = ((i + t) % CLASSES) as u32;
            if t == 3 && c == TAIL_CLASS {
                0
            } else {
                c
            }
        })
        .collect();
    (x, y)
}

/// Per-sample cross-entropy of the MLP with parameters `p` (layout order) on a batch.
fn per_sample_loss(p: &[Tensor], x: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let h = x.matmul(&p[0].t()?)?.broadcast_add(&p[1])?.relu()?;
    let logits = h.matmul(&p[2].t()?)?.broadcast_add(&p[3])?;
    let logp = log_softmax(&logits, D::Minus1)?;
    logp.gather(&y.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}

/// The loss `request` asks for, from per-sample losses (ImbSAM's head/tail are sums over `B`).
fn request_loss(
    request: GradRequest,
    p: &[Tensor],
    x: &Tensor,
    y: &Tensor,
    labels: &[u32],
) -> candle_core::Result<Tensor> {
    let dev = x.device();
    match request {
        GradRequest::Batch(_) => per_sample_loss(p, x, y)?.mean_all(),
        GradRequest::Fisher { samples } => {
            let n = samples.min(BATCH);
            per_sample_loss(p, &x.narrow(0, 0, n)?, &y.narrow(0, 0, n)?)
        }
        GradRequest::Head | GradRequest::Tail(_) => {
            let tail = matches!(request, GradRequest::Tail(_));
            let keep: Vec<f32> = labels
                .iter()
                .map(|&c| if (c == TAIL_CLASS) == tail { 1.0 } else { 0.0 })
                .collect();
            if tail && keep.iter().all(|&k| k == 0.0) {
                return no_tail(dev);
            }
            let keep = Tensor::new(keep, dev)?;
            (per_sample_loss(p, x, y)? * keep)?.sum_all()? / BATCH as f64
        }
    }
}

/// The reference: samkit-core on a flat vector, gradients by candle from fresh Vars.
fn reference(rule: Rule, base: BaseOptimizer) -> Vec<Vec<f32>> {
    let layout = layout();
    let mut opt = Optimizer::new(layout.clone(), rule, base).expect("valid optimizer");
    let mut w = initial_weights();
    let n = w.len();
    let (mut g, mut g2) = (vec![0.0f32; n], vec![0.0f32; n]);
    let mut out = Vec::new();
    for t in 0..STEPS {
        let (xs, labels) = batch(t);
        let x = Tensor::from_vec(xs, (BATCH, IN), &Device::Cpu).expect("x");
        let y = Tensor::new(labels.as_slice(), &Device::Cpu).expect("y");
        let oracle =
            |req: GradRequest, w: &Vec<f32>, grad: &mut Vec<f32>| -> samkit_core::Result<Eval> {
                let vars: Vec<Var> = layout
                    .segments()
                    .iter()
                    .map(|s| Var::from_slice(&w[s.range()], s.shape.as_slice(), &Device::Cpu))
                    .collect::<candle_core::Result<_>>()
                    .map_err(to_core)?;
                let p: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                let loss = request_loss(req, &p, &x, &y, &labels).map_err(to_core)?;
                let flat_grad = |loss: &Tensor| -> candle_core::Result<Vec<f32>> {
                    let store = loss.backward()?;
                    let mut flat = Vec::with_capacity(n);
                    for v in &vars {
                        match store.get(v) {
                            Some(g) => flat.extend(g.flatten_all()?.to_vec1::<f32>()?),
                            None => flat.extend(std::iter::repeat_n(0.0, v.elem_count())),
                        }
                    }
                    Ok(flat)
                };
                if let GradRequest::Fisher { .. } = req {
                    // Σ_i (∇ℓ_i)², in sample order, in plain f32 (the adapter uses candle's ops).
                    grad.fill(0.0);
                    for j in 0..loss.elem_count() {
                        let gj = flat_grad(&loss.get(j).map_err(to_core)?).map_err(to_core)?;
                        for (f, x) in grad.iter_mut().zip(gj) {
                            *f += x * x;
                        }
                    }
                    return Ok(Eval {
                        loss: 0.0,
                        samples: loss.elem_count(),
                    });
                }
                if loss.elem_count() == 0 {
                    return Ok(Eval {
                        loss: 0.0,
                        samples: 0,
                    });
                }
                grad.copy_from_slice(&flat_grad(&loss).map_err(to_core)?);
                let value = loss.to_scalar::<f32>().map_err(to_core)?;
                Ok(Eval {
                    loss: value as f64,
                    samples: 1,
                })
            };
        let report = drive_step(&mut opt, &mut w, (&mut g, &mut g2), oracle, &mut NoHooks)
            .expect("reference step");
        assert_eq!(report.outcome, Outcome::Applied, "reference step {t}");
        out.push(w.clone());
    }
    out
}

fn to_core(e: candle_core::Error) -> samkit_core::Error {
    samkit_core::Error::Protocol(format!("candle: {e}"))
}

/// The adapter on the CPU (see [`adapter_on`]).
fn adapter(rule: Rule, base: BaseOptimizer) -> Vec<Vec<f32>> {
    adapter_on(&Device::Cpu, CandleSam::new, rule, base)
}

/// Builds a `CandleSam` over the Vars (CPU: `CandleSam::new`, CUDA: `CandleSam::new_cuda`).
type Make<O> = fn(ParamVars, Rule, BaseOptimizer) -> samkit_candle::Result<CandleSam<O>>;

/// The adapter on candle Vars on `dev` holding the same initial weights, built by `make`: the
/// weights after each step, read back to the host.
fn adapter_on<O: Backend>(
    dev: &Device,
    make: Make<O>,
    rule: Rule,
    base: BaseOptimizer,
) -> Vec<Vec<f32>> {
    let w0 = initial_weights();
    let layout = layout();
    let params: Vec<ParamVar> = layout
        .segments()
        .iter()
        .map(|s| {
            let var = Var::from_slice(&w0[s.range()], s.shape.as_slice(), dev).expect("var");
            ParamVar::new(s.name.clone(), var)
        })
        .collect();
    let vars = ParamVars::new(params).expect("vars");
    assert_eq!(vars.layout(), &layout);
    let mut opt = make(vars, rule, base).expect("adapter");
    let mut out = Vec::new();
    for t in 0..STEPS {
        let (xs, labels) = batch(t);
        let x = Tensor::from_vec(xs, (BATCH, IN), dev).expect("x");
        let y = Tensor::new(labels.as_slice(), dev).expect("y");
        let p: Vec<Tensor> = opt.vars().vars().map(|v| v.as_tensor().clone()).collect();
        let report = opt
            .step(|req| request_loss(req, &p, &x, &y, &labels))
            .expect("adapter step");
        assert_eq!(report.outcome, Outcome::Applied, "adapter step {t}");
        out.push(flat(&opt));
    }
    out
}

fn flat<O: Backend>(opt: &CandleSam<O>) -> Vec<f32> {
    opt.vars()
        .vars()
        .flat_map(|v| {
            v.flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .expect("read var")
        })
        .collect()
}

fn assert_same_trajectory(rule: Rule, base: BaseOptimizer) {
    let name = rule.name();
    let want = reference(rule.clone(), base.clone());
    let got = adapter(rule, base);
    let w0 = initial_weights();
    for (t, (a, b)) in got.iter().zip(&want).enumerate() {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert_eq!(
                x.to_bits(),
                y.to_bits(),
                "{name}: step {t}, weight {i}: adapter {x}, samkit-core {y}"
            );
        }
    }
    // The weights moved: the comparison is not between two untouched copies.
    let last = want.last().expect("steps ran");
    assert!(last.iter().zip(&w0).any(|(a, b)| a != b), "{name}: no step");
}

fn sgd() -> BaseOptimizer {
    BaseOptimizer::Sgd(Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 5e-4,
        ..Sgd::default()
    })
}

fn sam() -> Rule {
    Rule::Sam(Sam {
        rho: 0.05,
        adaptive: false,
        ..Sam::default()
    })
}

fn friendly_sam() -> Rule {
    Rule::FriendlySam(FriendlySam {
        rho: 0.05,
        sigma: 1.0,
        lambda: 0.9,
        ..FriendlySam::default()
    })
}

/// AdamW with torch's betas and eps.
fn adamw() -> BaseOptimizer {
    BaseOptimizer::AdamW(Adam {
        lr: 0.01,
        weight_decay: 0.01,
        ..Adam::default()
    })
}

#[test]
fn sam_follows_samkit_core() {
    assert_same_trajectory(sam(), sgd());
}

#[test]
fn asam_follows_samkit_core_with_biases_classified() {
    assert_eq!(
        layout()
            .segments()
            .iter()
            .map(|s| s.kind)
            .collect::<Vec<_>>(),
        [
            ParamKind::Weight,
            ParamKind::Bias,
            ParamKind::Weight,
            ParamKind::Bias
        ]
    );
    let rule = Rule::Asam(Asam {
        rho: 0.5,
        eta: 0.01,
        filterwise: false,
        ..Asam::default()
    });
    assert_same_trajectory(rule, sgd());
}

#[test]
fn friendly_sam_follows_samkit_core() {
    assert_same_trajectory(friendly_sam(), adamw());
}

#[test]
fn ssam_fisher_follows_samkit_core() {
    let rule = Rule::Ssam(Ssam {
        rho: 0.05,
        sparsity: 0.5,
        interval: 3,
        norm: SsamNorm::Masked,
        mask: MaskKind::Fisher {
            samples: FISHER_SAMPLES,
        },
        ..Ssam::fisher()
    });
    assert_same_trajectory(rule, sgd());
}

#[test]
fn imbsam_follows_samkit_core_with_and_without_tail_samples() {
    assert!(batch(3).1.iter().all(|&c| c != TAIL_CLASS));
    let rule = Rule::ImbSam(ImbSam {
        rho: 0.05,
        tau: 20,
        kappa: 1.5,
        ..ImbSam::default()
    });
    assert_same_trajectory(rule, sgd());
}

/// The closure form asks for the clean then the perturbed loss, and the perturbed pass sees the
/// perturbed weights (SAM's ascent raises the loss).
#[test]
fn step_reports_both_losses() {
    let w0 = initial_weights();
    let params: Vec<ParamVar> = layout()
        .segments()
        .iter()
        .map(|s| {
            ParamVar::new(
                s.name.clone(),
                Var::from_slice(&w0[s.range()], s.shape.as_slice(), &Device::Cpu).expect("var"),
            )
        })
        .collect();
    let rule = Rule::Sam(Sam {
        rho: 0.5,
        adaptive: false,
        ..Sam::default()
    });
    let mut opt = CandleSam::new(ParamVars::new(params).expect("vars"), rule, sgd()).expect("opt");
    let (xs, labels) = batch(0);
    let x = Tensor::from_vec(xs, (BATCH, IN), &Device::Cpu).expect("x");
    let y = Tensor::new(labels.as_slice(), &Device::Cpu).expect("y");
    let p: Vec<Tensor> = opt.vars().vars().map(|v| v.as_tensor().clone()).collect();
    let mut seen = Vec::new();
    let report = opt
        .step(|req| {
            seen.push(req);
            request_loss(req, &p, &x, &y, &labels)
        })
        .expect("step");
    assert_eq!(
        seen,
        [
            GradRequest::Batch(Pass::Clean),
            GradRequest::Batch(Pass::Perturbed)
        ]
    );
    let perturbed = report.perturbed_loss.expect("a second pass");
    // SAM climbs: the loss at the perturbed weights is higher than at the clean ones.
    assert!(perturbed > report.loss, "{perturbed} <= {}", report.loss);
    assert_eq!(report.outcome, Outcome::Applied);
}

/// The CUDA path (feature `cuda`): the same MLP on `Device::new_cuda(0)`, stepped by
/// `GpuOptimizer` on the Vars' device buffers on candle's stream, follows the CPU adapter. What
/// this checks is the Var access on the device (nesting through `cuda_fwd`, the views, the
/// stream); the kernels' parity with samkit-core is samkit-cuda's own test. The two sides
/// differ by float rounding (cuBLAS's and the reductions' summation order), hence a tolerance.
#[cfg(feature = "cuda")]
mod cuda {
    use super::*;

    /// Largest |CUDA − CPU| allowed on a weight after each step: the gradients differ in the
    /// last bits (summation order), and 10 steps of SGD/AdamW on weights of size ~0.5 move that
    /// to ~1e-6; 1e-4 leaves room and still catches a missed or stale write (steps move the
    /// weights by ~1e-2).
    const WEIGHT_TOLERANCE: f32 = 1e-4;

    /// The CUDA device, or `None` after one printed skip line where there is no driver or no
    /// device (`SAMKIT_REQUIRE_CUDA=1`, set on a GPU machine, makes that a failure).
    fn cuda_or_skip() -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(d) => Some(d),
            Err(e) if std::env::var("SAMKIT_REQUIRE_CUDA").is_ok_and(|v| v == "1") => {
                panic!("SAMKIT_REQUIRE_CUDA=1 but no CUDA device: {e}")
            }
            Err(e) => {
                println!("skip: no CUDA device for the candle CUDA path ({e})");
                None
            }
        }
    }

    fn assert_cuda_follows_cpu(rule: Rule, base: BaseOptimizer) {
        let Some(dev) = cuda_or_skip() else {
            return;
        };
        let name = rule.name();
        let want = adapter(rule.clone(), base.clone());
        let got = adapter_on(&dev, CandleSam::new_cuda, rule, base);
        assert_eq!(got.len(), want.len());
        for (t, (a, b)) in got.iter().zip(&want).enumerate() {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!(
                    (x - y).abs() <= WEIGHT_TOLERANCE,
                    "{name}: step {t}, weight {i}: CUDA {x}, CPU {y}"
                );
            }
        }
        let w0 = initial_weights();
        let last = got.last().expect("steps ran");
        assert!(
            last.iter().zip(&w0).any(|(a, b)| a != b),
            "{name}: no step on CUDA"
        );
    }

    #[test]
    fn sam_on_cuda_follows_the_cpu_adapter() {
        assert_cuda_follows_cpu(sam(), sgd());
    }

    #[test]
    fn friendly_sam_adamw_on_cuda_follows_the_cpu_adapter() {
        assert_cuda_follows_cpu(friendly_sam(), adamw());
    }
}
