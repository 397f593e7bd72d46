//! [`SocketServer`]: one transport, one strategy, Python's `BaseServer`
//! loop — **the accept loop of the crate lives here** ([`Serving::accept_loop`]).
//!
//! Every strategy serves through the same pieces: `get_request` reads the
//! server socket (accept or `recvfrom`), `verify_request` asks the hooks,
//! the [`Strategy`] decides where the request runs, and
//! [`ServerCore`](super::ServerCore) runs the handler. The synchronous,
//! threading and forking strategies run [`Serving::accept_loop`] in the
//! serving thread; each prefork worker runs the same loop in its own
//! process; the async strategy drives the same `get_request` from tokio.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::SockRef;

use crate::error::{Error, Result};
use crate::handler::PeerAddr;
use crate::process::poll_timeout;

use super::core::{Factory, ServerCore};
use super::drain::DrainReport;
use super::hooks::Hooks;
use super::incoming::Incoming;
use super::ops::backoff::{AcceptAction, AcceptBackoff};
use super::ops::health::{Health, HealthHandle};
use super::options::HealthSource;
use super::options::ServerOptions;
use super::strategy::{LoopWaker, Processor, Serving, Strategy};
use super::traits::Server;
use super::transport::{ServerSocket, Transport};
use super::wakeup::{Departure, ShutdownHandle, Wakeup};

/// Most requests taken per wake-up before housekeeping runs again.
const BATCH: usize = 16;

/// Most connections taken from the backlog when the loop stops.
pub(crate) const QUEUED_AT_STOP: usize = 256;

/// A server over transport `T` with strategy `S`. Use the aliases
/// ([`TcpServer`](super::TcpServer), [`ThreadingTcpServer`](super::ThreadingTcpServer),
/// [`PreforkTcpServer`](super::PreforkTcpServer), …) rather than naming the
/// parameters.
///
/// Dropping the server closes it (see [`Server::server_close`]).
///
/// One request, served and checked (a real socket on loopback):
///
/// ```
/// use std::io::{self, BufRead, Read, Write};
/// use std::net::TcpStream;
/// use socketserver::server::{Server, TcpServer};
/// use socketserver::{Request, RequestHandler};
///
/// struct Echo;
///
/// impl RequestHandler for Echo {
///     fn handle(&mut self, req: &mut Request) -> io::Result<()> {
///         let mut line = Vec::new();
///         req.rfile().read_until(b'\n', &mut line)?;
///         req.wfile().write_all(&line)
///     }
/// }
///
/// let mut server = TcpServer::bind("127.0.0.1:0", || Echo)?;
/// let addr = server.server_address(); // the real port after :0
/// let client = std::thread::spawn(move || -> io::Result<String> {
///     let mut s = TcpStream::connect(addr)?;
///     s.write_all(b"hello\n")?;
///     let mut reply = String::new();
///     s.read_to_string(&mut reply)?; // the server closes after the request
///     Ok(reply)
/// });
/// server.handle_request()?; // accept one connection, serve it, close it
/// assert_eq!(client.join().unwrap()?, "hello\n");
/// server.server_close();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct SocketServer<T: Transport, S: Strategy> {
    socket: Option<ServerSocket>,
    address: T::Address,
    /// This server bound the address (so a Unix socket file is its own
    /// to remove); `false` for an adopted socket.
    bound: bool,
    closed: bool,
    options: ServerOptions,
    core: Arc<ServerCore>,
    strategy: S,
    wakeup: Arc<Wakeup>,
    buf: Vec<u8>,
    report: Option<DrainReport>,
}

