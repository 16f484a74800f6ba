//! ImbSAM's tail on CIFAR-100-LT: `n_c < τ` (ALGORITHMS.md, "ImbSAM"), the long-tail benchmarks'
//! few-shot classes, which the official code selects with `<`.
use samkit_core::ImbSam;
use samkit_data::transform::long_tail;
use samkit_data::{Dataset, IMAGE_BYTES};

/// CIFAR-100's training set shape: 100 classes of 500 images.
const CLASSES: usize = 100;
const PER_CLASS: usize = 500;

#[test]
fn cifar100_lt_imbalance_100_has_30_tail_classes() {
    let n = CLASSES * PER_CLASS;
    // The images do not matter here; zeros are never read.
    let ds = Dataset {
        name: "cifar-100-shaped".into(),
        classes: CLASSES,
        images: vec![0u8; n * IMAGE_BYTES],
        labels: (0..n).map(|i| (i % CLASSES) as u16).collect(),
    };
    let lt = long_tail(&ds, 100.0, 0).unwrap();
    let counts = lt.class_counts();
    // The CIFAR-100-LT profile: 500 down to 5, 10,847 images.
    assert_eq!((counts[0], counts[CLASSES - 1]), (500, 5));
    assert_eq!(counts.iter().sum::<usize>(), 10_847);
    let tail = ImbSam::default().tail_classes(&counts);
    assert_eq!(tail.iter().filter(|&&t| t).count(), 30);
    // The tail is the last 30 classes (n_c ≤ 19); class 69 with exactly 20 images is head,
    // which `n_c ≤ τ` would have put in a 31-class tail.
    assert!(tail[70..].iter().all(|&t| t) && !tail[..70].iter().any(|&t| t));
    assert_eq!(counts[69], 20);
    assert_eq!(counts.iter().filter(|&&c| c <= 20).count(), 31);
}
