//! Server settings and the builder that applies them.
//!
//! Python sets these as class attributes (`allow_reuse_address`,
//! `daemon_threads`, `max_children`, …) on a subclass. Here they are
//! builder setters, each ending with its default.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::handler::RequestHandler;

use super::base::SocketServer;
use super::hooks::{DefaultHooks, Hooks};
use super::strategy::Strategy;
use super::transport::{BindAddress, Transport};

/// Every setting a server reads. Built by [`ServerBuilder`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub(crate) bind_and_activate: bool,
    pub(crate) allow_reuse_address: bool,
    pub(crate) allow_reuse_port: bool,
    pub(crate) backlog: i32,
    pub(crate) daemon_threads: bool,
    pub(crate) block_on_close: bool,
    pub(crate) max_threads: Option<usize>,
    pub(crate) max_children: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) connection_timeout: Option<Duration>,
    pub(crate) max_packet_size: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            bind_and_activate: true,
            allow_reuse_address: false,
            allow_reuse_port: false,
            backlog: libc::SOMAXCONN,
            daemon_threads: false,
            block_on_close: true,
            max_threads: None,
            max_children: 40,
            timeout: None,
            connection_timeout: None,
            max_packet_size: 65536,
        }
    }
}

impl ServerOptions {
    /// Whether `close` waits for worker threads or children.
    pub fn block_on_close(&self) -> bool {
        self.block_on_close
    }
    /// Whether worker threads are left running on close.
    pub fn daemon_threads(&self) -> bool {
        self.daemon_threads
    }
    /// The cap on concurrent handler threads, if any.
    pub fn max_threads(&self) -> Option<usize> {
        self.max_threads
    }
    /// The cap on concurrent children.
    pub fn max_children(&self) -> usize {
        self.max_children
    }
}

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
    options: ServerOptions,
    hooks: Arc<dyn Hooks>,
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
    /// while old connections sit in `TIME_WAIT`. Default is `false`.
    pub fn allow_reuse_address(&mut self, yes: bool) -> &mut Self {
        self.options.allow_reuse_address = yes;
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

    /// Threading and forking: `server_close` waits for running handlers
    /// (threads or children) to finish. Default is `true`.
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
    /// failed (for example `AddrInUse`). Nothing is leaked on failure.
    pub fn bind<A, F, H>(&self, address: A, factory: F) -> Result<SocketServer<T, S>>
    where
        A: BindAddress<T>,
        F: Fn() -> H + Send + Sync + 'static,
        H: RequestHandler,
    {
        let address = address.into_address()?;
        SocketServer::create(
            address,
            Box::new(move || Box::new(factory()) as Box<dyn RequestHandler>),
            self.hooks.clone(),
            self.options.clone(),
        )
    }
}
