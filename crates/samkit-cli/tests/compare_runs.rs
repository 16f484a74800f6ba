//! `compare --runs FILE.toml` (per-run rule, base optimizer and hyperparameters: the survey's
//! figure 9e mix in one command) and `compare --save-checkpoints` (each run's final model and
//! optimizer state, read back by `landscape`); bad runs files exit 2 naming the file, the table
//! and the key.
mod common;

use common::{json, ok, refused, samkit};
use std::path::{Path, PathBuf};

fn fresh_dir(name: &str) -> PathBuf {
    common::fresh_dir("compare-runs", name)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Writes `text` as `name` in a fresh folder and returns its path.
fn runs_file(dir: &str, name: &str, text: &str) -> PathBuf {
    let d = fresh_dir(dir);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Figure 9e's kind of mix: SAM on Adam with a large adaptive ρ, FriendlySAM on RMSprop,
/// SSAM-F with a less aggressive mask, SSAM-D with mask interval 2.
const FIG9E: &str = r#"
[[run]]
name = "sam-adam"
optimizer = "sam"
base = "adam"
lr = 0.005
rho = 0.2
adaptive = true

[[run]]
name = "friendlysam-rmsprop"
optimizer = "friendlysam"
base = "rmsprop"
lr = 0.01

[[run]]
optimizer = "ssam-f"
sparsity = 0.8
fisher-samples = 8

[[run]]
optimizer = "ssam-d"
mask_interval = 2
"#;

#[test]
fn a_runs_file_mixes_rules_bases_and_rho_and_checkpoints_load_in_landscape() {
    let file = runs_file("fig9e-file", "fig9e.toml", FIG9E);
    let dir = fresh_dir("fig9e");
    let mut args = vec!["compare", "--runs", path(&file), "--save-checkpoints"];
    args.extend(common::TINY_RUN);
    args.extend(["--out", path(&dir)]);
    ok(&samkit(&args));
    let rows = json(&dir.join("compare.json"));
    let rows = rows.as_array().unwrap();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["optimizer"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["sam-adam", "friendlysam-rmsprop", "ssam-f", "ssam-d"]
    );
    let c: Vec<&serde_json::Value> = rows.iter().map(|r| &r["config"]).collect();
    assert_eq!(c[0]["base"]["type"], "adam");
    assert_eq!(c[0]["base"]["lr"].as_f64(), Some(0.005));
    assert_eq!(c[0]["rule"]["rule"], "sam");
    assert_eq!(c[0]["rule"]["rho"].as_f64(), Some(0.2));
    assert_eq!(c[0]["rule"]["adaptive"], true);
    assert_eq!(c[1]["base"]["type"], "rmsprop");
    assert_eq!(c[1]["rule"]["rule"], "friendlysam");
    // The command line's defaults hold where a table says nothing.
    assert_eq!(c[1]["rule"]["rho"].as_f64(), Some(0.05));
    assert_eq!(c[2]["base"]["type"], "sgd");
    assert_eq!(c[2]["rule"]["sparsity"].as_f64(), Some(0.8));
    assert_eq!(c[2]["rule"]["mask"]["samples"].as_u64(), Some(8));
    assert_eq!(c[3]["rule"]["interval"].as_u64(), Some(2));
    assert_eq!(c[3]["rule"]["sparsity"].as_f64(), Some(0.5));
    // Every run's checkpoint, named by the run, recorded in compare.json.
    for (r, name) in rows.iter().zip(&names) {
        let ck = dir.join("checkpoints").join(format!("{name}-seed0"));
        for f in ["model.safetensors", "optimizer.safetensors", "trainer.json"] {
            assert!(ck.join(f).exists(), "{}/{f} missing", ck.display());
        }
        assert_eq!(r["seeds"][0]["checkpoint"].as_str(), Some(path(&ck)));
        let t = json(&ck.join("trainer.json"));
        assert_eq!(t["config"]["optimizer"], *name);
        assert_eq!(t["epoch"].as_u64(), Some(1));
    }
    // landscape reads two of them.
    let ck = |n: &str| dir.join("checkpoints").join(format!("{n}-seed0"));
    let both = format!("{},{}", path(&ck("sam-adam")), path(&ck("ssam-d")));
    let land = dir.join("landscape");
    ok(&samkit(&[
        "landscape",
        "--checkpoint",
        &both,
        "--grid",
        "3",
        "--samples",
        "16",
        "--line-points",
        "3",
        "--ascent-steps",
        "2",
        "--power-iters",
        "0",
        "--hutchinson",
        "0",
        "--out",
        path(&land),
    ]));
    let l = json(&land.join("landscape.json"));
    assert_eq!(l["surfaces"][0]["name"], "sam-adam");
    assert_eq!(l["surfaces"][1]["name"], "ssam-d");
    let centre = l["surfaces"][0]["centre_loss"].as_f64().unwrap();
    assert!(centre.is_finite() && centre > 0.0, "{centre}");
}

/// Runs `compare --runs` on `text` and checks that it exits 2 naming the file, the table and
/// the key (and anything else in `says`).
fn refused_file(case: &str, text: &str, table: &str, says: &[&str]) {
    let name = format!("{case}.toml");
    let file = runs_file(&format!("bad-{case}"), &name, text);
    let out = fresh_dir(&format!("bad-{case}-out"));
    let mut args = vec!["compare", "--runs", path(&file)];
    args.extend(common::TINY_RUN);
    args.extend(["--out", path(&out)]);
    let mut all = vec![name.as_str(), table];
    all.extend(says);
    refused(&samkit(&args), &all);
    // Nothing was trained.
    assert!(!out.join("compare.json").exists(), "{case}");
}

#[test]
fn bad_runs_files_are_refused_naming_the_file_the_table_and_the_key() {
    let ok_run = "[[run]]\noptimizer = \"sgd\"\n";
    refused_file(
        "unknown-key",
        &format!("{ok_run}[[run]]\noptimizer = \"sam\"\nrhoo = 0.1\n"),
        "[[run]] #2",
        &["key `rhoo`", "unknown key"],
    );
    refused_file(
        "wrong-type",
        "[[run]]\noptimizer = \"sam\"\nrho = \"big\"\n",
        "[[run]] #1",
        &["key `rho`", "bad value"],
    );
    refused_file(
        "out-of-range",
        &format!("{ok_run}[[run]]\nname = \"neg\"\noptimizer = \"sam\"\nrho = -0.5\n"),
        "[[run]] #2 (`neg`)",
        &["key `rho`", "must be > 0"],
    );
    refused_file(
        "bad-base",
        "[[run]]\noptimizer = \"sam\"\nbase = \"lion\"\n",
        "[[run]] #1",
        &["key `base`"],
    );
    refused_file(
        "not-this-rule",
        "[[run]]\noptimizer = \"sam\"\nrst_p = 0.5\n",
        "[[run]] #1",
        &["key `rst_p`", "only applies to rst"],
    );
    refused_file(
        "not-this-base",
        "[[run]]\noptimizer = \"sam\"\nbase = \"adam\"\nmomentum = 0.5\n",
        "[[run]] #1",
        &["key `momentum`", "does not apply to --base adam"],
    );
    refused_file(
        "rho-on-sgd",
        "[[run]]\noptimizer = \"sgd\"\nrho = 0.1\n",
        "[[run]] #1",
        &["key `rho`", "no perturbation"],
    );
    refused_file(
        "shared-key",
        "[[run]]\noptimizer = \"sam\"\nepochs = 3\n",
        "[[run]] #1",
        &["key `epochs`", "--epochs on the command line"],
    );
    refused_file(
        "no-optimizer",
        "[[run]]\nname = \"x\"\nlr = 0.1\n",
        "[[run]] #1",
        &["key `optimizer`", "missing"],
    );
    refused_file(
        "unknown-optimizer",
        "[[run]]\noptimizer = \"adamsam\"\n",
        "[[run]] #1",
        &["key `optimizer`", "unknown optimizer"],
    );
    refused_file(
        "same-name",
        &format!("{ok_run}{ok_run}"),
        "[[run]] #2",
        &["key `name`", "[[run]] #1"],
    );
    refused_file(
        "top-level",
        &format!("epochs = 3\n{ok_run}"),
        "the top level",
        &["key `epochs`"],
    );
    refused_file(
        "not-toml",
        "[[run]\noptimizer = sam\n",
        "not valid TOML",
        &[],
    );
    // A missing file, and --runs with --optimizers.
    let missing = fresh_dir("missing").join("none.toml");
    refused(
        &samkit(&["compare", "--runs", path(&missing)]),
        &["--runs", "none.toml"],
    );
    let file = runs_file("conflict", "c.toml", ok_run);
    let o = samkit(&["compare", "--runs", path(&file), "--optimizers", "sgd"]);
    assert_eq!(o.status.code(), Some(2));
}
