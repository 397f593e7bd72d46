//! The prefork strategy across real processes: crash replacement,
//! recycling, growth and shrink under load, SIGTTIN/SIGTTOU, hung and
//! stopped workers, a SIGTERM drain of 100 in-flight requests and of
//! the connections queued in the backlog, a parent
//! SIGKILLed mid-request, the descriptors a worker holds, rate-limited
//! fork errors and `process::exit` in a handler.
//!
//! `harness = false`: each test starts the server as a separate process
//! (this binary re-executed with `PREFORK_SERVER=<settings>`), so the
//! server forks from a single-threaded process and its workers can be
//! counted from `/proc/<server>/task/*/children`. All traffic is on
//! 127.0.0.1 and every wait is bounded.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use socketserver::server::{shutdown_on_signals, PreforkTcpServer, Server as _};

mod support;
use socketserver::{Request, RequestHandler};

const T: Duration = Duration::from_secs(10);

/// `pid` answers the worker's pid; `hold` answers `held` and keeps the
/// connection; `hang` never answers; `slow` answers `started`, waits
/// 500 ms, answers `done`. Anything else is echoed.
struct Probe;

impl RequestHandler for Probe {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let mut line = String::new();
        while req.rfile().read_line(&mut line)? > 0 {
            match line.trim() {
                "pid" => writeln!(req.wfile(), "{}", std::process::id())?,
                "hold" => writeln!(req.wfile(), "held")?,
                "hang" => loop {
                    std::thread::sleep(Duration::from_secs(1));
                },
                "exit" => socketserver::process::exit(7),
                "slow" => {
                    writeln!(req.wfile(), "started")?;
                    std::thread::sleep(Duration::from_millis(500));
                    writeln!(req.wfile(), "done")?;
                }
                _ => req.wfile().write_all(line.as_bytes())?,
            }
            line.clear();
        }
        Ok(())
    }
}

/// Settings passed to the server process: `min,max_spare,max_workers,
/// start,max_requests,hung_ms[,flags]`; flags: `log` installs a `tracing`
/// subscriber writing to stderr, `fdcap` leaves the server descriptors for
/// only one worker.
fn server_main(cfg: &str) {
    let (numbers, flags) = match cfg.split_once(';') {
        Some((n, f)) => (n, f),
        None => (cfg, ""),
    };
    if flags.contains("log") {
        tracing_subscriber::fmt()
            .with_writer(io::stderr)
            .with_ansi(false)
            .init();
    }
    let v: Vec<u64> = numbers
        .split(',')
        .map(|x| x.parse().expect("cfg"))
        .collect();
    let mut b = PreforkTcpServer::builder();
    b.min_spare(v[0] as usize)
        .max_spare(v[1] as usize)
        .max_workers(v[2] as usize)
        .start_workers(v[3] as usize)
        .max_requests(v[4], 0)
        .drain_timeout(Duration::from_secs(20));
    if v[5] > 0 {
        b.hung_timeout(Some(Duration::from_millis(v[5])));
    }
    if flags.contains("ctimeout") {
        b.connection_timeout(CONNECTION_TIMEOUT);
    }
    if flags.contains("health") {
        b.health("127.0.0.1:0".parse().unwrap());
    }
    let mut server = b.bind("127.0.0.1:0", || Probe).expect("bind");
    if flags.contains("health") {
        let agent = server.health_socket().expect("agent socket");
        let inode = nix::sys::stat::fstat(&agent).expect("fstat").st_ino;
        std::fs::write(health_report(std::process::id() as i32), inode.to_string())
            .expect("report");
    }
    let _signals = shutdown_on_signals(&server.shutdown_handle()).expect("signals");
    if flags.contains("fdcap") {
        // Room for what `serve_forever` opens before its first worker (a
        // wake-up pair, the pidfd probe) and for one worker's control
        // socket pair (its pidfd then takes the number of the end the
        // parent closes after the fork), not for a second pair; and a
        // worker, which inherits the limit, cannot make its own
        // descriptors. The limit caps descriptor *numbers*, so count the
        // free numbers below it: descriptors inherited from whoever ran
        // the tests leave holes.
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(
            Resource::RLIMIT_NOFILE,
            support::lowest_free_fd(5) + 1,
            hard,
        )
        .unwrap();
    }
    println!("{}", server.server_address().port());
    server.serve_forever().expect("serve_forever");
    if flags.contains("handover") {
        hand_over(&server);
    }
    server.server_close();
}

