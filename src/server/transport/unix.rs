//! Unix-domain stream and datagram transports.
//!
//! Like Python, binding fails with `EADDRINUSE` when the path already
//! exists (a stale file is not silently removed: it might belong to a live
//! server). Unlike Python, the server removes the socket file it created
//! when it is closed.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use socket2::{Domain, SockAddr, Socket, Type};

use super::{check_adopted, BindAddress, ServerSocket, SocketKind, Transport};

/// Unix stream sockets: Python's `UnixStreamServer` socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixStreamTransport;

/// Unix datagram sockets: Python's `UnixDatagramServer` socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixDatagramTransport;

/// A Unix socket path, displayed as `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixPath(pub PathBuf);

impl UnixPath {
    /// The filesystem path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for UnixPath {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl fmt::Display for UnixPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

fn open(ty: Type, kind: SocketKind) -> io::Result<ServerSocket> {
    let socket = Socket::new(Domain::UNIX, ty, None)?;
    socket.set_nonblocking(true)?;
    Ok(ServerSocket::from_socket2(socket, kind))
}

fn adopted_path(socket: &ServerSocket) -> io::Result<UnixPath> {
    let addr = socket.sock_ref().local_addr()?;
    addr.as_pathname()
        .map(|p| UnixPath(p.to_path_buf()))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "inherited Unix socket has no path",
            )
        })
}

fn cleanup(address: &UnixPath) {
    if let Err(e) = std::fs::remove_file(&address.0) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %address, error = %e, "could not remove the socket file");
        }
    }
}

impl Transport for UnixStreamTransport {
    type Address = UnixPath;
    const SCHEME: &'static str = "unix";

    fn adopt(fd: OwnedFd) -> io::Result<(ServerSocket, UnixPath)> {
        let socket = check_adopted(fd, Type::STREAM, SocketKind::UnixStream)?;
        let path = adopted_path(&socket)?;
        Ok((socket, path))
    }

    fn socket(_: &UnixPath) -> io::Result<ServerSocket> {
        open(Type::STREAM, SocketKind::UnixStream)
    }

    fn sock_addr(address: &UnixPath) -> io::Result<SockAddr> {
        SockAddr::unix(&address.0)
    }

    fn bound_address(_: &ServerSocket, requested: &UnixPath) -> io::Result<UnixPath> {
        Ok(requested.clone())
    }

    fn cleanup(address: &UnixPath) {
        cleanup(address)
    }
}

impl Transport for UnixDatagramTransport {
    type Address = UnixPath;
    const SCHEME: &'static str = "unixgram";

    fn adopt(fd: OwnedFd) -> io::Result<(ServerSocket, UnixPath)> {
        let socket = check_adopted(fd, Type::DGRAM, SocketKind::UnixDatagram)?;
        let path = adopted_path(&socket)?;
        Ok((socket, path))
    }

    fn socket(_: &UnixPath) -> io::Result<ServerSocket> {
        open(Type::DGRAM, SocketKind::UnixDatagram)
    }

    fn sock_addr(address: &UnixPath) -> io::Result<SockAddr> {
        SockAddr::unix(&address.0)
    }

    fn bound_address(_: &ServerSocket, requested: &UnixPath) -> io::Result<UnixPath> {
        Ok(requested.clone())
    }

    fn cleanup(address: &UnixPath) {
        cleanup(address)
    }
}

impl<P: AsRef<Path>> BindAddress<UnixStreamTransport> for P {
    fn into_address(self) -> io::Result<UnixPath> {
        Ok(UnixPath(self.as_ref().to_path_buf()))
    }
}

impl<P: AsRef<Path>> BindAddress<UnixDatagramTransport> for P {
    fn into_address(self) -> io::Result<UnixPath> {
        Ok(UnixPath(self.as_ref().to_path_buf()))
    }
}
