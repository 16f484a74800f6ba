//! The checks of the passes that ALGORITHMS.md's cheaper second passes need (SSAM-L's partial
//! passes, the no-gradient forward, per-sample losses, subset passes), written once for any
//! model on any backend: `tests/partial_passes.rs` runs them on the CPU, `tests/emulated_partial.rs`
//! on the CUDA backend over the emulated device.
//!
//! "Bit-identical" is meant literally: a pass from unit `u` runs the same operations on the
//! same values as the full pass for the units `≥ u`, so every comparison here is `==`.
#![allow(dead_code)]
use samkit_nn::model::{BackwardExtent, Targets};
use samkit_nn::{mean_weights, Backend, BnMode, Cpu, Mlp, Model, ResNet18, Tensor};

/// A backend's owned arena and how it moves between the host and the backend.
pub trait HostArena: Backend {
    /// An owned arena (`Vec<f32>` on the CPU, a device slice with CUDA).
    type Owned;
    fn up(&mut self, v: &[f32]) -> Self::Owned;
    fn down(&mut self, a: &Self::Owned) -> Vec<f32>;
    fn a(o: &Self::Owned) -> &Self::Arena;
    fn am(o: &mut Self::Owned) -> &mut Self::Arena;
}

impl HostArena for Cpu {
    type Owned = Vec<f32>;
    fn up(&mut self, v: &[f32]) -> Vec<f32> {
        v.to_vec()
    }
    fn down(&mut self, a: &Vec<f32>) -> Vec<f32> {
        a.clone()
    }
    fn a(o: &Vec<f32>) -> &[f32] {
        o
    }
    fn am(o: &mut Vec<f32>) -> &mut [f32] {
        o
    }
}

/// An owned arena of `M`'s backend.
pub type Owned<M> = <<M as Model>::Backend as HostArena>::Owned;
/// The arena type of `M`'s backend.
pub type Arena<M> = <<M as Model>::Backend as Backend>::Arena;

/// Moving parameters between the host and a model's arena (through its backend's
/// [`HostArena`]), and reading its running statistics.
pub trait Io: Model<Backend: HostArena> {
    fn backend(&mut self) -> &mut Self::Backend;
    /// Running mean and variance of every batch-norm layer (none for an MLP).
    fn stats(&mut self) -> Vec<(Vec<f32>, Vec<f32>)>;

    fn up(&mut self, v: &[f32]) -> Owned<Self> {
        self.backend().up(v)
    }
    fn down(&mut self, a: &Owned<Self>) -> Vec<f32> {
        self.backend().down(a)
    }
    fn a(o: &Owned<Self>) -> &Arena<Self> {
        <Self::Backend as HostArena>::a(o)
    }
    fn am(o: &mut Owned<Self>) -> &mut Arena<Self> {
        <Self::Backend as HostArena>::am(o)
    }
}

impl<B: HostArena> Io for ResNet18<B> {
    fn backend(&mut self) -> &mut B {
        self.backend_mut()
    }
    fn stats(&mut self) -> Vec<(Vec<f32>, Vec<f32>)> {
        self.running_stats().unwrap()
    }
}

impl<B: HostArena> Io for Mlp<B> {
    fn backend(&mut self) -> &mut B {
        self.backend_mut()
    }
    fn stats(&mut self) -> Vec<(Vec<f32>, Vec<f32>)> {
        Vec::new()
    }
}

/// A sentinel the truncated backward must leave in the gradients of the units before `u`.
const UNTOUCHED: f32 = 7.0;
/// Size of the perturbation of the units `≥ u` (about SAM's `ρ` spread over the weights).
const PERTURBATION: f32 = 1e-2;

/// Deterministic pseudo-random values in `[-1, 1)`.
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// One training pass at `w` on `(x, y)` with mean sample weights: running statistics that are
/// not the initial ones for the checks that compare in Eval mode, and a kept pass.
pub fn train_pass<M: Io>(m: &mut M, w: &[f32], x: &Tensor, y: &[usize]) {
    let wd = m.up(w);
    let mut g = m.up(&vec![0.0; w.len()]);
    let wts = mean_weights(x.shape()[0]);
    m.forward_backward(M::a(&wd), x, y.into(), &wts, BnMode::Train, M::am(&mut g))
        .unwrap();
}

/// The parameter range (in the arena) of the units `u..`.
fn suffix_range<M: Model>(m: &M, u: usize) -> std::ops::Range<usize> {
    let segs = m.layout().segments();
    let first = m.units()[u].segments.start;
    segs[first].offset..m.layout().len()
}

