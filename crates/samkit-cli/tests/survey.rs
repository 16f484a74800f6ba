//! The survey's figures (issue 13), checked through the data they are drawn from: `landscape`
//! with several checkpoints on one colour scale and its sharpness table, the interpolation's
//! named ends and log axis, and bad values of the new flags (exit 2 naming the flag).
mod common;

use common::{json, ok, samkit, text, tiny_checkpoint};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

/// A fresh folder for one test, named apart from the other test binaries' folders.
fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("survey", name)
}

fn usage_error(o: &Output, flag: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(flag), "{flag} not named: {err}");
    assert!(!err.contains("panicked"), "{err}");
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
        let make = |rule: &str| tiny_checkpoint(rule, &fresh_dir(&format!("train-{rule}")));
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

/// `f''` of the survey's 1-D function, written out again so the test does not trust the code.
fn d2f(x: f64) -> f64 {
    30.0 * x.powi(4) + 20.0 * x.powi(3) + 30.0 * x - 60.0
}

#[test]
fn the_one_d_sweep_reports_where_sgd_and_sam_end_and_the_curvature_there() {
    let dir = fresh_dir("toy-sweep");
    ok(&samkit(&[
        "toy",
        "--parts",
        "sweep",
        "--rho-sweep",
        "0,0.05,0.3,0.4",
        "--x0-sweep",
        "-1,1",
        "--out",
        dir.to_str().unwrap(),
    ]));
    assert!(dir.join("oned_rho_sweep.png").exists());
    let j = json(&dir.join("oned_sweep.json"));
    // Both minima with their curvature: the sharp left one and the flat right one.
    let minima = j["minima"].as_array().unwrap();
    assert_eq!(minima.len(), 2);
    let curv: Vec<f64> = minima
        .iter()
        .map(|m| m["curvature"].as_f64().unwrap())
        .collect();
    assert!(
        (curv[0] - 404.0).abs() < 1.0 && (curv[1] - 152.0).abs() < 1.0,
        "{curv:?}"
    );
    // Every end's curvature is f'' at its final point.
    let ends: Vec<&serde_json::Value> = j["over_rho"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            j["over_x0"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|p| p.as_array().unwrap()),
        )
        .chain(std::iter::once(&j["sgd"]))
        .collect();
    assert_eq!(ends.len(), 4 + 2 * 2 + 1);
    for e in &ends {
        let x = e["final_x"].as_f64().unwrap();
        let c = e["curvature"].as_f64().unwrap();
        assert!((c - d2f(x)).abs() < 1e-9 * (1.0 + c.abs()), "{e}");
    }
    // ρ = 0 is SGD; from the default start SGD ends in the sharp left minimum.
    let over = j["over_rho"].as_array().unwrap();
    assert_eq!(over[0]["optimizer"], "SGD");
    assert_eq!(over[0]["final_x"], j["sgd"]["final_x"]);
    assert_eq!(j["sgd"]["region"], "left well");
    assert!((j["sgd"]["curvature"].as_f64().unwrap() - 404.0).abs() < 1.0);
    // The observations, from the data: a small ρ stays in the sharp well, and with
    // ρ ≥ 0.3 SAM stalls at the local maximum near 0.
    assert_eq!(over[1]["region"], "left well");
    for e in &over[2..] {
        assert_eq!(e["optimizer"], "SAM");
        assert_eq!(e["region"], "local maximum", "{e}");
        assert!(e["curvature"].as_f64().unwrap() < 0.0);
    }
    // Bad sweep values are bad input naming the flag.
    usage_error(&samkit(&["toy", "--rho-sweep", "-0.1"]), "--rho-sweep");
    usage_error(&samkit(&["toy", "--x0-sweep", "4"]), "--x0-sweep");
    usage_error(&samkit(&["toy", "--sweep-steps", "0"]), "--sweep-steps");
}

