//! Production strategies against their peers, in the same run.
//!
//! ```sh
//! cargo bench --bench production
//! ```
//!
//! Every server under test runs in a child process (this binary,
//! re-executed with `BENCH_ROLE=<server>`), so its CPU time and RSS are
//! read from `/proc/<pid>` without counting the load generator. Servers
//! listen on 127.0.0.1 only; every load loop is bounded by a count.
//!
//! 1. Persistent echo: server CPU per message, `AsyncTcpServer` vs a bare
//!    tokio echo server written below (goal: ratio ≤ 1.1).
//! 2. RSS of 10,000 idle connections under `AsyncTcpServer` (goal ≤ 30 MB),
//!    with the bare tokio server's RSS for reference.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use socketserver::server::{raise_fd_limit, AsyncRequestHandler, AsyncTcpServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ROUNDS: usize = 5;
const ECHO_CONNS: usize = 32;
const ECHO_MSGS_PER_CONN: usize = 2_000;
const MSG: usize = 64;
const IDLE_CONNS: usize = 10_000;

// ---------------------------------------------------------------- servers

struct Echo;

impl AsyncRequestHandler for Echo {
    async fn handle(&self, mut s: TcpStream, _: SocketAddr) -> std::io::Result<()> {
        echo_loop(&mut s).await
    }
}

/// The echo loop both servers run. The 4 KiB buffer exists only while
/// there is data to move: an idle connection waits in `readable()` holding
/// no buffer, which is what lets 10,000 idle connections stay small.
async fn echo_loop(s: &mut TcpStream) -> std::io::Result<()> {
    loop {
        s.readable().await?;
        let mut buf = vec![0u8; 4096];
        let n = match s.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        s.write_all(&buf[..n]).await?;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Stops the child server when the parent closes stdin.
fn on_stdin_eof(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        f();
    });
}

fn serve_ours() {
    let mut server = AsyncTcpServer::bind("127.0.0.1:0", Echo).expect("bind");
    server.set_max_connections(IDLE_CONNS + 1_000);
    println!("{}", server.local_addr().expect("addr").port());
    let stop = server.shutdown_handle();
    on_stdin_eof(move || stop.shutdown());
    runtime().block_on(server.serve()).expect("serve");
}

fn serve_bare_tokio() {
    let rt = runtime();
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("{}", l.local_addr().expect("addr").port());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        on_stdin_eof(move || {
            let _ = tx.send(());
        });
        loop {
            tokio::select! {
                _ = &mut rx => break,
                r = l.accept() => {
                    if let Ok((mut s, _)) = r {
                        tokio::spawn(async move { let _ = echo_loop(&mut s).await; });
                    }
                }
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
}

// ---------------------------------------------------------------- harness

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(role: &str) -> Server {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .env("BENCH_ROLE", role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let mut port = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut port)
            .expect("port");
        let addr = format!("127.0.0.1:{}", port.trim()).parse().expect("port");
        Server { child, addr }
    }

    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("stat");
        let rest = &stat[stat.rfind(')').expect("stat") + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 =
            f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
        ticks as f64 / 100.0
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

// ---------------------------------------------------------------- loads

/// Ping-pong `ECHO_MSGS_PER_CONN` messages on each of `ECHO_CONNS`
/// connections; returns (server CPU µs per message, messages per second).
fn persistent_echo(rt: &tokio::runtime::Runtime, server: &Server) -> (f64, f64) {
    let addr = server.addr;
    let cpu0 = server.cpu_secs();
    let t0 = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..ECHO_CONNS {
            tasks.spawn(async move {
                let mut s = TcpStream::connect(addr).await.expect("connect");
                s.set_nodelay(true).expect("nodelay");
                let msg = [7u8; MSG];
                let mut back = [0u8; MSG];
                for _ in 0..ECHO_MSGS_PER_CONN {
                    s.write_all(&msg).await.expect("write");
                    s.read_exact(&mut back).await.expect("read");
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("client");
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    // Let the server notice the closes so their cost is counted too.
    std::thread::sleep(Duration::from_millis(100));
    let msgs = (ECHO_CONNS * ECHO_MSGS_PER_CONN) as f64;
    ((server.cpu_secs() - cpu0) * 1e6 / msgs, msgs / wall)
}

/// Opens `IDLE_CONNS` connections, one round trip each, and returns the
/// server's RSS in KiB while they are all open (minus its RSS before).
fn idle_rss(rt: &tokio::runtime::Runtime, server: &Server) -> (u64, u64) {
    let before = server.rss_kib();
    let addr = server.addr;
    let conns = rt.block_on(async {
        let mut conns = Vec::with_capacity(IDLE_CONNS);
        while conns.len() < IDLE_CONNS {
            let mut batch = tokio::task::JoinSet::new();
            for _ in 0..(IDLE_CONNS - conns.len()).min(500) {
                batch.spawn(TcpStream::connect(addr));
            }
            while let Some(c) = batch.join_next().await {
                conns.push(c.expect("join").expect("connect"));
            }
        }
        for c in conns.iter_mut() {
            c.write_all(b"x").await.expect("write");
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.expect("read");
        }
        conns
    });
    std::thread::sleep(Duration::from_millis(200));
    let during = server.rss_kib();
    drop(conns);
    (before, during)
}

fn main() {
    match std::env::var("BENCH_ROLE").as_deref() {
        Ok("ours") => return serve_ours(),
        Ok("tokio") => return serve_bare_tokio(),
        _ => {}
    }
    raise_fd_limit(IDLE_CONNS as u64 + 500).expect("RLIMIT_NOFILE");
    let rt = runtime();

    println!("persistent echo: {ECHO_CONNS} connections x {ECHO_MSGS_PER_CONN} x {MSG}-byte ping-pong, {ROUNDS} rounds (medians)");
    let (mut ours_cpu, mut ours_rate, mut peer_cpu, mut peer_rate) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        for (role, cpu, rate) in [
            ("ours", &mut ours_cpu, &mut ours_rate),
            ("tokio", &mut peer_cpu, &mut peer_rate),
        ] {
            let server = Server::start(role);
            let (c, r) = persistent_echo(&rt, &server);
            cpu.push(c);
            rate.push(r);
        }
    }
    let (oc, pc) = (median(&mut ours_cpu), median(&mut peer_cpu));
    let (or, pr) = (median(&mut ours_rate), median(&mut peer_rate));
    println!("| server | server CPU µs/msg | msgs/s |");
    println!("|---|---:|---:|");
    println!("| AsyncTcpServer | {oc:.2} | {or:.0} |");
    println!("| bare tokio echo | {pc:.2} | {pr:.0} |");
    println!("| ratio ours/tokio (goal ≤ 1.1) | {:.2}× | |", oc / pc);
    println!();

    println!("idle connections: {IDLE_CONNS} open at once, server RSS (median of 3)");
    let (mut ours_rss, mut peer_rss) = (vec![], vec![]);
    for _ in 0..3 {
        for (role, v) in [("ours", &mut ours_rss), ("tokio", &mut peer_rss)] {
            let server = Server::start(role);
            let (_before, during) = idle_rss(&rt, &server);
            v.push(during as f64 / 1024.0);
        }
    }
    let (om, pm) = (median(&mut ours_rss), median(&mut peer_rss));
    println!("| server | RSS with {IDLE_CONNS} idle connections |");
    println!("|---|---:|");
    println!("| AsyncTcpServer (goal ≤ 30 MB) | {om:.1} MiB |");
    println!("| bare tokio echo | {pm:.1} MiB |");
}
