//! Mutation fuzzing of the CIFAR batch reader: valid CIFAR-10 and CIFAR-100 files, mutated
//! (bit flips, truncation, blown-up bytes, random insertions), parse as an error naming the
//! file or as whole records with labels in range, never a panic, never an allocation far
//! beyond the file's size.

use std::path::Path;

use proptest::prelude::*;
use samkit_data::cifar::{parse, Cifar};
use samkit_data::IMAGE_BYTES;
use samkit_testkit::fuzz::{allocation_bound, cases, largest_allocation, mutated, mutations};

#[global_allocator]
static ALLOC: samkit_testkit::fuzz::Recording = samkit_testkit::fuzz::Recording;

/// `records` records of `which` with labels and pixels from a fixed pattern.
fn file(which: Cifar, records: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for r in 0..records {
        let label = (r * 7 % which.classes()) as u8;
        match which {
            Cifar::C10 => v.push(label),
            Cifar::C100 => v.extend([label / 5, label]),
        }
        v.extend((0..IMAGE_BYTES).map(|i| (i * 31 + r) as u8));
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn mutated_cifar_batches_are_refused_or_parsed_never_a_panic(
        c100 in any::<bool>(),
        records in 1usize..4,
        muts in mutations(),
    ) {
        let which = if c100 { Cifar::C100 } else { Cifar::C10 };
        let bad = mutated(&file(which, records), &muts);
        let p = Path::new("fuzz_batch.bin");
        let (r, largest) = largest_allocation(|| parse(&bad, which, p));
        prop_assert!(
            largest <= allocation_bound(bad.len()),
            "{largest} bytes allocated at once for a {}-byte file", bad.len()
        );
        match r {
            Ok((images, labels)) => {
                prop_assert_eq!(images.len(), labels.len() * IMAGE_BYTES);
                prop_assert!(labels.iter().all(|&y| (y as usize) < which.classes()));
                let header = if c100 { 2 } else { 1 };
                prop_assert_eq!(bad.len(), labels.len() * (header + IMAGE_BYTES));
            }
            Err(e) => prop_assert!(e.to_string().contains("fuzz_batch.bin"), "{e}"),
        }
    }
}