/// SSAM-L's partial passes from each unit of `starts`: with the units before `u` unperturbed,
/// a pass from `u` (backward through everything) is bit-identical to a full pass 2 in losses
/// and in the whole gradient; the truncated one in the losses and the gradients of the units
/// `≥ u`, leaving the others untouched; neither touches the running statistics.
pub fn partial_passes_are_exact<M: Io>(
    m: &mut M,
    w: &[f32],
    x: &Tensor,
    y: Targets<'_>,
    starts: &[usize],
) {
    let n = x.shape()[0];
    let wts = mean_weights(n);
    let len = w.len();
    let wd = m.up(w);
    for &u in starts {
        let suffix = suffix_range(m, u);
        let mut w2 = w.to_vec();
        for (v, e) in w2[suffix.clone()]
            .iter_mut()
            .zip(noise(suffix.len(), u as u64 + 1))
        {
            *v += PERTURBATION * e;
        }
        let w2d = m.up(&w2);
        let mut g = m.up(&vec![0.0; len]);

        m.forward_backward(M::a(&wd), x, y, &wts, BnMode::Train, M::am(&mut g))
            .unwrap();
        let stats = m.stats();
        let partial = m
            .forward_backward_from(M::a(&w2d), u, y, &wts, BackwardExtent::Full, M::am(&mut g))
            .unwrap();
        let g_partial = m.down(&g);
        assert_eq!(
            m.stats(),
            stats,
            "a pass from unit {u} touched the running statistics"
        );
        // The same start again continues the same kept pass.
        let again = m
            .forward_backward_from(M::a(&w2d), u, y, &wts, BackwardExtent::Full, M::am(&mut g))
            .unwrap();
        assert_eq!(again, partial, "a second pass from unit {u}");
        if u + 1 < m.units().len() {
            let err = m.forward_backward_from(
                M::a(&w2d),
                u + 1,
                y,
                &wts,
                BackwardExtent::Full,
                M::am(&mut g),
            );
            assert!(
                err.is_err(),
                "unit {}'s kept input was overwritten by the pass from {u}",
                u + 1
            );
        }

        let full = m
            .forward_backward(M::a(&w2d), x, y, &wts, BnMode::TrainNoUpdate, M::am(&mut g))
            .unwrap();
        let g_full = m.down(&g);
        assert_eq!(
            partial, full,
            "losses of the pass from unit {u} vs a full pass 2"
        );
        assert!(
            g_partial == g_full,
            "gradient of the pass from unit {u} differs from a full pass 2's"
        );

        // Truncated: pass 1 again (without touching the statistics), then from u.
        m.forward_backward(M::a(&wd), x, y, &wts, BnMode::TrainNoUpdate, M::am(&mut g))
            .unwrap();
        let mut gt = m.up(&vec![UNTOUCHED; len]);
        let trunc = m
            .forward_backward_from(
                M::a(&w2d),
                u,
                y,
                &wts,
                BackwardExtent::StopAtStart,
                M::am(&mut gt),
            )
            .unwrap();
        let gt = m.down(&gt);
        assert_eq!(trunc, full, "losses of the truncated pass from unit {u}");
        assert!(
            gt[..suffix.start].iter().all(|&v| v == UNTOUCHED),
            "truncated pass from {u} wrote before it"
        );
        assert!(
            gt[suffix.clone()] == g_full[suffix.clone()],
            "truncated gradient from unit {u}"
        );
        assert_eq!(m.stats(), stats, "passes 2 touched the running statistics");
    }
}

/// The no-gradient forward: its per-sample losses are bit-identical to a pass with gradient in
/// the same mode, and it leaves the kept pass alone (a pass from a unit after it equals one
/// without it), even on another batch.
pub fn nograd_forward_matches_and_keeps_the_kept_pass<M: Io>(
    m: &mut M,
    w: &[f32],
    (x, y): (&Tensor, &[usize]),
    other: (&Tensor, &[usize]),
    u: usize,
) {
    let y = Targets::from(y);
    let other = (other.0, Targets::from(other.1));
    let n = x.shape()[0];
    let wts = mean_weights(n);
    let wd = m.up(w);
    let mut g = m.up(&vec![0.0; w.len()]);
    for mode in [BnMode::TrainNoUpdate, BnMode::Eval] {
        let with = m
            .forward_backward(M::a(&wd), x, y, &wts, mode, M::am(&mut g))
            .unwrap();
        let without = m.forward_losses(M::a(&wd), x, y, mode).unwrap();
        assert_eq!(
            without.per_sample, with.per_sample,
            "{mode:?}: per-sample losses"
        );
        assert_eq!(without.loss, with.loss, "{mode:?}: mean loss");
        assert_eq!(without.samples, n);
        let logits = m.forward(M::a(&wd), x, mode).unwrap();
        assert_eq!(logits.shape()[0], n);
    }
    let stats = m.stats();
    m.forward_backward(M::a(&wd), x, y, &wts, BnMode::TrainNoUpdate, M::am(&mut g))
        .unwrap();
    let alone = m
        .forward_backward_from(M::a(&wd), u, y, &wts, BackwardExtent::Full, M::am(&mut g))
        .unwrap();
    let g_alone = m.down(&g);
    m.forward_backward(M::a(&wd), x, y, &wts, BnMode::TrainNoUpdate, M::am(&mut g))
        .unwrap();
    let mut w3 = w.to_vec();
    for (v, e) in w3.iter_mut().zip(noise(w.len(), 99)) {
        *v += PERTURBATION * e;
    }
    let w3d = m.up(&w3);
    m.forward_losses(M::a(&w3d), other.0, other.1, BnMode::TrainNoUpdate)
        .unwrap();
    m.forward(M::a(&w3d), other.0, BnMode::Eval).unwrap();
    let after = m
        .forward_backward_from(M::a(&wd), u, y, &wts, BackwardExtent::Full, M::am(&mut g))
        .unwrap();
    assert_eq!(
        after, alone,
        "a no-gradient forward disturbed the kept pass"
    );
    assert!(
        m.down(&g) == g_alone,
        "a no-gradient forward disturbed the kept gradient"
    );
    assert_eq!(
        m.stats(),
        stats,
        "no-gradient forwards out of Train mode touched the statistics"
    );
}