/// What a SIGHUP restart does once `serve_forever` returned: the
/// successor takes the socket and makes it blocking for its own workers
/// (the flag is the shared open file's). Written first, to
/// `handover_report(pid)`: how many of the stopping workers still held
/// the listening socket at that moment.
fn hand_over(server: &PreforkTcpServer) {
    let socket = server.socket().expect("socket");
    let inode = nix::sys::stat::fstat(&*socket).expect("fstat").st_ino;
    let link = format!("socket:[{inode}]");
    let workers = server.strategy().worker_pids();
    let holding = workers
        .iter()
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == link))
        })
        .count();
    socket.set_nonblocking(false).expect("blocking");
    std::fs::write(
        handover_report(std::process::id() as i32),
        format!("{holding} of {}", workers.len()),
    )
    .expect("report");
}

/// Where a server started with the `health` flag writes the inode of
/// its agent socket.
fn health_report(pid: i32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("prefork-health-{pid}.txt"))
}

fn handover_report(pid: i32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("prefork-handover-{pid}.txt"))
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(cfg: &str) -> Server {
        Server::start_with(cfg, Stdio::inherit())
    }

    fn start_with(cfg: &str, stderr: Stdio) -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("PREFORK_SERVER", cfg)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut port = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        let addr = format!("127.0.0.1:{}", port.trim()).parse().unwrap();
        Server { child, addr }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The server's child processes (its workers), reaped or not.
    fn workers(&self) -> Vec<i32> {
        let mut out: Vec<i32> = support::children_of(self.pid())
            .into_iter()
            .filter(|&(_, state)| state != 'Z')
            .map(|(pid, _)| pid)
            .collect();
        out.sort_unstable();
        out
    }

    fn wait_workers(&self, what: &str, ok: impl Fn(usize) -> bool) -> Duration {
        let t0 = Instant::now();
        loop {
            let n = self.workers().len();
            if ok(n) {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < T, "{what}: still {n} workers after {T:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn ask(&self, line: &str) -> String {
        let c = TcpStream::connect(self.addr).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        (&c).write_all(line.as_bytes()).unwrap();
        let mut r = BufReader::new(c);
        let mut out = String::new();
        r.read_line(&mut out).unwrap();
        out.trim().to_string()
    }

    /// SIGTERM, then the server must drain and exit 0.
    fn stop(mut self) {
        kill(Pid::from_raw(self.pid()), Signal::SIGTERM).unwrap();
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "server exited with {st}");
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "server did not stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn worker_killed_is_replaced_and_requests_keep_succeeding() {
    let s = Server::start("2,4,8,2,0,0");
    s.wait_workers("start", |n| n == 2);
    let victim: i32 = s.ask("pid\n").parse().unwrap();
    assert!(s.workers().contains(&victim));
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    let t0 = Instant::now();
    let replaced = loop {
        let w = s.workers();
        if !w.contains(&victim) && w.len() >= 2 {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < T, "killed worker never replaced");
        std::thread::sleep(Duration::from_millis(1));
    };
    println!("  killed worker {victim} replaced after {replaced:?}");
    for _ in 0..20 {
        let pid: i32 = s.ask("pid\n").parse().unwrap();
        assert_ne!(pid, victim);
    }
    s.stop();
}

fn max_requests_recycles_workers() {
    let s = Server::start("1,2,4,2,3,0");
    let mut served: HashMap<i32, usize> = HashMap::new();
    for _ in 0..30 {
        let pid: i32 = s.ask("pid\n").parse().unwrap();
        *served.entry(pid).or_default() += 1;
    }
    assert!(
        served.values().all(|&n| n <= 3),
        "a worker served more than max_requests: {served:?}"
    );
    assert!(served.len() >= 10, "workers were not recycled: {served:?}");
    s.stop();
}

fn pool_grows_under_load_and_shrinks_after() {
    let s = Server::start("1,2,12,1,0,0");
    s.wait_workers("start", |n| n >= 1);
    let mut held = Vec::new();
    for _ in 0..8 {
        let c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        (&c).write_all(b"hold\n").unwrap();
        held.push(BufReader::new(c));
    }
    for c in held.iter_mut() {
        let mut line = String::new();
        c.read_line(&mut line).unwrap();
        assert_eq!(line, "held\n");
    }
    // 8 busy workers plus at least min_spare idle ones.
    s.wait_workers("grow", |n| n >= 9);
    drop(held);
    s.wait_workers("shrink", |n| n <= 2);
    s.stop();
}

fn sigttin_and_sigttou_resize_the_pool() {
    let s = Server::start("1,1,8,1,0,0");
    s.wait_workers("start", |n| n == 1);
    let server = Pid::from_raw(s.pid());
    for i in 2..=4 {
        kill(server, Signal::SIGTTIN).unwrap();
        s.wait_workers("SIGTTIN", |n| n == i);
    }
    for i in (2..=3).rev() {
        kill(server, Signal::SIGTTOU).unwrap();
        s.wait_workers("SIGTTOU", |n| n == i);
    }
    s.stop();
}

fn hung_worker_is_killed_and_replaced() {
    let s = Server::start("1,2,4,1,0,300");
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    (&c).write_all(b"hang\n").unwrap();
    let mut buf = String::new();
    let n = BufReader::new(&c).read_line(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "hung connection got an answer");
    assert_eq!(s.ask("ping\n"), "ping");
    s.stop();
}

fn sigterm_drains_100_in_flight_requests() {
    let s = Server::start("100,110,110,100,0,0");
    s.wait_workers("start", |n| n >= 100);
    let mut conns = Vec::new();
    for _ in 0..100 {
        let c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        (&c).write_all(b"slow\n").unwrap();
        conns.push(BufReader::new(c));
    }
    for c in conns.iter_mut() {
        let mut line = String::new();
        c.read_line(&mut line).unwrap();
        assert_eq!(line, "started\n");
    }
    // All 100 are being served: stop the server now.
    kill(Pid::from_raw(s.pid()), Signal::SIGTERM).unwrap();
    for c in conns.iter_mut() {
        let mut line = String::new();
        c.read_line(&mut line).unwrap();
        assert_eq!(line, "done\n");
    }
    drop(conns);
    s.stop_after_signal();
}

/// A stop (SIGTERM) while every worker is busy: the connections already
/// queued in the listening socket's backlog are served by the workers
/// once their requests end, not reset when the listener closes. And by
/// the time `serve_forever` returns no worker holds the listening socket
/// any more, so a successor that takes it (and makes it blocking again,
/// as a SIGHUP restart does) never has its connections accepted by a
/// stopping worker and left unserved.
fn sigterm_serves_connections_queued_in_the_backlog() {
    let s = Server::start("2,2,2,2,0,0;handover");
    s.wait_workers("start", |n| n == 2);
    let mut busy = Vec::new();
    for _ in 0..2 {
        let c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        (&c).write_all(b"slow\n").unwrap();
        // End of input: the handler returns after this request.
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut r = BufReader::new(c);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "started\n");
        busy.push(r);
    }
    // Both workers are in their 500 ms requests: these wait in the backlog.
    let mut queued = Vec::new();
    for i in 0..6 {
        let c = TcpStream::connect(s.addr).unwrap();
        c.set_read_timeout(Some(T)).unwrap();
        (&c).write_all(format!("queued {i}\n").as_bytes()).unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        queued.push((i, BufReader::new(c)));
    }
    kill(Pid::from_raw(s.pid()), Signal::SIGTERM).unwrap();
    for r in busy.iter_mut() {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "done\n");
    }
    for (i, r) in queued.iter_mut() {
        let mut line = String::new();
        let got = r.read_line(&mut line);
        assert!(
            matches!(got, Ok(n) if n > 0) && line == format!("queued {i}\n"),
            "queued connection {i} not served at stop: {got:?} {line:?}"
        );
    }
    drop((busy, queued));
    let report = handover_report(s.pid());
    s.stop_after_signal();
    let held = std::fs::read_to_string(&report).expect("handover report");
    let _ = std::fs::remove_file(&report);
    println!("  workers holding the listening socket when serve_forever returned: {held}");
    assert!(
        held.starts_with("0 of "),
        "stopping workers still held the listening socket: {held}"
    );
}

