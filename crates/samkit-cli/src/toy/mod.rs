//! `samkit toy`: the survey's toy experiments.
//! (a) SAM and SGD on the 1-D function, as GIFs; (b) the Beale function trajectories;
//! (c) SAM's escape time from a noisy saddle against momentum and batch size.
pub mod beale;
pub mod escape;
pub mod oned;
pub mod saddle;
pub mod sweep;

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::error::{check, CliError, Result};
use crate::output::Output;
use samkit_core::{BaseOptimizer, Eval, GradRequest, Layout, Optimizer, Outcome, Rule};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ToyPart {
    /// (a) GIFs of SAM and SGD on f(x) = x⁶ + x⁵ + 5x³ − 30x² + 3x.
    Gif,
    /// (a') Where SGD and SAM end on the 1-D function and the curvature there, against ρ and
    /// the start point (oned_rho_sweep.png, oned_sweep.json).
    Sweep,
    /// (b) Trajectories on the Beale function.
    Beale,
    /// (c) Escape time from a noisy saddle.
    Saddle,
    /// (d) Escape time of SGD, SAM, EG-SAM and OG-SAM (reconstructed) from the toy saddle and
    /// the Beale saddle: the survey's §4 claim (escape.png, escape.json).
    Escape,
}

#[derive(Args, Debug, Clone)]
pub struct ToyArgs {
    /// Directory the figures and toy.json are written to (created if missing).
    #[arg(long, default_value = "results/toy")]
    pub out: PathBuf,
    /// Seed of the saddle experiment's gradient noise.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Which parts to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gif,sweep,beale,saddle,escape"
    )]
    pub parts: Vec<ToyPart>,

    /// (a) Frames of each GIF: one per optimizer step.
    #[arg(long, default_value_t = 30, allow_negative_numbers = true)]
    pub frames: usize,
    /// (a) Start point x₀.
    #[arg(long, default_value_t = -0.2, allow_negative_numbers = true)]
    pub x0: f64,
    /// (a) Learning rate.
    #[arg(long = "lr-1d", default_value_t = 0.004, allow_negative_numbers = true)]
    pub lr_1d: f64,
    /// (a) SAM's ρ.
    #[arg(long = "rho-1d", default_value_t = 0.1, allow_negative_numbers = true)]
    pub rho_1d: f64,

    /// (a') SAM's ρ values of the sweep, comma-separated (0 is SGD).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.02,0.05,0.1,0.15,0.2,0.25,0.3,0.35,0.4,0.5",
        allow_hyphen_values = true
    )]
    pub rho_sweep: Vec<f64>,
    /// (a') Start points of the sweep, comma-separated, each in [-3, 3] (SAM at --rho-1d).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "-2.5,-2,-1.5,-1,-0.5,-0.2,0.2,0.5,1,1.5,2",
        allow_hyphen_values = true
    )]
    pub x0_sweep: Vec<f64>,
    /// (a') Steps of every run of the sweep (enough to settle, unlike the GIFs' frames).
    #[arg(long, default_value_t = 500, allow_negative_numbers = true)]
    pub sweep_steps: usize,

    /// (b) Start point "x,y".
    #[arg(long, default_value = "0.7,1.4", value_parser = parse_point, allow_hyphen_values = true)]
    pub beale_start: (f64, f64),
    /// (b) Steps of every optimizer.
    #[arg(long, default_value_t = 2000, allow_negative_numbers = true)]
    pub beale_steps: usize,
    /// (b) Learning rate of the SGD base optimizer.
    #[arg(long, default_value_t = 0.003, allow_negative_numbers = true)]
    pub beale_lr: f64,
    /// (b) ρ of SAM, ASAM, FriendlySAM and GSAM.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub beale_rho: f64,

    /// (c) Momentum values γ, comma-separated, each in [0, 1).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0,0.5,0.9,0.95",
        allow_negative_numbers = true
    )]
    pub momenta: Vec<f64>,
    /// (c) Batch sizes B, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,4,16,64,256,1024",
        allow_negative_numbers = true
    )]
    pub batches: Vec<usize>,
    /// (c) Runs (noise seeds) per (γ, B) cell.
    #[arg(long, default_value_t = 32, allow_negative_numbers = true)]
    pub seeds: usize,
    /// (c) Step cap of one run.
    #[arg(long, default_value_t = 5000, allow_negative_numbers = true)]
    pub max_steps: usize,
    /// (c) Learning rate.
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    pub saddle_lr: f64,
    /// (c) SAM's ρ.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub saddle_rho: f64,
    /// (c) Per-sample gradient noise std (a batch of B has std noise/√B).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub noise: f64,
    /// (c) Escape threshold on |y|.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub threshold: f64,

    /// (d) Batch size B of the escape comparison (gradient noise std --noise/√B), with the
    /// toy saddle's --saddle-lr, --saddle-rho, --threshold, --max-steps, the Beale figure's
    /// --beale-lr, --beale-rho, --beale-steps, and --seeds runs per rule.
    #[arg(long, default_value_t = 16, allow_negative_numbers = true)]
    pub escape_batch: usize,
}

