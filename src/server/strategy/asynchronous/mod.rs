//! The async strategy: one tokio task per request, over every transport.
//!
//! Threads and processes cost megabytes each; a parked tokio task costs a
//! few hundred bytes plus its buffers, so the async strategy is the one
//! for many mostly idle connections (chat, push, long polling) — with a
//! native [`AsyncRequestHandler`] (`async fn handle`). A blocking
//! [`RequestHandler`](crate::RequestHandler) runs here unchanged too (the
//! same `bind(addr, || Handler)` as every other strategy): each request
//! gets a thread of the runtime's blocking pool while it runs, at most
//! [`max_blocking`](crate::server::ServerBuilder::max_blocking) at once.
//! At that bound `accept` is deferred, as at every other strategy's cap:
//! connections wait in the kernel backlog instead of being accepted and
//! then starved in a queue behind tokio's hidden 512-thread limit.
//!
//! The loop is the crate's accept loop on tokio, run as a task on one of
//! the runtime's workers (so an accept and the new connection's task need
//! no hand-off between threads): readiness of the server socket comes from
//! tokio's reactor (the socket registered for the length of
//! `serve_forever`, `reactor.rs`), the `accept` itself is the crate's
//! (`accept4`, non-blocking at once for a native handler, whose stream is
//! then registered with tokio once), errors are classified by the same
//! [`AcceptBackoff`](crate::server::AcceptBackoff) as everywhere else. A
//! connection limit ([`max_connections`](crate::server::ServerBuilder::max_connections))
//! is a semaphore whose permit is taken *before* `accept` and moved into
//! the request's task (as in tokio's mini-redis).
//!
//! The handler side — the native trait, the adapters, a connection's life
//! — is `handler.rs`.
//!
//! The runtime is tokio's multi-threaded one with its default worker
//! count, one per core, which tokio lets the environment variable
//! `TOKIO_WORKER_THREADS` override. For a server whose handlers only do
//! I/O, `TOKIO_WORKER_THREADS=1` saves the wake-ups between workers
//! (about 15% of the CPU per message of an echo, see `docs/server.md`).
//!
//! ## Why `fn handle(..) -> impl Future + Send` and not a boxed future
//!
//! The trait declares the return type as `impl Future<Output = ..> + Send`
//! (return-position `impl Trait` in traits), and an implementation simply
//! writes `async fn handle`. The `Send` bound is checked where the user
//! writes the handler, so a handler that holds a non-`Send` value across
//! an `.await` fails to compile with an error pointing at that line. The
//! server stores the handler behind one small object-safe adapter that
//! boxes the future of each connection.

mod handler;
mod reactor;

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{LoopWaker, Strategy};
use crate::error::{Error, Result};
use crate::handler::{PeerAddr, Stream};
use crate::server::base::SocketServer;
use crate::server::builder::ServerBuilder;
use crate::server::core::ServerCore;
use crate::server::drain::DrainReport;
use crate::server::incoming::Incoming;
use crate::server::middleware::per_ip::PerIpLimiter;
use crate::server::ops::backoff::{AcceptAction, AcceptBackoff};
use crate::server::options::ServerOptions;
use crate::server::strategy::Serving;
use crate::server::transport::{BindAddress, ServerSocket, TcpTransport};
use crate::server::wakeup::Wakeup;

use handler::{serve_native, DynHandler, ShutdownOnDrop};
pub use handler::{AsyncRequestHandler, Blocking};
use reactor::Reactor;

/// One tokio task per request (the async strategy). See the module docs.
pub struct Async {
    runtime: Option<tokio::runtime::Runtime>,
    tasks: JoinSet<()>,
    connections: Arc<Semaphore>,
    blocking: Arc<Semaphore>,
    spawner: Spawner,
}

impl std::fmt::Debug for Async {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Async")
            .field("tasks", &self.tasks.len())
            .field("native", &self.spawner.native.is_some())
            .finish_non_exhaustive()
    }
}

