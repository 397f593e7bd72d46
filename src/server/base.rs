//! [`SocketServer`]: one transport, one strategy, Python's `BaseServer` loop.

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use socket2::SockRef;

use crate::error::{Error, Result};
use crate::handler::PeerAddr;

use super::core::{Factory, ServerCore};
use super::hooks::Hooks;
use super::incoming::Incoming;
use super::options::{ServerBuilder, ServerOptions};
use super::strategy::{LoopWaker, Strategy};
use super::traits::Server;
use super::transport::{classify, AcceptError, BindAddress, ServerSocket, Transport};
use super::wakeup::{ShutdownHandle, Wakeup};

/// How long the loop stops accepting after `EMFILE`/`ENFILE`.
const BACKOFF: Duration = Duration::from_millis(100);

/// Most requests taken per wake-up before housekeeping runs again.
const BATCH: usize = 16;

/// A server over transport `T` with strategy `S`. Use the aliases
/// ([`TcpServer`](super::TcpServer), [`ThreadingTcpServer`](super::ThreadingTcpServer),
/// …) rather than naming the parameters.
///
/// Dropping the server closes it (see [`Server::server_close`]).
pub struct SocketServer<T: Transport, S: Strategy> {
    socket: Option<ServerSocket>,
    address: T::Address,
    bound: bool,
    closed: bool,
    options: ServerOptions,
    core: Arc<ServerCore>,
    strategy: S,
    wakeup: Arc<Wakeup>,
    buf: Vec<u8>,
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
    /// Resolving, creating, binding or listening failed. Nothing leaks.
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

    pub(crate) fn create(
        address: T::Address,
        factory: Factory,
        hooks: Arc<dyn Hooks>,
        options: ServerOptions,
    ) -> Result<Self> {
        let wakeup = Wakeup::new()?;
        let strategy = S::new(&options, LoopWaker(wakeup.clone()))?;
        let socket = T::socket(&address)?;
        let mut server = SocketServer {
            socket: Some(socket),
            address,
            bound: false,
            closed: false,
            buf: Vec::new(),
            core: Arc::new(ServerCore {
                factory,
                hooks,
                connection_timeout: options.connection_timeout,
            }),
            options,
            strategy,
            wakeup,
        };
        if server.options.bind_and_activate {
            // On error `server` drops here, which closes the socket.
            server.server_bind()?;
            server.server_activate()?;
        }
        Ok(server)
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

    /// The settings this server was built with.
    pub fn options(&self) -> &ServerOptions {
        &self.options
    }

    /// Shorthand for `self.shutdown_handle().shutdown()`.
    pub fn shutdown(&self) {
        self.wakeup.request_shutdown();
    }

    fn live_socket(&self) -> Result<&ServerSocket> {
        self.socket.as_ref().ok_or(Error::Closed)
    }

    /// Python's `_handle_request_noblock`, with the accept-error policy.
    /// Returns `true` when a request was received (so another may wait).
    fn handle_request_noblock(&mut self) -> bool {
        match self.get_request() {
            Ok((request, peer)) => {
                if self.verify_request(&request, &peer) {
                    self.process_request(request, peer);
                } else {
                    self.shutdown_request(request);
                }
                true
            }
            Err(e) => {
                self.accept_failed(&e);
                false
            }
        }
    }

    fn accept_failed(&mut self, e: &io::Error) {
        match classify(e) {
            AcceptError::Retry => {}
            AcceptError::Skip => {
                tracing::debug!(error = %e, "skipping a failed connection")
            }
            AcceptError::BackOff => {
                tracing::warn!(error = %e, "out of resources; pausing accept for {BACKOFF:?}");
                // Wait on the wake-up fd only, so a shutdown still ends
                // the pause at once.
                let mut fds = [PollFd::new(self.wakeup.fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(BACKOFF.as_millis() as u16));
            }
            AcceptError::Other => tracing::error!(error = %e, "get_request failed"),
        }
    }

    fn run_loop(&mut self) -> Result<()> {
        loop {
            if self.wakeup.shutdown_requested() {
                return Ok(());
            }
            let listen = !self.strategy.at_capacity();
            let (woken, readable) = {
                let socket = self.live_socket()?;
                let extra = self.strategy.wait_fds();
                let mut fds = Vec::with_capacity(2 + extra.len());
                fds.push(PollFd::new(self.wakeup.fd(), PollFlags::POLLIN));
                fds.push(PollFd::new(socket.as_fd(), PollFlags::POLLIN));
                fds.extend(
                    extra
                        .into_iter()
                        .map(|fd| PollFd::new(fd, PollFlags::POLLIN)),
                );
                if !listen {
                    // Stop accepting while at capacity: keep everything else.
                    fds.swap_remove(1);
                }
                match poll(&mut fds, PollTimeout::NONE) {
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
            if self.wakeup.shutdown_requested() {
                return Ok(());
            }
            if readable {
                // Take what is already queued (bounded, so housekeeping and
                // shutdown are never starved), stopping at `WouldBlock`.
                for _ in 0..BATCH {
                    if !self.handle_request_noblock()
                        || self.wakeup.shutdown_requested()
                        || self.strategy.at_capacity()
                    {
                        break;
                    }
                }
            }
            self.service_actions();
        }
    }
}

impl<T: Transport, S: Strategy> Server for SocketServer<T, S> {
    type Address = T::Address;

    fn server_bind(&mut self) -> Result<()> {
        let socket = self.live_socket()?;
        let sock = socket.sock_ref();
        if self.options.allow_reuse_address {
            sock.set_reuse_address(true)?;
        }
        if self.options.allow_reuse_port {
            sock.set_reuse_port(true)?;
        }
        sock.bind(&T::sock_addr(&self.address)?)?;
        let bound = T::bound_address(socket, &self.address);
        self.bound = true;
        self.address = bound?;
        Ok(())
    }

    fn server_activate(&mut self) -> Result<()> {
        let socket = self.live_socket()?;
        if socket.is_stream() {
            socket.sock_ref().listen(self.options.backlog)?;
        }
        Ok(())
    }

    fn server_address(&self) -> T::Address {
        self.address.clone()
    }

    fn get_request(&mut self) -> io::Result<(Incoming, PeerAddr)> {
        let socket = self
            .socket
            .as_ref()
            .ok_or_else(|| io::Error::from(Error::Closed))?;
        if !socket.is_stream() && self.buf.len() != self.options.max_packet_size {
            self.buf.resize(self.options.max_packet_size, 0);
        }
        socket.receive(&mut self.buf)
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
        let result = self.run_loop();
        if result.is_ok() {
            tracing::debug!(server = %self.address, "shutdown requested; serve_forever returns");
        }
        self.wakeup.reset();
        result
    }

    fn handle_request(&mut self) -> Result<()> {
        let deadline = self.options.timeout.map(|t| Instant::now() + t);
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
                    let _ = self.handle_request_noblock();
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
        self.socket = None;
        if self.bound {
            T::cleanup(&self.address);
        }
        self.strategy.server_close(self.options.block_on_close);
    }
}

impl<T: Transport, S: Strategy> Drop for SocketServer<T, S> {
    fn drop(&mut self) {
        self.server_close();
    }
}