/// Parses "x,y".
pub fn parse_point(s: &str) -> std::result::Result<(f64, f64), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 2 {
        return Err(format!("expected two numbers \"x,y\", got {s:?}"));
    }
    let num = |t: &str| -> std::result::Result<f64, String> {
        let v: f64 = t.parse().map_err(|_| format!("{t:?} is not a number"))?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(format!("{t:?} is not a finite number"))
        }
    };
    Ok((num(parts[0])?, num(parts[1])?))
}

impl ToyArgs {
    pub fn validate(&self) -> Result<()> {
        check::non_empty("parts", &self.parts)?;
        check::count("frames", self.frames, 1, 500)?;
        let x0 = check::finite("x0", self.x0)?;
        if !(oned::DOMAIN.0..=oned::DOMAIN.1).contains(&x0) {
            return Err(CliError::invalid("x0", format!("{x0} must lie in [-3, 3]")));
        }
        check::positive("lr-1d", self.lr_1d)?;
        check::non_negative("rho-1d", self.rho_1d)?;
        check::non_empty("rho-sweep", &self.rho_sweep)?;
        for &r in &self.rho_sweep {
            check::non_negative("rho-sweep", r)?;
        }
        check::non_empty("x0-sweep", &self.x0_sweep)?;
        for &x in &self.x0_sweep {
            let x = check::finite("x0-sweep", x)?;
            if !(oned::DOMAIN.0..=oned::DOMAIN.1).contains(&x) {
                return Err(CliError::invalid(
                    "x0-sweep",
                    format!("{x} must lie in [-3, 3]"),
                ));
            }
        }
        check::count("sweep-steps", self.sweep_steps, 1, 1_000_000)?;
        let (bx, by) = self.beale_start;
        if bx.abs() > 4.5 || by.abs() > 4.5 {
            return Err(CliError::invalid(
                "beale-start",
                format!("({bx}, {by}) must lie in [-4.5, 4.5]²"),
            ));
        }
        check::count("beale-steps", self.beale_steps, 1, 1_000_000)?;
        check::positive("beale-lr", self.beale_lr)?;
        check::non_negative("beale-rho", self.beale_rho)?;
        check::non_empty("momenta", &self.momenta)?;
        for &g in &self.momenta {
            check::half_open("momenta", g, 0.0, 1.0)?;
        }
        check::non_empty("batches", &self.batches)?;
        for &b in &self.batches {
            check::count("batches", b, 1, 1 << 30)?;
        }
        check::count("seeds", self.seeds, 1, 100_000)?;
        check::count("max-steps", self.max_steps, 1, 10_000_000)?;
        check::positive("saddle-lr", self.saddle_lr)?;
        check::non_negative("saddle-rho", self.saddle_rho)?;
        check::non_negative("noise", self.noise)?;
        check::positive("threshold", self.threshold)?;
        check::count("escape-batch", self.escape_batch, 1, 1 << 30)?;
        Ok(())
    }
}

/// `w_0, ..., w_steps` of `rule` on a deterministic function through
/// `samkit_core::Optimizer` (closure form, flat layout of `start.len()` weights). `grad`
/// writes the gradient at `w` and returns the value. Stops early if the weights diverge.
pub fn trajectory(
    rule: Rule,
    base: BaseOptimizer,
    start: &[f64],
    steps: usize,
    grad: impl Fn(&[f32], &mut [f32]) -> f64,
) -> Result<Vec<Vec<f64>>> {
    let mut opt = Optimizer::new(Layout::flat(start.len())?, rule, base)?;
    let mut w: Vec<f32> = start.iter().map(|&v| v as f32).collect();
    let mut out = Vec::with_capacity(steps + 1);
    out.push(w.iter().map(|&v| v as f64).collect());
    for _ in 0..steps {
        let report = opt.step(&mut w, |req, w: &Vec<f32>, g| match req {
            GradRequest::Batch(_) => Ok(Eval {
                loss: grad(w, g),
                samples: 1,
            }),
            other => Err(samkit_core::Error::Oracle(format!(
                "a deterministic function has no {other:?} gradient"
            ))),
        })?;
        let diverged = w.iter().any(|v| !v.is_finite() || v.abs() > 1e6);
        if report.outcome == Outcome::Skipped || diverged {
            break;
        }
        out.push(w.iter().map(|&v| v as f64).collect());
    }
    Ok(out)
}