/// What starting a request's task needs (cloned into the accept task).
#[derive(Clone)]
struct Spawner {
    handle: tokio::runtime::Handle,
    native: Option<Arc<dyn DynHandler>>,
    per_ip: Option<PerIpLimiter>,
    proxy: Option<Duration>,
}

impl Async {
    /// Requests whose tasks have not been reaped yet.
    pub fn active_tasks(&self) -> usize {
        self.tasks.len()
    }
}

fn reap(tasks: &mut JoinSet<()>) {
    while let Some(done) = tasks.try_join_next() {
        report_join(done);
    }
}

impl Spawner {
    /// Starts the task for one request. `permits` hold a connection slot
    /// (and a blocking slot for a blocking handler); `nonblocking`: the
    /// stream was accepted non-blocking.
    fn spawn(
        &self,
        tasks: &mut JoinSet<()>,
        core: &Arc<ServerCore>,
        request: Incoming,
        peer: PeerAddr,
        permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
        nonblocking: bool,
    ) {
        match (&self.native, request) {
            (Some(native), Incoming::Stream(Stream::Tcp(stream))) => {
                let native = native.clone();
                let core = core.clone();
                let per_ip = self.per_ip.clone();
                let proxy = self.proxy;
                let span = tracing::debug_span!("conn", peer = %peer, strategy = %Async::NAME);
                let Some(addr) = peer.as_inet() else {
                    return;
                };
                // Only what the connection needs lives in its task (an idle
                // connection is its task's size, times 10,000).
                let task = async move {
                    let _permits = permits;
                    serve_native(&*native, &core, stream, addr, per_ip, proxy, nonblocking).await;
                };
                tasks.spawn_on(task.instrument(span), &self.handle);
            }
            (_, request) => {
                let core = core.clone();
                let guard = match &request {
                    Incoming::Stream(s) => s.try_clone().ok(),
                    Incoming::Datagram(_) => None,
                };
                // The core opens the connection's span on the handler's thread.
                let task = async move {
                    let _permits = permits;
                    let mut guard = ShutdownOnDrop(guard);
                    let peer2 = peer.clone();
                    let joined =
                        tokio::task::spawn_blocking(move || core.process(request, &peer2)).await;
                    guard.0 = None;
                    if let Err(e) = joined {
                        tracing::error!(peer = %peer, error = %e, "blocking handler task failed");
                    }
                };
                tasks.spawn_on(task, &self.handle);
            }
        }
    }
}

/// A request task itself never panics (handlers run in their own task
/// or under the core's `catch_unwind`); log it if one does.
fn report_join(done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!("request task panicked: {e}");
        }
    }
}

impl Strategy for Async {
    const NAME: &'static str = "async";

