//! The training loop: one optimizer of the family over a ResNet-18 on CIFAR-shaped data, with
//! the time of every phase of every step, evaluation each epoch, and checkpoints from which a
//! resumed run continues exactly as an uninterrupted one.
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use samkit_core::philox::PhiloxRng;
use samkit_core::{FirstOutcome, Rule};
use samkit_data::loader::{make_batch, BatchIter, EpochPlan};
use samkit_data::{Augment, Batch, Dataset, Normalize};
use samkit_nn::{mean_weights, BnMode, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::engine::{CpuEngine, CudaEngine, Engine, Grad};
use crate::error::{Result, TrainError};

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

impl TrainerState {
    /// Reads a checkpoint directory's `trainer.json`.
    pub fn read(dir: &Path) -> Result<TrainerState> {
        let path = dir.join("trainer.json");
        let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
        serde_json::from_str(&text).map_err(|source| TrainError::Json { path, source })
    }
}

pub struct Trainer<E: Engine = CpuEngine> {
    pub cfg: RunConfig,
    pub engine: E,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    norm: Normalize,
    /// ImbSAM's tail classes.
    tail: Vec<bool>,
    pub epoch: u32,
    pub step: u64,
    pub history: Vec<EpochLog>,
}

impl Trainer<CpuEngine> {
    /// A trainer on the CPU.
    pub fn new(
        cfg: RunConfig,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        norm: Normalize,
    ) -> Result<Self> {
        let engine = CpuEngine::new(&cfg, train.classes)?;
        Ok(Self::with_engine(cfg, engine, train, test, norm))
    }
}

impl Trainer<CudaEngine> {
    /// A trainer on the CUDA device of `SAMKIT_CUDA_DEVICE` (default 0); without one, an
    /// invalid `--device` error.
    pub fn cuda(
        cfg: RunConfig,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        norm: Normalize,
    ) -> Result<Self> {
        let engine = CudaEngine::new(&cfg, train.classes)?;
        Ok(Self::with_engine(cfg, engine, train, test, norm))
    }
}

fn tensor(b: &Batch) -> Result<Tensor> {
    Tensor::from_vec(b.x.clone(), &[b.labels.len(), 3, 32, 32]).map_err(TrainError::from)
}

impl<E: Engine> Trainer<E> {
    pub fn with_engine(
        cfg: RunConfig,
        engine: E,
        train: Arc<Dataset>,
        test: Arc<Dataset>,
        norm: Normalize,
    ) -> Self {
        let tail = match &cfg.rule {
            Rule::ImbSam(c) => c.tail_classes(&train.class_counts()),
            _ => vec![false; train.classes],
        };
        Trainer {
            cfg,
            engine,
            train,
            test,
            norm,
            tail,
            epoch: 0,
            step: 0,
            history: Vec::new(),
        }
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

    /// SSAM-F's empirical Fisher over `samples` training images (no augmentation), drawn
    /// with a stream keyed by the step, so a resumed run draws the same ones.
    fn fisher(&mut self, samples: usize) -> Result<()> {
        let mut rng = PhiloxRng::new(self.cfg.seed, 0x4649_0000 ^ self.step as u32);
        let idx: Vec<usize> = (0..samples)
            .map(|_| rng.below(self.train.len() as u64) as usize)
            .collect();
        self.engine.fisher_begin()?;
        for chunk in idx.chunks(self.cfg.batch) {
            let b = make_batch(&self.train, chunk, None, &self.norm, (self.cfg.seed, 0));
            let x = self.engine.stage(tensor(&b)?)?;
            self.engine.net().fisher_add(&x, &b.labels)?;
        }
        self.engine.fisher_end()
    }

    /// One step of the optimizer on one batch, each phase timed (marks: 0 before the mask
    /// update, 1 before pass 1, 2 before the first step, 3 after it, 4 after pass 2, 5 after
    /// the second step).
    pub fn step(&mut self, b: &Batch) -> Result<StepLog> {
        let lr = self.cfg.schedule.lr_at(self.step);
        self.engine.set_lr(lr)?;
        let x = self.engine.stage(tensor(b)?)?;
        let bsz = b.labels.len();
        let labels = &b.labels[..];
        self.engine.mark(0)?;
        let fisher = self.engine.needs_fisher()?;
        if let Some(n) = fisher {
            self.fisher(n)?;
        }
        self.engine.mark(1)?;
        let (loss, tail_w) = if self.engine.needs_head_tail() {
            let is_tail: Vec<bool> = labels.iter().map(|&y| self.tail[y]).collect();
            let w = |want: bool| -> Vec<f32> {
                is_tail
                    .iter()
                    .map(|&t| if t == want { 1.0 / bsz as f32 } else { 0.0 })
                    .collect()
            };
            let (hw, tw) = (w(false), w(true));
            let e = &mut self.engine;
            let h = e
                .net()
                .forward_backward(&x, labels, &hw, BnMode::Train, Grad::First)?;
            let kappa = match &self.cfg.rule {
                Rule::ImbSam(c) => c.kappa as f64,
                _ => 1.0,
            };
            let tl =
                e.net()
                    .forward_backward(&x, labels, &tw, BnMode::TrainNoUpdate, Grad::Second)?;
            (h.loss + kappa * tl.loss, Some((tw, tl.samples)))
        } else {
            let l = self.engine.net().forward_backward(
                &x,
                labels,
                &mean_weights(bsz),
                BnMode::Train,
                Grad::First,
            )?;
            (l.loss, None)
        };
        self.engine.mark(2)?;
        let first = self
            .engine
            .first_step(tail_w.as_ref().map(|(_, n)| *n > 0))?;
        self.engine.mark(3)?;
        let mut perturbed_loss = None;
        if first == FirstOutcome::Perturbed {
            let weights = tail_w.map(|(w, _)| w).unwrap_or_else(|| mean_weights(bsz));
            let e = &mut self.engine;
            let l2 = match e.net().forward_backward(
                &x,
                labels,
                &weights,
                BnMode::TrainNoUpdate,
                Grad::Second,
            ) {
                Ok(l) => l,
                Err(err) => {
                    e.abort()?;
                    return Err(err);
                }
            };
            perturbed_loss = Some(l2.loss);
            e.mark(4)?;
            e.second_step()?;
            e.mark(5)?;
        }
        let e = &mut self.engine;
        let in_first = e.take_mask_time()?.unwrap_or(0.0);
        let mut sec = Phases {
            mask: in_first,
            pass1: e.seconds(1, 2)?,
            ..Phases::default()
        };
        if fisher.is_some() {
            sec.mask += e.seconds(0, 1)?;
        }
        let first_secs = (e.seconds(2, 3)? - in_first).max(0.0);
        match first {
            FirstOutcome::Perturbed => {
                sec.perturb = first_secs;
                sec.pass2 = e.seconds(3, 4)?;
                sec.update = e.seconds(4, 5)?;
            }
            FirstOutcome::Applied => sec.update = first_secs,
            FirstOutcome::Skipped => {}
        }
        let skipped = first == FirstOutcome::Skipped || e.last_skipped()?;
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
            let x = self.engine.stage(tensor(&b)?)?;
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
        let iter = BatchIter::new(self.train.clone(), plan)?;
        let skipped_before = self.engine.skipped_steps()?;
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
            skipped_steps: self.engine.skipped_steps()? - skipped_before,
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
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        self.engine.save(dir)?;
        let state = TrainerState {
            config: self.cfg.clone(),
            epoch: self.epoch,
            step: self.step,
            history: self.history.clone(),
        };
        let text = serde_json::to_string_pretty(&state).map_err(|source| TrainError::Json {
            path: dir.join("trainer.json"),
            source,
        })?;
        samkit_nn::checkpoint::write_atomic(&dir.join("trainer.json"), text.as_bytes())
            .map_err(TrainError::from)
    }

    /// Restores a trainer (built from the checkpoint's own config) to the checkpoint.
    pub fn load(&mut self, dir: &Path, state: TrainerState) -> Result<()> {
        self.engine.load(dir)?;
        self.epoch = state.epoch;
        self.step = state.step;
        self.history = state.history;
        Ok(())
    }
}
