//! Which peers may send a PROXY header: [`Cidr`] networks and the
//! [`TrustedProxies`] set a server checks before it reads a header
//! (nginx's `set_real_ip_from`, HAProxy's `tcp-request connection
//! expect-proxy layer4 if { src ... }`).
//!
//! Without such a set, a server that expects PROXY headers believes the
//! first bytes of *any* connection: a client that can reach the port
//! directly sends `PROXY TCP4 127.0.0.2 ...` and every per-IP decision
//! (limits, login lockouts, an FTP server's anti-bounce check) is made
//! about an address it chose. With a set, a connection from a peer outside
//! it is closed before a byte is read, and the handler never runs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use super::warning::SharedWarning;
use crate::handler::PeerAddr;
use crate::{Error, Result};

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`,
/// `2001:db8::/32`), or a single address (`/32`, `/128`).
///
/// Parsed with [`str::parse`]: `"192.0.2.0/24"`, `"::1"` (a bare address
/// is one host), `"::ffff:10.0.0.0/104"`. An address with bits set after
/// the prefix (`10.0.0.1/8`) is refused rather than silently widened or
/// narrowed, and so are zone ids, brackets, spaces and prefixes longer than
/// the family allows.
///
/// **IPv4 on IPv6 sockets.** A dual-stack listener (`[::]:port`) sees an
/// IPv4 client as `::ffff:a.b.c.d`. Matching treats that address as the
/// IPv4 address it carries, and an IPv4-mapped network
/// (`::ffff:a.b.c.d/96+n`) as the IPv4 network `a.b.c.d/n`, so `10.0.0.0/8`
/// and `::ffff:10.0.0.0/104` each match `10.1.2.3` in either spelling.
/// Other IPv6 networks never match an IPv4 client: `::/0` is every IPv6
/// peer, not every peer.
///
/// ```
/// use socketserver::server::proxy::Cidr;
///
/// let net: Cidr = "10.0.0.0/8".parse()?;
/// assert!(net.contains("10.20.30.40".parse().unwrap()));
/// assert!(net.contains("::ffff:10.20.30.40".parse().unwrap()));
/// assert!(!net.contains("192.0.2.1".parse().unwrap()));
/// assert!("10.0.0.1/8".parse::<Cidr>().is_err());
/// # Ok::<(), socketserver::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl Cidr {
    /// The network `addr/prefix_len`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `prefix_len` is longer than the
    /// address (32 bits for IPv4, 128 for IPv6), or `addr` has bits set
    /// after the prefix.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Cidr> {
        let (max, host_bits) = match addr {
            IpAddr::V4(a) => (
                32,
                prefix_len <= 32 && u32::from(a) & !mask32(prefix_len) != 0,
            ),
            IpAddr::V6(a) => (
                128,
                prefix_len <= 128 && u128::from(a) & !mask128(prefix_len) != 0,
            ),
        };
        if prefix_len > max {
            return Err(Error::InvalidArgument(format!(
                "{addr}/{prefix_len}: the prefix of an IPv{} network is at most {max} bits",
                if max == 32 { 4 } else { 6 }
            )));
        }
        if host_bits {
            let network = match addr {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix_len))),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix_len))),
            };
            return Err(Error::InvalidArgument(format!(
                "{addr}/{prefix_len} has bits set after the prefix: \
                 write the network {network}/{prefix_len}, or the host {addr}"
            )));
        }
        Ok(Cidr { addr, prefix_len })
    }

    /// The network's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The length of the prefix in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is in this network (see the type's documentation for
    /// IPv4-mapped addresses).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, prefix) = self.matching_form();
        match (net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let m = mask32(prefix);
                u32::from(n) & m == u32::from(i) & m
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let m = mask128(prefix);
                u128::from(n) & m == u128::from(i) & m
            }
            _ => false,
        }
    }

    /// The network as it is matched: an IPv4-mapped IPv6 network of 96
    /// bits or more becomes the IPv4 network it maps.
    fn matching_form(&self) -> (IpAddr, u8) {
        match self.addr {
            IpAddr::V6(a) if self.prefix_len >= 96 => match a.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), self.prefix_len - 96),
                None => (self.addr, self.prefix_len),
            },
            _ => (self.addr, self.prefix_len),
        }
    }
}

