//! `--preset-survey` and `samkit table1` (issue 13): the preset's departures and time estimate
//! printed before a run, the table on synthetic data with tiny settings (mean ± std per cell
//! beside the survey's numbers, finished runs reused), `--dry-run`, and the CIFAR folder refused
//! when missing. The preset's exact settings are checked in `train::preset`'s unit tests.
mod common;

use common::{json, ok, refused, samkit};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("table1", name)
}

/// [`common::TINY_RUN`] with a small Fisher: each run takes a fraction of a second.
fn tiny() -> Vec<&'static str> {
    [&common::TINY_RUN[..], &["--fisher-samples", "8"]].concat()
}

/// Mean and std recomputed in f64 from the per-seed values the JSON holds.
const STAT_TOLERANCE: f64 = 1e-9;

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

#[test]
fn train_with_the_preset_prints_its_departures_and_a_time_estimate_first() {
    let dir = fresh_dir("train-preset");
    let mut args = vec!["train", "--optimizer", "ssam-f", "--preset-survey"];
    args.extend(tiny());
    args.extend(["--out", path(&dir)]);
    let out = ok(&samkit(&args));
    assert!(
        out.contains("--preset-survey: the survey's table-1 setup"),
        "{out}"
    );
    for d in [
        "--epochs 1 (survey: 80)",
        "--width 2 (survey: 64)",
        "--fisher-samples 8 (survey: 256)",
        "--batch 16 (survey: 128)",
    ] {
        assert!(out.contains(d), "{d} not in:\n{out}");
    }
    // The estimate comes before the training, and says it is one.
    let est = out.find("time ESTIMATE").expect("an estimate");
    let training = out.find("training ssam-f").expect("the training line");
    assert!(est < training, "{out}");
    assert!(out.contains("estimated total:"), "{out}");
    // The run kept the preset where no flag overrode it.
    let cfg = &json(&dir.join("checkpoint").join("trainer.json"))["config"];
    assert_eq!(cfg["base"]["type"], "sgd");
    assert_eq!(cfg["base"]["momentum"].as_f64(), Some(0.9));
    assert_eq!(cfg["schedule"]["base_lr"].as_f64(), Some(0.1));
    assert_eq!(cfg["schedule"]["schedule"]["type"], "step");
    assert_eq!(cfg["rule"]["interval"].as_u64(), Some(5));
    assert_eq!(cfg["rule"]["mask"]["samples"].as_u64(), Some(8));
}

#[test]
fn compare_with_the_preset_estimates_every_optimizer_before_training() {
    let dir = fresh_dir("compare-preset");
    let mut args = vec![
        "compare",
        "--optimizers",
        "sgd,sam",
        "--seeds",
        "2",
        "--preset-survey",
    ];
    args.extend(common::TINY_RUN);
    args.extend(["--out", path(&dir)]);
    let out = ok(&samkit(&args));
    let est = out.find("time ESTIMATE").expect("an estimate");
    let first_epoch = out.find("epoch   1").expect("an epoch line");
    assert!(est < first_epoch, "{out}");
    // One line per optimizer, each counted for both seeds.
    assert_eq!(out.matches("per run × 2 seeds").count(), 2, "{out}");
    assert!(out.contains("--epochs 1 (survey: 80)"), "{out}");
}

