//! PROXY protocol v1 and v2 headers (HAProxy's `proxy-protocol.txt`).
//!
//! A load balancer in front of a server makes every connection come from
//! the balancer's address. With the PROXY protocol the balancer starts each
//! connection with a short header naming the real client, and the server
//! reads it before anything else. It is opt-in, and a server must only
//! accept it from its balancers, because anyone who can connect directly
//! could otherwise claim any address: [`TrustedProxies`] (networks given
//! as [`Cidr`]) is that restriction, set with
//! [`ServerBuilder::proxy_protocol_from`](crate::server::ServerBuilder::proxy_protocol_from).
//!
//! [`parse`] is a pure function over the bytes received so far. It says
//! either "complete: the header is N bytes" or "incomplete: read exactly K
//! more bytes", where those K bytes are guaranteed to still belong to the
//! header. The readers built on it ([`read_proxy_header`], and
//! `read_proxy_header_async` with the `async` feature) therefore never
//! read past the header: the first byte of the client's own data stays in
//! the socket for the handler, even for protocols where the server speaks
//! first (FTP, SMTP). Reads are bounded: 107 bytes for v1, 16 + 65,535 for
//! v2 (its length field is 16 bits).
//!
//! [`ProxyHeader::encode`] is the other direction: it writes the header a
//! balancer would send, for a proxy written in Rust or a test client.

use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "async")]
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::{Error, Result};

pub use super::trust::{Cidr, TrustedProxies};
use super::warning::SharedWarning;

/// The 12-byte signature that starts a v2 header.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// `PROXY ` starts a v1 header.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// Longest v1 header, CRLF included (`proxy-protocol.txt` section 2.1).
pub const V1_MAX_LEN: usize = 107;
/// Shortest valid header of either version (`PROXY UNKNOWN\r\n`).
const MIN_LEN: usize = 15;

/// A parsed PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// 1 or 2.
    pub version: u8,
    /// The real client address; `None` for `UNKNOWN` (v1) or `LOCAL` /
    /// unspecified / Unix-socket (v2) headers, where the connection's own
    /// peer address should be used.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when given.
    pub destination: Option<SocketAddr>,
}

/// The result of [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes starts the buffer.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// Its length in bytes; anything after it is the client's data.
        len: usize,
    },
    /// Read exactly `need` more bytes (all still part of the header) and
    /// call [`parse`] again.
    Incomplete {
        /// Bytes still needed before anything more can be decided.
        need: usize,
    },
}

fn bad(msg: impl Into<String>) -> Error {
    Error::ProxyHeader(msg.into())
}

/// Parses a PROXY v1 or v2 header at the start of `buf`.
///
/// # Errors
/// [`Error::ProxyHeader`] when the bytes cannot be the start of a valid
/// header: wrong signature, a v1 line over 107 bytes or with bad addresses
/// or ports, an unknown v2 version/command/family, or a v2 address block
/// shorter than its family needs.
pub fn parse(buf: &[u8]) -> Result<Parsed> {
    let n12 = buf.len().min(V2_SIG.len());
    let n6 = buf.len().min(V1_PREFIX.len());
    if buf[..n12] == V2_SIG[..n12] {
        if buf.len() < MIN_LEN {
            return Ok(Parsed::Incomplete {
                need: MIN_LEN - buf.len(),
            });
        }
        parse_v2(buf)
    } else if buf[..n6] == V1_PREFIX[..n6] {
        parse_v1(buf)
    } else {
        Err(bad(
            "no PROXY protocol signature at the start of the connection",
        ))
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed> {
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX_LEN {
            return Err(bad("v1 header longer than 107 bytes"));
        }
        return Ok(Parsed::Incomplete {
            need: MIN_LEN.saturating_sub(buf.len()).max(1),
        });
    };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err(bad("v1 header line does not end in CRLF"));
    }
    let line = std::str::from_utf8(&buf[..nl - 1]).map_err(|_| bad("v1 header is not ASCII"))?;
    // At most six fields (PROXY, protocol, two addresses, two ports),
    // kept on the stack: this runs once per connection, before anything
    // else, so it allocates nothing on the good path.
    let mut parts = [""; 6];
    let mut count = 0;
    let mut fields = line.split(' ');
    for (slot, field) in parts.iter_mut().zip(fields.by_ref()) {
        *slot = field;
        count += 1;
    }
    count += fields.count();
    let header = match (count > 1).then_some(parts[1]) {
        Some("UNKNOWN") => ProxyHeader {
            version: 1,
            source: None,
            destination: None,
        },
        Some(proto @ ("TCP4" | "TCP6")) => {
            if count != 6 {
                return Err(bad(format!(
                    "v1 {proto} header needs 4 fields after the protocol, got {}",
                    count.saturating_sub(2)
                )));
            }
            let v6 = proto == "TCP6";
            let src = v1_ip(parts[2], v6)?;
            let dst = v1_ip(parts[3], v6)?;
            let sport = v1_port(parts[4])?;
            let dport = v1_port(parts[5])?;
            ProxyHeader {
                version: 1,
                source: Some(SocketAddr::new(src, sport)),
                destination: Some(SocketAddr::new(dst, dport)),
            }
        }
        other => {
            return Err(bad(format!(
                "v1 protocol must be TCP4, TCP6 or UNKNOWN, got {:?}",
                other.unwrap_or("")
            )))
        }
    };
    Ok(Parsed::Complete {
        header,
        len: nl + 1,
    })
}

