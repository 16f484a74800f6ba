//! The selection and Fisher kernels assume a block shape: a stride of `SK_BLOCK` threads over a
//! unit, `SK_WARPS` warp ranges per unit (`warp_range`), one warp for `sk_sel_scan`,
//! `SK_SCAN_BLOCK` threads for `sk_sel_eq_scan`. Launched with any other shape they would skip
//! or double-count candidates, so each starts with `SK_REQUIRE_BLOCK`, which traps; the emulator
//! of samkit-testkit turns a trap into a failed launch. Each kernel below fails with wrong
//! shapes and runs with the right one, on the same arguments (no unit to process, valid
//! selection state and histogram), so the failure is the shape's. (`sk_mask_combine` strides by
//! `blockDim.x` and runs with any shape.)
//!
//! A test binary of its own: a trap is a launch failure, which on a GPU would end the context.
//! Skipped, with one line, where a real driver is installed or the emulator cannot be built
//! (`SAMKIT_REQUIRE_EMULATION=1` makes that a failure).
use std::sync::Arc;

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use samkit_cuda::abi::{self, Ctl, FisherArgs, SelArgs, SelState};
use samkit_cuda::Device;

fn dev() -> Option<Arc<Device>> {
    samkit_testkit::device_or_skip()
}

/// One launch of `name` over 2 blocks of `block` threads with `args` as its only parameter.
fn launch<A: cudarc::driver::DeviceRepr>(
    d: &Device,
    name: &str,
    block: u32,
    args: &A,
) -> Result<(), CUresult> {
    // The fake driver ignores the module image and finds kernels by name, samkit's included.
    let placeholder = cudarc::nvrtc::Ptx::from_src("// samkit's kernels, by name");
    let m = d.context().load_module(placeholder).expect("load_module");
    let f = m.load_function(name).expect(name);
    let mut b = d.stream().launch_builder(&f);
    b.arg(args);
    let cfg = LaunchConfig {
        grid_dim: (2, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: every argument struct below is the kernel's declared one; with no unit to process
    // the kernels touch the selection state, the step state and the histogram, all valid
    // allocations of the sizes the kernels index.
    let r = unsafe { b.launch(cfg) };
    r.map(|_| ()).map_err(|e| e.0)
}

fn addr<T>(d: &Device, s: &CudaSlice<T>) -> u64 {
    let (p, _g) = s.device_ptr(d.stream());
    p
}

#[test]
fn select_and_fisher_kernels_trap_on_a_wrong_block_shape() {
    let Some(d) = dev() else { return };
    let s = d.stream();
    let ctl_buf = s.alloc_zeros::<Ctl>(1).expect("ctl");
    let st_buf = s.alloc_zeros::<SelState>(1).expect("state");
    let hist_buf = s.alloc_zeros::<u64>(abi::HIST_BINS).expect("hist");
    let sel = SelArgs {
        ctl: addr(&d, &ctl_buf),
        st: addr(&d, &st_buf),
        hist: addr(&d, &hist_buf),
        k: 1,
        ..SelArgs::default()
    };
    let fisher = FisherArgs::default();
    let mut names: Vec<(String, u32)> = Vec::new();
    for src in ["scores_f32", "scores_bf16", "drop_f16", "grow", "init"] {
        for stage in ["hist", "count", "write"] {
            for family in ["sel", "selv"] {
                names.push((format!("sk_{family}_{stage}_{src}"), abi::BLOCK));
            }
        }
    }
    names.push(("sk_sel_scan".into(), 32));
    names.push(("sk_sel_eq_scan".into(), abi::SCAN_BLOCK));
    for (name, right) in &names {
        // Smaller shapes: a larger one is refused at launch by __launch_bounds__ already.
        for wrong in [right / 2, right / 4] {
            assert_eq!(
                launch(&d, name, wrong, &sel),
                Err(CUresult::CUDA_ERROR_LAUNCH_FAILED),
                "{name} with {wrong} threads per block"
            );
        }
        assert_eq!(
            launch(&d, name, *right, &sel),
            Ok(()),
            "{name} with {right} threads per block"
        );
    }
    for name in ["sk_fisher_f32", "sk_fisher_bf16", "sk_fisher_f16"] {
        for wrong in [abi::BLOCK / 2, 32] {
            assert_eq!(
                launch(&d, name, wrong, &fisher),
                Err(CUresult::CUDA_ERROR_LAUNCH_FAILED),
                "{name} with {wrong} threads per block"
            );
        }
        assert_eq!(launch(&d, name, abi::BLOCK, &fisher), Ok(()), "{name}");
    }
    // The right-shaped vectorised launches found their last block (its scan saw no candidate
    // and took them all) and left the ticket at zero for the next launch.
    let st = s.clone_dtoh(&st_buf).expect("state")[0];
    assert_eq!(st.ticket, 0, "{st:?}");
    assert_eq!(st.take_all, 1, "{st:?}");
    println!("{} kernels trap on a wrong block shape", names.len() + 3);
}
