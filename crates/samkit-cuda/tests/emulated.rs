//! The GPU parity tests, run on the CPU through the fake CUDA driver of `tests/fakecuda` (the
//! kernels built with g++): where no GPU is, they still check the whole stack and the kernels'
//! logic against samkit-core. Skipped (one line) where a real driver is installed: `parity.rs`
//! runs the same scenarios on the GPU there.
mod common;

use std::sync::Arc;

use samkit_core::Layout;
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

#[test]
fn norm_and_dot_match_cpu() {
    let Some(d) = dev() else { return };
    let layouts = [
        Layout::flat(1).unwrap(),
        Layout::flat(3).unwrap(),
        Layout::flat(1000).unwrap(),
        Layout::mlp(&[37, 129, 10]).unwrap(),
    ];
    common::parity::norm_and_dot_match_cpu(&d, &layouts);
}
