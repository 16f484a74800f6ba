//! Issue 12 on the `train`/`compare` side: nothing lost, nothing silently wrong. A run killed
//! with SIGKILL at random points resumes to exactly the uninterrupted run (weights, optimizer,
//! step log); a checkpoint folder mixing two saves, a corrupt `trainer.json`, conflicting or
//! inapplicable flags, a batch the training set cannot fill and a second writer on the same
//! `--out` are refused with exit 2, naming what is wrong.
mod common;

use common::{json, ok, refused, samkit, steps_without_time};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// A fresh folder for one test, named apart from the other test binaries' folders.
fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("robust-train", name)
}

/// A 3-epoch run of 2 steps each on a width-2 network: seconds in a debug build.
const RUN: [&str; 14] = [
    "train",
    "--epochs",
    "3",
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
    "--no-augment",
];

fn run(out: &Path, extra: &[&str]) -> Output {
    let mut a: Vec<&str> = RUN.to_vec();
    a.extend(extra);
    a.extend(["--out", out.to_str().expect("a UTF-8 path")]);
    samkit(&a)
}

fn resume(out: &Path) -> Output {
    let ck = out.join("checkpoint");
    samkit(&[
        "train",
        "--resume",
        ck.to_str().expect("a UTF-8 path"),
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ])
}

/// `epochs.csv`'s losses and accuracies (columns 0..6), without the timings.
fn epochs(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("epochs.csv"))
        .expect("epochs.csv")
        .lines()
        .map(|l| l.split(',').take(6).collect::<Vec<_>>().join(","))
        .collect()
}

fn assert_same_run(a: &Path, b: &Path, what: &str) {
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let x = std::fs::read(a.join("checkpoint").join(f)).expect("a checkpoint file");
        let y = std::fs::read(b.join("checkpoint").join(f)).expect("a checkpoint file");
        assert!(x == y, "{what}: {f} differs from the uninterrupted run's");
    }
    assert_eq!(
        steps_without_time(a),
        steps_without_time(b),
        "{what}: steps.jsonl"
    );
    assert_eq!(epochs(a), epochs(b), "{what}: epochs.csv");
}

/// Whether a save left anything to resume from: the folder, the previous one a crash left
/// aside (`.checkpoint.old-*`), or a staging folder a crash left complete (its manifest,
/// written last, is there). A staging folder without a manifest is a save killed half-way,
/// from which a resume is refused (exit 2: no checkpoint), so the run starts over.
fn has_checkpoint(out: &Path) -> bool {
    out.join("checkpoint").exists()
        || std::fs::read_dir(out).is_ok_and(|rd| {
            rd.filter_map(|e| e.ok()).any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(".checkpoint.old-")
                    || (n.starts_with(".checkpoint.new-")
                        && e.path().join(samkit_train::checkpoint::MANIFEST).exists())
            })
        })
}

/// A fixed linear congruential sequence of kill delays in `lo..hi` milliseconds, so that a
/// failure reproduces.
fn kill_points(n: usize, lo: u64, hi: u64) -> Vec<u64> {
    let mut x: u64 = 0x5eed_1234;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            lo + (x >> 33) % (hi - lo)
        })
        .collect()
}

/// The crash test's run: 8 epochs of one step on a width-2 network, a checkpoint after each,
/// so that kills land before, during and after saves (about a second in a debug build).
const CRASH_RUN: [&str; 14] = [
    "train",
    "--epochs",
    "8",
    "--width",
    "2",
    "--train-size",
    "32",
    "--test-size",
    "16",
    "--batch",
    "16",
    "--steps-per-epoch",
    "1",
    "--no-augment",
];

/// Kills of the crash test: each lands in a running process (a run that has finished before
/// its kill ends the chain, and the chain is then started over on a fresh folder).
const KILLS: usize = 16;

/// Starts the crash run in `out`, from scratch or (`resume`) from its checkpoint.
fn spawn_crash_run(out: &Path, resume: bool) -> std::process::Child {
    let o = out.to_str().expect("a UTF-8 path");
    let ck = out.join("checkpoint");
    let a: Vec<&str> = if resume {
        vec!["train", "--resume", ck.to_str().expect("UTF-8"), "--out", o]
    } else {
        let mut a = CRASH_RUN.to_vec();
        a.extend(["--out", o]);
        a
    };
    Command::new(env!("CARGO_BIN_EXE_samkit"))
        .args(&a)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the samkit binary starts")
}

