//! `samkit linreg`: the survey's figures 3 and 4 (SGD, SAM, SSAM-F and FriendlySAM on a
//! generated regression problem) and theorem 1 (excess risk of SGD and SAM on noisy least
//! squares against the bound).
pub mod theorem1;
pub mod train;

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use plotters::prelude::{RGBColor, SeriesLabelPosition};
use serde::Serialize;

use crate::error::{check, CliError, Result};
use crate::output::{write_json, Output};
use crate::plot::{self, optimizer_color, Axes, Series};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinregPart {
    /// Training curves and final metrics of SGD, SAM, SSAM-F and FriendlySAM.
    Train,
    /// Theorem 1: excess risk of SGD (η_t = 1/(βt)) and SAM (ρ_t = c/√t) against T.
    Theorem1,
}

#[derive(Args, Debug, Clone)]
pub struct LinregArgs {
    /// Directory the figures and linreg.json are written to (created if missing).
    #[arg(long, default_value = "results/linreg")]
    pub out: PathBuf,
    /// Seed of the data, the shuffles, the Fisher samples and theorem 1's noise.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Which parts to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "train,theorem1")]
    pub parts: Vec<LinregPart>,

    /// Training samples.
    #[arg(long, default_value_t = 1000, allow_negative_numbers = true)]
    pub samples: usize,
    /// Held-out test samples.
    #[arg(long, default_value_t = 250, allow_negative_numbers = true)]
    pub test_samples: usize,
    /// Features d (the model has d weights and a bias).
    #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
    pub features: usize,
    /// Std of the target noise.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub noise: f64,
    /// Epochs of every optimizer.
    #[arg(long, default_value_t = 30, allow_negative_numbers = true)]
    pub epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32, allow_negative_numbers = true)]
    pub batch_size: usize,
    /// Learning rate of the SGD base optimizer.
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    pub lr: f64,
    /// Momentum of the SGD base optimizer, in [0, 1).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub momentum: f64,
    /// ρ of SAM, SSAM-F and FriendlySAM.
    #[arg(long, default_value_t = 0.05, allow_negative_numbers = true)]
    pub rho: f64,
    /// SSAM-F: fraction of coordinates left unperturbed, in [0, 1).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub sparsity: f64,
    /// SSAM-F: samples of the empirical Fisher.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub fisher_samples: usize,
    /// SSAM-F: steps between mask updates.
    #[arg(long, default_value_t = 5, allow_negative_numbers = true)]
    pub mask_interval: u64,

    /// Theorem 1: the largest T (steps).
    #[arg(long, default_value_t = 5000, allow_negative_numbers = true)]
    pub t_max: usize,
    /// Theorem 1: runs (noise seeds) averaged.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    pub theorem_seeds: usize,
    /// Theorem 1: dimension d (X is d × d).
    #[arg(long, default_value_t = 10, allow_negative_numbers = true)]
    pub dim: usize,
    /// Theorem 1: α/β, the spread of the spectrum of XᵀX, in (0, 1].
    #[arg(long, default_value_t = 0.75, allow_negative_numbers = true)]
    pub alpha_ratio: f64,
    /// Theorem 1: noise std σ (Σ = σ²I).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub sigma: f64,
    /// Theorem 1: SAM's ρ_t = c/√t; the theorem asks c ≤ min(√(α/β), 1).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub c: f64,
}

impl LinregArgs {
    pub fn validate(&self) -> Result<()> {
        check::non_empty("parts", &self.parts)?;
        check::count("samples", self.samples, 2, 10_000_000)?;
        check::count("test-samples", self.test_samples, 2, 10_000_000)?;
        check::count("features", self.features, 1, 10_000)?;
        check::non_negative("noise", self.noise)?;
        check::count("epochs", self.epochs, 1, 100_000)?;
        check::count("batch-size", self.batch_size, 1, self.samples).map_err(|_| {
            CliError::invalid(
                "batch-size",
                format!(
                    "{} must lie between 1 and --samples ({})",
                    self.batch_size, self.samples
                ),
            )
        })?;
        check::positive("lr", self.lr)?;
        check::half_open("momentum", self.momentum, 0.0, 1.0)?;
        check::non_negative("rho", self.rho)?;
        check::half_open("sparsity", self.sparsity, 0.0, 1.0)?;
        check::count("fisher-samples", self.fisher_samples, 1, 10_000_000)?;
        check::count("mask-interval", self.mask_interval as usize, 1, 1_000_000)?;
        check::count("t-max", self.t_max, 1, 100_000_000)?;
        check::count("theorem-seeds", self.theorem_seeds, 1, 1_000_000)?;
        check::count("dim", self.dim, 1, 500)?;
        let r = check::finite("alpha-ratio", self.alpha_ratio)?;
        if !(r > 0.0 && r <= 1.0) {
            return Err(CliError::invalid(
                "alpha-ratio",
                format!("{r} must lie in (0, 1]"),
            ));
        }
        check::non_negative("sigma", self.sigma)?;
        check::non_negative("c", self.c)?;
        Ok(())
    }
}

