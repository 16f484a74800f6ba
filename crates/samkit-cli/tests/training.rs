//! The training commands end to end on tiny settings: compare's table and files, train's
//! checkpoints and exact resume, landscape and hessian on a checkpoint, and clear errors.
mod common;

use common::{json, ok, samkit};
use std::path::{Path, PathBuf};
use std::process::Output;

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

/// `samkit <args> <TINY> --out <dir>`: a tiny run writing into `dir`.
fn tiny_run(args: &[&str], dir: &Path) -> Output {
    let mut a = args.to_vec();
    a.extend(TINY);
    a.extend(["--out", dir.to_str().unwrap()]);
    samkit(&a)
}

/// ImbSAM's long-tailed setup (`--long-tail 10 --tau LT_TAU`): `samkit <cmd>` of
/// `optimizers` for `epochs` epochs into `dir`.
fn long_tail_run(cmd: &str, optimizers: &str, epochs: &str, dir: &Path) -> Output {
    let which = if cmd == "compare" {
        "--optimizers"
    } else {
        "--optimizer"
    };
    tiny_run(
        &[
            cmd,
            which,
            optimizers,
            "--long-tail",
            "10",
            "--tau",
            LT_TAU,
            "--epochs",
            epochs,
        ],
        dir,
    )
}

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

/// `epochs.csv` as a header and rows of fields.
fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let split = |l: &str| l.split(',').map(str::to_string).collect::<Vec<_>>();
    let header = split(lines.next().expect("a header"));
    (header, lines.map(split).collect())
}

/// The class counts that `--long-tail` prints (`... per class 10,7,5,...`) and the total.
fn printed_counts(stdout: &str) -> (usize, Vec<usize>) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("long-tailed training set"))
        .unwrap_or_else(|| panic!("no long-tailed size printed:\n{stdout}"));
    let total = line
        .split(": ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {line}"));
    let counts = line
        .rsplit("per class ")
        .next()
        .unwrap()
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .unwrap_or_else(|_| panic!("counts in {line}"))
        })
        .collect();
    (total, counts)
}

/// ImbSAM's τ in the long-tail tests: with `--long-tail 10` on 96 synthetic images, one class
/// has exactly 5 samples, so the strict rule `n_c < τ` is seen (`≤` would take one more).
const LT_TAU: &str = "5";

#[test]
fn imbsam_logs_per_class_head_and_tail_accuracy_and_the_long_tailed_size() {
    let dir = fresh_dir("imbsam-lt");
    let o = long_tail_run("train", "imbsam", "2", &dir);
    let out = ok(&o);
    let (total, counts) = printed_counts(&out);
    assert_eq!(counts.len(), 10, "{out}");
    assert_eq!(counts.iter().sum::<usize>(), total);
    let tau: usize = LT_TAU.parse().unwrap();
    assert!(
        counts.contains(&tau),
        "the test needs a class of exactly τ: {counts:?}"
    );
    // Tail = n_c < τ (strict, docs/ALGORITHMS.md).
    let tail = counts.iter().filter(|&&n| n < tau).count();
    assert!(
        out.contains(&format!(
            "imbsam: {tail} tail classes (fewer than τ = {tau}"
        )),
        "{out}"
    );
    assert!(!common::text(&o.stderr).contains("no tail class"));
    // summary.json: every epoch has the accuracy of each class, the head's and the tail's.
    let s = json(&dir.join("summary.json"));
    let epochs = s.as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    for e in epochs {
        let per = e["class_accuracy"].as_array().unwrap();
        assert_eq!(per.len(), 10);
        // The synthetic test set is balanced: every class has test samples.
        for v in per {
            assert!((0.0..=1.0).contains(&v.as_f64().expect("a class accuracy")));
        }
        let (h, t) = (
            e["head_accuracy"].as_f64().unwrap(),
            e["tail_accuracy"].as_f64().unwrap(),
        );
        // Head and tail accuracy are over their test samples: synthetic labels are `i % 10`,
        // so of the 32 test images classes 0 and 1 have 4 and the others 3.
        let mean = |want_tail: bool| {
            let (mut right, mut n) = (0.0, 0.0);
            for c in (0..10).filter(|&c| (counts[c] < tau) == want_tail) {
                let samples = if c < 2 { 4.0 } else { 3.0 };
                right += per[c].as_f64().unwrap() * samples;
                n += samples;
            }
            right / n
        };
        assert!((h - mean(false)).abs() < 1e-9 && (t - mean(true)).abs() < 1e-9);
    }
    // epochs.csv: epochs from 1 as on the console, with the head and tail accuracy.
    let (header, rows) = csv(&dir.join("epochs.csv"));
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (hc, tc) = (col("head_accuracy"), col("tail_accuracy"));
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[0], (i + 1).to_string());
        let t: f64 = r[tc].parse().unwrap();
        assert_eq!(t, epochs[i]["tail_accuracy"].as_f64().unwrap());
        assert!(r[hc].parse::<f64>().is_ok());
    }
}

