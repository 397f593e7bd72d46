//! Adversarial black-box tests of `examples/echo.rs` in every mode: binary
//! garbage, a 1 MiB line, resets, half-closes, clients that stop reading,
//! bursts of short connections (descriptors back to baseline, no zombies)
//! and a clean SIGTERM exit afterwards.

mod common_support;
mod hardening_support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hardening_support::{
    children_of, connect, connect_and_reset, echo_exact, example, fd_count, garbage, not_listening,
    probe, stalled_client, wait_until, zombies_of, Guard, IO_TIMEOUT,
};
use socket2::SockRef;

const BURST: usize = 200;
const SETTLE: Duration = Duration::from_secs(5);

fn start(mode: &str, udp: bool) -> Guard {
    start_with(mode, udp, &[])
}

fn start_with(mode: &str, udp: bool, extra: &[&str]) -> Guard {
    let mut args = vec!["--mode", mode, "--listen", "127.0.0.1:0"];
    if udp {
        args.push("--udp");
    }
    args.extend_from_slice(extra);
    Guard::start(&example("echo"), &args, if udp { "udp" } else { "tcp" })
}

/// The descriptor count (see [`own_fds`]) once it has stopped changing
/// (bounded wait).
fn settled_fds(pid: i32, mode: &str) -> usize {
    let mut last = own_fds(pid, mode);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(100));
        let now = own_fds(pid, mode);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Descriptors the prefork parent holds per live worker (its pidfd and the
/// parent's end of the worker's control socket); the pool may grow while
/// clients hold workers and legitimately keeps up to `max_spare` idle.
const PREFORK_FDS_PER_WORKER: usize = 2;

/// The server's descriptors not explained by live workers (prefork) —
/// what must return to its baseline after any amount of traffic.
fn own_fds(pid: i32, mode: &str) -> usize {
    let fds = fd_count(pid);
    if mode == "prefork" {
        let live = children_of(pid).iter().filter(|&&(_, s)| s != 'Z').count();
        fds.saturating_sub(PREFORK_FDS_PER_WORKER * live)
    } else {
        fds
    }
}

fn assert_back_to_baseline(pid: i32, baseline: usize, what: &str) {
    let ok = wait_until(SETTLE, || own_fds(pid, what) == baseline);
    assert!(
        ok,
        "{what}: server has {} descriptors ({} not explained by workers), baseline {baseline}",
        fd_count(pid),
        own_fds(pid, what)
    );
    let ok = wait_until(SETTLE, || zombies_of(pid).is_empty());
    assert!(ok, "{what}: zombie children {:?}", zombies_of(pid));
}

/// A connection that stays open across the whole test and must keep
/// answering (concurrent modes only).
fn witness_round(w: &mut TcpStream, n: u8) {
    let msg = [b'w', n, 0, 0xff, b'\n'];
    w.write_all(&msg).unwrap();
    let mut back = [0u8; 5];
    w.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// SIGTERM: exit status 0, nothing listens any more, and every child the
/// server had (forked handlers, prefork workers) is gone too.
fn terminate_cleanly(mut srv: Guard) {
    let addr = srv.addr;
    let log = srv.log();
    assert!(!log.contains("panicked"), "server log: {log}");
    let kids: Vec<i32> = children_of(srv.pid()).into_iter().map(|(p, _)| p).collect();
    let status = srv.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(not_listening(addr), "{addr} still accepts after exit");
    for kid in kids {
        let gone = wait_until(SETTLE, || {
            !std::path::Path::new(&format!("/proc/{kid}")).exists()
        });
        assert!(gone, "child {kid} outlived the server");
    }
}

fn tcp_scenario(mode: &str) {
    let srv = start(mode, false);
    let (addr, pid) = (srv.addr, srv.pid());
    let concurrent = mode != "sync";
    probe(addr);
    let baseline = settled_fds(pid, mode);

    let mut witness = concurrent.then(|| connect(addr));
    let mut round = 0u8;
    let mut check = |witness: &mut Option<TcpStream>| {
        round = round.wrapping_add(1);
        if let Some(w) = witness.as_mut() {
            witness_round(w, round);
        }
        probe(addr);
    };
    check(&mut witness);

    // Random binary garbage (NULs included), then only NULs.
    echo_exact(&connect(addr), &garbage(64 * 1024, 1), true);
    echo_exact(&connect(addr), &[0u8; 4096], true);
    check(&mut witness);

    // 1 MiB without a newline, then more on the same connection.
    let s = connect(addr);
    let mut big = garbage(1 << 20, 2);
    big.iter_mut().for_each(|b| {
        if *b == b'\n' {
            *b = b'x';
        }
    });
    echo_exact(&s, &big, false);
    echo_exact(&s, b"after the big one", true);
    check(&mut witness);

    // Connect and reset at once, and reset while the server is writing.
    for i in 0..10 {
        connect_and_reset(addr, b"");
        connect_and_reset(addr, &garbage(200 * 1024, 10 + i));
    }
    check(&mut witness);

    // Half-close in the middle of a "message": the partial bytes come back,
    // then EOF.
    let s = connect(addr);
    echo_exact(&s, b"half a mess", true);
    check(&mut witness);

    // A client that stops reading while the server writes to it.
    let (stalled, sent) = stalled_client(addr, 32 << 20);
    assert!(sent > 0, "stalled client could not write at all");
    assert!(
        sent < 32 << 20,
        "server kept reading 32 MiB from a client that never reads"
    );
    if concurrent {
        // Others are not blocked by it.
        check(&mut witness);
        check(&mut witness);
    }
    SockRef::from(&stalled)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stalled);
    // In sync mode the server is free again once the stalled client is gone.
    check(&mut witness);

    // A burst of short connections, some of them reset.
    for i in 0..BURST {
        if i % 4 == 3 {
            connect_and_reset(addr, b"x");
        } else {
            let mut s = connect(addr);
            s.write_all(&[i as u8]).unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i as u8);
        }
    }
    check(&mut witness);
    drop(witness);
    assert_back_to_baseline(pid, baseline, mode);
    if mode == "forking" {
        let ok = wait_until(SETTLE, || children_of(pid).is_empty());
        assert!(ok, "forked children left: {:?}", children_of(pid));
    }
    terminate_cleanly(srv);
}