#[derive(Serialize)]
struct FinalRow {
    optimizer: String,
    train_mse: f64,
    train_r2: f64,
    test_mse: f64,
    test_r2: f64,
}

#[derive(Serialize, Default)]
struct LinregSummary {
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    train: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    theorem1: Option<theorem1::Th1Result>,
}

pub fn run(args: &LinregArgs, out: &mut Output) -> Result<()> {
    args.validate()?;
    out.ensure_dir(&args.out)?;
    // A folder in the way of an output file fails the run before the work, not at its end.
    let mut names = vec!["linreg.json"];
    if args.parts.contains(&LinregPart::Train) {
        names.extend(["linreg_curves.png", "linreg_final.png"]);
    }
    if args.parts.contains(&LinregPart::Theorem1) {
        names.push("theorem1_excess_risk.png");
    }
    samkit_train::files::check_output_names(&args.out, &names)?;
    let dir: &Path = &args.out;
    let mut summary = LinregSummary {
        seed: args.seed,
        ..LinregSummary::default()
    };
    if args.parts.contains(&LinregPart::Train) {
        summary.train = Some(run_train(args, dir, out)?);
    }
    if args.parts.contains(&LinregPart::Theorem1) {
        summary.theorem1 = Some(run_theorem1(args, dir, out)?);
    }
    let json = dir.join("linreg.json");
    write_json(&json, &summary)?;
    out.wrote(json);
    Ok(())
}

fn run_train(args: &LinregArgs, dir: &Path, out: &mut Output) -> Result<serde_json::Value> {
    let (train_set, test_set, _, _) = train::generate(
        args.samples,
        args.test_samples,
        args.features,
        args.noise,
        args.seed,
    );
    let p = train::TrainParams {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        momentum: args.momentum,
        rho: args.rho,
        sparsity: args.sparsity,
        fisher_samples: args.fisher_samples,
        mask_interval: args.mask_interval,
    };
    let hist = train::train_all(&p, &train_set, &test_set, args.seed)?;
    out.say(format!(
        "linear regression: {} train / {} test samples, {} features, noise {}; {} epochs, batch {}, lr {}, momentum {}, rho {}",
        args.samples, args.test_samples, args.features, args.noise, args.epochs, args.batch_size, args.lr, args.momentum, args.rho
    ));
    out.say(format!(
        "    {:<12} {:>12} {:>10} {:>12} {:>10}",
        "optimizer", "train MSE", "train R²", "test MSE", "test R²"
    ));
    let finals: Vec<FinalRow> = hist
        .iter()
        .map(|h| FinalRow {
            optimizer: h.optimizer.clone(),
            train_mse: *h.train_mse.last().unwrap_or(&f64::NAN),
            train_r2: *h.train_r2.last().unwrap_or(&f64::NAN),
            test_mse: *h.test_mse.last().unwrap_or(&f64::NAN),
            test_r2: *h.test_r2.last().unwrap_or(&f64::NAN),
        })
        .collect();
    for r in &finals {
        out.say(format!(
            "    {:<12} {:>12.5} {:>10.5} {:>12.5} {:>10.5}",
            r.optimizer, r.train_mse, r.train_r2, r.test_mse, r.test_r2
        ));
    }
    let epochs: Vec<f64> = (1..=args.epochs).map(|e| e as f64).collect();
    let series_of = |pick: &dyn Fn(&train::History) -> &Vec<f64>| -> Vec<Series> {
        hist.iter()
            .map(|h| {
                let pts = epochs
                    .iter()
                    .copied()
                    .zip(pick(h).iter().copied())
                    .collect();
                let s = Series::optimizer(&h.optimizer, pts);
                if args.epochs <= 40 {
                    s.with_markers()
                } else {
                    s
                }
            })
            .collect()
    };
    let curves = dir.join("linreg_curves.png");
    let header = format!(
        "Linear regression, n = {}, d = {}: SGD vs SAM, SSAM-F, FriendlySAM (lr = {}, ρ = {}, batch {})",
        args.samples, args.features, args.lr, args.rho, args.batch_size
    );
    plot::png(&curves, (1400, 580), |root| {
        let body = plot::titled(root, &header, 22)?;
        let panels = body.split_evenly((1, 2));
        let mse_axes =
            Axes::new("Mean MSE loss per epoch (mini-batches)", "epoch", "MSE").integer_x();
        plot::line_chart(&panels[0], &mse_axes, &series_of(&|h| &h.epoch_loss))?;
        let r2_axes = Axes::new("R² on the training set after each epoch", "epoch", "R²")
            .integer_x()
            .legend_at(SeriesLabelPosition::LowerRight);
        plot::line_chart(&panels[1], &r2_axes, &series_of(&|h| &h.train_r2))
    })?;
    out.wrote(curves);
    let names: Vec<String> = finals.iter().map(|r| r.optimizer.clone()).collect();
    let mse: Vec<f64> = finals.iter().map(|r| r.test_mse).collect();
    let r2: Vec<f64> = finals.iter().map(|r| r.test_r2).collect();
    let bars = dir.join("linreg_final.png");
    let header = format!(
        "Final metrics after {} epochs (held-out test set)",
        args.epochs
    );
    plot::png(&bars, (1200, 540), |root| {
        let body = plot::titled(root, &header, 22)?;
        let panels = body.split_evenly((1, 2));
        plot::bar_chart(
            &panels[0],
            "Final MSE",
            "MSE",
            &names,
            &mse,
            RGBColor(214, 39, 40),
        )?;
        plot::bar_chart(
            &panels[1],
            "Final R²",
            "R²",
            &names,
            &r2,
            RGBColor(44, 160, 44),
        )
    })?;
    out.wrote(bars);
    Ok(serde_json::json!({
        "params": p,
        "samples": args.samples,
        "test_samples": args.test_samples,
        "features": args.features,
        "noise": args.noise,
        "final": finals,
        "history": hist,
    }))
}

