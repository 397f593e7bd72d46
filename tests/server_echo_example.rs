//! Drives `examples/echo.rs` through its command-line contract: the ready
//! line, byte-transparent echo over TCP and UDP, and a graceful exit with
//! status 0 on SIGTERM/SIGINT — in every mode, over TCP, UDP, Unix stream
//! and Unix datagram sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const TIMEOUT: Duration = Duration::from_secs(10);

/// `cargo test` builds examples next to the test binary's directory.
fn echo_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join("echo");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

struct Running {
    child: Child,
    addr: SocketAddr,
    rest: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only reached when a test failed midway: do not leave it behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str], scheme: &str, mode: &str) -> Running {
    let mut child = Command::new(echo_binary())
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let prefix = format!("listening on {scheme}://");
    let suffix = format!(" (mode {mode})\n");
    assert!(
        line.starts_with(&prefix) && line.ends_with(&suffix),
        "bad ready line {line:?}"
    );
    let addr: SocketAddr = line[prefix.len()..line.len() - suffix.len()]
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0);
    // Exactly one line: nothing else ever comes on stdout.
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
        rest
    });
    Running {
        child,
        addr,
        rest: Some(rest),
    }
}

fn stop(mut r: Running, sig: Signal) {
    kill(Pid::from_raw(r.child.id() as i32), sig).unwrap();
    let status = r.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let rest = r.rest.take().unwrap().join().unwrap();
    assert!(rest.is_empty(), "extra stdout: {rest:?}");
}

fn tcp_echo(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    // Byte-transparent and unbuffered: a chunk without a newline comes back
    // while the connection stays open.
    s.write_all(b"no newline \x00\xff").unwrap();
    let mut buf = [0u8; 13];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"no newline \x00\xff");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut s = s.try_clone().unwrap();
        let big = big.clone();
        std::thread::spawn(move || {
            s.write_all(&big).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back, big);
}

#[test]
fn echo_default_mode_is_threading_and_sigterm_exits_0() {
    let r = start(&[], "tcp", "threading");
    tcp_echo(r.addr);
    tcp_echo(r.addr);
    stop(r, Signal::SIGTERM);
}

#[test]
fn echo_sync_mode_sigint_exits_0() {
    let r = start(&["--mode", "sync"], "tcp", "sync");
    tcp_echo(r.addr);
    stop(r, Signal::SIGINT);
}

#[test]
fn echo_forking_mode_sigterm_exits_0() {
    let r = start(&["--mode", "forking"], "tcp", "forking");
    tcp_echo(r.addr);
    tcp_echo(r.addr);
    stop(r, Signal::SIGTERM);
}

#[test]
fn echo_forking_udp() {
    let r = start(&["--mode", "forking", "--udp"], "udp", "forking");
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.send_to(b"datagram", r.addr).unwrap();
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"datagram");
    stop(r, Signal::SIGINT);
}

#[test]
fn echo_udp_replies_each_datagram() {
    let r = start(&["--udp"], "udp", "threading");
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    for msg in [&b"one"[..], b"two\n", b"\x00\x01\x02"] {
        s.send_to(msg, r.addr).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        assert_eq!(from, r.addr);
        assert_eq!(&buf[..n], msg);
    }
    stop(r, Signal::SIGTERM);
}

#[test]
fn echo_rejects_unknown_mode() {
    let out = Command::new(echo_binary())
        .args(["--mode", "nonsense"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

#[test]
fn echo_prefork_mode_sigterm_exits_0() {
    let r = start(&["--mode", "prefork"], "tcp", "prefork");
    tcp_echo(r.addr);
    tcp_echo(r.addr);
    stop(r, Signal::SIGTERM);
}

#[test]
fn echo_async_mode_sigint_exits_0() {
    let r = start(&["--mode", "async"], "tcp", "async");
    tcp_echo(r.addr);
    tcp_echo(r.addr);
    stop(r, Signal::SIGINT);
}

#[test]
fn echo_every_mode_serves_udp_and_unix_sockets() {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    let dir = tempfile::tempdir().unwrap();
    for mode in ["sync", "threading", "forking", "prefork", "async"] {
        let r = start(&["--mode", mode, "--udp"], "udp", mode);
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.send_to(b"datagram", r.addr).unwrap();
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"datagram", "{mode} udp");
        stop(r, Signal::SIGTERM);

        for datagram in [false, true] {
            let path = dir.path().join(format!("{mode}-{datagram}.sock"));
            let mut args = vec!["--mode", mode, "--unix", path.to_str().unwrap()];
            if datagram {
                args.push("--udp");
            }
            let mut child = Command::new(echo_binary())
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            let scheme = if datagram { "unixgram" } else { "unix" };
            assert_eq!(
                line,
                format!("listening on {scheme}://{} (mode {mode})\n", path.display())
            );
            if datagram {
                let client = dir.path().join(format!("{mode}-client.sock"));
                let c = UnixDatagram::bind(&client).unwrap();
                c.set_read_timeout(Some(TIMEOUT)).unwrap();
                c.send_to(b"unix datagram", &path).unwrap();
                let n = c.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], b"unix datagram", "{mode} unixgram");
                std::fs::remove_file(&client).unwrap();
            } else {
                let mut c = UnixStream::connect(&path).unwrap();
                c.set_read_timeout(Some(TIMEOUT)).unwrap();
                c.write_all(b"unix stream").unwrap();
                c.shutdown(Shutdown::Write).unwrap();
                let mut back = Vec::new();
                c.read_to_end(&mut back).unwrap();
                assert_eq!(back, b"unix stream", "{mode} unix");
            }
            kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
            let status = child.wait().unwrap();
            assert_eq!(status.code(), Some(0), "{mode} {scheme}: {status:?}");
            assert!(!path.exists(), "{mode} {scheme}: socket file left behind");
        }
    }
}
