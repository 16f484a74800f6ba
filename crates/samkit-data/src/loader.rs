//! Augmentation, normalisation, and a batch iterator that prepares batches on a worker
//! thread (bounded queue), so the consumer (a GPU step, or the CPU trainer) never waits for
//! decoding and augmentation while the queue has room.
//!
//! Every random choice (shuffle order, crop offsets, flips) comes from a Philox stream keyed by
//! (seed, epoch, sample), so a batch does not depend on thread timing, and resuming at a given
//! epoch (or at a batch within it, [`BatchIter::starting_at`]) reproduces it.
//!
//! Every batch carries the dataset indices of its samples ([`Batch::indices`]): sample `i` is
//! `Dataset::image(i)` with label `labels[i]` in every epoch, whatever its position in the
//! shuffled order, and a resumed run sees the same indices in the same batches. Per-sample
//! state kept across epochs (SAF's ring buffer of past logits) is keyed by them; they lie in
//! `0..dataset.len()` of the dataset given to the loader (for a transformed set, such as
//! `transform::long_tail`'s subset, indices into that set, as stable as its seed).
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;
use samkit_core::philox::PhiloxRng;

use crate::error::{DataError, Result};
use crate::{Dataset, IMAGE_BYTES, SIDE};

/// Per-channel normalisation `(x/255 − mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalize {
    pub const CIFAR10: Normalize = Normalize {
        mean: [0.4914, 0.4822, 0.4465],
        std: [0.2470, 0.2435, 0.2616],
    };
    pub const CIFAR100: Normalize = Normalize {
        mean: [0.5071, 0.4865, 0.4409],
        std: [0.2673, 0.2564, 0.2762],
    };

    /// Mean and standard deviation of each channel over a dataset.
    pub fn fit(ds: &Dataset) -> Normalize {
        let plane = SIDE * SIDE;
        let mut mean = [0f32; 3];
        let mut std = [0f32; 3];
        for c in 0..3 {
            let (s, s2) = (0..ds.len())
                .into_par_iter()
                .map(|i| {
                    let p = &ds.image(i)[c * plane..(c + 1) * plane];
                    p.iter().fold((0f64, 0f64), |(a, b), &v| {
                        let v = v as f64 / 255.0;
                        (a + v, b + v * v)
                    })
                })
                .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
            let n = (ds.len() * plane).max(1) as f64;
            let m = s / n;
            mean[c] = m as f32;
            std[c] = ((s2 / n - m * m).max(1e-12)).sqrt() as f32;
        }
        Normalize { mean, std }
    }
}

/// Training augmentation: random crop with zero padding, random horizontal flip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Augment {
    pub crop_pad: usize,
    pub flip: bool,
}

impl Augment {
    pub const CIFAR: Augment = Augment {
        crop_pad: 4,
        flip: true,
    };
}

/// One batch: normalised images `[B, 3, 32, 32]` and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub x: Vec<f32>,
    pub labels: Vec<usize>,
    /// Indices of the samples in the dataset, in batch order: stable across epochs and
    /// resumes (see the module documentation).
    pub indices: Vec<usize>,
}

