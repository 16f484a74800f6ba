//! Loss, accuracy and gradient of a trained model at arbitrary weights, over a fixed set of
//! samples with batch norm in inference mode: a deterministic function of the weights, which
//! the loss-landscape and Hessian commands evaluate many times.
use std::path::Path;
use std::sync::Arc;

use samkit_data::loader::make_batch;
use samkit_data::Dataset;
use samkit_nn::{BnMode, Model, Tensor};

use crate::config::load_data;
use crate::error::{Result, TrainError};
use crate::trainer::{Trainer, TrainerState};

/// A fixed set of samples at which a trained model's loss, accuracy and gradient are
/// evaluated for arbitrary weights (batch norm in inference mode, on the CPU).
pub struct Probe {
    batches: Vec<(Tensor, Vec<usize>)>,
    samples: usize,
    classes: usize,
}

/// A CPU trainer restored from a checkpoint folder ([`Trainer::save`], `samkit train`), with
/// its data (rebuilt from the checkpoint's configuration) and the data's description.
pub fn trained(dir: &Path) -> Result<(Trainer, String)> {
    let st = TrainerState::read(dir)?;
    let (split, norm) = load_data(&st.config.data, st.config.seed)?;
    let mut t = Trainer::new(
        st.config.clone(),
        Arc::new(split.train),
        Arc::new(split.test),
        norm,
    )?;
    t.load(dir, st)?;
    Ok((t, split.description))
}

impl Probe {
    /// The first `samples` images of `ds`, without augmentation.
    pub fn new(t: &Trainer, ds: &Dataset, samples: usize) -> Result<Self> {
        let n = samples.min(ds.len());
        if n == 0 {
            return Err(TrainError::invalid("samples", "must be >= 1"));
        }
        let idx: Vec<usize> = (0..n).collect();
        let batches = idx
            .chunks(256)
            .map(|c| {
                let b = make_batch(ds, c, None, &t.normalize(), (0, 0));
                let x = Tensor::from_vec(b.x, &[c.len(), 3, 32, 32]).map_err(TrainError::from)?;
                Ok((x, b.labels))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Probe {
            batches,
            samples: n,
            classes: ds.classes,
        })
    }

    /// The number of samples.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Mean cross-entropy and accuracy at `params`.
    pub fn loss_acc(&self, t: &mut Trainer, params: &[f32]) -> Result<(f64, f64)> {
        let (mut loss, mut correct) = (0.0, 0usize);
        for (x, y) in &self.batches {
            let logits = t
                .engine
                .net
                .model
                .forward(params, x, BnMode::Eval)
                .map_err(TrainError::from)?;
            let z = logits.as_slice().map_err(TrainError::from)?;
            let ones = vec![1.0; y.len()];
            let per =
                samkit_core::loss::smooth_cross_entropy(z, y, self.classes, 0.0, &ones, None)?;
            loss += per.iter().map(|&l| l as f64).sum::<f64>();
            for (i, &label) in y.iter().enumerate() {
                let row = &z[i * self.classes..(i + 1) * self.classes];
                let arg = (0..self.classes)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                    .unwrap_or(0);
                correct += (arg == label) as usize;
            }
        }
        let n = self.samples as f64;
        Ok((loss / n, correct as f64 / n))
    }

    /// Gradient of the mean loss at `params` into `out`; returns the loss.
    pub fn grad(&self, t: &mut Trainer, params: &[f32], out: &mut [f32]) -> Result<f64> {
        out.fill(0.0);
        let mut part = vec![0f32; out.len()];
        let mut loss = 0.0;
        let n = self.samples as f32;
        for (x, y) in &self.batches {
            let w = vec![1.0 / n; y.len()];
            let l = t
                .engine
                .net
                .model
                .forward_backward(params, x, y.into(), &w, BnMode::Eval, &mut part)
                .map_err(TrainError::from)?;
            loss += l.loss;
            for (o, &p) in out.iter_mut().zip(&part) {
                *o += p;
            }
        }
        Ok(loss)
    }
}
