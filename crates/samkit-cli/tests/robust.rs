//! Bad values that used to give silent wrong results or panics (issue 12): a finite-difference
//! step lost to rounding in `hessian`, non-finite losses and unwritable outputs in `landscape`.
mod common;

use common::{json, ok, samkit, text, tiny_checkpoint};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

/// A fresh folder for one test, named apart from the other test binaries' folders.
fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("robust", name)
}

/// A tiny trained checkpoint, made once for every test here.
fn checkpoint() -> &'static Path {
    static CK: OnceLock<PathBuf> = OnceLock::new();
    CK.get_or_init(|| tiny_checkpoint("sam", &fresh_dir("train")))
}

fn hessian(out: &Path, extra: &[&str]) -> Output {
    let mut a = vec![
        "hessian",
        "--checkpoint",
        checkpoint().to_str().unwrap(),
        "--samples",
        "16",
        "--top",
        "1",
        "--power-iters",
        "2",
        "--lanczos",
        "0",
        "--hutchinson",
        "0",
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend(extra);
    samkit(&a)
}

#[test]
fn a_tiny_fd_eps_is_refused_not_reported_as_zeros() {
    for eps in ["1e-12", "1e-9"] {
        let dir = fresh_dir(&format!("hessian-{eps}"));
        let o = hessian(&dir, &["--fd-eps", eps]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{eps}: {err}");
        assert!(
            err.contains("--fd-eps") && err.contains("rounding") && err.contains("between"),
            "{eps}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!dir.join("hessian.json").exists(), "nothing is reported");
    }
    let dir = fresh_dir("hessian-huge");
    let o = hessian(&dir, &["--fd-eps", "5"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--fd-eps"));
}

#[test]
fn the_default_fd_eps_still_gives_nonzero_eigenvalues() {
    let dir = fresh_dir("hessian-default");
    let out = ok(&hessian(&dir, &[]));
    assert!(out.contains("power iteration: λ1"), "{out}");
    let j: serde_json::Value = json(&dir.join("hessian.json"));
    let l1 = j["top_eigenvalues_power"][0].as_f64().unwrap();
    assert!(l1.is_finite() && l1 != 0.0, "λ1 = {l1}");
}

fn landscape(out: &Path, span: &str, extra: &[&str]) -> Output {
    let mut a = vec![
        "landscape",
        "--checkpoint",
        checkpoint().to_str().unwrap(),
        "--grid",
        "3",
        "--samples",
        "16",
        "--line-points",
        "3",
        "--span",
        span,
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend(extra);
    samkit(&a)
}

#[test]
fn a_huge_span_plots_non_finite_losses_instead_of_panicking() {
    for span in ["1e4", "1e30"] {
        let dir = fresh_dir(&format!("landscape-{span}"));
        let ck = checkpoint().to_str().unwrap();
        let o = landscape(&dir, span, &["--to", ck]);
        let out = ok(&o);
        assert!(!text(&o.stderr).contains("panicked"));
        let csv = std::fs::read_to_string(dir.join("landscape.csv")).unwrap();
        assert_eq!(csv.lines().count(), 1 + 9, "{csv}");
        let png = std::fs::read(dir.join("landscape.png")).unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let blown = csv
            .lines()
            .skip(1)
            .filter(|l| {
                let loss = l.split(',').nth(2).unwrap();
                loss.parse::<f64>().map_or(true, |v| !v.is_finite())
            })
            .count();
        if span == "1e30" {
            // Weights of 1e29 overflow every logit.
            assert!(blown > 0, "{csv}");
        }
        if blown > 0 {
            assert!(
                out.contains(&format!("{blown} of 9 grid losses are inf/NaN")),
                "{out}"
            );
            let j: serde_json::Value = json(&dir.join("landscape.json"));
            assert_eq!(j["non_finite"].as_u64(), Some(blown as u64));
        }
    }
}

#[test]
fn landscape_outputs_are_checked_before_the_grid() {
    let dir = fresh_dir("landscape-blocked");
    std::fs::create_dir_all(&dir).unwrap();
    // --out is a file.
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let o = landscape(&file, "1", &[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("a-file") && !err.contains("panicked"), "{err}");
    // An output file's name taken by a folder.
    let out = dir.join("out");
    std::fs::create_dir_all(out.join("landscape.png")).unwrap();
    let o = landscape(&out, "1", &[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("landscape.png"), "{err}");
    assert!(
        !out.join("landscape.csv").exists(),
        "refused before any work"
    );
    // A bad --to is found before the grid too.
    let out = dir.join("bad-to");
    let o = landscape(&out, "1", &["--to", "/nonexistent/checkpoint"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!text(&o.stderr).contains("panicked"));
    assert!(
        !out.join("landscape.csv").exists(),
        "refused before any work"
    );
}

#[test]
fn a_negative_rho_is_a_bad_value_of_rho() {
    for (cmd, which, rho) in [
        ("compare", "--optimizers", "-1"),
        ("train", "--optimizer", "-0.5"),
        ("compare", "--optimizers", "nan"),
    ] {
        let dir = fresh_dir(&format!("rho-{cmd}"));
        let o = samkit(&[
            cmd,
            which,
            "sam",
            "--rho",
            rho,
            "--out",
            dir.to_str().unwrap(),
        ]);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{cmd} --rho {rho}: {err}");
        assert!(
            err.contains("--rho") && !err.contains("unexpected argument"),
            "{cmd} --rho {rho}: {err}"
        );
        assert!(!err.contains("--optimizer"), "blamed on --rho: {err}");
        assert!(!dir.exists(), "refused before anything is written");
    }
}

/// A copy of the shared checkpoint with one byte of `file`'s last tensor flipped.
fn corrupted(name: &str, file: &str) -> PathBuf {
    let dir = fresh_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(checkpoint()).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    let path = dir.join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    // The file ends with tensor data (safetensors puts the header first).
    let last = bytes.len() - 2;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    dir
}

#[test]
fn a_flipped_byte_in_a_checkpoint_is_refused_naming_file_and_tensor() {
    let ck = corrupted("corrupt-model", "model.safetensors");
    let out = fresh_dir("corrupt-model-out");
    let o = samkit(&[
        "landscape",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--grid",
        "3",
        "--samples",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]);
    // A corrupt file is bad input: exit 2, naming the file.
    let err = common::refused(&o, &["model.safetensors", "fails its checksum"]);
    assert!(!err.contains("panicked"), "{err}");
    // The optimizer state of a checkpoint, read on resume.
    let ck = corrupted("corrupt-opt", "optimizer.safetensors");
    let out = fresh_dir("corrupt-opt-out");
    let o = samkit(&[
        "train",
        "--resume",
        ck.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    // A corrupt file is bad input: exit 2, naming the file.
    common::refused(&o, &["optimizer.safetensors", "fails its checksum"]);
}