/// What the figure says about its dashed bounds: they are the theorem's leading terms only.
pub const BOUND_NOTE: &str =
    "Dashed: the bound without its O(ln T / T) term, which the measured risk may cross at small T";

fn run_theorem1(args: &LinregArgs, dir: &Path, out: &mut Output) -> Result<theorem1::Th1Result> {
    let c_max = args.alpha_ratio.sqrt().min(1.0);
    if args.c > c_max {
        eprintln!(
            "warning: --c {} exceeds min(√(α/β), 1) = {c_max:.4}: outside theorem 1's assumptions",
            args.c
        );
    }
    let p = theorem1::Th1Params {
        dim: args.dim,
        alpha_ratio: args.alpha_ratio,
        sigma: args.sigma,
        c: args.c,
        t_max: args.t_max,
        seeds: args.theorem_seeds,
    };
    let r = theorem1::run(&p, args.seed)?;
    out.say(format!(
        "theorem 1: d = {}, spectrum of XᵀX in [{:.3}, {:.3}], σ = {}, Tr(XᵀXΣ) = {:.4}, SAM ρ_t = {}/√t, mean of {} runs",
        p.dim, r.alpha, r.beta, p.sigma, r.trace_xtx_sigma, p.c, p.seeds
    ));
    out.say(format!(
        "    {:>7} {:>13} {:>13} {:>13} {:>13} {:>13}",
        "T", "SGD mean", "SGD exact E", "Tr/(2T)", "SAM mean", "SAM bound"
    ));
    for i in 0..r.t.len() {
        out.say(format!(
            "    {:>7} {:>13.4e} {:>13.4e} {:>13.4e} {:>13.4e} {:>13.4e}",
            r.t[i], r.sgd_mean[i], r.sgd_expected[i], r.sgd_bound[i], r.sam_mean[i], r.sam_bound[i]
        ));
    }
    out.say(format!("    ({BOUND_NOTE}.)"));
    let t: Vec<f64> = r.t.iter().map(|&t| t as f64).collect();
    let zip = |v: &[f64], scale_by_t: bool| -> Vec<(f64, f64)> {
        t.iter()
            .zip(v)
            .map(|(&t, &y)| (t, if scale_by_t { t * y } else { y }))
            .collect()
    };
    let series = |scaled: bool| {
        vec![
            Series::line(
                "SGD, η = 1/(βt): mean excess risk",
                optimizer_color("sgd"),
                zip(&r.sgd_mean, scaled),
            )
            .with_markers(),
            Series::line(
                format!("SAM, ρ = {}/√t: mean excess risk", p.c),
                optimizer_color("sam"),
                zip(&r.sam_mean, scaled),
            )
            .with_markers(),
            Series::line(
                "SGD: exact expectation",
                RGBColor(31, 119, 180),
                zip(&r.sgd_expected, scaled),
            ),
            Series::line(
                "Tr(XᵀXΣ)/(2T)",
                RGBColor(0, 0, 0),
                zip(&r.sgd_bound, scaled),
            )
            .dashed(),
            Series::line(
                "Tr(XᵀXΣ)/(2T) + βc²H(T)/(2T) (no O(ln T / T) term)",
                RGBColor(214, 39, 40),
                zip(&r.sam_bound, scaled),
            )
            .dashed(),
        ]
    };
    let header = format!(
        "Theorem 1 on noisy least squares: d = {}, spectrum of XᵀX in [{:.2}, {:.2}], σ = {}, mean of {} runs",
        p.dim, r.alpha, r.beta, p.sigma, p.seeds
    );
    let left = Axes::new(
        "Excess risk against T (log-log)",
        "T (steps)",
        "excess risk E L(w) − L(w*)",
    )
    .log_log();
    let mut right = Axes::new(
        "The same times T: the constants of the 1/T rate",
        "T (steps)",
        "T × excess risk",
    )
    .legend_at(SeriesLabelPosition::LowerRight);
    right.x_log = true;
    let file = dir.join("theorem1_excess_risk.png");
    plot::png(&file, (1500, 650), |root| {
        let body = plot::titled(root, &header, 22)?;
        let body = plot::titled(&body, BOUND_NOTE, 17)?;
        let panels = body.split_evenly((1, 2));
        plot::line_chart(&panels[0], &left, &series(false))?;
        plot::line_chart(&panels[1], &right, &series(true))
    })?;
    out.wrote(file);
    Ok(r)
}
