//! The training loop: one optimizer of the family over a ResNet-18 on CIFAR-shaped data, with
//! the time of every phase of every step, evaluation each epoch, and checkpoints from which a
//! resumed run continues exactly as an uninterrupted one.
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use samkit_core::philox::PhiloxRng;
use samkit_core::{FirstOutcome, Optimizer, Outcome, Rule};
use samkit_data::loader::{make_batch, BatchIter, EpochPlan};
use samkit_data::{Augment, Batch, Dataset, Normalize};
use samkit_nn::{mean_weights, BnMode, Model, ResNet18, ResNetConfig, Tensor};
use serde::{Deserialize, Serialize};

use super::args::RunConfig;
use crate::error::{CliError, Result};

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
}

impl Phases {
    pub fn total(&self) -> f64 {
        self.pass1 + self.perturb + self.pass2 + self.update + self.mask
    }

    pub fn add(&mut self, o: &Phases) {
        self.pass1 += o.pass1;
        self.perturb += o.perturb;
        self.pass2 += o.pass2;
        self.update += o.update;
        self.mask += o.mask;
    }

    pub fn scaled(&self, f: f64) -> Phases {
        Phases {
            pass1: self.pass1 * f,
            perturb: self.perturb * f,
            pass2: self.pass2 * f,
            update: self.update * f,
            mask: self.mask * f,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepLog {
    pub epoch: u32,
    pub step: u64,
    pub lr: f32,
    pub loss: f64,
    pub perturbed_loss: Option<f64>,
    pub skipped: bool,
    pub seconds: Phases,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EpochLog {
    pub epoch: u32,
    pub steps: u64,
    pub train_loss: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub skipped_steps: u64,
    /// Mean seconds per step of each phase over the epoch.
    pub step_seconds: Phases,
    pub images_per_second: f64,
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

pub struct Trainer {
    pub cfg: RunConfig,
    pub model: ResNet18,
    pub params: Vec<f32>,
    pub opt: Optimizer,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    norm: Normalize,
    /// ImbSAM's tail classes.
    tail: Vec<bool>,
    grad: Vec<f32>,
    grad2: Vec<f32>,
    pub epoch: u32,
    pub step: u64,
    pub history: Vec<EpochLog>,
}

fn nn_err(e: samkit_nn::Error) -> CliError {
    CliError::Run(e.to_string())
}

impl Trainer {
    pub fn new(
        cfg: RunConfig,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        norm: Normalize,
    ) -> Result<Self> {
        let mut mc = ResNetConfig::new(train.classes, cfg.width);
        mc.label_smoothing = cfg.label_smoothing;
        let model = ResNet18::cpu(mc).map_err(nn_err)?;
        let params = model.init_params(cfg.seed);
        let opt = Optimizer::new(model.layout().clone(), cfg.rule.clone(), cfg.base.clone())?;
        let tail = match &cfg.rule {
            Rule::ImbSam(c) => c.tail_classes(&train.class_counts()),
            _ => vec![false; train.classes],
        };
        let n = params.len();
        Ok(Trainer {
            cfg,
            model,
            params,
            opt,
            train,
            test,
            norm,
            tail,
            grad: vec![0.0; n],
            grad2: vec![0.0; n],
            epoch: 0,
            step: 0,
            history: Vec::new(),
        })
    }

    pub fn normalize(&self) -> Normalize {
        self.norm
    }

    pub fn train_set(&self) -> &Arc<Dataset> {
        &self.train
    }

    pub fn steps_per_epoch(&self) -> usize {
        let full = (self.train.len() / self.cfg.batch).max(1);
        self.cfg.steps_per_epoch.map_or(full, |s| s.min(full))
    }

    pub fn tail_classes(&self) -> usize {
        self.tail.iter().filter(|&&t| t).count()
    }

    fn tensor(b: &Batch) -> Result<Tensor> {
        Tensor::from_vec(b.x.clone(), &[b.labels.len(), 3, 32, 32]).map_err(nn_err)
    }

    /// SSAM-F's empirical Fisher over `samples` training images (no augmentation), drawn
    /// with a stream keyed by the step, so a resumed run draws the same ones.
    fn fisher(&mut self, samples: usize) -> Result<()> {
        let mut rng = PhiloxRng::new(self.cfg.seed, 0x4649_0000 ^ self.step as u32);
        let idx: Vec<usize> = (0..samples)
            .map(|_| rng.below(self.train.len() as u64) as usize)
            .collect();
        self.grad2.fill(0.0);
        for chunk in idx.chunks(self.cfg.batch) {
            let b = make_batch(&self.train, chunk, None, &self.norm, (self.cfg.seed, 0));
            let x = Self::tensor(&b)?;
            self.model
                .per_sample_grad_sq(&self.params, &x, (&b.labels).into(), &mut self.grad2)
                .map_err(nn_err)?;
        }
        self.opt.set_fisher(&self.grad2)?;
        Ok(())
    }

    /// One step of the optimizer on one batch, each phase timed.
    pub fn step(&mut self, b: &Batch) -> Result<StepLog> {
        let lr = self.cfg.schedule.lr_at(self.step);
        self.opt.set_lr(lr)?;
        let mut sec = Phases::default();
        if let Some(n) = self.opt.needs_fisher() {
            let t = Instant::now();
            self.fisher(n)?;
            self.opt.take_mask_time();
            sec.mask = t.elapsed().as_secs_f64();
        }
        let x = Self::tensor(b)?;
        let bsz = b.labels.len();
        let imb = self.opt.needs_head_tail();
        let t = Instant::now();
        let (loss, tail_w) = if imb {
            let is_tail: Vec<bool> = b.labels.iter().map(|&y| self.tail[y]).collect();
            let w = |want: bool| -> Vec<f32> {
                is_tail
                    .iter()
                    .map(|&t| if t == want { 1.0 / bsz as f32 } else { 0.0 })
                    .collect()
            };
            let (hw, tw) = (w(false), w(true));
            let h = self
                .model
                .forward_backward(
                    &self.params,
                    &x,
                    (&b.labels).into(),
                    &hw,
                    BnMode::Train,
                    &mut self.grad,
                )
                .map_err(nn_err)?;
            let kappa = match &self.cfg.rule {
                Rule::ImbSam(c) => c.kappa as f64,
                _ => 1.0,
            };
            let tl = self
                .model
                .forward_backward(
                    &self.params,
                    &x,
                    (&b.labels).into(),
                    &tw,
                    BnMode::TrainNoUpdate,
                    &mut self.grad2,
                )
                .map_err(nn_err)?;
            (h.loss + kappa * tl.loss, Some((tw, tl.samples)))
        } else {
            let l = self
                .model
                .forward_backward(
                    &self.params,
                    &x,
                    (&b.labels).into(),
                    &mean_weights(bsz),
                    BnMode::Train,
                    &mut self.grad,
                )
                .map_err(nn_err)?;
            (l.loss, None)
        };
        sec.pass1 = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let first = match &tail_w {
            Some((_, n)) => {
                let tail = (*n > 0).then_some(&self.grad2[..]);
                self.opt
                    .first_step_split(&mut self.params[..], &self.grad[..], tail)?
            }
            None => self.opt.first_step(&mut self.params[..], &self.grad[..])?,
        };
        let first_secs = t.elapsed().as_secs_f64();
        let mask_secs = self.opt.take_mask_time().map_or(0.0, |d| d.as_secs_f64());
        sec.mask += mask_secs;
        let mut perturbed_loss = None;
        let skipped = match first {
            FirstOutcome::Perturbed => {
                sec.perturb = first_secs - mask_secs;
                let t = Instant::now();
                let weights = tail_w.map(|(w, _)| w).unwrap_or_else(|| mean_weights(bsz));
                let l2 = self
                    .model
                    .forward_backward(
                        &self.params,
                        &x,
                        (&b.labels).into(),
                        &weights,
                        BnMode::TrainNoUpdate,
                        &mut self.grad2,
                    )
                    .map_err(nn_err);
                let l2 = match l2 {
                    Ok(l) => l,
                    Err(e) => {
                        self.opt.abort(&mut self.params[..])?;
                        return Err(e);
                    }
                };
                perturbed_loss = Some(l2.loss);
                sec.pass2 = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let out = self
                    .opt
                    .second_step(&mut self.params[..], &self.grad2[..])?;
                sec.update = t.elapsed().as_secs_f64();
                out == Outcome::Skipped
            }
            FirstOutcome::Applied => {
                sec.update = first_secs - mask_secs;
                false
            }
            FirstOutcome::Skipped => true,
        };
        let log = StepLog {
            epoch: self.epoch,
            step: self.step,
            lr,
            loss,
            perturbed_loss,
            skipped,
            seconds: sec,
        };
        self.step += 1;
        Ok(log)
    }

    /// Mean loss and accuracy over (the first `limit` samples of) a dataset, batch norm in
    /// inference mode.
    pub fn evaluate(&mut self, ds: &Dataset, limit: Option<usize>) -> Result<(f64, f64)> {
        let n = limit.map_or(ds.len(), |l| l.min(ds.len()));
        let (mut loss, mut correct) = (0.0f64, 0usize);
        let idx: Vec<usize> = (0..n).collect();
        let classes = ds.classes;
        for chunk in idx.chunks(256) {
            let b = make_batch(ds, chunk, None, &self.norm, (0, 0));
            let x = Self::tensor(&b)?;
            let logits = self
                .model
                .forward(&self.params, &x, BnMode::Eval)
                .map_err(nn_err)?;
            let z = logits.as_slice().map_err(nn_err)?;
            let per = samkit_core::loss::smooth_cross_entropy(
                z,
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
            }
        }
        Ok((loss / n as f64, correct as f64 / n as f64))
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
        let iter =
            BatchIter::new(self.train.clone(), plan).map_err(|e| CliError::Run(e.to_string()))?;
        let skipped_before = self.opt.skipped_steps();
        let t0 = Instant::now();
        let mut sum = Phases::default();
        let (mut loss, mut steps, mut images) = (0.0, 0u64, 0usize);
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
        let (test_loss, test_accuracy) = self.evaluate(&test, None)?;
        let log = EpochLog {
            epoch: self.epoch,
            steps,
            train_loss: loss / steps.max(1) as f64,
            test_loss,
            test_accuracy,
            skipped_steps: self.opt.skipped_steps() - skipped_before,
            step_seconds: sum.scaled(1.0 / steps.max(1) as f64),
            images_per_second: images as f64 / wall.max(1e-9),
        };
        self.epoch += 1;
        self.history.push(log.clone());
        Ok(log)
    }

    /// Writes `model.safetensors` (PyTorch names), `optimizer.safetensors` and
    /// `trainer.json` into `dir`, each atomically.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| CliError::io(dir, e))?;
        samkit_nn::checkpoint::save(dir.join("model.safetensors"), &mut self.model, &self.params)
            .map_err(nn_err)?;
        self.opt.save_state(dir.join("optimizer.safetensors"))?;
        let state = TrainerState {
            config: self.cfg.clone(),
            epoch: self.epoch,
            step: self.step,
            history: self.history.clone(),
        };
        let text = serde_json::to_string_pretty(&state).map_err(|source| CliError::Json {
            path: dir.join("trainer.json"),
            source,
        })?;
        samkit_nn::checkpoint::write_atomic(&dir.join("trainer.json"), text.as_bytes())
            .map_err(nn_err)
    }

    /// Reads a checkpoint directory's `trainer.json`.
    pub fn read_state(dir: &Path) -> Result<TrainerState> {
        let path = dir.join("trainer.json");
        let text = std::fs::read_to_string(&path).map_err(|e| CliError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|source| CliError::Json { path, source })
    }

    /// Restores a trainer (built from the checkpoint's own config) to the checkpoint.
    pub fn load(&mut self, dir: &Path, state: TrainerState) -> Result<()> {
        samkit_nn::checkpoint::load(
            dir.join("model.safetensors"),
            &mut self.model,
            &mut self.params,
        )
        .map_err(nn_err)?;
        self.opt.load_state(dir.join("optimizer.safetensors"))?;
        self.epoch = state.epoch;
        self.step = state.step;
        self.history = state.history;
        Ok(())
    }
}
