//! The training loop: one optimizer of the family over a ResNet-18 on CIFAR-shaped data, with
//! the time of every phase of every step, evaluation each epoch, and checkpoints from which a
//! resumed run continues exactly as an uninterrupted one.
use std::borrow::{Borrow, BorrowMut};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use samkit_core::philox::PhiloxRng;
use samkit_core::{Eval, GradRequest, MaskSchedule, Outcome, Pass, Rule, Ssam};
use samkit_data::loader::{make_batch, BatchIter, EpochPlan};
use samkit_data::{Augment, Batch, Dataset, Normalize};
use samkit_nn::{mean_weights, BnMode, Model, ResNet18, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::distill::{Distiller, TeacherBackend};
use crate::engine::{CpuEngine, CudaEngine, Engine};
use crate::error::{Result, TrainError};
use crate::passes::{Passes, SecondPass};

/// Seconds spent in each phase of a step (or summed over steps).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    /// Forward + backward at the current weights (ImbSAM: head and tail).
    pub pass1: f64,
    /// Norm and perturbation (the optimizer's first step).
    pub perturb: f64,
    /// Forward + backward at the perturbed weights.
    pub pass2: f64,
    /// Restore fused with the base update (or the whole one-pass update).
    pub update: f64,
    /// Mask update: SSAM-F's Fisher gradients and top-k, SSAM-D's drop/grow.
    pub mask: f64,
    /// MESA's and SAF's work around the optimizer step: MESA's teacher forward (without
    /// gradient, at the EMA weights) and its EMA update, SAF's reads and writes of its ring
    /// of logits. 0 for every other rule (and in logs written before it was timed).
    #[serde(default)]
    pub distill: f64,
}

impl Phases {
    pub fn total(&self) -> f64 {
        self.pass1 + self.perturb + self.pass2 + self.update + self.mask + self.distill
    }

    pub fn add(&mut self, o: &Phases) {
        self.pass1 += o.pass1;
        self.perturb += o.perturb;
        self.pass2 += o.pass2;
        self.update += o.update;
        self.mask += o.mask;
        self.distill += o.distill;
    }

    pub fn scaled(&self, f: f64) -> Phases {
        Phases {
            pass1: self.pass1 * f,
            perturb: self.perturb * f,
            pass2: self.pass2 * f,
            update: self.update * f,
            mask: self.mask * f,
            distill: self.distill * f,
        }
    }
}

/// What one step did (a line of the CLI's `steps.jsonl`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLog {
    pub epoch: u32,
    /// The step's index in the run (from 0).
    pub step: u64,
    /// The learning rate of the schedule at this step.
    pub lr: f32,
    /// The batch loss at the weights before the step (ImbSAM: head + κ·tail).
    #[serde(with = "crate::floats")]
    pub loss: f64,
    /// The loss at the perturbed weights, when the step had a second pass.
    #[serde(with = "crate::floats::opt")]
    pub perturbed_loss: Option<f64>,
    /// A gradient had a non-finite value: weights and optimizer state were left as they were.
    pub skipped: bool,
    pub seconds: Phases,
    /// The network passes the step ran, in whole-batch passes (a log written before they were
    /// counted reads as zeros).
    #[serde(default)]
    pub passes: Passes,
}

/// An epoch's summary, with the evaluation on the test set after it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: u32,
    pub steps: u64,
    // Non-finite losses (a diverged run) must read back: crate::floats.
    #[serde(with = "crate::floats")]
    pub train_loss: f64,
    #[serde(with = "crate::floats")]
    pub test_loss: f64,
    #[serde(with = "crate::floats")]
    pub test_accuracy: f64,
    pub skipped_steps: u64,
    /// Mean seconds per step of each phase over the epoch.
    pub step_seconds: Phases,
    #[serde(with = "crate::floats")]
    pub images_per_second: f64,
    /// Test accuracy of each class (`None` for a class without test samples). Empty in a
    /// checkpoint written before it was logged.
    #[serde(default)]
    pub class_accuracy: Vec<Option<f64>>,
    /// Test accuracy over the samples of the head classes (`n_c ≥ τ` training samples), when
    /// the run reports head and tail ([`Trainer::tail_mask`]) and the test set has some.
    #[serde(default)]
    pub head_accuracy: Option<f64>,
    /// Test accuracy over the samples of the tail classes (`n_c < τ`), as `head_accuracy`.
    #[serde(default)]
    pub tail_accuracy: Option<f64>,
}

