//! Handler layers for the blocking strategies: PROXY protocol and a
//! per-client-IP connection limit, added around any [`RequestHandler`]
//! without changing it.
//!
//! The builder setting [`ServerBuilder::proxy_protocol`] applies the
//! PROXY layer for you (restricted to the peers
//! [`ServerBuilder::proxy_protocol_from`] trusts), and [`ServerBuilder::per_ip_limit`] applies a
//! per-IP limit counted across processes
//! ([`SharedLimiter`](crate::server::SharedLimiter)) instead of this in-process
//! [`PerIpLimit`] (the async strategy's native handlers get the same
//! behaviour). You can also wrap a handler factory yourself:
//!
//! [`ServerBuilder::proxy_protocol`]: crate::server::ServerBuilder::proxy_protocol
//! [`ServerBuilder::proxy_protocol_from`]: crate::server::ServerBuilder::proxy_protocol_from
//! [`ServerBuilder::per_ip_limit`]: crate::server::ServerBuilder::per_ip_limit
//!
//! ```no_run
//! use socketserver::server::{layers, Server, ThreadingTcpServer};
//! # struct Echo;
//! # impl socketserver::RequestHandler for Echo {
//! #     fn handle(&mut self, _: &mut socketserver::Request) -> std::io::Result<()> { Ok(()) }
//! # }
//! use socketserver::server::proxy::{Cidr, TrustedProxies};
//! // Only the balancers at 10.0.0.0/24 may send the header.
//! let balancers = TrustedProxies::new(["10.0.0.0/24".parse::<Cidr>()?]);
//! let mut server = ThreadingTcpServer::builder()
//!     .connection_timeout(std::time::Duration::from_secs(30))
//!     .bind(
//!         "127.0.0.1:9000",
//!         layers::proxy_protocol_from(balancers, None, || Echo),
//!     )?;
//! server.serve_forever()?;
//! # Ok::<(), socketserver::Error>(())
//! ```

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::handler::{Request, RequestHandler};
use crate::Error;

use super::per_ip::{IpPermit, PerIpLimiter};
use super::proxy::{header_timeout, read_proxy_header, HeaderFailures};
use super::trust::TrustedProxies;

/// Reads a PROXY v1/v2 header in `setup`, then runs the inner handler
/// with [`Request::peer_addr`] set to the client address the header names.
///
/// The header is read through the request's buffered `rfile`, so client
/// bytes that arrived with it stay buffered for the inner handler. A
/// connection whose header does not arrive (the peer hangs up first, sends
/// a malformed one, or nothing within the timeout) is closed without
/// running the inner handler, like a refused one below. It is not reported
/// through `handle_error`: a balancer's TCP check that connects and hangs
/// up is logged at `debug`, and a malformed or missing header at `debug`
/// with one rate-limited `warn` counting them across every process of the
/// server. Give a timeout (or a connection timeout) so a peer that sends
/// nothing cannot hold a worker.
///
/// With a [`TrustedProxies`] set ([`proxy_protocol_from`]), a peer outside
/// it is refused first: `setup` succeeds without reading anything, the
/// inner handler never runs (neither its `setup`, `handle` nor `finish`),
/// and the server closes the connection; the refusal is logged as
/// [`TrustedProxies`] describes, not reported through `handle_error`.
#[derive(Debug)]
pub struct ProxyProtocol<H> {
    inner: H,
    timeout: Option<Duration>,
    trusted: Option<TrustedProxies>,
    failures: Arc<HeaderFailures>,
    refused: bool,
}

fn layer<F, H>(
    timeout: Option<Duration>,
    trusted: Option<TrustedProxies>,
    factory: F,
) -> impl Fn() -> ProxyProtocol<H> + Send + Sync + 'static
where
    F: Fn() -> H + Send + Sync + 'static,
    H: RequestHandler,
{
    // Made with the factory, before the server forks: every process
    // counts header failures in the same shared words.
    let failures = HeaderFailures::new();
    move || ProxyProtocol {
        inner: factory(),
        timeout,
        trusted: trusted.clone(),
        failures: failures.clone(),
        refused: false,
    }
}

/// Wraps a handler factory with [`ProxyProtocol`], accepting the header
/// from any peer: only for a port nothing but the balancer can reach
/// (prefer [`proxy_protocol_from`]).
pub fn proxy_protocol<F, H>(factory: F) -> impl Fn() -> ProxyProtocol<H> + Send + Sync + 'static
where
    F: Fn() -> H + Send + Sync + 'static,
    H: RequestHandler,
{
    layer(None, None, factory)
}

