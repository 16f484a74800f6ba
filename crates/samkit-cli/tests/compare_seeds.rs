//! `samkit compare --seeds N`: every optimizer trained with seeds s, s+1, ..., and the table
//! and compare.json give mean ± std of the final test results; bad counts are refused.
mod common;

use common::{samkit, text};
use std::path::PathBuf;

/// A fresh folder for one test, named apart from the other test binaries' folders.
fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("compare-seeds", name)
}

/// A comparison that takes well under a second per run.
const TINY: [&str; 12] = [
    "--width",
    "2",
    "--train-size",
    "96",
    "--test-size",
    "32",
    "--batch",
    "16",
    "--steps-per-epoch",
    "2",
    "--epochs",
    "1",
];

/// Values from f32 arithmetic round-tripped through JSON: mean and std are recomputed in f64.
const STAT_TOLERANCE: f64 = 1e-9;

#[test]
fn two_seeds_give_mean_and_std_per_optimizer() {
    let dir = fresh_dir("two");
    let mut args = vec![
        "compare",
        "--optimizers",
        "sgd,sam",
        "--seeds",
        "2",
        "--seed",
        "5",
    ];
    args.extend(TINY);
    args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
    let o = samkit(&args);
    let out = text(&o.stdout);
    assert!(
        o.status.success(),
        "exit {:?}\n{out}\n{}",
        o.status.code(),
        text(&o.stderr)
    );
    // The default synthetic comparison puts label noise on the training labels.
    assert!(out.contains("label noise"), "{out}");
    for name in ["sgd", "sam"] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(name) && l.contains('±') && l.contains('%')),
            "{name} row lacks mean ± std:\n{out}"
        );
    }
    let json = common::json(&dir.join("compare.json"));
    let rows = json.as_array().expect("a list of rows");
    assert_eq!(rows.len(), 2);
    for r in rows {
        let seeds = r["seeds"].as_array().expect("per-seed results");
        let used: Vec<u64> = seeds.iter().filter_map(|s| s["seed"].as_u64()).collect();
        assert_eq!(used, [5, 6], "{}", r["optimizer"]);
        let acc: Vec<f64> = seeds
            .iter()
            .map(|s| s["test_accuracy"].as_f64().expect("accuracy"))
            .collect();
        let mean = (acc[0] + acc[1]) / 2.0;
        // Sample standard deviation of two values: |a − b| / √2.
        let std = (acc[0] - acc[1]).abs() / 2f64.sqrt();
        let got_mean = r["test_accuracy_mean"].as_f64().expect("mean");
        let got_std = r["test_accuracy_std"].as_f64().expect("std");
        assert!(
            (got_mean - mean).abs() < STAT_TOLERANCE,
            "{got_mean} vs {mean}"
        );
        assert!((got_std - std).abs() < STAT_TOLERANCE, "{got_std} vs {std}");
        assert!(r["test_loss_mean"].as_f64().is_some_and(f64::is_finite));
        assert!(r["test_loss_std"].as_f64().is_some_and(|s| s >= 0.0));
    }
}

#[test]
fn bad_seed_counts_exit_2_naming_the_flag() {
    for n in ["0", "1000000"] {
        let dir = fresh_dir(&format!("bad-{n}"));
        let mut args = vec!["compare", "--optimizers", "sgd", "--seeds", n];
        args.extend(TINY);
        args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
        let o = samkit(&args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "--seeds {n}: {err}");
        assert!(err.contains("--seeds"), "--seeds {n}: {err}");
    }
    // A seed range past the end of u64.
    let dir = fresh_dir("overflow");
    let max = u64::MAX.to_string();
    let mut args = vec![
        "compare",
        "--optimizers",
        "sgd",
        "--seeds",
        "2",
        "--seed",
        &max,
    ];
    args.extend(TINY);
    args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
    let o = samkit(&args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--seeds"), "{err}");
}