impl<T: Transport, S: Strategy> fmt::Debug for SocketServer<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocketServer")
            .field("transport", &T::SCHEME)
            .field("strategy", &S::NAME)
            .field("address", &self.address)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl<T: Transport, S: Strategy> SocketServer<T, S> {
    pub(crate) fn create(
        address: T::Address,
        factory: Factory,
        hooks: Arc<dyn Hooks>,
        options: ServerOptions,
    ) -> Result<Self> {
        let socket =
            T::socket(&address).map_err(|e| at_address(e, "create a socket for", &address))?;
        let mut server = Self::assemble(socket, address, factory, hooks, options)?;
        if server.options.bind_and_activate {
            // On error `server` drops here, which closes the socket.
            server.server_bind()?;
            server.server_activate()?;
        }
        Ok(server)
    }

    pub(crate) fn adopt(
        fd: OwnedFd,
        factory: Factory,
        hooks: Arc<dyn Hooks>,
        options: ServerOptions,
    ) -> Result<Self> {
        let (socket, address) = T::adopt(fd)?;
        Self::assemble(socket, address, factory, hooks, options)
    }

    fn assemble(
        socket: ServerSocket,
        address: T::Address,
        factory: Factory,
        hooks: Arc<dyn Hooks>,
        options: ServerOptions,
    ) -> Result<Self> {
        if options.proxy_protocol.is_some() && options.proxy_trust.is_none() {
            tracing::warn!(
                "PROXY headers are accepted from any peer: anyone who can reach the port \
                 directly can claim any client address; name the balancers with \
                 proxy_protocol_from"
            );
        }
        let wakeup = Wakeup::new()?;
        let health = match &options.health {
            None => None,
            Some(HealthSource::Bind(addr)) => Some(Health::bind(*addr)?),
            Some(HealthSource::Socket(l)) => Some(Health::adopt(l.try_clone()?)?),
        };
        wakeup.set_departure(Departure {
            notice: options.drain_notice,
            health,
            systemd: options.systemd_notify,
        });
        let strategy = S::new(&options, LoopWaker(wakeup.clone()))?;
        Ok(SocketServer {
            socket: Some(socket),
            address,
            bound: false,
            closed: false,
            buf: Vec::new(),
            core: Arc::new(ServerCore::new(
                factory,
                hooks,
                options.connection_timeout,
                S::NAME,
            )),
            options,
            strategy,
            wakeup,
            report: None,
        })
    }

    /// The server socket, for options before `server_bind` (Python's
    /// `self.socket`). `None` once closed.
    pub fn socket(&self) -> Option<SockRef<'_>> {
        self.socket.as_ref().map(ServerSocket::sock_ref)
    }

    /// The strategy, for its statistics (for example
    /// [`Threading::tracked_threads`](super::Threading::tracked_threads)).
    pub fn strategy(&self) -> &S {
        &self.strategy
    }

    #[cfg(feature = "async")]
    pub(crate) fn strategy_mut(&mut self) -> &mut S {
        &mut self.strategy
    }

    /// The settings this server was built with.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Sets what the agent check reports (`None` without a
    /// [`health`](super::ServerBuilder::health) port).
    pub fn health_handle(&self) -> Option<HealthHandle> {
        self.wakeup.health().map(Health::handle)
    }

    /// The agent-check port's address, if any.
    pub fn health_address(&self) -> Option<std::net::SocketAddr> {
        self.wakeup.health().and_then(|h| h.local_addr().ok())
    }

    /// A duplicate of the agent-check socket, to hand to a successor
    /// process ([`spawn_successor`](super::spawn_successor)).
    ///
    /// # Errors
    /// No health port, the server is closed (its agent port closed with
    /// it), or `dup` failed.
    pub fn health_socket(&self) -> Result<OwnedFd> {
        if self.closed {
            return Err(Error::Closed);
        }
        let h = self
            .wakeup
            .health()
            .ok_or_else(|| Error::InvalidArgument("no health port".into()))?;
        Ok(h.try_clone_fd()?)
    }

    /// Shorthand for `self.shutdown_handle().shutdown()`.
    pub fn shutdown(&self) {
        self.wakeup.request_shutdown();
    }

    /// What [`server_close`](Server::server_close) found in flight and
    /// what became of it; `None` before the server was closed. The same
    /// report for every strategy.
    pub fn drain_report(&self) -> Option<DrainReport> {
        self.report
    }

    fn live_socket(&self) -> Result<&ServerSocket> {
        self.socket.as_ref().ok_or(Error::Closed)
    }

    fn serving(&mut self) -> Serving<'_> {
        Serving {
            socket: &mut self.socket,
            core: &self.core,
            wakeup: &self.wakeup,
            options: &self.options,
            buf: &mut self.buf,
        }
    }
}

