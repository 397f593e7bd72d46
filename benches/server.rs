//! Our servers against Python's `socketserver`, in the same run.
//!
//! ```text
//! cargo bench --bench server
//! ```
//!
//! - Connection churn: client threads connect, echo 64 bytes, half-close,
//!   read EOF and close with `SO_LINGER 0` (no TIME_WAIT pile-up), for a
//!   fixed time. `ForkingTcpServer` vs `ForkingTCPServer` and
//!   `ThreadingTcpServer` vs `ThreadingTCPServer`, in connections/s.
//! - Persistent connections: 50 connections ping-pong 64 bytes for a fixed
//!   time: messages/s, and the server process's CPU seconds (utime + stime
//!   from `/proc/PID/stat`) per 100k messages.
//!
//! Both servers run as separate processes (ours is this binary re-executed
//! with `SOCKETSERVER_BENCH_SERVE=MODE`), listen on 127.0.0.1 port 0 and
//! print the port. Rounds alternate ours/Python; medians are reported.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use socketserver::server::{
    shutdown_on_signals, Forking, Server, SocketServer, Strategy, TcpTransport, Threading,
};
use socketserver::{Request, RequestHandler};

const ROUNDS: usize = 5;
const CHURN_TIME: Duration = Duration::from_secs(2);
/// Client threads for the churn runs (`SERVER_BENCH_CHURN_CLIENTS`).
fn churn_clients() -> usize {
    std::env::var("SERVER_BENCH_CHURN_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

/// Runs only the scenarios whose key contains `SERVER_BENCH_ONLY`
/// (`churn-forking`, `churn-threading`, `persistent`).
fn wanted(key: &str) -> bool {
    std::env::var("SERVER_BENCH_ONLY").map_or(true, |f| key.contains(&f))
}
const CHURN_MAX: u64 = 200_000;
const PERSIST_TIME: Duration = Duration::from_secs(2);
const PERSIST_CONNS: usize = 50;
const MSG: [u8; 64] = [b'x'; 64];

struct Echo;

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

const PYTHON: &str = r#"
import socketserver, sys
class H(socketserver.BaseRequestHandler):
    def handle(self):
        r = self.request
        while True:
            d = r.recv(65536)
            if not d:
                break
            r.sendall(d)
base = {"threading": socketserver.ThreadingTCPServer,
        "forking": socketserver.ForkingTCPServer}[sys.argv[1]]
class S(base):
    allow_reuse_address = True
    request_queue_size = 128
    daemon_threads = True
with S(("127.0.0.1", 0), H) as s:
    print(s.server_address[1], flush=True)
    s.serve_forever()
"#;

fn serve_ours<S: Strategy>() -> ! {
    let mut server = SocketServer::<TcpTransport, S>::builder()
        .daemon_threads(true)
        .bind("127.0.0.1:0", || Echo)
        .expect("bind");
    let _signals = shutdown_on_signals(&server.shutdown_handle()).expect("signals");
    println!("{}", server.server_address().port());
    io::stdout().flush().unwrap();
    server.serve_forever().expect("serve");
    server.server_close();
    std::process::exit(0);
}

struct ServerProc {
    child: Child,
    addr: SocketAddr,
}

impl ServerProc {
    fn start(mut cmd: Command) -> ServerProc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("port line");
        ServerProc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn ours(mode: &str) -> ServerProc {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("SOCKETSERVER_BENCH_SERVE", mode);
        ServerProc::start(cmd)
    }

    fn python(mode: &str) -> ServerProc {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", PYTHON, mode]);
        ServerProc::start(cmd)
    }

    /// utime + stime of the server process, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 of the line; `rest` starts at field 3.
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as f64;
        ticks as f64 / hz
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
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

fn one_connection(addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&MSG)?;
    let mut buf = [0u8; 64];
    s.read_exact(&mut buf)?;
    s.shutdown(Shutdown::Write)?;
    let mut rest = [0u8; 1];
    let _ = s.read(&mut rest)?;
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
    Ok(())
}

/// Connections per second over CHURN_TIME.
fn churn(addr: SocketAddr) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..churn_clients())
        .map(|_| {
            let (done, errors) = (done.clone(), errors.clone());
            std::thread::spawn(move || {
                while start.elapsed() < CHURN_TIME && done.load(Ordering::Relaxed) < CHURN_MAX {
                    match one_connection(addr) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!("  ({errors} failed connections)");
    }
    done.load(Ordering::Relaxed) as f64 / secs
}

/// (messages/s, server CPU seconds per 100k messages).
fn persistent(server: &ServerProc) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(PERSIST_CONNS + 1));
    let threads: Vec<_> = (0..PERSIST_CONNS)
        .map(|_| {
            let (stop, count, barrier) = (stop.clone(), count.clone(), barrier.clone());
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 64];
                // Warm up: the server has accepted and answers.
                s.write_all(&MSG).unwrap();
                s.read_exact(&mut buf).unwrap();
                barrier.wait();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(&MSG).unwrap();
                    s.read_exact(&mut buf).unwrap();
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    barrier.wait();
    let cpu0 = server.cpu_seconds();
    let start = Instant::now();
    std::thread::sleep(PERSIST_TIME);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds() - cpu0;
    let msgs = count.load(Ordering::Relaxed) as f64;
    (msgs / secs, cpu / msgs * 100_000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Row {
    name: String,
    ours: f64,
    python: f64,
    higher_is_better: bool,
    goal: &'static str,
}

fn churn_row(mode: &str, name: &str, goal: &'static str) -> Row {
    let (mut ours, mut python) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let o = ServerProc::ours(mode);
        let a = churn(o.addr);
        drop(o);
        let p = ServerProc::python(mode);
        let b = churn(p.addr);
        drop(p);
        eprintln!("  churn {mode} round {round}: ours {a:.0}/s, python {b:.0}/s");
        ours.push(a);
        python.push(b);
    }
    Row {
        name: name.to_string(),
        ours: median(ours),
        python: median(python),
        higher_is_better: true,
        goal,
    }
}

fn persistent_rows(rows: &mut Vec<Row>) {
    let (mut rate_o, mut rate_p, mut cpu_o, mut cpu_p) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let o = ServerProc::ours("threading");
        let (r1, c1) = persistent(&o);
        drop(o);
        let p = ServerProc::python("threading");
        let (r2, c2) = persistent(&p);
        drop(p);
        eprintln!(
            "  persistent round {round}: ours {r1:.0} msg/s {c1:.2} cpu-s/100k, python {r2:.0} msg/s {c2:.2} cpu-s/100k"
        );
        rate_o.push(r1);
        rate_p.push(r2);
        cpu_o.push(c1);
        cpu_p.push(c2);
    }
    rows.push(Row {
        name: format!("persistent {PERSIST_CONNS} conns, 64 B ping-pong (msg/s), threading"),
        ours: median(rate_o),
        python: median(rate_p),
        higher_is_better: true,
        goal: "",
    });
    rows.push(Row {
        name: "server CPU seconds per 100k messages, threading".to_string(),
        ours: median(cpu_o),
        python: median(cpu_p),
        higher_is_better: false,
        goal: "",
    });
}

fn main() {
    match std::env::var("SOCKETSERVER_BENCH_SERVE").as_deref() {
        Ok("threading") => serve_ours::<Threading>(),
        Ok("forking") => serve_ours::<Forking>(),
        _ => {}
    }
    // `cargo bench` passes --bench; `cargo test --benches` does not run us.
    if !std::env::args().any(|a| a == "--bench") {
        println!("run with: cargo bench --bench server");
        return;
    }
    let mut rows = Vec::new();
    if wanted("churn-forking") {
        rows.push(churn_row(
            "forking",
            "churn: ForkingTcpServer vs ForkingTCPServer (conn/s)",
            ">= 4x",
        ));
    }
    if wanted("churn-threading") {
        rows.push(churn_row(
            "threading",
            "churn: ThreadingTcpServer vs ThreadingTCPServer (conn/s)",
            ">= 2.5x",
        ));
    }
    if wanted("persistent") {
        persistent_rows(&mut rows);
    }
    println!();
    println!("| benchmark (median of {ROUNDS}) | ours | Python | ratio | goal |");
    println!("|---|---:|---:|---:|---|");
    for r in rows {
        let ratio = if r.higher_is_better {
            r.ours / r.python
        } else {
            r.python / r.ours
        };
        println!(
            "| {} | {:.2} | {:.2} | {:.2}x | {} |",
            r.name, r.ours, r.python, ratio, r.goal
        );
    }
    println!("\nratio = how many times better ours is (higher rate, or less CPU).");
}
