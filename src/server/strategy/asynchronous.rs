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
//! The loop is the crate's accept loop on tokio: readiness of the server
//! socket comes from tokio's reactor ([`AsyncFd`]), the request is read by
//! the same `get_request` and classified by the same
//! [`AcceptBackoff`](crate::server::AcceptBackoff) as everywhere else. A
//! connection limit ([`max_connections`](crate::server::ServerBuilder::max_connections))
//! is a semaphore whose permit is taken *before* `accept` and moved into
//! the request's task (as in tokio's mini-redis).
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

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use super::{LoopWaker, Strategy};
use crate::error::{Error, Result};
use crate::handler::{run_handler, PeerAddr, Request, RequestHandler, Stream};
use crate::server::base::SocketServer;
use crate::server::builder::ServerBuilder;
use crate::server::core::{panic_message, ServerCore};
use crate::server::drain::DrainReport;
use crate::server::incoming::Incoming;
use crate::server::middleware::per_ip::PerIpLimiter;
use crate::server::middleware::proxy::read_proxy_header_async;
use crate::server::ops::backoff::{AcceptAction, AcceptBackoff};
use crate::server::options::ServerOptions;
use crate::server::strategy::Serving;
use crate::server::transport::{BindAddress, ServerSocket, TcpTransport};

/// A native async connection handler, for the async strategy over TCP.
///
/// One value serves every connection (it is shared through an `Arc`), so
/// per-connection state lives in the future `handle` returns. Implement it
/// with `async fn` and serve it with [`SocketServer::bind_async`]:
///
/// ```no_run
/// use std::{io, net::SocketAddr};
/// use socketserver::server::{AsyncRequestHandler, AsyncTcpServer, Server};
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
/// use tokio::net::TcpStream;
///
/// struct Echo;
///
/// impl AsyncRequestHandler for Echo {
///     async fn handle(&self, stream: TcpStream, _peer: SocketAddr) -> io::Result<()> {
///         let (r, mut w) = stream.into_split();
///         let mut r = BufReader::new(r);
///         let mut line = Vec::new();
///         while r.read_until(b'\n', &mut line).await? > 0 {
///             w.write_all(&line).await?;
///             line.clear();
///         }
///         Ok(())
///     }
/// }
///
/// let mut server = AsyncTcpServer::bind_async("127.0.0.1:9000", Echo)?;
/// server.serve_forever()?;
/// server.server_close();
/// # Ok::<(), socketserver::Error>(())
/// ```
pub trait AsyncRequestHandler: Send + Sync + 'static {
    /// Serves one connection. `peer` is the client's address (the real one
    /// from the PROXY header when PROXY protocol is enabled).
    ///
    /// # Errors
    /// Any error goes to the server's `handle_error` hook and the
    /// connection is closed; the server keeps serving. A panic is treated
    /// the same way.
    fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

type BoxFuture<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

/// The object-safe face of an [`AsyncRequestHandler`].
trait DynHandler: Send + Sync + 'static {
    fn call(&self, stream: TcpStream, peer: SocketAddr) -> BoxFuture<'_>;
}

impl<H: AsyncRequestHandler> DynHandler for H {
    fn call(&self, stream: TcpStream, peer: SocketAddr) -> BoxFuture<'_> {
        Box::pin(self.handle(stream, peer))
    }
}

/// Runs a blocking [`RequestHandler`] as an [`AsyncRequestHandler`], on
/// tokio's blocking pool.
///
/// Prefer the plain `bind(addr, || Handler)`, which serves a blocking
/// handler under the async strategy with the explicit
/// [`max_blocking`](crate::server::ServerBuilder::max_blocking) bound and
/// over every transport. `Blocking` exists for mixing blocking code into
/// a native handler's server; its requests share the runtime's blocking
/// pool (sized `max_blocking`), and when the server gives up on one at the
/// drain deadline its socket is shut down so the handler returns.
pub struct Blocking<F> {
    factory: F,
}

impl<F> std::fmt::Debug for Blocking<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blocking")
    }
}

impl<F> Blocking<F> {
    /// Wraps a handler factory such as `|| Echo`.
    pub fn new(factory: F) -> Self {
        Blocking { factory }
    }
}