/// Wraps a handler factory with [`ProxyProtocol`], giving the peer at most
/// `timeout` to send the header (the connection's own timeout applies
/// again afterwards). Accepts the header from any peer, as
/// [`proxy_protocol`].
pub fn proxy_protocol_within<F, H>(
    timeout: Duration,
    factory: F,
) -> impl Fn() -> ProxyProtocol<H> + Send + Sync + 'static
where
    F: Fn() -> H + Send + Sync + 'static,
    H: RequestHandler,
{
    layer(Some(timeout), None, factory)
}

/// Wraps a handler factory with [`ProxyProtocol`] that accepts the header
/// only from `trusted` peers and refuses every other connection, giving a
/// trusted peer at most `timeout` (when given) to send it. Make `trusted`
/// before the server forks, so all its processes share the refusal counts.
pub fn proxy_protocol_from<F, H>(
    trusted: TrustedProxies,
    timeout: Option<Duration>,
    factory: F,
) -> impl Fn() -> ProxyProtocol<H> + Send + Sync + 'static
where
    F: Fn() -> H + Send + Sync + 'static,
    H: RequestHandler,
{
    layer(timeout, Some(trusted), factory)
}

impl<H: RequestHandler> RequestHandler for ProxyProtocol<H> {
    fn setup(&mut self, req: &mut Request) -> io::Result<()> {
        if req.is_datagram() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "PROXY protocol applies to stream connections only",
            ));
        }
        if let Some(trusted) = &self.trusted {
            if !trusted.admit(req.peer_addr()) {
                self.refused = true;
                return Ok(());
            }
        }
        let before = match (self.timeout, req.stream()) {
            (Some(t), Some(s)) => {
                let before = s.read_timeout()?;
                s.set_timeout(Some(t))?;
                Some(before)
            }
            _ => None,
        };
        let header = match read_proxy_header(&mut req.rfile()) {
            Ok(header) => header,
            Err(e) => {
                let e = match (e, self.timeout) {
                    (Error::Io(io), Some(t))
                        if matches!(
                            io.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        header_timeout(t)
                    }
                    (e, _) => e,
                };
                self.failures.closed(req.peer_addr(), &e);
                self.refused = true;
                return Ok(());
            }
        };
        if let Some(before) = before {
            req.set_timeout(before)?;
        }
        if let Some(source) = header.source {
            req.set_peer_addr(source);
        }
        self.inner.setup(req)
    }

    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        if self.refused {
            return Ok(());
        }
        self.inner.handle(req)
    }

    fn finish(&mut self, req: &mut Request) -> io::Result<()> {
        if self.refused {
            return Ok(());
        }
        self.inner.finish(req)
    }
}

/// Refuses a connection in `setup` when its client address already has
/// the maximum number of open connections; the slot is held until the
/// handler is dropped at the end of the request. A refused connection is
/// closed without running the inner handler and logged at `info`, as the
/// builder's [`per_ip_limit`](crate::server::ServerBuilder::per_ip_limit)
/// does (a client over its limit is not a handler error).
///
/// The counts live in this process, so this suits the synchronous and
/// threading strategies; each forked child or prefork worker would count
/// only its own connections.
#[derive(Debug)]
pub struct PerIpLimit<H> {
    inner: H,
    limiter: PerIpLimiter,
    permit: Option<IpPermit>,
    refused: bool,
}

/// Wraps a handler factory with [`PerIpLimit`], allowing `max_per_ip`
/// simultaneous connections per client address.
pub fn per_ip_limit<F, H>(
    max_per_ip: usize,
    factory: F,
) -> impl Fn() -> PerIpLimit<H> + Send + Sync + 'static
where
    F: Fn() -> H + Send + Sync + 'static,
    H: RequestHandler,
{
    let limiter = PerIpLimiter::new(max_per_ip);
    move || PerIpLimit {
        inner: factory(),
        limiter: limiter.clone(),
        permit: None,
        refused: false,
    }
}

impl<H: RequestHandler> RequestHandler for PerIpLimit<H> {
    fn setup(&mut self, req: &mut Request) -> io::Result<()> {
        if let Some(addr) = req.peer_addr().as_inet() {
            match self.limiter.try_acquire(addr.ip()) {
                Some(p) => self.permit = Some(p),
                None => {
                    tracing::info!(
                        peer = %addr,
                        max_per_ip = self.limiter.max_per_ip(),
                        "connection refused: the client address has its maximum of connections"
                    );
                    self.refused = true;
                    return Ok(());
                }
            }
        }
        self.inner.setup(req)
    }

    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        if self.refused {
            return Ok(());
        }
        self.inner.handle(req)
    }

    fn finish(&mut self, req: &mut Request) -> io::Result<()> {
        if self.refused {
            return Ok(());
        }
        let r = self.inner.finish(req);
        self.permit = None;
        r
    }
}
