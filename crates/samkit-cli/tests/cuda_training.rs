//! `--device cuda` end to end on a real device: the CUDA trainer (cuDNN/cuBLAS ResNet-18 and
//! samkit-cuda's optimizer) follows the CPU trainer's trajectory for every rule, resumes exactly,
//! and its commands write what the CPU ones write (`cuda_cli/`). Without a GPU the device is
//! refused with exit code 2 and these tests print one skip line (`SAMKIT_REQUIRE_CUDA=1` makes
//! that a failure); `cuda_emulated.rs` runs the same tests on the CPU emulation of a device.
//!
//! `scripts/gpu-check.sh` runs this binary on a GPU machine with `SAMKIT_BIN` pointing at the
//! `samkit` binary it carried there.
mod cuda_cli;

use cuda_cli::Ctx;

fn ctx() -> Ctx {
    Ctx {
        env: Vec::new(),
        // Test plumbing: the GPU check's rehearsal on the emulated device asks for a small cuDNN
        // workspace this way (`tools/gpu-check/run.py`).
        cuda_flags: std::env::var("SAMKIT_TEST_CUDA_FLAGS")
            .map(|v| v.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        rules: vec![
            "sgd",
            "sam",
            "sam-adaptive",
            "asam",
            "friendlysam",
            "ssam-f",
            "ssam-d",
            "imbsam",
            "gsam",
            "looksam",
        ],
        required: false,
        tag: "cuda-train",
    }
}

#[test]
fn without_a_device_cuda_is_refused_clearly() {
    // Either refused with exit code 2 and the reason, or (on a GPU machine) it runs.
    let _ = cuda_cli::cuda_available(&ctx());
}

#[test]
fn cuda_trainer_follows_the_cpu_trainer() {
    let c = ctx();
    if cuda_cli::cuda_available(&c) {
        cuda_cli::cuda_trainer_follows_the_cpu_trainer(&c);
    }
}

#[test]
fn cuda_resume_equals_an_uninterrupted_run() {
    let c = ctx();
    if cuda_cli::cuda_available(&c) {
        cuda_cli::cuda_resume_equals_an_uninterrupted_run(&c);
    }
}

#[test]
fn cuda_compare_and_bench_write_their_files() {
    let c = ctx();
    if cuda_cli::cuda_available(&c) {
        cuda_cli::cuda_compare_and_bench_write_their_files(&c);
    }
}
