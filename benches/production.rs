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
//! 3. Connection churn (connect, one 4-byte round trip, close):
//!    connections per second of `PreforkTcpServer` vs the forking and
//!    threading strategies and Python's `socketserver.ForkingTCPServer` (goal: prefork
//!    ≥ 10× Python forking).
//! 4. Prefork crash replacement: a worker is SIGKILLed; time until the
//!    pool is back to full strength without it (goal: within 100 ms).

#[cfg(not(feature = "async"))]
fn main() {
    println!("the production bench needs the `async` feature");
}

#[cfg(feature = "async")]
fn main() {
    imp::main();
}

#[cfg(feature = "async")]
mod imp {
    use std::io::{BufRead, BufReader, Read};
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use socketserver::server::{
        raise_fd_limit, shutdown_on_signals, AsyncRequestHandler, AsyncTcpServer, ForkingTcpServer,
        PreforkTcpServer, Server as _, ThreadingTcpServer,
    };
    use socketserver::{Request, RequestHandler};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const ROUNDS: usize = 5;
    const ECHO_CONNS: usize = 32;
    const ECHO_MSGS_PER_CONN: usize = 2_000;
    const MSG: usize = 64;
    const IDLE_CONNS: usize = 10_000;
    const CHURN_THREADS: usize = 4;
    const CHURN_CONNS: usize = 4_000;
    const CHURN_CONNS_PYTHON: usize = 1_000;
    const CHURN_ROUNDS: usize = 3;

    /// Python's ForkingTCPServer echoing one message per connection; stops
    /// when stdin closes.
    const PY_FORKING: &str = r#"
import socketserver, sys, threading
class H(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            d = self.request.recv(4096)
            if not d:
                return
            self.request.sendall(d)
class S(socketserver.ForkingTCPServer):
    allow_reuse_address = True
    request_queue_size = 1024
    max_children = 64
s = S(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
t = threading.Thread(target=s.serve_forever, daemon=True)
t.start()
sys.stdin.read()
s.shutdown()
s.server_close()
"#;

    /// The blocking handler the prefork and threading servers run.
    struct SyncEcho;

    impl RequestHandler for SyncEcho {
        fn handle(&mut self, req: &mut Request) -> std::io::Result<()> {
            let (mut r, mut w) = req.split();
            std::io::copy(&mut r, &mut w)?;
            Ok(())
        }
    }

    fn serve_prefork() {
        let mut server = PreforkTcpServer::builder()
            .min_spare(8)
            .max_spare(16)
            .max_workers(32)
            .start_workers(8)
            .backlog(1024)
            .bind("127.0.0.1:0", || SyncEcho)
            .expect("bind");
        println!("{}", server.server_address().port());
        // SIGTERM stops it; no extra thread, so workers fork from a
        // single-threaded process.
        let _signals = shutdown_on_signals(&server.shutdown_handle()).expect("signals");
        server.serve_forever().expect("serve");
        server.server_close();
    }

    fn serve_forking() {
        let mut server = ForkingTcpServer::builder()
            .allow_reuse_address(true)
            .backlog(1024)
            .max_children(64)
            .bind("127.0.0.1:0", || SyncEcho)
            .expect("bind");
        println!("{}", server.server_address().port());
        let _signals = shutdown_on_signals(&server.shutdown_handle()).expect("signals");
        server.serve_forever().expect("serve");
        server.server_close();
    }

    fn serve_threading() {
        let mut server = ThreadingTcpServer::builder()
            .allow_reuse_address(true)
            .backlog(1024)
            .bind("127.0.0.1:0", || SyncEcho)
            .expect("bind");
        println!("{}", server.server_address().port());
        let stop = server.shutdown_handle();
        on_stdin_eof(move || stop.shutdown());
        server.serve_forever().expect("serve");
        server.server_close();
    }

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

    /// Stops the child server when the parent closes stdin.
    fn on_stdin_eof(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            f();
        });
    }

    fn serve_ours() {
        let mut server = AsyncTcpServer::builder()
            .max_connections(IDLE_CONNS + 1_000)
            .backlog(4096)
            .bind_async("127.0.0.1:0", Echo)
            .expect("bind");
        println!("{}", server.server_address().port());
        let stop = server.shutdown_handle();
        on_stdin_eof(move || stop.shutdown());
        server.serve_forever().expect("serve");
        server.server_close();
    }

