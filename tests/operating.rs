//! Operating helpers across real processes: socket activation
//! (`LISTEN_FDS`), the pid file against another process's lock, and accept
//! recovery after `EMFILE`.
//!
//! `harness = false`: socket activation needs the process to be exec'd
//! with sockets at descriptors 3.. and to edit its own environment, which is
//! only sound in a single-threaded `main`. This binary re-executes itself
//! (through Python, which sets up the descriptors) with `OPERATING_CHILD`
//! naming the role to play.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use socketserver::server::{
    activation, drop_privileges, refuse_root, PidFile, Server, ServerBuilder, Strategy,
    TcpTransport, Threading,
};
use socketserver::{Error, Request, RequestHandler};

const T: Duration = Duration::from_secs(10);

/// Python: bind 127.0.0.1:0, print the port, put the socket at fd 3 and
/// exec argv[1] with LISTEN_FDS=1 and LISTEN_PID=<the same pid>.
const ACTIVATE_PY: &str = r#"
import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
env = dict(os.environ, LISTEN_FDS=os.environ.get("TEST_LISTEN_FDS", "1"), LISTEN_PID=sys.argv[2])
if env["LISTEN_PID"] == "self":
    env["LISTEN_PID"] = str(os.getpid())
os.execve(sys.argv[1], [sys.argv[1]], env)
"#;

struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn child_activation() {
    if std::env::var("OPERATING_CHILD").as_deref() == Ok("activation-bad") {
        let err = activation::tcp_listeners().unwrap_err().to_string();
        assert!(err.contains("LISTEN_FDS is not a count"), "{err}");
        assert!(std::env::var_os("LISTEN_FDS").is_none());
        return;
    }
    let listeners = activation::tcp_listeners().expect("tcp_listeners");
    for var in ["LISTEN_FDS", "LISTEN_PID"] {
        assert!(std::env::var_os(var).is_none(), "{var} left in environment");
    }
    if std::env::var("OPERATING_CHILD").as_deref() == Ok("activation-other") {
        assert!(listeners.is_empty(), "took sockets meant for another pid");
        return;
    }
    assert_eq!(listeners.len(), 1);
    let flags = nix::fcntl::fcntl(listeners[0].as_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert!(
        flags & libc::FD_CLOEXEC != 0,
        "inherited socket not CLOEXEC"
    );
    // A second take must not create a second owner of fd 3.
    assert!(activation::listen_fds().unwrap().is_empty());
    let (mut c, _) = listeners[0].accept().expect("accept");
    c.write_all(b"activated\n").unwrap();
}

fn run_activation(listen_pid: &str, role: &str) -> (Reap, Option<u16>) {
    let exe = std::env::current_exe().unwrap();
    let fds = if role == "activation-bad" { "x" } else { "1" };
    let mut child = Reap(
        Command::new("python3")
            .env("TEST_LISTEN_FDS", fds)
            .args(["-c", ACTIVATE_PY])
            .arg(&exe)
            .arg(listen_pid)
            .env("OPERATING_CHILD", role)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut port = String::new();
    out.read_line(&mut port).unwrap();
    (child, port.trim().parse().ok())
}

fn socket_activation_serves_on_inherited_socket() {
    let (mut child, port) = run_activation("self", "activation");
    let mut c = TcpStream::connect(("127.0.0.1", port.unwrap())).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut got = String::new();
    c.read_to_string(&mut got).unwrap();
    assert_eq!(got, "activated\n");
    assert!(child.0.wait().unwrap().success());
}

fn socket_activation_rejects_malformed_listen_fds() {
    let (mut child, _port) = run_activation("self", "activation-bad");
    assert!(child.0.wait().unwrap().success());
}

fn socket_activation_ignores_other_pid() {
    let (mut child, _port) = run_activation("1", "activation-other");
    assert!(child.0.wait().unwrap().success());
}

/// Python holds the lock: we must be refused, naming Python's pid; once
/// Python is gone the stale file is taken over.
fn pid_file_locked_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("srv.pid");
    let holder = r#"
import fcntl, os, sys
f = open(sys.argv[1], "w")
fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
f.write(f"{os.getpid()}\n"); f.flush()
print("locked", flush=True)
sys.stdin.read()
"#;
    let mut py = Reap(
        Command::new("python3")
            .args(["-c", holder])
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(py.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "locked\n");
    match PidFile::create(&path) {
        Err(e @ Error::AlreadyRunning { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&py.0.id().to_string()), "{msg}");
        }
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    drop(py.0.stdin.take());
    assert!(py.0.wait().unwrap().success());
    // Python is gone: its pid is still in the file, but the lock is free.
    let pf = PidFile::create(&path).expect("take over stale pid file");
    assert_eq!(PidFile::read_pid(&path).unwrap(), std::process::id());
    drop(pf);
}

struct Echo;

impl RequestHandler for Echo {
    fn handle(&mut self, req: &mut Request) -> std::io::Result<()> {
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

/// A server of strategy `S` left with descriptors for only a handful of
/// connections.
fn child_emfile<S: Strategy>() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let mut server = ServerBuilder::<TcpTransport, S>::new()
        .bind("127.0.0.1:0", || Echo)
        .unwrap();
    let port = server.server_address().port();
    // Leave room for only a handful of connections (nine free numbers).
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(
        Resource::RLIMIT_NOFILE,
        support::lowest_free_fd(9) + 1,
        hard,
    )
    .unwrap();
    println!("{port}");
    let stop = server.shutdown_handle();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        stop.shutdown();
    });
    server.serve_forever().unwrap();
    // Handlers of the held connections end when the clients close.
    server.server_close();
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn echo_ok(addr: SocketAddr, wait: Duration) -> bool {
    let Ok(mut c) = TcpStream::connect(addr) else {
        return false;
    };
    c.set_read_timeout(Some(wait)).unwrap();
    if c.write_all(b"ping").is_err() {
        return false;
    }
    let mut b = [0u8; 4];
    c.read_exact(&mut b).is_ok() && &b == b"ping"
}

fn emfile_backs_off_and_recovers_threading() {
    emfile_backs_off_and_recovers("emfile-threading");
}

#[cfg(feature = "async")]
fn emfile_backs_off_and_recovers_async() {
    emfile_backs_off_and_recovers("emfile-async");
}

fn emfile_backs_off_and_recovers(role: &str) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Reap(
        Command::new(exe)
            .env("OPERATING_CHILD", role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut port = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", port.trim()).parse().unwrap();
    // Hold more connections than the server has descriptors for.
    let hogs: Vec<TcpStream> = (0..30).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !echo_ok(addr, Duration::from_millis(300)),
        "server still accepting: EMFILE never happened"
    );
    // Out of descriptors, the accept loop must sleep, not spin.
    let (t0, c0) = (Instant::now(), cpu_ticks(child.0.id()));
    std::thread::sleep(Duration::from_secs(1));
    let used = (cpu_ticks(child.0.id()) - c0) as f64 / 100.0;
    let wall = t0.elapsed().as_secs_f64();
    assert!(
        used < wall * 0.5,
        "accept loop spun: {used:.2}s CPU in {wall:.2}s"
    );
    drop(hogs);
    let deadline = Instant::now() + T;
    while !echo_ok(addr, Duration::from_secs(2)) {
        assert!(
            Instant::now() < deadline,
            "server never recovered from EMFILE"
        );
    }
    drop(child.0.stdin.take());
    assert!(child.0.wait().unwrap().success());
}

/// In a child process (the switch is permanent): as root, switch to
/// `nobody` and check root cannot be regained; otherwise the switch must
/// fail with EPERM.
fn child_privdrop() {
    use nix::unistd::{geteuid, getuid, setuid, Uid};
    let was_root = geteuid().is_root();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    match drop_privileges("nobody", None) {
        Ok(id) => {
            assert!(was_root, "a non-root process changed its uid");
            assert_ne!(id.uid, 0);
            assert_eq!(getuid().as_raw(), id.uid);
            assert!(setuid(Uid::from_raw(0)).is_err(), "root regained");
            assert!(refuse_root(false).is_ok());
            // The socket bound as root still accepts.
            let addr = l.local_addr().unwrap();
            let _c = TcpStream::connect(addr).unwrap();
            l.accept().unwrap();
        }
        Err(e) => {
            assert!(!was_root, "root could not drop privileges: {e}");
            assert!(
                matches!(&e, Error::Io(io) if io.raw_os_error() == Some(libc::EPERM)),
                "{e}"
            );
        }
    }
}

fn privileges_are_dropped_for_good() {
    let st = Command::new(std::env::current_exe().unwrap())
        .env("OPERATING_CHILD", "privdrop")
        .status()
        .unwrap();
    assert!(st.success(), "privilege-drop child failed: {st}");
}

/// Installs `shutdown_on_signals`, drops the guard, then (`signals-again`)
/// installs a second one and serves until a signal stops it, or
/// (`signals-dropped`) just waits. Prints `ready` when the signal may
/// come, `stopped` when `serve_forever` returned.
fn child_signals(again: bool) {
    use socketserver::server::{shutdown_on_signals, TcpServer};
    let mut server = TcpServer::bind("127.0.0.1:0", || Echo).unwrap();
    drop(shutdown_on_signals(&server.shutdown_handle()).unwrap());
    let _kept = again.then(|| shutdown_on_signals(&server.shutdown_handle()).unwrap());
    println!("ready");
    std::io::stdout().flush().unwrap();
    if again {
        server.serve_forever().unwrap();
        println!("stopped");
    } else {
        std::thread::sleep(T);
    }
}

/// Once `shutdown_on_signals`'s guard is dropped, SIGTERM ends the
/// process again (before, it was ignored: only SIGKILL ended it); a
/// guard installed after that still turns it into a graceful shutdown.
fn signals_do_their_default_once_the_guard_is_dropped() {
    use std::os::unix::process::ExitStatusExt;
    for again in [false, true] {
        let role = if again {
            "signals-again"
        } else {
            "signals-dropped"
        };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("OPERATING_CHILD", role)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n", "{role}");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + T;
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{role}: SIGTERM did not end the child");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        if again {
            assert!(status.success(), "{role}: {status}");
            assert_eq!(rest, "stopped\n", "{role}");
        } else {
            assert_eq!(status.signal(), Some(libc::SIGTERM), "{role}: {status}");
        }
    }
}

fn main() {
    match std::env::var("OPERATING_CHILD").as_deref() {
        Ok("signals-dropped") => return child_signals(false),
        Ok("signals-again") => return child_signals(true),
        Ok("activation") | Ok("activation-other") | Ok("activation-bad") => {
            return child_activation()
        }
        Ok("emfile-threading") => return child_emfile::<Threading>(),
        #[cfg(feature = "async")]
        Ok("emfile-async") => return child_emfile::<socketserver::server::Async>(),
        Ok("privdrop") => return child_privdrop(),
        _ => {}
    }
    let tests: &[(&str, fn())] = &[
        (
            "signals_do_their_default_once_the_guard_is_dropped",
            signals_do_their_default_once_the_guard_is_dropped,
        ),
        (
            "socket_activation_rejects_malformed_listen_fds",
            socket_activation_rejects_malformed_listen_fds,
        ),
        (
            "privileges_are_dropped_for_good",
            privileges_are_dropped_for_good,
        ),
        (
            "socket_activation_serves_on_inherited_socket",
            socket_activation_serves_on_inherited_socket,
        ),
        (
            "socket_activation_ignores_other_pid",
            socket_activation_ignores_other_pid,
        ),
        (
            "pid_file_locked_by_another_process",
            pid_file_locked_by_another_process,
        ),
        (
            "emfile_backs_off_and_recovers_threading",
            emfile_backs_off_and_recovers_threading,
        ),
        #[cfg(feature = "async")]
        (
            "emfile_backs_off_and_recovers_async",
            emfile_backs_off_and_recovers_async,
        ),
    ];
    support::run_plain(tests);
}
