//! The servers that fork, in a test binary without libtest's threads
//! (`harness = false`): libtest's threads and `fork()` do not mix well.
//!
//! First the one generic test over all twenty transport × strategy
//! combinations (`strategies/mod.rs`), then forking-specific behaviours.
//! Most forking checks drive the server with `handle_request` on the main
//! thread, after the client has connected and sent (the kernel queues
//! both), so the process forks while single-threaded.

mod strategies;
mod support;

use std::fs::OpenOptions;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use socketserver::server::{ForkingTcpServer, Hooks, Incoming, Server};
use socketserver::{Error, PeerAddr, Request, RequestHandler};
use support::{serve_in_thread, tcp_roundtrip, Echo, TIMEOUT};

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

/// Appends every `handle_error` call (made in the child) to a file, and a
/// `closed` line a moment *after* each connection was closed, so only a
/// `server_close` that waits for its children sees a complete log.
struct FileLog(PathBuf);

impl FileLog {
    fn append(&self, line: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .unwrap();
        // One write per line: `writeln!` on a `File` issues the text and
        // the newline as two writes, which children appending at the same
        // moment interleave ("closedclosed\n\n").
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
}

impl Hooks for FileLog {
    fn handle_error(&self, peer: &PeerAddr, error: &Error) {
        self.append(&format!("{peer} {error}"));
    }

    fn shutdown_request(&self, request: Incoming) {
        request.shutdown();
        std::thread::sleep(Duration::from_millis(200));
        self.append("closed");
    }
}

/// "error" → Err, "panic" → panic, "segv" → killed by SIGSEGV, "kill" →
/// SIGKILL, "abort" → abort(); anything else is echoed.
struct Picky;

impl RequestHandler for Picky {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let mut line = String::new();
        req.rfile().read_line(&mut line)?;
        match line.trim() {
            "error" => Err(io::Error::other("handler failed on purpose")),
            "panic" => panic!("handler panicked on purpose"),
            "segv" => {
                // Rust's own SIGSEGV handler (stack-overflow detection)
                // swallows the first one and restores the default action.
                loop {
                    nix::sys::signal::raise(nix::sys::signal::Signal::SIGSEGV).unwrap();
                }
            }
            "kill" => {
                nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL).unwrap();
                Ok(())
            }
            "abort" => std::process::abort(),
            "exit" => socketserver::process::exit(7),
            "hold" => {
                // Echo, then stay a while. (Not until the client hangs
                // up: children forked from the test process hold copies
                // of the other clients' sockets.)
                req.wfile().write_all(line.as_bytes())?;
                req.wfile().flush()?;
                std::thread::sleep(Duration::from_millis(500));
                Ok(())
            }
            "fds" => {
                let reply: String = pipe_ends()
                    .into_iter()
                    .map(|(inode, mode)| format!("{inode} {mode}\n"))
                    .collect();
                req.wfile().write_all(reply.as_bytes())
            }
            "whoami" => {
                use socketserver::process::{current_process, Process};
                // Another thread of the child asks at the same time.
                let other = std::thread::spawn(current_process);
                let me = current_process();
                let same = other.join().is_ok_and(|o| o == me);
                let nested = Process::new(|| {});
                let reply = format!(
                    "{} {} {} {} {} {}\n",
                    me.name,
                    me.daemon,
                    same,
                    me.ppid,
                    me.pid,
                    nested.name()
                );
                req.wfile().write_all(reply.as_bytes())
            }
            "nested" => {
                // A forking server inside a forked child: its child (our
                // grandchild) reports who it is; then we, the middle one.
                use socketserver::process::{current_process, Process};
                let mut inner = ForkingTcpServer::bind("127.0.0.1:0", || Picky).unwrap();
                let (inner_reply, _) = send_line(&mut inner, b"whoami\n");
                inner.server_close();
                let nested = Process::new(|| {});
                let reply = format!(
                    "{} {} {}",
                    current_process().pid,
                    nested.name(),
                    String::from_utf8_lossy(&inner_reply)
                );
                req.wfile().write_all(reply.as_bytes())
            }
            "twice" => {
                req.wfile().write_all(line.as_bytes())?;
                line.clear();
                req.rfile().read_line(&mut line)?;
                req.wfile().write_all(line.as_bytes())
            }
            _ => req.wfile().write_all(line.as_bytes()),
        }
    }
}

