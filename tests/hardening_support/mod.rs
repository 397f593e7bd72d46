//! Helpers for the black-box hardening tests: start an example binary,
//! watch its descriptors and children through `/proc`, and misbehave as a
//! client (reset, half-close, stop reading).
#![allow(dead_code)]

// Re-exported under the names these tests use (a test crate that uses
// only some of the helpers would otherwise warn).
#[allow(unused_imports)]
pub use crate::common_support::{wait_until, xorshift_bytes as garbage};

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use socket2::SockRef;

/// Longest any single read or write in these tests may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// An example binary (`echo`, `ftp`) built next to the test executable's
/// directory (`target/debug/deps/..` → `target/debug/examples/NAME`).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("examples").join(name);
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

/// A running example server; killed and reaped by pid on drop, even when
/// a test fails midway.
pub struct Guard {
    child: Option<Child>,
    /// Holds the server's stderr (`log()`).
    logdir: tempfile::TempDir,
    /// The address from the server's ready line.
    pub addr: SocketAddr,
}

impl Guard {
    /// Starts `bin` with `args`, waits (bounded) for its ready line
    /// `listening on SCHEME://ADDR (mode MODE)` and parses the address.
    pub fn start(bin: &Path, args: &[&str], scheme: &str) -> Guard {
        let logdir = tempfile::tempdir().unwrap();
        let log = fs::File::create(logdir.path().join("server.log")).unwrap();
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().unwrap();
        let mut guard = Guard {
            child: Some(child),
            logdir,
            addr: "127.0.0.1:0".parse().unwrap(),
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut out = BufReader::new(stdout);
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the server never blocks on a full pipe.
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server printed its ready line");
        let prefix = format!("listening on {scheme}://");
        let start = line.find(&prefix).expect("ready line") + prefix.len();
        let end = line[start..].find(' ').expect("ready line") + start;
        guard.addr = line[start..end].parse().expect("address in ready line");
        guard
    }

    /// What the server wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.logdir.path().join("server.log")).unwrap_or_default()
    }

    /// The server's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends SIGTERM and waits (bounded, 10 s) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        sigterm(self.pid());
        self.terminate_wait()
    }

    /// Waits (bounded, 10 s) for the exit status after a signal was sent.
    pub fn terminate_wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM to one pid we started.
pub fn sigterm(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// Open descriptors of `pid` (`/proc/PID/fd`).
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `(pid, state)` of every process whose parent is `ppid`.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may contain spaces and ')'.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut fields = stat[close + 1..].split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let parent: i32 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        if parent == ppid {
            out.push((pid, state));
        }
    }
    out
}

/// Zombie children of `ppid`.
pub fn zombies_of(ppid: i32) -> Vec<i32> {
    children_of(ppid)
        .into_iter()
        .filter(|&(_, s)| s == 'Z')
        .map(|(p, _)| p)
        .collect()
}

/// Connects with read and write timeouts set.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Sends `data` from a second thread while reading the echo on this one
/// (so neither side's buffers deadlock), and checks it comes back exactly.
/// With `half_close` the write side is shut down afterwards and the echo
/// must end in EOF.
pub fn echo_exact(s: &TcpStream, data: &[u8], half_close: bool) {
    let mut w = s.try_clone().unwrap();
    let payload = data.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&payload).unwrap();
        if half_close {
            w.shutdown(Shutdown::Write).unwrap();
        }
    });
    let mut back = vec![0u8; data.len()];
    let mut r = s.try_clone().unwrap();
    r.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(
        back == data,
        "echo differs from what was sent ({} bytes)",
        data.len()
    );
    if half_close {
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "bytes after the echo: {}", rest.len());
    }
}

/// A fresh connection that echoes one short message.
pub fn probe(addr: SocketAddr) {
    let s = connect(addr);
    echo_exact(&s, b"probe\n", true);
}

/// Connects, optionally sends `data`, and resets (SO_LINGER 0, close):
/// the server sees RST instead of FIN.
pub fn connect_and_reset(addr: SocketAddr, data: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    if !data.is_empty() {
        s.write_all(data).unwrap();
    }
    SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

/// A client that writes without ever reading, until the server's writes
/// back to it must block (both directions' buffers are full). Bounded by
/// `max` bytes and by time; returns the socket still open and the byte
/// count written.
pub fn stalled_client(addr: SocketAddr, max: usize) -> (TcpStream, usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    // Small buffers so "full" comes quickly.
    SockRef::from(&s).set_recv_buffer_size(4096).unwrap();
    s.set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let chunk = garbage(64 * 1024, 7);
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while sent < max && Instant::now() < deadline {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => panic!("stalled client write failed: {e}"),
        }
    }
    (s, sent)
}

/// Nothing accepts on `addr` any more (connection refused).
pub fn not_listening(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

/// What each descriptor of `pid` points to, for failure messages.
pub fn fd_list(pid: i32) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = fs::read_link(e.path())
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    format!("{}->{target}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
