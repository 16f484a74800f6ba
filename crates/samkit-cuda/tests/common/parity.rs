//! Parity scenarios: the GPU (or its CPU emulation) against the CPU reference of samkit-core.
//!
//! Tolerances. f32: norms and dot products within 1e-12 relative (both sum in f64), every
//! weight and state element within 1e-6 relative (with an absolute floor of 1e-6 of the
//! vector's largest magnitude, for elements that cancel to almost nothing); masks, Fisher
//! sums and every restore bit-identical. bf16 and f16: within one unit in the last place of the
//! storage format of the CPU result rounded to it (2^-7 relative for bf16, 2^-10 for f16), the
//! f32 optimizer state within 1e-6.
use std::sync::Arc;

use cudarc::driver::CudaSlice;
use samkit_core::chunks::Chunks;
use samkit_core::passes::{dot_pass, norm_pass, Dir};
use samkit_core::{
    Adam, Asam, BaseOptimizer, Bitset, DropRate, FirstOutcome, FriendlySam, Gsam, ImbSam, Layout,
    LookSam, MaskKind, Optimizer, RmsProp, Rule, Sam, Sgd, Ssam, SsamNorm,
};
use samkit_cuda::{
    Device, DeviceParams, DeviceParamsMut, Elem, GpuOptimizer, Ops, StepVariant, TopkVariant,
    Variants,
};

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

/// Every element within `tol` relative, with an absolute floor of `tol` times the largest
/// magnitude of `want`.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let (a, b) = (a as f64, b as f64);
        if a.is_nan() && b.is_nan() {
            continue;
        }
        let err = (a - b).abs();
        let lim = tol * a.abs().max(b.abs()).max(scale);
        if err > lim || err.is_nan() {
            panic!("{what}: element {i}: gpu {a:e} vs cpu {b:e} (|diff| {err:e} > {lim:e})");
        }
    }
}

#[track_caller]
fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "{what}: element {i}: {a:e} vs {b:e}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Layouts

/// The sizes of the issue: 1, 3, 1000, 2^20 + 7 (one segment each) and the 62 segments of the
/// CIFAR ResNet-18 (11,173,962 parameters; the width-16 variant, 700k, under emulation).
pub fn sizes(dev: &Device) -> Vec<Layout> {
    let mut v = vec![
        Layout::flat(1).unwrap(),
        Layout::flat(3).unwrap(),
        Layout::flat(1000).unwrap(),
    ];
    v.push(Layout::flat((1 << 20) + 7).unwrap());
    if emulated(dev) {
        v.push(Layout::resnet18(10, 16).unwrap());
    } else {
        v.push(Layout::resnet18(10, 64).unwrap());
    }
    // `SAMKIT_PARITY_MAX=<n>`: only layouts of at most n parameters (compute-sanitizer runs).
    if let Some(max) = std::env::var("SAMKIT_PARITY_MAX")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        v.retain(|l| l.len() <= max);
    }
    v
}

/// Weight and bias segments, odd lengths (so that flat-arena segments start misaligned and the
/// kernels take their scalar paths), and one segment over several units.
pub fn mixed_layout() -> Layout {
    let mut l = Layout::new();
    l.push("a.weight", &[4, 5]).unwrap();
    l.push("a.bias", &[4]).unwrap();
    l.push("bn.weight", &[4]).unwrap();
    l.push("bn.bias", &[3]).unwrap();
    l.push("big.weight", &[70, 131]).unwrap();
    l.push("c.weight", &[3, 4]).unwrap();
    l.push("c.bias", &[3]).unwrap();
    l
}

// ---------------------------------------------------------------------------------------------
// Device buffers in both representations

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repr {
    Flat,
    List,
}

pub enum Buf<T> {
    Flat(CudaSlice<T>),
    List(Vec<CudaSlice<T>>),
}

impl<T: Elem> Buf<T> {
    pub fn upload(dev: &Device, layout: &Layout, v: &[f32], repr: Repr) -> Self {
        let s = dev.stream();
        let t: Vec<T> = v.iter().map(|&x| T::from_f32(x)).collect();
        match repr {
            Repr::Flat => Buf::Flat(s.clone_htod(&t).unwrap()),
            Repr::List => Buf::List(
                layout
                    .segments()
                    .iter()
                    .map(|seg| s.clone_htod(&t[seg.range()]).unwrap())
                    .collect(),
            ),
        }
    }

    pub fn download(&self, dev: &Device) -> Vec<f32> {
        let s = dev.stream();
        let v: Vec<T> = match self {
            Buf::Flat(b) => s.clone_dtoh(b).unwrap(),
            Buf::List(l) => l.iter().flat_map(|b| s.clone_dtoh(b).unwrap()).collect(),
        };
        v.into_iter().map(T::to_f32).collect()
    }
}

macro_rules! with_buf {
    ($b:expr, |$x:ident| $body:expr) => {
        match $b {
            Buf::Flat($x) => $body,
            Buf::List($x) => $body,
        }
    };
}

/// Pass 1 on device buffers of one representation: ImbSAM's split form with the head `g` and
/// `tail` when the rule takes it, else `first_step` with `g`.
pub fn gpu_first_step<T: Elem>(
    opt: &mut GpuOptimizer<T>,
    w: &mut Buf<T>,
    g: &Buf<T>,
    tail: Option<&Buf<T>>,
) -> FirstOutcome {
    match (w, g) {
        (Buf::Flat(w), Buf::Flat(g)) => {
            let t = tail.map(|t| match t {
                Buf::Flat(t) => t,
                _ => unreachable!(),
            });
            first_step_in(opt, w, g, t)
        }
        (Buf::List(w), Buf::List(g)) => {
            let t = tail.map(|t| match t {
                Buf::List(t) => t,
                _ => unreachable!(),
            });
            first_step_in(opt, w, g, t)
        }
        _ => unreachable!(),
    }
}

