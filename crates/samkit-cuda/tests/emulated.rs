//! The GPU parity tests, run on the CPU through the fake CUDA driver of `tests/fakecuda` (the
//! kernels built with g++): where no GPU is, they still check the whole stack (cudarc, NVRTC,
//! the typed launches, the optimizer) and the kernels' logic against samkit-core. Skipped, with
//! one line, where a real driver is installed (`parity.rs` runs the same scenarios on the GPU)
//! or where g++ or NVRTC is missing (`SAMKIT_REQUIRE_EMULATION=1` makes that a failure).
mod common;

use std::sync::Arc;

use samkit_cuda::Device;

fn dev() -> Option<Arc<Device>> {
    match common::fake::device() {
        Ok(d) => Some(d),
        Err(e) if !common::fake::required() => {
            println!("skip: no CPU emulation of CUDA ({e})");
            None
        }
        Err(e) => panic!("SAMKIT_REQUIRE_EMULATION=1 but {e}"),
    }
}

parity_tests!(dev);
