//! The FTP example's connection limits, PROXY protocol, passive address
//! and MFMT, in every mode.
//!
//! `--max-connections` and `--max-per-ip` are the framework's shared
//! limiter (one table in shared memory), so they must hold identically in
//! threading, forking, prefork and async mode: the client over the limit
//! gets `421` and is closed, and a slot comes back however its session
//! ended (QUIT, reset, SIGKILL of the process serving it).

mod common_support;
mod ftp_support;

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use ftp_support::{wait_until, Ctrl, FtpServer};

/// Connects and returns the connection and its first reply code.
fn greet(addr: SocketAddr) -> (Ctrl, u16) {
    let (c, code, _) = Ctrl::connect(addr);
    (c, code)
}

/// Closes a connection with a reset (RST) instead of a FIN.
fn reset(c: Ctrl) {
    socket2::SockRef::from(&c.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
}

/// The child processes of `pid` (forked sessions or prefork workers).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        if let Ok(list) = fs::read_to_string(task.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

fn total_limit(mode: &str) {
    let server = FtpServer::start(mode, &["--max-connections", "2"]);
    let (a, ca) = greet(server.addr);
    let (mut b, cb) = greet(server.addr);
    let (mut c, cc) = greet(server.addr);
    assert_eq!(
        (ca, cb, cc),
        (220, 220, 421),
        "{mode}: the third client is refused"
    );
    assert!(c.at_eof(), "{mode}: a refused client is closed");
    // A session ended by a reset frees its slot.
    reset(a);
    let mut held = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (c, code) = greet(server.addr);
            if code == 220 {
                held.push(c);
                true
            } else {
                false
            }
        }),
        "{mode}: slot freed after a reset"
    );
    // And one ended by QUIT.
    assert_eq!(b.cmd("QUIT").0, 221);
    drop(b);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (c, code) = greet(server.addr);
            if code == 220 {
                held.push(c);
                true
            } else {
                false
            }
        }),
        "{mode}: slot freed after QUIT"
    );
    assert_eq!(greet(server.addr).1, 421, "{mode}: full again");
    if mode == "forking" || mode == "prefork" {
        // SIGKILL every process serving a session: the slots they held
        // are reclaimed, although no destructor ran.
        let kids = children(server.pid());
        assert!(!kids.is_empty(), "{mode}: no session processes found");
        for k in kids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(k),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let mut fresh = Vec::new();
        assert!(
            wait_until(Duration::from_secs(15), || {
                let (c, code) = greet(server.addr);
                if code == 220 {
                    fresh.push(c);
                }
                fresh.len() == 2
            }),
            "{mode}: slots of killed session processes were not reclaimed"
        );
        assert_eq!(
            greet(server.addr).1,
            421,
            "{mode}: and the limit still holds"
        );
    }
}

per_concurrent_mode!(total_limit_421_and_release, total_limit);

/// A PROXY v1 header naming `client`.
fn proxy_v1(client: &str, port: u16) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 {port} 21\r\n").into_bytes()
}

/// A PROXY v2 header naming an IPv4 `client`.
fn proxy_v2(client: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&client);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&21u16.to_be_bytes());
    h
}

fn per_ip_behind_proxy(mode: &str) {
    let server = FtpServer::start(mode, &["--proxy-protocol", "--max-per-ip", "1"]);
    // Two "clients" on one socket address: the limit counts the address
    // the header carries, not the balancer's.
    let (mut a, ca, _) = Ctrl::connect_with(server.addr, &proxy_v1("203.0.113.5", 4000));
    assert_eq!(ca, 220, "{mode}");
    let (mut b, cb, _) = Ctrl::connect_with(server.addr, &proxy_v2([203, 0, 113, 5], 4001));
    assert_eq!(cb, 421, "{mode}: second connection of 203.0.113.5 refused");
    assert!(b.at_eof());
    let (mut c, cc, _) = Ctrl::connect_with(server.addr, &proxy_v2([198, 51, 100, 7], 4002));
    assert_eq!(cc, 220, "{mode}: another address is served");
    // The session sees the real client: STAT names it.
    for (ctrl, ip) in [(&mut a, "203.0.113.5"), (&mut c, "198.51.100.7")] {
        assert_eq!(ctrl.cmd("USER bob").0, 331);
        assert_eq!(ctrl.cmd("PASS secret").0, 230);
        let (code, text) = ctrl.cmd("STAT");
        assert_eq!(code, 211, "{mode}: {text}");
        assert!(text.contains(ip), "{mode}: STAT shows {text}");
    }
    // A connection without a header is not served.
    let (_, code, _) = Ctrl::connect_with(server.addr, b"USER bob\r\n");
    assert_ne!(code, 220, "{mode}: no PROXY header, no session");
    // The log names the real clients.
    assert!(
        wait_until(Duration::from_secs(5), || server
            .log()
            .contains("198.51.100.7")),
        "{mode}: {}",
        server.log()
    );
}

per_concurrent_mode!(proxy_protocol_per_ip_sees_real_client, per_ip_behind_proxy);

/// Connects from the loopback address `from` and sends `prefix`.
fn connect_from(from: [u8; 4], addr: SocketAddr, prefix: &[u8]) -> (Ctrl, u16, String) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    s.connect(&addr.into()).unwrap();
    Ctrl::over(s.into(), prefix)
}

