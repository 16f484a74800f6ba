//! The training commands end to end on tiny settings: compare's table and files, train's
//! checkpoints and exact resume, landscape and hessian on a checkpoint, and clear errors.
mod common;

use common::{json, ok, samkit};
use std::path::{Path, PathBuf};

/// A fresh folder for one test, named apart from the other test binaries' folders.
fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("train", name)
}

fn is_png(p: &Path) -> bool {
    std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

const TINY: [&str; 10] = [
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
];

#[test]
fn compare_prints_the_table_and_writes_json_and_plots() {
    let dir = fresh_dir("compare");
    let mut args = vec![
        "compare",
        "--optimizers",
        "sgd,sam,ssam-f,ssam-d,imbsam,gsam,looksam",
        "--epochs",
        "2",
    ];
    args.extend(TINY);
    args.extend([
        "--fisher-samples",
        "8",
        "--mask-interval",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let out = ok(&samkit(&args));
    for name in [
        "sgd", "sam", "ssam-f", "ssam-d", "imbsam", "gsam", "looksam",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(name) && l.contains('%')),
            "{name} row missing:\n{out}"
        );
    }
    assert!(out.contains("synthetic"), "the data used is named");
    let json: serde_json::Value = json(&dir.join("compare.json"));
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 7);
    for r in rows {
        assert_eq!(r["epochs"].as_array().unwrap().len(), 2);
        assert_eq!(r["batch_loss"].as_array().unwrap().len(), 4);
        let acc = r["final_test_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
    }
    // SAM-type rules spend time in a second pass, SGD does not; SSAM-F spends it on masks.
    let sec = |i: usize, k: &str| rows[i]["step_seconds"][k].as_f64().unwrap();
    assert_eq!(sec(0, "pass2"), 0.0);
    assert!(sec(1, "pass2") > 0.0);
    assert!(sec(2, "mask") > 0.0);
    for f in ["batch_loss.png", "accuracy.png"] {
        assert!(is_png(&dir.join(f)), "{f}");
    }
}

#[test]
fn train_resume_equals_an_uninterrupted_run() {
    let full = fresh_dir("full");
    let half = fresh_dir("half");
    for rule in ["friendlysam", "ssam-f"] {
        let mut a = vec![
            "train",
            "--optimizer",
            rule,
            "--epochs",
            "2",
            "--fisher-samples",
            "8",
        ];
        a.extend(TINY);
        let mut f = a.clone();
        f.extend(["--out", full.to_str().unwrap()]);
        ok(&samkit(&f));
        let mut h = a.clone();
        h.extend(["--stop-after", "1", "--out", half.to_str().unwrap()]);
        ok(&samkit(&h));
        let ck = half.join("checkpoint");
        let out = ok(&samkit(&[
            "train",
            "--resume",
            ck.to_str().unwrap(),
            "--out",
            half.to_str().unwrap(),
        ]));
        assert!(out.contains("resumed"), "{out}");
        for file in ["model.safetensors", "optimizer.safetensors"] {
            let x = std::fs::read(full.join("checkpoint").join(file)).unwrap();
            let y = std::fs::read(half.join("checkpoint").join(file)).unwrap();
            assert!(x == y, "{rule}: {file} differs after resume");
        }
        let csv = std::fs::read_to_string(half.join("epochs.csv")).unwrap();
        assert_eq!(csv.lines().count(), 3, "{csv}");
    }
}

#[test]
fn landscape_and_hessian_read_a_checkpoint() {
    let dir = fresh_dir("probe");
    let mut a = vec![
        "train",
        "--optimizer",
        "sam",
        "--epochs",
        "1",
        "--out",
        dir.to_str().unwrap(),
    ];
    a.extend(TINY);
    ok(&samkit(&a));
    let ck = dir.join("checkpoint");
    let ls = dir.join("landscape");
    let out = ok(&samkit(&[
        "landscape",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--to",
        ck.to_str().unwrap(),
        "--grid",
        "5",
        "--samples",
        "16",
        "--line-points",
        "5",
        "--out",
        ls.to_str().unwrap(),
    ]));
    assert!(out.contains("loss at the checkpoint"), "{out}");
    let csv = std::fs::read_to_string(ls.join("landscape.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 25);
    assert!(is_png(&ls.join("landscape.png")) && is_png(&ls.join("interpolation.png")));
    // The line from a checkpoint to itself is flat.
    let j: serde_json::Value = json(&ls.join("landscape.json"));
    let line: Vec<f64> = j["line"]["loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(line.iter().all(|&l| (l - line[0]).abs() < 1e-5), "{line:?}");
    // The grid centre is the checkpoint itself.
    let centre = j["loss"][2][2].as_f64().unwrap();
    assert!((centre - line[1]).abs() < 1e-5, "{centre} vs {}", line[1]);

    let hs = dir.join("hessian");
    let out = ok(&samkit(&[
        "hessian",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--samples",
        "16",
        "--top",
        "1",
        "--power-iters",
        "3",
        "--lanczos",
        "4",
        "--hutchinson",
        "2",
        // The spectral density's products are counted in tests/survey.rs.
        "--slq-probes",
        "0",
        "--out",
        hs.to_str().unwrap(),
    ]));
    assert!(
        out.contains("power iteration: λ1") && out.contains("hutchinson"),
        "{out}"
    );
    let j: serde_json::Value = json(&hs.join("hessian.json"));
    assert_eq!(j["hessian_vector_products"].as_u64().unwrap(), 3 + 4 + 2);
}

#[test]
fn bad_flags_and_files_exit_with_code_2_or_1() {
    let code = |a: &[&str]| samkit(a).status.code();
    assert_eq!(code(&["compare", "--optimizers", "sgd,adamax"]), Some(2));
    assert_eq!(
        code(&["compare", "--rho", "-1", "--optimizers", "sam"]),
        Some(2)
    );
    assert_eq!(
        code(&["compare", "--sparsity", "1.0", "--optimizers", "ssam-f"]),
        Some(2)
    );
    assert_eq!(code(&["compare", "--lr", "0"]), Some(2));
    assert_eq!(code(&["compare", "--batch", "0"]), Some(2));
    assert_eq!(
        code(&["compare", "--mask-interval", "0", "--optimizers", "ssam-d"]),
        Some(2)
    );
    assert_eq!(code(&["train", "--device", "cuda"]), Some(2));
    assert_eq!(
        code(&["train", "--data", "cifar10", "--data-dir", "/nonexistent"]),
        Some(2)
    );
    let out = samkit(&["train", "--data", "cifar10", "--data-dir", "/nonexistent"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("data_batch_1.bin"));
    // A checkpoint folder the user named that is not there is bad input (issue 12).
    assert_eq!(
        code(&["landscape", "--checkpoint", "/nonexistent"]),
        Some(2)
    );
    assert_eq!(
        code(&["hessian", "--checkpoint", "/nonexistent", "--samples", "0"]),
        Some(2)
    );
}
