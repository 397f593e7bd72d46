//! [`PreforkBuilder`]: the prefork server's settings.

use std::collections::HashMap;
use std::fmt;
use std::net::{TcpListener, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::handler::RequestHandler;
use crate::process::SharedAtomics;
use crate::server::core::ServerCore;
use crate::server::hooks::{DefaultHooks, Hooks};
use crate::server::wakeup::Wakeup;
use crate::{Error, Result};

use super::{PreforkTcpServer, WORDS};

/// Settings of a [`PreforkTcpServer`]; see [`PreforkBuilder`].
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) min_spare: usize,
    pub(super) max_spare: usize,
    pub(super) max_workers: usize,
    pub(super) start_workers: usize,
    pub(super) max_requests: u64,
    pub(super) max_requests_jitter: u64,
    pub(super) hung_timeout: Option<Duration>,
    pub(super) drain_timeout: Duration,
    pub(super) connection_timeout: Option<Duration>,
    pub(super) resize_signals: bool,
    pub(super) backlog: i32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            min_spare: 2,
            max_spare: 8,
            max_workers: 32,
            start_workers: 2,
            max_requests: 0,
            max_requests_jitter: 0,
            hung_timeout: None,
            drain_timeout: Duration::from_secs(30),
            connection_timeout: None,
            resize_signals: true,
            backlog: libc::SOMAXCONN,
        }
    }
}

/// Configures a [`PreforkTcpServer`] (Apache's `StartServers`,
/// `MinSpareServers`, `MaxSpareServers`, `MaxRequestWorkers`,
/// `MaxConnectionsPerChild`).
pub struct PreforkBuilder {
    config: Config,
    hooks: Arc<dyn Hooks>,
}

impl fmt::Debug for PreforkBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreforkBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for PreforkBuilder {
    fn default() -> Self {
        PreforkBuilder {
            config: Config::default(),
            hooks: Arc::new(DefaultHooks),
        }
    }
}

impl PreforkBuilder {
    /// Fewest idle workers to keep; below it the parent forks more.
    /// Default is 2.
    pub fn min_spare(&mut self, n: usize) -> &mut Self {
        self.config.min_spare = n;
        self
    }

    /// Most idle workers to keep; above it the parent retires one per
    /// tick. Default is 8.
    pub fn max_spare(&mut self, n: usize) -> &mut Self {
        self.config.max_spare = n;
        self
    }

    /// Hard cap on worker processes (and so on concurrent connections).
    /// Default is 32.
    pub fn max_workers(&mut self, n: usize) -> &mut Self {
        self.config.max_workers = n.max(1);
        self
    }

    /// Workers forked before serving starts. Default is 2.
    pub fn start_workers(&mut self, n: usize) -> &mut Self {
        self.config.start_workers = n;
        self
    }

    /// Connections a worker serves before it is recycled (`0` = never),
    /// plus a random jitter in `0..=jitter` so workers do not all restart
    /// together. Default is 0 (never) with no jitter.
    pub fn max_requests(&mut self, n: u64, jitter: u64) -> &mut Self {
        self.config.max_requests = n;
        self.config.max_requests_jitter = jitter;
        self
    }

    /// Kill (SIGKILL) and replace a worker busy with one connection for
    /// longer than this. Default is no limit.
    pub fn hung_timeout(&mut self, t: Option<Duration>) -> &mut Self {
        self.config.hung_timeout = t;
        self
    }

    /// At shutdown, how long workers may finish their connections before
    /// they are killed. Default is 30 seconds.
    pub fn drain_timeout(&mut self, t: Duration) -> &mut Self {
        self.config.drain_timeout = t;
        self
    }

    /// Read/write timeout set on every accepted connection. Default is
    /// none.
    pub fn connection_timeout(&mut self, t: Option<Duration>) -> &mut Self {
        self.config.connection_timeout = t;
        self
    }

    /// Whether `serve_forever` grows (SIGTTIN) and shrinks (SIGTTOU) the
    /// pool bounds by one per signal. Default is `true`.
    pub fn resize_signals(&mut self, yes: bool) -> &mut Self {
        self.config.resize_signals = yes;
        self
    }

    /// The `listen` backlog used by [`bind`](Self::bind). Default is
    /// `SOMAXCONN`.
    pub fn backlog(&mut self, backlog: i32) -> &mut Self {
        self.config.backlog = backlog;
        self
    }

    /// Hooks (`verify_request`, `handle_error`, …), run in the workers.
    /// Default is [`DefaultHooks`].
    pub fn hooks(&mut self, hooks: impl Hooks) -> &mut Self {
        self.hooks = Arc::new(hooks);
        self
    }

    /// Binds and listens on `address` (with `SO_REUSEADDR`).
    ///
    /// # Errors
    /// Resolving, binding or listening failed.
    pub fn bind<A, F, H>(&self, address: A, factory: F) -> Result<PreforkTcpServer>
    where
        A: ToSocketAddrs,
        F: Fn() -> H + Send + Sync + 'static,
        H: RequestHandler,
    {
        let addr = address
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
        sock.listen(self.config.backlog)?;
        self.from_listener(sock.into(), factory)
    }

    /// Serves on an existing listening socket (socket activation, re-exec).
    ///
    /// # Errors
    /// The socket's address cannot be read or it cannot be made
    /// non-blocking, or the scoreboard cannot be mapped.
    pub fn from_listener<F, H>(&self, listener: TcpListener, factory: F) -> Result<PreforkTcpServer>
    where
        F: Fn() -> H + Send + Sync + 'static,
        H: RequestHandler,
    {
        let mut config = self.config.clone();
        config.min_spare = config.min_spare.min(config.max_workers);
        config.max_spare = config.max_spare.max(config.min_spare.max(1));
        // Workers race for each connection; the losers must not block.
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let board = SharedAtomics::new(config.max_workers * WORDS)?;
        Ok(PreforkTcpServer {
            listener: Some(listener),
            address,
            core: ServerCore {
                factory: Box::new(move || Box::new(factory()) as Box<dyn RequestHandler>),
                hooks: self.hooks.clone(),
                connection_timeout: config.connection_timeout,
            },
            workers: (0..config.max_workers).map(|_| None).collect(),
            control: Mutex::new(HashMap::new()),
            board,
            wakeup: Wakeup::new()?,
            epoch: Instant::now(),
            config,
        })
    }
}
