//! Shared helpers for the FTP example's integration tests: start the
//! example binary on 127.0.0.1:0 with a temporary root, talk raw FTP to
//! it, and run real clients (Python ftplib, curl, lftp).
#![allow(dead_code)]

// Re-exported under the names these tests use (a test crate that uses
// only some of the helpers would otherwise warn).
#[allow(unused_imports)]
pub use crate::common_support::{wait_until, xorshift_bytes as pattern};

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The example binary, next to the test executable's directory
/// (`target/debug/deps/..` → `target/debug/examples/ftp`), built fresh.
///
/// The `ftp` example is declared with `test = true` so that `cargo test`
/// runs its unit tests, but then `cargo test` builds it only as a test
/// harness and never writes the plain binary. So build it here, once per
/// test process, with the same profile and target directory (cargo has
/// released its build lock by the time tests run). This also keeps a
/// stale binary from an earlier build from being tested by mistake.
pub fn ftp_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            let profile_dir = exe.parent().and_then(Path::parent).expect("profile dir");
            let target_dir = profile_dir.parent().expect("target dir");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "--quiet", "--example", "ftp", "--manifest-path"])
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
                .env("CARGO_TARGET_DIR", target_dir);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build --example ftp");
            assert!(status.success(), "cargo build --example ftp failed");
            profile_dir.join("examples").join("ftp")
        })
        .clone()
}

/// A running server; killed and reaped on drop, even when a test fails.
pub struct FtpServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Holds `root/` (served) and room for an `outside/` sibling.
    pub base: tempfile::TempDir,
    pub stderr_path: PathBuf,
}

impl FtpServer {
    /// Starts the server in `mode` with `--user bob:secret` plus `extra`.
    pub fn start(mode: &str, extra: &[&str]) -> FtpServer {
        Self::start_env(mode, extra, &[])
    }

    /// Like [`start`](Self::start) with extra environment variables.
    pub fn start_env(mode: &str, extra: &[&str], env: &[(&str, &str)]) -> FtpServer {
        Self::start_full(mode, "127.0.0.1:0", extra, env)
    }

