//! Test hosts behind a real load balancer: network namespaces, HAProxy and
//! backends, each removed when dropped, also when the test fails.
//!
//! Backends run in network namespaces this module creates (`ip netns`),
//! one per host, joined to the test's own namespace by a veth pair with
//! addresses in 10.B.N.0/24 that exist only inside this machine (B picked
//! per run among the /16s no interface uses yet, so parallel runs in
//! several checkouts do not collide). Where
//! namespaces cannot be made (not root, no `ip`), the hosts fall back to
//! 127.0.0.2, 127.0.0.3, … on loopback; [`Hosts::kind`] says which ran.
//! HAProxy listens on 127.0.0.1 in the test's namespace, so every address
//! a test sends to is on loopback or inside namespaces it made.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Whether a program is on `PATH` (`prog -v`/`--version` ran at all).
pub fn installed(prog: &str) -> bool {
    Command::new(prog)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn run(cmd: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Where the backends live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// One network namespace per host.
    Namespaces,
    /// 127.0.0.2, 127.0.0.3, … in the test's own namespace.
    Loopback,
}

/// N test hosts; their namespaces are deleted on drop.
#[derive(Debug)]
pub struct Hosts {
    /// How the hosts were made.
    pub kind: HostKind,
    /// Each host's address, as the balancer reaches it.
    pub addrs: Vec<IpAddr>,
    namespaces: Vec<String>,
}

impl Hosts {
    /// Makes `n` hosts (at most 200), in namespaces when possible.
    pub fn new(n: usize) -> Hosts {
        assert!(n <= 200);
        let mut hosts = Hosts {
            kind: HostKind::Namespaces,
            addrs: Vec::new(),
            namespaces: Vec::new(),
        };
        // Unique per `Hosts` in this process: a test's deleted namespaces
        // take their veth pairs down asynchronously, so the next test of
        // the same binary must not reuse the names ("File exists").
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let made = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 100;
        let tag = format!("{}n{made}", std::process::id() % 100_000);
        // SOCKETSERVER_TEST_HOSTS=loopback runs the fallback on purpose
        // (to check it where namespaces would work).
        let forced = std::env::var("SOCKETSERVER_TEST_HOSTS").is_ok_and(|v| v == "loopback");
        let net = if forced { 0 } else { free_subnet() };
        for i in (1..=n).filter(|_| !forced) {
            let ns = format!("ssrs{tag}h{i}");
            let veth = format!("ssv{tag}h{i}");
            let outer = format!("10.{net}.{i}.1/24");
            let inner = format!("10.{net}.{i}.2/24");
            let made = run(&["ip", "netns", "add", &ns]).and_then(|()| {
                hosts.namespaces.push(ns.clone());
                run(&[
                    "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                    &ns,
                ])?;
                run(&["ip", "addr", "add", &outer, "dev", &veth])?;
                run(&["ip", "link", "set", &veth, "up"])?;
                for cmd in [
                    &[
                        "ip", "netns", "exec", &ns, "ip", "addr", "add", &inner, "dev", "eth0",
                    ][..],
                    &[
                        "ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up",
                    ],
                    &["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"],
                ] {
                    run(cmd)?;
                }
                Ok(())
            });
            match made {
                Ok(()) => hosts
                    .addrs
                    .push(IpAddr::V4(Ipv4Addr::new(10, net, i as u8, 2))),
                Err(why) => {
                    eprintln!("network namespaces unavailable ({why}); using 127.0.0.x hosts");
                    hosts.remove_namespaces();
                    return Hosts {
                        kind: HostKind::Loopback,
                        addrs: (2..2 + n as u8)
                            .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)))
                            .collect(),
                        namespaces: Vec::new(),
                    };
                }
            }
        }
        if forced {
            eprintln!("SOCKETSERVER_TEST_HOSTS=loopback: using 127.0.0.x hosts");
            return Hosts {
                kind: HostKind::Loopback,
                addrs: (2..2 + n as u8)
                    .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)))
                    .collect(),
                namespaces: Vec::new(),
            };
        }
        hosts
    }

    /// A command that runs `program` on host `i` (inside its namespace).
    pub fn command(&self, i: usize, program: &Path) -> Command {
        match self.kind {
            HostKind::Namespaces => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &self.namespaces[i]]).arg(program);
                c
            }
            HostKind::Loopback => Command::new(program),
        }
    }

    /// Sets a namespaced sysctl (`net.*`) inside host `i`'s namespace;
    /// `false` (nothing changed) on the loopback fallback, whose sysctls
    /// are the machine's.
    pub fn sysctl(&self, i: usize, key: &str, value: &str) -> bool {
        self.kind == HostKind::Namespaces
            && run(&[
                "ip",
                "netns",
                "exec",
                &self.namespaces[i],
                "sysctl",
                "-q",
                "-w",
                &format!("{key}={value}"),
            ])
            .is_ok()
    }

    /// How many TCP sockets listen on `port` at host `i`'s address (read
    /// from `/proc/net/tcp` inside its namespace).
    pub fn listeners(&self, i: usize, port: u16) -> usize {
        let out = match self.kind {
            HostKind::Namespaces => Command::new("ip")
                .args(["netns", "exec", &self.namespaces[i], "cat", "/proc/net/tcp"])
                .output(),
            HostKind::Loopback => Command::new("cat").arg("/proc/net/tcp").output(),
        }
        .expect("read /proc/net/tcp");
        let IpAddr::V4(ip) = self.addrs[i] else {
            unreachable!("hosts are IPv4")
        };
        // local_address is the IPv4 address as a little-endian hex word,
        // then the port in hex; state 0A is LISTEN.
        let want = format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets()));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() > 3 && f[1] == want && f[3] == "0A")
            .count()
    }

    fn remove_namespaces(&mut self) {
        // Deleting a namespace also deletes its end of the veth pair,
        // and with it the pair.
        for ns in self.namespaces.drain(..) {
            let _ = run(&["ip", "netns", "del", &ns]);
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove_namespaces();
    }
}

