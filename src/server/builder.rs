//! [`ServerBuilder`]: configures and binds a server (Python's class
//! attributes and the `bind_and_activate` argument), each setter ending
//! with its default.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::handler::RequestHandler;

use super::base::SocketServer;
use super::core::Factory;
use super::hooks::{DefaultHooks, Hooks};
use super::middleware::layers;
use super::middleware::proxy::{Cidr, TrustedProxies};
use super::middleware::shared_limit::{self, RefusalHook, SharedLimiter};
use super::options::ServerOptions;
use super::strategy::Strategy;
use super::transport::{BindAddress, Transport};

/// Configures and binds a server: Python's class attributes and the
/// `bind_and_activate` argument.
///
/// ```no_run
/// use std::io;
/// use socketserver::server::{Server, ThreadingTcpServer};
/// use socketserver::{Request, RequestHandler};
///
/// struct Hello;
/// impl RequestHandler for Hello {
///     fn handle(&mut self, req: &mut Request) -> io::Result<()> {
///         io::Write::write_all(&mut req.wfile(), b"hello\n")
///     }
/// }
///
/// let mut server = ThreadingTcpServer::builder()
///     .allow_reuse_address(true)
///     .max_threads(64)
///     .bind("127.0.0.1:0", || Hello)?;
/// server.serve_forever()?;
/// # Ok::<(), socketserver::Error>(())
/// ```
pub struct ServerBuilder<T, S> {
    pub(crate) options: ServerOptions,
    pub(crate) hooks: Arc<dyn Hooks>,
    /// Run for a connection refused by the shared limits.
    refusal: Option<RefusalHook>,
    _types: PhantomData<fn() -> (T, S)>,
}

impl<T, S> fmt::Debug for ServerBuilder<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<T: Transport, S: Strategy> Default for ServerBuilder<T, S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Transport, S: Strategy> ServerBuilder<T, S> {
    /// A builder with Python's defaults (except the backlog, see
    /// [`backlog`](Self::backlog)).
    pub fn new() -> Self {
        ServerBuilder {
            options: ServerOptions::default(),
            hooks: Arc::new(DefaultHooks),
            refusal: None,
            _types: PhantomData,
        }
    }

    /// Whether [`bind`](Self::bind) also binds and listens. With `false`
    /// the socket is only created: set options through
    /// [`SocketServer::socket`], then call `server_bind` and
    /// `server_activate` yourself. Default is `true`.
    pub fn bind_and_activate(&mut self, yes: bool) -> &mut Self {
        self.options.bind_and_activate = yes;
        self
    }

    /// Sets `SO_REUSEADDR` before binding, so a restarted server can bind
    /// while old connections sit in `TIME_WAIT`. Default is `true` for TCP
    /// and `false` for the other transports. (Python's default is `False`
    /// everywhere, which makes a restarted TCP server fail with "address
    /// already in use" for a minute; on Linux `SO_REUSEADDR` never lets two
    /// live listeners share a port, that is `SO_REUSEPORT`.)
    pub fn allow_reuse_address(&mut self, yes: bool) -> &mut Self {
        self.options.allow_reuse_address = Some(yes);
        self
    }

    /// Sets `SO_REUSEPORT` before binding, so several sockets can share the
    /// port. Default is `false`.
    pub fn allow_reuse_port(&mut self, yes: bool) -> &mut Self {
        self.options.allow_reuse_port = yes;
        self
    }

    /// The `listen` backlog for stream servers. Default is `SOMAXCONN`
    /// (Python's 5 drops connections under load; the kernel caps the value
    /// at `net.core.somaxconn` anyway).
    pub fn backlog(&mut self, backlog: i32) -> &mut Self {
        self.options.backlog = backlog;
        self
    }

    /// Threading: do not track worker threads, so closing the server never
    /// waits for them. Default is `false`.
    pub fn daemon_threads(&mut self, yes: bool) -> &mut Self {
        self.options.daemon_threads = yes;
        self
    }

    /// `server_close` waits for running handlers (threads, children,
    /// prefork workers, async tasks) to finish, up to the
    /// [`drain_timeout`](Self::drain_timeout). Default is `true`.
    pub fn block_on_close(&mut self, yes: bool) -> &mut Self {
        self.options.block_on_close = yes;
        self
    }

    /// Threading: at most this many handlers at once; when the cap is
    /// reached the loop stops accepting (connections wait in the backlog)
    /// until one finishes. Default is no cap.
    pub fn max_threads(&mut self, max: usize) -> &mut Self {
        self.options.max_threads = Some(max.max(1));
        self
    }

