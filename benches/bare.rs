//! Our servers against minimal hand-written ones, in the same run.
//!
//! ```sh
//! cargo bench --bench bare                         # every table
//! BARE_BENCH_ONLY=churn cargo bench --bench bare   # rows whose name contains "churn"
//! BARE_BENCH_ROUNDS=3 BARE_BENCH_SECS=1 cargo bench --bench bare   # quicker, noisier
//! ```
//!
//! The bare servers are one C file (`benches/bare/bare.c`, compiled here
//! with the system's `cc -O2`), each named by its command line:
//!
//! - `fork`: a child process per connection;
//! - `prefork N`: N pre-forked workers blocking in `accept`;
//! - `thread`: a detached thread per connection;
//! - `epoll`: one thread, one epoll instance (listener and connections);
//! - `epoll N` (N = cores): N threads, each with its own epoll instance
//!   holding the shared listener (`EPOLLEXCLUSIVE`, so a new connection
//!   wakes one thread) and the connections that thread accepted.
//!
//! They echo and nothing else: no logging, no timeouts, no limits. Ours is
//! the echo example (`examples/echo.rs`, release build, default logging)
//! in the matching `--mode`. For the async strategy two like-with-like
//! pairs are measured everywhere: the default (`async`, one runtime thread
//! per core) against `epoll N` with as many threads, and `async --workers 1`
//! (one runtime thread) against the single-threaded `epoll`; churn and
//! persistent also keep the default against the single-threaded `epoll`.
//!
//! Ours and bare are driven by the same `loadtest` client (release build), rounds
//! alternating ours / bare; each figure is the median of the rounds, and
//! the ratio is ours / bare (for CPU per message, p99 and RSS: bare /
//! ours, so above 1 is always better for us). System calls per connection
//! come from `strace -f -c` over a separate short churn run (skipped when
//! strace is missing).
//!
//! Rows, in print order (each with its goal; "yes" when met):
//!
//! - churn: connect, one 64 B echo, close, 4 client connections at a time;
//!   connections per second.
//! - persistent 50 conns: 50 open connections echoing 64 B back to back;
//!   messages per second, and server CPU (utime + stime of the server
//!   process over the run) per message.
//! - scaling, at N = 10, 100, 1,000, 5,000 concurrent connections: each
//!   round starts a fresh server and runs the load twice. First the
//!   start-up run (`-d SECS`, no warm-up: the burst of N connects is inside
//!   the measured window), printed as "throughput incl. start-up" and
//!   "p99 incl. start-up". Then the steady run on the same server
//!   (`--warmup 1s -d SECS`: all N connections are open before measuring
//!   starts), printed as "throughput", "p99" and "RSS per connection"
//!   (RSS in the middle of the measured window minus RSS of the fresh
//!   server, over N). Goal: within 1.2× of bare, for every figure.
//! - checks: client timeouts of the async runs at 5,000 connections, both
//!   runs of every round (the warm-up's errors are not counted by
//!   `loadtest`, so the start-up run is the one that sees the burst).
//! - system calls per connection: forking, threading, prefork and both
//!   async pairs, ours and bare.
//!
//! The goals the process layer measures (`Pool.map` over 1,000,000 items
//! ≥ 20× Python in every run of five, `Pipe` one-way 64 B ≥ 1.5 M msg/s)
//! are printed at the end from `cargo bench --bench pool` and
//! `cargo bench --bench process` (filter names "pool map", "pipe").
//!
//! Every server listens on 127.0.0.1 port 0; every load run is bounded by
//! `--duration`; every server is ended by pid when its row is done.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rounds() -> usize {
    env_or("BARE_BENCH_ROUNDS", 5)
}

fn secs() -> u64 {
    env_or("BARE_BENCH_SECS", 2)
}

/// Cores: the default number of async runtime threads, and the thread
/// count of the bare `epoll N` server it is compared with.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The bare multi-threaded epoll server with one thread per core.
fn epoll_cores() -> String {
    format!("epoll {}", cores())
}

fn wanted(name: &str) -> bool {
    std::env::var("BARE_BENCH_ONLY").map_or(true, |f| name.contains(&f))
}

/// The binaries this bench runs.
struct Bins {
    echo: PathBuf,
    loadtest: PathBuf,
    bare: PathBuf,
}

