//! Issue 12's promise for every command that reads or writes files: a missing or corrupt
//! input file exits with 2 and says "cannot read <path>" (or names the file and what is wrong
//! with it), an output that cannot be written exits with 1 before the work where it can be
//! known and leaves no temporary file behind; never a panic.
mod common;

use common::{ok, samkit, text, tiny_checkpoint};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

/// A fresh folder for one test, named apart from the other test binaries' folders.
fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("robust-io", name)
}

/// A tiny trained checkpoint, made once for every test here.
fn checkpoint() -> &'static Path {
    static CK: OnceLock<PathBuf> = OnceLock::new();
    CK.get_or_init(|| tiny_checkpoint("sgd", &fresh_dir("train")))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Asserts exit `code`, every one of `says` in stderr and no panic; returns stderr.
fn exits(o: &Output, code: i32, says: &[&str], what: &str) -> String {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{what}: {err}");
    for w in says {
        assert!(err.contains(w), "{what}: {w:?} not in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{what}: {err}");
    err
}

/// A copy of the shared checkpoint with `file` replaced by `bytes`.
fn checkpoint_with(name: &str, file: &str, bytes: &[u8]) -> PathBuf {
    let dir = fresh_dir(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for e in std::fs::read_dir(checkpoint()).expect("the checkpoint") {
        let e = e.expect("an entry");
        if e.file_type().expect("a type").is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).expect("copy");
        }
    }
    std::fs::write(dir.join(file), bytes).expect("write");
    // Without the manifest, the file itself is read and refused (with it, the manifest's
    // checksum refuses it first: robust_train.rs tests that).
    std::fs::remove_file(dir.join("manifest.json")).expect("a manifest");
    dir
}

/// The commands that read a checkpoint folder, with `ck` as that folder, writing to `out`.
fn checkpoint_readers(ck: &Path, out: &Path) -> Vec<(&'static str, Output)> {
    vec![
        (
            "landscape",
            samkit(&[
                "landscape",
                "--checkpoint",
                s(ck),
                "--grid",
                "3",
                "--samples",
                "8",
                "--out",
                s(out),
            ]),
        ),
        (
            "landscape --to",
            samkit(&[
                "landscape",
                "--checkpoint",
                s(checkpoint()),
                "--to",
                s(ck),
                "--grid",
                "3",
                "--samples",
                "8",
                "--out",
                s(out),
            ]),
        ),
        (
            "hessian",
            samkit(&[
                "hessian",
                "--checkpoint",
                s(ck),
                "--samples",
                "8",
                "--out",
                s(out),
            ]),
        ),
        (
            "train --resume",
            samkit(&["train", "--resume", s(ck), "--out", s(out)]),
        ),
    ]
}

#[test]
fn a_missing_checkpoint_is_refused_by_every_command_that_reads_one() {
    let missing = fresh_dir("missing-checkpoint");
    let out = fresh_dir("missing-out");
    for (what, o) in checkpoint_readers(&missing, &out) {
        exits(&o, 2, &["cannot read", s(&missing)], what);
    }
}

#[test]
fn a_corrupt_checkpoint_is_refused_by_every_command_that_reads_one() {
    let out = fresh_dir("corrupt-out");
    // trainer.json that is not JSON, and model.safetensors cut short.
    let json = checkpoint_with("corrupt-json", "trainer.json", b"{\"config\": [1, 2");
    for (what, o) in checkpoint_readers(&json, &out) {
        exits(&o, 2, &["trainer.json"], what);
    }
    let model = std::fs::read(checkpoint().join("model.safetensors")).expect("the model");
    let cut = checkpoint_with(
        "corrupt-model",
        "model.safetensors",
        &model[..model.len() / 2],
    );
    for (what, o) in checkpoint_readers(&cut, &out) {
        exits(&o, 2, &["model.safetensors"], what);
    }
}

/// The training commands' CIFAR-10 input (`--data cifar10 --data-dir DIR`), writing to `out`.
fn cifar_readers(dir: &Path, out: &Path) -> Vec<(&'static str, Output)> {
    let common = ["--data", "cifar10", "--data-dir", s(dir), "--out", s(out)];
    ["train", "compare", "bench"]
        .into_iter()
        .map(|cmd| {
            let mut a = vec![cmd];
            a.extend(common);
            (cmd, samkit(&a))
        })
        .collect()
}

#[test]
fn missing_or_corrupt_data_files_are_refused_by_every_command_that_reads_them() {
    let out = fresh_dir("cifar-out");
    let missing = fresh_dir("cifar-missing");
    for (what, o) in cifar_readers(&missing, &out) {
        exits(&o, 2, &[s(&missing)], what);
    }
    // Every file there, each cut to one record and a half.
    let cut = fresh_dir("cifar-cut");
    std::fs::create_dir_all(&cut).expect("mkdir");
    let record = 1 + 3 * 32 * 32;
    for f in (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_string()])
    {
        std::fs::write(cut.join(f), vec![3u8; record + record / 2]).expect("write");
    }
    for (what, o) in cifar_readers(&cut, &out) {
        exits(&o, 2, &["data_batch_1.bin"], what);
    }
}

/// Temporary files or folders an output folder still holds.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("the output folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// The commands that write files, each run with few and fast parts.
const WRITERS: [&str; 3] = ["toy", "linreg", "hessian"];

/// Runs writer `what` (one of [`WRITERS`]) into `out`.
fn writer(what: &str, out: &Path) -> Output {
    let args: Vec<&str> = match what {
        "toy" => vec!["toy", "--parts", "beale", "--beale-steps", "20"],
        "linreg" => vec![
            "linreg",
            "--parts",
            "train",
            "--samples",
            "64",
            "--test-samples",
            "16",
            "--epochs",
            "2",
        ],
        _ => vec![
            "hessian",
            "--checkpoint",
            s(checkpoint()),
            "--samples",
            "8",
            "--top",
            "1",
            "--power-iters",
            "2",
            "--lanczos",
            "0",
            "--hutchinson",
            "0",
        ],
    };
    let mut a = args;
    a.extend(["--out", s(out)]);
    samkit(&a)
}

#[test]
fn an_out_that_is_a_file_fails_every_writer_before_the_work() {
    let dir = fresh_dir("out-is-file");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").expect("write");
    for what in WRITERS {
        let o = writer(what, &file);
        exits(&o, 1, &["cannot write", "a-file"], what);
        assert_eq!(std::fs::read(&file).expect("still there"), b"x", "{what}");
    }
    assert_eq!(leftovers(&dir), Vec::<String>::new());
}

#[test]
fn an_output_name_taken_by_a_folder_fails_before_the_work_and_leaves_nothing() {
    for (what, name) in [
        ("toy", "beale_trajectories.png"),
        ("linreg", "linreg_curves.png"),
        ("hessian", "hessian.json"),
    ] {
        let out = fresh_dir(&format!("taken-{what}"));
        std::fs::create_dir_all(out.join(name)).expect("mkdir");
        let o = writer(what, &out);
        exits(&o, 1, &[name], what);
        let written: Vec<String> = std::fs::read_dir(&out)
            .expect("the folder")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            written,
            vec![name.to_string()],
            "{what}: refused before any work"
        );
    }
}

#[test]
fn every_writer_leaves_only_its_files() {
    let dir = fresh_dir("clean");
    for what in WRITERS {
        let out = ok(&writer(what, &dir));
        assert!(out.contains("wrote "), "{what}: {out}");
    }
    // The three commands wrote into the same folder: no temporary file of any of them stays.
    assert_eq!(leftovers(&dir), Vec::<String>::new());
}
