//! The `--device cuda` tests of `cuda_cli/` on the CPU emulation of a device: the `samkit`
//! binary finds the fake driver, cuBLAS and cuDNN of samkit-testkit through
//! its library path, so the CUDA trainer (engine, CUDA events, `GpuOptimizer`, the cuDNN/cuBLAS
//! ResNet-18) runs end to end where no GPU is. Skipped, with one line, where a real driver is
//! installed (`cuda_training.rs` runs there) or where g++ or NVRTC is missing
//! (`SAMKIT_REQUIRE_EMULATION=1` makes that a failure).
mod common;
mod cuda_cli;
// The suite's rows from the command's own list, not a copy.
#[path = "../src/train/cost_suite.rs"]
mod cost_suite;

use cost_suite::COST_SUITE;
use cuda_cli::Ctx;

fn ctx() -> Option<Ctx> {
    Some(Ctx {
        env: common::emulated_env()?,
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

/// `samkit` with the emulated device's environment; a `--device cuda` run also gets the
/// context's CUDA flags.
fn run(c: &Ctx, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_samkit"));
    cmd.args(args);
    if args.windows(2).any(|w| w == ["--device", "cuda"]) {
        cmd.args(&c.cuda_flags);
    }
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    cmd.output().expect("the samkit binary runs")
}

/// Stdout of a successful run (the failure shows both streams).
fn ok(o: &std::process::Output) -> String {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{out}\nstderr:\n{err}",
        o.status.code()
    );
    out.into_owned()
}

/// A fresh folder for one of these tests (the process id: two test binaries at once).
fn fresh(name: &str) -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cuda-emulated-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The smallest run that trains: 2 steps of a width-2 ResNet-18 on 8-image batches (the
/// emulated device runs every kernel thread by thread on the CPU).
const SMALL: [&str; 16] = [
    "--width",
    "2",
    "--train-size",
    "32",
    "--test-size",
    "16",
    "--batch",
    "8",
    "--steps-per-epoch",
    "2",
    "--epochs",
    "1",
    "--fisher-samples",
    "4",
    "--mask-interval",
    "1",
];

/// `compare --suite cost` on the device, as CI's answer to the README's GPU column: every
/// optimizer of the suite trains, and compare.json holds its passes per step, its pass2/pass1
/// (a number wherever a second pass ran every step) and a finite step time; MESA and SAF run
/// with their distillation term from the first epoch (the suite's `--distill-start 0`).
#[test]
fn emulated_cuda_compare_suite_cost_reports_every_optimizer() {
    let Some(c) = ctx() else { return };
    let dir = fresh("suite-cost");
    let mut a = vec!["compare", "--suite", "cost", "--device", "cuda"];
    a.extend(SMALL);
    a.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
    let out = ok(&run(&c, &a));
    assert!(
        out.contains("pass2/pass1") && out.contains("save/SAM"),
        "{out}"
    );
    let json = common::json(&dir.join("compare.json"));
    let rows = json.as_array().expect("rows");
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["optimizer"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, COST_SUITE, "the suite's rows in order");
    // Rules whose every step has a second pass: the ratio is measured after the first step
    // (warm-up), where LookSAM (k = 5) reuses its direction, RST draws, and MESA and SAF have
    // none.
    let two_pass = [
        "sam",
        "ssam-f",
        "ssam-d",
        "ssam-l",
        "ssam-l-truncated",
        "esam",
        "sam-on",
    ];
    for r in rows {
        let name = r["optimizer"].as_str().expect("a name");
        let p = &r["passes"];
        for k in ["forward", "forward_nograd", "backward"] {
            let v = p[k].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite() && v >= 0.0, "{name}: passes.{k} = {p}");
        }
        assert!(p["forward"].as_f64() >= Some(1.0), "{name}: {p}");
        assert!(
            r.as_object()
                .expect("a row")
                .contains_key("pass2_over_pass1"),
            "{name}: no pass2_over_pass1"
        );
        let ratio = r["pass2_over_pass1"].as_f64();
        if two_pass.contains(&name) {
            assert!(
                ratio.is_some_and(|x| x.is_finite() && x > 0.0),
                "{name}: pass2/pass1 {ratio:?}"
            );
        }
        let s = &r["step_seconds"];
        let step: f64 = ["pass1", "perturb", "pass2", "update", "mask", "distill"]
            .iter()
            .map(|k| s[k].as_f64().unwrap_or(f64::NAN))
            .sum();
        assert!(step.is_finite() && step > 0.0, "{name}: step time {s}");
        let start = &r["config"]["distill"]["start_epoch"];
        if name == "mesa" || name == "saf" {
            assert_eq!(start.as_u64(), Some(0), "{name}: distill {start}");
        }
    }
}

/// The options the device once refused (EG-SAM's and OG-SAM's extrapolation, SAM-ON's `asam`
/// form, SSAM-L's `fisher` selection) train with `--device cuda`, and follow the CPU trainer:
/// the same data, seed and steps give the same losses to the emulator's rounding.
#[test]
fn emulated_cuda_trains_the_formerly_refused_options_like_the_cpu() {
    let Some(c) = ctx() else { return };
    let cases: [&[&str]; 4] = [
        &["--optimizer", "eg-sam"],
        &["--optimizer", "og-sam"],
        &["--optimizer", "sam-on", "--sam-on-asam"],
        &["--optimizer", "ssam-l", "--mask-select", "fisher"],
    ];
    for rest in cases {
        let mut losses = Vec::new();
        for device in ["cpu", "cuda"] {
            let dir = fresh(&format!("{}-{device}", rest[1..].join("")));
            let mut a = vec!["train", "--device", device, "--lr", "0.01"];
            a.extend(rest);
            a.extend(SMALL);
            a.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
            ok(&run(&c, &a));
            let l: Vec<f64> = common::json_lines(&dir.join("steps.jsonl"))
                .iter()
                .map(|v| v["loss"].as_f64().expect("a loss"))
                .collect();
            losses.push(l);
        }
        let (cpu, gpu) = (&losses[0], &losses[1]);
        assert_eq!(cpu.len(), gpu.len(), "{rest:?}: steps");
        assert!(!cpu.is_empty(), "{rest:?}: no step logged");
        for (i, (a, b)) in cpu.iter().zip(gpu).enumerate() {
            let rel = (a - b).abs() / a.abs().max(b.abs()).max(1e-12);
            assert!(rel < LOSS_TOLERANCE, "{rest:?} step {i}: cpu {a} cuda {b}");
        }
        println!(
            "{rest:?}: the device follows the CPU over {} steps",
            cpu.len()
        );
    }
}

/// The relative loss difference the CPU and the emulated device may show over two steps of a
/// width-2 net at lr 0.01 (cuDNN's and the CPU's summation orders differ in the last bits).
const LOSS_TOLERANCE: f64 = 1e-4;
