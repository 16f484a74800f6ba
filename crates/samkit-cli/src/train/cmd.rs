//! `samkit train` (one optimizer, all options, checkpoints and resume) and `samkit compare`
//! (several optimizers on the same data, model and seed: what each costs and what each buys).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use samkit_data::{Dataset, Normalize};

use samkit_train::engine::Engine;
use samkit_train::{
    load_data, EpochLog, Passes, Phases, RunConfig, StepLog, Trainer, TrainerState,
};

use super::args::{Device, RunArgs};
use super::cost_suite::COST_SUITE;
use crate::error::{CliError, Result};
use crate::output::{write_json, Output};
use crate::plot::{self, Axes, Series};
use crate::progress;

#[derive(Args, Debug)]
pub struct TrainCmd {
    /// The optimizer: sgd, sam, sam-adaptive, asam, friendlysam, ssam-f, ssam-d, imbsam,
    /// gsam, looksam, and the cheaper second passes ssam-l, esam, sam-on, rst, eg-sam and
    /// og-sam (EG-SAM and OG-SAM are reconstructed: the paper's equations were not
    /// available; see docs/ALGORITHMS.md).
    #[arg(long, default_value = "sam")]
    pub optimizer: String,
    #[command(flatten)]
    pub run: RunArgs,
    /// Output folder: steps.jsonl, epochs.csv, summary.json, checkpoint/ [default:
    /// results/train; with --resume, the folder of the resumed run (the checkpoint's parent)].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a checkpoint every this many epochs (and after the last).
    #[arg(long, default_value_t = 1)]
    pub checkpoint_every: u32,
    /// Continue the run saved in this checkpoint folder with its own configuration (data,
    /// model, optimizer, schedule, epochs); the result equals an uninterrupted run.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop after this many epochs of the planned run (its schedule still spans all of
    /// them); `--resume` continues it.
    #[arg(long)]
    pub stop_after: Option<u32>,
}

#[derive(Args, Debug)]
pub struct CompareCmd {
    /// Optimizers to compare, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sgd,sam,asam,friendlysam,ssam-f,ssam-d"
    )]
    pub optimizers: Vec<String>,
    /// A fixed comparison instead of --optimizers. `cost`: what each way of cutting SAM's
    /// second pass costs: sgd, sam, ssam-f, ssam-d, ssam-l (exact), ssam-l-truncated, esam,
    /// sam-on, rst, looksam, mesa and saf (their distillation from the first epoch), with
    /// ms/step, step vs SGD, the time of each phase, pass2/pass1, passes per step and the
    /// saving vs SAM.
    #[arg(long, value_enum, conflicts_with = "optimizers")]
    pub suite: Option<Suite>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Output folder: compare.json, batch_loss.png, accuracy.png, step_cost.png.
    #[arg(long, default_value = "results/compare")]
    pub out: PathBuf,
    /// Train every optimizer this many times, with seeds --seed, --seed + 1, ... (data,
    /// label noise and initialisation all follow the seed); the table and compare.json give
    /// the final test accuracy and loss as mean ± std over them.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// Per-run settings from a TOML file instead of --optimizers: one `[[run]]` table per run
    /// with `optimizer` (required), `name` (the label; default the optimizer) and any of
    /// train's base-optimizer, schedule and rule flags as keys (`base = "adam"`, `lr = 0.005`,
    /// `rho = 0.2`, `adaptive = true`, `weight_decay`, `fisher_samples`, ...). The command
    /// line's flags hold for every run and a table's keys override them; data, model, epochs,
    /// batch and seed stay the command line's. A bad file, table or key exits 2 naming them.
    #[arg(long, value_name = "FILE.toml", conflicts_with_all = ["optimizers", "suite"])]
    pub runs: Option<PathBuf>,
    /// Save each run's final model and optimizer state as a checkpoint folder,
    /// checkpoints/<optimizer or run name>-seed<N>/ under --out, which `train --resume`,
    /// `landscape --checkpoint` and `hessian --checkpoint` read.
    #[arg(long)]
    pub save_checkpoints: bool,
}

/// Most seeds one comparison may run (each one trains every optimizer again).
const MAX_SEEDS: usize = 100;

/// The symmetric label noise `compare` puts on synthetic training labels unless
/// `--label-noise` says otherwise: without it every optimizer reaches 97-100 % and the
/// comparison says nothing (noisy labels are where SAM's robustness is known to show).
pub const COMPARE_SYNTHETIC_LABEL_NOISE: f64 = 0.4;

/// Builds a trainer for a run configuration on one device (`Trainer::new`, `Trainer::cuda`).
pub trait MakeTrainer<E: Engine>:
    Fn(RunConfig, Arc<Dataset>, Arc<Dataset>, Normalize) -> samkit_train::Result<Trainer<E>>
{
}

impl<E: Engine, F> MakeTrainer<E> for F where
    F: Fn(RunConfig, Arc<Dataset>, Arc<Dataset>, Normalize) -> samkit_train::Result<Trainer<E>>
{
}

/// Appends JSON lines to a file, each written through when it is added, so that a crash
/// loses at most the line being written.
struct JsonLines(std::io::BufWriter<std::fs::File>, PathBuf);

