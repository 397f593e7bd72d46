//! The handler side of the async strategy: the native
//! [`AsyncRequestHandler`] trait, its object-safe face, the [`Blocking`]
//! adapter, and the life of one native connection (PROXY header, per-IP
//! slot, the handler under `catch_unwind`).

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::error::Error;
use crate::handler::{run_handler, PeerAddr, Request, RequestHandler, Stream};
use crate::server::core::{panic_message, ServerCore};
use crate::server::middleware::per_ip::PerIpLimiter;
use crate::server::middleware::proxy::read_proxy_header_async;

/// A native async connection handler, for the async strategy over TCP.
///
/// One value serves every connection (it is shared through an `Arc`), so
/// per-connection state lives in the future `handle` returns. Implement it
/// with `async fn` and serve it with
/// [`SocketServer::bind_async`](crate::server::SocketServer::bind_async):
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

/// What a native connection's task needs besides the handler.
pub(super) struct Conn {
    pub(super) core: Arc<ServerCore>,
    pub(super) stream: StdTcpStream,
    pub(super) peer: SocketAddr,
    pub(super) per_ip: Option<PerIpLimiter>,
    pub(super) proxy: Option<Duration>,
    /// The stream was accepted non-blocking.
    pub(super) nonblocking: bool,
    /// A connection slot, and a blocking slot (`handle_request`).
    pub(super) permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

/// The object-safe face of an [`AsyncRequestHandler`]: starts a
/// connection's task from code that knows the handler's type, so the
/// handler's future lives inside the task instead of in a second
/// allocation per connection.
pub(super) trait DynHandler: Send + Sync + 'static {
    /// Spawns the task serving `conn` on the current runtime.
    fn spawn(self: Arc<Self>, tasks: &mut JoinSet<()>, conn: Conn);
}

impl<H: AsyncRequestHandler> DynHandler for H {
    fn spawn(self: Arc<Self>, tasks: &mut JoinSet<()>, conn: Conn) {
        // The span only when it is recorded: a disabled span still makes
        // the task bigger and costs an `Instrumented` layer per poll.
        let span = tracing::debug_span!("conn", peer = %conn.peer, strategy = "async");
        // The task is `serve_native`'s future alone: an idle connection is
        // its task's size, times 10,000.
        let task = serve_native(self, conn);
        if span.is_disabled() {
            tasks.spawn(task);
        } else {
            tasks.spawn(task.instrument(span));
        }
    }
}

/// Runs a blocking [`RequestHandler`] as an [`AsyncRequestHandler`], on
/// tokio's blocking pool.
///
/// Prefer the plain `bind(addr, || Handler)`, which serves a blocking
/// handler under the async strategy with the explicit
/// [`max_blocking`](crate::server::ServerBuilder::max_blocking) bound and
/// over every transport. `Blocking` exists for mixing blocking code into
/// a native handler's server; its requests run on the blocking pool of
/// the worker thread that accepted them (each sized `max_blocking`, with
/// no bound on accepting), and when the server gives up on one at the
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
pub(super) struct ShutdownOnDrop(pub(super) Option<Stream>);

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

/// Polls a handler's future under `catch_unwind`, so a panic is reported
/// with the peer like any handler error — without a second task per
/// connection (a task costs memory that 10,000 idle connections feel).
struct CatchUnwind<'a, F>(Pin<&'a mut F>);

impl<F: Future> Future for CatchUnwind<'_, F> {
    type Output = std::result::Result<F::Output, String>;

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

/// The life of one native connection: PROXY header, per-IP slot, the
/// handler under `catch_unwind`, its error reported.
///
/// The task is this future. It takes the [`Conn`] whole: an `async` block
/// that took it apart and called this with the fields held the `Conn` and
/// the call's arguments both, for as long as the connection lived (with
/// the echo example's handler, 624 bytes against 536 now).
async fn serve_native<H: AsyncRequestHandler>(handler: Arc<H>, conn: Conn) {
    let Conn {
        core,
        stream,
        mut peer,
        per_ip,
        proxy,
        nonblocking,
        permits,
    } = conn;
    let _permits = permits;
    let started = std::time::Instant::now();
    let ready = if nonblocking {
        Ok(())
    } else {
        stream.set_nonblocking(true)
    };
    let mut stream = match ready.and_then(|()| TcpStream::from_std(stream)) {
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
    let future = std::pin::pin!(handler.handle(stream, peer));
    let failed = match CatchUnwind(future).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Error::from(e)),
        Err(message) => Some(Error::Panicked(message)),
    };
    if let Some(e) = failed {
        core.handle_error(&PeerAddr::Inet(peer), &e);
    }
    tracing::debug!(duration = ?started.elapsed(), "connection closed");
}
