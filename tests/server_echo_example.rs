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

#[cfg(feature = "async")] // the example has no async mode without it
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
    let modes: &[&str] = if cfg!(feature = "async") {
        &["sync", "threading", "forking", "prefork", "async"]
    } else {
        &["sync", "threading", "forking", "prefork"]
    };
    for &mode in modes {
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

/// What the agent-check port answers now.
fn agent(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// Behind a balancer, in every mode: PROXY v1 honoured (the handler sees
/// the header's client address), a connection without a header closed
/// unanswered, and on SIGTERM the agent check says `drain` at once while
/// the port still accepts (the drain notice), then the port closes.
#[test]
fn echo_behind_a_balancer_proxy_health_and_drain_notice() {
    let modes: &[&str] = if cfg!(feature = "async") {
        &["sync", "threading", "forking", "prefork", "async"]
    } else {
        &["sync", "threading", "forking", "prefork"]
    };
    for &mode in modes {
        let health: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let h = health.to_string();
        let r = start(
            &[
                "--mode",
                mode,
                "--proxy-protocol",
                "--proxy-timeout",
                "300ms",
                "--announce-peer",
                "--health",
                &h,
                "--drain-notice",
                "800ms",
            ],
            "tcp",
            mode,
        );
        assert_eq!(agent(health), "ready up 100%\n", "{mode}");

        let mut s = TcpStream::connect(r.addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 9000\r\nhi")
            .unwrap();
        let mut buf = [0u8; 23];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"peer 192.0.2.7:40000\nhi", "{mode}");
        drop(s);

        // No header: closed without an echo once the timeout passes.
        let mut bare = TcpStream::connect(r.addr).unwrap();
        bare.set_read_timeout(Some(TIMEOUT)).unwrap();
        bare.write_all(b"hello without a header").unwrap();
        let mut got = Vec::new();
        let _ = bare.read_to_end(&mut got);
        assert!(got.is_empty(), "{mode}: echoed without a header: {got:?}");

        kill(Pid::from_raw(r.child.id() as i32), Signal::SIGTERM).unwrap();
        let t0 = std::time::Instant::now();
        let mut said = agent(health);
        while said != "drain\n" && t0.elapsed() < Duration::from_millis(500) {
            std::thread::sleep(Duration::from_millis(10));
            said = agent(health);
        }
        assert_eq!(said, "drain\n", "{mode}");
        // Still accepting during the notice: drain is reported first.
        let mut s = TcpStream::connect(r.addr).expect("refused during the notice");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.write_all(b"PROXY TCP4 192.0.2.8 198.51.100.1 40001 9000\r\n")
            .unwrap();
        let mut line = [0u8; 21];
        s.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"peer 192.0.2.8:40001\n", "{mode}");
        drop(s);
        // Then the port closes.
        loop {
            match TcpStream::connect(r.addr) {
                Err(e) => {
                    // Refused once closed; a connect that raced the close itself
                    // (completed into the backlog as it was closed) is reset.
                    assert!(
                        matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::ConnectionReset
                        ),
                        "{mode}: {e}"
                    );
                    break;
                }
                Ok(_) => assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "{mode}: still accepting after the notice"
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            t0.elapsed() >= Duration::from_millis(700),
            "{mode}: closed before the notice ran out ({:?})",
            t0.elapsed()
        );
        let mut r = r;
        let status = r.child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{mode}: {status:?}");
        let rest = r.rest.take().unwrap().join().unwrap();
        assert!(rest.is_empty(), "extra stdout: {rest:?}");
    }
}

/// `--reuse-port`: a second instance binds the port the first one serves,
/// and once the first is stopped the second takes the new connections.
#[test]
fn echo_reuse_port_second_instance_takes_over() {
    let first = start(&["--reuse-port"], "tcp", "threading");
    let port = first.addr.to_string();
    let child = Command::new(echo_binary())
        .args(["--reuse-port", "--listen", &port])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Ended by the guard if the test fails midway.
    let mut second = Running {
        child,
        addr: first.addr,
        rest: None,
    };
    let mut out = BufReader::new(second.child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line,
        format!("listening on tcp://{port} (mode threading)\n")
    );
    tcp_echo(first.addr);
    stop(first, Signal::SIGTERM);
    // Only the second listens now: every new connection is served.
    for _ in 0..20 {
        tcp_echo(second.addr);
    }
    kill(Pid::from_raw(second.child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(second.child.wait().unwrap().code(), Some(0));
}

/// The agent port after the drain notice, while a connection keeps the
/// old instance draining: it must not be held by a process that no
/// longer answers on it. A replacement started on the same `--health`
/// address (HAProxy's `agent-port` names one port per server line) must
/// bind it, and until then an agent check must be refused or answered,
/// not left to time out.
///
/// Before the fix the old instance kept the agent socket until its drain
/// ended (up to `--drain-timeout`, or the idle timeout of the slowest
/// client) without answering on it: the replacement exited with "cannot
/// bind the health port …: Address already in use". The agent port now
/// closes where the listening socket does (`server_close`).
#[test]
fn a_replacement_binds_the_health_port_while_the_old_instance_drains() {
    let health: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let h = health.to_string();
    let old = start(
        &["--health", &h, "--drain-notice", "300ms"],
        "tcp",
        "threading",
    );
    let mut client = TcpStream::connect(old.addr).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    client.read_exact(&mut buf).unwrap();
    kill(Pid::from_raw(old.child.id() as i32), Signal::SIGTERM).unwrap();
    // The notice runs out: the old instance's port closes.
    let t0 = std::time::Instant::now();
    while TcpStream::connect(old.addr).is_ok() {
        assert!(t0.elapsed() < TIMEOUT, "still accepting after the notice");
        std::thread::sleep(Duration::from_millis(20));
    }
    // An agent check now: refused, or answered; not a silent socket.
    if let Ok(mut s) = TcpStream::connect(health) {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut text = String::new();
        let got = s.read_to_string(&mut text);
        assert!(
            got.is_ok() && !text.is_empty(),
            "agent port accepted but did not answer after the notice: {got:?}"
        );
    }
    // The replacement, on the same agent port, while the old one drains.
    let child = Command::new(echo_binary())
        .args(["--listen", "127.0.0.1:0", "--health", &h])
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut new = Running {
        child,
        addr: old.addr,
        rest: None,
    };
    let mut line = String::new();
    BufReader::new(new.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if !line.starts_with("listening on tcp://") {
        let _ = new.child.wait();
        let mut err = String::new();
        let _ = new.child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("the replacement did not start: {err}");
    }
    assert_eq!(agent(health), "ready up 100%\n");
    // The old instance's client is still served, then it leaves.
    client.write_all(b"yo").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"yo");
    client.shutdown(Shutdown::Both).unwrap();
    let mut old = old;
    assert_eq!(old.child.wait().unwrap().code(), Some(0));
    kill(Pid::from_raw(new.child.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(new.child.wait().unwrap().code(), Some(0));
}