#[test]
fn tcp_sync_survives_abuse() {
    tcp_scenario("sync");
}

#[test]
fn tcp_threading_survives_abuse() {
    tcp_scenario("threading");
}

#[test]
fn tcp_forking_survives_abuse() {
    tcp_scenario("forking");
}

#[test]
fn tcp_prefork_survives_abuse() {
    tcp_scenario("prefork");
}

#[cfg(feature = "async")] // the echo example has no async mode without it
#[test]
fn tcp_async_survives_abuse() {
    tcp_scenario("async");
}

fn udp_round(s: &UdpSocket, server: SocketAddr, msg: &[u8]) {
    s.send_to(msg, server).unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    assert_eq!(from, server);
    assert!(
        &buf[..n] == msg,
        "datagram of {} bytes came back as {n} bytes",
        msg.len()
    );
}

fn udp_scenario(mode: &str) {
    let srv = start(mode, true);
    let (addr, pid) = (srv.addr, srv.pid());
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    udp_round(&s, addr, b"warm-up");
    let baseline = settled_fds(pid, mode);

    for (i, len) in [1usize, 7, 512, 1400, 8192, 8193, 65_507]
        .into_iter()
        .enumerate()
    {
        udp_round(&s, addr, &garbage(len, 100 + i as u64));
    }
    udp_round(&s, addr, &[0u8; 1000]);

    // An empty datagram may or may not be answered (with an empty one);
    // either way the server goes on answering.
    s.send_to(b"", addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    if let Ok((n, _)) = s.recv_from(&mut buf) {
        assert_eq!(n, 0, "reply to an empty datagram");
    }
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    udp_round(&s, addr, b"after empty");

    // A TCP client poking the UDP port changes nothing.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());

    for i in 0..BURST {
        udp_round(&s, addr, &garbage(1 + i % 300, 1000 + i as u64));
    }
    // A flood sent without waiting for replies: replies may be dropped
    // (it is UDP), but every one that comes back is exact, and the server
    // answers normally afterwards.
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..BURST as u32 {
        flood.send_to(&i.to_be_bytes(), addr).unwrap();
    }
    flood
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut buf = [0u8; 64];
    while let Ok((n, _)) = flood.recv_from(&mut buf) {
        assert_eq!(n, 4, "flood reply of {n} bytes");
        let i = u32::from_be_bytes(buf[..4].try_into().unwrap());
        assert!(i < BURST as u32 && seen.insert(i), "unexpected reply {i}");
    }
    udp_round(&s, addr, b"after the flood");
    assert_back_to_baseline(pid, baseline, mode);
    if mode == "forking" {
        let ok = wait_until(SETTLE, || children_of(pid).is_empty());
        assert!(ok, "forked children left: {:?}", children_of(pid));
    }
    let kids: Vec<i32> = children_of(pid).into_iter().map(|(p, _)| p).collect();
    let log = srv.log();
    assert!(!log.contains("panicked"), "server log: {log}");
    let mut srv = srv;
    let status = srv.terminate();
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The port is free again: binding it without SO_REUSEADDR succeeds.
    UdpSocket::bind(addr).expect("UDP port still bound after exit");
    assert!(kids.is_empty(), "children at exit: {kids:?}");
}

#[test]
fn udp_sync_survives_abuse() {
    udp_scenario("sync");
}

#[test]
fn udp_threading_survives_abuse() {
    udp_scenario("threading");
}

#[test]
fn udp_forking_survives_abuse() {
    udp_scenario("forking");
}

/// Half-closing before sending anything, and closing without reading the
/// echo, leave nothing behind either.
#[test]
fn tcp_threading_half_close_without_data_and_unread_echo() {
    let srv = start("threading", false);
    let (addr, pid) = (srv.addr, srv.pid());
    probe(addr);
    let baseline = settled_fds(pid, "threading");
    for _ in 0..20 {
        let mut s = connect(addr);
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let mut s = connect(addr);
        s.write_all(&garbage(100_000, 5)).unwrap();
        drop(s);
    }
    probe(addr);
    assert_back_to_baseline(pid, baseline, "threading");
    terminate_cleanly(srv);
}

/// SIGTERM while a client is connected: the listening socket closes at
/// once (new clients are refused, not left hanging in the backlog), the
/// open connection is still served to its end, then the exit status is 0.
fn drain_scenario(mode: &str) {
    let mut srv = start(mode, false);
    let addr = srv.addr;
    let mut open = connect(addr);
    witness_round(&mut open, 1);
    hardening_support::sigterm(srv.pid());
    assert!(
        wait_until(SETTLE, || not_listening(addr)),
        "{mode}: still accepting after SIGTERM"
    );
    witness_round(&mut open, 2);
    drop(open);
    let status = srv.terminate_wait();
    assert_eq!(status.code(), Some(0), "{mode}: {status:?}");
}

#[test]
fn sigterm_drains_threading() {
    drain_scenario("threading");
}

#[test]
fn sigterm_drains_forking() {
    drain_scenario("forking");
}

#[cfg(feature = "async")] // the echo example has no async mode without it
#[test]
fn sigterm_drains_async() {
    drain_scenario("async");
}

/// `--idle-timeout`: a client that goes quiet is disconnected after the
/// timeout (its slot is free again, and SIGTERM need not wait for it),
/// while one that keeps talking with shorter pauses is not.
fn idle_scenario(mode: &str) {
    let srv = start_with(mode, false, &["--idle-timeout", "1s"]);
    let addr = srv.addr;
    let mut quiet = connect(addr);
    witness_round(&mut quiet, 1);
    let went_quiet = std::time::Instant::now();
    let mut buf = [0u8; 8];
    // `connect` set a 5 s read timeout: EOF must come well before it.
    let n = quiet
        .read(&mut buf)
        .expect("EOF from the server, not a timeout");
    assert_eq!(n, 0, "{mode}: expected EOF");
    let waited = went_quiet.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{mode}: closed after {waited:?}"
    );
    // The sync server serves one client at a time: this one is served
    // only because the quiet one was dropped.
    let mut chatty = connect(addr);
    for n in 2..7 {
        witness_round(&mut chatty, n);
        std::thread::sleep(Duration::from_millis(400));
    }
    drop(chatty);
    terminate_cleanly(srv);
}