impl FromStr for Cidr {
    type Err = Error;

    /// Parses `ADDRESS` or `ADDRESS/PREFIX`.
    fn from_str(s: &str) -> Result<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| {
            Error::InvalidArgument(format!(
                "{s:?} is not an IP address or network (such as 10.0.0.0/8, 2001:db8::/32 or ::1)"
            ))
        })?;
        let prefix_len = match p {
            None => match addr {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::InvalidArgument(format!(
                        "{s:?}: the prefix length after '/' must be a number of bits"
                    )));
                }
                p.parse().map_err(|_| {
                    Error::InvalidArgument(format!("{s:?}: the prefix length is too long"))
                })?
            }
        };
        Cidr::new(addr, prefix_len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl From<IpAddr> for Cidr {
    /// The one-host network of `addr`.
    fn from(addr: IpAddr) -> Cidr {
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix_len }
    }
}

impl From<Ipv4Addr> for Cidr {
    /// The one-host network `addr/32`.
    fn from(addr: Ipv4Addr) -> Cidr {
        Cidr::from(IpAddr::V4(addr))
    }
}

impl From<Ipv6Addr> for Cidr {
    /// The one-host network `addr/128`.
    fn from(addr: Ipv6Addr) -> Cidr {
        Cidr::from(IpAddr::V6(addr))
    }
}

/// The peers a server accepts a PROXY header from: its load balancers.
///
/// A TCP peer is trusted when its address is in one of the networks (see
/// [`Cidr`] for IPv4-mapped addresses). A Unix-socket peer is always
/// trusted: who may connect is decided by the socket file's permissions,
/// and a balancer on the same host (HAProxy's `server ... unix@...
/// send-proxy`) is the usual reason to listen there. An empty set trusts
/// only Unix-socket peers.
///
/// **An untrusted peer's connection is refused**: closed before a byte of
/// it is read, without running the handler (a listener that expects
/// PROXY headers expects only balancer traffic; reading on to serve the
/// peer under its own address would let it reach a protocol the operator
/// fronted with a balancer on purpose). Each refusal is logged at `debug`
/// with the peer; one `warn` line counts them, the first at once and then
/// at most one a minute across every process of the server (the counts
/// live in shared memory mapped when the set is made, so create it before
/// the server forks — the builder does). A `warn` therefore means either
/// someone is connecting around the balancer or the set is missing the
/// balancer's address.
///
/// Set it with
/// [`ServerBuilder::proxy_protocol_from`](crate::server::ServerBuilder::proxy_protocol_from),
/// or give it to [`layers::proxy_protocol_from`](crate::server::layers::proxy_protocol_from).
///
/// Cheap to clone (clones share the networks and the counts).
#[derive(Clone)]
pub struct TrustedProxies {
    nets: Arc<[Cidr]>,
    log: Arc<SharedWarning>,
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedProxies")
            .field("nets", &self.nets)
            .finish_non_exhaustive()
    }
}

impl TrustedProxies {
    /// Trusts the peers in `nets` (and every Unix-socket peer).
    ///
    /// Maps two shared-memory words for the refusal counts, so every
    /// process forked afterwards counts in them. Should the mapping fail,
    /// each process counts its own (a forking server then warns once per
    /// refused connection); nothing else changes.
    pub fn new<I>(nets: I) -> TrustedProxies
    where
        I: IntoIterator,
        I::Item: Into<Cidr>,
    {
        TrustedProxies {
            nets: nets.into_iter().map(Into::into).collect(),
            log: Arc::new(SharedWarning::new()),
        }
    }

