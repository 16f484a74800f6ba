//! What the cheaper second passes need from the models, on the CPU (`tests/partial/mod.rs`
//! holds the checks; `tests/emulated_partial.rs` runs them on the CUDA backend): SSAM-L's
//! units and passes from a unit, the no-gradient forward, per-sample losses and subset passes.
mod partial;

use partial::noise;
use samkit_nn::model::{first_perturbed_unit, unit_of_segment, BackwardExtent};
use samkit_nn::{
    mean_weights, Activation, BnMode, LossKind, Mlp, Model, ResNet18, ResNetConfig, Tensor,
};

const BATCH: usize = 6;
const SIDE: usize = 8;

fn resnet() -> ResNet18 {
    let mut cfg = ResNetConfig::new(10, 4);
    cfg.label_smoothing = 0.1;
    ResNet18::cpu(cfg).unwrap()
}

fn images(seed: u64, n: usize) -> (Tensor, Vec<usize>) {
    let x = Tensor::from_vec(noise(n * 3 * SIDE * SIDE, seed), &[n, 3, SIDE, SIDE]).unwrap();
    let y = (0..n).map(|i| (i * 7 + seed as usize) % 10).collect();
    (x, y)
}

fn mlp() -> Mlp {
    Mlp::cpu(
        &[5, 7, 6, 3],
        Activation::Tanh,
        LossKind::CrossEntropy { smoothing: 0.0 },
    )
    .unwrap()
}

fn features(seed: u64, n: usize) -> (Tensor, Vec<usize>) {
    let x = Tensor::from_vec(noise(n * 5, seed), &[n, 5]).unwrap();
    let y = (0..n).map(|i| (i + seed as usize) % 3).collect();
    (x, y)
}

#[test]
fn resnet18_units_are_stem_blocks_and_head_covering_every_segment_once() {
    let m = resnet();
    let names: Vec<&str> = m.units().iter().map(|u| u.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "stem", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1",
            "layer4.0", "layer4.1", "head"
        ]
    );
    let segs = m.layout().segments();
    let mut next = 0;
    for u in m.units() {
        assert_eq!(
            u.segments.start, next,
            "unit {} does not follow the previous one",
            u.name
        );
        for s in u.segments.clone() {
            let seg = &segs[s].name;
            let prefixes = match u.name.as_str() {
                "stem" => vec!["conv1.".to_string(), "bn1.".to_string()],
                "head" => vec!["linear.".to_string()],
                block => vec![format!("{block}.")],
            };
            assert!(
                prefixes.iter().any(|p| seg.starts_with(p.as_str())),
                "segment {seg} in unit {}",
                u.name
            );
        }
        next = u.segments.end;
    }
    assert_eq!(next, segs.len());
    let last = segs.len() - 1;
    assert_eq!(unit_of_segment(m.units(), last), Some(9));
    assert_eq!(unit_of_segment(m.units(), 0), Some(0));
    assert_eq!(
        first_perturbed_unit(m.units(), |s| s + 2 >= segs.len()),
        Some(9)
    );
    assert_eq!(first_perturbed_unit(m.units(), |_| false), None);
}

#[test]
fn mlp_units_are_its_layers() {
    let m = mlp();
    let units = m.units();
    assert_eq!(units.len(), 3);
    for (i, u) in units.iter().enumerate() {
        assert_eq!(u.name, format!("fc{i}"));
        assert_eq!(u.segments, 2 * i..2 * i + 2);
    }
    let lin = Mlp::linear_regression_cpu(4).unwrap();
    assert_eq!(lin.units().len(), 1);
    assert_eq!(lin.units()[0].name, "linear");
}

#[test]
fn resnet18_pass_from_a_unit_is_bit_identical_to_a_full_pass_two() {
    let mut m = resnet();
    let w = m.init_params(1);
    let (x, y) = images(1, BATCH);
    // The stem, a block without and one with a shortcut, the last block, the head.
    partial::partial_passes_are_exact(&mut m, &w, &x, (&y).into(), &[0, 2, 3, 8, 9]);
}

#[test]
fn mlp_pass_from_a_layer_is_bit_identical_to_a_full_pass_two() {
    let mut m = mlp();
    let w = m.init_params(2);
    let (x, y) = features(2, BATCH);
    partial::partial_passes_are_exact(&mut m, &w, &x, (&y).into(), &[0, 1, 2]);
}

#[test]
fn resnet18_pass_from_a_unit_continues_an_eval_mode_kept_pass_in_eval_mode() {
    // SSAM-F's Fisher pass keeps its activations too; a pass from a unit after it runs with
    // the running statistics, as a full Eval pass does.
    let mut m = resnet();
    let w = m.init_params(3);
    let (x, y) = images(3, BATCH);
    let wts = mean_weights(BATCH);
    let mut g = vec![0.0; w.len()];
    m.forward_backward(&w, &x, (&y).into(), &wts, BnMode::Train, &mut g)
        .unwrap();
    let mut fisher = vec![0.0; w.len()];
    m.per_sample_grad_sq(&w, &x, (&y).into(), &mut fisher)
        .unwrap();
    let from = m
        .forward_backward_from(&w, 4, (&y).into(), &wts, BackwardExtent::Full, &mut g)
        .unwrap();
    let g_from = g.clone();
    let full = m
        .forward_backward(&w, &x, (&y).into(), &wts, BnMode::Eval, &mut g)
        .unwrap();
    assert_eq!(from, full);
    assert!(g_from == g);
}

