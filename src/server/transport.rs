//! Transports: how a server socket is created, bound, activated and read.
//!
//! Python's `TCPServer`, `UDPServer`, `UnixStreamServer` and
//! `UnixDatagramServer` differ only in the socket they own. Here that
//! difference is a [`Transport`] type parameter; the socket itself is a
//! [`ServerSocket`] created through `socket2` (close-on-exec, options set
//! before `bind`) and kept as the matching `std` socket.

use std::fmt;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::sync::Arc;

use socket2::{SockAddr, SockRef, Socket};

use super::incoming::{Datagram, Incoming, ReplySocket};
use crate::handler::PeerAddr;

/// One of the four server socket kinds. Implemented by [`TcpTransport`],
/// [`UdpTransport`], [`UnixStreamTransport`] and
/// [`UnixDatagramTransport`](super::UnixDatagramTransport).
///
/// [`TcpTransport`]: super::TcpTransport
/// [`UdpTransport`]: super::UdpTransport
/// [`UnixStreamTransport`]: super::UnixStreamTransport
pub trait Transport: Send + Sync + 'static {
    /// The address a server binds to and reports: `SocketAddr` for TCP and
    /// UDP, a path for Unix sockets.
    type Address: Clone + fmt::Debug + fmt::Display + Send + Sync + 'static;

    /// URL-style scheme for logs: `tcp`, `udp`, `unix`, `unixgram`.
    const SCHEME: &'static str;

    /// Creates the unbound socket for `address` (close-on-exec).
    ///
    /// # Errors
    /// `socket(2)` failed.
    fn socket(address: &Self::Address) -> io::Result<ServerSocket>;

    /// The `sockaddr` to bind.
    ///
    /// # Errors
    /// The address cannot be expressed (a Unix path that is too long).
    fn sock_addr(address: &Self::Address) -> io::Result<SockAddr>;

    /// The address actually bound (for example the port chosen for port 0).
    ///
    /// # Errors
    /// `getsockname(2)` failed.
    fn bound_address(socket: &ServerSocket, requested: &Self::Address)
        -> io::Result<Self::Address>;

    /// Undoes what binding left behind once the socket is closed: a Unix
    /// server removes its socket file. Default does nothing.
    fn cleanup(address: &Self::Address) {
        let _ = address;
    }
}

/// Something a server of transport `T` can bind to: anything
/// `ToSocketAddrs` for TCP/UDP (the first resolved address is used), any
/// path for Unix sockets.
pub trait BindAddress<T: Transport> {
    /// Resolves to the transport's address.
    ///
    /// # Errors
    /// Name resolution failed or produced no address.
    fn into_address(self) -> io::Result<T::Address>;
}

/// The server's own socket, as the `std` type matching its transport.
#[derive(Debug)]
pub enum ServerSocket {
    /// A TCP listening socket.
    Tcp(TcpListener),
    /// A UDP socket, shared with the handlers that send replies.
    Udp(Arc<UdpSocket>),
    /// A Unix stream listening socket.
    UnixStream(UnixListener),
    /// A Unix datagram socket, shared with the handlers that send replies.
    UnixDatagram(Arc<UnixDatagram>),
}

impl ServerSocket {
    pub(crate) fn from_socket2(socket: Socket, kind: SocketKind) -> Self {
        let fd = std::os::fd::OwnedFd::from(socket);
        match kind {
            SocketKind::Tcp => ServerSocket::Tcp(TcpListener::from(fd)),
            SocketKind::Udp => ServerSocket::Udp(Arc::new(UdpSocket::from(fd))),
            SocketKind::UnixStream => ServerSocket::UnixStream(UnixListener::from(fd)),
            SocketKind::UnixDatagram => {
                ServerSocket::UnixDatagram(Arc::new(UnixDatagram::from(fd)))
            }
        }
    }