impl JsonLines {
    /// A fresh file (`resumed_at: None`), or the log of a run resumed at a checkpoint of step
    /// `s`: its lines of steps before `s` kept and the rest (steps the checkpoint does not
    /// hold, a line torn by a crash) cut, so that the resumed run's log equals an
    /// uninterrupted run's.
    fn open(path: &Path, resumed_at: Option<u64>) -> Result<Self> {
        if let Some(step) = resumed_at {
            let kept = match std::fs::read_to_string(path) {
                Ok(text) => steps_before(&text, step),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(CliError::io(path, e)),
            };
            samkit_train::files::write_atomic(path, kept.as_bytes())?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(resumed_at.is_some())
            .write(true)
            .truncate(resumed_at.is_none())
            .open(path)
            .map_err(|e| CliError::io(path, e))?;
        Ok(JsonLines(std::io::BufWriter::new(f), path.to_path_buf()))
    }

    fn write<T: Serialize>(&mut self, v: &T) -> Result<()> {
        let line = serde_json::to_string(v).map_err(|source| CliError::Json {
            path: self.1.clone(),
            source,
        })?;
        writeln!(self.0, "{line}").map_err(|e| CliError::io(&self.1, e))?;
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        self.0.flush().map_err(|e| CliError::io(&self.1, e))
    }
}

/// The lines of a step log whose `step` is before `step`, in order; the log ends at the
/// first line that is not a complete record (a crash tore it).
fn steps_before(text: &str, step: u64) -> String {
    let mut kept = String::new();
    for line in text.split_inclusive('\n') {
        let record = line
            .strip_suffix('\n')
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        match record.and_then(|r| r.get("step").and_then(|s| s.as_u64())) {
            Some(s) if s < step => kept += line,
            _ => break,
        }
    }
    kept
}

/// `epochs.csv`: one line per epoch, counted from 1 as on the console; head/tail accuracy
/// columns are empty for a run that does not report them (per-class accuracy is in
/// `summary.json`).
fn epochs_csv(path: &Path, history: &[EpochLog]) -> Result<()> {
    let mut s = String::from(
        "epoch,steps,train_loss,test_loss,test_accuracy,skipped_steps,pass1_s,perturb_s,pass2_s,update_s,mask_s,distill_s,images_per_s,head_accuracy,tail_accuracy\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    for e in history {
        let p = &e.step_seconds;
        s += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            e.epoch + 1,
            e.steps,
            e.train_loss,
            e.test_loss,
            e.test_accuracy,
            e.skipped_steps,
            p.pass1,
            p.perturb,
            p.pass2,
            p.update,
            p.mask,
            p.distill,
            e.images_per_second,
            opt(e.head_accuracy),
            opt(e.tail_accuracy)
        );
    }
    Ok(samkit_train::files::write_atomic(path, s.as_bytes())?)
}

fn epoch_line(name: &str, e: &EpochLog) -> String {
    format!(
        "{name:>12} epoch {:>3}: train loss {:.4}  test loss {:.4}  test acc {:6.2}%  {:.1} ms/step  {:.0} img/s{}",
        e.epoch + 1,
        e.train_loss,
        e.test_loss,
        100.0 * e.test_accuracy,
        1e3 * e.step_seconds.total(),
        e.images_per_second,
        if e.skipped_steps > 0 {
            format!("  ({} steps skipped: non-finite gradient)", e.skipped_steps)
        } else {
            String::new()
        }
    )
}