#[test]
fn pass_from_a_unit_is_refused_without_a_kept_pass_or_out_of_range() {
    let mut m = resnet();
    let w = m.init_params(4);
    let (_, y) = images(4, BATCH);
    partial::partial_pass_needs_a_kept_pass(&mut m, &w, (&y).into(), BATCH);
    let mut m2 = mlp();
    let w2 = m2.init_params(4);
    let (_, y2) = features(4, BATCH);
    partial::partial_pass_needs_a_kept_pass(&mut m2, &w2, (&y2).into(), BATCH);
    // A start past the head, and weights of another batch size than the kept pass's.
    let (x, y) = images(5, BATCH);
    let mut g = vec![0.0; w.len()];
    let wts = mean_weights(BATCH);
    m.forward_backward(&w, &x, (&y).into(), &wts, BnMode::Train, &mut g)
        .unwrap();
    assert!(m
        .forward_backward_from(&w, 10, (&y).into(), &wts, BackwardExtent::Full, &mut g)
        .is_err());
    assert!(m
        .forward_backward_from(
            &w,
            1,
            (&y[..2]).into(),
            &wts[..2],
            BackwardExtent::Full,
            &mut g
        )
        .is_err());
}

#[test]
fn resnet18_nograd_forward_matches_and_leaves_the_kept_pass_alone() {
    let mut m = resnet();
    let w = m.init_params(6);
    let (x, y) = images(6, BATCH);
    // Another batch of another size in between.
    let (xo, yo) = images(7, BATCH + 2);
    // Running statistics that are not the initial ones, for the Eval comparisons.
    partial::train_pass(&mut m, &w, &x, &y);
    partial::nograd_forward_matches_and_keeps_the_kept_pass(&mut m, &w, (&x, &y), (&xo, &yo), 3);
}

#[test]
fn mlp_nograd_forward_matches_and_leaves_the_kept_pass_alone() {
    let mut m = mlp();
    let w = m.init_params(8);
    let (x, y) = features(8, BATCH);
    let (xo, yo) = features(9, BATCH + 3);
    partial::nograd_forward_matches_and_keeps_the_kept_pass(&mut m, &w, (&x, &y), (&xo, &yo), 1);
}

#[test]
fn resnet18_subset_pass_is_the_pass_on_the_gathered_samples() {
    let mut m = resnet();
    let w = m.init_params(10);
    let (x, y) = images(10, BATCH);
    partial::train_pass(&mut m, &w, &x, &y);
    partial::subset_pass_is_the_gathered_batch(&mut m, &w, &x, &y);
}

#[test]
fn mlp_subset_pass_is_the_pass_on_the_gathered_samples() {
    let mut m = mlp();
    let w = m.init_params(11);
    let (x, y) = features(11, BATCH);
    partial::subset_pass_is_the_gathered_batch(&mut m, &w, &x, &y);
}

#[test]
fn select_samples_gathers_rows_and_targets_and_refuses_bad_lists() {
    use samkit_nn::model::{select_samples, OwnedTargets, Targets};
    let x = Tensor::from_vec((0..12).map(|v| v as f32).collect(), &[4, 3]).unwrap();
    let t: Vec<f32> = (0..8).map(|v| v as f32 * 10.0).collect();
    let (xs, ts) = select_samples(&x, Targets::Values(&t), &[2, 0]).unwrap();
    assert_eq!(xs.shape(), &[2, 3]);
    assert_eq!(xs.as_slice().unwrap(), &[6.0, 7.0, 8.0, 0.0, 1.0, 2.0]);
    assert_eq!(ts, OwnedTargets::Values(vec![40.0, 50.0, 0.0, 10.0]));
    let labels = [3usize, 1, 4, 1];
    let (_, tl) = select_samples(&x, Targets::Labels(&labels), &[3]).unwrap();
    assert_eq!(tl, OwnedTargets::Labels(vec![1]));
    assert!(select_samples(&x, Targets::Labels(&labels[..3]), &[0]).is_err());
    assert!(select_samples(&x, Targets::Labels(&labels), &[4]).is_err());
    assert!(select_samples(&x, Targets::Labels(&labels), &[1, 1]).is_err());
    assert!(select_samples(&x, Targets::Labels(&labels), &[]).is_err());
}

#[test]
fn resnet18_nograd_forward_keeps_a_fraction_of_the_training_workspace() {
    // Standard 32×32 images: the no-gradient forward holds a block at a time, the training
    // workspace every activation of the network and the backward's gradient buffers.
    let mut m = resnet();
    let w = m.init_params(12);
    let n = 2;
    let x = Tensor::from_vec(noise(n * 3 * 32 * 32, 12), &[n, 3, 32, 32]).unwrap();
    let y = vec![1usize, 2];
    assert_eq!(m.workspace_values(), (0, 0));
    m.forward(&w, &x, BnMode::Eval).unwrap();
    let (train, lean) = m.workspace_values();
    assert_eq!(
        train, 0,
        "a no-gradient forward allocated the training workspace"
    );
    let mut g = vec![0.0; w.len()];
    m.forward_backward(&w, &x, (&y).into(), &mean_weights(n), BnMode::Train, &mut g)
        .unwrap();
    let (train, lean_after) = m.workspace_values();
    assert_eq!(lean_after, lean);
    assert!(
        3 * lean < train,
        "no-gradient workspace {lean} values vs training {train}"
    );
}