fn v1_ip(s: &str, v6: bool) -> Result<IpAddr> {
    let ip = if v6 {
        s.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        s.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    ip.map_err(|_| bad(format!("v1 header has an invalid address {s:?}")))
}

fn v1_port(s: &str) -> Result<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("v1 header has an invalid port {s:?}")));
    }
    s.parse()
        .map_err(|_| bad(format!("v1 header has an invalid port {s:?}")))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete {
            need: 16 - buf.len(),
        });
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(bad(format!("v2 header has version {}", ver_cmd >> 4)));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return Err(bad(format!("v2 header has unknown command {c}"))),
    };
    let fam = buf[13];
    let addr_len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let total = 16 + addr_len;
    if buf.len() < total {
        return Ok(Parsed::Incomplete {
            need: total - buf.len(),
        });
    }
    let block = &buf[16..total];
    let (source, destination) = match (fam >> 4, fam & 0x0f) {
        (_, t) if t > 2 => return Err(bad(format!("v2 header has unknown transport {t}"))),
        (0, _) => (None, None),
        (1, _) => {
            if block.len() < 12 {
                return Err(bad("v2 IPv4 address block shorter than 12 bytes"));
            }
            let ip = |o: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    block[o],
                    block[o + 1],
                    block[o + 2],
                    block[o + 3],
                ))
            };
            let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(8))),
                Some(SocketAddr::new(ip(4), port(10))),
            )
        }
        (2, _) => {
            if block.len() < 36 {
                return Err(bad("v2 IPv6 address block shorter than 36 bytes"));
            }
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&block[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let port = |o: usize| u16::from_be_bytes([block[o], block[o + 1]]);
            (
                Some(SocketAddr::new(ip(0), port(32))),
                Some(SocketAddr::new(ip(16), port(34))),
            )
        }
        (3, _) => {
            if block.len() < 216 {
                return Err(bad("v2 Unix address block shorter than 216 bytes"));
            }
            (None, None)
        }
        (f, _) => return Err(bad(format!("v2 header has unknown address family {f}"))),
    };
    let (source, destination) = if local {
        (None, None)
    } else {
        (source, destination)
    };
    Ok(Parsed::Complete {
        header: ProxyHeader {
            version: 2,
            source,
            destination,
        },
        len: total,
    })
}

