//! `samkit table1`: the survey's table 1 (ResNet-18, 80 epochs, CIFAR-10 and CIFAR-100; SAM,
//! FriendlySAM, SSAM-F and SSAM-D, 4 runs each) run with `--preset-survey`, written as markdown
//! and JSON with mean ± std over the seeds beside the survey's numbers.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser};
use serde::{Deserialize, Serialize};

use samkit_train::engine::Engine;
use samkit_train::{load_data, EpochLog, RunConfig, Trainer};

use super::args::{DataSource, Device, RunArgs, OPTIMIZERS};
use super::cmd::MakeTrainer;
use super::preset;
use crate::error::{check, CliError, Result};
use crate::output::{write_json, Output};

/// Where the survey's numbers come from.
pub const SURVEY_SOURCE: &str = "shared/seed/sam-survey.ru.md, lines 618-622: \"Таблица 1: \
    точность на ResNet-18, 80 эпох на разных датасетах\" (top-1 test accuracy, the mean of 4 runs)";

/// The survey's table 1, copied from [`SURVEY_SOURCE`]: (dataset, optimizer, top-1 test
/// accuracy in %).
pub const SURVEY_TABLE1: [(DataSource, &str, f64); 8] = [
    (DataSource::Cifar10, "sam", 92.0),
    (DataSource::Cifar10, "friendlysam", 92.7),
    (DataSource::Cifar10, "ssam-f", 92.1),
    (DataSource::Cifar10, "ssam-d", 91.8),
    (DataSource::Cifar100, "sam", 71.0),
    (DataSource::Cifar100, "friendlysam", 70.3),
    (DataSource::Cifar100, "ssam-f", 73.1),
    (DataSource::Cifar100, "ssam-d", 69.8),
];

/// The survey's accuracy (%) of `optimizer` on `data`, if table 1 has it.
pub fn survey_accuracy(data: DataSource, optimizer: &str) -> Option<f64> {
    SURVEY_TABLE1
        .iter()
        .find(|(d, o, _)| *d == data && *o == optimizer)
        .map(|&(_, _, a)| a)
}

/// Most seeds table1 may run.
const MAX_SEEDS: usize = 100;

#[derive(Args, Debug)]
pub struct Table1Cmd {
    /// Folder with the CIFAR binary files: cifar-10-batches-bin/ and cifar-100-binary/ (or the
    /// files of one of them) [default: $SAMKIT_CIFAR_DIR]. A folder that does not exist is
    /// refused (exit 2).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The datasets, comma-separated: the survey's cifar10,cifar100, or `synthetic` (generated
    /// images, no files needed: a quick check of the pipeline; the survey has no numbers for it).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "cifar10,cifar100"
    )]
    pub data: Vec<DataSource>,
    /// The optimizers (table 1's columns by default; any of `train --optimizer`'s, the others
    /// without a survey number).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sam,friendlysam,ssam-f,ssam-d"
    )]
    pub optimizers: Vec<String>,
    /// Runs per optimizer and dataset, with seeds --seed, --seed + 1, ... (the survey: 4).
    #[arg(long, default_value_t = preset::SEEDS)]
    pub seeds: usize,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Shrink the run for a check (a departure from the survey's 80, printed; milestones scale
    /// to 5/8 and 15/16 of the run).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Shrink the network for a check (the survey: 64).
    #[arg(long)]
    pub width: Option<usize>,
    /// Mini-batch size (the survey: 128).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Stop each epoch after this many steps (a check; the survey: every batch).
    #[arg(long)]
    pub steps_per_epoch: Option<usize>,
    /// SSAM-F's n_s (the survey: 256).
    #[arg(long)]
    pub fisher_samples: Option<usize>,
    /// Synthetic data: training images.
    #[arg(long)]
    pub train_size: Option<usize>,
    /// Synthetic data: test images.
    #[arg(long)]
    pub test_size: Option<usize>,
    /// Where to train (cuda: the survey's 32 runs are a GPU job; the estimate says how long).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// Output folder: table1.md, table1.json, runs/ (one JSON per finished run; a run whose
    /// file holds the same configuration is not trained again, so an interrupted table
    /// continues where it stopped).
    #[arg(long, default_value = "results/table1")]
    pub out: PathBuf,
    /// Print the runs and the time estimate, train nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The `train` flags of one dataset's runs, parsed by the same parser as `train`'s.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    run: RunArgs,
}

