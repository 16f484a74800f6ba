//! CPU vs CUDA parity of samkit-nn on a real device: the bodies of `tests/common/parity.rs`
//! (every layer, ResNet-18 at width 64 and batch 8, the Fisher, an MLP, the device loss, a SAM
//! step through samkit-cuda's `GpuOptimizer`), and the NVRTC build of samkit-kernels' `kernels/nn.cu`.
//! `tests/emulated.rs` runs the same bodies on the CPU emulation of a device.
//!
//! Without a CUDA device every test prints one `skip: no CUDA device (...)` line and passes;
//! without cuDNN or cuBLAS on a machine with a device, `skip: no CUDA libraries (...)`.
//! `SAMKIT_REQUIRE_CUDA=1` (set by scripts/gpu-check.sh on the GPU machine) turns a skip into a
//! failure.
mod common;

use common::parity::Env;
use samkit_cuda::compile::{compile, prebuilt_name, Target};
use samkit_nn::backend::Backend;
use samkit_nn::cuda::NN_KERNELS;
use samkit_nn::Cuda;

fn required() -> bool {
    std::env::var("SAMKIT_REQUIRE_CUDA").is_ok_and(|v| v == "1")
}

/// The backend's options: the defaults (cuDNN's benchmark search, any algorithm), or with
/// `SAMKIT_TEST_CUDNN=deterministic|heuristic` (test plumbing, for the GPU check) deterministic
/// algorithms or cuDNN's heuristics, to tell an algorithm's error from the backend's.
fn options_under_test() -> samkit_nn::cuda::CudaOptions {
    let mut o = samkit_nn::cuda::CudaOptions::default();
    match std::env::var("SAMKIT_TEST_CUDNN").as_deref() {
        Ok("deterministic") => o.deterministic = true,
        Ok("heuristic") => o.algo = samkit_nn::cuda::AlgoSearch::Heuristic,
        Ok(other) if !other.is_empty() => {
            panic!("SAMKIT_TEST_CUDNN={other}: deterministic or heuristic")
        }
        _ => {}
    }
    println!("cuDNN options under test: {o:?}");
    o
}

/// The real device, or `None` after printing the skip line.
fn env() -> Option<Env> {
    let turn = common::parity::one_at_a_time();
    let dev = match samkit_cuda::Device::open_default() {
        Ok(d) => d,
        Err(e) if e.is_no_device() && !required() => {
            let why = match &e {
                samkit_cuda::Error::NoDevice(s) => s.clone(),
                other => other.to_string(),
            };
            println!("skip: no CUDA device ({why})");
            return None;
        }
        Err(e) => panic!("opening the CUDA device: {e}"),
    };
    Some(Env {
        dev,
        width: 64,
        batch: 8,
        required: required(),
        turn: Some(turn),
        opts: options_under_test(),
    })
}

nn_parity_tests!(env);

// ---------------------------------------------------------------------------------------------
// The kernels build
// ---------------------------------------------------------------------------------------------

/// samkit-kernels' `kernels/nn.cu` compiles with NVRTC to sm_80 and sm_90 cubins without an error, a warning or
/// a spill (no GPU needed). `SAMKIT_WRITE_CUBINS=<dir>` keeps the cubins for a GPU machine
/// without NVRTC (`SAMKIT_CUDA_CUBIN_DIR`, see scripts/gpu-check.sh).
#[test]
fn nn_kernels_compile_clean_for_sm80_and_sm90() {
    let require = std::env::var("SAMKIT_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    let ready = samkit_cuda::env::ensure_nvrtc().and_then(|_| samkit_cuda::env::include_dir());
    if let Err(e) = ready {
        if require {
            panic!("SAMKIT_REQUIRE_NVRTC=1 but {e}");
        }
        println!("skip: NVRTC not available ({e}); SAMKIT_REQUIRE_NVRTC=1 makes this a failure");
        return;
    }
    let keep = std::env::var_os("SAMKIT_WRITE_CUBINS").map(std::path::PathBuf::from);
    for arch in [80u32, 90] {
        let c = compile(NN_KERNELS, Target::Cubin(arch)).unwrap();
        for k in &c.kernels {
            println!(
                "nn {:<24} sm_{arch} {:>3} registers {:>5} B smem",
                k.name, k.registers, k.smem
            );
        }
        assert!(!c.kernels.is_empty(), "no ptxas report for sm_{arch}");
        if let Err(e) = c.check_clean() {
            panic!("{e}\n{}", c.log);
        }
        if let Some(dir) = &keep {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(prebuilt_name(NN_KERNELS, arch)), &c.image).unwrap();
        }
    }
}

/// Without a device, opening the backend is an error value that says so (never a panic).
#[test]
fn no_device_is_an_error_value() {
    match Cuda::open_default() {
        Ok(c) => println!("device present: {:?}", Backend::device(&c)),
        Err(e) => {
            println!("no backend: {e}");
            assert!(
                e.is_no_device() || matches!(e, samkit_nn::Error::Cuda(_)),
                "{e:?}"
            );
        }
    }
}
