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
use crate::server::middleware::proxy::{
    header_timeout, read_proxy_header_async, HeaderFailures, TrustedProxies,
};

/// A native async connection handler, for the async strategy over TCP.
///
/// One value serves every connection (it is shared through an `Arc`), so
/// per-connection state lives in the future `handle` returns, and that
/// future's size is most of what an idle connection costs: a buffer held
/// across an `.await` is held by every idle connection (docs/server.md,
/// "Memory per idle connection"). Implement it with `async fn` and serve
/// it with
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

/// What a native connection's task needs besides the handler: only what
/// differs between connections (the server-wide settings are in
/// [`Native`], which every task shares).
pub(super) struct Conn {
    pub(super) core: Arc<ServerCore>,
    pub(super) stream: StdTcpStream,
    pub(super) peer: SocketAddr,
    /// The stream was accepted non-blocking.
    pub(super) nonblocking: bool,
    /// A connection slot, and a blocking slot (`handle_request`).
    /// Held for the connection's life, released when it ends.
    pub(super) permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

/// A native handler with the server's admission settings, shared by every
/// connection's task through one `Arc`.
pub(super) struct Native<H> {
    pub(super) handler: H,
    pub(super) per_ip: Option<PerIpLimiter>,
    /// Read a PROXY header first, within this long.
    pub(super) proxy: Option<Duration>,
    /// Refuse a peer outside these before reading the header.
    pub(super) proxy_trust: Option<TrustedProxies>,
    /// Logs the connections closed for want of a header.
    pub(super) proxy_failures: Arc<HeaderFailures>,
}

/// The object-safe face of an [`AsyncRequestHandler`]: starts a
/// connection's task from code that knows the handler's type, so the
/// handler's future lives inside the task instead of in a second
/// allocation per connection.
pub(super) trait DynHandler: Send + Sync + 'static {
    /// Spawns the task serving `conn` on the current runtime.
    fn spawn(self: Arc<Self>, tasks: &mut JoinSet<()>, conn: Conn);
}

impl<H: AsyncRequestHandler> DynHandler for Native<H> {
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
/// The task is this future, and what it keeps across the handler's
/// `.await` is in every idle connection's task. So it takes the [`Conn`]
/// whole and uses its fields in place; it is an `async` block, not an
/// `async fn` (which moves its arguments into locals and keeps both
/// copies); and the set-up is a block of its own, so what only the set-up
/// needs (the streams before the handler takes one, the PROXY header) is
/// not kept while the handler runs. Its own share is 128 bytes (a test
/// below keeps it under 160); with the echo example's handler the whole
/// future went from 784 to 376 bytes, and tokio's task from 896 to 512.
#[allow(clippy::manual_async_fn)] // on purpose, see above
fn serve_native<H: AsyncRequestHandler>(
    native: Arc<Native<H>>,
    mut conn: Conn,
) -> impl Future<Output = ()> + Send {
    async move {
        let started = std::time::Instant::now();
        let (future, _ip_permit) = {
            let ready = if conn.nonblocking {
                Ok(())
            } else {
                conn.stream.set_nonblocking(true)
            };
            let mut stream = match ready.and_then(|()| TcpStream::from_std(conn.stream)) {
                Ok(s) => s,
                Err(e) => {
                    conn.core
                        .handle_error(&PeerAddr::Inet(conn.peer), &e.into());
                    return;
                }
            };
            if let Some(t) = native.proxy {
                if let Some(trusted) = &native.proxy_trust {
                    if !trusted.admit(&PeerAddr::Inet(conn.peer)) {
                        return;
                    }
                }
                // Boxed: the timer and read buffer are needed only here.
                let header = Box::pin(tokio::time::timeout(
                    t,
                    read_proxy_header_async(&mut stream),
                ));
                match header.await {
                    Ok(Ok(header)) => {
                        if let Some(src) = header.source {
                            conn.peer = src;
                        }
                    }
                    Ok(Err(e)) => {
                        native.proxy_failures.closed(&conn.peer, &e);
                        return;
                    }
                    Err(_) => {
                        native.proxy_failures.closed(&conn.peer, &header_timeout(t));
                        return;
                    }
                }
            }
            // Boxed: 8 bytes in every task instead of 32, and allocated
            // only when a per-IP limit is set.
            let ip_permit = match &native.per_ip {
                Some(lim) => match lim.try_acquire(conn.peer.ip()) {
                    Some(p) => Some(Box::new(p)),
                    None => {
                        tracing::debug!(peer = %conn.peer, "closing connection: per-IP limit reached");
                        return;
                    }
                },
                None => None,
            };
            (native.handler.handle(stream, conn.peer), ip_permit)
        };
        let future = std::pin::pin!(future);
        let failed = match CatchUnwind(future).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Error::from(e)),
            Err(message) => Some(Error::Panicked(message)),
        };
        if let Some(e) = failed {
            conn.core.handle_error(&PeerAddr::Inet(conn.peer), &e);
        }
        tracing::debug!(duration = ?started.elapsed(), "connection closed");
        // Named, so the block captures the slots (it captures only the
        // fields it names) and holds them to the end.
        drop(conn.permits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::hooks::DefaultHooks;
    use tokio::sync::Semaphore;

    /// A handler whose future holds its stream and address.
    struct Hold;

    impl AsyncRequestHandler for Hold {
        async fn handle(&self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
            stream.readable().await?;
            tracing::trace!(%peer, "readable");
            Ok(())
        }
    }

    fn conn(core: &Arc<ServerCore>, listener: &std::net::TcpListener) -> Conn {
        let addr = listener.local_addr().unwrap();
        let client = StdTcpStream::connect(addr).unwrap();
        let (stream, peer) = listener.accept().unwrap();
        drop(client);
        let slots = Arc::new(Semaphore::new(2));
        Conn {
            core: core.clone(),
            stream,
            peer,
            nonblocking: false,
            permits: (slots.try_acquire_owned().unwrap(), None),
        }
    }

    /// Everything a connection's task keeps besides its handler's future
    /// is in every idle connection: the `Conn`, the clock of the closing
    /// debug line, the per-IP slot, the `catch_unwind` wrapper: 128 bytes
    /// with this toolchain, 240 when `serve_native` was an `async fn`
    /// (which keeps its arguments twice) and 152 before the per-IP slot
    /// was boxed.
    #[test]
    fn a_native_task_adds_little_to_its_handlers_future() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = rt.enter();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let core = Arc::new(ServerCore::new(None, Arc::new(DefaultHooks), None, "async"));
        let native = Arc::new(Native {
            handler: Hold,
            per_ip: None,
            proxy: None,
            proxy_trust: None,
            proxy_failures: HeaderFailures::new(),
        });

        let c = conn(&core, &listener);
        c.stream.set_nonblocking(true).unwrap();
        let stream = TcpStream::from_std(c.stream).unwrap();
        let handler_future = native.handler.handle(stream, c.peer);
        let handler_size = std::mem::size_of_val(&handler_future);
        drop(handler_future);

        let task = serve_native(native.clone(), conn(&core, &listener));
        let task_size = std::mem::size_of_val(&task);
        drop(task);

        let overhead = task_size - handler_size;
        assert!(
            overhead <= 160,
            "a native connection's task is {task_size} bytes around a {handler_size}-byte \
             handler future: {overhead} bytes of its own, more than 160"
        );
    }
}
