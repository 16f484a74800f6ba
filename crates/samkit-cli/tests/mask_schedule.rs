//! `--mask-schedule official` (SSAM-F's official-code schedule) from the command line.
mod common;

use common::{fresh_dir, json, json_lines, ok, refused, samkit};

/// A tiny run: 2 epochs of 3 steps (24 images, batch 8), a width-2 network.
const TINY: [&str; 12] = [
    "--width",
    "2",
    "--train-size",
    "24",
    "--test-size",
    "8",
    "--batch",
    "8",
    "--epochs",
    "2",
    "--fisher-samples",
    "8",
];

#[test]
fn train_runs_ssam_f_with_the_official_schedule() {
    let dir = fresh_dir("mask-schedule", "official");
    let mut args = vec![
        "train",
        "--optimizer",
        "ssam-f",
        "--mask-schedule",
        "official",
        "--mask-interval",
        "1",
    ];
    args.extend(TINY);
    args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
    ok(&samkit(&args));
    let steps = json_lines(&dir.join("steps.jsonl"));
    assert_eq!(steps.len(), 6);
    // Step 0 has the all-zero mask (one pass); every later step perturbs.
    assert!(steps[0]["perturbed_loss"].is_null(), "{}", steps[0]);
    assert!(steps[1..].iter().all(|s| !s["perturbed_loss"].is_null()));
    // The run's configuration records the schedule with the data's epoch length.
    let cfg = json(&dir.join("checkpoint").join("trainer.json"));
    let schedule = &cfg["config"]["rule"]["schedule"];
    assert_eq!(schedule["type"], "official", "{schedule}");
    assert_eq!(schedule["steps_per_epoch"], 3, "{schedule}");
}

#[test]
fn the_official_schedule_is_ssam_f_only() {
    let mut args = vec![
        "train",
        "--optimizer",
        "ssam-d",
        "--mask-schedule",
        "official",
    ];
    args.extend(TINY);
    refused(&samkit(&args), &["mask-schedule", "ssam-f"]);
    let mut args = vec![
        "train",
        "--optimizer",
        "ssam-f",
        "--mask-schedule",
        "weekly",
    ];
    args.extend(TINY);
    let o = samkit(&args);
    assert_eq!(o.status.code(), Some(2));
}
