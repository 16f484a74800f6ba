//! The CPU vs CUDA parity tests of samkit-nn (`tests/common/parity.rs`) on the CPU emulation of a
//! device: samkit-testkit's fake driver (with samkit-kernels' `kernels/nn.cu` built by g++) and the fake cuBLAS and cuDNN beside it (reference loops written from the
//! cuBLAS and cuDNN API references). Where no GPU is, this checks all of the backend's
//! plumbing: descriptors, algorithm searches, arena offsets, the launch arguments of the nn.cu
//! kernels, the stream, the models on the CUDA backend, and a SAM step with `GpuOptimizer`.
//! The model tests use ResNet-18 at width 8 and batch 8 (`SAMKIT_EMULATION_RESNET_WIDTH`,
//! `SAMKIT_EMULATION_RESNET_BATCH` override them; the layer tests keep their sizes).
//!
//! Why those sizes: at width 16 / batch 4 the whole-arena gradient differs by 2.5e-3 (tolerance
//! 2e-3), and the cause is a ReLU tie, not a bug. Dumping every block's output and incoming
//! gradient (2026-11-29) showed everything within 1e-6 down to layer1.1, whose output has two
//! elements where `bn2(x) + residual` cancels to rounding noise: the CPU rounds them to ≤ 0
//! (ReLU 0), the device to +3e-8 and +8e-8. Those two mask flips let two gradient values through
//! on one side only, which moves every earlier gradient (bias sums nearly cancel there) by
//! ~3e-3. Any two correct float implementations can disagree like this; a failing model-level
//! comparison on a real GPU should be checked for such flips before it is called a bug.
//!
//! Skipped, with one line, where a real driver is installed (`cuda_parity.rs` runs the same
//! tests on the GPU) or where g++ or NVRTC is missing (`SAMKIT_REQUIRE_EMULATION=1` makes that a
//! failure).
mod common;

use common::parity::Env;
use samkit_nn::cuda::CudaOptions;

/// A size of the model tests, overridden by the variable `name`.
fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env() -> Option<Env> {
    let dev = samkit_testkit::or_skip(samkit_testkit::device_with_dnn())?;
    Some(Env {
        dev,
        width: size("SAMKIT_EMULATION_RESNET_WIDTH", 8),
        batch: size("SAMKIT_EMULATION_RESNET_BATCH", 8),
        required: true,
        turn: None,
        opts: CudaOptions {
            workspace_limit: 4 << 20,
            ..CudaOptions::default()
        },
    })
}

nn_parity_tests!(env);
