//! The server framework: Python's `socketserver`, Rust-shaped.

// Production serving (issue 7): the async strategy and operating helpers.
mod asynchronous;
pub use asynchronous::{
    AsyncRequestHandler, AsyncTcpServer, Blocking, DrainReport, ShutdownHandle,
};
mod backoff;
pub use backoff::{raise_fd_limit, AcceptAction, AcceptBackoff};
mod per_ip;
pub use per_ip::{IpPermit, PerIpLimiter};
pub mod activation;
mod pidfile;
pub mod proxy;
pub use pidfile::PidFile;
