//! The data channel: passive listeners (PASV/EPSV) and active connections
//! (PORT/EPRT), with the checks that stop FTP bounce attacks and data-port
//! theft.
//!
//! - A passive listener binds the control connection's local address and
//!   accepts only a connection from the control connection's peer IP; any
//!   other peer is dropped and the listener keeps waiting until the
//!   passive-accept timeout — or until the control connection closes or
//!   is reset, so a client that vanishes while the server waits for its
//!   data connection does not hold the session (and an open upload) for
//!   the whole timeout.
//! - Behind a balancer (`--proxy-protocol --proxy-from NETS`) a data
//!   connection from one of those balancers must start with a PROXY
//!   header, and the client address it carries is the one checked: an L4
//!   balancer forwards the passive ports too, so the connection's own
//!   peer is the balancer, never the client (stock clients connect to the
//!   control connection's host: EPSV carries no address, and curl ignores
//!   the one in a PASV reply by default).
//! - An active address must be the control connection's own peer IP and a
//!   port >= 1024. This is checked when PORT/EPRT arrives, *before* any
//!   connection is attempted.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use socketserver::server::proxy::{self, Cidr};
use socketserver::server::SharedWarning;

/// How the next transfer gets its data connection.
#[derive(Debug, Default)]
pub enum DataSetup {
    /// No PASV/EPSV/PORT/EPRT yet (transfers get `425`).
    #[default]
    None,
    /// Wait for the client on this listener.
    Passive(TcpListener),
    /// Connect to the client at this address.
    Active(SocketAddr),
}

/// Compares IPs with IPv4-mapped IPv6 addresses folded to IPv4.
pub fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// Binds a passive listener on `local_ip`, on a port from `range` when one
/// is configured (starting at a random offset so sessions spread out), or
/// on any free port.
///
/// # Errors
/// Every port of the range is taken, or `bind` failed.
pub fn open_passive(local_ip: IpAddr, range: Option<(u16, u16)>) -> io::Result<TcpListener> {
    let Some((low, high)) = range else {
        return TcpListener::bind((local_ip, 0));
    };
    let span = u32::from(high - low) + 1;
    let start = getrandom::u32().unwrap_or(0) % span;
    for i in 0..span {
        let port = low + ((start + i) % span) as u16;
        match TcpListener::bind((local_ip, port)) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free port in the passive range",
    ))
}

/// Waits up to `timeout` for `fd` to become readable.
///
/// # Errors
/// `poll` failed.
pub fn wait_readable(fd: impl AsFd, timeout: Duration) -> io::Result<bool> {
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    loop {
        match nix::poll::poll(&mut fds, ms) {
            Ok(n) => return Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Longest wait for the PROXY header on a data connection from a
/// balancer (it sends the header with the connection).
const DATA_PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts the data connection from `allowed` within `timeout`;
/// connections from any other IP are closed at once and ignored.
///
/// A connection from an address in `balancers` (the `--proxy-from`
/// networks, empty without `--proxy-protocol`) must start with a PROXY
/// header naming `allowed` as its source; the header is consumed, so the
/// caller reads (or starts TLS on) the client's own bytes.
///
/// `control` is the control connection's socket: the wait also ends when
/// its peer closes (FIN) or resets it. Only hang-up is watched, not
/// input, so a command the client sends meanwhile waits for the transfer
/// as before. Control bytes the caller already buffered (TLS) are not
/// looked at.
///
/// # Errors
/// `TimedOut` when nobody acceptable connected in time;
/// `ConnectionAborted` when the control connection closed or was reset;
/// an `accept` or `poll` error.
pub fn accept_from(
    listener: &TcpListener,
    allowed: IpAddr,
    balancers: &[Cidr],
    timeout: Duration,
    control: Option<BorrowedFd<'_>>,
    refusals: &SharedWarning,
) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !wait_accept(listener, control, left)? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no data connection within the passive timeout",
            ));
        }
        let (stream, peer) = match listener.accept() {
            Ok(got) => got,
            // Reset before it was accepted: keep waiting (and keep
            // ConnectionAborted for the control connection's end).
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        };
        if balancers.iter().any(|n| n.contains(peer.ip())) {
            let wait =
                DATA_PROXY_HEADER_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
            let why = match proxied_source(&stream, wait) {
                Ok(Some(client)) if same_ip(client, allowed) => return Ok(stream),
                Ok(Some(client)) => format!("through a balancer for the foreign address {client}"),
                Ok(None) => "through a balancer, with no client address".to_string(),
                Err(e) => format!("from a balancer without a valid PROXY header ({e})"),
            };
            refused(refusals, peer, allowed, &why);
            continue;
        }
        if same_ip(peer.ip(), allowed) {
            return Ok(stream);
        }
        refused(refusals, peer, allowed, "from a foreign address");
    }
}