#[test]
fn saddle_escape_of_sgd_sam_eg_sam_and_og_sam_with_a_verdict() {
    let dir = fresh_dir("toy-escape");
    ok(&samkit(&[
        "toy",
        "--parts",
        "escape",
        "--seeds",
        "6",
        "--max-steps",
        "1500",
        "--beale-steps",
        "300",
        "--out",
        dir.to_str().unwrap(),
    ]));
    assert!(dir.join("escape.png").exists());
    let j = json(&dir.join("escape.json"));
    let outcomes = j["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 8);
    let caps = [("toy saddle", 1500.0), ("beale", 300.0)];
    for (problem, cap) in caps {
        let rules: Vec<&str> = outcomes
            .iter()
            .filter(|o| o["problem"] == problem)
            .map(|o| o["optimizer"].as_str().unwrap())
            .collect();
        assert_eq!(rules, ["sgd", "sam", "eg-sam", "og-sam"], "{problem}");
        for o in outcomes.iter().filter(|o| o["problem"] == problem) {
            let (mean, runs) = (
                o["mean_steps"].as_f64().unwrap(),
                o["runs"].as_u64().unwrap(),
            );
            let stuck = o["stuck"].as_u64().unwrap();
            assert_eq!(runs, 6);
            assert!(stuck <= runs && mean >= 1.0 && mean <= cap, "{o}");
            // All runs stuck means every run counted as the cap.
            if stuck == runs {
                assert_eq!(mean, cap);
            }
        }
    }
    // The verdict follows the means: "does not hold" whenever EG- or OG-SAM is not sooner.
    let verdicts = j["verdicts"].as_array().unwrap();
    assert_eq!(verdicts.len(), 2);
    for v in verdicts {
        let sam = v["sam_mean_steps"].as_f64().unwrap();
        let eg = v["eg_sam_mean_steps"].as_f64().unwrap();
        let og = v["og_sam_mean_steps"].as_f64().unwrap();
        let claim = v["claim"].as_str().unwrap();
        if eg >= sam || og >= sam {
            assert_eq!(claim, "does not hold", "{v}");
        } else {
            assert!(claim == "holds" || claim == "within noise", "{v}");
        }
    }
    usage_error(&samkit(&["toy", "--escape-batch", "0"]), "--escape-batch");
}

#[test]
fn compare_writes_the_step_cost_chart_it_promises() {
    let dir = fresh_dir("compare-cost");
    let mut args = vec!["compare", "--optimizers", "sgd,sam"];
    args.extend(common::TINY_RUN);
    args.extend(["--out", dir.to_str().unwrap()]);
    ok(&samkit(&args));
    for f in ["step_cost.png", "accuracy.png", "batch_loss.png"] {
        let png = std::fs::read(dir.join(f)).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{f}");
    }
}

#[test]
fn hessian_writes_the_spectral_density_beside_power_iteration() {
    let dir = fresh_dir("hessian-slq");
    let (_, sam) = checkpoints();
    let out = ok(&samkit(&[
        "hessian",
        "--checkpoint",
        sam.to_str().unwrap(),
        "--samples",
        "16",
        "--top",
        "1",
        "--power-iters",
        "3",
        "--lanczos",
        "3",
        "--hutchinson",
        "1",
        "--slq-probes",
        "2",
        "--slq-steps",
        "4",
        "--out",
        dir.to_str().unwrap(),
    ]));
    assert!(out.contains("spectral density (SLQ"), "{out}");
    for f in ["power_iteration.png", "spectral_density.png", "hessian.png"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let j = json(&dir.join("hessian.json"));
    let nodes = j["slq_nodes"].as_array().unwrap();
    // Two probes of four Lanczos steps: up to eight nodes, weights summing to 1.
    assert!(!nodes.is_empty() && nodes.len() <= 8, "{nodes:?}");
    let total: f64 = nodes.iter().map(|x| x[1].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
    // The density spans the nodes and integrates to their weight.
    let d: Vec<(f64, f64)> = j["spectral_density"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    let integral: f64 = d
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum();
    assert!((integral - 1.0).abs() < 1e-2, "{integral}");
    for x in nodes {
        let th = x[0].as_f64().unwrap();
        assert!(d[0].0 < th && th < d[d.len() - 1].0);
    }
    usage_error(
        &samkit(&[
            "hessian",
            "--checkpoint",
            sam.to_str().unwrap(),
            "--slq-sigma",
            "0",
        ]),
        "--slq-sigma",
    );
    usage_error(
        &samkit(&[
            "hessian",
            "--checkpoint",
            sam.to_str().unwrap(),
            "--slq-steps",
            "0",
        ]),
        "--slq-steps",
    );
}

#[test]
fn theorem_one_says_its_bound_omits_the_log_term() {
    let dir = fresh_dir("theorem1");
    let out = ok(&samkit(&[
        "linreg",
        "--parts",
        "theorem1",
        "--t-max",
        "200",
        "--theorem-seeds",
        "4",
        "--out",
        dir.to_str().unwrap(),
    ]));
    assert!(out.contains("without its O(ln T / T) term"), "{out}");
    assert!(dir.join("theorem1_excess_risk.png").exists());
}