#[test]
fn idle_clients_are_disconnected_sync() {
    idle_scenario("sync");
}

#[test]
fn idle_clients_are_disconnected_threading() {
    idle_scenario("threading");
}

#[test]
fn idle_clients_are_disconnected_forking() {
    idle_scenario("forking");
}

#[test]
fn idle_clients_are_disconnected_prefork() {
    idle_scenario("prefork");
}

#[cfg(feature = "async")] // the echo example has no async mode without it
#[test]
fn idle_clients_are_disconnected_async() {
    idle_scenario("async");
}

/// A TCP health check that does not send the PROXY header (HAProxy's
/// `check` without `check-send-proxy`, a Kubernetes `tcpSocket` probe)
/// connects and closes, several times a second. Those and a trusted peer
/// that sends no header in time are the peer's (or the configuration's)
/// doing, not a handler error: at most a rate-limited warning, no `ERROR`
/// line per connection, and the timeout named as such rather than as
/// "Resource temporarily unavailable (os error 11)".
///
/// Before the fix every such connection was logged at `error` by the
/// default `handle_error` (20 probes, 20 `ERROR` lines); the async
/// strategy's native path warned once per connection.
fn proxy_probes(mode: &str) {
    let mut srv = start_with(
        mode,
        false,
        &[
            "--proxy-protocol",
            "--proxy-from",
            "127.0.0.1",
            "--proxy-timeout",
            "300ms",
        ],
    );
    for _ in 0..20 {
        drop(connect(srv.addr));
    }
    // Silent past the header timeout.
    let quiet = connect(srv.addr);
    std::thread::sleep(Duration::from_millis(600));
    drop(quiet);
    // A good client is still served.
    let mut s = connect(srv.addr);
    s.write_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 9000\r\nhi")
        .unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
    drop(s);
    assert!(srv.terminate().success());
    let log = srv.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "{} ERROR lines: {errors:#?}",
        errors.len()
    );
    let warns = log.lines().filter(|l| l.contains(" WARN ")).count();
    assert!(warns <= 2, "{warns} WARN lines for 21 probes:\n{log}");
    assert!(!log.contains("os error 11"), "{log}");
}

#[test]
fn proxy_probes_without_a_header_are_not_logged_as_errors_threading() {
    proxy_probes("threading");
}

#[test]
fn proxy_probes_without_a_header_are_not_logged_as_errors_forking() {
    proxy_probes("forking");
}

#[test]
fn proxy_probes_without_a_header_are_not_logged_as_errors_prefork() {
    proxy_probes("prefork");
}

#[cfg(feature = "async")] // the echo example has no async mode without it
#[test]
fn proxy_probes_without_a_header_are_not_logged_as_errors_async() {
    proxy_probes("async");
}