/// `--proxy-from`: only the named balancer may send the header. A peer
/// that goes around it is closed unread, forged header or not, so it
/// cannot claim another address (to get around the login limit or the
/// PORT/EPRT address check); the balancer's connections are served as
/// the client they name.
fn proxy_from_balancer_only(mode: &str) {
    let server = FtpServer::start(mode, &["--proxy-protocol", "--proxy-from", "127.0.0.2/32"]);
    let forged = proxy_v1("127.0.0.3", 4000);
    let (_, code, text) = connect_from([127, 0, 0, 1], server.addr, &forged);
    assert_eq!(code, 0, "{mode}: an untrusted peer was answered: {text}");
    let (mut c, code, text) = connect_from([127, 0, 0, 2], server.addr, &forged);
    assert_eq!(code, 220, "{mode}: the balancer was refused: {text}");
    assert_eq!(c.cmd("USER bob").0, 331);
    assert_eq!(c.cmd("PASS secret").0, 230);
    let (code, text) = c.cmd("STAT");
    assert_eq!(code, 211, "{mode}: {text}");
    assert!(text.contains("127.0.0.3"), "{mode}: STAT shows {text}");
}

per_concurrent_mode!(proxy_from_refuses_other_peers, proxy_from_balancer_only);

#[test]
fn passive_address_is_announced_in_pasv_not_epsv() {
    let server = FtpServer::start("threading", &["--passive-address", "203.0.113.9"]);
    let mut c = Ctrl::login(server.addr);
    let (code, text) = c.cmd("PASV");
    assert_eq!(code, 227);
    assert!(text.contains("(203,0,113,9,"), "{text}");
    let (code, text) = c.cmd("EPSV");
    assert_eq!(code, 229);
    assert!(text.contains("(|||"), "{text}");
    // The EPSV port is usable on the real address.
    let port: u16 = text
        .split("|||")
        .nth(1)
        .and_then(|r| r.split('|').next())
        .unwrap()
        .parse()
        .unwrap();
    fs::write(server.root().join("f.txt"), b"hello").unwrap();
    let _data = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_eq!(c.cmd("TYPE I").0, 200);
    // Without the flag, PASV announces the socket's own address.
    let plain = FtpServer::start("threading", &[]);
    let mut c = Ctrl::login(plain.addr);
    let (code, text) = c.cmd("PASV");
    assert_eq!(code, 227);
    assert!(text.contains("(127,0,0,1,"), "{text}");
}

fn mfmt(mode: &str) {
    let server = FtpServer::start(mode, &["--anonymous"]);
    fs::write(server.root().join("f.txt"), b"hello").unwrap();
    fs::create_dir(server.root().join("d")).unwrap();
    let mut c = Ctrl::login(server.addr);
    let (code, feat) = c.cmd("FEAT");
    assert_eq!(code, 211);
    assert!(feat.lines().any(|l| l.trim() == "MFMT"), "{feat}");
    assert!(feat.lines().any(|l| l.trim() == "MDTM"), "{feat}");
    let (code, help) = c.cmd("HELP");
    assert_eq!(code, 214);
    assert!(help.contains("MFMT"), "{help}");
    let (_, text) = c.cmd("MFMT 20200102030405 f.txt");
    assert_eq!(
        text.trim_end(),
        "213 Modify=20200102030405; f.txt",
        "{mode}"
    );
    assert_eq!(c.cmd("MDTM f.txt").1.trim_end(), "213 20200102030405");
    let mtime = fs::metadata(server.root().join("f.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        mtime
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        1_577_934_245
    );
    // A fraction is accepted; the file keeps its contents.
    assert_eq!(c.cmd("MFMT 19991231235959.250 /f.txt").0, 213);
    assert_eq!(c.cmd("MDTM f.txt").1.trim_end(), "213 19991231235959");
    assert_eq!(fs::read(server.root().join("f.txt")).unwrap(), b"hello");
    // Errors.
    assert_eq!(c.cmd("MFMT 2020 f.txt").0, 501);
    assert_eq!(c.cmd("MFMT 20201332000000 f.txt").0, 501);
    assert_eq!(c.cmd("MFMT 20200102030405").0, 501);
    assert_eq!(c.cmd("MFMT 20200102030405 missing").0, 550);
    assert_eq!(c.cmd("MFMT 20200102030405 d").0, 550, "not a regular file");
    // `..` clamps at the root: still the file inside.
    assert_eq!(c.cmd("MFMT 20210101000000 ../../f.txt").0, 213);
    assert_eq!(c.cmd("MDTM f.txt").1.trim_end(), "213 20210101000000");
    // Before login, and on a read-only session, refused (one session at
    // a time, for sync mode).
    assert_eq!(c.cmd("QUIT").0, 221);
    drop(c);
    let (mut anon, _, _) = Ctrl::connect(server.addr);
    assert_eq!(anon.cmd("MFMT 20200102030405 f.txt").0, 530);
    assert_eq!(anon.cmd("USER anonymous").0, 331);
    assert_eq!(anon.cmd("PASS x@y").0, 230);
    assert_eq!(anon.cmd("MFMT 20000101000000 f.txt").0, 550);
    assert_eq!(anon.cmd("MDTM f.txt").1.trim_end(), "213 20210101000000");
}

per_mode!(mfmt_sets_modification_time, mfmt);

/// `CDUP`, `CWD ..` and `CWD /..` at the root stay at the root.
fn dotdot_at_root(mode: &str) {
    let server = FtpServer::start(mode, &[]);
    let mut c = Ctrl::login(server.addr);
    for cmd in ["CDUP", "CWD ..", "CWD /..", "XCUP"] {
        assert_eq!(c.cmd(cmd).0, 250, "{mode}: {cmd}");
        assert_eq!(
            c.cmd("PWD").1.trim_end(),
            "257 \"/\" is the current directory"
        );
    }
}

per_mode!(dotdot_at_root_stays_at_root, dotdot_at_root);