/// The second octet of a 10.B.0.0/16 no interface of this machine uses
/// yet, so that test runs in several checkouts at once (each engineer's
/// `cargo test`) do not route to each other's namespaces. Starts from the
/// process id; 77 when `ip` cannot tell.
fn free_subnet() -> u8 {
    let used = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let start = std::process::id() % 200;
    (0..200)
        .map(|k| 20 + ((start + k) % 200) as u8)
        .find(|b| !used.contains(&format!(" 10.{b}.")))
        .unwrap_or(77)
}

/// The names of this test run's namespaces still present (for the
/// "nothing left behind" check).
pub fn leftover_namespaces() -> Vec<String> {
    let tag = format!("ssrs{}n", std::process::id() % 100_000);
    let out = Command::new("ip").args(["netns", "list"]).output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&tag))
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for a test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process this test did not spawn itself but that became its child
/// (a successor started by a backend on SIGHUP, re-parented to the test,
/// which is a child subreaper): ended by pid and reaped when dropped.
#[derive(Debug)]
pub struct Adopted(pub i32);

impl Adopted {
    /// Whether it is still running (not yet exited); reaps it if it has.
    pub fn alive(&self) -> bool {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        matches!(
            waitpid(
                nix::unistd::Pid::from_raw(self.0),
                Some(WaitPidFlag::WNOHANG)
            ),
            Ok(WaitStatus::StillAlive)
        )
    }

    /// Waits up to `limit` for it to exit.
    pub fn wait_exit(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.alive() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Adopted {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let pid = nix::unistd::Pid::from_raw(self.0);
        if self.alive() {
            let _ = kill(pid, Signal::SIGTERM);
            if !self.wait_exit(Duration::from_secs(5)) {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
            }
        }
    }
}

/// Makes this process the reaper of its orphaned descendants, so a
/// backend's successor becomes the test's child (ended and reaped by
/// [`Adopted`]) instead of init's.
pub fn become_subreaper() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .expect("PR_SET_CHILD_SUBREAPER");
}

/// A child process ended by pid when dropped (SIGTERM, then SIGKILL),
/// with its stdout and stderr lines collected.
#[derive(Debug)]
pub struct Proc {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line seen so far (stdout and stderr).
    pub seen: Vec<String>,
}

impl Proc {
    /// Starts `cmd` with piped output.
    pub fn start(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(l);
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits up to `limit` for a line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Waits up to `limit` for a line, among those from index `from` on,
    /// for which `pred` holds; its index and text.
    pub fn wait_line(
        &mut self,
        from: usize,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(usize, String)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = (from..self.seen.len()).find(|&i| pred(&self.seen[i])) {
                return Some((i, self.seen[i].clone()));
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => return None,
            }
        }
    }

    /// Collects the lines that arrived so far.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` to the process (only ever one this test started).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// Waits up to `limit` for the process to exit; its status code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            if self.wait_exit(Duration::from_secs(5)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// One backend server line of the HAProxy configuration.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where HAProxy connects.
    pub addr: SocketAddr,
    /// The agent-check port on the same host, if any.
    pub agent_port: Option<u16>,
}

/// HAProxy in TCP mode on 127.0.0.1:`port`, round robin over `backends`,
/// with health checks every 200 ms (`fall 2 rise 2`), `retries 3` and
/// `option redispatch`; `send-proxy-v2` when `proxy` is set.
pub fn haproxy(dir: &Path, port: u16, backends: &[Backend], proxy: bool) -> Proc {
    haproxy_with(dir, port, backends, proxy.then_some("send-proxy-v2"))
}

/// The start of an HAProxy configuration the tests share: the stats
/// socket in `dir`, TCP mode with short connect timeouts, retries and
/// redispatch, and a round-robin frontend on 127.0.0.1:`port` whose
/// backend `be` the caller fills with `server` lines.
pub fn haproxy_head(dir: &Path, port: u16) -> String {
    format!(
        "global\n  maxconn 8000\n  stats socket {}/haproxy.sock mode 600 level admin\n\
         defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
         backend be\n  balance roundrobin\n",
        dir.display()
    )
}

