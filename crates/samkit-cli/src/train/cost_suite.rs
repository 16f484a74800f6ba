//! The rows of `compare --suite cost` in one place: the command reads them, and so does its
//! device test (`tests/cuda_emulated.rs` includes this file), which checks every row is there.

/// The rows of `--suite cost`, in order; `ssam-l-truncated` is `ssam-l` with `--pass2
/// truncated`, and a name the trainer does not have (yet) is left out.
pub const COST_SUITE: [&str; 12] = [
    "sgd",
    "sam",
    "ssam-f",
    "ssam-d",
    "ssam-l",
    "ssam-l-truncated",
    "esam",
    "sam-on",
    "rst",
    "looksam",
    "mesa",
    "saf",
];
