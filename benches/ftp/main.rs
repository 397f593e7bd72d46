//! FTP server benchmark: the `ftp` example against pyftpdlib and vsftpd,
//! side by side in one run, on loopback.
//!
//! ```text
//! cargo bench --bench ftp
//! ```
//!
//! Measures, per server (ours in each concurrent mode: threading, forking,
//! prefork, async; sync serves one session at a time and cannot take 100
//! concurrent logins; then ours and vsftpd again over explicit FTPS with
//! TLS control and `PROT P` data connections that resume the control
//! session): RETR and STOR throughput of a 256 MiB file (3 rounds,
//! round-robin over the servers, of 4 sessions with one RETR and one STOR
//! each: the median transfer), the server's CPU seconds per GiB moved (the on-CPU time of
//! every thread of the server's process tree from `schedstat`, in
//! nanoseconds, summed over all transfers and divided by all bytes), how
//! busy the bench's client was during RETR (its thread's CPU time over
//! the wall time: near 100 % it, not the server, would be the limit), the
//! wall time
//! for 100 concurrent logins (median of 3),
//! and the server's memory with 100 logged-in clients (RSS and PSS summed
//! over the server's process tree, so per-connection processes count).
//! A missing peer (`pip install pyftpdlib`, `apt-get install vsftpd`) is
//! reported and skipped. Everything listens on 127.0.0.1 with port 0 or a
//! free port, and every loop is bounded.
mod client;
mod peers;
mod procfs;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use client::{Client, Server};
use peers::{start_ours, start_pyftpdlib, start_vsftpd, TlsFiles};
use procfs::{own_thread_cpu, tree_cpu, tree_cpu_exact, tree_memory};

const FILE_SIZE: usize = 256 << 20;
const REPS: usize = 3;
/// Transfers of each kind per server per round.
const PER_ROUND: usize = 4;
const CLIENTS: usize = 100;
const TIMEOUT: Duration = Duration::from_secs(60);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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
    /// The bench client's CPU time during RETRs over their wall time.
    client_busy: f64,
}

/// Everything one server's transfers measured, summed over the rounds.
#[derive(Debug, Default)]
struct Totals {
    /// MiB/s of each RETR and each STOR.
    retr: Vec<f64>,
    stor: Vec<f64>,
    /// Server CPU seconds (exact, from schedstat) during RETRs and STORs.
    retr_cpu: f64,
    stor_cpu: f64,
    /// The same from the 10 ms tick counters (a cross-check that no
    /// server task exited unmeasured).
    ticks_cpu: f64,
    /// The client thread's CPU seconds and the wall seconds of RETRs.
    client_cpu: f64,
    retr_wall: f64,
}