    /// Starts the server listening on `listen`.
    pub fn start_full(mode: &str, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> FtpServer {
        let base = tempfile::tempdir().expect("tempdir");
        let root = base.path().join("root");
        fs::create_dir(&root).unwrap();
        let stderr_path = base.path().join("server.log");
        let stderr = fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(ftp_binary());
        cmd.arg("--root")
            .arg(&root)
            .args(["--listen", listen, "--mode", mode, "--user", "bob:secret"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .expect("start the ftp example (cargo test builds it)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut server = FtpServer {
            child: Some(child),
            addr: "127.0.0.1:0".parse().unwrap(),
            base,
            stderr_path,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server printed its listening line");
        let prefix = "listening on ftp://";
        let suffix = format!(" (mode {mode})\n");
        assert!(
            line.starts_with(prefix) && line.ends_with(&suffix),
            "unexpected first line {line:?}"
        );
        server.addr = line[prefix.len()..line.len() - suffix.len()]
            .parse()
            .unwrap();
        server
    }

    pub fn root(&self) -> PathBuf {
        self.base.path().join("root")
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self) -> String {
        format!("ftp://{}", self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not exit within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A raw control connection.
pub struct Ctrl {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Ctrl {
    /// Connects and returns the greeting too.
    pub fn connect(addr: SocketAddr) -> (Ctrl, u16, String) {
        Self::connect_with(addr, b"")
    }

    /// Connects, sends `prefix` (a PROXY protocol header, say) before
    /// anything else, and reads the greeting.
    pub fn connect_with(addr: SocketAddr, prefix: &[u8]) -> (Ctrl, u16, String) {
        Ctrl::over(TcpStream::connect(addr).unwrap(), prefix)
    }

    /// Sends `prefix` on a connected `stream` and reads the first reply.
    pub fn over(mut stream: TcpStream, prefix: &[u8]) -> (Ctrl, u16, String) {
        if !prefix.is_empty() {
            stream.write_all(prefix).unwrap();
        }
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = Ctrl { reader, stream };
        let (code, text) = c.read_reply();
        (c, code, text)
    }

    /// Connects, expects 220, and logs in as bob.
    pub fn login(addr: SocketAddr) -> Ctrl {
        let (mut c, code, _) = Ctrl::connect(addr);
        assert_eq!(code, 220);
        assert_eq!(c.cmd("USER bob").0, 331);
        assert_eq!(c.cmd("PASS secret").0, 230);
        c
    }

    /// Reads one (possibly multi-line) reply; code 0 means end of file.
    pub fn read_reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        let mut line = String::new();
        if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
            return (0, String::new());
        }
        text.push_str(&line);
        let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        if line.as_bytes().get(3) == Some(&b'-') {
            let end = format!("{code} ");
            loop {
                line.clear();
                if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                text.push_str(&line);
                if line.starts_with(&end) {
                    break;
                }
            }
        }
        (code, text)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends one command and reads its reply.
    pub fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    /// PASV and connect; returns the data connection.
    pub fn pasv(&mut self) -> TcpStream {
        let (code, text) = self.cmd("PASV");
        assert_eq!(code, 227, "{text}");
        let inner = &text[text.find('(').unwrap() + 1..text.find(')').unwrap()];
        let n: Vec<u16> = inner
            .split(',')
            .map(|x| x.trim().parse().unwrap())
            .collect();
        let addr = SocketAddr::from((
            [n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8],
            n[4] * 256 + n[5],
        ));
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Runs a data command over PASV and returns (final code, data).
    pub fn fetch(&mut self, line: &str) -> (u16, Vec<u8>) {
        let mut data = self.pasv();
        let (code, text) = self.cmd(line);
        if code != 150 {
            return (code, Vec::new());
        }
        let _ = text;
        let mut buf = Vec::new();
        data.read_to_end(&mut buf).unwrap();
        (self.read_reply().0, buf)
    }

    /// The control connection saw end of file within the read timeout.
    pub fn at_eof(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(self.reader.read(&mut buf), Ok(0) | Err(_))
    }
}

/// Runs a Python script (written to a temp file) with arguments; panics
/// with its output unless it succeeds.
pub fn python(script: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.py");
    fs::write(&path, script).unwrap();
    run_checked(Command::new("python3").arg(&path).args(args))
}

/// Runs a command with a 120 s bound; panics with its output on failure.
pub fn run_checked(cmd: &mut Command) -> Output {
    let out = run_bounded(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command, killing it if it outlives `limit`.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "{cmd:?} timed out; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Every file under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Whether `program` is an executable file on `PATH`.
pub fn installed(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(program))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// For a test that needs the external client `program`: `true` when it is
/// installed; otherwise prints `skipped: PROGRAM not installed` to stderr
/// and returns `false` (the test then returns, passing). When the program
/// is installed the test runs in full and can fail.
pub fn require_client(program: &str) -> bool {
    if installed(program) {
        return true;
    }
    eprintln!("skipped: {program} not installed");
    false
}

/// Every `--mode` the example accepts: the framework's five strategies.
#[allow(dead_code)]
pub const ALL_MODES: [&str; 5] = ["sync", "threading", "forking", "prefork", "async"];

/// The modes that serve several sessions at once (all but `sync`, which
/// serves one session at a time and leaves the next in the backlog).
#[allow(dead_code)]
pub const CONCURRENT_MODES: [&str; 4] = ["threading", "forking", "prefork", "async"];

/// The four `#[test]` functions of the concurrent modes, each calling
/// `super::BODY(mode)`; shared by [`per_concurrent_mode!`] and
/// [`per_mode!`].
#[macro_export]
macro_rules! concurrent_mode_tests {
    ($body:ident) => {
        #[test]
        fn threading() {
            super::$body("threading");
        }
        #[test]
        fn forking() {
            super::$body("forking");
        }
        #[test]
        fn prefork() {
            super::$body("prefork");
        }
        #[test]
        fn r#async() {
            super::$body("async");
        }
    };
}

/// Generates one `#[test]` per strategy that serves sessions
/// concurrently (every mode but `sync`).
#[macro_export]
macro_rules! per_concurrent_mode {
    ($name:ident, $body:ident) => {
        mod $name {
            $crate::concurrent_mode_tests!($body);
        }
    };
}

/// Generates one `#[test]` per strategy, `NAME::sync`, `NAME::threading`,
/// ..., each calling `BODY(mode)`: the same test in every mode, so a
/// failure names its strategy.
#[macro_export]
macro_rules! per_mode {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn sync() {
                super::$body("sync");
            }
            $crate::concurrent_mode_tests!($body);
        }
    };
}
