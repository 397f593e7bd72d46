//! Integration tests for the `loadtest` binary, against small servers
//! started here on 127.0.0.1:0: a good echo server, one that corrupts one
//! byte in a thousand, one that never answers, a UDP echo that drops every
//! tenth datagram and one that reorders.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How a test server treats what it receives.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Echo,
    /// Flip the bits of every 1000th byte (counted across connections).
    Corrupt,
    /// Accept, read, never reply.
    Silent,
    /// UDP: drop every tenth datagram.
    DropTenth,
    /// UDP: hold every fifth datagram back and send it after the next.
    Reorder,
}

/// A server on 127.0.0.1:0 that stops when dropped.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Bytes (TCP) or datagrams (UDP) echoed back.
    echoed: Arc<AtomicU64>,
    /// Connections accepted (TCP).
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    udp: bool,
}

impl Server {
    fn tcp(b: Behaviour) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let counter = Arc::new(AtomicU64::new(0));
        let (st, ec, ac) = (stop.clone(), echoed.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = conn else { continue };
                ac.fetch_add(1, Ordering::SeqCst);
                if b == Behaviour::Silent {
                    held.push(s);
                    continue;
                }
                let (ec, counter) = (ec.clone(), counter.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if b == Behaviour::Corrupt {
                            let first = counter.fetch_add(n as u64, Ordering::SeqCst);
                            for (i, byte) in buf[..n].iter_mut().enumerate() {
                                if (first + i as u64 + 1) % 1000 == 0 {
                                    *byte ^= 0xFF;
                                }
                            }
                        }
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        ec.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        Server {
            addr,
            stop,
            echoed,
            accepted,
            thread: Some(thread),
            udp: false,
        }
    }

    fn udp(b: Behaviour) -> Server {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        let (st, ec) = (stop.clone(), echoed.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let mut n_seen = 0u64;
            let mut held: Option<(Vec<u8>, SocketAddr)> = None;
            while !st.load(Ordering::SeqCst) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                n_seen += 1;
                match b {
                    Behaviour::DropTenth if n_seen % 10 == 0 => continue,
                    Behaviour::Reorder if n_seen % 5 == 0 => {
                        held = Some((buf[..n].to_vec(), peer));
                        continue;
                    }
                    _ => {}
                }
                let _ = sock.send_to(&buf[..n], peer);
                ec.fetch_add(1, Ordering::SeqCst);
                if let Some((d, p)) = held.take() {
                    let _ = sock.send_to(&d, p);
                    ec.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        Server {
            addr,
            stop,
            echoed,
            accepted: Arc::new(AtomicU64::new(0)),
            thread: Some(thread),
            udp: true,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if !self.udp {
            // Wake the accept loop so it sees the flag.
            let _ = TcpStream::connect(self.addr);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn loadtest(args: &[&str]) -> Output {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("run loadtest");
    // Bounded: duration + drain, never much more.
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    out
}

fn json_run(addr: SocketAddr, extra: &[&str]) -> Value {
    let a = addr.to_string();
    let mut args = vec![a.as_str(), "--json"];
    args.extend_from_slice(extra);
    let out = loadtest(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one JSON object: {stdout}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn errors(v: &Value, kind: &str) -> u64 {
    v["errors"][kind]
        .as_u64()
        .unwrap_or_else(|| panic!("errors.{kind} missing in {v}"))
}

#[test]
fn good_echo_server_counts_requests_without_errors() {
    let srv = Server::tcp(Behaviour::Echo);
    let v = json_run(srv.addr, &["-c", "4", "-d", "1s", "-s", "100"]);
    // The record says which client made it, when, and how it was run.
    assert_eq!(v["tool"], "loadtest");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let started = v["started_utc"].as_str().unwrap();
    assert!(
        started.len() == 20 && started.ends_with('Z') && started.as_bytes()[10] == b'T',
        "{started}"
    );
    let cmd: Vec<&str> = v["command_line"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &cmd[1..],
        &[
            &srv.addr.to_string(),
            "--json",
            "-c",
            "4",
            "-d",
            "1s",
            "-s",
            "100"
        ]
    );
    let requests = u(&v, "requests");
    assert!(requests > 100, "{v}");
    assert_eq!(errors(&v, "total"), 0, "{v}");
    assert_eq!(u(&v, "connections"), 4);
    assert_eq!(u(&v, "connections_opened"), 4, "{v}");
    // The server echoed at least every byte that was counted.
    assert!(srv.echoed.load(Ordering::SeqCst) >= requests * 100);
    let l = &v["latency_us"];
    let (p50, p90, p99, p999, max) = (
        f(l, "p50"),
        f(l, "p90"),
        f(l, "p99"),
        f(l, "p999"),
        f(l, "max"),
    );
    assert!(
        p50 > 0.0 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
        "{l}"
    );
}

#[test]
fn every_connection_runs_whatever_the_thread_count() {
    // Connections are split over the load threads: with 1, 3 or more
    // threads than connections, every connection opens once and works.
    let srv = Server::tcp(Behaviour::Echo);
    for (threads, expect) in [("1", 1), ("3", 3), ("16", 5)] {
        let v = json_run(srv.addr, &["-c", "5", "-t", threads, "-d", "500ms"]);
        assert_eq!(u(&v, "threads"), expect, "{v}");
        assert_eq!(u(&v, "connections_opened"), 5, "{v}");
        assert!(u(&v, "requests") > 50, "{v}");
        assert_eq!(errors(&v, "total"), 0, "{v}");
    }
}

/// Kills (SIGKILL) and reaps the child if a test fails before waiting.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn interrupt_after(args: &[&str], after: Duration) -> (Output, Duration) {
    let child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run loadtest");
    let mut guard = KillOnDrop(Some(child));
    std::thread::sleep(after);
    let pid = guard.0.as_ref().map(|c| c.id()).unwrap_or_default() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT our own child");
    let sent = Instant::now();
    let out = guard
        .0
        .take()
        .expect("child")
        .wait_with_output()
        .expect("wait");
    (out, sent.elapsed())
}

#[test]
fn ctrl_c_stops_at_once_and_reports_what_was_measured() {
    let srv = Server::tcp(Behaviour::Echo);
    let a = srv.addr.to_string();
    let (out, took) = interrupt_after(
        &[&a, "--json", "-c", "4", "-d", "60s"],
        Duration::from_millis(1500),
    );
    assert!(took < Duration::from_secs(3), "took {took:?} after SIGINT");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["interrupted"], Value::Bool(true), "{v}");
    let secs = f(&v, "duration_s");
    assert!((1.0..5.0).contains(&secs), "{v}");
    assert!(u(&v, "requests") > 100, "{v}");
    assert_eq!(errors(&v, "total"), 0, "{v}");
    assert!(
        (f(&v, "rps") * secs - u(&v, "requests") as f64).abs() <= 1.0,
        "{v}"
    );
    assert!(srv.echoed.load(Ordering::SeqCst) >= u(&v, "requests") * 64);

    // Interrupted during the warm-up: nothing to report, still 130.
    let (out, _) = interrupt_after(
        &[&a, "-c", "2", "--warmup", "30s", "-d", "10s"],
        Duration::from_millis(500),
    );
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing was measured"));
}

#[test]
fn json_numbers_agree_with_each_other() {
    let srv = Server::tcp(Behaviour::Echo);
    let start = Instant::now();
    let v = json_run(
        srv.addr,
        &[
            "-c", "4", "-d", "1500ms", "--rate", "400", "--warmup", "300ms", "-s", "32",
        ],
    );
    assert!(start.elapsed() >= Duration::from_millis(1800));
    let (requests, rps, dur) = (u(&v, "requests") as f64, f(&v, "rps"), f(&v, "duration_s"));
    assert_eq!(dur, 1.5);
    assert!((requests - rps * dur).abs() <= 1.0, "{v}");
    assert!(
        (f(&v, "bytes_per_s") - rps * 32.0).abs() < 1e-6 * rps.max(1.0) * 32.0,
        "{v}"
    );
    // Open loop at 400 req/s for 1.5 s.
    assert!((540.0..=660.0).contains(&requests), "{v}");
    let timeline = v["timeline"].as_array().unwrap();
    let in_timeline: u64 = timeline.iter().map(|s| u(s, "requests")).sum();
    assert_eq!(in_timeline, requests as u64);
    let errs = &v["errors"];
    let sum: u64 = [
        "connect",
        "timeout",
        "reset",
        "short_read",
        "mismatch",
        "other",
    ]
    .iter()
    .map(|k| errs[k].as_u64().unwrap())
    .sum();
    assert_eq!(sum, u(errs, "total"));
    assert_eq!(v["rate"].as_f64(), Some(400.0));
}

#[test]
fn corrupted_bytes_are_counted_as_mismatches() {
    let srv = Server::tcp(Behaviour::Corrupt);
    let v = json_run(srv.addr, &["-c", "4", "-d", "1s", "-s", "100"]);
    let mismatch = errors(&v, "mismatch");
    let requests = u(&v, "requests");
    // One byte in a thousand, 100-byte messages: about one echo in ten.
    assert!(mismatch > 0, "{v}");
    assert!(requests > mismatch, "{v}");
    let ratio = mismatch as f64 / (mismatch + requests) as f64;
    assert!((0.03..0.3).contains(&ratio), "{ratio} {v}");
    // Each mismatch reconnects, and the run carries on.
    assert!(u(&v, "connections_opened") > 4, "{v}");
}

#[test]
fn a_server_that_never_answers_gives_timeouts() {
    let srv = Server::tcp(Behaviour::Silent);
    let v = json_run(srv.addr, &["-c", "2", "-d", "1s", "--timeout", "200ms"]);
    assert_eq!(u(&v, "requests"), 0, "{v}");
    // 2 connections × ~5 timeouts of 200 ms each; allow for a busy machine.
    let t = errors(&v, "timeout");
    assert!((3..=12).contains(&t), "{v}");
    assert_eq!(errors(&v, "total"), t, "{v}");
    // After each timeout the connection reconnects.
    assert!(srv.accepted.load(Ordering::SeqCst) >= 3);
}

/// A request still in flight when the window closes keeps its timeout
/// and is counted: against a server that never answers, a 1 s run with a
/// 3 s timeout reports one timeout per connection (persistent and churn),
/// not "0 requests, 0 errors" as when such requests were dropped.
#[test]
fn a_request_in_flight_at_the_end_of_the_window_is_counted() {
    let srv = Server::tcp(Behaviour::Silent);
    for (mode, extra) in [("persistent", &[][..]), ("churn", &["--churn"][..])] {
        let mut args = vec!["-c", "4", "-d", "1s", "--timeout", "3s"];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let v = json_run(srv.addr, &args);
        assert_eq!(u(&v, "requests"), 0, "{mode}: {v}");
        assert_eq!(errors(&v, "timeout"), 4, "{mode}: {v}");
        assert_eq!(errors(&v, "total"), 4, "{mode}: {v}");
        // It waited for them: the window plus their timeout.
        assert!(started.elapsed() >= Duration::from_secs(3), "{mode}");
    }
}

#[test]
fn udp_loss_is_counted() {
    let srv = Server::udp(Behaviour::DropTenth);
    let v = json_run(
        srv.addr,
        &["--udp", "-c", "4", "-d", "1s", "--timeout", "100ms"],
    );
    let (sent, lost, requests) = (u(&v, "sent"), u(&v, "lost"), u(&v, "requests"));
    assert!(sent >= 100, "{v}");
    let loss = lost as f64 / sent as f64;
    assert!((0.06..=0.14).contains(&loss), "loss {loss}: {v}");
    assert_eq!(sent, requests + lost, "{v}");
    assert_eq!(errors(&v, "total"), 0, "{v}");
    assert!(srv.echoed.load(Ordering::SeqCst) >= requests);
}

#[test]
fn udp_reordering_is_counted() {
    let srv = Server::udp(Behaviour::Reorder);
    let v = json_run(srv.addr, &["--udp", "-c", "1", "-d", "1s", "--rate", "300"]);
    let (sent, lost, reordered) = (u(&v, "sent"), u(&v, "lost"), u(&v, "reordered"));
    // Every fifth datagram comes back after its successor.
    let r = reordered as f64 / sent as f64;
    assert!((0.12..=0.25).contains(&r), "{r}: {v}");
    assert!(lost <= 2, "{v}");
    assert_eq!(errors(&v, "total"), 0, "{v}");
}

#[test]
fn churn_opens_a_connection_per_request() {
    let srv = Server::tcp(Behaviour::Echo);
    let v = json_run(srv.addr, &["--churn", "-c", "2", "-d", "1s"]);
    let (requests, opened) = (u(&v, "requests"), u(&v, "connections_opened"));
    assert!(requests > 20, "{v}");
    assert!(opened >= requests && opened <= requests + 2, "{v}");
    assert!(f(&v, "connections_per_s") > 20.0, "{v}");
    assert_eq!(errors(&v, "total"), 0, "{v}");
    assert!(srv.accepted.load(Ordering::SeqCst) >= requests);
}

#[test]
fn connect_rate_limits_new_connections() {
    let srv = Server::tcp(Behaviour::Echo);
    let v = json_run(
        srv.addr,
        &["--churn", "-c", "4", "-d", "1s", "--connect-rate", "100"],
    );
    let opened = u(&v, "connections_opened");
    // The limit is the upper bound: 100/s for 1 s (the limiter never bursts
    // to catch up). The lower bound only shows connections still flow; it
    // is loose because a busy 2-core machine can stall the client.
    assert!((40..=110).contains(&opened), "{v}");
}

#[test]
fn human_summary_and_plot() {
    let srv = Server::tcp(Behaviour::Echo);
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("run.svg");
    let a = srv.addr.to_string();
    let out = loadtest(&[
        &a,
        "-c",
        "2",
        "-d",
        "1s",
        "--plot",
        svg_path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "requests", "req/s", "MB/s", "p50", "p90", "p99", "p99.9", "max", "errors",
    ] {
        assert!(text.contains(needle), "{needle} missing: {text}");
    }
    // stderr is not a terminal here: no progress line.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for needle in [
        "Latency over time",
        "Latency by percentile",
        "polyline",
        "p99",
        "p99.9",
        "counted in the second its reply arrived",
    ] {
        assert!(svg.contains(needle), "{needle} missing from the SVG");
    }
    assert!(!svg.contains("target"), "closed loop has no target rate");

    // An open-loop run states its target rate, in the subtitle and as a
    // line on the throughput panel.
    let out = loadtest(&[
        &a,
        "-c",
        "2",
        "-d",
        "1s",
        "--rate",
        "200",
        "--plot",
        svg_path.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.contains("target 200 req/s (open loop)"), "{svg}");
    assert!(svg.contains("target 200/s"), "{svg}");
}

#[test]
fn unreachable_target_fails_with_a_message() {
    // A port nothing listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = format!("127.0.0.1:{port}");
    let out = loadtest(&[&a, "-c", "2", "-d", "1s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect") && err.contains(&a), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn invalid_arguments_are_rejected() {
    for bad in [
        vec![],
        vec!["127.0.0.1:1", "-c", "0"],
        vec!["127.0.0.1:1", "-d", "ten"],
        vec!["127.0.0.1:1", "--rate", "0"],
        vec!["127.0.0.1:1", "--udp", "-s", "8"],
        vec!["127.0.0.1:1", "--udp", "--churn"],
        vec!["not an address", "-d", "1s"],
    ] {
        let out = loadtest(&bad);
        assert!(!out.status.success(), "{bad:?} succeeded");
        assert!(!out.stderr.is_empty(), "{bad:?}: no message");
    }
}