fn build() -> Bins {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for args in [
        &["build", "--release", "--example", "echo"][..],
        &["build", "--release", "-p", "loadtest"][..],
    ] {
        let ok = Command::new(&cargo)
            .args(args)
            .current_dir(root)
            .status()
            .expect("run cargo");
        assert!(ok.success(), "cargo {args:?} failed");
    }
    let release = root.join("target").join("release");
    let bare = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bare-echo");
    let ok = Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&bare)
        .arg(root.join("benches/bare/bare.c"))
        .status()
        .expect("run cc");
    assert!(ok.success(), "cc benches/bare/bare.c failed");
    Bins {
        echo: release.join("examples").join("echo"),
        loadtest: release.join("loadtest"),
        bare,
    }
}

/// A running server: ended by pid (SIGTERM, then SIGKILL) when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if out.read_line(&mut line).unwrap() == 0 {
                panic!("server exited before it listened");
            }
            if let Some(rest) = line.split("tcp://").nth(1) {
                let a = rest.split_whitespace().next().unwrap();
                break a.parse().expect("listening address");
            }
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        Server { child, addr }
    }

    /// The echo example; `mode` is the `--mode` value, optionally
    /// followed by more flags (`prefork --workers 4`).
    fn ours(bins: &Bins, mode: &str) -> Server {
        let mut cmd = Command::new(&bins.echo);
        cmd.args(echo_args(mode));
        Server::start(cmd)
    }

    fn bare(bins: &Bins, mode: &str) -> Server {
        let mut cmd = Command::new(&bins.bare);
        cmd.args(mode.split_whitespace());
        Server::start(cmd)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// utime + stime in seconds (this process only).
    fn cpu_secs(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    fn rss_kib(&self) -> f64 {
        rss_of(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `loadtest --json` run against `addr`: `secs()` measured, no
/// warm-up.
fn load(bins: &Bins, addr: SocketAddr, extra: &[&str]) -> Value {
    load_after(bins, addr, Duration::ZERO, extra)
}

/// One `loadtest --json` run against `addr`: `warmup` unmeasured, then
/// `secs()` measured.
fn load_after(bins: &Bins, addr: SocketAddr, warmup: Duration, extra: &[&str]) -> Value {
    let d = format!("{}s", secs());
    let w = format!("{}ms", warmup.as_millis());
    let out = Command::new(&bins.loadtest)
        .arg(addr.to_string())
        .args(["--json", "-d", &d, "--warmup", &w])
        .args(extra)
        .stderr(Stdio::null())
        .output()
        .expect("run loadtest");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("loadtest JSON: {e}: {text}"))
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for k in path {
        v = &v[*k];
    }
    v.as_f64().unwrap_or(0.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Row {
    /// The table section the row is printed under.
    section: &'static str,
    name: String,
    ours: f64,
    bare: f64,
    /// Ours relative to bare, "higher is better" for every row.
    ratio: f64,
    goal: f64,
    unit: &'static str,
}

fn print(rows: &[Row]) {
    println!(
        "{:<64} {:>12} {:>12} {:>8} {:>7}  met?",
        "workload", "ours", "bare", "ratio", "goal"
    );
    let mut section = "";
    for r in rows {
        if r.section != section {
            section = r.section;
            println!("-- {section}");
        }
        println!(
            "{:<64} {:>12.1} {:>12.1} {:>7.2}x {:>6.2}x  {}  ({})",
            r.name,
            r.ours,
            r.bare,
            r.ratio,
            r.goal,
            if r.ratio >= r.goal { "yes" } else { "NO" },
            r.unit
        );
    }
}

/// Alternating rounds of `measure` against ours and bare; medians.
fn compare(
    bins: &Bins,
    ours_mode: &str,
    bare_mode: &str,
    measure: impl Fn(&Server) -> f64,
) -> (f64, f64) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds() {
        a.push(measure(&Server::ours(bins, ours_mode)));
        b.push(measure(&Server::bare(bins, bare_mode)));
    }
    // Each round's ratio, so the spread is visible next to the median.
    let ratios: Vec<String> = a
        .iter()
        .zip(&b)
        .map(|(o, b)| format!("{:.2}", o / b))
        .collect();
    println!(
        "  {ours_mode} vs {bare_mode}: round ratios {}",
        ratios.join(" ")
    );
    (median(a), median(b))
}

/// The echo example's arguments for `mode` ("prefork --workers 4": the
/// mode, then extra flags).
fn echo_args(mode: &str) -> Vec<&str> {
    let mut words = mode.split_whitespace();
    let mut args = vec!["--mode", words.next().unwrap_or("threading")];
    args.extend(["--listen", "127.0.0.1:0"]);
    args.extend(words);
    args
}

fn churn_rows(bins: &Bins, rows: &mut Vec<Row>) {
    let churn = |s: &Server| {
        let v = load(bins, s.addr, &["--churn", "-c", "4"]);
        num(&v, &["connections_per_s"])
    };
    let epoll_n = epoll_cores();
    for (ours, bare, goal) in [
        ("forking", "fork", 0.8),
        ("threading", "thread", 1.0),
        // Like with like: a fixed pool of 4 workers against bare's 4.
        ("prefork --workers 4", "prefork 4", 1.0),
        // The same without the example's idle timeout (its two
        // `setsockopt` per connection; bare has no timeouts).
        ("prefork --workers 4 --idle-timeout 0s", "prefork 4", 1.0),
        // What a user gets by default: the managed pool (2–8 idle
        // spares, so about 6 workers for 4 clients).
        ("prefork", "prefork 4", 1.0),
        // Like with like: one runtime thread per core against as many
        // epoll threads, and one against one.
        ("async", epoll_n.as_str(), 0.9),
        ("async --workers 1", "epoll", 0.9),
        // The default against the single-threaded loop (the earlier row).
        ("async", "epoll", 0.9),
    ] {
        let name = format!("churn, {ours} vs {bare}");
        if !wanted(&name) {
            continue;
        }
        let (o, b) = compare(bins, ours, bare, churn);
        rows.push(Row {
            section: "churn (connect, 64 B echo, close; 4 client connections)",
            name,
            ours: o,
            bare: b,
            ratio: o / b,
            goal,
            unit: "conn/s",
        });
    }
}

fn persistent_rows(bins: &Bins, rows: &mut Vec<Row>) {
    let epoll_n = epoll_cores();
    for (ours, bare) in [
        ("async", epoll_n.as_str()),
        ("async --workers 1", "epoll"),
        ("async", "epoll"),
        ("threading", "thread"),
    ] {
        let name = format!("persistent 50 conns, {ours} vs {bare}");
        if !wanted(&name) {
            continue;
        }
        let (mut rate, mut cpu) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for _ in 0..rounds() {
            for (is_ours, s) in [
                (true, Server::ours(bins, ours)),
                (false, Server::bare(bins, bare)),
            ] {
                let before = s.cpu_secs();
                let v = load(bins, s.addr, &["-c", "50"]);
                let msgs = num(&v, &["requests"]);
                let us_per_msg = (s.cpu_secs() - before) * 1e6 / msgs.max(1.0);
                let (r, c) = if is_ours {
                    (&mut rate.0, &mut cpu.0)
                } else {
                    (&mut rate.1, &mut cpu.1)
                };
                r.push(num(&v, &["rps"]));
                c.push(us_per_msg);
            }
        }
        let (ro, rb) = (median(rate.0), median(rate.1));
        let (co, cb) = (median(cpu.0), median(cpu.1));
        let section = "persistent (50 open connections, 64 B echoes)";
        rows.push(Row {
            section,
            name: name.clone(),
            ours: ro,
            bare: rb,
            ratio: ro / rb,
            goal: 0.9,
            unit: "msg/s",
        });
        rows.push(Row {
            section,
            name: format!("{name}, server CPU"),
            ours: co,
            bare: cb,
            ratio: cb / co,
            goal: 0.9,
            unit: "µs per message; ratio bare/ours",
        });
    }
}

/// A goal that is a count, not a ratio (e.g. "0 timeouts").
struct Check {
    name: String,
    value: String,
    goal: &'static str,
    met: bool,
}

fn print_checks(checks: &[Check]) {
    for c in checks {
        println!(
            "{:<64} {:>14} {:>12}  {}",
            c.name,
            c.value,
            c.goal,
            if c.met { "yes" } else { "NO" }
        );
    }
}

/// VmRSS of `pid` in KiB (0 when it cannot be read).
fn rss_of(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// The warm-up of the steady scaling run: long enough for 5,000 connects.
const WARMUP: Duration = Duration::from_secs(1);

/// Throughput, p99 and RSS per connection at N concurrent connections:
/// the steady state (after a warm-up) and, as their own rows, the run
/// that includes the start-up burst (see the module docs).
fn scaling_rows(bins: &Bins, rows: &mut Vec<Row>, checks: &mut Vec<Check>) {
    let epoll_n = epoll_cores();
    for n in [10usize, 100, 1000, 5000] {
        for (ours, bare) in [
            ("threading", "thread"),
            ("async", epoll_n.as_str()),
            ("async --workers 1", "epoll"),
        ] {
            let name = format!("{n} conns, {ours} vs {bare}");
            if !wanted(&name) {
                continue;
            }
            let c = n.to_string();
            // Per side (ours, bare): steady throughput, p99, RSS per
            // connection, then start-up throughput, p99.
            let mut m: [[Vec<f64>; 5]; 2] = Default::default();
            let (mut timeouts, mut errors_ours) = (0.0, 0.0);
            for _ in 0..rounds() {
                for (k, s) in [(0, Server::ours(bins, ours)), (1, Server::bare(bins, bare))] {
                    let side = if k == 0 { "ours" } else { "bare" };
                    let idle = s.rss_kib();
                    let start = load(bins, s.addr, &["-c", &c]);
                    // Sample RSS in the middle of the measured window.
                    let pid = s.pid();
                    let sampler = std::thread::spawn(move || {
                        std::thread::sleep(WARMUP + Duration::from_millis(secs() * 500));
                        rss_of(pid)
                    });
                    let steady = load_after(bins, s.addr, WARMUP, &["-c", &c]);
                    let loaded = sampler.join().unwrap();
                    m[k][0].push(num(&steady, &["rps"]));
                    m[k][1].push(num(&steady, &["latency_us", "p99"]));
                    m[k][2].push((loaded - idle).max(0.0) / n as f64);
                    m[k][3].push(num(&start, &["rps"]));
                    m[k][4].push(num(&start, &["latency_us", "p99"]));
                    for (run, v) in [("start-up", &start), ("steady", &steady)] {
                        let errors = num(v, &["errors", "total"]);
                        if k == 0 {
                            timeouts += num(v, &["errors", "timeout"]);
                            errors_ours += errors;
                        }
                        if errors > 0.0 {
                            println!("  {name}: {side} had {errors} errors ({run} run)");
                        }
                    }
                }
            }
            // The p99 cells move most between rounds: show each round's
            // ratio (bare / ours) next to the median, steady and start-up.
            for (what, i) in [("p99", 1), ("p99 incl. start-up", 4)] {
                let ratios: Vec<String> = m[0][i]
                    .iter()
                    .zip(&m[1][i])
                    .map(|(o, b)| format!("{:.2}", b / o))
                    .collect();
                println!("  {name}: {what} round ratios {}", ratios.join(" "));
            }
            let [o, b] = m.map(|side| side.map(median));
            if ours.starts_with("async") && n == 5000 {
                checks.push(Check {
                    name: format!("{name}: client timeouts (all runs)"),
                    value: format!("{timeouts} ({errors_ours} errors)"),
                    goal: "0 timeouts",
                    met: timeouts == 0.0,
                });
            }
            let section = "scaling (N connections echoing back to back; goal: within 1.2x of bare)";
            // Within 1.2x of bare: ratio >= 1/1.2 for every figure.
            let goal = 1.0 / 1.2;
            let mut row = |what: &str, ours: f64, bare: f64, ratio: f64, unit| {
                rows.push(Row {
                    section,
                    name: format!("{name}: {what}"),
                    ours,
                    bare,
                    ratio,
                    goal,
                    unit,
                });
            };
            row("throughput", o[0], b[0], o[0] / b[0], "msg/s");
            row("p99", o[1], b[1], b[1] / o[1], "µs; ratio bare/ours");
            let rss = if o[2] > 0.0 { b[2] / o[2] } else { 1.0 };
            row(
                "RSS per connection",
                o[2],
                b[2],
                rss,
                "KiB; ratio bare/ours",
            );
            row(
                "throughput incl. start-up",
                o[3],
                b[3],
                o[3] / b[3],
                "msg/s, no warm-up",
            );
            row(
                "p99 incl. start-up",
                o[4],
                b[4],
                b[4] / o[4],
                "µs, no warm-up; ratio bare/ours",
            );
        }
    }
}

/// System calls per connection under `strace -f -c`, ours and bare.
fn syscall_rows(bins: &Bins) {
    if Command::new("strace").arg("-V").output().is_err() {
        println!("system calls per connection: skipped (strace is not installed)");
        return;
    }
    println!("system calls per connection (strace -f -c over a 1 s churn run, 2 client connections at a time):");
    let epoll_n = epoll_cores();
    for (ours, bare) in [
        ("forking", "fork"),
        ("threading", "thread"),
        ("prefork --workers 4", "prefork 4"),
        ("async", epoll_n.as_str()),
        ("async --workers 1", "epoll"),
    ] {
        let name = format!("syscalls, {ours} vs {bare}");
        if !wanted(&name) {
            continue;
        }
        let mut per_conn = Vec::new();
        for (bin, args) in [
            (&bins.echo, echo_args(ours)),
            (&bins.bare, bare.split_whitespace().collect()),
        ] {
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("strace.txt");
            let mut cmd = Command::new("strace");
            cmd.args(["-f", "-c", "-o"]).arg(&out).arg(bin).args(&args);
            let s = Server::start(cmd);
            let v = Command::new(&bins.loadtest)
                .arg(s.addr.to_string())
                .args(["--json", "-d", "1s", "--churn", "-c", "2"])
                .stderr(Stdio::null())
                .output()
                .expect("run loadtest");
            let v: Value = serde_json::from_str(String::from_utf8_lossy(&v.stdout).trim())
                .expect("loadtest JSON");
            // End the traced server (strace's child) first, so strace
            // writes its summary and exits with it.
            let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", s.pid()))
                .unwrap_or_default();
            for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            drop(s);
            let conns = num(&v, &["connections_opened"]).max(1.0);
            let calls = std::fs::read_to_string(&out)
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find(|l| l.trim_end().ends_with("total"))
                        // % time, seconds, usecs/call, calls, errors, "total"
                        .and_then(|l| l.split_whitespace().nth(3))
                        .and_then(|c| c.parse::<f64>().ok())
                })
                .unwrap_or(f64::NAN);
            per_conn.push(calls / conns);
        }
        println!(
            "  {ours:<20} {:>6.1}   {bare:<10} {:>6.1}",
            per_conn[0], per_conn[1]
        );
    }
}

/// The goals measured by the process-layer benches (`pool`, `process`):
/// run them and print their goal rows here, so this bench shows every
/// goal of the issue. `BARE_BENCH_ONLY` names: "pool map", "pipe".
fn delegated_rows() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, bench, keys) in [
        ("pool map", "pool", &["Pool.map"][..]),
        ("pipe", "process", &["one-way 64 B"][..]),
    ] {
        if !wanted(name) {
            continue;
        }
        let out = Command::new(&cargo)
            .args(["bench", "--bench", bench])
            .current_dir(root)
            .stderr(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                println!("from `cargo bench --bench {bench}`:");
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    if keys.iter().any(|k| line.contains(k)) {
                        println!("  {line}");
                    }
                }
            }
            _ => println!("`cargo bench --bench {bench}` failed; its goal rows are missing"),
        }
    }
}

fn main() {
    let bins = build();
    println!(
        "ours (examples/echo.rs) vs bare C servers (benches/bare/bare.c), loadtest client, {} s per run, median of {} alternating rounds",
        secs(),
        rounds()
    );
    let mut rows = Vec::new();
    let mut checks = Vec::new();
    churn_rows(&bins, &mut rows);
    persistent_rows(&bins, &mut rows);
    scaling_rows(&bins, &mut rows, &mut checks);
    print(&rows);
    if !checks.is_empty() {
        println!("-- checks");
    }
    print_checks(&checks);
    syscall_rows(&bins);
    delegated_rows();
}
