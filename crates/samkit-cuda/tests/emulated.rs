//! The GPU parity tests, run on the CPU through the fake CUDA driver of samkit-testkit (the
//! kernels built with g++): where no GPU is, they still check the whole stack (cudarc, NVRTC,
//! the typed launches, the optimizer) and the kernels' logic against samkit-core. Skipped, with
//! one line, where a real driver is installed (`parity.rs` runs the same scenarios on the GPU)
//! or where g++ or NVRTC is missing (`SAMKIT_REQUIRE_EMULATION=1` makes that a failure).
mod common;

use std::sync::Arc;

use samkit_cuda::Device;

fn dev() -> Option<Arc<Device>> {
    samkit_testkit::device_or_skip()
}

parity_tests!(dev);

/// The benchmark code runs end to end (the times of the emulation mean nothing).
#[test]
fn bench_table_runs() {
    let Some(d) = dev() else { return };
    let layout = samkit_core::Layout::mlp(&[64, 300, 10]).unwrap();
    let rows = samkit_cuda::bench::kernel_table(&d, Some(layout), 2).unwrap();
    assert_eq!(rows.len(), samkit_cuda::bench::BENCHES.len());
    for r in &rows {
        assert!(r.time_us >= 0.0, "{r:?}");
        assert_ne!(r.deterministic, Some(false), "{r:?}");
    }
    println!("{}", samkit_cuda::bench::format_table(&d, 3310, &rows));
}
