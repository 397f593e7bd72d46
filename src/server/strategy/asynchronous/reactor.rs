//! The server socket as tokio sees it during `serve_forever`.

use std::io;

use tokio::io::Interest;

use crate::handler::{PeerAddr, Stream};
use crate::server::incoming::Incoming;
use crate::server::transport::ServerSocket;

/// The server socket's duplicate registered with tokio for the length of
/// `serve_forever` (dropped when it returns, so the drain holds no extra
/// copy of the listening socket).
pub(super) enum Reactor {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
    Udp(tokio::net::UdpSocket),
    UnixDatagram(tokio::net::UnixDatagram),
}

impl Reactor {
    pub(super) fn register(socket: &ServerSocket) -> io::Result<Reactor> {
        Ok(match socket {
            ServerSocket::Tcp(l) => {
                Reactor::Tcp(tokio::net::TcpListener::from_std(l.try_clone()?)?)
            }
            ServerSocket::UnixStream(l) => {
                Reactor::Unix(tokio::net::UnixListener::from_std(l.try_clone()?)?)
            }
            ServerSocket::Udp(s) => Reactor::Udp(tokio::net::UdpSocket::from_std(s.try_clone()?)?),
            ServerSocket::UnixDatagram(s) => {
                Reactor::UnixDatagram(tokio::net::UnixDatagram::from_std(s.try_clone()?)?)
            }
        })
    }

    /// Python's `get_request`, awaited: a connection with blocking I/O
    /// for the handler (left non-blocking over TCP when `native`: a native
    /// handler serves it), or a datagram read by the server socket's own
    /// `receive`.
    pub(super) async fn get_request(
        &self,
        socket: &ServerSocket,
        buf: &mut [u8],
        native: bool,
    ) -> io::Result<(Incoming, PeerAddr)> {
        match self {
            Reactor::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let s = s.into_std()?;
                // A native handler gets the stream back in tokio, which
                // wants it non-blocking: two `ioctl`s per connection fewer.
                if !native {
                    s.set_nonblocking(false)?;
                }
                Ok((Incoming::Stream(Stream::Tcp(s)), peer.into()))
            }
            Reactor::Unix(l) => {
                let (s, _) = l.accept().await?;
                let s = s.into_std()?;
                s.set_nonblocking(false)?;
                let peer = s.peer_addr()?;
                Ok((Incoming::Stream(Stream::Unix(s)), peer.into()))
            }
            Reactor::Udp(u) => loop {
                u.readable().await?;
                match u.try_io(Interest::READABLE, || socket.receive(buf)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            },
            Reactor::UnixDatagram(u) => loop {
                u.readable().await?;
                match u.try_io(Interest::READABLE, || socket.receive(buf)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            },
        }
    }
}
