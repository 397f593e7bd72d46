//! PROXY protocol v1/v2 headers (`socketserver::server::proxy`).
//!
//! Properties, for any bytes:
//! - the blocking and the async reader agree with `parse` on the whole
//!   input, and never read past the header's last byte, nor beyond the cap
//!   (107 bytes for v1, 16 + 65,535 for v2);
//! - `parse` of any prefix of a complete header asks only for bytes that
//!   still belong to it;
//! - a header that parses re-encodes (`ProxyHeader::encode`) to the same
//!   bytes, except exactly where the header carries what `ProxyHeader`
//!   does not keep (v2 TLVs, transport, LOCAL/UNSPEC/UNIX address blocks;
//!   v1 UNKNOWN's fields, port leading zeros, IPv6 spelling); the
//!   re-encoding always parses back to the same header.
#![no_main]

use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use socketserver::server::proxy::{
    parse, read_proxy_header, read_proxy_header_async, Parsed, ProxyHeader, V1_MAX_LEN,
};
use socketserver_fuzz::Counting;

const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_MAX_LEN: usize = 16 + 65_535;

/// A reader that hands out at most `chunk` bytes per call and counts.
struct Dribble<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn cap(data: &[u8]) -> usize {
    if data.first() == Some(&b'P') {
        V1_MAX_LEN
    } else {
        V2_MAX_LEN
    }
}

fn complete(buf: &[u8]) -> Option<(ProxyHeader, usize)> {
    match parse(buf) {
        Ok(Parsed::Complete { header, len }) => Some((header, len)),
        _ => None,
    }
}

/// Asserts that `orig` (a whole header that parsed to `h`) differs from
/// its re-encoding `enc` only where the header carries something
/// `ProxyHeader` does not keep.
fn check_differences(orig: &[u8], h: &ProxyHeader, enc: &[u8]) {
    if orig == enc {
        return;
    }
    if h.version == 2 {
        assert_eq!(&orig[..12], V2_SIG);
        assert_eq!(orig[12] >> 4, 2);
        let (cmd, fam) = (orig[12] & 0x0f, orig[13]);
        match h.source {
            Some(_) => {
                // PROXY with an inet family: only the transport nibble and
                // trailing TLVs may differ; the address block is the same.
                assert_eq!(cmd, 1, "addresses only from the PROXY command");
                assert_eq!(fam >> 4, enc[13] >> 4, "same address family");
                assert!(fam & 0x0f <= 2);
                let want = enc.len() - 16;
                assert!(orig.len() - 16 >= want);
                assert_eq!(&orig[16..16 + want], &enc[16..], "same address block");
            }
            None => {
                // No addresses: a LOCAL command (any block), or PROXY with
                // an UNSPEC or UNIX family.
                assert!(
                    cmd == 0 || matches!(fam >> 4, 0 | 3),
                    "addresses dropped from a PROXY inet header: {orig:?}"
                );
            }
        }
        return;
    }
    assert_eq!(h.version, 1);
    let line = std::str::from_utf8(orig).expect("v1 header is ASCII");
    let line = line.strip_suffix("\r\n").expect("v1 ends in CRLF");
    let fields: Vec<&str> = line.split(' ').collect();
    match h.source {
        None => {
            assert_eq!(fields[..2], ["PROXY", "UNKNOWN"], "{line:?}");
            assert!(fields.len() > 2, "PROXY UNKNOWN alone is canonical");
        }
        Some(src) => {
            let enc = std::str::from_utf8(enc)
                .unwrap()
                .strip_suffix("\r\n")
                .unwrap();
            let efields: Vec<&str> = enc.split(' ').collect();
            assert_eq!(fields.len(), 6);
            assert_eq!(fields[..2], efields[..2]);
            let dst: SocketAddr = h.destination.expect("both addresses");
            for (i, (got, want)) in fields.iter().zip(&efields).enumerate().skip(2) {
                if got == want {
                    continue;
                }
                match i {
                    // Addresses: only IPv6 has several spellings.
                    2 | 3 => {
                        assert_eq!(fields[1], "TCP6", "IPv4 text must be canonical: {got:?}");
                        let ip = if i == 2 { src.ip() } else { dst.ip() };
                        assert_eq!(got.parse::<std::net::IpAddr>().unwrap(), ip);
                    }
                    // Ports: only leading zeros.
                    _ => {
                        let trimmed = got.trim_start_matches('0');
                        let trimmed = if trimmed.is_empty() { "0" } else { trimmed };
                        assert_eq!(&trimmed, want, "port {got:?}");
                    }
                }
            }
        }
    }
}

fn poll_once<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("reading from a slice never waits"),
    }
}

/// Counts allocations and refuses any over 256 MiB.
#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);

    let mut r = Dribble {
        data,
        pos: 0,
        chunk: 1 + data.len() % 7,
    };
    let read = read_proxy_header(&mut r);
    assert!(
        r.pos <= cap(data),
        "read {} bytes, cap {}",
        r.pos,
        cap(data)
    );

    let mut rest = data;
    let read_async = poll_once(read_proxy_header_async(&mut rest));
    assert_eq!(
        data.len() - rest.len(),
        r.pos,
        "async and blocking readers differ"
    );
    assert_eq!(read.as_ref().ok(), read_async.as_ref().ok());

    match parsed {
        Ok(Parsed::Complete { header, len }) => {
            assert!(len <= cap(data));
            assert_eq!(read.expect("the reader accepts what parse accepts"), header);
            assert_eq!(r.pos, len, "the reader stops exactly at the header's end");
            // Every prefix asks only for bytes of this header.
            let probes = (0..len.min(20)).chain([len - 1]);
            for p in probes {
                match parse(&data[..p]) {
                    Ok(Parsed::Incomplete { need }) => {
                        assert!(need > 0 && p + need <= len, "prefix {p} asks for {need}")
                    }
                    other => panic!("prefix {p} of a {len}-byte header: {other:?}"),
                }
            }
            assert_eq!(complete(&data[..len]), Some((header, len)));
            let enc = header.encode().expect("a parsed header encodes");
            assert_eq!(complete(&enc), Some((header, enc.len())), "round trip");
            assert_eq!(header.encode().unwrap(), enc);
            check_differences(&data[..len], &header, &enc);
        }
        Ok(Parsed::Incomplete { need }) => {
            assert!(need > 0 && data.len() + need <= cap(data));
            assert!(
                read.is_err(),
                "the reader hit end of input inside the header"
            );
        }
        Err(_) => {
            assert!(read.is_err());
        }
    }
});
