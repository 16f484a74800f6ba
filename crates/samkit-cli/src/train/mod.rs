//! Training ResNet-18 with any optimizer of the family: flags, the trainer, and the commands
//! built on it (`train`, `compare`, `bench`).
pub mod args;
pub mod bench;
pub mod cmd;
