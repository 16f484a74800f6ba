//! Checkpoint integrity: each tensor's checksum is verified on load, so a flipped bit in any
//! tensor is refused with the file and the tensor named; and mutation fuzzing of the reader
//! (bit flips, truncation, length fields blown up, random bytes): an error or a loaded model,
//! never a panic, never an allocation far beyond the file's size.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use safetensors::SafeTensors;
use samkit_nn::{checkpoint, Model, ResNet18, ResNetConfig};
use samkit_testkit::fuzz::{allocation_bound, cases, largest_allocation, mutated, mutations};

#[global_allocator]
static ALLOC: samkit_testkit::fuzz::Recording = samkit_testkit::fuzz::Recording;

fn model() -> ResNet18 {
    ResNet18::cpu(ResNetConfig::new(10, 1)).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nn_integrity");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A saved checkpoint of a width-1 ResNet-18 with parameters `0.01·i`, and its bytes.
fn saved(name: &str) -> (PathBuf, Vec<f32>, Vec<u8>) {
    let mut m = model();
    let p: Vec<f32> = (0..m.layout().len()).map(|i| 0.01 * i as f32).collect();
    let path = tmp(name);
    checkpoint::save(&path, &mut m, &p).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, p, bytes)
}

#[test]
fn a_flipped_byte_in_any_tensor_is_refused_naming_file_and_tensor() {
    let (path, p, bytes) = saved("good.safetensors");
    let (mut m, mut q) = (model(), vec![0.0; p.len()]);
    checkpoint::load(&path, &mut m, &mut q).unwrap();
    assert_eq!(q, p);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let bad_path = tmp("flipped.safetensors");
    let mut tested = 0;
    for (name, t) in st.tensors() {
        let at = t.data().as_ptr() as usize - bytes.as_ptr() as usize;
        // The last byte of the tensor: the sign and exponent of an f32, the top of an i64.
        let at = at + t.data().len() - 1;
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        std::fs::write(&bad_path, &bad).unwrap();
        let (mut m, mut q) = (model(), vec![0.0; p.len()]);
        let e = checkpoint::load(&bad_path, &mut m, &mut q)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("flipped.safetensors") && e.contains(&format!("tensor `{name}` fails")),
            "{name}: {e}"
        );
        assert!(
            q.iter().all(|&v| v == 0.0),
            "nothing is written on a refusal"
        );
        tested += 1;
    }
    assert!(tested > 50, "{tested} tensors");
}

#[test]
fn checkpoints_are_written_byte_for_byte_the_same() {
    let (_, _, a) = saved("same-a.safetensors");
    let (_, _, b) = saved("same-b.safetensors");
    assert!(a == b, "metadata order must not change between saves");
    let (_, md) = SafeTensors::read_metadata(&a).unwrap();
    let md = md.metadata().clone().unwrap();
    assert_eq!(md["format"], "pt");
    assert!(md.contains_key("samkit.checksums"));
}

#[test]
fn checkpoints_without_checksums_still_load() {
    let (_, p, bytes) = saved("with-sums.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let old = safetensors::serialize(st.tensors(), Some(meta)).unwrap();
    let path = tmp("no-sums.safetensors");
    std::fs::write(&path, old).unwrap();
    let (mut m, mut q) = (model(), vec![0.0; p.len()]);
    checkpoint::load(&path, &mut m, &mut q).unwrap();
    assert_eq!(q, p);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn mutated_checkpoints_are_refused_or_loaded_never_a_panic(muts in mutations()) {
        let (_, p, good) = saved("fuzz-source.safetensors");
        let bad = mutated(&good, &muts);
        let path = tmp(&format!("fuzz-{:?}.safetensors", std::thread::current().id())
            .replace(['(', ')'], ""));
        std::fs::write(&path, &bad).unwrap();
        let (mut m, mut q) = (model(), vec![0.0; p.len()]);
        let (r, largest) = largest_allocation(|| checkpoint::load(&path, &mut m, &mut q));
        prop_assert!(
            largest <= allocation_bound(bad.len()),
            "{largest} bytes allocated at once for a {}-byte file", bad.len()
        );
        match r {
            // A file that still has its checksums loads only with the data it was saved with
            // (a change in the header's padding or the `format` value goes unseen); one whose
            // checksum key was mutated away loads unverified, like a file from before them.
            Ok(()) => {
                let verified = SafeTensors::read_metadata(&bad).is_ok_and(|(_, md)| {
                    md.metadata().as_ref().is_some_and(|m| m.contains_key("samkit.checksums"))
                });
                if verified {
                    prop_assert_eq!(q, p);
                }
            }
            Err(e) => {
                let e = e.to_string();
                prop_assert!(e.contains("fuzz-"), "{}", e);
                prop_assert!(q.iter().all(|&v| v == 0.0), "nothing is written on a refusal");
            }
        }
    }
}