fn alive(pid: i32) -> bool {
    // A zombie has exited; only its parent's wait is missing.
    support::stat(pid).is_some_and(|(state, _)| state != 'Z')
}

fn gone_within(pid: i32, limit: Duration) -> bool {
    let t0 = Instant::now();
    while alive(pid) {
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// The parent dies (SIGKILL) while a worker serves a request: the request
/// still completes, and no worker keeps the listening socket, so a new
/// client is refused instead of waiting in a backlog nobody serves.
fn orphaned_workers_finish_their_request_and_refuse_new_clients() {
    let s = Server::start("1,1,2,1,0,0");
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    (&c).write_all(b"pid\n").unwrap();
    let mut r = BufReader::new(&c);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let busy: i32 = line.trim().parse().unwrap();
    // A spare is forked for the next client.
    s.wait_workers("spare", |n| n == 2);
    let workers = s.workers();
    kill(Pid::from_raw(s.pid()), Signal::SIGKILL).unwrap();
    let t0 = Instant::now();
    loop {
        match TcpStream::connect(s.addr) {
            Err(e) => {
                // Refused once closed; a connect that raced the close itself
                // (completed into the backlog as it was closed) is reset.
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                    ),
                    "{e}"
                );
                break;
            }
            Ok(_) => assert!(
                t0.elapsed() < Duration::from_secs(2),
                "orphaned workers still accept connections"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("  refused {:?} after the parent died", t0.elapsed());
    // The request in flight is served to its end.
    (&c).write_all(b"still there\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "still there\n");
    assert!(alive(busy), "the busy worker left before its request ended");
    drop(r);
    drop(c);
    for w in workers {
        assert!(gone_within(w, T), "orphaned worker {w} did not exit");
    }
}

/// Count a process's descriptors and those that are pidfds.
/// The parent dies (SIGKILL) while every worker is idle, blocked in
/// `accept4`: revoking a descriptor does not wake a thread blocked on it,
/// so each worker must be interrupted (its watcher's signal) and leave,
/// and the port must refuse new clients.
fn orphaned_idle_workers_blocked_in_accept_leave() {
    let s = Server::start("3,3,3,3,0,0");
    s.wait_workers("start", |n| n == 3);
    // Each worker has served once and is back in accept4.
    for _ in 0..6 {
        assert_eq!(s.ask("ping\n"), "ping");
    }
    let workers = s.workers();
    assert_eq!(workers.len(), 3);
    kill(Pid::from_raw(s.pid()), Signal::SIGKILL).unwrap();
    let stayed: Vec<i32> = workers
        .iter()
        .copied()
        .filter(|&pid| !gone_within(pid, T))
        .collect();
    // Leave no stray process behind, also when the test fails.
    for &pid in &stayed {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    assert!(
        stayed.is_empty(),
        "idle workers {stayed:?} stayed after their parent died"
    );
    match TcpStream::connect(s.addr) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("the port still accepts with no worker left"),
    }
}

fn fds_of(pid: i32) -> (usize, usize) {
    let mut all = 0;
    let mut pidfds = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        all += 1;
        if std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("pidfd")) {
            pidfds += 1;
        }
    }
    (all, pidfds)
}

/// Every worker holds the same descriptors, none of them a sibling's
/// pidfd, however many workers were forked before it.
fn workers_hold_no_sibling_descriptors() {
    let s = Server::start("8,8,8,8,0,0");
    s.wait_workers("start", |n| n == 8);
    // Let every worker finish closing what it inherited.
    std::thread::sleep(Duration::from_millis(200));
    let counts: Vec<(usize, usize)> = s.workers().into_iter().map(fds_of).collect();
    println!("  worker descriptors (all, pidfds): {counts:?}");
    assert!(
        counts.iter().all(|&(_, p)| p == 0),
        "pidfds in workers: {counts:?}"
    );
    let (min, max) = (
        counts.iter().map(|c| c.0).min().unwrap(),
        counts.iter().map(|c| c.0).max().unwrap(),
    );
    assert_eq!(
        min, max,
        "descriptor counts differ between workers: {counts:?}"
    );
    s.stop();
}

/// Only the parent answers the agent port, so no worker holds it: a
/// worker that outlives its parent must not keep the port open.
fn workers_do_not_hold_the_agent_port() {
    let s = Server::start("2,2,2,2,0,0;health");
    s.wait_workers("start", |n| n == 2);
    std::thread::sleep(Duration::from_millis(200));
    let report = health_report(s.pid());
    let inode = std::fs::read_to_string(&report).expect("health report");
    let _ = std::fs::remove_file(&report);
    let agent = format!("socket:[{inode}]");
    assert!(
        support::count_links(s.pid(), &agent) == 1,
        "the parent lost its agent port"
    );
    let workers = s.workers();
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert_eq!(
            support::count_links(w, &agent),
            0,
            "worker {w} holds the agent port"
        );
    }
    s.stop();
}

/// Idle workers stopped with SIGSTOP take no connection: they are noticed
/// (the connection waits on the socket while they stay idle) and replaced.
fn stopped_idle_workers_are_replaced() {
    let s = Server::start("2,2,4,2,0,0");
    s.wait_workers("start", |n| n == 2);
    let stopped = s.workers();
    // A stopped worker never sees its parent die: if the test fails, end
    // the stopped workers too (declared after `s`, so dropped first).
    let _stopped_guard = KillStoppedWorkers(stopped.clone());
    for &w in &stopped {
        kill(Pid::from_raw(w), Signal::SIGSTOP).unwrap();
    }
    // `kill` returns before the stop takes effect. A connection made in
    // that instant can still be accepted by a worker blocked in `accept4`
    // (the kernel hands a queued connection over before it looks at the
    // pending signal), which then stops holding it: a worker stopped in
    // the middle of a request, the hung-worker timeout's case, not this
    // test's. So connect only once every thread of both is stopped.
    for &w in &stopped {
        let t0 = Instant::now();
        while !all_threads_stopped(w) {
            assert!(t0.elapsed() < T, "worker {w} did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let t0 = Instant::now();
    assert_eq!(s.ask("ping\n"), "ping");
    println!(
        "  served {:?} after every idle worker was stopped",
        t0.elapsed()
    );
    for w in stopped {
        assert!(gone_within(w, T), "stopped worker {w} was not replaced");
    }
    s.stop();
}

/// SIGKILLs, when dropped, each listed pid that is still a stopped
/// process of this test binary (a pid already reaped and reused by
/// another program is left alone).
struct KillStoppedWorkers(Vec<i32>);

impl Drop for KillStoppedWorkers {
    fn drop(&mut self) {
        let me = std::env::current_exe().ok();
        for &pid in &self.0 {
            let ours = std::fs::read_link(format!("/proc/{pid}/exe")).ok() == me;
            if ours && all_threads_stopped(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Whether every thread of `pid` is in the stopped state (`T`).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next().map(|s| s == "T"))
                .unwrap_or(false)
        })
    })
}

/// Under a descriptor limit no worker can be set up: the parent's
/// failures to fork and its workers dying at start repeat every tick, and
/// each is logged once (then a count every 10 s), not 20 times a second.
fn repeated_fork_errors_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let file = std::fs::File::create(&log).unwrap();
    let s = Server::start_with("2,2,4,2,0,0;log,fdcap", Stdio::from(file));
    std::thread::sleep(Duration::from_millis(1500));
    s.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    let forks = text.matches("cannot fork prefork worker").count();
    let deaths = text.matches("prefork worker died").count();
    assert!(forks + deaths > 0, "no failure was logged at all: {text}");
    assert!(
        forks <= 1 && deaths <= 1,
        "{forks} + {deaths} lines:\n{text}"
    );
}

/// The `ctimeout` flag's `connection_timeout`.
const CONNECTION_TIMEOUT: Duration = Duration::from_millis(150);

/// With a `connection_timeout`, the listening socket carries it (TCP
/// connections inherit it), so a worker's blocking `accept4` on that
/// socket gives up with `EAGAIN` every 150 ms while idle. The workers
/// must take that in their stride: after several such time-outs the same
/// workers serve at once, log nothing, and a silent client is still
/// disconnected after the timeout.
fn idle_workers_outlive_the_connection_timeout_on_accept() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let file = std::fs::File::create(&log).unwrap();
    let s = Server::start_with("2,2,2,2,0,0;log,ctimeout", Stdio::from(file));
    s.wait_workers("start", |n| n == 2);
    let before = s.workers();
    std::thread::sleep(CONNECTION_TIMEOUT * 5);
    for i in 0..20 {
        let t0 = Instant::now();
        assert_eq!(s.ask(&format!("ping {i}\n")), format!("ping {i}"));
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }
    assert_eq!(s.workers(), before, "a worker was replaced");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("ERROR") && !text.contains("WARN"),
        "the workers logged:\n{text}"
    );
    // (The probe handler returns the silent client's read timeout as its
    // error, which is logged: Python's handle_error does the same.)
    let silent = TcpStream::connect(s.addr).unwrap();
    silent.set_read_timeout(Some(T)).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 16];
    let n = (&silent).read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the silent client got {:?}", &buf[..n]);
    assert!(
        t0.elapsed() >= CONNECTION_TIMEOUT - Duration::from_millis(20) && t0.elapsed() < T,
        "closed after {:?}",
        t0.elapsed()
    );
    s.stop();
}