    /// A `socket2` view for setting options (Python's `self.socket`).
    pub fn sock_ref(&self) -> SockRef<'_> {
        SockRef::from(self)
    }

    /// `true` for stream sockets, which `listen` and `accept`.
    pub fn is_stream(&self) -> bool {
        matches!(self, ServerSocket::Tcp(_) | ServerSocket::UnixStream(_))
    }

    /// Accepts a connection or receives a datagram (into `buf`, then copied
    /// out at its exact length). The socket is non-blocking, so a spurious
    /// wake-up yields `WouldBlock`.
    ///
    /// # Errors
    /// `accept(2)` or `recvfrom(2)` failed.
    pub fn receive(&self, buf: &mut [u8]) -> io::Result<(Incoming, PeerAddr)> {
        match self {
            ServerSocket::Tcp(l) => {
                // On Linux an accepted socket does not inherit the
                // listener's O_NONBLOCK: handlers get blocking I/O.
                let (s, a) = l.accept()?;
                Ok((Incoming::Stream(s.into()), a.into()))
            }
            ServerSocket::UnixStream(l) => {
                let (s, a) = l.accept()?;
                Ok((Incoming::Stream(s.into()), a.into()))
            }
            ServerSocket::Udp(s) => {
                let (n, a) = s.recv_from(buf)?;
                let d = Datagram {
                    packet: buf[..n].to_vec(),
                    socket: ReplySocket::Udp(s.clone()),
                };
                Ok((Incoming::Datagram(d), a.into()))
            }
            ServerSocket::UnixDatagram(s) => {
                let (n, a) = s.recv_from(buf)?;
                let d = Datagram {
                    packet: buf[..n].to_vec(),
                    socket: ReplySocket::Unix(s.clone()),
                };
                Ok((Incoming::Datagram(d), a.into()))
            }
        }
    }
}

impl AsFd for ServerSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            ServerSocket::Tcp(s) => s.as_fd(),
            ServerSocket::Udp(s) => s.as_fd(),
            ServerSocket::UnixStream(s) => s.as_fd(),
            ServerSocket::UnixDatagram(s) => s.as_fd(),
        }
    }
}

/// Which `std` type a fresh socket becomes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SocketKind {
    Tcp,
    Udp,
    UnixStream,
    UnixDatagram,
}

/// How `get_request` failures are treated, after axum's accept loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AcceptError {
    /// Nothing to do: a spurious wake-up or an interrupted call.
    Retry,
    /// One connection failed (reset or aborted before `accept`); skip it.
    Skip,
    /// Out of descriptors or memory: wait a moment before accepting again
    /// instead of spinning on a listener that stays readable.
    BackOff,
    /// Anything else; also skipped, but logged as an error.
    Other,
}

pub(crate) fn classify(e: &io::Error) -> AcceptError {
    use nix::errno::Errno;
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    ) {
        return AcceptError::Retry;
    }
    match e.raw_os_error().map(Errno::from_raw) {
        Some(
            Errno::ECONNABORTED
            | Errno::ECONNRESET
            | Errno::EPROTO
            | Errno::EPERM
            | Errno::ENETDOWN
            | Errno::ENOPROTOOPT
            | Errno::EHOSTDOWN
            | Errno::ENONET
            | Errno::EHOSTUNREACH
            | Errno::EOPNOTSUPP
            | Errno::ENETUNREACH
            | Errno::ECONNREFUSED,
        ) => AcceptError::Skip,
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM) => {
            AcceptError::BackOff
        }
        _ => AcceptError::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_classified() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(classify(&e(libc::EMFILE)), AcceptError::BackOff);
        assert_eq!(classify(&e(libc::ENFILE)), AcceptError::BackOff);
        assert_eq!(classify(&e(libc::ECONNABORTED)), AcceptError::Skip);
        assert_eq!(classify(&e(libc::EAGAIN)), AcceptError::Retry);
        assert_eq!(classify(&e(libc::EINTR)), AcceptError::Retry);
        assert_eq!(classify(&e(libc::EBADF)), AcceptError::Other);
    }
}