    fn new(options: &ServerOptions, _: LoopWaker) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("socketserver-async")
            .max_blocking_threads(options.max_blocking)
            .build()?;
        Ok(Async {
            spawner: Spawner {
                handle: runtime.handle().clone(),
                native: None,
                per_ip: options.per_ip_limit.map(PerIpLimiter::new),
                proxy: options.proxy_protocol,
            },
            runtime: Some(runtime),
            tasks: JoinSet::new(),
            connections: Arc::new(Semaphore::new(
                options.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            blocking: Arc::new(Semaphore::new(
                options.max_blocking.min(Semaphore::MAX_PERMITS),
            )),
        })
    }

    /// Runs one request to the end on the calling thread: only
    /// `handle_request` gets here; `serve_forever` spawns tasks.
    fn process_request(
        &mut self,
        core: &Arc<ServerCore>,
        _: &mut Option<ServerSocket>,
        request: Incoming,
        peer: PeerAddr,
    ) {
        if self.spawner.native.is_some() {
            let (Ok(c), Ok(b)) = (
                self.connections.clone().try_acquire_owned(),
                self.blocking.clone().try_acquire_owned(),
            ) else {
                core.shutdown_request(request);
                return;
            };
            self.spawner
                .spawn(&mut self.tasks, core, request, peer, (c, Some(b)), false);
            let Some(rt) = self.runtime.as_ref() else {
                return;
            };
            let tasks = &mut self.tasks;
            rt.block_on(async {
                while let Some(done) = tasks.join_next().await {
                    report_join(done);
                }
            });
        } else {
            core.process(request, &peer);
        }
    }

    /// Runs the accept loop as a task on one of the runtime's workers (not
    /// on the calling thread): readiness, `accept` and the new connection's
    /// task then share a worker, with no thread hand-off per connection.
    fn serve_forever(&mut self, serving: &mut Serving<'_>) -> Result<()> {
        let runtime = self.runtime.take().ok_or(Error::Closed)?;
        let result = self.run_acceptor(&runtime, serving);
        self.runtime = Some(runtime);
        result
    }

    fn drain(&mut self, block_on_close: bool, timeout: Duration) -> DrainReport {
        let mut report = DrainReport::default();
        let Some(runtime) = self.runtime.as_ref() else {
            return report;
        };
        if !block_on_close {
            report.detached = self.tasks.len();
            self.tasks.detach_all();
            return report;
        }
        let tasks = &mut self.tasks;
        runtime.block_on(async {
            let finished = tokio::time::timeout(timeout, async {
                while let Some(done) = tasks.join_next().await {
                    report.drained += 1;
                    report_join(done);
                }
            })
            .await;
            if finished.is_err() {
                report.aborted = tasks.len();
                tracing::warn!(
                    aborted = report.aborted,
                    "drain timeout reached, aborting connections"
                );
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
            }
        });
        report
    }
}

impl Async {
    fn run_acceptor(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        serving: &mut Serving<'_>,
    ) -> Result<()> {
        let socket = serving.socket.as_ref().ok_or(Error::Closed)?;
        let mut buf = std::mem::take(serving.buf);
        if !socket.is_stream() && buf.len() != serving.options.max_packet_size {
            buf.resize(serving.options.max_packet_size, 0);
        }
        let acceptor = Acceptor {
            socket: Some(Reactor::share(socket)?),
            wake: Some(serving.wakeup.receiver()?),
            wakeup: serving.wakeup.clone(),
            core: serving.core.clone(),
            buf,
            tasks: std::mem::take(&mut self.tasks),
            connections: self.connections.clone(),
            blocking: self.blocking.clone(),
            spawner: self.spawner.clone(),
        };
        let task = runtime.spawn(acceptor.run());
        match runtime.block_on(task) {
            Ok((result, tasks, buf)) => {
                self.tasks = tasks;
                *serving.buf = buf;
                result
            }
            // A panicking hook (`verify_request`, `service_actions`)
            // reaches the caller of `serve_forever`, as in every strategy.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::Closed),
        }
    }
}

/// The accept loop's state, owned, so that the loop is a task of the
/// runtime.
struct Acceptor {
    /// The server socket's copy for the reactor (taken by the loop).
    socket: Option<ServerSocket>,
    /// The wake-up descriptor's receiving end (taken by the loop).
    wake: Option<std::os::unix::net::UnixStream>,
    wakeup: Arc<Wakeup>,
    core: Arc<ServerCore>,
    buf: Vec<u8>,
    tasks: JoinSet<()>,
    connections: Arc<Semaphore>,
    blocking: Arc<Semaphore>,
    spawner: Spawner,
}

impl Acceptor {
    /// The loop; gives back the request tasks (for the drain) and the
    /// datagram buffer.
    async fn run(mut self) -> (Result<()>, JoinSet<()>, Vec<u8>) {
        let result = self.accept_loop().await;
        (result, self.tasks, self.buf)
    }