    /// The bare tokio peer, built like the async strategy (and like bare
    /// `epoll N` in `benches/bare.rs`): one current-thread runtime per
    /// core, each accepting from its own copy of one listening socket and
    /// running the connections it accepted. (The crate does not enable
    /// tokio's multi-thread scheduler, and neither does this bench: a
    /// dev-dependency feature would be linked into the examples too.)
    fn serve_bare_tokio() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        println!("{}", listener.local_addr().expect("addr").port());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stops: Vec<_> = (0..threads)
            .map(|_| {
                let l = listener.try_clone().expect("dup listener");
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                (tx, std::thread::spawn(move || accept_until(l, rx)))
            })
            .collect();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        on_stdin_eof(move || {
            let _ = done_tx.send(());
        });
        let _ = done_rx.recv();
        for (tx, thread) in stops {
            let _ = tx.send(());
            let _ = thread.join();
        }
    }

    /// One runtime thread of the bare tokio peer.
    fn accept_until(l: std::net::TcpListener, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let l = TcpListener::from_std(l).expect("tokio listener");
            loop {
                tokio::select! {
                    _ = &mut stop => break,
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
            let mut cmd = if role == "py-forking" {
                let mut c = Command::new("python3");
                c.args(["-c", PY_FORKING]);
                c
            } else {
                let mut c = Command::new(std::env::current_exe().expect("exe"));
                c.env("BENCH_ROLE", role);
                c
            };
            let mut child = cmd
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
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
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

    /// `count` connections from `CHURN_THREADS` threads, each: connect,
    /// send 4 bytes, read them back, close. Returns connections per second.
    fn churn(server: &Server, count: usize) -> f64 {
        use std::io::Write;
        let addr = server.addr;
        let t0 = Instant::now();
        let threads: Vec<_> = (0..CHURN_THREADS)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..count / CHURN_THREADS {
                        let mut s = std::net::TcpStream::connect(addr).expect("connect");
                        s.set_read_timeout(Some(Duration::from_secs(10)))
                            .expect("timeout");
                        s.write_all(b"ping").expect("write");
                        let mut b = [0u8; 4];
                        s.read_exact(&mut b).expect("read");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client thread");
        }
        (count / CHURN_THREADS * CHURN_THREADS) as f64 / t0.elapsed().as_secs_f64()
    }

    /// The server process's children (its prefork workers).
    fn children(pid: u32) -> Vec<i32> {
        let mut out = Vec::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    kids.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        out
    }

    fn replacement_table() {
        use nix::sys::signal::{kill, Signal};
        const KILLS: usize = 20;
        let server = Server::start("prefork");
        let pid = server.child.id();
        let full = 8;
        let deadline = Instant::now() + Duration::from_secs(10);
        while children(pid).len() < full {
            assert!(
                Instant::now() < deadline,
                "pool never reached {full} workers"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut times = Vec::with_capacity(KILLS);
        for _ in 0..KILLS {
            let victim = children(pid)[0];
            let t0 = Instant::now();
            kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).expect("kill worker");
            loop {
                let now = children(pid);
                if !now.contains(&victim) && now.len() >= full {
                    break;
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "worker never replaced"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            std::thread::sleep(Duration::from_millis(20));
        }
        let max = times.iter().cloned().fold(0.0, f64::max);
        let med = median(&mut times);
        println!("prefork crash replacement: {KILLS} workers SIGKILLed one at a time");
        println!("| median | max | goal |");
        println!("|---:|---:|---|");
        println!("| {med:.2} ms | {max:.2} ms | ≤ 100 ms |");
        println!();
    }

    fn churn_table() {
        println!(
        "connection churn: connect + 4-byte round trip + close, {CHURN_THREADS} client threads, {CHURN_ROUNDS} rounds (medians)"
    );
        let roles = [
            ("PreforkTcpServer", "prefork", CHURN_CONNS),
            ("ForkingTcpServer", "forking", CHURN_CONNS),
            ("ThreadingTcpServer", "threading", CHURN_CONNS),
            ("Python ForkingTCPServer", "py-forking", CHURN_CONNS_PYTHON),
        ];
        let mut results: Vec<Vec<f64>> = vec![Vec::new(); roles.len()];
        for _ in 0..CHURN_ROUNDS {
            for (i, (_, role, count)) in roles.iter().enumerate() {
                let server = Server::start(role);
                // Let the prefork pool reach its starting size.
                std::thread::sleep(Duration::from_millis(200));
                results[i].push(churn(&server, *count));
            }
        }
        let medians: Vec<f64> = results.iter_mut().map(|v| median(v)).collect();
        let py = medians[roles.len() - 1];
        println!("| server | connections/s | vs Python forking |");
        println!("|---|---:|---:|");
        for ((name, _, _), m) in roles.iter().zip(&medians) {
            println!("| {name} | {m:.0} | {:.1}× |", m / py);
        }
        println!("(goal: prefork ≥ 10× Python forking)");
        println!();
    }

    pub fn main() {
        match std::env::var("BENCH_ROLE").as_deref() {
            Ok("ours") => return serve_ours(),
            Ok("tokio") => return serve_bare_tokio(),
            Ok("prefork") => return serve_prefork(),
            Ok("threading") => return serve_threading(),
            Ok("forking") => return serve_forking(),
            _ => {}
        }
        churn_table();
        replacement_table();
        raise_fd_limit(IDLE_CONNS as u64 + 500).expect("RLIMIT_NOFILE");
        // The load client: one thread, the same for every server.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");

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
}
