//! Runs the `samkit` binary with small settings and checks what it writes and how it fails.
mod common;

use common::{samkit, text};
use std::path::{Path, PathBuf};

/// A fresh directory under cargo's temporary directory for integration tests.
fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("cli", name)
}

/// Width and height from a PNG's IHDR, after checking the signature.
fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(b.len() > 33, "{} is too short", path.display());
    assert_eq!(
        &b[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&b[12..16], b"IHDR");
    let w = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(b[20..24].try_into().unwrap());
    assert_eq!(
        &b[b.len() - 8..b.len() - 4],
        b"IEND",
        "{} is truncated",
        path.display()
    );
    (w, h)
}

/// Walks a GIF's blocks and counts its frames (image descriptors).
fn gif_frames(path: &Path) -> usize {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        &b[..6] == b"GIF89a" || &b[..6] == b"GIF87a",
        "{} is not a GIF",
        path.display()
    );
    let flags = b[10];
    let mut i = 13;
    if flags & 0x80 != 0 {
        i += 3 << ((flags & 7) + 1);
    }
    let skip_sub_blocks = |mut i: usize| -> usize {
        loop {
            let n = b[i] as usize;
            i += 1;
            if n == 0 {
                return i;
            }
            i += n;
        }
    };
    let mut frames = 0;
    loop {
        match b[i] {
            0x21 => i = skip_sub_blocks(i + 2),
            0x2C => {
                frames += 1;
                let local = b[i + 9];
                i += 10;
                if local & 0x80 != 0 {
                    i += 3 << ((local & 7) + 1);
                }
                i = skip_sub_blocks(i + 1); // LZW minimum code size, then the data
            }
            0x3B => return frames,
            other => panic!("{}: unexpected block 0x{other:02x} at {i}", path.display()),
        }
    }
}

fn assert_wrote(stdout: &str, path: &Path) {
    assert!(path.is_file(), "{} missing", path.display());
    assert!(
        stdout.contains(&format!("wrote {}", path.display())),
        "stdout does not name {}:\n{stdout}",
        path.display()
    );
}

