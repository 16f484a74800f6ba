//! The CUDA device settings are flags recorded in the run's config, never environment
//! variables: they are refused where they mean nothing, bounded, and written to trainer.json.
mod common;

use common::samkit;
use std::path::{Path, PathBuf};

fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cuda-flags-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn cuda_settings_with_the_cpu_are_refused_naming_the_flag() {
    let out = fresh_dir("cpu");
    for flags in [
        &["--tf32"][..],
        &["--cudnn-deterministic"],
        &["--cudnn-algo", "heuristic"],
        &["--cudnn-workspace-mb", "4"],
        &["--cuda-device", "1"],
    ] {
        let mut a = vec!["train", "--epochs", "1", "--out", out.to_str().unwrap()];
        a.extend(flags);
        let o = samkit(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        assert!(
            err.contains(flags[0]) && err.contains("--device cuda"),
            "{flags:?}: {err}"
        );
        assert!(!out.exists(), "{flags:?}: nothing is written");
    }
}

#[test]
fn bad_cuda_settings_are_refused_before_any_device_work() {
    let out = fresh_dir("bad");
    for (flags, named) in [
        (
            &["--cudnn-workspace-mb", "99999999"][..],
            "--cudnn-workspace-mb",
        ),
        (&["--cudnn-algo", "fastest"], "--cudnn-algo"),
        (&["--cuda-device", "-1"], "--cuda-device"),
    ] {
        let mut a = vec!["train", "--device", "cuda", "--out", out.to_str().unwrap()];
        a.extend(flags);
        let o = samkit(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(named), "{flags:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_cpu_run_records_the_default_cuda_settings_in_its_config() {
    let out = fresh_dir("record");
    let o = samkit(&[
        "train",
        "--width",
        "2",
        "--train-size",
        "32",
        "--test-size",
        "16",
        "--batch",
        "16",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = common::json(&out.join("checkpoint").join("trainer.json"));
    let cuda = &v["config"]["cuda"];
    assert_eq!(cuda["tf32"], false, "{cuda}");
    assert_eq!(cuda["cudnn_algo"], "benchmark", "{cuda}");
    assert_eq!(cuda["cudnn_deterministic"], false, "{cuda}");
    assert_eq!(cuda["cudnn_workspace_mb"], 1024, "{cuda}");
    assert_eq!(cuda["device"], 0, "{cuda}");
}
