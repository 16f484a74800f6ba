//! The models' shapes and bookkeeping: the standard ResNet-18's parameter count and state-dict
//! names, workspace reuse across batch sizes, and BN modes.
use samkit_nn::checkpoint::state_dict_entries;
use samkit_nn::init::Rng;
use samkit_nn::{mean_weights, BnMode, Model, ResNet18, ResNetConfig, Tensor};

fn images(n: usize, hw: usize, seed: u64) -> Tensor {
    let mut v = vec![0.0; n * 3 * hw * hw];
    Rng::new(seed).fill_normal(&mut v, 1.0);
    Tensor::from_vec(v, &[n, 3, hw, hw]).unwrap()
}

#[test]
fn the_standard_resnet18_has_the_pytorch_parameters_and_state_dict() {
    let mut m = ResNet18::cpu(ResNetConfig::new(10, 64)).unwrap();
    assert_eq!(m.layout().len(), 11_173_962);
    let entries = state_dict_entries(m.layout(), &m.buffer_specs());
    // 62 parameters and 20 batch-norm layers × 3 buffers, in PyTorch's state_dict order.
    assert_eq!(entries.len(), 62 + 60);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names[..8],
        [
            "conv1.weight",
            "bn1.weight",
            "bn1.bias",
            "bn1.running_mean",
            "bn1.running_var",
            "bn1.num_batches_tracked",
            "layer1.0.conv1.weight",
            "layer1.0.bn1.weight"
        ]
    );
    let sc = names
        .iter()
        .position(|&n| n == "layer2.0.shortcut.0.weight")
        .unwrap();
    assert_eq!(
        names[sc + 1..sc + 6],
        [
            "layer2.0.shortcut.1.weight",
            "layer2.0.shortcut.1.bias",
            "layer2.0.shortcut.1.running_mean",
            "layer2.0.shortcut.1.running_var",
            "layer2.0.shortcut.1.num_batches_tracked"
        ]
    );
    assert_eq!(names[names.len() - 2..], ["linear.weight", "linear.bias"]);
    let w = m.init_params(0);
    let logits = m.forward(&w, &images(2, 32, 1), BnMode::Eval).unwrap();
    assert_eq!(logits.shape(), &[2, 10]);
    assert!(logits.as_slice().unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn workspaces_are_reused_across_batch_sizes_with_the_same_results() {
    let mut m = ResNet18::cpu(ResNetConfig::new(10, 2)).unwrap();
    let w = m.init_params(5);
    let big = images(6, 8, 2);
    let small = big.narrow_batch(0, 3).unwrap();
    let y = vec![1usize, 2, 3];
    // A pass on the small batch: its losses and gradient.
    let pass = |m: &mut ResNet18| {
        let mut g = vec![0.0; w.len()];
        let wts = mean_weights(3);
        let l = m
            .forward_backward(&w, &small, (&y).into(), &wts, BnMode::TrainNoUpdate, &mut g)
            .unwrap();
        (l, g)
    };
    let (l1, g1) = pass(&mut ResNet18::cpu(ResNetConfig::new(10, 2)).unwrap());
    // The same small batch after a larger one: the workspace is reused, results are equal.
    m.forward(&w, &big, BnMode::TrainNoUpdate).unwrap();
    let (l2, g2) = pass(&mut m);
    assert_eq!(l1, l2);
    assert_eq!(g1, g2);
    // Another image size reallocates.
    let other = m.forward(&w, &images(3, 16, 3), BnMode::Eval).unwrap();
    assert_eq!(other.shape(), &[3, 10]);
}

#[test]
fn eval_mode_uses_running_statistics_and_is_per_sample() {
    let mut m = ResNet18::cpu(ResNetConfig::new(10, 2)).unwrap();
    let w = m.init_params(5);
    let x = images(4, 8, 4);
    for _ in 0..3 {
        m.forward(&w, &x, BnMode::Train).unwrap();
    }
    let all = m.forward(&w, &x, BnMode::Eval).unwrap();
    let one = m
        .forward(&w, &x.narrow_batch(2, 3).unwrap(), BnMode::Eval)
        .unwrap();
    let row = &all.as_slice().unwrap()[20..30];
    for (a, b) in row.iter().zip(one.as_slice().unwrap()) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()));
    }
    let stats = m.running_stats().unwrap();
    assert_eq!(stats.len(), 20);
    assert!(stats[0].0.iter().any(|&v| v != 0.0));
    let bufs = m.buffers().unwrap();
    assert!(bufs
        .iter()
        .any(|b| b.name == "bn1.num_batches_tracked"
            && b.data == samkit_nn::BufferData::I64(vec![3])));
}

/// Winograd's F(2×2, 3×3) (the CPU default for 3×3 stride-1 convolutions with ≥ 16 channels)
/// and im2col + GEMM give the same loss and gradient up to float rounding, on a ResNet-18 wide
/// enough that every stage's 3×3 convolutions take the Winograd path.
#[test]
fn winograd_and_im2col_convolutions_give_the_same_loss_and_gradient() {
    let cfg = ResNetConfig::new(10, 16);
    let (n, hw) = (4, 16);
    let x = images(n, hw, 3);
    let y: Vec<usize> = (0..n).map(|i| (3 * i + 1) % 10).collect();
    let wts = mean_weights(n);
    let run = |winograd: bool| {
        let mut m = ResNet18::new(samkit_nn::Cpu::new().with_winograd(winograd), cfg).unwrap();
        let w = m.init_params(7);
        let mut g = vec![0.0; w.len()];
        let loss = m
            .forward_backward(&w, &x, (&y).into(), &wts, BnMode::TrainNoUpdate, &mut g)
            .unwrap()
            .eval()
            .loss;
        (loss, g)
    };
    let ((lw, gw), (li, gi)) = (run(true), run(false));
    assert!(
        (lw - li).abs() <= 1e-5 * li.abs().max(1.0),
        "loss {lw} vs {li}"
    );
    let norm = gi.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
    let diff = gw
        .iter()
        .zip(&gi)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        norm > 0.0 && diff <= 1e-4 * norm,
        "‖Δg‖ = {diff}, ‖g‖ = {norm}"
    );
}
