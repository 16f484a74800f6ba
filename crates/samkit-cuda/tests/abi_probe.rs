//! The ABI probes of every kernel family of samkit-kernels' registry (the optimizer's and
//! samkit-nn's `nn`), run on a device: loading a family through `Device::module` passes its
//! check, and the probe, run again here, reports exactly the values `abi::expected()` lists for
//! it, and writes nothing past them (the loader's buffer holds exactly that many).
//!
//! On the real device where a driver is installed (the GPU check), else on the CPU emulation of
//! samkit-testkit (skipped with one line where neither is available).
use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};
use samkit_cuda::samkit_kernels::FAMILIES;
use samkit_cuda::{abi, Device};

/// Fills the probe's output buffer: a value no probe reports (sizes and offsets are small).
const SENTINEL: u32 = 0xDEAD_BEEF;

fn dev() -> Option<Arc<Device>> {
    if samkit_cuda::device::driver_present() {
        match Device::open_default() {
            Ok(d) => return Some(d),
            Err(e) if e.is_no_device() => {
                println!("skip: no CUDA device ({e})");
                return None;
            }
            Err(e) => panic!("opening the CUDA device: {e}"),
        }
    }
    samkit_testkit::device_or_skip()
}

#[test]
fn every_family_loads_and_its_probe_reports_exactly_what_the_host_expects() {
    let Some(d) = dev() else { return };
    let expected = abi::expected();
    for f in FAMILIES {
        // The loader runs the probe and refuses the family on a mismatch.
        let module = d
            .module(f)
            .unwrap_or_else(|e| panic!("{}: loading the family: {e}", f.name));
        let (_, kernel, want) = expected
            .iter()
            .find(|(name, _, _)| *name == f.name)
            .unwrap_or_else(|| panic!("{}: no expected report", f.name));
        assert_eq!(*kernel, f.abi_probe, "{}", f.name);
        let probe = module
            .load_function(kernel)
            .unwrap_or_else(|e| panic!("{}: {kernel}: {e}", f.name));
        let s = d.stream();
        let mut out = s
            .clone_htod(&vec![SENTINEL; want.len() + 1])
            .expect("probe buffer");
        let mut b = s.launch_builder(&probe);
        b.arg(&mut out);
        let one = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the probe's one parameter is a `u32*`; `out` holds one more value than the
        // report it writes (the test checks that it wrote no more).
        unsafe { b.launch(one) }.expect("probe launch");
        let got = s.clone_dtoh(&out).expect("probe report");
        assert_eq!(&got[..want.len()], &want[..], "{kernel}: report vs host");
        assert_eq!(got[want.len()], SENTINEL, "{kernel} writes past its report");
    }
}
