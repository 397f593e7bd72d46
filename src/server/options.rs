//! Server settings: what Python sets as class attributes. The builder
//! that fills them in is `builder.rs`.
//!
//! Python sets these as class attributes (`allow_reuse_address`,
//! `daemon_threads`, `max_children`, …) on a subclass. Here they are
//! builder setters, each ending with its default.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use super::middleware::proxy::TrustedProxies;

/// Where the agent-check port comes from.
#[derive(Debug, Clone)]
pub(crate) enum HealthSource {
    /// Bind this address.
    Bind(SocketAddr),
    /// Serve on this listening socket (inherited across a restart).
    Socket(Arc<TcpListener>),
}

/// Every setting a server reads. Built by [`ServerBuilder`](super::ServerBuilder).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub(crate) bind_and_activate: bool,
    pub(crate) allow_reuse_address: Option<bool>,
    pub(crate) allow_reuse_port: bool,
    pub(crate) backlog: i32,
    pub(crate) daemon_threads: bool,
    pub(crate) block_on_close: bool,
    pub(crate) max_threads: Option<usize>,
    pub(crate) max_children: usize,
    pub(crate) timeout: Option<Duration>,
    pub(crate) connection_timeout: Option<Duration>,
    pub(crate) max_packet_size: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) proxy_protocol: Option<Duration>,
    /// The peers a PROXY header is accepted from; `None`: any peer.
    pub(crate) proxy_trust: Option<TrustedProxies>,
    pub(crate) per_ip_limit: Option<usize>,
    pub(crate) connection_limit: Option<usize>,
    pub(crate) pool: PoolOptions,
    pub(crate) max_connections: usize,
    pub(crate) max_blocking: usize,
    pub(crate) async_threads: Option<usize>,
    pub(crate) health: Option<HealthSource>,
    pub(crate) drain_notice: Duration,
    pub(crate) systemd_notify: bool,
}

/// The prefork pool's settings (Apache's `StartServers`,
/// `MinSpareServers`, `MaxSpareServers`, `MaxRequestWorkers`,
/// `MaxConnectionsPerChild`).
#[derive(Debug, Clone)]
pub(crate) struct PoolOptions {
    pub(crate) min_spare: usize,
    pub(crate) max_spare: usize,
    pub(crate) max_workers: usize,
    pub(crate) start_workers: usize,
    pub(crate) max_requests: u64,
    pub(crate) max_requests_jitter: u64,
    pub(crate) hung_timeout: Option<Duration>,
    pub(crate) offer_timeout: Duration,
    pub(crate) resize_signals: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            min_spare: 2,
            max_spare: 8,
            max_workers: 32,
            start_workers: 2,
            max_requests: 0,
            max_requests_jitter: 0,
            hung_timeout: Some(Duration::from_secs(300)),
            offer_timeout: Duration::from_secs(2),
            resize_signals: true,
        }
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            bind_and_activate: true,
            allow_reuse_address: None,
            allow_reuse_port: false,
            backlog: libc::SOMAXCONN,
            daemon_threads: false,
            block_on_close: true,
            max_threads: None,
            max_children: 40,
            timeout: None,
            connection_timeout: None,
            max_packet_size: 65536,
            drain_timeout: Duration::from_secs(30),
            proxy_protocol: None,
            proxy_trust: None,
            per_ip_limit: None,
            connection_limit: None,
            pool: PoolOptions::default(),
            max_connections: 10_000,
            max_blocking: 512,
            async_threads: None,
            health: None,
            drain_notice: Duration::ZERO,
            systemd_notify: false,
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
    /// How long `server_close` lets requests in flight finish.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }
    /// How long the server keeps accepting after reporting `drain`.
    pub fn drain_notice(&self) -> Duration {
        self.drain_notice
    }
}