#[test]
fn compare_on_a_long_tailed_set_reports_head_and_tail_for_every_row() {
    let dir = fresh_dir("compare-lt");
    let out = ok(&long_tail_run("compare", "sgd,imbsam", "1", &dir));
    let (_, counts) = printed_counts(&out);
    let tau: usize = LT_TAU.parse().unwrap();
    let tail = counts.iter().filter(|&&n| n < tau).count() as u64;
    assert!(
        out.contains("head acc") && out.contains("tail acc"),
        "{out}"
    );
    let j = json(&dir.join("compare.json"));
    for r in j.as_array().unwrap() {
        // SGD's row splits the classes at the same τ as ImbSAM's.
        assert_eq!(r["tail_classes"].as_u64(), Some(tail), "{}", r["optimizer"]);
        let t = r["tail_accuracy_mean"].as_f64().expect("tail accuracy");
        assert_eq!(Some(t), r["seeds"][0]["tail_accuracy"].as_f64());
        assert!((0.0..=1.0).contains(&r["head_accuracy_mean"].as_f64().unwrap()));
        assert_eq!(
            r["seeds"][0]["class_accuracy"].as_array().unwrap().len(),
            10
        );
    }
    // train splits a long-tailed SGD run at its --tau as well.
    let dir = fresh_dir("train-lt-sgd");
    let out = ok(&long_tail_run("train", "sgd", "1", &dir));
    // Its own counts: compare's default label noise moved some of compare's labels.
    let (_, counts) = printed_counts(&out);
    let tail = counts.iter().filter(|&&n| n < tau).count();
    assert!(
        out.contains(&format!(
            "sgd: head/tail test accuracy reported with {tail} tail classes"
        )),
        "{out}"
    );
    let s = json(&dir.join("summary.json"));
    assert!(s[0]["tail_accuracy"].as_f64().is_some());
    // A balanced comparison without ImbSAM reports no head/tail.
    let dir = fresh_dir("compare-balanced");
    let out = ok(&tiny_run(
        &["compare", "--optimizers", "sgd", "--epochs", "1"],
        &dir,
    ));
    assert!(!out.contains("tail acc"), "{out}");
    let j = json(&dir.join("compare.json"));
    assert!(j[0]["tail_classes"].is_null() && j[0]["tail_accuracy_mean"].is_null());
    assert_eq!(
        j[0]["seeds"][0]["class_accuracy"].as_array().unwrap().len(),
        10
    );
}

#[test]
fn imbsam_without_a_tail_class_warns_on_stderr() {
    let dir = fresh_dir("imbsam-no-tail");
    // Balanced synthetic data: every class has 9 or 10 of the 96 images, none fewer than 1.
    let o = tiny_run(
        &[
            "train",
            "--optimizer",
            "imbsam",
            "--tau",
            "1",
            "--epochs",
            "1",
        ],
        &dir,
    );
    let out = ok(&o);
    let err = common::text(&o.stderr);
    assert!(
        err.contains("warning: ImbSAM has no tail class") && err.contains("plain sgd"),
        "{err}"
    );
    assert!(out.contains("imbsam: 0 tail classes"), "{out}");
    // And compare warns for its ImbSAM row too.
    let dir = fresh_dir("compare-no-tail");
    let o = tiny_run(
        &[
            "compare",
            "--optimizers",
            "imbsam",
            "--tau",
            "1",
            "--epochs",
            "1",
        ],
        &dir,
    );
    ok(&o);
    assert!(common::text(&o.stderr).contains("warning: ImbSAM has no tail class"));
}

#[test]
fn resume_without_out_continues_in_the_original_runs_folder() {
    let dir = fresh_dir("resume-here");
    let mut a = vec!["train", "--optimizer", "sam", "--epochs", "2"];
    a.extend(TINY);
    a.extend(["--stop-after", "1", "--out", dir.to_str().unwrap()]);
    let first = ok(&samkit(&a));
    assert!(
        first.contains("epoch   1:"),
        "the console counts from 1:\n{first}"
    );
    let ck = dir.join("checkpoint");
    // No --out: the logs continue in `dir`, not in the default results/train.
    let out = ok(&samkit(&["train", "--resume", ck.to_str().unwrap()]));
    assert!(out.contains("epoch   2:"), "{out}");
    let (_, rows) = csv(&dir.join("epochs.csv"));
    let epochs: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        epochs,
        ["1", "2"],
        "epochs.csv counts from 1 like the console"
    );
    let steps = common::json_lines(&dir.join("steps.jsonl"));
    assert_eq!(steps.len(), 4, "2 epochs of 2 steps in the original folder");
    assert!(
        out.contains(&dir.join("epochs.csv").display().to_string()),
        "the resumed run says where it wrote:\n{out}"
    );
    let s = json(&dir.join("summary.json"));
    assert_eq!(s.as_array().unwrap().len(), 2);
}