impl Table1Cmd {
    /// The CIFAR folder: `--data-dir` or `$SAMKIT_CIFAR_DIR`, which must exist.
    fn cifar_dir(&self) -> Result<Option<PathBuf>> {
        let cifar = self.data.iter().any(|d| *d != DataSource::Synthetic);
        if !cifar {
            if self.data_dir.is_some() {
                return Err(CliError::invalid(
                    "data-dir",
                    "only applies with --data cifar10 or cifar100",
                ));
            }
            return Ok(None);
        }
        let dir =
            match &self.data_dir {
                Some(d) => d.clone(),
                None => match std::env::var_os("SAMKIT_CIFAR_DIR") {
                    Some(d) => PathBuf::from(d),
                    None => return Err(CliError::invalid(
                        "data-dir",
                        "table1 trains on CIFAR-10 and CIFAR-100: give the folder of their binary \
                         files with --data-dir DIR (or $SAMKIT_CIFAR_DIR), or --data synthetic \
                         for a check",
                    )),
                },
            };
        if !dir.is_dir() {
            return Err(CliError::invalid(
                "data-dir",
                format!("{} is not a folder", dir.display()),
            ));
        }
        Ok(Some(dir))
    }

    /// The run flags of `data`: `--preset-survey` and the shrink options given.
    fn run_args(&self, data: DataSource, dir: Option<&Path>) -> Result<RunArgs> {
        let mut argv: Vec<String> = vec!["samkit".into(), "--preset-survey".into()];
        let mut flag = |name: &str, v: String| {
            argv.push(format!("--{name}"));
            argv.push(v);
        };
        flag(
            "device",
            match self.device {
                Device::Cpu => "cpu",
                Device::Cuda => "cuda",
            }
            .into(),
        );
        flag(
            "data",
            match data {
                DataSource::Synthetic => "synthetic",
                DataSource::Cifar10 => "cifar10",
                DataSource::Cifar100 => "cifar100",
            }
            .into(),
        );
        if data != DataSource::Synthetic {
            if let Some(d) = dir {
                flag("data-dir", d.display().to_string());
            }
        }
        for (name, v) in [
            ("epochs", self.epochs.map(|v| v.to_string())),
            ("width", self.width.map(|v| v.to_string())),
            ("batch", self.batch.map(|v| v.to_string())),
            (
                "steps-per-epoch",
                self.steps_per_epoch.map(|v| v.to_string()),
            ),
            ("fisher-samples", self.fisher_samples.map(|v| v.to_string())),
        ] {
            if let Some(v) = v {
                flag(name, v);
            }
        }
        for (name, v) in [
            ("train-size", self.train_size),
            ("test-size", self.test_size),
        ] {
            if let Some(v) = v {
                if data != DataSource::Synthetic {
                    return Err(CliError::invalid(
                        name,
                        "only applies with --data synthetic (CIFAR has its own sizes)",
                    ));
                }
                flag(name, v.to_string());
            }
        }
        Flags::try_parse_from(&argv)
            .map(|f| f.run)
            .map_err(|e| CliError::Run(format!("table1's own flags do not parse: {e}")))
    }
}

/// One finished run (a file of `runs/`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub dataset: String,
    pub optimizer: String,
    pub seed: u64,
    pub test_accuracy: f64,
    pub test_loss: f64,
    pub seconds: f64,
    pub config: RunConfig,
    pub epochs: Vec<EpochLog>,
}

/// One cell of the table: an optimizer on a dataset over its seeds.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub dataset: String,
    pub optimizer: String,
    pub seeds: Vec<u64>,
    /// Test accuracy in %, one per seed.
    pub accuracies: Vec<f64>,
    pub test_accuracy_mean: f64,
    /// Sample standard deviation over the seeds (0 for one seed).
    pub test_accuracy_std: f64,
    pub test_loss_mean: f64,
    pub test_loss_std: f64,
    /// The survey's number (%), when table 1 has this cell.
    pub survey_accuracy: Option<f64>,
    /// Ours minus the survey's, in percentage points.
    pub difference: Option<f64>,
}