#[test]
fn table1_on_synthetic_data_writes_mean_and_std_beside_the_survey() {
    let dir = fresh_dir("synthetic");
    let mut args = vec!["table1", "--data", "synthetic", "--seeds", "2"];
    args.extend(tiny());
    args.extend(["--out", path(&dir)]);
    let out = ok(&samkit(&args));
    assert!(out.contains("= 8 runs"), "{out}");
    assert!(out.contains("time ESTIMATE"), "{out}");
    let j = json(&dir.join("table1.json"));
    // The survey's numbers, all eight, with their source.
    assert_eq!(j["survey"].as_array().unwrap().len(), 8);
    assert!(j["survey_source"].as_str().unwrap().contains("Таблица 1"));
    assert_eq!(j["survey"][0], serde_json::json!(["CIFAR-10", "sam", 92.0]));
    let cells = j["cells"].as_array().unwrap();
    let names: Vec<&str> = cells
        .iter()
        .map(|c| c["optimizer"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sam", "friendlysam", "ssam-f", "ssam-d"]);
    let runs = j["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 8);
    for c in cells {
        assert_eq!(c["dataset"], "synthetic");
        assert_eq!(c["seeds"], serde_json::json!([0, 1]));
        // The cell's accuracies are its runs' (in %), and mean ± std are theirs.
        let acc: Vec<f64> = c["accuracies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let from_runs: Vec<f64> = runs
            .iter()
            .filter(|r| r["optimizer"] == c["optimizer"])
            .map(|r| 100.0 * r["test_accuracy"].as_f64().unwrap())
            .collect();
        assert_eq!(acc.len(), 2);
        for (a, b) in acc.iter().zip(&from_runs) {
            assert!((a - b).abs() < STAT_TOLERANCE, "{c}");
        }
        let mean = (acc[0] + acc[1]) / 2.0;
        let std = ((acc[0] - mean).powi(2) + (acc[1] - mean).powi(2)).sqrt();
        assert!((c["test_accuracy_mean"].as_f64().unwrap() - mean).abs() < STAT_TOLERANCE);
        assert!((c["test_accuracy_std"].as_f64().unwrap() - std).abs() < STAT_TOLERANCE);
        // The survey has no synthetic numbers.
        assert!(
            c["survey_accuracy"].is_null() && c["difference"].is_null(),
            "{c}"
        );
    }
    let md = std::fs::read_to_string(dir.join("table1.md")).unwrap();
    assert!(
        md.contains("| dataset | sam | friendlysam | ssam-f | ssam-d |"),
        "{md}"
    );
    assert!(md.contains("| synthetic |") && md.contains("(n=2)"), "{md}");
    assert!(md.contains("Departs from the survey's setup"), "{md}");
    // Run again: every run is found finished and not trained again; the table is the same.
    let again = ok(&samkit(&args));
    assert_eq!(again.matches("done before").count(), 8, "{again}");
    let j2 = json(&dir.join("table1.json"));
    assert_eq!(j2["cells"], j["cells"]);
}

#[test]
fn table1_dry_run_prints_the_runs_and_the_estimate_and_trains_nothing() {
    let dir = fresh_dir("dry");
    let mut args = vec![
        "table1",
        "--data",
        "synthetic",
        "--optimizers",
        "sam,ssam-d",
        "--dry-run",
    ];
    args.extend(tiny());
    args.extend(["--out", path(&dir)]);
    let out = ok(&samkit(&args));
    assert!(
        out.contains("1 dataset(s) × 2 optimizer(s) × 4 seed(s)"),
        "{out}"
    );
    assert!(
        out.contains("synthetic sam:") && out.contains("synthetic ssam-d:"),
        "{out}"
    );
    assert!(
        out.contains("estimated total:") && out.contains("nothing trained"),
        "{out}"
    );
    assert!(!dir.join("table1.json").exists());
}

#[test]
fn table1_refuses_a_missing_cifar_folder_and_bad_options() {
    let missing = fresh_dir("no-such-folder");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_samkit"))
            .args(args)
            .env_remove("SAMKIT_CIFAR_DIR")
            .output()
            .expect("the samkit binary runs")
    };
    refused(
        &run(&["table1", "--data-dir", path(&missing), "--dry-run"]),
        &["--data-dir", "is not a folder"],
    );
    refused(&run(&["table1", "--dry-run"]), &["--data-dir"]);
    refused(
        &run(&["table1", "--data", "synthetic", "--seeds", "0"]),
        &["--seeds"],
    );
    refused(
        &run(&["table1", "--data", "synthetic", "--optimizers", "sam,nope"]),
        &["--optimizers", "nope"],
    );
    refused(
        &run(&[
            "table1",
            "--data",
            "cifar10",
            "--data-dir",
            path(&missing),
            "--train-size",
            "9",
        ]),
        &["--data-dir"],
    );
}