#[test]
fn toy_writes_gifs_of_thirty_frames_and_valid_pngs() {
    let dir = fresh_dir("toy");
    let d = dir.to_str().unwrap();
    let out = samkit(&[
        "toy",
        "--out",
        d,
        "--seed",
        "3",
        "--beale-steps",
        "300",
        "--seeds",
        "3",
        "--max-steps",
        "400",
        "--momenta",
        "0,0.9",
        "--batches",
        "1,64",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    for gif in ["sam_1d.gif", "sgd_1d.gif"] {
        let p = dir.join(gif);
        assert_wrote(&stdout, &p);
        assert_eq!(gif_frames(&p), 30, "{gif}");
    }
    for png in [
        "beale_trajectories.png",
        "saddle_escape_heatmap.png",
        "saddle_escape_vs_batch.png",
    ] {
        let p = dir.join(png);
        assert_wrote(&stdout, &p);
        let (w, h) = png_size(&p);
        assert!(w >= 800 && h >= 600, "{png}: {w}x{h}");
    }
    let json = dir.join("toy.json");
    assert_wrote(&stdout, &json);
    let v = common::json(&json);
    assert_eq!(v["one_d"].as_array().unwrap().len(), 2);
    assert_eq!(v["one_d"][0]["path"].as_array().unwrap().len(), 31);
    assert_eq!(v["beale"]["runs"].as_array().unwrap().len(), 5);
    assert_eq!(v["saddle"]["cells"].as_array().unwrap().len(), 4);
    // The saddle table is on stdout.
    assert!(stdout.contains("mean steps to escape"), "{stdout}");
}

#[test]
fn toy_frames_and_parts_are_honoured() {
    let dir = fresh_dir("toy-frames");
    let out = samkit(&[
        "toy",
        "--out",
        dir.to_str().unwrap(),
        "--parts",
        "gif",
        "--frames",
        "5",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(gif_frames(&dir.join("sam_1d.gif")), 5);
    assert!(!dir.join("beale_trajectories.png").exists());
}

#[test]
fn linreg_writes_curves_bars_theorem_and_json() {
    let dir = fresh_dir("linreg");
    let d = dir.to_str().unwrap();
    let out = samkit(&[
        "linreg",
        "--out",
        d,
        "--samples",
        "300",
        "--test-samples",
        "60",
        "--features",
        "6",
        "--epochs",
        "6",
        "--fisher-samples",
        "32",
        "--t-max",
        "300",
        "--theorem-seeds",
        "6",
        "--dim",
        "4",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    for png in [
        "linreg_curves.png",
        "linreg_final.png",
        "theorem1_excess_risk.png",
    ] {
        let p = dir.join(png);
        assert_wrote(&stdout, &p);
        png_size(&p);
    }
    let json = dir.join("linreg.json");
    assert_wrote(&stdout, &json);
    let v = common::json(&json);
    let finals = v["train"]["final"].as_array().unwrap();
    let names: Vec<&str> = finals
        .iter()
        .map(|r| r["optimizer"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["SGD", "SAM", "SSAM-F", "FriendlySAM"]);
    for r in finals {
        let r2 = r["train_r2"].as_f64().unwrap();
        assert!(r2.is_finite() && r2 <= 1.0);
    }
    assert_eq!(
        v["train"]["history"][0]["train_mse"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    let t = v["theorem1"]["t"].as_array().unwrap();
    assert_eq!(t.last().unwrap().as_u64(), Some(300));
    assert_eq!(
        v["theorem1"]["sgd_bound"].as_array().unwrap().len(),
        t.len()
    );
    for col in ["SGD", "SAM", "SSAM-F", "FriendlySAM", "Tr/(2T)"] {
        assert!(stdout.contains(col), "table lacks {col}:\n{stdout}");
    }
}

#[test]
fn same_seed_same_results() {
    let run = |name: &str| {
        let dir = fresh_dir(name);
        let out = samkit(&[
            "linreg",
            "--out",
            dir.to_str().unwrap(),
            "--seed",
            "11",
            "--samples",
            "100",
            "--features",
            "3",
            "--epochs",
            "3",
            "--t-max",
            "50",
            "--theorem-seeds",
            "5",
            "--dim",
            "3",
        ]);
        assert!(out.status.success(), "stderr: {}", text(&out.stderr));
        std::fs::read_to_string(dir.join("linreg.json")).unwrap()
    };
    assert_eq!(run("seed-a"), run("seed-b"));
}

fn assert_usage_error(args: &[&str], mention: &str) {
    let out = samkit(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: stderr {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(
        stderr.contains(mention),
        "{args:?}: stderr should mention {mention:?}: {stderr}"
    );
}

#[test]
fn bad_flags_and_values_exit_with_code_2() {
    let dir = fresh_dir("bad");
    let d = dir.to_str().unwrap();
    assert_usage_error(&[], "Usage");
    assert_usage_error(&["frobnicate"], "frobnicate");
    assert_usage_error(&["toy", "--bogus"], "--bogus");
    assert_usage_error(&["toy", "--out", d, "--frames", "0"], "--frames");
    assert_usage_error(&["toy", "--out", d, "--frames", "many"], "--frames");
    assert_usage_error(&["toy", "--out", d, "--lr-1d", "-0.1"], "--lr-1d");
    assert_usage_error(&["toy", "--out", d, "--rho-1d", "nan"], "--rho-1d");
    assert_usage_error(&["toy", "--out", d, "--x0", "7"], "--x0");
    assert_usage_error(&["toy", "--out", d, "--parts", "gif,nope"], "nope");
    assert_usage_error(&["toy", "--out", d, "--beale-start", "1"], "--beale-start");
    assert_usage_error(
        &["toy", "--out", d, "--beale-start", "9,0"],
        "--beale-start",
    );
    assert_usage_error(&["toy", "--out", d, "--momenta", "0,1"], "--momenta");
    assert_usage_error(&["toy", "--out", d, "--batches", "0"], "--batches");
    assert_usage_error(&["toy", "--out", d, "--seeds", "0"], "--seeds");
    assert_usage_error(&["toy", "--out", d, "--seed", "-1"], "--seed");
    assert_usage_error(&["linreg", "--out", d, "--lr", "0"], "--lr");
    assert_usage_error(&["linreg", "--out", d, "--momentum", "1.5"], "--momentum");
    assert_usage_error(
        &["linreg", "--out", d, "--batch-size", "5000"],
        "--batch-size",
    );
    assert_usage_error(&["linreg", "--out", d, "--sparsity", "1"], "--sparsity");
    assert_usage_error(
        &["linreg", "--out", d, "--alpha-ratio", "0"],
        "--alpha-ratio",
    );
    assert_usage_error(&["linreg", "--out", d, "--samples", "1"], "--samples");
    assert_usage_error(&["linreg", "--out", d, "--epochs", "-3"], "--epochs");
    assert_usage_error(&["linreg", "--out", d, "--c", "inf"], "--c");
    // Validation happens before anything is written.
    assert!(!dir.exists());
}

#[test]
fn an_unwritable_output_is_an_error_not_a_panic() {
    let dir = fresh_dir("blocked");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = samkit(&[
        "toy",
        "--out",
        file.to_str().unwrap(),
        "--parts",
        "gif",
        "--frames",
        "1",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("error:") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[test]
fn help_exits_zero() {
    let out = samkit(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let s = text(&out.stdout);
    assert!(s.contains("toy") && s.contains("linreg"), "{s}");
    let out = samkit(&["toy", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("--beale-start"));
}