/// Answers agent checks from a thread, and wakes the loop when the drain
/// notice runs out (the async strategy's loop only wakes on its
/// descriptors). Stopped and joined on drop.
struct AgentThread {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentThread {
    fn start(wakeup: Arc<Wakeup>) -> Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("health-agent".into())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    if let Some(h) = wakeup.health() {
                        let mut fds = [PollFd::new(h.fd(), PollFlags::POLLIN)];
                        let _ = poll(&mut fds, PollTimeout::from(50u16));
                        h.answer_pending();
                    } else {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if wakeup.notice_left().is_some() && wakeup.shutdown_requested() {
                        wakeup.wake();
                    }
                }
            })?;
        Ok(AgentThread {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for AgentThread {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Adds the address to an error, keeping its kind (`AddrInUse` stays
/// `AddrInUse`).
fn at_address(e: io::Error, what: &str, address: &dyn fmt::Display) -> Error {
    Error::Io(io::Error::new(
        e.kind(),
        format!("cannot {what} {address}: {e}"),
    ))
}

impl Serving<'_> {
    /// Python's `get_request`: accept a connection or receive a datagram.
    pub(crate) fn get_request(&mut self) -> io::Result<(Incoming, PeerAddr)> {
        let socket = self
            .socket
            .as_ref()
            .ok_or_else(|| io::Error::from(Error::Closed))?;
        if !socket.is_stream() && self.buf.len() != self.options.max_packet_size {
            self.buf.resize(self.options.max_packet_size, 0);
        }
        socket.receive(self.buf)
    }

    /// Waits for `delay` or a wake-up, whichever comes first (the accept
    /// backoff: a shutdown still ends the pause at once).
    pub(crate) fn pause(&self, delay: Duration) {
        let mut fds = [PollFd::new(self.wakeup.fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(delay.as_millis()).unwrap_or(u16::MAX);
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }

    /// Python's `_handle_request_noblock` with the one accept-error policy
    /// ([`AcceptBackoff`]). `Ok(true)` when a request was taken (another
    /// may be waiting); `Ok(false)` when nothing was waiting.
    ///
    /// # Errors
    /// The server socket is broken (`EBADF`, `EINVAL`, …).
    pub(crate) fn handle_request_noblock<P: Processor>(
        &mut self,
        strategy: &mut P,
        backoff: &mut AcceptBackoff,
    ) -> Result<bool> {
        let got = self.get_request();
        self.handle_received(got, strategy, backoff)
    }

    /// The rest of [`handle_request_noblock`](Self::handle_request_noblock)
    /// once `get_request` (or a caller's own accept, as a prefork worker's
    /// blocking one) returned: `verify_request`, then the strategy, or the
    /// accept-error policy.
    ///
    /// # Errors
    /// The server socket is broken (`EBADF`, `EINVAL`, …).
    pub(crate) fn handle_received<P: Processor>(
        &mut self,
        got: io::Result<(Incoming, PeerAddr)>,
        strategy: &mut P,
        backoff: &mut AcceptBackoff,
    ) -> Result<bool> {
        match got {
            Ok((request, peer)) => {
                backoff.on_success();
                if self.core.hooks.verify_request(&request, &peer) {
                    strategy.process_request(self.core, self.socket, request, peer);
                } else {
                    self.core.shutdown_request(request);
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => match backoff.on_error(&e) {
                AcceptAction::Retry => Ok(true),
                AcceptAction::Backoff(d) => {
                    self.pause(d);
                    Ok(false)
                }
                AcceptAction::Fatal => {
                    tracing::error!(error = %e, "the server socket is broken; serving stops");
                    Err(e.into())
                }
            },
        }
    }

    /// The server is stopping: takes the connections the kernel has
    /// already completed in the listening socket's backlog (at most
    /// [`QUEUED_AT_STOP`]), so they are served and drained instead of being
    /// reset when the socket closes a moment later. A balancer without an
    /// agent check (nginx `stream`) has already sent those clients' bytes
    /// to this server and cannot retry them elsewhere; a new connection
    /// after the close is refused, which it can. Only stream sockets; the
    /// strategy's capacity is not consulted (the handful taken here are
    /// part of the drain, bounded by the drain timeout).
    ///
    /// `serve_forever` calls it for the threading strategy, once its loop
    /// returned on a shutdown. Not the synchronous one (it would run those
    /// handlers inline: a silent client would hold the shutdown), nor
    /// forking (a fork at that moment, while the process's other threads
    /// are busy, is the fork-safety risk the design avoids; seen as a
    /// child that never finished in `tests/server_forking.rs`), nor async
    /// (its own loop). A prefork worker does the same in its own way when
    /// the whole server stops (its watcher thread takes the queue, even
    /// while the worker serves a request, then closes the worker's
    /// listening socket), not when only that worker is recycled or
    /// retired while its siblings keep serving; see
    /// `src/server/strategy/prefork/worker.rs`.
    pub(crate) fn take_queued<P: Processor>(&mut self, strategy: &mut P) {
        if !self.socket.as_ref().is_some_and(|s| s.is_stream()) {
            return;
        }
        let mut backoff = AcceptBackoff::default();
        let mut taken = 0;
        while taken < QUEUED_AT_STOP {
            match self.handle_request_noblock(strategy, &mut backoff) {
                Ok(true) => taken += 1,
                Ok(false) | Err(_) => break,
            }
        }
        if taken > 0 {
            tracing::debug!(taken, "took the connections queued at stop");
        }
    }

    /// The accept loop: sleeps in `poll(2)` on the server socket, the
    /// wake-up descriptor and the strategy's own descriptors; takes what
    /// is queued (bounded, so housekeeping and shutdown are never
    /// starved); stops accepting while the strategy is at capacity, so
    /// connections wait in the backlog instead of being refused. Returns
    /// when a shutdown is requested.
    ///
    /// # Errors
    /// The server is closed, the socket is broken, or `poll(2)` failed.
    pub fn accept_loop<S: Strategy>(&mut self, strategy: &mut S) -> Result<()> {
        self.run_loop(strategy)
    }

    pub(crate) fn run_loop<P: Processor>(&mut self, strategy: &mut P) -> Result<()> {
        let mut backoff = AcceptBackoff::default();
        loop {
            if self.wakeup.shutdown_requested() {
                return Ok(());
            }
            let listen = !strategy.at_capacity();
            let (woken, readable) = {
                let socket = self.socket.as_ref().ok_or(Error::Closed)?;
                let mut fds = PollSet::new(PollFd::new(self.wakeup.fd(), PollFlags::POLLIN));
                if listen {
                    // While at capacity the socket is left out: connections
                    // wait in the backlog, everything else is watched.
                    fds.push(PollFd::new(socket.as_fd(), PollFlags::POLLIN));
                }
                strategy.each_wait_fd(&mut |fd| fds.push(PollFd::new(fd, PollFlags::POLLIN)));
                if let Some(h) = self.wakeup.health() {
                    fds.push(PollFd::new(h.fd(), PollFlags::POLLIN));
                }
                // During the drain notice, wake when it runs out; and when
                // the strategy has housekeeping due.
                let notice = self
                    .wakeup
                    .notice_left()
                    .map(|left| left + Duration::from_millis(1));
                let timeout = notice
                    .into_iter()
                    .chain(strategy.wake_within())
                    .min()
                    .map_or(PollTimeout::NONE, poll_timeout);
                let fds = fds.as_mut_slice();
                match poll(fds, timeout) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), listen && ready(&fds[1]))
            };
            if woken {
                self.wakeup.drain();
            }
            self.wakeup.answer_health();
            if self.wakeup.shutdown_requested() {
                return Ok(());
            }
            if readable {
                for _ in 0..BATCH {
                    if !self.handle_request_noblock(strategy, &mut backoff)?
                        || self.wakeup.shutdown_requested()
                        || strategy.at_capacity()
                    {
                        break;
                    }
                }
            }
            strategy.service_actions();
            self.core.hooks.service_actions();
        }
    }
}

impl<T: Transport, S: Strategy> Server for SocketServer<T, S> {
    type Address = T::Address;

    fn server_bind(&mut self) -> Result<()> {
        let socket = self.live_socket()?;
        let sock = socket.sock_ref();
        let reuse = self
            .options
            .allow_reuse_address
            .unwrap_or(T::REUSE_ADDRESS_BY_DEFAULT);
        if reuse {
            sock.set_reuse_address(true)?;
        }
        if self.options.allow_reuse_port {
            sock.set_reuse_port(true)?;
        }
        let addr = T::sock_addr(&self.address).map_err(|e| at_address(e, "bind", &self.address))?;
        let mut bound = sock.bind(&addr);
        if matches!(&bound, Err(e) if e.kind() == io::ErrorKind::AddrInUse) {
            // A Unix socket file left by a server that never closed.
            match T::clear_stale(&self.address) {
                Ok(true) => bound = sock.bind(&addr),
                Ok(false) => {}
                Err(e) => bound = Err(e),
            }
        }
        bound.map_err(|e| at_address(e, "bind", &self.address))?;
        let bound = T::bound_address(socket, &self.address);
        self.bound = true;
        self.address = bound?;
        Ok(())
    }

    fn server_activate(&mut self) -> Result<()> {
        let socket = self.live_socket()?;
        if socket.is_stream() {
            if let (ServerSocket::Tcp(listener), Some(t)) =
                (socket, self.options.connection_timeout)
            {
                // A TCP connection is a clone of its listening socket made
                // when the handshake completes, and inherits the socket's
                // timeouts: set once here, before any connection can be
                // queued, instead of twice per connection. (Unix sockets
                // do not inherit them; those are set per connection.)
                let sock = SockRef::from(listener);
                sock.set_read_timeout(Some(t))?;
                sock.set_write_timeout(Some(t))?;
                self.core.timeout_set_on_listener();
            }
            socket
                .sock_ref()
                .listen(self.options.backlog)
                .map_err(|e| at_address(e, "listen on", &self.address))?;
        }
        Ok(())
    }

    fn server_address(&self) -> T::Address {
        self.address.clone()
    }

    fn get_request(&mut self) -> io::Result<(Incoming, PeerAddr)> {
        self.serving().get_request()
    }

    fn verify_request(&mut self, request: &Incoming, peer: &PeerAddr) -> bool {
        self.core.hooks.verify_request(request, peer)
    }

    fn process_request(&mut self, request: Incoming, peer: PeerAddr) {
        self.strategy
            .process_request(&self.core, &mut self.socket, request, peer);
    }

    fn finish_request(&self, request: Incoming, peer: &PeerAddr) -> (Option<Incoming>, Result<()>) {
        self.core.finish_request(request, peer)
    }

    fn shutdown_request(&mut self, request: Incoming) {
        self.core.shutdown_request(request);
    }

    fn handle_error(&self, peer: &PeerAddr, error: &Error) {
        self.core.handle_error(peer, error);
    }

    fn handle_timeout(&mut self) {
        // Like ForkingMixIn.handle_timeout: housekeeping first.
        self.strategy.service_actions();
        self.core.hooks.handle_timeout();
    }

    fn service_actions(&mut self) {
        self.strategy.service_actions();
        self.core.hooks.service_actions();
    }

    fn serve_forever(&mut self) -> Result<()> {
        self.live_socket()?;
        let mut serving = Serving {
            socket: &mut self.socket,
            core: &self.core,
            wakeup: &self.wakeup,
            options: &self.options,
            buf: &mut self.buf,
        };
        self.wakeup.serving_started();
        // The async strategy's loop does not poll the agent port: its
        // process is multi-threaded by design and never forks, so a small
        // thread answers there (see `ops::health`).
        let agent = (S::NAME == "async"
            && (self.wakeup.health().is_some() || !self.options.drain_notice.is_zero()))
        .then(|| AgentThread::start(self.wakeup.clone()))
        .transpose()?;
        let result = self.strategy.serve_forever(&mut serving);
        // Threads serve what was queued at the stop (see `take_queued`
        // for why only the threading strategy).
        if result.is_ok() && S::NAME == "threading" {
            serving.take_queued(&mut self.strategy);
        }
        drop(agent);
        if result.is_ok() {
            tracing::debug!(server = %self.address, strategy = S::NAME, "shutdown requested; serve_forever returns");
        }
        self.wakeup.reset();
        result
    }

    fn handle_request(&mut self) -> Result<()> {
        let deadline = self.options.timeout.map(|t| Instant::now() + t);
        let mut backoff = AcceptBackoff::default();
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
                }
            };
            let socket = self.live_socket()?;
            let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        self.handle_timeout();
                        return Ok(());
                    }
                }
                Ok(_) => {
                    let mut serving = Serving {
                        socket: &mut self.socket,
                        core: &self.core,
                        wakeup: &self.wakeup,
                        options: &self.options,
                        buf: &mut self.buf,
                    };
                    serving.handle_request_noblock(&mut self.strategy, &mut backoff)?;
                    return Ok(());
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.wakeup.clone())
    }

    fn server_close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        // Stop accepting first: from here on a new connection is refused,
        // not queued behind the drain.
        self.socket = None;
        if self.bound {
            T::cleanup(&self.address);
        }
        // The agent port goes with it (see `ops::health`): a successor on
        // the same address can bind it while this one drains.
        if let Some(h) = self.wakeup.health() {
            h.release();
        }
        let report = self
            .strategy
            .drain(self.options.block_on_close, self.options.drain_timeout);
        if report != DrainReport::default() {
            tracing::info!(
                drained = report.drained,
                aborted = report.aborted,
                detached = report.detached,
                strategy = S::NAME,
                "server closed"
            );
        }
        self.report = Some(report);
    }
}