impl Batch {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Writes sample `img` into `out` (`3·32·32` floats), augmented with `rng` if asked.
fn prepare(
    img: &[u8],
    out: &mut [f32],
    aug: Option<Augment>,
    norm: &Normalize,
    rng: &mut PhiloxRng,
) {
    let (dx, dy, flip) = match aug {
        Some(a) => {
            let span = 2 * a.crop_pad as u64 + 1;
            let dx = rng.below(span) as isize - a.crop_pad as isize;
            let dy = rng.below(span) as isize - a.crop_pad as isize;
            (dx, dy, a.flip && rng.next_u32() & 1 == 1)
        }
        None => (0, 0, false),
    };
    let s = SIDE as isize;
    for c in 0..3 {
        let (m, sd) = (norm.mean[c], norm.std[c]);
        let zero = (0.0 - m) / sd;
        for y in 0..s {
            for x in 0..s {
                let sx = if flip { s - 1 - x } else { x } + dx;
                let sy = y + dy;
                let v = if (0..s).contains(&sx) && (0..s).contains(&sy) {
                    (img[c * SIDE * SIDE + (sy * s + sx) as usize] as f32 / 255.0 - m) / sd
                } else {
                    zero
                };
                out[c * SIDE * SIDE + (y * s + x) as usize] = v;
            }
        }
    }
}

/// Builds one batch from the samples at `indices`; `key = (seed, epoch)` seeds augmentation.
pub fn make_batch(
    ds: &Dataset,
    indices: &[usize],
    aug: Option<Augment>,
    norm: &Normalize,
    key: (u64, u32),
) -> Batch {
    let mut x = vec![0f32; indices.len() * IMAGE_BYTES];
    x.par_chunks_mut(IMAGE_BYTES)
        .zip(indices.par_iter())
        .for_each(|(out, &i)| {
            let mut rng = PhiloxRng::new(
                key.0 ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                key.1,
            );
            prepare(ds.image(i), out, aug, norm, &mut rng);
        });
    Batch {
        x,
        labels: indices.iter().map(|&i| ds.labels[i] as usize).collect(),
        indices: indices.to_vec(),
    }
}

/// How an epoch is cut into batches.
#[derive(Clone, Debug)]
pub struct EpochPlan {
    pub batch: usize,
    /// Shuffle with this seed; `None` keeps the dataset order (evaluation).
    pub shuffle_seed: Option<u64>,
    pub epoch: u32,
    pub augment: Option<Augment>,
    pub normalize: Normalize,
    pub drop_last: bool,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
}

impl EpochPlan {
    /// The dataset indices of every batch of this epoch over a dataset of `len` samples, in
    /// the order [`BatchIter`] yields them (the same shuffle, the same cut, the last batch
    /// dropped when short and `drop_last`), without preparing any image.
    pub fn batch_indices(&self, len: usize) -> Result<Vec<Vec<usize>>> {
        if self.batch == 0 {
            return Err(DataError::invalid("batch size", 0, "must be > 0"));
        }
        let mut order: Vec<usize> = (0..len).collect();
        if let Some(seed) = self.shuffle_seed {
            PhiloxRng::new(seed, 0x5348_0000 ^ self.epoch).shuffle(&mut order);
        }
        let mut chunks: Vec<Vec<usize>> = order.chunks(self.batch).map(<[usize]>::to_vec).collect();
        if self.drop_last && chunks.last().is_some_and(|c| c.len() < self.batch) {
            chunks.pop();
        }
        Ok(chunks)
    }
}

/// The batches of one epoch, prepared on a worker thread.
pub struct BatchIter {
    rx: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
    batches: usize,
}

impl BatchIter {
    pub fn new(ds: Arc<Dataset>, plan: EpochPlan) -> Result<Self> {
        Self::starting_at(ds, plan, 0)
    }

    /// The batches `first..` of the epoch (a run resumed within an epoch): the same samples,
    /// indices and augmentation as those batches of [`BatchIter::new`]. `first` may equal the
    /// number of batches (nothing left); beyond it is an error.
    pub fn starting_at(ds: Arc<Dataset>, plan: EpochPlan, first: usize) -> Result<Self> {
        let mut chunks = plan.batch_indices(ds.len())?;
        if first > chunks.len() {
            return Err(DataError::invalid(
                "first batch",
                first,
                "beyond the last batch of the epoch",
            ));
        }
        chunks.drain(..first);
        let batches = chunks.len();
        let (tx, rx) = sync_channel(plan.prefetch.max(1));
        let key = (plan.shuffle_seed.unwrap_or(0), plan.epoch);
        let worker = std::thread::Builder::new()
            .name("samkit-data-loader".into())
            .spawn(move || {
                for idx in chunks {
                    let b = make_batch(&ds, &idx, plan.augment, &plan.normalize, key);
                    if tx.send(b).is_err() {
                        return; // the consumer stopped early
                    }
                }
            })
            .map_err(|e| DataError::Io {
                path: "<loader thread>".into(),
                source: e,
            })?;
        Ok(BatchIter {
            rx,
            worker: Some(worker),
            batches,
        })
    }

    /// Number of batches this iterator yields (the epoch's, less those skipped by
    /// [`BatchIter::starting_at`]).
    pub fn batches(&self) -> usize {
        self.batches
    }
}

impl Iterator for BatchIter {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        // Unblock the worker by dropping our receiver first, then join it.
        let (_, dead) = sync_channel(1);
        let _ = std::mem::replace(&mut self.rx, dead);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Arc<Dataset> {
        let n = 10;
        Arc::new(Dataset {
            name: "t".into(),
            classes: 2,
            images: (0..n * IMAGE_BYTES).map(|i| (i % 251) as u8).collect(),
            labels: (0..n).map(|i| (i % 2) as u16).collect(),
        })
    }

