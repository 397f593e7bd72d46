//! Our PROXY protocol parser against the `ppp` crate, in one run.
//!
//! ```sh
//! cargo bench --bench proxy
//! ```
//!
//! Both parse the same real-shaped headers (what HAProxy's `send-proxy` and
//! `send-proxy-v2` put on the wire: v1 TCP4 and TCP6, v2 TCP4 with an
//! `AUTHORITY` TLV, v2 TCP6), alternating rounds; each figure is the
//! median nanoseconds per header over `ROUNDS` rounds, and the ratio is
//! ppp / ours (above 1: ours is faster). Before timing, both parsers must
//! agree on every header's source address, so the race is between two
//! parsers that give the same answer.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use socketserver::server::proxy::{parse, Parsed};

const ROUNDS: usize = 9;
const ITERS: u32 = 200_000;

fn v2(command_family: [u8; 2], addr: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&command_family);
    h.extend_from_slice(&((addr.len() + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(addr);
    h.extend_from_slice(tlvs);
    h
}

fn headers() -> Vec<(&'static str, Vec<u8>)> {
    let v4 = [192, 0, 2, 10, 127, 0, 0, 1, 0xd4, 0x31, 0x1f, 0x90];
    let mut v6 = Vec::new();
    v6.extend_from_slice(&[
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a,
    ]);
    v6.extend_from_slice(&[0; 15]);
    v6.push(1);
    v6.extend_from_slice(&[0xd4, 0x31, 0x1f, 0x90]);
    // PP2_TYPE_AUTHORITY "example.test".
    let mut tlv = vec![0x02, 0x00, 12];
    tlv.extend_from_slice(b"example.test");
    vec![
        (
            "v1 TCP4",
            b"PROXY TCP4 192.0.2.10 127.0.0.1 54321 8080\r\n".to_vec(),
        ),
        (
            "v1 TCP6",
            b"PROXY TCP6 2001:db8::a ::1 54321 8080\r\n".to_vec(),
        ),
        ("v2 TCP4 + TLV", v2([0x21, 0x11], &v4, &tlv)),
        ("v2 TCP6", v2([0x21, 0x21], &v6, &[])),
    ]
}

fn ours(h: &[u8]) -> Option<SocketAddr> {
    match parse(h) {
        Ok(Parsed::Complete { header, .. }) => header.source,
        _ => None,
    }
}

fn theirs(h: &[u8]) -> Option<SocketAddr> {
    use ppp::{v1, v2, HeaderResult};
    match HeaderResult::parse(h) {
        HeaderResult::V1(Ok(v1::Header { addresses, .. })) => match addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            _ => None,
        },
        HeaderResult::V2(Ok(header)) => match header.addresses {
            v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            _ => None,
        },
        _ => None,
    }
}

fn time(f: fn(&[u8]) -> Option<SocketAddr>, h: &[u8]) -> f64 {
    let t = Instant::now();
    for _ in 0..ITERS {
        black_box(f(black_box(h)));
    }
    t.elapsed().as_nanos() as f64 / f64::from(ITERS)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench -- FILTER` passes extra arguments; this bench has one
    // table, so they are ignored.
    println!(
        "PROXY header parsing, ns per header, median of {ROUNDS} alternating rounds of {ITERS}"
    );
    println!(
        "{:<16} {:>10} {:>10} {:>14}",
        "header", "ours", "ppp", "ppp/ours"
    );
    for (name, h) in headers() {
        let (a, b) = (ours(&h), theirs(&h));
        assert!(a.is_some(), "{name}: ours did not parse it");
        assert_eq!(a, b, "{name}: the two parsers disagree");
        let (mut us, mut them) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            us.push(time(ours, &h));
            them.push(time(theirs, &h));
        }
        let (us, them) = (median(us), median(them));
        println!("{name:<16} {us:>10.1} {them:>10.1} {:>13.2}x", them / us);
    }
}
