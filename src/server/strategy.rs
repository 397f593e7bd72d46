//! Concurrency strategies: how a request is processed.
//!
//! Python's `ThreadingMixIn` and `ForkingMixIn` override exactly one thing,
//! `process_request` (plus `server_close` to wait for their workers). A
//! [`Strategy`] is that mixin as a type parameter of
//! [`SocketServer`](super::SocketServer): the transport and the loop stay
//! the same, and one handler type works under every strategy.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::Arc;

use crate::error::Result;
use crate::handler::PeerAddr;

use super::core::ServerCore;
use super::incoming::Incoming;
use super::options::ServerOptions;
use super::transport::ServerSocket;
use super::wakeup::Wakeup;

/// Wakes the serving loop, for example when a worker frees a slot that a
/// capped strategy is waiting for.
#[derive(Clone)]
pub struct LoopWaker(pub(crate) Arc<Wakeup>);

impl LoopWaker {
    /// Makes the loop's `poll` return; it then re-checks
    /// [`Strategy::at_capacity`] and the shutdown flag.
    pub fn wake(&self) {
        self.0.wake();
    }
}

impl fmt::Debug for LoopWaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoopWaker")
    }
}

/// How a server processes each request (Python's mixins).
pub trait Strategy: Send + Sized + 'static {
    /// The name used in logs and by the echo example: `sync`, `threading`,
    /// `forking`.
    const NAME: &'static str;

    /// Creates the strategy for a server with these options.
    ///
    /// # Errors
    /// Setting up the strategy's resources failed.
    fn new(options: &ServerOptions, waker: LoopWaker) -> Result<Self>;

    /// `true` while no new request should be accepted (a concurrency cap
    /// is reached). The loop then waits for a wake-up instead of accepting.
    /// Default is never.
    fn at_capacity(&mut self) -> bool {
        false
    }

    /// Runs (or starts) one request. Every failure, including failing to
    /// start a worker, must be reported through `core.handle_error` and the
    /// request passed to `core.shutdown_request` (or closed).
    ///
    /// `server_socket` is the server's own socket; the forking strategy
    /// takes and drops it in the child so a child never keeps the port.
    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        server_socket: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    );

    /// Extra descriptors the loop should wait on besides the server socket
    /// and the wake-up socket, for example the exit sentinels of forked
    /// children. When one becomes readable the loop wakes and calls
    /// [`service_actions`](Self::service_actions). Default is none.
    fn wait_fds(&self) -> Vec<BorrowedFd<'_>> {
        Vec::new()
    }

    /// Housekeeping after each loop iteration: join finished threads, reap
    /// exited children. Default does nothing.
    fn service_actions(&mut self) {}

    /// Called once by `server_close`: wait for running workers when
    /// `block_on_close`. Default does nothing.
    fn server_close(&mut self, block_on_close: bool) {
        let _ = block_on_close;
    }
}

/// Python's plain `TCPServer` behaviour: each request is handled to the end
/// on the serving thread before the next is accepted.
#[derive(Debug, Default)]
pub struct Synchronous;

impl Strategy for Synchronous {
    const NAME: &'static str = "sync";

    fn new(_: &ServerOptions, _: LoopWaker) -> Result<Self> {
        Ok(Synchronous)
    }

    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        _: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    ) {
        core.process(request, &peer);
    }
}
