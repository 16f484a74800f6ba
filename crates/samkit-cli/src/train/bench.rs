//! `samkit bench`: what each optimizer of the family costs per step on ResNet-18, phase by
//! phase (pass 1, perturbation, pass 2, restore + update, mask update), on one fixed batch.
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use samkit_data::loader::make_batch;
use serde::Serialize;

use samkit_train::engine::Engine;
use samkit_train::{load_data, Phases, Trainer};

use super::args::{CudaArgs, DatasetArgs, Device, ModelArgs, RuleArgs, RunArgs, StepArgs};
use super::cmd::MakeTrainer;
use crate::error::{check, Result};
use crate::output::{write_json, Output};
use crate::progress;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Optimizers to time, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sgd,sam,asam,friendlysam,ssam-f,ssam-d"
    )]
    pub optimizers: Vec<String>,
    /// Timed steps per optimizer (after one warm-up step).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// The device to time on.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    // The data set alone: the flags that only shape a training run's data (label noise,
    // augmentation) are `train`'s and `compare`'s, and a bench run takes their defaults.
    #[command(flatten)]
    pub data: DatasetArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    // One step's flags; the ones that only shape a training run (epochs, steps per epoch,
    // schedule, milestones, warm-up, the survey preset) take their defaults.
    #[command(flatten)]
    pub step: StepArgs,
    #[command(flatten)]
    pub rule: RuleArgs,
    #[command(flatten)]
    pub cuda: CudaArgs,
    /// Output folder: bench.json.
    #[arg(long, default_value = "results/bench")]
    pub out: PathBuf,
}

/// `train`'s flags at their defaults, the base of a bench run's [`RunArgs`].
#[derive(clap::Parser)]
struct RunDefaults {
    #[command(flatten)]
    run: RunArgs,
}

impl BenchArgs {
    /// The run flags of a bench: its own, and the training-only ones at their defaults.
    pub fn run_args(&self) -> Result<RunArgs> {
        use clap::Parser;
        let mut run = RunDefaults::try_parse_from(["samkit"])
            .map_err(|e| {
                crate::error::CliError::Run(format!("the default flags do not parse: {e}"))
            })?
            .run;
        run.device = self.device;
        run.data.set = self.data.clone();
        run.model = self.model.clone();
        run.train.step = self.step.clone();
        run.rule = self.rule.clone();
        run.cuda = self.cuda.clone();
        Ok(run)
    }
}

#[derive(Serialize)]
struct Row {
    optimizer: String,
    /// Mean seconds per step of each phase (mask updates amortised over the steps).
    mean: Phases,
    /// Median seconds of a whole step.
    median_step: f64,
    steps: usize,
}

pub fn run(a: &BenchArgs, out: &mut Output) -> Result<()> {
    match a.device {
        Device::Cpu => run_on(a, out, Trainer::new),
        Device::Cuda => run_on(a, out, Trainer::cuda),
    }
}

fn run_on<E: Engine>(a: &BenchArgs, out: &mut Output, make: impl MakeTrainer<E>) -> Result<()> {
    check::count("steps", a.steps, 1, 100_000)?;
    check::non_empty("optimizers", &a.optimizers)?;
    let run = a.run_args()?;
    let configs = a
        .optimizers
        .iter()
        .map(|o| run.config(o))
        .collect::<Result<Vec<_>>>()?;
    let (split, norm) = load_data(&run.data.config(), run.train.step.seed)?;
    let (train, test) = (Arc::new(split.train), Arc::new(split.test));
    let batch = configs[0].batch.min(train.len());
    let idx: Vec<usize> = (0..batch).collect();
    let b = make_batch(&train, &idx, None, &norm, (0, 0));
    let bar = progress::bar((configs.len() * (a.steps + 1)) as u64, "bench");
    let mut rows = Vec::new();
    for cfg in configs {
        let mut t = make(cfg, train.clone(), test.clone(), norm)?;
        if rows.is_empty() {
            out.say(format!(
                "ResNet-18 width {} ({} parameters), batch {batch}, {}, {} timed steps after 1 warm-up",
                t.cfg.width,
                t.engine.param_count(),
                t.engine.describe(),
                a.steps
            ));
        }
        t.step(&b)?;
        bar.inc(1);
        let mut sum = Phases::default();
        let mut totals = Vec::new();
        for _ in 0..a.steps {
            let log = t.step(&b)?;
            sum.add(&log.seconds);
            totals.push(log.seconds.total());
            bar.inc(1);
        }
        totals.sort_by(f64::total_cmp);
        rows.push(Row {
            optimizer: t.cfg.optimizer.clone(),
            mean: sum.scaled(1.0 / a.steps as f64),
            median_step: totals[totals.len() / 2],
            steps: a.steps,
        });
    }
    bar.finish_and_clear();
    let sgd = rows
        .iter()
        .find(|r| r.optimizer == "sgd")
        .map(|r| r.mean.total());
    out.say(format!(
        "{:<12} {:>9} {:>8} | {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "optimizer", "ms/step", "vs SGD", "pass1", "perturb", "pass2", "update", "mask", "distill"
    ));
    for r in &rows {
        let m = &r.mean;
        out.say(format!(
            "{:<12} {:>9.1} {:>8} | {:>9.1} {:>9.2} {:>9.1} {:>9.2} {:>9.2} {:>9.2}",
            r.optimizer,
            1e3 * m.total(),
            sgd.map_or("-".into(), |s| format!("{:.2}×", m.total() / s)),
            1e3 * m.pass1,
            1e3 * m.perturb,
            1e3 * m.pass2,
            1e3 * m.update,
            1e3 * m.mask,
            1e3 * m.distill
        ));
    }
    out.say("(mean ms per step; mask updates amortised over the timed steps)");
    std::fs::create_dir_all(&a.out).map_err(|e| crate::error::CliError::io(&a.out, e))?;
    let json = a.out.join("bench.json");
    write_json(&json, &rows)?;
    out.wrote(json);
    Ok(())
}