/// What table1.json holds.
#[derive(Serialize)]
struct Table1Json<'a> {
    setup: String,
    departures: Vec<String>,
    survey_source: &'static str,
    survey: Vec<(String, &'static str, f64)>,
    cells: &'a [Cell],
    runs: &'a [RunResult],
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

pub fn run(cmd: &Table1Cmd, out: &mut Output) -> Result<()> {
    match cmd.device {
        Device::Cpu => run_on(cmd, out, Trainer::new),
        Device::Cuda => run_on(cmd, out, Trainer::cuda),
    }
}

fn file_name(data: DataSource, optimizer: &str, seed: u64) -> String {
    format!(
        "{}-{optimizer}-seed{seed}.json",
        data.config_name().to_lowercase()
    )
}

trait Names {
    fn config_name(self) -> &'static str;
    fn name(self) -> &'static str;
}

impl Names for DataSource {
    /// The name the output uses (`CIFAR-10`).
    fn name(self) -> &'static str {
        samkit_train::DataSource::from(self).name()
    }

    /// The flag value (`cifar10`), for file names.
    fn config_name(self) -> &'static str {
        match self {
            DataSource::Synthetic => "synthetic",
            DataSource::Cifar10 => "cifar10",
            DataSource::Cifar100 => "cifar100",
        }
    }
}

fn run_on<E: Engine>(cmd: &Table1Cmd, out: &mut Output, make: impl MakeTrainer<E>) -> Result<()> {
    check::non_empty("data", &cmd.data)?;
    check::non_empty("optimizers", &cmd.optimizers)?;
    check::count("seeds", cmd.seeds, 1, MAX_SEEDS)?;
    for (i, d) in cmd.data.iter().enumerate() {
        if cmd.data[..i].contains(d) {
            return Err(CliError::invalid("data", format!("{d:?} is given twice")));
        }
    }
    for (i, o) in cmd.optimizers.iter().enumerate() {
        if !OPTIMIZERS.contains(&o.as_str()) {
            return Err(CliError::invalid(
                "optimizers",
                format!(
                    "unknown optimizer `{o}`; choose from {}",
                    OPTIMIZERS.join(", ")
                ),
            ));
        }
        if cmd.optimizers[..i].contains(o) {
            return Err(CliError::invalid(
                "optimizers",
                format!("`{o}` is given twice"),
            ));
        }
    }
    let Some(last_seed) = cmd.seed.checked_add(cmd.seeds as u64 - 1) else {
        return Err(CliError::invalid(
            "seeds",
            "--seed + --seeds - 1 overflows a 64-bit seed",
        ));
    };
    let dir = cmd.cifar_dir()?;
    // Every configuration is built (and so checked) before anything is timed or trained.
    let mut plans: Vec<(DataSource, RunArgs, Vec<RunConfig>)> = Vec::new();
    for &data in &cmd.data {
        let args = cmd.run_args(data, dir.as_deref())?;
        let cfgs = cmd
            .optimizers
            .iter()
            .map(|o| args.config(o))
            .collect::<Result<Vec<_>>>()?;
        plans.push((data, args, cfgs));
    }
    preset::announce(&plans[0].1, out);
    out.say(format!(
        "runs: {} dataset(s) × {} optimizer(s) × {} seed(s) ({}..={}) = {} runs:",
        plans.len(),
        cmd.optimizers.len(),
        cmd.seeds,
        cmd.seed,
        last_seed,
        plans.len() * cmd.optimizers.len() * cmd.seeds
    ));
    for (data, _, cfgs) in &plans {
        for c in cfgs {
            out.say(format!(
                "  {} {}: ResNet-18 width {}, {} epochs, batch {}, seeds {}..={}; survey {}",
                data.name(),
                c.optimizer,
                c.width,
                c.epochs,
                c.batch,
                cmd.seed,
                last_seed,
                survey_accuracy(*data, &c.optimizer)
                    .map_or("-".to_string(), |a| format!("{a:.1} %"))
            ));
        }
    }
    // The estimate: a few steps of every configuration, on each dataset's first-seed data.
    let mut estimates = Vec::new();
    let mut device = String::new();
    for (_, _, cfgs) in &plans {
        let (split, norm) = load_data(&cfgs[0].data, cmd.seed)?;
        let (train, test) = (Arc::new(split.train), Arc::new(split.test));
        for c in cfgs {
            let mut c = c.clone();
            c.seed = cmd.seed;
            if device.is_empty() {
                let t = make(c.clone(), train.clone(), test.clone(), norm)?;
                device = t.engine.describe();
            }
            estimates.push(preset::time_config(
                &c, &train, &test, norm, &make, cmd.seeds,
            )?);
        }
    }
    preset::report(&estimates, &device, out);
    if cmd.dry_run {
        out.say("(--dry-run: nothing trained)");
        return Ok(());
    }
    let runs_dir = cmd.out.join("runs");
    out.ensure_dir(&runs_dir)?;
    let _lock = samkit_train::files::OutLock::acquire(&cmd.out)?;
    let mut results: Vec<RunResult> = Vec::new();
    for (data, _, cfgs) in &plans {
        for seed in cmd.seed..=last_seed {
            let mut loaded = None;
            for cfg in cfgs {
                let mut cfg = cfg.clone();
                cfg.seed = seed;
                let path = runs_dir.join(file_name(*data, &cfg.optimizer, seed));
                if let Some(done) = finished(&path, &cfg) {
                    out.say(format!(
                        "{} {} seed {seed}: done before ({}), test acc {:.2}%",
                        data.name(),
                        cfg.optimizer,
                        path.display(),
                        100.0 * done.test_accuracy
                    ));
                    results.push(done);
                    continue;
                }
                if loaded.is_none() {
                    let (split, norm) = load_data(&cfg.data, seed)?;
                    out.say(format!("data (seed {seed}): {}", split.description));
                    loaded = Some((Arc::new(split.train), Arc::new(split.test), norm));
                }
                let Some((train, test, norm)) = &loaded else {
                    unreachable!("loaded just above")
                };
                let r = train_run(*data, cfg, train, test, *norm, &make, out)?;
                write_json(&path, &r)?;
                results.push(r);
            }
        }
    }
    let cells = cells(&cmd.data, &cmd.optimizers, &results);
    let md = markdown(&cells, &cmd.optimizers, &plans[0].1);
    out.say("");
    out.say(&md);
    let p = cmd.out.join("table1.md");
    samkit_train::files::write_atomic(&p, md.as_bytes())?;
    out.wrote(p);
    let p = cmd.out.join("table1.json");
    write_json(
        &p,
        &Table1Json {
            setup: preset::describe(),
            departures: preset::departures(&plans[0].1),
            survey_source: SURVEY_SOURCE,
            survey: SURVEY_TABLE1
                .iter()
                .map(|&(d, o, a)| (d.name().to_string(), o, a))
                .collect(),
            cells: &cells,
            runs: &results,
        },
    )?;
    out.wrote(p);
    Ok(())
}

