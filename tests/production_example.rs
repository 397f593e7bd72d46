//! `examples/production.rs`: SIGHUP zero-downtime restart under load (no
//! failed connection), a SIGTERM drain that refuses new clients at once,
//! the pid file against a second instance, privilege
//! drop and the refusal to run prefork as root.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{geteuid, Pid};

const T: Duration = Duration::from_secs(15);

fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("examples").join("production");
    assert!(bin.exists(), "{} not built", bin.display());
    bin
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn reader(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Parses `listening on tcp://ADDR (mode M, pid P)`.
fn ready(r: &Running, mode: &str) -> (SocketAddr, u32) {
    let line = r.lines.recv_timeout(T).expect("no ready line");
    let rest = line.strip_prefix("listening on tcp://").expect(&line);
    let (addr, tail) = rest.split_once(' ').expect(&line);
    let tail = tail
        .strip_prefix(&format!("(mode {mode}, pid "))
        .and_then(|t| t.strip_suffix(')'))
        .expect(&line);
    (addr.parse().unwrap(), tail.parse().unwrap())
}

fn start(args: &[&str]) -> Running {
    let mut child = Command::new(binary())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = reader(child.stdout.take().unwrap());
    Running { child, lines }
}

fn echo_once(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(T))?;
    s.write_all(b"hi\n")?;
    let mut b = [0u8; 3];
    s.read_exact(&mut b)?;
    if &b != b"hi\n" {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(())
}

fn wait_exit(r: &mut Running) -> std::process::ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = r.child.try_wait().unwrap() {
            return st;
        }
        assert!(t0.elapsed() < T, "server did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn restart_under_load(mode: &str) {
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    let pid_path = dir.path().join("echo.pid");
    let pid_arg = pid_path.to_str().unwrap();
    let mut r = start(&[
        "--mode",
        mode,
        "--listen",
        "127.0.0.1:0",
        "--pid-file",
        pid_arg,
        "--allow-root",
    ]);
    let (addr, pid) = ready(&r, mode);
    assert_eq!(pid, r.child.id());
    assert_eq!(read_pid(&pid_path), pid);

    // A second instance with the same pid file is refused, naming us.
    let second = Command::new(binary())
        .args([
            "--mode",
            mode,
            "--listen",
            "127.0.0.1:0",
            "--pid-file",
            pid_arg,
        ])
        .arg("--allow-root")
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("already running") && err.contains(&pid.to_string()),
        "{err}"
    );

    // Bounded load from 4 threads while the server restarts.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                for _ in 0..5_000 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match echo_once(addr) {
                        Ok(()) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(_) => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = ok.load(Ordering::SeqCst);
    kill(Pid::from_raw(pid as i32), Signal::SIGHUP).unwrap();
    // The successor: a new process on the same address, which took the
    // pid file; it is re-parented to this test (a child subreaper).
    let (addr2, pid2) = ready(&r, mode);
    assert_eq!(addr2, addr, "restart changed the address");
    assert_ne!(pid2, pid, "the successor is a new process");
    let successor = Successor(pid2 as i32);
    let at_restart = ok.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!("{mode}: {ok} ok ({before} before SIGHUP, {at_restart} at restart), {failed} failed");
    assert_eq!(failed, 0, "connections failed during the restart");
    assert!(ok > at_restart, "no connection served after the restart");
    // The old process drained and exited on its own.
    let st = wait_exit(&mut r);
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert_eq!(read_pid(&pid_path), pid2);
    echo_once(addr).unwrap();

    kill(Pid::from_raw(pid2 as i32), Signal::SIGTERM).unwrap();
    assert_eq!(successor.wait(), Some(0));
    assert!(!pid_path.exists(), "pid file left behind");
}

/// A successor process (re-parented to this test): killed and reaped on
/// drop if still running.
struct Successor(i32);

impl Successor {
    /// Waits for its exit; its code.
    fn wait(&self) -> Option<i32> {
        use nix::sys::wait::{waitpid, WaitStatus};
        match waitpid(Pid::from_raw(self.0), None) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            _ => None,
        }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let pid = Pid::from_raw(self.0);
        if let Ok(WaitStatus::StillAlive) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
    }
}

fn become_subreaper() {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
}

fn read_pid(p: &Path) -> u32 {
    std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
}

#[cfg(feature = "async")] // the example has no async mode without it
#[test]
fn async_sighup_restart_under_load_fails_no_connection() {
    restart_under_load("async");
}

#[test]
fn prefork_sighup_restart_under_load_fails_no_connection() {
    restart_under_load("prefork");
}

#[test]
fn prefork_refuses_root_without_user_or_allow_root() {
    let mut r = start(&["--mode", "prefork", "--listen", "127.0.0.1:0"]);
    if geteuid().is_root() {
        let st = wait_exit(&mut r);
        assert!(!st.success(), "prefork ran as root");
    } else {
        let (addr, _) = ready(&r, "prefork");
        echo_once(addr).unwrap();
    }
}