/// Shuts a connection down when dropped unless disarmed: wakes a blocking
/// handler whose async task was aborted at the drain deadline.
struct ShutdownOnDrop(Option<Stream>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl<F, H> AsyncRequestHandler for Blocking<F>
where
    F: Fn() -> H + Send + Sync + 'static,
    H: RequestHandler,
{
    async fn handle(&self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        let mut guard = ShutdownOnDrop(Some(Stream::Tcp(stream.try_clone()?)));
        let mut handler = (self.factory)();
        let joined = tokio::task::spawn_blocking(move || {
            let mut req = Request::from_stream(stream, peer);
            run_handler(&mut handler, &mut req)
        })
        .await;
        guard.0 = None;
        match joined {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(format!("blocking handler failed: {e}"))),
        }
    }
}

/// One tokio task per request (the async strategy). See the module docs.
pub struct Async {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    tasks: JoinSet<()>,
    connections: Arc<Semaphore>,
    blocking: Arc<Semaphore>,
    native: Option<Arc<dyn DynHandler>>,
    per_ip: Option<PerIpLimiter>,
    proxy: Option<Duration>,
}

impl std::fmt::Debug for Async {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Async")
            .field("tasks", &self.tasks.len())
            .field("native", &self.native.is_some())
            .finish_non_exhaustive()
    }
}

impl Async {
    /// Requests whose tasks have not been reaped yet.
    pub fn active_tasks(&self) -> usize {
        self.tasks.len()
    }

    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            report_join(done);
        }
    }

    /// Starts the task for one request. `permit` holds a connection slot.
    fn spawn(
        &mut self,
        core: &Arc<ServerCore>,
        request: Incoming,
        peer: PeerAddr,
        permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
    ) {
        let handle = self.handle.clone();
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
                    serve_native(&*native, &core, stream, addr, per_ip, proxy).await;
                };
                self.tasks.spawn_on(task.instrument(span), &handle);
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
                self.tasks.spawn_on(task, &handle);
            }
        }
    }
}

/// Polls a handler's future under `catch_unwind`, so a panic is reported
/// with the peer like any handler error — without a second task per
/// connection (a task costs memory that 10,000 idle connections feel).
struct CatchUnwind<'a>(BoxFuture<'a>);

impl Future for CatchUnwind<'_> {
    type Output = std::result::Result<io::Result<()>, String>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(r)) => std::task::Poll::Ready(Ok(r)),
            Err(payload) => std::task::Poll::Ready(Err(panic_message(&*payload))),
        }
    }
}

