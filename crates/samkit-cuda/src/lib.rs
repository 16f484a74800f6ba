//! samkit-cuda: the CUDA kernels of the SAM family, launched through cudarc, with the step
//! protocol of [`samkit_core::Optimizer`] on device buffers.
//!
//! - the kernel sources, in the `samkit-kernels` crate (re-exported as [`samkit_kernels`]; one
//!   `.cu` per family, `samkit.cuh` shared): the fused streaming
//!   passes of a step (norm with the non-finite check and FriendlySAM's EMA, perturbation, restore
//!   fused with the base optimizer and the GSAM/LookSAM/ImbSAM combination), the Fisher
//!   accumulation, the global top-k mask and SSAM-D's drop/grow.
//! - [`compile`]: NVRTC straight to a cubin for the device (no PTX JIT), ptxas' report per
//!   kernel; [`env`](mod@env): where NVRTC and the CUDA headers come from (no GPU needed to compile).
//! - [`Device`]: context, stream, kernels compiled at first use and cached per device (and on
//!   disk); [`GpuOptimizer`]: the optimizer, with the CPU optimizer's state files; [`Ops`]: the kernels one by one (norms, dot
//!   products, Fisher, masks); [`bench`](mod@bench): the kernel timing table.
//!
//! Everything builds on a machine without CUDA: the driver and NVRTC are loaded at run time, and
//! [`Device::open`] answers [`Error::NoDevice`] when there is no driver or no GPU.
pub mod abi;
pub mod bench;
pub mod buffers;
pub mod compile;
pub mod device;
pub mod env;
pub mod error;
mod ops;
pub mod optimizer;
pub mod plan;
pub mod standalone;
pub mod variants;

pub use samkit_kernels;

pub use buffers::{DeviceParams, DeviceParamsMut, Elem};
pub use device::Device;
pub use error::{Error, Result};
pub use optimizer::{GpuOptimizer, Status};
pub use standalone::Ops;
pub use variants::{StepVariant, TopkVariant, Variants};

#[cfg(test)]
mod tests {
    /// The optimizer and the standalone kernels move between threads like the CPU optimizer.
    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::GpuOptimizer<f32>>();
        check::<crate::GpuOptimizer<half::bf16>>();
        check::<crate::Ops<half::f16>>();
        check::<crate::Device>();
        check::<crate::bench::KernelBench>();
    }
}