/// Accuracy of a model on a test set: overall, per class, and over head and tail classes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Accuracy {
    pub loss: f64,
    pub accuracy: f64,
    /// Per class: `None` for a class without samples in the set.
    pub class_accuracy: Vec<Option<f64>>,
    /// `None` when no tail split is reported or the head has no sample in the set.
    pub head_accuracy: Option<f64>,
    /// `None` when no tail split is reported or the tail has no sample in the set.
    pub tail_accuracy: Option<f64>,
}

/// Per-class correct counts and totals turned into per-class accuracy and, with a tail mask,
/// the sample-weighted accuracy of the head and of the tail (the long-tail benchmarks'
/// "many/few-shot" accuracy is over the test samples of those classes).
pub fn class_accuracy(
    correct: &[usize],
    total: &[usize],
    tail: Option<&[bool]>,
) -> (Vec<Option<f64>>, Option<f64>, Option<f64>) {
    let per = correct
        .iter()
        .zip(total)
        .map(|(&c, &n)| (n > 0).then(|| c as f64 / n as f64))
        .collect();
    let group = |want: bool| -> Option<f64> {
        let tail = tail?;
        let (mut c, mut n) = (0usize, 0usize);
        for k in 0..total.len() {
            if tail.get(k).copied().unwrap_or(false) == want {
                c += correct[k];
                n += total[k];
            }
        }
        (n > 0).then(|| c as f64 / n as f64)
    };
    (per, group(false), group(true))
}

/// What a checkpoint's `trainer.json` holds besides the model and optimizer files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    pub config: RunConfig,
    /// Epochs completed.
    pub epoch: u32,
    pub step: u64,
    pub history: Vec<EpochLog>,
}

impl TrainerState {
    /// Reads a checkpoint directory's `trainer.json` (after putting back a checkpoint a crash
    /// during a save left aside, [`crate::checkpoint::recover`]) and checks its values as the
    /// flags that made them were checked: a file that does not parse or holds values no run
    /// can have is [`TrainError::Checkpoint`] (bad input).
    pub fn read(dir: &Path) -> Result<TrainerState> {
        crate::checkpoint::recover(dir)?;
        let path = dir.join("trainer.json");
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::read(&path, e))?;
        let st: TrainerState = serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
            path: path.clone(),
            why: format!("not a trainer state: {e}"),
        })?;
        crate::limits::check_state(&st).map_err(|why| TrainError::Checkpoint { path, why })?;
        Ok(st)
    }
}

/// A ResNet-18 trained with one optimizer of the family on one device ([`CpuEngine`] or
/// [`CudaEngine`]): steps, epochs, evaluation, checkpoints.
///
/// A run is a deterministic function of its [`RunConfig`] and data: the same configuration
/// trains to the same weights, and a trainer restored with [`Trainer::load`] from a checkpoint
/// of [`Trainer::save`] continues bit-identically to the run that wrote it.
pub struct Trainer<E: Engine = CpuEngine> {
    pub cfg: RunConfig,
    /// The model, its parameters and the optimizer.
    pub engine: E,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    norm: Normalize,
    /// ImbSAM's tail classes.
    tail: Vec<bool>,
    /// The classes whose test accuracy is reported as the tail: ImbSAM's own tail, or for
    /// another rule on a long-tailed training set the classes with `n_c < τ` at the default
    /// (or [`Trainer::set_report_tau`]) τ; `None`: no head/tail split is reported.
    report_tail: Option<Vec<bool>>,
    /// Epochs completed.
    pub epoch: u32,
    /// Steps completed (the schedule's position).
    pub step: u64,
    /// The summaries of the completed epochs.
    pub history: Vec<EpochLog>,
    /// MESA's teacher or SAF's buffer (`cfg.distill`), made at the first step or load.
    pub distill: Option<Distiller<E::B>>,
}

impl Trainer<CpuEngine> {
    /// A trainer on the CPU: the model of `cfg` initialised from `cfg.seed`, trained on
    /// `train` and evaluated on `test`, both normalised with `norm` (from [`crate::load_data`]).
    pub fn new(
        cfg: RunConfig,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        norm: Normalize,
    ) -> Result<Self> {
        crate::limits::check_run(&cfg, &train, true)?;
        let cfg = fit_epoch_length(cfg, train.len())?;
        let engine = CpuEngine::new(&cfg, train.classes)?;
        Ok(Self::with_engine(cfg, engine, train, test, norm))
    }
}

