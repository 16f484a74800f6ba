//! A mutation fuzzer of `trainer.json`, the one checkpoint file a user edits by hand: a valid
//! file of a real run, mutated thousands of ways (bytes flipped, cut, inserted; numbers
//! replaced by extreme values; fields dropped), read with `TrainerState::read`. Reading must
//! never panic, and whatever it accepts must hold the bounds the flags hold (a batch and width
//! a run can use, epochs that agree with the history).
//!
//! Deterministic (a fixed xorshift stream), so that a failure reproduces; bounded to run in
//! about a second.
use std::path::PathBuf;
use std::sync::Arc;

use samkit_core::{BaseOptimizer, LrSchedule, Rule, Sam};
use samkit_train::limits::{MAX_BATCH, MAX_EPOCHS, MAX_WIDTH};
use samkit_train::{load_data, DataConfig, RunConfig, Trainer, TrainerState};

/// Mutated files read per run.
const CASES: usize = 3_000;
/// Values a number in the file is replaced with: bounds, signs, overflow, non-numbers.
const EXTREMES: [&str; 14] = [
    "0",
    "-1",
    "1",
    "65537",
    "100000",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "-1e308",
    "1e-320",
    "\"NaN\"",
    "null",
    "true",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seed_file() -> (PathBuf, String) {
    let root = std::env::temp_dir().join(format!("samkit-fuzz-trainer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // A folder of its own: reading looks beside the checkpoint for what a crash left.
    let dir = root.join("checkpoint");
    let mut data = DataConfig::synthetic(8, 4);
    data.no_augment = true;
    let v = serde_json::json!({
        "optimizer": "sam",
        "rule": Rule::Sam(Sam { rho: 0.05, ..Sam::default() }),
        "base": BaseOptimizer::sgd(0.05, 0.9, 5e-4),
        "schedule": LrSchedule::constant(0.05),
        "epochs": 2,
        "batch": 4,
        "steps_per_epoch": null,
        "width": 2,
        "label_smoothing": 0.0,
        "augment": false,
        "seed": 0,
        "data": data,
    });
    let cfg: RunConfig = serde_json::from_value(v).expect("a run config");
    let (split, norm) = load_data(&cfg.data, cfg.seed).expect("synthetic data");
    let mut t =
        Trainer::new(cfg, Arc::new(split.train), Arc::new(split.test), norm).expect("a trainer");
    t.train_epoch(&mut |_| {}).expect("an epoch");
    t.save(&dir).expect("a checkpoint");
    let text = std::fs::read_to_string(dir.join("trainer.json")).expect("trainer.json");
    // The manifest would refuse every mutation before the values are looked at.
    std::fs::remove_file(dir.join(samkit_train::checkpoint::MANIFEST)).expect("no manifest");
    (dir, text)
}

/// The byte ranges of the numbers in `s`.
fn numbers(s: &str) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut v = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() || (b[i] == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b"+-.".contains(&b[i])) {
                i += 1;
            }
            v.push((start, i));
        } else {
            i += 1;
        }
    }
    v
}

fn mutate(rng: &mut Rng, text: &str, nums: &[(usize, usize)]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    match rng.below(6) {
        0 => {
            // Replace one number by an extreme value.
            let (s, e) = nums[rng.below(nums.len())];
            let mut out = text[..s].to_string();
            out += EXTREMES[rng.below(EXTREMES.len())];
            out += &text[e..];
            b = out.into_bytes();
        }
        1 => {
            // Flip bits of a few bytes.
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
        }
        2 => {
            // Cut the file short.
            b.truncate(rng.below(b.len()));
        }
        3 => {
            // Delete a range.
            let i = rng.below(b.len());
            let n = rng.below(64).min(b.len() - i);
            b.drain(i..i + n);
        }
        4 => {
            // Insert random bytes.
            let i = rng.below(b.len());
            let ins: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
            b.splice(i..i, ins);
        }
        _ => {
            // Two numbers at once (the bounds checks are per field).
            for _ in 0..2 {
                let t = String::from_utf8_lossy(&b).into_owned();
                let ns = numbers(&t);
                if ns.is_empty() {
                    break;
                }
                let (s, e) = ns[rng.below(ns.len())];
                let mut out = t[..s].to_string();
                out += EXTREMES[rng.below(EXTREMES.len())];
                out += &t[e..];
                b = out.into_bytes();
            }
        }
    }
    b
}

#[test]
fn mutated_trainer_json_is_refused_or_within_bounds() {
    let (dir, text) = seed_file();
    let nums = numbers(&text);
    assert!(nums.len() > 10, "the seed file has numbers to mutate");
    let path = dir.join("trainer.json");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0usize, 0usize);
    for case in 0..CASES {
        let bytes = mutate(&mut rng, &text, &nums);
        std::fs::write(&path, &bytes).expect("write");
        match TrainerState::read(&dir) {
            Ok(st) => {
                accepted += 1;
                let c = &st.config;
                let shown = String::from_utf8_lossy(&bytes);
                assert!((1..=MAX_BATCH).contains(&c.batch), "case {case}: {shown}");
                assert!((1..=MAX_WIDTH).contains(&c.width), "case {case}: {shown}");
                assert!((1..=MAX_EPOCHS).contains(&c.epochs), "case {case}: {shown}");
                assert!(c.steps_per_epoch != Some(0), "case {case}: {shown}");
                assert_eq!(st.history.len(), st.epoch as usize, "case {case}: {shown}");
            }
            Err(e) => {
                refused += 1;
                assert!(e.is_bad_input(), "case {case}: {e} is not bad input");
            }
        }
    }
    // Both outcomes happen: the mutations reach the checks, not only the parser.
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    std::fs::remove_dir_all(dir.parent().expect("a parent")).ok();
}