#[cfg(feature = "async")] // the example has no async mode without it
#[test]
fn user_switch_after_binding() {
    let mut r = start(&[
        "--mode",
        "async",
        "--listen",
        "127.0.0.1:0",
        "--user",
        "nobody",
    ]);
    if geteuid().is_root() {
        let (addr, pid) = ready(&r, "async");
        echo_once(addr).unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid_line.split_whitespace().skip(1).all(|u| u != "0"),
            "still root: {uid_line}"
        );
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
        assert_eq!(wait_exit(&mut r).code(), Some(0));
    } else {
        assert!(!wait_exit(&mut r).success(), "non-root switched user");
    }
}

/// SIGTERM with a connection open: the listening socket is closed at once
/// (a new client is refused, not accepted and reset at exit), the open
/// connection is still served, and the server exits 0 once it ends.
fn sigterm_refuses_new_clients_during_the_drain(mode: &str) {
    let mut r = start(&["--mode", mode, "--listen", "127.0.0.1:0", "--allow-root"]);
    let (addr, pid) = ready(&r, mode);
    let mut held = TcpStream::connect(addr).unwrap();
    held.set_read_timeout(Some(T)).unwrap();
    held.write_all(b"one\n").unwrap();
    let mut b = [0u8; 4];
    held.read_exact(&mut b).unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let t0 = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Err(e) => {
                // Refused once closed; a connect that raced the close itself
                // (completed into the backlog as it was closed) is reset.
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ),
                    "{mode}: {e}"
                );
                break;
            }
            Ok(_) => assert!(
                t0.elapsed() < Duration::from_secs(2),
                "{mode}: still accepting during the drain"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    held.write_all(b"two\n").unwrap();
    held.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"two\n", "{mode}: the open connection was not served");
    drop(held);
    let status = wait_exit(&mut r);
    assert!(status.success(), "{mode}: {status}");
}

#[cfg(feature = "async")] // the example has no async mode without it
#[test]
fn async_sigterm_refuses_new_clients_during_the_drain() {
    sigterm_refuses_new_clients_during_the_drain("async");
}

#[test]
fn prefork_sigterm_refuses_new_clients_during_the_drain() {
    sigterm_refuses_new_clients_during_the_drain("prefork");
}

/// `Type=notify`: READY=1 once serving, STOPPING=1 when SIGTERM begins the
/// drain, sent to the Unix datagram socket named by NOTIFY_SOCKET.
#[test]
fn systemd_notifications_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    let mut child = Command::new(binary())
        .args([
            "--mode",
            "prefork",
            "--listen",
            "127.0.0.1:0",
            "--allow-root",
        ])
        .env("NOTIFY_SOCKET", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = reader(child.stdout.take().unwrap());
    let mut r = Running { child, lines };
    let (addr, pid) = ready(&r, "prefork");
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    echo_once(addr).unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let n = sock.recv(&mut buf).expect("no STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(wait_exit(&mut r).success());
}

/// The documented deployment, `--pid-file PATH --user nobody`, restarted
/// with SIGHUP: the successor (which runs as `nobody`, like the process
/// that starts it) must retake the pid file, and the file must go at the
/// stop. The directory is world-writable and sticky, like `/tmp`.
///
/// Before the fix the file was created as root before the switch: the
/// old process, now `nobody`, could not remove it, and the successor
/// could not open it ("Permission denied (os error 13)", no path named),
/// so the restart ended the service — the old process drained and
/// exited with no successor serving. A plain stop left the file behind.
#[test]
fn sighup_restart_with_user_and_pid_file() {
    if !geteuid().is_root() {
        eprintln!("skipped: --user needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    become_subreaper();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let pid_path = dir.path().join("echo.pid");
    let pid_arg = pid_path.to_str().unwrap();
    let mut r = start(&[
        "--mode",
        "prefork",
        "--listen",
        "127.0.0.1:0",
        "--pid-file",
        pid_arg,
        "--user",
        "nobody",
        "--drain-notice",
        "0s",
    ]);
    let (addr, pid1) = ready(&r, "prefork");
    assert_eq!(read_pid(&pid_path), pid1);
    echo_once(addr).unwrap();
    kill(Pid::from_raw(pid1 as i32), Signal::SIGHUP).unwrap();
    // The successor's ready line comes on the same stdout (inherited).
    let line = r.lines.recv_timeout(T);
    assert_eq!(wait_exit(&mut r).code(), Some(0), "old process");
    let line = line.expect("no successor started after SIGHUP");
    let pid2: u32 = line
        .rsplit("pid ")
        .next()
        .and_then(|t| t.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let successor = Successor(pid2 as i32);
    assert_ne!(pid2, pid1);
    echo_once(addr).unwrap();
    let t0 = Instant::now();
    while read_pid(&pid_path) != pid2 {
        assert!(t0.elapsed() < T, "pid file not retaken");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(Pid::from_raw(pid2 as i32), Signal::SIGTERM).unwrap();
    assert_eq!(successor.wait(), Some(0));
    assert!(!pid_path.exists(), "pid file left behind");
}