impl Trainer<CudaEngine> {
    /// A trainer on the CUDA device and backend settings of `cfg.cuda`; without a device, an
    /// invalid `--device` error.
    pub fn cuda(
        cfg: RunConfig,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        norm: Normalize,
    ) -> Result<Self> {
        crate::limits::check_run(&cfg, &train, false)?;
        let cfg = fit_epoch_length(cfg, train.len())?;
        let engine = CudaEngine::new(&cfg, train.classes)?;
        Ok(Self::with_engine(cfg, engine, train, test, norm))
    }

    /// A trainer on an opened CUDA backend: a chosen device and explicit
    /// [`samkit_nn::cuda::CudaOptions`] (`Cuda::with_options`).
    pub fn cuda_on(
        cuda: samkit_nn::Cuda,
        cfg: RunConfig,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        norm: Normalize,
    ) -> Result<Self> {
        crate::limits::check_run(&cfg, &train, false)?;
        let cfg = fit_epoch_length(cfg, train.len())?;
        let engine = CudaEngine::on(cuda, &cfg, train.classes)?;
        Ok(Self::with_engine(cfg, engine, train, test, norm))
    }
}

/// Full batches per epoch of `cfg` over `train_len` training samples, at most
/// `cfg.steps_per_epoch` ([`Trainer::steps_per_epoch`]).
fn epoch_steps(cfg: &RunConfig, train_len: usize) -> usize {
    let full = (train_len / cfg.batch.max(1)).max(1);
    cfg.steps_per_epoch.map_or(full, |s| s.min(full))
}

/// SSAM-F's official schedule counts `K` in epochs, which the optimizer sees as batches: its
/// rule gets this run's epoch length when it has none (a fresh run), and a rule that names
/// another length (a checkpoint resumed on other data) is refused.
fn fit_epoch_length(mut cfg: RunConfig, train_len: usize) -> Result<RunConfig> {
    let per = epoch_steps(&cfg, train_len) as u64;
    if let Rule::Ssam(c) = &mut cfg.rule {
        if let MaskSchedule::Official { steps_per_epoch } = &mut c.schedule {
            match *steps_per_epoch {
                None => *steps_per_epoch = Some(per),
                Some(k) if k == per => {}
                Some(k) => {
                    return Err(TrainError::invalid(
                        "mask-schedule",
                        format!(
                            "the official schedule's epochs are {k} steps long in the run's \
                             configuration, and this training set gives {per}"
                        ),
                    ))
                }
            }
        }
    }
    Ok(cfg)
}

/// The wall clock once the device has finished what was enqueued before (the start of a span
/// that [`since_settled`] ends).
fn settled<B: TeacherBackend>(model: &mut ResNet18<B>) -> Result<Instant> {
    model.backend_mut().synchronize()?;
    Ok(Instant::now())
}

/// Seconds since `t0` ([`settled`]) once the device has finished the span's work.
fn since_settled<B: TeacherBackend>(model: &mut ResNet18<B>, t0: Instant) -> Result<f64> {
    model.backend_mut().synchronize()?;
    Ok(t0.elapsed().as_secs_f64())
}

fn tensor(b: &Batch) -> Result<Tensor> {
    Tensor::from_vec(b.x.clone(), &[b.labels.len(), 3, 32, 32]).map_err(TrainError::from)
}

impl<E: Engine> Trainer<E> {
    /// A trainer on an engine built for `cfg` (and `train.classes` classes).
    pub fn with_engine(
        cfg: RunConfig,
        engine: E,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        norm: Normalize,
    ) -> Self {
        let counts = train.class_counts();
        let tail = match &cfg.rule {
            Rule::ImbSam(c) => c.tail_classes(&counts),
            _ => vec![false; train.classes],
        };
        // The same rule (core's `ImbSam::tail_classes`, `n_c < τ`) for every run, so that an
        // ImbSAM run and the others of a comparison split the classes alike.
        let report_tail = match &cfg.rule {
            Rule::ImbSam(_) => Some(tail.clone()),
            _ if cfg.data.long_tail.is_some() => {
                Some(samkit_core::ImbSam::default().tail_classes(&counts))
            }
            _ => None,
        };
        Trainer {
            cfg,
            engine,
            train,
            test,
            norm,
            tail,
            report_tail,
            epoch: 0,
            step: 0,
            history: Vec::new(),
            distill: None,
        }
    }

