//! The one support module of the server tests: a test runner for the
//! `harness = false` binaries and the `/proc` helpers (`runner.rs`, also
//! reachable as `tests/forktest`), and the clients and echo handler the
//! server tests share.
#![allow(dead_code, unused_imports)]

mod runner;
pub use runner::*;

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::Duration;

use socketserver::server::{Server, ShutdownHandle};
use socketserver::{Request, RequestHandler};

/// Echoes whatever arrives, for streams and datagrams alike.
pub struct Echo;

impl RequestHandler for Echo {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let (mut r, mut w) = req.split();
        loop {
            let chunk = r.fill_buf()?;
            if chunk.is_empty() {
                return Ok(());
            }
            let n = chunk.len();
            w.write_all(chunk)?;
            r.consume(n);
        }
    }
}

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `serve_forever` on a thread; returns the handle and the thread,
/// which gives the server back.
pub fn serve_in_thread<S>(mut server: S) -> (ShutdownHandle, JoinHandle<S>)
where
    S: Server + Send + 'static,
{
    let handle = server.shutdown_handle();
    let thread = std::thread::spawn(move || {
        server.serve_forever().expect("serve_forever");
        server
    });
    (handle, thread)
}

pub fn tcp_roundtrip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(msg).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

pub fn unix_stream_roundtrip(path: &Path, msg: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(msg).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

pub fn udp_roundtrip(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.send_to(msg, addr).unwrap();
    let mut buf = vec![0; 65536];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    assert_eq!(from, addr);
    buf.truncate(n);
    buf
}

/// The client binds its own path so the server can answer it.
pub fn unix_dgram_roundtrip(server: &Path, client: &Path, msg: &[u8]) -> Vec<u8> {
    let s = UnixDatagram::bind(client).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.send_to(msg, server).unwrap();
    let mut buf = vec![0; 65536];
    let n = s.recv(&mut buf).unwrap();
    buf.truncate(n);
    let _ = std::fs::remove_file(client);
    buf
}
