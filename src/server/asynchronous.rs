//! The async strategy: one tokio task per connection.
//!
//! Threads and processes cost megabytes each; a parked tokio task costs a
//! few hundred bytes plus its buffers, so [`AsyncTcpServer`] is the strategy
//! for many mostly idle connections (chat, push, long polling). Handlers
//! implement [`AsyncRequestHandler`] — an `async fn handle`. A handler
//! written for the blocking strategies runs here unchanged through
//! [`Blocking`], which moves each connection to tokio's blocking pool.
//!
//! ## Why `fn handle(..) -> impl Future + Send` and not a boxed future
//!
//! The trait declares the return type as `impl Future<Output = ..> + Send`
//! (return-position `impl Trait` in traits, stable since Rust 1.75), and an
//! implementation simply writes `async fn handle`. Compared with returning
//! `Pin<Box<dyn Future + Send>>` (the `async-trait` crate's approach) this
//! costs no allocation per connection and no macro, and the `Send` bound is
//! checked where the user writes the handler, so a handler that holds a
//! non-`Send` value across an `.await` fails to compile with an error
//! pointing at that line rather than deep inside `tokio::spawn`. The price
//! is that the trait is not object safe; the server is generic over the
//! handler type instead, which it wants to be anyway.
//!
//! ## Limits and shutdown
//!
//! A connection limit is a [`Semaphore`]: the accept loop takes a permit
//! *before* calling `accept` and moves it into the connection's task (as in
//! tokio's mini-redis), so at the limit new connections wait in the kernel's
//! backlog instead of being accepted and starved. An optional
//! [`PerIpLimiter`] closes over-limit clients cleanly. `EMFILE`/`ENFILE`
//! back off through [`AcceptBackoff`] instead of spinning.
//!
//! [`AsyncShutdownHandle::shutdown`] (or SIGTERM/SIGINT with
//! [`AsyncTcpServer::set_shutdown_on_signals`]) stops accepting at once —
//! the listening socket is closed — then waits for in-flight connections up
//! to the drain timeout and aborts whatever is left.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::handler::{run_handler, Request, RequestHandler};
use crate::server::backoff::{AcceptAction, AcceptBackoff};
use crate::server::per_ip::PerIpLimiter;
use crate::server::proxy::{read_proxy_header_async, ProxyHeader};
use crate::{Error, Result};

/// A connection handler for [`AsyncTcpServer`].
///
/// One value serves every connection (it is shared through an `Arc`), so
/// per-connection state lives in the future `handle` returns. Implement it
/// with `async fn`:
///
/// ```no_run
/// use std::{io, net::SocketAddr};
/// use socketserver::server::{AsyncRequestHandler, AsyncTcpServer};
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
/// # fn main() -> socketserver::Result<()> {
/// AsyncTcpServer::bind("127.0.0.1:9000", Echo)?.serve_forever()?;
/// # Ok(()) }
/// ```
pub trait AsyncRequestHandler: Send + Sync + 'static {
    /// Serves one connection. `peer` is the client's address (the real one
    /// from the PROXY header when PROXY protocol is enabled).
    ///
    /// # Errors
    /// Any error is logged with the peer address and the connection is
    /// closed; the server keeps serving. A panic is treated the same way.
    fn handle(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

/// Runs a blocking [`RequestHandler`] on the async server.
///
/// Each connection is converted to a blocking `std::net::TcpStream` and
/// served on tokio's blocking thread pool with a fresh handler from the
/// factory, exactly as the threading strategy would serve it — so a handler
/// written for `ThreadingTcpServer` switches strategy by changing one line.
/// The connection limit still applies; the blocking pool (512 threads by
/// default) bounds how many run at once.
///
/// When the server gives up on a connection at the end of its drain timeout,
/// the socket is shut down so the blocked handler sees end of file or an
/// error and returns.
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

/// Shuts a socket down when dropped unless disarmed: wakes a blocking
/// handler whose async task was aborted.
struct ShutdownOnDrop(Option<std::net::TcpStream>);

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
        let mut guard = ShutdownOnDrop(Some(stream.try_clone()?));
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

/// Stops a running [`AsyncTcpServer`] from any thread.
#[derive(Debug, Clone)]
pub struct AsyncShutdownHandle {
    tx: Arc<watch::Sender<bool>>,
}

impl AsyncShutdownHandle {
    /// Asks the server to stop accepting and drain. Returns at once; the
    /// server's `serve` returns when the drain is over. Idempotent.
    pub fn shutdown(&self) {
        self.tx.send_replace(true);
    }
}

/// What happened to the connections that were open at shutdown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections that finished on their own within the drain timeout.
    pub drained: usize,
    /// Connections still running at the deadline, which were aborted.
    pub aborted: usize,
}

