//! The cheaper second passes from the command line: the new optimizers train and compare with
//! their pass counts, every new flag's bad value exits 2 naming the flag, a flag for another
//! rule is refused, `--help` labels EG/OG-SAM reconstructed, and a rule the GPU has no kernel
//! for is refused with `--device cuda` before any device is opened.
mod common;

use common::{samkit, text};
use std::path::PathBuf;

/// A fresh folder for one test, named apart from the other test binaries' folders.
fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("cheaper", name)
}

const TINY: [&str; 12] = [
    "--width",
    "2",
    "--train-size",
    "48",
    "--test-size",
    "16",
    "--batch",
    "8",
    "--steps-per-epoch",
    "2",
    "--epochs",
    "1",
];

/// A usage error (exit 2) whose message names `--flag`; nothing is written.
fn assert_usage_error(args: &[&str], flag: &str) {
    let dir = fresh_dir(&format!("refused-{flag}"));
    let mut args = args.to_vec();
    args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
    common::refused(&samkit(&args), &[&format!("--{flag}")]);
}

#[test]
fn compare_reports_passes_for_the_new_rules() {
    let dir = fresh_dir("compare");
    let mut args = vec![
        "compare",
        "--optimizers",
        "sgd,sam,ssam-l,esam,sam-on,rst,eg-sam,og-sam",
        "--pass2",
        "truncated",
        "--esam-gamma",
        "0.25",
        "--rst-p",
        "1",
    ];
    args.extend(TINY);
    args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
    let o = samkit(&args);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    assert!(
        out.contains("passes F/F0/B") && out.contains("save/SAM"),
        "{out}"
    );
    let json = common::json(&dir.join("compare.json"));
    let rows = json.as_array().expect("rows");
    assert_eq!(rows.len(), 8);
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["optimizer"] == name)
            .unwrap_or_else(|| panic!("no {name} row"))
    };
    let passes = |name: &str, key: &str| row(name)["passes"][key].as_f64().expect("a count");
    assert_eq!(passes("sgd", "forward"), 1.0);
    assert_eq!(passes("sam", "backward"), 2.0);
    assert_eq!(passes("rst", "forward"), 2.0, "p = 1 is SAM");
    // ESAM with γ = 0.25 of 8: a forward without gradient and 2 of 8 samples in pass 2.
    assert_eq!(passes("esam", "forward_nograd"), 1.0);
    assert_eq!(passes("esam", "forward"), 1.25);
    assert!(passes("ssam-l", "backward") < 2.0, "truncated");
    assert_eq!(row("ssam-l")["config"]["pass2"], "truncated");
    assert_eq!(row("esam")["config"]["rule"]["gamma"], 0.25);
    assert!(row("sgd")["pass2_over_pass1"].is_null());
    assert!(row("sam")["pass2_over_pass1"].as_f64().is_some());
    // 0 by definition, or null when this tiny run's SAM step happened not to be slower than
    // SGD's (timing noise on a loaded machine: no span to measure a saving against).
    let saving = &row("sam")["saving_vs_sam"];
    assert!(saving.is_null() || *saving == 0.0, "{saving}");
}

#[test]
fn train_runs_a_new_rule_and_logs_its_passes() {
    let dir = fresh_dir("train");
    let mut args = vec!["train", "--optimizer", "esam", "--esam-beta", "0.5"];
    args.extend(TINY);
    args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
    let o = samkit(&args);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let steps = common::json_lines(&dir.join("steps.jsonl"));
    let first = steps.first().expect("a step");
    assert_eq!(first["passes"]["forward_nograd"], 1.0);
    assert_eq!(first["passes"]["forward"], 1.5, "γ = 0.5 by default");
}

#[test]
fn bad_values_of_the_new_flags_exit_2_naming_them() {
    let bad: [(&str, &[&str]); 8] = [
        ("esam-beta", &["--optimizer", "esam", "--esam-beta", "0"]),
        ("esam-beta", &["--optimizer", "esam", "--esam-beta", "1.5"]),
        (
            "esam-gamma",
            &["--optimizer", "esam", "--esam-gamma", "-0.1"],
        ),
        ("rst-p", &["--optimizer", "rst", "--rst-p", "2"]),
        (
            "rst-p-end",
            &["--optimizer", "rst", "--rst-p", "0.2", "--rst-p-end", "nan"],
        ),
        ("eta-x", &["--optimizer", "eg-sam", "--eta-x", "-1"]),
        ("pass2", &["--optimizer", "ssam-l", "--pass2", "sometimes"]),
        (
            "mask-select",
            &["--optimizer", "ssam-l", "--mask-select", "prefix"],
        ),
    ];
    for (flag, rest) in bad {
        let mut args = vec!["train"];
        args.extend(rest);
        args.extend(TINY);
        assert_usage_error(&args, flag);
    }
}