/// This process's pipe descriptors: (pipe inode, access mode from
/// `fdinfo`: 0 read, 1 write).
fn pipe_ends() -> Vec<(u64, u32)> {
    let mut ends = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let Some(inode) = link
            .to_str()
            .and_then(|l| l.strip_prefix("pipe:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse().ok())
        else {
            continue;
        };
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
        if let Some(flags) = flags {
            ends.push((inode, flags & libc::O_ACCMODE as u32));
        }
    }
    ends
}

/// The exit-notes pipe is new with the server, and the server holds both
/// of its ends; its children hold the write end only (they report there),
/// and a second fork from the handler (a `Process`) holds neither.
fn a_forked_handler_holds_only_the_write_end_of_the_exit_notes() {
    let before: Vec<u64> = pipe_ends().into_iter().map(|(i, _)| i).collect();
    let mut server = ForkingTcpServer::bind("127.0.0.1:0", || Picky).unwrap();
    let mut notes: Vec<(u64, u32)> = pipe_ends()
        .into_iter()
        .filter(|(i, _)| !before.contains(i))
        .collect();
    notes.sort();
    assert_eq!(notes.len(), 2, "the server's new pipe ends: {notes:?}");
    assert_eq!(notes[0].0, notes[1].0, "one pipe, both ends: {notes:?}");
    let inode = notes[0].0;
    let (out, _) = send_line(&mut server, b"fds\n");
    let child: Vec<(u64, u32)> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let (i, m) = l.split_once(' ').unwrap();
            (i.parse().unwrap(), m.parse().unwrap())
        })
        .filter(|&(i, _)| i == inode)
        .collect();
    assert_eq!(
        child,
        vec![(inode, 1)],
        "the child's ends of the notes pipe"
    );
    // A process forked by the server's parent holds neither end.
    let mut other = socketserver::process::Process::new(move || {
        if pipe_ends().iter().any(|&(i, _)| i == inode) {
            socketserver::process::exit(3);
        }
    });
    other.start().unwrap();
    other.join().unwrap();
    assert_eq!(other.exitcode(), Some(0));
    server.server_close();
}

/// The parent holds no descriptor per child (exit notes, not a pidfd
/// each): with room for only a few more descriptors than it has, it still
/// runs twenty children at once.
fn running_children_cost_the_parent_no_descriptors() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const N: usize = 20;
    let mut server = ForkingTcpServer::bind("127.0.0.1:0", || Picky).unwrap();
    let addr = server.server_address();
    let mut clients: Vec<TcpStream> = (0..N)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(TIMEOUT)).unwrap();
            c.write_all(b"hold\n").unwrap();
            c
        })
        .collect();
    // Two free descriptor numbers: one for the connection being accepted
    // (the parent closes its copy after the fork) and one to spare. With
    // a pidfd per child the second child would not have fitted.
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(
        Resource::RLIMIT_NOFILE,
        support::lowest_free_fd(2) + 1,
        hard,
    )
    .unwrap();
    let served = (0..N).map(|_| server.handle_request()).collect::<Vec<_>>();
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    for r in served {
        r.unwrap();
    }
    assert_eq!(server.strategy().active_children(), N);
    for c in &mut clients {
        let mut line = [0u8; 5];
        c.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"hold\n");
    }
    clients.clear();
    server.server_close();
    assert_eq!(server.strategy().active_children(), 0);
}

fn send_line(server: &mut ForkingTcpServer, line: &[u8]) -> (Vec<u8>, u16) {
    let mut c = TcpStream::connect(server.server_address()).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    let port = c.local_addr().unwrap().port();
    c.write_all(line).unwrap();
    server.handle_request().unwrap();
    (read_all(&c), port)
}

fn handler_error_in_forking_server_and_close_waits() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("errors.log");
    let mut server = ForkingTcpServer::builder()
        .hooks(FileLog(log.clone()))
        .bind("127.0.0.1:0", || Picky)
        .unwrap();
    let (out1, port1) = send_line(&mut server, b"error\n");
    let (out2, port2) = send_line(&mut server, b"panic\n");
    assert!(out1.is_empty() && out2.is_empty());
    // The server serves on.
    assert_eq!(send_line(&mut server, b"fine\n").0, b"fine\n");
    server.server_close();
    assert_eq!(server.strategy().active_children(), 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines.iter().filter(|l| **l == "closed").count(), 3);
    assert!(text.contains(&format!(
        "127.0.0.1:{port1} I/O error: handler failed on purpose"
    )));
    assert!(text.contains(&format!(
        "127.0.0.1:{port2} panicked: handler panicked on purpose"
    )));
}