impl ProxyHeader {
    /// Encodes this header the way a balancer sends it: the inverse of
    /// [`parse`] for headers in canonical form.
    ///
    /// - Version 1: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (`TCP6`
    ///   for IPv6 addresses), or `PROXY UNKNOWN\r\n` without addresses.
    /// - Version 2: the `PROXY` command with a TCP-over-IPv4 (`0x11`) or
    ///   TCP-over-IPv6 (`0x21`) address block and no TLVs, or the `LOCAL`
    ///   command with no address block when there are no addresses.
    ///
    /// What [`ProxyHeader`] does not keep is not reproduced: v2 TLVs, a v2
    /// UDP or Unix-socket family, v1 `UNKNOWN` trailing fields, leading
    /// zeros of a v1 port or a non-canonical IPv6 spelling. For those
    /// headers `parse(encode(h))` still gives back `h`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a version other than 1 or 2, or for
    /// addresses the protocol cannot carry: only one of source and
    /// destination, or one IPv4 and one IPv6 address.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let pair = match (self.source, self.destination) {
            (None, None) => None,
            (Some(s), Some(d)) if s.is_ipv4() == d.is_ipv4() => Some((s, d)),
            _ => {
                return Err(Error::InvalidArgument(
                    "a PROXY header carries both addresses of one family, or none".into(),
                ))
            }
        };
        match (self.version, pair) {
            (1, None) => Ok(b"PROXY UNKNOWN\r\n".to_vec()),
            (1, Some((s, d))) => {
                let proto = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                Ok(format!(
                    "PROXY {proto} {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                )
                .into_bytes())
            }
            (2, pair) => {
                let mut out = V2_SIG.to_vec();
                let mut block = Vec::with_capacity(36);
                let (cmd, fam) = match pair {
                    None => (0x20, 0x00),
                    Some((s, d)) => {
                        let fam = match (s.ip(), d.ip()) {
                            (IpAddr::V4(a), IpAddr::V4(b)) => {
                                block.extend_from_slice(&a.octets());
                                block.extend_from_slice(&b.octets());
                                0x11
                            }
                            (IpAddr::V6(a), IpAddr::V6(b)) => {
                                block.extend_from_slice(&a.octets());
                                block.extend_from_slice(&b.octets());
                                0x21
                            }
                            _ => unreachable!("families checked above"),
                        };
                        block.extend_from_slice(&s.port().to_be_bytes());
                        block.extend_from_slice(&d.port().to_be_bytes());
                        (0x21, fam)
                    }
                };
                out.extend_from_slice(&[cmd, fam]);
                out.extend_from_slice(&(block.len() as u16).to_be_bytes());
                out.extend_from_slice(&block);
                Ok(out)
            }
            (v, _) => Err(Error::InvalidArgument(format!(
                "PROXY protocol version {v} does not exist (1 or 2)"
            ))),
        }
    }
}

fn eof_inside(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        // A peer that hung up: `Error::is_disconnect` (normal traffic,
        // such as a balancer's TCP check), not a malformed header.
        Error::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside the PROXY header",
        ))
    } else {
        Error::Io(e)
    }
}

/// The error for a peer that sent no complete header within `timeout`
/// (the read's own `WouldBlock` would be logged as "Resource temporarily
/// unavailable").
pub(crate) fn header_timeout(timeout: Duration) -> Error {
    Error::Io(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no complete PROXY header within {timeout:?}"),
    ))
}

/// How a server logs the connections it closed because their PROXY header
/// did not arrive. One per server, made before it forks.
///
/// - A peer that hung up before or inside its header (a balancer's TCP
///   check without `check-send-proxy`, a port scan) is normal traffic:
///   `debug`.
/// - A malformed header or none in time is `debug` per connection, and one
///   `warn` counts them: the first at once, then at most one a minute
///   across every process of the server. Such a warning means a peer that
///   is not a balancer reaches the port, or a balancer that does not send
///   the header.
///
/// Either way the handler never sees the connection, and no `error` line
/// is written: nothing here needs a human per connection.
pub(crate) struct HeaderFailures {
    warning: SharedWarning,
}

impl HeaderFailures {
    pub(crate) fn new() -> Arc<HeaderFailures> {
        Arc::new(HeaderFailures {
            warning: SharedWarning::new(),
        })
    }

    /// Logs that the connection from `peer` is closed for `error` (what
    /// reading its header gave).
    pub(crate) fn closed(&self, peer: &dyn fmt::Display, error: &Error) {
        if error.is_disconnect() {
            tracing::debug!(%peer, %error, "peer hung up before its PROXY header was complete");
            return;
        }
        tracing::debug!(%peer, %error, "closing connection: no valid PROXY header");
        if let Some(closed) = self.warning.due() {
            tracing::warn!(
                %peer,
                %error,
                closed,
                "closed connections without a valid PROXY header (the latest shown): \
                 a peer that is not the balancer, or a balancer that does not send the \
                 header; next report in a minute at the earliest"
            );
        }
    }
}

impl fmt::Debug for HeaderFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderFailures").finish_non_exhaustive()
    }
}