    fn plan(epoch: u32) -> EpochPlan {
        EpochPlan {
            batch: 4,
            shuffle_seed: Some(7),
            epoch,
            augment: Some(Augment::CIFAR),
            normalize: Normalize::CIFAR10,
            drop_last: false,
            prefetch: 2,
        }
    }

    #[test]
    fn epochs_are_reproducible_and_cover_the_data() {
        let ds = tiny();
        let a: Vec<Batch> = BatchIter::new(ds.clone(), plan(0)).unwrap().collect();
        let b: Vec<Batch> = BatchIter::new(ds.clone(), plan(0)).unwrap().collect();
        let c: Vec<Batch> = BatchIter::new(ds.clone(), plan(1)).unwrap().collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a.iter().map(|b| b.labels.len()).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let mut seen: Vec<usize> = a.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let mut p = plan(0);
        p.drop_last = true;
        assert_eq!(BatchIter::new(ds.clone(), p).unwrap().count(), 2);
        // Dropping an iterator early does not hang.
        let mut it = BatchIter::new(ds, plan(2)).unwrap();
        it.next();
        drop(it);
    }

    #[test]
    fn batch_indices_are_the_dataset_samples_in_every_epoch() {
        let ds = tiny();
        for epoch in 0..3 {
            let p = plan(epoch);
            let batches: Vec<Batch> = BatchIter::new(ds.clone(), p.clone()).unwrap().collect();
            let planned = p.batch_indices(ds.len()).unwrap();
            assert_eq!(
                batches
                    .iter()
                    .map(|b| b.indices.clone())
                    .collect::<Vec<_>>(),
                planned,
                "epoch {epoch}: the planned indices are the loaded ones"
            );
            for b in &batches {
                assert_eq!(b.len(), b.indices.len());
                for (j, &i) in b.indices.iter().enumerate() {
                    assert!(i < ds.len());
                    assert_eq!(b.labels[j], ds.labels[i] as usize);
                    // Sample i's image (and augmentation) depends on i and the epoch only,
                    // not on where the shuffle put it.
                    let alone = make_batch(&ds, &[i], p.augment, &p.normalize, (7, epoch));
                    assert_eq!(&b.x[j * IMAGE_BYTES..(j + 1) * IMAGE_BYTES], &alone.x[..]);
                }
            }
        }
        let mut p = plan(0);
        p.batch = 0;
        assert!(p.batch_indices(10).is_err());
    }

    #[test]
    fn a_resumed_epoch_yields_the_same_batches_and_indices() {
        let ds = tiny();
        let whole: Vec<Batch> = BatchIter::new(ds.clone(), plan(1)).unwrap().collect();
        for first in 0..=whole.len() {
            let it = BatchIter::starting_at(ds.clone(), plan(1), first).unwrap();
            assert_eq!(it.batches(), whole.len() - first);
            let rest: Vec<Batch> = it.collect();
            assert_eq!(rest, whole[first..], "resumed at batch {first}");
        }
        assert!(BatchIter::starting_at(ds, plan(1), whole.len() + 1).is_err());
    }

    #[test]
    fn no_augmentation_is_plain_normalisation_and_flip_mirrors() {
        let ds = tiny();
        let norm = Normalize {
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let b = make_batch(&ds, &[3], None, &norm, (0, 0));
        for (v, &p) in b.x.iter().zip(ds.image(3)) {
            assert!((v - p as f32 / 255.0).abs() < 1e-6);
        }
        let flip_only = Augment {
            crop_pad: 0,
            flip: true,
        };
        // Over a few keys both orientations appear, and a flipped row is the mirror image.
        let mut flipped = false;
        for k in 0..8 {
            let f = make_batch(&ds, &[3], Some(flip_only), &norm, (k, 0));
            if f.x != b.x {
                flipped = true;
                for x in 0..SIDE {
                    assert_eq!(f.x[x], b.x[SIDE - 1 - x]);
                }
            }
        }
        assert!(flipped);
        let fit = Normalize::fit(&ds);
        assert!(fit.std.iter().all(|&s| s > 0.0));
    }
}
