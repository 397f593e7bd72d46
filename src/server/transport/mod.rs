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
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::sync::Arc;

use socket2::{SockAddr, SockRef, Socket};

use crate::handler::PeerAddr;
use crate::server::incoming::{Datagram, Incoming, ReplySocket};

mod inet;
mod unix;

pub use inet::{TcpTransport, UdpTransport};
pub use unix::{UnixDatagramTransport, UnixPath, UnixStreamTransport};

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

    /// Whether `SO_REUSEADDR` is set unless the builder says otherwise:
    /// `true` for TCP (a restarted server must not wait out `TIME_WAIT`),
    /// `false` for the others.
    const REUSE_ADDRESS_BY_DEFAULT: bool = false;

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

    /// Takes over a socket that is already bound (socket activation, a
    /// re-exec): checks its type, makes it non-blocking and reads its
    /// address.
    ///
    /// # Errors
    /// The descriptor is not a socket of this transport.
    fn adopt(fd: OwnedFd) -> io::Result<(ServerSocket, Self::Address)>;

    /// Undoes what binding left behind once the socket is closed: a Unix
    /// server removes its socket file. Default does nothing.
    fn cleanup(address: &Self::Address) {
        let _ = address;
    }

    /// Called when `bind` failed with `AddrInUse`: removes what a server
    /// that did not close (killed, or stopped without
    /// [`server_close`](super::Server::server_close)) left at the address,
    /// and returns `Ok(true)` when binding is worth trying again. A Unix
    /// transport removes a socket file nobody is bound to any more. Default
    /// removes nothing (`Ok(false)`: the address is in use).
    ///
    /// # Errors
    /// The address is taken by something that must not be removed (a Unix
    /// path that is not a socket), with a message saying what.
    fn clear_stale(address: &Self::Address) -> io::Result<bool> {
        let _ = address;
        Ok(false)
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

/// Checks that `fd` is a socket of `ty` (and, for streams, listening),
/// and makes it non-blocking.
pub(crate) fn check_adopted(
    fd: OwnedFd,
    ty: socket2::Type,
    kind: SocketKind,
) -> io::Result<ServerSocket> {
    let socket = Socket::from(fd);
    if socket.r#type()? != ty {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("inherited socket is not a {kind:?} socket"),
        ));
    }
    if ty == socket2::Type::STREAM && !socket.is_listener()? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "inherited stream socket is not listening",
        ));
    }
    socket.set_nonblocking(true)?;
    Ok(ServerSocket::from_socket2(socket, kind))
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
