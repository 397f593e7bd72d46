//! # socketserver
//!
//! Python's `multiprocessing` and `socketserver`, Rust-shaped.
//!
//! - [`process`]: start closures in child processes (fork), talk to them
//!   ([`process::pipe`], queues, an authenticated `Listener`/`Client`),
//!   synchronise them (locks, events, barriers in shared memory) and farm
//!   work out to them.
//! - [`server`]: a [`server::Server`] trait that owns the connection loop,
//!   with synchronous, threading and forking strategies over TCP, UDP and
//!   Unix sockets. You write a [`RequestHandler`]; switching strategy is a
//!   change of one type name.
//! - [`handler`]: the [`RequestHandler`] trait and the [`Request`] it gets,
//!   with Python's `rfile`/`wfile`.
//!
//! `unsafe` code lives only in [`process`] (fork, shared memory, futexes),
//! each block with a `// SAFETY:` comment; the rest of the crate is safe.
#![deny(unsafe_code)]

mod error;
pub use error::{Error, Result};

pub mod handler;
pub use handler::{PeerAddr, Request, RequestHandler, Stream};

pub mod process;

pub mod server;
pub use server::{
    shutdown_on_signals, ForkingTcpServer, ForkingUdpServer, ForkingUnixDatagramServer,
    ForkingUnixStreamServer, Server, ShutdownHandle, TcpServer, ThreadingTcpServer,
    ThreadingUdpServer, ThreadingUnixDatagramServer, ThreadingUnixStreamServer, UdpServer,
    UnixDatagramServer, UnixStreamServer,
};

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