/// Logs a refused passive data connection: `debug` each, and one `warn`
/// a minute counting them across every process (whoever reaches a passive
/// port can make as many as it likes).
fn refused(refusals: &SharedWarning, peer: std::net::SocketAddr, allowed: IpAddr, why: &str) {
    tracing::debug!(%peer, %allowed, "refused passive data connection {why}");
    if let Some(count) = refusals.due() {
        tracing::warn!(
            %peer, %allowed, count,
            "refused passive data connections (the latest shown: {why}); next report in a minute at the earliest"
        );
    }
}

/// Reads the PROXY header a balancer sent first on `stream` (within
/// `wait`, and never past the header); the client address it names, or
/// `None` for a header without one (`LOCAL`, `UNKNOWN`).
fn proxied_source(stream: &TcpStream, wait: Duration) -> io::Result<Option<IpAddr>> {
    stream.set_read_timeout(Some(wait.max(Duration::from_millis(1))))?;
    let header = proxy::read_proxy_header(&mut &*stream).map_err(io::Error::other)?;
    stream.set_read_timeout(None)?;
    Ok(header.source.map(|a| a.ip()))
}

/// Linux's `POLLRDHUP` (the peer shut down writing), which `nix` does not
/// name.
const POLLRDHUP: PollFlags = PollFlags::from_bits_retain(libc::POLLRDHUP);

/// Waits up to `timeout` for a connection on `listener`: `Ok(true)` when
/// one is waiting, `Ok(false)` at the timeout, `ConnectionAborted` when
/// `control` reports hang-up (`POLLRDHUP`: the peer shut down its side;
/// `POLLHUP`/`POLLERR`: reset or closed both ways).
fn wait_accept(
    listener: &TcpListener,
    control: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> io::Result<bool> {
    let Some(control) = control else {
        return wait_readable(listener, timeout);
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up to a whole millisecond, so the wait never ends early.
        let ms =
            PollTimeout::try_from(left + Duration::from_micros(999)).unwrap_or(PollTimeout::MAX);
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(control, POLLRDHUP),
        ];
        match nix::poll::poll(&mut fds, ms) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        // nix's `PollFlags` has no POLLRDHUP, so `revents()` is `None`
        // exactly when the kernel reported it (the only flag asked for
        // that nix does not know).
        let hung_up = fds[1].revents().is_none_or(|r| {
            r.intersects(POLLRDHUP | PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
        });
        if hung_up {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the control connection closed while waiting for the data connection",
            ));
        }
        if fds[0].any().unwrap_or(false) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// Connects to an already checked active address within `timeout`.
///
/// # Errors
/// The client did not accept in time, or refused.
pub fn connect_active(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, timeout)
}

/// Why an active address is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveError {
    /// The argument does not parse.
    Syntax,
    /// The address family is not supported (EPRT protocol other than 1, 2).
    Family,
    /// Not the control connection's peer, or a privileged port.
    Forbidden,
}

/// Parses a `PORT h1,h2,h3,h4,p1,p2` argument.
///
/// # Errors
/// [`ActiveError::Syntax`] for anything but six numbers 0-255.
pub fn parse_port(arg: &str) -> Result<SocketAddr, ActiveError> {
    let nums: Vec<u8> = arg
        .trim()
        .split(',')
        .map(|p| p.trim().parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| ActiveError::Syntax)?;
    let [a, b, c, d, p1, p2] = nums[..] else {
        return Err(ActiveError::Syntax);
    };
    let ip = Ipv4Addr::new(a, b, c, d);
    Ok(SocketAddr::new(
        IpAddr::V4(ip),
        u16::from(p1) << 8 | u16::from(p2),
    ))
}