/// As [`haproxy`], with `send_proxy` (`send-proxy` for PROXY v1,
/// `send-proxy-v2`) and `check-send-proxy` on every `server` line when
/// given.
pub fn haproxy_with(dir: &Path, port: u16, backends: &[Backend], send_proxy: Option<&str>) -> Proc {
    let mut cfg = haproxy_head(dir, port);
    for (i, b) in backends.iter().enumerate() {
        let _ = writeln!(
            cfg,
            "  server b{i} {} check inter 200ms fall 2 rise 2{}{}",
            b.addr,
            match send_proxy {
                Some(p) => format!(" {p} check-send-proxy"),
                None => String::new(),
            },
            match b.agent_port {
                Some(p) => format!(" agent-check agent-port {p} agent-inter 200ms"),
                None => String::new(),
            }
        );
    }
    start_haproxy(dir, port, &cfg)
}

/// HAProxy run with the configuration `cfg` (written to `dir`), whose
/// frontend listens on 127.0.0.1:`port` and whose stats socket is
/// `dir/haproxy.sock`; returns once both answer.
pub fn start_haproxy(dir: &Path, port: u16, cfg: &str) -> Proc {
    let path: PathBuf = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let mut p = Proc::start(cmd);
    // HAProxy logs nothing on a good start in -db mode without a log
    // target: wait until the port accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy did not start: {:?}",
            p.drain()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // And until its stats socket answers (a stale socket file of an
    // earlier HAProxy in the same directory refuses until then).
    while std::os::unix::net::UnixStream::connect(dir.join("haproxy.sock")).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy stats socket not up: {:?}",
            p.drain()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// One backend server's line of HAProxy's `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// `b0`, `b1`, …
    pub name: String,
    /// `UP`, `DOWN`, `DRAIN`, `MAINT`, `UP 1/2`, …
    pub status: String,
    /// Sessions (connections) it was given in total.
    pub sessions: u64,
    /// Sessions open now.
    pub current: u64,
}

/// The backend servers' state, from HAProxy's stats socket in `dir`.
pub fn haproxy_stats(dir: &Path) -> Vec<ServerStat> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(dir.join("haproxy.sock"))
        .expect("haproxy stats socket");
    s.write_all(b"show stat\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (px, sv, st, stot) = (col("pxname"), col("svname"), col("status"), col("stot"));
    let scur = col("scur");
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.len() > stot && f[px] == "be" && f[sv].starts_with('b'))
        .map(|f| ServerStat {
            name: f[sv].to_string(),
            status: f[st].to_string(),
            sessions: f[stot].parse().unwrap_or(0),
            current: f[scur].parse().unwrap_or(0),
        })
        .collect()
}

/// How nginx gets its `stream` module: `Some(None)` built in,
/// `Some(Some(path))` a dynamic module to load (Debian's
/// `libnginx-mod-stream`), `None` not available (or nginx not installed).
pub fn nginx_stream() -> Option<Option<PathBuf>> {
    let out = Command::new("nginx").arg("-V").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let flags: Vec<&str> = text.split_whitespace().collect();
    if flags.contains(&"--with-stream") {
        return Some(None);
    }
    if flags.contains(&"--with-stream=dynamic") {
        let dir = flags
            .iter()
            .find_map(|f| f.strip_prefix("--modules-path="))
            .unwrap_or("/usr/lib/nginx/modules");
        let module = Path::new(dir).join("ngx_stream_module.so");
        return module.exists().then_some(Some(module));
    }
    None
}

/// A private nginx (its own prefix, configuration, pid and error log in
/// `dir`; one process, no daemon, ended by pid when dropped) running the
/// `stream` proxy of docs/scale-out.md on 127.0.0.1:`port` in front of
/// `backends`, with `proxy_protocol on` when `proxy` is set.
pub fn nginx(
    dir: &Path,
    module: Option<&Path>,
    port: u16,
    backends: &[SocketAddr],
    proxy: bool,
) -> Proc {
    let mut cfg = String::new();
    if let Some(m) = module {
        let _ = writeln!(cfg, "load_module {};", m.display());
    }
    let _ = write!(
        cfg,
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log notice;\nevents {{ worker_connections 4096; }}\n\
         stream {{\n    upstream echo {{\n",
        d = dir.display()
    );
    for b in backends {
        let _ = writeln!(cfg, "        server {b} max_fails=1 fail_timeout=2s;");
    }
    let _ = write!(
        cfg,
        "    }}\n    server {{\n        listen 127.0.0.1:{port};\n        proxy_pass echo;\n\
         {}        proxy_next_upstream on;\n        proxy_connect_timeout 1s;\n    }}\n}}\n",
        if proxy {
            "        proxy_protocol on;\n"
        } else {
            ""
        }
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&path);
    let mut p = Proc::start(cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline || matches!(p.child.try_wait(), Ok(Some(_))) {
            panic!(
                "nginx did not start: {:?} {}",
                p.drain(),
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}
