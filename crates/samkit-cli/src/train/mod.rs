//! Training ResNet-18 with any optimizer of the family: flags, the trainer, and the commands
//! built on it (`train`, `compare`, `bench`).
pub mod args;
pub mod bench;
pub mod cmd;
pub mod cost_suite;
pub mod preset;
pub mod runs;
pub mod table1;