    async fn accept_loop(&mut self) -> Result<()> {
        let reactor = Reactor::register(self.socket.take().ok_or(Error::Closed)?)?;
        let wake = tokio::net::UnixStream::from_std(self.wake.take().ok_or(Error::Closed)?)?;
        let wakeup = self.wakeup.clone();
        let stopped = async {
            let mut sink = [0u8; 64];
            loop {
                if wakeup.shutdown_requested() {
                    return;
                }
                if wake.readable().await.is_err() {
                    return;
                }
                while let Ok(n) = wake.try_read(&mut sink) {
                    if n == 0 {
                        return;
                    }
                }
            }
        };
        tokio::pin!(stopped);
        let mut backoff = AcceptBackoff::default();
        let core = &self.core;
        let native = self.spawner.native.is_some();
        loop {
            reap(&mut self.tasks);
            let connection = tokio::select! {
                biased;
                _ = &mut stopped => return Ok(()),
                p = self.connections.clone().acquire_owned() => p.map_err(|_| Error::Closed)?,
            };
            let blocking = if native {
                None
            } else {
                tokio::select! {
                    biased;
                    _ = &mut stopped => return Ok(()),
                    p = self.blocking.clone().acquire_owned() => Some(p.map_err(|_| Error::Closed)?),
                }
            };
            let received = tokio::select! {
                biased;
                _ = &mut stopped => return Ok(()),
                r = reactor.get_request(&mut self.buf, native) => r,
            };
            match received {
                Ok((request, peer)) => {
                    backoff.on_success();
                    if core.hooks.verify_request(&request, &peer) {
                        self.spawner.spawn(
                            &mut self.tasks,
                            core,
                            request,
                            peer,
                            (connection, blocking),
                            native,
                        );
                    } else {
                        core.shutdown_request(request);
                    }
                }
                Err(e) => match backoff.on_error(&e) {
                    AcceptAction::Retry => {}
                    AcceptAction::Backoff(d) => {
                        tokio::select! {
                            _ = &mut stopped => return Ok(()),
                            _ = tokio::time::sleep(d) => {}
                        }
                    }
                    AcceptAction::Fatal => {
                        tracing::error!(error = %e, "the server socket is broken; serving stops");
                        return Err(e.into());
                    }
                },
            }
            core.hooks.service_actions();
        }
    }
}

impl Drop for Async {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Blocking handlers whose sockets were shut down get a moment
            // to notice; the runtime does not wait forever for them.
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl ServerBuilder<TcpTransport, Async> {
    /// Creates an async TCP server for a native [`AsyncRequestHandler`]
    /// (one value shared by every connection). Binds and listens unless
    /// [`bind_and_activate(false)`](Self::bind_and_activate).
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    pub fn bind_async<A, H>(
        &self,
        address: A,
        handler: H,
    ) -> Result<SocketServer<TcpTransport, Async>>
    where
        A: BindAddress<TcpTransport>,
        H: AsyncRequestHandler,
    {
        let address = address.into_address()?;
        let mut server = SocketServer::<TcpTransport, Async>::create(
            address,
            None,
            self.hooks.clone(),
            self.options.clone(),
        )?;
        server.strategy_mut().spawner.native = Some(Arc::new(handler));
        Ok(server)
    }

    /// Serves a native [`AsyncRequestHandler`] on an inherited listening
    /// socket (socket activation, re-exec).
    ///
    /// # Errors
    /// As [`from_socket`](Self::from_socket).
    pub fn from_socket_async<H>(
        &self,
        socket: impl Into<OwnedFd>,
        handler: H,
    ) -> Result<SocketServer<TcpTransport, Async>>
    where
        H: AsyncRequestHandler,
    {
        let mut server = SocketServer::<TcpTransport, Async>::adopt(
            socket.into(),
            None,
            self.hooks.clone(),
            self.options.clone(),
        )?;
        server.strategy_mut().spawner.native = Some(Arc::new(handler));
        Ok(server)
    }
}

impl SocketServer<TcpTransport, Async> {
    /// Binds an async TCP server with default options for a native
    /// [`AsyncRequestHandler`]; see [`ServerBuilder::bind_async`].
    ///
    /// # Errors
    /// As [`ServerBuilder::bind`].
    pub fn bind_async<A, H>(address: A, handler: H) -> Result<Self>
    where
        A: BindAddress<TcpTransport>,
        H: AsyncRequestHandler,
    {
        ServerBuilder::new().bind_async(address, handler)
    }
}
