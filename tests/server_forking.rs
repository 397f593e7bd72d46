//! Forking-server behaviours, in a single-threaded test binary
//! (`harness = false`): libtest's threads and `fork()` do not mix well.
//!
//! Most checks drive the server with `handle_request` on the main thread,
//! after the client has connected and sent (the kernel queues both), so
//! the process forks while single-threaded.

mod support;

use std::fs::OpenOptions;
use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use socketserver::server::{
    ForkingTcpServer, ForkingUdpServer, ForkingUnixDatagramServer, ForkingUnixStreamServer, Hooks,
    Incoming, Server,
};
use socketserver::{Error, PeerAddr, Request, RequestHandler};
use support::{serve_in_thread, tcp_roundtrip, Echo, TIMEOUT};

const MSG: &[u8] = b"fork me\x00\xff\n";

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

fn echo_forking_tcp() {
    let mut server = ForkingTcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    let mut c = TcpStream::connect(server.server_address()).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(MSG).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    server.handle_request().unwrap();
    assert_eq!(read_all(&c), MSG);
    server.server_close();
    assert_eq!(server.strategy().active_children(), 0);
}

fn echo_forking_udp() {
    let mut server = ForkingUdpServer::bind("127.0.0.1:0", || Echo).unwrap();
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.send_to(MSG, server.server_address()).unwrap();
    server.handle_request().unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], MSG);
    server.server_close();
}

fn echo_forking_unix_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let mut server = ForkingUnixStreamServer::bind(&path, || Echo).unwrap();
    let mut c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(MSG).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    server.handle_request().unwrap();
    assert_eq!(read_all(&c), MSG);
    server.server_close();
    // The child never removes the file; the parent's close does.
    assert!(!path.exists());
}

fn echo_forking_unix_datagram() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.sock");
    let mut server = ForkingUnixDatagramServer::bind(&path, || Echo).unwrap();
    let c = UnixDatagram::bind(dir.path().join("c.sock")).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.send_to(MSG, &path).unwrap();
    server.handle_request().unwrap();
    let mut buf = [0u8; 256];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], MSG);
    server.server_close();
    assert!(!path.exists());
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
            _ => req.wfile().write_all(line.as_bytes()),
        }
    }
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

/// Children of this process whose state satisfies `want` (from /proc).
fn children_where(want: impl Fn(&str) -> bool) -> usize {
    let me = std::process::id().to_string();
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(i) = stat.rfind(')') else { continue };
        let f: Vec<&str> = stat[i + 2..].split_whitespace().collect();
        if f.len() > 1 && want(f[0]) && f[1] == me {
            n += 1;
        }
    }
    n
}

fn zombie_children() -> usize {
    children_where(|state| state == "Z")
}

/// Children in any state: running, exited-but-unreaped, anything.
fn all_children() -> usize {
    children_where(|_| true)
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
    // each as its pidfd fires, without waiting for another connection. So
    // every child must disappear entirely (exited *and* reaped) while the
    // server keeps running: waiting only for zombies to clear would pass
    // at once while the last child is still alive.
    let deadline = Instant::now() + TIMEOUT;
    while all_children() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} children left ({} zombies)",
            all_children(),
            zombie_children()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.shutdown();
    let mut server = thread.join().unwrap();
    assert_eq!(server.strategy().active_children(), 0);
    server.server_close();
    assert_eq!(zombie_children(), 0);
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

fn main() {
    let tests: &[(&str, fn())] = &[
        ("echo_forking_tcp", echo_forking_tcp),
        ("echo_forking_udp", echo_forking_udp),
        ("echo_forking_unix_stream", echo_forking_unix_stream),
        ("echo_forking_unix_datagram", echo_forking_unix_datagram),
        (
            "handler_error_in_forking_server_and_close_waits",
            handler_error_in_forking_server_and_close_waits,
        ),
        (
            "crashing_children_are_reaped_and_the_server_serves_on",
            crashing_children_are_reaped_and_the_server_serves_on,
        ),
        (
            "does_not_reap_a_child_it_did_not_start",
            does_not_reap_a_child_it_did_not_start,
        ),
        // Last: these start a serving thread, so later forks would happen
        // in a multi-threaded process.
        ("max_children_defers_accept", max_children_defers_accept),
        (
            "no_zombies_after_1000_connections",
            no_zombies_after_1000_connections,
        ),
    ];
    let filter = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        test();
        println!("test {name} ... ok");
    }
}
