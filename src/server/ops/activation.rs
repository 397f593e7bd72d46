//! systemd socket activation (`sd_listen_fds(3)`).
//!
//! With socket activation systemd (or any supervisor speaking the same
//! protocol) binds the listening sockets itself and starts the server with
//! them open at descriptors 3, 4, … and two variables in the environment:
//! `LISTEN_FDS` (how many) and `LISTEN_PID` (for which process). The server
//! then serves on those sockets instead of binding: it can start without
//! privileges for port 80, it can be restarted without a refused
//! connection (the socket stays open in systemd), and it can be started on
//! the first connection.
//!
//! The variables are checked and removed, as `sd_listen_fds(1)` does:
//! `LISTEN_PID` must be this process (a child that inherited the
//! environment must not take its parent's sockets), and the variables must
//! not leak to programs this server runs. The sockets are marked
//! close-on-exec for the same reason. Call [`listen_fds`] early in `main`,
//! before starting threads: changing the environment is not thread-safe.

use std::net::TcpListener;
use std::os::fd::OwnedFd;

use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};

use crate::process::inherited::adopt_inherited_fds;
use crate::{Error, Result};

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: i32 = 3;

/// Takes the sockets passed by socket activation, in order. Returns an
/// empty list when the process was not socket-activated (no `LISTEN_PID`,
/// or one naming another process).
///
/// # Errors
/// [`Error::InvalidArgument`] when `LISTEN_PID`/`LISTEN_FDS` are malformed,
/// a descriptor is not open, or the descriptors were already taken.
pub fn listen_fds() -> Result<Vec<OwnedFd>> {
    let pid = std::env::var("LISTEN_PID");
    let fds = std::env::var("LISTEN_FDS");
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let Ok(pid) = pid else {
        return Ok(Vec::new());
    };
    let pid: i32 = pid
        .trim()
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("LISTEN_PID is not a pid: {pid:?}")))?;
    if pid != std::process::id() as i32 {
        return Ok(Vec::new());
    }
    let fds =
        fds.map_err(|_| Error::InvalidArgument("LISTEN_PID set without LISTEN_FDS".into()))?;
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("LISTEN_FDS is not a count: {fds:?}")))?;
    adopt_inherited_fds(LISTEN_FDS_START, count)
}

/// Like [`listen_fds`], but checks every socket is a listening TCP socket
/// and returns them as `std::net::TcpListener`s, ready for
/// [`ServerBuilder::from_socket`](crate::server::ServerBuilder::from_socket)
/// under any strategy.
///
/// # Errors
/// As [`listen_fds`], or [`Error::InvalidArgument`] naming the first
/// descriptor that is not a listening IPv4/IPv6 stream socket.
pub fn tcp_listeners() -> Result<Vec<TcpListener>> {
    listen_fds()?.into_iter().map(into_tcp_listener).collect()
}

/// Checks that `fd` is a listening TCP socket and converts it.
///
/// # Errors
/// [`Error::InvalidArgument`] when it is not a socket, not a stream
/// socket, not IPv4/IPv6, or not listening.
pub fn into_tcp_listener(fd: OwnedFd) -> Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    let not = |what: &str| Error::InvalidArgument(format!("descriptor {raw} is not {what}"));
    let ty = getsockopt(&fd, sockopt::SockType).map_err(|_| not("a socket"))?;
    if ty != SockType::Stream {
        return Err(not("a stream socket"));
    }
    let addr: SockaddrStorage = getsockname(raw).map_err(|_| not("a socket"))?;
    if !matches!(
        addr.family(),
        Some(AddressFamily::Inet) | Some(AddressFamily::Inet6)
    ) {
        return Err(not("an IPv4/IPv6 socket"));
    }
    if !getsockopt(&fd, sockopt::AcceptConn).map_err(|_| not("a socket"))? {
        return Err(not("listening"));
    }
    Ok(TcpListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_tcp_sockets_convert() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let back = into_tcp_listener(OwnedFd::from(l)).unwrap();
        assert_eq!(back.local_addr().unwrap(), addr);

        let conn = std::net::TcpStream::connect(addr).unwrap();
        let err = into_tcp_listener(OwnedFd::from(conn)).unwrap_err();
        assert!(err.to_string().contains("not listening"), "{err}");

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = into_tcp_listener(OwnedFd::from(udp)).unwrap_err();
        assert!(err.to_string().contains("stream socket"), "{err}");

        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = into_tcp_listener(OwnedFd::from(a)).unwrap_err();
        assert!(err.to_string().contains("IPv4/IPv6"), "{err}");

        let file = std::fs::File::open("/dev/null").unwrap();
        let err = into_tcp_listener(OwnedFd::from(file)).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
    }
}
