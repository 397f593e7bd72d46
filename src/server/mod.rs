//! The server framework: Python's `socketserver`, Rust-shaped.
