//! The server socket as tokio sees it during `serve_forever`.

use std::io;
use std::net::TcpStream as StdTcpStream;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use socket2::SockRef;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::handler::{PeerAddr, Stream};
use crate::server::incoming::Incoming;
use crate::server::transport::ServerSocket;

/// A server socket registered with tokio's reactor for readiness only:
/// `accept` and `recvfrom` are the crate's own calls on it (through
/// [`AsyncFd`]), so an accepted connection is never registered with tokio
/// just to be taken out again (`into_std`), which cost two `epoll_ctl` per
/// connection.
///
/// Stream listeners are duplicates (dropped when `serve_forever` returns,
/// so the drain holds no extra copy of the listening socket); datagram
/// sockets are the server's own, shared, because the replies of the
/// datagrams read here go through that same socket.
pub(super) struct Reactor(AsyncFd<Registered>);

/// The socket `AsyncFd` owns.
struct Registered(ServerSocket);

impl AsRawFd for Registered {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Reactor {
    /// A copy of `socket` for the accept task (see the type's docs).
    pub(super) fn share(socket: &ServerSocket) -> io::Result<ServerSocket> {
        Ok(match socket {
            ServerSocket::Tcp(l) => ServerSocket::Tcp(l.try_clone()?),
            ServerSocket::UnixStream(l) => ServerSocket::UnixStream(l.try_clone()?),
            ServerSocket::Udp(s) => ServerSocket::Udp(Arc::clone(s)),
            ServerSocket::UnixDatagram(s) => ServerSocket::UnixDatagram(Arc::clone(s)),
        })
    }

    /// Registers `socket` (from [`share`](Self::share)); must run inside
    /// the runtime.
    // `AsyncFd::with_interest` is deprecated because for an arbitrary
    // `T: AsRawFd` the descriptor might be closed while still registered
    // (the safe replacement is an `unsafe fn`, which this crate keeps
    // under `src/process/`). Here `T` is `Registered`, which owns the
    // socket (an owned listener, or a strong `Arc` of the datagram
    // socket), and `AsyncFd` deregisters before it drops its `T`: the
    // descriptor outlives its registration.
    #[allow(deprecated)]
    pub(super) fn register(socket: ServerSocket) -> io::Result<Reactor> {
        Ok(Reactor(AsyncFd::with_interest(
            Registered(socket),
            Interest::READABLE,
        )?))
    }

    /// Python's `get_request`, awaited: a connection with blocking I/O
    /// for the handler (non-blocking over TCP when `native`: a native
    /// handler serves it in tokio), or a datagram read into `buf`.
    pub(super) async fn get_request(
        &self,
        buf: &mut [u8],
        native: bool,
    ) -> io::Result<(Incoming, PeerAddr)> {
        self.0
            .async_io(Interest::READABLE, |r| receive(&r.0, buf, native))
            .await
    }
}

/// One `accept` or `recvfrom` without waiting. A native handler's TCP
/// connection is accepted non-blocking in the same `accept4` (no
/// `ioctl` afterwards); everything else is what
/// [`ServerSocket::receive`] gives the other strategies (blocking
/// connections: on Linux an accepted socket does not inherit the
/// listener's `O_NONBLOCK`).
fn receive(
    socket: &ServerSocket,
    buf: &mut [u8],
    native: bool,
) -> io::Result<(Incoming, PeerAddr)> {
    match socket {
        ServerSocket::Tcp(l) if native => {
            let (s, addr) = SockRef::from(l).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
            let peer = addr.as_socket().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "accepted a non-IP address")
            })?;
            let s: StdTcpStream = s.into();
            Ok((Incoming::Stream(Stream::Tcp(s)), peer.into()))
        }
        other => other.receive(buf),
    }
}
