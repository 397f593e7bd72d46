//! Concurrency strategies: how a request is processed.
//!
//! Python's `ThreadingMixIn` and `ForkingMixIn` override exactly one thing,
//! `process_request` (plus `server_close` to wait for their workers). A
//! [`Strategy`] is that mixin as a type parameter of
//! [`SocketServer`](super::SocketServer): the transport, the loop and the
//! handler stay the same. Five strategies, one file each:
//!
//! | strategy | where a request runs | `serve_forever` |
//! |---|---|---|
//! | [`Synchronous`] | the serving thread | the accept loop |
//! | [`Threading`](threading::Threading) | a thread per request | the accept loop |
//! | [`Forking`](forking::Forking) | a child process per request (**the fork point**: `process_request`) | the accept loop |
//! | [`Prefork`](prefork::Prefork) | a pool of worker processes, each accepting on the shared socket (blocked in `accept4`; over datagrams, the accept loop) | manages the pool |
//! | `Async` | a tokio task per request (blocking handlers on a bounded thread pool) | a tokio accept loop |

use std::fmt;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::handler::PeerAddr;

use super::core::ServerCore;
use super::drain::DrainReport;
use super::incoming::Incoming;
use super::options::ServerOptions;
use super::transport::ServerSocket;
use super::wakeup::Wakeup;

#[cfg(feature = "async")]
pub(crate) mod asynchronous;
pub(crate) mod forking;
pub(crate) mod prefork;
mod synchronous;
pub(crate) mod threading;

pub use synchronous::Synchronous;

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
    /// The name used in logs, spans and by the echo example: `sync`,
    /// `threading`, `forking`, `prefork`, `async`.
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

    /// Calls `add` with each of [`wait_fds`](Self::wait_fds); the accept
    /// loop asks through this. The default collects `wait_fds`. A strategy
    /// whose set changes with every request can override it to hand the
    /// descriptors over without building a `Vec` (the forking strategy
    /// does: in its parent every allocation writes heap pages, each a
    /// copy-on-write page fault after every fork).
    fn each_wait_fd<'a>(&'a self, add: &mut dyn FnMut(BorrowedFd<'a>)) {
        for fd in self.wait_fds() {
            add(fd);
        }
    }

    /// Housekeeping after each loop iteration: join finished threads, reap
    /// exited children. Default does nothing.
    fn service_actions(&mut self) {}

    /// The longest the accept loop may wait, with nothing ready, before it
    /// must call [`service_actions`](Self::service_actions) again; `None`
    /// (the default) waits for a descriptor. The forking strategy asks for
    /// a millisecond while a child that reported its exit is still
    /// finishing it, and for its once-a-second sweep while children run.
    fn wake_within(&self) -> Option<Duration> {
        None
    }

    /// Serves until a shutdown is requested. Default is
    /// [`Serving::accept_loop`] in this thread; the prefork strategy
    /// manages its worker pool here instead (each worker accepts on the
    /// shared socket), the async strategy runs the loop on tokio.
    ///
    /// # Errors
    /// As [`Server::serve_forever`](super::Server::serve_forever).
    fn serve_forever(&mut self, serving: &mut Serving<'_>) -> Result<()> {
        serving.accept_loop(self)
    }

    /// Called once by `server_close`, after the listening socket is
    /// closed: with `block_on_close`, waits for the requests in flight up
    /// to `timeout`, then ends the rest; without, leaves them running.
    /// Default has nothing in flight.
    fn drain(&mut self, block_on_close: bool, timeout: Duration) -> DrainReport {
        let _ = (block_on_close, timeout);
        DrainReport::default()
    }
}

/// What the accept loop asks of whoever processes requests: the
/// [`Strategy`] methods it calls. Every strategy is one; a prefork worker
/// is one too, without being a strategy a user can pick.
pub(crate) trait Processor {
    fn at_capacity(&mut self) -> bool;
    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        server_socket: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    );
    fn each_wait_fd<'a>(&'a self, add: &mut dyn FnMut(BorrowedFd<'a>));
    fn service_actions(&mut self);
    fn wake_within(&self) -> Option<Duration> {
        None
    }
}

impl<S: Strategy> Processor for S {
    fn at_capacity(&mut self) -> bool {
        Strategy::at_capacity(self)
    }
    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        server_socket: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    ) {
        Strategy::process_request(self, core, server_socket, request, peer)
    }
    fn each_wait_fd<'a>(&'a self, add: &mut dyn FnMut(BorrowedFd<'a>)) {
        Strategy::each_wait_fd(self, add)
    }
    fn service_actions(&mut self) {
        Strategy::service_actions(self)
    }
    fn wake_within(&self) -> Option<Duration> {
        Strategy::wake_within(self)
    }
}

/// What a strategy's `serve_forever` works with: the server socket, the
/// shared request core, the wake-up descriptor and the options. Handed to
/// [`Strategy::serve_forever`]; [`accept_loop`](Self::accept_loop) is the
/// loop every process-local strategy (and every prefork worker over a
/// datagram socket) runs; a prefork worker over a stream socket blocks in
/// `accept4` instead and shares what follows the accept.
pub struct Serving<'a> {
    pub(crate) socket: &'a mut Option<ServerSocket>,
    pub(crate) core: &'a Arc<ServerCore>,
    pub(crate) wakeup: &'a Arc<Wakeup>,
    pub(crate) options: &'a ServerOptions,
    pub(crate) buf: &'a mut Vec<u8>,
}

impl fmt::Debug for Serving<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serving")
            .field("open", &self.socket.is_some())
            .finish_non_exhaustive()
    }
}
