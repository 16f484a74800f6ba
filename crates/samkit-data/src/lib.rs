//! samkit-data: the datasets of the survey's experiments.
//!
//! - [`cifar`]: CIFAR-10 / CIFAR-100 in their standard binary formats, with errors that name
//!   the file and the problem.
//! - [`synthetic`]: a deterministic CIFAR-shaped dataset of learnable class-conditional images.
//! - [`transform`]: long-tailed subsampling and symmetric label noise, both seeded.
//! - [`loader`]: augmentation (random crop with padding, horizontal flip), per-channel
//!   normalisation, and a batch iterator that prepares the next batches on a worker thread.
pub mod cifar;
pub mod error;
pub mod loader;
pub mod synthetic;
pub mod transform;

pub use error::{DataError, Result};
pub use loader::{Augment, Batch, BatchIter, Normalize};

/// Side of a CIFAR image.
pub const SIDE: usize = 32;
/// Bytes per CIFAR image: 3 channels of 32×32, channel-major (CHW), as in the binary files.
pub const IMAGE_BYTES: usize = 3 * SIDE * SIDE;

/// Images (u8, CHW) and labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub classes: usize,
    pub images: Vec<u8>,
    pub labels: Vec<u16>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// Number of samples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &y in &self.labels {
            c[y as usize] += 1;
        }
        c
    }

    /// The samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize], name: impl Into<String>) -> Dataset {
        let mut images = Vec::with_capacity(indices.len() * IMAGE_BYTES);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            name: name.into(),
            classes: self.classes,
            images,
            labels,
        }
    }
}

/// A train/test pair and a line that says what data it is.
#[derive(Clone, Debug)]
pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
    pub description: String,
}