    /// Forking: at most this many children at once; when the cap is
    /// reached the loop stops accepting until one exits. Default is 40.
    pub fn max_children(&mut self, max: usize) -> &mut Self {
        self.options.max_children = max.max(1);
        self
    }

    /// How long `handle_request` waits before calling `handle_timeout`.
    /// Default is no timeout (wait forever).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// Read/write timeout set on every accepted connection before the
    /// handler runs (Python's `StreamRequestHandler.timeout`). Default is
    /// none.
    ///
    /// Over TCP it is set once, on the listening socket before `listen`
    /// (in `server_activate`): Linux makes each TCP connection a copy of
    /// its listening socket, timeouts included, so no connection costs a
    /// system call for it. A blocking `accept` on that socket (for example
    /// through [`SocketServer::socket`](super::SocketServer::socket))
    /// then also gives up after this long with `WouldBlock`. Over Unix
    /// sockets, and on a socket the server adopted rather than bound
    /// (connections may already be queued on it), it is set on each
    /// connection instead.
    pub fn connection_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.options.connection_timeout = Some(timeout);
        self
    }

    /// Largest datagram received whole; longer ones are truncated. Default
    /// is 65536 (Python's 8192 truncates large UDP packets).
    pub fn max_packet_size(&mut self, size: usize) -> &mut Self {
        self.options.max_packet_size = size.max(1);
        self
    }

    /// How long `server_close` lets requests in flight finish (after the
    /// listening socket is closed) before it ends them: kills their
    /// processes (forking, prefork) or aborts their tasks and shuts their
    /// connections down (async); threads cannot be ended and are left
    /// running. Default is 30 seconds.
    pub fn drain_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.options.drain_timeout = timeout;
        self
    }

    /// Expects a PROXY protocol v1 or v2 header at the start of every
    /// stream connection (for servers behind HAProxy) and hands the
    /// handler the client address it carries; a connection without a
    /// valid header within `timeout` is closed (`None` turns the PROXY
    /// protocol off). Applies to every strategy (the blocking handlers
    /// through [`layers::ProxyProtocol`]). Default is off.
    ///
    /// **Restrict who may send the header** with
    /// [`proxy_protocol_from`](Self::proxy_protocol_from): without it the
    /// header is believed from any peer, so anyone who can reach the port
    /// directly can claim any address (the server logs a warning saying
    /// so when it is created).
    pub fn proxy_protocol(&mut self, timeout: Option<Duration>) -> &mut Self {
        self.options.proxy_protocol = timeout;
        self
    }

    /// Accepts a PROXY header only from peers in `trusted` (the load
    /// balancers' addresses or networks; nginx's `set_real_ip_from`) and
    /// from Unix-socket peers; **a connection from any other peer is
    /// refused**: closed before a byte is read, without running the
    /// handler, logged at `debug`, with a `warn` at the first refusal and
    /// then at most one a minute counting them (see [`TrustedProxies`]).
    /// A listener that expects PROXY headers expects only balancer
    /// traffic; refusing, rather than serving the peer under its own
    /// address, keeps a client that goes around the balancer out
    /// entirely. The same in every strategy, for blocking and native
    /// async handlers.
    ///
    /// Takes effect with [`proxy_protocol`](Self::proxy_protocol); alone
    /// it does nothing (no header is read, so none can be forged). An
    /// empty list trusts only Unix-socket peers. Calling it again
    /// replaces the list. Default is any peer (no restriction).
    ///
    /// ```no_run
    /// use std::net::Ipv6Addr;
    /// use std::time::Duration;
    /// use socketserver::server::proxy::Cidr;
    /// use socketserver::server::{Server, ThreadingTcpServer};
    /// # struct Echo;
    /// # impl socketserver::RequestHandler for Echo {
    /// #     fn handle(&mut self, _: &mut socketserver::Request) -> std::io::Result<()> { Ok(()) }
    /// # }
    /// let mut server = ThreadingTcpServer::builder()
    ///     .proxy_protocol(Some(Duration::from_secs(5)))
    ///     .proxy_protocol_from([
    ///         "10.0.0.0/24".parse::<Cidr>()?,
    ///         "2001:db8:1::/64".parse()?,
    ///         Ipv6Addr::LOCALHOST.into(),
    ///     ])
    ///     .bind("[::]:9000", || Echo)?;
    /// server.serve_forever()?;
    /// # Ok::<(), socketserver::Error>(())
    /// ```
    ///
    /// [`TrustedProxies`]: super::proxy::TrustedProxies
    pub fn proxy_protocol_from<I>(&mut self, trusted: I) -> &mut Self
    where
        I: IntoIterator,
        I::Item: Into<Cidr>,
    {
        self.options.proxy_trust = Some(TrustedProxies::new(trusted));
        self
    }

    /// Answers HAProxy's `agent-check` on `addr` (`up 100%`, `drain`,
    /// `maint`, `down`; see [`health`](super::health)): `up` while
    /// serving, `drain` from the moment a shutdown or restart begins.
    /// Change the state with
    /// [`SocketServer::health_handle`](super::SocketServer::health_handle).
    /// Default is no health port.
    pub fn health(&mut self, addr: std::net::SocketAddr) -> &mut Self {
        self.options.health = Some(super::options::HealthSource::Bind(addr));
        self
    }

    /// Like [`health`](Self::health), on a socket that is already
    /// listening (the agent port handed over by
    /// [`spawn_successor`](super::spawn_successor)).
    pub fn health_socket(&mut self, listener: std::net::TcpListener) -> &mut Self {
        self.options.health = Some(super::options::HealthSource::Socket(Arc::new(listener)));
        self
    }

    /// How long the server keeps accepting after a shutdown or restart
    /// began and `drain` was reported (agent check, systemd
    /// `STOPPING=1`), before it stops accepting and closes the listening
    /// socket: at least the balancer's check interval (twice is safer),
    /// so it stops sending new connections before the port closes.
    /// Default is zero (stop at once).
    pub fn drain_notice(&mut self, notice: Duration) -> &mut Self {
        self.options.drain_notice = notice;
        self
    }

    /// Sends systemd `READY=1` when `serve_forever` starts and
    /// `STOPPING=1` when a shutdown begins, to `$NOTIFY_SOCKET` (see
    /// [`notify`](super::notify)); nothing when the variable is unset.
    /// Default is off.
    pub fn systemd_notify(&mut self, yes: bool) -> &mut Self {
        self.options.systemd_notify = yes;
        self
    }

    /// At most `max` simultaneous connections per client IP address; an
    /// over-limit client gets the [`limit_refusal`](Self::limit_refusal)
    /// hook (if set) and is closed. The counts live in shared memory mapped
    /// at bind time ([`SharedLimiter`]), so the limit is identical in every
    /// strategy: threads, forked children and prefork workers all count in
    /// one table, and a slot is freed however its session ends (a child
    /// killed with SIGKILL included). Async native handlers count in their
    /// own process, which is the whole server. Default is no limit.
    pub fn per_ip_limit(&mut self, max: Option<usize>) -> &mut Self {
        self.options.per_ip_limit = max;
        self
    }

    /// At most `max` connections served at once, counted across every
    /// process of the server in the same shared table as
    /// [`per_ip_limit`](Self::per_ip_limit); a client beyond it gets the
    /// [`limit_refusal`](Self::limit_refusal) hook and is closed (unlike
    /// the strategies' own caps, [`max_threads`](Self::max_threads),
    /// [`max_children`](Self::max_children), [`max_workers`](Self::max_workers),
    /// [`max_connections`](Self::max_connections), which stop accepting and
    /// leave clients waiting in the backlog). Applies to
    /// [`RequestHandler`]s in every strategy; async native handlers have
    /// [`max_connections`](Self::max_connections) instead. Default is no
    /// limit.
    pub fn connection_limit(&mut self, max: Option<usize>) -> &mut Self {
        self.options.connection_limit = max;
        self
    }

    /// Runs `hook` for a connection refused by
    /// [`per_ip_limit`](Self::per_ip_limit) or
    /// [`connection_limit`](Self::connection_limit), in the process that
    /// accepted it and before it is closed, whatever the strategy: the place
    /// to send a protocol's "busy" reply (FTP's `421`). Default is to close
    /// without a word.
    pub fn limit_refusal(
        &mut self,
        hook: impl Fn(&mut crate::handler::Request, shared_limit::LimitRefusal) + Send + Sync + 'static,
    ) -> &mut Self {
        self.refusal = Some(Arc::new(hook));
        self
    }

    /// Prefork: fewest idle workers to keep; below it the parent forks
    /// more. Default is 2.
    pub fn min_spare(&mut self, n: usize) -> &mut Self {
        self.options.pool.min_spare = n;
        self
    }

    /// Prefork: most idle workers to keep; above it the parent retires one
    /// per tick. Default is 8.
    pub fn max_spare(&mut self, n: usize) -> &mut Self {
        self.options.pool.max_spare = n;
        self
    }

    /// Prefork: hard cap on worker processes, and so on connections served
    /// at once; at the cap connections wait in the backlog. Default is 32.
    pub fn max_workers(&mut self, n: usize) -> &mut Self {
        self.options.pool.max_workers = n.max(1);
        self
    }

    /// Prefork: workers forked before serving starts. Default is 2.
    pub fn start_workers(&mut self, n: usize) -> &mut Self {
        self.options.pool.start_workers = n;
        self
    }

    /// Prefork: connections a worker serves before it is recycled (`0` =
    /// never), plus a random jitter in `0..=jitter` so workers do not all
    /// restart together. Default is 0 (never) with no jitter.
    pub fn max_requests(&mut self, n: u64, jitter: u64) -> &mut Self {
        self.options.pool.max_requests = n;
        self.options.pool.max_requests_jitter = jitter;
        self
    }

    /// Prefork: kill (SIGKILL) and replace a worker busy with one
    /// connection for longer than this (`None`: never). Default is 5
    /// minutes, so a stopped or wedged worker cannot hold a slot forever.
    pub fn hung_timeout(&mut self, t: Option<Duration>) -> &mut Self {
        self.options.pool.hung_timeout = t;
        self
    }

    /// Prefork: when a connection waits in the backlog this long while
    /// workers are idle and none of them takes it, those workers are not
    /// serving (stopped with SIGSTOP, wedged): they are killed and
    /// replaced. Default is 2 seconds.
    pub fn offer_timeout(&mut self, t: Duration) -> &mut Self {
        self.options.pool.offer_timeout = t.max(Duration::from_millis(100));
        self
    }

    /// Prefork: whether `serve_forever` grows (SIGTTIN) and shrinks
    /// (SIGTTOU) the pool bounds by one per signal. Default is `true`.
    pub fn resize_signals(&mut self, yes: bool) -> &mut Self {
        self.options.pool.resize_signals = yes;
        self
    }

    /// Async: most connections (or datagrams) in flight; at the limit
    /// `accept` waits until one finishes. Default is 10,000.
    pub fn max_connections(&mut self, n: usize) -> &mut Self {
        self.options.max_connections = n.max(1);
        self
    }

    /// Async: most blocking [`RequestHandler`]s running at once, each on a
    /// thread of the runtime's blocking pool. At the bound `accept` is
    /// deferred (connections wait in the backlog, as at every other
    /// strategy's cap) instead of queueing accepted clients behind a full
    /// pool where they time out unanswered. Default is 512.
    pub fn max_blocking(&mut self, n: usize) -> &mut Self {
        self.options.max_blocking = n.max(1);
        self
    }

    /// Async: how many worker threads serve connections, each with its
    /// own single-threaded tokio runtime, accepting from the shared socket
    /// and running the tasks of the connections it accepted (thread per
    /// core: no work stealing, no wake-up of another thread per
    /// connection). Default: the environment variable
    /// `TOKIO_WORKER_THREADS` if set, else one per core. One worker suits a
    /// server whose handlers only do I/O; a handler that computes wants
    /// one per core.
    pub fn async_threads(&mut self, n: usize) -> &mut Self {
        self.options.async_threads = Some(n.max(1));
        self
    }

    /// The hooks (`verify_request`, `handle_error`, …) to use instead of
    /// Python's defaults. Default is [`DefaultHooks`].
    pub fn hooks(&mut self, hooks: impl Hooks) -> &mut Self {
        self.hooks = Arc::new(hooks);
        self
    }

    /// Creates the server for `address`; `factory` makes one handler per
    /// request. Binds and listens unless
    /// [`bind_and_activate(false)`](Self::bind_and_activate).
    ///
    /// # Errors
    /// Resolving the address, creating, binding or listening on the socket
    /// failed (for example `AddrInUse`); the error names the address.
    /// Nothing is leaked on failure.
    pub fn bind<A, F, H>(&self, address: A, factory: F) -> Result<SocketServer<T, S>>
    where
        A: BindAddress<T>,
        F: Fn() -> H + Send + Sync + 'static,
        H: RequestHandler,
    {
        let address = address.into_address()?;
        SocketServer::create(
            address,
            self.factory(factory)?,
            self.hooks.clone(),
            self.options.clone(),
        )
    }

    /// Serves on a socket that is already bound (and, for streams,
    /// listening): one inherited through systemd socket activation
    /// ([`activation`](super::activation)) or a re-exec. The socket is
    /// made non-blocking; it is closed with the server, but a Unix socket
    /// file is left in place (whoever bound it owns it).
    ///
    /// # Errors
    /// The descriptor is not a socket of this transport, or its address
    /// cannot be read.
    pub fn from_socket<F, H>(
        &self,
        socket: impl Into<OwnedFd>,
        factory: F,
    ) -> Result<SocketServer<T, S>>
    where
        F: Fn() -> H + Send + Sync + 'static,
        H: RequestHandler,
    {
        SocketServer::adopt(
            socket.into(),
            self.factory(factory)?,
            self.hooks.clone(),
            self.options.clone(),
        )
    }

    /// The boxed factory, with the PROXY protocol and connection-limit
    /// layers the options ask for. The limit table is mapped here, before
    /// any fork, so every process of the server shares it.
    fn factory<F, H>(&self, factory: F) -> Result<Factory>
    where
        F: Fn() -> H + Send + Sync + 'static,
        H: RequestHandler,
    {
        let limiter = match (self.options.connection_limit, self.options.per_ip_limit) {
            (None, None) => None,
            (total, per_ip) => Some(SharedLimiter::new(total, per_ip)?),
        };
        let refusal = self.refusal.clone();
        let trusted = self.options.proxy_trust.clone();
        Ok(match (self.options.proxy_protocol, limiter) {
            (None, None) => Some(Box::new(move || {
                Box::new(factory()) as Box<dyn RequestHandler>
            })),
            (Some(t), None) => Some(proxy_layer(t, trusted, factory)),
            (None, Some(l)) => {
                let f = shared_limit::limit_layer(l, refusal, factory);
                Some(Box::new(move || Box::new(f()) as Box<dyn RequestHandler>))
            }
            (Some(t), Some(l)) => {
                // Outside the limits: a refused peer takes no slot, and the
                // limits count the address the header names.
                let f = shared_limit::limit_layer(l, refusal, factory);
                Some(proxy_layer(t, trusted, f))
            }
        })
    }
}