#[test]
fn runs_killed_at_random_points_resume_to_the_uninterrupted_run() {
    let full = fresh_dir("crash-full");
    let mut a: Vec<&str> = CRASH_RUN.to_vec();
    a.extend(["--out", full.to_str().expect("a UTF-8 path")]);
    let t0 = std::time::Instant::now();
    ok(&samkit(&a));
    // Kill delays spread over one whole run's time (a resumed process starts over with less
    // to do, so later kills land in ever later parts of the run).
    let span = (t0.elapsed().as_millis() as u64).max(200);
    let mut kills = 0;
    let mut chain = 0;
    let delays = kill_points(4 * KILLS, 5, span);
    let mut delays = delays.into_iter();
    while kills < KILLS {
        let out = fresh_dir(&format!("crash-{chain}"));
        chain += 1;
        for ms in delays.by_ref() {
            let mut child = spawn_crash_run(&out, has_checkpoint(&out));
            std::thread::sleep(Duration::from_millis(ms));
            if child.try_wait().expect("a status").is_some() {
                // Finished before its kill: this chain is complete.
                break;
            }
            // SIGKILL on Unix.
            let _ = child.kill();
            child.wait().expect("the killed run is reaped");
            kills += 1;
            if kills == KILLS {
                break;
            }
        }
        // Resume until the run completes; a kill before the first checkpoint starts over.
        let o = if has_checkpoint(&out) {
            resume(&out)
        } else {
            let mut a: Vec<&str> = CRASH_RUN.to_vec();
            a.extend(["--out", out.to_str().expect("a UTF-8 path")]);
            samkit(&a)
        };
        ok(&o);
        assert_same_run(&full, &out, &format!("chain {chain}, after {kills} kills"));
        let lock = out.join(samkit_train::files::LOCK_FILE);
        assert!(!lock.exists(), "the lock stays after the run");
        let left: Vec<String> = std::fs::read_dir(&out)
            .expect("the output folder")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-") || n.starts_with(".checkpoint."))
            .collect();
        assert!(
            left.is_empty(),
            "left behind after the resumed run: {left:?}"
        );
        assert!(
            chain <= 4 * KILLS,
            "the kills never land in a running process"
        );
    }
    eprintln!("{kills} kills over {chain} runs, delays up to {span} ms");
}

#[test]
fn a_resumed_run_cuts_the_log_back_to_its_checkpoint() {
    let full = fresh_dir("log-full");
    ok(&run(&full, &[]));
    let half = fresh_dir("log-half");
    ok(&run(&half, &["--stop-after", "1"]));
    // What a crash after the checkpoint leaves: records of steps the checkpoint does not
    // hold, and a line torn in the middle.
    let log = half.join("steps.jsonl");
    let mut text = std::fs::read_to_string(&log).expect("a log");
    text += "{\"epoch\":1,\"step\":2,\"lost\":true}\n{\"epoch\":1,\"st";
    std::fs::write(&log, text).expect("write");
    ok(&resume(&half));
    assert_same_run(&full, &half, "resumed after epoch 1");
}

#[test]
fn a_checkpoint_mixing_two_saves_is_refused() {
    let a = fresh_dir("mixed-a");
    ok(&run(&a, &["--stop-after", "1"]));
    let b = fresh_dir("mixed-b");
    ok(&run(&b, &["--stop-after", "2"]));
    let ck = b.join("checkpoint");
    std::fs::copy(
        a.join("checkpoint/optimizer.safetensors"),
        ck.join("optimizer.safetensors"),
    )
    .expect("copy");
    refused(&resume(&b), &["optimizer.safetensors", "different saves"]);
    // An older checkpoint without a manifest: the step counts disagree.
    std::fs::remove_file(ck.join("manifest.json")).expect("remove");
    refused(&resume(&b), &["optimizer.safetensors is at step 2"]);
}

#[test]
fn a_corrupt_trainer_json_is_refused_naming_the_field() {
    let out = fresh_dir("json");
    ok(&run(&out, &["--stop-after", "1"]));
    let path = out.join("checkpoint/trainer.json");
    let mut v = json(&path);
    v["config"]["batch"] = serde_json::json!(0);
    std::fs::write(&path, v.to_string()).expect("write");
    // The manifest names the file that changed; without it, the value itself is refused.
    refused(&resume(&out), &["trainer.json"]);
    std::fs::remove_file(out.join("checkpoint/manifest.json")).expect("remove");
    refused(&resume(&out), &["\"batch\": 0"]);
    let missing = out.join("nonexistent");
    let o = samkit(&[
        "train",
        "--resume",
        missing.to_str().expect("UTF-8"),
        "--out",
        out.to_str().expect("UTF-8"),
    ]);
    refused(&o, &["cannot read"]);
}

#[test]
fn resume_with_flags_that_conflict_is_refused() {
    let out = fresh_dir("conflict");
    ok(&run(&out, &["--stop-after", "1"]));
    let ck = out.join("checkpoint");
    let ck = ck.to_str().expect("UTF-8");
    for (flag, value) in [
        ("--width", "4"),
        ("--optimizer", "sgd"),
        ("--rho", "0.3"),
        ("--seed", "7"),
        ("--data", "cifar10"),
        ("--epochs", "5"),
    ] {
        let o = samkit(&["train", "--resume", ck, flag, value]);
        refused(&o, &["--resume", flag]);
    }
}

