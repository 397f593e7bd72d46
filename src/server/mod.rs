//! The server framework: Python's `socketserver`, Rust-shaped.
//!
//! A server is a [`SocketServer<T, S>`]: a [`Transport`] `T` (TCP, UDP,
//! Unix stream, Unix datagram) and a [`Strategy`] `S` (synchronous,
//! threading, forking, prefork, async) around one loop. You write a
//! [`RequestHandler`](crate::RequestHandler) once; switching strategy is a
//! change of one word in the type name — same `bind(addr, || Handler)`,
//! same [`ServerBuilder`], same [`Server`] methods, same
//! [`ShutdownHandle`] and [`shutdown_on_signals`], same [`DrainReport`].
//!
//! | | TCP | UDP | Unix stream | Unix datagram |
//! |---|---|---|---|---|
//! | [`Synchronous`] | [`TcpServer`] | [`UdpServer`] | [`UnixStreamServer`] | [`UnixDatagramServer`] |
//! | [`Threading`] | [`ThreadingTcpServer`] | [`ThreadingUdpServer`] | [`ThreadingUnixStreamServer`] | [`ThreadingUnixDatagramServer`] |
//! | [`Forking`] | [`ForkingTcpServer`] | [`ForkingUdpServer`] | [`ForkingUnixStreamServer`] | [`ForkingUnixDatagramServer`] |
//! | [`Prefork`] | [`PreforkTcpServer`] | [`PreforkUdpServer`] | [`PreforkUnixStreamServer`] | [`PreforkUnixDatagramServer`] |
//! | `Async` | `AsyncTcpServer` | `AsyncUdpServer` | `AsyncUnixStreamServer` | `AsyncUnixDatagramServer` |
//!
//! The names are `{Strategy}{Transport}Server`, with the strategy left out
//! for the synchronous one, as in Python; Python's spellings
//! (`ThreadingTCPServer`, …) are search aliases. All twenty make sense:
//! prefork workers over a datagram socket each `recvfrom` on the shared
//! socket; the async strategy reads datagrams and Unix connections
//! through tokio's reactor. The async strategy needs the `async` cargo
//! feature (on by default).
//!
//! ```no_run
//! use std::io::{self, BufRead, Write};
//! use socketserver::server::{Server, ThreadingTcpServer};
//! use socketserver::{Request, RequestHandler};
//!
//! struct Echo;
//! impl RequestHandler for Echo {
//!     fn handle(&mut self, req: &mut Request) -> io::Result<()> {
//!         let mut line = Vec::new();
//!         while req.rfile().read_until(b'\n', &mut line)? > 0 {
//!             req.wfile().write_all(&line)?;
//!             line.clear();
//!         }
//!         Ok(())
//!     }
//! }
//!
//! // Or PreforkTcpServer, ForkingTcpServer, AsyncTcpServer, TcpServer:
//! let mut server = ThreadingTcpServer::bind("127.0.0.1:9000", || Echo)?;
//! server.serve_forever()?;
//! server.server_close();
//! # Ok::<(), socketserver::Error>(())
//! ```
//!
//! # Layout
//!
//! - The core, read first: [`base`](SocketServer) (the server and **the
//!   accept loop**, [`Serving::accept_loop`]), `core` (**where a request
//!   becomes a handler call**, [`ServerCore::process`]), `hooks`,
//!   `builder` and `options` (the settings), `wakeup` (shutdown without polling),
//!   `signals`, `drain` (the one drain report), `incoming` (what
//!   `get_request` returns), `traits` (the [`Server`] trait).
//! - `strategy/`: one file per strategy; the fork points are
//!   `strategy/forking.rs` (`process_request`) and `strategy/prefork/`
//!   (`spawn`; the worker loop is in `worker.rs`).
//! - `transport/`: the four socket kinds.
//! - `ops/`: operating helpers — [`activation`], re-exec
//!   ([`reexec`]), [`PidFile`], privileges, the accept backoff
//!   ([`AcceptBackoff`]).
//! - `middleware/`: connection middleware — [`proxy`] (PROXY protocol;
//!   `trust.rs`: the peers trusted to send it),
//!   per-IP limits ([`PerIpLimiter`]) and the handler [`layers`].

mod base;
mod builder;
mod core;
mod drain;
mod hooks;
mod incoming;
mod middleware;
mod ops;
mod options;
mod signals;
mod strategy;
mod traits;
mod transport;
mod wakeup;