/// `process::exit(7)` in a handler ends that worker (it is replaced), not
/// a "non-string panic payload" that keeps the worker running.
fn process_exit_in_a_handler_ends_the_worker() {
    let s = Server::start("1,2,4,1,0,0");
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    (&c).write_all(b"pid\nexit\n").unwrap();
    let mut r = BufReader::new(&c);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let pid: i32 = line.trim().parse().unwrap();
    line.clear();
    assert_eq!(r.read_line(&mut line).unwrap_or(0), 0, "{line}");
    assert!(gone_within(pid, T), "worker {pid} survived process::exit");
    assert_eq!(s.ask("ping\n"), "ping");
    s.stop();
}

impl Server {
    fn stop_after_signal(mut self) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "server exited with {st}");
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "server did not stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn main() {
    if let Ok(cfg) = std::env::var("PREFORK_SERVER") {
        server_main(&cfg);
        return;
    }
    let tests: &[(&str, fn())] = &[
        (
            "worker_killed_is_replaced_and_requests_keep_succeeding",
            worker_killed_is_replaced_and_requests_keep_succeeding,
        ),
        (
            "workers_do_not_hold_the_agent_port",
            workers_do_not_hold_the_agent_port,
        ),
        (
            "max_requests_recycles_workers",
            max_requests_recycles_workers,
        ),
        (
            "pool_grows_under_load_and_shrinks_after",
            pool_grows_under_load_and_shrinks_after,
        ),
        (
            "sigttin_and_sigttou_resize_the_pool",
            sigttin_and_sigttou_resize_the_pool,
        ),
        (
            "hung_worker_is_killed_and_replaced",
            hung_worker_is_killed_and_replaced,
        ),
        (
            "sigterm_drains_100_in_flight_requests",
            sigterm_drains_100_in_flight_requests,
        ),
        (
            "sigterm_serves_connections_queued_in_the_backlog",
            sigterm_serves_connections_queued_in_the_backlog,
        ),
        (
            "orphaned_workers_finish_their_request_and_refuse_new_clients",
            orphaned_workers_finish_their_request_and_refuse_new_clients,
        ),
        (
            "orphaned_idle_workers_blocked_in_accept_leave",
            orphaned_idle_workers_blocked_in_accept_leave,
        ),
        (
            "workers_hold_no_sibling_descriptors",
            workers_hold_no_sibling_descriptors,
        ),
        (
            "stopped_idle_workers_are_replaced",
            stopped_idle_workers_are_replaced,
        ),
        (
            "repeated_fork_errors_are_rate_limited",
            repeated_fork_errors_are_rate_limited,
        ),
        (
            "process_exit_in_a_handler_ends_the_worker",
            process_exit_in_a_handler_ends_the_worker,
        ),
        (
            "idle_workers_outlive_the_connection_timeout_on_accept",
            idle_workers_outlive_the_connection_timeout_on_accept,
        ),
    ];
    support::run_plain(tests);
}
