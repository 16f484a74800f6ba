//! Shared by the GPU parity tests (`tests/parity.rs`, real device) and their CPU emulation
//! (`tests/emulated.rs`, the fake driver of `tests/fakecuda`).
#![allow(dead_code)]
pub mod fake;
pub mod parity;