/// The PROXY layer the options ask for: restricted to `trusted` peers
/// when set.
fn proxy_layer<F, H>(
    timeout: Duration,
    trusted: Option<TrustedProxies>,
    factory: F,
) -> Box<dyn Fn() -> Box<dyn RequestHandler> + Send + Sync>
where
    F: Fn() -> H + Send + Sync + 'static,
    H: RequestHandler,
{
    match trusted {
        Some(t) => {
            let f = layers::proxy_protocol_from(t, Some(timeout), factory);
            Box::new(move || Box::new(f()) as Box<dyn RequestHandler>)
        }
        None => {
            let f = layers::proxy_protocol_within(timeout, factory);
            Box::new(move || Box::new(f()) as Box<dyn RequestHandler>)
        }
    }
}

impl<T: Transport, S: Strategy> SocketServer<T, S> {
    /// Binds a server with default options; `factory` makes one handler per
    /// request.
    ///
    /// ```no_run
    /// use socketserver::server::{Server, ThreadingTcpServer};
    /// # struct Echo;
    /// # impl socketserver::RequestHandler for Echo {
    /// #     fn handle(&mut self, _: &mut socketserver::Request) -> std::io::Result<()> { Ok(()) }
    /// # }
    /// let mut server = ThreadingTcpServer::bind("127.0.0.1:0", || Echo)?;
    /// println!("listening on {}", server.server_address());
    /// server.serve_forever()?;
    /// # Ok::<(), socketserver::Error>(())
    /// ```
    ///
    /// # Errors
    /// Resolving, creating, binding or listening failed; the error names
    /// the address. Nothing leaks.
    pub fn bind<A, F, H>(address: A, factory: F) -> Result<Self>
    where
        A: BindAddress<T>,
        F: Fn() -> H + Send + Sync + 'static,
        H: crate::handler::RequestHandler,
    {
        ServerBuilder::<T, S>::new().bind(address, factory)
    }

    /// A builder for the options Python sets as class attributes.
    pub fn builder() -> ServerBuilder<T, S> {
        ServerBuilder::new()
    }
}