async fn serve_native(
    handler: &dyn DynHandler,
    core: &ServerCore,
    stream: StdTcpStream,
    mut peer: SocketAddr,
    per_ip: Option<PerIpLimiter>,
    proxy: Option<Duration>,
) {
    let started = std::time::Instant::now();
    let mut stream = match stream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(stream))
    {
        Ok(s) => s,
        Err(e) => {
            core.handle_error(&PeerAddr::Inet(peer), &e.into());
            return;
        }
    };
    if let Some(t) = proxy {
        // Boxed: the timer and read buffer are needed only here, and an
        // inline future would make every connection's task that much larger.
        let header = Box::pin(tokio::time::timeout(
            t,
            read_proxy_header_async(&mut stream),
        ));
        match header.await {
            Ok(Ok(header)) => {
                if let Some(src) = header.source {
                    peer = src;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "closing connection: bad PROXY header");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "closing connection: no PROXY header in time");
                return;
            }
        }
    }
    let _ip_permit = match &per_ip {
        Some(lim) => match lim.try_acquire(peer.ip()) {
            Some(p) => Some(p),
            None => {
                tracing::debug!(%peer, "closing connection: per-IP limit reached");
                return;
            }
        },
        None => None,
    };
    let failed = match CatchUnwind(handler.call(stream, peer)).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Error::from(e)),
        Err(message) => Some(Error::Panicked(message)),
    };
    if let Some(e) = failed {
        core.handle_error(&PeerAddr::Inet(peer), &e);
    }
    tracing::debug!(duration = ?started.elapsed(), "connection closed");
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
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            tasks: JoinSet::new(),
            connections: Arc::new(Semaphore::new(
                options.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            blocking: Arc::new(Semaphore::new(
                options.max_blocking.min(Semaphore::MAX_PERMITS),
            )),
            native: None,
            per_ip: options.per_ip_limit.map(PerIpLimiter::new),
            proxy: options.proxy_protocol,
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
        if self.native.is_some() {
            let (Ok(c), Ok(b)) = (
                self.connections.clone().try_acquire_owned(),
                self.blocking.clone().try_acquire_owned(),
            ) else {
                core.shutdown_request(request);
                return;
            };
            self.spawn(core, request, peer, (c, Some(b)));
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

    fn serve_forever(&mut self, serving: &mut Serving<'_>) -> Result<()> {
        let runtime = self.runtime.take().ok_or(Error::Closed)?;
        let result = runtime.block_on(self.accept_loop(serving));
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

/// The server socket's duplicate registered with tokio for the length of
/// `serve_forever` (dropped when it returns, so the drain holds no extra
/// copy of the listening socket).
enum Reactor {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
    Udp(tokio::net::UdpSocket),
    UnixDatagram(tokio::net::UnixDatagram),
}

impl Reactor {
    fn register(socket: &ServerSocket) -> io::Result<Reactor> {
        Ok(match socket {
            ServerSocket::Tcp(l) => {
                Reactor::Tcp(tokio::net::TcpListener::from_std(l.try_clone()?)?)
            }
            ServerSocket::UnixStream(l) => {
                Reactor::Unix(tokio::net::UnixListener::from_std(l.try_clone()?)?)
            }
            ServerSocket::Udp(s) => Reactor::Udp(tokio::net::UdpSocket::from_std(s.try_clone()?)?),
            ServerSocket::UnixDatagram(s) => {
                Reactor::UnixDatagram(tokio::net::UnixDatagram::from_std(s.try_clone()?)?)
            }
        })
    }

    /// Python's `get_request`, awaited: a connection with blocking I/O
    /// for the handler, or a datagram read by the server socket's own
    /// `receive`.
    async fn get_request(
        &self,
        socket: &ServerSocket,
        buf: &mut [u8],
    ) -> io::Result<(Incoming, PeerAddr)> {
        match self {
            Reactor::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let s = s.into_std()?;
                s.set_nonblocking(false)?;
                Ok((Incoming::Stream(Stream::Tcp(s)), peer.into()))
            }
            Reactor::Unix(l) => {
                let (s, _) = l.accept().await?;
                let s = s.into_std()?;
                s.set_nonblocking(false)?;
                let peer = s.peer_addr()?;
                Ok((Incoming::Stream(Stream::Unix(s)), peer.into()))
            }
            Reactor::Udp(u) => loop {
                u.readable().await?;
                match u.try_io(Interest::READABLE, || socket.receive(buf)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            },
            Reactor::UnixDatagram(u) => loop {
                u.readable().await?;
                match u.try_io(Interest::READABLE, || socket.receive(buf)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            },
        }
    }
}

impl Async {
    async fn accept_loop(&mut self, serving: &mut Serving<'_>) -> Result<()> {
        let socket = serving.socket.as_ref().ok_or(Error::Closed)?;
        let reactor = Reactor::register(socket)?;
        let wake = tokio::net::UnixStream::from_std(serving.wakeup.receiver()?)?;
        let wakeup = serving.wakeup.clone();
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
        let core = serving.core;
        let max_packet = serving.options.max_packet_size;
        let buf = &mut *serving.buf;
        if !socket.is_stream() && buf.len() != max_packet {
            buf.resize(max_packet, 0);
        }
        loop {
            self.reap();
            let connection = tokio::select! {
                biased;
                _ = &mut stopped => return Ok(()),
                p = self.connections.clone().acquire_owned() => p.map_err(|_| Error::Closed)?,
            };
            let blocking = if self.native.is_some() {
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
                r = reactor.get_request(socket, buf) => r,
            };
            match received {
                Ok((request, peer)) => {
                    backoff.on_success();
                    if core.hooks.verify_request(&request, &peer) {
                        self.spawn(core, request, peer, (connection, blocking));
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
        server.strategy_mut().native = Some(Arc::new(handler));
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
        server.strategy_mut().native = Some(Arc::new(handler));
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