    /// MESA's or SAF's state for the model as it is now (`cfg.distill`), made once. Their term
    /// goes on the base optimizer's one pass: another rule is refused (`--optimizer`).
    fn ensure_distiller(&mut self) -> Result<()> {
        let Some(dc) = self.cfg.distill else {
            return Ok(());
        };
        if self.distill.is_none() {
            if !matches!(self.cfg.rule, Rule::Base) {
                return Err(TrainError::invalid(
                    "optimizer",
                    format!(
                        "{}'s distillation term runs on the base optimizer, not on {}",
                        dc.name(),
                        self.cfg.rule.name()
                    ),
                ));
            }
            let net = self.engine.net();
            let d = Distiller::new(
                dc,
                &mut net.model,
                net.params.borrow(),
                self.train.len(),
                self.train.classes,
            )?;
            self.distill = Some(d);
        }
        Ok(())
    }

    /// The normalisation of the images.
    pub fn normalize(&self) -> Normalize {
        self.norm
    }

    /// The training set.
    pub fn train_set(&self) -> &Arc<Dataset> {
        &self.train
    }

    /// Full batches per epoch, at most `cfg.steps_per_epoch`.
    pub fn steps_per_epoch(&self) -> usize {
        epoch_steps(&self.cfg, self.train.len())
    }

    /// ImbSAM: the number of tail classes (fewer than τ training samples).
    pub fn tail_classes(&self) -> usize {
        self.tail.iter().filter(|&&t| t).count()
    }

    /// The classes reported as the tail in the epoch logs' head/tail accuracy, when the run
    /// reports them (an ImbSAM run, or any run on a long-tailed training set).
    pub fn tail_mask(&self) -> Option<&[bool]> {
        self.report_tail.as_deref()
    }

    /// The τ of the head/tail accuracy of a run whose rule is not ImbSAM (a comparison passes
    /// its `--tau`, so that every row splits the classes as its ImbSAM row); ImbSAM keeps its
    /// own τ. Without a long-tailed training set nothing is reported, whatever τ.
    pub fn set_report_tau(&mut self, tau: usize) {
        if matches!(self.cfg.rule, Rule::ImbSam(_)) || self.report_tail.is_none() {
            return;
        }
        let rule = samkit_core::ImbSam {
            tau,
            ..samkit_core::ImbSam::default()
        };
        self.report_tail = Some(rule.tail_classes(&self.train.class_counts()));
    }

    /// A warning for an ImbSAM run whose training set has no tail class: every batch then
    /// lacks tail samples, and every step is a plain base-optimizer step (the core's
    /// `first_step_split` with `tail = None`), i.e. the run is SGD, not ImbSAM. `None` for
    /// other rules or when there is a tail.
    pub fn no_tail_warning(&self) -> Option<String> {
        let Rule::ImbSam(c) = &self.cfg.rule else {
            return None;
        };
        if self.tail_classes() > 0 {
            return None;
        }
        let counts = self.train.class_counts();
        let min = counts.iter().copied().min().unwrap_or(0);
        Some(format!(
            "ImbSAM has no tail class: every class has at least τ = {} training samples (the \
             smallest has {min}), so no step is perturbed and this run is plain {} (not \
             ImbSAM); raise --tau above {min} or use --long-tail",
            c.tau,
            self.cfg.base.name()
        ))
    }