    /// The trusted networks.
    pub fn networks(&self) -> &[Cidr] {
        &self.nets
    }

    /// Whether `peer` may send a PROXY header: a Unix-socket peer, or a
    /// TCP peer whose address is in one of the networks. Logs nothing.
    pub fn is_trusted(&self, peer: &PeerAddr) -> bool {
        match peer {
            PeerAddr::Unix(_) => true,
            PeerAddr::Inet(a) => self.nets.iter().any(|n| n.contains(a.ip())),
        }
    }

    /// [`is_trusted`](Self::is_trusted), logging a refusal as the type's
    /// documentation says.
    pub(crate) fn admit(&self, peer: &PeerAddr) -> bool {
        if self.is_trusted(peer) {
            return true;
        }
        tracing::debug!(%peer, "closing connection: peer is not a trusted proxy (proxy_protocol_from)");
        if let Some(refused) = self.log.due() {
            tracing::warn!(
                %peer,
                refused,
                "refused connections from peers not trusted to send a PROXY header \
                 (the latest shown): a client bypassing the balancer, or the balancer's \
                 address is missing from proxy_protocol_from; next report in a minute at the earliest"
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn cidr(s: &str) -> Cidr {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn err(s: &str) -> String {
        match s.parse::<Cidr>() {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{s:?} should be refused, got {other:?}"),
        }
    }

    #[test]
    fn parses_networks_and_hosts_of_both_families() {
        let c = cidr("10.0.0.0/8");
        assert_eq!((c.addr(), c.prefix_len()), (ip("10.0.0.0"), 8));
        assert_eq!(cidr("192.0.2.7").prefix_len(), 32);
        assert_eq!(cidr("2001:db8::/32").prefix_len(), 32);
        assert_eq!(cidr("::1").prefix_len(), 128);
        assert_eq!(cidr("0.0.0.0/0").prefix_len(), 0);
        assert_eq!(cidr("::/0").prefix_len(), 0);
        assert_eq!(cidr("::ffff:10.0.0.0/104").prefix_len(), 104);
        assert_eq!(cidr("10.0.0.0/008").prefix_len(), 8);
        for s in [
            "10.0.0.0/8",
            "192.0.2.7/32",
            "2001:db8::/32",
            "::1/128",
            "::/0",
        ] {
            assert_eq!(cidr(s).to_string(), s);
            assert_eq!(cidr(&cidr(s).to_string()), cidr(s));
        }
        assert_eq!(Cidr::from(Ipv4Addr::LOCALHOST), cidr("127.0.0.1/32"));
        assert_eq!(Cidr::from(Ipv6Addr::LOCALHOST), cidr("::1/128"));
    }

    #[test]
    fn refuses_bad_input_clearly() {
        for s in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0/8",
            "10.0.0.256",
            "localhost",
            "10.0.0.0/8/8",
        ] {
            let m = err(s);
            assert!(
                m.contains("not an IP address") || m.contains("prefix length"),
                "{s:?}: {m}"
            );
        }
        for s in [
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/ 8",
            "10.0.0.0/8 ",
            "10.0.0.0/x",
            "10.0.0.0/0008",
        ] {
            assert!(err(s).contains("number of bits"), "{s:?}");
        }
        assert!(err("10.0.0.0/33").contains("at most 32"));
        assert!(err("10.0.0.0/255").contains("at most 32"));
        assert!(err("10.0.0.0/256").contains("too long"));
        assert!(err("::/129").contains("at most 128"));
        let m = err("10.0.0.1/8");
        assert!(
            m.contains("network 10.0.0.0/8") && m.contains("host 10.0.0.1"),
            "{m}"
        );
        assert!(err("2001:db8::1/32").contains("network 2001:db8::/32"));
        for s in [
            "[::1]",
            "[::1]/128",
            "fe80::1%eth0",
            " 10.0.0.0/8",
            "10.0.0.0:80",
        ] {
            assert!(err(s).contains("not an IP address"), "{s:?}");
        }
        assert!(matches!(
            Cidr::new(ip("10.0.0.0"), 40),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn matches_by_prefix() {
        let n = cidr("10.0.0.0/8");
        assert!(n.contains(ip("10.0.0.0")) && n.contains(ip("10.255.255.255")));
        assert!(!n.contains(ip("11.0.0.0")) && !n.contains(ip("9.255.255.255")));
        let n = cidr("192.0.2.128/25");
        assert!(n.contains(ip("192.0.2.200")) && !n.contains(ip("192.0.2.127")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        let h = cidr("127.0.0.2");
        assert!(h.contains(ip("127.0.0.2")) && !h.contains(ip("127.0.0.3")));
        let n = cidr("2001:db8::/32");
        assert!(n.contains(ip("2001:db8:ffff::1")) && !n.contains(ip("2001:db9::1")));
        assert!(cidr("::1").contains(ip("::1")) && !cidr("::1").contains(ip("::2")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        // Families never mix, except through IPv4-mapped addresses.
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(!cidr("::/0").contains(ip("10.0.0.1")));
        assert!(!cidr("::1").contains(ip("127.0.0.1")));
    }

    #[test]
    fn ipv4_mapped_addresses_and_networks_match_as_ipv4() {
        // A dual-stack socket's view of an IPv4 client.
        let mapped = ip("::ffff:10.1.2.3");
        assert!(cidr("10.0.0.0/8").contains(mapped));
        assert!(cidr("10.1.2.3").contains(mapped));
        assert!(!cidr("192.0.2.0/24").contains(mapped));
        // An IPv4-mapped network is its IPv4 network, for either spelling.
        let n = cidr("::ffff:10.0.0.0/104");
        assert!(n.contains(ip("10.9.9.9")) && n.contains(ip("::ffff:10.9.9.9")));
        assert!(!n.contains(ip("11.0.0.1")) && !n.contains(ip("::ffff:11.0.0.1")));
        assert!(cidr("::ffff:0:0/96").contains(ip("203.0.113.1")));
        // `::/0` is every IPv6 peer, not the IPv4 ones on a dual-stack socket.
        assert!(!cidr("::/0").contains(mapped));
        // An IPv4-compatible (not mapped) address is IPv6.
        assert!(!cidr("10.0.0.0/8").contains(ip("::10.1.2.3")));
    }

    #[test]
    fn trusted_proxies_trust_listed_and_unix_peers_only() {
        let t = TrustedProxies::new([cidr("127.0.0.2"), cidr("2001:db8::/32")]);
        assert_eq!(t.networks().len(), 2);
        let inet = |s: &str| PeerAddr::Inet(s.parse::<SocketAddr>().unwrap());
        assert!(t.is_trusted(&inet("127.0.0.2:5000")));
        assert!(t.is_trusted(&inet("[::ffff:127.0.0.2]:5000")));
        assert!(t.is_trusted(&inet("[2001:db8::9]:1")));
        assert!(!t.is_trusted(&inet("127.0.0.1:5000")));
        assert!(!t.admit(&inet("127.0.0.1:5000")));
        let unnamed = std::os::unix::net::UnixDatagram::unbound()
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(t.is_trusted(&PeerAddr::Unix(unnamed.clone())));
        let none = TrustedProxies::new(Vec::<Cidr>::new());
        assert!(!none.is_trusted(&inet("127.0.0.1:1")));
        assert!(none.is_trusted(&PeerAddr::Unix(unnamed)));
    }

    #[test]
    fn the_first_refusal_warns() {
        let t = TrustedProxies::new([cidr("10.0.0.0/8")]);
        let peer = PeerAddr::Inet("127.0.0.1:1".parse().unwrap());
        assert!(!t.admit(&peer));
        // The first refusal warned: the next one within the minute does
        // not (the counting itself is `SharedWarning`'s, tested there).
        assert_eq!(t.log.due(), None);
    }
}