#[test]
fn flags_that_do_not_apply_are_refused() {
    let out = fresh_dir("inapplicable");
    let cases: [(&[&str], &str); 7] = [
        (&["--optimizer", "sgd", "--rho", "0.3"], "--rho"),
        (&["--base", "adam", "--momentum", "0.5"], "--momentum"),
        (&["--base", "adam", "--nesterov"], "--nesterov"),
        (
            &["--schedule", "constant", "--milestones", "5"],
            "--milestones",
        ),
        (&["--data", "synthetic", "--data-dir", "X"], "--data-dir"),
        (&["--base", "sgd", "--amsgrad"], "--amsgrad"),
        (
            &["--schedule", "step", "--epochs", "1"],
            "needs --milestones",
        ),
    ];
    for (flags, says) in cases {
        let mut a = vec!["train"];
        a.extend(flags);
        a.extend(["--out", out.to_str().expect("UTF-8")]);
        let err = refused(&samkit(&a), &[says]);
        // Item 15: never values the user did not give.
        assert!(!err.contains("[0, 0]"), "{err}");
    }
    // compare: --rho applies when one of the optimizers perturbs.
    refused(
        &samkit(&["compare", "--optimizers", "sgd", "--rho", "0.3"]),
        &["--rho"],
    );
}

#[test]
fn a_batch_larger_than_the_training_set_is_refused() {
    let out = fresh_dir("batch");
    let o = str_args(&out, &["train", "--train-size", "8", "--batch", "16"]);
    refused(&o, &["--batch", "8 images"]);
    let o = str_args(
        &out,
        &[
            "compare",
            "--optimizers",
            "sgd,sam",
            "--train-size",
            "8",
            "--batch",
            "16",
        ],
    );
    let err = refused(&o, &["--batch"]);
    assert!(!err.contains("NaN"), "{err}");
    let o = str_args(
        &out,
        &[
            "train",
            "--train-size",
            "64",
            "--batch",
            "32",
            "--long-tail",
            "1000",
        ],
    );
    refused(&o, &["--batch", "--long-tail"]);
}

fn str_args(out: &Path, a: &[&str]) -> Output {
    let mut v = a.to_vec();
    v.extend(["--width", "2", "--test-size", "8", "--epochs", "1"]);
    v.extend(["--out", out.to_str().expect("UTF-8")]);
    samkit(&v)
}

/// 10 million 32×32 RGB images as `f32`.
const TEN_MILLION_IMAGES_BYTES: u64 = 10_000_000 * 3 * 32 * 32 * 4;

/// `MemAvailable` of `/proc/meminfo`, where there is one.
fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

#[test]
fn counts_that_cannot_fit_are_refused_before_allocating() {
    let out = fresh_dir("memory");
    let o = str_args(&out, &["train", "--train-size", "64", "--batch", "16"]);
    ok(&o);
    let o = samkit(&[
        "train",
        "--optimizer",
        "ssam-f",
        "--fisher-samples",
        "1000000000000000",
        "--out",
        out.to_str().expect("UTF-8"),
    ]);
    refused(&o, &["--fisher-samples"]);
    // 10 million synthetic images (123 GB) pass the bound but not the memory estimate, on a
    // machine without that much memory (where there is, the run would be allowed).
    if available_bytes().is_some_and(|have| have < TEN_MILLION_IMAGES_BYTES) {
        let o = str_args(&out, &["train", "--train-size", "10000000"]);
        refused(&o, &["--train-size", "GiB"]);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_second_writer_on_the_same_out_is_refused() {
    let out = fresh_dir("lock");
    std::fs::create_dir_all(&out).expect("mkdir");
    // Process 1 (init) always runs: the folder is held.
    std::fs::write(out.join(samkit_train::files::LOCK_FILE), "1").expect("write");
    let o = str_args(&out, &["train", "--train-size", "64", "--batch", "16"]);
    refused(&o, &["--out", "in use"]);
    assert!(!out.join("steps.jsonl").exists(), "the refused run wrote");
    let o = str_args(
        &out,
        &[
            "compare",
            "--optimizers",
            "sgd",
            "--train-size",
            "64",
            "--batch",
            "16",
        ],
    );
    refused(&o, &["--out", "in use"]);
    assert!(
        !out.join("compare.json").exists(),
        "the refused comparison wrote"
    );
    // A lock whose process is gone (a killed run) is taken over.
    std::fs::write(out.join(samkit_train::files::LOCK_FILE), "4294967295").expect("write");
    ok(&str_args(
        &out,
        &["train", "--train-size", "64", "--batch", "16"],
    ));
}