impl<T: Transport, S: Strategy> Drop for SocketServer<T, S> {
    fn drop(&mut self) {
        self.server_close();
    }
}

/// How many descriptors the accept loop's `poll` set holds on the stack:
/// the wake-up and server sockets, the health port and the forking
/// strategy's default 40 child sentinels fit.
const STACK_FDS: usize = 64;

/// The accept loop's `poll` set, on the stack up to [`STACK_FDS`]
/// descriptors: a turn of the loop allocates nothing. (In a forking
/// server every heap page the parent writes is a copy-on-write fault
/// after each fork, and a `malloc`/`free` pair writes two.) Beyond that
/// the whole set moves to `heap`.
struct PollSet<'fd> {
    stack: [PollFd<'fd>; STACK_FDS],
    len: usize,
    heap: Vec<PollFd<'fd>>,
}

impl<'fd> PollSet<'fd> {
    /// A set holding `first` (at index 0).
    fn new(first: PollFd<'fd>) -> Self {
        PollSet {
            stack: std::array::from_fn(|_| first.clone()),
            len: 1,
            heap: Vec::new(),
        }
    }

    fn push(&mut self, fd: PollFd<'fd>) {
        if !self.heap.is_empty() {
            self.heap.push(fd);
        } else if self.len < STACK_FDS {
            self.stack[self.len] = fd;
            self.len += 1;
        } else {
            self.heap.reserve(2 * STACK_FDS);
            self.heap.extend_from_slice(&self.stack);
            self.heap.push(fd);
        }
    }