fn crashing_children_are_reaped_and_the_server_serves_on() {
    let mut server = ForkingTcpServer::bind("127.0.0.1:0", || Picky).unwrap();
    for what in [&b"segv\n"[..], b"kill\n", b"abort\n"] {
        let (out, _) = send_line(&mut server, what);
        assert!(out.is_empty());
    }
    assert_eq!(send_line(&mut server, b"still here\n").0, b"still here\n");
    // Every crashed child's sentinel fires; the loop's housekeeping reaps.
    let deadline = Instant::now() + TIMEOUT;
    while server.strategy().active_children() > 0 {
        assert!(Instant::now() < deadline, "children not reaped");
        std::thread::sleep(Duration::from_millis(5));
        server.service_actions();
    }
    server.server_close();
}

fn zombie_children() -> usize {
    support::children()
        .iter()
        .filter(|&&(_, s)| s == 'Z')
        .count()
}

/// Children in any state: running, exited-but-unreaped, anything.
fn all_children() -> usize {
    support::children().len()
}

/// Waits until every child of this process has exited *and* been reaped
/// (the server reaps; this only looks), at most `limit`.
fn all_children_gone_within(limit: Duration) {
    let deadline = Instant::now() + limit;
    while all_children() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} children left ({} zombies)",
            all_children(),
            zombie_children()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn does_not_reap_a_child_it_did_not_start() {
    let mut unrelated = Command::new("sh").args(["-c", "exit 72"]).spawn().unwrap();
    // Let it exit (it becomes our zombie) before the server runs.
    let deadline = Instant::now() + TIMEOUT;
    while zombie_children() == 0 {
        assert!(Instant::now() < deadline, "unrelated child did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut server = ForkingTcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    for _ in 0..5 {
        let mut c = TcpStream::connect(server.server_address()).unwrap();
        c.write_all(b"x").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        server.handle_request().unwrap();
        assert_eq!(read_all(&c), b"x");
        server.service_actions();
    }
    server.server_close();
    let status = unrelated.wait().unwrap();
    assert_eq!(status.code(), Some(72), "the owner must still collect it");
}

fn no_zombies_after_1000_connections() {
    let server = ForkingTcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    let addr = server.server_address();
    let (handle, thread) = serve_in_thread(server);
    for i in 0..1000u32 {
        let msg = i.to_string();
        assert_eq!(tcp_roundtrip(addr, msg.as_bytes()), msg.as_bytes());
    }
    // Children exit right after their connection closes; the loop reaps
    // each as its exit note arrives, without waiting for another
    // connection. So
    // every child must disappear entirely (exited *and* reaped) while the
    // server keeps running: waiting only for zombies to clear would pass
    // at once while the last child is still alive.
    all_children_gone_within(TIMEOUT);
    handle.shutdown();
    let mut server = thread.join().unwrap();
    assert_eq!(server.strategy().active_children(), 0);
    server.server_close();
    assert_eq!(zombie_children(), 0);
}

/// Echoes one line, then keeps its child alive for [`LINGER`].
struct EchoThenLinger;

const LINGER: Duration = Duration::from_secs(3);

impl RequestHandler for EchoThenLinger {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        let mut line = String::new();
        req.rfile().read_line(&mut line)?;
        req.wfile().write_all(line.as_bytes())?;
        std::thread::sleep(LINGER);
        Ok(())
    }
}

