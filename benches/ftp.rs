//! FTP server benchmark: the `ftp` example against pyftpdlib and vsftpd,
//! side by side in one run, on loopback.
//!
//! ```text
//! cargo bench --bench ftp
//! ```
//!
//! Measures, per server: RETR and STOR throughput of a 256 MiB file
//! (median of 3), the wall time for 100 concurrent logins (median of 3),
//! and the server's memory with 100 logged-in clients (RSS and PSS summed
//! over the server's process tree, so per-connection processes count).
//! A missing peer (`pip install pyftpdlib`, `apt-get install vsftpd`) is
//! reported and skipped. Everything listens on 127.0.0.1 with port 0 or a
//! free port, and every loop is bounded.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const FILE_SIZE: usize = 256 << 20;
const REPS: usize = 3;
const CLIENTS: usize = 100;
const TIMEOUT: Duration = Duration::from_secs(60);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A server process, killed and reaped on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    user: (&'static str, &'static str),
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal FTP client for measuring.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr, limit: Duration) -> Result<Client> {
        let s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(limit))?;
        s.set_nodelay(true)?;
        let mut c = Client {
            r: BufReader::new(s.try_clone()?),
            w: s,
        };
        c.expect(220)?;
        Ok(c)
    }

    fn reply(&mut self) -> Result<(u16, String)> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err("server closed the control connection".into());
        }
        let code: u16 = line
            .get(..3)
            .and_then(|c| c.parse().ok())
            .ok_or("bad reply")?;
        if line.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{code} ");
            let mut more = String::new();
            while !more.starts_with(&end) {
                more.clear();
                if self.r.read_line(&mut more)? == 0 {
                    return Err("eof in multi-line reply".into());
                }
            }
        }
        Ok((code, line))
    }

    fn expect(&mut self, want: u16) -> Result<String> {
        let (code, line) = self.reply()?;
        if code != want {
            return Err(format!("expected {want}, got {}", line.trim_end()).into());
        }
        Ok(line)
    }

    /// Sends a transfer command and expects a 1xx preliminary reply.
    fn start(&mut self, line: &str) -> Result<()> {
        self.w.write_all(format!("{line}\r\n").as_bytes())?;
        let (code, text) = self.reply()?;
        if !(100..200).contains(&code) {
            return Err(format!("{line}: {}", text.trim_end()).into());
        }
        Ok(())
    }

    fn cmd(&mut self, line: &str, want: u16) -> Result<String> {
        self.w.write_all(format!("{line}\r\n").as_bytes())?;
        self.expect(want)
    }

    fn login(addr: SocketAddr, user: (&str, &str)) -> Result<Client> {
        Self::login_within(addr, user, TIMEOUT)
    }

    fn login_within(addr: SocketAddr, user: (&str, &str), limit: Duration) -> Result<Client> {
        let mut c = Client::connect(addr, limit)?;
        c.w.write_all(format!("USER {}\r\n", user.0).as_bytes())?;
        // vsftpd logs anonymous users in at USER (no_anon_password).
        if c.reply()?.0 != 230 {
            c.cmd(&format!("PASS {}", user.1), 230)?;
        }
        Ok(c)
    }

    fn pasv(&mut self) -> Result<TcpStream> {
        let line = self.cmd("PASV", 227)?;
        let inner = line
            .split_once('(')
            .and_then(|(_, r)| r.split_once(')'))
            .ok_or("bad 227")?
            .0;
        let n: Vec<u16> = inner
            .split(',')
            .map(|x| x.trim().parse())
            .collect::<std::result::Result<_, _>>()?;
        if n.len() != 6 {
            return Err("bad 227".into());
        }
        let addr = SocketAddr::from((
            [n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8],
            n[4] * 256 + n[5],
        ));
        let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.set_write_timeout(Some(TIMEOUT))?;
        Ok(s)
    }

    /// Downloads `name`, discarding the bytes; returns MiB/s.
    fn retr(&mut self, name: &str) -> Result<f64> {
        self.cmd("TYPE I", 200)?;
        let mut data = self.pasv()?;
        let start = Instant::now();
        self.start(&format!("RETR {name}"))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0usize;
        loop {
            let n = data.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        self.expect(226)?;
        let secs = start.elapsed().as_secs_f64();
        if total != FILE_SIZE {
            return Err(format!("RETR got {total} bytes").into());
        }
        Ok(total as f64 / (1 << 20) as f64 / secs)
    }

    /// Uploads FILE_SIZE bytes from memory; returns MiB/s.
    fn stor(&mut self, name: &str, chunk: &[u8]) -> Result<f64> {
        self.cmd("TYPE I", 200)?;
        let mut data = self.pasv()?;
        let start = Instant::now();
        self.start(&format!("STOR {name}"))?;
        let mut sent = 0;
        while sent < FILE_SIZE {
            let n = chunk.len().min(FILE_SIZE - sent);
            data.write_all(&chunk[..n])?;
            sent += n;
        }
        drop(data);
        self.expect(226)?;
        Ok(sent as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Reads the first stdout line of a child within `limit`.
fn first_line(child: &mut Child, limit: Duration) -> Result<String> {
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    Ok(rx.recv_timeout(limit)?)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(mut c) = Client::connect(addr, TIMEOUT) {
            let _ = c.cmd("QUIT", 221);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listening on {addr}").into())
}

fn start_ours(bin: &Path, root: &Path, mode: &str) -> Result<Server> {
    let mut child = Command::new(bin)
        .arg("--root")
        .arg(root)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--mode",
            mode,
            "--user",
            "bob:secret",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let line = first_line(&mut child, Duration::from_secs(20))?;
    let addr = line
        .strip_prefix("listening on ftp://")
        .and_then(|r| r.split(' ').next())
        .ok_or_else(|| format!("unexpected line {line:?}"))?
        .parse()?;
    Ok(Server {
        child,
        addr,
        user: ("bob", "secret"),
    })
}

const PYFTPDLIB: &str = r#"
import logging, sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
logging.basicConfig(level=logging.WARNING)
auth = DummyAuthorizer()
auth.add_user("bob", "secret", sys.argv[1], perm="elradfmwMT")
FTPHandler.authorizer = auth
server = FTPServer(("127.0.0.1", 0), FTPHandler)
print("listening on ftp://127.0.0.1:%d" % server.address[1], flush=True)
server.serve_forever()
"#;

fn start_pyftpdlib(root: &Path, scratch: &Path) -> Result<Server> {
    let ok = Command::new("python3")
        .args(["-c", "import pyftpdlib"])
        .stderr(Stdio::null())
        .status()?
        .success();
    if !ok {
        return Err("pyftpdlib is not installed (pip install pyftpdlib)".into());
    }
    let script = scratch.join("pyftpd.py");
    fs::write(&script, PYFTPDLIB)?;
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let line = first_line(&mut child, Duration::from_secs(20));
    let addr = match line {
        Ok(l) => l.trim().trim_start_matches("listening on ftp://").parse(),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let mut server = Server {
        child,
        addr: "127.0.0.1:1".parse()?,
        user: ("bob", "secret"),
    };
    server.addr = addr.map_err(|e| format!("pyftpdlib: {e}"))?;
    Ok(server)
}

/// vsftpd with a private config: anonymous sessions rooted at `root`
/// (uploads go to `root/up`, owned by the `ftp` user), 127.0.0.1 only.
fn start_vsftpd(root: &Path, scratch: &Path) -> Result<Server> {
    let bin = ["/usr/sbin/vsftpd", "/usr/bin/vsftpd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("vsftpd is not installed (apt-get install vsftpd)")?;
    if !nix::unistd::Uid::effective().is_root() {
        return Err("vsftpd needs root to run here (it chroots and drops privileges)".into());
    }
    let ftp_user = nix::unistd::User::from_name("ftp")?.ok_or("no `ftp` system user for vsftpd")?;
    nix::unistd::chown(&root.join("up"), Some(ftp_user.uid), Some(ftp_user.gid))?;
    let empty = scratch.join("vsftpd-empty");
    fs::create_dir_all(&empty)?;
    let port = free_port()?;
    let conf = scratch.join("vsftpd.conf");
    fs::write(
        &conf,
        format!(
            "listen=YES\nlisten_ipv6=NO\nlisten_address=127.0.0.1\nlisten_port={port}\n\
             background=NO\nanonymous_enable=YES\nno_anon_password=YES\nanon_root={root}\n\
             local_enable=NO\nwrite_enable=YES\nanon_upload_enable=YES\n\
             anon_mkdir_write_enable=YES\nanon_other_write_enable=YES\n\
             anon_umask=022\nsecure_chroot_dir={empty}\nseccomp_sandbox=NO\n\
             xferlog_enable=NO\nsyslog_enable=NO\nvsftpd_log_file=/dev/null\n\
             max_clients=1000\nmax_per_ip=1000\nuse_localtime=NO\npasv_enable=YES\n\
             pasv_address=127.0.0.1\nconnect_from_port_20=NO\n",
            root = root.display(),
            empty = empty.display()
        ),
    )?;
    let child = Command::new(bin)
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = Server {
        child,
        addr,
        user: ("anonymous", "x@"),
    };
    wait_listening(addr)?;
    Ok(server)
}

/// `pid` and all its live descendants.
fn tree_pids(pid: u32) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let Some(after) = stat.rsplit_once(") ").map(|x| x.1) else {
                continue;
            };
            if let Some(pp) = after.split(' ').nth(1).and_then(|x| x.parse::<u32>().ok()) {
                parent.insert(p, pp);
            }
        }
    }
    let in_tree = |mut p: u32| {
        for _ in 0..64 {
            if p == pid {
                return true;
            }
            match parent.get(&p) {
                Some(&pp) if pp != 0 => p = pp,
                _ => return false,
            }
        }
        false
    };
    parent.keys().copied().filter(|&p| in_tree(p)).collect()
}

/// Sums RSS and PSS (KiB) over `pid` and all its descendants.
fn tree_memory(pid: u32) -> (u64, u64) {
    let field = |text: &str, key: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (mut rss, mut pss) = (0, 0);
    for p in tree_pids(pid) {
        rss += fs::read_to_string(format!("/proc/{p}/status"))
            .map(|s| field(&s, "VmRSS:"))
            .unwrap_or(0);
        pss += fs::read_to_string(format!("/proc/{p}/smaps_rollup"))
            .map(|s| field(&s, "Pss:"))
            .unwrap_or(0);
    }
    (rss, pss)
}

/// CPU seconds (user + system, including reaped children) used so far by
/// `pid` and its live descendants.
fn tree_cpu(pid: u32) -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut total = 0u64;
    for p in tree_pids(pid) {
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(after) = stat.rsplit_once(") ").map(|x| x.1) else {
            continue;
        };
        let f: Vec<&str> = after.split(' ').collect();
        // Fields 14-17 of stat (utime stime cutime cstime), 0-based 11..15
        // after the command name.
        for v in f.iter().skip(11).take(4) {
            total += v.parse::<u64>().unwrap_or(0);
        }
    }
    total as f64 / ticks
}

/// Logs in CLIENTS clients at once; returns (seconds, connected clients,
/// failed logins). A client that gets no greeting within 10 s counts as
/// failed (a server whose accept backlog overflows drops connections).
fn concurrent_logins(server: &Server) -> Result<(f64, Vec<Client>, usize)> {
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let b = barrier.clone();
            let (addr, user) = (server.addr, server.user);
            std::thread::spawn(move || {
                b.wait();
                Client::login_within(addr, user, Duration::from_secs(10)).map_err(|e| e.to_string())
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut clients = Vec::new();
    let mut failed = 0;
    for h in handles {
        match h.join().map_err(|_| "login thread panicked")? {
            Ok(c) => clients.push(c),
            Err(_) => failed += 1,
        }
    }
    Ok((start.elapsed().as_secs_f64(), clients, failed))
}

#[derive(Debug, Default)]
struct Row {
    name: String,
    retr: f64,
    stor: f64,
    logins_ms: f64,
    rss_kib: u64,
    pss_kib: u64,
    login_failures: usize,
    retr_cpu: f64,
    stor_cpu: f64,
}

/// One RETR and one STOR of the big file; returns MiB/s for each.
/// Also returns the server's CPU seconds per GiB for each.
fn transfer_once(server: &Server, root: &Path, chunk: &[u8], i: usize) -> Result<[f64; 4]> {
    let pid = server.child.id();
    let gib = FILE_SIZE as f64 / (1u64 << 30) as f64;
    let mut c = Client::login(server.addr, server.user).map_err(|e| format!("login: {e}"))?;
    let cpu0 = tree_cpu(pid);
    let retr = c.retr("big.bin").map_err(|e| format!("RETR: {e}"))?;
    let cpu1 = tree_cpu(pid);
    let name = format!("up/stor-{i}.bin");
    let stor = c.stor(&name, chunk).map_err(|e| format!("STOR: {e}"))?;
    let cpu2 = tree_cpu(pid);
    let _ = c.cmd("QUIT", 221);
    let _ = fs::remove_file(root.join(&name));
    Ok([retr, stor, (cpu1 - cpu0) / gib, (cpu2 - cpu1) / gib])
}

/// The login timings and memory figures of one server.
fn logins_and_memory(server: &Server, row: &mut Row) -> Result<()> {
    let mut logins = Vec::new();
    for i in 0..REPS {
        let (secs, clients, failed) =
            concurrent_logins(server).map_err(|e| format!("logins: {e}"))?;
        logins.push(secs * 1000.0);
        row.login_failures = row.login_failures.max(failed);
        if i == REPS - 1 {
            std::thread::sleep(Duration::from_millis(300));
            (row.rss_kib, row.pss_kib) = tree_memory(server.child.id());
        }
        drop(clients);
        std::thread::sleep(Duration::from_millis(300));
    }
    row.logins_ms = median(logins);
    Ok(())
}

fn build_ours() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args(["build", "--release", "--example", "ftp"])
        .status()?
        .success();
    if !ok {
        return Err("cargo build --release --example ftp failed".into());
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).ok_or("target dir")?;
    Ok(dir.join("examples").join("ftp"))
}

fn main() -> Result<()> {
    let bin = build_ours()?;
    let scratch = tempfile::tempdir()?;
    let root = scratch.path().join("root");
    fs::create_dir_all(root.join("up"))?;
    {
        let mut f = io::BufWriter::new(fs::File::create(root.join("big.bin"))?);
        let block: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 253) as u8).collect();
        for _ in 0..FILE_SIZE >> 20 {
            f.write_all(&block)?;
        }
        // On disk before anyone reads it: write-back must not slow the
        // first server measured.
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    type Starter<'a> = Box<dyn Fn() -> Result<Server> + 'a>;
    let starters: Vec<(&str, Starter)> = vec![
        (
            "ours (threading)",
            Box::new(|| start_ours(&bin, &root, "threading")),
        ),
        (
            "ours (forking)",
            Box::new(|| start_ours(&bin, &root, "forking")),
        ),
        (
            "pyftpdlib",
            Box::new(|| start_pyftpdlib(&root, scratch.path())),
        ),
        ("vsftpd", Box::new(|| start_vsftpd(&root, scratch.path()))),
    ];
    // `cargo bench --bench ftp -- vsftpd` runs only the matching servers.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut servers: Vec<(Server, Row, Vec<[f64; 4]>)> = Vec::new();
    for (name, start) in starters {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        match start() {
            Ok(s) => {
                let row = Row {
                    name: name.to_string(),
                    ..Row::default()
                };
                servers.push((s, row, Vec::new()));
            }
            Err(e) => notes.push(format!("{name}: skipped: {e}")),
        }
    }
    // Transfers round-robin across servers, so background noise on this
    // shared machine hits every server alike.
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    for i in 0..REPS {
        let mut k = 0;
        while k < servers.len() {
            let (server, row, samples) = &mut servers[k];
            eprintln!("transfer round {} of {REPS}: {}", i + 1, row.name);
            match transfer_once(server, &root, &chunk, i) {
                Ok(sample) => {
                    samples.push(sample);
                    k += 1;
                }
                Err(e) => {
                    notes.push(format!("{}: dropped: {e}", row.name));
                    servers.remove(k);
                }
            }
        }
    }
    for (server, mut row, samples) in servers {
        eprintln!("{} concurrent logins: {}", CLIENTS, row.name);
        let col = |j: usize| median(samples.iter().map(|s| s[j]).collect());
        row.retr = col(0);
        row.stor = col(1);
        row.retr_cpu = col(2);
        row.stor_cpu = col(3);
        match logins_and_memory(&server, &mut row) {
            Ok(()) => rows.push(row),
            Err(e) => notes.push(format!("{}: dropped: {e}", row.name)),
        }
        drop(server);
    }
    println!();
    println!(
        "FTP benchmark, 127.0.0.1, {} MiB file, median of {REPS}, {CLIENTS} clients",
        FILE_SIZE >> 20
    );
    println!();
    println!("| server | RETR MiB/s | STOR MiB/s | server CPU s/GiB RETR / STOR | {CLIENTS} concurrent logins (ms) | memory with {CLIENTS} clients: RSS / PSS (MiB) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let failed = match r.login_failures {
            0 => String::new(),
            n => format!(" ({n} of {CLIENTS} got no greeting in 10 s)"),
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.2} / {:.2} | {:.1}{failed} | {:.1} / {:.1} |",
            r.name,
            r.retr,
            r.stor,
            r.retr_cpu,
            r.stor_cpu,
            r.logins_ms,
            r.rss_kib as f64 / 1024.0,
            r.pss_kib as f64 / 1024.0
        );
    }
    println!();
    let find = |n: &str| rows.iter().find(|r| r.name == n);
    for ours in ["ours (threading)", "ours (forking)"] {
        let Some(o) = find(ours) else { continue };
        for peer in ["pyftpdlib", "vsftpd"] {
            if let Some(p) = find(peer) {
                println!(
                    "{ours} vs {peer}: throughput RETR {:.2}x, STOR {:.2}x; server CPU per byte RETR {:.2}x, STOR {:.2}x less; logins {:.2}x faster",
                    o.retr / p.retr,
                    o.stor / p.stor,
                    p.retr_cpu / o.retr_cpu.max(1e-9),
                    p.stor_cpu / o.stor_cpu.max(1e-9),
                    p.logins_ms / o.logins_ms
                );
            }
        }
    }
    for n in notes {
        println!("{n}");
    }
    Ok(())
}