    fn as_mut_slice(&mut self) -> &mut [PollFd<'fd>] {
        if self.heap.is_empty() {
            &mut self.stack[..self.len]
        } else {
            &mut self.heap
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, BorrowedFd};

    /// Past the stack's room the set moves to the heap whole: same
    /// descriptors, same order, index 0 first.
    #[test]
    fn a_poll_set_keeps_every_descriptor_in_order() {
        let files: Vec<std::fs::File> = (0..STACK_FDS + 5)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let fd = |i: usize| -> BorrowedFd<'_> { files[i].as_fd() };
        for n in [1, 2, STACK_FDS, STACK_FDS + 1, STACK_FDS + 5] {
            let mut set = PollSet::new(PollFd::new(fd(0), PollFlags::POLLIN));
            for i in 1..n {
                set.push(PollFd::new(fd(i), PollFlags::POLLIN));
            }
            assert_eq!(set.heap.is_empty(), n <= STACK_FDS, "{n}");
            let got: Vec<i32> = set
                .as_mut_slice()
                .iter()
                .map(|p| p.as_fd().as_raw_fd())
                .collect();
            let want: Vec<i32> = files[..n].iter().map(|f| f.as_raw_fd()).collect();
            assert_eq!(got, want, "{n}");
        }
    }
}