/// A pass on a subset of the batch is the pass on the gathered samples with the subset's mean
/// loss; with samples independent (batch norm on running statistics) each sample's loss is
/// the one it has in the whole batch.
pub fn subset_pass_is_the_gathered_batch<M: Io>(m: &mut M, w: &[f32], x: &Tensor, y: &[usize]) {
    let n = x.shape()[0];
    let wd = m.up(w);
    let mut g = m.up(&vec![0.0; w.len()]);
    // A prefix of a permutation: the samples in reverse order, every other one dropped.
    let subset: Vec<usize> = (0..n).rev().step_by(2).collect();
    let k = subset.len();
    let row = x.len() / n;
    let xs = x.as_slice().unwrap();
    let gathered: Vec<f32> = subset
        .iter()
        .flat_map(|&i| xs[i * row..(i + 1) * row].to_vec())
        .collect();
    let mut shape = x.shape().to_vec();
    shape[0] = k;
    let xg = Tensor::from_vec(gathered, &shape).unwrap();
    let yg: Vec<usize> = subset.iter().map(|&i| y[i]).collect();

    let sub = m
        .forward_backward_subset(
            M::a(&wd),
            x,
            y.into(),
            &subset,
            BnMode::TrainNoUpdate,
            M::am(&mut g),
        )
        .unwrap();
    let g_sub = m.down(&g);
    let direct = m
        .forward_backward(
            M::a(&wd),
            &xg,
            (&yg).into(),
            &mean_weights(k),
            BnMode::TrainNoUpdate,
            M::am(&mut g),
        )
        .unwrap();
    assert_eq!(
        sub, direct,
        "subset pass vs the pass on the gathered samples"
    );
    assert!(
        m.down(&g) == g_sub,
        "subset gradient vs the gathered samples' gradient"
    );
    assert_eq!(sub.samples, k);
    let nograd = m
        .forward_losses_subset(M::a(&wd), x, y.into(), &subset, BnMode::TrainNoUpdate)
        .unwrap();
    assert_eq!(nograd, sub, "the no-gradient subset forward's losses");
    let mean = sub.per_sample.iter().map(|&l| l as f64).sum::<f64>() / k as f64;
    assert!(
        (sub.loss - mean).abs() <= 1e-6 * mean.abs().max(1.0),
        "subset loss is not the subset mean"
    );

    let whole = m
        .forward_losses(M::a(&wd), x, y.into(), BnMode::Eval)
        .unwrap();
    let part = m
        .forward_backward_subset(M::a(&wd), x, y.into(), &subset, BnMode::Eval, M::am(&mut g))
        .unwrap();
    for (j, &i) in subset.iter().enumerate() {
        let (a, b) = (part.per_sample[j], whole.per_sample[i]);
        assert!(
            (a - b).abs() <= 1e-5 * b.abs().max(1.0),
            "sample {i}: {a} in the subset, {b} in the batch"
        );
    }
    for bad in [vec![], vec![0, 0], vec![n]] {
        assert!(
            m.forward_backward_subset(M::a(&wd), x, y.into(), &bad, BnMode::Eval, M::am(&mut g))
                .is_err(),
            "subset {bad:?} accepted"
        );
    }
}

/// A pass from a unit needs a kept full pass of the same model.
pub fn partial_pass_needs_a_kept_pass<M: Io>(m: &mut M, w: &[f32], y: Targets<'_>, n: usize) {
    let wd = m.up(w);
    let mut g = m.up(&vec![0.0; w.len()]);
    let err = m.forward_backward_from(
        M::a(&wd),
        0,
        y,
        &mean_weights(n),
        BackwardExtent::Full,
        M::am(&mut g),
    );
    assert!(err.is_err(), "a pass from unit 0 with nothing kept");
}
