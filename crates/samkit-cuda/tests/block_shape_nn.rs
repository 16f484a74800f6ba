//! samkit-nn's kernels (`nn.cu`) index with a stride of `NN_BLOCK` threads and keep one shared
//! slot per warp of that shape (batch norm's backward), so every one starts with
//! `SK_REQUIRE_BLOCK(NN_BLOCK)`: launched with another block size it traps, which the emulator of
//! samkit-testkit turns into a failed launch. Each kernel fails with the wrong shapes and runs
//! with the right one on the same argument struct (all zero: no element to touch), so the failure
//! is the shape's.
//!
//! A test binary of its own, as `block_shape.rs`: a trap on a GPU would end the context. Skipped,
//! with one line, where a real driver is installed or the emulator cannot be built.
use std::sync::Arc;

use cudarc::driver::sys::CUresult;
use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
use samkit_cuda::abi::{
    NnActArgs, NnActBwdArgs, NnAddArgs, NnAvgPoolBwdArgs, NnAvgPoolFwdArgs, NnBiasAddArgs,
    NnBnEvalBwdArgs, NnBnEvalStatsArgs, NnColSumArgs, NnReluMaskArgs, NnResidualReluArgs,
    NnSmoothCeArgs, NnSqAccumulateArgs, NnSquareArgs, NN_BLOCK,
};
use samkit_cuda::Device;

fn dev() -> Option<Arc<Device>> {
    samkit_testkit::device_or_skip()
}

/// One launch of `name` over 2 blocks of `block` threads with the all-zero `A`.
fn launch<A: DeviceRepr + Default>(d: &Device, name: &str, block: u32) -> Result<(), CUresult> {
    let module = d
        .module(samkit_cuda::samkit_kernels::NN)
        .expect("the nn family");
    let f = module.load_function(name).expect(name);
    let args = A::default();
    let mut b = d.stream().launch_builder(&f);
    b.arg(&args);
    let cfg = LaunchConfig {
        grid_dim: (2, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: `A` is the kernel's one parameter (the pairs below are those of samkit-nn's
    // launchers); all-zero counts give the kernel no element to read or write, so the null
    // addresses are never used.
    let r = unsafe { b.launch(cfg) };
    r.map(|_| ()).map_err(|e| e.0)
}

/// `launch::<A>` with each wrong shape (a failure) and with `NN_BLOCK` (success).
fn check<A: DeviceRepr + Default>(d: &Device, name: &str) {
    // Larger blocks are refused before they run (the kernels' __launch_bounds__).
    for wrong in [NN_BLOCK / 2, NN_BLOCK / 4, 32] {
        assert_eq!(
            launch::<A>(d, name, wrong),
            Err(CUresult::CUDA_ERROR_LAUNCH_FAILED),
            "{name} with {wrong} threads"
        );
    }
    assert_eq!(launch::<A>(d, name, NN_BLOCK), Ok(()), "{name}");
}

#[test]
fn nn_kernels_trap_on_any_block_shape_but_nn_block() {
    let Some(d) = dev() else { return };
    check::<NnReluMaskArgs>(&d, "sk_nn_relu_mask");
    check::<NnAddArgs>(&d, "sk_nn_add");
    check::<NnResidualReluArgs>(&d, "sk_nn_residual_relu");
    check::<NnActArgs>(&d, "sk_nn_act");
    check::<NnActBwdArgs>(&d, "sk_nn_act_bwd");
    check::<NnSquareArgs>(&d, "sk_nn_square");
    check::<NnSqAccumulateArgs>(&d, "sk_nn_sq_accumulate");
    check::<NnBiasAddArgs>(&d, "sk_nn_bias_add");
    check::<NnColSumArgs>(&d, "sk_nn_col_sum");
    check::<NnAvgPoolFwdArgs>(&d, "sk_nn_avgpool_fwd");
    check::<NnAvgPoolBwdArgs>(&d, "sk_nn_avgpool_bwd");
    check::<NnBnEvalStatsArgs>(&d, "sk_nn_bn_eval_stats");
    check::<NnBnEvalBwdArgs>(&d, "sk_nn_bn_eval_bwd");
    check::<NnSmoothCeArgs>(&d, "sk_nn_smooth_ce");
}
