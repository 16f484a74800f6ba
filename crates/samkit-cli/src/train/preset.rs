//! `--preset-survey`: the survey's table-1 setup (shared/seed/sam-survey.ru.md, "Настройка
//! экспериментов", lines 603-611, and figure 9a's caption for momentum and weight decay), the
//! flags that depart from it, and the estimate of a run's time printed before it starts.
use std::sync::Arc;
use std::time::Instant;

use samkit_core::Rule;
use samkit_data::{Dataset, Normalize};
use samkit_train::engine::Engine;
use samkit_train::RunConfig;

use super::args::{BaseKind, DataSource, RunArgs, ScheduleKind};
use super::cmd::MakeTrainer;
use crate::error::Result;
use crate::output::Output;

/// ResNet-18 of the standard width (11.2M parameters).
pub const WIDTH: usize = 64;
/// "ResNet-18, 80 эпох" (table 1's title).
pub const EPOCHS: u32 = 80;
/// "Batch size = 128".
pub const BATCH: usize = 128;
/// "Шаг обучения η = 0.1".
pub const LR: f32 = 0.1;
/// "с уменьшением в 0.1× на 50-м и 75-м эпизодах": the epochs of the decay, of [`EPOCHS`].
pub const MILESTONES: [u64; 2] = [50, 75];
/// The decay factor at each milestone.
pub const GAMMA: f32 = 0.1;
/// Figure 9a's caption: "momentum=0.9, weight_decay=5e-4" (the same hyperparameters).
pub const MOMENTUM: f32 = 0.9;
pub const WEIGHT_DECAY: f32 = 5e-4;
/// "Радиус возмущения ρ = 0.05 для всех методов" (of table 1: SAM, FriendlySAM, SSAM-F, SSAM-D;
/// each of them defaults to it; rules outside table 1 keep their own ρ).
pub const RHO: f32 = 0.05;
/// "по n_s = 256 случайным образцам".
pub const FISHER_SAMPLES: usize = 256;
/// "каждые K = 5 итераций" (SSAM-F) and "каждые K = 5 шагов" (SSAM-D).
pub const MASK_INTERVAL: u64 = 5;
/// SSAM-D: "20% наименьших градиентов ... случайно 20% нулевых параметров".
pub const DROP_RATE: f32 = 0.2;
/// The survey does not give the sparsity; docs/ALGORITHMS.md's default (Sparse SAM's `s`).
pub const SPARSITY: f32 = 0.5;
/// "повтор 4 раза — усреднение результатов".
pub const SEEDS: usize = 4;

/// One line naming every setting of the preset, for the output and `--help`.
pub fn describe() -> String {
    format!(
        "the survey's table-1 setup: ResNet-18 width {WIDTH}, {EPOCHS} epochs, batch {BATCH}, \
         SGD lr {LR} momentum {MOMENTUM} weight decay {WEIGHT_DECAY}, ×{GAMMA} at epochs {} and \
         {}, ρ = {RHO}, SSAM-F n_s = {FISHER_SAMPLES} and K = {MASK_INTERVAL}, SSAM-D drop/grow \
         {}% and K = {MASK_INTERVAL}, sparsity {SPARSITY} (ALGORITHMS.md's default; the survey \
         does not give it)",
        MILESTONES[0],
        MILESTONES[1],
        DROP_RATE * 100.0
    )
}

/// The milestones of the preset for a run of `epochs` epochs: the survey's 50 and 75 of 80,
/// scaled to the run (5/8 and 15/16 of it) when `--epochs` shortens it, and those that fall
/// inside the run only (a 1-epoch run has none: a constant rate).
pub fn milestones(epochs: u32) -> Vec<u64> {
    let e = epochs as u64;
    let mut m: Vec<u64> = MILESTONES
        .iter()
        .map(|&x| x * e / EPOCHS as u64)
        .filter(|&x| x > 0 && x < e)
        .collect();
    m.dedup();
    m
}