pub use base::SocketServer;
pub use builder::ServerBuilder;
pub use core::ServerCore;
pub use drain::DrainReport;
pub use hooks::{report_error, DefaultHooks, Hooks};
pub use incoming::{Datagram, Incoming};
pub use options::ServerOptions;
pub use signals::{shutdown_on_signals, SignalGuard};
pub use strategy::forking::Forking;
pub use strategy::prefork::Prefork;
pub use strategy::threading::Threading;
pub use strategy::{LoopWaker, Serving, Strategy, Synchronous};
pub use traits::Server;
pub use transport::{
    BindAddress, ServerSocket, TcpTransport, Transport, UdpTransport, UnixDatagramTransport,
    UnixPath, UnixStreamTransport,
};
pub use wakeup::ShutdownHandle;

#[cfg(feature = "async")]
pub use strategy::asynchronous::{Async, AsyncRequestHandler, Blocking};

pub use middleware::layers;
pub use middleware::per_ip::{IpPermit, PerIpLimiter};
pub use middleware::proxy;
pub use middleware::shared_limit::{LimitRefusal, SharedLimiter, SharedPermit};
pub use middleware::warning::SharedWarning;
pub use ops::activation;
pub(crate) use ops::backoff::RateLimited;
pub use ops::backoff::{raise_fd_limit, AcceptAction, AcceptBackoff};
pub use ops::pidfile::PidFile;
pub use ops::privileges::{drop_privileges, refuse_root, Identity};
pub use ops::reexec::{reexec, spawn_successor, HangupRestart};
pub use ops::{health, notify};

/// A synchronous TCP server: one request at a time.
#[doc(alias = "TCPServer")]
pub type TcpServer = SocketServer<TcpTransport, Synchronous>;
/// A synchronous UDP server: one datagram at a time.
#[doc(alias = "UDPServer")]
pub type UdpServer = SocketServer<UdpTransport, Synchronous>;
/// A synchronous Unix stream server.
pub type UnixStreamServer = SocketServer<UnixStreamTransport, Synchronous>;
/// A synchronous Unix datagram server.
pub type UnixDatagramServer = SocketServer<UnixDatagramTransport, Synchronous>;

/// A TCP server with one thread per connection.
#[doc(alias = "ThreadingTCPServer")]
pub type ThreadingTcpServer = SocketServer<TcpTransport, Threading>;
/// A UDP server with one thread per datagram.
#[doc(alias = "ThreadingUDPServer")]
pub type ThreadingUdpServer = SocketServer<UdpTransport, Threading>;
/// A Unix stream server with one thread per connection.
pub type ThreadingUnixStreamServer = SocketServer<UnixStreamTransport, Threading>;
/// A Unix datagram server with one thread per datagram.
pub type ThreadingUnixDatagramServer = SocketServer<UnixDatagramTransport, Threading>;

/// A TCP server with one child process per connection.
#[doc(alias = "ForkingTCPServer")]
pub type ForkingTcpServer = SocketServer<TcpTransport, Forking>;
/// A UDP server with one child process per datagram.
#[doc(alias = "ForkingUDPServer")]
pub type ForkingUdpServer = SocketServer<UdpTransport, Forking>;
/// A Unix stream server with one child process per connection.
pub type ForkingUnixStreamServer = SocketServer<UnixStreamTransport, Forking>;
/// A Unix datagram server with one child process per datagram.
pub type ForkingUnixDatagramServer = SocketServer<UnixDatagramTransport, Forking>;

/// A TCP server whose connections are served by a pool of pre-forked
/// worker processes (see [`Prefork`]).
pub type PreforkTcpServer = SocketServer<TcpTransport, Prefork>;
/// A UDP server whose prefork workers `recvfrom` on the shared socket.
pub type PreforkUdpServer = SocketServer<UdpTransport, Prefork>;
/// A Unix stream server served by a pool of pre-forked workers.
pub type PreforkUnixStreamServer = SocketServer<UnixStreamTransport, Prefork>;
/// A Unix datagram server whose prefork workers share the socket.
pub type PreforkUnixDatagramServer = SocketServer<UnixDatagramTransport, Prefork>;

/// A TCP server running each connection as a tokio task (a native
/// [`AsyncRequestHandler`] through `bind_async`, or a blocking handler).
#[cfg(feature = "async")]
pub type AsyncTcpServer = SocketServer<TcpTransport, Async>;
/// A UDP server handling each datagram in a tokio task.
#[cfg(feature = "async")]
pub type AsyncUdpServer = SocketServer<UdpTransport, Async>;
/// A Unix stream server running each connection as a tokio task.
#[cfg(feature = "async")]
pub type AsyncUnixStreamServer = SocketServer<UnixStreamTransport, Async>;
/// A Unix datagram server handling each datagram in a tokio task.
#[cfg(feature = "async")]
pub type AsyncUnixDatagramServer = SocketServer<UnixDatagramTransport, Async>;