/// [`gpu_first_step`] on the buffers of one representation.
fn first_step_in<T: Elem, W, G>(
    opt: &mut GpuOptimizer<T>,
    w: &mut W,
    g: &G,
    tail: Option<&G>,
) -> FirstOutcome
where
    W: DeviceParamsMut<T> + ?Sized,
    G: DeviceParams<T> + ?Sized,
{
    if opt.needs_head_tail() {
        opt.first_step_split(w, g, tail).unwrap()
    } else {
        opt.first_step(w, g).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Kernels one by one

pub fn norm_and_dot_match_cpu(dev: &Arc<Device>) {
    for layout in sizes(dev) {
        let n = layout.len();
        let x = values(n, 1, 2.0);
        let y = values(n, 2, 2.0);
        let chunks = Chunks::new(&layout);
        let xs = chunks.split(layout.split(&x).unwrap());
        let ys = chunks.split(layout.split(&y).unwrap());
        let cpu_n = norm_pass(&chunks, Dir::PLAIN, &xs, None, None, None, None);
        let cpu_d = dot_pass(&chunks, Some(&xs), &ys);
        for repr in [Repr::Flat, Repr::List] {
            let dx = Buf::<f32>::upload(dev, &layout, &x, repr);
            let dy = Buf::<f32>::upload(dev, &layout, &y, repr);
            let mut ops = Ops::<f32>::new(dev, layout.clone()).unwrap();
            let r = with_buf!(&dx, |b| ops.norm_sq(b).unwrap());
            assert!(r.finite);
            assert!(
                rel(r.value, cpu_n.sum_sq) < 1e-12,
                "n={n}: {} vs {}",
                r.value,
                cpu_n.sum_sq
            );
            let d = match (&dx, &dy) {
                (Buf::Flat(a), Buf::Flat(b)) => ops.dot(a, b).unwrap(),
                (Buf::List(a), Buf::List(b)) => ops.dot(a, b).unwrap(),
                _ => unreachable!(),
            };
            assert!(d.finite);
            assert!(
                rel(d.value, cpu_d.xy) < 1e-12,
                "n={n}: {} vs {}",
                d.value,
                cpu_d.xy
            );
            assert!(rel(d.yy, cpu_d.yy) < 1e-12);
        }
        // The non-finite check sees every element.
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut z = x.clone();
            z[n - 1] = bad;
            let dz = Buf::<f32>::upload(dev, &layout, &z, Repr::Flat);
            let mut ops = Ops::<f32>::new(dev, layout.clone()).unwrap();
            let r = with_buf!(&dz, |b| ops.norm_sq(b).unwrap());
            assert!(!r.finite, "n={n}: {bad} not seen");
        }
        println!(
            "norm/dot n={n}: ‖x‖² {:.9e}, rel {:.1e}",
            cpu_n.sum_sq,
            rel(cpu_n.sum_sq, cpu_n.sum_sq)
        );
    }
}

/// Same bits whatever the grid, run after run.
pub fn reductions_are_deterministic(dev: &Arc<Device>) {
    let layout = sizes(dev).pop().expect("a layout");
    let x = values(layout.len(), 9, 3.0);
    let dx = dev.stream().clone_htod(&x).unwrap();
    let mut ops = Ops::<f32>::new(dev, layout).unwrap();
    let mut seen = Vec::new();
    // Both step arrangements: the fused one's last block must see the same partials, in the
    // same order, whatever the grid.
    for step in [StepVariant::Separate, StepVariant::Fused] {
        ops.set_variants(Variants {
            step,
            ..Variants::default()
        });
        for cap in [None, Some(1), Some(2), Some(7), None] {
            dev.set_max_blocks(cap);
            let r = ops.norm_sq(&dx).unwrap();
            let d = ops.dot(&dx, &dx).unwrap();
            seen.push((r.value.to_bits(), d.value.to_bits(), d.yy.to_bits()));
        }
    }
    dev.set_max_blocks(None);
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}

pub fn fisher_matches_cpu(dev: &Arc<Device>) {
    for layout in sizes(dev) {
        let n = layout.len();
        let gs: Vec<Vec<f32>> = (0..3).map(|s| values(n, 20 + s, 1.0)).collect();
        let mut want = vec![0f32; n];
        for g in &gs {
            samkit_core::passes::fisher_accumulate(&mut want, g);
        }
        let mut ops = Ops::<f32>::new(dev, layout.clone()).unwrap();
        let mut f = dev.stream().alloc_zeros::<f32>(n).unwrap();
        for (i, g) in gs.iter().enumerate() {
            let repr = if i % 2 == 0 { Repr::Flat } else { Repr::List };
            let dg = Buf::<f32>::upload(dev, &layout, g, repr);
            with_buf!(&dg, |b| ops.fisher_accumulate(&mut f, b).unwrap());
        }
        let got = dev.stream().clone_dtoh(&f).unwrap();
        assert_bits(&got, &want, &format!("fisher n={n}"));
        // Gradients in bf16: the same sums of the same (converted) values.
        let mut want16 = vec![0f32; n];
        let mut f16b = dev.stream().alloc_zeros::<f32>(n).unwrap();
        let mut ops16 = Ops::<half::bf16>::new(dev, layout.clone()).unwrap();
        for g in &gs {
            let r: Vec<f32> = g
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect();
            samkit_core::passes::fisher_accumulate(&mut want16, &r);
            let dg = Buf::<half::bf16>::upload(dev, &layout, g, Repr::Flat);
            with_buf!(&dg, |b| ops16.fisher_accumulate(&mut f16b, b).unwrap());
        }
        assert_bits(
            &dev.stream().clone_dtoh(&f16b).unwrap(),
            &want16,
            "fisher bf16",
        );
    }
}

fn ones(b: &Bitset) -> Vec<usize> {
    b.ones_iter().collect()
}

pub fn top_k_matches_cpu(dev: &Arc<Device>) {
    for layout in sizes(dev) {
        let n = layout.len();
        // Few distinct values: many ties at the threshold.
        let coarse: Vec<f32> = (0..n).map(|i| ((i * 7919) % 13) as f32 * 0.25).collect();
        let fine: Vec<f32> = values(n, 31, 4.0).iter().map(|x| x * x).collect();
        let mut signed = values(n, 32, 4.0);
        if n > 2 {
            signed[1] = -0.0;
            signed[2] = 0.0;
        }
        let ks = if emulated(dev) {
            vec![0, 1, n / 3, n, n + 5]
        } else {
            vec![0, 1, n / 3, n / 2, n.saturating_sub(1), n, n + 5]
        };
        let reprs = if emulated(dev) && n > 1000 {
            vec![Repr::List]
        } else {
            vec![Repr::Flat, Repr::List]
        };
        let mut ops = Ops::<f32>::new(dev, layout.clone()).unwrap();
        for (name, scores) in [("coarse", &coarse), ("fine", &fine), ("signed", &signed)] {
            for &k in &ks {
                let want = samkit_core::select::top_k_mask(scores, k);
                for &repr in &reprs {
                    let ds = Buf::<f32>::upload(dev, &layout, scores, repr);
                    // Every top-k arrangement gives the CPU's mask, hence the same mask.
                    for topk in TOPK_VARIANTS {
                        ops.set_variants(topk_variant(topk));
                        let got = with_buf!(&ds, |b| ops.top_k_mask::<f32, _>(b, k).unwrap());
                        assert_eq!(got.count_ones(), k.min(n), "{name} n={n} k={k} {topk:?}");
                        assert!(
                            got == want,
                            "{name} n={n} k={k} {repr:?} {topk:?}: masks differ"
                        );
                    }
                }
            }
        }
        // The vectorised scans run in the last block to finish (a ticket): the same mask
        // whatever the grid, with ties at the threshold (coarse scores).
        let ds = Buf::<f32>::upload(dev, &layout, &coarse, Repr::List);
        let want = samkit_core::select::top_k_mask(&coarse, n / 3);
        ops.set_variants(topk_variant(TopkVariant::Vectorized));
        for cap in [Some(1), Some(3), None] {
            dev.set_max_blocks(cap);
            let got = with_buf!(&ds, |b| ops.top_k_mask::<f32, _>(b, n / 3).unwrap());
            assert!(got == want, "coarse n={n} k={} grid cap {cap:?}", n / 3);
        }
        dev.set_max_blocks(None);
        // Scores stored in bf16 (8 to a 16-byte pack) select by their (converted) values.
        let r: Vec<f32> = fine
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        let want = samkit_core::select::top_k_mask(&r, n / 2);
        for repr in [Repr::Flat, Repr::List] {
            let ds = Buf::<half::bf16>::upload(dev, &layout, &fine, repr);
            for topk in TOPK_VARIANTS {
                ops.set_variants(topk_variant(topk));
                let got = with_buf!(&ds, |b| ops.top_k_mask::<half::bf16, _>(b, n / 2).unwrap());
                assert!(got == want, "bf16 scores n={n} {repr:?} {topk:?}");
            }
        }
    }
}

/// The top-k arrangements, each checked against the CPU reference (see
/// `samkit_cuda::variants`).
pub const TOPK_VARIANTS: [TopkVariant; 2] = [TopkVariant::Baseline, TopkVariant::Vectorized];

fn topk_variant(topk: TopkVariant) -> Variants {
    Variants {
        topk,
        ..Variants::default()
    }
}

pub fn ssam_d_masks_match_cpu(dev: &Arc<Device>) {
    for layout in sizes(dev) {
        let n = layout.len();
        let chunks = Chunks::new(&layout);
        let cases: &[(usize, u64)] = if emulated(dev) {
            &[(n / 2, 7u64), (1, 3)]
        } else {
            &[(n / 2, 7u64), (n - n / 10, 1 << 40), (1, 3)]
        };
        for (&(live, seed), topk) in cases.iter().flat_map(|c| TOPK_VARIANTS.map(|v| (c, v))) {
            let want = samkit_core::sparse::random_mask(n, live, seed);
            let mut ops = Ops::<f32>::new(dev, layout.clone()).unwrap();
            ops.set_variants(topk_variant(topk));
            let got = ops.random_mask(live, seed).unwrap();
            assert!(got == want, "random mask n={n} live={live} {topk:?}");
            let mut g = values(n, seed ^ 5, 2.0);
            // Ties in |g| across signs and exact zeros.
            for i in (0..n).step_by(17) {
                g[i] = if i % 2 == 0 { 0.5 } else { -0.5 };
            }
            let gs = chunks.split(layout.split(&g).unwrap());
            for (rate, update) in [(0.2f32, 1u32), (0.5, 7), (0.0, 2), (1.0, 3)] {
                let want =
                    samkit_core::sparse::drop_grow(&chunks, &gs, &got, n, rate, seed, update);
                for repr in [Repr::Flat, Repr::List] {
                    let dg = Buf::<f32>::upload(dev, &layout, &g, repr);
                    let d = with_buf!(&dg, |b| ops.drop_grow(b, &got, rate, seed, update).unwrap());
                    assert_eq!(d.count_ones(), live, "drop/grow keeps L n={n} {topk:?}");
                    assert!(
                        d == want,
                        "drop/grow n={n} live={live} rate={rate} {topk:?}: {:?}",
                        {
                            let (a, b) = (ones(&d), ones(&want));
                            a.iter().zip(&b).position(|(x, y)| x != y)
                        }
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The optimizer

/// A separable quadratic plus a cubic term plus per-batch noise: the gradient at `w + e` differs
/// non-linearly from the one at `w`. Part 1 (quadratic) is ImbSAM's head, part 2 its tail.
pub struct Problem {
    pub layout: Layout,
    curv: Vec<f32>,
    center: Vec<f32>,
}

impl Problem {
    pub fn new(layout: Layout) -> Self {
        let n = layout.len();
        Problem {
            curv: values(n, 101, 2.0).iter().map(|x| 1.5 + x).collect(),
            center: values(n, 102, 1.0),
            layout,
        }
    }

    pub fn init(&self) -> Vec<f32> {
        values(self.layout.len(), 103, 1.6)
    }

    pub fn grad(&self, w: &[f32], batch: u64, part: u8) -> Vec<f32> {
        let noise = values(w.len(), 1000 + batch, 0.2);
        w.iter()
            .enumerate()
            .map(|(i, &x)| {
                let d = x - self.center[i];
                let q = self.curv[i] * d;
                let t = 0.5 * d * d * d + noise[i];
                match part {
                    1 => q,
                    2 => t,
                    _ => q + t,
                }
            })
            .collect()
    }

    pub fn fisher(&self, w: &[f32], samples: usize) -> Vec<f32> {
        let mut f = vec![0f32; w.len()];
        for s in 0..samples {
            let g = self.grad(w, 5000 + s as u64, 0);
            samkit_core::passes::fisher_accumulate(&mut f, &g);
        }
        f
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

pub fn bases() -> Vec<(&'static str, BaseOptimizer)> {
    vec![
        ("sgd-momentum", sgd_momentum()),
        (
            "sgd-nesterov-damp0",
            BaseOptimizer::Sgd(Sgd {
                lr: 0.05,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 1e-3,
                ..Sgd::default()
            }),
        ),
        ("sgd-plain", BaseOptimizer::sgd(0.05, 0.0, 0.0)),
        (
            "sgd-dampening",
            BaseOptimizer::Sgd(Sgd {
                lr: 0.05,
                momentum: 0.8,
                dampening: 0.3,
                ..Sgd::default()
            }),
        ),
        (
            "adam",
            BaseOptimizer::Adam(Adam {
                lr: 1e-2,
                weight_decay: 1e-2,
                ..Adam::default()
            }),
        ),
        (
            "adamw",
            BaseOptimizer::AdamW(Adam {
                lr: 1e-2,
                weight_decay: 5e-2,
                ..Adam::default()
            }),
        ),
        (
            "adamw-amsgrad-maximize",
            BaseOptimizer::AdamW(Adam {
                lr: 1e-2,
                amsgrad: true,
                maximize: true,
                ..Adam::adamw()
            }),
        ),
        (
            "adam-amsgrad",
            BaseOptimizer::Adam(Adam {
                lr: 1e-2,
                amsgrad: true,
                ..Adam::default()
            }),
        ),
        ("rmsprop", BaseOptimizer::RmsProp(RmsProp::default())),
        (
            "rmsprop-centered-momentum",
            BaseOptimizer::RmsProp(RmsProp {
                lr: 1e-2,
                momentum: 0.5,
                centered: true,
                weight_decay: 1e-3,
                ..RmsProp::default()
            }),
        ),
        (
            "rmsprop-centered",
            BaseOptimizer::RmsProp(RmsProp {
                centered: true,
                ..RmsProp::default()
            }),
        ),
        // maximize negates the direction before the weight decay and every buffer.
        (
            "sgd-dampening-maximize",
            BaseOptimizer::Sgd(Sgd {
                lr: 0.05,
                momentum: 0.8,
                dampening: 0.3,
                weight_decay: 1e-3,
                maximize: true,
                ..Sgd::default()
            }),
        ),
        (
            "rmsprop-centered-momentum-maximize",
            BaseOptimizer::RmsProp(RmsProp {
                lr: 1e-2,
                momentum: 0.5,
                centered: true,
                weight_decay: 1e-3,
                maximize: true,
                ..RmsProp::default()
            }),
        ),
    ]
}

pub fn rules() -> Vec<(&'static str, Rule)> {
    let fisher = |norm| {
        Rule::Ssam(Ssam {
            interval: 2,
            norm,
            mask: MaskKind::Fisher { samples: 3 },
            ..Ssam::fisher()
        })
    };
    vec![
        ("base", Rule::Base),
        ("sam", Rule::Sam(Sam::default())),
        (
            "sam-adaptive",
            Rule::Sam(Sam {
                rho: 0.5,
                adaptive: true,
                eps_p: None,
                grad_centralization: false,
            }),
        ),
        (
            // Gradient centralization: the filter means of g on the 2-D segments of the layout.
            "sam-gc",
            Rule::Sam(Sam {
                grad_centralization: true,
                ..Sam::default()
            }),
        ),
        (
            "sam-adaptive-gc",
            Rule::Sam(Sam {
                rho: 0.5,
                adaptive: true,
                eps_p: None,
                grad_centralization: true,
            }),
        ),
        ("asam", Rule::Asam(Asam::default())),
        (
            "asam-filterwise",
            Rule::Asam(Asam {
                filterwise: true,
                ..Asam::default()
            }),
        ),
        ("friendlysam", Rule::FriendlySam(FriendlySam::default())),
        (
            "friendlysam-adaptive",
            Rule::FriendlySam(FriendlySam {
                adaptive: true,
                ..FriendlySam::default()
            }),
        ),
        ("ssam-f", fisher(SsamNorm::Masked)),
        ("ssam-f-full", fisher(SsamNorm::Full)),
        (
            // The official schedule: step 0 is one pass (no mask yet), then a Fisher after the
            // first batch of every epoch of 2 steps (K = 1 epoch), asked on both by the counters.
            "ssam-f-official",
            Rule::Ssam(Ssam {
                interval: 1,
                mask: MaskKind::Fisher { samples: 3 },
                ..Ssam::fisher_official(Some(2))
            }),
        ),
        (
            "ssam-d",
            Rule::Ssam(Ssam {
                interval: 2,
                ..Ssam::dynamic(11)
            }),
        ),
        (
            "ssam-d-cosine",
            Rule::Ssam(Ssam {
                interval: 1,
                sparsity: 0.3,
                mask: MaskKind::Dynamic {
                    drop: DropRate::Cosine {
                        r0: 0.5,
                        total_steps: 6,
                    },
                    seed: 5,
                },
                ..Ssam::fisher()
            }),
        ),
        ("imbsam", Rule::ImbSam(ImbSam::default())),
        (
            "imbsam-kappa2",
            Rule::ImbSam(ImbSam {
                kappa: 2.0,
                ..ImbSam::default()
            }),
        ),
        ("gsam", Rule::Gsam(Gsam::default())),
        (
            "gsam-alpha0",
            Rule::Gsam(Gsam {
                alpha: 0.0,
                ..Gsam::default()
            }),
        ),
        (
            "gsam-schedule",
            Rule::Gsam(Gsam {
                rho_max: 0.1,
                rho_min: 0.01,
                lr_max: 0.05,
                lr_min: 0.001,
                alpha: 0.3,
                // A large perturbation epsilon reaches the norm and the projection kernels.
                eps_p: Some(1e-2),
            }),
        ),
        (
            "sam-eps",
            Rule::Sam(Sam {
                eps_p: Some(0.5),
                ..Sam::default()
            }),
        ),
        (
            "looksam",
            Rule::LookSam(LookSam {
                k: 2,
                ..LookSam::default()
            }),
        ),
        (
            "looksam-per-tensor",
            Rule::LookSam(LookSam {
                k: 3,
                per_tensor: true,
                ..LookSam::default()
            }),
        ),
    ]
}

/// Where to put a non-finite value: `(step, pass)`, pass 1 or 2.
pub type Poison = Option<(usize, u8)>;

fn poisoned(mut g: Vec<f32>, at: Poison, step: usize, pass: u8) -> Vec<f32> {
    if at == Some((step, pass)) {
        let i = g.len() / 2;
        g[i] = if pass == 1 { f32::NAN } else { f32::INFINITY };
    }
    g
}

fn compare_state<T: Elem>(
    dev: &Device,
    cpu: &Optimizer,
    gpu: &mut GpuOptimizer<T>,
    w: &[f32],
    dw: &Buf<T>,
    tol: f64,
    what: &str,
) {
    assert_close(&dw.download(dev), w, tol, &format!("{what}: weights"));
    for name in cpu.base().state_buffers() {
        let want = cpu.base_state(name).unwrap();
        let got = gpu.base_state(name).unwrap().unwrap();
        assert_close(&got, want, 1e-6, &format!("{what}: {name}"));
    }
    let s = gpu.status().unwrap();
    assert_eq!(s.steps, cpu.steps(), "{what}: steps");
    assert_eq!(s.skipped, cpu.skipped_steps(), "{what}: skipped");
    assert_eq!(s.mask_updates, cpu.mask_updates(), "{what}: mask updates");
    assert_eq!(
        gpu.mask().unwrap().as_ref(),
        cpu.mask(),
        "{what}: sparse masks differ"
    );
    let m = gpu.friendly_momentum().unwrap();
    assert_close(
        &m,
        cpu.friendly_momentum(),
        1e-6,
        &format!("{what}: FriendlySAM m"),
    );
    assert_gv(&gpu.look_gv().unwrap(), cpu.looksam_gv(), what);
    // OG-SAM's g2_prev: a bit-exact copy of pass 2's gradient, present from the first completed
    // step on, on both.
    assert_bits(
        &gpu.og_prev().unwrap(),
        cpu.og_prev(),
        &format!("{what}: OG-SAM g2_prev"),
    );
}

/// LookSAM's `g_v`: the device's buffer is zeros where the CPU has none yet.
#[track_caller]
pub fn assert_gv(gpu: &[f32], cpu: &[f32], what: &str) {
    if cpu.is_empty() {
        assert!(
            gpu.iter().all(|&x| x == 0.0),
            "{what}: LookSAM g_v on the device before the first SAM step"
        );
    } else {
        assert_close(gpu, cpu, 1e-6, &format!("{what}: LookSAM g_v"));
    }
}

/// Runs `steps` steps of `rule` with `base` on the CPU and the device from the same weights, the
/// device fed the gradients of the CPU trajectory, and compares everything after every pass.
#[allow(clippy::too_many_arguments)]
pub fn run_pair(
    dev: &Arc<Device>,
    layout: &Layout,
    name: &str,
    rule: &Rule,
    base: &BaseOptimizer,
    steps: usize,
    repr: Repr,
    poison: Poison,
) {
    run_pair_with(dev, layout, name, rule, base, steps, repr, poison, &[]);
}

/// The kernel arrangements other than the default one (see `samkit_cuda::variants`), each run
/// as a twin of the default optimizer by [`run_pair_with`].
pub fn other_variants() -> Vec<Variants> {
    Variants::all()
        .into_iter()
        .filter(|v| *v != Variants::default())
        .collect()
}

/// The arrangements to twin with the default one for `rule`: the top-k variants matter to the
/// sparse rules only, so the others take the step variants alone (half the emulated time).
pub fn variants_for(rule: &Rule) -> Vec<Variants> {
    other_variants()
        .into_iter()
        .filter(|v| matches!(rule, Rule::Ssam(_)) || v.topk == TopkVariant::default())
        .collect()
}

/// A device optimizer in another kernel arrangement, fed what the default one is fed.
struct Twin {
    v: Variants,
    gpu: GpuOptimizer<f32>,
    dw: Buf<f32>,
    /// Kernel launches of the default optimizer and of the twin in this run.
    launches: (u64, u64),
}

fn launches() -> u64 {
    samkit_cuda::bench::launches_on_this_thread()
}

fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every variant gives the same bits: weights, base-optimizer state, counters, masks,
/// FriendlySAM's `m`, LookSAM's `g_v`.
fn assert_twin(dev: &Device, gpu: &mut GpuOptimizer<f32>, dw: &Buf<f32>, t: &mut Twin, what: &str) {
    let what = format!("{what} [{}]", t.v.name());
    assert_eq!(
        f32_bits(&t.dw.download(dev)),
        f32_bits(&dw.download(dev)),
        "{what}: weights differ from the default arrangement's"
    );
    for name in gpu.base().state_buffers() {
        let a = gpu.base_state(name).unwrap().unwrap();
        let b = t.gpu.base_state(name).unwrap().unwrap();
        assert_eq!(f32_bits(&b), f32_bits(&a), "{what}: {name} differs");
    }
    assert_eq!(
        t.gpu.status().unwrap(),
        gpu.status().unwrap(),
        "{what}: status"
    );
    assert_eq!(t.gpu.mask().unwrap(), gpu.mask().unwrap(), "{what}: mask");
    assert_eq!(
        f32_bits(&t.gpu.friendly_momentum().unwrap()),
        f32_bits(&gpu.friendly_momentum().unwrap()),
        "{what}: FriendlySAM m"
    );
    assert_eq!(
        f32_bits(&t.gpu.look_gv().unwrap()),
        f32_bits(&gpu.look_gv().unwrap()),
        "{what}: LookSAM g_v"
    );
}

/// [`run_pair`], plus one twin per arrangement of `twins` (see [`other_variants`]) fed the same
/// inputs and checked bit for bit against the default optimizer after every step; a twin with
/// the fused step must launch fewer kernels.
#[allow(clippy::too_many_arguments)]
pub fn run_pair_with(
    dev: &Arc<Device>,
    layout: &Layout,
    name: &str,
    rule: &Rule,
    base: &BaseOptimizer,
    steps: usize,
    repr: Repr,
    poison: Poison,
    twins: &[Variants],
) {
    let p = Problem::new(layout.clone());
    let mut cpu = Optimizer::new(layout.clone(), rule.clone(), base.clone()).unwrap();
    let mut gpu =
        GpuOptimizer::<f32>::new(dev, layout.clone(), rule.clone(), base.clone()).unwrap();
    gpu.time_mask_updates(true).unwrap();
    let mut w = p.init();
    let mut dw = Buf::<f32>::upload(dev, layout, &w, repr);
    let mut twins: Vec<Twin> = twins
        .iter()
        .map(|&v| {
            let mut g =
                GpuOptimizer::<f32>::new(dev, layout.clone(), rule.clone(), base.clone()).unwrap();
            g.set_variants(v).unwrap();
            assert_eq!(g.variants(), v);
            Twin {
                v,
                gpu: g,
                dw: Buf::<f32>::upload(dev, layout, &w, repr),
                launches: (0, 0),
            }
        })
        .collect();
    let what = format!("{name}/{} {repr:?}", base.name());
    assert_eq!(
        gpu.mask().unwrap().as_ref(),
        cpu.mask(),
        "{what}: initial mask"
    );
    for t in 0..steps {
        let what = format!("{what} step {t}");
        if t == 3 {
            let lr = base.lr() * 0.5;
            cpu.set_lr(lr).unwrap();
            gpu.set_lr(lr).unwrap();
            for tw in &mut twins {
                tw.gpu.set_lr(lr).unwrap();
            }
        }
        if t == 4 {
            // A ρ schedule: same answer on both (GSAM and the base rule refuse).
            let (a, b) = (cpu.set_rho(0.03), gpu.set_rho(0.03));
            assert_eq!(a.is_ok(), b.is_ok(), "{what}: set_rho");
            for tw in &mut twins {
                assert_eq!(tw.gpu.set_rho(0.03).is_ok(), b.is_ok(), "{what}: set_rho");
            }
        }
        let want_fisher = cpu.needs_fisher();
        assert_eq!(
            gpu.needs_fisher().unwrap(),
            want_fisher,
            "{what}: needs_fisher"
        );
        if let Some(s) = want_fisher {
            let f = p.fisher(&w, s);
            cpu.set_fisher(&f).unwrap();
            let df = Buf::<f32>::upload(dev, layout, &f, Repr::Flat);
            with_buf!(&df, |b| gpu.set_fisher::<f32, _>(b).unwrap());
            for tw in &mut twins {
                assert_eq!(tw.gpu.needs_fisher().unwrap(), want_fisher, "{what}");
                with_buf!(&df, |b| tw.gpu.set_fisher::<f32, _>(b).unwrap());
            }
            cpu.take_mask_time();
        }
        let before = w.clone();
        let mut twin_first = Vec::with_capacity(twins.len());
        // Pass 1 on the device and on every twin, counting each one's launches.
        let mut run_first =
            |first: &dyn Fn(&mut GpuOptimizer<f32>, &mut Buf<f32>) -> FirstOutcome| {
                let l0 = launches();
                let gfo = first(&mut gpu, &mut dw);
                let l1 = launches();
                for tw in &mut twins {
                    let l = launches();
                    twin_first.push(first(&mut tw.gpu, &mut tw.dw));
                    tw.launches.0 += l1 - l0;
                    tw.launches.1 += launches() - l;
                }
                gfo
            };
        let (fo, gfo) = if cpu.needs_head_tail() {
            let head = poisoned(p.grad(&w, t as u64, 1), poison, t, 1);
            let tail = (t != 2).then(|| p.grad(&w, t as u64, 2));
            let fo = cpu.first_step_split(&mut w, &head, tail.as_ref()).unwrap();
            let dh = Buf::<f32>::upload(dev, layout, &head, repr);
            let dt = tail
                .as_ref()
                .map(|t| Buf::<f32>::upload(dev, layout, t, repr));
            let split = |gpu: &mut GpuOptimizer<f32>, dw: &mut Buf<f32>| {
                gpu_first_step(gpu, dw, &dh, dt.as_ref())
            };
            (fo, run_first(&split))
        } else {
            let g = poisoned(p.grad(&w, t as u64, 0), poison, t, 1);
            let fo = cpu.first_step(&mut w, &g).unwrap();
            let dg = Buf::<f32>::upload(dev, layout, &g, repr);
            let first =
                |gpu: &mut GpuOptimizer<f32>, dw: &mut Buf<f32>| gpu_first_step(gpu, dw, &dg, None);
            (fo, run_first(&first))
        };
        // Both time the mask updates that run inside the first step (SSAM-D's drop/grow; on a
        // skipped step the device may have enqueued one that is then discarded).
        let (gpu_mask, cpu_mask) = (gpu.take_mask_time().unwrap(), cpu.take_mask_time());
        for (tw, o) in twins.iter().zip(&twin_first) {
            assert_eq!(*o, gfo, "{what} [{}]: first_step", tw.v.name());
        }
        if fo != FirstOutcome::Skipped {
            assert_eq!(
                gpu_mask.is_some(),
                cpu_mask.is_some(),
                "{what}: mask update timed"
            );
        }
        let second = |gpu: &mut GpuOptimizer<f32>, dw: &mut Buf<f32>, g2: &[f32]| {
            let dg2 = Buf::<f32>::upload(dev, layout, g2, repr);
            match (dw, &dg2) {
                (Buf::Flat(w), Buf::Flat(g)) => gpu.second_step(w, g).unwrap(),
                (Buf::List(w), Buf::List(g)) => gpu.second_step(w, g).unwrap(),
                _ => unreachable!(),
            }
        };
        match fo {
            FirstOutcome::Perturbed => {
                assert_eq!(gfo, FirstOutcome::Perturbed, "{what}");
                assert_close(
                    &dw.download(dev),
                    &w,
                    1e-6,
                    &format!("{what}: perturbed weights"),
                );
                let part = if cpu.needs_head_tail() { 2 } else { 0 };
                let g2 = poisoned(p.grad(&w, t as u64, part), poison, t, 2);
                let out = cpu.second_step(&mut w, &g2).unwrap();
                let l0 = launches();
                assert_eq!(second(&mut gpu, &mut dw, &g2), out, "{what}: second_step");
                let l1 = launches();
                for tw in &mut twins {
                    let l = launches();
                    let o = second(&mut tw.gpu, &mut tw.dw, &g2);
                    assert_eq!(o, out, "{what} [{}]: second_step", tw.v.name());
                    tw.launches.0 += l1 - l0;
                    tw.launches.1 += launches() - l;
                }
                if out == samkit_core::Outcome::Skipped {
                    assert_bits(&w, &before, &format!("{what}: cpu restore"));
                    assert_bits(&dw.download(dev), &before, &format!("{what}: gpu restore"));
                }
            }
            FirstOutcome::Applied => assert_eq!(gfo, FirstOutcome::Applied, "{what}"),
            FirstOutcome::Skipped => {
                // The device decides the skip and first_step waits for it: the CPU's outcome.
                assert_eq!(gfo, FirstOutcome::Skipped, "{what}");
                assert!(!gpu.is_perturbed(), "{what}: idle after a skip");
                assert_bits(&dw.download(dev), &before, &format!("{what}: skipped step"));
                assert_eq!(
                    gpu.last_outcome().unwrap(),
                    Some(samkit_core::Outcome::Skipped)
                );
            }
        }
        compare_state(dev, &cpu, &mut gpu, &w, &dw, 1e-6, &what);
        for tw in &mut twins {
            assert_twin(dev, &mut gpu, &dw, tw, &what);
        }
    }
    // Fewer launches is the fused arrangement's point; compared where the top-k selection is
    // the default's, so the step arrangement is the only difference.
    for tw in &twins {
        if tw.v.step == StepVariant::Fused && tw.v.topk == TopkVariant::default() && steps > 0 {
            assert!(
                tw.launches.1 < tw.launches.0,
                "{what} [{}]: {} launches, the default arrangement {}",
                tw.v.name(),
                tw.launches.1,
                tw.launches.0
            );
        }
    }
}

pub fn every_rule_matches_cpu(dev: &Arc<Device>) {
    let layout = mixed_layout();
    for (name, rule) in rules() {
        let twins = variants_for(&rule);
        for repr in [Repr::Flat, Repr::List] {
            let r = &rule;
            run_pair_with(
                dev,
                &layout,
                name,
                r,
                &sgd_momentum(),
                6,
                repr,
                None,
                &twins,
            );
        }
        println!(
            "{name}: matches the CPU over 6 steps (flat arena and list), the same bits in {} \
             other kernel arrangements",
            twins.len()
        );
    }
}

pub fn every_base_optimizer_matches_cpu(dev: &Arc<Device>) {
    let layout = mixed_layout();
    let picks = ["sam", "gsam", "looksam", "imbsam", "friendlysam"];
    for (bname, base) in bases() {
        for (name, rule) in rules().into_iter().filter(|(n, _)| picks.contains(n)) {
            run_pair(dev, &layout, name, &rule, &base, 5, Repr::Flat, None);
        }
        println!("{bname}: matches the CPU");
    }
}

pub fn non_finite_gradients_skip_exactly(dev: &Arc<Device>) {
    let layout = mixed_layout();
    for (name, rule) in rules() {
        let twins = variants_for(&rule);
        for poison in [Some((1, 1)), Some((2, 2)), Some((0, 1))] {
            run_pair_with(
                dev,
                &layout,
                name,
                &rule,
                &sgd_momentum(),
                4,
                Repr::Flat,
                poison,
                &twins,
            );
        }
    }
    for (_, base) in bases() {
        run_pair(
            dev,
            &layout,
            "sam",
            &Rule::Sam(Sam::default()),
            &base,
            3,
            Repr::List,
            Some((1, 2)),
        );
    }
}

/// With `set_sync_outcomes(false)` `first_step` never waits: a non-finite gradient of pass 1
/// answers `Perturbed` (weights untouched) and the skip surfaces from `second_step`; a skipped
/// one-pass step answers `Applied` and shows in `status`.
pub fn unsynced_outcomes_surface_from_second_step(dev: &Arc<Device>) {
    use samkit_core::{Outcome, Status};
    let layout = mixed_layout();
    let p = Problem::new(layout.clone());
    let w = p.init();
    let bad = poisoned(p.grad(&w, 0, 0), Some((0, 1)), 0, 1);
    for (rule, first) in [
        (Rule::Sam(Sam::default()), FirstOutcome::Perturbed),
        (Rule::Base, FirstOutcome::Applied),
    ] {
        let mut gpu =
            GpuOptimizer::<f32>::new(dev, layout.clone(), rule.clone(), sgd_momentum()).unwrap();
        assert!(gpu.sync_outcomes());
        gpu.set_sync_outcomes(false);
        let mut dw = dev.stream().clone_htod(&w).unwrap();
        let dg = dev.stream().clone_htod(&bad).unwrap();
        assert_eq!(gpu.first_step(&mut dw, &dg).unwrap(), first, "{rule:?}");
        if first == FirstOutcome::Perturbed {
            assert_eq!(
                gpu.second_step(&mut dw, &dg).unwrap(),
                Outcome::Skipped,
                "{rule:?}"
            );
        }
        assert_bits(
            &dev.stream().clone_dtoh(&dw).unwrap(),
            &w,
            &format!("{rule:?}: skipped"),
        );
        let want = Status {
            skipped: 1,
            last_skipped: true,
            ..Status::default()
        };
        assert_eq!(gpu.status().unwrap(), want, "{rule:?}");
    }
}

/// The trainer's setting: the context tracks no events (samkit-nn's backend turns cross-stream
/// tracking off) and `first_step` does not wait. The counters that SSAM-F's Fisher, SSAM-D's
/// drop/grow and LookSAM's full steps are scheduled by must still be read after their copy from
/// the device arrives: on the H200 they were read before it, a step late, until the optimizer
/// waited on an event of its own. Nothing here waits for the device between steps but the
/// optimizer itself (uploads from pageable memory return at once).
pub fn schedules_read_arrived_counters_without_event_tracking(shared: &Arc<Device>) {
    // A context object of its own, so that turning tracking off touches no other test.
    let ctx = cudarc::driver::CudaContext::new(shared.context().ordinal()).unwrap();
    // SAFETY: every buffer of this test is allocated, used and freed on this one stream.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().unwrap();
    let dev = &Device::with_stream(ctx, stream).unwrap();
    let layout = mixed_layout();
    let p = Problem::new(layout.clone());
    let picked = ["ssam-f", "ssam-f-official", "ssam-d", "looksam"];
    let rules: Vec<_> = rules()
        .into_iter()
        .filter(|(n, _)| picked.contains(n))
        .collect();
    assert_eq!(rules.len(), picked.len());
    for (name, rule) in rules {
        let mut cpu = Optimizer::new(layout.clone(), rule.clone(), sgd_momentum()).unwrap();
        let mut gpu =
            GpuOptimizer::<f32>::new(dev, layout.clone(), rule.clone(), sgd_momentum()).unwrap();
        gpu.set_sync_outcomes(false);
        let mut w = p.init();
        let mut dw = dev.stream().clone_htod(&w).unwrap();
        for t in 0..8u64 {
            let what = format!("{name} step {t}");
            let want = cpu.needs_fisher();
            assert_eq!(gpu.needs_fisher().unwrap(), want, "{what}: needs_fisher");
            if let Some(samples) = want {
                let f = p.fisher(&w, samples);
                cpu.set_fisher(&f).unwrap();
                let df = dev.stream().clone_htod(&f).unwrap();
                gpu.set_fisher(&df).unwrap();
            }
            let g = p.grad(&w, t, 0);
            let fo = cpu.first_step(&mut w, &g).unwrap();
            let dg = dev.stream().clone_htod(&g).unwrap();
            assert_eq!(
                gpu.first_step(&mut dw, &dg).unwrap(),
                fo,
                "{what}: first_step"
            );
            if fo == FirstOutcome::Perturbed {
                let g2 = p.grad(&w, t, 0);
                let out = cpu.second_step(&mut w, &g2).unwrap();
                let dg2 = dev.stream().clone_htod(&g2).unwrap();
                assert_eq!(gpu.second_step(&mut dw, &dg2).unwrap(), out, "{what}");
            }
            assert_eq!(gpu.status().unwrap(), cpu.status(), "{what}: counters");
        }
        assert_eq!(gpu.mask().unwrap().as_ref(), cpu.mask(), "{name}: mask");
        assert_close(
            &dev.stream().clone_dtoh(&dw).unwrap(),
            &w,
            1e-5,
            &format!("{name}: weights after 8 steps"),
        );
    }
}

/// The 62 ResNet-18 segments (11,173,962 parameters on a GPU): SAM, GSAM, LookSAM with SGD
/// momentum, two steps each, flat arena and list.
pub fn resnet18_matches_cpu(dev: &Arc<Device>) {
    let layout = sizes(dev).pop().expect("a layout");
    let picks = [
        "sam",
        "asam-filterwise",
        "gsam",
        "looksam-per-tensor",
        "ssam-d",
        "friendlysam",
    ];
    for (name, rule) in rules().into_iter().filter(|(n, _)| picks.contains(n)) {
        // The other arrangements on the flat arena only: the list form adds nothing to what
        // they share with the default one.
        let twins = variants_for(&rule);
        run_pair_with(
            dev,
            &layout,
            name,
            &rule,
            &sgd_momentum(),
            2,
            Repr::Flat,
            None,
            &twins,
        );
        run_pair(
            dev,
            &layout,
            name,
            &rule,
            &sgd_momentum(),
            2,
            Repr::List,
            None,
        );
    }
    let sam = Rule::Sam(Sam::default());
    let twins = variants_for(&sam);
    for size in sizes(dev) {
        run_pair_with(
            dev,
            &size,
            "sam",
            &sam,
            &sgd_momentum(),
            2,
            Repr::Flat,
            None,
            &twins,
        );
    }
}

/// One step in bf16 or f16 against the CPU on the same (representable) values, rounded.
pub fn half_precision_step<T: Elem>(dev: &Arc<Device>, ulp: f64) {
    let layout = mixed_layout();
    let p = Problem::new(layout.clone());
    let round =
        |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| T::from_f32(x).to_f32()).collect() };
    for (name, rule) in rules().into_iter().filter(|(n, _)| {
        [
            "sam",
            "asam",
            "gsam",
            "friendlysam",
            "ssam-d",
            "looksam",
            "imbsam",
            "base",
        ]
        .contains(n)
    }) {
        for (bname, base) in bases()
            .into_iter()
            .filter(|(n, _)| ["sgd-momentum", "adam", "rmsprop"].contains(n))
        {
            let mut cpu = Optimizer::new(layout.clone(), rule.clone(), base.clone()).unwrap();
            let mut gpu =
                GpuOptimizer::<T>::new(dev, layout.clone(), rule.clone(), base.clone()).unwrap();
            let mut w = round(p.init());
            let mut dw = Buf::<T>::upload(dev, &layout, &w, Repr::Flat);
            let Buf::Flat(dws) = &mut dw else {
                unreachable!()
            };
            let g = round(p.grad(&w, 0, 1));
            let dg = dev
                .stream()
                .clone_htod(&g.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>())
                .unwrap();
            let (fo, gfo) = if cpu.needs_head_tail() {
                let t = round(p.grad(&w, 0, 2));
                let dt = dev
                    .stream()
                    .clone_htod(&t.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>())
                    .unwrap();
                (
                    cpu.first_step_split(&mut w, &g, Some(&t)).unwrap(),
                    gpu.first_step_split(dws, &dg, Some(&dt)).unwrap(),
                )
            } else {
                (
                    cpu.first_step(&mut w, &g).unwrap(),
                    gpu.first_step(dws, &dg).unwrap(),
                )
            };
            assert_eq!(fo, gfo);
            if fo == FirstOutcome::Perturbed {
                let got = round(
                    dev.stream()
                        .clone_dtoh(dws)
                        .unwrap()
                        .into_iter()
                        .map(T::to_f32)
                        .collect(),
                );
                check_ulp(
                    &got,
                    &round(w.clone()),
                    ulp,
                    &format!("{name}/{bname} perturbed"),
                );
                // Pass 2 from the device's (rounded) perturbed weights, for both.
                let g2 = round(p.grad(&got, 1, 0));
                let dg2 = dev
                    .stream()
                    .clone_htod(&g2.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>())
                    .unwrap();
                cpu.second_step(&mut w, &g2).unwrap();
                gpu.second_step(dws, &dg2).unwrap();
            }
            let got: Vec<f32> = dev
                .stream()
                .clone_dtoh(dws)
                .unwrap()
                .into_iter()
                .map(T::to_f32)
                .collect();
            check_ulp(&got, &round(w.clone()), ulp, &format!("{name}/{bname}"));
            for s in cpu.base().state_buffers() {
                assert_close(
                    &gpu.base_state(s).unwrap().unwrap(),
                    cpu.base_state(s).unwrap(),
                    1e-6,
                    s,
                );
            }
        }
    }
}

#[track_caller]
fn check_ulp(got: &[f32], want: &[f32], ulp: f64, what: &str) {
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let lim = ulp * (b.abs() as f64).max(f32::MIN_POSITIVE as f64 * 1e3);
        assert!(
            ((a - b).abs() as f64) <= lim,
            "{what}: element {i}: gpu {a:e} vs cpu {b:e} (more than one unit in the last place)"
        );
    }
}

/// The closure form gives what the CPU's closure form gives.
pub fn closure_form_matches_cpu(dev: &Arc<Device>) {
    use samkit_core::{Eval, GradRequest, Pass};
    let layout = mixed_layout();
    let p = Arc::new(Problem::new(layout.clone()));
    for (name, rule) in rules() {
        let base = sgd_momentum();
        let mut cpu = Optimizer::new(layout.clone(), rule.clone(), base.clone()).unwrap();
        let mut gpu = GpuOptimizer::<f32>::new(dev, layout.clone(), rule.clone(), base).unwrap();
        let mut w = p.init();
        let mut dw = dev.stream().clone_htod(&w).unwrap();
        for t in 0..5u64 {
            let cp = p.clone();
            let rc = cpu
                .step(&mut w, |req, w: &Vec<f32>, out: &mut [f32]| {
                    let g = match req {
                        GradRequest::Batch(_) => cp.grad(w, t, 0),
                        GradRequest::Head => cp.grad(w, t, 1),
                        GradRequest::Tail(_) => cp.grad(w, t, 2),
                        GradRequest::Fisher { samples } => cp.fisher(w, samples),
                    };
                    out.copy_from_slice(&g);
                    Ok(Eval {
                        loss: 1.0,
                        samples: 1,
                    })
                })
                .unwrap();
            let gp = p.clone();
            let dev2 = dev.clone();
            let rg = gpu
                .step(
                    &mut dw,
                    |req, w: &CudaSlice<f32>, out: &mut CudaSlice<f32>| {
                        let wh = dev2.stream().clone_dtoh(w).unwrap();
                        let g = match req {
                            GradRequest::Batch(_) => gp.grad(&wh, t, 0),
                            GradRequest::Head => gp.grad(&wh, t, 1),
                            GradRequest::Tail(Pass::Clean | Pass::Perturbed) => gp.grad(&wh, t, 2),
                            GradRequest::Fisher { samples } => gp.fisher(&wh, samples),
                        };
                        dev2.stream().memcpy_htod(&g, out).unwrap();
                        Ok(Eval {
                            loss: 1.0,
                            samples: 1,
                        })
                    },
                )
                .unwrap();
            assert_eq!(rg, rc, "{name} step {t}: reports");
            // Trajectories may drift apart by rounding, each step's gradient coming from its
            // own weights: compare loosely.
            assert_close(
                &dev.stream().clone_dtoh(&dw).unwrap(),
                &w,
                1e-4,
                &format!("{name} step {t}"),
            );
        }
    }
}