/// A TCP server running each connection as a tokio task.
#[doc(alias = "AsyncTCPServer")]
pub struct AsyncTcpServer<H> {
    listener: StdListener,
    handler: Arc<H>,
    max_connections: usize,
    drain_timeout: Duration,
    per_ip: Option<PerIpLimiter>,
    proxy_protocol: bool,
    proxy_timeout: Duration,
    signals: bool,
    shutdown: Arc<watch::Sender<bool>>,
}

impl<H> std::fmt::Debug for AsyncTcpServer<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncTcpServer")
            .field("listener", &self.listener)
            .field("max_connections", &self.max_connections)
            .field("drain_timeout", &self.drain_timeout)
            .field("per_ip", &self.per_ip)
            .field("proxy_protocol", &self.proxy_protocol)
            .finish()
    }
}

impl<H: AsyncRequestHandler> AsyncTcpServer<H> {
    /// Binds and listens on `addr` (with `SO_REUSEADDR`, backlog 1024).
    ///
    /// # Errors
    /// The address does not resolve, or `bind`/`listen` failed.
    pub fn bind(addr: impl ToSocketAddrs, handler: H) -> Result<Self> {
        let addr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::InvalidArgument("address resolved to nothing".into()))?;
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        sock.set_reuse_address(true)?;
        sock.bind(&addr.into())?;
        sock.listen(1024)?;
        Self::from_listener(sock.into(), handler)
    }

    /// Serves on a listening socket that already exists — one inherited
    /// through systemd socket activation or a re-exec, for example.
    ///
    /// # Errors
    /// The socket cannot be made non-blocking.
    pub fn from_listener(listener: StdListener, handler: H) -> Result<Self> {
        listener.set_nonblocking(true)?;
        let (tx, _rx) = watch::channel(false);
        Ok(AsyncTcpServer {
            listener,
            handler: Arc::new(handler),
            max_connections: 10_000,
            drain_timeout: Duration::from_secs(30),
            per_ip: None,
            proxy_protocol: false,
            proxy_timeout: Duration::from_secs(5),
            signals: false,
            shutdown: Arc::new(tx),
        })
    }

    /// The address the server listens on (read the port back after binding
    /// port 0).
    ///
    /// # Errors
    /// `getsockname` failed.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Maximum simultaneous connections; at the limit, `accept` waits until
    /// one closes. Default is 10,000.
    pub fn set_max_connections(&mut self, n: usize) -> &mut Self {
        self.max_connections = n.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// How long shutdown waits for in-flight connections before aborting
    /// them. Default is 30 seconds.
    pub fn set_drain_timeout(&mut self, d: Duration) -> &mut Self {
        self.drain_timeout = d;
        self
    }

    /// Limits simultaneous connections per client address; an over-limit
    /// client is accepted and closed at once. Default is no limit.
    pub fn set_per_ip_limit(&mut self, max: Option<usize>) -> &mut Self {
        self.per_ip = max.map(PerIpLimiter::new);
        self
    }

    /// Expects a PROXY protocol v1 or v2 header at the start of every
    /// connection (for servers behind HAProxy and similar) and hands the
    /// handler the client address it carries. A connection without a valid
    /// header within `timeout` is closed. Default is off.
    pub fn set_proxy_protocol(&mut self, enabled: bool, timeout: Duration) -> &mut Self {
        self.proxy_protocol = enabled;
        self.proxy_timeout = timeout;
        self
    }

    /// Also shut down (gracefully, as [`AsyncShutdownHandle::shutdown`]) on
    /// SIGTERM and SIGINT. Default is off.
    pub fn set_shutdown_on_signals(&mut self, enabled: bool) -> &mut Self {
        self.signals = enabled;
        self
    }

    /// A handle that stops the server from another thread or task.
    pub fn shutdown_handle(&self) -> AsyncShutdownHandle {
        AsyncShutdownHandle {
            tx: self.shutdown.clone(),
        }
    }

    /// Runs the server on the current tokio runtime until shut down.
    ///
    /// # Errors
    /// The listener could not be registered with tokio, signal handlers
    /// could not be installed, or `accept` failed in a way that means the
    /// listening socket is broken.
    pub async fn serve(self) -> Result<DrainReport> {
        let AsyncTcpServer {
            listener,
            handler,
            max_connections,
            drain_timeout,
            per_ip,
            proxy_protocol,
            proxy_timeout,
            signals,
            shutdown,
        } = self;
        let listener = TcpListener::from_std(listener)?;
        let mut stop = shutdown.subscribe();
        if signals {
            spawn_signal_watcher(shutdown.clone())?;
        }
        let limit = Arc::new(Semaphore::new(max_connections));
        let mut tasks = JoinSet::new();
        let mut backoff = AcceptBackoff::default();
        let stopped = async move {
            // Err means every sender is gone: nobody can stop us any more.
            if stop.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(stopped);

        loop {
            while let Some(done) = tasks.try_join_next() {
                report_join(done);
            }
            let permit = tokio::select! {
                biased;
                _ = &mut stopped => break,
                p = limit.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                biased;
                _ = &mut stopped => break,
                r = listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(c) => {
                    backoff.on_success();
                    c
                }
                Err(e) => match backoff.on_error(&e) {
                    AcceptAction::Retry => continue,
                    AcceptAction::Backoff(d) => {
                        tokio::select! {
                            _ = &mut stopped => break,
                            _ = tokio::time::sleep(d) => continue,
                        }
                    }
                    AcceptAction::Fatal => return Err(e.into()),
                },
            };
            let handler = handler.clone();
            let per_ip = per_ip.clone();
            tasks.spawn(async move {
                let _permit = permit;
                serve_one(
                    &*handler,
                    stream,
                    peer,
                    per_ip,
                    proxy_protocol.then_some(proxy_timeout),
                )
                .await;
            });
        }

        // Stop accepting: close the listening socket so new connections are
        // refused instead of piling up in a backlog nobody reads.
        drop(listener);
        Ok(drain(tasks, drain_timeout).await)
    }

    /// Runs the server on a new multi-threaded tokio runtime, blocking the
    /// calling thread until it is shut down (Python's `serve_forever`).
    ///
    /// # Errors
    /// As [`serve`](Self::serve), or the runtime could not be built.
    pub fn serve_forever(self) -> Result<DrainReport> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let report = rt.block_on(self.serve());
        // Blocking handlers whose sockets were shut down get a moment to
        // notice; the runtime does not wait forever for them.
        rt.shutdown_timeout(Duration::from_secs(1));
        report
    }
}

async fn serve_one<H: AsyncRequestHandler>(
    handler: &H,
    stream: TcpStream,
    mut peer: SocketAddr,
    per_ip: Option<PerIpLimiter>,
    proxy_timeout: Option<Duration>,
) {
    let mut stream = stream;
    if let Some(t) = proxy_timeout {
        match tokio::time::timeout(t, read_proxy_header_async(&mut stream)).await {
            Ok(Ok(ProxyHeader { source, .. })) => {
                if let Some(src) = source {
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
    if let Err(e) = handler.handle(stream, peer).await {
        tracing::debug!(%peer, error = %e, "handler failed");
    }
}

fn report_join(done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            tracing::error!("connection handler panicked: {e}");
        }
    }
}

async fn drain(mut tasks: JoinSet<()>, timeout: Duration) -> DrainReport {
    let mut report = DrainReport::default();
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
    report
}

fn spawn_signal_watcher(tx: Arc<watch::Sender<bool>>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut closed = tx.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => { tx.send_replace(true); }
            _ = int.recv() => { tx.send_replace(true); }
            _ = closed.wait_for(|s| *s) => {}
        }
    });
    Ok(())
}