/// More live children than one read of the exit notes takes (128): all
/// of them are reaped once they exit, read after read. (The handler, not
/// the client, keeps each child alive: a child forked from this test
/// process inherits the client sockets the test holds open.)
fn more_children_than_one_poll_are_all_reaped() {
    const N: usize = 150;
    let server = ForkingTcpServer::builder()
        .max_children(N + 10)
        .bind("127.0.0.1:0", || EchoThenLinger)
        .unwrap();
    let addr = server.server_address();
    let (handle, thread) = serve_in_thread(server);
    let started = Instant::now();
    for i in 0..N {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        let msg = format!("{i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    assert!(
        started.elapsed() < LINGER,
        "connecting took longer than a child lives: not {N} children at once"
    );
    assert!(
        all_children() >= N,
        "{} children for {N} connections",
        all_children()
    );
    all_children_gone_within(LINGER + TIMEOUT);
    handle.shutdown();
    let mut server = thread.join().unwrap();
    assert_eq!(server.strategy().active_children(), 0);
    server.server_close();
}

fn max_children_defers_accept() {
    let mut server = ForkingTcpServer::builder()
        .max_children(1)
        .bind("127.0.0.1:0", || Picky)
        .unwrap();
    let addr = server.server_address();
    // The holder's child waits for a line that comes later.
    let mut holder = TcpStream::connect(addr).unwrap();
    server.handle_request().unwrap();
    let mut waiter = TcpStream::connect(addr).unwrap();
    waiter.write_all(b"two\n").unwrap();
    waiter.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(server.strategy().active_children(), 1);
    let (handle, thread) = serve_in_thread(server);
    // While the only child runs, the loop does not accept the waiter.
    std::thread::sleep(Duration::from_millis(300));
    waiter.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(
        waiter.read(&mut buf).map_err(|e| e.kind()),
        Err(io::ErrorKind::WouldBlock)
    );
    waiter.set_nonblocking(false).unwrap();
    holder.write_all(b"one\n").unwrap();
    assert_eq!(read_all(&mut holder), b"one\n");
    waiter.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"two\n");
    handle.shutdown();
    thread.join().unwrap().server_close();
}

/// `process::exit(7)` in a forked child's handler ends that child with
/// status 7: the exit is not caught as a "non-string panic payload".
fn process_exit_in_a_forked_handler_ends_the_child() {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("errors.log");
    let mut server = ForkingTcpServer::builder()
        .hooks(FileLog(log.clone()))
        .bind("127.0.0.1:0", || Picky)
        .unwrap();
    let (out, _) = send_line(&mut server, b"exit\n");
    assert!(out.is_empty());
    let pid = server.strategy().child_pids()[0];
    // Look at the exit status without reaping: the server reaps its own.
    let status = waitid(
        Id::Pid(nix::unistd::Pid::from_raw(pid)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
    )
    .unwrap();
    assert!(
        matches!(status, WaitStatus::Exited(_, 7)),
        "child ended with {status:?}"
    );
    server.server_close();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("panic"), "exit reported as an error: {text}");
}

/// A forked child knows who it is: `current_process()` in its handler
/// gives the server's name for its children, the child's own pid and the
/// server as parent, the same on another thread of the child, and a
/// `Process` it creates is numbered beneath it (`Process-N:1`, as in
/// Python).
fn a_forked_handler_knows_who_it_is() {
    let mut server = ForkingTcpServer::builder()
        .bind("127.0.0.1:0", || Picky)
        .unwrap();
    let (out, _) = send_line(&mut server, b"whoami\n");
    let text = String::from_utf8(out).unwrap();
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f.len(), 6, "{text:?}");
    assert_eq!(f[..3], ["socketserver-child", "false", "true"], "{text:?}");
    assert_eq!(f[3], std::process::id().to_string(), "{text:?}");
    assert_eq!(f[4], server.strategy().child_pids()[0].to_string());
    let n = f[5]
        .strip_prefix("Process-")
        .and_then(|rest| rest.strip_suffix(":1"))
        .unwrap_or_else(|| panic!("nested name {:?}", f[5]));
    assert!(n.parse::<u32>().is_ok(), "nested name {:?}", f[5]);
    server.server_close();
}

/// A forked child that runs a forking server of its own: the grandchild
/// knows its parent and its `N:1` identity (the middle child's state is
/// stored in place, the grandchild's beside it, and neither overwrites
/// the other).
fn a_forked_childs_own_forked_child_knows_who_it_is() {
    let mut server = ForkingTcpServer::bind("127.0.0.1:0", || Picky).unwrap();
    let (out, _) = send_line(&mut server, b"nested\n");
    server.server_close();
    let text = String::from_utf8(out).unwrap();
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f.len(), 8, "{text:?}");
    let (middle_pid, middle_nested) = (f[0], f[1]);
    assert_eq!(f[2..5], ["socketserver-child", "false", "true"], "{text:?}");
    assert_eq!(f[5], middle_pid, "the grandchild's parent: {text:?}");
    assert_ne!(f[6], middle_pid, "{text:?}");
    // The middle child's server numbered its child N:1 (from a block of
    // identities it took), its own Process got a later number N:M.
    let (n, m) = middle_nested
        .strip_prefix("Process-")
        .and_then(|rest| rest.rsplit_once(':'))
        .unwrap_or_else(|| panic!("middle nested name {text:?}"));
    assert_ne!(m, "1", "two children with one identity: {text:?}");
    assert_eq!(f[7], format!("Process-{n}:1:1"), "{text:?}");
}