    /// One step of the optimizer on one batch, each phase timed. The step itself is
    /// [`samkit_core::drive_step`] (through [`Engine::step`]); this is its gradient oracle: the
    /// mean loss of the batch (ImbSAM: the head and tail losses), batch norm updating its
    /// running statistics in pass 1 only, and SSAM-F's Fisher.
    pub fn step(&mut self, b: &Batch) -> Result<StepLog> {
        let lr = self.cfg.schedule.lr_at(self.step);
        self.engine.set_lr(lr)?;
        self.ensure_distiller()?;
        // A skipped step must leave the whole model as it was, batch norm's running statistics
        // included, which pass 1 updates before the gradient is seen to be non-finite.
        let buffers = self.engine.net().model.buffers()?;
        let x = E::stage(&mut self.engine.net().model, tensor(b)?)?;
        let bsz = b.labels.len();
        let labels = &b.labels[..];
        let mean = mean_weights(bsz);
        // ImbSAM: the weights of the head loss `Σ_{i∉tail} ℓ_i / B` and the tail loss.
        let (head, tail) = if matches!(self.cfg.rule, Rule::ImbSam(_)) {
            let w = |want: bool| -> Vec<f32> {
                labels
                    .iter()
                    .map(|&y| {
                        if self.tail[y] == want {
                            1.0 / bsz as f32
                        } else {
                            0.0
                        }
                    })
                    .collect()
            };
            (w(false), w(true))
        } else {
            (Vec::new(), Vec::new())
        };
        let official = matches!(
            self.cfg.rule,
            Rule::Ssam(Ssam {
                schedule: MaskSchedule::Official { .. },
                ..
            })
        );
        let fisher = FisherDraw {
            train: &self.train,
            norm: &self.norm,
            seed: self.cfg.seed,
            batch: self.cfg.batch,
            step: self.step,
            official: official.then_some(self.cfg.augment.then_some(Augment::CIFAR)),
        };
        // SSAM-L's and ESAM's pass 2 (crate::passes), and what every pass costs.
        let second = crate::passes::plan_step(&self.cfg, &mut self.engine)?;
        self.engine.keep_prefix(second.kept_prefix())?;
        let mut passes = Passes::default();
        // MESA/SAF: this step's teacher (MESA: a forward without gradient at the EMA weights,
        // from E_start on) and SAF's copy of the step's logits, taken before the loss.
        let epoch = self.epoch;
        let mut distill_seconds = 0.0;
        let teacher = match self.distill.as_mut() {
            Some(d) => {
                passes.nograd_pass(d.nograd_forwards(epoch) as usize * bsz, bsz);
                let model = &mut self.engine.net().model;
                let t0 = settled(model)?;
                let t = d.teacher(model, &x, &b.indices, epoch)?;
                distill_seconds += since_settled(model, t0)?;
                t
            }
            None => None,
        };
        let record = std::cell::RefCell::new(Vec::new());
        let distill_targets = self
            .distill
            .as_ref()
            .map(|d| d.targets(labels, teacher.as_ref(), d.records().then_some(&record)));
        let mut clean = Vec::new();
        let mut fisher_ran = false;
        let (report, mut seconds) = self.engine.step(|model, req, w, g| {
            let (weights, mode) = match req {
                GradRequest::Fisher { samples } => {
                    fisher_ran = true;
                    passes.grad_pass(samples, bsz, 1.0, 1.0);
                    return fisher.compute::<E>(model, samples, w, g);
                }
                GradRequest::Batch(Pass::Clean) => (&mean, BnMode::Train),
                GradRequest::Batch(Pass::Perturbed) if second != SecondPass::Full => {
                    // A Fisher this step may have moved SSAM-L's mask: the committed one that
                    // `second` starts from is then stale, so pass 2 runs in full.
                    let plan = if fisher_ran { SecondPass::Full } else { second };
                    return crate::passes::second_pass::<E>(
                        model,
                        plan,
                        crate::passes::Pass2Batch {
                            x: &x,
                            host: b,
                            clean: &clean,
                        },
                        w,
                        g,
                        &mut passes,
                    );
                }
                GradRequest::Batch(Pass::Perturbed) => (&mean, BnMode::TrainNoUpdate),
                GradRequest::Head => (&head, BnMode::Train),
                // The tail's clean pass follows the head's, which already updated the
                // running statistics on this batch.
                GradRequest::Tail(_) => (&tail, BnMode::TrainNoUpdate),
            };
            let targets = match (req, distill_targets) {
                (GradRequest::Batch(Pass::Clean), Some(d)) => samkit_nn::Targets::Distill(d),
                _ => labels.into(),
            };
            let l =
                model.forward_backward(w.borrow(), &x, targets, weights, mode, g.borrow_mut())?;
            passes.grad_pass(bsz, bsz, 1.0, 1.0);
            if req == GradRequest::Batch(Pass::Clean) {
                clean = l.per_sample;
            }
            Ok(Eval {
                loss: l.loss,
                samples: l.samples,
            })
        })?;
        // On a device a skipped one-pass step surfaces only in the status.
        let skipped = report.outcome == Outcome::Skipped || self.engine.status()?.last_skipped;
        if skipped {
            self.engine.net().model.set_buffers(&buffers)?;
        }
        // MESA's EMA follows every applied step; SAF keeps the logits of this epoch.
        if let (false, Some(d)) = (skipped, self.distill.as_mut()) {
            let net = self.engine.net();
            let logits = record.borrow();
            let t0 = settled(&mut net.model)?;
            d.after_step(
                &mut net.model,
                net.params.borrow(),
                &b.indices,
                epoch,
                &logits,
            )?;
            distill_seconds += since_settled(&mut net.model, t0)?;
        }
        seconds.distill = distill_seconds;
        let log = StepLog {
            epoch: self.epoch,
            step: self.step,
            lr,
            loss: report.loss,
            perturbed_loss: report.perturbed_loss,
            skipped,
            seconds,
            passes,
        };
        self.step += 1;
        Ok(log)
    }