/// Reads a PROXY header from a blocking reader, never reading past it.
///
/// # Errors
/// [`Error::ProxyHeader`] for a malformed header; [`Error::Io`] for a read
/// error (including a read timeout) and, of kind `UnexpectedEof`, for end
/// of file inside the header (a peer that hung up:
/// [`Error::is_disconnect`]).
pub fn read_proxy_header<R: Read + ?Sized>(r: &mut R) -> Result<ProxyHeader> {
    let mut buf = Vec::with_capacity(64);
    loop {
        match parse(&buf)? {
            Parsed::Complete { header, .. } => return Ok(header),
            Parsed::Incomplete { need } => {
                let old = buf.len();
                buf.resize(old + need, 0);
                r.read_exact(&mut buf[old..]).map_err(eof_inside)?;
            }
        }
    }
}

/// Reads a PROXY header from an async reader, never reading past it.
///
/// # Errors
/// As [`read_proxy_header`].
#[cfg(feature = "async")]
pub async fn read_proxy_header_async<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
) -> Result<ProxyHeader> {
    let mut buf = Vec::with_capacity(64);
    loop {
        match parse(&buf)? {
            Parsed::Complete { header, .. } => return Ok(header),
            Parsed::Incomplete { need } => {
                let old = buf.len();
                buf.resize(old + need, 0);
                r.read_exact(&mut buf[old..]).await.map_err(eof_inside)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn read_all(bytes: &[u8]) -> (Result<ProxyHeader>, usize) {
        let mut c = Cursor::new(bytes);
        let r = read_proxy_header(&mut c);
        (r, c.position() as usize)
    }

    fn v2(cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(block.len() as u16).to_be_bytes());
        v.extend_from_slice(block);
        v
    }

    #[test]
    fn v1_tcp4_leaves_client_data_unread() {
        let msg = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET /";
        let (h, pos) = read_all(msg);
        let h = h.unwrap();
        assert_eq!(h.version, 1);
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("198.51.100.7:443".parse().unwrap()));
        assert_eq!(&msg[pos..], b"GET /");
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let (h, _) = read_all(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n");
        assert_eq!(h.unwrap().source, Some("[2001:db8::1]:1".parse().unwrap()));
        let (h, pos) = read_all(b"PROXY UNKNOWN\r\nrest");
        assert_eq!(h.unwrap().source, None);
        assert_eq!(pos, 15);
        let (h, _) = read_all(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n");
        assert_eq!(h.unwrap().source, None);
    }

    #[test]
    fn v2_inet_with_tlvs_and_inet6_and_local() {
        let mut block = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x00, 0x50];
        block.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // a NOOP TLV, skipped
        let mut msg = v2(1, 0x11, &block);
        msg.extend_from_slice(b"hello");
        let (h, pos) = read_all(&msg);
        let h = h.unwrap();
        assert_eq!(h.version, 2);
        assert_eq!(h.source, Some("10.0.0.1:8080".parse().unwrap()));
        assert_eq!(h.destination, Some("10.0.0.2:80".parse().unwrap()));
        assert_eq!(&msg[pos..], b"hello");

        let mut b6 = Vec::new();
        b6.extend_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        b6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b6.extend_from_slice(&[0, 7, 0, 9]);
        let (h, _) = read_all(&v2(1, 0x21, &b6));
        assert_eq!(h.unwrap().source, Some("[2001:db8::5]:7".parse().unwrap()));

        let (h, _) = read_all(&v2(0, 0x00, &[]));
        let h = h.unwrap();
        assert_eq!((h.version, h.source), (2, None));
    }

    fn err_text(bytes: &[u8]) -> String {
        match read_all(bytes).0 {
            Err(Error::ProxyHeader(m)) => m,
            other => panic!("expected a PROXY header error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_headers_are_rejected_clearly() {
        assert!(err_text(b"GET / HTTP/1.0\r\n\r\n").contains("no PROXY protocol signature"));
        assert!(err_text(b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n").contains("TCP4, TCP6 or UNKNOWN"));
        assert!(err_text(b"PROXY TCP4 1.2.3.400 1.2.3.4 1 2\r\n").contains("invalid address"));
        assert!(err_text(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n").contains("invalid port"));
        assert!(err_text(b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n").contains("invalid port"));
        assert!(err_text(b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n").contains("4 fields"));
        assert!(err_text(b"PROXY TCP4 ::1 ::1 1 2\r\n").contains("invalid address"));
        assert!(err_text(b"PROXY UNKNOWN\nXX").contains("CRLF"));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.extend_from_slice(&[b'x'; 200]);
        assert!(err_text(&long).contains("longer than 107"));

        let mut bad_ver = v2(1, 0x11, &[0; 12]);
        bad_ver[12] = 0x11;
        assert!(err_text(&bad_ver).contains("version 1"));
        assert!(err_text(&v2(5, 0x11, &[0; 12])).contains("unknown command"));
        assert!(err_text(&v2(1, 0x11, &[0; 8])).contains("shorter than 12"));
        assert!(err_text(&v2(1, 0x21, &[0; 12])).contains("shorter than 36"));
        assert!(err_text(&v2(1, 0x41, &[0; 12])).contains("unknown address family"));
        let mut cut = v2(1, 0x11, &[0; 12]);
        cut.truncate(20);
        for torn in [&b"PROXY TCP4 1.2.3"[..], &b""[..], &cut[..]] {
            match read_all(torn).0 {
                Err(e @ Error::Io(_)) => {
                    assert!(e.is_disconnect(), "{e}");
                    assert!(e.to_string().contains("closed inside"), "{e}");
                }
                other => panic!("expected end of file inside the header, got {other:?}"),
            }
        }
    }

    #[test]
    fn incomplete_asks_only_for_header_bytes() {
        assert_eq!(parse(b"").unwrap(), Parsed::Incomplete { need: 15 });
        assert_eq!(
            parse(b"PROXY UNKNOWN\r").unwrap(),
            Parsed::Incomplete { need: 1 }
        );
        let full = v2(1, 0x11, &[0; 12]);
        assert_eq!(parse(&full[..16]).unwrap(), Parsed::Incomplete { need: 12 });
    }

    #[test]
    fn encode_is_the_inverse_of_parse_for_canonical_headers() {
        let canonical: [&[u8]; 4] = [
            b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n",
            b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n",
            b"PROXY UNKNOWN\r\n",
            b"PROXY TCP4 0.0.0.0 255.255.255.255 0 0\r\n",
        ];
        let mut b6 = Vec::new();
        b6.extend_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        b6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b6.extend_from_slice(&[0, 7, 0, 9]);
        let v2s = [
            v2(1, 0x11, &[10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x00, 0x50]),
            v2(1, 0x21, &b6),
            v2(0, 0x00, &[]),
        ];
        for bytes in canonical
            .iter()
            .copied()
            .chain(v2s.iter().map(Vec::as_slice))
        {
            let Parsed::Complete { header, len } = parse(bytes).unwrap() else {
                panic!("incomplete: {bytes:?}");
            };
            assert_eq!(len, bytes.len());
            assert_eq!(header.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn encode_drops_only_what_the_header_does_not_keep() {
        // A TLV, a UDP transport and a v1 port with leading zeros are not
        // kept; the re-encoded header still parses to the same value.
        let mut block = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x00, 0x50];
        block.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]);
        let with_tlv = v2(1, 0x12, &block);
        let v1_zeros = b"PROXY TCP4 1.2.3.4 5.6.7.8 0080 443\r\n".to_vec();
        for bytes in [with_tlv, v1_zeros] {
            let Parsed::Complete { header, .. } = parse(&bytes).unwrap() else {
                panic!("incomplete");
            };
            let again = header.encode().unwrap();
            assert_ne!(again, bytes);
            let Parsed::Complete { header: h2, len } = parse(&again).unwrap() else {
                panic!("incomplete");
            };
            assert_eq!((h2, len), (header, again.len()));
        }
    }

    #[test]
    fn encode_refuses_what_the_protocol_cannot_carry() {
        let v4: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:2".parse().unwrap();
        for (version, source, destination) in [
            (1, Some(v4), None),
            (2, None, Some(v6)),
            (1, Some(v4), Some(v6)),
            (3, None, None),
            (0, Some(v4), Some(v4)),
        ] {
            let h = ProxyHeader {
                version,
                source,
                destination,
            };
            assert!(
                matches!(h.encode(), Err(Error::InvalidArgument(_))),
                "{h:?}"
            );
        }
    }

    #[cfg(feature = "async")]
    #[tokio::test]
    async fn async_reader_matches_sync() {
        let mut msg = b"PROXY TCP4 192.0.2.1 192.0.2.2 1000 2000\r\n".to_vec();
        msg.extend_from_slice(b"data");
        let mut r = &msg[..];
        let h = read_proxy_header_async(&mut r).await.unwrap();
        assert_eq!(h.source, Some("192.0.2.1:1000".parse().unwrap()));
        assert_eq!(r, b"data");
    }
}
