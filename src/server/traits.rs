//! The [`Server`] trait: Python's `BaseServer` interface.

use std::io;

use crate::error::{Error, Result};
use crate::handler::PeerAddr;

use super::incoming::Incoming;
use super::wakeup::ShutdownHandle;

/// A server that owns its connection loop, with CPython's method names and
/// meanings. [`SocketServer`](super::SocketServer) implements it for every
/// transport × strategy; the hook methods delegate to the server's
/// [`Hooks`](super::Hooks) and [`Strategy`](super::Strategy).
pub trait Server {
    /// What [`server_address`](Self::server_address) returns.
    type Address;

    /// Binds the socket to the address (sets reuse options first). Called
    /// by the constructor unless `bind_and_activate(false)`.
    ///
    /// # Errors
    /// `bind(2)` failed, for example with `AddrInUse`.
    fn server_bind(&mut self) -> Result<()>;

    /// Starts listening (stream servers; a no-op for datagram servers).
    ///
    /// # Errors
    /// `listen(2)` failed.
    fn server_activate(&mut self) -> Result<()>;

    /// The bound address: the real port after binding port 0.
    fn server_address(&self) -> Self::Address;

    /// Accepts a connection or receives a datagram. The socket is
    /// non-blocking: call it when the socket is readable.
    ///
    /// # Errors
    /// `accept(2)`/`recvfrom(2)` failed; `WouldBlock` when nothing waits.
    fn get_request(&mut self) -> io::Result<(Incoming, PeerAddr)>;

    /// Whether to serve this request (the hook; default `true`).
    fn verify_request(&mut self, request: &Incoming, peer: &PeerAddr) -> bool;

    /// Serves or dispatches the request according to the strategy.
    fn process_request(&mut self, request: Incoming, peer: PeerAddr);

    /// Runs the handler for one request in the calling thread, returning
    /// the request for [`shutdown_request`](Self::shutdown_request).
    ///
    /// # Errors
    /// The handler's error, or [`Error::Panicked`].
    fn finish_request(&self, request: Incoming, peer: &PeerAddr) -> (Option<Incoming>, Result<()>);

    /// Cleans up a request (the hook; default shuts the stream down).
    fn shutdown_request(&mut self, request: Incoming);

    /// Reports a failed request (the hook; default logs with the peer).
    fn handle_error(&self, peer: &PeerAddr, error: &Error);

    /// Called when [`handle_request`](Self::handle_request) times out.
    fn handle_timeout(&mut self);

    /// Housekeeping once per loop iteration.
    fn service_actions(&mut self);

    /// Serves requests until [`ShutdownHandle::shutdown`] is called (also
    /// if it was called before the loop started). Sleeps in `poll(2)`
    /// until a request or a wake-up arrives; no polling interval.
    ///
    /// # Errors
    /// The server is closed, or `poll(2)` failed.
    fn serve_forever(&mut self) -> Result<()>;

    /// Serves a single request, waiting at most the configured `timeout`;
    /// calls [`handle_timeout`](Self::handle_timeout) when none arrived.
    ///
    /// # Errors
    /// The server is closed, or `poll(2)` failed.
    fn handle_request(&mut self) -> Result<()>;

    /// A cloneable, thread-safe handle that stops `serve_forever`.
    fn shutdown_handle(&self) -> ShutdownHandle;

    /// Closes the socket, removes a Unix socket file, and (with
    /// `block_on_close`) waits for running threads or children. Calling it
    /// again does nothing.
    fn server_close(&mut self);
}
