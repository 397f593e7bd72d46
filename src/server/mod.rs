//! The server framework: Python's `socketserver`, Rust-shaped.
//!
//! A server is a [`SocketServer<T, S>`]: a [`Transport`] `T` (TCP, UDP,
//! Unix stream, Unix datagram) and a [`Strategy`] `S` (synchronous,
//! threading, forking) around one loop. You write a
//! [`RequestHandler`](crate::RequestHandler) once; switching strategy is a
//! change of one word in the type name:
//!
//! | Python | Rust |
//! |---|---|
//! | `TCPServer` | [`TcpServer`] |
//! | `ThreadingTCPServer` | [`ThreadingTcpServer`] |
//! | `ForkingTCPServer` | [`ForkingTcpServer`] |
//! | `UDPServer` | [`UdpServer`] |
//! | `ThreadingUDPServer` | [`ThreadingUdpServer`] |
//! | `ForkingUDPServer` | [`ForkingUdpServer`] |
//! | `UnixStreamServer` | [`UnixStreamServer`] |
//! | `ThreadingUnixStreamServer` | [`ThreadingUnixStreamServer`] |
//! | `ForkingUnixStreamServer` | [`ForkingUnixStreamServer`] |
//! | `UnixDatagramServer` | [`UnixDatagramServer`] |
//! | `ThreadingUnixDatagramServer` | [`ThreadingUnixDatagramServer`] |
//! | `ForkingUnixDatagramServer` | [`ForkingUnixDatagramServer`] |
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
//! let mut server = ThreadingTcpServer::bind("127.0.0.1:9000", || Echo)?;
//! server.serve_forever()?;
//! # Ok::<(), socketserver::Error>(())
//! ```

mod base;
mod core;
mod forking;
mod hooks;
mod incoming;
mod inet;
mod options;
mod signals;
mod strategy;
mod threading;
mod traits;
mod transport;
mod unix;
mod wakeup;

pub use base::SocketServer;
pub use core::ServerCore;
pub use forking::Forking;
pub use hooks::{DefaultHooks, Hooks};
pub use incoming::{Datagram, Incoming};
pub use inet::{TcpTransport, UdpTransport};
pub use options::{ServerBuilder, ServerOptions};
pub use signals::{shutdown_on_signals, SignalGuard};
pub use strategy::{LoopWaker, Strategy, Synchronous};
pub use threading::Threading;
pub use traits::Server;
pub use transport::{BindAddress, ServerSocket, Transport};
pub use unix::{UnixDatagramTransport, UnixPath, UnixStreamTransport};
pub use wakeup::ShutdownHandle;

/// A synchronous TCP server: one request at a time.
#[doc(alias = "TCPServer")]
pub type TcpServer = SocketServer<TcpTransport, Synchronous>;
/// A TCP server with one thread per connection.
#[doc(alias = "ThreadingTCPServer")]
pub type ThreadingTcpServer = SocketServer<TcpTransport, Threading>;
/// A synchronous UDP server: one datagram at a time.
#[doc(alias = "UDPServer")]
pub type UdpServer = SocketServer<UdpTransport, Synchronous>;
/// A UDP server with one thread per datagram.
#[doc(alias = "ThreadingUDPServer")]
pub type ThreadingUdpServer = SocketServer<UdpTransport, Threading>;
/// A synchronous Unix stream server.
pub type UnixStreamServer = SocketServer<UnixStreamTransport, Synchronous>;
/// A Unix stream server with one thread per connection.
pub type ThreadingUnixStreamServer = SocketServer<UnixStreamTransport, Threading>;
/// A synchronous Unix datagram server.
pub type UnixDatagramServer = SocketServer<UnixDatagramTransport, Synchronous>;
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

// Production serving (issue 7): the async strategy and operating helpers.
mod asynchronous;
pub use asynchronous::{
    AsyncRequestHandler, AsyncShutdownHandle, AsyncTcpServer, Blocking, DrainReport,
};
mod backoff;
pub use backoff::{raise_fd_limit, AcceptAction, AcceptBackoff};
mod per_ip;
pub use per_ip::{IpPermit, PerIpLimiter};
pub mod activation;
mod pidfile;
pub mod proxy;
pub use pidfile::PidFile;
mod prefork;
pub use prefork::{PreforkBuilder, PreforkTcpServer};
mod privileges;
pub use privileges::{drop_privileges, refuse_root, Identity};
mod reexec;
pub use reexec::{reexec, HangupRestart};
pub mod layers;
