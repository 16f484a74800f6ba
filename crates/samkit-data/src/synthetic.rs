//! A deterministic CIFAR-shaped dataset for runs without the real files: each class has a
//! colour-and-texture prototype (two plane waves whose direction, frequency and colours depend
//! on the class); a sample is its prototype, randomly translated by up to 4 pixels, scaled in
//! contrast, with Gaussian pixel noise. A narrow ResNet learns it in a few epochs, but not in
//! one step, and the test set is drawn from the same distribution with other seeds.
use rayon::prelude::*;
use samkit_core::philox::PhiloxRng;

use crate::error::{DataError, Result};
use crate::{Dataset, Split, IMAGE_BYTES, SIDE};

#[derive(Clone, Debug)]
pub struct SyntheticSpec {
    pub classes: usize,
    pub train: usize,
    pub test: usize,
    pub seed: u64,
    /// Standard deviation of the pixel noise, in units of the 0..255 range.
    pub noise: f32,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            classes: 10,
            train: 5000,
            test: 1000,
            seed: 0,
            noise: 40.0,
        }
    }
}

/// The class prototypes, in `[-1, 1]`, CHW, on a 40×40 canvas so that translations stay
/// inside it.
fn prototypes(classes: usize, seed: u64) -> Vec<Vec<f32>> {
    const CANVAS: usize = SIDE + 8;
    (0..classes)
        .map(|c| {
            let mut rng = PhiloxRng::new(seed, 1_000_000 + c as u32);
            let mut waves = Vec::new();
            for _ in 0..2 {
                let angle = rng.uniform_f64() * std::f64::consts::PI;
                let freq = 0.15 + 0.45 * rng.uniform_f64();
                let phase = rng.uniform_f64() * std::f64::consts::TAU;
                let colour: Vec<f64> = (0..3).map(|_| 2.0 * rng.uniform_f64() - 1.0).collect();
                waves.push((angle.cos() * freq, angle.sin() * freq, phase, colour));
            }
            let mut img = vec![0f32; 3 * CANVAS * CANVAS];
            for ch in 0..3 {
                for y in 0..CANVAS {
                    for x in 0..CANVAS {
                        let v: f64 = waves
                            .iter()
                            .map(|(fx, fy, ph, col)| {
                                col[ch] * (fx * x as f64 + fy * y as f64 + ph).sin()
                            })
                            .sum::<f64>()
                            / 2.0;
                        img[(ch * CANVAS + y) * CANVAS + x] = v as f32;
                    }
                }
            }
            img
        })
        .collect()
}

fn render(
    protos: &[Vec<f32>],
    n: usize,
    classes: usize,
    seed: u64,
    stream: u32,
    noise: f32,
) -> (Vec<u8>, Vec<u16>) {
    const CANVAS: usize = SIDE + 8;
    let samples: Vec<(Vec<u8>, u16)> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut rng = PhiloxRng::new(seed ^ ((i as u64) << 20), stream);
            let y = (i % classes) as u16;
            let p = &protos[y as usize];
            let (dx, dy) = (rng.below(9) as usize, rng.below(9) as usize);
            let contrast = 0.6 + 0.4 * rng.uniform();
            let mut img = vec![0u8; IMAGE_BYTES];
            for ch in 0..3 {
                for yy in 0..SIDE {
                    for xx in 0..SIDE {
                        let v = p[(ch * CANVAS + yy + dy) * CANVAS + xx + dx];
                        let px = 127.5 + 100.0 * contrast * v + noise * rng.normal() as f32;
                        img[(ch * SIDE + yy) * SIDE + xx] = px.clamp(0.0, 255.0) as u8;
                    }
                }
            }
            (img, y)
        })
        .collect();
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (im, y) in samples {
        images.extend(im);
        labels.push(y);
    }
    (images, labels)
}

pub fn generate(spec: &SyntheticSpec) -> Result<Split> {
    if spec.classes < 2 || spec.classes > u16::MAX as usize {
        return Err(DataError::invalid(
            "classes",
            spec.classes,
            "must lie in 2..=65535",
        ));
    }
    if spec.train == 0 || spec.test == 0 {
        return Err(DataError::invalid(
            "samples",
            0,
            "train and test sizes must be > 0",
        ));
    }
    if !spec.noise.is_finite() || spec.noise < 0.0 {
        return Err(DataError::invalid(
            "noise",
            spec.noise,
            "must be finite and >= 0",
        ));
    }
    let protos = prototypes(spec.classes, spec.seed);
    let (images, labels) = render(&protos, spec.train, spec.classes, spec.seed, 1, spec.noise);
    let train = Dataset {
        name: "synthetic-train".into(),
        classes: spec.classes,
        images,
        labels,
    };
    let (images, labels) = render(&protos, spec.test, spec.classes, spec.seed, 2, spec.noise);
    let test = Dataset {
        name: "synthetic-test".into(),
        classes: spec.classes,
        images,
        labels,
    };
    Ok(Split {
        description: format!(
            "synthetic CIFAR-shaped data ({} classes, {} train / {} test, seed {}, noise {}): no CIFAR files were used",
            spec.classes, spec.train, spec.test, spec.seed, spec.noise
        ),
        train,
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_class_dependent() {
        let spec = SyntheticSpec {
            train: 200,
            test: 50,
            ..SyntheticSpec::default()
        };
        let a = generate(&spec).unwrap();
        let b = generate(&spec).unwrap();
        assert_eq!(a.train, b.train);
        assert_eq!(a.train.class_counts(), vec![20; 10]);
        assert_ne!(a.train.images[..IMAGE_BYTES], a.test.images[..IMAGE_BYTES]);
        // A nearest-class-mean classifier on raw pixels beats chance by far: the classes are
        // learnable.
        let mean = |ds: &Dataset, c: usize| -> Vec<f32> {
            let idx: Vec<usize> = (0..ds.len())
                .filter(|&i| ds.labels[i] as usize == c)
                .collect();
            let mut m = vec![0f32; IMAGE_BYTES];
            for &i in &idx {
                for (m, &p) in m.iter_mut().zip(ds.image(i)) {
                    *m += p as f32 / idx.len() as f32;
                }
            }
            m
        };
        let means: Vec<Vec<f32>> = (0..10).map(|c| mean(&a.train, c)).collect();
        let correct = (0..a.test.len())
            .filter(|&i| {
                let img = a.test.image(i);
                let best = (0..10)
                    .min_by(|&x, &y| {
                        let d = |c: usize| -> f32 {
                            means[c]
                                .iter()
                                .zip(img)
                                .map(|(m, &p)| (m - p as f32).powi(2))
                                .sum()
                        };
                        d(x).total_cmp(&d(y))
                    })
                    .unwrap();
                best == a.test.labels[i] as usize
            })
            .count();
        assert!(correct > 20, "{correct}/50");
        assert!(generate(&SyntheticSpec { classes: 1, ..spec }).is_err());
    }
}