/// The result in `path` if it is a finished run of exactly `cfg` (an interrupted table
/// continues without training it again); anything else is trained anew.
fn finished(path: &Path, cfg: &RunConfig) -> Option<RunResult> {
    let text = std::fs::read_to_string(path).ok()?;
    let r: RunResult = serde_json::from_str(&text).ok()?;
    let same = serde_json::to_value(&r.config).ok()? == serde_json::to_value(cfg).ok()?;
    (same && r.epochs.len() == cfg.epochs as usize).then_some(r)
}

/// Trains one run from scratch and returns its result.
fn train_run<E: Engine>(
    data: DataSource,
    cfg: RunConfig,
    train: &Arc<samkit_data::Dataset>,
    test: &Arc<samkit_data::Dataset>,
    norm: samkit_data::Normalize,
    make: &impl MakeTrainer<E>,
    out: &mut Output,
) -> Result<RunResult> {
    let started = std::time::Instant::now();
    let (optimizer, seed, epochs) = (cfg.optimizer.clone(), cfg.seed, cfg.epochs);
    let mut t = make(cfg, train.clone(), test.clone(), norm)?;
    let bar = crate::progress::bar(
        t.steps_per_epoch() as u64 * epochs as u64,
        &format!("{} {optimizer} seed {seed}", data.name()),
    );
    while t.epoch < epochs {
        let log = t.train_epoch(&mut |_| bar.inc(1))?;
        bar.suspend(|| {
            out.say(format!(
                "{} {optimizer} seed {seed} epoch {}/{epochs}: train loss {:.4}  test loss {:.4}  test acc {:.2}%",
                data.name(),
                log.epoch + 1,
                log.train_loss,
                log.test_loss,
                100.0 * log.test_accuracy
            ))
        });
    }
    bar.finish_and_clear();
    let last = t
        .history
        .last()
        .cloned()
        .ok_or_else(|| CliError::Run("a run of at least one epoch has no epoch".into()))?;
    Ok(RunResult {
        dataset: data.name().to_string(),
        optimizer,
        seed,
        test_accuracy: last.test_accuracy,
        test_loss: last.test_loss,
        seconds: started.elapsed().as_secs_f64(),
        config: t.cfg.clone(),
        epochs: t.history.clone(),
    })
}

