//! Long-tailed subsampling and symmetric label noise, both seeded.
use samkit_core::philox::PhiloxRng;

use crate::error::{DataError, Result};
use crate::Dataset;

/// Keeps `n_c = ⌊n_max · IF^(−c/(C−1))⌋` samples of class `c` (at least one), the
/// exponential profile of CIFAR-LT; `imbalance` is `IF = n_max / n_min`.
pub fn long_tail(ds: &Dataset, imbalance: f64, seed: u64) -> Result<Dataset> {
    if !imbalance.is_finite() || imbalance < 1.0 {
        return Err(DataError::invalid(
            "imbalance factor",
            imbalance,
            "must be finite and >= 1",
        ));
    }
    let counts = ds.class_counts();
    let n_max = counts.iter().copied().max().unwrap_or(0);
    let c = ds.classes;
    let mut order: Vec<usize> = (0..ds.len()).collect();
    PhiloxRng::new(seed, 0x4C54).shuffle(&mut order);
    let keep: Vec<usize> = (0..c)
        .map(|k| {
            let e = if c > 1 {
                k as f64 / (c - 1) as f64
            } else {
                0.0
            };
            ((n_max as f64 * imbalance.powf(-e)).floor() as usize).max(1)
        })
        .collect();
    let mut taken = vec![0usize; c];
    let mut idx: Vec<usize> = order
        .into_iter()
        .filter(|&i| {
            let y = ds.labels[i] as usize;
            taken[y] += 1;
            taken[y] <= keep[y]
        })
        .collect();
    idx.sort_unstable();
    Ok(ds.subset(&idx, format!("{}-lt{imbalance}", ds.name)))
}

/// Replaces each label, with probability `rate`, by a uniformly drawn *other* class.
/// Returns the noisy set and how many labels changed.
pub fn label_noise(ds: &Dataset, rate: f64, seed: u64) -> Result<(Dataset, usize)> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(DataError::invalid(
            "label noise rate",
            rate,
            "must lie in [0, 1]",
        ));
    }
    let mut rng = PhiloxRng::new(seed, 0x4E53);
    let mut out = ds.clone();
    out.name = format!("{}-noise{rate}", ds.name);
    let mut flipped = 0;
    for y in out.labels.iter_mut() {
        if rng.uniform_f64() < rate {
            let other = rng.below(ds.classes as u64 - 1) as u16;
            *y = if other >= *y { other + 1 } else { other };
            flipped += 1;
        }
    }
    Ok((out, flipped))
}

/// Classes listed one by one in [`counts_summary`] up to this many (CIFAR-10); above it
/// (CIFAR-100) the line gives the largest, median and smallest counts only.
pub const LISTED_CLASSES: usize = 20;

/// What a (long-tailed) training set holds, in one line: its size, the largest and smallest
/// class with their counts and the imbalance they make, and the counts of every class (or their
/// median above [`LISTED_CLASSES`] classes).
pub fn counts_summary(counts: &[usize]) -> String {
    let total: usize = counts.iter().sum();
    let Some((max_c, &max)) = counts
        .iter()
        .enumerate()
        .max_by_key(|&(c, &n)| (n, usize::MAX - c))
    else {
        return "0 images in 0 classes".into();
    };
    let (min_c, &min) = counts
        .iter()
        .enumerate()
        .min_by_key(|&(c, &n)| (n, c))
        .unwrap_or((max_c, &max));
    let ratio = if min > 0 {
        format!("{:.1}", max as f64 / min as f64)
    } else {
        "inf".into()
    };
    let rest = if counts.len() <= LISTED_CLASSES {
        let list: Vec<String> = counts.iter().map(usize::to_string).collect();
        format!("per class {}", list.join(","))
    } else {
        let mut sorted = counts.to_vec();
        sorted.sort_unstable();
        format!("median {}", sorted[sorted.len() / 2])
    };
    format!(
        "{total} images in {} classes: largest class {max_c} with {max}, smallest class {min_c} \
         with {min} (n_max/n_min = {ratio}); {rest}",
        counts.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IMAGE_BYTES;

    fn balanced(per_class: usize, classes: usize) -> Dataset {
        let n = per_class * classes;
        // The first two bytes of each image hold its index, to check images follow labels.
        let mut images = vec![0u8; n * IMAGE_BYTES];
        for i in 0..n {
            images[i * IMAGE_BYTES] = (i % 256) as u8;
            images[i * IMAGE_BYTES + 1] = (i / 256) as u8;
        }
        Dataset {
            name: "t".into(),
            classes,
            images,
            labels: (0..n).map(|i| (i % classes) as u16).collect(),
        }
    }

    #[test]
    fn long_tail_follows_the_exponential_profile() {
        let ds = balanced(100, 10);
        let lt = long_tail(&ds, 10.0, 1).unwrap();
        let c = lt.class_counts();
        assert_eq!(c[0], 100);
        assert_eq!(c[9], 10);
        assert!(c.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(c[5], (100.0 * 10f64.powf(-5.0 / 9.0)).floor() as usize);
        assert_eq!(lt, long_tail(&ds, 10.0, 1).unwrap());
        assert!(long_tail(&ds, 0.5, 1).is_err());
        // Images stay attached to their labels.
        for i in 0..lt.len() {
            let img = lt.image(i);
            let orig = img[0] as usize + 256 * img[1] as usize;
            assert_eq!(orig % 10, lt.labels[i] as usize);
        }
    }

    #[test]
    fn label_noise_flips_the_given_fraction_to_other_classes() {
        let ds = balanced(500, 10);
        let (noisy, flipped) = label_noise(&ds, 0.4, 3).unwrap();
        let changed = ds
            .labels
            .iter()
            .zip(&noisy.labels)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(changed, flipped);
        assert!((changed as f64 / ds.len() as f64 - 0.4).abs() < 0.03);
        assert!(noisy.labels.iter().all(|&y| (y as usize) < 10));
        assert_eq!(label_noise(&ds, 0.0, 3).unwrap().1, 0);
        assert!(label_noise(&ds, 1.5, 3).is_err());
    }

    #[test]
    fn counts_summary_names_size_extremes_and_counts() {
        let s = counts_summary(&[100, 46, 21, 10]);
        assert!(s.starts_with("177 images in 4 classes"), "{s}");
        assert!(s.contains("largest class 0 with 100"), "{s}");
        assert!(s.contains("smallest class 3 with 10"), "{s}");
        assert!(s.contains("n_max/n_min = 10.0"), "{s}");
        assert!(s.contains("per class 100,46,21,10"), "{s}");
        // Many classes: the median instead of the list.
        let many: Vec<usize> = (1..=100).rev().collect();
        let s = counts_summary(&many);
        assert!(s.contains("median 51") && !s.contains("per class"), "{s}");
        assert_eq!(counts_summary(&[]), "0 images in 0 classes");
        assert!(counts_summary(&[3, 0]).contains("= inf"));
    }
}