/// The settings given explicitly that depart from the survey's setup, as `--flag value
/// (survey: value)`: with `--preset-survey` they win (documented in `--help`) and are printed
/// before the run.
pub fn departures(r: &RunArgs) -> Vec<String> {
    let (t, rule, m, d) = (&r.train, &r.rule, &r.model, &r.data);
    let mut out = Vec::new();
    let mut differs = |set: bool, flag: &str, given: String, survey: String| {
        if set {
            out.push(format!("--{flag} {given} (survey: {survey})"));
        }
    };
    differs(
        d.set.data == DataSource::Synthetic,
        "data",
        "synthetic".into(),
        "cifar10, cifar100".into(),
    );
    if let Some(f) = d.set.long_tail {
        differs(true, "long-tail", f.to_string(), "none".into());
    }
    if let Some(n) = d.label_noise {
        differs(n != 0.0, "label-noise", n.to_string(), "none".into());
    }
    differs(
        d.no_augment,
        "no-augment",
        "".into(),
        "crops and flips".into(),
    );
    if let Some(w) = m.width {
        differs(w != WIDTH, "width", w.to_string(), WIDTH.to_string());
    }
    differs(
        m.label_smoothing != 0.0,
        "label-smoothing",
        m.label_smoothing.to_string(),
        "0".into(),
    );
    if let Some(e) = t.epochs {
        differs(e != EPOCHS, "epochs", e.to_string(), EPOCHS.to_string());
    }
    if let Some(b) = t.step.batch {
        differs(b != BATCH, "batch", b.to_string(), BATCH.to_string());
    }
    if let Some(s) = t.steps_per_epoch {
        differs(true, "steps-per-epoch", s.to_string(), "all".into());
    }
    differs(
        t.step.base != BaseKind::Sgd,
        "base",
        format!("{:?}", t.step.base).to_lowercase(),
        "sgd".into(),
    );
    if let Some(lr) = t.step.lr {
        differs(lr != LR, "lr", lr.to_string(), LR.to_string());
    }
    if let Some(mo) = t.step.momentum {
        differs(
            mo != MOMENTUM,
            "momentum",
            mo.to_string(),
            MOMENTUM.to_string(),
        );
    }
    differs(
        t.step.weight_decay != WEIGHT_DECAY,
        "weight-decay",
        t.step.weight_decay.to_string(),
        WEIGHT_DECAY.to_string(),
    );
    differs(t.step.nesterov, "nesterov", "".into(), "off".into());
    if let Some(s) = t.schedule {
        differs(
            s != ScheduleKind::Step,
            "schedule",
            format!("{s:?}").to_lowercase(),
            "step".into(),
        );
    }
    if let Some(ms) = &t.milestones {
        differs(
            ms[..] != MILESTONES[..],
            "milestones",
            format!("{ms:?}"),
            format!("{MILESTONES:?}"),
        );
    }
    differs(
        t.gamma != GAMMA,
        "gamma",
        t.gamma.to_string(),
        GAMMA.to_string(),
    );
    differs(t.warmup != 0, "warmup", t.warmup.to_string(), "0".into());
    if let Some(rho) = rule.rho {
        differs(rho != RHO, "rho", rho.to_string(), RHO.to_string());
    }
    if let Some(n) = rule.fisher_samples {
        differs(
            n != FISHER_SAMPLES,
            "fisher-samples",
            n.to_string(),
            FISHER_SAMPLES.to_string(),
        );
    }
    differs(
        rule.mask_interval != MASK_INTERVAL,
        "mask-interval",
        rule.mask_interval.to_string(),
        MASK_INTERVAL.to_string(),
    );
    differs(
        rule.drop_rate != DROP_RATE,
        "drop-rate",
        rule.drop_rate.to_string(),
        DROP_RATE.to_string(),
    );
    differs(
        rule.drop_cosine,
        "drop-cosine",
        "".into(),
        "constant".into(),
    );
    differs(
        rule.sparsity != SPARSITY,
        "sparsity",
        rule.sparsity.to_string(),
        SPARSITY.to_string(),
    );
    out
}

/// Prints what `--preset-survey` sets and the explicit flags that depart from it.
pub fn announce(r: &RunArgs, out: &mut Output) {
    out.say(format!("--preset-survey: {}", describe()));
    let gone = departures(r);
    if !gone.is_empty() {
        out.say(format!(
            "--preset-survey: flags given explicitly win over the preset; this run departs from the survey's setup in: {}",
            gone.join(", ")
        ));
    }
}

/// Steps timed per configuration: the first is a warm-up (allocations, the first mask) and is
/// not used for the per-step time.
pub const TIMED_STEPS: usize = 3;

/// The timed cost of one configuration.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RunEstimate {
    pub optimizer: String,
    pub dataset: String,
    /// Seconds per training step (the mask update amortised over its interval).
    pub step_seconds: f64,
    pub steps: u64,
    /// Seconds to evaluate the test set once (after every epoch).
    pub eval_seconds: f64,
    pub epochs: u32,
    /// How many times this configuration runs (seeds).
    pub repeats: usize,
}

