//! The seed documents' multiprocessing programs in Rust.
//!
//! ```sh
//! cargo run --release --example processes
//! ```
fn main() {}
