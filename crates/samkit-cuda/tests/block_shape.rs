//! The streaming kernels index their units with a stride of `SK_BLOCK` threads (and the
//! finalize with `SK_FIN_BLOCK`), and keep one shared slot per warp of that shape: launched with
//! any other block size they would silently skip or double-count elements. They start with
//! `SK_REQUIRE_BLOCK`, which traps; the emulator of samkit-testkit turns a trap into a failed
//! launch (`CUDA_ERROR_LAUNCH_FAILED`). Each kernel below fails with the wrong shapes and runs
//! with the right one, on the same arguments (no unit to process, a valid step state), so the
//! failure is the shape's.
//!
//! A test binary of its own: a trap is a launch failure, which on a GPU would end the context.
//! Skipped, with one line, where a real driver is installed or the emulator cannot be built
//! (`SAMKIT_REQUIRE_EMULATION=1` makes that a failure).
use std::sync::Arc;

use cudarc::driver::sys::CUresult;
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use samkit_cuda::abi::{
    self, CommitArgs, Ctl, DotArgs, FinArgs, NormArgs, PerturbArgs, RestoreArgs, UpdateArgs,
};
use samkit_cuda::Device;

fn dev() -> Option<Arc<Device>> {
    samkit_testkit::device_or_skip()
}

/// The fake driver ignores the module image and finds kernels by name, samkit's included.
fn func(d: &Device, name: &str) -> CudaFunction {
    let placeholder = cudarc::nvrtc::Ptx::from_src("// samkit's kernels, by name");
    let m = d.context().load_module(placeholder).expect("load_module");
    m.load_function(name).expect(name)
}

/// One launch of `name` over 2 blocks of `block` threads with the given parameters.
fn launch(d: &Device, name: &str, block: u32, args: &[&dyn Arg]) -> Result<(), CUresult> {
    let f = func(d, name);
    let mut b = d.stream().launch_builder(&f);
    for a in args {
        a.push(&mut b);
    }
    let cfg = LaunchConfig {
        grid_dim: (2, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: every parameter list below is the kernel's declared one; with no unit to process
    // the kernels touch the step state, the ticket and nothing else, both valid allocations.
    let r = unsafe { b.launch(cfg) };
    r.map(|_| ()).map_err(|e| e.0)
}

/// A kernel parameter of any ABI type.
trait Arg {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>);
}

impl<T: DeviceRepr> Arg for T {
    fn push<'a>(&'a self, b: &mut cudarc::driver::LaunchArgs<'a>) {
        b.arg(self);
    }
}

fn addr<T>(d: &Device, s: &CudaSlice<T>) -> u64 {
    let (p, _g) = s.device_ptr(d.stream());
    p
}

#[test]
fn kernels_that_assume_a_block_shape_trap_on_any_other() {
    let Some(d) = dev() else { return };
    let ctl_buf = d.stream().alloc_zeros::<Ctl>(1).expect("ctl");
    let ticket_buf = d.stream().alloc_zeros::<u32>(1).expect("ticket");
    let ctl = addr(&d, &ctl_buf);
    let ticket = addr(&d, &ticket_buf);
    let norm = NormArgs {
        ctl,
        ..NormArgs::default()
    };
    let dot = DotArgs::default();
    let fin = FinArgs {
        ctl,
        mode: abi::FIN_SUM,
        ..FinArgs::default()
    };
    let perturb = PerturbArgs {
        ctl,
        ..PerturbArgs::default()
    };
    let update = UpdateArgs {
        ctl,
        ..UpdateArgs::default()
    };
    let commit = CommitArgs {
        ctl,
        ..CommitArgs::default()
    };
    let restore = RestoreArgs::default();
    let cases: Vec<(&str, u32, Vec<&dyn Arg>)> = vec![
        ("sk_norm_plain_f32", abi::BLOCK, vec![&norm]),
        ("sk_norm_masked_bf16", abi::BLOCK, vec![&norm]),
        (
            "sk_norm_plain_f32_fused",
            abi::BLOCK,
            vec![&norm, &fin, &ticket],
        ),
        ("sk_dot_f16", abi::BLOCK, vec![&dot]),
        ("sk_dot_f32_fused", abi::BLOCK, vec![&dot, &fin, &ticket]),
        ("sk_finalize", abi::FIN_BLOCK, vec![&fin]),
        ("sk_perturb_plain_f32", abi::BLOCK, vec![&perturb]),
        ("sk_perturb_asam_filter_f16", abi::BLOCK, vec![&perturb]),
        ("sk_update_sgd_f32", abi::BLOCK, vec![&update]),
        ("sk_update_adam_bf16", abi::BLOCK, vec![&update]),
        (
            "sk_update_rmsprop_f32_fused",
            abi::BLOCK,
            vec![&update, &commit, &ticket],
        ),
        ("sk_restore_f32", abi::BLOCK, vec![&restore]),
    ];
    for (name, right, args) in &cases {
        for wrong in [right / 2, right / 4, 32] {
            assert_eq!(
                launch(&d, name, wrong, args),
                Err(CUresult::CUDA_ERROR_LAUNCH_FAILED),
                "{name} with {wrong} threads per block"
            );
        }
        assert_eq!(
            launch(&d, name, *right, args),
            Ok(()),
            "{name} with {right} threads per block"
        );
    }
    // The right-shaped fused launches ran their second stage (FIN_SUM sets the skip flag from
    // no unit: 0) and their commit (one completed step), and left the ticket at zero.
    let c = d.stream().clone_dtoh(&ctl_buf).expect("ctl");
    assert_eq!(c[0].step, 1, "the fused update committed once");
    assert_eq!(d.stream().clone_dtoh(&ticket_buf).expect("ticket"), vec![0]);
    println!("{} kernels trap on a wrong block shape", cases.len());
}