/// The table's cells in dataset, then optimizer order.
fn cells(data: &[DataSource], optimizers: &[String], runs: &[RunResult]) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &d in data {
        for o in optimizers {
            let mine: Vec<&RunResult> = runs
                .iter()
                .filter(|r| r.dataset == d.name() && &r.optimizer == o)
                .collect();
            let acc: Vec<f64> = mine.iter().map(|r| 100.0 * r.test_accuracy).collect();
            let loss: Vec<f64> = mine.iter().map(|r| r.test_loss).collect();
            let (am, asd) = mean_std(&acc);
            let (lm, lsd) = mean_std(&loss);
            let survey = survey_accuracy(d, o);
            cells.push(Cell {
                dataset: d.name().to_string(),
                optimizer: o.clone(),
                seeds: mine.iter().map(|r| r.seed).collect(),
                accuracies: acc,
                test_accuracy_mean: am,
                test_accuracy_std: asd,
                test_loss_mean: lm,
                test_loss_std: lsd,
                survey_accuracy: survey,
                difference: survey.map(|s| am - s),
            });
        }
    }
    cells
}

/// The table as markdown: a row per dataset, a column per optimizer, each cell ours (mean ±
/// std over seeds) and the survey's.
fn markdown(cells: &[Cell], optimizers: &[String], args: &RunArgs) -> String {
    let mut s = String::from(
        "# Table 1: top-1 test accuracy (%), ResNet-18\n\nEach cell: ours, mean ± sample std \
         over the seeds (n), and the survey's number.\n\n| dataset |",
    );
    for o in optimizers {
        s += &format!(" {o} |");
    }
    s += "\n| --- |";
    for _ in optimizers {
        s += " ---: |";
    }
    s += "\n";
    let mut datasets: Vec<&str> = Vec::new();
    for c in cells {
        if !datasets.contains(&c.dataset.as_str()) {
            datasets.push(&c.dataset);
        }
    }
    for d in datasets {
        s += &format!("| {d} |");
        for c in cells.iter().filter(|c| c.dataset == d) {
            let survey = c
                .survey_accuracy
                .map_or("survey: -".to_string(), |a| format!("survey {a:.1}"));
            s += &format!(
                " {:.2} ± {:.2} (n={}); {survey} |",
                c.test_accuracy_mean,
                c.test_accuracy_std,
                c.accuracies.len()
            );
        }
        s += "\n";
    }
    s += &format!("\nSetup: {}.\n", preset::describe());
    let gone = preset::departures(args);
    if !gone.is_empty() {
        s += &format!(
            "\n**Departs from the survey's setup** (so not comparable with its numbers): {}.\n",
            gone.join(", ")
        );
    }
    s += &format!("\nSurvey's numbers: {SURVEY_SOURCE}.\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_survey_table_has_every_cell_once() {
        for d in [DataSource::Cifar10, DataSource::Cifar100] {
            for o in ["sam", "friendlysam", "ssam-f", "ssam-d"] {
                let n = SURVEY_TABLE1
                    .iter()
                    .filter(|(x, y, _)| *x == d && *y == o)
                    .count();
                assert_eq!(n, 1, "{d:?} {o}");
            }
        }
        assert_eq!(survey_accuracy(DataSource::Cifar100, "ssam-f"), Some(73.1));
        assert_eq!(survey_accuracy(DataSource::Synthetic, "sam"), None);
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[7.0]), (7.0, 0.0));
    }
}
