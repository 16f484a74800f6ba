//! MESA and SAF from the command line: each trains a few steps (the term active from
//! `--distill-start`, MESA's teacher forward logged as a forward without gradient, the teacher's
//! state in the checkpoint), a run stopped and resumed equals the uninterrupted one, a bad value of each of their flags exits 2 naming it, and their
//! flags are refused for another optimizer.
mod common;

use common::{samkit, steps_without_time, text};
use std::path::{Path, PathBuf};

/// A fresh folder for one test, named apart from the other test binaries' folders.
fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("distill", name)
}

const TINY: [&str; 12] = [
    "--width",
    "2",
    "--train-size",
    "16",
    "--test-size",
    "8",
    "--batch",
    "8",
    "--steps-per-epoch",
    "2",
    "--epochs",
    "2",
];

#[test]
fn mesa_and_saf_train_with_their_teacher_in_the_checkpoint() {
    for (name, extra, file, nograd) in [
        ("mesa", ["--mesa-decay", "0.9"], "teacher.safetensors", 1.0),
        ("saf", ["--saf-lag", "1"], "saf.bin", 0.0),
    ] {
        let dir = fresh_dir(name);
        let mut args = vec!["train", "--optimizer", name, "--distill-start", "1"];
        args.extend(extra);
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
        assert_eq!(steps.len(), 4, "{name}: two epochs of two steps");
        for s in &steps {
            let active = s["epoch"] == 1;
            let want = if active { nograd } else { 0.0 };
            assert_eq!(s["passes"]["forward_nograd"], want, "{name}: {s}");
            assert_eq!(s["passes"]["forward"], 1.0, "{name}: {s}");
            assert_eq!(s["passes"]["backward"], 1.0, "{name}: {s}");
            assert!(
                s["loss"].as_f64().is_some_and(f64::is_finite),
                "{name}: {s}"
            );
        }
        assert!(
            dir.join("checkpoint").join(file).exists(),
            "{name}: {file} in the checkpoint"
        );
        let state = common::json(&dir.join("checkpoint/trainer.json"));
        assert_eq!(state["config"]["distill"]["start_epoch"], 1, "{name}");
        assert_eq!(state["config"]["rule"]["rule"], "base", "{name}");
    }
}

/// A usage error (exit 2) whose message names `--flag`.
fn assert_usage_error(args: &[&str], flag: &str) {
    let dir = fresh_dir(&format!("refused-{flag}"));
    let mut args = args.to_vec();
    args.extend(TINY);
    args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
    common::refused(&samkit(&args), &[&format!("--{flag}")]);
    assert!(
        !dir.join("steps.jsonl").exists(),
        "{args:?}: nothing trained"
    );
}

#[test]
fn bad_values_and_misplaced_flags_exit_2_naming_them() {
    let cases: [(&[&str], &str); 9] = [
        (
            &["--optimizer", "mesa", "--distill-lambda", "-0.5"],
            "distill-lambda",
        ),
        (
            &["--optimizer", "saf", "--distill-lambda", "nan"],
            "distill-lambda",
        ),
        (
            &["--optimizer", "mesa", "--distill-tau", "0"],
            "distill-tau",
        ),
        (&["--optimizer", "mesa", "--mesa-decay", "1"], "mesa-decay"),
        (&["--optimizer", "saf", "--saf-lag", "0"], "saf-lag"),
        (&["--optimizer", "saf", "--saf-lag", "65"], "saf-lag"),
        (&["--optimizer", "mesa", "--saf-lag", "2"], "saf-lag"),
        (&["--optimizer", "saf", "--mesa-decay", "0.9"], "mesa-decay"),
        (
            &["--optimizer", "sam", "--distill-start", "0"],
            "distill-start",
        ),
    ];
    for (extra, flag) in cases {
        let mut args = vec!["train"];
        args.extend(extra);
        assert_usage_error(&args, flag);
    }
}

#[test]
fn a_resumed_mesa_or_saf_run_equals_the_uninterrupted_one() {
    for (name, extra, file) in [
        ("mesa", ["--mesa-decay", "0.9"], "teacher.safetensors"),
        ("saf", ["--saf-lag", "1"], "saf.bin"),
    ] {
        let run = |tag: &str, more: &[&str]| {
            let dir = fresh_dir(&format!("{name}-{tag}"));
            let mut args = vec!["train", "--optimizer", name, "--distill-start", "1"];
            args.extend(extra);
            args.extend(&TINY[..TINY.len() - 2]);
            // Three epochs: the term is active in the last two, the resume point between.
            args.extend(["--epochs", "3"]);
            args.extend(more);
            args.extend(["--out", dir.to_str().expect("a UTF-8 path")]);
            let o = samkit(&args);
            assert!(
                o.status.success(),
                "{}\n{}",
                text(&o.stdout),
                text(&o.stderr)
            );
            dir
        };
        let full = run("full", &[]);
        let half = run("half", &["--stop-after", "2"]);
        let ck = half.join("checkpoint");
        let o = samkit(&[
            "train",
            "--resume",
            ck.to_str().expect("a UTF-8 path"),
            "--out",
            half.to_str().expect("a UTF-8 path"),
        ]);
        assert!(
            o.status.success(),
            "{}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        assert_eq!(
            steps_without_time(&half),
            steps_without_time(&full),
            "{name}"
        );
        for f in ["model.safetensors", file] {
            let read = |d: &Path| std::fs::read(d.join("checkpoint").join(f)).expect(f);
            assert!(
                read(&half) == read(&full),
                "{name}: {f} differs after the resume"
            );
        }
    }
}
