//! Is `loadtest` cheap enough not to be the bottleneck? Drives one simple
//! echo server (thread per connection, started here on 127.0.0.1:0) with
//! (a) the `loadtest` binary and (b) a minimal blocking client (one thread
//! per connection, `write_all` + `read_exact`, run as a child process of
//! this bench), for the same duration and connection count, and compares
//! each client's CPU time (user + system, from `getrusage(RUSAGE_CHILDREN)`)
//! per request. Goal: loadtest / blocking ≤ 1.0×.
//!
//! ```text
//! cargo bench --bench loadtest
//! ```

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};

const ROUNDS: usize = 7;
const SECONDS: u64 = 2;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("blocking-client") {
        blocking_client(&args[2..]);
        return;
    }
    let (addr, stop) = echo_server();
    println!(
        "loadtest client cost vs a minimal blocking client, echo server = thread per connection, {SECONDS} s per run, median of {ROUNDS}"
    );
    println!(
        "{:<22} {:>14} {:>14} {:>16} {:>16} {:>8}",
        "workload",
        "loadtest req/s",
        "blocking req/s",
        "loadtest µs/req",
        "blocking µs/req",
        "ratio"
    );
    for (conns, size) in [(50u32, 64u32), (8, 64), (50, 4096)] {
        let mut lt = Vec::new();
        let mut bl = Vec::new();
        for _ in 0..ROUNDS {
            lt.push(run_loadtest(&addr, conns, size));
            bl.push(run_blocking(&addr, conns, size));
        }
        let med = |v: &mut Vec<(f64, f64)>, i: usize| {
            let mut x: Vec<f64> = v.iter().map(|p| if i == 0 { p.0 } else { p.1 }).collect();
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
        let (lt_rps, lt_cpu) = (med(&mut lt, 0), med(&mut lt, 1));
        let (bl_rps, bl_cpu) = (med(&mut bl, 0), med(&mut bl, 1));
        println!(
            "{:<22} {:>14.0} {:>14.0} {:>16.2} {:>16.2} {:>7.2}×",
            format!("{conns} conns × {size} B"),
            lt_rps,
            bl_rps,
            lt_cpu,
            bl_cpu,
            lt_cpu / bl_cpu
        );
    }
    stop.store(true, Ordering::SeqCst);
}

/// CPU seconds (user + system) used so far by waited-for children.
fn children_cpu() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// Runs a child to completion; returns (its stdout, its CPU seconds).
fn run_child(cmd: &mut Command) -> (String, f64) {
    let before = children_cpu();
    let out = cmd.output().expect("run child");
    let cpu = children_cpu() - before;
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8(out.stdout).expect("utf-8"), cpu)
}

/// (requests per second, CPU µs per request)
fn run_loadtest(addr: &str, conns: u32, size: u32) -> (f64, f64) {
    let (out, cpu) = run_child(Command::new(env!("CARGO_BIN_EXE_loadtest")).args([
        addr,
        "--json",
        "-c",
        &conns.to_string(),
        "-s",
        &size.to_string(),
        "-d",
        &format!("{SECONDS}s"),
    ]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("loadtest JSON");
    let requests = v["requests"].as_u64().expect("requests");
    assert_eq!(v["errors"]["total"].as_u64(), Some(0), "{v}");
    (
        requests as f64 / SECONDS as f64,
        cpu * 1e6 / requests as f64,
    )
}

/// (requests per second, CPU µs per request)
fn run_blocking(addr: &str, conns: u32, size: u32) -> (f64, f64) {
    let exe = std::env::current_exe().expect("current_exe");
    let (out, cpu) = run_child(Command::new(exe).args([
        "blocking-client",
        addr,
        &conns.to_string(),
        &size.to_string(),
        &SECONDS.to_string(),
    ]));
    let requests: u64 = out.trim().parse().expect("request count");
    (
        requests as f64 / SECONDS as f64,
        cpu * 1e6 / requests as f64,
    )
}

/// The peer: one thread per connection, `write_all` + `read_exact`, no
/// checking, no timing. Prints the number of requests completed.
fn blocking_client(args: &[String]) {
    let addr = args[0].clone();
    let conns: u32 = args[1].parse().expect("connections");
    let size: usize = args[2].parse().expect("size");
    let secs: u64 = args[3].parse().expect("seconds");
    let total = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (addr, total) = (addr.clone(), total.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).expect("connect");
                s.set_nodelay(true).expect("nodelay");
                let tx = vec![7u8; size];
                let mut rx = vec![0u8; size];
                let mut n = 0u64;
                while Instant::now() < end {
                    s.write_all(&tx).expect("write");
                    s.read_exact(&mut rx).expect("read");
                    n += 1;
                }
                total.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    println!("{}", total.load(Ordering::Relaxed));
}

/// A thread-per-connection echo server on 127.0.0.1:0. Connection threads
/// end when their client closes; the accept thread when `stop` is set and
/// one more connection arrives (or the bench exits).
fn echo_server() -> (String, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if st.load(Ordering::SeqCst) {
                break;
            }
            let Ok(mut s) = c else { continue };
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, stop)
}
