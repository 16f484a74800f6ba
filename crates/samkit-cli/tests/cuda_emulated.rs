//! The `--device cuda` tests of `cuda_cli/` on the CPU emulation of a device: the `samkit`
//! binary finds the fake driver, cuBLAS and cuDNN of samkit-testkit through
//! its library path, so the CUDA trainer (engine, CUDA events, `GpuOptimizer`, the cuDNN/cuBLAS
//! ResNet-18) runs end to end where no GPU is. Skipped, with one line, where a real driver is
//! installed (`cuda_training.rs` runs there) or where g++ or NVRTC is missing
//! (`SAMKIT_REQUIRE_EMULATION=1` makes that a failure).
mod cuda_cli;

use cuda_cli::Ctx;

fn ctx() -> Option<Ctx> {
    let libs = samkit_testkit::or_skip(samkit_testkit::library_files())?;
    let mut path: Vec<String> = libs
        .iter()
        .filter_map(|l| l.parent().map(|d| d.display().to_string()))
        .collect();
    if let Ok(p) = std::env::var("LD_LIBRARY_PATH") {
        path.push(p);
    }
    let file = |i: usize| libs[i].display().to_string();
    Some(Ctx {
        env: vec![
            ("LD_LIBRARY_PATH".into(), path.join(":")),
            ("SAMKIT_CUBLAS_LIB".into(), file(1)),
            ("SAMKIT_CUDNN_LIB".into(), file(2)),
        ],
        // The emulated cuDNN's algorithm search: no large workspace to clear per shape.
        cuda_flags: vec!["--cudnn-workspace-mb".into(), "4".into()],
        rules: vec![
            "sgd",
            "sam",
            "friendlysam",
            "ssam-f",
            "ssam-d",
            "imbsam",
            "looksam",
        ],
        required: true,
        tag: "cuda-emulated",
    })
}

#[test]
fn emulated_cuda_trainer_follows_the_cpu_trainer() {
    if let Some(c) = ctx() {
        assert!(cuda_cli::cuda_available(&c));
        cuda_cli::cuda_trainer_follows_the_cpu_trainer(&c);
    }
}

#[test]
fn emulated_cuda_resume_equals_an_uninterrupted_run() {
    if let Some(c) = ctx() {
        assert!(cuda_cli::cuda_available(&c));
        cuda_cli::cuda_resume_equals_an_uninterrupted_run(&c);
    }
}

#[test]
fn emulated_cuda_compare_and_bench_write_their_files() {
    if let Some(c) = ctx() {
        assert!(cuda_cli::cuda_available(&c));
        cuda_cli::cuda_compare_and_bench_write_their_files(&c);
    }
}