    /// Mean loss and accuracy over (the first `limit` samples of) a dataset, batch norm in
    /// inference mode.
    pub fn evaluate(&mut self, ds: &Dataset, limit: Option<usize>) -> Result<(f64, f64)> {
        let a = self.evaluate_classes(ds, limit)?;
        Ok((a.loss, a.accuracy))
    }

    /// As [`Trainer::evaluate`], with the accuracy of each class and of the head and tail
    /// ([`Trainer::tail_mask`]).
    pub fn evaluate_classes(&mut self, ds: &Dataset, limit: Option<usize>) -> Result<Accuracy> {
        let n = limit.map_or(ds.len(), |l| l.min(ds.len()));
        let (mut loss, mut correct) = (0.0f64, 0usize);
        let mut class_correct = vec![0usize; ds.classes];
        let mut class_total = vec![0usize; ds.classes];
        let idx: Vec<usize> = (0..n).collect();
        let classes = ds.classes;
        for chunk in idx.chunks(256) {
            let b = make_batch(ds, chunk, None, &self.norm, (0, 0));
            let x = E::stage(&mut self.engine.net().model, tensor(&b)?)?;
            let z = self.engine.net().logits(&x)?;
            let per = samkit_core::loss::smooth_cross_entropy(
                &z,
                &b.labels,
                classes,
                0.0,
                &vec![1.0; b.labels.len()],
                None,
            )?;
            loss += per.iter().map(|&l| l as f64).sum::<f64>();
            for (i, &y) in b.labels.iter().enumerate() {
                let row = &z[i * classes..(i + 1) * classes];
                let arg = (0..classes)
                    .max_by(|&a, &c| row[a].total_cmp(&row[c]).then(c.cmp(&a)))
                    .unwrap_or(0);
                correct += (arg == y) as usize;
                class_correct[y] += (arg == y) as usize;
                class_total[y] += 1;
            }
        }
        let (class_accuracy, head_accuracy, tail_accuracy) =
            class_accuracy(&class_correct, &class_total, self.tail_mask());
        Ok(Accuracy {
            loss: loss / n as f64,
            accuracy: correct as f64 / n as f64,
            class_accuracy,
            head_accuracy,
            tail_accuracy,
        })
    }

    /// Trains one epoch; `on_step` sees every step's log (for JSON lines and progress).
    pub fn train_epoch(&mut self, on_step: &mut dyn FnMut(&StepLog)) -> Result<EpochLog> {
        let plan = EpochPlan {
            batch: self.cfg.batch,
            shuffle_seed: Some(self.cfg.seed),
            epoch: self.epoch,
            augment: self.cfg.augment.then_some(Augment::CIFAR),
            normalize: self.norm,
            drop_last: true,
            prefetch: 2,
        };
        let limit = self.steps_per_epoch();
        let iter = BatchIter::new(self.train.clone(), plan)?;
        let skipped_before = self.engine.status()?.skipped;
        let t0 = Instant::now();
        let mut sum = Phases::default();
        let (mut loss, mut steps, mut images) = (0.0, 0u64, 0usize);
        if self.train.len() < self.cfg.batch {
            return Err(crate::limits::batch_too_large(&self.cfg, self.train.len()));
        }
        for b in iter.take(limit) {
            let log = self.step(&b)?;
            loss += log.loss;
            sum.add(&log.seconds);
            steps += 1;
            images += b.labels.len();
            on_step(&log);
        }
        let wall = t0.elapsed().as_secs_f64();
        let test = self.test.clone();
        let acc = self.evaluate_classes(&test, None)?;
        let log = EpochLog {
            epoch: self.epoch,
            steps,
            train_loss: loss / steps.max(1) as f64,
            test_loss: acc.loss,
            test_accuracy: acc.accuracy,
            skipped_steps: self.engine.status()?.skipped - skipped_before,
            step_seconds: sum.scaled(1.0 / steps.max(1) as f64),
            images_per_second: images as f64 / wall.max(1e-9),
            class_accuracy: acc.class_accuracy,
            head_accuracy: acc.head_accuracy,
            tail_accuracy: acc.tail_accuracy,
        };
        self.epoch += 1;
        self.history.push(log.clone());
        Ok(log)
    }

