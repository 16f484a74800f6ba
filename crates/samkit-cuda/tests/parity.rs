//! Parity of every kernel and every optimizer rule on a GPU against the CPU reference
//! (samkit-core): the sizes 1, 3, 1000, 2^20 + 7 and the 62 ResNet-18 segments; identical masks
//! and bit-identical restores; norms and updates within 1e-6 relative in f32, one unit in the
//! last place in bf16 and f16 (see `common/parity.rs`). Without a GPU each test prints one skip
//! line; `tests/emulated.rs` runs the same scenarios on the CPU.
mod common;

use std::sync::Arc;

use samkit_cuda::{Device, Error};

fn dev() -> Option<Arc<Device>> {
    static DEV: std::sync::OnceLock<Result<Arc<Device>, String>> = std::sync::OnceLock::new();
    match DEV.get_or_init(|| match Device::open_default() {
        Ok(d) => Ok(d),
        Err(e @ Error::NoDevice(_)) => Err(e.to_string()),
        Err(e) => panic!("opening the CUDA device: {e}"),
    }) {
        Ok(d) => Some(d.clone()),
        Err(e) => {
            println!("skip: no CUDA device ({e})");
            None
        }
    }
}

parity_tests!(dev);