impl RunEstimate {
    /// Seconds of one run.
    pub fn seconds(&self) -> f64 {
        self.step_seconds * self.steps as f64 + self.eval_seconds * self.epochs as f64
    }
}

/// The mask update interval of a rule with a mask (its cost is paid once per interval).
fn mask_interval(rule: &Rule) -> u64 {
    match rule {
        Rule::Ssam(s) => s.interval.max(1),
        _ => 1,
    }
}

/// Times [`TIMED_STEPS`] steps of `cfg` on a throwaway trainer (the run itself starts from
/// scratch afterwards) and one evaluation of a test batch, and scales them to the run.
pub fn time_config<E: Engine>(
    cfg: &RunConfig,
    train: &Arc<Dataset>,
    test: &Arc<Dataset>,
    norm: Normalize,
    make: &impl MakeTrainer<E>,
    repeats: usize,
) -> Result<RunEstimate> {
    let full = (train.len() / cfg.batch.max(1)).max(1);
    let per_epoch = cfg.steps_per_epoch.map_or(full, |s| s.min(full)) as u64;
    let mut probe = cfg.clone();
    probe.steps_per_epoch = Some(TIMED_STEPS);
    // A one-batch test set keeps the probe's own evaluation cheap; it is timed below.
    let n_test = cfg.batch.min(test.len()).max(1);
    let idx: Vec<usize> = (0..n_test.min(test.len())).collect();
    let small = Arc::new(test.subset(&idx, "estimate"));
    let mut t = make(probe, train.clone(), small.clone(), norm)?;
    let mut logs = Vec::new();
    t.train_epoch(&mut |s| logs.push(s.seconds))?;
    let timed: Vec<_> = if logs.len() > 1 {
        logs[1..].to_vec()
    } else {
        logs.clone()
    };
    let no_mask = timed.iter().map(|p| p.total() - p.mask).sum::<f64>() / timed.len().max(1) as f64;
    // The largest mask update seen (SSAM-F's Fisher, SSAM-D's drop/grow), once per interval.
    let mask = logs.iter().map(|p| p.mask).fold(0.0, f64::max) / mask_interval(&cfg.rule) as f64;
    let started = Instant::now();
    t.evaluate(&small, None)?;
    let eval_batch = started.elapsed().as_secs_f64();
    Ok(RunEstimate {
        optimizer: cfg.optimizer.clone(),
        dataset: cfg.data.data.name().to_string(),
        step_seconds: no_mask + mask,
        steps: per_epoch * cfg.epochs as u64,
        eval_seconds: eval_batch * test.len() as f64 / small.len().max(1) as f64,
        epochs: cfg.epochs,
        repeats,
    })
}

