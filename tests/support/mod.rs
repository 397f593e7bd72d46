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

/// Answers `addr` with the peer address it was given (the PROXY
/// header's client, behind a balancer); echoes other lines.
pub struct Who;

impl RequestHandler for Who {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let mut line = String::new();
        while req.rfile().read_line(&mut line)? > 0 {
            if line == "addr\n" {
                let peer = req.peer_addr().to_string();
                writeln!(req.wfile(), "{peer}")?;
            } else {
                req.wfile().write_all(line.as_bytes())?;
            }
            line.clear();
        }
        Ok(())
    }
}

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The example binary `name`: `cargo test` builds the examples next to
/// the test binary's directory.
pub fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        bin.exists(),
        "{} not built (cargo build --examples)",
        bin.display()
    );
    bin
}

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