    /// Writes the checkpoint folder `dir` as one unit ([`crate::checkpoint`]):
    /// `model.safetensors` (PyTorch names), `optimizer.safetensors`, `trainer.json` and last
    /// `manifest.json` go into a fresh folder that then replaces `dir`, so that a crash leaves
    /// the old checkpoint or the new one, never a mix.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        let state = TrainerState {
            config: self.cfg.clone(),
            epoch: self.epoch,
            step: self.step,
            history: self.history.clone(),
        };
        self.ensure_distiller()?;
        let engine = &mut self.engine;
        let distill = &mut self.distill;
        crate::checkpoint::save(dir, self.step, self.epoch, |stage| {
            engine.save(stage)?;
            // MESA's teacher (`teacher.safetensors`) or SAF's buffer (`saf.bin`).
            if let Some(d) = distill.as_mut() {
                d.save(&mut engine.net().model, stage)?;
            }
            let path = stage.join("trainer.json");
            let text = serde_json::to_string_pretty(&state).map_err(|source| TrainError::Json {
                path: path.clone(),
                source,
            })?;
            crate::files::write_atomic(&path, text.as_bytes())
        })
    }

    /// Restores a trainer (built from the checkpoint's own config) to the checkpoint, after
    /// checking that its files belong together: against the manifest, and the optimizer
    /// state's step count and the model's `num_batches_tracked` against `trainer.json`'s
    /// step. A mixed folder is [`TrainError::Checkpoint`] (bad input).
    pub fn load(&mut self, dir: &Path, state: TrainerState) -> Result<()> {
        for f in crate::checkpoint::FILES {
            let p = dir.join(f);
            std::fs::metadata(&p).map_err(|e| TrainError::read(&p, e))?;
        }
        // The files' own checks first: a flipped bit is named by file and tensor there.
        self.engine.load(dir)?;
        crate::checkpoint::verify(dir, state.step, state.epoch)?;
        self.distill = None;
        self.ensure_distiller()?;
        if let Some(d) = self.distill.as_mut() {
            let net = self.engine.net();
            d.load(&mut net.model, dir)?;
        }
        let status = self.engine.status()?;
        let mixed = |why: String| TrainError::Checkpoint {
            path: dir.to_path_buf(),
            why: format!("its files do not belong together: {why}"),
        };
        if status.steps + status.skipped != state.step {
            return Err(mixed(format!(
                "optimizer.safetensors is at step {} ({} applied, {} skipped), trainer.json at \
                 step {}",
                status.steps + status.skipped,
                status.steps,
                status.skipped,
                state.step
            )));
        }
        // Pass 1 of every step counts a batch in each batch norm, except in a skipped step
        // (whose count a checkpoint written before skipped steps were undone still holds).
        for b in self.engine.net().model.buffers()? {
            if let (true, samkit_nn::BufferData::I64(v)) =
                (b.name.ends_with("num_batches_tracked"), &b.data)
            {
                let n = v.first().copied().unwrap_or(-1);
                if n < status.steps as i64 || n > state.step as i64 {
                    return Err(mixed(format!(
                        "model.safetensors has {} = {n}, trainer.json is at step {} ({} \
                         applied)",
                        b.name, state.step, status.steps
                    )));
                }
            }
        }
        self.epoch = state.epoch;
        self.step = state.step;
        self.history = state.history;
        Ok(())
    }
}

/// SSAM-F's empirical Fisher over training images drawn with a stream keyed by the step, so
/// that a resumed run draws the same ones: with replacement and without augmentation (the
/// survey's schedule), or with the official schedule as the official code draws them, without
/// replacement from the shuffled training set with the run's augmentation.
struct FisherDraw<'a> {
    train: &'a Dataset,
    norm: &'a Normalize,
    seed: u64,
    batch: usize,
    step: u64,
    /// The official schedule, with the run's augmentation (`Some(None)`: none).
    official: Option<Option<Augment>>,
}

