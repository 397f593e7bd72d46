//! The guides: the README and the pages of `docs/`, shown here so that
//! docs.rs carries them and `cargo test` compiles every code block in
//! them (a `rust` block that stops compiling fails the test suite).
//!
//! Links between the pages point at the repository's files, so they work
//! on the repository's web view rather than here.

#[doc = include_str!("../README.md")]
pub mod readme {}

/// The server framework: strategies, transports, hooks, benchmarks.
// Its examples use the async strategy too.
#[cfg_attr(feature = "async", doc = include_str!("../docs/server.md"))]
pub mod server {}

/// Running servers in production: prefork, async, signals, restarts.
#[cfg_attr(feature = "async", doc = include_str!("../docs/production.md"))]
pub mod production {}

/// Several instances behind a load balancer: PROXY protocol, health,
/// restarts without failed requests.
#[doc = include_str!("../docs/scale-out.md")]
pub mod scale_out {}

/// The process layer: `Process`, pipes, listeners, start methods.
#[doc = include_str!("../docs/process.md")]
pub mod process {}

/// Shared-memory synchronisation: locks, events, conditions, queues.
#[doc = include_str!("../docs/sync.md")]
pub mod sync {}

/// `Pool`, `ProcessPoolExecutor` and `Manager`.
#[doc = include_str!("../docs/pool.md")]
pub mod pool {}

/// The FTP example server.
#[doc = include_str!("../docs/ftp.md")]
pub mod ftp {}

/// What the servers are tested to survive.
#[doc = include_str!("../docs/hardening.md")]
pub mod hardening {}

/// Coverage-guided fuzzing of every parser a peer can feed.
#[doc = include_str!("../docs/fuzzing.md")]
pub mod fuzzing {}

/// The `loadtest` load client.
#[doc = include_str!("../docs/loadtest.md")]
pub mod loadtest {}
