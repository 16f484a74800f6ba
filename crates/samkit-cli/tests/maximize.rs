//! `--maximize` reaches every base optimizer's config (torch's `maximize`): a tiny training run
//! with each base records `"maximize": true` in its checkpoint's `trainer.json`, and a run
//! without the flag records none (the field is skipped when false, so old checkpoints load).
mod common;

use common::samkit;
use std::path::PathBuf;

fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("maximize", name)
}

/// One epoch of one step on a width-2 ResNet over 32 synthetic images; returns the `base` of
/// the checkpoint's run config.
fn base_of_run(base: &str, maximize: bool) -> serde_json::Value {
    let dir = fresh_dir(&format!("{base}-{maximize}"));
    let mut args = vec![
        "train",
        "--optimizer",
        "sam",
        "--base",
        base,
        "--epochs",
        "1",
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
    ];
    if maximize {
        args.push("--maximize");
    }
    let out_dir = dir.to_str().expect("a UTF-8 temporary path");
    args.extend(["--out", out_dir]);
    let o = samkit(&args);
    assert!(
        o.status.success(),
        "{args:?}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    common::json(&dir.join("checkpoint").join("trainer.json"))["config"]["base"].clone()
}

#[test]
fn maximize_flag_reaches_every_base_optimizer() {
    for base in ["sgd", "adam", "adamw", "rmsprop"] {
        let on = base_of_run(base, true);
        assert_eq!(on["type"], base, "{on}");
        assert_eq!(
            on["maximize"],
            serde_json::Value::Bool(true),
            "{base}: {on}"
        );
        let off = base_of_run(base, false);
        assert!(off.get("maximize").is_none(), "{base}: {off}");
    }
}
