//! Helpers shared by the `samkit` binary's test files (`mod common;` in each): run the binary,
//! make a fresh output folder, read its output and JSON files, and check its exit code. The
//! `--device cuda` tests keep their own runner in `cuda_cli/`, which adds per-context flags and
//! variables.
// Each test binary compiles this module on its own and uses only some of the helpers.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Synthetic data and a width-2 network on two steps: a run that takes well under a second.
pub const TINY_RUN: [&str; 12] = [
    "--width",
    "2",
    "--train-size",
    "64",
    "--test-size",
    "16",
    "--batch",
    "16",
    "--steps-per-epoch",
    "2",
    "--epochs",
    "1",
];

/// Runs the `samkit` binary built for these tests with `args`.
pub fn samkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_samkit"))
        .args(args)
        .output()
        .expect("the samkit binary runs")
}

/// An empty-to-be folder `<prefix>-<name>` in cargo's test temp folder: whatever an earlier run
/// left there is removed. The prefix keeps test binaries that run at once apart.
pub fn fresh_dir(prefix: &str, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Output bytes as text (invalid UTF-8 replaced, so a failing run's message still shows).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the run succeeded (showing its exit code, stdout and stderr if not); returns stdout.
pub fn ok(o: &Output) -> String {
    let out = text(&o.stdout);
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{out}\nstderr:\n{}",
        o.status.code(),
        text(&o.stderr)
    );
    out
}

/// Asserts exit 2 with every one of `says` in the message; returns the message.
pub fn refused(o: &Output, says: &[&str]) -> String {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr:\n{err}");
    for s in says {
        assert!(err.contains(s), "{s:?} not in:\n{err}");
    }
    err
}

/// A JSON file the binary wrote, parsed.
pub fn json(path: &Path) -> serde_json::Value {
    let body = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} is readable: {e}", path.display()));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{} is valid JSON: {e}", path.display()))
}

/// A JSON-lines file the binary wrote (`steps.jsonl`), one parsed record per line.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} is readable: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect()
}

/// The step log of the run in `out` without its wall-clock `seconds`, for comparing two runs
/// that should have taken the same steps.
pub fn steps_without_time(out: &Path) -> Vec<serde_json::Value> {
    let mut steps = json_lines(&out.join("steps.jsonl"));
    for v in &mut steps {
        if let Some(o) = v.as_object_mut() {
            o.remove("seconds");
        }
    }
    steps
}

/// Trains `rule` for one epoch of 2 steps on a width-2 network into `dir` (seconds in a debug
/// build) and returns its checkpoint folder: a real checkpoint for the commands that read one.
pub fn tiny_checkpoint(rule: &str, dir: &Path) -> PathBuf {
    let mut args = vec!["train", "--optimizer", rule];
    args.extend(TINY_RUN);
    args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
    ok(&samkit(&args));
    dir.join("checkpoint")
}

/// The environment that points the `samkit` binary at the CPU emulation of a CUDA device
/// (samkit-testkit's fake driver, cuBLAS and cuDNN): its library path and libraries; `None`,
/// with one skip line, where g++ or NVRTC is missing.
pub fn emulated_env() -> Option<Vec<(String, String)>> {
    let libs = samkit_testkit::or_skip(samkit_testkit::library_files())?;
    let mut path: Vec<String> = libs
        .iter()
        .filter_map(|l| l.parent().map(|d| d.display().to_string()))
        .collect();
    if let Ok(p) = std::env::var("LD_LIBRARY_PATH") {
        path.push(p);
    }
    let file = |i: usize| libs[i].display().to_string();
    Some(vec![
        ("LD_LIBRARY_PATH".into(), path.join(":")),
        ("SAMKIT_CUBLAS_LIB".into(), file(1)),
        ("SAMKIT_CUDNN_LIB".into(), file(2)),
    ])
}