/// A duration for people: `42 s`, `7 min 3 s`, `5 h 12 min`, `3 d 4 h`.
pub fn human(secs: f64) -> String {
    if !secs.is_finite() {
        return "unknown".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// Prints the estimate of every configuration and the total; returns the total in seconds.
pub fn report(estimates: &[RunEstimate], device: &str, out: &mut Output) -> f64 {
    out.say(format!(
        "time ESTIMATE on this device ({device}): {} timed steps of each configuration × its \
         steps, plus the test-set evaluation after every epoch; an estimate, not a measurement \
         (machine load, thermal state and data loading change it):",
        TIMED_STEPS - 1
    ));
    let mut total = 0.0;
    for e in estimates {
        let one = e.seconds();
        total += one * e.repeats as f64;
        out.say(format!(
            "  {:<10} {:<14} {:>8.3} s/step × {} steps + {} evaluation/epoch × {} = {} per run{}",
            e.dataset,
            e.optimizer,
            e.step_seconds,
            e.steps,
            human(e.eval_seconds),
            e.epochs,
            human(one),
            if e.repeats > 1 {
                format!(" × {} seeds", e.repeats)
            } else {
                String::new()
            }
        ));
    }
    out.say(format!("  estimated total: {} (ESTIMATE)", human(total)));
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use samkit_core::{BaseOptimizer, DropRate, MaskKind, Schedule};

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        run: RunArgs,
    }

    fn run_args(argv: &[&str]) -> RunArgs {
        let mut all = vec!["samkit"];
        all.extend(argv);
        Flags::try_parse_from(all).expect("flags parse").run
    }

    #[test]
    fn the_preset_is_exactly_the_survey_table_one_setup_on_the_cpu() {
        let args = run_args(&["--preset-survey", "--data", "cifar10"]);
        assert!(departures(&args).is_empty(), "{:?}", departures(&args));
        for name in ["sam", "friendlysam", "ssam-f", "ssam-d"] {
            let c = args.config(name).expect("a config");
            assert_eq!(c.width, WIDTH, "{name}: the CPU default is not kept");
            assert_eq!(c.epochs, EPOCHS);
            assert_eq!(c.batch, BATCH);
            assert_eq!(c.steps_per_epoch, None);
            assert_eq!(c.label_smoothing, 0.0);
            assert!(c.augment);
            assert_eq!(c.schedule.base_lr, LR);
            assert_eq!(c.schedule.warmup_steps, 0);
            assert_eq!(
                c.schedule.schedule,
                Schedule::Step {
                    milestones: MILESTONES.to_vec(),
                    gamma: GAMMA
                }
            );
            let BaseOptimizer::Sgd(sgd) = &c.base else {
                panic!("{name}: base {:?}", c.base)
            };
            assert_eq!(
                (sgd.lr, sgd.momentum, sgd.weight_decay, sgd.nesterov),
                (LR, MOMENTUM, WEIGHT_DECAY, false)
            );
            match &c.rule {
                Rule::Sam(r) => assert_eq!((r.rho, r.adaptive), (RHO, false)),
                Rule::FriendlySam(r) => assert_eq!(r.rho, RHO),
                Rule::Ssam(r) => {
                    assert_eq!(
                        (r.rho, r.sparsity, r.interval),
                        (RHO, SPARSITY, MASK_INTERVAL)
                    );
                    match &r.mask {
                        MaskKind::Fisher { samples } => assert_eq!(*samples, FISHER_SAMPLES),
                        MaskKind::Dynamic { drop, .. } => {
                            assert_eq!(*drop, DropRate::Constant { rate: DROP_RATE })
                        }
                        other => panic!("{name}: mask {other:?}"),
                    }
                }
                other => panic!("{name}: rule {other:?}"),
            }
        }
        // Without the preset the CPU defaults stay (n_s = 128, width 16 on CIFAR).
        let plain = run_args(&["--data", "cifar10"]).config("ssam-f").unwrap();
        assert_eq!(plain.width, 16);
        let Rule::Ssam(r) = &plain.rule else { panic!() };
        assert_eq!(r.mask, MaskKind::Fisher { samples: 128 });
    }

    #[test]
    fn explicit_flags_win_over_the_preset_and_are_listed() {
        let args = run_args(&[
            "--preset-survey",
            "--epochs",
            "8",
            "--width",
            "4",
            "--fisher-samples",
            "32",
            "--rho",
            "0.1",
        ]);
        let c = args.config("ssam-f").unwrap();
        assert_eq!((c.epochs, c.width), (8, 4));
        // The milestones scale with the shorter run: 50/80 and 75/80 of 8 epochs.
        assert_eq!(
            c.schedule.schedule,
            Schedule::Step {
                milestones: vec![5, 7],
                gamma: GAMMA
            }
        );
        let Rule::Ssam(r) = &c.rule else { panic!() };
        assert_eq!((r.rho, &r.mask), (0.1, &MaskKind::Fisher { samples: 32 }));
        let gone = departures(&args);
        for d in [
            "--data synthetic",
            "--epochs 8 (survey: 80)",
            "--width 4 (survey: 64)",
            "--fisher-samples 32 (survey: 256)",
            "--rho 0.1 (survey: 0.05)",
        ] {
            assert!(gone.iter().any(|g| g.starts_with(d)), "{d} not in {gone:?}");
        }
        assert_eq!(gone.len(), 5, "{gone:?}");
    }

    #[test]
    fn the_survey_milestones_scale_with_a_shorter_run() {
        assert_eq!(milestones(EPOCHS), MILESTONES.to_vec());
        assert_eq!(milestones(8), vec![5, 7]);
        assert_eq!(milestones(1), Vec::<u64>::new());
        assert_eq!(milestones(2), vec![1]);
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human(42.4), "42 s");
        assert_eq!(human(423.0), "7 min 3 s");
        assert_eq!(human(5.0 * 3600.0 + 12.0 * 60.0), "5 h 12 min");
        assert_eq!(human(3.0 * 86_400.0 + 4.0 * 3600.0), "3 d 4 h");
        assert_eq!(human(f64::NAN), "unknown");
    }
}