#[test]
fn a_flag_of_another_rule_is_refused() {
    let cases: [(&str, &[&str]); 5] = [
        ("pass2", &["--optimizer", "sam", "--pass2", "exact"]),
        (
            "esam-gamma",
            &["--optimizer", "ssam-l", "--esam-gamma", "0.5"],
        ),
        ("rst-p", &["--optimizer", "esam", "--rst-p", "0.5"]),
        ("eta-x", &["--optimizer", "sam", "--eta-x", "0.1"]),
        ("sam-on-asam", &["--optimizer", "asam", "--sam-on-asam"]),
    ];
    for (flag, rest) in cases {
        let mut args = vec!["train"];
        args.extend(rest);
        args.extend(TINY);
        assert_usage_error(&args, flag);
    }
    // A comparison takes a flag that applies to one of its optimizers, none other.
    let mut args = vec!["compare", "--optimizers", "sgd,sam", "--esam-beta", "0.5"];
    args.extend(TINY);
    assert_usage_error(&args, "esam-beta");
}

#[test]
fn help_labels_eg_and_og_sam_reconstructed() {
    let o = samkit(&["train", "--help"]);
    assert!(o.status.success());
    let help = text(&o.stdout);
    for want in [
        "ssam-l", "esam", "sam-on", "rst", "eg-sam", "og-sam", "--pass2",
    ] {
        assert!(help.contains(want), "--help lacks {want}");
    }
    assert!(help.contains("reconstructed"), "{help}");
}

/// The device runs every option now (they train like the CPU on the emulated device:
/// `cuda_emulated.rs`): none is refused as one the GPU "does not run". Here, without the
/// emulator's libraries, a run either trains (a real device) or stops at the missing device.
#[test]
fn the_formerly_refused_options_are_accepted_with_device_cuda() {
    let cases: [&[&str]; 4] = [
        &["--optimizer", "og-sam"],
        &["--optimizer", "eg-sam"],
        &["--optimizer", "sam-on", "--sam-on-asam"],
        &["--optimizer", "ssam-l", "--mask-select", "fisher"],
    ];
    for rest in cases {
        let dir = fresh_dir(&format!("cuda-{}", rest[1]));
        let mut args = vec!["train", "--device", "cuda"];
        args.extend(rest);
        args.extend(TINY);
        args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
        let o = samkit(&args);
        let err = text(&o.stderr);
        assert!(!err.contains("does not run"), "{args:?}: {err}");
        if !o.status.success() {
            assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains("no usable CUDA device"), "{args:?}: {err}");
        }
    }
}

#[test]
fn compare_suite_cost_trains_every_cost_reducer_and_prints_the_saving() {
    let dir = fresh_dir("suite-cost");
    let mut args = vec!["compare", "--suite", "cost", "--fisher-samples", "8"];
    args.extend(TINY);
    args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
    let o = samkit(&args);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    for name in [
        "sgd",
        "sam",
        "ssam-f",
        "ssam-d",
        "ssam-l ",
        "ssam-l-truncated",
        "esam",
        "sam-on",
        "rst",
        "looksam",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(name) && l.contains('%')),
            "no {name} row:\n{out}"
        );
    }
    for column in [
        "ms/step",
        "vs SGD",
        "pass2/pass1",
        "passes F/F0/B",
        "save/SAM",
    ] {
        assert!(out.contains(column), "no {column} column:\n{out}");
    }
    let json = common::json(&dir.join("compare.json"));
    let rows = json.as_array().expect("rows");
    let truncated = rows
        .iter()
        .find(|r| r["optimizer"] == "ssam-l-truncated")
        .expect("a truncated row");
    assert_eq!(truncated["config"]["pass2"], "truncated");
    // "Saving vs SAM" is 1 − (step − SGD)/(SAM − SGD): 1 for SGD, 0 for SAM, by definition.
    let saving = |name: &str| {
        rows.iter()
            .find(|r| r["optimizer"] == name)
            .and_then(|r| r["saving_vs_sam"].as_f64())
    };
    if let (Some(sgd), Some(sam)) = (saving("sgd"), saving("sam")) {
        assert_eq!((sgd, sam), (1.0, 0.0));
    }
    // The suite fixes the optimizers and both SSAM-L modes.
    assert_usage_error(
        &["compare", "--suite", "cost", "--optimizers", "sgd"],
        "optimizers",
    );
    let mut args = vec!["compare", "--suite", "cost", "--pass2", "exact"];
    args.extend(TINY);
    assert_usage_error(&args, "pass2");
}