/// Parses an `EPRT |proto|addr|port|` argument (RFC 2428); the delimiter is
/// whatever the first character is.
///
/// # Errors
/// [`ActiveError::Syntax`] or [`ActiveError::Family`].
pub fn parse_eprt(arg: &str) -> Result<SocketAddr, ActiveError> {
    let mut chars = arg.chars();
    let delim = chars.next().ok_or(ActiveError::Syntax)?;
    if !(33..=126).contains(&(delim as u32)) {
        return Err(ActiveError::Syntax);
    }
    let parts: Vec<&str> = arg.split(delim).collect();
    let [_, proto, addr, port, rest] = parts[..] else {
        return Err(ActiveError::Syntax);
    };
    if !rest.is_empty() {
        return Err(ActiveError::Syntax);
    }
    let port: u16 = port.parse().map_err(|_| ActiveError::Syntax)?;
    let ip: IpAddr = match proto {
        "1" => IpAddr::V4(addr.parse().map_err(|_| ActiveError::Syntax)?),
        "2" => IpAddr::V6(addr.parse().map_err(|_| ActiveError::Syntax)?),
        _ => return Err(ActiveError::Family),
    };
    Ok(SocketAddr::new(ip, port))
}

/// The bounce-attack check: the data address must be the control peer's
/// own IP, on an unprivileged port.
///
/// # Errors
/// [`ActiveError::Forbidden`].
pub fn check_active(addr: SocketAddr, control_peer: IpAddr) -> Result<(), ActiveError> {
    if addr.port() < 1024 || !same_ip(addr.ip(), control_peer) {
        return Err(ActiveError::Forbidden);
    }
    Ok(())
}

/// The text of a `227` reply for a passive listener on `addr`.
///
/// Returns `None` for an IPv6 address, which PASV cannot express (clients
/// use EPSV there).
pub fn pasv_text(addr: SocketAddr) -> Option<String> {
    let IpAddr::V4(ip) = addr.ip().to_canonical() else {
        return None;
    };
    let [a, b, c, d] = ip.octets();
    let port = addr.port();
    Some(format!(
        "Entering Passive Mode ({a},{b},{c},{d},{},{}).",
        port >> 8,
        port & 0xff
    ))
}