/// Trains `trainer` until `epochs` epochs are done, reporting each step and epoch.
fn train_loop<E: Engine>(
    trainer: &mut Trainer<E>,
    epochs: u32,
    out: &mut Output,
    mut on_step: impl FnMut(&StepLog) -> Result<()>,
    mut on_epoch: impl FnMut(&mut Trainer<E>, &EpochLog) -> Result<()>,
) -> Result<()> {
    let name = trainer.cfg.optimizer.clone();
    let per = trainer.steps_per_epoch() as u64;
    let remaining = epochs.saturating_sub(trainer.epoch) as u64;
    let bar = progress::bar(per * remaining, &name);
    let batch = trainer.cfg.batch as f64;
    let mut test_acc = trainer.history.last().map(|e| e.test_accuracy);
    while trainer.epoch < epochs {
        let mut err = None;
        let started = std::time::Instant::now();
        let (mut steps, mut loss_sum) = (0u64, 0.0);
        let log = trainer.train_epoch(&mut |s| {
            bar.inc(1);
            steps += 1;
            loss_sum += s.loss;
            let rate = steps as f64 * batch / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "epoch {} loss {:.3} (mean {:.3}) test acc {} {rate:.0} img/s",
                s.epoch + 1,
                s.loss,
                loss_sum / steps as f64,
                test_acc.map_or("-".into(), |a| format!("{:.1}%", 100.0 * a)),
            ));
            if err.is_none() {
                if let Err(e) = on_step(s) {
                    err = Some(e);
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        test_acc = Some(log.test_accuracy);
        bar.suspend(|| out.say(epoch_line(&name, &log)));
        on_epoch(trainer, &log)?;
    }
    bar.finish_and_clear();
    Ok(())
}

pub fn train(cmd: &TrainCmd, out: &mut Output) -> Result<()> {
    match cmd.run.device {
        Device::Cpu => train_on(cmd, out, Trainer::new),
        Device::Cuda => train_on(cmd, out, Trainer::cuda),
    }
}

fn train_on<E: Engine>(cmd: &TrainCmd, out: &mut Output, make: impl MakeTrainer<E>) -> Result<()> {
    let (cfg, resume_state) = match &cmd.resume {
        Some(dir) => {
            let given = given_run_flags(cmd)?;
            if !given.is_empty() {
                return Err(CliError::invalid(
                    "resume",
                    format!(
                        "a resumed run keeps its saved configuration: drop {}",
                        given
                            .iter()
                            .map(|f| format!("--{f}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            let st = TrainerState::read(dir)?;
            (st.config.clone(), Some(st))
        }
        None => {
            inapplicable(&cmd.run, &[cmd.optimizer.as_str()])?;
            (cmd.run.config(&cmd.optimizer)?, None)
        }
    };
    let out_dir = train_out_dir(cmd);
    // One writer per output folder, taken before anything is written into it.
    out.ensure_dir(&out_dir)?;
    let _lock = samkit_train::files::OutLock::acquire(&out_dir)?;
    samkit_train::limits::check_data(&cfg.data)?;
    let (split, norm) = load_data(&cfg.data, cfg.seed)?;
    out.say(format!("data: {}", split.description));
    say_long_tail(&cfg, &split.train, out);
    let planned = cfg.epochs;
    let epochs = match cmd.stop_after {
        Some(0) => return Err(CliError::invalid("stop-after", "must be >= 1")),
        Some(s) => s.min(planned),
        None => planned,
    };
    let (train, test) = (Arc::new(split.train), Arc::new(split.test));
    if cmd.resume.is_none() && cmd.run.train.preset_survey {
        super::preset::announce(&cmd.run, out);
        let e = super::preset::time_config(&cfg, &train, &test, norm, &make, 1)?;
        super::preset::report(&[e], &format!("{:?}", cmd.run.device), out);
    }
    let mut t = make(cfg, train, test, norm)?;
    out.say(format!("device: {}", t.engine.describe()));
    if let (Some(dir), Some(st)) = (&cmd.resume, resume_state) {
        t.load(dir, st)?;
        out.say(format!(
            "resumed {} after epoch {} (step {})",
            dir.display(),
            t.epoch,
            t.step
        ));
    }
    out.say(format!(
        "training {} ({}) on ResNet-18 width {}: {} parameters, {} steps per epoch, {} epochs",
        t.cfg.optimizer,
        t.cfg.base.name(),
        t.cfg.width,
        t.engine.param_count(),
        t.steps_per_epoch(),
        epochs
    ));
    // A fresh run reports head/tail at its --tau; a resumed one cannot be given --tau (its
    // saved configuration holds only ImbSAM's τ), so another rule's split is the default τ.
    if cmd.resume.is_none() {
        t.set_report_tau(cmd.run.rule.tau);
    }
    say_tail(&t, out);
    let ck = out_dir.join("checkpoint");
    let resumed_at = cmd.resume.as_ref().map(|_| t.step);
    let mut steps = JsonLines::open(&out_dir.join("steps.jsonl"), resumed_at)?;
    let every = cmd.checkpoint_every.max(1);
    train_loop(
        &mut t,
        epochs,
        out,
        |s| steps.write(s),
        |t, e| {
            if (e.epoch + 1) % every == 0 || e.epoch + 1 == epochs || e.epoch + 1 == planned {
                t.save(&ck)?;
            }
            Ok(())
        },
    )?;
    steps.flush()?;
    out.wrote(out_dir.join("steps.jsonl"));
    epochs_csv(&out_dir.join("epochs.csv"), &t.history)?;
    out.wrote(out_dir.join("epochs.csv"));
    write_json(&out_dir.join("summary.json"), &t.history)?;
    out.wrote(out_dir.join("summary.json"));
    out.say(format!("checkpoint: {}", ck.display()));
    Ok(())
}

/// `train`'s default output folder.
const TRAIN_OUT: &str = "results/train";

/// Where `train` writes: `--out`; without it, for `--resume`, the resumed run's own folder (the
/// checkpoint folder's parent, `<out>/checkpoint`), so that its logs continue there; otherwise
/// [`TRAIN_OUT`].
fn train_out_dir(cmd: &TrainCmd) -> PathBuf {
    if let Some(o) = &cmd.out {
        return o.clone();
    }
    match &cmd.resume {
        Some(ck) => {
            // `--resume ck/` names the same folder as `--resume ck`.
            let ck: PathBuf = ck.components().collect();
            match ck.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            }
        }
        None => PathBuf::from(TRAIN_OUT),
    }
}

/// With `--long-tail`: the size of the long-tailed training set and its class counts.
fn say_long_tail(cfg: &RunConfig, train: &Dataset, out: &mut Output) {
    if let Some(f) = cfg.data.long_tail {
        out.say(format!(
            "long-tailed training set (imbalance factor {f}): {}",
            samkit_data::transform::counts_summary(&train.class_counts())
        ));
    }
}

/// ImbSAM's tail (`n_c < τ`) and, when it has none, a loud warning on stderr: every step would
/// then be a plain base-optimizer step. Other runs that report head/tail accuracy (a
/// long-tailed training set) say how many classes they count as the tail.
fn say_tail<E: Engine>(t: &Trainer<E>, out: &mut Output) {
    if let samkit_core::Rule::ImbSam(c) = &t.cfg.rule {
        out.say(format!(
            "{}: {} tail classes (fewer than τ = {} training samples), weight κ = {}",
            t.cfg.optimizer,
            t.tail_classes(),
            c.tau,
            c.kappa
        ));
    } else if let Some(mask) = t.tail_mask() {
        out.say(format!(
            "{}: head/tail test accuracy reported with {} tail classes",
            t.cfg.optimizer,
            mask.iter().filter(|&&x| x).count()
        ));
    }
    if let Some(w) = t.no_tail_warning() {
        eprintln!("warning: {w}");
    }
}

/// The flags of `train` at their defaults, to tell which ones a command line gave.
#[derive(clap::Parser)]
struct Defaults {
    #[command(flatten)]
    run: RunArgs,
}

/// The run-defining flags (everything but `--device`, `--resume`, `--out`, `--stop-after` and
/// `--checkpoint-every`) that `cmd` sets to something other than their defaults, as flag
/// names: a resumed run takes them from its checkpoint, so giving them is a conflict.
fn given_run_flags(cmd: &TrainCmd) -> Result<Vec<String>> {
    use clap::Parser;
    let d = Defaults::try_parse_from(["samkit"])
        .map_err(|e| CliError::Run(format!("the default flags do not parse: {e}")))?
        .run;
    let json = |v: serde_json::Result<serde_json::Value>| {
        v.map_err(|e| CliError::Run(format!("the flags do not serialize: {e}")))
    };
    let r = &cmd.run;
    let pairs = [
        (
            json(serde_json::to_value(&r.data))?,
            json(serde_json::to_value(&d.data))?,
        ),
        (
            json(serde_json::to_value(&r.model))?,
            json(serde_json::to_value(&d.model))?,
        ),
        (
            json(serde_json::to_value(&r.train))?,
            json(serde_json::to_value(&d.train))?,
        ),
        (
            json(serde_json::to_value(&r.rule))?,
            json(serde_json::to_value(&d.rule))?,
        ),
    ];
    let mut given = Vec::new();
    if cmd.optimizer != "sam" {
        given.push("optimizer".to_string());
    }
    for (a, b) in &pairs {
        if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
            for (k, v) in a {
                if b.get(k) != Some(v) {
                    given.push(k.replace('_', "-"));
                }
            }
        }
    }
    let c = &r.cuda;
    for (flag, set) in [
        ("cuda-device", c.cuda_device.is_some()),
        ("tf32", c.tf32),
        ("cudnn-algo", c.cudnn_algo.is_some()),
        ("cudnn-deterministic", c.cudnn_deterministic),
        ("cudnn-workspace-mb", c.cudnn_workspace_mb.is_some()),
    ] {
        if set {
            given.push(flag.to_string());
        }
    }
    Ok(given)
}

/// Refuses flags that do not apply to the run they are given with (they would be ignored
/// silently): `--rho` with only SGD, `--momentum`/`--nesterov` with Adam, `--amsgrad` without
/// it, `--milestones`/`--gamma` without the step schedule, `--data-dir` with synthetic data and
/// `--train-size`/`--test-size` with CIFAR; and a step schedule whose default milestones the
/// run is too short for.
pub(crate) fn inapplicable(r: &RunArgs, optimizers: &[&str]) -> Result<()> {
    use super::args::{BaseKind, DataSource, ScheduleKind};
    use clap::Parser;
    let d = Defaults::try_parse_from(["samkit"])
        .map_err(|e| CliError::Run(format!("the default flags do not parse: {e}")))?
        .run;
    let t = &r.train;
    if r.rule.rho.is_some() && optimizers.iter().all(|o| matches!(*o, "sgd" | "base")) {
        return Err(CliError::invalid(
            "rho",
            "does not apply to --optimizer sgd, which has no perturbation",
        ));
    }
    let base = format!("{:?}", t.step.base).to_lowercase();
    match t.step.base {
        BaseKind::Adam | BaseKind::Adamw => {
            for (flag, set) in [
                ("momentum", t.step.momentum.is_some()),
                ("nesterov", t.step.nesterov),
            ] {
                if set {
                    return Err(CliError::invalid(
                        flag,
                        format!("does not apply to --base {base} (only to sgd and rmsprop)"),
                    ));
                }
            }
        }
        BaseKind::Sgd | BaseKind::Rmsprop => {
            if t.step.amsgrad {
                return Err(CliError::invalid(
                    "amsgrad",
                    format!("does not apply to --base {base} (only to adam and adamw)"),
                ));
            }
            if t.step.base == BaseKind::Rmsprop && t.step.nesterov {
                return Err(CliError::invalid(
                    "nesterov",
                    "does not apply to --base rmsprop (only to sgd)",
                ));
            }
        }
    }
    let step = t
        .schedule
        .map_or(t.preset_survey, |s| s == ScheduleKind::Step);
    if !step {
        let gamma_given = t.gamma.to_bits() != d.train.gamma.to_bits();
        for (flag, set) in [
            ("milestones", t.milestones.is_some()),
            ("gamma", gamma_given),
        ] {
            if set {
                return Err(CliError::invalid(flag, "only applies with --schedule step"));
            }
        }
    } else if t.milestones.is_none() && !t.preset_survey {
        let epochs = t.epochs.unwrap_or(d.train.epochs.unwrap_or(4)) as u64;
        let (a, b) = ((epochs * 5) / 8, (epochs * 15) / 16);
        if a == 0 || a >= b {
            return Err(CliError::invalid(
                "milestones",
                format!(
                    "--schedule step over {epochs} epochs needs --milestones (the epochs at \
                     which the rate is multiplied by --gamma): the default ones, 5/8 and 15/16 \
                     of the run, do not fit in {epochs} epochs"
                ),
            ));
        }
    }
    match r.data.set.data {
        DataSource::Synthetic => {
            if r.data.set.data_dir.is_some() {
                return Err(CliError::invalid(
                    "data-dir",
                    "only applies with --data cifar10 or cifar100",
                ));
            }
        }
        DataSource::Cifar10 | DataSource::Cifar100 => {
            for (flag, set) in [
                ("train-size", r.data.set.train_size != d.data.set.train_size),
                ("test-size", r.data.set.test_size != d.data.set.test_size),
            ] {
                if set {
                    return Err(CliError::invalid(
                        flag,
                        "only applies with --data synthetic (CIFAR has its own sizes)",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `compare --suite`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// The cost reducers of SAM's second pass side by side (issue 11).
    Cost,
}

/// MESA's and SAF's first distillation epoch in the cost suite when `--distill-start` is not
/// given: the first, so that a run of a few epochs measures their term.
const COST_SUITE_DISTILL_START: u32 = 0;

/// The label of SSAM-L with `--pass2 truncated` in the cost suite.
const SSAM_L_TRUNCATED: &str = "ssam-l-truncated";

/// The configurations a comparison trains, each validated before any training starts.
fn compare_configs(cmd: &CompareCmd) -> Result<Vec<RunConfig>> {
    if let Some(file) = &cmd.runs {
        return super::runs::configs(file, &cmd.run, inapplicable);
    }
    let Some(Suite::Cost) = cmd.suite else {
        return cmd
            .optimizers
            .iter()
            .map(|o| cmd.run.config_among(o, &cmd.optimizers))
            .collect();
    };
    if cmd.run.rule.pass2.is_some() {
        return Err(CliError::invalid(
            "pass2",
            "--suite cost runs ssam-l with both modes (ssam-l and ssam-l-truncated)",
        ));
    }
    let rows: Vec<&str> = COST_SUITE
        .into_iter()
        .filter(|r| {
            let name = if *r == SSAM_L_TRUNCATED { "ssam-l" } else { r };
            super::args::OPTIMIZERS.contains(&name)
        })
        .collect();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r.trim_end_matches("-truncated"))
        .collect();
    rows.iter()
        .zip(&names)
        .map(|(&row, name)| {
            let mut cfg = cmd.run.config_among(name, &names)?;
            if row == SSAM_L_TRUNCATED {
                cfg.optimizer = row.to_string();
                cfg.pass2 = samkit_train::Pass2Mode::Truncated;
            }
            // MESA's and SAF's term starts at epoch 5 by default, past the end of a short
            // comparison, where their rows would be plain SGD: the suite starts it at once
            // unless --distill-start was given.
            if let (Some(d), None) = (cfg.distill.as_mut(), cmd.run.rule.distill_start) {
                d.start_epoch = COST_SUITE_DISTILL_START;
            }
            Ok(cfg)
        })
        .collect()
}

/// One seed's final result of one optimizer.
#[derive(Serialize)]
struct SeedResult {
    seed: u64,
    test_accuracy: f64,
    test_loss: f64,
    /// Final test accuracy over the head and the tail classes (ImbSAM runs and long-tailed
    /// training sets; `null` otherwise).
    head_accuracy: Option<f64>,
    tail_accuracy: Option<f64>,
    /// Final test accuracy of each class (`null` for a class without test samples).
    class_accuracy: Vec<Option<f64>>,
    /// With `--save-checkpoints`: the folder of this run's final checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint: Option<PathBuf>,
}

/// Mean and sample standard deviation (0 for a single value).
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// One optimizer's outcome in a comparison: curves and step costs of the first seed, final
/// test results of every seed and their mean ± std.
#[derive(Serialize)]
struct CompareRow {
    optimizer: String,
    config: RunConfig,
    epochs: Vec<EpochLog>,
    batch_loss: Vec<f64>,
    /// Mean seconds per step of each phase, over all steps after the first epoch's first
    /// step (warm-up).
    step_seconds: Phases,
    /// Mean network passes per step (all steps), in whole-batch passes.
    passes: Passes,
    /// Measured pass-2 time over pass-1 time (`None` without a second pass).
    pass2_over_pass1: Option<f64>,
    /// `1 − (step − SGD step)/(SAM step − SGD step)`, when the comparison has both.
    saving_vs_sam: Option<f64>,
    /// Mean over seeds.
    final_test_accuracy: f64,
    /// Mean over seeds.
    final_test_loss: f64,
    test_accuracy_mean: f64,
    test_accuracy_std: f64,
    test_loss_mean: f64,
    test_loss_std: f64,
    /// Final test accuracy over the head classes (`n_c ≥ τ`) and over the tail classes
    /// (`n_c < τ`), mean over seeds, for ImbSAM runs and every run on a long-tailed training
    /// set; `null` otherwise.
    head_accuracy_mean: Option<f64>,
    tail_accuracy_mean: Option<f64>,
    /// How many classes are counted as the tail (`null` when no head/tail is reported).
    tail_classes: Option<usize>,
    seeds: Vec<SeedResult>,
}

pub fn compare(cmd: &CompareCmd, out: &mut Output) -> Result<()> {
    match cmd.run.device {
        Device::Cpu => compare_on(cmd, out, Trainer::new),
        Device::Cuda => compare_on(cmd, out, Trainer::cuda),
    }
}

fn compare_on<E: Engine>(
    cmd: &CompareCmd,
    out: &mut Output,
    make: impl MakeTrainer<E>,
) -> Result<()> {
    crate::error::check::non_empty("optimizers", &cmd.optimizers)?;
    let names: Vec<&str> = cmd.optimizers.iter().map(String::as_str).collect();
    // A runs file checks each run's flags against its own optimizer and base.
    if cmd.runs.is_none() {
        inapplicable(&cmd.run, &names)?;
    }
    // Validate every optimizer's flags before any training starts.
    let configs = compare_configs(cmd)?;
    crate::error::check::count("seeds", cmd.seeds, 1, MAX_SEEDS)?;
    let first_seed = cmd.run.train.step.seed;
    let Some(last_seed) = first_seed.checked_add(cmd.seeds as u64 - 1) else {
        return Err(CliError::invalid(
            "seeds",
            "--seed + --seeds - 1 overflows a 64-bit seed",
        ));
    };
    let mut data = cmd.run.data.config();
    if data.data == samkit_train::DataSource::Synthetic && data.label_noise.is_none() {
        data.label_noise = Some(COMPARE_SYNTHETIC_LABEL_NOISE);
        out.say(format!(
            "(compare's default on synthetic data: label noise {COMPARE_SYNTHETIC_LABEL_NOISE} on the training labels, so that optimizers can differ; --label-noise 0 turns it off)"
        ));
    }
    samkit_train::limits::check_data(&data)?;
    out.ensure_dir(&cmd.out)?;
    let _lock = samkit_train::files::OutLock::acquire(&cmd.out)?;
    let mut rows: Vec<CompareRow> = Vec::new();
    for seed in first_seed..=last_seed {
        let (split, norm) = load_data(&data, seed)?;
        out.say(format!("data (seed {seed}): {}", split.description));
        if let Some(cfg) = configs.first() {
            say_long_tail(cfg, &split.train, out);
        }
        let (train, test) = (Arc::new(split.train), Arc::new(split.test));
        for (i, cfg) in configs.iter().enumerate() {
            if seed == first_seed && i == 0 && cmd.run.train.preset_survey {
                super::preset::announce(&cmd.run, out);
                let estimates = configs
                    .iter()
                    .map(|c| {
                        let mut c = c.clone();
                        c.seed = seed;
                        super::preset::time_config(&c, &train, &test, norm, &make, cmd.seeds)
                    })
                    .collect::<Result<Vec<_>>>()?;
                super::preset::report(&estimates, &format!("{:?}", cmd.run.device), out);
            }
            let save = cmd.save_checkpoints.then(|| {
                cmd.out
                    .join("checkpoints")
                    .join(format!("{}-seed{seed}", cfg.optimizer))
            });
            let last = train_one(
                cfg,
                seed,
                &train,
                &test,
                norm,
                &make,
                out,
                rows.is_empty(),
                save.as_deref(),
                cmd.run.rule.tau,
            )?;
            if seed == first_seed {
                rows.push(last);
            } else {
                rows[i].seeds.extend(last.seeds);
            }
        }
    }
    for r in &mut rows {
        let acc: Vec<f64> = r.seeds.iter().map(|s| s.test_accuracy).collect();
        let loss: Vec<f64> = r.seeds.iter().map(|s| s.test_loss).collect();
        (r.test_accuracy_mean, r.test_accuracy_std) = mean_std(&acc);
        (r.test_loss_mean, r.test_loss_std) = mean_std(&loss);
        let head: Option<Vec<f64>> = r.seeds.iter().map(|s| s.head_accuracy).collect();
        let tail: Option<Vec<f64>> = r.seeds.iter().map(|s| s.tail_accuracy).collect();
        r.head_accuracy_mean = head.map(|v| mean_std(&v).0);
        r.tail_accuracy_mean = tail.map(|v| mean_std(&v).0);
        r.final_test_accuracy = r.test_accuracy_mean;
        r.final_test_loss = r.test_loss_mean;
    }
    let step_of = |name: &str| {
        rows.iter()
            .find(|r| r.optimizer == name)
            .map(|r| r.step_seconds.total())
    };
    if let (Some(sgd), Some(sam)) = (step_of("sgd"), step_of("sam")) {
        for r in &mut rows {
            r.saving_vs_sam = saving_vs_sam(r.step_seconds.total(), sgd, sam);
        }
    }
    report(&rows, out);
    let json = cmd.out.join("compare.json");
    write_json(&json, &rows)?;
    out.wrote(json);
    plots(&rows, &cmd.out, out)?;
    Ok(())
}

/// Trains one optimizer's configuration with `seed` and returns its row (its one seed's
/// result in `seeds`; the mean ± std fields are filled once every seed has run).
#[allow(clippy::too_many_arguments)]
fn train_one<E: Engine>(
    cfg: &RunConfig,
    seed: u64,
    train: &Arc<Dataset>,
    test: &Arc<Dataset>,
    norm: Normalize,
    make: &impl MakeTrainer<E>,
    out: &mut Output,
    describe: bool,
    save: Option<&Path>,
    report_tau: usize,
) -> Result<CompareRow> {
    let mut cfg = cfg.clone();
    cfg.seed = seed;
    let epochs = cfg.epochs;
    let mut t = make(cfg, train.clone(), test.clone(), norm)?;
    // Every row of a comparison splits head and tail at the same τ as its ImbSAM row.
    t.set_report_tau(report_tau);
    say_tail(&t, out);
    if describe {
        out.say(format!("device: {}", t.engine.describe()));
        out.say(format!(
            "model: ResNet-18 width {} ({} parameters), batch {}, {} steps/epoch, {} epochs, seed {}",
            t.cfg.width,
            t.engine.param_count(),
            t.cfg.batch,
            t.steps_per_epoch(),
            epochs,
            t.cfg.seed
        ));
    }
    let mut losses = Vec::new();
    let mut sum = Phases::default();
    let mut counted = 0u64;
    let mut passes = Passes::default();
    train_loop(
        &mut t,
        epochs,
        out,
        |s| {
            losses.push(s.loss);
            passes.add(&s.passes);
            if s.step > 0 {
                sum.add(&s.seconds);
                counted += 1;
            }
            Ok(())
        },
        |_, _| Ok(()),
    )?;
    let last = t.history.last().cloned().expect("at least one epoch");
    if let Some(dir) = save {
        t.save(dir)?;
        out.say(format!("checkpoint: {}", dir.display()));
    }
    let step_seconds = sum.scaled(1.0 / counted.max(1) as f64);
    Ok(CompareRow {
        optimizer: t.cfg.optimizer.clone(),
        config: t.cfg.clone(),
        epochs: t.history.clone(),
        passes: passes.mean(losses.len() as u64),
        batch_loss: losses,
        pass2_over_pass1: (step_seconds.pass2 > 0.0 && step_seconds.pass1 > 0.0)
            .then(|| step_seconds.pass2 / step_seconds.pass1),
        step_seconds,
        saving_vs_sam: None,
        final_test_accuracy: last.test_accuracy,
        final_test_loss: last.test_loss,
        test_accuracy_mean: last.test_accuracy,
        test_accuracy_std: 0.0,
        test_loss_mean: last.test_loss,
        test_loss_std: 0.0,
        head_accuracy_mean: last.head_accuracy,
        tail_accuracy_mean: last.tail_accuracy,
        tail_classes: t.tail_mask().map(|m| m.iter().filter(|&&x| x).count()),
        seeds: vec![SeedResult {
            seed,
            test_accuracy: last.test_accuracy,
            test_loss: last.test_loss,
            head_accuracy: last.head_accuracy,
            tail_accuracy: last.tail_accuracy,
            class_accuracy: last.class_accuracy.clone(),
            checkpoint: save.map(Path::to_path_buf),
        }],
    })
}

/// "Saving vs SAM": `1 − (step − sgd)/(sam − sgd)`; `None` when SAM costs no more than SGD
/// (the ratio means nothing) or a time is not finite.
fn saving_vs_sam(step: f64, sgd: f64, sam: f64) -> Option<f64> {
    let span = sam - sgd;
    (span > 0.0 && step.is_finite()).then(|| 1.0 - (step - sgd) / span)
}

fn report(rows: &[CompareRow], out: &mut Output) {
    let base = rows
        .iter()
        .find(|r| r.optimizer == "sgd")
        .map(|r| r.step_seconds.total());
    out.say("");
    out.say(format!(
        "{:<16} {:>14} {:>15} {:>9} {:>7} | {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>11} | {:>14} {:>9}",
        "optimizer",
        "test acc",
        "test loss",
        "ms/step",
        "vs SGD",
        "pass1",
        "perturb",
        "pass2",
        "update",
        "mask",
        "distill",
        "pass2/pass1",
        "passes F/F0/B",
        "save/SAM"
    ));
    for r in rows {
        let p = &r.step_seconds;
        let t = p.total();
        // No ratio to a baseline without a measured time (never NaN× or inf×).
        let over = match base {
            Some(b) if b > 0.0 && t.is_finite() => format!("{:.2}×", t / b),
            _ => "-".to_string(),
        };
        let ratio = r.pass2_over_pass1.map_or("-".into(), |x| format!("{x:.2}"));
        // One seed: the value; several: mean ± sample std over them.
        let (acc, loss) = if r.seeds.len() > 1 {
            (
                format!(
                    "{:.2}±{:.2}%",
                    100.0 * r.test_accuracy_mean,
                    100.0 * r.test_accuracy_std
                ),
                format!("{:.4}±{:.4}", r.test_loss_mean, r.test_loss_std),
            )
        } else {
            (
                format!("{:.2}%", 100.0 * r.test_accuracy_mean),
                format!("{:.4}", r.test_loss_mean),
            )
        };
        let n = &r.passes;
        let passes = format!("{:.2}/{:.2}/{:.2}", n.forward, n.forward_nograd, n.backward);
        let saving = r
            .saving_vs_sam
            .map_or("-".into(), |x| format!("{:.0}%", 100.0 * x));
        out.say(format!(
            "{:<16} {:>14} {:>15} {:>9.1} {:>7} | {:>8.1} {:>8.2} {:>8.1} {:>8.2} {:>8.2} {:>8.2} {:>11} | {:>14} {:>9}",
            r.optimizer,
            acc,
            loss,
            1e3 * t,
            over,
            1e3 * p.pass1,
            1e3 * p.perturb,
            1e3 * p.pass2,
            1e3 * p.update,
            1e3 * p.mask,
            1e3 * p.distill,
            ratio,
            passes,
            saving
        ));
    }
    out.say("(phase columns: mean ms per step; mask = Fisher gradients + top-k for SSAM-F, drop/grow for SSAM-D, averaged over all steps; distill = MESA's teacher forward and EMA update, SAF's logit ring)");
    out.say("(passes: mean per step in whole-batch passes: F forwards with gradient, F0 without (ESAM's SDS, MESA's teacher), B backwards; save/SAM = 1 − (step − SGD step)/(SAM step − SGD step); ssam-l-truncated is an approximation)");
    // ImbSAM and long-tailed runs: head and tail test accuracy (per-class in compare.json).
    if rows.iter().any(|r| r.tail_classes.is_some()) {
        out.say("");
        out.say(format!(
            "{:<16} {:>9} {:>9} {:>12}",
            "optimizer", "head acc", "tail acc", "tail classes"
        ));
        let pct = |v: Option<f64>| v.map_or("-".into(), |x| format!("{:.2}%", 100.0 * x));
        for r in rows {
            out.say(format!(
                "{:<16} {:>9} {:>9} {:>12}",
                r.optimizer,
                pct(r.head_accuracy_mean),
                pct(r.tail_accuracy_mean),
                r.tail_classes.map_or("-".into(), |n| n.to_string())
            ));
        }
        out.say("(head/tail acc: final test accuracy over the test samples of the classes with n_c ≥ τ / n_c < τ training samples; per-class accuracy in compare.json)");
    }
    if let Some(r) = rows.first().filter(|r| r.seeds.len() > 1) {
        let seeds: Vec<String> = r.seeds.iter().map(|s| s.seed.to_string()).collect();
        out.say(format!(
            "(test acc, test loss: mean ± sample std over seeds {}; curves, plots and step costs are the first seed's)",
            seeds.join(", ")
        ));
    }
}

fn smooth(v: &[f64], k: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(v.len());
    let mut acc = 0.0;
    for i in 0..v.len() {
        acc += v[i];
        if i >= k {
            acc -= v[i - k];
        }
        let n = (i + 1).min(k) as f64;
        out.push((i as f64, acc / n));
    }
    out
}

fn plots(rows: &[CompareRow], dir: &Path, out: &mut Output) -> Result<()> {
    plot::init_fonts();
    let k = (rows.first().map_or(1, |r| r.batch_loss.len()) / 40).max(1);
    let loss: Vec<Series> = rows
        .iter()
        .map(|r| Series::optimizer(&r.optimizer, smooth(&r.batch_loss, k)))
        .collect();
    let p = dir.join("batch_loss.png");
    plot::png(&p, (900, 600), |a| {
        plot::line_chart(
            a,
            &Axes::new(
                format!("Batch loss per step (moving mean over {k} steps)"),
                "step",
                "training loss",
            ),
            &loss,
        )
    })?;
    out.wrote(p);
    let acc: Vec<Series> = rows
        .iter()
        .map(|r| {
            Series::optimizer(
                &r.optimizer,
                r.epochs
                    .iter()
                    .map(|e| ((e.epoch + 1) as f64, 100.0 * e.test_accuracy))
                    .collect(),
            )
            .with_markers()
        })
        .collect();
    let p = dir.join("accuracy.png");
    plot::png(&p, (900, 600), |a| {
        plot::line_chart(
            a,
            &Axes::new("Test accuracy per epoch", "epoch", "test accuracy (%)").integer_x(),
            &acc,
        )
    })?;
    out.wrote(p);
    // Mean time per step, phase by phase (the table's phase columns), stacked.
    let costs: Vec<plot::StepCost> = rows
        .iter()
        .map(|r| {
            let p = &r.step_seconds;
            plot::StepCost {
                optimizer: r.optimizer.clone(),
                seconds: vec![p.pass1, p.perturb, p.pass2, p.update, p.mask, p.distill],
            }
        })
        .collect();
    let p = dir.join("step_cost.png");
    plot::png(&p, (900, 600), |a| {
        plot::step_cost_chart(a, "Mean time per step by phase", &plot::STEP_PHASES, &costs)
    })?;
    out.wrote(p);
    Ok(())
}

#[cfg(test)]
mod cost_suite_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        cmd: CompareCmd,
    }

    /// The distillation start of each row of `compare` with `args`, by optimizer name.
    fn starts(args: &[&str]) -> Vec<(String, Option<u32>)> {
        let w = Wrap::try_parse_from(std::iter::once("samkit").chain(args.iter().copied()))
            .expect("the flags parse");
        compare_configs(&w.cmd)
            .expect("the configurations build")
            .into_iter()
            .map(|c| (c.optimizer, c.distill.map(|d| d.start_epoch)))
            .collect()
    }

    #[test]
    fn the_cost_suite_starts_mesa_and_saf_distillation_at_once_unless_given() {
        let suite = starts(&["--suite", "cost"]);
        let distilled: Vec<_> = suite.iter().filter(|(_, s)| s.is_some()).collect();
        assert_eq!(distilled.len(), 2, "{suite:?}");
        for (name, start) in distilled {
            assert!(["mesa", "saf"].contains(&name.as_str()), "{name}");
            assert_eq!(*start, Some(COST_SUITE_DISTILL_START), "{name}");
        }
        for (name, start) in starts(&["--suite", "cost", "--distill-start", "2"]) {
            if ["mesa", "saf"].contains(&name.as_str()) {
                assert_eq!(start, Some(2), "{name}: the user's start is kept");
            }
        }
        // Outside the suite the default (epoch 5) holds.
        let default = samkit_train::distill::DistillConfig::mesa().start_epoch;
        assert_ne!(default, COST_SUITE_DISTILL_START);
        assert_eq!(
            starts(&["--optimizers", "sgd,mesa,saf"]),
            [
                ("sgd".to_string(), None),
                ("mesa".to_string(), Some(default)),
                ("saf".to_string(), Some(default))
            ]
        );
    }
}
