//! Shared by the mutation fuzz tests of the file parsers (samkit-core's optimizer states,
//! samkit-nn's checkpoints, samkit-data's CIFAR batches): proptest strategies that mutate a
//! valid file, and a global allocator that records the largest single allocation a parser asks
//! for, so that a parser that trusts a declared size (and would allocate terabytes) fails the
//! test instead of aborting CI. A test binary installs the recorder as its allocator:
//!
//! ```rust,ignore
//! #[global_allocator]
//! static ALLOC: samkit_testkit::fuzz::Recording = samkit_testkit::fuzz::Recording;
//! ```
//!
//! proptest stands in for `cargo fuzz` (which needs a nightly toolchain): the cases are random
//! mutations of valid files, a fixed number per test so that each runs in seconds.
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use proptest::prelude::*;

/// Passes every call to the system allocator; while [`largest_allocation`] runs a closure on
/// this thread, records the largest block asked for.
pub struct Recording;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    // `try_with`: the allocator can run while thread-locals are torn down.
    if ARMED.try_with(Cell::get).unwrap_or(false) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; recording touches only `Cell`s in
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the largest single allocation it made (bytes).
pub fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    (r, LARGEST.with(Cell::get))
}

/// The most a parser may allocate at once for an input of `len` bytes: what it decodes is
/// never larger than the input, so a few times its length plus room for small fixed tables.
pub fn allocation_bound(len: usize) -> usize {
    const SLACK: usize = 1 << 20;
    const FACTOR: usize = 4;
    FACTOR * len + SLACK
}

/// One change to a valid file.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Flip bit `bit` of the byte at `at` (a fraction of the length, in 1/65536).
    FlipBit { at: u16, bit: u8 },
    /// Keep the first `keep`/65536 of the file.
    Truncate { keep: u16 },
    /// Overwrite 8 bytes at `at` with a little-endian `value` (a length field blown up).
    WriteU64 { at: u16, value: u64 },
    /// Overwrite bytes at `at` with random ones.
    Overwrite { at: u16, bytes: Vec<u8> },
    /// Insert random bytes at `at`.
    Insert { at: u16, bytes: Vec<u8> },
    /// Append nines to the `nth` ASCII digit (mod the count of digits): a shape, an offset or a
    /// length in a JSON header grown by orders of magnitude.
    GrowNumber { nth: u16, nines: u8 },
}

fn pos(at: u16, len: usize) -> usize {
    (at as usize * len) >> 16
}

impl Mutation {
    pub fn apply(&self, v: &mut Vec<u8>) {
        let len = v.len();
        match self {
            Mutation::FlipBit { at, bit } => {
                if len > 0 {
                    v[pos(*at, len)] ^= 1 << (bit % 8);
                }
            }
            Mutation::Truncate { keep } => v.truncate(pos(*keep, len)),
            Mutation::WriteU64 { at, value } => {
                let p = pos(*at, len);
                for (d, s) in v[p..].iter_mut().zip(value.to_le_bytes()) {
                    *d = s;
                }
            }
            Mutation::Overwrite { at, bytes } => {
                let p = pos(*at, len);
                for (d, &s) in v[p..].iter_mut().zip(bytes) {
                    *d = s;
                }
            }
            Mutation::Insert { at, bytes } => {
                let p = pos(*at, len);
                v.splice(p..p, bytes.iter().copied());
            }
            Mutation::GrowNumber { nth, nines } => {
                let digits: Vec<usize> = (0..len).filter(|&i| v[i].is_ascii_digit()).collect();
                if !digits.is_empty() {
                    let p = digits[*nth as usize % digits.len()] + 1;
                    v.splice(p..p, std::iter::repeat_n(b'9', *nines as usize));
                }
            }
        }
    }
}

/// Length fields worth trying: the edges of the integer types and sizes near them.
fn big_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(u32::MAX as u64),
        Just(1 << 40),
        any::<u64>(),
        0u64..4096,
    ]
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes = proptest::collection::vec(any::<u8>(), 1..32);
    prop_oneof![
        (any::<u16>(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        any::<u16>().prop_map(|keep| Mutation::Truncate { keep }),
        (any::<u16>(), big_value()).prop_map(|(at, value)| Mutation::WriteU64 { at, value }),
        // The safetensors header length is the file's first 8 bytes.
        big_value().prop_map(|value| Mutation::WriteU64 { at: 0, value }),
        (any::<u16>(), bytes.clone()).prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        (any::<u16>(), bytes).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<u16>(), 1u8..24).prop_map(|(nth, nines)| Mutation::GrowNumber { nth, nines }),
    ]
}

/// One to four mutations in a row.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..=4)
}

/// `file` with `muts` applied.
pub fn mutated(file: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut v = file.to_vec();
    for m in muts {
        m.apply(&mut v);
    }
    v
}

/// The number of cases each fuzz test runs (seconds in an optimised test build); the
/// environment variable `SAMKIT_FUZZ_CASES` raises it for a longer local run.
pub fn cases() -> u32 {
    const DEFAULT_CASES: u32 = 400;
    std::env::var("SAMKIT_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}
