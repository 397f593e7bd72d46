//! # socketserver
//!
//! Python's `multiprocessing` and `socketserver`, Rust-shaped.
//!
//! - [`process`]: start closures in child processes (fork), talk to them
//!   ([`process::pipe`], queues, an authenticated `Listener`/`Client`),
//!   synchronise them (locks, events, barriers in shared memory) and farm
//!   work out to them.
//! - [`server`]: a [`server::Server`] trait that owns the connection loop,
//!   with five interchangeable strategies — synchronous, threading,
//!   forking, prefork and async — over TCP, UDP and Unix sockets. You write
//!   a [`RequestHandler`]; switching strategy is a change of one word.
//! - [`handler`]: the [`RequestHandler`] trait and the [`Request`] it gets,
//!   with Python's `rfile`/`wfile`.
//!
//! # Which type to reach for
//!
//! - A network service: a [`server`] alias such as [`ThreadingTcpServer`],
//!   [`server::PreforkTcpServer`] (crash isolation, many requests per
//!   process) or `server::AsyncTcpServer` (many idle connections), with
//!   your [`RequestHandler`]; configure it with [`server::ServerBuilder`],
//!   stop it with [`ShutdownHandle`] / [`shutdown_on_signals`].
//! - Work in other processes: [`process::Process`], [`process::Pool`],
//!   [`process::ProcessPoolExecutor`]; state shared between them:
//!   [`process::Value`], [`process::Lock`], [`process::Queue`],
//!   [`process::Manager`].
//!
//! # Layout
//!
//! A request's trip, and where each step lives:
//!
//! 1. **The loop**: `src/server/base.rs` — [`server::SocketServer`] and
//!    [`server::Serving::accept_loop`], the one accept loop (`poll` on the
//!    server socket and the wake-up descriptor, `get_request`,
//!    `verify_request`, the accept-error policy of
//!    `src/server/ops/backoff.rs`). Shutdown wakes it through
//!    `src/server/wakeup.rs`; options and hooks are `options.rs`,
//!    `hooks.rs`.
//! 2. **The strategy**: `src/server/strategy/` — one file per strategy
//!    decides where the request runs. **The fork points** are
//!    `strategy/forking.rs` (`process_request`: a child per request) and
//!    `strategy/prefork/mod.rs` (`spawn`: a worker running the loop of
//!    step 1 in `strategy/prefork/worker.rs`); both call
//!    [`process::fork_child`] in `src/process/fork.rs`, the only `fork`.
//! 3. **The handler call**: `src/server/core.rs` —
//!    [`server::ServerCore::process`] makes the handler and runs its life
//!    cycle (`setup`/`handle`/`finish`, in `src/handler.rs`), reports
//!    errors and panics to `handle_error` and closes the request.
//! 4. Around it: `src/server/transport/` (the four socket kinds),
//!    `src/server/middleware/` (PROXY protocol and the peers trusted to
//!    send it, per-IP limits),
//!    `src/server/ops/` (socket activation, re-exec and successor
//!    restarts, pid file, privileges, the HAProxy agent-check health port
//!    `health.rs`, systemd notifications `notify.rs`), `src/error.rs` (the
//!    one [`Error`]).
//!
//! `unsafe` code lives only in [`process`] (fork, shared memory, futexes),
//! each block with a `// SAFETY:` comment; the rest of the crate is safe.
//!
//! # Features
//!
//! - `async` (default): the async strategy, on tokio.
#![deny(unsafe_code)]

// Linux only: pidfds, futexes, robust mutexes, prctl and /proc are the
// ground this crate stands on. Elsewhere, one clear error instead of a
// wall of missing symbols: every module below is compiled on Linux only.
#[cfg(not(target_os = "linux"))]
compile_error!(
    "socketserver supports Linux only (kernel 5.3 or newer): it is built on pidfds, futexes, robust mutexes, prctl and /proc"
);

#[cfg(target_os = "linux")]
mod error;
#[cfg(target_os = "linux")]
pub use error::{Error, Result};

#[cfg(target_os = "linux")]
pub mod handler;
#[cfg(target_os = "linux")]
pub use handler::{PeerAddr, Request, RequestHandler, Stream};

#[cfg(target_os = "linux")]
pub mod process;

#[cfg(target_os = "linux")]
pub mod server;

#[cfg(target_os = "linux")]
pub mod guide;

#[cfg(target_os = "linux")]
pub use server::{
    shutdown_on_signals, ForkingTcpServer, ForkingUdpServer, ForkingUnixDatagramServer,
    ForkingUnixStreamServer, PreforkTcpServer, PreforkUdpServer, PreforkUnixDatagramServer,
    PreforkUnixStreamServer, Server, ShutdownHandle, TcpServer, ThreadingTcpServer,
    ThreadingUdpServer, ThreadingUnixDatagramServer, ThreadingUnixStreamServer, UdpServer,
    UnixDatagramServer, UnixStreamServer,
};
#[cfg(all(target_os = "linux", feature = "async"))]
pub use server::{AsyncTcpServer, AsyncUdpServer, AsyncUnixDatagramServer, AsyncUnixStreamServer};

#[cfg(all(target_os = "linux", feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