/// One round on one server: PER_ROUND sessions of one RETR of the big
/// file and one STOR of as many bytes, each transfer measured alone.
/// A session per pair, not one for the round: a TLS 1.3 client such as
/// rustls uses each session ticket once, and ours (with
/// `--tls-require-reuse`) issues two on the control connection.
fn transfer_round(
    server: &Server,
    root: &Path,
    chunk: &[u8],
    round: usize,
    t: &mut Totals,
) -> Result<()> {
    let pid = server.child.id();
    for k in 0..PER_ROUND {
        let mut c = Client::login(server).map_err(|e| format!("login: {e}"))?;
        let ticks0 = tree_cpu(pid);
        let (cpu0, own0) = (tree_cpu_exact(pid), own_thread_cpu());
        let mibs = c.retr("big.bin").map_err(|e| format!("RETR: {e}"))?;
        let (cpu1, own1) = (tree_cpu_exact(pid), own_thread_cpu());
        t.retr.push(mibs);
        t.retr_cpu += cpu1 - cpu0;
        t.client_cpu += own1 - own0;
        t.retr_wall += (FILE_SIZE >> 20) as f64 / mibs;
        let name = format!("up/stor-{round}-{k}.bin");
        let cpu0 = tree_cpu_exact(pid);
        let mibs = c.stor(&name, chunk).map_err(|e| format!("STOR: {e}"))?;
        let cpu1 = tree_cpu_exact(pid);
        t.stor.push(mibs);
        t.stor_cpu += cpu1 - cpu0;
        t.ticks_cpu += tree_cpu(pid) - ticks0;
        let _ = c.cmd("QUIT", 221);
        let _ = fs::remove_file(root.join(&name));
    }
    Ok(())
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
    let tls = TlsFiles::make(scratch.path())?;
    let tls = Some(&tls);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    type Starter<'a> = Box<dyn Fn() -> Result<Server> + 'a>;
    let starters: Vec<(&str, Starter)> = vec![
        (
            "ours (threading)",
            Box::new(|| start_ours(&bin, &root, "threading", None)),
        ),
        (
            "ours (forking)",
            Box::new(|| start_ours(&bin, &root, "forking", None)),
        ),
        (
            "ours (prefork)",
            Box::new(|| start_ours(&bin, &root, "prefork", None)),
        ),
        (
            "ours (async)",
            Box::new(|| start_ours(&bin, &root, "async", None)),
        ),
        (
            "pyftpdlib",
            Box::new(|| start_pyftpdlib(&root, scratch.path())),
        ),
        (
            "vsftpd",
            Box::new(|| start_vsftpd(&root, scratch.path(), None)),
        ),
        (
            "ours TLS (threading)",
            Box::new(|| start_ours(&bin, &root, "threading", tls)),
        ),
        (
            "ours TLS (forking)",
            Box::new(|| start_ours(&bin, &root, "forking", tls)),
        ),
        (
            "ours TLS (prefork)",
            Box::new(|| start_ours(&bin, &root, "prefork", tls)),
        ),
        (
            "ours TLS (async)",
            Box::new(|| start_ours(&bin, &root, "async", tls)),
        ),
        (
            "vsftpd TLS",
            Box::new(|| start_vsftpd(&root, scratch.path(), tls)),
        ),
    ];
    // FTP_BENCH_ALT=/path/to/another/ftp adds that build of the example
    // (threading mode) as two rows, "alt (threading)" and "alt TLS
    // (threading)": an A/B test of a server change against the current
    // one within one run.
    let alt = std::env::var_os("FTP_BENCH_ALT").map(PathBuf::from);
    let mut starters = starters;
    if let Some(alt) = &alt {
        let root = &root;
        starters.insert(
            1,
            (
                "alt (threading)",
                Box::new(move || start_ours(alt, root, "threading", None)),
            ),
        );
        starters.push((
            "alt TLS (threading)",
            Box::new(move || start_ours(alt, root, "threading", tls)),
        ));
    }
    // `cargo bench --bench ftp -- vsftpd` runs only the matching servers.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let mut servers: Vec<(Server, Row, Totals)> = Vec::new();
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
                servers.push((s, row, Totals::default()));
            }
            Err(e) => notes.push(format!("{name}: skipped: {e}")),
        }
    }
    // Rounds go round-robin across servers, so background noise on this
    // shared machine hits every server alike; within a round a server
    // gets PER_ROUND transfers of each kind.
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 % 251) as u8).collect();
    for i in 0..REPS {
        let mut k = 0;
        while k < servers.len() {
            let (server, row, totals) = &mut servers[k];
            eprintln!("transfer round {} of {REPS}: {}", i + 1, row.name);
            match transfer_round(server, &root, &chunk, i, totals) {
                Ok(()) => k += 1,
                Err(e) => {
                    notes.push(format!("{}: dropped: {e}", row.name));
                    servers.remove(k);
                }
            }
        }
    }
    let gib_each = FILE_SIZE as f64 / (1u64 << 30) as f64;
    for (server, mut row, t) in servers {
        eprintln!("{} concurrent logins: {}", CLIENTS, row.name);
        row.retr = median(t.retr.clone());
        row.stor = median(t.stor.clone());
        row.retr_cpu = t.retr_cpu / (t.retr.len() as f64 * gib_each);
        row.stor_cpu = t.stor_cpu / (t.stor.len() as f64 * gib_each);
        row.client_busy = t.client_cpu / t.retr_wall;
        let exact = t.retr_cpu + t.stor_cpu;
        if t.ticks_cpu > exact * 1.2 + 0.1 {
            notes.push(format!(
                "{}: tick counters saw {:.2} s of server CPU, schedstat {exact:.2} s: some task exited unmeasured",
                row.name, t.ticks_cpu
            ));
        }
        // The login and memory columns are measured on the plain rows
        // (vsftpd TLS refuses plain logins; the TLS rows are throughput).
        if server.tls.is_some() {
            row.logins_ms = f64::NAN;
            rows.push(row);
            drop(server);
            continue;
        }
        match logins_and_memory(&server, &mut row) {
            Ok(()) => rows.push(row),
            Err(e) => notes.push(format!("{}: dropped: {e}", row.name)),
        }
        drop(server);
    }
    println!();
    println!(
        "FTP benchmark, 127.0.0.1, {} MiB file, {REPS} rounds of {PER_ROUND} sessions of one RETR and one STOR per server: median throughput, server CPU = total CPU / total bytes; {CLIENTS} clients",
        FILE_SIZE >> 20
    );
    println!();
    println!("| server | RETR MiB/s | STOR MiB/s | server CPU s/GiB RETR / STOR | client CPU busy during RETR | {CLIENTS} concurrent logins (ms) | memory with {CLIENTS} clients: RSS / PSS (MiB) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let failed = match r.login_failures {
            0 => String::new(),
            n => format!(" ({n} of {CLIENTS} got no greeting in 10 s)"),
        };
        // Login and memory columns exist for the plain rows only.
        let logins_and_memory = if r.logins_ms.is_nan() {
            "– | –".to_string()
        } else {
            format!(
                "{:.1}{failed} | {:.1} / {:.1}",
                r.logins_ms,
                r.rss_kib as f64 / 1024.0,
                r.pss_kib as f64 / 1024.0
            )
        };
        println!(
            "| {} | {:.0} | {:.0} | {:.2} / {:.2} | {:.0} % | {logins_and_memory} |",
            r.name,
            r.retr,
            r.stor,
            r.retr_cpu,
            r.stor_cpu,
            r.client_busy * 100.0,
        );
    }
    println!();
    let find = |n: &str| rows.iter().find(|r| r.name == n);
    for ours in [
        "ours (threading)",
        "ours (forking)",
        "ours (prefork)",
        "ours (async)",
    ] {
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
    for ours in [
        "ours TLS (threading)",
        "ours TLS (forking)",
        "ours TLS (prefork)",
        "ours TLS (async)",
    ] {
        let (Some(o), Some(p)) = (find(ours), find("vsftpd TLS")) else {
            continue;
        };
        println!(
            "{ours} vs vsftpd TLS: throughput RETR {:.2}x, STOR {:.2}x; server CPU per byte RETR {:.2}x, STOR {:.2}x less",
            o.retr / p.retr,
            o.stor / p.stor,
            p.retr_cpu / o.retr_cpu.max(1e-9),
            p.stor_cpu / o.stor_cpu.max(1e-9),
        );
    }
    for n in notes {
        println!("{n}");
    }
    Ok(())
}
