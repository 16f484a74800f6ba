//! The survey's figures (issue 13), checked through the data they are drawn from: `landscape`
//! with several checkpoints on one colour scale and its sharpness table, the interpolation's
//! named ends and log axis, and bad values of the new flags (exit 2 naming the flag).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn samkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_samkit"))
        .args(args)
        .output()
        .expect("the samkit binary runs")
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("survey-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(o: &Output) -> String {
    let out = text(&o.stdout);
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{out}\nstderr:\n{}",
        o.status.code(),
        text(&o.stderr)
    );
    out
}

fn usage_error(o: &Output, flag: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(flag), "{flag} not named: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn nums(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap_or(f64::NAN))
        .collect()
}

/// Two tiny checkpoints (SGD and SAM, a few steps), made once.
fn checkpoints() -> &'static (PathBuf, PathBuf) {
    static CK: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CK.get_or_init(|| {
        let make = |rule: &str| {
            let dir = fresh_dir(&format!("train-{rule}"));
            ok(&samkit(&[
                "train",
                "--optimizer",
                rule,
                "--epochs",
                "1",
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
                "--out",
                dir.to_str().unwrap(),
            ]));
            dir.join("checkpoint")
        };
        (make("sgd"), make("sam"))
    })
}

/// `landscape` on the two checkpoints at the smallest sizes that still measure everything
/// (a flag in `extra` replaces its default here).
fn landscape(out: &Path, extra: &[&str]) -> Output {
    let (a, b) = checkpoints();
    let both = format!("{},{}", a.display(), b.display());
    let defaults = [
        ("--checkpoint", both.as_str()),
        ("--grid", "3"),
        ("--samples", "16"),
        ("--line-points", "3"),
        ("--ascent-steps", "2"),
        ("--power-iters", "2"),
        ("--hutchinson", "1"),
        ("--out", out.to_str().unwrap()),
    ];
    let mut args = vec!["landscape"];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend(extra);
    samkit(&args)
}

#[test]
fn landscape_draws_several_checkpoints_on_one_scale_with_a_sharpness_table() {
    let dir = fresh_dir("landscape-two");
    let (_, sam) = checkpoints();
    let out = ok(&landscape(
        &dir,
        &[
            "--to",
            sam.to_str().unwrap(),
            "--surface",
            "--log-y",
            "--rho",
            "0.1",
        ],
    ));
    for f in [
        "landscape.png",
        "landscape_3d.png",
        "interpolation.png",
        "sharpness.csv",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let j = json(&dir.join("landscape.json"));
    // Axes named as in the CSV.
    assert_eq!(j["axes"], serde_json::json!(["alpha", "beta"]));
    let csv = std::fs::read_to_string(dir.join("landscape.csv")).unwrap();
    assert!(
        csv.starts_with("alpha,beta,loss,accuracy,checkpoint\n"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + 2 * 9);
    // Two surfaces, named by their optimizers, on one colour scale spanning both.
    let s = j["surfaces"].as_array().unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0]["name"], "sgd");
    assert_eq!(s[1]["name"], "sam");
    let all: Vec<f64> = s
        .iter()
        .flat_map(|x| x["loss"].as_array().unwrap().iter().flat_map(nums))
        .filter(|v| v.is_finite())
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(j["color_scale"]["lo"].as_f64(), Some(lo));
    assert_eq!(j["color_scale"]["hi"].as_f64(), Some(hi));
    // The iso-lines lie inside the shared scale, the same for every panel.
    let levels = nums(&j["levels"]);
    assert!(
        !levels.is_empty() && levels.iter().all(|&l| l > lo && l < hi),
        "{levels:?}"
    );
    // The top-level surface is the first checkpoint's (older readers of landscape.json).
    assert_eq!(j["loss"], s[0]["loss"]);
    for x in s {
        let centre = x["loss"][1][1].as_f64().unwrap();
        assert_eq!(x["centre_loss"].as_f64(), Some(centre));
        let low = nums(&x["lowest"]);
        assert!(low[2] <= centre, "{low:?} vs {centre}");
    }
    // The sharpness table: every measure, the §3.3 bound 2‖∇L‖/ρ and whether it holds.
    let rows = j["sharpness"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        let g = r["grad_norm"].as_f64().unwrap();
        let bound = r["bound"].as_f64().unwrap();
        assert!(
            g > 0.0 && (bound - 2.0 * g / 0.1).abs() < 1e-9 * bound,
            "{r}"
        );
        assert_eq!(r["rho"].as_f64(), Some(0.1));
        let lmax = r["lambda_max"].as_f64().unwrap();
        assert_eq!(r["bound_holds"].as_bool(), Some(lmax <= bound));
        assert!(r["eps_sharpness"].as_f64().unwrap().is_finite());
        assert!(r["trace"][0].as_f64().unwrap().is_finite());
        assert_eq!(
            r["loss"],
            s[rows.iter().position(|x| x == r).unwrap()]["centre_loss"]
        );
    }
    let table = std::fs::read_to_string(dir.join("sharpness.csv")).unwrap();
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("sgd,"), "{table}");
    assert!(out.contains("2‖∇L‖/ρ"), "{out}");
    // The interpolation's ends carry the checkpoints' names; the loss axis is logarithmic.
    let line = &j["line"];
    assert_eq!(line["from_name"], "sgd");
    assert_eq!(line["to_name"], "sam");
    assert_eq!(line["log_y"].as_bool(), Some(true));
    assert_eq!(nums(&line["t"]), vec![-0.5, 0.5, 1.5]);
}

#[test]
fn landscape_names_and_new_flags_are_checked() {
    let dir = fresh_dir("landscape-bad");
    usage_error(&landscape(&dir, &["--names", "only-one"]), "--names");
    usage_error(&landscape(&dir, &["--rho", "0"]), "--rho");
    usage_error(&landscape(&dir, &["--ascent-steps", "0"]), "--ascent-steps");
    usage_error(&landscape(&dir, &["--fd-eps", "5"]), "--fd-eps");
    // Names given are used, in order.
    let out = ok(&landscape(
        &dir,
        &[
            "--names",
            "plain,sharp",
            "--power-iters",
            "0",
            "--hutchinson",
            "0",
        ],
    ));
    assert!(out.contains("plain:") && out.contains("sharp:"), "{out}");
    let j = json(&dir.join("landscape.json"));
    assert_eq!(j["surfaces"][1]["name"], "sharp");
    // Measures switched off are reported as such, not as zeros.
    assert!(j["sharpness"][0]["lambda_max"].is_null());
    assert!(j["sharpness"][0]["bound_holds"].is_null());
    assert!(!dir.join("landscape_3d.png").exists());
}