#[derive(Serialize)]
struct OneDSummary {
    optimizer: &'static str,
    lr: f64,
    rho: f64,
    x0: f64,
    path: Vec<f64>,
    final_x: f64,
    final_f: f64,
}

#[derive(Serialize, Default)]
struct ToySummary {
    seed: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    one_d: Vec<OneDSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    one_d_sweep: Option<sweep::Sweep>,
    #[serde(skip_serializing_if = "Option::is_none")]
    beale: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    saddle: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    escape: Option<serde_json::Value>,
}

/// The files the selected parts write, checked before any work: a folder in the way of one
/// would fail the run only at its end.
fn output_names(parts: &[ToyPart]) -> Vec<&'static str> {
    let mut names = vec!["toy.json"];
    for p in parts {
        names.extend_from_slice(match p {
            ToyPart::Gif => &["sgd_1d.gif", "sam_1d.gif"][..],
            ToyPart::Sweep => &["oned_rho_sweep.png", "oned_sweep.json"],
            ToyPart::Beale => &["beale_trajectories.png"],
            ToyPart::Saddle => &["saddle_escape_heatmap.png", "saddle_escape_vs_batch.png"],
            ToyPart::Escape => &["escape.png", "escape.json"],
        });
    }
    names
}

pub fn run(args: &ToyArgs, out: &mut Output) -> Result<()> {
    args.validate()?;
    out.ensure_dir(&args.out)?;
    let dir: &Path = &args.out;
    samkit_train::files::check_output_names(dir, &output_names(&args.parts))?;
    let mut summary = ToySummary {
        seed: args.seed,
        ..ToySummary::default()
    };
    if args.parts.contains(&ToyPart::Gif) {
        let (runs, files) = oned::run(dir, args.frames, args.x0, args.lr_1d, args.rho_1d)?;
        out.say(format!(
            "(a) {} on [-3, 3], {} steps from x0 = {}",
            oned::FORMULA,
            args.frames,
            args.x0
        ));
        for r in &runs {
            let x = *r.path.last().unwrap_or(&args.x0);
            out.say(format!(
                "    {:<4} final x = {x:>9.4}   f(x) = {:>10.4}",
                r.name,
                oned::f(x)
            ));
            summary.one_d.push(OneDSummary {
                optimizer: r.name,
                lr: args.lr_1d,
                rho: if r.name == "SAM" { args.rho_1d } else { 0.0 },
                x0: args.x0,
                path: r.path.clone(),
                final_x: x,
                final_f: oned::f(x),
            });
        }
        for f in files {
            out.wrote(f);
        }
    }
    if args.parts.contains(&ToyPart::Sweep) {
        let s = sweep::sweep(
            args.lr_1d,
            args.sweep_steps,
            args.x0,
            args.rho_1d,
            &args.rho_sweep,
            &args.x0_sweep,
        )?;
        out.say(format!(
            "(a') {} after {} steps (lr = {}): minima {}",
            oned::FORMULA,
            args.sweep_steps,
            args.lr_1d,
            s.minima
                .iter()
                .map(|m| format!("x = {:.3} (f'' = {:.0})", m.x, m.curvature))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out.say(format!(
            "    SGD from x0 = {}: ends at x = {:.3}, f'' = {:.0} ({})",
            args.x0, s.sgd.final_x, s.sgd.curvature, s.sgd.region
        ));
        for e in &s.over_rho {
            out.say(format!(
                "    {} rho = {:<5} ends at x = {:>8.3}, f'' = {:>7.0} ({})",
                e.optimizer, e.rho, e.final_x, e.curvature, e.region
            ));
        }
        let file = sweep::plot(dir, &s)?;
        out.wrote(file);
        let json = dir.join("oned_sweep.json");
        crate::output::write_json(&json, &s)?;
        out.wrote(json);
        summary.one_d_sweep = Some(s);
    }
    if args.parts.contains(&ToyPart::Beale) {
        let runs = beale::run_all(
            args.beale_start,
            args.beale_steps,
            args.beale_lr,
            args.beale_rho,
        )?;
        out.say(format!(
            "(b) Beale function from ({}, {}), {} steps, lr = {}, rho = {}",
            args.beale_start.0, args.beale_start.1, args.beale_steps, args.beale_lr, args.beale_rho
        ));
        out.say(format!(
            "    {:<12} {:>18} {:>12} {:>14} {:>14}",
            "optimizer", "final (x, y)", "f", "|w - (3,0.5)|", "|w - (0,1)|"
        ));
        for r in &runs {
            out.say(format!(
                "    {:<12} {:>18} {:>12.5} {:>14.4} {:>14.4}",
                r.name,
                format!("({:.3}, {:.3})", r.final_point.0, r.final_point.1),
                r.final_value,
                r.distance_to_minimum,
                r.distance_to_saddle
            ));
        }
        let file = beale::plot(dir, &runs, args.beale_start, args.beale_lr, args.beale_rho)?;
        out.wrote(file);
        let finals: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "optimizer": r.name,
                    "final_point": [r.final_point.0, r.final_point.1],
                    "final_value": r.final_value,
                    "distance_to_minimum": r.distance_to_minimum,
                    "distance_to_saddle": r.distance_to_saddle,
                    "steps": r.path.len() - 1,
                })
            })
            .collect();
        summary.beale = Some(serde_json::json!({
            "start": [args.beale_start.0, args.beale_start.1],
            "lr": args.beale_lr,
            "rho": args.beale_rho,
            "runs": finals,
        }));
    }
    if args.parts.contains(&ToyPart::Saddle) {
        let p = saddle::SaddleParams {
            lr: args.saddle_lr,
            rho: args.saddle_rho,
            noise: args.noise,
            threshold: args.threshold,
            max_steps: args.max_steps,
        };
        let cells = saddle::grid(&p, &args.momenta, &args.batches, args.seeds, args.seed)?;
        out.say(format!(
            "(c) SAM at the saddle of x²/2 - y²/2 + y⁴/4: lr = {}, rho = {}, noise = {}/sqrt(B), threshold |y| > {}, {} seeds",
            p.lr, p.rho, p.noise, p.threshold, args.seeds
        ));
        out.say(saddle::table(
            &cells,
            &args.momenta,
            &args.batches,
            p.max_steps,
        ));
        for f in saddle::plot(dir, &cells, &args.momenta, &args.batches, &p)? {
            out.wrote(f);
        }
        summary.saddle = Some(serde_json::json!({ "params": p, "cells": cells }));
    }
    if args.parts.contains(&ToyPart::Escape) {
        let noise_std = args.noise / (args.escape_batch as f64).sqrt();
        let probs = escape::problems(
            (
                args.saddle_lr,
                args.saddle_rho,
                args.threshold,
                args.max_steps,
            ),
            (args.beale_lr, args.beale_rho, args.beale_steps),
            noise_std,
        );
        let mut all = Vec::new();
        for (p, rho) in &probs {
            all.extend(escape::outcomes(p, *rho, args.seeds, args.seed)?);
        }
        let verdicts = escape::verdicts(&all);
        out.say(format!(
            "(d) leaving a saddle: SGD, SAM, EG-SAM, OG-SAM (reconstructed), started at the saddle, noise std {noise_std:.4} (B = {}), {} seeds",
            args.escape_batch, args.seeds
        ));
        out.say(escape::table(&all, &verdicts));
        let refs: Vec<&escape::Problem> = probs.iter().map(|p| &p.0).collect();
        out.wrote(escape::plot(dir, &all, &refs)?);
        let value = serde_json::json!({
            "batch": args.escape_batch,
            "seeds": args.seeds,
            "seed": args.seed,
            "problems": refs,
            "outcomes": all,
            "verdicts": verdicts,
        });
        let json = dir.join("escape.json");
        crate::output::write_json(&json, &value)?;
        out.wrote(json);
        summary.escape = Some(value);
    }
    let json = dir.join("toy.json");
    crate::output::write_json(&json, &summary)?;
    out.wrote(json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_or_explain() {
        assert_eq!(parse_point("0.7,1.4"), Ok((0.7, 1.4)));
        assert_eq!(parse_point(" -1 , 2 "), Ok((-1.0, 2.0)));
        assert!(parse_point("1").is_err());
        assert!(parse_point("a,b").is_err());
        assert!(parse_point("1,inf").is_err());
    }

    #[test]
    fn trajectory_of_rho_zero_sam_is_gradient_descent() {
        let quad = |w: &[f32], g: &mut [f32]| {
            g[0] = 2.0 * w[0];
            (w[0] * w[0]) as f64
        };
        let sgd = BaseOptimizer::sgd(0.1, 0.0, 0.0);
        let a = trajectory(Rule::Base, sgd.clone(), &[1.0], 3, quad).unwrap();
        let sam = Rule::Sam(samkit_core::Sam {
            rho: 0.0,
            adaptive: false,
            eps_p: None,
            grad_centralization: false,
        });
        let b = trajectory(sam, sgd, &[1.0], 3, quad).unwrap();
        assert_eq!(a, b);
        assert!((a[3][0] - 0.512).abs() < 1e-6);
    }
}
