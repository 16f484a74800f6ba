//! What the cheaper second passes need from the models (`tests/partial/mod.rs`), on the CUDA
//! backend (cuDNN, cuBLAS, nn.cu) over samkit-testkit's emulated device: SSAM-L's passes from a
//! unit bit-identical to a full pass 2, the no-gradient forward, subset passes. On a real GPU
//! the same checks hold (same kernels and algorithms for the units from the start unit on).
//!
//! Small sizes (ResNet-18 width 4, batch 4, 8×8 images) keep the emulation fast; skipped with
//! one line where g++ or NVRTC is missing (`SAMKIT_REQUIRE_EMULATION=1` makes that a failure).
mod partial;

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use partial::{noise, HostArena};
use samkit_nn::cuda::CudaOptions;
use samkit_nn::{Activation, Cuda, LossKind, Mlp, ResNet18, ResNetConfig, Tensor};

const BATCH: usize = 4;
const SIDE: usize = 8;
/// The emulation caps the cuDNN workspace: an algorithm search clears what it allocates.
const WORKSPACE_LIMIT: usize = 4 << 20;

fn cuda() -> Option<Cuda> {
    let dev: Arc<samkit_cuda::Device> = samkit_testkit::or_skip(samkit_testkit::device_with_dnn())?;
    let opts = CudaOptions {
        workspace_limit: WORKSPACE_LIMIT,
        ..CudaOptions::default()
    };
    Some(Cuda::with_options(&dev, opts).expect("the CUDA backend on the emulated device"))
}

impl HostArena for Cuda {
    type Owned = CudaSlice<f32>;
    fn up(&mut self, v: &[f32]) -> CudaSlice<f32> {
        self.arena_from(v).unwrap()
    }
    fn down(&mut self, a: &CudaSlice<f32>) -> Vec<f32> {
        self.arena_to_host(a).unwrap()
    }
    fn a(o: &CudaSlice<f32>) -> &CudaSlice<f32> {
        o
    }
    fn am(o: &mut CudaSlice<f32>) -> &mut CudaSlice<f32> {
        o
    }
}

fn resnet() -> Option<ResNet18<Cuda>> {
    let mut cfg = ResNetConfig::new(10, 4);
    cfg.label_smoothing = 0.1;
    Some(ResNet18::new(cuda()?, cfg).unwrap())
}

fn images(seed: u64, n: usize) -> (Tensor, Vec<usize>) {
    let x = Tensor::from_vec(noise(n * 3 * SIDE * SIDE, seed), &[n, 3, SIDE, SIDE]).unwrap();
    let y = (0..n).map(|i| (i * 7 + seed as usize) % 10).collect();
    (x, y)
}

#[test]
fn resnet18_pass_from_a_unit_is_bit_identical_to_a_full_pass_two_on_cuda() {
    let Some(mut m) = resnet() else { return };
    let w = m.init_params(1);
    let (x, y) = images(1, BATCH);
    // The stem, a block with a shortcut, the head.
    partial::partial_passes_are_exact(&mut m, &w, &x, (&y).into(), &[0, 3, 9]);
}

#[test]
fn resnet18_nograd_forward_and_subset_passes_on_cuda() {
    let Some(mut m) = resnet() else { return };
    let w = m.init_params(2);
    let (x, y) = images(2, BATCH);
    let (xo, yo) = images(3, BATCH + 2);
    partial::train_pass(&mut m, &w, &x, &y);
    partial::nograd_forward_matches_and_keeps_the_kept_pass(&mut m, &w, (&x, &y), (&xo, &yo), 5);
    partial::subset_pass_is_the_gathered_batch(&mut m, &w, &x, &y);
    partial::partial_pass_needs_a_kept_pass(
        &mut ResNet18::new(cuda().expect("a device above"), ResNetConfig::new(10, 4)).unwrap(),
        &w,
        (&y).into(),
        BATCH,
    );
}

#[test]
fn mlp_passes_from_a_layer_nograd_and_subsets_on_cuda() {
    let Some(be) = cuda() else { return };
    let loss = LossKind::CrossEntropy { smoothing: 0.0 };
    let mut m = Mlp::new(be, &[5, 7, 6, 3], Activation::Relu, loss).unwrap();
    let w = m.init_params(4);
    let n = 6;
    let x = Tensor::from_vec(noise(n * 5, 4), &[n, 5]).unwrap();
    let y: Vec<usize> = (0..n).map(|i| i % 3).collect();
    let xo = Tensor::from_vec(noise((n + 1) * 5, 5), &[n + 1, 5]).unwrap();
    let yo: Vec<usize> = (0..n + 1).map(|i| (i + 1) % 3).collect();
    partial::partial_passes_are_exact(&mut m, &w, &x, (&y).into(), &[0, 1, 2]);
    partial::nograd_forward_matches_and_keeps_the_kept_pass(&mut m, &w, (&x, &y), (&xo, &yo), 1);
    partial::subset_pass_is_the_gathered_batch(&mut m, &w, &x, &y);
}
