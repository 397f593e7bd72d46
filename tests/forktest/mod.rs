//! The test runner for the `harness = false` binaries, under the name the
//! process-layer tests use. It lives in `tests/support/runner.rs`, the one
//! runner of every such binary; this module only hands it on.
#![allow(dead_code, unused_imports)]

#[path = "../support/runner.rs"]
mod runner;
pub use runner::*;