/// Runs as a child process: a synchronous server whose handler fails
/// once, with or without a `tracing` subscriber (`STDERR_ROLE`).
fn stderr_child(role: &str) {
    let level = match role {
        "subscriber" | "reset-info" | "forking-reset-info" => Some(tracing::Level::INFO),
        "reset-debug" => Some(tracing::Level::DEBUG),
        _ => None,
    };
    if let Some(level) = level {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_max_level(level)
            .init();
    }
    if role.starts_with("forking-") {
        // The child serves the request; server_close waits for it and
        // reaps it, so its exit status is logged (or not) before we exit.
        let mut server = ForkingTcpServer::bind("127.0.0.1:0", || Picky).unwrap();
        println!("{}", server.server_address().port());
        server.handle_request().unwrap();
        server.server_close();
        return;
    }
    let mut server = socketserver::TcpServer::bind("127.0.0.1:0", || Picky).unwrap();
    println!("{}", server.server_address().port());
    server.handle_request().unwrap();
    server.server_close();
}

fn stderr_of(role: &str) -> (String, u16) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("STDERR_ROLE", role)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", port.trim().parse::<u16>().unwrap())).unwrap();
    let client_port = c.local_addr().unwrap().port();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(b"error\n").unwrap();
    assert!(read_all(&c).is_empty());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        client_port,
    )
}

/// Without a subscriber `handle_error` writes one line to stderr (Python
/// prints the traceback there); with one it logs at error level.
fn handler_errors_reach_stderr_with_or_without_a_subscriber() {
    let (text, port) = stderr_of("plain");
    assert_eq!(
        text,
        format!(
            "socketserver: error while handling request from 127.0.0.1:{port}: \
             I/O error: handler failed on purpose\n"
        )
    );
    let (text, port) = stderr_of("subscriber");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("ERROR")
            && text.contains("error while handling request")
            && text.contains(&format!("127.0.0.1:{port}")),
        "{text}"
    );
}

/// A peer that resets mid-request is normal traffic: nothing at info
/// level; at debug one "went away" line, inside the connection's span
/// (peer, strategy), and the per-connection line with duration and bytes.
fn peer_resets_are_debug_and_connections_are_spanned() {
    let reset = |role: &str| {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("STDERR_ROLE", role)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut port = String::new();
        io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut port)
            .unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", port.trim().parse::<u16>().unwrap())).unwrap();
        let client_port = c.local_addr().unwrap().port();
        c.set_read_timeout(Some(TIMEOUT)).unwrap();
        c.write_all(b"twice\n").unwrap();
        let mut echo = [0u8; 6];
        c.read_exact(&mut echo).unwrap();
        // Reset: close with SO_LINGER 0 while the handler waits for more.
        socket2::SockRef::from(&c)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(c);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            client_port,
        )
    };
    let (info, _) = reset("reset-info");
    assert_eq!(info, "", "a peer reset was logged above debug");
    // Forking: nor does the parent log the child's end as a failure (the
    // child exits 0 after a reset; it used to exit 1, and the parent
    // logged a WARN line per reset connection).
    let (info, _) = reset("forking-reset-info");
    let loud: Vec<&str> = info
        .lines()
        .filter(|l| !l.contains("server closed"))
        .collect();
    assert!(
        loud.is_empty(),
        "a forked child's peer reset was logged above debug: {loud:?}"
    );
    let (debug, port) = reset("reset-debug");
    let span = format!("conn{{peer=127.0.0.1:{port} strategy=sync}}");
    let went = debug
        .lines()
        .find(|l| l.contains("peer went away mid-request"))
        .unwrap_or_else(|| panic!("no debug line for the reset: {debug}"));
    assert!(went.contains("DEBUG") && went.contains(&span), "{went}");
    let closed = debug
        .lines()
        .find(|l| l.contains("connection closed"))
        .unwrap_or_else(|| panic!("no per-connection line: {debug}"));
    assert!(
        closed.contains(&span)
            && closed.contains("duration=")
            && closed.contains("bytes_in=6")
            && closed.contains("bytes_out=6"),
        "{closed}"
    );
}

/// Writes its pid, then waits for the client to close.
struct TellPid;