/// The stream of the Fisher's draws (`^` the step), apart from the other Philox streams.
const FISHER_STREAM: u32 = 0x4649_0000;
/// The seed word of the Fisher's augmentation, apart from the epochs' augmentation keys.
const FISHER_AUGMENT_SEED: u64 = 0x4649_5348_4155_4700;

/// `samples` indices of `0..n` without replacement: the first `samples` of a shuffle (of more
/// than one after another when `samples > n`, as torch's `RandomSampler(num_samples=...)`).
fn draw_without_replacement(rng: &mut PhiloxRng, n: usize, samples: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(samples);
    while out.len() < samples && n > 0 {
        let mut perm: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut perm);
        let take = (samples - out.len()).min(n);
        out.extend_from_slice(&perm[..take]);
    }
    out
}

#[cfg(test)]
mod fisher_draw_tests {
    use super::*;

    #[test]
    fn the_official_fisher_draw_has_no_repeats_within_a_pass() {
        let mut rng = PhiloxRng::new(3, FISHER_STREAM);
        let mut few = draw_without_replacement(&mut rng, 50, 20);
        few.sort_unstable();
        few.dedup();
        assert_eq!(few.len(), 20);
        // More samples than the set: whole shuffles one after another.
        let many = draw_without_replacement(&mut rng, 7, 16);
        assert_eq!(many.len(), 16);
        for pass in many.chunks(7).filter(|c| c.len() == 7) {
            let mut p = pass.to_vec();
            p.sort_unstable();
            assert_eq!(p, (0..7).collect::<Vec<_>>());
        }
        assert!(draw_without_replacement(&mut rng, 0, 4).is_empty());
    }
}

impl FisherDraw<'_> {
    /// `Σ_i (∇ℓ_i)²` over `samples` images at weights `w` into `out`, in sub-batches.
    fn compute<E: Engine>(
        &self,
        model: &mut ResNet18<E::B>,
        samples: usize,
        w: &E::A,
        out: &mut E::A,
    ) -> Result<Eval> {
        let mut rng = PhiloxRng::new(self.seed, FISHER_STREAM ^ self.step as u32);
        let (idx, aug, key) = match self.official {
            Some(aug) => (
                draw_without_replacement(&mut rng, self.train.len(), samples),
                aug,
                (self.seed ^ FISHER_AUGMENT_SEED, self.step as u32),
            ),
            None => (
                (0..samples)
                    .map(|_| rng.below(self.train.len() as u64) as usize)
                    .collect(),
                None,
                (self.seed, 0),
            ),
        };
        E::zero(model, out)?;
        for chunk in idx.chunks(self.batch) {
            let b = make_batch(self.train, chunk, aug, self.norm, key);
            let x = E::stage(model, tensor(&b)?)?;
            model.per_sample_grad_sq(w.borrow(), &x, b.labels[..].into(), out.borrow_mut())?;
        }
        Ok(Eval { loss: 0.0, samples })
    }
}

#[cfg(test)]
mod tests {
    use super::class_accuracy;

    #[test]
    fn class_accuracy_splits_head_and_tail_by_samples() {
        // Class 0: 3 of 4 right; class 1: 1 of 2; class 2: no test sample; class 3: 0 of 1.
        let correct = [3, 1, 0, 0];
        let total = [4, 2, 0, 1];
        let tail = [false, true, true, true];
        let (per, head, tail_acc) = class_accuracy(&correct, &total, Some(&tail));
        assert_eq!(per, vec![Some(0.75), Some(0.5), None, Some(0.0)]);
        assert_eq!(head, Some(0.75));
        // Over the tail's 3 samples, 1 right (not the mean of the classes' accuracies).
        assert_eq!(tail_acc, Some(1.0 / 3.0));
        // Without a tail split nothing is reported for head and tail.
        let (_, head, tail_acc) = class_accuracy(&correct, &total, None);
        assert_eq!((head, tail_acc), (None, None));
        // A tail without test samples has no accuracy.
        let (_, _, tail_acc) = class_accuracy(&correct, &total, Some(&[false, false, true, false]));
        assert_eq!(tail_acc, None);
    }
}
