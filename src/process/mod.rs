//! The process layer: Python's `multiprocessing`, Rust-shaped.
//!
//! Every child is started with `fork()`, runs its closure under
//! `catch_unwind` and leaves with `_exit`, so it never unwinds into the
//! parent's code. See the crate README for the fork-safety rules.
#![allow(unsafe_code)]

// Descriptors inherited across exec (socket activation, re-exec): the
// unsafe `from_raw_fd` lives here.
pub(crate) mod inherited;
