//! TCP and UDP transports, IPv4 and IPv6.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::{check_adopted, BindAddress, ServerSocket, SocketKind, Transport};

/// TCP: Python's `TCPServer` socket. Listens with a backlog of `SOMAXCONN`
/// by default (Python uses 5, which drops connections under load).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpTransport;

/// UDP: Python's `UDPServer` socket. Each datagram is one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct UdpTransport;

fn open(
    addr: &SocketAddr,
    ty: Type,
    proto: Protocol,
    kind: SocketKind,
) -> io::Result<ServerSocket> {
    let socket = Socket::new(Domain::for_address(*addr), ty, Some(proto))?;
    socket.set_nonblocking(true)?;
    Ok(ServerSocket::from_socket2(socket, kind))
}

fn bound(socket: &ServerSocket) -> io::Result<SocketAddr> {
    socket
        .sock_ref()
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound address is not an IP address"))
}

impl Transport for TcpTransport {
    type Address = SocketAddr;
    const SCHEME: &'static str = "tcp";
    const REUSE_ADDRESS_BY_DEFAULT: bool = true;

    fn adopt(fd: OwnedFd) -> io::Result<(ServerSocket, SocketAddr)> {
        let socket = check_adopted(fd, Type::STREAM, SocketKind::Tcp)?;
        let address = bound(&socket)?;
        Ok((socket, address))
    }

    fn socket(address: &SocketAddr) -> io::Result<ServerSocket> {
        open(address, Type::STREAM, Protocol::TCP, SocketKind::Tcp)
    }

    fn sock_addr(address: &SocketAddr) -> io::Result<SockAddr> {
        Ok(SockAddr::from(*address))
    }

    fn bound_address(socket: &ServerSocket, _: &SocketAddr) -> io::Result<SocketAddr> {
        bound(socket)
    }
}

impl Transport for UdpTransport {
    type Address = SocketAddr;
    const SCHEME: &'static str = "udp";

    fn adopt(fd: OwnedFd) -> io::Result<(ServerSocket, SocketAddr)> {
        let socket = check_adopted(fd, Type::DGRAM, SocketKind::Udp)?;
        let address = bound(&socket)?;
        Ok((socket, address))
    }

    fn socket(address: &SocketAddr) -> io::Result<ServerSocket> {
        open(address, Type::DGRAM, Protocol::UDP, SocketKind::Udp)
    }

    fn sock_addr(address: &SocketAddr) -> io::Result<SockAddr> {
        Ok(SockAddr::from(*address))
    }

    fn bound_address(socket: &ServerSocket, _: &SocketAddr) -> io::Result<SocketAddr> {
        bound(socket)
    }
}

fn resolve(a: impl ToSocketAddrs) -> io::Result<SocketAddr> {
    a.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "address resolved to no socket address",
        )
    })
}

impl<A: ToSocketAddrs> BindAddress<TcpTransport> for A {
    fn into_address(self) -> io::Result<SocketAddr> {
        resolve(self)
    }
}

impl<A: ToSocketAddrs> BindAddress<UdpTransport> for A {
    fn into_address(self) -> io::Result<SocketAddr> {
        resolve(self)
    }
}