/// The text of a `229` reply.
pub fn epsv_text(port: u16) -> String {
    format!("Entering Extended Passive Mode (|||{port}|)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_argument() {
        let a = parse_port("127,0,0,1,4,1").unwrap();
        assert_eq!(a, "127.0.0.1:1025".parse().unwrap());
        assert_eq!(parse_port("127,0,0,1,4"), Err(ActiveError::Syntax));
        assert_eq!(parse_port("127,0,0,1,4,256"), Err(ActiveError::Syntax));
        assert_eq!(parse_port("a,b,c,d,e,f"), Err(ActiveError::Syntax));
    }

    #[test]
    fn eprt_argument() {
        let a = parse_eprt("|1|132.235.1.2|6275|").unwrap();
        assert_eq!(a, "132.235.1.2:6275".parse().unwrap());
        let a = parse_eprt("!2!::1!5282!").unwrap();
        assert_eq!(a, "[::1]:5282".parse().unwrap());
        assert_eq!(parse_eprt("|3|x|1|"), Err(ActiveError::Family));
        assert_eq!(parse_eprt("|1|::1|1|"), Err(ActiveError::Syntax));
        assert_eq!(parse_eprt("|1|1.2.3.4|99999|"), Err(ActiveError::Syntax));
        assert_eq!(parse_eprt(""), Err(ActiveError::Syntax));
    }

    #[test]
    fn bounce_checks() {
        let me: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(check_active("127.0.0.1:5000".parse().unwrap(), me).is_ok());
        assert_eq!(
            check_active("127.0.0.2:5000".parse().unwrap(), me),
            Err(ActiveError::Forbidden)
        );
        assert_eq!(
            check_active("127.0.0.1:25".parse().unwrap(), me),
            Err(ActiveError::Forbidden)
        );
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(check_active("127.0.0.1:5000".parse().unwrap(), mapped).is_ok());
    }

    #[test]
    fn reply_texts() {
        let t = pasv_text("127.0.0.1:1025".parse().unwrap()).unwrap();
        assert_eq!(t, "Entering Passive Mode (127,0,0,1,4,1).");
        assert!(pasv_text("[::1]:1025".parse().unwrap()).is_none());
        assert_eq!(epsv_text(5000), "Entering Extended Passive Mode (|||5000|)");
    }

    #[test]
    fn passive_range_and_foreign_peer() {
        let l = open_passive("127.0.0.1".parse().unwrap(), Some((40000, 40100))).unwrap();
        let port = l.local_addr().unwrap().port();
        assert!((40000..=40100).contains(&port));
        // Only 127.0.0.1 may connect; a connection from 127.0.0.2 is dropped.
        let addr = l.local_addr().unwrap();
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        sock.connect(&addr.into()).unwrap();
        let err = accept_from(
            &l,
            "127.0.0.1".parse().unwrap(),
            &[],
            Duration::from_millis(300),
            None,
            &SharedWarning::new(),
        );
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::TimedOut);
        let _ok = TcpStream::connect(addr).unwrap();
        let s = accept_from(
            &l,
            "127.0.0.1".parse().unwrap(),
            &[],
            Duration::from_secs(5),
            None,
            &SharedWarning::new(),
        )
        .unwrap();
        assert_eq!(
            s.peer_addr().unwrap().ip(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    /// A data connection from a `--proxy-from` balancer (127.0.0.2 here)
    /// is judged by the client address in its PROXY header: one naming
    /// the control connection's client is accepted with the header
    /// consumed; one naming another client, a header without an address
    /// (`LOCAL`), or none at all are refused.
    #[test]
    fn a_balancer_data_connection_is_judged_by_its_proxy_header() {
        use socketserver::server::proxy::ProxyHeader;
        let client: IpAddr = "127.0.0.5".parse().unwrap();
        let balancers = ["127.0.0.2/32".parse::<Cidr>().unwrap()];
        let l = open_passive("127.0.0.1".parse().unwrap(), None).unwrap();
        let addr = l.local_addr().unwrap();
        let from_balancer = |first: &[u8]| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.bind(&"127.0.0.2:0".parse::<SocketAddr>().unwrap().into())
                .unwrap();
            sock.connect(&addr.into()).unwrap();
            let mut s: TcpStream = sock.into();
            std::io::Write::write_all(&mut s, first).unwrap();
            s
        };
        let header = |source: Option<&str>| {
            ProxyHeader {
                version: 2,
                source: source.map(|a| a.parse().unwrap()),
                destination: source.map(|_| addr),
            }
            .encode()
            .unwrap()
        };
        let short = Duration::from_millis(300);
        for first in [
            header(Some("127.0.0.6:4000")),
            header(None),
            b"no header at all\r\n".to_vec(),
        ] {
            let _c = from_balancer(&first);
            let err = accept_from(&l, client, &balancers, short, None, &SharedWarning::new())
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        }
        let mut first = header(Some("127.0.0.5:4000"));
        first.extend_from_slice(b"data");
        let _c = from_balancer(&first);
        let mut s = accept_from(
            &l,
            client,
            &balancers,
            Duration::from_secs(5),
            None,
            &SharedWarning::new(),
        )
        .unwrap();
        let mut buf = [0u8; 4];
        std::io::Read::read_exact(&mut s, &mut buf).unwrap();
        assert_eq!(&buf, b"data");
    }

    /// A control connection pair on loopback: (server side, client side).
    fn control_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (server, client)
    }

    #[test]
    fn the_wait_ends_when_the_control_connection_goes() {
        let me: IpAddr = "127.0.0.1".parse().unwrap();
        let long = Duration::from_secs(20);
        // Reset (RST), and an orderly close (FIN): both end the wait at
        // once, not after the 20 s.
        for reset in [true, false] {
            let l = open_passive(me, None).unwrap();
            let (server, client) = control_pair();
            if reset {
                socket2::SockRef::from(&client)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            }
            drop(client);
            let started = Instant::now();
            let err = accept_from(
                &l,
                me,
                &[],
                long,
                Some(server.as_fd()),
                &SharedWarning::new(),
            )
            .unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::ConnectionAborted,
                "reset {reset}"
            );
            assert!(started.elapsed() < Duration::from_secs(5), "reset {reset}");
        }
        // A command sent meanwhile does not end it: the data connection
        // is still accepted, and the command stays unread.
        let l = open_passive(me, None).unwrap();
        let (server, mut client) = control_pair();
        std::io::Write::write_all(&mut client, b"NOOP\r\n").unwrap();
        let _data = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = accept_from(
            &l,
            me,
            &[],
            long,
            Some(server.as_fd()),
            &SharedWarning::new(),
        )
        .unwrap();
        assert_eq!(s.peer_addr().unwrap().ip(), me);
        let mut buf = [0u8; 16];
        assert_eq!(server.peek(&mut buf).unwrap(), 6);
        // Quiet control, nobody connects: the timeout as before.
        let l = open_passive(me, None).unwrap();
        let err = accept_from(
            &l,
            me,
            &[],
            Duration::from_millis(200),
            Some(server.as_fd()),
            &SharedWarning::new(),
        );
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }
}