impl RequestHandler for TellPid {
    fn handle(&mut self, req: &mut Request) -> io::Result<()> {
        req.wfile()
            .write_all(format!("{}\n", std::process::id()).as_bytes())?;
        req.wfile().flush()?;
        let mut rest = Vec::new();
        req.rfile().read_to_end(&mut rest)?;
        Ok(())
    }
}

/// A child holds neither the listening socket nor the agent port: only
/// the parent answers agent checks, and once it has closed the port a
/// balancer's check is refused at once, however long children still run.
fn children_do_not_hold_the_agent_port() {
    let mut b = ForkingTcpServer::builder();
    b.health("127.0.0.1:0".parse().unwrap())
        .block_on_close(false);
    let mut server = b.bind("127.0.0.1:0", || TellPid).unwrap();
    let agent = server.health_address().unwrap();
    let link = |fd: &dyn std::os::fd::AsFd| {
        format!("socket:[{}]", nix::sys::stat::fstat(fd).unwrap().st_ino)
    };
    let agent_link = link(&server.health_socket().unwrap());
    let listener_link = link(&*server.socket().unwrap());
    let c = TcpStream::connect(server.server_address()).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    server.handle_request().unwrap();
    let mut line = String::new();
    io::BufReader::new(&c).read_line(&mut line).unwrap();
    let child: i32 = line.trim().parse().unwrap();
    assert_eq!(
        support::count_links(std::process::id() as i32, &agent_link),
        1,
        "the parent lost its agent port"
    );
    assert!(
        support::count_links(child, &listener_link) == 0,
        "the child holds the listening socket"
    );
    assert!(
        support::count_links(child, &agent_link) == 0,
        "the child holds the agent port"
    );
    server.server_close();
    drop(server);
    match TcpStream::connect(agent) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("the agent port accepts after the server closed"),
    }
    c.shutdown(Shutdown::Write).unwrap();
    let _ = read_all(&c);
    // `block_on_close(false)`: the closed server left its child to us.
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(child), None);
}

fn main() {
    if let Ok(role) = std::env::var("STDERR_ROLE") {
        return stderr_child(&role);
    }
    let mut tests: Vec<support::Test> = strategies::ALL.to_vec();
    tests.extend_from_slice(&[
        ("handler_error_in_forking_server_and_close_waits", || {
            handler_error_in_forking_server_and_close_waits();
            Ok(())
        }),
        (
            "crashing_children_are_reaped_and_the_server_serves_on",
            || {
                crashing_children_are_reaped_and_the_server_serves_on();
                Ok(())
            },
        ),
        ("children_do_not_hold_the_agent_port", || {
            children_do_not_hold_the_agent_port();
            Ok(())
        }),
        ("does_not_reap_a_child_it_did_not_start", || {
            does_not_reap_a_child_it_did_not_start();
            Ok(())
        }),
        ("a_forked_handler_knows_who_it_is", || {
            a_forked_handler_knows_who_it_is();
            Ok(())
        }),
        ("a_forked_childs_own_forked_child_knows_who_it_is", || {
            a_forked_childs_own_forked_child_knows_who_it_is();
            Ok(())
        }),
        ("process_exit_in_a_forked_handler_ends_the_child", || {
            process_exit_in_a_forked_handler_ends_the_child();
            Ok(())
        }),
        (
            "handler_errors_reach_stderr_with_or_without_a_subscriber",
            || {
                handler_errors_reach_stderr_with_or_without_a_subscriber();
                Ok(())
            },
        ),
        ("peer_resets_are_debug_and_connections_are_spanned", || {
            peer_resets_are_debug_and_connections_are_spanned();
            Ok(())
        }),
        (
            "a_forked_handler_holds_only_the_write_end_of_the_exit_notes",
            || {
                a_forked_handler_holds_only_the_write_end_of_the_exit_notes();
                Ok(())
            },
        ),
        ("running_children_cost_the_parent_no_descriptors", || {
            running_children_cost_the_parent_no_descriptors();
            Ok(())
        }),
        ("max_children_defers_accept", || {
            max_children_defers_accept();
            Ok(())
        }),
        ("more_children_than_one_poll_are_all_reaped", || {
            more_children_than_one_poll_are_all_reaped();
            Ok(())
        }),
        ("no_zombies_after_1000_connections", || {
            no_zombies_after_1000_connections();
            Ok(())
        }),
    ]);
    support::run(&tests);
}
